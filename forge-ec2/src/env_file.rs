//! `.env` files for docker compose, written from SSM Parameter Store: the library behind the
//! `forge-refresh-env` binary that runs on each instance.
//!
//! ## Names
//!
//! A parameter's name below the requested path becomes the variable name: the path prefix is
//! removed, the remaining segments are joined with `_`, `.` and `-` become `_`, and letters are
//! upper-cased. With path `/forge/dagster`, `/forge/dagster/db/password` → `DB_PASSWORD` and
//! `/forge/dagster/api-key` → `API_KEY`. A name that maps to something docker compose would
//! not read (empty, starting with a digit, other characters), two parameters mapping to the same
//! name, and a parameter named `IMAGE_TAG` (owned by the deploy) are errors naming the parameters.
//!
//! ## Values
//!
//! Every entry is one line, so line-oriented tools (the deploy script's `IMAGE_TAG` update) can
//! never split a value. docker compose (compose-go's dotenv parser) reads:
//! - single-quoted values literally: no escapes, no `$` interpolation, but a `'` inside cannot
//!   be written and a backslash right before the closing quote would escape it;
//! - double-quoted values with escapes (`\\`, `\"`, `\n`, `\r`, `\t`, `\$`, …) and `$`
//!   interpolation, where `$$` is a literal `$`.
//!
//! So a value is written `'value'` when it has no `'`, no line break and does not end with `\`;
//! otherwise `"…"` with `\` → `\\`, `"` → `\"`, newline → `\n`, CR → `\r` and `$` → `$$`.
//! [`parse`] implements compose's reading rules and the tests round-trip awkward values through
//! it. A value ending in `\` is refused ([`EnvFileError::TrailingBackslash`]): compose-go's
//! reader takes a quote right after a backslash as escaped without counting backslashes, so in
//! the versions checked no quoting of such a value reads back exactly.
//!
//! ## Writing
//!
//! [`replace_file`] writes a temp file in the same directory with mode 0600, fsyncs it, renames
//! it over the target and fsyncs the directory; on any error the old file is untouched and the
//! temp file removed. Values are [`Secret`]s: never in `Debug`, logs or errors.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The variable the deploy owns: kept from the existing `.env` unless a new one is given.
pub const IMAGE_TAG: &str = "IMAGE_TAG";

/// Why a `.env` could not be produced or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvFileError {
    /// The parameters path is malformed.
    #[error(
        "parameters path `{path}` is not valid: it must start with `/` and use only letters, digits and `_ . - /`"
    )]
    BadPath {
        /// The path as given.
        path: String,
    },
    /// A parameter's name does not map to a usable variable name.
    #[error(
        "parameter `{parameter}` maps to `{variable}`, which docker compose cannot use: {reason}; rename the parameter"
    )]
    BadName {
        /// The parameter.
        parameter: String,
        /// The mapped name.
        variable: String,
        /// Why.
        reason: &'static str,
    },
    /// Two parameters map to one variable.
    #[error(
        "parameters `{first}` and `{second}` both map to `{variable}`; rename one of them (names map by joining path segments with `_` and upper-casing)"
    )]
    Collision {
        /// The mapped name.
        variable: String,
        /// One parameter.
        first: String,
        /// The other.
        second: String,
    },
    /// A parameter named `IMAGE_TAG`.
    #[error(
        "parameter `{parameter}` maps to IMAGE_TAG, which the deploy owns (it is the image tag being deployed); delete or rename the parameter"
    )]
    Reserved {
        /// The parameter.
        parameter: String,
    },
    /// A value holds a NUL character, which no environment variable can carry.
    #[error(
        "parameter `{parameter}` holds a NUL character, which an environment variable cannot carry"
    )]
    Nul {
        /// The parameter.
        parameter: String,
    },
    /// A value ends with a backslash: docker compose's .env reader takes a quote right after a
    /// backslash as escaped, in either quoting, so no `.env` line reads back as that value.
    #[error(
        "parameter `{parameter}` ends with a backslash, which docker compose cannot read back from a .env file; change the parameter so it does not end with one and run again; .env was not changed"
    )]
    TrailingBackslash {
        /// The parameter.
        parameter: String,
    },
    /// Reading Parameter Store failed.
    #[error(
        "GetParametersByPath {path} failed after reading {pages} page(s){hint}; .env was not changed"
    )]
    Fetch {
        /// The path.
        path: String,
        /// Pages read before the failure.
        pages: u32,
        /// What to do (may be empty).
        hint: String,
        /// The SDK error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The path holds no parameter: refusing to write an empty `.env`.
    #[error(
        "no parameter under `{path}`: refusing to replace .env with an empty one; check the path (it is case-sensitive) and that the instance role may read it"
    )]
    Empty {
        /// The path.
        path: String,
    },
    /// Reading or writing a file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid `.env` syntax.
    #[error("{}: line {line}: {reason}", path.display())]
    Syntax {
        /// The file (or `<input>`).
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A secret value: `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself; only for writing the file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Maps parameter `name` under `path` to a variable name (see the module docs).
pub fn variable_name(path: &str, name: &str) -> Result<String, EnvFileError> {
    let base = path.trim_end_matches('/');
    let relative = name
        .strip_prefix(base)
        .filter(|r| r.starts_with('/') || base.is_empty())
        .unwrap_or(name)
        .trim_matches('/');
    let variable: String = relative
        .split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    let bad = |reason| EnvFileError::BadName {
        parameter: name.to_owned(),
        variable: variable.clone(),
        reason,
    };
    if variable.is_empty() {
        return Err(bad("the name is empty"));
    }
    if variable.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad(
            "it starts with a digit, and compose ignores such names",
        ));
    }
    if !variable
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(bad("only letters, digits and `_` are portable"));
    }
    Ok(variable)
}

/// Maps parameters (full name, value) under `path` to variables, refusing collisions and
/// `IMAGE_TAG`.
pub fn variables(
    path: &str,
    parameters: impl IntoIterator<Item = (String, Secret)>,
) -> Result<BTreeMap<String, Secret>, EnvFileError> {
    let mut out: BTreeMap<String, (String, Secret)> = BTreeMap::new();
    for (name, value) in parameters {
        let variable = variable_name(path, &name)?;
        if variable == IMAGE_TAG {
            return Err(EnvFileError::Reserved { parameter: name });
        }
        if value.expose().contains('\0') {
            return Err(EnvFileError::Nul { parameter: name });
        }
        if value.expose().ends_with('\\') {
            return Err(EnvFileError::TrailingBackslash { parameter: name });
        }
        if let Some((first, _)) = out.get(&variable) {
            let (first, second) = if *first <= name {
                (first.clone(), name)
            } else {
                (name, first.clone())
            };
            return Err(EnvFileError::Collision {
                variable,
                first,
                second,
            });
        }
        out.insert(variable, (name, value));
    }
    Ok(out.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

/// Quotes a value so docker compose reads back exactly `value` (see the module docs).
pub fn quote_value(value: &str) -> String {
    if !value.contains(['\'', '\n', '\r']) && !value.ends_with('\\') {
        return format!("'{value}'");
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders a whole `.env`: a header comment, variables sorted by name, then `IMAGE_TAG`
/// (unquoted: a validated tag needs no quoting, and the deploy script reads it line-wise).
pub fn render(
    source: &str,
    variables: &BTreeMap<String, Secret>,
    image_tag: Option<&str>,
) -> String {
    let mut out = format!(
        "# Written by forge-refresh-env from SSM Parameter Store path {source}.\n# Do not edit: the next deploy rewrites this file.\n"
    );
    for (name, value) in variables {
        out.push_str(name);
        out.push('=');
        out.push_str(&quote_value(value.expose()));
        out.push('\n');
    }
    if let Some(tag) = image_tag {
        out.push_str(IMAGE_TAG);
        out.push('=');
        if tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            out.push_str(tag);
        } else {
            out.push_str(&quote_value(tag));
        }
        out.push('\n');
    }
    out
}

/// Parses `.env` text the way docker compose (compose-go's dotenv) does: `#` comment lines,
/// optional `export `, `KEY=value` or `KEY: value`, single-quoted (literal), double-quoted
/// (escapes, then `$` interpolation) or unquoted values (cut at ` #`, trailing space trimmed,
/// interpolated). Interpolation looks up earlier entries only (compose also consults the
/// process environment); a key without a value is skipped. Later duplicates win, in place.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    Parser {
        src: text.strip_prefix('\u{feff}').unwrap_or(text),
        pos: 0,
        out: Vec::new(),
    }
    .run()
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    out: Vec<(String, String)>,
}

fn is_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}'
    )
}

impl Parser<'_> {
    fn line(&self) -> usize {
        self.src[..self.pos].matches('\n').count() + 1
    }

    fn err(&self, reason: impl Into<String>) -> EnvFileError {
        EnvFileError::Syntax {
            path: PathBuf::from("<input>"),
            line: self.line(),
            reason: reason.into(),
        }
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn run(mut self) -> Result<Vec<(String, String)>, EnvFileError> {
        loop {
            // Statement start: skip whitespace (including newlines) and comment lines.
            let rest = self.rest();
            let Some(skip) = rest.find(|c: char| !c.is_whitespace()) else {
                break;
            };
            self.pos += skip;
            if self.rest().starts_with('#') {
                match self.rest().find('\n') {
                    Some(n) => self.pos += n,
                    None => break,
                }
                continue;
            }
            self.statement()?;
        }
        Ok(self.out)
    }

    fn statement(&mut self) -> Result<(), EnvFileError> {
        let rest = self.rest();
        if let Some(after) = rest.strip_prefix("export")
            && after.starts_with(char::is_whitespace)
        {
            let trimmed = after.trim_start_matches(is_space);
            self.pos += rest.len() - trimmed.len();
        }
        let rest = self.rest();
        let mut end = None;
        for (i, c) in rest.char_indices() {
            if is_space(c) {
                continue;
            }
            match c {
                '=' | ':' | '\n' => {
                    end = Some((i, c));
                    break;
                }
                c if c.is_alphanumeric() || "_.-[]".contains(c) => {}
                c => return Err(self.err(format!("unexpected character {c:?} in variable name"))),
            }
        }
        let Some((i, term)) = end else {
            // A trailing key without `=`: compose treats it as inherited from the environment.
            self.pos = self.src.len();
            return Ok(());
        };
        let key = rest[..i].trim_end().to_owned();
        if key.contains(' ') {
            return Err(self.err("key cannot contain a space"));
        }
        self.pos += i + term.len_utf8();
        if term == '\n' {
            return Ok(()); // inherited key: no value here
        }
        let trimmed = self.rest().trim_start_matches(is_space);
        self.pos = self.src.len() - trimmed.len();
        let value = self.value()?;
        if let Some(slot) = self.out.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.out.push((key, value));
        }
        Ok(())
    }

    fn value(&mut self) -> Result<String, EnvFileError> {
        let rest = self.rest();
        let quote = match rest.chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => {
                let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
                let line = line.split(" #").next().unwrap_or_default().trim_end();
                let value = self.interpolate(line)?;
                self.pos = self.src.len() - after.len();
                return Ok(value);
            }
        };
        // Quoted: a backslash before the quote character escapes it (the backslash is dropped);
        // before anything else both are kept.
        let mut raw = String::new();
        let mut escaped = false;
        let mut close = None;
        for (i, c) in rest.char_indices().skip(1) {
            if escaped {
                escaped = false;
                if c != quote {
                    raw.push('\\');
                }
                raw.push(c);
                continue;
            }
            match c {
                '\\' => escaped = true,
                c if c == quote => {
                    close = Some(i);
                    break;
                }
                c => raw.push(c),
            }
        }
        let Some(close) = close else {
            return Err(self.err("unterminated quoted value"));
        };
        self.pos += close + 1;
        if quote == '"' {
            self.interpolate(&expand_escapes(&raw))
        } else {
            Ok(raw)
        }
    }

    /// compose's template substitution: `$$` → `$`, `$NAME` / `${NAME}` / `${NAME:-default}` /
    /// `${NAME-default}` from earlier entries (missing → empty or the default).
    fn interpolate(&self, s: &str) -> Result<String, EnvFileError> {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '$' {
                out.push(c);
                continue;
            }
            match chars.peek().map(|&(_, c)| c) {
                Some('$') => {
                    chars.next();
                    out.push('$');
                }
                Some('{') => {
                    let body_start = i + 2;
                    let Some(len) = s[body_start..].find('}') else {
                        // The value itself is never quoted: it may be a secret.
                        return Err(self.err(
                            "invalid interpolation format: `${` without a closing `}` in the value",
                        ));
                    };
                    let body = &s[body_start..body_start + len];
                    let (name, default, colon) = if let Some((n, d)) = body.split_once(":-") {
                        (n, Some(d), true)
                    } else if let Some((n, d)) = body.split_once('-') {
                        (n, Some(d), false)
                    } else {
                        (body, None, false)
                    };
                    let found = self.lookup(name);
                    let value = match (found, default) {
                        (Some(v), Some(d)) if colon && v.is_empty() => d.to_owned(),
                        (Some(v), _) => v.to_owned(),
                        (None, Some(d)) => d.to_owned(),
                        (None, None) => String::new(),
                    };
                    out.push_str(&value);
                    while chars.peek().is_some_and(|&(j, _)| j <= body_start + len) {
                        chars.next();
                    }
                }
                Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                    let start = i + 1;
                    let len = s[start..]
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(s.len() - start);
                    out.push_str(self.lookup(&s[start..start + len]).unwrap_or_default());
                    while chars.peek().is_some_and(|&(j, _)| j < start + len) {
                        chars.next();
                    }
                }
                _ => out.push('$'),
            }
        }
        Ok(out)
    }

    fn lookup(&self, name: &str) -> Option<&str> {
        self.out
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// compose-go's `expandEscapes` for double-quoted values: `\a \b \f \n \r \t \v \" \\` and
/// `\0ooo` octal become characters, `\$` becomes `$$` (a literal `$` after interpolation);
/// any other backslash sequence stays as written.
fn expand_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        if bytes[i] != b'\\' || i + 1 >= s.len() {
            let c = s[i..].chars().next().unwrap_or_default();
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let next = bytes[i + 1];
        let simple = match next {
            b'a' => Some('\u{7}'),
            b'b' => Some('\u{8}'),
            b'f' => Some('\u{c}'),
            b'n' => Some('\n'),
            b'r' => Some('\r'),
            b't' => Some('\t'),
            b'v' => Some('\u{b}'),
            b'"' => Some('"'),
            b'\\' => Some('\\'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
        } else if next == b'$' {
            out.push_str("$$");
            i += 2;
        } else if next == b'0' {
            // `\0` + up to 3 digits: only exactly three octal digits decode (Go's UnquoteChar).
            let digits: &[u8] = &bytes[i + 2..(i + 5).min(s.len())];
            let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            let octal = &digits[..n];
            if n == 3 && octal.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = octal
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Some(c) = char::from_u32(v).filter(|_| v <= 255) {
                    out.push(c);
                    i += 5;
                    continue;
                }
            }
            out.push_str(&s[i..i + 2 + n]);
            i += 2 + n;
        } else {
            out.push('\\');
            i += 1;
        }
    }
    out
}

/// Reads `IMAGE_TAG` from an existing `.env` (None when the file or the key is missing).
pub fn current_image_tag(path: &Path) -> Result<Option<String>, EnvFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(EnvFileError::Io {
                action: "cannot read",
                path: path.to_owned(),
                source,
            });
        }
    };
    let entries = parse(&text).map_err(|e| match e {
        EnvFileError::Syntax { line, reason, .. } => EnvFileError::Syntax {
            path: path.to_owned(),
            line,
            reason,
        },
        other => other,
    })?;
    Ok(entries
        .into_iter()
        .find(|(k, _)| k == IMAGE_TAG)
        .map(|(_, v)| v))
}

/// Replaces `path` atomically: `write` fills a temp file (mode 0600) in the same directory,
/// which is fsynced and renamed over `path`, then the directory is fsynced. If `write` or any
/// step fails, `path` keeps its old contents and the temp file is removed.
pub fn replace_file(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), EnvFileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map_or_else(|| ".env".into(), |n| n.to_string_lossy().into_owned());
    let io = |action: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| EnvFileError::Io {
            action,
            path: p,
            source,
        }
    };
    let mut last_err = None;
    for attempt in 0..16u32 {
        let tmp = dir.join(format!(
            ".{file_name}.forge-tmp-{}-{attempt}",
            std::process::id()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = match options.open(&tmp) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                last_err = Some(e);
                continue;
            }
            Err(e) => return Err(io("cannot create a temp file next to", path)(e)),
        };
        let result = (|| {
            write(&mut file).map_err(io("cannot write the temp file for", path))?;
            file.flush()
                .map_err(io("cannot write the temp file for", path))?;
            file.sync_all()
                .map_err(io("cannot fsync the temp file for", path))?;
            drop(file);
            std::fs::rename(&tmp, path).map_err(io("cannot rename the temp file over", path))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        return Ok(());
    }
    Err(io("cannot create a temp file next to", path)(
        last_err.unwrap_or_else(|| std::io::Error::other("temp names exhausted")),
    ))
}

/// Options for [`refresh`].
#[derive(Debug, Clone)]
pub struct RefreshOptions {
    /// Parameter Store path (recursive).
    pub path: String,
    /// The `.env` file to write.
    pub file: PathBuf,
    /// `IMAGE_TAG` to write; None keeps the existing file's value.
    pub image_tag: Option<String>,
    /// Only compute the names; write nothing.
    pub dry_run: bool,
}

/// What [`refresh`] did (names only: values never leave the library).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefreshReport {
    /// The file.
    pub file: PathBuf,
    /// The variables written (or that would be), sorted.
    pub names: Vec<String>,
    /// Parameters read.
    pub parameters: usize,
    /// GetParametersByPath pages read.
    pub pages: u32,
    /// The `IMAGE_TAG` kept or set (a tag, not a secret).
    pub image_tag: Option<String>,
    /// False for a dry run.
    pub written: bool,
}

/// Reads every parameter under `path` (recursive, decrypted, every page).
pub async fn fetch(
    config: &aws_config::SdkConfig,
    path: &str,
) -> Result<(Vec<(String, Secret)>, u32), EnvFileError> {
    use aws_sdk_ssm::error::ProvideErrorMetadata as _;
    if crate::script::check_parameters_path(path).is_err() {
        return Err(EnvFileError::BadPath {
            path: path.to_owned(),
        });
    }
    let client = aws_sdk_ssm::Client::new(config);
    let mut out = Vec::new();
    let mut pages = 0u32;
    let mut token: Option<String> = None;
    loop {
        let page = client
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .with_decryption(true)
            .max_results(10)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| EnvFileError::Fetch {
                path: path.to_owned(),
                pages,
                hint: match e.code() {
                    Some("AccessDeniedException") => ": the instance role needs ssm:GetParametersByPath on this path (and kms:Decrypt for SecureString)".to_owned(),
                    Some("ValidationException") => ": SSM refused the path".to_owned(),
                    _ => String::new(),
                },
                source: Box::new(e),
            })?;
        pages += 1;
        for p in page.parameters() {
            if let (Some(name), Some(value)) = (p.name(), p.value()) {
                out.push((name.to_owned(), Secret::new(value)));
            }
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
    }
    Ok((out, pages))
}

/// Fetches `options.path` and rewrites `options.file` atomically, keeping `IMAGE_TAG` unless a
/// new one is given. On any error the old file stays as it was.
pub async fn refresh(
    config: &aws_config::SdkConfig,
    options: &RefreshOptions,
) -> Result<RefreshReport, EnvFileError> {
    let (parameters, pages) = fetch(config, &options.path).await?;
    let count = parameters.len();
    if count == 0 {
        return Err(EnvFileError::Empty {
            path: options.path.clone(),
        });
    }
    let vars = variables(&options.path, parameters)?;
    let image_tag = match &options.image_tag {
        Some(t) => Some(t.clone()),
        None => current_image_tag(&options.file)?,
    };
    let names: Vec<String> = vars.keys().cloned().collect();
    if !options.dry_run {
        let text = render(&options.path, &vars, image_tag.as_deref());
        replace_file(&options.file, |f| f.write_all(text.as_bytes()))?;
        tracing::info!(file = %options.file.display(), variables = names.len(), "wrote .env");
    }
    Ok(RefreshReport {
        file: options.file.clone(),
        names,
        parameters: count,
        pages,
        image_tag,
        written: !options.dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let check = |name: &str, expected: &str| {
            assert_eq!(
                variable_name("/forge/dagster", name).unwrap(),
                expected,
                "{name}"
            );
        };
        check("/forge/dagster/db/password", "DB_PASSWORD");
        check("/forge/dagster/api-key", "API_KEY");
        check("/forge/dagster/a.b/c_d", "A_B_C_D");
        assert_eq!(
            variable_name("/forge/dagster/", "/forge/dagster/x").unwrap(),
            "X"
        );
        assert!(variable_name("/forge/dagster", "/forge/dagster/1x").is_err());
        assert!(variable_name("/forge/dagster", "/forge/dagster/ä").is_err());
    }

    #[test]
    fn collisions_and_reserved_name_the_parameters() {
        let err = variables(
            "/p",
            [
                ("/p/db/password".to_owned(), Secret::new("a")),
                ("/p/db-password".to_owned(), Secret::new("b")),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/p/db-password")
                && err.contains("/p/db/password")
                && err.contains("DB_PASSWORD"),
            "{err}"
        );
        assert!(!err.contains("\"a\"") && !err.contains("'a'"));
        let err = variables("/p", [("/p/image_tag".to_owned(), Secret::new("x"))]).unwrap_err();
        assert!(matches!(err, EnvFileError::Reserved { .. }));
        // compose cannot read a value ending in a backslash back: refused, value not shown.
        let err =
            variables("/p", [("/p/share".to_owned(), Secret::new(r"C:\s3cret\"))]).unwrap_err();
        assert!(
            matches!(err, EnvFileError::TrailingBackslash { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("/p/share") && !err.to_string().contains("s3cret"));
    }

    #[test]
    fn secrets_never_debug() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn escapes_follow_compose() {
        assert_eq!(expand_escapes(r"a\nb"), "a\nb");
        assert_eq!(expand_escapes(r"\\n"), "\\n");
        assert_eq!(expand_escapes(r"\$x"), "$$x");
        assert_eq!(expand_escapes(r"\0101"), "A");
        assert_eq!(expand_escapes(r"\q"), r"\q");
    }

    #[test]
    fn parses_compose_syntax() {
        let text = "# c\nexport A=1 # comment\nB='x $A \\n'\nC=\"y $A\\n\"\nD: plain#no-comment\nE=$$HOME\nINHERITED\n";
        let got = parse(text).unwrap();
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "x $A \\n"),
            ("C", "y 1\n"),
            ("D", "plain#no-comment"),
            ("E", "$HOME"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(got, want);
        assert!(parse("A='open\n").is_err());
        assert!(parse("A B=1\n").is_err());
    }
}
