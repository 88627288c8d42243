//! Integration tests.
mod proxy;
