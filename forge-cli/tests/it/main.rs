//! Integration tests for the `forge` binary.

mod support;
