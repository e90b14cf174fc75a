//! The crate's connection to Redis, shared by every part that talks to it
//! (the cache, the tiered cache's L2 and subscriber, the rate-limit
//! counters): a fred pool built with this crate's reconnect policy and
//! connection timeouts, and one command run the crate's way.
//!
//! A command fails fast while the pool is disconnected, makes one attempt,
//! and is bounded by our own timeout (a tokio `Sleep` racing it): fred's
//! per-command timeout costs a third of the throughput under load (measured
//! in `benches/redis_hit.rs`).
//!
//! A command also fails at once when none of the pool's connections is up
//! (Redis killed or restarting: the client has seen its connections drop),
//! without waiting its timeout.
//!
//! Every command goes through the pool's circuit breaker: after a few
//! timeouts or connection failures in a row it opens, and commands fail at
//! once ([`Skipped`]) instead of each waiting out its timeout on a Redis that
//! holds the connection and answers nothing. While it is open a task of the
//! pool's own sends a `PING` every cooldown, and its answer closes the
//! breaker: no request is ever the probe. Error replies (a script error,
//! `WRONGTYPE`) are answers: they don't count.

use crate::telemetry::{self, Timer};
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fred::clients::{Client, Pool, WithOptions};
use fred::interfaces::{ClientLike, EventInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::config::Options;
use pin_project_lite::pin_project;

use crate::breaker::{Breaker, Skipped};

/// Default per-command timeout: a hung Redis costs a request this, not seconds.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// Default timeouts or connection failures in a row that open the breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 3;
/// Default time an open breaker lets no command through, before one probe.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

/// What a Redis connection's circuit breaker has done, from
/// [`RedisCache::health`](crate::cache::RedisCache::health) (and the
/// counters' and the tiered cache's, which share it when they share the
/// connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisHealth {
    /// Whether the breaker is open now: commands skip Redis.
    pub open: bool,
    /// Times it opened.
    pub opened: u64,
    /// Times a probe's answer closed it.
    pub closed: u64,
    /// Commands that skipped Redis while it was open (each a request, or a
    /// part of one, answered without Redis at once).
    pub skipped: u64,
    /// Whether any of the pool's connections is up, as far as the client
    /// knows: `false` from the moment every connection was seen to drop
    /// (Redis killed or restarting) until one is made again. Meanwhile
    /// every command fails at once.
    pub connected: bool,
}

/// A pool's breaker, what it has done, and the pool's connections (whose
/// state says whether Redis is known to be gone, and which the probe uses).
pub(crate) struct Health {
    breaker: Breaker,
    opened: AtomicU64,
    closed: AtomicU64,
    skipped: AtomicU64,
    connections: Vec<Connection>,
    /// A probe's `PING` waits at most this.
    timeout: Duration,
}

impl Health {
    fn new(failures: u32, cooldown: Duration, pool: &Pool, timeout: Duration) -> Self {
        Self {
            breaker: Breaker::new(failures, cooldown),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            connections: pool.clients().iter().map(Connection::new).collect(),
            timeout,
        }
    }

    /// Whether any connection of the pool is up. `false` once the client
    /// has seen every connection drop (and until one is back): a command
    /// then fails at once.
    fn any_connected(&self) -> bool {
        self.connections.is_empty() || self.connections.iter().any(Connection::up)
    }

    /// Tasks that mark each connection dropped when its client reports a
    /// drop, and up again when it reports a connection made: fred's own
    /// state says "connected" until its first attempt to reconnect (50 ms
    /// after the drop), and a command sent meanwhile would wait its
    /// timeout. Not on a cluster, whose client holds a connection per node
    /// and reports each node's drop apart (one node's drop, a reshard's,
    /// is not the client's), and none outside a Tokio runtime: fred's
    /// state alone then.
    fn watch(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for (i, connection) in self.connections.iter().enumerate() {
            if connection.client.is_clustered() {
                continue;
            }
            let (mut drops, mut made) = (
                connection.client.error_rx(),
                connection.client.reconnect_rx(),
            );
            let health = Arc::downgrade(self);
            runtime.spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    // Drops first: of a drop and a reconnection both
                    // waiting, the reconnection came last.
                    let dropped = tokio::select! {
                        biased;
                        error = drops.recv() => match error {
                            // A connection's reader failed: it dropped.
                            Ok((_, Some(_))) => true,
                            Ok((_, None)) | Err(RecvError::Lagged(_)) => continue,
                            Err(RecvError::Closed) => return,
                        },
                        server = made.recv() => match server {
                            Ok(_) | Err(RecvError::Lagged(_)) => false,
                            Err(RecvError::Closed) => return,
                        },
                    };
                    let Some(health) = health.upgrade() else {
                        return;
                    };
                    health.connections[i]
                        .dropped
                        .store(dropped, Ordering::Release);
                }
            });
        }
    }

    /// While the breaker is open: a task that `PING`s every cooldown and
    /// closes the breaker when Redis answers. One at a time; none outside a
    /// Tokio runtime (then a request probes, as the breaker does alone).
    fn probe(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.breaker.probing(true) {
            return;
        }
        let health = Arc::downgrade(self);
        let cooldown = self.breaker.cooldown();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(cooldown).await;
                let Some(health) = health.upgrade() else {
                    return;
                };
                // fred's state, not the drop marks: a mark a reconnection
                // never cleared (a cluster node gone for good) is cleared
                // by the PING's answer.
                let Some(connection) = health.connections.iter().find(|c| c.client.is_connected())
                else {
                    continue;
                };
                let ping = connection.client.ping::<fred::types::Value>(None);
                if let Ok(Ok(_)) = tokio::time::timeout(health.timeout, ping).await {
                    connection.dropped.store(false, Ordering::Release);
                    health.answered();
                    health.breaker.probing(false);
                    return;
                }
            }
        });
    }

    /// Whether a command may go to Redis now.
    fn admit(&self) -> bool {
        let admitted = self.breaker.allows();
        if !admitted {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    fn answered(&self) {
        if self.breaker.succeeded() {
            self.closed.fetch_add(1, Ordering::Relaxed);
            tracing::info!("Redis answered a probe: circuit breaker closed");
        }
    }

    fn failed(self: &Arc<Self>, why: &dyn std::fmt::Display) {
        if self.breaker.failed() {
            // Once per cooldown at most: it opens again only after a probe
            // closed it.
            self.opened.fetch_add(1, Ordering::Relaxed);
            let cooldown = self.breaker.cooldown();
            tracing::warn!(%why, ?cooldown, "Redis failing: circuit breaker opened; commands skip Redis, a PING per cooldown");
            self.probe();
        }
    }

    pub(crate) fn snapshot(&self) -> RedisHealth {
        RedisHealth {
            open: self.breaker.is_open(),
            opened: self.opened.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            connected: self.any_connected(),
        }
    }
}

/// One client of a pool, and whether it was seen to drop (see
/// [`Health::watch`]).
struct Connection {
    client: Client,
    dropped: AtomicBool,
}

impl Connection {
    fn new(client: &Client) -> Self {
        Self {
            client: client.clone(),
            dropped: AtomicBool::new(false),
        }
    }

    fn up(&self) -> bool {
        !self.dropped.load(Ordering::Acquire) && self.client.is_connected()
    }
}

/// Whether an error says Redis can't be reached (rather than that it
/// answered with an error).
///
/// Replies that say the server can't serve now (loading its data set, a
/// replica that won't write, its master down, a script blocking it) count
/// as the server being unreachable: asking it again at once would fail
/// the same way.
fn is_outage(error: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    const UNAVAILABLE: [&str; 6] = [
        "LOADING",
        "READONLY",
        "MASTERDOWN",
        "BUSY",
        "CLUSTERDOWN",
        "TRYAGAIN",
    ];
    matches!(
        error.kind(),
        ErrorKind::IO
            | ErrorKind::Canceled
            | ErrorKind::Timeout
            | ErrorKind::Routing
            | ErrorKind::Cluster
            | ErrorKind::Backpressure
            | ErrorKind::Protocol
    ) || UNAVAILABLE.iter().any(|reply| {
        error
            .details()
            .strip_prefix(reply)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
    })
}

/// Why a command or a connection failed, before its caller names it.
pub(crate) type Failure = Box<dyn StdError + Send + Sync>;

/// Where a pool connects.
pub(crate) enum Source {
    Url(String),
    Config(Box<Config>),
    /// A pool the user built, used as it is.
    Pool(Pool),
}

/// How a pool connects: where, with how many connections, how patiently.
pub(crate) struct PoolSettings {
    pub(crate) source: Source,
    pub(crate) pool_size: usize,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker_failures: u32,
    pub(crate) breaker_cooldown: Duration,
}

impl PoolSettings {
    /// The defaults: 4 connections, 100 ms commands, 2 s to connect, a
    /// breaker that opens after 3 failures and probes every second.
    pub(crate) fn new(source: Source) -> Self {
        Self {
            source,
            pool_size: 4,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: Duration::from_secs(2),
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
        }
    }

    /// Connects, waiting up to the connect timeout for the first connection.
    /// An unreachable Redis is not an error (the pool keeps reconnecting in
    /// the background; `what` says in the warning who goes without it
    /// meanwhile); a bad URL or configuration is.
    pub(crate) async fn connect(self, what: &str) -> Result<RedisPool, Failure> {
        let pool = match self.source {
            Source::Pool(pool) => pool,
            Source::Url(url) => build_pool(
                Config::from_url(&url)?,
                self.connect_timeout,
                self.pool_size,
            )?,
            Source::Config(config) => build_pool(*config, self.connect_timeout, self.pool_size)?,
        };
        if !pool.is_connected() {
            for client in pool.clients() {
                drive(client.clone());
            }
            let wait = tokio::time::timeout(self.connect_timeout, pool.wait_for_connect()).await;
            if !matches!(wait, Ok(Ok(()))) {
                tracing::warn!("Redis is not reachable yet; {what} until it is");
            }
        }
        let health = Arc::new(Health::new(
            self.breaker_failures,
            self.breaker_cooldown,
            &pool,
            self.command_timeout,
        ));
        health.watch();
        Ok(RedisPool {
            options: Options {
                fail_fast: true,
                max_attempts: Some(1),
                ..Options::default()
            },
            timeout: self.command_timeout,
            health,
            pool,
        })
    }

    /// A client of its own, set up as the pool's connections are, queueing
    /// up to `backlog` messages (a subscriber's), and how long it may take
    /// to connect.
    #[cfg(feature = "tiered")]
    pub(crate) fn subscriber(&self, backlog: usize) -> Result<(Client, Duration), Failure> {
        let config = match &self.source {
            Source::Url(url) => Config::from_url(url)?,
            Source::Config(config) => (**config).clone(),
            Source::Pool(_) => {
                return Err("a subscriber is built from a URL or a Config, not a pool".into())
            }
        };
        let client = client_builder(config, self.connect_timeout)
            .with_performance_config(|p| p.broadcast_channel_capacity = backlog)
            .build()?;
        Ok((client, self.connect_timeout))
    }
}

/// Drives a client's connection task, and starts it again whenever it ends
/// other than by `QUIT`. fred 10.1 ends the task when a command gets an
/// `ASK` redirection (a cluster's slots moving) with no attempt left for
/// it, which with this crate's one attempt is every `ASK`; the client then
/// still says "connected" and takes commands nobody answers, each waiting
/// out its timeout, for good (`tests/cluster_failover.rs`, the reshard).
/// A task that ends again at once waits longer each time (10 ms doubling
/// to a second).
fn drive(client: Client) {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(10);
        loop {
            let started = tokio::time::Instant::now();
            match client.connect().await {
                // QUIT, or the client closed on purpose.
                Ok(Ok(())) => return,
                Ok(Err(error)) if error.is_canceled() => return,
                // Another task drives it (its owner connected it too).
                Ok(Err(error)) if *error.kind() == fred::error::ErrorKind::Config => return,
                ended => {
                    tracing::warn!(?ended, "Redis connection task ended; starting it again");
                }
            }
            pause = if started.elapsed() > Duration::from_secs(1) {
                Duration::from_millis(10)
            } else {
                (pause * 2).min(Duration::from_secs(1))
            };
            tokio::time::sleep(pause).await;
        }
    });
}

fn build_pool(config: Config, connect_timeout: Duration, size: usize) -> Result<Pool, Failure> {
    Ok(client_builder(config, connect_timeout).build_pool(size)?)
}

/// A fred builder with this crate's connection settings: keep reconnecting
/// (also after a failed first attempt), forever, 50 ms doubling to 2 s
/// (fred's default never reconnects); bounded connection attempts.
fn client_builder(mut config: Config, connect_timeout: Duration) -> Builder {
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
            c.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    builder
}

/// A connected pool and how its commands run.
#[derive(Clone)]
pub(crate) struct RedisPool {
    pool: Pool,
    /// Fail fast while disconnected, one attempt (the timeout is ours).
    options: Options,
    timeout: Duration,
    health: Arc<Health>,
}

/// A boxed, bounded Redis command, its failure named `E`.
pub(crate) type Command<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl RedisPool {
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What the breaker has done.
    pub(crate) fn health(&self) -> RedisHealth {
        self.health.snapshot()
    }

    /// A client of the pool with the crate's command options.
    pub(crate) fn client(&self) -> WithOptions<Pool> {
        self.pool.with_options(&self.options)
    }

    /// One connection of the pool with the crate's command options (for what
    /// a pool has no interface for: pipelines, pub/sub, SCAN).
    pub(crate) fn one(&self) -> WithOptions<Client> {
        self.pool.next().with_options(&self.options)
    }

    /// A pipeline on one connection of the pool, with the crate's options.
    pub(crate) fn pipeline(&self) -> WithOptions<fred::clients::Pipeline<Client>> {
        self.pool.next().pipeline().with_options(&self.options)
    }

    /// One command, bounded by the command timeout, its failure named by
    /// `failed`.
    pub(crate) fn run<T, F, E>(&self, command: F, failed: fn(Failure) -> E) -> Bounded<F, E>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        Bounded {
            command,
            deadline: None,
            timeout: self.timeout,
            failed,
            health: Arc::clone(&self.health),
            started: false,
            timer: Timer::unstarted(),
        }
    }

    /// [`run`](Self::run), bounded by `timeout` instead (a batch's).
    pub(crate) fn run_within<T, F, E>(
        &self,
        timeout: Duration,
        command: F,
        failed: fn(Failure) -> E,
    ) -> Bounded<F, E>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        Bounded {
            timeout,
            ..self.run(command, failed)
        }
    }

    /// [`run`](Self::run), built straight into its box: fred's command
    /// futures are kilobytes, and moving them (into an async block, a
    /// timeout, a box) was the largest cost of a Redis hit
    /// (`benches/redis_hit.rs`).
    #[inline(always)]
    pub(crate) fn boxed<T, F, E>(
        &self,
        command: impl FnOnce() -> F,
        failed: fn(Failure) -> E,
    ) -> Command<T, E>
    where
        F: Future<Output = Result<T, fred::error::Error>> + Send + 'static,
        E: 'static,
    {
        let bounded: Box<Bounded<F, E>> =
            Box::write(Box::new_uninit(), self.run(command(), failed));
        Box::into_pin(bounded)
    }
}

/// `d` in whole milliseconds, at least one (Redis refuses a zero `PX`).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pin_project! {
    /// A command racing its deadline (set at the first poll, so that
    /// building one needs no runtime), behind the pool's breaker (asked at
    /// the first poll too).
    pub(crate) struct Bounded<F, E> {
        #[pin]
        command: F,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        timeout: Duration,
        failed: fn(Failure) -> E,
        health: Arc<Health>,
        started: bool,
        // For the command-latency histogram, from the first poll.
        timer: Timer,
    }
}

impl<T, F, E> Future for Bounded<F, E>
where
    F: Future<Output = Result<T, fred::error::Error>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.started {
            *this.started = true;
            if !this.health.admit() {
                return Poll::Ready(Err((this.failed)(Box::new(Skipped))));
            }
            // Every connection known to be down: no reason to wait.
            if !this.health.any_connected() {
                let why = "every Redis connection is down";
                this.health.failed(&why);
                return Poll::Ready(Err((this.failed)(why.into())));
            }
            *this.timer = Timer::start();
        }
        if let Poll::Ready(result) = this.command.poll(cx) {
            telemetry::redis_command_took(this.timer.elapsed());
            return Poll::Ready(
                result
                    .map_err(|e| {
                        if is_outage(&e) {
                            this.health.failed(&e);
                        } else {
                            this.health.answered();
                        }
                        (this.failed)(Box::new(e))
                    })
                    .inspect(|_| this.health.answered()),
            );
        }
        if this.deadline.is_none() {
            this.deadline.set(Some(tokio::time::sleep(*this.timeout)));
        }
        match this.deadline.as_pin_mut().map(|deadline| deadline.poll(cx)) {
            Some(Poll::Ready(())) => {
                telemetry::redis_command_took(this.timer.elapsed());
                let why = format!("Redis command timed out after {:?}", this.timeout);
                this.health.failed(&why);
                Poll::Ready(Err((this.failed)(why.into())))
            }
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_outage;
    use fred::error::{Error, ErrorKind};

    #[test]
    fn replies_of_a_server_that_cannot_serve_count_as_an_outage() {
        for reply in [
            "LOADING Redis is loading the dataset in memory",
            "READONLY You can't write against a read only replica.",
            "MASTERDOWN Link with MASTER is down",
            "BUSY Redis is busy running a script.",
            "CLUSTERDOWN The cluster is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
        ] {
            assert!(is_outage(&Error::new(ErrorKind::Unknown, reply)), "{reply}");
        }
        for reply in [
            "ERR unknown command",
            "WRONGTYPE Operation",
            "BUSYKEY Target key",
            "NOSCRIPT No matching script",
        ] {
            assert!(
                !is_outage(&Error::new(ErrorKind::Unknown, reply)),
                "{reply}"
            );
        }
        assert!(is_outage(&Error::new(ErrorKind::Timeout, "")));
    }
}
