//! Copies between two real `docker-registry` (CNCF Distribution) instances, with skopeo and raw
//! HTTP as the oracles.

use forge_registry::{
    Client, CopyOptions, CopyReport, ErrorKind, Reference, RetryPolicy, UploadMode,
};

use crate::fixtures::{self, Image};

fn client() -> Client {
    Client::builder()
        .retry_policy(RetryPolicy {
            max_retries: 2,
            initial_backoff: std::time::Duration::from_millis(50),
            ..RetryPolicy::default()
        })
        .build()
        .expect("client builds")
}

fn r(s: &str) -> Reference {
    s.parse().expect("test references are valid")
}

/// `src` → `dst` with the default options (referrers on, default jobs).
async fn copy(src: &str, dst: &str) -> Result<CopyReport, forge_registry::Error> {
    client()
        .copy(&r(src), &r(dst), &CopyOptions::default())
        .await
}

struct Pair {
    a: forge_testkit::Registry,
    b: forge_testkit::Registry,
}

fn pair() -> Option<Pair> {
    forge_testkit::skopeo()?;
    Some(Pair {
        a: forge_testkit::Registry::start()?,
        b: forge_testkit::Registry::start()?,
    })
}

async fn assert_image_at(host: &str, repo: &str, tag: &str, image: &Image) {
    assert_eq!(
        fixtures::manifest_digest(host, repo, tag).await.as_deref(),
        Some(image.digest.as_str()),
        "{host}/{repo}:{tag}"
    );
    assert_eq!(
        fixtures::skopeo_digest(&format!("docker://{host}/{repo}:{tag}")),
        image.digest,
        "skopeo disagrees about {host}/{repo}:{tag}"
    );
    for child in &image.children {
        assert_eq!(
            fixtures::manifest_digest(host, repo, &child.digest)
                .await
                .as_deref(),
            Some(child.digest.as_str())
        );
    }
    for blob in image.blob_digests() {
        assert!(
            fixtures::blob_exists(host, repo, &blob).await,
            "blob {blob} missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_arch_copy_is_verified_and_a_recopy_is_a_no_op() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(1, 3, 300_000);
    fixtures::push(&a, "ci/app", "41", &image).await;
    fixtures::provision(&b, "prod/app").await;

    let src = r(&format!("{a}/ci/app:41"));
    let dst = r(&format!("{b}/prod/app:41"));
    let report = client()
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .unwrap();
    assert!(report.verified);
    assert!(!report.already_present);
    assert_eq!(report.digest.to_string(), image.digest);
    assert_eq!(report.media_type, fixtures::OCI_MANIFEST);
    assert_eq!(report.blobs_copied, 4);
    assert_eq!(report.blobs_skipped, 0);
    assert_eq!(report.blobs_mounted, 0);
    assert_eq!(
        report.bytes_copied,
        image.blobs.iter().map(|b| b.len() as u64).sum::<u64>()
    );
    assert_eq!(report.manifests_pushed, 1);
    assert_eq!(report.source, src.to_string());
    assert_eq!(report.destination, dst.to_string());
    assert_image_at(&b, "prod/app", "41", &image).await;

    // The same promotion again: nothing uploaded, no manifest PUT, still verified.
    let again = client()
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .unwrap();
    assert!(again.already_present);
    assert!(again.verified);
    assert_eq!(
        (
            again.blobs_copied,
            again.bytes_copied,
            again.manifests_pushed
        ),
        (0, 0, 0)
    );

    // The same digest under a new tag: every blob is already there.
    let dst2 = r(&format!("{b}/prod/app:42"));
    let third = client()
        .copy(&src, &dst2, &CopyOptions::default())
        .await
        .unwrap();
    assert_eq!((third.blobs_copied, third.blobs_skipped), (0, 4));
    assert!(third.verified);

    // resolve/verify agree with the oracle.
    let c = client();
    assert_eq!(
        c.resolve(&dst).await.unwrap().digest.to_string(),
        image.digest
    );
    let v = c.verify(&dst, &report.digest).await.unwrap();
    assert_eq!((v.manifests_checked, v.blobs_checked), (1, 4));
    let other: forge_registry::Digest = fixtures::sha256(b"other").parse().unwrap();
    let err = c.verify(&dst, &other).await.unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::VerificationFailed { .. }),
        "{err}"
    );
    assert!(!err.is_invalid_input());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_is_copied_whole_with_children_by_digest() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::multi_arch(2, 100_000);
    fixtures::push(&a, "ci/multi", "7", &image).await;
    fixtures::provision(&b, "prod/multi").await;

    let src = r(&format!("{a}/ci/multi:7"));
    let dst = r(&format!("{b}/prod/multi:7"));
    let report = client()
        .copy(
            &src,
            &dst,
            &CopyOptions {
                jobs: Some(2),
                ..CopyOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(report.verified);
    assert_eq!(report.digest.to_string(), image.digest);
    assert_eq!(report.media_type, fixtures::DOCKER_LIST);
    assert_eq!(report.blobs_copied, 4);
    assert_eq!(report.manifests_pushed, 3);
    assert_image_at(&b, "prod/multi", "7", &image).await;

    // Source pinned by digest works too, and verify() walks the children.
    let by_digest = r(&format!("{a}/ci/multi@{}", image.digest));
    let v = client().verify(&by_digest, &report.digest).await.unwrap();
    assert_eq!((v.manifests_checked, v.blobs_checked), (3, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_mode_copies_the_same_bytes() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(3, 2, 250_000);
    fixtures::push(&a, "ci/app", "1", &image).await;
    fixtures::provision(&b, "prod/app").await;
    let options = CopyOptions {
        upload_mode: UploadMode::Chunked {
            chunk_size: 64 * 1024,
        },
        ..CopyOptions::default()
    };
    let report = client()
        .copy(
            &r(&format!("{a}/ci/app:1")),
            &r(&format!("{b}/prod/app:1")),
            &options,
        )
        .await
        .unwrap();
    assert!(report.verified);
    assert_eq!(report.blobs_copied, 3);
    assert_image_at(&b, "prod/app", "1", &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_conflict_names_both_digests_and_changes_nothing() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(4, 1, 50_000);
    let other = fixtures::oci_image(5, 1, 50_000);
    fixtures::push(&a, "ci/app", "9", &image).await;
    fixtures::push(&b, "prod/app", "9", &other).await;

    let err = copy(&format!("{a}/ci/app:9"), &format!("{b}/prod/app:9"))
        .await
        .unwrap_err();
    assert!(err.is_invalid_input());
    match &err.kind {
        ErrorKind::TagConflict {
            existing, source, ..
        } => {
            assert_eq!(existing.to_string(), other.digest);
            assert_eq!(source.to_string(), image.digest);
        }
        k => panic!("expected a tag conflict, got {k:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&image.digest) && text.contains(&other.digest),
        "{text}"
    );
    assert_eq!(
        fixtures::manifest_digest(&b, "prod/app", "9")
            .await
            .as_deref(),
        Some(other.digest.as_str())
    );
    for blob in image.blob_digests() {
        assert!(
            !fixtures::blob_exists(&b, "prod/app", &blob).await,
            "{blob} was uploaded"
        );
    }
}

/// Pushes `image` under `host/prod/app:<tag>` the first time a blob of the copy finishes: another
/// pipeline taking the destination tag while this copy is busy with its blobs.
struct RacingPipeline {
    host: String,
    tag: &'static str,
    image: Image,
    pushed: std::sync::atomic::AtomicBool,
}

impl forge_registry::Progress for RacingPipeline {
    fn blob_finished(&self, _: &forge_registry::Digest, _: u64) {
        if self.pushed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let (host, tag, image) = (self.host.clone(), self.tag, self.image.clone());
        // Progress callbacks are synchronous: push from a thread with its own runtime.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(fixtures::push(&host, "prod/app", tag, &image));
        })
        .join()
        .expect("the racing push");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_pushed_by_someone_else_during_the_copy_is_left_alone() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(40, 2, 50_000);
    let other = fixtures::oci_image(41, 1, 50_000);
    fixtures::push(&a, "ci/app", "12", &image).await;
    fixtures::provision(&b, "prod/app").await;
    let racer = std::sync::Arc::new(RacingPipeline {
        host: b.clone(),
        tag: "12",
        image: other.clone(),
        pushed: std::sync::atomic::AtomicBool::new(false),
    });
    let options = CopyOptions {
        progress: Some(racer.clone()),
        ..CopyOptions::default()
    };

    let err = client()
        .copy(
            &r(&format!("{a}/ci/app:12")),
            &r(&format!("{b}/prod/app:12")),
            &options,
        )
        .await
        .expect_err("the tag was taken during the copy");
    assert!(
        racer.pushed.load(std::sync::atomic::Ordering::SeqCst),
        "the race happened"
    );
    match &err.kind {
        ErrorKind::TagTakenDuringCopy {
            existing, source, ..
        } => {
            assert_eq!(existing.to_string(), other.digest);
            assert_eq!(source.to_string(), image.digest);
        }
        k => panic!("expected the tag taken during the copy, got {k:?}"),
    }
    assert!(err.is_invalid_input(), "not retried, not a transport error");
    let text = err.to_string();
    assert!(
        text.contains("left as it is") && text.contains("new tag"),
        "{text}"
    );
    assert_eq!(
        fixtures::manifest_digest(&b, "prod/app", "12")
            .await
            .as_deref(),
        Some(other.digest.as_str()),
        "the other pipeline's tag was overwritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_pattern_and_missing_repository_are_refused_before_any_upload() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(6, 1, 10_000);
    fixtures::push(&a, "ci/app", "3", &image).await;
    fixtures::provision(&b, "prod/app").await;
    let before = p.b.repositories();
    let src = r(&format!("{a}/ci/app:3"));

    let err = client()
        .copy(
            &src,
            &r(&format!("{b}/prod/app:latest")),
            &CopyOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::MutableTagRefused { .. }),
        "{err}"
    );
    assert!(err.is_invalid_input());

    let err = client()
        .copy(&src, &r(&format!("{b}/prod/app")), &CopyOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::InvalidInput { .. }), "{err}");

    let options = CopyOptions {
        tag_pattern: Some(regex::Regex::new("[0-9]+").unwrap()),
        ..CopyOptions::default()
    };
    for bad in ["3a", "v3", "a3"] {
        let err = client()
            .copy(&src, &r(&format!("{b}/prod/app:{bad}")), &options)
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::TagPatternMismatch { .. }),
            "{bad}: {err}"
        );
    }
    // By digest only there is no tag to match: with a pattern set, that is refused too.
    let by_digest = format!("{b}/prod/app@{}", fixtures::sha256(b"any"));
    let err = client()
        .copy(&src, &r(&by_digest), &options)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::InvalidInput { .. })
            && err.to_string().contains("requires one"),
        "{err}"
    );

    let err = client()
        .copy(
            &src,
            &r(&format!("{b}/team/missing:3")),
            &CopyOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(err.is_invalid_input());
    assert_eq!(
        err.to_string(),
        format!(
            "repository 'team/missing' does not exist in registry '{b}': repositories are provisioned by the Platform team via Blueprint — ask in #platform-support. Nothing was uploaded."
        )
    );
    let custom = CopyOptions {
        support_hint: "open a ticket".to_owned(),
        ..CopyOptions::default()
    };
    let err = client()
        .copy(&src, &r(&format!("{b}/team/missing:3")), &custom)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(": open a ticket. Nothing was uploaded."),
        "{err}"
    );

    assert_eq!(
        p.b.repositories(),
        before,
        "a refused copy created something"
    );
    assert_eq!(fixtures::manifest_digest(&b, "prod/app", "3").await, None);
    // Nothing pushed into the repository that exists either: no refused tag, no blob.
    for tag in ["latest", "3a", "v3", "a3"] {
        assert_eq!(
            fixtures::manifest_digest(&b, "prod/app", tag).await,
            None,
            "{tag}"
        );
    }
    for digest in image.blob_digests() {
        assert!(
            !fixtures::blob_exists(&b, "prod/app", &digest).await,
            "a refused copy uploaded {digest}"
        );
    }
    assert!(
        !client()
            .repository_exists(&r(&format!("{b}/team/missing")))
            .await
            .unwrap()
    );
    assert!(
        client()
            .repository_exists(&r(&format!("{b}/prod/app")))
            .await
            .unwrap()
    );

    // The pattern accepts a conforming tag.
    let ok = client()
        .copy(&src, &r(&format!("{b}/prod/app:3")), &options)
        .await
        .unwrap();
    assert!(ok.verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_source_is_reported_by_name() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    fixtures::provision(&a, "ci/app").await;
    fixtures::provision(&b, "prod/app").await;
    let err = copy(&format!("{a}/ci/app:404"), &format!("{b}/prod/app:1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::ManifestNotFound { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("{a}/ci/app:404")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_registry_copies_mount_blobs_across_repositories() {
    let Some(registry) = forge_testkit::Registry::start() else {
        return;
    };
    let h = registry.host();
    let image = fixtures::oci_image(7, 2, 100_000);
    fixtures::push(&h, "ci/app", "5", &image).await;
    fixtures::provision(&h, "prod/app").await;
    let report = copy(&format!("{h}/ci/app:5"), &format!("{h}/prod/app:5"))
        .await
        .unwrap();
    assert!(report.verified);
    assert_eq!(
        (
            report.blobs_mounted,
            report.blobs_copied,
            report.bytes_copied
        ),
        (3, 0, 0)
    );
    for blob in image.blob_digests() {
        assert!(fixtures::blob_exists(&h, "prod/app", &blob).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_copied_through_the_fallback_tag_unless_switched_off() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(8, 1, 20_000);
    let sbom = fixtures::referrer(1, &image);
    fixtures::push(&a, "ci/app", "8", &image).await;
    fixtures::push(&a, "ci/app", &sbom.digest, &sbom).await;
    let fallback_tag = fixtures::fallback_tag(&image.digest);
    fixtures::put_manifest(
        &a,
        "ci/app",
        &fallback_tag,
        fixtures::OCI_INDEX,
        &fixtures::fallback_index(&[&sbom]),
    )
    .await;
    fixtures::provision(&b, "prod/app").await;
    fixtures::provision(&b, "prod/bare").await;

    let src = r(&format!("{a}/ci/app:8"));
    let report = client()
        .copy(
            &src,
            &r(&format!("{b}/prod/app:8")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert!(report.verified);
    assert_eq!(report.referrers_copied, 1);
    assert_eq!(
        report.blobs_copied, 4,
        "image config + layer, empty config + sbom"
    );
    assert_eq!(
        fixtures::manifest_digest(&b, "prod/app", &sbom.digest)
            .await
            .as_deref(),
        Some(sbom.digest.as_str())
    );
    let index = fixtures::manifest_bytes(&b, "prod/app", &fallback_tag)
        .await
        .expect("fallback index");
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    assert_eq!(index["manifests"][0]["digest"], sbom.digest.as_str());
    assert_eq!(
        index["manifests"][0]["artifactType"],
        "application/spdx+json"
    );

    let off = CopyOptions {
        referrers: false,
        ..CopyOptions::default()
    };
    let report = client()
        .copy(&src, &r(&format!("{b}/prod/bare:8")), &off)
        .await
        .unwrap();
    assert_eq!(report.referrers_copied, 0);
    assert_eq!(
        fixtures::manifest_digest(&b, "prod/bare", &fallback_tag).await,
        None
    );
    assert_eq!(
        fixtures::manifest_digest(&b, "prod/bare", &sbom.digest).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_attached_after_a_copy_come_with_the_re_promotion() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(9, 1, 20_000);
    fixtures::push(&a, "ci/app", "9", &image).await;
    fixtures::provision(&b, "prod/app").await;
    let (src, dst) = (r(&format!("{a}/ci/app:9")), r(&format!("{b}/prod/app:9")));
    let copy = || async { client().copy(&src, &dst, &CopyOptions::default()).await };
    let first = copy().await.unwrap();
    assert_eq!((first.already_present, first.referrers_copied), (false, 0));

    // Signed after the promotion: the re-promotion copies the SBOM and nothing of the image.
    let sbom = fixtures::referrer(1, &image);
    fixtures::attach(&a, "ci/app", &image, &sbom).await;
    let second = copy().await.unwrap();
    assert!(second.already_present && second.verified);
    assert_eq!(
        (second.referrers_copied, second.blobs_copied),
        (1, 2),
        "the SBOM and its empty config; the image's blobs were there: {second:?}"
    );
    assert!(fallback_index_lists(&b, "prod/app", &image, &sbom).await);

    // A signature of the SBOM, one level down, is found the same way.
    let signature = fixtures::referrer(2, &sbom);
    fixtures::attach(&a, "ci/app", &sbom, &signature).await;
    let third = copy().await.unwrap();
    assert_eq!((third.already_present, third.referrers_copied), (true, 1));
    assert!(fallback_index_lists(&b, "prod/app", &sbom, &signature).await);

    // Nothing left to bring: no write at all, and not even the copy's walk (which would
    // count the image's blobs as skipped).
    let fourth = copy().await.unwrap();
    assert!(fourth.already_present && fourth.verified);
    assert_eq!(
        (
            fourth.referrers_copied,
            fourth.blobs_copied,
            fourth.blobs_skipped,
            fourth.manifests_pushed
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(fourth.referrers_unchecked, None);

    // Switched off, a re-promotion does not even look.
    let sig2 = fixtures::referrer(3, &image);
    fixtures::attach(&a, "ci/app", &image, &sig2).await;
    let off = CopyOptions {
        referrers: false,
        ..CopyOptions::default()
    };
    let fifth = client().copy(&src, &dst, &off).await.unwrap();
    assert_eq!((fifth.already_present, fifth.manifests_pushed), (true, 0));
    assert!(!fallback_index_lists(&b, "prod/app", &image, &sig2).await);
}

/// Whether the fallback index `sha256-<hex of subject>` at `host/repo` lists `referrer`.
async fn fallback_index_lists(host: &str, repo: &str, subject: &Image, referrer: &Image) -> bool {
    let Some(index) =
        fixtures::manifest_bytes(host, repo, &fixtures::fallback_tag(&subject.digest)).await
    else {
        return false;
    };
    let index: serde_json::Value = serde_json::from_slice(&index).expect("index is JSON");
    index["manifests"]
        .as_array()
        .is_some_and(|m| m.iter().any(|e| e["digest"] == referrer.digest.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_of_platform_manifests_and_of_referrers_are_copied() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let index = fixtures::multi_arch(21, 10_000);
    let arm64 = &index.children[1];
    // An SBOM attached to one platform's manifest, and a signature of that SBOM.
    let sbom = fixtures::referrer(2, arm64);
    let signature = fixtures::referrer(3, &sbom);
    fixtures::push(&a, "ci/multi", "21", &index).await;
    fixtures::attach(&a, "ci/multi", arm64, &sbom).await;
    fixtures::attach(&a, "ci/multi", &sbom, &signature).await;
    fixtures::provision(&b, "prod/multi").await;

    let report = copy(&format!("{a}/ci/multi:21"), &format!("{b}/prod/multi:21"))
        .await
        .unwrap();
    assert!(report.verified);
    assert_eq!(report.referrers_copied, 2);
    assert_image_at(&b, "prod/multi", "21", &index).await;
    for (subject, referrer) in [(arm64, &sbom), (&sbom, &signature)] {
        assert_eq!(
            fixtures::manifest_digest(&b, "prod/multi", &referrer.digest)
                .await
                .as_deref(),
            Some(referrer.digest.as_str())
        );
        assert!(
            fallback_index_lists(&b, "prod/multi", subject, referrer).await,
            "the destination's fallback index of {} lists {}",
            subject.digest,
            referrer.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrer_chains_deeper_than_four_levels_are_refused_before_anything_is_written() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(22, 1, 5_000);
    fixtures::push(&a, "ci/deep", "22", &image).await;
    let mut chain = vec![image.clone()];
    for seed in 1..=5 {
        let next = fixtures::referrer(seed, chain.last().expect("starts with the image"));
        fixtures::attach(&a, "ci/deep", chain.last().expect("not empty"), &next).await;
        chain.push(next);
    }
    fixtures::provision(&b, "prod/deep").await;
    let (src, dst) = (
        r(&format!("{a}/ci/deep:22")),
        r(&format!("{b}/prod/deep:22")),
    );

    let err = client()
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("ci/deep:22")
            && message.contains("deeper than 4 levels")
            && message.contains("--no-referrers"),
        "{message}"
    );
    assert_eq!(fixtures::manifest_digest(&b, "prod/deep", "22").await, None);
    for blob in image.blob_digests() {
        assert!(!fixtures::blob_exists(&b, "prod/deep", &blob).await);
    }

    // Four levels are fine: cut the chain at the fourth referrer.
    fixtures::put_manifest(
        &a,
        "ci/deep",
        &fixtures::fallback_tag(&chain[4].digest),
        fixtures::OCI_INDEX,
        &fixtures::fallback_index(&[]),
    )
    .await;
    let report = client()
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .unwrap();
    assert_eq!(report.referrers_copied, 4);
    assert!(fallback_index_lists(&b, "prod/deep", &chain[3], &chain[4]).await);

    // The fifth level attached again after that copy: a re-promotion of the complete image
    // still succeeds, and says why its referrers were not compared.
    fixtures::attach(&a, "ci/deep", &chain[4], &chain[5]).await;
    let again = client()
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .unwrap();
    assert!(again.already_present && again.verified);
    assert_eq!(again.manifests_pushed, 0);
    let why = again.referrers_unchecked.expect("the report says why");
    assert!(why.contains("deeper than 4 levels"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_travel_through_an_oci_layout_both_ways() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(33, 1, 3_000);
    let sbom = fixtures::referrer(1, &image);
    let signature = fixtures::referrer(2, &sbom);
    fixtures::push(&a, "ci/app", "33", &image).await;
    fixtures::attach(&a, "ci/app", &image, &sbom).await;
    fixtures::attach(&a, "ci/app", &sbom, &signature).await;
    let dir = tempfile::tempdir().unwrap();
    forge_registry::init_oci_layout(dir.path()).await.unwrap();
    let layout = format!("oci:{}", dir.path().display());

    // Registry → layout: the fallback indexes become ref names in index.json.
    let report = copy(&format!("{a}/ci/app:33"), &format!("{layout}:33"))
        .await
        .unwrap();
    assert_eq!(report.referrers_copied, 2);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let mut names: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"][forge_registry::REF_NAME].as_str())
        .map(str::to_owned)
        .collect();
    names.sort();
    let mut expected = vec![
        "33".to_owned(),
        fixtures::fallback_tag(&image.digest),
        fixtures::fallback_tag(&sbom.digest),
    ];
    expected.sort();
    assert_eq!(names, expected);

    // Layout → registry: read back from those ref names.
    fixtures::provision(&b, "prod/app").await;
    let report = copy(&format!("{layout}:33"), &format!("{b}/prod/app:33"))
        .await
        .unwrap();
    assert_eq!(report.referrers_copied, 2);
    for (subject, referrer) in [(&image, &sbom), (&sbom, &signature)] {
        assert_eq!(
            fixtures::manifest_digest(&b, "prod/app", &referrer.digest)
                .await
                .as_deref(),
            Some(referrer.digest.as_str())
        );
        assert!(fallback_index_lists(&b, "prod/app", subject, referrer).await);
    }
    // `oci:<dir>` alone still means the layout's only image: the fallback indexes next to it
    // are not images.
    let report = copy(&layout, &format!("{b}/prod/app:34")).await.unwrap();
    assert_eq!(report.digest.to_string(), image.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_to_registry_and_back() {
    let Some(p) = pair() else { return };
    let b = p.b.host();
    let dir = tempfile::tempdir().unwrap();
    let src_layout = dir.path().join("src");
    let digest = forge_testkit::oci::write_image(&src_layout, "100").unwrap();
    fixtures::provision(&b, "prod/app").await;

    let src = r(&format!("oci:{}:100", src_layout.display()));
    let report = client()
        .copy(
            &src,
            &r(&format!("{b}/prod/app:100")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert!(report.verified);
    assert_eq!(report.digest.to_string(), digest);
    assert_eq!(
        fixtures::skopeo_digest(&format!("docker://{b}/prod/app:100")),
        digest
    );

    // `oci:<dir>` without a tag means the layout's only image (as with skopeo).
    let untagged = r(&format!("oci:{}", src_layout.display()));
    let report = client()
        .copy(
            &untagged,
            &r(&format!("{b}/prod/app:99")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(report.digest.to_string(), digest);

    // Registry → a layout that does not exist yet: refused, nothing created.
    let out = dir.path().join("out");
    let dst = r(&format!("oci:{}:100", out.display()));
    let reg = r(&format!("{b}/prod/app:100"));
    let err = client()
        .copy(&reg, &dst, &CopyOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::OciLayout { .. }), "{err}");
    assert!(err.is_invalid_input());
    assert!(!out.exists());

    // Once provisioned, the copy lands with the tag in index.json.
    forge_registry::init_oci_layout(&out).await.unwrap();
    let report = client()
        .copy(&reg, &dst, &CopyOptions::default())
        .await
        .unwrap();
    assert!(report.verified);
    assert_eq!(report.blobs_copied, 2);
    assert_eq!(
        fixtures::skopeo_digest(&format!("oci:{}:100", out.display())),
        digest
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "100"
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.join("blobs/sha256"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Re-copy into the layout is a no-op; a different image under the same tag conflicts.
    let again = client()
        .copy(&reg, &dst, &CopyOptions::default())
        .await
        .unwrap();
    assert!(again.already_present);
    forge_testkit::oci::write_image(&src_layout, "101").unwrap();
    let other = r(&format!("oci:{}:101", src_layout.display()));
    let err = client()
        .copy(&other, &dst, &CopyOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::TagConflict { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_round_trips_through_an_oci_layout_with_the_same_digest() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::multi_arch(11, 30_000);
    fixtures::push(&a, "ci/multi", "2", &image).await;
    fixtures::provision(&b, "prod/multi").await;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("export");
    forge_registry::init_oci_layout(&layout).await.unwrap();
    let in_layout = r(&format!("oci:{}:2", layout.display()));

    let out = client()
        .copy(
            &r(&format!("{a}/ci/multi:2")),
            &in_layout,
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert!(out.verified);
    assert_eq!(out.digest.to_string(), image.digest);
    assert_eq!(out.manifests_pushed, 3);
    // The Docker manifest list is stored as-is (its digest is the promise), under its own media
    // type. skopeo 1.9.3 only reads OCI-typed entries of index.json, so the oracle here is the
    // layout itself: the tagged entry and the sha256 of the stored bytes.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(entry["digest"], image.digest.as_str());
    assert_eq!(entry["mediaType"], fixtures::DOCKER_LIST);
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "2"
    );
    let hex = image.digest.trim_start_matches("sha256:");
    let stored = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(stored, image.manifest);
    for child in &image.children {
        let hex = child.digest.trim_start_matches("sha256:");
        assert_eq!(
            std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap(),
            child.manifest
        );
    }
    // Layout → layout, then back to a registry: still the same bytes.
    let second = dir.path().join("second");
    forge_registry::init_oci_layout(&second).await.unwrap();
    let in_second = r(&format!("oci:{}:2", second.display()));
    client()
        .copy(&in_layout, &in_second, &CopyOptions::default())
        .await
        .unwrap();
    let back = client()
        .copy(
            &in_second,
            &r(&format!("{b}/prod/multi:2")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert!(back.verified);
    assert_image_at(&b, "prod/multi", "2", &image).await;
}

/// A corrupt OCI layout is an error, never a shortcut: a manifest file that does not hash to
/// its name is not copied on as that digest, and a tag whose manifest is missing, or whose
/// `index.json` entry does not parse, is not a free tag to write over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_oci_layouts_are_refused_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let layout = |name: &str| dir.path().join(name);
    let oci = |name: &str, tag: &str| r(&format!("oci:{}:{tag}", layout(name).display()));
    let copy = |src: Reference, dst: Reference| async move {
        client().copy(&src, &dst, &CopyOptions::default()).await
    };
    let index_of = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(layout(name).join("index.json")).unwrap()).unwrap()
    };
    let blob_path = |name: &str, digest: &str| {
        layout(name)
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let first = forge_testkit::oci::write_image(&layout("src"), "100").unwrap();
    forge_testkit::oci::write_image(&layout("src"), "101").unwrap();

    // Source: the manifest file re-serialized (pretty-printed) under its old name.
    forge_testkit::oci::write_image(&layout("tampered"), "100").unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_path("tampered", &first)).unwrap()).unwrap();
    std::fs::write(
        blob_path("tampered", &first),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    forge_registry::init_oci_layout(&layout("dst"))
        .await
        .unwrap();
    let err = copy(oci("tampered", "100"), oci("dst", "100"))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::OciLayout { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(index_of("dst")["manifests"], serde_json::json!([]));

    // Destination: tag 100 is taken, but its manifest file is gone.
    copy(oci("src", "100"), oci("dst", "100")).await.unwrap();
    std::fs::remove_file(blob_path("dst", &first)).unwrap();
    let err = copy(oci("src", "101"), oci("dst", "100"))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::OciLayout { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(index_of("dst")["manifests"][0]["digest"], first.as_str());

    // Destination: the entry for tag 100 lost its size.
    let mut index = index_of("dst");
    index["manifests"][0]
        .as_object_mut()
        .unwrap()
        .remove("size");
    std::fs::write(
        layout("dst").join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let err = copy(oci("src", "101"), oci("dst", "100"))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::OciLayout { .. }), "{err}");
    assert!(err.to_string().contains("not a valid descriptor"), "{err}");
    assert_eq!(index_of("dst"), index);
}

/// The tag holds the source digest but a layer is gone (the registry's garbage collection, a
/// hand deletion): re-running the copy puts back what is missing, without writing the tag
/// again, instead of failing the same verification on every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_present_tag_with_a_missing_blob_is_repaired_without_writing_the_tag() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(50, 2, 40_000);
    fixtures::push(&a, "ci/app", "21", &image).await;
    fixtures::push(&b, "prod/app", "21", &image).await;
    let lost = image.blob_digests()[1].clone();
    let deleted = reqwest::Client::new()
        .delete(format!("http://{b}/v2/prod/app/blobs/{lost}"))
        .send()
        .await
        .expect("DELETE blob");
    assert_eq!(deleted.status(), reqwest::StatusCode::ACCEPTED);
    assert!(!fixtures::blob_exists(&b, "prod/app", &lost).await);

    let (src, dst) = (format!("{a}/ci/app:21"), format!("{b}/prod/app:21"));
    let report = copy(&src, &dst).await.expect("the copy repairs the image");
    assert!(report.verified && !report.already_present, "{report:?}");
    assert_eq!(report.blobs_copied, 1, "{report:?}");
    assert_eq!(report.manifests_pushed, 0, "the tag is not written again");
    assert_image_at(&b, "prod/app", "21", &image).await;

    let again = copy(&src, &dst).await.expect("re-copy");
    assert!(again.already_present && again.verified);
}

/// Pipelines copying into one OCI layout at once: index.json is read, changed and replaced,
/// so without the layout's lock one writer's tag silently disappears.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_copies_into_one_oci_layout_lose_no_tag() {
    let dir = tempfile::tempdir().unwrap();
    let src_layout = dir.path().join("src");
    let builds: Vec<String> = (100..124).map(|b| b.to_string()).collect();
    let digests: Vec<String> = builds
        .iter()
        .map(|b| forge_testkit::oci::write_image(&src_layout, b).unwrap())
        .collect();
    let out = dir.path().join("out");
    forge_registry::init_oci_layout(&out).await.unwrap();

    let copies = builds.iter().map(|b| {
        let src = r(&format!("oci:{}:{b}", src_layout.display()));
        let dst = r(&format!("oci:{}:{b}", out.display()));
        async move { client().copy(&src, &dst, &CopyOptions::default()).await }
    });
    for result in futures_util::future::join_all(copies).await {
        assert!(result.unwrap().verified);
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let mut tagged: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    tagged.sort();
    let expected: Vec<(String, String)> = builds.iter().cloned().zip(digests).collect();
    assert_eq!(tagged, expected, "every tag, once, with its digest");

    // Two pipelines racing one tag with different images: one lands, the other is refused
    // (whichever check sees the winner), and the tag keeps the winner's digest.
    let race = ["200", "201"].map(|b| {
        forge_testkit::oci::write_image(&src_layout, b).unwrap();
        let src = r(&format!("oci:{}:{b}", src_layout.display()));
        let dst = r(&format!("oci:{}:race", out.display()));
        async move { client().copy(&src, &dst, &CopyOptions::default()).await }
    });
    let results = futures_util::future::join_all(race).await;
    let landed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|report| report.digest.to_string()))
        .collect();
    assert_eq!(landed.len(), 1, "{results:?}");
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(
                err.kind,
                ErrorKind::TagConflict { .. } | ErrorKind::TagTakenDuringCopy { .. }
            ),
            "{err}"
        );
    }
    assert_eq!(
        fixtures::skopeo_digest(&format!("oci:{}:race", out.display())),
        landed[0]
    );
}

/// `oci:<dir>` without a tag names the layout's only image; with several, the error says so
/// and lists them, instead of claiming the image does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untagged_layout_reference_with_several_images_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let first = forge_testkit::oci::write_image(&layout, "1").unwrap();
    let untagged: Reference = format!("oci:{}", layout.display()).parse().unwrap();
    let resolved = client().resolve(&untagged).await.expect("the only image");
    assert_eq!(resolved.digest.to_string(), first);

    forge_testkit::oci::write_image(&layout, "2").unwrap();
    let err = client().resolve(&untagged).await.unwrap_err();
    assert!(
        matches!(err.kind(), forge_registry::ErrorKind::InvalidInput { .. })
            && err.is_invalid_input(),
        "{err:?}"
    );
    // `verify` refuses it the same way: not a damaged layout, not "do not deploy".
    let expected: forge_registry::Digest = first.parse().unwrap();
    let refused = client().verify(&untagged, &expected).await.unwrap_err();
    assert!(refused.is_invalid_input(), "{refused:?}");
    let message = err.to_string();
    for tag in ["1", "2"] {
        assert!(
            message.contains(&format!("oci:{}:{tag}", layout.display())),
            "{message}"
        );
    }
    assert!(message.contains("holds 2 images"), "{message}");
}

/// The manifest of `oci:<layout>:<tag>` as JSON, read from the layout's files.
fn layout_manifest(layout: &std::path::Path, tag: &str) -> serde_json::Value {
    let read = |path: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).expect("layout file")).expect("JSON")
    };
    let index = read(layout.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tagged entry");
    let hex = entry["digest"]
        .as_str()
        .expect("digest")
        .trim_start_matches("sha256:");
    read(layout.join("blobs/sha256").join(hex))
}

/// A layout blob of the right size but other bytes is not "present": verification fails,
/// exit 1 material (not a refusal), and copying again replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_layout_blob_fails_verification_and_copying_again_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (src_layout, dst_layout) = (dir.path().join("src"), dir.path().join("dst"));
    let digest = forge_testkit::oci::write_image(&src_layout, "1").unwrap();
    forge_registry::init_oci_layout(&dst_layout).await.unwrap();
    let (src, dst) = (
        r(&format!("oci:{}:1", src_layout.display())),
        r(&format!("oci:{}:1", dst_layout.display())),
    );
    client()
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .unwrap();

    let layer = layout_manifest(&dst_layout, "1")["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let layer_path = dst_layout.join("blobs/sha256").join(&layer);
    let size = std::fs::metadata(&layer_path).unwrap().len();
    std::fs::write(&layer_path, vec![0u8; usize::try_from(size).unwrap()]).unwrap();

    let expected: forge_registry::Digest = digest.parse().unwrap();
    let err = client().verify(&dst, &expected).await.unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::VerificationFailed { .. }) && !err.is_invalid_input(),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("does not hash to its digest"),
        "{err}"
    );

    let again = client()
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .unwrap();
    assert!(again.verified && again.blobs_copied == 1, "{again:?}");
    client().verify(&dst, &expected).await.expect("repaired");

    // A manifest listed in index.json but gone is damage too, not bad input.
    let manifest_path = dst_layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::remove_file(manifest_path).unwrap();
    let err = client().verify(&dst, &expected).await.unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::VerificationFailed { .. }) && !err.is_invalid_input(),
        "{err:?}"
    );
}

/// A copy into a layout that fails while another blob is still being written leaves no
/// temporary file behind (the cancelled write cleans up on drop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_into_a_layout_leaves_no_temporary_files() {
    use forge_testkit::oci::{put_blob, write_empty_layout};
    let dir = tempfile::tempdir().unwrap();
    let (src_layout, dst_layout) = (dir.path().join("src"), dir.path().join("dst"));
    write_empty_layout(&src_layout).unwrap();
    let big = fixtures::bytes(7, 32 * 1024 * 1024);
    let damaged = fixtures::bytes(8, 8 * 1024 * 1024);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let (big_digest, damaged_digest, config_digest) = (
        put_blob(&src_layout, &big).unwrap(),
        put_blob(&src_layout, &damaged).unwrap(),
        put_blob(&src_layout, config).unwrap(),
    );
    // The second layer's file then changes under its name: detected at its end, while the
    // first (four times larger) is still being written.
    std::fs::write(
        src_layout
            .join("blobs/sha256")
            .join(damaged_digest.trim_start_matches("sha256:")),
        fixtures::bytes(9, damaged.len()),
    )
    .unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{big_digest}","size":{}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{damaged_digest}","size":{}}}]}}"#,
        config.len(),
        big.len(),
        damaged.len()
    );
    let manifest_digest = put_blob(&src_layout, manifest.as_bytes()).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "1" },
        }],
    });
    std::fs::write(src_layout.join("index.json"), index.to_string()).unwrap();
    forge_registry::init_oci_layout(&dst_layout).await.unwrap();

    let no_retries = Client::builder()
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();
    let err = no_retries
        .copy(
            &r(&format!("oci:{}:1", src_layout.display())),
            &r(&format!("oci:{}:1", dst_layout.display())),
            &CopyOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::DigestMismatch { .. }),
        "{err:?}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dst_layout.join("blobs/sha256"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().starts_with('.')),
        "temporary files left: {leftovers:?}"
    );
}

/// A blob the destination registry holds truncated (its HEAD answers 200 with another
/// `Content-Length`) is not present: verification fails instead of passing, and a copy does
/// not skip it as already there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_blob_at_the_destination_is_not_taken_as_present() {
    let Some(p) = pair() else { return };
    let (a, b) = (p.a.host(), p.b.host());
    let image = fixtures::oci_image(77, 1, 50_000);
    fixtures::push(&a, "ci/app", "1", &image).await;
    fixtures::provision(&b, "prod/app").await;
    let (src, dst) = (r(&format!("{a}/ci/app:1")), r(&format!("{b}/prod/app:1")));
    client()
        .copy(&src, &dst, &CopyOptions::default())
        .await
        .unwrap();

    let layer = image
        .blobs
        .iter()
        .max_by_key(|b| b.len())
        .expect("the image has blobs");
    let digest = forge_testkit::oci::sha256(layer);
    let hex = digest.trim_start_matches("sha256:");
    let data =
        p.b.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
    std::fs::write(&data, b"").unwrap();

    let expected: forge_registry::Digest = image.digest.parse().unwrap();
    let err = client().verify(&dst, &expected).await.unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::VerificationFailed { .. }),
        "{err:?}"
    );
    match client().copy(&src, &dst, &CopyOptions::default()).await {
        Ok(report) => assert!(
            report.verified && report.blobs_copied >= 1,
            "not skipped: {report:?}"
        ),
        Err(e) => assert!(
            matches!(e.kind, ErrorKind::VerificationFailed { .. }),
            "{e:?}"
        ),
    }
}
