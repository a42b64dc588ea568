//! The store's vocabulary: tenants, topics, subscription ids and records, audiences, scan cursors.
//!
//! Pure data with validation; no I/O. The browser-facing types (`Endpoint`, `SubscriptionKeys`)
//! come from `pushfan-webpush` and are already validated when they get here.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pushfan_webpush::{Endpoint, PushSubscription, SubscriptionKeys};
use sha2::{Digest, Sha256};

use crate::error::StoreError;

/// Longest tenant or topic name, in bytes. Names are part of every key, so they stay short.
pub const MAX_NAME_LEN: usize = 64;

/// Most topics one subscription may be tagged with; the record stores them inline.
pub const MAX_TOPICS_PER_SUBSCRIPTION: usize = 32;

/// A tenant: the isolation boundary. Every key the store writes starts with the tenant, so one
/// tenant's calls can never see another's subscriptions.
///
/// 1 to 64 bytes of `[A-Za-z0-9._-]`: no braces (Redis hash tags) and no separators, so the key
/// schema stays unambiguous. Cloning is cheap (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Validates a tenant name.
    pub fn new(name: &str) -> Result<Self, StoreError> {
        validate_name("tenant", name, |b| b.is_ascii_alphanumeric() || b"._-".contains(&b))?;
        Ok(Self(name.into()))
    }

    /// The tenant's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A topic (tag) a subscription can be a member of. The implicit "everyone" audience is not a
/// topic; see [`Audience`].
///
/// 1 to 64 bytes of `[A-Za-z0-9._:/-]`. Cloning is cheap (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates a topic name.
    pub fn new(name: &str) -> Result<Self, StoreError> {
        validate_name("topic", name, |b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))?;
        Ok(Self(name.into()))
    }

    /// The topic's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_name(kind: &'static str, name: &str, allowed: impl Fn(u8) -> bool) -> Result<(), StoreError> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_NAME_LEN {
        "is longer than 64 bytes"
    } else if !name.bytes().all(allowed) {
        "contains a character outside the allowed set"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidName { kind, name: name.chars().take(MAX_NAME_LEN).collect(), reason })
}

macro_rules! display_as_str {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), &*self.0)
            }
        }
    )*};
}
display_as_str!(TenantId, Topic);

/// A subscription's stable id: the first 14 bytes of SHA-256 of its endpoint URL.
///
/// Derived, not assigned, so importing the same endpoint twice updates one record instead of
/// creating a duplicate. It reveals nothing usable about the endpoint and is safe to log.
///
/// Why 14 bytes and not 16: Redis stores a hash field of up to 14 bytes in a 16-byte allocation
/// and 15 to 30 bytes in a 32-byte one, so two bytes less saves 16 bytes of Redis memory per
/// subscription (measured: 297 → 281 bytes). 112 bits still make a collision among a billion
/// endpoints of one tenant a 1-in-10^16 event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId([u8; SubscriptionId::LEN]);

impl SubscriptionId {
    /// Length of an id in bytes.
    pub const LEN: usize = 14;

    /// The id of the subscription at `endpoint`.
    pub fn for_endpoint(endpoint: &Endpoint) -> Self {
        let digest = Sha256::digest(endpoint.as_str().as_bytes());
        let mut id = [0; Self::LEN];
        id.copy_from_slice(&digest[..Self::LEN]);
        Self(id)
    }

    /// Wraps raw id bytes, e.g. read back from a key.
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// The raw id bytes.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// Reads the lowercase or uppercase hex form that `Display` writes (how ids travel on the bus).
    pub fn parse_hex(hex: &str) -> Result<Self, StoreError> {
        let invalid = || StoreError::InvalidId(hex.chars().take(2 * Self::LEN + 2).collect());
        // `from_str_radix` alone would also accept a sign.
        if hex.len() != 2 * Self::LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let mut id = [0; Self::LEN];
        for (byte, at) in id.iter_mut().zip((0..hex.len()).step_by(2)) {
            *byte = u8::from_str_radix(&hex[at..at + 2], 16).map_err(|_| invalid())?;
        }
        Ok(Self(id))
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One write instead of one `{:02x}` per byte: every delivery on the bus carries an id.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 2 * Self::LEN];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        f.write_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubscriptionId({self})")
    }
}

/// The content encodings a subscription's user agent supports, as a small bitset.
///
/// `aes128gcm` (RFC 8291) is the standard; `aesgcm` is the legacy draft encoding some older
/// browsers still require.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ContentEncodings(u8);

impl ContentEncodings {
    /// No encoding known.
    pub const NONE: Self = Self(0);
    /// RFC 8291 `aes128gcm`.
    pub const AES128GCM: Self = Self(1);
    /// The legacy draft `aesgcm`.
    pub const AESGCM: Self = Self(2);
    const ALL_BITS: u8 = 0b11;

    /// Both members of `self` and of `other`.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every encoding in `other` is supported.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) const fn bits(self) -> u8 {
        self.0
    }

    /// `None` when `bits` has a bit no encoding owns (a record from a newer format).
    pub(crate) const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::ALL_BITS == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }
}

impl fmt::Debug for ContentEncodings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut set = f.debug_set();
        if self.contains(Self::AES128GCM) {
            set.entry(&"aes128gcm");
        }
        if self.contains(Self::AESGCM) {
            set.entry(&"aesgcm");
        }
        set.finish()
    }
}

/// Which VAPID key pair a subscription was created with (its `applicationServerKey`). Kept so
/// keys can rotate: a subscription must be sent to with the key it was created with.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, PartialOrd, Ord)]
pub struct VapidKeyId(pub u32);

/// A point in time at the store's resolution: whole seconds since the Unix epoch, as a `u32`
/// (good until 2106). Records keep times this way to stay small.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, PartialOrd, Ord)]
pub struct UnixSeconds(pub u32);

impl UnixSeconds {
    /// Rounds `time` down to the second; times before 1970 become 0, after 2106 saturate.
    pub fn from_system_time(time: SystemTime) -> Self {
        let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self(u32::try_from(secs).unwrap_or(u32::MAX))
    }

    /// The same instant as a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::from(self.0))
    }
}

/// One subscriber of one tenant: everything a worker needs to encrypt and send to it, plus the
/// bookkeeping the store keeps about deliveries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Derived from the endpoint; see [`SubscriptionId`].
    pub id: SubscriptionId,
    /// The tenant the subscription belongs to.
    pub tenant: TenantId,
    /// Where to send; a secret (its `Debug` is redacted).
    pub endpoint: Endpoint,
    /// The user agent's `p256dh` and `auth`.
    pub keys: SubscriptionKeys,
    /// Supported content encodings.
    pub encodings: ContentEncodings,
    /// The VAPID key the subscription was created with.
    pub vapid_key: VapidKeyId,
    /// Topics the subscription is a member of, sorted and without duplicates.
    pub topics: Vec<Topic>,
    /// When the subscription was first stored.
    pub created_at: UnixSeconds,
    /// The last delivery the push service accepted, if any.
    pub last_success_at: Option<UnixSeconds>,
    /// Failed deliveries since the last success (saturates at `u16::MAX`).
    pub consecutive_failures: u16,
    /// When the push service expires the subscription (the Push API's `expirationTime`),
    /// milliseconds since the Unix epoch; `None` when it named no time, as most browsers do.
    pub expiration_time_ms: Option<u64>,
}

impl Subscription {
    /// A new subscription with no deliveries yet; the id is derived from the endpoint.
    ///
    /// Topics are sorted and deduplicated; more than [`MAX_TOPICS_PER_SUBSCRIPTION`] is an error.
    pub fn new(
        tenant: TenantId,
        subscription: PushSubscription,
        encodings: ContentEncodings,
        vapid_key: VapidKeyId,
        mut topics: Vec<Topic>,
        created_at: UnixSeconds,
    ) -> Result<Self, StoreError> {
        topics.sort();
        topics.dedup();
        if topics.len() > MAX_TOPICS_PER_SUBSCRIPTION {
            return Err(StoreError::TooManyTopics { count: topics.len() });
        }
        Ok(Self {
            id: SubscriptionId::for_endpoint(&subscription.endpoint),
            tenant,
            endpoint: subscription.endpoint,
            keys: subscription.keys,
            encodings,
            vapid_key,
            topics,
            created_at,
            last_success_at: None,
            consecutive_failures: 0,
            expiration_time_ms: subscription.expiration_time,
        })
    }

    /// Whether the push service has expired the subscription by `now`: nothing sent to it can
    /// arrive any more.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expiration_time_ms.is_some_and(|expires| UNIX_EPOCH + Duration::from_millis(expires) <= now)
    }

    /// Whether the subscription is a member of `audience`.
    pub fn is_in(&self, audience: &Audience) -> bool {
        match audience {
            Audience::Everyone => true,
            Audience::Topic(topic) => self.topics.binary_search(topic).is_ok(),
        }
    }
}

/// Who a broadcast goes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Audience {
    /// Every subscription of the tenant: an implicit topic everybody is a member of.
    Everyone,
    /// The members of one topic.
    Topic(Topic),
}

/// How a delivery to one subscription ended, as far as the store cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryResult {
    /// The push service accepted the message (201).
    Delivered,
    /// The attempt failed (but the subscription is not gone; on 404/410 call `remove`).
    Failed,
}

/// One delivery outcome to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryOutcome {
    /// Which subscription.
    pub id: SubscriptionId,
    /// How it went.
    pub result: DeliveryResult,
}

/// Where a shard scan continues. Opaque; [`ScanCursor::to_bytes`] and
/// [`ScanCursor::from_bytes`] carry it across processes (e.g. inside a shard job on the bus).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ScanCursor(pub(crate) CursorPosition);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub(crate) enum CursorPosition {
    /// The beginning of the shard.
    #[default]
    Start,
    /// A Redis `HSCAN`/`SSCAN` cursor without the server that issued it, as written before
    /// cursors carried it. Trusted as it is: it resumes where it says.
    Redis(u64),
    /// A Redis `HSCAN`/`SSCAN` cursor and the `run_id` of the server process that issued it.
    /// The cursor means something only to that process: a restarted Redis (or another cluster
    /// node) iterates the hash in another order, so the scan starts the shard again instead.
    RedisAt { cursor: u64, run: RedisRunId },
    /// The embedded store continues after this id (ids are scanned in order).
    After(SubscriptionId),
}

impl ScanCursor {
    /// The beginning of a shard.
    pub const START: Self = Self(CursorPosition::Start);

    /// A compact byte form: a tag byte, then the position.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self.0 {
            CursorPosition::Start => vec![0],
            CursorPosition::Redis(cursor) => [&[1][..], &cursor.to_be_bytes()].concat(),
            CursorPosition::After(id) => [&[2][..], id.as_bytes()].concat(),
            CursorPosition::RedisAt { cursor, run } => [&[3][..], &cursor.to_be_bytes(), &run.0].concat(),
        }
    }

    /// Reads what [`ScanCursor::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let position = match bytes {
            [0] => CursorPosition::Start,
            [1, rest @ ..] => CursorPosition::Redis(u64::from_be_bytes(
                rest.try_into().map_err(|_| StoreError::InvalidCursor)?,
            )),
            [2, rest @ ..] => CursorPosition::After(SubscriptionId::from_bytes(
                rest.try_into().map_err(|_| StoreError::InvalidCursor)?,
            )),
            [3, rest @ ..] if rest.len() == 8 + RedisRunId::LEN => {
                let (cursor, run) = rest.split_at(8);
                CursorPosition::RedisAt {
                    cursor: u64::from_be_bytes(cursor.try_into().map_err(|_| StoreError::InvalidCursor)?),
                    run: RedisRunId(run.try_into().map_err(|_| StoreError::InvalidCursor)?),
                }
            }
            _ => return Err(StoreError::InvalidCursor),
        };
        Ok(Self(position))
    }
}

/// A Redis server process's `run_id` (40 hex digits in `INFO server`), as its 20 bytes. A new
/// one is drawn at every start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RedisRunId(pub(crate) [u8; RedisRunId::LEN]);

impl RedisRunId {
    pub(crate) const LEN: usize = 20;

    /// Reads the 40 hex digits of a `run_id`.
    pub(crate) fn parse_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 2 * Self::LEN {
            return None;
        }
        let mut bytes = [0; Self::LEN];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16);
            *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(Self(bytes))
    }
}

/// One page of a shard scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    /// Full records, ready to encrypt for.
    pub subscriptions: Vec<Subscription>,
    /// Where to continue; `None` when the shard is done.
    pub next: Option<ScanCursor>,
    /// What the scan saw, for recording these subscriptions' outcomes more cheaply (see
    /// [`crate::SubscriptionStore::record_outcomes`]); `None` from stores without the use.
    pub stamp: Option<ScanStamp>,
}

/// When a scan read its page, in the terms of the store that made it: the embedded store's
/// count of deletions, which lets it take a page's subscriptions as still there while nothing
/// has been deleted since. Meaningful only to the store instance that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanStamp {
    pub(crate) store: u64,
    pub(crate) deletions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_the_reason_is_given() {
        assert_eq!(TenantId::new("acme-prod_1.eu").unwrap().as_str(), "acme-prod_1.eu");
        for bad in ["", "a{b}", "a:b", "ä", &"x".repeat(65)] {
            let err = TenantId::new(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidName { kind: "tenant", .. }), "{bad}: {err}");
        }
        assert!(Topic::new("news/sport:eu").is_ok());
        assert!(matches!(Topic::new("a b"), Err(StoreError::InvalidName { kind: "topic", .. })));
    }

    #[test]
    fn ids_are_stable_per_endpoint() {
        let policy = pushfan_webpush::EndpointPolicy::default();
        let a = Endpoint::parse("https://push.example/a", &policy).unwrap();
        let b = Endpoint::parse("https://push.example/b", &policy).unwrap();
        assert_eq!(SubscriptionId::for_endpoint(&a), SubscriptionId::for_endpoint(&a.clone()));
        assert_ne!(SubscriptionId::for_endpoint(&a), SubscriptionId::for_endpoint(&b));
        // The first 14 bytes of SHA-256("https://push.example/a").
        let id = SubscriptionId::for_endpoint(&a);
        assert_eq!(id.to_string(), "378f13c84514cc9b2fdf033f09ee");
        assert_eq!(SubscriptionId::parse_hex(&id.to_string()).unwrap(), id);
        assert_eq!(SubscriptionId::parse_hex("378F13C84514CC9B2FDF033F09EE").unwrap(), id);
        for bad in [
            "",
            "378f13c84514cc9b2fdf033f09e",
            "378f13c84514cc9b2fdf033f09eg",
            "+78f13c84514cc9b2fdf033f09ee",
        ] {
            assert!(matches!(SubscriptionId::parse_hex(bad), Err(StoreError::InvalidId(_))), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_through_bytes() {
        let id = SubscriptionId::from_bytes([7; SubscriptionId::LEN]);
        let run = RedisRunId::parse_hex("0123456789abcdef0123456789ABCDEF01234567").unwrap();
        for cursor in [
            ScanCursor::START,
            ScanCursor(CursorPosition::Redis(42)),
            ScanCursor(CursorPosition::After(id)),
            ScanCursor(CursorPosition::RedisAt { cursor: 42, run }),
        ] {
            assert_eq!(ScanCursor::from_bytes(&cursor.to_bytes()).unwrap(), cursor);
        }
        for bad in [&[][..], &[1, 2, 3], &[9], &[3; 28], &[3; 30]] {
            assert!(matches!(ScanCursor::from_bytes(bad), Err(StoreError::InvalidCursor)));
        }
        for bad in [
            "",
            "0123",
            "0123456789abcdef0123456789abcdef0123456g",
            "+123456789abcdef0123456789abcdef01234567",
        ] {
            assert_eq!(RedisRunId::parse_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn encodings_are_a_bitset() {
        let both = ContentEncodings::AES128GCM.union(ContentEncodings::AESGCM);
        assert!(both.contains(ContentEncodings::AESGCM));
        assert!(!ContentEncodings::AES128GCM.contains(ContentEncodings::AESGCM));
        assert_eq!(ContentEncodings::from_bits(both.bits()), Some(both));
        assert_eq!(ContentEncodings::from_bits(4), None);
        assert_eq!(format!("{both:?}"), r#"{"aes128gcm", "aesgcm"}"#);
    }

    #[test]
    fn times_are_whole_seconds_and_saturate() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        assert_eq!(UnixSeconds::from_system_time(t), UnixSeconds(1_700_000_000));
        assert_eq!(UnixSeconds::from_system_time(UNIX_EPOCH - Duration::from_secs(1)), UnixSeconds(0));
        let far = UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) + 10);
        assert_eq!(UnixSeconds::from_system_time(far), UnixSeconds(u32::MAX));
    }
}
