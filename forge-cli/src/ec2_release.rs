//! EC2 services in `forge promote` / `forge rollback`: the SSM deploy of a verified tag, with
//! the environment's role chain. The Ledger is written only after every instance succeeded.

use anyhow::Context as _;

use crate::output::InvalidInput;
use crate::release::Release;

/// The SSM deploy of `tag` of the release's EC2 service to `env`, built and checked from the
/// config and the compose file. Promote and rollback call it before anything is copied or
/// written, so a missing key, an unreadable compose file, a compose file that does not run
/// the repository, or a digest instances cannot pin pushes no tag. `digest`: the one the
/// source resolved to (the deploy pins the one proven after the copy).
pub fn prepare(
    release: &Release,
    action: &str,
    env: &str,
    tag: &str,
    digest: &str,
) -> anyhow::Result<Prepared> {
    let service = &release.service_config;
    let name = &release.service;
    let missing = |key: &str| {
        InvalidInput(format!(
            "services.{name}.{key} is required for kind = \"ec2\""
        ))
    };
    let target = service.target.as_deref().ok_or_else(|| missing("target"))?;
    let service_dir = service
        .service_dir
        .as_deref()
        .ok_or_else(|| missing("service_dir"))?;
    let compose_rel = service
        .compose
        .as_deref()
        .ok_or_else(|| missing("compose"))?;
    let compose_path = release.loaded.resolve(compose_rel);
    let compose = std::fs::read(&compose_path).map_err(|e| {
        InvalidInput(format!(
            "services.{name}.compose: cannot read {}: {e}; the path is relative to the config file",
            compose_path.display()
        ))
    })?;
    let targets = forge_ec2::Targets::parse(target)
        .map_err(|e| InvalidInput(format!("services.{name}.target `{target}`: {e}")))?;
    let mut request = forge_ec2::DeployRequest::new(targets, compose, tag, service_dir);
    request.parameters_path = service.parameters_path.clone();
    request.comment = Some(format!("forge {action} {name} {tag} to {env}"));
    // A rollback goes back on purpose; a promotion must never move an instance backwards.
    request.allow_older = action == "rollback";
    let image = release.image_ref(env, tag)?;
    // An OCI layout directory is not something an instance pulls from; there is no pin to check.
    let repository = (!image.starts_with("oci:")).then(|| {
        image
            .strip_suffix(&format!(":{tag}"))
            .expect("image_ref ends with the tag it was given")
            .to_owned()
    });
    // Checked now, so a repository or digest the instances could not be told about is
    // refused before anything is copied.
    request.image_pin = repository.as_ref().map(|r| format!("{r}@{digest}"));
    request.validate().map_err(|e| {
        let why = crate::cmd::ec2::refused_request(&e, Some(&compose_path));
        InvalidInput(format!("cannot deploy {name} {tag} to {env}: {why}"))
    })?;
    request.image_pin = None;
    Ok(Prepared {
        request,
        repository,
    })
}

/// A checked EC2 deploy, waiting for the digest to pin.
#[derive(Debug)]
pub struct Prepared {
    request: forge_ec2::DeployRequest,
    /// `REGISTRY/REPOSITORY` as the compose file names it (None for an OCI layout).
    repository: Option<String>,
}

/// Sends `request` (from [`prepare`]) and returns the deploy report (JSON). Each instance
/// switches only if it pulled the tag as `digest` (the digest just proven in the registry).
/// Any instance that did not succeed is an error listing them.
pub async fn deploy(
    release: &Release,
    env: &str,
    prepared: Prepared,
    digest: &str,
) -> anyhow::Result<serde_json::Value> {
    let name = &release.service;
    let Prepared {
        mut request,
        repository,
    } = prepared;
    let tag = request.image_tag.clone();
    request.image_pin = repository.map(|r| format!("{r}@{digest}"));
    request
        .validate()
        .map_err(|e| InvalidInput(format!("cannot deploy {name} {tag} to {env}: {e}")))?;

    let sdk = crate::aws::sdk_config_for_env(&release.loaded, env)
        .await
        .with_context(|| format!("cannot get AWS credentials for {env} to deploy {name}"))?;
    let report = forge_ec2::Ec2Deployer::new(&sdk)
        .deploy(&request)
        .await
        .map_err(|e| {
            let refused = e.is_invalid_input();
            crate::output::classify(e, refused)
        })
        .with_context(|| {
            format!("SSM deploy of {name} {tag} to {env} failed; the Ledger was not changed")
        })?;
    let json = serde_json::to_value(&report)?;
    if !report.succeeded {
        let failed: Vec<String> = report
            .instances
            .iter()
            .filter(|i| !i.succeeded)
            .map(|i| format!("{} ({})", i.instance_id, i.status))
            .collect();
        // Each instance's status, failed step, output tail and advice: the pipeline log is
        // where this is read, and the error is all a failed promotion prints.
        let mut instances = String::new();
        crate::cmd::ec2::instance_lines(&mut instances, &report.instances);
        anyhow::bail!(
            "SSM deploy of {name} {tag} to {env} did not succeed on every instance (command {}): {}; \
             the Ledger was not changed\n{}",
            report.command_id,
            failed.join(", "),
            instances.trim_end()
        );
    }
    Ok(json)
}
