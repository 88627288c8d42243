//! OIDC token sources: Azure DevOps, GitHub Actions, a token file (re-read on each use) and a
//! value taken from an environment variable. [`TokenSource::detect`] is the only place that reads
//! the environment, through a lookup function so callers (and tests) pass explicit maps.
//!
//! A token is fetched anew on every [`TokenSource::fetch`]: CI tokens live ~10 minutes, so a
//! refresh an hour later needs a new one.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;

use crate::Secret;
use crate::retry::RetryPolicy;

/// Default GitHub audience for AWS.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";

/// Where the OIDC token comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TokenSource {
    /// Azure DevOps: `POST {request_uri}?api-version=7.1&serviceConnectionId={service_connection}`
    /// with `Authorization: Bearer {access_token}` → `{"oidcToken": …}`.
    AzureDevOps {
        /// `SYSTEM_OIDCREQUESTURI`.
        request_uri: String,
        /// `SYSTEM_ACCESSTOKEN`.
        access_token: Secret,
        /// The service connection id.
        service_connection: String,
    },
    /// GitHub Actions: `GET {request_url}&audience={audience}` with
    /// `Authorization: Bearer {request_token}` → `{"value": …}`.
    GitHub {
        /// `ACTIONS_ID_TOKEN_REQUEST_URL`.
        request_url: String,
        /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
        request_token: Secret,
        /// Audience (default [`DEFAULT_AUDIENCE`]).
        audience: String,
    },
    /// A file holding the token (`AWS_WEB_IDENTITY_TOKEN_FILE`), re-read on every fetch.
    File(PathBuf),
    /// A token value read once from the named environment variable.
    Value {
        /// Where the value came from (for messages).
        origin: String,
        /// The token.
        token: Secret,
    },
}

/// How to choose the token source: the `[auth] token` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSetting {
    /// Detect Azure DevOps, then GitHub Actions, then `AWS_WEB_IDENTITY_TOKEN_FILE`.
    Auto,
    /// Azure DevOps.
    AzureDevOps,
    /// GitHub Actions.
    GitHub,
    /// `file:PATH`.
    File(PathBuf),
    /// `env:VAR`.
    Env(String),
}

impl std::str::FromStr for TokenSetting {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(TokenSetting::Auto),
            "azure-devops" => Ok(TokenSetting::AzureDevOps),
            "github" => Ok(TokenSetting::GitHub),
            _ => {
                // A token pasted after `file:` or `env:` would be echoed by every later error
                // (the path that cannot be read, the variable that is not set): refuse it here,
                // described, never quoted.
                if let Some(path) = s
                    .strip_prefix("file:")
                    .filter(|p| !p.is_empty() && (p.contains('/') || !looks_like_credential(p)))
                {
                    Ok(TokenSetting::File(PathBuf::from(path)))
                } else if let Some(var) = s
                    .strip_prefix("env:")
                    .filter(|v| is_env_name(v) && !looks_like_credential(v))
                {
                    Ok(TokenSetting::Env(var.to_owned()))
                } else {
                    Err(TokenError::BadSetting {
                        setting: shown_setting(s),
                    })
                }
            }
        }
    }
}

/// Three dot-separated parts, the first a base64url JSON object (`eyJ` is `{"`): a JWT.
/// `oidc.token.jwt` is a file name, not a token.
fn looks_like_jwt(value: &str) -> bool {
    value.split('.').count() == 3 && value.starts_with("eyJ")
}

/// Prefixes of credentials that are also valid variable and file names: GitHub tokens
/// (`ghp_`, `github_pat_`, …), GitLab (`glpat-`), Slack (`xox?-`), AWS access key ids.
const CREDENTIAL_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "AKIA",
    "ASIA",
];

/// A JWT, a value with a known credential prefix, or a long random-looking word (mixed case
/// and digits, 30+ characters): something that must not be echoed where a variable or file
/// name was expected. Real names are upper-case words (`ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
fn looks_like_credential(value: &str) -> bool {
    let has = |f: fn(&u8) -> bool| value.as_bytes().iter().any(f);
    let access_key_id = value.len() == 20
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    looks_like_jwt(value)
        || CREDENTIAL_PREFIXES
            .iter()
            .any(|p| value.starts_with(p) && (!p.starts_with('A') || access_key_id))
        || (value.len() >= 30
            && has(u8::is_ascii_lowercase)
            && has(u8::is_ascii_uppercase)
            && has(u8::is_ascii_digit))
}

/// How an environment variable name or token file path is quoted in messages: as given,
/// unless it looks like a credential (then described, never echoed).
pub fn shown_name(value: &str) -> String {
    let last = value.rsplit('/').next().unwrap_or(value);
    if looks_like_credential(last) || value.len() > 200 {
        "(a name that looks like a credential, not shown)".to_owned()
    } else {
        value.to_owned()
    }
}

/// A plausible environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters
/// (a longer "name" is more likely a pasted token).
fn is_env_name(value: &str) -> bool {
    let mut bytes = value.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && value.len() <= 64
}

/// How a rejected token setting is quoted back: a value that looks like a token itself (a
/// JWT, or anything long; `--token eyJ…` is an easy mistake) is never echoed.
pub fn shown_setting(value: &str) -> String {
    // Real settings are short words (`auto`, `env:OIDC`, `file:/path`); a typo is too. Anything
    // longer, or dotted like a JWT, may be a credential (a GitHub token is 40 characters).
    let jwt_like = value.split('.').count() == 3 && !value.contains('/');
    let is_source = value.starts_with("file:") || value.starts_with("env:");
    let env_token = value
        .strip_prefix("env:")
        .is_some_and(|v| v.len() > 64 || v.contains(['-', '.', '=']));
    let named_credential = value
        .strip_prefix("env:")
        .or_else(|| value.strip_prefix("file:"))
        .is_some_and(|v| shown_name(v) != v);
    if jwt_like
        || env_token
        || named_credential
        || (!is_source && value.len() > 24)
        || value.len() > 200
    {
        "a value that looks like a token itself (give its source instead, such as env:VAR or file:PATH)"
            .to_owned()
    } else {
        format!("`{value}`")
    }
}

/// Values the environment does not provide.
#[derive(Debug, Clone, Default)]
pub struct DetectOptions {
    /// GitHub audience (default [`DEFAULT_AUDIENCE`]).
    pub audience: Option<String>,
    /// Azure DevOps service connection id (required there).
    pub service_connection: Option<String>,
}

/// The claims Forge reads from a JWT (it never verifies the signature: STS does).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer.
    #[serde(default)]
    pub iss: Option<String>,
    /// Subject.
    #[serde(default)]
    pub sub: Option<String>,
    /// Issued at (Unix seconds).
    #[serde(default)]
    pub iat: Option<u64>,
    /// Expires at (Unix seconds).
    #[serde(default)]
    pub exp: Option<u64>,
}

/// A fetched token with the claims read from it.
#[derive(Debug, Clone)]
pub struct OidcToken {
    /// The JWT.
    pub value: Secret,
    /// Its claims.
    pub claims: Claims,
}

impl OidcToken {
    /// Seconds since the token was issued (`iat`), if it says.
    pub fn age(&self) -> Option<Duration> {
        let iat = UNIX_EPOCH + Duration::from_secs(self.claims.iat?);
        Some(SystemTime::now().duration_since(iat).unwrap_or_default())
    }
}

/// Token errors. None of them contains a token value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// `[auth] token` has an unknown value.
    #[error(
        "{setting} is not a token source; use auto, azure-devops, github, file:PATH or env:VAR"
    )]
    BadSetting {
        /// The value given, quoted, or a description when it looked like a token itself
        /// ([`shown_setting`]).
        setting: String,
    },
    /// Auto-detection found nothing, or an explicit source lacks its variables.
    #[error("no OIDC token source: {what}")]
    NotAvailable {
        /// What is missing and how to provide it.
        what: String,
    },
    /// The token file is missing or unreadable.
    #[error(
        "cannot read the OIDC token file {}: {source}; check the path (AWS_WEB_IDENTITY_TOKEN_FILE or `[auth] token = \"file:PATH\"`) and that the step that writes it ran first",
        shown_name(&path.to_string_lossy())
    )]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token is empty.
    #[error(
        "the OIDC token from {origin} is empty; the CI did not issue a token — check the step that provides it"
    )]
    Empty {
        /// Where it came from.
        origin: String,
    },
    /// The token is not a JWT.
    #[error(
        "the OIDC token from {origin} is not a JWT ({problem}); expected three base64url parts `header.payload.signature` with a JSON payload"
    )]
    Malformed {
        /// Where it came from.
        origin: String,
        /// What is wrong (never the token itself).
        problem: String,
    },
    /// The token already expired.
    #[error(
        "the OIDC token from {origin} expired {ago} s ago (exp {exp}); fetch a fresh one — CI tokens live about 10 minutes"
    )]
    Expired {
        /// Where it came from.
        origin: String,
        /// The `exp` claim.
        exp: u64,
        /// Seconds since.
        ago: u64,
    },
    /// The CI's token endpoint answered with an error status.
    #[error(
        "{provider} token request to {url} failed with HTTP {status} after {retries} retries in {elapsed:.1?}: {body}; {hint}"
    )]
    Http {
        /// `Azure DevOps` or `GitHub Actions`.
        provider: &'static str,
        /// The URL (without the bearer token).
        url: String,
        /// HTTP status.
        status: u16,
        /// First part of the response body.
        body: String,
        /// What to do.
        hint: String,
        /// Retries made.
        retries: u32,
        /// Time spent.
        elapsed: Duration,
    },
    /// The token endpoint could not be reached, or its answer is not the documented JSON.
    #[error(
        "{provider} token request to {url} failed after {retries} retries in {elapsed:.1?}: {what}"
    )]
    Request {
        /// `Azure DevOps` or `GitHub Actions`.
        provider: &'static str,
        /// The URL.
        url: String,
        /// What happened.
        what: String,
        /// Retries made.
        retries: u32,
        /// Time spent.
        elapsed: Duration,
        /// The transport error.
        #[source]
        source: Option<reqwest::Error>,
    },
}

impl TokenSource {
    /// Chooses the source for `setting`, reading CI variables through `lookup` (pass
    /// `|k| std::env::var(k).ok()` for the process environment).
    pub fn detect(
        setting: &TokenSetting,
        lookup: &dyn Fn(&str) -> Option<String>,
        options: &DetectOptions,
    ) -> Result<TokenSource, TokenError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let azure = || -> Result<TokenSource, TokenError> {
            let request_uri = get("SYSTEM_OIDCREQUESTURI").ok_or_else(|| TokenError::NotAvailable {
                what: "SYSTEM_OIDCREQUESTURI is not set; run in an Azure DevOps pipeline job (agent 3.x or later)".into(),
            })?;
            let access_token = get("SYSTEM_ACCESSTOKEN").ok_or_else(|| TokenError::NotAvailable {
                what: "SYSTEM_ACCESSTOKEN is not set; map it into the step: `env: { SYSTEM_ACCESSTOKEN: $(System.AccessToken) }`".into(),
            })?;
            let service_connection = options.service_connection.clone().filter(|s| !s.trim().is_empty()).ok_or_else(|| TokenError::NotAvailable {
                what: "no Azure DevOps service connection id; set `[auth] service_connection` (or --service-connection) to the id of the AWS service connection".into(),
            })?;
            Ok(TokenSource::AzureDevOps {
                request_uri,
                access_token: Secret::new(access_token),
                service_connection,
            })
        };
        let github = || -> Result<TokenSource, TokenError> {
            let missing = |v: &str| TokenError::NotAvailable {
                what: format!(
                    "{v} is not set; give the job `permissions: id-token: write` in the workflow"
                ),
            };
            let request_url = get("ACTIONS_ID_TOKEN_REQUEST_URL")
                .ok_or_else(|| missing("ACTIONS_ID_TOKEN_REQUEST_URL"))?;
            let request_token = get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
                .ok_or_else(|| missing("ACTIONS_ID_TOKEN_REQUEST_TOKEN"))?;
            Ok(TokenSource::GitHub {
                request_url,
                request_token: Secret::new(request_token),
                audience: options
                    .audience
                    .clone()
                    .unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned()),
            })
        };
        match setting {
            TokenSetting::AzureDevOps => azure(),
            TokenSetting::GitHub => github(),
            TokenSetting::File(path) => Ok(TokenSource::File(path.clone())),
            TokenSetting::Env(var) => match lookup(var) {
                Some(token) => Ok(TokenSource::Value {
                    origin: format!("environment variable {}", shown_name(var)),
                    token: Secret::new(token),
                }),
                None => Err(TokenError::NotAvailable {
                    what: {
                        let var = shown_name(var);
                        format!(
                            "environment variable {var} (from `[auth] token = \"env:{var}\"`) is not set"
                        )
                    },
                }),
            },
            TokenSetting::Auto => {
                if get("TF_BUILD").is_some() {
                    azure()
                } else if get("ACTIONS_ID_TOKEN_REQUEST_URL").is_some() {
                    github()
                } else if let Some(path) = get("AWS_WEB_IDENTITY_TOKEN_FILE") {
                    Ok(TokenSource::File(PathBuf::from(path)))
                } else if get("GITHUB_ACTIONS").is_some() {
                    github()
                } else {
                    Err(TokenError::NotAvailable {
                        what: "auto-detection found no Azure DevOps job (TF_BUILD), no GitHub Actions OIDC request (ACTIONS_ID_TOKEN_REQUEST_URL) and no AWS_WEB_IDENTITY_TOKEN_FILE; outside CI set `[auth] token = \"file:PATH\"` or `env:VAR`, or `none` to use your own AWS profile".into(),
                    })
                }
            }
        }
    }

    /// A short name for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::AzureDevOps {
                service_connection, ..
            } => {
                format!("Azure DevOps (service connection {service_connection})")
            }
            TokenSource::GitHub { audience, .. } => format!("GitHub Actions (audience {audience})"),
            TokenSource::File(path) => {
                format!("token file {}", shown_name(&path.to_string_lossy()))
            }
            TokenSource::Value { origin, .. } => origin.clone(),
        }
    }

    /// Fetches a fresh token (HTTP sources retry 5xx and transport errors under `retry`; 4xx fail
    /// at once) and checks that it is an unexpired JWT.
    pub async fn fetch(
        &self,
        http: &reqwest::Client,
        retry: &RetryPolicy,
    ) -> Result<OidcToken, TokenError> {
        let origin = self.describe();
        let value = match self {
            TokenSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| TokenError::File {
                    path: path.clone(),
                    source,
                })?
            }
            TokenSource::Value { token, .. } => token.expose().to_owned(),
            TokenSource::AzureDevOps {
                request_uri,
                access_token,
                service_connection,
            } => {
                let mut url = parse_url("Azure DevOps", request_uri)?;
                url.query_pairs_mut()
                    .append_pair("api-version", "7.1")
                    .append_pair("serviceConnectionId", service_connection);
                let body: AzureBody = http_json(
                    "Azure DevOps",
                    http,
                    reqwest::Method::POST,
                    url,
                    access_token,
                    retry,
                )
                .await?;
                body.oidc_token.unwrap_or_default()
            }
            TokenSource::GitHub {
                request_url,
                request_token,
                audience,
            } => {
                let mut url = parse_url("GitHub Actions", request_url)?;
                url.query_pairs_mut().append_pair("audience", audience);
                let body: GitHubBody = http_json(
                    "GitHub Actions",
                    http,
                    reqwest::Method::GET,
                    url,
                    request_token,
                    retry,
                )
                .await?;
                body.value.unwrap_or_default()
            }
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(TokenError::Empty { origin });
        }
        let claims = parse_jwt(&value).map_err(|problem| TokenError::Malformed {
            origin: origin.clone(),
            problem,
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // No grace: STS checks `exp` itself, and a token sent after it only earns a misleading
        // "check the clock" answer.
        if let Some(exp) = claims.exp
            && exp <= now
        {
            return Err(TokenError::Expired {
                origin,
                exp,
                ago: now - exp,
            });
        }
        Ok(OidcToken {
            value: Secret::new(value),
            claims,
        })
    }
}

#[derive(Deserialize)]
struct AzureBody {
    #[serde(rename = "oidcToken")]
    oidc_token: Option<String>,
}

#[derive(Deserialize)]
struct GitHubBody {
    value: Option<String>,
}

fn parse_url(provider: &'static str, raw: &str) -> Result<reqwest::Url, TokenError> {
    reqwest::Url::parse(raw).map_err(|e| TokenError::Request {
        provider,
        url: raw.to_owned(),
        what: format!("not a valid URL ({e})"),
        retries: 0,
        elapsed: Duration::ZERO,
        source: None,
    })
}

async fn http_json<T: serde::de::DeserializeOwned>(
    provider: &'static str,
    http: &reqwest::Client,
    method: reqwest::Method,
    url: reqwest::Url,
    bearer: &Secret,
    retry: &RetryPolicy,
) -> Result<T, TokenError> {
    let start = Instant::now();
    let shown = url.to_string();
    let mut attempt = 0u32;
    loop {
        let request = http
            .request(method.clone(), url.clone())
            .bearer_auth(bearer.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        let request = if method == reqwest::Method::POST {
            request.body("{}")
        } else {
            request
        };
        let outcome = request.send().await;
        let retryable = match outcome {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    let text = response.text().await.map_err(|e| TokenError::Request {
                        provider,
                        url: shown.clone(),
                        what: format!("reading the response failed: {e}"),
                        retries: attempt,
                        elapsed: start.elapsed(),
                        source: Some(e),
                    })?;
                    return serde_json::from_str(&text).map_err(|e| TokenError::Request {
                        provider,
                        url: shown.clone(),
                        what: format!("the response is not the documented JSON ({e})"),
                        retries: attempt,
                        elapsed: start.elapsed(),
                        source: None,
                    });
                }
                let body = response.text().await.unwrap_or_default();
                let err = TokenError::Http {
                    provider,
                    url: shown.clone(),
                    status: status.as_u16(),
                    body: excerpt(&body),
                    hint: http_hint(provider, status.as_u16()),
                    retries: attempt,
                    elapsed: start.elapsed(),
                };
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(err);
                }
                err
            }
            Err(e) => TokenError::Request {
                provider,
                url: shown.clone(),
                what: "the token endpoint could not be reached".into(),
                retries: attempt,
                elapsed: start.elapsed(),
                source: Some(e),
            },
        };
        if attempt >= retry.max_retries {
            return Err(retryable);
        }
        let delay = retry.backoff(attempt);
        tracing::debug!(provider, attempt, ?delay, "token request failed, retrying");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

fn http_hint(provider: &str, status: u16) -> String {
    match (provider, status) {
        ("Azure DevOps", 401) => "SYSTEM_ACCESSTOKEN was refused: map `$(System.AccessToken)` into the step's env and check the job's token has not expired".into(),
        ("Azure DevOps", 403 | 404) => "check that the service connection id is right and that this pipeline is authorized to use it (Project settings → Service connections → Security)".into(),
        ("GitHub Actions", 401 | 403) => "the request token was refused: give the job `permissions: id-token: write` (workflows from forks get no OIDC token)".into(),
        (_, s) if s >= 500 || s == 429 => "the CI's token service is failing; retry the job later".into(),
        _ => "check the request URL and the CI's token settings".into(),
    }
}

fn excerpt(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        "(empty body)".into()
    } else if flat.chars().count() > 300 {
        format!("{}…", flat.chars().take(300).collect::<String>())
    } else {
        flat
    }
}

/// Reads the claims of a JWT without verifying it; the error names the problem, never the token.
pub fn parse_jwt(token: &str) -> Result<Claims, String> {
    if !(4..=20000).contains(&token.len()) {
        return Err(format!(
            "{} characters; STS accepts 4 to 20000",
            token.len()
        ));
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(format!(
            "{} dot-separated part(s) instead of 3",
            parts.len()
        ));
    }
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |part: &str, name: &str| {
        engine
            .decode(part.trim_end_matches('='))
            .map_err(|_| format!("the {name} is not base64url"))
    };
    let header = decode(parts[0], "header")?;
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&header)
        .map_err(|_| "the header is not a JSON object".to_owned())?;
    let payload = decode(parts[1], "payload")?;
    serde_json::from_slice::<Claims>(&payload)
        .map_err(|_| "the payload is not a JSON object with numeric iat/exp".to_owned())
}
