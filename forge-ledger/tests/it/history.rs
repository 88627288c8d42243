//! `history` and `revert` against real git history.

use forge_ledger::{Ledger, LedgerError, Revert, Selector, SetTag};
use forge_testkit::git;

use crate::writer::{VALUES, remote, set, values};

fn revert(file: &str) -> Revert {
    Revert {
        file: file.into(),
        ..Revert::default()
    }
}

/// Commits `text` as `file` from a scratch clone, as a person editing the Ledger would.
fn commit_by_hand(remote: &forge_testkit::BareRemote, file: &str, text: &str, message: &str) {
    let dir = tempfile::tempdir().expect("temp dir for a scratch clone");
    let url = remote.url();
    git(dir.path(), &["clone", "--quiet", &url, "c"]);
    let clone = dir.path().join("c");
    std::fs::write(clone.join(file), text).expect("edit the file in the clone");
    git(&clone, &["commit", "--quiet", "-am", message]);
    git(&clone, &["push", "--quiet", "origin", "main"]);
}

#[test]
fn history_lists_values_newest_first_and_collapses_unrelated_commits() {
    let Some(remote) = remote(&[("a.yaml", VALUES), ("b.yaml", VALUES)]) else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    ledger
        .set_tag(&SetTag {
            subject: Some(("payments".into(), "qa".into())),
            trailers: vec![("Forge-Build-Id".into(), "101".into())],
            ..set("a.yaml", "101")
        })
        .unwrap();
    // A commit that changes the file but not the tag, and one to another file.
    commit_by_hand(
        &remote,
        "a.yaml",
        &values("101").replace("replicas: 2", "replicas: 3"),
        "scale up",
    );
    ledger.set_tag(&set("b.yaml", "555")).unwrap();
    ledger.set_tag(&set("a.yaml", "102")).unwrap();

    let history = ledger.history("a.yaml", &Selector::default()).unwrap();
    let values: Vec<_> = history.iter().map(|e| e.value.as_str()).collect();
    assert_eq!(values, ["102", "101", "100"]);
    // The entry for 101 is the commit that SET it, not the later "scale up".
    assert_eq!(history[1].subject, "payments qa: 100 -> 101");
    assert_eq!(
        history[1]
            .trailers
            .get("Forge-Build-Id")
            .map(String::as_str),
        Some("101")
    );
    assert_eq!(history[2].subject, "seed ledger");
    assert!(history[2].trailers.is_empty());
    for entry in &history {
        assert_eq!(entry.commit.len(), 40);
        assert!(entry.time.contains('T'), "RFC 3339: {}", entry.time);
        assert!(
            entry.author.contains('<') && entry.author.ends_with('>'),
            "{}",
            entry.author
        );
        git(&remote.path(), &["cat-file", "-e", &entry.commit]);
        assert_eq!(
            entry.timestamp.to_string(),
            git(
                &remote.path(),
                &["log", "-1", "--format=%ct", &entry.commit]
            ),
            "seconds since the epoch, for ordering"
        );
    }
    assert_eq!(
        history[0].commit,
        git(&remote.path(), &["rev-parse", "main"]),
        "the newest entry is the tip commit"
    );
}

#[test]
fn history_of_a_missing_file_is_not_found() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let err = Ledger::new(remote.url(), "main")
        .history("nope.yaml", &Selector::default())
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotFound { .. }), "{err:?}");
}

#[test]
fn revert_sets_the_previous_value_as_a_new_commit() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    ledger.set_tag(&set("a.yaml", "101")).unwrap();
    let bad = ledger.set_tag(&set("a.yaml", "102")).unwrap();
    let tip_before = git(&remote.path(), &["rev-parse", "main"]);

    let outcome = ledger
        .revert(&Revert {
            subject: Some(("payments".into(), "prod".into())),
            ..revert("a.yaml")
        })
        .unwrap();
    assert_eq!((outcome.old.as_str(), outcome.new.as_str()), ("102", "101"));
    assert_eq!(remote.read("a.yaml"), values("101").trim_end());
    // A new commit on top: history is never rewritten.
    let parent = git(&remote.path(), &["rev-parse", "main^"]);
    assert_eq!(parent, tip_before);
    assert_eq!(remote.log()[0], "payments prod: 102 -> 101");
    let body = git(&remote.path(), &["log", "-1", "--format=%B", "main"]);
    assert!(
        body.contains(&format!("Forge-Revert-Of: {}", bad.commit.unwrap())),
        "{body}"
    );
    // The monotonic guard still protects normal writes after a revert…
    let err = ledger.set_tag(&set("a.yaml", "100")).unwrap_err();
    assert!(matches!(err, LedgerError::Backwards { .. }), "{err:?}");
    // …a second "one step back" would restore the reverted 102 (a retried step flip-flops),
    // so it is refused…
    let err = ledger.revert(&revert("a.yaml")).unwrap_err();
    assert!(
        matches!(&err, LedgerError::AlreadyReverted { current, would_restore, .. }
            if current == "101" && would_restore == "102"),
        "{err:?}"
    );
    assert!(err.is_refusal());
    assert!(err.to_string().contains("--to 102"), "{err}");
    assert_eq!(remote.log().len(), 4, "nothing written");
    // …and going forward again is a named choice.
    let again = ledger
        .revert(&Revert {
            to: Some("102".into()),
            ..revert("a.yaml")
        })
        .unwrap();
    assert_eq!(again.new, "102");
    let history: Vec<_> = ledger
        .history("a.yaml", &Selector::default())
        .unwrap()
        .into_iter()
        .map(|e| e.value)
        .collect();
    assert_eq!(history, ["102", "101", "102", "101", "100"]);
}

#[test]
fn revert_to_a_named_value_and_its_refusals() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    let err = ledger.revert(&revert("a.yaml")).unwrap_err();
    assert!(
        matches!(&err, LedgerError::NothingToRevert { current, .. } if current == "100"),
        "{err:?}"
    );
    ledger.set_tag(&set("a.yaml", "101")).unwrap();
    ledger.set_tag(&set("a.yaml", "102")).unwrap();
    let err = ledger
        .revert(&Revert {
            to: Some("latest".into()),
            ..revert("a.yaml")
        })
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidTag { .. }), "{err:?}");
    let dry = ledger
        .revert(&Revert {
            to: Some("100".into()),
            dry_run: true,
            ..revert("a.yaml")
        })
        .unwrap();
    assert_eq!(
        (dry.old.as_str(), dry.new.as_str(), dry.commit),
        ("102", "100", None)
    );
    assert_eq!(remote.log().len(), 3);
    let outcome = ledger
        .revert(&Revert {
            to: Some("100".into()),
            ..revert("a.yaml")
        })
        .unwrap();
    assert_eq!(outcome.new, "100");
    assert_eq!(remote.read("a.yaml"), VALUES.trim_end());
    assert_eq!(remote.log().len(), 4);
}

#[test]
fn history_and_revert_keep_pinned_digests() {
    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    let app = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: api\nspec:\n  source:\n    kustomize:\n      images:\n        - registry.example/api:100@{D1}\n"
    );
    let Some(remote) = remote(&[("app.yaml", app.as_str())]) else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    ledger
        .set_tag(&set("app.yaml", &format!("101@{D2}")))
        .unwrap();
    let history: Vec<String> = ledger
        .history("app.yaml", &Selector::default())
        .unwrap()
        .into_iter()
        .map(|e| e.value)
        .collect();
    assert_eq!(history, [format!("101@{D2}"), format!("100@{D1}")]);

    let outcome = ledger.revert(&revert("app.yaml")).unwrap();
    assert_eq!(outcome.new, format!("100@{D1}"));
    assert!(
        remote
            .read("app.yaml")
            .contains(&format!("registry.example/api:100@{D1}"))
    );
}

#[test]
fn a_revert_proven_against_an_older_value_does_not_overwrite_a_newer_promotion() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    ledger.set_tag(&set("a.yaml", "101")).unwrap();
    // The caller read 101 and proved its rollback target; meanwhile 102 landed.
    ledger.set_tag(&set("a.yaml", "102")).unwrap();
    let err = ledger
        .revert(&Revert {
            to: Some("100".into()),
            expect: Some("101".into()),
            ..revert("a.yaml")
        })
        .unwrap_err();
    assert!(matches!(err, LedgerError::Superseded { .. }), "{err:?}");
    assert_eq!(remote.read("a.yaml"), values("102").trim_end());
}

/// History pairs each version of the file with its commit by position in git's output; output
/// that does not start each record with a commit id (signature lines, a wrapper's banner) is
/// an error, never a history whose tags belong to other commits.
#[test]
fn history_refuses_git_log_output_it_cannot_pair_with_commits() {
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let ledger = Ledger::new(remote.url(), "main");
    ledger.set_tag(&set("a.yaml", "101")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("git");
    crate::writer::script(
        &wrapper,
        "for a in \"$@\"; do [ \"$a\" = log ] && printf 'gpg: Signature made Thu Nov 26 2026\\n'; done\nexec git \"$@\"",
    );
    let err = Ledger::new(remote.url(), "main")
        .git_program(&wrapper)
        .history("a.yaml", &Selector::default())
        .unwrap_err();
    let LedgerError::Git { source, .. } = &err else {
        panic!("expected a git error, got {err:?}");
    };
    assert!(
        matches!(source, forge_ledger::git::GitError::UnexpectedOutput { .. }),
        "{source:?}"
    );
    assert!(err.to_string().contains("git failed"), "{err}");
}
