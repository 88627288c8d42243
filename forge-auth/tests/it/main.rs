//! Integration tests for forge-auth: the role chain against moto (real STS stand-in) for each
//! token source, refresh, AWS's STS errors from an in-process fake, token-service protocols and
//! errors, bad input, ECR credential caching.
// Test helpers (not only #[test] fns) unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod chain_moto;
mod ecr;
mod inputs;
mod sts_errors;
mod support;
mod token_services;
