//! The cache conformance suite (`tower_api_key::cache::conformance`) on the
//! crate's own backends, and on a naive cache that it must catch.

mod common;

mod memory {
    use tower_api_key::cache::MemoryCache;

    tower_api_key::key_cache_conformance!(|| async { (MemoryCache::new(), ()) }, owners);
}

#[cfg(feature = "tiered")]
mod any_cache {
    use tower_api_key::cache::{AnyCache, CacheSettings};

    tower_api_key::key_cache_conformance!(
        || async { (AnyCache::from_settings(CacheSettings::default()).await, ()) },
        owners
    );
}

/// Each test on a private `redis-server` of its own.
#[cfg(feature = "redis")]
mod redis {
    use super::common::redis::RedisServer;
    use tower_api_key::cache::RedisCache;

    tower_api_key::key_cache_conformance!(
        || async {
            let server = RedisServer::start();
            let cache = RedisCache::builder(server.url()).build().await;
            (cache.expect("a Redis cache"), server)
        },
        owners
    );
}

/// With sealed values.
#[cfg(feature = "redis")]
mod redis_sealed {
    use super::common::redis::RedisServer;
    use tower_api_key::cache::RedisCache;

    tower_api_key::key_cache_conformance!(
        || async {
            let server = RedisServer::start();
            let cache = RedisCache::builder(server.url())
                .value_secret("the conformance suite's secret")
                .build()
                .await;
            (cache.expect("a Redis cache"), server)
        },
        owners
    );
}

#[cfg(feature = "tiered")]
mod tiered {
    use super::common::redis::RedisServer;
    use tower_api_key::cache::TieredCache;

    tower_api_key::key_cache_conformance!(
        || async {
            let server = RedisServer::start();
            let cache = TieredCache::builder(server.url()).build().await;
            (cache.expect("a tiered cache"), server)
        },
        owners
    );
}

/// L1 copies shorter than the suite's TTLs: reads go to Redis, and L1 is
/// filled with what Redis's entry has left.
#[cfg(feature = "tiered")]
mod tiered_short_l1 {
    use std::time::Duration;

    use super::common::redis::RedisServer;
    use tower_api_key::cache::TieredCache;

    tower_api_key::key_cache_conformance!(
        || async {
            let server = RedisServer::start();
            let cache = TieredCache::builder(server.url())
                .l1_ttl(Duration::from_millis(500))
                .build()
                .await;
            (cache.expect("a tiered cache"), server)
        },
        owners
    );
}

/// `NaiveCache`, on a map's plain `insert` and `remove`, ignores its
/// tokens and TTLs: the checks that guard the contract must fail on it.
mod a_naive_cache_fails {
    use std::future::{ready, Future};

    use super::common::NaiveCache;
    use tower_api_key::cache::conformance::{self, Client};

    fn naive() -> impl Future<Output = (NaiveCache<Client>, ())> {
        ready((NaiveCache::<Client>::new(), ()))
    }

    #[test]
    #[should_panic(expected = "a stale refill undid the invalidation")]
    fn on_a_stale_refill_after_invalidate() {
        conformance::run(
            naive,
            conformance::a_put_with_a_token_from_before_invalidate_stores_nothing,
        );
    }

    #[test]
    #[should_panic(expected = "a token from before invalidate equals one after")]
    fn on_tokens_that_ignore_invalidations() {
        conformance::run(naive, conformance::tokens_are_equal_until_an_invalidation);
    }

    #[test]
    #[should_panic(expected = "outlived its TTL")]
    fn on_entries_that_outlive_their_ttl() {
        conformance::run(naive, conformance::entries_expire_after_their_own_ttl);
    }

    #[test]
    #[should_panic(expected = "invalidate_owner")]
    fn on_owner_invalidation_it_cannot_do() {
        conformance::run(
            naive,
            conformance::invalidate_owner_drops_that_owners_keys_only,
        );
    }

    #[test]
    #[should_panic(expected = "did not age")]
    fn on_entries_that_never_age() {
        conformance::run(
            naive,
            conformance::a_valid_entry_ages_in_the_last_part_of_its_fresh_time,
        );
    }

    #[test]
    #[should_panic(expected = "not kept stale")]
    fn on_entries_that_never_go_stale() {
        conformance::run(
            naive,
            conformance::a_valid_entry_is_kept_stale_after_its_fresh_time,
        );
    }
}
