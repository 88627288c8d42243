//! `forge ledger …`: patch a manifest locally, and read, set, list and revert image tags in the
//! Git Ledger (forge-ledger does the work; this module maps arguments and prints results).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use forge_ledger::{
    Ledger, LedgerError, LintOptions, PatchError, Revert, Selector, SetTag, SetTagOutcome,
};

use crate::output::{self, Format, InvalidInput};

/// `forge ledger …`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Set the image tag in a local manifest file (no git); prints the result, or rewrites the
    /// file atomically with --in-place. Only the tag's bytes change.
    Patch {
        /// The manifest (YAML) file.
        file: PathBuf,
        /// The new tag (or TAG@sha256:<hex> for digest-pinned kustomize images).
        #[arg(long)]
        tag: String,
        #[command(flatten)]
        target: Target,
        /// Rewrite FILE (atomically: temp file + rename) instead of printing the result.
        #[arg(long)]
        in_place: bool,
        /// Output format (with --in-place: the summary; otherwise text prints the patched file).
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Print the tag at the tip of the Ledger branch.
    Get {
        #[command(flatten)]
        remote: Remote,
        /// Manifest path inside the Ledger.
        #[arg(long)]
        file: String,
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Set the tag and push one commit; rejected pushes are retried on the fresh tip.
    SetTag {
        #[command(flatten)]
        remote: Remote,
        /// Manifest path inside the Ledger.
        #[arg(long)]
        file: String,
        /// The new tag (a build id; `latest` is refused). TAG@sha256:<hex> pins a digest.
        #[arg(long)]
        tag: String,
        #[command(flatten)]
        target: Target,
        /// Compare-and-swap: fail ("superseded") unless the Ledger holds this tag right now.
        #[arg(long, value_name = "OLD")]
        expect_tag: Option<String>,
        #[command(flatten)]
        commit: CommitArgs,
        /// Fetch, check and patch, but push nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// List the tag's values over the file's history, newest first.
    History {
        #[command(flatten)]
        remote: Remote,
        /// Manifest path inside the Ledger.
        #[arg(long)]
        file: String,
        #[command(flatten)]
        target: Target,
        /// Show at most N entries.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Set the tag back to its previous value (or --to) as a NEW commit; never rewrites history.
    Revert {
        #[command(flatten)]
        remote: Remote,
        /// Manifest path inside the Ledger.
        #[arg(long)]
        file: String,
        #[command(flatten)]
        target: Target,
        /// The value to go back to (default: the previous value in the history).
        #[arg(long, value_name = "TAG")]
        to: Option<String>,
        #[command(flatten)]
        commit: CommitArgs,
        /// Check only; push nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Check a Ledger checkout: files parse, no mutable tags, Prod apps not auto-synced.
    Lint {
        /// Root of the Ledger checkout.
        path: PathBuf,
        /// Directory name that marks a Prod path (repeatable; default: prod, production).
        #[arg(long = "prod-env", value_name = "NAME")]
        prod_envs: Vec<String>,
        /// Regular expression on the relative path that also marks a Prod path.
        #[arg(long, value_name = "REGEX")]
        prod_path_pattern: Option<String>,
        /// Require every kustomize image entry to be pinned to a digest.
        #[arg(long)]
        require_digests: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

/// Which tag in the file.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Image NAME, when the file holds several images.
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// Explicit key path to the tag, e.g. spec.source.helm.parameters[name=image.tag].value.
    #[arg(long, value_name = "PATH")]
    key: Option<String>,
    /// Document in a multi-document file: metadata.name or Kind/name.
    #[arg(long, value_name = "NAME")]
    app: Option<String>,
}

impl Target {
    fn selector(&self) -> Selector {
        Selector {
            image: self.image.clone(),
            key: self.key.clone(),
            app: self.app.clone(),
        }
    }
}

/// Where the Ledger is.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The Ledger's Git URL or local path (credentials come from your git credential helper or
    /// SSH config, never from the URL in logs).
    #[arg(
        long,
        env = "FORGE_LEDGER_REPO",
        hide_env_values = true,
        value_name = "URL|PATH"
    )]
    repo: String,
    /// Branch Argo CD syncs from.
    #[arg(long, default_value = "main")]
    branch: String,
}

/// Commit and push options.
#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Service name for the commit subject `<service> <env>: <old> -> <new>` (with --env).
    #[arg(long, requires = "env")]
    service: Option<String>,
    /// Environment name for the commit subject (with --service).
    #[arg(long, requires = "service")]
    env: Option<String>,
    /// Commit trailer KEY=VALUE, e.g. Forge-Build-Id=1234 (repeatable).
    #[arg(long = "trailer", value_name = "KEY=VALUE", value_parser = parse_trailer)]
    trailers: Vec<(String, String)>,
    /// Most push attempts when other writers keep moving the branch.
    #[arg(long, default_value_t = 30, value_name = "N")]
    max_attempts: u32,
    /// Longest time to keep retrying, in seconds.
    #[arg(long, default_value_t = 180, value_name = "SECONDS")]
    max_duration: u64,
    /// Backoff after a rejected push: BASE_MS:CAP_MS (random delay up to BASE×2^attempt, capped).
    #[arg(long, value_name = "BASE_MS:CAP_MS", value_parser = parse_backoff, hide = true)]
    backoff: Option<(u64, u64)>,
}

fn parse_backoff(s: &str) -> Result<(u64, u64), String> {
    s.split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| format!("`{s}` is not BASE_MS:CAP_MS, e.g. 50:2000"))
}

impl CommitArgs {
    fn subject(&self) -> Option<(String, String)> {
        self.service.clone().zip(self.env.clone())
    }
}

fn parse_trailer(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!(
            "`{s}` is not KEY=VALUE; write e.g. --trailer Forge-Build-Id=1234"
        )),
    }
}

/// Runs `forge ledger …`.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Patch {
            file,
            tag,
            target,
            in_place,
            output: format,
        } => patch(&file, &tag, &target.selector(), in_place, format),
        Command::Get {
            remote,
            file,
            target,
            output: format,
        } => {
            let ledger = Ledger::new(&remote.repo, &remote.branch);
            let current = ledger
                .get(&file, &target.selector())
                .map_err(ledger_error)?;
            match format {
                Format::Json => output::print_json(&current)?,
                Format::Text => output::print_stdout(&format!("{}\n", current.value))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::SetTag {
            remote,
            file,
            tag,
            target,
            expect_tag,
            commit,
            dry_run,
            output: format,
        } => {
            let ledger = ledger_for(&remote, &commit);
            let outcome = ledger
                .set_tag(&SetTag {
                    file,
                    selector: target.selector(),
                    tag,
                    expect_tag,
                    subject: commit.subject(),
                    trailers: commit.trailers.clone(),
                    dry_run,
                    allow_backwards: false,
                })
                .map_err(ledger_error)?;
            print_outcome(&outcome, &ledger, format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::History {
            remote,
            file,
            target,
            limit,
            output: format,
        } => {
            let ledger = Ledger::new(&remote.repo, &remote.branch);
            let mut entries = ledger
                .history(&file, &target.selector())
                .map_err(ledger_error)?;
            if let Some(limit) = limit {
                entries.truncate(limit);
            }
            match format {
                Format::Json => output::print_json(&entries)?,
                Format::Text => {
                    let mut text = String::new();
                    for e in &entries {
                        text.push_str(&format!(
                            "{}  {}  {:<12}  {}  {}\n",
                            short(&e.commit),
                            e.time,
                            e.value,
                            e.author,
                            e.subject
                        ));
                    }
                    output::print_stdout(&text)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Revert {
            remote,
            file,
            target,
            to,
            commit,
            dry_run,
            output: format,
        } => {
            let ledger = ledger_for(&remote, &commit);
            let outcome = ledger
                .revert(&Revert {
                    file,
                    selector: target.selector(),
                    to,
                    subject: commit.subject(),
                    trailers: commit.trailers.clone(),
                    dry_run,
                    expect: None,
                })
                .map_err(ledger_error)?;
            print_outcome(&outcome, &ledger, format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lint {
            path,
            prod_envs,
            prod_path_pattern,
            require_digests,
            output: format,
        } => {
            let mut options = LintOptions::default();
            if !prod_envs.is_empty() {
                options.prod_envs = prod_envs;
            }
            options.prod_path_pattern = prod_path_pattern;
            options.require_digests = require_digests;
            if !path.is_dir() {
                return Err(InvalidInput(format!(
                    "{} is not a directory; pass the root of a Ledger checkout",
                    path.display()
                ))
                .into());
            }
            let findings = forge_ledger::lint_dir(&path, &options).map_err(|e| {
                let message = chain_text(&e);
                match e {
                    forge_ledger::LintError::Pattern { .. } => {
                        anyhow::Error::new(InvalidInput(message))
                    }
                    other => anyhow::Error::new(other),
                }
            })?;
            match format {
                Format::Json => output::print_json(&serde_json::json!({
                    "path": path,
                    "findings": findings,
                }))?,
                Format::Text => {
                    let mut text = String::new();
                    for f in &findings {
                        text.push_str(&format!(
                            "{}:{}: [{}] {}\n",
                            path.join(&f.file).display(),
                            f.line,
                            f.rule,
                            f.message
                        ));
                    }
                    text.push_str(&match findings.len() {
                        0 => format!("{}: no findings\n", path.display()),
                        n => format!("{}: {n} finding(s)\n", path.display()),
                    });
                    output::print_stdout(&text)?;
                }
            }
            Ok(if findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(output::exit::FAILURE)
            })
        }
    }
}

fn ledger_for(remote: &Remote, commit: &CommitArgs) -> Ledger {
    let ledger = Ledger::new(&remote.repo, &remote.branch)
        .max_attempts(commit.max_attempts)
        .max_duration(Duration::from_secs(commit.max_duration));
    match commit.backoff {
        Some((base, cap)) => {
            ledger.backoff(Duration::from_millis(base), Duration::from_millis(cap))
        }
        None => ledger,
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn print_outcome(outcome: &SetTagOutcome, ledger: &Ledger, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => output::print_json(outcome),
        Format::Text => {
            let line = match (&outcome.commit, outcome.dry_run) {
                _ if outcome.old == outcome.new => format!(
                    "{}: already {}; nothing to commit\n",
                    outcome.file, outcome.new
                ),
                (_, true) => format!(
                    "{}: would set {} -> {} on {} (dry run, nothing pushed)\n",
                    outcome.file,
                    outcome.old,
                    outcome.new,
                    ledger.branch()
                ),
                (Some(commit), false) => format!(
                    "{}: {} -> {} (commit {} on {}, {} attempt{})\n",
                    outcome.file,
                    outcome.old,
                    outcome.new,
                    short(commit),
                    ledger.branch(),
                    outcome.attempts,
                    if outcome.attempts == 1 { "" } else { "s" }
                ),
                (None, false) => format!("{}: nothing to commit\n", outcome.file),
            };
            output::print_stdout(&line)
        }
    }
}

/// `error` then `caused by:` lines, as output.rs prints a chain.
fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    text
}

/// Refusals (bad tag, superseded, backwards, no target, …) exit 2; everything else exits 1.
fn ledger_error(err: LedgerError) -> anyhow::Error {
    let refused = err.is_refusal();
    crate::output::classify(err, refused)
}

fn patch_error(file: &Path, err: PatchError) -> anyhow::Error {
    let message = format!("cannot patch {}: {}", file.display(), chain_text(&err));
    match err {
        // A bug in the patcher, not the caller's input.
        PatchError::VerifyFailed { .. } => anyhow::anyhow!(message),
        _ => anyhow::Error::new(InvalidInput(message)),
    }
}

fn patch(
    file: &Path,
    tag: &str,
    selector: &Selector,
    in_place: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let patched =
        forge_ledger::patch_tag(&text, selector, tag).map_err(|e| patch_error(file, e))?;
    if !in_place {
        match format {
            Format::Text => output::print_stdout(&patched.text)?,
            Format::Json => output::print_json(&serde_json::json!({
                "file": file,
                "old": patched.old,
                "new": patched.new,
                "path": patched.path,
                "line": patched.line,
                "changed": patched.changed(),
                "text": patched.text,
            }))?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    if patched.changed() {
        write_atomically(file, &patched.text)?;
    }
    match format {
        Format::Json => output::print_json(&serde_json::json!({
            "file": file,
            "old": patched.old,
            "new": patched.new,
            "path": patched.path,
            "line": patched.line,
            "changed": patched.changed(),
        }))?,
        Format::Text => output::print_stdout(&if patched.changed() {
            format!(
                "{}: {} -> {} ({}, line {})\n",
                file.display(),
                patched.old,
                patched.new,
                patched.path,
                patched.line
            )
        } else {
            format!("{}: already {}; unchanged\n", file.display(), patched.new)
        })?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to a temp file next to `file` (same permissions), fsyncs, and renames it over
/// `file`: a reader sees the old or the new file, never half of one.
fn write_atomically(file: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "manifest".to_owned());
    let temp = dir.join(format!(".{name}.forge-{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut out = std::fs::File::create(&temp)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        if let Ok(meta) = std::fs::metadata(file) {
            std::fs::set_permissions(&temp, meta.permissions())?;
        }
        std::fs::rename(&temp, file)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(anyhow::Error::new(e).context(format!(
            "cannot write {} (the original is unchanged)",
            file.display()
        )));
    }
    Ok(())
}
