//! Integration tests for the `forge` binary.
// Test helpers (not only #[test] fns) unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod auth;
mod copy;
mod ec2;
mod ledger;
mod pipelines;
mod promote;
mod support;
