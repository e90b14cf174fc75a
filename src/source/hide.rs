//! Taking the credential out of the request once it is read, so the inner
//! service (its handlers, its logs, an upstream it proxies to) never sees
//! it: Kong's and Envoy's `hide_credentials`, on by default here.

use http::header::{Entry, AUTHORIZATION, COOKIE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Uri};

use super::syntax::{cookie_pairs, is_bearer_scheme};
use super::{KeySource, Place, SourceKind};

impl KeySource {
    /// Removes what source `from` (a [`Found::from`](super::Found)) reads
    /// from `req`: the `Authorization` values of the Bearer scheme (others,
    /// such as `Basic`, stay), the named header, every instance of the query
    /// parameter (the rest of the query kept as sent; axum's `OriginalUri`
    /// too), or the cookie (the other cookies kept). The header cases cost
    /// one lookup and no allocation when the line is the only one of its
    /// name; a rewritten query or cookie line is one allocation.
    pub(crate) fn hide<B>(&self, req: &mut http::Request<B>, from: Place) {
        match self.kinds.get(from.source) {
            // The one `Authorization` line: the common case.
            Some(SourceKind::Bearer) if from.alone => {
                req.headers_mut().remove(AUTHORIZATION);
            }
            Some(SourceKind::Bearer) => {
                remove_values(req.headers_mut(), AUTHORIZATION, |v| {
                    (!is_bearer_scheme(v.as_bytes())).then(|| v.clone())
                });
            }
            Some(SourceKind::Header(name)) => {
                req.headers_mut().remove(name);
            }
            Some(SourceKind::Query(param)) => {
                if let Some(uri) = without_param(req.uri(), param) {
                    *req.uri_mut() = uri;
                }
                // axum's router keeps the URI as it came, for handlers that
                // ask (`OriginalUri`): the key must not wait there.
                #[cfg(feature = "axum")]
                if let Some(original) = req.extensions_mut().get_mut::<axum::extract::OriginalUri>()
                {
                    if let Some(uri) = without_param(&original.0, param) {
                        original.0 = uri;
                    }
                }
            }
            Some(SourceKind::Cookie(name)) if from.alone => {
                let headers = req.headers_mut();
                let rewritten = headers.get(COOKIE).map(|v| without_cookie(v, name));
                match rewritten {
                    Some(Some(rest)) => {
                        headers.insert(COOKIE, rest);
                    }
                    Some(None) => {
                        headers.remove(COOKIE);
                    }
                    None => {}
                }
            }
            Some(SourceKind::Cookie(name)) => {
                remove_values(req.headers_mut(), COOKIE, |v| without_cookie(v, name));
            }
            None => {}
        }
    }
}

/// Replaces every value of header `name` with what `keep` makes of it
/// (`None`: dropped); the header goes when no value is kept. For a header
/// of several lines (rare but for cookies over HTTP/2): one lookup, the
/// lines kept collected once.
fn remove_values(
    headers: &mut HeaderMap,
    name: http::HeaderName,
    keep: impl Fn(&HeaderValue) -> Option<HeaderValue>,
) {
    let Entry::Occupied(entry) = headers.entry(name) else {
        return;
    };
    let mut kept = Vec::new();
    let (name, values) = entry.remove_entry_mult();
    kept.extend(values.filter_map(|v| keep(&v)));
    for value in kept {
        headers.append(&name, value);
    }
}

/// A `Cookie` value without the cookie `name` (`None` when nothing is
/// left); the other pairs as sent, joined by `"; "`. The value itself when
/// it has no such cookie; otherwise one allocation.
fn without_cookie(value: &HeaderValue, name: &str) -> Option<HeaderValue> {
    let named = |raw: &[u8]| {
        cookie_pairs(raw)
            .next()
            .is_some_and(|c| c.name == name.as_bytes())
    };
    if !cookie_pairs(value.as_bytes()).any(|c| c.name == name.as_bytes()) {
        return Some(value.clone());
    }
    let mut rest = Vec::with_capacity(value.len());
    for raw in value.as_bytes().split(|&b| b == b';') {
        let pair = raw.trim_ascii();
        if pair.is_empty() || named(pair) {
            continue;
        }
        if !rest.is_empty() {
            rest.extend_from_slice(b"; ");
        }
        rest.extend_from_slice(pair);
    }
    if rest.is_empty() {
        return None;
    }
    // Pieces of a valid value, joined by "; ": valid.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(rest)).ok()
}

/// `uri` without any `param=…` in its query (`None`: it has none, nothing
/// to change). Each other pair is kept byte for byte, in order; the query
/// goes when nothing is left of it. One allocation, the new path and query.
fn without_param(uri: &Uri, param: &str) -> Option<Uri> {
    let query = uri.query()?;
    let named = |pair: &str| {
        form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(name, _)| name == param)
    };
    if !query.split('&').any(named) {
        return None;
    }
    let path = uri.path();
    let mut path_and_query = String::with_capacity(path.len() + 1 + query.len());
    path_and_query.push_str(path);
    let mut first = true;
    for pair in query.split('&').filter(|pair| !named(pair)) {
        path_and_query.push(if first { '?' } else { '&' });
        path_and_query.push_str(pair);
        first = false;
    }
    let mut parts = uri.clone().into_parts();
    // Pieces of a valid URI, rejoined: valid. Were it not, the path alone
    // (never the key).
    parts.path_and_query = Some(
        PathAndQuery::try_from(path_and_query).unwrap_or_else(|_| PathAndQuery::from_static("/")),
    );
    Some(Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;
    use http::Request;

    fn hide(source: &KeySource, req: &mut Request<()>) {
        let from = {
            let head = super::super::RequestHead::of(req);
            source.find(&head).unwrap().map(|f| f.from)
        };
        if let Some(from) = from {
            source.hide(req, from);
        }
    }

    #[test]
    fn bearer_values_go_and_other_schemes_stay() {
        let source = KeySource::bearer();
        let mut req = Request::new(());
        req.headers_mut().append(
            AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        req.headers_mut()
            .append(AUTHORIZATION, HeaderValue::from_static("bearer sk_1"));
        req.headers_mut()
            .append("x-other", HeaderValue::from_static("kept"));
        hide(&source, &mut req);
        let left: Vec<_> = req.headers().get_all(AUTHORIZATION).iter().collect();
        assert_eq!(left, ["Basic dXNlcjpwYXNz"]);
        assert_eq!(req.headers()["x-other"], "kept");
        let mut only = Request::new(());
        only.headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk_1"));
        hide(&source, &mut only);
        assert!(only.headers().get(AUTHORIZATION).is_none());
    }

    #[test]
    fn a_named_header_goes() {
        let name = HeaderName::from_static("x-api-key");
        let source = KeySource::header(name.clone()).or_bearer();
        let mut req = Request::new(());
        req.headers_mut()
            .insert(&name, HeaderValue::from_static("sk_1"));
        req.headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_static("Basic x"));
        hide(&source, &mut req);
        assert!(req.headers().get(&name).is_none());
        assert_eq!(req.headers()[AUTHORIZATION], "Basic x");
    }

    #[test]
    fn the_query_parameter_goes_and_the_rest_stays_as_sent() {
        let source = KeySource::query("api_key");
        for (uri, left) in [
            ("/x?api_key=sk_1", "/x"),
            ("/x?a=1&api_key=sk_1&b=%20two+3", "/x?a=1&b=%20two+3"),
            ("/x?api%5Fkey=sk_1&a=1", "/x?a=1"),
            ("/x?a=1&&api_key=sk_1", "/x?a=1&"),
            (
                "http://h.example/x?q=%E2%9C%93&api_key=k",
                "http://h.example/x?q=%E2%9C%93",
            ),
        ] {
            let mut req = Request::get(uri).body(()).unwrap();
            hide(&source, &mut req);
            assert_eq!(req.uri().to_string(), left, "{uri}");
        }
        assert_eq!(
            without_param(&Uri::from_static("/x?a=1"), "api_key"),
            None,
            "nothing to change"
        );
    }

    #[test]
    fn the_cookie_goes_and_the_others_stay() {
        let source = KeySource::cookie("api_key");
        let mut req = Request::new(());
        req.headers_mut().append(
            COOKIE,
            HeaderValue::from_static("theme=dark; api_key=\"sk_1\"; lang=en"),
        );
        req.headers_mut()
            .append(COOKIE, HeaderValue::from_static("session=abc"));
        hide(&source, &mut req);
        let left: Vec<_> = req.headers().get_all(COOKIE).iter().collect();
        assert_eq!(left, ["theme=dark; lang=en", "session=abc"]);
        let mut alone = Request::new(());
        alone
            .headers_mut()
            .insert(COOKIE, HeaderValue::from_static("api_key=sk_1"));
        hide(&source, &mut alone);
        assert!(alone.headers().get(COOKIE).is_none());
    }
}
