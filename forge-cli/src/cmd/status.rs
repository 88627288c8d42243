//! `forge status` and `forge audit`: read-only views rebuilt from the Ledger (and, for status,
//! the registries). Status flags drift: a registry digest that differs from the one recorded at
//! promotion, or environments running the same tag with different digests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::config;
use crate::output::{self, Format};
use crate::release::{Release, trailer};

/// `forge status`
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this service (default: every service in the config).
    #[arg(long)]
    service: Option<String>,
    /// Config file.
    #[arg(long, default_value = config::DEFAULT_PATH, env = "FORGE_CONFIG")]
    config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

/// `forge audit`
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Service name.
    #[arg(long)]
    service: String,
    /// Only this environment.
    #[arg(long)]
    env: Option<String>,
    /// Config file.
    #[arg(long, default_value = config::DEFAULT_PATH, env = "FORGE_CONFIG")]
    config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

/// One environment of one service.
#[derive(Debug, Serialize)]
struct EnvStatus {
    env: String,
    tag: Option<String>,
    digest: Option<String>,
    recorded_digest: Option<String>,
    commit: Option<String>,
    when: Option<String>,
    requested_by: Option<String>,
    approved_by: Option<String>,
    drift: bool,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ServiceStatus {
    service: String,
    environments: Vec<EnvStatus>,
    drift: bool,
    /// An EC2 service: what its instances run is `forge ec2 status`, not this view.
    #[serde(skip)]
    ec2: bool,
}

/// Runs `forge status`. Exits 1 when drift is found, so a pipeline can gate on it.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    crate::runtime()?.block_on(async {
        let loaded = crate::release::load_checked(&args.config)?;
        let services: Vec<String> = match &args.service {
            Some(s) => vec![s.clone()],
            None => loaded.config.services.keys().cloned().collect(),
        };
        let mut all = Vec::new();
        for service in &services {
            let release = Release::open(&args.config, service)?;
            all.push(service_status(&release).await?);
        }
        let drift = all.iter().any(|s| s.drift);
        match (args.output, &args.service) {
            (Format::Json, Some(_)) => output::print_json(&all[0])?,
            (Format::Json, None) => {
                output::print_json(&serde_json::json!({ "services": all, "drift": drift }))?
            }
            (Format::Text, _) => output::print_stdout(&render_status(&all))?,
        }
        Ok(if drift {
            ExitCode::from(output::exit::FAILURE)
        } else {
            ExitCode::SUCCESS
        })
    })
}

async fn service_status(release: &Release) -> anyhow::Result<ServiceStatus> {
    let ledger = release.ledger()?;
    let selector = release.selector();
    let envs = release.environments_in_order();
    let env_refs: Vec<&str> = envs.iter().map(String::as_str).collect();
    let client = release.registry_client(&env_refs).await?;
    let mut rows = Vec::new();
    for env in &envs {
        let mut row = EnvStatus {
            env: env.clone(),
            tag: None,
            digest: None,
            recorded_digest: None,
            commit: None,
            when: None,
            requested_by: None,
            approved_by: None,
            drift: false,
            notes: Vec::new(),
        };
        let file = release.manifest(env)?;
        let history = match ledger.history(&file, &selector) {
            Ok(h) => h,
            Err(e) => {
                row.notes.push(format!("not in the Ledger: {e}"));
                rows.push(row);
                continue;
            }
        };
        let Some(latest) = history.first() else {
            row.notes.push(format!("{file} has no history"));
            rows.push(row);
            continue;
        };
        row.tag = Some(latest.value.clone());
        row.commit = Some(latest.commit.clone());
        row.when = Some(latest.time.clone());
        row.requested_by = latest
            .trailers
            .get(trailer::REQUESTED_BY)
            .cloned()
            .or_else(|| Some(latest.author.clone()));
        row.approved_by = latest.trailers.get(trailer::APPROVED_BY).cloned();
        row.recorded_digest = latest.trailers.get(trailer::DIGEST).cloned();
        match release.image_ref(env, &latest.value) {
            Ok(reference) => match reference.parse::<forge_registry::Reference>() {
                Ok(image) => match client.resolve(&image).await {
                    Ok(resolved) => row.digest = Some(resolved.digest.to_string()),
                    Err(e) => row.notes.push(format!("{reference} does not resolve: {e}")),
                },
                Err(e) => row.notes.push(format!("{reference}: {e}")),
            },
            Err(e) => row.notes.push(e.to_string()),
        }
        if let (Some(digest), Some(recorded)) = (&row.digest, &row.recorded_digest)
            && digest != recorded
        {
            row.drift = true;
            row.notes.push(format!(
                "registry serves {digest}, but {recorded} was recorded when it was promoted"
            ));
        }
        rows.push(row);
    }
    // Environments running the same tag must hold the same digest.
    let mut by_tag: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for row in &rows {
        if let (Some(tag), Some(digest)) = (&row.tag, &row.digest) {
            by_tag
                .entry(tag.clone())
                .or_default()
                .push((row.env.clone(), digest.clone()));
        }
    }
    for row in &mut rows {
        let (Some(tag), Some(digest)) = (&row.tag, &row.digest) else {
            continue;
        };
        let others: Vec<String> = by_tag[tag]
            .iter()
            .filter(|(env, d)| env != &row.env && d != digest)
            .map(|(env, d)| format!("{env} has {d}"))
            .collect();
        if !others.is_empty() {
            row.drift = true;
            row.notes.push(format!(
                "same tag {tag}, different digest: {}",
                others.join(", ")
            ));
        }
    }
    let drift = rows.iter().any(|r| r.drift);
    Ok(ServiceStatus {
        service: release.service.clone(),
        environments: rows,
        drift,
        ec2: release.service_config.kind == crate::config::ServiceKind::Ec2,
    })
}

fn render_status(services: &[ServiceStatus]) -> String {
    let mut out = String::new();
    for s in services {
        out.push_str(&format!("{}\n", s.service));
        out.push_str(&format!(
            "  {:<8} {:<10} {:<73} {}\n",
            "ENV", "TAG", "DIGEST", "PROMOTED"
        ));
        for r in &s.environments {
            let who = match (&r.requested_by, &r.approved_by) {
                (Some(req), Some(appr)) => format!("{req} (approved by {appr})"),
                (Some(req), None) => req.clone(),
                _ => String::new(),
            };
            out.push_str(&format!(
                "  {:<8} {:<10} {:<73} {} {}\n",
                r.env,
                r.tag.as_deref().unwrap_or("-"),
                r.digest.as_deref().unwrap_or("-"),
                r.when.as_deref().unwrap_or(""),
                who
            ));
            for note in &r.notes {
                out.push_str(&format!(
                    "           {}{note}\n",
                    if r.drift { "DRIFT: " } else { "note: " }
                ));
            }
        }
        out.push_str(if s.drift {
            "  drift found\n"
        } else {
            "  no drift: environments on the same tag hold the same digest\n"
        });
        if s.ec2 {
            out.push_str(&format!(
                "  EC2 instances: `forge ec2 status --env ENV --service {}` shows what each one runs\n",
                s.service
            ));
        }
    }
    out
}

/// One Ledger change, from commits and trailers alone.
#[derive(Debug, Serialize)]
struct AuditEvent {
    env: String,
    time: String,
    /// Seconds since the epoch: the order (the `time` texts carry each committer's offset).
    #[serde(skip)]
    timestamp: i64,
    commit: String,
    author: String,
    tag: String,
    action: Option<String>,
    digest: Option<String>,
    requested_by: Option<String>,
    approved_by: Option<String>,
    source: Option<String>,
    subject: String,
}

/// Runs `forge audit`.
pub fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let release = Release::open(&args.config, &args.service)?;
    let envs = match &args.env {
        Some(env) => {
            release.environment(env)?;
            vec![env.clone()]
        }
        None => release.environments_in_order(),
    };
    let ledger = release.ledger()?;
    let selector = release.selector();
    let mut events = Vec::new();
    for env in &envs {
        let file = release.manifest(env)?;
        let history = match ledger.history(&file, &selector) {
            Ok(h) => h,
            Err(e) if args.env.is_none() => {
                tracing::warn!("skipping {env}: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for entry in history {
            let t = |k: &str| entry.trailers.get(k).cloned();
            events.push(AuditEvent {
                env: env.clone(),
                action: t(trailer::ACTION),
                digest: t(trailer::DIGEST),
                requested_by: t(trailer::REQUESTED_BY),
                approved_by: t(trailer::APPROVED_BY),
                source: t(trailer::SOURCE),
                time: entry.time,
                timestamp: entry.timestamp,
                commit: entry.commit,
                author: entry.author,
                tag: entry.value,
                subject: entry.subject,
            });
        }
    }
    events.sort_by(|a, b| {
        b.timestamp
            .cmp(&a.timestamp)
            .then_with(|| a.env.cmp(&b.env))
    });
    match args.output {
        Format::Json => {
            output::print_json(&serde_json::json!({ "service": args.service, "events": events }))?
        }
        Format::Text => {
            let mut out = format!(
                "{} — {} Ledger change(s), newest first\n",
                args.service,
                events.len()
            );
            for e in &events {
                let short = &e.commit[..e.commit.len().min(10)];
                out.push_str(&format!(
                    "  {} {:<6} {:<10} {:<9} {} by {}{}{}\n",
                    e.time,
                    e.env,
                    e.tag,
                    e.action.as_deref().unwrap_or("(manual)"),
                    short,
                    e.requested_by.as_deref().unwrap_or(&e.author),
                    e.approved_by
                        .as_deref()
                        .map(|a| format!(", approved by {a}"))
                        .unwrap_or_default(),
                    e.digest
                        .as_deref()
                        .map(|d| format!(", {d}"))
                        .unwrap_or_default(),
                ));
            }
            output::print_stdout(&out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
