//! Cluster mode as separate processes: `pushfan ingest`, two `pushfan worker`s and two
//! `pushfan gateway`s on a Kafka-protocol broker and a real Redis, sending to the simulated push
//! service over HTTP/2 with TLS. One worker is SIGKILLed mid-broadcast; every subscriber must
//! still get the message, decrypted with their own keys, with exact counts, the gone pruned
//! from Redis and a 429's `Retry-After` honoured. The same again with the direct hand-off, where
//! the workers deliver their own pages and no gateway process runs.
//!
//! The broker is librdkafka's mock cluster, started in this test process on loopback TCP ports
//! that the role processes connect to like to any Kafka. Not tansu: tansu 0.6's group
//! coordinator keeps a member whose session expired as the group's leader, so once the killed
//! worker happens to lead a group, that group never completes another rebalance
//! (ARCHITECTURE.md, "Tests and tooling"). Set `PUSHFAN_TEST_CLUSTER_KAFKA_BROKERS` to run the
//! same test against another broker (the roles then create the topics through the admin API).
//!
//! Needs `PUSHFAN_TEST_REDIS_URL` (`scripts/test` starts Redis). To keep the roles' logs, set
//! `PUSHFAN_TEST_CLUSTER_LOG_DIR`; `PUSHFAN_TEST_CLUSTER_RUST_LOG` replaces their filter, and
//! `PUSHFAN__BUS__LIBRDKAFKA__DEBUG=cgrp,consumer` (with `librdkafka=debug` in that filter)
//! traces their consumer groups.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pushfan_bus::{Topic, TopicNames};
use pushfan_proto::v1::broadcast_service_client::BroadcastServiceClient;
use pushfan_proto::v1::publish_request::Target;
use pushfan_proto::v1::publish_service_client::PublishServiceClient;
use pushfan_proto::v1::subscription_service_client::SubscriptionServiceClient;
use pushfan_proto::v1::{
    Broadcast, BulkImportRequest, Everyone, GetBroadcastRequest, GetSubscriptionRequest,
    ListSubscriptionsRequest, PublishRequest, SubscribeRequest,
};
use pushfan_pushsim::{Burst, FaultPlan, Population, PushSim, PushSimConfig, Selection};
use pushfan_webpush::vapid::VapidKey;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

const SUBSCRIBERS: u64 = 10_000;
/// Answered 410 Gone: they must end up deleted from Redis.
const GONE: [u64; 3] = [10, 20, 30];
/// Answered 429 with `Retry-After: RETRY_AFTER_SECS` on its first attempt.
const THROTTLED: u64 = 40;
const RETRY_AFTER_SECS: u32 = 1;
const PARTITIONS: i32 = 6;
const PAYLOAD: &[u8] = b"cluster broadcast";
const API_KEY: &str = "cluster-test-api-key-0123456789";
const ROLES: [&str; 5] = ["ingest", "worker1", "worker2", "gateway1", "gateway2"];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Kafka-protocol broker the roles share.
enum Broker {
    /// librdkafka's mock cluster, with the bus topics created.
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// A broker someone else runs; the roles create the topics.
    External(String),
}

impl Broker {
    fn start(topic_prefix: &str) -> Self {
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

    fn bootstrap_servers(&self) -> String {
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
}

/// A child process that is killed when dropped, so a failing test leaves nothing running.
struct Role(Child);

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn role(name: &str, config: &Path, logs: &Path) -> Role {
    let log = std::fs::File::create(logs.join(format!("{name}.log"))).unwrap();
    let command = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let filter = std::env::var("PUSHFAN_TEST_CLUSTER_RUST_LOG")
        .unwrap_or_else(|_| "warn,pushfan=info,pushfan_bus=info".to_owned());
    Role(
        Command::new(env!("CARGO_BIN_EXE_pushfan"))
            .args(["--config", config.to_str().unwrap(), command])
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Waits until each gateway's log says it was assigned `deliveries` partitions: with both
/// members in the group, the partitions are split and stay put.
async fn both_gateways_assigned(logs: &Path) {
    let assigned = |name: &str| {
        let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
        log.lines().any(|line| line.contains("partitions assigned") && line.contains("deliveries"))
    };
    let started = Instant::now();
    while !(assigned("gateway1") && assigned("gateway2")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the gateways did not both join their group in 60 s (their logs need pushfan_bus at info)\n{}",
            log_tails(logs)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of every role's log, for a failure message.
fn log_tails(logs: &Path) -> String {
    ROLES
        .iter()
        .map(|name| {
            let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            format!("--- {name} ---\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
        })
        .collect()
}

fn authed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::try_from(format!("Bearer {API_KEY}")).unwrap());
    request
}

fn subscribe_request(population: &Population, index: u64) -> SubscribeRequest {
    population.subscriber(index).unwrap().subscribe_request(Vec::new())
}

/// Every subscription the tenant has, as the store (Redis) lists them.
async fn stored_subscriptions(channel: &Channel) -> u64 {
    let mut client = SubscriptionServiceClient::new(channel.clone());
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

/// When the throttled subscriber's 429 and its later delivery happened, bracketed by samples of
/// the push service's counters: each event lies between the last sample without it and the
/// first sample with it. The delivery is the last one seen: a page the killed worker had handed
/// on is sent again by its successor, and that copy may reach the gateway that was not told to
/// wait, so the subscriber may get an early copy besides the retry.
#[derive(Debug, Default)]
struct ThrottleWatch {
    last_sample: Option<Instant>,
    before_429: Option<Instant>,
    /// The first sample that saw the 429.
    saw_429: Option<Instant>,
    received: u32,
    delivered_by: Option<Instant>,
}

impl ThrottleWatch {
    fn sample(&mut self, status_429: u64, received: u32) {
        let now = Instant::now();
        if self.saw_429.is_none() {
            if status_429 > 0 {
                self.saw_429 = Some(now);
                self.before_429 = self.last_sample;
            }
        } else if received > self.received {
            self.received = received;
            self.delivered_by = Some(now);
        }
        self.last_sample = Some(now);
    }

    /// The longest the gateway can have waited between the 429 and the retry that was
    /// accepted. Shorter than `Retry-After` proves it retried too early; sampling late only
    /// lengthens it, so a slow machine cannot fail the check.
    fn longest_possible_wait(&self) -> Duration {
        let before = self.before_429.expect("sampled before publishing, so before the 429");
        let after = self.delivered_by.expect("the throttled subscriber's delivery was seen after its 429");
        after - before
    }
}

/// How the test's workers hand their pages to delivery (`[worker] hand_off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandOff {
    /// Through the `deliveries` topic to two `pushfan gateway` processes.
    Bus,
    /// Each worker delivers its own pages; no gateway runs.
    Direct,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_survives_a_worker_killed_mid_way() {
    broadcast_survives_a_worker_killed(HandOff::Bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_survives_a_worker_killed_mid_way_with_the_direct_hand_off() {
    broadcast_survives_a_worker_killed(HandOff::Direct).await;
}

async fn broadcast_survives_a_worker_killed(hand_off: HandOff) {
    let redis = std::env::var("PUSHFAN_TEST_REDIS_URL")
        .expect("PUSHFAN_TEST_REDIS_URL is not set: run scripts/test, which starts Redis");
    let unique = format!("{}-{}", std::process::id(), format!("{hand_off:?}").to_lowercase());
    let topic_prefix = format!("cluster-{unique}.");
    let broker = Broker::start(&topic_prefix);

    let mut sim_config = PushSimConfig::new(Population::new(99u64, SUBSCRIBERS)).with_tls().unwrap();
    // Every push is decrypted with its subscriber's keys and must carry exactly this payload.
    sim_config.expected_payload = Some(bytes::Bytes::from_static(PAYLOAD));
    sim_config.faults = FaultPlan {
        gone: Selection::indices(GONE),
        throttle: Burst { selection: Selection::indices([THROTTLED]), first: 1 },
        retry_after_secs: RETRY_AFTER_SECS,
        ..FaultPlan::default()
    };
    let sim = PushSim::start(sim_config).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let logs: PathBuf = match std::env::var("PUSHFAN_TEST_CLUSTER_LOG_DIR") {
        Ok(kept) => {
            std::fs::create_dir_all(&kept).unwrap();
            kept.into()
        }
        Err(_) => dir.path().to_owned(),
    };
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sim.cert_pem().unwrap()).unwrap();
    let port = free_port();
    let config = dir.path().join("pushfan.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
backend = "redis"
redis_urls = ["{redis}"]
shards = 12
[bus]
backend = "kafka"
brokers = "{brokers}"
topic_prefix = "{topic_prefix}"
create_topics_with_partitions = {partitions}
[ingest]
listen = "127.0.0.1:{port}"
[[tenants]]
name = "cluster-{unique}"
api_keys = ["{API_KEY}"]
[vapid]
subject = "mailto:ops@example.com"
[[vapid.keys]]
id = 1
private_key = "{key}"
[worker]
page_size = 100
hand_off = "{hand_off}"
[gateway]
extra_root_certs = ["{ca}"]
"#,
            brokers = broker.bootstrap_servers(),
            partitions = broker.partitions_to_create(),
            key = VapidKey::generate().private_base64(),
            ca = ca.display(),
            hand_off = format!("{hand_off:?}").to_lowercase(),
        ),
    )
    .unwrap();

    let _ingest = role("ingest", &config, &logs);
    let url = format!("http://127.0.0.1:{port}");
    let channel = loop {
        match Channel::from_shared(url.clone()).unwrap().connect().await {
            Ok(channel) => break channel,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut workers = vec![role("worker1", &config, &logs), role("worker2", &config, &logs)];
    let _gateways = match hand_off {
        HandOff::Bus => vec![role("gateway1", &config, &logs), role("gateway2", &config, &logs)],
        HandOff::Direct => Vec::new(),
    };

    // The gone subscribers one by one, to learn their ids; everyone else in bulk.
    let population = sim.population().clone();
    let mut subscriptions = SubscriptionServiceClient::new(channel.clone());
    let mut gone_ids = Vec::new();
    for index in GONE {
        let response = subscriptions.subscribe(authed(subscribe_request(&population, index))).await.unwrap();
        gone_ids.push(response.into_inner().subscription_id);
    }
    let others: Vec<SubscribeRequest> = (0..SUBSCRIBERS)
        .filter(|index| !GONE.contains(index))
        .map(|index| subscribe_request(&population, index))
        .collect();
    let batches: Vec<BulkImportRequest> =
        others.chunks(2_000).map(|chunk| BulkImportRequest { items: chunk.to_vec() }).collect();
    let imported = subscriptions.bulk_import(authed(tokio_stream::iter(batches))).await.unwrap().into_inner();
    assert_eq!((imported.imported, imported.failed), (SUBSCRIBERS - GONE.len() as u64, 0));
    assert_eq!(stored_subscriptions(&channel).await, SUBSCRIBERS);
    // Publish once both gateways hold `deliveries` partitions: a rebalance mid-broadcast would
    // hand a batch parked on the 429 to the other gateway, which never saw it.
    if hand_off == HandOff::Bus {
        both_gateways_assigned(&logs).await;
    }

    let mut throttle = ThrottleWatch::default();
    throttle.sample(sim.stats().status(429), 0);
    let broadcast_id = PublishServiceClient::new(channel.clone())
        .publish(authed(PublishRequest {
            target: Some(Target::Everyone(Everyone {})),
            payload: bytes::Bytes::from_static(PAYLOAD),
            ..PublishRequest::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .broadcast_id;

    let mut broadcasts = BroadcastServiceClient::new(channel.clone());
    let started = Instant::now();
    let mut killed_at: Option<(Broadcast, Instant)> = None;
    let mut last = None;
    let finished = loop {
        let stats = sim.stats();
        throttle.sample(stats.status(429), sim.live_stats().received(THROTTLED));
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the broadcast did not finish in 90 s; last state {last:?}; push service {stats:?}\n{}",
            log_tails(&logs)
        );
        let broadcast = broadcasts
            .get_broadcast(authed(GetBroadcastRequest { broadcast_id: broadcast_id.clone() }))
            .await
            .ok()
            .and_then(|r| r.into_inner().broadcast);
        if let Some(broadcast) = broadcast {
            if broadcast.complete {
                break broadcast;
            }
            if killed_at.is_none() && broadcast.handed_on > 0 {
                // SIGKILL: no chance to commit or leave the group, like a node that dies.
                workers.remove(0);
                killed_at = Some((broadcast.clone(), Instant::now()));
            }
            last = Some(broadcast);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();

    let (killed_at, killed_when) = killed_at.expect("a worker was killed while the broadcast ran");
    assert!(
        killed_at.shards_done < killed_at.shards_total,
        "shards were left when the worker died: {killed_at:?}"
    );
    // The ledger counts each step once, even where the dead worker's work was redone.
    let delivered = SUBSCRIBERS - GONE.len() as u64;
    assert_eq!(
        (finished.targeted, finished.encrypted, finished.encrypt_failed),
        (SUBSCRIBERS, SUBSCRIBERS, 0)
    );
    assert_eq!((finished.accepted, finished.gone, finished.pruned), (delivered, 3, 3));
    assert_eq!((finished.rejected, finished.failed, finished.expired), (0, 0, 0), "{finished:?}");
    assert_eq!((finished.shards_done, finished.shards_total), (12, 12));

    // The push service decrypted every push with its subscriber's keys and found the payload;
    // everyone but the gone got it (a push redone after the kill may arrive twice).
    let stats = sim.stats();
    assert_eq!(stats.received.none, GONE.len() as u64, "only the gone got nothing: {stats:?}");
    assert_eq!(stats.received.exactly_one + stats.received.more_than_one, delivered);
    assert_eq!(stats.decrypted, stats.status(201), "every accepted push was decrypted: {stats:?}");
    assert_eq!((stats.vapid_failures, stats.decrypt_failures, stats.payload_mismatches), (0, 0, 0));
    assert!(GONE.iter().all(|&index| sim.live_stats().received(index) == 0));

    // 429 honoured: one 429, then the retry was accepted, no sooner than Retry-After.
    assert_eq!(stats.status(429), 1, "{stats:?}");
    assert!(sim.live_stats().received(THROTTLED) >= 1);
    let waited = throttle.longest_possible_wait();
    // With the direct hand-off the 429 goes to a worker, which shares its pause through Redis
    // every 250 ms. If that worker is the one killed before it shared the pause, its page is
    // redone by the other, which was never told to wait. So the check applies when the 429 came
    // after the kill (the survivor got it), or a second or more before it (it was shared).
    let shared_by = throttle.saw_429.map(|seen| seen + Duration::from_secs(1));
    let strict = hand_off == HandOff::Bus
        || throttle.before_429.is_some_and(|before| before >= killed_when)
        || shared_by.is_some_and(|shared| shared <= killed_when);
    assert!(
        !strict || waited >= Duration::from_secs(RETRY_AFTER_SECS.into()),
        "the throttled push was retried within {waited:?}, before Retry-After: {RETRY_AFTER_SECS} s \
         ({} pushes reached it)",
        sim.live_stats().received(THROTTLED)
    );

    // 410: the gone subscriptions were deleted from Redis, and only they.
    for id in &gone_ids {
        let status = subscriptions
            .get_subscription(authed(GetSubscriptionRequest { subscription_id: id.clone() }))
            .await
            .expect_err("a gone subscription is deleted");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    assert_eq!(stored_subscriptions(&channel).await, delivered);
    eprintln!(
        "cluster broadcast ({hand_off:?} hand-off) to {SUBSCRIBERS} finished in {elapsed:.1?}: {} pushes, \
         {} subscribers got a duplicate; the throttled push was retried after {waited:?} (Retry-After \
         checked: {strict})",
        stats.status(201),
        stats.received.more_than_one,
    );
}
