//! Test helpers: JWT fixtures, a tiny in-process HTTP server (hyper, loopback) that records
//! requests, and STS/ECR/token-service fakes built on it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An unsigned JWT (STS fakes and moto do not verify signatures) with the given claims.
pub fn jwt(claims: serde_json::Value) -> String {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(&serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "test"})),
        b64(&claims)
    )
}

/// A fresh token: issued now, valid 10 minutes, `n` in its `jti` so tokens differ.
pub fn fresh_jwt(n: usize) -> String {
    let now = now();
    jwt(serde_json::json!({
        "iss": "https://token.actions.githubusercontent.com",
        "sub": "repo:platform/payments:ref:refs/heads/main",
        "aud": "sts.amazonaws.com",
        "iat": now, "nbf": now, "exp": now + 600, "jti": format!("token-{n}"),
    }))
}

/// A token issued an hour ago that is still valid (so `InvalidIdentityToken` is not "fresh").
pub fn old_jwt() -> String {
    let now = now();
    jwt(serde_json::json!({
        "iss": "https://vstoken.dev.azure.com/org", "sub": "sc://org/project/conn",
        "iat": now - 3600, "exp": now + 600,
    }))
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub authorization: Option<String>,
    pub body: String,
}

impl Recorded {
    /// Form field of an `application/x-www-form-urlencoded` body.
    pub fn form(&self, key: &str) -> Option<String> {
        let url = reqwest::Url::parse(&format!("http://x/?{}", self.body)).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// Query parameter of the request URI.
    pub fn query(&self, key: &str) -> Option<String> {
        let url = reqwest::Url::parse(&format!("http://x{}", self.uri)).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

/// A reply: status, content type, body.
pub type Reply = (u16, &'static str, String);

type Handler = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1 answering with `handler(request, index)`.
pub struct Server {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let log = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let log = log.clone();
                        async move {
                            let method = req.method().to_string();
                            let uri = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let authorization = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let recorded = Recorded {
                                method,
                                uri,
                                authorization,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            let index = {
                                let mut log = log.lock().unwrap();
                                log.push(recorded.clone());
                                log.len() - 1
                            };
                            let (status, content_type, body) = handler(&recorded, index);
                            let response = Response::builder()
                                .status(status)
                                .header("content-type", content_type)
                                .header("x-amzn-requestid", "4f1e2b7c-0000-4000-8000-000000000000")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// CI token services.

pub const ADO_ACCESS_TOKEN: &str = "ado-system-access-token";
pub const GH_REQUEST_TOKEN: &str = "gh-request-token";

/// The Azure DevOps OIDC endpoint (`POST …/oidctoken?api-version=7.1&serviceConnectionId=…` with
/// `Bearer $SYSTEM_ACCESSTOKEN` → `{"oidcToken": …}`): a fresh token per request; wrong bearer →
/// 401, unknown service connection → 404, with bodies shaped like Azure DevOps' JSON errors.
pub async fn azure_devops(service_connection: &'static str) -> Server {
    Server::start(move |req, n| {
        if req.method != "POST" {
            return (405, "text/plain", String::new());
        }
        if req.authorization.as_deref() != Some(&format!("Bearer {ADO_ACCESS_TOKEN}")) {
            return (401, "application/json", r#"{"$id":"1","innerException":null,"message":"TF400813: The user '' is not authorized to access this resource.","typeName":"Microsoft.TeamFoundation.Framework.Server.UnauthorizedRequestException, Microsoft.TeamFoundation.Framework.Server","typeKey":"UnauthorizedRequestException","errorCode":0,"eventId":3000}"#.into());
        }
        if req.query("api-version").as_deref() != Some("7.1") {
            return (400, "application/json", r#"{"message":"api-version missing"}"#.into());
        }
        if req.query("serviceConnectionId").as_deref() != Some(service_connection) {
            return (404, "application/json", format!(r#"{{"$id":"1","innerException":null,"message":"Service connection with id {} not found or the pipeline is not authorized to use it.","typeName":"Microsoft.TeamFoundation.DistributedTask.WebApi.ServiceEndpointNotFoundException","typeKey":"ServiceEndpointNotFoundException","errorCode":0,"eventId":3000}}"#, req.query("serviceConnectionId").unwrap_or_default()));
        }
        (200, "application/json", serde_json::json!({"oidcToken": fresh_jwt(n)}).to_string())
    })
    .await
}

/// The GitHub Actions ID-token endpoint (`GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=…` with
/// `Bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN` → `{"value": …}`); wrong bearer → 401.
pub async fn github() -> Server {
    Server::start(|req, n| {
        if req.method != "GET" {
            return (405, "text/plain", String::new());
        }
        if req.authorization.as_deref() != Some(&format!("Bearer {GH_REQUEST_TOKEN}")) {
            return (
                401,
                "application/json",
                r#"{"message":"Bad credentials"}"#.into(),
            );
        }
        let claims = serde_json::json!({
            "iss": "https://token.actions.githubusercontent.com",
            "sub": "repo:platform/payments:ref:refs/heads/main",
            "aud": req.query("audience").unwrap_or_default(),
            "iat": now(), "exp": now() + 300, "jti": format!("gh-{n}"),
        });
        (
            200,
            "application/json",
            serde_json::json!({"count": 1, "value": jwt(claims)}).to_string(),
        )
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// STS query API fake (moto cannot produce these errors).

const STS_NS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// What the fake answers to one STS call.
#[derive(Debug, Clone)]
pub enum StsReply {
    /// Success, credentials expiring after this long.
    Ok(Duration),
    /// AWS's exact error for this code.
    Error(&'static str),
}

/// AWS's documented error response for `code`: (HTTP status, XML body). The bodies follow the
/// STS query-protocol `ErrorResponse` shape AWS returns, with AWS's messages.
pub fn sts_error(code: &str) -> (u16, String) {
    let (status, message) = match code {
        "InvalidIdentityToken" => (
            400,
            "Couldn't retrieve verification key from your identity provider,  please reference AssumeRoleWithWebIdentity documentation for requirements",
        ),
        "AccessDenied" => (
            403,
            "User: arn:aws:sts::999999999999:assumed-role/ConveyorHub/forge-dev-4711 is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::111111111111:role/ConveyorDeployRole-dev",
        ),
        "ExpiredTokenException" => (
            400,
            "Token expired: current date/time 1764151800 must be before the expiration date/time1764151200",
        ),
        // AssumeRole with credentials that expired (the previous step's).
        "ExpiredToken" => (400, "The security token included in the request is expired"),
        "Throttling" => (400, "Rate exceeded"),
        "IDPCommunicationError" => (
            400,
            "The request could not be fulfilled because the identity provider (IDP) that was asked to verify the incoming identity token could not be reached.",
        ),
        "ValidationError" => (
            400,
            "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
        ),
        other => panic!("no canned STS error for {other}"),
    };
    (
        status,
        format!(
            "<ErrorResponse xmlns=\"{STS_NS}\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n  <RequestId>4f1e2b7c-0000-4000-8000-000000000000</RequestId>\n</ErrorResponse>\n"
        ),
    )
}

fn rfc3339(t: SystemTime) -> String {
    forge_auth::identity::rfc3339(t)
}

fn assumed(
    action: &str,
    account: &str,
    role: &str,
    session: &str,
    ttl: Duration,
    n: usize,
) -> String {
    let extra = if action == "AssumeRoleWithWebIdentity" {
        "<SubjectFromWebIdentityToken>repo:platform/payments</SubjectFromWebIdentityToken><Audience>sts.amazonaws.com</Audience><Provider>token.actions.githubusercontent.com</Provider>"
    } else {
        ""
    };
    format!(
        "<{action}Response xmlns=\"{STS_NS}\"><{action}Result>{extra}<AssumedRoleUser><Arn>arn:aws:sts::{account}:assumed-role/{role}/{session}</Arn><AssumedRoleId>AROAFAKE{n}:{session}</AssumedRoleId></AssumedRoleUser><Credentials><AccessKeyId>ASIAFAKE{n:08}</AccessKeyId><SecretAccessKey>secret-{n}</SecretAccessKey><SessionToken>session-{n}</SessionToken><Expiration>{}</Expiration></Credentials></{action}Result><ResponseMetadata><RequestId>4f1e2b7c-0000-4000-8000-00000000000{}</RequestId></ResponseMetadata></{action}Response>",
        rfc3339(SystemTime::now() + ttl),
        n % 10
    )
}

/// An in-process fake of the STS query API: form-encoded POSTs in, AWS's XML out. Replies for
/// `AssumeRoleWithWebIdentity` and `AssumeRole` are taken from per-action scripts; when a script
/// runs out the call succeeds with one-hour credentials. `GetCallerIdentity` answers for the
/// last role assumed.
pub struct FakeSts {
    pub server: Server,
}

impl FakeSts {
    pub async fn start(web_identity: Vec<StsReply>, assume_role: Vec<StsReply>) -> FakeSts {
        let scripts = Arc::new(Mutex::new((
            VecDeque::from(web_identity),
            VecDeque::from(assume_role),
        )));
        let last_role = Arc::new(Mutex::new(String::from(
            "arn:aws:sts::000000000000:user/nobody",
        )));
        let server = Server::start(move |req, n| {
            let action = req.form("Action").unwrap_or_default();
            let reply = {
                let mut s = scripts.lock().unwrap();
                match action.as_str() {
                    "AssumeRoleWithWebIdentity" => s.0.pop_front(),
                    "AssumeRole" => s.1.pop_front(),
                    _ => None,
                }
            }
            .unwrap_or(StsReply::Ok(Duration::from_secs(3600)));
            match (action.as_str(), reply) {
                (_, StsReply::Error(code)) => {
                    let (status, body) = sts_error(code);
                    (status, "text/xml", body)
                }
                ("AssumeRoleWithWebIdentity" | "AssumeRole", StsReply::Ok(ttl)) => {
                    let arn = req.form("RoleArn").unwrap_or_default();
                    let account = arn.split(':').nth(4).unwrap_or("000000000000").to_owned();
                    let role = arn.rsplit('/').next().unwrap_or_default().to_owned();
                    let session = req.form("RoleSessionName").unwrap_or_default();
                    *last_role.lock().unwrap() = format!("arn:aws:sts::{account}:assumed-role/{role}/{session}");
                    (200, "text/xml", assumed(&action, &account, &role, &session, ttl, n))
                }
                ("GetCallerIdentity", _) => {
                    let arn = last_role.lock().unwrap().clone();
                    let account = arn.split(':').nth(4).unwrap_or_default().to_owned();
                    (200, "text/xml", format!("<GetCallerIdentityResponse xmlns=\"{STS_NS}\"><GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AROAFAKE:x</UserId><Account>{account}</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>4f1e2b7c-0000-4000-8000-000000000000</RequestId></ResponseMetadata></GetCallerIdentityResponse>"))
                }
                _ => (400, "text/xml", format!("<ErrorResponse xmlns=\"{STS_NS}\"><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>Could not find operation {action}</Message></Error><RequestId>x</RequestId></ErrorResponse>")),
            }
        })
        .await;
        FakeSts { server }
    }

    /// Calls made with this action.
    pub fn calls(&self, action: &str) -> Vec<Recorded> {
        self.server
            .recorded()
            .into_iter()
            .filter(|r| r.form("Action").as_deref() == Some(action))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// SDK configs.

/// Base config for the chain's STS calls: explicit endpoint and region, no credentials, nothing
/// read from the process's AWS_* variables that matters here (endpoint and region are explicit).
pub async fn base_config(endpoint: &str) -> aws_types::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .no_credentials()
        .load()
        .await
}

/// Fast retries for tests.
pub fn fast_retry(max_retries: u32) -> forge_auth::RetryPolicy {
    forge_auth::RetryPolicy {
        max_retries,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        ..forge_auth::RetryPolicy::default()
    }
}

pub const HUB: &str = "arn:aws:iam::999999999999:role/ConveyorHub";
pub const DEV: &str = "arn:aws:iam::111111111111:role/ConveyorDeployRole-dev";

/// token → ConveyorHub → ConveyorDeployRole-dev with fast retries.
pub fn chain(token: forge_auth::TokenSource, retries: u32) -> forge_auth::RoleChain {
    let mut chain = forge_auth::RoleChain::new(
        token,
        forge_auth::RoleArn::parse(HUB).unwrap(),
        forge_auth::Hop::new(forge_auth::RoleArn::parse(DEV).unwrap()),
        forge_auth::SessionName::for_pipeline("dev", Some("4711")),
    );
    chain.retry = fast_retry(retries);
    chain
}

/// A token given as a value.
pub fn value_token(token: String) -> forge_auth::TokenSource {
    let lookup = move |k: &str| (k == "OIDC").then(|| token.clone());
    forge_auth::TokenSource::detect(
        &forge_auth::token::TokenSetting::Env("OIDC".into()),
        &lookup,
        &forge_auth::token::DetectOptions::default(),
    )
    .unwrap()
}
