//! Route templates and request paths: a template's segments, the one
//! canonical spelling of a path, and matching one against the other.

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Segment {
    Literal(String),
    Param,
    CatchAll,
}

pub(super) fn parse_template(template: &str) -> Result<Vec<Segment>, &'static str> {
    let Some(rest) = template.strip_prefix('/') else {
        return Err("a route template starts with '/'");
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let seg = if let Some(name) = part.strip_prefix("{*").and_then(|p| p.strip_suffix('}')) {
            if i + 1 != parts.len() || name.is_empty() {
                return Err("a catch-all `{*name}` must be the last segment");
            }
            Segment::CatchAll
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if name.is_empty() || name.contains(['{', '}']) {
                return Err("a parameter is written `{name}`");
            }
            Segment::Param
        } else if part.contains(['{', '}']) {
            return Err("a parameter must be a whole segment");
        } else if part.is_empty() && i + 1 != parts.len() {
            return Err("empty segment");
        } else {
            Segment::Literal((*part).to_owned())
        };
        segments.push(seg);
    }
    Ok(segments)
}

/// Whether a request path is in the one spelling that a router and a proxy
/// can't read differently.
pub(crate) fn is_canonical(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    if path == "/" {
        return true;
    }
    if path.ends_with('/') {
        return false;
    }
    // RFC 3986's normal form, one spelling per byte, so that no decoding
    // router can read two canonical paths as one: a byte with a plain
    // spelling is written plain (`%61` is `a`), any other is encoded, in
    // upper-case hex (`%C3`, not `%c3`). And no empty, `.` or `..` segment:
    // checked in the same pass, at each `/` (one table read a byte: this
    // runs on every request to a path no literal rule names).
    let bytes = path.as_bytes();
    let mut i = 1;
    let mut segment = 1;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                return false;
            };
            if !is_upper_hex(h) || !is_upper_hex(l) {
                return false;
            }
            let decoded = (hex(h) << 4) | hex(l);
            // '\\', '%', ';' and NUL change meaning once decoded ('.' and
            // '/' are plain).
            if PLAIN[usize::from(decoded)] || matches!(decoded, b'\\' | b'%' | b';' | 0) {
                return false;
            }
            i += 3;
        } else if b == b'/' {
            if is_dot_or_empty(&bytes[segment..i]) {
                return false;
            }
            i += 1;
            segment = i;
        } else if PLAIN[usize::from(b)] {
            i += 1;
        } else {
            // ';', '\\', and what a URI must encode ('{', '|', non-ASCII...).
            return false;
        }
    }
    !is_dot_or_empty(&bytes[segment..])
}

fn is_dot_or_empty(segment: &[u8]) -> bool {
    matches!(segment, b"" | b"." | b"..")
}

/// What a canonical path writes unencoded: `/` and RFC 3986's `pchar`
/// (unreserved, sub-delims, `:`, `@`) but `;`.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'/' | b'-'
                    | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    t
};

fn is_upper_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'A'..=b'F').contains(&c)
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'A' + 10,
    }
}

/// Whether a route template (axum's `MatchedPath`) has the shape of
/// `segments`: the same literals, a parameter where it has one, a catch-all
/// where it has one, whatever the parameters are named.
#[cfg(any(feature = "axum", test))]
pub(super) fn same_shape(segments: &[Segment], template: &str) -> bool {
    let Some(rest) = template.strip_prefix('/') else {
        return false;
    };
    if segments.is_empty() {
        return rest.is_empty();
    }
    let mut parts = rest.split('/');
    for segment in segments {
        let Some(part) = parts.next() else {
            return false;
        };
        let braced = part.len() > 2 && part.starts_with('{') && part.ends_with('}');
        let same = match segment {
            Segment::Literal(literal) => part == literal,
            Segment::Param => braced && !part.starts_with("{*"),
            Segment::CatchAll => braced && part.starts_with("{*") && part.len() > 3,
        };
        if !same {
            return false;
        }
    }
    parts.next().is_none()
}

pub(super) fn matches_path(segments: &[Segment], path: &str) -> bool {
    let rest = &path[1..];
    if segments.is_empty() {
        return rest.is_empty();
    }
    let mut parts = rest.split('/');
    for seg in segments {
        match seg {
            Segment::CatchAll => {
                // The remainder, at least one non-empty segment.
                return parts.next().is_some_and(|p| !p.is_empty());
            }
            Segment::Param => match parts.next() {
                Some(p) if !p.is_empty() => {}
                _ => return false,
            },
            Segment::Literal(lit) => match parts.next() {
                Some(p) if p == lit => {}
                _ => return false,
            },
        }
    }
    parts.next().is_none()
}
