//! From a pipeline OIDC token to `ConveyorDeployRole-<env>`: refreshing AWS role-chain
//! credentials and ECR registry tokens.
//!
//! - [`token`]: where the OIDC token comes from (Azure DevOps, GitHub Actions, a file, a value);
//!   fetched anew on every refresh.
//! - [`chain`]: `AssumeRoleWithWebIdentity` into the hub role, then `AssumeRole` into the
//!   environment role (and extra hops), as a [`ProvideCredentials`](aws_credential_types::provider::ProvideCredentials)
//!   so SDK clients refresh transparently; classified retries; errors name step, role and code.
//! - [`ci`]: CI detection, secret masking lines (the library never prints) and the "no static
//!   credentials in CI" policy.
//! - [`ecr`]: ECR registry Basic credentials, cached until shortly before expiry.
//! - [`identity`]: the `GetCallerIdentity` call.
//!
//! Inputs are explicit everywhere; [`TokenSource::detect`] and [`ci::Ci::detect`] read CI
//! variables through a lookup function you pass.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use forge_auth::{Hop, RoleArn, RoleChain, RoleChainProvider, SessionName, TokenSource};
//! use forge_auth::token::{DetectOptions, TokenSetting};
//!
//! let lookup = |k: &str| std::env::var(k).ok();
//! let token = TokenSource::detect(&TokenSetting::Auto, &lookup, &DetectOptions::default())?;
//! let hub = RoleArn::parse("arn:aws:iam::999999999999:role/ConveyorHub")?;
//! let env_role = RoleArn::from_template("arn:aws:iam::{account}:role/ConveyorDeployRole-{env}", "dev", Some("111111111111"))?;
//! let chain = RoleChain::new(token, hub, Hop::new(env_role), SessionName::for_pipeline("dev", Some("4711")));
//! let base = aws_config::defaults(aws_config::BehaviorVersion::latest()).no_credentials().load().await;
//! let provider = RoleChainProvider::new(chain, &base)?;
//! let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
//!     .credentials_provider(provider)
//!     .load()
//!     .await;
//! let me = forge_auth::identity::caller_identity(&sdk).await?;
//! assert!(me.arn.contains("assumed-role/ConveyorDeployRole-dev/"));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod chain;
pub mod ci;
pub mod ecr;
pub mod identity;
pub mod retry;
mod secret;
pub mod token;

pub use chain::{
    ChainCredentials, ChainError, Hop, RoleArn, RoleChain, RoleChainProvider, SessionName, Step,
    StsFailure,
};
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use token::{TokenError, TokenSource};
