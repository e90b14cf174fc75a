//! [`KeySource`]: where the presented secret is read from, and what a
//! well-formed one looks like.

use std::borrow::Cow;
use std::fmt;

use http::header::{HeaderName, AUTHORIZATION};
use http::HeaderMap;
use http::Uri;

/// The longest secret accepted by default, in bytes. Longer values are
/// rejected with `400 invalid_request` before they are hashed.
pub const DEFAULT_MAX_KEY_LENGTH: usize = 1024;

/// Where the layer reads the presented API key from.
///
/// The default is `Authorization: Bearer <token>`: the scheme is matched
/// case-insensitively and the token must follow RFC 6750's `b64token` syntax.
/// A named header (such as `X-API-Key`) accepts any visible ASCII. Several
/// sources can be combined; a request that carries a credential in more than
/// one place (or the same header twice) is rejected with `400
/// invalid_request`, never resolved by precedence, so a proxy and the service
/// can't disagree about which key was used.
///
/// Query parameters are off unless asked for with [`query`](Self::query): URLs
/// end up in access logs, browser history and `Referer` headers, so a key in
/// one is a key leaked.
///
/// # Example
///
/// ```
/// use http::header::HeaderName;
/// use tower_api_key::KeySource;
///
/// // `Authorization: Bearer ...` or `X-API-Key: ...`, but never both at once.
/// let source = KeySource::bearer().or_header(HeaderName::from_static("x-api-key"));
/// # let _ = source;
/// ```
#[derive(Clone)]
pub struct KeySource {
    kinds: Vec<SourceKind>,
    max_len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SourceKind {
    Bearer,
    Header(HeaderName),
    Query(String),
}

/// Why a presented credential was refused before any lookup. The text is
/// safe to show a client: it never contains the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedKey {
    /// The request carries a credential in more than one place.
    MultipleCredentials,
    /// The credential is present but empty.
    Empty,
    /// The credential is longer than the configured maximum.
    TooLong,
    /// The credential contains bytes its syntax does not allow (non-ASCII,
    /// control characters, spaces, or outside `b64token` for bearer tokens).
    InvalidCharacters,
}

impl MalformedKey {
    /// A sentence for the `detail` of the error body.
    pub fn description(self) -> &'static str {
        match self {
            Self::MultipleCredentials => "the request carries more than one API key credential",
            Self::Empty => "the API key credential is empty",
            Self::TooLong => "the API key credential is too long",
            Self::InvalidCharacters => "the API key credential contains invalid characters",
        }
    }
}

impl fmt::Display for MalformedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl KeySource {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1).
    pub fn bearer() -> Self {
        Self {
            kinds: vec![SourceKind::Bearer],
            max_len: DEFAULT_MAX_KEY_LENGTH,
        }
    }

    /// A named header carrying the bare key, such as `X-API-Key`.
    pub fn header(name: HeaderName) -> Self {
        Self {
            kinds: vec![SourceKind::Header(name)],
            max_len: DEFAULT_MAX_KEY_LENGTH,
        }
    }

    /// A query parameter. Only use this when clients can't send headers: keys
    /// in URLs leak through logs and `Referer`.
    pub fn query(param: impl Into<String>) -> Self {
        Self {
            kinds: vec![SourceKind::Query(param.into())],
            max_len: DEFAULT_MAX_KEY_LENGTH,
        }
    }

    /// Also accept `Authorization: Bearer`.
    pub fn or_bearer(self) -> Self {
        self.push(SourceKind::Bearer)
    }

    /// Also accept the named header.
    pub fn or_header(self, name: HeaderName) -> Self {
        self.push(SourceKind::Header(name))
    }

    /// Also accept the query parameter (see [`query`](Self::query)).
    pub fn or_query(self, param: impl Into<String>) -> Self {
        self.push(SourceKind::Query(param.into()))
    }

    /// The longest secret accepted, in bytes (default
    /// [`DEFAULT_MAX_KEY_LENGTH`]).
    pub fn max_length(mut self, max: usize) -> Self {
        self.max_len = max;
        self
    }

    fn push(mut self, kind: SourceKind) -> Self {
        if !self.kinds.contains(&kind) {
            self.kinds.push(kind);
        }
        self
    }

    /// Whether `Authorization: Bearer` is one of the sources (it decides the
    /// `WWW-Authenticate` challenge).
    pub(crate) fn uses_bearer(&self) -> bool {
        self.kinds.contains(&SourceKind::Bearer)
    }

    /// Where a client should put its key, for the `ApiKey` challenge of
    /// setups without Bearer: `header="x-api-key"` or `query="api_key"`.
    pub(crate) fn challenge_param(&self) -> Option<String> {
        self.kinds
            .iter()
            .find_map(|k| match k {
                SourceKind::Header(h) => Some(format!("header=\"{}\"", h.as_str())),
                _ => None,
            })
            .or_else(|| {
                self.kinds.iter().find_map(|k| match k {
                    SourceKind::Query(q) => {
                        Some(format!("query=\"{}\"", crate::rejection::sanitize_realm(q)))
                    }
                    _ => None,
                })
            })
    }

    /// Reads the one credential of a request: `Ok(None)` when there is none.
    pub(crate) fn extract<'a>(
        &self,
        parts: &'a RequestHead<'a>,
    ) -> Result<Option<Cow<'a, [u8]>>, MalformedKey> {
        let mut found: Option<Cow<'a, [u8]>> = None;
        for kind in &self.kinds {
            match kind {
                SourceKind::Bearer => {
                    for value in parts.headers.get_all(AUTHORIZATION) {
                        // Another scheme (Basic, Digest...) is not a bearer
                        // credential: RFC 6750 §3.1 answers it as missing.
                        if let Some(token) = parse_bearer(value.as_bytes(), self.max_len)? {
                            put(&mut found, Cow::Borrowed(token))?;
                        }
                    }
                }
                SourceKind::Header(name) => {
                    for value in parts.headers.get_all(name) {
                        let key = parse_plain(value.as_bytes(), self.max_len)?;
                        put(&mut found, Cow::Borrowed(key))?;
                    }
                }
                SourceKind::Query(param) => {
                    let Some(query) = parts.uri.query() else {
                        continue;
                    };
                    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                        if name != param.as_str() {
                            continue;
                        }
                        // The key is what the check read (spaces trimmed, as
                        // in a header), not the raw value.
                        let key = match value {
                            Cow::Borrowed(s) => {
                                Cow::Borrowed(parse_plain(s.as_bytes(), self.max_len)?)
                            }
                            Cow::Owned(s) => {
                                Cow::Owned(parse_plain(s.as_bytes(), self.max_len)?.to_vec())
                            }
                        };
                        put(&mut found, key)?;
                    }
                }
            }
        }
        Ok(found)
    }
}

/// The parts of a request a source reads (borrowed, so a source never holds on
/// to the secret).
pub(crate) struct RequestHead<'a> {
    pub(crate) headers: &'a HeaderMap,
    pub(crate) uri: &'a Uri,
}

impl<'a> RequestHead<'a> {
    pub(crate) fn of<B>(req: &'a http::Request<B>) -> Self {
        Self {
            headers: req.headers(),
            uri: req.uri(),
        }
    }
}

fn put<'a>(slot: &mut Option<Cow<'a, [u8]>>, key: Cow<'a, [u8]>) -> Result<(), MalformedKey> {
    if slot.is_some() {
        return Err(MalformedKey::MultipleCredentials);
    }
    *slot = Some(key);
    Ok(())
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A byte class as a table: the bytes of each `(lo, hi)` range, and
/// `extra`.
const fn class(ranges: &[(u8, u8)], extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut r = 0;
    while r < ranges.len() {
        let mut b = ranges[r].0 as usize;
        while b <= ranges[r].1 as usize {
            t[b] = true;
            b += 1;
        }
        r += 1;
    }
    let mut e = 0;
    while e < extra.len() {
        t[extra[e] as usize] = true;
        e += 1;
    }
    t
}

/// `b64token` characters (RFC 6750 §2.1): `ALPHA / DIGIT / "-" / "." / "_" /
/// "~" / "+" / "/"`.
static B64TOKEN: [bool; 256] = class(&[(b'A', b'Z'), (b'a', b'z'), (b'0', b'9')], b"-._~+/");

/// Visible ASCII, `%x21-7E`.
static VISIBLE: [bool; 256] = class(&[(0x21, 0x7e)], b"");

/// Whether every byte is in the class: no early exit, so the time doesn't
/// tell where a bad byte is.
fn all_in(bytes: &[u8], table: &[bool; 256]) -> bool {
    bytes.iter().fold(true, |ok, &b| ok & table[b as usize])
}

/// `Bearer 1*SP b64token`, RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT /
/// "-" / "." / "_" / "~" / "+" / "/" ) *"="`. `Ok(None)` for another scheme.
fn parse_bearer(value: &[u8], max_len: usize) -> Result<Option<&[u8]>, MalformedKey> {
    let value = trim_ows(value);
    // The scheme is what comes before the first SP or HTAB; most requests
    // spell it `Bearer ` exactly where the quick check looks.
    let rest = match value.first_chunk::<7>() {
        Some(head) if is_bearer_and_space(head) => &value[6..],
        _ => {
            let (scheme, rest) = match value.iter().position(|&b| b == b' ' || b == b'\t') {
                Some(i) => value.split_at(i),
                None => (value, &value[value.len()..]),
            };
            if !scheme.eq_ignore_ascii_case(b"bearer") {
                return Ok(None);
            }
            rest
        }
    };
    // Only spaces separate the scheme from the token (RFC 9110 §11.4); a
    // tab is left in the token, where the syntax check refuses it.
    let token = match rest.iter().position(|&b| b != b' ') {
        Some(i) => &rest[i..],
        None => &rest[rest.len()..],
    };
    if token.is_empty() {
        return Err(MalformedKey::Empty);
    }
    if token.len() > max_len {
        return Err(MalformedKey::TooLong);
    }
    // 1*b64token-char then *"=": strip the padding, then check the body.
    let padding = token.iter().rev().take_while(|&&b| b == b'=').count();
    let body = &token[..token.len() - padding];
    if body.is_empty() || !all_in(body, &B64TOKEN) {
        return Err(MalformedKey::InvalidCharacters);
    }
    Ok(Some(token))
}

/// `Bearer ` in any case, as one comparison of a word: OR-ing `0x20` into a
/// byte makes `B` and `b` both `b` (and nothing else `b`), likewise for the
/// other letters; the space is compared as it is.
fn is_bearer_and_space(head: &[u8; 7]) -> bool {
    let mut word = [0u8; 8];
    word[..7].copy_from_slice(head);
    u64::from_le_bytes(word) | 0x0000_2020_2020_2020 == u64::from_le_bytes(*b"bearer \0")
}

/// A bare key: visible ASCII (`%x21-7E`), no spaces.
fn parse_plain(value: &[u8], max_len: usize) -> Result<&[u8], MalformedKey> {
    let value = trim_ows(value);
    if value.is_empty() {
        return Err(MalformedKey::Empty);
    }
    if value.len() > max_len {
        return Err(MalformedKey::TooLong);
    }
    if !all_in(value, &VISIBLE) {
        return Err(MalformedKey::InvalidCharacters);
    }
    Ok(value)
}

impl Default for KeySource {
    fn default() -> Self {
        Self::bearer()
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for kind in &self.kinds {
            match kind {
                SourceKind::Bearer => list.entry(&"Authorization: Bearer"),
                SourceKind::Header(h) => list.entry(&format_args!("header {h}")),
                SourceKind::Query(q) => list.entry(&format_args!("query ?{q}=")),
            };
        }
        list.finish()
    }
}

#[cfg(test)]
mod tests {
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
}
