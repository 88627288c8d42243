//! Copies an image and prints the report as JSON.
//!
//! ```text
//! cargo run -p forge-registry --example copy -- SRC DST [--jobs N] [--no-referrers]
//! cargo run -p forge-registry --example copy -- 127.0.0.1:5000/ci/app:41 127.0.0.1:5001/prod/app:41
//! ```
//!
//! Credentials come from Docker's config (`~/.docker/config.json` or `$DOCKER_CONFIG`).
#![allow(clippy::print_stdout, clippy::print_stderr)] // an example program reports on the terminal

use std::process::ExitCode;

use forge_registry::{Client, CopyOptions, DockerConfig, Reference};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                eprintln!("  caused by: {c}");
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: copy SRC DST [--jobs N] [--no-referrers]";
    let src: Reference = args.next().ok_or(usage)?.parse()?;
    let dst: Reference = args.next().ok_or(usage)?.parse()?;
    let mut options = CopyOptions::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--jobs" => options.jobs = Some(args.next().ok_or(usage)?.parse()?),
            "--no-referrers" => options.referrers = false,
            other => return Err(format!("unknown argument '{other}'; {usage}").into()),
        }
    }
    let client = Client::builder()
        .docker_config(DockerConfig::load_default()?)
        .build()?;
    let report = client.copy(&src, &dst, &options).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
