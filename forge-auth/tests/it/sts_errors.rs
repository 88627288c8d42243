//! AWS's STS errors, which moto cannot produce (it accepts any token and has no chaining limit),
//! from an in-process fake of the STS query API that answers with AWS's exact XML error bodies
//! (see `support::sts_error`): classification, retries and messages.

use std::time::Duration;

use forge_auth::{ChainError, RoleChainProvider, Step};

use crate::support::{FakeSts, StsReply, base_config, chain, fresh_jwt, old_jwt, value_token};

use StsReply::{Error, Ok as Fine};

const HOUR: Duration = Duration::from_secs(3600);

async fn run(
    web: Vec<StsReply>,
    assume: Vec<StsReply>,
    token: String,
    retries: u32,
) -> (FakeSts, Result<forge_auth::ChainCredentials, ChainError>) {
    let sts = FakeSts::start(web, assume).await;
    let provider = RoleChainProvider::new(
        chain(value_token(token), retries),
        &base_config(&sts.server.url()).await,
    )
    .unwrap();
    let result = provider.assume().await;
    (sts, result)
}

#[track_caller]
fn check_failure(
    result: &Result<forge_auth::ChainCredentials, ChainError>,
    step: Step,
    code: &str,
    expected: &[&str],
) {
    let err = result.as_ref().expect_err("the chain must fail");
    assert_eq!(err.step(), Some(step), "{err}");
    assert_eq!(err.code(), Some(code), "{err}");
    let text = err.to_string();
    for part in expected {
        assert!(text.contains(part), "`{part}` missing from: {text}");
    }
    assert!(!text.contains("eyJ"), "a token leaked into: {text}");
}

#[tokio::test]
async fn invalid_identity_token_right_after_issue_is_retried() {
    let (sts, result) = run(
        vec![Error("InvalidIdentityToken"), Error("InvalidIdentityToken")],
        vec![],
        fresh_jwt(0),
        4,
    )
    .await;
    let creds = result.unwrap();
    assert_eq!(sts.calls("AssumeRoleWithWebIdentity").len(), 3);
    assert_eq!(sts.calls("AssumeRole").len(), 1);
    assert_eq!(
        creds.assumed_role_arn.as_deref(),
        Some("arn:aws:sts::111111111111:assumed-role/ConveyorDeployRole-dev/forge-dev-4711")
    );
    // The env role step used the hub step's credentials (the fake numbers them per request).
    let assume = &sts.calls("AssumeRole")[0];
    assert!(
        assume
            .authorization
            .as_deref()
            .unwrap_or_default()
            .contains("Credential=ASIAFAKE00000002/"),
        "{:?}",
        assume.authorization
    );
}

#[tokio::test]
async fn invalid_identity_token_for_an_old_token_fails_at_once() {
    let (sts, result) = run(vec![Error("InvalidIdentityToken")], vec![], old_jwt(), 4).await;
    check_failure(
        &result,
        Step::Hub,
        "InvalidIdentityToken",
        &[
            "hub role step (AssumeRoleWithWebIdentity) for arn:aws:iam::999999999999:role/ConveyorHub failed with InvalidIdentityToken after 0 retries",
            "Couldn't retrieve verification key",
            "token issuer https://vstoken.dev.azure.com/org, subject sc://org/project/conn",
            "IAM OIDC identity provider",
        ],
    );
    assert_eq!(sts.calls("AssumeRoleWithWebIdentity").len(), 1);
}

#[tokio::test]
async fn access_denied_on_the_env_role_fails_at_once_naming_step_role_and_code() {
    let (sts, result) = run(vec![], vec![Error("AccessDenied")], fresh_jwt(0), 4).await;
    check_failure(
        &result,
        Step::EnvRole,
        "AccessDenied",
        &[
            "environment role step (AssumeRole) for arn:aws:iam::111111111111:role/ConveyorDeployRole-dev failed with AccessDenied after 0 retries",
            "is not authorized to perform: sts:AssumeRole",
            "trust policy must trust the previous role",
        ],
    );
    assert_eq!(sts.calls("AssumeRole").len(), 1);
}

#[tokio::test]
async fn access_denied_on_the_hub_explains_the_trust_policy() {
    let (_sts, result) = run(vec![Error("AccessDenied")], vec![], fresh_jwt(0), 4).await;
    check_failure(
        &result,
        Step::Hub,
        "AccessDenied",
        &[
            "sts:AssumeRoleWithWebIdentity",
            "subject repo:platform/payments:ref:refs/heads/main",
        ],
    );
}

#[tokio::test]
async fn throttling_and_idp_errors_are_retried_with_backoff() {
    let (sts, result) = run(
        vec![Error("IDPCommunicationError"), Error("Throttling")],
        vec![Error("Throttling"), Fine(HOUR)],
        fresh_jwt(0),
        4,
    )
    .await;
    result.unwrap();
    assert_eq!(sts.calls("AssumeRoleWithWebIdentity").len(), 3);
    assert_eq!(sts.calls("AssumeRole").len(), 2);
}

#[tokio::test]
async fn persistent_idp_errors_give_up_after_the_retry_budget() {
    let replies = vec![Error("IDPCommunicationError"); 5];
    let (sts, result) = run(replies, vec![], fresh_jwt(0), 2).await;
    check_failure(
        &result,
        Step::Hub,
        "IDPCommunicationError",
        &["after 2 retries in", "could not be reached", "retry later"],
    );
    assert_eq!(sts.calls("AssumeRoleWithWebIdentity").len(), 3);
}

#[tokio::test]
async fn expired_token_fails_at_once() {
    let (sts, result) = run(
        vec![Error("ExpiredTokenException")],
        vec![],
        fresh_jwt(0),
        4,
    )
    .await;
    check_failure(
        &result,
        Step::Hub,
        "ExpiredTokenException",
        &[
            "Token expired: current date/time",
            "fetches a new one on every refresh",
        ],
    );
    assert_eq!(sts.calls("AssumeRoleWithWebIdentity").len(), 1);
}

#[tokio::test]
async fn the_chaining_limit_error_is_explained() {
    let (sts, result) = run(vec![], vec![Error("ValidationError")], fresh_jwt(0), 4).await;
    check_failure(
        &result,
        Step::EnvRole,
        "ValidationError",
        &[
            "exceeds the 1 hour session limit for roles assumed by role chaining",
            "session_duration` to 3600 or less",
        ],
    );
    assert_eq!(sts.calls("AssumeRole").len(), 1);
}

#[tokio::test]
async fn more_than_an_hour_is_refused_before_any_call() {
    let mut long = chain(value_token(fresh_jwt(0)), 0);
    long.duration = Duration::from_secs(7200);
    let err = RoleChainProvider::new(long, &base_config("http://127.0.0.1:9").await).unwrap_err();
    assert!(err.is_invalid_input());
    assert!(
        err.to_string().contains(
            "7200 s was requested, but AWS caps roles assumed by role chaining at 3600 s"
        ),
        "{err}"
    );
    let mut short = chain(value_token(fresh_jwt(0)), 0);
    short.duration = Duration::from_secs(60);
    assert!(
        RoleChainProvider::new(short, &base_config("http://127.0.0.1:9").await)
            .unwrap_err()
            .to_string()
            .contains("minimum is 900")
    );
}

#[tokio::test]
async fn requests_carry_session_name_duration_external_id_and_tags() {
    let sts = FakeSts::start(vec![], vec![]).await;
    let mut c = chain(value_token(fresh_jwt(0)), 0);
    c.duration = Duration::from_secs(1800);
    c.hops[0].external_id = Some("ext-123".into());
    c.hops[0].tags = vec![("forge:env".into(), "dev".into())];
    let extra = forge_auth::RoleArn::parse("arn:aws:iam::222222222222:role/Extra").unwrap();
    c.hops.push(forge_auth::Hop::new(extra));
    let provider = RoleChainProvider::new(c, &base_config(&sts.server.url()).await).unwrap();
    let creds = provider.assume().await.unwrap();
    assert_eq!(
        creds.assumed_role_arn.as_deref(),
        Some("arn:aws:sts::222222222222:assumed-role/Extra/forge-dev-4711")
    );
    let web = &sts.calls("AssumeRoleWithWebIdentity")[0];
    assert_eq!(
        web.form("RoleSessionName").as_deref(),
        Some("forge-dev-4711")
    );
    assert_eq!(web.form("DurationSeconds").as_deref(), Some("1800"));
    assert!(
        web.authorization.is_none(),
        "AssumeRoleWithWebIdentity is unsigned"
    );
    let hops = sts.calls("AssumeRole");
    assert_eq!(hops.len(), 2);
    assert_eq!(hops[0].form("ExternalId").as_deref(), Some("ext-123"));
    assert_eq!(
        hops[0].form("Tags.member.1.Key").as_deref(),
        Some("forge:env")
    );
    assert_eq!(hops[0].form("Tags.member.1.Value").as_deref(), Some("dev"));
    assert_eq!(
        hops[1].form("RoleArn").as_deref(),
        Some("arn:aws:iam::222222222222:role/Extra")
    );
    assert_eq!(hops[1].form("ExternalId"), None);
}

#[tokio::test]
async fn access_denied_with_session_tags_mentions_tag_session() {
    let sts = FakeSts::start(vec![], vec![Error("AccessDenied")]).await;
    let mut c = chain(value_token(fresh_jwt(0)), 0);
    c.hops[0].tags = vec![("forge:env".into(), "dev".into())];
    let err = RoleChainProvider::new(c, &base_config(&sts.server.url()).await)
        .unwrap()
        .assume()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sts:TagSession"), "{err}");
}

#[tokio::test]
async fn the_token_file_is_reread_on_every_walk() {
    let sts = FakeSts::start(vec![], vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let provider = RoleChainProvider::new(
        chain(forge_auth::TokenSource::File(path.clone()), 0),
        &base_config(&sts.server.url()).await,
    )
    .unwrap();
    let (first, second) = (fresh_jwt(1), fresh_jwt(2));
    std::fs::write(&path, &first).unwrap();
    provider.assume().await.unwrap();
    std::fs::write(&path, format!("{second}\n")).unwrap();
    provider.assume().await.unwrap();
    let sent: Vec<String> = sts
        .calls("AssumeRoleWithWebIdentity")
        .iter()
        .map(|r| r.form("WebIdentityToken").unwrap())
        .collect();
    assert_eq!(sent, [first, second]);
}

#[tokio::test]
async fn expired_credentials_at_the_environment_step_are_not_retried_and_say_so() {
    let (sts, result) = run(
        vec![Fine(HOUR)],
        vec![Error("ExpiredToken")],
        fresh_jwt(0),
        4,
    )
    .await;
    check_failure(
        &result,
        Step::EnvRole,
        "ExpiredToken",
        &["expired before use", "machine clock"],
    );
    assert_eq!(sts.calls("AssumeRole").len(), 1);
}

/// The error, every cause included, as the CLI prints it.
fn full_text(err: &ChainError) -> String {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        text.push_str(&format!(": {c} [{c:?}]"));
        cause = c.source();
    }
    text
}

#[tokio::test]
async fn a_malformed_sts_endpoint_fails_at_once_and_no_cause_carries_the_token() {
    let token = fresh_jwt(0);
    let provider = RoleChainProvider::new(
        chain(value_token(token.clone()), 4),
        &base_config("localhost-no-scheme").await,
    )
    .unwrap();
    let err = provider.assume().await.expect_err("no usable endpoint");
    let text = full_text(&err);
    assert_eq!(err.step(), Some(Step::Hub), "{text}");
    assert!(!text.contains(&token), "the token leaked: {text}");
    assert!(
        !text.contains("WebIdentityToken=ey"),
        "the token leaked: {text}"
    );
    match &err {
        ChainError::Sts(f) => assert_eq!(
            f.retries, 0,
            "a request that cannot be built is not retried: {text}"
        ),
        other => panic!("expected an STS failure: {other}"),
    }
}

#[tokio::test]
async fn a_silent_sts_times_out_per_attempt_and_is_retried() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let _server = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            open.push(stream);
        }
    });
    let mut chain = chain(value_token(fresh_jwt(0)), 1);
    chain.retry.attempt_timeout = Duration::from_millis(300);
    let provider = RoleChainProvider::new(
        chain,
        &base_config(&format!("http://127.0.0.1:{port}")).await,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = provider.assume().await.expect_err("STS never answers");
    assert_eq!(err.code(), Some("Timeout"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one retry"
    );
    assert!(err.to_string().contains("did not answer within"), "{err}");
}

/// Short-lived credentials behind the SDK's identity cache: reused while valid, refreshed by a
/// new chain walk shortly before they expire, and that walk reads the token source again (a
/// CI token file rewritten between the two).
#[tokio::test]
async fn short_lived_credentials_are_cached_then_refreshed_with_a_fresh_token() {
    let short = Duration::from_secs(4);
    let sts = FakeSts::start(
        vec![Fine(short), Fine(short)],
        vec![Fine(short), Fine(short)],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let (first, second) = (fresh_jwt(1), fresh_jwt(2));
    std::fs::write(&token_file, &first).unwrap();
    let source = forge_auth::TokenSource::detect(
        &forge_auth::token::TokenSetting::File(token_file.clone()),
        &|_: &str| None,
        &forge_auth::token::DetectOptions::default(),
    )
    .unwrap();
    let provider =
        RoleChainProvider::new(chain(source, 0), &base_config(&sts.server.url()).await).unwrap();
    // A 1 s buffer (the cache adds a random share of it): 4 s credentials are reused for at
    // least 2.5 s, and once past expiry they are certainly replaced.
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(sts.server.url())
        .identity_cache(
            aws_config::identity::IdentityCache::lazy()
                .buffer_time(Duration::from_secs(1))
                .build(),
        )
        .credentials_provider(provider)
        .load()
        .await;
    let walks = || sts.calls("AssumeRoleWithWebIdentity").len();
    forge_auth::identity::caller_identity(&sdk).await.unwrap();
    forge_auth::identity::caller_identity(&sdk).await.unwrap();
    assert_eq!(
        walks(),
        1,
        "valid credentials are reused, not fetched per call"
    );

    std::fs::write(&token_file, &second).unwrap();
    tokio::time::sleep(Duration::from_millis(4300)).await;
    forge_auth::identity::caller_identity(&sdk).await.unwrap();
    assert_eq!(
        walks(),
        2,
        "credentials inside the refresh buffer are replaced"
    );
    assert_eq!(sts.calls("AssumeRole").len(), 2);
    let tokens: Vec<String> = sts
        .calls("AssumeRoleWithWebIdentity")
        .iter()
        .map(|c| c.form("WebIdentityToken").unwrap_or_default())
        .collect();
    assert_eq!(
        tokens,
        [first, second],
        "the second walk read the new token"
    );
}
