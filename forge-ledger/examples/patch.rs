//! Patch the image tag of a manifest and write the result to stdout.
//!
//! ```text
//! cargo run -p forge-ledger --example patch -- FILE TAG [--image NAME] [--key PATH] [--app NAME]
//! cargo run -p forge-ledger --example patch -- FILE --read
//! ```
use std::io::Write;
use std::process::ExitCode;

use forge_ledger::{Selector, patch_tag, read_tag};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut positional = Vec::new();
    let mut selector = Selector::default();
    let mut read = false;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--image" => selector.image = it.next(),
            "--key" => selector.key = it.next(),
            "--app" => selector.app = it.next(),
            "--read" => read = true,
            _ => positional.push(arg),
        }
    }
    let mut stderr = std::io::stderr();
    let Some(file) = positional.first() else {
        let _ = writeln!(
            stderr,
            "usage: patch FILE (TAG | --read) [--image NAME] [--key PATH] [--app NAME]"
        );
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            let _ = writeln!(stderr, "cannot read {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout();
    let result = if read {
        read_tag(&text, &selector)
            .map(|found| format!("{} = {} (line {})\n", found.path, found.value, found.line))
    } else {
        match positional.get(1) {
            Some(tag) => patch_tag(&text, &selector, tag).map(|patched| patched.text),
            None => {
                let _ = writeln!(stderr, "missing TAG (or --read)");
                return ExitCode::from(2);
            }
        }
    };
    match result {
        Ok(out) => {
            let _ = stdout.write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            ExitCode::FAILURE
        }
    }
}
