//! ECR behaviour. AWS's registry cannot run here and the real CNCF Distribution registry behaves
//! differently (no Basic challenge, repositories created on push, mutable tags, PATCH → 202), so
//! the destination is the ECR proxy from `proxy.rs` in front of a REAL `docker-registry`: it
//! reproduces ECR's documented responses exactly (see [`crate::proxy::Ecr`]). Results are always
//! checked on the real registry directly, bypassing the proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use forge_registry::{
    BoxError, Client, CopyOptions, Credential, CredentialProvider, ErrorKind, Reference,
    RetryPolicy, UploadMode,
};
use forge_testkit::Registry;
use hyper::StatusCode;
use hyper::header;

use crate::proxy::{
    Ecr, Fault, MANIFEST_ACCEPT, Proxy, Pushed, Route, Rule, blob_exists, manifest_digest,
    push_image, push_image_as, push_index, random_bytes, skopeo_digest,
};

const ACCOUNT: &str = "123456789012";
const PASSWORD: &str = "ecr-token-eyJwYXlsb2FkIjoiZmFrZSJ9";

fn ecr(repositories: &[&str]) -> Ecr {
    Ecr {
        account: ACCOUNT.into(),
        region: "eu-west-1".into(),
        password: PASSWORD.into(),
        repositories: repositories.iter().map(|r| (*r).to_owned()).collect(),
    }
}

fn basic(password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"))
    )
}

/// What forge-auth plugs in for ECR: a provider answering `AWS:<token>` for the ECR host only,
/// counting how often it was asked.
struct EcrTokens {
    host: String,
    password: String,
    calls: AtomicUsize,
}

impl CredentialProvider for EcrTokens {
    fn credential<'a>(
        &'a self,
        registry: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Option<Credential>, BoxError>> + Send + 'a>>
    {
        Box::pin(async move {
            if registry != self.host {
                return Ok(None);
            }
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Some(Credential::basic("AWS", self.password.clone())))
        })
    }
}

/// A source registry (behind a transparent proxy, so the test sees what was sent to it) holding
/// `team/app:1`, and an ECR in front of a second real registry.
struct Setup {
    source: Registry,
    source_proxy: Proxy,
    dest: Registry,
    ecr: Proxy,
    image: Pushed,
}

async fn setup(provisioned: &[&str], layers: &[Vec<u8>]) -> Option<Setup> {
    let source = Registry::start()?;
    let dest = Registry::start()?;
    forge_testkit::skopeo()?;
    let image = push_image(&source.host(), "team/app", "1", layers).await;
    let source_proxy = Proxy::start(&source.host()).await;
    let ecr = Proxy::start_ecr(&dest.host(), ecr(provisioned)).await;
    Some(Setup {
        source,
        source_proxy,
        dest,
        ecr,
        image,
    })
}

impl Setup {
    fn client(&self, password: &str) -> (Client, Arc<EcrTokens>) {
        let tokens = Arc::new(EcrTokens {
            host: self.ecr.host(),
            password: password.into(),
            calls: AtomicUsize::new(0),
        });
        let client = Client::builder()
            .credential_provider_arc(tokens.clone())
            .retry_policy(RetryPolicy {
                max_retries: 2,
                initial_backoff: std::time::Duration::from_millis(20),
                max_backoff: std::time::Duration::from_millis(100),
                max_retry_after: std::time::Duration::from_secs(2),
            })
            .build()
            .expect("client builds");
        (client, tokens)
    }

    fn src(&self) -> Reference {
        format!("{}/team/app:1", self.source_proxy.host())
            .parse()
            .expect("valid reference")
    }

    fn dst(&self, repo: &str, tag: &str) -> Reference {
        format!("{}/{repo}:{tag}", self.ecr.host())
            .parse()
            .expect("valid reference")
    }

    /// Requests through the ECR proxy that write something.
    fn writes(&self) -> Vec<String> {
        self.ecr
            .log()
            .into_iter()
            .filter(|l| {
                matches!(
                    l.route,
                    Route::UploadStart | Route::UploadPatch | Route::UploadPut | Route::ManifestPut
                )
            })
            .map(|l| format!("{} {} -> {}", l.method, l.path, l.status))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_answers_exactly_like_ecr() {
    let Some(dest) = Registry::start() else {
        return;
    };
    let proxy = Proxy::start_ecr(&dest.host(), ecr(&["team/app"])).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{}", proxy.host());

    // The /v2/ challenge: Basic with ECR's realm and service.
    let resp = http.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()[header::WWW_AUTHENTICATE],
        "Basic realm=\"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/\",service=\"ecr.amazonaws.com\""
    );
    assert_eq!(resp.text().await.unwrap(), "Not Authorized\n");
    let wrong = http
        .get(format!("{base}/v2/"))
        .header(header::AUTHORIZATION, basic("expired"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let auth = basic(PASSWORD);
    let ok = http
        .get(format!("{base}/v2/"))
        .header(header::AUTHORIZATION, &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    // A repository that was not provisioned.
    let missing = http
        .get(format!("{base}/v2/team/nope/tags/list"))
        .header(header::AUTHORIZATION, &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.text().await.unwrap(),
        r#"{"errors":[{"code":"NAME_UNKNOWN","message":"The repository with name 'team/nope' does not exist in the registry with id '123456789012'"}]}"#
    );

    // Push through the proxy; the second PUT of the SAME manifest to the same tag is refused.
    let pushed = push_image_as(
        &proxy.host(),
        "team/app",
        "1",
        &[random_bytes(7, 5000)],
        Some(&auth),
    )
    .await;
    let put_log = proxy.log();
    let put = put_log
        .iter()
        .rev()
        .find(|l| l.route == Route::ManifestPut)
        .unwrap();
    assert_eq!(put.status, 201);
    let again = http
        .put(format!("{base}/v2/team/app/manifests/1"))
        .header(header::AUTHORIZATION, &auth)
        .header(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .body(pushed.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        again.text().await.unwrap(),
        r#"{"errors":[{"code":"TAG_INVALID","message":"The image tag '1' already exists in the 'team/app' repository and cannot be overwritten because the repository is immutable."}]}"#
    );
    // By digest it is accepted (index children are pushed that way), without a Location.
    let by_digest = http
        .put(format!("{base}/v2/team/app/manifests/{}", pushed.digest))
        .header(header::AUTHORIZATION, &auth)
        .header(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .body(pushed.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(by_digest.status(), StatusCode::CREATED);
    assert!(by_digest.headers().get(header::LOCATION).is_none());

    // Manifest GET is chunked, without Content-Length.
    let get = http
        .get(format!("{base}/v2/team/app/manifests/1"))
        .header(header::AUTHORIZATION, &auth)
        .header(header::ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert!(get.headers().get(header::CONTENT_LENGTH).is_none());
    assert_eq!(get.headers()[header::TRANSFER_ENCODING], "chunked");
    assert_eq!(
        get.bytes().await.unwrap().as_ref(),
        pushed.manifest.as_slice()
    );

    // PATCH answers 201 (not 202).
    let start = http
        .post(format!("{base}/v2/team/app/blobs/uploads/"))
        .header(header::AUTHORIZATION, &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = start.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        location.contains(&proxy.host()) || location.starts_with('/'),
        "Location must lead back through the proxy: {location}"
    );
    let url = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location
    };
    let patch = http
        .patch(url)
        .header(header::AUTHORIZATION, &auth)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(vec![1u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forge_copies_to_ecr_with_basic_credentials_and_recopy_pushes_nothing() {
    let layers = vec![random_bytes(11, 300_000), random_bytes(12, 40_000)];
    let Some(s) = setup(&["team/app"], &layers).await else {
        return;
    };
    let (client, tokens) = s.client(PASSWORD);
    let report = client
        .copy(&s.src(), &s.dst("team/app", "1"), &CopyOptions::default())
        .await
        .unwrap();
    assert!(report.verified);
    assert_eq!(report.digest.to_string(), s.image.digest);
    assert!(!report.already_present);
    assert_eq!(report.blobs_copied, 3, "config + 2 layers: {report:?}");
    // The oracle, straight from the real registry behind the fake.
    assert_eq!(
        skopeo_digest(&s.dest.host(), "team/app", "1"),
        s.image.digest
    );
    assert!(tokens.calls.load(Ordering::SeqCst) >= 1);
    // Every request that reached ECR's backend was authenticated; the ECR credential never went
    // to the source registry.
    assert!(
        s.ecr
            .log()
            .iter()
            .all(|l| l.status == 401 || l.authorization)
    );
    assert!(
        s.source_proxy.log().iter().all(|l| !l.authorization),
        "credentials leaked to the source: {:?}",
        s.source_proxy.log()
    );
    // ECR's manifest GET had no Content-Length (verification read it chunked).
    assert!(s.ecr.count(Route::ManifestGet) + s.ecr.count(Route::ManifestHead) >= 1);

    // Re-promotion: ECR would answer TAG_INVALID to any manifest PUT, so Forge must not send one.
    let writes_before = s.writes();
    let seen_before = s.ecr.log().len();
    let again = client
        .copy(&s.src(), &s.dst("team/app", "1"), &CopyOptions::default())
        .await
        .unwrap();
    assert!(again.already_present, "{again:?}");
    // Exactly the reads the verification needs: the manifest by tag (hashed) and one HEAD per
    // blob. The tag answering proves the repository exists, so no tags/list either.
    let answered: Vec<Route> = s.ecr.log()[seen_before..]
        .iter()
        .filter(|l| l.status != 401)
        .map(|l| l.route)
        .collect();
    let mut routes = answered.clone();
    routes.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        routes,
        [
            Route::BlobHead,
            Route::BlobHead,
            Route::BlobHead,
            Route::ManifestGet
        ],
        "{answered:?}"
    );
    assert!(again.verified);
    assert_eq!(again.blobs_copied, 0);
    assert_eq!(again.manifests_pushed, 0);
    assert_eq!(
        s.writes(),
        writes_before,
        "a re-copy must not write anything"
    );
    assert_eq!(
        skopeo_digest(&s.dest.host(), "team/app", "1"),
        s.image.digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_ecr_repository_is_refused_before_anything_is_uploaded() {
    let Some(s) = setup(&["team/app"], &[random_bytes(21, 10_000)]).await else {
        return;
    };
    let (client, _) = s.client(PASSWORD);
    let err = client
        .copy(&s.src(), &s.dst("team/other", "1"), &CopyOptions::default())
        .await
        .unwrap_err();
    match err.kind() {
        ErrorKind::RepositoryMissing {
            repository,
            registry,
            hint,
        } => {
            assert_eq!(repository, "team/other");
            assert_eq!(registry, &s.ecr.host());
            assert!(hint.contains("#platform-support"), "{hint}");
        }
        other => panic!("expected RepositoryMissing, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("team/other"), "{message}");
    assert!(message.contains(&s.ecr.host()), "{message}");
    assert!(message.contains("Nothing was uploaded"), "{message}");
    assert!(err.is_invalid_input());
    assert_eq!(s.writes(), Vec::<String>::new());
    // The real registry behind the fake saw nothing at all.
    assert_eq!(s.dest.repositories(), Vec::<String>::new());
    drop(s.source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_ecr_tag_with_another_digest_is_a_conflict_and_nothing_changes() {
    let Some(s) = setup(&["team/app"], &[random_bytes(31, 20_000)]).await else {
        return;
    };
    // Prod already runs another build under tag 1.
    let other = push_image_as(
        &s.ecr.host(),
        "team/app",
        "1",
        &[random_bytes(32, 20_000)],
        Some(&basic(PASSWORD)),
    )
    .await;
    let writes_before = s.writes();
    let (client, _) = s.client(PASSWORD);
    let err = client
        .copy(&s.src(), &s.dst("team/app", "1"), &CopyOptions::default())
        .await
        .unwrap_err();
    match err.kind() {
        ErrorKind::TagConflict {
            existing, source, ..
        } => {
            assert_eq!(existing.to_string(), other.digest);
            assert_eq!(source.to_string(), s.image.digest);
        }
        other => panic!("expected TagConflict, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&other.digest), "{message}");
    assert!(message.contains(&s.image.digest), "{message}");
    assert_eq!(s.writes(), writes_before, "nothing may be pushed");
    assert_eq!(
        manifest_digest(&s.dest.host(), "team/app", "1").await,
        Some(other.digest)
    );
    for blob in &s.image.blobs {
        assert!(!blob_exists(&s.dest.host(), "team/app", blob).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_race_for_an_immutable_tag_fails_and_keeps_the_winner() {
    let Some(s) = setup(&["team/app"], &[random_bytes(35, 20_000)]).await else {
        return;
    };
    // Another pipeline's image is in the repository (under another tag) and claims tag 1 right
    // between Forge's tag check and its manifest PUT, which ECR then answers with TAG_INVALID.
    let winner = push_image_as(
        &s.ecr.host(),
        "team/app",
        "other",
        &[random_bytes(36, 20_000)],
        Some(&basic(PASSWORD)),
    )
    .await;
    s.ecr.add_rule(
        Rule::new(
            Route::ManifestPut,
            Fault::ConcurrentPut(winner.manifest.clone()),
            Some(1),
        )
        .matching("/manifests/1"),
    );
    let (client, _) = s.client(PASSWORD);
    let err = client
        .copy(&s.src(), &s.dst("team/app", "1"), &CopyOptions::default())
        .await
        .unwrap_err();
    // ECR refuses the PUT (TAG_INVALID); Forge reads the tag again and names the winner.
    let message = err.to_string();
    assert!(
        matches!(err.kind(), ErrorKind::TagTakenDuringCopy { .. }),
        "{err:?}"
    );
    assert!(message.contains(&winner.digest), "{message}");
    assert!(err.is_invalid_input(), "a refusal (exit 2), not a failure");
    assert_eq!(
        manifest_digest(&s.dest.host(), "team/app", "1").await,
        Some(winner.digest)
    );
}

/// ECR commits the tag PUT but its answer is lost (a 503 on the way back): the retried PUT is
/// refused as TAG_INVALID (immutable), yet the tag holds the image. Forge reads the tag,
/// finds the digest, verifies and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_put_whose_answer_was_lost_is_found_at_the_tag_and_verified() {
    let Some(s) = setup(&["team/app"], &[random_bytes(37, 20_000)]).await else {
        return;
    };
    s.ecr.add_rule(
        Rule::new(
            Route::ManifestPut,
            Fault::StatusAfterForward {
                status: 503,
                code: "UNAVAILABLE",
            },
            Some(1),
        )
        .matching("/manifests/1"),
    );
    let (client, _) = s.client(PASSWORD);
    let report = client
        .copy(&s.src(), &s.dst("team/app", "1"), &CopyOptions::default())
        .await
        .expect("the tag holds the image");
    assert!(report.verified && report.retries >= 1, "{report:?}");
    assert_eq!(
        manifest_digest(&s.dest.host(), "team/app", "1").await,
        Some(report.digest.to_string())
    );
    let tag_puts: Vec<u16> = s
        .ecr
        .log()
        .into_iter()
        .filter(|l| l.route == Route::ManifestPut && l.path.ends_with("/manifests/1"))
        .map(|l| l.status)
        .collect();
    assert_eq!(
        tag_puts,
        [503, 400],
        "committed, lost, retried, refused as immutable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_goes_to_ecr_with_children_pushed_by_digest() {
    let Some(s) = setup(&["team/app"], &[random_bytes(71, 1000)]).await else {
        return;
    };
    let (index, children) = push_index(
        &s.source.host(),
        "team/multi",
        "2",
        &[
            ("amd64", vec![random_bytes(72, 30_000)]),
            ("arm64", vec![random_bytes(73, 30_000)]),
        ],
    )
    .await;
    let (client, _) = s.client(PASSWORD);
    let src: Reference = format!("{}/team/multi:2", s.source_proxy.host())
        .parse()
        .unwrap();
    let report = client
        .copy(&src, &s.dst("team/app", "2"), &CopyOptions::default())
        .await
        .unwrap();
    assert!(report.verified);
    assert_eq!(report.digest.to_string(), index.digest);
    assert_eq!(skopeo_digest(&s.dest.host(), "team/app", "2"), index.digest);
    for child in &children {
        assert_eq!(
            manifest_digest(&s.dest.host(), "team/app", &child.digest).await,
            Some(child.digest.clone())
        );
    }
    // Children by digest (an immutable ECR repository refuses re-tagging), then the index by tag,
    // exactly once: nothing else was tagged.
    let puts: Vec<String> = s
        .ecr
        .log()
        .into_iter()
        .filter(|l| l.route == Route::ManifestPut)
        .map(|l| l.path.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(puts.len(), 3, "{puts:?}");
    assert_eq!(puts.last().map(String::as_str), Some("2"), "{puts:?}");
    assert!(
        puts[..2].iter().all(|p| p.starts_with("sha256:")),
        "{puts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_mode_works_with_ecr_patch_201() {
    let layers = vec![random_bytes(41, 150_000)];
    let Some(s) = setup(&["team/app"], &layers).await else {
        return;
    };
    let (client, _) = s.client(PASSWORD);
    let options = CopyOptions {
        upload_mode: UploadMode::Chunked {
            chunk_size: 32 * 1024,
        },
        ..CopyOptions::default()
    };
    let report = client
        .copy(&s.src(), &s.dst("team/app", "7"), &options)
        .await
        .unwrap();
    assert!(report.verified);
    assert_eq!(
        skopeo_digest(&s.dest.host(), "team/app", "7"),
        s.image.digest
    );
    let patches: Vec<u16> = s
        .ecr
        .log()
        .iter()
        .filter(|l| l.route == Route::UploadPatch)
        .map(|l| l.status)
        .collect();
    // 150,000 bytes in 32 KiB chunks = 5 PATCHes for the layer (+ 1 for the small config).
    assert!(patches.len() >= 5, "PATCHes: {patches:?}");
    assert!(patches.iter().all(|s| *s == 201), "PATCHes: {patches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ecr_password_is_unauthorized_and_nothing_is_uploaded() {
    let Some(s) = setup(&["team/app"], &[random_bytes(51, 1000)]).await else {
        return;
    };
    let (client, _) = s.client("expired-token");
    let err = client
        .copy(&s.src(), &s.dst("team/app", "1"), &CopyOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unauthorized { registry, .. } if registry == &s.ecr.host()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        !message.contains("expired-token"),
        "secret in message: {message}"
    );
    assert!(
        !format!("{err:?}").contains("expired-token"),
        "secret in Debug"
    );
    assert_eq!(s.dest.repositories(), Vec::<String>::new());
}
