//! The whole pipeline in one process, as `pushfan standalone` runs it: the embedded bus and
//! store, the real gateway, and the simulated push service over HTTP/2 with TLS verifying every
//! VAPID token and decrypting every message. Most tests run once per hand-off (`direct`: the
//! encryptor delivers its own pages; `bus`: through the deliverer loop).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pushfan_bus::messages::{self as bus, target, PublishRequest};
use pushfan_bus::{Bus, EmbeddedBus, EmbeddedConfig, MessageContext};
use pushfan_gateway::{Gateway, GatewayConfig, RetryPolicy};
use pushfan_pipeline::{run_roles, HandOff, Keyring, Pipeline, PipelineConfig, Role};
use pushfan_pushsim::{
    Burst, FaultPlan, Observer, Population, PushSim, PushSimConfig, PushSimHandle, Selection, Status,
};
use pushfan_store::ledger::{BroadcastId, BroadcastLedger, BroadcastStatus};
use pushfan_store::{
    Audience, ContentEncodings, DeliveryOutcome, EmbeddedStore, ScanCursor, ScanPage, ScanStamp, ShardCount,
    ShardId, StoreError, Subscription, SubscriptionId, SubscriptionStore, TenantId, Topic, UnixSeconds,
    VapidKeyId,
};
use pushfan_webpush::vapid::{Subject, TokenCache, VapidKey, VapidSigner};
use pushfan_webpush::{EndpointPolicy, FailureClass, PushSubscription};
use tokio_util::sync::CancellationToken;

const PAYLOAD: &[u8] = b"{\"title\":\"standalone\"}";

/// Runs the test `$name(hand_off)` as `$name::direct` and `$name::bus`.
macro_rules! for_each_hand_off {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn direct() {
                super::$name(pushfan_pipeline::HandOff::Direct).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bus() {
                super::$name(pushfan_pipeline::HandOff::Bus).await;
            }
        }
    };
}
const TENANT: &str = "acme";
const SEED: u64 = 7;

struct Standalone {
    /// The push services; subscriber `i` lives on `sims[i % sims.len()]`.
    sims: Vec<PushSimHandle>,
    store: Arc<EmbeddedStore>,
    /// The failures still to come of the store's writes.
    store_faults: Arc<StoreFaults>,
    bus: EmbeddedBus,
    /// What the roles run on, for [`Standalone::restart`].
    pipeline: Pipeline<EmbeddedBus>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn sim(count: u64, faults: FaultPlan, observer: Option<Arc<dyn Observer>>) -> PushSimHandle {
    let mut config = PushSimConfig::new(Population::new(SEED, count)).with_tls().unwrap();
    config.expected_payload = Some(Bytes::from_static(PAYLOAD));
    config.faults = faults;
    config.observer = observer;
    PushSim::start(config).await.unwrap()
}

async fn start(count: u64, faults: FaultPlan, hand_off: HandOff) -> Standalone {
    start_failing(count, faults, hand_off, Arc::default()).await
}

/// [`start`], on a store whose writes fail as `store_faults` says.
async fn start_failing(
    count: u64,
    faults: FaultPlan,
    hand_off: HandOff,
    store_faults: Arc<StoreFaults>,
) -> Standalone {
    let sims = vec![sim(count, faults, None).await];
    let config = PipelineConfig { page_size: 64, hand_off, ..loopback(HandOff::default()) };
    start_with(sims, count, config, &[1], store_faults).await
}

/// Runs every role on subscribers `0..count` spread over `sims`, every subscription registered
/// under VAPID key 1, with a keyring holding `keys`.
async fn start_on(sims: Vec<PushSimHandle>, count: u64, config: PipelineConfig, keys: &[u32]) -> Standalone {
    start_with(sims, count, config, keys, Arc::default()).await
}

/// How many of the pipeline's store writes fail before they succeed.
#[derive(Debug, Default)]
struct StoreFaults {
    removes: AtomicU32,
    outcomes: AtomicU32,
}

impl StoreFaults {
    /// Fails this call while `left` counts failures still to come, counting one down.
    fn fails(left: &AtomicU32) -> Result<(), StoreError> {
        match left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Err(StoreError::UnexpectedReply("an injected fault".into())),
            Err(_) => Ok(()),
        }
    }
}

/// The embedded store, with [`StoreFaults`] in front of the deliverer's writes: what a Redis
/// failover looks like to the pipeline.
#[derive(Debug)]
struct FailingStore {
    store: Arc<EmbeddedStore>,
    faults: Arc<StoreFaults>,
}

#[async_trait::async_trait]
impl SubscriptionStore for FailingStore {
    fn shard_count(&self) -> ShardCount {
        self.store.shard_count()
    }

    async fn import(&self, subscriptions: &[Subscription]) -> Result<usize, StoreError> {
        self.store.import(subscriptions).await
    }

    async fn get(&self, tenant: &TenantId, id: SubscriptionId) -> Result<Option<Subscription>, StoreError> {
        self.store.get(tenant, id).await
    }

    async fn remove(&self, tenant: &TenantId, ids: &[SubscriptionId]) -> Result<usize, StoreError> {
        StoreFaults::fails(&self.faults.removes)?;
        self.store.remove(tenant, ids).await
    }

    async fn tag(
        &self,
        tenant: &TenantId,
        ids: &[SubscriptionId],
        topic: &Topic,
    ) -> Result<usize, StoreError> {
        self.store.tag(tenant, ids, topic).await
    }

    async fn untag(
        &self,
        tenant: &TenantId,
        ids: &[SubscriptionId],
        topic: &Topic,
    ) -> Result<usize, StoreError> {
        self.store.untag(tenant, ids, topic).await
    }

    async fn record_outcomes(
        &self,
        tenant: &TenantId,
        outcomes: &[DeliveryOutcome],
        at: UnixSeconds,
        scanned: Option<ScanStamp>,
    ) -> Result<usize, StoreError> {
        StoreFaults::fails(&self.faults.outcomes)?;
        self.store.record_outcomes(tenant, outcomes, at, scanned).await
    }

    async fn scan_shard(
        &self,
        tenant: &TenantId,
        audience: &Audience,
        shard: ShardId,
        cursor: ScanCursor,
        page_size: usize,
    ) -> Result<ScanPage, StoreError> {
        self.store.scan_shard(tenant, audience, shard, cursor, page_size).await
    }
}

async fn start_with(
    sims: Vec<PushSimHandle>,
    count: u64,
    config: PipelineConfig,
    keys: &[u32],
    store_faults: Arc<StoreFaults>,
) -> Standalone {
    let layout: Vec<usize> = (0..sims.len()).collect();
    start_laid_out(sims, &layout, count, config, keys, store_faults, RetryPolicy::default()).await
}

/// [`start_with`], subscriber `i` living on `sims[layout[i % layout.len()]]`, the gateway
/// retrying as `retry` says (with fast backoffs).
async fn start_laid_out(
    sims: Vec<PushSimHandle>,
    layout: &[usize],
    count: u64,
    config: PipelineConfig,
    keys: &[u32],
    store_faults: Arc<StoreFaults>,
    retry: RetryPolicy,
) -> Standalone {
    let bases: Vec<&str> = layout.iter().map(|&sim| sims[sim].base_url()).collect();
    let population = Population::new(SEED, count).with_origins(&bases).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), ShardCount::new(8).unwrap()).unwrap());
    let tenant = TenantId::new(TENANT).unwrap();
    let subscriptions: Vec<Subscription> = population
        .subscribers(0..count)
        .unwrap()
        .into_iter()
        .map(|s| {
            let sub = PushSubscription {
                endpoint: s.endpoint,
                keys: s.keys.subscription_keys().clone(),
                expiration_time: None,
            };
            let topics = if s.index % 2 == 0 { vec![Topic::new("even").unwrap()] } else { Vec::new() };
            Subscription::new(
                tenant.clone(),
                sub,
                ContentEncodings::AES128GCM,
                VapidKeyId(1),
                topics,
                UnixSeconds(1),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(store.import(&subscriptions).await.unwrap(), count as usize);

    let mut keyring = Keyring::default();
    for &key in keys {
        let signer =
            VapidSigner::new(VapidKey::generate(), Subject::parse("mailto:ops@example.com").unwrap());
        keyring.insert(VapidKeyId(key), TokenCache::new(signer));
    }
    let bus = EmbeddedBus::new(EmbeddedConfig::default());
    let pipeline = Pipeline {
        bus: bus.clone(),
        store: Arc::new(FailingStore { store: Arc::clone(&store), faults: Arc::clone(&store_faults) }),
        ledger: Arc::clone(&store) as Arc<dyn BroadcastLedger>,
        keyring: Arc::new(keyring),
        gateway: gateway_retrying(&sims, retry),
        config,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(run_roles(pipeline.clone(), &Role::ALL, shutdown.clone()));
    Standalone { sims, store, store_faults, bus, pipeline, shutdown, _dir: dir }
}

/// A gateway trusting `sims`, retrying fast.
fn gateway(sims: &[PushSimHandle]) -> Gateway {
    gateway_retrying(sims, RetryPolicy::default())
}

/// A gateway trusting `sims`, retrying as `retry` says but with fast backoffs.
fn gateway_retrying(sims: &[PushSimHandle], retry: RetryPolicy) -> Gateway {
    Gateway::new(GatewayConfig {
        extra_root_certs: sims.iter().filter_map(|sim| Some(sim.tls()?.ca_der().to_vec())).collect(),
        retry: RetryPolicy { base_delay: Duration::from_millis(20), ..retry },
        egress: Arc::new(pushfan_webpush::EgressPolicy::allow_loopback()),
        ..GatewayConfig::default()
    })
    .unwrap()
}

impl Standalone {
    /// Stops every role mid-work, as a process that dies would, and starts them again on the
    /// same bus and store with a new gateway (no connection, no pause carried over). On the
    /// embedded bus the messages the stopped roles had not acked come back.
    fn restart(&mut self) {
        self.shutdown.cancel();
        self.shutdown = CancellationToken::new();
        let pipeline = Pipeline { gateway: gateway(&self.sims), ..self.pipeline.clone() };
        tokio::spawn(run_roles(pipeline, &Role::ALL, self.shutdown.clone()));
    }

    async fn publish(&self, id: &str, target: target::Kind) -> BroadcastId {
        self.publish_signed(id, target, "").await
    }

    /// A publish naming the VAPID key to sign with (empty: each subscription's own).
    async fn publish_signed(&self, id: &str, target: target::Kind, vapid_key_id: &str) -> BroadcastId {
        let request = PublishRequest {
            broadcast_id: id.into(),
            tenant: TENANT.into(),
            target: Some(bus::Target { kind: Some(target) }),
            payload: Bytes::from_static(PAYLOAD),
            options: Some(bus::PushOptions {
                ttl_seconds: 3600,
                urgency: bus::Urgency::High as i32,
                topic: String::new(),
            }),
            vapid_key_id: vapid_key_id.into(),
            idempotency_key: String::new(),
            created_at_ms: SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64,
        };
        self.bus.publish(&request, &MessageContext::default()).await.unwrap();
        BroadcastId::new(id).unwrap()
    }

    async fn finished(&self, broadcast: &BroadcastId) -> BroadcastStatus {
        let tenant = TenantId::new(TENANT).unwrap();
        let ledger: &dyn BroadcastLedger = &*self.store;
        // Up to two minutes (the throttling tests wait out 3 s pauses; on a loaded machine the
        // first one took 28 s before parked batches went out together): a bound on waiting, not
        // a timing check.
        for _ in 0..2400 {
            if let Some(status) = ledger.status(&tenant, broadcast).await.unwrap() {
                if status.is_complete() {
                    return status;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "broadcast {broadcast} did not finish: {:?}",
            ledger.status(&tenant, broadcast).await.unwrap()
        );
    }

    async fn stored(&self) -> usize {
        let tenant = TenantId::new(TENANT).unwrap();
        let mut total = 0;
        for shard in self.store.shard_count().all() {
            let mut cursor = ScanCursor::START;
            loop {
                let page =
                    self.store.scan_shard(&tenant, &Audience::Everyone, shard, cursor, 500).await.unwrap();
                total += page.subscriptions.len();
                match page.next {
                    Some(next) => cursor = next,
                    None => break,
                }
            }
        }
        total
    }
}

for_each_hand_off!(a_broadcast_reaches_everyone_exactly_once_and_the_gone_are_pruned);
async fn a_broadcast_reaches_everyone_exactly_once_and_the_gone_are_pruned(hand_off: HandOff) {
    let gone = [3u64, 17, 500];
    let faults = FaultPlan {
        gone: Selection::indices(gone),
        throttle: Burst { selection: Selection::indices([5, 6]), first: 1 },
        retry_after_secs: 1,
        fail: Burst { selection: Selection::indices([7]), first: 1 },
        ..FaultPlan::default()
    };
    let app = start(1000, faults, hand_off).await;
    let broadcast = app.publish("everyone-1", target::Kind::Everyone(bus::Everyone {})).await;
    let status = app.finished(&broadcast).await;
    let c = status.counts;
    assert_eq!((c.targeted, c.encrypted, c.encrypt_failed), (1000, 1000, 0));
    assert_eq!((c.accepted, c.gone, c.pruned), (997, 3, 3));
    assert_eq!((c.rejected, c.failed, c.expired), (0, 0, 0));
    assert_eq!(c.shards_done, 8);
    let stats = app.sims[0].stats();
    assert_eq!(stats.status(201), 997);
    assert_eq!(stats.received.exactly_one, 997);
    assert_eq!((stats.vapid_failures, stats.decrypt_failures, stats.payload_mismatches), (0, 0, 0));
    assert_eq!((stats.status(429), stats.status(500)), (2, 1));
    assert_eq!(app.stored().await, 997, "the gone subscriptions were deleted");

    // A topic and a list reach exactly their members.
    let topic = app.publish("even-1", target::Kind::Topic("even".into())).await;
    let status = app.finished(&topic).await;
    assert_eq!(
        (status.counts.targeted, status.counts.accepted),
        (499, 499),
        "500 of the evens minus gone #500"
    );
    let ids: Vec<String> = [0u64, 1, 2]
        .iter()
        .map(|&i| SubscriptionId::for_endpoint(&app.sims[0].population().endpoint(i).unwrap()).to_string())
        .collect();
    let list = app.publish("list-1", target::Kind::Subscriptions(bus::SubscriptionIds { ids })).await;
    let status = app.finished(&list).await;
    assert_eq!((status.counts.targeted, status.counts.accepted), (3, 3));
    let received = app.sims[0].live_stats().receive_counts();
    assert_eq!(received[0], 3, "everyone, even, list");
    assert_eq!(received[1], 2, "everyone, list");

    // Shard jobs delivered again after their work was done (a worker that died before its
    // commit) send nothing: the checkpoint says every page was handed on.
    let created_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    for shard_index in 0..8 {
        let job = bus::ShardJob {
            broadcast_id: "everyone-1".into(),
            tenant: TENANT.into(),
            target: Some(bus::Target { kind: Some(target::Kind::Everyone(bus::Everyone {})) }),
            shard_index,
            shard_count: 8,
            payload: Bytes::from_static(PAYLOAD),
            options: Some(bus::PushOptions { ttl_seconds: 3600, ..bus::PushOptions::default() }),
            vapid_key_id: "1".into(),
            created_at_ms,
            expires_at_ms: created_at_ms + 3_600_000,
        };
        app.bus.publish(&job, &MessageContext::default()).await.unwrap();
    }
    // A later broadcast's jobs queue behind the redelivered ones.
    let ids = vec![SubscriptionId::for_endpoint(&app.sims[0].population().endpoint(1).unwrap()).to_string()];
    let after = app.publish("list-2", target::Kind::Subscriptions(bus::SubscriptionIds { ids })).await;
    app.finished(&after).await;
    let received = app.sims[0].live_stats().receive_counts();
    assert_eq!(received[1], 3, "everyone, list, list-2");
    assert_eq!(received.iter().map(|&n| u64::from(n)).sum::<u64>(), 997 + 499 + 3 + 1, "nothing sent twice");
    assert_eq!(app.finished(&broadcast).await.counts, c, "the counts stay as they were");
    app.shutdown.cancel();
}

for_each_hand_off!(expired_subscriptions_get_nothing_and_are_deleted);
async fn expired_subscriptions_get_nothing_and_are_deleted(hand_off: HandOff) {
    let app = start(1000, FaultPlan::default(), hand_off).await;
    let tenant = TenantId::new(TENANT).unwrap();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let id = |i: u64| SubscriptionId::for_endpoint(&app.sims[0].population().endpoint(i).unwrap());
    // Three whose push service expired them a second ago, one that expires in an hour.
    let mut changed = Vec::new();
    for (i, expires) in
        [(10, now_ms - 1_000), (11, now_ms - 1_000), (12, now_ms - 1_000), (13, now_ms + 3_600_000)]
    {
        let stored = app.store.get(&tenant, id(i)).await.unwrap().expect("imported");
        changed.push(Subscription { expiration_time_ms: Some(expires), ..stored });
    }
    app.store.import(&changed).await.unwrap();

    // A page holding only an expired subscription sends nothing and still closes its counts.
    let list = app
        .publish(
            "list-expired",
            target::Kind::Subscriptions(bus::SubscriptionIds { ids: vec![id(10).to_string()] }),
        )
        .await;
    let c = app.finished(&list).await.counts;
    assert_eq!((c.targeted, c.encrypted, c.accepted, c.gone, c.pruned), (1, 0, 0, 1, 1));

    let broadcast = app.publish("everyone-expiring", target::Kind::Everyone(bus::Everyone {})).await;
    let c = app.finished(&broadcast).await.counts;
    assert_eq!((c.targeted, c.encrypted, c.accepted), (999, 997, 997));
    assert_eq!((c.gone, c.pruned, c.rejected, c.failed, c.expired), (2, 2, 0, 0, 0));
    let received = app.sims[0].live_stats().receive_counts();
    assert_eq!(&received[10..14], [0, 0, 0, 1], "nothing reached the expired, the unexpired got it");
    assert_eq!(received.iter().map(|&n| u64::from(n)).sum::<u64>(), 997);
    assert_eq!(app.stored().await, 997, "the expired subscriptions were deleted");
    app.shutdown.cancel();
}

for_each_hand_off!(failed_store_writes_after_delivery_are_retried_without_sending_again);
async fn failed_store_writes_after_delivery_are_retried_without_sending_again(hand_off: HandOff) {
    let gone = [3u64, 17, 500];
    let faults = FaultPlan { gone: Selection::indices(gone), ..FaultPlan::default() };
    let store_faults = StoreFaults { removes: AtomicU32::new(2), outcomes: AtomicU32::new(5) };
    let app = start_failing(1000, faults, hand_off, Arc::new(store_faults)).await;
    let broadcast = app.publish("everyone-1", target::Kind::Everyone(bus::Everyone {})).await;
    let c = app.finished(&broadcast).await.counts;
    assert_eq!((c.targeted, c.accepted, c.gone, c.pruned), (1000, 997, 3, 3));
    assert_eq!((c.rejected, c.failed, c.batches_done), (0, 0, c.batches_sent));
    let stats = app.sims[0].stats();
    assert_eq!(stats.status(201), 997, "no push went out twice");
    assert_eq!(stats.received.exactly_one, 997);
    assert_eq!(stats.status(410), 3);
    assert_eq!(app.stored().await, 997, "the gone were deleted once the store came back");
    let left = (&app.store_faults.removes, &app.store_faults.outcomes);
    assert_eq!((left.0.load(Ordering::SeqCst), left.1.load(Ordering::SeqCst)), (0, 0), "every fault was met");
    app.shutdown.cancel();
}

/// Every answer of both push services in the order they were given: (origin, subscriber, status).
#[derive(Debug)]
struct Answers {
    origin: usize,
    log: tokio::sync::mpsc::UnboundedSender<(usize, u64, Status)>,
}

impl Observer for Answers {
    fn answered(&self, index: Option<u64>, status: Status, _topic: Option<&str>) {
        let index = index.expect("pushfan only sends to population endpoints");
        self.log.send((self.origin, index, status)).expect("the test holds the receiver");
    }
}

/// The throttling tests: half of `THROTTLING_COUNT` subscribers at each of two origins.
const THROTTLING_COUNT: u64 = 800;
const THROTTLED: usize = 0;
const HEALTHY: usize = 1;

/// Two push services, `THROTTLED` answering each subscriber's first try 429 with
/// `Retry-After: retry_after_secs`, `HEALTHY` never; both log every answer in the order given.
async fn throttling_sims(
    retry_after_secs: u32,
) -> (Vec<PushSimHandle>, tokio::sync::mpsc::UnboundedReceiver<(usize, u64, Status)>) {
    let (log, answers) = tokio::sync::mpsc::unbounded_channel();
    let observer = |origin| Some(Arc::new(Answers { origin, log: log.clone() }) as Arc<dyn Observer>);
    let throttle = FaultPlan {
        throttle: Burst { selection: Selection::fraction(1.0, 0), first: 1 },
        // Every pause holds the origin's untried deliveries too, and their first tries are
        // answered 429 again: the origin needs a few pauses, so they are kept short.
        retry_after_secs,
        ..FaultPlan::default()
    };
    let sims = vec![
        sim(THROTTLING_COUNT, throttle, observer(THROTTLED)).await,
        sim(THROTTLING_COUNT, FaultPlan::default(), observer(HEALTHY)).await,
    ];
    (sims, answers)
}

/// Everything was delivered exactly once and counted, the throttled origin answered each of its
/// subscribers 429 once, and (by the order of answers) every healthy-origin push was answered
/// before the throttled origin's first retry.
fn only_the_throttled_origin_waited(
    app: &Standalone,
    status: &BroadcastStatus,
    mut answers: tokio::sync::mpsc::UnboundedReceiver<(usize, u64, Status)>,
) {
    const COUNT: u64 = THROTTLING_COUNT;
    let c = &status.counts;
    assert_eq!((c.targeted, c.encrypted, c.handed_on, c.accepted), (COUNT, COUNT, COUNT, COUNT));
    assert_eq!((c.gone, c.rejected, c.failed, c.expired), (0, 0, 0, 0));
    assert_eq!(c.shards_done, 8);
    assert_eq!(c.batches_done, c.batches_sent);
    let (throttled, healthy) = (app.sims[THROTTLED].stats(), app.sims[HEALTHY].stats());
    assert_eq!((throttled.status(429), throttled.status(201)), (COUNT / 2, COUNT / 2));
    assert_eq!((healthy.status(429), healthy.status(201)), (0, COUNT / 2));
    for stats in [&throttled, &healthy] {
        assert_eq!(stats.received.exactly_one, COUNT / 2);
        assert_eq!(stats.received.more_than_one, 0);
        assert_eq!((stats.vapid_failures, stats.decrypt_failures, stats.payload_mismatches), (0, 0, 0));
    }

    app.shutdown.cancel();
    // Every answer was logged before it was sent, so before the ledger could count it.
    let mut order = Vec::new();
    while let Ok(answer) = answers.try_recv() {
        order.push(answer);
    }
    assert_eq!(order.len() as u64, COUNT + COUNT / 2, "every answer, the 429s included");
    let first_retry = order
        .iter()
        .position(|&(origin, _, status)| origin == THROTTLED && status == Status::Created)
        .expect("the throttled origin took its retries");
    let healthy_late = order[first_retry..].iter().filter(|&&(origin, _, _)| origin == HEALTHY).count();
    assert_eq!(
        healthy_late,
        0,
        "{healthy_late} of {} healthy-origin pushes were answered only after the throttled origin's first retry",
        COUNT / 2
    );
}

for_each_hand_off!(a_throttling_origin_holds_back_only_its_own_deliveries);
/// Issue 4: a 429 slows only the origin that sent it. Every subscriber of one origin is told to
/// come back after `Retry-After`; batches hold subscribers of both origins and there are more of
/// them than `concurrent_batches`. The healthy origin must get all its pushes before the
/// throttled one is tried again: a batch waiting out the pause gives its place to the next.
async fn a_throttling_origin_holds_back_only_its_own_deliveries(hand_off: HandOff) {
    let (sims, answers) = throttling_sims(3).await;
    let config =
        PipelineConfig { page_size: 64, concurrent_batches: 4, hand_off, ..loopback(HandOff::default()) };
    let places = config.concurrent_batches as u64;
    let app = start_on(sims, THROTTLING_COUNT, config, &[1]).await;
    let broadcast = app.publish("throttled-1", target::Kind::Everyone(bus::Everyone {})).await;
    let status = app.finished(&broadcast).await;

    assert!(
        status.counts.batches_sent > 2 * places,
        "{} batches, {places} places",
        status.counts.batches_sent
    );
    only_the_throttled_origin_waited(&app, &status, answers);
}

for_each_hand_off!(a_throttling_origin_on_every_page_holds_back_only_its_own_deliveries);
/// Issue 4, with 429s on every page: the throttled origin's subscribers are spread over far more
/// pages than two whole batches, and parking may hold only what two whole batches could
/// (`parked_bytes`). Parked batches keep just their waiting deliveries, so every page fits and
/// the healthy origin still gets all its pushes before the throttled one is tried again.
async fn a_throttling_origin_on_every_page_holds_back_only_its_own_deliveries(hand_off: HandOff) {
    let (sims, answers) = throttling_sims(3).await;
    // Pages of 4: about 200 batches, most with deliveries to both origins.
    let config = PipelineConfig {
        page_size: 4,
        concurrent_batches: 2,
        // Two whole Kafka-sized batches' worth (768 KiB each).
        parked_bytes: 2 * 768 * 1024,
        hand_off,
        ..loopback(HandOff::default())
    };
    let app = start_on(sims, THROTTLING_COUNT, config, &[1]).await;
    let broadcast = app.publish("throttled-everywhere", target::Kind::Everyone(bus::Everyone {})).await;
    let status = app.finished(&broadcast).await;

    assert!(status.counts.batches_sent >= THROTTLING_COUNT / 4, "{} batches", status.counts.batches_sent);
    only_the_throttled_origin_waited(&app, &status, answers);
}

for_each_hand_off!(a_publish_signs_with_the_vapid_key_it_names);
/// `PublishRequest.vapid_key_id` names the key every push is signed with, whatever key the
/// subscriptions were registered under. Here the keyring holds key 2 only: signed with each
/// subscription's own key (1), nothing can go out; signed with key 2, everything does.
async fn a_publish_signs_with_the_vapid_key_it_names(hand_off: HandOff) {
    const COUNT: u64 = 100;
    let sims = vec![sim(COUNT, FaultPlan::default(), None).await];
    let config = PipelineConfig { page_size: 64, hand_off, ..loopback(HandOff::default()) };
    let app = start_on(sims, COUNT, config, &[2]).await;
    let everyone = || target::Kind::Everyone(bus::Everyone {});

    let own_keys = app.finished(&app.publish_signed("own-keys", everyone(), "").await).await;
    assert_eq!((own_keys.counts.accepted, own_keys.counts.rejected), (0, COUNT), "{own_keys:?}");
    assert_eq!(own_keys.counts.failures[FailureClass::Unauthorized.index()], COUNT, "{own_keys:?}");
    assert!(own_keys.samples[0].1.contains("unknown VAPID key id \"1\""), "{own_keys:?}");

    let named = app.finished(&app.publish_signed("key-2", everyone(), "2").await).await;
    assert_eq!((named.counts.accepted, named.counts.rejected), (COUNT, 0), "{named:?}");
    assert_eq!(app.sims[0].stats().received.exactly_one, COUNT);
    app.shutdown.cancel();
}

/// Direct hand-off: a page parked on a paused push service holds back its shard's checkpoint, not
/// the job, and a process that dies meanwhile leaves no one out. One page per subscriber; one
/// subscriber of the throttled origin is answered 429 with a minute's `Retry-After`, so that
/// origin's pages park while the healthy origin's, behind them, are all delivered. Then the
/// process "dies" and starts again with a gateway that knows no pause: the shard jobs resume at
/// the checkpoint, before the first parked page, so the parked pages are redone (with the
/// delivered pages after them, sent twice, as at-least-once allows) and every count closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_dies_while_pages_are_parked_redoes_them() {
    const COUNT: u64 = THROTTLING_COUNT;
    let throttle = FaultPlan {
        throttle: Burst { selection: Selection::indices([0]), first: 1 },
        retry_after_secs: 60,
        ..FaultPlan::default()
    };
    let sims = vec![sim(COUNT, throttle, None).await, sim(COUNT, FaultPlan::default(), None).await];
    let config = PipelineConfig { page_size: 1, hand_off: HandOff::Direct, ..loopback(HandOff::default()) };
    let mut app = start_on(sims, COUNT, config, &[1]).await;
    let broadcast = app.publish("parked", target::Kind::Everyone(bus::Everyone {})).await;

    // Up to a minute: a bound on waiting, not a timing check.
    for _ in 0..1200 {
        if app.sims[HEALTHY].stats().status(201) == COUNT / 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (throttled, healthy) = (app.sims[THROTTLED].stats(), app.sims[HEALTHY].stats());
    assert_eq!(healthy.status(201), COUNT / 2, "the pages behind the parked ones went out: {healthy:?}");
    assert_eq!(throttled.status(429), 1, "{throttled:?}");
    assert!(throttled.status(201) < COUNT / 2, "the throttled origin waits: {throttled:?}");
    let tenant = TenantId::new(TENANT).unwrap();
    let ledger: &dyn BroadcastLedger = &*app.store;
    let before = ledger.status(&tenant, &broadcast).await.unwrap().expect("planned");
    assert!(!before.is_complete() && before.counts.shards_done < 8, "{before:?}");

    app.restart();
    let status = app.finished(&broadcast).await;
    let c = &status.counts;
    assert_eq!((c.targeted, c.encrypted, c.handed_on, c.accepted), (COUNT, COUNT, COUNT, COUNT));
    assert_eq!((c.gone, c.rejected, c.failed, c.expired), (0, 0, 0, 0));
    assert_eq!((c.shards_done, c.batches_done), (8, c.batches_sent));
    let (throttled, healthy) = (app.sims[THROTTLED].stats(), app.sims[HEALTHY].stats());
    for stats in [&throttled, &healthy] {
        let reached = stats.received.exactly_one + stats.received.more_than_one;
        assert_eq!(reached, COUNT / 2, "each of its subscribers got the push: {stats:?}");
        assert_eq!((stats.vapid_failures, stats.decrypt_failures, stats.payload_mismatches), (0, 0, 0));
    }
    assert!(
        healthy.received.more_than_one > 0,
        "pages delivered behind a parked page are redone: the checkpoint had not passed them: {healthy:?}"
    );
    app.shutdown.cancel();
}

/// A pipeline configuration for the simulated push services on loopback.
fn loopback(hand_off: HandOff) -> PipelineConfig {
    PipelineConfig {
        hand_off,
        endpoint_policy: EndpointPolicy::allow_http_loopback(),
        ..PipelineConfig::default()
    }
}

for_each_hand_off!(random_reason_bodies_keep_the_broadcast_answer_small);
/// Issue 17: a push service answering every push 400 with a random body (a distinct reason per
/// subscriber) once made one `GetBroadcast` answer megabytes long, a ledger key per reason.
/// Failures are counted by class with a few short samples, so the answer stays small and the
/// count exact.
async fn random_reason_bodies_keep_the_broadcast_answer_small(hand_off: HandOff) {
    const COUNT: u64 = 5_000;
    let faults = FaultPlan { garbled: Selection::fraction(1.0, 0), ..FaultPlan::default() };
    let sims = vec![sim(COUNT, faults, None).await];
    let app = start_on(sims, COUNT, loopback(hand_off), &[1]).await;
    let broadcast = app.publish("garbled", target::Kind::Everyone(bus::Everyone {})).await;
    let status = app.finished(&broadcast).await;
    assert_eq!(app.sims[0].stats().status(400), COUNT, "every push was answered with a random 400");

    let c = &status.counts;
    assert_eq!((c.targeted, c.accepted, c.rejected, c.failed, c.gone), (COUNT, 0, COUNT, 0, 0));
    assert_eq!(c.failures[FailureClass::Rejected.index()], COUNT);
    assert_eq!(c.failures.iter().sum::<u64>(), COUNT, "one class only: {:?}", c.failures);
    assert!(!status.samples.is_empty() && status.samples.len() <= 5, "{:?}", status.samples);
    let answer = pushfan_ingest::convert::broadcast_message(broadcast.as_str(), &status);
    let encoded = prost::Message::encoded_len(&answer);
    assert!(encoded < 16 * 1024, "GetBroadcast would answer {encoded} bytes");
    assert_eq!(answer.failures.len(), 1);
    assert_eq!((answer.failures[0].class.as_str(), answer.failures[0].count), ("rejected", COUNT));
    app.shutdown.cancel();
}

for_each_hand_off!(a_push_service_throttling_for_ever_holds_only_its_own_pushes_until_the_deadline);
/// Issue 17: five subscriptions on a push service answering `429 Retry-After: 999999999` kept a
/// 305-subscriber broadcast from completing for minutes (every 429 paused the origin again and
/// spent an attempt), and the 300 pushes delivered elsewhere were counted only with their whole
/// batch. Now the 300 are counted while the 5 still wait (the batches' provisional snapshots),
/// and the 5 end as `throttled` at the throttle deadline, each after its one request.
async fn a_push_service_throttling_for_ever_holds_only_its_own_pushes_until_the_deadline(hand_off: HandOff) {
    const COUNT: u64 = 305;
    let throttle = FaultPlan {
        throttle: Burst { selection: Selection::fraction(1.0, 0), first: u32::MAX },
        retry_after_secs: 999_999_999,
        ..FaultPlan::default()
    };
    let sims = vec![sim(COUNT, FaultPlan::default(), None).await, sim(COUNT, throttle, None).await];
    // Subscriber i lives on the throttling service when i % 61 == 60: 5 of 305.
    let mut layout = vec![0; 61];
    layout[60] = 1;
    let retry = RetryPolicy { throttle_deadline: Duration::from_secs(4), ..RetryPolicy::default() };
    let app = start_laid_out(sims, &layout, COUNT, loopback(hand_off), &[1], Arc::default(), retry).await;
    let broadcast = app.publish("held", target::Kind::Everyone(bus::Everyone {})).await;

    // Every good push counted while the throttled ones still wait: an event, polled for; the
    // bound (a minute) only ends a test that fails.
    let tenant = TenantId::new(TENANT).unwrap();
    let ledger: &dyn BroadcastLedger = &*app.store;
    let mut counted_early = None;
    for _ in 0..1200 {
        if let Some(status) = ledger.status(&tenant, &broadcast).await.unwrap() {
            if status.counts.accepted >= COUNT - 5 || status.is_complete() {
                counted_early = Some(status);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let early = counted_early.expect("the good pushes were never counted");
    assert_eq!(early.counts.accepted, COUNT - 5, "{early:?}");
    assert!(!early.is_complete(), "counted only when the broadcast ended: {early:?}");

    let status = app.finished(&broadcast).await;
    let c = &status.counts;
    assert_eq!((c.targeted, c.accepted, c.failed, c.rejected, c.expired), (COUNT, COUNT - 5, 5, 0, 0));
    assert_eq!(c.failures[FailureClass::Throttled.index()], 5, "{status:?}");
    assert_eq!(c.batches_done, c.batches_sent);
    assert_eq!(app.sims[0].stats().received.exactly_one, COUNT - 5);
    let throttled = app.sims[1].stats();
    assert!(
        throttled.status(429) <= 5 && throttled.status(201) == 0,
        "no request after the first 429 of each: {throttled:?}"
    );
    app.shutdown.cancel();
}

for_each_hand_off!(stored_endpoints_the_policy_refuses_are_counted_and_pruned);
/// A stored subscription whose endpoint the deployment's policy now refuses (here plain `http`,
/// with `allow_http_loopback` off) is never sent to: it is counted as `refused_by_policy` and
/// deleted, like a 410, and the others are delivered.
async fn stored_endpoints_the_policy_refuses_are_counted_and_pruned(hand_off: HandOff) {
    const COUNT: u64 = 200;
    let mut plain = PushSimConfig::new(Population::new(SEED, COUNT));
    plain.expected_payload = Some(Bytes::from_static(PAYLOAD));
    let sims = vec![sim(COUNT, FaultPlan::default(), None).await, PushSim::start(plain).await.unwrap()];
    let https_only = EndpointPolicy { allow_http_loopback: false, ..EndpointPolicy::allow_http_loopback() };
    let config = PipelineConfig { endpoint_policy: https_only, ..loopback(hand_off) };
    let app =
        start_laid_out(sims, &[0, 1], COUNT, config, &[1], Arc::default(), RetryPolicy::default()).await;
    let broadcast = app.publish("refused", target::Kind::Everyone(bus::Everyone {})).await;
    let status = app.finished(&broadcast).await;
    let c = &status.counts;
    assert_eq!((c.targeted, c.accepted, c.rejected, c.pruned), (COUNT, COUNT / 2, COUNT / 2, COUNT / 2));
    assert_eq!(c.failures[FailureClass::RefusedByPolicy.index()], COUNT / 2, "{status:?}");
    assert_eq!(app.sims[1].stats().received.exactly_one, 0, "nothing reached the refused endpoints");
    assert_eq!(app.stored().await, COUNT as usize / 2, "the refused subscriptions were deleted");
    app.shutdown.cancel();
}
