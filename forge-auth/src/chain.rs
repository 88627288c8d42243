//! The role chain: pipeline OIDC token → hub role (`AssumeRoleWithWebIdentity`) → environment role
//! (`AssumeRole`, e.g. `ConveyorDeployRole-<env>`) → optional extra hops, as a refreshing
//! [`ProvideCredentials`] implementation.
//!
//! Every call to [`RoleChainProvider::assume`] (and so every refresh by an SDK client's identity
//! cache) fetches a fresh OIDC token and walks the whole chain. Failures are classified:
//! throttling, `IDPCommunicationError`, transport errors and `InvalidIdentityToken` within
//! [`RetryPolicy::fresh_token_window`] of the token's issue are retried with jittered backoff;
//! everything else (AccessDenied, validation errors, malformed ARNs) fails at once. Errors name
//! the step, the role ARN and the AWS error code.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, future};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::retry::RetryConfig;

use crate::Secret;
use crate::retry::RetryPolicy;
use crate::token::{OidcToken, TokenError, TokenSource};

/// AWS's limit for a session obtained through role chaining.
pub const CHAINED_SESSION_LIMIT: Duration = Duration::from_secs(3600);
/// STS's minimum session length.
pub const MIN_SESSION: Duration = Duration::from_secs(900);

/// Called with every secret the chain obtains (the OIDC token, each secret key and session
/// token) so a CLI can print its CI's mask command before anything could log it.
pub type SecretHook = Arc<dyn Fn(&Secret) + Send + Sync>;

/// A validated IAM role ARN: `arn:<partition>:iam::<12-digit account>:role/<path/name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn {
    arn: String,
    account: String,
    name: String,
}

impl RoleArn {
    /// Parses `arn`.
    pub fn parse(arn: &str) -> Result<RoleArn, ChainError> {
        let bad = |why: &str| ChainError::BadRoleArn {
            arn: arn.to_owned(),
            problem: why.to_owned(),
        };
        let rest = arn
            .strip_prefix("arn:")
            .ok_or_else(|| bad("it does not start with `arn:`"))?;
        let (partition, rest) = rest.split_once(':').ok_or_else(|| bad("no partition"))?;
        if !partition.starts_with("aws") {
            return Err(bad("the partition is not aws, aws-cn or aws-us-gov"));
        }
        let rest = rest
            .strip_prefix("iam::")
            .ok_or_else(|| bad("the service is not `iam` with an empty region"))?;
        let (account, path) = rest
            .split_once(":role/")
            .ok_or_else(|| bad("no `:role/` resource"))?;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the account is not 12 digits"));
        }
        let name = path.rsplit('/').next().unwrap_or_default();
        let valid = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            return Err(bad(
                "the role name is not 1-64 characters of [A-Za-z0-9+=,.@_-]",
            ));
        }
        Ok(RoleArn {
            arn: arn.to_owned(),
            account: account.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Expands a role template (`arn:aws:iam::{account}:role/ConveyorDeployRole-{env}`) or takes
    /// a full ARN as is; `{account}` needs `account`.
    pub fn from_template(
        template: &str,
        env: &str,
        account: Option<&str>,
    ) -> Result<RoleArn, ChainError> {
        let mut arn = template.replace("{env}", env);
        if arn.contains("{account}") {
            let account = account.ok_or_else(|| ChainError::BadRoleArn {
                arn: template.to_owned(),
                problem: "the template has {account} but no account id was given".into(),
            })?;
            arn = arn.replace("{account}", account);
        }
        RoleArn::parse(&arn)
    }

    /// The ARN.
    pub fn as_str(&self) -> &str {
        &self.arn
    }

    /// The 12-digit account id.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The role name (last path segment).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

/// A role session name sanitized to STS's rules: 2-64 characters of `[\w+=,.@-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionName(String);

impl SessionName {
    /// Sanitizes `raw`: other characters become `-`, the result is cut to 64 characters and
    /// padded to 2.
    pub fn sanitize(raw: &str) -> SessionName {
        let mut name: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        while name.len() < 2 {
            name.push('-');
        }
        SessionName(name)
    }

    /// `forge-<env>-<build id>` (or `forge-<env>` without a build id), sanitized.
    pub fn for_pipeline(env: &str, build_id: Option<&str>) -> SessionName {
        match build_id {
            Some(id) if !id.is_empty() => SessionName::sanitize(&format!("forge-{env}-{id}")),
            _ => SessionName::sanitize(&format!("forge-{env}")),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One `AssumeRole` step after the hub.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The role to assume.
    pub role: RoleArn,
    /// External id its trust policy requires, if any.
    pub external_id: Option<String>,
    /// Session tags (audit). The role's trust policy must allow `sts:TagSession`.
    pub tags: Vec<(String, String)>,
}

impl Hop {
    /// A hop with no external id and no tags.
    pub fn new(role: RoleArn) -> Hop {
        Hop {
            role,
            external_id: None,
            tags: Vec::new(),
        }
    }
}

/// The chain's configuration: all explicit values.
#[derive(Debug, Clone)]
pub struct RoleChain {
    /// Where the OIDC token comes from.
    pub token: TokenSource,
    /// The hub role (`AssumeRoleWithWebIdentity`).
    pub hub_role: RoleArn,
    /// `AssumeRole` hops: the environment role first, then any extra hops.
    pub hops: Vec<Hop>,
    /// Session name for every step.
    pub session_name: SessionName,
    /// Requested session length for every step (900..=3600 s: chained sessions are capped).
    pub duration: Duration,
    /// Retry policy for the token and STS calls.
    pub retry: RetryPolicy,
}

impl RoleChain {
    /// A chain token → `hub_role` → `env_role` with a one-hour session and default retries.
    pub fn new(
        token: TokenSource,
        hub_role: RoleArn,
        env_role: Hop,
        session_name: SessionName,
    ) -> RoleChain {
        RoleChain {
            token,
            hub_role,
            hops: vec![env_role],
            session_name,
            duration: CHAINED_SESSION_LIMIT,
            retry: RetryPolicy::default(),
        }
    }

    /// Checks the session length against STS's limits.
    pub fn validate(&self) -> Result<(), ChainError> {
        if self.duration > CHAINED_SESSION_LIMIT {
            return Err(ChainError::DurationTooLong {
                requested: self.duration.as_secs(),
            });
        }
        if self.duration < MIN_SESSION {
            return Err(ChainError::DurationTooShort {
                requested: self.duration.as_secs(),
            });
        }
        for hop in &self.hops {
            for (k, v) in &hop.tags {
                let ok = |s: &str, max: usize| {
                    s.chars().count() <= max
                        && s.chars().all(|c| {
                            c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c)
                        })
                };
                if k.is_empty() || !ok(k, 128) || !ok(v, 256) {
                    return Err(ChainError::BadTag { key: k.clone() });
                }
            }
        }
        Ok(())
    }
}

/// Which step of the chain failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Fetching the OIDC token.
    Token,
    /// `AssumeRoleWithWebIdentity` into the hub role.
    Hub,
    /// `AssumeRole` into the environment role (hop 0).
    EnvRole,
    /// `AssumeRole` into extra hop `n` (1-based after the environment role).
    ExtraHop(usize),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Token => f.write_str("token step"),
            Step::Hub => f.write_str("hub role step (AssumeRoleWithWebIdentity)"),
            Step::EnvRole => f.write_str("environment role step (AssumeRole)"),
            Step::ExtraHop(n) => write!(f, "extra hop {n} (AssumeRole)"),
        }
    }
}

/// Role-chain errors. None contains a token or key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The OIDC token could not be obtained.
    #[error("token step failed")]
    Token {
        /// Why.
        #[from]
        source: TokenError,
    },
    /// A role ARN is malformed (checked before any call).
    #[error(
        "`{arn}` is not an IAM role ARN ({problem}); expected arn:aws:iam::<12-digit account>:role/<name>"
    )]
    BadRoleArn {
        /// The value given.
        arn: String,
        /// What is wrong.
        problem: String,
    },
    /// More than the chained-session limit was asked for.
    #[error(
        "a session of {requested} s was requested, but AWS caps roles assumed by role chaining at 3600 s (\"exceeds the 1 hour session limit for roles assumed by role chaining\"); ask for at most 3600 — Forge refreshes the chain before it expires, so longer jobs still work"
    )]
    DurationTooLong {
        /// Seconds asked for.
        requested: u64,
    },
    /// Less than STS's minimum was asked for.
    #[error(
        "a session of {requested} s was requested, but STS's minimum is 900 s; ask for 900..=3600"
    )]
    DurationTooShort {
        /// Seconds asked for.
        requested: u64,
    },
    /// A session tag breaks STS's rules.
    #[error(
        "session tag `{key}` is invalid: keys are 1-128 and values 0-256 characters of letters, digits, spaces and _.:/=+-@"
    )]
    BadTag {
        /// The key.
        key: String,
    },
    /// STS refused or failed (boxed: the details are large).
    #[error(transparent)]
    Sts(Box<StsFailure>),
    /// STS answered without the credentials it documents.
    #[error(
        "{step} for {role}: STS returned no credentials; this is an STS or proxy fault, retry later"
    )]
    NoCredentials {
        /// Which step.
        step: Step,
        /// The role.
        role: String,
    },
}

/// The details of a failed STS call.
#[derive(Debug, thiserror::Error)]
#[error(
    "{step} for {role} failed with {code} after {retries} retries in {elapsed:.1?}: {message}; {hint}"
)]
pub struct StsFailure {
    /// Which step.
    pub step: Step,
    /// The role ARN being assumed.
    pub role: String,
    /// The AWS error code (`AccessDenied`, `InvalidIdentityToken`, …) or the transport failure.
    pub code: String,
    /// AWS's message.
    pub message: String,
    /// What to do.
    pub hint: String,
    /// Retries made.
    pub retries: u32,
    /// Time spent on this step.
    pub elapsed: Duration,
    /// The transport error, when STS could not be reached (a service error is fully described
    /// by `code` and `message`).
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ChainError {
    /// The AWS error code, when STS answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ChainError::Sts(failure) => Some(&failure.code),
            _ => None,
        }
    }

    /// The failed step.
    pub fn step(&self) -> Option<Step> {
        match self {
            ChainError::Token { .. } => Some(Step::Token),
            ChainError::Sts(failure) => Some(failure.step),
            ChainError::NoCredentials { step, .. } => Some(*step),
            _ => None,
        }
    }

    /// True when the input (config, ARN, duration, token file) is at fault rather than the world.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ChainError::BadRoleArn { .. }
            | ChainError::DurationTooLong { .. }
            | ChainError::DurationTooShort { .. }
            | ChainError::BadTag { .. } => true,
            ChainError::Token { source } => matches!(
                source,
                TokenError::BadSetting { .. }
                    | TokenError::NotAvailable { .. }
                    | TokenError::File { .. }
                    | TokenError::Empty { .. }
                    | TokenError::Malformed { .. }
                    | TokenError::Expired { .. }
            ),
            _ => false,
        }
    }
}

/// What one walk of the chain produced.
#[derive(Debug, Clone)]
pub struct ChainCredentials {
    /// The final role's credentials (with expiry).
    pub credentials: Credentials,
    /// When they expire.
    pub expiration: SystemTime,
    /// The assumed-role ARN STS reported for the final step
    /// (`arn:aws:sts::<account>:assumed-role/<role>/<session>`).
    pub assumed_role_arn: Option<String>,
}

/// The refreshing credentials provider. Cheap to clone.
#[derive(Clone)]
pub struct RoleChainProvider {
    inner: Arc<Inner>,
}

struct Inner {
    chain: RoleChain,
    sts: aws_sdk_sts::Config,
    http: reqwest::Client,
    hook: Option<SecretHook>,
}

impl fmt::Debug for RoleChainProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleChainProvider")
            .field("token", &self.inner.chain.token.describe())
            .field("hub_role", &self.inner.chain.hub_role.as_str())
            .field(
                "hops",
                &self
                    .inner
                    .chain
                    .hops
                    .iter()
                    .map(|h| h.role.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("session_name", &self.inner.chain.session_name.as_str())
            .finish()
    }
}

/// How long the provider's HTTP client lets one token-service request take.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl RoleChain {
    /// The longest one walk of this chain can take with every retry used: the token fetch
    /// (HTTP sources, [`TOKEN_REQUEST_TIMEOUT`] per attempt) plus each STS step (the hub and
    /// every hop, [`RetryPolicy::attempt_timeout`] per attempt). A caller that wraps the
    /// provider in its own timeout (the SDK's identity cache `load_timeout`) should allow
    /// at least this, or its timeout hides the classified error.
    ///
    /// ```
    /// # use forge_auth::{Hop, RoleArn, RoleChain, SessionName, TokenSource};
    /// let chain = RoleChain::new(
    ///     TokenSource::File("/run/oidc".into()),
    ///     RoleArn::parse("arn:aws:iam::111111111111:role/Hub")?,
    ///     Hop::new(RoleArn::parse("arn:aws:iam::222222222222:role/ConveyorDeployRole-qa")?),
    ///     SessionName::sanitize("ci-1"),
    /// );
    /// // Default retries: a token fetch and two STS steps, each up to 5 attempts.
    /// assert_eq!(chain.worst_case_duration().as_secs(), 32 + 150 + 2 * (32 + 50));
    /// # Ok::<(), forge_auth::ChainError>(())
    /// ```
    pub fn worst_case_duration(&self) -> Duration {
        let sts_steps = u32::try_from(self.hops.len().saturating_add(1)).unwrap_or(u32::MAX);
        self.retry.worst_case(TOKEN_REQUEST_TIMEOUT).saturating_add(
            self.retry
                .worst_case(self.retry.attempt_timeout)
                .saturating_mul(sts_steps),
        )
    }
}

impl RoleChainProvider {
    /// Validates `chain` and prepares STS clients from `sts_base` (region, endpoint URL, HTTP
    /// client; its credentials are ignored: the first step is unsigned, later ones use the
    /// previous step's credentials). The SDK's own retries are off: this provider classifies.
    pub fn new(
        chain: RoleChain,
        sts_base: &aws_types::SdkConfig,
    ) -> Result<RoleChainProvider, ChainError> {
        chain.validate()?;
        let mut builder = aws_sdk_sts::config::Builder::from(sts_base)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                aws_smithy_types::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(chain.retry.attempt_timeout)
                    .build(),
            );
        builder.set_credentials_provider(None);
        Ok(RoleChainProvider {
            inner: Arc::new(Inner {
                chain,
                sts: builder.build(),
                http: reqwest::Client::builder()
                    .timeout(TOKEN_REQUEST_TIMEOUT)
                    .build()
                    .unwrap_or_default(),
                hook: None,
            }),
        })
    }

    /// Calls `hook` with every secret obtained (token, secret keys, session tokens).
    pub fn with_secret_hook(self, hook: SecretHook) -> RoleChainProvider {
        let inner = &self.inner;
        RoleChainProvider {
            inner: Arc::new(Inner {
                chain: inner.chain.clone(),
                sts: inner.sts.clone(),
                http: inner.http.clone(),
                hook: Some(hook),
            }),
        }
    }

    /// The chain this provider walks.
    pub fn chain(&self) -> &RoleChain {
        &self.inner.chain
    }

    fn reveal(&self, secret: &Secret) {
        if let Some(hook) = &self.inner.hook {
            hook(secret);
        }
    }

    /// Walks the chain once: fetches a fresh token, assumes the hub role, then every hop.
    pub async fn assume(&self) -> Result<ChainCredentials, ChainError> {
        let chain = &self.inner.chain;
        let token = chain.token.fetch(&self.inner.http, &chain.retry).await?;
        self.reveal(&token.value);
        tracing::debug!(source = %chain.token.describe(), hub = %chain.hub_role, "assuming the hub role");
        let duration = i32::try_from(chain.duration.as_secs()).unwrap_or(3600);
        let anon = aws_sdk_sts::Client::from_conf(self.inner.sts.clone());
        let out = self
            .call(Step::Hub, &chain.hub_role, Some(&token), || {
                anon.assume_role_with_web_identity()
                    .role_arn(chain.hub_role.as_str())
                    .role_session_name(chain.session_name.as_str())
                    .web_identity_token(token.value.expose())
                    .duration_seconds(duration)
                    .send()
            })
            .await?;
        let mut current = self.convert(
            Step::Hub,
            &chain.hub_role,
            out.credentials(),
            out.assumed_role_user().map(|u| u.arn()),
        )?;
        for (i, hop) in chain.hops.iter().enumerate() {
            let step = if i == 0 {
                Step::EnvRole
            } else {
                Step::ExtraHop(i)
            };
            tracing::debug!(role = %hop.role, "assuming {step}");
            let config = self
                .inner
                .sts
                .to_builder()
                .credentials_provider(current.credentials.clone())
                .build();
            let client = aws_sdk_sts::Client::from_conf(config);
            let out = self
                .call(step, &hop.role, None, || {
                    let mut request = client
                        .assume_role()
                        .role_arn(hop.role.as_str())
                        .role_session_name(chain.session_name.as_str())
                        .duration_seconds(duration)
                        .set_external_id(hop.external_id.clone());
                    for (k, v) in &hop.tags {
                        if let Ok(tag) = aws_sdk_sts::types::Tag::builder().key(k).value(v).build()
                        {
                            request = request.tags(tag);
                        }
                    }
                    request.send()
                })
                .await
                .map_err(|e| with_tag_hint(e, !hop.tags.is_empty()))?;
            current = self.convert(
                step,
                &hop.role,
                out.credentials(),
                out.assumed_role_user().map(|u| u.arn()),
            )?;
        }
        Ok(current)
    }

    fn convert(
        &self,
        step: Step,
        role: &RoleArn,
        creds: Option<&aws_sdk_sts::types::Credentials>,
        assumed: Option<&str>,
    ) -> Result<ChainCredentials, ChainError> {
        let creds = creds.ok_or_else(|| ChainError::NoCredentials {
            step,
            role: role.to_string(),
        })?;
        let expiration =
            SystemTime::try_from(*creds.expiration()).map_err(|_| ChainError::NoCredentials {
                step,
                role: role.to_string(),
            })?;
        self.reveal(&Secret::new(creds.secret_access_key()));
        self.reveal(&Secret::new(creds.session_token()));
        Ok(ChainCredentials {
            credentials: Credentials::new(
                creds.access_key_id(),
                creds.secret_access_key(),
                Some(creds.session_token().to_owned()),
                Some(expiration),
                "forge-role-chain",
            ),
            expiration,
            assumed_role_arn: assumed.map(str::to_owned),
        })
    }

    async fn call<T, E, F, Fut>(
        &self,
        step: Step,
        role: &RoleArn,
        token: Option<&OidcToken>,
        mut send: F,
    ) -> Result<T, ChainError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let policy = &self.inner.chain.retry;
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            let err = match send().await {
                Ok(out) => return Ok(out),
                Err(err) => err,
            };
            // The SDK's error is never kept as the cause: its chain can carry the request,
            // and the first request's body holds the OIDC token. Only a summary with every
            // secret of this call taken out goes on.
            let summary = || -> Option<Box<dyn std::error::Error + Send + Sync>> {
                Some(Box::new(StsTransportError(redact(
                    &error_chain(&err),
                    token.map(|t| t.value.expose()),
                ))))
            };
            let (code, message, source, transport) = match &err {
                SdkError::ServiceError(_) => (
                    err.code().unwrap_or("UnknownError").to_owned(),
                    err.message()
                        .unwrap_or("(no message)")
                        .trim_end_matches('.')
                        .to_owned(),
                    None,
                    false,
                ),
                SdkError::TimeoutError(_) => (
                    "Timeout".to_owned(),
                    format!("STS did not answer within {:.0?}", policy.attempt_timeout),
                    summary(),
                    true,
                ),
                SdkError::DispatchFailure(d) => {
                    // A refused or dropped connection may pass; a request that could not be
                    // sent at all (a malformed endpoint) will not.
                    let transient = d.is_io()
                        || d.is_timeout()
                        // hyper's IncompleteMessage (a dropped keep-alive connection), as the
                        // SDK's own classifier treats it.
                        || d.as_other()
                            == Some(aws_smithy_types::retry::ErrorKind::TransientError);
                    (
                        "DispatchFailure".to_owned(),
                        "STS could not be reached".to_owned(),
                        summary(),
                        transient,
                    )
                }
                SdkError::ConstructionFailure(_) => (
                    "ConstructionFailure".to_owned(),
                    "the STS request could not be built".to_owned(),
                    summary(),
                    false,
                ),
                _ => (
                    err.code().unwrap_or("ResponseError").to_owned(),
                    "STS answered with something that is not an STS response".to_owned(),
                    summary(),
                    true,
                ),
            };
            let retry = match classify(&code, transport) {
                Class::Retry => true,
                Class::RetryIfFresh => token
                    .and_then(OidcToken::age)
                    .is_some_and(|age| age <= policy.fresh_token_window),
                Class::Fail => false,
            };
            if !retry || attempt >= policy.max_retries {
                return Err(ChainError::Sts(Box::new(StsFailure {
                    step,
                    hint: hint(step, &code, &message, token),
                    role: role.to_string(),
                    code,
                    message,
                    retries: attempt,
                    elapsed: start.elapsed(),
                    source,
                })));
            }
            let delay = policy.backoff(attempt);
            tracing::info!(%step, %role, %code, attempt, ?delay, "STS call failed with a retryable error, retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// What broke on the way to STS, as text with the call's secrets taken out.
#[derive(Debug)]
struct StsTransportError(String);

impl fmt::Display for StsTransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StsTransportError {}

/// `err` and its causes, joined with ": ".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// `text` without `token` and without any `WebIdentityToken=…` or `SessionToken…` value.
fn redact(text: &str, token: Option<&str>) -> String {
    let mut out = match token {
        Some(t) if !t.is_empty() => text.replace(t, "<redacted>"),
        _ => text.to_owned(),
    };
    for key in [
        "WebIdentityToken=",
        "SessionToken=",
        "X-Amz-Security-Token=",
    ] {
        let mut from = 0;
        while let Some(i) = out[from..].find(key) {
            let start = from + i + key.len();
            let end = out[start..]
                .find(|c: char| c == '&' || c.is_whitespace() || c == '"')
                .map_or(out.len(), |j| start + j);
            out.replace_range(start..end, "<redacted>");
            from = start + "<redacted>".len();
        }
    }
    out
}

enum Class {
    Retry,
    RetryIfFresh,
    Fail,
}

fn classify(code: &str, transport: bool) -> Class {
    if transport {
        return Class::Retry;
    }
    match code {
        "IDPCommunicationError"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "ServiceUnavailable"
        | "InternalFailure"
        | "InternalError" => Class::Retry,
        "InvalidIdentityToken" => Class::RetryIfFresh,
        _ => Class::Fail,
    }
}

fn hint(step: Step, code: &str, message: &str, token: Option<&OidcToken>) -> String {
    let claims = token.map(|t| {
        format!(
            " (token issuer {}, subject {})",
            t.claims.iss.as_deref().unwrap_or("?"),
            t.claims.sub.as_deref().unwrap_or("?")
        )
    });
    let claims = claims.unwrap_or_default();
    match (code, step) {
        ("AccessDenied", Step::Hub) => format!(
            "the hub role's trust policy must allow sts:AssumeRoleWithWebIdentity for this token{claims}; check its Federated principal and the aud/sub conditions"
        ),
        ("AccessDenied", _) => "the role's trust policy must trust the previous role in the chain (the hub role) and that role needs sts:AssumeRole on it".to_owned(),
        ("InvalidIdentityToken", _) => format!(
            "STS rejected the OIDC token{claims}: check that the hub account has an IAM OIDC identity provider for this issuer whose audience list contains the token's aud"
        ),
        ("ExpiredTokenException" | "ExpiredToken", Step::Hub) => {
            "the OIDC token expired before STS saw it; Forge fetches a new one on every refresh, so check the machine clock and the token file's writer".to_owned()
        }
        ("ExpiredTokenException" | "ExpiredToken", _) => {
            "the previous step's credentials expired before use; check the machine clock".to_owned()
        }
        ("ValidationError", _) if message.contains("role chaining") => {
            "AWS caps roles assumed by role chaining at 3600 s: set `[auth] session_duration` to 3600 or less".to_owned()
        }
        ("ValidationError", _) => "check the role ARN, session name and duration".to_owned(),
        ("IDPCommunicationError", _) => "STS could not reach the OIDC issuer to verify the token; retry later".to_owned(),
        ("Throttling" | "ThrottlingException" | "RequestLimitExceeded", _) => {
            "STS is throttling this account; retry later or spread concurrent pipelines".to_owned()
        }
        ("RegionDisabledException", _) => "activate STS for this region in the account (IAM → Account settings) or use another region".to_owned(),
        ("DispatchFailure" | "Timeout", _) => "check network access to STS (and AWS_ENDPOINT_URL if set)".to_owned(),
        ("ConstructionFailure", _) => "check AWS_ENDPOINT_URL (a full URL such as https://sts.eu-west-1.amazonaws.com) and the region".to_owned(),
        _ => "see the AWS error code in the STS documentation".to_owned(),
    }
}

fn with_tag_hint(err: ChainError, tagged: bool) -> ChainError {
    match err {
        ChainError::Sts(mut failure) if tagged && failure.code == "AccessDenied" => {
            failure.hint.push_str(
                "; session tags were sent, so the trust policy also needs sts:TagSession (or turn session tags off)",
            );
            ChainError::Sts(failure)
        }
        other => other,
    }
}

impl ProvideCredentials for RoleChainProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.assume()
                .await
                .map(|c| c.credentials)
                .map_err(provider::error::CredentialsError::provider_error)
        })
    }
}
