//! `cargo xtask ci` and `cargo xtask test-deps`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use crate::util::{cargo, run, run_cmd, which};

/// Debian packages the tests use, by the binary that proves each is installed.
const APT_TOOLS: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("shellcheck", "shellcheck"),
    ("git", "git"),
];

/// Where moto is installed when it is not on `PATH`: a virtualenv, because Debian's own
/// Python (12 and later) refuses system-wide `pip install` (PEP 668, "externally managed").
const MOTO_VENV: &str = "target/xtask-venv";

/// Installs what the tests need when it is missing, and returns the `PATH` the tests run with
/// (the moto virtualenv's `bin` first when moto comes from there). Starts nothing: tests start
/// their own instances on free loopback ports, and the service the `docker-registry` package
/// starts on install is stopped again.
pub fn test_deps() -> Result<OsString, String> {
    let missing: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
        if missing.contains(&"docker-registry") {
            stop_packaged_registry();
        }
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if which("moto_server").is_none() {
        dirs.insert(0, moto_venv()?);
    }
    for (bin, _) in APT_TOOLS {
        if which(bin).is_none() {
            return Err(format!("`{bin}` is still missing after installation"));
        }
    }
    eprintln!("test components present: docker-registry, skopeo, shellcheck, moto_server, git");
    std::env::join_paths(dirs).map_err(|e| format!("cannot build PATH: {e}"))
}

/// `apt-get install` of `packages`, as root or through sudo (which drops the environment, so
/// the non-interactive frontend is passed through `env`).
fn apt_install(packages: &[&str]) -> Result<(), String> {
    let sudo = if is_root() { None } else { which("sudo") };
    if !is_root() && sudo.is_none() {
        return Err(format!(
            "installing {} needs root: run this as root, install sudo, or install them yourself (apt-get install {})",
            packages.join(", "),
            packages.join(" ")
        ));
    }
    let apt = |args: &[&str]| {
        let mut cmd = match &sudo {
            Some(sudo) => {
                let mut c = Command::new(sudo);
                c.args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
                c
            }
            None => {
                let mut c = Command::new("apt-get");
                c.env("DEBIAN_FRONTEND", "noninteractive");
                c
            }
        };
        run_cmd(cmd.args(args))
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages);
    apt(&args)
}

/// The Debian package enables and starts a registry on :5000 on every interface, without
/// auth. The tests start their own; stop and disable that one (where systemd runs at all).
fn stop_packaged_registry() {
    let mut cmd = if is_root() {
        Command::new("systemctl")
    } else {
        let mut c = Command::new("sudo");
        c.arg("systemctl");
        c
    };
    let stopped = cmd
        .args(["disable", "--now", "docker-registry"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if stopped {
        eprintln!(
            "stopped and disabled the docker-registry service the package started (tests start their own)"
        );
    }
}

/// moto in the virtualenv at [`MOTO_VENV`], created (and Python's venv support installed)
/// when missing; returns its `bin` directory.
fn moto_venv() -> Result<PathBuf, String> {
    let venv = crate::util::root().join(MOTO_VENV);
    let bin = venv.join("bin");
    if bin.join("moto_server").is_file() {
        return Ok(bin);
    }
    let has_venv = || {
        Command::new("python3")
            .args(["-c", "import venv, ensurepip"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if which("python3").is_none() || !has_venv() {
        apt_install(&["python3", "python3-venv", "python3-pip"])?;
    }
    eprintln!(
        "installing moto[server] into the virtualenv {} (not system-wide: Debian's Python refuses that)",
        venv.display()
    );
    let venv_arg = venv.to_string_lossy().into_owned();
    run("python3", &["-m", "venv", &venv_arg])?;
    let pip = bin.join("pip");
    run_cmd(Command::new(&pip).args(["install", "--quiet", "moto[server]"]))?;
    if !bin.join("moto_server").is_file() {
        return Err(format!(
            "pip installed moto[server] into {} but it has no moto_server",
            venv.display()
        ));
    }
    Ok(bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// fmt, clippy, tests, cargo-deny. `--no-deny` skips the (slow to install) licence/ban check
/// for a quick local run; CI never passes it.
pub fn ci(args: &[String]) -> Result<(), String> {
    let skip_deny = args.iter().any(|a| a == "--no-deny");
    if let Some(unknown) = args.iter().find(|a| *a != "--no-deny") {
        return Err(format!("unknown ci option `{unknown}` (known: --no-deny)"));
    }
    let test_path = test_deps()?;
    let cargo = cargo();
    run(&cargo, &["fmt", "--all", "--check"]).map_err(|e| format!("{e}: run `cargo fmt --all`"))?;
    run(
        &cargo,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // CI=true makes every test that cannot find its component fail instead of skipping.
    run_cmd(
        Command::new(&cargo)
            .args(["test", "--workspace", "--locked"])
            .env("CI", "true")
            .env("PATH", &test_path),
    )?;
    // The newcomer's first command must keep working: run the demo on the binary the tests built.
    run_cmd(Command::new(&cargo).args(["xtask", "demo", "--dir", "target/demo-ci", "--no-build"]))?;
    if !skip_deny {
        deny()?;
    }
    eprintln!("xtask ci: all checks passed");
    Ok(())
}

fn deny() -> Result<(), String> {
    let cargo = cargo();
    if which("cargo-deny").is_none() {
        run(&cargo, &["install", "--locked", "cargo-deny"])?;
    }
    run(
        &cargo,
        &[
            "deny",
            "--all-features",
            "check",
            "bans",
            "licenses",
            "sources",
        ],
    )?;
    // Advisories need the RustSec database from the network; this machine reaches only the
    // package registries, so the check runs only when the database can be fetched.
    match run(&cargo, &["deny", "fetch", "db"]) {
        Ok(()) => run(&cargo, &["deny", "check", "advisories"])?,
        Err(_) => eprintln!(
            "xtask ci: NOT CHECKED: advisories (the RustSec advisory database could not be fetched; \
             run `cargo deny check advisories` where the network allows)"
        ),
    }
    Ok(())
}
