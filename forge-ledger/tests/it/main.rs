//! Integration tests.

mod patch;
mod corpus;
mod contention;
mod history;
mod writer;
mod proptests;
mod lint;
