//! The AWS glue shared by every command that talks to AWS (`auth`, `ec2`, `promote`): one
//! [`aws_config::SdkConfig`] per environment whose credentials come from Forge's refreshing role
//! chain (forge-auth), or from the default AWS chain when `[auth] token = "none"`.

use aws_config::{BehaviorVersion, Region};

use crate::config::Loaded;

/// SdkConfig whose credentials are Forge's refreshing role chain for `env` (or the default AWS
/// chain when `[auth] token = "none"`), region from config/env. Honors `AWS_ENDPOINT_URL` (tests
/// point it at moto).
#[allow(dead_code, reason = "called by the auth, ec2 and promote commands")]
pub async fn sdk_config_for_env(
    config: &Loaded,
    env: &str,
) -> anyhow::Result<aws_config::SdkConfig> {
    let environment = config.config.environment(env)?;
    let region = environment
        .region
        .clone()
        .or_else(|| config.config.auth.region.clone());
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(Region::new(region));
    }
    Ok(loader.load().await)
}
