//! Endpoints (a registry repository or an OCI layout) and the streaming, verifying blob
//! transfer between them.

use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::auth::BoxError;
use crate::client::{Repo, UploadBody, resolve_location, shown_url};
use crate::copy::{Progress, UploadMode};
use crate::digest::{Descriptor, Digest, ManifestRefs, MediaType};
use crate::error::{Error, ErrorKind};
use crate::layout::Layout;

/// A stream of blob bytes.
pub(crate) type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// Largest manifest Forge reads (registries commonly cap manifests at 4 MiB).
const MAX_MANIFEST: usize = 8 * 1024 * 1024;

/// Most pages of a referrers list Forge follows (`Link: <…>; rel="next"`).
const MAX_REFERRER_PAGES: usize = 100;

/// Why a capped body read stopped.
enum BodyRead {
    /// The connection failed mid-body (worth another request).
    Cut(reqwest::Error),
    /// The body is longer than the cap, declared or as it arrived.
    TooLarge,
}

/// Reads a manifest-sized body, refusing more than `cap` bytes even when the registry sends no
/// `Content-Length` (a chunked response must not fill memory).
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Bytes, BodyRead> {
    if resp.content_length().is_some_and(|l| l > cap as u64) {
        return Err(BodyRead::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyRead::Cut)? {
        if body.len() + chunk.len() > cap {
            return Err(BodyRead::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The `rel="next"` target of a `Link` header (RFC 8288), resolved against `base`.
fn link_next(headers: &HeaderMap, base: &url::Url) -> Option<url::Url> {
    headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
            let is_next = params.split(';').any(|p| {
                p.trim()
                    .strip_prefix("rel=")
                    .map(|r| r.trim_matches('"'))
                    .is_some_and(|r| r.split_whitespace().any(|r| r == "next"))
            });
            is_next.then(|| base.join(target).ok()).flatten()
        })
}

/// A manifest as served: raw bytes (never re-serialized), media type, digest of the bytes.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub(crate) bytes: Bytes,
    pub(crate) media_type: String,
    pub(crate) digest: Digest,
    pub(crate) header_digest: Option<Digest>,
}

impl Fetched {
    pub(crate) fn new(bytes: Bytes, media_type: String, header_digest: Option<Digest>) -> Self {
        let digest = Digest::of(&bytes);
        Fetched {
            bytes,
            media_type,
            digest,
            header_digest,
        }
    }

    pub(crate) fn refs(&self, reference: &str) -> Result<ManifestRefs, Error> {
        let refs = ManifestRefs::parse(&self.bytes).map_err(|e| {
            Error::new(ErrorKind::UnsupportedManifest {
                reference: reference.to_owned(),
                reason: format!("the manifest is not valid JSON: {e}"),
            })
        })?;
        if refs.schema_version == Some(1) {
            return Err(Error::new(ErrorKind::UnsupportedManifest {
                reference: reference.to_owned(),
                reason: "Docker schema 1 manifests are deprecated and not supported; rebuild and push the image with a current builder".to_owned(),
            }));
        }
        Ok(refs)
    }

    pub(crate) fn is_index(&self) -> bool {
        MediaType::is_index(&self.media_type)
    }
}

/// Where images are read from or written to.
#[derive(Clone)]
pub(crate) enum Endpoint {
    Registry(Repo),
    Layout(Layout),
}

fn accept_manifests() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static(MediaType::MANIFEST_ACCEPT),
    );
    h
}

fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Endpoint {
    pub(crate) fn describe(&self) -> String {
        match self {
            Endpoint::Registry(r) => format!("{}/{}", r.registry, r.repository),
            Endpoint::Layout(l) => format!("oci:{}", l.path.display()),
        }
    }

    /// GET a manifest by tag or digest; `None` when it does not exist.
    pub(crate) async fn get_manifest(&self, reference: &str) -> Result<Option<Fetched>, Error> {
        self.get_manifest_from(reference, 0).await
    }

    /// [`Endpoint::get_manifest`] on what is left of a budget `used` by an earlier request
    /// (the tag read after a failed tag PUT: together they get the policy's retries, not
    /// twice that).
    pub(crate) async fn get_manifest_after(
        &self,
        reference: &str,
        used: u32,
    ) -> Result<Option<Fetched>, Error> {
        let used = match self {
            Endpoint::Registry(r) => used.min(r.retry_policy().max_retries),
            Endpoint::Layout(_) => 0,
        };
        self.get_manifest_from(reference, used).await
    }

    /// [`Endpoint::get_manifest`] with `first_attempt` of the retry budget already used.
    async fn get_manifest_from(
        &self,
        reference: &str,
        first_attempt: u32,
    ) -> Result<Option<Fetched>, Error> {
        match self {
            Endpoint::Layout(l) => l.get_manifest(reference).await,
            Endpoint::Registry(r) => {
                let url = r.url(&format!("manifests/{reference}"));
                let start = std::time::Instant::now();
                let mut attempt = first_attempt;
                loop {
                    let resp = r
                        .send_counted(
                            Method::GET,
                            url.clone(),
                            accept_manifests(),
                            None,
                            &mut attempt,
                        )
                        .await?;
                    match resp.status() {
                        StatusCode::OK => {}
                        StatusCode::NOT_FOUND => return Ok(None),
                        _ => return Err(r.error_from(&Method::GET, &url, resp).await),
                    }
                    let content_type = resp
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let hdr = header_digest(resp.headers());
                    let bytes = match read_capped(resp, MAX_MANIFEST).await {
                        Ok(bytes) => bytes,
                        Err(BodyRead::TooLarge) => {
                            return Err(Error::new(ErrorKind::UnsupportedManifest {
                                reference: reference.to_owned(),
                                reason: format!("the manifest is larger than {MAX_MANIFEST} bytes"),
                            }));
                        }
                        Err(BodyRead::Cut(_)) if r.retry_body_read(&mut attempt, &url).await => {
                            continue;
                        }
                        Err(BodyRead::Cut(e)) => {
                            return Err(Error {
                                retries: attempt,
                                elapsed: start.elapsed(),
                                ..Error::new(ErrorKind::Transport {
                                    context: format!("GET {url}"),
                                    source: Box::new(e),
                                })
                            });
                        }
                    };
                    let refs = ManifestRefs::parse(&bytes).unwrap_or_default();
                    let media_type = refs.effective_media_type(content_type.as_deref());
                    return Ok(Some(Fetched::new(bytes, media_type, hdr)));
                }
            }
        }
    }

    /// GET a manifest by digest and prove the bytes hash to it.
    pub(crate) async fn get_manifest_verified(&self, digest: &Digest) -> Result<Fetched, Error> {
        let Some(m) = self.get_manifest(digest.as_str()).await? else {
            return Err(Error::new(ErrorKind::ManifestNotFound {
                reference: format!("{}@{digest}", self.describe()),
            }));
        };
        if m.digest != *digest {
            return Err(Error::new(ErrorKind::DigestMismatch {
                what: format!("manifest {}@{digest}", self.describe()),
                expected: digest.clone(),
                actual: m.digest,
            }));
        }
        Ok(m)
    }

    pub(crate) async fn has_manifest(&self, digest: &Digest) -> Result<bool, Error> {
        match self {
            Endpoint::Layout(l) => Ok(l.get_manifest(digest.as_str()).await?.is_some()),
            Endpoint::Registry(r) => {
                let url = r.url(&format!("manifests/{digest}"));
                let resp = r
                    .send(Method::HEAD, url.clone(), accept_manifests(), None)
                    .await?;
                match resp.status() {
                    s if s.is_success() => Ok(true),
                    StatusCode::NOT_FOUND => Ok(false),
                    _ => Err(r.error_from(&Method::HEAD, &url, resp).await),
                }
            }
        }
    }

    /// PUT a manifest's raw bytes under `reference` (tag or digest). Returns whether the
    /// registry answered `OCI-Subject` (it maintains the referrers API itself).
    pub(crate) async fn put_manifest(
        &self,
        manifest: &Fetched,
        tag: Option<&str>,
        top: bool,
    ) -> Result<bool, Error> {
        match self {
            Endpoint::Layout(l) => {
                l.put_manifest(manifest, tag, top).await?;
                Ok(false)
            }
            Endpoint::Registry(r) => {
                let reference = tag.map_or_else(|| manifest.digest.to_string(), str::to_owned);
                let url = r.url(&format!("manifests/{reference}"));
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&manifest.media_type) {
                    h.insert(header::CONTENT_TYPE, v);
                }
                let resp = r
                    .send(Method::PUT, url.clone(), h, Some(manifest.bytes.clone()))
                    .await?;
                if !resp.status().is_success() {
                    return Err(r.error_from(&Method::PUT, &url, resp).await);
                }
                // Accepted, so something is stored: a different digest is not a transfer to
                // retry but a registry that changed the bytes (re-serialized or converted them).
                if let Some(d) = header_digest(resp.headers())
                    && d != manifest.digest
                {
                    return Err(stored_otherwise(&url, "manifest", &manifest.digest, &d));
                }
                Ok(resp.headers().contains_key("oci-subject"))
            }
        }
    }

    pub(crate) async fn has_blob(&self, desc: &Descriptor) -> Result<bool, Error> {
        match self {
            Endpoint::Layout(l) => l.has_blob(desc).await,
            Endpoint::Registry(r) => {
                let url = r.url(&format!("blobs/{}", desc.digest));
                let resp = r
                    .send(Method::HEAD, url.clone(), HeaderMap::new(), None)
                    .await?;
                match resp.status() {
                    // A stored blob of another size (a truncated write at the registry) is
                    // not the blob: absent, so it is uploaded again, and verification fails.
                    // The header itself: reqwest reports no body length for a HEAD.
                    s if s.is_success() => Ok(resp
                        .headers()
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .is_none_or(|n| n == desc.size)),
                    StatusCode::NOT_FOUND => Ok(false),
                    _ => Err(r.error_from(&Method::HEAD, &url, resp).await),
                }
            }
        }
    }

    /// Opens a blob for streaming. `retries` is the blob transfer's retry budget (see
    /// [`copy_blob_once`]): the GET retries only with what is left of it.
    pub(crate) async fn open_blob(
        &self,
        desc: &Descriptor,
        retries: &AtomicU32,
    ) -> Result<BlobStream, Error> {
        match self {
            Endpoint::Layout(l) => l.open_blob(desc).await,
            Endpoint::Registry(r) => {
                let url = r.url(&format!("blobs/{}", desc.digest));
                let resp = r
                    .send_budgeted(Method::GET, url.clone(), HeaderMap::new(), None, retries)
                    .await?;
                if resp.status() != StatusCode::OK {
                    return Err(r.error_from(&Method::GET, &url, resp).await);
                }
                Ok(Box::pin(
                    resp.bytes_stream()
                        .map(|r| r.map_err(|e| Box::new(e) as BoxError)),
                ))
            }
        }
    }

    /// Whether the repository (or layout) exists.
    pub(crate) async fn exists(&self) -> Result<bool, Error> {
        match self {
            Endpoint::Layout(l) => Ok(l.exists()),
            Endpoint::Registry(r) => {
                let mut url = r.url("tags/list");
                url.set_query(Some("n=1"));
                let resp = r
                    .send(Method::GET, url.clone(), HeaderMap::new(), None)
                    .await?;
                match resp.status() {
                    s if s.is_success() => Ok(true),
                    // Only the registry's own NAME_UNKNOWN means "no such repository": a 404
                    // from a proxy or a wrong path must not read as "ask the platform team".
                    // Harbor says NOT_FOUND where the spec says NAME_UNKNOWN.
                    StatusCode::NOT_FOUND => {
                        // A 404 whose body was cut off says nothing about the repository.
                        let body = resp.bytes().await.map_err(|e| {
                            Error::new(ErrorKind::Transport {
                                context: format!("GET {url} (reading its 404 answer)"),
                                source: Box::new(e),
                            })
                        })?;
                        match crate::client::parse_error_body(&body) {
                            (Some(code), _) if code == "NAME_UNKNOWN" || code == "NOT_FOUND" => {
                                Ok(false)
                            }
                            (code, message) => Err(Error::new(ErrorKind::Registry {
                                method: Method::GET.to_string(),
                                url: url.to_string(),
                                status: StatusCode::NOT_FOUND.as_u16(),
                                code,
                                message: format!(
                                    "{message} (not a registry's NAME_UNKNOWN answer: check that '{}' is the registry itself, not a proxy or a web server in front of it)",
                                    r.registry
                                ),
                            })),
                        }
                    }
                    _ => Err(r.error_from(&Method::GET, &url, resp).await),
                }
            }
        }
    }

    /// Referrers of `digest` via the referrers API, every page of it (`Link: <…>; rel="next"`):
    /// `None` when the registry says it does not serve the API (400, 404, 405, 406 or 501, or
    /// a 200 that is not an index). Any other failure is an error: taking a 503 for "no API"
    /// would drop signatures silently on registries that keep referrers only behind the API.
    pub(crate) async fn referrers_api(
        &self,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, Error> {
        let Endpoint::Registry(r) = self else {
            return Ok(None);
        };
        let first = r.url(&format!("referrers/{digest}"));
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(MediaType::OCI_INDEX),
        );
        let mut referrers = Vec::new();
        let mut visited = std::collections::HashSet::new();
        let mut url = first.clone();
        loop {
            let (is_index, next, body) = self.referrers_page(r, &url, &h).await?;
            let is_first = url == first;
            let refs = match ManifestRefs::parse(&body) {
                Ok(refs)
                    if is_index || refs.media_type.as_deref() == Some(MediaType::OCI_INDEX) =>
                {
                    refs
                }
                // The first page decides whether there is an API at all.
                _ if is_first => return Ok(None),
                _ => {
                    return Err(Error::new(ErrorKind::UnsupportedManifest {
                        reference: url.to_string(),
                        reason: "a later page of the referrers list is not an OCI index".to_owned(),
                    }));
                }
            };
            referrers.extend(refs.manifests);
            visited.insert(url.clone());
            let Some(next) = next else {
                return Ok(Some(referrers));
            };
            if visited.contains(&next) || visited.len() >= MAX_REFERRER_PAGES {
                return Err(Error::new(ErrorKind::InvalidInput {
                    message: format!(
                        "the referrers list of {digest} at {first} goes on for more than {MAX_REFERRER_PAGES} pages or links back to a page already read ({next}): fix the registry's pagination, or copy with --no-referrers"
                    ),
                }));
            }
            url = next;
        }
    }

    /// One page of a referrers list: whether it is labelled an OCI index, the next page, the body.
    async fn referrers_page(
        &self,
        r: &Repo,
        url: &url::Url,
        h: &HeaderMap,
    ) -> Result<(bool, Option<url::Url>, Bytes), Error> {
        let mut attempt = 0;
        loop {
            let resp = r
                .send_counted(Method::GET, url.clone(), h.clone(), None, &mut attempt)
                .await?;
            match resp.status() {
                StatusCode::OK => {}
                // How registries without the API answer (Artifactory 406; some 400, as
                // go-containerregistry also accepts), and Quay for a subject that is not in
                // the repository (400). "No API" on the first page; a later page that vanishes
                // is not empty.
                StatusCode::NOT_FOUND
                | StatusCode::BAD_REQUEST
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::NOT_ACCEPTABLE
                | StatusCode::NOT_IMPLEMENTED => {
                    return Ok((false, None, Bytes::new()));
                }
                _ => return Err(r.error_from(&Method::GET, url, resp).await),
            }
            let is_index = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with(MediaType::OCI_INDEX));
            let next = link_next(resp.headers(), url);
            match read_capped(resp, MAX_MANIFEST).await {
                Ok(body) => return Ok((is_index, next, body)),
                Err(BodyRead::TooLarge) => {
                    return Err(Error::new(ErrorKind::UnsupportedManifest {
                        reference: url.to_string(),
                        reason: format!("a referrers page is larger than {MAX_MANIFEST} bytes"),
                    }));
                }
                Err(BodyRead::Cut(_)) if r.retry_body_read(&mut attempt, url).await => {}
                Err(BodyRead::Cut(e)) => {
                    return Err(Error {
                        retries: attempt,
                        ..Error::new(ErrorKind::Transport {
                            context: format!("GET {url}"),
                            source: Box::new(e),
                        })
                    });
                }
            }
        }
    }

    /// Referrers of `digest`: the referrers API (asked only when `try_api`), else the
    /// `sha256-<hex>` fallback tag. The flag says whether the API answered.
    pub(crate) async fn referrers(
        &self,
        digest: &Digest,
        try_api: bool,
    ) -> Result<(Vec<Descriptor>, bool), Error> {
        if try_api && let Some(list) = self.referrers_api(digest).await? {
            return Ok((list, true));
        }
        let list = match self.fallback_index(digest).await? {
            Some(index) => ManifestRefs::parse(&index.bytes)
                .map(|r| r.manifests)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok((list, false))
    }

    /// The fallback index of `digest` (the manifest tagged `sha256-<hex>`). An answer that is
    /// the subject itself, or not an index, is no fallback index: GitLab resolves a tag
    /// spelled like a digest to that digest's manifest, and an index's platform entries must
    /// not be taken for its referrers.
    pub(crate) async fn fallback_index(&self, digest: &Digest) -> Result<Option<Fetched>, Error> {
        Ok(self
            .get_manifest(&digest.referrers_tag())
            .await?
            .filter(|m| m.digest != *digest && m.is_index()))
    }
}

/// Where a verifying stream records why it failed (the HTTP client only sees "body error").
pub(crate) type FailureSlot = Arc<Mutex<Option<ErrorKind>>>;

struct VerifyState {
    inner: BlobStream,
    hasher: Sha256,
    pending: Option<Bytes>,
    total: u64,
    desc: Descriptor,
    what: String,
    slot: FailureSlot,
    progress: Option<Arc<dyn Progress>>,
    finished: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("blob transfer aborted: {0}")]
struct Aborted(String);

impl VerifyState {
    fn fail(&mut self, kind: ErrorKind) -> BoxError {
        self.finished = true;
        let msg = kind.to_string();
        if let Ok(mut slot) = self.slot.lock()
            && slot.is_none()
        {
            *slot = Some(kind);
        }
        Box::new(Aborted(msg))
    }

    fn emit(&self, chunk: &Bytes) {
        if let Some(p) = &self.progress {
            p.bytes_transferred(&self.desc.digest, chunk.len() as u64);
        }
    }
}

/// Wraps a blob stream: hashes in flight, enforces the size, and holds back the last chunk
/// until the digest is proven, so a receiver never gets the complete body of a bad blob.
pub(crate) fn verifying(
    inner: BlobStream,
    desc: &Descriptor,
    what: String,
    progress: Option<Arc<dyn Progress>>,
) -> (BlobStream, FailureSlot) {
    let slot: FailureSlot = Arc::new(Mutex::new(None));
    let state = VerifyState {
        inner,
        hasher: Sha256::new(),
        pending: None,
        total: 0,
        desc: desc.clone(),
        what,
        slot: slot.clone(),
        progress,
        finished: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        loop {
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    st.total += chunk.len() as u64;
                    if st.total > st.desc.size {
                        let kind = ErrorKind::VerificationFailed {
                            reference: st.what.clone(),
                            reason: format!(
                                "the source sent more than the {} bytes its descriptor declares",
                                st.desc.size
                            ),
                        };
                        let e = st.fail(kind);
                        return Some((Err(e), st));
                    }
                    st.hasher.update(&chunk);
                    if let Some(prev) = st.pending.replace(chunk) {
                        st.emit(&prev);
                        return Some((Ok(prev), st));
                    }
                }
                Some(Err(source)) => {
                    let kind = ErrorKind::Transport {
                        context: format!("reading {}", st.what),
                        source: Box::new(Aborted(source.to_string())),
                    };
                    let e = st.fail(kind);
                    return Some((Err(e), st));
                }
                None => {
                    let actual = Digest::from_hasher(std::mem::take(&mut st.hasher));
                    if actual != st.desc.digest || st.total != st.desc.size {
                        let kind = ErrorKind::DigestMismatch {
                            what: format!(
                                "{} ({} of {} bytes received)",
                                st.what, st.total, st.desc.size
                            ),
                            expected: st.desc.digest.clone(),
                            actual,
                        };
                        let e = st.fail(kind);
                        return Some((Err(e), st));
                    }
                    st.finished = true;
                    return match st.pending.take() {
                        Some(last) => {
                            st.emit(&last);
                            Some((Ok(last), st))
                        }
                        None => None,
                    };
                }
            }
        }
    });
    (Box::pin(stream), slot)
}

fn take_slot(slot: &FailureSlot) -> Option<ErrorKind> {
    slot.lock().ok().and_then(|mut s| s.take())
}

/// How a blob reached the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobOutcome {
    Mounted,
    Copied(u64),
}

enum UploadStart {
    Mounted,
    Session(url::Url),
}

async fn start_upload(
    r: &Repo,
    mount: Option<(&Digest, &str)>,
    retries: &AtomicU32,
) -> Result<UploadStart, Error> {
    let mut url = r.url("blobs/uploads/");
    if let Some((digest, from)) = mount {
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from);
    }
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    let resp = r
        .send_budgeted(Method::POST, url.clone(), h, Some(Bytes::new()), retries)
        .await?;
    match resp.status() {
        StatusCode::CREATED if mount.is_some() => Ok(UploadStart::Mounted),
        StatusCode::ACCEPTED | StatusCode::CREATED => match resolve_location(&url, &resp) {
            Some(loc) => Ok(UploadStart::Session(loc)),
            None => Err(Error::new(ErrorKind::Registry {
                method: "POST".to_owned(),
                url: url.to_string(),
                status: resp.status().as_u16(),
                code: None,
                message: "upload session started without a Location header".to_owned(),
            })),
        },
        _ => Err(r.error_from(&Method::POST, &url, resp).await),
    }
}

fn with_digest(mut url: url::Url, digest: &Digest) -> url::Url {
    url.query_pairs_mut().append_pair("digest", digest.as_str());
    url
}

fn body_error(slot: &FailureSlot, context: String, source: BoxError) -> Error {
    match take_slot(slot) {
        Some(kind) => Error::new(kind),
        None => Error::new(ErrorKind::Transport { context, source }),
    }
}

async fn check_put(
    r: &Repo,
    url: &url::Url,
    resp: reqwest::Response,
    desc: &Descriptor,
) -> Result<(), Error> {
    if !resp.status().is_success() {
        return Err(r.error_from(&Method::PUT, url, resp).await);
    }
    if let Some(d) = header_digest(resp.headers())
        && d != desc.digest
    {
        return Err(stored_otherwise(url, "blob", &desc.digest, &d));
    }
    Ok(())
}

/// A PUT the registry accepted (so it stored something) whose `Docker-Content-Digest` is not
/// the digest of the bytes sent.
fn stored_otherwise(url: &url::Url, what: &str, sent: &Digest, stored: &Digest) -> Error {
    Error::new(ErrorKind::VerificationFailed {
        reference: url.to_string(),
        reason: format!(
            "the registry accepted the {what} PUT but answered Docker-Content-Digest {stored}, not {sent}, the digest of the bytes sent: it stored something else (re-serialized or converted it), and what it stored is now at the destination"
        ),
    })
}

async fn upload_monolithic(
    r: &Repo,
    session: url::Url,
    stream: BlobStream,
    slot: &FailureSlot,
    desc: &Descriptor,
) -> Result<(), Error> {
    let url = with_digest(session, &desc.digest);
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(desc.size));
    let resp = r
        .send_once(Method::PUT, url.clone(), h, UploadBody::Stream(stream))
        .await
        .map_err(|e| body_error(slot, format!("PUT {}", shown_url(&url)), e))?;
    if let Some(kind) = take_slot(slot) {
        return Err(Error::new(kind));
    }
    check_put(r, &url, resp, desc).await
}

async fn upload_chunked(
    r: &Repo,
    session: url::Url,
    mut stream: BlobStream,
    slot: &FailureSlot,
    desc: &Descriptor,
    chunk_size: usize,
) -> Result<(), Error> {
    let chunk_size = chunk_size.max(1);
    let mut url = session;
    let mut offset = 0u64;
    let mut buf = BytesMut::with_capacity(chunk_size.min(64 * 1024 * 1024));
    let mut done = false;
    while !done {
        match stream.next().await {
            Some(Ok(b)) => buf.extend_from_slice(&b),
            Some(Err(source)) => {
                return Err(Error::new(take_slot(slot).unwrap_or(
                    ErrorKind::Transport {
                        context: format!("reading blob {}", desc.digest),
                        source,
                    },
                )));
            }
            None => done = true,
        }
        while buf.len() >= chunk_size || (done && !buf.is_empty()) {
            let n = buf.len().min(chunk_size);
            let chunk = buf.split_to(n).freeze();
            let end = offset + n as u64 - 1;
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n as u64));
            if let Ok(v) = HeaderValue::from_str(&format!("{offset}-{end}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            let resp = r
                .send_once(Method::PATCH, url.clone(), h, UploadBody::Bytes(chunk))
                .await
                .map_err(|source| {
                    Error::new(ErrorKind::Transport {
                        context: format!("PATCH {}", shown_url(&url)),
                        source,
                    })
                })?;
            // ECR answers 201 instead of 202: accept both.
            if !matches!(
                resp.status(),
                StatusCode::ACCEPTED | StatusCode::CREATED | StatusCode::NO_CONTENT
            ) {
                return Err(r.error_from(&Method::PATCH, &url, resp).await);
            }
            if let Some(next) = resolve_location(&url, &resp) {
                url = next;
            }
            offset += n as u64;
        }
    }
    let url = with_digest(url, &desc.digest);
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    let resp = r
        .send_once(Method::PUT, url.clone(), h, UploadBody::Bytes(Bytes::new()))
        .await
        .map_err(|source| {
            Error::new(ErrorKind::Transport {
                context: format!("PUT {}", shown_url(&url)),
                source,
            })
        })?;
    check_put(r, &url, resp, desc).await
}

/// Copies one blob once: mount, or stream source → destination with verification. The
/// streamed upload is never retried here; the requests around it (upload session, source GET)
/// retry only within `retries`, the budget the caller's blob-level retries draw on too, so a
/// blob never gets more than the policy's retries in all.
pub(crate) async fn copy_blob_once(
    src: &Endpoint,
    dst: &Endpoint,
    desc: &Descriptor,
    mode: UploadMode,
    progress: Option<Arc<dyn Progress>>,
    retries: &AtomicU32,
) -> Result<BlobOutcome, Error> {
    let what = format!("blob {} from {}", desc.digest, src.describe());
    match dst {
        Endpoint::Layout(l) => {
            let stream = src.open_blob(desc, retries).await?;
            let (stream, slot) = verifying(stream, desc, what, progress);
            match l.write_blob(&desc.digest, stream).await {
                Ok(n) => Ok(BlobOutcome::Copied(n)),
                Err(e) => Err(take_slot(&slot).map(Error::new).unwrap_or(e)),
            }
        }
        Endpoint::Registry(d) => {
            let mount_from = match src {
                Endpoint::Registry(s)
                    if s.registry == d.registry && s.repository != d.repository =>
                {
                    Some(s.repository.clone())
                }
                _ => None,
            };
            let (session, stream) = match mount_from.as_deref() {
                Some(from) => match start_upload(d, Some((&desc.digest, from)), retries).await? {
                    UploadStart::Mounted => return Ok(BlobOutcome::Mounted),
                    UploadStart::Session(url) => (url, src.open_blob(desc, retries).await?),
                },
                // No mount possible: open the upload session and the source stream at once
                // (one round trip less per blob).
                None => {
                    let (start, stream) = futures_util::future::join(
                        start_upload(d, None, retries),
                        src.open_blob(desc, retries),
                    )
                    .await;
                    match start? {
                        UploadStart::Session(url) => (url, stream?),
                        UploadStart::Mounted => return Ok(BlobOutcome::Mounted),
                    }
                }
            };
            let (stream, slot) = verifying(stream, desc, what, progress);
            match mode {
                UploadMode::Monolithic => {
                    upload_monolithic(d, session, stream, &slot, desc).await?
                }
                UploadMode::Chunked { chunk_size } => {
                    upload_chunked(d, session, stream, &slot, desc, chunk_size).await?
                }
            }
            Ok(BlobOutcome::Copied(desc.size))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_next(link: &[&str], expected: Option<&str>) {
        let base = url::Url::parse("https://r.example/v2/a/referrers/sha256:ab").expect("url");
        let mut headers = HeaderMap::new();
        for l in link {
            headers.append(header::LINK, HeaderValue::from_str(l).expect("ascii"));
        }
        assert_eq!(
            link_next(&headers, &base).map(|u| u.to_string()).as_deref(),
            expected,
            "{link:?}"
        );
    }

    #[test]
    fn link_next_finds_the_next_page() {
        check_next(&[], None);
        check_next(
            &[r#"</v2/a/referrers/sha256:ab?n=1&last=x>; rel="next""#],
            Some("https://r.example/v2/a/referrers/sha256:ab?n=1&last=x"),
        );
        // Unquoted, among other relations, and in a second header.
        check_next(
            &[
                r#"<https://r.example/first>; rel="first""#,
                "<?page=2>; rel=next",
            ],
            Some("https://r.example/v2/a/referrers/sha256:ab?page=2"),
        );
        check_next(
            &[r#"<https://r.example/p1>; rel="prev", <https://r.example/p3>; rel="prev next""#],
            Some("https://r.example/p3"),
        );
        check_next(&[r#"<https://r.example/p1>; rel="prev""#], None);
        check_next(&["garbage"], None);
    }
}
