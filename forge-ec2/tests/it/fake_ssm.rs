//! An in-process fake of the SSM JSON API (AWS JSON 1.1: `POST /`, `X-Amz-Target:
//! AmazonSSM.<Operation>`, `application/x-amz-json-1.1`, errors as `{"__type": ...}`) on
//! 127.0.0.1. It reproduces AWS's documented response shapes because moto cannot produce what
//! these tests need: moto answers every invocation with Success at once, and answers
//! ListCommandInvocations and CancelCommand with 500. Each test scripts the answers with a
//! handler; every request is recorded for assertions.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use forge_ec2::{DeployRequest, Ec2Deployer, Ec2Error, PollConfig, Targets};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The answer to one request: HTTP status and JSON body.
pub type Answer = (u16, Value);
type Handler = dyn Fn(&str, &Value, usize) -> Answer + Send + Sync;

pub struct FakeSsm {
    pub endpoint: String,
    calls: Arc<Mutex<Vec<(String, Value)>>>,
}

impl FakeSsm {
    /// Starts the fake; `handler(operation, body, n)` answers the n-th (0-based) call of
    /// `operation`.
    pub async fn start(
        handler: impl Fn(&str, &Value, usize) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let handler: Arc<Handler> = Arc::new(handler);
        let calls: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let recorded = calls.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let recorded = recorded.clone();
                        async move {
                            let op = req
                                .headers()
                                .get("x-amz-target")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .trim_start_matches("AmazonSSM.")
                                .to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let n = {
                                let mut calls = recorded.lock().unwrap();
                                let n = calls.iter().filter(|(o, _)| *o == op).count();
                                calls.push((op.clone(), body.clone()));
                                n
                            };
                            let (status, answer) = handler(&op, &body, n);
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-amz-json-1.1")
                                    .header(
                                        "x-amzn-requestid",
                                        "00000000-0000-0000-0000-000000000000",
                                    )
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeSsm { endpoint, calls }
    }

    pub fn calls(&self, op: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, b)| b.clone())
            .collect()
    }

    pub async fn deployer(&self) -> Ec2Deployer {
        Ec2Deployer::new(&sdk_config(&self.endpoint).await).with_poll(PollConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            max_consecutive_errors: 3,
        })
    }
}

/// An SdkConfig for a loopback endpoint with static test credentials and no SDK retries (the
/// deployer's own polling is what is under test).
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "forge-test",
        ))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await
}

pub fn error(status: u16, code: &str) -> Answer {
    (
        status,
        json!({"__type": code, "message": format!("{code} (fake SSM)")}),
    )
}

const CMD: &str = "11111111-2222-3333-4444-555555555555";

fn send_answer(instance_ids: &[&str]) -> Answer {
    (
        200,
        json!({"Command": {
            "CommandId": CMD, "DocumentName": "AWS-RunShellScript", "Status": "Pending",
            "InstanceIds": instance_ids, "TargetCount": 0, "CompletedCount": 0, "ErrorCount": 0
        }}),
    )
}

fn command(status: &str, target_count: usize) -> Answer {
    (
        200,
        json!({"Commands": [{
            "CommandId": CMD, "DocumentName": "AWS-RunShellScript", "Status": status,
            "InstanceIds": [], "TargetCount": target_count, "CompletedCount": 0, "ErrorCount": 0
        }]}),
    )
}

fn listed(instance: &str, status: &str, details: &str, code: i64) -> Value {
    json!({
        "CommandId": CMD, "InstanceId": instance, "DocumentName": "AWS-RunShellScript",
        "Status": status, "StatusDetails": details,
        "CommandPlugins": [{"Name": "aws:runShellScript", "Status": status, "StatusDetails": details,
                            "ResponseCode": code, "Output": "listing output"}]
    })
}

fn got(
    instance: &str,
    status: &str,
    details: &str,
    code: i64,
    stdout: &str,
    stderr: &str,
) -> Answer {
    (
        200,
        json!({
            "CommandId": CMD, "InstanceId": instance, "DocumentName": "AWS-RunShellScript",
            "PluginName": "aws:runShellScript", "ResponseCode": code,
            "Status": status, "StatusDetails": details,
            "StandardOutputContent": stdout, "StandardErrorContent": stderr
        }),
    )
}

fn request(targets: &str) -> DeployRequest {
    let mut r = DeployRequest::new(
        Targets::parse(targets).unwrap(),
        b"services:\n  web:\n    image: web:${IMAGE_TAG}\n".to_vec(),
        "42",
        "/opt/dagster",
    );
    r.deadline = Duration::from_secs(20);
    r
}

/// Every outcome AWS can report, behind two empty listings, over two pages.
#[tokio::test]
async fn statuses_aws_reports_after_empty_listings_over_pages() {
    let fake = FakeSsm::start(|op, body, n| match op {
        "SendCommand" => send_answer(&[]), // tag targets: AWS resolves instances later
        "ListCommands" => command(if n < 4 { "InProgress" } else { "Failed" }, 5),
        "ListCommandInvocations" => {
            let poll = n; // pages count as calls too; the first two polls see nothing
            if poll < 2 {
                return (200, json!({"CommandInvocations": []}));
            }
            let final_ = poll >= 4;
            if body.get("NextToken").and_then(Value::as_str) == Some("page-2") {
                let last = if final_ {
                    vec![
                        listed("i-0000000000000000d", "Failed", "Undeliverable", -1),
                        listed("i-0000000000000000e", "Cancelled", "Terminated", -1),
                    ]
                } else {
                    vec![listed("i-0000000000000000d", "Delayed", "Delayed", -1)]
                };
                return (200, json!({"CommandInvocations": last}));
            }
            let first = if final_ {
                vec![
                    listed("i-0000000000000000a", "Success", "Success", 0),
                    listed("i-0000000000000000b", "Failed", "Failed", 18),
                    listed("i-0000000000000000c", "TimedOut", "Delivery Timed Out", -1),
                ]
            } else {
                vec![listed(
                    "i-0000000000000000a",
                    "InProgress",
                    "InProgress",
                    -1,
                )]
            };
            (
                200,
                json!({"CommandInvocations": first, "NextToken": "page-2"}),
            )
        }
        "GetCommandInvocation" => match body["InstanceId"].as_str().unwrap_or_default() {
            id @ "i-0000000000000000a" => got(
                id,
                "Success",
                "Success",
                0,
                &format!("{}\nforge-deployed-tag: 42\n", "x".repeat(23_990)),
                "",
            ),
            id @ "i-0000000000000000b" => got(
                id,
                "Failed",
                "Failed",
                18,
                "forge-step: pull\n",
                "pull access denied\nforge-step-failed: pull (exit 18)\n",
            ),
            id @ "i-0000000000000000c" => got(id, "TimedOut", "Delivery Timed Out", -1, "", ""),
            id @ "i-0000000000000000d" => got(id, "Failed", "Undeliverable", -1, "", ""),
            id => got(id, "Cancelled", "Terminated", -1, "", ""),
        },
        _ => error(400, "UnknownOperationException"),
    })
    .await;
    let report = fake
        .deployer()
        .await
        .deploy(&request("tag:forge:dagster-enabled=true"))
        .await
        .unwrap();
    assert!(!report.succeeded);
    assert_eq!(report.listing, "ListCommandInvocations");
    assert_eq!(report.target_count, 5);
    let rows: Vec<(&str, &str, &str, i32, Option<&str>)> = report
        .instances
        .iter()
        .map(|i| {
            (
                i.instance_id.as_str(),
                i.status.as_str(),
                i.status_details.as_str(),
                i.exit_code,
                i.failed_step.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("i-0000000000000000a", "Success", "Success", 0, None),
            ("i-0000000000000000b", "Failed", "Failed", 18, Some("pull")),
            (
                "i-0000000000000000c",
                "TimedOut",
                "Delivery Timed Out",
                -1,
                None
            ),
            ("i-0000000000000000d", "Failed", "Undeliverable", -1, None),
            ("i-0000000000000000e", "Cancelled", "Terminated", -1, None),
        ]
    );
    let a = &report.instances[0];
    assert!(
        a.succeeded && a.truncated,
        "24,000 characters of stdout is SSM's cap"
    );
    assert_eq!(a.deployed_tag.as_deref(), Some("42"));
    assert!(
        report.instances[3]
            .advice
            .as_deref()
            .unwrap()
            .contains("SSM could not reach the instance")
    );
    assert!(
        report.instances[4]
            .advice
            .as_deref()
            .unwrap()
            .contains("MaxErrors")
    );
    // Pagination followed NextToken, and empty listings were never taken as done.
    let lists = fake.calls("ListCommandInvocations");
    assert!(lists.iter().any(|b| b["NextToken"] == "page-2"));
    assert!(lists.len() >= 4, "{lists:?}");
    // The command went out as documented.
    let send = &fake.calls("SendCommand")[0];
    assert_eq!(send["DocumentName"], "AWS-RunShellScript");
    assert_eq!(
        send["Targets"],
        json!([{"Key": "tag:forge:dagster-enabled", "Values": ["true"]}])
    );
    assert_eq!(send["TimeoutSeconds"], 600);
    assert_eq!(send["Parameters"]["executionTimeout"], json!(["1800"]));
    assert!(
        send["Parameters"]["commands"][0]
            .as_str()
            .unwrap()
            .contains("set -Eeuo pipefail")
    );
}

/// Where the listing is unavailable (moto answers 500), each instance is followed with
/// GetCommandInvocation, whose first answers are InvocationDoesNotExist.
#[tokio::test]
async fn falls_back_to_get_command_invocation_through_invocation_does_not_exist() {
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let fake = FakeSsm::start(move |op, body, _n| match op {
        "SendCommand" => send_answer(&["i-0000000000000000a", "i-0000000000000000b"]),
        "ListCommands" => command("InProgress", 2),
        "ListCommandInvocations" => error(500, "InternalServerError"),
        "GetCommandInvocation" => {
            let id = body["InstanceId"].as_str().unwrap_or_default().to_owned();
            let n = {
                let mut seen = seen.lock().unwrap();
                let n = seen.entry(id.clone()).or_default();
                *n += 1;
                *n
            };
            match n {
                1 | 2 => error(400, "InvocationDoesNotExist"),
                3 => got(&id, "InProgress", "InProgress", -1, "", ""),
                _ => got(
                    &id,
                    "Success",
                    "Success",
                    0,
                    "forge-step: finished\nforge-deployed-tag: 42\n",
                    "",
                ),
            }
        }
        _ => error(400, "UnknownOperationException"),
    })
    .await;
    let mut req = request("i-0000000000000000a i-0000000000000000b");
    req.max_concurrency = Some("1".into());
    req.max_errors = Some("0".into());
    req.execution_timeout = Duration::from_secs(900);
    req.delivery_timeout = Duration::from_secs(120);
    let report = fake.deployer().await.deploy(&req).await.unwrap();
    assert!(report.succeeded, "{report:#?}");
    assert_eq!(report.listing, "GetCommandInvocation");
    assert_eq!(report.instances.len(), 2);
    assert!(
        report
            .instances
            .iter()
            .all(|i| i.deployed_tag.as_deref() == Some("42"))
    );
    let send = &fake.calls("SendCommand")[0];
    assert_eq!(
        send["InstanceIds"],
        json!(["i-0000000000000000a", "i-0000000000000000b"])
    );
    assert_eq!(send["MaxConcurrency"], "1");
    assert_eq!(send["MaxErrors"], "0");
    assert_eq!(send["TimeoutSeconds"], 120);
    assert_eq!(send["Parameters"]["executionTimeout"], json!(["900"]));
    assert!(send.get("Targets").is_none());
}

/// Past the deadline the command is cancelled; an unknown status keeps the wait going rather
/// than being taken as a result.
#[tokio::test]
async fn deadline_cancels_and_names_the_unfinished() {
    let fake = FakeSsm::start(|op, _body, _n| match op {
        "SendCommand" => send_answer(&[]),
        "ListCommands" => command("InProgress", 2),
        "ListCommandInvocations" => (
            200,
            json!({"CommandInvocations": [
                listed("i-0000000000000000a", "Success", "Success", 0),
                listed("i-0000000000000000b", "Hibernating", "Hibernating", -1)
            ]}),
        ),
        "CancelCommand" => (200, json!({})),
        _ => error(400, "UnknownOperationException"),
    })
    .await;
    let mut req = request("tag:app=web");
    req.deadline = Duration::from_millis(300);
    let err = fake.deployer().await.deploy(&req).await.unwrap_err();
    let Ec2Error::Deadline { instances, .. } = &err else {
        panic!("expected a deadline, got {err:?}");
    };
    // What each instance had reported is kept for the report, finished or not.
    let seen: Vec<(&str, &str, bool)> = instances
        .iter()
        .map(|i| (i.instance_id.as_str(), i.status.as_str(), i.succeeded))
        .collect();
    assert_eq!(
        seen,
        [
            ("i-0000000000000000a", "Success", true),
            ("i-0000000000000000b", "Hibernating", false)
        ]
    );
    let msg = err.to_string();
    assert!(
        msg.contains("i-0000000000000000b (Hibernating)") && msg.contains("was cancelled"),
        "{msg}"
    );
    assert!(
        !msg.contains("i-0000000000000000a"),
        "finished instances are not listed: {msg}"
    );
    let cancels = fake.calls("CancelCommand");
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0]["CommandId"], CMD);
}

/// A tag that matches nothing is an error, not a vacuous success.
#[tokio::test]
async fn zero_targets_is_an_error() {
    let fake = FakeSsm::start(|op, _body, n| match op {
        "SendCommand" => send_answer(&[]),
        "ListCommands" => command(if n == 0 { "Pending" } else { "Success" }, 0),
        "ListCommandInvocations" => (200, json!({"CommandInvocations": []})),
        _ => error(400, "UnknownOperationException"),
    })
    .await;
    let err = fake
        .deployer()
        .await
        .deploy(&request("tag:app=nothing"))
        .await
        .unwrap_err();
    assert!(matches!(err, Ec2Error::NoTargets { .. }), "{err:?}");
    assert!(
        err.to_string().contains("nothing matches tag:app=nothing"),
        "{err}"
    );
}

/// SendCommand refusals carry a hint and the SDK error as source; bad input never reaches SSM.
#[tokio::test]
async fn send_errors_and_invalid_input() {
    let fake = FakeSsm::start(|op, _body, _n| match op {
        "SendCommand" => error(400, "InvalidInstanceId"),
        _ => error(400, "UnknownOperationException"),
    })
    .await;
    let deployer = fake.deployer().await;
    let err = deployer
        .deploy(&request("i-0000000000000000a"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not managed by SSM"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
    assert!(!err.is_invalid_input());

    let mut bad = request("tag:a=b");
    bad.image_tag = "latest".into();
    let err = deployer.deploy(&bad).await.unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    assert_eq!(
        fake.calls("SendCommand").len(),
        1,
        "the invalid request was not sent"
    );
}

/// Polls that keep failing end with an error that counts retries and time.
#[tokio::test]
async fn persistent_poll_failures_report_retries_and_elapsed() {
    let fake = FakeSsm::start(|op, _body, n| match op {
        "SendCommand" => send_answer(&["i-0000000000000000a"]),
        "ListCommands" => command("InProgress", 1),
        "ListCommandInvocations" if n == 0 => (200, json!({"CommandInvocations": []})),
        "ListCommandInvocations" => error(400, "ThrottlingException"),
        _ => error(400, "UnknownOperationException"),
    })
    .await;
    let err = fake
        .deployer()
        .await
        .deploy(&request("i-0000000000000000a"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Ec2Error::Poll { retries: 4, .. }), "{err:?}");
    assert!(
        msg.contains("ListCommandInvocations failed after 4 retries in"),
        "{msg}"
    );
}

/// While AWS still resolves tag targets, ListCommands says Pending with TargetCount 0 and the
/// listing may already show the first finished invocation: that is not "every instance".
#[tokio::test]
async fn a_partial_listing_before_targets_resolve_is_not_done() {
    let fake = FakeSsm::start(|op, body, n| match op {
        "SendCommand" => send_answer(&[]),
        "ListCommands" if n < 3 => command("Pending", 0),
        "ListCommands" => command("InProgress", 2),
        "ListCommandInvocations" if n < 4 => (
            200,
            json!({"CommandInvocations": [listed("i-0000000000000000a", "Success", "Success", 0)]}),
        ),
        "ListCommandInvocations" => (
            200,
            json!({"CommandInvocations": [
                listed("i-0000000000000000a", "Success", "Success", 0),
                listed("i-0000000000000000b", "Success", "Success", 0)
            ]}),
        ),
        "GetCommandInvocation" => got(
            body_id(body),
            "Success",
            "Success",
            0,
            "forge-deployed-tag: 42\n",
            "",
        ),
        _ => error(400, "UnknownOperationException"),
    })
    .await;
    let report = fake
        .deployer()
        .await
        .deploy(&request("tag:app=web"))
        .await
        .unwrap();
    let ids: Vec<&str> = report
        .instances
        .iter()
        .map(|i| i.instance_id.as_str())
        .collect();
    assert_eq!(ids, ["i-0000000000000000a", "i-0000000000000000b"]);
    assert!(report.succeeded);
}

fn body_id(body: &Value) -> &str {
    body["InstanceId"].as_str().unwrap_or_default()
}

/// Without ssm:ListCommands nothing says how many instances a tag matched; a listing where the
/// instances seen so far all finished is not "every instance" (AWS documents AccessDeniedException
/// as the error for a missing permission).
#[tokio::test]
async fn a_refused_list_commands_is_an_error_not_a_partial_success() {
    let fake = FakeSsm::start(|op, body, n| match op {
        "SendCommand" => send_answer(&[]),
        "ListCommands" => error(400, "AccessDeniedException"),
        // The first listing shows one finished instance, a later one a second, failed.
        "ListCommandInvocations" if n < 2 => (
            200,
            json!({"CommandInvocations": [listed("i-0000000000000000a", "Success", "Success", 0)]}),
        ),
        "ListCommandInvocations" => (
            200,
            json!({"CommandInvocations": [
                listed("i-0000000000000000a", "Success", "Success", 0),
                listed("i-0000000000000000b", "Failed", "Failed", 1)
            ]}),
        ),
        "GetCommandInvocation" => got(body_id(body), "Success", "Success", 0, "", ""),
        _ => error(400, "UnknownOperationException"),
    })
    .await;
    let err = fake
        .deployer()
        .await
        .deploy(&request("tag:app=web"))
        .await
        .unwrap_err();
    assert!(matches!(err, Ec2Error::StatusUnavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("grant ssm:ListCommands"), "{err}");
}

/// Rolling back to "each instance's previous tag" can split a fleet: an instance whose last
/// deploy failed and was undone has an older `.env.previous` than its neighbours. Every instance
/// succeeding on a different tag is not a successful rollback.
#[tokio::test]
async fn a_rollback_that_leaves_instances_on_different_tags_is_a_failure() {
    let fake = FakeSsm::start(|op, body, _n| match op {
        "SendCommand" => send_answer(&[]),
        "ListCommands" => command("Success", 2),
        "ListCommandInvocations" => (
            200,
            json!({"CommandInvocations": [
                listed("i-0000000000000000a", "Success", "Success", 0),
                listed("i-0000000000000000b", "Success", "Success", 0)
            ]}),
        ),
        "GetCommandInvocation" => {
            let id = body_id(body);
            let tag = if id.ends_with('a') { "40" } else { "41" };
            got(
                id,
                "Success",
                "Success",
                0,
                &format!("forge-step: finished\nforge-deployed-tag: {tag}\n"),
                "",
            )
        }
        _ => error(400, "UnknownOperationException"),
    })
    .await;
    let request =
        forge_ec2::RollbackRequest::new(Targets::parse("tag:app=web").unwrap(), "/opt/web");
    let report = fake.deployer().await.rollback(&request).await.unwrap();
    assert!(report.instances.iter().all(|i| i.succeeded));
    assert!(!report.succeeded);
    let problem = report.problem.expect("the split is named");
    assert!(
        problem.contains("i-0000000000000000a → 40")
            && problem.contains("i-0000000000000000b → 41")
            && problem.contains("--to-tag"),
        "{problem}"
    );
}

/// An inspect reads each instance's tag and sends every instance the read-only script, asking
/// SSM not to stop at failures; instances on different tags are not a failed inspect (telling
/// them apart is its job), and an instance where the service was never deployed fails with
/// the reason its script printed.
#[tokio::test]
async fn an_inspect_reports_each_instance_tag() {
    let fake = FakeSsm::start(|op, body, _n| match op {
        "SendCommand" => send_answer(&[]),
        "ListCommands" => command("Failed", 3),
        "ListCommandInvocations" => (
            200,
            json!({"CommandInvocations": [
                listed("i-0000000000000000a", "Success", "Success", 0),
                listed("i-0000000000000000b", "Success", "Success", 0),
                listed("i-0000000000000000c", "Failed", "Failed", 1)
            ]}),
        ),
        "GetCommandInvocation" => {
            let id = body_id(body);
            match id.chars().last() {
                Some('a') => got(id, "Success", "Success", 0, "forge-step: inspect\nforge-previous-tag: 40\nforge-step: finished\nforge-deployed-tag: 41\n", ""),
                Some('b') => got(id, "Success", "Success", 0, "forge-step: inspect\nforge-previous-tag: 39\nforge-step: finished\nforge-deployed-tag: 40\n", ""),
                _ => got(id, "Failed", "Failed", 1, "forge-step: inspect\nforge-step-failed: inspect: /opt/web does not exist on this instance: the service was never deployed here (deploy it, or check the target)\n", "forge-step-failed: inspect: /opt/web does not exist on this instance: the service was never deployed here (deploy it, or check the target)\n"),
            }
        }
        _ => error(400, "UnknownOperationException"),
    })
    .await;
    let request =
        forge_ec2::InspectRequest::new(Targets::parse("tag:app=web").unwrap(), "/opt/web");
    let report = fake.deployer().await.inspect(&request).await.unwrap();
    assert_eq!(report.mode, "inspect");
    let tags: Vec<(&str, Option<&str>, bool)> = report
        .instances
        .iter()
        .map(|i| {
            (
                i.instance_id.as_str(),
                i.deployed_tag.as_deref(),
                i.succeeded,
            )
        })
        .collect();
    assert_eq!(
        tags,
        [
            ("i-0000000000000000a", Some("41"), true),
            ("i-0000000000000000b", Some("40"), true),
            ("i-0000000000000000c", None, false),
        ]
    );
    assert_eq!(report.instances[2].failed_step.as_deref(), Some("inspect"));
    assert!(
        report.instances[2]
            .stderr_tail
            .contains("never deployed here")
    );
    assert!(!report.succeeded, "an instance could not be read");
    assert!(
        report.problem.is_none(),
        "different tags are the answer, not a rollback split"
    );

    let sent = &fake.calls("SendCommand")[0];
    assert_eq!(sent["MaxErrors"], "100%", "{sent}");
    let script = sent["Parameters"]["commands"][0].as_str().unwrap();
    assert!(
        script.contains("(mode: inspect)") && script.contains("SERVICE_DIR='/opt/web'"),
        "{script}"
    );
    assert_eq!(sent["Parameters"]["executionTimeout"][0], "60");
    // Shorter than a deploy's 600 s, and inside the 240 s deadline: an offline instance ends as
    // `Delivery Timed Out` in the report rather than as a deadline error.
    assert_eq!(sent["TimeoutSeconds"], 120);

    // Bad input is refused before anything is sent.
    let bad = forge_ec2::InspectRequest::new(Targets::parse("tag:app=web").unwrap(), "opt/web");
    let e = fake.deployer().await.inspect(&bad).await.unwrap_err();
    assert!(
        e.is_invalid_input() && e.to_string().contains("opt/web"),
        "{e}"
    );
    assert_eq!(fake.calls("SendCommand").len(), 1);
}
