//! The gateway role's delivery engine: encrypted pushes in, push-service answers out.
//!
//! - One held connection pool per push-service origin (HTTP/2 where the service speaks it).
//! - Real backpressure: at most `max_in_flight_per_origin` requests per origin are on the wire;
//!   further deliveries wait for a permit instead of piling up in hyper's unbounded queue.
//! - A 429/503 pauses only the origin that sent it, for its `Retry-After`.
//! - Every answer goes through `pushfan_webpush::classify`; [`retry::RetryPolicy`] decides
//!   what happens next, within the message's TTL.
//! - VAPID tokens come from a per-origin [`TokenCache`], signed once per origin, not per push.
//! - Connections go only to addresses the [`EgressPolicy`] allows, checked after resolving and
//!   dialled as checked; a refusal is final ([`TransportKind::RefusedByPolicy`]).
//! - Per-origin state is bounded: an origin idle for `idle_timeout` closes its connections and
//!   is forgotten, and at most `max_origins` are held at once.
//! - Failed requests are counted by class (`pushfan_gateway_failures_total{class}`) and logged
//!   at most once per origin and class every ten seconds.
//!
//! Endpoints are secrets: logs and errors only ever show [`Endpoint::redacted`] or the origin.

mod client;
mod coalesce;
pub mod retry;
mod warn_limit;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{self, Stream, StreamExt};
use pushfan_webpush::vapid::TokenCache;
use pushfan_webpush::EgressPolicy;
use pushfan_webpush::{
    build_request, classify, ttl_header, EncryptedPush, Endpoint, PushOptions, PushOutcome,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

pub use pushfan_webpush::FailureClass;
pub use retry::{Attempt, FinalOutcome, Next, RetryPolicy, TransportFailure, TransportKind, Tries};

/// Error bodies longer than this are cut: enough for any push service's reason.
const MAX_ERROR_BODY: usize = 4096;

/// A push service failing in one way is logged at most once per this time (per origin and
/// class), with the count of the lines held back.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The classes a failed request is counted and logged by: every transport kind, then the
/// push service's answers that are not a success (as `pushfan_gateway_responses_total` names
/// them). Gone (404/410) is not a failure of the push service: it is the subscription's end.
const FAILURE_CLASSES: [&str; 11] = [
    "connect",
    "dns",
    "tls",
    "timeout",
    "reset",
    "refused_by_policy",
    "protocol",
    "too_large",
    "rejected",
    "throttled",
    "retryable",
];

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("extra root certificate is not valid DER: {0}")]
    RootCertificate(String),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

/// How the gateway talks to push services.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Requests on the wire per push-service origin at once.
    pub max_in_flight_per_origin: usize,
    /// Deliveries one [`Gateway::send_all`] or [`Gateway::send_ready`] call works on at once,
    /// across origins.
    pub max_in_flight: usize,
    /// One request, response body included.
    pub request_timeout: Duration,
    /// One TCP connect.
    pub connect_timeout: Duration,
    /// Backoff and attempt limits.
    pub retry: RetryPolicy,
    /// Speak HTTP/2 with prior knowledge (h2c) to plain-`http` endpoints instead of HTTP/1.1.
    pub plaintext_h2c: bool,
    /// DER certificates to trust besides the web PKI (a simulated push service's, say).
    pub extra_root_certs: Vec<Vec<u8>>,
    /// HTTP/2 connections held per origin; requests take them in turn.
    pub connections_per_origin: usize,
    /// Which addresses may be connected to: every address a host resolves to is checked at
    /// connect time, and only one that passed is dialled. The default refuses everything that
    /// is not public (loopback, private, link-local, ...); tests and the demo allow loopback.
    pub egress: Arc<EgressPolicy>,
    /// An origin not sent to for this long lets its connections go (HTTP/2 and HTTP/1.1 alike)
    /// and, unless paused or in use, is forgotten.
    pub idle_timeout: Duration,
    /// Origins held at once. Past it, the least recently used idle origin is forgotten; if every
    /// origin is in use or paused, a new one serves the call that needed it unshared and is
    /// dropped (its connections closed) when that call's deliveries end.
    pub max_origins: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_in_flight_per_origin: 256,
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            plaintext_h2c: false,
            extra_root_certs: Vec::new(),
            connections_per_origin: 2,
            egress: Arc::new(EgressPolicy::default()),
            idle_timeout: Duration::from_secs(90),
            max_origins: 10_000,
        }
    }
}

/// What every delivery of one message shares.
#[derive(Debug)]
pub struct Message {
    /// TTL, urgency and topic. The TTL sent shrinks with the time already spent.
    pub options: PushOptions,
    /// When the message stops being worth delivering: publish time plus TTL.
    pub expires_at: SystemTime,
    /// Tokens for the VAPID key the subscriptions were created with.
    pub vapid: Arc<TokenCache>,
}

/// One encrypted push for one subscription. `tag` comes back in the [`Report`].
#[derive(Debug)]
pub struct Delivery<T> {
    /// The caller's handle for the subscription (its id, say).
    pub tag: T,
    /// Where to send.
    pub endpoint: Endpoint,
    /// The body and its encoding.
    pub push: EncryptedPush,
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report<T> {
    /// The delivery's tag.
    pub tag: T,
    /// The final outcome.
    pub outcome: FinalOutcome,
    /// Requests made.
    pub attempts: u32,
}

/// A delivery between attempts, as [`Gateway::send_ready`] takes and hands back.
#[derive(Debug)]
pub struct Pending<T> {
    delivery: Delivery<T>,
    /// Requests made so far.
    attempts: u32,
    /// Of those, the failures that count toward `max_attempts` (429/503 answers do not).
    failures: u32,
    /// When its push service first held it back (a 429/503, or its origin found paused): the
    /// throttle deadline counts from here.
    throttled_since: Option<Instant>,
    /// The status of its last 429/503 answer; 0 if none.
    throttle_status: u16,
    /// No attempt before this (a backoff or the origin's pause); `None` for a new delivery.
    ready_at: Option<Instant>,
}

impl<T> Pending<T> {
    /// When its next attempt may start; `None` for a delivery not yet tried.
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at
    }

    /// The delivery it carries.
    pub fn delivery(&self) -> &Delivery<T> {
        &self.delivery
    }

    /// The delivery it carries, for a caller keeping it a while to copy its body out of a larger
    /// shared buffer.
    pub fn delivery_mut(&mut self) -> &mut Delivery<T> {
        &mut self.delivery
    }
}

impl<T> From<Delivery<T>> for Pending<T> {
    fn from(delivery: Delivery<T>) -> Self {
        Self { delivery, attempts: 0, failures: 0, throttled_since: None, throttle_status: 0, ready_at: None }
    }
}

/// Where one delivery stands after [`Gateway::send_ready`].
#[derive(Debug)]
pub enum Progress<T> {
    /// It ended.
    Done(Report<T>),
    /// It has to wait: send it again once its [`Pending::ready_at`] has come.
    Waiting(Pending<T>),
}

/// Per-origin state: the in-flight bound and the throttle.
#[derive(Debug)]
struct Origin {
    name: String,
    /// Starts with one permit: the pool cannot know an origin speaks HTTP/2 until ALPN says
    /// so, and would open a connection per concurrent request. The first answer opens the rest.
    in_flight: Semaphore,
    /// Permits still to add once the first connection has answered.
    held_back: AtomicUsize,
    /// Milliseconds after the gateway's epoch until which nobody may send here.
    paused_until_ms: AtomicU64,
    /// Milliseconds after the gateway's epoch when a request last started here.
    last_used_ms: AtomicU64,
    connections: client::OriginConnections,
    metrics: OriginMetrics,
    /// Failures logged, by [`FAILURE_CLASSES`] index; locked only when a request failed.
    warnings: Mutex<warn_limit::WarnLimiter<{ FAILURE_CLASSES.len() }>>,
}

/// An origin's metric handles, registered when the origin is first used: looking a labelled
/// metric up in the recorder's registry on every push cost more than recording it.
#[derive(Debug)]
struct OriginMetrics {
    responses: LabelledCounters,
    deliveries: LabelledCounters,
    retries: metrics::Counter,
    request_seconds: metrics::Histogram,
    /// By class, one of [`FAILURE_CLASSES`]. No origin label: origins are whatever hosts
    /// subscribers registered, and a metrics exporter keeps every label value it ever saw.
    failures: LabelledCounters,
}

impl OriginMetrics {
    fn register() -> Self {
        Self {
            responses: LabelledCounters::register("pushfan_gateway_responses_total", &PushOutcome::LABELS),
            deliveries: LabelledCounters::register("pushfan_gateway_deliveries_total", &FinalOutcome::LABELS),
            retries: metrics::counter!("pushfan_gateway_retries_total"),
            request_seconds: metrics::histogram!("pushfan_gateway_request_seconds"),
            failures: LabelledCounters::register_by(
                "pushfan_gateway_failures_total",
                "class",
                &FAILURE_CLASSES,
            ),
        }
    }
}

/// One counter per value of its label (`outcome` unless named).
#[derive(Debug)]
struct LabelledCounters {
    name: &'static str,
    key: &'static str,
    by_outcome: Vec<(&'static str, metrics::Counter)>,
}

impl LabelledCounters {
    fn register(name: &'static str, outcomes: &[&'static str]) -> Self {
        Self::register_by(name, "outcome", outcomes)
    }

    fn register_by(name: &'static str, key: &'static str, values: &[&'static str]) -> Self {
        let by_outcome = values.iter().map(|&value| (value, metrics::counter!(name, key => value))).collect();
        Self { name, key, by_outcome }
    }

    fn increment(&self, outcome: &'static str) {
        match self.by_outcome.iter().find(|(label, _)| *label == outcome) {
            Some((_, counter)) => counter.increment(1),
            // A label missing from `register`'s list still counts, through the registry.
            None => metrics::counter!(self.name, self.key => outcome).increment(1),
        }
    }
}

/// Sends pushes; cheap to clone, one per process is enough.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GatewayConfig,
    connector: client::Connector,
    origins: Mutex<HashMap<String, Arc<Origin>>>,
    epoch: Instant,
    /// Whether the task that closes idle connections and forgets idle origins runs.
    reaping: std::sync::atomic::AtomicBool,
}

impl Gateway {
    /// Builds the clients; connections open lazily on first use.
    pub fn new(config: GatewayConfig) -> Result<Self, GatewayError> {
        let connector = client::Connector::new(
            Arc::clone(&config.egress),
            config.connect_timeout,
            config.idle_timeout,
            &config.extra_root_certs,
            config.plaintext_h2c,
            config.connections_per_origin,
            MAX_ERROR_BODY,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                connector,
                origins: Mutex::default(),
                epoch: Instant::now(),
                reaping: Default::default(),
            }),
        })
    }

    /// Delivers every push, retrying as the policy says; yields a report per delivery as each
    /// finishes. Runs at most `max_in_flight` deliveries at once, without a task per delivery.
    pub fn send_all<'a, T: Send + Sync + 'a>(
        &'a self,
        message: &'a Message,
        deliveries: Vec<Delivery<T>>,
    ) -> impl Stream<Item = Report<T>> + Send + 'a {
        // No span per delivery: entering one on every poll cost more than the push's own
        // bookkeeping. The caller's span (the batch's) is current whenever the stream is polled.
        stream::iter(self.route(deliveries.into_iter().map(Pending::from)))
            .map(move |(origin, pending)| self.deliver(message, origin, pending))
            .buffer_unordered(self.inner.config.max_in_flight)
    }

    /// Like [`Gateway::send_all`], but a delivery that would have to wait (its origin paused by a
    /// 429/503, or backing off before a retry) is handed back as [`Progress::Waiting`] instead
    /// of waiting here, so the caller can let go of what it holds meanwhile and send it again
    /// (with the others still waiting) once its [`Pending::ready_at`] has come.
    pub fn send_ready<'a, T: Send + Sync + 'a>(
        &'a self,
        message: &'a Message,
        pending: Vec<Pending<T>>,
    ) -> impl Stream<Item = Progress<T>> + Send + 'a {
        stream::iter(self.route(pending))
            .map(move |(origin, pending)| self.step(message, origin, pending))
            .buffer_unordered(self.inner.config.max_in_flight)
    }

    /// Pairs each delivery with its origin, resolving each origin once per call rather than
    /// taking the shared map's lock per push.
    fn route<T>(&self, pending: impl IntoIterator<Item = Pending<T>>) -> Vec<(Arc<Origin>, Pending<T>)> {
        let mut local: HashMap<String, Arc<Origin>> = HashMap::new();
        pending
            .into_iter()
            .map(|pending| {
                let name = pending.delivery.endpoint.origin();
                let origin = match local.get(name) {
                    Some(origin) => Arc::clone(origin),
                    None => {
                        let origin = self.origin(name);
                        local.insert(name.to_owned(), Arc::clone(&origin));
                        origin
                    }
                };
                (origin, pending)
            })
            .collect()
    }

    fn origin(&self, name: &str) -> Arc<Origin> {
        let mut origins = self.inner.origins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(origin) = origins.get(name) {
            return Arc::clone(origin);
        }
        self.start_reaping();
        let origin = Arc::new(Origin {
            name: name.to_owned(),
            in_flight: Semaphore::new(1),
            held_back: AtomicUsize::new(self.inner.config.max_in_flight_per_origin.saturating_sub(1)),
            paused_until_ms: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(self.inner.now_ms()),
            connections: self.inner.connector.origin(),
            metrics: OriginMetrics::register(),
            warnings: Mutex::new(warn_limit::WarnLimiter::new(WARN_EVERY)),
        });
        if origins.len() >= self.inner.config.max_origins
            && !self.inner.evict_least_recently_used(&mut origins)
        {
            // Every origin held is in use or paused: this one serves the caller unshared and
            // closes with its deliveries, so what is held stays within `max_origins` plus what
            // in-flight deliveries use.
            metrics::counter!("pushfan_gateway_origins_unshared_total").increment(1);
            return origin;
        }
        origins.insert(name.to_owned(), Arc::clone(&origin));
        origin
    }

    /// Starts the task that closes idle connections and forgets idle origins, once, when the
    /// first origin is made inside a Tokio runtime. It holds the gateway weakly and ends with it.
    fn start_reaping(&self) {
        if self.inner.reaping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        self.inner.reaping.store(true, Ordering::Relaxed);
        let every =
            (self.inner.config.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        runtime.spawn(reap(Arc::downgrade(&self.inner), every));
    }

    /// Origins held now (idle ones are forgotten after `idle_timeout`).
    pub fn held_origins(&self) -> usize {
        self.inner.origins.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// HTTP/2 connections held open now, across origins.
    pub fn open_connections(&self) -> usize {
        let origins = self.inner.origins.lock().unwrap_or_else(|e| e.into_inner());
        origins.values().map(|origin| origin.connections.open()).sum()
    }

    /// Steps `pending` to its end, sleeping through every wait.
    async fn deliver<T>(&self, message: &Message, origin: Arc<Origin>, mut pending: Pending<T>) -> Report<T> {
        loop {
            match self.step(message, Arc::clone(&origin), pending).await {
                Progress::Done(report) => return report,
                Progress::Waiting(waiting) => {
                    if let Some(ready_at) = waiting.ready_at {
                        tokio::time::sleep_until(ready_at).await;
                    }
                    pending = waiting;
                }
            }
        }
    }

    /// Attempts `pending` until it finishes or has to wait for its origin's pause or its own
    /// backoff to end. Takes the origin by value so that `send_ready`'s stream holds this future
    /// alone, not a wrapper that keeps a second copy of the delivery.
    ///
    /// Waiting spends no attempt. A delivery held back by throttling (its own 429/503, or its
    /// origin's pause) for `throttle_deadline` finishes as `throttled` without another request,
    /// and never waits past that deadline.
    async fn step<T>(&self, message: &Message, origin: Arc<Origin>, mut pending: Pending<T>) -> Progress<T> {
        let policy = &self.inner.config.retry;
        loop {
            // The pause is read again before every attempt: another delivery's 429 may have
            // extended it while this one was away.
            let paused_until_ms = origin.paused_until_ms.load(Ordering::Acquire);
            if paused_until_ms > 0 || pending.ready_at.is_some() || pending.throttled_since.is_some() {
                let now = Instant::now();
                let paused_until = self.inner.epoch + Duration::from_millis(paused_until_ms);
                if paused_until > now {
                    pending.throttled_since.get_or_insert(now);
                }
                let mut until = pending.ready_at.map_or(paused_until, |ready| ready.max(paused_until));
                if let Some(since) = pending.throttled_since {
                    if policy.throttled_out(now.saturating_duration_since(since)) {
                        let outcome = retry::throttled_out(pending.throttle_status);
                        return self.finish(&origin, pending, outcome);
                    }
                    until = until.min(since + policy.throttle_deadline);
                }
                if until > now {
                    pending.ready_at = Some(until);
                    return Progress::Waiting(pending);
                }
            }
            let delivery = &pending.delivery;
            let attempt = {
                let _permit = origin.in_flight.acquire().await.expect("origin semaphores are never closed");
                pending.attempts += 1;
                let attempt = self.attempt(message, &origin, delivery, pending.attempts == 1).await;
                let held_back = origin.held_back.swap(0, Ordering::AcqRel);
                if held_back > 0 {
                    origin.in_flight.add_permits(held_back);
                }
                attempt
            };
            if let Attempt::Response(outcome) = &attempt {
                origin.metrics.responses.increment(outcome.label());
                if let PushOutcome::Throttled { status, .. } = outcome {
                    pending.throttle_status = *status;
                }
            }
            let tries = retry::Tries {
                failures: pending.failures,
                throttled_for: pending.throttled_since.map(|since| since.elapsed()),
            };
            match policy.next(attempt, tries, SystemTime::now(), message.expires_at, fastrand::f64()) {
                Next::Finish(outcome) => {
                    if let FinalOutcome::Failed { class, detail } = &outcome {
                        debug!(endpoint = %pending.delivery.endpoint, %class, detail, "push failed");
                    }
                    return self.finish(&origin, pending, outcome);
                }
                Next::Retry { delay, pause_origin } => {
                    match pause_origin {
                        Some(pause) => {
                            self.pause(&origin, pause);
                            pending.throttled_since.get_or_insert_with(Instant::now);
                        }
                        None => pending.failures += 1,
                    }
                    origin.metrics.retries.increment(1);
                    pending.ready_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    fn finish<T>(&self, origin: &Origin, pending: Pending<T>, outcome: FinalOutcome) -> Progress<T> {
        origin.metrics.deliveries.increment(outcome.label());
        let Pending { delivery, attempts, .. } = pending;
        Progress::Done(Report { tag: delivery.tag, outcome, attempts })
    }

    async fn attempt<T>(
        &self,
        message: &Message,
        origin: &Origin,
        delivery: &Delivery<T>,
        first_attempt: bool,
    ) -> Attempt {
        let now = SystemTime::now();
        let unix_now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let token = message.vapid.token(&origin.name, unix_now);
        // A retried message has already waited: tell the push service how long it has left.
        let ttl = ttl_header(message.options.ttl, message.expires_at, now, first_attempt);
        let request = match build_request(&delivery.endpoint, &delivery.push, &message.options, ttl, &token) {
            Ok(request) => request,
            Err(error) => return Attempt::Unsendable(error),
        };
        let exchange = async {
            let answer = self.inner.connector.send(&origin.connections, request).await?;
            Ok::<_, TransportFailure>(classify(
                answer.status,
                answer.retry_after.as_deref(),
                &answer.body,
                SystemTime::now(),
            ))
        };
        let started = Instant::now();
        origin.last_used_ms.store(self.inner.ms_since_epoch(started), Ordering::Relaxed);
        let attempt = match tokio::time::timeout(self.inner.config.request_timeout, exchange).await {
            Ok(Ok(outcome)) => Attempt::Response(outcome),
            Ok(Err(error)) => Attempt::Transport(error),
            Err(_) => Attempt::Transport(TransportFailure::new(
                TransportKind::Timeout,
                format!("no answer within {:?}", self.inner.config.request_timeout),
            )),
        };
        origin.metrics.request_seconds.record(started.elapsed().as_secs_f64());
        if !matches!(attempt, Attempt::Response(PushOutcome::Accepted | PushOutcome::Gone { .. })) {
            failed(origin, &attempt);
        }
        attempt
    }

    /// The origins paused now and when each pause ends (a 429/503 seen here, or a pause learnt
    /// through [`Gateway::pause_origin`]), for the other delivering processes to hold back too.
    pub fn paused_origins(&self) -> Vec<(String, SystemTime)> {
        let (now, system_now) = (Instant::now(), SystemTime::now());
        let origins = self.inner.origins.lock().unwrap_or_else(|e| e.into_inner());
        origins
            .values()
            .filter_map(|origin| {
                let until =
                    self.inner.epoch + Duration::from_millis(origin.paused_until_ms.load(Ordering::Acquire));
                (until > now).then(|| (origin.name.clone(), system_now + (until - now)))
            })
            .collect()
    }

    /// Pauses `origin` until `until`, as another process's 429/503 asked; a pause that ends
    /// later stays.
    pub fn pause_origin(&self, origin: &str, until: SystemTime) {
        let Ok(left) = until.duration_since(SystemTime::now()) else { return };
        if self.extend_pause(&self.origin(origin), left) {
            debug!(
                origin,
                pause_ms = left.as_millis() as u64,
                "another process was throttled; pausing the origin here too"
            );
        }
    }

    fn pause(&self, origin: &Origin, pause: Duration) {
        if self.extend_pause(origin, pause) {
            warn!(origin = %origin.name, pause_ms = pause.as_millis() as u64, "push service throttled us; pausing it");
            metrics::counter!("pushfan_gateway_origin_pauses_total").increment(1);
        }
    }

    /// Pauses `origin` for `pause` from now unless a pause that ends later holds already;
    /// whether it did.
    fn extend_pause(&self, origin: &Origin, pause: Duration) -> bool {
        let until = (Instant::now() + pause).duration_since(self.inner.epoch).as_millis() as u64;
        origin.paused_until_ms.fetch_max(until, Ordering::AcqRel) < until
    }
}

impl Inner {
    fn ms_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn now_ms(&self) -> u64 {
        self.ms_since_epoch(Instant::now())
    }

    /// Whether `origin` may be forgotten: nobody holds it but the map (no delivery is on it or
    /// waiting with it), and no pause would be lost.
    fn evictable(&self, origin: &Arc<Origin>, now_ms: u64) -> bool {
        Arc::strong_count(origin) == 1 && origin.paused_until_ms.load(Ordering::Acquire) <= now_ms
    }

    /// Forgets the least recently used origin that can be; whether there was one.
    fn evict_least_recently_used(&self, origins: &mut HashMap<String, Arc<Origin>>) -> bool {
        let now_ms = self.now_ms();
        let oldest = origins
            .iter()
            .filter(|(_, origin)| self.evictable(origin, now_ms))
            .min_by_key(|(_, origin)| origin.last_used_ms.load(Ordering::Relaxed))
            .map(|(name, _)| name.clone());
        oldest.is_some_and(|name| origins.remove(&name).is_some())
    }

    /// Closes the connections of every origin idle for `idle_timeout` and forgets those that
    /// can be; publishes what is held.
    fn reap_idle(&self) {
        let now_ms = self.now_ms();
        let idle_ms = u64::try_from(self.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        let mut connections = 0;
        origins.retain(|_, origin| {
            if now_ms.saturating_sub(origin.last_used_ms.load(Ordering::Relaxed)) < idle_ms {
                connections += origin.connections.open();
                return true;
            }
            if self.evictable(origin, now_ms) {
                return false;
            }
            origin.connections.close();
            true
        });
        metrics::gauge!("pushfan_gateway_origins").set(origins.len() as f64);
        metrics::gauge!("pushfan_gateway_connections").set(connections as f64);
    }
}

/// Every so often, closes idle connections and forgets idle origins, until the gateway is gone.
async fn reap(inner: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.reap_idle();
    }
}

/// Counts a failed request by class and logs it, at most once per [`WARN_EVERY`] per origin and
/// class. The line names the origin, never the endpoint.
fn failed(origin: &Origin, attempt: &Attempt) {
    let (class, status, detail) = match attempt {
        Attempt::Transport(failure) => (failure.kind.label(), 0, failure.detail.as_str()),
        // Nothing was sent: the delivery's outcome (`invalid`) counts it.
        Attempt::Unsendable(_) => return,
        Attempt::Response(outcome) => {
            let (status, detail) = match outcome {
                PushOutcome::Rejected { status, reason } => (*status, reason.as_str()),
                PushOutcome::Throttled { status, .. } | PushOutcome::Retryable { status } => (*status, ""),
                PushOutcome::TooLarge => (413, ""),
                PushOutcome::Accepted | PushOutcome::Gone { .. } => return,
            };
            (outcome.label(), status, detail)
        }
    };
    origin.metrics.failures.increment(class);
    // A throttled origin is logged when it is paused.
    if class == "throttled" {
        return;
    }
    let Some(index) = FAILURE_CLASSES.iter().position(|known| *known == class) else { return };
    let admitted = origin.warnings.lock().unwrap_or_else(|e| e.into_inner()).admit(index, Instant::now());
    if let Some(suppressed) = admitted {
        // `?detail`: what a push service says is quoted and escaped, never written raw.
        let mut end = detail.len().min(200);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        let detail = detail.get(..end).unwrap_or_default();
        warn!(origin = %origin.name, class, status, ?detail, suppressed, "push service request failed");
    }
}

/// The DER certificates in a PEM file, for [`GatewayConfig::extra_root_certs`].
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, GatewayError> {
    use rustls::pki_types::pem::PemObject;
    let certificates = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|cert| cert.map(|der| der.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| GatewayError::RootCertificate(e.to_string()))?;
    if certificates.is_empty() {
        return Err(GatewayError::RootCertificate("no CERTIFICATE block in the PEM".into()));
    }
    Ok(certificates)
}
