//! `forge promote / rollback / status / audit` end to end: two real `docker-registry`
//! instances (Dev on one; QA and Prod on the other, so QA -> Prod mounts across repositories),
//! a file:// Ledger, skopeo as the oracle for what the registries hold.

use std::path::Path;

use forge_testkit::{BareRemote, Registry, git, oci, skopeo, skopeo_run, skopeo_try};
use serde_json::Value;

use crate::support::{assert_exit, assert_success, forge_in, stderr, stdout};

const BUILDS: &[&str] = &["1001", "1002"];

/// Argo CD Application for `service` in `env`, tag in a helm parameter.
fn application(service: &str, env: &str) -> String {
    format!(
        "# {service} in {env}\napiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {service}-{env}\nspec:\n  source:\n    repoURL: https://example.invalid/charts.git\n    path: charts/{service}\n    helm:\n      parameters:\n        - name: image.tag\n          value: \"1000\"  # build id\n  destination:\n    namespace: {service}\n"
    )
}

struct Stage {
    dir: tempfile::TempDir,
    dev: Registry,
    shared: Registry,
    ledger: BareRemote,
    digests: Vec<String>,
}

impl Stage {
    /// `services`: (name, repository, provisioned in QA/Prod?)
    fn start(services: &[(&str, &str, bool)]) -> Option<Stage> {
        skopeo()?;
        let dev = Registry::start()?;
        let shared = Registry::start()?;
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let digests: Vec<String> = BUILDS
            .iter()
            .map(|b| oci::write_image(&layout, b).unwrap())
            .collect();
        let provision = dir.path().join("provision");
        oci::write_image(&provision, "0").unwrap();
        for (_, repository, provisioned) in services {
            for build in BUILDS {
                push(
                    &layout,
                    build,
                    &format!("{}/{repository}:{build}", dev.host()),
                );
            }
            if *provisioned {
                // The Platform team provisions repositories; a push is how Distribution makes one.
                push(
                    &provision,
                    "0",
                    &format!("{}/{repository}:provisioned", shared.host()),
                );
                push(
                    &provision,
                    "0",
                    &format!("{}/prod/{repository}:provisioned", shared.host()),
                );
            }
        }
        let files: Vec<(String, String)> = services
            .iter()
            .flat_map(|(name, _, _)| {
                ["dev", "qa", "prod"]
                    .map(|env| (format!("apps/{env}/{name}.yaml"), application(name, env)))
            })
            .collect();
        let file_refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        let ledger = BareRemote::seeded(&file_refs);
        let mut config = format!(
            "[ledger]\nrepo = \"{}\"\nbranch = \"main\"\npath = \"apps/{{env}}/{{service}}.yaml\"\n\n[auth]\ntoken = \"none\"\n\n\
             [policy]\ntag_pattern = \"^[0-9]+$\"\nsupport = \"#platform-support\"\n\n\
             [environments.dev]\nregistry = \"{}\"\n\n[environments.qa]\nfrom = \"dev\"\nregistry = \"{}\"\napproval = \"optional\"\n\n\
             [environments.prod]\nfrom = \"qa\"\nregistry = \"{}/prod\"\napproval = \"required\"\nsync = \"manual\"\n",
            ledger.url(),
            dev.host(),
            shared.host(),
            shared.host()
        );
        for (name, repository, _) in services {
            config.push_str(&format!(
                "\n[services.{name}]\nrepository = \"{repository}\"\n"
            ));
        }
        std::fs::write(dir.path().join("forge.toml"), config).unwrap();
        Some(Stage {
            dir,
            dev,
            shared,
            ledger,
            digests,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn forge(&self, args: &[&str]) -> std::process::Output {
        forge_in(self.path(), args)
    }

    fn promote(&self, service: &str, to: &str, extra: &[&str]) -> Value {
        let mut args = vec![
            "promote",
            "--service",
            service,
            "--to",
            to,
            "--output",
            "json",
            "--requested-by",
            "alice@example.com",
        ];
        args.extend_from_slice(extra);
        let out = self.forge(&args);
        assert_success(&out);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("promote JSON: {e}\n{}", stdout(&out)))
    }

    /// What the registry serves for `reference`, per skopeo (the oracle), as a digest.
    fn oracle_digest(&self, reference: &str) -> Option<String> {
        let out = skopeo_try(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ]);
        out.status.success().then(|| oci::sha256(&out.stdout))
    }

    fn ledger_tag(&self, env: &str, service: &str) -> String {
        let text = self.ledger.read(&format!("apps/{env}/{service}.yaml"));
        let line = text.lines().find(|l| l.contains("value:")).unwrap();
        line.split('"').nth(1).unwrap().to_owned()
    }
}

fn push(layout: &Path, tag: &str, destination: &str) {
    skopeo_run(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{destination}"),
    ]);
}

#[test]
fn promote_dev_qa_prod_proves_the_digest_and_records_trailers() {
    let Some(stage) = Stage::start(&[("payments", "payments/api", true)]) else {
        return;
    };
    let dev = stage.promote("payments", "dev", &["--tag", "1001"]);
    assert_eq!(dev["destination"]["digest"], stage.digests[0].as_str());
    assert_eq!(dev["ledger"]["old"], "1000");

    let qa = stage.promote("payments", "qa", &[]);
    assert_eq!(
        qa["build_id"], "1001",
        "the tag comes from Dev's Ledger entry"
    );
    assert_eq!(qa["verification"]["verified"], true);
    assert!(
        qa["verification"]["blobs_copied"].as_u64().unwrap() >= 2,
        "{qa}"
    );

    let evidence = stage.path().join("evidence.json");
    let prod = stage.promote(
        "payments",
        "prod",
        &[
            "--approved-by",
            "bob@example.com",
            "--evidence",
            evidence.to_str().unwrap(),
        ],
    );
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(&evidence).unwrap()).unwrap();
    assert_eq!(recorded, prod, "the evidence file is the JSON result");
    for key in [
        "build_id",
        "source",
        "destination",
        "verification",
        "ledger",
        "requested_by",
        "approved_by",
        "started_at",
        "finished_at",
    ] {
        assert!(!prod[key].is_null(), "evidence lacks {key}: {prod}");
    }

    // skopeo, not forge, says what each registry holds: the digest CI built, everywhere.
    let dev_host = stage.dev.host();
    let shared = stage.shared.host();
    for reference in [
        format!("{dev_host}/payments/api:1001"),
        format!("{shared}/payments/api:1001"),
        format!("{shared}/prod/payments/api:1001"),
    ] {
        assert_eq!(
            stage.oracle_digest(&reference).as_deref(),
            Some(stage.digests[0].as_str()),
            "{reference}"
        );
    }
    for env in ["dev", "qa", "prod"] {
        assert_eq!(stage.ledger_tag(env, "payments"), "1001", "{env}");
    }
    let message = git(&stage.ledger.path(), &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.starts_with("payments prod: 1000 -> 1001"),
        "{message}"
    );
    for trailer in [
        format!("Forge-Digest: {}", stage.digests[0]),
        "Forge-Build-Id: 1001".to_owned(),
        "Forge-Requested-By: alice@example.com".to_owned(),
        "Forge-Approved-By: bob@example.com".to_owned(),
        "Forge-Action: promote".to_owned(),
    ] {
        assert!(
            message.contains(&trailer),
            "missing `{trailer}` in:\n{message}"
        );
    }

    // Promoting again is a no-op: nothing uploaded, no Ledger commit.
    let commits = stage.ledger.log().len();
    let again = stage.promote("payments", "prod", &["--approved-by", "bob@example.com"]);
    assert_eq!(again["verification"]["already_present"], true);
    assert_eq!(again["verification"]["referrers_copied"], 0);
    assert!(again["ledger"]["commit"].is_null());
    assert_eq!(stage.ledger.log().len(), commits);

    let status = stage.forge(&["status", "--service", "payments", "--output", "json"]);
    assert_success(&status);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["drift"], false, "{status}");
    for env in status["environments"].as_array().unwrap() {
        assert_eq!(env["digest"], stage.digests[0].as_str(), "{env}");
        assert_eq!(env["recorded_digest"], stage.digests[0].as_str(), "{env}");
    }

    let audit = stage.forge(&["audit", "--service", "payments", "--output", "json"]);
    assert_success(&audit);
    let audit: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let events = audit["events"].as_array().unwrap();
    let promotions = events.iter().filter(|e| e["action"] == "promote").count();
    assert_eq!(promotions, 3, "{audit}");
}

#[test]
fn self_approval_and_latest_are_refused_with_nothing_written() {
    let Some(stage) = Stage::start(&[("payments", "payments/api", true)]) else {
        return;
    };
    stage.promote("payments", "dev", &["--tag", "1001"]);
    stage.promote("payments", "qa", &[]);
    let before = stage.ledger.log();

    let promote = ["promote", "--service", "payments"];
    for (args, expected) in [
        (
            &[
                "--to",
                "prod",
                "--requested-by",
                "alice@example.com",
                "--approved-by",
                "Alice@Example.COM",
            ][..],
            "self-approval refused",
        ),
        (
            &["--to", "prod", "--requested-by", "alice@example.com"][..],
            "requires an approval",
        ),
        (&["--to", "dev", "--tag", "latest"][..], "`latest` refused"),
        (
            &["--to", "dev", "--tag", "abc"][..],
            "does not match policy.tag_pattern",
        ),
    ] {
        let out = stage.forge(&[&promote[..], args].concat());
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // A dry run passes policy, resolves the source and shows the change, and writes nothing.
    let out = stage.forge(&[
        "promote",
        "--service",
        "payments",
        "--to",
        "prod",
        "--requested-by",
        "alice@example.com",
        "--approved-by",
        "bob@example.com",
        "--dry-run",
    ]);
    assert_success(&out);
    let plan = stdout(&out);
    assert!(
        plan.contains("dry run: would promote payments 1001 to prod"),
        "{plan}"
    );
    assert!(
        plan.contains(&stage.digests[0]) && plan.contains("nothing was copied or written"),
        "{plan}"
    );

    assert_eq!(stage.ledger.log(), before, "no Ledger commit");
    let prod = format!("{}/prod/payments/api:1001", stage.shared.host());
    assert_eq!(stage.oracle_digest(&prod), None, "no tag pushed to Prod");
}

#[test]
fn config_check_lists_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../forge.example.toml");
    let out = forge_in(dir.path(), &["config", "check", "--config", example]);
    assert_success(&out);
    assert!(
        stdout(&out)
            .contains("valid (3 environments: dev, prod, qa; 2 services: dagster, payments)"),
        "{}",
        stdout(&out)
    );

    std::fs::write(
        dir.path().join("forge.toml"),
        "[policy]\ntag_pattern = \"[\"\n[environments.qa]\nfrom = \"dev\"\nrole = \"arn:aws:iam::1:role/x\"\n",
    )
    .unwrap();
    let out = forge_in(dir.path(), &["config", "check"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    for expected in [
        "3 problem(s)",
        "policy.tag_pattern",
        "environments.qa.role",
        "environments.qa.from: unknown environment `dev`",
    ] {
        assert!(err.contains(expected), "missing {expected}: {err}");
    }
    let out = forge_in(dir.path(), &["config", "check", "--config", "missing.toml"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("missing.toml does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_qa_repository_is_refused_with_the_support_channel() {
    let Some(stage) = Stage::start(&[("billing", "billing/api", false)]) else {
        return;
    };
    stage.promote("billing", "dev", &["--tag", "1001"]);
    let before = stage.ledger.log();
    let repositories = stage.shared.repositories();

    let out = stage.forge(&["promote", "--service", "billing", "--to", "qa"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("billing/api") && err.contains(&stage.shared.host()),
        "{err}"
    );
    assert!(
        err.contains("#platform-support") && err.contains("Blueprint"),
        "{err}"
    );
    assert_eq!(
        stage.shared.repositories(),
        repositories,
        "no repository created"
    );
    assert_eq!(stage.ledger.log(), before, "no Ledger commit");
}

#[test]
fn concurrent_promotions_of_different_services_all_land() {
    let services = [
        ("alpha", "team/alpha", true),
        ("beta", "team/beta", true),
        ("gamma", "team/gamma", true),
        ("delta", "team/delta", true),
    ];
    let Some(stage) = Stage::start(&services) else {
        return;
    };
    let children: Vec<_> = services
        .iter()
        .map(|(name, _, _)| {
            crate::support::forge()
                .args([
                    "promote",
                    "--service",
                    name,
                    "--to",
                    "dev",
                    "--tag",
                    "1002",
                    "--requested-by",
                    "ci",
                ])
                .current_dir(stage.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        assert_success(&child.wait_with_output().unwrap());
    }
    for (name, _, _) in &services {
        assert_eq!(stage.ledger_tag("dev", name), "1002", "{name}");
    }
    let log = stage.ledger.log();
    for (name, _, _) in &services {
        assert_eq!(
            log.iter()
                .filter(|s| s.starts_with(&format!("{name} dev:")))
                .count(),
            1,
            "{log:?}"
        );
    }
}

/// Commits `contents` to `file` on the Ledger's main by hand (as a person would, no Forge
/// trailers); returns what the file held before.
fn hand_commit(ledger: &BareRemote, file: &str, contents: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let clone = work.path().join("c");
    git(
        work.path(),
        &["clone", "--quiet", &ledger.url(), clone.to_str().unwrap()],
    );
    let before = std::fs::read_to_string(clone.join(file)).unwrap();
    std::fs::write(clone.join(file), contents).unwrap();
    git(
        &clone,
        &[
            "-c",
            "user.name=Hand",
            "-c",
            "user.email=hand@example.com",
            "commit",
            "--quiet",
            "-am",
            "by hand",
        ],
    );
    git(&clone, &["push", "--quiet", "origin", "main"]);
    before
}

#[test]
fn rollback_restores_the_previous_tag_and_its_digest() {
    let Some(stage) = Stage::start(&[("payments", "payments/api", true)]) else {
        return;
    };
    for build in BUILDS {
        stage.promote("payments", "dev", &["--tag", build]);
        stage.promote("payments", "qa", &[]);
        stage.promote("payments", "prod", &["--approved-by", "bob@example.com"]);
    }
    assert_eq!(stage.ledger_tag("prod", "payments"), "1002");
    let rollback = [
        "rollback",
        "--service",
        "payments",
        "--env",
        "prod",
        "--requested-by",
        "oncall",
        "--output",
        "json",
    ];

    // Someone anchors Prod's value by hand (same tag): the patcher will not write an
    // anchored scalar, so even the dry run refuses, before anything is deployed or written.
    let prod_file = "apps/prod/payments.yaml";
    let anchored = stage
        .ledger
        .read(prod_file)
        .replace("value: \"1002\"", "value: &tag \"1002\"");
    let edit = hand_commit(&stage.ledger, prod_file, &anchored);
    let commits = stage.ledger.log().len();
    let mut dry = rollback.to_vec();
    dry.push("--dry-run");
    let out = stage.forge(&dry);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("the Ledger would refuse the rollback of payments in prod to 1001")
            && err.contains("edit this value by hand"),
        "{err}"
    );
    assert_eq!(stage.ledger.log().len(), commits, "no Ledger commit");
    hand_commit(&stage.ledger, prod_file, &edit);

    let out = stage.forge(&rollback);
    assert_success(&out);
    let evidence: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(evidence["build_id"], "1001");
    assert_eq!(evidence["destination"]["digest"], stage.digests[0].as_str());
    assert_eq!(stage.ledger_tag("prod", "payments"), "1001");
    let subject = &stage.ledger.log()[0];
    assert_eq!(subject, "payments prod: 1002 -> 1001");
    // History was not rewritten: the 1002 promotion is still there.
    assert!(
        stage
            .ledger
            .log()
            .iter()
            .any(|s| s == "payments prod: 1001 -> 1002")
    );
    // Prod running 1001 while QA runs 1002 is not drift: different tags.
    let status = stage.forge(&["status", "--service", "payments", "--output", "json"]);
    assert_success(&status);

    // The same rollback job run again (a retry after a late failure) must not bring 1002
    // back: after a rollback, the default target is refused and --to is required.
    let again = stage.forge(&[
        "rollback",
        "--service",
        "payments",
        "--env",
        "prod",
        "--requested-by",
        "oncall",
    ]);
    assert_exit(&again, 2);
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(
        message.contains("itself a rollback") && message.contains("--to"),
        "{message}"
    );
    assert_eq!(stage.ledger_tag("prod", "payments"), "1001");
    let named = stage.forge(&[
        "rollback",
        "--service",
        "payments",
        "--env",
        "prod",
        "--to",
        "1002",
        "--requested-by",
        "oncall",
    ]);
    assert_success(&named);
    assert_eq!(stage.ledger_tag("prod", "payments"), "1002");
}

#[test]
fn rollback_refuses_a_tag_whose_digest_changed() {
    let Some(stage) = Stage::start(&[("payments", "payments/api", true)]) else {
        return;
    };
    for build in BUILDS {
        stage.promote("payments", "dev", &["--tag", build]);
    }
    // Someone overwrote 1001 in Dev with other bytes: the rollback target is no longer the image that ran.
    let other = stage.path().join("other");
    oci::write_image(&other, "1001-rebuilt").unwrap();
    push(
        &other,
        "1001-rebuilt",
        &format!("{}/payments/api:1001", stage.dev.host()),
    );
    let before = stage.ledger.log();
    let out = stage.forge(&[
        "rollback",
        "--service",
        "payments",
        "--env",
        "dev",
        "--requested-by",
        "oncall",
    ]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("was recorded when it was promoted"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stage.ledger.log(), before);
}

/// An unsigned, well-formed JWT (moto does not verify tokens).
const JWT: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL3Rva2VuLmFjdGlvbnMuZ2l0aHVidXNlcmNvbnRlbnQuY29tIiwic3ViIjoicmVwbzpwbGF0Zm9ybS9wYXltZW50czpyZWY6cmVmcy9oZWFkcy9tYWluIiwiYXVkIjoic3RzLmFtYXpvbmF3cy5jb20ifQ.c2lnbmF0dXJl";

#[test]
fn an_ec2_service_is_promoted_through_the_role_chain_and_ssm() {
    let Some(moto) = forge_testkit::Moto::start() else {
        return;
    };
    let Some(stage) = Stage::start(&[("dagster", "data/dagster", true)]) else {
        return;
    };
    let ids: std::collections::HashMap<String, Vec<String>> = serde_json::from_str(
        moto.python(
            r#"
import boto3, json, os
# moto keeps resources per account: create the instances in each environment's account, as
# the role chain's credentials land there.
sts = boto3.client("sts", endpoint_url=os.environ["ENDPOINT"])
ids = {}
for env, account in [("dev", "111111111111"), ("qa", "222222222222")]:
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/fixture", RoleSessionName="fixture")["Credentials"]
    ec2 = boto3.client("ec2", endpoint_url=os.environ["ENDPOINT"], aws_access_key_id=creds["AccessKeyId"],
                       aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    ids[env] = []
    for enabled in ["true", "true", "false"]:
        r = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "forge:dagster-enabled", "Value": enabled}]}])
        ids[env].append(r["Instances"][0]["InstanceId"])
print(json.dumps(ids))
"#,
        )
        .trim(),
    )
    .unwrap();

    // The stage's config, now with the OIDC role chain and an EC2 service.
    let dir = stage.path();
    std::fs::write(dir.join("token.jwt"), JWT).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        "services:\n  dagster:\n    image: ${REGISTRY}/data/dagster:${IMAGE_TAG}\n",
    )
    .unwrap();
    let config = std::fs::read_to_string(dir.join("forge.toml")).unwrap();
    let config = config
        .replace(
            "[auth]\ntoken = \"none\"\n",
            &format!(
                "[auth]\nhub_role = \"arn:aws:iam::999999999999:role/ConveyorHub\"\ntoken = \"file:{}\"\nregion = \"eu-west-1\"\n",
                dir.join("token.jwt").display()
            ),
        )
        .replace("[environments.dev]\n", "[environments.dev]\nrole = \"arn:aws:iam::111111111111:role/ConveyorDeployRole-dev\"\n")
        .replace("[environments.qa]\n", "[environments.qa]\nrole = \"arn:aws:iam::222222222222:role/ConveyorDeployRole-qa\"\n")
        .replace(
            "[services.dagster]\n",
            "[services.dagster]\nkind = \"ec2\"\ntarget = \"tag:forge:dagster-enabled=true\"\nservice_dir = \"/opt/dagster\"\ncompose = \"docker-compose.yml\"\n",
        );
    std::fs::write(dir.join("forge.toml"), config).unwrap();

    let forge = |args: &[&str]| {
        let mut cmd = crate::support::forge();
        crate::support::isolate_aws(&mut cmd, dir, &moto.endpoint());
        cmd.args(args)
            .args(["--requested-by", "alice", "--output", "json"])
            .current_dir(dir);
        let out = cmd.output().unwrap();
        assert_success(&out);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let promote = |to: &str, extra: &[&str]| {
        let mut args = vec!["promote", "--service", "dagster", "--to", to];
        args.extend_from_slice(extra);
        forge(&args)
    };
    promote("dev", &["--tag", "1001"]);
    let qa = promote("qa", &[]);

    assert_eq!(qa["destination"]["digest"], stage.digests[0].as_str());
    let mut deployed: Vec<String> = qa["ec2"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["status"], "Success", "{i}");
            i["instance_id"].as_str().unwrap().to_owned()
        })
        .collect();
    deployed.sort();
    let mut tagged = ids["qa"][..2].to_vec();
    tagged.sort();
    assert_eq!(deployed, tagged, "exactly the tagged instances");
    assert_eq!(
        stage.ledger_tag("qa", "dagster"),
        "1001",
        "recorded after the deploy succeeded"
    );
    // The instances were told which bytes the tag must be: the digest proven in QA's registry.
    let last_qa_command = r#"
import boto3, os
sts = boto3.client("sts", endpoint_url=os.environ["ENDPOINT"])
creds = sts.assume_role(RoleArn="arn:aws:iam::222222222222:role/fixture", RoleSessionName="fixture")["Credentials"]
ssm = boto3.client("ssm", endpoint_url=os.environ["ENDPOINT"], region_name="eu-west-1", aws_access_key_id=creds["AccessKeyId"],
                   aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
print("\n".join(ssm.list_commands()["Commands"][-1]["Parameters"]["commands"]))
"#;
    let script = moto.python(last_qa_command);
    let pin = format!(
        "IMAGE_PIN_WANTED='{}/data/dagster@{}'",
        stage.shared.host(),
        stage.digests[0]
    );
    assert!(
        script.contains(&pin),
        "no `{pin}` in the sent script:\n{script}"
    );
    assert!(
        script.contains("step check-not-older"),
        "a promotion never moves an instance backwards"
    );

    // A rollback goes back on purpose: its script pins the recorded digest and leaves the
    // backwards check out (moto runs no script, so what was sent is what is checked).
    promote("dev", &["--tag", "1002"]);
    promote("qa", &[]);
    forge(&["rollback", "--service", "dagster", "--env", "qa"]);
    assert_eq!(stage.ledger_tag("qa", "dagster"), "1001");
    let script = moto.python(last_qa_command);
    assert!(script.contains(&pin), "{script}");
    assert!(script.contains("IMAGE_TAG_WANTED='1001'"), "{script}");
    assert!(!script.contains("step check-not-older"), "{script}");

    // `forge ec2 status` asks the same instances, read-only, to show the tag and to check the
    // running containers against the digest the Ledger recorded for 1001. moto runs no
    // script (its answers carry no tag line, so every instance is unread and the exit is 1):
    // what was sent is what is checked.
    let mut cmd = crate::support::forge();
    crate::support::isolate_aws(&mut cmd, dir, &moto.endpoint());
    let out = cmd
        .args([
            "ec2",
            "status",
            "--env",
            "qa",
            "--service",
            "dagster",
            "--output",
            "json",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["expected_tag"], "1001", "{status}");
    assert_eq!(
        status["expected_digest"],
        stage.digests[0].as_str(),
        "{status}"
    );
    assert_eq!(status["instances"].as_array().unwrap().len(), 2, "{status}");
    let fix = status["fix"].as_str().unwrap();
    assert!(
        fix.ends_with(&format!(
            "--to-tag 1001 --image-pin {}/data/dagster@{}",
            stage.shared.host(),
            stage.digests[0]
        )),
        "{fix}"
    );
    let script = moto.python(last_qa_command);
    assert!(script.contains("(mode: inspect)"), "{script}");
    assert!(script.contains(&pin), "{script}");
}

#[test]
fn pipelines_get_error_annotations_and_output_variables() {
    let Some(stage) = Stage::start(&[("payments", "payments/api", true)]) else {
        return;
    };
    // Azure DevOps: a refusal is a logissue line; results are output variables on stdout.
    let azure = |args: &[&str]| {
        crate::support::forge()
            .args(args)
            .current_dir(stage.path())
            .env("TF_BUILD", "True")
            .output()
            .unwrap()
    };
    let out = azure(&[
        "promote",
        "--service",
        "payments",
        "--to",
        "dev",
        "--tag",
        "latest",
    ]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).starts_with("##vso[task.logissue type=error]tag `latest` refused"),
        "{}",
        stderr(&out)
    );
    let out = azure(&[
        "promote",
        "--service",
        "payments",
        "--to",
        "dev",
        "--tag",
        "1001",
        "--requested-by",
        "ci",
    ]);
    assert_success(&out);
    // Logging commands on stderr (the agent reads both streams); stdout is the result alone.
    let text = stderr(&out);
    assert!(!stdout(&out).contains("##vso"), "{}", stdout(&out));
    let digest = &stage.digests[0];
    assert!(
        text.contains(&format!(
            "##vso[task.setvariable variable=FORGE_DIGEST;isOutput=true]{digest}\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("##vso[task.setvariable variable=FORGE_TAG;isOutput=true]1001\n"),
        "{text}"
    );

    // GitHub Actions: ::error:: and $GITHUB_OUTPUT.
    let outputs = stage.path().join("github-output");
    let github = |args: &[&str]| {
        crate::support::forge()
            .args(args)
            .current_dir(stage.path())
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_OUTPUT", &outputs)
            .output()
            .unwrap()
    };
    let out = github(&[
        "promote",
        "--service",
        "payments",
        "--to",
        "prod",
        "--requested-by",
        "a",
        "--approved-by",
        "A",
    ]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).starts_with("::error::self-approval refused"),
        "{}",
        stderr(&out)
    );
    let out = github(&[
        "promote",
        "--service",
        "payments",
        "--to",
        "qa",
        "--requested-by",
        "ci",
    ]);
    assert_success(&out);
    let written = std::fs::read_to_string(&outputs).unwrap();
    assert!(
        written.contains(&format!("FORGE_DIGEST={digest}\n"))
            && written.contains("FORGE_TAG=1001\n"),
        "{written}"
    );
}

#[test]
fn a_digest_pinned_entry_gets_the_proven_digest() {
    let Some(stage) = Stage::start(&[("payments", "payments/api", true)]) else {
        return;
    };
    // QA's Application pins its image by digest (kustomize `name:tag@sha256:…`), edited by hand.
    let pinned = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: payments-qa\nspec:\n  source:\n    kustomize:\n      images:\n        - registry.example.invalid/payments/api:1000@sha256:{}\n",
        "0".repeat(64)
    );
    let scratch = tempfile::tempdir().unwrap();
    git(
        scratch.path(),
        &["clone", "--quiet", &stage.ledger.url(), "c"],
    );
    let clone = scratch.path().join("c");
    std::fs::write(clone.join("apps/qa/payments.yaml"), pinned).unwrap();
    git(&clone, &["commit", "--quiet", "-am", "qa pins by digest"]);
    git(&clone, &["push", "--quiet", "origin", "main"]);

    stage.promote("payments", "dev", &["--tag", "1001"]);
    let qa = stage.promote("payments", "qa", &[]);
    let digest = &stage.digests[0];
    assert_eq!(qa["ledger"]["new"], format!("1001@{digest}"));
    let text = stage.ledger.read("apps/qa/payments.yaml");
    assert!(
        text.contains(&format!(
            "registry.example.invalid/payments/api:1001@{digest}"
        )),
        "{text}"
    );

    // A pinned entry rolls back by its tag, proven by the bare tag, and stays pinned.
    stage.promote("payments", "dev", &["--tag", "1002"]);
    stage.promote("payments", "qa", &[]);
    let pinned_target = format!("1001@{digest}");
    for to in [None, Some("1001"), Some(pinned_target.as_str())] {
        let mut args = vec![
            "rollback",
            "--service",
            "payments",
            "--env",
            "qa",
            "--dry-run",
        ];
        if let Some(to) = to {
            args.extend(["--to", to]);
        }
        let out = stage.forge(&args);
        assert_success(&out);
        assert!(
            stdout(&out).contains("to 1001@"),
            "{to:?}: {}",
            stdout(&out)
        );
    }
    let out = stage.forge(&[
        "rollback",
        "--service",
        "payments",
        "--env",
        "qa",
        "--dry-run",
        "--output",
        "json",
    ]);
    assert_success(&out);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("a JSON plan");
    assert_eq!(plan["to"], format!("1001@{digest}"), "{plan}");
    let out = stage.forge(&["rollback", "--service", "payments", "--env", "qa"]);
    assert_success(&out);
    let text = stage.ledger.read("apps/qa/payments.yaml");
    assert!(
        text.contains(&format!(
            "registry.example.invalid/payments/api:1001@{digest}"
        )),
        "{text}"
    );
}

#[test]
fn the_recorded_digest_is_promoted_and_a_refusal_pushes_nothing() {
    let Some(stage) = Stage::start(&[("payments", "payments/api", true)]) else {
        return;
    };
    let layout = stage.path().join("layout");
    let approved = ["--approved-by", "bob@example.com"];
    stage.promote("payments", "dev", &["--tag", "1001"]);
    stage.promote("payments", "dev", &["--tag", "1002"]);
    // Someone re-points Dev's 1001 at other bytes after it was recorded.
    push(
        &layout,
        "1002",
        &format!("{}/payments/api:1001", stage.dev.host()),
    );
    let qa = stage.promote("payments", "qa", &["--tag", "1001"]);
    assert_eq!(
        qa["destination"]["digest"],
        stage.digests[0].as_str(),
        "the digest Dev recorded for 1001, not what the tag points to now: {qa}"
    );
    assert_eq!(
        stage
            .oracle_digest(&format!("{}/payments/api:1001", stage.shared.host()))
            .as_deref(),
        Some(stage.digests[0].as_str())
    );

    // Prod runs 1002; promoting the older 1001 is refused before anything is copied.
    stage.promote("payments", "qa", &["--tag", "1002"]);
    stage.promote(
        "payments",
        "prod",
        &["--tag", "1002", approved[0], approved[1]],
    );
    let evidence = stage.path().join("refused.json");
    let out = stage.forge(&[
        "promote",
        "--service",
        "payments",
        "--to",
        "prod",
        "--tag",
        "1001",
        "--requested-by",
        "alice@example.com",
        approved[0],
        approved[1],
        "--evidence",
        evidence.to_str().unwrap(),
    ]);
    assert_exit(&out, 2);
    // The evidence artifact is published on failure too: it says what stopped.
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&evidence).unwrap()).unwrap();
    assert_eq!(record["succeeded"], false, "{record}");
    assert_eq!(record["environment"], "prod");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("nothing was copied or written"),
        "{record}"
    );
    assert!(
        stderr(&out).contains("nothing was copied or written"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stage.oracle_digest(&format!("{}/prod/payments/api:1001", stage.shared.host())),
        None,
        "no tag pushed for a refused promotion"
    );
    assert_eq!(stage.ledger_tag("prod", "payments"), "1002");
}

#[test]
fn a_tag_set_by_hand_is_promoted_only_when_explicitly_allowed() {
    let Some(stage) = Stage::start(&[("payments", "payments/api", true)]) else {
        return;
    };
    // Dev's 1001 set by hand: the Ledger records no digest for it.
    let out = stage.forge(&[
        "ledger",
        "set-tag",
        "--repo",
        &stage.ledger.url(),
        "--file",
        "apps/dev/payments.yaml",
        "--tag",
        "1001",
    ]);
    assert_success(&out);
    let commits = stage.ledger.log().len();
    let qa_image = format!("{}/payments/api:1001", stage.shared.host());

    for dry_run in [true, false] {
        let mut args = vec![
            "promote",
            "--service",
            "payments",
            "--to",
            "qa",
            "--requested-by",
            "alice@example.com",
        ];
        if dry_run {
            args.push("--dry-run");
        }
        let out = stage.forge(&args);
        assert_exit(&out, 2);
        let err = stderr(&out);
        for needle in [
            "records no digest for 1001",
            "apps/dev/payments.yaml",
            "nothing was copied or written",
            "--allow-unrecorded-digest",
        ] {
            assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
        }
        assert_eq!(stage.oracle_digest(&qa_image), None, "no tag pushed");
        assert_eq!(stage.ledger.log().len(), commits, "no Ledger commit");
    }

    // A tag QA never ran is a skipped stage, not a missing record: the flag does not help,
    // and the refusal does not offer it.
    let out = stage.forge(&[
        "promote",
        "--service",
        "payments",
        "--to",
        "prod",
        "--tag",
        "1001",
        "--requested-by",
        "alice@example.com",
        "--approved-by",
        "bob@example.com",
        "--allow-unrecorded-digest",
    ]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("1001 never ran in qa")
            && err.contains("Promote it to qa first (forge promote --service payments --to qa --tag 1001), then to prod")
            && !err.contains("--allow-unrecorded-digest"),
        "{err}"
    );
    assert_eq!(stage.ledger.log().len(), commits, "no Ledger commit");

    let qa = stage.promote("payments", "qa", &["--allow-unrecorded-digest"]);
    assert_eq!(qa["source_digest_unrecorded"], true, "{qa}");
    assert_eq!(qa["destination"]["digest"], stage.digests[0].as_str());
    assert_eq!(
        stage.oracle_digest(&qa_image).as_deref(),
        Some(stage.digests[0].as_str())
    );
    let message = git(&stage.ledger.path(), &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.contains("Forge-Unrecorded-Source: allowed by --allow-unrecorded-digest"),
        "{message}"
    );
    // QA now records the digest, so Prod needs no flag.
    let prod = stage.promote("payments", "prod", &["--approved-by", "bob@example.com"]);
    assert_eq!(prod["source_digest_unrecorded"], false, "{prod}");
}

#[test]
fn a_failed_ec2_instance_stops_the_promotion_with_its_report() {
    let Some(stage) = Stage::start(&[("dagster", "data/dagster", true)]) else {
        return;
    };
    // moto's SSM always succeeds: this fake answers as SSM does for one failed instance.
    let endpoint = crate::ec2::fake_ssm(|op, _n, _body| {
        match op {
        "SendCommand" => (200, r#"{"Command":{"CommandId":"c-9","InstanceIds":[],"Status":"Pending","TargetCount":1}}"#.to_owned()),
        "ListCommands" => (200, r#"{"Commands":[{"CommandId":"c-9","Status":"Failed","TargetCount":1,"InstanceIds":[]}]}"#.to_owned()),
        "ListCommandInvocations" => (
            200,
            r#"{"CommandInvocations":[{"CommandId":"c-9","InstanceId":"i-0000000000000000b","Status":"Failed","StatusDetails":"Failed","CommandPlugins":[{"Name":"aws:runShellScript","ResponseCode":1}]}]}"#.to_owned(),
        ),
        "GetCommandInvocation" => (
            200,
            r#"{"CommandId":"c-9","InstanceId":"i-0000000000000000b","ResponseCode":1,"Status":"Failed","StatusDetails":"Failed","StandardOutputContent":"forge-step: verify-digest\n","StandardErrorContent":"forge-step-failed: verify-digest: registry/data/dagster:1001 was pulled as other@sha256:00, not the pin\n"}"#.to_owned(),
        ),
        _ => (400, r#"{"__type":"UnknownOperationException"}"#.to_owned()),
    }
    });
    let out = ec2_promote(&stage, &endpoint, "dev", &["--tag", "1001"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    for needle in [
        "SSM deploy of dagster 1001 to dev did not succeed on every instance (command c-9): i-0000000000000000b (Failed); the Ledger was not changed",
        "i-0000000000000000b  Failed  exit 1  failed at step verify-digest",
        "| forge-step-failed: verify-digest: registry/data/dagster:1001 was pulled as other@sha256:00",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
    assert_eq!(stage.ledger_tag("dev", "dagster"), "1000");
}

#[test]
fn an_unusable_ec2_deploy_is_refused_before_the_copy() {
    let Some(stage) = Stage::start(&[("dagster", "data/dagster", true)]) else {
        return;
    };
    stage.promote("dagster", "dev", &["--tag", "1001"]);
    let dir = stage.path();
    let config = std::fs::read_to_string(dir.join("forge.toml"))
        .unwrap()
        .replace(
            "[services.dagster]\n",
            "[services.dagster]\nkind = \"ec2\"\ntarget = \"tag:forge:dagster-enabled=true\"\nservice_dir = \"/opt/dagster\"\ncompose = \"missing/docker-compose.yml\"\n",
        );
    std::fs::write(dir.join("forge.toml"), &config).unwrap();
    // A compose file that runs another repository: no instance could prove the digest.
    std::fs::write(
        dir.join("other-compose.yml"),
        "services:\n  dagster:\n    image: registry.example.invalid/data/other:${IMAGE_TAG}\n",
    )
    .unwrap();
    let other_config = config.replace("missing/docker-compose.yml", "other-compose.yml");
    // A tab where YAML needs spaces: `docker compose` on the instance would fail after the push.
    std::fs::write(
        dir.join("tabbed-compose.yml"),
        "services:\n  dagster:\n\timage: ${REGISTRY}/data/dagster:${IMAGE_TAG}\n",
    )
    .unwrap();
    let tabbed_config = config.replace("missing/docker-compose.yml", "tabbed-compose.yml");
    let qa_repository = format!("{}/data/dagster", stage.shared.host());
    let commits = stage.ledger.log().len();
    let cases = [
        (&config, "services.dagster.compose: cannot read".to_owned()),
        (
            &other_config,
            format!(
                "no service runs {qa_repository}:${{IMAGE_TAG}} (its images are registry.example.invalid/data/other:${{IMAGE_TAG}})"
            ),
        ),
        (
            &tabbed_config,
            "tabbed-compose.yml is not usable: it is not valid YAML (tabs disallowed".to_owned(),
        ),
    ];
    for ((config, needle), dry_run) in cases.iter().flat_map(|case| [(case, true), (case, false)]) {
        std::fs::write(dir.join("forge.toml"), config).unwrap();
        let mut args = vec![
            "promote",
            "--service",
            "dagster",
            "--to",
            "qa",
            "--requested-by",
            "alice",
        ];
        if dry_run {
            args.push("--dry-run");
        }
        let out = stage.forge(&args);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(needle.as_str()), "{}", stderr(&out));
        assert_eq!(
            stage.oracle_digest(&format!("{}/data/dagster:1001", stage.shared.host())),
            None,
            "no tag pushed before the deploy could even be built"
        );
        assert_eq!(stage.ledger.log().len(), commits);
    }
}

/// Makes the stage's `dagster` an EC2 service deployed through the SSM at `endpoint` (static
/// test keys), and runs `forge promote` for it.
fn ec2_promote(stage: &Stage, endpoint: &str, to: &str, extra: &[&str]) -> std::process::Output {
    let dir = stage.path();
    std::fs::write(
        dir.join("docker-compose.yml"),
        "services:\n  dagster:\n    image: ${REGISTRY}/data/dagster:${IMAGE_TAG}\n",
    )
    .unwrap();
    let config = std::fs::read_to_string(dir.join("forge.toml")).unwrap();
    if !config.contains("kind = \"ec2\"") {
        let config = config
            .replace(
                "[auth]\ntoken = \"none\"\n",
                "[auth]\ntoken = \"none\"\nregion = \"eu-west-1\"\nallow_static_credentials = true\n",
            )
            .replace(
                "[services.dagster]\n",
                "[services.dagster]\nkind = \"ec2\"\ntarget = \"tag:forge:dagster-enabled=true\"\nservice_dir = \"/opt/dagster\"\ncompose = \"docker-compose.yml\"\n",
            );
        std::fs::write(dir.join("forge.toml"), config).unwrap();
    }
    for name in ["no-aws-config", "no-aws-credentials"] {
        std::fs::write(dir.join(name), "").unwrap();
    }
    let mut cmd = crate::ec2::aws_cmd(crate::support::forge(), dir, endpoint);
    cmd.args([
        "promote",
        "--service",
        "dagster",
        "--to",
        to,
        "--requested-by",
        "alice",
    ])
    .args(extra);
    cmd.output().unwrap()
}

/// The Ledger the SSM fake below writes to (the fake is a plain `fn`).
static RACING_LEDGER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[test]
fn a_promotion_overtaken_during_its_ec2_deploy_says_fleet_and_ledger_disagree() {
    let Some(stage) = Stage::start(&[("dagster", "data/dagster", true)]) else {
        return;
    };
    RACING_LEDGER.set(stage.ledger.url()).unwrap();
    // While SSM deploys 1001, another pipeline records 1002 in the Ledger.
    let endpoint = crate::ec2::fake_ssm(|op, n, _body| {
        match op {
        // The deploy's command races; a later one (`forge ec2 status` below) does not.
        "SendCommand" if n > 0 => (200, r#"{"Command":{"CommandId":"c-7","InstanceIds":[],"Status":"Pending","TargetCount":1}}"#.to_owned()),
        "SendCommand" => {
            let out = crate::support::forge()
                .args([
                    "ledger",
                    "set-tag",
                    "--repo",
                    RACING_LEDGER.get().unwrap(),
                    "--file",
                    "apps/dev/dagster.yaml",
                    "--tag",
                    "1002",
                ])
                .output()
                .unwrap();
            assert_success(&out);
            (200, r#"{"Command":{"CommandId":"c-7","InstanceIds":[],"Status":"Pending","TargetCount":1}}"#.to_owned())
        }
        "ListCommands" => (200, r#"{"Commands":[{"CommandId":"c-7","Status":"Success","TargetCount":1,"InstanceIds":[]}]}"#.to_owned()),
        "ListCommandInvocations" => (
            200,
            r#"{"CommandInvocations":[{"CommandId":"c-7","InstanceId":"i-0000000000000000a","Status":"Success","StatusDetails":"Success","CommandPlugins":[{"Name":"aws:runShellScript","ResponseCode":0}]}]}"#.to_owned(),
        ),
        "GetCommandInvocation" => (
            200,
            r#"{"CommandId":"c-7","InstanceId":"i-0000000000000000a","ResponseCode":0,"Status":"Success","StatusDetails":"Success","StandardOutputContent":"forge-step: finished\nforge-deployed-tag: 1001\n","StandardErrorContent":""}"#.to_owned(),
        ),
        _ => (400, r#"{"__type":"UnknownOperationException"}"#.to_owned()),
    }
    });
    let out = ec2_promote(&stage, &endpoint, "dev", &["--tag", "1001"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    for needle in [
        "the EC2 instances now run 1001, but the Ledger was not updated (it said 1000 when this promotion started",
        "the fleet and the Ledger disagree",
        "forge ec2 rollback --env dev --service dagster --to-tag <that tag>",
        "`forge ec2 status --env dev --service dagster` then shows each instance's tag",
        "superseded: current tag is 1002",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
    assert_eq!(
        stage.ledger_tag("dev", "dagster"),
        "1002",
        "the other write stands"
    );

    // `forge ec2 status` shows the disagreement and the command that ends it.
    let out = crate::ec2::aws_cmd(crate::support::forge(), stage.path(), &endpoint)
        .args(["ec2", "status", "--env", "dev", "--service", "dagster"])
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("the Ledger says 1002 (apps/dev/dagster.yaml)")
            && text.contains("  i-0000000000000000a  1001  differs\n")
            && text.contains(
                "  note: the Ledger records no digest for 1002 (set by hand?): the containers' bytes are not checked\n"
            ),
        "{text}"
    );
    let err = stderr(&out);
    assert!(
        err.contains(
            "1 of 1 instance(s) do not run 1002 with every service up (the Ledger's tag in apps/dev/dagster.yaml; SSM command c-7): \
             i-0000000000000000a runs 1001; put them on it with `forge ec2 rollback --env dev --service dagster --to-tag 1002`"
        ),
        "{err}"
    );
    // `forge status` (Ledger and registries) points EC2 services at it.
    let out = stage.forge(&["status", "--service", "dagster"]);
    assert!(
        stdout(&out).contains(
            "  EC2 instances: `forge ec2 status --env ENV --service dagster` shows what each one runs\n"
        ),
        "{}",
        stdout(&out)
    );
}
