//! What only the embedded store promises: it is durable across a restart, it refuses to open
//! data written with another shard count, and a scan's stamp never lets an outcome outlive its
//! subscription.

mod common;

use common::{scan_ids, subscription, topic, unique_tenant};
use pushfan_store::{
    Audience, DeliveryOutcome, DeliveryResult, EmbeddedStore, ScanCursor, ScanPage, ShardCount, ShardId,
    StoreError, Subscription, SubscriptionStore, TenantId, UnixSeconds,
};
use tempfile::TempDir;

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
        store.record_outcomes(&tenant, &[outcome], UnixSeconds(1), None).await.unwrap();
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

/// A one-shard store holding `count` new subscriptions of a tenant of its own; keep the
/// directory for as long as the store.
async fn one_shard_store(label: &str, count: u32) -> (TempDir, EmbeddedStore, TenantId, Vec<Subscription>) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), ShardCount::new(1).unwrap()).unwrap();
    let tenant = unique_tenant(label);
    let subs: Vec<_> = (0..count).map(|n| subscription(&tenant, n, &[])).collect();
    store.import(&subs).await.unwrap();
    (dir, store, tenant, subs)
}

/// The shard's first page of everyone, with its stamp.
async fn first_page(store: &EmbeddedStore, tenant: &TenantId) -> ScanPage {
    store.scan_shard(tenant, &Audience::Everyone, ShardId(0), ScanCursor::START, 1000).await.unwrap()
}

fn all_delivered(subs: &[Subscription]) -> Vec<DeliveryOutcome> {
    subs.iter().map(|s| DeliveryOutcome { id: s.id, result: DeliveryResult::Delivered }).collect()
}

#[tokio::test]
async fn outcomes_recorded_with_a_scan_stamp_match_those_recorded_without() {
    let (_dir, store, tenant, subs) = one_shard_store("stamped", 40).await;
    let failed = |id| DeliveryOutcome { id, result: DeliveryResult::Failed };
    store
        .record_outcomes(&tenant, &[failed(subs[1].id), failed(subs[3].id)], UnixSeconds(5), None)
        .await
        .unwrap();
    let page = first_page(&store, &tenant).await;
    assert!(page.stamp.is_some(), "the embedded store stamps its scans");
    // Successes for the even ones, failures for the odd: a failure still builds on the count.
    let outcomes: Vec<_> = page
        .subscriptions
        .iter()
        .map(|found| {
            let n = subs.iter().position(|s| s.id == found.id).unwrap();
            let result = if n % 2 == 0 { DeliveryResult::Delivered } else { DeliveryResult::Failed };
            DeliveryOutcome { id: found.id, result }
        })
        .collect();
    assert_eq!(store.record_outcomes(&tenant, &outcomes, UnixSeconds(9), page.stamp).await.unwrap(), 40);
    for (n, sub) in subs.iter().enumerate() {
        let stored = store.get(&tenant, sub.id).await.unwrap().unwrap();
        let expected = match n {
            1 | 3 => (None, 2),
            _ if n % 2 == 1 => (None, 1),
            _ => (Some(UnixSeconds(9)), 0),
        };
        assert_eq!((stored.last_success_at, stored.consecutive_failures), expected, "subscription {n}");
    }
}

#[tokio::test]
async fn a_deletion_after_the_scan_voids_its_stamp() {
    let (_dir, store, tenant, subs) = one_shard_store("voided", 10).await;
    let page = first_page(&store, &tenant).await;
    // Gone between the scan and its outcomes (a 410 in another batch, an unsubscribe).
    assert_eq!(store.remove(&tenant, &[subs[4].id]).await.unwrap(), 1);
    assert_eq!(
        store.record_outcomes(&tenant, &all_delivered(&subs), UnixSeconds(7), page.stamp).await.unwrap(),
        9,
        "the removed subscription got an outcome"
    );
    assert_eq!(store.get(&tenant, subs[4].id).await.unwrap(), None);
    // Nothing of it was left behind: subscribed again, it starts with no outcome.
    store.import(&subs[4..5]).await.unwrap();
    let again = store.get(&tenant, subs[4].id).await.unwrap().unwrap();
    assert_eq!((again.last_success_at, again.consecutive_failures), (None, 0));
}

#[tokio::test]
async fn another_stores_stamp_is_not_taken() {
    let (_dir, store, tenant, subs) = one_shard_store("foreign", 3).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = EmbeddedStore::open(other_dir.path(), ShardCount::new(1).unwrap()).unwrap();
    other.import(&subs[..2]).await.unwrap();
    // Both stores have deleted nothing, but only `other`'s own stamp could vouch for its records.
    let stamp = first_page(&store, &tenant).await.stamp;
    assert_eq!(
        other.record_outcomes(&tenant, &all_delivered(&subs), UnixSeconds(7), stamp).await.unwrap(),
        2
    );
}
