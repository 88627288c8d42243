//! The AWS glue shared by every command that talks to AWS (`auth`, `ec2`, `promote`): one
//! [`aws_config::SdkConfig`] per environment whose credentials come from Forge's refreshing role
//! chain (forge-auth), or from the default AWS chain when `[auth] token = "none"`.
//!
//! This is the binary, so it is where the process environment is read: CI variables for token
//! detection, `AWS_*` for the policy check; `AWS_ENDPOINT_URL` is honoured by aws-config itself.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_config::{BehaviorVersion, Region};
use forge_auth::ci::{self, Ci};
use forge_auth::token::{DetectOptions, TokenSetting};
use forge_auth::{Hop, RoleArn, RoleChain, RoleChainProvider, SessionName, TokenSource};

use crate::config::Loaded;
use crate::output::InvalidInput;

/// Command-line / environment overrides of `[auth]` (`None` = take the config file's value).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Token source: auto | azure-devops | github | file:PATH | env:VAR | none.
    #[arg(long, env = "FORGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// ARN of the hub role assumed with the OIDC token.
    #[arg(long, env = "FORGE_HUB_ROLE")]
    pub hub_role: Option<String>,
    /// ARN of the environment role (default `[environments.<env>] role`; `{env}` is expanded).
    #[arg(long, env = "FORGE_ROLE")]
    pub role: Option<String>,
    /// AWS region (default: `[environments.<env>] region`, `[auth] region`, then AWS_REGION).
    #[arg(long, env = "FORGE_REGION")]
    pub region: Option<String>,
    /// OIDC audience for GitHub Actions (default sts.amazonaws.com).
    #[arg(long, env = "FORGE_AUDIENCE")]
    pub audience: Option<String>,
    /// Azure DevOps service connection id.
    #[arg(long, env = "FORGE_SERVICE_CONNECTION")]
    pub service_connection: Option<String>,
    /// External id for the environment role.
    #[arg(long, env = "FORGE_EXTERNAL_ID", hide_env_values = true)]
    pub external_id: Option<String>,
    /// Session length in seconds (900..=3600: AWS caps chained role sessions at one hour).
    #[arg(long, env = "FORGE_SESSION_DURATION")]
    pub session_duration: Option<u64>,
    /// Session name (default `forge-<env>-<build id>`), sanitized to STS's rules.
    #[arg(long, env = "FORGE_SESSION_NAME")]
    pub session_name: Option<String>,
}

/// Credentials for one environment, with the chain when one is used.
#[derive(Debug, Clone)]
pub struct EnvAuth {
    /// Clients built from this refresh credentials transparently.
    pub sdk: aws_config::SdkConfig,
    /// The role chain (`None` with `token = "none"`: the default AWS chain).
    pub chain: Option<RoleChainProvider>,
}

fn lookup(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// The CI this process runs under (from its environment).
pub fn current_ci() -> Ci {
    Ci::detect(&lookup)
}

/// Prints the CI's mask command for every secret the chain obtains, on stderr (both Azure
/// DevOps and GitHub Actions read logging commands there; stdout stays clean for JSON and
/// `credential_process`).
pub fn mask_hook(ci: Ci) -> Option<forge_auth::chain::SecretHook> {
    if ci == Ci::None {
        return None;
    }
    Some(Arc::new(move |secret: &forge_auth::Secret| {
        if let Some(line) = ci.mask_line(secret) {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
        }
    }))
}

/// SdkConfig whose credentials are Forge's refreshing role chain for `env` (or the default AWS
/// chain when `[auth] token = "none"`), region from config/env. Honors `AWS_ENDPOINT_URL` (tests
/// point it at moto).
pub async fn sdk_config_for_env(
    config: &Loaded,
    env: &str,
) -> anyhow::Result<aws_config::SdkConfig> {
    Ok(
        resolve(config, env, &Overrides::default(), mask_hook(current_ci()))
            .await?
            .sdk,
    )
}

/// The full resolution behind [`sdk_config_for_env`], with overrides and a secret hook.
pub async fn resolve(
    config: &Loaded,
    env: &str,
    overrides: &Overrides,
    hook: Option<forge_auth::chain::SecretHook>,
) -> anyhow::Result<EnvAuth> {
    let auth = &config.config.auth;
    let environment = config.config.environment(env)?;
    ci::check_static_credentials(&lookup, auth.allow_static_credentials)
        .map_err(|e| InvalidInput(e.to_string()))?;
    let region = overrides
        .region
        .clone()
        .or_else(|| environment.region.clone())
        .or_else(|| auth.region.clone());
    let loader = || {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &region {
            loader = loader.region(Region::new(region.clone()));
        }
        loader
    };
    let token = overrides
        .token
        .clone()
        .or_else(|| auth.token.clone())
        .unwrap_or_else(|| "auto".to_owned());
    if token == "none" {
        return Ok(EnvAuth {
            sdk: loader().load().await,
            chain: None,
        });
    }
    let setting: TokenSetting = token
        .parse()
        .map_err(|e: forge_auth::TokenError| InvalidInput(format!("auth.token / --token: {e}")))?;
    let hub = overrides
        .hub_role
        .clone()
        .or_else(|| auth.hub_role.clone())
        .ok_or_else(|| {
            InvalidInput(
                "no hub role: set `[auth] hub_role` (or --hub-role / FORGE_HUB_ROLE), or `[auth] token = \"none\"` to use the default AWS credentials".to_owned(),
            )
        })?;
    let hub = RoleArn::parse(&hub).map_err(|e| InvalidInput(format!("hub role: {e}")))?;
    let role = match &overrides.role {
        Some(role) => crate::config::expand_role(role, env, environment.account.as_deref())
            .map_err(|e| InvalidInput(format!("--role: {e}")))?,
        None => config
            .config
            .environment_role(env)
            .map_err(InvalidInput)?
            .ok_or_else(|| {
                InvalidInput(format!(
                    "environment `{env}` has no role: set `[environments.{env}] role` to the ARN of ConveyorDeployRole-{env}, or `[auth] env_role` to a template such as arn:aws:iam::{{account}}:role/ConveyorDeployRole-{{env}} (or pass --role)"
                ))
            })?,
    };
    let source = TokenSource::detect(
        &setting,
        &lookup,
        &DetectOptions {
            audience: overrides.audience.clone().or_else(|| auth.audience.clone()),
            service_connection: overrides
                .service_connection
                .clone()
                .or_else(|| auth.service_connection.clone()),
        },
    )
    .map_err(|e| InvalidInput(e.to_string()))?;
    let ci = Ci::detect(&lookup);
    let build_id = ci.build_id(&lookup);
    let session_name = match &overrides.session_name {
        Some(name) => SessionName::sanitize(name),
        None => SessionName::for_pipeline(env, build_id.as_deref()),
    };
    let mut hop = Hop::new(role);
    hop.external_id = overrides
        .external_id
        .clone()
        .or_else(|| auth.external_id.clone());
    if auth.session_tags {
        hop.tags.push(("forge:env".to_owned(), env.to_owned()));
        if let Some(id) = &build_id {
            hop.tags.push(("forge:build".to_owned(), id.clone()));
        }
        let ci_name = match ci {
            Ci::AzureDevOps => "azure-devops",
            Ci::GitHubActions => "github-actions",
            _ => "none",
        };
        hop.tags.push(("forge:ci".to_owned(), ci_name.to_owned()));
    }
    let mut chain = RoleChain::new(source, hub, hop, session_name);
    if let Some(secs) = overrides.session_duration.or(auth.session_duration) {
        chain.duration = Duration::from_secs(secs);
    }
    let base = loader().no_credentials().load().await;
    if base.region().is_none() {
        return Err(InvalidInput(
            "no AWS region: set `[auth] region` (or `[environments.<env>] region`, --region, AWS_REGION)".to_owned(),
        )
        .into());
    }
    let mut provider = RoleChainProvider::new(chain, &base).map_err(|e| chain_error(e, env))?;
    if let Some(hook) = hook {
        provider = provider.with_secret_hook(hook);
    }
    // Refresh five minutes before expiry (a request signed at minute 59 must not outlive its
    // credentials), and give a chain walk with every classified retry time to finish: the
    // cache's own timeout would replace the chain's error ("failed after 4 retries: …") with
    // an opaque "identity resolution timed out".
    let cache = aws_config::identity::IdentityCache::lazy()
        .buffer_time(Duration::from_secs(300))
        .load_timeout(identity_load_timeout(provider.chain()))
        .build();
    let sdk = loader()
        .identity_cache(cache)
        .credentials_provider(provider.clone())
        .load()
        .await;
    Ok(EnvAuth {
        sdk,
        chain: Some(provider),
    })
}

/// How long the SDK's identity cache waits for one chain walk: the chain's worst case with
/// every retry used, plus a margin for scheduling.
fn identity_load_timeout(chain: &forge_auth::RoleChain) -> Duration {
    chain
        .worst_case_duration()
        .saturating_add(Duration::from_secs(15))
}

/// Maps a role-chain failure to the CLI's error: bad input exits 2, the world exits 1.
pub fn chain_error(err: forge_auth::ChainError, env: &str) -> anyhow::Error {
    if err.is_invalid_input() {
        let mut text = format!("credentials for `{env}`: {err}");
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        anyhow::Error::from(InvalidInput(text))
    } else {
        anyhow::Error::from(err).context(format!(
            "cannot get AWS credentials for environment `{env}`"
        ))
    }
}

/// The current credentials of `auth` (walking the chain once, or asking the default chain).
pub async fn current_credentials(
    auth: &EnvAuth,
    env: &str,
) -> anyhow::Result<aws_credential_types::Credentials> {
    use aws_credential_types::provider::ProvideCredentials as _;
    match &auth.chain {
        Some(chain) => Ok(chain
            .assume()
            .await
            .map_err(|e| chain_error(e, env))?
            .credentials),
        None => {
            let provider = auth.sdk.credentials_provider().ok_or_else(|| {
                InvalidInput("no AWS credentials provider is configured".to_owned())
            })?;
            provider
                .provide_credentials()
                .await
                .with_context(|| format!("the default AWS credential chain found no credentials for `{env}` (token = \"none\")"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_cache_outwaits_every_retry_of_the_chain() {
        let arn = |a: &str| forge_auth::RoleArn::parse(a).expect("valid ARN");
        let mut chain = forge_auth::RoleChain::new(
            forge_auth::TokenSource::File("/run/oidc".into()),
            arn("arn:aws:iam::111111111111:role/Hub"),
            forge_auth::Hop::new(arn("arn:aws:iam::222222222222:role/ConveyorDeployRole-qa")),
            forge_auth::SessionName::sanitize("ci-1"),
        );
        // The 120 s this used to be was less than a default chain's worst case (346 s).
        assert_eq!(identity_load_timeout(&chain), Duration::from_secs(346 + 15));
        chain.hops.push(forge_auth::Hop::new(arn(
            "arn:aws:iam::333333333333:role/Extra",
        )));
        assert_eq!(
            identity_load_timeout(&chain),
            Duration::from_secs(346 + 82 + 15),
            "each hop adds its own retries"
        );
    }
}
