//! How the API guards itself: connection, concurrency, time and size limits ([`Limits`]), and
//! per-tenant request rates ([`TenantRates`], a token bucket per configured tenant).
//!
//! The defaults are for production; every one is a `[ingest]` key of the `pushfan` binary.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushfan_store::TenantId;
use tokio::time::Instant;

/// Largest request message `SubscriptionService` decodes by default: a `BulkImport` batch of
/// about 10,000 rows with browser-length endpoints (the CLI and the load test send 5,000).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Largest request message `PublishService` decodes: a publish is at most a 4 KiB payload and
/// 10,000 subscription ids (about 310 KB), so 1 MiB is enough, whatever `max_message_bytes` says.
pub const PUBLISH_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Largest request message `BroadcastService` decodes: its requests carry one broadcast id.
pub const BROADCAST_MAX_MESSAGE_BYTES: usize = 64 << 10;

/// The server's limits. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once. Past it, the server stops accepting: new connections wait in
    /// the kernel's listen backlog (and past that, the kernel refuses them) until one closes.
    pub max_connections: usize,
    /// Requests worked on at once, over all connections and tenants. A request waits up to
    /// `request_timeout` for a place, then fails with UNAVAILABLE; a place is held from before
    /// the request's body is read until its answer (a `WatchBroadcast` gives its place back once
    /// its stream starts: watches have `max_watches`).
    pub max_concurrent_requests: usize,
    /// `WatchBroadcast` streams open at once; each polls the ledger until its broadcast
    /// completes, so they are bounded apart from the requests. Past it a watch is refused with
    /// RESOURCE_EXHAUSTED.
    pub max_watches: usize,
    /// Longest a request may take, waiting for a place included (DEADLINE_EXCEEDED after). A
    /// client's shorter `grpc-timeout` wins. `BulkImport` streams for as long as its client
    /// sends, so for it this bounds each wait for the next message instead, as it does for
    /// every request body. Also how long a shutdown waits for requests in flight.
    pub request_timeout: Duration,
    /// Time from accepting a connection until its first bytes of HTTP/2 (the 24-byte preface),
    /// TLS handshake included; a connection that has not sent them by then is closed.
    pub handshake_timeout: Duration,
    /// Largest request message `SubscriptionService` decodes (its `BulkImport` batches);
    /// `PublishService` and `BroadcastService` take at most [`PUBLISH_MAX_MESSAGE_BYTES`] and
    /// [`BROADCAST_MAX_MESSAGE_BYTES`] when this is larger. A larger message is refused with
    /// OUT_OF_RANGE (tonic's code for it) as its length prefix arrives, before it is buffered.
    pub max_message_bytes: usize,
    /// HTTP/2 streams (calls) open at once per connection.
    pub max_concurrent_streams: u32,
    /// How often an idle connection is pinged to check the client is still there.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Requests per second per tenant, and the bursts allowed.
    pub tenant_rates: TenantRates,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_concurrent_requests: 128,
            max_watches: 1024,
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_concurrent_streams: 128,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            tenant_rates: TenantRates::default(),
        }
    }
}

/// A request rate: `per_second` on average, `burst` at once after a quiet spell. A
/// `per_second` of 0 means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second, sustained; 0: unlimited.
    pub per_second: u32,
    /// Requests allowed back to back; 0 means `per_second`.
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate { per_second: 0, burst: 0 };

    /// The default tenant rate: 1,000 requests per second, bursts of 2,000. Subscribing one
    /// browser is one request, and bulk loads go through `BulkImport` (one request per stream).
    pub const DEFAULT: Rate = Rate { per_second: 1000, burst: 2000 };

    fn burst_or_rate(self) -> u32 {
        if self.burst == 0 {
            self.per_second
        } else {
            self.burst
        }
    }
}

/// Where the rate limiter reads the time: the monotonic clock, or one a test moves by hand.
#[derive(Clone, Debug, Default)]
pub enum RateClock {
    /// `tokio::time::Instant::now()`.
    #[default]
    Monotonic,
    /// A clock that moves only when told.
    Manual(Arc<ManualClock>),
}

impl RateClock {
    fn now(&self) -> Instant {
        match self {
            Self::Monotonic => Instant::now(),
            Self::Manual(clock) => clock.now(),
        }
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    elapsed_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing at the present moment.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { start: Instant::now(), elapsed_nanos: AtomicU64::new(0) })
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.elapsed_nanos.load(Ordering::Relaxed))
    }
}

/// Per-tenant request rates: a default and overrides by tenant.
#[derive(Clone, Debug)]
pub struct TenantRates {
    /// The rate of every tenant without an override.
    pub default: Rate,
    /// Rates of particular tenants.
    pub overrides: HashMap<TenantId, Rate>,
    /// The limiter's clock.
    pub clock: RateClock,
}

impl Default for TenantRates {
    fn default() -> Self {
        Self { default: Rate::DEFAULT, overrides: HashMap::new(), clock: RateClock::Monotonic }
    }
}

impl TenantRates {
    /// No tenant is limited.
    pub fn unlimited() -> Self {
        Self { default: Rate::UNLIMITED, ..Self::default() }
    }

    fn rate_of(&self, tenant: &TenantId) -> Rate {
        self.overrides.get(tenant).copied().unwrap_or(self.default)
    }
}

/// A request over its tenant's rate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RateExceeded {
    /// The tenant's sustained rate.
    pub(crate) per_second: u32,
    /// When one more request would be allowed.
    pub(crate) retry_after: Duration,
}

/// One token bucket per tenant. The tenants are those with API keys, fixed at start, so the
/// table never grows; a tenant it does not know is not limited (it cannot have authenticated).
pub(crate) struct RateLimiter {
    buckets: HashMap<TenantId, Mutex<Bucket>>,
    clock: RateClock,
}

impl RateLimiter {
    /// Buckets for `tenants` at `rates`; unlimited tenants get none.
    pub(crate) fn new<'a>(rates: &TenantRates, tenants: impl IntoIterator<Item = &'a TenantId>) -> Self {
        let now = rates.clock.now();
        let buckets = tenants
            .into_iter()
            .filter_map(|tenant| {
                let rate = rates.rate_of(tenant);
                (rate.per_second > 0).then(|| (tenant.clone(), Mutex::new(Bucket::new(rate, now))))
            })
            .collect();
        Self { buckets, clock: rates.clock.clone() }
    }

    /// Takes one request from `tenant`'s bucket.
    pub(crate) fn check(&self, tenant: &TenantId) -> Result<(), RateExceeded> {
        let Some(bucket) = self.buckets.get(tenant) else { return Ok(()) };
        let now = self.clock.now();
        // A panic elsewhere while holding the lock leaves a bucket that is still consistent
        // (two plain numbers), so a poisoned lock is used as it is.
        let mut bucket = bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        bucket.take(now)
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter").field("limited_tenants", &self.buckets.len()).finish()
    }
}

/// A token bucket: `capacity` tokens, refilled at `per_second`; a request takes one.
#[derive(Debug)]
struct Bucket {
    per_second: u32,
    capacity: f64,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Self {
        let capacity = f64::from(rate.burst_or_rate().max(1));
        Self { per_second: rate.per_second, capacity, tokens: capacity, updated: now }
    }

    fn take(&mut self, now: Instant) -> Result<(), RateExceeded> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.per_second)).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / f64::from(self.per_second);
        Err(RateExceeded {
            per_second: self.per_second,
            retry_after: Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    fn limiter(default: Rate, overrides: &[(&str, Rate)], clock: &Arc<ManualClock>) -> RateLimiter {
        let rates = TenantRates {
            default,
            overrides: overrides.iter().map(|(name, rate)| (tenant(name), *rate)).collect(),
            clock: RateClock::Manual(Arc::clone(clock)),
        };
        let tenants = [tenant("acme"), tenant("globex")];
        RateLimiter::new(&rates, &tenants)
    }

    #[test]
    fn a_burst_passes_the_next_waits_for_the_refill() {
        let clock = ManualClock::new();
        let limiter = limiter(Rate { per_second: 2, burst: 3 }, &[], &clock);
        let acme = tenant("acme");
        for _ in 0..3 {
            limiter.check(&acme).unwrap();
        }
        let refused = limiter.check(&acme).unwrap_err();
        assert_eq!(refused.per_second, 2);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        clock.advance(Duration::from_millis(499));
        assert!(limiter.check(&acme).is_err(), "not refilled yet");
        clock.advance(Duration::from_millis(1));
        limiter.check(&acme).unwrap();
        assert!(limiter.check(&acme).is_err());
        // A long quiet spell refills up to the burst, not beyond.
        clock.advance(Duration::from_secs(3600));
        for _ in 0..3 {
            limiter.check(&acme).unwrap();
        }
        assert!(limiter.check(&acme).is_err());
    }

    #[test]
    fn tenants_have_their_own_buckets_and_overrides() {
        let clock = ManualClock::new();
        let limiter = limiter(Rate { per_second: 1, burst: 0 }, &[("globex", Rate::UNLIMITED)], &clock);
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        limiter.check(&acme).unwrap();
        let refused = limiter.check(&acme).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(1), "a burst of 0 means the rate");
        for _ in 0..10_000 {
            limiter.check(&globex).unwrap();
        }
        // A tenant the limiter was not built for cannot have authenticated; it is not limited.
        limiter.check(&tenant("initech")).unwrap();
    }
}
