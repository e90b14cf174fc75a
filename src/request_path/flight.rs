//! Single flight: concurrent misses for one key hash share one lookup.
//!
//! A flight is a shared future (lookup, then cache write) that every waiting
//! request polls; whichever request polls it drives it, so a leader that goes
//! away (client disconnect) doesn't strand the others. The registry holds only
//! a weak handle: when every waiter is gone the flight is dropped, and a guard
//! inside it removes its slot, so abandoned lookups can't pile up.
//!
//! A request joins a flight only when its cache token equals the flight's
//! (rule 2 of the [token protocol](crate::cache#the-contract)): a flight that
//! started before an invalidation of its hash can't answer a request that
//! arrived after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};

use crate::KeyHash;

const SHARDS: usize = 32;

/// What a lookup concluded, shared by every request waiting on it.
pub(crate) enum Outcome<P> {
    Valid(Arc<P>),
    Invalid,
    Failed,
}

impl<P> Clone for Outcome<P> {
    fn clone(&self) -> Self {
        match self {
            Self::Valid(p) => Self::Valid(Arc::clone(p)),
            Self::Invalid => Self::Invalid,
            Self::Failed => Self::Failed,
        }
    }
}

pub(crate) type Flight<P> = Shared<BoxFuture<'static, Outcome<P>>>;

struct Slot<P, T> {
    id: u64,
    token: Option<T>,
    /// False for a refresh-ahead: no request waits on it.
    joinable: bool,
    flight: WeakShared<BoxFuture<'static, Outcome<P>>>,
}

type Shard<P, T> = Mutex<HashMap<KeyHash, Slot<P, T>>>;

pub(crate) struct Flights<P, T> {
    shards: Box<[Shard<P, T>]>,
    next_id: AtomicU64,
}

/// Removes its flight's slot when the flight finishes or is dropped.
pub(crate) struct FlightGuard<P, T> {
    flights: Arc<Flights<P, T>>,
    hash: KeyHash,
    id: u64,
}

impl<P, T> Drop for FlightGuard<P, T> {
    fn drop(&mut self) {
        let mut shard = self.flights.shard(&self.hash);
        if shard.get(&self.hash).is_some_and(|s| s.id == self.id) {
            shard.remove(&self.hash);
        }
    }
}

impl<P, T> Flights<P, T> {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(0),
        }
    }

    fn shard(&self, hash: &KeyHash) -> MutexGuard<'_, HashMap<KeyHash, Slot<P, T>>> {
        // Nothing panics while a shard is locked; a poisoned lock is still
        // consistent.
        self.shards[(hash.prefix_u64() as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl<P: Send + Sync + 'static, T: Eq> Flights<P, T> {
    /// Joins the live flight for `hash` started with an equal token (unless
    /// `may_join` is false: a request that must see a lookup started after it
    /// arrived), or starts one with `start`. Returns the flight and whether it
    /// was joined.
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        hash: KeyHash,
        token: Option<T>,
        may_join: bool,
        start: impl FnOnce(FlightGuard<P, T>) -> BoxFuture<'static, Outcome<P>>,
    ) -> (Flight<P>, bool) {
        let mut shard = self.shard(&hash);
        if let Some(slot) = shard.get(&hash).filter(|s| may_join && s.joinable) {
            if slot.token == token {
                if let Some(flight) = slot.flight.upgrade() {
                    return (flight, true);
                }
            }
        }
        (
            self.start_locked(&mut shard, hash, token, true, start),
            false,
        )
    }

    /// Starts a flight for `hash` with `start` unless one is live (whatever
    /// its token): a refresh-ahead that any lookup of the key makes moot.
    /// Nobody joins it (its token is none).
    #[cfg(feature = "tokio")]
    pub(crate) fn start_unless_flying(
        self: &Arc<Self>,
        hash: KeyHash,
        start: impl FnOnce(FlightGuard<P, T>) -> BoxFuture<'static, Outcome<P>>,
    ) -> Option<Flight<P>> {
        let mut shard = self.shard(&hash);
        if shard.get(&hash).and_then(|s| s.flight.upgrade()).is_some() {
            return None;
        }
        Some(self.start_locked(&mut shard, hash, None, false, start))
    }

    fn start_locked(
        self: &Arc<Self>,
        shard: &mut HashMap<KeyHash, Slot<P, T>>,
        hash: KeyHash,
        token: Option<T>,
        joinable: bool,
        start: impl FnOnce(FlightGuard<P, T>) -> BoxFuture<'static, Outcome<P>>,
    ) -> Flight<P> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let guard = FlightGuard {
            flights: Arc::clone(self),
            hash,
            id,
        };
        let flight = start(guard).shared();
        if let Some(weak) = flight.downgrade() {
            // Replaces a dead slot, or a live one from before an
            // invalidation (its guard then finds a different id and leaves
            // this slot alone).
            shard.insert(
                hash,
                Slot {
                    id,
                    token,
                    joinable,
                    flight: weak,
                },
            );
        }
        flight
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::{pending, ready};
    use std::future::Future;

    /// A flight that never finishes.
    fn stuck(guard: FlightGuard<(), u32>) -> BoxFuture<'static, Outcome<()>> {
        async move {
            let _guard = guard;
            pending::<()>().await;
            Outcome::Invalid
        }
        .boxed()
    }

    #[tokio::test]
    async fn equal_tokens_join_and_finished_flights_unregister() {
        let flights = Arc::new(Flights::<(), u32>::new());
        let h = KeyHash::of("a");
        let (a, joined_a) = flights.join_or_start(h, Some(1), true, |g| {
            async move {
                let _g = g;
                tokio::task::yield_now().await;
                Outcome::Invalid
            }
            .boxed()
        });
        let (b, joined_b) = flights.join_or_start(h, Some(1), true, |_| unreachable!());
        assert!(!joined_a && joined_b);
        assert!(matches!(a.await, Outcome::Invalid));
        assert!(matches!(b.await, Outcome::Invalid));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_newer_token_starts_its_own_flight() {
        let flights = Arc::new(Flights::<(), u32>::new());
        let h = KeyHash::of("a");
        let (_old, _) = flights.join_or_start(h, Some(1), true, stuck);
        let (new, joined) = flights.join_or_start(h, Some(2), true, |g| {
            async move {
                let _g = g;
                Outcome::Failed
            }
            .boxed()
        });
        assert!(!joined);
        assert!(matches!(new.await, Outcome::Failed));
    }

    #[tokio::test]
    async fn a_request_that_may_not_join_starts_its_own_flight() {
        let flights = Arc::new(Flights::<(), u32>::new());
        let h = KeyHash::of("a");
        let (_old, _) = flights.join_or_start(h, Some(1), true, stuck);
        let (fresh, joined) = flights.join_or_start(h, Some(1), false, |g| {
            async move {
                let _g = g;
                Outcome::Failed
            }
            .boxed()
        });
        assert!(!joined);
        assert!(matches!(fresh.await, Outcome::Failed));
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn a_refresh_starts_only_when_nothing_flies() {
        let flights = Arc::new(Flights::<(), u32>::new());
        let h = KeyHash::of("a");
        let (_live, _) = flights.join_or_start(h, Some(1), true, stuck);
        assert!(flights.start_unless_flying(h, stuck).is_none());
        let refresh = flights.start_unless_flying(KeyHash::of("b"), |g| {
            async move {
                let _g = g;
                Outcome::Invalid
            }
            .boxed()
        });
        let refresh = refresh.expect("nothing flies for b");
        // Nobody joins a refresh: a miss with a token starts its own, and
        // so does one without (the cache failed).
        let (_, joined) = flights.join_or_start(KeyHash::of("b"), None, true, stuck);
        assert!(!joined);
        let (_, joined) = flights.join_or_start(KeyHash::of("b"), Some(1), true, stuck);
        assert!(!joined);
        assert!(matches!(refresh.await, Outcome::Invalid));
    }

    #[tokio::test]
    async fn abandoned_flights_are_dropped_and_unregistered() {
        let flights = Arc::new(Flights::<(), u32>::new());
        for i in 0..100u32 {
            let (f, _) = flights.join_or_start(KeyHash::of(i.to_string()), None, true, |g| {
                async move {
                    let _g = g;
                    pending::<()>().await;
                    Outcome::Invalid
                }
                .boxed()
            });
            // Polled once, then the only waiter goes away.
            let mut f = f;
            let waker = futures_util::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(std::pin::Pin::new(&mut f).poll(&mut cx).is_pending());
        }
        assert_eq!(flights.len(), 0);
        let (f, _) = flights.join_or_start(KeyHash::of("x"), None, true, |g| {
            async move {
                let _g = g;
                ready(()).await;
                Outcome::Invalid
            }
            .boxed()
        });
        drop(f);
        assert_eq!(flights.len(), 0, "never polled, still unregistered on drop");
    }
}
