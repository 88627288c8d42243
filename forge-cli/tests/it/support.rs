//! Shared helpers for running the built `forge` binary.

use std::path::Path;
use std::process::{Command, Output};

/// A `forge` command with a clean environment for pipeline detection (so a test run inside
/// Azure DevOps or GitHub Actions does not change the output format).
pub fn forge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_forge"));
    for var in ["TF_BUILD", "GITHUB_ACTIONS", "GITHUB_OUTPUT", "RUST_LOG", "FORGE_CONFIG"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `forge ARGS` in `dir` and returns its output.
pub fn forge_in(dir: &Path, args: &[&str]) -> Output {
    forge().args(args).current_dir(dir).output().expect("run forge")
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics with both streams unless the command succeeded.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(out.status.success(), "forge failed ({}):\nstdout:\n{}\nstderr:\n{}", out.status, stdout(out), stderr(out));
}

/// Panics unless the command exited with `code`.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}:\nstdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}
