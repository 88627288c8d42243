//! A small runner for the `git` CLI as a subprocess.
//!
//! Forge talks to the Ledger through the real `git` binary (gitoxide cannot push, and libgit2
//! reports rejected pushes as success unless handled specially). The subprocess inherits the
//! caller's environment, so credential helpers, `~/.gitconfig`, `GIT_SSH_COMMAND` and SSH
//! config keep working. Forge only pins the locale (`LC_ALL=C`, so rejections can be classified
//! from git's English messages) and disables terminal prompts (`GIT_TERMINAL_PROMPT=0`, so a
//! pipeline fails instead of hanging on a password prompt).
//!
//! Every URL that appears in an error or a log line goes through [`redact_url`] first: the
//! userinfo part (`https://user:token@host/…`) is never shown.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A failed `git` invocation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GitError {
    /// `git` could not be started at all.
    #[error(
        "could not run `{command}`: {source}; is git installed and on PATH? (Forge needs the git CLI)"
    )]
    Spawn {
        /// The command line, with URLs redacted.
        command: String,
        /// Why the process could not be started.
        #[source]
        source: std::io::Error,
    },
    /// `git` ran and exited non-zero.
    #[error("`{command}` failed ({status}): {}", stderr_summary(.stderr))]
    Failed {
        /// The command line, with URLs redacted.
        command: String,
        /// The exit status, as text (`exit status: 128`).
        status: String,
        /// git's stderr, with URLs redacted.
        stderr: String,
    },
    /// `git` ran longer than its time limit and was killed (a stalled fetch or push).
    #[error(
        "`{command}` did not finish within {limit:?} and was stopped; check the network path to the Ledger remote (a stalled fetch or push). A stopped push may still have landed: look at the remote branch before retrying"
    )]
    TimedOut {
        /// The command line, with URLs redacted.
        command: String,
        /// The limit.
        limit: Duration,
    },
    /// `git` succeeded but printed something Forge cannot read as what it asked for.
    #[error(
        "`{command}` printed output Forge cannot read ({detail}); check for git config that changes its output format, and report this if it persists"
    )]
    UnexpectedOutput {
        /// The command line, with URLs redacted.
        command: String,
        /// What was wrong with it.
        detail: String,
    },
}

impl GitError {
    /// git's stderr (empty for [`GitError::Spawn`]).
    pub fn stderr(&self) -> &str {
        match self {
            GitError::Failed { stderr, .. } => stderr,
            GitError::Spawn { .. }
            | GitError::TimedOut { .. }
            | GitError::UnexpectedOutput { .. } => "",
        }
    }
}

fn stderr_summary(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        "no output on stderr".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Removes the userinfo part (`user:password@`) from every URL in `text`.
///
/// ```
/// use forge_ledger::git::redact_url;
/// assert_eq!(
///     redact_url("https://ci:s3cret@git.example/ledger.git"),
///     "https://***@git.example/ledger.git"
/// );
/// assert_eq!(redact_url("git@github.com:org/ledger.git"), "git@github.com:org/ledger.git");
/// ```
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', whitespace, quote or end of text.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Variables that make git act on another repository than the directory it runs in.
const REPOSITORY_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_QUARANTINE_PATH",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
];

/// Runs `git` in one directory with a fixed environment.
#[derive(Debug, Clone)]
pub struct Git {
    program: PathBuf,
    dir: PathBuf,
    env: Vec<(OsString, OsString)>,
    timeout: Option<Duration>,
}

impl Git {
    /// A runner for the `git` on `PATH`, working in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Git {
            program: PathBuf::from("git"),
            dir: dir.into(),
            env: Vec::new(),
            timeout: None,
        }
    }

    /// Stops (kills) any one git command that runs longer than `limit`: a fetch or push to a
    /// remote that stopped answering must not hang the pipeline. Default: no limit.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Uses another git binary.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Adds an environment variable for every invocation.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The directory git runs in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        // Settings that would change what these commands do or print, whatever the user's or
        // the machine's git config says: no client-side hooks (a global `core.hooksPath` or a
        // template's pre-push hook, such as git-lfs's, must not run on the Ledger's pushes) and
        // no signature lines in `git log` output (`log.showSignature`), which would shift the
        // fields Forge parses.
        cmd.args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "log.showSignature=false",
        ])
        .args(args)
        .current_dir(&self.dir)
        .env("LC_ALL", "C")
        .env("LANGUAGE", "C")
        .env("GIT_TERMINAL_PROMPT", "0");
        // Run from inside a git hook, these point at the hook's repository (githooks(5)), and
        // every command here would act on it instead of `dir`.
        for var in REPOSITORY_ENV {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `git ARGS`; returns stdout on success.
    pub fn run(&self, args: &[&str]) -> Result<String, GitError> {
        self.run_with_input(args, None)
    }

    /// Runs `git ARGS` with `input` on stdin; returns stdout on success.
    pub fn run_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Result<String, GitError> {
        let bytes = self.run_bytes(args, input)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Runs `git ARGS` with optional stdin; returns raw stdout bytes on success.
    pub fn run_bytes(&self, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, GitError> {
        let command_line = display_command(args);
        let started = Instant::now();
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let spawn_err = |source| GitError::Spawn {
            command: command_line.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        // stdin is fed from its own thread while stdout/stderr are drained: `git cat-file
        // --batch` answers while it reads, and a full pipe either way would block both sides.
        // A write error (git exited early) shows up in the exit status below.
        let feeder = match (input, child.stdin.take()) {
            (Some(input), Some(mut stdin)) => {
                let input = input.to_vec();
                Some(std::thread::spawn(move || {
                    let _ = stdin.write_all(&input);
                }))
            }
            _ => None,
        };
        let output = match self.timeout {
            None => child.wait_with_output().map_err(spawn_err)?,
            Some(limit) => wait_with_limit(child, limit)
                .map_err(spawn_err)?
                .ok_or_else(|| GitError::TimedOut {
                    command: command_line.clone(),
                    limit,
                })?,
        };
        if let Some(feeder) = feeder {
            // git has exited: the write has finished or failed.
            let _ = feeder.join();
        }
        tracing::trace!(
            command = %command_line,
            status = %output.status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "git"
        );
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(GitError::Failed {
                command: command_line,
                status: output.status.to_string(),
                stderr: redact_url(&String::from_utf8_lossy(&output.stderr)),
            })
        }
    }
}

/// Like `Child::wait_with_output`, but kills the child after `limit` (then `Ok(None)`). The
/// pipes are drained on their own threads so a chatty git cannot block on a full pipe.
fn wait_with_limit(
    mut child: std::process::Child,
    limit: Duration,
) -> std::io::Result<Option<std::process::Output>> {
    use std::io::Read as _;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(std::process::Output {
                status,
                stdout: stdout.join().unwrap_or_default(),
                stderr: stderr.join().unwrap_or_default(),
            }));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // Not joined: a helper git started (git-remote-https, ssh) may still hold the
            // pipes; the threads end when it does.
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `git a b c` with every URL redacted.
pub(crate) fn display_command(args: &[&str]) -> String {
    let mut line = String::from("git");
    for arg in args {
        line.push(' ');
        line.push_str(&redact_url(arg));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_everywhere() {
        let check = |input: &str, expected: &str| assert_eq!(redact_url(input), expected);
        check(
            "fatal: unable to access 'https://x-access-token:ghs_abc@github.com/o/r.git/': 403",
            "fatal: unable to access 'https://***@github.com/o/r.git/': 403",
        );
        check("https://github.com/o/r.git", "https://github.com/o/r.git");
        check("ssh://git@host:22/r.git", "ssh://***@host:22/r.git");
        check("file:///tmp/ledger.git", "file:///tmp/ledger.git");
        check(
            "a https://u:p@h/x and http://v@h2",
            "a https://***@h/x and http://***@h2",
        );
        check("no url here", "no url here");
    }

    #[test]
    fn command_lines_are_redacted() {
        assert_eq!(
            display_command(&["fetch", "https://u:tok@h/r.git", "main"]),
            "git fetch https://***@h/r.git main"
        );
    }
}
