//! Property tests of the three parsers a client or Redis can feed anything:
//! the key sources and route policy through the layer (a plain tower stack,
//! so policy is matched by the path), and the Redis value codec and seal
//! through the hidden `fuzzing` module. The fuzz targets in `fuzz/` check
//! the same invariants on arbitrary bytes.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};
use tower_api_key::cache::MemoryCache;
use tower_api_key::{ApiKeyAuthLayer, KeyHash, KeySource, Principal, RoutePolicy};

const KNOWN: &str = "sk_live_known_key_0123";
const CASES: u32 = 256;

struct Client;
impl Principal for Client {}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

/// A lookup that knows `KNOWN` and notes every hash it is asked for.
#[derive(Clone, Default)]
struct Known {
    asked: Arc<Mutex<Vec<KeyHash>>>,
}

impl tower::Service<KeyHash> for Known {
    type Response = Option<Client>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Option<Client>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, hash: KeyHash) -> Self::Future {
        self.asked.lock().unwrap().push(hash);
        std::future::ready(Ok((hash == KeyHash::of(KNOWN)).then_some(Client)))
    }
}

type Auth = ApiKeyAuthLayer<MemoryCache<Client>, Known>;

fn layer() -> (Auth, Arc<Mutex<Vec<KeyHash>>>) {
    let known = Known::default();
    let asked = known.asked.clone();
    (ApiKeyAuthLayer::new(MemoryCache::new(), known), asked)
}

async fn ok(_: Request<Bytes>) -> Result<Response<Bytes>, Infallible> {
    Ok(Response::new(Bytes::from_static(b"ok")))
}

/// The status of `req` through `layer`.
fn status(layer: &Auth, req: Request<Bytes>) -> StatusCode {
    let svc = layer.layer(service_fn(ok));
    runtime().block_on(svc.oneshot(req)).unwrap().status()
}

fn with_auth(value: &[u8]) -> Request<Bytes> {
    let mut req = Request::get("/v1/data").body(Bytes::new()).unwrap();
    req.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
    req
}

/// `b64token` (RFC 6750 §2.1): `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" /
/// "+" / "/" ) *"="`.
fn b64token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~+/-]{1,64}={0,3}"
}

fn is_b64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// "bearer" in a mixed case.
fn scheme() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<bool>(), 6).prop_map(|upper| {
        "bearer"
            .chars()
            .zip(upper)
            .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn the_bearer_scheme_is_case_insensitive(scheme in scheme(), spaces in 1usize..4) {
        let (layer, asked) = layer();
        let value = format!("{scheme}{}{KNOWN}", " ".repeat(spaces));
        prop_assert_eq!(status(&layer, with_auth(value.as_bytes())), StatusCode::OK);
        prop_assert_eq!(asked.lock().unwrap().clone(), [KeyHash::of(KNOWN)]);
    }

    #[test]
    fn a_valid_token_is_extracted_as_it_is(scheme in scheme(), token in b64token()) {
        let (layer, asked) = layer();
        let value = format!("{scheme} {token}");
        let want = if token == KNOWN { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
        prop_assert_eq!(status(&layer, with_auth(value.as_bytes())), want);
        prop_assert_eq!(asked.lock().unwrap().clone(), [KeyHash::of(&token)]);
    }

    #[test]
    fn a_byte_outside_the_token_grammar_is_400_never_200(
        prefix in "[A-Za-z0-9._~+/-]{1,16}",
        byte in any::<u8>().prop_filter("outside b64token, allowed in a header", |&b| {
            !is_b64_char(b) && (b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
        }),
        suffix in "[A-Za-z0-9._~+/-]{1,16}",
    ) {
        let (layer, asked) = layer();
        let mut value = format!("Bearer {prefix}").into_bytes();
        value.push(byte);
        value.extend_from_slice(suffix.as_bytes());
        prop_assert_eq!(status(&layer, with_auth(&value)), StatusCode::BAD_REQUEST);
        prop_assert!(asked.lock().unwrap().is_empty(), "a malformed key is never looked up");
    }

    #[test]
    fn a_key_over_the_length_limit_is_400(limit in 1usize..40, extra in 0usize..40) {
        let (layer, asked) = layer();
        let layer = layer.source(KeySource::bearer().max_length(limit));
        let key: String = KNOWN.chars().cycle().take(limit + extra).collect();
        let got = status(&layer, with_auth(format!("Bearer {key}").as_bytes()));
        if extra == 0 {
            prop_assert_ne!(got, StatusCode::BAD_REQUEST);
            prop_assert_eq!(got == StatusCode::OK, key == KNOWN);
        } else {
            prop_assert_eq!(got, StatusCode::BAD_REQUEST, "{} bytes, limit {}", key.len(), limit);
            prop_assert!(asked.lock().unwrap().is_empty());
        }
        // The known key itself, under a limit shorter than it: never 200.
        if limit < KNOWN.len() {
            prop_assert_eq!(
                status(&layer, with_auth(format!("Bearer {KNOWN}").as_bytes())),
                StatusCode::BAD_REQUEST
            );
        }
    }

    #[test]
    fn a_query_key_is_the_decoded_value_or_400(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48),
        "[ \t]{0,2}[!-~]{0,24}[ \t]{0,2}".prop_map(String::into_bytes),
    ]) {
        let (layer, asked) = layer();
        let layer = layer.source(KeySource::query("api_key"));
        let encoded: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
        let req = Request::get(format!("/v1/data?api_key={encoded}"))
            .body(Bytes::new())
            .unwrap();
        let trimmed = {
            let ows = |b: &u8| *b == b' ' || *b == b'\t';
            let start = bytes.iter().position(|b| !ows(b)).unwrap_or(bytes.len());
            let end = bytes.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
            &bytes[start..end]
        };
        let got = status(&layer, req);
        if trimmed.is_empty() || !trimmed.iter().all(u8::is_ascii_graphic) {
            prop_assert_eq!(got, StatusCode::BAD_REQUEST);
            prop_assert!(asked.lock().unwrap().is_empty());
        } else {
            prop_assert_eq!(got, StatusCode::UNAUTHORIZED);
            prop_assert_eq!(asked.lock().unwrap().clone(), [KeyHash::of(trimmed)]);
        }
    }
}

// Route policy on a plain tower stack: matched by the path.

fn route_layer() -> Auth {
    layer()
        .0
        .public("/health")
        .route_policy("/public/{*rest}", RoutePolicy::Public)
        .route_policy("/public/admin", RoutePolicy::Required)
        .optional("/docs/{page}")
        .route_policy("/docs/secret", RoutePolicy::Required)
        .method_policy(Method::GET, "/users/{id}", RoutePolicy::Public)
        .route_policy("/users/me", RoutePolicy::Required)
}

/// The policy the layer applies to `path`, seen from outside: without a key
/// a `Required` route answers 401; with a malformed key a `Public` one
/// passes (200) and an `Optional` one answers 400.
fn policy_of(layer: &Auth, path: &str) -> Option<RoutePolicy> {
    let anon = Request::get(path).body(Bytes::new()).ok()?;
    if status(layer, anon) == StatusCode::UNAUTHORIZED {
        return Some(RoutePolicy::Required);
    }
    let mut bad = Request::get(path).body(Bytes::new()).ok()?;
    bad.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer a b"));
    Some(match status(layer, bad) {
        StatusCode::OK => RoutePolicy::Public,
        StatusCode::BAD_REQUEST => RoutePolicy::Optional,
        other => panic!("{path}: {other}"),
    })
}

fn strictness(p: RoutePolicy) -> u8 {
    match p {
        RoutePolicy::Public => 0,
        RoutePolicy::Optional => 1,
        RoutePolicy::Required => 2,
    }
}

/// Paths near the table's templates.
fn route_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("health".to_owned()),
        Just("public".to_owned()),
        Just("admin".to_owned()),
        Just("docs".to_owned()),
        Just("secret".to_owned()),
        Just("users".to_owned()),
        Just("me".to_owned()),
        "[a-z0-9]{1,6}",
    ];
    let near = proptest::collection::vec(segment, 1..4).prop_map(|s| format!("/{}", s.join("/")));
    let routes = proptest::sample::select(vec![
        "/health",
        "/public/admin",
        "/public/a/b",
        "/docs/secret",
        "/docs/intro",
        "/users/me",
        "/users/42",
    ])
    .prop_map(str::to_owned);
    prop_oneof![2 => routes, 1 => near]
}

/// One way of spelling `path` differently: a byte percent-encoded (hex in
/// either case), a slash doubled, a trailing slash, a dot segment.
fn respell(path: &str, how: u8, at: usize, lower: bool) -> String {
    let at = at % path.len();
    match how % 5 {
        0 => {
            let b = path.as_bytes()[at];
            let enc = if lower {
                format!("%{b:02x}")
            } else {
                format!("%{b:02X}")
            };
            format!("{}{enc}{}", &path[..at], &path[at + 1..])
        }
        1 => {
            let slash = path[..=at].rfind('/').unwrap_or(0);
            format!("{}/{}", &path[..=slash], &path[slash + 1..])
        }
        2 => format!("{path}/"),
        3 => {
            let slash = path[..=at].rfind('/').unwrap_or(0);
            format!("{}./{}", &path[..=slash], &path[slash + 1..])
        }
        _ => {
            let slash = path[..=at].rfind('/').unwrap_or(0);
            format!("{}x/../{}", &path[..=slash], &path[slash + 1..])
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn a_respelled_path_is_never_less_protected(
        path in route_path(),
        how in any::<u8>(),
        at in any::<usize>(),
        lower in any::<bool>(),
    ) {
        let layer = route_layer();
        let other = respell(&path, how, at, lower);
        let (Some(policy), Some(respelled)) = (policy_of(&layer, &path), policy_of(&layer, &other)) else {
            return Ok(());
        };
        prop_assert!(
            strictness(respelled) >= strictness(policy),
            "{} is {:?}, {} is {:?}", path, policy, other, respelled
        );
    }
}

#[cfg(all(feature = "__fuzz", feature = "redis"))]
mod codec {
    use std::time::Duration;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};
    use tower_api_key::cache::{Ttl, Verdict};
    use tower_api_key::fuzzing::{self, Freshness, Seal};

    use super::CASES;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Client {
        id: u64,
        name: String,
        scopes: Vec<String>,
    }

    const NAME: &str = "apikey:{ab}";
    const OTHER: &str = "apikey:{cd}";

    fn client() -> impl Strategy<Value = Client> {
        (
            any::<u64>(),
            any::<String>(),
            proptest::collection::vec(any::<String>(), 0..3),
        )
            .prop_map(|(id, name, scopes)| Client { id, name, scopes })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn an_entry_decodes_to_what_was_encoded(
            client in client(),
            fresh in 1_000u64..10_000_000,
            refresh in 0u64..1_000,
            stale in 0u64..10_000_000,
            now in 0u64..(u64::MAX / 4),
        ) {
            let ttl = Ttl {
                fresh: Duration::from_millis(fresh),
                refresh: Duration::from_millis(refresh),
                stale: Duration::from_millis(stale),
            };
            let verdict = Verdict::Valid(std::sync::Arc::new(client));
            let raw = fuzzing::encode(&verdict, ttl, now).unwrap();
            let total = ttl.fresh + ttl.stale;
            let (back, freshness, left) =
                fuzzing::decode_at::<Client>(raw.as_bytes(), now, Some(total)).unwrap();
            match (&verdict, back) {
                (Verdict::Valid(a), Verdict::Valid(b)) => prop_assert_eq!(&**a, &*b),
                _ => prop_assert!(false, "not a valid verdict"),
            }
            prop_assert_eq!(freshness, Freshness::Fresh);
            prop_assert_eq!(left, Some(ttl));

            let invalid = fuzzing::encode::<Client>(&Verdict::Invalid, ttl, now).unwrap();
            prop_assert!(matches!(
                fuzzing::decode::<Client>(Some(invalid.as_bytes())),
                Ok(Verdict::Invalid)
            ));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            raw in proptest::collection::vec(any::<u8>(), 0..256),
            now in any::<u64>(),
            left in proptest::option::of(any::<u64>()),
        ) {
            let _ = fuzzing::decode::<serde_json::Value>(Some(&raw));
            let _ = fuzzing::decode::<Client>(Some(&raw));
            let _ = fuzzing::decode_at::<Client>(&raw, now, left.map(Duration::from_millis));
            let _ = fuzzing::unsealed(&raw);
            prop_assert!(Seal::new(b"secret").open(NAME, &raw).is_err());
        }

        #[test]
        fn a_sealed_value_with_one_byte_changed_is_refused(
            envelope in any::<String>(),
            at in any::<usize>(),
            bit in 0u8..8,
        ) {
            let seal = Seal::new(b"secret");
            let sealed = seal.seal(NAME, &envelope);
            prop_assert_eq!(seal.open(NAME, sealed.as_bytes()), Ok(envelope.as_bytes()));
            prop_assert!(seal.open(OTHER, sealed.as_bytes()).is_err());
            prop_assert!(Seal::new(b"other").open(NAME, sealed.as_bytes()).is_err());
            let mut changed = sealed.into_bytes();
            let at = at % changed.len();
            changed[at] ^= 1 << bit;
            prop_assert!(
                seal.open(NAME, &changed).is_err(),
                "byte {} changed: {:?}", at, String::from_utf8_lossy(&changed)
            );
        }
    }
}
