//! `lint_dir` over a small Ledger checkout written to a temporary directory.

use std::path::{Path, PathBuf};

use forge_ledger::{LintError, LintOptions, lint_dir, lint_text};

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn app(name: &str, automated: bool, source: &str) -> String {
    let sync = if automated {
        "  syncPolicy:\n    automated:\n      prune: true\n"
    } else {
        "  syncPolicy: {}\n"
    };
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n{source}{sync}"
    )
}

fn helm_tag(tag: &str) -> String {
    format!("    helm:\n      parameters:\n      - name: image.tag\n        value: {tag}\n")
}

fn ledger() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Vec<(&str, String)> = vec![
        ("apps/dev/api.yaml", app("api-dev", true, &helm_tag("\"1.0\""))),
        ("apps/prod/api.yaml", app("api-prod", true, &helm_tag("latest"))),
        (
            "apps/prod/web.yml",
            app(
                "web-prod",
                false,
                &format!("    kustomize:\n      images:\n      - nginx\n      - redis:7.2@{DIGEST}\n      - team/web:1.4.0\n"),
            ),
        ),
        ("apps/qa/broken.yaml", "kind: Application\nmetadata: [unclosed\n".to_owned()),
        (
            "apps/qa/deploy.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n      - name: b\n        image: busybox:stable\n".to_owned(),
        ),
        ("apps/qa/values.yaml", "image:\n  repository: team/api\n  tag: main\n".to_owned()),
        ("clusters/eu-prod-1/app.yaml", app("eu", true, &helm_tag("\"2.0\""))),
        (".git/ignored.yaml", "image: x:latest\n".to_owned()),
        ("README.md", "image: x:latest\n".to_owned()),
    ];
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

fn summary(findings: &[forge_ledger::Finding]) -> Vec<(String, usize, String)> {
    findings
        .iter()
        .map(|f| {
            (
                f.file.to_string_lossy().replace('\\', "/"),
                f.line,
                f.rule.clone(),
            )
        })
        .collect()
}

fn s(file: &str, line: usize, rule: &str) -> (String, usize, String) {
    (file.to_owned(), line, rule.to_owned())
}

#[test]
fn lint_reports_each_rule_with_file_and_line() {
    let dir = ledger();
    let findings = lint_dir(dir.path(), &LintOptions::default()).expect("lint");
    assert_eq!(
        summary(&findings),
        vec![
            s("apps/prod/api.yaml", 10, "mutable-tag"),
            s("apps/prod/api.yaml", 12, "prod-auto-sync"),
            s("apps/prod/web.yml", 9, "mutable-tag"),
            s("apps/qa/broken.yaml", 3, "parse"),
            s("apps/qa/deploy.yaml", 8, "mutable-tag"),
            s("apps/qa/values.yaml", 3, "mutable-tag"),
        ]
    );
    insta::assert_json_snapshot!("lint_default", findings);
}

#[test]
fn digest_policy_and_prod_pattern() {
    let dir = ledger();
    let options = LintOptions {
        require_digests: true,
        prod_path_pattern: Some(r"(^|/)[a-z]+-prod-\d+/".to_owned()),
        ..LintOptions::default()
    };
    let findings = lint_dir(dir.path(), &options).expect("lint");
    let got = summary(&findings);
    // nginx (no tag) and team/web:1.4.0 lack digests; redis is pinned.
    assert!(
        got.contains(&s("apps/prod/web.yml", 9, "digest-required")),
        "{got:?}"
    );
    assert!(
        got.contains(&s("apps/prod/web.yml", 11, "digest-required")),
        "{got:?}"
    );
    assert!(
        !got.iter()
            .any(|(f, l, _)| f == "apps/prod/web.yml" && *l == 10),
        "{got:?}"
    );
    assert!(
        got.contains(&s("apps/qa/deploy.yaml", 8, "digest-required")),
        "{got:?}"
    );
    // The pattern marks clusters/eu-prod-1 as Prod, so its automated sync is reported.
    assert!(
        got.contains(&s("clusters/eu-prod-1/app.yaml", 12, "prod-auto-sync")),
        "{got:?}"
    );
    // Dev may sync automatically.
    assert!(
        !got.iter()
            .any(|(f, _, r)| f == "apps/dev/api.yaml" && r == "prod-auto-sync"),
        "{got:?}"
    );
}

#[test]
fn clean_ledger_and_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus");
    let findings = lint_dir(&corpus, &LintOptions::default()).expect("lint corpus");
    assert_eq!(
        findings,
        vec![],
        "the corpus has pinned tags and no Prod path"
    );
    // The same manifest as a Prod file: its automated sync is reported.
    let text = std::fs::read_to_string(corpus.join("argo-cd-operator-manual-application.yaml"))
        .expect("read");
    let findings = lint_text(
        &PathBuf::from("envs/prod/guestbook.yaml"),
        &text,
        &LintOptions::default(),
    )
    .expect("lint");
    assert_eq!(
        summary(&findings),
        vec![s("envs/prod/guestbook.yaml", 111, "prod-auto-sync")]
    );
    let message = &findings[0].message;
    assert!(
        message.contains("Application/guestbook") && message.contains("remove `automated`"),
        "{message}"
    );
}

#[test]
fn automated_disabled_is_accepted_and_file_names_count_as_prod() {
    let text = app("api-prod", false, &helm_tag("\"1.0\"")).replace(
        "  syncPolicy: {}\n",
        "  syncPolicy:\n    automated:\n      enabled: false\n",
    );
    let options = LintOptions::default();
    assert_eq!(
        lint_text(Path::new("apps/api-prod.yaml"), &text, &options).expect("lint"),
        vec![]
    );
    let automated = app("api-prod", true, &helm_tag("\"1.0\""));
    let findings = lint_text(Path::new("apps/api-prod.yaml"), &automated, &options).expect("lint");
    assert_eq!(
        summary(&findings),
        vec![s("apps/api-prod.yaml", 12, "prod-auto-sync")]
    );
}

#[test]
fn bad_options_and_paths_are_errors() {
    let options = LintOptions {
        prod_path_pattern: Some("(".to_owned()),
        ..LintOptions::default()
    };
    assert!(matches!(
        lint_dir(Path::new("."), &options),
        Err(LintError::Pattern { .. })
    ));
    let missing = Path::new("/nonexistent/forge-ledger-lint");
    match lint_dir(missing, &LintOptions::default()) {
        Err(e @ LintError::Io { .. }) => {
            assert!(e.to_string().contains("/nonexistent/forge-ledger-lint"))
        }
        other => panic!("expected Io, got {other:?}"),
    }
}
