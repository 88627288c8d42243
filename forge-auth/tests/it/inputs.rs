//! Bad input gives a clear error before anything is sent: token files, JWT shape, role ARNs,
//! token-source settings and detection, session names, the static-key policy, mask lines.

use std::collections::HashMap;

use forge_auth::ci::{Ci, check_static_credentials};
use forge_auth::token::{DetectOptions, TokenSetting, parse_jwt};
use forge_auth::{ChainError, RoleArn, Secret, SessionName, TokenError, TokenSource};

use crate::support::{fast_retry, jwt, now};

fn map(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

async fn fetch_file(contents: Option<&str>) -> TokenError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    if let Some(c) = contents {
        std::fs::write(&path, c).unwrap();
    }
    TokenSource::File(path)
        .fetch(&reqwest::Client::new(), &fast_retry(0))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn token_file_problems() {
    let missing = fetch_file(None).await;
    assert!(matches!(missing, TokenError::File { .. }), "{missing}");
    assert!(
        missing
            .to_string()
            .contains("cannot read the OIDC token file"),
        "{missing}"
    );

    for empty in ["", "  \n"] {
        let err = fetch_file(Some(empty)).await;
        assert!(matches!(err, TokenError::Empty { .. }), "{err}");
    }
    let err = fetch_file(Some("not-a-jwt")).await;
    assert!(
        err.to_string()
            .contains("is not a JWT (1 dot-separated part(s) instead of 3)"),
        "{err}"
    );

    let expired = jwt(serde_json::json!({"iss": "i", "iat": now() - 4000, "exp": now() - 3000}));
    let err = fetch_file(Some(&expired)).await;
    assert!(matches!(err, TokenError::Expired { .. }), "{err}");
    assert!(
        err.to_string().contains("expired 3000 s ago")
            || err.to_string().contains("expired 3001 s ago"),
        "{err}"
    );
    // No grace period: a token that expired a few seconds ago is refused too.
    let just_expired = jwt(serde_json::json!({"iss": "i", "iat": now() - 600, "exp": now() - 5}));
    let err = fetch_file(Some(&just_expired)).await;
    assert!(matches!(err, TokenError::Expired { .. }), "{err}");
}

#[test]
fn jwt_shapes() {
    let check = |token: &str, expected: Result<(), &str>| {
        let got = parse_jwt(token).map(|_| ());
        assert_eq!(
            got.as_ref().map_err(String::as_str),
            expected.as_ref().map(|_| &()).map_err(|e| *e),
            "{token}"
        );
    };
    check(&jwt(serde_json::json!({"iat": 1, "exp": 2})), Ok(()));
    check("aaaa.bbbb", Err("2 dot-separated part(s) instead of 3"));
    check("abc", Err("3 characters; STS accepts 4 to 20000"));
    check("!!!.e30.sig", Err("the header is not base64url"));
    check("e30.!!!.sig", Err("the payload is not base64url"));
    check(
        "bm90IGpzb24.e30.sig",
        Err("the header is not a JSON object"),
    );
    check(
        "e30.eyJpYXQiOiJub3cifQ.sig",
        Err("the payload is not a JSON object with numeric iat/exp"),
    );
    let long = format!("e30.{}.sig", "a".repeat(20_001));
    check(&long, Err("20009 characters; STS accepts 4 to 20000"));
}

#[test]
fn role_arns() {
    let check =
        |arn: &str, expected: Result<(&str, &str), &str>| match (RoleArn::parse(arn), expected) {
            (Ok(role), Ok((account, name))) => {
                assert_eq!((role.account(), role.name()), (account, name), "{arn}");
            }
            (Err(ChainError::BadRoleArn { problem, .. }), Err(why)) => {
                assert_eq!(problem, why, "{arn}")
            }
            (got, want) => panic!("{arn}: got {got:?}, want {want:?}"),
        };
    check(
        "arn:aws:iam::111111111111:role/ConveyorDeployRole-dev",
        Ok(("111111111111", "ConveyorDeployRole-dev")),
    );
    check(
        "arn:aws-cn:iam::111111111111:role/path/to/R+=,.@_-",
        Ok(("111111111111", "R+=,.@_-")),
    );
    check(
        "ConveyorDeployRole-dev",
        Err("it does not start with `arn:`"),
    );
    check(
        "arn:aws:iam::11111111111:role/x",
        Err("the account is not 12 digits"),
    );
    check(
        "arn:aws:sts::111111111111:assumed-role/x/y",
        Err("the service is not `iam` with an empty region"),
    );
    check(
        "arn:aws:iam::111111111111:user/x",
        Err("no `:role/` resource"),
    );
    check(
        "arn:gcp:iam::111111111111:role/x",
        Err("the partition is not aws, aws-cn or aws-us-gov"),
    );
    check(
        "arn:aws:iam::111111111111:role/bad name",
        Err("the role name is not 1-64 characters of [A-Za-z0-9+=,.@_-]"),
    );
    let err = RoleArn::parse("nope").unwrap_err();
    assert!(err.is_invalid_input());
    assert!(
        err.to_string()
            .contains("expected arn:aws:iam::<12-digit account>:role/<name>"),
        "{err}"
    );

    let t = "arn:aws:iam::{account}:role/ConveyorDeployRole-{env}";
    assert_eq!(
        RoleArn::from_template(t, "qa", Some("222222222222"))
            .unwrap()
            .as_str(),
        "arn:aws:iam::222222222222:role/ConveyorDeployRole-qa"
    );
    assert!(
        RoleArn::from_template(t, "qa", None)
            .unwrap_err()
            .to_string()
            .contains("no account id was given")
    );
}

#[test]
fn session_names_follow_sts_rules() {
    let check = |env: &str, build: Option<&str>, expected: &str| {
        assert_eq!(SessionName::for_pipeline(env, build).as_str(), expected);
    };
    check("dev", Some("4711"), "forge-dev-4711");
    check("dev", None, "forge-dev");
    check(
        "prod eu",
        Some("20261126.3 (retry)"),
        "forge-prod-eu-20261126.3--retry-",
    );
    check("ü", Some("id"), "forge---id");
    let long = SessionName::for_pipeline("dev", Some(&"9".repeat(100)));
    assert_eq!(long.as_str().len(), 64);
    assert_eq!(SessionName::sanitize("").as_str(), "--");
    assert_eq!(SessionName::sanitize("a").as_str(), "a-");
    assert_eq!(
        SessionName::sanitize("a@b=c,d+e_f.g").as_str(),
        "a@b=c,d+e_f.g"
    );
}

#[test]
fn token_settings_and_detection() {
    assert_eq!("auto".parse::<TokenSetting>().unwrap(), TokenSetting::Auto);
    assert_eq!(
        "file:/t".parse::<TokenSetting>().unwrap(),
        TokenSetting::File("/t".into())
    );
    assert_eq!(
        "env:OIDC".parse::<TokenSetting>().unwrap(),
        TokenSetting::Env("OIDC".into())
    );
    // A path may have dots; with a `/` it is a path, not a pasted JWT.
    assert_eq!(
        "file:/run/oidc.token.jwt".parse::<TokenSetting>().unwrap(),
        TokenSetting::File("/run/oidc.token.jwt".into())
    );
    // A relative token file named like a JWT's three parts is still a file name.
    assert_eq!(
        "file:oidc.token.jwt".parse::<TokenSetting>().unwrap(),
        TokenSetting::File("oidc.token.jwt".into())
    );
    for bad in ["vault", "file:", "env:", "", "env:1X", "env:MY VAR"] {
        let err = bad.parse::<TokenSetting>().unwrap_err();
        assert!(err.to_string().contains("is not a token source"), "{err}");
    }
    // A credential where the source belongs is described, never quoted back.
    let pat = format!("ghp_{}", "A1b2".repeat(9));
    let env_pat = format!("env:{}", "Ab1_".repeat(17));
    for secret in [
        &*pat,
        "eyJh.eyJz.sig",
        "env:eyJh.eyJz.sig",
        "file:eyJh.eyJz.sig",
        &*env_pat,
        "env:ghp-A1b2A1b2=",
        // Valid variable names (and file names) that are credentials: a GitHub token,
        // a fine-grained PAT, an AWS access key id, a GitLab token, a long mixed-case key.
        &format!("env:{pat}"),
        &format!("file:{pat}"),
        "env:github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz0123456789ABCDEFGHIJ",
        "env:AKIAIOSFODNN7EXAMPLE",
        "file:glpat-Ab1Cd2Ef3Gh4Ij5Kl6Mn",
        "env:q8Zr2LmX9vT4kP7wB3nY6cH1jF5dS0gA",
    ] {
        let err = secret.parse::<TokenSetting>().unwrap_err().to_string();
        assert!(
            !err.contains(secret) && err.contains("looks like a token"),
            "{err}"
        );
    }
    assert!(
        "vault"
            .parse::<TokenSetting>()
            .unwrap_err()
            .to_string()
            .contains("`vault`")
    );
    let detect = |setting: &TokenSetting, pairs: &[(&str, &str)], options: &DetectOptions| {
        TokenSource::detect(setting, &map(pairs), options).map(|s| s.describe())
    };
    let none = DetectOptions::default();
    let conn = DetectOptions {
        service_connection: Some("c-1".into()),
        ..DetectOptions::default()
    };
    let ado = [
        ("TF_BUILD", "True"),
        ("SYSTEM_OIDCREQUESTURI", "https://x/oidc"),
        ("SYSTEM_ACCESSTOKEN", "t"),
    ];
    assert_eq!(
        detect(&TokenSetting::Auto, &ado, &conn).unwrap(),
        "Azure DevOps (service connection c-1)"
    );
    let gh = [
        ("GITHUB_ACTIONS", "true"),
        ("ACTIONS_ID_TOKEN_REQUEST_URL", "https://x?a=1"),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "t"),
    ];
    assert_eq!(
        detect(&TokenSetting::Auto, &gh, &none).unwrap(),
        "GitHub Actions (audience sts.amazonaws.com)"
    );
    assert_eq!(
        detect(
            &TokenSetting::Auto,
            &[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")],
            &none
        )
        .unwrap(),
        "token file /t"
    );

    let err = |setting: &TokenSetting, pairs: &[(&str, &str)], options: &DetectOptions| {
        detect(setting, pairs, options).unwrap_err().to_string()
    };
    assert!(
        err(&TokenSetting::Auto, &[], &none).contains("auto-detection found no Azure DevOps job")
    );
    assert!(err(&TokenSetting::Auto, &ado, &none).contains("set `[auth] service_connection`"));
    assert!(
        err(&TokenSetting::Auto, &ado[..2], &conn)
            .contains("SYSTEM_ACCESSTOKEN is not set; map it into the step")
    );
    assert!(
        err(&TokenSetting::Auto, &[("GITHUB_ACTIONS", "true")], &none)
            .contains("permissions: id-token: write")
    );
    assert!(
        err(&TokenSetting::Env("OIDC".into()), &[], &none).contains("environment variable OIDC")
    );
    // Built directly (not parsed), a credential-shaped name is still not echoed.
    let pat = format!("ghp_{}", "A1b2".repeat(9));
    let text = err(&TokenSetting::Env(pat.clone()), &[], &none);
    assert!(
        !text.contains(&pat) && text.contains("looks like a credential"),
        "{text}"
    );
}

#[test]
fn static_keys_in_ci_are_refused_unless_allowed() {
    let check = |pairs: &[(&str, &str)], allow: bool, refused: bool| {
        let got = check_static_credentials(&map(pairs), allow);
        assert_eq!(got.is_err(), refused, "{pairs:?} allow={allow}: {got:?}");
        if let Err(e) = got {
            let text = e.to_string();
            assert!(
                text.contains("AKIA…") && !text.contains("AKIAEXAMPLE"),
                "{text}"
            );
            assert!(text.contains("allow_static_credentials = true"), "{text}");
        }
    };
    let key = ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE");
    check(&[("TF_BUILD", "True"), key], false, true);
    check(&[("GITHUB_ACTIONS", "true"), key], false, true);
    check(&[("GITHUB_ACTIONS", "true"), key], true, false);
    check(
        &[("GITHUB_ACTIONS", "true"), key, ("AWS_SESSION_TOKEN", "s")],
        false,
        false,
    );
    check(&[key], false, false);
    check(&[("TF_BUILD", "True")], false, false);
}

#[test]
fn mask_lines_per_ci() {
    let secret = Secret::new("a;b]c%d\ne");
    assert_eq!(
        Ci::AzureDevOps.mask_line(&secret).unwrap(),
        "##vso[task.setsecret]a%3Bb%5Dc%AZP25d%0Ae"
    );
    assert_eq!(
        Ci::GitHubActions.mask_line(&secret).unwrap(),
        "::add-mask::a;b]c%25d%0Ae"
    );
    assert_eq!(Ci::None.mask_line(&secret), None);
    assert_eq!(Ci::detect(&map(&[("TF_BUILD", "True")])), Ci::AzureDevOps);
    assert_eq!(
        Ci::detect(&map(&[("GITHUB_ACTIONS", "true")])),
        Ci::GitHubActions
    );
    assert_eq!(
        Ci::GitHubActions
            .build_id(&map(&[
                ("GITHUB_RUN_ID", "99"),
                ("GITHUB_RUN_ATTEMPT", "2")
            ]))
            .as_deref(),
        Some("99.2")
    );
    assert_eq!(
        Ci::AzureDevOps
            .build_id(&map(&[("BUILD_BUILDID", "4711")]))
            .as_deref(),
        Some("4711")
    );
}

/// Property check over random strings (any Unicode, any length): the sanitizer always yields a
/// valid STS session name, is idempotent, and keeps valid names unchanged; the ARN and JWT
/// parsers never panic.
#[test]
fn sanitizer_and_parsers_hold_for_random_input() {
    let valid = |s: &str| {
        (2..=64).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    };
    let alphabet: Vec<char> = "aZ09_+=,.@- /:ü\u{1F600}\t\n\"'[]{}".chars().collect();
    for _ in 0..3000 {
        let len = rand::random_range(0..100);
        let raw: String = (0..len)
            .map(|_| alphabet[rand::random_range(0..alphabet.len())])
            .collect();
        let name = SessionName::sanitize(&raw);
        assert!(valid(name.as_str()), "{raw:?} -> {name:?}");
        assert_eq!(
            SessionName::sanitize(name.as_str()),
            name,
            "idempotent for {raw:?}"
        );
        if valid(&raw) {
            assert_eq!(name.as_str(), raw);
        }
        let _ = RoleArn::parse(&raw);
        let _ = RoleArn::parse(&format!("arn:aws:iam::111111111111:role/{raw}"));
        let _ = parse_jwt(&raw);
        let _ = raw.parse::<TokenSetting>();
    }
}
