//! Output plumbing shared by every command: text/JSON selection, error reports with their
//! cause chain, pipeline logging commands (Azure DevOps, GitHub Actions) and exit codes.

use std::io::{self, Write};
use std::process::ExitCode;

/// `--output text|json`, taken by every command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

/// Exit codes. 0 is success; clap itself exits 2 on bad usage.
pub mod exit {
    /// The operation failed (I/O, registry, AWS, git, verification).
    pub const FAILURE: u8 = 1;
    /// The input was refused before anything was changed (bad value, policy, config).
    pub const INVALID_INPUT: u8 = 2;
}

/// An error that is the caller's input rather than the world: exits with
/// [`exit::INVALID_INPUT`]. Wrap a library error in it where that library says the input was bad.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// A library error that is a refusal of the caller's input or a policy (a tag conflict, a
/// missing repository, `latest`, a superseded expect-tag): exits with [`exit::INVALID_INPUT`]
/// and prints exactly like the wrapped error, chain included.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Refused(pub Box<dyn std::error::Error + Send + Sync>);

/// Maps a library error to an exit code class: `refused` (the library's own verdict that the
/// input or a policy was at fault) exits 2, anything else 1; the cause chain is kept either way.
pub fn classify<E>(error: E, refused: bool) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    if refused {
        Refused(Box::new(error)).into()
    } else {
        error.into()
    }
}

/// The CI system the binary runs under, which decides how errors and results are announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipeline {
    /// Azure DevOps (`TF_BUILD` set).
    AzureDevOps,
    /// GitHub Actions (`GITHUB_ACTIONS=true`).
    GitHubActions,
    /// Anything else, including a terminal.
    None,
}

impl Pipeline {
    /// Detects the pipeline from the process environment.
    pub fn detect() -> Self {
        if std::env::var_os("TF_BUILD").is_some() {
            Pipeline::AzureDevOps
        } else if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
            Pipeline::GitHubActions
        } else {
            Pipeline::None
        }
    }
}

/// Prints `err` with its cause chain on stderr (as a pipeline error annotation under CI) and
/// returns the exit code for it.
pub fn report_error(err: &anyhow::Error) -> ExitCode {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        text.push_str(&format!("\n  caused by: {cause}"));
    }
    let stderr = io::stderr();
    let mut stderr = stderr.lock();
    let _ = match Pipeline::detect() {
        // Logging commands are one line each: the chain is folded with " | ".
        Pipeline::AzureDevOps => {
            writeln!(stderr, "##vso[task.logissue type=error]{}", one_line(&text))
        }
        Pipeline::GitHubActions => writeln!(stderr, "::error::{}", escape_github(&text)),
        Pipeline::None => writeln!(stderr, "error: {text}"),
    };
    let code = if err
        .chain()
        .any(|c| c.is::<InvalidInput>() || c.is::<Refused>())
    {
        exit::INVALID_INPUT
    } else {
        exit::FAILURE
    };
    ExitCode::from(code)
}

fn one_line(text: &str) -> String {
    text.replace('\r', "").replace('\n', " | ")
}

/// GitHub workflow commands take `%0A` for newlines in the message.
fn escape_github(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Writes `text` to stdout; a closed pipe (`forge … | head`) is not an error. Nothing more is
/// printed then, and the command ends normally rather than exiting on the spot, so what it
/// holds is cleaned up (a Ledger's temporary clone is removed on drop).
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print_stdout(&text)
}

/// Publishes a named result for later pipeline steps: an Azure DevOps output variable or a
/// `$GITHUB_OUTPUT` line; does nothing outside a pipeline. The Azure logging command goes to
/// stderr (the agent reads commands on both streams), so stdout stays the result alone:
/// `--output json | jq` works inside a pipeline too.
pub fn set_pipeline_output(name: &str, value: &str) -> anyhow::Result<()> {
    match Pipeline::detect() {
        Pipeline::AzureDevOps => {
            let mut err = io::stderr().lock();
            writeln!(
                err,
                "##vso[task.setvariable variable={name};isOutput=true]{value}"
            )?;
            Ok(())
        }
        Pipeline::GitHubActions => {
            if let Some(path) = std::env::var_os("GITHUB_OUTPUT") {
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)?;
                writeln!(file, "{name}={value}")?;
            }
            Ok(())
        }
        Pipeline::None => Ok(()),
    }
}

/// The progress bars being drawn, if any: log lines are written between their redraws.
static PROGRESS_BARS: std::sync::Mutex<Option<indicatif::MultiProgress>> =
    std::sync::Mutex::new(None);

/// Registers (or, with `None`, forgets) the bars log lines must not be written over.
pub fn set_progress_bars(bars: Option<indicatif::MultiProgress>) {
    if let Ok(mut slot) = PROGRESS_BARS.lock() {
        *slot = bars;
    }
}

/// stderr for log lines; while bars are drawn, the bars are hidden for each line.
struct LogWriter;

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // A poisoned lock only means another thread panicked while logging: write plainly.
        let bars = PROGRESS_BARS.lock().ok().and_then(|b| b.clone());
        match bars {
            Some(bars) => bars.suspend(|| io::stderr().write_all(buf)),
            None => io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// The tracing target of progress lines (`forge copy` off a terminal), shown without `-v`.
/// Its own name: filter directives match target prefixes, so `forge=info` would also turn on
/// the libraries' (`forge_registry`, …) info logs.
pub const PROGRESS_TARGET: &str = "forge::progress";

/// Logs go to stderr; stdout stays for results. `-v` raises the level and `RUST_LOG` adds
/// directives (see `logging`). Without `-v`: warnings and the progress lines; `-vv` traces
/// Forge's own crates, with dependencies at debug.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn,forge::progress=info",
        1 => {
            "info,forge_registry=debug,forge_ledger=debug,forge_auth=debug,forge_ec2=debug,forge=debug"
        }
        _ => {
            "debug,forge_registry=trace,forge_ledger=trace,forge_auth=trace,forge_ec2=trace,forge=trace"
        }
    };
    crate::logging::init(default, verbose > 0, || LogWriter);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_messages_keep_newlines_escaped() {
        assert_eq!(escape_github("a\nb 100%"), "a%0Ab 100%25");
    }

    #[test]
    fn azure_messages_are_one_line() {
        assert_eq!(
            one_line("error: x\r\n  caused by: y"),
            "error: x |   caused by: y"
        );
    }
}

/// Formats a time as RFC 3339 UTC (`2026-11-26T09:42:39Z`) for evidence records.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod time_tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_matches_known_instants() {
        let check = |secs: u64, expected: &str| {
            assert_eq!(
                super::rfc3339(UNIX_EPOCH + Duration::from_secs(secs)),
                expected
            );
        };
        check(0, "1970-01-01T00:00:00Z");
        check(951_782_400, "2000-02-29T00:00:00Z");
        check(1_795_686_159, "2026-11-26T09:42:39Z");
    }
}
