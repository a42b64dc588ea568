//! Ingest's request counter, in its own test binary: it installs the process-wide metrics
//! recorder, which no other test should share.

use std::collections::HashMap;
use std::sync::Arc;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use pushfan_bus::{EmbeddedBus, EmbeddedConfig};
use pushfan_ingest::{serve, ApiKeys, IngestState};
use pushfan_proto::v1::subscription_service_client::SubscriptionServiceClient;
use pushfan_proto::v1::GetSubscriptionRequest;
use pushfan_store::{EmbeddedStore, ShardCount, TenantId};
use pushfan_webpush::EndpointPolicy;
use tonic::{Code, Request};

#[tokio::test]
async fn requests_are_counted_by_method_and_code() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder in this binary");

    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path(), ShardCount::new(2).unwrap()).expect("store opens");
    let mut keys = ApiKeys::new();
    keys.insert(TenantId::new("acme").unwrap(), "acme-test-key-0123456789").unwrap();
    let state = IngestState::new(
        Arc::new(store.clone()),
        Arc::new(store),
        EmbeddedBus::new(EmbeddedConfig::default()),
        keys,
        EndpointPolicy::default(),
        [1, 2, 3],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    let mut client = connect(addr).await;

    let get = |key: Option<&str>| {
        let mut request = Request::new(GetSubscriptionRequest { subscription_id: "00".repeat(14) });
        if let Some(key) = key {
            request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        request
    };
    let missing = client.get_subscription(get(Some("acme-test-key-0123456789"))).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    for _ in 0..2 {
        assert_eq!(client.get_subscription(get(None)).await.unwrap_err().code(), Code::Unauthenticated);
    }

    let mut counts = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let (DebugValue::Counter(n), "pushfan_ingest_requests_total") = (value, key.key().name()) {
            let labels: HashMap<_, _> =
                key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            counts.insert((labels["method"].clone(), labels["code"].clone()), n);
        }
    }
    assert_eq!(counts.get(&("GetSubscription".into(), "not_found".into())), Some(&1));
    assert_eq!(counts.get(&("GetSubscription".into(), "unauthenticated".into())), Some(&2));
    let _ = stop.send(());
    server.await.expect("no panic").expect("clean stop");
}

/// A client on a channel to `addr` (the generated clients leave `connect` out).
async fn connect(addr: std::net::SocketAddr) -> SubscriptionServiceClient<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
    SubscriptionServiceClient::new(endpoint.connect().await.expect("connects"))
}
