//! The key schemas of both backends. Pure: builds keys, touches no connection or file.
//!
//! Only this crate knows Redis keys, and within it only this module spells them.
//!
//! ## Redis
//!
//! | key                               | type   | holds                                                |
//! |-----------------------------------|--------|------------------------------------------------------|
//! | `pf:{<tenant>}:shards`            | string | S, the shard count the tenant's data was written with |
//! | `pf:{<tenant>\|<shard>}:subs`     | hash   | 14-byte subscription id → binary record ([`crate::record`]) |
//! | `pf:{<tenant>\|<shard>}:t:<topic>`| set    | 14-byte ids of the topic's members in that shard      |
//!
//! The `{...}` part is the Redis Cluster hash tag: every key of one (tenant, shard) lives in one
//! slot, so a shard's records and its topic memberships sit on one node and one pipeline or
//! script can touch all of them. Different shards spread over the cluster. "Everyone" has no set
//! of its own: it is the `subs` hash itself. Tenant names cannot contain `{`, `}` or `|`, so no
//! tenant can name another tenant's keys.
//!
//! The broadcast ledger ([`crate::ledger`]), where `B` is the broadcast id:
//!
//! | key                               | type   | holds                                                |
//! |-----------------------------------|--------|------------------------------------------------------|
//! | `pf:{<tenant>}:idem:<key>`        | string | the broadcast id holding an idempotency key; expires after the claim's TTL |
//! | `pf:{<tenant>\|b:B}:meta`         | hash   | `shards_total`, `created_at` (Unix seconds)           |
//! | `pf:{<tenant>\|b:B}:counts`       | hash   | counter (a [`crate::ledger::BroadcastCounts`] field name) → count |
//! | `pf:{<tenant>\|b:B}:rej`          | hash   | `s\|<class>\|<n>` → failure sample `n` (0-4) of a class; `p\|<step>` → a provisional snapshot (`<seq>;name=value,...`) |
//! | `pf:{<tenant>\|b:B}:steps`        | set    | the progress steps already applied                    |
//! | `pf:{<tenant>\|b:B}:ckpt`         | hash   | shard number → checkpoint (`next_page` as a big-endian `u32`, then the cursor bytes) |
//!
//! A broadcast's five keys share one hash tag, so every ledger script runs on one node; broadcasts
//! spread over the cluster. Every write refreshes the expiry of all five to
//! [`crate::ledger::BROADCAST_RETENTION`], so they expire together. Broadcast ids cannot contain
//! `}` and the `b:` prefix cannot start a shard number, so ledger tags never meet shard tags.
//!
//! Pauses of push services (see [`crate::pauses`]) are the one key of no tenant: a delivering
//! process's connections and pauses are per origin, for every tenant alike.
//!
//! | key                               | type   | holds                                                |
//! |-----------------------------------|--------|------------------------------------------------------|
//! | `pf:{pauses}:origins`             | hash   | origin → when its pause ends (ms since the Unix epoch, decimal) |
//!
//! ## Embedded
//!
//! Ordered keyspaces (fjall partitions) with binary keys, where `T` is the tenant as one
//! length byte plus its bytes, `S` the shard as a big-endian `u16` and `B` the broadcast id as
//! one length byte plus its bytes:
//!
//! | partition | key                              | value  |
//! |-----------|----------------------------------|--------|
//! | `meta`    | `shards`                         | S as a big-endian `u16` |
//! | `subs`    | `T S id`                         | binary record |
//! | `members` | `T S len(topic) topic id`        | empty |
//! | `ledger`  | `T 'i' key`                      | expiry (Unix ms, big-endian `u64`), then the broadcast id |
//! | `ledger`  | `T 'b' B 'm'`                    | `shards_total` (`u64`), `created_at` (`u32`), big-endian |
//! | `ledger`  | `T 'b' B 'c' name`               | one counter, big-endian `u64` |
//! | `ledger`  | `T 'b' B 'r' field`              | as the Redis `rej` hash: `field` → value |
//! | `ledger`  | `T 'b' B 's' step`               | empty: the step is applied |
//! | `ledger`  | `T 'b' B 'k' S`                  | the shard's checkpoint, as in Redis |
//! | `ledger`  | `T 'b' B 'w'`                    | when the broadcast was last written (Unix ms, big-endian `u64`) |
//!
//! Keys sort by tenant, then shard, then id, so one shard (or one topic of one shard) is one
//! contiguous range, scanned in id order: the cursor is the last id returned. Likewise a
//! broadcast's counters (or failure entries) are one short contiguous range, apart from its thousands
//! of steps.

use std::ops::Bound;

use crate::ledger::BroadcastId;
use crate::model::{SubscriptionId, TenantId, Topic};
use crate::shard::ShardId;
use pushfan_webpush::FailureClass;

/// The key of the tenant's recorded shard count.
pub(crate) fn shard_count(tenant: &TenantId) -> String {
    format!("pf:{{{tenant}}}:shards")
}

/// The hash of the shard's records.
pub(crate) fn subscriptions(tenant: &TenantId, shard: ShardId) -> String {
    format!("pf:{{{tenant}|{shard}}}:subs")
}

/// The set of the topic's members in the shard.
pub(crate) fn topic_members(tenant: &TenantId, shard: ShardId, topic: &Topic) -> String {
    format!("pf:{{{tenant}|{shard}}}:t:{topic}")
}

/// The Redis key holding an idempotency key's claim.
/// The push services' pauses, shared by every tenant.
pub(crate) const ORIGIN_PAUSES: &str = "pf:{pauses}:origins";

pub(crate) fn idempotency(tenant: &TenantId, key: &str) -> String {
    format!("pf:{{{tenant}}}:idem:{key}")
}

/// The Redis keys of one broadcast's ledger, all under one hash tag.
#[derive(Debug)]
pub(crate) struct BroadcastKeys {
    pub(crate) meta: String,
    pub(crate) counts: String,
    /// Failure samples and provisional snapshots ([`FailureField`]).
    pub(crate) failures: String,
    pub(crate) steps: String,
    pub(crate) checkpoints: String,
}

impl BroadcastKeys {
    pub(crate) fn new(tenant: &TenantId, broadcast: &BroadcastId) -> Self {
        let key = |kind: &str| format!("pf:{{{tenant}|b:{broadcast}}}:{kind}");
        Self {
            meta: key("meta"),
            counts: key("counts"),
            failures: key("rej"),
            steps: key("steps"),
            checkpoints: key("ckpt"),
        }
    }

    /// All five, in the order the ledger scripts take them as `KEYS`.
    pub(crate) fn all(&self) -> [&str; 5] {
        [&self.meta, &self.counts, &self.failures, &self.steps, &self.checkpoints]
    }
}

/// What a field of a broadcast's failure entries (the Redis `rej` hash, the embedded `'r'`
/// entries) holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureField {
    /// A failure sample of this class.
    Sample(FailureClass),
    /// A provisional snapshot.
    Partial,
}

/// The field of sample `n` of `class`.
pub(crate) fn sample_field(class: FailureClass, n: usize) -> String {
    format!("s|{}|{n}", class.label())
}

/// The field of the provisional snapshot `step`.
pub(crate) fn partial_field(step: &str) -> String {
    format!("p|{step}")
}

/// Reads what [`sample_field`] and [`partial_field`] wrote; `None` for anything else (an older
/// version's `<status>|<reason>` rejection counts, a class this version does not know).
pub(crate) fn parse_failure_field(field: &str) -> Option<FailureField> {
    if let Some(sample) = field.strip_prefix("s|") {
        let (class, _) = sample.split_once('|')?;
        return FailureClass::from_label(class).map(FailureField::Sample);
    }
    field.strip_prefix("p|").map(|_| FailureField::Partial)
}

/// `T`: the tenant as one length byte plus its bytes, with room for `extra` more bytes.
fn embedded_tenant(tenant: &TenantId, extra: usize) -> Vec<u8> {
    let tenant = tenant.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + tenant.len() + extra);
    // Tenant names are at most 64 bytes, so the length fits a byte.
    key.push(tenant.len() as u8);
    key.extend_from_slice(tenant);
    key
}

/// The embedded `subs` key prefix of one shard; append an id for a record's key.
pub(crate) fn embedded_shard(tenant: &TenantId, shard: ShardId) -> Vec<u8> {
    let mut key = embedded_tenant(tenant, 2 + SubscriptionId::LEN);
    key.extend_from_slice(&shard.0.to_be_bytes());
    key
}

/// What an embedded ledger key of one broadcast holds: the byte after `T 'b' B`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LedgerEntry {
    Meta = b'm' as isize,
    Count = b'c' as isize,
    /// Failure samples and provisional snapshots, by [`FailureField`].
    Failure = b'r' as isize,
    Step = b's' as isize,
    Checkpoint = b'k' as isize,
    /// When the broadcast's entries were last written (ms since the epoch), for expiry.
    LastWrite = b'w' as isize,
}

/// The embedded `ledger` key of an idempotency key's claim.
pub(crate) fn embedded_idempotency(tenant: &TenantId, key: &str) -> Vec<u8> {
    let mut stored = embedded_tenant(tenant, 1 + key.len());
    stored.push(b'i');
    stored.extend_from_slice(key.as_bytes());
    stored
}

/// The embedded `ledger` key prefix of one kind of entry of one broadcast: `T 'b' B kind`;
/// append the entry's name (none for the meta entry).
pub(crate) fn embedded_broadcast(tenant: &TenantId, broadcast: &BroadcastId, entry: LedgerEntry) -> Vec<u8> {
    let broadcast = broadcast.as_str().as_bytes();
    let mut key = embedded_tenant(tenant, 3 + broadcast.len() + 16);
    key.push(b'b');
    // Broadcast ids are at most 64 bytes, so the length fits a byte.
    key.push(broadcast.len() as u8);
    key.extend_from_slice(broadcast);
    key.push(entry as u8);
    key
}

/// What an embedded `ledger` key belongs to (for the expiry sweep).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LedgerKey<'a> {
    /// An entry of one broadcast; `prefix` (`T 'b' B`) starts every entry of it.
    Broadcast { prefix: &'a [u8] },
    /// An idempotency claim.
    Claim,
}

/// Reads what [`embedded_broadcast`] or [`embedded_idempotency`] built; `None` for other keys.
pub(crate) fn parse_embedded_ledger_key(key: &[u8]) -> Option<LedgerKey<'_>> {
    let (&tenant_len, rest) = key.split_first()?;
    let (&kind, rest) = rest.get(usize::from(tenant_len)..)?.split_first()?;
    match kind {
        b'i' => Some(LedgerKey::Claim),
        b'b' => {
            let (&id_len, rest) = rest.split_first()?;
            // The prefix must leave room for the entry kind after it.
            let end = key.len() - rest.len() + usize::from(id_len);
            (rest.len() > usize::from(id_len)).then(|| LedgerKey::Broadcast { prefix: &key[..end] })
        }
        _ => None,
    }
}

/// One entry of the broadcast whose `T 'b' B` is `prefix` (see [`parse_embedded_ledger_key`]).
pub(crate) fn broadcast_entry(prefix: &[u8], entry: LedgerEntry) -> Vec<u8> {
    [prefix, &[entry as u8]].concat()
}

/// A key past every entry of the broadcast whose `T 'b' B` is `prefix`: entry kinds are letters.
pub(crate) fn past_broadcast(prefix: &[u8]) -> Vec<u8> {
    [prefix, &[0xff]].concat()
}

/// The embedded `members` key prefix of one topic in one shard; append an id for a member.
pub(crate) fn embedded_topic(tenant: &TenantId, shard: ShardId, topic: &Topic) -> Vec<u8> {
    let mut key = embedded_shard(tenant, shard);
    key.push(topic.as_str().len() as u8);
    key.extend_from_slice(topic.as_str().as_bytes());
    key
}

/// `prefix` followed by `id`.
pub(crate) fn with_id(prefix: &[u8], id: &SubscriptionId) -> Vec<u8> {
    [prefix, id.as_bytes()].concat()
}

/// The embedded keys under `prefix` (a shard's or a topic's) after id `after`, or all of them.
pub(crate) fn id_range(prefix: &[u8], after: Option<SubscriptionId>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = match after {
        Some(id) => Bound::Excluded(with_id(prefix, &id)),
        None => Bound::Included(prefix.to_vec()),
    };
    (start, Bound::Included(with_id(prefix, &SubscriptionId::from_bytes([0xff; SubscriptionId::LEN]))))
}

/// The embedded keys under `prefix` from id `first` to id `last`, both included.
pub(crate) fn id_span(
    prefix: &[u8],
    first: SubscriptionId,
    last: SubscriptionId,
) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (Bound::Included(with_id(prefix, &first)), Bound::Included(with_id(prefix, &last)))
}

/// The id at the end of an embedded `subs` or `members` key.
pub(crate) fn id_suffix(key: &[u8]) -> Option<SubscriptionId> {
    let start = key.len().checked_sub(SubscriptionId::LEN)?;
    Some(SubscriptionId::from_bytes(key[start..].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes: the text between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn the_schema_is_as_documented() {
        let tenant = TenantId::new("acme").unwrap();
        let topic = Topic::new("news/sport").unwrap();
        assert_eq!(shard_count(&tenant), "pf:{acme}:shards");
        assert_eq!(subscriptions(&tenant, ShardId(7)), "pf:{acme|7}:subs");
        assert_eq!(topic_members(&tenant, ShardId(7), &topic), "pf:{acme|7}:t:news/sport");
    }

    #[test]
    fn one_shard_shares_one_hash_tag_and_shards_do_not() {
        let tenant = TenantId::new("acme").unwrap();
        let topic = Topic::new("news").unwrap();
        let shard = ShardId(3);
        assert_eq!(
            hash_tag(&subscriptions(&tenant, shard)),
            hash_tag(&topic_members(&tenant, shard, &topic))
        );
        assert_ne!(hash_tag(&subscriptions(&tenant, shard)), hash_tag(&subscriptions(&tenant, ShardId(4))));
    }

    #[test]
    fn tenants_never_share_a_key() {
        // "a" with shard 12 and "a|1" with shard 2 would collide if tenants could contain `|`.
        assert!(TenantId::new("a|1").is_err());
        let a = TenantId::new("a").unwrap();
        let b = TenantId::new("a1").unwrap();
        assert_ne!(subscriptions(&a, ShardId(12)), subscriptions(&b, ShardId(2)));
    }

    #[test]
    fn the_ledger_schema_is_as_documented() {
        let tenant = TenantId::new("acme").unwrap();
        let broadcast = BroadcastId::new("b-1").unwrap();
        let keys = BroadcastKeys::new(&tenant, &broadcast);
        assert_eq!(
            keys.all(),
            [
                "pf:{acme|b:b-1}:meta",
                "pf:{acme|b:b-1}:counts",
                "pf:{acme|b:b-1}:rej",
                "pf:{acme|b:b-1}:steps",
                "pf:{acme|b:b-1}:ckpt"
            ]
        );
        assert!(keys.all().iter().all(|key| hash_tag(key) == "acme|b:b-1"));
        assert_eq!(idempotency(&tenant, "order-7"), "pf:{acme}:idem:order-7");
        assert_eq!(sample_field(FailureClass::Rejected, 4), "s|rejected|4");
        assert_eq!(parse_failure_field("s|rejected|4"), Some(FailureField::Sample(FailureClass::Rejected)));
        assert_eq!(partial_field("partial/1/2"), "p|partial/1/2");
        assert_eq!(parse_failure_field("p|partial/1/2"), Some(FailureField::Partial));
        for other in ["400|a|b", "s|newer_class|0", "s|x", ""] {
            assert_eq!(parse_failure_field(other), None, "{other}");
        }
        assert_eq!(
            embedded_broadcast(&tenant, &broadcast, LedgerEntry::Count),
            b"\x04acmeb\x03b-1c".to_vec()
        );
        assert_eq!(embedded_idempotency(&tenant, "k"), b"\x04acmeik".to_vec());
    }

    #[test]
    fn embedded_ledger_keys_parse_back() {
        let tenant = TenantId::new("acme").unwrap();
        let broadcast = BroadcastId::new("b-1").unwrap();
        let step =
            [embedded_broadcast(&tenant, &broadcast, LedgerEntry::Step), b"page/1/2".to_vec()].concat();
        let prefix = b"\x04acmeb\x03b-1";
        assert_eq!(parse_embedded_ledger_key(&step), Some(LedgerKey::Broadcast { prefix }));
        assert_eq!(
            broadcast_entry(prefix, LedgerEntry::LastWrite),
            embedded_broadcast(&tenant, &broadcast, LedgerEntry::LastWrite)
        );
        assert!(past_broadcast(prefix) > step);
        assert_eq!(parse_embedded_ledger_key(&embedded_idempotency(&tenant, "k")), Some(LedgerKey::Claim));
        // Cut short, or of another kind: not a ledger key this sweep may touch.
        for key in [&b""[..], b"\x04acm", b"\x04acmeb\x03b-1", b"\x04acmeb\x09b-1m", b"\x04acmex"] {
            assert_eq!(parse_embedded_ledger_key(key), None, "{key:?}");
        }
    }

    #[test]
    fn embedded_keys_keep_tenants_shards_and_topics_apart() {
        let acme = TenantId::new("acme").unwrap();
        let news = Topic::new("news").unwrap();
        let id = SubscriptionId::from_bytes([9; SubscriptionId::LEN]);
        let shard = embedded_shard(&acme, ShardId(258));
        assert_eq!(shard, b"\x04acme\x01\x02");
        let member = with_id(&embedded_topic(&acme, ShardId(258), &news), &id);
        assert_eq!(member, [&b"\x04acme\x01\x02\x04news"[..], &[9; SubscriptionId::LEN]].concat());
        assert_eq!(id_suffix(&member), Some(id));
        assert_eq!(id_suffix(b"short"), None);
        // A tenant whose name extends another's is a different prefix thanks to the length byte.
        let acme2 = TenantId::new("acme2").unwrap();
        assert!(!embedded_shard(&acme2, ShardId(0)).starts_with(&embedded_shard(&acme, ShardId(0))));
    }
}
