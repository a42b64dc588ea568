//! The gateway against the simulated push service over real loopback sockets: HTTP/2 over TLS
//! and h2c, every message verified (VAPID) and decrypted by the push service, and the RFC 8030
//! answers (410, 429 with Retry-After, 500) handled as the retry policy says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use pushfan_gateway::{
    FailureClass, FinalOutcome, Gateway, GatewayConfig, Message, Pending, Progress, Report, RetryPolicy,
};
use pushfan_pushsim::{Burst, FaultPlan, Population, PushSim, PushSimConfig, Selection};
use pushfan_webpush::{ContentEncoding, EgressPolicy};

mod common;
use common::{
    deliveries, encrypted_for, fast_retries, gateway, message, rfc8030_faults, send, start, PAYLOAD,
};

#[tokio::test]
async fn every_subscriber_gets_exactly_one_verified_message_over_tls_and_h2c() {
    for tls in [true, false] {
        let sim = start(300, tls, FaultPlan::default()).await;
        let gateway = gateway(&sim, fast_retries());
        let reports = send(&gateway, &message(3600), deliveries(&sim, 300)).await;
        assert_eq!(reports.len(), 300);
        assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Accepted && r.attempts == 1), "tls={tls}");
        let stats = sim.stats();
        assert_eq!(stats.status(201), 300, "tls={tls}");
        assert_eq!((stats.vapid_verified, stats.vapid_failures), (300, 0));
        assert_eq!((stats.decrypted, stats.decrypt_failures, stats.payload_mismatches), (300, 0, 0));
        assert_eq!(stats.received.exactly_one, 300);
    }
}

#[tokio::test]
async fn first_attempts_carry_exactly_the_ttl_asked_on_the_wire() {
    let sim = start(20, false, FaultPlan::default()).await;
    let gateway = gateway(&sim, fast_retries());
    for ttl in [120, 1, 0] {
        sim.live_stats().reset();
        let reports = send(&gateway, &message(ttl), deliveries(&sim, 20)).await;
        assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Accepted && r.attempts == 1), "ttl={ttl}");
        assert_eq!(sim.live_stats().ttl_range(), Some((u64::from(ttl), u64::from(ttl))), "ttl={ttl}");
    }
}

#[tokio::test]
async fn gone_throttled_and_failing_subscribers_are_handled_by_the_rfc8030_rules() {
    let sim = start(10, true, rfc8030_faults()).await;
    let gateway = gateway(&sim, fast_retries());
    let started = Instant::now();
    let reports = send(&gateway, &message(3600), deliveries(&sim, 10)).await;
    let outcome = |i: usize| (&reports[i].outcome, reports[i].attempts);
    assert_eq!(outcome(0), (&FinalOutcome::Accepted, 1));
    assert_eq!(outcome(1), (&FinalOutcome::failed(FailureClass::Gone, ""), 1));
    assert_eq!(outcome(3), (&FinalOutcome::failed(FailureClass::NotFound, ""), 1));
    assert_eq!(outcome(4), (&FinalOutcome::Accepted, 2));
    assert_eq!(outcome(6), (&FinalOutcome::Accepted, 3));
    // Retry-After: 1 was honoured: the throttled retries waited it out.
    assert!(started.elapsed() >= Duration::from_secs(1));
    let stats = sim.stats();
    assert_eq!((stats.status(410), stats.status(404), stats.status(429), stats.status(500)), (2, 1, 2, 2));
    assert_eq!(stats.status(201), 7);
    assert_eq!(stats.received.exactly_one, 7);
}

/// One [`Gateway::send_ready`] round: what ended and what has to wait.
async fn round(
    gateway: &Gateway,
    message: &Message,
    pending: Vec<Pending<u64>>,
) -> (Vec<Report<u64>>, Vec<Pending<u64>>) {
    let (mut done, mut waiting) = (Vec::new(), Vec::new());
    let mut progress = std::pin::pin!(gateway.send_ready(message, pending));
    while let Some(step) = progress.next().await {
        match step {
            Progress::Done(report) => done.push(report),
            Progress::Waiting(pending) => waiting.push(pending),
        }
    }
    done.sort_by_key(|r| r.tag);
    (done, waiting)
}

/// Subscriber `index`'s first push is answered 429 with `Retry-After: retry_after_secs`.
fn throttled_once(index: u64, retry_after_secs: u32) -> FaultPlan {
    FaultPlan {
        throttle: Burst { selection: Selection::indices([index]), first: 1 },
        retry_after_secs,
        ..FaultPlan::default()
    }
}

#[tokio::test]
async fn send_ready_hands_back_what_has_to_wait_instead_of_waiting() {
    // Long enough that the second round surely comes before it.
    let sim = start(4, false, throttled_once(2, 2)).await;
    let gateway = gateway(&sim, fast_retries());
    let message = message(3600);
    let pending = deliveries(&sim, 4).into_iter().map(Pending::from).collect();
    let (done, waiting) = round(&gateway, &message, pending).await;
    assert_eq!(done.iter().map(|r| (r.tag, r.attempts)).collect::<Vec<_>>(), [(0, 1), (1, 1), (3, 1)]);
    assert_eq!(waiting.len(), 1, "subscriber 2 was told to come back");
    let ready_at = waiting[0].ready_at().expect("a throttled delivery waits");
    // Sent again while its origin is paused, it comes straight back without a request.
    let (done, waiting) = round(&gateway, &message, waiting).await;
    assert!(done.is_empty());
    assert_eq!(waiting[0].ready_at(), Some(ready_at));
    assert_eq!((sim.stats().status(429), sim.stats().status(201)), (1, 3));
    tokio::time::sleep_until(ready_at).await;
    let (done, waiting) = round(&gateway, &message, waiting).await;
    assert!(waiting.is_empty());
    assert_eq!((done[0].tag, &done[0].outcome, done[0].attempts), (2, &FinalOutcome::Accepted, 2));
    let stats = sim.stats();
    assert_eq!((stats.status(429), stats.status(201), stats.received.exactly_one), (1, 4, 4));
}

/// A pause one gateway took from a 429 is listed for other processes, and another gateway told
/// of it holds back that origin as if it had been throttled itself.
#[tokio::test]
async fn a_pause_shared_by_another_process_holds_back_the_origin() {
    let sim = start(2, false, throttled_once(0, 30)).await;
    let message = message(3600);
    let mut pushes = deliveries(&sim, 2).into_iter().map(Pending::from);
    let (throttled, other) = (gateway(&sim, fast_retries()), gateway(&sim, fast_retries()));
    assert!(throttled.paused_origins().is_empty() && other.paused_origins().is_empty());

    let (_, waiting) = round(&throttled, &message, vec![pushes.next().unwrap()]).await;
    assert_eq!(waiting.len(), 1, "subscriber 0 was told to come back in 30 s");
    let paused = throttled.paused_origins();
    let origin = sim.population().endpoint(0).unwrap().origin().to_owned();
    assert_eq!(paused.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(), [origin.as_str()]);
    let until = paused[0].1;
    assert!(until > std::time::SystemTime::now() + Duration::from_secs(20), "about 30 s from the 429");

    other.pause_origin(&origin, until);
    let (done, waiting) = round(&other, &message, vec![pushes.next().unwrap()]).await;
    assert!(done.is_empty(), "{done:?}");
    assert!(waiting[0].ready_at().unwrap() > tokio::time::Instant::now() + Duration::from_secs(20));
    assert_eq!(
        (sim.stats().status(429), sim.stats().status(201)),
        (1, 0),
        "nothing was sent to the paused origin"
    );
    // A pause that ended, or a shorter one, changes nothing.
    other.pause_origin(&origin, std::time::SystemTime::now() - Duration::from_secs(1));
    other.pause_origin(&origin, std::time::SystemTime::now() + Duration::from_secs(1));
    let listed = other.paused_origins();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].1 > std::time::SystemTime::now() + Duration::from_secs(20));
}

#[tokio::test]
async fn nothing_is_retried_past_the_ttl_or_the_attempt_budget() {
    let faults = FaultPlan {
        fail: Burst { selection: Selection::indices([0, 1]), first: 100 },
        ..FaultPlan::default()
    };
    let sim = start(2, false, faults).await;
    let budget = RetryPolicy { max_attempts: 3, ..fast_retries() };
    let gateway = gateway(&sim, budget);
    // TTL 0: deliver now or never.
    let reports = send(&gateway, &message(0), deliveries(&sim, 1)).await;
    assert_eq!((reports[0].outcome.class(), reports[0].attempts), (Some(FailureClass::Expired), 1));
    let reports = send(&gateway, &message(3600), deliveries(&sim, 2)).await;
    assert_eq!(reports[1].outcome, FinalOutcome::failed(FailureClass::ServerError, "HTTP 500"));
    assert_eq!(reports[1].attempts, 3);
    assert_eq!(sim.stats().status(500), 1 + 3 + 3);
}

#[tokio::test]
async fn a_push_service_that_is_down_is_a_transport_failure_not_a_hang() {
    let sim = start(1, false, FaultPlan::default()).await;
    let gateway = gateway(&sim, RetryPolicy { max_attempts: 2, ..fast_retries() });
    let lost = deliveries(&sim, 1);
    sim.shutdown().await.unwrap();
    let reports = send(&gateway, &message(3600), lost).await;
    assert!(
        matches!(
            (reports[0].outcome.class(), reports[0].attempts),
            (Some(FailureClass::TransportConnect | FailureClass::TransportReset), 2)
        ),
        "{:?}",
        reports[0].outcome
    );
}

#[tokio::test]
async fn plain_http_without_h2c_goes_over_http1() {
    let sim = start(40, false, FaultPlan::default()).await;
    let gateway = Gateway::new(GatewayConfig {
        plaintext_h2c: false,
        egress: Arc::new(EgressPolicy::allow_loopback()),
        ..GatewayConfig::default()
    })
    .unwrap();
    let reports = send(&gateway, &message(60), deliveries(&sim, 40)).await;
    assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Accepted), "{reports:?}");
    assert_eq!(sim.stats().received.exactly_one, 40);
}

#[tokio::test]
async fn a_restarted_push_service_gets_a_fresh_connection() {
    let first = start(20, true, FaultPlan::default()).await;
    let gateway = gateway(&first, fast_retries());
    let reports = send(&gateway, &message(60), deliveries(&first, 10)).await;
    assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Accepted));

    // Same address and certificate: only the held connections are gone.
    let addr = first.addr();
    let mut config = PushSimConfig::new(Population::new(42u64, 20));
    config.expected_payload = Some(bytes::Bytes::from_static(PAYLOAD));
    config.tls = first.tls().cloned();
    first.shutdown().await.unwrap();
    let second = PushSim::bind(addr, config).await.unwrap();
    let reports = send(&gateway, &message(60), deliveries(&second, 20)).await;
    assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Accepted), "{reports:?}");
    assert_eq!(second.stats().received.exactly_one, 20);
}

/// A push service that offers only HTTP/1.1 in ALPN, answering 201 to everything.
async fn http1_only_service(tls: &pushfan_pushsim::TlsIdentity) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let mut server = tls.server_config().unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&served);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, counter) = (acceptor.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                    let counter = Arc::clone(&counter);
                    async move {
                        assert_eq!(request.version(), http::Version::HTTP_11);
                        request.into_body().collect().await?;
                        counter.fetch_add(1, Ordering::Relaxed);
                        let mut response = http::Response::new(Full::new(bytes::Bytes::new()));
                        *response.status_mut() = http::StatusCode::CREATED;
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, served)
}

#[tokio::test]
async fn an_origin_without_http2_falls_back_to_http1_over_tls() {
    let tls = pushfan_pushsim::TlsIdentity::generate().unwrap();
    let (addr, served) = http1_only_service(&tls).await;
    let gateway = Gateway::new(GatewayConfig {
        extra_root_certs: vec![tls.ca_der().to_vec()],
        egress: Arc::new(EgressPolicy::allow_loopback()),
        ..GatewayConfig::default()
    })
    .unwrap();
    let population = Population::new(7u64, 30).with_origins(&[format!("https://{addr}")]).unwrap();
    let deliveries = (0..30).map(|i| encrypted_for(&population, i, ContentEncoding::Aes128gcm)).collect();
    let reports = send(&gateway, &message(60), deliveries).await;
    assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Accepted), "{reports:?}");
    assert_eq!(served.load(Ordering::Relaxed), 30);
}
