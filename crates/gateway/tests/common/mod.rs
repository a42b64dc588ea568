//! Helpers shared by the gateway's test binaries: a simulated push service, a gateway for it,
//! a message and its encrypted deliveries.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use pushfan_gateway::{Delivery, Gateway, GatewayConfig, Message, Report, RetryPolicy};
use pushfan_pushsim::{Burst, FaultPlan, Population, PushSim, PushSimConfig, PushSimHandle, Selection};
use pushfan_webpush::vapid::{Subject, TokenCache, VapidKey, VapidSigner};
use pushfan_webpush::{encrypt, Backend, ContentEncoding, EgressPolicy, Padding, PushOptions};

pub(crate) const PAYLOAD: &[u8] = b"{\"title\":\"hello\"}";

pub(crate) fn message(ttl: u32) -> Message {
    let signer = VapidSigner::new(VapidKey::generate(), Subject::parse("mailto:ops@example.com").unwrap());
    Message {
        options: PushOptions { ttl, ..PushOptions::default() },
        expires_at: SystemTime::now() + Duration::from_secs(u64::from(ttl)),
        vapid: Arc::new(TokenCache::new(signer)),
    }
}

pub(crate) fn deliveries(sim: &PushSimHandle, count: u64) -> Vec<Delivery<u64>> {
    (0..count)
        .map(|i| {
            let encoding = if i % 5 == 4 { ContentEncoding::Aesgcm } else { ContentEncoding::Aes128gcm };
            encrypted_for(sim.population(), i, encoding)
        })
        .collect()
}

/// The test payload for `population`'s subscriber `tag`, encrypted with `encoding`.
pub(crate) fn encrypted_for(population: &Population, tag: u64, encoding: ContentEncoding) -> Delivery<u64> {
    let keys = population.keys(tag);
    let push = encrypt(Backend::AwsLc, keys.subscription_keys(), encoding, PAYLOAD, &Padding::None).unwrap();
    Delivery { tag, endpoint: population.endpoint(tag).unwrap(), push }
}

pub(crate) async fn start(count: u64, tls: bool, faults: FaultPlan) -> PushSimHandle {
    let mut config = PushSimConfig::new(Population::new(42u64, count));
    config.expected_payload = Some(bytes::Bytes::from_static(PAYLOAD));
    config.faults = faults;
    if tls {
        config = config.with_tls().unwrap();
    }
    PushSim::start(config).await.unwrap()
}

pub(crate) fn gateway(sim: &PushSimHandle, retry: RetryPolicy) -> Gateway {
    Gateway::new(GatewayConfig {
        extra_root_certs: sim.tls().map(|tls| vec![tls.ca_der().to_vec()]).unwrap_or_default(),
        plaintext_h2c: sim.tls().is_none(),
        max_in_flight_per_origin: 16,
        retry,
        egress: Arc::new(EgressPolicy::allow_loopback()),
        ..GatewayConfig::default()
    })
    .unwrap()
}

pub(crate) async fn send(
    gateway: &Gateway,
    message: &Message,
    deliveries: Vec<Delivery<u64>>,
) -> Vec<Report<u64>> {
    let mut reports: Vec<Report<u64>> = gateway.send_all(message, deliveries).collect().await;
    reports.sort_by_key(|r| r.tag);
    reports
}

pub(crate) fn fast_retries() -> RetryPolicy {
    RetryPolicy { base_delay: Duration::from_millis(20), ..RetryPolicy::default() }
}

/// Subscribers 1-2 are gone (410), 3 not found (404), 4-5 throttled once (429, Retry-After: 1),
/// 6 fails twice (500); the rest of the first 10 are accepted at once.
pub(crate) fn rfc8030_faults() -> FaultPlan {
    FaultPlan {
        gone: Selection::indices([1, 2]),
        not_found: Selection::indices([3]),
        throttle: Burst { selection: Selection::indices([4, 5]), first: 1 },
        retry_after_secs: 1,
        fail: Burst { selection: Selection::indices([6]), first: 2 },
        ..FaultPlan::default()
    }
}
