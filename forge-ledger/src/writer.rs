//! The Ledger writer: read, set, and revert one image tag in a Git repository of manifests,
//! with optimistic locking, a monotonic build-id guard and push retries that re-apply the
//! patch from scratch.
//!
//! Every write is one new commit on top of the branch tip; nothing is ever force-pushed.
//! A [`Ledger`] keeps a private bare work repository (a temp dir removed on drop, or a
//! directory you choose with [`Ledger::workdir`]); each operation fetches the branch tip into it
//! with `--depth=1`, so 32 concurrent processes each hold only one shallow tip, never a full
//! clone. One `Ledger` value serialises its own operations; use one per thread or process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::git::{Git, GitError, redact_url};
use crate::{PatchError, Selector};

/// The shortest time limit any single git command gets (see `Ledger::git`).
const GIT_COMMAND_FLOOR: Duration = Duration::from_secs(600);
/// The ref inside the work repository that holds the fetched branch tip.
const FETCHED: &str = "refs/forge/fetched";

/// A failed Ledger operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The requested tag is not a valid, immutable OCI tag (`latest` included). Nothing was
    /// fetched.
    #[error("refusing tag `{tag}` before touching the Ledger")]
    InvalidTag {
        /// The tag as given.
        tag: String,
        /// The validation error from the patcher.
        #[source]
        source: Box<PatchError>,
    },
    /// A caller-supplied input other than the tag is unusable (file path, trailer, subject).
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidInput {
        /// Which input (`file path`, `trailer`, …).
        what: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// `expect_tag` did not match the freshly fetched file: another writer got there first.
    #[error(
        "superseded: current tag is {current} in {file} (expected {expected}); nothing was pushed — \
         re-read the Ledger and decide again"
    )]
    Superseded {
        /// The manifest path.
        file: String,
        /// The tag the caller expected.
        expected: String,
        /// The tag actually in the file.
        current: String,
    },
    /// The monotonic guard refused to move a numeric build id backwards.
    #[error(
        "refusing to move {file} backwards from build {current} to {requested}; a stale pipeline \
         must not roll back — use `forge ledger revert` (or rollback) to go back on purpose"
    )]
    Backwards {
        /// The manifest path.
        file: String,
        /// The tag in the file.
        current: String,
        /// The older tag that was requested.
        requested: String,
    },
    /// The manifest could not be read or patched (no target, ambiguous, invalid YAML, …).
    #[error("cannot patch {file} at {branch}")]
    Patch {
        /// The manifest path.
        file: String,
        /// The branch it was read from.
        branch: String,
        /// The patcher's error, listing candidates where there are several.
        #[source]
        source: Box<PatchError>,
    },
    /// The file does not exist at the tip of the branch.
    #[error(
        "{file} not found on branch {branch} of {repo}; check --file (a path relative to the \
         repository root) and --branch"
    )]
    NotFound {
        /// The manifest path.
        file: String,
        /// The branch.
        branch: String,
        /// The repository, redacted.
        repo: String,
    },
    /// The branch does not exist in the repository.
    #[error("branch {branch} not found in {repo}; check --branch and --repo")]
    BranchNotFound {
        /// The branch.
        branch: String,
        /// The repository, redacted.
        repo: String,
    },
    /// The remote kept rejecting the push because other writers moved the branch; every
    /// attempt re-applied the patch to the fresh tip.
    #[error(
        "push rejected {attempts} times over {:.1}s: {last}; other writers kept moving {branch} — \
         nothing of this change landed; run it again later (each run re-applies the change to \
         the newest tip), or allow more attempts (`Ledger::max_attempts`, \
         `forge ledger set-tag --max-attempts`)",
        elapsed.as_secs_f64()
    )]
    Rejected {
        /// Push attempts made.
        attempts: u32,
        /// Time spent, including backoff.
        elapsed: Duration,
        /// The branch.
        branch: String,
        /// The last rejection reason from git.
        last: String,
    },
    /// The remote refused the push for another reason it gave (a protected branch, a non-bare
    /// repository with the branch checked out, …). Not retried.
    #[error(
        "the remote refused the push to {branch} (not retried; nothing landed): {reason}; check the branch's protection rules, or that a local --repo path is a bare repository"
    )]
    PushRefused {
        /// The branch.
        branch: String,
        /// git's rejection line.
        reason: String,
    },
    /// A server-side hook (pre-receive/update) declined the push. Not retried.
    #[error(
        "the remote's hook declined the push to {branch} (not retried; nothing landed): {message}"
    )]
    HookRejected {
        /// The branch.
        branch: String,
        /// What the remote said (`remote:` lines and the rejection line).
        message: String,
    },
    /// There is no earlier value to revert to.
    #[error(
        "nothing to revert in {file}: its history holds only the value {current}; name a value \
         with --to"
    )]
    NothingToRevert {
        /// The manifest path.
        file: String,
        /// The only value in the history.
        current: String,
    },
    /// A revert without a named value whose newest change is itself a revert: going back
    /// "one step" again would restore the value that was reverted (a retried pipeline step
    /// would flip-flop), so the value must be named.
    #[error(
        "the newest change to {file} is already a revert (commit {commit}, to {current}); reverting \
         it again would restore {would_restore}; name the value with --to (e.g. --to {would_restore} \
         to go forward again)"
    )]
    AlreadyReverted {
        /// The manifest path.
        file: String,
        /// The revert commit.
        commit: String,
        /// The value the revert set.
        current: String,
        /// What a revert of the revert would set.
        would_restore: String,
    },
    /// A git command failed.
    #[error("git failed on {repo}")]
    Git {
        /// The repository, redacted.
        repo: String,
        /// The failing command and its stderr.
        #[source]
        source: GitError,
    },
    /// The private work repository could not be created.
    #[error("cannot create the Ledger work directory {}: {source}", path.display())]
    Workdir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl LedgerError {
    /// True when the caller's input (or a policy about it) was refused before anything changed:
    /// a CLI maps these to exit code 2.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            LedgerError::InvalidTag { .. }
                | LedgerError::InvalidInput { .. }
                | LedgerError::Superseded { .. }
                | LedgerError::Backwards { .. }
                | LedgerError::NotFound { .. }
                | LedgerError::BranchNotFound { .. }
                | LedgerError::NothingToRevert { .. }
                | LedgerError::AlreadyReverted { .. }
        ) || matches!(
            self,
            // The patcher proving its own edit wrong is a bug to report, not bad input.
            LedgerError::Patch { source, .. }
                if !matches!(**source, PatchError::VerifyFailed { .. })
        )
    }
}

/// The value of a tag at the tip of the branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Current {
    /// The tag.
    pub value: String,
    /// The digest pinned next to the tag (`…:TAG@sha256:…` kustomize images), if any. A
    /// writer that knows the new digest should then set `TAG@sha256:…`.
    pub digest: Option<String>,
    /// Where it lives in the document (`spec.source.helm.parameters[name=image.tag].value`).
    pub path: String,
    /// 1-based line of the value.
    pub line: usize,
    /// The branch tip commit the value was read at.
    pub commit: String,
}

/// A request to set one tag.
#[derive(Debug, Clone, Default)]
pub struct SetTag {
    /// Manifest path relative to the repository root.
    pub file: String,
    /// Which tag in the file.
    pub selector: Selector,
    /// The new tag.
    pub tag: String,
    /// Compare-and-swap: fail with [`LedgerError::Superseded`] unless the freshly fetched file
    /// holds this tag (`TAG` compares the tag, `TAG@sha256:…` tag and digest); re-checked on
    /// every retry. Setting the value the file already has succeeds without a commit before
    /// this check, so two pipelines racing to the same tag both succeed.
    pub expect_tag: Option<String>,
    /// `(service, env)` for the commit subject `<service> <env>: <old> -> <new>`; without it
    /// the subject names the file.
    pub subject: Option<(String, String)>,
    /// Commit trailers (`Forge-Digest`, `Forge-Build-Id`, …), in order.
    pub trailers: Vec<(String, String)>,
    /// Fetch, check and patch, but commit and push nothing.
    pub dry_run: bool,
    /// Disables the monotonic build-id guard. Only [`Ledger::revert`] sets it.
    pub allow_backwards: bool,
}

/// The result of [`Ledger::set_tag`] or [`Ledger::revert`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetTagOutcome {
    /// Manifest path.
    pub file: String,
    /// The tag before.
    pub old: String,
    /// The tag after.
    pub new: String,
    /// The pushed commit; `None` when nothing changed (idempotent) or on a dry run.
    pub commit: Option<String>,
    /// Fetch-patch-push attempts (1 when the first push landed).
    pub attempts: u32,
    /// Wall time of the whole operation.
    pub elapsed_ms: u64,
    /// True for a dry run.
    pub dry_run: bool,
}

/// One value of a tag in the file's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The commit that set this value.
    pub commit: String,
    /// Committer time, RFC 3339, in the committer's own offset.
    pub time: String,
    /// Committer time in seconds since the Unix epoch: what to order by, since `time` strings
    /// from committers in different offsets do not sort by their text.
    #[serde(skip)]
    pub timestamp: i64,
    /// `Name <email>` of the author.
    pub author: String,
    /// The tag, as `TAG@sha256:…` where the entry pins a digest.
    pub value: String,
    /// Commit subject.
    pub subject: String,
    /// Commit trailers (the last one wins for a repeated key).
    pub trailers: BTreeMap<String, String>,
}

/// A request to set a tag back to an earlier value, as a new commit.
#[derive(Debug, Clone, Default)]
pub struct Revert {
    /// Manifest path relative to the repository root.
    pub file: String,
    /// Which tag in the file.
    pub selector: Selector,
    /// The value to go back to; default: the previous distinct value in the history (refused
    /// with [`LedgerError::AlreadyReverted`] when the newest change is itself a revert).
    pub to: Option<String>,
    /// `(service, env)` for the commit subject.
    pub subject: Option<(String, String)>,
    /// Commit trailers.
    pub trailers: Vec<(String, String)>,
    /// Check only.
    pub dry_run: bool,
    /// The value the caller read (and proved its rollback against): the revert is a
    /// compare-and-swap against it, so a promotion landing in between is never overwritten.
    /// Default: the newest value in the history as the revert reads it.
    pub expect: Option<String>,
}

/// A Git repository of manifests ("the Ledger") on one branch.
///
/// ```no_run
/// use forge_ledger::{Ledger, Selector, SetTag};
/// let ledger = Ledger::new("https://git.example/platform/ledger.git", "main");
/// let outcome = ledger.set_tag(&SetTag {
///     file: "apps/qa/payments.yaml".into(),
///     selector: Selector::default(),
///     tag: "1234".into(),
///     expect_tag: Some("1200".into()),
///     subject: Some(("payments".into(), "qa".into())),
///     trailers: vec![("Forge-Build-Id".into(), "1234".into())],
///     ..SetTag::default()
/// })?;
/// assert_eq!(outcome.new, "1234");
/// # Ok::<(), forge_ledger::LedgerError>(())
/// ```
pub struct Ledger {
    repo: String,
    branch: String,
    workdir: Option<PathBuf>,
    max_attempts: u32,
    max_duration: Duration,
    git_timeout: Option<Duration>,
    backoff_base: Duration,
    backoff_cap: Duration,
    identity: Option<(String, String)>,
    git_program: PathBuf,
    state: Mutex<Option<WorkRepo>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The repository URL may carry credentials: only the redacted form is shown.
        f.debug_struct("Ledger")
            .field("repo", &self.repo_display())
            .field("branch", &self.branch)
            .field("workdir", &self.workdir)
            .field("max_attempts", &self.max_attempts)
            .field("max_duration", &self.max_duration)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct WorkRepo {
    path: PathBuf,
    remove_on_drop: bool,
    committer: String,
}

impl Drop for WorkRepo {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl Ledger {
    /// A Ledger at `repo` (a URL git understands, or a local path) on `branch`.
    pub fn new(repo: impl Into<String>, branch: impl Into<String>) -> Self {
        Ledger {
            repo: normalise_repo(repo.into()),
            branch: branch.into(),
            workdir: None,
            max_attempts: 30,
            max_duration: Duration::from_secs(180),
            git_timeout: None,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(8),
            identity: None,
            git_program: PathBuf::from("git"),
            state: Mutex::new(None),
        }
    }

    /// Keeps the private work repository in `dir` (created when missing, reused across runs to
    /// save fetches). Never share one directory between concurrent processes.
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Most push attempts before [`LedgerError::Rejected`] (default 30, at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Stops any single git command that runs longer than `limit` (a remote that stopped
    /// answering). Default: the longer of [`Ledger::max_duration`] and 10 minutes.
    pub fn git_timeout(mut self, limit: Duration) -> Self {
        self.git_timeout = Some(limit);
        self
    }

    /// Longest time to keep retrying rejected pushes (default 180 s).
    pub fn max_duration(mut self, duration: Duration) -> Self {
        self.max_duration = duration;
        self
    }

    /// Backoff after the n-th rejected push: a random delay up to `unit × 2^n`, capped at `cap`,
    /// where `unit` is the larger of `base` and the duration of the failed attempt (defaults
    /// 50 ms and 8 s).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    /// Author and committer of Forge's commits. Default: git's own identity (config/env), or
    /// `Forge <forge@localhost>` when git has none.
    pub fn identity(mut self, name: impl Into<String>, email: impl Into<String>) -> Self {
        self.identity = Some((name.into(), email.into()));
        self
    }

    /// Uses another git binary than the `git` on PATH.
    pub fn git_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.git_program = program.into();
        self
    }

    /// The repository, with any userinfo redacted (safe to log).
    pub fn repo_display(&self) -> String {
        redact_url(&self.repo)
    }

    /// The branch.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The private work repository, once the first operation has created it.
    pub fn work_repo_path(&self) -> Option<PathBuf> {
        self.lock().as_ref().map(|w| w.path.clone())
    }

    /// Reads the tag at the tip of the branch.
    pub fn get(&self, file: &str, selector: &Selector) -> Result<Current, LedgerError> {
        let file = normalise_file(file)?;
        let mut state = self.lock();
        let work = self.work_repo(&mut state)?;
        let git = self.git(&work.path);
        self.fetch(&git, true)?;
        let commit = git
            .run(&["rev-parse", "--verify", &format!("{FETCHED}^{{commit}}")])
            .map_err(|e| self.git_err(e))?
            .trim()
            .to_owned();
        let (_, text) = self.read_file(&git, &commit, &file)?;
        let found = crate::read_tag(&text, selector).map_err(|source| LedgerError::Patch {
            file: file.clone(),
            branch: self.branch.clone(),
            source: Box::new(source),
        })?;
        Ok(Current {
            value: found.value,
            digest: found.digest,
            path: found.path,
            line: found.line,
            commit,
        })
    }

    /// Sets the tag and pushes one commit, retrying rejected pushes by re-applying the patch
    /// to the fresh tip (re-checking `expect_tag` and the monotonic guard every time).
    pub fn set_tag(&self, request: &SetTag) -> Result<SetTagOutcome, LedgerError> {
        let started = Instant::now();
        // Everything that can be refused without the network is refused first.
        let (want_tag, want_digest) = split_reference(&request.tag)?;
        let file = normalise_file(&request.file)?;
        let trailers = check_trailers(&request.trailers)?;
        if let Some((service, env)) = &request.subject {
            for (what, v) in [("service", service), ("env", env)] {
                if v.trim().is_empty() || v.contains(['\n', '\r']) {
                    return Err(LedgerError::InvalidInput {
                        what,
                        value: v.clone(),
                        reason: "must be a non-empty single line".into(),
                    });
                }
            }
        }

        let mut state = self.lock();
        let work = self.work_repo(&mut state)?;
        let git = self.git(&work.path);
        let marks = work.path.join("forge-marks");
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let attempt_started = Instant::now();
            self.fetch(&git, true)?;
            let (mode, text) = self.read_file(&git, FETCHED, &file)?;
            let patch_err = |source| LedgerError::Patch {
                file: file.clone(),
                branch: self.branch.clone(),
                source: Box::new(source),
            };
            let found = crate::read_tag(&text, &request.selector).map_err(patch_err)?;
            let current = match &found.digest {
                Some(digest) => format!("{}@{digest}", found.value),
                None => found.value.clone(),
            };
            let outcome = |commit: Option<String>, attempts: u32| SetTagOutcome {
                file: file.clone(),
                old: current.clone(),
                new: request.tag.clone(),
                commit,
                attempts,
                elapsed_ms: started.elapsed().as_millis() as u64,
                dry_run: request.dry_run,
            };
            let same_digest = want_digest.is_none() || want_digest == found.digest.as_deref();
            if found.value == want_tag && same_digest {
                tracing::debug!(file = %file, tag = %request.tag, "tag already set; nothing to commit");
                return Ok(outcome(None, attempt));
            }
            if let Some(expected) = &request.expect_tag {
                // `TAG` compares with the tag, `TAG@sha256:…` with tag and digest.
                let actual = if expected.contains('@') {
                    &current
                } else {
                    &found.value
                };
                if expected != actual {
                    return Err(LedgerError::Superseded {
                        file: file.clone(),
                        expected: expected.clone(),
                        current: actual.clone(),
                    });
                }
            }
            if !request.allow_backwards && is_backwards(&found.value, want_tag) {
                return Err(LedgerError::Backwards {
                    file: file.clone(),
                    current: found.value.clone(),
                    requested: want_tag.to_owned(),
                });
            }
            let patched =
                crate::patch_tag(&text, &request.selector, &request.tag).map_err(patch_err)?;
            if request.dry_run {
                return Ok(outcome(None, attempt));
            }
            let message = commit_message(
                &file,
                request.subject.as_ref(),
                &current,
                &request.tag,
                &trailers,
            );
            let commit = self.commit(
                &git,
                &work.committer,
                &marks,
                &file,
                &mode,
                &patched.text,
                &message,
            )?;
            match self.push(&git, &commit)? {
                PushResult::Landed => {
                    tracing::debug!(file = %file, old = %current, new = %request.tag, %commit, attempts = attempt, "tag set");
                    return Ok(outcome(Some(commit), attempt));
                }
                PushResult::Retry(reason) => {
                    let elapsed = started.elapsed();
                    let delay = self.delay(attempt, attempt_started.elapsed());
                    if attempt >= self.max_attempts || elapsed + delay > self.max_duration {
                        return Err(LedgerError::Rejected {
                            attempts: attempt,
                            elapsed,
                            branch: self.branch.clone(),
                            last: reason,
                        });
                    }
                    tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, %reason, "push rejected; re-applying on the fresh tip");
                    std::thread::sleep(delay);
                }
            }
        }
    }

    /// The tag's values over the file's history, newest first; consecutive commits with the same
    /// value collapse into the one that set it. Commits where the file has no readable tag are
    /// skipped; renames are not followed (a Ledger path is an identity). Fetches the full
    /// history of the branch (once per work repository).
    pub fn history(
        &self,
        file: &str,
        selector: &Selector,
    ) -> Result<Vec<HistoryEntry>, LedgerError> {
        let file = normalise_file(file)?;
        let mut state = self.lock();
        let work = self.work_repo(&mut state)?;
        let git = self.git(&work.path);
        self.fetch(&git, false)?;
        let format = "%H%x1f%cI%x1f%ct%x1f%an <%ae>%x1f%s%x1f%(trailers:only,unfold)%x1e";
        let log = git
            .run(&["log", &format!("--format={format}"), FETCHED, "--", &file])
            .map_err(|e| self.git_err(e))?;
        let mut commits = Vec::new();
        for record in log.split('\x1e') {
            let record = record.trim_start_matches('\n');
            if record.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = record.splitn(6, '\x1f').collect();
            let [commit, time, timestamp, author, subject, trailers] = fields[..] else {
                continue;
            };
            // Each record must start with the commit id: anything else (signature lines from
            // a config Forge did not override) would pair a file version with the wrong commit.
            if !is_object_id(commit) {
                return Err(self.git_err(GitError::UnexpectedOutput {
                    command: "git log".to_owned(),
                    detail: format!("a record starts with {commit:?}, not a commit id"),
                }));
            }
            let Ok(timestamp) = timestamp.parse::<i64>() else {
                return Err(self.git_err(GitError::UnexpectedOutput {
                    command: "git log".to_owned(),
                    detail: format!("commit {commit} has the time {timestamp:?}"),
                }));
            };
            commits.push((
                commit,
                time,
                timestamp,
                author,
                subject,
                parse_trailers(trailers),
            ));
        }
        if commits.is_empty() {
            return Err(LedgerError::NotFound {
                file,
                branch: self.branch.clone(),
                repo: self.repo_display(),
            });
        }
        // One `cat-file --batch` process for all versions of the file.
        let input: String = commits
            .iter()
            .map(|(c, ..)| format!("{c}:{file}\n"))
            .collect();
        let blobs = git
            .run_bytes(&["cat-file", "--batch"], Some(input.as_bytes()))
            .map_err(|e| self.git_err(e))?;
        let contents = parse_batch(&blobs, commits.len()).ok_or_else(|| {
            self.git_err(GitError::UnexpectedOutput {
                command: "git cat-file --batch".to_owned(),
                detail: format!("not one answer for each of the {} commits", commits.len()),
            })
        })?;
        let mut oldest_first: Vec<HistoryEntry> = Vec::new();
        for ((commit, time, timestamp, author, subject, trailers), content) in
            commits.into_iter().zip(contents).rev()
        {
            let Some(text) = content else { continue };
            let value = match crate::read_tag(&text, selector) {
                // A digest-pinned entry is `TAG@sha256:…`, the same form `set_tag` takes, so a
                // revert restores tag and digest together and a digest-only change shows up.
                Ok(found) => match found.digest {
                    Some(digest) => format!("{}@{digest}", found.value),
                    None => found.value,
                },
                Err(e) => {
                    tracing::debug!(%commit, error = %e, "no readable tag at this commit; skipped");
                    continue;
                }
            };
            if oldest_first.last().is_some_and(|prev| prev.value == value) {
                continue;
            }
            oldest_first.push(HistoryEntry {
                commit: commit.to_owned(),
                time: time.to_owned(),
                timestamp,
                author: author.to_owned(),
                value,
                subject: subject.to_owned(),
                trailers,
            });
        }
        oldest_first.reverse();
        Ok(oldest_first)
    }

    /// Sets the tag back to the previous value (or `to`) as a NEW commit, bypassing the
    /// monotonic guard; compare-and-swap against the value it read, so a concurrent change
    /// makes it fail with [`LedgerError::Superseded`] instead of overwriting.
    pub fn revert(&self, request: &Revert) -> Result<SetTagOutcome, LedgerError> {
        if let Some(to) = &request.to {
            split_reference(to)?;
        }
        let history = self.history(&request.file, &request.selector)?;
        let Some(current) = history.first() else {
            return Err(LedgerError::NotFound {
                file: request.file.clone(),
                branch: self.branch.clone(),
                repo: self.repo_display(),
            });
        };
        let target = match (&request.to, history.get(1)) {
            (Some(to), _) => to.clone(),
            (None, Some(previous)) if current.trailers.contains_key("Forge-Revert-Of") => {
                return Err(LedgerError::AlreadyReverted {
                    file: request.file.clone(),
                    commit: current.commit.chars().take(12).collect(),
                    current: current.value.clone(),
                    would_restore: previous.value.clone(),
                });
            }
            (None, Some(previous)) => previous.value.clone(),
            (None, None) => {
                return Err(LedgerError::NothingToRevert {
                    file: request.file.clone(),
                    current: current.value.clone(),
                });
            }
        };
        let mut trailers = request.trailers.clone();
        trailers.push(("Forge-Revert-Of".into(), current.commit.clone()));
        self.set_tag(&SetTag {
            file: request.file.clone(),
            selector: request.selector.clone(),
            tag: target,
            expect_tag: Some(
                request
                    .expect
                    .clone()
                    .unwrap_or_else(|| current.value.clone()),
            ),
            subject: request.subject.clone(),
            trailers,
            dry_run: request.dry_run,
            allow_backwards: true,
        })
    }

    // ---- internals ----

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<WorkRepo>> {
        // A panic in another thread cannot leave the work repo inconsistent: every operation
        // starts with a fresh fetch.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn git(&self, dir: &Path) -> Git {
        // A safety net against a remote that stopped answering (the retry budget is only
        // checked between pushes): no single git command runs longer than the budget, and
        // never less than GIT_COMMAND_FLOOR, so a healthy clone of a big Ledger is not cut.
        Git::new(dir).program(&self.git_program).timeout(
            self.git_timeout
                .unwrap_or_else(|| self.max_duration.max(GIT_COMMAND_FLOOR)),
        )
    }

    fn git_err(&self, source: GitError) -> LedgerError {
        LedgerError::Git {
            repo: self.repo_display(),
            source,
        }
    }

    fn work_repo<'a>(&self, state: &'a mut Option<WorkRepo>) -> Result<&'a WorkRepo, LedgerError> {
        if state.is_none() {
            *state = Some(self.create_work_repo()?);
        }
        Ok(state.as_ref().expect("initialised just above"))
    }

    fn create_work_repo(&self) -> Result<WorkRepo, LedgerError> {
        let (path, remove_on_drop) = match &self.workdir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| LedgerError::Workdir {
                    path: dir.clone(),
                    source,
                })?;
                (dir.clone(), false)
            }
            None => (unique_temp_dir()?, true),
        };
        let mut work = WorkRepo {
            path,
            remove_on_drop,
            committer: String::new(),
        };
        let git = self.git(&work.path);
        if !work.path.join("HEAD").exists() {
            git.run(&["init", "--quiet", "--bare"])
                .map_err(|e| self.git_err(e))?;
            // No auto gc / maintenance processes after every fetch of a short-lived work repo
            // (appended directly: one process fewer than `git config`).
            let config = work.path.join("config");
            std::fs::OpenOptions::new()
                .append(true)
                .open(&config)
                .and_then(|mut f| {
                    std::io::Write::write_all(
                        &mut f,
                        b"[gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n",
                    )
                })
                .map_err(|source| LedgerError::Workdir {
                    path: config,
                    source,
                })?;
        }
        work.committer = match &self.identity {
            Some((name, email)) => format!("{name} <{email}>"),
            None => match git.run(&["var", "GIT_COMMITTER_IDENT"]) {
                Ok(ident) => match ident.find('>') {
                    Some(end) => ident[..=end].to_owned(),
                    None => "Forge <forge@localhost>".to_owned(),
                },
                Err(_) => "Forge <forge@localhost>".to_owned(),
            },
        };
        Ok(work)
    }

    /// Fetches the branch tip into [`FETCHED`]; `shallow` fetches only the tip commit.
    fn fetch(&self, git: &Git, shallow: bool) -> Result<(), LedgerError> {
        let refspec = format!("+refs/heads/{}:{FETCHED}", self.branch);
        let mut args = vec!["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"];
        if shallow {
            args.push("--depth=1");
        } else if git.dir().join("shallow").exists() {
            args.push("--unshallow");
        }
        args.push(&self.repo);
        args.push(&refspec);
        git.run(&args).map(drop).map_err(|e| {
            if e.stderr().contains("couldn't find remote ref") {
                LedgerError::BranchNotFound {
                    branch: self.branch.clone(),
                    repo: self.repo_display(),
                }
            } else {
                self.git_err(e)
            }
        })
    }

    /// Reads `file` at `rev`: its mode and text.
    fn read_file(&self, git: &Git, rev: &str, file: &str) -> Result<(String, String), LedgerError> {
        let listing = git
            .run(&["ls-tree", "--full-tree", rev, "--", file])
            .map_err(|e| self.git_err(e))?;
        let not_found = || LedgerError::NotFound {
            file: file.to_owned(),
            branch: self.branch.clone(),
            repo: self.repo_display(),
        };
        // `<mode> SP <type> SP <object> TAB <path>`
        let line = listing.lines().next().ok_or_else(not_found)?;
        let mut parts = line.split(['\t', ' ']);
        let (Some(mode), Some(kind), Some(object)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(not_found());
        };
        if kind != "blob" || mode == "120000" {
            return Err(LedgerError::InvalidInput {
                what: "file path",
                value: file.to_owned(),
                reason: format!(
                    "is a {} in the Ledger, not a regular file",
                    if kind == "blob" { "symlink" } else { kind }
                ),
            });
        }
        let bytes = git
            .run_bytes(&["cat-file", "blob", object], None)
            .map_err(|e| self.git_err(e))?;
        let text = String::from_utf8(bytes).map_err(|_| LedgerError::InvalidInput {
            what: "file path",
            value: file.to_owned(),
            reason: "the file is not UTF-8 text".into(),
        })?;
        Ok((mode.to_owned(), text))
    }

    /// Writes a commit on top of [`FETCHED`] that replaces `file`, with one `git fast-import`.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        git: &Git,
        committer: &str,
        marks: &Path,
        file: &str,
        mode: &str,
        text: &str,
        message: &str,
    ) -> Result<String, LedgerError> {
        let mut stream = Vec::with_capacity(text.len() + message.len() + 256);
        stream.extend_from_slice(b"commit refs/forge/new\nmark :1\n");
        stream.extend_from_slice(format!("committer {committer} now\n").as_bytes());
        stream.extend_from_slice(format!("data {}\n", message.len()).as_bytes());
        stream.extend_from_slice(message.as_bytes());
        stream.extend_from_slice(format!("\nfrom {FETCHED}^0\n").as_bytes());
        stream.extend_from_slice(format!("M {mode} inline {file}\n").as_bytes());
        stream.extend_from_slice(format!("data {}\n", text.len()).as_bytes());
        stream.extend_from_slice(text.as_bytes());
        stream.extend_from_slice(b"\ndone\n");
        let marks_arg = format!("--export-marks={}", marks.display());
        git.run_bytes(
            &[
                "fast-import",
                "--quiet",
                "--done",
                "--force",
                "--date-format=now",
                &marks_arg,
            ],
            Some(&stream),
        )
        .map_err(|e| self.git_err(e))?;
        let marks_text = std::fs::read_to_string(marks).map_err(|source| LedgerError::Workdir {
            path: marks.to_owned(),
            source,
        })?;
        marks_text
            .lines()
            .find_map(|l| l.strip_prefix(":1 "))
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| {
                self.git_err(GitError::Failed {
                    command: "git fast-import".into(),
                    status: "ok".into(),
                    stderr: format!("no commit in the marks file: {marks_text}"),
                })
            })
    }

    fn push(&self, git: &Git, commit: &str) -> Result<PushResult, LedgerError> {
        let refspec = format!("{commit}:refs/heads/{}", self.branch);
        match git.run(&["push", "--quiet", &self.repo, &refspec]) {
            Ok(_) => Ok(PushResult::Landed),
            Err(err) => {
                let text = err.stderr().to_owned();
                Ok(match classify_rejection(&text) {
                    Rejection::Retry(reason) => PushResult::Retry(reason),
                    Rejection::Hook(message) => {
                        return Err(LedgerError::HookRejected {
                            branch: self.branch.clone(),
                            message,
                        });
                    }
                    Rejection::Refused(reason) => {
                        return Err(LedgerError::PushRefused {
                            branch: self.branch.clone(),
                            reason,
                        });
                    }
                    Rejection::Other => return Err(self.git_err(err)),
                })
            }
        }
    }

    /// Full-jitter exponential backoff whose unit is the larger of the configured base and the
    /// duration of the attempt that just failed: that duration is the collision window, so on a
    /// slow remote or a loaded machine the writers spread out proportionally.
    fn delay(&self, attempt: u32, last_attempt: Duration) -> Duration {
        let unit = self.backoff_base.max(last_attempt);
        let exp = unit.saturating_mul(1u32 << attempt.min(16));
        let ceiling = exp.min(self.backoff_cap).as_millis() as u64;
        Duration::from_millis(rand::random_range(0..=ceiling))
    }
}

enum PushResult {
    Landed,
    Retry(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Rejection {
    /// Another writer moved the branch: fetch, re-apply, push again.
    Retry(String),
    /// A server-side hook said no: final.
    Hook(String),
    /// The remote refused for another reason: final.
    Refused(String),
    /// Something else (auth, network, …).
    Other,
}

fn classify_rejection(stderr: &str) -> Rejection {
    const RETRY: [&str; 7] = [
        "non-fast-forward",
        "fetch first",
        "cannot lock ref",
        "incorrect old value",
        "failed to update ref",
        "stale info",
        // Azure Repos: "TF401028: The reference … has already been updated by another client".
        "TF401028",
    ];
    // Only git's own rejection lines decide: a hook's output (`remote: …`) may contain any
    // words, "fetch first" included.
    let rejected: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("remote:"))
        .map(str::trim)
        .filter(|l| l.contains("[rejected]") || l.contains("[remote rejected]"))
        .collect();
    let line = rejected.first().copied().unwrap_or("").to_owned();
    let own_lines: String = if rejected.is_empty() {
        stderr
            .lines()
            .filter(|l| !l.starts_with("remote:"))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        rejected.join("\n")
    };
    if RETRY.iter().any(|p| own_lines.contains(p)) {
        let reason = if line.is_empty() {
            stderr.lines().last().unwrap_or("").trim().to_owned()
        } else {
            line
        };
        return Rejection::Retry(reason);
    }
    if own_lines.contains("hook declined") {
        let mut message: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("remote:"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if !line.is_empty() {
            message.push(&line);
        }
        return Rejection::Hook(message.join("; "));
    }
    if !line.is_empty() {
        return Rejection::Refused(line);
    }
    Rejection::Other
}

/// A local path becomes an absolute path (git runs inside the work repo); URLs and scp-like
/// `host:path` stay as they are.
fn normalise_repo(repo: String) -> String {
    let is_url = repo.contains("://");
    let path = Path::new(&repo);
    if is_url || (!path.exists() && repo.contains(':')) {
        return repo;
    }
    match std::path::absolute(path) {
        Ok(abs) => abs.to_string_lossy().into_owned(),
        Err(_) => repo,
    }
}

fn normalise_file(file: &str) -> Result<String, LedgerError> {
    let invalid = |reason: &str| LedgerError::InvalidInput {
        what: "file path",
        value: file.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = file.trim_start_matches("./");
    if trimmed.is_empty() {
        return Err(invalid(
            "is empty; give the manifest's path inside the Ledger",
        ));
    }
    if trimmed.starts_with('/') {
        return Err(invalid(
            "must be relative to the Ledger's root, e.g. apps/qa/payments.yaml",
        ));
    }
    if trimmed.contains(['\n', '\r', '\0', '\\']) {
        return Err(invalid("contains a control character or backslash"));
    }
    if trimmed
        .split('/')
        .any(|c| c == ".." || c == "." || c.is_empty())
    {
        return Err(invalid("must not contain `..`, `.` or empty components"));
    }
    if trimmed.starts_with('"') {
        return Err(invalid("must not start with a double quote"));
    }
    Ok(trimmed.to_owned())
}

fn check_trailers(trailers: &[(String, String)]) -> Result<Vec<(String, String)>, LedgerError> {
    trailers
        .iter()
        .map(|(k, v)| {
            let bad_key = k.is_empty()
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                || k.starts_with('-');
            if bad_key {
                return Err(LedgerError::InvalidInput {
                    what: "trailer",
                    value: format!("{k}={v}"),
                    reason: "the key must be letters, digits and `-` (e.g. Forge-Build-Id)".into(),
                });
            }
            let value = v.trim();
            if value.is_empty() || value.contains(['\n', '\r']) {
                return Err(LedgerError::InvalidInput {
                    what: "trailer",
                    value: format!("{k}={v}"),
                    reason: "the value must be a non-empty single line".into(),
                });
            }
            Ok((k.clone(), value.to_owned()))
        })
        .collect()
}

/// `<service> <env>: <old> -> <new>` (or `<file>: …`), a blank line, then the trailers.
fn commit_message(
    file: &str,
    subject: Option<&(String, String)>,
    old: &str,
    new: &str,
    trailers: &[(String, String)],
) -> String {
    let mut message = match subject {
        Some((service, env)) => format!("{} {}: {old} -> {new}\n", service.trim(), env.trim()),
        None => format!("{file}: {old} -> {new}\n"),
    };
    if !trailers.is_empty() {
        message.push('\n');
        for (k, v) in trailers {
            message.push_str(&format!("{k}: {v}\n"));
        }
    }
    message
}

fn parse_trailers(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// Parses `git cat-file --batch` output for `expected` requests; a missing object gives `None`.
/// `git cat-file --batch` answers, one per request: the text of each blob (`None` for a missing
/// path or another object type). `None` when the output does not hold exactly `expected`
/// answers, so a version of a file is never paired with the wrong commit.
fn parse_batch(mut bytes: &[u8], expected: usize) -> Option<Vec<Option<String>>> {
    let mut out = Vec::with_capacity(expected);
    while !bytes.is_empty() {
        if out.len() == expected {
            return None;
        }
        let nl = bytes.iter().position(|&b| b == b'\n')?;
        let header = String::from_utf8_lossy(&bytes[..nl]).into_owned();
        bytes = &bytes[nl + 1..];
        // `<commit>:<path> missing`; the path may hold spaces.
        if header.ends_with(" missing") || header.ends_with(" ambiguous") {
            out.push(None);
            continue;
        }
        let mut parts = header.split(' ');
        let (_, kind, size) = (parts.next(), parts.next(), parts.next());
        match (kind, size.and_then(|s| s.parse::<usize>().ok())) {
            (Some("blob"), Some(size)) if size < bytes.len() => {
                out.push(String::from_utf8(bytes[..size].to_vec()).ok());
                bytes = &bytes[size + 1..]; // content + LF
            }
            (Some(_), Some(size)) if size < bytes.len() => {
                out.push(None);
                bytes = &bytes[size + 1..];
            }
            _ => return None,
        }
    }
    (out.len() == expected).then_some(out)
}

/// A full hexadecimal object id (SHA-1 or SHA-256 repositories).
fn is_object_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Splits `TAG` or `TAG@sha256:<hex>` and validates both parts (before anything is fetched).
fn split_reference(reference: &str) -> Result<(&str, Option<&str>), LedgerError> {
    let (tag, digest) = match reference.split_once('@') {
        Some((tag, digest)) => (tag, Some(digest)),
        None => (reference, None),
    };
    let invalid = |source| LedgerError::InvalidTag {
        tag: reference.to_owned(),
        source: Box::new(source),
    };
    crate::validate_tag(tag).map_err(invalid)?;
    if let Some(digest) = digest {
        crate::validate_digest(digest).map_err(invalid)?;
    }
    Ok((tag, digest))
}

/// True when both tags are numeric build ids and `new` is smaller than `current`.
fn is_backwards(current: &str, new: &str) -> bool {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !numeric(current) || !numeric(new) {
        return false;
    }
    let a = current.trim_start_matches('0');
    let b = new.trim_start_matches('0');
    (b.len(), b) < (a.len(), a)
}

fn unique_temp_dir() -> Result<PathBuf, LedgerError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("forge-ledger-{}-{nanos:x}-{n}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(source) => return Err(LedgerError::Workdir { path, source }),
        }
    }
    Err(LedgerError::Workdir {
        path: base,
        source: last_err.unwrap_or_else(|| std::io::Error::other("no unique name")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_guard_compares_numbers_not_strings() {
        let check = |cur: &str, new: &str, expected: bool| {
            assert_eq!(is_backwards(cur, new), expected, "{cur} -> {new}")
        };
        check("100", "99", true);
        check("99", "100", false);
        check("100", "100", false);
        check("0100", "99", true);
        check("1.2.3", "1.2.2", false); // not a build id: no guard
        check("abc", "123", false);
        check("123", "abc", false);
    }

    #[test]
    fn rejections_are_classified() {
        let check =
            |stderr: &str, expected: Rejection| assert_eq!(classify_rejection(stderr), expected);
        check(
            "To /tmp/x.git\n ! [rejected]        abc -> main (fetch first)\nerror: failed to push some refs\n",
            Rejection::Retry("! [rejected]        abc -> main (fetch first)".into()),
        );
        check(
            "To /tmp/x.git\n ! [remote rejected] abc -> main (failed to update ref)\n",
            Rejection::Retry("! [remote rejected] abc -> main (failed to update ref)".into()),
        );
        check(
            "remote: prod is frozen\nTo /tmp/x.git\n ! [remote rejected] abc -> main (pre-receive hook declined)\n",
            Rejection::Hook(
                "prod is frozen; ! [remote rejected] abc -> main (pre-receive hook declined)"
                    .into(),
            ),
        );
        check(
            "fatal: could not read from remote repository\n",
            Rejection::Other,
        );
        // A hook that happens to say "fetch first" is still a hook rejection, not a race.
        check(
            "remote: please fetch first and read the runbook\nTo /tmp/x.git\n ! [remote rejected] abc -> main (pre-receive hook declined)\n",
            Rejection::Hook(
                "please fetch first and read the runbook; ! [remote rejected] abc -> main (pre-receive hook declined)"
                    .into(),
            ),
        );
        // Azure Repos' word for a race; and a hook quoting git's words is still a hook.
        check(
            "To https://dev.azure.com/x\n ! [remote rejected] abc -> main (TF401028: The reference 'refs/heads/main' has already been updated by another client, so you cannot update it. Please try again.)\n",
            Rejection::Retry(
                "! [remote rejected] abc -> main (TF401028: The reference 'refs/heads/main' has already been updated by another client, so you cannot update it. Please try again.)".into(),
            ),
        );
        check(
            "remote: ! [rejected] is what you get for pushing on Fridays\nTo /tmp/x.git\n ! [remote rejected] abc -> main (pre-receive hook declined)\n",
            Rejection::Hook(
                "! [rejected] is what you get for pushing on Fridays; ! [remote rejected] abc -> main (pre-receive hook declined)".into(),
            ),
        );
        // Other refusals are said as they are, not blamed on a hook.
        check(
            "To /tmp/x\n ! [remote rejected] abc -> main (branch is currently checked out)\n",
            Rejection::Refused(
                "! [remote rejected] abc -> main (branch is currently checked out)".into(),
            ),
        );
    }

    #[test]
    fn file_paths_are_checked() {
        assert_eq!(normalise_file("./apps/qa.yaml").unwrap(), "apps/qa.yaml");
        for bad in ["", "/etc/passwd", "apps/../x.yaml", "a//b", "a\nb"] {
            assert!(normalise_file(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commit_messages_have_trailers_after_a_blank_line() {
        let msg = commit_message(
            "apps/qa.yaml",
            Some(&("payments".into(), "qa".into())),
            "1",
            "2",
            &[("Forge-Build-Id".into(), "2".into())],
        );
        assert_eq!(msg, "payments qa: 1 -> 2\n\nForge-Build-Id: 2\n");
        assert_eq!(
            commit_message("a.yaml", None, "1", "2", &[]),
            "a.yaml: 1 -> 2\n"
        );
    }

    #[test]
    fn a_patcher_bug_is_not_a_refusal() {
        let patch = |source: PatchError| LedgerError::Patch {
            file: "a.yaml".into(),
            branch: "main".into(),
            source: Box::new(source),
        };
        assert!(
            patch(PatchError::NoTarget {
                searched: "image.tag".into()
            })
            .is_refusal()
        );
        assert!(
            !patch(PatchError::VerifyFailed {
                path: "image.tag".into(),
                detail: "a comment changed".into()
            })
            .is_refusal()
        );
    }

    #[test]
    fn batch_output_is_parsed() {
        let out = b"aaa blob 3\nabc\nbbb:x y missing\nccc blob 0\n\n";
        assert_eq!(
            parse_batch(out, 3),
            Some(vec![Some("abc".into()), None, Some(String::new())])
        );
        // One answer more or fewer than asked for: never paired up by position.
        assert_eq!(parse_batch(out, 2), None);
        assert_eq!(parse_batch(out, 4), None);
        assert_eq!(parse_batch(b"aaa blob 9\nabc\n", 1), None);
    }

    #[test]
    fn object_ids_are_full_hex() {
        assert!(is_object_id(&"a".repeat(40)));
        assert!(is_object_id(&"0f".repeat(32)));
        assert!(!is_object_id("gpg: Signature made Thu Nov 26"));
        assert!(!is_object_id(&"a".repeat(39)));
        assert!(!is_object_id(&"g".repeat(40)));
    }
}
