//! The simulated push service over real sockets: hyper's auto builder serves HTTP/1.1 and h2c on
//! plain TCP, and HTTP/2 or HTTP/1.1 (by ALPN) over rustls. Each request runs the checks of
//! [`crate::check`], the faults of [`crate::faults`], and lands in [`crate::stats`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use pushfan_webpush::message::MAX_BODY_LEN;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::check::{self, BodyRejection, Rejection};
use crate::faults::{Fault, FaultPlan, Faults};
use crate::population::{Population, PopulationError};
use crate::profile::{Latency, Profile};
use crate::stats::{Stats, StatsSnapshot, Status};
use crate::tls::{TlsError, TlsIdentity};

/// How long shutdown waits for open connections to finish their requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the simulated push service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding the listener failed: {0}")]
    Bind(#[source] io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Population(#[from] PopulationError),
}

/// Check one request in `n`: `Sample::ALL`, `Sample::NONE`, or `Sample::one_in(100)` for load
/// tests where the push service must not be the bottleneck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample(u32);

impl Sample {
    /// Every request.
    pub const ALL: Sample = Sample(1);
    /// No request.
    pub const NONE: Sample = Sample(0);

    /// One request in `n`; 0 means none.
    pub const fn one_in(n: u32) -> Self {
        Sample(n)
    }

    /// Whether the request with sequence number `sequence` is checked.
    pub fn hits(self, sequence: u64) -> bool {
        self.0 != 0 && sequence.is_multiple_of(u64::from(self.0))
    }
}

/// What the simulated push service is and does.
#[derive(Clone, Debug)]
pub struct PushSimConfig {
    /// Whose messages it accepts: subscribers `0..count` with keys from the seed. Its origins
    /// are ignored here; the handle gives a population with this server's origin.
    pub population: Population,
    /// Serve TLS with this identity (HTTP/2 or HTTP/1.1 by ALPN), or plain HTTP/1.1 and h2c.
    pub tls: Option<Arc<TlsIdentity>>,
    /// Which requests get their VAPID token verified.
    pub vapid_sample: Sample,
    /// Which requests get their body decrypted.
    pub decrypt_sample: Sample,
    /// When set, a decrypted body must equal this or is refused.
    pub expected_payload: Option<Bytes>,
    /// Faults to start with; change them at run time through [`PushSimHandle::faults`].
    pub faults: FaultPlan,
    /// Which real service's rules and error wording to follow.
    pub profile: Profile,
    /// How long each answer takes, on top of the faults' fixed delay.
    pub latency: Latency,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` per connection, as real services cap senders;
    /// `None` leaves hyper's default.
    pub max_concurrent_streams: Option<u32>,
    /// The host (and port) senders reach this server by, when it is not the bound address (a
    /// server behind a Kubernetes Service). Endpoints and the VAPID audience use it.
    pub public_authority: Option<String>,
    /// Told of every answer, for load tests that time deliveries.
    pub observer: Option<Arc<dyn Observer>>,
}

/// Sees every answer as it is sent. Called on the request path: implementations must not
/// block or take contended locks.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// Subscriber `index` was answered `status`; `topic` is the request's RFC 8030 `Topic`.
    fn answered(&self, index: Option<u64>, status: Status, topic: Option<&str>);
}

impl PushSimConfig {
    /// Plain HTTP, every request fully checked, no faults.
    pub fn new(population: Population) -> Self {
        Self {
            population,
            tls: None,
            vapid_sample: Sample::ALL,
            decrypt_sample: Sample::ALL,
            expected_payload: None,
            faults: FaultPlan::default(),
            profile: Profile::Generic,
            latency: Latency::default(),
            max_concurrent_streams: None,
            public_authority: None,
            observer: None,
        }
    }

    /// Serves TLS with a freshly generated identity.
    pub fn with_tls(mut self) -> Result<Self, TlsError> {
        self.tls = Some(TlsIdentity::generate()?);
        Ok(self)
    }
}

/// The counters and faults a running server shares with its handle.
#[derive(Debug)]
pub struct SimState {
    /// What the server saw.
    pub stats: Stats,
    /// What it injects; change at will.
    pub faults: Faults,
    /// Numbers requests for sampling and `Location`.
    sequence: AtomicU64,
}

impl SimState {
    /// Fresh counters and the config's faults.
    pub fn new(config: &PushSimConfig) -> Arc<Self> {
        let count = config.population.count();
        Arc::new(Self {
            stats: Stats::new(count),
            faults: Faults::new(count, &config.faults),
            sequence: AtomicU64::new(0),
        })
    }
}

/// Serves the simulated push service on `listener` until `shutdown` completes, then stops
/// accepting and gives open connections five seconds to finish.
pub async fn run(
    listener: TcpListener,
    config: &PushSimConfig,
    state: Arc<SimState>,
    shutdown: impl Future,
) -> Result<(), ServerError> {
    let acceptor = match &config.tls {
        Some(identity) => Some(TlsAcceptor::from(Arc::new(identity.server_config()?))),
        None => None,
    };
    let handler = Arc::new(Handler {
        population: config.population.clone(),
        scheme: if acceptor.is_some() { "https" } else { "http" },
        vapid_sample: config.vapid_sample,
        decrypt_sample: config.decrypt_sample,
        expected_payload: config.expected_payload.clone(),
        profile: config.profile,
        latency: config.latency.clone(),
        observer: config.observer.clone(),
        state,
        metrics: Metrics::register(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(streams) = config.max_concurrent_streams {
        builder.http2().max_concurrent_streams(streams);
    }
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: wait for connections to close.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Push messages are small requests awaiting small answers; Nagle would only add latency.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "set_nodelay failed");
        }
        let (builder, handler, acceptor, watcher) =
            (Arc::clone(&builder), Arc::clone(&handler), acceptor.clone(), graceful.watcher());
        tokio::spawn(async move {
            match acceptor {
                None => serve(&builder, watcher, TokioIo::new(stream), handler).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => serve(&builder, watcher, TokioIo::new(tls), handler).await,
                    Err(error) => debug!(%error, %peer, "TLS handshake failed"),
                },
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => warn!("connections still open after the drain timeout"),
    }
    Ok(())
}

async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: TokioIo<I>,
    handler: Arc<Handler>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let handler = Arc::clone(&handler);
        async move { Ok::<_, Infallible>(handler.handle(request).await) }
    });
    if let Err(error) = watcher.watch(builder.serve_connection(io, service)).await {
        debug!(%error, "connection ended with an error");
    }
}

/// Everything a request needs, shared by all connections.
struct Handler {
    population: Population,
    scheme: &'static str,
    vapid_sample: Sample,
    decrypt_sample: Sample,
    expected_payload: Option<Bytes>,
    profile: Profile,
    latency: Latency,
    observer: Option<Arc<dyn Observer>>,
    state: Arc<SimState>,
    metrics: Metrics,
}

/// Counters registered once, so the request path does not build metric keys.
struct Metrics {
    responses: [metrics::Counter; Status::ALL.len()],
    vapid_failures: metrics::Counter,
    decrypt_failures: metrics::Counter,
}

impl Metrics {
    fn register() -> Self {
        Self {
            responses: Status::ALL
                .map(|s| metrics::counter!("pushsim_responses_total", "status" => s.label())),
            vapid_failures: metrics::counter!("pushsim_vapid_failures_total"),
            decrypt_failures: metrics::counter!("pushsim_decrypt_failures_total"),
        }
    }
}

/// Why a request was not accepted.
enum Refusal {
    Fault(Fault),
    Rejected(Rejection),
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        Refusal::Rejected(rejection)
    }
}

impl Handler {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let mut delay = self.state.faults.delay();
        if !self.latency.is_zero() {
            delay += self.latency.sample();
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (parts, body) = request.into_parts();
        let (status, response) = match self.process(&parts, body).await {
            Ok(sequence) => {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::CREATED;
                let location =
                    HeaderValue::try_from(format!("/m/{sequence}")).expect("digits are a valid header");
                response.headers_mut().insert(LOCATION, location);
                (Status::Created, response)
            }
            Err(Refusal::Rejected(rejection)) => (
                rejection.status,
                self.respond(rejection.status, rejection.reason, rejection.detail.as_deref()),
            ),
            Err(Refusal::Fault(fault)) => self.fault_response(fault),
        };
        self.state.stats.answered(status);
        self.metrics.responses[status as usize].increment(1);
        if let Some(observer) = &self.observer {
            let index = check::route(&parts.method, parts.uri.path(), self.population.count()).ok();
            let topic = parts.headers.get("topic").and_then(|t| t.to_str().ok());
            observer.answered(index, status, topic);
        }
        response
    }

    /// Runs every check; on success returns the message's sequence number.
    async fn process(&self, parts: &Parts, body: Incoming) -> Result<u64, Refusal> {
        let index = check::route(&parts.method, parts.uri.path(), self.population.count())?;
        check::check_content_length(&parts.headers)?;
        // Read the body even when a fault answers, so HTTP/1.1 connections stay reusable.
        let body = match Limited::new(body, MAX_BODY_LEN).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() => return Err(check::too_large().into()),
            Err(error) => {
                debug!(index, %error, "reading the body failed");
                return Err(Rejection::new(Status::BadRequest, "UnreadableBody").into());
            }
        };
        if let Some(fault) = self.state.faults.on_request(index) {
            debug!(index, ?fault, "injecting a fault");
            return Err(Refusal::Fault(fault));
        }
        let message = check::message_headers(&parts.headers, body.len())?;
        self.state.stats.ttl(message.ttl);
        let sequence = self.state.sequence.fetch_add(1, Relaxed);
        if self.vapid_sample.hits(sequence) {
            let authority = check::authority(&parts.uri, &parts.headers)
                .ok_or(Rejection::new(Status::BadRequest, "MissingHost"))?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let verified = check::check_vapid(
                &parts.headers,
                message.legacy_vapid_key,
                self.scheme,
                authority,
                now,
                self.profile.max_token_lifetime_secs(),
            );
            self.state.stats.vapid(verified.is_ok());
            if let Err(rejection) = verified {
                self.metrics.vapid_failures.increment(1);
                debug!(index, reason = rejection.reason, "VAPID refused");
                return Err(self.profile.vapid_rejection(rejection).into());
            }
        }
        match message.encoding {
            Some(encoding) if self.decrypt_sample.hits(sequence) => {
                // Keys are derived per request rather than held: 1M subscribers' keys would be
                // over 100 MB, and derivation adds one base-point multiplication to the ECDH.
                let keys = self.population.keys(index);
                let expected = self.expected_payload.as_deref();
                let checked = check::check_body(&keys, encoding, &body, message.aesgcm.as_ref(), expected);
                match &checked {
                    Ok(()) => self.state.stats.decrypt(true),
                    Err(BodyRejection::Decrypt(_)) => self.state.stats.decrypt(false),
                    Err(BodyRejection::Mismatch) => {
                        self.state.stats.decrypt(true);
                        self.state.stats.payload_mismatch();
                    }
                }
                if let Err(refused) = checked {
                    self.metrics.decrypt_failures.increment(1);
                    debug!(index, ?refused, "body refused");
                    return Err(refused.rejection().into());
                }
            }
            None if self.expected_payload.is_some() && self.decrypt_sample.hits(sequence) => {
                self.state.stats.payload_mismatch();
                return Err(Rejection::new(Status::BadRequest, "UnexpectedPayload").into());
            }
            _ => {}
        }
        self.state.stats.accepted(index);
        debug!(index, sequence, "push accepted");
        Ok(sequence)
    }
}

impl Handler {
    /// An error answer worded the way this service's profile words it.
    fn respond(&self, status: Status, reason: &str, detail: Option<&str>) -> Response<Full<Bytes>> {
        let (content_type, body) = self.profile.error_body(status, reason, detail);
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = StatusCode::from_u16(status.code()).expect("every Status is a valid code");
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    /// The answers of injected faults, worded like the real services (Apple's `Unregistered`
    /// for 410, FCM's `NotFound` for 404).
    fn fault_response(&self, fault: Fault) -> (Status, Response<Full<Bytes>>) {
        let (status, reason) = match fault {
            Fault::Gone => (Status::Gone, "Unregistered"),
            Fault::NotFound => (Status::NotFound, "NotFound"),
            Fault::Throttled { .. } => (Status::TooManyRequests, "TooManyRequests"),
            Fault::ServerError => (Status::InternalServerError, "InternalServerError"),
            Fault::Garbled => return (Status::BadRequest, garbled()),
        };
        let mut response = self.respond(status, reason, None);
        if let Fault::Throttled { retry_after_secs } = fault {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        (status, response)
    }
}

/// A 400 whose body is random text of up to 1 KB, a different one every time.
fn garbled() -> Response<Full<Bytes>> {
    let len = fastrand::usize(16..=1024);
    let body: String = std::iter::repeat_with(fastrand::alphanumeric).take(len).collect();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Starts simulated push services.
#[derive(Debug)]
pub struct PushSim {
    _private: (),
}

impl PushSim {
    /// Starts on `127.0.0.1` with a free port, the way tests want it.
    pub async fn start(config: PushSimConfig) -> Result<PushSimHandle, ServerError> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`.
    pub async fn bind(addr: SocketAddr, config: PushSimConfig) -> Result<PushSimHandle, ServerError> {
        let listener = TcpListener::bind(addr).await.map_err(ServerError::Bind)?;
        let addr = listener.local_addr().map_err(ServerError::Bind)?;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        // A wildcard listener is reached through loopback; the certificate names 127.0.0.1.
        let host = match addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            std::net::IpAddr::V4(ip) => ip.to_string(),
        };
        let base_url = match &config.public_authority {
            Some(authority) => format!("{scheme}://{authority}"),
            None => format!("{scheme}://{host}:{}", addr.port()),
        };
        let population = config.population.clone().with_origins(&[&base_url])?;
        let state = SimState::new(&config);
        let tls = config.tls.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                // A dropped handle stops the server too: the receiver then completes with an error.
                let result = run(listener, &config, state, stopped).await;
                if let Err(error) = &result {
                    warn!(%error, "the simulated push service stopped");
                }
                result
            })
        };
        info!(%base_url, "simulated push service listening");
        Ok(PushSimHandle { addr, base_url, tls, population, state, stop: Some(stop), task })
    }
}

/// A running simulated push service.
#[derive(Debug)]
pub struct PushSimHandle {
    addr: SocketAddr,
    base_url: String,
    tls: Option<Arc<TlsIdentity>>,
    population: Population,
    state: Arc<SimState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl PushSimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://…`: the origin, and the VAPID audience.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The CA certificate (PEM) that clients must trust, when serving TLS.
    pub fn cert_pem(&self) -> Option<&str> {
        self.tls.as_deref().map(TlsIdentity::ca_pem)
    }

    /// The TLS identity, for [`TlsIdentity::client_config`] or the CA in DER form.
    pub fn tls(&self) -> Option<&Arc<TlsIdentity>> {
        self.tls.as_ref()
    }

    /// The population with endpoints on this server.
    pub fn population(&self) -> &Population {
        &self.population
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.state.stats.snapshot()
    }

    /// The live counters: per-subscriber receive counts, reset between test phases.
    pub fn live_stats(&self) -> &Stats {
        &self.state.stats
    }

    /// The live faults, to change while traffic flows.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// Stops accepting, lets open requests finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            // The server may already be gone; there is nothing more to stop then.
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_pick_one_request_in_n() {
        assert!((0..10).all(|s| Sample::ALL.hits(s)));
        assert!(!(0..10).any(|s| Sample::NONE.hits(s)));
        let picked: Vec<u64> = (0..10).filter(|&s| Sample::one_in(4).hits(s)).collect();
        assert_eq!(picked, vec![0, 4, 8]);
    }
}
