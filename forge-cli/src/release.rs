//! What `promote`, `rollback`, `status` and `audit` share: the loaded config turned into
//! registry references, a Ledger handle, registry clients with per-environment credentials,
//! trailers and evidence records. Policy lives in [`crate::policy`]; the work in the libraries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::{self, Config, EnvironmentConfig, Loaded, ServiceConfig};
use crate::output::InvalidInput;

/// Git trailer keys Forge writes on every Ledger commit; `audit` and `rollback` read them back.
pub mod trailer {
    /// The manifest digest proven at the destination.
    pub const DIGEST: &str = "Forge-Digest";
    /// The build id (the promoted tag).
    pub const BUILD_ID: &str = "Forge-Build-Id";
    /// `promote` or `rollback`.
    pub const ACTION: &str = "Forge-Action";
    /// The source image reference of a promotion.
    pub const SOURCE: &str = "Forge-Source";
    /// Who asked.
    pub const REQUESTED_BY: &str = "Forge-Requested-By";
    /// Who approved.
    pub const APPROVED_BY: &str = "Forge-Approved-By";
    /// Present when the source digest was not recorded in the Ledger and the promotion was
    /// allowed explicitly (`--allow-unrecorded-digest`).
    pub const UNRECORDED_SOURCE: &str = "Forge-Unrecorded-Source";
}

/// The options `promote` and `rollback` share.
#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// Who asks (default: the pipeline's requester, else $USER).
    #[arg(long)]
    pub requested_by: Option<String>,
    /// Who approved (required where `approval = "required"`; never the requester).
    #[arg(long)]
    pub approved_by: Option<String>,
    /// Write the evidence record (JSON) to this file.
    #[arg(long)]
    pub evidence: Option<PathBuf>,
    /// Check policy and prove the image; copy, deploy and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Config file.
    #[arg(long, default_value = config::DEFAULT_PATH, env = "FORGE_CONFIG")]
    pub config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: crate::output::Format,
}

impl ChangeArgs {
    /// What to write to `--evidence` if the change fails: the pipeline's evidence artifact
    /// (published even on failure) then says what was attempted and why it stopped.
    pub fn failure_record(
        &self,
        action: &'static str,
        service: &str,
        environment: &str,
    ) -> FailureRecord {
        FailureRecord {
            path: self.evidence.clone(),
            action,
            service: service.to_owned(),
            environment: environment.to_owned(),
            requested_by: self.requester(),
            approved_by: self.approved_by.clone(),
            started: std::time::SystemTime::now(),
        }
    }

    /// `--requested-by`, else the pipeline's requester, else the local user.
    pub fn requester(&self) -> Option<String> {
        self.requested_by.clone().or_else(detect_requester)
    }

    /// The Ledger trailers of a change: action, digest, build id, source (promotions),
    /// requester and approver.
    pub fn trailers(
        &self,
        action: &str,
        digest: &str,
        build_id: &str,
        source: Option<&str>,
        requested_by: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut trailers = vec![
            (trailer::ACTION.to_owned(), action.to_owned()),
            (trailer::DIGEST.to_owned(), digest.to_owned()),
            (trailer::BUILD_ID.to_owned(), build_id.to_owned()),
        ];
        if let Some(source) = source {
            trailers.push((trailer::SOURCE.to_owned(), source.to_owned()));
        }
        if let Some(who) = requested_by {
            trailers.push((trailer::REQUESTED_BY.to_owned(), who.trim().to_owned()));
        }
        if let Some(who) = &self.approved_by {
            trailers.push((trailer::APPROVED_BY.to_owned(), who.trim().to_owned()));
        }
        trailers
    }

    /// Writes the evidence file, publishes the pipeline outputs and prints the result
    /// (`text` for humans, the evidence itself as JSON).
    pub fn finish(
        &self,
        evidence: &Evidence,
        text: &str,
    ) -> anyhow::Result<std::process::ExitCode> {
        if let Some(path) = &self.evidence {
            write_evidence(path, evidence)?;
            EVIDENCE_WRITTEN.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        crate::output::set_pipeline_output("FORGE_TAG", &evidence.build_id)?;
        crate::output::set_pipeline_output("FORGE_DIGEST", &evidence.destination.digest)?;
        crate::output::set_pipeline_output(
            "FORGE_LEDGER_COMMIT",
            evidence.ledger.commit.as_deref().unwrap_or(""),
        )?;
        match self.output {
            crate::output::Format::Json => crate::output::print_json(evidence)?,
            crate::output::Format::Text => crate::output::print_stdout(text)?,
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
}

/// A command's view of the config, the service and its Ledger.
pub struct Release {
    /// The config file as loaded.
    pub loaded: Loaded,
    /// The service name.
    pub service: String,
    /// `[services.<service>]`.
    pub service_config: ServiceConfig,
}

impl Release {
    /// Loads and checks the config, and looks the service up. Every problem is invalid input.
    pub fn open(config_path: &Path, service: &str) -> anyhow::Result<Self> {
        let loaded = load_checked(config_path)?;
        let service_config = loaded.config.service(service)?.clone();
        Ok(Release {
            loaded,
            service: service.to_owned(),
            service_config,
        })
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.loaded.config
    }

    /// The registry repository of the service (default: its name).
    pub fn repository(&self) -> &str {
        self.service_config
            .repository
            .as_deref()
            .unwrap_or(&self.service)
    }

    /// `[environments.<env>]` or invalid input.
    pub fn environment(&self, env: &str) -> anyhow::Result<&EnvironmentConfig> {
        self.config().environment(env)
    }

    /// The image reference of `tag` in `env`'s registry: `host/repo:tag`, or
    /// `oci:DIR/repo:tag` for an OCI-layout registry (relative DIR from the config file).
    pub fn image_ref(&self, env: &str, tag: &str) -> anyhow::Result<String> {
        let registry = self.environment(env)?.registry.as_deref().ok_or_else(|| {
            InvalidInput(format!(
                "environments.{env}.registry is not set in {}: add the registry host (or oci:DIR)",
                self.loaded.path.display()
            ))
        })?;
        Ok(match registry.strip_prefix("oci:") {
            Some(dir) => format!(
                "oci:{}/{}:{tag}",
                self.loaded.resolve(dir).display(),
                self.repository()
            ),
            None => format!(
                "{}/{}:{tag}",
                registry.trim_end_matches('/'),
                self.repository()
            ),
        })
    }

    /// The Ledger manifest path of the service in `env`.
    pub fn manifest(&self, env: &str) -> anyhow::Result<String> {
        Ok(self.ledger_config()?.manifest_path(env, &self.service))
    }

    fn ledger_config(&self) -> anyhow::Result<&config::LedgerConfig> {
        self.config().ledger.as_ref().ok_or_else(|| {
            InvalidInput(format!(
                "no [ledger] section in {}: add repo, branch and path (see forge.example.toml)",
                self.loaded.path.display()
            ))
            .into()
        })
    }

    /// The Ledger handle: a local path in the config is relative to the config file.
    pub fn ledger(&self) -> anyhow::Result<forge_ledger::Ledger> {
        let cfg = self.ledger_config()?;
        Ok(forge_ledger::Ledger::new(
            ledger_location(&self.loaded, &cfg.repo),
            cfg.branch.clone(),
        ))
    }

    /// The patcher selector for the service's manifests.
    pub fn selector(&self) -> forge_ledger::Selector {
        forge_ledger::Selector {
            image: self.service_config.image.clone(),
            key: self.service_config.key.clone(),
            ..forge_ledger::Selector::default()
        }
    }

    /// Environments in promotion order: each after the one it comes `from`.
    pub fn environments_in_order(&self) -> Vec<String> {
        environments_in_order(self.config())
    }

    /// A registry client that authenticates to each ECR registry of `envs` with that
    /// environment's role chain (see [`ecr_chains`]), and to everything else through the
    /// Docker config. `envs` is `[from, to]` for a promotion, the environment otherwise.
    pub async fn registry_client(&self, envs: &[&str]) -> anyhow::Result<forge_registry::Client> {
        let mut ecr = HashMap::new();
        if self.config().auth.token.as_deref() != Some("none") {
            for (host, env) in ecr_chains(self.config(), envs) {
                let sdk = crate::aws::sdk_config_for_env(&self.loaded, &env)
                    .await
                    .with_context(|| {
                        format!("cannot get AWS credentials for {env} (registry {host})")
                    })?;
                ecr.insert(
                    host,
                    Arc::new(match crate::aws::mask_hook(crate::aws::current_ci()) {
                        Some(hook) => {
                            forge_auth::ecr::EcrCredentials::new(&sdk).with_secret_hook(hook)
                        }
                        None => forge_auth::ecr::EcrCredentials::new(&sdk),
                    }),
                );
            }
        }
        crate::ecr::client_with(ecr)
    }
}

/// Which environment's role chain signs in to each ECR host of `envs`: the host of each
/// environment's `registry` (a path after it, e.g. `…amazonaws.com/prod`, is a repository
/// prefix). When environments share a host, the last of `envs` wins: for a promotion that is
/// the destination, whose role must be able to push (and pull the source for the mount).
pub fn ecr_chains(config: &Config, envs: &[&str]) -> Vec<(String, String)> {
    let mut chains: Vec<(String, String)> = Vec::new();
    for env in envs.iter().rev() {
        let Some(registry) = config
            .environments
            .get(*env)
            .and_then(|e| e.registry.as_deref())
        else {
            continue;
        };
        let host = registry.split('/').next().unwrap_or_default();
        if is_ecr_host(host) && !chains.iter().any(|(h, _)| h == host) {
            chains.push((host.to_owned(), (*env).to_owned()));
        }
    }
    chains
}

/// Loads the config and refuses it with every problem listed when a rule is broken.
pub fn load_checked(path: &Path) -> anyhow::Result<Loaded> {
    let loaded = Config::load(path)?;
    let problems = loaded.config.problems();
    if !problems.is_empty() {
        return Err(InvalidInput(config::describe_problems(&loaded.path, &problems)).into());
    }
    Ok(loaded)
}

/// A URL (`scheme://…`, `user@host:path`) stays as it is; a path is resolved against the
/// config file's directory.
fn ledger_location(loaded: &Loaded, repo: &str) -> String {
    let is_url = repo.contains("://") || (repo.contains('@') && repo.contains(':'));
    if is_url || Path::new(repo).is_absolute() {
        repo.to_owned()
    } else {
        loaded.resolve(repo).display().to_string()
    }
}

/// `<12 digits>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`.
pub fn is_ecr_host(host: &str) -> bool {
    let mut parts = host.split('.');
    let account = parts.next().unwrap_or_default();
    account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && parts.next() == Some("dkr")
        && matches!(parts.next(), Some("ecr" | "ecr-fips"))
        && parts.next().is_some_and(|region| !region.is_empty())
        && parts.next() == Some("amazonaws")
        && matches!(
            (parts.next(), parts.next()),
            (Some("com"), None) | (Some("com"), Some("cn"))
        )
}

/// Each environment after the one it comes `from`, otherwise in name order.
pub fn environments_in_order(config: &Config) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut remaining: Vec<&String> = config.environments.keys().collect();
    while !remaining.is_empty() {
        let before = remaining.len();
        remaining.retain(|name| {
            let ready = match config.environments[*name].from.as_deref() {
                None => true,
                Some(from) => {
                    order.iter().any(|o| o == from) || !config.environments.contains_key(from)
                }
            };
            if ready {
                order.push((*name).clone());
            }
            !ready
        });
        if remaining.len() == before {
            // A cycle: `config check` reports it; list the rest by name rather than loop.
            order.extend(remaining.drain(..).cloned());
        }
    }
    order
}

/// Wraps a library error that refuses the caller's input so it exits 2, keeping its chain.
pub fn refused(e: impl std::error::Error + Send + Sync + 'static) -> anyhow::Error {
    crate::output::classify(e, true)
}

/// Registry refusals (tag conflict, `latest`, missing repository) exit 2; failures exit 1.
pub fn registry_error(e: forge_registry::Error) -> anyhow::Error {
    let refused = e.is_invalid_input();
    crate::output::classify(e, refused)
}

/// The digest a Ledger history entry records for `tag`: the entry's own pin (`TAG@sha256:…`),
/// else its commit's `Forge-Digest` trailer, trusted only when the same commit's
/// `Forge-Build-Id` names `tag`. A commit made by hand that kept an older commit's trailers
/// (or any other mispairing) then records nothing, rather than another build's digest.
pub fn recorded_digest(entry: &forge_ledger::HistoryEntry, tag: &str) -> Option<String> {
    let (value, pin) = match entry.value.split_once('@') {
        Some((value, pin)) => (value, Some(pin)),
        None => (entry.value.as_str(), None),
    };
    if value != tag {
        return None;
    }
    if let Some(pin) = pin {
        return Some(pin.to_owned());
    }
    (entry.trailers.get(trailer::BUILD_ID).map(String::as_str) == Some(tag))
        .then(|| entry.trailers.get(trailer::DIGEST).cloned())
        .flatten()
}

/// Ledger refusals (superseded, backwards, invalid tag, no target) exit 2; failures exit 1.
pub fn ledger_error(e: forge_ledger::LedgerError) -> anyhow::Error {
    let refused = e.is_refusal();
    crate::output::classify(e, refused)
}

/// Who asked for this run, when not given: the pipeline's requester, else the local user.
pub fn detect_requester() -> Option<String> {
    [
        "BUILD_REQUESTEDFOREMAIL",
        "BUILD_REQUESTEDFOR",
        "GITHUB_ACTOR",
        "USER",
        "USERNAME",
    ]
    .iter()
    .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
}

/// One promotion or rollback, as written to `--evidence FILE` and printed with `--output json`.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    /// `promote` or `rollback`.
    pub action: &'static str,
    /// The service.
    pub service: String,
    /// The environment changed.
    pub environment: String,
    /// Where the image came from (promotions).
    pub from_environment: Option<String>,
    /// The build id = the tag.
    pub build_id: String,
    /// The image reference read.
    pub source: ImageEvidence,
    /// True when `--allow-unrecorded-digest` promoted a tag whose digest the `from`
    /// environment's Ledger history did not record: the source digest is what the tag
    /// pointed to at promotion time, not a digest Forge recorded.
    pub source_digest_unrecorded: bool,
    /// The image reference written or proven.
    pub destination: ImageEvidence,
    /// What the copy/verification proved.
    pub verification: Verification,
    /// The Ledger change.
    pub ledger: LedgerEvidence,
    /// The SSM deploy, for EC2 services.
    pub ec2: Option<serde_json::Value>,
    /// Who asked.
    pub requested_by: Option<String>,
    /// Who approved.
    pub approved_by: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// The forge version that did it.
    pub forge_version: &'static str,
}

/// A reference and the digest it resolved to.
#[derive(Debug, Clone, Serialize)]
pub struct ImageEvidence {
    /// Image reference.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
}

/// The copy and verification result.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The destination served the source digest and every referenced blob is present.
    pub verified: bool,
    /// The destination already had the tag at this digest, complete: nothing of the image was
    /// uploaded (referrers it lacked may have been, see `referrers_copied`).
    pub already_present: bool,
    /// Referrers (signatures, SBOMs) copied.
    pub referrers_copied: u64,
    /// Manifests pushed (platform manifests, referrers, referrer indexes, the tag).
    pub manifests_pushed: u64,
    /// Why the referrer lists of an already-present image were not compared, if they were not.
    pub referrers_unchecked: Option<String>,
    /// Blobs uploaded.
    pub blobs_copied: u64,
    /// Blobs already present.
    pub blobs_skipped: u64,
    /// Bytes uploaded.
    pub bytes_copied: u64,
}

/// The Ledger commit.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEvidence {
    /// Manifest path in the Ledger.
    pub file: String,
    /// Tag before.
    pub old: String,
    /// Tag after.
    pub new: String,
    /// The commit, `null` when the Ledger already had the tag.
    pub commit: Option<String>,
    /// Push attempts.
    pub attempts: u32,
}

/// Set once a change's own evidence is written: a later failure (printing the result to a
/// closed pipe) must not overwrite a record of a change that landed.
static EVIDENCE_WRITTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The evidence of a promotion or rollback that did not complete (see
/// [`ChangeArgs::failure_record`]).
pub struct FailureRecord {
    path: Option<PathBuf>,
    action: &'static str,
    service: String,
    environment: String,
    requested_by: Option<String>,
    approved_by: Option<String>,
    started: std::time::SystemTime,
}

impl FailureRecord {
    /// Writes the record when `--evidence` was given. Best effort: the change's own error is
    /// what the caller reports; a failure to write this one is only logged.
    pub fn write(&self, error: &anyhow::Error) {
        let Some(path) = &self.path else { return };
        if EVIDENCE_WRITTEN.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let record = serde_json::json!({
            "action": self.action,
            "service": self.service,
            "environment": self.environment,
            "succeeded": false,
            "verification": { "verified": false },
            "error": format!("{error:#}"),
            "requested_by": self.requested_by,
            "approved_by": self.approved_by,
            "started_at": crate::output::rfc3339(self.started),
            "finished_at": crate::output::rfc3339(std::time::SystemTime::now()),
            "forge_version": env!("CARGO_PKG_VERSION"),
        });
        if let Err(e) = write_evidence(path, &record) {
            tracing::warn!("cannot write the failure evidence: {e:#}");
        }
    }
}

/// Writes the evidence record atomically (temp file + rename in the same directory).
pub fn write_evidence<T: Serialize>(path: &Path, evidence: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(evidence)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, text + "\n")
        .with_context(|| format!("cannot write evidence {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot write evidence {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_digests_need_the_tag_in_the_same_commit() {
        let entry = |value: &str, trailers: &[(&str, &str)]| forge_ledger::HistoryEntry {
            commit: "c".repeat(40),
            time: String::new(),
            timestamp: 0,
            author: String::new(),
            value: value.to_owned(),
            subject: String::new(),
            trailers: trailers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let d = "sha256:".to_owned() + &"d".repeat(64);
        let forge_commit = [(trailer::BUILD_ID, "102"), (trailer::DIGEST, d.as_str())];
        assert_eq!(
            recorded_digest(&entry("102", &forge_commit), "102"),
            Some(d.clone())
        );
        assert_eq!(recorded_digest(&entry("102", &forge_commit), "101"), None);
        // A hand edit to 102 that kept 101's trailers records nothing for 102.
        let stale = [(trailer::BUILD_ID, "101"), (trailer::DIGEST, d.as_str())];
        assert_eq!(recorded_digest(&entry("102", &stale), "102"), None);
        assert_eq!(
            recorded_digest(&entry("102", &[(trailer::DIGEST, &d)]), "102"),
            None
        );
        // A pinned entry records its pin, whatever the trailers say.
        let pinned = format!("102@{d}");
        assert_eq!(recorded_digest(&entry(&pinned, &stale), "102"), Some(d));
    }

    #[test]
    fn ecr_hosts() {
        for (host, expected) in [
            ("111111111111.dkr.ecr.eu-west-1.amazonaws.com", true),
            ("111111111111.dkr.ecr.cn-north-1.amazonaws.com.cn", true),
            ("11111111111.dkr.ecr.eu-west-1.amazonaws.com", false),
            (
                "111111111111.dkr.ecr.eu-west-1.amazonaws.com.evil.example",
                false,
            ),
            (
                "111111111111.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
                true,
            ),
            ("111111111111.dkr.ecrx.eu-west-1.amazonaws.com", false),
            ("127.0.0.1:5000", false),
            ("public.ecr.aws", false),
        ] {
            assert_eq!(is_ecr_host(host), expected, "{host}");
        }
    }

    #[test]
    fn each_ecr_host_signs_in_with_one_chain_the_destination_s_when_shared() {
        let shared = "222222222222.dkr.ecr.eu-west-1.amazonaws.com";
        let config = Config::parse(&format!(
            "[environments.dev]\nregistry = \"111111111111.dkr.ecr.eu-west-1.amazonaws.com\"\n\
             [environments.qa]\nfrom = \"dev\"\nregistry = \"{shared}\"\n\
             [environments.prod]\nfrom = \"qa\"\nregistry = \"{shared}/prod\"\n\
             [environments.local]\nregistry = \"127.0.0.1:5000\"\n"
        ))
        .unwrap();
        let check = |envs: &[&str], expected: &[(&str, &str)]| {
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(h, e)| ((*h).to_owned(), (*e).to_owned()))
                .collect();
            assert_eq!(ecr_chains(&config, envs), expected, "{envs:?}");
        };
        check(
            &["dev", "qa"],
            &[
                (shared, "qa"),
                ("111111111111.dkr.ecr.eu-west-1.amazonaws.com", "dev"),
            ],
        );
        // QA and Prod share a host: the destination's role pushes, whatever the order.
        check(&["qa", "prod"], &[(shared, "prod")]);
        check(&["prod", "qa"], &[(shared, "qa")]);
        check(&["local"], &[]);
        check(&["missing"], &[]);
    }

    #[test]
    fn environments_follow_promotion_order() {
        let config = Config::parse(
            "[environments.prod]\nfrom = \"qa\"\n[environments.dev]\n[environments.qa]\nfrom = \"dev\"\n[environments.sandbox]\n",
        )
        .unwrap();
        assert_eq!(
            environments_in_order(&config),
            ["dev", "qa", "sandbox", "prod"]
        );
    }
}
