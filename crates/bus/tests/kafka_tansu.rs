//! The Kafka bus against a real Kafka-compatible broker: tansu, started by `scripts/test`
//! (`scripts/setup.d/30-kafka.sh` exports `PUSHFAN_TEST_KAFKA_BROKERS`). Without it these tests
//! fail, they never pass silently. Each test uses its own topic prefix, so they run in parallel.

mod common;

use std::time::Duration;

use pushfan_bus::messages::ShardJob;
use pushfan_bus::{Bus, KafkaBus, MessageContext};

/// A bus on tansu with this test's own five topics, six partitions each.
async fn tansu_bus(test: &str) -> KafkaBus {
    let config = common::test_kafka_config(&common::tansu_brokers(), &common::unique_prefix(test));
    let bus = KafkaBus::new(config).expect("kafka bus");
    tokio::time::timeout(common::WAIT, bus.create_topics(6, 1))
        .await
        .expect("topics created in time")
        .expect("topics created");
    bus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_after_a_member_dies_loses_nothing() {
    let bus = tansu_bus("takeover").await;
    let report = common::takeover_loses_nothing(&bus, 600, 10, Duration::from_millis(100)).await;
    assert!(
        report.partitions_a.is_subset(&report.partitions_b_after_kill),
        "B took over every partition A had: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_dead_lettered_and_consumption_continues() {
    common::install_metrics();
    common::bad_records_are_dead_lettered(&tansu_bus("dead-letters").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_travel_with_the_message() {
    common::headers_travel_with_the_message(&tansu_bus("headers").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_the_configured_size_travels() {
    let mut config = common::test_kafka_config(&common::tansu_brokers(), &common::unique_prefix("large"));
    config.max_record_bytes = 4 << 20;
    let bus = KafkaBus::new(config).expect("kafka bus");
    tokio::time::timeout(common::WAIT, bus.create_topics(6, 1))
        .await
        .expect("in time")
        .expect("topics created");
    assert_eq!(bus.max_record_bytes(), 4 << 20);
    // Incompressible, like a page of ciphertext.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let payload: Vec<u8> = (0..(3 << 20))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let job = ShardJob { payload: payload.into(), ..common::job(1) };
    let mut consumer = bus.consume::<ShardJob>("large").expect("join");
    bus.publish(&job, &MessageContext::default()).await.expect("a 3 MiB record is taken");
    let received =
        tokio::time::timeout(common::WAIT, consumer.next()).await.expect("in time").expect("received");
    assert!(received.message == job, "the record came back whole");
    received.ack.ack();
}
