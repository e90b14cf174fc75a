//! [`KeySource`]: where the presented secret is read from, what a
//! well-formed one looks like (`syntax.rs`), and taking it out of the
//! request once read (`hide.rs`).

mod hide;
mod syntax;

use std::borrow::Cow;
use std::fmt;

use http::header::{HeaderName, AUTHORIZATION, COOKIE};
use http::HeaderMap;
use http::Uri;

use self::syntax::{cookie_pairs, parse_bearer, parse_plain};

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
/// one is a key leaked. A cookie ([`cookie`](Self::cookie)) suits browser
/// clients of a same-site API.
///
/// Once read, the key is taken out of the request the inner service sees
/// (the `Authorization` header's Bearer value, the named header, the query
/// parameter, the cookie), unless the layer is told to
/// [keep it](crate::ApiKeyAuthLayer::hide_credentials).
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
    Cookie(String),
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

    /// A cookie (`Cookie: api_key=…`). Its value is a bare key (visible
    /// ASCII), optionally in double quotes.
    pub fn cookie(name: impl Into<String>) -> Self {
        Self {
            kinds: vec![SourceKind::Cookie(name.into())],
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

    /// Also accept the cookie (see [`cookie`](Self::cookie)).
    pub fn or_cookie(self, name: impl Into<String>) -> Self {
        self.push(SourceKind::Cookie(name.into()))
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
    /// setups without Bearer: `header="x-api-key"`, else `query="api_key"`,
    /// else `cookie="api_key"`.
    pub(crate) fn challenge_param(&self) -> Option<String> {
        let sanitize = crate::rejection::sanitize_realm;
        let param = |want: u8| {
            self.kinds.iter().find_map(|k| match (k, want) {
                (SourceKind::Header(h), 0) => Some(format!("header=\"{}\"", h.as_str())),
                (SourceKind::Query(q), 1) => Some(format!("query=\"{}\"", sanitize(q))),
                (SourceKind::Cookie(c), 2) => Some(format!("cookie=\"{}\"", sanitize(c))),
                _ => None,
            })
        };
        param(0).or_else(|| param(1)).or_else(|| param(2))
    }

    /// Reads the one credential of a request: `Ok(None)` when there is none.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn extract<'a>(
        &self,
        parts: &'a RequestHead<'a>,
    ) -> Result<Option<Cow<'a, [u8]>>, MalformedKey> {
        self.find(parts).map(|found| found.map(|f| f.key))
    }

    /// Reads the one credential of a request, and where it was found.
    pub(crate) fn find<'a>(
        &self,
        parts: &'a RequestHead<'a>,
    ) -> Result<Option<Found<'a>>, MalformedKey> {
        let mut found: Option<Found<'a>> = None;
        for (from, kind) in self.kinds.iter().enumerate() {
            let mut put = |key: Cow<'a, [u8]>, alone: bool| match found {
                Some(_) => Err(MalformedKey::MultipleCredentials),
                None => {
                    let from = Place {
                        source: from,
                        alone,
                    };
                    found = Some(Found { key, from });
                    Ok(())
                }
            };
            match kind {
                SourceKind::Bearer => {
                    let values = parts.headers.get_all(AUTHORIZATION);
                    let mut lines = values.iter();
                    let alone = lines.next().is_some() && lines.next().is_none();
                    for value in values {
                        // Another scheme (Basic, Digest...) is not a bearer
                        // credential: RFC 6750 §3.1 answers it as missing.
                        if let Some(token) = parse_bearer(value.as_bytes(), self.max_len)? {
                            put(Cow::Borrowed(token), alone)?;
                        }
                    }
                }
                SourceKind::Header(name) => {
                    for value in parts.headers.get_all(name) {
                        let key = parse_plain(value.as_bytes(), self.max_len)?;
                        put(Cow::Borrowed(key), false)?;
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
                        put(key, false)?;
                    }
                }
                SourceKind::Cookie(name) => {
                    let lines = parts.headers.get_all(COOKIE);
                    let mut each = lines.iter();
                    let alone = each.next().is_some() && each.next().is_none();
                    for line in lines {
                        for cookie in cookie_pairs(line.as_bytes()) {
                            if cookie.name == name.as_bytes() {
                                put(
                                    Cow::Borrowed(parse_plain(cookie.value, self.max_len)?),
                                    alone,
                                )?;
                            }
                        }
                    }
                }
            }
        }
        Ok(found)
    }
}

/// A credential, and which of the sources it came from (for
/// [`KeySource::hide`]).
pub(crate) struct Found<'a> {
    pub(crate) key: Cow<'a, [u8]>,
    pub(crate) from: Place,
}

/// Where a credential was found: the source's index, and whether its
/// header line was the only one of its name (then hiding it is one lookup:
/// no other line to keep).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Place {
    pub(crate) source: usize,
    pub(crate) alone: bool,
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
                SourceKind::Cookie(c) => list.entry(&format_args!("cookie {c}")),
            };
        }
        list.finish()
    }
}

#[cfg(test)]
mod tests;
