//! Internal (feature `__fuzz`): the crate's parsers, for the fuzz targets in
//! `fuzz/` and the property tests in `tests/properties.rs`. Not a public
//! API: anything here may change or go in any release.
//!
//! Thin wrappers only: each calls the code the request path calls.

use http::{Method, Request};

use crate::policy::RouteTable;
use crate::source::RequestHead;
use crate::{KeySource, MalformedKey, RoutePolicy};

/// The credential `source` reads from `req`, as the layer reads it
/// (`Ok(None)`: none).
pub fn extract_key<B>(
    source: &KeySource,
    req: &Request<B>,
) -> Result<Option<Vec<u8>>, MalformedKey> {
    source
        .extract(&RequestHead::of(req))
        .map(|key| key.map(|k| k.into_owned()))
}

/// Whether a request path is canonical (only a canonical path can match a
/// rule that relaxes authentication).
pub fn is_canonical(path: &str) -> bool {
    crate::policy::is_canonical(path)
}

/// A route table, as the layer's `public` / `optional` / `route_policy` /
/// `method_policy` build it.
#[derive(Clone, Debug, Default)]
pub struct Routes(RouteTable);

impl Routes {
    /// An empty table: every route `Required`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The policy of `template` (for `method` only, when given).
    pub fn set_policy(
        &mut self,
        method: Option<Method>,
        template: &str,
        policy: RoutePolicy,
    ) -> Result<(), crate::InvalidRoute> {
        let route = match method {
            Some(method) => crate::Route::from((method, template)),
            None => crate::Route::from(template),
        };
        self.0.set_policy(route, policy)
    }

    /// The policy that applies to `req` (by its path: no `MatchedPath`).
    pub fn resolve<B>(&self, req: &Request<B>) -> RoutePolicy {
        self.0.resolve(req).policy
    }
}

#[cfg(feature = "redis")]
pub use self::redis::*;

#[cfg(feature = "redis")]
mod redis {
    use std::time::Duration;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use crate::cache::redis::{codec, seal};
    use crate::cache::{CacheError, Ttl, Verdict};

    /// What a decoded entry is at some instant.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Freshness {
        /// A hit.
        Fresh,
        /// A hit in its refresh window.
        Aging,
        /// Past its fresh time (a miss that carries the principal).
        Stale,
    }

    /// The envelope a `RedisCache` writes for `verdict`, stored at `now`
    /// (Unix ms) for `ttl`.
    pub fn encode<P: Serialize>(
        verdict: &Verdict<P>,
        ttl: Ttl,
        now: u64,
    ) -> Result<String, CacheError> {
        codec::encode(verdict, ttl, now)
    }

    /// The verdict in a value a `GET` found (`None`: no value), as a
    /// `RedisCache` without a value secret decodes it; `Err(None)` is a
    /// plain miss, `Err(Some(_))` a value that doesn't decode.
    pub fn decode<P: DeserializeOwned>(
        raw: Option<&[u8]>,
    ) -> Result<Verdict<P>, Option<CacheError>> {
        let stored = codec::decode(raw.map(seal::unsealed))?;
        match stored.at(0, None).0 {
            codec::Freshness::Fresh(v) => Ok(v),
            codec::Freshness::Aging(p) | codec::Freshness::Stale(p) => Ok(Verdict::Valid(p)),
            // Past the end the value carries: read as absent.
            codec::Freshness::Gone => Err(None),
        }
    }

    /// A decoded entry at `now` (Unix ms), with `left` of Redis's `PX`:
    /// what it is and what is left of its [`Ttl`].
    pub fn decode_at<P: DeserializeOwned>(
        raw: &[u8],
        now: u64,
        left: Option<Duration>,
    ) -> Result<(Verdict<P>, Freshness, Option<Ttl>), Option<CacheError>> {
        let (freshness, ttl) = codec::decode(Some(raw))?.at(now, left);
        Ok(match freshness {
            codec::Freshness::Fresh(v) => (v, Freshness::Fresh, ttl),
            codec::Freshness::Aging(p) => (Verdict::Valid(p), Freshness::Aging, ttl),
            codec::Freshness::Stale(p) => (Verdict::Valid(p), Freshness::Stale, ttl),
            codec::Freshness::Gone => return Err(None),
        })
    }

    /// A value secret's MAC, as `RedisCacheBuilder::value_secret` sets it.
    #[derive(Clone)]
    pub struct Seal(seal::Seal);

    impl Seal {
        /// The seal of `secret`.
        pub fn new(secret: &[u8]) -> Self {
            Self(seal::Seal::new(secret))
        }

        /// `envelope`, sealed for the Redis key `name`.
        pub fn seal(&self, name: &str, envelope: &str) -> String {
            self.0.seal(name, envelope)
        }

        /// The envelope in `raw`, read under the Redis key `name`, if its
        /// MAC holds.
        pub fn open<'a>(&self, name: &str, raw: &'a [u8]) -> Result<&'a [u8], &'static str> {
            self.0.open(name, raw)
        }
    }

    /// What a cache without a secret reads of a (perhaps sealed) value.
    pub fn unsealed(raw: &[u8]) -> &[u8] {
        seal::unsealed(raw)
    }
}
