//! Convention checks, run as ordinary `#[test]`s by `cargo test --workspace` (the
//! rust-analyzer way): they keep the architecture invariants in ARCHITECTURE.md true.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::util::root;

    const LIBRARIES: &[&str] = &["forge-registry", "forge-ledger", "forge-auth", "forge-ec2"];
    const MEMBERS: &[&str] = &[
        "forge-registry",
        "forge-ledger",
        "forge-auth",
        "forge-ec2",
        "forge-cli",
        "forge-testkit",
        "xtask",
    ];

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The `[section]` of a Cargo.toml as its lines (up to the next section header).
    fn section<'a>(toml: &'a str, name: &str) -> Vec<&'a str> {
        let header = format!("[{name}]");
        toml.lines()
            .skip_while(|l| l.trim() != header)
            .skip(1)
            .take_while(|l| !l.trim_start().starts_with('['))
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .collect()
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn libraries_do_not_depend_on_each_other() {
        for lib in LIBRARIES {
            let toml = read(&root().join(lib).join("Cargo.toml"));
            for line in section(&toml, "dependencies")
                .iter()
                .chain(&section(&toml, "build-dependencies"))
            {
                let dep = line.split(['=', '.']).next().unwrap_or_default().trim();
                assert!(
                    !dep.starts_with("forge-"),
                    "{lib} depends on {dep}: the libraries meet only in forge-cli (ARCHITECTURE.md)"
                );
            }
        }
    }

    #[test]
    fn every_member_uses_workspace_lints_and_versions() {
        for member in MEMBERS {
            let toml = read(&root().join(member).join("Cargo.toml"));
            assert_eq!(
                section(&toml, "lints"),
                vec!["workspace = true"],
                "{member}/Cargo.toml needs `[lints]\\nworkspace = true`"
            );
            for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
                for line in section(&toml, table) {
                    assert!(
                        line.contains(".workspace = true") || line.contains("workspace = true"),
                        "{member}/Cargo.toml [{table}] `{line}`: declare the version in the root \
                         [workspace.dependencies] and use `name.workspace = true`"
                    );
                }
            }
        }
    }

    #[test]
    fn libraries_forbid_unsafe_and_document_everything() {
        for lib in LIBRARIES {
            let src = read(&root().join(lib).join("src/lib.rs"));
            for attr in ["#![forbid(unsafe_code)]", "#![deny(missing_docs)]"] {
                assert!(
                    src.contains(attr),
                    "{lib}/src/lib.rs must start with {attr}"
                );
            }
            assert!(
                src.starts_with("//!"),
                "{lib}/src/lib.rs needs crate-level docs"
            );
        }
    }

    #[test]
    fn libraries_never_exit() {
        for lib in LIBRARIES {
            let mut files = Vec::new();
            rust_files(&root().join(lib).join("src"), &mut files);
            for file in files {
                if file.components().any(|c| c.as_os_str() == "bin") {
                    continue;
                }
                let text = read(&file);
                for (n, line) in text.lines().enumerate() {
                    assert!(
                        !line.contains("process::exit("),
                        "{}:{}: libraries return errors; only binaries exit",
                        file.display(),
                        n + 1
                    );
                }
            }
        }
    }

    #[test]
    fn no_toolchain_file_and_ci_runs_the_readme_command() {
        for name in ["rust-toolchain", "rust-toolchain.toml"] {
            assert!(
                !root().join(name).exists(),
                "{name}: this machine cannot fetch another toolchain"
            );
        }
        let ci = read(&root().join(".ci/run"));
        assert!(
            ci.contains("cargo xtask ci"),
            ".ci/run must run the README's test command"
        );
        let readme = read(&root().join("README.md"));
        assert!(
            readme.contains("cargo xtask ci"),
            "README.md must show the test command"
        );
        assert!(
            readme.contains("cargo xtask demo"),
            "README.md must show the demo command"
        );
    }
}
