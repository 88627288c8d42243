//! What a compose file says about its images, read with a YAML parser rather than line by line,
//! so flow mappings (`web: {image: …}`), JSON, anchors and aliases, and merge keys (`<<: *base`)
//! are read the way Docker Compose reads them.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, EventReceiver, Parser};
use yaml_rust2::{Yaml, YamlLoader};

/// More YAML nodes than a compose file within the inline size limit can hold without aliases.
/// The loader copies an anchored node for every alias, so aliases of aliases grow a small file
/// exponentially ("billion laughs"); such a file is refused before it is loaded.
const MAX_EXPANDED_NODES: u64 = 100_000;

/// The parts of a compose file the deploy checks look at.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ComposeImages {
    /// `services.<name>.image` after aliases and merge keys, in file order.
    pub(crate) images: Vec<String>,
    /// Services whose image may come from elsewhere: `extends` without an own `image`, or a
    /// top-level `include` (another file's services). Their image cannot be judged here.
    pub(crate) undecidable: Vec<String>,
}

/// Parses `compose` (YAML or JSON) and collects its services' images.
///
/// # Errors
/// A reason, meant for [`crate::ValidationError::Compose`]: the file is not UTF-8, not YAML,
/// or not a mapping at the top.
pub(crate) fn images(compose: &[u8]) -> Result<ComposeImages, String> {
    let text = std::str::from_utf8(compose).map_err(|e| {
        format!("it is not UTF-8 ({e}); save it as UTF-8, as Docker Compose requires")
    })?;
    // Editors on Windows save a byte-order mark; YAML allows one, and yaml-rust2 would read it
    // as part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let not_yaml = |e: yaml_rust2::ScanError| {
        format!("it is not valid YAML ({e}); `docker compose config` reports it too")
    };
    let mut size = ExpandedSize::default();
    Parser::new_from_str(text)
        .load(&mut size, true)
        .map_err(not_yaml)?;
    if size.total > MAX_EXPANDED_NODES {
        return Err(format!(
            "its aliases expand to more than {MAX_EXPANDED_NODES} YAML nodes (aliases of aliases); write the repeated parts out or nest fewer aliases"
        ));
    }
    let docs = YamlLoader::load_from_str(text).map_err(not_yaml)?;
    let mut found = ComposeImages::default();
    let Some(top) = docs.first() else {
        return Err("it holds no YAML document".to_owned());
    };
    let Some(top) = top.as_hash() else {
        return Err(
            "its top level is not a mapping; a compose file starts with `services:`".to_owned(),
        );
    };
    if top.contains_key(&key("include")) {
        found.undecidable.push("include".to_owned());
    }
    let services = top.get(&key("services")).and_then(Yaml::as_hash);
    for (name, service) in services.into_iter().flatten() {
        let name = yaml_text(name).unwrap_or_default();
        let service = merged(service);
        match service.get(&key("image")).and_then(yaml_text) {
            Some(image) => found.images.push(image),
            None if service.contains_key(&key("extends")) => {
                found.undecidable.push(format!("services.{name} (extends)"));
            }
            None => {}
        }
    }
    Ok(found)
}

/// A mapping with its merge keys applied (YAML 1.1 merge, which Compose implements): keys it
/// writes itself win; of the merged mappings, the first that has a key wins.
fn merged(value: &Yaml) -> yaml_rust2::yaml::Hash {
    let mut out = yaml_rust2::yaml::Hash::new();
    let Some(hash) = value.as_hash() else {
        return out;
    };
    let merge_key = key("<<");
    let mut sources = Vec::new();
    for (key, value) in hash {
        if *key == merge_key {
            match value {
                Yaml::Array(items) => sources.extend(items.iter().map(merged)),
                other => sources.push(merged(other)),
            }
        } else {
            out.insert(key.clone(), value.clone());
        }
    }
    for source in sources {
        for (key, value) in source {
            out.entry(key).or_insert(value);
        }
    }
    out
}

/// Counts the nodes of a YAML stream as if every alias were expanded, without expanding them.
#[derive(Default)]
struct ExpandedSize {
    total: u64,
    /// Open sequences and mappings: anchor id (0 for none) and nodes so far.
    open: Vec<(usize, u64)>,
    /// Expanded size of each anchored node.
    anchored: HashMap<usize, u64>,
}

impl ExpandedSize {
    fn add(&mut self, nodes: u64, anchor: usize) {
        if anchor > 0 {
            self.anchored.insert(anchor, nodes);
        }
        let into = match self.open.last_mut() {
            Some((_, size)) => size,
            None => &mut self.total,
        };
        *into = into.saturating_add(nodes);
    }
}

impl EventReceiver for ExpandedSize {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Scalar(_, _, anchor, _) => self.add(1, anchor),
            Event::Alias(id) => {
                let nodes = self.anchored.get(&id).copied().unwrap_or(1);
                self.add(nodes, 0);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.open.push((anchor, 1));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, nodes)) = self.open.pop() {
                    self.add(nodes, anchor);
                }
            }
            _ => {}
        }
    }
}

fn key(name: &str) -> Yaml {
    Yaml::String(name.to_owned())
}

/// A scalar as Compose sees it: strings as written, numbers and booleans as their text.
fn yaml_text(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
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
        check(
            "---\nservices:\n  web:\n    image: >-\n      r/web:1\n...\n",
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
        refused(
            b"services:\n  web:\n    image: a\n    image: b\n",
            "duplicated key",
        );
        refused(b"- web\n", "top level is not a mapping");
        refused(b"\xff\xfe", "not UTF-8");
        refused(b"# only a comment\n", "no YAML document");
        // Nine levels of nine aliases: 9^9 nodes if loaded. Refused without loading it.
        let mut laughs = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
        for level in 1..9 {
            let prev = format!("*l{}", level - 1);
            let items = [prev.as_str(); 9].join(", ");
            laughs.push_str(&format!("l{level}: &l{level} [{items}]\n"));
        }
        laughs.push_str("services:\n  web:\n    image: r/web:${IMAGE_TAG}\n    x: *l8\n");
        refused(
            laughs.as_bytes(),
            "aliases expand to more than 100000 YAML nodes",
        );
        // A few aliases are fine.
        check(
            "x: &x {image: r/web:1}\ny: [*x, *x, *x]\nservices:\n  web: *x\n",
            &["r/web:1"],
            &[],
        );
    }
}
