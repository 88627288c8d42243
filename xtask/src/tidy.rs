//! Convention checks, run as ordinary `#[test]`s by `cargo test --workspace` (the
//! rust-analyzer way): they keep the architecture invariants in ARCHITECTURE.md true.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::util::root;

    const LIBRARIES: &[&str] = &["forge-registry", "forge-ledger", "forge-auth", "forge-ec2"];

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    fn manifest(dir: &Path) -> toml::Table {
        let path = dir.join("Cargo.toml");
        read(&path)
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The workspace members, as the root manifest lists them (a new crate is checked too).
    fn members() -> Vec<String> {
        let root_manifest = manifest(&root());
        let members = root_manifest["workspace"]["members"]
            .as_array()
            .expect("the root manifest lists its members");
        members
            .iter()
            .map(|m| m.as_str().expect("member paths are strings").to_owned())
            .collect()
    }

    /// Every dependency of a manifest as (table name, crate key, declaration): the plain
    /// tables, `[dependencies.foo]` tables (the same after parsing) and the
    /// `[target.'cfg(…)'.dependencies]` ones.
    fn dependencies(manifest: &toml::Table) -> Vec<(String, String, toml::Value)> {
        let kinds = ["dependencies", "dev-dependencies", "build-dependencies"];
        let mut tables: Vec<(String, &toml::Table)> = kinds
            .iter()
            .filter_map(|k| Some(((*k).to_owned(), manifest.get(*k)?.as_table()?)))
            .collect();
        if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
            for (cfg, target) in targets {
                for k in kinds {
                    if let Some(t) = target.get(k).and_then(toml::Value::as_table) {
                        tables.push((format!("target.{cfg}.{k}"), t));
                    }
                }
            }
        }
        tables
            .into_iter()
            .flat_map(|(table, deps)| {
                deps.iter()
                    .map(move |(name, decl)| (table.clone(), name.clone(), decl.clone()))
            })
            .collect()
    }

    /// The crate a dependency entry names (its `package` when renamed).
    fn crate_name(key: &str, decl: &toml::Value) -> String {
        decl.get("package")
            .and_then(toml::Value::as_str)
            .unwrap_or(key)
            .to_owned()
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
            for (table, key, decl) in dependencies(&manifest(&root().join(lib))) {
                let name = crate_name(&key, &decl);
                assert!(
                    !LIBRARIES.contains(&name.as_str()),
                    "{lib} [{table}] depends on {name}: the libraries meet only in forge-cli (ARCHITECTURE.md)"
                );
            }
        }
    }

    #[test]
    fn every_member_uses_workspace_lints_and_versions() {
        let members = members();
        assert!(
            members.len() >= 7,
            "the root manifest lists the crates: {members:?}"
        );
        for member in &members {
            let toml = manifest(&root().join(member));
            assert_eq!(
                toml.get("lints")
                    .and_then(|l| l.get("workspace"))
                    .and_then(toml::Value::as_bool),
                Some(true),
                "{member}/Cargo.toml needs `[lints]\\nworkspace = true`"
            );
            for (table, key, decl) in dependencies(&toml) {
                assert_eq!(
                    decl.get("workspace").and_then(toml::Value::as_bool),
                    Some(true),
                    "{member}/Cargo.toml [{table}] {key}: declare the version in the root \
                     [workspace.dependencies] and use `{key}.workspace = true`"
                );
            }
        }
    }

    #[test]
    fn libraries_forbid_unsafe_and_document_everything() {
        for lib in LIBRARIES {
            let src = read(&root().join(lib).join("src/lib.rs"));
            for attr in ["#![forbid(unsafe_code)]", "#![deny(missing_docs)]"] {
                assert!(
                    src.lines().any(|l| l.trim() == attr),
                    "{lib}/src/lib.rs must declare {attr}"
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
                    let code = line.split("//").next().unwrap_or(line);
                    // `std::process::exit(1)`, `process::abort()`, or either imported and
                    // called bare.
                    let exits = ["process::exit", "process::abort"]
                        .iter()
                        .any(|f| code.contains(f))
                        || (code.contains("use std::process")
                            && (code.contains("exit") || code.contains("abort")));
                    assert!(
                        !exits,
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
        // The one command .ci/run runs is exactly the README's, with no extra options.
        let ci = read(&root().join(".ci/run"));
        let commands: Vec<&str> = ci
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter(|l| !l.starts_with("set ") && !l.starts_with("cd "))
            .collect();
        assert_eq!(
            commands,
            ["exec cargo xtask ci"],
            ".ci/run must run exactly the README's test command"
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
