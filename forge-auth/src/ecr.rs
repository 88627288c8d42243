//! ECR registry credentials: `GetAuthorizationToken` → Basic `AWS:<password>` for a registry
//! host, cached until shortly before `expiresAt`.
//!
//! A token that is already expired (or expires within [`REFRESH_MARGIN`]) when it arrives — moto
//! returns tokens from 2015 — is handed out once and never cached, so the next call fetches again.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use tokio::sync::Mutex;

use crate::Secret;

/// Tokens are refreshed this long before `expiresAt`.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(15 * 60);

/// ECR errors. None contains the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EcrError {
    /// The API call failed.
    #[error(
        "ECR GetAuthorizationToken for {registry} failed with {code}: {message}; check that the role has ecr:GetAuthorizationToken and that the region is right"
    )]
    Api {
        /// The registry host.
        registry: String,
        /// AWS error code.
        code: String,
        /// AWS message.
        message: String,
        /// The transport error (`None` when AWS answered: code and message say it all).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The answer is not the documented shape.
    #[error(
        "ECR GetAuthorizationToken for {registry} returned {problem}; expected base64 `AWS:<password>` with expiresAt"
    )]
    BadToken {
        /// The registry host.
        registry: String,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Clone)]
struct Cached {
    user: String,
    password: Secret,
    refresh_after: SystemTime,
}

/// Registry credentials for ECR hosts, from one AWS identity. Cheap to share behind an `Arc`.
pub struct EcrCredentials {
    sdk: aws_types::SdkConfig,
    cache: Mutex<HashMap<String, Cached>>,
    fetches: std::sync::atomic::AtomicU64,
    hook: Option<crate::chain::SecretHook>,
}

impl std::fmt::Debug for EcrCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcrCredentials")
            .field("region", &self.sdk.region())
            .finish_non_exhaustive()
    }
}

impl EcrCredentials {
    /// Uses `sdk`'s credentials, region and endpoint (a region in an ECR host name wins).
    pub fn new(sdk: &aws_types::SdkConfig) -> EcrCredentials {
        EcrCredentials {
            sdk: sdk.clone(),
            cache: Mutex::new(HashMap::new()),
            fetches: std::sync::atomic::AtomicU64::new(0),
            hook: None,
        }
    }

    /// Calls `hook` with every registry password fetched (a CI masks it in its log, like the
    /// role chain's secrets).
    pub fn with_secret_hook(mut self, hook: crate::chain::SecretHook) -> EcrCredentials {
        self.hook = Some(hook);
        self
    }

    /// How many times `GetAuthorizationToken` was called (for diagnostics and tests).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `("AWS", password)` for `registry_host`, cached until [`REFRESH_MARGIN`] before expiry.
    pub async fn basic_for(&self, registry_host: &str) -> Result<(String, Secret), EcrError> {
        let mut cache = self.cache.lock().await;
        if let Some(hit) = cache.get(registry_host)
            && SystemTime::now() < hit.refresh_after
        {
            return Ok((hit.user.clone(), hit.password.clone()));
        }
        cache.remove(registry_host);
        let started = Instant::now();
        let mut config = aws_sdk_ecr::config::Builder::from(&self.sdk);
        if let Some(region) = region_of(registry_host) {
            config = config.region(aws_types::region::Region::new(region.to_owned()));
        }
        let client = aws_sdk_ecr::Client::from_conf(config.build());
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = client
            .get_authorization_token()
            .send()
            .await
            .map_err(|err| {
                use aws_sdk_ecr::error::ProvideErrorMetadata as _;
                EcrError::Api {
                    registry: registry_host.to_owned(),
                    code: err.code().unwrap_or("RequestFailed").to_owned(),
                    message: err
                        .message()
                        .unwrap_or("the request failed (see the cause below)")
                        .to_owned(),
                    source: err.as_service_error().is_none().then(|| Box::new(err) as _),
                }
            })?;
        let bad = |problem: &str| EcrError::BadToken {
            registry: registry_host.to_owned(),
            problem: problem.to_owned(),
        };
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| bad("no authorizationData"))?;
        let encoded = data
            .authorization_token()
            .ok_or_else(|| bad("no authorizationToken"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad("an authorizationToken that is not base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad("an authorizationToken that is not UTF-8"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad("an authorizationToken without `user:`"))?;
        let expires = data
            .expires_at()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .ok_or_else(|| bad("no expiresAt"))?;
        let refresh_after = expires
            .checked_sub(REFRESH_MARGIN)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let entry = Cached {
            user: user.to_owned(),
            password: Secret::new(password),
            refresh_after,
        };
        if let Some(hook) = &self.hook {
            hook(&entry.password);
            // The base64 `AWS:<password>` form is what docker logins and logs carry.
            hook(&Secret::new(encoded.trim()));
        }
        if SystemTime::now() < refresh_after {
            tracing::debug!(registry = registry_host, elapsed = ?started.elapsed(), "ECR token cached");
            cache.insert(registry_host.to_owned(), entry.clone());
        } else {
            tracing::warn!(
                registry = registry_host,
                "ECR returned a token that is already expired or about to expire; using it once and fetching again next time"
            );
        }
        Ok((entry.user, entry.password))
    }
}

/// The region in `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`.
pub fn region_of(host: &str) -> Option<&str> {
    let host = host.split(':').next()?;
    let mut parts = host.split('.');
    let _account = parts.next()?;
    if parts.next()? != "dkr" {
        return None;
    }
    if !parts.next()?.starts_with("ecr") {
        return None;
    }
    let region = parts.next()?;
    (parts.next()? == "amazonaws").then_some(region)
}
