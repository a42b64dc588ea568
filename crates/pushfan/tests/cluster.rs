//! Cluster mode as separate processes: `pushfan ingest`, two `pushfan worker`s and two
//! `pushfan gateway`s on a Kafka-protocol broker and a real Redis, sending to the simulated push
//! service over HTTP/2 with TLS. One worker is SIGKILLed mid-broadcast; every subscriber must
//! still get the message, decrypted with their own keys, with exact counts, the gone pruned
//! from Redis and a 429's `Retry-After` honoured. The same again with the direct hand-off, where
//! the workers deliver their own pages and no gateway process runs.
//!
//! The roles run through the harness in `common` (librdkafka's mock cluster as the broker).
//! Needs `PUSHFAN_TEST_REDIS_URL` (`scripts/test` starts Redis); see `common` for keeping the
//! roles' logs.

mod common;

use std::time::{Duration, Instant};

use common::{authed, Cluster, HandOff, Settings};
use pushfan_bus::Topic;
use pushfan_proto::v1::subscription_service_client::SubscriptionServiceClient;
use pushfan_proto::v1::{Broadcast, GetSubscriptionRequest, SubscribeRequest};
use pushfan_pushsim::{Burst, FaultPlan, Population, PushSimConfig, Selection};
use tonic::Code;

const SUBSCRIBERS: u64 = 10_000;
/// Answered 410 Gone: they must end up deleted from Redis.
const GONE: [u64; 3] = [10, 20, 30];
/// Answered 429 with `Retry-After: RETRY_AFTER_SECS` on its first attempt.
const THROTTLED: u64 = 40;
const RETRY_AFTER_SECS: u32 = 1;
const PAYLOAD: &[u8] = b"cluster broadcast";

fn subscribe_request(population: &Population, index: u64) -> SubscribeRequest {
    population.subscriber(index).unwrap().subscribe_request(Vec::new())
}

/// When the throttled subscriber's 429 and its later delivery happened, bracketed by samples of
/// the push service's counters: each event lies between the last sample without it and the
/// first sample with it. The delivery is the last one seen: a page the killed worker had handed
/// on is sent again by its successor, and that copy may reach the gateway that was not told to
/// wait, so the subscriber may get an early copy besides the retry.
#[derive(Debug, Default)]
struct ThrottleWatch {
    last_sample: Option<Instant>,
    before_429: Option<Instant>,
    /// The first sample that saw the 429.
    saw_429: Option<Instant>,
    received: u32,
    delivered_by: Option<Instant>,
}

impl ThrottleWatch {
    fn sample(&mut self, status_429: u64, received: u32) {
        let now = Instant::now();
        if self.saw_429.is_none() {
            if status_429 > 0 {
                self.saw_429 = Some(now);
                self.before_429 = self.last_sample;
            }
        } else if received > self.received {
            self.received = received;
            self.delivered_by = Some(now);
        }
        self.last_sample = Some(now);
    }

    /// The longest the gateway can have waited between the 429 and the retry that was
    /// accepted. Shorter than `Retry-After` proves it retried too early; sampling late only
    /// lengthens it, so a slow machine cannot fail the check.
    fn longest_possible_wait(&self) -> Duration {
        let before = self.before_429.expect("sampled before publishing, so before the 429");
        let after = self.delivered_by.expect("the throttled subscriber's delivery was seen after its 429");
        after - before
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_survives_a_worker_killed_mid_way() {
    broadcast_survives_a_worker_killed(HandOff::Bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_survives_a_worker_killed_mid_way_with_the_direct_hand_off() {
    broadcast_survives_a_worker_killed(HandOff::Direct).await;
}

async fn broadcast_survives_a_worker_killed(hand_off: HandOff) {
    let redis = std::env::var("PUSHFAN_TEST_REDIS_URL")
        .expect("PUSHFAN_TEST_REDIS_URL is not set: run scripts/test, which starts Redis");
    let mut sim_config = PushSimConfig::new(Population::new(99u64, SUBSCRIBERS));
    // Every push is decrypted with its subscriber's keys and must carry exactly this payload.
    sim_config.expected_payload = Some(bytes::Bytes::from_static(PAYLOAD));
    sim_config.faults = FaultPlan {
        gone: Selection::indices(GONE),
        throttle: Burst { selection: Selection::indices([THROTTLED]), first: 1 },
        retry_after_secs: RETRY_AFTER_SECS,
        ..FaultPlan::default()
    };
    let label = format!("{hand_off:?}").to_lowercase();
    let mut cluster = Cluster::start(&label, sim_config, Settings::new(hand_off), &redis).await;
    let channel = cluster.channel().await;

    // The gone subscribers one by one, to learn their ids; everyone else in bulk.
    let population = cluster.sim.population().clone();
    let mut subscriptions = SubscriptionServiceClient::new(channel.clone());
    let mut gone_ids = Vec::new();
    for index in GONE {
        let response = subscriptions.subscribe(authed(subscribe_request(&population, index))).await.unwrap();
        gone_ids.push(response.into_inner().subscription_id);
    }
    let others: Vec<u64> = (0..SUBSCRIBERS).filter(|index| !GONE.contains(index)).collect();
    assert_eq!(cluster.import(others).await, SUBSCRIBERS - GONE.len() as u64);
    assert_eq!(cluster.stored_subscriptions().await, SUBSCRIBERS);
    // Publish once both gateways hold `deliveries` partitions: a rebalance mid-broadcast would
    // hand a batch parked on the 429 to the other gateway, which never saw it.
    if hand_off == HandOff::Bus {
        cluster.wait_for_partitions(Topic::Deliveries, &["gateway1", "gateway2"]).await;
    }
    let mut throttle = ThrottleWatch::default();
    throttle.sample(cluster.sim.stats().status(429), 0);
    let broadcast_id = cluster.publish_to_everyone(PAYLOAD).await;

    let started = Instant::now();
    let mut killed_at: Option<(Broadcast, Instant)> = None;
    let mut last = None;
    let finished = loop {
        let stats = cluster.sim.stats();
        throttle.sample(stats.status(429), cluster.sim.live_stats().received(THROTTLED));
        common::within(started, Duration::from_secs(90), "the broadcast to finish", || {
            format!("last state {last:?}; push service {stats:?}\n{}", cluster.log_tails())
        });
        if let Some(broadcast) = cluster.broadcast(&channel, &broadcast_id).await {
            if broadcast.complete {
                break broadcast;
            }
            if killed_at.is_none() && broadcast.handed_on > 0 {
                // SIGKILL: no chance to commit or leave the group, like a node that dies.
                cluster.kill("worker1");
                killed_at = Some((broadcast.clone(), Instant::now()));
            }
            last = Some(broadcast);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();

    let (killed_at, killed_when) = killed_at.expect("a worker was killed while the broadcast ran");
    assert!(
        killed_at.shards_done < killed_at.shards_total,
        "shards were left when the worker died: {killed_at:?}"
    );
    // The ledger counts each step once, even where the dead worker's work was redone.
    let delivered = SUBSCRIBERS - GONE.len() as u64;
    assert_eq!(
        (finished.targeted, finished.encrypted, finished.encrypt_failed),
        (SUBSCRIBERS, SUBSCRIBERS, 0)
    );
    assert_eq!((finished.accepted, finished.gone, finished.pruned), (delivered, 3, 3));
    assert_eq!((finished.rejected, finished.failed, finished.expired), (0, 0, 0), "{finished:?}");
    assert_eq!((finished.shards_done, finished.shards_total), (12, 12));

    // The push service decrypted every push with its subscriber's keys and found the payload;
    // everyone but the gone got it (a push redone after the kill may arrive twice).
    let sim = &cluster.sim;
    let stats = sim.stats();
    assert_eq!(stats.received.none, GONE.len() as u64, "only the gone got nothing: {stats:?}");
    assert_eq!(stats.received.exactly_one + stats.received.more_than_one, delivered);
    assert_eq!(stats.decrypted, stats.status(201), "every accepted push was decrypted: {stats:?}");
    assert_eq!((stats.vapid_failures, stats.decrypt_failures, stats.payload_mismatches), (0, 0, 0));
    assert!(GONE.iter().all(|&index| sim.live_stats().received(index) == 0));

    // 429 honoured: one 429, then the retry was accepted, no sooner than Retry-After.
    assert_eq!(stats.status(429), 1, "{stats:?}");
    assert!(sim.live_stats().received(THROTTLED) >= 1);
    let waited = throttle.longest_possible_wait();
    // With the direct hand-off the 429 goes to a worker, which shares its pause through Redis
    // every 250 ms. If that worker is the one killed before it shared the pause, its page is
    // redone by the other, which was never told to wait. So the check applies when the 429 came
    // after the kill (the survivor got it), or a second or more before it (it was shared).
    let shared_by = throttle.saw_429.map(|seen| seen + Duration::from_secs(1));
    let strict = hand_off == HandOff::Bus
        || throttle.before_429.is_some_and(|before| before >= killed_when)
        || shared_by.is_some_and(|shared| shared <= killed_when);
    assert!(
        !strict || waited >= Duration::from_secs(RETRY_AFTER_SECS.into()),
        "the throttled push was retried within {waited:?}, before Retry-After: {RETRY_AFTER_SECS} s \
         ({} pushes reached it)",
        sim.live_stats().received(THROTTLED)
    );

    // 410: the gone subscriptions were deleted from Redis, and only they.
    for id in &gone_ids {
        let status = subscriptions
            .get_subscription(authed(GetSubscriptionRequest { subscription_id: id.clone() }))
            .await
            .expect_err("a gone subscription is deleted");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    assert_eq!(cluster.stored_subscriptions().await, delivered);
    eprintln!(
        "cluster broadcast ({hand_off:?} hand-off) to {SUBSCRIBERS} finished in {elapsed:.1?}: {} pushes, \
         {} subscribers got a duplicate; the throttled push was retried after {waited:?} (Retry-After \
         checked: {strict})",
        stats.status(201),
        stats.received.more_than_one,
    );
}
