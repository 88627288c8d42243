//! Image fixtures built in-test with deterministic bytes, and raw-HTTP pushes to a real registry
//! (no forge-registry code involved, so the copy under test never grades its own fixtures).
//! Manifests are deliberately NOT canonical JSON (odd key order, extra spaces, newlines): a
//! client that re-serializes would change the digest.

#![allow(dead_code)]

use reqwest::StatusCode;
use reqwest::header;
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// `sha256:<hex>`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A manifest (or index) with the blobs and child manifests it needs.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
    pub digest: String,
    pub blobs: Vec<Vec<u8>>,
    pub children: Vec<Image>,
}

impl Image {
    /// Every blob digest of the image (children included).
    pub fn blob_digests(&self) -> Vec<String> {
        let mut out: Vec<String> = self.blobs.iter().map(|b| sha256(b)).collect();
        for c in &self.children {
            out.extend(c.blob_digests());
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A single-arch OCI image: a config and `layers` layers of `layer_size` bytes.
pub fn oci_image(seed: u64, layers: usize, layer_size: usize) -> Image {
    let layer_blobs: Vec<Vec<u8>> = (0..layers)
        .map(|i| bytes(seed * 100 + i as u64, layer_size))
        .collect();
    let config = format!(
        "{{\"os\":\"linux\",  \"architecture\":\"amd64\",\"rootfs\":{{\"diff_ids\":[{}],\"type\":\"layers\"}},\"seed\":{seed}}}",
        layer_blobs
            .iter()
            .map(|l| format!("\"{}\"", sha256(l)))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .into_bytes();
    let layers_json: Vec<String> = layer_blobs
        .iter()
        .map(|l| {
            format!(
                "{{ \"size\" : {},\n      \"digest\":\"{}\", \"mediaType\": \"application/vnd.oci.image.layer.v1.tar+gzip\" }}",
                l.len(),
                sha256(l)
            )
        })
        .collect();
    let manifest = format!(
        "{{\n  \"layers\": [ {} ],\n   \"config\" : {{ \"size\": {}, \"mediaType\":\"application/vnd.oci.image.config.v1+json\", \"digest\": \"{}\" }},\n\t\"mediaType\": \"{OCI_MANIFEST}\", \"schemaVersion\" :2\n}}\n",
        layers_json.join(",\n    "),
        config.len(),
        sha256(&config)
    )
    .into_bytes();
    let mut blobs = vec![config];
    blobs.extend(layer_blobs);
    Image {
        digest: sha256(&manifest),
        manifest,
        media_type: OCI_MANIFEST,
        blobs,
        children: Vec::new(),
    }
}

/// A Docker schema 2 image for one platform.
pub fn docker_image(seed: u64, arch: &str, layer_size: usize) -> Image {
    let layer = bytes(seed, layer_size);
    let config = format!(
        "{{\"architecture\":\"{arch}\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{}\"]}}}}",
        sha256(&layer)
    )
    .into_bytes();
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{DOCKER_MANIFEST}\",  \"config\":{{\"mediaType\":\"application/vnd.docker.container.image.v1+json\",\"size\":{},\"digest\":\"{}\"}},\"layers\":[{{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"size\":{},\"digest\":\"{}\"}}]   }}",
        config.len(),
        sha256(&config),
        layer.len(),
        sha256(&layer)
    )
    .into_bytes();
    Image {
        digest: sha256(&manifest),
        manifest,
        media_type: DOCKER_MANIFEST,
        blobs: vec![config, layer],
        children: Vec::new(),
    }
}

/// A multi-arch Docker manifest list (amd64 + arm64) over two Docker images; the children share
/// no blobs.
pub fn multi_arch(seed: u64, layer_size: usize) -> Image {
    let children = vec![
        docker_image(seed * 10 + 1, "amd64", layer_size),
        docker_image(seed * 10 + 2, "arm64", layer_size),
    ];
    let entries: Vec<String> = children
        .iter()
        .zip(["amd64", "arm64"])
        .map(|(c, arch)| {
            format!(
                "{{\"platform\": {{\"os\":\"linux\",\"architecture\":\"{arch}\"}}, \"size\":{}, \"digest\":\"{}\", \"mediaType\":\"{DOCKER_MANIFEST}\"}}",
                c.manifest.len(),
                c.digest
            )
        })
        .collect();
    let manifest = format!(
        "{{ \"manifests\": [\n {} \n],\n \"mediaType\":\"{DOCKER_LIST}\", \"schemaVersion\": 2 }}",
        entries.join(",\n ")
    )
    .into_bytes();
    Image {
        digest: sha256(&manifest),
        manifest,
        media_type: DOCKER_LIST,
        blobs: Vec::new(),
        children,
    }
}

/// An OCI 1.1 artifact (an "SBOM") whose subject is `subject`.
pub fn referrer(seed: u64, subject: &Image) -> Image {
    let empty = b"{}".to_vec();
    let sbom = format!("{{\"spdxVersion\":\"SPDX-2.3\",\"name\":\"fixture-{seed}\"}}").into_bytes();
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"artifactType\":\"application/spdx+json\",\"config\":{{\"mediaType\":\"application/vnd.oci.empty.v1+json\",\"digest\":\"{}\",\"size\":2}},\"layers\":[{{\"mediaType\":\"application/spdx+json\",\"digest\":\"{}\",\"size\":{}}}],\"subject\":{{\"mediaType\":\"{}\",\"digest\":\"{}\",\"size\":{}}},\"annotations\":{{\"org.example.seed\":\"{seed}\"}}}}",
        sha256(&empty),
        sha256(&sbom),
        sbom.len(),
        subject.media_type,
        subject.digest,
        subject.manifest.len()
    )
    .into_bytes();
    Image {
        digest: sha256(&manifest),
        manifest,
        media_type: OCI_MANIFEST,
        blobs: vec![empty, sbom],
        children: Vec::new(),
    }
}

/// The OCI 1.1 referrers fallback tag of `digest` (`sha256-<hex>`).
pub fn fallback_tag(digest: &str) -> String {
    format!("sha256-{}", digest.trim_start_matches("sha256:"))
}

/// Pushes `referrer` by digest and lists it (alone) in the fallback index of `subject`, the
/// way a client attaches an artifact on a registry without the referrers API.
pub async fn attach(host: &str, repo: &str, subject: &Image, referrer: &Image) {
    push(host, repo, &referrer.digest, referrer).await;
    put_manifest(
        host,
        repo,
        &fallback_tag(&subject.digest),
        OCI_INDEX,
        &fallback_index(&[referrer]),
    )
    .await;
}

/// The OCI 1.1 referrers fallback index (`sha256-<hex>` tag) listing `referrers`.
pub fn fallback_index(referrers: &[&Image]) -> Vec<u8> {
    let entries: Vec<String> = referrers
        .iter()
        .map(|r| {
            format!(
                "{{\"mediaType\":\"{}\",\"digest\":\"{}\",\"size\":{},\"artifactType\":\"application/spdx+json\"}}",
                r.media_type,
                r.digest,
                r.manifest.len()
            )
        })
        .collect();
    format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[{}]}}",
        entries.join(",")
    )
    .into_bytes()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

/// Pushes a blob with a monolithic POST + PUT.
pub async fn push_blob(host: &str, repo: &str, blob: &[u8]) {
    let client = http();
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
        .expect("Location")
        .to_owned();
    let url = reqwest::Url::parse(&format!("http://{host}/"))
        .and_then(|b| b.join(&location))
        .expect("upload URL");
    let mut url = url;
    url.query_pairs_mut().append_pair("digest", &sha256(blob));
    let resp = client
        .put(url)
        .body(blob.to_vec())
        .send()
        .await
        .expect("PUT blob");
    assert_eq!(resp.status(), StatusCode::CREATED, "blob upload failed");
}

/// PUTs raw manifest bytes under `reference`.
pub async fn put_manifest(host: &str, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let resp = http()
        .put(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header(header::CONTENT_TYPE, media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .expect("PUT manifest");
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::CREATED, "manifest push failed: {body}");
}

/// Pushes `image` (blobs, children by digest, then the top manifest under `reference`).
pub async fn push(host: &str, repo: &str, reference: &str, image: &Image) {
    for child in &image.children {
        Box::pin(push(host, repo, &child.digest, child)).await;
    }
    for blob in &image.blobs {
        push_blob(host, repo, blob).await;
    }
    put_manifest(host, repo, reference, image.media_type, &image.manifest).await;
}

/// Creates `repo` on a Distribution registry the only way it allows: a push (a tiny image
/// tagged `provisioned`), standing in for the platform team's Blueprint provisioning.
pub async fn provision(host: &str, repo: &str) {
    push(host, repo, "provisioned", &oci_image(9999, 1, 16)).await;
}

/// The sha256 of the raw manifest bytes `host/repo:reference` serves (`None` on 404).
pub async fn manifest_digest(host: &str, repo: &str, reference: &str) -> Option<String> {
    let resp = http()
        .get(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header(header::ACCEPT, ACCEPT)
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

/// The raw manifest bytes (`None` on 404).
pub async fn manifest_bytes(host: &str, repo: &str, reference: &str) -> Option<Vec<u8>> {
    let resp = http()
        .get(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header(header::ACCEPT, ACCEPT)
        .send()
        .await
        .expect("GET manifest");
    if resp.status() == StatusCode::NOT_FOUND {
        return None;
    }
    Some(resp.bytes().await.expect("manifest body").to_vec())
}

/// Whether `repo` holds blob `digest`.
pub async fn blob_exists(host: &str, repo: &str, digest: &str) -> bool {
    http()
        .head(format!("http://{host}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .expect("HEAD blob")
        .status()
        .is_success()
}

/// skopeo (the independent oracle) reads the raw manifest of `image` (a skopeo transport
/// reference such as `docker://host/repo:tag` or `oci:dir:tag`) and returns its sha256.
pub fn skopeo_digest(image: &str) -> String {
    let out = forge_testkit::skopeo_run(&["inspect", "--raw", "--tls-verify=false", image]);
    sha256(&out.stdout)
}
