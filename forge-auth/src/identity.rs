//! `GetCallerIdentity`: who the credentials in an `SdkConfig` are.

use serde::Serialize;

/// The answer of `sts:GetCallerIdentity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallerIdentity {
    /// 12-digit account id.
    pub account: String,
    /// ARN (`arn:aws:sts::<account>:assumed-role/<role>/<session>` for a chain).
    pub arn: String,
    /// Unique id (`AROA…:<session>`).
    pub user_id: String,
}

/// `GetCallerIdentity` failed.
#[derive(Debug, thiserror::Error)]
#[error("sts:GetCallerIdentity failed with {code}: {message}")]
pub struct IdentityError {
    /// AWS error code.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// The transport error (`None` when AWS answered: code and message say it all).
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Calls `GetCallerIdentity` with `sdk`'s credentials (the SDK's retries apply).
pub async fn caller_identity(sdk: &aws_types::SdkConfig) -> Result<CallerIdentity, IdentityError> {
    let out = aws_sdk_sts::Client::new(sdk)
        .get_caller_identity()
        .send()
        .await
        .map_err(|err| {
            use aws_sdk_sts::error::ProvideErrorMetadata as _;
            IdentityError {
                code: err.code().unwrap_or("RequestFailed").to_owned(),
                message: err
                    .message()
                    .unwrap_or("the request failed (see the cause below)")
                    .to_owned(),
                source: err.as_service_error().is_none().then(|| Box::new(err) as _),
            }
        })?;
    Ok(CallerIdentity {
        account: out.account().unwrap_or_default().to_owned(),
        arn: out.arn().unwrap_or_default().to_owned(),
        user_id: out.user_id().unwrap_or_default().to_owned(),
    })
}

/// Formats `time` as RFC 3339 UTC (`2026-11-26T10:00:00Z`), as `credential_process` expects.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    aws_smithy_types::DateTime::from(time)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}
