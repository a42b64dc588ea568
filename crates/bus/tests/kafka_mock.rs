//! Fault injection on the Kafka bus with librdkafka's in-process mock cluster (real TCP on
//! loopback): broker errors, brokers going down and up, leader moves, slow round trips. The
//! assertions are the bus contract: nothing lost, and failures surface as typed errors.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pushfan_bus::messages::ShardJob;
use pushfan_bus::{Bus, BusError, KafkaBus, KafkaConfig, MessageContext, Topic, TopicNames};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio::time::timeout;

const PARTITIONS: i32 = 6;

/// A mock cluster of `brokers` with the bus's five topics, and its settings.
fn mock_cluster(brokers: i32, test: &str) -> (MockCluster<'static, DefaultProducerContext>, KafkaConfig) {
    let mock = MockCluster::new(brokers).expect("mock cluster");
    let prefix = common::unique_prefix(test);
    let names = TopicNames::new(&prefix);
    for topic in Topic::ALL {
        mock.create_topic(&names.name(topic), PARTITIONS, brokers.min(3)).expect("mock topic");
    }
    let config = common::test_kafka_config(&mock.bootstrap_servers(), &prefix);
    (mock, config)
}

/// Every message id consumed from the shard-jobs topic until `expected` distinct ids arrived,
/// with how often each arrived.
async fn consume_all(bus: &KafkaBus, expected: usize) -> HashMap<String, usize> {
    let mut consumer = bus.consume::<ShardJob>(&common::unique_group("check")).expect("join");
    let mut seen: HashMap<String, usize> = HashMap::new();
    while seen.len() < expected {
        let received =
            timeout(common::WAIT, consumer.next()).await.expect("consumed in time").expect("consumed");
        *seen.entry(received.message.broadcast_id.clone()).or_default() += 1;
        received.ack.ack();
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_survives_broker_errors_leader_moves_and_slow_brokers_without_loss() {
    let (mock, config) = mock_cluster(3, "produce-faults");
    let shard_jobs = config.topic_names.name(Topic::ShardJobs);
    let bus = KafkaBus::new(config).expect("bus");
    mock.broker_round_trip_time(2, Duration::from_millis(50)).expect("slow broker 2");
    // Each produce request takes the next injected error; all are retriable, so librdkafka's
    // idempotent producer retries them in order.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );

    let total = 300;
    let first_half =
        tokio::spawn(common::produce_paced(bus.clone(), 0..total / 2, 25, Duration::from_millis(20)));
    // Move every partition's leader while the first half is in flight.
    tokio::time::sleep(Duration::from_millis(30)).await;
    for partition in 0..PARTITIONS {
        mock.partition_leader(&shard_jobs, partition, Some(1 + partition % 3)).expect("move leader");
    }
    first_half.await.expect("first half sent");

    // A broker goes down mid-stream and comes back; sends to its partitions wait, then complete.
    mock.broker_down(3).expect("broker 3 down");
    let second_half =
        tokio::spawn(common::produce_paced(bus.clone(), total / 2..total, 25, Duration::from_millis(20)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    mock.broker_up(3).expect("broker 3 up");
    timeout(common::WAIT, second_half).await.expect("second half in time").expect("second half sent");

    let seen = consume_all(&bus, total).await;
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("{} distinct messages, {duplicates} duplicates", seen.len());
    assert_eq!(seen.len(), total, "every message arrived");
    assert_eq!(duplicates, 0, "the idempotent producer's retries never duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_a_typed_error_and_recovery_sends_again() {
    let (mock, mut config) = mock_cluster(1, "unavailable");
    config.message_timeout = Duration::from_secs(1);
    let bus = KafkaBus::new(config).expect("bus");
    bus.publish(&common::job(0), &MessageContext::default()).await.expect("up: sent");

    mock.broker_down(1).expect("down");
    let started = Instant::now();
    common::assert_error(
        bus.publish(&common::job(1), &MessageContext::default()).await,
        |e| matches!(e, BusError::Unavailable { topic: Topic::ShardJobs, .. }),
        "send while the only broker is down",
    );
    assert!(started.elapsed() < Duration::from_secs(10), "fails within about message_timeout");

    // Once the broker is back a caller's retry succeeds (librdkafka reconnects with backoff, so
    // the first retries may still time out).
    mock.broker_up(1).expect("up");
    let deadline = Instant::now() + common::WAIT;
    loop {
        match bus.publish(&common::job(2), &MessageContext::default()).await {
            Ok(()) => break,
            Err(BusError::Unavailable { .. }) if Instant::now() < deadline => {}
            Err(error) => panic!("no recovery after the broker came back: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_pushes_back_and_loses_nothing_queued() {
    let (mock, mut config) = mock_cluster(1, "queue-full");
    config.max_queued_messages = 4;
    config.queue_full_wait = Duration::from_millis(200);
    config.message_timeout = Duration::from_secs(30);
    let bus = KafkaBus::new(config).expect("bus");
    bus.publish(&common::job(0), &MessageContext::default()).await.expect("warm-up send");

    mock.broker_down(1).expect("down");
    let queued: Vec<_> = (1..=4)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish(&common::job(i), &MessageContext::default()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    common::assert_error(
        bus.publish(&common::job(5), &MessageContext::default()).await,
        |e| matches!(e, BusError::Backpressure { topic: Topic::ShardJobs, .. }),
        "fifth send while four wait for a down broker",
    );

    mock.broker_up(1).expect("up");
    for send in queued {
        timeout(common::WAIT, send).await.expect("in time").expect("task").expect("queued send completes");
    }
    let seen = consume_all(&bus, 5).await;
    assert!((0..5).all(|i| seen.contains_key(&common::job(i).broadcast_id)), "every queued message arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_with_failing_commits_and_slow_brokers_loses_nothing() {
    let (mock, config) = mock_cluster(3, "takeover-faults");
    // The first commits fail (retried on the next tick) and one broker is slow.
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
        ],
    );
    mock.broker_round_trip_time(2, Duration::from_millis(20)).expect("slow broker 2");
    let bus = KafkaBus::new(config).expect("bus");
    let report = common::takeover_loses_nothing(&bus, 600, 10, Duration::from_millis(100)).await;
    assert!(
        report.partitions_a.is_subset(&report.partitions_b_after_kill),
        "B took over A's partitions: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_full_buffer_still_lets_the_group_rebalance() {
    let (_mock, mut config) = mock_cluster(1, "full-buffer");
    config.consumer_buffer = 1;
    let bus = KafkaBus::new(config).expect("bus");
    let group = common::unique_group("workers");
    let total = 200;

    // A joins and is handed records it does not read: its buffer fills and fetching pauses.
    let mut a = bus.consume::<ShardJob>(&group).expect("A joins");
    common::produce_paced(bus.clone(), 0..total / 2, 50, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // B joins: the group can only rebalance if A's poll loop still serves the rebalance.
    let mut b = bus.consume::<ShardJob>(&group).expect("B joins");
    common::produce_paced(bus.clone(), total / 2..total, 50, Duration::ZERO).await;
    let first_for_b =
        timeout(Duration::from_secs(20), b.next()).await.expect("B gets records while A is stalled");
    let first_for_b = first_for_b.expect("B receives");

    let mut seen: HashMap<String, usize> = HashMap::new();
    *seen.entry(first_for_b.message.broadcast_id.clone()).or_default() += 1;
    first_for_b.ack.ack();
    let deadline = Instant::now() + common::WAIT;
    while seen.len() < total {
        assert!(Instant::now() < deadline, "stalled at {}/{total}", seen.len());
        let received = tokio::select! {
            received = a.next() => received,
            received = b.next() => received,
        };
        let received = received.expect("receives");
        *seen.entry(received.message.broadcast_id.clone()).or_default() += 1;
        received.ack.ack();
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("{} distinct messages, {duplicates} duplicates", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcasts_shard_jobs_go_round_the_partitions_in_turn() {
    let (_mock, config) = mock_cluster(1, "spread");
    let bus = KafkaBus::new(config).expect("bus");
    let shards = 2 * PARTITIONS as u32;
    for shard_index in 0..shards {
        let job = ShardJob {
            broadcast_id: "spread".into(),
            shard_index,
            shard_count: shards,
            ..ShardJob::default()
        };
        bus.publish(&job, &MessageContext::default()).await.expect("sent");
    }
    let mut consumer = bus.consume::<ShardJob>(&common::unique_group("spread")).expect("join");
    let mut per_partition: HashMap<i32, Vec<u32>> = HashMap::new();
    for _ in 0..shards {
        let received =
            timeout(common::WAIT, consumer.next()).await.expect("consumed in time").expect("consumed");
        let partition = received.position.expect("a Kafka position").partition;
        per_partition.entry(partition).or_default().push(received.message.shard_index);
        received.ack.ack();
    }
    // Shard i on partition i % 6: two shards each, where hashing a dozen keys is uneven.
    assert_eq!(per_partition.len(), PARTITIONS as usize, "{per_partition:?}");
    for (partition, mut shard_indices) in per_partition {
        shard_indices.sort_unstable();
        let expected: Vec<u32> =
            (0..shards).filter(|s| (s % PARTITIONS as u32) as i32 == partition).collect();
        assert_eq!(shard_indices, expected, "partition {partition}");
    }
}
