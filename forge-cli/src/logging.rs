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

/// The filter: `default`, plus the directives of `rust_log` when it is set and not empty
/// (later directives for the same target replace the default's). Without a level of its own
/// (`RUST_LOG=forge_registry=debug`), `RUST_LOG` keeps the default's level, so warnings and
/// progress lines stay; `RUST_LOG=off` turns everything off. An invalid `RUST_LOG` gives the
/// default and a note saying why.
fn filter(default: &str, rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    let directives: Vec<&str> = rust_log
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return (EnvFilter::new(default), None);
    }
    let is_level = |d: &str| {
        matches!(
            d.to_ascii_lowercase().as_str(),
            "trace" | "debug" | "info" | "warn" | "error" | "off"
        )
    };
    let combined = if directives.iter().any(|d| d.eq_ignore_ascii_case("off")) {
        directives.join(",")
    } else {
        let has_level = directives.iter().any(|d| is_level(d));
        default
            .split(',')
            .filter(|d| d.contains('=') || !has_level)
            .chain(directives.iter().copied())
            .collect::<Vec<_>>()
            .join(",")
    };
    match EnvFilter::try_new(&combined) {
        Ok(filter) => (filter, None),
        Err(e) => (
            EnvFilter::new(default),
            Some(format!(
                "RUST_LOG is not a valid log filter ({e}); using the default"
            )),
        ),
    }
}

/// The subscriber the binaries install: formatted lines to `writer`.
fn subscriber<W>(
    filter: EnvFilter,
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
        .with_filter(filter)
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
    let (filter, note) = filter(default, rust_log.as_deref());
    if let Some(note) = note {
        eprintln!("warning: {note}");
    }
    subscriber(filter, show_target, ansi, writer).init();
}

/// Held by tests that capture logs or hit the AWS SDK's log call sites. tracing caches, per
/// call site, whether any subscriber wants it: a test hitting a site while no subscriber is
/// installed can leave it marked uninteresting for a capturing test running alongside. One
/// at a time, and the cache is rebuilt once the capturing subscriber is in place.
#[cfg(test)]
pub(crate) fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    let _turn = exclusive();
    let out = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = out.clone();
    let sub = subscriber(filter(default, rust_log).0, true, false, move || {
        Sink(sink.clone())
    });
    let value = tracing::subscriber::with_default(sub, || {
        tracing::callsite::rebuild_interest_cache();
        emit()
    });
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

        // Spaces around directives are fine; naming one Forge crate keeps the others' level.
        let verbose = "info,forge_registry=debug,forge=debug";
        let text = logged(verbose, Some(" forge_registry=trace , hyper=info "), || {
            tracing::debug!(target: "forge::cmd", "cli detail");
            tracing::trace!(target: "forge_registry::copy", "registry trace");
        });
        assert!(
            text.contains("cli detail") && text.contains("registry trace"),
            "{text}"
        );

        // A bare target is not a level: warnings stay. `off` is off.
        let text = logged(default, Some("forge_registry"), emit);
        assert!(
            text.contains("a retry warning") && text.contains("a progress line"),
            "{text}"
        );
        assert_eq!(logged(default, Some("off"), emit), "");
    }

    #[test]
    fn an_invalid_rust_log_gives_the_default_and_says_so() {
        let (_, note) = super::filter("warn", Some("forge_registry=debgu"));
        assert!(note.is_some_and(|n| n.contains("RUST_LOG")));
        assert!(
            super::filter("warn", Some("forge_registry=debug"))
                .1
                .is_none()
        );
    }
}
