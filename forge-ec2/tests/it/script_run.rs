//! The generated deploy script runs for real under bash (and dash, as the SSM agent may start
//! it with `sh`) in a temp directory, with a fake `docker` and a fake `forge-refresh-env` on
//! PATH that record their calls. Only docker and the refresher are fakes: every other command
//! (base64, sha256sum, mktemp, grep, sed, mv) is the real one the instance would run.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use forge_ec2::script::failed_step;
use forge_ec2::{
    DeployRequest, InspectRequest, RollbackRequest, Targets, render_inspect_script,
    render_rollback_script, render_script,
};

const COMPOSE: &str = "services:\n  web:\n    image: \"registry.example/web:${IMAGE_TAG}\"\n  worker:\n    image: \"registry.example/worker:${IMAGE_TAG}\"\n";

const FAKE_DOCKER: &str = r#"#!/bin/bash
# Fake docker: records each call; behaviour from FAKE_FAIL / FAKE_NO_PLUGIN / FAKE_PULLED /
# FAKE_STOPPED (web is not running) / FAKE_NO_DOCKER (as if not installed).
[ -n "${FAKE_NO_DOCKER:-}" ] && exit 127
echo "docker $*" >> "$FAKE_LOG"
# The files a compose call reads: --env-file (else .env) and -f.
env_file=.env; compose_file=docker-compose.yml; args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --env-file) env_file="${args[i+1]}" ;;
    -f) compose_file="${args[i+1]}" ;;
  esac
done
tag_in() { sed -n 's/^IMAGE_TAG=//p' "$1" 2>/dev/null; }
case "$*" in
  "compose version")
    [ -n "${FAKE_NO_PLUGIN:-}" ] && exit 1
    exit 0 ;;
  *" pull"*)
    echo "pull-sees IMAGE_TAG=$(tag_in "$env_file")" >> "$FAKE_LOG"
    echo "pull-live IMAGE_TAG=$(tag_in .env)" >> "$FAKE_LOG"
    if [ "${FAKE_FAIL:-}" = pull ]; then echo "Error response from daemon: pull access denied" >&2; exit 18; fi
    if [ "${FAKE_FAIL:-}" = pull-hangs ]; then sleep 30; fi ;;
  *" up -d"*)
    [ "${FAKE_FAIL:-}" = up ] && exit 1 ;;
  *" config --services"*)
    printf 'web\nworker\n' ;;
  *" config"*)
    # Like `docker compose config`: the compose file with ${IMAGE_TAG} interpolated.
    tag="$(tag_in "$env_file")"
    sed "s/\${IMAGE_TAG}/$tag/g" "$compose_file" ;;
  "image inspect "*)
    # RepoDigests of the pulled image: FAKE_PULLED, else what the registry would have.
    printf '%s\n' "${FAKE_PULLED:-registry.example/web@sha256:$(printf 'a%.0s' {1..64})}" ;;
  *" ps --services --filter status=running"*)
    if [ -n "${FAKE_STOPPED:-}" ]; then printf 'worker\n'; else printf 'worker\nweb\n'; fi ;;
  *" ps -q")
    printf 'c-web\nc-worker\n' ;;
  *" ps -a -q "*)
    echo "c-${*: -1}" ;;
  "inspect --type container --format "*)
    # A container's state (FAKE_STOPPED: web crashed; done: web finished with exit 0), and the
    # image it was created from (as the compose file names it) with that image's id.
    svc="${*: -1}"; svc="${svc#c-}"
    running=true; code=0
    if [ "$svc" = web ] && [ "${FAKE_STOPPED:-}" = 1 ]; then running=false; code=137; fi
    if [ "$svc" = web ] && [ "${FAKE_STOPPED:-}" = done ]; then running=false; code=0; fi
    case "$*" in
      *Config.Image*) echo "$running registry.example/$svc:$(tag_in .env) sha256:img-$svc" ;;
      *) echo "$running $code" ;;
    esac ;;
  *" ps "*)
    echo "unknown flag (docker-compose v1 has only --filter)" >&2; exit 1 ;;
esac
exit 0
"#;

const FAKE_REFRESH: &str = r#"#!/bin/bash
# Fake forge-refresh-env: records its arguments and rewrites .env keeping IMAGE_TAG, like the real one.
echo "refresh-env $*" >> "$FAKE_LOG"
file=""
while [ $# -gt 0 ]; do case "$1" in --file) file="$2"; shift 2 ;; *) shift ;; esac; done
{ echo "DB_PASSWORD='s3cret'"; grep '^IMAGE_TAG=' "$file" 2>/dev/null || true; } > "$file.tmp"
mv "$file.tmp" "$file"
"#;

struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    service: PathBuf,
}

impl Sandbox {
    fn new(service_name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, body) in [("docker", FAKE_DOCKER), ("forge-refresh-env", FAKE_REFRESH)] {
            let p = bin.join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let service = root.join(service_name);
        Sandbox {
            _dir: dir,
            root,
            service,
        }
    }

    fn dir(&self) -> &str {
        self.service.to_str().unwrap()
    }

    /// `shell SCRIPT` in the sandbox, with the fakes first on PATH and `env` set.
    fn command(&self, shell: &str, script: &str, name: &str, env: &[(&str, &str)]) -> Command {
        let path = self.root.join(name);
        std::fs::write(&path, script).unwrap();
        let mut cmd = Command::new(shell);
        cmd.arg(&path)
            .current_dir(&self.root)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.root.join("bin").display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .env("FAKE_LOG", self.root.join("calls.log"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run_with(&self, shell: &str, script: &str, env: &[(&str, &str)]) -> Output {
        self.command(shell, script, "_script.sh", env)
            .output()
            .unwrap()
    }

    /// Starts a deploy of `tag` whose pull hangs, in its own process group (as the SSM agent
    /// runs it, so a signal to the group reaches docker too), and waits until the pull began.
    fn spawn_hanging_pull(&self, tag: &str, previous: &str) -> std::process::Child {
        let child = self
            .command(
                "bash",
                &render_script(&request(self.dir(), tag)),
                "_hanging.sh",
                &[("FAKE_FAIL", "pull-hangs")],
            )
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let waited = std::time::Instant::now();
        let started = format!("pull-live IMAGE_TAG={previous}");
        while !self.calls().contains(&started) {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(20),
                "pull never started: {:#?}",
                self.calls()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child
    }

    fn run(&self, script: &str, env: &[(&str, &str)]) -> Output {
        self.run_with("bash", script, env)
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.root.join("calls.log"));
    }

    /// The service directory's entries, sorted, without the lock file (which stays: a lock
    /// on a file that is deleted and re-created would not exclude anyone).
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.service)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != ".forge-deploy.lock")
            .collect();
        names.sort();
        names
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.service.join(name)).ok()
    }
}

fn request(dir: &str, tag: &str) -> DeployRequest {
    let mut r = DeployRequest::new(
        Targets::parse("tag:forge:dagster-enabled=true").unwrap(),
        COMPOSE.as_bytes().to_vec(),
        tag,
        dir,
    );
    r.parameters_path = Some("/forge/dagster".to_owned());
    r
}

/// The digest the fake docker reports for `registry.example/web` unless told otherwise.
const WEB_DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn pin(digest: &str) -> String {
    format!("registry.example/web@{digest}")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "script failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn env_tag(sb: &Sandbox, file: &str) -> Option<String> {
    sb.read(file)?
        .lines()
        .find_map(|l| l.strip_prefix("IMAGE_TAG=").map(str::to_owned))
}

#[test]
fn deploy_runs_refresh_then_tag_then_pull_then_up() {
    let sb = Sandbox::new("svc");
    let out = sb.run(&render_script(&request(sb.dir(), "42")), &[]);
    assert_ok(&out);
    let calls = sb.calls();
    let pos = |needle: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {calls:#?}"))
    };
    assert!(
        calls[pos("refresh-env")].contains("--path /forge/dagster --file ")
            && calls[pos("refresh-env")].contains("svc/.forge-env."),
        "refresh-env writes the staged .env: {calls:#?}"
    );
    // Pull sees the new tag through the staged files while the live .env is untouched, and
    // refresh-env came before both.
    assert!(pos("refresh-env") < pos("pull-sees IMAGE_TAG=42"));
    assert_eq!(calls[pos("pull-sees") + 1], "pull-live IMAGE_TAG=");
    assert!(pos("pull-sees IMAGE_TAG=42") < pos("docker compose -f docker-compose.yml up -d"));
    assert_eq!(sb.read("docker-compose.yml").as_deref(), Some(COMPOSE));
    let env = sb.read(".env").unwrap();
    assert!(
        env.contains("DB_PASSWORD='s3cret'\n") && env.ends_with("IMAGE_TAG=42\n"),
        "{env}"
    );
    assert_eq!(
        sb.read(".env.previous"),
        None,
        "first deploy has no previous tag"
    );
    let mode = std::fs::metadata(sb.service.join(".env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let stdout = text(&out.stdout);
    let steps: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("forge-step: "))
        .collect();
    assert_eq!(
        steps,
        [
            "prepare",
            "check-not-older",
            "write-compose",
            "refresh-env",
            "set-image-tag",
            "pull",
            "install",
            "up",
            "check-running",
            "finished"
        ]
    );
    assert_eq!(
        forge_ec2::script::deployed_tag(&stdout).as_deref(),
        Some("42")
    );
    assert_eq!(
        sb.files(),
        [".env", "docker-compose.yml"],
        "no staged files left"
    );
}

#[test]
fn redeploy_records_previous_and_rollback_restores_it() {
    let sb = Sandbox::new("svc");
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "41")), &[]));
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "42")), &[]));
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("42"));
    assert_eq!(env_tag(&sb, ".env.previous").as_deref(), Some("41"));
    // The same tag again must not overwrite the rollback point.
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "42")), &[]));
    assert_eq!(env_tag(&sb, ".env.previous").as_deref(), Some("41"));

    sb.clear_calls();
    let rollback = RollbackRequest::new(Targets::parse("tag:a=b").unwrap(), sb.dir());
    let out = sb.run(&render_rollback_script(&rollback), &[]);
    assert_ok(&out);
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("41"));
    assert_eq!(
        env_tag(&sb, ".env.previous").as_deref(),
        Some("42"),
        "a second rollback goes forward again"
    );
    assert!(
        sb.calls().iter().any(|c| c == "pull-sees IMAGE_TAG=41"),
        "{:#?}",
        sb.calls()
    );
    assert!(sb.calls().iter().any(|c| c.ends_with("up -d")));
    assert!(text(&out.stdout).contains("forge-rollback-to: 41"));
    assert_eq!(
        sb.read("docker-compose.yml").as_deref(),
        Some(COMPOSE),
        "rollback keeps the compose file"
    );

    let mut named = rollback.clone();
    named.to_tag = Some("40".to_owned());
    assert_ok(&sb.run(&render_rollback_script(&named), &[]));
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("40"));
    assert_eq!(env_tag(&sb, ".env.previous").as_deref(), Some("41"));
}

#[test]
fn rollback_without_a_previous_deploy_says_what_to_do() {
    let sb = Sandbox::new("svc");
    std::fs::create_dir_all(&sb.service).unwrap();
    let rollback = RollbackRequest::new(Targets::parse("tag:a=b").unwrap(), sb.dir());
    let out = sb.run(&render_rollback_script(&rollback), &[]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("forge-step-failed: read-previous-tag: no previous deploy is recorded")
            && stderr.contains("--to-tag"),
        "{stderr}"
    );
    assert!(!sb.calls().iter().any(|c| c.contains("pull")));
}

#[test]
fn failing_pull_stops_and_names_the_step() {
    let sb = Sandbox::new("svc");
    let out = sb.run(
        &render_script(&request(sb.dir(), "42")),
        &[("FAKE_FAIL", "pull")],
    );
    assert_eq!(
        out.status.code(),
        Some(18),
        "the failing command's exit code is kept"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("forge-step-failed: pull (exit 18)"),
        "{stderr}"
    );
    assert_eq!(
        failed_step(&text(&out.stdout), &stderr).as_deref(),
        Some("pull")
    );
    assert!(
        !sb.calls().iter().any(|c| c.contains("up -d")),
        "{:#?}",
        sb.calls()
    );
    assert!(!text(&out.stdout).contains("forge-step: up"));
}

#[test]
fn failure_before_up_restores_the_previous_files() {
    let sb = Sandbox::new("svc");
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "40")), &[]));
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "41")), &[]));
    let before: Vec<Option<String>> = [".env", ".env.previous", "docker-compose.yml"]
        .iter()
        .map(|f| sb.read(f))
        .collect();
    let mut changed = request(sb.dir(), "42");
    changed.compose_file = b"services:\n  web:\n    image: other:${IMAGE_TAG}\n".to_vec();
    let out = sb.run(&render_script(&changed), &[("FAKE_FAIL", "pull")]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("forge-undo"),
        "the pull used staged files; nothing live changed to undo: {stderr}"
    );
    let after: Vec<Option<String>> = [".env", ".env.previous", "docker-compose.yml"]
        .iter()
        .map(|f| sb.read(f))
        .collect();
    assert_eq!(
        after, before,
        "a failed pull leaves the files of the running release"
    );
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("41"));
    let mode = std::fs::metadata(sb.service.join(".env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        sb.files(),
        [".env", ".env.previous", "docker-compose.yml"],
        "no staged or backup files left"
    );

    // A failure after `up` started keeps the new files (they describe the new containers).
    let out = sb.run(
        &render_script(&request(sb.dir(), "42")),
        &[("FAKE_FAIL", "up")],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("forge-step-failed: up (exit 1)"));
    assert!(!text(&out.stderr).contains("forge-undo"));
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("42"));
    assert_eq!(env_tag(&sb, ".env.previous").as_deref(), Some("41"));
}

#[test]
fn compose_checksum_mismatch_is_refused_and_changes_nothing() {
    let sb = Sandbox::new("svc");
    std::fs::create_dir_all(&sb.service).unwrap();
    std::fs::write(sb.service.join("docker-compose.yml"), "old: true\n").unwrap();
    let script = render_script(&request(sb.dir(), "42"));
    let sha = forge_ec2::script::sha256_hex(COMPOSE.as_bytes());
    assert!(script.contains(&sha));
    // Corruption in transit: one base64 character of the payload changed.
    let b64_line = script
        .lines()
        .skip_while(|l| !l.contains("<<'FORGE_COMPOSE_B64'"))
        .nth(1)
        .unwrap()
        .to_owned();
    let mut corrupted = b64_line.clone().into_bytes();
    corrupted[4] = if corrupted[4] == b'A' { b'B' } else { b'A' };
    let tampered = script.replacen(&b64_line, std::str::from_utf8(&corrupted).unwrap(), 1);
    let out = sb.run(&tampered, &[]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("forge-step-failed: write-compose: compose file checksum mismatch"),
        "{stderr}"
    );
    assert_eq!(
        sb.read("docker-compose.yml").as_deref(),
        Some("old: true\n")
    );
    assert_eq!(sb.read(".env"), None);
    assert!(
        sb.calls().iter().all(|c| c == "docker compose version"),
        "{:#?}",
        sb.calls()
    );
    assert_eq!(
        sb.files(),
        ["docker-compose.yml"],
        "no staged file left behind"
    );
}

#[test]
fn starts_under_sh_and_falls_back_to_docker_compose() {
    let sb = Sandbox::new("svc");
    let legacy = sb.root.join("bin/docker-compose");
    // docker-compose v1: no `ps --status`, only `ps --filter status=running`.
    std::fs::write(&legacy, "#!/bin/bash\necho \"docker-compose $*\" >> \"$FAKE_LOG\"\n[ \"$1 $2 $3\" = \"-f docker-compose.yml config\" ] && printf 'web\\nworker\\n'\ncase \"$*\" in *' ps --services --filter status=running') printf 'web\\nworker\\n' ;; *' ps '*) echo 'No such option: --status' >&2; exit 1 ;; esac\nexit 0\n").unwrap();
    std::fs::set_permissions(&legacy, std::fs::Permissions::from_mode(0o755)).unwrap();
    // dash, like an agent that runs `sh _script.sh`: the script re-executes itself under bash.
    let out = sb.run_with(
        "sh",
        &render_script(&request(sb.dir(), "42")),
        &[("FAKE_NO_PLUGIN", "1")],
    );
    assert_ok(&out);
    let calls = sb.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("docker-compose --env-file .forge-env.")
                && c.ends_with("pull --quiet")),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c == "docker-compose -f docker-compose.yml up -d"),
        "{calls:#?}"
    );
}

#[test]
fn awkward_service_dir_is_quoted() {
    let sb = Sandbox::new("my svc's $HOME `x`");
    let out = sb.run(&render_script(&request(sb.dir(), "v1.2.3")), &[]);
    assert_ok(&out);
    assert_eq!(sb.read("docker-compose.yml").as_deref(), Some(COMPOSE));
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("v1.2.3"));
}

fn shellcheck(script: &str, what: &str) {
    let Some(shellcheck) = forge_testkit::require_tool("shellcheck") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path: &Path = &dir.path().join("script.sh");
    std::fs::write(path, script).unwrap();
    let out = Command::new(shellcheck)
        .args(["--shell=bash", "--severity=style"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck found problems in the {what} script:\n{}\n--- script ---\n{script}",
        text(&out.stdout)
    );
}

#[test]
fn generated_scripts_pass_shellcheck() {
    let mut deploy = request("/opt/dagster", "42");
    deploy.parameters_region = Some("eu-west-1".to_owned());
    shellcheck(&render_script(&deploy), "deploy");
    deploy.parameters_path = None;
    deploy.check_running = false;
    shellcheck(&render_script(&deploy), "minimal deploy");
    let mut rollback = RollbackRequest::new(Targets::parse("tag:a=b").unwrap(), "/opt/dagster");
    shellcheck(&render_rollback_script(&rollback), "rollback");
    rollback.only_from = Some("42".to_owned());
    shellcheck(
        &render_rollback_script(&rollback),
        "rollback from a named tag",
    );
    rollback.to_tag = Some("41".to_owned());
    rollback.compose_file = Some(COMPOSE.as_bytes().to_vec());
    shellcheck(
        &render_rollback_script(&rollback),
        "rollback to a named tag",
    );
    shellcheck(&render_inspect_script(&inspect("/opt/dagster")), "inspect");
}

fn inspect(dir: &str) -> InspectRequest {
    InspectRequest::new(Targets::parse("tag:a=b").unwrap(), dir)
}

/// The inspect script reports the tags and which services run, and changes nothing: no file
/// in the service directory is written, not even the lock, and docker is only asked questions
/// (no pull, no up). Under `sh` it re-executes itself under bash like the deploy script.
#[test]
fn inspect_reads_the_tags_and_changes_nothing() {
    let sb = Sandbox::new("svc");
    let out = sb.run(&render_script(&request(sb.dir(), "41")), &[]);
    assert_ok(&out);
    let out = sb.run(&render_script(&request(sb.dir(), "42")), &[]);
    assert_ok(&out);
    let snapshot = |sb: &Sandbox| -> Vec<(String, Option<String>)> {
        sb.files()
            .into_iter()
            .map(|f| {
                let body = sb.read(&f);
                (f, body)
            })
            .collect()
    };
    let before = snapshot(&sb);
    sb.clear_calls();
    let inspect_script = render_inspect_script(&inspect(sb.dir()));
    for shell in ["bash", "sh"] {
        let out = sb.run_with(shell, &inspect_script, &[]);
        assert_ok(&out);
        let stdout = text(&out.stdout);
        assert_eq!(
            forge_ec2::script::deployed_tag(&stdout).as_deref(),
            Some("42"),
            "{stdout}"
        );
        assert!(stdout.contains("forge-previous-tag: 41\n"), "{stdout}");
        assert_eq!(
            forge_ec2::script::not_running(&stdout),
            Some(vec![]),
            "{stdout}"
        );
    }
    assert_eq!(before, snapshot(&sb));
    let calls = sb.calls();
    assert!(!calls.is_empty());
    let read_only = |calls: &[String]| {
        for call in calls {
            assert!(
                call == "docker compose version"
                    || call.ends_with("config --services")
                    || call.ends_with("ps --services --filter status=running")
                    || call.ends_with("ps -q")
                    || call.contains(" ps -a -q ")
                    || call.starts_with("docker inspect --type container --format ")
                    || call.starts_with("docker image inspect --format "),
                "docker was asked to do something: {call}"
            );
        }
    };
    read_only(&calls);

    // With the promoted digest: the web container (the pinned repository) is checked against
    // it, the worker is not; a container from other bytes is named.
    let mut pinned = inspect(sb.dir());
    pinned.image_pin = Some(pin(WEB_DIGEST));
    let pinned_script = render_inspect_script(&pinned);
    let out = sb.run(&pinned_script, &[]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert_eq!(
        forge_ec2::script::running_pinned_checked(&stdout),
        Some(1),
        "{stdout}"
    );
    assert_eq!(
        forge_ec2::script::running_other_digest(&stdout),
        Vec::<String>::new()
    );
    let other = format!("registry.example/web@sha256:{}", "b".repeat(64));
    let out = sb.run(&pinned_script, &[("FAKE_PULLED", other.as_str())]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert_eq!(
        forge_ec2::script::running_other_digest(&stdout),
        [format!("c-web registry.example/web:42 {other}")],
        "{stdout}"
    );
    // A web container that is not running is not checked (and status then says none was).
    let out = sb.run(&pinned_script, &[("FAKE_STOPPED", "1")]);
    assert_ok(&out);
    assert_eq!(
        forge_ec2::script::running_pinned_checked(&text(&out.stdout)),
        Some(0)
    );
    read_only(&sb.calls());
    assert!(
        sb.calls()
            .iter()
            .any(|c| c == "docker image inspect --format {{range .RepoDigests}}{{println .}}{{end}} -- sha256:img-web"),
        "{:#?}",
        sb.calls()
    );

    // A crashed service is named; a one-shot service that finished is not; docker missing is
    // reported; none of them is a failure of the script.
    let out = sb.run(&inspect_script, &[("FAKE_STOPPED", "1")]);
    assert_ok(&out);
    assert_eq!(
        forge_ec2::script::not_running(&text(&out.stdout)),
        Some(vec!["web".to_owned()])
    );
    let out = sb.run(&inspect_script, &[("FAKE_STOPPED", "done")]);
    assert_ok(&out);
    assert_eq!(
        forge_ec2::script::not_running(&text(&out.stdout)),
        Some(vec![])
    );
    let out = sb.run(&inspect_script, &[("FAKE_NO_DOCKER", "1")]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert_eq!(forge_ec2::script::not_running(&stdout), None, "{stdout}");
    assert!(
        forge_ec2::script::running_unknown(&stdout)
            .is_some_and(|why| why.contains("docker compose cannot read")),
        "{stdout}"
    );
    assert_eq!(
        forge_ec2::script::deployed_tag(&stdout).as_deref(),
        Some("42")
    );
    assert!(
        !text(&out.stderr).contains("forge-step-failed"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(before, snapshot(&sb));

    // Never deployed here: a failed step that says so, and still nothing created.
    let empty = Sandbox::new("never");
    let out = empty.run(&render_inspect_script(&inspect(empty.dir())), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        failed_step(&text(&out.stdout), &stderr).as_deref(),
        Some("inspect")
    );
    assert!(
        stderr.contains("does not exist on this instance: the service was never deployed here"),
        "{stderr}"
    );
    assert!(!empty.service.exists());
}

#[test]
fn rendered_scripts_snapshot() {
    let mut deploy = request("/opt/dagster", "20261126.3");
    deploy.parameters_region = Some("eu-west-1".to_owned());
    deploy.image_pin = Some(pin(WEB_DIGEST));
    insta::assert_snapshot!("deploy_script", render_script(&deploy));
    let rollback = RollbackRequest::new(Targets::parse("tag:a=b").unwrap(), "/opt/dagster");
    insta::assert_snapshot!("rollback_script", render_rollback_script(&rollback));
}

#[test]
fn a_pinned_deploy_switches_only_to_the_promoted_digest() {
    let sb = Sandbox::new("svc");
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "41")), &[]));
    let before: Vec<Option<String>> = [".env", ".env.previous", "docker-compose.yml"]
        .iter()
        .map(|f| sb.read(f))
        .collect();

    sb.clear_calls();
    // The registry's tag was re-pointed: docker pulled other bytes. Nothing switches.
    let mut pinned = request(sb.dir(), "42");
    pinned.image_pin = Some(pin(WEB_DIGEST));
    let other = format!("registry.example/web@sha256:{}", "b".repeat(64));
    let out = sb.run(&render_script(&pinned), &[("FAKE_PULLED", &other)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "forge-step-failed: verify-digest: registry.example/web:42 was pulled as {other}, not {}",
            pin(WEB_DIGEST)
        )),
        "{stderr}"
    );
    let after: Vec<Option<String>> = [".env", ".env.previous", "docker-compose.yml"]
        .iter()
        .map(|f| sb.read(f))
        .collect();
    assert_eq!(after, before, "a digest mismatch changes no live file");
    assert_eq!(sb.files(), [".env", "docker-compose.yml"]);
    assert!(!sb.calls().iter().any(|c| c.contains("up -d")));

    // A compose file that does not run the pinned repository cannot prove anything.
    let mut elsewhere = pinned.clone();
    elsewhere.image_pin = Some(format!("registry.example/api@{WEB_DIGEST}"));
    let out = sb.run(&render_script(&elsewhere), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no service in docker-compose.yml runs registry.example/api:42")
            && stderr.contains("registry.example/web:42 registry.example/worker:42")
            && stderr.contains("use registry.example/api:${IMAGE_TAG}"),
        "{stderr}"
    );
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("41"));

    // The promoted bytes: the deploy goes through and says which digest it proved.
    sb.clear_calls();
    let out = sb.run(&render_script(&pinned), &[]);
    assert_ok(&out);
    assert!(
        text(&out.stdout).contains(&format!("forge-image-digest: {}", pin(WEB_DIGEST))),
        "{}",
        text(&out.stdout)
    );
    let calls = sb.calls();
    let inspect = calls
        .iter()
        .position(|c| c == "docker image inspect --format {{range .RepoDigests}}{{println .}}{{end}} -- registry.example/web:42")
        .unwrap_or_else(|| panic!("{calls:#?}"));
    let up = calls.iter().position(|c| c.ends_with("up -d")).unwrap();
    assert!(inspect < up, "{calls:#?}");
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("42"));
    assert_eq!(env_tag(&sb, ".env.previous").as_deref(), Some("41"));
}

#[test]
fn a_stopped_deploy_leaves_the_live_files_and_no_staged_ones() {
    let sb = Sandbox::new("svc");
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "41")), &[]));
    let child = sb.spawn_hanging_pull("42", "41");
    let status = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("forge-step-failed: pull (stopped by SIGTERM)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("41"));
    assert_eq!(sb.files(), [".env", "docker-compose.yml"]);
}

#[test]
fn a_rerun_rollback_from_a_tag_leaves_instances_that_already_rolled_back() {
    let sb = Sandbox::new("svc");
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "41")), &[]));
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "42")), &[]));
    let mut rollback = RollbackRequest::new(Targets::parse("tag:a=b").unwrap(), sb.dir());
    rollback.only_from = Some("42".to_owned());
    let script = render_rollback_script(&rollback);

    let out = sb.run(&script, &[]);
    assert_ok(&out);
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("41"));
    assert_eq!(env_tag(&sb, ".env.previous").as_deref(), Some("42"));

    // The same rollback again (the pipeline retried it after another instance failed): this
    // instance runs 41 now, so it stays; without --from-tag it would go "back" to 42.
    sb.clear_calls();
    let out = sb.run(&script, &[]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("forge-skip: IMAGE_TAG is '41', not '42' (already rolled back?)"),
        "{stdout}"
    );
    assert_eq!(
        forge_ec2::script::deployed_tag(&stdout).as_deref(),
        Some("41")
    );
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("41"));
    assert_eq!(env_tag(&sb, ".env.previous").as_deref(), Some("42"));
    assert!(
        sb.calls().iter().all(|c| c == "docker compose version"),
        "{:#?}",
        sb.calls()
    );
}

#[test]
fn two_runs_in_one_service_directory_take_turns() {
    let sb = Sandbox::new("svc");
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "41")), &[]));
    // Another forge run holds the directory's lock for a moment.
    let holder = Command::new("flock")
        .arg(sb.service.join(".forge-deploy.lock"))
        .args(["-c", "sleep 1.5"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    sb.clear_calls();
    let started = std::time::Instant::now();
    let out = sb.run(&render_script(&request(sb.dir(), "42")), &[]);
    assert_ok(&out);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "the second run waited for the lock ({:?})",
        started.elapsed()
    );
    assert!(
        text(&out.stdout).contains("forge-wait: another forge run holds"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("42"));
    let _ = holder.wait_with_output();
}

#[test]
fn a_deploy_never_moves_an_instance_to_an_older_build() {
    let sb = Sandbox::new("svc");
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "0042")), &[]));
    sb.clear_calls();
    for older in ["41", "0041", "9"] {
        let out = sb.run(&render_script(&request(sb.dir(), older)), &[]);
        assert_eq!(out.status.code(), Some(1), "{older}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "forge-step-failed: check-not-older: refusing to move {} backwards from build 0042 to {older}",
                sb.dir()
            )) && stderr.contains(&format!("forge ec2 rollback --to-tag {older}")),
            "{stderr}"
        );
    }
    assert!(
        sb.calls().iter().all(|c| c == "docker compose version"),
        "nothing pulled: {:#?}",
        sb.calls()
    );
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("0042"));
    // The same build, a newer one and a non-numeric tag go through; a rollback may go back.
    for tag in ["42", "100", "v1"] {
        assert_ok(&sb.run(&render_script(&request(sb.dir(), tag)), &[]));
    }
    let mut rollback = RollbackRequest::new(Targets::parse("tag:a=b").unwrap(), sb.dir());
    rollback.to_tag = Some("41".to_owned());
    assert_ok(&sb.run(&render_rollback_script(&rollback), &[]));
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("41"));
}

#[test]
fn the_run_after_a_killed_one_cleans_up_and_restores_a_half_install() {
    let sb = Sandbox::new("svc");
    assert_ok(&sb.run(&render_script(&request(sb.dir(), "41")), &[]));
    // SSM cancels with SIGKILL: no trap runs, staged files (one holds the secrets) stay.
    let child = sb.spawn_hanging_pull("42", "41");
    let status = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait_with_output();
    assert!(
        sb.files().iter().any(|f| f.starts_with(".forge-env.")),
        "a killed run leaves its staged files: {:?}",
        sb.files()
    );
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("41"));

    // A run killed inside `install`: the new .env is in place, its backup still beside it.
    let old_env = sb.read(".env").unwrap();
    std::fs::write(sb.service.join(".env.forge-undo"), &old_env).unwrap();
    std::fs::write(sb.service.join(".env"), "IMAGE_TAG=99\n").unwrap();

    let out = sb.run(&render_script(&request(sb.dir(), "43")), &[]);
    assert_ok(&out);
    assert!(
        text(&out.stderr).contains("forge-recovered: a killed run left its install half done"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env_tag(&sb, ".env").as_deref(), Some("43"));
    assert_eq!(
        env_tag(&sb, ".env.previous").as_deref(),
        Some("41"),
        "the half-installed 99 never counted as deployed"
    );
    assert_eq!(
        sb.files(),
        [".env", ".env.previous", "docker-compose.yml"],
        "stale staged files and backups are gone"
    );
}
