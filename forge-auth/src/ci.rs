//! The CI system a pipeline runs under: detection (from an explicit environment lookup), the
//! logging command that masks a secret in its logs, the build id used in session names, and the
//! "no static credentials" policy.
//!
//! The library never prints: [`Ci::mask_line`] returns the line and the caller prints it.

use crate::Secret;

/// The CI system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ci {
    /// Azure DevOps (`TF_BUILD` set).
    AzureDevOps,
    /// GitHub Actions (`GITHUB_ACTIONS=true`).
    GitHubActions,
    /// Not a known CI (a terminal, another tool).
    None,
}

impl Ci {
    /// Detects the CI system from `lookup` (pass `|k| std::env::var(k).ok()` for the process).
    pub fn detect(lookup: &dyn Fn(&str) -> Option<String>) -> Ci {
        if lookup("TF_BUILD").is_some_and(|v| !v.is_empty()) {
            Ci::AzureDevOps
        } else if lookup("GITHUB_ACTIONS").is_some_and(|v| v == "true") {
            Ci::GitHubActions
        } else {
            Ci::None
        }
    }

    /// The logging command that makes the CI mask `secret` in every later log line
    /// (`##vso[task.setsecret]…` or `::add-mask::…`), or `None` outside CI. Print it on stdout.
    pub fn mask_line(self, secret: &Secret) -> Option<String> {
        let value = secret.expose();
        if value.is_empty() {
            return None;
        }
        match self {
            Ci::AzureDevOps => Some(format!(
                "##vso[task.setsecret]{}",
                escape_azure_value(value)
            )),
            Ci::GitHubActions => Some(format!("::add-mask::{}", escape_github_data(value))),
            Ci::None => None,
        }
    }

    /// The pipeline's build id (`BUILD_BUILDID` on Azure DevOps, `GITHUB_RUN_ID` plus
    /// `GITHUB_RUN_ATTEMPT` on GitHub), for session names.
    pub fn build_id(self, lookup: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        match self {
            Ci::AzureDevOps => lookup("BUILD_BUILDID"),
            Ci::GitHubActions => {
                lookup("GITHUB_RUN_ID").map(|id| match lookup("GITHUB_RUN_ATTEMPT") {
                    Some(attempt) if attempt != "1" => format!("{id}.{attempt}"),
                    _ => id,
                })
            }
            Ci::None => None,
        }
    }
}

/// Azure DevOps logging-command values escape `%`, CR, LF, `;` and `]`.
pub fn escape_azure_value(value: &str) -> String {
    value
        .replace('%', "%AZP25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
        .replace(';', "%3B")
        .replace(']', "%5D")
}

/// GitHub workflow-command data escapes `%`, CR and LF.
pub fn escape_github_data(value: &str) -> String {
    value
        .replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Refusal of static AWS keys in CI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `AWS_ACCESS_KEY_ID` without `AWS_SESSION_TOKEN` under a CI system.
    #[error(
        "static AWS credentials found in {ci:?}: AWS_ACCESS_KEY_ID ({key_hint}) is set without \
         AWS_SESSION_TOKEN. Pipelines must not hold long-lived keys: they do not expire, leak \
         through logs and forks, and bypass the OIDC role chain's audit trail. Remove the \
         variable from the pipeline and let Forge assume the role from the pipeline's OIDC token, \
         or set `[auth] allow_static_credentials = true` if this is a deliberate exception"
    )]
    StaticCredentialsInCi {
        /// Where.
        ci: Ci,
        /// The key id's first four characters (`AKIA…`), never the whole key.
        key_hint: String,
    },
}

/// The "no static credentials" policy: under CI ([`Ci::AzureDevOps`] or
/// [`Ci::GitHubActions`]), `AWS_ACCESS_KEY_ID` without `AWS_SESSION_TOKEN` is refused unless
/// `allow` is set.
pub fn check_static_credentials(
    lookup: &dyn Fn(&str) -> Option<String>,
    allow: bool,
) -> Result<(), PolicyError> {
    let ci = Ci::detect(lookup);
    if allow || ci == Ci::None {
        return Ok(());
    }
    let key = lookup("AWS_ACCESS_KEY_ID").filter(|k| !k.is_empty());
    let session = lookup("AWS_SESSION_TOKEN").filter(|t| !t.is_empty());
    match (key, session) {
        (Some(key), None) => Err(PolicyError::StaticCredentialsInCi {
            ci,
            key_hint: format!("{}…", key.chars().take(4).collect::<String>()),
        }),
        _ => Ok(()),
    }
}
