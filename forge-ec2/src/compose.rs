//! What a compose file says about its images, read with a YAML parser rather than line by line,
//! so flow mappings (`web: {image: …}`), JSON, anchors and aliases, merge keys (`<<: *base`) and
//! several documents in one file are read the way Docker Compose reads them.
//!
//! The tree is built from yaml-rust2's parser events with aliases *shared* (`Rc`), never
//! copied: yaml-rust2's own loader deep-copies an anchored node for every alias, so a few
//! hundred bytes of aliases of aliases would need gigabytes. Lookups through merge keys count
//! the entries they visit against [`MAX_VISITS`] for the same reason.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use yaml_rust2::parser::{Event, EventReceiver, Parser, Tag};

/// Mapping entries a lookup may visit through merge keys. A compose file within the inline size
/// limit visits a few thousand; only merges of merges of … (exponential, like an alias bomb)
/// come near it.
const MAX_VISITS: usize = 100_000;

/// The parts of a compose file the deploy checks look at.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ComposeImages {
    /// `services.<name>.image` after aliases and merge keys, in file order.
    pub(crate) images: Vec<String>,
    /// Services whose image may come from elsewhere: `extends` without an own `image`, or a
    /// top-level `include` (another file's services). Their image cannot be judged here.
    pub(crate) undecidable: Vec<String>,
}

/// Parses `compose` (YAML or JSON; every document, as Compose merges them) and collects its
/// services' images.
///
/// # Errors
/// A reason, meant for [`crate::ValidationError::Compose`]: the file is not UTF-8, not YAML,
/// a document is not a mapping, or its merge keys expand past what a compose file needs.
pub(crate) fn images(compose: &[u8]) -> Result<ComposeImages, String> {
    let text = std::str::from_utf8(compose).map_err(|e| {
        format!("it is not UTF-8 ({e}); save it as UTF-8, as Docker Compose requires")
    })?;
    // Editors on Windows save a byte-order mark; YAML allows one, and yaml-rust2 would read it
    // as part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut tree = TreeBuilder::default();
    Parser::new_from_str(text)
        .load(&mut tree, true)
        .map_err(|e| {
            format!("it is not valid YAML ({e}); `docker compose config` reports it too")
        })?;
    let documents: Vec<&Rc<Node>> = tree.documents.iter().filter(|d| !d.is_null()).collect();
    if documents.is_empty() {
        return Err("it holds no YAML document".to_owned());
    }
    let mut visits = 0usize;
    let mut found = ComposeImages::default();
    for document in documents {
        let Node::Map(_) = **document else {
            return Err(
                "a document in it is not a mapping; a compose file starts with `services:`"
                    .to_owned(),
            );
        };
        let top = entries(document, &mut visits)?;
        if lookup(&top, "include").is_some() {
            found.undecidable.push("include".to_owned());
        }
        let Some(services) = lookup(&top, "services") else {
            continue;
        };
        for (name, service) in entries(&services, &mut visits)? {
            let service = entries(&service, &mut visits)?;
            match lookup(&service, "image").and_then(|i| i.text().map(str::to_owned)) {
                Some(image) => found.images.push(image),
                None if lookup(&service, "extends").is_some() => {
                    found.undecidable.push(format!("services.{name} (extends)"));
                }
                None => {}
            }
        }
    }
    Ok(found)
}

/// A YAML node. Aliases are the anchored node itself (shared).
#[derive(Debug)]
enum Node {
    /// A scalar as written; `reset` for Compose's `!reset` tag, which removes the key.
    Scalar {
        value: String,
        reset: bool,
    },
    Seq(Vec<Rc<Node>>),
    Map(Vec<(Rc<Node>, Rc<Node>)>),
}

impl Node {
    fn text(&self) -> Option<&str> {
        match self {
            Node::Scalar {
                value,
                reset: false,
            } => Some(value),
            _ => None,
        }
    }

    /// An empty document (`---` with nothing after it) or an explicit null.
    fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { value, .. } if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

/// A mapping's entries with its merge keys applied (YAML merge, which Compose implements):
/// keys it writes itself first, then keys of the merged mappings not already there, the first
/// merged mapping first. Anything but a mapping has no entries.
fn entries(node: &Rc<Node>, visits: &mut usize) -> Result<Vec<(String, Rc<Node>)>, String> {
    let Node::Map(pairs) = &**node else {
        return Ok(Vec::new());
    };
    *visits += pairs.len();
    if *visits > MAX_VISITS {
        return Err(format!(
            "its merge keys expand to more than {MAX_VISITS} mapping entries (merges of merges); write the repeated parts out or nest fewer merges"
        ));
    }
    let mut out: Vec<(String, Rc<Node>)> = Vec::with_capacity(pairs.len());
    let mut seen = HashSet::new();
    let mut sources = Vec::new();
    for (key, value) in pairs {
        let Some(key) = key.text() else { continue };
        if key == "<<" {
            match &**value {
                Node::Seq(items) => sources.extend(items.iter().cloned()),
                _ => sources.push(value.clone()),
            }
        } else if seen.insert(key.to_owned()) {
            out.push((key.to_owned(), value.clone()));
        }
    }
    for source in sources {
        for (key, value) in entries(&source, visits)? {
            if seen.insert(key.clone()) {
                out.push((key, value));
            }
        }
    }
    Ok(out)
}

fn lookup(entries: &[(String, Rc<Node>)], key: &str) -> Option<Rc<Node>> {
    entries
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// Builds [`Node`]s from parser events.
#[derive(Default)]
struct TreeBuilder {
    documents: Vec<Rc<Node>>,
    anchors: HashMap<usize, Rc<Node>>,
    /// Open sequences and mappings with their anchor id (0: none), and a mapping's key waiting
    /// for its value.
    open: Vec<(usize, Open)>,
}

enum Open {
    Seq(Vec<Rc<Node>>),
    Map(Vec<(Rc<Node>, Rc<Node>)>, Option<Rc<Node>>),
}

impl TreeBuilder {
    fn complete(&mut self, node: Rc<Node>, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.open.last_mut() {
            None => self.documents.push(node),
            Some((_, Open::Seq(items))) => items.push(node),
            Some((_, Open::Map(pairs, pending))) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => pairs.push((key, node)),
            },
        }
    }
}

impl EventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Scalar(value, _, anchor, tag) => {
                let reset = matches!(tag, Some(Tag { ref handle, ref suffix }) if handle == "!" && suffix == "reset");
                self.complete(Rc::new(Node::Scalar { value, reset }), anchor);
            }
            Event::Alias(id) => {
                // An alias to an anchor not (yet) complete is not valid YAML the loader would
                // accept either; it reads as null.
                let node = self.anchors.get(&id).cloned().unwrap_or_else(|| {
                    Rc::new(Node::Scalar {
                        value: String::new(),
                        reset: false,
                    })
                });
                self.complete(node, 0);
            }
            Event::SequenceStart(anchor, _) => self.open.push((anchor, Open::Seq(Vec::new()))),
            Event::MappingStart(anchor, _) => {
                self.open.push((anchor, Open::Map(Vec::new(), None)));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, open)) = self.open.pop() {
                    let node = match open {
                        Open::Seq(items) => Node::Seq(items),
                        Open::Map(pairs, _) => Node::Map(pairs),
                    };
                    self.complete(Rc::new(node), anchor);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    fn check(compose: &str, images: &[&str], undecidable: &[&str]) {
        let got = super::images(compose.as_bytes()).expect(compose);
        assert_eq!(got.images, images, "{compose}");
        assert_eq!(got.undecidable, undecidable, "{compose}");
    }

    #[test]
    fn images_are_read_as_compose_reads_them() {
        check(
            "services:\n  web:\n    image: r/web:${IMAGE_TAG}\n",
            &["r/web:${IMAGE_TAG}"],
            &[],
        );
        check(
            "services:\n  web: {image: \"r/web:$IMAGE_TAG\", init: true}\n  db:\n    image: postgres:16\n",
            &["r/web:$IMAGE_TAG", "postgres:16"],
            &[],
        );
        check(
            r#"{"services": {"web": {"image": "r/web:${IMAGE_TAG}"}}}"#,
            &["r/web:${IMAGE_TAG}"],
            &[],
        );
        // An alias is the anchored value.
        check(
            "x-app: &app r/web:${IMAGE_TAG}\nservices:\n  web:\n    image: *app\n",
            &["r/web:${IMAGE_TAG}"],
            &[],
        );
        // Merge keys: the service's own key wins, then the first merged mapping.
        check(
            "x-a: &a {image: r/a:1}\nx-b: &b {image: r/b:1}\nservices:\n  one:\n    <<: [*a, *b]\n  two:\n    <<: *b\n    image: r/own:1\n",
            &["r/a:1", "r/own:1"],
            &[],
        );
        // …also directly under `services:`, and at the top.
        check(
            "x: &s {web: {image: r/web:1}}\nservices:\n  <<: *s\n  db:\n    image: postgres\n",
            &["postgres", "r/web:1"],
            &[],
        );
        check(
            "x: &top {services: {web: {image: r/web:1}}}\n<<: *top\n",
            &["r/web:1"],
            &[],
        );
        // Compose's `!reset` removes a value.
        check("services:\n  web:\n    image: !reset null\n", &[], &[]);
        check(
            "services:\n  web:\n    extends: {file: base.yml, service: web}\n",
            &[],
            &["services.web (extends)"],
        );
        check("include: [other.yml]\nservices: {}\n", &[], &["include"]);
        check("services:\n  web:\n    build: .\n", &[], &[]);
        // A byte-order mark and Windows line endings, as Windows editors save them.
        check(
            "\u{feff}services:\r\n  web:\r\n    image: r/web:1\r\n",
            &["r/web:1"],
            &[],
        );
        // Every document counts, as Compose merges them; empty ones are skipped.
        check(
            "---\nservices:\n  db: {image: postgres}\n---\n---\nservices:\n  web:\n    image: >-\n      r/web:1\n...\n",
            &["postgres", "r/web:1"],
            &[],
        );
        // Keys are compared as written (yaml.v3 does too): `010` and `10` are two keys.
        check(
            "services:\n  web:\n    image: r/web:1\n    labels: {010: a, 10: b}\n",
            &["r/web:1"],
            &[],
        );
    }

    #[test]
    fn unreadable_files_say_why() {
        let refused = |compose: &[u8], needle: &str| {
            let e = super::images(compose).expect_err("refused");
            assert!(e.contains(needle), "{e}");
        };
        refused(
            b"services:\n  web:\n\timage: x\n",
            "not valid YAML (tabs disallowed",
        );
        refused(b"- web\n", "a document in it is not a mapping");
        refused(b"\xff\xfe", "not UTF-8");
        refused(b"# only a comment\n", "no YAML document");
        // Merges of merges: 9 levels of 9 merged mappings would be 9^9 entries to visit.
        let mut bomb =
            String::from("m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}\n");
        for level in 1..9 {
            let prev = format!("*m{}", level - 1);
            let items = [prev.as_str(); 9].join(", ");
            bomb.push_str(&format!(
                "m{level}: &m{level} {{<<: [{items}], k{level}: x}}\n"
            ));
        }
        bomb.push_str("services:\n  web:\n    <<: *m8\n    image: r/web:1\n");
        refused(bomb.as_bytes(), "merge keys expand to more than 100000");
    }

    /// Aliases of aliases are shared, not copied: nine levels of nine aliases of a long string
    /// (9^8 copies of it if expanded) read in no time and no memory.
    #[test]
    fn alias_bombs_are_not_expanded() {
        let long = "x".repeat(3000);
        let mut laughs = format!("l0: &l0 [{long}, {long}]\n");
        for level in 1..9 {
            let prev = format!("*l{}", level - 1);
            let items = [prev.as_str(); 9].join(", ");
            laughs.push_str(&format!("l{level}: &l{level} [{items}]\n"));
        }
        laughs.push_str("services:\n  web:\n    image: r/web:1\n    x: *l8\n");
        check(&laughs, &["r/web:1"], &[]);
    }
}
