//! keypath
