//! One module per top-level subcommand. Each exposes its clap arguments and a `run` function
//! that calls a library and returns the process exit code.

pub mod auth;
pub mod config;
pub mod copy;
pub mod ec2;
pub mod ledger;
pub mod promote;
pub mod rollback;
pub mod status;
