//! SSM invocation statuses (`Status` and `StatusDetails`) mapped to what a deploy needs to
//! know: is it finished, and did it succeed.
//!
//! The SDK enums are non-exhaustive and AWS adds values, so both are parsed from their wire
//! strings with a wildcard ([`InvocationStatus::Other`], [`StatusDetail::Other`]). An unknown
//! `Status` is treated as *not finished*: the deploy keeps waiting until its deadline rather than
//! declaring a result it does not understand.

use std::fmt;

/// `CommandInvocation.Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvocationStatus {
    /// Not yet sent to the instance.
    Pending,
    /// Sent, not finished.
    InProgress,
    /// Delivery failed, SSM retries.
    Delayed,
    /// Finished with exit code 0.
    Success,
    /// Cancelled (by CancelCommand or by MaxErrors).
    Cancelled,
    /// Delivery or execution timed out.
    TimedOut,
    /// Finished with a non-zero exit code, or undeliverable.
    Failed,
    /// Being cancelled.
    Cancelling,
    /// A value this version does not know.
    Other(String),
}

impl InvocationStatus {
    /// Parses the wire string (`"InProgress"`, …); unknown values become [`Self::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "Pending" => Self::Pending,
            "InProgress" | "In Progress" => Self::InProgress,
            "Delayed" => Self::Delayed,
            "Success" => Self::Success,
            "Cancelled" | "Canceled" => Self::Cancelled,
            "TimedOut" | "Timed Out" => Self::TimedOut,
            "Failed" => Self::Failed,
            "Cancelling" | "Canceling" => Self::Cancelling,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Delayed => "Delayed",
            Self::Success => "Success",
            Self::Cancelled => "Cancelled",
            Self::TimedOut => "TimedOut",
            Self::Failed => "Failed",
            Self::Cancelling => "Cancelling",
            Self::Other(s) => s,
        }
    }

    /// True for Success, Cancelled, TimedOut and Failed.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Success | Self::Cancelled | Self::TimedOut | Self::Failed
        )
    }
}

impl fmt::Display for InvocationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `CommandInvocation.StatusDetails`: finer than the status (why it timed out or failed).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusDetail {
    /// Not yet sent.
    Pending,
    /// Running.
    InProgress,
    /// Delivery is being retried.
    Delayed,
    /// Finished with exit code 0.
    Success,
    /// Not delivered before the delivery timeout (`TimeoutSeconds`); does not count toward
    /// MaxErrors.
    DeliveryTimedOut,
    /// Started but not finished before `executionTimeout`; counts toward MaxErrors.
    ExecutionTimedOut,
    /// Non-zero exit code.
    Failed,
    /// Cancelled.
    Cancelled,
    /// The instance does not exist or does not answer (agent down, no IAM profile).
    Undeliverable,
    /// Not run because the command exceeded MaxErrors.
    Terminated,
    /// Being cancelled.
    Cancelling,
    /// A value this version does not know.
    Other(String),
}

impl StatusDetail {
    /// Parses the wire string (`"Delivery Timed Out"`, …); unknown values become [`Self::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "Pending" => Self::Pending,
            "InProgress" | "In Progress" => Self::InProgress,
            "Delayed" => Self::Delayed,
            "Success" => Self::Success,
            "Delivery Timed Out" | "DeliveryTimedOut" => Self::DeliveryTimedOut,
            "Execution Timed Out" | "ExecutionTimedOut" => Self::ExecutionTimedOut,
            "Failed" => Self::Failed,
            "Cancelled" | "Canceled" => Self::Cancelled,
            "Undeliverable" => Self::Undeliverable,
            "Terminated" => Self::Terminated,
            "Cancelling" | "Canceling" => Self::Cancelling,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Delayed => "Delayed",
            Self::Success => "Success",
            Self::DeliveryTimedOut => "Delivery Timed Out",
            Self::ExecutionTimedOut => "Execution Timed Out",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
            Self::Undeliverable => "Undeliverable",
            Self::Terminated => "Terminated",
            Self::Cancelling => "Cancelling",
            Self::Other(s) => s,
        }
    }

    /// True for the terminal details.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Success
                | Self::DeliveryTimedOut
                | Self::ExecutionTimedOut
                | Self::Failed
                | Self::Cancelled
                | Self::Undeliverable
                | Self::Terminated
        )
    }

    /// What to do about this outcome, for reports (None for success and in-flight states).
    pub fn advice(&self) -> Option<&'static str> {
        Some(match self {
            Self::DeliveryTimedOut => {
                "the instance did not pick the command up in time: check that the SSM agent runs and the instance is 'Online' in Fleet Manager, or raise the delivery timeout"
            }
            Self::ExecutionTimedOut => {
                "the script ran longer than the execution timeout: look at the step it reached, or raise the execution timeout"
            }
            Self::Failed => "the script failed: the failing step and its output are shown",
            Self::Cancelled => {
                "the command was cancelled (by a deadline, an operator or MaxErrors)"
            }
            Self::Undeliverable => {
                "SSM could not reach the instance: it may be stopped, terminated, lack the SSM instance profile, or have no route to SSM"
            }
            Self::Terminated => {
                "not run: the command exceeded MaxErrors on other instances first; fix those and redeploy"
            }
            _ => return None,
        })
    }
}

impl fmt::Display for StatusDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an invocation with this status and details is finished. A known terminal detail is
/// final even when the status lags behind; otherwise the status decides.
pub fn is_finished(status: &InvocationStatus, detail: &StatusDetail) -> bool {
    detail.is_terminal() || status.is_terminal()
}

/// Whether an invocation succeeded: both say Success (or the detail is absent/unknown and the
/// status says Success).
pub fn is_success(status: &InvocationStatus, detail: &StatusDetail) -> bool {
    *status == InvocationStatus::Success
        && matches!(detail, StatusDetail::Success | StatusDetail::Other(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_value_maps() {
        let check = |status: &str, detail: &str, finished: bool, success: bool| {
            let s = InvocationStatus::parse(status);
            let d = StatusDetail::parse(detail);
            assert!(!matches!(s, InvocationStatus::Other(_)), "{status}");
            assert!(!matches!(d, StatusDetail::Other(_)), "{detail}");
            assert_eq!(s.as_str().replace(' ', ""), status.replace(' ', ""));
            assert_eq!(is_finished(&s, &d), finished, "{status}/{detail}");
            assert_eq!(is_success(&s, &d), success, "{status}/{detail}");
        };
        check("Pending", "Pending", false, false);
        check("InProgress", "InProgress", false, false);
        check("Delayed", "Delayed", false, false);
        check("Success", "Success", true, true);
        check("Cancelled", "Cancelled", true, false);
        check("TimedOut", "Delivery Timed Out", true, false);
        check("TimedOut", "Execution Timed Out", true, false);
        check("Failed", "Failed", true, false);
        check("Failed", "Undeliverable", true, false);
        check("Cancelled", "Terminated", true, false);
        check("Cancelling", "Cancelling", false, false);
    }

    #[test]
    fn unknown_values_keep_waiting() {
        let s = InvocationStatus::parse("Hibernating");
        let d = StatusDetail::parse("Hibernating");
        assert_eq!(s.as_str(), "Hibernating");
        assert!(!is_finished(&s, &d));
        // A known terminal detail ends the wait even with an unknown status.
        assert!(is_finished(&s, &StatusDetail::Undeliverable));
    }
}
