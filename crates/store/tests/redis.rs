//! What only the Redis store promises: an unreachable Redis is a clear error, a tenant's shard
//! count is checked, cluster keys really spread over the cluster's nodes, and push-service
//! pauses are shared between processes.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{subscription, unique_tenant};
use pushfan_store::{
    OriginPause, PauseBoard, RedisConfig, RedisStore, RedisTarget, ShardCount, StoreError, SubscriptionStore,
    TenantId,
};

async fn connect(target: RedisTarget, shards: u16) -> RedisStore {
    RedisStore::connect(RedisConfig::new(target, ShardCount::new(shards).unwrap())).await.unwrap()
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_as_unavailable() {
    // Port 9 (discard) has nothing listening on loopback.
    let mut config =
        RedisConfig::new(RedisTarget::Single("redis://127.0.0.1:9/".into()), ShardCount::DEFAULT);
    config.timeout = Duration::from_secs(1);
    let err = RedisStore::connect(config).await.unwrap_err();
    assert!(matches!(err, StoreError::RedisUnavailable(_)), "{err}");
    assert!(err.to_string().starts_with("redis is unavailable"), "{err}");
}

#[tokio::test]
async fn a_tenant_written_with_another_shard_count_is_refused() {
    let tenant = unique_tenant("shards");
    let target = RedisTarget::Single(common::redis_url());
    connect(target.clone(), 8).await.import(&[subscription(&tenant, 1, &[])]).await.unwrap();
    let other = connect(target, 16).await;
    let err = other.get(&tenant, subscription(&tenant, 1, &[]).id).await.unwrap_err();
    assert!(matches!(err, StoreError::ShardCountMismatch { stored: 8, configured: 16 }), "{err}");
}

/// How many of the cluster nodes at `urls` own a slot holding one of `keys` (a node answers
/// `CLUSTER COUNTKEYSINSLOT` with 0 for slots it does not own).
async fn nodes_holding(keys: &[String], urls: &[String]) -> usize {
    let mut holding = 0;
    for url in urls {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut node = client.get_multiplexed_async_connection().await.unwrap();
        let mut held = 0u64;
        for key in keys {
            let slot: u16 =
                redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut node).await.unwrap();
            held += redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot)
                .query_async::<u64>(&mut node)
                .await
                .unwrap();
        }
        holding += usize::from(held > 0);
    }
    holding
}

#[tokio::test]
async fn cluster_shards_spread_over_nodes() {
    let urls = common::cluster_urls();
    let store = connect(RedisTarget::Cluster(urls.clone()), 16).await;
    let tenant: TenantId = unique_tenant("spread");
    let subs: Vec<_> = (0..200).map(|n| subscription(&tenant, n, &["news"])).collect();
    assert_eq!(store.import(&subs).await.unwrap(), 200);
    let keys: Vec<String> =
        store.shard_count().all().map(|shard| format!("pf:{{{tenant}|{shard}}}:subs")).collect();
    assert!(nodes_holding(&keys, &urls).await > 1, "all 16 shards on one node");
}

/// A pause shared by one process reaches the others: the later end wins per origin, and a pause
/// that has ended is dropped. On a single Redis and on a Redis Cluster. The board is shared by
/// every test (and every cluster role) on these servers, so the times are real ones: a caller
/// with the real time drops only pauses that have really ended.
#[tokio::test]
async fn pauses_are_shared_until_they_end() {
    let targets = [RedisTarget::Single(common::redis_url()), RedisTarget::Cluster(common::cluster_urls())];
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    for target in targets {
        let (one, other) = (connect(target.clone(), 8).await, connect(target, 8).await);
        let [long, brief] =
            ["long", "brief"].map(|name| format!("https://{name}.{}.push.example", unique_tenant("pause")));
        let pause = |origin: &str, until_ms| OriginPause { origin: origin.to_owned(), until_ms };
        let ours = |pauses: Vec<OriginPause>| {
            let mut ours: Vec<_> =
                pauses.into_iter().filter(|p| p.origin == long || p.origin == brief).collect();
            ours.sort_by(|a, b| a.origin.cmp(&b.origin));
            ours
        };
        let start = now();
        let minute = pause(&long, start + 60_000);

        assert_eq!(
            ours(one.share_pauses(std::slice::from_ref(&minute), start).await.unwrap()),
            vec![minute.clone()]
        );
        // Another process sees it without sharing anything, and an earlier end does not shorten it.
        assert_eq!(ours(other.share_pauses(&[], start).await.unwrap()), vec![minute.clone()]);
        let shorter = pause(&long, start + 30_000);
        assert_eq!(ours(other.share_pauses(&[shorter], start).await.unwrap()), vec![minute.clone()]);
        let longer = pause(&long, start + 90_000);
        assert_eq!(
            ours(other.share_pauses(std::slice::from_ref(&longer), start).await.unwrap()),
            vec![longer.clone()]
        );

        // A pause ends: once its time has passed, the next share drops it.
        let ending = pause(&brief, now() + 200);
        assert_eq!(
            ours(one.share_pauses(std::slice::from_ref(&ending), start).await.unwrap()),
            vec![ending.clone(), longer.clone()]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ours(other.share_pauses(&[], now()).await.unwrap()), vec![longer.clone()]);
        // Dropped, not only hidden: a caller whose clock is behind no longer sees it either.
        assert_eq!(ours(one.share_pauses(&[], start).await.unwrap()), vec![longer]);
    }
}
