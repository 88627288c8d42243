//! The shell script sent through `AWS-RunShellScript`, and the checks on every value that goes
//! into it.
//!
//! The script is bash (`set -Eeuo pipefail`, re-executing itself under bash when the SSM agent
//! starts it with `sh`). Every value is single-quoted, so even an unvalidated value cannot
//! break out of its assignment; validation ([`check_image_tag`], [`check_service_dir`],
//! [`check_parameters_path`]) still refuses bad input before anything is sent. Steps, each
//! announced by a `forge-step: NAME` line on stdout:
//!
//! 1. `prepare`: create and enter the service directory, take its lock (`flock` on
//!    `.forge-deploy.lock`, waiting up to 15 minutes for another forge run), pick
//!    `docker compose` or `docker-compose`.
//! 2. `check-not-older` (deploy): a numeric tag older than the one in `.env` is refused, as
//!    the Ledger refuses it (going back is a rollback).
//!    `check-current-tag` (rollback with `only_from`): an instance whose `IMAGE_TAG` is not
//!    that tag (it already rolled back) changes nothing and reports its tag.
//!    `read-previous-tag` (rollback without a named tag): the tag recorded in `.env.previous`.
//! 3. `write-compose`: decode the base64 compose file into a staged file and verify its sha256
//!    (a mismatch is refused and nothing changes); `check-compose` when the instance's file is kept.
//! 4. `refresh-env` (when a parameters path is set): `forge-refresh-env` rewrites a staged copy
//!    of `.env` from Parameter Store, keeping `IMAGE_TAG`.
//! 5. `set-image-tag`: `IMAGE_TAG=<tag>` in the staged `.env` (mode 0600).
//! 6. `pull`: `docker compose --env-file STAGED -f STAGED pull --quiet`, so the images are pulled
//!    before any live file changes.
//! 7. `verify-digest` (with a pin `REPOSITORY@sha256:…`): the compose file runs
//!    `REPOSITORY:<tag>`, and docker pulled it as that digest (`RepoDigests`); otherwise nothing
//!    changes. Tags are mutable in a registry; this is what proves the instance got the bytes
//!    Forge promoted.
//! 8. `install`: the staged files replace `docker-compose.yml` and `.env`; the tag replaced goes
//!    to `.env.previous` (unless it is the same tag), which is what a rollback reads. Backups
//!    are kept until the moves are done and restored if one fails (`forge-undo:` on stderr).
//! 9. `up`: `docker compose up -d`. From here the new files stay: they describe the new containers.
//! 10. `check-running` (optional): every service of the compose file is running (retried for
//!     about 30 s while containers start), with `ps --filter status=running`, which
//!     docker-compose v1 understands too.
//!
//! Until `install`, a failure or a catchable stop (SIGTERM/SIGHUP/SIGINT) leaves the live files
//! as they were, and the staged files are removed on every exit. SSM cancels and times out with
//! SIGKILL, which no trap sees: the next run, holding the lock, restores any backups a killed
//! `install` left and removes stale staged files before it starts.
//! Requires `--env-file` and unquoting of `.env` values (docker-compose ≥ 1.26 or the Compose
//! v2 plugin).
//!
//! A failing command prints `forge-step-failed: NAME (exit N)` on stderr (ERR trap); a refused
//! check prints `forge-step-failed: NAME: reason`. On success the last lines are
//! `forge-step: finished` and `forge-deployed-tag: TAG`, which [`crate::DeployReport`] reads back.

use std::fmt::Write as _;

use base64::Engine as _;
use sha2::Digest as _;

/// A value refused before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// The image tag is not a valid OCI tag, or is `latest`.
    #[error("image tag `{tag}` is not allowed: {reason}")]
    ImageTag {
        /// The tag as given.
        tag: String,
        /// Why, and what to pass instead.
        reason: String,
    },
    /// The service directory is not an absolute, plain path.
    #[error("service directory `{dir}` is not allowed: {reason}")]
    ServiceDir {
        /// The directory as given.
        dir: String,
        /// Why, and what to pass instead.
        reason: String,
    },
    /// The Parameter Store path is malformed.
    #[error("parameters path `{path}` is not allowed: {reason}")]
    ParametersPath {
        /// The path as given.
        path: String,
        /// Why, and what to pass instead.
        reason: String,
    },
    /// A numeric or rate option is out of range.
    #[error("option {name} = `{value}` is not allowed: {reason}")]
    Option {
        /// The option's name.
        name: &'static str,
        /// The value as given.
        value: String,
        /// Why, and the accepted range.
        reason: String,
    },
    /// The image pin is not `REPOSITORY@sha256:<hex>`, or cannot apply.
    #[error("image pin `{pin}` is not allowed: {reason}")]
    ImagePin {
        /// The pin as given.
        pin: String,
        /// Why, and what to pass instead.
        reason: String,
    },
    /// The compose file is empty, too large to send, not YAML, or does not run the image.
    #[error("compose file is not usable: {reason}")]
    Compose {
        /// Why, and what to do.
        reason: String,
    },
}

/// The largest compose file sent inline. SSM caps a command's parameters; 32 KiB of YAML
/// (about 43 KiB once base64-encoded) keeps well under that.
pub const MAX_COMPOSE_BYTES: usize = 32 * 1024;

/// Checks an OCI tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`) and refuses `latest`, which would
/// make the deploy unreproducible.
pub fn check_image_tag(tag: &str) -> Result<(), ValidationError> {
    let err = |reason: &str| ValidationError::ImageTag {
        tag: tag.to_owned(),
        reason: reason.to_owned(),
    };
    if tag.is_empty() {
        return Err(err("it is empty; pass the build's tag"));
    }
    if tag == "latest" {
        return Err(err(
            "`latest` is mutable, so the deployed image could not be proven; pass the immutable build tag",
        ));
    }
    if tag.len() > 128 {
        return Err(err("OCI tags are at most 128 characters"));
    }
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(err(
            "an OCI tag is [A-Za-z0-9_] followed by [A-Za-z0-9._-] (no `/`, `:`, spaces or quotes)",
        ));
    }
    Ok(())
}

/// Checks the service directory: absolute, no `..`, no control characters, not `/`.
pub fn check_service_dir(dir: &str) -> Result<(), ValidationError> {
    let err = |reason: &str| ValidationError::ServiceDir {
        dir: dir.to_owned(),
        reason: reason.to_owned(),
    };
    if !dir.starts_with('/') {
        return Err(err(
            "it must be an absolute path on the instance, e.g. /opt/dagster",
        ));
    }
    if dir.trim_end_matches('/').is_empty() {
        return Err(err(
            "`/` cannot be a service directory; use e.g. /opt/<service>",
        ));
    }
    if dir.split('/').any(|c| c == "..") {
        return Err(err(
            "`..` components are not allowed; give the plain absolute path",
        ));
    }
    if dir.chars().any(char::is_control) {
        return Err(err("it contains a control character"));
    }
    Ok(())
}

/// Checks a Parameter Store path: starts with `/`, only `[A-Za-z0-9_.-/]`, at most 2048
/// characters.
pub fn check_parameters_path(path: &str) -> Result<(), ValidationError> {
    let err = |reason: &str| ValidationError::ParametersPath {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if !path.starts_with('/') {
        return Err(err(
            "a Parameter Store path starts with `/`, e.g. /forge/dagster",
        ));
    }
    if path.len() > 2048 {
        return Err(err("Parameter Store paths are at most 2048 characters"));
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
    {
        return Err(err(
            "Parameter Store names use only letters, digits and `_ . - /`",
        ));
    }
    Ok(())
}

/// Checks an image pin: `REPOSITORY@sha256:<64 hex>`, the repository as the compose file names
/// it (e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com/payments/api`).
pub fn check_image_pin(pin: &str) -> Result<(), ValidationError> {
    let err = |reason: &str| ValidationError::ImagePin {
        pin: pin.to_owned(),
        reason: reason.to_owned(),
    };
    let Some((repository, digest)) = pin.rsplit_once('@') else {
        return Err(err(
            "give REPOSITORY@sha256:<64 hex>, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/payments/api@sha256:…",
        ));
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(err(
            "the digest must be sha256: followed by 64 lowercase hex digits",
        ));
    }
    let repository_ok = !repository.is_empty()
        && repository
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b))
        && !repository.starts_with(['/', ':', '.', '-'])
        && !repository.ends_with(['/', ':']);
    if !repository_ok {
        return Err(err(
            "the repository must be an image name without tag, as the compose file writes it (lowercase, digits, `._-/:`)",
        ));
    }
    Ok(())
}

/// Checks the compose file's size, and that it is a YAML (or JSON) mapping Compose could read.
pub fn check_compose(compose: &[u8]) -> Result<(), ValidationError> {
    if compose.is_empty() {
        return Err(ValidationError::Compose {
            reason: "it is empty".to_owned(),
        });
    }
    if compose.len() > MAX_COMPOSE_BYTES {
        return Err(ValidationError::Compose {
            reason: format!(
                "{} bytes is more than the {MAX_COMPOSE_BYTES} bytes sent inline through SSM; move large parts (configs) to files baked into the AMI or to Parameter Store",
                compose.len()
            ),
        });
    }
    crate::compose::images(compose).map_err(|reason| ValidationError::Compose { reason })?;
    Ok(())
}

/// Checks, before anything is sent, that the compose file can run the pinned repository:
/// some service's `image` is `REPOSITORY:${IMAGE_TAG}` (or `$IMAGE_TAG`, `${IMAGE_TAG:-…}`),
/// read as Compose reads it (flow mappings, JSON, aliases and merge keys resolved). An image
/// whose repository part is itself a variable (`${REGISTRY}/app`), or a service whose image
/// may come from another file (`extends`, a top-level `include`), cannot be judged here and is
/// accepted; the instance checks the rendered file again (`docker compose config`) before it
/// switches.
pub fn check_compose_runs(compose: &[u8], pin: &str) -> Result<(), ValidationError> {
    let Some((repository, _)) = pin.rsplit_once('@') else {
        return Ok(()); // check_image_pin reports a malformed pin
    };
    let found =
        crate::compose::images(compose).map_err(|reason| ValidationError::Compose { reason })?;
    let runs = |image: &String| {
        let at = image
            .find("${IMAGE_TAG")
            .or_else(|| image.find("$IMAGE_TAG"));
        at.and_then(|i| image[..i].strip_suffix(':'))
            .is_some_and(|name| name == repository || name.contains('$'))
    };
    if found.images.iter().any(runs) || !found.undecidable.is_empty() {
        return Ok(());
    }
    let images = if found.images.is_empty() {
        "no service has an `image`".to_owned()
    } else {
        format!("its images are {}", found.images.join(", "))
    };
    Err(ValidationError::Compose {
        reason: format!(
            "no service runs {repository}:${{IMAGE_TAG}} ({images}), so no instance could prove the pinned digest; \
             write `image: {repository}:${{IMAGE_TAG}}` for the service this repository deploys"
        ),
    })
}

/// Quotes `value` for bash: single quotes, each `'` written as `'\''`.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Which tag the script sets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TagChoice {
    /// Deploy this tag.
    Deploy(String),
    /// Roll back to this tag.
    RollbackTo(String),
    /// Roll back to the tag recorded in `.env.previous` on each instance.
    RollbackToPrevious,
}

/// Everything the script needs; built by [`crate::render_script`] and
/// [`crate::render_rollback_script`].
#[derive(Debug, Clone)]
pub struct ScriptSpec<'a> {
    /// The tag to set.
    pub tag: TagChoice,
    /// The compose file to install (None: keep the one on the instance).
    pub compose: Option<&'a [u8]>,
    /// Directory on the instance.
    pub service_dir: &'a str,
    /// Parameter Store path for `forge-refresh-env`.
    pub parameters_path: Option<&'a str>,
    /// Region passed to `forge-refresh-env` (None: the instance's default).
    pub region: Option<&'a str>,
    /// Check that every service runs after `up -d`.
    pub check_running: bool,
    /// `REPOSITORY@sha256:…`: after the pull, `REPOSITORY:<tag>` must be an image of the
    /// compose file and must have been pulled as this digest (only with a known tag).
    pub pin: Option<&'a str>,
    /// Change only instances whose `.env` has this `IMAGE_TAG` (rollbacks); the others report
    /// their current tag and change nothing.
    pub only_from: Option<&'a str>,
    /// Leave out the check that refuses an older numeric build than the instance runs
    /// (rollbacks).
    pub allow_older: bool,
}

/// Renders the script for `spec`.
pub fn render(spec: &ScriptSpec<'_>) -> String {
    let mode = match spec.tag {
        TagChoice::Deploy(_) => "deploy",
        TagChoice::RollbackTo(_) | TagChoice::RollbackToPrevious => "rollback",
    };
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    let _ = writeln!(
        s,
        "# Generated by forge-ec2 {} (mode: {mode}); runs through SSM AWS-RunShellScript.",
        env!("CARGO_PKG_VERSION")
    );
    s.push_str(
        "# Each step prints `forge-step: NAME`; a failure prints `forge-step-failed: NAME` on stderr.\n",
    );
    s.push_str(HEADER);
    let _ = writeln!(s, "SERVICE_DIR={}", shell_quote(spec.service_dir));
    match &spec.tag {
        TagChoice::Deploy(tag) | TagChoice::RollbackTo(tag) => {
            let _ = writeln!(s, "IMAGE_TAG_WANTED={}", shell_quote(tag));
        }
        TagChoice::RollbackToPrevious => s.push_str("IMAGE_TAG_WANTED=''\n"),
    }
    if let Some(pin) = spec.pin {
        let _ = writeln!(s, "IMAGE_PIN_WANTED={}", shell_quote(pin));
    }
    s.push_str(PREPARE);
    if !spec.allow_older {
        s.push_str(NOT_OLDER);
    }
    if let Some(from) = spec.only_from {
        let _ = writeln!(s, "ROLLBACK_FROM={}", shell_quote(from));
        s.push_str(ONLY_FROM);
    }
    if spec.tag == TagChoice::RollbackToPrevious {
        s.push_str(READ_PREVIOUS);
    }
    match spec.compose {
        Some(compose) => {
            let _ = writeln!(
                s,
                "\nstep write-compose\nCOMPOSE_SHA256={}",
                shell_quote(&sha256_hex(compose))
            );
            s.push_str(STAGE_COMPOSE_HEAD);
            let b64 = base64::engine::general_purpose::STANDARD.encode(compose);
            for chunk in b64.as_bytes().chunks(76) {
                s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                s.push('\n');
            }
            s.push_str(STAGE_COMPOSE_TAIL);
        }
        None => s.push_str(STAGE_KEEP_COMPOSE),
    }
    s.push_str(STAGE_ENV);
    if let Some(path) = spec.parameters_path {
        let _ = writeln!(
            s,
            "\nstep refresh-env\nPARAMETERS_PATH={}",
            shell_quote(path)
        );
        s.push_str(REFRESH_CHECK);
        let region = spec
            .region
            .map(|r| format!(" --region {}", shell_quote(r)))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "forge-refresh-env --path \"$PARAMETERS_PATH\" --file \"$SERVICE_DIR/$env_new\"{region}"
        );
    }
    s.push_str(SET_TAG);
    s.push_str(PULL);
    if spec.pin.is_some() {
        s.push_str(VERIFY_DIGEST);
    }
    s.push_str(INSTALL);
    s.push_str(UP);
    if spec.check_running {
        s.push_str(CHECK_RUNNING);
    }
    s.push_str(DONE);
    s
}

const HEADER: &str = r#"if [ -z "${BASH_VERSION:-}" ]; then exec /bin/bash "$0" "$@"; fi
set -Eeuo pipefail
umask 077
export PATH="${PATH:-/usr/bin:/bin}:/usr/local/bin"
FORGE_STEP=start
UNDO=0
UNDO_FILES="docker-compose.yml .env .env.previous"
undo() {
  [ "$UNDO" = 1 ] || return 0
  UNDO=0
  local f
  for f in $UNDO_FILES; do
    if [ -e "$f.forge-undo" ]; then mv -f -- "$f.forge-undo" "$f" || true
    elif [ -e "$f.forge-absent" ]; then rm -f -- "$f" "$f.forge-absent" || true
    fi
  done
  echo "forge-undo: restored $UNDO_FILES in $SERVICE_DIR to their state before this run" >&2
}
# Failure markers go to both streams: SSM keeps only the first 8,000 characters of stderr, and
# a noisy `up` can push the marker past them; stdout carries little but markers.
marker() { echo "$1"; echo "$1" >&2; }
on_err() { local rc=$?; marker "forge-step-failed: ${FORGE_STEP} (exit ${rc})"; undo; exit "${rc}"; }
trap on_err ERR
# Stopped by a catchable signal (a shutdown, a Ctrl-C on a manual run): the same undo. SSM's
# cancel and timeout kill with SIGKILL instead; the next run recovers from that (prepare).
on_signal() { trap - ERR; marker "forge-step-failed: ${FORGE_STEP} (stopped by SIG$1)"; undo; exit "$2"; }
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP
trap 'on_signal INT 130' INT
# Staged files (relative to the service directory, no spaces) are removed however the run ends.
STAGED=""
remove_staged() { local f; for f in $STAGED; do rm -f -- "$f"; done; }
trap remove_staged EXIT
step() { FORGE_STEP="$1"; echo "forge-step: $1"; }
fail() { marker "forge-step-failed: ${FORGE_STEP}: $*"; undo; exit 1; }
tag_ok() { [[ "$1" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] && [ "$1" != latest ]; }
read_tag() { sed -n 's/^IMAGE_TAG=//p' "$1" | tail -n 1 | tr -d "\"'"; }

"#;

const PREPARE: &str = r#"
step prepare
tag_ok "$IMAGE_TAG_WANTED" || [ -z "$IMAGE_TAG_WANTED" ] || fail "image tag '$IMAGE_TAG_WANTED' is not a valid OCI tag"
mkdir -p -- "$SERVICE_DIR"
cd -- "$SERVICE_DIR"
# One forge run at a time per service directory: two SSM commands (two pipelines) on one
# instance would otherwise interleave their staged files and `up`s.
if command -v flock >/dev/null 2>&1; then
  exec 9>>.forge-deploy.lock
  if ! flock -n 9; then
    echo "forge-wait: another forge run holds $SERVICE_DIR/.forge-deploy.lock; waiting up to 15 minutes"
    flock -w 900 9 || fail "another forge run has held $SERVICE_DIR/.forge-deploy.lock for 15 minutes; wait for it to finish or look for a stuck run"
  fi
else
  echo "forge-warning: flock is not installed; concurrent deploys to $SERVICE_DIR are not serialised" >&2
fi
# A run killed outright (SSM cancels and times out with SIGKILL, which no trap sees) leaves its
# staged files, and if it died inside `install`, the backups of the files it was replacing.
# With the lock held no other run is using them: put the backups back, drop the rest.
for f in $UNDO_FILES; do
  if [ -e "$f.forge-undo" ] || [ -e "$f.forge-absent" ]; then
    UNDO=1
  fi
done
if [ "$UNDO" = 1 ]; then
  echo "forge-recovered: a killed run left its install half done in $SERVICE_DIR; putting its backups back" >&2
  undo
fi
rm -f -- .forge-compose.* .forge-env.* .env.previous.forge-tmp
if docker compose version >/dev/null 2>&1; then
  compose() { docker compose "$@"; }
elif command -v docker-compose >/dev/null 2>&1; then
  compose() { docker-compose "$@"; }
else
  fail "neither 'docker compose' nor 'docker-compose' works on this instance; install the Docker Compose plugin"
fi
"#;

/// A deploy never moves an instance to an older numeric build (the Ledger's monotonic guard,
/// per instance): of two overtaking promotions the older one fails on every instance the newer
/// one reached first, and so never writes the Ledger. Going back is a rollback.
const NOT_OLDER: &str = r#"
step check-not-older
current_tag=""
if [ -f .env ]; then current_tag="$(read_tag .env)"; fi
if [[ "$current_tag" =~ ^[0-9]+$ && "$IMAGE_TAG_WANTED" =~ ^[0-9]+$ ]]; then
  have="$(printf '%s' "$current_tag" | sed 's/^0*//')"
  want="$(printf '%s' "$IMAGE_TAG_WANTED" | sed 's/^0*//')"
  if [ "${#want}" -lt "${#have}" ] || { [ "${#want}" -eq "${#have}" ] && [[ "$want" < "$have" ]]; }; then
    fail "refusing to move $SERVICE_DIR backwards from build $current_tag to $IMAGE_TAG_WANTED (a stale or overtaken pipeline must not roll an instance back); nothing was changed — to go back on purpose, roll back (forge ec2 rollback --to-tag $IMAGE_TAG_WANTED)"
  fi
fi
"#;

/// A retried rollback must not move instances that already rolled back: their
/// `.env.previous` now names the tag they rolled back from.
const ONLY_FROM: &str = r#"
step check-current-tag
current_tag=""
if [ -f .env ]; then current_tag="$(read_tag .env)"; fi
if [ "$current_tag" != "$ROLLBACK_FROM" ]; then
  echo "forge-skip: IMAGE_TAG is '${current_tag}', not '${ROLLBACK_FROM}' (already rolled back?); nothing changed"
  step finished
  echo "forge-deployed-tag: $current_tag"
  exit 0
fi
"#;

const READ_PREVIOUS: &str = r#"
step read-previous-tag
[ -f .env.previous ] || fail "no previous deploy is recorded in $SERVICE_DIR/.env.previous; roll back to a named tag instead (--to-tag TAG)"
IMAGE_TAG_WANTED="$(read_tag .env.previous)"
tag_ok "$IMAGE_TAG_WANTED" || fail "$SERVICE_DIR/.env.previous holds no valid IMAGE_TAG ('$IMAGE_TAG_WANTED'); roll back to a named tag instead (--to-tag TAG)"
echo "forge-rollback-to: $IMAGE_TAG_WANTED"
"#;

const STAGE_KEEP_COMPOSE: &str = r#"
step check-compose
[ -f docker-compose.yml ] || fail "no docker-compose.yml in $SERVICE_DIR; deploy with a compose file first"
compose_new=docker-compose.yml
"#;

const STAGE_COMPOSE_HEAD: &str = r#"compose_new="$(mktemp .forge-compose.XXXXXX)"
STAGED="$STAGED $compose_new"
if ! base64 -d > "$compose_new" <<'FORGE_COMPOSE_B64'
"#;

const STAGE_COMPOSE_TAIL: &str = r#"FORGE_COMPOSE_B64
then
  fail "the compose file did not decode (corrupted in transit?); docker-compose.yml was not changed"
fi
compose_actual="$(sha256sum "$compose_new" | cut -d ' ' -f 1)"
if [ "$compose_actual" != "$COMPOSE_SHA256" ]; then
  fail "compose file checksum mismatch (expected $COMPOSE_SHA256, got $compose_actual): refusing to deploy; docker-compose.yml was not changed"
fi
chmod 0644 "$compose_new"
"#;

/// The new `.env` is built in a staged copy; the live one changes only at `install`.
const STAGE_ENV: &str = r#"env_new="$(mktemp .forge-env.XXXXXX)"
STAGED="$STAGED $env_new"
if [ -f .env ]; then cat .env > "$env_new"; fi
"#;

const REFRESH_CHECK: &str = r#"command -v forge-refresh-env >/dev/null 2>&1 || fail "forge-refresh-env is not installed on this instance (put it in /usr/local/bin); .env was not changed"
"#;

const SET_TAG: &str = r#"
step set-image-tag
env_tagged="$(mktemp .forge-env.XXXXXX)"
STAGED="$STAGED $env_tagged"
grep -v '^IMAGE_TAG=' "$env_new" > "$env_tagged" || [ "$?" -eq 1 ]
printf 'IMAGE_TAG=%s\n' "$IMAGE_TAG_WANTED" >> "$env_tagged"
chmod 0600 "$env_tagged"
mv -f -- "$env_tagged" "$env_new"
"#;

/// Pull with the staged files: if it fails, or the command is stopped, the live files still
/// describe the containers that run.
const PULL: &str = r#"
step pull
compose --env-file "$env_new" -f "$compose_new" pull --quiet
"#;

const VERIFY_DIGEST: &str = r#"
step verify-digest
pin_repo="${IMAGE_PIN_WANTED%@*}"
want="$pin_repo:$IMAGE_TAG_WANTED"
images="$(compose --env-file "$env_new" -f "$compose_new" config | sed -n 's/^[[:space:]]*image:[[:space:]]*//p' | tr -d "\"'" | sort -u)"
grep -qxF -- "$want" <<<"$images" || fail "no service in docker-compose.yml runs $want (its images: ${images//$'\n'/ }), so the promoted image would not be deployed; use $pin_repo:\${IMAGE_TAG} as the service's image; nothing was changed"
pulled="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' -- "$want")"
grep -qxF -- "$IMAGE_PIN_WANTED" <<<"$pulled" || fail "$want was pulled as ${pulled//$'\n'/ }, not ${IMAGE_PIN_WANTED}: the registry's tag does not hold the promoted bytes (re-pushed?); check the registry, nothing was changed"
echo "forge-image-digest: $IMAGE_PIN_WANTED"
"#;

/// Puts the staged files in place (backed up until `up` starts) and records the tag replaced
/// in `.env.previous`, which is what a rollback reads.
const INSTALL: &str = r#"
step install
for f in $UNDO_FILES; do
  rm -f -- "$f.forge-undo" "$f.forge-absent"
  if [ -e "$f" ]; then cp -p -- "$f" "$f.forge-undo"; else : > "$f.forge-absent"; fi
done
UNDO=1
previous_tag=""
if [ -f .env ]; then previous_tag="$(read_tag .env)"; fi
if [ -n "$previous_tag" ] && [ "$previous_tag" != "$IMAGE_TAG_WANTED" ]; then
  printf 'IMAGE_TAG=%s\n' "$previous_tag" > .env.previous.forge-tmp
  mv -f -- .env.previous.forge-tmp .env.previous
fi
if [ "$compose_new" != docker-compose.yml ]; then mv -f -- "$compose_new" docker-compose.yml; fi
mv -f -- "$env_new" .env
echo "forge-image-tag: ${previous_tag:-(none)} -> $IMAGE_TAG_WANTED"

# From here containers change: keep the new files even if a later step fails.
for f in $UNDO_FILES; do rm -f -- "$f.forge-undo" "$f.forge-absent"; done
UNDO=0
"#;

const UP: &str = r#"
step up
compose -f docker-compose.yml up -d
"#;

const CHECK_RUNNING: &str = r#"
step check-running
expected="$(compose -f docker-compose.yml config --services | sort)"
attempt=0
while :; do
  attempt=$((attempt + 1))
  # `--filter status=running`: understood by docker-compose v1 and the v2 plugin alike
  # (`--status` is v2 only).
  running="$(compose -f docker-compose.yml ps --services --filter status=running | sort)"
  missing="$(comm -23 <(printf '%s\n' "$expected") <(printf '%s\n' "$running"))"
  if [ -z "$missing" ]; then break; fi
  if [ "$attempt" -ge 6 ]; then
    fail "services not running after 'up -d': ${missing//$'\n'/ }; see 'docker compose ps' and 'docker compose logs' in $SERVICE_DIR"
  fi
  sleep 5
done
"#;

const DONE: &str = r#"
step finished
echo "forge-deployed-tag: $IMAGE_TAG_WANTED"
"#;

/// Renders the read-only script of [`crate::Ec2Deployer::inspect`]: it reports the tag in
/// `SERVICE_DIR/.env` (`forge-deployed-tag: TAG`), the one in `.env.previous`
/// (`forge-previous-tag: TAG`) and which of the compose file's services are not running
/// (`forge-not-running: NAMES`, or `forge-running-unknown: WHY`), and changes nothing. No lock
/// is taken: a deploy replaces `.env` with a rename, so the file read is always a whole one.
///
/// A service counts as not running when none of its containers runs and one stopped other than
/// by finishing (exit 0), so completed one-shot jobs and services never created (profiles,
/// scale 0) do not. Each docker call is cut off after 20 s where `timeout` exists.
///
/// With `pin` (`REPOSITORY@sha256:…`), each running container of the project whose image is
/// `REPOSITORY:<the .env tag>` is checked to run an image whose `RepoDigests` holds the pin;
/// those that do not are reported (`forge-running-other-digest: CONTAINER IMAGE DIGESTS`), and
/// the number checked (`forge-running-pinned-checked: N`).
pub fn render_inspect(service_dir: &str, pin: Option<&str>) -> String {
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    let _ = writeln!(
        s,
        "# Generated by forge-ec2 {} (mode: inspect); runs through SSM AWS-RunShellScript and changes nothing.",
        env!("CARGO_PKG_VERSION")
    );
    s.push_str(HEADER);
    let _ = writeln!(s, "SERVICE_DIR={}", shell_quote(service_dir));
    let _ = writeln!(
        s,
        "IMAGE_PIN_WANTED={}",
        shell_quote(pin.unwrap_or_default())
    );
    s.push_str(INSPECT);
    s
}

const INSPECT: &str = r#"
step inspect
[ -d "$SERVICE_DIR" ] || fail "$SERVICE_DIR does not exist on this instance: the service was never deployed here (deploy it, or check the target)"
cd -- "$SERVICE_DIR"
[ -f .env ] || fail "$SERVICE_DIR/.env does not exist: the service was never deployed here (deploy it, or check the target)"
tag="$(read_tag .env)"
[ -n "$tag" ] || fail "$SERVICE_DIR/.env sets no IMAGE_TAG; deploy a tag to it"
previous=""
if [ -f .env.previous ]; then previous="$(read_tag .env.previous)"; fi
echo "forge-previous-tag: ${previous:-(none)}"
# Whether the compose file's services run, and (with a pin) from which bytes: read-only
# questions to docker, each cut off after 20 s (a hung daemon must not cost the tag). An
# answer that cannot be had is reported, not fatal: the tag is still worth knowing.
if command -v timeout >/dev/null 2>&1; then
  dk() { timeout 20 docker "$@"; }
  dkc() { timeout 20 docker-compose "$@"; }
else
  dk() { docker "$@"; }
  dkc() { docker-compose "$@"; }
fi
if dk compose version >/dev/null 2>&1; then
  compose() { dk compose "$@"; }
elif command -v docker-compose >/dev/null 2>&1; then
  compose() { dkc "$@"; }
else
  compose() { return 127; }
fi
if [ ! -f docker-compose.yml ]; then
  echo "forge-running-unknown: $SERVICE_DIR/docker-compose.yml does not exist"
elif ! services="$(compose -f docker-compose.yml config --services 2>/dev/null)" || [ -z "$services" ]; then
  echo "forge-running-unknown: docker compose cannot read $SERVICE_DIR/docker-compose.yml (or docker is missing)"
else
  # A service is down when none of its containers runs and one of them stopped other than
  # by finishing (exit 0). A one-shot job that completed, or a service that was never
  # created (a profile, scale 0), is not.
  stopped=""
  unknown=""
  while IFS= read -r svc; do
    [ -n "$svc" ] || continue
    if ! ids="$(compose -f docker-compose.yml ps -a -q "$svc" 2>/dev/null || compose -f docker-compose.yml ps -q "$svc" 2>/dev/null)"; then
      unknown="$unknown $svc"
      continue
    fi
    up=0
    failed=0
    for id in $ids; do
      state="$(dk inspect --type container --format '{{.State.Running}} {{.State.ExitCode}}' -- "$id" 2>/dev/null)" || continue
      case "$state" in
        "true "*) up=1 ;;
        "false 0") ;;
        *) failed=1 ;;
      esac
    done
    if [ "$up" = 0 ] && [ "$failed" = 1 ]; then stopped="$stopped $svc"; fi
  done <<<"$services"
  stopped="${stopped# }"
  echo "forge-not-running: ${stopped:-(none)}"
  if [ -n "$unknown" ]; then echo "forge-running-unknown: docker compose ps failed for${unknown}"; fi
  if [ -n "$IMAGE_PIN_WANTED" ]; then
    # The running containers of REPOSITORY:TAG must run the promoted bytes: the image each
    # one was created from must carry the pin among its RepoDigests.
    want="${IMAGE_PIN_WANTED%@*}:$tag"
    checked=0
    for id in $(compose -f docker-compose.yml ps -q 2>/dev/null || true); do
      info="$(dk inspect --type container --format '{{.State.Running}} {{.Config.Image}} {{.Image}}' -- "$id" 2>/dev/null)" || continue
      read -r running image image_id <<<"$info"
      if [ "$running" != true ] || [ "$image" != "$want" ]; then continue; fi
      checked=$((checked + 1))
      digests="$(dk image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' -- "$image_id" 2>/dev/null)" || digests=""
      if ! grep -qxF -- "$IMAGE_PIN_WANTED" <<<"$digests"; then
        digests="$(printf '%s' "$digests" | tr -s '\n' ' ')"
        echo "forge-running-other-digest: $id $image ${digests:-(no RepoDigests)}"
      fi
    done
    echo "forge-running-pinned-checked: $checked"
  fi
fi
step finished
echo "forge-deployed-tag: $tag"
"#;

/// The step a failed script reported (`forge-step-failed: NAME…`), searched in stderr then
/// stdout; without that marker (the command was stopped, or SSM cut the output), the last step
/// the script started (`forge-step: NAME` on stdout).
pub fn failed_step(stdout: &str, stderr: &str) -> Option<String> {
    [stderr, stdout]
        .iter()
        .find_map(|text| {
            text.lines().rev().find_map(|line| {
                let rest = line.strip_prefix("forge-step-failed: ")?;
                let end = rest.find([':', ' ']).unwrap_or(rest.len());
                Some(rest[..end].to_owned())
            })
        })
        .or_else(|| {
            stdout.lines().rev().find_map(|line| {
                line.strip_prefix("forge-step: ")
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && *s != "finished")
                    .map(str::to_owned)
            })
        })
}

/// The tag a successful script reported (`forge-deployed-tag: TAG`).
pub fn deployed_tag(stdout: &str) -> Option<String> {
    stdout.lines().rev().find_map(|line| {
        line.strip_prefix("forge-deployed-tag: ")
            .map(|t| t.trim().to_owned())
    })
}

/// The tag an inspect found in `.env.previous` (`forge-previous-tag: TAG`); None when there
/// is none (`(none)`) or the line is missing.
pub fn previous_tag(stdout: &str) -> Option<String> {
    stdout.lines().rev().find_map(|line| {
        let tag = line.strip_prefix("forge-previous-tag: ")?.trim();
        (!tag.is_empty() && tag != "(none)").then(|| tag.to_owned())
    })
}

/// What an inspect found about the compose file's services: `Some(vec![])` when all run,
/// `Some(names)` for those that do not, `None` when it could not tell (the reason is in the
/// output's `forge-running-unknown:` line) or the line is missing.
pub fn not_running(stdout: &str) -> Option<Vec<String>> {
    stdout.lines().rev().find_map(|line| {
        let rest = line.strip_prefix("forge-not-running: ")?.trim();
        Some(if rest == "(none)" {
            Vec::new()
        } else {
            rest.split_whitespace().map(str::to_owned).collect()
        })
    })
}

/// Containers an inspect with a pin found running another digest of the pinned repository
/// (`CONTAINER IMAGE DIGESTS…`, one entry each).
pub fn running_other_digest(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("forge-running-other-digest: "))
        .map(|rest| rest.trim().to_owned())
        .collect()
}

/// How many containers of the pinned repository an inspect checked (None: no pin, or docker
/// could not be asked).
pub fn running_pinned_checked(stdout: &str) -> Option<u32> {
    stdout.lines().rev().find_map(|line| {
        line.strip_prefix("forge-running-pinned-checked: ")?
            .trim()
            .parse()
            .ok()
    })
}

/// Why an inspect could not tell whether the services run (`forge-running-unknown: …`).
pub fn running_unknown(stdout: &str) -> Option<String> {
    stdout.lines().rev().find_map(|line| {
        line.strip_prefix("forge-running-unknown: ")
            .map(|r| r.trim().to_owned())
    })
}

/// The tag the install step wrote to `.env` (`forge-image-tag: OLD -> TAG`), printed before
/// `up`: for a successful run whose final marker was cut off.
pub fn installed_tag(stdout: &str) -> Option<String> {
    stdout.lines().rev().find_map(|line| {
        let (_, new) = line.strip_prefix("forge-image-tag: ")?.split_once(" -> ")?;
        Some(new.trim().to_owned()).filter(|t| !t.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        for ok in ["1234", "v1.2.3", "build_77-rc.1", "_x", "A"] {
            check_image_tag(ok).unwrap();
        }
        for (bad, needle) in [
            ("", "empty"),
            ("latest", "mutable"),
            ("-x", "OCI tag is"),
            (".x", "OCI tag is"),
            ("a/b", "OCI tag is"),
            ("a b", "OCI tag is"),
            ("a'b", "OCI tag is"),
            ("a:b", "OCI tag is"),
            (&"a".repeat(129), "128"),
        ] {
            let e = check_image_tag(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn dirs_and_paths() {
        check_service_dir("/opt/dagster").unwrap();
        check_service_dir("/srv/my app/").unwrap();
        for bad in ["opt/x", "/", "//", "/opt/../etc", "/opt/\nx"] {
            assert!(check_service_dir(bad).is_err(), "{bad:?}");
        }
        check_parameters_path("/forge/dagster").unwrap();
        for bad in ["forge", "/forge dagster", "/forge/$x"] {
            assert!(check_parameters_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn compose_files_must_run_the_pinned_repository() {
        let pin = format!("registry.example/web@sha256:{}", "a".repeat(64));
        let check = |compose: &str, expected: Option<&str>| {
            let got = check_compose_runs(compose.as_bytes(), &pin);
            match expected {
                None => assert!(got.is_ok(), "{compose:?}: {got:?}"),
                Some(needle) => {
                    let e = got.expect_err(compose).to_string();
                    assert!(e.contains(needle), "{compose:?}: {e}");
                }
            }
        };
        check(
            "services:\n  web:\n    image: registry.example/web:${IMAGE_TAG}\n",
            None,
        );
        check(
            "services:\n  web:\n    image: \"registry.example/web:$IMAGE_TAG\"  # app\n",
            None,
        );
        check(
            "services:\n  web:\n    image: 'registry.example/web:${IMAGE_TAG:-1}'\n",
            None,
        );
        check(
            r#"{"services": {"web": {"image": "registry.example/web:${IMAGE_TAG}"}}}"#,
            None,
        );
        check(
            "{\"services\": {\"web\": {\n  \"image\": \"registry.example/web:${IMAGE_TAG}\",\n  \"init\": true}}}",
            None,
        );
        // The repository comes from a variable: only the instance can tell.
        check(
            "services:\n  web:\n    image: ${REGISTRY}/web:${IMAGE_TAG}\n",
            None,
        );
        check(
            "x-app: &app registry.example/web:${IMAGE_TAG}\nservices:\n  web:\n    image: *app\n",
            None,
        );
        check(
            "x-base: &base {image: \"registry.example/web:${IMAGE_TAG}\"}\nservices:\n  web:\n    <<: *base\n  db:\n    image: postgres:16\n",
            None,
        );
        check(
            "services:\n  web:\n    image: registry.example/api:${IMAGE_TAG}\n  db:\n    image: postgres:16\n",
            Some(
                "no service runs registry.example/web:${IMAGE_TAG} (its images are registry.example/api:${IMAGE_TAG}, postgres:16)",
            ),
        );
        check(
            "services:\n  web:\n    image: registry.example/web:41\n",
            Some("write `image: registry.example/web:${IMAGE_TAG}`"),
        );
        check(
            "services:\n  web:\n    build: .\n",
            Some("no service has an `image`"),
        );
        // Read as Compose reads it, not line by line: a flow mapping runs the repository even
        // when other services use plain `image:` lines; an alias resolves to the wrong image; a
        // merge key is overridden by the service's own `image`; a comment is not an image.
        check(
            "services:\n  web: {image: \"registry.example/web:${IMAGE_TAG}\"}\n  db:\n    image: postgres:16\n",
            None,
        );
        check(
            "x-app: &app registry.example/api:${IMAGE_TAG}\nservices:\n  web:\n    image: *app\n",
            Some("its images are registry.example/api:${IMAGE_TAG}"),
        );
        check(
            "x-base: &base {image: \"registry.example/web:${IMAGE_TAG}\"}\nservices:\n  web:\n    <<: *base\n    image: registry.example/web:41\n",
            Some("its images are registry.example/web:41"),
        );
        check(
            "services:\n  web:\n    # image: registry.example/web:${IMAGE_TAG}\n    image: registry.example/web:41\n",
            Some("its images are registry.example/web:41"),
        );
        // Another file may supply the image: only the instance can tell.
        check(
            "services:\n  web:\n    extends: {file: common.yml, service: web}\n",
            None,
        );
        check("services:\n  web:\n    image: [\n", Some("not valid YAML"));
    }

    #[test]
    fn previous_tags_are_read_back() {
        assert_eq!(
            previous_tag("forge-step: inspect\nforge-previous-tag: 41\nforge-step: finished\n")
                .as_deref(),
            Some("41")
        );
        assert_eq!(previous_tag("forge-previous-tag: (none)\n"), None);
        assert_eq!(previous_tag("forge-step: inspect\n"), None);
        assert_eq!(not_running("forge-not-running: (none)\n"), Some(vec![]));
        assert_eq!(
            not_running("forge-not-running: web worker\n"),
            Some(vec!["web".to_owned(), "worker".to_owned()])
        );
        assert_eq!(not_running("forge-running-unknown: no docker\n"), None);
        assert_eq!(
            running_unknown("forge-running-unknown: no docker\n").as_deref(),
            Some("no docker")
        );
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn markers_are_read_back() {
        assert_eq!(
            failed_step(
                "forge-step: pull\n",
                "x\nforge-step-failed: pull (exit 1)\n"
            )
            .as_deref(),
            Some("pull")
        );
        assert_eq!(
            failed_step(
                "",
                "forge-step-failed: write-compose: compose file checksum mismatch"
            )
            .as_deref(),
            Some("write-compose")
        );
        // No marker (stopped, or cut off by SSM's output limit): the step that was running.
        assert_eq!(
            failed_step("forge-step: pull\nforge-step: up\n", "...").as_deref(),
            Some("up")
        );
        assert_eq!(failed_step("forge-step: finished\n", ""), None);
        assert_eq!(
            deployed_tag("forge-step: finished\nforge-deployed-tag: 42\n").as_deref(),
            Some("42")
        );
        assert_eq!(
            installed_tag("forge-step: install\nforge-image-tag: (none) -> 41\nforge-step: up\n")
                .as_deref(),
            Some("41")
        );
        assert_eq!(installed_tag("forge-step: install\n"), None);
    }
}
