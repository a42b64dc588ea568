//! Store throughput against real servers: bulk import rate, parallel scan rate of a 1M-member
//! audience, remove rate, and Redis memory per subscription (`INFO memory` `used_memory` delta)
//! with 180-byte FCM-style endpoints. Prints one line per measurement.
//!
//! `PUSHFAN_TEST_REDIS_URL=redis://127.0.0.1:6390/ cargo bench -p pushfan-store --bench throughput`
//! (scripts/setup.d/20-redis.sh starts that Redis). Optional: `PUSHFAN_BENCH_SUBSCRIPTIONS`
//! (default 1,000,000), `PUSHFAN_TEST_REDIS_CLUSTER_URLS` to measure the cluster too.

use std::sync::Arc;
use std::time::Instant;

use pushfan_store::{
    Audience, ContentEncodings, EmbeddedStore, RedisConfig, RedisStore, RedisTarget, ScanCursor, ShardCount,
    Subscription, SubscriptionStore, TenantId, Topic, UnixSeconds, VapidKeyId,
};
use pushfan_webpush::{Endpoint, EndpointPolicy, PushSubscription, SubscriptionKeys};

const IMPORT_BATCH: usize = 10_000;
const PAGE_SIZE: usize = 1_000;
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `n` subscriptions with distinct 180-byte FCM-style endpoints (prefix, 22-char instance id,
/// ':', `APA91b` and a 115-char token), all in `topics`.
fn subscriptions(tenant: &TenantId, n: usize, topics: &[Topic]) -> Vec<Subscription> {
    let keys = SubscriptionKeys::from_base64(
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        "BTBZMqHH6r4Tts7J_aSIgg",
    )
    .unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ tenant.as_str().len() as u64;
    let mut random_chars = |count: usize, out: &mut String| {
        for _ in 0..count {
            // xorshift64: deterministic, fast, good enough to make endpoints distinct.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.push(char::from(BASE64URL[(state >> 58) as usize]));
        }
    };
    (0..n)
        .map(|i| {
            let mut url = String::with_capacity(180);
            url.push_str("https://fcm.googleapis.com/fcm/send/");
            random_chars(22, &mut url);
            url.push_str(":APA91b");
            random_chars(115, &mut url);
            debug_assert_eq!(url.len(), 180);
            let push = PushSubscription {
                endpoint: Endpoint::parse(&url, &EndpointPolicy::default()).unwrap(),
                keys: keys.clone(),
                expiration_time: None,
            };
            Subscription::new(
                tenant.clone(),
                push,
                ContentEncodings::AES128GCM,
                VapidKeyId(1),
                topics.to_vec(),
                UnixSeconds(1_700_000_000 + i as u32),
            )
            .unwrap()
        })
        .collect()
}

/// Wall time plus the CPU time this process and the Redis servers spent, so a rate measured on
/// a busy machine can be read as "per CPU-second" too.
struct Clock {
    wall: Instant,
    own_cpu: f64,
    redis_cpu: f64,
}

impl Clock {
    async fn start(nodes: &[String]) -> Self {
        Self { wall: Instant::now(), own_cpu: own_cpu_seconds(), redis_cpu: redis_cpu_seconds(nodes).await }
    }

    async fn report(&self, count: usize, nodes: &[String]) -> String {
        let wall = self.wall.elapsed().as_secs_f64();
        let own = own_cpu_seconds() - self.own_cpu;
        let mut line = format!(
            "{count} in {wall:.2} s = {:.0}/s; client {:.0}/CPU-s",
            count as f64 / wall,
            count as f64 / own
        );
        if !nodes.is_empty() {
            let redis = redis_cpu_seconds(nodes).await - self.redis_cpu;
            line.push_str(&format!(", redis {:.0}/CPU-s", count as f64 / redis));
        }
        line
    }
}

/// User plus system CPU seconds of this process so far (Linux `/proc/self/stat`, 100 ticks/s).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

async fn redis_cpu_seconds(nodes: &[String]) -> f64 {
    let mut total = 0.0;
    for node in nodes {
        let info = info(node, "cpu").await;
        for field in ["used_cpu_user:", "used_cpu_sys:"] {
            let value = info.lines().find_map(|line| line.strip_prefix(field)).unwrap();
            total += value.trim().parse::<f64>().unwrap();
        }
    }
    total
}

async fn info(node: &str, section: &str) -> String {
    let client = redis::Client::open(node).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("INFO").arg(section).query_async(&mut connection).await.unwrap()
}

async fn import(store: &dyn SubscriptionStore, subs: &[Subscription]) {
    for batch in subs.chunks(IMPORT_BATCH) {
        store.import(batch).await.unwrap();
    }
}

/// Scans every shard of `audience` concurrently (one task per shard); returns how many came back.
async fn scan_parallel(store: Arc<dyn SubscriptionStore>, tenant: &TenantId, audience: &Audience) -> usize {
    let tasks: Vec<_> = store
        .shard_count()
        .all()
        .map(|shard| {
            let (store, tenant, audience) = (Arc::clone(&store), tenant.clone(), audience.clone());
            tokio::spawn(async move {
                let (mut cursor, mut found) = (ScanCursor::START, 0);
                loop {
                    let page = store.scan_shard(&tenant, &audience, shard, cursor, PAGE_SIZE).await.unwrap();
                    found += page.subscriptions.len();
                    match page.next {
                        Some(next) => cursor = next,
                        None => return found,
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}

async fn used_memory(nodes: &[String]) -> i64 {
    let mut total = 0;
    for node in nodes {
        let info = info(node, "memory").await;
        let line = info.lines().find_map(|line| line.strip_prefix("used_memory:")).unwrap();
        total += line.trim().parse::<i64>().unwrap();
    }
    total
}

async fn bench_redis(label: &str, target: RedisTarget, nodes: &[String], n: usize) {
    let shards = ShardCount::DEFAULT;
    let store: Arc<dyn SubscriptionStore> =
        Arc::new(RedisStore::connect(RedisConfig::new(target, shards)).await.unwrap());
    let run = std::process::id();
    for (audience, topics) in [
        (Audience::Everyone, vec![]),
        (Audience::Topic(Topic::new("news").unwrap()), vec![Topic::new("news").unwrap()]),
    ] {
        let tenant = TenantId::new(&format!("bench-{run}-{}", topics.len())).unwrap();
        let subs = subscriptions(&tenant, n, &topics);
        let before = used_memory(nodes).await;
        let clock = Clock::start(nodes).await;
        import(&*store, &subs).await;
        println!("{label}: import ({} topics): {}", topics.len(), clock.report(n, nodes).await);
        let after = used_memory(nodes).await;
        println!(
            "{label}: memory ({} topics): {:.1} bytes/subscription",
            topics.len(),
            (after - before) as f64 / n as f64
        );
        let clock = Clock::start(nodes).await;
        let found = scan_parallel(Arc::clone(&store), &tenant, &audience).await;
        println!(
            "{label}: scan {audience:?} over {} shards: {}",
            shards.get(),
            clock.report(found, nodes).await
        );
        assert!(found >= n, "scan found {found} of {n}");
        let clock = Clock::start(nodes).await;
        for batch in subs.chunks(IMPORT_BATCH) {
            let ids: Vec<_> = batch.iter().map(|s| s.id).collect();
            store.remove(&tenant, &ids).await.unwrap();
        }
        println!("{label}: remove: {}", clock.report(n, nodes).await);
    }
}

async fn bench_embedded(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let shards = ShardCount::DEFAULT;
    let store: Arc<dyn SubscriptionStore> = Arc::new(EmbeddedStore::open(dir.path(), shards).unwrap());
    let tenant = TenantId::new("bench-embedded").unwrap();
    let subs = subscriptions(&tenant, n, &[]);
    let clock = Clock::start(&[]).await;
    import(&*store, &subs).await;
    println!("embedded: import (fsync per {IMPORT_BATCH}): {}", clock.report(n, &[]).await);
    let clock = Clock::start(&[]).await;
    let found = scan_parallel(Arc::clone(&store), &tenant, &Audience::Everyone).await;
    println!("embedded: scan Everyone over {} shards: {}", shards.get(), clock.report(found, &[]).await);
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters like a test harness would.
    if std::env::args().skip(1).any(|arg| arg != "--bench") {
        return;
    }
    let n: usize = std::env::var("PUSHFAN_BENCH_SUBSCRIPTIONS").map_or(1_000_000, |v| v.parse().unwrap());
    let url = std::env::var("PUSHFAN_TEST_REDIS_URL").expect(
        "PUSHFAN_TEST_REDIS_URL is not set: run scripts/setup.d/20-redis.sh (scripts/test starts Redis)",
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        bench_redis("redis", RedisTarget::Single(url.clone()), &[url], n).await;
        if let Ok(urls) = std::env::var("PUSHFAN_TEST_REDIS_CLUSTER_URLS") {
            let nodes: Vec<String> = urls.split(',').map(str::to_owned).collect();
            bench_redis("redis-cluster", RedisTarget::Cluster(nodes.clone()), &nodes, n).await;
        }
        bench_embedded(n).await;
    });
}
