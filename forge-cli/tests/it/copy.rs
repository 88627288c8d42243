//! `forge copy`, `forge digest`, `forge verify` against real `docker-registry` instances, with
//! skopeo both as the fixture loader and as the oracle.

use std::path::Path;

use crate::support::{assert_exit, assert_success, forge_in, stderr, stdout};

fn skopeo_push(layout: &Path, tag: &str, dest: &str) {
    forge_testkit::skopeo_run(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{dest}"),
    ]);
}

fn skopeo_digest(image: &str) -> String {
    let out = forge_testkit::skopeo_run(&["inspect", "--raw", "--tls-verify=false", image]);
    forge_testkit::oci::sha256(&out.stdout)
}

struct Setup {
    a: forge_testkit::Registry,
    b: forge_testkit::Registry,
    dir: tempfile::TempDir,
    digest: String,
}

/// Registry A holds `ci/app:7`; registry B has the provisioned (non-empty) repo `prod/app`.
fn setup() -> Option<Setup> {
    forge_testkit::skopeo()?;
    let a = forge_testkit::Registry::start()?;
    let b = forge_testkit::Registry::start()?;
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    forge_testkit::oci::write_image(&layout, "7").expect("fixture image");
    forge_testkit::oci::write_image(&layout, "seed").expect("seed image");
    skopeo_push(&layout, "7", &format!("{}/ci/app:7", a.host()));
    skopeo_push(&layout, "seed", &format!("{}/prod/app:seed", b.host()));
    // skopeo compresses the layout's uncompressed layer on the way in, so the digest to expect
    // is what the source registry serves.
    let digest = skopeo_digest(&format!("docker://{}/ci/app:7", a.host()));
    Some(Setup { a, b, dir, digest })
}

#[test]
fn copy_prints_a_verified_json_report_and_recopy_is_a_no_op() {
    let Some(s) = setup() else { return };
    let src = format!("{}/ci/app:7", s.a.host());
    let dst = format!("{}/prod/app:7", s.b.host());
    let out = forge_in(s.dir.path(), &["copy", &src, &dst, "--output", "json"]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    assert_eq!(report["source"], src.as_str());
    assert_eq!(report["destination"], dst.as_str());
    assert_eq!(report["digest"], s.digest.as_str());
    assert_eq!(report["verified"], true);
    assert_eq!(report["blobs_copied"], 2);
    assert_eq!(report["blobs_skipped"], 0);
    assert_eq!(report["already_present"], false);
    assert!(report["bytes_copied"].as_u64().expect("bytes_copied") > 0);
    assert_eq!(skopeo_digest(&format!("docker://{dst}")), s.digest);
    // Off a terminal, progress is plain log lines on stderr (stdout holds only the JSON).
    let log = stderr(&out);
    assert_eq!(log.matches("copied blob ").count(), 2, "{log}");
    assert!(log.contains("pushed manifest "), "{log}");

    let again = forge_in(s.dir.path(), &["copy", &src, &dst, "--output", "json"]);
    assert_success(&again);
    let again: serde_json::Value = serde_json::from_str(&stdout(&again)).expect("JSON");
    assert_eq!(again["already_present"], true);
    assert_eq!(again["blobs_copied"], 0);
    assert_eq!(again["manifests_pushed"], 0);

    // digest and verify agree with skopeo.
    let out = forge_in(s.dir.path(), &["digest", &dst]);
    assert_success(&out);
    assert_eq!(stdout(&out).trim(), s.digest);
    let out = forge_in(s.dir.path(), &["verify", &dst, "--digest", &s.digest]);
    assert_success(&out);
    let wrong = forge_testkit::oci::sha256(b"not the image");
    let out = forge_in(s.dir.path(), &["verify", &dst, "--digest", &wrong]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("verification of"), "{}", stderr(&out));

    // Text output names the digest and says it was verified; no progress noise on stdout.
    // (This one runs on a multi-threaded runtime; the default is one thread.)
    let dst2 = format!("{}/prod/app:8", s.b.host());
    let out = forge_in(s.dir.path(), &["--threads", "4", "copy", &src, &dst2]);
    assert_success(&out);
    assert!(stdout(&out).contains(&s.digest), "{}", stdout(&out));
    assert!(stdout(&out).contains("verified: true"), "{}", stdout(&out));
}

/// Attaches an SBOM to `subject` in the OCI layout at `layout`, the way a layout keeps
/// referrers: a fallback index under the ref name `sha256-<hex>` in index.json.
fn attach_sbom(layout: &Path, subject: &str) {
    use forge_testkit::oci::put_blob;
    let hex = subject.trim_start_matches("sha256:");
    let subject_size = std::fs::metadata(layout.join("blobs/sha256").join(hex))
        .expect("subject manifest")
        .len();
    let empty = put_blob(layout, b"{}").expect("blob");
    let sbom = br#"{"spdxVersion":"SPDX-2.3","name":"signed after promotion"}"#;
    let sbom_digest = put_blob(layout, sbom).expect("blob");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/spdx+json","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/spdx+json","digest":"{sbom_digest}","size":{}}}],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{subject}","size":{subject_size}}}}}"#,
        sbom.len()
    );
    let manifest_digest = put_blob(layout, manifest.as_bytes()).expect("blob");
    let fallback = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{},"artifactType":"application/spdx+json"}}]}}"#,
        manifest.len()
    );
    let fallback_digest = put_blob(layout, fallback.as_bytes()).expect("blob");
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index.json")).expect("JSON");
    index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": fallback_digest,
            "size": fallback.len(),
            "annotations": { "org.opencontainers.image.ref.name": format!("sha256-{hex}") },
        }));
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("JSON")).expect("index.json");
}

#[test]
fn copying_again_brings_a_referrer_attached_since_and_says_so() {
    let Some(s) = setup() else { return };
    let layout = s.dir.path().join("late");
    let digest = forge_testkit::oci::write_image(&layout, "9").expect("fixture image");
    forge_testkit::oci::write_image(&layout, "seed").expect("seed image");
    skopeo_push(&layout, "seed", &format!("{}/ci/late:seed", s.a.host()));
    skopeo_push(&layout, "seed", &format!("{}/prod/late:seed", s.b.host()));
    let ci = format!("oci:{}:9", layout.display());
    let dev = format!("{}/ci/late:9", s.a.host());
    let prod = format!("{}/prod/late:9", s.b.host());
    for (from, to) in [(&ci, &dev), (&dev, &prod)] {
        assert_success(&forge_in(s.dir.path(), &["copy", from, to]));
    }

    // Signed after the promotion: each copy again brings the SBOM, and only the SBOM.
    attach_sbom(&layout, &digest);
    for (from, to) in [(&ci, &dev), (&dev, &prod)] {
        let out = forge_in(s.dir.path(), &["copy", from, to]);
        assert_success(&out);
        let text = stdout(&out);
        assert!(
            text.starts_with(&format!("{to} already holds {digest} (verified: true); referrers brought up to date: 1 copied")),
            "{text}"
        );
    }
    let out = forge_in(s.dir.path(), &["copy", &dev, &prod]);
    assert_success(&out);
    assert_eq!(
        stdout(&out),
        format!("{prod} already holds {digest} (verified: true); nothing uploaded\n")
    );
}

/// A source whose referrer list cannot be read on a re-promotion (here a fallback index named
/// in `index.json` whose blob is gone): the image is there and verified, so the copy succeeds,
/// and the text says the referrers were not compared and why.
#[test]
fn a_re_promotion_that_cannot_list_referrers_succeeds_and_says_they_were_not_compared() {
    let Some(s) = setup() else { return };
    let layout = s.dir.path().join("unlisted");
    let digest = forge_testkit::oci::write_image(&layout, "5").expect("fixture image");
    let src = format!("oci:{}:5", layout.display());
    let dst = format!("{}/prod/app:5", s.b.host());
    assert_success(&forge_in(s.dir.path(), &["copy", &src, &dst]));

    attach_sbom(&layout, &digest);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("JSON");
    let fallback_name = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    let fallback = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == fallback_name.as_str())
        .and_then(|m| m["digest"].as_str())
        .expect("attach_sbom named a fallback index")
        .to_owned();
    std::fs::remove_file(
        layout
            .join("blobs/sha256")
            .join(fallback.trim_start_matches("sha256:")),
    )
    .expect("remove the fallback index blob");

    let out = forge_in(s.dir.path(), &["copy", &src, &dst]);
    assert_success(&out);
    let text = stdout(&out);
    let expected_start = format!(
        "{dst} already holds {digest} (verified: true); nothing uploaded\n  referrers not compared: "
    );
    assert!(text.starts_with(&expected_start), "{text}");
    assert!(
        text.contains(&fallback),
        "the reason names the missing blob: {text}"
    );
}

#[test]
fn refusals_exit_2_with_one_paragraph_and_failures_exit_1() {
    let Some(s) = setup() else { return };
    let a = s.a.host();
    let b = s.b.host();
    let src = format!("{a}/ci/app:7");
    let before = s.b.repositories();

    let out = forge_in(
        s.dir.path(),
        &["copy", &src, &format!("{b}/team/missing:7")],
    );
    assert_exit(&out, 2);
    let message = stderr(&out).replace(&b, "<registry>");
    insta::assert_snapshot!(message.trim_end(), @"error: repository 'team/missing' does not exist in registry '<registry>': repositories are provisioned by the Platform team via Blueprint — ask in #platform-support. Nothing was uploaded.");
    assert_eq!(s.b.repositories(), before);

    let out = forge_in(
        s.dir.path(),
        &["copy", &src, &format!("{b}/prod/app:9"), "--threads", "0"],
    );
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--threads"), "{}", stderr(&out));

    let out = forge_in(
        s.dir.path(),
        &["copy", &src, &format!("{b}/prod/app:latest")],
    );
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("'latest' is mutable"),
        "{}",
        stderr(&out)
    );

    let out = forge_in(
        s.dir.path(),
        &[
            "copy",
            &src,
            &format!("{b}/prod/app:v7"),
            "--tag-pattern",
            "[0-9]+",
        ],
    );
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("tag pattern '[0-9]+'"),
        "{}",
        stderr(&out)
    );

    let out = forge_in(s.dir.path(), &["copy", &src, &format!("{b}/prod/app:seed")]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("already points at"),
        "{}",
        stderr(&out)
    );

    let out = forge_in(
        s.dir.path(),
        &["copy", "Not A Ref", &format!("{b}/prod/app:1")],
    );
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("invalid image reference 'Not A Ref'"),
        "{}",
        stderr(&out)
    );

    let out = forge_in(s.dir.path(), &["verify", &src, "--digest", "sha256:nope"]);
    assert_exit(&out, 2);

    // A registry that is not there: a failure (exit 1), not an input problem.
    let port = forge_testkit::free_port();
    let out = forge_in(
        s.dir.path(),
        &["digest", &format!("127.0.0.1:{port}/ci/app:7")],
    );
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("connection failed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        s.b.repositories(),
        before,
        "a refused copy created a repository"
    );
}

#[test]
fn copy_to_and_from_an_oci_layout() {
    let Some(s) = setup() else { return };
    let out_dir = s.dir.path().join("exported");
    let src = format!("{}/ci/app:7", s.a.host());
    let dst = format!("oci:{}:7", out_dir.display());
    let out = forge_in(s.dir.path(), &["copy", &src, &dst]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("not an OCI image layout"),
        "{}",
        stderr(&out)
    );
    assert!(!out_dir.exists());

    forge_testkit::oci::write_empty_layout(&out_dir).expect("empty layout");
    let out = forge_in(s.dir.path(), &["copy", &src, &dst, "--output", "json"]);
    assert_success(&out);
    assert_eq!(skopeo_digest(&dst), s.digest);

    let back = format!("{}/prod/app:70", s.b.host());
    let out = forge_in(s.dir.path(), &["copy", &dst, &back, "--output", "json"]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(report["verified"], true);
    assert_eq!(skopeo_digest(&format!("docker://{back}")), s.digest);
}

/// A Docker config that does not parse is bad input (exit 2), passed explicitly or found by
/// default, and the error says where. Nothing is contacted.
#[test]
fn a_malformed_docker_config_exits_2_with_the_json_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.json"), "{\"auths\": {,}}").expect("config");
    let config = dir.path().join("config.json");
    let refs = ["copy", "127.0.0.1:9/ci/app:1", "127.0.0.1:9/prod/app:1"];

    let mut args = refs.to_vec();
    args.extend(["--docker-config", config.to_str().expect("UTF-8 path")]);
    let explicit = forge_in(dir.path(), &args);
    let by_default = crate::support::forge()
        .args(refs)
        .env("DOCKER_CONFIG", dir.path())
        .current_dir(dir.path())
        .output()
        .expect("run forge");
    for out in [explicit, by_default] {
        assert_exit(&out, 2);
        let text = stderr(&out);
        assert!(
            text.contains("is not valid JSON (a syntax error at line 1, column 12)"),
            "{text}"
        );
    }
}
