//! Small process helpers for tasks.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs `program args` from the workspace root, echoing it; an error names the command.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    run_cmd(Command::new(program).args(args))
}

/// Runs a prepared command from the workspace root, echoing it and its duration.
pub fn run_cmd(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("$ {shown}");
    let start = Instant::now();
    let status = cmd
        .current_dir(root())
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    eprintln!("  ({:.1}s)", start.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

/// Finds `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The cargo that runs this xtask (so `cargo +toolchain xtask` stays consistent).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The release `forge` binary a benchmark runs: `explicit` when given, else the one in the
/// target directory, built first when `build` is set.
pub fn release_forge(explicit: Option<&std::path::Path>, build: bool) -> Result<PathBuf, String> {
    let forge = explicit.map_or_else(|| target_dir().join("release/forge"), PathBuf::from);
    if build && explicit.is_none() {
        run_cmd(Command::new(cargo()).args([
            "build",
            "--release",
            "-p",
            "forge-cli",
            "--bin",
            "forge",
        ]))?;
    }
    if !forge.is_file() {
        return Err(format!(
            "forge binary {} not found (build it with `cargo build --release -p forge-cli`)",
            forge.display()
        ));
    }
    Ok(forge)
}
