//! The two-step chain against moto in server mode: for every token source the final identity is
//! `assumed-role/ConveyorDeployRole-dev/<session>` in account 111111111111, and refreshes fetch
//! a new token every time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use forge_auth::identity::caller_identity;
use forge_auth::token::{DetectOptions, TokenSetting};
use forge_auth::{RoleChainProvider, Secret, TokenSource};

use crate::support::{self, ADO_ACCESS_TOKEN, GH_REQUEST_TOKEN, base_config, chain, fresh_jwt};

async fn whoami(
    provider: RoleChainProvider,
    endpoint: &str,
) -> forge_auth::identity::CallerIdentity {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .credentials_provider(provider)
        .load()
        .await;
    caller_identity(&sdk).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_ends_in_the_env_role_for_every_token_source() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    let endpoint = moto.endpoint();
    let base = base_config(&endpoint).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, fresh_jwt(0)).unwrap();
    let ado = support::azure_devops("11111111-2222-3333-4444-555555555555").await;
    let gh = support::github().await;
    let ado_uri = format!(
        "{}/project/_apis/distributedtask/hubs/build/plans/p/jobs/j/oidctoken",
        ado.url()
    );
    let gh_url = format!("{}/token?api-version=2.0", gh.url());
    let env = move |k: &str| -> Option<String> {
        match k {
            "TF_BUILD" => Some("True".into()),
            "SYSTEM_OIDCREQUESTURI" => Some(ado_uri.clone()),
            "SYSTEM_ACCESSTOKEN" => Some(ADO_ACCESS_TOKEN.into()),
            "ACTIONS_ID_TOKEN_REQUEST_URL" => Some(gh_url.clone()),
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN" => Some(GH_REQUEST_TOKEN.into()),
            _ => None,
        }
    };
    let options = DetectOptions {
        audience: None,
        service_connection: Some("11111111-2222-3333-4444-555555555555".into()),
    };
    let sources = [
        ("file", TokenSource::File(file.clone())),
        ("env", support::value_token(fresh_jwt(1))),
        (
            "azure-devops",
            TokenSource::detect(&TokenSetting::Auto, &env, &options).unwrap(),
        ),
        (
            "github",
            TokenSource::detect(&TokenSetting::GitHub, &env, &options).unwrap(),
        ),
    ];
    for (name, source) in sources {
        let provider = RoleChainProvider::new(chain(source, 0), &base).unwrap();
        let walked = provider.assume().await.unwrap();
        assert_eq!(
            walked.assumed_role_arn.as_deref(),
            Some("arn:aws:sts::111111111111:assumed-role/ConveyorDeployRole-dev/forge-dev-4711"),
            "{name}"
        );
        let me = whoami(provider, &endpoint).await;
        assert_eq!(me.account, "111111111111", "{name}");
        assert_eq!(
            me.arn, "arn:aws:sts::111111111111:assumed-role/ConveyorDeployRole-dev/forge-dev-4711",
            "{name}"
        );
    }
    // The token services saw the documented requests.
    let ado_req = &ado.recorded()[0];
    assert_eq!(ado_req.method, "POST");
    assert_eq!(
        ado_req.query("serviceConnectionId").as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
    let gh_req = &gh.recorded()[0];
    assert_eq!(gh_req.query("api-version").as_deref(), Some("2.0"));
    assert_eq!(
        gh_req.query("audience").as_deref(),
        Some("sts.amazonaws.com")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refresh_fetches_a_new_token_and_masks_every_secret() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    let endpoint = moto.endpoint();
    let gh = support::github().await;
    let lookup = {
        let url = format!("{}/token?api-version=2.0", gh.url());
        move |k: &str| match k {
            "ACTIONS_ID_TOKEN_REQUEST_URL" => Some(url.clone()),
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN" => Some(GH_REQUEST_TOKEN.to_owned()),
            _ => None,
        }
    };
    let source =
        TokenSource::detect(&TokenSetting::Auto, &lookup, &DetectOptions::default()).unwrap();
    let revealed = Arc::new(AtomicUsize::new(0));
    let counter = revealed.clone();
    let provider = RoleChainProvider::new(chain(source, 0), &base_config(&endpoint).await)
        .unwrap()
        .with_secret_hook(Arc::new(move |s: &Secret| {
            assert!(!s.expose().is_empty());
            counter.fetch_add(1, Ordering::SeqCst);
        }));
    // A buffer longer than the session makes the SDK's identity cache treat every one-hour
    // credential as about to expire, i.e. "short-lived": each call must refresh.
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(&endpoint)
        .identity_cache(
            aws_config::identity::IdentityCache::lazy()
                .buffer_time(Duration::from_secs(10_000))
                .build(),
        )
        .credentials_provider(provider)
        .load()
        .await;
    for _ in 0..3 {
        let me = caller_identity(&sdk).await.unwrap();
        assert!(
            me.arn
                .ends_with(":assumed-role/ConveyorDeployRole-dev/forge-dev-4711"),
            "{}",
            me.arn
        );
    }
    assert_eq!(gh.count(), 3, "one token request per refresh");
    // token + (secret key + session token) for the hub and the env role, per refresh
    assert_eq!(revealed.load(Ordering::SeqCst), 3 * 5);

    // With the default cache, credentials valid for an hour are reused: no new token.
    let provider = RoleChainProvider::new(
        chain(
            TokenSource::detect(&TokenSetting::Auto, &lookup, &DetectOptions::default()).unwrap(),
            0,
        ),
        &base_config(&endpoint).await,
    )
    .unwrap();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(provider)
        .load()
        .await;
    let client = aws_sdk_sts::Client::new(&sdk);
    for _ in 0..3 {
        client.get_caller_identity().send().await.unwrap();
    }
    assert_eq!(gh.count(), 4);
}
