//! `cargo xtask demo`: the whole release flow on an embedded default, with nothing installed
//! beyond Rust and git. It builds a sandbox — OCI-layout directories as the Dev/QA/Prod
//! registries (QA and Prod pre-provisioned, as the Platform team would), a small deterministic
//! image in Dev, a local Ledger of Argo CD Applications and a `forge.toml` — then drives the
//! real `forge` binary through promotions, refusals, a rollback and an audit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use forge_testkit::oci::{write_empty_layout, write_image};

use crate::util::{cargo, root, run_cmd};

const SERVICE: &str = "payments";
const REPOSITORY: &str = "payments/api";
const ENVIRONMENTS: &[&str] = &["dev", "qa", "prod"];
/// Two CI builds, so the rollback has somewhere to go.
const BUILDS: &[&str] = &["1001", "1002"];

/// Runs the demo in `target/demo` (wiped first), or in `--dir DIR`.
pub fn demo(args: &[String]) -> Result<(), String> {
    // `--no-build` reuses the forge binary `cargo test` just built (CI), saving a rebuild with
    // the non-test feature set.
    let no_build = args.iter().any(|a| a == "--no-build");
    let rest: Vec<&String> = args.iter().filter(|a| *a != "--no-build").collect();
    let dir = match rest.as_slice() {
        [] => root().join("target/demo"),
        [flag, dir] if *flag == "--dir" => PathBuf::from(dir),
        _ => return Err("usage: cargo xtask demo [--dir DIR] [--no-build]".into()),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| e.to_string())?;

    let forge = crate::util::target_dir().join("debug/forge");
    if !no_build || !forge.exists() {
        run_cmd(Command::new(cargo()).args([
            "build",
            "--quiet",
            "-p",
            "forge-cli",
            "--bin",
            "forge",
        ]))?;
    }

    banner("Sandbox");
    let mut digests = Vec::new();
    for build in BUILDS {
        digests.push(write_image(
            &dir.join("registries/dev").join(REPOSITORY),
            build,
        )?);
    }
    for env in &ENVIRONMENTS[1..] {
        // Pre-provisioned, empty repositories: Forge never creates one.
        write_empty_layout(&dir.join("registries").join(env).join(REPOSITORY))?;
    }
    write_ledger(&dir)?;
    write(&dir.join("forge.toml"), config())?;
    say(&format!("sandbox:   {}", dir.display()));
    say(&format!(
        "registries: oci layouts under registries/{{dev,qa,prod}}/{REPOSITORY} (qa, prod empty)"
    ));
    say(&format!(
        "CI builds in Dev: {} -> {}, {} -> {}",
        BUILDS[0], digests[0], BUILDS[1], digests[1]
    ));
    say(
        "ledger:    ledger.git (bare), apps/{env}/payments.yaml = Argo CD Applications at tag 1000",
    );

    let demo = Demo {
        forge,
        dir: dir.clone(),
    };
    demo.run("Check the config", &["config", "check"], true)?;
    for build in BUILDS {
        demo.run(
            &format!("CI pushed build {build}: record it for Dev (verifies the tag exists in Dev)"),
            &[
                "promote",
                "--service",
                SERVICE,
                "--to",
                "dev",
                "--tag",
                build,
                "--requested-by",
                "ci@example.com",
            ],
            true,
        )?;
        demo.run(
            "Promote Dev -> QA (tag read from Dev's Ledger entry, bytes copied, digest verified)",
            &[
                "promote",
                "--service",
                SERVICE,
                "--to",
                "qa",
                "--requested-by",
                "alice@example.com",
            ],
            true,
        )?;
        let evidence = dir.join(format!("evidence-prod-{build}.json"));
        demo.run(
            "Promote QA -> Prod with an approver who is not the requester",
            &[
                "promote",
                "--service",
                SERVICE,
                "--to",
                "prod",
                "--requested-by",
                "alice@example.com",
                "--approved-by",
                "bob@example.com",
                "--evidence",
                evidence.to_str().ok_or("non-UTF-8 sandbox path")?,
            ],
            true,
        )?;
    }
    demo.run(
        "Status: the same digest everywhere",
        &["status", "--service", SERVICE],
        true,
    )?;
    demo.run(
        "Refused: self-approval for Prod (case-insensitive identities)",
        &[
            "promote",
            "--service",
            SERVICE,
            "--to",
            "prod",
            "--requested-by",
            "alice@example.com",
            "--approved-by",
            "Alice@Example.com",
        ],
        false,
    )?;
    demo.run(
        "Refused: the mutable tag `latest`",
        &[
            "promote",
            "--service",
            SERVICE,
            "--to",
            "dev",
            "--tag",
            "latest",
        ],
        false,
    )?;
    demo.run(
        "Rollback Prod to the previous tag (proven to still have its recorded digest)",
        &[
            "rollback",
            "--service",
            SERVICE,
            "--env",
            "prod",
            "--requested-by",
            "oncall@example.com",
        ],
        true,
    )?;
    demo.run(
        "Audit: history rebuilt from Ledger commits alone",
        &["audit", "--service", SERVICE],
        true,
    )?;

    let status = demo.output(&["status", "--service", SERVICE, "--output", "json"])?;
    summary(&status, &dir)
}

struct Demo {
    forge: PathBuf,
    dir: PathBuf,
}

impl Demo {
    /// Runs one `forge` step in the sandbox, showing the command and what it printed. A step
    /// that should be refused must exit non-zero, and one that should succeed must exit 0.
    fn run(&self, title: &str, args: &[&str], should_succeed: bool) -> Result<(), String> {
        banner(title);
        say(&format!("$ forge {}", args.join(" ")));
        let out = Command::new(&self.forge)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("TF_BUILD")
            .env_remove("GITHUB_ACTIONS")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.forge.display()))?;
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            say(&format!("  {line}"));
        }
        match (should_succeed, out.status.success()) {
            (true, true) => Ok(()),
            (false, false) => {
                say(&format!(
                    "  -> refused as expected ({}), nothing written",
                    out.status
                ));
                Ok(())
            }
            (true, false) => Err(format!(
                "demo step failed: forge {} ({})",
                args.join(" "),
                out.status
            )),
            (false, true) => Err(format!(
                "demo step should have been refused: forge {}",
                args.join(" ")
            )),
        }
    }

    fn output(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.forge)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("cannot run forge: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "forge {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn summary(status_json: &str, dir: &Path) -> Result<(), String> {
    let status: serde_json::Value = serde_json::from_str(status_json)
        .map_err(|e| format!("forge status --output json is not JSON: {e}"))?;
    banner("Summary");
    let rows = status["environments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    say(&format!(
        "{:<6} {:<6} {:<73} {}",
        "env", "tag", "digest", "drift"
    ));
    for row in &rows {
        say(&format!(
            "{:<6} {:<6} {:<73} {}",
            row["env"].as_str().unwrap_or("?"),
            row["tag"].as_str().unwrap_or("?"),
            row["digest"].as_str().unwrap_or("(unresolved)"),
            if row["drift"].as_bool().unwrap_or(false) {
                "DRIFT"
            } else {
                "ok"
            },
        ));
    }
    say("");
    say("promoted 1001 and 1002 dev -> qa -> prod with digests verified after every copy;");
    say("refused a self-approval and `latest` with nothing written; rolled Prod back to 1001;");
    say(&format!(
        "evidence records: {}/evidence-prod-*.json; Ledger: {}/ledger.git",
        dir.display(),
        dir.display()
    ));
    say("next: `cargo xtask ci` runs every test against real registries, moto and git.");
    Ok(())
}

fn banner(title: &str) {
    println!("\n==> {title}");
}

fn say(line: &str) {
    println!("{line}");
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    std::fs::write(path, contents).map_err(|e| format!("write {}: {e}", path.display()))
}

fn application(env: &str) -> String {
    let sync = if env == "prod" {
        "  # Prod syncs by hand: `forge ledger lint` checks there is no automated sync here.\n"
            .to_owned()
    } else {
        "  syncPolicy:\n    automated:\n      prune: true\n      selfHeal: true\n".to_owned()
    };
    format!(
        r#"# Payments API in {env}. Managed by Forge: `forge promote` changes only the image tag below.
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: payments-{env}
  namespace: argocd
spec:
  project: default
  source:
    repoURL: https://example.invalid/platform/charts.git
    path: charts/payments
    targetRevision: main
    helm:
      parameters:
        - name: image.repository
          value: registry.example.invalid/payments/api
        - name: image.tag
          value: "1000"   # the build id running in {env}

  destination:
    server: https://kubernetes.default.svc
    namespace: payments
{sync}"#
    )
}

fn git(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Platform Team")
        .env("GIT_AUTHOR_EMAIL", "platform@example.com")
        .env("GIT_COMMITTER_NAME", "Platform Team")
        .env("GIT_COMMITTER_EMAIL", "platform@example.com")
        .output()
        .map_err(|e| format!("cannot run git (is it installed?): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn write_ledger(dir: &Path) -> Result<(), String> {
    let seed = dir.join("ledger-seed");
    std::fs::create_dir_all(&seed).map_err(|e| e.to_string())?;
    git(
        dir,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            "ledger.git",
        ],
    )?;
    git(&seed, &["init", "--quiet", "--initial-branch=main"])?;
    for env in ENVIRONMENTS {
        write(
            &seed.join(format!("apps/{env}/{SERVICE}.yaml")),
            application(env),
        )?;
    }
    git(&seed, &["add", "-A"])?;
    git(
        &seed,
        &[
            "commit",
            "--quiet",
            "-m",
            "Ledger: payments in dev, qa and prod",
        ],
    )?;
    git(&seed, &["push", "--quiet", "../ledger.git", "main"])?;
    std::fs::remove_dir_all(&seed).map_err(|e| e.to_string())
}

fn config() -> String {
    format!(
        r##"# The demo's Forge config: OCI-layout directories stand in for the ECR registries.
[ledger]
repo = "ledger.git"
branch = "main"
path = "apps/{{env}}/{{service}}.yaml"

[auth]
token = "none"                 # local registries: no AWS credentials needed

[policy]
tag_pattern = "^[0-9]+$"
support = "#platform-support"

[environments.dev]
registry = "oci:registries/dev"
approval = "none"
sync = "auto"

[environments.qa]
from = "dev"
registry = "oci:registries/qa"
approval = "optional"
sync = "auto"

[environments.prod]
from = "qa"
registry = "oci:registries/prod"
approval = "required"
sync = "manual"

[services.{SERVICE}]
repository = "{REPOSITORY}"
"##
    )
}
