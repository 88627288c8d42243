//! [`Client`], its builder, the retry policy, and the HTTP transport (auth + retries) for one
//! repository.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::auth::{
    Anonymous, BoxError, Credential, CredentialProvider, DockerConfig, parse_challenge,
};
use crate::error::{Error, ErrorKind};
use crate::reference::{DOCKER_HUB, Reference};
use crate::transfer::BlobStream;

/// The `client_id` sent with OAuth2 token requests (token services log it for audits).
const OAUTH_CLIENT_ID: &str = "forge";

/// Retries with jittered exponential backoff on connection errors, 5xx (but 501) and
/// 429/TOOMANYREQUESTS (honouring `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retrying).
    pub max_retries: u32,
    /// Delay before the first retry (doubled each time, jittered to 50–100 %).
    pub initial_backoff: Duration,
    /// Upper bound of one backoff delay.
    pub max_backoff: Duration,
    /// Upper bound of a server-requested `Retry-After` delay.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The jittered delay before retry number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let capped = exp.min(self.max_backoff);
        capped.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// The delay a response asks for (`Retry-After` seconds or HTTP date), capped.
    pub fn retry_after(&self, headers: &HeaderMap) -> Option<Duration> {
        let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
        let delay = if let Ok(secs) = value.parse::<u64>() {
            Duration::from_secs(secs)
        } else {
            let when = httpdate::parse_http_date(value).ok()?;
            when.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        };
        Some(delay.min(self.max_retry_after))
    }
}

/// Configures a [`Client`].
pub struct ClientBuilder {
    providers: Vec<Arc<dyn CredentialProvider>>,
    retry: RetryPolicy,
    jobs: usize,
    user_agent: String,
    http_hosts: HashSet<String>,
    https_hosts: HashSet<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("providers", &self.providers.len())
            .field("retry", &self.retry)
            .field("jobs", &self.jobs)
            .field("user_agent", &self.user_agent)
            .field("http_hosts", &self.http_hosts)
            .field("https_hosts", &self.https_hosts)
            .finish()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            providers: Vec::new(),
            retry: RetryPolicy::default(),
            jobs: DEFAULT_JOBS,
            user_agent: concat!("forge-registry/", env!("CARGO_PKG_VERSION")).to_owned(),
            http_hosts: HashSet::new(),
            https_hosts: HashSet::new(),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// Parallel blob transfers when neither the client nor the copy options say otherwise.
pub const DEFAULT_JOBS: usize = 8;

impl ClientBuilder {
    /// Adds a credential provider; providers are asked in the order added, the first
    /// `Some` wins. Without any, requests are anonymous.
    pub fn credential_provider(mut self, provider: impl CredentialProvider + 'static) -> Self {
        self.providers.push(Arc::new(provider));
        self
    }

    /// Adds a shared credential provider.
    pub fn credential_provider_arc(mut self, provider: Arc<dyn CredentialProvider>) -> Self {
        self.providers.push(provider);
        self
    }

    /// Adds Docker's config (`auths`, `credHelpers`, `credsStore`) as a credential provider.
    pub fn docker_config(self, config: DockerConfig) -> Self {
        self.credential_provider(config)
    }

    /// Sets the retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Default parallel blob transfers (at least 1).
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    /// The `User-Agent` header.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Talk plain HTTP to `host` (`host[:port]` as written in references). Loopback hosts
    /// (`localhost`, `127.0.0.1`, `[::1]`) use plain HTTP without this.
    pub fn insecure_http_host(mut self, host: impl Into<String>) -> Self {
        self.http_hosts.insert(host.into());
        self
    }

    /// Force HTTPS for `host`, even a loopback one.
    pub fn https_host(mut self, host: impl Into<String>) -> Self {
        self.https_hosts.insert(host.into());
        self
    }

    /// TCP connect timeout (default 15 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a request may go without progress (default 120 s): no response byte while
    /// waiting for or reading a response, no upload byte taken by the registry, or no answer
    /// after an upload's last byte. A stalled transfer fails and is retried instead of
    /// hanging; a slow one that keeps moving is never cut off, however long it takes.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client, Error> {
        let http = Transports {
            settings: TransportSettings {
                user_agent: self.user_agent.clone(),
                connect_timeout: self.connect_timeout,
                read_timeout: self.read_timeout,
            },
            plain: OnceLock::new(),
            tls: OnceLock::new(),
            plain_upload: OnceLock::new(),
            tls_upload: OnceLock::new(),
            building: Mutex::new(()),
        };
        // Fail at build time if even the plain client cannot be built.
        let plain_probe = Url::parse("http://localhost/").expect("a constant, valid URL");
        http.for_url(&plain_probe)?;
        let providers = if self.providers.is_empty() {
            vec![Arc::new(Anonymous) as Arc<dyn CredentialProvider>]
        } else {
            self.providers
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                providers,
                retry: self.retry,
                jobs: self.jobs,
                http_hosts: self.http_hosts,
                https_hosts: self.https_hosts,
                auth: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// An OCI distribution client. Cheap to clone (shared connection pool and token cache).
///
/// See the crate docs for [`Client::copy`].
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("retry", &self.inner.retry)
            .field("jobs", &self.inner.jobs)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// An anonymous client with defaults.
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }

    /// The retry policy in use.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.inner.retry
    }

    /// Default parallel blob transfers.
    pub fn jobs(&self) -> usize {
        self.inner.jobs
    }

    pub(crate) fn repo(
        &self,
        reference: &Reference,
        scopes: Vec<String>,
        retries: Arc<AtomicU32>,
    ) -> Result<Repo, Error> {
        let registry = reference.registry().to_owned();
        let scheme = self.inner.scheme(&registry);
        let api_host = if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &registry
        };
        let base = Url::parse(&format!("{scheme}://{api_host}/")).map_err(|e| {
            Error::new(ErrorKind::InvalidInput {
                message: format!("registry host '{registry}' does not form a URL: {e}"),
            })
        })?;
        Ok(Repo {
            inner: self.inner.clone(),
            registry,
            base,
            repository: reference.repository().to_owned(),
            scopes,
            retries,
        })
    }
}

/// What both HTTP clients are built with.
struct TransportSettings {
    user_agent: String,
    connect_timeout: Duration,
    read_timeout: Duration,
}

/// The HTTP clients, each built on first use: plain HTTP for loopback and configured hosts,
/// and TLS; each in two kinds, for ordinary requests and for uploads. The TLS clients load
/// the platform's root certificates when built (about half of a no-op re-promotion's run
/// time), so a copy between plain-HTTP registries never pays it.
///
/// Uploads need their own client because reqwest's read timeout starts when a request is
/// sent and is reset only by response bytes: a streamed PUT of a large blob over a slow link
/// would hit it while still uploading. Upload requests get a progress watchdog instead
/// ([`Repo::send_once`]).
struct Transports {
    settings: TransportSettings,
    plain: OnceLock<reqwest::Client>,
    tls: OnceLock<reqwest::Client>,
    plain_upload: OnceLock<reqwest::Client>,
    tls_upload: OnceLock<reqwest::Client>,
    /// Held while a client is built, so parallel first requests build it once (a TLS client
    /// loads the platform's roots: tens of milliseconds of CPU each time).
    building: Mutex<()>,
}

impl Transports {
    fn build(&self, tls: bool) -> Result<reqwest::Client, reqwest::Error> {
        self.builder(tls)
            .read_timeout(self.settings.read_timeout)
            .build()
    }

    fn builder(&self, tls: bool) -> reqwest::ClientBuilder {
        let s = &self.settings;
        let mut builder = reqwest::Client::builder()
            .user_agent(s.user_agent.clone())
            .connect_timeout(s.connect_timeout)
            .tcp_nodelay(true)
            // Parallel blob streams may share one HTTP/2 connection: let the flow-control
            // window grow with the bandwidth-delay product instead of capping each stream.
            .http2_adaptive_window(true);
        if !tls {
            // No roots: this client never speaks TLS (https URLs use the other one).
            builder = builder.tls_certs_only([]);
        }
        builder
    }

    /// A client that follows no redirects, for requests whose body is a secret: a 307/308
    /// would send it again, to wherever the redirect points. Built per use (only the
    /// identity-token exchange needs it, once per scope).
    fn no_redirect_for_url(&self, url: &Url) -> Result<reqwest::Client, Error> {
        self.builder(url.scheme() == "https")
            .read_timeout(self.settings.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Transport {
                    context: "building the HTTP client".to_owned(),
                    source: Box::new(e),
                })
            })
    }

    /// The client for `url`'s scheme, built on first use.
    fn client(&self, url: &Url) -> Result<&reqwest::Client, reqwest::Error> {
        let tls = url.scheme() == "https";
        let cell = if tls { &self.tls } else { &self.plain };
        self.built_once(cell, || self.build(tls))
    }

    /// The client in `cell`, built by `build` on first use, once even when asked for in
    /// parallel.
    fn built_once<'a>(
        &self,
        cell: &'a OnceLock<reqwest::Client>,
        build: impl FnOnce() -> Result<reqwest::Client, reqwest::Error>,
    ) -> Result<&'a reqwest::Client, reqwest::Error> {
        if let Some(client) = cell.get() {
            return Ok(client);
        }
        let _building = self
            .building
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = cell.get() {
            return Ok(client);
        }
        let client = build()?;
        Ok(cell.get_or_init(|| client))
    }

    /// The upload client for `url`'s scheme (no read timeout: see the type's docs), built on
    /// first use.
    fn upload_client(&self, url: &Url) -> Result<&reqwest::Client, reqwest::Error> {
        let tls = url.scheme() == "https";
        let cell = if tls {
            &self.tls_upload
        } else {
            &self.plain_upload
        };
        self.built_once(cell, || self.builder(tls).build())
    }

    /// [`Transports::client`] with the error as a registry transport error.
    fn for_url(&self, url: &Url) -> Result<&reqwest::Client, Error> {
        self.client(url).map_err(|e| {
            Error::new(ErrorKind::Transport {
                context: "building the HTTP client".to_owned(),
                source: Box::new(e),
            })
        })
    }
}

pub(crate) struct Inner {
    http: Transports,
    providers: Vec<Arc<dyn CredentialProvider>>,
    pub(crate) retry: RetryPolicy,
    pub(crate) jobs: usize,
    http_hosts: HashSet<String>,
    https_hosts: HashSet<String>,
    /// (api host, scope key) → Authorization header value. Scope key `""` holds Basic.
    auth: Mutex<HashMap<(String, String), HeaderValue>>,
}

/// Whether credentials may be sent to the token `realm` of the registry at `registry`: not
/// over plain HTTP when the registry itself is reached over TLS, unless the realm is on this
/// machine.
fn realm_may_receive_credentials(registry: &Url, realm: &Url) -> bool {
    registry.scheme() != "https"
        || realm.scheme() == "https"
        || realm.host_str().is_some_and(is_loopback)
}

fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    // Parsed, not prefix-matched: `127.evil.example` is a public name, not loopback.
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Inner {
    fn scheme(&self, registry: &str) -> &'static str {
        if self.https_hosts.contains(registry) {
            "https"
        } else if self.http_hosts.contains(registry) || is_loopback(registry) {
            "http"
        } else {
            "https"
        }
    }

    async fn credential(&self, registry: &str) -> Result<Option<Credential>, Error> {
        for p in &self.providers {
            match p.credential(registry).await {
                Ok(Some(c)) => return Ok(Some(c)),
                Ok(None) => {}
                Err(source) => {
                    return Err(Error::new(ErrorKind::Credential {
                        registry: registry.to_owned(),
                        source,
                    }));
                }
            }
        }
        Ok(None)
    }
}

/// One repository on one registry, with the scopes its token must carry.
#[derive(Clone)]
pub(crate) struct Repo {
    inner: Arc<Inner>,
    pub(crate) registry: String,
    base: Url,
    pub(crate) repository: String,
    scopes: Vec<String>,
    retries: Arc<AtomicU32>,
}

fn host_key(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// A transport error: `context` names the request; the URL is not repeated in the cause.
fn transport(context: String, e: reqwest::Error) -> ErrorKind {
    ErrorKind::Transport {
        context,
        source: Box::new(e.without_url()),
    }
}

/// A URL as errors show it: without its query, which for an upload session is a long opaque
/// `_state` that makes every message hundreds of characters long and says nothing to a user.
pub(crate) fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

impl Repo {
    pub(crate) fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("/v2/{}/{path}", self.repository));
        url
    }

    /// The client's retry policy.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.inner.retry
    }

    pub(crate) fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// After the connection broke while a response body was read (`send` only retries until
    /// the headers are in): waits the policy's backoff and returns true when another attempt
    /// is allowed (counted as a retry), false once `attempt` (shared with
    /// [`Repo::send_counted`]) has used them up.
    pub(crate) async fn retry_body_read(&self, attempt: &mut u32, url: &Url) -> bool {
        let policy = self.inner.retry;
        if *attempt >= policy.max_retries {
            return false;
        }
        *attempt += 1;
        self.count_retry();
        tracing::debug!(%url, attempt = *attempt, "response body cut off, retrying");
        tokio::time::sleep(policy.backoff(*attempt)).await;
        true
    }

    fn scope_key(&self) -> String {
        self.scopes.join(" ")
    }

    fn cached_auth(&self, url: &Url) -> Option<HeaderValue> {
        // Credentials go only to the registry host that challenged for them.
        if host_key(url) != host_key(&self.base) {
            return None;
        }
        let host = host_key(&self.base);
        let cache = self.inner.auth.lock().ok()?;
        cache
            .get(&(host.clone(), self.scope_key()))
            .or_else(|| cache.get(&(host, String::new())))
            .cloned()
    }

    fn store_auth(&self, key: String, value: String) -> Result<(), Error> {
        let value = HeaderValue::from_str(&value).map_err(|_| {
            Error::new(ErrorKind::Unauthorized {
                registry: self.registry.clone(),
                message: "the token contains characters not allowed in a header".to_owned(),
            })
        })?;
        let mut value = value;
        value.set_sensitive(true);
        if let Ok(mut cache) = self.inner.auth.lock() {
            cache.insert((host_key(&self.base), key), value);
        }
        Ok(())
    }

    /// Answers a 401 challenge: caches a Basic header or fetches a bearer token.
    /// Answers a 401: finds the credential and, for a Bearer challenge, fetches a token.
    /// Retries of the token request count in `attempt`, the request's budget.
    async fn authenticate(&self, response: &Response, attempt: &mut u32) -> Result<(), Error> {
        let unauthorized = |message: String| {
            Error::new(ErrorKind::Unauthorized {
                registry: self.registry.clone(),
                message,
            })
        };
        // A 401 from wherever a redirect led (blob storage, a CDN) must not get the registry's
        // credentials: reqwest drops `Authorization` on a cross-host redirect for that reason,
        // and answering the new host's challenge would undo it.
        if host_key(response.url()) != host_key(&self.base) {
            return Err(unauthorized(format!(
                "HTTP 401 from {} after the registry redirected there, and Forge sends the registry's credentials only to the registry: the redirect target must accept the registry's signed URL without credentials (check the registry's storage redirect settings)",
                host_key(response.url())
            )));
        }
        let Some(challenge) = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
        else {
            return Err(unauthorized(
                "HTTP 401 without a WWW-Authenticate challenge".to_owned(),
            ));
        };
        let credential = self.inner.credential(&self.registry).await?;
        match challenge.scheme.as_str() {
            "basic" => {
                if let Some(Credential::IdentityToken { .. }) = &credential {
                    return Err(unauthorized(
                        "the registry asks for Basic authentication and the Docker config holds only an identity token for it: log in with a user name and password instead".to_owned(),
                    ));
                }
                let Some(header) = credential.as_ref().and_then(Credential::basic_header) else {
                    return Err(unauthorized(
                        "the registry requires a user name and password and none is configured"
                            .to_owned(),
                    ));
                };
                self.store_auth(String::new(), header)
            }
            "bearer" => {
                if let Some(Credential::Bearer { token }) = &credential {
                    return self.store_auth(self.scope_key(), format!("Bearer {token}"));
                }
                let Some(realm) = challenge.params.get("realm") else {
                    return Err(unauthorized("bearer challenge without a realm".to_owned()));
                };
                let url = Url::parse(realm)
                    .map_err(|_| unauthorized(format!("bearer realm '{realm}' is not a URL")))?;
                // Credentials go to the realm only over TLS when the registry itself is reached
                // over TLS: a challenge must not be able to downgrade them to plain HTTP.
                if credential.is_some() && !realm_may_receive_credentials(&self.base, &url) {
                    return Err(unauthorized(format!(
                        "the registry names a plain-HTTP token service ({realm}) and Forge does not send credentials over plain HTTP: fix the registry's auth realm to use https"
                    )));
                }
                let service = challenge.params.get("service");
                let scopes: Vec<&str> = if self.scopes.is_empty() {
                    challenge
                        .params
                        .get("scope")
                        .map(String::as_str)
                        .into_iter()
                        .collect()
                } else {
                    self.scopes.iter().map(String::as_str).collect()
                };
                // The token service is a server like any other: connection errors, 5xx and
                // 429 are retried on the request's budget, and reported as what they are (not
                // as refused credentials) once it is spent.
                let policy = self.inner.retry;
                let token_method = match &credential {
                    Some(Credential::IdentityToken { .. }) => "POST",
                    _ => "GET",
                };
                let resp = loop {
                    let sent = match &credential {
                        // OAuth2 (distribution's docs/spec/auth/oauth.md): the scopes travel as one
                        // space-separated list, the refresh token only in the body.
                        Some(Credential::IdentityToken { token }) => {
                            let mut form = vec![
                                ("grant_type", "refresh_token"),
                                ("refresh_token", token.as_str()),
                                ("client_id", OAUTH_CLIENT_ID),
                            ];
                            if let Some(service) = service {
                                form.push(("service", service));
                            }
                            let scope = scopes.join(" ");
                            if !scope.is_empty() {
                                form.push(("scope", &scope));
                            }
                            let body = url::form_urlencoded::Serializer::new(String::new())
                                .extend_pairs(form)
                                .finish();
                            self.inner
                                .http
                                .no_redirect_for_url(&url)?
                                .post(url.clone())
                                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                                .body(body)
                                .send()
                                .await
                        }
                        _ => {
                            let mut url = url.clone();
                            {
                                let mut q = url.query_pairs_mut();
                                if let Some(service) = service {
                                    q.append_pair("service", service);
                                }
                                for scope in &scopes {
                                    q.append_pair("scope", scope);
                                }
                            }
                            let mut req = self.inner.http.for_url(&url)?.get(url);
                            if let Some(basic) =
                                credential.as_ref().and_then(Credential::basic_header)
                            {
                                req = req.header(header::AUTHORIZATION, basic);
                            }
                            req.send().await
                        }
                    };
                    let delay = match &sent {
                        Err(e)
                            if *attempt < policy.max_retries
                                && !e.is_builder()
                                && !e.is_redirect() =>
                        {
                            policy.backoff(*attempt + 1)
                        }
                        Ok(r)
                            if *attempt < policy.max_retries && is_retryable_status(r.status()) =>
                        {
                            let backoff = policy.backoff(*attempt + 1);
                            policy
                                .retry_after(r.headers())
                                .map_or(backoff, |asked| asked.max(backoff))
                        }
                        _ => break sent,
                    };
                    *attempt += 1;
                    self.count_retry();
                    tracing::debug!(%realm, "token request failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                .map_err(|e| Error::new(transport(format!("token request to {realm}"), e)))?;
                let status = resp.status();
                if status.is_redirection() {
                    return Err(unauthorized(format!(
                        "the token service {realm} answered a redirect (HTTP {}) and Forge does not send credentials on to another address: point the registry's auth realm at the token service itself",
                        status.as_u16()
                    )));
                }
                if matches!(credential, Some(Credential::IdentityToken { .. }))
                    && matches!(
                        status,
                        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                    )
                {
                    return Err(unauthorized(format!(
                        "the token service {realm} does not take OAuth2 refresh tokens (HTTP {}), and the Docker config holds only an identity token for this registry: log in with a user name and password instead",
                        status.as_u16()
                    )));
                }
                if matches!(credential, Some(Credential::IdentityToken { .. }))
                    && matches!(status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED)
                {
                    return Err(unauthorized(format!(
                        "the token service {realm} refused the Docker config's identity token (HTTP {}): it may have expired or been revoked; log in again (docker login, or az acr login for Azure)",
                        status.as_u16()
                    )));
                }
                if is_retryable_status(status) {
                    let retry_after = policy.retry_after(resp.headers());
                    let body =
                        tokio::time::timeout(self.inner.http.settings.read_timeout, resp.bytes())
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or_default();
                    let (code, message) = parse_error_body(&body);
                    return Err(Error {
                        retry_after,
                        ..Error::new(ErrorKind::Registry {
                            method: token_method.to_owned(),
                            url: url.to_string(),
                            status: status.as_u16(),
                            code,
                            message: if message.is_empty() {
                                "the registry's token service is failing or overloaded; try again later".to_owned()
                            } else {
                                message
                            },
                        })
                    });
                }
                if !status.is_success() {
                    return Err(unauthorized(format!(
                        "the token service {realm} answered HTTP {}",
                        status.as_u16()
                    )));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| Error::new(transport(format!("token request to {realm}"), e)))?;
                let token: Token = serde_json::from_slice(&body).map_err(|_| {
                    unauthorized(format!("the token service {realm} answered without JSON"))
                })?;
                let Some(token) = token.token.or(token.access_token) else {
                    return Err(unauthorized(format!(
                        "the token service {realm} answered without a token"
                    )));
                };
                self.store_auth(self.scope_key(), format!("Bearer {token}"))
            }
            other => Err(unauthorized(format!(
                "unsupported authentication scheme '{other}'"
            ))),
        }
    }

    /// Sends a request with auth and retries (5xx, 429, connection errors). Returns whatever
    /// response came last; callers check the status.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, Error> {
        self.send_counted(method, url, headers, body, &mut 0).await
    }

    /// [`Repo::send_counted`] on a budget shared by several requests (a blob transfer's upload
    /// session, its source GET and its own retries): the request starts at the retries already
    /// used and adds its own. Two requests running at once can each use what was left when
    /// they started, so the total stays within twice the policy, not a product of it.
    pub(crate) async fn send_budgeted(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<Bytes>,
        used: &AtomicU32,
    ) -> Result<Response, Error> {
        let before = used.load(Ordering::Relaxed);
        let mut attempt = before;
        let result = self
            .send_counted(method, url, headers, body, &mut attempt)
            .await;
        used.fetch_add(attempt - before, Ordering::Relaxed);
        result
    }

    /// [`Repo::send`] drawing on a retry budget the caller shares with its own retries (a body
    /// read that broke), so one request never gets more than the policy's retries in all.
    pub(crate) async fn send_counted(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<Bytes>,
        attempt: &mut u32,
    ) -> Result<Response, Error> {
        let start = Instant::now();
        let policy = self.inner.retry;
        let mut authenticated = false;
        loop {
            let mut req = self
                .inner
                .http
                .for_url(&url)?
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            if let Some(auth) = self.cached_auth(&url) {
                req = req.header(header::AUTHORIZATION, auth);
            }
            let delay = match req.send().await {
                Err(e) => {
                    if *attempt >= policy.max_retries || e.is_builder() || e.is_redirect() {
                        return Err(Error {
                            kind: transport(format!("{method} {}", shown_url(&url)), e),
                            retries: *attempt,
                            elapsed: start.elapsed(),
                            retry_after: None,
                        });
                    }
                    // Without the URL's query: after a redirect it can be a presigned URL.
                    let e = e.without_url();
                    tracing::debug!(%method, url = %shown_url(&url), error = %e, "connection error, retrying");
                    policy.backoff(*attempt + 1)
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !authenticated {
                        authenticated = true;
                        self.authenticate(&resp, attempt).await.map_err(|mut e| {
                            e.retries = *attempt;
                            e.elapsed = start.elapsed();
                            e
                        })?;
                        continue;
                    }
                    if !is_retryable_status(status) || *attempt >= policy.max_retries {
                        return Ok(resp);
                    }
                    tracing::debug!(%method, %url, status = status.as_u16(), "retrying");
                    // Never sooner than the backoff: `Retry-After: 0` must not become a storm.
                    let backoff = policy.backoff(*attempt + 1);
                    policy
                        .retry_after(resp.headers())
                        .map_or(backoff, |asked| asked.max(backoff))
                }
            };
            *attempt += 1;
            self.count_retry();
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends an upload once (streamed bodies cannot be replayed): auth from the cache only.
    ///
    /// No overall time limit, however large the body: the request fails only when it stops
    /// moving, i.e. when the registry takes no byte of the body for the read timeout, or does
    /// not answer within it after the last byte.
    pub(crate) async fn send_once(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: UploadBody,
    ) -> Result<Response, BoxError> {
        let stall_limit = self.inner.http.settings.read_timeout;
        // hyper stops polling a body once it has sent the declared length, so the end of the
        // stream may never be seen: the byte count says the body is out.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let activity = Arc::new(Activity::new(declared));
        let mut stream = match body {
            UploadBody::Stream(s) => s,
            UploadBody::Bytes(b) => bytes_stream(b),
        };
        let watched = activity.clone();
        // Every poll that yields (a chunk, an error, the end) is progress: hyper polls the
        // body only when the connection can take more bytes. A poll that finds no chunk yet
        // is the source being slow, not the destination: that wait is the source's to time
        // out (its download has its own read timeout), and must not be blamed on this upload.
        let stream = futures_util::stream::poll_fn(move |cx| {
            let polled = stream.as_mut().poll_next(cx);
            match &polled {
                Poll::Ready(None) => watched.finish(),
                Poll::Ready(Some(Ok(chunk))) => watched.sent(chunk.len()),
                Poll::Ready(Some(Err(_))) => watched.touch(),
                Poll::Pending => watched.awaiting_source(true),
            }
            polled
        });
        let mut req = self
            .inner
            .http
            .upload_client(&url)?
            .request(method, url.clone())
            .headers(headers)
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(auth) = self.cached_auth(&url) {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let send = req.send();
        tokio::pin!(send);
        loop {
            let idle = activity.idle();
            if idle >= stall_limit && !activity.is_awaiting_source() {
                return Err(Box::new(Stalled {
                    limit: stall_limit,
                    body_sent: activity.finished(),
                }));
            }
            let wait = stall_limit.saturating_sub(idle).max(stall_limit / 4);
            tokio::select! {
                answer = &mut send => {
                    return answer.map_err(|e| Box::new(e.without_url()) as BoxError);
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Turns an unexpected response into an error, reading the OCI error body.
    pub(crate) async fn error_from(&self, method: &Method, url: &Url, resp: Response) -> Error {
        let status = resp.status().as_u16();
        let retry_after = self.inner.retry.retry_after(resp.headers());
        // Upload answers come through a client without a read timeout: bound the error body.
        let body = tokio::time::timeout(self.inner.http.settings.read_timeout, resp.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let (code, message) = parse_error_body(&body);
        let kind = match (status, code.as_deref()) {
            (401, _) | (_, Some("UNAUTHORIZED")) => ErrorKind::Unauthorized {
                registry: self.registry.clone(),
                message: if message.is_empty() {
                    format!("HTTP {status}")
                } else {
                    message
                },
            },
            (403, _) | (_, Some("DENIED")) => ErrorKind::Denied {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                message: if message.is_empty() {
                    format!("HTTP {status}")
                } else {
                    message
                },
            },
            _ => ErrorKind::Registry {
                method: method.to_string(),
                url: shown_url(url),
                status,
                code,
                message,
            },
        };
        Error {
            retry_after,
            ..Error::new(kind)
        }
    }
}

/// 429 and 5xx but 501 (a registry that does not implement something will not start to).
fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// The body of an upload request ([`Repo::send_once`]).
pub(crate) enum UploadBody {
    /// A blob streamed from its source.
    Stream(BlobStream),
    /// Bytes in memory (a chunk of a chunked upload, an empty final PUT).
    Bytes(Bytes),
}

/// An in-memory body as a stream of 64 KiB slices (no copies), so the watchdog sees it move.
fn bytes_stream(bytes: Bytes) -> BlobStream {
    const SLICE: usize = 64 * 1024;
    let slices: Vec<Result<Bytes, BoxError>> = (0..bytes.len())
        .step_by(SLICE)
        .map(|at| Ok(bytes.slice(at..bytes.len().min(at + SLICE))))
        .collect();
    Box::pin(futures_util::stream::iter(slices))
}

/// When an upload last moved, and whether its body has been sent in full.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
    finished: AtomicBool,
    /// The connection asked for more and the source had nothing yet.
    awaiting_source: AtomicBool,
    /// Body bytes handed to the connection, and the `Content-Length` declared.
    sent: AtomicU64,
    declared: Option<u64>,
}

impl Activity {
    fn new(declared: Option<u64>) -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            awaiting_source: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            declared,
        }
    }

    fn sent(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.touch();
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.awaiting_source(false);
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    fn awaiting_source(&self, waiting: bool) {
        self.awaiting_source.store(waiting, Ordering::Relaxed);
    }

    fn is_awaiting_source(&self) -> bool {
        self.awaiting_source.load(Ordering::Relaxed)
    }

    fn finish(&self) {
        self.touch();
        self.finished.store(true, Ordering::Relaxed);
    }

    fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
            || self
                .declared
                .is_some_and(|n| self.sent.load(Ordering::Relaxed) >= n)
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }
}

/// An upload that stopped moving for the read timeout.
#[derive(Debug)]
pub(crate) struct Stalled {
    limit: Duration,
    body_sent: bool,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limit = self.limit.as_secs_f64();
        if self.body_sent {
            write!(
                f,
                "the registry did not answer within {limit:.1}s of the upload's last byte"
            )?;
        } else {
            write!(
                f,
                "the upload made no progress for {limit:.1}s (the registry stopped taking its bytes)"
            )?;
        }
        f.write_str(": check the registry and the network between; a slower link is fine as long as bytes keep moving, the limit is the client's read timeout")
    }
}

impl std::error::Error for Stalled {}

/// Resolves a `Location` header (absolute or relative) against the request URL.
pub(crate) fn resolve_location(request: &Url, resp: &Response) -> Option<Url> {
    join_location(
        request,
        resp.headers().get(header::LOCATION)?.to_str().ok()?,
    )
}

fn join_location(request: &Url, location: &str) -> Option<Url> {
    request.join(location).ok()
}

/// Reads `{"errors":[{"code":…,"message":…}]}`; falls back to the body text.
pub(crate) fn parse_error_body(body: &[u8]) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body)
        && let Some(first) = e.errors.into_iter().next()
    {
        return (first.code, first.message.unwrap_or_default());
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(300).collect();
    (None, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_go_from_a_tls_registry_to_a_plain_http_realm() {
        let check = |registry: &str, realm: &str, expected: bool| {
            let (registry, realm) = (
                Url::parse(registry).expect("url"),
                Url::parse(realm).expect("url"),
            );
            assert_eq!(
                realm_may_receive_credentials(&registry, &realm),
                expected,
                "{registry} -> {realm}"
            );
        };
        check("https://r.example/v2/", "https://auth.example/token", true);
        check("https://r.example/v2/", "http://auth.example/token", false);
        check("https://r.example/v2/", "http://127.0.0.1:8080/token", true);
        check("https://r.example/v2/", "http://[::1]:8080/token", true);
        check(
            "http://r.internal:5000/v2/",
            "http://auth.internal/token",
            true,
        );
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:1",
            "127.1.2.3",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "example.com",
            "10.0.0.1:5000",
            "localhost.example.com",
            "127.evil.example",
            "127.evil.example:5000",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn retry_after_seconds_and_cap() {
        let p = RetryPolicy::default();
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(p.retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("100000"));
        assert_eq!(p.retry_after(&h), Some(p.max_retry_after));
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        let d = p.retry_after(&h).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert!(p.backoff(1) <= p.initial_backoff);
        assert!(p.backoff(1) >= p.initial_backoff / 2);
        assert!(p.backoff(30) <= p.max_backoff);
    }

    #[test]
    fn locations_resolve_against_the_request_url() {
        let request = Url::parse("https://r.example:8443/v2/team/app/blobs/uploads/").unwrap();
        let check = |location: &str, expected: &str| {
            assert_eq!(
                join_location(&request, location).unwrap().as_str(),
                expected
            );
        };
        check(
            "/v2/team/app/blobs/uploads/u1?_state=x",
            "https://r.example:8443/v2/team/app/blobs/uploads/u1?_state=x",
        );
        check("u2", "https://r.example:8443/v2/team/app/blobs/uploads/u2");
        check(
            "https://upload.example/session/3",
            "https://upload.example/session/3",
        );
    }

    #[test]
    fn error_bodies() {
        let (code, msg) = parse_error_body(
            br#"{"errors":[{"code":"NAME_UNKNOWN","message":"The repository with name 'x' does not exist in the registry with id '1'"}]}"#,
        );
        assert_eq!(code.as_deref(), Some("NAME_UNKNOWN"));
        assert!(msg.contains("'x'"));
        assert_eq!(
            parse_error_body(b"404 page not found\n"),
            (None, "404 page not found".to_owned())
        );
    }
}
