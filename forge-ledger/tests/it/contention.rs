//! Concurrent writers, each with its own `Ledger` (own work repository), on one file:// remote.
//! (The 32-process version of these tests runs the `forge` binary in forge-cli's tests.)

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use forge_ledger::{Ledger, LedgerError, SetTag};
use forge_testkit::git;

use crate::writer::{VALUES, remote, set, values};

fn ledger(url: &str) -> Ledger {
    Ledger::new(url, "main")
        .max_attempts(100)
        .backoff(Duration::from_millis(10), Duration::from_millis(400))
}

#[test]
fn concurrent_writers_on_different_files_all_land_exactly_once() {
    const WRITERS: usize = 8;
    let names: Vec<String> = (0..WRITERS).map(|i| format!("apps/s{i}.yaml")).collect();
    let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), VALUES)).collect();
    let Some(remote) = remote(&files) else { return };
    let url = remote.url();
    let barrier = Arc::new(Barrier::new(WRITERS));
    let handles: Vec<_> = names
        .iter()
        .cloned()
        .map(|file| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let ledger = ledger(&url);
                barrier.wait();
                ledger.set_tag(&SetTag {
                    subject: Some((file.clone(), "qa".into())),
                    ..set(&file, "101")
                })
            })
        })
        .collect();
    let outcomes: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    // Every file has the new value, and every commit is on main exactly once.
    for name in &names {
        assert_eq!(remote.read(name), values("101").trim_end(), "{name}");
    }
    let log = remote.log();
    assert_eq!(log.len(), WRITERS + 1, "{log:#?}");
    let subjects: BTreeSet<_> = log.iter().collect();
    assert_eq!(subjects.len(), log.len(), "a commit landed twice: {log:#?}");
    let on_main: BTreeSet<String> = git(&remote.path(), &["rev-list", "main"])
        .lines()
        .map(str::to_owned)
        .collect();
    for outcome in &outcomes {
        assert!(on_main.contains(outcome.commit.as_ref().unwrap()));
    }
}

#[test]
fn expect_tag_gives_exactly_one_winner_per_generation() {
    const WRITERS: usize = 5;
    const GENERATIONS: usize = 3;
    let Some(remote) = remote(&[("a.yaml", VALUES)]) else {
        return;
    };
    let url = remote.url();
    let mut current = "100".to_owned();
    for generation in 1..=GENERATIONS {
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (url, barrier, expect) = (url.clone(), Arc::clone(&barrier), current.clone());
                // Every contender proposes a newer build id than the generation before.
                let tag = format!("{}", generation * 100 + 100 + i);
                std::thread::spawn(move || {
                    let ledger = ledger(&url);
                    barrier.wait();
                    (
                        tag.clone(),
                        ledger.set_tag(&SetTag {
                            expect_tag: Some(expect),
                            ..set("a.yaml", &tag)
                        }),
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "generation {generation}: {results:#?}");
        let winner = winners[0].0.clone();
        for (_, result) in &results {
            if let Err(err) = result {
                assert!(
                    matches!(err, LedgerError::Superseded { current, .. } if *current == winner),
                    "a loser must be superseded by the winner {winner}: {err:?}"
                );
            }
        }
        assert_eq!(remote.read("a.yaml"), values(&winner).trim_end());
        current = winner;
    }
    assert_eq!(remote.log().len(), GENERATIONS + 1);
}
