//! Walks the role chain once and prints who the final role is, then reuses the SdkConfig the
//! way a long job would (its credentials refresh on their own).
//!
//! ```sh
//! # against moto: any unsigned JWT will do
//! moto_server -p 5000 &
//! echo "$JWT" > /tmp/token
//! AWS_ENDPOINT_URL=http://127.0.0.1:5000 cargo run -p forge-auth --example whoami -- \
//!     file:/tmp/token arn:aws:iam::999999999999:role/ConveyorHub \
//!     'arn:aws:iam::111111111111:role/ConveyorDeployRole-{env}' dev eu-west-1
//! ```
//! In a pipeline pass `auto` as the token source; on Azure DevOps also set
//! `FORGE_SERVICE_CONNECTION`. Mask lines for the CI are printed before anything else.
#![allow(clippy::print_stdout, clippy::print_stderr)] // an example program prints

use std::sync::Arc;

use forge_auth::ci::Ci;
use forge_auth::token::{DetectOptions, TokenSetting};
use forge_auth::{Hop, RoleArn, RoleChain, RoleChainProvider, SessionName, TokenSource};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // Display, then the cause chain: every forge-auth error says what to do.
            let mut text = format!("error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                text.push_str(&format!("\n  caused by: {cause}"));
                source = cause.source();
            }
            eprintln!("{text}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [token, hub, role, env, region] = args.as_slice() else {
        eprintln!("usage: whoami TOKEN_SOURCE HUB_ROLE_ARN ENV_ROLE_ARN_OR_TEMPLATE ENV REGION");
        std::process::exit(2);
    };
    let lookup = |k: &str| std::env::var(k).ok();
    let ci = Ci::detect(&lookup);
    let source = TokenSource::detect(
        &token.parse::<TokenSetting>()?,
        &lookup,
        &DetectOptions {
            audience: None,
            service_connection: lookup("FORGE_SERVICE_CONNECTION"),
        },
    )?;
    let chain = RoleChain::new(
        source,
        RoleArn::parse(hub)?,
        Hop::new(RoleArn::from_template(role, env, None)?),
        SessionName::for_pipeline(env, ci.build_id(&lookup).as_deref()),
    );
    let region = aws_config::Region::new(region.clone());
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(region.clone())
        .no_credentials()
        .load()
        .await;
    let provider = RoleChainProvider::new(chain, &base)?.with_secret_hook(Arc::new(move |s| {
        if let Some(line) = ci.mask_line(s) {
            println!("{line}");
        }
    }));
    let walked = provider.assume().await?;
    println!(
        "assumed {} until {}",
        walked.assumed_role_arn.as_deref().unwrap_or("?"),
        forge_auth::identity::rfc3339(walked.expiration)
    );
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(region)
        .credentials_provider(provider)
        .load()
        .await;
    let me = forge_auth::identity::caller_identity(&sdk).await?;
    println!("GetCallerIdentity: {} (account {})", me.arn, me.account);
    Ok(())
}
