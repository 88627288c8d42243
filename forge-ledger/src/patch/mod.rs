//! The byte-exact image-tag patcher.
//!
//! # Targets
//!
//! Without an explicit [`Selector::key`], the tag is auto-detected. In an Argo CD `Application` (or the
//! `spec.template` of an `ApplicationSet`), every source (`spec.source`, `spec.sources[i]`) is searched in Argo CD's
//! precedence order:
//!
//! 1. `helm.parameters[name=image.tag].value` (also `<prefix>.image.tag` parameters; block or flow style),
//! 2. `helm.valuesObject…image.tag`,
//! 3. the `helm.values: |` literal block (patched *inside* the embedded YAML; the block and its indentation stay),
//! 4. `kustomize.images` entries (`repo:tag`, `name=newName:tag`, `repo:tag@sha256:…`).
//!
//! Any other document is treated as a Helm values file (`…image.tag`). A tag set in two layers, several matching
//! images, an anchor or alias at the target and a folded block are errors that list the candidates: the patcher
//! never guesses. [`Selector::image`] narrows the candidates to one image, [`Selector::key`] names the scalar
//! directly and [`Selector::app`] picks a document of a multi-document file.
//!
//! # Key paths
//!
//! Dot-separated keys from the document root; `\.` escapes a dot inside a key (`a\.b`), `[n]` indexes a sequence and
//! `[name=value]` picks the sequence entry whose `name` is `value` (brackets are not split on dots). A key path may
//! continue into a `helm.values` literal block: `spec.source.helm.values.image.tag`.
//!
//! # Digests
//!
//! A new value may be `TAG` or `TAG@sha256:<64 hex>` ([`patch_tag`]), or a tag plus an optional digest
//! ([`patch_image`]). On a `kustomize.images` entry:
//!
//! * `TAG@DIGEST` replaces the tag **and** the digest (and adds a digest to an entry that had none);
//! * a plain `TAG` replaces only the tag of an entry without a digest;
//! * a plain `TAG` on an entry pinned to a digest is refused with [`PatchError::DigestRequired`]: keeping the old
//!   digest would keep the old image running, and dropping it silently would loosen a pin someone chose.
//!
//! Helm values and parameters hold a tag only; a digest there is refused (charts keep digests in a separate key that
//! can be patched with [`Selector::key`]).
//!
//! # Quoting
//!
//! A quoted scalar keeps its quoting style. A plain scalar stays plain unless the new value would then read as
//! something other than a string (`1.20`, `true`, `null`, `yes`, `0x1f`, `1e3`, `2024-01-02`, …), in which case it
//! is written double-quoted.

mod keypath;
mod locate;
mod scalar;
pub(crate) mod select;
pub(crate) mod tree;
mod verify;

use std::fmt;

pub use yaml_rust2::ScanError;

/// Which scalar to patch. All fields are optional; the default auto-detects the tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Image NAME, when a file holds several images: matches a kustomize image name (or newName) exactly or by its
    /// last path component, a Helm `<NAME>.image.tag` prefix, or the `repository` next to a Helm `tag`.
    pub image: Option<String>,
    /// Explicit key path to the scalar (see the module docs for the syntax).
    pub key: Option<String>,
    /// Document selection in a multi-document file: `metadata.name`, or `Kind/name` (e.g. `ApplicationSet/web`).
    pub app: Option<String>,
}

/// A tag located in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The tag (for a kustomize image entry, only the tag part, without the digest).
    pub value: String,
    /// Key path of the scalar, usable as [`Selector::key`], e.g.
    /// `spec.source.helm.parameters[name=image.tag].value`.
    pub path: String,
    /// 1-based line of the scalar in the file.
    pub line: usize,
    /// The digest pinned next to the tag (`sha256:…`), for kustomize image entries that carry one.
    pub digest: Option<String>,
}

/// The result of a successful patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patched {
    /// The whole new file text.
    pub text: String,
    /// The previous tag.
    pub old: String,
    /// The new tag.
    pub new: String,
    /// Key path of the patched scalar.
    pub path: String,
    /// 1-based line of the patched scalar.
    pub line: usize,
    /// The digest before the patch (kustomize image entries only).
    pub old_digest: Option<String>,
    /// The digest after the patch (kustomize image entries only).
    pub new_digest: Option<String>,
}

impl Patched {
    /// Whether the text changed at all (setting the tag a file already has is a no-op).
    #[must_use]
    pub fn changed(&self) -> bool {
        self.old != self.new || self.old_digest != self.new_digest
    }
}

/// Why a tag could not be read or patched. Nothing is ever half-patched: on error there is no output text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// No scalar matched.
    #[error(
        "no image tag found: searched {searched}; pass --key PATH to name the scalar (e.g. \
         spec.source.helm.parameters[name=image.tag].value) or --image NAME to pick an image"
    )]
    NoTarget {
        /// What was searched (layers, key path or image name).
        searched: String,
    },
    /// Several scalars matched.
    #[error(
        "ambiguous target: {} candidates match: {}; pass --key with one of these paths, --image NAME, \
         or --app NAME in a multi-document file, so the patcher does not guess",
        candidates.len(),
        candidates.join("; ")
    )]
    Ambiguous {
        /// The candidates, each `path = value (line N)`.
        candidates: Vec<String>,
    },
    /// The target exists but is written in a shape that cannot be patched byte-exactly.
    #[error("cannot patch {path} (line {line}): {reason}; edit this value by hand")]
    Unsupported {
        /// Key path of the target.
        path: String,
        /// 1-based line of the target.
        line: usize,
        /// What is unsupported (alias/anchor at the target, folded block, …).
        reason: String,
    },
    /// The input is not YAML that yaml-rust2 accepts.
    #[error("invalid YAML at line {line}, column {col}: {message}; fix the file so that it parses")]
    InvalidYaml {
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        col: usize,
        /// The parser's message.
        message: String,
        /// The parser error, when there is one.
        #[source]
        source: Option<ScanError>,
    },
    /// The new tag (or digest) is not acceptable.
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The value given.
        tag: String,
        /// What is wrong and what to pass instead.
        reason: String,
    },
    /// The `--key` path does not parse.
    #[error(
        "invalid key path {key:?}: {reason}; use dots between keys, `\\.` for a dot inside a key, `[n]` or \
         `[name=value]` for sequence entries"
    )]
    InvalidKey {
        /// The key path given.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// No document of a multi-document file matches [`Selector::app`] (or several documents hold a tag and no
    /// selection was given).
    #[error(
        "{}; documents present: {}; pass --app NAME (or --app Kind/NAME)",
        what,
        DisplayList(present)
    )]
    DocumentNotFound {
        /// What was looked for.
        what: String,
        /// `Kind/metadata.name` of each document in the file.
        present: Vec<String>,
    },
    /// A plain tag was given for a kustomize image entry pinned to a digest.
    #[error(
        "{path} (line {line}) is pinned to digest {digest}: a new tag alone would keep running the old digest; \
         pass the new tag with its digest as TAG@sha256:<hex> (forge promote prints it)"
    )]
    DigestRequired {
        /// Key path of the entry.
        path: String,
        /// 1-based line.
        line: usize,
        /// The digest currently pinned.
        digest: String,
    },
    /// The re-parse check found a difference other than the one value: a bug in the patcher. Nothing is written.
    #[error(
        "internal check failed while patching {path}: {detail}; nothing was written — please report this with \
         the file"
    )]
    VerifyFailed {
        /// Key path of the target.
        path: String,
        /// What differed.
        detail: String,
    },
}

struct DisplayList<'a>(&'a [String]);

impl fmt::Display for DisplayList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&self.0.join(", "))
        }
    }
}

/// Reads the tag the selector points at.
///
/// # Errors
/// [`PatchError::NoTarget`], [`PatchError::Ambiguous`], [`PatchError::InvalidYaml`], [`PatchError::InvalidKey`],
/// [`PatchError::DocumentNotFound`], [`PatchError::Unsupported`].
pub fn read_tag(text: &str, selector: &Selector) -> Result<Found, PatchError> {
    locate::locate(text, selector)?.read()
}

/// Sets the tag the selector points at to `new_tag` (`TAG` or `TAG@sha256:<hex>`), changing only that scalar's bytes.
///
/// Setting the value a file already has returns the unchanged text ([`Patched::changed`] is false).
///
/// # Errors
/// Everything [`read_tag`] returns, plus [`PatchError::InvalidTag`], [`PatchError::DigestRequired`] and
/// [`PatchError::VerifyFailed`].
pub fn patch_tag(text: &str, selector: &Selector, new_tag: &str) -> Result<Patched, PatchError> {
    let (tag, digest) = match new_tag.split_once('@') {
        Some((tag, digest)) => (tag, Some(digest)),
        None => (new_tag, None),
    };
    patch_image(text, selector, tag, digest)
}

/// Sets the tag (and, for kustomize image entries, the digest) the selector points at.
///
/// # Errors
/// As [`patch_tag`].
pub fn patch_image(
    text: &str,
    selector: &Selector,
    tag: &str,
    digest: Option<&str>,
) -> Result<Patched, PatchError> {
    validate_tag(tag)?;
    if let Some(digest) = digest {
        validate_digest(digest)?;
    }
    let target = locate::locate(text, selector)?;
    target.patch(text, tag, digest)
}

/// Checks a tag against the OCI grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` and refuses the mutable `latest`.
///
/// # Errors
/// [`PatchError::InvalidTag`] saying what is wrong.
pub fn validate_tag(tag: &str) -> Result<(), PatchError> {
    let invalid = |reason: String| {
        Err(PatchError::InvalidTag {
            tag: tag.to_owned(),
            reason,
        })
    };
    if tag.is_empty() {
        return invalid(
            "the tag is empty; pass the tag CI built, e.g. 1.4.2 or build-1234".to_owned(),
        );
    }
    if tag.len() > 128 {
        return invalid(format!(
            "{} characters, OCI tags have at most 128",
            tag.len()
        ));
    }
    let mut chars = tag.chars();
    if let Some(first) = chars.next()
        && !(first.is_ascii_alphanumeric() || first == '_')
    {
        return invalid(format!(
            "starts with {first:?}; an OCI tag starts with a letter, digit or `_`"
        ));
    }
    if let Some(bad) = tag
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        let hint = if bad == '@' || bad == ':' {
            "; pass the tag alone (or TAG@sha256:<hex> to pin a digest)"
        } else {
            ""
        };
        return invalid(format!(
            "contains {bad:?}; OCI tags allow only letters, digits, `.`, `_` and `-`{hint}"
        ));
    }
    if tag.eq_ignore_ascii_case("latest") {
        return invalid(
            "`latest` is mutable: the Ledger must name an immutable build; pass the tag (or digest) CI built"
                .to_owned(),
        );
    }
    Ok(())
}

/// Checks a digest (`algorithm:hex`, e.g. `sha256:` + 64 lowercase hex digits).
///
/// # Errors
/// [`PatchError::InvalidTag`] saying what is wrong.
pub fn validate_digest(digest: &str) -> Result<(), PatchError> {
    let invalid = |reason: &str| {
        Err(PatchError::InvalidTag {
            tag: digest.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let Some((algo, hex)) = digest.split_once(':') else {
        return invalid("a digest looks like sha256:<64 lowercase hex digits>");
    };
    let hex_ok = |len: usize| {
        hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    match algo {
        "sha256" if hex_ok(64) => Ok(()),
        "sha512" if hex_ok(128) => Ok(()),
        "sha256" => invalid("a sha256 digest has exactly 64 lowercase hex digits"),
        "sha512" => invalid("a sha512 digest has exactly 128 lowercase hex digits"),
        _ => invalid("unknown digest algorithm; use sha256:<64 lowercase hex digits>"),
    }
}
