//! The connections to push services.
//!
//! HTTP/2 origins (ALPN `h2` over TLS, or h2c when configured) are driven with the `h2` crate
//! directly: a few held connections per origin, one stream per push, the body written with the
//! headers. hyper's pooled client costs a channel hop, a spawned body task and a pool checkout
//! per request, which at tens of thousands of pushes a second was a quarter of the gateway's
//! CPU. Origins that only speak HTTP/1.1 go through hyper's pooled client instead.
//!
//! Every path resolves the host itself and checks each address against the [`EgressPolicy`]
//! before connecting, then connects to exactly the address that passed: no second lookup, so a
//! name that answers with a public address to one query and a private one to the next (DNS
//! rebinding) cannot slip through. hyper's client gets the same through [`EgressResolver`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::RETRY_AFTER;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pushfan_webpush::EgressPolicy;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::coalesce::Coalesced;
use crate::retry::{TransportFailure, TransportKind};
use crate::GatewayError;

/// A push service's answer, reduced to what [`pushfan_webpush::classify`] needs.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: Bytes,
}

/// Why a request got no answer. Never carries the endpoint URL.
pub(crate) type TransportError = TransportFailure;

/// How the gateway reaches push services.
#[derive(Debug)]
pub(crate) struct Connector {
    tls: Arc<rustls::ClientConfig>,
    egress: Arc<EgressPolicy>,
    connect_timeout: Duration,
    plaintext_h2c: bool,
    connections_per_origin: usize,
    max_body: usize,
    http1_tls: Client<HttpsConnector<HttpConnector<EgressResolver>>, Full<Bytes>>,
    http1_plain: Client<HttpConnector<EgressResolver>, Full<Bytes>>,
}

/// One origin's held HTTP/2 connections, or the note that it only speaks HTTP/1.1.
#[derive(Debug)]
pub(crate) struct OriginConnections {
    slots: Vec<Slot>,
    next: AtomicUsize,
    http1_only: AtomicBool,
}

#[derive(Debug, Default)]
struct Slot {
    live: Mutex<Option<Live>>,
    /// Held while connecting, so concurrent requests wait for one connection, not open many.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct Live {
    sender: h2::client::SendRequest<Bytes>,
    open: Arc<AtomicBool>,
}

enum Connected {
    H2(Live),
    Http1,
}

impl OriginConnections {
    pub(crate) fn new(connections: usize) -> Self {
        Self {
            slots: (0..connections.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            http1_only: AtomicBool::new(false),
        }
    }

    /// HTTP/2 connections held open now.
    pub(crate) fn open(&self) -> usize {
        self.slots.iter().filter(|slot| slot.current().is_some()).count()
    }

    /// Lets go of every held connection. A request still on one keeps it until it ends; h2
    /// then closes it (GOAWAY) once no handle and no stream is left.
    pub(crate) fn close(&self) {
        for slot in &self.slots {
            *slot.live.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

impl Connector {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        egress: Arc<EgressPolicy>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        extra_root_certs: &[Vec<u8>],
        plaintext_h2c: bool,
        connections_per_origin: usize,
        max_body: usize,
    ) -> Result<Self, GatewayError> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for der in extra_root_certs {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| GatewayError::RootCertificate(e.to_string()))?;
        }
        // AES-128-GCM first, as browsers and curl offer it: as safe here, and ~30% fewer AES rounds
        // on every push's bytes than rustls' default first choice, AES-256-GCM.
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let tls = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_safe_default_protocol_versions()
            .map_err(|e| GatewayError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut alpn_tls = tls.clone();
        alpn_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let resolver = EgressResolver { egress: Arc::clone(&egress), timeout: connect_timeout };
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http.clone());
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_timer(TokioTimer::new()).pool_idle_timeout(idle_timeout);
        Ok(Self {
            tls: Arc::new(alpn_tls),
            egress,
            connect_timeout,
            plaintext_h2c,
            connections_per_origin,
            max_body,
            http1_tls: builder.build(https),
            http1_plain: builder.build(http),
        })
    }

    pub(crate) fn origin(&self) -> OriginConnections {
        OriginConnections::new(self.connections_per_origin)
    }

    /// Sends one request to `origin` and reads the answer, its body cut at `max_body`.
    pub(crate) async fn send(
        &self,
        origin: &OriginConnections,
        request: Request<Bytes>,
    ) -> Result<Answer, TransportError> {
        // The slow paths are boxed: inline, their large futures would be copied into every
        // push's future, whichever path it takes.
        if origin.http1_only.load(Ordering::Relaxed) {
            return Box::pin(self.send_http1(request)).await;
        }
        let slot = &origin.slots[origin.next.fetch_add(1, Ordering::Relaxed) % origin.slots.len()];
        let live = match slot.current() {
            Some(live) => live,
            None => match Box::pin(self.reconnect(origin, slot, request.uri())).await? {
                Connected::H2(live) => live,
                Connected::Http1 => return Box::pin(self.send_http1(request)).await,
            },
        };
        exchange(live.sender, request, self.max_body).await.map_err(|failure| {
            if failure.connection_unusable || !live.open.load(Ordering::Acquire) {
                // The next request on this slot reconnects.
                slot.forget(&live.open);
            }
            failure.message
        })
    }

    async fn reconnect(
        &self,
        origin: &OriginConnections,
        slot: &Slot,
        uri: &http::Uri,
    ) -> Result<Connected, TransportError> {
        let _connecting = slot.connecting.lock().await;
        if let Some(live) = slot.current() {
            return Ok(Connected::H2(live));
        }
        if origin.http1_only.load(Ordering::Relaxed) {
            return Ok(Connected::Http1);
        }
        match tokio::time::timeout(self.connect_timeout, self.connect(uri)).await {
            Err(_) => Err(TransportFailure::new(
                TransportKind::Timeout,
                format!("no connection within {:?}", self.connect_timeout),
            )),
            Ok(Err(error)) => Err(error),
            Ok(Ok(Connected::Http1)) => {
                origin.http1_only.store(true, Ordering::Relaxed);
                Ok(Connected::Http1)
            }
            Ok(Ok(Connected::H2(live))) => {
                *slot.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
                Ok(Connected::H2(live))
            }
        }
    }

    async fn connect(&self, uri: &http::Uri) -> Result<Connected, TransportError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.plaintext_h2c => false,
            Some("http") => return Ok(Connected::Http1),
            _ => {
                return Err(TransportFailure::new(
                    TransportKind::Protocol,
                    "the endpoint is neither http nor https",
                ))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| TransportFailure::new(TransportKind::Protocol, "the endpoint has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addresses = resolve(&self.egress, host, port).await?;
        let tcp = connect_any(&addresses).await?;
        tcp.set_nodelay(true).map_err(|e| io_failure(TransportKind::Connect, "setting TCP_NODELAY", &e))?;
        if !tls {
            return handshake(tcp).await.map(Connected::H2);
        }
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::from(ip),
            Err(_) => ServerName::try_from(host.to_owned())
                .map_err(|e| TransportFailure::new(TransportKind::Tls, format!("server name: {e}")))?,
        };
        let stream = TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| tls_failure(&e))?;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            handshake(stream).await.map(Connected::H2)
        } else {
            debug!(host, "push service does not speak HTTP/2; using HTTP/1.1");
            Ok(Connected::Http1)
        }
    }

    async fn send_http1(&self, request: Request<Bytes>) -> Result<Answer, TransportError> {
        // hyper's connector dials an IP-literal host without asking the resolver, so the
        // literal is checked here.
        if let Some(ip) = request.uri().host().and_then(ip_literal) {
            allowed_addresses(&self.egress, [SocketAddr::new(ip, 0)])?;
        }
        let request = request.map(Full::new);
        let response = if request.uri().scheme_str() == Some("https") {
            self.http1_tls.request(request).await
        } else {
            self.http1_plain.request(request).await
        }
        .map_err(|e| classify_chain(&e))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        // Read the body even on success so the connection can be reused.
        let body = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        Ok(Answer { status, retry_after, body })
    }
}

impl Slot {
    fn current(&self) -> Option<Live> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref().filter(|live| live.open.load(Ordering::Acquire)).cloned()
    }

    /// Drops the held connection if it is still the one that failed.
    fn forget(&self, open: &Arc<AtomicBool>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.as_ref().is_some_and(|held| Arc::ptr_eq(&held.open, open)) {
            *live = None;
        }
    }
}

async fn handshake<T>(io: T) -> Result<Live, TransportError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (io, turns) = Coalesced::new(io);
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| h2_failure(&e))?;
    let open = Arc::new(AtomicBool::new(true));
    let driver_open = Arc::clone(&open);
    tokio::spawn(async move {
        if let Err(error) = turns.drive(connection).await {
            debug!(%error, "push service connection ended");
        }
        driver_open.store(false, Ordering::Release);
    });
    Ok(Live { sender, open })
}

/// Why an HTTP/2 exchange failed, and whether its connection is done for.
struct Failure {
    message: TransportError,
    connection_unusable: bool,
}

impl Failure {
    /// Opening a stream fails only when the connection can take no more.
    fn opening(error: &h2::Error) -> Self {
        Self { message: h2_failure(error), connection_unusable: true }
    }

    fn during(error: &h2::Error) -> Self {
        Self { message: h2_failure(error), connection_unusable: error.is_go_away() || error.is_io() }
    }
}

/// One request on one HTTP/2 stream: headers and body in one go, then the answer.
async fn exchange(
    sender: h2::client::SendRequest<Bytes>,
    request: Request<Bytes>,
    max_body: usize,
) -> Result<Answer, Failure> {
    let (parts, body) = request.into_parts();
    // Waits for the server's stream limit, which is the backpressure HTTP/2 itself asks for.
    let mut sender = sender.ready().await.map_err(|e| Failure::opening(&e))?;
    let (response, mut stream) = sender
        .send_request(Request::from_parts(parts, ()), body.is_empty())
        .map_err(|e| Failure::opening(&e))?;
    if !body.is_empty() {
        stream.send_data(body, true).map_err(|e| Failure::during(&e))?;
    }
    let response = response.await.map_err(|e| Failure::during(&e))?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let mut received = response.into_body();
    // A 201 ends its stream with its headers: no body to wait for, nothing to allocate.
    if received.is_end_stream() {
        return Ok(Answer { status, retry_after, body: Bytes::new() });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = received.data().await {
        let chunk = chunk.map_err(|e| Failure::during(&e))?;
        // Hand the window back, or a connection's later streams would starve.
        let _ = received.flow_control().release_capacity(chunk.len());
        let room = max_body.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= max_body {
            break;
        }
    }
    Ok(Answer { status, retry_after, body: body.freeze() })
}

fn retry_after(headers: &http::HeaderMap) -> Option<String> {
    headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// At most this many of a name's addresses are checked and tried: a hostile DNS answer with
/// thousands cannot make one connect attempt walk them all.
const MAX_ADDRESSES: usize = 16;

/// `host` as an IP address, if it is one (IPv6 with or without its brackets).
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// The addresses `host` resolves to that the egress policy allows, in the resolver's order.
/// An IP-literal host is checked as it is, without a lookup.
async fn resolve(egress: &EgressPolicy, host: &str, port: u16) -> Result<Vec<SocketAddr>, TransportFailure> {
    if let Some(ip) = ip_literal(host) {
        return allowed_addresses(egress, [SocketAddr::new(ip, port)]);
    }
    let resolved = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| TransportFailure::new(TransportKind::Dns, format!("resolving: {e}")))?;
    allowed_addresses(egress, resolved)
}

/// The addresses among the first [`MAX_ADDRESSES`] of `resolved` that `egress` allows; when
/// none is, a refusal naming the first refused address and its class (final: another lookup
/// would be asking the same name again).
pub(crate) fn allowed_addresses(
    egress: &EgressPolicy,
    resolved: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, TransportFailure> {
    let mut allowed = Vec::new();
    let mut refusal = None;
    for address in resolved.into_iter().take(MAX_ADDRESSES) {
        match egress.check_ip(address.ip()) {
            Ok(()) => allowed.push(address),
            Err(error) => {
                refusal.get_or_insert(error);
            }
        }
    }
    match refusal {
        _ if !allowed.is_empty() => Ok(allowed),
        Some(error) => Err(TransportFailure::new(TransportKind::RefusedByPolicy, error.to_string())),
        None => Err(TransportFailure::new(TransportKind::Dns, "the name has no address")),
    }
}

/// A TCP connection to the first of `addresses` that takes one; the caller bounds the time.
async fn connect_any(addresses: &[SocketAddr]) -> Result<TcpStream, TransportFailure> {
    let mut last = None;
    for &address in addresses {
        match TcpStream::connect(address).await {
            Ok(tcp) => return Ok(tcp),
            Err(error) => last = Some(error),
        }
    }
    Err(match last {
        Some(error) => io_failure(TransportKind::Connect, "connecting", &error),
        None => TransportFailure::new(TransportKind::Connect, "no address to connect to"),
    })
}

/// hyper's resolver: the same lookup, policy check and bound as the HTTP/2 path, so the HTTP/1.1
/// client connects only to addresses that passed.
#[derive(Clone, Debug)]
pub(crate) struct EgressResolver {
    egress: Arc<EgressPolicy>,
    timeout: Duration,
}

impl tower_service::Service<Name> for EgressResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Classified;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Classified>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Classified>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let (egress, timeout) = (Arc::clone(&self.egress), self.timeout);
        Box::pin(async move {
            // Port 0: hyper puts the URI's port on every address it gets back.
            match tokio::time::timeout(timeout, resolve(&egress, name.as_str(), 0)).await {
                Ok(Ok(addresses)) => Ok(addresses.into_iter()),
                Ok(Err(failure)) => Err(Classified(failure)),
                Err(_) => Err(Classified(TransportFailure::new(
                    TransportKind::Timeout,
                    format!("no address within {timeout:?}"),
                ))),
            }
        })
    }
}

/// The class of an I/O error met while connecting as `doing`; `otherwise` when its kind says
/// nothing more specific.
fn io_failure(otherwise: TransportKind, doing: &str, error: &std::io::Error) -> TransportFailure {
    TransportFailure::new(io_kind(error).unwrap_or(otherwise), format!("{doing}: {error}"))
}

/// What an I/O error's kind says about its class, if anything.
fn io_kind(error: &std::io::Error) -> Option<TransportKind> {
    use std::io::ErrorKind::*;
    match error.kind() {
        TimedOut => Some(TransportKind::Timeout),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Some(TransportKind::Reset),
        ConnectionRefused | NotConnected | AddrNotAvailable | AddrInUse => Some(TransportKind::Connect),
        _ => None,
    }
}

/// A failed TLS handshake: rustls' own errors are TLS; a connection dropped mid-handshake is
/// a reset.
fn tls_failure(error: &std::io::Error) -> TransportFailure {
    let is_rustls = error.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
    let kind = if is_rustls { TransportKind::Tls } else { io_kind(error).unwrap_or(TransportKind::Tls) };
    TransportFailure::new(kind, format!("TLS handshake: {}", error_chain(error)))
}

/// An HTTP/2 failure: the connection going away (GOAWAY, RST_STREAM, I/O) is a reset, anything
/// else a protocol error.
fn h2_failure(error: &h2::Error) -> TransportFailure {
    let kind = if error.is_go_away() || error.is_reset() || error.is_io() {
        error.get_io().and_then(io_kind).unwrap_or(TransportKind::Reset)
    } else {
        TransportKind::Protocol
    };
    TransportFailure::new(kind, error_chain(error))
}

/// The class of an error from hyper's HTTP/1.1 client, found in its causes: an egress refusal,
/// a TLS error, a name that did not resolve, or an I/O error's kind.
fn classify_chain(error: &hyper_util::client::legacy::Error) -> TransportFailure {
    let mut kind = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(classified) = cause.downcast_ref::<Classified>() {
            return classified.0.clone();
        }
        if cause.is::<rustls::Error>() {
            kind = Some(TransportKind::Tls);
        } else if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            kind = kind.or_else(|| io_kind(io));
        } else if cause.downcast_ref::<hyper::Error>().is_some_and(|e| e.is_parse() || e.is_user()) {
            kind = kind.or(Some(TransportKind::Protocol));
        }
        source = cause.source();
    }
    let kind = kind.unwrap_or(if error.is_connect() { TransportKind::Connect } else { TransportKind::Reset });
    TransportFailure::new(kind, error_chain(error))
}

/// A connect-time failure carried through hyper's connector as an error source, so that its
/// class survives hyper's wrapping.
#[derive(Debug)]
pub(crate) struct Classified(pub(crate) TransportFailure);

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Classified {}

/// The error and its causes, without the request URI (neither hyper's nor h2's errors carry
/// it, and nothing here adds it).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_offers_aes_128_gcm_first() {
        let connector = Connector::new(
            Arc::new(EgressPolicy::default()),
            Duration::from_secs(1),
            Duration::from_secs(90),
            &[],
            false,
            1,
            1024,
        )
        .unwrap();
        let offered: Vec<_> =
            connector.tls.crypto_provider().cipher_suites.iter().map(|suite| suite.suite()).collect();
        assert_eq!(offered[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert!(offered.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384), "nothing dropped");
    }

    fn addresses(ips: &[&str]) -> Vec<SocketAddr> {
        ips.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), 443)).collect()
    }

    /// What a name resolving to these addresses would connect to; no lookup, no packet.
    #[test]
    fn only_addresses_the_policy_allows_are_dialled() {
        let default = EgressPolicy::default();
        let refused = [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "224.0.0.1",
            "ff02::1",
            "0.0.0.0",
            "::",
            "255.255.255.255",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ];
        for ip in refused {
            let failure = allowed_addresses(&default, addresses(&[ip])).unwrap_err();
            assert_eq!(failure.kind, TransportKind::RefusedByPolicy, "{ip}");
        }
        // Every address refused: the refusal names the first, by address and class.
        let failure = allowed_addresses(&default, addresses(&refused)).unwrap_err();
        assert!(failure.detail.contains("127.0.0.1") && failure.detail.contains("loopback"), "{failure}");

        // Public addresses among private ones: only they are dialled (a pure function: nothing
        // is sent anywhere).
        let mixed = addresses(&["10.0.0.1", "8.8.8.8", "169.254.169.254", "2001:4860:4860::8888"]);
        assert_eq!(
            allowed_addresses(&default, mixed).unwrap(),
            addresses(&["8.8.8.8", "2001:4860:4860::8888"])
        );

        // Loopback allowed explicitly lets loopback through, and nothing else.
        let loopback = EgressPolicy::allow_loopback();
        assert_eq!(
            allowed_addresses(&loopback, addresses(&["127.0.0.1", "::1", "10.0.0.1"])).unwrap(),
            addresses(&["127.0.0.1", "::1"])
        );
        assert_eq!(
            allowed_addresses(&loopback, addresses(&["192.168.0.1"])).unwrap_err().kind,
            TransportKind::RefusedByPolicy
        );

        // No address at all is a DNS failure, retried like one.
        assert_eq!(allowed_addresses(&default, []).unwrap_err().kind, TransportKind::Dns);
        // A hostile answer with thousands of addresses is cut before any is tried.
        let many = (0..5000u32).map(|i| SocketAddr::new(IpAddr::from((0x0808_0000 + i).to_be_bytes()), 443));
        assert_eq!(allowed_addresses(&default, many).unwrap().len(), MAX_ADDRESSES);
    }

    #[tokio::test]
    async fn an_ip_literal_is_checked_without_a_lookup() {
        let default = EgressPolicy::default();
        for host in ["127.0.0.1", "[::1]", "::1", "[::ffff:127.0.0.1]", "169.254.169.254"] {
            let failure = resolve(&default, host, 443).await.unwrap_err();
            assert_eq!(failure.kind, TransportKind::RefusedByPolicy, "{host}");
        }
        let loopback = EgressPolicy::allow_loopback();
        let expected = vec![SocketAddr::new("::1".parse().unwrap(), 8443)];
        assert_eq!(resolve(&loopback, "[::1]", 8443).await.unwrap(), expected);
    }
}
