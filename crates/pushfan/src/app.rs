//! Turns a [`Config`] into running roles: opens the store and the bus, loads VAPID keys, builds
//! the gateway, and runs the chosen loops (and the gRPC API) until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use pushfan_bus::{Bus, EmbeddedBus, EmbeddedConfig, KafkaBus, KafkaConfig, TopicNames};
use pushfan_gateway::{Gateway, GatewayConfig, RetryPolicy};
use pushfan_ingest::{ApiKeys, IngestState, ServeOptions};
use pushfan_pipeline::{pauses, run_roles, HandOff, Keyring, Pipeline, PipelineConfig, Role};
use pushfan_store::ledger::BroadcastLedger;
use pushfan_store::{
    EmbeddedStore, PauseBoard, RedisConfig, RedisStore, RedisTarget, ShardCount, SubscriptionStore, TenantId,
    VapidKeyId,
};
use pushfan_webpush::vapid::{Subject, TokenCache, VapidKey, VapidSigner};
use pushfan_webpush::{EndpointPolicy, Padding};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{BusBackend, Config, StoreBackend};

/// Which parts of pushfan a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Roles {
    /// The gRPC API.
    pub(crate) ingest: bool,
    /// Pipeline loops.
    pub(crate) loops: &'static [Role],
}

impl Roles {
    /// Everything: `pushfan standalone`.
    pub(crate) const STANDALONE: Roles = Roles { ingest: true, loops: &Role::ALL };
    /// The API, and the stats loop that keeps broadcast progress for it.
    pub(crate) const INGEST: Roles = Roles { ingest: true, loops: &[Role::Stats] };
    /// Planning and encryption.
    pub(crate) const WORKER: Roles = Roles { ingest: false, loops: &[Role::Planner, Role::Encryptor] };
    /// Delivery.
    pub(crate) const GATEWAY: Roles = Roles { ingest: false, loops: &[Role::Deliverer] };
}

/// A started process: where its API listens (if it runs one), and how to stop it.
#[derive(Debug)]
pub(crate) struct Running {
    /// The gRPC API's address, when this process serves it.
    pub(crate) ingest_addr: Option<SocketAddr>,
    /// Cancelling stops every role.
    pub(crate) shutdown: CancellationToken,
    /// Resolves when every role has stopped.
    pub(crate) done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Opens everything `config` names and starts `roles`. Returns once the API is listening.
pub(crate) async fn start(config: &Config, roles: Roles) -> anyhow::Result<Running> {
    let stores = open_store(config).await?;
    match config.bus.backend {
        BusBackend::Embedded => {
            start_with(config, roles, EmbeddedBus::new(EmbeddedConfig::default()), stores).await
        }
        BusBackend::Kafka => {
            let mut kafka = KafkaConfig::new(config.bus.brokers.clone());
            kafka.topic_names = TopicNames::new(config.bus.topic_prefix.clone());
            kafka.extra = config.bus.librdkafka.clone().into_iter().collect();
            if let Some(bytes) = config.bus.max_record_bytes {
                kafka.max_record_bytes = bytes;
            }
            if let Some(wait) = config.bus.fetch_wait_ms {
                kafka.fetch_wait = Duration::from_millis(wait);
            }
            let bus = KafkaBus::new(kafka).context("connecting to Kafka")?;
            if config.bus.create_topics_with_partitions > 0 {
                bus.create_topics(config.bus.create_topics_with_partitions, config.bus.replication)
                    .await
                    .context("creating the bus topics")?;
            }
            start_with(config, roles, bus, stores).await
        }
    }
}

async fn start_with<B: Bus>(
    config: &Config,
    roles: Roles,
    bus: B,
    Stores { store, ledger, pause_board }: Stores,
) -> anyhow::Result<Running> {
    let shutdown = CancellationToken::new();
    // One egress policy for everything that decides where pushfan sends: ingest's and the
    // pipeline's endpoint checks, and the gateway's connect-time check.
    let egress = Arc::new(config.egress_policy()?);
    let policy = EndpointPolicy::new(config.ingest.allow_http_loopback_endpoints, Arc::clone(&egress));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ingest_addr = None;
    if roles.ingest {
        let listener = TcpListener::bind(config.ingest.listen)
            .await
            .with_context(|| format!("binding the gRPC API to {}", config.ingest.listen))?;
        ingest_addr = Some(listener.local_addr()?);
        let state = IngestState::new(
            Arc::clone(&store),
            Arc::clone(&ledger),
            bus.clone(),
            api_keys(config)?,
            policy.clone(),
            config.vapid.keys.iter().map(|key| key.id),
        );
        let options =
            ServeOptions { tls: config.ingest.tls(), limits: config.ingest.limits(&config.tenants)? };
        if let Some(tls) = &options.tls {
            // Read here too, so a bad file stops the start rather than the running server.
            tls.acceptor().context("ingest TLS")?;
        }
        if options.tls.is_none() && !config.ingest.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %config.ingest.listen,
                "the gRPC API serves plaintext beyond loopback: API keys cross the network in the clear \
                 unless a proxy in front terminates TLS (set ingest.tls_cert_file and ingest.tls_key_file)"
            );
        }
        let stop = shutdown.clone();
        tasks.spawn(async move {
            pushfan_ingest::serve_with(listener, state, options, stop.cancelled_owned())
                .await
                .context("gRPC API failed")
        });
    }
    if !roles.loops.is_empty() {
        let pipeline = Pipeline {
            bus,
            store,
            ledger,
            keyring: Arc::new(keyring(config)?),
            gateway: gateway(config, Arc::clone(&egress))?,
            config: PipelineConfig {
                page_size: config.worker.page_size,
                concurrent_shard_jobs: config.worker.concurrent_shard_jobs,
                concurrent_batches: config.gateway.concurrent_batches,
                parked_bytes: config.gateway.parked_bytes,
                backend: config.worker.crypto_backend.parse().map_err(anyhow::Error::msg)?,
                padding: if config.worker.pad_payloads { Padding::standard_buckets() } else { Padding::None },
                endpoint_policy: policy,
                record_outcomes: config.gateway.record_outcomes,
                hand_off: config.worker.hand_off.into(),
            },
        };
        let delivers = roles.loops.contains(&Role::Deliverer)
            || (roles.loops.contains(&Role::Encryptor) && pipeline.config.hand_off == HandOff::Direct);
        if let Some(board) = pause_board.filter(|_| delivers) {
            let (gateway, stop) = (pipeline.gateway.clone(), shutdown.clone());
            tasks.spawn(
                async move { pauses::run(gateway, board, stop).await.context("sharing pauses failed") },
            );
        }
        let (stop, loops) = (shutdown.clone(), roles.loops);
        tasks.spawn(async move { run_roles(pipeline, loops, stop).await.context("pipeline failed") });
    }
    let stop_all = shutdown.clone();
    let done = tokio::spawn(async move {
        let mut outcome = Ok(());
        while let Some(finished) = tasks.join_next().await {
            if let Err(error) = finished.context("a role panicked").and_then(|result| result) {
                stop_all.cancel();
                outcome = outcome.and(Err(error));
            }
        }
        outcome
    });
    Ok(Running { ingest_addr, shutdown, done })
}

/// The store, its ledger, and (Redis only: one process has nothing to share with) the board
/// where delivering processes share push-service pauses.
struct Stores {
    store: Arc<dyn SubscriptionStore>,
    ledger: Arc<dyn BroadcastLedger>,
    pause_board: Option<Arc<dyn PauseBoard>>,
}

async fn open_store(config: &Config) -> anyhow::Result<Stores> {
    let shards = ShardCount::new(config.store.shards)?;
    match config.store.backend {
        StoreBackend::Embedded => {
            std::fs::create_dir_all(&config.store.path)
                .with_context(|| format!("creating {}", config.store.path.display()))?;
            let store = Arc::new(
                EmbeddedStore::open(&config.store.path, shards)
                    .with_context(|| format!("opening the store in {}", config.store.path.display()))?,
            );
            Ok(Stores { store: store.clone(), ledger: store, pause_board: None })
        }
        StoreBackend::Redis | StoreBackend::RedisCluster => {
            let target = if config.store.backend == StoreBackend::Redis {
                let [url] = config.store.redis_urls.as_slice() else {
                    bail!("store.redis_urls: the redis backend takes exactly one URL");
                };
                RedisTarget::Single(url.clone())
            } else {
                RedisTarget::Cluster(config.store.redis_urls.clone())
            };
            let store = Arc::new(
                RedisStore::connect(RedisConfig::new(target, shards)).await.context("connecting to Redis")?,
            );
            Ok(Stores { store: store.clone(), ledger: store.clone(), pause_board: Some(store) })
        }
    }
}

fn api_keys(config: &Config) -> anyhow::Result<ApiKeys> {
    let mut keys = ApiKeys::new();
    for tenant in &config.tenants {
        let id = TenantId::new(&tenant.name)?;
        for key in &tenant.api_keys {
            keys.insert(id.clone(), key).with_context(|| format!("tenant {}: API key", tenant.name))?;
        }
    }
    Ok(keys)
}

fn keyring(config: &Config) -> anyhow::Result<Keyring> {
    let mut keyring = Keyring::default();
    if config.vapid.keys.is_empty() {
        bail!(
            "vapid.keys is empty: a gateway needs at least one key (make one with `pushfan vapid generate`)"
        );
    }
    let subject = Subject::parse(&config.vapid.subject).context("vapid.subject")?;
    for key in &config.vapid.keys {
        let vapid = match (&key.private_key, &key.private_key_file) {
            (Some(inline), _) => VapidKey::from_base64(inline),
            (None, Some(file)) => {
                let pem =
                    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
                VapidKey::from_pem(&pem)
            }
            (None, None) => unreachable!("validated: every key has a source"),
        }
        .with_context(|| format!("vapid.keys id {}", key.id))?;
        let signer = VapidSigner::new(vapid, subject.clone())
            .with_validity(Duration::from_secs(config.vapid.validity_secs))
            .context("vapid.validity_secs")?;
        keyring.insert(VapidKeyId(key.id), TokenCache::with_capacity(signer, config.gateway.max_origins));
    }
    Ok(keyring)
}

fn gateway(config: &Config, egress: Arc<pushfan_webpush::EgressPolicy>) -> anyhow::Result<Gateway> {
    let mut extra_root_certs = Vec::new();
    for path in &config.gateway.extra_root_certs {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        extra_root_certs.extend(
            pushfan_gateway::certificates_from_pem(&pem).with_context(|| path.display().to_string())?,
        );
    }
    Ok(Gateway::new(GatewayConfig {
        max_in_flight_per_origin: config.gateway.max_in_flight_per_origin,
        connections_per_origin: config.gateway.connections_per_origin,
        request_timeout: config.request_timeout(),
        retry: RetryPolicy {
            max_attempts: config.gateway.max_attempts,
            throttle_deadline: Duration::from_secs(config.gateway.throttle_deadline_secs),
            ..RetryPolicy::default()
        },
        plaintext_h2c: config.gateway.h2c,
        extra_root_certs,
        idle_timeout: Duration::from_secs(config.gateway.idle_timeout_secs),
        max_origins: config.gateway.max_origins,
        egress,
        ..GatewayConfig::default()
    })?)
}
