//! Faults in a cluster mid-broadcast to 100,000 subscribers, each role a separate process on
//! librdkafka's mock cluster and a real Redis, sending over TLS HTTP/2 to the simulated push
//! service: `kill -9` of the ingest, of a worker (both hand-offs) and of a gateway, a Redis
//! restart, and Kafka broker errors. Each broadcast must complete with the ledger's counts
//! closing exactly, every subscriber must have received the message at least once (the push
//! service's own counts), and the pushes sent twice must stay within the pages the fault could
//! have had in flight, computed from the configuration the test sets. A Redis restart is the
//! exception to exact counts: shards part-way through are scanned again from their start (see
//! [`assert_rescanned_but_nothing_lost`]).
//!
//! Needs `PUSHFAN_TEST_REDIS_URL` (`scripts/test` starts Redis) and `redis-server` on the PATH
//! for the restart test, which runs a Redis of its own with the append-only file on.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{within, Cluster, HandOff, Process, Settings};
use pushfan_bus::{KafkaConfig, Topic};
use pushfan_proto::v1::Broadcast;
use pushfan_pushsim::{Latency, Population, PushSimConfig, Sample, StatsSnapshot};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SUBSCRIBERS: u64 = 100_000;
const PAYLOAD: &[u8] = b"cluster fault broadcast";
/// The share of the broadcast the push service has accepted when the fault strikes.
const FAULT_AT: u64 = SUBSCRIBERS / 5;
/// The longest a broadcast may take, its fault and recovery included.
const BROADCAST_LIMIT: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(20);

fn redis_url() -> String {
    std::env::var("PUSHFAN_TEST_REDIS_URL")
        .expect("PUSHFAN_TEST_REDIS_URL is not set: run scripts/test, which starts Redis")
}

/// The push service: every subscriber's 201 counted; one push in 50 decrypted and checked
/// against the payload, and its VAPID token verified (checking every one of 100k would make
/// the push service, in this test's process, the busiest part of the cluster).
fn sim_config() -> PushSimConfig {
    let mut config = PushSimConfig::new(Population::new(1717u64, SUBSCRIBERS));
    config.expected_payload = Some(bytes::Bytes::from_static(PAYLOAD));
    config.decrypt_sample = Sample::one_in(50);
    config.vapid_sample = Sample::one_in(50);
    config
}

/// `config` with one answer in a thousand a second slow, as push services have slow backends:
/// a page or batch holding one stays in flight while those after it finish. Returns the delay.
fn with_slow_answers(mut config: PushSimConfig) -> (PushSimConfig, Duration) {
    let slow = Duration::from_secs(1);
    config.latency = Latency { slow_fraction: 0.001, slow, ..Latency::default() };
    (config, slow)
}

/// A cluster of `settings` on `redis` with the whole population imported, every consumer group
/// that does the broadcast's work settled (a rebalance mid-broadcast would redo work that no
/// fault caused).
async fn imported_cluster(label: &str, settings: Settings, redis: &str) -> Cluster {
    imported(Cluster::start(label, sim_config(), settings, redis).await).await
}

/// `cluster` with the whole population imported and its consumer groups settled.
async fn imported(cluster: Cluster) -> Cluster {
    let started = Instant::now();
    assert_eq!(cluster.import((0..SUBSCRIBERS).collect()).await, SUBSCRIBERS);
    eprintln!("imported {SUBSCRIBERS} in {:.1?}", started.elapsed());
    let workers: Vec<String> = (1..=cluster.settings.workers).map(|i| format!("worker{i}")).collect();
    let workers: Vec<&str> = workers.iter().map(String::as_str).collect();
    cluster.wait_for_partitions(Topic::ShardJobs, &workers).await;
    let gateways: Vec<String> = (1..=cluster.settings.gateways).map(|i| format!("gateway{i}")).collect();
    if !gateways.is_empty() {
        let gateways: Vec<&str> = gateways.iter().map(String::as_str).collect();
        cluster.wait_for_partitions(Topic::Deliveries, &gateways).await;
    }
    cluster
}

/// What strikes once the push service has accepted [`FAULT_AT`] pushes.
enum Fault<'a> {
    /// SIGKILL role `role` once its counter `busy` has been rising for [`RATE_WINDOW`] (it is
    /// in the thick of its work, and how fast it went is known), then start `successor` (same
    /// configuration) if given.
    Kill { role: &'a str, busy: &'a str, successor: Option<&'a str> },
    /// SIGKILL the Redis every role uses, wait until a role has failed a store call and
    /// retried, then start Redis again on the same port with the same append-only file.
    RedisRestart(&'a mut RedisServer),
    /// Failed requests of every kind the roles make, then a broker down for a while.
    Kafka,
}

/// How long a killed role's counter is watched before the kill, to know its pace.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// How a faulted broadcast ended.
struct Finished {
    broadcast: Broadcast,
    /// The push service's counts once every role was stopped: nothing can add to them.
    stats: StatsSnapshot,
    elapsed: Duration,
    /// A killed role's `busy` counter per second over the [`RATE_WINDOW`] before its death.
    victim_rate: f64,
}

impl Finished {
    /// Pushes accepted beyond one per subscriber.
    fn duplicates(&self) -> u64 {
        let received = &self.stats.received;
        self.stats.status(201) - (received.exactly_one + received.more_than_one)
    }
}

/// A killed role's counter, sampled while the broadcast runs.
#[derive(Default)]
struct Pace {
    samples: std::collections::VecDeque<(Instant, f64)>,
}

impl Pace {
    fn sample(&mut self, value: f64) {
        if value > 0.0 {
            self.samples.push_back((Instant::now(), value));
        }
        while self.samples.len() > 2 && self.samples[1].0.elapsed() >= RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    /// The counter's rise per second over the last [`RATE_WINDOW`], once it has been rising
    /// that long.
    fn per_second(&self) -> Option<f64> {
        let (&(first, from), &(last, to)) = (self.samples.front()?, self.samples.back()?);
        let span = last - first;
        (span >= RATE_WINDOW).then(|| (to - from) / span.as_secs_f64())
    }
}

/// Publishes to everyone, strikes `fault` mid-broadcast, waits for the broadcast to complete
/// (asking whichever ingest runs), then stops every role.
async fn broadcast_with(mut cluster: Cluster, mut fault: Fault<'_>) -> Finished {
    let id = cluster.publish_to_everyone(PAYLOAD).await;
    let started = Instant::now();
    let mut channel = cluster.channel().await;
    let mut struck = false;
    let mut pace = Pace::default();
    let mut victim_rate = 0.0;
    let mut last: Option<Broadcast> = None;
    let broadcast = loop {
        let accepted = cluster.sim.stats().status(201);
        within(started, BROADCAST_LIMIT, "the broadcast to complete", || {
            format!("last state {last:?}; push service accepted {accepted}\n{}", cluster.log_tails())
        });
        if let (false, Fault::Kill { role, busy, .. }) = (struck, &fault) {
            pace.sample(cluster.metric(role, busy).await.unwrap_or(0.0));
        }
        if !struck && accepted >= FAULT_AT {
            // A kill waits until its victim's pace is known.
            let ready = match fault {
                Fault::Kill { .. } => pace.per_second().inspect(|&rate| victim_rate = rate).is_some(),
                _ => true,
            };
            if ready {
                strike(&mut cluster, &mut fault, &last).await;
                struck = true;
                eprintln!("fault struck after {:.1?}, {accepted} pushes accepted", started.elapsed());
                channel = cluster.channel().await;
            }
        }
        if let Some(broadcast) = cluster.broadcast(&channel, &id).await {
            if broadcast.complete {
                break broadcast;
            }
            last = Some(broadcast);
        }
        tokio::time::sleep(POLL).await;
    };
    assert!(struck, "the broadcast completed before the fault struck: {broadcast:?}");
    let elapsed = started.elapsed();
    cluster.stop_roles();
    Finished { broadcast, stats: cluster.sim.stats(), elapsed, victim_rate }
}

/// Strikes the fault.
async fn strike(cluster: &mut Cluster, fault: &mut Fault<'_>, last: &Option<Broadcast>) {
    match fault {
        Fault::Kill { role, successor, .. } => {
            assert!(
                last.as_ref().is_none_or(|b| b.shards_done < b.shards_total),
                "shards were left when {role} died: {last:?}"
            );
            cluster.kill(role);
            if let Some(successor) = successor {
                cluster.start_role(successor);
            }
        }
        Fault::RedisRestart(redis) => {
            let retries_before = total_retries(cluster).await;
            redis.kill();
            let down = Instant::now();
            while total_retries(cluster).await <= retries_before {
                within(down, Duration::from_secs(30), "a role to retry a store call with Redis down", || {
                    cluster.log_tails()
                });
                tokio::time::sleep(POLL).await;
            }
            redis.start().await;
            eprintln!("Redis was down for {:.1?}", down.elapsed());
        }
        Fault::Kafka => {
            let mock = cluster.broker.mock().expect("the Kafka faults need the mock cluster");
            use RDKafkaRespErr::*;
            // Retriable errors, each taken by the next request of its kind from any client.
            let faults: [(RDKafkaApiKey, &[RDKafkaRespErr]); 4] = [
                (
                    RDKafkaApiKey::Produce,
                    &[
                        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
                        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                    ],
                ),
                (
                    RDKafkaApiKey::Fetch,
                    &[
                        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
                    ],
                ),
                (
                    RDKafkaApiKey::OffsetCommit,
                    &[
                        RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
                        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                        RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                    ],
                ),
                (RDKafkaApiKey::Metadata, &[RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT]),
            ];
            for (api, errors) in faults {
                let repeated: Vec<RDKafkaRespErr> =
                    errors.iter().copied().cycle().take(errors.len() * 4).collect();
                mock.request_errors(api, &repeated);
            }
            // A broker that leads a third of every topic's partitions goes away and comes back,
            // as a broker restart would. The outage is the fault's shape, not a wait for
            // anything: whatever it stalls resumes after it.
            mock.broker_down(2).expect("broker 2 down");
            tokio::time::sleep(Duration::from_secs(3)).await;
            mock.broker_up(2).expect("broker 2 up");
        }
    }
}

/// Store and bus retries of every running role so far.
async fn total_retries(cluster: &Cluster) -> f64 {
    let mut total = 0.0;
    for role in cluster.running_roles() {
        total += cluster.metric(&role, "pushfan_pipeline_retries_total").await.unwrap_or(0.0);
    }
    total
}

/// The checks every faulted broadcast must pass: the ledger's counts close exactly, everyone got
/// the message at least once, and at most `bound` pushes went out twice. `cut_off` requests may
/// have been cut off by a killed process mid-body (the push service answers them 400, to
/// nobody).
fn assert_nothing_lost(label: &str, finished: &Finished, shards: u16, bound: u64, cut_off: u64) {
    let (broadcast, stats) = (&finished.broadcast, &finished.stats);
    eprintln!(
        "{label}: {SUBSCRIBERS} subscribers in {:.1?}: {} pushes accepted, {} more than once ({} \
         subscribers; bound {bound}; the killed role's pace {:.0}/s); ledger {broadcast:?}; push \
         service {stats:?}",
        finished.elapsed,
        stats.status(201),
        finished.duplicates(),
        stats.received.more_than_one,
        finished.victim_rate,
    );
    // The push service's own counts first: nobody was skipped.
    assert_eq!(stats.received.none, 0, "{label}: subscribers got nothing: {stats:?}");
    assert_eq!(stats.received.exactly_one + stats.received.more_than_one, SUBSCRIBERS);
    // The ledger counts each step once, even where a dead process's work was redone.
    assert_eq!(
        (broadcast.targeted, broadcast.encrypted, broadcast.encrypt_failed, broadcast.accepted),
        (SUBSCRIBERS, SUBSCRIBERS, 0, SUBSCRIBERS),
        "{label}: {broadcast:?}"
    );
    assert_eq!(
        (broadcast.gone, broadcast.pruned, broadcast.rejected, broadcast.failed, broadcast.expired),
        (0, 0, 0, 0, 0),
        "{label}: {broadcast:?}"
    );
    assert_eq!((broadcast.shards_done, broadcast.shards_total), (u64::from(shards), u64::from(shards)));
    assert_eq!(
        (stats.vapid_failures, stats.decrypt_failures, stats.payload_mismatches),
        (0, 0, 0),
        "{label}: {stats:?}"
    );
    let unreadable = stats.status(400);
    assert_eq!(stats.requests(), stats.status(201) + unreadable, "{label}: only 201s and 400s: {stats:?}");
    assert!(
        unreadable <= cut_off,
        "{label}: {unreadable} requests refused, at most {cut_off} cut off: {stats:?}"
    );
    assert!(
        finished.duplicates() <= bound,
        "{label}: {} pushes went out twice, more than the {bound} the fault could have had in flight",
        finished.duplicates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_killed_mid_broadcast_repeats_no_push() {
    let cluster = imported_cluster("ingest-kill", Settings::new(HandOff::Direct), &redis_url()).await;
    let shards = cluster.settings.shards;
    let fault =
        Fault::Kill { role: "ingest", busy: "pushfan_bus_consumed_total", successor: Some("ingest2") };
    let finished = broadcast_with(cluster, fault).await;
    // The ingest sends no push: its stats loop only counts results, each batch's once.
    assert_nothing_lost("ingest killed", &finished, shards, 0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_broadcast_repeats_at_most_its_pages_in_flight() {
    worker_killed_with_the_direct_hand_off(false).await;
}

/// The same with slow answers, where pages finish out of order. Known to fail: the redone
/// pages' counts do not close (targeted 100,002 to 100,006 of 100,000 in every run, nobody
/// skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "after the kill the ledger counts a few subscriptions twice (targeted 100,006 of \
            100,000) when pages finished out of order were redone; tracked in issue 17"]
async fn a_worker_killed_mid_broadcast_while_pages_finish_out_of_order_repeats_at_most_its_pages_in_flight() {
    worker_killed_with_the_direct_hand_off(true).await;
}

async fn worker_killed_with_the_direct_hand_off(slow_answers: bool) {
    let settings = Settings::new(HandOff::Direct);
    let in_flight = settings.concurrent_batches * settings.page_size;
    let cut_off = settings.max_in_flight_per_origin;
    // With slow answers pages behind a page that holds one finish first, so a checkpoint that
    // passed the slow page before it was delivered would skip it.
    let (sim, slow) =
        if slow_answers { with_slow_answers(sim_config()) } else { (sim_config(), Duration::ZERO) };
    let cluster = imported(Cluster::start("worker-kill-direct", sim, settings, &redis_url()).await).await;
    let shards = cluster.settings.shards;
    let fault = Fault::Kill { role: "worker1", busy: "pushfan_worker_encrypted_total", successor: None };
    let finished = broadcast_with(cluster, fault).await;
    // With the direct hand-off a page is in flight from its encryption until its results are
    // on the bus, `concurrent_batches` at once per process (each holds a place). A page that
    // finished while an earlier page of its shard was still out is redone too (the checkpoint
    // follows the pages finished without a gap): at most what the worker sent within the
    // slowest page's time (without slow answers, about a page's: as many again as in flight),
    // at its pace before it died, taken twice over for the pace's ups and downs.
    let behind = if slow_answers {
        (2.0 * finished.victim_rate * slow.as_secs_f64()).ceil() as u64
    } else {
        in_flight
    };
    assert_nothing_lost("worker killed (direct hand-off)", &finished, shards, in_flight + behind, cut_off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_broadcast_with_the_bus_hand_off_repeats_at_most_a_page_per_job() {
    let settings = Settings::new(HandOff::Bus);
    // With the bus hand-off a shard job has one page between its publish to `deliveries` and
    // its step (with the checkpoint past it): the survivor redoes at most that page of each of
    // the dead worker's jobs.
    let bound = settings.concurrent_shard_jobs * settings.page_size;
    let cluster = imported_cluster("worker-kill-bus", settings, &redis_url()).await;
    let shards = cluster.settings.shards;
    let fault = Fault::Kill { role: "worker1", busy: "pushfan_worker_encrypted_total", successor: None };
    let finished = broadcast_with(cluster, fault).await;
    assert_nothing_lost("worker killed (bus hand-off)", &finished, shards, bound, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_broadcast_repeats_at_most_its_batches_in_flight_and_uncommitted() {
    let settings = Settings::new(HandOff::Bus);
    let in_flight = settings.concurrent_batches * settings.page_size;
    let cut_off = settings.max_in_flight_per_origin;
    // One answer in a thousand is slow: a batch holding one is in flight long past a commit,
    // so a gateway that acked (and committed) a batch before it was delivered would lose it.
    let (sim, slow) = with_slow_answers(sim_config());
    let cluster = imported(Cluster::start("gateway-kill", sim, settings, &redis_url()).await).await;
    let shards = cluster.settings.shards;
    let fault = Fault::Kill { role: "gateway1", busy: "pushfan_gateway_deliveries_total", successor: None };
    let finished = broadcast_with(cluster, fault).await;
    // A gateway works on `concurrent_batches` batches (pages) at once. Its partitions' next
    // owner resumes from their committed positions: the lowest batch still unacked when its
    // poll thread last committed (every commit interval, checked after each poll, which waits
    // up to 100 ms). So the batches acked since that batch was taken are sent again too: what
    // the gateway delivered within the slowest batch's time plus a commit window, at its pace
    // before it died, taken twice over for the pace's ups and downs.
    let commit_window = KafkaConfig::new("").commit_interval + Duration::from_millis(100);
    let window = slow + commit_window;
    let uncommitted = (2.0 * finished.victim_rate * window.as_secs_f64()).ceil() as u64;
    assert_nothing_lost("gateway killed", &finished, shards, in_flight + uncommitted, cut_off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_broadcast_loses_nothing() {
    let mut redis = RedisServer::new();
    redis.start().await;
    let settings = Settings::new(HandOff::Direct);
    // Every process's store calls fail while Redis is away. A failed page step is retried
    // without sending again, but a shard job whose scan fails starts again from its
    // checkpoint, dropping its pages in flight: at most the in-flight window of every worker.
    let bound = 2 * settings.concurrent_batches * settings.page_size * settings.workers as u64;
    let cluster = imported_cluster("redis-restart", settings, &redis.url()).await;
    let shards = cluster.settings.shards;
    let finished = broadcast_with(cluster, Fault::RedisRestart(&mut redis)).await;
    assert_rescanned_but_nothing_lost("Redis restarted", &finished, shards, bound);
}

/// The checks of a broadcast through a Redis restart. A restarted Redis iterates each hash in a
/// new order, so the store scans every shard that was part-way through again from its start
/// (resuming the old cursor would skip subscribers): nobody is skipped, but the ledger counts
/// the rescanned subscribers again, in every step alike, and the push service sees them again.
/// Every repeat beyond the in-flight `bound` must be one the ledger counted as a rescan.
fn assert_rescanned_but_nothing_lost(label: &str, finished: &Finished, shards: u16, bound: u64) {
    let (broadcast, stats) = (&finished.broadcast, &finished.stats);
    let rescanned = broadcast.targeted.saturating_sub(SUBSCRIBERS);
    eprintln!(
        "{label}: {SUBSCRIBERS} subscribers in {:.1?}: {} pushes accepted, {} more than once ({} \
         subscribers; {rescanned} rescanned; bound {bound}); ledger {broadcast:?}; push service \
         {stats:?}",
        finished.elapsed,
        stats.status(201),
        finished.duplicates(),
        stats.received.more_than_one,
    );
    assert_eq!(stats.received.none, 0, "{label}: subscribers got nothing: {stats:?}");
    assert_eq!(stats.received.exactly_one + stats.received.more_than_one, SUBSCRIBERS);
    assert!(broadcast.targeted >= SUBSCRIBERS, "{label}: {broadcast:?}");
    assert_eq!(
        (broadcast.encrypted, broadcast.encrypt_failed, broadcast.accepted),
        (broadcast.targeted, 0, broadcast.targeted),
        "{label}: {broadcast:?}"
    );
    assert_eq!(
        (broadcast.gone, broadcast.pruned, broadcast.rejected, broadcast.failed, broadcast.expired),
        (0, 0, 0, 0, 0),
        "{label}: {broadcast:?}"
    );
    assert!(broadcast.complete, "{label}: {broadcast:?}");
    assert_eq!((broadcast.shards_done, broadcast.shards_total), (u64::from(shards), u64::from(shards)));
    assert_eq!(
        (stats.vapid_failures, stats.decrypt_failures, stats.payload_mismatches),
        (0, 0, 0),
        "{label}: {stats:?}"
    );
    assert_eq!(stats.requests(), stats.status(201), "{label}: only 201s: {stats:?}");
    assert!(
        finished.duplicates() <= rescanned + bound,
        "{label}: {} pushes went out twice, more than the {rescanned} rescanned and the {bound} the \
         fault could have had in flight",
        finished.duplicates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "flaky: in 1 of 12 runs the ledger stopped at 99,700 accepted of 100,000 while the push \
            service had accepted all 100,000 once (3 batches' results never counted after the \
            broker that coordinates the groups was down for 3 s); tracked in issue 17"]
async fn kafka_broker_errors_mid_broadcast_lose_nothing() {
    let settings = Settings::new(HandOff::Bus);
    // No process dies and no group rebalances (the outage is shorter than the session
    // timeout), so nothing should be redone; the bound is every process's in-flight window.
    let bound = 2 * settings.concurrent_batches * settings.page_size * settings.gateways as u64
        + settings.concurrent_shard_jobs * settings.page_size * settings.workers as u64;
    let cluster = imported_cluster("kafka-errors", settings, &redis_url()).await;
    let shards = cluster.settings.shards;
    let finished = broadcast_with(cluster, Fault::Kafka).await;
    assert_nothing_lost("Kafka broker errors", &finished, shards, bound, 0);
}

/// A Redis of the test's own, as a deployment runs it: the append-only file fsynced on every
/// write, so a restart keeps everything it acknowledged.
struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl RedisServer {
    fn new() -> Self {
        Self { port: common::free_port(), dir: tempfile::tempdir().unwrap(), process: None }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again) on its port and directory, and waits until it answers PING (after
    /// loading its append-only file).
    async fn start(&mut self) {
        let dir: PathBuf = self.dir.path().to_owned();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--dir", dir.to_str().unwrap(), "--logfile", "redis.log"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (scripts/setup.d/20-redis.sh installs it)");
        self.process = Some(Process(child));
        let started = Instant::now();
        while !self.answers_ping().await {
            within(started, Duration::from_secs(30), "Redis to answer PING", || {
                std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
            });
            tokio::time::sleep(POLL).await;
        }
    }

    async fn answers_ping(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut reply = [0u8; 5];
        stream.write_all(b"PING\r\n").await.is_ok()
            && stream.read_exact(&mut reply).await.is_ok()
            && &reply == b"+PONG"
    }

    /// SIGKILL: whatever it acknowledged is in the append-only file already.
    fn kill(&mut self) {
        drop(self.process.take());
    }
}
