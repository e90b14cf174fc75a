//! Arbitrary request paths against a route table with public, optional and
//! required templates (a stricter literal under a public catch-all or
//! parameter, as real APIs have), matched by the path as on a plain tower
//! stack. Invariants:
//!
//! - a path that is not canonical is always `Required`;
//! - no reading of the path that a proxy or a router might make (RFC 3986
//!   normalization, percent-decoding everything, merging slashes, dot
//!   segments, `;` parameters, backslashes, a trailing slash) resolves to a
//!   *stricter* policy than the path itself: a spelling never relaxes one;
//! - a canonical path is its own RFC 3986 normal form.
//!
//! Input: byte 0 picks the method, the rest is the request target.

#![no_main]

use std::sync::OnceLock;

use http::{Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use tower_api_key::fuzzing::{is_canonical, Routes};
use tower_api_key::RoutePolicy;

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        use RoutePolicy::*;
        let mut t = Routes::new();
        for (method, template, policy) in [
            (None, "/", Public),
            (None, "/health", Public),
            (None, "/public/{*rest}", Public),
            (None, "/public/admin", Required),
            (None, "/public/admin/{*rest}", Required),
            (None, "/docs/{page}", Optional),
            (None, "/docs/secret", Required),
            (Some(Method::GET), "/users/{id}", Public),
            (None, "/users/me", Required),
            (None, "/users/{id}/keys", Required),
            (None, "/files/{dir}/{name}", Optional),
            (None, "/files/private/{name}", Required),
            (None, "/x/{p}", Public),
            (None, "/x/caf%C3%A9", Required),
            (None, "/x/%7B", Required),
            (None, "/x/a!b", Required),
        ] {
            t.set_policy(method, template, policy)
                .expect("a valid template");
        }
        t
    })
}

fn strictness(p: RoutePolicy) -> u8 {
    match p {
        RoutePolicy::Public => 0,
        RoutePolicy::Optional => 1,
        RoutePolicy::Required => 2,
    }
}

fn resolve(method: &Method, path: &[u8]) -> Option<RoutePolicy> {
    let uri = Uri::try_from(path).ok()?;
    let req = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(())
        .ok()?;
    Some(routes().resolve(&req))
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// What a path segment may hold unencoded (RFC 3986 `pchar` less `%`).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@".contains(&b)
}

/// RFC 3986 §6.2.2: hex digits upper case, unreserved characters decoded,
/// dot segments removed.
fn rfc3986(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if let (b'%', Some(h), Some(l)) = (
            path[i],
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) {
            let byte = h << 4 | l;
            if is_unreserved(byte) {
                out.push(byte);
            } else {
                out.extend_from_slice(format!("%{byte:02X}").as_bytes());
            }
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    segments(&out, false)
}

/// Every `%XX` decoded.
fn decode_all(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if let (b'%', Some(h), Some(l)) = (
            path[i],
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out
}

/// Back into a URI path: `/` and `pchar` as they are, any other byte
/// encoded.
fn encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if b == b'/' || is_pchar(b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Dot segments removed (RFC 3986 §5.2.4), and with `merge` empty segments
/// too (a proxy's `merge_slashes`).
fn segments(path: &[u8], merge: bool) -> Vec<u8> {
    let Some(rest) = path.strip_prefix(b"/") else {
        return path.to_vec();
    };
    let parts: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    let mut kept: Vec<&[u8]> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *part {
            b"." | b".." => {
                if *part == b".." {
                    kept.pop();
                }
                if last {
                    kept.push(b"");
                }
            }
            b"" if merge && !last => {}
            p => kept.push(p),
        }
    }
    let mut out = b"/".to_vec();
    out.extend_from_slice(&kept.join(&b'/'));
    out
}

/// The readings of a path that some proxy or router makes.
fn readings(path: &[u8]) -> Vec<Vec<u8>> {
    let decoded = |p: &[u8]| segments(&encode(&decode_all(p)), true);
    let backslashes: Vec<u8> = path
        .iter()
        .map(|&b| if b == b'\\' { b'/' } else { b })
        .collect();
    let no_params: Vec<u8> = {
        let mut out = Vec::new();
        let mut skipping = false;
        for &b in path {
            match b {
                b';' => skipping = true,
                b'/' => {
                    skipping = false;
                    out.push(b);
                }
                _ if !skipping => out.push(b),
                _ => {}
            }
        }
        out
    };
    let full = decoded(
        &decode_all(&no_params)
            .iter()
            .map(|&b| if b == b'\\' { b'/' } else { b })
            .collect::<Vec<_>>(),
    );
    let mut all = vec![
        rfc3986(path),
        decoded(path),
        segments(path, true),
        decoded(&backslashes),
        decoded(&no_params),
        full.clone(),
    ];
    for p in [decoded(path), full] {
        if p.len() > 1 && p.ends_with(b"/") {
            all.push(p[..p.len() - 1].to_vec());
        }
    }
    all
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, target)) = data.split_first() else {
        return;
    };
    let method =
        [Method::GET, Method::HEAD, Method::POST, Method::DELETE][usize::from(m & 3)].clone();
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let path = uri.path().as_bytes().to_vec();
    let Some(policy) = resolve(&method, &path) else {
        return;
    };
    let canonical = std::str::from_utf8(&path).is_ok_and(is_canonical);
    if !canonical {
        assert_eq!(
            policy,
            RoutePolicy::Required,
            "a path that is not canonical"
        );
    } else {
        assert_eq!(
            rfc3986(&path),
            path,
            "a canonical path is its own normal form"
        );
    }
    for reading in readings(&path) {
        if let Some(other) = resolve(&method, &reading) {
            assert!(
                strictness(policy) >= strictness(other),
                "{:?} is {policy:?} but reads as {:?}, {other:?}",
                String::from_utf8_lossy(&path),
                String::from_utf8_lossy(&reading),
            );
        }
    }
});
