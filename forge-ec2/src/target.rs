//! Which instances a deploy reaches: EC2 tag filters or explicit instance ids, checked against
//! SSM Run Command's limits before anything is sent.

use std::fmt;
use std::str::FromStr;

/// SSM accepts at most 5 `Targets` entries per command.
pub const MAX_TAG_TARGETS: usize = 5;
/// SSM accepts at most 50 values per target key.
pub const MAX_TAG_VALUES: usize = 50;
/// SSM accepts at most 50 `InstanceIds` per command.
pub const MAX_INSTANCE_IDS: usize = 50;

/// A refused target specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// Nothing was given.
    #[error(
        "no target given: pass `tag:KEY=VALUE` (e.g. `tag:forge:dagster-enabled=true`) or instance ids (`i-0123456789abcdef0`)"
    )]
    Empty,
    /// A single entry is malformed.
    #[error("target `{input}` is not valid: {reason}")]
    Malformed {
        /// The entry as given.
        input: String,
        /// What is wrong and how to write it.
        reason: String,
    },
    /// Tags and instance ids were mixed.
    #[error(
        "targets `{input}` mix tag filters and instance ids; SSM takes one or the other: split them into two deploys or tag the instances"
    )]
    Mixed {
        /// The whole specification.
        input: String,
    },
    /// More than SSM allows.
    #[error("targets `{input}` exceed SSM's limit: {reason}")]
    TooMany {
        /// The whole specification.
        input: String,
        /// Which limit.
        reason: String,
    },
}

/// The instances a command targets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Targets {
    /// EC2 tag filters: every instance carrying, for each key, one of the values.
    Tags(Vec<TagFilter>),
    /// Explicit instance ids (at most [`MAX_INSTANCE_IDS`]).
    InstanceIds(Vec<String>),
}

/// One `tag:KEY=VALUE[,VALUE…]` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter {
    /// The tag key (without the `tag:` prefix).
    pub key: String,
    /// Accepted values.
    pub values: Vec<String>,
}

impl Targets {
    /// Parses a specification: tag filters `tag:KEY=VALUE` (several values comma-separated:
    /// `tag:role=web,worker`) or instance ids, several entries separated by whitespace or `;`.
    /// The same key given twice merges its values (SSM would reject duplicate keys).
    pub fn parse(input: &str) -> Result<Self, TargetError> {
        Self::parse_all(
            input
                .split([';', ' ', '\n', '\t'])
                .filter(|s| !s.is_empty()),
        )
    }

    /// Parses several specifications (e.g. repeated `--target` flags).
    pub fn parse_all<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, TargetError> {
        let entries: Vec<&str> = entries
            .into_iter()
            .flat_map(|e| e.split([';', ' ', '\n', '\t']))
            .filter(|s| !s.is_empty())
            .collect();
        let whole = entries.join(" ");
        if entries.is_empty() {
            return Err(TargetError::Empty);
        }
        let mut tags: Vec<TagFilter> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        for entry in &entries {
            if let Some(rest) = entry.strip_prefix("tag:") {
                let (key, values) = rest.split_once('=').ok_or_else(|| TargetError::Malformed {
                    input: (*entry).to_owned(),
                    reason: "a tag filter is `tag:KEY=VALUE`; the `=VALUE` part is missing"
                        .to_owned(),
                })?;
                check_tag_part(entry, "key", key, 128)?;
                let values: Vec<String> = values.split(',').map(str::to_owned).collect();
                for value in &values {
                    check_tag_part(entry, "value", value, 256)?;
                }
                match tags.iter_mut().find(|t| t.key == key) {
                    Some(existing) => {
                        for v in values {
                            if !existing.values.contains(&v) {
                                existing.values.push(v);
                            }
                        }
                    }
                    None => tags.push(TagFilter {
                        key: key.to_owned(),
                        values,
                    }),
                }
            } else if is_instance_id(entry) {
                if !ids.iter().any(|i| i == entry) {
                    ids.push((*entry).to_owned());
                }
            } else {
                return Err(TargetError::Malformed {
                    input: (*entry).to_owned(),
                    reason: "expected `tag:KEY=VALUE` or an instance id like `i-0123456789abcdef0`"
                        .to_owned(),
                });
            }
        }
        match (tags.is_empty(), ids.is_empty()) {
            (false, false) => Err(TargetError::Mixed { input: whole }),
            (false, true) => {
                if tags.len() > MAX_TAG_TARGETS {
                    return Err(TargetError::TooMany {
                        input: whole,
                        reason: format!(
                            "{} tag keys given, at most {MAX_TAG_TARGETS} are allowed",
                            tags.len()
                        ),
                    });
                }
                if let Some(t) = tags.iter().find(|t| t.values.len() > MAX_TAG_VALUES) {
                    return Err(TargetError::TooMany {
                        input: whole,
                        reason: format!(
                            "tag `{}` has {} values, at most {MAX_TAG_VALUES} are allowed",
                            t.key,
                            t.values.len()
                        ),
                    });
                }
                Ok(Targets::Tags(tags))
            }
            (true, false) => {
                if ids.len() > MAX_INSTANCE_IDS {
                    return Err(TargetError::TooMany {
                        input: whole,
                        reason: format!(
                            "{} instance ids given, at most {MAX_INSTANCE_IDS} are allowed; target by tag instead",
                            ids.len()
                        ),
                    });
                }
                Ok(Targets::InstanceIds(ids))
            }
            (true, true) => Err(TargetError::Empty),
        }
    }

    /// The instance ids named explicitly (empty for tag targets).
    pub fn instance_ids(&self) -> &[String] {
        match self {
            Targets::InstanceIds(ids) => ids,
            Targets::Tags(_) => &[],
        }
    }
}

impl FromStr for Targets {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Targets::parse(s)
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Targets::Tags(tags) => {
                let parts: Vec<String> = tags
                    .iter()
                    .map(|t| format!("tag:{}={}", t.key, t.values.join(",")))
                    .collect();
                f.write_str(&parts.join(" "))
            }
            Targets::InstanceIds(ids) => f.write_str(&ids.join(" ")),
        }
    }
}

fn check_tag_part(entry: &str, what: &str, part: &str, max: usize) -> Result<(), TargetError> {
    let reason = if part.is_empty() {
        format!("the tag {what} is empty")
    } else if part.chars().count() > max {
        format!("the tag {what} is longer than {max} characters")
    } else if part.chars().any(char::is_control) {
        format!("the tag {what} contains a control character")
    } else {
        return Ok(());
    };
    Err(TargetError::Malformed {
        input: entry.to_owned(),
        reason,
    })
}

/// `i-` followed by 8 or 17 lowercase hex digits, or a managed-instance id `mi-` + 17 hex.
fn is_instance_id(s: &str) -> bool {
    let hex = |h: &str| {
        h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if let Some(h) = s.strip_prefix("i-") {
        (h.len() == 8 || h.len() == 17) && hex(h)
    } else if let Some(h) = s.strip_prefix("mi-") {
        h.len() == 17 && hex(h)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_merge_and_ids_dedupe() {
        let t = Targets::parse("tag:env=prod tag:role=web,worker;tag:env=qa").unwrap();
        assert_eq!(
            t,
            Targets::Tags(vec![
                TagFilter {
                    key: "env".into(),
                    values: vec!["prod".into(), "qa".into()]
                },
                TagFilter {
                    key: "role".into(),
                    values: vec!["web".into(), "worker".into()]
                },
            ])
        );
        let t = Targets::parse("i-0123456789abcdef0 i-0123456789abcdef0 i-12345678").unwrap();
        assert_eq!(t.instance_ids().len(), 2);
    }

    #[test]
    fn refusals_name_the_input() {
        let check = |input: &str, needle: &str| {
            let err = Targets::parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        };
        check("", "no target given");
        check("tag:env", "`=VALUE` part is missing");
        check("tag:=x", "key is empty");
        check("tag:env=", "value is empty");
        check("web-1", "expected `tag:KEY=VALUE`");
        check("tag:a=b i-12345678", "mix tag filters and instance ids");
        check(
            "tag:a=1 tag:b=1 tag:c=1 tag:d=1 tag:e=1 tag:f=1",
            "6 tag keys",
        );
        let many: Vec<String> = (0..51).map(|i| format!("i-{i:08x}")).collect();
        check(&many.join(" "), "51 instance ids");
        let values: Vec<String> = (0..51).map(|i| i.to_string()).collect();
        check(&format!("tag:n={}", values.join(",")), "51 values");
    }
}
