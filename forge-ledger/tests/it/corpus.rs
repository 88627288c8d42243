//! The real manifests of `tests/fixtures/corpus/` (copied byte-for-byte from `/work/shared/ledger-corpus`, sources
//! in its README): patching changes exactly the tag bytes, nothing else.

use forge_ledger::{PatchError, Selector, patch_tag, read_tag};

use crate::patch::{assert_only_scalar_changed, changed_region, fixture, sel};

/// `(file, selector, current tag, path, line, entry before, entry after)` for the new tag `4.5.6-rc.1`.
#[test]
fn corpus_files_change_only_the_tag() {
    let cases = [
        (
            "argo-cd-operator-manual-application.yaml",
            Selector::default(),
            "0.2",
            "spec.source.kustomize.images[0]",
            72,
            "ks-guestbook-demo:0.2",
            "ks-guestbook-demo:4.5.6-rc.1",
        ),
        (
            "kargo-examples-helm-parameters-appset.yaml",
            Selector::default(),
            "placeholder",
            "spec.template.spec.source.helm.parameters[name=image.tag].value",
            27,
            "placeholder",
            "4.5.6-rc.1",
        ),
        (
            "kargo-examples-kustomize-images-appset.yaml",
            sel(Some("public.ecr.aws/nginx/nginx"), None, None),
            "placeholder",
            "spec.template.spec.source.kustomize.images[0]",
            27,
            "nginx:placeholder",
            "nginx:4.5.6-rc.1",
        ),
        (
            "kargo-examples-kustomize-images-appset.yaml",
            sel(Some("nginx"), None, Some("kargo-demo-07")),
            "placeholder",
            "spec.template.spec.source.kustomize.images[0]",
            27,
            "nginx:placeholder",
            "nginx:4.5.6-rc.1",
        ),
    ];
    for (file, selector, old, path, line, before_entry, after_entry) in cases {
        let text = fixture(&format!("corpus/{file}"));
        let found = read_tag(&text, &selector).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            (found.value.as_str(), found.path.as_str(), found.line),
            (old, path, line),
            "{file}"
        );
        let patched =
            patch_tag(&text, &selector, "4.5.6-rc.1").unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_only_scalar_changed(&text, &patched.text, line, before_entry, after_entry);
        // The byte diff is one contiguous region: exactly the old tag's bytes became the new tag's bytes.
        let (_, old_bytes, new_bytes) = changed_region(&text, &patched.text).expect("changed");
        let old_suffix = old.as_bytes();
        assert!(
            old_suffix.ends_with(old_bytes),
            "{file}: changed bytes are part of the old tag"
        );
        assert!(
            b"4.5.6-rc.1".ends_with(new_bytes),
            "{file}: changed bytes are part of the new tag"
        );
        assert_eq!(
            read_tag(&patched.text, &selector).expect("re-read").value,
            "4.5.6-rc.1"
        );
    }
}

#[test]
fn corpus_values_block_and_parameters_are_reachable_by_key() {
    let text = fixture("corpus/argo-cd-operator-manual-application.yaml");
    // Inside the `values: |` block, 53 lines in, after heavy comments.
    let key = "spec.source.helm.values.ingress.annotations.kubernetes\\.io/tls-acme";
    let found = read_tag(&text, &sel(None, Some(key), None)).expect("read in block");
    assert_eq!((found.value.as_str(), found.line), ("true", 53));
    let patched = patch_tag(&text, &sel(None, Some(key), None), "false").expect("patch in block");
    assert_only_scalar_changed(&text, &patched.text, 53, "\"true\"", "\"false\"");
}

#[test]
fn corpus_multi_source_without_a_tag_points_at_the_values_file() {
    let text = fixture("corpus/image-updater-examples-multi-source.yaml");
    match read_tag(&text, &Selector::default()) {
        Err(PatchError::NoTarget { searched }) => {
            assert!(
                searched.contains("$values/multi-source-helm/source2/values.yaml"),
                "{searched}"
            );
        }
        other => panic!("expected NoTarget, got {other:?}"),
    }
}

#[test]
fn corpus_files_with_crlf_and_bom_change_only_the_tag() {
    // The same real manifests, converted to CRLF and given a BOM, as Windows editors save them.
    for file in [
        "argo-cd-operator-manual-application.yaml",
        "kargo-examples-helm-parameters-appset.yaml",
    ] {
        let text = format!(
            "\u{feff}{}",
            fixture(&format!("corpus/{file}")).replace('\n', "\r\n")
        );
        let patched = patch_tag(&text, &Selector::default(), "4.5.6")
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let (_, old_bytes, new_bytes) = changed_region(&text, &patched.text).expect("changed");
        assert!(!old_bytes.contains(&b'\n') && !new_bytes.contains(&b'\n'));
        assert!(patched.text.starts_with('\u{feff}'));
        assert_eq!(
            patched.text.matches("\r\n").count(),
            text.matches("\r\n").count()
        );
        assert!(
            patched.old.as_bytes().ends_with(old_bytes)
                && patched.new.as_bytes().ends_with(new_bytes)
        );
        let line_of_change = text[..changed_region(&text, &patched.text).expect("changed").0]
            .matches('\n')
            .count()
            + 1;
        assert_eq!(
            line_of_change, patched.line,
            "{file}: the change is on the target's line"
        );
    }
}
