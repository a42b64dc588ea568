//! The load-test harness's `smoke` scenario, small, against a real `pushfan standalone` child
//! process: three push-service profiles with 404/410/429/500 mixed in, every message's VAPID
//! token verified and body decrypted. Correctness only; the timings it records are not checked.

use std::path::Path;

use pushfan_loadtest::{FleetNetwork, Mode, RunOptions, Scenario};

/// The package's directory as the test runner gives it at run time. The compile-time value may
/// name another clone: clones share one target directory, and cargo reuses a test binary that
/// an identical clone elsewhere built.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_delivers_exactly_once_and_prunes_the_gone() {
    let root = Path::new(&manifest_dir()).join("../..");
    let mut scenario = Scenario::from_file(&root.join("loadtest/scenarios/smoke.toml")).unwrap();
    scenario.subscribers = 2_000;
    // Enough of each fault that 2,000 subscribers surely meet every kind.
    for origin in &mut scenario.origins {
        origin.errors.throttle = origin.errors.throttle.max(0.01);
        origin.errors.fail = origin.errors.fail.max(0.01);
    }
    scenario.validate().unwrap();
    let options = RunOptions {
        mode: Mode::Spawn { binary: env!("CARGO_BIN_EXE_pushfan").into() },
        network: FleetNetwork::default(),
        peers_dir: root.join("loadtest/peers"),
        progress: false,
        ca_out: None,
    };
    let report = pushfan_loadtest::run(&scenario, &options).await.unwrap();
    let v = &report.verification;
    assert!(v.ok, "{:#?}", v.problems);

    // Every live subscriber got exactly one message, and nobody else got any.
    assert_eq!(v.subscribers_with_wrong_count, 0);
    assert_eq!(v.targeted, 2_000);
    assert_eq!(v.received_201, v.expected_201);
    assert_eq!(v.ledger_accepted, v.expected_201);
    assert_eq!(v.expected_201 + v.expected_gone, 2_000);
    // Each of them decrypted to the payload under a valid token.
    assert_eq!(v.decrypted, v.expected_201);
    assert_eq!(v.vapid_verified, v.expected_201);
    assert_eq!((v.vapid_failures, v.decrypt_failures, v.payload_mismatches), (0, 0, 0));
    // The gone ones were counted once and deleted from the store.
    assert!(v.expected_gone > 0);
    assert_eq!((v.ledger_gone, v.ledger_pruned), (v.expected_gone, v.expected_gone));
    assert_eq!(v.subscriptions_remaining, Some(2_000 - v.expected_gone));
    // The fault mix really happened, and retries got through it.
    for status in [404, 410, 429, 500] {
        assert!(
            report.latency.answers.get(&status).copied().unwrap_or(0) > 0,
            "no {status}: {:?}",
            report.latency.answers
        );
    }
    assert_eq!(report.latency.publish_to_201.count, v.expected_201);
    assert_eq!(report.latency.untagged_201, 0);
}
