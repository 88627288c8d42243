//! `forge copy`, `forge digest`, `forge verify`: thin wrappers over forge-registry.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use forge_registry::{Client, CopyOptions, CopyReport, Digest, DockerConfig, Progress, Reference};

use crate::output::{self, Format, InvalidInput};

/// Registry access shared by the three commands.
#[derive(Debug, clap::Args)]
pub struct Access {
    /// Docker config with registry credentials (`auths` incl. identity tokens, `credHelpers`,
    /// `credsStore`).
    /// Default: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` when present.
    #[arg(long, value_name = "PATH")]
    docker_config: Option<PathBuf>,
    /// Reach this registry (`host[:port]`) over plain HTTP; repeatable. Loopback hosts
    /// (`localhost`, `127.0.0.1`, `[::1]`) need no flag; every other host uses HTTPS unless
    /// named here. Credentials for it travel unencrypted.
    #[arg(long = "plain-http", value_name = "HOST")]
    plain_http: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

/// `forge copy SRC DST`
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Source image: `host[:port]/repo:tag`, `…@sha256:…`, or `oci:<dir>[:tag]`.
    src: String,
    /// Destination image with an immutable tag (the repository must already exist).
    dst: String,
    /// Parallel blob transfers (default 8).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Do not copy OCI referrers: signatures, SBOMs and attestations attached to the image or
    /// one of its platforms, and their own referrers (a signature of an SBOM), up to 4 levels.
    /// Without it, an image already at the destination still gets the referrers attached since.
    /// (An OCI layout keeps them under the ref names `sha256-<hex>`.)
    #[arg(long)]
    no_referrers: bool,
    /// Regular expression the destination tag must match in full (e.g. `[0-9]+`).
    #[arg(long, value_name = "RE")]
    tag_pattern: Option<String>,
    #[command(flatten)]
    access: Access,
}

/// `forge digest REF`
#[derive(Debug, clap::Args)]
pub struct DigestArgs {
    /// Image reference.
    reference: String,
    #[command(flatten)]
    access: Access,
}

/// `forge verify REF --digest sha256:…`
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Image reference (tag or digest).
    reference: String,
    /// The digest REF must resolve to.
    #[arg(long, value_name = "sha256:…")]
    digest: String,
    #[command(flatten)]
    access: Access,
}

fn parse_ref(what: &str, text: &str) -> anyhow::Result<Reference> {
    text.parse::<Reference>()
        .map_err(|e| InvalidInput(format!("{what}: {e}")).into())
}

fn client(access: &Access, jobs: Option<usize>) -> anyhow::Result<Client> {
    // A config that cannot be read or parsed is bad input (exit 2), explicit or default, and
    // its cause (the I/O error, the JSON error's line and column) is printed with it.
    let config = match &access.docker_config {
        Some(path) => DockerConfig::load(path),
        None => DockerConfig::load_default(),
    }
    .map_err(|e| output::classify(e, true))?;
    let mut builder = Client::builder().docker_config(config);
    for host in &access.plain_http {
        builder = builder.insecure_http_host(host.clone());
    }
    if let Some(jobs) = jobs {
        builder = builder.jobs(jobs);
    }
    Ok(builder.build()?)
}

/// Runs `forge copy`.
pub fn run_copy(args: CopyArgs) -> anyhow::Result<ExitCode> {
    let src = parse_ref("source", &args.src)?;
    let dst = parse_ref("destination", &args.dst)?;
    if args.jobs == Some(0) {
        return Err(InvalidInput("--jobs must be at least 1".to_owned()).into());
    }
    let tag_pattern = match &args.tag_pattern {
        Some(re) => Some(regex::Regex::new(re).map_err(|e| {
            InvalidInput(format!(
                "--tag-pattern '{re}' is not a valid regular expression: {e}"
            ))
        })?),
        None => None,
    };
    let client = client(&args.access, args.jobs)?;
    let progress: Arc<dyn Progress> = if std::io::stderr().is_terminal() {
        Arc::new(Bars::new())
    } else {
        Arc::new(LogLines)
    };
    let options = CopyOptions {
        jobs: args.jobs,
        referrers: !args.no_referrers,
        tag_pattern,
        progress: Some(progress.clone()),
        ..CopyOptions::default()
    };
    let report = crate::runtime()?
        .block_on(client.copy(&src, &dst, &options))
        .map_err(crate::release::registry_error)?;
    drop(progress);
    match args.access.output {
        Format::Json => output::print_json(&report)?,
        Format::Text => output::print_stdout(&text_report(&report))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn text_report(r: &CopyReport) -> String {
    if r.already_present {
        let mut text = if r.manifests_pushed == 0 && r.blobs_copied == 0 && r.blobs_mounted == 0 {
            format!(
                "{} already holds {} (verified: {}); nothing uploaded\n",
                r.destination, r.digest, r.verified
            )
        } else {
            format!(
                "{} already holds {} (verified: {}); referrers brought up to date: {} copied, {} manifests pushed, {} blobs copied, {} mounted, {} bytes\n",
                r.destination,
                r.digest,
                r.verified,
                r.referrers_copied,
                r.manifests_pushed,
                r.blobs_copied,
                r.blobs_mounted,
                r.bytes_copied
            )
        };
        if let Some(why) = &r.referrers_unchecked {
            text.push_str(&format!("  referrers not compared: {why}\n"));
        }
        return text;
    }
    format!(
        "copied {} -> {}\n  digest {} ({})\n  verified: {}\n  blobs: {} copied, {} skipped, {} mounted; {} bytes; {} manifests, {} referrers; {} retries; {:.1}s\n",
        r.source,
        r.destination,
        r.digest,
        r.media_type,
        r.verified,
        r.blobs_copied,
        r.blobs_skipped,
        r.blobs_mounted,
        r.bytes_copied,
        r.manifests_pushed,
        r.referrers_copied,
        r.retries,
        r.duration_ms as f64 / 1000.0
    )
}

/// Runs `forge digest`.
pub fn run_digest(args: DigestArgs) -> anyhow::Result<ExitCode> {
    let reference = parse_ref("reference", &args.reference)?;
    let client = client(&args.access, None)?;
    let resolved = crate::runtime()?
        .block_on(client.resolve(&reference))
        .map_err(crate::release::registry_error)?;
    match args.access.output {
        Format::Json => output::print_json(&serde_json::json!({
            "reference": reference.to_string(),
            "digest": resolved.digest,
            "media_type": resolved.media_type,
            "size": resolved.size,
        }))?,
        Format::Text => output::print_stdout(&format!("{}\n", resolved.digest))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `forge verify`.
pub fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let reference = parse_ref("reference", &args.reference)?;
    let expected: Digest = args
        .digest
        .parse()
        .map_err(|e| InvalidInput(format!("--digest: {e}")))?;
    let client = client(&args.access, None)?;
    let report = crate::runtime()?
        .block_on(client.verify(&reference, &expected))
        .map_err(crate::release::registry_error)?;
    match args.access.output {
        Format::Json => output::print_json(&report)?,
        Format::Text => output::print_stdout(&format!(
            "{} is {}: {} manifests and {} blobs present\n",
            report.reference, report.digest, report.manifests_checked, report.blobs_checked
        ))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn short(d: &Digest) -> &str {
    &d.hex()[..12]
}

/// Plain log lines on stderr when it is not a terminal (CI logs).
struct LogLines;

/// The tracing target of those lines, shown without `-v` (see `output::init_tracing`).
const PROGRESS: &str = crate::output::PROGRESS_TARGET;

/// Blobs at least this large get a line when they start too: a CI log otherwise shows nothing
/// for the minutes a large layer takes.
const ANNOUNCED_SIZE: u64 = 64 * 1024 * 1024;

impl Progress for LogLines {
    fn blob_started(&self, digest: &Digest, size: u64) {
        if size >= ANNOUNCED_SIZE {
            tracing::info!(target: PROGRESS, "copying blob {} ({size} bytes)", short(digest));
        }
    }
    fn blob_finished(&self, digest: &Digest, size: u64) {
        tracing::info!(target: PROGRESS, "copied blob {} ({size} bytes)", short(digest));
    }
    fn blob_skipped(&self, digest: &Digest, size: u64) {
        tracing::info!(target: PROGRESS, "blob {} ({size} bytes) already present", short(digest));
    }
    fn blob_mounted(&self, digest: &Digest, size: u64) {
        tracing::info!(target: PROGRESS, "mounted blob {} ({size} bytes)", short(digest));
    }
    fn blob_retrying(
        &self,
        digest: &Digest,
        attempt: u32,
        delay: Duration,
        error: &forge_registry::Error,
    ) {
        tracing::warn!(
            target: PROGRESS,
            "blob {} failed ({error}); retry {attempt} in {:.1}s",
            short(digest),
            delay.as_secs_f64()
        );
    }
    fn manifest_pushed(&self, digest: &Digest, media_type: &str) {
        tracing::info!(target: PROGRESS, "pushed manifest {} ({media_type})", short(digest));
    }
}

/// One indicatif bar per blob in flight on a terminal.
struct Bars {
    multi: indicatif::MultiProgress,
    bars: Mutex<HashMap<Digest, indicatif::ProgressBar>>,
}

impl Drop for Bars {
    fn drop(&mut self) {
        output::set_progress_bars(None);
    }
}

impl Bars {
    fn new() -> Self {
        let multi =
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
        // The library's warnings (a retried blob) then appear above the bars, not over them.
        output::set_progress_bars(Some(multi.clone()));
        Bars {
            multi,
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn finish(&self, digest: &Digest, message: &str) {
        if let Ok(mut bars) = self.bars.lock()
            && let Some(bar) = bars.remove(digest)
        {
            bar.finish_with_message(message.to_owned());
        }
    }
}

impl Progress for Bars {
    fn blob_started(&self, digest: &Digest, size: u64) {
        let bar = self.multi.add(indicatif::ProgressBar::new(size));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(short(digest).to_owned());
        if let Ok(mut bars) = self.bars.lock()
            && let Some(old) = bars.insert(digest.clone(), bar)
        {
            old.finish_and_clear();
        }
    }
    fn bytes_transferred(&self, digest: &Digest, bytes: u64) {
        if let Ok(bars) = self.bars.lock()
            && let Some(bar) = bars.get(digest)
        {
            bar.inc(bytes);
        }
    }
    fn blob_finished(&self, digest: &Digest, _size: u64) {
        self.finish(digest, "done");
    }
    fn blob_skipped(&self, digest: &Digest, size: u64) {
        let _ = self
            .multi
            .println(format!("{} ({size} bytes) already present", short(digest)));
    }
    fn blob_mounted(&self, digest: &Digest, _size: u64) {
        self.finish(digest, "mounted");
    }
    fn blob_retrying(
        &self,
        digest: &Digest,
        attempt: u32,
        delay: Duration,
        error: &forge_registry::Error,
    ) {
        self.finish(
            digest,
            &format!("retry {attempt} in {:.1}s: {error}", delay.as_secs_f64()),
        );
    }
    fn manifest_pushed(&self, digest: &Digest, media_type: &str) {
        let _ = self
            .multi
            .println(format!("pushed manifest {} ({media_type})", short(digest)));
    }
}
