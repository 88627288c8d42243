//! Shared helpers for running the built `forge` binary.

use std::path::Path;
use std::process::{Command, Output};

/// A `forge` command with a clean environment for pipeline detection (so a test run inside
/// Azure DevOps or GitHub Actions does not change the output format).
pub fn forge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_forge"));
    for var in [
        "TF_BUILD",
        "GITHUB_ACTIONS",
        "GITHUB_OUTPUT",
        "RUST_LOG",
        "FORGE_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `forge ARGS` in `dir` and returns its output.
pub fn forge_in(dir: &Path, args: &[&str]) -> Output {
    forge()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run forge")
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
    assert!(
        out.status.success(),
        "forge failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
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

/// Points `cmd` at moto (`endpoint`) and nothing else: every AWS, CI and Forge variable that
/// could leak from the developer's or CI's environment is removed, shared config files are
/// redirected to empty files in `dir`.
pub fn isolate_aws(cmd: &mut Command, dir: &Path, endpoint: &str) {
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "TF_BUILD",
        "GITHUB_ACTIONS",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "SYSTEM_OIDCREQUESTURI",
        "SYSTEM_ACCESSTOKEN",
        "FORGE_TOKEN",
        "FORGE_HUB_ROLE",
        "FORGE_ROLE",
        "FORGE_REGION",
    ] {
        cmd.env_remove(var);
    }
    // Empty files rather than missing ones: the SDK warns about a missing override.
    for file in ["no-aws-config", "no-aws-credentials"] {
        std::fs::write(dir.join(file), "").expect("write empty AWS config");
    }
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        );
}
