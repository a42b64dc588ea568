//! The broadcast ledger conformance suite, run against every backend on real servers: the
//! embedded store in a temporary directory, a single Redis and a 3-master Redis Cluster (see
//! `scripts/setup.d/20-redis.sh`). Then what only one backend promises: the embedded ledger
//! survives a reopen, and Redis keys carry the retention expiry.
//!
//! Each test uses its own tenant, so tests run in parallel against one server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{subscription, unique_tenant, Fixture, Store};
use pushfan_store::ledger::{
    BroadcastCounts, BroadcastId, BroadcastLedger, BroadcastStatus, ProgressDelta, ShardCheckpoint,
    BROADCAST_RETENTION, MAX_SAMPLES_PER_CLASS,
};
use pushfan_store::{
    Audience, EmbeddedStore, ScanCursor, ShardCount, ShardId, StoreError, SubscriptionStore, TenantId,
    UnixSeconds,
};
use pushfan_webpush::FailureClass;

/// Two shards, so a few hundred subscriptions make each shard's Redis hash big enough (over 128
/// entries) for `HSCAN` to return a cursor in the middle of it.
const SHARDS: u16 = 2;

async fn embedded() -> Fixture {
    common::embedded(SHARDS).await
}

async fn redis_single() -> Fixture {
    common::redis_single(SHARDS).await
}

async fn redis_cluster() -> Fixture {
    common::redis_cluster(SHARDS).await
}

fn broadcast(id: &str) -> BroadcastId {
    BroadcastId::new(id).unwrap()
}

fn sample(class: FailureClass, text: &str) -> (FailureClass, String) {
    (class, text.into())
}

fn delta(counts: BroadcastCounts, samples: &[(FailureClass, String)]) -> ProgressDelta {
    ProgressDelta { counts, samples: samples.to_vec(), replaces_partial: None }
}

/// `n` rejected deliveries, all of class `rejected`.
fn rejected(n: u64) -> BroadcastCounts {
    let mut counts = BroadcastCounts { rejected: n, ..Default::default() };
    counts.failures[FailureClass::Rejected.index()] = n;
    counts
}

fn targeted(n: u64) -> ProgressDelta {
    delta(BroadcastCounts { targeted: n, encrypted: n, ..Default::default() }, &[])
}

async fn status(store: &dyn Store, tenant: &TenantId, id: &BroadcastId) -> BroadcastStatus {
    store.status(tenant, id).await.unwrap().expect("the broadcast exists")
}

async fn idempotency_keys_claim_conflict_and_expire(store: &dyn Store) {
    let tenant = unique_tenant("idem");
    let (first, second) = (broadcast("first"), broadcast("second"));
    let hour = Duration::from_secs(3600);
    assert_eq!(store.claim_idempotency_key(&tenant, "order-1", &first, hour).await.unwrap(), None);
    // A repeated publish, by whichever broadcast id, learns who holds the key.
    assert_eq!(
        store.claim_idempotency_key(&tenant, "order-1", &second, hour).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.claim_idempotency_key(&tenant, "order-1", &first, hour).await.unwrap(),
        Some(first.clone())
    );
    // Keys are free-form client text.
    let odd = "{x}|y: z/ä";
    assert_eq!(store.claim_idempotency_key(&tenant, odd, &second, hour).await.unwrap(), None);
    assert_eq!(store.claim_idempotency_key(&tenant, odd, &first, hour).await.unwrap(), Some(second.clone()));

    // Only the claim's holder releases it; then the key is free again.
    assert!(!store.release_idempotency_key(&tenant, "order-1", &second).await.unwrap());
    assert!(!store.release_idempotency_key(&tenant, "never-claimed", &first).await.unwrap());
    assert!(store.release_idempotency_key(&tenant, "order-1", &first).await.unwrap());
    assert!(!store.release_idempotency_key(&tenant, "order-1", &first).await.unwrap(), "already released");
    assert_eq!(store.claim_idempotency_key(&tenant, "order-1", &second, hour).await.unwrap(), None);
    assert_eq!(
        store.claim_idempotency_key(&tenant, "order-1", &first, hour).await.unwrap(),
        Some(second.clone())
    );

    // A claim expires after its TTL; then the key is free again.
    let second_ttl = Duration::from_secs(1);
    assert_eq!(store.claim_idempotency_key(&tenant, "short", &first, second_ttl).await.unwrap(), None);
    assert_eq!(
        store.claim_idempotency_key(&tenant, "short", &second, second_ttl).await.unwrap(),
        Some(first.clone())
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.claim_idempotency_key(&tenant, "short", &second, hour).await.unwrap(), None);
    assert_eq!(store.claim_idempotency_key(&tenant, "short", &first, hour).await.unwrap(), Some(second));

    for bad in ["", &"k".repeat(256)] {
        let err = store.claim_idempotency_key(&tenant, bad, &first, hour).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidName { kind: "idempotency key", .. }), "{err}");
    }
}

async fn creating_twice_changes_nothing(store: &dyn Store) {
    let tenant = unique_tenant("create");
    let id = broadcast("b1");
    store.create_broadcast(&tenant, &id, 16, UnixSeconds(1_700_000_000)).await.unwrap();
    store.add_progress(&tenant, &id, "page/0/0", &targeted(5)).await.unwrap();
    store.create_broadcast(&tenant, &id, 32, UnixSeconds(1_800_000_000)).await.unwrap();
    let status = status(store, &tenant, &id).await;
    assert_eq!(status.shards_total, 16);
    assert_eq!(status.created_at, UnixSeconds(1_700_000_000));
    assert_eq!(status.counts, BroadcastCounts { targeted: 5, encrypted: 5, ..Default::default() });
    assert!(status.samples.is_empty());
    assert!(!status.is_complete());
}

async fn progress_counts_once_per_step(store: Arc<dyn Store>) {
    let tenant = unique_tenant("progress");
    let id = broadcast("b-progress");
    store.create_broadcast(&tenant, &id, 2, UnixSeconds(1)).await.unwrap();
    assert!(store.add_progress(&tenant, &id, "page/0/0", &targeted(10)).await.unwrap());
    assert!(!store.add_progress(&tenant, &id, "page/0/0", &targeted(10)).await.unwrap(), "a repeat");
    assert_eq!(status(&*store, &tenant, &id).await.counts.targeted, 10);

    // Eight tasks each apply the same 20 steps at once (a redelivery storm): each step counts once.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, tenant, id) = (Arc::clone(&store), tenant.clone(), id.clone());
            tokio::spawn(async move {
                let mut applied = 0;
                for page in 1..=20u64 {
                    let step = format!("page/1/{page}");
                    applied +=
                        u32::from(store.add_progress(&tenant, &id, &step, &targeted(page)).await.unwrap());
                }
                applied
            })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        applied += task.await.unwrap();
    }
    assert_eq!(applied, 20, "every step applied by exactly one task");
    let status = status(&*store, &tenant, &id).await;
    assert_eq!(status.counts.targeted, 10 + (1..=20).sum::<u64>());
    assert_eq!(status.counts.encrypted, status.counts.targeted);

    // Results and finished shards complete the broadcast.
    let results = BroadcastCounts { accepted: status.counts.targeted, ..Default::default() };
    assert!(store.add_progress(&tenant, &id, "result/0/0", &delta(results, &[])).await.unwrap());
    for shard in 0..2 {
        let done = BroadcastCounts { shards_done: 1, ..Default::default() };
        store.add_progress(&tenant, &id, &format!("shard-done/{shard}"), &delta(done, &[])).await.unwrap();
        store.add_progress(&tenant, &id, &format!("shard-done/{shard}"), &delta(done, &[])).await.unwrap();
    }
    let status = self::status(&*store, &tenant, &id).await;
    assert_eq!(status.counts.shards_done, 2);
    assert!(status.is_complete());

    let err = store.add_progress(&tenant, &id, "", &targeted(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidName { kind: "progress step", .. }), "{err}");
}

async fn failures_count_by_class_and_keep_the_first_distinct_samples(store: &dyn Store) {
    let tenant = unique_tenant("failures");
    let id = broadcast("b-fail");
    store.create_broadcast(&tenant, &id, 1, UnixSeconds(1)).await.unwrap();
    let texts = |from: usize, to: usize| -> Vec<(FailureClass, String)> {
        (from..to).map(|n| sample(FailureClass::Rejected, &format!("body {n}"))).collect()
    };
    let mut first = texts(0, 3);
    first.push(sample(FailureClass::Unauthorized, "BadJwtToken"));
    first.push(sample(FailureClass::Rejected, "a|reason with|bars"));
    let mut counts = rejected(6);
    counts.failures[FailureClass::Unauthorized.index()] = 1;
    assert!(store.add_progress(&tenant, &id, "result/0/0", &delta(counts, &first)).await.unwrap());
    // Repeats of kept samples are not kept twice; past five per class nothing more is kept.
    let mut second = texts(1, 9);
    second.insert(0, sample(FailureClass::Unauthorized, "BadJwtToken"));
    assert!(store.add_progress(&tenant, &id, "result/0/1", &delta(rejected(4), &second)).await.unwrap());
    assert!(!store.add_progress(&tenant, &id, "result/0/1", &delta(rejected(4), &second)).await.unwrap());
    let status = status(store, &tenant, &id).await;
    assert_eq!(status.counts.rejected, 10);
    assert_eq!(status.counts.failures[FailureClass::Rejected.index()], 10);
    assert_eq!(status.counts.failures[FailureClass::Unauthorized.index()], 1);
    let of = |class| -> Vec<&str> {
        status.samples.iter().filter(|(c, _)| *c == class).map(|(_, t)| t.as_str()).collect()
    };
    assert_eq!(of(FailureClass::Unauthorized), ["BadJwtToken"]);
    let mut kept = of(FailureClass::Rejected);
    assert_eq!(kept.len(), MAX_SAMPLES_PER_CLASS);
    kept.sort_unstable();
    assert_eq!(kept, ["a|reason with|bars", "body 0", "body 1", "body 2", "body 3"]);
}

async fn provisional_snapshots_replace_and_their_results_step_removes_them(store: &dyn Store) {
    let tenant = unique_tenant("partial");
    let id = broadcast("b-partial");
    store.create_broadcast(&tenant, &id, 1, UnixSeconds(1)).await.unwrap();
    let so_far = |accepted| BroadcastCounts { targeted: 10, encrypted: 10, accepted, ..Default::default() };
    let (tenant, id) = (&tenant, &id);
    let set = |seq, accepted| {
        let delta = delta(so_far(accepted), &[]);
        async move { store.set_partial(tenant, id, "partial/0/0", "result/0/0", seq, &delta).await.unwrap() }
    };
    assert!(set(3, 3).await);
    assert!(set(7, 7).await);
    // An older snapshot (a redelivery's, out of order) does not replace a newer one.
    assert!(!set(5, 5).await);
    let live = status(store, tenant, id).await;
    assert_eq!((live.counts.targeted, live.counts.accepted), (10, 7));
    assert!(!live.is_complete(), "a snapshot never completes a batch");

    let mut done = so_far(9);
    done.batches_done = 1;
    done.failed = 1;
    let results = ProgressDelta { replaces_partial: Some("partial/0/0".into()), ..delta(done, &[]) };
    assert!(store.add_progress(tenant, id, "result/0/0", &results).await.unwrap());
    let after = status(store, tenant, id).await;
    assert_eq!(
        (after.counts.targeted, after.counts.accepted, after.counts.failed),
        (10, 9, 1),
        "counted once"
    );
    // A snapshot arriving after its batch's results changes nothing.
    assert!(!set(10, 10).await);
    assert_eq!(status(store, tenant, id).await.counts, after.counts);
}

async fn checkpoints_round_trip(store: &dyn Store) {
    let tenant = unique_tenant("checkpoint");
    let id = broadcast("b-ckpt");
    let subs: Vec<_> = (0..400).map(|n| subscription(&tenant, n, &[])).collect();
    store.import(&subs).await.unwrap();
    let shard = ShardId(0);
    let first = store.scan_shard(&tenant, &Audience::Everyone, shard, ScanCursor::START, 10).await.unwrap();
    let mid = first.next.expect("a shard of ~200 takes more than one page of 10");

    assert_eq!(store.load_checkpoint(&tenant, &id, shard).await.unwrap(), None);
    let start = ShardCheckpoint { cursor: Some(ScanCursor::START), next_page: 0 };
    store.save_checkpoint(&tenant, &id, ShardId(1), start).await.unwrap();
    let resume = ShardCheckpoint { cursor: Some(mid), next_page: 1 };
    store.save_checkpoint(&tenant, &id, shard, resume).await.unwrap();
    assert_eq!(store.load_checkpoint(&tenant, &id, ShardId(1)).await.unwrap(), Some(start));
    let loaded = store.load_checkpoint(&tenant, &id, shard).await.unwrap().unwrap();
    assert_eq!(loaded, resume);

    // The loaded cursor resumes the scan where the original one would.
    let resumed =
        store.scan_shard(&tenant, &Audience::Everyone, shard, loaded.cursor.unwrap(), 10).await.unwrap();
    let original = store.scan_shard(&tenant, &Audience::Everyone, shard, mid, 10).await.unwrap();
    assert_eq!(resumed, original);
    assert!(!resumed.subscriptions.is_empty());

    // A stale worker's older checkpoint does not rewind the shard; a later one moves it on.
    store.save_checkpoint(&tenant, &id, shard, start).await.unwrap();
    assert_eq!(store.load_checkpoint(&tenant, &id, shard).await.unwrap(), Some(resume));
    let later = ShardCheckpoint { cursor: Some(original.next.unwrap_or(ScanCursor::START)), next_page: 2 };
    store.save_checkpoint(&tenant, &id, shard, later).await.unwrap();
    assert_eq!(store.load_checkpoint(&tenant, &id, shard).await.unwrap(), Some(later));
    // A finished scan is remembered as finished.
    let finished = ShardCheckpoint { cursor: None, next_page: 3 };
    store.save_checkpoint(&tenant, &id, shard, finished).await.unwrap();
    assert_eq!(store.load_checkpoint(&tenant, &id, shard).await.unwrap(), Some(finished));

    let beyond = ShardId(SHARDS);
    let err = store.save_checkpoint(&tenant, &id, beyond, start).await.unwrap_err();
    assert!(matches!(err, StoreError::ShardOutOfRange { shard: 2, count: 2 }), "{err}");
    let err = store.load_checkpoint(&tenant, &id, beyond).await.unwrap_err();
    assert!(matches!(err, StoreError::ShardOutOfRange { .. }), "{err}");
}

async fn page_steps_carry_their_checkpoint(store: &dyn Store) {
    let tenant = unique_tenant("page");
    let id = broadcast("b-page");
    store.create_broadcast(&tenant, &id, 2, UnixSeconds(1)).await.unwrap();
    let shard = ShardId(1);
    let at = |next_page| ShardCheckpoint { cursor: Some(ScanCursor::START), next_page };
    let page = |step: &'static str, n: u64, shard: ShardId, next_page: u32| {
        let (tenant, id) = (&tenant, &id);
        async move {
            store.add_progress_with_checkpoint(tenant, id, step, &targeted(n), shard, at(next_page)).await
        }
    };

    assert!(page("page/1/0", 10, shard, 1).await.unwrap(), "a new step is applied");
    assert_eq!(store.load_checkpoint(&tenant, &id, shard).await.unwrap(), Some(at(1)));
    // A page redone after a crash: its step counts once, its checkpoint still moves the shard on.
    assert!(!page("page/1/0", 10, shard, 2).await.unwrap());
    assert_eq!(status(store, &tenant, &id).await.counts.targeted, 10);
    assert_eq!(store.load_checkpoint(&tenant, &id, shard).await.unwrap(), Some(at(2)));
    // A stale worker's new step counts, but its older checkpoint does not rewind the shard.
    assert!(page("page/1/1", 5, shard, 1).await.unwrap());
    assert_eq!(status(store, &tenant, &id).await.counts.targeted, 15);
    assert_eq!(store.load_checkpoint(&tenant, &id, shard).await.unwrap(), Some(at(2)));

    let beyond = page("page/9/0", 1, ShardId(SHARDS), 1).await.unwrap_err();
    assert!(matches!(beyond, StoreError::ShardOutOfRange { .. }), "{beyond}");
    let unnamed = page("", 1, shard, 3).await.unwrap_err();
    assert!(matches!(unnamed, StoreError::InvalidName { .. }), "{unnamed}");
    assert_eq!(status(store, &tenant, &id).await.counts.targeted, 15, "refused calls change nothing");
    assert_eq!(store.load_checkpoint(&tenant, &id, shard).await.unwrap(), Some(at(2)));
}

async fn unknown_broadcasts_have_no_status(store: &dyn Store) {
    let tenant = unique_tenant("unknown");
    let id = broadcast("never-created");
    assert_eq!(store.status(&tenant, &id).await.unwrap(), None);
    // Progress that arrives before the broadcast is created is kept, and shows once it is.
    assert!(store.add_progress(&tenant, &id, "page/0/0", &targeted(3)).await.unwrap());
    assert_eq!(store.status(&tenant, &id).await.unwrap(), None);
    store.create_broadcast(&tenant, &id, 1, UnixSeconds(5)).await.unwrap();
    assert_eq!(status(store, &tenant, &id).await.counts.targeted, 3);
}

async fn tenants_are_isolated(store: &dyn Store) {
    let (owner, other) = (unique_tenant("owner"), unique_tenant("other"));
    let id = broadcast("shared-name");
    let hour = Duration::from_secs(3600);
    store.create_broadcast(&owner, &id, 1, UnixSeconds(1)).await.unwrap();
    assert!(store.add_progress(&owner, &id, "page/0/0", &targeted(7)).await.unwrap());
    let checkpoint = ShardCheckpoint { cursor: Some(ScanCursor::START), next_page: 3 };
    store.save_checkpoint(&owner, &id, ShardId(0), checkpoint).await.unwrap();
    assert_eq!(store.claim_idempotency_key(&owner, "key", &id, hour).await.unwrap(), None);

    assert_eq!(store.status(&other, &id).await.unwrap(), None);
    assert_eq!(store.load_checkpoint(&other, &id, ShardId(0)).await.unwrap(), None);
    assert_eq!(store.claim_idempotency_key(&other, "key", &broadcast("mine"), hour).await.unwrap(), None);
    // The other tenant's broadcast of the same name has its own steps and counts.
    store.create_broadcast(&other, &id, 4, UnixSeconds(2)).await.unwrap();
    assert!(store.add_progress(&other, &id, "page/0/0", &targeted(1)).await.unwrap());
    assert_eq!(status(store, &other, &id).await.counts.targeted, 1);
    assert_eq!(status(store, &owner, &id).await.counts.targeted, 7);
    assert_eq!(status(store, &owner, &id).await.shards_total, 1);
}

macro_rules! ledger_conformance {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test]
            async fn idempotency_keys_claim_conflict_and_expire() {
                super::idempotency_keys_claim_conflict_and_expire(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn creating_twice_changes_nothing() {
                super::creating_twice_changes_nothing(&*super::$backend().await.store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn progress_counts_once_per_step() {
                let fixture = super::$backend().await;
                super::progress_counts_once_per_step(std::sync::Arc::clone(&fixture.store)).await;
            }

            #[tokio::test]
            async fn failures_count_by_class_and_keep_the_first_distinct_samples() {
                let fixture = super::$backend().await;
                super::failures_count_by_class_and_keep_the_first_distinct_samples(&*fixture.store).await;
            }

            #[tokio::test]
            async fn provisional_snapshots_replace_and_their_results_step_removes_them() {
                let fixture = super::$backend().await;
                super::provisional_snapshots_replace_and_their_results_step_removes_them(&*fixture.store)
                    .await;
            }

            #[tokio::test]
            async fn checkpoints_round_trip() {
                super::checkpoints_round_trip(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn page_steps_carry_their_checkpoint() {
                super::page_steps_carry_their_checkpoint(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn unknown_broadcasts_have_no_status() {
                super::unknown_broadcasts_have_no_status(&*super::$backend().await.store).await;
            }

            #[tokio::test]
            async fn tenants_are_isolated() {
                super::tenants_are_isolated(&*super::$backend().await.store).await;
            }
        }
    };
}

ledger_conformance!(embedded);
ledger_conformance!(redis_single);
ledger_conformance!(redis_cluster);

#[tokio::test]
async fn a_reopened_embedded_ledger_has_lost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let shards = ShardCount::new(SHARDS).unwrap();
    let tenant = unique_tenant("reopen");
    let id = broadcast("durable");
    let subs: Vec<_> = (0..50).map(|n| subscription(&tenant, n, &[])).collect();
    let checkpoint = {
        let store = EmbeddedStore::open(dir.path(), shards).unwrap();
        store.import(&subs).await.unwrap();
        let page =
            store.scan_shard(&tenant, &Audience::Everyone, ShardId(1), ScanCursor::START, 5).await.unwrap();
        let checkpoint = ShardCheckpoint { cursor: page.next, next_page: 1 };
        store.claim_idempotency_key(&tenant, "k", &id, Duration::from_secs(3600)).await.unwrap();
        store.create_broadcast(&tenant, &id, 2, UnixSeconds(9)).await.unwrap();
        let samples = [sample(FailureClass::Rejected, "x")];
        store.add_progress(&tenant, &id, "result/0/0", &delta(rejected(2), &samples)).await.unwrap();
        store.save_checkpoint(&tenant, &id, ShardId(1), checkpoint).await.unwrap();
        checkpoint
    };
    let store = EmbeddedStore::open(dir.path(), shards).unwrap();
    let status = status(&store, &tenant, &id).await;
    assert_eq!((status.shards_total, status.created_at, status.counts.rejected), (2, UnixSeconds(9), 2));
    assert_eq!(status.samples, vec![sample(FailureClass::Rejected, "x")]);
    assert_eq!(status.counts.failures[FailureClass::Rejected.index()], 2);
    assert_eq!(store.load_checkpoint(&tenant, &id, ShardId(1)).await.unwrap(), Some(checkpoint));
    // The step and the claim are remembered too.
    assert!(!store.add_progress(&tenant, &id, "result/0/0", &targeted(1)).await.unwrap());
    let hour = Duration::from_secs(3600);
    assert_eq!(store.claim_idempotency_key(&tenant, "k", &broadcast("again"), hour).await.unwrap(), Some(id));
}

#[tokio::test]
async fn redis_ledger_keys_expire_together() {
    let store = redis_single().await.store;
    let tenant = unique_tenant("expiry");
    let id = broadcast("b-exp");
    store.create_broadcast(&tenant, &id, 1, UnixSeconds(1)).await.unwrap();
    let samples = [sample(FailureClass::Rejected, "x")];
    store.add_progress(&tenant, &id, "result/0/0", &delta(rejected(1), &samples)).await.unwrap();
    let checkpoint = ShardCheckpoint { cursor: Some(ScanCursor::START), next_page: 1 };
    store.save_checkpoint(&tenant, &id, ShardId(0), checkpoint).await.unwrap();

    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let retention = i64::try_from(BROADCAST_RETENTION.as_millis()).unwrap();
    for kind in ["meta", "counts", "rej", "steps", "ckpt"] {
        let key = format!("pf:{{{tenant}|b:{id}}}:{kind}");
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await.unwrap();
        assert!(ttl > retention - 60_000 && ttl <= retention, "{key}: TTL {ttl} ms");
    }
}
