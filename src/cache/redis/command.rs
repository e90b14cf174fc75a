//! Running one command: fail fast while disconnected, one attempt, bounded
//! by the command timeout.
//!
//! The timeout is ours (a tokio `Sleep` racing the command): fred's
//! per-command timeout costs a third of the throughput under load (measured
//! in `benches/redis_hit.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use fred::clients::{Pool, WithOptions};
use fred::interfaces::ClientLike;
use pin_project_lite::pin_project;

use super::Inner;
use crate::cache::CacheError;

/// A boxed, bounded Redis command.
pub(super) type Command<T> = Pin<Box<dyn Future<Output = Result<T, CacheError>> + Send>>;

impl Inner {
    /// A client of the pool with this cache's command options.
    pub(super) fn client(&self) -> WithOptions<Pool> {
        self.pool.with_options(&self.options)
    }

    /// One command, bounded by the command timeout.
    pub(super) fn run<T, F>(&self, command: F) -> Bounded<F>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        Bounded {
            command,
            deadline: None,
            timeout: self.timeout,
        }
    }

    /// [`run`](Self::run), built straight into its box: fred's command
    /// futures are kilobytes, and moving them (into an async block, a
    /// timeout, a box) was the largest cost of a Redis hit
    /// (`benches/redis_hit.rs`).
    #[inline(always)]
    pub(super) fn boxed<T, F>(&self, command: impl FnOnce() -> F) -> Command<T>
    where
        F: Future<Output = Result<T, fred::error::Error>> + Send + 'static,
    {
        let bounded: Box<Bounded<F>> = Box::write(Box::new_uninit(), self.run(command()));
        Box::into_pin(bounded)
    }
}

/// `d` in whole milliseconds, at least one (Redis refuses a zero `PX`).
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pin_project! {
    /// A command racing its deadline (set at the first poll, so that
    /// building one needs no runtime).
    pub(super) struct Bounded<F> {
        #[pin]
        command: F,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        timeout: Duration,
    }
}

impl<T, F> Future for Bounded<F>
where
    F: Future<Output = Result<T, fred::error::Error>>,
{
    type Output = Result<T, CacheError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.command.poll(cx) {
            return Poll::Ready(result.map_err(CacheError::new));
        }
        if this.deadline.is_none() {
            this.deadline.set(Some(tokio::time::sleep(*this.timeout)));
        }
        match this.deadline.as_pin_mut().map(|deadline| deadline.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(CacheError::new(format!(
                "Redis command timed out after {:?}",
                this.timeout
            )))),
            _ => Poll::Pending,
        }
    }
}
