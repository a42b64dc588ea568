//! What only the Redis store promises: an unreachable Redis is a clear error, a tenant's shard
//! count is checked, cluster keys really spread over the cluster's nodes, and push-service
//! pauses are shared between processes.

mod common;

use std::time::Duration;

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
/// that has ended is dropped. On a single Redis and on a Redis Cluster.
#[tokio::test]
async fn pauses_are_shared_until_they_end() {
    let targets = [RedisTarget::Single(common::redis_url()), RedisTarget::Cluster(common::cluster_urls())];
    for target in targets {
        let (one, other) = (connect(target.clone(), 8).await, connect(target, 8).await);
        let origin = format!("https://{}.push.example", unique_tenant("pause"));
        let pause = |until_ms| OriginPause { origin: origin.clone(), until_ms };
        let now = 1_000_000_u64;
        let ours =
            |pauses: Vec<OriginPause>| pauses.into_iter().filter(|p| p.origin == origin).collect::<Vec<_>>();

        assert_eq!(ours(one.share_pauses(&[pause(now + 2_000)], now).await.unwrap()), [pause(now + 2_000)]);
        // Another process sees it without sharing anything, and an earlier end does not shorten it.
        assert_eq!(ours(other.share_pauses(&[], now).await.unwrap()), [pause(now + 2_000)]);
        assert_eq!(ours(other.share_pauses(&[pause(now + 1_000)], now).await.unwrap()), [pause(now + 2_000)]);
        assert_eq!(ours(other.share_pauses(&[pause(now + 3_000)], now).await.unwrap()), [pause(now + 3_000)]);
        // Once it has ended it is gone.
        assert_eq!(ours(one.share_pauses(&[], now + 3_000).await.unwrap()), []);
        assert_eq!(ours(other.share_pauses(&[], now).await.unwrap()), [], "dropped, not only hidden");
    }
}
