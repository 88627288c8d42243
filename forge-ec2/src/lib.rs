//! SSM Run Command deploy driver for docker-compose services on EC2, and the `.env` refresher
//! that runs on the instance.
//!
//! [`Ec2Deployer::deploy`] sends a generated bash script ([`render_script`] shows it exactly)
//! through `AWS-RunShellScript` to the instances selected by tag or id, then waits until every
//! targeted invocation is terminal, treating `InvocationDoesNotExist` and empty listings as
//! *not yet* (see [`deploy`] for the whole waiting strategy). The result lists every instance
//! with its status, exit code, failing step and output; it succeeds only when every instance
//! did. [`Ec2Deployer::rollback`] sets each instance back to the tag its last deploy replaced.
//!
//! [`env_file`] is the library half of `forge-refresh-env`: Parameter Store → `.env` that docker
//! compose reads back exactly, written atomically with mode 0600.
//!
//! The crate takes an explicit [`aws_config::SdkConfig`] and depends on no other Forge crate.
//!
//! ```no_run
//! # async fn run(config: aws_config::SdkConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use forge_ec2::{DeployRequest, Ec2Deployer, Targets};
//!
//! let targets = Targets::parse("tag:forge:dagster-enabled=true")?;
//! let compose = std::fs::read("docker-compose.yml")?;
//! let mut request = DeployRequest::new(targets, compose, "20261126.3", "/opt/dagster");
//! request.parameters_path = Some("/forge/dagster".to_owned());
//! request.max_concurrency = Some("1".to_owned());
//!
//! let report = Ec2Deployer::new(&config).deploy(&request).await?;
//! for i in &report.instances {
//!     tracing::info!(instance = %i.instance_id, status = %i.status, exit = i.exit_code, "deployed");
//! }
//! assert!(report.succeeded);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod compose;
pub mod deploy;
pub mod env_file;
pub mod script;
pub mod status;
pub mod target;

pub use deploy::{
    DeployReport, DeployRequest, Ec2Deployer, Ec2Error, InspectRequest, InstanceResult, PollConfig,
    RollbackRequest, render_inspect_script, render_rollback_script, render_script,
};
pub use script::ValidationError;
pub use status::{InvocationStatus, StatusDetail};
pub use target::{TagFilter, TargetError, Targets};
