//! `forge ledger lint`: policy checks over a Ledger checkout.
//!
//! Rules (each [`Finding::rule`]):
//!
//! * `parse` — every `*.yaml` / `*.yml` file parses;
//! * `mutable-tag` — no `latest` (or other mutable) tag, and no image without a tag (an implicit `latest`);
//! * `digest-required` — with [`LintOptions::require_digests`], every kustomize image entry is pinned to a digest;
//! * `prod-auto-sync` — no Argo CD `Application` (or `ApplicationSet` template) under a Prod path has
//!   `syncPolicy.automated`: Prod changes are synced by a person.

use std::path::{Path, PathBuf};

use regex::Regex;

use crate::patch::PatchError;
use crate::patch::select::{self, Cand, ImageRef};
use crate::patch::tree::{self, Kind, Node};

/// Lint policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintOptions {
    /// Environment names that mark a Prod path, compared case-insensitively: a directory named like one
    /// (`apps/prod/api.yaml`) or a file whose stem is one or ends with `-<env>` / `_<env>` (`apps/api-prod.yaml`).
    pub prod_envs: Vec<String>,
    /// Optional regular expression matched against the path relative to the root (with `/` separators); a match
    /// also marks a Prod path.
    pub prod_path_pattern: Option<String>,
    /// Require every kustomize image entry and container `image:` reference to be pinned to a digest.
    pub require_digests: bool,
    /// Tags considered mutable (compared case-insensitively), in addition to a missing tag.
    pub mutable_tags: Vec<String>,
}

impl Default for LintOptions {
    fn default() -> Self {
        Self {
            prod_envs: vec!["prod".to_owned(), "production".to_owned()],
            prod_path_pattern: None,
            require_digests: false,
            mutable_tags: [
                "latest", "stable", "main", "master", "dev", "develop", "edge", "nightly",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

/// One policy violation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// File path relative to the linted root.
    pub file: PathBuf,
    /// 1-based line (1 when the whole file is concerned).
    pub line: usize,
    /// The rule: `parse`, `mutable-tag`, `digest-required` or `prod-auto-sync`.
    pub rule: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Why linting could not run at all (policy violations are [`Finding`]s, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LintError {
    /// A directory or file could not be read.
    #[error("cannot read {path}: {source}; check the path and its permissions")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// [`LintOptions::prod_path_pattern`] is not a valid regular expression.
    #[error("invalid prod path pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
}

/// Lints every YAML file under `root` (skipping `.git`), returning the findings sorted by file and line.
///
/// # Errors
/// [`LintError`] when the tree cannot be read or the options are invalid.
pub fn lint_dir(root: &Path, options: &LintOptions) -> Result<Vec<Finding>, LintError> {
    let pattern = options
        .prod_path_pattern
        .as_deref()
        .map(|p| {
            Regex::new(p).map_err(|source| LintError::Pattern {
                pattern: p.to_owned(),
                source,
            })
        })
        .transpose()?;
    let mut files = Vec::new();
    collect(root, &mut files)?;
    files.sort();
    let mut findings = Vec::new();
    for path in files {
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| LintError::Io {
            path: path.clone(),
            source,
        })?;
        let mut file = FileLint {
            file: rel.clone(),
            options,
            prod: is_prod(&rel, options, pattern.as_ref()),
            findings: &mut findings,
        };
        match String::from_utf8(bytes) {
            Ok(text) => file.lint_text(&text),
            Err(_) => file.push(
                1,
                "parse",
                "not UTF-8 text; save the file as UTF-8".to_owned(),
            ),
        }
    }
    findings.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Ok(findings)
}

/// Lints one file's text (`file` is only used to label findings and decide whether it is a Prod path).
///
/// # Errors
/// [`LintError::Pattern`] when the prod path pattern is invalid.
pub fn lint_text(
    file: &Path,
    text: &str,
    options: &LintOptions,
) -> Result<Vec<Finding>, LintError> {
    let pattern = options
        .prod_path_pattern
        .as_deref()
        .map(|p| {
            Regex::new(p).map_err(|source| LintError::Pattern {
                pattern: p.to_owned(),
                source,
            })
        })
        .transpose()?;
    let mut findings = Vec::new();
    FileLint {
        file: file.to_path_buf(),
        options,
        prod: is_prod(file, options, pattern.as_ref()),
        findings: &mut findings,
    }
    .lint_text(text);
    findings.sort_by_key(|f| f.line);
    Ok(findings)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LintError> {
    let io = |source| LintError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

fn is_prod(rel: &Path, options: &LintOptions, pattern: Option<&Regex>) -> bool {
    let unix = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>();
    let dirs = &unix[..unix.len().saturating_sub(1)];
    let by_dir = dirs.iter().any(|d| {
        options
            .prod_envs
            .iter()
            .any(|env| d.eq_ignore_ascii_case(env))
    });
    let by_stem = rel
        .file_stem()
        .map(|s| s.to_string_lossy())
        .is_some_and(|stem| {
            options.prod_envs.iter().any(|env| {
                let (stem, env) = (stem.to_ascii_lowercase(), env.to_ascii_lowercase());
                stem == env
                    || stem.ends_with(&format!("-{env}"))
                    || stem.ends_with(&format!("_{env}"))
            })
        });
    by_dir || by_stem || pattern.is_some_and(|p| p.is_match(&unix.join("/")))
}

struct FileLint<'a> {
    file: PathBuf,
    options: &'a LintOptions,
    prod: bool,
    findings: &'a mut Vec<Finding>,
}

impl FileLint<'_> {
    fn push(&mut self, line: usize, rule: &str, message: String) {
        self.findings.push(Finding {
            file: self.file.clone(),
            line,
            rule: rule.to_owned(),
            message,
        });
    }

    fn lint_text(&mut self, text: &str) {
        let body = text.strip_prefix('\u{feff}').unwrap_or(text);
        let stream = match tree::parse(body) {
            Ok(stream) => stream,
            Err(e) => {
                let line = match &e {
                    PatchError::InvalidYaml { line, .. } => *line,
                    _ => 1,
                };
                self.push(line, "parse", format!("{e}"));
                return;
            }
        };
        for (i, doc) in stream.docs.iter().enumerate() {
            let label = select::doc_label(doc, i);
            self.sync_policy(doc, &label);
            match select::auto(doc, &label) {
                Ok((cands, _)) => {
                    for cand in cands {
                        self.candidate(&cand);
                    }
                }
                Err(e) => self.push(doc.line, "parse", format!("{label}: {e}")),
            }
            self.container_images(doc);
        }
    }

    fn sync_policy(&mut self, doc: &Node, label: &str) {
        if !self.prod {
            return;
        }
        let spec = match doc.get("kind").and_then(Node::str) {
            Some("Application") => doc.get("spec"),
            Some("ApplicationSet") => doc
                .get("spec")
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("spec")),
            _ => None,
        };
        let Some((key, automated)) = spec
            .and_then(|s| s.get("syncPolicy"))
            .and_then(|p| p.entry("automated"))
        else {
            return;
        };
        let disabled = match &automated.kind {
            Kind::Scalar(s) => matches!(s.value.as_str(), "" | "~" | "null" | "false"),
            Kind::Map(_) => automated.get("enabled").and_then(Node::str) == Some("false"),
            _ => false,
        };
        if !disabled {
            self.push(
                key.line,
                "prod-auto-sync",
                format!(
                    "{label} is under a Prod path but has syncPolicy.automated: Prod must be synced by a person; \
                     remove `automated` (or set `automated.enabled: false`)"
                ),
            );
        }
    }

    fn candidate(&mut self, cand: &Cand) {
        let Some(value) = cand.node.str() else { return };
        if value.contains("{{") {
            return;
        }
        let line = cand.line();
        if cand.image_ref {
            self.image_ref(value, line, &cand.path.to_string());
            return;
        }
        if value.is_empty() {
            self.push(
                line,
                "mutable-tag",
                format!(
                    "{} is empty: the chart's default tag applies, which the Ledger does not pin; set the tag CI built",
                    cand.path
                ),
            );
        } else if self.is_mutable(value) {
            self.push(
                line,
                "mutable-tag",
                self.mutable_message(&cand.path.to_string(), value),
            );
        }
    }

    fn is_mutable(&self, tag: &str) -> bool {
        self.options
            .mutable_tags
            .iter()
            .any(|m| m.eq_ignore_ascii_case(tag))
    }

    fn mutable_message(&self, path: &str, tag: &str) -> String {
        format!(
            "{path} uses the mutable tag `{tag}`: what runs would change without a Ledger commit; \
             set the immutable tag (or digest) CI built with `forge ledger set-tag`"
        )
    }

    fn image_ref(&mut self, value: &str, line: usize, path: &str) {
        let r = ImageRef::parse(value);
        match (&r.tag, &r.digest) {
            (None, None) => self.push(
                line,
                "mutable-tag",
                format!(
                    "{path} = `{value}` names no tag, which means `latest`; pin the tag (and digest) CI built"
                ),
            ),
            (Some(tag), None) if self.is_mutable(tag) => {
                let message = self.mutable_message(path, tag);
                self.push(line, "mutable-tag", message);
            }
            (Some(tag), Some(_)) if self.is_mutable(tag) => {
                // Pinned by digest: the tag is only a label, but a misleading one.
                let message = format!(
                    "{path} pins a digest but labels it with the mutable tag `{tag}`; use the build's own tag"
                );
                self.push(line, "mutable-tag", message);
            }
            _ => {}
        }
        if self.options.require_digests && r.digest.is_none() {
            self.push(
                line,
                "digest-required",
                format!(
                    "{path} = `{value}` is not pinned to a digest and the policy requires digests; \
                     set TAG@sha256:<digest> (forge ledger set-tag --tag TAG@sha256:…)"
                ),
            );
        }
    }

    /// Kubernetes-style `image: repo[:tag][@digest]` strings anywhere in the document.
    fn container_images(&mut self, node: &Node) {
        match &node.kind {
            Kind::Map(entries) => {
                for (k, v) in entries {
                    if k.str() == Some("image")
                        && let Some(value) = v.str()
                        && !value.is_empty()
                        && !value.contains(['{', ' ', '$'])
                    {
                        self.image_ref(value, v.line, "image");
                    } else {
                        self.container_images(v);
                    }
                }
            }
            Kind::Seq(items) => items.iter().for_each(|i| self.container_images(i)),
            Kind::Scalar(_) | Kind::Alias => {}
        }
    }
}
