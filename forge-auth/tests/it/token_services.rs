//! The Azure DevOps and GitHub Actions token protocols, including their error responses, against
//! local HTTP servers speaking them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use forge_auth::token::{DetectOptions, TokenSetting};
use forge_auth::{Secret, TokenError, TokenSource};

use crate::support::{self, ADO_ACCESS_TOKEN, GH_REQUEST_TOKEN, Server, fast_retry, fresh_jwt};

fn ado(url: &str, access_token: &str, connection: &str) -> TokenSource {
    let url = url.to_owned();
    let access_token = access_token.to_owned();
    let lookup = move |k: &str| match k {
        "SYSTEM_OIDCREQUESTURI" => Some(url.clone()),
        "SYSTEM_ACCESSTOKEN" => Some(access_token.clone()),
        _ => None,
    };
    let options = DetectOptions {
        audience: None,
        service_connection: Some(connection.to_owned()),
    };
    TokenSource::detect(&TokenSetting::AzureDevOps, &lookup, &options).unwrap()
}

fn github(url: &str, request_token: &str, audience: Option<&str>) -> TokenSource {
    let url = url.to_owned();
    let request_token = request_token.to_owned();
    let lookup = move |k: &str| match k {
        "ACTIONS_ID_TOKEN_REQUEST_URL" => Some(url.clone()),
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN" => Some(request_token.clone()),
        _ => None,
    };
    let options = DetectOptions {
        audience: audience.map(str::to_owned),
        service_connection: None,
    };
    TokenSource::detect(&TokenSetting::GitHub, &lookup, &options).unwrap()
}

#[track_caller]
fn check_http(err: &TokenError, status: u16, expected: &[&str]) {
    let text = err.to_string();
    assert!(
        matches!(err, TokenError::Http { status: s, .. } if *s == status),
        "{text}"
    );
    for part in expected {
        assert!(text.contains(part), "`{part}` missing from: {text}");
    }
    for secret in [ADO_ACCESS_TOKEN, GH_REQUEST_TOKEN, "wrong-token"] {
        assert!(!text.contains(secret), "secret leaked: {text}");
        assert!(
            !format!("{err:?}").contains(secret),
            "secret leaked into Debug: {err:?}"
        );
    }
}

#[tokio::test]
async fn azure_devops_token_and_its_errors() {
    let server = support::azure_devops("conn-1").await;
    let http = reqwest::Client::new();
    let uri = format!("{}/oidctoken", server.url());

    let token = ado(&uri, ADO_ACCESS_TOKEN, "conn-1")
        .fetch(&http, &fast_retry(0))
        .await
        .unwrap();
    assert_eq!(
        token.claims.sub.as_deref(),
        Some("repo:platform/payments:ref:refs/heads/main")
    );
    let again = ado(&uri, ADO_ACCESS_TOKEN, "conn-1")
        .fetch(&http, &fast_retry(0))
        .await
        .unwrap();
    assert_ne!(token.value, again.value, "a fresh token per fetch");

    let err = ado(&uri, "wrong-token", "conn-1")
        .fetch(&http, &fast_retry(3))
        .await
        .unwrap_err();
    check_http(
        &err,
        401,
        &[
            "Azure DevOps token request",
            "HTTP 401 after 0 retries",
            "TF400813",
            "$(System.AccessToken)",
        ],
    );

    let err = ado(&uri, ADO_ACCESS_TOKEN, "conn-2")
        .fetch(&http, &fast_retry(3))
        .await
        .unwrap_err();
    check_http(
        &err,
        404,
        &[
            "Service connection with id conn-2 not found",
            "authorized to use it",
        ],
    );
    assert_eq!(server.count(), 4, "4xx answers are not retried");
    let sent = &server.recorded()[0];
    assert_eq!(
        sent.authorization.as_deref(),
        Some("Bearer ado-system-access-token")
    );
}

#[tokio::test]
async fn github_token_audience_and_errors() {
    let server = support::github().await;
    let http = reqwest::Client::new();
    let url = format!("{}/_apis/token?api-version=2.0", server.url());

    github(&url, GH_REQUEST_TOKEN, None)
        .fetch(&http, &fast_retry(0))
        .await
        .unwrap();
    github(&url, GH_REQUEST_TOKEN, Some("api://forge"))
        .fetch(&http, &fast_retry(0))
        .await
        .unwrap();
    let seen = server.recorded();
    assert_eq!(
        seen[0].query("audience").as_deref(),
        Some("sts.amazonaws.com")
    );
    assert_eq!(seen[1].query("audience").as_deref(), Some("api://forge"));
    assert_eq!(seen[1].query("api-version").as_deref(), Some("2.0"));

    let err = github(&url, "wrong-token", None)
        .fetch(&http, &fast_retry(3))
        .await
        .unwrap_err();
    check_http(
        &err,
        401,
        &[
            "GitHub Actions token request",
            "Bad credentials",
            "id-token: write",
        ],
    );
    assert_eq!(server.count(), 3);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_with_the_count() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    // 500 twice, then a token: the fetch succeeds on the third attempt.
    let server = Server::start(move |_, n| {
        seen.fetch_add(1, Ordering::SeqCst);
        if n < 2 {
            (
                500,
                "application/json",
                r#"{"message":"Internal Server Error"}"#.into(),
            )
        } else {
            (
                200,
                "application/json",
                serde_json::json!({"value": fresh_jwt(n)}).to_string(),
            )
        }
    })
    .await;
    let url = format!("{}/t?api-version=2.0", server.url());
    github(&url, GH_REQUEST_TOKEN, None)
        .fetch(&reqwest::Client::new(), &fast_retry(3))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let always = Server::start(|_, _| {
        (
            503,
            "text/html",
            "<html><body>Service Unavailable</body></html>".into(),
        )
    })
    .await;
    let err = ado(&format!("{}/oidc", always.url()), ADO_ACCESS_TOKEN, "c")
        .fetch(&reqwest::Client::new(), &fast_retry(2))
        .await
        .unwrap_err();
    check_http(
        &err,
        503,
        &[
            "HTTP 503 after 2 retries in",
            "Service Unavailable",
            "retry the job later",
        ],
    );
    assert_eq!(always.count(), 3);
}

#[tokio::test]
async fn a_success_without_the_documented_field_is_an_error() {
    let server = Server::start(|_, _| (200, "application/json", r#"{"token":"x"}"#.into())).await;
    let url = format!("{}/t?api-version=2.0", server.url());
    let err = github(&url, GH_REQUEST_TOKEN, None)
        .fetch(&reqwest::Client::new(), &fast_retry(0))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Empty { .. }), "{err}");

    let html = Server::start(|_, _| (200, "text/html", "<html>sign in</html>".into())).await;
    let err = ado(&format!("{}/o", html.url()), ADO_ACCESS_TOKEN, "c")
        .fetch(&reqwest::Client::new(), &fast_retry(0))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not the documented JSON"), "{err}");
}

#[tokio::test]
async fn an_unreachable_token_service_is_retried_and_named() {
    let port = forge_testkit::free_port();
    let err = github(
        &format!("http://127.0.0.1:{port}/t?x=1"),
        GH_REQUEST_TOKEN,
        None,
    )
    .fetch(&reqwest::Client::new(), &fast_retry(1))
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}"))
            && text.contains("after 1 retries")
            && text.contains("could not be reached"),
        "{text}"
    );
}

#[test]
fn secrets_never_show_in_debug() {
    let source = TokenSource::Value {
        origin: "env OIDC".into(),
        token: Secret::new("eyJ.super.secret"),
    };
    let shown = format!("{source:?}");
    assert!(!shown.contains("super"), "{shown}");
    assert!(shown.contains("<redacted>"));
}

/// Each provider's 401/403/500 answers map to a hint that says what to do; 4xx are final, 5xx
/// are retried (here with a budget of 1 retry).
#[tokio::test]
async fn error_statuses_map_to_actionable_hints() {
    let cases: [(&str, u16, &str, &str, usize); 6] = [
        (
            "ado",
            401,
            r#"{"message":"TF400813: The user '' is not authorized to access this resource."}"#,
            "$(System.AccessToken)",
            1,
        ),
        (
            "ado",
            403,
            r#"{"message":"The pipeline is not valid. Job Job: Step AWS references service connection aws which could not be found."}"#,
            "Project settings → Service connections → Security",
            1,
        ),
        (
            "ado",
            500,
            r#"{"message":"VS402928: internal error"}"#,
            "retry the job later",
            2,
        ),
        (
            "github",
            401,
            r#"{"message":"Bad credentials"}"#,
            "id-token: write",
            1,
        ),
        (
            "github",
            403,
            r#"{"message":"Resource not accessible by integration"}"#,
            "workflows from forks get no OIDC token",
            1,
        ),
        (
            "github",
            500,
            r#"{"message":"Internal Server Error"}"#,
            "retry the job later",
            2,
        ),
    ];
    for (provider, status, body, hint, requests) in cases {
        let server = Server::start(move |_, _| (status, "application/json", body.to_owned())).await;
        let source = if provider == "ado" {
            ado(&format!("{}/oidc", server.url()), ADO_ACCESS_TOKEN, "c")
        } else {
            github(
                &format!("{}/t?api-version=2.0", server.url()),
                GH_REQUEST_TOKEN,
                None,
            )
        };
        let err = source
            .fetch(&reqwest::Client::new(), &fast_retry(1))
            .await
            .unwrap_err();
        let message = body
            .trim_start_matches(r#"{"message":""#)
            .trim_end_matches(r#""}"#);
        check_http(&err, status, &[hint, message]);
        assert_eq!(server.count(), requests, "{provider} {status}");
    }
}
