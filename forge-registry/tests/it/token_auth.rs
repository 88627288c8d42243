//! The Bearer token flow (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`).
//!
//! The Debian `docker-registry` can only do token auth with an external token issuer signing
//! JWTs with a certificate, which the test machine does not have; so this in-process fake
//! reproduces the distribution token protocol (docs/spec/auth/token.md) exactly: 401 with a
//! Bearer challenge, a realm answering `{"token": …}` for `service` + `scope` query parameters,
//! Basic credentials required for push scopes. It serves one fixed manifest and its blobs.
//! The realm also takes the OAuth2 refresh-token grant (docs/spec/auth/oauth.md: `POST` with
//! `grant_type=refresh_token`, `refresh_token`, `service`, `client_id`, space-separated `scope`),
//! which is how Docker's `identitytoken` is exchanged.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use forge_registry::{
    Client, CopyOptions, Credential, ErrorKind, Reference, RetryPolicy, StaticCredential,
};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::fixtures;

/// How the fake's realm answers an OAuth2 `POST`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum OauthMode {
    /// Grants tokens for the valid refresh token.
    #[default]
    Grant,
    /// A token service without OAuth2 (the spec's "returns 404 using the HTTP POST method").
    NotFound,
    /// Redirects the POST elsewhere with 307 (which keeps method and body).
    Redirect,
}

#[derive(Default)]
struct State {
    oauth_mode: OauthMode,
    /// Challenge registry requests with Basic instead of Bearer.
    basic_challenge: bool,
    /// Bodies of requests that arrived at the redirect target.
    redirected: Vec<String>,
    /// (query string, Authorization header) of every token request.
    token_requests: Vec<(String, Option<String>)>,
    /// Form fields of every OAuth2 `POST` to the realm.
    oauth_requests: Vec<Vec<(String, String)>>,
    tokens: HashSet<String>,
    /// Authorization headers seen on registry (non-token) requests.
    registry_auth: Vec<Option<String>>,
    /// Send blob requests on to `http://localhost:<port>/storage/…` (another host for the
    /// client), which challenges for credentials of its own.
    storage_redirect: bool,
    /// Authorization headers seen at `/storage/`.
    storage_auth: Vec<Option<String>>,
    /// The realm answers this many token requests with 503 first (an overloaded service).
    token_failures: u32,
}

struct Fake {
    port: u16,
    state: Arc<Mutex<State>>,
    image: fixtures::Image,
    _task: tokio::task::JoinHandle<()>,
}

/// The refresh token the fake's realm accepts.
const REFRESH_TOKEN: &str = "refresh-abc";

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    port: u16,
    state: Arc<Mutex<State>>,
    image: fixtures::Image,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let form_body = if method == hyper::Method::POST {
        use http_body_util::BodyExt as _;
        req.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    } else {
        Bytes::new()
    };
    let respond = |status: StatusCode, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    };
    if path.starts_with("/storage/") {
        state.lock().expect("state").storage_auth.push(auth.clone());
        let mut resp = respond(StatusCode::UNAUTHORIZED, b"{}".to_vec());
        resp.headers_mut().insert(
            "www-authenticate",
            format!("Bearer realm=\"http://localhost:{port}/token\",service=\"fake-registry\"")
                .parse()
                .expect("header"),
        );
        return Ok(resp);
    }
    if path == "/elsewhere" {
        let mut st = state.lock().expect("state");
        st.redirected
            .push(String::from_utf8_lossy(&form_body).into_owned());
        return Ok(respond(StatusCode::OK, b"{}".to_vec()));
    }
    if path == "/token" {
        let mut st = state.lock().expect("state");
        if st.token_failures > 0 {
            st.token_failures -= 1;
            return Ok(respond(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"errors":[{"code":"UNAVAILABLE","message":"token service overloaded"}]}"#
                    .to_vec(),
            ));
        }
    }
    let oauth_mode = state.lock().expect("state").oauth_mode;
    if path == "/token" && method == hyper::Method::POST && oauth_mode == OauthMode::NotFound {
        return Ok(respond(
            StatusCode::NOT_FOUND,
            b"404 page not found".to_vec(),
        ));
    }
    if path == "/token" && method == hyper::Method::POST && oauth_mode == OauthMode::Redirect {
        let mut resp = respond(StatusCode::TEMPORARY_REDIRECT, Vec::new());
        resp.headers_mut().insert(
            "location",
            format!("http://127.0.0.1:{port}/elsewhere")
                .parse()
                .expect("header"),
        );
        return Ok(resp);
    }
    if path == "/token" && method == hyper::Method::POST {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&form_body)
            .into_owned()
            .collect();
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let mut st = state.lock().expect("state");
        st.oauth_requests.push(form.clone());
        let granted = field("grant_type") == Some("refresh_token")
            && field("refresh_token") == Some(REFRESH_TOKEN)
            && field("service") == Some("fake-registry")
            && field("client_id").is_some_and(|c| !c.is_empty());
        if !granted {
            return Ok(respond(
                StatusCode::UNAUTHORIZED,
                br#"{"error":"invalid_grant"}"#.to_vec(),
            ));
        }
        let token = format!("tok-oauth-{}", st.oauth_requests.len());
        st.tokens.insert(token.clone());
        return Ok(respond(
            StatusCode::OK,
            format!(
                "{{\"access_token\":\"{token}\",\"expires_in\":300,\"scope\":\"{}\"}}",
                field("scope").unwrap_or("")
            )
            .into_bytes(),
        ));
    }
    if path == "/token" {
        let mut st = state.lock().expect("state");
        st.token_requests.push((query.clone(), auth.clone()));
        if query.contains("push") && auth.as_deref() != Some(basic("ci", "s3cret").as_str()) {
            return Ok(respond(StatusCode::UNAUTHORIZED, b"{}".to_vec()));
        }
        let token = format!("tok-{}", st.token_requests.len());
        st.tokens.insert(token.clone());
        return Ok(respond(
            StatusCode::OK,
            format!("{{\"token\":\"{token}\",\"expires_in\":300}}").into_bytes(),
        ));
    }
    let valid = {
        let mut st = state.lock().expect("state");
        st.registry_auth.push(auth.clone());
        auth.as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| st.tokens.contains(t))
    };
    if state.lock().expect("state").basic_challenge {
        let mut resp = respond(StatusCode::UNAUTHORIZED, b"{}".to_vec());
        resp.headers_mut().insert(
            "www-authenticate",
            "Basic realm=\"fake-registry\"".parse().expect("header"),
        );
        return Ok(resp);
    }
    if !valid {
        let mut resp = respond(
            StatusCode::UNAUTHORIZED,
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
        );
        resp.headers_mut().insert(
            "www-authenticate",
            format!(
                "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake-registry\",scope=\"repository:team/app:pull\""
            )
            .parse()
            .expect("header"),
        );
        return Ok(resp);
    }
    if path.ends_with("/tags/list") {
        return Ok(respond(
            StatusCode::OK,
            br#"{"name":"x","tags":["1"]}"#.to_vec(),
        ));
    }
    if path.ends_with("/manifests/1") || path.ends_with(&format!("/manifests/{}", image.digest)) {
        let mut resp = respond(StatusCode::OK, image.manifest.clone());
        resp.headers_mut().insert(
            "content-type",
            fixtures::OCI_MANIFEST.parse().expect("header"),
        );
        return Ok(resp);
    }
    if image
        .blob_digests()
        .iter()
        .any(|d| path.ends_with(&format!("/blobs/{d}")))
    {
        if state.lock().expect("state").storage_redirect {
            let mut resp = respond(StatusCode::TEMPORARY_REDIRECT, Vec::new());
            resp.headers_mut().insert(
                "location",
                format!("http://localhost:{port}/storage{path}")
                    .parse()
                    .expect("header"),
            );
            return Ok(resp);
        }
        return Ok(respond(StatusCode::OK, Vec::new()));
    }
    Ok(respond(StatusCode::NOT_FOUND, b"{}".to_vec()))
}

async fn start() -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let state = Arc::new(Mutex::new(State::default()));
    let image = fixtures::oci_image(42, 1, 64);
    let (st, img) = (state.clone(), image.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (st, img) = (st.clone(), img.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    handle(req, port, st.clone(), img.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Fake {
        port,
        state,
        image,
        _task: task,
    }
}

fn client(credential: Option<Credential>, port: u16) -> Client {
    let mut b = Client::builder().retry_policy(RetryPolicy::none());
    if let Some(c) = credential {
        b = b.credential_provider(StaticCredential::for_registry(
            format!("127.0.0.1:{port}"),
            c,
        ));
    }
    b.build().expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_fetched_per_scope_cached_and_basic_goes_only_to_the_realm() {
    let fake = start().await;
    let host = format!("127.0.0.1:{}", fake.port);
    let src: Reference = format!("{host}/team/app:1").parse().expect("ref");

    // Anonymous pull: the realm is asked without credentials, for the pull scope.
    let anon = client(None, fake.port);
    let resolved = anon.resolve(&src).await.expect("anonymous pull");
    assert_eq!(resolved.digest.to_string(), fake.image.digest);

    // With credentials: Basic goes to the realm, the registry only ever sees Bearer.
    let c = client(Some(Credential::basic("ci", "s3cret")), fake.port);
    c.resolve(&src).await.expect("pull");
    c.resolve(&src).await.expect("pull again");
    {
        let st = fake.state.lock().expect("state");
        assert_eq!(
            st.token_requests.len(),
            2,
            "the second pull reuses the cached token"
        );
        let (query, auth) = &st.token_requests[0];
        assert_eq!(
            query,
            "service=fake-registry&scope=repository%3Ateam%2Fapp%3Apull"
        );
        assert_eq!(auth, &None);
        let (_, auth) = &st.token_requests[1];
        assert_eq!(auth.as_deref(), Some(basic("ci", "s3cret").as_str()));
        assert!(
            st.registry_auth
                .iter()
                .flatten()
                .all(|a| a.starts_with("Bearer tok-")),
            "credentials leaked to the registry: {:?}",
            st.registry_auth
        );
    }

    // A promotion within the registry asks for push,pull on the destination FIRST (some
    // registries read only the first scope), plus pull on the source.
    let dst: Reference = format!("{host}/prod/app:1").parse().expect("ref");
    let report = c
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .expect("copy");
    assert!(report.already_present && report.verified);
    {
        let st = fake.state.lock().expect("state");
        let (query, _) = st.token_requests.last().expect("a token request");
        assert_eq!(
            query,
            "service=fake-registry&scope=repository%3Aprod%2Fapp%3Apush%2Cpull&scope=repository%3Ateam%2Fapp%3Apull"
        );
    }

    // The wrong password is refused at the realm: an Unauthorized error, not a retry loop.
    let wrong = client(Some(Credential::basic("ci", "wrong")), fake.port);
    let err = wrong
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .expect_err("wrong password");
    assert!(matches!(err.kind, ErrorKind::Unauthorized { .. }), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "secret in message: {err}"
    );
}

/// A client whose credentials come from the Docker config `json`, with credential helpers
/// looked up in `dir` only.
fn docker_config_client(dir: &std::path::Path, json: &str) -> Client {
    let config = forge_registry::DockerConfig::parse(&dir.join("config.json"), json.as_bytes())
        .expect("config")
        .with_helper_dirs(vec![dir.to_owned()]);
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "secrets in Debug"
    );
    Client::builder()
        .docker_config(config)
        .retry_policy(RetryPolicy::none())
        .build()
        .expect("client")
}

fn helper_script(dir: &std::path::Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write helper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Another test may fork while the file was open for writing; until that child execs, running
    // the script fails with ETXTBSY ("Text file busy"). Wait that window out.
    for _ in 0..100 {
        match std::process::Command::new(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
        {
            Err(e) if e.raw_os_error() == Some(26) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_credential_helpers_feed_the_token_flow() {
    let fake = start().await;
    let host = format!("127.0.0.1:{}", fake.port);
    let dir = tempfile::tempdir().expect("temp dir");
    helper_script(
        dir.path(),
        "forgetest",
        r#"read host; echo "$host" > "$(dirname "$0")/asked"; printf '{"ServerURL":"%s","Username":"ci","Secret":"s3cret"}' "$host""#,
    );
    helper_script(
        dir.path(),
        "empty",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    let src: Reference = format!("{host}/team/app:1").parse().expect("ref");
    let dst: Reference = format!("{host}/prod/app:1").parse().expect("ref");

    let c = docker_config_client(
        dir.path(),
        &format!(r#"{{"credHelpers":{{"{host}":"forgetest"}},"credsStore":"empty"}}"#),
    );
    let report = c
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .unwrap_or_else(|e| {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            panic!("the helper's credentials should grant the push scope: {text}")
        });
    assert!(report.verified);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("asked"))
            .expect("helper ran")
            .trim(),
        host
    );

    // credsStore that has nothing for the host: anonymous, so the push scope is refused.
    let c = docker_config_client(dir.path(), r#"{"credsStore":"empty"}"#);
    let err = c
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .expect_err("no credentials");
    assert!(
        matches!(err.kind, ErrorKind::Unauthorized { .. }),
        "{err}: {:?}",
        std::error::Error::source(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_identity_tokens_are_exchanged_with_the_oauth2_refresh_grant() {
    let fake = start().await;
    let host = format!("127.0.0.1:{}", fake.port);
    let src: Reference = format!("{host}/team/app:1").parse().expect("ref");
    let dst: Reference = format!("{host}/prod/app:1").parse().expect("ref");
    let dir = tempfile::tempdir().expect("temp dir");
    // What `az acr login` writes: a placeholder `auth` (user 0000…, empty password) next to
    // the identity token. The identity token must win.
    let c = docker_config_client(
        dir.path(),
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"MDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwOg==","identitytoken":"{REFRESH_TOKEN}"}}}}}}"#
        ),
    );
    let report = c
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .expect("the refresh token grants push");
    assert!(report.verified);
    {
        let st = fake.state.lock().expect("state");
        assert!(
            st.token_requests.is_empty(),
            "no GET token requests: {:?}",
            st.token_requests
        );
        // Source and destination ask concurrently: find the destination's request.
        let form = st
            .oauth_requests
            .iter()
            .find(|f| f.iter().any(|(k, v)| k == "scope" && v.contains("push")))
            .expect("an OAuth2 request for the push scope");
        let fields: Vec<(&str, &str)> =
            form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            fields,
            [
                ("grant_type", "refresh_token"),
                ("refresh_token", REFRESH_TOKEN),
                ("client_id", "forge"),
                ("service", "fake-registry"),
                (
                    "scope",
                    "repository:prod/app:push,pull repository:team/app:pull"
                ),
            ]
        );
        assert!(
            st.registry_auth
                .iter()
                .flatten()
                .all(|a| a.starts_with("Bearer tok-oauth-")),
            "the refresh token leaked to the registry: {:?}",
            st.registry_auth
        );
    }

    // A helper answering Docker's `<token>` user name stores an identity token too; a revoked
    // one is refused at the realm without the secret in the message.
    helper_script(
        dir.path(),
        "revoked",
        r#"read host; printf '{"ServerURL":"%s","Username":"<token>","Secret":"revoked-xyz"}' "$host""#,
    );
    let c = docker_config_client(
        dir.path(),
        &format!(r#"{{"credHelpers":{{"{host}":"revoked"}}}}"#),
    );
    let err = c
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .expect_err("revoked refresh token");
    assert!(matches!(err.kind, ErrorKind::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains("revoked-xyz"), "{err}");
    assert!(err.to_string().contains("log in again"), "{err}");
    let st = fake.state.lock().expect("state");
    let form = st.oauth_requests.last().expect("an OAuth2 request");
    assert!(form.contains(&("refresh_token".to_owned(), "revoked-xyz".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_go_nowhere_but_an_oauth2_token_service() {
    let fake = start().await;
    let host = format!("127.0.0.1:{}", fake.port);
    let src: Reference = format!("{host}/team/app:1").parse().expect("ref");
    let dir = tempfile::tempdir().expect("temp dir");
    let json = format!(r#"{{"auths":{{"{host}":{{"identitytoken":"{REFRESH_TOKEN}"}}}}}}"#);
    for (mode, expected) in [
        (
            OauthMode::NotFound,
            "does not take OAuth2 refresh tokens (HTTP 404)",
        ),
        (OauthMode::Redirect, "answered a redirect (HTTP 307)"),
    ] {
        fake.state.lock().expect("state").oauth_mode = mode;
        let err = docker_config_client(dir.path(), &json)
            .resolve(&src)
            .await
            .expect_err("no token");
        let message = err.to_string();
        assert!(
            matches!(err.kind, ErrorKind::Unauthorized { .. }),
            "{message}"
        );
        assert!(message.contains(expected), "{mode:?}: {message}");
        assert!(!message.contains(REFRESH_TOKEN), "{message}");
    }
    assert_eq!(
        fake.state.lock().expect("state").redirected,
        Vec::<String>::new(),
        "the refresh token followed the redirect"
    );

    // A registry that asks for Basic cannot use a refresh token.
    fake.state.lock().expect("state").basic_challenge = true;
    let err = docker_config_client(dir.path(), &json)
        .resolve(&src)
        .await
        .expect_err("Basic without a password");
    assert!(err.to_string().contains("only an identity token"), "{err}");
}

/// Blob storage behind a redirect (S3, a CDN) that answers 401 with a challenge of its own must
/// not be handed the registry's credentials: reqwest drops `Authorization` on a cross-host
/// redirect, and Forge must not undo that by answering the new host's challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_target_asking_for_credentials_does_not_get_the_registrys() {
    let fake = start().await;
    let host = format!("127.0.0.1:{}", fake.port);
    let src: Reference = format!("{host}/team/app:1").parse().expect("ref");
    let c = client(Some(Credential::basic("ci", "s3cret")), fake.port);
    let digest = c.resolve(&src).await.expect("pull").digest;
    let token_requests_before = fake.state.lock().expect("state").token_requests.len();

    fake.state.lock().expect("state").storage_redirect = true;
    let err = c
        .verify(&src, &digest)
        .await
        .expect_err("the storage host's challenge is refused");
    let st = fake.state.lock().expect("state");
    assert!(!st.storage_auth.is_empty(), "the redirect was followed");
    assert!(
        st.storage_auth.iter().all(Option::is_none),
        "credentials reached the storage host: {:?}",
        st.storage_auth
    );
    assert_eq!(
        st.token_requests.len(),
        token_requests_before,
        "no token was asked for on the storage host's behalf: {:?}",
        st.token_requests
    );
    assert!(matches!(err.kind, ErrorKind::Unauthorized { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("localhost") && message.contains("redirect"),
        "names the host and the redirect: {message}"
    );
}

/// A token service answering 503 is a server failing, not credentials refused: it is retried
/// on the request's budget, and once that is spent the error names the status, not "log in".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_service_is_retried_and_reported_as_a_server_error() {
    let fake = start().await;
    let src: Reference = format!("127.0.0.1:{}/team/app:1", fake.port)
        .parse()
        .expect("ref");
    let retrying = || {
        Client::builder()
            .retry_policy(RetryPolicy {
                max_retries: 2,
                initial_backoff: std::time::Duration::from_millis(10),
                ..RetryPolicy::default()
            })
            .credential_provider(StaticCredential::for_registry(
                format!("127.0.0.1:{}", fake.port),
                Credential::basic("ci", "s3cret"),
            ))
            .build()
            .expect("client")
    };

    fake.state.lock().expect("state").token_failures = 1;
    let resolved = retrying()
        .resolve(&src)
        .await
        .expect("one 503 from the token service is retried");
    assert_eq!(resolved.digest.to_string(), fake.image.digest);

    fake.state.lock().expect("state").token_failures = u32::MAX;
    let err = retrying()
        .resolve(&src)
        .await
        .expect_err("the token service keeps failing");
    assert!(
        matches!(err.kind, ErrorKind::Registry { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(err.retries, 2, "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("UNAVAILABLE")
            && message.contains("failed after 2 retries")
            && !message.contains("log in"),
        "{message}"
    );
}
