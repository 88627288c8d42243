//! `forge promote`: policy first, then copy `from` → `to` with the digest proven, then the
//! Ledger (or, for EC2 services, the SSM deploy and then the Ledger). Nothing is written to the
//! Ledger unless the copy verified.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;

use crate::config::ServiceKind;
use crate::output::{self, Format, InvalidInput};
use crate::policy;
use crate::release::{self, Evidence, ImageEvidence, LedgerEvidence, Release, Verification};

/// `forge promote`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service name (`[services.<name>]` in the config).
    #[arg(long)]
    service: String,
    /// Target environment; the image comes from its `from` environment.
    #[arg(long)]
    to: String,
    /// Tag (build id) to promote; default: the tag the `from` environment runs per the Ledger.
    /// Required for an environment without `from` (CI recording a new build).
    #[arg(long)]
    tag: Option<String>,
    /// Do not copy OCI referrers (signatures, SBOMs) with the image: for a source whose
    /// referrers cannot be copied (nested deeper than 4 levels, or a failing referrers API).
    #[arg(long)]
    no_referrers: bool,
    /// Promote what the `from` environment's tag points to now when the Ledger's history
    /// records no digest for it (the tag was set by hand, or before Forge). Without it such a
    /// promotion is refused: Forge cannot prove the bytes are the ones CI built. The commit
    /// and the evidence say the source digest was unrecorded.
    #[arg(long)]
    allow_unrecorded_digest: bool,
    #[command(flatten)]
    change: release::ChangeArgs,
}

/// What the `from` environment's Ledger history says about a tag.
enum SourceRecord {
    /// The digest recorded for the tag: from the newest Ledger commit that set the tag and
    /// recorded one, by its pin (`TAG@sha256:…`) or its `Forge-Digest` trailer (a hand-made
    /// commit of the same tag without either is skipped).
    Recorded(String),
    /// The tag ran there, but no commit recorded its digest (set by hand, or before Forge).
    Unrecorded,
    /// No commit ever set the tag there: promoting it would skip that environment.
    NeverRan,
}

fn source_record(
    ledger: &forge_ledger::Ledger,
    file: &str,
    selector: &forge_ledger::Selector,
    tag: &str,
) -> anyhow::Result<SourceRecord> {
    let history = ledger
        .history(file, selector)
        .map_err(release::ledger_error)
        .with_context(|| format!("cannot read the Ledger history of {file}"))?;
    if let Some(digest) = history
        .iter()
        .find_map(|entry| release::recorded_digest(entry, tag))
    {
        return Ok(SourceRecord::Recorded(digest));
    }
    let ran = history
        .iter()
        .any(|entry| entry.value.split('@').next() == Some(tag));
    Ok(if ran {
        SourceRecord::Unrecorded
    } else {
        SourceRecord::NeverRan
    })
}

/// Runs `forge promote`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let failure = args
        .change
        .failure_record("promote", &args.service, &args.to);
    let result = crate::runtime()?.block_on(promote(args));
    if let Err(e) = &result {
        failure.write(e);
    }
    result
}

async fn promote(args: Args) -> anyhow::Result<ExitCode> {
    let started = SystemTime::now();
    let release = Release::open(&args.change.config, &args.service)?;
    let to_env = release.environment(&args.to)?.clone();
    let requested_by = args.change.requester();

    // Policy before anything is read or written.
    policy::check_approval(
        &args.to,
        to_env.approval,
        requested_by.as_deref(),
        args.change.approved_by.as_deref(),
    )?;
    let pattern = release.config().policy.tag_pattern.clone();
    if let Some(tag) = &args.tag {
        policy::check_tag(tag, pattern.as_deref())?;
    }

    let ledger = release.ledger()?;
    let selector = release.selector();
    let file = release.manifest(&args.to)?;
    let current = ledger.get(&file, &selector).with_context(|| {
        format!(
            "cannot read {}'s current tag from the Ledger ({file})",
            args.to
        )
    })?;

    let tag = match (&args.tag, &to_env.from) {
        (Some(tag), _) => tag.clone(),
        (None, Some(from)) => {
            let from_file = release.manifest(from)?;
            let found = ledger.get(&from_file, &selector).with_context(|| {
                format!("cannot read the tag {from} runs from the Ledger ({from_file})")
            })?;
            policy::check_tag(&found.value, pattern.as_deref()).map_err(|e| {
                InvalidInput(format!(
                    "{from} runs `{}` per the Ledger, which cannot be promoted: {}",
                    found.value, e.0
                ))
            })?;
            found.value
        }
        (None, None) => {
            return Err(InvalidInput(format!(
                "--tag is required for {}: it has no `from` environment, so the tag must be the build id CI pushed \
                 (e.g. --tag $(Build.BuildId))",
                args.to
            ))
            .into());
        }
    };

    let destination = release.image_ref(&args.to, &tag)?;
    // Whether the source digest comes from the Ledger's record (the bytes the `from`
    // environment was given) or, by explicit choice, from what its tag points to now.
    let mut source_recorded = true;
    let source = match &to_env.from {
        // The bytes the `from` environment recorded for this tag, not whatever the tag points
        // to now: the digest in Prod is the digest CI built.
        Some(from) => {
            let image = release.image_ref(from, &tag)?;
            let from_file = release.manifest(from)?;
            match source_record(&ledger, &from_file, &selector, &tag)? {
                SourceRecord::Recorded(digest) => format!("{image}@{digest}"),
                // Not a missing record but a skipped stage: no flag promotes it.
                SourceRecord::NeverRan => {
                    return Err(InvalidInput(format!(
                        "{tag} never ran in {from}: no commit in {from}'s Ledger history ({from_file}) set it, and {to} takes \
                         only what {from} ran; nothing was copied or written. Promote it to {from} first \
                         (forge promote --service {service} --to {from} --tag {tag}), then to {to}",
                        to = args.to,
                        service = args.service
                    ))
                    .into());
                }
                SourceRecord::Unrecorded if args.allow_unrecorded_digest => {
                    tracing::warn!(
                        "{from}'s Ledger history records no digest for {tag}; promoting what {image} points to now, as --allow-unrecorded-digest asks"
                    );
                    source_recorded = false;
                    image
                }
                SourceRecord::Unrecorded => {
                    return Err(InvalidInput(format!(
                        "{from}'s Ledger history ({from_file}) records no digest for {tag}: no Forge commit set it \
                         (it was set by hand or before Forge), so Forge cannot prove {image} still holds the bytes {from} was given; \
                         nothing was copied or written. Check that {image} is the build CI made, then pass --allow-unrecorded-digest \
                         to promote what the tag points to now (the Ledger commit and the evidence will say so); \
                         tags Forge sets from now on record their digest"
                    ))
                    .into());
                }
            }
        }
        None => destination.clone(),
    };
    let envs: Vec<&str> = to_env
        .from
        .iter()
        .map(String::as_str)
        .chain([args.to.as_str()])
        .collect();
    let client = release.registry_client(&envs).await?;
    let src_ref: forge_registry::Reference = source.parse().map_err(release::refused)?;
    let dst_ref: forge_registry::Reference = destination.parse().map_err(release::refused)?;

    // Everything that could still refuse the Ledger write (the expect-tag check, the guard
    // against older builds, a pin that needs a digest) is checked now, before anything is
    // copied or deployed: a refusal leaves no tag pushed.
    let resolved = client
        .resolve(&src_ref)
        .await
        .map_err(release::registry_error)?;
    let ledger_value = |digest: &str| match &current.digest {
        Some(_) => format!("{tag}@{digest}"),
        None => tag.clone(),
    };
    ledger
        .set_tag(&forge_ledger::SetTag {
            file: file.clone(),
            selector: selector.clone(),
            tag: ledger_value(resolved.digest.as_str()),
            expect_tag: Some(current.value.clone()),
            subject: Some((args.service.clone(), args.to.clone())),
            dry_run: true,
            ..forge_ledger::SetTag::default()
        })
        .map_err(release::ledger_error)
        .with_context(|| {
            format!(
                "the Ledger would refuse {tag} for {}; nothing was copied or written",
                args.to
            )
        })?;

    // An EC2 service's deploy is checked now too (config keys, compose file, image pin).
    let ec2_deploy = match release.service_config.kind {
        ServiceKind::Ec2 => Some(crate::ec2_release::prepare(
            &release,
            "promote",
            &args.to,
            &tag,
            resolved.digest.as_str(),
        )?),
        ServiceKind::Argocd => None,
    };

    if args.change.dry_run {
        let plan = serde_json::json!({
            "dry_run": true,
            "service": args.service,
            "environment": args.to,
            "tag": tag,
            "source": source,
            "source_digest": resolved.digest.to_string(),
            "source_digest_unrecorded": !source_recorded,
            "destination": destination,
            "ledger": { "file": file, "old": current.value, "new": tag },
            "requested_by": requested_by,
            "approved_by": args.change.approved_by,
        });
        match args.change.output {
            Format::Json => output::print_json(&plan)?,
            Format::Text => output::print_stdout(&format!(
                "dry run: would promote {} {tag} to {}\n  copy:   {source}\n          -> {destination}\n  digest: {}\n  ledger: {file} {} -> {tag}\nnothing was copied or written\n",
                args.service, args.to, resolved.digest, current.value
            ))?,
        }
        return Ok(ExitCode::SUCCESS);
    }

    let verification = if to_env.from.is_some() {
        let options = forge_registry::CopyOptions {
            // As configured: the library anchors it, and its messages then show what the
            // user wrote.
            tag_pattern: pattern.as_deref().map(regex::Regex::new).transpose()?,
            support_hint: support_hint(&release),
            referrers: !args.no_referrers,
            ..forge_registry::CopyOptions::default()
        };
        let report = client
            .copy(&src_ref, &dst_ref, &options)
            .await
            .map_err(release::registry_error)?;
        anyhow::ensure!(
            report.verified,
            "copy of {source} to {destination} finished unverified; the Ledger was not changed"
        );
        (
            report.digest.to_string(),
            Verification {
                verified: report.verified,
                already_present: report.already_present,
                referrers_copied: u64::from(report.referrers_copied),
                manifests_pushed: u64::from(report.manifests_pushed),
                referrers_unchecked: report.referrers_unchecked.clone(),
                blobs_copied: report.blobs_copied as u64,
                blobs_skipped: report.blobs_skipped as u64,
                bytes_copied: report.bytes_copied,
            },
        )
    } else {
        // CI already pushed to this environment: prove the tag exists and is complete.
        let resolved = client
            .resolve(&dst_ref)
            .await
            .map_err(release::registry_error)?;
        client
            .verify(&dst_ref, &resolved.digest)
            .await
            .map_err(release::registry_error)?;
        (
            resolved.digest.to_string(),
            Verification {
                verified: true,
                already_present: true,
                referrers_copied: 0,
                manifests_pushed: 0,
                referrers_unchecked: None,
                blobs_copied: 0,
                blobs_skipped: 0,
                bytes_copied: 0,
            },
        )
    };
    let (digest, verification) = verification;

    let ec2 = match ec2_deploy {
        Some(prepared) => {
            Some(crate::ec2_release::deploy(&release, &args.to, prepared, &digest).await?)
        }
        None => None,
    };

    let mut trailers = args.change.trailers(
        "promote",
        &digest,
        &tag,
        Some(&source),
        requested_by.as_deref(),
    );
    if !source_recorded {
        trailers.push((
            release::trailer::UNRECORDED_SOURCE.to_owned(),
            "allowed by --allow-unrecorded-digest".to_owned(),
        ));
    }
    let outcome = ledger
        .set_tag(&forge_ledger::SetTag {
            file: file.clone(),
            selector,
            // A digest-pinned entry gets the digest just proven at the destination, so the
            // pin always names the bytes the tag was promoted with.
            tag: ledger_value(&digest),
            expect_tag: Some(current.value.clone()),
            subject: Some((args.service.clone(), args.to.clone())),
            trailers,
            ..forge_ledger::SetTag::default()
        })
        .map_err(release::ledger_error)
        .with_context(|| match &ec2 {
            // The fleet has been redeployed already: say so, the Ledger and the instances
            // now disagree until someone reconciles them.
            Some(_) => format!(
                "the image is verified at {destination} and the EC2 instances now run {tag}, but the Ledger was not updated (it said {} when this promotion started; the cause below says what it holds now): the fleet and the Ledger disagree: the Ledger is the record, so put the fleet on the Ledger's tag (named below) with `forge ec2 rollback --env {1} --service {2} --to-tag <that tag>` (allowed in either direction; `forge ec2 status --env {1} --service {2}` then shows each instance's tag against the Ledger's), or promote again",
                current.value, args.to, args.service
            ),
            None => {
                format!("the image is verified at {destination}, but the Ledger was not updated")
            }
        })?;

    let evidence = Evidence {
        action: "promote",
        service: args.service.clone(),
        environment: args.to.clone(),
        from_environment: to_env.from.clone(),
        build_id: tag.clone(),
        source: ImageEvidence {
            reference: source.clone(),
            digest: digest.clone(),
        },
        source_digest_unrecorded: !source_recorded,
        destination: ImageEvidence {
            reference: destination.clone(),
            digest: digest.clone(),
        },
        verification,
        ledger: LedgerEvidence {
            file: outcome.file.clone(),
            old: outcome.old.clone(),
            new: outcome.new.clone(),
            commit: outcome.commit.clone(),
            attempts: outcome.attempts,
        },
        ec2,
        requested_by: requested_by.clone(),
        approved_by: args.change.approved_by.clone(),
        started_at: output::rfc3339(started),
        finished_at: output::rfc3339(SystemTime::now()),
        forge_version: env!("CARGO_PKG_VERSION"),
    };
    args.change.finish(&evidence, &describe(&evidence))
}

fn describe(e: &Evidence) -> String {
    let v = &e.verification;
    let copy = if e.from_environment.is_none() {
        "tag present and complete in the registry (recorded as pushed by CI)".to_owned()
    } else if v.already_present && v.manifests_pushed == 0 && v.blobs_copied == 0 {
        "already present at the destination with this digest: nothing uploaded".to_owned()
    } else if v.already_present {
        format!(
            "already present at the destination with this digest; referrers brought up to date ({} copied, {} manifests pushed, {} blobs, {} bytes)",
            v.referrers_copied, v.manifests_pushed, v.blobs_copied, v.bytes_copied
        )
    } else {
        format!(
            "{} blobs copied, {} already present, {} bytes",
            v.blobs_copied, v.blobs_skipped, v.bytes_copied
        )
    };
    let copy = match &v.referrers_unchecked {
        Some(why) => format!("{copy}; referrers not compared: {why}"),
        None => copy,
    };
    let ledger = match &e.ledger.commit {
        Some(commit) => format!(
            "{} {} -> {}, commit {} ({} attempt{})",
            e.ledger.file,
            e.ledger.old,
            e.ledger.new,
            &commit[..commit.len().min(12)],
            e.ledger.attempts,
            if e.ledger.attempts == 1 { "" } else { "s" }
        ),
        None => format!("{} already at {}: no commit", e.ledger.file, e.ledger.new),
    };
    let unrecorded = if e.source_digest_unrecorded {
        "  note:        the source digest was not recorded in the Ledger; promoted what the tag pointed to (--allow-unrecorded-digest)\n"
    } else {
        ""
    };
    format!(
        "promoted {} {} to {}\n  source:      {}\n  destination: {}\n  digest:      {} (verified at the destination)\n  copy:        {copy}\n  ledger:      {ledger}\n{unrecorded}",
        e.service,
        e.build_id,
        e.environment,
        e.source.reference,
        e.destination.reference,
        e.destination.digest
    )
}

fn support_hint(release: &Release) -> String {
    format!(
        "repositories are provisioned by the Platform team via Blueprint — ask in {}",
        release.config().policy.support
    )
}
