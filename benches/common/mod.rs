//! What the benches share: the key and the request that carries it.

use bytes::Bytes;
use http::{header::AUTHORIZATION, HeaderValue, Request};
use http_body_util::Full;

pub const SECRET: &str = "sk_live_51HxBenchmarkKey0123456789abcdef";

/// `GET /v1/invoices` with `SECRET` as a bearer token.
pub fn request() -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = http::Uri::from_static("/v1/invoices");
    req.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer sk_live_51HxBenchmarkKey0123456789abcdef"),
    );
    req
}
