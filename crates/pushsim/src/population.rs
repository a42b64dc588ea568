//! The simulated subscribers: deterministic user-agent keys and endpoints derived from a seed.
//!
//! Subscriber `i`'s private key and auth secret are SHA-256 of a domain label, the seed and `i`,
//! so the push service, the load generator and the tests rebuild the same population from
//! `(seed, count)` alone and never ship keys around. Pure: no I/O, no clock, no randomness.

use std::fmt;
use std::ops::Range;

use pushfan_proto::v1::{SubscribeRequest, SubscriptionKeys};
use pushfan_webpush::{b64, Backend, Endpoint, EndpointPolicy, UserAgentKeys};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

const KEY_LABEL: &[u8] = b"pushfan-pushsim/v1/user-agent-key";
const AUTH_LABEL: &[u8] = b"pushfan-pushsim/v1/auth-secret";
const SEED_LABEL: &[u8] = b"pushfan-pushsim/v1/seed";

/// What is wrong with a population request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PopulationError {
    #[error("subscriber {index} is outside the population of {count}")]
    OutOfRange { index: u64, count: u64 },
    #[error("the population has no push-service origin to put in endpoints; call `with_origins`")]
    NoOrigin,
    #[error("`{0}` is not a usable push-service base URL (https anywhere, http on loopback only)")]
    BadOrigin(String),
}

/// 32 bytes that determine every key of a population.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seed([u8; 32]);

impl Seed {
    /// The raw seed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for Seed {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl From<u64> for Seed {
    /// A short seed for command lines, stretched to 32 bytes.
    fn from(seed: u64) -> Self {
        Self(Sha256::new().chain_update(SEED_LABEL).chain_update(seed.to_le_bytes()).finalize().into())
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Knowing the seed means reading every simulated message; show only a prefix.
        write!(f, "Seed({})", &b64::encode(&self.0)[..6])
    }
}

/// One simulated browser subscription.
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// Its index in the population; the last path segment of its endpoint.
    pub index: u64,
    /// The browser's private side; `keys.subscription_keys()` is what a sender encrypts for.
    pub keys: UserAgentKeys,
    /// Where senders POST to reach it.
    pub endpoint: Endpoint,
}

impl Subscriber {
    /// This subscriber as pushfan's `Subscribe` (and `BulkImport`) call takes it, created with
    /// VAPID key 1 and tagged with `topics`.
    pub fn subscribe_request(&self, topics: Vec<String>) -> SubscribeRequest {
        let keys = self.keys.subscription_keys();
        SubscribeRequest {
            endpoint: self.endpoint.as_str().to_owned(),
            keys: Some(SubscriptionKeys {
                p256dh: b64::encode(keys.p256dh()),
                auth: b64::encode(keys.auth()),
            }),
            topics,
            vapid_key_id: 1,
            ..SubscribeRequest::default()
        }
    }
}

/// `count` subscribers whose keys come from `seed`, with endpoints on one or more push-service
/// origins (subscriber `i` lives on origin `i % origins`).
#[derive(Clone, Debug)]
pub struct Population {
    seed: Seed,
    count: u64,
    /// Base URLs without a trailing slash: `https://127.0.0.1:8443` or `https://host/label`.
    origins: Vec<String>,
}

impl Population {
    /// A population with keys only; add origins with [`Population::with_origins`] for endpoints.
    pub fn new(seed: impl Into<Seed>, count: u64) -> Self {
        Self { seed: seed.into(), count, origins: Vec::new() }
    }

    /// Sets the push-service base URLs endpoints are made on; a path after the host acts as an
    /// origin label (`https://127.0.0.1:8443/fcm` gives `…/fcm/push/{i}`).
    pub fn with_origins<S: AsRef<str>>(mut self, base_urls: &[S]) -> Result<Self, PopulationError> {
        let mut origins = Vec::with_capacity(base_urls.len());
        for base in base_urls {
            let base = base.as_ref().trim_end_matches('/');
            // Validate once here so building each endpoint later cannot fail.
            Endpoint::parse(&format!("{base}/push/0"), &EndpointPolicy::allow_http_loopback())
                .map_err(|_| PopulationError::BadOrigin(base.to_owned()))?;
            origins.push(base.to_owned());
        }
        self.origins = origins;
        Ok(self)
    }

    /// The seed.
    pub fn seed(&self) -> Seed {
        self.seed
    }

    /// How many subscribers there are.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The base URLs endpoints are made on.
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// Subscriber `index`'s keys; defined for any index, in range or not. One P-256 base-point
    /// multiplication (about 20 µs).
    pub fn keys(&self, index: u64) -> UserAgentKeys {
        let digest = Sha256::new()
            .chain_update(AUTH_LABEL)
            .chain_update(self.seed.0)
            .chain_update(index.to_le_bytes())
            .finalize();
        let mut auth = [0; 16];
        auth.copy_from_slice(&digest[..16]);
        // A SHA-256 output is a valid P-256 scalar but for a chance of about 2^-32; on the rare
        // miss, the next counter value gives another candidate.
        let mut attempt: u32 = 0;
        loop {
            let private_key: [u8; 32] = Sha256::new()
                .chain_update(KEY_LABEL)
                .chain_update(self.seed.0)
                .chain_update(index.to_le_bytes())
                .chain_update(attempt.to_le_bytes())
                .finalize()
                .into();
            if let Ok(keys) = UserAgentKeys::from_private_key(Backend::AwsLc, private_key, auth) {
                return keys;
            }
            attempt += 1;
        }
    }

    /// Subscriber `index`'s endpoint URL.
    pub fn endpoint(&self, index: u64) -> Result<Endpoint, PopulationError> {
        self.check(index)?;
        let base = self.origins.get((index % self.origins.len().max(1) as u64) as usize);
        let base = base.ok_or(PopulationError::NoOrigin)?;
        let url = format!("{base}/push/{index}");
        Ok(Endpoint::parse(&url, &EndpointPolicy::allow_http_loopback())
            .expect("the origin was validated in with_origins and a decimal index keeps it valid"))
    }

    /// Subscriber `index`, keys and endpoint.
    pub fn subscriber(&self, index: u64) -> Result<Subscriber, PopulationError> {
        let endpoint = self.endpoint(index)?;
        Ok(Subscriber { index, keys: self.keys(index), endpoint })
    }

    /// The subscribers in `range`, derived in parallel: callers walk a large population a chunk
    /// at a time instead of holding it all.
    pub fn subscribers(&self, range: Range<u64>) -> Result<Vec<Subscriber>, PopulationError> {
        if range.end > self.count {
            return Err(PopulationError::OutOfRange { index: range.end - 1, count: self.count });
        }
        range.into_par_iter().map(|i| self.subscriber(i)).collect()
    }

    /// The whole population in consecutive chunks of `chunk_len` (the last may be shorter).
    pub fn chunks(&self, chunk_len: u64) -> impl Iterator<Item = Range<u64>> + '_ {
        let chunk_len = chunk_len.max(1);
        (0..self.count.div_ceil(chunk_len)).map(move |c| c * chunk_len..((c + 1) * chunk_len).min(self.count))
    }

    /// Subscriber `index` as the browser's `PushSubscription.toJSON()` gives it.
    pub fn subscription_json(&self, index: u64) -> Result<String, PopulationError> {
        let subscriber = self.subscriber(index)?;
        Ok(subscription_json(&subscriber))
    }

    fn check(&self, index: u64) -> Result<(), PopulationError> {
        if index >= self.count {
            return Err(PopulationError::OutOfRange { index, count: self.count });
        }
        Ok(())
    }
}

/// `{"endpoint": …, "expirationTime": null, "keys": {"p256dh": …, "auth": …}}`.
pub fn subscription_json(subscriber: &Subscriber) -> String {
    let keys = subscriber.keys.subscription_keys();
    serde_json::json!({
        "endpoint": subscriber.endpoint.as_str(),
        "expirationTime": null,
        "keys": { "p256dh": b64::encode(keys.p256dh()), "auth": b64::encode(keys.auth()) },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use pushfan_webpush::{encrypt, ContentEncoding, Padding, PushSubscription};

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_keys_and_indices_differ() {
        let a = Population::new(42, 10);
        let b = Population::new(42, 10);
        assert_eq!(a.keys(3).private_key(), b.keys(3).private_key());
        assert_eq!(a.keys(3).subscription_keys(), b.keys(3).subscription_keys());
        assert_ne!(a.keys(3).subscription_keys(), a.keys(4).subscription_keys());
        assert_ne!(a.keys(3).subscription_keys().auth(), a.keys(4).subscription_keys().auth());
        let other = Population::new(43, 10);
        assert_ne!(a.keys(3).subscription_keys(), other.keys(3).subscription_keys());
        assert_eq!(Seed::from(42), Seed::from(42));
        assert_ne!(Seed::from(42).as_bytes(), &[0; 32]);
    }

    #[test]
    fn derived_keys_decrypt_what_is_encrypted_for_them() {
        let keys = Population::new([7; 32], 1).keys(0);
        let push = encrypt(
            Backend::AwsLc,
            keys.subscription_keys(),
            ContentEncoding::Aes128gcm,
            b"hello",
            &Padding::None,
        )
        .unwrap();
        assert_eq!(keys.decrypt(Backend::AwsLc, push.encoding, &push.body, None).unwrap(), b"hello");
    }

    #[test]
    fn endpoints_spread_over_origins_and_round_trip_as_subscription_json() {
        let population = Population::new(1, 5)
            .with_origins(&["https://127.0.0.1:8443", "http://localhost:9000/fcm/"])
            .unwrap();
        assert_eq!(population.endpoint(2).unwrap().as_str(), "https://127.0.0.1:8443/push/2");
        assert_eq!(population.endpoint(3).unwrap().as_str(), "http://localhost:9000/fcm/push/3");

        let json = population.subscription_json(3).unwrap();
        let parsed = PushSubscription::parse(&json, &EndpointPolicy::allow_http_loopback()).unwrap();
        assert_eq!(parsed.endpoint, population.endpoint(3).unwrap());
        assert_eq!(&parsed.keys, population.keys(3).subscription_keys());
        assert_eq!(parsed.expiration_time, None);
        assert!(json.contains(r#""expirationTime":null"#));
    }

    #[test]
    fn ranges_and_origins_are_checked() {
        let keys_only = Population::new(1, 5);
        assert_eq!(keys_only.endpoint(0).unwrap_err(), PopulationError::NoOrigin);
        let population = keys_only.with_origins(&["https://127.0.0.1:1"]).unwrap();
        assert_eq!(population.endpoint(5).unwrap_err(), PopulationError::OutOfRange { index: 5, count: 5 });
        assert_eq!(
            population.subscribers(3..6).unwrap_err(),
            PopulationError::OutOfRange { index: 5, count: 5 }
        );
        assert_eq!(
            Population::new(1, 1).with_origins(&["http://example.com"]).unwrap_err(),
            PopulationError::BadOrigin("http://example.com".into())
        );
    }

    #[test]
    fn chunks_cover_the_population_once_and_subscribers_match_one_by_one() {
        let population = Population::new(9, 10).with_origins(&["https://127.0.0.1:1"]).unwrap();
        let chunks: Vec<_> = population.chunks(4).collect();
        assert_eq!(chunks, vec![0..4, 4..8, 8..10]);
        let batch = population.subscribers(4..8).unwrap();
        assert_eq!(batch.iter().map(|s| s.index).collect::<Vec<_>>(), vec![4, 5, 6, 7]);
        for subscriber in &batch {
            let single = population.subscriber(subscriber.index).unwrap();
            assert_eq!(single.keys.subscription_keys(), subscriber.keys.subscription_keys());
            assert_eq!(single.endpoint, subscriber.endpoint);
        }
        assert_eq!(Population::new(9, 0).chunks(4).count(), 0);
    }
}
