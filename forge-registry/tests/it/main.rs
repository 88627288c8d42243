//! Integration tests.
mod ecr;
mod faults;
mod proxy;
