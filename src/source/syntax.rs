//! The syntax of a presented credential: RFC 6750's bearer token, a bare
//! key in a header, query parameter or cookie, and the `Cookie` header's
//! pairs.

use super::MalformedKey;

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
pub(super) static B64TOKEN: [bool; 256] =
    class(&[(b'A', b'Z'), (b'a', b'z'), (b'0', b'9')], b"-._~+/");

/// Visible ASCII, `%x21-7E`.
pub(super) static VISIBLE: [bool; 256] = class(&[(0x21, 0x7e)], b"");

/// Whether every byte is in the class: no early exit, so the time doesn't
/// tell where a bad byte is.
fn all_in(bytes: &[u8], table: &[bool; 256]) -> bool {
    bytes.iter().fold(true, |ok, &b| ok & table[b as usize])
}

/// `Bearer 1*SP b64token`, RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT /
/// "-" / "." / "_" / "~" / "+" / "/" ) *"="`. `Ok(None)` for another scheme.
pub(super) fn parse_bearer(value: &[u8], max_len: usize) -> Result<Option<&[u8]>, MalformedKey> {
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
pub(super) fn is_bearer_and_space(head: &[u8; 7]) -> bool {
    let mut word = [0u8; 8];
    word[..7].copy_from_slice(head);
    u64::from_le_bytes(word) | 0x0000_2020_2020_2020 == u64::from_le_bytes(*b"bearer \0")
}

/// A bare key: visible ASCII (`%x21-7E`), no spaces.
pub(super) fn parse_plain(value: &[u8], max_len: usize) -> Result<&[u8], MalformedKey> {
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

/// Whether an `Authorization` value is of the Bearer scheme (whatever its
/// token): what hiding the credential removes, and only that.
pub(super) fn is_bearer_scheme(value: &[u8]) -> bool {
    let value = trim_ows(value);
    if let Some(head) = value.first_chunk::<7>() {
        if is_bearer_and_space(head) {
            return true;
        }
    }
    let scheme = match value.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => &value[..i],
        None => value,
    };
    scheme.eq_ignore_ascii_case(b"bearer")
}

/// The `name=value` pairs of a `Cookie` header value (RFC 6265 §4.2.1:
/// `pair *( ";" SP pair )`, read leniently: spaces around either side
/// trimmed).
pub(super) fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = Cookie<'_>> {
    value.split(|&b| b == b';').map(|raw| {
        let pair = trim_ows(raw);
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (trim_ows(&pair[..i]), trim_ows(&pair[i + 1..])),
            None => (&pair[..0], pair),
        };
        // A quoted value is the value without its quotes (RFC 6265's
        // `cookie-value = *cookie-octet / ( DQUOTE *cookie-octet DQUOTE )`).
        let value = match value {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        };
        Cookie { name, value }
    })
}

/// One pair of a `Cookie` header.
pub(super) struct Cookie<'a> {
    pub(super) name: &'a [u8],
    pub(super) value: &'a [u8],
}
