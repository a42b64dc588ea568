//! Shared fixtures of the store's integration tests: real servers from the environment, unique
//! tenants, and subscriptions shaped like real ones.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pushfan_store::ledger::BroadcastLedger;
use pushfan_store::{
    Audience, ContentEncodings, EmbeddedStore, RedisConfig, RedisStore, RedisTarget, ScanCursor, ShardCount,
    Subscription, SubscriptionId, SubscriptionStore, TenantId, Topic, UnixSeconds, VapidKeyId,
};
use pushfan_webpush::{EndpointPolicy, PushSubscription};

/// RFC 8291 Appendix A's user agent keys: a valid point, shared by all fixtures.
const UA_PUBLIC: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

/// Both store traits, as the binaries use one store object for both.
pub(crate) trait Store: SubscriptionStore + BroadcastLedger {}
impl<T: SubscriptionStore + BroadcastLedger> Store for T {}

/// A store under test, plus whatever must live as long as it (the embedded store's directory).
pub(crate) struct Fixture {
    pub(crate) store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

/// An embedded store in a fresh temporary directory.
pub(crate) async fn embedded(shards: u16) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), ShardCount::new(shards).unwrap()).unwrap();
    Fixture { store: Arc::new(store), _dir: Some(dir) }
}

/// The single Redis that `scripts/test` started.
pub(crate) async fn redis_single(shards: u16) -> Fixture {
    let config = RedisConfig::new(RedisTarget::Single(redis_url()), ShardCount::new(shards).unwrap());
    Fixture { store: Arc::new(RedisStore::connect(config).await.unwrap()), _dir: None }
}

/// The Redis Cluster that `scripts/test` started.
pub(crate) async fn redis_cluster(shards: u16) -> Fixture {
    let config = RedisConfig::new(RedisTarget::Cluster(cluster_urls()), ShardCount::new(shards).unwrap());
    Fixture { store: Arc::new(RedisStore::connect(config).await.unwrap()), _dir: None }
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run scripts/test, which starts Redis (or source scripts/setup.d/20-redis.sh)"
        )
    })
}

/// The single Redis the tests use.
pub(crate) fn redis_url() -> String {
    required_env("PUSHFAN_TEST_REDIS_URL")
}

/// The nodes of the Redis Cluster the tests use.
pub(crate) fn cluster_urls() -> Vec<String> {
    required_env("PUSHFAN_TEST_REDIS_CLUSTER_URLS").split(',').map(str::to_owned).collect()
}

/// A tenant no other test (or earlier run against the same server) uses.
pub(crate) fn unique_tenant(label: &str) -> TenantId {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    TenantId::new(&format!("{label}-{}-{nanos}-{n}", std::process::id())).unwrap()
}

pub(crate) fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

/// Subscription number `n` of `tenant`: a 180-byte FCM-style endpoint for most, a Mozilla one
/// for every seventh (so records of both shapes are exercised).
pub(crate) fn subscription(tenant: &TenantId, n: u32, topics: &[&str]) -> Subscription {
    let endpoint = if n.is_multiple_of(7) {
        format!("https://updates.push.services.mozilla.com/wpush/v2/gAAAAABn{n:08}_-x")
    } else {
        let token = format!("d{n:021}:APA91b{n:010}");
        format!("https://fcm.googleapis.com/fcm/send/{token}{}", "x".repeat(180 - 36 - token.len()))
    };
    let push = PushSubscription::new(&endpoint, UA_PUBLIC, AUTH, &EndpointPolicy::default()).unwrap();
    Subscription::new(
        tenant.clone(),
        push,
        ContentEncodings::AES128GCM,
        VapidKeyId(n % 3),
        topics.iter().map(|t| topic(t)).collect(),
        UnixSeconds(1_700_000_000 + n),
    )
    .unwrap()
}

/// Every member of `audience`, scanning each shard to its end with pages of `page_size`.
pub(crate) async fn scan_all(
    store: &dyn SubscriptionStore,
    tenant: &TenantId,
    audience: &Audience,
    page_size: usize,
) -> Vec<Subscription> {
    let mut found = Vec::new();
    for shard in store.shard_count().all() {
        let mut cursor = ScanCursor::START;
        loop {
            let page = store.scan_shard(tenant, audience, shard, cursor, page_size).await.unwrap();
            for subscription in &page.subscriptions {
                assert_eq!(
                    store.shard_count().shard_of(&subscription.id),
                    shard,
                    "a record in the wrong shard"
                );
            }
            found.extend(page.subscriptions);
            match page.next {
                Some(next) => cursor = next,
                None => break,
            }
        }
    }
    found
}

/// The ids of `audience`'s members, each once (Redis scans may repeat one during a resize).
pub(crate) async fn scan_ids(
    store: &dyn SubscriptionStore,
    tenant: &TenantId,
    audience: &Audience,
) -> BTreeSet<SubscriptionId> {
    scan_all(store, tenant, audience, 50).await.into_iter().map(|s| s.id).collect()
}

pub(crate) fn ids(subscriptions: &[Subscription]) -> BTreeSet<SubscriptionId> {
    subscriptions.iter().map(|s| s.id).collect()
}
