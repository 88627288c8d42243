//! `forge ec2 …` and `forge-refresh-env` end to end: the real binaries, moto for SSM/EC2 and
//! Parameter Store, and for a failed instance (which moto cannot produce: it answers every
//! invocation with Success) a minimal loopback fake of the SSM JSON API with AWS's shapes.
// Test helpers (not only #[test] fns) unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::{assert_exit, assert_success, forge, stderr, stdout};

const COMPOSE: &str = "services:\n  web:\n    image: \"registry.example/web:${IMAGE_TAG}\"\n";

/// A directory with forge.toml (default AWS chain, static test keys allowed) and a compose file.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for empty in ["no-aws-config", "no-aws-credentials"] {
        std::fs::write(dir.path().join(empty), "").unwrap();
    }
    std::fs::write(
        dir.path().join("forge.toml"),
        r#"
[auth]
token = "none"
region = "eu-west-1"
allow_static_credentials = true

[environments.dev]
region = "eu-west-1"

[services.dagster]
kind = "ec2"
target = "tag:forge:dagster-enabled=true"
service_dir = "/opt/dagster"
compose = "compose/docker-compose.yml"
"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("compose")).unwrap();
    std::fs::write(dir.path().join("compose/docker-compose.yml"), COMPOSE).unwrap();
    dir
}

/// A command against `endpoint` with a clean AWS/CI environment and static test keys.
pub(crate) fn aws_cmd(mut cmd: Command, dir: &Path, endpoint: &str) -> Command {
    for var in [
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "FORGE_TOKEN",
        "FORGE_REGION",
        "FORGE_ROLE",
        "FORGE_HUB_ROLE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .current_dir(dir);
    cmd
}

fn ec2(dir: &Path, endpoint: &str, args: &[&str]) -> Output {
    let mut cmd = aws_cmd(forge(), dir, endpoint);
    cmd.arg("ec2").args(args);
    cmd.output().unwrap()
}

fn refresh_env(dir: &Path, endpoint: &str, args: &[&str]) -> Output {
    let mut cmd = aws_cmd(
        Command::new(env!("CARGO_BIN_EXE_forge-refresh-env")),
        dir,
        endpoint,
    );
    cmd.args(args).env_remove("RUST_LOG");
    cmd.output().unwrap()
}

#[test]
fn render_script_prints_the_script_and_refuses_bad_input() {
    let dir = setup();
    let out = crate::support::forge_in(
        dir.path(),
        &[
            "ec2",
            "render-script",
            "--compose",
            "compose/docker-compose.yml",
            "--image-tag",
            "42",
            "--service-dir",
            "/opt/dagster",
            "--parameters-path",
            "/forge/dagster",
        ],
    );
    assert_success(&out);
    let script = stdout(&out);
    assert!(script.starts_with("#!/bin/bash\n"), "{script}");
    for needle in [
        "set -Eeuo pipefail",
        "SERVICE_DIR='/opt/dagster'",
        "IMAGE_TAG_WANTED='42'",
        "step refresh-env",
        "PARAMETERS_PATH='/forge/dagster'",
        "step pull",
        "step up",
    ] {
        assert!(script.contains(needle), "missing {needle:?}");
    }

    let rollback = crate::support::forge_in(
        dir.path(),
        &[
            "ec2",
            "render-script",
            "--rollback",
            "--service-dir",
            "/opt/dagster",
        ],
    );
    assert_success(&rollback);
    assert!(stdout(&rollback).contains("step read-previous-tag"));
    // What `forge ec2 rollback --from-tag` sends can be reviewed too.
    let only_from = crate::support::forge_in(
        dir.path(),
        &[
            "ec2",
            "render-script",
            "--rollback",
            "--from-tag",
            "43",
            "--service-dir",
            "/opt/dagster",
        ],
    );
    assert_success(&only_from);
    assert!(
        stdout(&only_from).contains("ROLLBACK_FROM='43'"),
        "{}",
        stdout(&only_from)
    );

    for (args, needle) in [
        (
            &[
                "--compose",
                "compose/docker-compose.yml",
                "--image-tag",
                "latest",
                "--service-dir",
                "/opt/x",
            ][..],
            "`latest` is mutable",
        ),
        (
            &[
                "--compose",
                "compose/docker-compose.yml",
                "--image-tag",
                "42",
                "--service-dir",
                "opt/x",
            ][..],
            "must be an absolute path",
        ),
        (
            &[
                "--compose",
                "missing.yml",
                "--image-tag",
                "42",
                "--service-dir",
                "/opt/x",
            ][..],
            "cannot read compose file missing.yml",
        ),
        (
            &["--service-dir", "/opt/x"][..],
            "needs --compose FILE and --image-tag TAG",
        ),
        (
            &[
                "--compose",
                "compose/docker-compose.yml",
                "--image-tag",
                "42",
                "--service-dir",
                "/opt/x",
                "--from-tag",
                "41",
            ][..],
            "--to-tag and --from-tag only apply with --rollback",
        ),
        (
            &[
                "--compose",
                "compose/docker-compose.yml",
                "--image-tag",
                "42",
                "--service-dir",
                "/opt/x",
                "--image-pin",
                "registry.example/web:42",
            ][..],
            "image pin `registry.example/web:42` is not allowed: give REPOSITORY@sha256:",
        ),
        (
            &[
                "--rollback",
                "--service-dir",
                "/opt/x",
                "--image-pin",
                "registry.example/web@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ][..],
            "a pin needs the tag it belongs to",
        ),
    ] {
        let mut full = vec!["ec2", "render-script"];
        full.extend_from_slice(args);
        let out = crate::support::forge_in(dir.path(), &full);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "nothing printed on refusal");
    }
}

#[test]
fn out_of_range_timeouts_are_refused_before_anything_is_sent() {
    let dir = setup();
    for (flag, value, range) in [
        ("--timeout", "18446744073709551615", "1..=172800"),
        ("--timeout", "0", "1..=172800"),
        ("--delivery-timeout", "29", "30..=2592000"),
    ] {
        let out = crate::support::forge_in(
            dir.path(),
            &[
                "ec2",
                "deploy",
                "--env",
                "qa",
                "--target",
                "tag:a=b",
                "--service-dir",
                "/opt/x",
                "--compose",
                "compose/docker-compose.yml",
                "--image-tag",
                "42",
                flag,
                value,
            ],
        );
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(&format!("'{value}' for '{flag} <SECS>'")) && err.contains(range),
            "{flag} {value}: {err}"
        );
    }
}

#[test]
fn deploy_and_rollback_against_moto_list_every_instance() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    let out = moto.python(
        r#"
import boto3, json, os
ec2 = boto3.client("ec2", endpoint_url=os.environ["ENDPOINT"])
ids = []
for v in ["true", "true", "false"]:
    r = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "forge:dagster-enabled", "Value": v}]}])
    ids.append(r["Instances"][0]["InstanceId"])
print(json.dumps(ids))
"#,
    );
    let ids: Vec<String> = serde_json::from_str(out.trim()).unwrap();
    let dir = setup();
    let endpoint = moto.endpoint();

    // Everything from [services.dagster]; JSON lists each tagged instance with status and exit code.
    let out = ec2(
        dir.path(),
        &endpoint,
        &[
            "deploy",
            "--env",
            "dev",
            "--service",
            "dagster",
            "--image-tag",
            "42",
            "--max-concurrency",
            "1",
            "--output",
            "json",
        ],
    );
    assert_success(&out);
    // The libraries' info logs stay behind -v.
    assert!(
        !stderr(&out).contains("SSM command sent"),
        "{}",
        stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mut got: Vec<&str> = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["status"], "Success");
            assert_eq!(i["exit_code"], 0);
            i["instance_id"].as_str().unwrap()
        })
        .collect();
    got.sort_unstable();
    let mut want = vec![ids[0].as_str(), ids[1].as_str()];
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(report["succeeded"], true);
    assert_eq!(report["requested_tag"], "42");

    // Flags instead of the service; text output. moto's Run Command runs no script, so a
    // rollback to each instance's previous tag gets no `forge-deployed-tag` back and cannot
    // be proven to have ended on one tag: a failure, as it would be with real SSM.
    let rollback = |extra: &[&str]| {
        let mut args = vec![
            "rollback",
            "--env",
            "dev",
            "--target",
            "tag:forge:dagster-enabled=true",
            "--service-dir",
            "/opt/dagster",
        ];
        args.extend_from_slice(extra);
        ec2(dir.path(), &endpoint, &args)
    };
    let out = rollback(&[]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.starts_with("rollback (previous tag) to tag:forge:dagster-enabled=true"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("cannot tell which tag"),
        "{}",
        stderr(&out)
    );
    let out = rollback(&["--to-tag", "41"]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with("rollback 41 to tag:forge:dagster-enabled=true"),
        "{text}"
    );
    assert!(text.contains("2/2 instance(s) succeeded"), "{text}");

    // A tag that matches nothing fails (exit 1) instead of passing vacuously.
    let out = ec2(
        dir.path(),
        &endpoint,
        &[
            "deploy",
            "--env",
            "dev",
            "--service",
            "dagster",
            "--target",
            "tag:forge:dagster-enabled=nope",
            "--image-tag",
            "42",
        ],
    );
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("targeted no instance"),
        "{}",
        stderr(&out)
    );

    // Bad input exits 2 before any AWS call.
    let out = ec2(
        dir.path(),
        &endpoint,
        &[
            "deploy",
            "--env",
            "dev",
            "--service",
            "dagster",
            "--image-tag",
            "42",
            "--max-errors",
            "lots",
        ],
    );
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("max-errors"), "{}", stderr(&out));
    let out = ec2(
        dir.path(),
        &endpoint,
        &[
            "deploy",
            "--env",
            "qa",
            "--service",
            "dagster",
            "--image-tag",
            "42",
        ],
    );
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("unknown environment `qa`"),
        "{}",
        stderr(&out)
    );
}

/// Serves `answer(operation, n, body)` over HTTP/1.1 on loopback for SSM's JSON protocol (one
/// thread per connection, keep-alive honoured).
pub(crate) fn fake_ssm(answer: fn(&str, usize, &str) -> (u16, String)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let counts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        usize,
    >::new()));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let counts = counts.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let (mut target, mut length) = (String::new(), 0usize);
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        let (name, value) = line.split_once(':').unwrap_or((line, ""));
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            "x-amz-target" => {
                                target = value.trim().trim_start_matches("AmazonSSM.").to_owned()
                            }
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = {
                        let mut counts = counts.lock().unwrap();
                        let n = counts.entry(target.clone()).or_default();
                        *n += 1;
                        *n - 1
                    };
                    let (status, json) = answer(&target, n, &String::from_utf8_lossy(&body));
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\r\n{json}",
                        json.len()
                    );
                    if writer.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    endpoint
}

#[test]
fn a_failed_instance_exits_1_and_shows_its_step() {
    let endpoint = fake_ssm(|op, _n, body| {
        let inv = |id: &str, status: &str, code: i32| {
            format!(
                r#"{{"CommandId":"c-1","InstanceId":"{id}","Status":"{status}","StatusDetails":"{status}","CommandPlugins":[{{"Name":"aws:runShellScript","ResponseCode":{code}}}]}}"#
            )
        };
        match op {
            "SendCommand" => (200, r#"{"Command":{"CommandId":"c-1","InstanceIds":[],"Status":"Pending","TargetCount":0}}"#.to_owned()),
            "ListCommands" => (200, r#"{"Commands":[{"CommandId":"c-1","Status":"Failed","TargetCount":2,"InstanceIds":[]}]}"#.to_owned()),
            "ListCommandInvocations" => (
                200,
                format!(
                    r#"{{"CommandInvocations":[{},{}]}}"#,
                    inv("i-0000000000000000a", "Success", 0),
                    inv("i-0000000000000000b", "Failed", 18)
                ),
            ),
            "GetCommandInvocation" if body.contains("i-0000000000000000a") => (
                200,
                r#"{"CommandId":"c-1","InstanceId":"i-0000000000000000a","ResponseCode":0,"Status":"Success","StatusDetails":"Success","StandardOutputContent":"forge-step: finished\nforge-deployed-tag: 42\n","StandardErrorContent":""}"#.to_owned(),
            ),
            "GetCommandInvocation" => (
                200,
                r#"{"CommandId":"c-1","InstanceId":"i-0000000000000000b","ResponseCode":18,"Status":"Failed","StatusDetails":"Failed","StandardOutputContent":"forge-step: pull\n","StandardErrorContent":"pull access denied for registry.example/web\nforge-step-failed: pull (exit 18)\n"}"#.to_owned(),
            ),
            _ => (400, r#"{"__type":"UnknownOperationException"}"#.to_owned()),
        }
    });
    let dir = setup();
    let out = ec2(
        dir.path(),
        &endpoint,
        &[
            "deploy",
            "--env",
            "dev",
            "--service",
            "dagster",
            "--image-tag",
            "42",
            "--output",
            "json",
        ],
    );
    assert_exit(&out, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["succeeded"], false);
    assert_eq!(report["instances"].as_array().unwrap().len(), 2);
    assert!(
        stderr(&out).contains("deploy failed on 1 of 2 instance(s)"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("step pull"), "{}", stderr(&out));

    let out = ec2(
        dir.path(),
        &endpoint,
        &[
            "deploy",
            "--env",
            "dev",
            "--service",
            "dagster",
            "--image-tag",
            "42",
        ],
    );
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(text.contains("failed at step pull"), "{text}");
    assert!(
        text.contains("| pull access denied for registry.example/web"),
        "{text}"
    );
}

/// SSM's answers to an inspect of three instances: `a` runs 42, `b` 41, and on `c` the
/// service was never deployed (its script fails and says so).
fn inspect_fake(op: &str, _n: usize, body: &str) -> (u16, String) {
    let inv = |id: &str, status: &str, code: i32| {
        format!(
            r#"{{"CommandId":"c-3","InstanceId":"{id}","Status":"{status}","StatusDetails":"{status}","CommandPlugins":[{{"Name":"aws:runShellScript","ResponseCode":{code}}}]}}"#
        )
    };
    let got = |id: &str, status: &str, code: i32, stdout: &str, stderr: &str| {
        serde_json::json!({
            "CommandId": "c-3", "InstanceId": id, "ResponseCode": code, "Status": status,
            "StatusDetails": status, "StandardOutputContent": stdout, "StandardErrorContent": stderr
        })
        .to_string()
    };
    let never = "forge-step-failed: inspect: /opt/dagster does not exist on this instance: the service was never deployed here (deploy it, or check the target)\n";
    match op {
        "SendCommand" => (200, r#"{"Command":{"CommandId":"c-3","InstanceIds":[],"Status":"Pending","TargetCount":0}}"#.to_owned()),
        "ListCommands" => (200, r#"{"Commands":[{"CommandId":"c-3","Status":"Failed","TargetCount":3,"InstanceIds":[]}]}"#.to_owned()),
        "ListCommandInvocations" => (
            200,
            format!(
                r#"{{"CommandInvocations":[{},{},{}]}}"#,
                inv("i-0000000000000000a", "Success", 0),
                inv("i-0000000000000000b", "Success", 0),
                inv("i-0000000000000000c", "Failed", 1)
            ),
        ),
        "GetCommandInvocation" if body.contains("i-0000000000000000a") => (
            200,
            got("i-0000000000000000a", "Success", 0, "forge-step: inspect\nforge-previous-tag: 41\nforge-not-running: (none)\nforge-step: finished\nforge-deployed-tag: 42\n", ""),
        ),
        "GetCommandInvocation" if body.contains("i-0000000000000000b") => (
            200,
            got("i-0000000000000000b", "Success", 0, "forge-step: inspect\nforge-previous-tag: (none)\nforge-not-running: web\nforge-step: finished\nforge-deployed-tag: 41\n", ""),
        ),
        "GetCommandInvocation" => (200, got("i-0000000000000000c", "Failed", 1, "forge-step: inspect\n", never)),
        _ => (400, r#"{"__type":"UnknownOperationException"}"#.to_owned()),
    }
}

/// SSM's answers for an inspect that reached `instance` alone: its script printed `stdout`, or,
/// with None, what [`inspect_fake`] has it print.
fn one_instance(
    op: &str,
    n: usize,
    body: &str,
    instance: &str,
    stdout: Option<&str>,
) -> (u16, String) {
    match (op, stdout) {
        ("ListCommandInvocations", _) => (
            200,
            format!(
                r#"{{"CommandInvocations":[{{"CommandId":"c-3","InstanceId":"{instance}","Status":"Success","StatusDetails":"Success","CommandPlugins":[{{"Name":"aws:runShellScript","ResponseCode":0}}]}}]}}"#
            ),
        ),
        ("ListCommands", _) => (200, r#"{"Commands":[{"CommandId":"c-3","Status":"Success","TargetCount":1,"InstanceIds":[]}]}"#.to_owned()),
        ("GetCommandInvocation", Some(stdout)) => (
            200,
            serde_json::json!({
                "CommandId": "c-3", "InstanceId": instance, "ResponseCode": 0,
                "Status": "Success", "StatusDetails": "Success", "StandardErrorContent": "",
                "StandardOutputContent": stdout
            })
            .to_string(),
        ),
        _ => inspect_fake(op, n, body),
    }
}

/// `forge ec2 status --env dev --service dagster --expect-tag TAG` against `endpoint`.
fn status_expecting(endpoint: &str, tag: &str) -> Output {
    let dir = setup();
    ec2(
        dir.path(),
        endpoint,
        &[
            "status",
            "--env",
            "dev",
            "--service",
            "dagster",
            "--expect-tag",
            tag,
        ],
    )
}

#[test]
fn status_names_each_instance_tag_and_the_ones_that_differ() {
    let endpoint = fake_ssm(inspect_fake);
    let dir = setup();
    let status = |extra: &[&str]| {
        let mut args = vec!["status", "--env", "dev", "--service", "dagster"];
        args.extend_from_slice(extra);
        ec2(dir.path(), &endpoint, &args)
    };

    let out = status(&["--expect-tag", "42"]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    for line in [
        "dagster in dev (tag:forge:dagster-enabled=true, /opt/dagster): 3 instance(s); expected 42\n",
        "  i-0000000000000000a  42  (previous 41)\n",
        "  i-0000000000000000b  41  differs  not running: web\n",
        "  i-0000000000000000c  unreadable: /opt/dagster does not exist on this instance: the service was never deployed here (deploy it, or check the target)\n",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(
        stderr(&out).contains(
            "2 of 3 instance(s) do not run 42 with every service up (--expect-tag; SSM command c-3): i-0000000000000000b runs 41 (web not running), \
             i-0000000000000000c could not be read; put them on it with `forge ec2 rollback --env dev --service dagster --to-tag 42`"
        ),
        "{}",
        stderr(&out)
    );

    let out = status(&["--expect-tag", "42", "--output", "json"]);
    assert_exit(&out, 1);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["drift"], true);
    assert_eq!(json["expected_tag"], "42");
    assert_eq!(json["expected_from"], "--expect-tag");
    let instances = json["instances"].as_array().unwrap();
    assert_eq!(
        instances
            .iter()
            .map(|i| (i["tag"].clone(), i["matches"].clone()))
            .collect::<Vec<_>>(),
        [
            (serde_json::json!("42"), serde_json::json!(true)),
            (serde_json::json!("41"), serde_json::json!(false)),
            (serde_json::Value::Null, serde_json::json!(false)),
        ]
    );
    assert_eq!(instances[1]["previous_tag"], serde_json::Value::Null);
    assert_eq!(instances[0]["not_running"], serde_json::json!([]));
    assert_eq!(instances[1]["not_running"], serde_json::json!(["web"]));

    assert_eq!(
        json["fix"],
        "forge ec2 rollback --env dev --service dagster --to-tag 42"
    );

    // Nothing to compare with (no Ledger in this config): the split itself is the finding.
    let out = status(&[]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains(
            "the instances do not agree (SSM command c-3): 41 on i-0000000000000000b; 42 on i-0000000000000000a; \
             i-0000000000000000b runs 41 (web not running), i-0000000000000000c could not be read; there is no [ledger] in forge.toml to compare with, so pass \
             --expect-tag TAG, and put them on one tag with `forge ec2 rollback --env dev --service dagster --to-tag TAG`"
        ),
        "{}",
        stderr(&out)
    );

    // The fix selects the same instances as the run: explicit targets (each its own flag,
    // quoted where the shell needs it), the directory, and a config file other than the default.
    std::fs::copy(
        dir.path().join("forge.toml"),
        dir.path().join("other config.toml"),
    )
    .unwrap();
    let out = ec2(
        dir.path(),
        &endpoint,
        &[
            "status",
            "--env",
            "dev",
            "--config",
            "other config.toml",
            "--target",
            "i-0000000000000000a",
            "--target",
            "i-0000000000000000b",
            "--service-dir",
            "/opt/dagster",
            "--expect-tag",
            "42",
        ],
    );
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains(
            "put them on it with `forge ec2 rollback --env dev --config 'other config.toml' --target i-0000000000000000a \
             --target i-0000000000000000b --service-dir /opt/dagster --to-tag 42`"
        ),
        "{}",
        stderr(&out)
    );

    // Bad input is refused before anything is sent.
    let out = status(&["--expect-tag", "latest"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("--expect-tag: image tag `latest` is not allowed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_exits_0_when_every_instance_runs_the_expected_tag() {
    let endpoint = fake_ssm(|op, n, body| one_instance(op, n, body, "i-0000000000000000a", None));
    let out = status_expecting(&endpoint, "42");
    assert_success(&out);
    assert!(
        stdout(&out).contains("  i-0000000000000000a  42  (previous 41)\n"),
        "{}",
        stdout(&out)
    );
}

/// `forge ec2 status --expect-tag TAG` against the SSM fake `answer`: exit 1, `stdout_line`
/// among the instance lines and `finding` in the error.
fn check_status_fails(
    answer: fn(&str, usize, &str) -> (u16, String),
    tag: &str,
    stdout_line: &str,
    finding: &str,
) {
    let out = status_expecting(&fake_ssm(answer), tag);
    assert_exit(&out, 1);
    assert!(stdout(&out).contains(stdout_line), "{}", stdout(&out));
    assert!(stderr(&out).contains(finding), "{}", stderr(&out));
}

/// The right tag with a service stopped is not "as expected" either.
#[test]
fn status_flags_a_stopped_service_on_the_expected_tag() {
    check_status_fails(
        |op, n, body| one_instance(op, n, body, "i-0000000000000000b", None),
        "41",
        "  i-0000000000000000b  41  not running: web\n",
        "1 of 1 instance(s) do not run 41 with every service up (--expect-tag; SSM command c-3): i-0000000000000000b runs 41 (web not running)",
    );
}

/// A container of the service's repository created from other bytes than the promoted digest
/// is named, even on the expected tag with every service running.
#[test]
fn status_names_a_container_running_other_bytes() {
    check_status_fails(
        |op, n, body| {
            one_instance(
                op,
                n,
                body,
                "i-0000000000000000a",
                Some(
                    "forge-step: inspect\nforge-previous-tag: 41\nforge-not-running: (none)\nforge-running-other-digest: 3f2a registry.example/web:42 registry.example/web@sha256:bbbb\nforge-running-pinned-checked: 1\nforge-step: finished\nforge-deployed-tag: 42\n",
                ),
            )
        },
        "42",
        "  i-0000000000000000a  42  (previous 41)\n      other bytes: 3f2a registry.example/web:42 registry.example/web@sha256:bbbb\n",
        "i-0000000000000000a runs 42 (container 3f2a runs other bytes than the promoted digest)",
    );
}

/// A digest to check and no running container of the tag to check it on is not a pass.
#[test]
fn status_with_no_container_to_check_the_digest_on_is_not_a_pass() {
    check_status_fails(
        |op, n, body| {
            one_instance(
                op,
                n,
                body,
                "i-0000000000000000a",
                Some(
                    "forge-step: inspect\nforge-previous-tag: 41\nforge-not-running: (none)\nforge-running-pinned-checked: 0\nforge-step: finished\nforge-deployed-tag: 42\n",
                ),
            )
        },
        "42",
        "  i-0000000000000000a  42  (previous 41)  no running container to check the digest\n",
        "i-0000000000000000a runs 42 (no running container of 42 to check the promoted digest against)",
    );
}

/// An instance that never answers (its SSM agent is offline) does not hide the others' tags:
/// at the deadline the answers so far are reported and the silent one is unread.
#[test]
fn status_at_its_deadline_reports_the_answers_so_far() {
    let endpoint = fake_ssm(|op, n, body| {
        match op {
        "ListCommands" => (200, r#"{"Commands":[{"CommandId":"c-3","Status":"InProgress","TargetCount":2,"InstanceIds":[]}]}"#.to_owned()),
        "ListCommandInvocations" => (
            200,
            r#"{"CommandInvocations":[
                {"CommandId":"c-3","InstanceId":"i-0000000000000000a","Status":"Success","StatusDetails":"Success","CommandPlugins":[{"Name":"aws:runShellScript","ResponseCode":0}]},
                {"CommandId":"c-3","InstanceId":"i-0000000000000000b","Status":"Pending","StatusDetails":"Pending","CommandPlugins":[]}
            ]}"#.to_owned(),
        ),
        "GetCommandInvocation" if body.contains("i-0000000000000000b") => (
            200,
            r#"{"CommandId":"c-3","InstanceId":"i-0000000000000000b","ResponseCode":-1,"Status":"Pending","StatusDetails":"Pending","StandardOutputContent":"","StandardErrorContent":""}"#.to_owned(),
        ),
        "CancelCommand" => (200, "{}".to_owned()),
        _ => inspect_fake(op, n, body),
    }
    });
    let dir = setup();
    let out = ec2(
        dir.path(),
        &endpoint,
        &[
            "status",
            "--env",
            "dev",
            "--service",
            "dagster",
            "--expect-tag",
            "42",
            "--deadline",
            "3",
        ],
    );
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("  i-0000000000000000a  42  (previous 41)\n"),
        "{text}"
    );
    assert!(
        text.contains("  i-0000000000000000b  unreadable: no answer before the deadline (SSM status Pending); check that its SSM agent is online\n"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("1 of 2 instance(s) do not run 42 with every service up (--expect-tag; SSM command c-3) (the deadline passed before every instance answered): i-0000000000000000b could not be read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn refresh_env_binary_against_moto() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    moto.python(
        r#"
import boto3, os
ssm = boto3.client("ssm", endpoint_url=os.environ["ENDPOINT"])
ssm.put_parameter(Name="/forge/dagster/db/password", Value="hunter2 'quoted' $x", Type="SecureString")
ssm.put_parameter(Name="/forge/dagster/db/host", Value="db.internal", Type="String")
"#,
    );
    let dir = setup();
    let env_file = dir.path().join(".env");
    std::fs::write(&env_file, "IMAGE_TAG=41\n").unwrap();
    let file = env_file.to_str().unwrap();
    let endpoint = moto.endpoint();

    let out = refresh_env(
        dir.path(),
        &endpoint,
        &[
            "--path",
            "/forge/dagster",
            "--file",
            file,
            "--region",
            "eu-west-1",
            "--dry-run",
        ],
    );
    assert_success(&out);
    assert!(
        stdout(&out).contains("would write 2 variable(s)")
            && stdout(&out).contains("  DB_PASSWORD\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        "IMAGE_TAG=41\n"
    );

    let out = refresh_env(
        dir.path(),
        &endpoint,
        &[
            "--path",
            "/forge/dagster",
            "--file",
            file,
            "--region",
            "eu-west-1",
        ],
    );
    assert_success(&out);
    for stream in [stdout(&out), stderr(&out)] {
        assert!(
            !stream.contains("hunter2"),
            "a secret was printed: {stream}"
        );
    }
    let written = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(
        written
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        [
            "DB_HOST='db.internal'",
            "DB_PASSWORD=\"hunter2 'quoted' $$x\"",
            "IMAGE_TAG=41"
        ]
    );
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = refresh_env(
        dir.path(),
        &endpoint,
        &[
            "--path",
            "forge/dagster",
            "--file",
            file,
            "--region",
            "eu-west-1",
        ],
    );
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("must start with `/`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), written);
}
