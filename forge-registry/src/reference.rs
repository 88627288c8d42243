//! Image references: `host[:port]/repo[:tag][@sha256:…]` and `oci:<dir>[:<tag>|@<digest>]`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::digest::Digest;

/// The registry Docker Hub references default to.
pub const DOCKER_HUB: &str = "docker.io";

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid image reference '{input}': {reason}; expected host[:port]/repository[:tag][@sha256:<hex>] or oci:<dir>[:<tag>|@<digest>]"
)]
pub struct ReferenceError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Location {
    Registry {
        registry: String,
        repository: String,
    },
    Layout {
        path: PathBuf,
    },
}

/// An image reference, either in a registry or in an OCI image layout directory.
///
/// Parsing applies Docker Hub defaults (`alpine` → `docker.io/library/alpine`); printing gives
/// the normalized form, which parses back to the same value.
///
/// ```
/// use forge_registry::Reference;
/// let r: Reference = "127.0.0.1:5000/team/app:1.2.3".parse().unwrap();
/// assert_eq!(r.registry(), "127.0.0.1:5000");
/// assert_eq!(r.repository(), "team/app");
/// assert_eq!(r.tag(), Some("1.2.3"));
/// let hub: Reference = "alpine".parse().unwrap();
/// assert_eq!(hub.to_string(), "docker.io/library/alpine");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    location: Location,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// A registry reference from parts (validated). The registry must be one a reference can
    /// name: a single-label host without a port (`registry`) would read as a Docker Hub
    /// namespace, so it is refused rather than silently sent to Docker Hub.
    pub fn new(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> Result<Self, ReferenceError> {
        let mut s = format!("{registry}/{repository}");
        if let Some(t) = tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &digest {
            s.push('@');
            s.push_str(d.as_str());
        }
        let parsed: Reference = s.parse()?;
        let hub_alias = matches!(registry, "index.docker.io" | "registry-1.docker.io");
        if parsed.registry() != registry && !(hub_alias && parsed.registry() == DOCKER_HUB) {
            return Err(err(
                &s,
                format!(
                    "registry host '{registry}' has no '.' or port, so a reference reads it as a Docker Hub namespace: give it with its port (e.g. '{registry}:443'), or 'localhost' for this machine"
                ),
            ));
        }
        Ok(parsed)
    }

    /// A reference into an OCI image layout directory.
    pub fn oci_layout(
        path: impl Into<PathBuf>,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> Result<Self, ReferenceError> {
        let path = path.into();
        if let Some(t) = tag {
            check_tag(t, &path.display().to_string())?;
        }
        let r = Reference {
            location: Location::Layout { path },
            tag: tag.map(str::to_owned),
            digest,
        };
        // Reports and evidence carry the printed form: it must name this same directory.
        let printed = r.to_string();
        match printed.parse::<Reference>() {
            Ok(back) if back == r => Ok(r),
            // The parser's own reason (whitespace, an empty path) names the problem.
            Err(e) => Err(e),
            Ok(_) => Err(err(
                &printed,
                "the layout directory cannot be written as an `oci:` reference that reads back the same (a ':' in its last component reads as a tag, '@sha256:' as a digest, and the path must be UTF-8): rename the directory or reach it through another path",
            )),
        }
    }

    /// The registry host (`docker.io`, `127.0.0.1:5000`); empty for an OCI layout.
    pub fn registry(&self) -> &str {
        match &self.location {
            Location::Registry { registry, .. } => registry,
            Location::Layout { .. } => "",
        }
    }

    /// The repository (`library/alpine`); for an OCI layout, the directory as text.
    pub fn repository(&self) -> &str {
        match &self.location {
            Location::Registry { repository, .. } => repository,
            Location::Layout { path } => path.to_str().unwrap_or(""),
        }
    }

    /// The OCI layout directory, when this is an `oci:` reference.
    pub fn layout_path(&self) -> Option<&Path> {
        match &self.location {
            Location::Registry { .. } => None,
            Location::Layout { path } => Some(path),
        }
    }

    /// The tag, if one was given (no `latest` default is applied).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if one was given.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// True for `oci:` references.
    pub fn is_oci_layout(&self) -> bool {
        matches!(self.location, Location::Layout { .. })
    }

    /// The same image location with `tag` as its tag (validated).
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        check_tag(tag, &self.to_string())?;
        Ok(Reference {
            tag: Some(tag.to_owned()),
            ..self.clone()
        })
    }

    /// The same image location pinned to `digest` (the tag is kept).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same location without tag or digest.
    pub fn without_tag_or_digest(&self) -> Self {
        Reference {
            location: self.location.clone(),
            tag: None,
            digest: None,
        }
    }

    /// The manifest reference to fetch: the digest if present, else the tag, else `latest`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

fn err(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

fn check_tag(tag: &str, input: &str) -> Result<(), ReferenceError> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(err(
            input,
            format!(
                "tag '{tag}' must be 1-128 characters of [A-Za-z0-9_.-] not starting with '.' or '-'"
            ),
        ))
    }
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_host(h: &str) -> bool {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match h.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u32>().map_or(true, |p| p > 65535))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(err(input, "it is empty"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(input, "it contains whitespace or control characters"));
        }
        if let Some(rest) = input.strip_prefix("oci:") {
            return parse_layout(input, rest);
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => (
                n,
                Some(d.parse::<Digest>().map_err(|e| err(input, e.to_string()))?),
            ),
            None => (input, None),
        };
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                (&name_tag[..colon], Some(&name_tag[colon + 1..]))
            }
            _ => (name_tag, None),
        };
        if let Some(t) = tag {
            check_tag(t, input)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                if !valid_host(first) {
                    return Err(err(input, format!("registry host '{first}' is not valid")));
                }
                let host = match first {
                    "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
                    h => h,
                };
                let repo = if host == DOCKER_HUB && !rest.contains('/') {
                    format!("library/{rest}")
                } else {
                    rest.to_owned()
                };
                (host.to_owned(), repo)
            }
            Some(_) => (DOCKER_HUB.to_owned(), name.to_owned()),
            None => (DOCKER_HUB.to_owned(), format!("library/{name}")),
        };
        if repository.len() > 255 {
            return Err(err(input, "repository name is longer than 255 characters"));
        }
        if let Some(bad) = repository.split('/').find(|c| !valid_component(c)) {
            return Err(err(
                input,
                format!(
                    "repository component '{bad}' must be lowercase letters and digits separated by '.', '_', '__' or '-'"
                ),
            ));
        }
        Ok(Reference {
            location: Location::Registry {
                registry,
                repository,
            },
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

fn parse_layout(input: &str, rest: &str) -> Result<Reference, ReferenceError> {
    // An `@` is the digest separator only when a digest follows (`@sha256:…`); otherwise it
    // is part of the directory (`oci:/builds/app@2/layout:100`).
    let digest_follows = |d: &str| {
        !d.contains('/')
            && ["sha256:", "sha384:", "sha512:"]
                .iter()
                .any(|alg| d.starts_with(alg))
    };
    let (path_tag, digest) = match rest.rsplit_once('@').filter(|(_, d)| digest_follows(d)) {
        Some((p, d)) => (
            p,
            Some(d.parse::<Digest>().map_err(|e| err(input, e.to_string()))?),
        ),
        None => (rest, None),
    };
    let last_slash = path_tag.rfind('/');
    let (path, tag) = match path_tag.rfind(':') {
        Some(colon) if last_slash.is_none_or(|s| colon > s) => {
            (&path_tag[..colon], Some(&path_tag[colon + 1..]))
        }
        _ => (path_tag, None),
    };
    if path.is_empty() {
        return Err(err(input, "the OCI layout directory is empty"));
    }
    if let Some(t) = tag {
        check_tag(t, input)?;
    }
    Ok(Reference {
        location: Location::Layout {
            path: PathBuf::from(path),
        },
        tag: tag.map(str::to_owned),
        digest,
    })
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::Registry {
                registry,
                repository,
            } => write!(f, "{registry}/{repository}")?,
            Location::Layout { path } => write!(f, "oci:{}", path.display())?,
        }
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_that_would_not_read_back_are_refused() {
        let hub = Reference::new("registry", "app", Some("1"), None).unwrap_err();
        assert!(hub.to_string().contains("registry:443"), "{hub}");
        let r = Reference::new("registry:5000", "app", Some("1"), None).unwrap();
        assert_eq!((r.registry(), r.repository()), ("registry:5000", "app"));
        let r = Reference::new("index.docker.io", "alpine", None, None).unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine");
        let r = Reference::new("localhost", "app", None, None).unwrap();
        assert_eq!(r.registry(), "localhost");

        let colon = Reference::oci_layout("/tmp/build:cache", None, None).unwrap_err();
        assert!(colon.to_string().contains("reads as a tag"), "{colon}");
        let r = Reference::oci_layout("/tmp/a:b/layout", Some("1"), None).unwrap();
        assert_eq!(r.to_string(), "oci:/tmp/a:b/layout:1");
        assert_eq!(r.layout_path(), Some(Path::new("/tmp/a:b/layout")));
    }

    fn check(input: &str, expected: &str) {
        let parsed: Reference = input.parse().unwrap();
        assert_eq!(parsed.to_string(), expected, "{input}");
        assert_eq!(expected.parse::<Reference>().unwrap(), parsed);
    }

    #[test]
    fn normalizes() {
        check("alpine", "docker.io/library/alpine");
        check("alpine:3", "docker.io/library/alpine:3");
        check("team/app:1", "docker.io/team/app:1");
        check("index.docker.io/alpine", "docker.io/library/alpine");
        check("localhost/app", "localhost/app");
        check("localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1");
        check("[::1]:5000/app:x", "[::1]:5000/app:x");
        check("oci:/tmp/lay:v1", "oci:/tmp/lay:v1");
        check("oci:rel/dir", "oci:rel/dir");
        // `@` inside the directory is not a digest separator.
        check(
            "oci:/builds/app@2/layout:100",
            "oci:/builds/app@2/layout:100",
        );
        check("oci:/builds/x@y:100", "oci:/builds/x@y:100");
        let r: Reference = "oci:/builds/x@y:100".parse().unwrap();
        assert_eq!(r.layout_path().unwrap().to_str(), Some("/builds/x@y"));
        assert_eq!(r.tag(), Some("100"));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "Upper/case",
            "host:5000/app:",
            "app@sha256:abc",
            "app:-x",
            "a//b",
            "a b",
            "oci:",
            "oci:/lay@sha256:abc",
            "oci:/lay@sha512:abc",
            "host:99999/app",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad} parsed");
        }
    }
}
