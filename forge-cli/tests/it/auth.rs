//! `forge auth …` end to end: the real binary, moto as STS, env vars set on the child process.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use crate::support::{assert_exit, assert_success, forge, stderr, stdout};

/// An unsigned JWT without `exp` (moto does not verify tokens).
const JWT: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL3Rva2VuLmFjdGlvbnMuZ2l0aHVidXNlcmNvbnRlbnQuY29tIiwic3ViIjoicmVwbzpwbGF0Zm9ybS9wYXltZW50czpyZWY6cmVmcy9oZWFkcy9tYWluIiwiYXVkIjoic3RzLmFtYXpvbmF3cy5jb20ifQ.c2lnbmF0dXJl";

fn config(dir: &Path, auth_extra: &str, dev_role: &str) -> String {
    let token = dir.join("token.jwt");
    format!(
        "[auth]\nhub_role = \"arn:aws:iam::999999999999:role/ConveyorHub\"\ntoken = \"file:{}\"\nregion = \"eu-west-1\"\n{auth_extra}\n\n[environments.dev]\nrole = \"{dev_role}\"\n\n[environments.qa]\nrole = \"arn:aws:iam::222222222222:role/ConveyorDeployRole-qa\"\n",
        token.display()
    )
}

const DEV_ROLE: &str = "arn:aws:iam::111111111111:role/ConveyorDeployRole-dev";

/// `forge auth ARGS` in `dir` against `endpoint` with a clean AWS/CI environment plus `env`.
fn auth(dir: &Path, endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd: Command = forge();
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "SYSTEM_OIDCREQUESTURI",
        "SYSTEM_ACCESSTOKEN",
        "GITHUB_ENV",
        "BUILD_BUILDID",
        "GITHUB_RUN_ID",
    ] {
        cmd.env_remove(var);
    }
    for var in [
        "FORGE_TOKEN",
        "FORGE_HUB_ROLE",
        "FORGE_ROLE",
        "FORGE_REGION",
        "FORGE_SESSION_DURATION",
        "FORGE_SESSION_NAME",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .arg("auth")
        .args(args)
        .current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run forge")
}

fn setup(auth_extra: &str, dev_role: &str, token: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for empty in ["no-aws-config", "no-aws-credentials"] {
        std::fs::write(dir.path().join(empty), "").expect("empty AWS file");
    }
    std::fs::write(
        dir.path().join("forge.toml"),
        config(dir.path(), auth_extra, dev_role),
    )
    .expect("config");
    if let Some(token) = token {
        std::fs::write(dir.path().join("token.jwt"), token).expect("token");
    }
    dir
}

#[test]
fn whoami_env_and_credential_process_end_in_the_env_role() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    let dir = setup("", DEV_ROLE, Some(JWT));
    let endpoint = moto.endpoint();

    let out = auth(
        dir.path(),
        &endpoint,
        &["whoami", "--env", "dev", "--output", "json"],
        &[],
    );
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(json["account"], "111111111111");
    assert_eq!(
        json["arn"],
        "arn:aws:sts::111111111111:assumed-role/ConveyorDeployRole-dev/forge-dev"
    );
    assert!(
        json["user_id"]
            .as_str()
            .is_some_and(|u| u.ends_with(":forge-dev")),
        "{json}"
    );
    assert!(
        json["expiration"]
            .as_str()
            .is_some_and(|e| e.ends_with('Z')),
        "{json}"
    );

    // Flags override the config: another role, session name.
    let out = auth(
        dir.path(),
        &endpoint,
        &[
            "whoami",
            "--env",
            "qa",
            "--session-name",
            "release 42",
            "--output",
            "json",
        ],
        &[],
    );
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(
        json["arn"],
        "arn:aws:sts::222222222222:assumed-role/ConveyorDeployRole-qa/release-42"
    );

    // Session tags and an external id are sent (moto accepts both; their wire form is checked
    // against the STS fake in forge-auth's tests).
    let tagged = setup(
        "session_tags = true\nexternal_id = \"ext-1\"\nsession_duration = 900",
        DEV_ROLE,
        Some(JWT),
    );
    let out = auth(
        tagged.path(),
        &endpoint,
        &["whoami", "--env", "dev", "--output", "json"],
        &[],
    );
    assert_success(&out);

    let out = auth(
        dir.path(),
        &endpoint,
        &["credential-process", "--env", "dev"],
        &[],
    );
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(json["Version"], 1);
    for key in [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(
            json[key].as_str().is_some_and(|v| !v.is_empty()),
            "{key}: {json}"
        );
    }

    let out = auth(dir.path(), &endpoint, &["env", "--env", "dev"], &[]);
    assert_success(&out);
    let text = stdout(&out);
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.split('=').next().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "export AWS_ACCESS_KEY_ID",
            "export AWS_SECRET_ACCESS_KEY",
            "export AWS_SESSION_TOKEN",
            "export AWS_REGION"
        ],
        "{text}"
    );

    // Azure DevOps: secret pipeline variables on stdout, masks on stderr, build id in the session.
    let out = auth(
        dir.path(),
        &endpoint,
        &["env", "--env", "dev"],
        &[("TF_BUILD", "True"), ("BUILD_BUILDID", "4711")],
    );
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with("##vso[task.setvariable variable=AWS_ACCESS_KEY_ID;issecret=true]"),
        "{text}"
    );
    assert!(
        text.contains("##vso[task.setvariable variable=AWS_SESSION_TOKEN;issecret=true]"),
        "{text}"
    );
    assert!(
        text.contains("##vso[task.setvariable variable=AWS_REGION;issecret=false]eu-west-1"),
        "{text}"
    );
    let masks = stderr(&out);
    assert!(
        masks.contains(&format!("##vso[task.setsecret]{JWT}")),
        "token masked: {masks}"
    );
    // Secret variables reach later steps only through an explicit mapping: say so.
    assert!(
        masks.contains("AWS_SECRET_ACCESS_KEY: $(AWS_SECRET_ACCESS_KEY)"),
        "{masks}"
    );
    assert_eq!(
        masks.matches("##vso[task.setsecret]").count(),
        6,
        "token, 2×(secret, session), key id: {masks}"
    );

    // GitHub Actions: $GITHUB_ENV gets the variables, nothing secret on stdout.
    let github_env = dir.path().join("github_env");
    let out = auth(
        dir.path(),
        &endpoint,
        &["env", "--env", "dev"],
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_ENV", github_env.to_str().expect("utf-8")),
            ("GITHUB_RUN_ID", "99"),
        ],
    );
    assert_success(&out);
    assert_eq!(stdout(&out), "");
    let written = std::fs::read_to_string(&github_env).expect("GITHUB_ENV written");
    assert!(written.starts_with("AWS_ACCESS_KEY_ID=ASIA"), "{written}");
    assert!(written.contains("AWS_SESSION_TOKEN="), "{written}");
    assert!(stderr(&out).contains("::add-mask::"), "{}", stderr(&out));
}

#[test]
fn one_role_template_serves_every_environment_through_its_account() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    let dir = setup("", DEV_ROLE, Some(JWT));
    std::fs::write(
        dir.path().join("forge.toml"),
        format!(
            "[auth]\nhub_role = \"arn:aws:iam::999999999999:role/ConveyorHub\"\ntoken = \"file:{}\"\nregion = \"eu-west-1\"\nenv_role = \"arn:aws:iam::{{account}}:role/ConveyorDeployRole-{{env}}\"\n\n[environments.qa]\naccount = \"222222222222\"\n\n[environments.prod]\n",
            dir.path().join("token.jwt").display()
        ),
    )
    .expect("config");
    let endpoint = moto.endpoint();

    let out = auth(
        dir.path(),
        &endpoint,
        &["whoami", "--env", "qa", "--output", "json"],
        &[],
    );
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(
        json["arn"],
        "arn:aws:sts::222222222222:assumed-role/ConveyorDeployRole-qa/forge-qa"
    );

    // prod has no account: refused before any STS call, naming both keys.
    let out = auth(dir.path(), &endpoint, &["whoami", "--env", "prod"], &[]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("auth.env_role") && err.contains("environments.prod.account"),
        "{err}"
    );
}

#[test]
fn token_none_uses_the_default_chain() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    let dir = setup("", DEV_ROLE, None);
    let out = auth(
        dir.path(),
        &moto.endpoint(),
        &[
            "whoami", "--env", "dev", "--token", "none", "--output", "json",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIATESTING"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    );
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(json["account"], "123456789012", "{json}");
    assert_eq!(json["expiration"], serde_json::Value::Null);
}

/// Each bad input: exit 2 and a message naming the input and the fix. No AWS endpoint is needed
/// (nothing may be sent), so the endpoint is a closed port.
#[test]
fn bad_input_is_refused_with_exit_2() {
    let closed = format!("http://127.0.0.1:{}", forge_testkit::free_port());
    let check =
        |dir: &tempfile::TempDir, args: &[&str], env: &[(&str, &str)], expected: &[&str]| {
            let out = auth(dir.path(), &closed, args, env);
            assert_exit(&out, 2);
            let err = stderr(&out);
            for part in expected {
                assert!(err.contains(part), "`{part}` missing from:\n{err}");
            }
            assert_eq!(stdout(&out), "", "nothing half-written");
        };
    let no_token = setup("", DEV_ROLE, None);
    check(
        &no_token,
        &["whoami", "--env", "dev"],
        &[],
        &["cannot read the OIDC token file", "token.jwt"],
    );
    let empty = setup("", DEV_ROLE, Some("\n"));
    check(&empty, &["env", "--env", "dev"], &[], &["is empty"]);
    let malformed = setup("", DEV_ROLE, Some("this-is-not-a-jwt"));
    check(
        &malformed,
        &["credential-process", "--env", "dev"],
        &[],
        &["is not a JWT", "three base64url parts"],
    );
    let bad_arn = setup("", "arn:aws:iam::12:role/x", Some(JWT));
    check(
        &bad_arn,
        &["whoami", "--env", "dev"],
        &[],
        &["environments.dev.role", "the account is not 12 digits"],
    );
    let good = setup("", DEV_ROLE, Some(JWT));
    check(
        &good,
        &["whoami", "--env", "prod"],
        &[],
        &["unknown environment `prod`", "known: dev, qa"],
    );
    check(
        &good,
        &["whoami", "--env", "dev", "--hub-role", "ConveyorHub"],
        &[],
        &["hub role", "does not start with `arn:`"],
    );
    check(
        &good,
        &["whoami", "--env", "dev", "--token", "vault"],
        &[],
        &["`vault` is not a token source"],
    );
    // The token itself where its source belongs: refused without echoing it, under a
    // pipeline too (the error annotation is in the job log).
    for pipeline in [None, Some(("TF_BUILD", "True"))] {
        let out = auth(
            good.path(),
            &closed,
            &["whoami", "--env", "dev", "--token", JWT],
            pipeline.as_slice(),
        );
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(err.contains("looks like a token itself"), "{err}");
        assert!(!err.contains(JWT) && !err.contains("eyJhbGci"), "{err}");
    }
    check(
        &good,
        &["whoami", "--env", "dev", "--session-duration", "7200"],
        &[],
        &["7200 s was requested", "role chaining at 3600 s"],
    );
    check(
        &good,
        &["whoami", "--env", "dev"],
        &[
            ("GITHUB_ACTIONS", "true"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
        ],
        &[
            "static AWS credentials",
            "AKIA…",
            "allow_static_credentials = true",
        ],
    );
    check(
        &good,
        &["whoami", "--env", "dev", "--token", "github"],
        &[],
        &["ACTIONS_ID_TOKEN_REQUEST_URL is not set", "id-token: write"],
    );
    let no_file = setup("", DEV_ROLE, None);
    std::fs::remove_file(no_file.path().join("forge.toml")).expect("rm");
    check(
        &no_file,
        &["whoami", "--env", "dev"],
        &[],
        &["config file forge.toml does not exist"],
    );
}

#[test]
fn static_keys_in_ci_pass_when_explicitly_allowed_and_unreachable_sts_exits_1() {
    let closed = format!("http://127.0.0.1:{}", forge_testkit::free_port());
    let dir = setup("allow_static_credentials = true", DEV_ROLE, Some(JWT));
    let out = auth(
        dir.path(),
        &closed,
        &["whoami", "--env", "dev"],
        &[
            ("GITHUB_ACTIONS", "true"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
        ],
    );
    // The policy let it through; STS is unreachable, a failure of the world: exit 1, step named.
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("hub role step (AssumeRoleWithWebIdentity) for arn:aws:iam::999999999999:role/ConveyorHub"), "{err}");
    assert!(err.contains("after 4 retries"), "{err}");
    // The token appears only in the mask command that hides it from later log lines.
    assert_eq!(err.matches(JWT).count(), 1, "{err}");
    assert!(err.contains(&format!("::add-mask::{JWT}")), "{err}");
}

/// A one-thread HTTP/1.1 server speaking the GitHub Actions ID-token protocol: checks the bearer,
/// answers `{"value": JWT}` and records each request line.
fn github_token_service() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://{}/_apis/token?api-version=2.0",
        listener.local_addr().expect("addr")
    );
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut authorized = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                authorized |=
                    line.eq_ignore_ascii_case("authorization: Bearer gh-request-token\r\n");
            }
            log.lock()
                .expect("lock")
                .push(request_line.trim().to_owned());
            let (status, body) = if authorized {
                ("200 OK", format!("{{\"count\":1,\"value\":\"{JWT}\"}}"))
            } else {
                (
                    "401 Unauthorized",
                    r#"{"message":"Bad credentials"}"#.to_owned(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn github_actions_token_is_detected_and_fetched_by_the_binary() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    let dir = setup("", DEV_ROLE, None);
    let (url, seen) = github_token_service();
    let gh = |token: &str| {
        auth(
            dir.path(),
            &moto.endpoint(),
            &[
                "whoami", "--env", "dev", "--token", "auto", "--output", "json",
            ],
            &[
                ("GITHUB_ACTIONS", "true"),
                ("GITHUB_RUN_ID", "99"),
                ("ACTIONS_ID_TOKEN_REQUEST_URL", url.as_str()),
                ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", token),
            ],
        )
    };
    let out = gh("gh-request-token");
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("stdout is only JSON");
    assert_eq!(
        json["arn"],
        "arn:aws:sts::111111111111:assumed-role/ConveyorDeployRole-dev/forge-dev-99"
    );
    assert!(
        stderr(&out).contains(&format!("::add-mask::{JWT}")),
        "{}",
        stderr(&out)
    );
    let requests = seen.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].starts_with("GET /_apis/token?api-version=2.0&audience=sts.amazonaws.com "),
        "{requests:?}"
    );

    let out = gh("expired-request-token");
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("HTTP 401")
            && err.contains("Bad credentials")
            && err.contains("id-token: write"),
        "{err}"
    );
    assert!(!err.contains("expired-request-token"), "{err}");
}
