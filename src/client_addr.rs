//! [`ClientAddress`]: where the client's IP address comes from, for keys
//! that may only be used from some networks
//! ([`Principal::allowed_networks`](crate::Principal::allowed_networks)).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{HeaderName, FORWARDED};
use http::{Extensions, HeaderMap};
use ipnet::IpNet;

/// `X-Forwarded-For`.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The most trusted hops walked through before the address is given up as
/// unknown: a header of a thousand trusted entries costs no more than this.
const MAX_HOPS: usize = 32;

/// How the layer finds the client's address, for keys that report
/// [`allowed_networks`](crate::Principal::allowed_networks).
///
/// By default it is the connection's peer: axum's
/// `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), or a
/// [`PeerAddr`] that your hyper or tonic server puts in the request's
/// extensions; [`peer_from`](Self::peer_from) reads another extension.
/// Forwarded headers are ignored unless the peer is one of the
/// [`trusted_proxies`](Self::trusted_proxies): then the chain in
/// `X-Forwarded-For` (or RFC 7239's `Forwarded`, if you choose that header)
/// is walked from the right, past every hop that is itself a trusted proxy,
/// and the first hop that isn't is the client. A client can write what it
/// likes at the left end of the chain; only what your proxies appended is
/// read. IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are their IPv4
/// address, to networks and proxies alike.
///
/// When the address can't be known (no peer, a malformed or `unknown` hop
/// where the client should be, more than 32 trusted hops), a key with an
/// allowlist is refused (`403 address_not_allowed`); keys without one
/// never ask.
///
/// ```
/// use tower_api_key::{ClientAddress, ForwardedHeader};
///
/// // Behind a load balancer in 10.0.0.0/8 that appends to X-Forwarded-For.
/// let address = ClientAddress::peer()
///     .trusted_proxies(["10.0.0.0/8".parse().unwrap()]);
/// // Behind a proxy that writes RFC 7239's Forwarded instead.
/// let rfc7239 = ClientAddress::peer()
///     .trusted_proxies(["192.0.2.0/24".parse().unwrap()])
///     .forwarded_header(ForwardedHeader::Forwarded);
/// # let _ = (address, rfc7239);
/// ```
#[derive(Clone, Default)]
pub struct ClientAddress {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
    peer: Option<PeerFn>,
}

type PeerFn = Arc<dyn Fn(&Extensions) -> Option<IpAddr> + Send + Sync>;

/// Which header a trusted proxy writes the chain of addresses into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default: nginx,
    /// HAProxy, Envoy, cloud load balancers). An entry may carry a port
    /// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`; `for="[2001:db8::1]:4711"`
    /// is read, `for=unknown` or an obfuscated name is an unknown client.
    Forwarded,
}

/// The connection's peer address, for a server that is not axum: put it in
/// each request's extensions and the layer reads it (axum's
/// `ConnectInfo<SocketAddr>` is read without it).
///
/// ```
/// use std::net::SocketAddr;
/// use tower_api_key::PeerAddr;
///
/// # let remote: SocketAddr = "192.0.2.1:4711".parse().unwrap();
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(PeerAddr(remote)); // from hyper's accept loop
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// What [`ClientAddress::resolve`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// The client's address.
    Addr(IpAddr),
    /// No peer address in the request: nothing tells the layer where
    /// requests come from (a setup to warn about).
    NoPeer,
    /// The chain doesn't say who the client is (a malformed or `unknown`
    /// hop, too many trusted ones).
    Unknown,
}

impl ClientAddress {
    /// The connection's peer, no forwarded header believed (the default).
    pub fn peer() -> Self {
        Self::default()
    }

    /// Believes the forwarded header when the peer, and each hop after it,
    /// is in one of `proxies` (your load balancers and reverse proxies).
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted = proxies.into_iter().map(|net| net.trunc()).collect();
        self
    }

    /// The header the trusted proxies write (default
    /// [`ForwardedHeader::XForwardedFor`]). Only one is read: a client could
    /// send the other past a proxy that doesn't clean it.
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Reads the peer address from the request's extensions with `peer`
    /// instead of [`PeerAddr`] and axum's `ConnectInfo`; for tonic:
    ///
    /// ```
    /// # use tower_api_key::ClientAddress;
    /// # #[derive(Clone)] struct TcpConnectInfo(Option<std::net::SocketAddr>);
    /// # impl TcpConnectInfo { fn remote_addr(&self) -> Option<std::net::SocketAddr> { self.0 } }
    /// let address = ClientAddress::peer().peer_from(|ext| {
    ///     ext.get::<TcpConnectInfo>()?.remote_addr().map(|a| a.ip())
    /// });
    /// # let _ = address;
    /// ```
    pub fn peer_from<F>(mut self, peer: F) -> Self
    where
        F: Fn(&Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    {
        self.peer = Some(Arc::new(peer));
        self
    }

    fn peer_of(&self, extensions: &Extensions) -> Option<IpAddr> {
        if let Some(peer) = &self.peer {
            return peer(extensions);
        }
        if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
            return Some(addr.ip());
        }
        #[cfg(feature = "axum")]
        if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Some(info.0.ip());
        }
        None
    }

    /// The client's address: the peer, or through trusted proxies the first
    /// hop from the right that is not one.
    pub(crate) fn resolve<B>(&self, req: &http::Request<B>) -> Found {
        let Some(peer) = self.peer_of(req.extensions()) else {
            return Found::NoPeer;
        };
        let mut addr = canonical(peer);
        if self.trusted.is_empty() {
            return Found::Addr(addr);
        }
        let mut hops = Hops::new(req.headers(), self.header);
        for _ in 0..MAX_HOPS {
            if !self.is_trusted(addr) {
                return Found::Addr(addr);
            }
            match hops.next() {
                // The chain's left end: the proxy was the client.
                None => return Found::Addr(addr),
                Some(Some(hop)) => addr = canonical(hop),
                Some(None) => return Found::Unknown,
            }
        }
        if self.is_trusted(addr) {
            Found::Unknown
        } else {
            Found::Addr(addr)
        }
    }

    fn is_trusted(&self, addr: IpAddr) -> bool {
        self.trusted.iter().any(|net| contains(net, addr))
    }
}

impl fmt::Debug for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAddress")
            .field("trusted_proxies", &self.trusted)
            .field("forwarded_header", &self.header)
            .field("custom_peer", &self.peer.is_some())
            .finish()
    }
}

/// Whether `addr` may use a key limited to `networks`.
#[inline]
pub(crate) fn allows(networks: &[IpNet], addr: IpAddr) -> bool {
    networks.iter().any(|net| contains(net, addr))
}

/// `net` contains `addr` (canonical: an IPv4-mapped address is IPv4), also
/// an IPv4 address inside an IPv6 network written in the IPv4-mapped range
/// (`::ffff:10.0.0.0/104`); a wider IPv6 network (`::/0`) holds no IPv4
/// address.
#[inline]
fn contains(net: &IpNet, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpNet::V4(net), IpAddr::V4(a)) => same_prefix(
            u32::from(net.addr()).into(),
            u32::from(a).into(),
            96 + net.prefix_len(),
        ),
        (IpNet::V6(net), IpAddr::V6(a)) => {
            same_prefix(u128::from(net.addr()), u128::from(a), net.prefix_len())
        }
        (IpNet::V6(net), IpAddr::V4(a)) => {
            let mapped = u128::from(a.to_ipv6_mapped());
            net.prefix_len() >= 96 && same_prefix(u128::from(net.addr()), mapped, net.prefix_len())
        }
        (IpNet::V4(_), IpAddr::V6(_)) => false,
    }
}

/// Whether `a` and `b` agree on their first `bits` bits (of 128; an IPv4
/// address is in the low 32, so its prefix is 96 + its length).
#[inline]
fn same_prefix(a: u128, b: u128, bits: u8) -> bool {
    (a ^ b)
        .checked_shr(128 - u32::from(bits.min(128)))
        .unwrap_or(0)
        == 0
}

/// An IPv4-mapped IPv6 address as its IPv4 address.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The hops of the forwarded chain, rightmost first: `Some(addr)`, or
/// `None` for a hop that is not an address. Every line of the header, last
/// line first; entries split at every comma (a quoted comma only makes the
/// client's own part unreadable, never a proxy's).
struct Hops<'a> {
    lines: std::iter::Rev<http::header::ValueIter<'a, http::HeaderValue>>,
    line: Option<Entries<'a>>,
    header: ForwardedHeader,
}

/// One header line's entries, the last first.
type Entries<'a> = std::iter::Rev<std::slice::Split<'a, u8, fn(&u8) -> bool>>;

impl<'a> Hops<'a> {
    fn new(headers: &'a HeaderMap, header: ForwardedHeader) -> Self {
        let name = match header {
            ForwardedHeader::XForwardedFor => &X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => &FORWARDED,
        };
        Self {
            lines: headers.get_all(name).iter().rev(),
            line: None,
            header,
        }
    }
}

impl Iterator for Hops<'_> {
    type Item = Option<IpAddr>;

    fn next(&mut self) -> Option<Option<IpAddr>> {
        loop {
            if let Some(entry) = self.line.as_mut().and_then(Iterator::next) {
                // An entry that is not text can't be read; the entries
                // right of it (a proxy's) still can.
                let Ok(entry) = std::str::from_utf8(entry) else {
                    return Some(None);
                };
                return Some(match self.header {
                    ForwardedHeader::XForwardedFor => parse_node(entry.trim()),
                    ForwardedHeader::Forwarded => forwarded_for(entry),
                });
            }
            let comma: fn(&u8) -> bool = |b| *b == b',';
            self.line = Some(self.lines.next()?.as_bytes().split(comma).rev());
        }
    }
}

/// The `for=` of one RFC 7239 element (`for=192.0.2.1;proto=https`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    parse_node(value)
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (v6, port) = rest.split_once(']')?;
        if !(port.is_empty() || is_port(port.strip_prefix(':')?)) {
            return None;
        }
        return v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(addr);
    }
    let (v4, port) = node.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(port: &str) -> bool {
    port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn request(peer: Option<&str>, header: &'static str, values: &[&str]) -> Request<()> {
        let mut req = Request::new(());
        if let Some(peer) = peer {
            req.extensions_mut()
                .insert(PeerAddr(SocketAddr::new(ip(peer), 4711)));
        }
        for v in values {
            req.headers_mut()
                .append(header, HeaderValue::from_str(v).unwrap());
        }
        req
    }

    #[test]
    fn networks_match_both_families_and_mapped_addresses() {
        let nets = [net("127.0.0.0/8"), net("2001:db8::/32")];
        assert!(allows(&nets, ip("127.0.0.1")));
        assert!(allows(&nets, ip("2001:db8::5")));
        assert!(!allows(&nets, ip("10.0.0.1")));
        assert!(!allows(&nets, ip("::1")));
        // A mapped address is its IPv4 address, once made canonical.
        assert!(allows(&nets, canonical(ip("::ffff:127.0.0.1"))));
        // An IPv4 address inside a mapped IPv6 network, and only there.
        assert!(allows(&[net("::ffff:10.0.0.0/104")], ip("10.1.2.3")));
        assert!(!allows(&[net("::ffff:10.0.0.0/104")], ip("11.1.2.3")));
        assert!(allows(&[net("::ffff:0:0/96")], ip("198.51.100.1")));
        assert!(!allows(&[net("::/0")], ip("198.51.100.1")));
        assert!(!allows(&[net("::/64")], ip("0.0.0.1")));
        assert!(!allows(&[], ip("127.0.0.1")));
        // Edges: whole families, single addresses, host bits in the network.
        assert!(allows(&[net("0.0.0.0/0")], ip("198.51.100.1")));
        assert!(!allows(&[net("0.0.0.0/0")], ip("2001:db8::1")));
        assert!(allows(&[net("::/0")], ip("2001:db8::1")));
        assert!(allows(&[net("192.0.2.7/32")], ip("192.0.2.7")));
        assert!(!allows(&[net("192.0.2.7/32")], ip("192.0.2.8")));
        assert!(allows(&[net("10.9.9.9/8")], ip("10.1.2.3")));
        assert!(!allows(&[net("10.9.9.9/8")], ip("11.1.2.3")));
        assert!(allows(&[net("2001:db8::1/128")], ip("2001:db8::1")));
        assert!(!allows(&[net("2001:db8::1/128")], ip("2001:db8::2")));
        assert!(allows(&[net("2001:db8::/31")], ip("2001:db9::1")));
        assert!(!allows(&[net("2001:db8::/32")], ip("2001:db9::1")));
        // Every prefix length agrees with ipnet's own check.
        for len in 0..=32u8 {
            let n = IpNet::V4(ipnet::Ipv4Net::new("203.0.113.77".parse().unwrap(), len).unwrap());
            for a in [
                "203.0.113.77",
                "203.0.113.1",
                "203.0.112.1",
                "0.0.0.0",
                "255.255.255.255",
            ] {
                let a: std::net::Ipv4Addr = a.parse().unwrap();
                assert_eq!(
                    allows(&[n], IpAddr::V4(a)),
                    n.contains(&IpAddr::V4(a)),
                    "{n} {a}"
                );
            }
        }
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let address = ClientAddress::peer();
        let req = request(Some("192.0.2.1"), "x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(address.resolve(&req), Found::Addr(ip("192.0.2.1")));
        let mapped = request(Some("::ffff:192.0.2.1"), "x-forwarded-for", &[]);
        assert_eq!(address.resolve(&mapped), Found::Addr(ip("192.0.2.1")));
        assert_eq!(address.resolve(&request(None, "x", &[])), Found::NoPeer);
    }

    #[test]
    fn an_untrusted_peer_is_never_believed() {
        let address = ClientAddress::peer().trusted_proxies([net("10.0.0.0/8")]);
        let spoofed = request(Some("198.51.100.7"), "x-forwarded-for", &["127.0.0.1"]);
        assert_eq!(address.resolve(&spoofed), Found::Addr(ip("198.51.100.7")));
    }

    #[test]
    fn the_chain_is_walked_from_the_right_to_the_first_untrusted_hop() {
        let address = ClientAddress::peer().trusted_proxies([net("10.0.0.0/8"), net("fd00::/8")]);
        // client (forged left part), real client, proxy 2; peer is proxy 1.
        let req = request(
            Some("10.0.0.1"),
            "x-forwarded-for",
            &["127.0.0.1, 203.0.113.9", "10.0.0.2"],
        );
        assert_eq!(address.resolve(&req), Found::Addr(ip("203.0.113.9")));
        // Ports, brackets and IPv6 hops.
        let req = request(
            Some("fd00::1"),
            "x-forwarded-for",
            &["[2001:db8::7]:4711, 10.0.0.3:80"],
        );
        assert_eq!(address.resolve(&req), Found::Addr(ip("2001:db8::7")));
        // Every hop trusted: the leftmost is the client.
        let req = request(Some("10.0.0.1"), "x-forwarded-for", &["10.0.0.9"]);
        assert_eq!(address.resolve(&req), Found::Addr(ip("10.0.0.9")));
        // A trusted peer and no header: the peer.
        let req = request(Some("10.0.0.1"), "x-forwarded-for", &[]);
        assert_eq!(address.resolve(&req), Found::Addr(ip("10.0.0.1")));
    }

    #[test]
    fn an_unreadable_hop_where_the_client_should_be_is_unknown() {
        let address = ClientAddress::peer().trusted_proxies([net("10.0.0.0/8")]);
        for chain in [
            "unknown",
            "",
            "1.2.3",
            "203.0.113.9:99999",
            "[2001:db8::1",
            "2001:db8::1]:80",
            "203.0.113.9 , garbage",
            "\"203.0.113.9\"",
        ] {
            let req = request(Some("10.0.0.1"), "x-forwarded-for", &[chain]);
            assert_eq!(address.resolve(&req), Found::Unknown, "{chain:?}");
        }
        // A forged part left of the client is never read.
        let req = request(
            Some("10.0.0.1"),
            "x-forwarded-for",
            &["\"garbage, 203.0.113.9"],
        );
        assert_eq!(address.resolve(&req), Found::Addr(ip("203.0.113.9")));
        // Non-ASCII bytes in the header: that hop is unknown, a proxy's
        // entry right of it is still read.
        let mut req = request(Some("10.0.0.1"), "x-forwarded-for", &[]);
        req.headers_mut().insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.\xff").unwrap(),
        );
        assert_eq!(address.resolve(&req), Found::Unknown);
        let mut req = request(Some("10.0.0.1"), "x-forwarded-for", &[]);
        req.headers_mut().insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"caf\xc3\xa9\xff, 203.0.113.9").unwrap(),
        );
        assert_eq!(address.resolve(&req), Found::Addr(ip("203.0.113.9")));
        // More trusted hops than are walked.
        let long = vec!["10.0.0.5"; MAX_HOPS + 1].join(", ");
        let req = request(Some("10.0.0.1"), "x-forwarded-for", &[&long]);
        assert_eq!(address.resolve(&req), Found::Unknown);
    }

    #[test]
    fn rfc7239_forwarded_is_read_when_chosen() {
        let address = ClientAddress::peer()
            .trusted_proxies([net("10.0.0.0/8")])
            .forwarded_header(ForwardedHeader::Forwarded);
        let req = request(
            Some("10.0.0.1"),
            "forwarded",
            &["for=127.0.0.1, For=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.2;by=10.0.0.1"],
        );
        assert_eq!(address.resolve(&req), Found::Addr(ip("2001:db8:cafe::17")));
        for element in ["for=unknown", "for=_hidden", "proto=https", "for=\"1.2.3.4"] {
            let req = request(Some("10.0.0.1"), "forwarded", &[element]);
            assert_eq!(address.resolve(&req), Found::Unknown, "{element}");
        }
        // X-Forwarded-For is not read when Forwarded is chosen.
        let req = request(Some("10.0.0.1"), "x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(address.resolve(&req), Found::Addr(ip("10.0.0.1")));
    }

    #[test]
    fn a_custom_peer_reader_replaces_the_default() {
        let address = ClientAddress::peer().peer_from(|_| Some(ip("192.0.2.44")));
        let req = request(Some("192.0.2.1"), "x", &[]);
        assert_eq!(address.resolve(&req), Found::Addr(ip("192.0.2.44")));
    }
}
