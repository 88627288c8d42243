//! `forge`: build once, promote everywhere. This binary only parses, dispatches to the
//! libraries and maps errors to exit codes; see ARCHITECTURE.md.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // the binary is where printing belongs

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod aws;
mod cmd;
mod config;
mod ec2_release;
mod ecr;
mod logging;
mod output;
mod policy;
mod release;

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
    /// Threads for network and hashing work. One is the default: a copy waits on registries
    /// and the network, and one thread verifies several hundred MB/s; more help only when the
    /// links are faster than that.
    #[arg(
        long,
        global = true,
        env = "FORGE_THREADS",
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    threads: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Promote a service's image to an environment: policy, verified copy, then the Ledger.
    Promote(cmd::promote::Args),
    /// Roll an environment back to an older tag, proven to still be the image that ran.
    Rollback(cmd::rollback::Args),
    /// Per environment: the Ledger tag, its registry digest, who and when; flags drift.
    Status(cmd::status::StatusArgs),
    /// A service's promotion history, rebuilt from the Ledger's commits and trailers.
    Audit(cmd::status::AuditArgs),
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
    Ec2(Box<cmd::ec2::Command>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_tracing(cli.verbose);
    RUNTIME_THREADS
        .set(cli.threads)
        .expect("main sets the thread count once, before any command runs");
    let result = match cli.command {
        Command::Promote(a) => cmd::promote::run(a),
        Command::Rollback(a) => cmd::rollback::run(a),
        Command::Status(a) => cmd::status::status(a),
        Command::Audit(a) => cmd::status::audit(a),
        Command::Auth(c) => cmd::auth::run(c),
        Command::Copy(a) => cmd::copy::run_copy(a),
        Command::Digest(a) => cmd::copy::run_digest(a),
        Command::Verify(a) => cmd::copy::run_verify(a),
        Command::Config(c) => cmd::config::run(c),
        Command::Ledger(c) => cmd::ledger::run(c),
        Command::Ec2(c) => cmd::ec2::run(*c),
    };
    match result {
        Ok(code) => code,
        Err(err) => output::report_error(&err),
    }
}

/// `--threads`, set once by `main` before dispatching.
static RUNTIME_THREADS: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// The async runtime for one command. Commands are one-shot, so each builds its own.
///
/// One thread by default: no worker threads to start, no cross-thread wake-ups, and every
/// command here is bound by registries, STS/SSM or git rather than by CPU (BENCHMARKS.md notes:
/// less CPU and RSS than two workers in every copy case, and no slower).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    let threads = RUNTIME_THREADS.get().copied().unwrap_or(1);
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::from(threads));
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
