//! Integration tests.
mod ecr;
mod faults;
mod proxy;
mod fixtures;
mod props;
mod registry;
mod token_auth;
