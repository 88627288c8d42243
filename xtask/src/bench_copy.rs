//! `cargo xtask bench copy`: `forge copy` against `skopeo copy --all --preserve-digests` on two
//! local `docker-registry` instances. Never a test: wall times depend on the machine, so the
//! result is a table in BENCHMARKS.md (between the `bench:copy` markers), not an assertion.
//!
//! Method: fixtures are OCI layouts with deterministic pseudo-random layers (incompressible, so
//! neither tool can cheat), pushed once to a source registry with skopeo. Each cold run gets a
//! FRESH destination registry (new storage, new port), because skopeo's blob-info cache would
//! otherwise mount blobs from other repositories. The destination repository is provisioned
//! first with a one-blob seed image (Forge refuses to create repositories, like ECR with an
//! allowlist). The tools run alternately, several times each; medians are reported. Peak RSS
//! is the kernel's `VmHWM` polled while the tool runs (no wrapper process: see `measure`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use forge_testkit::Registry;

use crate::util::{load_average, root, which, write_bench_section};

const USAGE: &str = "usage: cargo xtask bench copy [--runs N] [--quick] [--case NAME]... [--no-build] [--forge PATH] [--jobs N] [--no-write]

  --runs N      runs per tool and case (default 3)
  --quick       small sizes for a smoke run (results are not written to BENCHMARKS.md)
  --case NAME   only this case (cold, repromote, small, big); repeatable (a run of some cases
                only prints its table: BENCHMARKS.md keeps the last run of all four)
  --no-build    do not run `cargo build --release -p forge-cli` (use the existing binary)
  --forge PATH  the forge binary to measure (default: <target>/release/forge)
  --jobs N      pass `--jobs N` to forge copy (default: forge's own default)
  --no-write    print the table only; leave BENCHMARKS.md alone

Fixtures and both registries' storage go under $TMPDIR (default /tmp). `TMPDIR=/dev/shm` takes
the disk out: registries fsync every upload, and on a slow disk that wait is part of every cold
case.";

const MIB: u64 = 1024 * 1024;

struct Options {
    runs: usize,
    quick: bool,
    cases: Vec<String>,
    build: bool,
    forge: Option<PathBuf>,
    jobs: Option<usize>,
    write: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        runs: 3,
        quick: false,
        cases: Vec::new(),
        build: true,
        forge: None,
        jobs: None,
        write: true,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => {
                let n = it.next().ok_or(USAGE)?;
                o.runs = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--runs wants a positive number, got `{n}`"))?;
            }
            "--quick" => o.quick = true,
            "--case" => {
                let c = it.next().ok_or(USAGE)?;
                if !["cold", "repromote", "small", "big"].contains(&c.as_str()) {
                    return Err(format!(
                        "unknown case `{c}` (cases: cold, repromote, small, big)"
                    ));
                }
                o.cases.push(c.clone());
            }
            "--no-build" => o.build = false,
            "--forge" => o.forge = Some(PathBuf::from(it.next().ok_or(USAGE)?)),
            "--no-write" => o.write = false,
            "--jobs" => {
                let n = it.next().ok_or(USAGE)?;
                o.jobs = Some(
                    n.parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("--jobs wants a positive number, got `{n}`"))?,
                );
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    Ok(o)
}

/// Sizes per mode.
struct Sizes {
    cold_layers: usize,
    cold_layer: u64,
    small_layers: usize,
    big: u64,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                cold_layers: 6,
                cold_layer: 4 * MIB,
                small_layers: 40,
                big: 64 * MIB,
            }
        } else {
            Sizes {
                cold_layers: 6,
                cold_layer: 64 * MIB,
                small_layers: 40,
                big: 1024 * MIB,
            }
        }
    }

    /// Small layers: 8 KiB .. ~1 MiB, deterministic.
    fn small_layer(i: usize) -> u64 {
        8 * 1024 + ((i as u64 * 7919 * 1024) % (1000 * 1024))
    }
}

/// `cargo xtask bench copy …`
pub fn bench_copy(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    for tool in ["docker-registry", "skopeo", "sha256sum"] {
        if which(tool).is_none() {
            return Err(format!(
                "`{tool}` is not on PATH; run `cargo xtask test-deps` first"
            ));
        }
    }
    let forge = crate::util::release_forge(o.forge.as_deref(), o.build)?;
    let want = |c: &str| o.cases.is_empty() || o.cases.iter().any(|x| x == c);
    let sizes = Sizes::new(o.quick);
    let work = tempdir()?;
    let load_before = load_average();

    eprintln!("== fixtures");
    let source = Registry::start().ok_or("docker-registry did not start")?;
    let seed = Layout::create(&work.join("seed"), &[Layer::random(0xfeed, 512)])?;
    let mut fixtures = Vec::new();
    if want("cold") || want("repromote") {
        let layers: Vec<Layer> = (0..sizes.cold_layers)
            .map(|i| Layer::random(100 + i as u64, sizes.cold_layer))
            .collect();
        fixtures.push(("cold", Layout::create(&work.join("cold"), &layers)?));
    }
    if want("small") {
        let layers: Vec<Layer> = (0..sizes.small_layers)
            .map(|i| Layer::random(200 + i as u64, Sizes::small_layer(i)))
            .collect();
        fixtures.push(("small", Layout::create(&work.join("small"), &layers)?));
    }
    if want("big") {
        fixtures.push((
            "big",
            Layout::create(&work.join("big"), &[Layer::random(300, sizes.big)])?,
        ));
    }
    for (name, layout) in &fixtures {
        skopeo(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:1", layout.dir.display()),
            &format!("docker://{}/bench/{name}:1", source.host()),
        ])?;
    }
    let fixture = |name: &str| fixtures.iter().find(|(n, _)| *n == name).map(|(_, l)| l);

    // Which binary was measured: `--forge` may name one built from another commit.
    let forge_version = format!(
        "{} (binary sha256 {}; workspace at {})",
        output(Command::new(&forge).arg("--version"))
            .unwrap_or_default()
            .trim(),
        file_sha256(&forge).map_or_else(|e| format!("unknown: {e}"), |h| h[..12].to_owned()),
        workspace_commit()
    );
    let skopeo_version = output(Command::new("skopeo").arg("--version")).unwrap_or_default();
    // `docker-registry github.com/docker/distribution 2.8.2+ds1` → `Distribution 2.8.2+ds1`.
    let registry_version = output(Command::new("docker-registry").arg("--version"))
        .ok()
        .and_then(|v| {
            v.split_whitespace()
                .last()
                .map(|v| format!("Distribution {v}"))
        })
        .unwrap_or_else(|| "Distribution, version unknown".to_owned());
    let mut results: Vec<CaseResult> = Vec::new();

    if let Some(layout) = fixture("cold").filter(|_| want("cold")) {
        let title = format!(
            "cold: {}×{} MiB layers",
            sizes.cold_layers,
            sizes.cold_layer / MIB
        );
        results.push(cold_case(
            &o, &forge, &source, &seed, "cold", layout, title, 0.8, None,
        )?);
    }
    if let Some(layout) = fixture("cold").filter(|_| want("repromote")) {
        results.push(repromote_case(&o, &forge, &source, &seed, layout)?);
    }
    if let Some(layout) = fixture("small").filter(|_| want("small")) {
        let title = format!("{} small layers (8 KiB–1 MiB)", sizes.small_layers);
        results.push(cold_case(
            &o, &forge, &source, &seed, "small", layout, title, 0.6, None,
        )?);
    }
    if let Some(layout) = fixture("big").filter(|_| want("big")) {
        let title = format!("one {} MiB layer", sizes.big / MIB);
        results.push(cold_case(
            &o,
            &forge,
            &source,
            &seed,
            "big",
            layout,
            title,
            0.95,
            Some(24 * 1024),
        )?);
    }

    let command = format!(
        "cargo xtask bench copy{}",
        args.iter().fold(String::new(), |acc, a| acc + " " + a)
    );
    let report = render(
        &results,
        &command,
        o.runs,
        &forge_version,
        skopeo_version.trim(),
        &registry_version,
        (&load_before, &load_average()),
    );
    println!("{report}");
    // The section is one run of every case: a partial run would replace it with fewer rows.
    if o.write && !o.quick && o.cases.is_empty() {
        write_bench_section(&root().join("BENCHMARKS.md"), "copy", &report)?;
        eprintln!("wrote the `forge copy vs skopeo` section of BENCHMARKS.md");
    } else {
        eprintln!("(quick, --case or --no-write run: BENCHMARKS.md left alone)");
    }
    drop(work);
    Ok(())
}

struct CaseResult {
    title: String,
    forge: Vec<Run>,
    skopeo: Vec<Run>,
    target: f64,
    rss_target_kib: Option<u64>,
}

#[derive(Clone, Copy)]
struct Run {
    wall: Duration,
    rss_kib: Option<u64>,
    /// User + system CPU time of the tool (from `/proc/self/stat`'s children's times).
    cpu: Option<Duration>,
    /// CPU the two registries spent during the run (their share of a CPU-bound machine).
    registry_cpu: Option<Duration>,
    /// Forge's report said the destination already held everything and nothing was written
    /// (always false for skopeo, which prints no report).
    wrote_nothing: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Forge,
    Skopeo,
}

/// Cold copies: every run (of either tool) gets a fresh, provisioned destination.
#[allow(clippy::too_many_arguments)]
fn cold_case(
    o: &Options,
    forge: &Path,
    source: &Registry,
    seed: &Layout,
    name: &str,
    layout: &Layout,
    title: String,
    target: f64,
    rss_target_kib: Option<u64>,
) -> Result<CaseResult, String> {
    eprintln!("== {title}");
    let mut result = CaseResult {
        title,
        forge: Vec::new(),
        skopeo: Vec::new(),
        target,
        rss_target_kib,
    };
    for run in 0..o.runs {
        // Alternate which tool goes first, so neither always gets the warmer page cache.
        let order = if run % 2 == 0 {
            [Tool::Forge, Tool::Skopeo]
        } else {
            [Tool::Skopeo, Tool::Forge]
        };
        for tool in order {
            let dest = provisioned_destination(seed, name)?;
            let r = copy_once(o, tool, forge, source, &dest, name)?;
            check_destination(&dest, name, &layout.digest)?;
            report_run(tool, run, &r);
            match tool {
                Tool::Forge => result.forge.push(r),
                Tool::Skopeo => result.skopeo.push(r),
            }
        }
    }
    Ok(result)
}

/// Re-promotion: the destination already holds the image under the same tag.
fn repromote_case(
    o: &Options,
    forge: &Path,
    source: &Registry,
    seed: &Layout,
    layout: &Layout,
) -> Result<CaseResult, String> {
    let title = "re-promotion (everything present)".to_owned();
    eprintln!("== {title}");
    let mut result = CaseResult {
        title,
        forge: Vec::new(),
        skopeo: Vec::new(),
        target: 0.3,
        rss_target_kib: None,
    };
    let dest = provisioned_destination(seed, "cold")?;
    copy_once(o, Tool::Skopeo, forge, source, &dest, "cold")?;
    check_destination(&dest, "cold", &layout.digest)?;
    for run in 0..o.runs {
        // Alternate, as in the cold cases: the second tool finds registries the first warmed.
        let order = if run % 2 == 0 {
            [Tool::Forge, Tool::Skopeo]
        } else {
            [Tool::Skopeo, Tool::Forge]
        };
        for tool in order {
            let r = copy_once(o, tool, forge, source, &dest, "cold")?;
            if tool == Tool::Forge && !r.wrote_nothing {
                return Err(format!(
                    "forge's re-promotion run {run} wrote to the destination (not already_present, or blobs or manifests pushed): it is not a re-promotion"
                ));
            }
            report_run(tool, run, &r);
            match tool {
                Tool::Forge => result.forge.push(r),
                Tool::Skopeo => result.skopeo.push(r),
            }
        }
    }
    check_destination(&dest, "cold", &layout.digest)?;
    Ok(result)
}

fn report_run(tool: Tool, run: usize, r: &Run) {
    let name = match tool {
        Tool::Forge => "forge ",
        Tool::Skopeo => "skopeo",
    };
    eprintln!(
        "  run {} {name} {:>8.3}s  CPU {}  peak RSS {}  registry CPU {}",
        run + 1,
        r.wall.as_secs_f64(),
        format_cpu(r.cpu),
        r.rss_kib
            .map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        format_cpu(r.registry_cpu)
    );
}

/// A fresh registry whose `bench/<name>` repository exists (holds a one-blob seed image).
fn provisioned_destination(seed: &Layout, name: &str) -> Result<Registry, String> {
    let dest = Registry::start().ok_or("docker-registry did not start")?;
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", seed.dir.display()),
        &format!("docker://{}/bench/{name}:seed", dest.host()),
    ])?;
    Ok(dest)
}

fn copy_once(
    o: &Options,
    tool: Tool,
    forge: &Path,
    source: &Registry,
    dest: &Registry,
    name: &str,
) -> Result<Run, String> {
    let src = format!("{}/bench/{name}:1", source.host());
    let dst = format!("{}/bench/{name}:1", dest.host());
    let mut cmd = match tool {
        Tool::Forge => {
            let mut c = Command::new(forge);
            c.args(["copy", &src, &dst, "--output", "json"]);
            if let Some(jobs) = o.jobs {
                c.args(["--jobs", &jobs.to_string()]);
            }
            c
        }
        Tool::Skopeo => {
            let mut c = Command::new("skopeo");
            c.args([
                "copy",
                "--all",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &format!("docker://{src}"),
                &format!("docker://{dst}"),
            ]);
            c
        }
    };
    // Write back what earlier steps left dirty (the previous destination's deleted storage,
    // the seed push), so neither tool's run pays for it.
    let _ = Command::new("sync").status();
    let registries_cpu = || Some(source.cpu_time()? + dest.cpu_time()?);
    let before = registries_cpu();
    let (mut run, out) = measure(&mut cmd)?;
    run.registry_cpu = before
        .zip(registries_cpu())
        .map(|(b, a)| a.saturating_sub(b));
    if tool == Tool::Forge {
        let report: serde_json::Value = serde_json::from_str(out.trim())
            .map_err(|e| format!("forge copy printed no JSON report ({e}); stdout was: {out}"))?;
        if report["verified"] != serde_json::Value::Bool(true) {
            return Err(format!("forge copy did not report verified=true: {report}"));
        }
        let zero = serde_json::Value::from(0);
        run.wrote_nothing = report["already_present"] == serde_json::Value::Bool(true)
            && ["blobs_copied", "blobs_mounted", "manifests_pushed"]
                .iter()
                .all(|k| report[*k] == zero);
    }
    Ok(run)
}

/// Runs `cmd`, returning wall time, peak RSS, CPU time and stdout; a failure is an error with
/// stderr.
///
/// The tool is started directly, not under a measuring wrapper such as `/usr/bin/time`: a
/// wrapper's own exec (~1.3 ms here) would be counted in both tools' wall times and push the
/// ratio of a 20 ms case towards 1. Peak RSS is the kernel's high-water mark (`VmHWM`, which
/// only grows) polled while the tool runs; CPU time is what this process's waited-for
/// children gained across the wait (`/proc/self/stat`), which is the tool alone.
fn measure(cmd: &mut Command) -> Result<(Run, String), String> {
    use std::sync::atomic::{AtomicBool, Ordering};

    let shown = format!("{cmd:?}").replace('"', "");
    let dir = tempdir()?;
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    cmd.stdin(Stdio::null())
        .stdout(file(&out_path)?)
        .stderr(file(&err_path)?);
    let cpu_before = forge_testkit::children_cpu_time();
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    let pid = child.id();
    let exited = AtomicBool::new(false);
    let (status, wall, rss_kib) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let mut hwm = None;
            while !exited.load(Ordering::Acquire) {
                hwm = read_hwm(pid).or(hwm);
                std::thread::sleep(Duration::from_millis(2));
            }
            hwm
        });
        // Block in wait(): a polling loop would round a 10 ms run up to its poll interval.
        let status = child.wait();
        let wall = start.elapsed();
        exited.store(true, Ordering::Release);
        (status, wall, poller.join().ok().flatten())
    });
    let status = status.map_err(|e| format!("waiting for `{shown}`: {e}"))?;
    let cpu = cpu_before
        .zip(forge_testkit::children_cpu_time())
        .map(|(b, a)| a.saturating_sub(b));
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        return Err(format!("`{shown}` failed ({status}):\n{stderr}"));
    }
    Ok((
        Run {
            wall,
            rss_kib,
            cpu,
            registry_cpu: None,
            wrote_nothing: false,
        },
        stdout,
    ))
}

fn read_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The destination must hold exactly the source digest (skopeo reads it independently).
fn check_destination(dest: &Registry, name: &str, digest: &str) -> Result<(), String> {
    let raw = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/bench/{name}:1", dest.host()),
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run skopeo: {e}"))?;
    if !raw.status.success() {
        return Err(format!(
            "skopeo inspect of the destination failed ({})",
            raw.status
        ));
    }
    let got = sha256_bytes(&raw.stdout)?;
    if got != digest {
        return Err(format!(
            "destination bench/{name}:1 is {got}, expected {digest}: a tool changed the image"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fixtures: OCI layouts with deterministic, incompressible layers.

struct Layer {
    seed: u64,
    size: u64,
}

impl Layer {
    fn random(seed: u64, size: u64) -> Self {
        Layer { seed, size }
    }

    /// Writes the layer: a 1 MiB xorshift block per seed, with a block counter stamped into each
    /// MiB so no two MiB are equal (fast even in a debug-built xtask).
    fn write(&self, path: &Path) -> Result<(), String> {
        use std::io::Write as _;
        let mut state = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut block = Vec::with_capacity(MIB as usize);
        while block.len() < MIB as usize {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            block.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(MIB as usize, file);
        let mut left = self.size;
        let mut counter = 0u64;
        while left > 0 {
            block[..8].copy_from_slice(&counter.to_le_bytes());
            block[8..16].copy_from_slice(&self.seed.to_le_bytes());
            let n = left.min(MIB) as usize;
            w.write_all(&block[..n])
                .map_err(|e| format!("{}: {e}", path.display()))?;
            left -= n as u64;
            counter += 1;
        }
        w.flush().map_err(|e| format!("{}: {e}", path.display()))
    }
}

struct Layout {
    dir: PathBuf,
    /// Digest of the image manifest.
    digest: String,
}

impl Layout {
    fn create(dir: &Path, layers: &[Layer]) -> Result<Layout, String> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| format!("{}: {e}", blobs.display()))?;
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in layers {
            let tmp = blobs.join("incoming");
            layer.write(&tmp)?;
            let digest = sha256_file(&tmp)?;
            rename_to_blob(&tmp, &blobs, &digest)?;
            descriptors.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest,
                "size": layer.size,
            }));
            diff_ids.push(digest);
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        .to_string();
        let config_digest = put_bytes(&blobs, config.as_bytes())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": descriptors,
        })
        .to_string();
        let digest = put_bytes(&blobs, manifest.as_bytes())?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": "1"},
            }],
        })
        .to_string();
        write_file(&dir.join("index.json"), index.as_bytes())?;
        write_file(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            digest,
        })
    }
}

fn put_bytes(blobs: &Path, bytes: &[u8]) -> Result<String, String> {
    let tmp = blobs.join("incoming");
    write_file(&tmp, bytes)?;
    let digest = sha256_bytes(bytes)?;
    rename_to_blob(&tmp, blobs, &digest)?;
    Ok(digest)
}

fn rename_to_blob(tmp: &Path, blobs: &Path, digest: &str) -> Result<(), String> {
    let hex = digest.trim_start_matches("sha256:");
    std::fs::rename(tmp, blobs.join(hex)).map_err(|e| format!("{}: {e}", tmp.display()))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// sha256 with coreutils' `sha256sum` (the xtask is a debug build: hashing a GiB in-process
/// would dominate the fixture time).
fn sha256_file(path: &Path) -> Result<String, String> {
    let out = output(Command::new("sha256sum").arg(path))?;
    let hex = out.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 {
        return Err(format!("sha256sum printed `{out}` for {}", path.display()));
    }
    Ok(format!("sha256:{hex}"))
}

fn sha256_bytes(bytes: &[u8]) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run sha256sum: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("sha256sum stdin")?
        .write_all(bytes)
        .map_err(|e| format!("sha256sum stdin: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 {
        return Err(format!("sha256sum printed `{text}`"));
    }
    Ok(format!("sha256:{hex}"))
}

fn skopeo(args: &[&str]) -> Result<(), String> {
    let out = Command::new("skopeo")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run skopeo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "skopeo {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The sha256 of a file, in hex.
fn file_sha256(path: &Path) -> Result<String, String> {
    use sha2::Digest as _;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(hex_lower(&sha2::Sha256::digest(&bytes)))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The workspace's commit, `+changes` when the tree differs from it.
fn workspace_commit() -> String {
    let git = |args: &[&str]| {
        output(Command::new("git").current_dir(root()).args(args)).map(|o| o.trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Ok(commit) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Ok(changes) if changes.is_empty() => commit,
            _ => format!("{commit}+changes"),
        },
        Err(_) => "an unknown commit".to_owned(),
    }
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A scratch directory removed on drop (fixtures are GiB-sized: never leave them behind).
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir, String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir().join(format!(
        "forge-bench-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    Ok(TempDir(base))
}

// ---------------------------------------------------------------------------------------------
// Report.

fn median(runs: &[Run]) -> Duration {
    let mut walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
    walls.sort();
    match walls.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => walls[n / 2],
        n => (walls[n / 2 - 1] + walls[n / 2]) / 2,
    }
}

/// Mean of a tick-resolution time (/proc counts in 10 ms steps: a median of
/// short runs would mostly read 0 or 10 ms).
fn mean(times: impl Iterator<Item = Option<Duration>>) -> Option<Duration> {
    let times: Vec<Duration> = times.flatten().collect();
    let n = u32::try_from(times.len()).ok().filter(|n| *n > 0)?;
    Some(times.iter().sum::<Duration>() / n)
}

fn format_cpu(d: Option<Duration>) -> String {
    match d {
        None => "n/a".into(),
        Some(d) if d.is_zero() => "< 10 ms".into(),
        Some(d) if d < Duration::from_secs(1) => format!("{:.0} ms", d.as_secs_f64() * 1000.0),
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
    }
}

fn peak(runs: &[Run]) -> Option<u64> {
    runs.iter().filter_map(|r| r.rss_kib).max()
}

fn render(
    results: &[CaseResult],
    command: &str,
    runs: usize,
    forge_version: &str,
    skopeo_version: &str,
    registry_version: &str,
    load: (&str, &str),
) -> String {
    let mut s = String::new();
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(s, "## forge copy vs skopeo\n");
    let _ = writeln!(
        s,
        "Measured {} with `{command}` ({runs} runs per tool, alternating; medians) on {cpus} CPUs, \
         two local `docker-registry` ({registry_version}) instances over loopback HTTP. \
         {forge_version}; {skopeo_version} run as `skopeo copy --all --preserve-digests \
         --src-tls-verify=false --dest-tls-verify=false`. Every cold run (either tool) gets a fresh \
         destination registry; results are checked with `skopeo inspect --raw` (digest equal to \
         the source). Each tool is started directly (no wrapper process, whose own start-up \
         would be counted in its wall time). Peak RSS is the kernel's high-water mark `VmHWM` \
         polled while the tool runs, CPU the tool's user + system time (mean, from /proc, 10 ms \
         ticks); registry CPU is what both `docker-registry` processes spent during the run \
         (mean, from /proc), which bounds the wall time when the machine's CPUs are the limit. \
         1-minute load average before/after: {} / {} (the machine may be shared with other \
         work: compare the CPU column too, it is less sensitive to contention).\n",
        date.trim(),
        load.0,
        load.1
    );
    let _ = writeln!(
        s,
        "| case | forge (median) | skopeo (median) | forge/skopeo | target | met | peak RSS forge / skopeo | CPU forge / skopeo | registry CPU forge / skopeo |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|:-:|---:|---:|---:|");
    for r in results {
        let f = median(&r.forge).as_secs_f64();
        let k = median(&r.skopeo).as_secs_f64();
        let ratio = if k > 0.0 { f / k } else { f64::NAN };
        let cpu = |runs: &[Run]| format_cpu(mean(runs.iter().map(|r| r.cpu)));
        let registry_cpu = |runs: &[Run]| format_cpu(mean(runs.iter().map(|r| r.registry_cpu)));
        let rss = |runs: &[Run]| {
            peak(runs).map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        };
        let rss_ok = match (r.rss_target_kib, peak(&r.forge)) {
            (Some(limit), Some(got)) => got <= limit,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let met = ratio <= r.target && rss_ok;
        let target = match r.rss_target_kib {
            Some(kib) => format!("≤ {:.2}×, RSS ≤ {} MiB", r.target, kib / 1024),
            None => format!("≤ {:.2}×", r.target),
        };
        let _ = writeln!(
            s,
            "| {} | {f:.3} s | {k:.3} s | {ratio:.2}× | {target} | {} | {} / {} | {} / {} | {} / {} |",
            r.title,
            if met { "yes" } else { "**no**" },
            rss(&r.forge),
            rss(&r.skopeo),
            cpu(&r.forge),
            cpu(&r.skopeo),
            registry_cpu(&r.forge),
            registry_cpu(&r.skopeo),
        );
    }
    let _ = writeln!(s, "\nAll runs (seconds):\n");
    for r in results {
        let list = |runs: &[Run]| {
            runs.iter()
                .map(|r| format!("{:.3}", r.wall.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let paired = paired_ratios(&r.forge, &r.skopeo);
        let spread = match (paired.first(), paired.last()) {
            (Some(lo), Some(hi)) => format!(
                "; run-by-run forge/skopeo {:.2}× median ({lo:.2}–{hi:.2}×)",
                median_f64(&paired)
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "- {}: forge [{}]; skopeo [{}]{spread}",
            r.title,
            list(&r.forge),
            list(&r.skopeo),
        );
    }
    s
}

/// Each forge run over the skopeo run of the same round, sorted. The rounds alternate the two
/// tools back to back, so a pair shares the machine's state at that moment: slow drift (a disk
/// getting slower after storage wipes) cancels out of these ratios, which the ratio of the two
/// medians (the verdict) cannot do. Shown next to it, not instead of it.
fn paired_ratios(forge: &[Run], skopeo: &[Run]) -> Vec<f64> {
    let mut ratios: Vec<f64> = forge
        .iter()
        .zip(skopeo)
        .filter(|(_, k)| !k.wall.is_zero())
        .map(|(f, k)| f.wall.as_secs_f64() / k.wall.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios
}

/// Median of a sorted, non-empty slice.
fn median_f64(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "<!-- bench:copy:start -->";
    const END: &str = "<!-- bench:copy:end -->";
    const NOTES_START: &str = "<!-- bench:copy:notes:start -->";
    const NOTES_END: &str = "<!-- bench:copy:notes:end -->";

    #[test]
    fn write_section_replaces_only_its_section_and_keeps_the_notes() {
        let dir = tempdir().unwrap();
        let path = dir.join("BENCHMARKS.md");
        std::fs::write(
            &path,
            format!(
                "# Benchmarks\n\n<!-- bench:ledger:start -->\nledger numbers\n<!-- bench:ledger:end -->\n\n\
                 {START}\nold table\n\n{NOTES_START}\nwhy it is slow\n{NOTES_END}\n{END}\ntrailer\n"
            ),
        )
        .unwrap();
        write_bench_section(&path, "copy", "new table\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "# Benchmarks\n\n<!-- bench:ledger:start -->\nledger numbers\n<!-- bench:ledger:end -->\n\n\
                 {START}\nnew table\n\n{NOTES_START}\nwhy it is slow\n{NOTES_END}\n{END}\ntrailer\n"
            )
        );
    }

    #[test]
    fn write_section_appends_to_a_file_without_it() {
        let dir = tempdir().unwrap();
        let path = dir.join("BENCHMARKS.md");
        std::fs::write(&path, "# Benchmarks\n\nother\n").unwrap();
        write_bench_section(&path, "copy", "table\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("# Benchmarks\n\nother\n\n{START}\ntable\n{END}\n")
        );
    }

    /// Runs with only a wall time.
    fn walls(values: &[u64], unit: fn(u64) -> Duration) -> Vec<Run> {
        values
            .iter()
            .map(|v| Run {
                wall: unit(*v),
                rss_kib: None,
                cpu: None,
                registry_cpu: None,
                wrote_nothing: false,
            })
            .collect()
    }

    #[test]
    fn tick_resolution_times_are_averaged_and_shown_in_ms_below_a_second() {
        let ms = |v: u64| Some(Duration::from_millis(v));
        assert_eq!(mean([ms(0), ms(10), None, ms(20)].into_iter()), ms(10));
        assert_eq!(mean([None, None].into_iter()), None);
        assert_eq!(format_cpu(ms(7)), "7 ms");
        assert_eq!(format_cpu(ms(1500)), "1.50 s");
        assert_eq!(format_cpu(None), "n/a");
        assert_eq!(format_cpu(ms(0)), "< 10 ms");
    }

    #[test]
    fn paired_ratios_follow_each_round() {
        let runs = |ms: &[u64]| walls(ms, Duration::from_millis);
        // A drifting machine: both tools twice as slow in the second round.
        let ratios = paired_ratios(&runs(&[30, 60, 33]), &runs(&[100, 200, 100]));
        assert_eq!(ratios, [0.3, 0.3, 0.33]);
        assert!((median_f64(&ratios) - 0.3).abs() < 1e-12);
        assert!((median_f64(&[0.2, 0.4]) - 0.3).abs() < 1e-12);
        assert!(paired_ratios(&runs(&[1]), &runs(&[0])).is_empty());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let runs = |secs: &[u64]| walls(secs, Duration::from_secs);
        assert_eq!(median(&runs(&[5, 1, 3])), Duration::from_secs(3));
        assert_eq!(median(&runs(&[4, 1, 2, 3])), Duration::from_millis(2500));
    }
}
