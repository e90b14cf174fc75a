//! [`RoutePolicy`], [`Route`] and the route table: which routes need a key,
//! which take one optionally, which are public, which always ask the
//! lookup, what a request costs, and which scopes a key needs.

mod path;

use std::sync::Arc;

use http::{Method, Request};

pub(crate) use self::path::is_canonical;
#[cfg(feature = "axum")]
use self::path::same_shape;
use self::path::{matches_path, parse_template, Segment};
use crate::scope::{Requirement, Scopes};

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

/// A route as the layer's per-route rules name it: a template, exactly as
/// given to axum's `Router::route` (`/v1/keys/{id}`, with any `nest`
/// prefix), for every method or for one (a `GET` rule covers `HEAD`).
/// Matched as [`RoutePolicy`] says.
///
/// A `&str` is the template for every method, a `(Method, &str)` pair the
/// template for one:
///
/// ```
/// use http::Method;
/// use tower_api_key::{Route, Scopes};
/// # use tower_api_key::{cache::MemoryCache, lookup_fn, ApiKeyAuthLayer, BoxError, KeyHash, Principal};
/// # #[derive(Clone)] struct Client;
/// # impl Principal for Client {}
/// # let lookup = lookup_fn(|_: KeyHash| async { Ok::<Option<Client>, BoxError>(None) });
///
/// let auth = ApiKeyAuthLayer::new(MemoryCache::new(), lookup)
///     .require_scopes("/v1/reports", Scopes::any(["reports:read", "admin"]))
///     .require_scopes((Method::POST, "/v1/keys"), Scopes::one("admin"))
///     .require_scopes(Route::new("/v1/keys/{id}").method(Method::DELETE), Scopes::one("admin"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    method: Option<Method>,
    template: String,
}

impl Route {
    /// The route `template`, for every method.
    pub fn new(template: impl Into<String>) -> Self {
        Self {
            method: None,
            template: template.into(),
        }
    }

    /// For `method` only.
    #[must_use]
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }
}

impl From<&str> for Route {
    fn from(template: &str) -> Self {
        Self::new(template)
    }
}

impl From<String> for Route {
    fn from(template: String) -> Self {
        Self::new(template)
    }
}

impl From<(Method, &str)> for Route {
    fn from((method, template): (Method, &str)) -> Self {
        Self::new(template).method(method)
    }
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
    /// The scopes a key needs: an index into the table's requirements.
    scopes: Option<u32>,
}

/// What applies to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) policy: RoutePolicy,
    pub(crate) bypass_cache: bool,
    /// Rate-limit units the request costs (1 unless a rule says; 0: exempt).
    pub(crate) cost: u64,
    /// The scopes a key needs, if any ([`RouteTable::requirement`]).
    pub(crate) scopes: Option<u32>,
}

impl Resolved {
    const DEFAULT: Self = Self {
        policy: RoutePolicy::Required,
        bypass_cache: false,
        cost: 1,
        scopes: None,
    };
}

/// The per-route rules of a layer.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteTable {
    rules: Vec<Rule>,
    /// Every scope requirement, made once; rules point into it.
    requirements: Vec<Arc<Requirement>>,
    /// For a path that can't be matched with certainty (not canonical, no
    /// `MatchedPath`): every requirement of the table at once.
    every: Option<u32>,
}

/// A route template the layer can't use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid route template {template:?}: {reason}")]
pub struct InvalidRoute {
    template: String,
    reason: &'static str,
}

impl RouteTable {
    fn rule_mut(&mut self, route: Route) -> Result<&mut Rule, InvalidRoute> {
        let Route { method, template } = route;
        let segments = parse_template(&template).map_err(|reason| InvalidRoute {
            template: template.clone(),
            reason,
        })?;
        let pos = self
            .rules
            .iter()
            .position(|r| r.method == method && r.template == template);
        let idx = match pos {
            Some(i) => i,
            None => {
                let literal = is_canonical(&template)
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
                    template,
                    segments,
                    literal,
                    specificity,
                    policy: None,
                    bypass_cache: false,
                    cost: None,
                    scopes: None,
                });
                self.rules.len() - 1
            }
        };
        Ok(&mut self.rules[idx])
    }

    pub(crate) fn set_policy(
        &mut self,
        route: Route,
        policy: RoutePolicy,
    ) -> Result<(), InvalidRoute> {
        self.rule_mut(route)?.policy = Some(policy);
        Ok(())
    }

    pub(crate) fn set_bypass(&mut self, route: Route) -> Result<(), InvalidRoute> {
        self.rule_mut(route)?.bypass_cache = true;
        Ok(())
    }

    pub(crate) fn set_cost(&mut self, route: Route, cost: u64) -> Result<(), InvalidRoute> {
        self.rule_mut(route)?.cost = Some(cost);
        Ok(())
    }

    /// The route requires `scopes` (replacing what it required before).
    pub(crate) fn set_scopes(&mut self, route: Route, scopes: Scopes) -> Result<(), InvalidRoute> {
        let index = self.push_requirement(scopes);
        self.rule_mut(route)?.scopes = Some(index);
        // Remade with the new rule in it; the old one (and an old `every`)
        // stays unused in the list, which is only built at start.
        let all = self.rules.iter().filter_map(|r| r.scopes);
        let every = Scopes::all(
            all.map(|i| self.requirements[i as usize].scopes.clone())
                .collect::<Vec<_>>(),
        );
        // Its answer says nothing of the rules: it would list every route's.
        self.requirements.push(Requirement::undisclosed(every));
        self.every = Some(self.last_requirement());
        Ok(())
    }

    fn push_requirement(&mut self, scopes: Scopes) -> u32 {
        self.requirements.push(Requirement::new(scopes));
        self.last_requirement()
    }

    fn last_requirement(&self) -> u32 {
        u32::try_from(self.requirements.len() - 1).unwrap_or(u32::MAX)
    }

    /// The requirement a [`Resolved`] names.
    pub(crate) fn requirement(&self, index: u32) -> &Arc<Requirement> {
        &self.requirements[index as usize]
    }

    pub(crate) fn resolve<B>(&self, req: &Request<B>) -> Resolved {
        if self.rules.is_empty() {
            return Resolved::DEFAULT;
        }
        let path = req.uri().path();
        // Behind axum: the rules of the route it matched (parameter names
        // aside), and literal rules naming this very path. When none names
        // it (the layer inside a `route_service` or a nested router, whose
        // template is the outer one), the path decides, as on a plain stack.
        #[cfg(feature = "axum")]
        if let Some(matched) = req.extensions().get::<axum::extract::MatchedPath>() {
            let template = matched.as_str();
            let (resolved, matched) = self.resolve_with(req.method(), |rule| {
                rule.template == template
                    || (rule.literal && path == rule.template)
                    || (!rule.literal && same_shape(&rule.segments, template))
            });
            if matched {
                return resolved;
            }
        }
        // Checked once, and only if a rule with parameters (or a scope
        // requirement) needs it.
        let canonical = std::cell::OnceCell::new();
        let canonical = || *canonical.get_or_init(|| is_canonical(path));
        let (mut resolved, _) = self.resolve_with(req.method(), |rule| {
            if rule.literal {
                path == rule.template
            } else {
                canonical() && matches_path(&rule.segments, path)
            }
        });
        // A path that a router could read as another route needs what
        // every route needs: a requirement is never dodged by a spelling.
        // (A rule that matched says the path is canonical already: a
        // literal one by equality with a canonical template, another by
        // the check its match needed.)
        if self.every.is_some() && resolved.scopes.is_none() && !canonical() {
            resolved.scopes = self.every;
        }
        resolved
    }

    /// One pass over the rules that apply: for each setting, the most
    /// specific template that says something decides, and on it a method
    /// rule overrides the any-method rule. A rule that requires scopes and
    /// names no policy is `Required`: a looser policy of a broader template
    /// never switches its requirement off (on its own template, a policy
    /// said outright decides). Also says whether any rule applied.
    fn resolve_with(&self, method: &Method, matches: impl Fn(&Rule) -> bool) -> (Resolved, bool) {
        let applies = |rule: &Rule| match &rule.method {
            None => true,
            Some(m) => m == method || (method == Method::HEAD && m == Method::GET),
        };
        let better = |best: Option<&Rule>, r: &Rule| match best {
            None => true,
            Some(b) => {
                r.specificity > b.specificity
                    || (r.template == b.template && r.method.is_some() && b.method.is_none())
            }
        };
        let said = |r: &Rule| r.policy.is_some();
        let better_policy = |best: Option<&Rule>, r: &Rule| match best {
            None => true,
            Some(b) => {
                r.specificity > b.specificity
                    || (r.template == b.template
                        && ((said(r) && !said(b))
                            || (said(r) == said(b) && r.method.is_some() && b.method.is_none())))
            }
        };
        let (mut policy, mut cost, mut scopes) = (None::<&Rule>, None::<&Rule>, None::<&Rule>);
        let mut bypass_cache = false;
        let mut any = false;
        for rule in self.rules.iter().filter(|r| applies(r) && matches(r)) {
            any = true;
            if (rule.policy.is_some() || rule.scopes.is_some()) && better_policy(policy, rule) {
                policy = Some(rule);
            }
            if rule.cost.is_some() && better(cost, rule) {
                cost = Some(rule);
            }
            if rule.scopes.is_some() && better(scopes, rule) {
                scopes = Some(rule);
            }
            // Bypass is the stricter choice: any matching rule asking for
            // it wins.
            bypass_cache |= rule.bypass_cache;
        }
        let resolved = Resolved {
            policy: policy.and_then(|r| r.policy).unwrap_or_default(),
            bypass_cache,
            cost: cost.and_then(|r| r.cost).unwrap_or(1),
            scopes: scopes.and_then(|r| r.scopes),
        };
        (resolved, any)
    }
}

#[cfg(test)]
mod tests;
