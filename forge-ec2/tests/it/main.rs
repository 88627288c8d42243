//! Integration tests for forge-ec2: the generated script under real bash, the `.env` format,
//! SSM deploys against moto and against an in-process fake of the SSM API (for statuses moto
//! cannot produce).
// Test helpers (not only #[test] fns) unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod env_file;
mod fake_ssm;
mod moto;
mod script_run;
