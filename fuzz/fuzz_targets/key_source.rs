//! Arbitrary bytes as `Authorization`, `X-API-Key` and query values, through
//! an `ApiKeyAuthLayer` (memory cache, a lookup that knows one key), checked
//! against a reference reading of the grammar written from the docs:
//! the answer is 400 (malformed, or two credentials), 401 (missing or
//! unknown) or 200 (the known key, exactly), and the lookup is asked for the
//! hash of the credential as presented, never for a malformed one.
//!
//! Input: byte 0 picks the sources and the length limit, byte 1 where the
//! payload goes, the rest is the payload (see `Case::parse`).

#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::{service_fn, Layer, ServiceExt};
use tower_api_key::cache::MemoryCache;
use tower_api_key::{fuzzing, lookup_fn, ApiKeyAuthLayer, KeyHash, KeySource, Principal};

const KNOWN: &[u8] = b"sk_live_known_key_0123";
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

#[derive(Clone)]
struct Client;
impl Principal for Client {}

struct Case {
    bearer: bool,
    header: bool,
    query: bool,
    max_len: usize,
    req: Request<Bytes>,
    /// The payload was put in the request somewhere.
    placed: bool,
}

impl Case {
    fn parse(data: &[u8]) -> Option<Self> {
        let (&config, rest) = data.split_first()?;
        let (&place, payload) = rest.split_first()?;
        let (bearer, header, query) = match config & 3 {
            0 => (true, false, false),
            1 => (false, true, false),
            2 => (false, false, true),
            _ => (true, true, true),
        };
        let max_len = match (config >> 2) & 3 {
            0 => tower_api_key::DEFAULT_MAX_KEY_LENGTH,
            1 => 16,
            2 => KNOWN.len(),
            _ => KNOWN.len() - 1,
        };
        let mut uri = "/v1/data".to_owned();
        let mut placed = false;
        if place & 4 != 0 {
            let encoded: String = payload.iter().map(|b| format!("%{b:02X}")).collect();
            uri.push_str("?api_key=");
            uri.push_str(&encoded);
            placed = true;
        } else if place & 8 != 0 {
            // The payload as the whole query string, if it is one.
            if let Ok(q) = std::str::from_utf8(payload) {
                let with = format!("{uri}?{q}");
                if with.parse::<http::Uri>().is_ok() {
                    uri = with;
                    placed = true;
                }
            }
        }
        let mut req = Request::get(uri).body(Bytes::new()).ok()?;
        let value = HeaderValue::from_bytes(payload).ok();
        let headers = req.headers_mut();
        if place & 16 != 0 {
            headers.append(
                AUTHORIZATION,
                HeaderValue::from_static("Basic dXNlcjpwYXNz"),
            );
        }
        if let Some(value) = value {
            if place & 1 != 0 {
                headers.append(AUTHORIZATION, value.clone());
                if place & 32 != 0 {
                    headers.append(AUTHORIZATION, value.clone());
                }
                placed = true;
            }
            if place & 2 != 0 {
                headers.append(X_API_KEY, value);
                placed = true;
            }
        }
        Some(Self {
            bearer,
            header,
            query,
            max_len,
            req,
            placed,
        })
    }

    fn source(&self) -> KeySource {
        let mut source: Option<KeySource> = None;
        if self.bearer {
            source = Some(KeySource::bearer());
        }
        if self.header {
            source = Some(
                source.map_or_else(|| KeySource::header(X_API_KEY), |s| s.or_header(X_API_KEY)),
            );
        }
        if self.query {
            source =
                Some(source.map_or_else(|| KeySource::query("api_key"), |s| s.or_query("api_key")));
        }
        source
            .expect("one source at least")
            .max_length(self.max_len)
    }
}

/// The reference reading: every credential found, each `Ok(key)` or
/// `Err(())` (malformed).
fn reference(case: &Case) -> Vec<Result<Vec<u8>, ()>> {
    let mut found = Vec::new();
    let headers = case.req.headers();
    if case.bearer {
        for value in headers.get_all(AUTHORIZATION) {
            if let Some(cred) = ref_bearer(value.as_bytes(), case.max_len) {
                found.push(cred);
            }
        }
    }
    if case.header {
        for value in headers.get_all(X_API_KEY) {
            found.push(ref_plain(value.as_bytes(), case.max_len));
        }
    }
    if case.query {
        for pair in case.req.uri().query().unwrap_or("").split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if pair.is_empty() || form_decode(name) != b"api_key" {
                continue;
            }
            let value = form_decode(value);
            found.push(if value.is_ascii() {
                ref_plain(&value, case.max_len)
            } else {
                Err(())
            });
        }
    }
    found
}

fn trim(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// RFC 6750 §2.1: `Bearer 1*SP b64token`; `None` for another scheme.
fn ref_bearer(value: &[u8], max: usize) -> Option<Result<Vec<u8>, ()>> {
    let value = trim(value);
    let end = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    if !value[..end].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let mut token = &value[end..];
    while let [b' ', rest @ ..] = token {
        token = rest;
    }
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(b);
    let body = token.iter().take_while(|b| b64(b)).count();
    let well_formed = body > 0 && token[body..].iter().all(|&b| b == b'=');
    Some(if well_formed && token.len() <= max {
        Ok(token.to_vec())
    } else {
        Err(())
    })
}

/// A bare key: visible ASCII, surrounding spaces and tabs trimmed.
fn ref_plain(value: &[u8], max: usize) -> Result<Vec<u8>, ()> {
    let key = trim(value);
    if key.is_empty() || key.len() > max || !key.iter().all(u8::is_ascii_graphic) {
        return Err(());
    }
    Ok(key.to_vec())
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte, a `%` without two hex digits itself.
fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some() => {
                out.push((hex(b[i + 1]).unwrap() * 16 + hex(b[i + 2]).unwrap()) as u8);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(case) = Case::parse(data) else {
        return;
    };
    let source = case.source();
    let asked = Arc::new(Mutex::new(Vec::<KeyHash>::new()));
    let lookup = {
        let asked = asked.clone();
        lookup_fn(move |hash: KeyHash| {
            asked.lock().unwrap().push(hash);
            async move { Ok::<_, Infallible>((hash == KeyHash::of(KNOWN)).then_some(Client)) }
        })
    };
    let cache = MemoryCache::builder()
        .max_capacity(16)
        .max_negative_capacity(16)
        .build();
    let layer = ApiKeyAuthLayer::new(cache, lookup).source(source.clone());
    let svc = layer.layer(service_fn(|req: Request<Bytes>| async move {
        assert!(req.extensions().get::<Arc<Client>>().is_some());
        Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok")))
    }));

    let expected = reference(&case);
    let max_len = case.max_len;
    let extracted = fuzzing::extract_key(&source, &case.req);
    let res = runtime().block_on(svc.oneshot(case.req)).unwrap();
    let asked = asked.lock().unwrap().clone();

    let malformed = expected.iter().any(Result::is_err) || expected.len() > 1;
    let want = if malformed {
        StatusCode::BAD_REQUEST
    } else {
        match expected.first() {
            Some(Ok(key)) if key == KNOWN => StatusCode::OK,
            _ => StatusCode::UNAUTHORIZED,
        }
    };
    assert_eq!(
        res.status(),
        want,
        "reference {expected:?}, extracted {extracted:?} (placed: {})",
        case.placed
    );
    match (malformed, expected.first()) {
        (false, Some(Ok(key))) => {
            assert_eq!(extracted, Ok(Some(key.clone())));
            assert_eq!(asked, [KeyHash::of(key)], "the key as presented");
        }
        (false, _) => {
            assert_eq!(extracted, Ok(None));
            assert!(asked.is_empty());
        }
        (true, _) => {
            assert!(extracted.is_err(), "{extracted:?}");
            assert!(asked.is_empty(), "a malformed key is never looked up");
        }
    }
    if res.status() == StatusCode::OK {
        assert!(KNOWN.len() <= max_len, "a key over the limit accepted");
    }
});
