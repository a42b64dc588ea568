//! The harness of the tests that run pushfan's cluster roles as separate processes
//! (`cluster.rs`, `cluster_faults.rs`): `pushfan ingest`, `worker` and `gateway` children on a
//! Kafka-protocol broker and a real Redis, sending over TLS HTTP/2 to the simulated push service.
//!
//! The broker is librdkafka's mock cluster, started in the test process on loopback TCP ports
//! that the role processes connect to like to any Kafka. Not tansu: tansu 0.6's group
//! coordinator keeps a member whose session expired as the group's leader, so once a killed
//! process happens to lead a group, that group never completes another rebalance
//! (ARCHITECTURE.md, "Tests and tooling"). Set `PUSHFAN_TEST_CLUSTER_KAFKA_BROKERS` to run the
//! same tests against another broker (the roles then create the topics through the admin API).
//!
//! To keep the roles' logs, set `PUSHFAN_TEST_CLUSTER_LOG_DIR`; `PUSHFAN_TEST_CLUSTER_RUST_LOG`
//! replaces their filter, and `PUSHFAN__BUS__LIBRDKAFKA__DEBUG=cgrp,consumer` (with
//! `librdkafka=debug` in that filter) traces their consumer groups.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pushfan_bus::{Topic, TopicNames};
use pushfan_proto::v1::broadcast_service_client::BroadcastServiceClient;
use pushfan_proto::v1::publish_request::Target;
use pushfan_proto::v1::publish_service_client::PublishServiceClient;
use pushfan_proto::v1::subscription_service_client::SubscriptionServiceClient;
use pushfan_proto::v1::{
    Broadcast, BulkImportRequest, Everyone, GetBroadcastRequest, ListSubscriptionsRequest, PublishRequest,
};
use pushfan_pushsim::{PushSim, PushSimConfig, PushSimHandle};
use pushfan_webpush::vapid::VapidKey;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

pub const API_KEY: &str = "cluster-test-api-key-0123456789";
/// Partitions of every topic the tests create.
pub const PARTITIONS: i32 = 6;
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Fails the test with `what` and `details` once `limit` has passed since `started`.
pub fn within(started: Instant, limit: Duration, what: &str, details: impl FnOnce() -> String) {
    assert!(started.elapsed() < limit, "{what}: not within {limit:?}\n{}", details());
}

/// The Kafka-protocol broker the roles share.
pub enum Broker {
    /// librdkafka's mock cluster, with the bus topics created.
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// A broker someone else runs; the roles create the topics.
    External(String),
}

impl Broker {
    pub fn start(topic_prefix: &str) -> Self {
        if let Ok(brokers) = std::env::var("PUSHFAN_TEST_CLUSTER_KAFKA_BROKERS") {
            return Broker::External(brokers);
        }
        let mock = MockCluster::new(3).expect("mock cluster");
        let names = TopicNames::new(topic_prefix);
        for topic in Topic::ALL {
            // The mock does not serve the admin API's CreateTopics, so the test creates them.
            mock.create_topic(&names.name(topic), PARTITIONS, 3).expect("mock topic");
        }
        Broker::Mock(mock)
    }

    pub fn bootstrap_servers(&self) -> String {
        match self {
            Broker::Mock(mock) => mock.bootstrap_servers(),
            Broker::External(brokers) => brokers.clone(),
        }
    }

    /// `create_topics_with_partitions` for the roles.
    fn partitions_to_create(&self) -> i32 {
        match self {
            Broker::Mock(_) => 0,
            Broker::External(_) => PARTITIONS,
        }
    }

    /// The mock cluster, for fault injection; `None` on an external broker.
    pub fn mock(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        match self {
            Broker::Mock(mock) => Some(mock),
            Broker::External(_) => None,
        }
    }
}

/// How the workers hand their pages to delivery (`[worker] hand_off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOff {
    /// Through the `deliveries` topic to `pushfan gateway` processes.
    Bus,
    /// Each worker delivers its own pages; no gateway runs.
    Direct,
}

impl HandOff {
    fn setting(self) -> &'static str {
        match self {
            HandOff::Bus => "bus",
            HandOff::Direct => "direct",
        }
    }
}

/// What the cluster's configuration sets, for the tests to compute their bounds from.
#[derive(Clone, Debug)]
pub struct Settings {
    pub hand_off: HandOff,
    /// `[store] shards`.
    pub shards: u16,
    /// `[worker] page_size`.
    pub page_size: u64,
    /// `[worker] concurrent_shard_jobs`: shard jobs one worker encrypts at once.
    pub concurrent_shard_jobs: u64,
    /// `[gateway] concurrent_batches`: batches (pages) one delivering process sends at once.
    pub concurrent_batches: u64,
    /// `[gateway] max_in_flight_per_origin`: requests one delivering process has on the wire
    /// to one push service at once.
    pub max_in_flight_per_origin: u64,
    /// Worker processes started with the cluster.
    pub workers: usize,
    /// Gateway processes started with the cluster (bus hand-off only).
    pub gateways: usize,
}

impl Settings {
    /// Two workers and, with the bus hand-off, two gateways; 12 shards, pages of 100, the
    /// product's concurrency defaults.
    pub fn new(hand_off: HandOff) -> Self {
        Self {
            hand_off,
            shards: 12,
            page_size: 100,
            concurrent_shard_jobs: 4,
            concurrent_batches: 8,
            max_in_flight_per_origin: 256,
            workers: 2,
            gateways: if hand_off == HandOff::Bus { 2 } else { 0 },
        }
    }
}

/// A child process, killed when dropped so that a failing test leaves nothing running.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `pushfan` role process and where it serves its Prometheus metrics.
struct Role {
    name: String,
    metrics: SocketAddr,
    /// `None` once killed.
    process: Option<Process>,
}

/// A running cluster: the push service, the broker, and the role processes.
pub struct Cluster {
    pub sim: PushSimHandle,
    pub broker: Broker,
    pub settings: Settings,
    pub tenant: String,
    topic_prefix: String,
    dir: tempfile::TempDir,
    logs: PathBuf,
    config: PathBuf,
    ingest_url: String,
    /// Every role started, killed ones included (their logs matter).
    roles: Vec<Role>,
}

impl Cluster {
    /// Starts the push service (`sim_config`, with TLS), the broker, the ingest and the roles of
    /// `settings`, on the Redis at `redis_url`. `label` keeps the tenant, topics and logs apart.
    pub async fn start(label: &str, sim_config: PushSimConfig, settings: Settings, redis_url: &str) -> Self {
        let unique = format!("{}-{label}", std::process::id());
        let topic_prefix = format!("cluster-{unique}.");
        let broker = Broker::start(&topic_prefix);
        let sim_config = if sim_config.tls.is_some() { sim_config } else { sim_config.with_tls().unwrap() };
        let sim = PushSim::start(sim_config).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let logs: PathBuf = match std::env::var("PUSHFAN_TEST_CLUSTER_LOG_DIR") {
            Ok(kept) => {
                let kept = Path::new(&kept).join(&unique);
                std::fs::create_dir_all(&kept).unwrap();
                kept
            }
            Err(_) => dir.path().to_owned(),
        };
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, sim.cert_pem().unwrap()).unwrap();
        let port = free_port();
        let tenant = format!("cluster-{unique}");
        let config = dir.path().join("pushfan.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[store]
backend = "redis"
redis_urls = ["{redis_url}"]
shards = {shards}
[bus]
backend = "kafka"
brokers = "{brokers}"
topic_prefix = "{topic_prefix}"
create_topics_with_partitions = {partitions}
[ingest]
listen = "127.0.0.1:{port}"
[[tenants]]
name = "{tenant}"
api_keys = ["{API_KEY}"]
[vapid]
subject = "mailto:ops@example.com"
[[vapid.keys]]
id = 1
private_key = "{key}"
[worker]
page_size = {page_size}
concurrent_shard_jobs = {jobs}
hand_off = "{hand_off}"
[gateway]
concurrent_batches = {batches}
max_in_flight_per_origin = {in_flight}
extra_root_certs = ["{ca}"]
[egress]
allowed_networks = ["127.0.0.0/8", "::1/128"]
"#,
                shards = settings.shards,
                brokers = broker.bootstrap_servers(),
                partitions = broker.partitions_to_create(),
                key = VapidKey::generate().private_base64(),
                page_size = settings.page_size,
                jobs = settings.concurrent_shard_jobs,
                hand_off = settings.hand_off.setting(),
                batches = settings.concurrent_batches,
                in_flight = settings.max_in_flight_per_origin,
                ca = ca.display(),
            ),
        )
        .unwrap();

        let mut cluster = Cluster {
            sim,
            broker,
            settings,
            tenant,
            topic_prefix,
            dir,
            logs,
            config,
            ingest_url: format!("http://127.0.0.1:{port}"),
            roles: Vec::new(),
        };
        cluster.start_role("ingest");
        cluster.channel().await;
        for worker in 1..=cluster.settings.workers {
            cluster.start_role(&format!("worker{worker}"));
        }
        for gateway in 1..=cluster.settings.gateways {
            cluster.start_role(&format!("gateway{gateway}"));
        }
        cluster
    }

    /// Starts a role process named `name`: its command is the name without trailing digits
    /// (`worker2` runs `pushfan worker`).
    pub fn start_role(&mut self, name: &str) {
        assert!(self.roles.iter().all(|role| role.name != name), "role names are unique: {name}");
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).unwrap();
        let command = name.trim_end_matches(|c: char| c.is_ascii_digit());
        let filter = std::env::var("PUSHFAN_TEST_CLUSTER_RUST_LOG")
            .unwrap_or_else(|_| "warn,pushfan=info,pushfan_bus=info".to_owned());
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_pushfan"))
            .args(["--config", self.config.to_str().unwrap(), command])
            .env("RUST_LOG", filter)
            .env("PUSHFAN__METRICS__LISTEN", metrics.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.roles.push(Role { name: name.to_owned(), metrics, process: Some(Process(child)) });
    }

    /// SIGKILLs role `name`: no chance to commit or leave a group, like a node that dies.
    pub fn kill(&mut self, name: &str) {
        let role = self.roles.iter_mut().find(|role| role.name == name).expect("a role of this cluster");
        drop(role.process.take().expect("the role is running"));
    }

    /// The roles still running.
    pub fn running_roles(&self) -> Vec<String> {
        self.roles.iter().filter(|role| role.process.is_some()).map(|role| role.name.clone()).collect()
    }

    /// Kills every role still running, so that nothing more reaches the push service.
    pub fn stop_roles(&mut self) {
        for role in &mut self.roles {
            drop(role.process.take());
        }
    }

    /// A channel to the ingest, once its API answers.
    pub async fn channel(&self) -> Channel {
        let started = Instant::now();
        loop {
            if let Ok(channel) = Channel::from_shared(self.ingest_url.clone()).unwrap().connect().await {
                return channel;
            }
            within(started, Duration::from_secs(60), "the ingest's API to answer", || self.log_tails());
            tokio::time::sleep(POLL).await;
        }
    }

    /// Imports the population's subscribers `indices` through `BulkImport`, generating them on a
    /// blocking thread while the earlier ones are sent; returns how many were imported.
    pub async fn import(&self, indices: Vec<u64>) -> u64 {
        const CHUNK: usize = 2_000;
        let population = self.sim.population().clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let expected = indices.len() as u64;
        let producer = tokio::task::spawn_blocking(move || {
            for chunk in indices.chunks(CHUNK) {
                let items = chunk
                    .iter()
                    .map(|&index| population.subscriber(index).unwrap().subscribe_request(Vec::new()))
                    .collect();
                if sender.blocking_send(BulkImportRequest { items }).is_err() {
                    return;
                }
            }
        });
        let imported = SubscriptionServiceClient::new(self.channel().await)
            .bulk_import(authed(tokio_stream::wrappers::ReceiverStream::new(receiver)))
            .await
            .unwrap()
            .into_inner();
        producer.await.unwrap();
        assert_eq!((imported.imported, imported.failed), (expected, 0), "{:?}", imported.errors.first());
        imported.imported
    }

    /// Publishes `payload` to every subscriber; returns the broadcast id.
    pub async fn publish_to_everyone(&self, payload: &'static [u8]) -> String {
        PublishServiceClient::new(self.channel().await)
            .publish(authed(PublishRequest {
                target: Some(Target::Everyone(Everyone {})),
                payload: bytes::Bytes::from_static(payload),
                ..PublishRequest::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .broadcast_id
    }

    /// The broadcast as the ingest reports it; `None` while the ingest (or Redis) does not
    /// answer.
    pub async fn broadcast(&self, channel: &Channel, id: &str) -> Option<Broadcast> {
        BroadcastServiceClient::new(channel.clone())
            .get_broadcast(authed(GetBroadcastRequest { broadcast_id: id.to_owned() }))
            .await
            .ok()
            .and_then(|response| response.into_inner().broadcast)
    }

    /// Every subscription the tenant has, as the store lists them.
    pub async fn stored_subscriptions(&self) -> u64 {
        let mut client = SubscriptionServiceClient::new(self.channel().await);
        let (mut count, mut page_token) = (0, String::new());
        loop {
            let page = client
                .list_subscriptions(authed(ListSubscriptionsRequest {
                    page_size: 1000,
                    page_token,
                    ..ListSubscriptionsRequest::default()
                }))
                .await
                .unwrap()
                .into_inner();
            count += page.subscriptions.len() as u64;
            if page.next_page_token.is_empty() {
                return count;
            }
            page_token = page.next_page_token;
        }
    }

    /// Waits until every member of the consumer group on `topic` among `names` holds its share
    /// of the partitions, as their logs report, so that no rebalance moves work mid-broadcast.
    /// The mock cluster serves no DescribeGroups, so the members' own reports are what there
    /// is.
    pub async fn wait_for_partitions(&self, topic: Topic, names: &[&str]) {
        let share = PARTITIONS as i64 / names.len() as i64;
        let started = Instant::now();
        while !names.iter().all(|name| self.partitions_held(name, topic) == share) {
            within(started, Duration::from_secs(60), &format!("{names:?} to share {}", topic.name()), || {
                self.log_tails()
            });
            tokio::time::sleep(POLL).await;
        }
    }

    /// Partitions of `topic` role `name` was assigned minus those revoked, from its log.
    fn partitions_held(&self, name: &str, topic: Topic) -> i64 {
        let log = std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
        let field = format!("topic={} ", topic.name());
        log.lines()
            .map(without_colours)
            .filter(|line| line.contains(&field))
            .filter_map(|line| {
                let sign = if line.contains("partitions assigned") {
                    1
                } else if line.contains("partitions revoked") {
                    -1
                } else {
                    return None;
                };
                let count =
                    line.split("partitions=").nth(1)?.split_whitespace().next()?.parse::<i64>().ok()?;
                Some(sign * count)
            })
            .sum()
    }

    /// The sum of every series of metric `name` that role `name` serves, or `None` while it does
    /// not answer.
    pub async fn metric(&self, role: &str, metric: &str) -> Option<f64> {
        let role = self.roles.iter().find(|r| r.name == role).expect("a role of this cluster");
        let mut stream = tokio::net::TcpStream::connect(role.metrics).await.ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        Some(
            body.lines()
                .filter(|line| {
                    line.strip_prefix(metric)
                        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// The last lines of every role's log, for a failure message.
    pub fn log_tails(&self) -> String {
        self.roles
            .iter()
            .map(|role| {
                let log =
                    std::fs::read_to_string(self.logs.join(format!("{}.log", role.name))).unwrap_or_default();
                let tail: Vec<String> = log.lines().rev().take(30).map(without_colours).collect();
                let state = if role.process.is_some() { "running" } else { "killed" };
                format!(
                    "--- {} ({state}) ---\n{}\n",
                    role.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }
}

/// `line` without the ANSI colour sequences the roles' log lines carry.
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // A CSI sequence: ESC [ parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

pub fn authed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::try_from(format!("Bearer {API_KEY}")).unwrap());
    request
}
