//! `ApiKeyAuthLayer` in front of a tonic gRPC service: the standard health
//! service (`grpc.health.v1.Health`, from `tonic-health`, so no `protoc`),
//! keys from an in-memory table, a rate limit on one of them.
//!
//! ```sh
//! cargo run --example grpc
//! ```
//!
//! It serves on `127.0.0.1:$GRPC_PORT` (50051), then calls itself with a
//! tonic client and prints what each call got: no key and an unknown key
//! are `UNAUTHENTICATED`, `sk_demo_alice` is `SERVING`, `sk_demo_bob`'s
//! fourth call in a minute is `RESOURCE_EXHAUSTED`. With
//! `GRPC_LOOKUP_FAIL=1` the key table fails and uncached keys get
//! `UNAVAILABLE`. A client sends its key as gRPC metadata,
//! `authorization: Bearer <key>`. A plain HTTP request (`curl
//! http://127.0.0.1:50051/grpc.health.v1.Health/Check`) gets the usual
//! problem+json `401`: the layer answers each client in its own protocol.

use std::collections::HashMap;
use std::env;
use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;
use tower_api_key::cache::MemoryCache;
use tower_api_key::ratelimit::{MemoryCounters, RateLimiter};
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Lookup, Principal, RateLimit};

/// A key with no rate limit.
pub const ALICE: &str = "sk_demo_alice";
/// A key with 3 calls a minute.
pub const BOB: &str = "sk_demo_bob";

/// Whom a key belongs to, and its limits.
#[derive(Clone, Debug)]
pub struct Client {
    pub name: String,
    limits: Vec<RateLimit>,
}

impl Principal for Client {
    fn rate_limits(&self) -> Option<&[RateLimit]> {
        Some(&self.limits) // empty: unlimited
    }
}

/// The key table, by hash; `failing` makes every lookup fail (a database
/// outage).
#[derive(Debug, Default)]
pub struct KeyTable {
    keys: HashMap<KeyHash, Client>,
    pub failing: AtomicBool,
}

/// The key table's failure.
#[derive(Debug, thiserror::Error)]
#[error("the key table is unreachable")]
pub struct TableDown;

impl KeyTable {
    /// Alice and Bob.
    pub fn demo() -> Self {
        let per_minute = RateLimit::new("per-minute", 3, Duration::from_secs(60)).expect("valid");
        let client = |name: &str, limits| Client {
            name: name.to_owned(),
            limits,
        };
        Self {
            keys: HashMap::from([
                (KeyHash::of(ALICE), client("alice", vec![])),
                (KeyHash::of(BOB), client("bob", vec![per_minute])),
            ]),
            failing: AtomicBool::new(false),
        }
    }

    fn find(&self, hash: &KeyHash) -> Result<Option<Client>, TableDown> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(TableDown);
        }
        Ok(self.keys.get(hash).cloned())
    }
}

/// The layer: a `MemoryCache` in front of the table, in-process rate-limit
/// counters.
pub fn auth_layer(
    table: Arc<KeyTable>,
) -> ApiKeyAuthLayer<MemoryCache<Client>, impl Lookup<Client>> {
    let lookup = lookup_fn(move |hash: KeyHash| {
        let table = Arc::clone(&table);
        async move { table.find(&hash) }
    });
    ApiKeyAuthLayer::new(MemoryCache::builder().max_capacity(10_000).build(), lookup)
        .negative_ttl(Duration::from_secs(30))
        .rate_limits(RateLimiter::new(MemoryCounters::new()))
}

/// Serves the health service behind `auth` until the listener fails.
pub async fn serve(
    listener: TcpListener,
    auth: ApiKeyAuthLayer<MemoryCache<Client>, impl Lookup<Client>>,
) -> Result<(), tonic::transport::Error> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let layer = ServiceBuilder::new()
        .layer(auth)
        // The layer's rejections are bodies made from `Bytes`; tonic's body
        // type is not, axum's is (and tonic takes any body).
        .map_response(|res: http::Response<tonic::body::Body>| res.map(axum::body::Body::new));
    Server::builder()
        .accept_http1(true) // so that plain HTTP clients see the layer's answers too
        .layer(layer)
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
}

/// One health check, with `key` as `authorization: Bearer <key>` metadata.
pub async fn check(channel: Channel, key: Option<&str>) -> Result<ServingStatus, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    if let Some(key) = key {
        let value = MetadataValue::try_from(format!("Bearer {key}"))
            .map_err(|_| tonic::Status::invalid_argument("not a metadata value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let response = HealthClient::new(channel).check(request).await?;
    Ok(response.into_inner().status())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let port: u16 = env::var("GRPC_PORT").map_or(Ok(50051), |p| p.parse())?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let table = Arc::new(KeyTable::demo());
    table.failing.store(
        env::var("GRPC_LOOKUP_FAIL").is_ok_and(|v| v == "1"),
        Ordering::Relaxed,
    );
    let server = tokio::spawn(serve(listener, auth_layer(table)));
    println!("gRPC health service on {addr}; keys {ALICE} (unlimited), {BOB} (3 a minute)");

    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let calls = [
        None,
        Some("sk_demo_nobody"),
        Some(ALICE),
        Some(BOB),
        Some(BOB),
        Some(BOB),
        Some(BOB),
    ];
    for key in calls {
        let shown = key.unwrap_or("(no key)");
        match check(channel.clone(), key).await {
            Ok(status) => println!("{shown}: {status:?}"),
            Err(status) => println!("{shown}: {:?}: {}", status.code(), status.message()),
        }
    }
    Ok(server.await??)
}
