//! [`RoutePolicy`] and the route table: which routes need a key, which take
//! one optionally, which are public, and which always ask the lookup.

use http::{Method, Request};

/// How a route treats API keys.
///
/// Routes are named by their template, exactly as given to axum's
/// `Router::route` (`/v1/keys/{id}`, with any `nest` prefix). Behind an axum
/// router the layer matches the request's `MatchedPath`, the template the
/// router itself chose, so what is public is decided by which handler runs,
/// not by how the path is spelled. Without a `MatchedPath` (a plain tower or
/// hyper stack, or axum's fallback) it matches the request path against the
/// templates, and only a *canonical* path can match a rule that relaxes
/// authentication: a path with an empty segment (`//x`), a trailing slash, a
/// dot segment (`/public/../x`), an encoded dot, slash, backslash or percent
/// (`%2e`, `%2f`, `%5c`, `%25`), a `;` parameter or a backslash is always
/// [`RoutePolicy::Required`]; so is any spelling but RFC 3986's normal form,
/// one per byte, that a router which decodes paths could read as another
/// route: an encoded character that needs no encoding (`%61` for `a`,
/// `%21` for `!`), lower-case hex (`%c3`), or a raw character a URI must
/// encode (`{`, `|`). Matching is case-sensitive (`/Health` is not
/// `/health`). There is no prefix matching: a classic bypass.
///
/// When several templates match a path, the most specific decides (literal
/// segments over parameters over a catch-all), as a router would choose;
/// on it, a method rule overrides the any-method rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RoutePolicy {
    /// A valid key is required (the default for every route).
    #[default]
    Required,
    /// A request without a key passes as anonymous; a key that is present
    /// is checked exactly as on a `Required` route (an unknown or malformed
    /// key is rejected, never silently downgraded to anonymous).
    Optional,
    /// No authentication: the layer passes the request through untouched.
    Public,
}

#[derive(Clone, Debug)]
struct Rule {
    method: Option<Method>,
    template: String,
    segments: Vec<Segment>,
    /// No parameters and canonical: a path matches it by string equality,
    /// and a path equal to it is canonical too.
    literal: bool,
    /// Per segment: literal 2, parameter 1, catch-all 0. When several
    /// templates match a path, the greatest (as a router would choose) decides.
    specificity: Vec<u8>,
    policy: Option<RoutePolicy>,
    bypass_cache: bool,
    /// Rate-limit units a request costs (0: exempt).
    cost: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    CatchAll,
}

/// What applies to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) policy: RoutePolicy,
    pub(crate) bypass_cache: bool,
    /// Rate-limit units the request costs (1 unless a rule says; 0: exempt).
    pub(crate) cost: u64,
}

impl Resolved {
    const DEFAULT: Self = Self {
        policy: RoutePolicy::Required,
        bypass_cache: false,
        cost: 1,
    };
}

/// The per-route rules of a layer.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteTable {
    rules: Vec<Rule>,
}

/// A route template the layer can't use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid route template {template:?}: {reason}")]
pub struct InvalidRoute {
    template: String,
    reason: &'static str,
}

fn parse_template(template: &str) -> Result<Vec<Segment>, &'static str> {
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

impl RouteTable {
    fn rule_mut(
        &mut self,
        method: Option<Method>,
        template: &str,
    ) -> Result<&mut Rule, InvalidRoute> {
        let segments = parse_template(template).map_err(|reason| InvalidRoute {
            template: template.to_owned(),
            reason,
        })?;
        let pos = self
            .rules
            .iter()
            .position(|r| r.method == method && r.template == template);
        let idx = match pos {
            Some(i) => i,
            None => {
                let literal = is_canonical(template)
                    && segments.iter().all(|s| matches!(s, Segment::Literal(_)));
                let specificity = segments
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(_) => 2,
                        Segment::Param => 1,
                        Segment::CatchAll => 0,
                    })
                    .collect();
                self.rules.push(Rule {
                    method,
                    template: template.to_owned(),
                    segments,
                    literal,
                    specificity,
                    policy: None,
                    bypass_cache: false,
                    cost: None,
                });
                self.rules.len() - 1
            }
        };
        Ok(&mut self.rules[idx])
    }

    pub(crate) fn set_policy(
        &mut self,
        method: Option<Method>,
        template: &str,
        policy: RoutePolicy,
    ) -> Result<(), InvalidRoute> {
        self.rule_mut(method, template)?.policy = Some(policy);
        Ok(())
    }

    pub(crate) fn set_bypass(
        &mut self,
        method: Option<Method>,
        template: &str,
    ) -> Result<(), InvalidRoute> {
        self.rule_mut(method, template)?.bypass_cache = true;
        Ok(())
    }

    pub(crate) fn set_cost(
        &mut self,
        method: Option<Method>,
        template: &str,
        cost: u64,
    ) -> Result<(), InvalidRoute> {
        self.rule_mut(method, template)?.cost = Some(cost);
        Ok(())
    }

    pub(crate) fn resolve<B>(&self, req: &Request<B>) -> Resolved {
        if self.rules.is_empty() {
            return Resolved::DEFAULT;
        }
        #[cfg(feature = "axum")]
        if let Some(matched) = req.extensions().get::<axum::extract::MatchedPath>() {
            let template = matched.as_str();
            return self.resolve_with(req.method(), |rule| rule.template == template);
        }
        let path = req.uri().path();
        // Checked once, and only if a rule with parameters needs it.
        let canonical = std::cell::OnceCell::new();
        self.resolve_with(req.method(), |rule| {
            if rule.literal {
                path == rule.template
            } else {
                *canonical.get_or_init(|| is_canonical(path)) && matches_path(&rule.segments, path)
            }
        })
    }

    fn resolve_with(&self, method: &Method, matches: impl Fn(&Rule) -> bool) -> Resolved {
        let applies = |rule: &Rule| match &rule.method {
            None => true,
            Some(m) => m == method || (method == Method::HEAD && m == Method::GET),
        };
        let matching = || self.rules.iter().filter(|r| applies(r) && matches(r));
        // The most specific template that says something decides; on it, a
        // method rule overrides the any-method rule.
        let decide = |says: &dyn Fn(&Rule) -> bool| {
            let best =
                matching()
                    .filter(|r| says(r))
                    .fold(None::<&Rule>, |best, r| match best {
                        Some(b) if r.specificity <= b.specificity => Some(b),
                        _ => Some(r),
                    })?;
            let on_template = |with_method: bool| {
                self.rules.iter().find(|r| {
                    r.template == best.template
                        && r.method.is_some() == with_method
                        && says(r)
                        && applies(r)
                })
            };
            on_template(true).or_else(|| on_template(false))
        };
        Resolved {
            policy: decide(&|r| r.policy.is_some())
                .and_then(|r| r.policy)
                .unwrap_or_default(),
            // Bypass is the stricter choice: any matching rule asking for it
            // wins.
            bypass_cache: matching().any(|r| r.bypass_cache),
            cost: decide(&|r| r.cost.is_some())
                .and_then(|r| r.cost)
                .unwrap_or(1),
        }
    }
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
    // upper-case hex (`%C3`, not `%c3`).
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                return false;
            };
            if !is_upper_hex(h) || !is_upper_hex(l) {
                return false;
            }
            let decoded = (hex(h) << 4) | hex(l);
            // '\\', '%', ';' and NUL change meaning once decoded ('.' and
            // '/' are plain).
            if is_plain(decoded) || matches!(decoded, b'\\' | b'%' | b';' | 0) {
                return false;
            }
            i += 3;
        } else if is_plain(bytes[i]) {
            i += 1;
        } else {
            // ';', '\\', and what a URI must encode ('{', '|', non-ASCII...).
            return false;
        }
    }
    path[1..]
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// What a canonical path writes unencoded: `/` and RFC 3986's `pchar`
/// (unreserved, sub-delims, `:`, `@`) but `;`.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,=:@".contains(&b)
}

fn is_upper_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'A'..=b'F').contains(&c)
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'A' + 10,
    }
}

fn matches_path(segments: &[Segment], path: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.set_policy(None, "/health", RoutePolicy::Public).unwrap();
        t.set_policy(None, "/public/{*rest}", RoutePolicy::Public)
            .unwrap();
        t.set_policy(None, "/docs/{page}", RoutePolicy::Optional)
            .unwrap();
        t.set_policy(Some(Method::GET), "/v1/keys", RoutePolicy::Public)
            .unwrap();
        t.set_bypass(None, "/v1/keys").unwrap();
        t
    }

    fn resolve(t: &RouteTable, method: Method, path: &str) -> Resolved {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        t.resolve(&req)
    }

    #[test]
    fn templates_match_canonical_paths() {
        let t = table();
        let p = |path| resolve(&t, Method::GET, path).policy;
        assert_eq!(p("/health"), RoutePolicy::Public);
        assert_eq!(p("/health?x=1"), RoutePolicy::Public);
        assert_eq!(p("/public/a/b.css"), RoutePolicy::Public);
        assert_eq!(p("/public"), RoutePolicy::Required);
        assert_eq!(p("/docs/intro"), RoutePolicy::Optional);
        assert_eq!(p("/docs/intro/more"), RoutePolicy::Required);
        assert_eq!(p("/docs"), RoutePolicy::Required);
        assert_eq!(p("/other"), RoutePolicy::Required);
        assert_eq!(p("/healthz"), RoutePolicy::Required);
    }

    #[test]
    fn path_tricks_never_relax_the_policy() {
        let t = table();
        for path in [
            "//health",
            "/health/",
            "/Health",
            "/HEALTH",
            "/health;x=1",
            "/health%3b",
            "/public/../v1/secret",
            "/public/./x",
            "/public/%2e%2e/v1/secret",
            "/public/%2E%2E/v1/secret",
            "/public%2fx",
            "/public/a%2F..%2Fb",
            "/public/a%5c..",
            "/public/a%252e",
            "/public//x",
            "/public/x\\..\\y",
            "/docs/a%00",
            "/docs/%zz",
            // One spelling per byte (found by the `route_path` fuzz target).
            "/public/%61dmin",
            "/public/a%21b",
            "/public/caf%c3%a9",
            "/public/{x}",
            "/public/a|b",
            "/docs/%69ntro",
        ] {
            assert_eq!(
                resolve(&t, Method::GET, path).policy,
                RoutePolicy::Required,
                "{path}"
            );
        }
    }

    #[test]
    fn another_spelling_never_reaches_a_looser_rule() {
        // Found by the `route_path` fuzz target: a decoding router reads
        // `/users/%6De` as `/users/me`, which is Required, while the path
        // matched `/users/{id}`, which is Public. Each path here had a
        // looser policy than the path a router reads it as.
        let mut t = RouteTable::default();
        t.set_policy(None, "/users/{id}", RoutePolicy::Public)
            .unwrap();
        t.set_policy(None, "/users/me", RoutePolicy::Required)
            .unwrap();
        t.set_policy(None, "/x/{p}", RoutePolicy::Public).unwrap();
        t.set_policy(None, "/x/%7B", RoutePolicy::Required).unwrap();
        t.set_policy(None, "/x/a!b", RoutePolicy::Required).unwrap();
        t.set_policy(None, "/x/caf%C3%A9", RoutePolicy::Required)
            .unwrap();
        let p = |path| resolve(&t, Method::GET, path).policy;
        for path in [
            "/users/%6De",
            "/users/m%65",
            "/x/{",
            "/x/a%21b",
            "/x/caf%c3%a9",
        ] {
            assert_eq!(p(path), RoutePolicy::Required, "{path}");
        }
        // The one spelling still matches, a rule and its parameters.
        assert_eq!(p("/users/42"), RoutePolicy::Public);
        assert_eq!(p("/x/%7B"), RoutePolicy::Required);
        assert_eq!(p("/x/caf%C3%A9"), RoutePolicy::Required);
        assert_eq!(p("/x/%C3%A9t%C3%A9"), RoutePolicy::Public);
        assert_eq!(p("/x/a%20b"), RoutePolicy::Public);
        assert_eq!(p("/x/it's(1)+2,3:4@5=6*7$8&9~_-."), RoutePolicy::Public);
    }

    #[test]
    fn method_rules_override_any_method_rules() {
        let t = table();
        let get = resolve(&t, Method::GET, "/v1/keys");
        assert_eq!(get.policy, RoutePolicy::Public);
        assert!(get.bypass_cache);
        assert_eq!(
            resolve(&t, Method::HEAD, "/v1/keys").policy,
            RoutePolicy::Public
        );
        let post = resolve(&t, Method::POST, "/v1/keys");
        assert_eq!(post.policy, RoutePolicy::Required);
        assert!(post.bypass_cache);
    }

    #[test]
    fn the_most_specific_template_decides_whatever_the_order() {
        let mut t = RouteTable::default();
        t.set_policy(Some(Method::GET), "/users/{id}", RoutePolicy::Public)
            .unwrap();
        t.set_policy(None, "/users/me", RoutePolicy::Required)
            .unwrap();
        t.set_policy(None, "/files/{*path}", RoutePolicy::Public)
            .unwrap();
        t.set_policy(None, "/files/private/{name}", RoutePolicy::Required)
            .unwrap();
        t.set_policy(None, "/docs/{page}", RoutePolicy::Optional)
            .unwrap();
        t.set_policy(None, "/docs/{*rest}", RoutePolicy::Public)
            .unwrap();
        let p = |path| resolve(&t, Method::GET, path).policy;
        assert_eq!(p("/users/me"), RoutePolicy::Required);
        assert_eq!(p("/users/42"), RoutePolicy::Public);
        assert_eq!(
            resolve(&t, Method::POST, "/users/42").policy,
            RoutePolicy::Required
        );
        assert_eq!(p("/files/private/x"), RoutePolicy::Required);
        assert_eq!(p("/files/public/x"), RoutePolicy::Public);
        assert_eq!(p("/docs/intro"), RoutePolicy::Optional);
        assert_eq!(p("/docs/a/b"), RoutePolicy::Public);
    }

    #[test]
    fn costs_follow_the_most_specific_template_and_default_to_one() {
        let mut t = RouteTable::default();
        t.set_cost(None, "/v1/reports/{*rest}", 10).unwrap();
        t.set_cost(None, "/v1/reports/cheap", 2).unwrap();
        t.set_cost(Some(Method::POST), "/v1/reports/cheap", 5)
            .unwrap();
        t.set_cost(None, "/v1/usage", 0).unwrap();
        let c = |m, path| resolve(&t, m, path).cost;
        assert_eq!(c(Method::GET, "/v1/reports/big/one"), 10);
        assert_eq!(c(Method::GET, "/v1/reports/cheap"), 2);
        assert_eq!(c(Method::POST, "/v1/reports/cheap"), 5);
        assert_eq!(c(Method::GET, "/v1/usage"), 0, "exempt");
        assert_eq!(c(Method::GET, "/v1/other"), 1);
        assert_eq!(
            c(Method::GET, "/v1/usage/"),
            1,
            "a path that is not canonical is never exempt"
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        let mut t = RouteTable::default();
        for bad in ["health", "/a/{*rest}/b", "/a/{}", "/a/x{id}", "//a"] {
            assert!(
                t.set_policy(None, bad, RoutePolicy::Public).is_err(),
                "{bad}"
            );
        }
        assert!(t.set_policy(None, "/", RoutePolicy::Public).is_ok());
        assert_eq!(resolve(&t, Method::GET, "/").policy, RoutePolicy::Public);
    }
}
