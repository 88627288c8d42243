//! The patcher on hand-written fixtures for every shape: the diff is exactly the tag.

use forge_ledger::{PatchError, Selector, patch_image, patch_tag, read_tag};

/// A fixture file under `tests/fixtures/`.
pub(crate) fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// The minimal changed region: `(offset, bytes before, bytes after)`, `None` when equal.
pub(crate) fn changed_region<'a>(
    before: &'a str,
    after: &'a str,
) -> Option<(usize, &'a [u8], &'a [u8])> {
    let (a, b) = (before.as_bytes(), after.as_bytes());
    if a == b {
        return None;
    }
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let max_suffix = a.len().min(b.len()) - prefix;
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max_suffix)
        .take_while(|(x, y)| x == y)
        .count();
    Some((
        prefix,
        &a[prefix..a.len() - suffix],
        &b[prefix..b.len() - suffix],
    ))
}

/// Asserts that `after` is `before` with the one occurrence of `old_raw` on 1-based `line` replaced by `new_raw`,
/// and that the changed bytes lie inside that occurrence.
pub(crate) fn assert_only_scalar_changed(
    before: &str,
    after: &str,
    line: usize,
    old_raw: &str,
    new_raw: &str,
) {
    let line_start: usize = before
        .split_inclusive('\n')
        .take(line - 1)
        .map(str::len)
        .sum();
    let line_text = before[line_start..]
        .split_inclusive('\n')
        .next()
        .expect("line exists");
    let hits: Vec<usize> = line_text.match_indices(old_raw).map(|(i, _)| i).collect();
    assert_eq!(
        hits.len(),
        1,
        "{old_raw:?} occurs once on line {line}: {line_text:?}"
    );
    let at = line_start + hits[0];
    let expected = format!(
        "{}{new_raw}{}",
        &before[..at],
        &before[at + old_raw.len()..]
    );
    assert_eq!(
        after, expected,
        "only {old_raw:?} -> {new_raw:?} on line {line} changed"
    );
    let (offset, old_bytes, _) = changed_region(before, after).expect("the text changed");
    assert!(
        offset >= at && offset + old_bytes.len() <= at + old_raw.len(),
        "change stays inside the scalar"
    );
}

pub(crate) fn sel(image: Option<&str>, key: Option<&str>, app: Option<&str>) -> Selector {
    Selector {
        image: image.map(str::to_owned),
        key: key.map(str::to_owned),
        app: app.map(str::to_owned),
    }
}

/// One successful patch: the file, the selector, the new value, and what must be found and changed.
struct Case<'a> {
    file: &'a str,
    selector: Selector,
    new: &'a str,
    old_value: &'a str,
    path: &'a str,
    line: usize,
    old_raw: &'a str,
    new_raw: &'a str,
}

fn check_text(name: &str, text: &str, case: &Case<'_>) -> String {
    let found = read_tag(text, &case.selector).unwrap_or_else(|e| panic!("{name}: read_tag: {e}"));
    assert_eq!(
        (found.value.as_str(), found.path.as_str(), found.line),
        (case.old_value, case.path, case.line),
        "{name}: found"
    );
    let patched = patch_tag(text, &case.selector, case.new)
        .unwrap_or_else(|e| panic!("{name}: patch_tag: {e}"));
    assert_eq!(patched.old, case.old_value, "{name}");
    assert_eq!(
        patched.new,
        case.new.split('@').next().expect("split yields one item"),
        "{name}"
    );
    assert_eq!(
        (patched.path.as_str(), patched.line),
        (case.path, case.line),
        "{name}"
    );
    assert_only_scalar_changed(text, &patched.text, case.line, case.old_raw, case.new_raw);
    // Patching twice equals patching once, and the new value reads back.
    let again = patch_tag(&patched.text, &case.selector, case.new)
        .unwrap_or_else(|e| panic!("{name}: again: {e}"));
    assert_eq!(again.text, patched.text, "{name}: idempotent");
    assert!(!again.changed(), "{name}: second patch is a no-op");
    let reread =
        read_tag(&patched.text, &case.selector).unwrap_or_else(|e| panic!("{name}: re-read: {e}"));
    assert_eq!(reread.value, patched.new, "{name}: re-read");
    patched.text
}

fn check(case: &Case<'_>) -> String {
    check_text(case.file, &fixture(&format!("shapes/{}", case.file)), case)
}

#[test]
fn every_shape_changes_only_the_tag() {
    let none = Selector::default;
    let cases = [
        Case {
            file: "helm-params-block.yaml",
            selector: none(),
            new: "1.20",
            old_value: "1.19",
            path: "spec.source.helm.parameters[name=image.tag].value",
            line: 21,
            old_raw: "\"1.19\"",
            new_raw: "\"1.20\"",
        },
        Case {
            file: "helm-params-flow.yaml",
            selector: none(),
            new: "build-42",
            old_value: "build-41",
            path: "spec.source.helm.parameters[name=image.tag].value",
            line: 9,
            old_raw: "'build-41'",
            new_raw: "'build-42'",
        },
        Case {
            file: "values-object.yaml",
            selector: none(),
            new: "v2.5.0",
            old_value: "v2.4.0",
            path: "spec.source.helm.valuesObject.image.tag",
            line: 14,
            old_raw: "v2.4.0",
            new_raw: "v2.5.0",
        },
        Case {
            file: "values-block.yaml",
            selector: none(),
            new: "3.2.0",
            old_value: "3.1.4",
            path: "spec.source.helm.values.image.tag",
            line: 17,
            old_raw: "3.1.4",
            new_raw: "3.2.0",
        },
        Case {
            file: "values-block.yaml",
            selector: sel(None, Some("spec.source.helm.values.image.tag"), None),
            new: "1.5",
            old_value: "3.1.4",
            path: "spec.source.helm.values.image.tag",
            line: 17,
            old_raw: "3.1.4",
            new_raw: "\"1.5\"",
        },
        Case {
            file: "nonascii-literal-before.yaml",
            selector: none(),
            new: "rc-8",
            old_value: "rc-7",
            path: "spec.source.helm.parameters[name=image.tag].value",
            line: 14,
            old_raw: "rc-7",
            new_raw: "rc-8",
        },
        Case {
            file: "crlf.yaml",
            selector: none(),
            new: "2024.12.1",
            old_value: "2024.11.3",
            path: "spec.source.helm.parameters[name=image.tag].value",
            line: 11,
            old_raw: "\"2024.11.3\"",
            new_raw: "\"2024.12.1\"",
        },
        Case {
            file: "bom.yaml",
            selector: none(),
            new: "1.0.1",
            old_value: "1.0.0",
            path: "spec.source.kustomize.images[0]",
            line: 9,
            old_raw: "search:1.0.0",
            new_raw: "search:1.0.1",
        },
        Case {
            file: "multi-doc.yaml",
            selector: sel(None, None, Some("api-prod")),
            new: "prod-91",
            old_value: "prod-90",
            path: "spec.source.helm.parameters[name=image.tag].value",
            line: 29,
            old_raw: "prod-90",
            new_raw: "prod-91",
        },
        Case {
            file: "multi-doc.yaml",
            selector: sel(None, None, Some("Application/api-dev")),
            new: "dev-101",
            old_value: "dev-100",
            path: "spec.source.helm.parameters[name=image.tag].value",
            line: 11,
            old_raw: "dev-100",
            new_raw: "dev-101",
        },
        Case {
            file: "appset-multi-source.yaml",
            selector: none(),
            new: "1.1",
            old_value: "1.0",
            path: "spec.template.spec.sources[1].helm.parameters[name=image.tag].value",
            line: 27,
            old_raw: "'1.0'",
            new_raw: "'1.1'",
        },
        Case {
            file: "several-images.yaml",
            selector: sel(Some("worker"), None, None),
            new: "1.0.1",
            old_value: "1.0.0",
            path: "spec.source.kustomize.images[1]",
            line: 10,
            old_raw: "worker:1.0.0",
            new_raw: "worker:1.0.1",
        },
        Case {
            file: "several-images.yaml",
            selector: sel(Some("registry.example.com/team/cron"), None, None),
            new: "2.0.0",
            old_value: "1.0.0",
            path: "spec.source.kustomize.images[2]",
            line: 11,
            old_raw: "cron:1.0.0\"",
            new_raw: "cron:2.0.0\"",
        },
        Case {
            file: "several-images.yaml",
            selector: sel(None, Some("spec.source.kustomize.images[0]"), None),
            new: "1.1.0",
            old_value: "1.0.0",
            path: "spec.source.kustomize.images[0]",
            line: 9,
            old_raw: "api:1.0.0",
            new_raw: "api:1.1.0",
        },
        Case {
            file: "values-file.yaml",
            selector: sel(Some("worker"), None, None),
            new: "101",
            old_value: "100",
            path: "worker.image.tag",
            line: 11,
            old_raw: "'100'",
            new_raw: "'101'",
        },
        Case {
            file: "values-file.yaml",
            selector: sel(Some("team/api"), None, None),
            new: "101",
            old_value: "100",
            path: "api.image.tag",
            line: 7,
            old_raw: "\"100\"",
            new_raw: "\"101\"",
        },
        Case {
            file: "values-file.yaml",
            selector: sel(None, Some("worker.image.tag"), None),
            new: "v7",
            old_value: "100",
            path: "worker.image.tag",
            line: 11,
            old_raw: "'100'",
            new_raw: "'v7'",
        },
        Case {
            file: "values-single.yaml",
            selector: none(),
            new: "1.0.1",
            old_value: "1.0.0",
            path: "image.tag",
            line: 3,
            old_raw: "1.0.0",
            new_raw: "1.0.1",
        },
        Case {
            file: "kustomization.yaml",
            selector: none(),
            new: "1.3",
            old_value: "1.2",
            path: "images[0].newTag",
            line: 8,
            old_raw: "\"1.2\"",
            new_raw: "\"1.3\"",
        },
        Case {
            file: "tagged-scalar.yaml",
            selector: none(),
            new: "1.6",
            old_value: "1.5",
            path: "image.tag",
            line: 2,
            old_raw: "1.5",
            new_raw: "1.6",
        },
        Case {
            file: "kustomize-digest.yaml",
            selector: none(),
            new: &format!("1.25.4@sha256:{}", "ab".repeat(32)),
            old_value: "1.25.3",
            path: "spec.source.kustomize.images[0]",
            line: 10,
            old_raw: &format!("1.25.3@sha256:{}1", "0".repeat(63)),
            new_raw: &format!("1.25.4@sha256:{}", "ab".repeat(32)),
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn corpus_style_parameter_names_with_escaped_dots() {
    let key =
        r"spec.source.helm.parameters[name=ingress.annotations.kubernetes\.io/tls-acme].value";
    let case = Case {
        file: "corpus/argo-cd-operator-manual-application.yaml",
        selector: sel(None, Some(key), None),
        new: "false",
        old_value: "true",
        path: key,
        line: 28,
        old_raw: "\"true\"",
        new_raw: "\"false\"",
    };
    check_text(case.file, &fixture(case.file), &case);
}

#[test]
fn escaped_dots_in_keys_and_indexes() {
    let text = "labels:\n  app.kubernetes.io/version: v1 # version label\nlist:\n- a\n- [b, c]\n";
    let cases = [
        Case {
            file: "inline",
            selector: sel(None, Some(r"labels.app\.kubernetes\.io/version"), None),
            new: "v2",
            old_value: "v1",
            path: r"labels.app\.kubernetes\.io/version",
            line: 2,
            old_raw: "v1",
            new_raw: "v2",
        },
        Case {
            file: "inline",
            selector: sel(None, Some("list[1][1]"), None),
            new: "d",
            old_value: "c",
            path: "list[1][1]",
            line: 5,
            old_raw: "c]",
            new_raw: "d]",
        },
    ];
    for case in &cases {
        check_text("inline", text, case);
    }
}

#[test]
fn plain_values_are_quoted_when_they_would_not_read_as_strings() {
    let text = fixture("shapes/values-single.yaml");
    for (new, raw) in [
        ("1.20", "\"1.20\""),
        ("1", "\"1\""),
        ("012", "\"012\""),
        ("1_000", "\"1_000\""),
        ("0x1f", "\"0x1f\""),
        ("0o17", "\"0o17\""),
        ("1e3", "\"1e3\""),
        ("1E-3", "\"1E-3\""),
        ("true", "\"true\""),
        ("False", "\"False\""),
        ("yes", "\"yes\""),
        ("off", "\"off\""),
        ("y", "\"y\""),
        ("null", "\"null\""),
        ("NULL", "\"NULL\""),
        ("2024-01-02", "\"2024-01-02\""),
        ("1.2.3", "1.2.3"),
        ("v1.20", "v1.20"),
        ("build-1234", "build-1234"),
        ("_x", "_x"),
        ("sha-0f3e2a", "sha-0f3e2a"),
    ] {
        let patched =
            patch_tag(&text, &Selector::default(), new).unwrap_or_else(|e| panic!("{new}: {e}"));
        assert_only_scalar_changed(&text, &patched.text, 3, "1.0.0", raw);
        assert_eq!(
            read_tag(&patched.text, &Selector::default())
                .expect("re-read")
                .value,
            new
        );
    }
}

fn err(file: &str, selector: &Selector, new: Option<&str>) -> PatchError {
    let text = fixture(file);
    match new {
        Some(new) => patch_tag(&text, selector, new).expect_err("patch must fail"),
        None => read_tag(&text, selector).expect_err("read must fail"),
    }
}

#[test]
fn ambiguity_is_an_error_listing_the_candidates() {
    let none = Selector::default();
    for (file, selector, expected) in [
        (
            "shapes/ambiguous-layers.yaml",
            &none,
            vec![
                "spec.source.helm.parameters[name=image.tag].value",
                "spec.source.helm.valuesObject.image.tag",
            ],
        ),
        (
            "shapes/several-images.yaml",
            &none,
            vec![
                "kustomize.images[0]",
                "kustomize.images[1]",
                "kustomize.images[2]",
            ],
        ),
        (
            "shapes/values-file.yaml",
            &none,
            vec!["api.image.tag", "worker.image.tag"],
        ),
        (
            "shapes/multi-doc.yaml",
            &none,
            vec![
                "Application/api-dev: spec.source",
                "Application/api-prod: spec.source",
            ],
        ),
    ] {
        for new in [None, Some("2.0.0")] {
            match err(file, selector, new) {
                PatchError::Ambiguous { candidates } => {
                    assert_eq!(candidates.len(), expected.len(), "{file}: {candidates:?}");
                    for (c, e) in candidates.iter().zip(&expected) {
                        assert!(c.contains(e), "{file}: {c:?} names {e:?}");
                    }
                }
                other => panic!("{file}: expected Ambiguous, got {other:?}"),
            }
        }
    }
    let message = err("shapes/several-images.yaml", &none, Some("1.0.1")).to_string();
    assert!(
        message.contains("--key") && message.contains("--image"),
        "{message}"
    );
}

#[test]
fn unsupported_shapes_are_refused() {
    let none = Selector::default();
    for (file, new, needle) in [
        ("shapes/anchor.yaml", None, "alias"),
        ("shapes/anchor.yaml", Some("1.0.1"), "alias"),
        ("shapes/anchored-target.yaml", Some("1.0.1"), "anchor"),
        ("shapes/folded-values.yaml", None, "literal block"),
        ("shapes/folded-values.yaml", Some("1.0.1"), "literal block"),
        ("shapes/empty-tag.yaml", Some("1.0.1"), "empty"),
    ] {
        match err(file, &none, new) {
            PatchError::Unsupported { reason, .. } => {
                assert!(reason.contains(needle), "{file}: {reason}")
            }
            other => panic!("{file}: expected Unsupported, got {other:?}"),
        }
    }
    // A value inside an anchored collection changes with every alias of it.
    let shared = "base: &base\n  image:\n    tag: 1.0.0\nother: *base\n";
    match patch_tag(shared, &sel(None, Some("base.image.tag"), None), "1.0.1") {
        Err(PatchError::Unsupported { reason, .. }) => {
            assert!(reason.contains("anchored collection"), "{reason}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // An ApplicationSet whose tag comes from its generators: the template holds a placeholder,
    // and replacing it would pin one tag for every generated Application, Prod included.
    let appset = "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: api\nspec:\n  generators:\n    - list:\n        elements:\n          - env: qa\n            tag: '1.0'\n          - env: prod\n            tag: '0.9'\n  template:\n    metadata:\n      name: 'api-{{env}}'\n    spec:\n      source:\n        helm:\n          parameters:\n            - name: image.tag\n              value: '{{tag}}'\n";
    match patch_tag(appset, &none, "2.0") {
        Err(PatchError::Unsupported { reason, .. }) => {
            assert!(reason.contains("template placeholder"), "{reason}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // A digest next to the tag wins over it: a new tag alone would deploy nothing new.
    let digest = format!("sha256:{}", "a".repeat(64));
    for text in [
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nimages:\n  - name: api\n    newTag: \"1.0\"\n    digest: {digest}\n"
        ),
        format!("image:\n  repository: r/api\n  tag: \"1.0\"\n  digest: {digest}\n"),
    ] {
        match patch_tag(&text, &none, "2.0") {
            Err(PatchError::Unsupported { reason, .. }) => {
                assert!(reason.contains("pinned by `digest:"), "{reason}")
            }
            other => panic!("expected Unsupported, got {other:?}\n{text}"),
        }
        assert_eq!(
            read_tag(&text, &none).expect("reading is fine").value,
            "1.0"
        );
    }
    // An empty or null digest pins nothing.
    for empty in ["\"\"", "~", "null"] {
        let text = format!("image:\n  repository: r/api\n  tag: \"1.0\"\n  digest: {empty}\n");
        let patched = patch_tag(&text, &none, "2.0").unwrap_or_else(|e| panic!("{empty}: {e}"));
        assert!(patched.text.contains("tag: \"2.0\""), "{}", patched.text);
    }
    // Reading an anchored scalar is harmless; only writing it is refused.
    let found = read_tag(&fixture("shapes/anchored-target.yaml"), &none).expect("read anchored");
    assert_eq!(found.value, "1.0.0");
    // A folded block named by an explicit key is refused, too.
    let folded = sel(None, Some("spec.source.helm.values"), None);
    assert!(matches!(
        err("shapes/folded-values.yaml", &folded, Some("1.0.1")),
        PatchError::Unsupported { .. }
    ));
}

#[test]
fn an_image_name_never_falls_back_to_an_unnamed_tag() {
    let values =
        "image:\n  tag: \"1.0.0\"\napi:\n  image:\n    repository: r/api\n    tag: \"2.0.0\"\n";
    for image in ["web", "typo"] {
        match patch_tag(values, &sel(Some(image), None, None), "3.0.0") {
            Err(PatchError::NoTarget { searched }) => {
                assert!(searched.contains("matched none of"), "{image}: {searched}")
            }
            other => panic!("{image}: expected NoTarget, got {other:?}"),
        }
    }
    let patched = patch_tag(values, &sel(Some("r/api"), None, None), "3.0.0").unwrap();
    assert_eq!(
        patched.text,
        values.replace("\"2.0.0\"", "\"3.0.0\""),
        "only the named image's tag"
    );
}

#[test]
fn documents_are_selected_by_name() {
    match err(
        "shapes/multi-doc.yaml",
        &sel(None, None, Some("api-qa")),
        Some("1.0.0"),
    ) {
        PatchError::DocumentNotFound { what, present } => {
            assert!(what.contains("api-qa"), "{what}");
            assert_eq!(
                present,
                [
                    "Application/api-dev",
                    "ConfigMap/api-config",
                    "Application/api-prod"
                ]
            );
        }
        other => panic!("expected DocumentNotFound, got {other:?}"),
    }
    let message = err(
        "shapes/multi-doc.yaml",
        &sel(None, None, Some("ConfigMap/api-dev")),
        None,
    )
    .to_string();
    assert!(message.contains("--app"), "{message}");
}

#[test]
fn digest_rule_for_kustomize_images() {
    let text = fixture("shapes/kustomize-digest.yaml");
    let none = Selector::default();
    let found = read_tag(&text, &none).expect("read");
    assert_eq!(
        found.digest.as_deref(),
        Some(format!("sha256:{}1", "0".repeat(63)).as_str())
    );
    // A plain tag on a digest-pinned entry would leave the old digest in force: refused.
    match patch_tag(&text, &none, "1.25.4") {
        Err(PatchError::DigestRequired { digest, line, .. }) => {
            assert!(digest.starts_with("sha256:000"));
            assert_eq!(line, 10);
        }
        other => panic!("expected DigestRequired, got {other:?}"),
    }
    // tag + digest replaces both, through either entry point.
    let digest = format!("sha256:{}", "c".repeat(64));
    let patched = patch_image(&text, &none, "1.26.0", Some(&digest)).expect("patch_image");
    assert_eq!(patched.new_digest.as_deref(), Some(digest.as_str()));
    assert!(patched.text.contains(&format!("nginx:1.26.0@{digest}\n")));
    assert_eq!(
        patched.text,
        patch_tag(&text, &none, &format!("1.26.0@{digest}"))
            .expect("patch_tag")
            .text
    );
    // Adding a digest to an entry without one.
    let plain = fixture("shapes/several-images.yaml");
    let worker = sel(Some("worker"), None, None);
    let pinned = patch_image(&plain, &worker, "1.0.1", Some(&digest)).expect("pin");
    assert_only_scalar_changed(
        &plain,
        &pinned.text,
        10,
        "worker:1.0.0",
        &format!("worker:1.0.1@{digest}"),
    );
    // A digest where only a tag fits (Helm parameter) is refused.
    let helm = fixture("shapes/helm-params-block.yaml");
    assert!(matches!(
        patch_image(&helm, &none, "1.20", Some(&digest)),
        Err(PatchError::InvalidTag { .. })
    ));
}

#[test]
fn invalid_tags_are_refused_before_anything_else() {
    let text = fixture("shapes/values-single.yaml");
    let long = "a".repeat(129);
    let bad_digest = "1.0@sha256:xyz".to_owned();
    for tag in [
        "latest",
        "LATEST",
        "",
        "-x",
        ".x",
        "a:b",
        "a/b",
        "a b",
        "ü",
        long.as_str(),
        bad_digest.as_str(),
    ] {
        match patch_tag(&text, &Selector::default(), tag) {
            Err(PatchError::InvalidTag { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("{tag:?}: expected InvalidTag, got {other:?}"),
        }
    }
    assert!(forge_ledger::validate_tag(&"a".repeat(128)).is_ok());
    assert!(forge_ledger::validate_tag("_a.B-9").is_ok());
}

#[test]
fn bad_inputs_name_the_problem() {
    let none = Selector::default();
    match patch_tag("a: [unclosed\nb: c\n", &none, "1.0.0") {
        Err(PatchError::InvalidYaml { line, .. }) => assert!(line >= 1),
        other => panic!("expected InvalidYaml, got {other:?}"),
    }
    assert!(matches!(
        patch_tag("image:\n  tag: x\0y\n", &none, "1.0.0"),
        Err(PatchError::InvalidYaml { .. })
    ));
    match read_tag("image:\n  tag:\tv1\n", &none) {
        Err(PatchError::InvalidYaml {
            line, col, message, ..
        }) => {
            assert_eq!((line, col), (2, 8));
            assert!(message.contains("replace the tab"), "{message}");
        }
        other => panic!("expected InvalidYaml, got {other:?}"),
    }
    for key in ["a..b", "a[", "a[x]", ".a", "a.", "a[0]b"] {
        match read_tag("a: b\n", &sel(None, Some(key), None)) {
            Err(PatchError::InvalidKey { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: expected InvalidKey, got {other:?}"),
        }
    }
    match read_tag("image:\n  tag: v1\n", &sel(None, Some("image.tags"), None)) {
        Err(PatchError::NoTarget { searched }) => assert!(searched.contains("tags"), "{searched}"),
        other => panic!("expected NoTarget, got {other:?}"),
    }
    match read_tag("service:\n  port: 80\n", &none) {
        Err(e @ PatchError::NoTarget { .. }) => assert!(e.to_string().contains("--key"), "{e}"),
        other => panic!("expected NoTarget, got {other:?}"),
    }
    match read_tag(
        &fixture("shapes/several-images.yaml"),
        &sel(Some("frontend"), None, None),
    ) {
        Err(PatchError::NoTarget { searched }) => {
            assert!(searched.contains("frontend") && searched.contains("worker"))
        }
        other => panic!("expected NoTarget, got {other:?}"),
    }
}

#[test]
fn values_block_variants_and_line_breaks() {
    let base = "spec:\n  source:\n    helm:\n      values: HEADER\n\n        # leading blank line above\n        image:\n          tag: v1 # c\n      releaseName: x\n";
    for header in ["|", "|-", "|+", "|2", "|-2", "| # comment é"] {
        let text = base.replace("HEADER", header);
        let text = if header == "|2" || header == "|-2" {
            text.replace(
                "        image:\n          tag",
                "          image:\n            tag",
            )
        } else {
            text
        };
        for line_break in ["\n", "\r\n", "\r"] {
            let source = format!("kind: Application\n{text}").replace('\n', line_break);
            let patched = patch_tag(&source, &Selector::default(), "v2")
                .unwrap_or_else(|e| panic!("{header} {line_break:?}: {e}"));
            assert_eq!(patched.path, "spec.source.helm.values.image.tag");
            assert_eq!(patched.line, 9, "{header}");
            assert_eq!(
                patched.text,
                source.replacen("tag: v1", "tag: v2", 1),
                "{header} {line_break:?}"
            );
        }
    }
}

#[test]
fn empty_files_say_so() {
    for text in ["", "# only a comment\n", "---\n"] {
        match read_tag(text, &Selector::default()) {
            Err(PatchError::NoTarget { searched }) => assert!(!searched.is_empty(), "{text:?}"),
            other => panic!("{text:?}: expected NoTarget, got {other:?}"),
        }
    }
}

#[test]
fn setting_the_current_value_is_a_no_op() {
    let text = fixture("shapes/helm-params-block.yaml");
    let patched = patch_tag(&text, &Selector::default(), "1.19").expect("no-op");
    assert!(!patched.changed());
    assert_eq!(patched.text, text);
}

#[test]
fn snapshots_of_patched_manifests() {
    let none = Selector::default();
    for (name, file, selector, new) in [
        (
            "helm_params_block",
            "shapes/helm-params-block.yaml",
            none.clone(),
            "1.20",
        ),
        (
            "values_block",
            "shapes/values-block.yaml",
            none.clone(),
            "3.2.0",
        ),
        (
            "helm_params_flow",
            "shapes/helm-params-flow.yaml",
            none.clone(),
            "build-42",
        ),
        (
            "kustomize_digest",
            "shapes/kustomize-digest.yaml",
            none.clone(),
            &format!("2.0.0@sha256:{}", "d".repeat(64)),
        ),
        (
            "multi_doc_prod",
            "shapes/multi-doc.yaml",
            sel(None, None, Some("api-prod")),
            "prod-91",
        ),
    ] {
        let patched = patch_tag(&fixture(file), &selector, new).expect("patch");
        insta::assert_snapshot!(name, patched.text);
    }
}

#[test]
fn error_messages_say_what_and_what_to_do() {
    let none = Selector::default();
    let digest_pinned = fixture("shapes/kustomize-digest.yaml");
    let cases: Vec<(&str, PatchError)> = vec![
        (
            "no target",
            read_tag("service:\n  port: 80\n", &none).expect_err("no target"),
        ),
        (
            "ambiguous layers",
            err("shapes/ambiguous-layers.yaml", &none, Some("3")),
        ),
        (
            "ambiguous documents",
            err("shapes/multi-doc.yaml", &none, None),
        ),
        (
            "unknown app",
            err(
                "shapes/multi-doc.yaml",
                &sel(None, None, Some("api-qa")),
                None,
            ),
        ),
        ("alias", err("shapes/anchor.yaml", &none, Some("1.0.1"))),
        (
            "folded",
            err("shapes/folded-values.yaml", &none, Some("1.0.1")),
        ),
        (
            "digest pinned",
            patch_tag(&digest_pinned, &none, "1.25.4").expect_err("pinned"),
        ),
        (
            "latest",
            patch_tag(&digest_pinned, &none, "latest").expect_err("latest"),
        ),
        (
            "bad tag",
            patch_tag(&digest_pinned, &none, "1.0:beta").expect_err("bad"),
        ),
        (
            "bad yaml",
            read_tag("a: [unclosed\n", &none).expect_err("yaml"),
        ),
        (
            "bad key",
            read_tag("a: b\n", &sel(None, Some("a..b"), None)).expect_err("key"),
        ),
        (
            "missing key",
            read_tag("image:\n  tag: v1\n", &sel(None, Some("image.tags"), None))
                .expect_err("missing"),
        ),
    ];
    let rendered: Vec<String> = cases
        .iter()
        .map(|(name, e)| format!("{name}: {e}"))
        .collect();
    insta::assert_snapshot!("error_messages", rendered.join("\n\n"));
}

#[test]
fn values_blocks_that_are_not_yaml() {
    let base = "kind: Application\nspec:\n  source:\n    helm:\n      values: |\n        BLOCK\n    kustomize:\n      images:\n      - team/api:1.0.0\n";
    // A template block that cannot hold the tag does not stop the kustomize image from being patched.
    let text = base.replace("BLOCK", "replicas: {{ .replicas }\n        x: [");
    let patched = patch_tag(&text, &Selector::default(), "1.0.1").expect("kustomize patched");
    assert_only_scalar_changed(&text, &patched.text, 10, "api:1.0.0", "api:1.0.1");
    // One that mentions a tag is refused: the patcher cannot tell which layer wins.
    let text = base.replace("BLOCK", "image:\n          tag: {{ .tag }\n        x: [");
    match patch_tag(&text, &Selector::default(), "1.0.1") {
        Err(PatchError::Ambiguous { candidates }) => {
            assert_eq!(candidates.len(), 2, "{candidates:?}")
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    // An explicit key into it reports the parse error on the file's own line numbers.
    match read_tag(
        &text,
        &sel(None, Some("spec.source.helm.values.image.tag"), None),
    ) {
        Err(PatchError::InvalidYaml { line, message, .. }) => {
            assert!((6..=9).contains(&line), "line {line}: {message}");
            assert!(
                message.contains("literal block starting at line 6"),
                "{message}"
            );
        }
        other => panic!("expected InvalidYaml, got {other:?}"),
    }
}

#[test]
fn edge_texts() {
    // (input, expected output) for the new tag v2 with the default selector.
    for (input, expected) in [
        ("image:\n  tag: v1", "image:\n  tag: v2"),
        ("image:\r\n  tag: 'v1'", "image:\r\n  tag: 'v2'"),
        (
            "image: {repository: r, tag: v1}\n",
            "image: {repository: r, tag: v2}\n",
        ),
        (
            "image: {tag: \"v1\"}   # flow\n",
            "image: {tag: \"v2\"}   # flow\n",
        ),
        (
            "%YAML 1.2\n---\nimage:\n  tag: v1\n...\n",
            "%YAML 1.2\n---\nimage:\n  tag: v2\n...\n",
        ),
        (
            "image:\n  tag: v1 #no\n# end",
            "image:\n  tag: v2 #no\n# end",
        ),
        ("image:\n  tag: \"v\\u0031\"\n", "image:\n  tag: \"v2\"\n"),
        ("image:\n  tag: 'it''s'\n", "image:\n  tag: 'v2'\n"),
        (
            "image:\n  tag: \"multi\n    line\"\n",
            "image:\n  tag: \"v2\"\n",
        ),
        ("\u{feff}image:\n  tag: v1\n", "\u{feff}image:\n  tag: v2\n"),
        ("image:\n  tag: !!str v1\n", "image:\n  tag: !!str v2\n"),
        ("image:\n  \"tag\": v1\n", "image:\n  \"tag\": v2\n"),
        (
            "café: 日本\nimage:\n  tag: v1\n",
            "café: 日本\nimage:\n  tag: v2\n",
        ),
    ] {
        let patched = patch_tag(input, &Selector::default(), "v2")
            .unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(patched.text, expected, "{input:?}");
    }
}
