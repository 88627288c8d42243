//! Integration tests.
mod ecr;
mod faults;
mod fixtures;
mod props;
mod proxy;
mod referrers;
mod registry;
mod token_auth;
