//! `cargo xtask bench ledger`: N concurrent writers, each setting the tag in its OWN file of one
//! file:// Ledger, as separate processes started together: `forge ledger set-tag` (release
//! binary) against the naive loop a shell `update-ledger.sh` would use (shallow clone, edit with
//! sed, commit, push; on rejection `git pull --rebase` and push again). Never a test: wall times
//! depend on the machine, so the result is a table in BENCHMARKS.md (between the `bench:ledger`
//! markers), not an assertion.
//!
//! Every run uses a fresh bare remote; the tools alternate (forge first in odd runs, naive first
//! in even runs) so machine load drifts hit both. After each run the remote is checked: every
//! file holds its new tag, `main` has exactly one commit per writer on top of the seed, and no
//! commit subject appears twice (no lost and no duplicated update).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{load_average, root, which, write_bench_section};

const USAGE: &str = "usage: cargo xtask bench ledger [--runs N] [--writers N] [--big N] [--no-build] [--forge PATH] [--no-write]

  --runs N      alternating runs per tool (default 3)
  --writers N   concurrent writers per run (default 32)
  --big N       one extra forge run with N writers (default 64; 0 skips it)
  --no-build    do not run `cargo build --release -p forge-cli` (use the existing binary)
  --forge PATH  the forge binary to measure (default: <target>/release/forge)
  --no-write    print the table only; leave BENCHMARKS.md alone";

const NEW_TAG: &str = "101";
/// Attempts the naive loop may make before giving up (high, so that it lands and the wall
/// times compare like with like).
const NAIVE_MAX_ATTEMPTS: u32 = 200;

/// The naive writer: what a hand-written update-ledger.sh does.
const NAIVE_SCRIPT: &str = r#"#!/usr/bin/env bash
# naive update-ledger.sh: shallow clone, edit with sed, commit, push;
# on rejection `git pull --rebase` and push again.
set -u
url="$1"; file="$2"; tag="$3"; max="$4"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
git clone --quiet --depth 1 --branch main "$url" "$dir/c" || exit 1
cd "$dir/c"
sed -i -E "s/^(  tag: )\"[^\"]*\"/\1\"$tag\"/" "$file"
git -c user.name=naive -c user.email=naive@bench.invalid commit --quiet -am "naive: $file -> $tag" || exit 1
attempt=1
while true; do
  if git push --quiet origin HEAD:main 2>/dev/null; then echo "attempts=$attempt"; exit 0; fi
  if [ "$attempt" -ge "$max" ]; then echo "attempts=$attempt"; exit 1; fi
  attempt=$((attempt + 1))
  git -c user.name=naive -c user.email=naive@bench.invalid pull --quiet --rebase origin main >/dev/null 2>&1 || true
done
"#;

struct Options {
    runs: usize,
    writers: usize,
    big: usize,
    build: bool,
    forge: Option<PathBuf>,
    write: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        runs: 3,
        writers: 32,
        big: 64,
        build: true,
        forge: None,
        write: true,
    };
    let mut it = args.iter();
    let number = |v: Option<&String>, what: &str| -> Result<usize, String> {
        v.and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{what} needs a number\n\n{USAGE}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => o.runs = number(it.next(), "--runs")?.max(1),
            "--writers" => o.writers = number(it.next(), "--writers")?.max(1),
            "--big" => o.big = number(it.next(), "--big")?,
            "--no-build" => o.build = false,
            "--forge" => {
                o.forge = Some(PathBuf::from(
                    it.next()
                        .ok_or_else(|| format!("--forge needs a path\n\n{USAGE}"))?,
                ))
            }
            "--no-write" => o.write = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    Ok(o)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Forge,
    Naive,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Forge => "forge ledger set-tag",
            Tool::Naive => "naive update-ledger.sh",
        }
    }
}

struct Run {
    writers: usize,
    wall: Duration,
    attempts: Vec<u32>,
    failed: usize,
    lost: usize,
    duplicated: usize,
}

impl Run {
    fn ok(&self) -> bool {
        self.failed == 0 && self.lost == 0 && self.duplicated == 0
    }
}

/// Runs the ledger benchmark.
pub fn bench_ledger(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    for tool in ["git", "bash", "sed"] {
        if which(tool).is_none() {
            return Err(format!("`{tool}` is not on PATH"));
        }
    }
    let forge = crate::util::release_forge(o.forge.as_deref(), o.build)?;
    let work = TempDir::new()?;
    let naive = work.path().join("update-ledger-naive.sh");
    std::fs::write(&naive, NAIVE_SCRIPT).map_err(|e| format!("{}: {e}", naive.display()))?;

    let load_before = load_average();
    let mut forge_runs = Vec::new();
    let mut naive_runs = Vec::new();
    for run in 0..o.runs {
        let order = if run % 2 == 0 {
            [Tool::Forge, Tool::Naive]
        } else {
            [Tool::Naive, Tool::Forge]
        };
        for tool in order {
            let dir = work.path().join(format!("run{run}-{tool:?}"));
            let result = run_writers(tool, &forge, &naive, &dir, o.writers)?;
            eprintln!(
                "run {}/{}: {:<24} {:>6.2}s  attempts median {} max {}  failed {} lost {} duplicated {}",
                run + 1,
                o.runs,
                tool.name(),
                result.wall.as_secs_f64(),
                median_u32(&result.attempts),
                result.attempts.iter().max().copied().unwrap_or(0),
                result.failed,
                result.lost,
                result.duplicated
            );
            match tool {
                Tool::Forge => forge_runs.push(result),
                Tool::Naive => naive_runs.push(result),
            }
        }
    }
    let big = if o.big > 0 {
        let dir = work.path().join("big");
        let result = run_writers(Tool::Forge, &forge, &naive, &dir, o.big)?;
        eprintln!(
            "big: forge with {} writers {:.2}s  attempts median {} max {}  failed {} lost {} duplicated {}",
            o.big,
            result.wall.as_secs_f64(),
            median_u32(&result.attempts),
            result.attempts.iter().max().copied().unwrap_or(0),
            result.failed,
            result.lost,
            result.duplicated
        );
        Some(result)
    } else {
        None
    };

    let git_version = output_of(Command::new("git").arg("--version"));
    let command = format!(
        "cargo xtask bench ledger{}",
        args.iter().fold(String::new(), |acc, a| acc + " " + a)
    );
    let load = format!(
        "load average before {load_before}, after {}",
        load_average()
    );
    let report = render(
        &forge_runs,
        &naive_runs,
        big.as_ref(),
        &command,
        &format!("{}; {load}", git_version.trim()),
    );
    println!("{report}");
    if o.write {
        write_bench_section(&root().join("BENCHMARKS.md"), "ledger", &report)?;
        eprintln!("wrote the `bench:ledger` section of BENCHMARKS.md");
    }
    let all_ok = forge_runs
        .iter()
        .chain(&naive_runs)
        .chain(&big)
        .all(Run::ok);
    if all_ok {
        Ok(())
    } else {
        Err("some writers failed or updates were lost: see the table".into())
    }
}

fn file_name(i: usize) -> String {
    format!("apps/s{i:02}/values.yaml")
}

fn seed_text(i: usize) -> String {
    format!(
        "# s{i:02} values (bench)\nimage:\n  repository: registry.example/s{i:02}\n  tag: \"100\" # set by the pipeline\n\nreplicas: 1\n"
    )
}

/// Creates a bare remote with `n` values files, starts `n` writers together, waits, verifies.
fn run_writers(
    tool: Tool,
    forge: &Path,
    naive: &Path,
    dir: &Path,
    n: usize,
) -> Result<Run, String> {
    let bare = seed_remote(dir, n)?;
    let url = format!("file://{}", bare.display());
    let start = Instant::now();
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for i in 0..n {
        let file = file_name(i);
        let mut cmd = match tool {
            Tool::Forge => {
                let mut c = Command::new(forge);
                c.args([
                    "ledger",
                    "set-tag",
                    "--repo",
                    &url,
                    "--file",
                    &file,
                    "--tag",
                    NEW_TAG,
                    "--service",
                    &format!("s{i:02}"),
                    "--env",
                    "bench",
                    "--output",
                    "json",
                ]);
                c
            }
            Tool::Naive => {
                let mut c = Command::new("bash");
                c.arg(naive)
                    .args([&url, &file, NEW_TAG])
                    .arg(NAIVE_MAX_ATTEMPTS.to_string());
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        children.push(
            cmd.spawn()
                .map_err(|e| format!("cannot start {}: {e}", tool.name()))?,
        );
    }
    let mut attempts = Vec::with_capacity(n);
    let mut failed = 0;
    for child in children {
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for {}: {e}", tool.name()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            failed += 1;
            eprintln!(
                "  {} failed: {}{}",
                tool.name(),
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        attempts.push(parse_attempts(&stdout).unwrap_or(0));
    }
    let wall = start.elapsed();
    let (lost, duplicated) = verify(&bare, n)?;
    Ok(Run {
        writers: n,
        wall,
        attempts,
        failed,
        lost,
        duplicated,
    })
}

/// `"attempts": N` (forge JSON) or `attempts=N` (naive script).
fn parse_attempts(stdout: &str) -> Option<u32> {
    let rest = stdout
        .split_once("\"attempts\":")
        .or_else(|| stdout.split_once("attempts="))?
        .1;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@bench.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@bench.invalid")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "git {args:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn seed_remote(dir: &Path, n: usize) -> Result<PathBuf, String> {
    let bare = dir.join("ledger.git");
    let seed = dir.join("seed");
    for d in [&bare, &seed] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    git(
        &bare,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    )?;
    git(&seed, &["init", "--quiet", "--initial-branch=main"])?;
    for i in 0..n {
        let path = seed.join(file_name(i));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, seed_text(i)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    git(&seed, &["add", "-A"])?;
    git(&seed, &["commit", "--quiet", "-m", "seed ledger"])?;
    git(&seed, &["push", "--quiet", &bare.to_string_lossy(), "main"])?;
    Ok(bare)
}

/// Returns (lost, duplicated): files without the new tag, and extra or missing commits.
fn verify(bare: &Path, n: usize) -> Result<(usize, usize), String> {
    let mut lost = 0;
    for i in 0..n {
        let text = git(bare, &["show", &format!("main:{}", file_name(i))])?;
        let expected = seed_text(i).replace("\"100\"", &format!("\"{NEW_TAG}\""));
        if text != expected {
            lost += 1;
        }
    }
    let subjects = git(bare, &["log", "--format=%s", "main"])?;
    let subjects: Vec<&str> = subjects.lines().collect();
    let mut unique = subjects.clone();
    unique.sort_unstable();
    unique.dedup();
    // One seed commit plus exactly one per writer, none twice.
    let duplicated = (subjects.len() - unique.len()) + (subjects.len()).abs_diff(n + 1);
    Ok((lost, duplicated))
}

fn output_of(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn median_duration(runs: &[Run]) -> Duration {
    let mut walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
    walls.sort();
    match walls.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => walls[n / 2],
        n => (walls[n / 2 - 1] + walls[n / 2]) / 2,
    }
}

fn median_u32(values: &[u32]) -> u32 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn all_attempts(runs: &[Run]) -> Vec<u32> {
    runs.iter()
        .flat_map(|r| r.attempts.iter().copied())
        .collect()
}

fn render(
    forge: &[Run],
    naive: &[Run],
    big: Option<&Run>,
    command: &str,
    git_version: &str,
) -> String {
    let mut s = String::new();
    let writers = forge.first().map_or(0, |r| r.writers);
    let _ = writeln!(
        s,
        "## Ledger writers: forge vs the naive update-ledger.sh loop\n"
    );
    let _ = writeln!(
        s,
        "`{command}` — {writers} processes started together, each setting the tag in its own file of \
         one file:// Ledger; fresh remote per run; tools alternate. {git_version}; {} cores. \
         \"lost\" = files without the new tag; \"dup\" = missing or repeated commits.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        s,
        "| tool | runs (wall s) | median wall | attempts median / max | failed | lost | dup |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for (tool, runs) in [(Tool::Forge, forge), (Tool::Naive, naive)] {
        let attempts = all_attempts(runs);
        let list: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.2}", r.wall.as_secs_f64()))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} s | {} / {} | {} | {} | {} |",
            tool.name(),
            list.join(", "),
            median_duration(runs).as_secs_f64(),
            median_u32(&attempts),
            attempts.iter().max().copied().unwrap_or(0),
            runs.iter().map(|r| r.failed).sum::<usize>(),
            runs.iter().map(|r| r.lost).sum::<usize>(),
            runs.iter().map(|r| r.duplicated).sum::<usize>(),
        );
    }
    let f = median_duration(forge).as_secs_f64();
    let n = median_duration(naive).as_secs_f64();
    if n > 0.0 {
        let ratio = f / n;
        let _ = writeln!(
            s,
            "\nforge / naive median wall time: **{ratio:.2}×** (target ≤ 0.50×: {}).",
            if ratio <= 0.5 { "met" } else { "NOT met" }
        );
    }
    let paired: Vec<String> = forge
        .iter()
        .zip(naive)
        .map(|(f, n)| format!("{:.2}", f.wall.as_secs_f64() / n.wall.as_secs_f64()))
        .collect();
    let _ = writeln!(
        s,
        "Paired ratios (forge / naive within each run): {}.",
        paired.join(", ")
    );
    if let Some(b) = big {
        let attempts = &b.attempts;
        let _ = writeln!(
            s,
            "\n{} forge writers: {:.2} s, attempts median {} / max {}, failed {}, lost {}, dup {} ({}).",
            b.writers,
            b.wall.as_secs_f64(),
            median_u32(attempts),
            attempts.iter().max().copied().unwrap_or(0),
            b.failed,
            b.lost,
            b.duplicated,
            if b.ok() {
                "all landed"
            } else {
                "NOT all landed"
            }
        );
    }
    s.push('\n');
    s
}

/// A temp directory removed on drop (xtask has no tempfile dependency at runtime).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!(
            "forge-bench-ledger-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_parsed_from_both_tools() {
        assert_eq!(parse_attempts("{\n  \"attempts\": 7,\n}"), Some(7));
        assert_eq!(parse_attempts("attempts=12\n"), Some(12));
        assert_eq!(parse_attempts("nothing"), None);
    }
}
