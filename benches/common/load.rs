//! Load from many tasks at once: each runs an operation in a loop for a
//! round; throughput and latency percentiles of all of them.

use std::time::{Duration, Instant};

/// Concurrent tasks of a load round.
pub const TASKS: usize = 64;
/// How long a round lasts.
pub const ROUND: Duration = Duration::from_secs(1);

pub struct Run {
    pub ops_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// Runs `op` in `TASKS` concurrent loops for `ROUND`.
pub async fn load<F, Fut>(op: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                while start.elapsed() < ROUND {
                    let t = Instant::now();
                    op().await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    Run {
        ops_per_sec: all.len() as f64 / secs,
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
