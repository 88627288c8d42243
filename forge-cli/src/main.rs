//! `forge`: build once, promote everywhere. This binary only parses, dispatches to the
//! libraries and maps errors to exit codes; see ARCHITECTURE.md.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // the binary is where printing belongs

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod aws;
mod cmd;
mod config;
mod output;

/// Forge: copy container images registry-to-registry with the digest proven, and record
/// promotions in the Ledger.
#[derive(Debug, Parser)]
#[command(
    name = "forge",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// More log detail on stderr (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// AWS credentials from the pipeline's OIDC token through the role chain.
    #[command(subcommand)]
    Auth(cmd::auth::Command),
    /// Copy an image registry-to-registry (or OCI layout) with the digest proven at the destination.
    Copy(cmd::copy::CopyArgs),
    /// Print the digest a reference resolves to.
    Digest(cmd::copy::DigestArgs),
    /// Exit 0 only if REF resolves to --digest and everything it references is present.
    Verify(cmd::copy::VerifyArgs),
    /// Validate a Forge config file (forge.toml).
    #[command(subcommand)]
    Config(cmd::config::Command),
    /// Patch, read, set, list and revert image tags in the Git Ledger of Argo CD manifests.
    #[command(subcommand)]
    Ledger(cmd::ledger::Command),
    /// Deploy docker-compose services on EC2 through SSM Run Command, roll back, render the script.
    #[command(subcommand)]
    Ec2(cmd::ec2::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Auth(c) => cmd::auth::run(c),
        Command::Copy(a) => cmd::copy::run_copy(a),
        Command::Digest(a) => cmd::copy::run_digest(a),
        Command::Verify(a) => cmd::copy::run_verify(a),
        Command::Config(c) => cmd::config::run(c),
        Command::Ledger(c) => cmd::ledger::run(c),
        Command::Ec2(c) => cmd::ec2::run(c),
    };
    match result {
        Ok(code) => code,
        Err(err) => output::report_error(&err),
    }
}
