//! Byte-exact image-tag patcher for Argo CD manifests and a Git Ledger writer that never loses an update.
//!
//! The patcher changes **only the bytes of one scalar**: comments, blank lines, key order, indentation, quoting
//! style, CRLF line ends, a BOM and trailing text survive untouched. It locates the scalar with yaml-rust2's event
//! parser (line/column markers converted to byte offsets), splices the new value in, re-parses the result and
//! refuses to return anything whose event stream differs from the original in more than that one value.
//!
//! ```
//! use forge_ledger::{Selector, patch_tag, read_tag};
//!
//! let manifest = "\
//! apiVersion: argoproj.io/v1alpha1
//! kind: Application
//! metadata:
//!   name: api-prod
//! spec:
//!   source:
//!     helm:
//!       parameters:
//!       ## set by forge
//!       - name: image.tag
//!         value: \"1.19\"
//! ";
//! let found = read_tag(manifest, &Selector::default())?;
//! assert_eq!(found.value, "1.19");
//! assert_eq!(found.path, "spec.source.helm.parameters[name=image.tag].value");
//!
//! let patched = patch_tag(manifest, &Selector::default(), "1.20")?;
//! assert_eq!(patched.text, manifest.replace("\"1.19\"", "\"1.20\""));
//! assert_eq!((patched.old.as_str(), patched.new.as_str()), ("1.19", "1.20"));
//! # Ok::<(), forge_ledger::PatchError>(())
//! ```
//!
//! [`patch`] documents the targets it detects (Argo CD `Application`/`ApplicationSet` Helm parameters,
//! `valuesObject`, `values: |` blocks, kustomize images, Helm values files), key paths, the digest rule and quoting.
//! Ambiguity is an error listing the candidates, never a guess. [`lint`] checks a Ledger checkout: files parse, no
//! mutable or missing tags, optional digest pinning, no automated sync under Prod paths.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod git;
pub mod lint;
pub mod patch;
pub mod writer;

pub use lint::{Finding, LintError, LintOptions, lint_dir, lint_text};
pub use patch::{
    Found, PatchError, Patched, Selector, patch_image, patch_tag, read_tag, validate_digest,
    validate_tag,
};
pub use writer::{Current, HistoryEntry, Ledger, LedgerError, Revert, SetTag, SetTagOutcome};
