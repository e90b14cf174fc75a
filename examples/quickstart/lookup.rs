//! The lookup the layer calls on a miss: the key table as a
//! `tower::Service<KeyHash>`, with the demo's two knobs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_api_key::KeyHash;

use crate::db::{ApiClient, Db, DbError};

/// The lookup the layer calls on a cache miss: a `tower::Service<KeyHash>`
/// over the key table, with the demo knobs.
#[derive(Clone)]
pub struct DbLookup {
    pub db: Db,
    /// `QUICKSTART_LOOKUP_DELAY_MS`: watch `coalesced` rise.
    pub delay: Duration,
    /// `QUICKSTART_LOOKUP_FAIL`: cached keys keep working, others get 503.
    pub fail: bool,
}

impl tower::Service<KeyHash> for DbLookup {
    type Response = Option<ApiClient>;
    type Error = DbError;
    type Future = Pin<Box<dyn Future<Output = Result<Option<ApiClient>, DbError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DbError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, hash: KeyHash) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if !this.delay.is_zero() {
                tokio::time::sleep(this.delay).await;
            }
            if this.fail {
                return Err(DbError("QUICKSTART_LOOKUP_FAIL is set".into()));
            }
            this.db.find_by_hash(hash).await
        })
    }
}
