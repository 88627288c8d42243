//! `forge config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, Config};
use crate::output::{self, Format, InvalidInput};

/// `forge config …`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Parse the config file and check every cross-field rule; lists all problems at once.
    Check {
        /// Config file.
        #[arg(long, default_value = config::DEFAULT_PATH, env = "FORGE_CONFIG")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

/// Runs `forge config …`.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check {
            config,
            output: format,
        } => {
            let loaded = Config::load(&config)?;
            let problems = loaded.config.problems();
            if !problems.is_empty() {
                return Err(
                    InvalidInput(config::describe_problems(&loaded.path, &problems)).into(),
                );
            }
            match format {
                Format::Json => output::print_json(&serde_json::json!({
                    "config": loaded.path,
                    "valid": true,
                    "environments": loaded.config.environments.keys().collect::<Vec<_>>(),
                    "services": loaded.config.services.keys().collect::<Vec<_>>(),
                }))?,
                Format::Text => output::print_stdout(&format!(
                    "{}: valid ({} environments: {}; {} services: {})\n",
                    loaded.path.display(),
                    loaded.config.environments.len(),
                    loaded.config.environment_names(),
                    loaded.config.services.len(),
                    loaded.config.service_names(),
                ))?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
