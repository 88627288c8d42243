//! Test harness for Forge: starts the *real* components the tests talk to — the CNCF
//! Distribution registry (`docker-registry`), moto in server mode, `git` bare remotes — on
//! free loopback ports, and stops them when dropped.
//!
//! **Policy:** when a component is missing, a test returns early with a note on stderr, *unless*
//! `CI=true`, where it panics: CI must never pass by skipping. Use [`require_tool`] (or the
//! starters, which call it) and return when it gives `None`:
//!
//! ```no_run
//! let Some(registry) = forge_testkit::Registry::start() else { return };
//! assert!(registry.host().starts_with("127.0.0.1:"));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![allow(clippy::print_stderr)] // the skip notice is the point of this crate

pub mod oci;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// True when running under CI (`CI=true`), where a missing component fails the test.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Finds `name` on `PATH`. When it is missing: panics under CI, otherwise prints a skip note and
/// returns `None` so the caller can `return`.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    if let Some(path) = which(name) {
        return Some(path);
    }
    // Where `cargo xtask test-deps` installs moto when it is not on PATH (a virtualenv:
    // Debian's Python refuses system-wide pip installs), so plain `cargo test` finds it too.
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/xtask-venv/bin")
        .join(name);
    if venv.is_file() {
        return Some(venv);
    }
    let msg = format!(
        "required test component `{name}` is not on PATH; run `cargo xtask test-deps` (installs \
         docker-registry, skopeo, shellcheck and git via apt, moto[server] into \
         target/xtask-venv)"
    );
    if in_ci() {
        panic!("{msg} (CI=true: a missing component fails the test instead of skipping it)");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Looks `name` up on `PATH` like a shell would.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener
        .local_addr()
        .expect("bound listener has an address")
        .port()
}

/// Waits until something accepts TCP connections on `addr`, or panics after `timeout`,
/// naming `what` and including the process's stderr log when given.
fn wait_for_port(addr: SocketAddr, timeout: Duration, what: &str, log: Option<&Path>) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = log
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    panic!("{what} did not listen on {addr} within {timeout:?}; its log:\n{log}");
}

/// Starts a server on a free port: `spawn(port)` starts it and names its log, `ready(port, log)`
/// says when it serves. A server that exits first (its port was taken between `free_port()` and
/// its bind) is started again on another port, up to five times; then this panics with each
/// attempt's log.
fn start_on_free_port(
    what: &str,
    patience: Duration,
    mut spawn: impl FnMut(u16) -> (Child, PathBuf),
    mut ready: impl FnMut(u16, &Path) -> bool,
) -> (u16, Guard) {
    let mut failures = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        let (child, log_path) = spawn(port);
        let mut guard = Guard(child);
        let start = Instant::now();
        while start.elapsed() < patience {
            if let Ok(Some(_)) = guard.0.try_wait() {
                break;
            }
            if ready(port, &log_path) {
                return (port, guard);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = guard.0.kill();
        failures.push(format!(
            "port {port}: {}",
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .trim()
        ));
    }
    panic!(
        "{what} did not start after 5 attempts:\n{}",
        failures.join("\n")
    );
}

/// Spawns `cmd` with no stdin and stdout/stderr into a new file at `log_path`.
fn spawn_logged(mut cmd: Command, log_path: &Path, what: &str) -> Child {
    let log = std::fs::File::create(log_path).expect("create a server log");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CNCF Distribution registry (`docker-registry serve`) on 127.0.0.1 with its own storage
/// directory. Plain HTTP, no auth: the loopback rule in forge-registry picks `http://`.
#[derive(Debug)]
pub struct Registry {
    port: u16,
    // Field order matters: the process dies before its storage is deleted.
    _process: Guard,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free port; `None` (skip) when `docker-registry` is missing outside CI.
    pub fn start() -> Option<Self> {
        let binary = require_tool("docker-registry")?;
        let dir = tempfile::tempdir().expect("create a temp dir for registry storage");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("create registry storage dir");
        let (port, process) = start_on_free_port(
            "docker-registry",
            Duration::from_secs(20),
            |port| {
                let config = dir.path().join("config.yml");
                std::fs::write(
                    &config,
                    format!(
                        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n",
                        storage.display()
                    ),
                )
                .expect("write registry config");
                let log_path = dir.path().join("registry.log");
                let mut cmd = Command::new(&binary);
                cmd.arg("serve").arg(&config);
                (spawn_logged(cmd, &log_path, "docker-registry"), log_path)
            },
            |port, _log| http_get_status(([127, 0, 0, 1], port).into(), "/v2/").is_some(),
        );
        Some(Registry {
            port,
            _process: process,
            dir,
        })
    }

    /// `127.0.0.1:PORT`, the registry host part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// CPU time (user + system) the registry process has used so far, from `/proc/<pid>/stat`
    /// (Linux; `None` elsewhere). Tick resolution (USER_HZ, 100 on Linux): average many runs.
    pub fn cpu_time(&self) -> Option<Duration> {
        proc_stat_cpu(
            &format!("/proc/{}/stat", self._process.0.id()),
            StatTimes::Own,
        )
    }

    /// The storage root (`docker/registry/v2/...` lives below it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Lists the repositories the registry holds (from storage, so it sees what the API would
    /// create on push).
    pub fn repositories(&self) -> Vec<String> {
        let root = self.storage().join("docker/registry/v2/repositories");
        let mut out = Vec::new();
        collect_repos(&root, &root, &mut out);
        out.sort();
        out
    }
}

/// CPU time (user + system) of this process's terminated, waited-for children, from
/// `/proc/self/stat` (Linux; `None` elsewhere). The difference across one `wait` is what that
/// child used, without a measuring wrapper process. Tick resolution, like [`Registry::cpu_time`].
pub fn children_cpu_time() -> Option<Duration> {
    proc_stat_cpu("/proc/self/stat", StatTimes::WaitedForChildren)
}

/// Which pair of times `/proc/<pid>/stat` is read for.
enum StatTimes {
    /// `utime` + `stime`: the process itself.
    Own,
    /// `cutime` + `cstime`: its terminated, waited-for children.
    WaitedForChildren,
}

fn proc_stat_cpu(path: &str, which: StatTimes) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14-17 of proc(5) are utime, stime, cutime, cstime; `rest` starts at field 3.
    let first = match which {
        StatTimes::Own => 11,
        StatTimes::WaitedForChildren => 13,
    };
    let user: u64 = fields.get(first)?.parse().ok()?;
    let system: u64 = fields.get(first + 1)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis((user + system) * 10))
}

fn collect_repos(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path
            .file_name()
            .is_some_and(|n| n == "_manifests" || n == "_layers" || n == "_uploads")
        {
            let repo = dir
                .strip_prefix(root)
                .expect("below root")
                .to_string_lossy()
                .into_owned();
            if !out.contains(&repo) {
                out.push(repo);
            }
        } else {
            collect_repos(root, &path, out);
        }
    }
}

/// Minimal HTTP/1.1 GET over a raw socket, returning the status code (no client dependency).
pub fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// moto in server mode (`moto_server -H 127.0.0.1 -p PORT`): STS, ECR, SSM and EC2 stand-ins.
/// Point SDK clients at [`Moto::endpoint`] (`AWS_ENDPOINT_URL`).
#[derive(Debug)]
pub struct Moto {
    port: u16,
    _process: Guard,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto on a free port; `None` (skip) when `moto_server` is missing outside CI.
    ///
    /// moto takes a second or two to import before it binds, and a server another test starts
    /// meanwhile can be given the same free port. So a port that merely accepts connections
    /// proves nothing: moto is up when its own log says it is running on that port (werkzeug
    /// prints it after binding). A moto that exits instead is started again on another port.
    pub fn start() -> Option<Self> {
        let binary = require_tool("moto_server")?;
        let dir = tempfile::tempdir().expect("temp dir for moto log");
        let (port, process) = start_on_free_port(
            "moto_server",
            Duration::from_secs(60),
            |port| {
                let log_path = dir.path().join(format!("moto-{port}.log"));
                let mut cmd = Command::new(&binary);
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                (spawn_logged(cmd, &log_path, "moto_server"), log_path)
            },
            |port, log_path| {
                let running = format!("Running on http://127.0.0.1:{port}");
                let bound = std::fs::read_to_string(log_path)
                    .unwrap_or_default()
                    .contains(&running);
                if bound {
                    let addr = ([127, 0, 0, 1], port).into();
                    wait_for_port(addr, Duration::from_secs(10), "moto_server", Some(log_path));
                }
                bound
            },
        );
        Some(Moto {
            port,
            _process: process,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs a Python snippet with boto3 against this moto (for fixtures such as tagged EC2
    /// instances that Forge itself never creates). `ENDPOINT` is set in the snippet's
    /// environment; stdout is returned. Panics with stderr on failure.
    pub fn python(&self, script: &str) -> String {
        let python = which("python3").expect("python3 is needed for moto fixtures");
        let out = Command::new(python)
            .arg("-c")
            .arg(script)
            .env("ENDPOINT", self.endpoint())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_DEFAULT_REGION", "eu-west-1")
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "python fixture failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// `skopeo` as an independent oracle; `None` (skip) when missing outside CI.
pub fn skopeo() -> Option<PathBuf> {
    require_tool("skopeo")
}

/// Runs `skopeo ARGS` with TLS verification off for loopback registries, returning its output.
/// Panics with stderr when skopeo fails.
pub fn skopeo_run(args: &[&str]) -> Output {
    let out = skopeo_try(args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `skopeo ARGS` and returns its output whatever the exit status.
pub fn skopeo_try(args: &[&str]) -> Output {
    Command::new("skopeo")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn skopeo")
}

/// Runs `git ARGS` in `dir`, panicking with stderr on failure; returns trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Forge Test")
        .env("GIT_AUTHOR_EMAIL", "test@forge.invalid")
        .env("GIT_COMMITTER_NAME", "Forge Test")
        .env("GIT_COMMITTER_EMAIL", "test@forge.invalid")
        .output()
        .expect("spawn git");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare Git repository on disk seeded with `files` (path, contents) in one commit on `main`,
/// reachable as a `file://` URL. Also keeps the scratch clone used to seed it.
#[derive(Debug)]
pub struct BareRemote {
    dir: tempfile::TempDir,
}

impl BareRemote {
    /// Creates the remote and pushes `files` as its first commit on `main`.
    pub fn seeded(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for bare remote");
        let bare = dir.path().join("ledger.git");
        let seed = dir.path().join("seed");
        std::fs::create_dir_all(&bare).expect("mkdir bare");
        git(
            &bare,
            &["init", "--quiet", "--bare", "--initial-branch=main"],
        );
        git(
            dir.path(),
            &["init", "--quiet", "--initial-branch=main", "seed"],
        );
        for (path, contents) in files {
            let full = seed.join(path);
            std::fs::create_dir_all(full.parent().expect("file has a parent")).expect("mkdir");
            std::fs::write(&full, contents).expect("write seed file");
        }
        git(&seed, &["add", "-A"]);
        git(
            &seed,
            &["commit", "--quiet", "--allow-empty", "-m", "seed ledger"],
        );
        git(
            &seed,
            &[
                "push",
                "--quiet",
                bare.to_str().expect("utf-8 temp path"),
                "main",
            ],
        );
        BareRemote { dir }
    }

    /// Path of the bare repository.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ledger.git")
    }

    /// `file://` URL of the bare repository.
    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    /// Reads `file` at the tip of `main` in the bare repository.
    pub fn read(&self, file: &str) -> String {
        git(&self.path(), &["show", &format!("main:{file}")])
    }

    /// Commit subjects on `main`, newest first.
    pub fn log(&self) -> Vec<String> {
        git(&self.path(), &["log", "--format=%s", "main"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_cpu_time_counts_a_waited_for_child() {
        let Some(before) = children_cpu_time() else {
            // Not Linux: the function documents `None` here.
            assert!(!Path::new("/proc/self/stat").exists());
            return;
        };
        // A child that burns well over one 10 ms tick of CPU.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("sh runs");
        assert!(child.wait().expect("wait").success());
        let after = children_cpu_time().expect("still readable");
        assert!(
            after >= before + Duration::from_millis(10),
            "expected at least one tick more after the wait: {before:?} -> {after:?}"
        );
    }
}
