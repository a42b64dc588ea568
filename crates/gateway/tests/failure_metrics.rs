//! Failures by class, in their own test binary: it installs the process-wide recorder.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use pushfan_gateway::{FailureClass, Gateway, GatewayConfig, Report, RetryPolicy};
use pushfan_pushsim::Population;
use pushfan_webpush::{ContentEncoding, EgressPolicy};

#[allow(dead_code)]
mod common;
use common::{encrypted_for, message};

#[tokio::test]
async fn a_push_service_that_is_down_is_counted_as_connect_failures() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder in this binary");

    // A loopback port nobody listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);

    let gateway = Gateway::new(GatewayConfig {
        plaintext_h2c: true,
        egress: Arc::new(EgressPolicy::allow_loopback()),
        retry: RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_attempts: 2,
            ..RetryPolicy::default()
        },
        ..GatewayConfig::default()
    })
    .unwrap();
    let population = Population::new(42u64, 1).with_origins(&[format!("http://127.0.0.1:{port}")]).unwrap();
    let delivery = encrypted_for(&population, 0, ContentEncoding::Aes128gcm);
    let message = message(60);
    let reports: Vec<Report<u64>> = gateway.send_all(&message, vec![delivery]).collect().await;
    assert_eq!(reports[0].outcome.class(), Some(FailureClass::TransportConnect), "{:?}", reports[0]);
    assert_eq!(reports[0].attempts, 2);

    let failures: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "pushfan_gateway_failures_total")
        .filter_map(|(key, _, _, value)| {
            let class = key.key().labels().find(|l| l.key() == "class")?.value().to_owned();
            match value {
                DebugValue::Counter(n) if n > 0 => Some((class, n)),
                _ => None,
            }
        })
        .collect();
    assert_eq!(failures, vec![("connect".to_owned(), 2)]);
}
