//! `forge ec2 deploy | rollback | status | render-script`: docker-compose services on EC2
//! through SSM Run Command (forge-ec2), with the environment's role chain (forge-auth).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use forge_ec2::{
    DeployReport, DeployRequest, Ec2Deployer, InspectRequest, RollbackRequest, Targets,
};
use serde::Serialize;

use crate::aws::{self, Overrides};
use crate::config::{self, Config, Loaded};
use crate::output::{self, Format, InvalidInput};

/// `forge ec2 …`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Send the compose file and image tag to the instances selected by tag (or id), run the
    /// deploy script, and wait for every instance's result.
    Deploy(DeployArgs),
    /// Set the instances back to the tag their last deploy replaced (`.env.previous`), or to
    /// --to-tag, then pull and restart.
    Rollback(RollbackArgs),
    /// Ask each instance which tag it runs and whether its services run (read-only), and compare
    /// with the Ledger's tag for the environment (or --expect-tag); exits 1 when any instance
    /// differs, has a service stopped, or cannot be read.
    Status(StatusArgs),
    /// Print the exact script a deploy (or --rollback) would run on each instance.
    RenderScript(RenderArgs),
}

/// Which instances, in which environment: shared by deploy, rollback and status.
#[derive(Debug, clap::Args)]
pub struct Place {
    /// Environment (`[environments.<env>]`): picks the role and region (and, for status with
    /// --service, the Ledger file whose tag the instances should run).
    #[arg(long)]
    env: String,
    /// Config file.
    #[arg(long, default_value = config::DEFAULT_PATH, env = "FORGE_CONFIG")]
    config: PathBuf,
    /// Take the instances' settings (target, service_dir, parameters_path, compose) from
    /// `[services.<name>]`; flags override them. Status also compares with the tag the Ledger
    /// records for the service.
    #[arg(long)]
    service: Option<String>,
    /// Instances: `tag:KEY=VALUE` (repeat for up to 5 keys; VALUE may list several, comma-separated)
    /// or instance ids (up to 50).
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
    /// Directory on the instances holding docker-compose.yml and .env (absolute).
    #[arg(long, value_name = "DIR")]
    service_dir: Option<String>,
}

/// `forge ec2 status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    place: Place,
    /// Compare with this tag instead of the Ledger's.
    #[arg(long, value_name = "TAG")]
    expect_tag: Option<String>,
    /// SSM MaxConcurrency: instances at a time, a number or a percentage (default 50).
    #[arg(long, value_name = "N")]
    max_concurrency: Option<String>,
    /// Give up (and cancel the command) after this many seconds (default 240; instances that
    /// have not answered by then are reported unread).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    deadline: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Format,
    #[command(flatten)]
    overrides: Overrides,
}

/// Where and how to run; shared by deploy and rollback.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    place: Place,
    /// SSM Parameter Store path that forge-refresh-env writes into .env on each instance.
    #[arg(long, value_name = "PATH")]
    parameters_path: Option<String>,
    /// SSM MaxConcurrency: instances at a time, a number or a percentage (default 50).
    #[arg(long, value_name = "N")]
    max_concurrency: Option<String>,
    /// SSM MaxErrors: failures tolerated before SSM stops sending, a number or a percentage
    /// (default 0: stop at the first failure).
    #[arg(long, value_name = "N")]
    max_errors: Option<String>,
    /// Execution timeout per instance, seconds, 1 to 172800 (48 h; SSM's limit; default 1800).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=172_800))]
    timeout: Option<u64>,
    /// Delivery timeout, seconds: how long SSM tries to reach an instance, 30 to 2592000
    /// (30 days; SSM's limits; default 600).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(30..=2_592_000))]
    delivery_timeout: Option<u64>,
    /// Give up (and cancel the command) after this many seconds; default: delivery + execution
    /// timeout + 5 min, at least 45 min. Raise it for rolling deploys with a low --max-concurrency.
    #[arg(long, value_name = "SECS")]
    deadline: Option<u64>,
    /// Skip the check that every compose service is running after `up -d`.
    #[arg(long)]
    no_check_running: bool,
    /// `REPOSITORY@sha256:…`: each instance switches only if the compose file runs
    /// REPOSITORY:<tag> and docker pulled it as this digest (deploy, or rollback --to-tag).
    #[arg(long, value_name = "REPO@DIGEST")]
    image_pin: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Format,
    #[command(flatten)]
    overrides: Overrides,
}

/// `forge ec2 deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Compose file to send (default: `[services.<name>] compose`, relative to the config file).
    #[arg(long, value_name = "FILE")]
    compose: Option<PathBuf>,
    /// Image tag written as IMAGE_TAG in .env (an OCI tag; `latest` is refused).
    #[arg(long, value_name = "TAG")]
    image_tag: String,
}

/// `forge ec2 rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Roll back to this tag instead of each instance's `.env.previous`.
    #[arg(long, value_name = "TAG")]
    to_tag: Option<String>,
    /// Roll back only instances running this tag (the bad release): a re-run after a partial
    /// rollback then leaves the instances that already rolled back alone.
    #[arg(long, value_name = "TAG")]
    from_tag: Option<String>,
    /// Also install this compose file (default: keep the instance's).
    #[arg(long, value_name = "FILE")]
    compose: Option<PathBuf>,
}

/// `forge ec2 render-script`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Compose file to embed (required unless --rollback).
    #[arg(long, value_name = "FILE")]
    compose: Option<PathBuf>,
    /// Image tag (required unless --rollback).
    #[arg(long, value_name = "TAG")]
    image_tag: Option<String>,
    /// Directory on the instances.
    #[arg(long, value_name = "DIR")]
    service_dir: String,
    /// SSM Parameter Store path for forge-refresh-env.
    #[arg(long, value_name = "PATH")]
    parameters_path: Option<String>,
    /// Region passed to forge-refresh-env (a deploy passes its own region).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Render the rollback script (to --to-tag, else to `.env.previous`).
    #[arg(long)]
    rollback: bool,
    /// With --rollback: the tag to return to.
    #[arg(long, value_name = "TAG")]
    to_tag: Option<String>,
    /// With --rollback: roll back only an instance running this tag (as `forge ec2 rollback
    /// --from-tag`).
    #[arg(long, value_name = "TAG")]
    from_tag: Option<String>,
    /// Leave out the running-services check.
    #[arg(long)]
    no_check_running: bool,
    /// `REPOSITORY@sha256:…` the tag must be pulled as.
    #[arg(long, value_name = "REPO@DIGEST")]
    image_pin: Option<String>,
}

/// Runs `forge ec2 …`.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::RenderScript(args) => render(args),
        Command::Deploy(args) => crate::runtime()?.block_on(deploy(args)),
        Command::Rollback(args) => crate::runtime()?.block_on(rollback(args)),
        Command::Status(args) => crate::runtime()?.block_on(status(args)),
    }
}

fn read_compose(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        InvalidInput(format!(
            "{what}: cannot read compose file {}: {e}",
            path.display()
        ))
        .into()
    })
}

fn invalid(e: impl std::fmt::Display) -> anyhow::Error {
    InvalidInput(e.to_string()).into()
}

/// A refused deploy or rollback request; a compose file problem names the file.
pub(crate) fn refused_request(e: &forge_ec2::ValidationError, compose: Option<&Path>) -> String {
    match (e, compose) {
        (forge_ec2::ValidationError::Compose { reason, .. }, Some(path)) => {
            format!("compose file {} is not usable: {reason}", path.display())
        }
        _ => e.to_string(),
    }
}

fn render(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let compose = args
        .compose
        .as_deref()
        .map(|p| read_compose(p, "--compose"))
        .transpose()?;
    let targets = Targets::parse("tag:forge:render=script").map_err(invalid)?;
    let script = if args.rollback {
        if args.image_tag.is_some() {
            return Err(invalid(
                "--image-tag is for deploys; with --rollback pass --to-tag (or nothing, for .env.previous)",
            ));
        }
        let mut request = RollbackRequest::new(targets, args.service_dir);
        request.to_tag = args.to_tag;
        request.only_from = args.from_tag;
        request.compose_file = compose;
        request.parameters_path = args.parameters_path;
        request.parameters_region = args.region;
        request.check_running = !args.no_check_running;
        request.image_pin = args.image_pin;
        request
            .validate()
            .map_err(|e| invalid(refused_request(&e, args.compose.as_deref())))?;
        forge_ec2::render_rollback_script(&request)
    } else {
        let (Some(compose), Some(tag)) = (compose, args.image_tag) else {
            return Err(invalid(
                "render-script needs --compose FILE and --image-tag TAG (or --rollback)",
            ));
        };
        if args.to_tag.is_some() || args.from_tag.is_some() {
            return Err(invalid(
                "--to-tag and --from-tag only apply with --rollback",
            ));
        }
        let mut request = DeployRequest::new(targets, compose, tag, args.service_dir);
        request.parameters_path = args.parameters_path;
        request.parameters_region = args.region;
        request.check_running = !args.no_check_running;
        request.image_pin = args.image_pin;
        request
            .validate()
            .map_err(|e| invalid(refused_request(&e, args.compose.as_deref())))?;
        forge_ec2::render_script(&request)
    };
    output::print_stdout(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// Values resolved from flags and `[services.<name>]`.
struct Resolved {
    loaded: Loaded,
    targets: Targets,
    service_dir: String,
    parameters_path: Option<String>,
    compose: Option<PathBuf>,
    delivery: Duration,
    execution: Duration,
    deadline: Duration,
}

/// The config, the service's section (with --service), the instances and their directory.
struct Located {
    loaded: Loaded,
    service: Option<config::ServiceConfig>,
    targets: Targets,
    service_dir: String,
}

fn locate(place: &Place) -> anyhow::Result<Located> {
    let loaded = Config::load(&place.config)?;
    loaded.config.environment(&place.env)?;
    let service = match place.service.as_deref() {
        Some(name) => Some(loaded.config.service(name)?.clone()),
        None => None,
    };
    let from_service =
        |get: fn(&config::ServiceConfig) -> Option<String>| service.as_ref().and_then(get);
    let target_text: Vec<String> = if place.targets.is_empty() {
        from_service(|s| s.target.clone()).into_iter().collect()
    } else {
        place.targets.clone()
    };
    if target_text.is_empty() {
        return Err(invalid(
            "no target: pass --target tag:KEY=VALUE (or instance ids), or --service NAME with `target` in its config",
        ));
    }
    let targets = Targets::parse_all(target_text.iter().map(String::as_str)).map_err(invalid)?;
    let service_dir = place
        .service_dir
        .clone()
        .or_else(|| from_service(|s| s.service_dir.clone()))
        .ok_or_else(|| {
            invalid("no service directory: pass --service-dir DIR, or --service NAME with `service_dir` in its config")
        })?;
    Ok(Located {
        loaded,
        service,
        targets,
        service_dir,
    })
}

fn resolve(run: &RunArgs, compose_flag: Option<&Path>) -> anyhow::Result<Resolved> {
    let Located {
        loaded,
        service,
        targets,
        service_dir,
    } = locate(&run.place)?;
    let from_service =
        |get: fn(&config::ServiceConfig) -> Option<String>| service.as_ref().and_then(get);
    let parameters_path = run
        .parameters_path
        .clone()
        .or_else(|| from_service(|s| s.parameters_path.clone()));
    let compose = compose_flag
        .map(Path::to_owned)
        .or_else(|| from_service(|s| s.compose.clone()).map(|c| loaded.resolve(&c)));
    let delivery = Duration::from_secs(
        run.delivery_timeout
            .unwrap_or(forge_ec2::deploy::defaults::DELIVERY_TIMEOUT.as_secs()),
    );
    let execution = Duration::from_secs(
        run.timeout
            .unwrap_or(forge_ec2::deploy::defaults::EXECUTION_TIMEOUT.as_secs()),
    );
    let deadline = match run.deadline {
        Some(0) => return Err(invalid("--deadline 0: give the seconds to wait, e.g. 3600")),
        Some(secs) => Duration::from_secs(secs),
        None => delivery
            .saturating_add(execution)
            .saturating_add(Duration::from_secs(300))
            .max(forge_ec2::deploy::defaults::DEADLINE),
    };
    Ok(Resolved {
        loaded,
        targets,
        service_dir,
        parameters_path,
        compose,
        delivery,
        execution,
        deadline,
    })
}

async fn deployer(
    env: &str,
    overrides: &Overrides,
    loaded: &Loaded,
) -> anyhow::Result<Ec2Deployer> {
    let ci = forge_auth::ci::Ci::detect(&|k: &str| std::env::var(k).ok());
    let auth = aws::resolve(loaded, env, overrides, aws::mask_hook(ci))
        .await
        .with_context(|| format!("cannot get AWS credentials for environment `{env}`"))?;
    Ok(Ec2Deployer::new(&auth.sdk))
}

fn library_error(e: forge_ec2::Ec2Error) -> anyhow::Error {
    let refused = e.is_invalid_input();
    crate::output::classify(e, refused)
}

async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let r = resolve(&args.run, args.compose.as_deref())?;
    let compose_path = r.compose.clone().ok_or_else(|| {
        invalid(
            "no compose file: pass --compose FILE, or --service NAME with `compose` in its config",
        )
    })?;
    let compose = read_compose(&compose_path, "--compose")?;
    let mut request = DeployRequest::new(r.targets, compose, args.image_tag, r.service_dir);
    request.parameters_path = r.parameters_path;
    request.max_concurrency = args.run.max_concurrency.clone();
    request.max_errors = args.run.max_errors.clone();
    request.delivery_timeout = r.delivery;
    request.execution_timeout = r.execution;
    request.deadline = r.deadline;
    request.check_running = !args.run.no_check_running;
    request.image_pin = args.run.image_pin.clone();
    // Refuse bad input before asking for credentials.
    request
        .validate()
        .map_err(|e| invalid(refused_request(&e, Some(&compose_path))))?;
    let result = deployer(&args.run.place.env, &args.run.overrides, &r.loaded)
        .await?
        .deploy(&request)
        .await;
    let report = or_partial(result, args.run.output)?;
    finish(&report, args.run.output)
}

async fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let r = resolve(&args.run, args.compose.as_deref())?;
    let mut request = RollbackRequest::new(r.targets, r.service_dir);
    request.to_tag = args.to_tag;
    request.only_from = args.from_tag;
    // Only an explicit --compose is installed on rollback; the service's compose file may
    // already be newer than the release being returned to.
    request.compose_file = args
        .compose
        .as_deref()
        .map(|p| read_compose(p, "--compose"))
        .transpose()?;
    request.parameters_path = r.parameters_path;
    request.max_concurrency = args.run.max_concurrency.clone();
    request.max_errors = args.run.max_errors.clone();
    request.delivery_timeout = r.delivery;
    request.execution_timeout = r.execution;
    request.deadline = r.deadline;
    request.check_running = !args.run.no_check_running;
    request.image_pin = args.run.image_pin.clone();
    request
        .validate()
        .map_err(|e| invalid(refused_request(&e, args.compose.as_deref())))?;
    let result = deployer(&args.run.place.env, &args.run.overrides, &r.loaded)
        .await?
        .rollback(&request)
        .await;
    let report = or_partial(result, args.run.output)?;
    finish(&report, args.run.output)
}

/// One instance in `forge ec2 status`.
#[derive(Debug, Serialize)]
struct InstanceTag {
    instance_id: String,
    /// The tag its `.env` sets; None when it could not be read.
    tag: Option<String>,
    /// The tag in its `.env.previous` (what `forge ec2 rollback` would return to).
    previous_tag: Option<String>,
    /// Whether it is set to the expected tag (None when nothing is expected).
    matches: Option<bool>,
    /// The compose file's services that are not running (empty: all run; None: unknown).
    not_running: Option<Vec<String>>,
    /// Why it is unknown whether the services run (docker missing, compose file unreadable).
    running_unknown: Option<String>,
    /// Running containers of the service's repository whose image is not the promoted digest
    /// (`CONTAINER IMAGE DIGESTS…`).
    other_digest: Vec<String>,
    /// How many containers of the repository were checked against the promoted digest (None:
    /// no digest to check, or docker could not be asked).
    digest_checked: Option<u32>,
    /// Why its tag could not be read.
    error: Option<String>,
}

impl InstanceTag {
    /// Not as it should be: unread, on another tag than expected, with a service stopped,
    /// with a container from other bytes than the promoted digest, or with no running
    /// container to check that digest against.
    fn is_off(&self) -> bool {
        self.tag.is_none()
            || self.matches == Some(false)
            || self.not_running.as_ref().is_some_and(|s| !s.is_empty())
            || !self.other_digest.is_empty()
            || self.digest_checked == Some(0)
    }
}

/// `forge ec2 status --output json`.
#[derive(Debug, Serialize)]
struct FleetStatus {
    env: String,
    service: Option<String>,
    targets: String,
    service_dir: String,
    /// The tag every instance should run: the Ledger's, or --expect-tag.
    expected_tag: Option<String>,
    /// `ledger` or `--expect-tag`.
    expected_from: Option<&'static str>,
    /// The digest the Ledger recorded for the expected tag when it was promoted; running
    /// containers of the service's repository are checked against it.
    expected_digest: Option<String>,
    ledger_file: Option<String>,
    ledger_commit: Option<String>,
    /// What this run could not check, and why.
    notes: Vec<String>,
    command_id: String,
    instances: Vec<InstanceTag>,
    /// The deadline passed before every instance answered; the others are unread.
    deadline_passed: bool,
    /// An instance is set to another tag than expected (or, with nothing expected, than the
    /// others), has a service that is not running, or could not be read; or none answered.
    drift: bool,
    /// The command that puts every instance on the expected tag, when there is drift.
    fix: Option<String>,
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let located = locate(&args.place)?;
    if let Some(tag) = &args.expect_tag {
        forge_ec2::script::check_image_tag(tag)
            .map_err(|e| invalid(format!("--expect-tag: {e}")))?;
    }
    let targets_text = located.targets.to_string();
    let mut request = InspectRequest::new(located.targets, located.service_dir.clone());
    request.max_concurrency = args.max_concurrency.clone();
    if let Some(secs) = args.deadline {
        request.deadline = Duration::from_secs(secs);
    }
    request.validate().map_err(invalid)?;

    // The tag to compare with, read before the fleet is asked: a Ledger problem costs no
    // SSM command.
    let mut fleet = FleetStatus {
        env: args.place.env.clone(),
        service: args.place.service.clone(),
        targets: targets_text,
        service_dir: located.service_dir.clone(),
        expected_tag: args.expect_tag.clone(),
        expected_from: args.expect_tag.as_ref().map(|_| "--expect-tag"),
        expected_digest: None,
        ledger_file: None,
        ledger_commit: None,
        notes: Vec::new(),
        command_id: String::new(),
        instances: Vec::new(),
        deadline_passed: false,
        drift: false,
        fix: None,
    };
    let has_ledger = located.loaded.config.ledger.is_some();
    if let (None, Some(service), true) = (&args.expect_tag, &args.place.service, has_ledger) {
        let release = crate::release::Release::open(&args.place.config, service)?;
        let file = release.manifest(&args.place.env)?;
        let ledger = release.ledger()?;
        let selector = release.selector();
        let read_failed = || {
            format!(
                "cannot read {service}'s tag for {} from the Ledger ({file})",
                args.place.env
            )
        };
        let current = ledger
            .get(&file, &selector)
            .map_err(crate::release::ledger_error)
            .with_context(read_failed)?;
        // The digest recorded when the tag was promoted (its pin, or the Forge commit's
        // trailer): what the containers must run. Unrecorded (a tag set by hand): tags only.
        let recorded = match &current.digest {
            Some(pin) => Some(pin.clone()),
            None => ledger
                .history(&file, &selector)
                .map_err(crate::release::ledger_error)
                .with_context(read_failed)?
                .first()
                .and_then(|entry| crate::release::recorded_digest(entry, &current.value)),
        };
        let image = release.image_ref(&args.place.env, &current.value)?;
        match (&recorded, image.strip_suffix(&format!(":{}", current.value))) {
            (None, _) => fleet.notes.push(format!(
                "the Ledger records no digest for {} (set by hand?): the containers' bytes are not checked",
                current.value
            )),
            (Some(_), _) if image.starts_with("oci:") => fleet.notes.push(
                "the environment's registry is an OCI layout: the containers' bytes are not checked"
                    .to_owned(),
            ),
            (Some(digest), Some(repository)) => {
                let pin = format!("{repository}@{digest}");
                match forge_ec2::script::check_image_pin(&pin) {
                    Ok(()) => {
                        request.image_pin = Some(pin);
                        fleet.expected_digest = Some(digest.clone());
                    }
                    Err(e) => fleet.notes.push(format!(
                        "the digest recorded for {} cannot be checked on the instances ({e})",
                        current.value
                    )),
                }
            }
            (Some(_), None) => {}
        }
        fleet.expected_tag = Some(current.value);
        fleet.expected_from = Some("ledger");
        fleet.ledger_file = Some(file);
        fleet.ledger_commit = Some(current.commit);
    }

    let result = deployer(&args.place.env, &args.overrides, &located.loaded)
        .await?
        .inspect(&request)
        .await;
    // A deadline still leaves the answers that came in: report those, and the rest as unread.
    let instances = match result {
        Ok(report) => {
            fleet.command_id = report.command_id;
            report.instances
        }
        Err(forge_ec2::Ec2Error::Deadline {
            instances,
            command_id,
            ..
        }) if !instances.is_empty() => {
            fleet.command_id = command_id;
            fleet.deadline_passed = true;
            instances
        }
        Err(e) => return Err(library_error(e)),
    };
    fleet.instances = instances
        .iter()
        .map(|i| {
            let tag = if i.succeeded {
                i.deployed_tag.clone()
            } else {
                None
            };
            InstanceTag {
                instance_id: i.instance_id.clone(),
                matches: fleet.expected_tag.as_ref().map(|e| tag.as_ref() == Some(e)),
                error: tag.is_none().then(|| unreadable(i)),
                previous_tag: forge_ec2::script::previous_tag(&i.stdout_tail),
                not_running: forge_ec2::script::not_running(&i.stdout_tail),
                running_unknown: forge_ec2::script::running_unknown(&i.stdout_tail),
                other_digest: forge_ec2::script::running_other_digest(&i.stdout_tail),
                digest_checked: forge_ec2::script::running_pinned_checked(&i.stdout_tail),
                tag,
            }
        })
        .collect();
    let tags: std::collections::BTreeSet<&str> = fleet
        .instances
        .iter()
        .filter_map(|i| i.tag.as_deref())
        .collect();
    fleet.drift = fleet.instances.is_empty()
        || fleet.instances.iter().any(InstanceTag::is_off)
        || (fleet.expected_tag.is_none() && tags.len() > 1);
    if fleet.drift {
        let tag = fleet.expected_tag.as_deref().unwrap_or("TAG");
        // With the promoted digest known, the rollback proves each instance pulled it.
        let pin = request
            .image_pin
            .as_deref()
            .map(|p| format!(" --image-pin {}", quoted(p)))
            .unwrap_or_default();
        fleet.fix = Some(format!(
            "forge ec2 rollback --env {} {} --to-tag {tag}{pin}",
            quoted(&args.place.env),
            place_args(&args)
        ));
    }
    match args.output {
        Format::Json => output::print_json(&fleet)?,
        Format::Text => output::print_stdout(&fleet_text(&fleet))?,
    }
    if !fleet.drift {
        return Ok(ExitCode::SUCCESS);
    }
    let no_ledger_hint = if args.place.service.is_some() && !has_ledger {
        format!(
            "there is no [ledger] in {} to compare with, so pass --expect-tag TAG",
            args.place.config.display()
        )
    } else {
        "pass --service NAME (with a [ledger] in the config) or --expect-tag TAG to compare with the tag they should run".to_owned()
    };
    Ok(output::report_error(&anyhow::anyhow!(
        "{}",
        drift_message(&fleet, &no_ledger_hint)
    )))
}

/// The flags that select the same instances as this run, for the suggested command: the
/// service, and whatever was given explicitly (a --target narrower than the service's, a
/// --service-dir, a config file other than the default).
fn place_args(args: &StatusArgs) -> String {
    let mut parts = Vec::new();
    if args.place.config != Path::new(config::DEFAULT_PATH) {
        parts.push(format!(
            "--config {}",
            quoted(&args.place.config.display().to_string())
        ));
    }
    if let Some(service) = &args.place.service {
        parts.push(format!("--service {}", quoted(service)));
    }
    for target in &args.place.targets {
        parts.push(format!("--target {}", quoted(target)));
    }
    if let Some(dir) = &args.place.service_dir {
        parts.push(format!("--service-dir {}", quoted(dir)));
    }
    parts.join(" ")
}

/// `value` as a shell word: as is when it is plain, single-quoted otherwise.
fn quoted(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
    if plain {
        value.to_owned()
    } else {
        forge_ec2::script::shell_quote(value)
    }
}

/// Why an instance's tag could not be read: the reason its script printed, else what SSM
/// said about it.
fn unreadable(i: &forge_ec2::InstanceResult) -> String {
    use forge_ec2::status::{InvocationStatus, StatusDetail, is_finished};
    let said = i
        .stderr_tail
        .lines()
        .chain(i.stdout_tail.lines())
        .find_map(|l| l.strip_prefix("forge-step-failed: inspect: "));
    if let Some(reason) = said {
        return reason.to_owned();
    }
    if i.succeeded {
        return "it answered without a tag line (SSM may have cut its output); look at .env in the service directory".to_owned();
    }
    let status = InvocationStatus::parse(&i.status);
    let detail = StatusDetail::parse(&i.status_details);
    if !is_finished(&status, &detail) {
        return format!(
            "no answer before the deadline (SSM status {}); check that its SSM agent is online",
            i.status
        );
    }
    match &i.advice {
        Some(advice) => format!("{} ({}): {advice}", i.status, i.status_details),
        None => format!("{} ({}), exit {}", i.status, i.status_details, i.exit_code),
    }
}

fn fleet_text(fleet: &FleetStatus) -> String {
    let what = fleet.service.as_deref().unwrap_or(&fleet.service_dir);
    let mut out = format!(
        "{what} in {} ({}, {}): {} instance(s)",
        fleet.env,
        fleet.targets,
        fleet.service_dir,
        fleet.instances.len()
    );
    match (&fleet.expected_tag, &fleet.ledger_file) {
        (Some(tag), Some(file)) => {
            let _ = write!(out, "; the Ledger says {tag} ({file})");
        }
        (Some(tag), None) => {
            let _ = write!(out, "; expected {tag}");
        }
        (None, _) => {}
    }
    out.push('\n');
    for note in &fleet.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    for i in &fleet.instances {
        match (&i.tag, &i.error) {
            (Some(tag), _) => {
                let _ = write!(out, "  {}  {tag}", i.instance_id);
                if let Some(previous) = &i.previous_tag {
                    let _ = write!(out, "  (previous {previous})");
                }
                if i.matches == Some(false) {
                    out.push_str("  differs");
                }
                if let Some(stopped) = i.not_running.as_ref().filter(|s| !s.is_empty()) {
                    let _ = write!(out, "  not running: {}", stopped.join(" "));
                }
                if let Some(why) = &i.running_unknown {
                    let _ = write!(out, "  (running unknown: {why})");
                }
                match i.digest_checked {
                    Some(0) => out.push_str("  no running container to check the digest"),
                    Some(n) if i.other_digest.is_empty() => {
                        let _ = write!(out, "  digest ok ({n} container(s))");
                    }
                    _ => {}
                }
                for container in &i.other_digest {
                    let _ = write!(out, "\n      other bytes: {container}");
                }
            }
            (None, error) => {
                let _ = write!(
                    out,
                    "  {}  unreadable: {}",
                    i.instance_id,
                    error.as_deref().unwrap_or("no tag reported")
                );
            }
        }
        out.push('\n');
    }
    out
}

/// The error a drifting fleet exits with: who differs, and the command that puts them right.
fn drift_message(fleet: &FleetStatus, no_expectation_hint: &str) -> String {
    let fix = fleet.fix.as_deref().unwrap_or_default();
    let deadline = if fleet.deadline_passed {
        " (the deadline passed before every instance answered)"
    } else {
        ""
    };
    if fleet.instances.is_empty() {
        return format!(
            "no instance answered (SSM command {}){deadline}",
            fleet.command_id
        );
    }
    let differing: Vec<String> = fleet
        .instances
        .iter()
        .filter(|i| i.is_off())
        .map(|i| {
            let mut why = Vec::new();
            if let Some(stopped) = i.not_running.as_ref().filter(|s| !s.is_empty()) {
                why.push(format!("{} not running", stopped.join(", ")));
            }
            for container in &i.other_digest {
                let id = container.split_whitespace().next().unwrap_or_default();
                why.push(format!(
                    "container {id} runs other bytes than {}",
                    fleet
                        .expected_digest
                        .as_deref()
                        .unwrap_or("the promoted digest")
                ));
            }
            if i.digest_checked == Some(0) {
                why.push(format!(
                    "no running container of {} to check {} against",
                    i.tag.as_deref().unwrap_or("its tag"),
                    fleet
                        .expected_digest
                        .as_deref()
                        .unwrap_or("the promoted digest")
                ));
            }
            let stopped = if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            };
            match &i.tag {
                Some(tag) => format!("{} runs {tag}{stopped}", i.instance_id),
                None => format!("{} could not be read", i.instance_id),
            }
        })
        .collect();
    let Some(expected) = &fleet.expected_tag else {
        let mut by_tag: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for i in &fleet.instances {
            if let Some(tag) = &i.tag {
                by_tag.entry(tag).or_default().push(&i.instance_id);
            }
        }
        let split: Vec<String> = by_tag
            .iter()
            .map(|(tag, ids)| format!("{tag} on {}", ids.join(", ")))
            .collect();
        let mut message = format!(
            "{} (SSM command {}){deadline}",
            if by_tag.len() > 1 {
                "the instances do not agree"
            } else {
                "not every instance is as it should be"
            },
            fleet.command_id
        );
        if !split.is_empty() {
            let _ = write!(message, ": {}", split.join("; "));
        }
        if !differing.is_empty() {
            let _ = write!(message, "; {}", differing.join(", "));
        }
        let _ = write!(
            message,
            "; {no_expectation_hint}, and put them on one tag with `{fix}`"
        );
        return message;
    };
    let source = match &fleet.ledger_file {
        Some(file) => format!("the Ledger's tag in {file}"),
        None => "--expect-tag".to_owned(),
    };
    format!(
        "{} of {} instance(s) do not run {expected} with every service up ({source}; SSM command {}){deadline}: {}; \
         put them on it with `{fix}` (it sets any instance to that tag, in either direction, \
         and starts its services), or fix what kept an instance from answering",
        differing.len(),
        fleet.instances.len(),
        fleet.command_id,
        differing.join(", "),
    )
}

/// The report, or the error; a deadline that passed still prints what each instance had
/// reported by then (in the requested format) before the error.
fn or_partial(
    result: Result<DeployReport, forge_ec2::Ec2Error>,
    format: Format,
) -> anyhow::Result<DeployReport> {
    let e = match result {
        Ok(report) => return Ok(report),
        Err(e) => e,
    };
    if let forge_ec2::Ec2Error::Deadline {
        instances,
        command_id,
        ..
    } = &e
        && !instances.is_empty()
    {
        match format {
            Format::Json => output::print_json(&serde_json::json!({
                "command_id": command_id,
                "succeeded": false,
                "error": e.to_string(),
                "instances": instances,
            }))?,
            Format::Text => {
                let mut out = format!(
                    "SSM command {command_id} stopped at its deadline; instances so far:\n"
                );
                instance_lines(&mut out, instances);
                output::print_stdout(&out)?;
            }
        }
    }
    Err(library_error(e))
}

/// Prints the report; exits 1 (with an error naming the failed instances) unless every
/// instance succeeded.
fn finish(report: &DeployReport, format: Format) -> anyhow::Result<ExitCode> {
    match format {
        Format::Json => output::print_json(report)?,
        Format::Text => output::print_stdout(&text_report(report))?,
    }
    if report.succeeded {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(problem) = &report.problem {
        return Ok(output::report_error(&anyhow::anyhow!(
            "{} (SSM command {})",
            problem,
            report.command_id
        )));
    }
    let failed: Vec<String> = report
        .instances
        .iter()
        .filter(|i| !i.succeeded)
        .map(|i| match &i.failed_step {
            Some(step) => format!("{} ({}, step {step})", i.instance_id, i.status_details),
            None => format!("{} ({})", i.instance_id, i.status_details),
        })
        .collect();
    Ok(output::report_error(&anyhow::anyhow!(
        "{} failed on {} of {} instance(s) (SSM command {}): {}",
        report.mode,
        failed.len(),
        report.instances.len(),
        report.command_id,
        failed.join(", ")
    )))
}

fn text_report(report: &DeployReport) -> String {
    let ok = report.instances.iter().filter(|i| i.succeeded).count();
    let mut out = format!(
        "{} {} to {}: SSM command {}, {ok}/{} instance(s) succeeded in {:.1}s\n",
        report.mode,
        report.requested_tag.as_deref().unwrap_or("(previous tag)"),
        report.targets,
        report.command_id,
        report.instances.len(),
        report.elapsed_secs
    );
    if let Some(problem) = &report.problem {
        let _ = writeln!(out, "  problem: {problem}");
    }
    instance_lines(&mut out, &report.instances);
    out
}

/// One line per instance (status, exit code, tag, failed step), with the output tail and the
/// advice under a failed one.
pub(crate) fn instance_lines(out: &mut String, instances: &[forge_ec2::InstanceResult]) {
    for i in instances {
        let _ = write!(out, "  {}  {}", i.instance_id, i.status);
        if i.status_details != i.status {
            let _ = write!(out, " ({})", i.status_details);
        }
        let _ = write!(out, "  exit {}", i.exit_code);
        if let Some(tag) = &i.deployed_tag {
            let _ = write!(out, "  tag {tag}");
        }
        if let Some(step) = &i.failed_step {
            let _ = write!(out, "  failed at step {step}");
        }
        out.push('\n');
        if !i.succeeded {
            let tail: Vec<&str> = i
                .stderr_tail
                .lines()
                .chain(i.stdout_tail.lines())
                .filter(|l| !l.trim().is_empty())
                .collect();
            for line in tail.iter().rev().take(8).rev() {
                let _ = writeln!(out, "      | {line}");
            }
            if let Some(advice) = &i.advice {
                let _ = writeln!(out, "      → {advice}");
            }
        }
        if i.truncated {
            let _ = writeln!(
                out,
                "      (output truncated by SSM at 24,000/8,000 characters; see the SSM console or CloudWatch)"
            );
        }
    }
}
