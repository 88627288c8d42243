//! Scalar extents and rendering: where a scalar's bytes end, and how to write a new value in the old style.

use std::sync::LazyLock;

use regex::Regex;
use yaml_rust2::scanner::TScalarStyle;

/// End (exclusive byte offset) of the scalar starting at `start`, found from its style.
pub(crate) fn scalar_end(
    text: &str,
    start: usize,
    style: TScalarStyle,
    value: &str,
) -> Result<usize, String> {
    let rest = text
        .get(start..)
        .ok_or_else(|| "position outside the text".to_owned())?;
    match style {
        TScalarStyle::Plain => {
            if value.is_empty() {
                return Err("the value is empty (null); write a placeholder tag first".to_owned());
            }
            if rest.starts_with(value) && !value.contains(['\n', '\r']) {
                Ok(start + value.len())
            } else {
                Err("multi-line plain scalar".to_owned())
            }
        }
        TScalarStyle::DoubleQuoted => {
            let mut chars = rest.char_indices();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("expected a double quote at the scalar's start".to_owned());
            }
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => return Ok(start + i + 1),
                    _ => {}
                }
            }
            Err("unterminated double-quoted scalar".to_owned())
        }
        TScalarStyle::SingleQuoted => {
            let bytes = rest.as_bytes();
            if bytes.first() != Some(&b'\'') {
                return Err("expected a single quote at the scalar's start".to_owned());
            }
            let mut i = 1;
            while i < bytes.len() {
                if bytes[i] == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    return Ok(start + i + 1);
                }
                i += 1;
            }
            Err("unterminated single-quoted scalar".to_owned())
        }
        TScalarStyle::Literal => Err("the target is a literal block scalar (`|`)".to_owned()),
        TScalarStyle::Folded => Err("the target is a folded block scalar (`>`)".to_owned()),
    }
}

/// Writes `value` as a scalar in `style` (plain becomes double-quoted when it would not read as a string).
pub(crate) fn render(value: &str, style: TScalarStyle, tagged: bool) -> Result<String, String> {
    match style {
        TScalarStyle::Plain if tagged && plain_safe(value) => Ok(value.to_owned()),
        TScalarStyle::Plain if plain_safe(value) && !resolves_to_non_string(value) => {
            Ok(value.to_owned())
        }
        TScalarStyle::Plain | TScalarStyle::DoubleQuoted => Ok(double_quote(value)),
        TScalarStyle::SingleQuoted if !value.contains(['\n', '\r']) => {
            Ok(format!("'{}'", value.replace('\'', "''")))
        }
        TScalarStyle::SingleQuoted => Ok(double_quote(value)),
        TScalarStyle::Literal | TScalarStyle::Folded => {
            Err("cannot write a block scalar".to_owned())
        }
    }
}

fn double_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `value` can be written as a plain scalar at all (in block or flow context).
fn plain_safe(value: &str) -> bool {
    let Some(first) = value.chars().next() else {
        return false;
    };
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) || first.is_whitespace() {
        return false;
    }
    if value.ends_with([' ', '\t', ':']) {
        return false;
    }
    !value.contains(": ")
        && !value.contains(" #")
        && !value.contains(['\n', '\r', '\t', ',', '[', ']', '{', '}'])
        && !value.chars().any(char::is_control)
}

/// Whether a plain scalar with this text would be read as something other than a string by YAML 1.1 or 1.2 core
/// resolvers (Helm and kubectl still read YAML 1.1 booleans like `yes`).
pub(crate) fn resolves_to_non_string(value: &str) -> bool {
    static NON_STRING: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(concat!(
            r"^(?:",
            r"~|null|Null|NULL",
            r"|y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF",
            r"|[-+]?[0-9][0-9_]*",
            r"|[-+]?0x[0-9a-fA-F_]+|[-+]?0o[0-7_]+|[-+]?0b[01_]+",
            r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?",
            r"|[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?",
            r"|[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+",
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
            r"|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt ].*)?",
            r"|<<|=",
            r")$"
        ))
        .expect("the non-string pattern is a valid regex")
    });
    value.is_empty() || (NON_STRING.is_match(value) && value != ".")
}
