//! [`RetryPolicy`]: classified retries with full-jitter exponential backoff.

use std::time::Duration;

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff ceiling; doubles per retry.
    pub base: Duration,
    /// Backoff ceiling.
    pub cap: Duration,
    /// `InvalidIdentityToken` is retried only while the token is younger than this (the IdP's
    /// keys or clock may lag right after issue); later it is a real rejection.
    pub fresh_token_window: Duration,
    /// How long one STS call may take before it counts as a timeout (and is retried): a
    /// credential process that hangs on a silent endpoint hangs Terraform with it.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            base: Duration::from_millis(300),
            cap: Duration::from_secs(8),
            fresh_token_window: Duration::from_secs(120),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The longest a call retried under this policy can take when every attempt runs into
    /// `attempt_timeout` (or, for calls with their own limit, `per_attempt`) and every backoff
    /// is the cap: what an outer timeout must allow so the classified error, not the outer
    /// timeout, is what the user sees.
    pub fn worst_case(&self, per_attempt: Duration) -> Duration {
        per_attempt
            .saturating_mul(self.max_retries.saturating_add(1))
            .saturating_add(self.cap.saturating_mul(self.max_retries))
    }

    /// Full-jitter delay before retry number `attempt + 1`: uniform in `0..=min(cap, base·2^attempt)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=millis))
    }
}
