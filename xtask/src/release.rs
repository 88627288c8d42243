//! `cargo xtask release --version X.Y.Z [--dry-run] [--target TRIPLE]…`
//!
//! Order, chosen so a release never ships binaries that report the wrong version and a failure
//! leaves nothing half-written:
//!
//! 1. preflight (read-only): the version is valid semver and greater than the workspace version;
//!    the tree is clean; there are commits since the last `v*` tag; `forge-cli` has both binaries;
//!    README.md and the licence files exist; `dist/` is empty; the targets are installed.
//! 2. `cargo xtask ci` (in-process).
//! 3. bump `[workspace.package] version` (and the workspace entries of Cargo.lock) and prepend the
//!    CHANGELOG entry — before building, so `forge --version` says X.Y.Z.
//! 4. `cargo build --release` of `forge` and `forge-refresh-env` per target (LTO + strip come
//!    from the workspace's release profile).
//! 5. `dist/forge-X.Y.Z-<target>.tar.gz` (a top directory holding both binaries, README.md,
//!    LICENSE-MIT, LICENSE-APACHE; reproducible: sorted names, owner 0, mtime of HEAD, gzip -n),
//!    `dist/forge-X.Y.Z.cdx.json` (CycloneDX 1.5 SBOM from `cargo metadata`), `dist/SHA256SUMS`.
//!
//! Dates (the CHANGELOG entry, the SBOM timestamp, archive mtimes) come from `SOURCE_DATE_EPOCH`
//! or else the HEAD commit time, so running the same release twice gives the same bytes.
//!
//! When any step after the bump fails, Cargo.toml, Cargo.lock and CHANGELOG.md get their previous
//! bytes back and the files written to `dist/` are removed. `--dry-run` runs the read-only
//! preflight and prints every step and file without building or writing (a dirty tree is then
//! reported instead of refused, so the preview works while developing).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::util::{cargo, root, run_cmd};

const USAGE: &str = "usage: cargo xtask release --version X.Y.Z [--dry-run] [--target TRIPLE]...

  --version X.Y.Z   the new version: semver, greater than [workspace.package] version
  --dry-run         check the inputs and print every step and file, building and writing nothing
  --target TRIPLE   build and package for this target (repeatable; default: the host)";

/// The package that holds the released binaries, and the binaries.
const CLI_PACKAGE: &str = "forge-cli";
const BINARIES: [&str; 2] = ["forge", "forge-refresh-env"];
/// Files shipped next to the binaries in every archive.
const DOC_FILES: [&str; 3] = ["README.md", "LICENSE-MIT", "LICENSE-APACHE"];

/// Runs the release task.
pub fn release(args: &[String]) -> Result<(), String> {
    let options = parse_args(args)?;
    let root = root();
    let say = |line: &str| eprintln!("release: {line}");
    if options.dry_run {
        say("DRY RUN: nothing is built or written");
    }

    // 1. Preflight (read-only).
    let cargo_toml_path = root.join("Cargo.toml");
    let cargo_toml = read_text(&cargo_toml_path)?;
    let current: Version = workspace_version(&cargo_toml)?
        .parse()
        .map_err(|e| format!("Cargo.toml [workspace.package] version: {e}"))?;
    check_newer(&current, &options.version)?;
    say(&format!("version {current} -> {}", options.version));

    if let Some(message) = dirty_tree(&git_output(&root, &["status", "--porcelain"])?) {
        if options.dry_run {
            say(&format!("a real release would stop here: {message}"));
        } else {
            return Err(message);
        }
    }

    let last_tag = last_tag(&root);
    let range = last_tag
        .as_ref()
        .map_or_else(|| "HEAD".to_owned(), |t| format!("{t}..HEAD"));
    let subjects: Vec<String> = git_output(&root, &["log", "--no-merges", "--format=%s", &range])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if subjects.is_empty() {
        return Err(format!(
            "no commits since {}: there is nothing to release",
            last_tag.as_deref().unwrap_or("the start of history")
        ));
    }
    say(&format!(
        "{} commits since {}",
        subjects.len(),
        last_tag
            .as_deref()
            .unwrap_or("the first commit (no v* tag yet)")
    ));

    for file in DOC_FILES {
        if !root.join(file).is_file() {
            return Err(format!(
                "{file} is missing at the workspace root: every archive ships it"
            ));
        }
    }

    let metadata = cargo_metadata(&root, None)?;
    check_binaries(&metadata)?;
    let target_dir = metadata
        .get("target_directory")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .ok_or("cargo metadata has no target_directory")?;

    let dist = root.join("dist");
    if let Ok(mut entries) = std::fs::read_dir(&dist)
        && entries.next().is_some()
    {
        return Err(format!(
            "{} is not empty: move or delete the previous release's files first (SHA256SUMS \
             covers exactly one release)",
            dist.display()
        ));
    }

    let targets = if options.targets.is_empty() {
        vec![host_triple()?]
    } else {
        options.targets.clone()
    };
    check_targets_installed(&targets)?;

    let epoch = source_date_epoch(&root)?;
    let date = iso_date(epoch);
    let changelog_path = root.join("CHANGELOG.md");
    let changelog = std::fs::read_to_string(&changelog_path).unwrap_or_else(|_| {
        "# Changelog\n\nAll notable changes to Forge are documented in this file.\n\n## [Unreleased]\n".to_owned()
    });
    let new_changelog = insert_release(&changelog, &options.version, &date, &subjects);
    let new_cargo_toml = set_workspace_version(&cargo_toml, &options.version)?;
    let version = &options.version;
    let archives: Vec<String> = targets
        .iter()
        .map(|t| format!("forge-{version}-{t}.tar.gz"))
        .collect();
    let sbom_name = format!("forge-{version}.cdx.json");

    if options.dry_run {
        say(
            "step 2: would run `cargo xtask ci` (fmt, clippy -D warnings, all tests with CI=true, cargo deny)",
        );
        say(&format!(
            "step 3: would write Cargo.toml: [workspace.package] version = \"{version}\" (and the workspace entries of Cargo.lock)"
        ));
        say("step 3: would prepend to CHANGELOG.md:");
        for line in release_section(&new_changelog, version).lines() {
            eprintln!("    | {line}");
        }
        for target in &targets {
            say(&format!(
                "step 4: would run `cargo build --release --locked -p {CLI_PACKAGE} --bin forge --bin forge-refresh-env --target {target}`"
            ));
        }
        for (target, archive) in targets.iter().zip(&archives) {
            say(&format!(
                "step 5: would write dist/{archive} (forge-{version}-{target}/: {}, {})",
                BINARIES.join(", "),
                DOC_FILES.join(", ")
            ));
        }
        let sbom_preview = sbom(&target_metadata(&root, &targets)?, version, epoch)?;
        let count = sbom_preview
            .get("components")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        say(&format!(
            "step 5: would write dist/{sbom_name} (CycloneDX 1.5, {count} components)"
        ));
        say(&format!(
            "step 5: would write dist/SHA256SUMS ({} lines: {}, {sbom_name})",
            archives.len() + 1,
            archives.join(", ")
        ));
        say("dry run complete: nothing was built or written");
        return Ok(());
    }

    // 2. Everything CI checks, on the exact tree being released.
    say("step 2: cargo xtask ci");
    crate::ci::ci(&[])?;

    // 3..5 with restore-on-failure.
    let cargo_lock_path = root.join("Cargo.lock");
    let mut guard = Restore::new();
    guard.remember(&cargo_toml_path)?;
    guard.remember(&cargo_lock_path)?;
    guard.remember(&changelog_path)?;
    guard.created(dist.clone());

    say("step 3: bump the workspace version and the CHANGELOG");
    write_atomic(&cargo_toml_path, new_cargo_toml.as_bytes())?;
    // Refreshes the workspace members' versions in Cargo.lock; no registry is consulted.
    run_cmd(Command::new(cargo()).args(["update", "--workspace", "--offline"]))?;
    write_atomic(&changelog_path, new_changelog.as_bytes())?;

    std::fs::create_dir_all(&dist).map_err(|e| format!("create {}: {e}", dist.display()))?;
    let mut sums = String::new();
    for (target, archive) in targets.iter().zip(&archives) {
        say(&format!("step 4: build {target}"));
        run_cmd(Command::new(cargo()).args([
            "build",
            "--release",
            "--locked",
            "-p",
            CLI_PACKAGE,
            "--bin",
            BINARIES[0],
            "--bin",
            BINARIES[1],
            "--target",
            target,
        ]))?;
        let bin_dir = target_dir.join(target).join("release");
        let top = format!("forge-{version}-{target}");
        say(&format!("step 5: package dist/{archive}"));
        package(&root, &bin_dir, &dist, &top, archive, epoch)?;
        sums.push_str(&sha256sums_line(
            &sha256_file(&dist.join(archive))?,
            archive,
        ));
    }

    say(&format!("step 5: SBOM dist/{sbom_name}"));
    let bom = sbom(&target_metadata(&root, &targets)?, version, epoch)?;
    let mut bom_text = serde_json::to_string_pretty(&bom).map_err(|e| e.to_string())?;
    bom_text.push('\n');
    write_atomic(&dist.join(&sbom_name), bom_text.as_bytes())?;
    sums.push_str(&sha256sums_line(
        &sha256_file(&dist.join(&sbom_name))?,
        &sbom_name,
    ));
    write_atomic(&dist.join("SHA256SUMS"), sums.as_bytes())?;

    guard.disarm();
    say(&format!("released {version}: dist/ holds"));
    for line in sums.lines() {
        eprintln!("    {line}");
    }
    say(&format!(
        "next: git commit -m \"Release {version}\" -- Cargo.toml Cargo.lock CHANGELOG.md && git tag v{version}, then publish dist/"
    ));
    Ok(())
}

/// The new version must sort after the current one (semver precedence).
fn check_newer(current: &Version, new: &Version) -> Result<(), String> {
    if new > current {
        Ok(())
    } else {
        Err(format!(
            "--version {new} is not greater than the current workspace version {current}: pick a \
             higher version (semver precedence)"
        ))
    }
}

/// The refusal for a dirty tree from `git status --porcelain` output (`None` when clean).
fn dirty_tree(porcelain: &str) -> Option<String> {
    if porcelain.trim().is_empty() {
        return None;
    }
    let listing: Vec<&str> = porcelain.lines().take(10).collect();
    let more = porcelain.lines().count().saturating_sub(listing.len());
    Some(format!(
        "the working tree is not clean; commit or remove these first (a release must be built \
         from a commit):\n  {}{}",
        listing.join("\n  "),
        if more > 0 {
            format!("\n  … and {more} more")
        } else {
            String::new()
        }
    ))
}

#[derive(Debug, PartialEq, Eq)]
struct Options {
    version: Version,
    dry_run: bool,
    targets: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut version = None;
    let mut dry_run = false;
    let mut targets = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| iter.next().cloned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match flag {
            "--version" => {
                let text = value("--version")?;
                version = Some(
                    text.parse::<Version>()
                        .map_err(|e| format!("--version {text}: {e}"))?,
                );
            }
            "--target" => {
                let triple = value("--target")?;
                if !triple
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                {
                    return Err(format!(
                        "--target {triple}: not a target triple (e.g. x86_64-unknown-linux-gnu)"
                    ));
                }
                if !targets.contains(&triple) {
                    targets.push(triple);
                }
            }
            "--dry-run" if inline.is_none() => dry_run = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown release option `{other}`\n\n{USAGE}")),
        }
    }
    let version = version.ok_or_else(|| format!("--version is required\n\n{USAGE}"))?;
    Ok(Options {
        version,
        dry_run,
        targets,
    })
}

/// A semantic version (semver 2.0.0) without build metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<PreId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PreId {
    Numeric(u64),
    Alpha(String),
}

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.strip_prefix('v').unwrap_or(s);
        if s.contains('+') {
            return Err(
                "build metadata (`+…`) is not used for releases; give MAJOR.MINOR.PATCH[-PRE]"
                    .into(),
            );
        }
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (s, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        let [major, minor, patch] = parts.as_slice() else {
            return Err(format!(
                "`{s}` is not a semantic version: expected MAJOR.MINOR.PATCH such as 1.4.0"
            ));
        };
        let number = |part: &str, what: &str| -> Result<u64, String> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{what} `{part}` of `{s}` is not a number"));
            }
            if part.len() > 1 && part.starts_with('0') {
                return Err(format!("{what} `{part}` of `{s}` has a leading zero"));
            }
            part.parse()
                .map_err(|_| format!("{what} `{part}` of `{s}` is too large"))
        };
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => pre
                .split('.')
                .map(|id| {
                    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        Err(format!(
                            "pre-release identifier `{id}` of `{s}` must be non-empty [0-9A-Za-z-]"
                        ))
                    } else if id.bytes().all(|b| b.is_ascii_digit()) {
                        number(id, "pre-release identifier").map(PreId::Numeric)
                    } else {
                        Ok(PreId::Alpha(id.to_owned()))
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Version {
            major: number(major, "major")?,
            minor: number(minor, "minor")?,
            patch: number(patch, "patch")?,
            pre,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        for (i, id) in self.pre.iter().enumerate() {
            f.write_str(if i == 0 { "-" } else { "." })?;
            match id {
                PreId::Numeric(n) => write!(f, "{n}")?,
                PreId::Alpha(a) => f.write_str(a)?,
            }
        }
        Ok(())
    }
}

impl Ord for Version {
    /// Semver precedence: numeric core, then a pre-release sorts before the release; pre-release
    /// identifiers compare numerically when numeric, numeric < alphanumeric, shorter < longer.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let order = match (a, b) {
                            (PreId::Numeric(x), PreId::Numeric(y)) => x.cmp(y),
                            (PreId::Numeric(_), PreId::Alpha(_)) => Ordering::Less,
                            (PreId::Alpha(_), PreId::Numeric(_)) => Ordering::Greater,
                            (PreId::Alpha(x), PreId::Alpha(y)) => x.cmp(y),
                        };
                        if order != Ordering::Equal {
                            return order;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Finds the `version = "…"` line of `[workspace.package]`: (line index, value).
fn find_workspace_version(cargo_toml: &str) -> Result<(usize, String), String> {
    let mut in_section = false;
    for (i, line) in cargo_toml.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_section = trimmed == "[workspace.package]";
            continue;
        }
        if !in_section {
            continue;
        }
        let Some(rest) = trimmed.strip_prefix("version") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.trim();
        let Some(inner) = value.strip_prefix('"').and_then(|v| v.split_once('"')) else {
            return Err(format!(
                "Cargo.toml line {}: [workspace.package] version is not a quoted string",
                i + 1
            ));
        };
        return Ok((i, inner.0.to_owned()));
    }
    Err("Cargo.toml has no `version = \"…\"` in [workspace.package]".into())
}

/// The `[workspace.package] version` of a root Cargo.toml.
fn workspace_version(cargo_toml: &str) -> Result<String, String> {
    find_workspace_version(cargo_toml).map(|(_, v)| v)
}

/// `cargo_toml` with `[workspace.package] version` set to `new`; every other byte unchanged.
fn set_workspace_version(cargo_toml: &str, new: &Version) -> Result<String, String> {
    let (index, old) = find_workspace_version(cargo_toml)?;
    let mut out = String::with_capacity(cargo_toml.len() + 8);
    for (i, line) in cargo_toml.split_inclusive('\n').enumerate() {
        if i == index {
            out.push_str(&line.replacen(&format!("\"{old}\""), &format!("\"{new}\""), 1));
        } else {
            out.push_str(line);
        }
    }
    Ok(out)
}

/// One line of a `sha256sum` file: hex digest, two spaces (text mode), file name.
fn sha256sums_line(hex: &str, file_name: &str) -> String {
    format!("{hex}  {file_name}\n")
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(lower_hex(&hasher.finalize()))
}

fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Moves the `[Unreleased]` notes into a new `## [X.Y.Z] - DATE` section placed right below an
/// emptied `## [Unreleased]`, followed by the commit subjects since the last tag. A changelog
/// without an Unreleased heading gets the section before its first `## ` heading.
fn insert_release(changelog: &str, version: &Version, date: &str, subjects: &[String]) -> String {
    let lines: Vec<&str> = changelog.lines().collect();
    let is_heading = |l: &str| l.starts_with("## ");
    let unreleased = lines
        .iter()
        .position(|l| is_heading(l) && l.to_ascii_lowercase().contains("[unreleased]"));
    let (head_end, body, tail_start) = match unreleased {
        Some(i) => {
            let end = lines[i + 1..]
                .iter()
                .position(|l| is_heading(l))
                .map_or(lines.len(), |p| i + 1 + p);
            (i + 1, lines[i + 1..end].join("\n"), end)
        }
        None => {
            let first = lines
                .iter()
                .position(|l| is_heading(l))
                .unwrap_or(lines.len());
            (first, String::new(), first)
        }
    };
    let mut out = String::new();
    for line in &lines[..head_end] {
        out.push_str(line);
        out.push('\n');
    }
    if unreleased.is_none() {
        out.push_str("## [Unreleased]\n");
    }
    out.push('\n');
    out.push_str(&format!("## [{version}] - {date}\n\n"));
    let body = body.trim();
    if !body.is_empty() {
        out.push_str(body);
        out.push_str("\n\n");
    }
    out.push_str("### Commits\n\n");
    for subject in subjects {
        out.push_str(&format!("- {}\n", subject.trim()));
    }
    if tail_start < lines.len() {
        out.push('\n');
        for line in &lines[tail_start..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The `## [X.Y.Z]` section of a changelog (for the dry-run preview).
fn release_section(changelog: &str, version: &Version) -> String {
    let heading = format!("## [{version}]");
    let mut out = String::new();
    let mut inside = false;
    for line in changelog.lines() {
        if line.starts_with("## ") {
            inside = line.starts_with(&heading);
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn iso_date(epoch: i64) -> String {
    let (y, m, d) = civil_from_days(epoch.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

fn rfc3339(epoch: i64) -> String {
    let secs = epoch.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        iso_date(epoch),
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A name-based UUID (RFC 9562 version 8, "custom") from a SHA-256 of `seed`: the same
/// dependency tree and version give the same serial number, so the SBOM is reproducible.
fn uuid_from(seed: &[u8]) -> String {
    let hash = Sha256::digest(seed);
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = lower_hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn purl(name: &str, version: &str) -> String {
    format!("pkg:cargo/{name}@{version}")
}

fn licenses(package: &Value) -> Option<Value> {
    if let Some(expr) = package.get("license").and_then(Value::as_str) {
        return Some(json!([{ "expression": expr }]));
    }
    package
        .get("license_file")
        .and_then(Value::as_str)
        .map(|file| json!([{ "license": { "name": format!("see {file} in the crate") } }]))
}

/// What `forge-cli` links per one `cargo metadata` document: components and dependency edges
/// keyed by purl, and the root package.
struct Shipped {
    root_package: Value,
    components: BTreeMap<String, Value>,
    dependencies: BTreeMap<String, BTreeSet<String>>,
}

/// Every package reachable from `forge-cli` through normal and build dependencies in
/// `cargo metadata --format-version 1` output (dev-dependencies are not shipped).
fn shipped(metadata: &Value, version: &Version) -> Result<Shipped, String> {
    let packages = metadata
        .get("packages")
        .and_then(Value::as_array)
        .ok_or("cargo metadata: no `packages`")?;
    let nodes = metadata
        .pointer("/resolve/nodes")
        .and_then(Value::as_array)
        .ok_or("cargo metadata: no `resolve.nodes` (was --no-deps used?)")?;
    let package_by_id = |id: &str| {
        packages
            .iter()
            .find(|p| p.get("id").and_then(Value::as_str) == Some(id))
    };
    let node_by_id = |id: &str| {
        nodes
            .iter()
            .find(|n| n.get("id").and_then(Value::as_str) == Some(id))
    };
    let members: Vec<&str> = metadata
        .get("workspace_members")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let root_package = packages
        .iter()
        .find(|p| {
            p.get("name").and_then(Value::as_str) == Some(CLI_PACKAGE)
                && p.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| members.contains(&id))
        })
        .ok_or_else(|| format!("cargo metadata: workspace member `{CLI_PACKAGE}` not found"))?;
    let root_id = root_package
        .get("id")
        .and_then(Value::as_str)
        .ok_or("package without id")?;

    let field = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let purl_of = |id: &str| {
        package_by_id(id).map(|p| {
            if id == root_id {
                purl(&field(p, "name"), &version.to_string())
            } else {
                purl(&field(p, "name"), &field(p, "version"))
            }
        })
    };
    // Shipped dependencies of a node: any dep_kind other than dev.
    let shipped_deps = |id: &str| -> Vec<String> {
        let Some(node) = node_by_id(id) else {
            return Vec::new();
        };
        node.get("deps")
            .and_then(Value::as_array)
            .map(|deps| {
                deps.iter()
                    .filter(|d| {
                        d.get("dep_kinds")
                            .and_then(Value::as_array)
                            .is_some_and(|kinds| {
                                kinds
                                    .iter()
                                    .any(|k| k.get("kind").and_then(Value::as_str) != Some("dev"))
                            })
                    })
                    .filter_map(|d| d.get("pkg").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };

    let mut reached: Vec<String> = vec![root_id.to_owned()];
    let mut queue = vec![root_id.to_owned()];
    while let Some(id) = queue.pop() {
        for dep in shipped_deps(&id) {
            if !reached.contains(&dep) {
                reached.push(dep.clone());
                queue.push(dep);
            }
        }
    }

    let mut components = BTreeMap::new();
    let mut dependencies = BTreeMap::new();
    for id in &reached {
        let package =
            package_by_id(id).ok_or_else(|| format!("cargo metadata: no package {id}"))?;
        let this_purl = purl_of(id).unwrap_or_default();
        let depends_on: BTreeSet<String> =
            shipped_deps(id).iter().filter_map(|d| purl_of(d)).collect();
        dependencies.insert(this_purl.clone(), depends_on);
        if id == root_id {
            continue;
        }
        let mut component = json!({
            "type": "library",
            "bom-ref": this_purl,
            "name": field(package, "name"),
            "version": field(package, "version"),
            "purl": this_purl,
            "scope": "required",
        });
        if let Some(licenses) = licenses(package)
            && let Some(object) = component.as_object_mut()
        {
            object.insert("licenses".into(), licenses);
        }
        components.insert(this_purl, component);
    }
    Ok(Shipped {
        root_package: root_package.clone(),
        components,
        dependencies,
    })
}

/// CycloneDX 1.5 SBOM of the release: the union over the targets' `cargo metadata
/// --filter-platform` documents of what `forge-cli` links, components sorted by name and
/// version. `metadata.component` is the released application at `version`.
fn sbom(metadatas: &[Value], version: &Version, epoch: i64) -> Result<Value, String> {
    let mut root_package = None;
    let mut by_purl: BTreeMap<String, Value> = BTreeMap::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for metadata in metadatas {
        let part = shipped(metadata, version)?;
        root_package.get_or_insert(part.root_package);
        by_purl.extend(part.components);
        for (from, to) in part.dependencies {
            edges.entry(from).or_default().extend(to);
        }
    }
    let root_package = root_package.ok_or("no cargo metadata to build the SBOM from")?;
    let field = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let mut components: Vec<Value> = by_purl.into_values().collect();
    components.sort_by_key(|c| (field(c, "name"), field(c, "version")));
    let dependencies: Vec<Value> = edges
        .into_iter()
        .map(|(from, to)| json!({ "ref": from, "dependsOn": to }))
        .collect();

    let root_purl = purl(CLI_PACKAGE, &version.to_string());
    let mut root_component = json!({
        "type": "application",
        "bom-ref": root_purl,
        "name": "forge",
        "version": version.to_string(),
        "purl": root_purl,
        "description": "forge and forge-refresh-env: build once, promote everywhere",
    });
    if let Some(licenses) = licenses(&root_package)
        && let Some(object) = root_component.as_object_mut()
    {
        object.insert("licenses".into(), licenses);
    }
    let seed =
        serde_json::to_string(&(&version.to_string(), &components)).map_err(|e| e.to_string())?;
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", uuid_from(seed.as_bytes())),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(epoch),
            "tools": { "components": [{
                "type": "application",
                "name": "cargo-xtask-release",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": root_component,
        },
        "components": components,
        "dependencies": dependencies,
    }))
}

fn check_binaries(metadata: &Value) -> Result<(), String> {
    let bins: Vec<&str> = metadata
        .get("packages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("name").and_then(Value::as_str) == Some(CLI_PACKAGE))
        .flat_map(|p| {
            p.get("targets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter(|t| {
            t.get("kind")
                .and_then(Value::as_array)
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t.get("name").and_then(Value::as_str))
        .collect();
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !bins.contains(b))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{CLI_PACKAGE} has no binary target {} (it has: {}); a release ships {}",
            missing.join(", "),
            bins.join(", "),
            BINARIES.join(" and ")
        ))
    }
}

fn cargo_metadata(root: &Path, platform: Option<&str>) -> Result<Value, String> {
    let mut cmd = Command::new(cargo());
    cmd.args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(root);
    if let Some(platform) = platform {
        cmd.args(["--filter-platform", platform]);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata output: {e}"))
}

/// `cargo metadata --filter-platform T` for every release target.
fn target_metadata(root: &Path, targets: &[String]) -> Result<Vec<Value>, String> {
    targets
        .iter()
        .map(|t| cargo_metadata(root, Some(t)))
        .collect()
}

fn host_triple() -> Result<String, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .map_err(|e| format!("cannot run `{rustc} -vV`: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| format!("`{rustc} -vV` printed no host triple"))
}

/// With rustup, every target must be installed before the (long) CI run starts.
fn check_targets_installed(targets: &[String]) -> Result<(), String> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
    else {
        return Ok(()); // no rustup: cargo will say it when building
    };
    if !out.status.success() {
        return Ok(());
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&String> = targets
        .iter()
        .filter(|t| !installed.lines().any(|l| l.trim() == t.as_str()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        let list: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        Err(format!(
            "target(s) not installed: {}; run `rustup target add {}` (and install a linker for it)",
            list.join(", "),
            list.join(" ")
        ))
    }
}

fn git_output(root: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn last_tag(root: &Path) -> Option<String> {
    git_output(
        root,
        &["describe", "--tags", "--abbrev=0", "--match", "v[0-9]*"],
    )
    .ok()
    .map(|t| t.trim().to_owned())
    .filter(|t| !t.is_empty())
}

/// `SOURCE_DATE_EPOCH` when set (reproducible-builds.org), else the HEAD commit time.
fn source_date_epoch(root: &Path) -> Result<i64, String> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value
            .trim()
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH `{value}` is not a number of seconds"));
    }
    git_output(root, &["log", "-1", "--format=%ct"])?
        .trim()
        .parse()
        .map_err(|e| format!("HEAD commit time: {e}"))
}

/// Stages `top/` with the binaries and docs, then writes `dist/archive` through a temp file.
fn package(
    root: &Path,
    bin_dir: &Path,
    dist: &Path,
    top: &str,
    archive: &str,
    epoch: i64,
) -> Result<(), String> {
    let staging = dist.join(format!(".staging-{}", std::process::id()));
    let dir = staging.join(top);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = (|| {
        for bin in BINARIES {
            let from = bin_dir.join(bin);
            std::fs::copy(&from, dir.join(bin))
                .map_err(|e| format!("copy {}: {e} (did the build produce it?)", from.display()))?;
        }
        for doc in DOC_FILES {
            std::fs::copy(root.join(doc), dir.join(doc)).map_err(|e| format!("copy {doc}: {e}"))?;
        }
        let tmp = dist.join(format!("{archive}.tmp"));
        run_cmd(
            Command::new("tar")
                .args(tar_args(&staging, top, &tmp, epoch))
                .env("LC_ALL", "C"),
        )?;
        std::fs::rename(&tmp, dist.join(archive)).map_err(|e| format!("rename {archive}: {e}"))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// GNU tar arguments for a reproducible archive of `staging/top`.
fn tar_args(staging: &Path, top: &str, out: &Path, epoch: i64) -> Vec<String> {
    vec![
        "--create".into(),
        "--format=gnu".into(),
        "--sort=name".into(),
        "--owner=0".into(),
        "--group=0".into(),
        "--numeric-owner".into(),
        format!("--mtime=@{epoch}"),
        "--mode=go-w".into(),
        "--use-compress-program=gzip -9n".into(),
        format!("--file={}", out.display()),
        format!("--directory={}", staging.display()),
        top.into(),
    ]
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))
}

/// Writes through a temp file in the same directory and renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.xtask-tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

/// Puts files back to the bytes they had (and removes what was created) unless disarmed.
struct Restore {
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    created: Vec<PathBuf>,
    armed: bool,
}

impl Restore {
    fn new() -> Self {
        Restore {
            files: Vec::new(),
            created: Vec::new(),
            armed: true,
        }
    }

    fn remember(&mut self, path: &Path) -> Result<(), String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        self.files.push((path.to_owned(), bytes));
        Ok(())
    }

    fn created(&mut self, path: PathBuf) {
        self.created.push(path);
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for (path, bytes) in &self.files {
            let result = match bytes {
                Some(b) => write_atomic(path, b),
                None => match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                    _ => Ok(()),
                },
            };
            match result {
                Ok(()) => eprintln!("release: restored {}", path.display()),
                Err(e) => eprintln!("release: COULD NOT restore {}: {e}", path.display()),
            }
        }
        for path in &self.created {
            if std::fs::remove_dir_all(path).is_ok() {
                eprintln!("release: removed {}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn versions_parse_and_print_round_trip() {
        for s in [
            "0.1.0",
            "1.2.3",
            "10.20.30",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-0.3.7",
            "1.0.0-x-y.7.z.92",
        ] {
            assert_eq!(v(s).to_string(), s);
        }
        assert_eq!(v("v1.2.3").to_string(), "1.2.3");
    }

    #[test]
    fn bad_versions_are_refused_with_the_reason() {
        for (input, why) in [
            ("1.2", "expected MAJOR.MINOR.PATCH"),
            ("1.2.3.4", "expected MAJOR.MINOR.PATCH"),
            ("01.2.3", "leading zero"),
            ("1.x.3", "not a number"),
            ("1.2.3-", "must be non-empty"),
            ("1.2.3-a..b", "must be non-empty"),
            ("1.2.3-01", "leading zero"),
            ("1.2.3+build.5", "build metadata"),
            ("", "expected MAJOR.MINOR.PATCH"),
            ("1.2.3-a_b", "[0-9A-Za-z-]"),
        ] {
            let err = input.parse::<Version>().unwrap_err();
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn only_a_higher_version_is_released() {
        check_newer(&v("0.1.0"), &v("0.2.0")).unwrap();
        check_newer(&v("0.1.0"), &v("0.1.1-rc.1")).unwrap();
        for (current, new) in [
            ("0.1.0", "0.1.0"),
            ("0.2.0", "0.1.9"),
            ("1.0.0", "1.0.0-rc.1"),
        ] {
            let err = check_newer(&v(current), &v(new)).unwrap_err();
            assert!(
                err.contains(&format!(
                    "--version {new} is not greater than the current workspace version {current}"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn a_dirty_tree_is_refused_with_the_files() {
        assert_eq!(dirty_tree(""), None);
        assert_eq!(dirty_tree("\n"), None);
        let err = dirty_tree(" M Cargo.toml\n?? notes.txt\n").unwrap();
        assert!(err.contains("not clean"), "{err}");
        assert!(err.contains("M Cargo.toml\n  ?? notes.txt"), "{err}");
        let many: String = (0..13).map(|i| format!("?? f{i}\n")).collect();
        let err = dirty_tree(&many).unwrap();
        assert!(err.contains("?? f9") && !err.contains("?? f10"), "{err}");
        assert!(err.ends_with("… and 3 more"), "{err}");
    }

    #[test]
    fn precedence_follows_semver() {
        // The ordered example list from semver.org §11, plus core comparisons.
        let ordered = [
            "0.9.9",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "1.10.0",
            "2.0.0",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
            assert!(v(pair[1]) > v(pair[0]));
        }
        assert_eq!(v("1.0.0").cmp(&v("v1.0.0")), Ordering::Equal);
    }

    const CARGO_TOML: &str = "[workspace]\nmembers = [\"a\"]\n\n[workspace.package]\nedition = \"2024\"\nversion = \"0.1.0\"   # the release version\nlicense = \"MIT\"\n\n[workspace.dependencies]\nserde = { version = \"1\" }\n";

    #[test]
    fn workspace_version_is_read_and_bumped_in_place() {
        assert_eq!(workspace_version(CARGO_TOML).unwrap(), "0.1.0");
        let bumped = set_workspace_version(CARGO_TOML, &v("0.2.0")).unwrap();
        assert_eq!(
            bumped,
            CARGO_TOML.replace("version = \"0.1.0\"", "version = \"0.2.0\"")
        );
        // Dependency versions elsewhere are untouched.
        assert!(bumped.contains("serde = { version = \"1\" }"));
    }

    #[test]
    fn workspace_version_outside_the_section_is_not_taken() {
        let toml = "[package]\nversion = \"9.9.9\"\n[workspace.package]\nedition = \"2024\"\n";
        assert!(workspace_version(toml).unwrap_err().contains("no `version"));
        let toml = "[workspace.package]\nversion.workspace = true\n";
        assert!(workspace_version(toml).is_err());
    }

    #[test]
    fn the_real_workspace_version_parses() {
        let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        workspace_version(&text)
            .unwrap()
            .parse::<Version>()
            .unwrap();
    }

    #[test]
    fn sha256sums_lines_are_what_sha256sum_check_reads() {
        let hex = lower_hex(&Sha256::digest(b"abc"));
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256sums_line(&hex, "forge-1.0.0-x86_64-unknown-linux-gnu.tar.gz"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  forge-1.0.0-x86_64-unknown-linux-gnu.tar.gz\n"
        );
        // Round trip through the real sha256sum when it is installed.
        let dir = tempfile_dir();
        std::fs::write(dir.join("f.bin"), b"abc").unwrap();
        assert_eq!(sha256_file(&dir.join("f.bin")).unwrap(), hex);
        std::fs::write(dir.join("SHA256SUMS"), sha256sums_line(&hex, "f.bin")).unwrap();
        if crate::util::which("sha256sum").is_some() {
            let status = Command::new("sha256sum")
                .args(["--check", "--strict", "SHA256SUMS"])
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(status.status.success(), "{status:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "xtask-release-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn changelog() -> String {
        "# Changelog\n\nIntro.\n\n## [Unreleased]\n\n### Added\n\n- a thing\n\n## [0.1.0] - 2026-01-01\n\n- first\n".to_owned()
    }

    #[test]
    fn changelog_entry_takes_the_unreleased_notes_and_the_commits() {
        let out = insert_release(
            &changelog(),
            &v("0.2.0"),
            "2026-11-26",
            &["Add copy".to_owned(), "Fix ledger retry ".to_owned()],
        );
        assert_eq!(
            out,
            "# Changelog\n\nIntro.\n\n## [Unreleased]\n\n## [0.2.0] - 2026-11-26\n\n### Added\n\n- a thing\n\n### Commits\n\n- Add copy\n- Fix ledger retry\n\n## [0.1.0] - 2026-01-01\n\n- first\n"
        );
        assert_eq!(
            release_section(&out, &v("0.2.0")),
            "## [0.2.0] - 2026-11-26\n\n### Added\n\n- a thing\n\n### Commits\n\n- Add copy\n- Fix ledger retry\n\n"
        );
    }

    #[test]
    fn changelog_without_unreleased_gets_one_and_the_entry() {
        let out = insert_release(
            "# Changelog\n",
            &v("1.0.0"),
            "2026-11-26",
            &["x".to_owned()],
        );
        assert_eq!(
            out,
            "# Changelog\n## [Unreleased]\n\n## [1.0.0] - 2026-11-26\n\n### Commits\n\n- x\n"
        );
    }

    #[test]
    fn the_real_changelog_accepts_an_entry() {
        let text = std::fs::read_to_string(root().join("CHANGELOG.md")).unwrap();
        let out = insert_release(&text, &v("99.0.0"), "2026-11-26", &["s".to_owned()]);
        assert!(out.contains("## [Unreleased]\n\n## [99.0.0] - 2026-11-26\n"));
        assert_eq!(out.matches("## [Unreleased]").count(), 1);
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_700_000), "2026-11-26T13:33:20Z");
        assert_eq!(iso_date(-86_400), "1969-12-31");
    }

    /// A `cargo metadata` shape: app → lib (normal) → leaf; app → tool (dev only); lib → gen
    /// (build). Dev-only `tool` must not appear.
    fn metadata() -> Value {
        let pkg = |name: &str, version: &str, license: Option<&str>| {
            json!({
                "name": name, "version": version, "id": format!("{name} {version}"),
                "license": license, "license_file": null,
                "targets": [{ "name": name, "kind": ["lib"] }],
            })
        };
        let dep = |name: &str, version: &str, kind: Option<&str>| {
            json!({ "name": name, "pkg": format!("{name} {version}"),
                    "dep_kinds": [{ "kind": kind, "target": null }] })
        };
        let mut app = pkg(CLI_PACKAGE, "0.1.0", Some("MIT OR Apache-2.0"));
        app["targets"] = json!([
            { "name": "forge", "kind": ["bin"] },
            { "name": "forge-refresh-env", "kind": ["bin"] },
        ]);
        json!({
            "packages": [
                app,
                pkg("lib", "1.2.0", Some("MIT")),
                pkg("leaf", "0.3.1", None),
                pkg("tool", "9.0.0", Some("MIT")),
                pkg("gen", "2.0.0", Some("Apache-2.0")),
            ],
            "workspace_members": [format!("{CLI_PACKAGE} 0.1.0")],
            "resolve": { "root": null, "nodes": [
                { "id": format!("{CLI_PACKAGE} 0.1.0"), "deps": [
                    dep("lib", "1.2.0", None), dep("tool", "9.0.0", Some("dev"))] },
                { "id": "lib 1.2.0", "deps": [dep("leaf", "0.3.1", None), dep("gen", "2.0.0", Some("build"))] },
                { "id": "leaf 0.3.1", "deps": [] },
                { "id": "tool 9.0.0", "deps": [] },
                { "id": "gen 2.0.0", "deps": [] },
            ]},
            "target_directory": "/tmp/target",
        })
    }

    #[test]
    fn sbom_has_the_cyclonedx_1_5_shape() {
        let bom = sbom(&[metadata()], &v("0.2.0"), 1_795_700_000).unwrap();
        assert_eq!(bom["bomFormat"], "CycloneDX");
        assert_eq!(bom["specVersion"], "1.5");
        assert_eq!(bom["version"], 1);
        let serial = bom["serialNumber"].as_str().unwrap();
        assert!(
            serial.starts_with("urn:uuid:") && serial.len() == 45,
            "{serial}"
        );
        assert_eq!(&serial[23..24], "8", "version-8 UUID: {serial}");
        assert_eq!(bom["metadata"]["timestamp"], "2026-11-26T13:33:20Z");
        assert_eq!(bom["metadata"]["component"]["name"], "forge");
        assert_eq!(bom["metadata"]["component"]["version"], "0.2.0");
        assert_eq!(
            bom["metadata"]["component"]["purl"],
            "pkg:cargo/forge-cli@0.2.0"
        );
        assert_eq!(
            bom["metadata"]["component"]["licenses"],
            json!([{ "expression": "MIT OR Apache-2.0" }])
        );
        assert_eq!(
            bom["components"],
            json!([
                { "type": "library", "bom-ref": "pkg:cargo/gen@2.0.0", "name": "gen", "version": "2.0.0",
                  "purl": "pkg:cargo/gen@2.0.0", "scope": "required", "licenses": [{ "expression": "Apache-2.0" }] },
                { "type": "library", "bom-ref": "pkg:cargo/leaf@0.3.1", "name": "leaf", "version": "0.3.1",
                  "purl": "pkg:cargo/leaf@0.3.1", "scope": "required" },
                { "type": "library", "bom-ref": "pkg:cargo/lib@1.2.0", "name": "lib", "version": "1.2.0",
                  "purl": "pkg:cargo/lib@1.2.0", "scope": "required", "licenses": [{ "expression": "MIT" }] },
            ])
        );
        assert_eq!(
            bom["dependencies"],
            json!([
                { "ref": "pkg:cargo/forge-cli@0.2.0", "dependsOn": ["pkg:cargo/lib@1.2.0"] },
                { "ref": "pkg:cargo/gen@2.0.0", "dependsOn": [] },
                { "ref": "pkg:cargo/leaf@0.3.1", "dependsOn": [] },
                { "ref": "pkg:cargo/lib@1.2.0", "dependsOn": ["pkg:cargo/gen@2.0.0", "pkg:cargo/leaf@0.3.1"] },
            ])
        );
        // Reproducible: same input, same document (serial number included).
        assert_eq!(
            bom,
            sbom(&[metadata()], &v("0.2.0"), 1_795_700_000).unwrap()
        );
        assert_ne!(
            bom["serialNumber"],
            sbom(&[metadata()], &v("0.2.1"), 1_795_700_000).unwrap()["serialNumber"]
        );
    }

    #[test]
    fn sbom_is_the_union_over_the_targets() {
        // A second target links `winonly` from `lib`; the first does not.
        let mut other = metadata();
        other["packages"].as_array_mut().unwrap().push(
            json!({ "name": "winonly", "version": "0.1.0", "id": "winonly 0.1.0",
                          "license": "MIT", "license_file": null, "targets": [] }),
        );
        other["resolve"]["nodes"][1]["deps"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "name": "winonly", "pkg": "winonly 0.1.0", "dep_kinds": [{ "kind": null, "target": "cfg(windows)" }] }));
        other["resolve"]["nodes"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "id": "winonly 0.1.0", "deps": [] }));
        let bom = sbom(&[metadata(), other], &v("0.2.0"), 0).unwrap();
        let names: Vec<&str> = bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["gen", "leaf", "lib", "winonly"]);
        let lib = bom["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["ref"] == "pkg:cargo/lib@1.2.0")
            .unwrap();
        assert_eq!(
            lib["dependsOn"],
            json!([
                "pkg:cargo/gen@2.0.0",
                "pkg:cargo/leaf@0.3.1",
                "pkg:cargo/winonly@0.1.0"
            ])
        );
        assert!(sbom(&[], &v("0.2.0"), 0).is_err());
    }

    #[test]
    fn sbom_of_the_real_workspace_lists_shipped_crates_only() {
        let bom = sbom(&[cargo_metadata(&root(), None).unwrap()], &v("99.0.0"), 0).unwrap();
        let names: Vec<&str> = bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for shipped in ["forge-registry", "forge-ledger", "clap", "tokio"] {
            assert!(names.contains(&shipped), "{shipped} missing from {names:?}");
        }
        for dev_only in ["forge-testkit", "insta", "xtask"] {
            assert!(!names.contains(&dev_only), "{dev_only} is not shipped");
        }
        for c in bom["components"].as_array().unwrap() {
            assert_eq!(
                c["purl"].as_str().unwrap(),
                format!(
                    "pkg:cargo/{}@{}",
                    c["name"].as_str().unwrap(),
                    c["version"].as_str().unwrap()
                )
            );
        }
    }

    #[test]
    fn binaries_are_checked_in_metadata() {
        check_binaries(&metadata()).unwrap();
        let mut m = metadata();
        m["packages"][0]["targets"] = json!([{ "name": "forge", "kind": ["bin"] }]);
        let err = check_binaries(&m).unwrap_err();
        assert!(err.contains("no binary target forge-refresh-env"), "{err}");
    }

    #[test]
    fn arguments_are_parsed_with_clear_errors() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse_args(&args(&[
                "--version",
                "1.2.3",
                "--dry-run",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target=aarch64-unknown-linux-gnu"
            ]))
            .unwrap(),
            Options {
                version: v("1.2.3"),
                dry_run: true,
                targets: vec![
                    "x86_64-unknown-linux-gnu".into(),
                    "aarch64-unknown-linux-gnu".into()
                ],
            }
        );
        assert_eq!(
            parse_args(&args(&["--version=2.0.0"])).unwrap().version,
            v("2.0.0")
        );
        for (input, why) in [
            (&["--dry-run"][..], "--version is required"),
            (&["--version"][..], "--version needs a value"),
            (
                &["--version", "1.2"][..],
                "--version 1.2: `1.2` is not a semantic version",
            ),
            (
                &["--version", "1.0.0", "--target", "a b"][..],
                "not a target triple",
            ),
            (
                &["--version", "1.0.0", "--force"][..],
                "unknown release option `--force`",
            ),
        ] {
            let err = parse_args(&args(input)).unwrap_err();
            assert!(err.contains(why), "{input:?}: {err}");
        }
    }

    #[test]
    fn tar_arguments_make_a_reproducible_archive() {
        if crate::util::which("tar").is_none() || crate::util::which("gzip").is_none() {
            return;
        }
        let dir = tempfile_dir();
        let build = |name: &str| {
            let staging = dir.join(format!("staging-{name}"));
            std::fs::create_dir_all(staging.join("top")).unwrap();
            std::fs::write(staging.join("top/b.txt"), b"b").unwrap();
            std::fs::write(staging.join("top/a.txt"), b"a").unwrap();
            let out = dir.join(format!("{name}.tar.gz"));
            let status = Command::new("tar")
                .args(tar_args(&staging, "top", &out, 1_795_700_000))
                .status()
                .unwrap();
            assert!(status.success());
            std::fs::read(out).unwrap()
        };
        let first = build("one");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = build("two");
        assert_eq!(first, second, "same inputs, same archive bytes");
        let listing = Command::new("tar")
            .args(["-tvzf", &dir.join("one.tar.gz").to_string_lossy()])
            .env("TZ", "UTC")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(names, ["top/", "top/a.txt", "top/b.txt"], "{listing}");
        assert!(listing.contains("0/0"), "owner 0/0: {listing}");
        assert!(
            listing.contains("2026-11-26"),
            "mtime from the epoch: {listing}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
