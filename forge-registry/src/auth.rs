//! Registry credentials: the [`CredentialProvider`] trait, built-in providers (anonymous,
//! static Basic, Docker's `config.json` with credential helpers) and `WWW-Authenticate` parsing.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

/// A boxed error from a credential provider or other plug-in.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The future a [`CredentialProvider`] returns.
pub type CredentialFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Credential>, BoxError>> + Send + 'a>>;

/// A credential for one registry. Secrets are redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// Username and password, sent as HTTP Basic (directly, or to the token realm).
    Basic {
        /// User name (ECR: `AWS`).
        username: String,
        /// Password or token (secret).
        password: String,
    },
    /// A ready bearer token sent as `Authorization: Bearer`.
    Bearer {
        /// The token (secret).
        token: String,
    },
    /// An OAuth2 refresh token (Docker's `identitytoken`, written by `docker login` or
    /// `az acr login` for registries that hand one out), exchanged at the token realm with
    /// `POST grant_type=refresh_token` for short-lived access tokens. It never goes to the
    /// registry itself.
    IdentityToken {
        /// The refresh token (secret).
        token: String,
    },
}

impl Credential {
    /// A Basic credential.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credential::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A bearer token credential.
    pub fn bearer(token: impl Into<String>) -> Self {
        Credential::Bearer {
            token: token.into(),
        }
    }

    /// An identity (OAuth2 refresh) token credential.
    pub fn identity_token(token: impl Into<String>) -> Self {
        Credential::IdentityToken {
            token: token.into(),
        }
    }

    /// The `Authorization` header value for a registry that asks for Basic.
    pub(crate) fn basic_header(&self) -> Option<String> {
        match self {
            Credential::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credential::Bearer { .. } | Credential::IdentityToken { .. } => None,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::Bearer { .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .finish(),
            Credential::IdentityToken { .. } => f
                .debug_struct("IdentityToken")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// Supplies credentials for a registry host (`registry` is the host as written in the
/// reference, e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com` or `127.0.0.1:5000`).
///
/// Dyn-compatible and implementable from other crates with an async body:
///
/// ```
/// use forge_registry::{BoxError, Credential, CredentialProvider};
/// use std::{future::Future, pin::Pin};
/// struct Ecr;
/// impl CredentialProvider for Ecr {
///     fn credential<'a>(
///         &'a self,
///         registry: &'a str,
///     ) -> Pin<Box<dyn Future<Output = Result<Option<Credential>, BoxError>> + Send + 'a>> {
///         Box::pin(async move {
///             Ok(registry
///                 .ends_with(".amazonaws.com")
///                 .then(|| Credential::basic("AWS", "token-from-ecr")))
///         })
///     }
/// }
/// ```
pub trait CredentialProvider: Send + Sync {
    /// The credential for `registry`, `Ok(None)` when this provider has none for it.
    fn credential<'a>(
        &'a self,
        registry: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Credential>, BoxError>> + Send + 'a>>;
}

/// No credentials: anonymous pulls (and token requests without Basic).
#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

impl CredentialProvider for Anonymous {
    fn credential<'a>(&'a self, _registry: &'a str) -> CredentialFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

/// A fixed credential for one registry host (or every host when `registry` is `None`).
#[derive(Debug, Clone)]
pub struct StaticCredential {
    registry: Option<String>,
    credential: Credential,
}

impl StaticCredential {
    /// `credential` for `registry` only.
    pub fn for_registry(registry: impl Into<String>, credential: Credential) -> Self {
        StaticCredential {
            registry: Some(registry.into()),
            credential,
        }
    }

    /// `credential` for every registry (use with care: only when one registry is involved).
    pub fn any_registry(credential: Credential) -> Self {
        StaticCredential {
            registry: None,
            credential,
        }
    }
}

impl CredentialProvider for StaticCredential {
    fn credential<'a>(&'a self, registry: &'a str) -> CredentialFuture<'a> {
        Box::pin(async move {
            Ok(match &self.registry {
                Some(r) if r != registry => None,
                _ => Some(self.credential.clone()),
            })
        })
    }
}

/// Why Docker's config could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerConfigError {
    /// The file could not be read.
    #[error(
        "cannot read Docker config {path}: check the path or pass another with --docker-config"
    )]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape. Only the position is kept: the
    /// parser's own message quotes the offending value, which may be a credential (an `auths`
    /// entry written as a bare base64 string).
    #[error(
        "Docker config {path} is not valid JSON ({problem} at line {line}, column {column}): fix or remove it"
    )]
    Parse {
        /// The config path.
        path: PathBuf,
        /// What kind of problem: a syntax error, a value of the wrong shape, or an early end.
        problem: &'static str,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
    },
    /// An `auth` entry is not base64 `user:password`.
    #[error(
        "the 'auth' entry for '{registry}' in {path} is not base64 'user:password': run docker login again"
    )]
    BadAuth {
        /// The config path.
        path: PathBuf,
        /// The registry key.
        registry: String,
    },
    /// A credential helper failed.
    #[error("credential helper 'docker-credential-{helper}' failed for '{registry}': {message}")]
    Helper {
        /// Helper name.
        helper: String,
        /// The registry asked for.
        registry: String,
        /// What went wrong: the helper's stderr and, for a failed run, its stdout (which
        /// then holds an error message); never the output of a run that succeeded, which holds
        /// the secret.
        message: String,
    },
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Clone, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
    #[serde(default, rename = "registrytoken")]
    registry_token: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

/// Credentials from Docker's `config.json`: `auths`, `credHelpers` and `credsStore`
/// (helpers are run as `docker-credential-<name> get`).
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    file: DockerConfigFile,
    helper_dirs: Option<Vec<PathBuf>>,
    helper_timeout: Duration,
}

/// How long a credential helper may take to answer before it is killed: long enough for a
/// slow keychain, short enough that a helper waiting on a prompt nobody will answer (a locked
/// keychain in CI, a Docker Desktop that is not running) fails the job instead of hanging it.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(60);

impl DockerConfig {
    /// The default location: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// Loads the default location; a missing file gives an empty config (anonymous).
    pub fn load_default() -> Result<Self, DockerConfigError> {
        match Self::default_path() {
            Some(p) if p.exists() => Self::load(&p),
            p => Ok(DockerConfig {
                path: p.unwrap_or_default(),
                file: DockerConfigFile::default(),
                helper_dirs: None,
                helper_timeout: DEFAULT_HELPER_TIMEOUT,
            }),
        }
    }

    /// Loads an explicit config file (it must exist).
    pub fn load(path: &Path) -> Result<Self, DockerConfigError> {
        let text = std::fs::read(path).map_err(|source| DockerConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text (`path` is used in messages).
    pub fn parse(path: &Path, text: &[u8]) -> Result<Self, DockerConfigError> {
        let file = serde_json::from_slice(text).map_err(|e| DockerConfigError::Parse {
            path: path.to_owned(),
            problem: match e.classify() {
                serde_json::error::Category::Syntax => "a syntax error",
                serde_json::error::Category::Data => "a value of the wrong type or shape",
                serde_json::error::Category::Eof => "the file ends early",
                serde_json::error::Category::Io => "a read error",
            },
            line: e.line(),
            column: e.column(),
        })?;
        Ok(DockerConfig {
            path: path.to_owned(),
            file,
            helper_dirs: None,
            helper_timeout: DEFAULT_HELPER_TIMEOUT,
        })
    }

    /// Looks for `docker-credential-<name>` helpers only in `dirs` instead of `PATH`.
    pub fn with_helper_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.helper_dirs = Some(dirs);
        self
    }

    /// How long a credential helper may take to answer (default [`DEFAULT_HELPER_TIMEOUT`]).
    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    fn helper_program(&self, name: &str) -> PathBuf {
        let program = format!("docker-credential-{name}");
        match &self.helper_dirs {
            Some(dirs) => dirs
                .iter()
                .map(|d| d.join(&program))
                .find(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from(program)),
            None => PathBuf::from(program),
        }
    }

    fn keys(registry: &str) -> Vec<String> {
        let mut keys = vec![
            registry.to_owned(),
            format!("https://{registry}"),
            format!("http://{registry}"),
            format!("https://{registry}/v1/"),
            format!("https://{registry}/v2/"),
        ];
        if registry == crate::reference::DOCKER_HUB {
            keys.push("https://index.docker.io/v1/".to_owned());
            keys.push("index.docker.io".to_owned());
            keys.push("registry-1.docker.io".to_owned());
        }
        keys
    }

    /// The entry of `map` for `registry`: a key in one of the exact forms first, else any key
    /// that names the same host the way Docker reads keys (scheme dropped, cut at the first
    /// `/`), so `https://r.example:5000/`, `r.example:5000/v2/` and the like all match.
    fn find<'a, T>(map: &'a BTreeMap<String, T>, registry: &str) -> Option<(&'a str, &'a T)> {
        if let Some(found) = Self::keys(registry)
            .iter()
            .find_map(|k| map.get_key_value(k.as_str()))
        {
            return Some((found.0.as_str(), found.1));
        }
        let hub = registry == crate::reference::DOCKER_HUB;
        map.iter()
            .find(|(key, _)| {
                let host = key_host(key);
                host == registry
                    || (hub && matches!(host, "index.docker.io" | "registry-1.docker.io"))
            })
            .map(|(k, v)| (k.as_str(), v))
    }

    /// The server names a credential helper may know `registry` by, in order: what
    /// `docker login` stores (for Docker Hub its v1 index URL), then the plain host name a
    /// script may have used with `docker-credential-<helper> store`.
    fn helper_servers(registry: &str) -> Vec<&str> {
        if registry == crate::reference::DOCKER_HUB {
            vec!["https://index.docker.io/v1/", registry]
        } else {
            vec![registry]
        }
    }

    /// Asks `helper` under each of `registry`'s server names until one answers.
    async fn ask_helper(
        &self,
        helper: &str,
        registry: &str,
    ) -> Result<Option<Credential>, DockerConfigError> {
        for server in Self::helper_servers(registry) {
            let program = self.helper_program(helper);
            if let Some(c) = run_helper(&program, helper, server, self.helper_timeout).await? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Looks up `registry` (helpers first, then `auths`, then `credsStore`).
    pub async fn lookup(&self, registry: &str) -> Result<Option<Credential>, DockerConfigError> {
        if let Some((_, helper)) = Self::find(&self.file.cred_helpers, registry) {
            return self.ask_helper(helper, registry).await;
        }
        if let Some((key, entry)) = Self::find(&self.file.auths, registry) {
            if let Some(token) = &entry.registry_token {
                return Ok(Some(Credential::bearer(token.clone())));
            }
            // Before `auth`: a login that produced an identity token also writes an `auth`
            // with a placeholder user and an empty password, which no registry accepts.
            if let Some(t) = &entry.identity_token {
                return Ok(Some(Credential::identity_token(t.clone())));
            }
            if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
                return Ok(Some(Credential::basic(u.clone(), p.clone())));
            }
            // An empty `auth` (left by some tools after a logout) is no credential: Docker
            // goes on to the credential store, and so does this.
            if let Some(auth) = entry.auth.as_ref().filter(|a| !a.trim().is_empty()) {
                let bad = || DockerConfigError::BadAuth {
                    path: self.path.clone(),
                    registry: key.to_owned(),
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| bad())?;
                let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
                let (u, p) = decoded.split_once(':').ok_or_else(bad)?;
                return Ok(Some(Credential::basic(u, p)));
            }
        }
        if let Some(store) = &self.file.creds_store {
            return self.ask_helper(store, registry).await;
        }
        Ok(None)
    }
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The host a config key names, read the way Docker does: scheme dropped, cut at the first
/// `/` (`https://r.example:5000/v2/` → `r.example:5000`).
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

async fn run_helper(
    program: &Path,
    helper: &str,
    registry: &str,
    timeout: Duration,
) -> Result<Option<Credential>, DockerConfigError> {
    use tokio::io::AsyncWriteExt;
    let fail = |message: String| DockerConfigError::Helper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        message,
    };
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot run it ({e}); install it or remove it from config.json"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper may answer without reading its input (e.g. "credentials not found"): a
        // broken pipe here is not an error, its exit status and output decide.
        match stdin.write_all(registry.as_bytes()).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(fail(format!("cannot write to it: {e}"))),
        }
        drop(stdin);
    }
    // `kill_on_drop`: a helper that does not answer in time is killed with the dropped wait.
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            fail(format!(
                "it did not answer within {}s (it may be waiting for a prompt nobody will answer: unlock the keychain, start the credential service, or remove it from config.json)",
                timeout.as_secs_f64()
            ))
        })?
        .map_err(|e| fail(format!("cannot wait for it: {e}")))?;
    if !out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        // docker-credential-helpers print their errors on stdout; a failed run's output is a
        // message, unless a wrapper printed the credential and then failed: never show that.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = if stdout.to_ascii_lowercase().contains("secret") {
            "(its output is not shown: it may hold the credential)".into()
        } else {
            stdout
        };
        let said = [stderr.trim(), stdout.trim()]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let said: String = said.chars().take(500).collect();
        return Err(fail(format!("exit status {}: {said}", out.status)));
    }
    let parsed: HelperOutput = serde_json::from_slice(&out.stdout)
        .map_err(|_| fail("its output is not the expected JSON {Username, Secret}".to_owned()))?;
    // Docker's convention: a helper stores an identity token under the user name `<token>`.
    if parsed.username == "<token>" {
        return Ok(Some(Credential::identity_token(parsed.secret)));
    }
    Ok(Some(Credential::basic(parsed.username, parsed.secret)))
}

impl CredentialProvider for DockerConfig {
    fn credential<'a>(&'a self, registry: &'a str) -> CredentialFuture<'a> {
        Box::pin(async move { self.lookup(registry).await.map_err(Into::into) })
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="…",service="…",scope="a,b"` (quoted values may contain commas).
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r),
        None => (header, ""),
    };
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_commas() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
    }

    #[test]
    fn parses_ecr_basic_challenge() {
        let c = parse_challenge(
            r#"Basic realm="https://1.dkr.ecr.eu-west-1.amazonaws.com/",service="ecr.amazonaws.com""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["service"], "ecr.amazonaws.com");
    }

    #[test]
    fn debug_redacts() {
        let text = format!("{:?}", Credential::basic("u", "hunter2"));
        assert!(!text.contains("hunter2"));
        let text = format!("{:?}", Credential::bearer("tok123"));
        assert!(!text.contains("tok123"));
        let text = format!("{:?}", Credential::identity_token("refresh456"));
        assert!(!text.contains("refresh456"));
    }

    /// Writes `docker-credential-<name>` into `dir`: a shell script running `script`.
    fn write_helper(dir: &Path, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A config whose `credsStore` is the helper `name` running `script`, found in `dir` only.
    fn creds_store(dir: &Path, name: &str, script: &str) -> DockerConfig {
        write_helper(dir, name, script);
        let json = format!(r#"{{"credsStore":"{name}"}}"#);
        DockerConfig::parse(Path::new("config.json"), json.as_bytes())
            .unwrap()
            .with_helper_dirs(vec![dir.to_owned()])
    }

    #[tokio::test]
    async fn credential_helpers_are_asked_for_docker_hub_by_its_index_url() {
        let dir = tempfile::tempdir().unwrap();
        // A `credsStore` helper named `name` running `script` (it reads the server on stdin).
        let store = |name: &str, script: &str| {
            creds_store(dir.path(), name, &format!("read server\n{script}"))
        };
        // Answers with the server name it was asked for as the secret.
        let cfg = store(
            "echo",
            r#"printf '{"Username":"u","Secret":"%s"}' "$server""#,
        );
        for (registry, asked) in [
            ("docker.io", "https://index.docker.io/v1/"),
            ("r.example:5000", "r.example:5000"),
        ] {
            assert_eq!(
                cfg.lookup(registry).await.unwrap(),
                Some(Credential::basic("u", asked)),
                "{registry}"
            );
        }
        // A store filled by a script under the plain name is found too.
        let cfg = store(
            "plain",
            r#"[ "$server" = docker.io ] || { echo 'credentials not found in native keychain'; exit 1; }
printf '{"Username":"u","Secret":"p"}'"#,
        );
        assert_eq!(
            cfg.lookup("docker.io").await.unwrap(),
            Some(Credential::basic("u", "p"))
        );
    }

    #[tokio::test]
    async fn docker_config_auths() {
        let cfg = DockerConfig::parse(
            Path::new("config.json"),
            br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"r.example":{"auth":"YTpi"}}}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.lookup("docker.io").await.unwrap(),
            Some(Credential::basic("u", "p"))
        );
        assert_eq!(
            cfg.lookup("r.example").await.unwrap(),
            Some(Credential::basic("a", "b"))
        );
        assert_eq!(cfg.lookup("other.example").await.unwrap(), None);
        assert!(!format!("{cfg:?}").contains("YTpi"));
    }

    /// Every key form Docker itself reads for a host (Kubernetes `.dockerconfigjson` files
    /// often carry a trailing slash or an API path) finds the entry; another host's does not.
    #[tokio::test]
    async fn auths_keys_in_any_form_docker_reads() {
        let check = |key: &str, registry: &str, found: bool| {
            let json = format!(r#"{{"auths":{{"{key}":{{"auth":"dTpw"}}}}}}"#);
            let cfg = DockerConfig::parse(Path::new("config.json"), json.as_bytes()).unwrap();
            let registry = registry.to_owned();
            let key = key.to_owned();
            async move {
                let expected = found.then(|| Credential::basic("u", "p"));
                assert_eq!(cfg.lookup(&registry).await.unwrap(), expected, "{key}");
            }
        };
        for key in [
            "r.example:5000",
            "https://r.example:5000",
            "https://r.example:5000/",
            "https://r.example:5000/v2",
            "r.example:5000/v2/",
            "http://r.example:5000/v1/",
        ] {
            check(key, "r.example:5000", true).await;
        }
        check("https://r.example:5001/", "r.example:5000", false).await;
        check("https://r.example.evil/", "r.example", false).await;
        check("https://registry-1.docker.io/v2/", "docker.io", true).await;
    }

    /// A config that does not parse says where, never quoting the value (which may be a
    /// credential).
    #[test]
    fn a_parse_error_gives_the_position_not_the_value() {
        let err = DockerConfig::parse(
            Path::new("config.json"),
            br#"{"auths":{"r.example":"dTpodW50ZXIy"}}"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("line 1") && !text.contains("dTpodW50ZXIy"),
            "{text}"
        );
        assert!(std::error::Error::source(&err).is_none());
    }

    /// An empty `auth` is no credential: the lookup goes on to `credsStore`.
    #[tokio::test]
    async fn an_empty_auth_falls_through_to_the_credential_store() {
        let dir = tempfile::tempdir().unwrap();
        write_helper(
            dir.path(),
            "store",
            r#"read server
printf '{"Username":"u","Secret":"p"}'"#,
        );
        let cfg = DockerConfig::parse(
            Path::new("config.json"),
            br#"{"auths":{"r.example":{"auth":""}},"credsStore":"store"}"#,
        )
        .unwrap()
        .with_helper_dirs(vec![dir.path().to_owned()]);
        assert_eq!(
            cfg.lookup("r.example").await.unwrap(),
            Some(Credential::basic("u", "p"))
        );
    }

    /// A helper that hangs is killed after the timeout with an error saying why; one that
    /// fails the docker-credential-helpers way (message on stdout, exit 1) shows its message.
    #[tokio::test]
    async fn credential_helpers_that_hang_or_fail_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let helper = |name: &str, script: &str| {
            creds_store(dir.path(), name, script).with_helper_timeout(Duration::from_millis(500))
        };
        let started = std::time::Instant::now();
        let err = helper("hang", "exec sleep 600")
            .lookup("r.example")
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "it was killed");
        assert!(
            err.to_string().contains("did not answer within 0.5s"),
            "{err}"
        );

        let err = helper(
            "fails",
            "echo 'error getting credentials - err: exit status 1, out: keychain locked'; exit 1",
        )
        .lookup("r.example")
        .await
        .unwrap_err();
        assert!(err.to_string().contains("keychain locked"), "{err}");

        // A wrapper that printed the credential and then failed: its output is not shown.
        let err = helper(
            "leaky",
            r#"printf '{"Username":"u","Secret":"hunter2"}'; exit 3"#,
        )
        .lookup("r.example")
        .await
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
