//! [`Principal`]: what your key store answers for a valid key.

use std::borrow::Cow;
use std::time::SystemTime;

/// What the layer knows about a principal, the value your lookup returns for
/// a valid key (a client, an account, a service identity).
///
/// Both methods are optional. A key that expires says when: the cache never
/// keeps it past that instant (its positive TTL is capped), and a cached
/// principal whose expiry has passed is rejected even before the cache drops
/// it. A key that belongs to an owner (a tenant, an organisation) says which,
/// so that [`invalidate_owner`](crate::ApiKeyAuthLayer::invalidate_owner)
/// can drop all of that owner's keys at once.
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
}
