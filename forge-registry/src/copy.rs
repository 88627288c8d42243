//! `Client::copy`, `resolve`, `verify`, `repository_exists`: options, progress events and
//! reports.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::client::Client;
use crate::digest::{Descriptor, Digest, MediaType};
use crate::error::{Error, ErrorKind};
use crate::layout::Layout;
use crate::reference::Reference;
use crate::transfer::{BlobOutcome, Endpoint, Fetched, copy_blob_once};

/// The default text of [`CopyOptions::support_hint`].
pub const DEFAULT_SUPPORT_HINT: &str =
    "repositories are provisioned by the Platform team via Blueprint — ask in #platform-support";

/// How blobs are uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UploadMode {
    /// One streamed `PUT` with `Content-Length` per blob (fastest; works on ECR for any size).
    #[default]
    Monolithic,
    /// `PATCH` chunks with `Content-Range`, then `PUT ?digest=`. Each chunk is buffered.
    Chunked {
        /// Bytes per `PATCH`.
        chunk_size: usize,
    },
}

/// Progress events, so a caller can draw progress bars. The library never prints.
/// Every method has an empty default.
pub trait Progress: Send + Sync {
    /// A blob transfer starts (`size` bytes).
    fn blob_started(&self, digest: &Digest, size: u64) {
        let _ = (digest, size);
    }
    /// `bytes` more bytes of a blob were sent.
    fn bytes_transferred(&self, digest: &Digest, bytes: u64) {
        let _ = (digest, bytes);
    }
    /// A blob was committed at the destination.
    fn blob_finished(&self, digest: &Digest, size: u64) {
        let _ = (digest, size);
    }
    /// A blob was already present at the destination.
    fn blob_skipped(&self, digest: &Digest, size: u64) {
        let _ = (digest, size);
    }
    /// A blob was mounted from another repository of the same registry.
    fn blob_mounted(&self, digest: &Digest, size: u64) {
        let _ = (digest, size);
    }
    /// A blob transfer failed and will be retried after `delay`. By default a warning is
    /// logged; an implementation that reports retries its own way overrides this.
    fn blob_retrying(&self, digest: &Digest, attempt: u32, delay: Duration, error: &Error) {
        tracing::warn!(%digest, attempt, delay_ms = delay.as_millis(), %error, "blob transfer failed, retrying with a fresh upload session");
    }
    /// A manifest was pushed.
    fn manifest_pushed(&self, digest: &Digest, media_type: &str) {
        let _ = (digest, media_type);
    }
}

/// Options of [`Client::copy`].
#[derive(Clone)]
pub struct CopyOptions {
    /// Parallel blob transfers; `None` uses the client's default.
    pub jobs: Option<usize>,
    /// Copy OCI 1.1 referrers (signatures, SBOMs) of the image and of each platform's manifest,
    /// and their own referrers (a signature of an SBOM), up to 4 levels; a deeper chain is an
    /// error before anything is written (default true). An OCI layout keeps them as fallback
    /// indexes under the ref name `sha256-<hex>`, like a registry without the referrers API.
    /// When the destination tag already holds the image, the referrer lists are still compared
    /// (reads only) and what the destination lacks is copied.
    pub referrers: bool,
    /// The destination tag must match this pattern in full.
    pub tag_pattern: Option<regex::Regex>,
    /// Who to ask when the destination repository is missing.
    pub support_hint: String,
    /// Upload mode.
    pub upload_mode: UploadMode,
    /// Progress observer.
    pub progress: Option<Arc<dyn Progress>>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            jobs: None,
            referrers: true,
            tag_pattern: None,
            support_hint: DEFAULT_SUPPORT_HINT.to_owned(),
            upload_mode: UploadMode::Monolithic,
            progress: None,
        }
    }
}

impl std::fmt::Debug for CopyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOptions")
            .field("jobs", &self.jobs)
            .field("referrers", &self.referrers)
            .field(
                "tag_pattern",
                &self.tag_pattern.as_ref().map(|r| r.as_str()),
            )
            .field("support_hint", &self.support_hint)
            .field("upload_mode", &self.upload_mode)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What a copy did. Serializable for `forge copy --output json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    /// Source reference as given.
    pub source: String,
    /// Destination reference as given.
    pub destination: String,
    /// The image digest (the same at both ends).
    pub digest: Digest,
    /// Media type of the top-level manifest.
    pub media_type: String,
    /// True only when the destination was proven to hold the digest and everything it references.
    pub verified: bool,
    /// Blobs uploaded.
    pub blobs_copied: u32,
    /// Blobs already present at the destination.
    pub blobs_skipped: u32,
    /// Blobs mounted from another repository of the same registry.
    pub blobs_mounted: u32,
    /// Bytes uploaded.
    pub bytes_copied: u64,
    /// Manifests pushed (children, referrers, referrers fallback index, top-level).
    pub manifests_pushed: u32,
    /// Referrer manifests copied.
    pub referrers_copied: u32,
    /// The destination tag already held this digest and everything it references: nothing of
    /// the image was uploaded. Referrers attached at the source since (signatures, SBOMs) are
    /// still copied when the destination lacks them; `referrers_copied` counts them. When that
    /// copy fails, the error is [`ErrorKind::ReferrersNotCopied`](crate::ErrorKind::ReferrersNotCopied).
    pub already_present: bool,
    /// Why the referrer lists of an already-present image were not compared (listing them
    /// failed, or they nest deeper than the copy follows); the image itself is complete. `None`
    /// when they were compared, on every other copy, and with referrers switched off.
    pub referrers_unchecked: Option<String>,
    /// Retries spent on transient failures.
    pub retries: u32,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// What a reference resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// Digest of the manifest bytes.
    pub digest: Digest,
    /// Media type of the manifest.
    pub media_type: String,
    /// Size of the manifest in bytes.
    pub size: u64,
}

/// What [`Client::verify`] proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The reference checked.
    pub reference: String,
    /// The digest proven.
    pub digest: Digest,
    /// Media type of the top-level manifest.
    pub media_type: String,
    /// Manifests fetched and hashed.
    pub manifests_checked: u32,
    /// Blobs confirmed present.
    pub blobs_checked: u32,
    /// Always true in a returned report (failures are errors).
    pub verified: bool,
}

#[derive(Default)]
struct Counters {
    blobs_copied: AtomicU32,
    blobs_skipped: AtomicU32,
    blobs_mounted: AtomicU32,
    bytes_copied: AtomicU64,
    manifests_pushed: AtomicU32,
}

/// An image tree: manifests in push order (children first) and the unique blobs.
#[derive(Default)]
struct Tree {
    manifests: Vec<Fetched>,
    blobs: Vec<Descriptor>,
}

impl Client {
    fn endpoint(
        &self,
        r: &Reference,
        scopes: Vec<String>,
        retries: &Arc<AtomicU32>,
    ) -> Result<Endpoint, Error> {
        match r.layout_path() {
            Some(p) => Ok(Endpoint::Layout(Layout::new(p))),
            None => Ok(Endpoint::Registry(self.repo(r, scopes, retries.clone())?)),
        }
    }

    fn pull_scope(r: &Reference) -> Vec<String> {
        if r.is_oci_layout() {
            Vec::new()
        } else {
            vec![format!("repository:{}:pull", r.repository())]
        }
    }

    /// Copies `src` to `dst` (registry or `oci:` layout at either end), enforcing the
    /// promotion policies, and verifies the result. See the crate docs.
    pub async fn copy(
        &self,
        src: &Reference,
        dst: &Reference,
        options: &CopyOptions,
    ) -> Result<CopyReport, Error> {
        let start = Instant::now();
        let retries = Arc::new(AtomicU32::new(0));
        let result = self.copy_inner(src, dst, options, start, &retries).await;
        stamped(result, start, &retries)
    }

    fn check_destination_policy(dst: &Reference, options: &CopyOptions) -> Result<(), Error> {
        let Some(tag) = dst.tag() else {
            // By digest only: nothing is tagged, so there is no tag to hold to a pattern; but
            // a caller that set one expects every destination to carry a matching tag.
            if let (Some(_), Some(pattern)) = (dst.digest(), &options.tag_pattern) {
                return Err(Error::new(ErrorKind::InvalidInput {
                    message: format!(
                        "destination '{dst}' has no tag, and the tag pattern '{}' requires one: copy to {}:<a tag matching it>",
                        pattern.as_str(),
                        dst.without_tag_or_digest()
                    ),
                }));
            }
            if dst.digest().is_some() {
                return Ok(());
            }
            return Err(Error::new(ErrorKind::InvalidInput {
                message: format!(
                    "destination '{dst}' has no tag: give an explicit immutable tag (e.g. {dst}:1.2.3)"
                ),
            }));
        };
        if tag == "latest" {
            return Err(Error::new(ErrorKind::MutableTagRefused {
                destination: dst.to_string(),
                tag: tag.to_owned(),
            }));
        }
        if let Some(pattern) = &options.tag_pattern {
            let anchored = regex::Regex::new(&format!("^(?:{})$", pattern.as_str()));
            let matches = match anchored {
                Ok(re) => re.is_match(tag),
                Err(_) => pattern
                    .find(tag)
                    .is_some_and(|m| m.start() == 0 && m.end() == tag.len()),
            };
            if !matches {
                return Err(Error::new(ErrorKind::TagPatternMismatch {
                    tag: tag.to_owned(),
                    pattern: pattern.as_str().to_owned(),
                }));
            }
        }
        Ok(())
    }

    async fn copy_inner(
        &self,
        src: &Reference,
        dst: &Reference,
        options: &CopyOptions,
        start: Instant,
        retries: &Arc<AtomicU32>,
    ) -> Result<CopyReport, Error> {
        Self::check_destination_policy(dst, options)?;
        let same_registry =
            !src.is_oci_layout() && !dst.is_oci_layout() && src.registry() == dst.registry();
        let mut dst_scopes = Vec::new();
        if !dst.is_oci_layout() {
            dst_scopes.push(format!("repository:{}:push,pull", dst.repository()));
            if same_registry && src.repository() != dst.repository() {
                dst_scopes.push(format!("repository:{}:pull", src.repository()));
            }
        }
        let src_ep = self.endpoint(src, Self::pull_scope(src), retries)?;
        let dst_ep = self.endpoint(dst, dst_scopes, retries)?;

        // 1-3 are reads, run concurrently (each costs a round trip, plus a token fetch on
        // remote registries); nothing is written before all three have answered.
        if let Endpoint::Layout(l) = &dst_ep {
            l.require()?;
        }
        if let Endpoint::Layout(l) = &src_ep {
            l.require()?;
        }
        // The digest the destination tag holds, for the source side below.
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<Digest>();
        // A manifest under the destination tag proves the repository exists; only a miss
        // needs `tags/list` (one request fewer on the re-promotion path, where every request
        // counts).
        let dst_tag_and_exists = async {
            let existing = match dst.tag() {
                Some(tag) => dst_ep.get_manifest(tag).await?,
                None => None,
            };
            match &existing {
                // No receiver only when the source side has already failed.
                Some(m) => {
                    let _ = held_tx.send(m.digest.clone());
                }
                // Nothing held: the source side need not wait for `tags/list`.
                None => drop(held_tx),
            }
            let exists = existing.is_some() || dst_ep.exists().await?;
            Ok::<_, Error>((exists, existing))
        };
        // As soon as the source manifest is in, HEAD its blobs at the destination, overlapping
        // the other reads. Read-only, so policy below still decides before anything is
        // written; the answers serve the skip check and an already-present tag's verification.
        // A failed check is only a missed shortcut: the normal checks run later.
        // When the destination tag turns out to hold the source digest (a re-promotion), the
        // referrer lists are compared alongside those HEADs rather than after them.
        let top_and_presence = async {
            let top = self.fetch_source_top(&src_ep, src).await?;
            let blobs_present = async {
                match top.refs(top.digest.as_str()) {
                    Ok(refs) if !top.is_index() => {
                        presence(&dst_ep, refs.blobs().cloned().collect())
                            .await
                            .unwrap_or_default()
                    }
                    _ => HashMap::new(),
                }
            };
            let referrers = async {
                match held_rx.await {
                    Ok(held) if held == top.digest && options.referrers => {
                        Some(referrers_lacking_at(&src_ep, &dst_ep, src, &top).await)
                    }
                    _ => None,
                }
            };
            let (presence, lacking_referrers) =
                futures_util::future::join(blobs_present, referrers).await;
            Ok::<_, Error>((top, presence, lacking_referrers))
        };
        let (top_and_presence, dst_tag_and_exists) =
            futures_util::future::join(top_and_presence, dst_tag_and_exists).await;
        let (top, known, lacking_referrers) = match top_and_presence {
            Ok((top, known, lacking)) => (Ok(top), known, lacking),
            Err(e) => (Err(e), HashMap::new(), None),
        };
        let (exists, existing) = dst_tag_and_exists?;
        // The tag held the digest and the image was complete: only referrers get copied.
        let mut image_was_present = false;

        // 1. The destination must exist: nothing is created implicitly.
        if !exists {
            return Err(Error::new(ErrorKind::RepositoryMissing {
                repository: dst.repository().to_owned(),
                registry: dst.registry().to_owned(),
                hint: options.support_hint.clone(),
            }));
        }

        // 2. The source manifest, raw bytes.
        let top = top?;
        tracing::debug!(source = %src, digest = %top.digest, media_type = %top.media_type, "resolved source");
        if let Some(want) = dst.digest()
            && *want != top.digest
        {
            return Err(Error::new(ErrorKind::InvalidInput {
                message: format!(
                    "destination '{dst}' pins digest {want} but the source is {}: drop the digest from the destination or fix the source",
                    top.digest
                ),
            }));
        }

        // 3. Immutable tags: checked before anything is pushed.
        if let Some(tag) = dst.tag()
            && let Some(existing) = existing
        {
            if existing.digest != top.digest {
                return Err(Error::new(ErrorKind::TagConflict {
                    destination: dst.to_string(),
                    existing: existing.digest,
                    source: top.digest.clone(),
                }));
            }
            tracing::debug!(destination = %dst, "destination tag already holds the digest");
            // Referrers can be attached after the image was first copied (a signature added
            // once tests passed): a re-promotion still brings the ones the destination lacks.
            // Compared above, with the presence checks (`None` with referrers switched off).
            let check = verify_tree(&dst_ep, dst, tag, &top.digest, Some(existing), &known).await;
            let lacking_referrers = lacking_referrers.unwrap_or(Ok(false));
            // The image is there and verified either way; a re-promotion that succeeded
            // before referrers were compared must not start failing over them.
            let (lacking_referrers, referrers_unchecked) = match lacking_referrers {
                Ok(lacking) => (lacking, None),
                Err(e) => {
                    tracing::warn!(destination = %dst, error = %e, "the referrer lists could not be compared; the image itself is complete");
                    (false, Some(e.to_string()))
                }
            };
            match check {
                Ok(_) if lacking_referrers => {
                    tracing::debug!(destination = %dst, "the image is complete; copying the referrers the destination lacks");
                    image_was_present = true;
                }
                Ok(check) => {
                    return Ok(CopyReport {
                        source: src.to_string(),
                        destination: dst.to_string(),
                        digest: top.digest.clone(),
                        media_type: top.media_type.clone(),
                        verified: check.verified,
                        blobs_copied: 0,
                        blobs_skipped: 0,
                        blobs_mounted: 0,
                        bytes_copied: 0,
                        manifests_pushed: 0,
                        referrers_copied: 0,
                        already_present: true,
                        referrers_unchecked,
                        retries: retries.load(Ordering::Relaxed),
                        duration_ms: duration_ms(start),
                    });
                }
                // The right digest with a blob or child manifest gone (a registry's garbage
                // collection, a pruned layout): go on and copy what is missing. The tag is not
                // written again (step 6 finds it holding the digest), and step 7 proves the
                // repair.
                Err(e) if matches!(e.kind, ErrorKind::VerificationFailed { .. }) => {
                    tracing::warn!(destination = %dst, error = %e, "the destination tag holds the source digest but the image is incomplete; copying what is missing");
                }
                Err(e) => return Err(e),
            }
        }

        // Steps 4-7. On an image found complete above, only referrers are missing: a failure
        // then says the image itself is there and verified, and that the tag was not touched.
        // Set when the copy reaches the tag: what fails from there (a tag moved under the
        // copy, the image's own verification) is not about referrers.
        let reached_tag = std::cell::Cell::new(false);
        let outcome = async {
            // 4. Walk the tree and the referrers.
            let mut tree = Tree::default();
            let mut seen_blobs = HashSet::new();
            let mut seen_manifests = HashSet::new();
            collect_tree(
                &src_ep,
                top.clone(),
                &mut tree,
                &mut seen_blobs,
                &mut seen_manifests,
                0,
            )
            .await?;
            let top_manifest = tree
                .manifests
                .pop()
                .expect("collect_tree pushes the top manifest last");

            // OCI layouts keep referrers the way registries without the API do: a fallback index
            // under the ref name `sha256-<hex>` in index.json.
            let copy_referrers = options.referrers;
            let mut referrer_tree = Tree::default();
            let referrer_groups = if copy_referrers {
                // The image's own manifests are the first subjects: the top digest and, for an
                // index, each platform's manifest.
                let subjects = std::iter::once(top.digest.clone())
                    .chain(tree.manifests.iter().map(|m| m.digest.clone()))
                    .collect();
                collect_referrers(
                    &src_ep,
                    src,
                    subjects,
                    &mut referrer_tree,
                    &mut seen_blobs,
                    &mut seen_manifests,
                )
                .await?
            } else {
                Vec::new()
            };

            // 5. Blobs, in parallel.
            let counters = Arc::new(Counters::default());
            let all_blobs: Vec<Descriptor> = tree
                .blobs
                .iter()
                .chain(referrer_tree.blobs.iter())
                .cloned()
                .collect();
            self.copy_blobs(&src_ep, &dst_ep, all_blobs, options, &counters, &known)
                .await?;

            // 6. Child manifests by digest, then referrers, then the top manifest by tag.
            for m in &tree.manifests {
                push_if_missing(&dst_ep, m, options, &counters).await?;
            }
            let mut referrers_copied = 0;
            if !referrer_groups.is_empty() {
                let is_referrer: HashSet<&Digest> = referrer_groups
                    .iter()
                    .flat_map(|(_, list)| list.iter().map(|d| &d.digest))
                    .collect();
                // Referrers whose push the registry did not acknowledge with `OCI-Subject`.
                let mut unacknowledged = HashSet::new();
                let mut pushed = HashSet::new();
                // Referrers are collected level by level, so a signature of an SBOM is pushed after
                // the SBOM. The top manifest itself comes last (by tag, below): registries accept a
                // referrer whose subject is not there yet.
                for m in &referrer_tree.manifests {
                    if dst_ep.has_manifest(&m.digest).await? {
                        continue;
                    }
                    if !dst_ep.put_manifest(m, None, false).await? {
                        unacknowledged.insert(m.digest.clone());
                    }
                    pushed.insert(m.digest.clone());
                    counters.manifests_pushed.fetch_add(1, Ordering::Relaxed);
                    if is_referrer.contains(&m.digest) {
                        referrers_copied += 1;
                    }
                    if let Some(p) = &options.progress {
                        p.manifest_pushed(&m.digest, &m.media_type);
                    }
                }
                // Whether the destination serves the referrers API. A push it acknowledged with
                // `OCI-Subject` says so; otherwise ask about a manifest already there (a referrer,
                // or a platform manifest pushed above). Not about the top manifest: it is pushed
                // last, and Quay refuses a listing for a subject not yet in the repository (400).
                let dst_has_api = if pushed.len() > unacknowledged.len() {
                    true
                } else {
                    let probe = referrer_tree
                        .manifests
                        .first()
                        .or(tree.manifests.first())
                        .map_or(&top.digest, |m| &m.digest);
                    dst_ep.referrers_api(probe).await?.is_some()
                };
                for (subject, list) in &referrer_groups {
                    // Without the API, the fallback index lists them all. With it, only those the
                    // registry does not list: pushed now without an `OCI-Subject` acknowledgement,
                    // or already there (an earlier copy, another tool) and missing from its list.
                    let unlisted: Vec<Descriptor> = if dst_has_api {
                        let earlier = list.iter().any(|d| !pushed.contains(&d.digest));
                        // A subject not there yet (the top manifest) lists nothing.
                        let listed = if earlier {
                            dst_ep.referrers_api(subject).await?.unwrap_or_default()
                        } else {
                            Vec::new()
                        };
                        list.iter()
                            .filter(|d| {
                                unacknowledged.contains(&d.digest)
                                    || (!pushed.contains(&d.digest)
                                        && !listed.iter().any(|l| l.digest == d.digest))
                            })
                            .cloned()
                            .collect()
                    } else {
                        list.clone()
                    };
                    if !unlisted.is_empty() {
                        update_fallback_index(&dst_ep, subject, &unlisted, &counters).await?;
                    }
                }
            }
            reached_tag.set(true);
            let tag = dst.tag();
            // The tag was checked before the blobs; a copy can take minutes, and another pipeline
            // may have pushed the same tag meanwhile (a re-run build with a new digest). Look
            // again right before writing it: a different digest is a conflict, never overwritten;
            // the same digest is already there (and ECR refuses a same-digest re-push). Only
            // registry-side immutability (ECR `IMMUTABLE`) closes the remaining milliseconds.
            let pushed_meanwhile = match tag {
                Some(t) => dst_ep.get_manifest(t).await?,
                None => None,
            };
            match pushed_meanwhile {
                Some(existing) if existing.digest != top.digest => {
                    return Err(Error::new(ErrorKind::TagTakenDuringCopy {
                        destination: dst.to_string(),
                        existing: existing.digest,
                        source: top.digest.clone(),
                    }));
                }
                Some(_) => {
                    tracing::debug!(destination = %dst, "the tag appeared with the same digest during the copy");
                }
                None => {
                    if let Err(e) = dst_ep.put_manifest(&top_manifest, tag, true).await {
                        // A registry that stored other bytes has said so: nothing to look up.
                        if matches!(e.kind, ErrorKind::VerificationFailed { .. }) {
                            return Err(e);
                        }
                        // The tag decides. A retried PUT whose first attempt was committed
                        // (its answer lost on the way) is refused by registries with immutable
                        // tags (ECR: 400 TAG_INVALID) though the tag holds the digest; a tag
                        // another pipeline took meanwhile is refused the same way.
                        let Some(t) = tag else { return Err(e) };
                        // On what the PUT left of the retry budget.
                        match dst_ep.get_manifest_after(t, e.retries).await {
                            Ok(Some(held)) if held.digest == top.digest => {
                                tracing::debug!(destination = %dst, error = %e, "the tag PUT failed but the tag holds the digest");
                            }
                            Ok(Some(held)) => {
                                return Err(Error::new(ErrorKind::TagTakenDuringCopy {
                                    destination: dst.to_string(),
                                    existing: held.digest,
                                    source: top.digest.clone(),
                                }));
                            }
                            _ => return Err(e),
                        }
                    }
                    counters.manifests_pushed.fetch_add(1, Ordering::Relaxed);
                    if let Some(p) = &options.progress {
                        p.manifest_pushed(&top_manifest.digest, &top_manifest.media_type);
                    }
                }
            }

            // 7. Prove it.
            let reference = tag.map_or_else(|| top.digest.to_string(), str::to_owned);
            // After writing, everything is checked again: no answer from before the copy counts.
            let check =
                verify_tree(&dst_ep, dst, &reference, &top.digest, None, &HashMap::new()).await?;
            Ok(CopyReport {
                source: src.to_string(),
                destination: dst.to_string(),
                digest: top.digest.clone(),
                media_type: top.media_type.clone(),
                verified: check.verified,
                blobs_copied: counters.blobs_copied.load(Ordering::Relaxed),
                blobs_skipped: counters.blobs_skipped.load(Ordering::Relaxed),
                blobs_mounted: counters.blobs_mounted.load(Ordering::Relaxed),
                bytes_copied: counters.bytes_copied.load(Ordering::Relaxed),
                manifests_pushed: counters.manifests_pushed.load(Ordering::Relaxed),
                referrers_copied,
                already_present: image_was_present,
                referrers_unchecked: None,
                retries: retries.load(Ordering::Relaxed),
                duration_ms: duration_ms(start),
            })
        }
        .await;
        match outcome {
            Err(e) if image_was_present && !reached_tag.get() => {
                Err(Error::new(ErrorKind::ReferrersNotCopied {
                    destination: dst.to_string(),
                    digest: top.digest.clone(),
                    source: Box::new(e),
                }))
            }
            outcome => outcome,
        }
    }

    async fn fetch_source_top(&self, src_ep: &Endpoint, src: &Reference) -> Result<Fetched, Error> {
        let reference = src.manifest_reference();
        let Some(top) = src_ep.get_manifest(&reference).await? else {
            return Err(Error::new(ErrorKind::ManifestNotFound {
                reference: src.to_string(),
            }));
        };
        if let Some(want) = src.digest()
            && *want != top.digest
        {
            return Err(Error::new(ErrorKind::DigestMismatch {
                what: format!("source manifest {src}"),
                expected: want.clone(),
                actual: top.digest,
            }));
        }
        if let Some(h) = &top.header_digest
            && *h != top.digest
        {
            return Err(Error::new(ErrorKind::DigestMismatch {
                what: format!("source manifest {src} (its Docker-Content-Digest header)"),
                expected: h.clone(),
                actual: top.digest,
            }));
        }
        if !MediaType::is_index(&top.media_type) && !MediaType::is_manifest(&top.media_type) {
            return Err(Error::new(ErrorKind::UnsupportedManifest {
                reference: src.to_string(),
                reason: format!("unsupported manifest media type '{}'", top.media_type),
            }));
        }
        Ok(top)
    }

    async fn copy_blobs(
        &self,
        src: &Endpoint,
        dst: &Endpoint,
        blobs: Vec<Descriptor>,
        options: &CopyOptions,
        counters: &Arc<Counters>,
        known: &HashMap<Digest, bool>,
    ) -> Result<(), Error> {
        let policy = self.inner.retry;
        // Presence checks are cheap HEADs: run them all first (those not answered already),
        // wider than the transfer limit, so no transfer slot sits idle on a round trip.
        let unknown: Vec<Descriptor> = blobs
            .iter()
            .filter(|d| !known.contains_key(&d.digest))
            .cloned()
            .collect();
        let mut answers = presence(dst, unknown).await?;
        answers.extend(known.iter().map(|(d, p)| (d.clone(), *p)));
        let mut missing = Vec::with_capacity(blobs.len());
        for desc in blobs {
            if answers.get(&desc.digest).copied().unwrap_or(false) {
                counters.blobs_skipped.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = &options.progress {
                    p.blob_skipped(&desc.digest, desc.size);
                }
            } else {
                missing.push(desc);
            }
        }
        let jobs = options.jobs.unwrap_or(self.inner.jobs).max(1);
        let mut pending = missing.into_iter();
        // Dropping the set (the copy itself cancelled) aborts every transfer in it.
        let mut running = tokio::task::JoinSet::new();
        let mut first_error: Option<Error> = None;
        loop {
            while first_error.is_none() && running.len() < jobs {
                let Some(desc) = pending.next() else { break };
                let (src, dst) = (src.clone(), dst.clone());
                let progress = options.progress.clone();
                let mode = options.upload_mode;
                let counters = counters.clone();
                running.spawn(async move {
                    copy_blob(&src, &dst, &desc, mode, progress, policy, &counters).await
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let outcome = joined.unwrap_or_else(|e| {
                Err(Error::new(ErrorKind::Transport {
                    context: "blob transfer task".to_owned(),
                    source: Box::new(e),
                }))
            });
            if let Err(e) = outcome
                && first_error.is_none()
            {
                // The first failure ends the copy. The other transfers are stopped and
                // waited for, so none is still writing (a layout's temp file, an upload)
                // when the copy reports the failure.
                running.abort_all();
                first_error = Some(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(())
    }

    /// Resolves a reference to the digest, media type and size of its manifest.
    pub async fn resolve(&self, r: &Reference) -> Result<Resolved, Error> {
        let start = Instant::now();
        let retries = Arc::new(AtomicU32::new(0));
        let ep = self.endpoint(r, Self::pull_scope(r), &retries)?;
        if let Endpoint::Layout(l) = &ep {
            l.require()?;
        }
        let top = stamped(self.fetch_source_top(&ep, r).await, start, &retries)?;
        Ok(Resolved {
            size: top.bytes.len() as u64,
            digest: top.digest,
            media_type: top.media_type,
        })
    }

    /// Proves that `r` resolves to `expected` and that every manifest and blob it references
    /// is present.
    pub async fn verify(&self, r: &Reference, expected: &Digest) -> Result<VerifyReport, Error> {
        let start = Instant::now();
        let retries = Arc::new(AtomicU32::new(0));
        let ep = self.endpoint(r, Self::pull_scope(r), &retries)?;
        if let Endpoint::Layout(l) = &ep {
            l.require()?;
        }
        let result = verify_tree(
            &ep,
            r,
            &r.manifest_reference(),
            expected,
            None,
            &HashMap::new(),
        )
        .await;
        stamped(result, start, &retries)
    }

    /// Whether the repository of `r` exists: `GET /v2/<repo>/tags/list` answers 2xx (true) or
    /// 404 with the registry's `NAME_UNKNOWN` (false; Harbor's `NOT_FOUND` too). Any other
    /// answer is an error (a bare 404 from a proxy, a 5xx). For an `oci:` reference, whether
    /// the directory is an OCI layout.
    pub async fn repository_exists(&self, r: &Reference) -> Result<bool, Error> {
        let start = Instant::now();
        let retries = Arc::new(AtomicU32::new(0));
        let ep = self.endpoint(r, Self::pull_scope(r), &retries)?;
        stamped(ep.exists().await, start, &retries)
    }
}

/// Stamps a failure with the retries counted during the whole operation (requests retry on
/// their own, blob transfers on theirs) and the time it took.
fn stamped<T>(result: Result<T, Error>, start: Instant, retries: &AtomicU32) -> Result<T, Error> {
    result.map_err(|mut e| {
        e.retries = e.retries.max(retries.load(Ordering::Relaxed));
        e.elapsed = start.elapsed();
        e
    })
}

fn duration_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn copy_blob(
    src: &Endpoint,
    dst: &Endpoint,
    desc: &Descriptor,
    mode: crate::copy::UploadMode,
    progress: Option<Arc<dyn Progress>>,
    policy: crate::client::RetryPolicy,
    counters: &Counters,
) -> Result<(), Error> {
    // The caller has checked the blob is not at the destination.
    let start = Instant::now();
    // One budget for the whole blob: the retries of its requests (upload session, source GET)
    // and the retries of the transfer itself all count against `max_retries`.
    let retries = AtomicU32::new(0);
    let mut reauthenticated = false;
    loop {
        if let Some(p) = &progress {
            p.blob_started(&desc.digest, desc.size);
        }
        match copy_blob_once(src, dst, desc, mode, progress.clone(), &retries).await {
            Ok(BlobOutcome::Mounted) => {
                counters.blobs_mounted.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = &progress {
                    p.blob_mounted(&desc.digest, desc.size);
                }
                return Ok(());
            }
            Ok(BlobOutcome::Copied(n)) => {
                counters.blobs_copied.fetch_add(1, Ordering::Relaxed);
                counters.bytes_copied.fetch_add(n, Ordering::Relaxed);
                if let Some(p) = &progress {
                    p.blob_finished(&desc.digest, desc.size);
                }
                return Ok(());
            }
            Err(e)
                if e.kind.is_retryable()
                    && retries.load(Ordering::Relaxed) < policy.max_retries =>
            {
                let attempt = retries.fetch_add(1, Ordering::Relaxed) + 1;
                // A 429 or 503 on the streamed PUT says how long to wait; honour it as the
                // request-level retries do.
                let backoff = policy.backoff(attempt);
                let delay = e.retry_after.map_or(backoff, |asked| asked.max(backoff));
                // One line per retry: the caller's progress sink reports it (its default
                // is a warning), else this warning.
                match &progress {
                    Some(p) => p.blob_retrying(&desc.digest, attempt, delay, &e),
                    None => {
                        tracing::warn!(digest = %desc.digest, attempt, error = %e, "blob transfer failed, retrying with a fresh upload session");
                    }
                }
                if let Endpoint::Registry(r) = dst {
                    r.count_retry();
                } else if let Endpoint::Registry(r) = src {
                    r.count_retry();
                }
                tokio::time::sleep(delay).await;
            }
            // A token that expired during a long upload: the next request answers 401 and
            // fetches a fresh one, so try once more.
            Err(e) if matches!(e.kind, ErrorKind::Unauthorized { .. }) && !reauthenticated => {
                reauthenticated = true;
                tracing::warn!(digest = %desc.digest, error = %e, "blob upload unauthorized, retrying once with a fresh token");
            }
            Err(mut e) => {
                e.elapsed = start.elapsed();
                e.retries = e.retries.max(retries.load(Ordering::Relaxed));
                return Err(e);
            }
        }
    }
}

/// Fetches children recursively (depth-limited), collecting manifests (children first) and
/// unique blobs.
fn collect_tree<'a>(
    src: &'a Endpoint,
    manifest: Fetched,
    tree: &'a mut Tree,
    seen_blobs: &'a mut HashSet<Digest>,
    seen_manifests: &'a mut HashSet<Digest>,
    depth: u32,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send + 'a>> {
    Box::pin(async move {
        if depth > 4 {
            return Err(Error::new(ErrorKind::UnsupportedManifest {
                reference: manifest.digest.to_string(),
                reason: "indexes nested deeper than 4 levels".to_owned(),
            }));
        }
        if !seen_manifests.insert(manifest.digest.clone()) {
            return Ok(());
        }
        let refs = manifest.refs(manifest.digest.as_str())?;
        if manifest.is_index() {
            for child in &refs.manifests {
                let m = src.get_manifest_verified(&child.digest).await?;
                collect_tree(src, m, tree, seen_blobs, seen_manifests, depth + 1).await?;
            }
        } else {
            for b in refs.blobs() {
                if seen_blobs.insert(b.digest.clone()) {
                    tree.blobs.push(b.clone());
                }
            }
        }
        tree.manifests.push(manifest);
        Ok(())
    })
}

/// Referrers of `subjects` and, breadth first, of the referrers found (a signature of an
/// SBOM), up to `MAX_REFERRER_DEPTH` levels. Their manifests and blobs go into `tree`, subjects
/// before their referrers. Returns each subject that has referrers with its list, for the
/// destination's fallback indexes.
async fn collect_referrers(
    src: &Endpoint,
    source: &Reference,
    subjects: Vec<Digest>,
    tree: &mut Tree,
    seen_blobs: &mut HashSet<Digest>,
    seen_manifests: &mut HashSet<Digest>,
) -> Result<Vec<(Digest, Vec<Descriptor>)>, Error> {
    let mut groups = Vec::new();
    let mut frontier = subjects;
    // Once the source has answered that it has no referrers API, ask only the fallback tags:
    // one request per subject instead of two.
    let mut api = true;
    for level in 0..=MAX_REFERRER_DEPTH {
        if frontier.is_empty() {
            break;
        }
        let mut answers = Vec::with_capacity(frontier.len());
        let mut rest = frontier.into_iter();
        if api && let Some(first) = rest.next() {
            // Alone, to learn whether the API is there before asking for the others.
            let (list, served) = src.referrers(&first, true).await?;
            api = served;
            answers.push((first, list));
        }
        let more: Vec<(Digest, Vec<Descriptor>)> =
            futures_util::stream::iter(rest.map(|subject| async move {
                let (list, _) = src.referrers(&subject, api).await?;
                Ok::<_, Error>((subject, list))
            }))
            .buffered(CHECK_PARALLELISM)
            .try_collect()
            .await?;
        answers.extend(more);
        // Entries already collected (a stale fallback index listing an earlier referrer) add
        // nothing and so do not count as a deeper level.
        if level == MAX_REFERRER_DEPTH
            && let Some((subject, _)) = answers
                .iter()
                .find(|(_, list)| list.iter().any(|d| !seen_manifests.contains(&d.digest)))
        {
            return Err(Error::new(ErrorKind::UnsupportedManifest {
                reference: source.to_string(),
                reason: format!(
                    "its referrers nest deeper than {MAX_REFERRER_DEPTH} levels (a referrer of a referrer of …; {subject} at level {MAX_REFERRER_DEPTH} still has referrers): copy without referrers (--no-referrers, or `CopyOptions::referrers = false`), or remove the extra level from the source"
                ),
            }));
        }
        let mut next = Vec::new();
        for (subject, list) in answers {
            for d in &list {
                if seen_manifests.contains(&d.digest) {
                    continue;
                }
                let m = src.get_manifest_verified(&d.digest).await?;
                collect_tree(src, m, tree, seen_blobs, seen_manifests, 0).await?;
                next.push(d.digest.clone());
            }
            if !list.is_empty() {
                groups.push((subject, list));
            }
        }
        frontier = next;
    }
    Ok(groups)
}

/// [`referrers_lacking`] for the image `top`: its own digest and, for an index, each platform
/// manifest's.
async fn referrers_lacking_at(
    src: &Endpoint,
    dst: &Endpoint,
    source: &Reference,
    top: &Fetched,
) -> Result<bool, Error> {
    let mut subjects = vec![top.digest.clone()];
    if top.is_index() {
        let refs = top.refs(&source.to_string())?;
        // An index of indexes: its grandchildren are subjects too, and only the copy's full
        // walk reads them.
        if refs
            .manifests
            .iter()
            .any(|m| MediaType::is_index(&m.media_type))
        {
            return Ok(true);
        }
        subjects.extend(refs.manifests.iter().map(|m| m.digest.clone()));
    }
    referrers_lacking(src, dst, source, subjects).await
}

/// Whether a referrer of `subjects` at the source (or, level by level, a referrer of one of
/// those) is missing from the destination's lists for its subject (the referrers API, and the
/// fallback index where the API does not list it). Reads only: on the already-present path it
/// decides whether anything is left to copy.
async fn referrers_lacking(
    src: &Endpoint,
    dst: &Endpoint,
    source: &Reference,
    subjects: Vec<Digest>,
) -> Result<bool, Error> {
    let (mut src_api, mut dst_api) = (true, true);
    let mut frontier = subjects;
    for level in 0..=MAX_REFERRER_DEPTH {
        let mut answers = Vec::with_capacity(frontier.len());
        for (subject, (listed, served)) in
            list_referrers(src, frontier.iter().cloned(), src_api).await?
        {
            src_api = served;
            if !listed.is_empty() {
                answers.push((subject, listed));
            }
        }
        if answers.is_empty() {
            return Ok(false);
        }
        // Referrers at the last level the copy follows: the copy would refuse the chain, so
        // this is reported whatever the destination holds.
        if level == MAX_REFERRER_DEPTH {
            break;
        }
        let held_lists =
            list_referrers(dst, answers.iter().map(|(s, _)| s.clone()), dst_api).await?;
        for ((subject, listed), (_, (mut held, served))) in answers.iter().zip(held_lists) {
            dst_api = served;
            let lacks = |held: &[Descriptor]| {
                listed
                    .iter()
                    .any(|d| !held.iter().any(|h| h.digest == d.digest))
            };
            // A registry with the API that did not index a referrer has it in the fallback
            // index instead (see the copy's step 6).
            if lacks(&held) && served {
                held.extend(dst.referrers(subject, false).await?.0);
            }
            if lacks(&held) {
                return Ok(true);
            }
        }
        frontier = answers
            .into_iter()
            .flat_map(|(_, listed)| listed.into_iter().map(|d| d.digest))
            .collect();
    }
    Err(Error::new(ErrorKind::UnsupportedManifest {
        reference: source.to_string(),
        reason: format!(
            "its referrers nest deeper than {MAX_REFERRER_DEPTH} levels (a referrer of a referrer of …): copy without referrers (--no-referrers, or `CopyOptions::referrers = false`), or remove the extra level from the source"
        ),
    }))
}

/// The referrers of each subject at `ep`, in order, with whether the API answered. While the
/// API is thought to be there, the first subject is asked alone to find out (as the copy
/// does); the rest are asked in parallel, through the fallback tags once it is known absent.
async fn list_referrers(
    ep: &Endpoint,
    mut subjects: impl Iterator<Item = Digest>,
    mut try_api: bool,
) -> Result<Vec<(Digest, (Vec<Descriptor>, bool))>, Error> {
    let mut answers = Vec::new();
    if try_api && let Some(first) = subjects.next() {
        let answer = ep.referrers(&first, true).await?;
        try_api = answer.1;
        answers.push((first, answer));
    }
    let more: Vec<(Digest, (Vec<Descriptor>, bool))> =
        futures_util::stream::iter(subjects.map(|subject| async move {
            let answer = ep.referrers(&subject, try_api).await?;
            Ok::<_, Error>((subject, answer))
        }))
        .buffered(CHECK_PARALLELISM)
        .try_collect()
        .await?;
    answers.extend(more);
    Ok(answers)
}

async fn push_if_missing(
    dst: &Endpoint,
    m: &Fetched,
    options: &CopyOptions,
    counters: &Counters,
) -> Result<(), Error> {
    if dst.has_manifest(&m.digest).await? {
        return Ok(());
    }
    dst.put_manifest(m, None, false).await?;
    counters.manifests_pushed.fetch_add(1, Ordering::Relaxed);
    if let Some(p) = &options.progress {
        p.manifest_pushed(&m.digest, &m.media_type);
    }
    Ok(())
}

/// Maintains the referrers fallback index (tag `sha256-<hex>`) at a destination without the
/// referrers API: existing entries are kept, new ones appended.
///
/// The tag schema is read-merge-write with no conditional PUT, so a concurrent writer can
/// replace the index between this read and write. The index is read back after each write
/// and merged again while any of `referrers` is missing (each round also keeps what the
/// other writer added), a bounded number of times.
async fn update_fallback_index(
    dst: &Endpoint,
    subject: &Digest,
    referrers: &[Descriptor],
    counters: &Counters,
) -> Result<(), Error> {
    let tag = subject.referrers_tag();
    let listed = |bytes: Option<&Bytes>| -> Vec<Descriptor> {
        bytes
            .and_then(|b| crate::digest::ManifestRefs::parse(b).ok())
            .map(|r| r.manifests)
            .unwrap_or_default()
    };
    let mut existing = dst.fallback_index(subject).await?;
    for _ in 0..FALLBACK_INDEX_ROUNDS {
        let entries = listed(existing.as_ref().map(|m| &m.bytes));
        if !write_fallback_index(dst, &tag, entries, referrers, counters).await? {
            return Ok(());
        }
        existing = dst.fallback_index(subject).await?;
    }
    let entries = listed(existing.as_ref().map(|m| &m.bytes));
    let missing: Vec<String> = referrers
        .iter()
        .filter(|d| !entries.iter().any(|e| e.digest == d.digest))
        .map(|d| d.digest.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::new(ErrorKind::VerificationFailed {
        reference: tag,
        reason: format!(
            "it is the referrers fallback index, and another writer replaced it {FALLBACK_INDEX_ROUNDS} times in a row and it still lacks {}; \
             run the copy again when the other pipeline has finished (the image itself was copied)",
            missing.join(", ")
        ),
    }))
}

/// Writes `entries` plus whichever of `referrers` they lack under `tag`; false when nothing
/// was missing (no write).
async fn write_fallback_index(
    dst: &Endpoint,
    tag: &str,
    mut entries: Vec<Descriptor>,
    referrers: &[Descriptor],
    counters: &Counters,
) -> Result<bool, Error> {
    let before = entries.len();
    for d in referrers {
        if !entries.iter().any(|e| e.digest == d.digest) {
            entries.push(d.clone());
        }
    }
    if entries.len() == before && before > 0 {
        return Ok(false);
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Index<'a> {
        schema_version: u32,
        media_type: &'a str,
        manifests: &'a [Descriptor],
    }
    let bytes = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: MediaType::OCI_INDEX,
        manifests: &entries,
    })
    .map_err(|e| {
        Error::new(ErrorKind::InvalidInput {
            message: format!("cannot serialize the referrers index: {e}"),
        })
    })?;
    let index = Fetched::new(Bytes::from(bytes), MediaType::OCI_INDEX.to_owned(), None);
    dst.put_manifest(&index, Some(tag), false).await?;
    counters.manifests_pushed.fetch_add(1, Ordering::Relaxed);
    Ok(true)
}

/// Which of `blobs` the endpoint holds, `CHECK_PARALLELISM` HEADs at a time.
async fn presence(ep: &Endpoint, blobs: Vec<Descriptor>) -> Result<HashMap<Digest, bool>, Error> {
    let answers: Vec<bool> = futures_util::stream::iter(blobs.iter().map(|d| ep.has_blob(d)))
        .buffered(CHECK_PARALLELISM)
        .try_collect()
        .await?;
    Ok(blobs.into_iter().map(|d| d.digest).zip(answers).collect())
}

/// Fetches `reference` at `ep` (or takes `fetched`, the manifest just read by that reference),
/// proves it hashes to `expected` (and matches `Docker-Content-Digest`), and confirms every
/// child manifest and blob is present.
///
/// `known_present`: blobs this run has already seen present at `ep` (checked in the same
/// run, before any write); they are not asked again.
async fn verify_tree(
    ep: &Endpoint,
    r: &Reference,
    reference: &str,
    expected: &Digest,
    fetched: Option<Fetched>,
    known_present: &HashMap<Digest, bool>,
) -> Result<VerifyReport, Error> {
    // A layout that exists (checked before) but is damaged (a listed manifest gone, a file
    // that does not hash to its name) fails verification like a registry missing a blob,
    // not as a refusal of the caller's input.
    verify_tree_once(ep, r, reference, expected, fetched, known_present)
        .await
        .map_err(|e| match e.kind {
            ErrorKind::OciLayout { reason, .. } => Error::new(ErrorKind::VerificationFailed {
                reference: r.to_string(),
                reason,
            }),
            _ => e,
        })
}

async fn verify_tree_once(
    ep: &Endpoint,
    r: &Reference,
    reference: &str,
    expected: &Digest,
    fetched: Option<Fetched>,
    known_present: &HashMap<Digest, bool>,
) -> Result<VerifyReport, Error> {
    let fail = |reason: String| {
        Error::new(ErrorKind::VerificationFailed {
            reference: r.to_string(),
            reason,
        })
    };
    let top = match fetched {
        Some(m) => m,
        None => match ep.get_manifest(reference).await? {
            Some(m) => m,
            None => return Err(fail(format!("the manifest '{reference}' is not there"))),
        },
    };
    if top.digest != *expected {
        return Err(fail(format!(
            "it resolves to {} instead of {expected}",
            top.digest
        )));
    }
    if let Some(h) = &top.header_digest
        && h != expected
    {
        return Err(fail(format!(
            "the registry's Docker-Content-Digest header says {h} instead of {expected}"
        )));
    }
    let mut manifests_checked = 1u32;
    let mut stack = vec![top.clone()];
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut seen_blobs = HashSet::new();
    let mut seen_manifests = HashSet::new();
    while let Some(m) = stack.pop() {
        if !seen_manifests.insert(m.digest.clone()) {
            continue;
        }
        let refs = m.refs(m.digest.as_str())?;
        if m.is_index() {
            for child in &refs.manifests {
                let Some(c) = ep.get_manifest(child.digest.as_str()).await? else {
                    return Err(fail(format!("child manifest {} is missing", child.digest)));
                };
                if c.digest != child.digest {
                    return Err(fail(format!(
                        "child manifest {} hashes to {}",
                        child.digest, c.digest
                    )));
                }
                manifests_checked += 1;
                stack.push(c);
            }
        } else {
            for b in refs.blobs() {
                if seen_blobs.insert(b.digest.clone()) {
                    blobs.push(b.clone());
                }
            }
        }
    }
    let blobs_checked = u32::try_from(blobs.len()).unwrap_or(u32::MAX);
    let to_check = blobs
        .into_iter()
        .filter(|b| known_present.get(&b.digest) != Some(&true));
    let checks = futures_util::stream::iter(to_check.map(|b| async move {
        let present = ep.has_blob(&b).await?;
        Ok::<_, Error>((b, present))
    }))
    .buffer_unordered(VERIFY_PARALLELISM);
    let mut checks = std::pin::pin!(checks);
    while let Some(check) = checks.next().await {
        let (b, present) = check?;
        if !present {
            let how = match ep {
                Endpoint::Layout(_) => "is missing, or its file does not hash to its digest",
                Endpoint::Registry(_) => "is missing",
            };
            return Err(fail(format!("blob {} ({} bytes) {how}", b.digest, b.size)));
        }
    }
    Ok(VerifyReport {
        reference: r.to_string(),
        digest: top.digest,
        media_type: top.media_type,
        manifests_checked,
        blobs_checked,
        verified: true,
    })
}

/// Levels of referrers copied: the image's, their referrers (a signature of an SBOM), ….
const MAX_REFERRER_DEPTH: usize = 4;

/// Writes of a referrers fallback index before a writer that keeps replacing it is reported.
const FALLBACK_INDEX_ROUNDS: usize = 4;

/// Concurrent `HEAD` requests while verifying.
const VERIFY_PARALLELISM: usize = 16;

/// Concurrent presence checks (HEAD) before blob transfers.
const CHECK_PARALLELISM: usize = 16;
