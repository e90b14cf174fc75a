//! [`TieredCache`]: an in-process L1 in front of Redis (L2), invalidations
//! broadcast to every instance (feature `tiered`).
//!
//! | file | what it owns |
//! | --- | --- |
//! | `mod.rs` | the cache, its token, its `get` future, the [`KeyCache`] impl |
//! | `builder.rs` | both tiers' settings, and connecting the subscriber |
//! | `subscriber.rs` | the task that applies broadcasts to L1 and notices missed ones |
//! | `invalidation.rs` | the messages on the channel |
//!
//! What it needs from [`MemoryCache`] and [`RedisCache`] beyond
//! [`KeyCache`] is the tier API, declared in `cache/tier.rs`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::prelude::Config;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;

use super::redis::RedisRead;
use super::tier::{FarTier, NearTier, Put};
use super::token::{MemoryToken, RedisToken};
use super::{CacheError, CacheRead, KeyCache, MemoryCache, RedisCache, Ttl, Verdict};
use crate::{KeyHash, Principal};

mod builder;
mod invalidation;
mod subscriber;

pub use builder::TieredCacheBuilder;
pub(crate) use builder::DEFAULT_L1_TTL;

use invalidation::{Invalidation, Origin};

/// Two tiers: an in-process cache (L1, a [`MemoryCache`]) in front of Redis (L2), with
/// invalidations broadcast to every instance over Redis pub/sub (feature
/// `tiered`).
///
/// A hit in L1 costs what a [`MemoryCache`] hit costs; Redis is asked only
/// on an L1 miss, and the lookup only when Redis misses too. A revocation
/// reaches every instance in one pub/sub hop (a fraction of a millisecond
/// on a LAN), not after a TTL.
///
/// - **Reads**: L1, then L2 (an L2 hit fills L1, for [`l1_ttl`] at most and
///   never longer than the Redis entry has left), then the layer's lookup
///   (whose answer fills both). Single flight holds across the tiers: the
///   layer shares one lookup between concurrent misses of a key in both
///   tiers. (Concurrent L1 misses each read Redis, a cheap round trip.)
/// - **Invalidation**: [`invalidate`](KeyCache::invalidate) deletes the key
///   in Redis (bumping its version, so in-flight lookups can't write it
///   back), drops it from the local L1, and publishes its hash on
///   [`channel`](TieredCache::channel); every instance's subscriber drops it
///   from its L1. It returns once the local tiers are clean and the message
///   is published. [`invalidate_all`](KeyCache::invalidate_all) and
///   [`invalidate_owner`](KeyCache::invalidate_owner) work the same way
///   (`invalidate_all` with `RedisCache`'s caveat about another instance's
///   fill in flight at that moment). When Redis answers, an L1 fill after a
///   lookup happens only if Redis accepted the fill, so Redis's version check
///   guards both tiers; when it doesn't, the fill goes to L1 alone.
/// - **Missed messages are never silent.** Pub/sub is fire-and-forget: when
///   the subscriber's connection drops (or stops answering its once-a-second
///   `PING`, or its message queue overflows), the instance can't know what
///   it missed, so when it has subscribed again it empties its L1
///   ([`TieredStats::l1_flushes`]). While it is not subscribed, an L1 entry
///   is trusted only for [`disconnected_l1_ttl`] (1 s) after it was filled.
///   So a revocation made elsewhere goes unseen here for at most that bound
///   after the loss is noticed: at once for a closed connection, within two
///   seconds (the `PING` interval and its timeout) for one that died
///   silently.
/// - **Redis down**: L1 keeps answering what it holds (within that bound),
///   everything else goes to the lookup, whose answers refill L1; Redis
///   errors are counted and logged by the layer, never a rejection. The pool
///   and the subscriber reconnect by themselves.
/// - **Redis Cluster**: pub/sub messages reach every node, so every
///   instance hears them whichever node it subscribed on.
///
/// Every `TieredCache` built is one instance: its own pool, its own
/// subscriber connection. `Clone` shares them.
///
/// [`l1_ttl`]: TieredCacheBuilder::l1_ttl
/// [`disconnected_l1_ttl`]: TieredCacheBuilder::disconnected_l1_ttl
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), tower_api_key::cache::CacheError> {
/// use std::time::Duration;
/// use tower_api_key::cache::TieredCache;
/// use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Client { id: u64 }
/// impl tower_api_key::Principal for Client {}
///
/// let cache: TieredCache<Client> = TieredCache::builder("redis://127.0.0.1:6379")
///     .prefix("myapp:apikey:")
///     .l1_capacity(50_000)
///     .l1_ttl(Duration::from_secs(60))
///     .build()
///     .await?;
/// let auth = ApiKeyAuthLayer::new(
///     cache,
///     lookup_fn(|_hash: KeyHash| async { Ok::<_, std::convert::Infallible>(None::<Client>) }),
/// );
/// // Revoked here, rejected by every instance on its next request.
/// auth.invalidate(&KeyHash::of("sk_live_revoked")).await?;
/// # Ok(()) }
/// ```
pub struct TieredCache<P> {
    shared: Arc<Shared<P>>,
}

struct Shared<P> {
    l1: MemoryCache<P>,
    l2: RedisCache<P>,
    channel: String,
    /// Names this instance on the invalidations it sends.
    origin: Origin,
    l1_ttl: Duration,
    disconnected_l1_ttl: Duration,
    signals: Arc<Signals>,
    subscriber: Client,
    listener: JoinHandle<()>,
    connection: JoinHandle<Result<(), fred::error::Error>>,
}

impl<P> Drop for Shared<P> {
    fn drop(&mut self) {
        // The listener holds the subscriber and L1: stop it, and the
        // subscriber's connection with it.
        self.listener.abort();
        self.connection.abort();
    }
}

/// What the subscriber task and the read path share.
#[derive(Default)]
struct Signals {
    subscribed: AtomicBool,
    l2_hits: AtomicU64,
    broadcasts_received: AtomicU64,
    l1_flushes: AtomicU64,
}

/// Counters of a [`TieredCache`] (the layer's own [`Stats`](crate::Stats)
/// count hits, lookups and cache errors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TieredStats {
    /// Reads that missed L1 and hit Redis.
    pub l2_hits: u64,
    /// Invalidation messages this instance's subscriber heard (its own
    /// included, which it doesn't apply again).
    pub broadcasts_received: u64,
    /// Times L1 was emptied because the subscriber lost its subscription
    /// and may have missed messages.
    pub l1_flushes: u64,
    /// Whether the subscriber is subscribed now.
    pub subscribed: bool,
}

/// The token of [`TieredCache`]: L1's, and what L2 said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TieredToken {
    l1: MemoryToken,
    l2: L2Token,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum L2Token {
    /// Redis missed too; its fill must present this.
    Read(RedisToken),
    /// Redis failed: a fill goes to L1 only.
    Unavailable,
}

impl<P: Principal + Serialize + DeserializeOwned> TieredCache<P> {
    /// A builder connecting to `url` (`redis://…`, `rediss://…` with feature
    /// `redis-tls`, `redis-cluster://…`).
    pub fn builder(url: impl Into<String>) -> TieredCacheBuilder<P> {
        TieredCacheBuilder::new(RedisCache::builder(url))
    }

    /// A builder from a fred [`Config`] you already have; the pool and the
    /// subscriber get this crate's timeouts and reconnect policy.
    pub fn from_config(config: Config) -> TieredCacheBuilder<P> {
        TieredCacheBuilder::new(RedisCache::from_config(config))
    }
}

impl<P> TieredCache<P> {
    /// The pub/sub channel invalidations are broadcast on.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// The in-process tier.
    pub fn l1(&self) -> &MemoryCache<P> {
        &self.shared.l1
    }

    /// The Redis tier.
    pub fn l2(&self) -> &RedisCache<P> {
        &self.shared.l2
    }

    /// Whether the subscriber is subscribed now (when it isn't, L1 entries
    /// are trusted only for the
    /// [`disconnected_l1_ttl`](TieredCacheBuilder::disconnected_l1_ttl)).
    pub fn is_subscribed(&self) -> bool {
        self.shared.signals.subscribed.load(Ordering::Acquire)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TieredStats {
        let s = &self.shared.signals;
        TieredStats {
            l2_hits: s.l2_hits.load(Ordering::Relaxed),
            broadcasts_received: s.broadcasts_received.load(Ordering::Relaxed),
            l1_flushes: s.l1_flushes.load(Ordering::Relaxed),
            subscribed: s.subscribed.load(Ordering::Acquire),
        }
    }
}

impl<P> Clone for TieredCache<P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<P> fmt::Debug for TieredCache<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("l1", &self.shared.l1)
            .field("l2", &self.shared.l2)
            .field("channel", &self.shared.channel)
            .field("subscriber", &self.shared.subscriber.id())
            .field("stats", &self.stats())
            .finish()
    }
}

impl<P> TieredCache<P>
where
    P: Principal + Serialize + DeserializeOwned,
{
    /// The local and remote half of an invalidation, once Redis has had
    /// its part (`l2`): drops it from this L1, then tells every instance.
    async fn spread(
        &self,
        invalidation: Invalidation,
        l2: Result<(), CacheError>,
    ) -> Result<(), CacheError> {
        let shared = &*self.shared;
        invalidation.apply(&shared.l1);
        let sent = shared.l2.publish(invalidation.message(shared.origin)).await;
        l2.and(sent)
    }
}

impl<P> KeyCache for TieredCache<P>
where
    P: Principal + Serialize + DeserializeOwned,
{
    type Principal = P;
    type Token = TieredToken;
    type Get = TieredGet<P>;

    fn get(&self, hash: &KeyHash) -> Self::Get {
        let shared = &*self.shared;
        // Subscribed: every L1 entry is current. Not: only recent fills are.
        let filled_since = if shared.signals.subscribed.load(Ordering::Acquire) {
            None
        } else {
            // No instant that far back: every entry is younger than the bound.
            Instant::now().checked_sub(shared.disconnected_l1_ttl)
        };
        let state = match shared.l1.get_now(hash, filled_since) {
            CacheRead::Miss {
                token: l1, stale, ..
            } => GetState::L2 {
                read: shared.l2.get_with_ttl(hash),
                cache: self.clone(),
                hash: *hash,
                l1,
                stale,
            },
            CacheRead::Hit(verdict) => GetState::Ready(Some(CacheRead::Hit(verdict))),
            CacheRead::Aging(principal) => GetState::Ready(Some(CacheRead::Aging(principal))),
        };
        TieredGet { state }
    }

    fn refresh_token(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<TieredToken, CacheError>> + Send {
        let l1 = self.shared.l1.refresh_token_now(hash);
        let l2 = self.shared.l2.refresh_token(hash);
        async move {
            // Redis down: the fresh answer refreshes L1 alone.
            let l2 = l2.await.map_or(L2Token::Unavailable, L2Token::Read);
            Ok(TieredToken { l1, l2 })
        }
    }

    async fn put(
        &self,
        hash: KeyHash,
        token: TieredToken,
        verdict: Verdict<P>,
        ttl: Ttl,
    ) -> Result<(), CacheError> {
        let shared = &*self.shared;
        let l1_ttl = ttl.cap(shared.l1_ttl);
        let put = match token.l2 {
            L2Token::Read(l2) => shared.l2.put_checked(hash, l2, &verdict, ttl).await,
            L2Token::Unavailable => Ok(Put::Stored),
        };
        match put {
            // Redis saw an invalidation since the read: neither tier.
            Ok(Put::Refused) => Ok(()),
            Ok(Put::Stored) => {
                shared.l1.put_now(hash, token.l1, verdict, l1_ttl);
                Ok(())
            }
            // Redis failed: L1 only (a subscriber cut off with it trusts the
            // entry for its disconnected bound only).
            Err(error) => {
                shared.l1.put_now(hash, token.l1, verdict, l1_ttl);
                Err(error)
            }
        }
    }

    async fn invalidate(&self, hash: &KeyHash) -> Result<(), CacheError> {
        // Redis first: an L1 refill racing this can then only come from a
        // read that this L1 drop's generation bump refuses.
        let l2 = self.shared.l2.invalidate(hash).await;
        self.spread(Invalidation::Key(*hash), l2).await
    }

    async fn invalidate_all(&self) -> Result<(), CacheError> {
        let l2 = self.shared.l2.invalidate_all().await;
        self.spread(Invalidation::All, l2).await
    }

    async fn invalidate_owner(&self, owner: &str) -> Result<(), CacheError> {
        let l2 = self.shared.l2.invalidate_owner(owner).await;
        self.spread(Invalidation::Owner(owner.to_owned()), l2).await
    }
}

/// The `get` future of [`TieredCache`]: ready at once on an L1 hit; on an
/// L1 miss, one Redis round trip whose hit fills L1.
pub struct TieredGet<P> {
    state: GetState<P>,
}

enum GetState<P> {
    /// Answered by L1 (`None` once taken).
    Ready(Option<CacheRead<P, TieredToken>>),
    /// Reading Redis, with what its answer needs.
    L2 {
        read: RedisRead<P>,
        cache: TieredCache<P>,
        hash: KeyHash,
        l1: MemoryToken,
        /// L1's stale copy, for when Redis can't answer.
        stale: Option<Arc<P>>,
    },
}

impl<P> fmt::Debug for TieredGet<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            GetState::Ready(_) => "answered by L1",
            GetState::L2 { .. } => "reading Redis",
        };
        f.debug_struct("TieredGet").field("state", &state).finish()
    }
}

impl<P> Future for TieredGet<P>
where
    P: Principal + Serialize + DeserializeOwned,
{
    type Output = Result<CacheRead<P, TieredToken>, CacheError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (read, cache, hash, l1, l1_stale) = match &mut self.state {
            GetState::Ready(read) => {
                return match read.take() {
                    Some(read) => Poll::Ready(Ok(read)),
                    None => Poll::Pending, // polled after completion
                };
            }
            GetState::L2 {
                read,
                cache,
                hash,
                l1,
                stale,
            } => {
                let read = ready!(Pin::new(read).poll(cx));
                (read, &*cache.shared, *hash, *l1, stale.take())
            }
        };
        let token = |l2| TieredToken { l1, l2 };
        // Never longer in L1 than in Redis. The L1 token was taken before
        // the Redis read: a broadcast invalidation that lands in between
        // makes this fill a no-op.
        let fill = |verdict: Verdict<P>, left: Option<Ttl>| {
            cache.signals.l2_hits.fetch_add(1, Ordering::Relaxed);
            if let Some(left) = left.filter(|t| !t.fresh.is_zero()) {
                cache.l1.put_now(hash, l1, verdict, left.cap(cache.l1_ttl));
            }
        };
        let read = match read {
            Ok((CacheRead::Hit(verdict), left)) => {
                fill(verdict.clone(), left);
                CacheRead::Hit(verdict)
            }
            Ok((CacheRead::Aging(principal), left)) => {
                fill(Verdict::Valid(Arc::clone(&principal)), left);
                CacheRead::Aging(principal)
            }
            // Redis answered: its word on staleness is the only one (an L1
            // copy may be of a key another instance just invalidated).
            Ok((
                CacheRead::Miss {
                    token: l2,
                    degraded,
                    stale,
                },
                _,
            )) => CacheRead::Miss {
                token: token(L2Token::Read(l2)),
                degraded,
                stale,
            },
            // Redis is down: a miss whose answer fills L1 alone, with what
            // L1 still trusts kept stale.
            Err(error) => CacheRead::Miss {
                token: token(L2Token::Unavailable),
                degraded: Some(error),
                stale: l1_stale,
            },
        };
        self.state = GetState::Ready(None);
        Poll::Ready(Ok(read))
    }
}
