//! Helpers and bus-independent contract scenarios shared by the integration tests: each scenario
//! runs against any [`Bus`] (tansu, librdkafka's mock cluster, the embedded bus).
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use pushfan_bus::messages::{DeadLetter, ShardJob};
use pushfan_bus::{
    envelope, Bus, BusError, KafkaConfig, MessageContext, Record, Subscription, Topic, TopicNames,
};
use tokio::time::timeout;

/// A prefix unique to this test in this process, so tests can share one broker in parallel.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!(
        "t{}-{}-{}-{test}.",
        std::process::id(),
        nanos % 1_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A consumer group name unique to this test, so tests sharing a broker never rebalance each
/// other's groups.
pub fn unique_group(name: &str) -> String {
    unique_prefix(name)
}

/// The tansu broker started by `scripts/test`. Never silently skips.
pub fn tansu_brokers() -> String {
    match std::env::var("PUSHFAN_TEST_KAFKA_BROKERS") {
        Ok(brokers) if !brokers.is_empty() => brokers,
        _ => panic!(
            "PUSHFAN_TEST_KAFKA_BROKERS is not set: run scripts/test, which starts tansu \
             (or start tansu yourself as scripts/setup.d/30-kafka.sh does and export it)"
        ),
    }
}

/// Kafka settings tuned for fast tests on loopback.
pub fn test_kafka_config(brokers: &str, prefix: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers);
    config.topic_names = TopicNames::new(prefix);
    config.client_id = format!("test-{prefix}");
    config.commit_interval = Duration::from_millis(50);
    config.session_timeout = Duration::from_secs(6);
    config.message_timeout = Duration::from_secs(20);
    config.linger = Duration::from_millis(1);
    config.consumer_buffer = 16;
    config
}

/// Message `i` of a test stream: its broadcast id is its identity, its shard spreads it over
/// partitions.
pub fn job(i: usize) -> ShardJob {
    ShardJob {
        broadcast_id: format!("m{i:05}"),
        tenant: "tenant".into(),
        shard_index: u32::try_from(i % 64).unwrap_or(0),
        shard_count: 64,
        payload: Bytes::from(vec![b'x'; 64]),
        ..ShardJob::default()
    }
}

pub const WAIT: Duration = Duration::from_secs(60);

/// Sends messages `range` with a pause after each `chunk`, so consumers joining meanwhile see a
/// stream rather than a finished backlog.
pub async fn produce_paced<B: Bus>(bus: B, range: std::ops::Range<usize>, chunk: usize, pause: Duration) {
    let mut sends = Vec::new();
    for i in range {
        let bus = bus.clone();
        sends.push(tokio::spawn(async move { bus.publish(&job(i), &MessageContext::default()).await }));
        if sends.len() % chunk == 0 {
            tokio::time::sleep(pause).await;
        }
    }
    for send in sends {
        send.await.expect("send task").expect("send succeeds");
    }
}

/// What the takeover scenario observed.
#[derive(Debug, Default)]
pub struct TakeoverReport {
    pub produced: usize,
    pub handled_by_a: usize,
    pub handled_by_b: usize,
    pub duplicates: usize,
    pub partitions_a: BTreeSet<i32>,
    pub partitions_b_after_kill: BTreeSet<i32>,
}

/// Two members of one group share a stream of messages; member A is killed mid-stream (dropped
/// with `held_unacked` messages handled but never acked), and B must end up handling every
/// message A did not ack. The stream (chunks of 20, `pause` apart) runs until A has been dead
/// for five chunks and at least `min_total` were sent, so the kill lands mid-stream however long
/// the group takes to split. Asserts nothing was lost; returns the observations for bus-specific checks.
pub async fn takeover_loses_nothing<B: Bus>(
    bus: &B,
    min_total: usize,
    held_unacked: usize,
    pause: Duration,
) -> TakeoverReport {
    let group = unique_group("workers");
    let handled: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut a = bus.consume::<ShardJob>(&group).expect("A joins");
    let mut b = bus.consume::<ShardJob>(&group).expect("B joins");
    let b_count = Arc::new(AtomicU64::new(0));
    let a_killed = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producing_done = Arc::new(AtomicBool::new(false));

    let producer = {
        let (bus, a_killed, produced, producing_done) =
            (bus.clone(), Arc::clone(&a_killed), Arc::clone(&produced), Arc::clone(&producing_done));
        tokio::spawn(async move {
            let started = Instant::now();
            let mut next = 0;
            // Keep streaming a while after the kill, so B's takeover covers every partition.
            let mut chunks_after_kill = 0;
            while chunks_after_kill < 5 || next < min_total {
                if started.elapsed() > WAIT {
                    break;
                }
                if a_killed.load(Ordering::Relaxed) {
                    chunks_after_kill += 1;
                }
                produce_paced(bus.clone(), next..next + 20, 20, Duration::ZERO).await;
                next += 20;
                produced.store(next as u64, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
            }
            producing_done.store(true, Ordering::Relaxed);
        })
    };
    let record = |handled: &Mutex<HashMap<String, usize>>, id: &str| {
        *handled.lock().expect("lock").entry(id.to_owned()).or_default() += 1;
    };

    // A handles and acks until B has handled something too (the group is split) and A has done
    // a share of the work; then it handles `held_unacked` more without acking, and dies.
    let a_task = {
        let handled = Arc::clone(&handled);
        let b_count = Arc::clone(&b_count);
        let a_killed = Arc::clone(&a_killed);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut partitions = BTreeSet::new();
            let mut count = 0;
            loop {
                let split = b_count.load(Ordering::Relaxed) > 0;
                if (split && count >= min_total / 6) || started.elapsed() > WAIT {
                    break;
                }
                let Ok(received) = timeout(Duration::from_millis(500), a.next()).await else { continue };
                let received = received.expect("A receives");
                record(&handled, &received.message.broadcast_id);
                partitions.extend(received.position.map(|p| p.partition));
                count += 1;
                received.ack.ack();
            }
            let mut held = Vec::new();
            for _ in 0..held_unacked {
                match timeout(Duration::from_secs(5), a.next()).await {
                    Ok(Ok(received)) => {
                        record(&handled, &received.message.broadcast_id);
                        partitions.extend(received.position.map(|p| p.partition));
                        count += 1;
                        held.push(received.ack);
                    }
                    _ => break,
                }
            }
            // Killed: the consumer and its unacked work vanish together.
            drop(a);
            drop(held);
            a_killed.store(true, Ordering::Relaxed);
            (count, partitions)
        })
    };

    let b_task = {
        let handled = Arc::clone(&handled);
        let b_count = Arc::clone(&b_count);
        let a_killed = Arc::clone(&a_killed);
        let produced = Arc::clone(&produced);
        let producing_done = Arc::clone(&producing_done);
        tokio::spawn(async move {
            let mut partitions_after_kill = BTreeSet::new();
            let deadline = Instant::now() + WAIT * 2;
            loop {
                let distinct = handled.lock().expect("lock").len() as u64;
                let sent = produced.load(Ordering::Relaxed);
                if producing_done.load(Ordering::Relaxed) && distinct == sent {
                    break;
                }
                assert!(Instant::now() < deadline, "B stalled: {distinct}/{sent} distinct messages handled");
                let a_was_dead = a_killed.load(Ordering::Relaxed);
                let Ok(received) = timeout(Duration::from_millis(500), b.next()).await else { continue };
                let received = received.expect("B receives");
                record(&handled, &received.message.broadcast_id);
                b_count.fetch_add(1, Ordering::Relaxed);
                if a_was_dead {
                    partitions_after_kill.extend(received.position.map(|p| p.partition));
                }
                received.ack.ack();
            }
            (b_count.load(Ordering::Relaxed), partitions_after_kill)
        })
    };

    let (handled_by_a, partitions_a) = a_task.await.expect("A task");
    let (handled_by_b, partitions_b_after_kill) = b_task.await.expect("B task");
    producer.await.expect("producer");

    let total = usize::try_from(produced.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
    let handled = handled.lock().expect("lock");
    let missing: Vec<usize> = (0..total).filter(|&i| !handled.contains_key(&job(i).broadcast_id)).collect();
    assert!(missing.is_empty(), "lost messages: {missing:?}");
    let duplicates = handled.values().map(|&n| n - 1).sum();
    let report = TakeoverReport {
        produced: total,
        handled_by_a,
        handled_by_b: usize::try_from(handled_by_b).unwrap_or(usize::MAX),
        duplicates,
        partitions_a,
        partitions_b_after_kill,
    };
    assert!(
        report.handled_by_a > 0 && report.handled_by_b > 0,
        "the group did not split the work: {report:?}"
    );
    eprintln!("takeover: {report:?}");
    report
}

/// A corrupt record and an unknown-version record go to the dead-letter topic with their
/// reasons; the good records around them are consumed.
pub async fn bad_records_are_dead_lettered<B: Bus>(bus: &B) {
    let mut consumer = bus.consume::<ShardJob>(&unique_group("workers")).expect("join");
    let mut dead_letters = bus.subscribe(Topic::DeadLetters, &unique_group("dlq-reader")).expect("join dlq");

    let good = |i| envelope::encode(&job(i), &MessageContext::default());
    let corrupt = Record { payload: Bytes::from_static(&[0xff; 9]), ..good(1) };
    let mut unknown_version = good(2);
    unknown_version.headers.schema = Some("pushfan.bus.v9.ShardJob".into());
    for record in [good(0), corrupt, unknown_version, good(3)] {
        bus.send(Topic::ShardJobs, record).await.expect("send");
    }

    // The consumer dead-letters records as it reaches them, so it keeps consuming (records in
    // other partitions may come after the good ones) while the dead letters are read.
    let (good_sender, mut good_receiver) = tokio::sync::mpsc::unbounded_channel();
    let consuming = tokio::spawn(async move {
        loop {
            let received = consumer.next().await.expect("consumes");
            received.ack.ack();
            if good_sender.send(received.message.broadcast_id).is_err() {
                return;
            }
        }
    });
    let mut consumed = BTreeSet::new();
    while consumed.len() < 2 {
        consumed.insert(
            timeout(WAIT, good_receiver.recv()).await.expect("consumes in time").expect("consumer runs"),
        );
    }
    assert_eq!(consumed, BTreeSet::from([job(0).broadcast_id, job(3).broadcast_id]));

    let mut reasons = BTreeSet::new();
    while reasons.len() < 2 {
        let incoming =
            timeout(WAIT, dead_letters.recv()).await.expect("dead letter in time").expect("dead letter");
        let reason = incoming.record.headers.dead_letter_reason.clone().expect("reason header");
        let letter = envelope::decode::<DeadLetter>(&incoming.record).expect("dead letter decodes").message;
        assert_eq!(letter.source_topic, "shard-jobs");
        assert_eq!(letter.reason, reason);
        assert_eq!(incoming.record.headers.schema.as_deref(), Some("pushfan.bus.v1.DeadLetter"));
        reasons.insert(if letter.schema == "pushfan.bus.v9.ShardJob" {
            assert!(reason.contains("unknown schema version"), "{reason}");
            "unknown_version"
        } else {
            assert_eq!(letter.payload, Bytes::from_static(&[0xff; 9]));
            assert!(reason.contains("corrupt"), "{reason}");
            "corrupt"
        });
        incoming.ack.ack();
    }
    consuming.abort();
    assert!(counter_total("pushfan_bus_dead_lettered_total") >= 2, "dead letters are counted");
}

/// The trace context and idempotency key arrive with the message.
pub async fn headers_travel_with_the_message<B: Bus>(bus: &B) {
    let mut consumer = bus.consume::<ShardJob>(&unique_group("workers")).expect("join");
    let traceparent =
        pushfan_bus::TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").ok();
    let context = MessageContext { traceparent };
    bus.publish(&job(7), &context).await.expect("publish");
    let received = timeout(WAIT, consumer.next()).await.expect("in time").expect("received");
    assert_eq!(received.message, job(7));
    assert_eq!(received.context, context);
    assert_eq!(received.idempotency_key.as_deref(), Some("m00007/7/64"));
    received.ack.ack();
}

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("no other metrics recorder in tests");
        snapshotter
    })
}

/// Installs the test metrics recorder; call before the code under test runs.
pub fn install_metrics() {
    snapshotter();
}

/// The total of counter `name` over all labels since [`install_metrics`].
pub fn counter_total(name: &str) -> u64 {
    // Snapshots reset counters, so keep running totals across calls.
    static TOTALS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    let mut totals = TOTALS.get_or_init(Mutex::default).lock().expect("lock");
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            *totals.entry(key.key().name().to_owned()).or_default() += n;
        }
    }
    totals.get(name).copied().unwrap_or(0)
}

/// Fails unless `result` is the typed error `matches` accepts.
pub fn assert_error(result: Result<(), BusError>, matches: impl Fn(&BusError) -> bool, what: &str) {
    match result {
        Err(error) if matches(&error) => eprintln!("{what}: {error}"),
        other => panic!("{what}: expected a typed error, got {other:?}"),
    }
}
