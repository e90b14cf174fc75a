//! Redis as the tiered cache's far tier (L2): see `cache/tier.rs`.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::PubsubInterface;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::read::RedisRead;
use super::{RedisCache, RedisCacheBuilder, RedisToken};
use crate::cache::tier::{FarTier, FarTierBuilder, Put};
use crate::cache::{CacheError, Ttl, Verdict};
use crate::{KeyHash, Principal};

impl<P> FarTier for RedisCache<P>
where
    P: Principal + Serialize + DeserializeOwned,
{
    type GetWithTtl = RedisRead<P>;

    fn get_with_ttl(&self, hash: &KeyHash) -> RedisRead<P> {
        self.read(hash, true)
    }

    fn put_checked(
        &self,
        hash: KeyHash,
        token: RedisToken,
        verdict: &Verdict<P>,
        ttl: Ttl,
    ) -> impl Future<Output = Result<Put, CacheError>> + Send {
        RedisCache::put_checked(self, hash, token, verdict, ttl)
    }

    fn invalidate_all_tokens(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn channel(&self) -> String {
        self.inner.keys.channel()
    }

    fn publish(&self, message: String) -> impl Future<Output = Result<(), CacheError>> + Send {
        let inner = &*self.inner;
        // The pool has no pub/sub interface: one of its clients does.
        let client = inner.pool.one();
        async move {
            let publish = client.publish::<i64, _, _>(inner.keys.channel(), message);
            inner.run(publish).await.map(drop)
        }
    }
}

impl<P> FarTierBuilder for RedisCacheBuilder<P> {
    fn subscriber(&self, backlog: usize) -> Result<(Client, Duration), CacheError> {
        self.pool.subscriber(backlog).map_err(CacheError::new)
    }
}
