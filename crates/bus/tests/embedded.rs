//! The embedded bus against the shared contract scenarios, plus its in-process specifics
//! (bounded queues, redelivery of dropped acks, groups).

mod common;

use std::time::Duration;

use common::{job, WAIT};
use pushfan_bus::messages::ShardJob;
use pushfan_bus::{Bus, BusError, EmbeddedBus, EmbeddedConfig, MessageContext};
use tokio::time::timeout;

fn bus(queue_capacity: usize) -> EmbeddedBus {
    EmbeddedBus::new(EmbeddedConfig {
        queue_capacity,
        send_timeout: Duration::from_millis(300),
        ..EmbeddedConfig::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_after_a_member_dies_loses_nothing() {
    let report = common::takeover_loses_nothing(&bus(64), 400, 5, Duration::from_millis(10)).await;
    assert!(report.duplicates <= 5, "only the held, unacked messages are redone: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_dead_lettered_and_consumption_continues() {
    common::install_metrics();
    common::bad_records_are_dead_lettered(&bus(64)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_travel_with_the_message() {
    common::headers_travel_with_the_message(&bus(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_senders_wait_then_fail_typed() {
    let bus = bus(2);
    let mut consumer = bus.consume::<ShardJob>("workers").expect("join");
    for i in 0..2 {
        bus.publish(&job(i), &MessageContext::default()).await.expect("room for two");
    }
    common::assert_error(
        bus.publish(&job(2), &MessageContext::default()).await,
        |e| matches!(e, BusError::Backpressure { .. }),
        "third send into a queue of two",
    );

    // A send waiting for room completes as soon as the consumer takes a record.
    let waiting = tokio::spawn({
        let bus = bus.clone();
        async move { bus.publish(&job(3), &MessageContext::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "the sender waits while the queue is full");
    let first = timeout(WAIT, consumer.next()).await.expect("in time").expect("received");
    first.ack.ack();
    waiting.await.expect("task").expect("the waiting send completes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_bytes_are_bounded_and_oversize_records_refused() {
    let bus = EmbeddedBus::new(EmbeddedConfig {
        queue_capacity: 64,
        queue_bytes: 8 * 1024,
        max_record_bytes: 6 * 1024,
        send_timeout: Duration::from_millis(300),
    });
    let mut consumer = bus.consume::<ShardJob>("workers").expect("join");
    let sized = |i: usize, bytes: usize| ShardJob { payload: vec![7; bytes].into(), ..job(i) };
    for i in 0..2 {
        bus.publish(&sized(i, 3000), &MessageContext::default()).await.expect("room for two of 3 KiB");
    }
    common::assert_error(
        bus.publish(&sized(2, 3000), &MessageContext::default()).await,
        |e| matches!(e, BusError::Backpressure { .. }),
        "a third 3 KiB record into 8 KiB of room",
    );
    common::assert_error(
        bus.publish(&sized(3, 7000), &MessageContext::default()).await,
        |e| matches!(e, BusError::TooLarge { bytes, .. } if *bytes > 7000),
        "a record over max_record_bytes",
    );
    // A taken record holds its room until it is acked (it is kept for redelivery till then).
    let first = timeout(WAIT, consumer.next()).await.expect("in time").expect("received");
    assert_eq!(first.message, sized(0, 3000));
    common::assert_error(
        bus.publish(&sized(5, 3000), &MessageContext::default()).await,
        |e| matches!(e, BusError::Backpressure { .. }),
        "no room while the taken record is unacked",
    );
    first.ack.ack();
    bus.publish(&sized(4, 3000), &MessageContext::default()).await.expect("room again");
    for expected in [1, 4] {
        let next = timeout(WAIT, consumer.next()).await.expect("in time").expect("received");
        assert_eq!(next.message, sized(expected, 3000), "nothing refused was queued");
        next.ack.ack();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_ack_redelivers_and_an_acked_record_does_not_come_back() {
    let bus = bus(8);
    let mut consumer = bus.consume::<ShardJob>("workers").expect("join");
    for i in 0..2 {
        bus.publish(&job(i), &MessageContext::default()).await.expect("send");
    }
    let first = consumer.next().await.expect("first");
    assert_eq!(first.message, job(0));
    drop(first.ack);
    // The dropped record waits out its redelivery delay; the queue goes on meanwhile.
    let second = timeout(WAIT, consumer.next()).await.expect("in time").expect("second");
    assert_eq!(second.message, job(1));
    second.ack.ack();
    let again = timeout(WAIT, consumer.next()).await.expect("in time").expect("redelivered");
    assert_eq!(again.message, job(0), "the dropped record comes back");
    again.ack.ack();
    assert!(timeout(Duration::from_millis(300), consumer.next()).await.is_err(), "nothing else is pending");
}

/// A record whose handler keeps dying comes back after a delay that doubles each time, up to a
/// cap, never in a tight loop; a record sent meanwhile is not held up by it.
#[tokio::test(start_paused = true)]
async fn a_record_dropped_again_and_again_comes_back_with_growing_delays() {
    let bus = bus(8);
    let mut consumer = bus.consume::<ShardJob>("workers").expect("join");
    bus.publish(&job(0), &MessageContext::default()).await.expect("send");
    let mut delays = Vec::new();
    let mut received = consumer.next().await.expect("first");
    for round in 0..10 {
        let dropped_at = tokio::time::Instant::now();
        drop(received.ack);
        if round == 0 {
            bus.publish(&job(1), &MessageContext::default()).await.expect("send");
            let other = consumer.next().await.expect("the new record");
            assert_eq!(other.message, job(1), "a new record goes ahead of a redelivery not yet due");
            assert_eq!(tokio::time::Instant::now(), dropped_at, "at once");
            other.ack.ack();
        }
        received = consumer.next().await.expect("redelivered");
        assert_eq!(received.message, job(0));
        delays.push(dropped_at.elapsed());
    }
    received.ack.ack();
    let ms = |ms| Duration::from_millis(ms);
    assert_eq!(
        delays,
        [
            ms(100),
            ms(200),
            ms(400),
            ms(800),
            ms(1600),
            ms(3200),
            ms(6400),
            ms(12_800),
            ms(25_600),
            ms(30_000)
        ]
    );
    assert_eq!(pushfan_bus::embedded::redelivery_delay(u32::MAX), ms(30_000));
    assert!(timeout(Duration::from_secs(60), consumer.next()).await.is_err(), "an acked record stays gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_gets_every_record_and_early_records_wait_for_the_first_group() {
    let bus = bus(8);
    bus.publish(&job(0), &MessageContext::default()).await.expect("sent before anyone joined");
    let mut stats = bus.consume::<ShardJob>("stats").expect("join");
    let mut prune = bus.consume::<ShardJob>("prune").expect("join");
    bus.publish(&job(1), &MessageContext::default()).await.expect("send");

    for expected in [job(0), job(1)] {
        let received = timeout(WAIT, stats.next()).await.expect("in time").expect("stats receives");
        assert_eq!(received.message, expected);
        received.ack.ack();
    }
    let received = timeout(WAIT, prune.next()).await.expect("in time").expect("prune receives");
    assert_eq!(received.message, job(1), "a group that joins later starts with later records");
    received.ack.ack();
}
