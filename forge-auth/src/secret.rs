//! [`Secret`]: a string that never reaches logs, `Display` or `Debug`.

use std::fmt;

/// A secret value (OIDC token, secret access key, session token, registry password).
///
/// `Debug` prints `Secret(<redacted>)`; there is no `Display`. Read it with [`Secret::expose`]
/// only where it is sent to its destination.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: use only to send it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the value is empty or only whitespace.
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}
