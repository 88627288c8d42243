//! Content digests (`sha256:<hex>`), media types and descriptors.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A content digest. Only `sha256` is supported: it is what every registry Forge talks to
/// produces, and what the OCI image spec requires registries to accept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid digest '{input}': {reason}; expected 'sha256:' followed by 64 lowercase hex characters"
)]
pub struct DigestError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// Builds a digest from a finished sha256 hasher.
    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// The algorithm part (always `sha256`).
    pub fn algorithm(&self) -> &str {
        "sha256"
    }

    /// The 64 hex characters after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The referrers fallback tag for this digest (`sha256-<hex>`), OCI distribution spec 1.1.
    pub fn referrers_tag(&self) -> String {
        format!("sha256-{}", self.hex())
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DigestError {
            input: s.to_owned(),
            reason,
        };
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(err("missing ':' between algorithm and hex"));
        };
        if algorithm != "sha256" {
            return Err(err("only the sha256 algorithm is supported"));
        }
        if hex.len() != 64 {
            return Err(err("sha256 hex must be exactly 64 characters"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err("hex must be lowercase 0-9a-f"));
        }
        Ok(Digest(s.to_owned()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Media types of manifests and layers Forge handles.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct MediaType;

impl MediaType {
    /// OCI image index.
    pub const OCI_INDEX: &'static str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &'static str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &'static str = "application/vnd.oci.image.config.v1+json";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &'static str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI uncompressed layer.
    pub const OCI_LAYER: &'static str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI empty descriptor (`{}`), used by artifacts.
    pub const OCI_EMPTY: &'static str = "application/vnd.oci.empty.v1+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &'static str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &'static str =
        "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &'static str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &'static str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// The `Accept` header value for manifest requests: all four manifest types.
    pub const MANIFEST_ACCEPT: &'static str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

    /// True for an index / manifest list media type.
    pub fn is_index(media_type: &str) -> bool {
        media_type == Self::OCI_INDEX || media_type == Self::DOCKER_MANIFEST_LIST
    }

    /// True for an image manifest media type (OCI or Docker schema 2).
    pub fn is_manifest(media_type: &str) -> bool {
        media_type == Self::OCI_MANIFEST || media_type == Self::DOCKER_MANIFEST
    }
}

/// A content descriptor, as found in manifests and indexes. Unknown fields are ignored when
/// parsing; Forge never re-serializes a manifest it copies (the raw bytes are pushed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Artifact type (OCI 1.1 referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform of an index entry (kept as raw JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
    /// External URLs (foreign / non-distributable layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    /// True for a layer a registry is not expected to hold (Windows foreign layers with URLs).
    pub fn is_foreign(&self) -> bool {
        (self.media_type.contains("foreign") || self.media_type.contains("nondistributable"))
            && self.urls.as_ref().is_some_and(|u| !u.is_empty())
    }
}

/// The parts of a manifest or index that matter for copying: what it references.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRefs {
    /// `schemaVersion`.
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// `mediaType` (optional in OCI documents).
    #[serde(default)]
    pub media_type: Option<String>,
    /// `artifactType` (OCI 1.1).
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Image config.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Image layers.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Index entries.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// OCI 1.1 subject.
    #[serde(default)]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ManifestRefs {
    /// Parses the references out of raw manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Determines the media type from the document's own `mediaType` (when it is an index or
    /// manifest type), then the served `Content-Type`, then any `mediaType`, then its shape.
    /// The document wins over the label: an index served as a manifest is still an index, and
    /// its platform manifests must be copied.
    pub fn effective_media_type(&self, content_type: Option<&str>) -> String {
        let known = |m: &str| MediaType::is_index(m) || MediaType::is_manifest(m);
        if let Some(m) = self.media_type.as_deref().filter(|m| known(m)) {
            return m.to_owned();
        }
        let served = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim())
            .filter(|c| known(c));
        if let Some(c) = served {
            return c.to_owned();
        }
        if let Some(m) = &self.media_type {
            return m.clone();
        }
        if !self.manifests.is_empty() || self.config.is_none() {
            MediaType::OCI_INDEX.to_owned()
        } else {
            MediaType::OCI_MANIFEST.to_owned()
        }
    }

    /// Blobs (config and layers) this manifest references, foreign layers excluded.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter())
            .filter(|d| !d.is_foreign())
    }
}
