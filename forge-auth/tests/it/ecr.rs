//! ECR registry credentials: cached until shortly before `expiresAt`, refetched after; an
//! already-expired token (moto's are from 2015) is used once and never cached.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use forge_auth::ecr::{EcrCredentials, region_of};

use crate::support::Server;

/// An in-process fake of ECR's JSON 1.1 `GetAuthorizationToken` (moto cannot issue a token that
/// is still valid), answering with AWS's documented shape; `expires_in` per call, password per
/// call number.
async fn fake_ecr(expires_in: Vec<i64>) -> Server {
    let expires_in = Arc::new(Mutex::new(expires_in));
    Server::start(move |req, n| {
        assert!(req.body.contains('{'), "JSON body expected: {}", req.body);
        let secs = expires_in.lock().unwrap().get(n).copied().unwrap_or(43_200);
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + secs;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:password-{n}"));
        let body = serde_json::json!({"authorizationData": [{
            "authorizationToken": token,
            "expiresAt": at,
            "proxyEndpoint": "https://111111111111.dkr.ecr.eu-west-1.amazonaws.com",
        }]});
        (200, "application/x-amz-json-1.1", body.to_string())
    })
    .await
}

async fn sdk(endpoint: &str) -> aws_types::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::for_tests())
        .load()
        .await
}

#[tokio::test]
async fn valid_tokens_are_cached_until_shortly_before_expiry() {
    // 12 h, then 10 min (inside the refresh margin), then 12 h.
    let server = fake_ecr(vec![43_200, 600, 43_200]).await;
    let ecr = EcrCredentials::new(&sdk(&server.url()).await);
    let host = "111111111111.dkr.ecr.eu-west-1.amazonaws.com";
    let (user, password) = ecr.basic_for(host).await.unwrap();
    assert_eq!((user.as_str(), password.expose()), ("AWS", "password-0"));
    let (_, again) = ecr.basic_for(host).await.unwrap();
    assert_eq!(again.expose(), "password-0");
    assert_eq!(server.count(), 1, "cached");
    // Another registry host has its own entry; this one expires within the margin.
    let other = "222222222222.dkr.ecr.eu-west-1.amazonaws.com";
    assert_eq!(ecr.basic_for(other).await.unwrap().1.expose(), "password-1");
    assert_eq!(ecr.basic_for(other).await.unwrap().1.expose(), "password-2");
    assert_eq!(ecr.basic_for(other).await.unwrap().1.expose(), "password-2");
    assert_eq!(server.count(), 3);
    assert!(!format!("{:?}", ecr.basic_for(host).await.unwrap()).contains("password"));
}

#[tokio::test]
async fn expired_tokens_are_used_once_and_refetched() {
    let server = fake_ecr(vec![-60, -60, 43_200]).await;
    let ecr = EcrCredentials::new(&sdk(&server.url()).await);
    let host = "111111111111.dkr.ecr.eu-west-1.amazonaws.com";
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(ecr.basic_for(host).await.unwrap().1.expose().to_owned());
    }
    assert_eq!(
        seen,
        ["password-0", "password-1", "password-2", "password-2"]
    );
    assert_eq!(server.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_tokens_from_2015_are_refetched_every_time() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    let ecr = EcrCredentials::new(&sdk(&moto.endpoint()).await);
    let host = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
    for _ in 0..2 {
        let (user, password) = ecr.basic_for(host).await.unwrap();
        assert_eq!(user, "AWS");
        assert!(!password.is_blank());
    }
    assert_eq!(ecr.fetch_count(), 2, "an expired token is never cached");
}

#[tokio::test]
async fn api_errors_name_the_registry_and_the_code() {
    let server = Server::start(|_, _| {
        (400, "application/x-amz-json-1.1", r#"{"__type":"AccessDeniedException","message":"User: arn:aws:sts::111111111111:assumed-role/ConveyorDeployRole-dev/forge-dev is not authorized to perform: ecr:GetAuthorizationToken on resource: *"}"#.into())
    })
    .await;
    let ecr = EcrCredentials::new(&sdk(&server.url()).await);
    let err = ecr
        .basic_for("111111111111.dkr.ecr.eu-west-1.amazonaws.com")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("AccessDeniedException")
            && err.contains("111111111111.dkr.ecr.eu-west-1.amazonaws.com")
            && err.contains("ecr:GetAuthorizationToken"),
        "{err}"
    );
}

#[test]
fn registry_regions() {
    assert_eq!(
        region_of("111111111111.dkr.ecr.eu-west-1.amazonaws.com"),
        Some("eu-west-1")
    );
    assert_eq!(
        region_of("111111111111.dkr.ecr-fips.us-east-1.amazonaws.com"),
        Some("us-east-1")
    );
    assert_eq!(
        region_of("111111111111.dkr.ecr.cn-north-1.amazonaws.com.cn"),
        Some("cn-north-1")
    );
    assert_eq!(region_of("127.0.0.1:5000"), None);
    assert_eq!(region_of("ghcr.io"), None);
}

#[tokio::test]
async fn every_fetched_password_goes_to_the_secret_hook_once() {
    let server = fake_ecr(vec![43_200]).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    let ecr = EcrCredentials::new(&sdk(&server.url()).await).with_secret_hook(std::sync::Arc::new(
        move |s: &forge_auth::Secret| sink.lock().unwrap().push(s.expose().to_owned()),
    ));
    let host = "111111111111.dkr.ecr.eu-west-1.amazonaws.com";
    ecr.basic_for(host).await.unwrap();
    ecr.basic_for(host).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    // The password and its base64 `AWS:<password>` form, from the one fetch.
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], "password-0");
    use base64::Engine as _;
    assert_eq!(
        seen[1],
        base64::engine::general_purpose::STANDARD.encode("AWS:password-0")
    );
}
