//! What only the embedded store promises: it is durable across a restart, and it refuses to
//! open data written with another shard count.

mod common;

use common::{scan_ids, subscription, topic, unique_tenant};
use pushfan_store::{
    Audience, DeliveryOutcome, DeliveryResult, EmbeddedStore, ShardCount, StoreError, SubscriptionStore,
    UnixSeconds,
};

#[tokio::test]
async fn a_reopened_store_has_lost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let shards = ShardCount::new(4).unwrap();
    let tenant = unique_tenant("durable");
    let subs: Vec<_> =
        (0..500).map(|n| subscription(&tenant, n, if n % 2 == 0 { &["even"] } else { &[] })).collect();
    {
        let store = EmbeddedStore::open(dir.path(), shards).unwrap();
        store.import(&subs).await.unwrap();
        store.remove(&tenant, &[subs[0].id, subs[1].id]).await.unwrap();
        store.tag(&tenant, &[subs[3].id], &topic("late")).await.unwrap();
        let outcome = DeliveryOutcome { id: subs[5].id, result: DeliveryResult::Failed };
        store.record_outcomes(&tenant, &[outcome], UnixSeconds(1)).await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path(), shards).unwrap();
    assert_eq!(scan_ids(&store, &tenant, &Audience::Everyone).await, common::ids(&subs[2..]));
    let even: Vec<_> = subs[2..].iter().step_by(2).cloned().collect();
    assert_eq!(scan_ids(&store, &tenant, &Audience::Topic(topic("even"))).await, common::ids(&even));
    assert_eq!(scan_ids(&store, &tenant, &Audience::Topic(topic("late"))).await, common::ids(&subs[3..4]));
    assert_eq!(store.get(&tenant, subs[5].id).await.unwrap().unwrap().consecutive_failures, 1);
    assert_eq!(store.get(&tenant, subs[0].id).await.unwrap(), None);
}

#[tokio::test]
async fn another_shard_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedStore::open(dir.path(), ShardCount::new(4).unwrap()).unwrap());
    let err = EmbeddedStore::open(dir.path(), ShardCount::new(8).unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::ShardCountMismatch { stored: 4, configured: 8 }), "{err}");
}
