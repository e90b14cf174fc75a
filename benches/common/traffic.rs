//! The traffic of the in-process benches: 100,000 keys, and which key each
//! request carries (one hot key, every key in turn, Zipf(1.0)).

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use http_body_util::Full;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tower_api_key::KeyHash;

pub const KEYS: usize = 100_000;
pub const SEQUENCE: usize = 1 << 20;

/// The keys: their secrets as `Bearer` header values (static, so cloning
/// one costs no reference count) and their hashes.
pub struct Keys {
    pub headers: Vec<HeaderValue>,
    pub hashes: Vec<KeyHash>,
}

pub fn keys() -> Keys {
    let secrets: Vec<&'static str> = (0..KEYS)
        .map(|i| &*Box::leak(format!("sk_live_{i:08}_0123456789abcdefghij").into_boxed_str()))
        .collect();
    let headers = secrets
        .iter()
        .map(|s| HeaderValue::from_static(Box::leak(format!("Bearer {s}").into_boxed_str())))
        .collect();
    let hashes = secrets.iter().map(KeyHash::of).collect();
    Keys { headers, hashes }
}

/// Which key each request carries.
pub fn sequences() -> [(&'static str, Vec<u32>); 3] {
    let mut rng = StdRng::seed_from_u64(7);
    let mut order: Vec<u32> = (0..KEYS as u32).collect();
    order.shuffle(&mut rng);
    // Zipf(1.0): rank r (1-based) with weight 1/r, ranks mapped to keys in
    // a shuffled order, drawn by inverting the cumulative weights.
    let mut cumulative = Vec::with_capacity(KEYS);
    let mut total = 0.0;
    for rank in 1..=KEYS {
        total += 1.0 / rank as f64;
        cumulative.push(total);
    }
    let zipf = (0..SEQUENCE)
        .map(|_| {
            let u = rng.random::<f64>() * total;
            order[cumulative.partition_point(|&c| c < u).min(KEYS - 1)]
        })
        .collect();
    let rotating = (0..SEQUENCE).map(|i| order[i % KEYS]).collect();
    [
        ("hot", vec![order[0]; SEQUENCE]),
        ("rotating", rotating),
        ("zipf", zipf),
    ]
}

/// `GET /v1/invoices` carrying `header`.
pub fn request(header: &HeaderValue) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = http::Uri::from_static("/v1/invoices");
    req.headers_mut().insert(AUTHORIZATION, header.clone());
    req
}

/// Sends one request per key through `svc` on a runtime of its own: every
/// key looked up once, and cached.
pub fn warm<S, B>(svc: &mut S, keys: &Keys)
where
    S: tower::Service<Request<Full<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for header in &keys.headers {
            let res = svc
                .ready()
                .await
                .expect("ready")
                .call(request(header))
                .await;
            assert_eq!(res.expect("answered").status(), 200);
        }
    });
}
