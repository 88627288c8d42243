//! An in-process HTTP/1.1 proxy on a free loopback port in front of a REAL `docker-registry`
//! (from `forge_testkit::Registry`). Everything is forwarded to the real registry; the proxy only
//! adds what the real registry cannot show:
//!
//! - ECR's behaviour ([`Ecr`], used by `ecr.rs`): the real CNCF Distribution registry has no
//!   Basic-auth challenge with ECR's realm, auto-creates repositories on push, has no immutable
//!   tags and answers PATCH with 202. The proxy reproduces AWS's documented responses exactly.
//! - Faults ([`Rule`], used by `faults.rs`): 5xx, 429 + `Retry-After`, connections dropped
//!   mid-blob, truncated bodies, flipped bytes.
//! - The OCI 1.1 referrers API (used by `referrers.rs`), which Distribution 2.8.2 does not serve:
//!   [`Fault::ServeReferrersApi`] answers `GET /v2/<name>/referrers/<digest>` from the fallback
//!   tag `sha256-<hex>` the way a registry with the API lists them, and
//!   [`Fault::AcknowledgeSubject`] adds `OCI-Subject` to a manifest PUT's answer, as such a
//!   registry does when it indexed the pushed referrer itself.
//!
//! Tests assert on the state of the real registry directly (bypassing the proxy) with skopeo and
//! plain HTTP, so the proxy never decides whether a copy "worked".

use std::collections::VecDeque;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type ProxyBody = UnsyncBoxBody<Bytes, ProxyError>;

/// The proxy's own error (a concrete type: hyper's `Into<Box<dyn Error>>` bounds on a boxed
/// error trip the compiler's higher-ranked Send check). Returning it from the service makes
/// hyper drop the connection, which is how faults cut connections.
#[derive(Debug)]
pub struct ProxyError(String);

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProxyError {}

impl From<reqwest::Error> for ProxyError {
    fn from(e: reqwest::Error) -> Self {
        ProxyError(format!("forwarding to the real registry failed: {e}"))
    }
}

impl From<hyper::http::Error> for ProxyError {
    fn from(e: hyper::http::Error) -> Self {
        ProxyError(format!("building the response failed: {e}"))
    }
}

/// The four manifest media types a client must accept.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// What a request is, in distribution-API terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`
    Ping,
    /// `GET /v2/<name>/blobs/<digest>`
    BlobGet,
    /// `HEAD /v2/<name>/blobs/<digest>`
    BlobHead,
    /// `POST /v2/<name>/blobs/uploads/` (also mounts)
    UploadStart,
    /// `PATCH /v2/<name>/blobs/uploads/<id>`
    UploadPatch,
    /// `PUT /v2/<name>/blobs/uploads/<id>?digest=…`
    UploadPut,
    /// `GET /v2/<name>/manifests/<ref>`
    ManifestGet,
    /// `HEAD /v2/<name>/manifests/<ref>`
    ManifestHead,
    /// `PUT /v2/<name>/manifests/<ref>`
    ManifestPut,
    /// `GET /v2/<name>/tags/list`
    TagsList,
    /// `GET /v2/<name>/referrers/<digest>`
    Referrers,
    /// Anything else (referrers, upload status, deletes, …).
    Other,
}

/// Splits a request into (route, repository, reference-or-digest).
pub fn classify(method: &Method, path: &str) -> (Route, Option<String>, Option<String>) {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return (Route::Other, None, None);
    };
    if rest.is_empty() {
        return (Route::Ping, None, None);
    }
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        let route = if method == Method::GET {
            Route::TagsList
        } else {
            Route::Other
        };
        return (route, Some(repo.to_owned()), None);
    }
    if let Some(i) = rest.rfind("/blobs/uploads") {
        let repo = rest[..i].to_owned();
        let tail = rest[i + "/blobs/uploads".len()..].trim_start_matches('/');
        let route = match (method.as_str(), tail.is_empty()) {
            ("POST", true) => Route::UploadStart,
            ("PATCH", false) => Route::UploadPatch,
            ("PUT", false) => Route::UploadPut,
            _ => Route::Other,
        };
        return (route, Some(repo), None);
    }
    for (marker, get, head) in [
        ("/blobs/", Route::BlobGet, Route::BlobHead),
        ("/manifests/", Route::ManifestGet, Route::ManifestHead),
        ("/referrers/", Route::Referrers, Route::Other),
    ] {
        if let Some(i) = rest.rfind(marker) {
            let repo = rest[..i].to_owned();
            let reference = rest[i + marker.len()..].to_owned();
            let route = match method.as_str() {
                "GET" => get,
                "HEAD" => head,
                "PUT" if marker == "/manifests/" => Route::ManifestPut,
                _ => Route::Other,
            };
            return (route, Some(repo), Some(reference));
        }
    }
    (Route::Other, None, None)
}

/// A fault the proxy injects instead of (or into) the real registry's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Read the request body, then answer `status` with a distribution-style JSON error
    /// (`code`) without forwarding; `retry_after` adds a `Retry-After` header.
    Status {
        status: u16,
        code: &'static str,
        retry_after: Option<&'static str>,
    },
    /// Forward, send the first `n` bytes of the response body, then abort the connection
    /// (the client sees the connection die mid-blob).
    DropResponseAfter(u64),
    /// Forward, keep the real `Content-Length` but send only the first `n` bytes of the body.
    Truncate(u64),
    /// Forward, flipping the bits of the response body byte at offset `n` (same length).
    FlipByte(u64),
    /// Read `n` bytes of the request body, then drop the connection without answering
    /// (the kernel resets it because the rest of the upload is unread).
    DropRequestAfter(u64),
    /// Before forwarding a manifest PUT, PUT these OCI manifest bytes to the same URL on the real
    /// registry: a concurrent pipeline winning the race for the tag.
    ConcurrentPut(Vec<u8>),
    /// Forward a manifest PUT, then PUT these OCI index bytes to the same URL on the real
    /// registry before answering: a concurrent pipeline's referrers fallback index replacing
    /// the one just written (the read-merge-write race the fallback tag schema has).
    OverwriteAfterPut(Vec<u8>),
    /// Answer a referrers request (`Route::Referrers`) like a registry with the OCI 1.1 API:
    /// `200`, `Content-Type` OCI index, listing what the real registry holds under the
    /// fallback tag (an empty index when there is none).
    ServeReferrersApi,
    /// Like `ServeReferrersApi`, one referrer per page: each page but the last names the next
    /// with `Link: <…?page=N>; rel="next"` (the spec lets registries paginate this list).
    ServeReferrersApiPaged,
    /// Answer a referrers request with the API's `200` and an empty OCI index, whatever the
    /// registry holds: a registry that serves the API but indexed none of these referrers.
    ServeEmptyReferrersApi,
    /// Forward a manifest PUT and add `OCI-Subject` to the answer: the registry says it indexed
    /// the pushed referrer for its subject itself.
    AcknowledgeSubject,
    /// Forward, then deliver the response body `piece` bytes at a time, `every` apart: a slow
    /// link that keeps moving.
    Trickle { piece: usize, every: Duration },
    /// Read the whole request body, then never answer: a registry that hangs after an upload.
    HangAfterRequestBody,
    /// Forward (the real registry commits), then answer `status` with a distribution-style
    /// JSON error instead of the real answer: a response lost on the way back, as a load
    /// balancer's 502/503 after the backend wrote.
    StatusAfterForward { status: u16, code: &'static str },
    /// Forward, then answer with a `Docker-Content-Digest` that is not the digest of what was
    /// sent: a registry that stored something else (re-serialized or converted it).
    WrongDigestHeader,
    /// Like `ServeReferrersApi`, but as Quay 3.12+ does: `400 MANIFEST_INVALID` for a subject
    /// that is not in the repository yet.
    ServeReferrersApiQuay,
    /// Answer a manifest GET of the tag `sha256-<hex>` with the manifest `sha256:<hex>`, as
    /// GitLab's registry resolves a tag spelled like a digest (oras-go issue 1396).
    FallbackTagIsSubject,
}

/// Inject `fault` into the next `times` requests of kind `route` (`None` = forever), optionally
/// only those whose path and query contain a string (e.g. one blob's digest). A body fault at an offset
/// past the end of the body changes nothing, so target blobs larger than the offset.
#[derive(Debug, Clone)]
pub struct Rule {
    pub route: Route,
    pub fault: Fault,
    pub times: Option<u32>,
    pub path_contains: Option<String>,
}

impl Rule {
    pub fn new(route: Route, fault: Fault, times: Option<u32>) -> Self {
        Rule {
            route,
            fault,
            times,
            path_contains: None,
        }
    }

    /// Only requests whose path and query contain `needle` (an upload PUT names its digest in
    /// the query).
    pub fn matching(mut self, needle: &str) -> Self {
        self.path_contains = Some(needle.to_owned());
        self
    }
}

/// ECR as seen by a registry client. AWS's real registry cannot run here, so this reproduces its
/// documented responses exactly (field notes + aws/containers-roadmap#2179, regclient#81):
/// - every request without `Authorization: Basic base64("AWS:<password>")` gets
///   `401` + `WWW-Authenticate: Basic realm="https://<acct>.dkr.ecr.<region>.amazonaws.com/",service="ecr.amazonaws.com"`
///   and the body `Not Authorized\n`;
/// - a provisioned repository without images lists no tags (`200`, `"tags": []`);
/// - a repository not provisioned → `404` `NAME_UNKNOWN` "The repository with name '<repo>' does not
///   exist in the registry with id '<acct>'" (the real registry would create it on push);
/// - manifest PUT to an existing tag → `400` `TAG_INVALID` (immutable repository), even when the
///   digest is the same;
/// - PATCH answers `201` instead of `202`; manifest PUT has no `Location`; manifest GET is chunked
///   without `Content-Length`.
#[derive(Debug, Clone)]
pub struct Ecr {
    pub account: String,
    pub region: String,
    pub password: String,
    pub repositories: Vec<String>,
}

impl Ecr {
    pub fn realm(&self) -> String {
        format!(
            "https://{}.dkr.ecr.{}.amazonaws.com/",
            self.account, self.region
        )
    }

    fn authorization(&self) -> String {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("AWS:{}", self.password));
        format!("Basic {token}")
    }
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub route: Route,
    /// Status sent to the client; 0 when the connection was dropped before a response.
    pub status: u16,
    /// True when a fault rule fired for this request.
    pub faulted: bool,
    /// True when the request carried an `Authorization` header.
    pub authorization: bool,
}

#[derive(Debug, Default)]
struct State {
    rules: VecDeque<Rule>,
    log: Vec<Logged>,
}

struct Shared {
    upstream: String,
    host: String,
    ecr: Option<Ecr>,
    client: reqwest::Client,
    state: Mutex<State>,
}

/// The running proxy; stops (and drops all its connections) when dropped.
pub struct Proxy {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A transparent proxy in front of `upstream` (`127.0.0.1:PORT`); add faults with [`Proxy::add_rule`].
    pub async fn start(upstream: &str) -> Proxy {
        Self::spawn(upstream, None).await
    }

    /// A proxy that behaves like ECR in front of `upstream`.
    pub async fn start_ecr(upstream: &str, ecr: Ecr) -> Proxy {
        Self::spawn(upstream, Some(ecr)).await
    }

    async fn spawn(upstream: &str, ecr: Option<Ecr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy on loopback");
        let addr: SocketAddr = listener.local_addr().expect("proxy address");
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("build forwarding client");
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            host: addr.to_string(),
            ecr,
            client,
            state: Mutex::new(State::default()),
        });
        let accept_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // Connection tasks live in this set, so aborting the accept task closes them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&accept_shared);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { handle(shared, req).await }
                    });
                    // Errors here are the injected faults (or a client hanging up): nothing to do.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Proxy { shared, task }
    }

    /// `127.0.0.1:PORT` of the proxy: the registry host to give the client under test.
    pub fn host(&self) -> String {
        self.shared.host.clone()
    }

    /// Adds a fault rule; rules are tried in the order added.
    pub fn add_rule(&self, rule: Rule) {
        self.state().rules.push_back(rule);
    }

    /// Every request seen so far.
    pub fn log(&self) -> Vec<Logged> {
        self.state().log.clone()
    }

    /// Number of requests of kind `route` seen so far.
    pub fn count(&self, route: Route) -> usize {
        self.state().log.iter().filter(|l| l.route == route).count()
    }

    /// Number of requests into which a fault was injected.
    pub fn faults_injected(&self) -> usize {
        self.state().log.iter().filter(|l| l.faulted).count()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("proxy state lock")
    }
}

impl Shared {
    fn record(&self, req: &RequestInfo, status: u16, faulted: bool) {
        self.state
            .lock()
            .expect("proxy state lock")
            .log
            .push(Logged {
                method: req.method.to_string(),
                path: req.path.clone(),
                route: req.route,
                status,
                faulted,
                authorization: req.authorization,
            });
    }

    /// Takes the first rule for `route` that still has shots left.
    fn take_fault(&self, route: Route, path: &str) -> Option<Fault> {
        let mut state = self.state.lock().expect("proxy state lock");
        let index = state.rules.iter().position(|r| {
            r.route == route && r.path_contains.as_deref().is_none_or(|n| path.contains(n))
        })?;
        let rule = &mut state.rules[index];
        let fault = rule.fault.clone();
        match &mut rule.times {
            None => {}
            Some(1) => {
                state.rules.remove(index);
            }
            Some(n) => *n -= 1,
        }
        Some(fault)
    }
}

struct RequestInfo {
    method: Method,
    path: String,
    route: Route,
    authorization: bool,
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let (route, repo, reference) = classify(&method, &path);
    let info = RequestInfo {
        method: method.clone(),
        path: path.clone(),
        route,
        authorization: req.headers().contains_key(header::AUTHORIZATION),
    };

    if let Some(ecr) = &shared.ecr {
        let authorized = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == ecr.authorization());
        if !authorized {
            let mut resp = text_response(StatusCode::UNAUTHORIZED, "Not Authorized\n");
            let challenge = format!(
                "Basic realm=\"{}\",service=\"ecr.amazonaws.com\"",
                ecr.realm()
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&challenge).expect("ascii challenge"),
            );
            shared.record(&info, 401, false);
            return Ok(resp);
        }
        if let Some(repo) = &repo
            && !ecr.repositories.iter().any(|r| r == repo)
        {
            let message = format!(
                "The repository with name '{repo}' does not exist in the registry with id '{}'",
                ecr.account
            );
            shared.record(&info, 404, false);
            return Ok(json_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", &message));
        }
    }

    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    let fault = shared.take_fault(route, &path_and_query);
    let faulted = fault.is_some();
    match &fault {
        Some(Fault::Status {
            status,
            code,
            retry_after,
        }) => {
            // Read the request body first, like a registry that takes the upload and then
            // refuses it; an answer while the client is still sending would reach it as a
            // reset connection instead (`DropRequestAfter` is that case).
            let _ = req.into_body().collect().await;
            let status = StatusCode::from_u16(*status).expect("valid status in rule");
            let mut resp = json_error(status, code, "injected by the test proxy");
            if let Some(after) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
            }
            shared.record(&info, status.as_u16(), true);
            return Ok(resp);
        }
        Some(Fault::HangAfterRequestBody) => {
            let _ = req.into_body().collect().await;
            shared.record(&info, 0, true);
            // Longer than any test; the proxy's runtime ends with the test.
            tokio::time::sleep(Duration::from_secs(600)).await;
            return Err(ProxyError("injected: never answered".to_owned()));
        }
        Some(Fault::DropRequestAfter(n)) => {
            let mut body = req.into_body();
            let mut seen = 0u64;
            while seen < *n {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            seen += data.len() as u64;
                        }
                    }
                    _ => break,
                }
            }
            shared.record(&info, 0, true);
            return Err(ProxyError(format!(
                "injected: connection dropped after {seen} request bytes"
            )));
        }
        Some(Fault::ServeEmptyReferrersApi) => {
            let mut resp = Response::new(full(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
                    .to_vec(),
            ));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
            );
            shared.record(&info, 200, true);
            return Ok(resp);
        }
        Some(Fault::ServeReferrersApiQuay)
            if !upstream_has_manifest(
                &shared,
                repo.as_deref().unwrap_or_default(),
                reference.as_deref().unwrap_or_default(),
            )
            .await? =>
        {
            shared.record(&info, 400, true);
            return Ok(json_error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                "manifest invalid",
            ));
        }
        Some(
            fault @ (Fault::ServeReferrersApi
            | Fault::ServeReferrersApiPaged
            | Fault::ServeReferrersApiQuay),
        ) => {
            let paged = matches!(fault, Fault::ServeReferrersApiPaged);
            let digest = reference.clone().unwrap_or_default();
            let tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
            let upstream = shared
                .client
                .get(format!(
                    "http://{}/v2/{}/manifests/{tag}",
                    shared.upstream,
                    repo.clone().unwrap_or_default()
                ))
                .header(header::ACCEPT, "application/vnd.oci.image.index.v1+json")
                .send()
                .await?;
            let mut body = if upstream.status() == StatusCode::OK {
                upstream.bytes().await?.to_vec()
            } else {
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
                    .to_vec()
            };
            let mut next_page = None;
            if paged {
                let page: usize = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("page="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let mut index: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| ProxyError(e.to_string()))?;
                let all = index["manifests"].as_array().cloned().unwrap_or_default();
                index["manifests"] =
                    serde_json::Value::Array(all.get(page).cloned().into_iter().collect());
                if page + 1 < all.len() {
                    next_page = Some(format!("<{path}?page={}>; rel=\"next\"", page + 1));
                }
                body = index.to_string().into_bytes();
            }
            let mut resp = Response::new(full(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
            );
            if let Some(link) = next_page {
                resp.headers_mut().insert(
                    header::LINK,
                    HeaderValue::from_str(&link).expect("ascii link"),
                );
            }
            shared.record(&info, 200, true);
            return Ok(resp);
        }
        Some(Fault::ConcurrentPut(manifest)) => {
            put_upstream(
                &shared,
                &path,
                "application/vnd.oci.image.manifest.v1+json",
                manifest,
                "concurrent",
            )
            .await?;
        }
        _ => {}
    }

    if let (true, Route::ManifestPut, Some(repo), Some(tag)) =
        (shared.ecr.is_some(), route, &repo, &reference)
        && !tag.starts_with("sha256:")
        && upstream_has_manifest(&shared, repo, tag).await?
    {
        let message = format!(
            "The image tag '{tag}' already exists in the '{repo}' repository and cannot be \
             overwritten because the repository is immutable."
        );
        shared.record(&info, 400, faulted);
        return Ok(json_error(StatusCode::BAD_REQUEST, "TAG_INVALID", &message));
    }

    let mut req = req;
    if let (Some(Fault::FallbackTagIsSubject), Some(hex)) = (
        &fault,
        reference.as_deref().and_then(|r| r.strip_prefix("sha256-")),
    ) {
        let resolved = path.replace(&format!("sha256-{hex}"), &format!("sha256:{hex}"));
        *req.uri_mut() = resolved.parse().expect("a valid path");
    }
    let (mut parts, body) = match forward(&shared, req).await {
        Ok(resp) => resp.into_parts(),
        Err(e) => {
            shared.record(&info, 502, faulted);
            return Err(e);
        }
    };

    if shared.ecr.is_some() {
        if let (Route::TagsList, StatusCode::NOT_FOUND, Some(repo)) = (route, parts.status, &repo) {
            // Provisioned (it passed the allowlist) but never pushed to: ECR lists no tags,
            // whereas the registry behind the fake does not know the repository yet.
            let body = serde_json::json!({"name": repo, "tags": []}).to_string();
            let mut resp = Response::new(full(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            shared.record(&info, 200, faulted);
            return Ok(resp);
        }
        match route {
            Route::UploadPatch if parts.status == StatusCode::ACCEPTED => {
                parts.status = StatusCode::CREATED;
            }
            Route::ManifestPut => {
                parts.headers.remove(header::LOCATION);
            }
            Route::ManifestGet => {
                // Stream without a length: hyper then sends `Transfer-Encoding: chunked`.
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            _ => {}
        }
    }

    if let Some(Fault::OverwriteAfterPut(index)) = &fault
        && parts.status == StatusCode::CREATED
    {
        put_upstream(
            &shared,
            &path,
            "application/vnd.oci.image.index.v1+json",
            index,
            "overwriting",
        )
        .await?;
    }
    if let (Some(Fault::AcknowledgeSubject), Some(repo), Some(reference)) =
        (&fault, &repo, &reference)
        && parts.status == StatusCode::CREATED
    {
        // The header carries the SUBJECT's digest (OCI distribution spec 1.1): read the pushed
        // manifest back from the real registry to find it.
        let bytes = shared
            .client
            .get(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                shared.upstream
            ))
            .header(header::ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await?
            .bytes()
            .await?;
        let pushed: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if let Some(subject) = pushed["subject"]["digest"].as_str() {
            parts.headers.insert(
                HeaderName::from_static("oci-subject"),
                HeaderValue::from_str(subject).expect("a digest is a header value"),
            );
        }
    }
    if let Some(Fault::WrongDigestHeader) = &fault {
        parts.headers.insert(
            HeaderName::from_static("docker-content-digest"),
            HeaderValue::from_static(
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
        );
    }
    if let Some(Fault::StatusAfterForward { status, code }) = &fault {
        let status = StatusCode::from_u16(*status).expect("valid status in rule");
        shared.record(&info, status.as_u16(), true);
        return Ok(json_error(
            status,
            code,
            "injected by the test proxy after forwarding",
        ));
    }
    let body = match fault {
        Some(Fault::DropResponseAfter(n)) => tamper(body, Tamper::DropAfter(n)),
        Some(Fault::Truncate(n)) => tamper(body, Tamper::EndAt(n)),
        Some(Fault::FlipByte(n)) => tamper(body, Tamper::Flip(n)),
        Some(Fault::Trickle { piece, every }) => trickle(body, piece, every),
        _ => body,
    };
    shared.record(&info, parts.status.as_u16(), faulted);
    Ok(Response::from_parts(parts, body))
}

/// PUTs `bytes` to `path` on the real registry: another writer's manifest, for the
/// `ConcurrentPut` and `OverwriteAfterPut` faults (`what` names it in the error).
async fn put_upstream(
    shared: &Shared,
    path: &str,
    media_type: &'static str,
    bytes: &[u8],
    what: &str,
) -> Result<(), ProxyError> {
    let resp = shared
        .client
        .put(format!("http://{}{path}", shared.upstream))
        .header(header::CONTENT_TYPE, media_type)
        .body(bytes.to_vec())
        .send()
        .await?;
    if resp.status() != StatusCode::CREATED {
        return Err(ProxyError(format!(
            "the {what} PUT failed: {}",
            resp.status()
        )));
    }
    Ok(())
}

/// HEADs `repo:tag` on the real registry.
async fn upstream_has_manifest(shared: &Shared, repo: &str, tag: &str) -> Result<bool, ProxyError> {
    let resp = shared
        .client
        .head(format!(
            "http://{}/v2/{repo}/manifests/{tag}",
            shared.upstream
        ))
        .header(header::ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await?;
    Ok(resp.status().is_success())
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// Forwards `req` to the real registry, streaming both bodies, and rewrites absolute `Location`
/// headers so the client keeps talking through the proxy.
async fn forward(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut builder = shared.client.request(
        parts.method.clone(),
        format!("http://{}{path_and_query}", shared.upstream),
    );
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) && name != header::AUTHORIZATION {
            headers.append(name.clone(), value.clone());
        }
    }
    builder = builder.headers(headers);
    let has_body = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        builder = builder.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let upstream_resp = builder.send().await?;

    let mut resp = Response::builder().status(upstream_resp.status());
    let upstream_base = format!("http://{}", shared.upstream);
    let proxy_base = format!("http://{}", shared.host);
    for (name, value) in upstream_resp.headers() {
        if is_hop_by_hop(name) {
            continue;
        }
        if name == header::LOCATION
            && let Ok(location) = value.to_str()
            && let Some(rest) = location.strip_prefix(&upstream_base)
        {
            resp = resp.header(name, format!("{proxy_base}{rest}"));
            continue;
        }
        resp = resp.header(name, value);
    }
    let stream = upstream_resp
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(ProxyError::from);
    Ok(resp.body(UnsyncBoxBody::new(StreamBody::new(stream)))?)
}

/// Delivers a response body `piece` bytes at a time, `every` apart.
fn trickle(body: ProxyBody, piece: usize, every: Duration) -> ProxyBody {
    let data = Box::pin(body.into_data_stream());
    let pieces = futures_util::stream::unfold(
        (data, Bytes::new(), true),
        move |(mut data, mut rest, first)| async move {
            loop {
                if !rest.is_empty() {
                    if !first {
                        tokio::time::sleep(every).await;
                    }
                    let out = rest.split_to(piece.min(rest.len()));
                    return Some((Ok(Frame::data(out)), (data, rest, false)));
                }
                match data.next().await {
                    Some(Ok(bytes)) => rest = bytes,
                    Some(Err(e)) => return Some((Err(e), (data, rest, first))),
                    None => return None,
                }
            }
        },
    );
    UnsyncBoxBody::new(StreamBody::new(pieces))
}

enum Tamper {
    DropAfter(u64),
    EndAt(u64),
    Flip(u64),
}

/// Rewrites a response body on the fly (keeping headers, so `Content-Length` stays the real one).
fn tamper(body: ProxyBody, mode: Tamper) -> ProxyBody {
    let data = body.into_data_stream();
    UnsyncBoxBody::new(StreamBody::new(
        Tampered {
            inner: Box::pin(data),
            pos: 0,
            mode,
            finished: None,
            flush: None,
        }
        .map_ok(Frame::data),
    ))
}

type DataStream = Pin<Box<dyn Stream<Item = Result<Bytes, ProxyError>> + Send>>;

struct Tampered {
    inner: DataStream,
    pos: u64,
    mode: Tamper,
    /// Set once the cut point was reached: `Some(true)` ends with an error (connection abort),
    /// `Some(false)` ends the stream early.
    finished: Option<bool>,
    /// A pause before the cut, so hyper flushes the bytes already sent (otherwise it drops its
    /// write buffer with the connection and the client never sees the partial body).
    flush: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Tampered {
    type Item = Result<Bytes, ProxyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(abort) = this.finished {
            let flush = this.flush.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep(std::time::Duration::from_millis(100)))
            });
            if flush.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.finished = Some(false);
            return Poll::Ready(
                abort.then(|| Err(ProxyError("injected: connection dropped mid-body".into()))),
            );
        }
        let chunk = match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => chunk,
            other => return other,
        };
        let start = this.pos;
        let end = start + chunk.len() as u64;
        this.pos = end;
        match this.mode {
            Tamper::DropAfter(n) | Tamper::EndAt(n) if end >= n => {
                this.finished = Some(matches!(this.mode, Tamper::DropAfter(_)));
                let keep = usize::try_from(n.saturating_sub(start)).expect("chunk-sized");
                Poll::Ready(Some(Ok(chunk.slice(..keep))))
            }
            Tamper::Flip(n) if (start..end).contains(&n) => {
                let mut bytes = BytesMut::from(&chunk[..]);
                let at = usize::try_from(n - start).expect("chunk-sized");
                bytes[at] ^= 0xff;
                Poll::Ready(Some(Ok(bytes.freeze())))
            }
            _ => Poll::Ready(Some(Ok(chunk))),
        }
    }
}

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    UnsyncBoxBody::new(Full::new(bytes.into()).map_err(|never| match never {}))
}

fn text_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// Fixtures and direct (proxy-bypassing) checks against the real registry.

// `sha256` and the deterministic byte generator are shared with the real-registry fixtures.
pub use crate::fixtures::{bytes as random_bytes, sha256};

/// An image pushed to a registry by [`push_image`].
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub manifest: Vec<u8>,
    pub blobs: Vec<String>,
}

/// Pushes a single-arch OCI image with `layers` (plus a config blob) to `host/repo:tag` with raw
/// HTTP (monolithic uploads). The manifest is deliberately NOT canonical JSON (odd key order,
/// extra spaces), so a client that re-serializes would change the digest.
pub async fn push_image(host: &str, repo: &str, tag: &str, layers: &[Vec<u8>]) -> Pushed {
    push_image_as(host, repo, tag, layers, None).await
}

/// [`push_image`] sending `authorization` (an `Authorization` header value) on every request.
pub async fn push_image_as(
    host: &str,
    repo: &str,
    tag: &str,
    layers: &[Vec<u8>],
    authorization: Option<&str>,
) -> Pushed {
    let mut headers = HeaderMap::new();
    if let Some(auth) = authorization {
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(auth).expect("ascii authorization"),
        );
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .expect("client");
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        layers
            .iter()
            .map(|l| format!("\"{}\"", sha256(l)))
            .collect::<Vec<_>>()
            .join(",")
    )
    .into_bytes();
    let mut blobs = vec![sha256(&config)];
    push_blob(&client, host, repo, &config).await;
    let mut layer_json = Vec::new();
    for layer in layers {
        push_blob(&client, host, repo, layer).await;
        blobs.push(sha256(layer));
        layer_json.push(format!(
            "{{ \"size\": {},  \"digest\": \"{}\", \"mediaType\": \"application/vnd.oci.image.layer.v1.tar+gzip\" }}",
            layer.len(),
            sha256(layer)
        ));
    }
    let manifest = format!(
        "{{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n  \"layers\": [ {} ],\n  \"config\": {{ \"size\": {}, \"mediaType\": \"application/vnd.oci.image.config.v1+json\", \"digest\": \"{}\" }}\n}}\n",
        layer_json.join(",\n    "),
        config.len(),
        sha256(&config)
    )
    .into_bytes();
    let resp = client
        .put(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .body(manifest.clone())
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(resp.status(), StatusCode::CREATED, "manifest push failed");
    Pushed {
        digest: sha256(&manifest),
        manifest,
        blobs,
    }
}

/// Pushes a multi-arch OCI index at `host/repo:tag` whose children (one per entry of
/// `platforms`, each with its layers) are pushed first under the tags `<tag>-<arch>`. Like the
/// single-arch manifests, the index JSON is not canonical.
pub async fn push_index(
    host: &str,
    repo: &str,
    tag: &str,
    platforms: &[(&str, Vec<Vec<u8>>)],
) -> (Pushed, Vec<Pushed>) {
    let mut children = Vec::new();
    let mut entries = Vec::new();
    for (arch, layers) in platforms {
        let child = push_image(host, repo, &format!("{tag}-{arch}"), layers).await;
        entries.push(format!(
            "{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\", \"size\": {}, \"digest\":\"{}\",\n   \"platform\": {{\"os\":\"linux\",\"architecture\":\"{arch}\"}}}}",
            child.manifest.len(),
            child.digest
        ));
        children.push(child);
    }
    let index = format!(
        "{{\"manifests\": [\n   {}\n ],\n \"schemaVersion\":2, \"mediaType\": \"application/vnd.oci.image.index.v1+json\"}}",
        entries.join(",\n   ")
    )
    .into_bytes();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let resp = client
        .put(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.index.v1+json",
        )
        .body(index.clone())
        .send()
        .await
        .expect("PUT index");
    assert_eq!(resp.status(), StatusCode::CREATED, "index push failed");
    let pushed = Pushed {
        digest: sha256(&index),
        manifest: index,
        blobs: children.iter().flat_map(|c| c.blobs.clone()).collect(),
    };
    (pushed, children)
}

async fn push_blob(client: &reqwest::Client, host: &str, repo: &str, blob: &[u8]) {
    let resp = client
        .post(format!("http://{host}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("POST upload");
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "upload start failed");
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("upload Location")
        .to_owned();
    let url = if location.starts_with('/') {
        format!("http://{host}{location}")
    } else {
        location
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let resp = client
        .put(format!("{url}{sep}digest={}", sha256(blob)))
        .body(blob.to_vec())
        .send()
        .await
        .expect("PUT blob");
    assert_eq!(resp.status(), StatusCode::CREATED, "blob upload failed");
}

/// The digest `host/repo:reference` resolves to on the real registry, by hashing the served
/// manifest bytes (`None` when the registry answers 404).
pub async fn manifest_digest(host: &str, repo: &str, reference: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let resp = client
        .get(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header(header::ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await
        .expect("GET manifest");
    if resp.status() == StatusCode::NOT_FOUND {
        return None;
    }
    assert!(
        resp.status().is_success(),
        "GET manifest: {}",
        resp.status()
    );
    Some(sha256(&resp.bytes().await.expect("manifest body")))
}

/// Whether the real registry holds blob `digest` in `repo`.
pub async fn blob_exists(host: &str, repo: &str, digest: &str) -> bool {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    client
        .head(format!("http://{host}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .expect("HEAD blob")
        .status()
        .is_success()
}

/// skopeo (the independent oracle) reads `host/repo:tag` from the real registry and returns the
/// sha256 of the raw manifest bytes it got.
pub fn skopeo_digest(host: &str, repo: &str, tag: &str) -> String {
    let out = forge_testkit::skopeo_run(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/{repo}:{tag}"),
    ]);
    sha256(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_is_transparent_and_tampers_only_when_told() {
    let Some(registry) = forge_testkit::Registry::start() else {
        return;
    };
    let layer = random_bytes(1, 200_000);
    let pushed = push_image(&registry.host(), "app", "1", std::slice::from_ref(&layer)).await;
    let proxy = Proxy::start(&registry.host()).await;

    // Pushing and reading through the proxy works like the registry itself.
    let via = push_image(&proxy.host(), "other", "2", &[random_bytes(2, 1000)]).await;
    assert_eq!(
        manifest_digest(&registry.host(), "other", "2").await,
        Some(via.digest.clone())
    );
    assert_eq!(
        manifest_digest(&proxy.host(), "app", "1").await,
        Some(pushed.digest.clone())
    );

    // No connection reuse: a cut connection must not fail the next request.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let blob_url = format!("http://{}/v2/app/blobs/{}", proxy.host(), sha256(&layer));
    proxy.add_rule(Rule::new(Route::BlobGet, Fault::FlipByte(100_000), Some(1)));
    let flipped = client
        .get(&blob_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(flipped.len(), layer.len());
    assert_ne!(sha256(&flipped), sha256(&layer));
    assert_eq!(flipped[100_000], layer[100_000] ^ 0xff);

    proxy.add_rule(Rule::new(Route::BlobGet, Fault::Truncate(1000), Some(1)));
    let truncated = client.get(&blob_url).send().await.unwrap().bytes().await;
    assert!(truncated.is_err(), "a short body must be an error");

    proxy.add_rule(Rule::new(
        Route::BlobGet,
        Fault::Status {
            status: 503,
            code: "UNAVAILABLE",
            retry_after: Some("1"),
        },
        Some(1),
    ));
    let resp = client.get(&blob_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");

    // Rules are used up: the next read is clean again.
    let clean = client
        .get(&blob_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&clean), sha256(&layer));
    assert_eq!(proxy.faults_injected(), 3);
}

#[test]
fn classify_routes() {
    fn check(method: Method, path: &str, expected: (Route, Option<&str>, Option<&str>)) {
        let (route, repo, reference) = classify(&method, path);
        assert_eq!(
            (route, repo.as_deref(), reference.as_deref()),
            expected,
            "{method} {path}"
        );
    }
    check(Method::GET, "/v2/", (Route::Ping, None, None));
    check(
        Method::GET,
        "/v2/team/app/tags/list",
        (Route::TagsList, Some("team/app"), None),
    );
    check(
        Method::POST,
        "/v2/team/app/blobs/uploads/",
        (Route::UploadStart, Some("team/app"), None),
    );
    check(
        Method::PATCH,
        "/v2/app/blobs/uploads/abc-123",
        (Route::UploadPatch, Some("app"), None),
    );
    check(
        Method::PUT,
        "/v2/app/blobs/uploads/abc-123",
        (Route::UploadPut, Some("app"), None),
    );
    check(
        Method::HEAD,
        "/v2/a/b/blobs/sha256:00",
        (Route::BlobHead, Some("a/b"), Some("sha256:00")),
    );
    check(
        Method::PUT,
        "/v2/a/manifests/1.0",
        (Route::ManifestPut, Some("a"), Some("1.0")),
    );
    check(
        Method::GET,
        "/v2/a/manifests/sha256:ab",
        (Route::ManifestGet, Some("a"), Some("sha256:ab")),
    );
    check(
        Method::GET,
        "/v2/a/referrers/sha256:ab",
        (Route::Referrers, Some("a"), Some("sha256:ab")),
    );
    check(
        Method::HEAD,
        "/v2/a/referrers/sha256:ab",
        (Route::Other, Some("a"), Some("sha256:ab")),
    );
}
