//! CPU cost of moving a broadcast's per-subscriber data through the bus: produce + consume +
//! decode of delivery batches (500 subscribers each, ~150-byte endpoint + ~1.1 KB encrypted body
//! per subscriber), as process CPU time per 1,000 subscribers, on the embedded bus and on tansu.
//!
//! Run: `cargo bench -p pushfan-bus --bench bus_cpu`. The tansu part needs
//! `PUSHFAN_TEST_KAFKA_BROKERS` (and `PUSHFAN_TEST_TANSU_PID` to report the broker's own CPU),
//! as `scripts/setup.d/30-kafka.sh` exports them. Recorded in BENCHMARKS.md, not asserted.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cpu_time::ProcessTime;
use pushfan_bus::messages::{ContentEncoding, Delivery, DeliveryBatch, PageCounts, PushOptions};
use pushfan_bus::{Bus, EmbeddedBus, EmbeddedConfig, KafkaBus, KafkaConfig, MessageContext, TopicNames};
use tokio::task::JoinSet;

const BATCH: usize = 500;
/// Batches produced concurrently: enough to keep the producer's pipeline full.
const IN_FLIGHT: usize = 8;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let runtime = runtime.expect("tokio runtime");
    runtime.block_on(async {
        report("embedded", &run(&EmbeddedBus::new(EmbeddedConfig::default()), batches(200)).await, None);

        match std::env::var("PUSHFAN_TEST_KAFKA_BROKERS") {
            Ok(brokers) => {
                let tansu_pid = std::env::var("PUSHFAN_TEST_TANSU_PID").ok();
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let prefix = format!("bench{}-{nanos}.", std::process::id());
                let mut config = KafkaConfig::new(brokers);
                config.topic_names = TopicNames::new(prefix);
                let bus = KafkaBus::new(config).expect("kafka bus");
                bus.create_topics(6, 1).await.expect("create topics");
                let batches = batches(100);
                let broker_before = tansu_pid.as_deref().and_then(process_cpu);
                let measured = run(&bus, batches).await;
                let broker =
                    broker_before.zip(tansu_pid.as_deref().and_then(process_cpu)).map(|(b, a)| a - b);
                report("tansu", &measured, broker);
            }
            Err(_) => {
                println!("tansu: skipped (PUSHFAN_TEST_KAFKA_BROKERS unset; see scripts/setup.d/30-kafka.sh)")
            }
        }
    });
}

/// `count` batches of `BATCH` subscribers with realistic sizes; bodies are pseudo-random like
/// ciphertext (nothing compresses them).
fn batches(count: usize) -> Vec<DeliveryBatch> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|seq| DeliveryBatch {
            broadcast_id: "bench-broadcast".into(),
            tenant: "bench".into(),
            options: Some(PushOptions { ttl_seconds: 3600, ..PushOptions::default() }),
            vapid_key_id: "key-1".into(),
            expires_at_ms: 0,
            shard_index: u32::try_from(seq % 64).unwrap_or(0),
            batch_seq: u32::try_from(seq).unwrap_or(u32::MAX),
            deliveries: (0..BATCH)
                .map(|i| Delivery {
                    subscription_id: format!("sub-{seq:06}-{i:06}-0123456789"),
                    endpoint: format!("https://fcm.googleapis.com/fcm/send/{:0>114x}", next()),
                    body: Bytes::from((0..1100 / 8).flat_map(|_| next().to_le_bytes()).collect::<Vec<u8>>()),
                    content_encoding: ContentEncoding::Aes128gcm.into(),
                    aesgcm: None,
                })
                .collect(),
            page_counts: Some(PageCounts {
                targeted: BATCH as u64,
                encrypted: BATCH as u64,
                encrypt_failed: 0,
                ..PageCounts::default()
            }),
        })
        .collect()
}

struct Measured {
    subscribers: usize,
    bytes: usize,
    cpu: Duration,
    wall: Duration,
}

/// Produces every batch (at most `IN_FLIGHT` at a time, each awaited until durable) while one
/// consumer receives, decodes and acks them all.
async fn run<B: Bus>(bus: &B, batches: Vec<DeliveryBatch>) -> Measured {
    let mut consumer = bus.consume::<DeliveryBatch>("bench-gateways").expect("join");
    let bytes = batches.iter().map(prost::Message::encoded_len).sum();
    let cpu = ProcessTime::now();
    let wall = Instant::now();

    let consuming = tokio::spawn({
        let expected = batches.len();
        async move {
            let mut subscribers = 0;
            for _ in 0..expected {
                let received = tokio::time::timeout(Duration::from_secs(120), consumer.next()).await;
                let received = received.expect("consumed in time").expect("consumed");
                subscribers += received.message.deliveries.len();
                received.ack.ack();
            }
            subscribers
        }
    });
    let mut sends: JoinSet<Result<(), pushfan_bus::BusError>> = JoinSet::new();
    for batch in batches {
        if sends.len() >= IN_FLIGHT {
            sends.join_next().await.expect("a send").expect("send task").expect("send");
        }
        let bus = bus.clone();
        sends.spawn(async move { bus.publish(&batch, &MessageContext::default()).await });
    }
    while let Some(sent) = sends.join_next().await {
        sent.expect("send task").expect("send");
    }
    let subscribers = consuming.await.expect("consumer task");
    Measured { subscribers, bytes, cpu: cpu.elapsed(), wall: wall.elapsed() }
}

fn report(bus: &str, measured: &Measured, broker_cpu: Option<Duration>) {
    let per_1k = |d: Duration| d.as_secs_f64() * 1000.0 / (measured.subscribers as f64 / 1000.0);
    println!(
        "{bus}: {} subscribers in {} batches ({:.1} MB): pushfan process CPU {:.3} ms per 1k subscribers \
         (total {:.0} ms), wall {:.3} ms per 1k",
        measured.subscribers,
        measured.subscribers / BATCH,
        measured.bytes as f64 / 1e6,
        per_1k(measured.cpu),
        measured.cpu.as_secs_f64() * 1000.0,
        per_1k(measured.wall),
    );
    if let Some(broker) = broker_cpu {
        println!(
            "{bus}: broker (tansu) CPU {:.3} ms per 1k subscribers (total {:.0} ms)",
            per_1k(broker),
            broker.as_secs_f64() * 1000.0
        );
    }
}

/// utime + stime of process `pid` from /proc (USER_HZ is 100 on Linux).
fn process_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
