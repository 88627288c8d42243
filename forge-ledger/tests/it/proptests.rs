//! Property tests: generated YAML documents (random nesting, comments, blank lines, flow and block collections,
//! plain/single/double-quoted scalars, non-ASCII literal blocks, CRLF, BOM) — patching a chosen scalar changes only
//! that scalar's bytes, patching twice equals patching once, and the re-parsed value equals the new value.

use forge_ledger::{Selector, patch_tag, read_tag};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

use crate::patch::changed_region;

#[derive(Debug, Clone, Copy)]
enum Style {
    Plain,
    Single,
    Double,
}

#[derive(Debug, Clone)]
enum Val {
    Scalar(String, Style),
    Literal(Vec<String>),
    Map(Vec<(String, Val)>),
    Seq(Vec<Val>),
    FlowSeq(Vec<(String, Style)>),
    FlowMap(Vec<(String, String, Style)>),
}

#[derive(Debug, Clone)]
struct Opts {
    crlf: bool,
    bom: bool,
    /// Per-entry decoration choices, consumed cyclically: 0 none, 1 comment line, 2 blank line, 3 trailing comment.
    deco: Vec<u8>,
}

/// A rendered scalar the test may patch: its key path, value and byte span.
#[derive(Debug, Clone)]
struct Leaf {
    path: String,
    value: String,
    start: usize,
    end: usize,
}

struct Out<'a> {
    text: String,
    leaves: Vec<Leaf>,
    opts: &'a Opts,
    tick: usize,
}

impl Out<'_> {
    fn nl(&mut self) {
        self.text
            .push_str(if self.opts.crlf { "\r\n" } else { "\n" });
    }

    fn deco(&mut self) -> u8 {
        let d = self
            .opts
            .deco
            .get(self.tick % self.opts.deco.len().max(1))
            .copied()
            .unwrap_or(0);
        self.tick += 1;
        d
    }

    fn scalar(&mut self, path: &str, value: &str, style: Style) {
        let start = self.text.len();
        match style {
            Style::Plain => self.text.push_str(value),
            Style::Single => {
                self.text.push('\'');
                self.text.push_str(&value.replace('\'', "''"));
                self.text.push('\'');
            }
            Style::Double => {
                self.text.push('"');
                self.text.push_str(value);
                self.text.push('"');
            }
        }
        self.leaves.push(Leaf {
            path: path.to_owned(),
            value: value.to_owned(),
            start,
            end: self.text.len(),
        });
    }

    fn pre(&mut self, indent: usize) -> bool {
        match self.deco() {
            1 => {
                self.text.push_str(&" ".repeat(indent));
                self.text.push_str("# note: ünïcödé 日本 — keep me");
                self.nl();
                false
            }
            2 => {
                self.nl();
                false
            }
            3 => true,
            _ => false,
        }
    }

    fn end_line(&mut self, trailing: bool) {
        if trailing {
            self.text.push_str("  # trailing ☕");
        }
        self.nl();
    }

    /// A block mapping at `indent`; when `inline_first`, the caller already wrote the `- ` of a sequence entry.
    fn map(
        &mut self,
        entries: &[(String, Val)],
        indent: usize,
        path: &str,
        mut inline_first: bool,
    ) {
        for (key, val) in entries {
            let trailing = if inline_first {
                false
            } else {
                self.pre(indent)
            };
            if !inline_first {
                self.text.push_str(&" ".repeat(indent));
            }
            inline_first = false;
            let p = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            self.text.push_str(key);
            self.text.push(':');
            self.value(val, indent, &p, trailing);
        }
    }

    /// The value after `key:` (or after `- `).
    fn value(&mut self, val: &Val, indent: usize, path: &str, trailing: bool) {
        match val {
            Val::Scalar(v, style) => {
                self.text.push(' ');
                self.scalar(path, v, *style);
                self.end_line(trailing);
            }
            Val::Literal(lines) => {
                self.text.push_str(" |");
                self.nl();
                for line in lines {
                    self.text.push_str(&" ".repeat(indent + 2));
                    self.text.push_str(line);
                    self.nl();
                }
            }
            Val::Map(entries) => {
                self.end_line(trailing);
                self.map(entries, indent + 2, path, false);
            }
            Val::Seq(items) => {
                self.end_line(trailing);
                self.seq(items, indent + 2, path);
            }
            Val::FlowSeq(items) => {
                self.text.push_str(" [");
                for (i, (v, style)) in items.iter().enumerate() {
                    if i > 0 {
                        self.text.push_str(", ");
                    }
                    self.scalar(&format!("{path}[{i}]"), v, *style);
                }
                self.text.push(']');
                self.end_line(trailing);
            }
            Val::FlowMap(entries) => {
                self.text.push_str(" {");
                for (i, (k, v, style)) in entries.iter().enumerate() {
                    if i > 0 {
                        self.text.push_str(", ");
                    }
                    self.text.push_str(k);
                    self.text.push_str(": ");
                    self.scalar(&format!("{path}.{k}"), v, *style);
                }
                self.text.push('}');
                self.end_line(trailing);
            }
        }
    }

    fn seq(&mut self, items: &[Val], indent: usize, path: &str) {
        for (i, item) in items.iter().enumerate() {
            let trailing = self.pre(indent);
            self.text.push_str(&" ".repeat(indent));
            self.text.push('-');
            let p = format!("{path}[{i}]");
            match item {
                Val::Map(entries) => {
                    self.text.push(' ');
                    self.map(entries, indent + 2, &p, true);
                }
                Val::Seq(inner) => {
                    self.end_line(trailing);
                    self.seq(inner, indent + 2, &p);
                }
                Val::Literal(_) | Val::Scalar(..) | Val::FlowSeq(_) | Val::FlowMap(_) => {
                    self.value(item, indent, &p, trailing);
                }
            }
        }
    }
}

fn render(root: &[(String, Val)], opts: &Opts) -> (String, Vec<Leaf>) {
    let mut out = Out {
        text: String::new(),
        leaves: Vec::new(),
        opts,
        tick: 0,
    };
    if opts.bom {
        out.text.push('\u{feff}');
        // The BOM would otherwise join the first key: start with a comment line.
        out.text.push_str("# generated");
        out.nl();
    }
    out.map(root, 0, "", false);
    (out.text, out.leaves)
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![Just(Style::Plain), Just(Style::Single), Just(Style::Double)]
}

fn scalar_text() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9.é日-]{0,10}"
}

fn key() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,6}"
}

fn dedup<T>(entries: Vec<(String, T)>) -> Vec<(String, T)> {
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect()
}

fn leaf() -> impl Strategy<Value = Val> {
    prop_oneof![
        4 => (scalar_text(), style()).prop_map(|(v, s)| Val::Scalar(v, s)),
        1 => prop::collection::vec("[a-zé日本 ☕:#-]{0,20}", 1..4).prop_map(|lines| {
            Val::Literal(lines.into_iter().map(|l| format!("x{}", l.trim_end())).collect())
        }),
        1 => prop::collection::vec((scalar_text(), style()), 1..4).prop_map(Val::FlowSeq),
        1 => prop::collection::vec((key(), scalar_text(), style()), 1..4).prop_map(|v| {
            let mut seen = std::collections::HashSet::new();
            Val::FlowMap(v.into_iter().filter(|(k, _, _)| seen.insert(k.clone())).collect())
        }),
    ]
}

fn value() -> impl Strategy<Value = Val> {
    leaf().prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec((key(), inner.clone()), 1..5).prop_map(|e| Val::Map(dedup(e))),
            prop::collection::vec(inner, 1..4).prop_map(Val::Seq),
        ]
    })
}

fn document() -> impl Strategy<Value = (String, Vec<Leaf>)> {
    (
        prop::collection::vec((key(), value()), 1..6),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(0u8..5, 1..8),
    )
        .prop_map(|(entries, crlf, bom, deco)| render(&dedup(entries), &Opts { crlf, bom, deco }))
        .prop_filter("has a patchable scalar", |(_, leaves)| !leaves.is_empty())
}

fn new_tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}"
        .prop_filter("not latest", |t| !t.eq_ignore_ascii_case("latest"))
}

/// The generated document embedded in an Argo CD `helm.values: |` block, with the leaves' spans moved along.
fn embedded() -> impl Strategy<Value = (String, Vec<Leaf>)> {
    (
        prop::collection::vec((key(), value()), 1..5),
        any::<bool>(),
        prop::collection::vec(0u8..5, 1..8),
    )
        .prop_map(|(entries, crlf, deco)| {
            let (inner, leaves) = render(
                &dedup(entries),
                &Opts {
                    crlf: false,
                    bom: false,
                    deco,
                },
            );
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut text = [
                "apiVersion: argoproj.io/v1alpha1",
                "kind: Application",
                "metadata:",
                "  name: app",
                "spec:",
                "  source:",
                "    helm:",
                "      # the values block",
                "      values: |",
            ]
            .map(|l| format!("{l}{nl}"))
            .concat();
            // Byte offset in `text` of each inner line start.
            let mut line_starts = Vec::new();
            for line in inner.split_inclusive('\n') {
                let line = line.trim_end_matches('\n');
                if line.is_empty() {
                    line_starts.push(None);
                } else {
                    text.push_str("        ");
                    line_starts.push(Some(text.len()));
                    text.push_str(line);
                }
                text.push_str(nl);
            }
            text.push_str(&format!("      releaseName: app{nl}"));
            let inner_line_starts: Vec<usize> = std::iter::once(0)
                .chain(inner.match_indices('\n').map(|(i, _)| i + 1))
                .collect();
            let moved: Vec<Leaf> = leaves
                .into_iter()
                .map(|leaf| {
                    let line = inner_line_starts.partition_point(|&s| s <= leaf.start) - 1;
                    let base = line_starts[line].expect("a scalar is on a non-empty line")
                        - inner_line_starts[line];
                    Leaf {
                        path: format!("spec.source.helm.values.{}", leaf.path),
                        value: leaf.value,
                        start: leaf.start + base,
                        end: leaf.end + base,
                    }
                })
                .collect();
            (text, moved)
        })
        .prop_filter("has a patchable scalar", |(_, leaves)| !leaves.is_empty())
}

fn check_patch(text: &str, leaves: &[Leaf], pick: Index, tag: &str) -> Result<(), TestCaseError> {
    let leaf = pick.get(leaves);
    let selector = Selector {
        key: Some(leaf.path.clone()),
        ..Selector::default()
    };
    let found = read_tag(text, &selector)
        .map_err(|e| TestCaseError::fail(format!("read {}: {e}\n{text}", leaf.path)))?;
    prop_assert_eq!(&found.value, &leaf.value);
    let patched = patch_tag(text, &selector, tag)
        .map_err(|e| TestCaseError::fail(format!("patch {}: {e}\n{text}", leaf.path)))?;
    // Only the scalar's bytes changed.
    prop_assert!(
        patched.text.starts_with(&text[..leaf.start]),
        "prefix changed"
    );
    prop_assert!(patched.text.ends_with(&text[leaf.end..]), "suffix changed");
    if let Some((offset, old, _)) = changed_region(text, &patched.text) {
        prop_assert!(offset >= leaf.start && offset + old.len() <= leaf.end);
    } else {
        prop_assert_eq!(leaf.value.as_str(), tag);
    }
    // The re-parsed value is the new value.
    prop_assert_eq!(
        read_tag(&patched.text, &selector)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .value,
        tag
    );
    // Patching twice equals patching once.
    let again =
        patch_tag(&patched.text, &selector, tag).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(again.text, patched.text);
    Ok(())
}

proptest! {
    // Regressions live in forge-ledger/proptest-regressions/ (cargo runs tests from the package root).
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/proptests.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn patching_a_scalar_changes_only_its_bytes((text, leaves) in document(), pick in any::<Index>(), tag in new_tag()) {
        check_patch(&text, &leaves, pick, &tag)?;
    }

    #[test]
    fn patching_inside_a_values_block_changes_only_its_bytes((text, leaves) in embedded(), pick in any::<Index>(), tag in new_tag()) {
        check_patch(&text, &leaves, pick, &tag)?;
    }
}

const FIXTURES: [&str; 8] = [
    "shapes/helm-params-block.yaml",
    "shapes/helm-params-flow.yaml",
    "shapes/values-block.yaml",
    "shapes/crlf.yaml",
    "shapes/bom.yaml",
    "shapes/multi-doc.yaml",
    "shapes/kustomize-digest.yaml",
    "corpus/argo-cd-operator-manual-application.yaml",
];

/// Random edits of real fixtures: insert YAML-significant snippets or delete ranges.
fn mutated() -> impl Strategy<Value = String> {
    let snippet = prop::sample::select(vec![
        ":",
        ": ",
        " ",
        "\n",
        "\r\n",
        "\r",
        "#",
        " # x",
        "'",
        "\"",
        "é",
        "日",
        "- ",
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a",
        "|",
        "|\n  x\n",
        ">",
        "\t",
        "---\n",
        "...\n",
        "!!str ",
        "\u{feff}",
        ",",
        "image:\n  tag: 1\n",
    ]);
    let edit = (any::<Index>(), prop::option::of(snippet), 0usize..8);
    (
        prop::sample::select(FIXTURES.to_vec()),
        prop::collection::vec(edit, 1..4),
    )
        .prop_map(|(file, edits)| {
            let mut text = crate::patch::fixture(file);
            for (at, insert, delete) in edits {
                let boundaries: Vec<usize> = text
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([text.len()])
                    .collect();
                let start = *at.get(&boundaries);
                match insert {
                    Some(s) => text.insert_str(start, s),
                    None => {
                        let end = boundaries
                            .iter()
                            .copied()
                            .find(|&b| b >= start + delete)
                            .unwrap_or(text.len());
                        text.replace_range(start..end, "");
                    }
                }
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/proptests.txt"))),
        ..ProptestConfig::default()
    })]

    /// Mangled input never panics; whenever a patch succeeds, one contiguous region on the reported line changed
    /// and the new value reads back.
    #[test]
    fn mangled_manifests_never_half_patch(text in mutated(), tag in new_tag()) {
        let _ = read_tag(&text, &Selector::default());
        if let Ok(patched) = patch_tag(&text, &Selector::default(), &tag) {
            prop_assert_eq!(read_tag(&patched.text, &Selector::default()).map_err(|e| TestCaseError::fail(e.to_string()))?.value, tag.clone());
            if let Some((offset, old, new)) = changed_region(&text, &patched.text) {
                prop_assert!(!old.contains(&b'\n') && !new.contains(&b'\n'), "one line changed");
                let line = text[..offset].matches('\n').count() + 1;
                let crs = text[..offset].matches('\r').count() - text[..offset].matches("\r\n").count();
                prop_assert_eq!(line + crs, patched.line, "the change is on the reported line");
            }
        }
    }
}
