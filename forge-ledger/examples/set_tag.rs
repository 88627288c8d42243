//! Sets an image tag in a Ledger and prints the outcome as JSON.
//!
//! ```text
//! cargo run -p forge-ledger --example set_tag -- <repo URL|path> <file> <tag> [expect-tag]
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // an example reports on the terminal

use std::process::ExitCode;

use forge_ledger::{Ledger, Selector, SetTag};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [repo, file, tag, rest @ ..] = args.as_slice() else {
        eprintln!("usage: set_tag <repo URL|path> <file> <tag> [expect-tag]");
        return ExitCode::from(2);
    };
    let ledger = Ledger::new(repo.as_str(), "main");
    let request = SetTag {
        file: file.clone(),
        selector: Selector::default(),
        tag: tag.clone(),
        expect_tag: rest.first().cloned(),
        trailers: vec![("Forge-Requested-By".into(), "example".into())],
        ..SetTag::default()
    };
    match ledger.set_tag(&request) {
        Ok(outcome) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&outcome).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            let mut source = std::error::Error::source(&err);
            eprintln!("error: {err}");
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
