//! `forge ledger …` end to end: the built binary against real git and file:// bare remotes,
//! including many concurrent `forge` PROCESSES writing to one Ledger.

use std::path::Path;
use std::process::{Output, Stdio};

use forge_testkit::{BareRemote, git, require_tool};

use crate::support::{assert_exit, assert_success, forge, forge_in};

const VALUES: &str = "# payments (qa)\nimage:\n  repository: registry.example/payments\n  tag: \"100\" # set by forge\n\nreplicas: 2\n";

fn values(tag: &str) -> String {
    VALUES.replace("\"100\"", &format!("\"{tag}\""))
}

fn run(args: &[&str]) -> Output {
    forge().args(args).output().expect("run forge")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Replaces what changes from run to run (temp paths, commit ids, timings) for snapshots.
fn normalise(s: &str, remote: Option<&BareRemote>) -> String {
    let mut s = s.to_owned();
    if let Some(remote) = remote {
        s = s.replace(&remote.url(), "[REMOTE]");
    }
    let hex40 = regex::Regex::new(r"\b[0-9a-f]{40}\b").expect("valid regex");
    let hex12 = regex::Regex::new(r"\b[0-9a-f]{12}\b").expect("valid regex");
    let elapsed = regex::Regex::new(r#""elapsed_ms": \d+"#).expect("valid regex");
    let s = hex40.replace_all(&s, "[COMMIT]");
    let s = hex12.replace_all(&s, "[SHORT]");
    elapsed
        .replace_all(&s, r#""elapsed_ms": "[MS]""#)
        .into_owned()
}

fn ledger(files: &[(&str, &str)]) -> Option<BareRemote> {
    require_tool("git")?;
    Some(BareRemote::seeded(files))
}

fn set_tag(remote: &BareRemote, file: &str, tag: &str, extra: &[&str]) -> Output {
    let url = remote.url();
    let mut args = vec![
        "ledger", "set-tag", "--repo", &url, "--file", file, "--tag", tag,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn set_tag_json_and_text_output() {
    let Some(remote) = ledger(&[("apps/qa/payments.yaml", VALUES)]) else {
        return;
    };
    let out = set_tag(
        &remote,
        "apps/qa/payments.yaml",
        "101",
        &[
            "--service",
            "payments",
            "--env",
            "qa",
            "--trailer",
            "Forge-Build-Id=101",
            "--trailer",
            "Forge-Requested-By=ci",
            "--output",
            "json",
        ],
    );
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["commit"].as_str().unwrap(),
        git(&remote.path(), &["rev-parse", "main"])
    );
    insta::assert_snapshot!("set_tag_json", normalise(&text(&out.stdout), None));
    assert_eq!(
        remote.read("apps/qa/payments.yaml"),
        values("101").trim_end()
    );
    assert_eq!(
        git(&remote.path(), &["log", "-1", "--format=%B", "main"]),
        "payments qa: 100 -> 101\n\nForge-Build-Id: 101\nForge-Requested-By: ci"
    );

    let out = set_tag(&remote, "apps/qa/payments.yaml", "102", &[]);
    assert_exit(&out, 0);
    insta::assert_snapshot!("set_tag_text", normalise(&text(&out.stdout), None));

    // Idempotent: success, no commit, JSON commit null.
    let out = set_tag(
        &remote,
        "apps/qa/payments.yaml",
        "102",
        &["--output", "json"],
    );
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["commit"].is_null(), "{json}");
    assert_eq!(remote.log().len(), 3);

    let out = set_tag(&remote, "apps/qa/payments.yaml", "102", &[]);
    insta::assert_snapshot!("set_tag_noop_text", text(&out.stdout));

    let out = set_tag(&remote, "apps/qa/payments.yaml", "103", &["--dry-run"]);
    assert_exit(&out, 0);
    insta::assert_snapshot!("set_tag_dry_run_text", text(&out.stdout));
    assert_eq!(remote.log().len(), 3);

    let url = remote.url();
    let out = run(&[
        "ledger",
        "get",
        "--repo",
        &url,
        "--file",
        "apps/qa/payments.yaml",
    ]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "102\n");
}

#[test]
fn refusals_exit_2_with_a_clear_message_and_leave_the_remote_alone() {
    let Some(remote) = ledger(&[("a.yaml", VALUES), ("notes.yaml", "owner: team-a\n")]) else {
        return;
    };
    let check = |name: &str, file: &str, tag: &str, extra: &[&str]| {
        let out = set_tag(&remote, file, tag, extra);
        assert_exit(&out, 2);
        assert!(out.stdout.is_empty());
        insta::assert_snapshot!(name, normalise(&text(&out.stderr), Some(&remote)));
    };
    check(
        "refuse_superseded",
        "a.yaml",
        "101",
        &["--expect-tag", "99"],
    );
    check("refuse_backwards", "a.yaml", "99", &[]);
    check("refuse_no_target", "notes.yaml", "101", &[]);
    check("refuse_missing_file", "apps/nope.yaml", "101", &[]);
    check(
        "refuse_bad_trailer",
        "a.yaml",
        "101",
        &["--trailer", "Bad Key=x"],
    );
    assert_eq!(remote.log(), vec!["seed ledger"]);
}

#[test]
fn latest_is_refused_before_any_git_command() {
    if require_tool("git").is_none() {
        return;
    }
    // The repository does not exist: any fetch would fail with a git error (exit 1).
    for tag in ["latest", "v1:2"] {
        let out = run(&[
            "ledger",
            "set-tag",
            "--repo",
            "file:///nonexistent/forge-ledger.git",
            "--file",
            "a.yaml",
            "--tag",
            tag,
        ]);
        assert_exit(&out, 2);
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("`git "), "nothing was fetched: {stderr}");
        insta::assert_snapshot!(format!("refuse_tag_{}", tag.replace(':', "_")), stderr);
    }
    // Only a valid tag reaches git (and fails there, exit 1).
    let out = run(&[
        "ledger",
        "set-tag",
        "--repo",
        "file:///nonexistent/forge-ledger.git",
        "--file",
        "a.yaml",
        "--tag",
        "101",
    ]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("`git fetch "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_pre_receive_hook_rejection_is_a_clear_failure_and_nothing_is_lost() {
    let Some(remote) = ledger(&[("a.yaml", VALUES)]) else {
        return;
    };
    let hook = remote.path().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'ledger is frozen: change freeze until Monday' >&2\nexit 1\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let before = git(&remote.path(), &["rev-parse", "main"]);
    let out = set_tag(&remote, "a.yaml", "101", &[]);
    assert_exit(&out, 1);
    insta::assert_snapshot!(
        "hook_rejected",
        normalise(&text(&out.stderr), Some(&remote))
    );
    assert_eq!(git(&remote.path(), &["rev-parse", "main"]), before);
    assert_eq!(remote.read("a.yaml"), VALUES.trim_end());
}

#[test]
fn thirty_two_concurrent_processes_on_different_files_all_land_once() {
    const WRITERS: usize = 32;
    let names: Vec<String> = (0..WRITERS)
        .map(|i| format!("apps/s{i:02}/values.yaml"))
        .collect();
    let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), VALUES)).collect();
    let Some(remote) = ledger(&files) else { return };
    let url = remote.url();
    // Spawn all, then wait for all: 32 `forge` processes race for one branch.
    let children: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, file)| {
            forge()
                .args(["ledger", "set-tag", "--repo", &url, "--file", file])
                .args(["--tag", &format!("{}", 200 + i), "--output", "json"])
                .args(["--service", &format!("s{i:02}"), "--env", "qa"])
                .args(["--max-attempts", "200", "--max-duration", "600"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn forge")
        })
        .collect();
    let mut commits = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_exit(&out, 0);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        commits.push(json["commit"].as_str().unwrap().to_owned());
    }
    // No lost update: every file holds its writer's tag.
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            remote.read(name),
            values(&format!("{}", 200 + i)).trim_end(),
            "{name}"
        );
    }
    // Each commit exactly once, all on main, one per writer on top of the seed.
    let log = remote.log();
    assert_eq!(log.len(), WRITERS + 1, "{log:#?}");
    for i in 0..WRITERS {
        let subject = format!("s{i:02} qa: 100 -> {}", 200 + i);
        assert_eq!(
            log.iter().filter(|s| **s == subject).count(),
            1,
            "{subject}: {log:#?}"
        );
    }
    let on_main = git(&remote.path(), &["rev-list", "main"]);
    for commit in &commits {
        assert!(
            on_main.lines().any(|c| c == commit),
            "{commit} is not on main"
        );
    }
}

#[test]
fn expect_tag_contention_between_processes_has_one_winner_per_generation() {
    const WRITERS: usize = 6;
    let Some(remote) = ledger(&[("a.yaml", VALUES)]) else {
        return;
    };
    let url = remote.url();
    let mut current = "100".to_owned();
    for generation in 1..=2 {
        let children: Vec<_> = (0..WRITERS)
            .map(|i| {
                let tag = format!("{}", 100 + generation * 100 + i);
                let child = forge()
                    .args(["ledger", "set-tag", "--repo", &url, "--file", "a.yaml"])
                    .args(["--tag", &tag, "--expect-tag", &current, "--output", "json"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn forge");
                (tag, child)
            })
            .collect();
        let results: Vec<_> = children
            .into_iter()
            .map(|(tag, child)| (tag, child.wait_with_output().unwrap()))
            .collect();
        let winners: Vec<_> = results.iter().filter(|(_, o)| o.status.success()).collect();
        assert_eq!(
            winners.len(),
            1,
            "generation {generation}: exactly one winner"
        );
        let winner = winners[0].0.clone();
        for (_, out) in results.iter().filter(|(_, o)| !o.status.success()) {
            assert_exit(out, 2);
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains(&format!("superseded: current tag is {winner}")),
                "{stderr}"
            );
        }
        assert_eq!(remote.read("a.yaml"), values(&winner).trim_end());
        current = winner;
    }
    assert_eq!(remote.log().len(), 3);
}

#[test]
fn history_and_revert() {
    let Some(remote) = ledger(&[("a.yaml", VALUES)]) else {
        return;
    };
    let url = remote.url();
    for tag in ["101", "102"] {
        assert_exit(
            &set_tag(
                &remote,
                "a.yaml",
                tag,
                &["--service", "payments", "--env", "prod"],
            ),
            0,
        );
    }
    let out = run(&[
        "ledger",
        "revert",
        "--repo",
        &url,
        "--file",
        "a.yaml",
        "--service",
        "payments",
        "--env",
        "prod",
    ]);
    assert_exit(&out, 0);
    insta::assert_snapshot!("revert_text", normalise(&text(&out.stdout), None));
    assert_eq!(remote.read("a.yaml"), values("101").trim_end());
    assert_eq!(remote.log().len(), 4, "a new commit, history untouched");

    let out = run(&[
        "ledger", "history", "--repo", &url, "--file", "a.yaml", "--output", "json",
    ]);
    assert_exit(&out, 0);
    let mut json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for entry in json.as_array_mut().unwrap() {
        entry["time"] = "[TIME]".into();
        entry["author"] = "[AUTHOR]".into();
    }
    insta::assert_snapshot!(
        "history_json",
        normalise(&serde_json::to_string_pretty(&json).unwrap(), None)
    );
    let out = run(&[
        "ledger", "history", "--repo", &url, "--file", "a.yaml", "--limit", "2",
    ]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout).lines().count(), 2);

    let out = run(&[
        "ledger", "revert", "--repo", &url, "--file", "a.yaml", "--to", "latest",
    ]);
    assert_exit(&out, 2);
    assert_eq!(remote.log().len(), 4);
}

fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write a fixture");
    path
}

#[test]
fn patch_prints_or_rewrites_a_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "values.yaml", VALUES);
    let path = file.to_str().unwrap();

    let out = run(&["ledger", "patch", path, "--tag", "2024.1"]);
    assert_exit(&out, 0);
    // A version that would read as a float keeps its quotes; only the tag's bytes change.
    assert_eq!(text(&out.stdout), values("2024.1"));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        VALUES,
        "stdout mode leaves the file"
    );

    // A relative path, from the file's directory.
    let out = forge_in(
        dir.path(),
        &[
            "ledger",
            "patch",
            "values.yaml",
            "--tag",
            "101",
            "--in-place",
        ],
    );
    assert_success(&out);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), values("101"));
    insta::assert_snapshot!("patch_in_place_text", text(&out.stdout));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "no temp file left behind");

    // Failures leave the file untouched and exit 2.
    for args in [
        vec!["--tag", "latest", "--in-place"],
        vec!["--tag", "102", "--key", "image.nope", "--in-place"],
    ] {
        let out = forge()
            .args(["ledger", "patch", path])
            .args(&args)
            .output()
            .unwrap();
        assert_exit(&out, 2);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), values("101"));
    }
    let out = run(&["ledger", "patch", &format!("{path}.missing"), "--tag", "1"]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );
}

const PROD_APP: &str = "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: payments-prod
spec:
  source:
    repoURL: https://charts.example
    chart: payments
    helm:
      parameters:
        - name: image.tag
          value: latest
  syncPolicy:
    automated:
      prune: true
";

#[test]
fn lint_reports_findings_with_exit_1_and_a_clean_tree_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("apps/prod")).unwrap();
    std::fs::create_dir_all(dir.path().join("apps/qa")).unwrap();
    write(&dir.path().join("apps/prod"), "payments.yaml", PROD_APP);
    write(&dir.path().join("apps/qa"), "values.yaml", VALUES);

    let out = forge_in(dir.path(), &["ledger", "lint", "."]);
    assert_exit(&out, 1);
    insta::assert_snapshot!("lint_findings_text", text(&out.stdout));

    let out = forge_in(dir.path(), &["ledger", "lint", ".", "--output", "json"]);
    assert_exit(&out, 1);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules: Vec<_> = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rules, ["mutable-tag", "prod-auto-sync"]);

    // `--prod-env` replaces the default Prod names: `prod` is then just a directory.
    let out = forge_in(
        dir.path(),
        &["ledger", "lint", ".", "--prod-env", "production"],
    );
    assert_exit(&out, 1);
    assert!(
        !text(&out.stdout).contains("prod-auto-sync"),
        "{}",
        text(&out.stdout)
    );

    let out = forge_in(dir.path(), &["ledger", "lint", "apps/qa"]);
    assert_success(&out);
    assert_eq!(text(&out.stdout), "apps/qa: no findings\n");

    let out = forge_in(dir.path(), &["ledger", "lint", "missing"]);
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("not a directory"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn relative_repo_paths_work_and_credentials_never_print() {
    let Some(remote) = ledger(&[("a.yaml", VALUES)]) else {
        return;
    };
    let parent = remote.path().parent().unwrap().to_owned();
    let out = forge_in(
        &parent,
        &[
            "ledger",
            "get",
            "--repo",
            "ledger.git",
            "--file",
            "a.yaml",
            "--output",
            "json",
        ],
    );
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["value"], "100");
    assert_eq!(json["path"], "image.tag");

    // Nothing listens on loopback port 1: git fails at once, and the token must not show.
    let out = run(&[
        "ledger",
        "set-tag",
        "--repo",
        "http://ci-bot:s3cr3t-token@127.0.0.1:1/ledger.git",
        "--file",
        "a.yaml",
        "--tag",
        "101",
        "-vv",
    ]);
    assert_exit(&out, 1);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("s3cr3t"), "credentials leaked: {all}");
    assert!(all.contains("http://***@127.0.0.1:1/ledger.git"), "{all}");
}

/// `--help` shows which variables a flag reads, never their values: a Ledger URL may carry a
/// token, and FORGE_TOKEN may hold a JWT by mistake.
#[test]
fn help_never_prints_environment_values() {
    for (var, value, args) in [
        (
            "FORGE_LEDGER_REPO",
            "https://ci-bot:s3cr3t@git.example/ledger.git",
            &["ledger", "set-tag", "--help"][..],
        ),
        (
            "FORGE_TOKEN",
            "eyJs3cr3t.eyJs3cr3t.s3cr3t",
            &["auth", "whoami", "--help"][..],
        ),
        (
            "FORGE_EXTERNAL_ID",
            "s3cr3t-external-id",
            &["auth", "whoami", "--help"][..],
        ),
    ] {
        let out = crate::support::forge()
            .args(args)
            .env(var, value)
            .output()
            .expect("run forge");
        assert!(out.status.success(), "{var}: {out:?}");
        let help = text(&out.stdout);
        assert!(help.contains(var), "{var} is still named: {help}");
        assert!(!help.contains("s3cr3t"), "{var}'s value printed: {help}");
    }
}

/// Forge run from inside a git hook inherits `GIT_DIR` and `GIT_WORK_TREE` (githooks(5)): its
/// Ledger commands still act on the Ledger, and the hook's repository is left alone.
#[test]
fn git_variables_of_a_calling_hook_do_not_redirect_ledger_commands() {
    let Some(remote) = ledger(&[("a.yaml", VALUES)]) else {
        return;
    };
    let hook_repo = tempfile::tempdir().expect("temp dir");
    git(hook_repo.path(), &["init", "--quiet"]);
    let refs_before = git(hook_repo.path(), &["for-each-ref"]);
    let url = remote.url();
    let out = forge()
        .args([
            "ledger", "set-tag", "--repo", &url, "--file", "a.yaml", "--tag", "101",
        ])
        .env("GIT_DIR", hook_repo.path().join(".git"))
        .env("GIT_WORK_TREE", hook_repo.path())
        .output()
        .expect("run forge");
    assert_success(&out);
    assert_eq!(remote.read("a.yaml"), values("101").trim_end());
    assert_eq!(
        git(hook_repo.path(), &["for-each-ref"]),
        refs_before,
        "the hook's repository got the Ledger's refs"
    );
}

/// `forge ledger history … | head -1`: the reader goes away before Forge prints. Forge exits 0
/// and still removes its temporary copy of the Ledger (it used to exit on the spot, leaving a
/// full clone in $TMPDIR on every such run).
#[test]
fn a_closed_stdout_exits_0_and_leaves_no_temporary_ledger_behind() {
    let Some(remote) = ledger(&[("a.yaml", VALUES)]) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let url = remote.url();
    let mut child = forge()
        .args(["ledger", "history", "--repo", &url, "--file", "a.yaml"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run forge");
    // Close the read end before Forge has fetched anything, so its first write fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for forge");
    assert_success(&out);
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read TMPDIR")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}
