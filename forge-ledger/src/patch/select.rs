//! Candidate discovery: Argo CD `Application` / `ApplicationSet` sources, Helm values files, kustomize images, and
//! explicit key paths.

use std::rc::Rc;

use yaml_rust2::scanner::TScalarStyle;

use super::PatchError;
use super::keypath::{KeyPath, Seg};
use super::tree::{self, Kind, Node, Stream};

/// An embedded YAML document inside a literal block scalar (`helm.values: |`).
#[derive(Debug)]
pub(crate) struct Embedded {
    /// The block scalar node in the outer text.
    pub(crate) block: Node,
    /// The block's value: the embedded YAML text.
    pub(crate) text: String,
    /// The embedded text, parsed.
    pub(crate) stream: Stream,
}

/// A scalar that may hold the tag.
#[derive(Debug, Clone)]
pub(crate) struct Cand {
    pub(crate) path: KeyPath,
    /// The scalar (or alias) node; positions are in the embedded text when `embedded` is set.
    pub(crate) node: Node,
    pub(crate) embedded: Option<Rc<Embedded>>,
    /// A kustomize `images` entry (`name[=newName][:tag][@digest]`) rather than a bare tag.
    pub(crate) image_ref: bool,
    /// Image names this candidate answers to for `--image`.
    pub(crate) names: Vec<String>,
    /// Label of the document (`Kind/name`).
    pub(crate) doc: String,
    /// Set when the candidate cannot be patched as written.
    pub(crate) unsupported: Option<String>,
    /// A `digest` key next to the tag (Kustomization `images[]`, Helm `image:`): the digest
    /// wins over the tag, so a new tag alone would change nothing that deploys.
    pub(crate) sibling_digest: Option<String>,
}

impl Cand {
    /// 1-based line in the outer text.
    pub(crate) fn line(&self) -> usize {
        match &self.embedded {
            None => self.node.line,
            Some(emb) => header_line0(&emb.block, &emb.text) + self.node.line + 1,
        }
    }

    pub(crate) fn describe(&self, multi_doc: bool) -> String {
        let value = match &self.node.kind {
            Kind::Scalar(s) => format!("{:?}", s.value),
            Kind::Alias => "an alias".to_owned(),
            Kind::Seq(_) => "a sequence".to_owned(),
            Kind::Map(_) => "a mapping".to_owned(),
        };
        let doc = if multi_doc {
            format!("{}: ", self.doc)
        } else {
            String::new()
        };
        format!("{doc}{} = {value} (line {})", self.path, self.line())
    }

    fn matches_image(&self, image: &str) -> bool {
        self.names
            .iter()
            .any(|n| n == image || n.strip_suffix(image).is_some_and(|p| p.ends_with('/')))
    }
}

/// 0-based line of a literal block's header (`key: |`), from its first content line and leading blank lines.
pub(crate) fn header_line0(block: &Node, value: &str) -> usize {
    let leading = value.bytes().take_while(|&b| b == b'\n').count();
    block.line.saturating_sub(2 + leading)
}

/// An error inside a literal block, with its line moved to the file's numbering.
fn block_error(block: &Node, err: PatchError) -> PatchError {
    match err {
        PatchError::InvalidYaml {
            line,
            col,
            message,
            source,
        } => PatchError::InvalidYaml {
            line: header_line0(block, block.str().unwrap_or_default()) + line + 1,
            col,
            message: format!(
                "inside the literal block starting at line {}: {message}",
                block.line
            ),
            source,
        },
        other => other,
    }
}

/// A document label: `Kind/metadata.name`, or `document N`.
pub(crate) fn doc_label(root: &Node, index: usize) -> String {
    let kind = root.get("kind").and_then(Node::str);
    let name = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Node::str);
    match (kind, name) {
        (Some(k), Some(n)) => format!("{k}/{n}"),
        (None, Some(n)) => n.to_owned(),
        (Some(k), None) => format!("{k} (document {})", index + 1),
        (None, None) => format!("document {}", index + 1),
    }
}

/// Whether the document matches `--app` (`name` or `Kind/name`).
pub(crate) fn doc_matches(root: &Node, app: &str) -> bool {
    let kind = root.get("kind").and_then(Node::str);
    let name = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Node::str);
    match app.split_once('/') {
        Some((k, n)) => kind == Some(k) && name == Some(n),
        None => name == Some(app),
    }
}

fn embed(block: &Node) -> Option<Result<Rc<Embedded>, PatchError>> {
    let scalar = block.scalar()?;
    if scalar.style != TScalarStyle::Literal {
        return None;
    }
    Some(tree::parse(&scalar.value).map(|stream| {
        Rc::new(Embedded {
            block: block.clone(),
            text: scalar.value.clone(),
            stream,
        })
    }))
}

struct Collector<'a> {
    doc: &'a str,
    out: Vec<Cand>,
    searched: Vec<String>,
}

impl Collector<'_> {
    fn add(
        &mut self,
        path: KeyPath,
        node: &Node,
        embedded: Option<&Rc<Embedded>>,
        image_ref: bool,
        names: Vec<String>,
    ) {
        let unsupported = match &node.kind {
            Kind::Alias => Some(
                "the value is an alias (`*name`): patching it would change the anchor's other uses"
                    .to_owned(),
            ),
            Kind::Scalar(_) if node.anchor != 0 => Some(
                "the value carries an anchor (`&name`): aliases elsewhere would change with it"
                    .to_owned(),
            ),
            Kind::Scalar(s) if s.style == TScalarStyle::Folded => {
                Some("the value is a folded block scalar (`>`)".to_owned())
            }
            Kind::Scalar(s) if s.style == TScalarStyle::Literal => {
                Some("the value is a literal block scalar (`|`)".to_owned())
            }
            // An ApplicationSet (or Helm) placeholder: the tag comes from a generator's elements
            // or the chart, per environment; replacing the placeholder would pin one tag for
            // every generated Application, Prod included.
            Kind::Scalar(s) if s.value.contains("{{") => Some(format!(
                "the value '{}' is a template placeholder: the tag comes from the ApplicationSet's generators (or the chart); change it there",
                s.value
            )),
            Kind::Scalar(_) => None,
            Kind::Seq(_) | Kind::Map(_) => {
                Some("the value is a collection, not a scalar".to_owned())
            }
        };
        self.out.push(Cand {
            path,
            node: node.clone(),
            embedded: embedded.cloned(),
            image_ref,
            names: names.into_iter().filter(|n| !n.is_empty()).collect(),
            doc: self.doc.to_owned(),
            unsupported,
            sibling_digest: None,
        });
    }

    /// Records a non-empty `digest` next to the candidate just added.
    fn pin_last(&mut self, digest: Option<&Node>) {
        // `digest:` empty or null (`~`, `null`) pins nothing.
        let digest = digest
            .and_then(Node::str)
            .map(str::trim)
            .filter(|d| !matches!(*d, "" | "~" | "null" | "Null" | "NULL"));
        if let (Some(d), Some(last)) = (digest, self.out.last_mut()) {
            last.sibling_digest = Some(d.to_owned());
        }
    }

    /// An Argo CD Application / ApplicationSet document. Returns false when the document is neither.
    fn argo(&mut self, root: &Node) -> Result<bool, PatchError> {
        let kind = root.get("kind").and_then(Node::str);
        let (spec, base) = match kind {
            Some("Application") => (root.get("spec"), KeyPath::default().key("spec")),
            Some("ApplicationSet") => (
                root.get("spec")
                    .and_then(|s| s.get("template"))
                    .and_then(|t| t.get("spec")),
                KeyPath::default().key("spec").key("template").key("spec"),
            ),
            _ => return Ok(false),
        };
        let Some(spec) = spec else { return Ok(true) };
        if let Some(source) = spec.get("source") {
            self.source(source, &base.key("source"))?;
        }
        if let Some(Kind::Seq(sources)) = spec.get("sources").map(|s| &s.kind) {
            for (i, source) in sources.iter().enumerate() {
                self.source(source, &base.key("sources").push(Seg::Index(i)))?;
            }
        }
        Ok(true)
    }

    fn source(&mut self, source: &Node, path: &KeyPath) -> Result<(), PatchError> {
        if let Some(helm) = source.get("helm") {
            let hpath = path.key("helm");
            if let Some(Kind::Seq(params)) = helm.get("parameters").map(|p| &p.kind) {
                let repo_of = |prefix: &str| {
                    params.iter().find_map(|p| {
                        let name = p.get("name")?.str()?;
                        let want = if prefix.is_empty() {
                            "image.repository".to_owned()
                        } else {
                            format!("{prefix}.image.repository")
                        };
                        (name == want)
                            .then(|| p.get("value")?.str().map(str::to_owned))
                            .flatten()
                    })
                };
                for param in params {
                    let Some(name) = param.get("name").and_then(Node::str) else {
                        continue;
                    };
                    let Some(prefix) = name.strip_suffix("image.tag") else {
                        continue;
                    };
                    if !(prefix.is_empty() || prefix.ends_with('.')) {
                        continue;
                    }
                    let prefix = prefix.trim_end_matches('.');
                    let Some(value) = param.get("value") else {
                        continue;
                    };
                    let mut names = vec![prefix.to_owned()];
                    names.extend(repo_of(prefix));
                    let p = hpath
                        .key("parameters")
                        .push(Seg::Match("name".to_owned(), name.to_owned()))
                        .key("value");
                    self.add(p, value, None, false, names);
                }
            }
            if let Some(obj) = helm.get("valuesObject") {
                values_walk(self, obj, &hpath.key("valuesObject"), None);
            }
            if let Some(values) = helm.get("values") {
                let vpath = hpath.key("values");
                match embed(values) {
                    Some(Ok(emb)) => {
                        if let Some(root) = emb.stream.docs.first().cloned() {
                            values_walk(self, &root, &vpath, Some(&emb));
                        }
                    }
                    Some(Err(e)) => {
                        // Template syntax and the like: the block is not YAML. If it may hold the tag, the patcher
                        // cannot tell, so it refuses instead of picking another layer.
                        if values.str().is_some_and(|v| v.contains("tag")) {
                            self.out.push(Cand {
                                path: vpath,
                                node: values.clone(),
                                embedded: None,
                                image_ref: false,
                                names: Vec::new(),
                                doc: self.doc.to_owned(),
                                unsupported: Some(format!(
                                    "helm.values mentions `tag` but does not parse as YAML ({}), so whether it \
                                     sets the image tag is unknown; name the tag's scalar with --key",
                                    block_error(values, e)
                                )),
                                sibling_digest: None,
                            });
                        }
                    }
                    None => {
                        if let Some(s) = values.scalar()
                            && s.value.contains("tag")
                            && tree::parse(&s.value).is_ok_and(|st| {
                                let mut c = Collector {
                                    doc: self.doc,
                                    out: Vec::new(),
                                    searched: Vec::new(),
                                };
                                st.docs.iter().for_each(|d| {
                                    values_walk(&mut c, d, &KeyPath::default(), None)
                                });
                                !c.out.is_empty()
                            })
                        {
                            self.out.push(Cand {
                                path: vpath,
                                node: values.clone(),
                                embedded: None,
                                image_ref: false,
                                names: Vec::new(),
                                doc: self.doc.to_owned(),
                                unsupported: Some(
                                    "helm.values holds an image tag but is not a literal block (`|`); \
                                     rewrite it as `values: |` or use valuesObject"
                                        .to_owned(),
                                ),
                                sibling_digest: None,
                            });
                        } else if let Kind::Map(_) = values.kind {
                            values_walk(self, values, &vpath, None);
                        }
                    }
                }
            }
            if let Some(files) = helm.get("valueFiles")
                && let Kind::Seq(items) = &files.kind
            {
                let names: Vec<&str> = items.iter().filter_map(Node::str).collect();
                if !names.is_empty() {
                    self.searched.push(format!(
                        "{} lists helm.valueFiles [{}]: if the tag lives there, patch that values file",
                        hpath,
                        names.join(", ")
                    ));
                }
            }
        }
        if let Some(Kind::Seq(images)) = source
            .get("kustomize")
            .and_then(|k| k.get("images"))
            .map(|i| &i.kind)
        {
            for (i, entry) in images.iter().enumerate() {
                let names = entry
                    .str()
                    .map(|s| ImageRef::parse(s).names())
                    .unwrap_or_default();
                self.add(
                    path.key("kustomize").key("images").push(Seg::Index(i)),
                    entry,
                    None,
                    true,
                    names,
                );
            }
        }
        Ok(())
    }

    /// A `kustomize.config.k8s.io` Kustomization: `images[i].newTag`.
    fn kustomization(&mut self, root: &Node) -> bool {
        if root.get("kind").and_then(Node::str) != Some("Kustomization") {
            return false;
        }
        if let Some(Kind::Seq(images)) = root.get("images").map(|i| &i.kind) {
            for (i, entry) in images.iter().enumerate() {
                if let Some(tag) = entry.get("newTag") {
                    let names = ["name", "newName"]
                        .iter()
                        .filter_map(|k| entry.get(k).and_then(Node::str).map(str::to_owned))
                        .collect();
                    self.add(
                        KeyPath::default()
                            .key("images")
                            .push(Seg::Index(i))
                            .key("newTag"),
                        tag,
                        None,
                        false,
                        names,
                    );
                    self.pin_last(entry.get("digest"));
                }
            }
        }
        true
    }
}

/// Helm values: every `image: {tag: …}` mapping, at any depth.
fn values_walk(c: &mut Collector<'_>, node: &Node, path: &KeyPath, emb: Option<&Rc<Embedded>>) {
    match &node.kind {
        Kind::Map(entries) => {
            for (k, v) in entries {
                let Some(key) = k.str() else { continue };
                if key == "<<" {
                    continue;
                }
                let kpath = path.key(key);
                if key == "image" {
                    match &v.kind {
                        Kind::Map(_) => {
                            let prefix = match path.0.last() {
                                Some(Seg::Key(k))
                                    if !matches!(k.as_str(), "valuesObject" | "values") =>
                                {
                                    k.clone()
                                }
                                _ => String::new(),
                            };
                            let mut names = vec![prefix];
                            for name_key in ["repository", "name"] {
                                names
                                    .extend(v.get(name_key).and_then(Node::str).map(str::to_owned));
                            }
                            for tag in v.get_all("tag") {
                                c.add(kpath.key("tag"), tag, emb, false, names.clone());
                                c.pin_last(v.get("digest"));
                            }
                        }
                        Kind::Alias => c.add(kpath.key("tag"), v, emb, false, Vec::new()),
                        _ => {}
                    }
                }
                values_walk(c, v, &kpath, emb);
            }
        }
        Kind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                values_walk(c, item, &path.push(Seg::Index(i)), emb);
            }
        }
        Kind::Scalar(_) | Kind::Alias => {}
    }
}

/// Auto-detected candidates of one document, plus a description of what was searched.
pub(crate) fn auto(root: &Node, doc: &str) -> Result<(Vec<Cand>, Vec<String>), PatchError> {
    let mut c = Collector {
        doc,
        out: Vec::new(),
        searched: Vec::new(),
    };
    if c.argo(root)? {
        c.searched.insert(
            0,
            format!(
                "{doc}: helm.parameters[name=…image.tag].value, helm.valuesObject/values …image.tag and \
                 kustomize.images of every source"
            ),
        );
    } else if c.kustomization(root) {
        c.searched.insert(0, format!("{doc}: images[*].newTag"));
    } else {
        values_walk(&mut c, root, &KeyPath::default(), None);
        c.searched
            .insert(0, format!("{doc}: Helm values `…image.tag`"));
    }
    Ok((c.out, c.searched))
}

/// The candidate an explicit key path names in one document (`Ok(None)` when the path does not exist there).
pub(crate) fn by_key(
    root: &Node,
    key: &KeyPath,
    doc: &str,
) -> Result<Result<Cand, String>, PatchError> {
    let mut node = root.clone();
    let mut emb: Option<Rc<Embedded>> = None;
    let mut walked = KeyPath::default();
    for seg in &key.0 {
        if let Kind::Scalar(s) = &node.kind
            && s.style == TScalarStyle::Literal
            && emb.is_none()
            && let Some(e) = embed(&node)
        {
            let e = e.map_err(|err| block_error(&node, err))?;
            match e.stream.docs.first() {
                Some(r) => node = r.clone(),
                None => return Ok(Err(format!("{walked} is an empty block"))),
            }
            emb = Some(e);
        }
        let unsupported = |why: &str| PatchError::Unsupported {
            path: walked.to_string(),
            line: node.line,
            reason: why.to_owned(),
        };
        let next = match (&node.kind, seg) {
            (Kind::Alias, _) => return Err(unsupported("an alias (`*name`) lies on the key path")),
            (Kind::Map(_), Seg::Key(k)) => match node.get_all(k).as_slice() {
                [] => {
                    let keys: Vec<&str> = match &node.kind {
                        Kind::Map(entries) => entries.iter().filter_map(|(k, _)| k.str()).collect(),
                        _ => Vec::new(),
                    };
                    return Ok(Err(format!(
                        "no key `{k}` under {} (keys there: {})",
                        display_or_root(&walked),
                        keys.join(", ")
                    )));
                }
                [one] => (*one).clone(),
                many => {
                    return Err(PatchError::Ambiguous {
                        candidates: many
                            .iter()
                            .map(|n| format!("{} (line {})", walked.key(k), n.line))
                            .collect(),
                    });
                }
            },
            (Kind::Seq(items), Seg::Index(n)) => match items.get(*n) {
                Some(item) => item.clone(),
                None => {
                    return Ok(Err(format!(
                        "{} has {} entries, no [{n}]",
                        display_or_root(&walked),
                        items.len()
                    )));
                }
            },
            (Kind::Seq(items), Seg::Match(k, v)) => {
                let hits: Vec<&Node> = items
                    .iter()
                    .filter(|item| item.get(k).and_then(Node::str) == Some(v.as_str()))
                    .collect();
                match hits.as_slice() {
                    [] => {
                        return Ok(Err(format!(
                            "no entry with {k}={v} in {}",
                            display_or_root(&walked)
                        )));
                    }
                    [one] => (*one).clone(),
                    many => {
                        return Err(PatchError::Ambiguous {
                            candidates: many
                                .iter()
                                .map(|n| format!("{} (line {})", walked.push(seg.clone()), n.line))
                                .collect(),
                        });
                    }
                }
            }
            (Kind::Scalar(_), _) => {
                return Ok(Err(format!(
                    "{} is a scalar; the path cannot continue into it",
                    display_or_root(&walked)
                )));
            }
            (Kind::Map(_), _) => {
                return Ok(Err(format!(
                    "{} is a mapping: use .key",
                    display_or_root(&walked)
                )));
            }
            (Kind::Seq(_), Seg::Key(_)) => {
                return Ok(Err(format!(
                    "{} is a sequence: use [n] or [name=value]",
                    display_or_root(&walked)
                )));
            }
        };
        walked = walked.push(seg.clone());
        node = next;
    }
    let segs = &key.0;
    let image_ref = segs.len() >= 3
        && matches!(segs[segs.len() - 1], Seg::Index(_) | Seg::Match(..))
        && segs[segs.len() - 2] == Seg::Key("images".to_owned())
        && segs[segs.len() - 3] == Seg::Key("kustomize".to_owned());
    let mut c = Collector {
        doc,
        out: Vec::new(),
        searched: Vec::new(),
    };
    let names = node
        .str()
        .filter(|_| image_ref)
        .map(|s| ImageRef::parse(s).names())
        .unwrap_or_default();
    c.add(key.clone(), &node, emb.as_ref(), image_ref, names);
    Ok(c.out.pop().ok_or_else(|| "no candidate".to_owned()))
}

fn display_or_root(path: &KeyPath) -> String {
    if path.0.is_empty() {
        "the document root".to_owned()
    } else {
        path.to_string()
    }
}

/// Narrows candidates to an image NAME: only those known to be that image. A candidate whose
/// image is unknown is never taken for it (`--image web` must not patch an unnamed tag: the
/// caller names an image so that nothing else moves).
pub(crate) fn filter_image(cands: Vec<Cand>, image: &str) -> Vec<Cand> {
    cands
        .into_iter()
        .filter(|c| !c.names.is_empty() && c.matches_image(image))
        .collect()
}

/// A kustomize image entry: `name[=newName][:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRef {
    /// Everything before the tag (`name` or `name=newName`).
    pub(crate) name: String,
    pub(crate) tag: Option<String>,
    pub(crate) digest: Option<String>,
}

impl ImageRef {
    pub(crate) fn parse(s: &str) -> Self {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_owned())),
            None => (s, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let eq = rest.rfind('=').map_or(0, |i| i + 1);
        let from = slash.max(eq);
        match rest[from..].rfind(':') {
            Some(i) => Self {
                name: rest[..from + i].to_owned(),
                tag: Some(rest[from + i + 1..].to_owned()),
                digest,
            },
            None => Self {
                name: rest.to_owned(),
                tag: None,
                digest,
            },
        }
    }

    pub(crate) fn names(&self) -> Vec<String> {
        match self.name.split_once('=') {
            Some((a, b)) => vec![a.to_owned(), b.to_owned()],
            None => vec![self.name.clone()],
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}
