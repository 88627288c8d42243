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

/// The tag of a Ledger value (`TAG` or `TAG@sha256:…`).
fn tag_part(value: &str) -> &str {
    value.split_once('@').map_or(value, |(tag, _)| tag)
}

/// Runs `forge rollback`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let failure = args
        .change
        .failure_record("rollback", &args.service, &args.env);
    let result = crate::runtime()?.block_on(rollback(args));
    if let Err(e) = &result {
        failure.write(e);
    }
    result
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
    // `--to TAG` or `--to TAG@sha256:…` (the form a digest-pinned entry shows in history);
    // the tag part must pass the same checks as a promotion's.
    let pattern = release.config().policy.tag_pattern.clone();
    if let Some(to) = &args.to {
        policy::check_tag(tag_part(to), pattern.as_deref())?;
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
    // After a rollback, "the newest other value" is the tag that was just rolled back from:
    // running the same job again (a retry after a late failure) would bring it back.
    if args.to.is_none()
        && let Some(newest) = history.first()
        && newest.trailers.get(trailer::ACTION).map(String::as_str) == Some("rollback")
    {
        let undone = history
            .iter()
            .map(|e| &e.value)
            .find(|v| tag_part(v) != tag_part(&current))
            .map_or_else(|| "the previous tag".to_owned(), |v| format!("`{v}`"));
        return Err(InvalidInput(format!(
            "the newest change of {} in {} is itself a rollback (to `{current}`, commit {}): rolling back again by default would bring back {undone}, the tag that was rolled back; pass --to TAG to name the tag to run",
            args.service,
            args.env,
            newest.commit.get(..12).unwrap_or(&newest.commit)
        ))
        .into());
    }
    let target = match &args.to {
        Some(to) => to.clone(),
        None => history.iter().map(|e| &e.value).find(|v| tag_part(v) != tag_part(&current)).cloned().ok_or_else(|| {
            InvalidInput(format!(
                "{} in {} has only ever run `{current}` per the Ledger: there is no previous tag; pass --to TAG",
                args.service, args.env
            ))
        })?,
    };
    // Entries pinned by digest show as TAG@sha256:… in history: compare and look up by tag.
    let target_tag = tag_part(&target).to_owned();
    if target_tag == tag_part(&current) {
        return Err(InvalidInput(format!(
            "{} in {} already runs `{target}`: nothing to roll back",
            args.service, args.env
        ))
        .into());
    }
    // The digest recorded when `target` was promoted into this environment: the pin the
    // entry carried, else the commit's trailer.
    let recorded = history
        .iter()
        .find_map(|e| release::recorded_digest(e, &target_tag))
        .ok_or_else(|| {
            InvalidInput(format!(
                "no digest is recorded in the Ledger for `{target}` in {} ({file} has no {} trailer for it): \
                 forge cannot prove it is the image that ran; roll back to a tag that forge promoted",
                args.env,
                trailer::DIGEST
            ))
        })?;

    if let Some((_, pin)) = args.to.as_deref().and_then(|to| to.split_once('@'))
        && pin != recorded
    {
        return Err(InvalidInput(format!(
            "--to names {pin}, but {recorded} is recorded for `{target_tag}` in {}: give the tag alone, or the recorded digest",
            args.env
        ))
        .into());
    }
    // Resolved by the bare tag, so a tag re-pointed since it was recorded is caught below.
    let reference = release.image_ref(&args.env, &target_tag)?;
    // What the Ledger entry gets: a pinned entry keeps being pinned, to the recorded bytes.
    let target = if current.contains('@') {
        format!("{target_tag}@{recorded}")
    } else {
        target_tag.clone()
    };
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

    // The Ledger write is tried now (dry run), before an EC2 fleet is changed and before a
    // dry run reports success: a value the patcher cannot write, or a change that landed
    // since the history was read, refuses here with nothing deployed or written.
    let trailers = args.change.trailers(
        "rollback",
        &recorded,
        &target_tag,
        None,
        requested_by.as_deref(),
    );
    let revert = forge_ledger::Revert {
        file: file.clone(),
        selector,
        to: Some(target.clone()),
        subject: Some((args.service.clone(), args.env.clone())),
        trailers,
        dry_run: true,
        // Compare-and-swap against the value this rollback was proven against: a
        // promotion that landed during the checks or the EC2 redeploy is not overwritten.
        expect: Some(current.clone()),
    };
    ledger
        .revert(&revert)
        .map_err(release::ledger_error)
        .with_context(|| {
            format!(
                "the Ledger would refuse the rollback of {} in {} to {target}; nothing was deployed or written",
                args.service, args.env
            )
        })?;

    let ec2_deploy = match release.service_config.kind {
        ServiceKind::Ec2 => Some(crate::ec2_release::prepare(
            &release,
            "rollback",
            &args.env,
            &target_tag,
            &recorded,
        )?),
        ServiceKind::Argocd => None,
    };

    if args.change.dry_run {
        match args.change.output {
            output::Format::Json => output::print_json(&serde_json::json!({
                "dry_run": true,
                "action": "rollback",
                "service": args.service,
                "environment": args.env,
                "from": current,
                "to": target,
                "image": reference,
                "digest": recorded,
                "proven": true,
            }))?,
            output::Format::Text => output::print_stdout(&format!(
                "dry run: would roll {} in {} back from {current} to {target}\n  image:  {reference} = {recorded} (proven)\nnothing was written\n",
                args.service, args.env
            ))?,
        }
        return Ok(ExitCode::SUCCESS);
    }

    let ec2 = match ec2_deploy {
        Some(prepared) => {
            Some(crate::ec2_release::deploy(&release, &args.env, prepared, &recorded).await?)
        }
        None => None,
    };
    let outcome = ledger
        .revert(&forge_ledger::Revert {
            dry_run: false,
            ..revert
        })
        .map_err(release::ledger_error)
        .with_context(|| match &ec2 {
            // The fleet already runs the rollback tag: say so, the Ledger and the instances
            // disagree until someone reconciles them.
            Some(_) => format!(
                "the EC2 instances now run {target_tag}, but the Ledger was not updated (it said {current} when this rollback started; the cause below says what it holds now): the fleet and the Ledger disagree: the Ledger is the record, so put the fleet on the Ledger's tag (named below) with `forge ec2 rollback --env {0} --service {1} --to-tag <that tag>` (allowed in either direction; `forge ec2 status --env {0} --service {1}` then shows each instance's tag against the Ledger's)", args.env, args.service
            ),
            None => format!("the Ledger was not updated; {} in {} still runs {current}", args.service, args.env),
        })?;

    let evidence = Evidence {
        action: "rollback",
        service: args.service.clone(),
        environment: args.env.clone(),
        from_environment: None,
        build_id: target_tag.clone(),
        source: ImageEvidence {
            reference: reference.clone(),
            digest: recorded.clone(),
        },
        source_digest_unrecorded: false,
        destination: ImageEvidence {
            reference: reference.clone(),
            digest: resolved.digest.to_string(),
        },
        verification: Verification {
            verified: true,
            already_present: true,
            referrers_copied: 0,
            manifests_pushed: 0,
            referrers_unchecked: None,
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
