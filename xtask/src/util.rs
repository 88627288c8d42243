//! Small process helpers for tasks.

use std::path::{Path, PathBuf};
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

/// Replaces the `<!-- bench:NAME:start -->` … `<!-- bench:NAME:end -->` section of a benchmarks
/// file with `report` (or appends it). A hand-written block between `<!-- bench:NAME:notes:start -->`
/// and `<!-- bench:NAME:notes:end -->` inside the old section is kept, after the new report.
pub fn write_bench_section(path: &Path, name: &str, report: &str) -> Result<(), String> {
    let (start, end) = (
        format!("<!-- bench:{name}:start -->"),
        format!("<!-- bench:{name}:end -->"),
    );
    let (notes_start, notes_end) = (
        format!("<!-- bench:{name}:notes:start -->"),
        format!("<!-- bench:{name}:notes:end -->"),
    );
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let notes = match (existing.find(&notes_start), existing.find(&notes_end)) {
        (Some(a), Some(b)) if a < b => format!("\n{}\n", &existing[a..b + notes_end.len()]),
        _ => String::new(),
    };
    let section = format!("{start}\n{report}{notes}{end}");
    let updated = match (existing.find(&start), existing.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &existing[..a], &existing[b + end.len()..])
        }
        _ => format!("{}\n\n{section}\n", existing.trim_end()),
    };
    let tmp = path.with_extension(format!("md.{name}.tmp"));
    std::fs::write(&tmp, updated).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The 1-minute load average (Linux; `n/a` elsewhere). Benchmarks print it next to their
/// numbers: the machine may be shared.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "n/a".into())
}
