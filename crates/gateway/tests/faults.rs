//! Hostile endpoints and idle origins: the connect-time egress guard, and per-origin state that
//! is let go of once idle. Loopback only: a refused host must not even be dialled, so each test
//! that expects a refusal watches a loopback listener for a connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use pushfan_gateway::{Delivery, FailureClass, FinalOutcome, Gateway, GatewayConfig, Report, RetryPolicy};
use pushfan_pushsim::Population;
use pushfan_webpush::{ContentEncoding, EgressPolicy};
use tokio::net::TcpListener;

#[allow(dead_code)]
mod common;
use common::{encrypted_for, message};

fn gateway(egress: EgressPolicy, h2c: bool) -> Gateway {
    Gateway::new(GatewayConfig {
        plaintext_h2c: h2c,
        egress: Arc::new(egress),
        retry: RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_attempts: 3,
            ..RetryPolicy::default()
        },
        ..GatewayConfig::default()
    })
    .unwrap()
}

/// A delivery of the test payload to `{base}/push/{tag}`, encrypted for a simulated subscriber.
fn delivery(tag: u64, base: &str) -> Delivery<u64> {
    let population = Population::new(42u64, tag + 1).with_origins(&[base]).unwrap();
    encrypted_for(&population, tag, ContentEncoding::Aes128gcm)
}

async fn send(gateway: &Gateway, deliveries: Vec<Delivery<u64>>) -> Vec<Report<u64>> {
    let message = message(60);
    let mut reports: Vec<Report<u64>> = gateway.send_all(&message, deliveries).collect().await;
    reports.sort_by_key(|r| r.tag);
    reports
}

#[tokio::test]
async fn a_host_that_resolves_to_loopback_is_refused_without_a_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // A name (resolved by the gateway, the guard's real case) and an IP literal (which hyper's
    // HTTP/1.1 connector dials without asking a resolver), on the HTTP/2 and HTTP/1.1 paths.
    for host in ["localhost", "127.0.0.1"] {
        for h2c in [true, false] {
            let gateway = gateway(EgressPolicy::default(), h2c);
            let base = format!("http://{host}:{port}");
            let reports = tokio::select! {
                reports = send(&gateway, vec![delivery(0, &base)]) => reports,
                accepted = listener.accept() => panic!("{host} h2c={h2c}: the guard let a connection through: {accepted:?}"),
            };
            // A connect that got through would be waiting in the listener's backlog by now.
            assert!(listener.accept().now_or_never().is_none(), "{host} h2c={h2c}: a connection was made");
            assert_eq!(reports[0].outcome.class(), Some(FailureClass::RefusedByPolicy), "{host} h2c={h2c}");
            assert_eq!(reports[0].attempts, 1, "a refusal is final: {host} h2c={h2c}");
            let FinalOutcome::Failed { detail, .. } = &reports[0].outcome else { unreachable!() };
            assert!(detail.contains("loopback") && !detail.contains("/push/"), "{detail}");
        }
    }
}

#[tokio::test]
async fn loopback_allowed_explicitly_is_delivered_to() {
    for h2c in [true, false] {
        let (addr, served, _) = serve_h2_or_http1(h2c).await;
        let gateway = gateway(EgressPolicy::allow_loopback(), h2c);
        let base = format!("http://localhost:{}", addr.port());
        let reports = send(&gateway, vec![delivery(0, &base)]).await;
        assert_eq!(reports[0].outcome, FinalOutcome::Accepted, "h2c={h2c}");
        assert_eq!(served.load(Ordering::SeqCst), 1);
    }
}

/// A push service answering 201 to everything over h2c (or HTTP/1.1), counting requests
/// served and connections still open.
async fn serve_h2_or_http1(h2c: bool) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (served, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counter, connections) = (Arc::clone(&served), Arc::clone(&open));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (counter, connections) = (Arc::clone(&counter), Arc::clone(&connections));
            connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                    let counter = Arc::clone(&counter);
                    async move {
                        request.into_body().collect().await?;
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut response = http::Response::new(Full::new(bytes::Bytes::new()));
                        *response.status_mut() = http::StatusCode::CREATED;
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = if h2c {
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
                };
                connections.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, served, open)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Polls `done` every 20 ms for at most 30 s: a bound on waiting for the gateway's own
/// upkeep, not a timing check.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..1500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test]
async fn a_thousand_idle_origins_are_let_go_of() {
    const ORIGINS: usize = 1000;
    let mut services = Vec::new();
    for _ in 0..ORIGINS {
        services.push(serve_h2_or_http1(true).await);
    }
    let baseline = open_fds();
    let gateway = Gateway::new(GatewayConfig {
        plaintext_h2c: true,
        egress: Arc::new(EgressPolicy::allow_loopback()),
        idle_timeout: Duration::from_millis(200),
        ..GatewayConfig::default()
    })
    .unwrap();
    let deliveries = services
        .iter()
        .enumerate()
        .map(|(i, (addr, _, _))| delivery(i as u64, &format!("http://{addr}")))
        .collect();
    let reports = send(&gateway, deliveries).await;
    assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Accepted));
    assert!(services.iter().all(|(_, served, _)| served.load(Ordering::SeqCst) == 1));

    let server_side_open = || services.iter().map(|(_, _, open)| open.load(Ordering::SeqCst)).sum::<usize>();
    assert!(
        eventually(|| gateway.held_origins() == 0
            && gateway.open_connections() == 0
            && server_side_open() == 0)
        .await,
        "origins {}, connections {}, open at the servers {}",
        gateway.held_origins(),
        gateway.open_connections(),
        server_side_open()
    );
    // Both ends of every connection are closed: this process is back to its listeners.
    assert!(eventually(|| open_fds() <= baseline).await, "{} fds open, {baseline} before", open_fds());
}

#[tokio::test]
async fn past_max_origins_the_least_recently_used_idle_origin_is_let_go_of() {
    let mut services = Vec::new();
    for _ in 0..30 {
        services.push(serve_h2_or_http1(true).await);
    }
    let gateway = Gateway::new(GatewayConfig {
        plaintext_h2c: true,
        egress: Arc::new(EgressPolicy::allow_loopback()),
        max_origins: 10,
        ..GatewayConfig::default()
    })
    .unwrap();
    let batch = |range: std::ops::Range<usize>| {
        range.map(|i| delivery(i as u64, &format!("http://{}", services[i].0))).collect::<Vec<_>>()
    };
    let server_side_open = || services.iter().map(|(_, _, open)| open.load(Ordering::SeqCst)).sum::<usize>();
    for range in [0..10, 10..20] {
        let reports = send(&gateway, batch(range)).await;
        assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Accepted));
        assert_eq!(gateway.held_origins(), 10);
    }
    // The first ten were the least recently used: let go of, connections closed.
    let open_at = |range: std::ops::Range<usize>| {
        services[range].iter().map(|(_, _, open)| open.load(Ordering::SeqCst)).sum::<usize>()
    };
    assert!(
        eventually(|| open_at(0..10) == 0 && open_at(10..20) == 10).await,
        "{} and {} connections open",
        open_at(0..10),
        open_at(10..20)
    );
    // Twenty origins at once, more than the cap, all in use: ten are held, the rest serve this
    // call alone and close with it.
    let reports = send(&gateway, batch(0..20)).await;
    assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Accepted));
    assert_eq!(gateway.held_origins(), 10);
    assert!(eventually(|| server_side_open() <= 10).await, "{} connections open", server_side_open());
    assert!(services.iter().take(20).all(|(_, served, _)| served.load(Ordering::SeqCst) == 2));
}
