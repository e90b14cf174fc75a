//! The cache's commands: the crate's Redis commands (`redis_pool.rs`), their
//! failures named [`CacheError`].

use std::future::Future;

use fred::clients::{Pool, WithOptions};

use super::Inner;
use crate::cache::CacheError;
use crate::redis_pool::{Bounded, Failure};

/// A boxed, bounded Redis command of the cache.
pub(super) type Command<T> = crate::redis_pool::Command<T, CacheError>;

fn failed(failure: Failure) -> CacheError {
    CacheError::new(failure)
}

impl Inner {
    /// A client of the pool with the crate's command options.
    pub(super) fn client(&self) -> WithOptions<Pool> {
        self.pool.client()
    }

    /// One command, bounded by the command timeout.
    pub(super) fn run<T, F>(&self, command: F) -> Bounded<F, CacheError>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        self.pool.run(command, failed)
    }

    /// One command, bounded, built straight into its box (see
    /// `RedisPool::boxed`).
    #[inline(always)]
    pub(super) fn boxed<T, F>(&self, command: impl FnOnce() -> F) -> Command<T>
    where
        F: Future<Output = Result<T, fred::error::Error>> + Send + 'static,
    {
        self.pool.boxed(command, failed)
    }
}
