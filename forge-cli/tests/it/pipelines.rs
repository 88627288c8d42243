//! The pipeline templates (`pipelines/`) and the Classic Release scripts (`scripts/`): every
//! template parses, follows the release rules (build id is the only tag, no `latest`, Prod
//! behind an approval, OIDC permissions), every `forge` invocation uses subcommands and flags the
//! built binary has, the scripts pass shellcheck, map their arguments exactly and pass forge's
//! exit code through, and run for real against two local registries and a file:// Ledger.
//!
//! A subcommand a template calls that the binary does not have yet fails the test under
//! `CI=true` and is reported as SKIPPED otherwise (the same policy as forge_testkit's missing
//! components): CI never passes while a template calls something that does not exist.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a failed unwrap is a failed test"
)]
#![allow(
    clippy::print_stderr,
    reason = "the SKIPPED note outside CI, as forge_testkit does"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use crate::support::{assert_exit, assert_success, stderr, stdout};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("forge-cli is inside the workspace")
        .to_path_buf()
}

/// Every template the repository ships, relative to the workspace root.
const TEMPLATES: &[&str] = &[
    "pipelines/azure/application-ci-pipeline.yml",
    "pipelines/azure/ec2-deploy-pipeline.yml",
    "pipelines/azure/release-pipeline.yml",
    "pipelines/azure/steps/install-forge.yml",
    "pipelines/azure/steps/resolve-approver.yml",
    "pipelines/github/application-ci.yml",
    "pipelines/github/release.yml",
    "pipelines/github/actions/install-forge/action.yml",
];

const SCRIPTS: &[&str] = &["scripts/copy-artifact.sh", "scripts/update-ledger.sh"];

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
}

fn load(rel: &str) -> Yaml {
    let text = std::fs::read_to_string(repo_root().join(rel)).unwrap();
    let mut docs =
        YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel} does not parse: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: exactly one YAML document");
    let doc = docs.remove(0);
    assert!(doc.as_hash().is_some(), "{rel}: top level is a mapping");
    doc
}

/// Every scalar (keys and values) with its path, for rules that hold everywhere.
fn scalars(node: &Yaml, path: &str, out: &mut Vec<(String, String)>) {
    match node {
        Yaml::String(s) | Yaml::Real(s) => out.push((path.to_owned(), s.clone())),
        Yaml::Integer(i) => out.push((path.to_owned(), i.to_string())),
        Yaml::Boolean(b) => out.push((path.to_owned(), b.to_string())),
        Yaml::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                scalars(item, &format!("{path}[{i}]"), out);
            }
        }
        Yaml::Hash(map) => {
            for (k, v) in map {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned);
                out.push((format!("{path}.{key} (key)"), key.clone()));
                scalars(v, &format!("{path}.{key}"), out);
            }
        }
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => {}
    }
}

/// Every shell script in a template: Azure `bash`/`script` steps, GitHub `run` steps; with the
/// step mapping it came from (for its `env`).
fn scripts<'a>(node: &'a Yaml, out: &mut Vec<(&'a Yaml, String)>) {
    match node {
        Yaml::Array(items) => items.iter().for_each(|i| scripts(i, out)),
        Yaml::Hash(map) => {
            for key in ["bash", "script", "run"] {
                if let Some(s) = node[key].as_str() {
                    out.push((node, s.to_owned()));
                }
            }
            map.values().for_each(|v| scripts(v, out));
        }
        _ => {}
    }
}

/// Shell lines with backslash continuations joined, comments dropped.
fn logical_lines(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in script.lines() {
        let trimmed = line.trim();
        if current.is_empty() && trimmed.starts_with('#') {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// One `forge …` call in a script: the words after `forge` and the rest of the line.
#[derive(Debug, Clone)]
struct Invocation {
    words: Vec<String>,
    line: String,
}

fn invocations(script: &str) -> Vec<Invocation> {
    let mut out = Vec::new();
    for line in logical_lines(script) {
        // Cut at shell separators so `forge … | jq` checks only forge's part.
        for part in line.split(['|', ';']).flat_map(|p| p.split("&&")) {
            let tokens: Vec<&str> = part.split_whitespace().collect();
            // `forge` as a command word (also inside a quoted credential_process string), not
            // `./forge --version` or a path.
            if let Some(pos) = tokens
                .iter()
                .position(|t| t.trim_start_matches(['"', '\'']) == "forge")
            {
                out.push(Invocation {
                    words: tokens[pos + 1..]
                        .iter()
                        .map(|t| t.trim_matches(['"', '\'']).to_owned())
                        .collect(),
                    line: part.trim().to_owned(),
                });
            }
        }
    }
    out
}

/// `--flag` names used in `text` (also inside `${VAR:+--flag "…"}`).
fn flags_in(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"(?:^|[\s{+(])(--[a-z][a-z0-9-]*)").unwrap();
    re.captures_iter(text).map(|c| c[1].to_owned()).collect()
}

/// What the built binary offers for one subcommand path.
#[derive(Debug, Clone)]
enum Help {
    /// `forge PATH --help` worked: its flags, and whether it expects a further subcommand.
    Known {
        flags: BTreeSet<String>,
        has_subcommands: bool,
    },
    /// clap refused the subcommand.
    Missing(String),
}

#[derive(Default)]
struct HelpCache(BTreeMap<Vec<String>, Help>);

impl HelpCache {
    fn get(&mut self, path: &[String]) -> Help {
        if let Some(h) = self.0.get(path) {
            return h.clone();
        }
        let out = crate::support::forge()
            .args(path)
            .arg("--help")
            .output()
            .unwrap();
        let help = if out.status.success() {
            let text = stdout(&out);
            Help::Known {
                flags: flags_in(&text),
                has_subcommands: text.contains("\nCommands:\n"),
            }
        } else {
            Help::Missing(stderr(&out))
        };
        self.0.insert(path.to_vec(), help.clone());
        help
    }

    /// Resolves the subcommand path of a call (`auth credential-process`, `promote`) and the
    /// flags it uses that the binary does not have. `Err` when the subcommand is missing.
    fn check(&mut self, inv: &Invocation) -> Result<(Vec<String>, Vec<String>), String> {
        let mut path = Vec::new();
        for word in &inv.words {
            if word.starts_with('-') || word.starts_with('$') {
                break;
            }
            path.push(word.clone());
            match self.get(&path) {
                Help::Missing(err) => {
                    return Err(format!(
                        "`forge {}` does not exist in the built binary: {}",
                        path.join(" "),
                        err.lines().next().unwrap_or("")
                    ));
                }
                Help::Known {
                    has_subcommands: true,
                    ..
                } => continue,
                Help::Known { .. } => break,
            }
        }
        assert!(
            !path.is_empty(),
            "forge call without a subcommand: {}",
            inv.line
        );
        let Help::Known {
            flags,
            has_subcommands,
        } = self.get(&path)
        else {
            unreachable!("checked above")
        };
        assert!(
            !has_subcommands,
            "`forge {}` needs a subcommand: {}",
            path.join(" "),
            inv.line
        );
        let rest = inv.line.split_once("forge").map_or("", |(_, r)| r);
        let unknown = flags_in(rest)
            .into_iter()
            .filter(|f| !flags.contains(f))
            .collect();
        Ok((path, unknown))
    }
}

/// Fails (CI) or reports (locally) subcommands the templates call that the binary lacks.
fn report_missing(missing: &BTreeSet<String>) {
    if missing.is_empty() {
        return;
    }
    let list: Vec<&str> = missing.iter().map(String::as_str).collect();
    let msg = format!(
        "templates/scripts call forge subcommands the binary does not have yet:\n  {}",
        list.join("\n  ")
    );
    assert!(!forge_testkit::in_ci(), "{msg}");
    eprintln!("SKIPPED (not failing outside CI): {msg}");
}

#[test]
fn every_template_is_listed_and_parses() {
    let mut found = Vec::new();
    yaml_files(&repo_root().join("pipelines"), &mut found);
    let mut found: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(repo_root())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    let mut expected: Vec<String> = TEMPLATES.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(
        found, expected,
        "a template was added or removed: list it in TEMPLATES so the rules cover it"
    );
    for rel in TEMPLATES {
        let doc = load(rel);
        let mut all = Vec::new();
        scripts(&doc, &mut all);
        for (_, script) in all {
            let out = Command::new("bash")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{rel}: a script step is not valid bash:\n{script}\n{}",
                stderr(&out)
            );
        }
    }
    // GitHub's `.github/workflows` is deliberately not used (pipelines/README.md says why).
    assert!(
        !repo_root().join(".github/workflows").exists(),
        "the GitHub templates live in pipelines/github/ (pipelines/README.md says why); a \
         .github/workflows/ here would run them against this repository"
    );
}

#[test]
fn no_template_or_script_names_latest() {
    let word = regex::Regex::new(r"(?i)(^|[^a-z0-9_])latest($|[^a-z0-9_])").unwrap();
    for rel in TEMPLATES {
        let mut all = Vec::new();
        scalars(&load(rel), "", &mut all);
        for (path, value) in all {
            assert!(
                !word.is_match(&value),
                "{rel} {path}: `latest` appears in `{value}`: every image reference uses the build id"
            );
        }
    }
    for rel in SCRIPTS {
        let text = std::fs::read_to_string(repo_root().join(rel)).unwrap();
        assert!(!text.contains(":latest"), "{rel} names a :latest image");
    }
}

/// The image tag of the CI templates: the build id, nothing else, no override.
#[test]
fn ci_pushes_only_the_build_id() {
    for (rel, build_id, params) in [
        (
            "pipelines/azure/application-ci-pipeline.yml",
            "$(Build.BuildId)",
            "parameters",
        ),
        (
            "pipelines/github/application-ci.yml",
            "${{ github.run_id }}",
            "on.workflow_call.inputs",
        ),
    ] {
        let doc = load(rel);
        // No parameter/input can carry a tag.
        let names: Vec<String> = if params == "parameters" {
            doc["parameters"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        } else {
            doc["on"]["workflow_call"]["inputs"]
                .as_hash()
                .unwrap()
                .keys()
                .map(|k| k.as_str().unwrap().to_owned())
                .collect()
        };
        assert!(names.len() > 3, "{rel}: parameters found: {names:?}");
        for name in &names {
            assert!(
                !name.to_ascii_lowercase().contains("tag"),
                "{rel}: parameter `{name}` could override the image tag"
            );
        }

        let mut all = Vec::new();
        scripts(&doc, &mut all);
        let lines: Vec<String> = all.iter().flat_map(|(_, s)| logical_lines(s)).collect();
        let image_ref = |line: &str, after: &str| -> Option<String> {
            let rest = line.split_once(after)?.1;
            // The image is the word after `docker push` / `--tag`, a quoted string included.
            let rest = rest.trim_start();
            match rest.strip_prefix('"') {
                Some(quoted) => quoted.split_once('"').map(|(image, _)| image.to_owned()),
                None => rest.split_whitespace().next().map(str::to_owned),
            }
        };
        let pushes: Vec<String> = lines
            .iter()
            .filter_map(|l| image_ref(l, "docker push "))
            .collect();
        assert_eq!(
            pushes.len(),
            1,
            "{rel}: exactly one docker push: {pushes:?}"
        );
        let builds: Vec<String> = lines
            .iter()
            .filter(|l| l.contains("docker build"))
            .filter_map(|l| image_ref(l, "--tag "))
            .collect();
        assert_eq!(builds.len(), 1, "{rel}: one docker build --tag: {builds:?}");
        for image in pushes.iter().chain(&builds) {
            assert!(
                image.ends_with(&format!(":{build_id}")),
                "{rel}: image `{image}` must be tagged with {build_id} only"
            );
        }
        assert_eq!(pushes, builds, "{rel}: the pushed image is the built one");
        // Scanned before pushing: fs scan, then image scan of the same reference, then push.
        let position = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{rel}: no `{needle}`"))
        };
        let fs_scan = position("trivy filesystem");
        let build = position("docker build");
        let image_scan = position("trivy image");
        let push = position("docker push");
        let promote = position("forge promote");
        assert!(
            fs_scan < build && build < image_scan && image_scan < push && push < promote,
            "{rel}: order must be trivy fs → docker build → trivy image → push → forge promote"
        );
        assert!(
            lines[image_scan].contains(&pushes[0]),
            "{rel}: trivy scans the pushed image"
        );
        assert!(
            lines[fs_scan].contains("--exit-code 1") && lines[image_scan].contains("--exit-code 1"),
            "{rel}: Trivy findings must fail the build"
        );
        let promote_line = &lines[promote];
        assert!(
            promote_line.contains(&format!("--tag \"{build_id}\"")),
            "{rel}: forge promote records the build id: {promote_line}"
        );
    }
}

#[test]
fn azure_release_promotes_dev_qa_prod_with_approval() {
    let rel = "pipelines/azure/release-pipeline.yml";
    let doc = load(rel);
    let stages = doc["stages"].as_vec().unwrap();
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Dev", "QA", "Prod"]);
    assert_eq!(stages[1]["dependsOn"].as_str(), Some("Dev"));
    assert_eq!(stages[2]["dependsOn"].as_str(), Some("QA"));
    for (stage, env) in [(&stages[1], "qa"), (&stages[2], "prod")] {
        let mut all = Vec::new();
        scripts(stage, &mut all);
        let calls: Vec<Invocation> = all.iter().flat_map(|(_, s)| invocations(s)).collect();
        let promotes: Vec<&Invocation> = calls
            .iter()
            .filter(|c| c.words.first().map(String::as_str) == Some("promote"))
            .collect();
        assert_eq!(promotes.len(), 1, "{rel} {env}: one forge promote");
        let line = &promotes[0].line;
        assert!(line.contains(&format!("--to {env}")), "{line}");
        assert!(
            line.contains("--requested-by \"$(Build.RequestedForEmail)\""),
            "{line}"
        );
        for job in stage["jobs"].as_vec().unwrap() {
            assert!(
                job["deployment"].as_str().is_some() && job["environment"].as_str().is_some(),
                "{rel} {env}: jobs are deployment jobs on an environment (where approvals live)"
            );
        }
    }
    // Prod: approval environment, approver resolved from the run and passed on.
    let prod = &stages[2];
    let job = &prod["jobs"][0];
    assert_eq!(
        job["environment"].as_str(),
        Some("${{ parameters.prodEnvironment }}")
    );
    let param = doc["parameters"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("prodEnvironment"))
        .unwrap();
    assert!(param["default"].as_str().is_some_and(|d| !d.is_empty()));
    let steps = job["strategy"]["runOnce"]["deploy"]["steps"]
        .as_vec()
        .unwrap();
    let approver_step = steps
        .iter()
        .position(|s| s["template"].as_str() == Some("steps/resolve-approver.yml"))
        .expect("prod resolves its approver");
    assert_eq!(
        steps[approver_step]["parameters"]["stage"].as_str(),
        Some("Prod")
    );
    let promote_step = steps
        .iter()
        .position(|s| {
            s["bash"]
                .as_str()
                .is_some_and(|b| b.contains("forge promote"))
        })
        .unwrap();
    assert!(approver_step < promote_step);
    let script = steps[promote_step]["bash"].as_str().unwrap();
    assert!(
        script.contains("--approved-by \"$(FORGE_APPROVER)\""),
        "{script}"
    );
    let approver = load("pipelines/azure/steps/resolve-approver.yml");
    let body = approver["steps"][0]["bash"].as_str().unwrap();
    assert!(body.contains("variable=FORGE_APPROVER"));
    assert!(
        body.contains("exit 1"),
        "no approval found must fail the stage"
    );
    // QA has no approver: only prod carries --approved-by.
    let mut qa = Vec::new();
    scripts(&stages[1], &mut qa);
    assert!(qa.iter().all(|(_, s)| !s.contains("--approved-by")));
}

#[test]
fn ec2_pipeline_deploys_through_promote_or_rollback() {
    let rel = "pipelines/azure/ec2-deploy-pipeline.yml";
    let doc = load(rel);
    let stage = &doc["stages"][0];
    let job = &stage["jobs"][0];
    assert_eq!(
        job["environment"].as_str(),
        Some("forge-${{ parameters.environment }}")
    );
    let envs: Vec<&str> = doc["parameters"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("environment"))
        .unwrap()["values"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(envs, ["dev", "qa", "prod"]);
    let text = std::fs::read_to_string(repo_root().join(rel)).unwrap();
    assert!(text.contains("${{ if eq(parameters.environment, 'prod') }}"));
    assert!(text.contains("template: steps/resolve-approver.yml"));
    let mut all = Vec::new();
    scripts(&doc, &mut all);
    let subs: BTreeSet<String> = all
        .iter()
        .flat_map(|(_, s)| invocations(s))
        .filter_map(|i| i.words.first().cloned())
        .collect();
    assert_eq!(
        subs,
        BTreeSet::from(["promote".to_owned(), "rollback".to_owned()])
    );
}

#[test]
fn github_workflows_use_oidc_and_a_prod_environment() {
    for rel in [
        "pipelines/github/application-ci.yml",
        "pipelines/github/release.yml",
    ] {
        let doc = load(rel);
        assert_eq!(
            doc["permissions"]["id-token"].as_str(),
            Some("write"),
            "{rel}: OIDC needs permissions: id-token: write"
        );
        assert_eq!(doc["permissions"]["contents"].as_str(), Some("read"));
    }
    let doc = load("pipelines/github/release.yml");
    let jobs = doc["jobs"].as_hash().unwrap();
    let names: Vec<&str> = jobs.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(names, ["dev", "qa", "prod"]);
    assert_eq!(doc["jobs"]["qa"]["needs"].as_str(), Some("dev"));
    assert_eq!(doc["jobs"]["prod"]["needs"].as_str(), Some("qa"));
    assert_eq!(doc["jobs"]["prod"]["environment"].as_str(), Some("prod"));
    let mut prod = Vec::new();
    scripts(&doc["jobs"]["prod"], &mut prod);
    let promote = prod
        .iter()
        .find(|(_, s)| s.contains("forge promote"))
        .unwrap();
    assert!(promote.1.contains("--to prod"));
    assert!(promote.1.contains("--approved-by \"${APPROVER}\""));
    assert_eq!(
        promote.0["env"]["APPROVER"].as_str(),
        Some("${{ steps.approval.outputs.approver }}")
    );
    // Local actions and templates referenced by the files exist.
    let action = "./.github/actions/install-forge";
    let text = std::fs::read_to_string(repo_root().join("pipelines/github/release.yml")).unwrap();
    assert!(text.contains(action));
    assert!(
        repo_root()
            .join("pipelines/github/actions/install-forge/action.yml")
            .is_file()
    );
}

/// `template:` references resolve relative to the including file.
#[test]
fn template_references_resolve() {
    fn refs(node: &Yaml, out: &mut Vec<String>) {
        match node {
            Yaml::Array(items) => items.iter().for_each(|i| refs(i, out)),
            Yaml::Hash(map) => {
                if let Some(t) = node["template"].as_str() {
                    out.push(t.to_owned());
                }
                map.values().for_each(|v| refs(v, out));
            }
            _ => {}
        }
    }
    let mut count = 0;
    for rel in TEMPLATES
        .iter()
        .filter(|t| t.starts_with("pipelines/azure"))
    {
        let mut found = Vec::new();
        refs(&load(rel), &mut found);
        let dir = repo_root().join(rel);
        let dir = dir.parent().unwrap();
        for t in found {
            assert!(dir.join(&t).is_file(), "{rel}: template {t} not found");
            count += 1;
        }
    }
    assert!(count >= 6, "templates include the shared steps ({count})");
}

/// Every Azure step that calls forge for AWS or the Ledger maps System.AccessToken (OIDC).
#[test]
fn azure_forge_steps_get_the_oidc_access_token() {
    for rel in TEMPLATES
        .iter()
        .filter(|t| t.starts_with("pipelines/azure"))
    {
        let doc = load(rel);
        let mut all = Vec::new();
        scripts(&doc, &mut all);
        for (step, script) in all {
            let needs_aws = invocations(&script)
                .iter()
                .any(|i| i.words.first().is_some_and(|w| w != "config"));
            if needs_aws {
                assert_eq!(
                    step["env"]["SYSTEM_ACCESSTOKEN"].as_str(),
                    Some("$(System.AccessToken)"),
                    "{rel}: step `{}` calls forge without SYSTEM_ACCESSTOKEN",
                    step["displayName"].as_str().unwrap_or("?")
                );
            }
        }
    }
}

#[test]
fn every_forge_call_in_the_templates_uses_existing_flags() {
    let mut cache = HelpCache::default();
    let mut missing = BTreeSet::new();
    let mut checked = 0;
    for rel in TEMPLATES {
        let doc = load(rel);
        let mut all = Vec::new();
        scripts(&doc, &mut all);
        for (_, script) in all {
            for inv in invocations(&script) {
                if inv.words.first().map(String::as_str) == Some("--version") {
                    continue;
                }
                match cache.check(&inv) {
                    Ok((path, unknown)) => {
                        assert!(
                            unknown.is_empty(),
                            "{rel}: `forge {}` has no flag(s) {unknown:?}: {}",
                            path.join(" "),
                            inv.line
                        );
                        checked += 1;
                    }
                    Err(e) => {
                        missing.insert(format!("{e} (in {rel})"));
                    }
                }
            }
        }
    }
    assert!(checked + missing.len() >= 15, "found {checked} forge calls");
    report_missing(&missing);
}

#[test]
fn self_check_of_the_invocation_parser() {
    let calls = invocations(
        "set -e\n# forge promote --nope\nforge promote --service \"$S\" --to qa \\\n  --tag \"$T\" ${A:+--approved-by \"$A\"} | tee x\necho \"credential_process = forge auth credential-process --env dev\"\n./forge --version\n",
    );
    let words: Vec<Vec<String>> = calls.iter().map(|c| c.words.clone()).collect();
    assert_eq!(words.len(), 2, "{words:?}");
    assert_eq!(words[0][0], "promote");
    assert_eq!(
        flags_in(&calls[0].line),
        BTreeSet::from(["--service", "--to", "--tag", "--approved-by"].map(str::to_owned))
    );
    assert_eq!(
        words[1][..2],
        ["auth".to_owned(), "credential-process".to_owned()]
    );
    // A made-up flag is caught against the real binary.
    let mut cache = HelpCache::default();
    let bogus = Invocation {
        words: vec!["config".into(), "check".into(), "--no-such-flag".into()],
        line: "forge config check --no-such-flag".into(),
    };
    let (path, unknown) = cache.check(&bogus).unwrap();
    assert_eq!(path, ["config", "check"]);
    assert_eq!(unknown, ["--no-such-flag"]);
    let nosub = Invocation {
        words: vec!["no-such-command".into()],
        line: "forge no-such-command".into(),
    };
    assert!(cache.check(&nosub).unwrap_err().contains("does not exist"));
}

#[test]
fn scripts_pass_shellcheck() {
    let Some(shellcheck) = forge_testkit::require_tool("shellcheck") else {
        return;
    };
    let out = Command::new(shellcheck)
        .arg("--external-sources")
        .args(SCRIPTS)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    for rel in SCRIPTS {
        let text = std::fs::read_to_string(repo_root().join(rel)).unwrap();
        assert!(text.starts_with("#!/usr/bin/env bash\n"), "{rel}");
        assert!(text.contains("\nset -euo pipefail\n"), "{rel}");
    }
}

/// A stand-in `forge` that records its arguments (one per line) and exits with
/// `$RECORD_EXIT`: shows the scripts' argument mapping and exit-code pass-through exactly.
fn recorder(dir: &Path) -> PathBuf {
    let path = dir.join("forge-recorder");
    std::fs::write(
        &path,
        "#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > \"$RECORD_FILE\"\nexit \"${RECORD_EXIT:-0}\"\n",
    )
    .unwrap();
    let status = Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    assert!(status.success());
    path
}

fn run_script(
    script: &str,
    forge_bin: &Path,
    args: &[&str],
    exit: i32,
) -> (std::process::Output, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("args");
    let out = Command::new(repo_root().join(script))
        .args(args)
        .env("FORGE_BIN", forge_bin)
        .env("RECORD_FILE", &record)
        .env("RECORD_EXIT", exit.to_string())
        .output()
        .unwrap();
    let recorded = std::fs::read_to_string(&record)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    (out, recorded)
}

#[test]
fn scripts_map_arguments_exactly_and_pass_the_exit_code_through() {
    let dir = tempfile::tempdir().unwrap();
    let rec = recorder(dir.path());
    // (script, args, expected forge argv)
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "scripts/copy-artifact.sh",
            &[
                "--source",
                "a/x:1",
                "--destination",
                "b/x:1",
                "--jobs",
                "2",
                "--output",
                "json",
            ],
            &["copy", "a/x:1", "b/x:1", "--jobs", "2", "--output", "json"],
        ),
        (
            "scripts/copy-artifact.sh",
            &[
                "--service",
                "payments",
                "--to",
                "prod",
                "--tag",
                "12",
                "--requested-by",
                "a@x",
                "--approved-by",
                "b@x",
                "--evidence",
                "e.json",
                "--config",
                "f.toml",
                "--dry-run",
                "--allow-unrecorded-digest",
            ],
            &[
                "promote",
                "--service",
                "payments",
                "--to",
                "prod",
                "--tag",
                "12",
                "--requested-by",
                "a@x",
                "--approved-by",
                "b@x",
                "--evidence",
                "e.json",
                "--config",
                "f.toml",
                "--dry-run",
                "--allow-unrecorded-digest",
            ],
        ),
        (
            "scripts/update-ledger.sh",
            &[
                "--repo",
                "file:///l.git",
                "--file",
                "apps/dev/p.yaml",
                "--tag",
                "12",
                "--expect-tag",
                "11",
                "--service",
                "p",
                "--env",
                "dev",
                "--trailer",
                "Forge-Build-Id=12",
                "--trailer",
                "K=two words",
            ],
            &[
                "ledger",
                "set-tag",
                "--repo",
                "file:///l.git",
                "--file",
                "apps/dev/p.yaml",
                "--tag",
                "12",
                "--expect-tag",
                "11",
                "--trailer",
                "Forge-Build-Id=12",
                "--trailer",
                "K=two words",
                "--service",
                "p",
                "--env",
                "dev",
            ],
        ),
    ];
    let mut cache = HelpCache::default();
    let mut missing = BTreeSet::new();
    for (script, args, expected) in cases {
        for exit in [0, 1, 2, 7] {
            let (out, recorded) = run_script(script, &rec, args, exit);
            assert_eq!(
                out.status.code(),
                Some(exit),
                "{script}: forge's exit code {exit} passes through"
            );
            assert_eq!(recorded, *expected, "{script} {args:?}");
        }
        // The mapped call is valid for the real binary.
        let line = format!("forge {}", expected.join(" "));
        let inv = Invocation {
            words: expected.iter().map(|s| (*s).to_owned()).collect(),
            line: line.clone(),
        };
        match cache.check(&inv) {
            Ok((_, unknown)) => {
                assert!(unknown.is_empty(), "{script}: {line}: unknown {unknown:?}")
            }
            Err(e) => {
                missing.insert(format!("{e} (from {script})"));
            }
        }
    }
    // Every flag each script accepts is one forge has (the scripts' `case` arms ↔ forge --help):
    // copy-artifact.sh maps to `copy` or `promote`, update-ledger.sh to `ledger set-tag`.
    let case_flags = regex::Regex::new(r"(?m)^\s+(--[a-z-]+(?: \| --[a-z-]+)*)\)").unwrap();
    for (script, subcommands) in [
        (
            "scripts/update-ledger.sh",
            &[&["ledger", "set-tag"][..]][..],
        ),
        (
            "scripts/copy-artifact.sh",
            &[&["copy"][..], &["promote"][..]][..],
        ),
    ] {
        let mut offered = BTreeSet::new();
        for sub in subcommands {
            let path: Vec<String> = sub.iter().map(|s| (*s).to_owned()).collect();
            match cache.get(&path) {
                Help::Known { flags, .. } => offered.extend(flags),
                Help::Missing(_) => {
                    missing.insert(format!("forge {} (from {script})", sub.join(" ")));
                }
            }
        }
        let text = std::fs::read_to_string(repo_root().join(script)).unwrap();
        let accepted: Vec<String> = case_flags
            .captures_iter(&text)
            .flat_map(|cap| cap[1].split(" | ").map(str::to_owned).collect::<Vec<_>>())
            .collect();
        assert!(accepted.len() >= 8, "{script}: flags found: {accepted:?}");
        for flag in accepted {
            // SRC and DST are positionals of `forge copy`.
            if flag == "--source"
                || flag == "--destination"
                || missing.iter().any(|m| m.contains(script))
            {
                continue;
            }
            assert!(
                offered.contains(&flag),
                "{script} accepts {flag}, which forge {subcommands:?} does not have"
            );
        }
    }
    report_missing(&missing);
}

#[test]
fn scripts_refuse_bad_usage_without_calling_forge() {
    let dir = tempfile::tempdir().unwrap();
    let rec = recorder(dir.path());
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "scripts/copy-artifact.sh",
            &[],
            "give --source and --destination, or --service and --to",
        ),
        (
            "scripts/copy-artifact.sh",
            &["--source", "a"],
            "--source needs --destination",
        ),
        (
            "scripts/copy-artifact.sh",
            &["--service", "p"],
            "--service needs --to",
        ),
        ("scripts/copy-artifact.sh", &["--to"], "--to needs a value"),
        (
            "scripts/copy-artifact.sh",
            &["--source", "a", "--destination", "b", "--to", "qa"],
            "not both",
        ),
        (
            "scripts/copy-artifact.sh",
            &["--source", "a", "--destination", "b", "--tag", "1"],
            "belong to the --service/--to form",
        ),
        (
            "scripts/copy-artifact.sh",
            &["--service", "p", "--to", "qa", "--jobs", "2"],
            "belong to the --source/--destination form",
        ),
        (
            "scripts/copy-artifact.sh",
            &["--bogus"],
            "unknown argument '--bogus'",
        ),
        (
            "scripts/update-ledger.sh",
            &["--file", "f", "--tag", "1"],
            "--repo is required",
        ),
        (
            "scripts/update-ledger.sh",
            &["--repo", "r", "--tag", "1"],
            "--file is required",
        ),
        (
            "scripts/update-ledger.sh",
            &["--repo", "r", "--file", "f"],
            "--tag is required",
        ),
        (
            "scripts/update-ledger.sh",
            &["--repo", "r", "--file", "f", "--tag", "1", "--env", "dev"],
            "--service and --env go together",
        ),
        (
            "scripts/update-ledger.sh",
            &["--repo", "r", "--file", "f", "--tag"],
            "--tag needs a value",
        ),
    ];
    for (script, args, message) in cases {
        let (out, recorded) = run_script(script, &rec, args, 0);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains(message),
            "{script} {args:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("usage:"), "usage is shown");
        assert!(recorded.is_empty(), "{script} {args:?} must not call forge");
    }
    for script in SCRIPTS {
        let (out, recorded) = run_script(script, &rec, &["--help"], 0);
        assert_success(&out);
        assert!(stdout(&out).starts_with("usage:"));
        assert!(recorded.is_empty());
    }
}

fn forge_has(path: &[&str]) -> bool {
    let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
    if matches!(HelpCache::default().get(&path), Help::Known { .. }) {
        return true;
    }
    report_missing(&BTreeSet::from([format!("forge {}", path.join(" "))]));
    false
}

fn skopeo_digest(reference: &str) -> String {
    let out = forge_testkit::skopeo_run(&["inspect", "--raw", "--tls-verify=false", reference]);
    forge_testkit::oci::sha256(&out.stdout)
}

/// `copy-artifact.sh` with the real `forge` on PATH between two real registries; skopeo is the
/// oracle for the digests.
#[test]
fn copy_artifact_copies_between_two_real_registries() {
    if !forge_has(&["copy"]) {
        return;
    }
    let Some(_skopeo) = forge_testkit::skopeo() else {
        return;
    };
    let (Some(dev), Some(qa)) = (
        forge_testkit::Registry::start(),
        forge_testkit::Registry::start(),
    ) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("build");
    forge_testkit::oci::write_image(&layout, "100").unwrap();
    let other = work.path().join("other");
    forge_testkit::oci::write_image(&other, "1").unwrap();
    let src = format!("{}/payments/api:100", dev.host());
    let dst = format!("{}/payments/api:100", qa.host());
    forge_testkit::skopeo_run(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:100", layout.display()),
        &format!("docker://{src}"),
    ]);
    // QA's repository is pre-provisioned (Forge never creates repositories).
    forge_testkit::skopeo_run(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", other.display()),
        &format!("docker://{}/payments/api:1", qa.host()),
    ]);

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_forge"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(repo_root().join("scripts/copy-artifact.sh"));
        cmd.args(args).env("PATH", &path).env_remove("FORGE_BIN");
        for var in [
            "TF_BUILD",
            "GITHUB_ACTIONS",
            "GITHUB_OUTPUT",
            "FORGE_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        cmd.output().unwrap()
    };

    let out = run(&["--source", &src, "--destination", &dst, "--output", "json"]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let expected = skopeo_digest(&format!("docker://{src}"));
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["digest"], expected.as_str());
    assert_eq!(skopeo_digest(&format!("docker://{dst}")), expected);

    // Again: nothing to do, still success.
    let out = run(&["--source", &src, "--destination", &dst, "--output", "json"]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["already_present"], true, "{report}");

    // forge's refusals come through with forge's exit code: `latest`, a missing repository.
    let out = run(&[
        "--source",
        &src,
        "--destination",
        &format!("{}/payments/api:latest", qa.host()),
    ]);
    assert_exit(&out, 2);
    let before = qa.repositories();
    let out = run(&[
        "--source",
        &src,
        "--destination",
        &format!("{}/unprovisioned/api:100", qa.host()),
    ]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert_eq!(qa.repositories(), before, "nothing created");
}

/// `update-ledger.sh` with the real `forge` against a file:// Ledger.
#[test]
fn update_ledger_sets_the_tag_in_a_real_ledger() {
    if !forge_has(&["ledger", "set-tag"]) {
        return;
    }
    if forge_testkit::require_tool("git").is_none() {
        return;
    }
    let file = "apps/dev/payments.yaml";
    let remote = forge_testkit::BareRemote::seeded(&[(
        file,
        "image:\n  repository: payments/api\n  tag: \"100\"\n",
    )]);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_forge"));
    let run = |args: &[&str]| {
        let mut cmd = Command::new(repo_root().join("scripts/update-ledger.sh"));
        cmd.args(args).env("FORGE_BIN", &bin);
        for var in [
            "TF_BUILD",
            "GITHUB_ACTIONS",
            "GITHUB_OUTPUT",
            "FORGE_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("GIT_AUTHOR_NAME", "Forge Test")
            .env("GIT_AUTHOR_EMAIL", "test@forge.invalid")
            .env("GIT_COMMITTER_NAME", "Forge Test")
            .env("GIT_COMMITTER_EMAIL", "test@forge.invalid");
        cmd.output().unwrap()
    };
    let url = remote.url();
    let out = run(&[
        "--repo",
        &url,
        "--file",
        file,
        "--tag",
        "101",
        "--expect-tag",
        "100",
        "--service",
        "payments",
        "--env",
        "dev",
        "--trailer",
        "Forge-Build-Id=101",
        "--output",
        "json",
    ]);
    assert_success(&out);
    let result: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(result["old"], "100");
    assert_eq!(result["new"], "101");
    assert!(
        remote.read(file).contains("tag: \"101\""),
        "{}",
        remote.read(file)
    );
    let log = remote.log();
    assert_eq!(log.len(), 2, "{log:?}");
    let body = forge_testkit::git(&remote.path(), &["log", "-1", "--format=%B", "main"]);
    assert!(body.contains("Forge-Build-Id: 101"), "{body}");

    // A stale --expect-tag is refused by forge (superseded), exit 2, remote unchanged.
    let out = run(&[
        "--repo",
        &url,
        "--file",
        file,
        "--tag",
        "102",
        "--expect-tag",
        "100",
    ]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("superseded"), "{}", stderr(&out));
    let out = run(&["--repo", &url, "--file", file, "--tag", "latest"]);
    assert_exit(&out, 2);
    assert_eq!(remote.log().len(), 2, "nothing pushed by the refusals");
    assert!(remote.read(file).contains("tag: \"101\""));
}

/// Argo CD Application with the tag in a helm parameter (the Ledger shape the promote tests use).
fn application(service: &str, env: &str, tag: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {service}-{env}\nspec:\n  source:\n    repoURL: https://example.invalid/charts.git\n    path: charts/{service}\n    helm:\n      parameters:\n        - name: image.tag\n          value: \"{tag}\"\n"
    )
}

/// The promote form of `copy-artifact.sh` (a Classic Release "QA" / "Prod" stage) with the real
/// `forge` on PATH: two real registries, a file:// Ledger, skopeo as the oracle.
#[test]
fn copy_artifact_promotes_through_the_real_forge() {
    if !forge_has(&["promote"]) {
        return;
    }
    let Some(_skopeo) = forge_testkit::skopeo() else {
        return;
    };
    let (Some(dev), Some(qa)) = (
        forge_testkit::Registry::start(),
        forge_testkit::Registry::start(),
    ) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("build");
    let digest = forge_testkit::oci::write_image(&layout, "1001").unwrap();
    let other = work.path().join("other");
    forge_testkit::oci::write_image(&other, "0").unwrap();
    let push = |layout: &Path, tag: &str, dst: String| {
        forge_testkit::skopeo_run(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{dst}"),
        ]);
    };
    push(&layout, "1001", format!("{}/payments/api:1001", dev.host()));
    push(
        &other,
        "0",
        format!("{}/payments/api:provisioned", qa.host()),
    );
    push(
        &other,
        "0",
        format!("{}/prod/payments/api:provisioned", qa.host()),
    );
    let ledger = forge_testkit::BareRemote::seeded(&[
        (
            "apps/dev/payments.yaml",
            &application("payments", "dev", "1000"),
        ),
        (
            "apps/qa/payments.yaml",
            &application("payments", "qa", "1000"),
        ),
        (
            "apps/prod/payments.yaml",
            &application("payments", "prod", "1000"),
        ),
    ]);
    let config = work.path().join("forge.toml");
    std::fs::write(
        &config,
        format!(
            "[ledger]\nrepo = \"{}\"\nbranch = \"main\"\npath = \"apps/{{env}}/{{service}}.yaml\"\n\n\
             [auth]\ntoken = \"none\"\n\n[policy]\ntag_pattern = \"^[0-9]+$\"\nsupport = \"#platform-support\"\n\n\
             [environments.dev]\nregistry = \"{}\"\n\n\
             [environments.qa]\nfrom = \"dev\"\nregistry = \"{}\"\napproval = \"optional\"\n\n\
             [environments.prod]\nfrom = \"qa\"\nregistry = \"{}/prod\"\napproval = \"required\"\nsync = \"manual\"\n\n\
             [services.payments]\nrepository = \"payments/api\"\n",
            ledger.url(),
            dev.host(),
            qa.host(),
            qa.host()
        ),
    )
    .unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_forge"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(repo_root().join("scripts/copy-artifact.sh"));
        cmd.args(args)
            .args(["--config", &config_arg])
            .current_dir(work.path())
            .env("PATH", &path)
            .env_remove("FORGE_BIN");
        for var in [
            "TF_BUILD",
            "GITHUB_ACTIONS",
            "GITHUB_OUTPUT",
            "FORGE_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("GIT_AUTHOR_NAME", "Forge Test")
            .env("GIT_AUTHOR_EMAIL", "test@forge.invalid")
            .env("GIT_COMMITTER_NAME", "Forge Test")
            .env("GIT_COMMITTER_EMAIL", "test@forge.invalid");
        cmd.output().unwrap()
    };
    let ledger_tag = |env: &str| {
        let text = ledger.read(&format!("apps/{env}/payments.yaml"));
        text.lines()
            .find(|l| l.contains("value:"))
            .and_then(|l| l.split('"').nth(1))
            .unwrap()
            .to_owned()
    };

    // The CI form records Dev's build (and its digest) in the Ledger first.
    let out = run(&[
        "--service",
        "payments",
        "--to",
        "dev",
        "--tag",
        "1001",
        "--requested-by",
        "ci@example.com",
    ]);
    assert_success(&out);
    assert_eq!(ledger_tag("dev"), "1001");

    let evidence = work.path().join("evidence-qa.json");
    let evidence_arg = evidence.to_string_lossy().into_owned();
    let out = run(&[
        "--service",
        "payments",
        "--to",
        "qa",
        "--tag",
        "1001",
        "--requested-by",
        "alice@example.com",
        "--evidence",
        &evidence_arg,
        "--output",
        "json",
    ]);
    assert_success(&out);
    assert_eq!(
        skopeo_digest(&format!("docker://{}/payments/api:1001", qa.host())),
        digest,
        "QA holds the bytes CI built"
    );
    assert_eq!(ledger_tag("qa"), "1001");
    assert!(
        std::fs::read_to_string(&evidence)
            .unwrap()
            .contains(&digest),
        "evidence names the digest"
    );

    // Prod needs an approver who is not the requester: forge refuses (exit 2), nothing written.
    let log_before = ledger.log();
    let out = run(&[
        "--service",
        "payments",
        "--to",
        "prod",
        "--tag",
        "1001",
        "--requested-by",
        "alice@example.com",
        "--approved-by",
        "Alice@Example.com",
    ]);
    assert_exit(&out, 2);
    assert_eq!(ledger.log(), log_before, "nothing written to the Ledger");
    assert_eq!(ledger_tag("prod"), "1000");
    assert!(
        !forge_testkit::skopeo_try(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/prod/payments/api:1001", qa.host()),
        ])
        .status
        .success(),
        "nothing copied to Prod"
    );

    // With a different approver it lands.
    let out = run(&[
        "--service",
        "payments",
        "--to",
        "prod",
        "--tag",
        "1001",
        "--requested-by",
        "alice@example.com",
        "--approved-by",
        "bob@example.com",
    ]);
    assert_success(&out);
    assert_eq!(ledger_tag("prod"), "1001");
    assert_eq!(
        skopeo_digest(&format!("docker://{}/prod/payments/api:1001", qa.host())),
        digest
    );
}
