//! Integration tests.

mod contention;
mod corpus;
mod history;
mod lint;
mod patch;
mod proptests;
mod writer;
