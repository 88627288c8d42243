//! OCI 1.1 referrers with registries that serve the referrers API. Distribution 2.8.2 keeps
//! referrers only under fallback tags (`sha256-<hex>`), so the API is reproduced by the proxy in
//! front of the real registry (`Fault::ServeReferrersApi` lists what the fallback tag holds,
//! `Fault::AcknowledgeSubject` answers a referrer push with `OCI-Subject`). What ends up at the
//! destination is read from the real registry directly, bypassing the proxy.

use forge_registry::{Client, CopyOptions, Reference, RetryPolicy};
use forge_testkit::Registry;

use crate::fixtures::{self, Image};
use crate::proxy::{Fault, Proxy, Route, Rule};

struct Setup {
    _source: Registry,
    dest: Registry,
    src_proxy: Proxy,
    dst_proxy: Proxy,
    image: Image,
    /// Attached to the image.
    sbom: Image,
    /// Attached to the SBOM.
    signature: Image,
}

/// `ci/app:31` with an SBOM and a signature of that SBOM at the source (fallback tags); the
/// destination repository `prod/app` is provisioned.
async fn setup() -> Option<Setup> {
    let source = Registry::start()?;
    let dest = Registry::start()?;
    let image = fixtures::oci_image(31, 1, 4_000);
    let sbom = fixtures::referrer(1, &image);
    let signature = fixtures::referrer(2, &sbom);
    let src = source.host();
    fixtures::push(&src, "ci/app", "31", &image).await;
    fixtures::attach(&src, "ci/app", &image, &sbom).await;
    fixtures::attach(&src, "ci/app", &sbom, &signature).await;
    fixtures::provision(&dest.host(), "prod/app").await;
    let src_proxy = Proxy::start(&src).await;
    let dst_proxy = Proxy::start(&dest.host()).await;
    Some(Setup {
        _source: source,
        dest,
        src_proxy,
        dst_proxy,
        image,
        sbom,
        signature,
    })
}

async fn copy(src: &str, dst: &str) -> Result<forge_registry::CopyReport, forge_registry::Error> {
    let client = Client::builder()
        .retry_policy(RetryPolicy {
            max_retries: 2,
            initial_backoff: std::time::Duration::from_millis(10),
            ..RetryPolicy::default()
        })
        .build()
        .expect("client builds");
    let r = |s: &str| s.parse::<Reference>().expect("valid reference");
    client.copy(&r(src), &r(dst), &CopyOptions::default()).await
}

/// Whether the REAL registry at `host` keeps a fallback index for `subject` listing `referrer`.
async fn fallback_index_lists(host: &str, subject: &Image, referrer: &Image) -> bool {
    let tag = fixtures::fallback_tag(&subject.digest);
    let Some(index) = fixtures::manifest_bytes(host, "prod/app", &tag).await else {
        return false;
    };
    let index: serde_json::Value = serde_json::from_slice(&index).expect("index is JSON");
    index["manifests"]
        .as_array()
        .is_some_and(|m| m.iter().any(|e| e["digest"] == referrer.digest.as_str()))
}

async fn assert_referrers_at_destination(s: &Setup) {
    for referrer in [&s.sbom, &s.signature] {
        assert_eq!(
            fixtures::manifest_digest(&s.dest.host(), "prod/app", &referrer.digest)
                .await
                .as_deref(),
            Some(referrer.digest.as_str())
        );
    }
}

/// A re-promotion that found every referrer at the destination: verified, nothing written,
/// and not even the copy's walk (which would count the image's blobs as skipped).
fn assert_compared_only(report: &forge_registry::CopyReport) {
    assert!(report.already_present && report.verified, "{report:?}");
    assert_eq!(
        (
            report.referrers_copied,
            report.manifests_pushed,
            report.blobs_skipped
        ),
        (0, 0, 0),
        "the comparison alone, not the copy's walk: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_the_referrers_api_is_asked_through_it_and_never_for_fallback_tags() {
    let Some(s) = setup().await else { return };
    s.src_proxy
        .add_rule(Rule::new(Route::Referrers, Fault::ServeReferrersApi, None));

    let report = copy(
        &format!("{}/ci/app:31", s.src_proxy.host()),
        &format!("{}/prod/app:31", s.dest.host()),
    )
    .await
    .expect("copy");
    assert!(report.verified);
    assert_eq!(report.referrers_copied, 2);
    assert_referrers_at_destination(&s).await;
    // The API was asked for the image, the SBOM and the signature; no fallback tag was read.
    assert_eq!(s.src_proxy.count(Route::Referrers), 3);
    let fallback_reads: Vec<String> = s
        .src_proxy
        .log()
        .into_iter()
        .filter(|l| l.route == Route::ManifestGet && l.path.contains("/manifests/sha256-"))
        .map(|l| l.path)
        .collect();
    assert!(fallback_reads.is_empty(), "{fallback_reads:?}");
    // The destination has no API: it gets the fallback indexes.
    assert!(fallback_index_lists(&s.dest.host(), &s.image, &s.sbom).await);
    assert!(fallback_index_lists(&s.dest.host(), &s.sbom, &s.signature).await);
}

/// The fallback tag is read, merged and written back: a concurrent writer can replace it in
/// between. The copy reads it back after writing and merges again, so neither its referrers
/// nor the other writer's are lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_index_replaced_by_a_concurrent_writer_is_merged_again() {
    let Some(s) = setup().await else { return };
    // Another pipeline attached a scan report to the same image at the destination and wrote
    // the fallback index listing only it, right after this copy wrote its own.
    let scan = fixtures::referrer(3, &s.image);
    fixtures::push(&s.dest.host(), "prod/app", &scan.digest, &scan).await;
    let tag = fixtures::fallback_tag(&s.image.digest);
    s.dst_proxy.add_rule(
        Rule::new(
            Route::ManifestPut,
            Fault::OverwriteAfterPut(fixtures::fallback_index(&[&scan])),
            Some(1),
        )
        .matching(&tag),
    );

    let report = copy(
        &format!("{}/ci/app:31", s.src_proxy.host()),
        &format!("{}/prod/app:31", s.dst_proxy.host()),
    )
    .await
    .expect("copy");
    assert!(report.verified);
    assert_referrers_at_destination(&s).await;
    for referrer in [&s.sbom, &scan] {
        assert!(
            fallback_index_lists(&s.dest.host(), &s.image, referrer).await,
            "the fallback index lost {}",
            referrer.digest
        );
    }
}

/// The spec lets a registry page the referrers list (`Link: <…>; rel="next"`): every page is
/// read, so a signature on page 2 is not silently left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_of_a_paginated_referrers_list_is_copied() {
    let Some(s) = setup().await else { return };
    // A second referrer of the image itself: its list now has two entries, one per page.
    let attestation = fixtures::referrer(3, &s.image);
    let src = s._source.host();
    fixtures::push(&src, "ci/app", &attestation.digest, &attestation).await;
    fixtures::put_manifest(
        &src,
        "ci/app",
        &fixtures::fallback_tag(&s.image.digest),
        fixtures::OCI_INDEX,
        &fixtures::fallback_index(&[&s.sbom, &attestation]),
    )
    .await;
    s.src_proxy.add_rule(Rule::new(
        Route::Referrers,
        Fault::ServeReferrersApiPaged,
        None,
    ));

    let report = copy(
        &format!("{}/ci/app:31", s.src_proxy.host()),
        &format!("{}/prod/app:31", s.dest.host()),
    )
    .await
    .expect("copy");
    assert!(report.verified);
    assert_eq!(report.referrers_copied, 3, "{report:?}");
    assert_referrers_at_destination(&s).await;
    assert_eq!(
        fixtures::manifest_digest(&s.dest.host(), "prod/app", &attestation.digest)
            .await
            .as_deref(),
        Some(attestation.digest.as_str()),
        "the referrer on the second page was left behind"
    );
    let pages: Vec<String> = s
        .src_proxy
        .log()
        .into_iter()
        .filter(|l| l.route == Route::Referrers && l.path.contains(&s.image.digest))
        .map(|l| l.path)
        .collect();
    assert_eq!(pages.len(), 2, "both pages of the image's list: {pages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_referrers_api_fails_the_copy_instead_of_dropping_signatures() {
    let Some(s) = setup().await else { return };
    let (src, dst) = (
        format!("{}/ci/app:31", s.src_proxy.host()),
        format!("{}/prod/app:31", s.dest.host()),
    );
    s.src_proxy.add_rule(Rule::new(
        Route::Referrers,
        Fault::Status {
            status: 503,
            code: "UNAVAILABLE",
            retry_after: None,
        },
        None,
    ));
    let err = copy(&src, &dst).await.expect_err("the API keeps failing");
    let message = err.to_string();
    assert!(
        message.contains("/referrers/") && message.contains("503"),
        "{message}"
    );
    assert_eq!(err.retries, 2, "{message}");
    assert_eq!(
        fixtures::manifest_digest(&s.dest.host(), "prod/app", "31").await,
        None,
        "no destination tag after a failed copy"
    );

    // One failure is retried; the registry then answers like one without the API (404).
    let s2 = setup().await.expect("components were there a moment ago");
    s2.src_proxy.add_rule(Rule::new(
        Route::Referrers,
        Fault::Status {
            status: 503,
            code: "UNAVAILABLE",
            retry_after: None,
        },
        Some(1),
    ));
    let report = copy(
        &format!("{}/ci/app:31", s2.src_proxy.host()),
        &format!("{}/prod/app:31", s2.dest.host()),
    )
    .await
    .expect("a single 503 is retried");
    assert_eq!((report.referrers_copied, report.retries), (2, 1));
    assert_referrers_at_destination(&s2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_indexing_referrers_itself_gets_fallback_indexes_only_where_it_did_not_acknowledge()
 {
    let Some(s) = setup().await else { return };
    // The destination serves the API and acknowledges the SBOM's push, not the signature's.
    s.dst_proxy
        .add_rule(Rule::new(Route::Referrers, Fault::ServeReferrersApi, None));
    s.dst_proxy.add_rule(
        Rule::new(Route::ManifestPut, Fault::AcknowledgeSubject, None).matching(&s.sbom.digest),
    );

    let report = copy(
        &format!("{}/ci/app:31", s.src_proxy.host()),
        &format!("{}/prod/app:31", s.dst_proxy.host()),
    )
    .await
    .expect("copy");
    assert_eq!(report.referrers_copied, 2);
    assert_referrers_at_destination(&s).await;
    assert!(
        !fallback_index_lists(&s.dest.host(), &s.image, &s.sbom).await,
        "the registry indexed the SBOM itself: no fallback index for the image"
    );
    assert!(
        fallback_index_lists(&s.dest.host(), &s.sbom, &s.signature).await,
        "the signature's push was not acknowledged: the SBOM gets a fallback index"
    );
}

/// A re-promotion compares the referrer lists on both sides, level by level, through the
/// APIs, and writes nothing when the destination already lists them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_promotion_compares_referrers_through_the_apis_and_writes_nothing_when_all_are_there()
{
    let Some(s) = setup().await else { return };
    for proxy in [&s.src_proxy, &s.dst_proxy] {
        proxy.add_rule(Rule::new(Route::Referrers, Fault::ServeReferrersApi, None));
    }
    let (src, dst) = (
        format!("{}/ci/app:31", s.src_proxy.host()),
        format!("{}/prod/app:31", s.dst_proxy.host()),
    );
    let first = copy(&src, &dst).await.expect("copy");
    assert_eq!(first.referrers_copied, 2);
    let asked_before = s.src_proxy.count(Route::Referrers);
    let puts_before = s.dst_proxy.count(Route::ManifestPut);

    let again = copy(&src, &dst).await.expect("re-promotion");
    assert_compared_only(&again);
    assert_eq!(s.dst_proxy.count(Route::ManifestPut), puts_before);
    assert_eq!(again.referrers_unchecked, None);
    // The image's, the SBOM's and the signature's referrers, once each.
    assert_eq!(s.src_proxy.count(Route::Referrers) - asked_before, 3);
}

/// On an image already at the destination, a referrers listing that fails does not fail the
/// re-promotion (it succeeded before referrers were compared): the report says why they were
/// not compared, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_referrers_listing_on_a_re_promotion_is_reported_not_fatal() {
    let Some(s) = setup().await else { return };
    let (src, dst) = (
        format!("{}/ci/app:31", s.src_proxy.host()),
        format!("{}/prod/app:31", s.dst_proxy.host()),
    );
    copy(&src, &dst).await.expect("first copy");
    s.src_proxy.add_rule(Rule::new(
        Route::Referrers,
        Fault::Status {
            status: 503,
            code: "UNAVAILABLE",
            retry_after: None,
        },
        None,
    ));
    let puts_before = s.dst_proxy.count(Route::ManifestPut);
    let again = copy(&src, &dst)
        .await
        .expect("the image is there and verified");
    assert!(again.already_present && again.verified);
    let why = again.referrers_unchecked.expect("the report says why");
    assert!(why.contains("/referrers/") && why.contains("503"), "{why}");
    assert_eq!(s.dst_proxy.count(Route::ManifestPut), puts_before);
}

/// A referrer already at a destination that serves the API but never listed it (pushed by
/// another tool, or by a copy that failed before its fallback index) is given a fallback index
/// by the re-promotion, after which the next one has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referrer_present_but_unlisted_at_the_destination_gets_listed_once() {
    let Some(s) = setup().await else { return };
    s.dst_proxy
        .add_rule(Rule::new(Route::Referrers, Fault::ServeReferrersApi, None));
    let (src, dst) = (
        format!("{}/ci/app:31", s.src_proxy.host()),
        format!("{}/prod/app:31", s.dst_proxy.host()),
    );
    let client = Client::new().expect("client builds");
    let r = |s: &str| s.parse::<Reference>().expect("valid reference");
    let without = CopyOptions {
        referrers: false,
        ..CopyOptions::default()
    };
    client
        .copy(&r(&src), &r(&dst), &without)
        .await
        .expect("image only");
    // The SBOM's manifest and blobs are there, listed nowhere.
    fixtures::push(&s.dest.host(), "prod/app", &s.sbom.digest, &s.sbom).await;
    assert!(!fallback_index_lists(&s.dest.host(), &s.image, &s.sbom).await);

    let repair = copy(&src, &dst).await.expect("re-promotion");
    assert!(repair.already_present && repair.verified);
    assert_eq!(
        repair.referrers_copied, 1,
        "the signature was pushed, the SBOM was not: {repair:?}"
    );
    assert!(fallback_index_lists(&s.dest.host(), &s.image, &s.sbom).await);
    assert!(fallback_index_lists(&s.dest.host(), &s.sbom, &s.signature).await);

    let after = copy(&src, &dst).await.expect("re-promotion");
    assert_eq!(
        (after.manifests_pushed, after.blobs_skipped),
        (0, 0),
        "{after:?}"
    );
    assert_eq!(after.referrers_unchecked, None);
}

/// A destination that serves the referrers API but lists none of them (it indexed none) keeps
/// them in the fallback indexes the copy wrote: a re-promotion reads those too and has nothing
/// to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_promotion_reads_the_fallback_indexes_of_a_destination_whose_api_lists_nothing() {
    let Some(s) = setup().await else { return };
    s.dst_proxy.add_rule(Rule::new(
        Route::Referrers,
        Fault::ServeEmptyReferrersApi,
        None,
    ));
    let (src, dst) = (
        format!("{}/ci/app:31", s.src_proxy.host()),
        format!("{}/prod/app:31", s.dst_proxy.host()),
    );
    let first = copy(&src, &dst).await.expect("copy");
    assert_eq!(first.referrers_copied, 2);
    assert!(fallback_index_lists(&s.dest.host(), &s.image, &s.sbom).await);
    assert!(fallback_index_lists(&s.dest.host(), &s.sbom, &s.signature).await);

    let again = copy(&src, &dst).await.expect("re-promotion");
    assert_compared_only(&again);
    assert_eq!(again.referrers_unchecked, None);
}

/// A referrer attached after the first copy that the destination refuses: the re-promotion
/// fails with an error saying the image itself is there and verified and the tag untouched,
/// with the registry's refusal as its cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_referrer_that_cannot_be_copied_fails_the_re_promotion_saying_the_image_is_there() {
    let Some(s) = setup().await else { return };
    let (src, dst) = (
        format!("{}/ci/app:31", s.src_proxy.host()),
        format!("{}/prod/app:31", s.dst_proxy.host()),
    );
    copy(&src, &dst).await.expect("first copy");
    let scan = fixtures::referrer(3, &s.image);
    fixtures::attach(&s.src_proxy.host(), "ci/app", &s.image, &scan).await;
    s.dst_proxy.add_rule(
        Rule::new(
            Route::ManifestPut,
            Fault::Status {
                status: 400,
                code: "MANIFEST_INVALID",
                retry_after: None,
            },
            None,
        )
        .matching(&scan.digest),
    );

    let err = copy(&src, &dst)
        .await
        .expect_err("the late referrer is refused");
    let forge_registry::ErrorKind::ReferrersNotCopied {
        destination,
        digest,
        source,
    } = &err.kind
    else {
        panic!("expected ReferrersNotCopied, got {err:?}");
    };
    assert_eq!(
        (destination.as_str(), digest.as_str()),
        (dst.as_str(), s.image.digest.as_str())
    );
    assert!(
        source.to_string().contains("MANIFEST_INVALID"),
        "the cause names the refusal: {source}"
    );
    let message = err.to_string();
    assert!(
        message.contains("complete and verified") && message.contains("tag was left as it is"),
        "{message}"
    );
    let chain = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(
        chain,
        Some(source.to_string()),
        "the cause is the error's source"
    );
    assert_eq!(
        fixtures::manifest_digest(&s.dest.host(), "prod/app", "31")
            .await
            .as_deref(),
        Some(s.image.digest.as_str()),
        "the tag still holds the image"
    );
    assert_eq!(
        fixtures::manifest_digest(&s.dest.host(), "prod/app", &scan.digest).await,
        None,
        "the refused referrer is not there"
    );
}

/// Quay (3.12 and later) serves the referrers API but refuses a listing for a subject that is
/// not in the repository yet (400 MANIFEST_INVALID), and the top manifest is pushed last: the
/// destination's API is learned from the acknowledged pushes instead, and the signed image
/// lands with no fallback tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_refusing_listings_for_subjects_not_there_yet_takes_a_signed_image() {
    let Some(s) = setup().await else { return };
    s.dst_proxy.add_rule(Rule::new(
        Route::Referrers,
        Fault::ServeReferrersApiQuay,
        None,
    ));
    s.dst_proxy.add_rule(Rule::new(
        Route::ManifestPut,
        Fault::AcknowledgeSubject,
        None,
    ));
    let report = copy(
        &format!("{}/ci/app:31", s.src_proxy.host()),
        &format!("{}/prod/app:31", s.dst_proxy.host()),
    )
    .await
    .expect("a Quay-like destination takes a signed image");
    assert!(
        report.verified && report.referrers_copied == 2,
        "{report:?}"
    );
    assert_referrers_at_destination(&s).await;
    for subject in [&s.image, &s.sbom] {
        let tag = fixtures::fallback_tag(&subject.digest);
        assert_eq!(
            fixtures::manifest_digest(&s.dest.host(), "prod/app", &tag).await,
            None,
            "the registry indexed the referrers itself: no fallback tag"
        );
    }
}

/// Registries without the API do not all answer 404 on the referrers endpoint: Artifactory
/// answers 406, others 400. Both mean "no API": the fallback tags are read and the
/// referrers travel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_answering_406_or_400_on_the_referrers_endpoint_is_read_through_fallback_tags() {
    for status in [406, 400] {
        let Some(s) = setup().await else { return };
        s.src_proxy.add_rule(Rule::new(
            Route::Referrers,
            Fault::Status {
                status,
                code: "UNSUPPORTED",
                retry_after: None,
            },
            None,
        ));
        let report = copy(
            &format!("{}/ci/app:31", s.src_proxy.host()),
            &format!("{}/prod/app:31", s.dest.host()),
        )
        .await
        .unwrap_or_else(|e| panic!("a source answering {status}: {e}"));
        assert_eq!(report.referrers_copied, 2, "{status}: {report:?}");
        assert_referrers_at_destination(&s).await;
    }
}

/// GitLab's registry answers a GET of the tag `sha256-<hex>` with the manifest `sha256:<hex>`
/// itself. For a multi-arch index that is a list of platform manifests, which must not be
/// taken for referrers: nothing is copied as one, and no fallback index is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_tag_that_resolves_to_the_subject_itself_lists_no_referrers() {
    let Some(source) = Registry::start() else {
        return;
    };
    let Some(dest) = Registry::start() else {
        return;
    };
    let (index, _) = crate::proxy::push_index(
        &source.host(),
        "ci/multi",
        "5",
        &[
            ("amd64", vec![crate::proxy::random_bytes(91, 3_000)]),
            ("arm64", vec![crate::proxy::random_bytes(92, 3_000)]),
        ],
    )
    .await;
    fixtures::provision(&dest.host(), "prod/multi").await;
    let src_proxy = Proxy::start(&source.host()).await;
    src_proxy.add_rule(
        Rule::new(Route::ManifestGet, Fault::FallbackTagIsSubject, None)
            .matching("/manifests/sha256-"),
    );
    let report = copy(
        &format!("{}/ci/multi:5", src_proxy.host()),
        &format!("{}/prod/multi:5", dest.host()),
    )
    .await
    .expect("copy");
    assert!(src_proxy.faults_injected() > 0, "the fallback tag was read");
    assert_eq!(report.referrers_copied, 0, "{report:?}");
    let tag = fixtures::fallback_tag(&index.digest);
    assert_eq!(
        fixtures::manifest_digest(&dest.host(), "prod/multi", &tag).await,
        None
    );
}
