//! Byte-exact image-tag patcher for Argo CD manifests and a Git Ledger writer that never loses an update.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
