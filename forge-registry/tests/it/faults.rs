//! Fault injection: proxies from `proxy.rs` in front of two REAL registries inject connection
//! drops, 5xx, 429, truncated and corrupted bodies. Every test asserts the invariant the issue
//! demands — the copy either succeeds AND is verified (checked with skopeo on the real
//! destination, bypassing the proxy), or fails AND the destination tag was not created — and
//! then the specific outcome expected for that fault.

use std::time::Duration;

use forge_registry::{Client, CopyOptions, CopyReport, Error, ErrorKind, Reference, RetryPolicy};
use forge_testkit::Registry;

use crate::proxy::{
    Fault, Proxy, Pushed, Route, Rule, blob_exists, manifest_digest, push_image, random_bytes,
    skopeo_digest,
};

const RETRIES: u32 = 3;

struct Setup {
    _source: Registry,
    dest: Registry,
    /// In front of the source: faults on GETs.
    src_proxy: Proxy,
    /// In front of the destination: faults on uploads.
    dst_proxy: Proxy,
    image: Pushed,
}

/// `team/app:1` (two layers: 256 KiB and 64 KiB) at the source; the destination repository is
/// provisioned (holds an unrelated `seed` tag) because Forge never creates repositories.
async fn setup() -> Option<Setup> {
    let source = Registry::start()?;
    let dest = Registry::start()?;
    forge_testkit::skopeo()?;
    let image = push_image(
        &source.host(),
        "team/app",
        "1",
        &[random_bytes(61, 256 * 1024), random_bytes(62, 64 * 1024)],
    )
    .await;
    push_image(&dest.host(), "team/app", "seed", &[random_bytes(63, 100)]).await;
    let src_proxy = Proxy::start(&source.host()).await;
    let dst_proxy = Proxy::start(&dest.host()).await;
    Some(Setup {
        _source: source,
        dest,
        src_proxy,
        dst_proxy,
        image,
    })
}

impl Setup {
    /// The 256 KiB layer (blobs are config, layer 1, layer 2).
    fn big_layer(&self) -> &str {
        &self.image.blobs[1]
    }

    /// Its hex part, which matches the blob GET path and the upload PUT query (`digest=` may be
    /// percent-encoded there).
    fn big_layer_hex(&self) -> &str {
        self.big_layer().trim_start_matches("sha256:")
    }

    async fn copy(&self) -> Result<CopyReport, Error> {
        self.copy_with_read_timeout(Duration::from_secs(120)).await
    }

    async fn copy_with_read_timeout(&self, read_timeout: Duration) -> Result<CopyReport, Error> {
        let client = Client::builder()
            .retry_policy(RetryPolicy {
                max_retries: RETRIES,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                max_retry_after: Duration::from_secs(2),
            })
            .read_timeout(read_timeout)
            .build()
            .expect("client builds");
        let src: Reference = format!("{}/team/app:1", self.src_proxy.host())
            .parse()
            .expect("valid reference");
        let dst: Reference = format!("{}/team/app:1", self.dst_proxy.host())
            .parse()
            .expect("valid reference");
        client.copy(&src, &dst, &CopyOptions::default()).await
    }

    /// The invariant: success ⇒ verified and skopeo sees the source digest at the destination;
    /// failure ⇒ no destination tag.
    async fn check_invariant(&self, result: &Result<CopyReport, Error>) {
        match result {
            Ok(report) => {
                assert!(report.verified, "{report:?}");
                assert_eq!(report.digest.to_string(), self.image.digest);
                assert_eq!(
                    skopeo_digest(&self.dest.host(), "team/app", "1"),
                    self.image.digest
                );
            }
            Err(err) => assert_eq!(
                manifest_digest(&self.dest.host(), "team/app", "1").await,
                None,
                "the copy failed ({err}) but the destination tag exists"
            ),
        }
    }

    /// Copies with `rule` installed on `proxy` and checks the invariant.
    async fn run(&self, proxy: &Proxy, rule: Rule) -> Result<CopyReport, Error> {
        proxy.add_rule(rule);
        let result = self.copy().await;
        self.check_invariant(&result).await;
        result
    }
}

/// The error says it retried (at least the policy's count: blobs are retried independently) and
/// how long it tried: "… (failed after N retries in X.Ys)".
fn assert_gave_up(err: &Error) {
    let message = err.to_string();
    assert!(err.retries >= RETRIES, "{err:?}");
    assert!(err.elapsed > Duration::ZERO, "{err:?}");
    let expected = format!(
        "(failed after {} retries in {:.1}s)",
        err.retries,
        err.elapsed.as_secs_f64()
    );
    assert!(
        message.ends_with(&expected),
        "{message:?} should end with {expected:?}"
    );
}

fn status(status: u16, code: &'static str, retry_after: Option<&'static str>) -> Fault {
    Fault::Status {
        status,
        code,
        retry_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_blob_download_is_retried() {
    let Some(s) = setup().await else { return };
    let rule = Rule::new(Route::BlobGet, Fault::DropResponseAfter(100_000), Some(1))
        .matching(s.big_layer_hex());
    let report = s.run(&s.src_proxy, rule).await.unwrap();
    assert_eq!(s.src_proxy.faults_injected(), 1);
    assert!(report.retries >= 1, "{report:?}\n{:#?}", s.src_proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_mid_blob_upload_restarts_the_upload() {
    let Some(s) = setup().await else { return };
    // The layer's upload PUT names it in the query (`?digest=…`).
    let rule = Rule::new(Route::UploadPut, Fault::DropRequestAfter(100_000), Some(1))
        .matching(s.big_layer_hex());
    let report = s.run(&s.dst_proxy, rule).await.unwrap();
    assert_eq!(s.dst_proxy.faults_injected(), 1);
    assert!(report.retries >= 1, "{report:?}");
    // A retried upload starts from a fresh session: one more POST than blobs uploaded.
    assert!(
        s.dst_proxy.count(Route::UploadStart) > report.blobs_copied as usize,
        "{:?}",
        s.dst_proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_then_success_are_retried_and_counted() {
    let Some(s) = setup().await else { return };
    s.src_proxy.add_rule(Rule::new(
        Route::BlobGet,
        status(500, "UNKNOWN", None),
        Some(2),
    ));
    let rule = Rule::new(
        Route::UploadStart,
        status(503, "UNAVAILABLE", None),
        Some(2),
    );
    let report = s.run(&s.dst_proxy, rule).await.unwrap();
    assert_eq!(
        s.src_proxy.faults_injected() + s.dst_proxy.faults_injected(),
        4
    );
    assert!(report.retries >= 4, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_with_retry_after_is_honoured_and_reported() {
    let Some(s) = setup().await else { return };
    let rule = Rule::new(
        Route::ManifestPut,
        status(429, "TOOMANYREQUESTS", Some("1")),
        Some(1),
    );
    let report = s.run(&s.dst_proxy, rule).await.unwrap();
    assert_eq!(s.dst_proxy.faults_injected(), 1);
    assert!(report.retries >= 1, "{report:?}");
    // The policy's own backoff is 20–200 ms: only Retry-After explains a second's wait.
    assert!(report.duration_ms >= 1000, "{report:?}");
    let puts: Vec<u16> = s
        .dst_proxy
        .log()
        .iter()
        .filter(|l| l.route == Route::ManifestPut)
        .map(|l| l.status)
        .collect();
    assert_eq!(puts, vec![429, 201]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_on_a_blob_upload_waits_for_retry_after() {
    let Some(s) = setup().await else { return };
    // The streamed PUT cannot be replayed by the request layer: the whole transfer is retried,
    // and it too must wait as long as the registry asked.
    let rule = Rule::new(
        Route::UploadPut,
        status(429, "TOOMANYREQUESTS", Some("1")),
        Some(1),
    )
    .matching(s.big_layer_hex());
    let report = s.run(&s.dst_proxy, rule).await.unwrap();
    assert_eq!(s.dst_proxy.faults_injected(), 1);
    assert!(report.retries >= 1, "{report:?}");
    assert!(report.duration_ms >= 1000, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_registry_s_not_found_answer_on_tags_list_means_a_missing_repository() {
    let Some(s) = setup().await else { return };
    // A proxy or a wrong path answering 404: not the registry saying the repository is missing.
    let rule = Rule::new(Route::TagsList, status(404, "UNSUPPORTED", None), None);
    let err = s.run(&s.dst_proxy, rule).await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err.kind, ErrorKind::Registry { status: 404, .. }),
        "{message}"
    );
    assert!(
        message.contains("tags/list")
            && message.contains("not a registry's NAME_UNKNOWN")
            && !message.contains("platform-support"),
        "{message}"
    );

    // Harbor's answer for a missing repository: 404 with NOT_FOUND instead of NAME_UNKNOWN.
    let Some(s) = setup().await else { return };
    let rule = Rule::new(Route::TagsList, status(404, "NOT_FOUND", None), None);
    let err = s.run(&s.dst_proxy, rule).await.unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::RepositoryMissing { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_blob_body_is_retried() {
    let Some(s) = setup().await else { return };
    let rule =
        Rule::new(Route::BlobGet, Fault::Truncate(50_000), Some(1)).matching(s.big_layer_hex());
    let report = s.run(&s.src_proxy, rule).await.unwrap();
    assert_eq!(s.src_proxy.faults_injected(), 1);
    assert!(report.retries >= 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_forever_fail_without_a_destination_tag() {
    let Some(s) = setup().await else { return };
    let rule = Rule::new(Route::BlobGet, Fault::Truncate(50_000), None).matching(s.big_layer_hex());
    let err = s.run(&s.src_proxy, rule).await.unwrap_err();
    assert_gave_up(&err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_blob_byte_fails_with_a_digest_error_and_no_tag() {
    let Some(s) = setup().await else { return };
    // Every read of every blob is corrupted: no retry can succeed.
    let rule =
        Rule::new(Route::BlobGet, Fault::FlipByte(100_000), None).matching(s.big_layer_hex());
    let err = s.run(&s.src_proxy, rule).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::DigestMismatch { .. }),
        "expected a digest error, got {err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("sha256:"), "{message}");
    // The corrupted layer was never committed (the config blob, untouched, may have been).
    assert!(!blob_exists(&s.dest.host(), "team/app", s.big_layer()).await);
    let committed_puts: Vec<_> = s
        .dst_proxy
        .log()
        .into_iter()
        .filter(|l| l.route == Route::UploadPut && l.status == 201)
        .collect();
    assert!(committed_puts.len() <= 2, "{committed_puts:#?}");
    assert_eq!(s.dst_proxy.count(Route::ManifestPut), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_blob_byte_once_is_detected_and_retried() {
    let Some(s) = setup().await else { return };
    let rule =
        Rule::new(Route::BlobGet, Fault::FlipByte(100_000), Some(1)).matching(s.big_layer_hex());
    let report = s.run(&s.src_proxy, rule).await.unwrap();
    assert!(report.retries >= 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_cut_off_mid_body_is_fetched_again() {
    let Some(s) = setup().await else { return };
    // The headers (and Content-Length) arrive, the body stops after 100 bytes.
    let rule = Rule::new(Route::ManifestGet, Fault::Truncate(100), Some(1));
    let report = s.run(&s.src_proxy, rule).await.unwrap();
    assert_eq!(s.src_proxy.faults_injected(), 1);
    assert!(report.retries >= 1, "{report:?}");

    // Cut off every time: the copy gives up, saying how often it tried, and writes nothing.
    let Some(s) = setup().await else { return };
    let rule = Rule::new(Route::ManifestGet, Fault::Truncate(100), None);
    let err = s.run(&s.src_proxy, rule).await.unwrap_err();
    assert_gave_up(&err);
    assert_eq!(s.dst_proxy.count(Route::ManifestPut), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_source_manifest_is_refused() {
    let Some(s) = setup().await else { return };
    // The bytes no longer hash to the registry's Docker-Content-Digest.
    let rule = Rule::new(Route::ManifestGet, Fault::FlipByte(40), None);
    let err = s.run(&s.src_proxy, rule).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::DigestMismatch { .. } | ErrorKind::UnsupportedManifest { .. }
        ),
        "{err:?}"
    );
    assert_eq!(s.dst_proxy.count(Route::ManifestPut), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_forever_fail_with_retries_and_elapsed_time() {
    let Some(s) = setup().await else { return };
    let rule = Rule::new(Route::UploadStart, status(500, "UNKNOWN", None), None);
    let err = s.run(&s.dst_proxy, rule).await.unwrap_err();
    assert_gave_up(&err);
    assert!(err.to_string().contains("500"), "{err}");
    assert_eq!(s.dst_proxy.count(Route::ManifestPut), 0);
}

/// A registry that streams a manifest without `Content-Length` (chunked) and never stops: Forge
/// stops reading at its manifest cap instead of filling memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_chunked_manifest_is_refused_at_the_cap() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
                // 64 MiB at most, far past the cap; the client hangs up long before.
                for _ in 0..1024 {
                    if conn.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let client = Client::builder()
        .retry_policy(RetryPolicy::none())
        .build()
        .expect("client");
    let reference: Reference = format!("127.0.0.1:{port}/team/app:1").parse().expect("ref");
    let err = client
        .resolve(&reference)
        .await
        .expect_err("an endless manifest is refused");
    server.abort();
    match &err.kind {
        ErrorKind::UnsupportedManifest { reason, .. } => {
            assert!(reason.contains("larger than"), "{reason}");
        }
        k => panic!("expected the manifest cap, got {k:?}"),
    }
}

/// A blob's retries come out of one budget: the transfer's own retries and those of the
/// requests inside it (source GET, upload session) together stay within `max_retries`,
/// instead of multiplying (4 transfer attempts × 4 GETs each before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_never_gets_more_than_the_policys_retries_in_all() {
    let Some(s) = setup().await else { return };
    let rule = Rule::new(Route::BlobGet, status(503, "UNAVAILABLE", None), None)
        .matching(s.big_layer_hex());
    let err = s.run(&s.src_proxy, rule).await.unwrap_err();
    let gets = s
        .src_proxy
        .log()
        .into_iter()
        .filter(|l| l.route == Route::BlobGet && l.path.contains(s.big_layer_hex()))
        .count();
    assert_eq!(gets, 1 + RETRIES as usize, "{err}");
    assert_eq!(err.retries, RETRIES, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("after {RETRIES} retries")),
        "{err}"
    );
}

/// The 64 KiB layer's hex digest.
fn small_layer_hex(s: &Setup) -> &str {
    s.image.blobs[2].trim_start_matches("sha256:")
}

/// The source sends the 64 KiB layer `piece` bytes at a time, `every` apart.
fn trickle_small_layer(s: &Setup, piece: usize, every: Duration) {
    let trickle = Fault::Trickle { piece, every };
    s.src_proxy
        .add_rule(Rule::new(Route::BlobGet, trickle, None).matching(small_layer_hex(s)));
}

/// An error and its causes, as the CLI prints them on one line.
fn error_chain(err: &Error) -> String {
    std::iter::successors(Some(err as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// A source that sends a layer slowly but steadily: the streamed upload takes longer than the
/// read timeout (reqwest's own read timeout would cut it off: it runs from the request's start
/// until the answer), yet it never stalls, so it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_that_keeps_moving_is_never_cut_off() {
    let Some(s) = setup().await else { return };
    trickle_small_layer(&s, 4 * 1024, Duration::from_millis(150));
    let started = std::time::Instant::now();
    let result = s.copy_with_read_timeout(Duration::from_secs(1)).await;
    s.check_invariant(&result).await;
    let report = result.expect("a moving transfer is never cut off");
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the 64 KiB layer trickled in 16 pieces 150 ms apart: {:?}",
        started.elapsed()
    );
    assert_eq!(report.retries, 0, "{report:?}");
}

/// A registry that takes an upload and never answers: each attempt fails one read timeout
/// after its last byte, the blob is retried, and the copy gives up saying why, with no tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_registry_never_answers_fails_after_the_read_timeout() {
    let Some(s) = setup().await else { return };
    s.dst_proxy.add_rule(
        Rule::new(Route::UploadPut, Fault::HangAfterRequestBody, None)
            .matching(small_layer_hex(&s)),
    );
    let result = s.copy_with_read_timeout(Duration::from_secs(1)).await;
    s.check_invariant(&result).await;
    let err = result.expect_err("the registry never answers");
    assert_gave_up(&err);
    let chain = error_chain(&err);
    assert!(
        chain.contains("did not answer within 1.0s of the upload's last byte"),
        "{chain}"
    );
    // The upload URL is named without its long opaque `_state` query, and only once.
    assert!(
        !chain.contains("_state=") && chain.matches("/blobs/uploads/").count() == 1,
        "{chain}"
    );
    assert_eq!(
        s.dst_proxy.faults_injected(),
        RETRIES as usize + 1,
        "every attempt uploaded the blob once"
    );
}

/// A registry that accepts a PUT but answers another `Docker-Content-Digest` stored something
/// else: not a transfer to retry, and not "nothing was committed". The error says it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_answered_with_another_digest_is_a_verification_failure_not_retried() {
    let Some(s) = setup().await else { return };
    // A blob: nothing tagged, so the usual invariant holds.
    let rule =
        Rule::new(Route::UploadPut, Fault::WrongDigestHeader, None).matching(s.big_layer_hex());
    let err = s.run(&s.dst_proxy, rule).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::VerificationFailed { .. }),
        "{err:?}"
    );
    assert_eq!(s.dst_proxy.faults_injected(), 1, "not retried: {err}");
    let message = err.to_string();
    assert!(
        message.contains("stored something else") && !message.contains("nothing was committed"),
        "{message}"
    );

    // The tag: it was written, and the error says so instead of claiming nothing was.
    let Some(s) = setup().await else { return };
    s.dst_proxy.add_rule(
        Rule::new(Route::ManifestPut, Fault::WrongDigestHeader, None).matching("/manifests/1"),
    );
    let err = s.copy().await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::VerificationFailed { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("now at the destination") && message.contains("do not deploy"),
        "{message}"
    );
}

/// A source that stops sending for longer than the read timeout: the failure names the source
/// download, not the destination (whose upload was only waiting for bytes to send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_is_blamed_on_the_source_not_the_upload() {
    let Some(s) = setup().await else { return };
    trickle_small_layer(&s, 16 * 1024, Duration::from_millis(1500));
    let result = s.copy_with_read_timeout(Duration::from_secs(1)).await;
    s.check_invariant(&result).await;
    let err = result.expect_err("the source stalls on every attempt");
    let chain = error_chain(&err);
    assert!(
        chain.contains("reading blob") && !chain.contains("made no progress"),
        "{chain}"
    );
}
