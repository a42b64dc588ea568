//! Scenarios: what a load test does, read from TOML (`loadtest/scenarios/*.toml`). Unknown keys
//! and out-of-range values are refused with the key's name, so a typo never runs a different
//! test than the one written down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pushfan_pushsim::{Burst, FaultPlan, Latency, LogNormal, Profile, Selection};
use serde::{Deserialize, Serialize};

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("reading scenario {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped keys.
    #[error("scenario {path}: {source}")]
    Parse {
        /// The file (or `<inline>`).
        path: PathBuf,
        /// What serde said, with the key and line.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("scenario `{scenario}`: {key}: {problem}")]
    Invalid {
        /// The scenario's name.
        scenario: String,
        /// The offending key, e.g. `origins[1].errors.gone`.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// One load test.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in result file names.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Seed of the subscribers' keys and of every fraction's choice.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// How many subscribers to import.
    pub subscribers: u64,
    /// Topic name → fraction of subscribers tagged with it.
    #[serde(default)]
    pub topics: BTreeMap<String, f64>,
    /// The broadcasts to send.
    pub publish: PublishSpec,
    /// What the push services verify.
    #[serde(default)]
    pub check: CheckSpec,
    /// The simulated push services; subscriber `i` lives on origin `i % origins.len()`.
    pub origins: Vec<OriginSpec>,
    /// Settings merged into the generated pushfan config (spawn mode), e.g.
    /// `[pushfan.gateway] max_in_flight_per_origin = 512`; pushfan refuses unknown keys.
    #[serde(default)]
    pub pushfan: toml::Table,
    /// Peer programs to compare with (the `compare` scenario).
    #[serde(default)]
    pub compare: Option<CompareSpec>,
}

fn default_seed() -> u64 {
    2026
}

/// `[publish]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSpec {
    /// Plaintext bytes per message (at most 3993: 4096 on the wire with aes128gcm).
    pub payload_bytes: usize,
    /// How many broadcasts.
    #[serde(default = "one")]
    pub broadcasts: u32,
    /// Broadcasts started per second; 0 sends each after the previous one finished.
    #[serde(default)]
    pub rate_per_sec: f64,
    /// `everyone`; `topic:<name>` with a topic from `[topics]`; or `single`: broadcast `k` goes
    /// to subscriber `k % subscribers` alone, by subscription id (latency of one-off pushes).
    #[serde(default = "everyone")]
    pub target: String,
    /// The messages' TTL.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u32,
}

fn one() -> u32 {
    1
}

fn everyone() -> String {
    "everyone".into()
}

fn default_ttl() -> u32 {
    300
}

/// `[check]`: one request in N is verified; 1 checks all, 0 none.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// VAPID token verification.
    #[serde(default = "one")]
    pub vapid_one_in: u32,
    /// Decryption, compared with the payload sent.
    #[serde(default = "one")]
    pub decrypt_one_in: u32,
}

impl Default for CheckSpec {
    fn default() -> Self {
        Self { vapid_one_in: 1, decrypt_one_in: 1 }
    }
}

/// `[[origins]]`: one simulated push service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSpec {
    /// Its name in results.
    pub name: String,
    /// `generic`, `fcm`, `mozilla` or `apple`.
    #[serde(default = "generic")]
    pub profile: String,
    /// HTTP/2 streams per connection the service allows.
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    /// How long answers take.
    #[serde(default)]
    pub latency: LatencySpec,
    /// Which subscribers get which errors.
    #[serde(default)]
    pub errors: ErrorSpec,
}

fn generic() -> String {
    "generic".into()
}

/// `latency = { … }` in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    /// Always waited.
    #[serde(default)]
    pub base_ms: f64,
    /// Median of the log-normal jitter (0: none).
    #[serde(default)]
    pub jitter_median_ms: f64,
    /// Its shape.
    #[serde(default = "default_sigma")]
    pub jitter_sigma: f64,
    /// Fraction of slow answers.
    #[serde(default)]
    pub slow_fraction: f64,
    /// Their extra wait.
    #[serde(default)]
    pub slow_ms: f64,
}

fn default_sigma() -> f64 {
    0.5
}

/// `errors = { … }`: fractions of this origin's subscribers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorSpec {
    /// Answered 410 on every request (unsubscribed browsers).
    #[serde(default)]
    pub gone: f64,
    /// Answered 404 on every request (expired, FCM style).
    #[serde(default)]
    pub not_found: f64,
    /// Their first `throttle_first` requests answered 429 with `Retry-After`.
    #[serde(default)]
    pub throttle: f64,
    /// How many 429s each throttled subscriber gets.
    #[serde(default = "one")]
    pub throttle_first: u32,
    /// The `Retry-After` seconds.
    #[serde(default = "one")]
    pub retry_after_secs: u32,
    /// Their first `fail_first` requests (after any 429s) answered 500.
    #[serde(default)]
    pub fail: f64,
    /// How many 500s each failing subscriber gets.
    #[serde(default = "one")]
    pub fail_first: u32,
}

impl Default for ErrorSpec {
    fn default() -> Self {
        Self {
            gone: 0.0,
            not_found: 0.0,
            throttle: 0.0,
            throttle_first: 1,
            retry_after_secs: 1,
            fail: 0.0,
            fail_first: 1,
        }
    }
}

/// `[compare]`: the same broadcast sent by peer programs (`loadtest/peers/<name>/run`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    /// Peer directory names under `loadtest/peers/`.
    pub peers: Vec<String>,
    /// Requests in flight for each peer.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
}

fn default_concurrency() -> u32 {
    100
}

/// Largest plaintext that still fits the 4096-byte body limit with aes128gcm (86 bytes of header
/// and 17 of padding delimiter and tag).
pub const MAX_PAYLOAD_BYTES: usize = 3993;

/// What a broadcast is sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every subscriber.
    Everyone,
    /// The members of a topic.
    Topic(String),
    /// One subscriber per broadcast, in turn.
    Single,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates scenario text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text)
            .map_err(|source| ScenarioError::Parse { path: path.to_owned(), source: Box::new(source) })?;
        scenario.validate()?;
        Ok(scenario)
    }

    fn invalid(&self, key: impl Into<String>, problem: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid { scenario: self.name.clone(), key: key.into(), problem: problem.into() }
    }

    /// Checks ranges serde cannot.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.subscribers == 0 {
            return Err(self.invalid("subscribers", "must be at least 1"));
        }
        let payload = self.publish.payload_bytes;
        if payload == 0 || payload > MAX_PAYLOAD_BYTES {
            return Err(self.invalid(
                "publish.payload_bytes",
                format!("must be 1 to {MAX_PAYLOAD_BYTES}, got {payload}"),
            ));
        }
        if self.publish.broadcasts == 0 {
            return Err(self.invalid("publish.broadcasts", "must be at least 1"));
        }
        if !(self.publish.rate_per_sec >= 0.0 && self.publish.rate_per_sec.is_finite()) {
            return Err(self.invalid("publish.rate_per_sec", "must be a finite number ≥ 0"));
        }
        if let Target::Topic(topic) = self.target()? {
            if !self.topics.contains_key(&topic) {
                return Err(self.invalid("publish.target", format!("topic `{topic}` is not in [topics]")));
            }
        }
        for (topic, fraction) in &self.topics {
            check_fraction(*fraction).map_err(|p| self.invalid(format!("topics.{topic}"), p))?;
        }
        if self.origins.is_empty() {
            return Err(self.invalid("origins", "name at least one simulated push service"));
        }
        for (i, origin) in self.origins.iter().enumerate() {
            let key = |k: &str| format!("origins[{i}] ({}).{k}", origin.name);
            origin.profile.parse::<Profile>().map_err(|e| self.invalid(key("profile"), e.to_string()))?;
            if origin.max_concurrent_streams == Some(0) {
                return Err(self.invalid(key("max_concurrent_streams"), "must be at least 1"));
            }
            let l = &origin.latency;
            for (name, value) in [
                ("latency.base_ms", l.base_ms),
                ("latency.jitter_median_ms", l.jitter_median_ms),
                ("latency.slow_ms", l.slow_ms),
                ("latency.jitter_sigma", l.jitter_sigma),
            ] {
                if !(0.0..3_600_000.0).contains(&value) {
                    return Err(self.invalid(key(name), format!("must be 0 to 3600000, got {value}")));
                }
            }
            check_fraction(l.slow_fraction).map_err(|p| self.invalid(key("latency.slow_fraction"), p))?;
            let e = &origin.errors;
            for (name, value) in [
                ("errors.gone", e.gone),
                ("errors.not_found", e.not_found),
                ("errors.throttle", e.throttle),
                ("errors.fail", e.fail),
            ] {
                check_fraction(value).map_err(|p| self.invalid(key(name), p))?;
            }
        }
        if let Some(compare) = &self.compare {
            if compare.peers.is_empty() {
                return Err(self.invalid("compare.peers", "name at least one peer"));
            }
            if let Some(bad) = compare.peers.iter().find(|p| {
                p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }) {
                return Err(self.invalid("compare.peers", format!("`{bad}` is not a peer directory name")));
            }
            if compare.concurrency == 0 {
                return Err(self.invalid("compare.concurrency", "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The broadcasts' target.
    pub fn target(&self) -> Result<Target, ScenarioError> {
        match self.publish.target.as_str() {
            "everyone" => Ok(Target::Everyone),
            "single" => Ok(Target::Single),
            other => match other.strip_prefix("topic:") {
                Some(topic) if !topic.is_empty() => Ok(Target::Topic(topic.to_owned())),
                _ => Err(self.invalid(
                    "publish.target",
                    format!("`{other}` is not `everyone`, `single` or `topic:<name>`"),
                )),
            },
        }
    }

    /// Whether subscriber `index` is tagged with `topic`.
    pub fn is_member(&self, topic: &str, index: u64) -> bool {
        self.topics.get(topic).is_some_and(|&fraction| self.topic_selection(topic, fraction).contains(index))
    }

    fn topic_selection(&self, topic: &str, fraction: f64) -> Selection {
        Selection::fraction(fraction, self.seed ^ salt_of(topic))
    }

    /// The topics subscriber `index` is tagged with.
    pub fn topics_of(&self, index: u64) -> Vec<String> {
        self.topics
            .iter()
            .filter(|(topic, &fraction)| self.topic_selection(topic, fraction).contains(index))
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// The fault plan of origin `origin` (index into `origins`). Each fault kind draws its own
    /// subscribers: salts differ per origin and per kind.
    pub fn fault_plan(&self, origin: usize) -> FaultPlan {
        let e = &self.origins[origin].errors;
        let salt = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(origin as u64 * 16);
        FaultPlan {
            gone: fraction(e.gone, salt),
            not_found: fraction(e.not_found, salt + 1),
            throttle: Burst { selection: fraction(e.throttle, salt + 2), first: e.throttle_first },
            retry_after_secs: e.retry_after_secs,
            fail: Burst { selection: fraction(e.fail, salt + 3), first: e.fail_first },
            delay: Duration::ZERO,
            garbled: Selection::None,
        }
    }

    /// Origin `origin`'s profile (validated already).
    pub fn profile(&self, origin: usize) -> Profile {
        self.origins[origin].profile.parse().unwrap_or_default()
    }

    /// Origin `origin`'s latency model.
    pub fn latency(&self, origin: usize) -> Latency {
        let l = &self.origins[origin].latency;
        let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
        Latency {
            base: ms(l.base_ms),
            jitter: (l.jitter_median_ms > 0.0)
                .then(|| LogNormal { median: ms(l.jitter_median_ms), sigma: l.jitter_sigma }),
            slow_fraction: l.slow_fraction,
            slow: ms(l.slow_ms),
        }
    }
}

fn fraction(value: f64, salt: u64) -> Selection {
    if value > 0.0 {
        Selection::fraction(value, salt)
    } else {
        Selection::None
    }
}

/// A stable salt per topic name, so memberships do not depend on the order of `[topics]`.
fn salt_of(topic: &str) -> u64 {
    topic
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

fn check_fraction(value: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("must be a fraction from 0 to 1, got {value}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
subscribers = 100
[publish]
payload_bytes = 10
[[origins]]
name = "a"
"#;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn a_minimal_scenario_gets_defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!((s.publish.broadcasts, s.check.decrypt_one_in, s.seed), (1, 1, 2026));
        assert_eq!(s.target().unwrap(), Target::Everyone);
        assert_eq!(s.profile(0), Profile::Generic);
        assert!(s.latency(0).is_zero());
        assert_eq!(s.fault_plan(0).gone, Selection::None);
    }

    #[test]
    fn typos_and_bad_values_name_the_key() {
        let typo = parse(&MINIMAL.replace("payload_bytes", "payload_byte")).unwrap_err().to_string();
        assert!(typo.contains("payload_byte"), "{typo}");
        let big = parse(&MINIMAL.replace("= 10", "= 5000")).unwrap_err().to_string();
        assert!(big.contains("publish.payload_bytes"), "{big}");
        let gone = parse(&format!("{MINIMAL}errors = {{ gone = 1.5 }}\n")).unwrap_err().to_string();
        assert!(gone.contains("origins[0] (a).errors.gone"), "{gone}");
        let profile = parse(&format!("{MINIMAL}profile = \"gcm\"\n")).unwrap_err().to_string();
        assert!(profile.contains("unknown push-service profile `gcm`"), "{profile}");
        let topic =
            parse(&MINIMAL.replace("payload_bytes = 10", "payload_bytes = 10\ntarget = \"topic:news\""))
                .unwrap_err()
                .to_string();
        assert!(topic.contains("topic `news` is not in [topics]"), "{topic}");
    }

    #[test]
    fn topic_memberships_are_deterministic_fractions() {
        let s = parse(&format!("{MINIMAL}[topics]\nnews = 0.25\n")).unwrap();
        let members = (0..10_000).filter(|&i| s.is_member("news", i)).count();
        assert!((2_200..2_800).contains(&members), "{members}");
        assert_eq!(s.topics_of(3).len(), usize::from(s.is_member("news", 3)));
        assert!(!s.is_member("sports", 3));
    }

    /// The package's directory as the test runner gives it at run time. The compile-time value may
    /// name another clone: clones share one target directory, and cargo reuses a test binary that
    /// an identical clone elsewhere built.
    fn manifest_dir() -> String {
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
    }

    #[test]
    fn every_shipped_scenario_is_valid() {
        let dir = Path::new(&manifest_dir()).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen >= 6, "{seen} scenarios");
    }
}
