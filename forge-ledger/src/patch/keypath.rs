//! Key paths: `spec.sources[1].helm.parameters[name=image.tag].value`, `a\.b` for a dot inside a key.

use std::fmt;

use super::PatchError;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
    /// The sequence entry whose mapping has `key: value`.
    Match(String, String),
}

/// A parsed key path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub(crate) Vec<Seg>);

impl KeyPath {
    pub(crate) fn parse(input: &str) -> Result<Self, PatchError> {
        let err = |reason: &str| PatchError::InvalidKey {
            key: input.to_owned(),
            reason: reason.to_owned(),
        };
        let mut segs = Vec::new();
        let mut key = String::new();
        let mut key_open = true; // a key may start here
        let mut chars = input.chars().peekable();
        let flush = |key: &mut String, segs: &mut Vec<Seg>| {
            if !key.is_empty() {
                segs.push(Seg::Key(std::mem::take(key)));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(next @ ('.' | '[' | ']' | '\\')) => key.push(next),
                    Some(other) => {
                        key.push('\\');
                        key.push(other);
                    }
                    None => return Err(err("ends with a lone backslash")),
                },
                '.' => {
                    if key.is_empty() && key_open {
                        return Err(err("empty key (two dots in a row, or a leading dot)"));
                    }
                    flush(&mut key, &mut segs);
                    key_open = true;
                    if chars.peek().is_none() {
                        return Err(err("ends with a dot"));
                    }
                }
                '[' => {
                    flush(&mut key, &mut segs);
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some(']') => break,
                            Some(c) => inner.push(c),
                            None => return Err(err("unclosed `[`")),
                        }
                    }
                    if let Some((k, v)) = inner.split_once('=') {
                        if k.is_empty() {
                            return Err(err("`[=value]` needs a key name before `=`"));
                        }
                        segs.push(Seg::Match(k.to_owned(), v.to_owned()));
                    } else {
                        let n = inner.parse::<usize>().map_err(|_| {
                            err("`[...]` holds an index `[0]` or a match `[name=value]`")
                        })?;
                        segs.push(Seg::Index(n));
                    }
                    key_open = false;
                    if let Some(&next) = chars.peek()
                        && next != '.'
                        && next != '['
                    {
                        return Err(err("expected `.` or `[` after `]`"));
                    }
                }
                c => {
                    if !key_open {
                        return Err(err("expected `.` or `[` after `]`"));
                    }
                    key.push(c);
                }
            }
        }
        flush(&mut key, &mut segs);
        if segs.is_empty() {
            return Err(err("empty key path"));
        }
        Ok(Self(segs))
    }

    pub(crate) fn push(&self, seg: Seg) -> Self {
        let mut segs = self.0.clone();
        segs.push(seg);
        Self(segs)
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        self.push(Seg::Key(key.to_owned()))
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(
                        &k.replace('\\', "\\\\")
                            .replace('.', "\\.")
                            .replace('[', "\\[")
                            .replace(']', "\\]"),
                    )?;
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Match(k, v) => write!(f, "[{k}={v}]")?,
            }
        }
        Ok(())
    }
}
