//! The layer's per-route setters: policy, scopes, cache bypass, cost. Each
//! takes a [`Route`]: a template, or a method and a template.

use http::Method;

use super::ApiKeyAuthLayer;
use crate::cache::KeyCache;
use crate::policy::{InvalidRoute, Route, RoutePolicy, RouteTable};
use crate::Scopes;

impl<C: KeyCache, L> ApiKeyAuthLayer<C, L> {
    /// Applies a route rule, panicking on a bad template as axum's
    /// `Router::route` does.
    fn with_route(
        mut self,
        rule: impl FnOnce(&mut RouteTable) -> Result<(), InvalidRoute>,
    ) -> Self {
        if let Err(e) = rule(&mut self.config_mut().routes) {
            panic!("{e}");
        }
        self
    }

    /// Sets the route's policy, for every method. `template` is the route as
    /// given to axum's `Router::route` (`/v1/keys/{id}`); see
    /// [`RoutePolicy`] for how requests are matched.
    ///
    /// # Panics
    ///
    /// When `template` is not a route template (it must start with `/`;
    /// parameters are whole segments, `{name}` or a final `{*name}`), like
    /// axum's `Router::route`.
    pub fn route_policy(self, route: impl Into<Route>, policy: RoutePolicy) -> Self {
        self.with_route(|routes| routes.set_policy(route.into(), policy))
    }

    /// Sets the route's policy for one method (`GET` rules cover `HEAD`
    /// too). A method rule overrides the route's any-method rule.
    ///
    /// # Panics
    ///
    /// As [`route_policy`](Self::route_policy).
    pub fn method_policy(self, method: Method, template: &str, policy: RoutePolicy) -> Self {
        self.route_policy((method, template), policy)
    }

    /// Shorthand for `route_policy(template, RoutePolicy::Public)`.
    pub fn public(self, route: impl Into<Route>) -> Self {
        self.route_policy(route, RoutePolicy::Public)
    }

    /// Shorthand for `route_policy(template, RoutePolicy::Optional)`.
    pub fn optional(self, route: impl Into<Route>) -> Self {
        self.route_policy(route, RoutePolicy::Optional)
    }

    /// Requires `scopes` of every key on this route (a [`Route`]: a
    /// template, or a method and a template): a key whose
    /// [`has_scope`](crate::Principal::has_scope) doesn't satisfy the rule
    /// is answered `403 insufficient_scope` with an RFC 6750 challenge
    /// naming a `scope` that would pass, before any rate-limit counter is
    /// touched; counted in [`Stats::forbidden_scope`]. On an
    /// [`optional`](Self::optional) route a key that is presented is held to
    /// it too (an anonymous request passes); a [`public`](Self::public)
    /// route checks nothing.
    ///
    /// Routes are matched as [`RoutePolicy`] says, the most specific
    /// template deciding; a path that can't be matched with certainty (no
    /// `MatchedPath`, and not in canonical form: `//v1/keys`, `/v1/keys/`,
    /// `/v1/%6Beys`) must satisfy every requirement of the layer at once, so
    /// no spelling dodges one. The rule is made once, here; the check on a
    /// request allocates nothing.
    ///
    /// ```
    /// use http::Method;
    /// use tower_api_key::Scopes;
    /// # use tower_api_key::{cache::MemoryCache, lookup_fn, ApiKeyAuthLayer, BoxError, KeyHash, Principal};
    /// # #[derive(Clone)] struct Client;
    /// # impl Principal for Client {}
    /// # let lookup = lookup_fn(|_: KeyHash| async { Ok::<Option<Client>, BoxError>(None) });
    ///
    /// let auth = ApiKeyAuthLayer::new(MemoryCache::new(), lookup)
    ///     .require_scopes("/v1/keys", Scopes::one("admin"))
    ///     .require_scopes((Method::GET, "/v1/keys"), Scopes::any(["keys:read", "admin"]))
    ///     .require_scopes("/v1/reports/{id}", "reports:read AND (billing OR admin)".parse()?);
    /// # Ok::<(), tower_api_key::InvalidScopes>(())
    /// ```
    ///
    /// # Panics
    ///
    /// As [`route_policy`](Self::route_policy), and when a scope is not an
    /// RFC 6749 scope token (visible ASCII but `"` and `\`) or a set is
    /// empty.
    ///
    /// [`Stats::forbidden_scope`]: crate::Stats::forbidden_scope
    pub fn require_scopes(self, route: impl Into<Route>, scopes: Scopes) -> Self {
        if let Err(e) = scopes.validate() {
            panic!("{e}");
        }
        self.with_route(|routes| routes.set_scopes(route.into(), scopes))
    }

    /// On this route, every request with a key asks the lookup instead of
    /// trusting the cache (its answer still refreshes the cache). For routes
    /// where a verdict up to one TTL old is too old: changing keys, moving
    /// money.
    ///
    /// # Panics
    ///
    /// As [`route_policy`](Self::route_policy).
    pub fn bypass_cache(self, route: impl Into<Route>) -> Self {
        self.with_route(|routes| routes.set_bypass(route.into()))
    }

    /// [`bypass_cache`](Self::bypass_cache) for one method of the route.
    ///
    /// # Panics
    ///
    /// As [`route_policy`](Self::route_policy).
    pub fn method_bypass_cache(self, method: Method, template: &str) -> Self {
        self.bypass_cache((method, template))
    }

    /// What a request on this route costs against its key's rate limits
    /// (default 1; 0 exempts the route), for every method. Routes are matched
    /// as [`route_policy`](Self::route_policy) matches them.
    ///
    /// # Panics
    ///
    /// As [`route_policy`](Self::route_policy).
    pub fn route_cost(self, route: impl Into<Route>, cost: u64) -> Self {
        self.with_route(|routes| routes.set_cost(route.into(), cost))
    }

    /// [`route_cost`](Self::route_cost) for one method of the route.
    ///
    /// # Panics
    ///
    /// As [`route_policy`](Self::route_policy).
    pub fn method_route_cost(self, method: Method, template: &str, cost: u64) -> Self {
        self.route_cost((method, template), cost)
    }

    /// Shorthand for `route_cost(template, 0)`: requests on this route never
    /// touch a counter.
    pub fn exempt_from_rate_limits(self, route: impl Into<Route>) -> Self {
        self.route_cost(route, 0)
    }
}
