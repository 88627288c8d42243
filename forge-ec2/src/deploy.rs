//! Sending the deploy script through SSM Run Command and waiting, correctly, for every
//! instance's result.
//!
//! ## How the wait works (and why)
//!
//! Right after `SendCommand`, `GetCommandInvocation` answers `InvocationDoesNotExist` and
//! `ListCommandInvocations` returns an empty list: both mean *not yet*, never *done*. Each poll:
//!
//! 1. `ListCommands(CommandId)` gives the command's status and `TargetCount` (how many
//!    instances the tag filters resolved to) and, on some backends, the instance ids. A failure
//!    here only loses that information for this poll.
//! 2. The invocations come from `ListCommandInvocations` (every page, `NextToken`). When that
//!    operation is unavailable (denied by IAM, or moto, which answers 500), the deployer falls
//!    back for the rest of the wait to `GetCommandInvocation` per known instance id. Ids are
//!    known from the request (instance-id targets), from the `SendCommand` response and from
//!    `ListCommands`: AWS fills `InstanceIds` there only for instance-id targets, so tag targets
//!    on real AWS need the listing; a deploy that can learn no instance at all fails with an
//!    error saying which permission to grant.
//! 3. The command is finished when at least one invocation exists, every invocation is terminal
//!    ([`crate::status::is_finished`]) and either `TargetCount` invocations are visible or the
//!    command itself is terminal. A terminal command with `TargetCount` 0 and no invocation is
//!    [`Ec2Error::NoTargets`]: zero targeted instances is an error, not a success.
//!
//! Polls back off (×1.5 up to [`PollConfig::max`], ±20 % jitter); consecutive poll failures beyond
//! [`PollConfig::max_consecutive_errors`] end the wait with an error carrying the retries and
//! the elapsed time. Past the request's `deadline` the command is cancelled (`CancelCommand`)
//! and [`Ec2Error::Deadline`] names the unfinished instances.
//!
//! When finished, each instance's output is read with `GetCommandInvocation`, which returns up
//! to 24,000 characters of stdout and 8,000 of stderr (the listing only 2,500): the report notes
//! when a cap was reached.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ssm::types::Target;
use serde::Serialize;

use crate::script::{self, ScriptSpec, TagChoice, ValidationError};
use crate::status::{self, InvocationStatus, StatusDetail};
use crate::target::{TargetError, Targets};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// SSM's stdout cap in `GetCommandInvocation`.
pub const STDOUT_CAP: usize = 24_000;
/// SSM's stderr cap in `GetCommandInvocation`.
pub const STDERR_CAP: usize = 8_000;
/// SSM's output cap in `ListCommandInvocations` details.
pub const LISTING_OUTPUT_CAP: usize = 2_500;

/// A deploy or rollback that did not produce a per-instance result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Ec2Error {
    /// A value in the request was refused; nothing was sent.
    #[error("invalid deploy request: {0}")]
    Invalid(#[from] ValidationError),
    /// The targets were refused; nothing was sent.
    #[error("invalid targets: {0}")]
    Targets(#[from] TargetError),
    /// `SendCommand` failed; nothing ran.
    #[error("SSM SendCommand to {targets} failed{hint}")]
    Send {
        /// The targets.
        targets: String,
        /// What to do, derived from the error code (may be empty).
        hint: String,
        /// The SDK error.
        #[source]
        source: BoxError,
    },
    /// The targets matched no instance.
    #[error(
        "command {command_id} targeted no instance: nothing matches {targets}; check the tag (key and value are case-sensitive), that the instances run, and that they are managed by SSM"
    )]
    NoTargets {
        /// The command.
        command_id: String,
        /// The targets.
        targets: String,
    },
    /// Polling failed repeatedly.
    #[error(
        "waiting for command {command_id} failed: {operation} failed after {retries} retries in {elapsed:.1?}; the command may still be running: check it in the SSM console (Run Command) before redeploying"
    )]
    Poll {
        /// The command.
        command_id: String,
        /// The SSM operation that failed.
        operation: &'static str,
        /// Consecutive attempts made.
        retries: u32,
        /// Time since the command was sent.
        elapsed: Duration,
        /// The last SDK error.
        #[source]
        source: BoxError,
    },
    /// ListCommands is refused: without the command's target count and status nothing tells
    /// when every instance has run it.
    #[error(
        "cannot tell whether command {command_id} reached every instance: ListCommands was refused ({source}); grant ssm:ListCommands to the deploy role"
    )]
    StatusUnavailable {
        /// The command.
        command_id: String,
        /// The ListCommands error.
        #[source]
        source: BoxError,
    },
    /// No way to learn which instances run the command.
    #[error(
        "cannot follow command {command_id}: ListCommandInvocations failed and no instance id is known to ask GetCommandInvocation about; grant ssm:ListCommandInvocations to the deploy role"
    )]
    ListingUnavailable {
        /// The command.
        command_id: String,
        /// The listing error.
        #[source]
        source: BoxError,
    },
    /// The overall deadline passed; the command was cancelled.
    #[error(
        "command {command_id} did not finish within the {deadline:?} deadline ({elapsed:.1?} elapsed); unfinished: {unfinished}; {cancel}"
    )]
    Deadline {
        /// The command.
        command_id: String,
        /// The deadline.
        deadline: Duration,
        /// Time since the command was sent.
        elapsed: Duration,
        /// `instance (status)` of every unfinished invocation, comma-separated.
        unfinished: String,
        /// What happened to the cancel request.
        cancel: String,
        /// What each instance had reported when the deadline passed (finished ones with their
        /// results, the others with their status so far).
        instances: Vec<InstanceResult>,
    },
}

impl Ec2Error {
    /// True when the caller's input was refused (the CLI exits 2).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Ec2Error::Invalid(_) | Ec2Error::Targets(_))
    }
}

/// Defaults shared by deploys and rollbacks.
pub mod defaults {
    use std::time::Duration;
    /// SSM delivery timeout (`TimeoutSeconds`).
    pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(600);
    /// `executionTimeout` document parameter.
    pub const EXECUTION_TIMEOUT: Duration = Duration::from_secs(1800);
    /// Overall wait.
    pub const DEADLINE: Duration = Duration::from_secs(2700);
    /// How long SSM tries to reach an instance for [`super::Ec2Deployer::inspect`].
    pub const INSPECT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
    /// How long [`super::Ec2Deployer::inspect`] waits for every instance: past the delivery
    /// timeout and the one-minute execution timeout, so SSM reports each instance first.
    pub const INSPECT_DEADLINE: Duration = Duration::from_secs(240);
}

/// A deploy: send `compose_file` and `image_tag` to the targets.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// Which instances.
    pub targets: Targets,
    /// The compose file's exact bytes.
    pub compose_file: Vec<u8>,
    /// The tag written as `IMAGE_TAG` (an OCI tag, not `latest`).
    pub image_tag: String,
    /// Absolute directory on the instance.
    pub service_dir: String,
    /// Parameter Store path refreshed into `.env` (None: no refresh).
    pub parameters_path: Option<String>,
    /// Region passed to `forge-refresh-env` (None: the deployer's region).
    pub parameters_region: Option<String>,
    /// `MaxConcurrency`: a number or a percentage (`"50"`, `"10%"`); None: SSM's default (50).
    pub max_concurrency: Option<String>,
    /// `MaxErrors`: a number or a percentage; None: SSM's default (0).
    pub max_errors: Option<String>,
    /// Delivery timeout (`TimeoutSeconds`, 30 s – 30 days).
    pub delivery_timeout: Duration,
    /// `executionTimeout` (1 s – 48 h).
    pub execution_timeout: Duration,
    /// Overall wait; past it the command is cancelled.
    pub deadline: Duration,
    /// Check that every compose service runs after `up -d`.
    pub check_running: bool,
    /// SSM comment (at most 100 characters; longer ones are cut).
    pub comment: Option<String>,
    /// `REPOSITORY@sha256:…`: each instance refuses to switch unless the compose file runs
    /// `REPOSITORY:<image_tag>` and docker pulled it as this digest (see [`crate::script`]).
    /// None: the tag alone decides what runs.
    pub image_pin: Option<String>,
    /// Allow an older numeric tag than the instance runs (a rollback sent as a deploy, e.g.
    /// with the service's compose file). Default false: the script refuses to go backwards.
    pub allow_older: bool,
}

impl DeployRequest {
    /// A request with the default timeouts, no parameters path and `check_running` on.
    pub fn new(
        targets: Targets,
        compose_file: Vec<u8>,
        image_tag: impl Into<String>,
        service_dir: impl Into<String>,
    ) -> Self {
        DeployRequest {
            targets,
            compose_file,
            image_tag: image_tag.into(),
            service_dir: service_dir.into(),
            parameters_path: None,
            parameters_region: None,
            max_concurrency: None,
            max_errors: None,
            delivery_timeout: defaults::DELIVERY_TIMEOUT,
            execution_timeout: defaults::EXECUTION_TIMEOUT,
            deadline: defaults::DEADLINE,
            check_running: true,
            comment: None,
            image_pin: None,
            allow_older: false,
        }
    }

    /// Checks every value; [`Ec2Deployer::deploy`] calls it before sending anything.
    pub fn validate(&self) -> Result<(), ValidationError> {
        script::check_image_tag(&self.image_tag)?;
        if let Some(pin) = &self.image_pin {
            script::check_image_pin(pin)?;
        }
        script::check_service_dir(&self.service_dir)?;
        script::check_compose(&self.compose_file)?;
        if let Some(pin) = &self.image_pin {
            script::check_compose_runs(&self.compose_file, pin)?;
        }
        if let Some(p) = &self.parameters_path {
            script::check_parameters_path(p)?;
        }
        check_rollout(
            self.max_concurrency.as_deref(),
            self.max_errors.as_deref(),
            self.delivery_timeout,
            self.execution_timeout,
        )
    }

    fn spec<'a>(&'a self, region: Option<&'a str>) -> ScriptSpec<'a> {
        ScriptSpec {
            tag: TagChoice::Deploy(self.image_tag.clone()),
            compose: Some(&self.compose_file),
            service_dir: &self.service_dir,
            parameters_path: self.parameters_path.as_deref(),
            region: self.parameters_region.as_deref().or(region),
            check_running: self.check_running,
            pin: self.image_pin.as_deref(),
            only_from: None,
            allow_older: self.allow_older,
        }
    }
}

/// A rollback: set `IMAGE_TAG` back to the tag in `.env.previous` on each instance, or to
/// `to_tag`, then pull and `up -d`.
#[derive(Debug, Clone)]
pub struct RollbackRequest {
    /// Which instances.
    pub targets: Targets,
    /// Absolute directory on the instance.
    pub service_dir: String,
    /// The tag to return to; None: each instance's `.env.previous`.
    pub to_tag: Option<String>,
    /// A compose file to install as well (None: keep the instance's).
    pub compose_file: Option<Vec<u8>>,
    /// Parameter Store path refreshed into `.env` (None: no refresh).
    pub parameters_path: Option<String>,
    /// Region passed to `forge-refresh-env` (None: the deployer's region).
    pub parameters_region: Option<String>,
    /// `MaxConcurrency`.
    pub max_concurrency: Option<String>,
    /// `MaxErrors`.
    pub max_errors: Option<String>,
    /// Delivery timeout.
    pub delivery_timeout: Duration,
    /// `executionTimeout`.
    pub execution_timeout: Duration,
    /// Overall wait.
    pub deadline: Duration,
    /// Check that every compose service runs after `up -d`.
    pub check_running: bool,
    /// SSM comment.
    pub comment: Option<String>,
    /// `REPOSITORY@sha256:…` the rollback tag must be pulled as (only with `to_tag`; see
    /// [`DeployRequest::image_pin`]).
    pub image_pin: Option<String>,
    /// Roll back only instances that run this tag (the bad release): re-running a rollback
    /// that stopped half-way then leaves the instances that already rolled back alone, where
    /// "back to `.env.previous`" would move them forward to the bad tag again.
    pub only_from: Option<String>,
}

impl RollbackRequest {
    /// A rollback to the previous tag with the default timeouts.
    pub fn new(targets: Targets, service_dir: impl Into<String>) -> Self {
        RollbackRequest {
            targets,
            service_dir: service_dir.into(),
            to_tag: None,
            compose_file: None,
            parameters_path: None,
            parameters_region: None,
            max_concurrency: None,
            max_errors: None,
            delivery_timeout: defaults::DELIVERY_TIMEOUT,
            execution_timeout: defaults::EXECUTION_TIMEOUT,
            deadline: defaults::DEADLINE,
            check_running: true,
            comment: None,
            image_pin: None,
            only_from: None,
        }
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(tag) = &self.to_tag {
            script::check_image_tag(tag)?;
        }
        if let Some(tag) = &self.only_from {
            script::check_image_tag(tag)?;
        }
        if let Some(pin) = &self.image_pin {
            script::check_image_pin(pin)?;
            if self.to_tag.is_none() {
                return Err(ValidationError::ImagePin {
                    pin: pin.clone(),
                    reason: "a pin needs the tag it belongs to; name the rollback tag (to_tag / --to-tag)".to_owned(),
                });
            }
        }
        script::check_service_dir(&self.service_dir)?;
        if let Some(c) = &self.compose_file {
            script::check_compose(c)?;
            if let Some(pin) = &self.image_pin {
                script::check_compose_runs(c, pin)?;
            }
        }
        if let Some(p) = &self.parameters_path {
            script::check_parameters_path(p)?;
        }
        check_rollout(
            self.max_concurrency.as_deref(),
            self.max_errors.as_deref(),
            self.delivery_timeout,
            self.execution_timeout,
        )
    }

    fn spec<'a>(&'a self, region: Option<&'a str>) -> ScriptSpec<'a> {
        ScriptSpec {
            tag: match &self.to_tag {
                Some(t) => TagChoice::RollbackTo(t.clone()),
                None => TagChoice::RollbackToPrevious,
            },
            compose: self.compose_file.as_deref(),
            service_dir: &self.service_dir,
            parameters_path: self.parameters_path.as_deref(),
            region: self.parameters_region.as_deref().or(region),
            check_running: self.check_running,
            pin: self.image_pin.as_deref(),
            only_from: self.only_from.as_deref(),
            allow_older: true,
        }
    }
}

/// A read-only look at what the instances are set to run: the tag each one's `.env` sets
/// (which the last deploy or rollback installed) and which of the compose file's services are
/// not running ([`crate::script::not_running`]). Nothing on the instances changes; docker is
/// only asked questions.
#[derive(Debug, Clone)]
pub struct InspectRequest {
    /// Which instances.
    pub targets: Targets,
    /// Absolute directory on the instance.
    pub service_dir: String,
    /// `MaxConcurrency`: a number or a percentage; None: SSM's default (50).
    pub max_concurrency: Option<String>,
    /// Delivery timeout (`TimeoutSeconds`, 30 s – 30 days).
    pub delivery_timeout: Duration,
    /// Overall wait; past it the command is cancelled.
    pub deadline: Duration,
    /// SSM comment (at most 100 characters; longer ones are cut).
    pub comment: Option<String>,
    /// `REPOSITORY@sha256:…`: also check that the running containers of `REPOSITORY` run
    /// these bytes (see [`script::render_inspect`]). None: tags and running services only.
    pub image_pin: Option<String>,
}

impl InspectRequest {
    /// A request with a 2-minute delivery timeout and a 4-minute deadline: an instance whose
    /// SSM agent is offline then ends as `Delivery Timed Out` in the report, before the
    /// deadline.
    pub fn new(targets: Targets, service_dir: impl Into<String>) -> Self {
        InspectRequest {
            targets,
            service_dir: service_dir.into(),
            max_concurrency: None,
            delivery_timeout: defaults::INSPECT_DELIVERY_TIMEOUT,
            deadline: defaults::INSPECT_DEADLINE,
            comment: None,
            image_pin: None,
        }
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ValidationError> {
        script::check_service_dir(&self.service_dir)?;
        if let Some(pin) = &self.image_pin {
            script::check_image_pin(pin)?;
        }
        check_rollout(
            self.max_concurrency.as_deref(),
            None,
            self.delivery_timeout,
            INSPECT_EXECUTION_TIMEOUT,
        )
    }
}

/// The inspect script reads two files; a minute is plenty even on a loaded instance.
const INSPECT_EXECUTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The exact script [`Ec2Deployer::inspect`] sends for `request`.
pub fn render_inspect_script(request: &InspectRequest) -> String {
    script::render_inspect(&request.service_dir, request.image_pin.as_deref())
}

/// The exact script [`Ec2Deployer::deploy`] sends for `request` (with the deployer's region
/// filled in when `parameters_region` is None). Every value is shell-quoted, so rendering is
/// safe even before [`DeployRequest::validate`].
pub fn render_script(request: &DeployRequest) -> String {
    script::render(&request.spec(None))
}

/// The exact script [`Ec2Deployer::rollback`] sends for `request`.
pub fn render_rollback_script(request: &RollbackRequest) -> String {
    script::render(&request.spec(None))
}

fn check_rollout(
    max_concurrency: Option<&str>,
    max_errors: Option<&str>,
    delivery: Duration,
    execution: Duration,
) -> Result<(), ValidationError> {
    if let Some(v) = max_concurrency
        && !is_rate(v, false)
    {
        return Err(ValidationError::Option {
            name: "max-concurrency",
            value: v.to_owned(),
            reason: "SSM takes a number ≥ 1 or a percentage 1%–100% (e.g. `1` for one instance at a time, `25%`)".to_owned(),
        });
    }
    if let Some(v) = max_errors
        && !is_rate(v, true)
    {
        return Err(ValidationError::Option {
            name: "max-errors",
            value: v.to_owned(),
            reason: "SSM takes a number ≥ 0 or a percentage 0%–100% (e.g. `0` to stop at the first failure)".to_owned(),
        });
    }
    if !(30..=2_592_000).contains(&delivery.as_secs()) {
        return Err(ValidationError::Option {
            name: "delivery timeout",
            value: format!("{}s", delivery.as_secs()),
            reason: "SSM's TimeoutSeconds is 30 s to 2,592,000 s (30 days)".to_owned(),
        });
    }
    if !(1..=172_800).contains(&execution.as_secs()) {
        return Err(ValidationError::Option {
            name: "execution timeout",
            value: format!("{}s", execution.as_secs()),
            reason: "AWS-RunShellScript's executionTimeout is 1 s to 172,800 s (48 h)".to_owned(),
        });
    }
    Ok(())
}

/// `N` or `N%` as SSM's MaxConcurrency/MaxErrors accept them.
fn is_rate(v: &str, zero_ok: bool) -> bool {
    let (digits, percent) = match v.strip_suffix('%') {
        Some(d) => (d, true),
        None => (v, false),
    };
    if digits.is_empty() || digits.len() > 7 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return false;
    }
    let n: u32 = digits.parse().unwrap_or(u32::MAX);
    (zero_ok || n >= 1) && (!percent || n <= 100)
}

/// How often to poll.
#[derive(Debug, Clone, Copy)]
pub struct PollConfig {
    /// First wait after SendCommand.
    pub initial: Duration,
    /// Longest wait between polls.
    pub max: Duration,
    /// Consecutive failed polls tolerated before giving up.
    pub max_consecutive_errors: u32,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(15),
            max_consecutive_errors: 5,
        }
    }
}

/// For a rollback to each instance's previous tag: a description of the split when the
/// instances ended on different tags (an instance whose last deploy failed and was undone has
/// an older `.env.previous` than its neighbours), or when an instance's tag cannot be told
/// (its output was cut by SSM), else `None`.
fn diverged(instances: &[InstanceResult]) -> Option<String> {
    let unknown: Vec<&str> = instances
        .iter()
        .filter(|i| i.deployed_tag.is_none())
        .map(|i| i.instance_id.as_str())
        .collect();
    if !unknown.is_empty() {
        return Some(format!(
            "cannot tell which tag {} rolled back to (no forge-deployed-tag in its output, which SSM may have cut); \
             check the instance's .env, or run the rollback again with an explicit tag (--to-tag) so they all run the same one",
            unknown.join(", ")
        ));
    }
    let tags: std::collections::BTreeSet<&str> = instances
        .iter()
        .filter_map(|i| i.deployed_tag.as_deref())
        .collect();
    if tags.len() < 2 {
        return None;
    }
    let each: Vec<String> = instances
        .iter()
        .filter_map(|i| {
            Some(format!(
                "{} → {}",
                i.instance_id,
                i.deployed_tag.as_deref()?
            ))
        })
        .collect();
    Some(format!(
        "the instances rolled back to different previous tags ({}); run the rollback again with an explicit tag (--to-tag) so they all run the same one",
        each.join(", ")
    ))
}

/// One instance's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceResult {
    /// The instance.
    pub instance_id: String,
    /// SSM `Status` (`Success`, `Failed`, `TimedOut`, …).
    pub status: String,
    /// SSM `StatusDetails` (`Delivery Timed Out`, `Undeliverable`, …).
    pub status_details: String,
    /// The script's exit code (`ResponseCode`); -1 means it never started.
    pub exit_code: i32,
    /// True when both status and details say Success.
    pub succeeded: bool,
    /// The step the script reported failing (`forge-step-failed: NAME`).
    pub failed_step: Option<String>,
    /// The tag the script reported deploying (`forge-deployed-tag: TAG`).
    pub deployed_tag: Option<String>,
    /// What to do about a failure.
    pub advice: Option<String>,
    /// stdout as SSM returned it (SSM keeps the first 24,000 characters).
    pub stdout_tail: String,
    /// stderr as SSM returned it (SSM keeps the first 8,000 characters).
    pub stderr_tail: String,
    /// True when SSM's cap was reached, so output is missing.
    pub truncated: bool,
}

/// The result of a deploy, rollback or inspect that ran to the end.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    /// SSM command id.
    pub command_id: String,
    /// `deploy`, `rollback` or `inspect`.
    pub mode: &'static str,
    /// The tag asked for (None for a rollback to each instance's previous tag).
    pub requested_tag: Option<String>,
    /// The targets as given.
    pub targets: String,
    /// How many instances SSM targeted (`TargetCount`, or the invocations seen).
    pub target_count: usize,
    /// Per instance, sorted by instance id.
    pub instances: Vec<InstanceResult>,
    /// True only when every targeted instance succeeded (and, for a rollback to each
    /// instance's previous tag, they all ended on the same tag).
    pub succeeded: bool,
    /// Why the run counts as failed although no instance did (instances rolled back to
    /// different previous tags).
    pub problem: Option<String>,
    /// How results were read: `ListCommandInvocations` or `GetCommandInvocation`.
    pub listing: &'static str,
    /// Seconds from SendCommand to the last result.
    pub elapsed_secs: f64,
}

/// Sends deploys through SSM Run Command and waits for them.
#[derive(Debug, Clone)]
pub struct Ec2Deployer {
    client: aws_sdk_ssm::Client,
    region: Option<String>,
    poll: PollConfig,
}

struct SendSpec<'a> {
    mode: &'static str,
    targets: &'a Targets,
    script: String,
    requested_tag: Option<String>,
    max_concurrency: Option<&'a str>,
    max_errors: Option<&'a str>,
    delivery_timeout: Duration,
    execution_timeout: Duration,
    deadline: Duration,
    comment: String,
}

#[derive(Debug, Clone)]
struct Invocation {
    instance_id: String,
    status: InvocationStatus,
    detail: StatusDetail,
    exit_code: i32,
    stdout: String,
    stderr: String,
    truncated: bool,
    /// False for the placeholder of an `InvocationDoesNotExist` answer.
    exists: bool,
}

impl Invocation {
    fn finished(&self) -> bool {
        status::is_finished(&self.status, &self.detail)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Unknown,
    Available,
    Unavailable,
}

struct WaitState {
    command_id: String,
    known: BTreeSet<String>,
    listing: Listing,
    /// The last `TargetCount` ListCommands reported: a failed ListCommands must not make a
    /// subset of the instances look like all of them.
    target_count: Option<usize>,
    /// The invocations the last successful poll saw (reported if the deadline passes).
    last: Vec<Invocation>,
}

enum Progress {
    Done {
        invocations: Vec<Invocation>,
        target_count: usize,
    },
    Waiting {
        unfinished: Vec<String>,
    },
    NoTargets,
}

struct PollFailure {
    operation: &'static str,
    source: BoxError,
    fatal: bool,
}

impl Ec2Deployer {
    /// A deployer using `config`'s region, credentials and endpoint.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Ec2Deployer {
            client: aws_sdk_ssm::Client::new(config),
            region: config.region().map(|r| r.as_ref().to_owned()),
            poll: PollConfig::default(),
        }
    }

    /// Overrides the polling cadence (tests poll fast).
    pub fn with_poll(mut self, poll: PollConfig) -> Self {
        self.poll = poll;
        self
    }

    /// The script [`Self::deploy`] would send for `request`.
    pub fn script_for(&self, request: &DeployRequest) -> String {
        script::render(&request.spec(self.region.as_deref()))
    }

    /// The script [`Self::rollback`] would send for `request`.
    pub fn rollback_script_for(&self, request: &RollbackRequest) -> String {
        script::render(&request.spec(self.region.as_deref()))
    }

    /// Validates, sends and waits. `Ok` carries every instance's result (check
    /// [`DeployReport::succeeded`]); `Err` means no complete result exists.
    pub async fn deploy(&self, request: &DeployRequest) -> Result<DeployReport, Ec2Error> {
        request.validate()?;
        let comment = request.comment.clone().unwrap_or_else(|| {
            format!(
                "forge deploy {} to {}",
                request.image_tag, request.service_dir
            )
        });
        self.run(SendSpec {
            mode: "deploy",
            targets: &request.targets,
            script: self.script_for(request),
            requested_tag: Some(request.image_tag.clone()),
            max_concurrency: request.max_concurrency.as_deref(),
            max_errors: request.max_errors.as_deref(),
            delivery_timeout: request.delivery_timeout,
            execution_timeout: request.execution_timeout,
            deadline: request.deadline,
            comment,
        })
        .await
    }

    /// Rolls back: each instance returns to the tag in its `.env.previous` (or `to_tag`).
    pub async fn rollback(&self, request: &RollbackRequest) -> Result<DeployReport, Ec2Error> {
        request.validate()?;
        let comment = request.comment.clone().unwrap_or_else(|| {
            format!(
                "forge rollback {} to {}",
                request.service_dir,
                request.to_tag.as_deref().unwrap_or("previous tag")
            )
        });
        self.run(SendSpec {
            mode: "rollback",
            targets: &request.targets,
            script: self.rollback_script_for(request),
            requested_tag: request.to_tag.clone(),
            max_concurrency: request.max_concurrency.as_deref(),
            max_errors: request.max_errors.as_deref(),
            delivery_timeout: request.delivery_timeout,
            execution_timeout: request.execution_timeout,
            deadline: request.deadline,
            comment,
        })
        .await
    }

    /// Asks every instance which tag its `.env` sets, changing nothing. Each
    /// [`InstanceResult::deployed_tag`] is that instance's tag; an instance where the service
    /// was never deployed fails with the reason in its output.
    pub async fn inspect(&self, request: &InspectRequest) -> Result<DeployReport, Ec2Error> {
        request.validate()?;
        let comment = request
            .comment
            .clone()
            .unwrap_or_else(|| format!("forge inspect {}", request.service_dir));
        self.run(SendSpec {
            mode: "inspect",
            targets: &request.targets,
            script: render_inspect_script(request),
            requested_tag: None,
            max_concurrency: request.max_concurrency.as_deref(),
            // Every instance is asked, whatever the others answer.
            max_errors: Some("100%"),
            delivery_timeout: request.delivery_timeout,
            execution_timeout: INSPECT_EXECUTION_TIMEOUT,
            deadline: request.deadline,
            comment,
        })
        .await
    }

    async fn run(&self, send: SendSpec<'_>) -> Result<DeployReport, Ec2Error> {
        let targets_text = send.targets.to_string();
        let mut builder = self
            .client
            .send_command()
            .document_name("AWS-RunShellScript")
            .parameters("commands", vec![send.script.clone()])
            .parameters(
                "executionTimeout",
                vec![send.execution_timeout.as_secs().to_string()],
            )
            .timeout_seconds(i32::try_from(send.delivery_timeout.as_secs()).unwrap_or(i32::MAX))
            .comment(truncate_chars(&send.comment, 100));
        match send.targets {
            Targets::Tags(tags) => {
                for t in tags {
                    builder = builder.targets(
                        Target::builder()
                            .key(format!("tag:{}", t.key))
                            .set_values(Some(t.values.clone()))
                            .build(),
                    );
                }
            }
            Targets::InstanceIds(ids) => {
                builder = builder.set_instance_ids(Some(ids.clone()));
            }
        }
        if let Some(c) = send.max_concurrency {
            builder = builder.max_concurrency(c);
        }
        if let Some(e) = send.max_errors {
            builder = builder.max_errors(e);
        }
        let started = Instant::now();
        let response = builder.send().await.map_err(|e| Ec2Error::Send {
            targets: targets_text.clone(),
            hint: send_hint(e.code()),
            source: Box::new(e),
        })?;
        let command = response.command();
        let command_id = command
            .and_then(|c| c.command_id())
            .unwrap_or_default()
            .to_owned();
        tracing::info!(command_id, targets = %targets_text, mode = send.mode, "SSM command sent");
        let mut state = WaitState {
            command_id: command_id.clone(),
            known: send
                .targets
                .instance_ids()
                .iter()
                .chain(command.map(|c| c.instance_ids()).unwrap_or_default())
                .cloned()
                .collect(),
            listing: Listing::Unknown,
            target_count: None,
            last: Vec::new(),
        };
        let mut delay = self.poll.initial;
        let mut errors = 0u32;
        let mut unfinished: Vec<String> = Vec::new();
        loop {
            let remaining = send.deadline.saturating_sub(started.elapsed());
            // ±20 % jitter: pipelines started together do not poll SSM in lockstep.
            let jittered = delay.mul_f64(rand::random_range(0.8..1.2));
            tokio::time::sleep(jittered.min(remaining)).await;
            match self.poll_once(&mut state).await {
                Ok(Progress::Done {
                    invocations,
                    target_count,
                }) => {
                    let listing = state.listing;
                    let instances = self.finish(&command_id, invocations, listing).await;
                    let mut succeeded =
                        !instances.is_empty() && instances.iter().all(|i| i.succeeded);
                    let problem =
                        if succeeded && send.mode == "rollback" && send.requested_tag.is_none() {
                            diverged(&instances)
                        } else {
                            None
                        };
                    succeeded &= problem.is_none();
                    return Ok(DeployReport {
                        command_id,
                        mode: send.mode,
                        requested_tag: send.requested_tag,
                        targets: targets_text,
                        target_count: target_count.max(instances.len()),
                        instances,
                        succeeded,
                        problem,
                        listing: if listing == Listing::Unavailable {
                            "GetCommandInvocation"
                        } else {
                            "ListCommandInvocations"
                        },
                        elapsed_secs: started.elapsed().as_secs_f64(),
                    });
                }
                Ok(Progress::NoTargets) => {
                    return Err(Ec2Error::NoTargets {
                        command_id,
                        targets: targets_text,
                    });
                }
                Ok(Progress::Waiting { unfinished: u }) => {
                    errors = 0;
                    tracing::debug!(command_id, unfinished = ?u, "waiting");
                    unfinished = u;
                }
                Err(failure) => {
                    errors += 1;
                    if failure.fatal {
                        return Err(if failure.operation == "ListCommands" {
                            Ec2Error::StatusUnavailable {
                                command_id,
                                source: failure.source,
                            }
                        } else {
                            Ec2Error::ListingUnavailable {
                                command_id,
                                source: failure.source,
                            }
                        });
                    }
                    tracing::warn!(
                        command_id,
                        operation = failure.operation,
                        attempt = errors,
                        error = %DisplayErrorContext(&*failure.source),
                        "poll failed; retrying"
                    );
                    if errors > self.poll.max_consecutive_errors {
                        return Err(Ec2Error::Poll {
                            command_id,
                            operation: failure.operation,
                            retries: errors,
                            elapsed: started.elapsed(),
                            source: failure.source,
                        });
                    }
                }
            }
            if started.elapsed() >= send.deadline {
                let cancel = match self
                    .client
                    .cancel_command()
                    .command_id(&command_id)
                    .send()
                    .await
                {
                    Ok(_) => "the command was cancelled (CancelCommand); instances that already ran keep their state".to_owned(),
                    Err(e) => format!(
                        "CancelCommand failed ({}): cancel it in the SSM console",
                        DisplayErrorContext(&e)
                    ),
                };
                let listing = state.listing;
                let instances = self
                    .finish(&command_id, std::mem::take(&mut state.last), listing)
                    .await;
                return Err(Ec2Error::Deadline {
                    instances,
                    command_id,
                    deadline: send.deadline,
                    elapsed: started.elapsed(),
                    unfinished: if unfinished.is_empty() {
                        "(no invocation visible yet)".to_owned()
                    } else {
                        unfinished.join(", ")
                    },
                    cancel,
                });
            }
            delay = (delay.mul_f64(1.5)).min(self.poll.max);
        }
    }

    async fn poll_once(&self, state: &mut WaitState) -> Result<Progress, PollFailure> {
        let info = self.command_info(&state.command_id).await?;
        if let Some(info) = &info {
            state.known.extend(info.instance_ids.iter().cloned());
            // Before the tag filters resolve, AWS reports TargetCount 0 on a pending command.
            if info.target_count > 0 || info.terminal {
                state.target_count = Some(info.target_count);
            }
            if info.terminal && info.target_count == 0 && state.known.is_empty() {
                return Ok(Progress::NoTargets);
            }
        }
        let invocations = match state.listing {
            Listing::Unavailable => self.get_each(state).await?,
            Listing::Unknown | Listing::Available => match self.list_all(&state.command_id).await {
                Ok(list) => {
                    state.listing = Listing::Available;
                    list
                }
                Err(failure) if state.listing == Listing::Available => return Err(failure),
                Err(failure) => {
                    if state.known.is_empty() {
                        // Nothing to fall back on yet: maybe ListCommands learns ids next time.
                        let fatal = info.as_ref().is_some_and(|i| i.terminal);
                        return Err(PollFailure { fatal, ..failure });
                    }
                    tracing::warn!(
                        command_id = state.command_id,
                        error = %DisplayErrorContext(&*failure.source),
                        "ListCommandInvocations is unavailable; following {} instance(s) with GetCommandInvocation",
                        state.known.len()
                    );
                    state.listing = Listing::Unavailable;
                    self.get_each(state).await?
                }
            },
        };
        let target_count = state.target_count;
        let command_terminal = info.as_ref().is_some_and(|i| i.terminal);
        if invocations.is_empty() {
            if command_terminal && target_count == Some(0) {
                return Ok(Progress::NoTargets);
            }
            return Ok(Progress::Waiting {
                unfinished: Vec::new(),
            });
        }
        let visible = invocations.iter().filter(|i| i.exists).count();
        let all_finished = invocations.iter().all(Invocation::finished);
        // Without ListCommands' count (targets still resolving, or the command not listed
        // yet) a listing of finished invocations may be only the first instances: wait.
        let enough = command_terminal || target_count.is_some_and(|n| visible >= n);
        if visible > 0 && all_finished && enough {
            return Ok(Progress::Done {
                target_count: target_count.unwrap_or(0),
                invocations,
            });
        }
        let unfinished = invocations
            .iter()
            .filter(|i| !i.finished())
            .map(|i| format!("{} ({})", i.instance_id, i.detail))
            .collect();
        state.last = invocations;
        Ok(Progress::Waiting { unfinished })
    }

    /// The command's status and target count; `None` while ListCommands does not list it yet.
    /// A refusal (no permission) is fatal: nothing else says when every instance has run.
    async fn command_info(&self, command_id: &str) -> Result<Option<CommandInfo>, PollFailure> {
        match self
            .client
            .list_commands()
            .command_id(command_id)
            .send()
            .await
        {
            Ok(out) => Ok(out.commands().first().map(|c| CommandInfo {
                terminal: c.status().is_some_and(|s| {
                    matches!(s.as_str(), "Success" | "Failed" | "TimedOut" | "Cancelled")
                }),
                target_count: usize::try_from(c.target_count()).unwrap_or(0),
                instance_ids: c.instance_ids().to_vec(),
            })),
            Err(e) => {
                let fatal = matches!(
                    e.code(),
                    Some("AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation")
                );
                Err(PollFailure {
                    operation: "ListCommands",
                    source: Box::new(e),
                    fatal,
                })
            }
        }
    }

    async fn list_all(&self, command_id: &str) -> Result<Vec<Invocation>, PollFailure> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_command_invocations()
                .command_id(command_id)
                .details(true)
                .max_results(50)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| PollFailure {
                    operation: "ListCommandInvocations",
                    source: Box::new(e),
                    fatal: false,
                })?;
            for inv in page.command_invocations() {
                let plugin = inv.command_plugins().first();
                let output = plugin.and_then(|p| p.output()).unwrap_or_default();
                out.push(Invocation {
                    instance_id: inv.instance_id().unwrap_or_default().to_owned(),
                    status: InvocationStatus::parse(
                        inv.status().map(|s| s.as_str()).unwrap_or("Pending"),
                    ),
                    detail: StatusDetail::parse(inv.status_details().unwrap_or("Pending")),
                    exit_code: plugin.map_or(-1, |p| p.response_code()),
                    stdout: output.to_owned(),
                    stderr: String::new(),
                    truncated: output.chars().count() >= LISTING_OUTPUT_CAP,
                    exists: true,
                });
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// `GetCommandInvocation` for every known instance; `InvocationDoesNotExist` is "not yet"
    /// (a placeholder that never counts as visible).
    async fn get_each(&self, state: &WaitState) -> Result<Vec<Invocation>, PollFailure> {
        let mut out = Vec::new();
        for id in &state.known {
            match self.get_one(&state.command_id, id).await {
                Ok(inv) => out.push(inv),
                Err(GetError::NotYet) => out.push(Invocation {
                    instance_id: id.clone(),
                    status: InvocationStatus::Pending,
                    detail: StatusDetail::Pending,
                    exit_code: -1,
                    stdout: String::new(),
                    stderr: String::new(),
                    truncated: false,
                    exists: false,
                }),
                Err(GetError::Other(source)) => {
                    return Err(PollFailure {
                        operation: "GetCommandInvocation",
                        source,
                        fatal: false,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn get_one(&self, command_id: &str, instance_id: &str) -> Result<Invocation, GetError> {
        let out = self
            .client
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance_id)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error()
                    .is_some_and(|s| s.is_invocation_does_not_exist())
                {
                    GetError::NotYet
                } else {
                    GetError::Other(Box::new(e))
                }
            })?;
        let stdout = out.standard_output_content().unwrap_or_default().to_owned();
        let stderr = out.standard_error_content().unwrap_or_default().to_owned();
        let truncated =
            stdout.chars().count() >= STDOUT_CAP || stderr.chars().count() >= STDERR_CAP;
        Ok(Invocation {
            instance_id: instance_id.to_owned(),
            status: InvocationStatus::parse(out.status().map(|s| s.as_str()).unwrap_or("Pending")),
            detail: StatusDetail::parse(out.status_details().unwrap_or("Pending")),
            exit_code: out.response_code(),
            stdout,
            stderr,
            truncated,
            exists: true,
        })
    }

    /// Turns finished invocations into results, reading full output with GetCommandInvocation
    /// when the listing's 2,500-character details were all we had.
    async fn finish(
        &self,
        command_id: &str,
        invocations: Vec<Invocation>,
        listing: Listing,
    ) -> Vec<InstanceResult> {
        let mut by_id: BTreeMap<String, Invocation> = BTreeMap::new();
        for mut inv in invocations {
            if listing != Listing::Unavailable {
                match self.get_one(command_id, &inv.instance_id).await {
                    Ok(full) => inv = full,
                    Err(_) => tracing::warn!(
                        command_id,
                        instance = inv.instance_id,
                        "GetCommandInvocation failed; reporting the listing's 2,500-character output"
                    ),
                }
            }
            by_id.insert(inv.instance_id.clone(), inv);
        }
        by_id
            .into_values()
            .map(|inv| {
                let succeeded = status::is_success(&inv.status, &inv.detail);
                InstanceResult {
                    failed_step: if succeeded {
                        None
                    } else {
                        script::failed_step(&inv.stdout, &inv.stderr)
                    },
                    // The last marker, else (a successful run whose output SSM cut) the
                    // tag the install step put in .env, which the rest of the run kept.
                    deployed_tag: script::deployed_tag(&inv.stdout).or_else(|| {
                        succeeded
                            .then(|| script::installed_tag(&inv.stdout))
                            .flatten()
                    }),
                    advice: if succeeded {
                        None
                    } else {
                        inv.detail
                            .advice()
                            .or_else(|| StatusDetail::parse(inv.status.as_str()).advice())
                            .map(str::to_owned)
                    },
                    instance_id: inv.instance_id,
                    status: inv.status.as_str().to_owned(),
                    status_details: inv.detail.as_str().to_owned(),
                    exit_code: inv.exit_code,
                    succeeded,
                    stdout_tail: inv.stdout,
                    stderr_tail: inv.stderr,
                    truncated: inv.truncated,
                }
            })
            .collect()
    }
}

struct CommandInfo {
    terminal: bool,
    target_count: usize,
    instance_ids: Vec<String>,
}

enum GetError {
    NotYet,
    Other(BoxError),
}

fn send_hint(code: Option<&str>) -> String {
    let hint = match code {
        Some("InvalidInstanceId") => {
            "the instances are not running, not managed by SSM (agent and instance profile), or not in this region/account"
        }
        Some("AccessDeniedException") => {
            "the deploy role lacks ssm:SendCommand on AWS-RunShellScript and the target instances"
        }
        Some("InvalidDocument") => "AWS-RunShellScript is not available in this region",
        Some("InvalidParameters") => "SSM refused a parameter (timeouts, concurrency)",
        Some("ThrottlingException") => "SSM is throttling: retry in a minute",
        _ => return String::new(),
    };
    format!(": {hint}")
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        for ok in ["1", "50", "10%", "100%"] {
            assert!(is_rate(ok, false), "{ok}");
        }
        for bad in ["0", "0%", "101%", "", "%", "-1", "01", "1.5", "ten"] {
            assert!(!is_rate(bad, false), "{bad}");
        }
        assert!(is_rate("0", true));
        assert!(is_rate("0%", true));
    }

    #[test]
    fn a_rollback_to_previous_tags_must_end_on_one_known_tag() {
        let instance = |id: &str, tag: Option<&str>| InstanceResult {
            instance_id: id.to_owned(),
            status: "Success".to_owned(),
            status_details: "Success".to_owned(),
            exit_code: 0,
            succeeded: true,
            failed_step: None,
            deployed_tag: tag.map(str::to_owned),
            advice: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            truncated: tag.is_none(),
        };
        assert_eq!(
            diverged(&[instance("i-a", Some("41")), instance("i-b", Some("41"))]),
            None
        );
        let split = diverged(&[instance("i-a", Some("41")), instance("i-b", Some("40"))]);
        assert!(
            split
                .as_deref()
                .is_some_and(|p| p.contains("i-a → 41, i-b → 40")),
            "{split:?}"
        );
        // Output cut by SSM: the tag is unknown, which is not "all the same".
        let unknown = diverged(&[instance("i-a", Some("41")), instance("i-b", None)]);
        assert!(
            unknown
                .as_deref()
                .is_some_and(|p| p.contains("cannot tell which tag i-b rolled back to")),
            "{unknown:?}"
        );
    }

    #[test]
    fn request_validation_names_the_option() {
        let targets = Targets::parse("tag:a=b").unwrap();
        let mut r = DeployRequest::new(targets, b"services: {}\n".to_vec(), "42", "/opt/x");
        r.validate().unwrap();
        r.max_concurrency = Some("0".into());
        assert!(
            r.validate()
                .unwrap_err()
                .to_string()
                .contains("max-concurrency")
        );
        r.max_concurrency = None;
        r.delivery_timeout = Duration::from_secs(5);
        assert!(
            r.validate()
                .unwrap_err()
                .to_string()
                .contains("TimeoutSeconds")
        );
        r.delivery_timeout = defaults::DELIVERY_TIMEOUT;
        r.image_tag = "latest".into();
        assert!(r.validate().unwrap_err().to_string().contains("latest"));
    }
}
