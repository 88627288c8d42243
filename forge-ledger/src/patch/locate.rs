//! Finding the target scalar (placeholder until the locator lands).

use super::{Found, PatchError, Patched, Selector};

/// A located target.
pub(crate) struct Target {
    found: Found,
}

impl Target {
    pub(crate) fn found(&self) -> Found {
        self.found.clone()
    }

    pub(crate) fn patch(
        &self,
        _text: &str,
        _tag: &str,
        _digest: Option<&str>,
    ) -> Result<Patched, PatchError> {
        Err(PatchError::NoTarget {
            searched: self.found.path.clone(),
        })
    }
}

pub(crate) fn locate(_text: &str, _selector: &Selector) -> Result<Target, PatchError> {
    Err(PatchError::NoTarget {
        searched: "nothing yet (locator not implemented)".to_owned(),
    })
}
