//! The `.env` format: awkward values round-trip through the writer and a parser that follows
//! docker compose's (compose-go dotenv) reading rules; the file is replaced atomically with mode
//! 0600.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;

use forge_ec2::env_file::{self, Secret};
use proptest::prelude::*;

fn round_trip(vars: &BTreeMap<String, String>, tag: Option<&str>) -> Vec<(String, String)> {
    let secrets: BTreeMap<String, Secret> = vars
        .iter()
        .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
        .collect();
    let text = env_file::render("/forge/test", &secrets, tag);
    assert_eq!(
        text.lines().filter(|l| !l.starts_with('#')).count(),
        vars.len() + usize::from(tag.is_some()),
        "every entry must be exactly one line:\n{text}"
    );
    env_file::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn awkward_values_are_written_as_expected() {
    let check = |value: &str, written: &str| {
        assert_eq!(env_file::quote_value(value), written, "{value:?}");
        let vars = BTreeMap::from([("K".to_owned(), value.to_owned())]);
        assert_eq!(
            round_trip(&vars, None),
            vec![("K".to_owned(), value.to_owned())]
        );
    };
    check("plain", "'plain'");
    check("", "''");
    check("a$b ${HOME} $$", "'a$b ${HOME} $$'");
    check("#not a comment", "'#not a comment'");
    check("x #y", "'x #y'");
    check("  spaces  ", "'  spaces  '");
    check(r#"say "hi""#, r#"'say "hi"'"#);
    check(r"back\slash \n", r"'back\slash \n'");
    check("p@ss'word", r#""p@ss'word""#);
    check("line1\nline2", r#""line1\nline2""#);
    check("crlf\r\n", r#""crlf\r\n""#);
    check(r"ends with \", r#""ends with \\""#);
    check("it's $5 \"off\"\\", r#""it's $$5 \"off\"\\""#);
    check(
        "-----BEGIN KEY-----\nabc\n-----END KEY-----\n",
        r#""-----BEGIN KEY-----\nabc\n-----END KEY-----\n""#,
    );
    check("ünïcödé ✓", "'ünïcödé ✓'");
}

#[test]
fn image_tag_is_last_and_plain() {
    let vars = BTreeMap::from([
        ("B".to_owned(), "2".to_owned()),
        ("A".to_owned(), "1".to_owned()),
    ]);
    let secrets: BTreeMap<String, Secret> = vars
        .iter()
        .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
        .collect();
    let text = env_file::render("/p", &secrets, Some("20261126.3"));
    let entries: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(entries, ["A='1'", "B='2'", "IMAGE_TAG=20261126.3"]);
}

fn awkward_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z '\"$#\\\\\n\r\t={}`]{0,24}",
        any::<String>().prop_map(|s| s.replace('\0', "")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn any_value_round_trips(vars in prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,10}", awkward_value(), 1..6)) {
        let got = round_trip(&vars, Some("42"));
        let mut want: Vec<(String, String)> = vars.into_iter().collect();
        want.retain(|(k, _)| k != "IMAGE_TAG");
        want.push(("IMAGE_TAG".to_owned(), "42".to_owned()));
        // A generated IMAGE_TAG variable is overridden by the real one, in place.
        let got: Vec<(String, String)> = got.into_iter().filter(|(k, _)| k != "IMAGE_TAG").chain([("IMAGE_TAG".to_owned(), "42".to_owned())]).collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn replace_file_is_atomic_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".env");
    std::fs::write(&path, "OLD='1'\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Injected failure half-way through writing: the old file stays, no temp file remains.
    let err = env_file::replace_file(&path, |f| {
        f.write_all(b"NEW='half")?;
        Err(std::io::Error::other("disk full (injected)"))
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("cannot write the temp file"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "OLD='1'\n");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [".env"]);

    env_file::replace_file(&path, |f| f.write_all(b"NEW='2'\n")).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "NEW='2'\n");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the replaced file is private");

    // A directory that does not exist: an error naming the file, nothing created.
    let missing = dir.path().join("nope/.env");
    let err = env_file::replace_file(&missing, |f| f.write_all(b"x")).unwrap_err();
    assert!(err.to_string().contains("nope/.env"), "{err}");
}

#[test]
fn current_image_tag_reads_quoted_and_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".env");
    assert_eq!(env_file::current_image_tag(&path).unwrap(), None);
    std::fs::write(&path, "# x\nA=1\nIMAGE_TAG=\"41\"\n").unwrap();
    assert_eq!(
        env_file::current_image_tag(&path).unwrap().as_deref(),
        Some("41")
    );
    std::fs::write(&path, "A='unterminated\n").unwrap();
    let err = env_file::current_image_tag(&path).unwrap_err().to_string();
    assert!(err.contains(".env: line 1: unterminated"), "{err}");
}

/// A malformed existing `.env` is refused by line, never by quoting the value: that text reaches
/// SSM's stderr and from there the CI log.
#[test]
fn parse_errors_never_quote_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".env");
    std::fs::write(&path, "IMAGE_TAG=41\nDB_PASSWORD=hunter2${oops\n").unwrap();
    let err = env_file::current_image_tag(&path).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("hunter2"), "the value leaked: {err}");
}
