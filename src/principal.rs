//! [`Principal`]: what your key store answers for a valid key.

use std::borrow::Cow;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::RateLimit;

/// What the layer knows about a principal, the value your lookup returns for
/// a valid key (a client, an account, a service identity).
///
/// Every method is optional. A key that expires says when: the cache never
/// keeps it past that instant (its positive TTL is capped), and a cached
/// principal whose expiry has passed is rejected even before the cache drops
/// it. A key that belongs to an owner (a tenant, an organisation) says which,
/// so that [`invalidate_owner`](crate::ApiKeyAuthLayer::invalidate_owner)
/// can drop all of that owner's keys at once. A key with rate limits says
/// which ([`rate_limits`](Self::rate_limits)). A key's permissions are its
/// [`has_scope`](Self::has_scope), checked against what a route requires
/// ([`Scopes`](crate::Scopes)); a key that may only be used from some
/// networks lists them ([`allowed_networks`](Self::allowed_networks)).
///
/// ```
/// use std::borrow::Cow;
/// use std::time::SystemTime;
/// use tower_api_key::Principal;
///
/// struct Client { id: u64, org: String, expires_at: Option<SystemTime> }
///
/// impl Principal for Client {
///     fn expires_at(&self) -> Option<SystemTime> {
///         self.expires_at
///     }
///
///     fn owner(&self) -> Option<Cow<'_, str>> {
///         Some(Cow::Borrowed(&self.org))
///     }
/// }
/// # let c = Client { id: 1, org: "acme".into(), expires_at: None };
/// # assert_eq!(c.owner().as_deref(), Some("acme"));
/// # let _ = c.id;
/// ```
pub trait Principal: Send + Sync + 'static {
    /// When the key stops being valid, if it ever does.
    fn expires_at(&self) -> Option<SystemTime> {
        None
    }

    /// Who owns the key (a tenant, an organisation, a user), if anyone:
    /// [`KeyCache::invalidate_owner`](crate::cache::KeyCache::invalidate_owner)
    /// drops every cached key of one owner at once.
    fn owner(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// The key's rate-limit policies, when the layer has a
    /// [`RateLimiter`](crate::ratelimit::RateLimiter): `None` (the default)
    /// for the limiter's default policies, `Some(&[])` for none at all (an
    /// admin key), `Some(limits)` for the key's own.
    ///
    /// ```
    /// use tower_api_key::{Principal, RateLimit};
    ///
    /// struct Client { limits: Option<Vec<RateLimit>> }
    ///
    /// impl Principal for Client {
    ///     fn rate_limits(&self) -> Option<&[RateLimit]> {
    ///         self.limits.as_deref()
    ///     }
    /// }
    /// # let _ = Client { limits: Some(vec![RateLimit::per_second(10), RateLimit::per_day(10_000)]) }.rate_limits();
    /// ```
    fn rate_limits(&self) -> Option<&[RateLimit]> {
        None
    }

    /// Whether the key carries `scope` (a permission: `admin`,
    /// `keys:write`). Routes that [require scopes](crate::ApiKeyAuthLayer::require_scopes)
    /// ask it, once per scope their rule names, until the answer is known;
    /// the default, `false`, carries none (such a key passes only routes
    /// that require nothing). Make it cheap, it is on every request to such
    /// a route: a slice of a few scopes, a set, or bits.
    ///
    /// ```
    /// use tower_api_key::Principal;
    ///
    /// struct Client { scopes: Vec<String> }
    ///
    /// impl Principal for Client {
    ///     fn has_scope(&self, scope: &str) -> bool {
    ///         self.scopes.iter().any(|s| s == scope)
    ///     }
    /// }
    /// # assert!(Client { scopes: vec!["admin".into()] }.has_scope("admin"));
    /// ```
    fn has_scope(&self, scope: &str) -> bool {
        let _ = scope;
        false
    }

    /// The networks the key may be used from (IPv4 and IPv6 CIDRs), if it
    /// is restricted: `None` (the default) for anywhere, `Some(networks)`
    /// for only those (`Some(&[])`: nowhere). The client's address is the
    /// connection's peer, or behind your proxies what they forwarded (see
    /// [`ClientAddress`](crate::ClientAddress)); a request from outside, or
    /// whose address can't be known, is refused `403 address_not_allowed`.
    ///
    /// ```
    /// use tower_api_key::{IpNet, Principal};
    ///
    /// struct Client { networks: Option<Vec<IpNet>> }
    ///
    /// impl Principal for Client {
    ///     fn allowed_networks(&self) -> Option<&[IpNet]> {
    ///         self.networks.as_deref()
    ///     }
    /// }
    /// # let c = Client { networks: Some(vec!["10.0.0.0/8".parse().unwrap()]) };
    /// # assert_eq!(c.allowed_networks().map(<[_]>::len), Some(1));
    /// ```
    fn allowed_networks(&self) -> Option<&[IpNet]> {
        None
    }

    /// Whether the key's limits count for its whole
    /// [`owner`](Self::owner) (an organisation-wide quota, shared by all its
    /// keys) rather than for the key alone. Default `false`; a key without
    /// an owner counts alone either way. Every key of an owner should then
    /// report the same policies: the owner's counts are kept per policy, and
    /// a request with other policies starts those afresh (and, in memory,
    /// drops the counts of policies it doesn't have).
    fn limits_per_owner(&self) -> bool {
        false
    }
}
