//! The gateway's metrics, in their own test binary: it installs the process-wide recorder, which
//! no other test should share. Each origin registers its handles once; this checks that they
//! record into whatever recorder the process has, one count per response and per outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use pushfan_gateway::{Delivery, Gateway, GatewayConfig, Message, RetryPolicy};
use pushfan_pushsim::{Burst, FaultPlan, Population, PushSim, PushSimConfig, Selection};
use pushfan_webpush::vapid::{Subject, TokenCache, VapidKey, VapidSigner};
use pushfan_webpush::{encrypt, Backend, ContentEncoding, Padding, PushOptions};

#[tokio::test]
async fn every_response_and_outcome_is_counted_once() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder in this binary");

    let mut config = PushSimConfig::new(Population::new(7u64, 10));
    config.faults = FaultPlan {
        gone: Selection::indices([1, 2]),
        not_found: Selection::indices([3]),
        throttle: Burst { selection: Selection::indices([4, 5]), first: 1 },
        retry_after_secs: 1,
        fail: Burst { selection: Selection::indices([6]), first: 2 },
        ..FaultPlan::default()
    };
    let sim = PushSim::start(config).await.unwrap();
    let gateway = Gateway::new(GatewayConfig {
        plaintext_h2c: true,
        retry: RetryPolicy { base_delay: Duration::from_millis(20), ..RetryPolicy::default() },
        ..GatewayConfig::default()
    })
    .unwrap();
    let signer = VapidSigner::new(VapidKey::generate(), Subject::parse("mailto:ops@example.com").unwrap());
    let message = Message {
        options: PushOptions { ttl: 3600, ..PushOptions::default() },
        expires_at: SystemTime::now() + Duration::from_secs(3600),
        vapid: Arc::new(TokenCache::new(signer)),
    };
    let deliveries: Vec<_> = (0..10)
        .map(|i| {
            let keys = sim.population().keys(i);
            let push = encrypt(
                Backend::AwsLc,
                keys.subscription_keys(),
                ContentEncoding::Aes128gcm,
                b"hi",
                &Padding::None,
            )
            .unwrap();
            Delivery { tag: i, endpoint: sim.population().endpoint(i).unwrap(), push }
        })
        .collect();
    let reports: Vec<_> = gateway.send_all(&message, deliveries).collect().await;
    assert_eq!(reports.len(), 10);

    let mut counters = HashMap::new();
    let mut requests = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let outcome = key.key().labels().find(|l| l.key() == "outcome").map(|l| l.value().to_owned());
        match (key.key().name(), value) {
            ("pushfan_gateway_request_seconds", DebugValue::Histogram(samples)) => requests = samples.len(),
            (name, DebugValue::Counter(n)) if n > 0 && name.starts_with("pushfan_gateway_") => {
                counters.insert((name.to_owned(), outcome.unwrap_or_default()), n);
            }
            _ => {}
        }
    }
    let count = |name: &str, outcome: &str| counters.get(&(name.to_owned(), outcome.to_owned())).copied();
    // 7 accepted (two after a 429, one after two 500s), 2 answered 410 and 1 404.
    assert_eq!(count("pushfan_gateway_responses_total", "accepted"), Some(7));
    assert_eq!(count("pushfan_gateway_responses_total", "gone"), Some(3));
    assert_eq!(count("pushfan_gateway_responses_total", "throttled"), Some(2));
    assert_eq!(count("pushfan_gateway_responses_total", "retryable"), Some(2));
    assert_eq!(count("pushfan_gateway_deliveries_total", "accepted"), Some(7));
    assert_eq!(count("pushfan_gateway_deliveries_total", "gone"), Some(3));
    assert_eq!(count("pushfan_gateway_retries_total", ""), Some(4));
    // Both 429s may land before either pauses the origin, or one after the other.
    assert!(matches!(count("pushfan_gateway_origin_pauses_total", ""), Some(1 | 2)));
    assert_eq!(counters.len(), 8, "nothing else was counted: {counters:?}");
    assert_eq!(requests, 14);
}
