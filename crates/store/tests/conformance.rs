//! The store conformance suite, run against every backend on real servers: the embedded store
//! in a temporary directory, a single Redis and a 3-master Redis Cluster (both started by
//! `scripts/test`; see `scripts/setup.d/20-redis.sh`).
//!
//! Each test uses its own tenant, so tests run in parallel against one server.

mod common;

use common::{ids, scan_all, scan_ids, subscription, topic, unique_tenant, Fixture};
use pushfan_store::{
    Audience, DeliveryOutcome, DeliveryResult, ScanCursor, ShardId, StoreError, Subscription,
    SubscriptionStore, UnixSeconds,
};

/// The shard count every conformance test uses (small, so shards hold many members).
const SHARDS: u16 = 8;

async fn embedded() -> Fixture {
    common::embedded(SHARDS).await
}

async fn redis_single() -> Fixture {
    common::redis_single(SHARDS).await
}

async fn redis_cluster() -> Fixture {
    common::redis_cluster(SHARDS).await
}

fn batch(
    tenant: &pushfan_store::TenantId,
    range: std::ops::Range<u32>,
    topics: &[&str],
) -> Vec<Subscription> {
    range.map(|n| subscription(tenant, n, topics)).collect()
}

async fn import_get_and_reimport_are_idempotent(store: &dyn SubscriptionStore) {
    let tenant = unique_tenant("import");
    let subs = batch(&tenant, 0..200, &["news"]);
    assert_eq!(store.import(&subs).await.unwrap(), 200);
    assert_eq!(store.get(&tenant, subs[3].id).await.unwrap().as_ref(), Some(&subs[3]));
    assert_eq!(store.get(&tenant, subs[7].id).await.unwrap().as_ref(), Some(&subs[7]));

    // The same endpoints again: same ids, no duplicates; changed fields replace the old ones.
    let mut again = batch(&tenant, 0..200, &["news"]);
    again[3].vapid_key = pushfan_store::VapidKeyId(99);
    assert_eq!(store.import(&again).await.unwrap(), 200);
    assert_eq!(store.get(&tenant, subs[3].id).await.unwrap().unwrap().vapid_key.0, 99);
    assert_eq!(scan_ids(store, &tenant, &Audience::Everyone).await, ids(&subs));

    // A batch naming one id twice keeps the last.
    let mut twice = vec![subscription(&tenant, 500, &["a"]), subscription(&tenant, 500, &["b"])];
    twice[1].vapid_key = pushfan_store::VapidKeyId(7);
    assert_eq!(store.import(&twice).await.unwrap(), 1);
    assert_eq!(store.get(&tenant, twice[0].id).await.unwrap().as_ref(), Some(&twice[1]));
    assert!(scan_ids(store, &tenant, &Audience::Topic(topic("a"))).await.is_empty());
}

async fn scans_return_every_member_with_full_records(store: &dyn SubscriptionStore) {
    let tenant = unique_tenant("scan");
    let mut subs = batch(&tenant, 0..300, &[]);
    subs.extend(batch(&tenant, 300..420, &["sport", "news"]));
    subs.extend(batch(&tenant, 420..450, &["sport"]));
    store.import(&subs).await.unwrap();

    for page_size in [1, 7, 1000] {
        let everyone = scan_all(store, &tenant, &Audience::Everyone, page_size).await;
        assert_eq!(ids(&everyone), ids(&subs), "page size {page_size}");
        // Full records come back, not just ids.
        for found in &everyone {
            assert_eq!(Some(found), subs.iter().find(|s| s.id == found.id));
        }
    }
    let sport = scan_all(store, &tenant, &Audience::Topic(topic("sport")), 16).await;
    assert_eq!(ids(&sport), ids(&subs[300..450]));
    let news = scan_ids(store, &tenant, &Audience::Topic(topic("news"))).await;
    assert_eq!(news, ids(&subs[300..420]));
    assert!(scan_ids(store, &tenant, &Audience::Topic(topic("nobody"))).await.is_empty());
}

async fn remove_deletes_records_and_memberships(store: &dyn SubscriptionStore) {
    let tenant = unique_tenant("remove");
    let subs = batch(&tenant, 0..100, &["news"]);
    store.import(&subs).await.unwrap();
    let gone: Vec<_> = subs[..40].iter().map(|s| s.id).collect();
    let unknown = subscription(&unique_tenant("other"), 9999, &[]).id;
    assert_eq!(store.remove(&tenant, &[gone.as_slice(), &[unknown]].concat()).await.unwrap(), 40);
    assert_eq!(store.remove(&tenant, &gone).await.unwrap(), 0);
    assert_eq!(store.get(&tenant, gone[0]).await.unwrap(), None);
    assert_eq!(scan_ids(store, &tenant, &Audience::Everyone).await, ids(&subs[40..]));
    assert_eq!(scan_ids(store, &tenant, &Audience::Topic(topic("news"))).await, ids(&subs[40..]));
}

async fn tag_and_untag_change_topics(store: &dyn SubscriptionStore) {
    let tenant = unique_tenant("tag");
    let mut subs = batch(&tenant, 0..60, &["news"]);
    subs[0].expiration_time_ms = Some(1_900_000_000_123);
    store.import(&subs).await.unwrap();
    let first: Vec<_> = subs[..20].iter().map(|s| s.id).collect();
    let vip = topic("vip");

    assert_eq!(store.tag(&tenant, &first, &vip).await.unwrap(), 20);
    assert_eq!(store.tag(&tenant, &first, &vip).await.unwrap(), 0, "already tagged");
    assert_eq!(scan_ids(store, &tenant, &Audience::Topic(vip.clone())).await, ids(&subs[..20]));
    let tagged = store.get(&tenant, first[0]).await.unwrap().unwrap();
    assert_eq!(tagged.topics, vec![topic("news"), vip.clone()]);
    assert_eq!(tagged.expiration_time_ms, Some(1_900_000_000_123), "a retag keeps the expiration time");

    assert_eq!(store.untag(&tenant, &first[..5], &vip).await.unwrap(), 5);
    assert_eq!(store.untag(&tenant, &first[..5], &vip).await.unwrap(), 0);
    assert_eq!(scan_ids(store, &tenant, &Audience::Topic(vip.clone())).await, ids(&subs[5..20]));
    assert_eq!(store.get(&tenant, first[0]).await.unwrap().unwrap().topics, vec![topic("news")]);

    // Re-importing without the topic drops the membership too.
    let untagged: Vec<_> =
        subs[5..10].iter().map(|s| Subscription { topics: Vec::new(), ..s.clone() }).collect();
    store.import(&untagged).await.unwrap();
    assert_eq!(scan_ids(store, &tenant, &Audience::Topic(vip)).await, ids(&subs[10..20]));
    assert_eq!(scan_ids(store, &tenant, &Audience::Topic(topic("news"))).await.len(), 55);
}

async fn outcomes_are_recorded_in_batches(store: &dyn SubscriptionStore) {
    let tenant = unique_tenant("outcome");
    let subs = batch(&tenant, 0..50, &[]);
    store.import(&subs).await.unwrap();
    let failed = |s: &Subscription| DeliveryOutcome { id: s.id, result: DeliveryResult::Failed };
    let delivered = |s: &Subscription| DeliveryOutcome { id: s.id, result: DeliveryResult::Delivered };
    let failures: Vec<_> = subs.iter().map(failed).collect();
    assert_eq!(store.record_outcomes(&tenant, &failures, UnixSeconds(10), None).await.unwrap(), 50);
    assert_eq!(store.record_outcomes(&tenant, &failures[..10], UnixSeconds(11), None).await.unwrap(), 10);
    let successes: Vec<_> = subs[..5].iter().map(delivered).collect();
    store.record_outcomes(&tenant, &successes, UnixSeconds(1_800_000_000), None).await.unwrap();
    store.remove(&tenant, &[subs[49].id]).await.unwrap();
    assert_eq!(
        store.record_outcomes(&tenant, &failures[45..], UnixSeconds(12), None).await.unwrap(),
        4,
        "removed one"
    );

    // Within the resolution a clean subscription's success time stays; a failure resets that.
    store.record_outcomes(&tenant, &successes[..2], UnixSeconds(1_800_000_100), None).await.unwrap();
    store.record_outcomes(&tenant, &failures[1..2], UnixSeconds(1_800_000_200), None).await.unwrap();
    store.record_outcomes(&tenant, &successes[..2], UnixSeconds(1_800_000_300), None).await.unwrap();

    let read = |n: usize| store.get(&tenant, subs[n].id);
    let ok = read(0).await.unwrap().unwrap();
    assert_eq!((ok.last_success_at, ok.consecutive_failures), (Some(UnixSeconds(1_800_000_000)), 0));
    let recovered = read(1).await.unwrap().unwrap();
    assert_eq!(
        (recovered.last_success_at, recovered.consecutive_failures),
        (Some(UnixSeconds(1_800_000_300)), 0)
    );
    assert_eq!(read(7).await.unwrap().unwrap().consecutive_failures, 2);
    let once = read(20).await.unwrap().unwrap();
    assert_eq!((once.last_success_at, once.consecutive_failures), (None, 1));
    // Everything else in the record is untouched.
    assert_eq!(Subscription { consecutive_failures: 0, ..once }, subs[20]);

    // Re-subscribing replaces the record, outcome fields included; so does a removal and a
    // new subscription with the same id.
    store.import(&subs[7..8]).await.unwrap();
    assert_eq!(read(7).await.unwrap().unwrap(), subs[7]);
    store.remove(&tenant, &[subs[1].id]).await.unwrap();
    store.import(&subs[1..2]).await.unwrap();
    assert_eq!(read(1).await.unwrap().unwrap(), subs[1]);
}

/// Outcomes in any order and grouping: shuffled across shards, one id twice in a call (each
/// counts), a few ids far apart in a big shard, ids the tenant never had.
async fn outcomes_in_any_order_all_count(store: &dyn SubscriptionStore) {
    let tenant = unique_tenant("scatter");
    let subs = batch(&tenant, 0..1200, &[]);
    store.import(&subs).await.unwrap();
    let failed = |id| DeliveryOutcome { id, result: DeliveryResult::Failed };
    let mut calls: Vec<DeliveryOutcome> = subs.iter().rev().step_by(97).map(|s| failed(s.id)).collect();
    calls.push(failed(subs[3].id));
    calls.push(failed(subs[3].id));
    // The lowest and the highest id of one shard: the ~150 records between them are not asked for.
    let shards = store.shard_count();
    let mut in_shard: Vec<usize> =
        (0..subs.len()).filter(|&n| shards.shard_of(&subs[n].id) == ShardId(0)).collect();
    in_shard.sort_by_key(|&n| subs[n].id);
    let (lowest, highest) = (in_shard[0], in_shard[in_shard.len() - 1]);
    calls.extend([failed(subs[lowest].id), failed(subs[highest].id)]);
    let strangers = batch(&unique_tenant("stranger"), 5000..5003, &[]);
    calls.extend(strangers.iter().map(|s| failed(s.id)));
    let expected = subs.iter().rev().step_by(97).count() + 4;
    assert_eq!(store.record_outcomes(&tenant, &calls, UnixSeconds(5), None).await.unwrap(), expected);
    let (tenant, subs) = (&tenant, &subs);
    let failures =
        |n: usize| async move { store.get(tenant, subs[n].id).await.unwrap().unwrap().consecutive_failures };
    assert_eq!(failures(3).await, 2, "the same id twice in one call counts twice");
    assert_eq!(failures(1199).await, 1);
    assert_eq!(failures(1199 - 97).await, 1);
    assert_eq!(failures(1198).await, 0, "a neighbour is untouched");
    assert_eq!((failures(lowest).await, failures(highest).await), (1, 1));
    assert_eq!(failures(in_shard[1]).await, 0, "nor is anything between them");
    for stranger in &strangers {
        assert_eq!(store.get(tenant, stranger.id).await.unwrap(), None, "nothing appears for unknown ids");
    }
}

/// Tagging rewrites whole records while outcome recording edits them in place; run both at once
/// and check neither loses the other's writes.
async fn concurrent_tagging_and_outcomes_lose_nothing(store: &dyn SubscriptionStore) {
    let tenant = unique_tenant("race");
    let subs = batch(&tenant, 0..100, &[]);
    store.import(&subs).await.unwrap();
    let all: Vec<_> = subs.iter().map(|s| s.id).collect();
    let failures: Vec<_> =
        all.iter().map(|&id| DeliveryOutcome { id, result: DeliveryResult::Failed }).collect();
    let topics: Vec<_> = (0..5).map(|n| topic(&format!("t{n}"))).collect();
    let record_failures = async {
        for round in 0..20 {
            store.record_outcomes(&tenant, &failures, UnixSeconds(round), None).await.unwrap();
        }
    };
    let tag_all = async {
        for topic in &topics {
            assert_eq!(store.tag(&tenant, &all, topic).await.unwrap(), 100);
        }
    };
    tokio::join!(record_failures, tag_all);
    for topic in &topics {
        assert_eq!(scan_ids(store, &tenant, &Audience::Topic(topic.clone())).await, ids(&subs));
    }
    for found in scan_all(store, &tenant, &Audience::Everyone, 100).await {
        assert_eq!((found.consecutive_failures, &found.topics), (20, &topics));
    }
    // Topic scans carry the outcome fields too, page after page.
    let members = scan_all(store, &tenant, &Audience::Topic(topics[0].clone()), 7).await;
    assert_eq!(members.len(), 100);
    assert!(members.iter().all(|found| found.consecutive_failures == 20));
}

async fn tenants_are_isolated(store: &dyn SubscriptionStore) {
    let owner = unique_tenant("owner");
    let intruder = unique_tenant("intruder");
    let subs = batch(&owner, 0..30, &["news"]);
    store.import(&subs).await.unwrap();
    let all: Vec<_> = subs.iter().map(|s| s.id).collect();
    assert_eq!(store.get(&intruder, all[0]).await.unwrap(), None);
    assert!(scan_ids(store, &intruder, &Audience::Everyone).await.is_empty());
    assert!(scan_ids(store, &intruder, &Audience::Topic(topic("news"))).await.is_empty());
    assert_eq!(store.remove(&intruder, &all).await.unwrap(), 0);
    assert_eq!(store.tag(&intruder, &all, &topic("x")).await.unwrap(), 0);
    let failures: Vec<_> =
        all.iter().map(|&id| DeliveryOutcome { id, result: DeliveryResult::Failed }).collect();
    assert_eq!(store.record_outcomes(&intruder, &failures, UnixSeconds(1), None).await.unwrap(), 0);
    assert_eq!(scan_ids(store, &owner, &Audience::Everyone).await, ids(&subs));
    assert_eq!(store.get(&owner, all[0]).await.unwrap().unwrap().consecutive_failures, 0);
}

async fn bad_scan_arguments_are_errors(store: &dyn SubscriptionStore) {
    let tenant = unique_tenant("args");
    let beyond = ShardId(SHARDS);
    let err =
        store.scan_shard(&tenant, &Audience::Everyone, beyond, ScanCursor::START, 10).await.unwrap_err();
    assert!(matches!(err, StoreError::ShardOutOfRange { shard: 8, count: 8 }), "{err}");
    // Each kind of store refuses the other's cursors.
    let redis_cursor = ScanCursor::from_bytes(&[1, 0, 0, 0, 0, 0, 0, 0, 7]).unwrap();
    let embedded_cursor =
        ScanCursor::from_bytes(&[[2u8].as_slice(), &[0; pushfan_store::SubscriptionId::LEN]].concat())
            .unwrap();
    let results = [
        store.scan_shard(&tenant, &Audience::Everyone, ShardId(0), redis_cursor, 10).await,
        store.scan_shard(&tenant, &Audience::Everyone, ShardId(0), embedded_cursor, 10).await,
    ];
    assert_eq!(results.iter().filter(|r| matches!(r, Err(StoreError::InvalidCursor))).count(), 1);
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test]
            async fn import_get_and_reimport_are_idempotent() {
                super::import_get_and_reimport_are_idempotent(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn scans_return_every_member_with_full_records() {
                super::scans_return_every_member_with_full_records(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn remove_deletes_records_and_memberships() {
                super::remove_deletes_records_and_memberships(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn tag_and_untag_change_topics() {
                super::tag_and_untag_change_topics(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn outcomes_in_any_order_all_count() {
                super::outcomes_in_any_order_all_count(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn outcomes_are_recorded_in_batches() {
                super::outcomes_are_recorded_in_batches(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn concurrent_tagging_and_outcomes_lose_nothing() {
                super::concurrent_tagging_and_outcomes_lose_nothing(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn tenants_are_isolated() {
                super::tenants_are_isolated(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn bad_scan_arguments_are_errors() {
                super::bad_scan_arguments_are_errors(&*super::$backend().await.store).await;
            }
        }
    };
}

conformance!(embedded);
conformance!(redis_single);
conformance!(redis_cluster);
