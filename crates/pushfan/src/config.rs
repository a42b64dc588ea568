//! Configuration: embedded defaults, then a TOML file, then `PUSHFAN__SECTION__KEY` environment
//! variables, then [`Config::validate`]. Unknown keys are errors, so a typo never silently
//! falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything a pushfan process reads at start.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Where subscriptions and the broadcast ledger live.
    pub(crate) store: StoreConfig,
    /// How roles pass work to each other.
    pub(crate) bus: BusConfig,
    /// The gRPC API.
    pub(crate) ingest: IngestConfig,
    /// Tenants and their API keys.
    pub(crate) tenants: Vec<TenantConfig>,
    /// The application server's VAPID identity.
    pub(crate) vapid: VapidConfig,
    /// Encryption workers.
    pub(crate) worker: WorkerConfig,
    /// Delivery to push services.
    pub(crate) gateway: GatewaySettings,
    /// Prometheus metrics.
    pub(crate) metrics: MetricsConfig,
    /// Where pushfan may send.
    pub(crate) egress: EgressConfig,
}

/// `[egress]`: where pushfan may send. By default only named hosts that resolve to public
/// addresses; IP-literal endpoints, local names (`localhost`, `*.internal`) and non-public
/// addresses (loopback, RFC 1918, CGNAT, link-local and cloud metadata, unique-local IPv6, ...)
/// are refused at subscribe, import and send, and again when the gateway connects.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EgressConfig {
    /// Networks (CIDR, such as `10.1.0.0/16` or `::1/128`) allowed beyond public addresses: an
    /// internal push service, or the simulated one on loopback. `[ingest]
    /// allow_http_loopback_endpoints = true` adds `127.0.0.0/8` and `::1/128`.
    pub(crate) allowed_networks: Vec<String>,
    /// If not empty, the only hosts endpoints may name: `push.example.com` exactly or
    /// `*.googleapis.com` for any name below it. The push services' hosts are
    /// `*.googleapis.com` (FCM), `*.push.services.mozilla.com`, `*.push.apple.com` and
    /// `*.notify.windows.com`.
    pub(crate) allowed_hosts: Vec<String>,
}

/// Which store backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StoreBackend {
    /// fjall on local disk, in this process.
    #[default]
    Embedded,
    /// A single Redis server.
    Redis,
    /// A Redis Cluster.
    RedisCluster,
}

/// `[store]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StoreConfig {
    /// `embedded`, `redis` or `redis-cluster`.
    pub(crate) backend: StoreBackend,
    /// The embedded store's directory.
    pub(crate) path: PathBuf,
    /// Redis URLs: one server, or some nodes of a cluster.
    pub(crate) redis_urls: Vec<String>,
    /// Shards per tenant; fixed once data is written, and at least the bus partitions.
    pub(crate) shards: u16,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Embedded,
            path: PathBuf::from("pushfan-data"),
            redis_urls: vec!["redis://127.0.0.1:6379/".into()],
            shards: 64,
        }
    }
}

/// Which bus backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum BusBackend {
    /// Bounded channels in this process.
    #[default]
    Embedded,
    /// A Kafka-protocol cluster.
    Kafka,
}

/// `[bus]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BusConfig {
    /// `embedded` or `kafka`.
    pub(crate) backend: BusBackend,
    /// Kafka bootstrap servers.
    pub(crate) brokers: String,
    /// Prefix of every Kafka topic name.
    pub(crate) topic_prefix: String,
    /// Create the topics at start with this many partitions (0: leave them to the operator).
    pub(crate) create_topics_with_partitions: i32,
    /// Replication factor for topics created at start.
    pub(crate) replication: i32,
    /// The largest Kafka record pushfan sends (default 768 KiB, under the brokers' default 1 MB
    /// `message.max.bytes`); delivery batches fill it, so raising it (with the brokers' limit)
    /// means fewer, larger pages. The embedded bus takes 4 MiB.
    pub(crate) max_record_bytes: Option<usize>,
    /// How long a Kafka broker may hold a consumer's fetch that finds nothing (default 100 ms).
    /// Kafka answers as soon as records arrive, so this paces only idle polling; a broker that
    /// holds every fetch for the whole wait (tansu) is as fast as this is short.
    pub(crate) fetch_wait_ms: Option<u64>,
    /// Further librdkafka properties, applied last: security (`security.protocol`,
    /// `sasl.*`), tuning, or `debug = "cgrp,consumer"` to trace consumer-group rebalances.
    pub(crate) librdkafka: BTreeMap<String, String>,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            backend: BusBackend::Embedded,
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "pushfan.".into(),
            create_topics_with_partitions: 0,
            replication: 1,
            max_record_bytes: None,
            fetch_wait_ms: None,
            librdkafka: BTreeMap::new(),
        }
    }
}

/// `[ingest]`. The limits' defaults are `pushfan_ingest::Limits::default()`, given here.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct IngestConfig {
    /// Where the gRPC API listens.
    pub(crate) listen: SocketAddr,
    /// Accept plain `http://` endpoints on loopback (the simulated push service, tests).
    pub(crate) allow_http_loopback_endpoints: bool,
    /// PEM certificate chain (the server's first) to serve the API over TLS with; set with
    /// `tls_key_file`. Unset (the default): plaintext HTTP/2, for loopback or behind a proxy
    /// that terminates TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: when set, every client must present a certificate one of them
    /// issued (mutual TLS). Needs `tls_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_client_ca_file: Option<PathBuf>,
    /// Connections served at once (default 1024); past it new connections wait in the kernel's
    /// listen backlog until one closes.
    pub(crate) max_connections: usize,
    /// Requests worked on at once over all connections (default 128); a request waits up to
    /// `request_timeout_ms` for a place, then fails UNAVAILABLE. With `max_message_bytes` this
    /// bounds the memory of requests being decoded.
    pub(crate) max_concurrent_requests: usize,
    /// `WatchBroadcast` streams open at once (default 1024); each polls the ledger until its
    /// broadcast completes. Past it a watch is refused with RESOURCE_EXHAUSTED.
    pub(crate) max_watches: usize,
    /// Longest a request may take, waiting included, milliseconds (default 30000); for
    /// `BulkImport`, longest wait for its next message. Also the shutdown's grace period.
    pub(crate) request_timeout_ms: u64,
    /// Time a new connection has to start HTTP/2, TLS handshake included, milliseconds
    /// (default 10000); then it is closed.
    pub(crate) handshake_timeout_ms: u64,
    /// Largest request message of `SubscriptionService`, i.e. a `BulkImport` batch (default
    /// 4194304, 4 MiB); publish requests take at most 1 MiB and broadcast requests 64 KiB.
    pub(crate) max_message_bytes: usize,
    /// Calls open at once per HTTP/2 connection (default 128); also what bounds watches.
    pub(crate) http2_max_concurrent_streams: u32,
    /// Ping an idle connection this often, milliseconds (default 60000).
    pub(crate) http2_keepalive_interval_ms: u64,
    /// Close a connection whose ping is unanswered this long, milliseconds (default 20000).
    pub(crate) http2_keepalive_timeout_ms: u64,
    /// Requests per second each tenant may make, sustained (default 1000; 0: unlimited).
    /// Per ingest process. A tenant past it gets RESOURCE_EXHAUSTED with `retry-after`.
    pub(crate) tenant_requests_per_second: u32,
    /// Requests a tenant may make back to back after a quiet spell (default 2000; 0: the
    /// per-second rate).
    pub(crate) tenant_burst: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        let limits = pushfan_ingest::Limits::default();
        let rate = limits.tenant_rates.default;
        Self {
            listen: ([127, 0, 0, 1], 50051).into(),
            allow_http_loopback_endpoints: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            max_connections: limits.max_connections,
            max_concurrent_requests: limits.max_concurrent_requests,
            max_watches: limits.max_watches,
            request_timeout_ms: millis(limits.request_timeout),
            handshake_timeout_ms: millis(limits.handshake_timeout),
            max_message_bytes: limits.max_message_bytes,
            http2_max_concurrent_streams: limits.max_concurrent_streams,
            http2_keepalive_interval_ms: millis(limits.keepalive_interval),
            http2_keepalive_timeout_ms: millis(limits.keepalive_timeout),
            tenant_requests_per_second: rate.per_second,
            tenant_burst: rate.burst,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl IngestConfig {
    /// TLS, when configured.
    pub(crate) fn tls(&self) -> Option<pushfan_ingest::TlsFiles> {
        let (Some(cert_file), Some(key_file)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return None;
        };
        Some(pushfan_ingest::TlsFiles {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: self.tls_client_ca_file.clone(),
        })
    }

    /// The server's limits, tenants' own rates included.
    pub(crate) fn limits(&self, tenants: &[TenantConfig]) -> anyhow::Result<pushfan_ingest::Limits> {
        let default =
            pushfan_ingest::Rate { per_second: self.tenant_requests_per_second, burst: self.tenant_burst };
        let mut overrides = std::collections::HashMap::new();
        for tenant in tenants {
            if tenant.requests_per_second.is_some() || tenant.burst.is_some() {
                let rate = pushfan_ingest::Rate {
                    per_second: tenant.requests_per_second.unwrap_or(default.per_second),
                    burst: tenant.burst.unwrap_or(default.burst),
                };
                overrides.insert(pushfan_store::TenantId::new(&tenant.name)?, rate);
            }
        }
        Ok(pushfan_ingest::Limits {
            max_connections: self.max_connections,
            max_concurrent_requests: self.max_concurrent_requests,
            max_watches: self.max_watches,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_message_bytes: self.max_message_bytes,
            max_concurrent_streams: self.http2_max_concurrent_streams,
            keepalive_interval: Duration::from_millis(self.http2_keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(self.http2_keepalive_timeout_ms),
            tenant_rates: pushfan_ingest::TenantRates { default, overrides, ..Default::default() },
        })
    }

    /// Ranges, and TLS files given together.
    fn validate(&self) -> anyhow::Result<()> {
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            bail!("ingest.tls_cert_file and ingest.tls_key_file go together: give both or neither");
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            bail!("ingest.tls_client_ca_file needs TLS: set ingest.tls_cert_file and ingest.tls_key_file");
        }
        if self.max_connections == 0
            || self.max_concurrent_requests == 0
            || self.max_watches == 0
            || self.http2_max_concurrent_streams == 0
        {
            bail!(
                "ingest.max_connections, ingest.max_concurrent_requests, ingest.max_watches and \
                 ingest.http2_max_concurrent_streams must be at least 1"
            );
        }
        if !(100..=3_600_000).contains(&self.request_timeout_ms) {
            bail!(
                "ingest.request_timeout_ms must be 100 to 3600000 (an hour), got {}",
                self.request_timeout_ms
            );
        }
        if !(100..=600_000).contains(&self.handshake_timeout_ms) {
            bail!("ingest.handshake_timeout_ms must be 100 to 600000, got {}", self.handshake_timeout_ms);
        }
        if !(64 << 10..=64 << 20).contains(&self.max_message_bytes) {
            bail!(
                "ingest.max_message_bytes must be 65536 (64 KiB) to 67108864 (64 MiB), got {}",
                self.max_message_bytes
            );
        }
        if self.http2_keepalive_interval_ms < 1000 || self.http2_keepalive_timeout_ms < 1000 {
            bail!("ingest.http2_keepalive_interval_ms and ingest.http2_keepalive_timeout_ms must be at least 1000");
        }
        Ok(())
    }
}

/// `[[tenants]]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantConfig {
    /// The tenant's name.
    pub(crate) name: String,
    /// Bearer tokens that act as this tenant.
    pub(crate) api_keys: Vec<String>,
    /// This tenant's own `ingest.tenant_requests_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) requests_per_second: Option<u32>,
    /// This tenant's own `ingest.tenant_burst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) burst: Option<u32>,
}

/// `[vapid]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct VapidConfig {
    /// `mailto:` or `https:` contact for the push services.
    pub(crate) subject: String,
    /// Token validity, seconds (at most 86400).
    pub(crate) validity_secs: u64,
    /// Keys by id; subscriptions remember theirs.
    pub(crate) keys: Vec<VapidKeyConfig>,
}

impl Default for VapidConfig {
    fn default() -> Self {
        Self { subject: String::new(), validity_secs: 12 * 3600, keys: Vec::new() }
    }
}

/// `[[vapid.keys]]`: give the private key inline or as a file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VapidKeyConfig {
    /// The id subscriptions refer to.
    pub(crate) id: u32,
    /// Base64url private scalar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) private_key: Option<String>,
    /// A PEM file (PKCS#8 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) private_key_file: Option<PathBuf>,
}

/// `[worker]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WorkerConfig {
    /// Subscriptions per page (and per delivery batch).
    pub(crate) page_size: usize,
    /// Shard jobs encrypted at once per process.
    pub(crate) concurrent_shard_jobs: usize,
    /// `aws-lc-rs` or `rustcrypto`.
    pub(crate) crypto_backend: String,
    /// Pad payloads to standard size buckets to hide their length.
    pub(crate) pad_payloads: bool,
    /// `direct`: a worker delivers its own pages through its gateway; `bus`: pages go to the
    /// `deliveries` topic for `pushfan gateway` processes. The same on every worker.
    pub(crate) hand_off: HandOffSetting,
}

/// `[worker] hand_off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HandOffSetting {
    #[default]
    Direct,
    Bus,
}

impl From<HandOffSetting> for pushfan_pipeline::HandOff {
    fn from(setting: HandOffSetting) -> Self {
        match setting {
            HandOffSetting::Direct => Self::Direct,
            HandOffSetting::Bus => Self::Bus,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            page_size: 512,
            concurrent_shard_jobs: 4,
            crypto_backend: "aws-lc-rs".into(),
            pad_payloads: false,
            hand_off: HandOffSetting::default(),
        }
    }
}

/// `[gateway]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct GatewaySettings {
    /// Requests in flight per push-service origin.
    pub(crate) max_in_flight_per_origin: usize,
    /// HTTP/2 connections held per push-service origin.
    pub(crate) connections_per_origin: usize,
    /// Delivery batches worked on at once per process.
    pub(crate) concurrent_batches: usize,
    /// Bytes of deliveries per process that may wait for a throttling push service or a retry
    /// backoff besides those batches, copied out of their pages; 0 keeps waiting batches working.
    pub(crate) parked_bytes: usize,
    /// The old bound, in whole batches: read only to refuse it with a pointer to `parked_bytes`.
    #[serde(skip_serializing)]
    pub(crate) parked_batches: Option<serde::de::IgnoredAny>,
    /// One request's deadline, milliseconds.
    pub(crate) request_timeout_ms: u64,
    /// Attempts per push, the first included; 429/503 answers do not count (see
    /// `throttle_deadline_secs`).
    pub(crate) max_attempts: u32,
    /// Seconds one push may be held back by its push service throttling (429/503 answers, or
    /// its origin paused) before it ends as `throttled` without another request; no pause
    /// lasts past it.
    pub(crate) throttle_deadline_secs: u64,
    /// Speak h2c (HTTP/2 without TLS) to `http://` loopback endpoints.
    pub(crate) h2c: bool,
    /// PEM files of extra CAs to trust (a simulated push service's).
    pub(crate) extra_root_certs: Vec<PathBuf>,
    /// Write each delivery's outcome back to the subscription.
    pub(crate) record_outcomes: bool,
    /// Seconds after which a push-service origin not sent to closes its connections and is
    /// forgotten (unless paused or in use).
    pub(crate) idle_timeout_secs: u64,
    /// Push-service origins (connections, pause, VAPID token) held at once; past it the least
    /// recently used idle one is forgotten.
    pub(crate) max_origins: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            max_in_flight_per_origin: 256,
            connections_per_origin: 2,
            concurrent_batches: 8,
            parked_bytes: pushfan_pipeline::PipelineConfig::default().parked_bytes,
            parked_batches: None,
            request_timeout_ms: 15_000,
            max_attempts: 6,
            throttle_deadline_secs: 600,
            h2c: false,
            extra_root_certs: Vec::new(),
            record_outcomes: true,
            idle_timeout_secs: 90,
            max_origins: 10_000,
        }
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MetricsConfig {
    /// Serve Prometheus metrics here; off when unset.
    pub(crate) listen: Option<SocketAddr>,
}

impl Config {
    /// Defaults, then `file` if given, then the environment.
    pub(crate) fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("PUSHFAN__").split("__").lowercase(true))
            .extract()
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// The egress policy `[egress]` describes, loopback added when
    /// `[ingest] allow_http_loopback_endpoints` is on.
    pub(crate) fn egress_policy(&self) -> anyhow::Result<pushfan_webpush::EgressPolicy> {
        use pushfan_webpush::egress::IpNet;
        use pushfan_webpush::{EgressPolicy, HostPattern};
        let networks = self
            .egress
            .allowed_networks
            .iter()
            .map(|text| {
                text.trim().parse::<IpNet>().with_context(|| {
                    format!("egress.allowed_networks: `{text}` is not a network in CIDR form (10.0.0.0/8, ::1/128)")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let hosts = self
            .egress
            .allowed_hosts
            .iter()
            .map(|text| text.parse::<HostPattern>().context("egress.allowed_hosts"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut policy = EgressPolicy::new(networks, hosts);
        if self.ingest.allow_http_loopback_endpoints {
            policy = policy.with_networks(EgressPolicy::loopback_networks());
        }
        Ok(policy)
    }

    /// Checks what serde cannot: ranges, and values that only make sense together.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        self.ingest.validate()?;
        self.egress_policy()?;
        if self.store.shards == 0 {
            bail!("store.shards must be at least 1");
        }
        if self.store.backend != StoreBackend::Embedded && self.store.redis_urls.is_empty() {
            bail!("store.redis_urls must name at least one Redis for the {:?} backend", self.store.backend);
        }
        if self.bus.backend == BusBackend::Kafka && self.bus.brokers.trim().is_empty() {
            bail!("bus.brokers must name the Kafka bootstrap servers");
        }
        if let Some(bytes) = self.bus.max_record_bytes {
            if !(64 * 1024..=256 << 20).contains(&bytes) {
                bail!("bus.max_record_bytes must be 65536 (64 KiB) to 268435456 (256 MiB), got {bytes}");
            }
        }
        if let Some(wait) = self.bus.fetch_wait_ms {
            if !(1..=30_000).contains(&wait) {
                bail!("bus.fetch_wait_ms must be 1 to 30000 (milliseconds), got {wait}");
            }
        }
        if self.gateway.parked_batches.is_some() {
            bail!(
                "gateway.parked_batches is gone: parked deliveries are bounded by their bytes now, \
                 set gateway.parked_bytes instead (0 turns parking off; 128 batches were {} bytes)",
                96 << 20
            );
        }
        if self.worker.page_size == 0 || self.worker.page_size > 10_000 {
            bail!("worker.page_size must be 1 to 10000, got {}", self.worker.page_size);
        }
        self.worker
            .crypto_backend
            .parse::<pushfan_webpush::Backend>()
            .map_err(|e| anyhow::anyhow!("worker.crypto_backend: {e}"))?;
        if !(60..=86_400).contains(&self.vapid.validity_secs) {
            bail!("vapid.validity_secs must be 60 to 86400 (RFC 8292 caps tokens at 24 h)");
        }
        for (i, key) in self.vapid.keys.iter().enumerate() {
            if key.private_key.is_some() == key.private_key_file.is_some() {
                bail!("vapid.keys[{i}] (id {}): give exactly one of private_key or private_key_file", key.id);
            }
        }
        for (i, tenant) in self.tenants.iter().enumerate() {
            pushfan_store::TenantId::new(&tenant.name)
                .map_err(|e| anyhow::anyhow!("tenants[{i}].name: {e}"))?;
            if tenant.api_keys.iter().any(|k| k.len() < 16) {
                bail!("tenants[{i}] ({}): every API key must be at least 16 characters", tenant.name);
            }
        }
        if self.gateway.throttle_deadline_secs == 0 {
            bail!("gateway.throttle_deadline_secs must be at least 1");
        }
        if self.gateway.idle_timeout_secs == 0 || self.gateway.max_origins == 0 {
            bail!("gateway.idle_timeout_secs and gateway.max_origins must be at least 1");
        }
        if self.gateway.max_in_flight_per_origin == 0
            || self.gateway.max_attempts == 0
            || self.gateway.connections_per_origin == 0
        {
            bail!(
                "gateway.max_in_flight_per_origin, gateway.max_attempts and gateway.connections_per_origin must be at least 1"
            );
        }
        Ok(())
    }

    /// The gateway's request deadline.
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pushfan.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(Some(&path))
    }

    #[test]
    fn defaults_are_a_valid_standalone_config() {
        let config = Config::load(None).unwrap();
        assert_eq!(config.store.backend, StoreBackend::Embedded);
        assert_eq!(config.bus.backend, BusBackend::Embedded);
    }

    #[test]
    fn a_file_overrides_defaults_and_typos_are_refused() {
        let config =
            load("[store]\nbackend = \"redis\"\nredis_urls = [\"redis://10.0.0.1:6379/\"]\nshards = 16\n")
                .unwrap();
        assert_eq!((config.store.backend, config.store.shards), (StoreBackend::Redis, 16));
        let err = load("[store]\nshardz = 16\n").unwrap_err();
        assert!(format!("{err:#}").contains("shardz"), "{err:#}");
        let err = load("[gateway]\nparked_batches = 64\n").unwrap_err();
        assert!(format!("{err:#}").contains("set gateway.parked_bytes instead"), "{err:#}");
        let err = load("[worker]\ncrypto_backend = \"openssl\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("worker.crypto_backend"), "{err:#}");
        let err = load("[worker]\nhand_off = \"carrier-pigeon\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("worker.hand_off"), "{err:#}");
        assert!(format!("{err:#}").contains("`direct`"), "{err:#}");
        assert_eq!(load("[worker]\nhand_off = \"bus\"\n").unwrap().worker.hand_off, HandOffSetting::Bus);
        let config = load("[bus.librdkafka]\n\"security.protocol\" = \"ssl\"\ndebug = \"cgrp\"\n").unwrap();
        let librdkafka: Vec<_> =
            config.bus.librdkafka.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(librdkafka, [("debug", "cgrp"), ("security.protocol", "ssl")]);
        assert_eq!(load("[bus]\nmax_record_bytes = 4194304\n").unwrap().bus.max_record_bytes, Some(4 << 20));
        let err = load("[bus]\nmax_record_bytes = 1000\n").unwrap_err();
        assert!(format!("{err:#}").contains("bus.max_record_bytes must be 65536"), "{err:#}");
        assert_eq!(load("[bus]\nfetch_wait_ms = 50\n").unwrap().bus.fetch_wait_ms, Some(50));
        let err = load("[bus]\nfetch_wait_ms = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("bus.fetch_wait_ms must be 1 to 30000"), "{err:#}");
        let err = load("[[vapid.keys]]\nid = 1\n").unwrap_err();
        assert!(format!("{err:#}").contains("exactly one of private_key"), "{err:#}");
        let err = load("[[tenants]]\nname = \"a b\"\napi_keys = []\n").unwrap_err();
        assert!(format!("{err:#}").contains("tenants[0].name"), "{err:#}");
        assert!(Config::load(Some(Path::new("/nonexistent/pushfan.toml"))).is_err());
    }

    #[test]
    fn ingest_tls_limits_and_tenant_rates_are_read_and_checked() {
        let defaults = Config::load(None).unwrap();
        assert!(defaults.ingest.tls().is_none(), "plaintext by default");
        let limits = defaults.ingest.limits(&defaults.tenants).unwrap();
        assert_eq!(limits.max_connections, pushfan_ingest::Limits::default().max_connections);
        assert_eq!(limits.request_timeout, Duration::from_secs(30));
        let config = load(
            "[ingest]\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\ntls_client_ca_file = \"ca.pem\"\n\
             max_connections = 10\nrequest_timeout_ms = 5000\ntenant_requests_per_second = 50\ntenant_burst = 100\n\
             [[tenants]]\nname = \"acme\"\napi_keys = []\nrequests_per_second = 5\n\
             [[tenants]]\nname = \"globex\"\napi_keys = []\n",
        )
        .unwrap();
        let tls = config.ingest.tls().unwrap();
        assert_eq!(tls.client_ca_file.as_deref(), Some(Path::new("ca.pem")));
        let limits = config.ingest.limits(&config.tenants).unwrap();
        assert_eq!((limits.max_connections, limits.request_timeout), (10, Duration::from_secs(5)));
        assert_eq!(limits.max_watches, pushfan_ingest::Limits::default().max_watches);
        let rates = &limits.tenant_rates;
        assert_eq!(rates.default, pushfan_ingest::Rate { per_second: 50, burst: 100 });
        let acme = pushfan_store::TenantId::new("acme").unwrap();
        assert_eq!(rates.overrides[&acme], pushfan_ingest::Rate { per_second: 5, burst: 100 });
        assert_eq!(rates.overrides.len(), 1);
        for (toml, expected) in [
            ("[ingest]\ntls_cert_file = \"c.pem\"\n", "go together"),
            ("[ingest]\ntls_client_ca_file = \"ca.pem\"\n", "needs TLS"),
            ("[ingest]\nmax_connections = 0\n", "at least 1"),
            ("[ingest]\nmax_watches = 0\n", "at least 1"),
            ("[ingest]\nrequest_timeout_ms = 0\n", "ingest.request_timeout_ms must be"),
            ("[ingest]\nmax_message_bytes = 100\n", "ingest.max_message_bytes must be"),
            ("[ingest]\nmax_conections = 10\n", "max_conections"),
        ] {
            let err = load(toml).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{toml}: {err:#}");
        }
    }
}
