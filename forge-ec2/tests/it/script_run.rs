//! The generated deploy script runs for real under bash (and dash, as the SSM agent may start
//! it with `sh`) in a temp directory, with a fake `docker` and a fake `forge-refresh-env` on
//! PATH that record their calls. Only docker and the refresher are fakes: every other command
//! (base64, sha256sum, mktemp, grep, sed, mv) is the real one the instance would run.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use forge_ec2::script::failed_step;
use forge_ec2::{DeployRequest, RollbackRequest, Targets, render_rollback_script, render_script};

const COMPOSE: &str = "services:\n  web:\n    image: \"registry.example/web:${IMAGE_TAG}\"\n  worker:\n    image: \"registry.example/worker:${IMAGE_TAG}\"\n";

const FAKE_DOCKER: &str = r#"#!/bin/bash
# Fake docker: records each call; behaviour from FAKE_FAIL / FAKE_NO_PLUGIN.
echo "docker $*" >> "$FAKE_LOG"
case "$*" in
  "compose version")
    [ -n "${FAKE_NO_PLUGIN:-}" ] && exit 1
    exit 0 ;;
  *" pull"*)
    echo "pull-sees IMAGE_TAG=$(sed -n 's/^IMAGE_TAG=//p' .env)" >> "$FAKE_LOG"
    if [ "${FAKE_FAIL:-}" = pull ]; then echo "Error response from daemon: pull access denied" >&2; exit 18; fi ;;
  *" up -d"*)
    [ "${FAKE_FAIL:-}" = up ] && exit 1 ;;
  *" config --services"*)
    printf 'web\nworker\n' ;;
  *" ps --services --status running"*)
    printf 'worker\nweb\n' ;;
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

    fn run_with(&self, shell: &str, script: &str, env: &[(&str, &str)]) -> Output {
        let path = self.root.join("_script.sh");
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
        cmd.output().unwrap()
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
            && calls[pos("refresh-env")].ends_with("svc/.env"),
        "{calls:#?}"
    );
    // The tag is already in .env when pull runs, and refresh-env came before both.
    assert!(pos("refresh-env") < pos("pull-sees IMAGE_TAG=42"));
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
            "backup",
            "write-compose",
            "refresh-env",
            "set-image-tag",
            "pull",
            "up",
            "check-running",
            "finished"
        ]
    );
    assert_eq!(
        forge_ec2::script::deployed_tag(&stdout).as_deref(),
        Some("42")
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
    assert!(stderr.contains("forge-undo: restored"), "{stderr}");
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
    let mut names: Vec<String> = std::fs::read_dir(&sb.service)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".env", ".env.previous", "docker-compose.yml"],
        "no backup files left"
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
    let leftovers: Vec<_> = std::fs::read_dir(&sb.service)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temp file left behind: {leftovers:?}");
}

#[test]
fn starts_under_sh_and_falls_back_to_docker_compose() {
    let sb = Sandbox::new("svc");
    let legacy = sb.root.join("bin/docker-compose");
    std::fs::write(&legacy, "#!/bin/bash\necho \"docker-compose $*\" >> \"$FAKE_LOG\"\n[ \"$1 $2 $3\" = \"-f docker-compose.yml config\" ] && printf 'web\\nworker\\n'\n[ \"$3 $4\" = \"ps --services\" ] && printf 'web\\nworker\\n'\nexit 0\n").unwrap();
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
            .any(|c| c == "docker-compose -f docker-compose.yml pull --quiet"),
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
    rollback.to_tag = Some("41".to_owned());
    rollback.compose_file = Some(COMPOSE.as_bytes().to_vec());
    shellcheck(
        &render_rollback_script(&rollback),
        "rollback to a named tag",
    );
}

/// The script is the product `forge ec2 render-script` shows and SSM runs: any change to it
/// must be a reviewed snapshot change.
#[test]
fn rendered_scripts_snapshot() {
    let mut deploy = request("/opt/dagster", "20261126.3");
    deploy.parameters_region = Some("eu-west-1".to_owned());
    insta::assert_snapshot!("deploy_script", render_script(&deploy));
    let rollback = RollbackRequest::new(Targets::parse("tag:a=b").unwrap(), "/opt/dagster");
    insta::assert_snapshot!("rollback_script", render_rollback_script(&rollback));
}
