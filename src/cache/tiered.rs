use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::Config;
use fred::types::{Message, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::redis::{client_builder, Fill};
use super::{
    CacheError, CacheRead, KeyCache, MemoryCache, MemoryToken, Principal, RedisCache,
    RedisCacheBuilder, RedisToken, Verdict,
};
use crate::KeyHash;

/// Default longest life of an L1 entry.
const DEFAULT_L1_TTL: Duration = Duration::from_secs(30);
/// Default trust in an L1 entry while the subscriber is down.
const DEFAULT_DISCONNECTED_L1_TTL: Duration = Duration::from_secs(1);
/// How often a subscriber that lost its subscription tries again.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);
/// How often a subscribed connection is asked for a `PING`, and how long its
/// answer may take: a connection that died without a word (a dropped NAT
/// entry, a partition) is noticed within the sum.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// Invalidation messages queued for the subscriber task before it counts as
/// having missed some (and empties L1).
const MESSAGE_BACKLOG: usize = 4096;

/// Two tiers: an in-process moka cache (L1) in front of Redis (L2), with
/// invalidations broadcast to every instance over Redis pub/sub (features
/// `memory` + `redis`).
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
/// # async fn demo() -> Result<(), tower_api_key::CacheError> {
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
    /// Invalidation messages this instance's subscriber applied to its L1
    /// (its own included).
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
    l2: L2Read,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum L2Read {
    /// Answered by L1 or by an L2 hit: nothing to fill in Redis.
    Hit,
    /// Redis missed; its fill must match this.
    Miss(RedisToken),
    /// Redis failed: a fill goes to L1 only.
    Unavailable,
}

type Read<P> = Result<CacheRead<P, TieredToken>, CacheError>;

/// The `get` future of [`TieredCache`]: ready at once on an L1 hit.
pub struct TieredGet<P> {
    state: GetState<P>,
}

enum GetState<P> {
    Ready(Option<Read<P>>),
    L2(Pin<Box<dyn Future<Output = Read<P>> + Send>>),
}

impl<P> fmt::Debug for TieredGet<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            GetState::Ready(_) => "ready",
            GetState::L2(_) => "reading Redis",
        };
        f.debug_struct("TieredGet").field("state", &state).finish()
    }
}

impl<P> Future for TieredGet<P> {
    type Output = Read<P>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            GetState::Ready(read) => match read.take() {
                Some(read) => Poll::Ready(read),
                None => Poll::Pending, // polled after completion
            },
            GetState::L2(read) => read.as_mut().poll(cx),
        }
    }
}

/// Builder for [`TieredCache`].
pub struct TieredCacheBuilder<P> {
    /// L2's settings; the subscriber shares its connection and timeout.
    redis: RedisCacheBuilder<P>,
    l1_capacity: u64,
    l1_negative_capacity: u64,
    l1_ttl: Duration,
    disconnected_l1_ttl: Duration,
}

impl<P> fmt::Debug for TieredCacheBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("redis", &self.redis)
            .field("l1_capacity", &self.l1_capacity)
            .field("l1_negative_capacity", &self.l1_negative_capacity)
            .field("l1_ttl", &self.l1_ttl)
            .field("disconnected_l1_ttl", &self.disconnected_l1_ttl)
            .finish()
    }
}

impl<P: Principal + Serialize + DeserializeOwned> TieredCacheBuilder<P> {
    fn new(redis: RedisCacheBuilder<P>) -> Self {
        Self {
            redis,
            l1_capacity: 100_000,
            l1_negative_capacity: 10_000,
            l1_ttl: DEFAULT_L1_TTL,
            disconnected_l1_ttl: DEFAULT_DISCONNECTED_L1_TTL,
        }
    }

    /// The prefix of every Redis key (default `apikey:`); the pub/sub
    /// channel is this prefix followed by `invalidations`. Instances that
    /// share verdicts share the prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis = self.redis.prefix(prefix);
        self
    }

    /// Connections in the Redis pool (default 4); the subscriber has its own.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.redis = self.redis.pool_size(size);
        self
    }

    /// How long one Redis command may take (default 100 ms), as
    /// [`RedisCacheBuilder::command_timeout`].
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.redis = self.redis.command_timeout(timeout);
        self
    }

    /// How long [`build`](Self::build) waits for Redis and the subscription,
    /// and the timeout of each connection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.redis = self.redis.connect_timeout(timeout);
        self
    }

    /// The most valid keys kept in L1 (default 100,000).
    pub fn l1_capacity(mut self, entries: u64) -> Self {
        self.l1_capacity = entries;
        self
    }

    /// The most negative entries kept in L1 (default 10,000).
    pub fn l1_negative_capacity(mut self, entries: u64) -> Self {
        self.l1_negative_capacity = entries;
        self
    }

    /// The longest an entry lives in L1 (default 30 s); it is also capped by
    /// the layer's TTL and by what the Redis entry has left. Revocations
    /// don't wait for it (they are broadcast); it bounds how long an
    /// instance keeps a verdict that changed in Redis without an
    /// `invalidate` (a key deleted from Redis by hand, say).
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl;
        self
    }

    /// While the subscriber is not subscribed (Redis down, connection lost or
    /// unresponsive), an L1 entry is served only if it was filled less than
    /// this long ago (default 1 s): how long, once the loss is noticed, a
    /// revocation made on another instance can go unseen here. Older entries
    /// go back to Redis or the lookup.
    pub fn disconnected_l1_ttl(mut self, ttl: Duration) -> Self {
        self.disconnected_l1_ttl = ttl;
        self
    }

    /// Connects the pool and the subscriber and returns the cache. An
    /// unreachable Redis is not an error (both keep reconnecting, and L1 plus
    /// the lookup answer meanwhile); a bad URL or prefix is.
    pub async fn build(self) -> Result<TieredCache<P>, CacheError> {
        let config = self.redis.config()?;
        let connect_timeout = self.redis.connect_timeout_setting();
        let l2 = self.redis.build().await?;
        let l1 = MemoryCache::builder()
            .max_capacity(self.l1_capacity)
            .max_negative_capacity(self.l1_negative_capacity)
            .build();
        let channel = format!("{}invalidations", l2.prefix());
        let subscriber = client_builder(config, connect_timeout)
            .with_performance_config(|p| p.broadcast_channel_capacity = MESSAGE_BACKLOG)
            .build()
            .map_err(CacheError::new)?;
        let signals = Arc::new(Signals::default());
        // Listen before connecting, so that no event is missed.
        let listener = Subscriber {
            client: subscriber.clone(),
            l1: l1.clone(),
            l2: l2.clone(),
            channel: channel.clone(),
            signals: Arc::clone(&signals),
            timeout: connect_timeout,
            messages: subscriber.message_rx(),
            reconnects: subscriber.reconnect_rx(),
            errors: subscriber.error_rx(),
        };
        let deadline = Instant::now() + connect_timeout;
        let connection = subscriber.connect();
        // The first connection's events are no news to the first subscribe.
        let _ = tokio::time::timeout_at(deadline.into(), subscriber.wait_for_connect()).await;
        let listener = tokio::spawn(listener.run());
        while !signals.subscribed.load(Ordering::Acquire) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !signals.subscribed.load(Ordering::Acquire) {
            tracing::warn!(
                channel,
                "not subscribed to API key invalidations yet; L1 entries are trusted for {:?} until it is",
                self.disconnected_l1_ttl
            );
        }
        Ok(TieredCache {
            shared: Arc::new(Shared {
                l1,
                l2,
                channel,
                l1_ttl: self.l1_ttl,
                disconnected_l1_ttl: self.disconnected_l1_ttl,
                signals,
                subscriber,
                listener,
                connection,
            }),
        })
    }
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
    /// The in-process tier.
    pub fn l1(&self) -> &MemoryCache<P> {
        &self.shared.l1
    }

    /// The Redis tier.
    pub fn l2(&self) -> &RedisCache<P> {
        &self.shared.l2
    }

    /// The pub/sub channel invalidations are broadcast on.
    pub fn channel(&self) -> &str {
        &self.shared.channel
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
    /// An L1 miss: Redis, then L1 filled from it.
    async fn read_l2(self, hash: KeyHash, l1_token: MemoryToken) -> Read<P> {
        let shared = &*self.shared;
        let (read, left) = match shared.l2.get_with_ttl(&hash).await {
            Ok(answer) => answer,
            // Redis is down: a miss whose answer fills L1 alone.
            Err(error) => {
                let token = TieredToken {
                    l1: l1_token,
                    l2: L2Read::Unavailable,
                };
                return Ok(CacheRead::degraded_miss(token, error));
            }
        };
        let Some(verdict) = read.verdict else {
            let token = TieredToken {
                l1: l1_token,
                l2: L2Read::Miss(read.token),
            };
            return Ok(CacheRead {
                verdict: None,
                token,
                degraded: read.degraded,
            });
        };
        shared.signals.l2_hits.fetch_add(1, Ordering::Relaxed);
        // Never longer in L1 than in Redis. The L1 token was taken before
        // the Redis read: a broadcast invalidation that lands in between
        // makes this fill a no-op.
        if let Some(left) = left.filter(|d| !d.is_zero()) {
            let ttl = left.min(shared.l1_ttl);
            shared.l1.write(hash, l1_token, verdict.clone(), ttl);
        }
        let token = TieredToken {
            l1: l1_token,
            l2: L2Read::Hit,
        };
        Ok(CacheRead::hit(verdict, token))
    }

    /// The local and remote half of an invalidation, once Redis has had
    /// its part (`l2`): drops it from this L1, then tells every instance.
    async fn spread(
        &self,
        invalidation: Invalidation,
        l2: Result<(), CacheError>,
    ) -> Result<(), CacheError> {
        let shared = &*self.shared;
        invalidation.apply(&shared.l1);
        let sent = shared
            .l2
            .publish(&shared.channel, invalidation.message())
            .await;
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
        let not_before = if shared.signals.subscribed.load(Ordering::Acquire) {
            None
        } else {
            // No instant that far back: every entry is younger than the bound.
            Instant::now().checked_sub(shared.disconnected_l1_ttl)
        };
        let l1 = shared.l1.read_since(hash, not_before);
        if let Some(verdict) = l1.verdict {
            let token = TieredToken {
                l1: l1.token,
                l2: L2Read::Hit,
            };
            return TieredGet {
                state: GetState::Ready(Some(Ok(CacheRead::hit(verdict, token)))),
            };
        }
        TieredGet {
            state: GetState::L2(Box::pin(self.clone().read_l2(*hash, l1.token))),
        }
    }

    fn put(
        &self,
        hash: KeyHash,
        token: TieredToken,
        verdict: Verdict<P>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        let this = self.clone();
        async move {
            let shared = &*this.shared;
            let l1_ttl = ttl.min(shared.l1_ttl);
            let filled = match token.l2 {
                L2Read::Miss(l2_token) => shared.l2.fill(hash, l2_token, &verdict, ttl).await,
                L2Read::Hit | L2Read::Unavailable => Ok(Fill::NotRead),
            };
            match filled {
                // Redis saw an invalidation since the read: neither tier.
                Ok(Fill::Refused) => Ok(()),
                Ok(Fill::Stored | Fill::NotRead) => {
                    shared.l1.write(hash, token.l1, verdict, l1_ttl);
                    Ok(())
                }
                // Redis failed: L1 only (a subscriber cut off with it trusts
                // the entry for its disconnected bound only).
                Err(error) => {
                    shared.l1.write(hash, token.l1, verdict, l1_ttl);
                    Err(error)
                }
            }
        }
    }

    fn refresh_token(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<TieredToken, CacheError>> + Send {
        let l1 = self.shared.l1.token(hash);
        let l2 = self.shared.l2.refresh_token(hash);
        async move {
            // Redis down: the fresh answer refreshes L1 alone.
            let l2 = l2.await.map_or(L2Read::Unavailable, L2Read::Miss);
            Ok(TieredToken { l1, l2 })
        }
    }

    fn invalidate(&self, hash: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        let this = self.clone();
        let hash = *hash;
        async move {
            // Redis first: an L1 refill racing this can then only come from
            // a read that this L1 drop's generation bump refuses.
            let l2 = this.shared.l2.invalidate(&hash).await;
            this.spread(Invalidation::Key(hash), l2).await
        }
    }

    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
        let this = self.clone();
        async move {
            let l2 = this.shared.l2.invalidate_all().await;
            this.spread(Invalidation::All, l2).await
        }
    }

    fn invalidate_owner(&self, owner: &str) -> impl Future<Output = Result<(), CacheError>> + Send {
        let this = self.clone();
        let owner = owner.to_owned();
        async move {
            let l2 = this.shared.l2.invalidate_owner(&owner).await;
            this.spread(Invalidation::Owner(owner), l2).await
        }
    }
}

/// One invalidation, as applied to an L1 and as sent on the channel.
#[derive(Debug, PartialEq, Eq)]
enum Invalidation {
    /// `k:<hex>`
    Key(KeyHash),
    /// `o:<owner>`
    Owner(String),
    /// `*`
    All,
}

impl Invalidation {
    fn message(&self) -> String {
        match self {
            Self::Key(hash) => format!("k:{}", hash.to_hex()),
            Self::Owner(owner) => format!("o:{owner}"),
            Self::All => "*".to_owned(),
        }
    }

    /// `None` for a message this build can't read (from a newer version,
    /// or garbage).
    fn parse(message: &str) -> Option<Self> {
        match message.split_once(':') {
            _ if message == "*" => Some(Self::All),
            Some(("k", hex)) => KeyHash::from_hex(hex).map(Self::Key),
            Some(("o", owner)) => Some(Self::Owner(owner.to_owned())),
            _ => None,
        }
    }

    fn apply<P: Principal>(&self, l1: &MemoryCache<P>) {
        match self {
            Self::Key(hash) => l1.remove(hash),
            Self::Owner(owner) => l1.remove_owner(owner),
            Self::All => l1.clear(),
        }
    }
}

/// The subscriber task: applies invalidation messages to L1, and empties
/// L1 whenever the subscription was lost (messages may have been missed).
struct Subscriber<P> {
    client: Client,
    l1: MemoryCache<P>,
    l2: RedisCache<P>,
    channel: String,
    signals: Arc<Signals>,
    timeout: Duration,
    messages: tokio::sync::broadcast::Receiver<Message>,
    reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    errors:
        tokio::sync::broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
}

impl<P: Principal> Subscriber<P> {
    async fn run(mut self) {
        // However the task ends (dropped, or a panic in a principal's
        // `owner()` during a sweep), L1 stops being trusted.
        let _unsubscribed = Unsubscribed(Arc::clone(&self.signals));
        let mut ever_subscribed = false;
        loop {
            if !self.signals.subscribed.load(Ordering::Acquire) {
                // Events from before this SUBSCRIBE concern connections it
                // can't be on; any after it (the reply's connection dropping)
                // are handled below and lead back here.
                drain(&mut self.reconnects);
                drain(&mut self.errors);
                let subscribed =
                    tokio::time::timeout(self.timeout, self.client.subscribe(&self.channel)).await;
                if matches!(subscribed, Ok(Ok(()))) {
                    // Whatever was published while unsubscribed is lost:
                    // nothing in L1 is known to be current.
                    self.l1.clear();
                    if ever_subscribed {
                        self.signals.l1_flushes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            channel = self.channel,
                            "resubscribed to API key invalidations; L1 emptied"
                        );
                    }
                    ever_subscribed = true;
                    self.signals.subscribed.store(true, Ordering::Release);
                }
            }
            let subscribed = self.signals.subscribed.load(Ordering::Acquire);
            tokio::select! {
                message = self.messages.recv() => match message {
                    Ok(message) => self.apply(&message),
                    // Dropped messages: as good as a lost connection.
                    Err(RecvError::Lagged(_)) => self.lost("invalidation messages dropped"),
                    Err(RecvError::Closed) => return,
                },
                event = self.reconnects.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => self.lost("subscriber reconnected"),
                    Err(RecvError::Closed) => return,
                },
                event = self.errors.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => self.lost("subscriber connection failed"),
                    Err(RecvError::Closed) => return,
                },
                () = tokio::time::sleep(RESUBSCRIBE_EVERY), if !subscribed => {}
                () = tokio::time::sleep(HEARTBEAT_EVERY), if subscribed => self.heartbeat().await,
            }
        }
    }

    /// A subscribed connection hears nothing when nobody revokes: ask it
    /// something, so that one that died silently is noticed and replaced.
    async fn heartbeat(&self) {
        let pong = tokio::time::timeout(HEARTBEAT_TIMEOUT, self.client.ping::<Value>(None)).await;
        if !matches!(pong, Ok(Ok(_))) {
            self.lost("subscriber connection unresponsive");
            let _ = tokio::time::timeout(self.timeout, self.client.force_reconnection()).await;
        }
    }

    fn lost(&self, why: &'static str) {
        if self.signals.subscribed.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                channel = self.channel,
                why,
                "API key invalidations may have been missed; L1 trusted briefly until resubscribed"
            );
        }
    }

    fn apply(&self, message: &Message) {
        if &*message.channel != self.channel.as_str() {
            return;
        }
        match message
            .value
            .as_str()
            .as_deref()
            .and_then(Invalidation::parse)
        {
            Some(invalidation) => {
                if invalidation == Invalidation::All {
                    // This instance's in-flight Redis fills can't write either.
                    self.l2.bump_epoch();
                }
                invalidation.apply(&self.l1);
            }
            // Unreadable: drop everything rather than keep something that
            // may be revoked.
            None => self.l1.clear(),
        }
        self.signals
            .broadcasts_received
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Clears the subscribed flag when the subscriber task ends.
struct Unsubscribed(Arc<Signals>);

impl Drop for Unsubscribed {
    fn drop(&mut self) {
        self.0.subscribed.store(false, Ordering::Release);
    }
}

fn drain<T: Clone>(events: &mut tokio::sync::broadcast::Receiver<T>) {
    while !matches!(
        events.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty
            | tokio::sync::broadcast::error::TryRecvError::Closed)
    ) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_messages_round_trip_and_garbage_is_refused() {
        let hash = KeyHash::of("k");
        for invalidation in [
            Invalidation::Key(hash),
            Invalidation::Owner("acme:eu".to_owned()),
            Invalidation::All,
        ] {
            assert_eq!(
                Invalidation::parse(&invalidation.message()),
                Some(invalidation)
            );
        }
        for garbage in ["", "k:zz", "x:1", "**", "k", "v2:k:00"] {
            assert_eq!(Invalidation::parse(garbage), None, "{garbage}");
        }
    }
}
