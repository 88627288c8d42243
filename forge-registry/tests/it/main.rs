//! Integration tests.
mod ecr;
mod faults;
mod fixtures;
mod props;
mod proxy;
mod registry;
mod token_auth;
