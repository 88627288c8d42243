//! Prints the script a deploy would send, without AWS:
//!
//! ```sh
//! cargo run -p forge-ec2 --example render_script -- docker-compose.yml 20261126.3 /opt/dagster /forge/dagster
//! ```
//!
//! Arguments: compose file, image tag, service directory, optional Parameter Store path.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // an example program prints

use std::process::ExitCode;

use forge_ec2::{DeployRequest, Targets, render_script};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [compose, tag, dir, rest @ ..] = args.as_slice() else {
        eprintln!("usage: render_script COMPOSE_FILE IMAGE_TAG SERVICE_DIR [PARAMETERS_PATH]");
        return ExitCode::from(2);
    };
    let compose = match std::fs::read(compose) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: cannot read {compose}: {e}");
            return ExitCode::from(2);
        }
    };
    let targets = match Targets::parse("tag:forge:example=true") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut request = DeployRequest::new(targets, compose, tag.clone(), dir.clone());
    request.parameters_path = rest.first().cloned();
    if let Err(e) = request.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    print!("{}", render_script(&request));
    ExitCode::SUCCESS
}
