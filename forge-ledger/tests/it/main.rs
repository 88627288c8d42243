//! Integration tests.

mod patch;
mod corpus;
