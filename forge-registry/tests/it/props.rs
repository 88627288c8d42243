//! Property tests: reference parse/print round-trip, digest parsing, descriptor handling.

use forge_registry::{Descriptor, Digest, ManifestRefs, MediaType, Reference};
use proptest::prelude::*;

fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}(([._]|__|-{1,3})[a-z0-9]{1,8}){0,2}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("localhost".to_owned()),
        Just("127.0.0.1".to_owned()),
        Just("[::1]".to_owned()),
        "[a-z][a-z0-9-]{0,10}[a-z0-9](\\.[a-z0-9]{1,6}){1,3}",
    ]
    .prop_flat_map(|h| {
        prop_oneof![Just(None), (1u16..=65535).prop_map(Some)].prop_map(move |p| match p {
            Some(p) => format!("{h}:{p}"),
            None => h.clone(),
        })
    })
}

fn tag() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}"
}

fn digest() -> impl Strategy<Value = Digest> {
    "[0-9a-f]{64}".prop_map(|h| {
        format!("sha256:{h}")
            .parse()
            .expect("generated digests are valid")
    })
}

proptest! {
    #[test]
    fn registry_references_round_trip(
        host in host(),
        repo in prop::collection::vec(component(), 1..4),
        tag in prop::option::of(tag()),
        digest in prop::option::of(digest()),
    ) {
        let repo = repo.join("/");
        let r = Reference::new(&host, &repo, tag.as_deref(), digest.clone()).unwrap();
        prop_assert_eq!(r.registry(), host.as_str());
        prop_assert_eq!(r.repository(), repo.as_str());
        prop_assert_eq!(r.tag(), tag.as_deref());
        prop_assert_eq!(r.digest(), digest.as_ref());
        let printed = r.to_string();
        let back: Reference = printed.parse().unwrap();
        prop_assert_eq!(&back, &r);
        prop_assert_eq!(back.to_string(), printed);
        prop_assert!(!r.is_oci_layout());
    }

    #[test]
    fn docker_hub_short_names_normalize(name in component(), tag in prop::option::of(tag())) {
        let input = match &tag { Some(t) => format!("{name}:{t}"), None => name.clone() };
        let r: Reference = input.parse().unwrap();
        prop_assert_eq!(r.registry(), "docker.io");
        prop_assert_eq!(r.repository(), format!("library/{name}"));
        let back: Reference = r.to_string().parse().unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn layout_references_round_trip(
        dir in prop::collection::vec("[a-zA-Z0-9_.@-]{1,8}", 1..4),
        tag in prop::option::of(tag()),
        digest in prop::option::of(digest()),
    ) {
        let path = format!("/{}", dir.join("/"));
        let r = Reference::oci_layout(&path, tag.as_deref(), digest.clone()).unwrap();
        let back: Reference = r.to_string().parse().unwrap();
        prop_assert_eq!(&back, &r);
        prop_assert!(back.is_oci_layout());
        prop_assert_eq!(back.layout_path().unwrap().to_str().unwrap(), path.as_str());
    }

    #[test]
    fn arbitrary_input_never_panics(s in "\\PC{0,80}") {
        let _ = s.parse::<Reference>();
        let _ = s.parse::<Digest>();
    }

    #[test]
    fn digests_parse_only_lowercase_sha256(hex in "[0-9a-fA-F]{60,68}", algo in "sha256|sha512|SHA256") {
        let text = format!("{algo}:{hex}");
        let ok = algo == "sha256" && hex.len() == 64 && hex.bytes().all(|b| !b.is_ascii_uppercase());
        let parsed = text.parse::<Digest>();
        prop_assert_eq!(parsed.is_ok(), ok, "{}", text);
        if let Ok(d) = parsed {
            prop_assert_eq!(d.to_string(), text);
            prop_assert_eq!(d.hex(), hex.as_str());
        }
    }

    #[test]
    fn digest_of_matches_its_text(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let d = Digest::of(&bytes);
        let back: Digest = d.to_string().parse().unwrap();
        prop_assert_eq!(back, d);
    }

    /// Descriptors are read whatever the key order and whitespace, and the manifest digest is
    /// always that of the raw bytes, not of a re-serialization.
    #[test]
    fn descriptors_parse_in_any_key_order(
        size in 0u64..1_000_000_000,
        d in digest(),
        order in Just(vec![0usize, 1, 2]).prop_shuffle(),
        pad in "[ \n\t]{0,3}",
    ) {
        let fields = [
            format!("\"mediaType\":{pad}\"{}\"", MediaType::OCI_LAYER_GZIP),
            format!("\"digest\"{pad}:\"{d}\""),
            format!("\"size\":{pad}{size}"),
        ];
        let desc_json = format!("{{{pad}{}{pad}}}", order.iter().map(|&i| fields[i].as_str()).collect::<Vec<_>>().join(","));
        let desc: Descriptor = serde_json::from_str(&desc_json).unwrap();
        prop_assert_eq!(&desc.digest, &d);
        prop_assert_eq!(desc.size, size);
        prop_assert_eq!(desc.media_type.as_str(), MediaType::OCI_LAYER_GZIP);
        let manifest = format!("{{\"layers\":[{desc_json}],{pad}\"schemaVersion\":2,\"config\":{desc_json}}}");
        let refs = ManifestRefs::parse(manifest.as_bytes()).unwrap();
        prop_assert_eq!(refs.blobs().count(), 2);
        prop_assert_eq!(refs.effective_media_type(None), MediaType::OCI_MANIFEST);
        // The digest is of the bytes as written (whatever their key order and whitespace),
        // checked against an independent sha256 (the test kit's), not re-serialized JSON.
        prop_assert_eq!(Digest::of(manifest.as_bytes()).to_string(), forge_testkit::oci::sha256(manifest.as_bytes()));
    }
}

#[test]
fn descriptor_with_bad_digest_is_rejected() {
    let bad = r#"{"mediaType":"x","digest":"sha256:ABC","size":1}"#;
    assert!(serde_json::from_str::<Descriptor>(bad).is_err());
}

#[test]
fn foreign_layers_are_not_blobs_to_copy() {
    let d = Digest::of(b"x");
    let m = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{d}","size":1}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{d}","size":1,"urls":["https://example.invalid/l"]}}]}}"#
    );
    let refs = ManifestRefs::parse(m.as_bytes()).unwrap();
    assert_eq!(refs.blobs().count(), 1);
}

/// The document's own `mediaType` decides over the served `Content-Type`: an index labelled
/// as a manifest is still an index (its platform manifests must be copied). Without one in
/// the document, the label decides, then the shape.
#[test]
fn the_documents_media_type_wins_over_the_label() {
    let check = |doc: &str, served: Option<&str>, expected: &str| {
        let refs = ManifestRefs::parse(doc.as_bytes()).expect("JSON");
        assert_eq!(
            refs.effective_media_type(served),
            expected,
            "{doc} served as {served:?}"
        );
    };
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
        MediaType::OCI_INDEX
    );
    check(&index, Some(MediaType::OCI_MANIFEST), MediaType::OCI_INDEX);
    check(&index, None, MediaType::OCI_INDEX);
    let unlabelled = r#"{"schemaVersion":2,"manifests":[]}"#;
    check(
        unlabelled,
        Some(MediaType::DOCKER_MANIFEST_LIST),
        MediaType::DOCKER_MANIFEST_LIST,
    );
    check(unlabelled, Some("application/json"), MediaType::OCI_INDEX);
    let schema1 = r#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
    check(
        schema1,
        Some("application/json"),
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    );
}
