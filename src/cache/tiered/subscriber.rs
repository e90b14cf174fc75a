//! The subscriber task: applies invalidation messages to L1, and empties L1
//! whenever the subscription was lost (messages may have been missed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::{Message, Value};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;

use super::invalidation::{Invalidation, Origin};
use super::Signals;
use crate::cache::tier::{FarTier, NearTier};
use crate::cache::{MemoryCache, RedisCache};
use crate::Principal;

/// How often a subscriber that lost its subscription tries again.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);
/// How often a subscribed connection is asked for a `PING`, and how long its
/// answer may take: a connection that died without a word (a dropped NAT
/// entry, a partition) is noticed within the sum.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// The subscriber task: applies invalidation messages to L1, and empties
/// L1 whenever the subscription was lost (messages may have been missed).
pub(super) struct Subscriber<P> {
    client: Client,
    l1: MemoryCache<P>,
    l2: RedisCache<P>,
    channel: String,
    signals: Arc<Signals>,
    /// This instance's, on the messages it sends.
    origin: Origin,
    timeout: Duration,
    messages: Receiver<Message>,
    reconnects: Receiver<fred::types::config::Server>,
    errors: Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
}

impl<P> Subscriber<P>
where
    P: Principal + serde::Serialize + serde::de::DeserializeOwned,
{
    /// Listens to `client`'s events from now on (before it connects, so that
    /// none is missed); `timeout` bounds each (re)subscription.
    pub(super) fn new(
        client: Client,
        l1: MemoryCache<P>,
        l2: RedisCache<P>,
        signals: Arc<Signals>,
        origin: Origin,
        timeout: Duration,
    ) -> Self {
        use fred::interfaces::EventInterface;
        Self {
            messages: client.message_rx(),
            reconnects: client.reconnect_rx(),
            errors: client.error_rx(),
            channel: l2.channel(),
            client,
            l1,
            l2,
            signals,
            origin,
            timeout,
        }
    }

    pub(super) async fn run(mut self) {
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
                    self.l1.invalidate_all_now();
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
            // Its own: applied already, before it was sent.
            Some((origin, _)) if origin == self.origin => {}
            Some((_, invalidation)) => {
                if invalidation == Invalidation::All {
                    // This instance's in-flight Redis fills can't write either.
                    self.l2.invalidate_all_tokens();
                }
                invalidation.apply(&self.l1);
            }
            // Unreadable: drop everything rather than keep something that
            // may be revoked.
            None => self.l1.invalidate_all_now(),
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

fn drain<T: Clone>(events: &mut Receiver<T>) {
    while !matches!(
        events.try_recv(),
        Err(TryRecvError::Empty | TryRecvError::Closed)
    ) {}
}
