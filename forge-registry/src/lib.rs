//! Pure-Rust OCI distribution client: registry-to-registry image copy with the digest proven at the destination.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
