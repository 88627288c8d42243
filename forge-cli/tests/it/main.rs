//! Integration tests for the `forge` binary.

mod auth;
mod pipelines;
mod ledger;
mod copy;
mod ec2;
mod support;
mod promote;
