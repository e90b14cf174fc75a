//! Background tasks the crate starts by itself: once, on the Tokio runtime
//! of the first request that needs one.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

/// Spawns `task()` on the current Tokio runtime unless `started` says it
/// already runs; outside a runtime, nothing (a later call tries again).
pub(crate) fn spawn_once<F>(started: &AtomicBool, task: impl FnOnce() -> F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if started.load(Ordering::Relaxed) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if started.swap(true, Ordering::AcqRel) {
        return;
    }
    runtime.spawn(task());
}
