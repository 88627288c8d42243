//! Release policy checked before anything is read from a registry or written anywhere:
//! approvals (no self-approval) and tags (`latest` refused, the configured pattern).

use crate::config::Approval;
use crate::output::InvalidInput;

/// Normalises an identity for comparison: trimmed, lower-cased, `Name <mail>` reduced to the
/// mail, a `mailto:` prefix dropped. `Alice@Example.com`, ` alice@example.com ` and
/// `Alice <alice@example.com>` are the same person.
pub fn normalize_identity(identity: &str) -> String {
    let mut id = identity.trim();
    if let (Some(open), Some(close)) = (id.rfind('<'), id.rfind('>'))
        && open < close
    {
        id = id[open + 1..close].trim();
    }
    let lower = id.to_lowercase();
    lower
        .strip_prefix("mailto:")
        .map(str::to_owned)
        .unwrap_or(lower)
}

/// Checks the approval rule of the target environment. `required` needs an approver who is
/// not the requester; an approver equal to the requester is refused under every rule, since
/// a self-approval would be recorded as an approval that never happened.
pub fn check_approval(
    env: &str,
    rule: Approval,
    requested_by: Option<&str>,
    approved_by: Option<&str>,
) -> Result<(), InvalidInput> {
    let requester = requested_by
        .map(normalize_identity)
        .filter(|s| !s.is_empty());
    let approver = approved_by
        .map(normalize_identity)
        .filter(|s| !s.is_empty());
    if rule == Approval::Required {
        let Some(approver) = &approver else {
            return Err(InvalidInput(format!(
                "promotion to {env} requires an approval: pass --approved-by <identity of the approver> \
                 (someone other than the requester); nothing was copied or written"
            )));
        };
        if requester.is_none() {
            return Err(InvalidInput(format!(
                "promotion to {env} requires an approval, so the requester must be known: pass \
                 --requested-by <identity> (approver: {approver}); nothing was copied or written"
            )));
        }
    }
    if let (Some(requester), Some(approver)) = (&requester, &approver)
        && requester == approver
    {
        return Err(InvalidInput(format!(
            "self-approval refused: {} requested the promotion to {env} and cannot also approve it \
             (identities are compared case-insensitively); ask another approver; nothing was copied or written",
            requested_by.unwrap_or_default().trim()
        )));
    }
    Ok(())
}

/// Checks a tag against the always-on rules (`latest`, OCI tag grammar) and the configured
/// pattern (full match).
pub fn check_tag(tag: &str, pattern: Option<&str>) -> Result<(), InvalidInput> {
    if tag == "latest" {
        return Err(InvalidInput(
            "tag `latest` refused: promotions use immutable build-id tags (e.g. $(Build.BuildId)); \
             nothing was copied or written"
                .to_owned(),
        ));
    }
    let valid_grammar = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if !valid_grammar {
        return Err(InvalidInput(format!(
            "`{tag}` is not a valid image tag (1-128 of [A-Za-z0-9_.-], not starting with . or -)"
        )));
    }
    if let Some(pattern) = pattern {
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            InvalidInput(format!(
                "policy.tag_pattern `{pattern}` is not a valid regex: {e}"
            ))
        })?;
        if !re.is_match(tag) {
            return Err(InvalidInput(format!(
                "tag `{tag}` does not match policy.tag_pattern `{pattern}`; promote a CI build-id tag; \
                 nothing was copied or written"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_normalise() {
        for (input, expected) in [
            ("Alice@Example.com", "alice@example.com"),
            ("  alice@example.com ", "alice@example.com"),
            ("Alice Smith <Alice@Example.com>", "alice@example.com"),
            ("mailto:ALICE@example.com", "alice@example.com"),
            ("CONTOSO\\Alice", "contoso\\alice"),
        ] {
            assert_eq!(normalize_identity(input), expected, "{input}");
        }
    }

    fn check(
        rule: Approval,
        requested: Option<&str>,
        approved: Option<&str>,
        expected: Result<(), &str>,
    ) {
        let got = check_approval("prod", rule, requested, approved).map_err(|e| e.0);
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(msg), Err(start)) => assert!(msg.starts_with(start), "{msg}"),
            (got, expected) => {
                panic!("{rule:?} {requested:?} {approved:?}: got {got:?}, expected {expected:?}")
            }
        }
    }

    #[test]
    fn approval_rules() {
        use Approval::*;
        check(None, Some("a"), Option::None, Ok(()));
        check(Optional, Some("a"), Some("b"), Ok(()));
        check(
            Required,
            Some("alice@example.com"),
            Some("bob@example.com"),
            Ok(()),
        );
        check(
            Required,
            Some("alice@example.com"),
            Option::None,
            Err("promotion to prod requires an approval: pass --approved-by"),
        );
        check(
            Required,
            Option::None,
            Some("bob"),
            Err("promotion to prod requires an approval, so the requester must be known"),
        );
        check(
            Required,
            Some("alice@example.com"),
            Some("Alice@Example.COM"),
            Err("self-approval refused"),
        );
        check(
            Required,
            Some("Alice <alice@example.com>"),
            Some(" alice@example.com"),
            Err("self-approval refused"),
        );
        check(Optional, Some("a"), Some("A"), Err("self-approval refused"));
        check(
            Required,
            Some("alice"),
            Some("   "),
            Err("promotion to prod requires an approval: pass"),
        );
    }

    #[test]
    fn tag_rules() {
        assert!(check_tag("1234", Some("[0-9]+")).is_ok());
        assert!(check_tag("v1.2.3-rc_1", Option::None).is_ok());
        for (tag, pattern, start) in [
            ("latest", Option::None, "tag `latest` refused"),
            ("latest", Some(".*"), "tag `latest` refused"),
            (
                "12a",
                Some("^[0-9]+$"),
                "tag `12a` does not match policy.tag_pattern",
            ),
            ("123", Some("1|12"), "tag `123` does not match"),
            ("", Option::None, "`` is not a valid image tag"),
            (
                ".hidden",
                Option::None,
                "`.hidden` is not a valid image tag",
            ),
            ("a/b", Option::None, "`a/b` is not a valid image tag"),
        ] {
            let err = check_tag(tag, pattern).expect_err(tag).0;
            assert!(err.starts_with(start), "{tag}: {err}");
        }
        assert_eq!(
            check_tag(&"9".repeat(129), Option::None).map_err(|e| !e.0.is_empty()),
            Err(true)
        );
    }
}
