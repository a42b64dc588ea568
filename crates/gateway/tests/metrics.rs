//! The gateway's metrics, in their own test binary: it installs the process-wide recorder, which
//! no other test should share. Each origin registers its handles once; this checks that they
//! record into whatever recorder the process has, one count per response and per outcome.

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};

mod common;
use common::{deliveries, fast_retries, gateway, message, rfc8030_faults, send, start};

#[tokio::test]
async fn every_response_and_outcome_is_counted_once() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder in this binary");

    let sim = start(10, false, rfc8030_faults()).await;
    let gateway = gateway(&sim, fast_retries());
    let reports = send(&gateway, &message(3600), deliveries(&sim, 10)).await;
    assert_eq!(reports.len(), 10);

    let mut counters = HashMap::new();
    let mut requests = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let outcome = key
            .key()
            .labels()
            .find(|l| l.key() == "outcome" || l.key() == "class")
            .map(|l| l.value().to_owned());
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
    assert_eq!(count("pushfan_gateway_deliveries_total", "gone"), Some(2));
    assert_eq!(count("pushfan_gateway_deliveries_total", "not_found"), Some(1));
    // Failed requests by class: the 429s and the 500s (a 404/410 is the subscription's end,
    // not a failure of the push service).
    assert_eq!(count("pushfan_gateway_failures_total", "throttled"), Some(2));
    assert_eq!(count("pushfan_gateway_failures_total", "retryable"), Some(2));
    assert_eq!(count("pushfan_gateway_retries_total", ""), Some(4));
    // Both 429s may land before either pauses the origin, or one after the other.
    assert!(matches!(count("pushfan_gateway_origin_pauses_total", ""), Some(1 | 2)));
    assert_eq!(counters.len(), 11, "nothing else was counted: {counters:?}");
    assert_eq!(requests, 14);
}
