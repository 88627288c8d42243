//! Locating the target scalar, and splicing a new value into it.

use yaml_rust2::Event;
use yaml_rust2::scanner::TScalarStyle;

use super::keypath::KeyPath;
use super::select::{self, Cand, ImageRef};
use super::tree::{self, Kind, LineIndex};
use super::{Found, PatchError, Patched, Selector, scalar, verify};

const BOM: &str = "\u{feff}";

/// A located target.
pub(crate) struct Target {
    cand: Cand,
    /// Events of the outer text (without BOM).
    events: Vec<Event>,
}

fn split_bom(text: &str) -> (&str, &str) {
    match text.strip_prefix(BOM) {
        Some(body) => (BOM, body),
        None => ("", text),
    }
}

impl Target {
    fn path(&self) -> String {
        self.cand.path.to_string()
    }

    fn value(&self) -> &str {
        self.cand.node.str().unwrap_or_default()
    }

    /// The found value, or why it cannot be read (alias, block scalar, collection).
    pub(crate) fn read(&self) -> Result<Found, PatchError> {
        match &self.cand.node.kind {
            Kind::Scalar(s) if !matches!(s.style, TScalarStyle::Literal | TScalarStyle::Folded) => {
                Ok(self.found())
            }
            _ => Err(self.unsupported(
                self.cand
                    .unsupported
                    .clone()
                    .unwrap_or_else(|| "not a scalar".to_owned()),
            )),
        }
    }

    pub(crate) fn found(&self) -> Found {
        let (value, digest) = if self.cand.image_ref {
            let r = ImageRef::parse(self.value());
            (r.tag.unwrap_or_default(), r.digest)
        } else {
            (self.value().to_owned(), None)
        };
        Found {
            value,
            path: self.path(),
            line: self.cand.line(),
            digest,
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> PatchError {
        PatchError::Unsupported {
            path: self.path(),
            line: self.cand.line(),
            reason: reason.into(),
        }
    }

    pub(crate) fn patch(
        &self,
        text: &str,
        tag: &str,
        digest: Option<&str>,
    ) -> Result<Patched, PatchError> {
        let found = self.found();
        let old_value = self.value();
        if let Some(pinned) = &self.cand.sibling_digest {
            return Err(self.unsupported(format!(
                "the image is also pinned by `digest: {pinned}` next to the tag, and the digest wins: a new tag alone would keep deploying the old image; change the tag and the digest together by hand, or remove the digest pin"
            )));
        }
        let new_value = if self.cand.image_ref {
            let mut r = ImageRef::parse(old_value);
            match (digest, &r.digest) {
                (None, Some(pinned)) => {
                    return Err(PatchError::DigestRequired {
                        path: self.path(),
                        line: found.line,
                        digest: pinned.clone(),
                    });
                }
                (d, _) => {
                    r.tag = Some(tag.to_owned());
                    r.digest = d.map(str::to_owned);
                }
            }
            r.to_string()
        } else {
            if let Some(d) = digest {
                return Err(PatchError::InvalidTag {
                    tag: format!("{tag}@{d}"),
                    reason: format!(
                        "{} holds a tag only; pass the tag alone, or set the chart's digest value with --key",
                        self.path()
                    ),
                });
            }
            tag.to_owned()
        };
        let new_digest = if self.cand.image_ref {
            digest.map(str::to_owned)
        } else {
            None
        };
        let done = |text: String| Patched {
            text,
            old: found.value.clone(),
            new: tag.to_owned(),
            path: found.path.clone(),
            line: found.line,
            old_digest: found.digest.clone(),
            new_digest: new_digest.clone(),
        };
        if new_value == old_value && self.cand.node.str().is_some() {
            return Ok(done(text.to_owned()));
        }
        if let Some(reason) = &self.cand.unsupported {
            return Err(self.unsupported(reason.clone()));
        }
        let Kind::Scalar(s) = &self.cand.node.kind else {
            return Err(self.unsupported("not a scalar"));
        };
        let anchored = match &self.cand.embedded {
            None => verify::inside_anchored(&self.events, self.cand.node.event),
            Some(emb) => {
                verify::inside_anchored(&self.events, emb.block.event)
                    || verify::inside_anchored(&emb.stream.events, self.cand.node.event)
            }
        };
        if anchored {
            return Err(self.unsupported(
                "the value lies inside an anchored collection (`&name`): its aliases elsewhere would change too",
            ));
        }
        let raw = scalar::render(&new_value, s.style, s.tagged).map_err(|e| self.unsupported(e))?;
        let (bom, body) = split_bom(text);
        let new_body = match &self.cand.embedded {
            None => {
                let index = LineIndex::new(body);
                let (start, end) = self.extent(body, &index)?;
                let new_body = splice(body, start, end, &raw);
                verify::verify(
                    &self.events,
                    &new_body,
                    self.cand.node.event,
                    &new_value,
                    &self.path(),
                )?;
                new_body
            }
            Some(emb) => {
                let inner_index = LineIndex::new(&emb.text);
                let (s_in, e_in) = self.extent(&emb.text, &inner_index)?;
                let new_inner = splice(&emb.text, s_in, e_in, &raw);
                verify::verify(
                    &emb.stream.events,
                    &new_inner,
                    self.cand.node.event,
                    &new_value,
                    &self.path(),
                )?;
                // Map the inner byte range onto the outer text, line by line.
                let (inner_line_start, inner_line) = inner_index
                    .line_text(self.cand.node.line - 1)
                    .ok_or_else(|| self.unsupported("cannot map the block's line"))?;
                if e_in > inner_line_start + inner_line.len() {
                    return Err(self.unsupported("the value spans several lines inside the block"));
                }
                let outer_index = LineIndex::new(body);
                let outer_line0 = select::header_line0(&emb.block, &emb.text) + self.cand.node.line;
                let (outer_start, outer_line) = outer_index
                    .line_text(outer_line0)
                    .ok_or_else(|| self.unsupported("cannot map the block's line"))?;
                let indent = outer_line.len().checked_sub(inner_line.len());
                let Some(indent) = indent.filter(|&i| {
                    outer_line.ends_with(inner_line) && outer_line[..i].bytes().all(|b| b == b' ')
                }) else {
                    return Err(self
                        .unsupported("the block's lines do not map onto the file (indentation)"));
                };
                let start = outer_start + indent + (s_in - inner_line_start);
                let new_body = splice(body, start, start + (e_in - s_in), &raw);
                verify::verify(
                    &self.events,
                    &new_body,
                    emb.block.event,
                    &new_inner,
                    &self.path(),
                )?;
                new_body
            }
        };
        Ok(done(format!("{bom}{new_body}")))
    }

    /// Byte range of the target scalar in `text` (outer body or embedded text).
    fn extent(&self, text: &str, index: &LineIndex<'_>) -> Result<(usize, usize), PatchError> {
        let node = &self.cand.node;
        let Kind::Scalar(s) = &node.kind else {
            return Err(self.unsupported("not a scalar"));
        };
        let start = index
            .offset(node.line, node.col)
            .ok_or_else(|| self.unsupported("the parser's position lies outside the text"))?;
        let end =
            scalar::scalar_end(text, start, s.style, &s.value).map_err(|e| self.unsupported(e))?;
        Ok((start, end))
    }
}

fn splice(text: &str, start: usize, end: usize, with: &str) -> String {
    let mut out = String::with_capacity(text.len() + with.len());
    out.push_str(&text[..start]);
    out.push_str(with);
    out.push_str(&text[end..]);
    out
}

pub(crate) fn locate(text: &str, selector: &Selector) -> Result<Target, PatchError> {
    let (_, body) = split_bom(text);
    let stream = tree::parse(body)?;
    let labels: Vec<String> = stream
        .docs
        .iter()
        .enumerate()
        .map(|(i, d)| select::doc_label(d, i))
        .collect();
    let mut docs: Vec<usize> = (0..stream.docs.len()).collect();
    if let Some(app) = &selector.app {
        docs.retain(|&i| select::doc_matches(&stream.docs[i], app));
        if docs.is_empty() {
            return Err(PatchError::DocumentNotFound {
                what: format!("no document has metadata.name (or Kind/name) {app:?}"),
                present: labels,
            });
        }
    }
    let multi_doc = stream.docs.len() > 1;
    let mut cands = Vec::new();
    let mut searched = Vec::new();
    let mut misses = Vec::new();
    if let Some(key) = &selector.key {
        let key = KeyPath::parse(key)?;
        for &i in &docs {
            match select::by_key(&stream.docs[i], &key, &labels[i])? {
                Ok(c) => cands.push(c),
                Err(miss) => misses.push(if multi_doc {
                    format!("{}: {miss}", labels[i])
                } else {
                    miss
                }),
            }
        }
        searched.push(format!("key path {key}"));
        searched.extend(misses);
    } else {
        for &i in &docs {
            let (c, s) = select::auto(&stream.docs[i], &labels[i])?;
            cands.extend(c);
            searched.extend(s);
        }
    }
    if let Some(image) = &selector.image {
        let all: Vec<String> = cands.iter().map(|c| c.describe(multi_doc)).collect();
        cands = select::filter_image(cands, image);
        if cands.is_empty() && !all.is_empty() {
            searched.push(format!(
                "image {image:?} matched none of: {}",
                all.join("; ")
            ));
        }
    }
    if stream.docs.is_empty() {
        searched.push("the file holds no YAML document".to_owned());
    }
    match cands.len() {
        0 => Err(PatchError::NoTarget {
            searched: searched.join("; "),
        }),
        1 => Ok(Target {
            cand: cands.remove(0),
            events: stream.events,
        }),
        _ => Err(PatchError::Ambiguous {
            candidates: cands.iter().map(|c| c.describe(multi_doc)).collect(),
        }),
    }
}
