//! Integration tests for the `forge` binary.
