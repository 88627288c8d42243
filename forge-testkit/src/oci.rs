//! Deterministic OCI image layouts for fixtures and the demo: the same inputs give the same
//! bytes, so digests repeat across runs and machines.

use std::path::Path;

use sha2::{Digest as _, Sha256};

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    std::fs::write(path, contents).map_err(|e| format!("write {}: {e}", path.display()))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Stores `bytes` as a blob of the layout at `layout` and returns its digest.
pub fn put_blob(layout: &Path, bytes: &[u8]) -> Result<String, String> {
    let digest = sha256(bytes);
    let hex = digest.trim_start_matches("sha256:");
    write(&layout.join("blobs/sha256").join(hex), bytes)?;
    Ok(digest)
}

/// Creates an empty OCI image layout (a pre-provisioned repository with no tags).
pub fn write_empty_layout(layout: &Path) -> Result<(), String> {
    write(
        &layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    write(
        &layout.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )?;
    std::fs::create_dir_all(layout.join("blobs/sha256")).map_err(|e| e.to_string())
}

/// Builds a one-layer image whose bytes depend only on `build`, adds it to the layout under
/// the tag `build`, and returns the manifest digest.
pub fn write_image(layout: &Path, build: &str) -> Result<String, String> {
    if !layout.join("oci-layout").exists() {
        write_empty_layout(layout)?;
    }
    let layer = tar(&[(
        "app/build.txt",
        format!("forge fixture image, CI build {build}\n").as_bytes(),
    )]);
    let layer_digest = put_blob(layout, &layer)?;
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/cat","/app/build.txt"],"Labels":{{"build":"{build}"}}}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let config_digest = put_blob(layout, config.as_bytes())?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_digest = put_blob(layout, manifest.as_bytes())?;
    let index_path = layout.join("index.json");
    let index_text = std::fs::read_to_string(&index_path).map_err(|e| e.to_string())?;
    let mut index: serde_json::Value =
        serde_json::from_str(&index_text).map_err(|e| e.to_string())?;
    let manifests = index["manifests"]
        .as_array_mut()
        .ok_or("index.json without manifests")?;
    manifests.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest.len(),
        "annotations": { "org.opencontainers.image.ref.name": build },
    }));
    write(
        &index_path,
        serde_json::to_vec(&index).map_err(|e| e.to_string())?,
    )?;
    Ok(manifest_digest)
}

/// A ustar archive with fixed metadata (mtime 0, root:root), so the bytes are deterministic.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..108].copy_from_slice(b"0000644\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[148..156].copy_from_slice(b"        ");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn tar_is_deterministic_and_well_formed() {
        let a = tar(&[("app/build.txt", b"hello\n")]);
        assert_eq!(a, tar(&[("app/build.txt", b"hello\n")]));
        assert_eq!(a.len(), 512 + 512 + 1024);
        // GNU tar agrees the checksum and size are right.
        let dir = std::env::temp_dir().join(format!("forge-demo-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.tar"), &a).unwrap();
        let out = Command::new("tar")
            .args(["-tvf", "x.tar"])
            .current_dir(&dir)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("app/build.txt"));
    }

    #[test]
    fn images_for_different_builds_differ_and_rebuild_identically() {
        let base = std::env::temp_dir().join(format!("forge-demo-img-{}", std::process::id()));
        let first = write_image(&base.join("a"), "1").unwrap();
        let again = write_image(&base.join("b"), "1").unwrap();
        let other = write_image(&base.join("c"), "2").unwrap();
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(first, again);
        assert_ne!(first, other);
    }
}
