//! Reads: one primitive, [`RedisRead`], under both the plain `get`
//! ([`RedisGet`]) and the tiered cache's L2 read (which also asks how long
//! the entry has left).
//!
//! A hit is one command. A miss goes on to a lookup, so it also reads what
//! the lookup's fill must match (the key's version and the owners' epoch)
//! before it answers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::KeysInterface;
use serde::de::DeserializeOwned;

use super::codec::{self, Freshness};
use super::command::Command;
use super::seal;
use super::{RedisCache, RedisToken, Version};
use crate::cache::{CacheError, CacheRead, Ttl};
use crate::telemetry::{self, Tier};
use crate::KeyHash;

/// What a read answers: the read, and for a hit asked with its TTL what the
/// entry has left.
pub(crate) type Read<P> = Result<(CacheRead<P, RedisToken>, Option<Ttl>), CacheError>;

impl<P: DeserializeOwned> RedisCache<P> {
    /// The entry in `raw`, read for `hash`: checked against its seal when
    /// the cache has a secret, then decoded.
    fn open(
        &self,
        hash: &KeyHash,
        raw: Option<&[u8]>,
    ) -> Result<codec::Stored<P>, Option<CacheError>> {
        let envelope = match (raw, &self.inner.seal) {
            (None, _) => None,
            (Some(raw), None) => Some(seal::unsealed(raw)),
            (Some(raw), Some(seal)) => match seal.open(&self.inner.keys.entry(hash), raw) {
                Ok(envelope) => Some(envelope),
                Err(why) => {
                    return Err(Some(CacheError::new(format!(
                        "unauthenticated cached value: {why}"
                    ))))
                }
            },
        };
        codec::decode(envelope)
    }
}

impl<P> RedisCache<P> {
    /// Reads `hash`; with `with_ttl`, also how long a hit has left (`PTTL`,
    /// in the same round trip).
    pub(super) fn read(&self, hash: &KeyHash, with_ttl: bool) -> RedisRead<P> {
        let inner = &*self.inner;
        // Taken before the read, so an invalidate_all during it wins.
        let epoch = inner.epoch.load(Ordering::Acquire);
        let entry = inner.keys.entry(hash);
        let command = if with_ttl {
            let pipeline = inner.pool.pipeline();
            inner.boxed(move || async move {
                let _: () = pipeline.get(&entry).await?;
                let _: () = pipeline.pttl(&entry).await?;
                let (raw, pttl): (Option<Bytes>, i64) = pipeline.all().await?;
                Ok((raw, Some(pttl)))
            })
        } else {
            let client = inner.client();
            inner.boxed(move || async move { Ok((client.get(entry).await?, None)) })
        };
        RedisRead {
            cache: self.clone(),
            hash: *hash,
            epoch,
            // Redis counts the TTL down from its reply: what is left here is
            // less by the time since the question was sent.
            asked: with_ttl.then(Instant::now),
            state: ReadState::Entry(command),
        }
    }

    /// Reads the key's version and the owners' epoch, bounded: what a fill
    /// must match.
    pub(super) fn read_version(&self, hash: &KeyHash) -> Command<Version> {
        let inner = &*self.inner;
        let (key, owners) = (inner.keys.version(hash), inner.keys.owners());
        let client = inner.client();
        inner.boxed(move || async move {
            let (key, owners) =
                futures_util::future::try_join(client.get(key), client.get(owners)).await?;
            Ok(Version { key, owners })
        })
    }
}

/// A read of one key (see the [module docs](self)).
pub(crate) struct RedisRead<P> {
    cache: RedisCache<P>,
    hash: KeyHash,
    epoch: u64,
    asked: Option<Instant>,
    state: ReadState<P>,
}

/// What a miss found besides the absence of a fresh entry.
type Miss<P> = (Option<CacheError>, Option<Arc<P>>);

enum ReadState<P> {
    /// The entry (and its `PTTL`, when asked).
    Entry(Command<(Option<Bytes>, Option<i64>)>),
    /// A miss reading the versions its fill must match; with why, when the
    /// entry was there but undecodable, or the stale principal it holds.
    Version(Command<Version>, Miss<P>),
    Done,
}

impl<P: DeserializeOwned> Future for RedisRead<P> {
    type Output = Read<P>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                ReadState::Entry(command) => {
                    let found = ready!(command.as_mut().poll(cx));
                    let (raw, pttl) = match found {
                        Ok(found) => found,
                        Err(error) => {
                            this.state = ReadState::Done;
                            return Poll::Ready(Err(error));
                        }
                    };
                    let left = pttl.and_then(|ms| u64::try_from(ms).ok()).map(|ms| {
                        let asked = this.asked.map_or(Duration::ZERO, |t| t.elapsed());
                        Duration::from_millis(ms).saturating_sub(asked)
                    });
                    let miss = match this.cache.open(&this.hash, raw.as_deref()) {
                        Ok(stored) => match stored.at(codec::now_ms(), left) {
                            (Freshness::Fresh(verdict), left) => {
                                telemetry::cache_hit(Tier::L2);
                                this.state = ReadState::Done;
                                return Poll::Ready(Ok((CacheRead::Hit(verdict), left)));
                            }
                            (Freshness::Aging(principal), left) => {
                                telemetry::cache_hit(Tier::L2);
                                this.state = ReadState::Done;
                                return Poll::Ready(Ok((CacheRead::Aging(principal), left)));
                            }
                            (Freshness::Stale(principal), _) => (None, Some(principal)),
                            (Freshness::Gone, _) => (None, None),
                        },
                        Err(degraded) => (degraded, None),
                    };
                    let command = this.cache.read_version(&this.hash);
                    this.state = ReadState::Version(command, miss);
                }
                ReadState::Version(command, miss) => {
                    let version = ready!(command.as_mut().poll(cx));
                    let (degraded, stale) = std::mem::take(miss);
                    this.state = ReadState::Done;
                    let token = RedisToken {
                        epoch: this.epoch,
                        version: version?,
                    };
                    let miss = CacheRead::Miss {
                        token,
                        degraded,
                        stale,
                    };
                    return Poll::Ready(Ok((miss, None)));
                }
                ReadState::Done => return Poll::Pending,
            }
        }
    }
}

/// The `get` future of [`RedisCache`]: one `GET` for a hit; a miss also
/// reads the key's version (the fill's guard) before it answers.
pub struct RedisGet<P>(pub(super) RedisRead<P>);

impl<P> fmt::Debug for RedisGet<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisGet")
            .field("hash", &self.0.hash)
            .finish_non_exhaustive()
    }
}

impl<P: DeserializeOwned> Future for RedisGet<P> {
    type Output = Result<CacheRead<P, RedisToken>, CacheError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_ok(|(read, _)| read)
    }
}
