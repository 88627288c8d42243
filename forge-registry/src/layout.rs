//! OCI image layout directories (`oci-layout`, `index.json`, `blobs/sha256/…`), written
//! atomically: every file is written to a temporary name in the same directory and renamed.
//! Changes to `index.json` hold an exclusive lock on `index.json.lock` beside it (an advisory
//! `flock`, so concurrent Forge processes and tasks serialise; other tools do not take it), and
//! a copied tag is checked again under the lock, so a layout's tags are as immutable as a
//! registry's.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::digest::{Descriptor, Digest, ManifestRefs, MediaType};
use crate::error::{Error, ErrorKind};
use crate::transfer::{BlobStream, Fetched};

/// The annotation naming a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| {
        Error::new(ErrorKind::Io {
            path: path.to_owned(),
            source,
        })
    }
}

fn tmp_name(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()))
}

/// A temp file removed on drop unless it was renamed into place: a write that fails, or is
/// cancelled (a sibling transfer failed and the copy dropped this one), leaves nothing behind.
struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    fn new(dir: &Path, name: &str) -> Self {
        TempFile {
            path: tmp_name(dir, name),
            kept: false,
        }
    }

    /// Creates the file. Synchronously: a create run on the blocking pool could still be
    /// running after a cancelled write dropped this guard, and make the file after its
    /// removal.
    fn create(&self) -> Result<tokio::fs::File, Error> {
        std::fs::File::create(&self.path)
            .map(tokio::fs::File::from_std)
            .map_err(io(&self.path))
    }

    /// Renames the file to `dest` (replacing what is there).
    async fn rename_to(mut self, dest: &Path) -> Result<(), Error> {
        tokio::fs::rename(&self.path, dest)
            .await
            .map_err(io(dest))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            // Synchronous: a drop may run outside the runtime, and this is one unlink.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether the file at `path` holds exactly the content `digest` names (and `size` bytes,
/// when given). Blobs are named by their digest, so a file of the right size with other
/// bytes (a damaged disk, an interrupted tool) must not count as present.
fn file_holds(path: &Path, digest: &Digest, size: Option<u64>) -> std::io::Result<bool> {
    use std::io::Read as _;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size.is_some_and(|n| file.metadata().map(|m| m.len()).ok() != Some(n)) {
        return Ok(false);
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_hasher(hasher) == *digest)
}

/// Whether `name` is a referrers fallback tag (`sha256-` and 64 hex digits).
fn is_referrers_tag(name: &str) -> bool {
    name.strip_prefix("sha256-")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Layout {
    pub(crate) fn new(path: &Path) -> Self {
        Layout {
            path: path.to_owned(),
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.path.join("blobs").join("sha256").join(digest.hex())
    }

    pub(crate) fn exists(&self) -> bool {
        self.path.join("oci-layout").is_file()
    }

    pub(crate) fn require(&self) -> Result<(), Error> {
        if self.exists() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::OciLayout {
                path: self.path.clone(),
                reason: "is not an OCI image layout (no 'oci-layout' file); create the layout first (for an empty one: mkdir -p DIR/blobs/sha256 && echo '{\"imageLayoutVersion\":\"1.0.0\"}' > DIR/oci-layout && echo '{\"schemaVersion\":2,\"manifests\":[]}' > DIR/index.json)".to_owned(),
            }))
        }
    }

    async fn read_index(&self) -> Result<Map<String, Value>, Error> {
        let path = self.path.join("index.json");
        let text = match tokio::fs::read(&path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut m = Map::new();
                m.insert("schemaVersion".to_owned(), Value::from(2));
                m.insert("manifests".to_owned(), Value::Array(Vec::new()));
                return Ok(m);
            }
            Err(e) => return Err(io(&path)(e)),
        };
        match serde_json::from_slice::<Value>(&text) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Error::new(ErrorKind::OciLayout {
                path: self.path.clone(),
                reason: "index.json is not a JSON object; repair or recreate the layout".to_owned(),
            })),
        }
    }

    fn entries(index: &Map<String, Value>) -> Vec<Descriptor> {
        index
            .get("manifests")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| serde_json::from_value(v.clone()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn find(&self, reference: &str) -> Result<Option<Descriptor>, Error> {
        let index = self.read_index().await?;
        let entries = Self::entries(&index);
        if let Ok(d) = reference.parse::<Digest>() {
            return Ok(entries.into_iter().find(|e| e.digest == d));
        }
        // An entry for this tag that does not parse (no size, an unknown digest algorithm) is
        // not "no such tag": that would let a copy write the tag over it.
        let unreadable = index
            .get("manifests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v["annotations"][REF_NAME].as_str() == Some(reference))
            .find_map(|v| serde_json::from_value::<Descriptor>(v.clone()).err());
        if let Some(e) = unreadable {
            return Err(Error::new(ErrorKind::OciLayout {
                path: self.path.clone(),
                reason: format!(
                    "index.json's entry for '{reference}' is not a valid descriptor ({e}); repair or recreate the layout"
                ),
            }));
        }
        let tagged = entries.iter().find(|e| {
            e.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_some_and(|n| n == reference)
        });
        if let Some(e) = tagged {
            return Ok(Some(e.clone()));
        }
        // Like skopeo: `oci:<dir>` without a tag means the layout's only image. Referrers'
        // fallback indexes (ref names `sha256-<hex>`) sit next to it and do not count.
        let images: Vec<Descriptor> = entries
            .into_iter()
            .filter(|e| {
                !e.annotations
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|n| is_referrers_tag(n))
            })
            .collect();
        match images.as_slice() {
            [only] if reference == "latest" => Ok(Some(only.clone())),
            // Not "does not exist": the image is there, among others.
            [_, _, ..] if reference == "latest" => {
                let dir = self.path.display();
                let mut names: Vec<String> = images
                    .iter()
                    .take(5)
                    .map(
                        |e| match e.annotations.as_ref().and_then(|a| a.get(REF_NAME)) {
                            Some(tag) => format!("oci:{dir}:{tag}"),
                            None => format!("oci:{dir}@{}", e.digest),
                        },
                    )
                    .collect();
                if images.len() > 5 {
                    names.push("…".to_owned());
                }
                // A refusal of the reference, not damage to the layout.
                Err(Error::new(ErrorKind::InvalidInput {
                    message: format!(
                        "OCI layout {dir} holds {} images and none is tagged 'latest', so a reference without a tag does not say which: name one ({})",
                        images.len(),
                        names.join(", ")
                    ),
                }))
            }
            _ => Ok(None),
        }
    }

    /// The manifest for a tag or digest; a digest not in `index.json` is read from `blobs/`.
    pub(crate) async fn get_manifest(&self, reference: &str) -> Result<Option<Fetched>, Error> {
        let entry = self.find(reference).await?;
        let digest = match (&entry, reference.parse::<Digest>()) {
            (Some(e), _) => e.digest.clone(),
            (None, Ok(d)) => d,
            (None, Err(_)) => return Ok(None),
        };
        let path = self.blob_path(&digest);
        let corrupt = |reason: String| {
            Error::new(ErrorKind::OciLayout {
                path: self.path.clone(),
                reason: format!("{reason}: the layout is corrupt; repair or recreate it"),
            })
        };
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => Bytes::from(b),
            // A tag whose manifest is gone is not a free tag.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && entry.is_some() => {
                return Err(corrupt(format!(
                    "index.json lists {digest} for '{reference}' but {} is missing",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        // Blobs are named by their digest; a file that does not hash to its name must not be
        // copied on as that digest, nor taken as present.
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(corrupt(format!(
                "{} holds bytes whose digest is {actual}",
                path.display()
            )));
        }
        let refs = ManifestRefs::parse(&bytes).unwrap_or_default();
        let media_type = entry
            .map(|e| e.media_type)
            .unwrap_or_else(|| refs.effective_media_type(None));
        Ok(Some(Fetched::new(bytes, media_type, None)))
    }

    /// Whether the layout holds `desc`: its file has the size and hashes to the digest.
    pub(crate) async fn has_blob(&self, desc: &Descriptor) -> Result<bool, Error> {
        let path = self.blob_path(&desc.digest);
        let (digest, size) = (desc.digest.clone(), desc.size);
        let checked = path.clone();
        tokio::task::spawn_blocking(move || file_holds(&checked, &digest, Some(size)))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })
            })?
            .map_err(io(&path))
    }

    pub(crate) async fn open_blob(&self, desc: &Descriptor) -> Result<BlobStream, Error> {
        let path = self.blob_path(&desc.digest);
        let file = tokio::fs::File::open(&path).await.map_err(io(&path))?;
        let stream = futures_util::stream::unfold(file, |mut file| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(Box::new(e) as crate::BoxError), file)),
            }
        });
        Ok(Box::pin(stream))
    }

    /// Writes a blob from a (verifying) stream: temp file, then rename.
    pub(crate) async fn write_blob(
        &self,
        digest: &Digest,
        mut stream: BlobStream,
    ) -> Result<u64, Error> {
        let dir = self.path.join("blobs").join("sha256");
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let tmp = TempFile::new(&dir, digest.hex());
        let mut file = tmp.create()?;
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| {
                Error::new(ErrorKind::Transport {
                    context: format!("reading blob {digest}"),
                    source,
                })
            })?;
            total += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io(&tmp.path))?;
        }
        file.sync_all().await.map_err(io(&tmp.path))?;
        drop(file);
        tmp.rename_to(&self.blob_path(digest)).await?;
        Ok(total)
    }

    async fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let dir = path.parent().unwrap_or(&self.path);
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = TempFile::new(dir, &name);
        let mut file = tmp.create()?;
        file.write_all(bytes).await.map_err(io(&tmp.path))?;
        file.sync_all().await.map_err(io(&tmp.path))?;
        drop(file);
        tmp.rename_to(path).await
    }

    /// Stores a manifest blob; with `tag`, (re)points the tag in `index.json` at it; with
    /// `top` and no tag, lists it in `index.json` untagged.
    pub(crate) async fn put_manifest(
        &self,
        manifest: &Fetched,
        tag: Option<&str>,
        top: bool,
    ) -> Result<(), Error> {
        let blob = self.blob_path(&manifest.digest);
        // A damaged file under the manifest's name is replaced, not trusted.
        if !file_holds(&blob, &manifest.digest, None).map_err(io(&blob))? {
            self.write_atomic(&blob, &manifest.bytes).await?;
        }
        if !top && tag.is_none() {
            return Ok(());
        }
        // index.json is read, changed and replaced: two writers (pipelines copying different
        // tags into one layout) would each replace the other's change. An exclusive lock on a
        // file beside it makes the read-modify-write one step; it is released on drop.
        let _lock = self.lock_index().await?;
        let mut index = self.read_index().await?;
        let mut manifests = index
            .remove("manifests")
            .and_then(|v| match v {
                Value::Array(a) => Some(a),
                _ => None,
            })
            .unwrap_or_default();
        if let Some(tag) = tag {
            let names_tag = |m: &Value| {
                m.get("annotations")
                    .and_then(|a| a.get(REF_NAME))
                    .and_then(Value::as_str)
                    == Some(tag)
            };
            // A copied image's tag is immutable here as in a registry: checked again under
            // the lock, since another writer may have taken it since the copy's first look.
            // (Untagged-top writes re-point the referrers fallback tags, which do change.)
            if top && let Some(existing) = manifests.iter().find(|m| names_tag(m)) {
                let existing = existing.get("digest").and_then(Value::as_str);
                if existing == Some(manifest.digest.as_str()) {
                    return Ok(());
                }
                return Err(Error::new(ErrorKind::TagTakenDuringCopy {
                    destination: format!("oci:{}:{tag}", self.path.display()),
                    existing: existing.and_then(|d| d.parse().ok()).ok_or_else(|| {
                        Error::new(ErrorKind::OciLayout {
                            path: self.path.clone(),
                            reason: format!(
                                "index.json's entry for '{tag}' has no valid digest; repair or recreate the layout"
                            ),
                        })
                    })?,
                    source: manifest.digest.clone(),
                }));
            }
            manifests.retain(|m| !names_tag(m));
        } else if manifests
            .iter()
            .any(|m| m.get("digest").and_then(Value::as_str) == Some(manifest.digest.as_str()))
        {
            index.insert("manifests".to_owned(), Value::Array(manifests));
            return Ok(());
        }
        let mut entry = serde_json::json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": manifest.bytes.len(),
        });
        if let Some(tag) = tag {
            entry["annotations"] = serde_json::json!({ REF_NAME: tag });
        }
        manifests.push(entry);
        index.insert("manifests".to_owned(), Value::Array(manifests));
        index
            .entry("schemaVersion")
            .or_insert_with(|| Value::from(2));
        index
            .entry("mediaType")
            .or_insert_with(|| Value::from(MediaType::OCI_INDEX));
        let bytes = serde_json::to_vec_pretty(&Value::Object(index)).map_err(|e| {
            Error::new(ErrorKind::OciLayout {
                path: self.path.clone(),
                reason: format!("cannot serialize index.json: {e}"),
            })
        })?;
        self.write_atomic(&self.path.join("index.json"), &bytes)
            .await
    }

    /// Takes the exclusive lock on `index.json.lock` (created on first use), waiting for
    /// another writer to finish.
    async fn lock_index(&self) -> Result<std::fs::File, Error> {
        let path = self.path.join("index.json.lock");
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            file.lock().map_err(io(&path))?;
            Ok(file)
        })
        .await
        .map_err(|e| {
            Error::new(ErrorKind::OciLayout {
                path: self.path.clone(),
                reason: format!("the index.json lock task failed: {e}"),
            })
        })?
    }

    /// Creates an empty layout (`oci-layout`, `index.json`, `blobs/sha256`) at `path`.
    pub(crate) async fn init(path: &Path) -> Result<(), Error> {
        let layout = Layout::new(path);
        tokio::fs::create_dir_all(path.join("blobs/sha256"))
            .await
            .map_err(io(path))?;
        layout
            .write_atomic(
                &path.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )
            .await?;
        if !path.join("index.json").exists() {
            layout
                .write_atomic(
                    &path.join("index.json"),
                    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                )
                .await?;
        }
        Ok(())
    }
}

/// Creates an empty OCI image layout directory (the explicit step Forge requires before it
/// copies into a layout: destinations are never created implicitly).
pub async fn init_oci_layout(path: &Path) -> Result<(), Error> {
    Layout::init(path).await
}
