//! [`Principal`]: what your key store answers for a valid key.

use std::borrow::Cow;
use std::time::SystemTime;

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
/// which ([`rate_limits`](Self::rate_limits)).
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
