//! The re-parse check: the patched text must produce the original event stream except for one scalar's value.

use yaml_rust2::Event;

use super::PatchError;
use super::tree;

/// Checks that `new_text` parses to `old` with only event `index` changed, to a scalar whose value is `expected`
/// (same anchor and tag).
pub(crate) fn verify(
    old: &[Event],
    new_text: &str,
    index: usize,
    expected: &str,
    path: &str,
) -> Result<(), PatchError> {
    let failed = |detail: String| PatchError::VerifyFailed {
        path: path.to_owned(),
        detail,
    };
    let new = tree::events(new_text)
        .map_err(|e| failed(format!("the patched text does not parse: {e}")))?;
    if new.len() != old.len() {
        return Err(failed(format!(
            "the event count changed from {} to {}",
            old.len(),
            new.len()
        )));
    }
    for (i, (a, b)) in old.iter().zip(&new).enumerate() {
        if i == index {
            match (a, b) {
                (
                    Event::Scalar(_, _, anchor_a, tag_a),
                    Event::Scalar(value, _, anchor_b, tag_b),
                ) if anchor_a == anchor_b && tag_a == tag_b => {
                    if value != expected {
                        return Err(failed(format!(
                            "the new value reads back as {value:?}, not {expected:?}"
                        )));
                    }
                }
                _ => return Err(failed(format!("event {i} changed from {a:?} to {b:?}"))),
            }
        } else if a != b {
            return Err(failed(format!("event {i} changed from {a:?} to {b:?}")));
        }
    }
    Ok(())
}

/// Whether event `index` lies inside a collection that carries an anchor (`&name`): aliases of that collection
/// elsewhere would change with the target.
pub(crate) fn inside_anchored(events: &[Event], index: usize) -> bool {
    let mut stack = Vec::new();
    for event in events.iter().take(index) {
        match event {
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => stack.push(*anchor),
            Event::SequenceEnd | Event::MappingEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack.iter().any(|&anchor| anchor != 0)
}
