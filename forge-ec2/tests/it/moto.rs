//! Against moto (server mode on loopback): instances created with tags by a boto3 fixture
//! (forge itself never creates instances), deploys that must reach exactly the tagged ones, and
//! Parameter Store reads with SecureString values, nested paths and more than one page.
//!
//! moto answers every invocation with Success and empty output and answers
//! ListCommandInvocations with 500, so these deploys also exercise the GetCommandInvocation
//! fallback. A send with only InstanceIds makes moto target every instance, so no test here
//! relies on instance-id targets (the fake SSM in `fake_ssm.rs` covers those).

use std::collections::BTreeMap;
use std::time::Duration;

use forge_ec2::env_file::{self, EnvFileError, RefreshOptions};
use forge_ec2::{DeployRequest, Ec2Deployer, Ec2Error, PollConfig, Targets};

use crate::fake_ssm::sdk_config;

fn deployer(config: &aws_config::SdkConfig) -> Ec2Deployer {
    Ec2Deployer::new(config).with_poll(PollConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        max_consecutive_errors: 3,
    })
}

#[tokio::test]
async fn deploy_reaches_exactly_the_tagged_instances() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    let out = moto.python(
        r#"
import boto3, json, os
ec2 = boto3.client("ec2", endpoint_url=os.environ["ENDPOINT"])
ids = {}
for name, enabled in [("a", "true"), ("b", "true"), ("c", "false"), ("d", None)]:
    spec = {"ImageId": "ami-12c6146b", "MinCount": 1, "MaxCount": 1}
    if enabled is not None:
        spec["TagSpecifications"] = [{"ResourceType": "instance",
                                      "Tags": [{"Key": "forge:dagster-enabled", "Value": enabled}]}]
    ids[name] = ec2.run_instances(**spec)["Instances"][0]["InstanceId"]
print(json.dumps(ids))
"#,
    );
    let ids: BTreeMap<String, String> = serde_json::from_str(out.trim()).unwrap();
    let config = sdk_config(&moto.endpoint()).await;
    let mut req = DeployRequest::new(
        Targets::parse("tag:forge:dagster-enabled=true").unwrap(),
        b"services:\n  web:\n    image: web:${IMAGE_TAG}\n".to_vec(),
        "20261126.1",
        "/opt/dagster",
    );
    req.deadline = Duration::from_secs(30);
    let report = deployer(&config).deploy(&req).await.unwrap();
    let mut want = vec![ids["a"].clone(), ids["b"].clone()];
    want.sort();
    let got: Vec<String> = report
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    assert_eq!(got, want, "only the instances tagged true");
    assert!(report.succeeded);
    assert_eq!(report.target_count, 2);
    assert_eq!(report.listing, "GetCommandInvocation");
    assert!(
        report
            .instances
            .iter()
            .all(|i| i.status == "Success" && i.exit_code == 0)
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["instances"].as_array().unwrap().len(), 2);
    assert_eq!(json["instances"][0]["status"], "Success");

    req.targets = Targets::parse("tag:forge:dagster-enabled=maybe").unwrap();
    let err = deployer(&config).deploy(&req).await.unwrap_err();
    assert!(matches!(err, Ec2Error::NoTargets { .. }), "{err:?}");
}

#[tokio::test]
async fn refresh_env_reads_every_page_decrypts_and_keeps_image_tag() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    moto.python(
        r#"
import boto3, os
ssm = boto3.client("ssm", endpoint_url=os.environ["ENDPOINT"])
for i in range(12):
    ssm.put_parameter(Name=f"/forge/dagster/plain/p{i:02}", Value=f"value-{i}", Type="String")
ssm.put_parameter(Name="/forge/dagster/db/password", Value="p@ss'w$rd \"x\"\nline2 #not-a-comment\\ end", Type="SecureString")
ssm.put_parameter(Name="/forge/dagster/api-key", Value="k$HOME", Type="SecureString")
ssm.put_parameter(Name="/forge/other/secret", Value="must not appear", Type="SecureString")
ssm.put_parameter(Name="/forge/dagsterx/secret", Value="must not appear", Type="String")
"#,
    );
    let config = sdk_config(&moto.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(".env");
    std::fs::write(&file, "OLD=1\nIMAGE_TAG=41\n").unwrap();

    // Dry run: names only, file untouched.
    let mut options = RefreshOptions {
        path: "/forge/dagster".to_owned(),
        file: file.clone(),
        image_tag: None,
        dry_run: true,
    };
    let report = env_file::refresh(&config, &options).await.unwrap();
    assert!(!report.written);
    assert_eq!(report.names.len(), 14);
    assert!(report.pages >= 2, "moto pages at 10: {}", report.pages);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "OLD=1\nIMAGE_TAG=41\n"
    );
    assert!(
        !format!("{report:?}").contains("p@ss"),
        "reports carry names only"
    );

    options.dry_run = false;
    let report = env_file::refresh(&config, &options).await.unwrap();
    assert!(report.written);
    assert_eq!(report.image_tag.as_deref(), Some("41"));
    let entries: BTreeMap<String, String> =
        env_file::parse(&std::fs::read_to_string(&file).unwrap())
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(entries.len(), 15, "{entries:#?}");
    assert_eq!(
        entries["DB_PASSWORD"],
        "p@ss'w$rd \"x\"\nline2 #not-a-comment\\ end"
    );
    assert_eq!(entries["API_KEY"], "k$HOME");
    assert_eq!(entries["PLAIN_P11"], "value-11");
    assert_eq!(entries["IMAGE_TAG"], "41", "IMAGE_TAG is kept");
    assert!(
        !entries.contains_key("OLD"),
        "the file is rebuilt from Parameter Store"
    );
    assert!(!entries.values().any(|v| v == "must not appear"));

    // An explicit tag replaces the kept one.
    options.image_tag = Some("42".to_owned());
    env_file::refresh(&config, &options).await.unwrap();
    assert_eq!(
        env_file::current_image_tag(&file).unwrap().as_deref(),
        Some("42")
    );

    // A collision is refused and the old file stays exactly as it was.
    let before = std::fs::read_to_string(&file).unwrap();
    moto.python(
        r#"
import boto3, os
boto3.client("ssm", endpoint_url=os.environ["ENDPOINT"]).put_parameter(
    Name="/forge/dagster/db-password", Value="other", Type="SecureString")
"#,
    );
    let err = env_file::refresh(&config, &options).await.unwrap_err();
    assert!(matches!(err, EnvFileError::Collision { .. }), "{err:?}");
    assert!(
        !err.to_string().contains("p@ss"),
        "errors never carry values: {err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    // A path with nothing under it is refused rather than emptying .env.
    options.path = "/forge/nothing".to_owned();
    let err = env_file::refresh(&config, &options).await.unwrap_err();
    assert!(matches!(err, EnvFileError::Empty { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
}
