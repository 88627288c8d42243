//! The Ledger writer against real git and file:// bare remotes (forge_testkit::BareRemote).

use std::time::Duration;

use forge_ledger::{Ledger, LedgerError, PatchError, Selector, SetTag};
use forge_testkit::{BareRemote, git, require_tool};

/// A plain Helm values file: comments and a quoted tag that must survive byte for byte.
pub const VALUES: &str = "# payments (qa)\nimage:\n  repository: registry.example/payments\n  tag: \"100\" # set by forge\n\nreplicas: 2\n";

pub fn values(tag: &str) -> String {
    VALUES.replace("\"100\"", &format!("\"{tag}\""))
}

pub fn remote(files: &[(&str, &str)]) -> Option<BareRemote> {
    require_tool("git")?;
    Some(BareRemote::seeded(files))
}

pub fn set(file: &str, tag: &str) -> SetTag {
    SetTag {
        file: file.into(),
        tag: tag.into(),
        ..SetTag::default()
    }
}

fn commit_body(remote: &BareRemote) -> String {
    git(&remote.path(), &["log", "-1", "--format=%B", "main"])
}

#[test]
fn set_tag_commits_only_the_tag_with_subject_and_trailers() {
    let Some(remote) = remote(&[("apps/qa/payments.yaml", VALUES), ("README.md", "ledger\n")])
    else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    let outcome = ledger
        .set_tag(&SetTag {
            subject: Some(("payments".into(), "qa".into())),
            trailers: vec![
                ("Forge-Digest".into(), format!("sha256:{}", "a".repeat(64))),
                ("Forge-Build-Id".into(), "101".into()),
            ],
            ..set("apps/qa/payments.yaml", "101")
        })
        .unwrap();
    assert_eq!((outcome.old.as_str(), outcome.new.as_str()), ("100", "101"));
    assert_eq!(outcome.attempts, 1);
    assert!(!outcome.dry_run);
    let commit = outcome.commit.expect("a commit was pushed");
    assert_eq!(git(&remote.path(), &["rev-parse", "main"]), commit);
    assert_eq!(
        remote.read("apps/qa/payments.yaml"),
        values("101").trim_end()
    );
    assert_eq!(remote.read("README.md"), "ledger");
    assert_eq!(
        commit_body(&remote),
        format!(
            "payments qa: 100 -> 101\n\nForge-Digest: sha256:{}\nForge-Build-Id: 101",
            "a".repeat(64)
        )
    );
    // git itself reads them as trailers.
    let trailers = git(
        &remote.path(),
        &[
            "log",
            "-1",
            "--format=%(trailers:key=Forge-Build-Id,valueonly)",
            "main",
        ],
    );
    assert_eq!(trailers, "101");
    assert_eq!(remote.log().len(), 2);
}

#[test]
fn without_a_subject_the_commit_names_the_file() {
    let Some(remote) = remote(&[("apps/qa/payments.yaml", VALUES)]) else {
        return;
    };
    Ledger::new(remote.url(), "main")
        .set_tag(&set("apps/qa/payments.yaml", "101"))
        .unwrap();
    assert_eq!(remote.log()[0], "apps/qa/payments.yaml: 100 -> 101");
}

#[test]
fn a_local_path_works_like_a_url_and_get_reads_the_tip() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let ledger = Ledger::new(remote.path().to_string_lossy(), "main");
    let current = ledger.get("a.yaml", &Selector::default()).unwrap();
    assert_eq!(current.value, "100");
    assert_eq!(current.path, "image.tag");
    assert_eq!(current.line, 4);
    assert_eq!(current.commit, git(&remote.path(), &["rev-parse", "main"]));
    // The same Ledger value can be used again (its work repo is reused).
    ledger.set_tag(&set("a.yaml", "101")).unwrap();
    assert_eq!(
        ledger.get("./a.yaml", &Selector::default()).unwrap().value,
        "101"
    );
}

#[test]
fn setting_the_current_tag_is_a_no_op_success() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let outcome = Ledger::new(remote.url(), "main")
        .set_tag(&SetTag {
            expect_tag: Some("99".into()), // an idempotent no-op succeeds even with a stale expectation
            ..set("a.yaml", "100")
        })
        .unwrap();
    assert_eq!(outcome.commit, None);
    assert_eq!((outcome.old.as_str(), outcome.new.as_str()), ("100", "100"));
    assert_eq!(remote.log(), vec!["seed ledger"]);
}

#[test]
fn expect_tag_is_a_compare_and_swap() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    let err = ledger
        .set_tag(&SetTag {
            expect_tag: Some("99".into()),
            ..set("a.yaml", "101")
        })
        .unwrap_err();
    assert!(
        matches!(&err, LedgerError::Superseded { current, expected, .. } if current == "100" && expected == "99"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("superseded: current tag is 100"),
        "{err}"
    );
    assert!(err.is_refusal());
    assert_eq!(remote.log(), vec!["seed ledger"]);
    // The right expectation lands.
    ledger
        .set_tag(&SetTag {
            expect_tag: Some("100".into()),
            ..set("a.yaml", "101")
        })
        .unwrap();
    assert_eq!(remote.log().len(), 2);
}

#[test]
fn the_monotonic_guard_refuses_older_build_ids_only() {
    let Some(remote) = remote(&[
        ("a.yaml", VALUES),
        ("b.yaml", &VALUES.replace("\"100\"", "v1.4.0")),
    ]) else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    let err = ledger.set_tag(&set("a.yaml", "99")).unwrap_err();
    assert!(
        matches!(&err, LedgerError::Backwards { current, requested, .. } if current == "100" && requested == "99"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("revert"),
        "the error names the way out: {err}"
    );
    assert_eq!(remote.log(), vec!["seed ledger"]);
    // 1000 > 100 numerically even though "1000" < "200" would not matter here.
    ledger.set_tag(&set("a.yaml", "1000")).unwrap();
    ledger.set_tag(&set("a.yaml", "999")).unwrap_err();
    // Non-numeric tags are not build ids: no guard.
    ledger.set_tag(&set("b.yaml", "v1.3.9")).unwrap();
    assert_eq!(remote.log().len(), 3);
}

#[test]
fn invalid_tags_are_refused_before_any_git_command() {
    // This repository does not exist: a fetch would fail with a git error, so getting
    // InvalidTag proves nothing was fetched.
    let ledger = Ledger::new("file:///nonexistent/forge/ledger.git", "main");
    for tag in ["latest", "LATEST", "", "-x", "a:b", "a b", &"9".repeat(129)] {
        let err = ledger.set_tag(&set("a.yaml", tag)).unwrap_err();
        assert!(
            matches!(&err, LedgerError::InvalidTag { source, .. } if matches!(**source, PatchError::InvalidTag { .. })),
            "{tag:?}: {err:?}"
        );
    }
    let err = ledger.set_tag(&set("a.yaml", "latest")).unwrap_err();
    let chain = format!("{err} {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("latest") && chain.contains("mutable"),
        "{chain}"
    );
    // A digest-pinned reference is checked the same way.
    let err = ledger
        .set_tag(&set("a.yaml", "101@sha256:abc"))
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidTag { .. }), "{err:?}");
    // Bad trailers and paths are refused up front too.
    let err = ledger
        .set_tag(&SetTag {
            trailers: vec![("Bad Key".into(), "x".into())],
            ..set("a.yaml", "101")
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::InvalidInput {
                what: "trailer",
                ..
            }
        ),
        "{err:?}"
    );
    let err = ledger.set_tag(&set("../a.yaml", "101")).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::InvalidInput {
                what: "file path",
                ..
            }
        ),
        "{err:?}"
    );
    // Only now does the missing repository show.
    let err = ledger.set_tag(&set("a.yaml", "101")).unwrap_err();
    assert!(matches!(err, LedgerError::Git { .. }), "{err:?}");
}

#[test]
fn missing_files_branches_and_targets_are_clear_errors() {
    let Some(remote) = remote(&[("a.yaml", VALUES), ("notes.yaml", "owner: team-a\n")]) else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    let err = ledger
        .set_tag(&set("apps/missing.yaml", "101"))
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("apps/missing.yaml not found on branch main"),
        "{err}"
    );

    let err = Ledger::new(remote.url(), "release")
        .set_tag(&set("a.yaml", "101"))
        .unwrap_err();
    assert!(matches!(err, LedgerError::BranchNotFound { .. }), "{err:?}");

    let err = ledger.set_tag(&set("notes.yaml", "101")).unwrap_err();
    assert!(
        matches!(&err, LedgerError::Patch { source, .. } if matches!(**source, PatchError::NoTarget { .. })),
        "{err:?}"
    );
    assert_eq!(remote.log(), vec!["seed ledger"]);
}

#[test]
fn dry_run_pushes_nothing() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let outcome = Ledger::new(remote.url(), "main")
        .set_tag(&SetTag {
            dry_run: true,
            ..set("a.yaml", "101")
        })
        .unwrap();
    assert!(outcome.dry_run);
    assert_eq!(outcome.commit, None);
    assert_eq!((outcome.old.as_str(), outcome.new.as_str()), ("100", "101"));
    assert_eq!(remote.log(), vec!["seed ledger"]);
}

#[test]
fn a_pre_receive_hook_rejection_is_final_and_loses_nothing() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let hook = remote.path().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'prod is frozen until 18:00 (change freeze)' >&2\nexit 1\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let before = git(&remote.path(), &["rev-parse", "main"]);
    let err = Ledger::new(remote.url(), "main")
        .set_tag(&set("a.yaml", "101"))
        .unwrap_err();
    let LedgerError::HookRejected { message, .. } = &err else {
        panic!("expected a hook rejection, got {err:?}");
    };
    assert!(message.contains("prod is frozen until 18:00"), "{message}");
    assert!(message.contains("pre-receive hook declined"), "{message}");
    assert!(err.to_string().contains("not retried"), "{err}");
    assert_eq!(git(&remote.path(), &["rev-parse", "main"]), before);
    assert_eq!(remote.read("a.yaml"), VALUES.trim_end());
}

#[test]
fn urls_with_credentials_never_appear_in_errors() {
    if require_tool("git").is_none() {
        return;
    }
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let ledger = Ledger::new("http://ci-bot:s3cr3t-token@127.0.0.1:1/ledger.git", "main")
        .max_duration(Duration::from_secs(5));
    assert!(!ledger.repo_display().contains("s3cr3t"));
    let err = ledger.set_tag(&set("a.yaml", "101")).unwrap_err();
    let mut text = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(&format!(" {cause} {cause:?}"));
        source = cause.source();
    }
    assert!(!text.contains("s3cr3t"), "credentials leaked: {text}");
    assert!(
        text.contains("127.0.0.1:1"),
        "the host is still named: {text}"
    );
}

#[test]
fn bounded_retries_end_in_a_rejected_error_that_counts_attempts() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    // A stale lock on the remote's branch makes every push fail with "cannot lock ref" /
    // "failed to update ref" — the same rejection a concurrent writer causes — so the retry
    // path runs deterministically.
    let lock = remote.path().join("refs/heads/main.lock");
    std::fs::write(&lock, "").unwrap();
    let before = git(&remote.path(), &["rev-parse", "main"]);
    let err = Ledger::new(remote.url(), "main")
        .max_attempts(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
        .set_tag(&set("a.yaml", "101"))
        .unwrap_err();
    let LedgerError::Rejected { attempts, last, .. } = &err else {
        panic!("expected Rejected, got {err:?}");
    };
    assert_eq!(*attempts, 3);
    assert!(last.contains("main"), "{last}");
    let message = err.to_string();
    assert!(
        message.starts_with("push rejected 3 times over "),
        "{message}"
    );
    assert!(message.contains("--max-attempts"), "{message}");
    assert!(!err.is_refusal());
    std::fs::remove_file(&lock).unwrap();
    assert_eq!(git(&remote.path(), &["rev-parse", "main"]), before);
    // With the lock gone the same request lands.
    let outcome = Ledger::new(remote.url(), "main")
        .set_tag(&set("a.yaml", "101"))
        .unwrap();
    assert_eq!(outcome.attempts, 1);
}

#[test]
fn a_chosen_workdir_is_kept_and_reused_and_the_identity_is_used() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("ledger-cache");
    for tag in ["101", "102"] {
        let ledger = Ledger::new(remote.url(), "main")
            .workdir(&work)
            .identity("Release Bot", "release-bot@forge.invalid");
        ledger.set_tag(&set("a.yaml", tag)).unwrap();
        drop(ledger);
        assert!(
            work.join("HEAD").is_file(),
            "the work repo outlives the Ledger"
        );
    }
    assert_eq!(remote.read("a.yaml"), values("102").trim_end());
    assert_eq!(
        git(
            &remote.path(),
            &["log", "-1", "--format=%an <%ae>|%cn <%ce>", "main"]
        ),
        "Release Bot <release-bot@forge.invalid>|Release Bot <release-bot@forge.invalid>"
    );
}

#[test]
fn a_temporary_workdir_is_removed_on_drop() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    assert_eq!(
        ledger.work_repo_path(),
        None,
        "nothing is created before it is needed"
    );
    ledger.get("a.yaml", &Selector::default()).unwrap();
    let work = ledger.work_repo_path().unwrap();
    assert!(work.join("HEAD").is_file());
    drop(ledger);
    assert!(!work.exists(), "{} was left behind", work.display());
}

#[test]
fn a_stalled_push_is_stopped_at_the_time_limit_and_lands_nothing() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    // The remote accepts the connection and then never answers (here: its hook hangs).
    let hook = remote.path().join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\nsleep 20\nexit 1\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let before = git(&remote.path(), &["rev-parse", "main"]);
    let started = std::time::Instant::now();
    let err = Ledger::new(remote.url(), "main")
        .git_timeout(Duration::from_secs(2))
        .set_tag(&set("a.yaml", "101"))
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(text.contains("did not finish within"), "{text}");
    assert_eq!(git(&remote.path(), &["rev-parse", "main"]), before);
}

/// Writes an executable shell script.
pub fn script(path: &std::path::Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write the script");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .expect("make the script executable");
    }
}

/// The machine's git config must not change what the Ledger does. A wrapper git adds config
/// the way a global `~/.gitconfig` would: a client-side `core.hooksPath` whose pre-push hook
/// fails (think of a template's git-lfs hook without git-lfs) and `log.showSignature`. The
/// push lands without running the hook, and history still reads.
#[test]
fn the_machines_git_config_does_not_reach_the_ledgers_commands() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let ran = dir.path().join("pre-push-ran");
    script(
        &hooks.join("pre-push"),
        &format!(
            "touch '{}'\necho 'git-lfs not found' >&2\nexit 1",
            ran.display()
        ),
    );
    let wrapper = dir.path().join("git");
    script(
        &wrapper,
        &format!(
            "exec git -c core.hooksPath='{}' -c log.showSignature=true \"$@\"",
            hooks.display()
        ),
    );
    let ledger = Ledger::new(remote.url(), "main").git_program(&wrapper);
    ledger.set_tag(&set("a.yaml", "101")).unwrap();
    assert!(!ran.exists(), "the client-side pre-push hook ran");
    assert_eq!(remote.read("a.yaml"), values("101").trim_end());
    let history = ledger.history("a.yaml", &Selector::default()).unwrap();
    let tags: Vec<_> = history.iter().map(|e| e.value.as_str()).collect();
    assert_eq!(tags, ["101", "100"]);
}
