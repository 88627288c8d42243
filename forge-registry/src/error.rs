//! The error type of every registry operation.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::BoxError;
use crate::digest::Digest;

/// A failed registry operation: what went wrong ([`ErrorKind`]), plus how many retries were
/// spent and how long it took before giving up.
#[derive(Debug)]
#[non_exhaustive]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Retries spent before giving up.
    pub retries: u32,
    /// Time spent before giving up.
    pub elapsed: Duration,
    /// How long the registry asked to wait before trying again (`Retry-After` on its answer,
    /// capped by the retry policy), when it did. A retried blob transfer waits this long.
    pub retry_after: Option<Duration>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Error {
            kind,
            retries: 0,
            elapsed: Duration::ZERO,
            retry_after: None,
        }
    }

    /// True when the caller's input or a policy refused the operation (CLI exit code 2):
    /// bad references, tag policy, missing repository or layout, a source that does not exist.
    pub fn is_invalid_input(&self) -> bool {
        self.kind.is_invalid_input()
    }

    /// The kind.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind)
    }
}

impl From<crate::reference::ReferenceError> for Error {
    fn from(e: crate::reference::ReferenceError) -> Self {
        Error::new(ErrorKind::InvalidReference(e))
    }
}

impl From<crate::digest::DigestError> for Error {
    fn from(e: crate::digest::DigestError) -> Self {
        Error::new(ErrorKind::InvalidDigest(e))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        // Retries and time explain a failure that retrying could have fixed; on a verdict
        // (a mismatch, a refusal) "after 0 retries" is noise.
        if !self.kind.is_invalid_input()
            && (self.retries > 0 || (self.kind.is_retryable() && !self.elapsed.is_zero()))
        {
            let s = if self.retries == 1 {
                "retry"
            } else {
                "retries"
            };
            write!(
                f,
                " (failed after {} {s} in {:.1}s)",
                self.retries,
                self.elapsed.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source_error()
    }
}

/// What went wrong. Every message says what to do about it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An image reference could not be parsed.
    InvalidReference(crate::reference::ReferenceError),
    /// A digest could not be parsed.
    InvalidDigest(crate::digest::DigestError),
    /// Other invalid input (a missing destination tag, contradicting options).
    InvalidInput {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The destination tag already points at a different digest; tags are immutable.
    TagConflict {
        /// The destination reference.
        destination: String,
        /// Digest the destination tag holds.
        existing: Digest,
        /// Digest being copied.
        source: Digest,
    },
    /// The destination tag was free when the copy began, and someone else pushed a different
    /// digest under it before the copy wrote it. The tag is left as it is.
    TagTakenDuringCopy {
        /// The destination reference.
        destination: String,
        /// Digest the destination tag now holds.
        existing: Digest,
        /// Digest being copied.
        source: Digest,
    },
    /// `latest` (a mutable tag) was given as the destination tag.
    MutableTagRefused {
        /// The destination reference.
        destination: String,
        /// The refused tag.
        tag: String,
    },
    /// The destination tag does not fully match the required pattern.
    TagPatternMismatch {
        /// The tag.
        tag: String,
        /// The pattern it must match in full.
        pattern: String,
    },
    /// The destination repository does not exist (and Forge never creates repositories).
    RepositoryMissing {
        /// Repository name.
        repository: String,
        /// Registry host (or the OCI layout directory).
        registry: String,
        /// Who to ask (configurable via `CopyOptions::support_hint`).
        hint: String,
    },
    /// A manifest (tag or digest) does not exist at the source.
    ManifestNotFound {
        /// The reference that was looked up.
        reference: String,
    },
    /// Content did not hash to the digest it was addressed by.
    DigestMismatch {
        /// What was checked (blob, manifest, header).
        what: String,
        /// Expected digest.
        expected: Digest,
        /// Digest of the bytes received.
        actual: Digest,
    },
    /// The destination does not hold what was copied: found by verification (after a copy, or
    /// by [`Client::verify`](crate::Client::verify)), or said by the registry itself (a PUT
    /// answered with another `Docker-Content-Digest`; a referrers fallback index that another
    /// writer kept replacing).
    VerificationFailed {
        /// The destination reference.
        reference: String,
        /// What is missing or different.
        reason: String,
    },
    /// The destination tag already held the source digest and the image was complete and
    /// verified, but copying the referrers the destination lacks (attached at the source since
    /// the first copy) failed. The tag was not touched; `source` says what failed.
    ReferrersNotCopied {
        /// The destination reference.
        destination: String,
        /// The image digest, already at the destination.
        digest: Digest,
        /// What failed while copying the referrers.
        source: Box<Error>,
    },
    /// Authentication failed (401 after presenting credentials, or a token realm refusal).
    Unauthorized {
        /// Registry host.
        registry: String,
        /// Registry message.
        message: String,
    },
    /// The credentials are valid but not allowed to do this (403 / DENIED).
    Denied {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// Registry message.
        message: String,
    },
    /// The registry answered with an unexpected status.
    Registry {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The OCI error code (`MANIFEST_INVALID`, `TAG_INVALID`, …) when the body had one.
        code: Option<String>,
        /// The registry's message.
        message: String,
    },
    /// The connection failed (refused, reset, TLS, timeout, truncated body).
    Transport {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: BoxError,
    },
    /// A credential provider failed.
    Credential {
        /// Registry host.
        registry: String,
        /// The provider's error.
        source: BoxError,
    },
    /// A manifest is not usable (bad JSON, unsupported schema or media type).
    UnsupportedManifest {
        /// Reference or digest.
        reference: String,
        /// Why.
        reason: String,
    },
    /// An OCI image layout problem (missing `oci-layout`, bad `index.json`).
    OciLayout {
        /// The layout directory.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A local file operation failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ErrorKind {
    /// See [`Error::is_invalid_input`].
    pub fn is_invalid_input(&self) -> bool {
        if let ErrorKind::ReferrersNotCopied { source, .. } = self {
            return source.kind.is_invalid_input();
        }
        matches!(
            self,
            ErrorKind::InvalidReference(_)
                | ErrorKind::InvalidDigest(_)
                | ErrorKind::InvalidInput { .. }
                | ErrorKind::TagConflict { .. }
                | ErrorKind::TagTakenDuringCopy { .. }
                | ErrorKind::MutableTagRefused { .. }
                | ErrorKind::TagPatternMismatch { .. }
                | ErrorKind::RepositoryMissing { .. }
                | ErrorKind::ManifestNotFound { .. }
                | ErrorKind::OciLayout { .. }
        )
    }

    /// True for failures worth retrying: connection problems, 5xx, 429, corrupted transfers.
    pub fn is_retryable(&self) -> bool {
        match self {
            ErrorKind::ReferrersNotCopied { source, .. } => source.kind.is_retryable(),
            ErrorKind::Transport { .. } | ErrorKind::DigestMismatch { .. } => true,
            ErrorKind::Registry { status, code, .. } => {
                *status >= 500
                    || *status == 429
                    || code.as_deref() == Some("TOOMANYREQUESTS")
                    || code.as_deref() == Some("BLOB_UPLOAD_UNKNOWN")
            }
            _ => false,
        }
    }

    fn source_error(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ErrorKind::Transport { source, .. } | ErrorKind::Credential { source, .. } => {
                Some(source.as_ref())
            }
            ErrorKind::Io { source, .. } => Some(source),
            ErrorKind::ReferrersNotCopied { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::InvalidReference(e) => write!(f, "{e}"),
            ErrorKind::InvalidDigest(e) => write!(f, "{e}"),
            ErrorKind::InvalidInput { message } => f.write_str(message),
            ErrorKind::TagConflict {
                destination,
                existing,
                source,
            } => write!(
                f,
                "destination tag {destination} already points at {existing}, not at the source digest {source}: tags are immutable, so promote under a new tag. Nothing was uploaded."
            ),
            ErrorKind::TagTakenDuringCopy {
                destination,
                existing,
                source,
            } => write!(
                f,
                "destination tag {destination} was pushed by someone else during this copy and now points at {existing}, not at the source digest {source}: it was left as it is. Find the other pipeline that promotes under this tag; promote under a new tag. The blobs uploaded for {source} are unreferenced and harmless."
            ),
            ErrorKind::MutableTagRefused { destination, tag } => write!(
                f,
                "refusing to push to '{destination}': the tag '{tag}' is mutable and cannot prove what runs; use an immutable tag such as a version or build number. Nothing was uploaded."
            ),
            ErrorKind::TagPatternMismatch { tag, pattern } => write!(
                f,
                "destination tag '{tag}' does not match the required tag pattern '{pattern}' (the whole tag must match); choose a conforming tag. Nothing was uploaded."
            ),
            ErrorKind::RepositoryMissing {
                repository,
                registry,
                hint,
            } => write!(
                f,
                "repository '{repository}' does not exist in registry '{registry}': {hint}. Nothing was uploaded."
            ),
            ErrorKind::ReferrersNotCopied {
                destination,
                digest,
                ..
            } => write!(
                f,
                "{destination} already holds {digest}, complete and verified, but the referrers it lacks (signatures, SBOMs or reports attached at the source since the first copy) could not be copied; the tag was left as it is. Re-run the copy once the cause below is fixed, or copy without referrers (--no-referrers, or `CopyOptions::referrers = false`) if nothing in the target environment requires them"
            ),
            ErrorKind::ManifestNotFound { reference } => write!(
                f,
                "image '{reference}' does not exist (manifest unknown): check the tag or digest"
            ),
            ErrorKind::DigestMismatch {
                what,
                expected,
                actual,
            } => write!(
                f,
                "{what}: expected digest {expected} but the bytes hash to {actual}; the content was corrupted or changed in transit, nothing was committed"
            ),
            ErrorKind::VerificationFailed { reference, reason } => write!(
                f,
                "verification of '{reference}' failed: {reason}; do not deploy it: copy the image there again, or check the digest you expected"
            ),
            ErrorKind::Unauthorized { registry, message } => write!(
                f,
                "registry '{registry}' refused authentication ({message}): log in (docker login {registry}) or check the credential provider"
            ),
            ErrorKind::Denied {
                registry,
                repository,
                message,
            } => write!(
                f,
                "access to '{repository}' on '{registry}' was denied ({message}): the credentials lack permission; ask for push/pull rights on that repository"
            ),
            ErrorKind::Registry {
                method,
                url,
                status,
                code,
                message,
            } => {
                write!(f, "{method} {url} answered HTTP {status}")?;
                if let Some(code) = code {
                    write!(f, " {code}")?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            ErrorKind::Transport { context, .. } => write!(
                f,
                "{context}: the connection failed or was cut off; check that the registry is reachable"
            ),
            ErrorKind::Credential { registry, .. } => {
                write!(f, "cannot get credentials for '{registry}'")
            }
            ErrorKind::UnsupportedManifest { reference, reason } => {
                write!(f, "cannot copy '{reference}': {reason}")
            }
            ErrorKind::OciLayout { path, reason } => {
                write!(f, "OCI layout {}: {reason}", path.display())
            }
            ErrorKind::Io { path, .. } => write!(f, "I/O on {} failed", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_how_many_retries_and_how_long() {
        let e = Error {
            kind: ErrorKind::Registry {
                method: "PUT".to_owned(),
                url: "http://r/v2/a/manifests/1".to_owned(),
                status: 503,
                code: None,
                message: "unavailable".to_owned(),
            },
            retries: 3,
            elapsed: Duration::from_millis(4210),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "PUT http://r/v2/a/manifests/1 answered HTTP 503: unavailable (failed after 3 retries in 4.2s)"
        );
        assert!(e.kind.is_retryable());
        assert!(!e.is_invalid_input());
    }

    #[test]
    fn verdicts_have_no_retry_suffix_but_network_failures_keep_their_time() {
        let verdict = Error {
            kind: ErrorKind::VerificationFailed {
                reference: "r.example/a:1".to_owned(),
                reason: "it resolves to sha256:aa instead of sha256:bb".to_owned(),
            },
            retries: 0,
            elapsed: Duration::from_millis(500),
            retry_after: None,
        };
        assert!(!verdict.to_string().contains("failed after"), "{verdict}");
        let network = Error {
            kind: ErrorKind::Registry {
                method: "GET".to_owned(),
                url: "http://r/v2/".to_owned(),
                status: 503,
                code: None,
                message: String::new(),
            },
            retries: 0,
            elapsed: Duration::from_millis(2100),
            retry_after: None,
        };
        assert!(
            network
                .to_string()
                .ends_with("(failed after 0 retries in 2.1s)"),
            "{network}"
        );
    }

    #[test]
    fn refusals_have_no_retry_suffix() {
        let e = Error {
            kind: ErrorKind::RepositoryMissing {
                repository: "team/app".to_owned(),
                registry: "r.example".to_owned(),
                hint: "ask".to_owned(),
            },
            retries: 0,
            elapsed: Duration::from_millis(30),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "repository 'team/app' does not exist in registry 'r.example': ask. Nothing was uploaded."
        );
        assert!(e.is_invalid_input());
    }
}
