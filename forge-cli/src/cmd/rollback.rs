//! `forge rollback`: an older tag, proven to exist. The target (default: the previous value in
//! the Ledger history) must still resolve in the environment's registry to the digest recorded
//! when it was promoted; then a NEW Ledger commit sets it (never a history rewrite).

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;

use crate::config::{self, ServiceKind};
use crate::output::{self, InvalidInput};
use crate::policy;
use crate::release::{
    self, Evidence, ImageEvidence, LedgerEvidence, Release, Verification, trailer,
};

/// `forge rollback`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service name.
    #[arg(long)]
    service: String,
    /// Environment to roll back.
    #[arg(long)]
    env: String,
    /// Tag to go back to (default: the value before the current one in the Ledger history).
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    change: release::ChangeArgs,
}

/// Runs `forge rollback`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::runtime()?.block_on(rollback(args))
}

async fn rollback(args: Args) -> anyhow::Result<ExitCode> {
    let started = SystemTime::now();
    let release = Release::open(&args.change.config, &args.service)?;
    release.environment(&args.env)?;
    let requested_by = args.change.requester();
    // A rollback is an emergency action: it needs no approval, but a recorded one is genuine.
    policy::check_approval(
        &args.env,
        config::Approval::None,
        requested_by.as_deref(),
        args.change.approved_by.as_deref(),
    )?;
    if let Some(to) = &args.to {
        policy::check_tag(to, None)?;
    }

    let ledger = release.ledger()?;
    let selector = release.selector();
    let file = release.manifest(&args.env)?;
    let history = ledger
        .history(&file, &selector)
        .with_context(|| format!("cannot read the history of {file} from the Ledger"))?;
    let current = history.first().map(|e| e.value.clone()).ok_or_else(|| {
        InvalidInput(format!(
            "{file} has no history in the Ledger: nothing to roll back"
        ))
    })?;
    let target = match &args.to {
        Some(to) => to.clone(),
        None => history.iter().map(|e| &e.value).find(|v| **v != current).cloned().ok_or_else(|| {
            InvalidInput(format!(
                "{} in {} has only ever run `{current}` per the Ledger: there is no previous tag; pass --to TAG",
                args.service, args.env
            ))
        })?,
    };
    if target == current {
        return Err(InvalidInput(format!(
            "{} in {} already runs `{target}`: nothing to roll back",
            args.service, args.env
        ))
        .into());
    }
    // The digest recorded when `target` was promoted into this environment.
    let recorded = history
        .iter()
        .filter(|e| e.value == target)
        .find_map(|e| e.trailers.get(trailer::DIGEST).cloned())
        .ok_or_else(|| {
            InvalidInput(format!(
                "no digest is recorded in the Ledger for `{target}` in {} ({file} has no {} trailer for it): \
                 forge cannot prove it is the image that ran; roll back to a tag that forge promoted",
                args.env,
                trailer::DIGEST
            ))
        })?;

    let reference = release.image_ref(&args.env, &target)?;
    let client = release.registry_client(&[args.env.as_str()]).await?;
    let image: forge_registry::Reference = reference.parse().map_err(release::refused)?;
    let resolved = client
        .resolve(&image)
        .await
        .map_err(release::registry_error)
        .with_context(|| {
            format!("rollback target {reference} cannot be proven to exist; nothing was written")
        })?;
    if resolved.digest.to_string() != recorded {
        anyhow::bail!(
            "rollback refused: {reference} now resolves to {}, but {recorded} was recorded when it was promoted; \
             the tag was overwritten, so it is not the image that ran — nothing was written",
            resolved.digest
        );
    }
    client
        .verify(&image, &resolved.digest)
        .await
        .map_err(release::registry_error)
        .with_context(|| {
            format!(
                "rollback target {reference} is incomplete in the registry; nothing was written"
            )
        })?;

    if args.change.dry_run {
        output::print_stdout(&format!(
            "dry run: would roll {} in {} back from {current} to {target}\n  image:  {reference} = {recorded} (proven)\nnothing was written\n",
            args.service, args.env
        ))?;
        return Ok(ExitCode::SUCCESS);
    }

    let ec2 = match release.service_config.kind {
        ServiceKind::Ec2 => Some(crate::ec2_release::deploy(&release, &args.env, &target).await?),
        ServiceKind::Argocd => None,
    };
    let trailers = args.change.trailers(
        "rollback",
        &recorded,
        &target,
        None,
        requested_by.as_deref(),
    );
    let outcome = ledger
        .revert(&forge_ledger::Revert {
            file: file.clone(),
            selector,
            to: Some(target.clone()),
            subject: Some((args.service.clone(), args.env.clone())),
            trailers,
            dry_run: false,
        })
        .map_err(release::ledger_error)?;

    let evidence = Evidence {
        action: "rollback",
        service: args.service.clone(),
        environment: args.env.clone(),
        from_environment: None,
        build_id: target.clone(),
        source: ImageEvidence {
            reference: reference.clone(),
            digest: recorded.clone(),
        },
        destination: ImageEvidence {
            reference: reference.clone(),
            digest: resolved.digest.to_string(),
        },
        verification: Verification {
            verified: true,
            already_present: true,
            blobs_copied: 0,
            blobs_skipped: 0,
            bytes_copied: 0,
        },
        ledger: LedgerEvidence {
            file: outcome.file.clone(),
            old: outcome.old.clone(),
            new: outcome.new.clone(),
            commit: outcome.commit.clone(),
            attempts: outcome.attempts,
        },
        ec2,
        requested_by,
        approved_by: args.change.approved_by.clone(),
        started_at: output::rfc3339(started),
        finished_at: output::rfc3339(SystemTime::now()),
        forge_version: env!("CARGO_PKG_VERSION"),
    };
    let text = format!(
        "rolled {} in {} back from {current} to {target}\n  image:  {reference}\n  digest: {recorded} (still the recorded digest)\n  ledger: {} commit {}\n",
        args.service,
        args.env,
        outcome.file,
        outcome.commit.as_deref().unwrap_or("(none)"),
    );
    args.change.finish(&evidence, &text)
}
