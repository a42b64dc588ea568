//! The ingest API end to end: a real gRPC server on loopback over the embedded store (which is
//! also the ledger) and the embedded bus, driven by the generated tonic clients. The bus is read
//! back to check exactly what a publish queued; the ledger is driven directly to stand in for
//! the workers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use pushfan_bus::messages::{self as bus_msg, target};
use pushfan_bus::{Bus, Consumer, EmbeddedBus, EmbeddedConfig};
use pushfan_ingest::{serve, ApiKeys, IngestState};
use pushfan_proto::v1::broadcast_service_client::BroadcastServiceClient;
use pushfan_proto::v1::publish_service_client::PublishServiceClient;
use pushfan_proto::v1::subscription_service_client::SubscriptionServiceClient;
use pushfan_proto::v1::{self, publish_request::Target};
use pushfan_store::ledger::{BroadcastCounts, BroadcastId, BroadcastLedger, ProgressDelta};
use pushfan_store::{EmbeddedStore, ShardCount, TenantId, UnixSeconds};
use pushfan_webpush::EndpointPolicy;
use pushfan_webpush::FailureClass;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

// RFC 8291 Appendix A: a valid user agent key and auth secret.
const P256DH: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
const ACME_KEY: &str = "acme-test-key-0123456789";
const GLOBEX_KEY: &str = "globex-test-key-0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// A running ingest server and handles on what it works with.
struct Harness {
    channel: Channel,
    store: EmbeddedStore,
    bus: EmbeddedBus,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), pushfan_ingest::ServeError>>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(EmbeddedConfig::default()).await
    }

    async fn start_with(bus_config: EmbeddedConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            EmbeddedStore::open(dir.path(), ShardCount::new(4).expect("4 shards")).expect("store opens");
        let bus = EmbeddedBus::new(bus_config);
        let mut keys = ApiKeys::new();
        keys.insert(TenantId::new("acme").unwrap(), ACME_KEY).unwrap();
        keys.insert(TenantId::new("globex").unwrap(), GLOBEX_KEY).unwrap();
        let state = IngestState::new(
            std::sync::Arc::new(store.clone()),
            std::sync::Arc::new(store.clone()),
            bus.clone(),
            keys,
            EndpointPolicy::default(),
            [1, 2, 3],
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state, async {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connects");
        Self { channel, store, bus, shutdown: Some(stop), server: Some(server), _dir: dir }
    }

    fn subscriptions(&self) -> SubscriptionServiceClient<Channel> {
        SubscriptionServiceClient::new(self.channel.clone())
    }

    fn publisher(&self) -> PublishServiceClient<Channel> {
        PublishServiceClient::new(self.channel.clone())
    }

    fn broadcasts(&self) -> BroadcastServiceClient<Channel> {
        BroadcastServiceClient::new(self.channel.clone())
    }

    fn queue(&self) -> Consumer<EmbeddedBus, bus_msg::PublishRequest> {
        self.bus.consume::<bus_msg::PublishRequest>("test").expect("joins the publish topic")
    }

    /// Stops the server and checks it stopped cleanly.
    async fn stop(mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            timeout(WAIT, server).await.expect("stops in time").expect("no panic").expect("clean stop");
        }
    }
}

fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ascii"));
    request
}

fn subscribe_request(endpoint: &str, topics: &[&str]) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        endpoint: endpoint.into(),
        keys: Some(v1::SubscriptionKeys { p256dh: P256DH.into(), auth: AUTH.into() }),
        expiration_time: None,
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        content_encodings: vec![],
        vapid_key_id: 3,
    }
}

async fn subscribe(h: &Harness, key: &str, endpoint: &str, topics: &[&str]) -> String {
    h.subscriptions()
        .subscribe(authed(key, subscribe_request(endpoint, topics)))
        .await
        .expect("subscribed")
        .into_inner()
        .subscription_id
}

/// Every page of a listing, and how many pages it took.
async fn list_all(h: &Harness, key: &str, topic: &str, page_size: u32) -> (Vec<v1::Subscription>, usize) {
    let (mut all, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let request = v1::ListSubscriptionsRequest { topic: topic.into(), page_size, page_token: token };
        let page =
            h.subscriptions().list_subscriptions(authed(key, request)).await.expect("a page").into_inner();
        pages += 1;
        all.extend(page.subscriptions);
        if page.next_page_token.is_empty() {
            return (all, pages);
        }
        token = page.next_page_token;
    }
}

async fn publish(h: &Harness, key: &str, request: v1::PublishRequest) -> Result<String, Status> {
    h.publisher().publish(authed(key, request)).await.map(|r| r.into_inner().broadcast_id)
}

fn to_topic(name: &str, payload: &[u8]) -> v1::PublishRequest {
    v1::PublishRequest {
        target: Some(Target::Topic(name.into())),
        payload: payload.to_vec().into(),
        ..Default::default()
    }
}

/// The next queued publish request (acked), failing after [`WAIT`].
async fn next_queued(queue: &mut Consumer<EmbeddedBus, bus_msg::PublishRequest>) -> bus_msg::PublishRequest {
    let received = timeout(WAIT, queue.next()).await.expect("a publish request in time").expect("bus");
    received.ack.ack();
    received.message
}

/// Checks nothing (more) is queued.
async fn assert_nothing_queued(queue: &mut Consumer<EmbeddedBus, bus_msg::PublishRequest>) {
    if let Ok(received) = timeout(Duration::from_millis(300), queue.next()).await {
        panic!("expected nothing on the bus, got {:?}", received.map(|r| r.message));
    }
}

fn assert_invalid(status: &Status, field: &str, what: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{what}: message {:?} names {field}",
        status.message()
    );
    let details = status.get_error_details();
    let violation = &details.bad_request().expect("a BadRequest detail").field_violations[0];
    assert_eq!(violation.field, field, "{what}");
}

#[tokio::test]
async fn subscriptions_go_through_their_whole_life() {
    let h = Harness::start().await;
    let id = subscribe(&h, ACME_KEY, "https://push.example/one", &["news"]).await;
    assert_eq!(id.len(), 28);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));

    let got = h
        .subscriptions()
        .get_subscription(authed(ACME_KEY, v1::GetSubscriptionRequest { subscription_id: id.clone() }))
        .await
        .expect("found")
        .into_inner()
        .subscription
        .expect("a subscription");
    assert_eq!(got.endpoint, "https://push.example/one");
    assert_eq!(got.keys.as_ref().map(|k| (k.p256dh.as_str(), k.auth.as_str())), Some((P256DH, AUTH)));
    assert_eq!(got.topics, ["news"]);
    assert_eq!(got.vapid_key_id, 3);
    assert_eq!(got.content_encodings, [i32::from(v1::ContentEncoding::Aes128gcm)]);
    assert!(got.create_time.is_some_and(|t| t.seconds > 1_700_000_000));
    assert_eq!(got.expire_time, None);

    // 24 more over 4 shards, half in "sport": pages of 7 cross shard boundaries.
    for n in 0..24 {
        let topics: &[&str] = if n % 2 == 0 { &["sport"] } else { &[] };
        subscribe(&h, ACME_KEY, &format!("https://push.example/sub/{n}"), topics).await;
    }
    let (everyone, pages) = list_all(&h, ACME_KEY, "", 7).await;
    let unique: HashSet<_> = everyone.iter().map(|s| s.subscription_id.clone()).collect();
    assert_eq!((everyone.len(), unique.len()), (25, 25));
    assert!(pages >= 4, "25 subscriptions in pages of 7 take at least 4 pages, took {pages}");
    assert_eq!(list_all(&h, ACME_KEY, "sport", 5).await.0.len(), 12);
    assert_eq!(list_all(&h, ACME_KEY, "", 0).await, (everyone.clone(), 1));

    // Tag and untag: counts only the changes; unknown ids are skipped.
    let sport: Vec<String> =
        list_all(&h, ACME_KEY, "sport", 100).await.0.into_iter().map(|s| s.subscription_id).collect();
    let tag = v1::TagSubscriptionsRequest {
        subscription_ids: vec![id.clone(), sport[0].clone(), "00000000000000000000000000ff".into()],
        topic: "sport".into(),
    };
    let tagged =
        h.subscriptions().tag_subscriptions(authed(ACME_KEY, tag)).await.expect("tagged").into_inner();
    assert_eq!(tagged.tagged, 1);
    assert_eq!(list_all(&h, ACME_KEY, "sport", 100).await.0.len(), 13);
    let untag = v1::UntagSubscriptionsRequest { subscription_ids: vec![id.clone()], topic: "news".into() };
    let untagged = h.subscriptions().untag_subscriptions(authed(ACME_KEY, untag)).await.expect("untagged");
    assert_eq!(untagged.into_inner().untagged, 1);
    assert!(list_all(&h, ACME_KEY, "news", 100).await.0.is_empty());

    // Unsubscribe, twice: the second still succeeds and says it was gone.
    for existed in [true, false] {
        let request = v1::UnsubscribeRequest { subscription_id: id.clone() };
        let response = h.subscriptions().unsubscribe(authed(ACME_KEY, request)).await.expect("unsubscribed");
        assert_eq!(response.into_inner().existed, existed);
    }
    let missing = h
        .subscriptions()
        .get_subscription(authed(ACME_KEY, v1::GetSubscriptionRequest { subscription_id: id }))
        .await
        .expect_err("gone");
    assert_eq!(missing.code(), Code::NotFound);
    h.stop().await;
}

#[tokio::test]
async fn an_expiration_time_is_kept_through_tagging() {
    let h = Harness::start().await;
    let request = v1::SubscribeRequest {
        expiration_time: Some(4_102_444_800_250), // 2100-01-01T00:00:00.250Z
        ..subscribe_request("https://push.example/expiring", &["news"])
    };
    let id = h.subscriptions().subscribe(authed(ACME_KEY, request)).await.expect("subscribed");
    let id = id.into_inner().subscription_id;
    let tag = v1::TagSubscriptionsRequest { subscription_ids: vec![id.clone()], topic: "sport".into() };
    h.subscriptions().tag_subscriptions(authed(ACME_KEY, tag)).await.expect("tagged");
    let got = h
        .subscriptions()
        .get_subscription(authed(ACME_KEY, v1::GetSubscriptionRequest { subscription_id: id }))
        .await
        .expect("found")
        .into_inner()
        .subscription
        .expect("a subscription");
    assert_eq!(got.topics, ["news", "sport"]);
    assert_eq!(got.expire_time, Some(prost_types::Timestamp { seconds: 4_102_444_800, nanos: 250_000_000 }));
    h.stop().await;
}

#[tokio::test]
async fn bulk_import_writes_good_items_and_reports_bad_ones_by_index() {
    let h = Harness::start().await;
    let mut short_key = subscribe_request("https://push.example/bad-key", &[]);
    short_key.keys.as_mut().unwrap().p256dh = "BAAA".into();
    let mut bad_topic = subscribe_request("https://push.example/bad-topic", &["no spaces"]);
    bad_topic.vapid_key_id = 1;
    let mut unknown_key = subscribe_request("https://push.example/unknown-key", &[]);
    unknown_key.vapid_key_id = 9;
    let batches = vec![
        v1::BulkImportRequest {
            items: vec![
                subscribe_request("https://push.example/a", &["x"]),
                short_key,
                subscribe_request("https://push.example/b", &[]),
            ],
        },
        v1::BulkImportRequest {
            items: vec![
                subscribe_request("http://push.example/plain-http", &[]),
                bad_topic,
                subscribe_request("https://push.example/c", &[]),
                // The same endpoint again in one batch: written once.
                subscribe_request("https://push.example/c", &["x"]),
                unknown_key,
            ],
        },
    ];
    let response = h
        .subscriptions()
        .bulk_import(authed(ACME_KEY, futures::stream::iter(batches)))
        .await
        .expect("imported")
        .into_inner();
    assert_eq!((response.imported, response.failed), (3, 4));
    let errors: Vec<(u64, &str)> = response.errors.iter().map(|e| (e.index, e.field.as_str())).collect();
    assert_eq!(errors, [(1, "keys.p256dh"), (3, "endpoint"), (4, "topics[0]"), (7, "vapid_key_id")]);
    assert_eq!(response.errors[0].description, "must be a 65-byte uncompressed P-256 point, got 3 bytes");
    assert_eq!(response.errors[3].description, "9 is not one of this deployment's VAPID key ids (1, 2, 3)");
    assert!(!response.errors[1].description.contains("plain-http"), "endpoints stay out of messages");
    assert_eq!(list_all(&h, ACME_KEY, "", 100).await.0.len(), 3);
    assert_eq!(list_all(&h, ACME_KEY, "x", 100).await.0.len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn publishes_queue_one_request_with_the_right_fields() {
    let h = Harness::start().await;
    let mut queue = h.queue();
    let a = subscribe(&h, ACME_KEY, "https://push.example/a", &[]).await;
    let b = subscribe(&h, ACME_KEY, "https://push.example/b", &[]).await;

    let request = v1::PublishRequest {
        target: Some(Target::Topic("news".into())),
        payload: b"hello".to_vec().into(),
        options: Some(v1::PushOptions {
            ttl_seconds: Some(60),
            urgency: v1::Urgency::High.into(),
            topic: "scores".into(),
        }),
        idempotency_key: String::new(),
        vapid_key_id: Some(2),
    };
    let id = publish(&h, ACME_KEY, request).await.expect("published");
    assert_eq!(id.len(), 26);
    let queued = next_queued(&mut queue).await;
    assert_eq!(queued.broadcast_id, id);
    assert_eq!(queued.tenant, "acme");
    assert_eq!(queued.target.and_then(|t| t.kind), Some(target::Kind::Topic("news".into())));
    assert_eq!(&queued.payload[..], b"hello");
    assert_eq!(
        queued.options,
        Some(bus_msg::PushOptions {
            ttl_seconds: 60,
            urgency: bus_msg::Urgency::High.into(),
            topic: "scores".into()
        })
    );
    assert_eq!(queued.vapid_key_id, "2");
    assert!(queued.created_at_ms > 1_700_000_000_000);

    // A list (repeats and case folded away) and everyone, with default options.
    let list = v1::PublishRequest {
        target: Some(Target::SubscriptionIds(v1::SubscriptionIds {
            ids: vec![a.clone(), b.to_uppercase(), a.clone()],
        })),
        payload: b"x".to_vec().into(),
        ..Default::default()
    };
    let list_id = publish(&h, ACME_KEY, list).await.expect("published");
    let queued = next_queued(&mut queue).await;
    assert_eq!(queued.broadcast_id, list_id);
    assert_eq!(
        queued.target.and_then(|t| t.kind),
        Some(target::Kind::Subscriptions(bus_msg::SubscriptionIds { ids: vec![a.clone(), b] }))
    );
    let options = queued.options.expect("options");
    assert_eq!((options.ttl_seconds, options.urgency, options.topic.as_str()), (2_419_200, 0, ""));
    assert_eq!(queued.vapid_key_id, "");

    let everyone =
        v1::PublishRequest { target: Some(Target::Everyone(v1::Everyone {})), ..Default::default() };
    publish(&h, ACME_KEY, everyone).await.expect("published");
    let queued = next_queued(&mut queue).await;
    assert_eq!(queued.target.and_then(|t| t.kind), Some(target::Kind::Everyone(bus_msg::Everyone {})));

    let single = v1::PublishRequest { target: Some(Target::SubscriptionId(a.clone())), ..Default::default() };
    publish(&h, ACME_KEY, single).await.expect("published");
    let queued = next_queued(&mut queue).await;
    assert_eq!(
        queued.target.and_then(|t| t.kind),
        Some(target::Kind::Subscriptions(bus_msg::SubscriptionIds { ids: vec![a] }))
    );
    assert_nothing_queued(&mut queue).await;
    h.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_publishes_once() {
    let h = Harness::start().await;
    let mut queue = h.queue();
    let keyed = |key: &str| v1::PublishRequest { idempotency_key: key.into(), ..to_topic("news", b"hi") };
    let first = publish(&h, ACME_KEY, keyed("order-42")).await.expect("published");
    let again = publish(&h, ACME_KEY, keyed("order-42")).await.expect("deduplicated");
    assert_eq!(first, again);
    let queued = next_queued(&mut queue).await;
    assert_eq!((queued.broadcast_id.as_str(), queued.idempotency_key.as_str()), (first.as_str(), "order-42"));
    assert_nothing_queued(&mut queue).await;

    // Another key, or the same key of another tenant, is another broadcast.
    let other = publish(&h, ACME_KEY, keyed("order-43")).await.expect("published");
    let globex = publish(&h, GLOBEX_KEY, keyed("order-42")).await.expect("published");
    assert!(other != first && globex != first && globex != other);
    for expected in [other, globex] {
        assert_eq!(next_queued(&mut queue).await.broadcast_id, expected);
    }
    h.stop().await;
}

#[tokio::test]
async fn a_publish_the_bus_refused_is_retried_under_its_first_id() {
    // Room for one record, and a short wait: the second publish finds the bus full.
    let h = Harness::start_with(EmbeddedConfig {
        queue_capacity: 1,
        send_timeout: Duration::from_millis(100),
        ..EmbeddedConfig::default()
    })
    .await;
    let filler = publish(&h, ACME_KEY, to_topic("news", b"first")).await.expect("published");
    let keyed = v1::PublishRequest { idempotency_key: "retry-me".into(), ..to_topic("news", b"second") };
    let refused = publish(&h, ACME_KEY, keyed.clone()).await.expect_err("bus full");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // A retry that finds the bus still full fails too, and must not leave the key looking
    // published: the next retry still has to queue it.
    let refused_again = publish(&h, ACME_KEY, keyed.clone()).await.expect_err("bus still full");
    assert_eq!(refused_again.code(), Code::Unavailable, "{refused_again:?}");

    let mut queue = h.queue();
    assert_eq!(next_queued(&mut queue).await.broadcast_id, filler);
    let retried = publish(&h, ACME_KEY, keyed.clone()).await.expect("queued on retry");
    let queued = next_queued(&mut queue).await;
    assert_eq!((queued.broadcast_id.as_str(), &queued.payload[..]), (retried.as_str(), &b"second"[..]));
    // Now it is queued, a further retry is answered without queueing.
    assert_eq!(publish(&h, ACME_KEY, keyed).await.expect("deduplicated"), retried);
    assert_nothing_queued(&mut queue).await;
    h.stop().await;
}

/// A field path and how to break that field in an otherwise valid request.
type Case<R> = (&'static str, fn(&mut R));

#[tokio::test]
async fn every_invalid_field_is_named() {
    let h = Harness::start().await;
    let mut queue = h.queue();
    let subscribe_cases: Vec<Case<v1::SubscribeRequest>> = vec![
        ("endpoint", |r| r.endpoint = "not a url".into()),
        ("endpoint", |r| r.endpoint = "http://push.example/x".into()),
        ("endpoint", |r| r.endpoint = "https://user:pw@push.example/x".into()),
        ("keys", |r| r.keys = None),
        ("keys.p256dh", |r| r.keys.as_mut().unwrap().p256dh = "!!".into()),
        ("keys.p256dh", |r| r.keys.as_mut().unwrap().p256dh = "BAAA".into()),
        ("keys.auth", |r| r.keys.as_mut().unwrap().auth = "AAAA".into()),
        ("expiration_time", |r| r.expiration_time = Some(-1)),
        ("expiration_time", |r| r.expiration_time = Some(1_000)),
        ("topics[1]", |r| r.topics = vec!["ok".into(), "not ok".into()]),
        ("topics", |r| r.topics = (0..33).map(|n| format!("t{n}")).collect()),
        ("content_encodings[0]", |r| r.content_encodings = vec![0]),
        ("content_encodings[1]", |r| r.content_encodings = vec![1, 9]),
        ("vapid_key_id", |r| r.vapid_key_id = 9),
    ];
    for (field, mutate) in subscribe_cases {
        let mut request = subscribe_request("https://push.example/x", &[]);
        mutate(&mut request);
        let what = format!("subscribe {request:?}");
        let status = h.subscriptions().subscribe(authed(ACME_KEY, request)).await.expect_err(&what);
        assert_invalid(&status, field, &what);
    }
    assert!(list_all(&h, ACME_KEY, "", 100).await.0.is_empty(), "nothing invalid was stored");

    let id = "378f13c84514cc9b2fdf033f09ee";
    let publish_cases: Vec<Case<v1::PublishRequest>> = vec![
        ("payload", |r| r.payload = vec![0; 3994].into()),
        ("target", |r| r.target = None),
        ("target.subscription_id", |r| r.target = Some(Target::SubscriptionId("xyz".into()))),
        ("target.subscription_ids.ids", |r| {
            r.target = Some(Target::SubscriptionIds(v1::SubscriptionIds::default()))
        }),
        ("target.subscription_ids.ids[1]", |r| {
            r.target = Some(Target::SubscriptionIds(v1::SubscriptionIds {
                ids: vec!["378f13c84514cc9b2fdf033f09ee".into(), "nope".into()],
            }))
        }),
        ("target.topic", |r| r.target = Some(Target::Topic("".into()))),
        ("options.ttl_seconds", |r| {
            r.options = Some(v1::PushOptions { ttl_seconds: Some(2_419_201), ..Default::default() })
        }),
        ("options.urgency", |r| r.options = Some(v1::PushOptions { urgency: 9, ..Default::default() })),
        ("options.topic", |r| {
            r.options = Some(v1::PushOptions { topic: "has/slash".into(), ..Default::default() })
        }),
        ("options.topic", |r| {
            r.options = Some(v1::PushOptions { topic: "x".repeat(33), ..Default::default() })
        }),
        ("idempotency_key", |r| r.idempotency_key = "with space".into()),
        ("idempotency_key", |r| r.idempotency_key = "k".repeat(201)),
        ("vapid_key_id", |r| r.vapid_key_id = Some(9)),
    ];
    for (field, mutate) in publish_cases {
        let mut request = to_topic("news", b"ok");
        mutate(&mut request);
        let what = format!("publish with {field} broken");
        let status = publish(&h, ACME_KEY, request).await.expect_err(&what);
        assert_invalid(&status, field, &what);
    }
    assert_nothing_queued(&mut queue).await;

    let get = v1::GetSubscriptionRequest { subscription_id: "abc".into() };
    assert_invalid(
        &h.subscriptions().get_subscription(authed(ACME_KEY, get)).await.unwrap_err(),
        "subscription_id",
        "get",
    );
    let unsubscribe = v1::UnsubscribeRequest { subscription_id: String::new() };
    let status = h.subscriptions().unsubscribe(authed(ACME_KEY, unsubscribe)).await.unwrap_err();
    assert_invalid(&status, "subscription_id", "unsubscribe");
    let list = v1::ListSubscriptionsRequest { page_size: 1001, ..Default::default() };
    assert_invalid(
        &h.subscriptions().list_subscriptions(authed(ACME_KEY, list)).await.unwrap_err(),
        "page_size",
        "list",
    );
    let list = v1::ListSubscriptionsRequest { page_token: "garbage".into(), ..Default::default() };
    assert_invalid(
        &h.subscriptions().list_subscriptions(authed(ACME_KEY, list)).await.unwrap_err(),
        "page_token",
        "list",
    );
    let list = v1::ListSubscriptionsRequest { topic: "a b".into(), ..Default::default() };
    assert_invalid(
        &h.subscriptions().list_subscriptions(authed(ACME_KEY, list)).await.unwrap_err(),
        "topic",
        "list",
    );
    let tag = v1::TagSubscriptionsRequest { subscription_ids: vec![], topic: "t".into() };
    let status = h.subscriptions().tag_subscriptions(authed(ACME_KEY, tag)).await.unwrap_err();
    assert_invalid(&status, "subscription_ids", "tag");
    let tag = v1::TagSubscriptionsRequest { subscription_ids: vec![id.into()], topic: String::new() };
    assert_invalid(
        &h.subscriptions().tag_subscriptions(authed(ACME_KEY, tag)).await.unwrap_err(),
        "topic",
        "tag",
    );
    let untag = v1::UntagSubscriptionsRequest { subscription_ids: vec!["x".into()], topic: "t".into() };
    let status = h.subscriptions().untag_subscriptions(authed(ACME_KEY, untag)).await.unwrap_err();
    assert_invalid(&status, "subscription_ids[0]", "untag");
    let get = v1::GetBroadcastRequest { broadcast_id: "no/slashes".into() };
    assert_invalid(
        &h.broadcasts().get_broadcast(authed(ACME_KEY, get)).await.unwrap_err(),
        "broadcast_id",
        "broadcast",
    );
    h.stop().await;
}

#[tokio::test]
async fn an_oversize_payload_is_refused_before_anything_is_queued() {
    let h = Harness::start().await;
    let mut queue = h.queue();
    let status = publish(&h, ACME_KEY, to_topic("news", &[7; 3994])).await.expect_err("too big");
    assert_invalid(&status, "payload", "oversize");
    assert!(status.message().contains("3994"), "{}", status.message());
    assert_nothing_queued(&mut queue).await;
    publish(&h, ACME_KEY, to_topic("news", &[7; 3993])).await.expect("the largest payload fits");
    assert_eq!(next_queued(&mut queue).await.payload.len(), 3993);
    h.stop().await;
}

#[tokio::test]
async fn missing_or_unknown_api_keys_are_unauthenticated() {
    let h = Harness::start().await;
    let mut queue = h.queue();
    let unknown = "Bearer not-a-configured-key-123";
    for authorization in [None, Some(unknown), Some("Basic YWNtZTpwdw=="), Some(ACME_KEY)] {
        let statuses = [
            h.subscriptions()
                .subscribe(with_authorization(
                    authorization,
                    subscribe_request("https://push.example/a", &[]),
                ))
                .await
                .map(drop),
            publish_raw(&h, with_authorization(authorization, to_topic("news", b"x"))).await,
            h.subscriptions()
                .list_subscriptions(with_authorization(
                    authorization,
                    v1::ListSubscriptionsRequest::default(),
                ))
                .await
                .map(drop),
            h.broadcasts()
                .get_broadcast(with_authorization(
                    authorization,
                    v1::GetBroadcastRequest { broadcast_id: "b".into() },
                ))
                .await
                .map(drop),
        ];
        for status in statuses {
            assert_eq!(status.expect_err("refused").code(), Code::Unauthenticated, "{authorization:?}");
        }
    }
    assert_nothing_queued(&mut queue).await;
    h.stop().await;
}

fn with_authorization<T>(authorization: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.parse().expect("ascii"));
    }
    request
}

async fn publish_raw(h: &Harness, request: Request<v1::PublishRequest>) -> Result<(), Status> {
    h.publisher().publish(request).await.map(drop)
}

#[tokio::test]
async fn tenants_cannot_see_each_other() {
    let h = Harness::start().await;
    let id = subscribe(&h, ACME_KEY, "https://push.example/acme-only", &["news"]).await;
    let get = || v1::GetSubscriptionRequest { subscription_id: id.clone() };
    let status =
        h.subscriptions().get_subscription(authed(GLOBEX_KEY, get())).await.expect_err("not globex's");
    assert_eq!(status.code(), Code::NotFound);
    assert!(list_all(&h, GLOBEX_KEY, "", 100).await.0.is_empty());
    assert!(list_all(&h, GLOBEX_KEY, "news", 100).await.0.is_empty());
    let unsubscribe = v1::UnsubscribeRequest { subscription_id: id.clone() };
    let response = h.subscriptions().unsubscribe(authed(GLOBEX_KEY, unsubscribe)).await.expect("answered");
    assert!(!response.into_inner().existed);
    let tag = v1::TagSubscriptionsRequest { subscription_ids: vec![id.clone()], topic: "stolen".into() };
    assert_eq!(
        h.subscriptions().tag_subscriptions(authed(GLOBEX_KEY, tag)).await.expect("ok").into_inner().tagged,
        0
    );
    let mine =
        h.subscriptions().get_subscription(authed(ACME_KEY, get())).await.expect("still acme's").into_inner();
    assert_eq!(mine.subscription.expect("a subscription").topics, ["news"]);

    // Broadcasts too: acme's broadcast does not exist for globex.
    let broadcast = BroadcastId::new("acme-broadcast").unwrap();
    h.store.create_broadcast(&TenantId::new("acme").unwrap(), &broadcast, 1, UnixSeconds(1)).await.unwrap();
    let get = || v1::GetBroadcastRequest { broadcast_id: broadcast.to_string() };
    assert_eq!(
        h.broadcasts().get_broadcast(authed(GLOBEX_KEY, get())).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(h.broadcasts().get_broadcast(authed(ACME_KEY, get())).await.is_ok());
    h.stop().await;
}

#[tokio::test]
async fn broadcast_progress_is_reported_and_a_watch_ends_on_completion() {
    let h = Harness::start().await;
    let tenant = TenantId::new("acme").unwrap();
    let broadcast = BroadcastId::new("b-progress").unwrap();
    let request = || v1::GetBroadcastRequest { broadcast_id: broadcast.to_string() };
    assert_eq!(
        h.broadcasts().get_broadcast(authed(ACME_KEY, request())).await.unwrap_err().code(),
        Code::NotFound
    );

    // The planner's part: two shards, three subscribers targeted in the first.
    h.store.create_broadcast(&tenant, &broadcast, 2, UnixSeconds(1_800_000_000)).await.unwrap();
    let step = |name: &str, counts: BroadcastCounts, samples: Vec<(FailureClass, String)>| {
        let (store, tenant, broadcast, name) =
            (h.store.clone(), tenant.clone(), broadcast.clone(), name.to_owned());
        async move {
            let delta = ProgressDelta { counts, samples, replaces_partial: None };
            assert!(store.add_progress(&tenant, &broadcast, &name, &delta).await.unwrap());
        }
    };
    step(
        "page/0/0",
        BroadcastCounts { targeted: 3, encrypted: 3, shards_done: 1, ..Default::default() },
        vec![],
    )
    .await;

    let got = h
        .broadcasts()
        .get_broadcast(authed(ACME_KEY, request()))
        .await
        .unwrap()
        .into_inner()
        .broadcast
        .unwrap();
    assert_eq!(
        (got.targeted, got.encrypted, got.shards_total, got.shards_done, got.complete),
        (3, 3, 2, 1, false)
    );
    assert_eq!(got.create_time.map(|t| t.seconds), Some(1_800_000_000));

    let watch = v1::WatchBroadcastRequest { broadcast_id: broadcast.to_string() };
    let mut stream =
        h.broadcasts().watch_broadcast(authed(ACME_KEY, watch)).await.expect("watching").into_inner();
    let first = timeout(WAIT, stream.message()).await.expect("in time").expect("ok").expect("an update");
    assert_eq!(first.broadcast.as_ref().map(|b| b.targeted), Some(3));

    let mut too_large = BroadcastCounts { rejected: 1, ..Default::default() };
    too_large.failures[FailureClass::PayloadTooLarge.index()] = 1;
    let sample = (FailureClass::PayloadTooLarge, "payload too large".to_owned());
    step("results/0", BroadcastCounts { accepted: 1, gone: 1, pruned: 1, ..Default::default() }, vec![])
        .await;
    step("results/1", too_large, vec![sample]).await;
    step("shard/1", BroadcastCounts { shards_done: 1, ..Default::default() }, vec![]).await;

    let mut updates = vec![first];
    while let Some(update) = timeout(WAIT, stream.message()).await.expect("in time").expect("ok") {
        updates.push(update);
    }
    let last = updates.last().and_then(|u| u.broadcast.clone()).expect("a final update");
    assert!(last.complete, "the stream ended with the completing update: {last:?}");
    assert_eq!((last.accepted, last.gone, last.pruned, last.rejected, last.shards_done), (1, 1, 1, 1, 2));
    assert_eq!(
        last.failures,
        [v1::Failure {
            class: "payload_too_large".into(),
            count: 1,
            samples: vec!["payload too large".into()]
        }]
    );
    assert!(updates.windows(2).all(|w| w[0] != w[1]), "only changes are sent");
    assert!(updates.iter().rev().skip(1).all(|u| !u.broadcast.as_ref().unwrap().complete));

    let done = h
        .broadcasts()
        .get_broadcast(authed(ACME_KEY, request()))
        .await
        .unwrap()
        .into_inner()
        .broadcast
        .unwrap();
    assert!(done.complete);
    h.stop().await;
}

#[tokio::test]
async fn shutting_down_ends_open_watches() {
    let h = Harness::start().await;
    let broadcast = BroadcastId::new("never-ends").unwrap();
    h.store.create_broadcast(&TenantId::new("acme").unwrap(), &broadcast, 1, UnixSeconds(1)).await.unwrap();
    let watch = v1::WatchBroadcastRequest { broadcast_id: broadcast.to_string() };
    let mut stream =
        h.broadcasts().watch_broadcast(authed(ACME_KEY, watch)).await.expect("watching").into_inner();
    let first = timeout(WAIT, stream.message()).await.expect("in time").expect("ok").expect("an update");
    assert!(!first.broadcast.expect("a broadcast").complete);
    // `stop` waits for the server to return, which it does only once the watch has ended.
    h.stop().await;
    let ended = timeout(WAIT, stream.message()).await.expect("in time");
    assert_eq!(ended.expect_err("ended by the shutdown").code(), Code::Unavailable);
}

#[tokio::test]
async fn health_reports_serving_and_reflection_lists_the_services() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let h = Harness::start().await;
    let mut health = HealthClient::new(h.channel.clone());
    for service in
        ["", "pushfan.v1.SubscriptionService", "pushfan.v1.PublishService", "pushfan.v1.BroadcastService"]
    {
        let response = health.check(HealthCheckRequest { service: service.into() }).await.expect("checked");
        assert_eq!(response.into_inner().status(), ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(h.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.message().await.expect("ok").expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "pushfan.v1.SubscriptionService",
        "pushfan.v1.PublishService",
        "pushfan.v1.BroadcastService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(expected), "{expected} in {names:?}");
    }
    // A client can fetch the schema of a service (what grpcurl's `describe` does).
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("pushfan.v1.PublishService".into())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.message().await.expect("ok").expect("a response");
    assert!(
        matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty())
    );
    h.stop().await;
}
