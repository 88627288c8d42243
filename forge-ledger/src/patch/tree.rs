//! A positioned node tree built from yaml-rust2's event stream, and line/column → byte offset conversion.

use yaml_rust2::Event;
use yaml_rust2::parser::Parser;
use yaml_rust2::scanner::TScalarStyle;

use super::PatchError;

/// A scalar's data.
#[derive(Debug, Clone)]
pub(crate) struct Scalar {
    pub(crate) value: String,
    pub(crate) style: TScalarStyle,
    /// The scalar carries an explicit tag (`!!str 1.2`), so its type does not depend on quoting.
    pub(crate) tagged: bool,
}

/// A node's content.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Alias,
}

/// A node with its position.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    /// Anchor id (0: none).
    pub(crate) anchor: usize,
    /// 1-based line of the start marker.
    pub(crate) line: usize,
    /// 0-based column (in characters) of the start marker.
    pub(crate) col: usize,
    /// Index of the node's (first) event in the stream.
    pub(crate) event: usize,
}

impl Node {
    pub(crate) fn scalar(&self) -> Option<&Scalar> {
        match &self.kind {
            Kind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn str(&self) -> Option<&str> {
        self.scalar().map(|s| s.value.as_str())
    }

    /// Entries of a mapping whose key is the scalar `key`.
    pub(crate) fn get_all<'a>(&'a self, key: &str) -> Vec<&'a Node> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .filter(|(k, _)| k.str() == Some(key))
                .map(|(_, v)| v)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The `(key, value)` entry of `key` when it occurs exactly once.
    pub(crate) fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        match &self.kind {
            Kind::Map(entries) => {
                let mut hits = entries.iter().filter(|(k, _)| k.str() == Some(key));
                match (hits.next(), hits.next()) {
                    (Some((k, v)), None) => Some((k, v)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The value of `key` when it occurs exactly once.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match self.get_all(key).as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// A parsed stream: the events (for the re-parse check) and one root node per document.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) events: Vec<Event>,
    pub(crate) docs: Vec<Node>,
}

/// Parses `text` (which must not start with a BOM) into events and document trees.
pub(crate) fn parse(text: &str) -> Result<Stream, PatchError> {
    if let Some(pos) = text.find('\0') {
        let index = LineIndex::new(text);
        let (line, col) = index.line_col(pos);
        return Err(PatchError::InvalidYaml {
            line,
            col,
            message: "NUL character (the YAML parser would silently stop reading here)".to_owned(),
            source: None,
        });
    }
    let mut parser = Parser::new_from_str(text);
    let mut events = Vec::new();
    let mut marks = Vec::new();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            let mut message = e.info().to_owned();
            let index = LineIndex::new(text);
            let tab_follows = index
                .offset(e.marker().line(), e.marker().col())
                .is_some_and(|at| {
                    text.get(at..).is_some_and(|rest| rest.starts_with('\t'))
                        || text.get(..at).is_some_and(|before| before.ends_with('\t'))
                });
            if tab_follows {
                message.push_str(
                    " (a tab is next to this position; Forge's YAML parser accepts only spaces after `key:` — replace the tab \
                     with a space)",
                );
            }
            PatchError::InvalidYaml {
                line: e.marker().line(),
                col: e.marker().col() + 1,
                message,
                source: Some(e.clone()),
            }
        })?;
        let end = event == Event::StreamEnd;
        events.push(event);
        marks.push((mark.line(), mark.col()));
        if end {
            break;
        }
    }
    let mut builder = Builder {
        events: &events,
        marks: &marks,
        pos: 0,
    };
    let mut docs = Vec::new();
    while builder.pos < events.len() {
        match &events[builder.pos] {
            Event::DocumentStart => {
                builder.pos += 1;
                if let Some(node) = builder.node() {
                    docs.push(node);
                }
            }
            _ => builder.pos += 1,
        }
    }
    Ok(Stream { events, docs })
}

/// Collects the events of `text` (no tree), for the re-parse check.
pub(crate) fn events(text: &str) -> Result<Vec<Event>, PatchError> {
    parse(text).map(|s| s.events)
}

struct Builder<'a> {
    events: &'a [Event],
    marks: &'a [(usize, usize)],
    pos: usize,
}

impl Builder<'_> {
    fn node(&mut self) -> Option<Node> {
        let event = self.pos;
        let (line, col) = *self.marks.get(event)?;
        let mk = |kind, anchor| Node {
            kind,
            anchor,
            line,
            col,
            event,
        };
        match self.events.get(event)? {
            Event::Scalar(value, style, anchor, tag) => {
                self.pos += 1;
                Some(mk(
                    Kind::Scalar(Scalar {
                        value: value.clone(),
                        style: *style,
                        tagged: tag.is_some(),
                    }),
                    *anchor,
                ))
            }
            Event::Alias(_) => {
                self.pos += 1;
                Some(mk(Kind::Alias, 0))
            }
            Event::SequenceStart(anchor, _) => {
                self.pos += 1;
                let mut items = Vec::new();
                while !matches!(self.events.get(self.pos), Some(Event::SequenceEnd) | None) {
                    items.push(self.node()?);
                }
                self.pos += 1;
                Some(mk(Kind::Seq(items), *anchor))
            }
            Event::MappingStart(anchor, _) => {
                self.pos += 1;
                let mut entries = Vec::new();
                while !matches!(self.events.get(self.pos), Some(Event::MappingEnd) | None) {
                    let key = self.node()?;
                    let value = self.node()?;
                    entries.push((key, value));
                }
                self.pos += 1;
                Some(mk(Kind::Map(entries), *anchor))
            }
            _ => None,
        }
    }
}

/// Byte offsets of line starts, splitting lines exactly like yaml-rust2's scanner (`\r\n`, `\n`, lone `\r`).
#[derive(Debug)]
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let bytes = text.as_bytes();
        let mut starts = vec![0];
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                    starts.push(i + 2);
                    i += 2;
                }
                b'\r' | b'\n' => {
                    starts.push(i + 1);
                    i += 1;
                }
                _ => i += 1,
            }
        }
        Self { text, starts }
    }

    /// Byte offset of 1-based `line`, 0-based char `col`.
    pub(crate) fn offset(&self, line: usize, col: usize) -> Option<usize> {
        let start = *self.starts.get(line.checked_sub(1)?)?;
        let rest = self.text.get(start..)?;
        if col == 0 {
            return Some(start);
        }
        rest.char_indices()
            .nth(col)
            .map(|(i, _)| start + i)
            .or_else(|| (rest.chars().count() == col).then_some(self.text.len()))
    }

    /// The text of 0-based line `line`, without its line break, and its start offset.
    pub(crate) fn line_text(&self, line: usize) -> Option<(usize, &'a str)> {
        let start = *self.starts.get(line)?;
        let end = self
            .starts
            .get(line + 1)
            .copied()
            .unwrap_or(self.text.len());
        let raw = self.text.get(start..end)?;
        let trimmed = raw
            .strip_suffix("\r\n")
            .or_else(|| raw.strip_suffix('\n'))
            .or_else(|| raw.strip_suffix('\r'));
        Some((start, trimmed.unwrap_or(raw)))
    }

    /// 1-based line and column of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(0, |s| s.chars().count());
        (line, col + 1)
    }
}
