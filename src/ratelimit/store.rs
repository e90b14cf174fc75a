//! The counter contract, [`CounterStore`]: what a backend keeps for the
//! rate-limit stage, stated once.

use std::error::Error as StdError;
use std::future::Future;

use smallvec::SmallVec;

use super::policy::{Algorithm, RateLimit};
use super::window::Quota;
use crate::KeyHash;

/// Whose counters a request counts against: its key's, or (when the
/// principal says its limits count per owner) its owner's. Either way a
/// digest: counter names never carry a key or an owner in the clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey(KeyHash);

impl CounterKey {
    /// The counters of one key.
    pub fn key(hash: &KeyHash) -> Self {
        Self(*hash)
    }

    /// The counters shared by every key of one owner.
    pub fn owner(owner: &str) -> Self {
        Self(KeyHash::of(format!("tower-api-key owner\0{owner}")))
    }

    /// The digest the counters are named by.
    pub fn digest(&self) -> &KeyHash {
        &self.0
    }
}

/// What a store answers for one request: whether every policy admitted it
/// (then it was counted against all of them; otherwise against none), and
/// what each policy has left, in the order the policies were given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// Whether the request was admitted.
    pub admitted: bool,
    /// Per policy, in order.
    pub quotas: SmallVec<[Quota; 2]>,
}

/// A counter store failed (unreachable, timed out, refused). The layer
/// never turns this into a 5xx unless the fallback is fail-closed: it counts
/// it, logs it, and falls back as configured.
#[derive(Debug, thiserror::Error)]
#[error("rate-limit counter store error: {source}")]
pub struct CounterError {
    #[source]
    source: Box<dyn StdError + Send + Sync>,
}

impl CounterError {
    /// Wraps a backend's error.
    pub fn new(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

/// A rate-limit counter backend.
///
/// # What a store keeps
///
/// - **All or nothing.** [`hit`](Self::hit) counts `cost` against every
///   policy only if every one of them admits it, atomically with respect to
///   other hits on the same key (two requests can't both take the last unit).
/// - **One arithmetic.** Counts are rolled and weighed as `window.rs` does
///   (a store that runs elsewhere, as Redis's script does, returns the
///   counts and lets the crate read them), so every store tells a client the
///   same `RateLimit` fields for the same counts.
/// - **Bounded.** Whatever keys arrive, the store's memory stays within its
///   configuration.
/// - **Failures are errors**, never an admission or a refusal.
///
/// `hit` is on every limited request's path: its future is named and
/// `Unpin`, so that an in-process store answers with a ready future.
pub trait CounterStore: Send + Sync + 'static {
    /// The future of [`hit`](Self::hit).
    type Hit: Future<Output = Result<Counted, CounterError>> + Unpin + Send + 'static;

    /// Counts a request of `cost` units against `key`'s `limits`, if they
    /// all admit it.
    fn hit(
        &self,
        key: &CounterKey,
        limits: &[RateLimit],
        algorithm: Algorithm,
        cost: u64,
    ) -> Self::Hit;

    /// Forgets every count of `key` (an admin raised a limit, or forgave a
    /// client).
    fn reset(&self, key: &CounterKey) -> impl Future<Output = Result<(), CounterError>> + Send;
}
