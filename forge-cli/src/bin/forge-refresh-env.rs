//! `forge-refresh-env`: runs on an EC2 instance (called by the deploy script) and rewrites a
//! docker compose `.env` from every SSM parameter under a path. All logic lives in
//! `forge_ec2::env_file`; this binary parses flags, prints names (never values) and maps errors
//! to exit codes: 2 for a bad path or parameter names, 1 for AWS or file failures.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // the binary is where printing belongs

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

// Shared with `forge`: the same filters, and never the AWS SDK's trace output (it holds
// SecureString parameter values).
#[path = "../logging.rs"]
mod logging;
use forge_ec2::env_file::{self, EnvFileError, RefreshOptions};

/// Rewrite a docker compose .env from SSM Parameter Store (recursive, decrypted), keeping
/// IMAGE_TAG. Names map from the path: /forge/dagster/db/password under /forge/dagster becomes
/// DB_PASSWORD. The file is replaced atomically with mode 0600; values are never printed.
#[derive(Debug, Parser)]
#[command(name = "forge-refresh-env", version, max_term_width = 100)]
struct Args {
    /// Parameter Store path, e.g. /forge/dagster.
    #[arg(long, value_name = "PATH")]
    path: String,
    /// The .env file to write, e.g. /opt/dagster/.env.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// AWS region (default: the SDK's chain, which on EC2 reads instance metadata).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Write this IMAGE_TAG instead of keeping the file's current one.
    #[arg(long, value_name = "TAG")]
    image_tag: Option<String>,
    /// Print the variable names that would be written; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// More log detail on stderr.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match args.verbose {
        0 => "warn",
        1 => "info,forge_ec2=debug",
        _ => "debug,forge_ec2=trace",
    };
    logging::init(filter, args.verbose > 0, std::io::stderr);
    if let Some(tag) = &args.image_tag
        && let Err(e) = forge_ec2::script::check_image_tag(tag)
    {
        eprintln!("error: --image-tag: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let options = RefreshOptions {
        path: args.path.clone(),
        file: args.file.clone(),
        image_tag: args.image_tag.clone(),
        dry_run: args.dry_run,
    };
    let result = runtime.block_on(async {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &args.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let config = loader.load().await;
        env_file::refresh(&config, &options).await
    });
    match result {
        Ok(report) => {
            let verb = if report.written {
                "wrote"
            } else {
                "would write"
            };
            let mut text = format!(
                "{verb} {} variable(s) from {} to {}",
                report.names.len(),
                args.path,
                report.file.display()
            );
            match &report.image_tag {
                Some(tag) => text.push_str(&format!(" (IMAGE_TAG={tag})\n")),
                None => text.push_str(" (no IMAGE_TAG)\n"),
            }
            for name in &report.names {
                text.push_str("  ");
                text.push_str(name);
                text.push('\n');
            }
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(1),
            }
        }
        Err(err) => {
            let mut text = format!("error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                text.push_str(&format!("\n  caused by: {cause}"));
                source = cause.source();
            }
            eprintln!("{text}");
            let invalid = matches!(
                err,
                EnvFileError::BadPath { .. }
                    | EnvFileError::BadName { .. }
                    | EnvFileError::Collision { .. }
                    | EnvFileError::Reserved { .. }
                    | EnvFileError::Nul { .. }
            );
            ExitCode::from(if invalid { 2 } else { 1 })
        }
    }
}
