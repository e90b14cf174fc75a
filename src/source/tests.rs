use super::syntax::*;
use super::*;
use http::Request;

fn extract(source: &KeySource, req: &Request<()>) -> Result<Option<Vec<u8>>, MalformedKey> {
    source
        .extract(&RequestHead::of(req))
        .map(|k| k.map(|c| c.into_owned()))
}

fn with_auth(values: &[&[u8]]) -> Request<()> {
    let mut req = Request::new(());
    for v in values {
        req.headers_mut().append(
            AUTHORIZATION,
            http::HeaderValue::from_bytes(v).expect("test header"),
        );
    }
    req
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let s = KeySource::bearer();
    for v in [
        &b"Bearer abc"[..],
        b"bearer abc",
        b"BEARER   abc",
        b"bEaReR abc==",
    ] {
        let got = extract(&s, &with_auth(&[v])).unwrap().unwrap();
        assert!(got.starts_with(b"abc"), "{:?}", String::from_utf8_lossy(v));
    }
}

#[test]
fn bearer_token_syntax_is_enforced() {
    let s = KeySource::bearer();
    for (v, err) in [
        (&b"Bearer"[..], MalformedKey::Empty),
        (b"Bearer ", MalformedKey::Empty),
        (b"Bearer\tabc", MalformedKey::InvalidCharacters),
        (b"Bearer a b", MalformedKey::InvalidCharacters),
        (b"Bearer a=b", MalformedKey::InvalidCharacters),
        (b"Bearer ===", MalformedKey::InvalidCharacters),
        (b"Bearer a,b", MalformedKey::InvalidCharacters),
        (b"Bearer \xff\xfe", MalformedKey::InvalidCharacters),
    ] {
        assert_eq!(
            extract(&s, &with_auth(&[v])),
            Err(err),
            "{:?}",
            String::from_utf8_lossy(v)
        );
    }
    let long = format!("Bearer {}", "a".repeat(DEFAULT_MAX_KEY_LENGTH + 1));
    assert_eq!(
        extract(&s, &with_auth(&[long.as_bytes()])),
        Err(MalformedKey::TooLong)
    );
}

#[test]
fn byte_classes_match_their_grammar_for_every_byte() {
    for b in 0..=255u8 {
        let spec = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
        assert_eq!(B64TOKEN[b as usize], spec, "byte {b:#04x}");
        assert_eq!(VISIBLE[b as usize], b.is_ascii_graphic(), "byte {b:#04x}");
    }
}

#[test]
fn the_quick_scheme_check_is_case_insensitive_and_nothing_more() {
    for head in [b"Bearer ", b"bearer ", b"BEARER ", b"bEaReR "] {
        assert!(is_bearer_and_space(head), "{head:?}");
    }
    for head in [
        b"Bearer\t",
        b"Bearerx",
        b"Beare r",
        b"Bearer\0",
        b"Dearer ",
        b"bearer_",
    ] {
        assert!(!is_bearer_and_space(head), "{head:?}");
    }
    // Every single-byte change of `Bearer ` that the check accepts is
    // a change of case.
    for i in 0..7 {
        for b in 0..=255u8 {
            let mut head = *b"Bearer ";
            head[i] = b;
            let same = head.eq_ignore_ascii_case(b"Bearer ");
            assert_eq!(is_bearer_and_space(&head), same, "{i} {b:#04x}");
        }
    }
}

#[test]
fn other_schemes_are_not_bearer_credentials() {
    let s = KeySource::bearer();
    for v in [&b"Basic dXNlcjpwYXNz"[..], b"Digest x", b"Bearerabc"] {
        assert_eq!(extract(&s, &with_auth(&[v])), Ok(None));
    }
    // ...and don't count as a second credential beside a bearer token.
    assert_eq!(
        extract(&s, &with_auth(&[b"Basic dXNlcjpwYXNz", b"Bearer k"])),
        Ok(Some(b"k".to_vec()))
    );
}

#[test]
fn two_credentials_are_rejected() {
    let s = KeySource::bearer().or_header(HeaderName::from_static("x-api-key"));
    assert_eq!(
        extract(&s, &with_auth(&[b"Bearer a", b"Bearer b"])),
        Err(MalformedKey::MultipleCredentials)
    );
    let mut req = with_auth(&[b"Bearer a"]);
    req.headers_mut()
        .insert("x-api-key", http::HeaderValue::from_static("a"));
    assert_eq!(extract(&s, &req), Err(MalformedKey::MultipleCredentials));
}

#[test]
fn query_is_read_only_when_enabled() {
    let req = Request::get("/x?api_key=k%2Bey&other=1").body(()).unwrap();
    assert_eq!(extract(&KeySource::bearer(), &req), Ok(None));
    assert_eq!(
        extract(&KeySource::query("api_key"), &req),
        Ok(Some(b"k+ey".to_vec()))
    );
    // Found by the `key_source` fuzz target: the value was checked
    // trimmed but hashed as sent, so `+k+` (` k `) was looked up with
    // its spaces, unlike the same key in a header.
    let spaced = Request::get("/x?api_key=+k%09&other=1").body(()).unwrap();
    assert_eq!(
        extract(&KeySource::query("api_key"), &spaced),
        Ok(Some(b"k".to_vec()))
    );
    let twice = Request::get("/x?api_key=a&api_key=b").body(()).unwrap();
    assert_eq!(
        extract(&KeySource::query("api_key"), &twice),
        Err(MalformedKey::MultipleCredentials)
    );
}

#[test]
fn debug_lists_sources_without_values() {
    let s = KeySource::bearer()
        .or_header(HeaderName::from_static("x-api-key"))
        .or_query("k");
    assert_eq!(
        format!("{s:?}"),
        r#"["Authorization: Bearer", header x-api-key, query ?k=]"#
    );
}

#[test]
fn a_cookie_is_read_by_its_name() {
    let s = KeySource::cookie("api_key");
    let with = |values: &[&'static str]| {
        let mut req = Request::new(());
        for v in values {
            req.headers_mut()
                .append(http::header::COOKIE, http::HeaderValue::from_static(v));
        }
        req
    };
    assert_eq!(
        extract(&s, &with(&["theme=dark; api_key=sk_1; lang=en"])),
        Ok(Some(b"sk_1".to_vec()))
    );
    assert_eq!(
        extract(&s, &with(&["api_key=\"sk_1\""])),
        Ok(Some(b"sk_1".to_vec()))
    );
    assert_eq!(extract(&s, &with(&["theme=dark", "API_KEY=x"])), Ok(None));
    assert_eq!(extract(&s, &with(&["xapi_key=x; api_keyx=y"])), Ok(None));
    assert_eq!(
        extract(&s, &with(&["api_key=a", "api_key=b"])),
        Err(MalformedKey::MultipleCredentials)
    );
    assert_eq!(
        extract(&s, &with(&["api_key=a; api_key=b"])),
        Err(MalformedKey::MultipleCredentials)
    );
    assert_eq!(extract(&s, &with(&["api_key="])), Err(MalformedKey::Empty));
    // A cookie and a bearer token at once are two credentials.
    let both = KeySource::bearer().or_cookie("api_key");
    let mut req = with(&["api_key=a"]);
    req.headers_mut()
        .insert(AUTHORIZATION, http::HeaderValue::from_static("Bearer b"));
    assert_eq!(extract(&both, &req), Err(MalformedKey::MultipleCredentials));
    assert_eq!(
        format!("{both:?}"),
        r#"["Authorization: Bearer", cookie api_key]"#
    );
}

#[test]
fn the_bearer_scheme_is_told_apart_from_others() {
    for v in [&b"Bearer x"[..], b"bearer", b"  BEARER\tx", b"Bearer"] {
        assert!(is_bearer_scheme(v), "{:?}", String::from_utf8_lossy(v));
    }
    for v in [&b"Basic x"[..], b"Bearerx y", b"", b"Digest"] {
        assert!(!is_bearer_scheme(v), "{:?}", String::from_utf8_lossy(v));
    }
}
