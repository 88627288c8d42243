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
];

/// Installs what the tests need when it is missing, and returns the `PATH` the tests run with
/// (pip's script directory added when `moto_server` is only there: a pyenv shim appears only
/// after a rehash, a `--user` install lands in ~/.local/bin). Starts nothing: tests start their
/// own instances on free loopback ports.
pub fn test_deps() -> Result<OsString, String> {
    let missing: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let sudo = if is_root() { None } else { which("sudo") };
        let apt = |args: &[&str]| {
            let mut cmd = match &sudo {
                Some(sudo) => {
                    let mut c = Command::new(sudo);
                    c.arg("apt-get");
                    c
                }
                None => Command::new("apt-get"),
            };
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            run_cmd(&mut cmd)
        };
        apt(&["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&missing);
        apt(&args)?;
    }
    if which("moto_server").is_none() {
        let python = which("python3")
            .ok_or("python3 is needed to install moto[server] (apt-get install python3-pip)")?;
        run_cmd(Command::new(python).args(["-m", "pip", "install", "--quiet", "moto[server]"]))?;
        if which("pyenv").is_some() {
            let _ = run("pyenv", &["rehash"]);
        }
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if which("moto_server").is_none() {
        let scripts = python_scripts_dirs();
        if !scripts.iter().any(|d| d.join("moto_server").is_file()) {
            return Err(format!(
                "pip installed moto[server] but `moto_server` is in none of PATH or {scripts:?}; add pip's script directory to PATH"
            ));
        }
        dirs.extend(scripts);
    }
    for (bin, _) in APT_TOOLS {
        if which(bin).is_none() {
            return Err(format!("`{bin}` is still missing after installation"));
        }
    }
    eprintln!("test components present: docker-registry, skopeo, shellcheck, moto_server, git");
    std::env::join_paths(dirs).map_err(|e| format!("cannot build PATH: {e}"))
}

/// Where pip puts console scripts for python3: the interpreter's and the user scheme's.
fn python_scripts_dirs() -> Vec<PathBuf> {
    let code = "import sysconfig; print(sysconfig.get_path('scripts')); print(sysconfig.get_path('scripts', 'posix_user'))";
    Command::new("python3")
        .args(["-c", code])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
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
