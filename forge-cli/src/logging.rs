//! Log setup shared by the binaries: stderr only, a default filter per `-v` level that
//! `RUST_LOG` adds to, and no AWS SDK trace output at any level.
//!
//! The AWS SDK's runtime logs whole responses and parsed outputs at TRACE: ECR's
//! `GetAuthorizationToken` answer (a 12-hour push credential for the registry) and SSM
//! `SecureString` parameters among them, which the SDK does not redact. Those events are
//! dropped whatever the filter says, so `-vv` or `RUST_LOG=trace` in a pipeline cannot put a
//! credential into its logs.

use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// Whether an event may be logged at all: no TRACE from the AWS SDK's crates (`aws_*`).
fn never_secret(meta: &tracing::Metadata<'_>) -> bool {
    !(*meta.level() == tracing::Level::TRACE && meta.target().starts_with("aws_"))
}

/// The filter: `default`, plus the directives of `rust_log` when it is set and not empty.
/// Without a level of its own (`RUST_LOG=forge_registry=debug`), `RUST_LOG` keeps warnings
/// and the always-on targets of `default` (e.g. progress lines) instead of silencing them.
fn filter(default: &str, rust_log: Option<&str>) -> EnvFilter {
    let Some(spec) = rust_log.map(str::trim).filter(|s| !s.is_empty()) else {
        return EnvFilter::new(default);
    };
    let has_level = spec
        .split(',')
        .any(|d| !d.contains('=') && !d.contains('[') && !d.trim().is_empty());
    let kept = default
        .split(',')
        .filter(|d| d.contains('=') || !has_level)
        .filter(|d| {
            let target = d.split('=').next().unwrap_or(d);
            !d.contains('=') || !spec.contains(target)
        });
    let combined = kept
        .chain(std::iter::once(spec))
        .collect::<Vec<_>>()
        .join(",");
    EnvFilter::try_new(&combined).unwrap_or_else(|_| EnvFilter::new(default))
}

/// The subscriber the binaries install: formatted lines to `writer`.
fn subscriber<W>(
    default: &str,
    rust_log: Option<&str>,
    show_target: bool,
    ansi: bool,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(show_target)
        .with_ansi(ansi)
        .without_time()
        .with_filter(filter(default, rust_log))
        .with_filter(filter_fn(never_secret));
    tracing_subscriber::registry().with(layer)
}

/// Installs the process's subscriber (see the module docs).
pub fn init<W>(default: &str, show_target: bool, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let rust_log = std::env::var("RUST_LOG").ok();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    subscriber(default, rust_log.as_deref(), show_target, ansi, writer).init();
}

/// Runs `emit` under the binaries' subscriber (targets shown) and returns what it logged.
#[cfg(test)]
pub(crate) fn logged<T>(
    default: &str,
    rust_log: Option<&str>,
    emit: impl FnOnce() -> T,
) -> (T, String) {
    use std::sync::{Arc, Mutex};

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("no panic while logging")
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let out = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = out.clone();
    let sub = subscriber(default, rust_log, true, false, move || Sink(sink.clone()));
    let value = tracing::subscriber::with_default(sub, emit);
    let bytes = out.lock().expect("no panic while logging").clone();
    (value, String::from_utf8(bytes).expect("UTF-8 logs"))
}

#[cfg(test)]
mod tests {
    fn logged(default: &str, rust_log: Option<&str>, emit: impl FnOnce()) -> String {
        super::logged(default, rust_log, emit).1
    }

    #[test]
    fn aws_sdk_trace_output_is_never_logged() {
        for rust_log in [None, Some("trace"), Some("aws_smithy_runtime=trace")] {
            let text = logged("trace", rust_log, || {
                tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "QVdTOnNlY3JldA== output");
                tracing::trace!(target: "aws_sdk_ssm::operation", "SecureString value");
                tracing::debug!(target: "aws_smithy_runtime::client::orchestrator", "sending request");
                tracing::trace!(target: "forge_registry::copy", "forge detail");
            });
            assert!(
                !text.contains("QVdTOnNlY3JldA==") && !text.contains("SecureString"),
                "{rust_log:?}: {text}"
            );
            assert!(
                text.contains("sending request") && text.contains("forge detail"),
                "{rust_log:?}: {text}"
            );
        }
    }

    #[test]
    fn rust_log_adds_to_the_default_and_an_empty_one_is_unset() {
        let default = "warn,forge::progress=info";
        let emit = || {
            tracing::warn!(target: "forge_registry::copy", "a retry warning");
            tracing::info!(target: "forge::progress", "a progress line");
            tracing::debug!(target: "forge_registry::copy", "registry detail");
            tracing::debug!(target: "hyper::proto", "hyper detail");
        };
        let text = logged(default, Some("forge_registry=debug"), emit);
        for line in ["a retry warning", "a progress line", "registry detail"] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert!(!text.contains("hyper detail"), "{text}");

        let text = logged(default, Some(""), emit);
        assert!(
            text.contains("a retry warning") && !text.contains("registry detail"),
            "{text}"
        );

        // A level of its own replaces the default's.
        let text = logged(default, Some("debug"), emit);
        assert!(
            text.contains("hyper detail") && text.contains("a progress line"),
            "{text}"
        );
    }
}
