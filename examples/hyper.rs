//! `ApiKeyAuthLayer` on a plain hyper 1 server: no axum, the layer around a
//! `tower::service_fn`, served by hyper-util.
//!
//! ```sh
//! cargo run --example hyper
//! curl -i http://127.0.0.1:3001/                                 # 401
//! curl -i -H 'authorization: Bearer sk_demo_hyper' http://127.0.0.1:3001/   # 200
//! ```
//!
//! `PORT` (3001) picks the port. The handler reads the principal the layer
//! put into the request's extensions, as `Arc<Client>`. The key may only be
//! used from the loopback: each connection's peer address goes into its
//! requests as a `PeerAddr`, which the layer reads (axum's `ConnectInfo`
//! does this for axum).

use std::convert::Infallible;
use std::env;
use std::error::Error;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_api_key::cache::MemoryCache;
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, IpNet, KeyHash, PeerAddr, Principal};

/// The one key this example knows.
pub const KEY: &str = "sk_demo_hyper";

/// Whom a key belongs to, and where it may be used from.
#[derive(Clone, Debug)]
pub struct Client {
    pub name: String,
    pub networks: Vec<IpNet>,
}

impl Principal for Client {
    fn allowed_networks(&self) -> Option<&[IpNet]> {
        Some(&self.networks)
    }
}

/// The handler: only authenticated requests reach it.
async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let name = req
        .extensions()
        .get::<Arc<Client>>()
        .map_or("stranger", |client| client.name.as_str());
    Ok(Response::new(Full::from(format!("hello, {name}\n"))))
}

/// Serves `hello` behind the layer on every connection `listener` accepts.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let known = KeyHash::of(KEY);
    let auth = ApiKeyAuthLayer::new(
        MemoryCache::new(),
        lookup_fn(move |hash: KeyHash| async move {
            // Your key table here, queried by hash.
            Ok::<_, Infallible>((hash == known).then(|| {
                Client {
                    name: "hyper".into(),
                    networks: ["127.0.0.0/8", "::1/128"]
                        .iter()
                        .filter_map(|n| n.parse().ok())
                        .collect(),
                }
            }))
        }),
    );
    let service = ServiceBuilder::new()
        .layer(auth)
        .service(tower::service_fn(hello));
    loop {
        let (stream, peer) = listener.accept().await?;
        // The connection's peer, for keys with allowed networks.
        let service = ServiceBuilder::new()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req
            })
            .service(service.clone());
        let service = TowerToHyperService::new(service);
        tokio::spawn(async move {
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                eprintln!("connection failed: {error}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let port: u16 = env::var("PORT").map_or(Ok(3001), |p| p.parse())?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://{}; try: curl -H 'authorization: Bearer {KEY}' http://{0}/",
        listener.local_addr()?
    );
    Ok(serve(listener).await?)
}
