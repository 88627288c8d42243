//! `cargo xtask <task>`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `ci`: everything CI checks (installs missing test components first).
//! - `test-deps`: install docker-registry, skopeo, shellcheck, git (apt) and moto[server] (a virtualenv at
//!   target/xtask-venv) when missing.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // a task runner reports on the terminal

use std::process::ExitCode;

mod bench_copy;
mod bench_ledger;
mod ci;
mod demo;
mod release;
mod tidy;
mod util;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  bench copy  forge copy vs skopeo on two local registries; writes BENCHMARKS.md (--help for options)
  bench ledger  32 concurrent forge ledger set-tag vs a naive update-ledger.sh loop; writes BENCHMARKS.md
  ci          fmt check, clippy -D warnings, all tests, cargo deny (installs test components first)
  demo        the release flow end to end in a sandbox (OCI-layout registries, local Ledger)
  release     --version X.Y.Z [--dry-run] [--target T]...: ci, release build, dist/ archives, SHA256SUMS, SBOM
  test-deps   install docker-registry, skopeo, shellcheck, git (apt) and moto[server] (target/xtask-venv) when missing
";

/// `cargo xtask bench <what> [options]`: one arm per benchmark (add yours here).
fn bench(args: &[String]) -> Result<(), String> {
    let usage = "usage: cargo xtask bench <copy|ledger> [options]";
    let Some((what, rest)) = args.split_first() else {
        return Err(usage.into());
    };
    match what.as_str() {
        "copy" => bench_copy::bench_copy(rest),
        "ledger" => bench_ledger::bench_ledger(rest),
        other => Err(format!("unknown benchmark `{other}`\n{usage}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match task.as_str() {
        "ci" => ci::ci(rest),
        "test-deps" => ci::test_deps().map(drop),
        "demo" => demo::demo(rest),
        "release" => release::release(rest),
        "bench" => bench(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
