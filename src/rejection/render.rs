//! How a rejection is rendered: the RFC 6750 challenge, the RFC 9457
//! problem+json body, and the trailers-only gRPC answer.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};
use serde::Serialize;

use super::{AuthRejection, Challenge, RejectionKind};
use crate::RateLimit;

/// `grpc-status`: the response header of a trailers-only gRPC answer.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the status's message, percent-encoded.
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'static str,
    #[serde(rename = "violated-policies", skip_serializing_if = "Vec::is_empty")]
    violated_policies: Vec<&'a str>,
    /// For `insufficient_scope`: the route's whole rule (`a AND (b OR c)`),
    /// never the scopes the key has.
    #[serde(skip_serializing_if = "Option::is_none")]
    required_scopes: Option<&'a str>,
}

impl AuthRejection {
    /// The `WWW-Authenticate` challenge: on 400 and 401, and on the 403 of
    /// a missing scope (RFC 6750 §3.1: `error="insufficient_scope"` and the
    /// `scope` that would pass).
    pub fn www_authenticate(&self) -> Option<HeaderValue> {
        let config = self.config();
        let challenge = match self.status() {
            StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST => true,
            _ => self.kind == RejectionKind::InsufficientScope,
        };
        if !challenge {
            return None;
        }
        let mut value = match &config.scheme {
            Challenge::Bearer => format!("Bearer realm=\"{}\"", config.realm),
            Challenge::ApiKey(param) => format!("ApiKey realm=\"{}\", {param}", config.realm),
        };
        match (self.oauth_error(), self.requirement()) {
            (Some(error), Some(requirement)) => {
                value.push_str(&format!(", error=\"{error}\""));
                if !requirement.challenge.is_empty() {
                    value.push_str(&format!(", scope=\"{}\"", requirement.challenge));
                }
            }
            (Some(error), None) => value.push_str(&format!(
                ", error=\"{error}\", error_description=\"{}\"",
                self.detail()
            )),
            (None, _) => {}
        }
        // The realm was sanitised when it was set, scopes are scope tokens
        // and the rest is ours.
        HeaderValue::from_str(&value).ok()
    }

    /// The standard rendering: status, `WWW-Authenticate` or `Retry-After`,
    /// and an RFC 9457 problem+json body; for a gRPC request
    /// ([`is_grpc`](Self::is_grpc)), a trailers-only gRPC response.
    pub fn default_response(&self) -> Response<Bytes> {
        if self.grpc {
            return self.grpc_response();
        }
        let status = self.status();
        let problem = Problem {
            kind: match self.kind {
                RejectionKind::RateLimited => {
                    "https://iana.org/assignments/http-problem-types#quota-exceeded"
                }
                _ => "about:blank",
            },
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
            code: self.code(),
            violated_policies: self
                .rate_limit()
                .map(|s| s.violated().map(RateLimit::name).collect())
                .unwrap_or_default(),
            required_scopes: self.requirement().and_then(|r| r.rule.as_deref()),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = Response::new(Bytes::from(body));
        *res.status_mut() = status;
        let headers = res.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(challenge) = self.www_authenticate() {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        self.write_retry_headers(headers);
        res
    }

    /// The gRPC rendering: `200`, `grpc-status`, `grpc-message`, no body
    /// (trailers-only: every field goes in the one HEADERS frame).
    fn grpc_response(&self) -> Response<Bytes> {
        let mut res = Response::new(Bytes::new());
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(GRPC_STATUS, HeaderValue::from(self.grpc_status()));
        // Percent-encoded, so visible ASCII: always a valid header value.
        if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(self.detail())) {
            headers.insert(GRPC_MESSAGE, message);
        }
        self.write_retry_headers(headers);
        res
    }

    /// `Retry-After` (on 503 and 429) and the rate-limit fields (on 429).
    fn write_retry_headers(&self, headers: &mut HeaderMap) {
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some((status, fields)) = self.rate_limit_fields() {
            headers.extend(status.headers(fields));
        }
    }
}

/// Whether a request is gRPC: `content-type` is `application/grpc`, alone
/// or followed by `+` (`+proto`, `+json`) or `;` (parameters), in any case.
/// `application/grpc-web…` is not: its clients expect another framing.
pub(super) fn is_grpc_request(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// `grpc-message`'s encoding (gRPC over HTTP/2, "Percent-Encoded"): the
/// bytes of the UTF-8 string from space to `~` except `%` stay as they are,
/// every other byte is `%XX` (upper-case hex).
pub(super) fn grpc_percent_encode(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

/// Keeps a realm inside its quoted-string: printable ASCII without `"` or `\`.
pub(crate) fn sanitize_realm(realm: &str) -> String {
    realm
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
        .collect()
}
