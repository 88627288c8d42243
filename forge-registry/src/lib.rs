//! Pure-Rust OCI distribution client: registry-to-registry image copy with the digest proven
//! at the destination.
//!
//! Forge's promise is that the image running in Prod is byte-for-byte the image CI built. This
//! crate copies images between registries (and OCI layout directories) without a Docker
//! daemon: manifests are pushed as the exact bytes served (never re-serialized), blobs are
//! streamed source → destination with their sha256 checked in flight before the upload is
//! committed, and after every copy the destination is fetched again and hashed.
//!
//! Promotion policies are enforced here, not by callers: destination tags are immutable (a tag
//! holding another digest is an error; the same digest writes no tag, though whatever the
//! destination lacks, such as referrers attached since or a blob gone, is still copied),
//! `latest` is refused, an optional tag pattern must match, and the destination repository
//! must already exist.
//!
//! Transient failures (connection errors, 5xx but 501, 429 honouring `Retry-After`, a token
//! service hiccup, a blob cut off mid-transfer) are retried with jittered backoff, and an error that
//! gives up says how many retries and how long it took. Transfers have no overall time limit:
//! a 1 GiB layer over a slow link is fine as long as bytes keep moving; one that stalls for
//! the read timeout ([`ClientBuilder::read_timeout`], 120 s) fails and is retried.
//!
//! ```no_run
//! use forge_registry::{Client, CopyOptions, DockerConfig, Reference};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder()
//!     .docker_config(DockerConfig::load_default()?)
//!     .jobs(4)
//!     .build()?;
//! let src: Reference = "registry.ci.example/team/app:1.4.2".parse()?;
//! let dst: Reference = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.4.2".parse()?;
//! let report = client.copy(&src, &dst, &CopyOptions::default()).await?;
//! assert!(report.verified);
//! tracing::info!(destination = %report.destination, digest = %report.digest, "promoted");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// `Error` carries the failing URL, status and registry message inline (plus retries and
// elapsed time): 128 bytes is a fair price on a path dominated by network I/O, and keeping
// `Error::kind` a plain field keeps matching simple for callers.
#![allow(clippy::result_large_err)]

mod auth;
mod client;
mod copy;
mod digest;
mod error;
mod layout;
mod reference;
mod transfer;

pub use auth::{
    Anonymous, BoxError, Credential, CredentialFuture, CredentialProvider, DEFAULT_HELPER_TIMEOUT,
    DockerConfig, DockerConfigError, StaticCredential,
};
pub use client::{Client, ClientBuilder, DEFAULT_JOBS, RetryPolicy};
pub use copy::{
    CopyOptions, CopyReport, DEFAULT_SUPPORT_HINT, Progress, Resolved, UploadMode, VerifyReport,
};
pub use digest::{Descriptor, Digest, DigestError, ManifestRefs, MediaType};
pub use error::{Error, ErrorKind};
pub use layout::{REF_NAME, init_oci_layout};
pub use reference::{DOCKER_HUB, Reference, ReferenceError};
