//! Broadcast bookkeeping shared by every role: idempotency keys, progress counts, and shard
//! checkpoints.
//!
//! The bus delivers work at least once, so every progress write is keyed by the step that made
//! it (`step` in [`BroadcastLedger::add_progress`]): the same step applied twice counts once.
//! That is what keeps a broadcast's counts exact when a worker dies and its work is redone.
//!
//! Both stores implement the trait, so one store object serves [`crate::SubscriptionStore`] and
//! [`BroadcastLedger`]: [`crate::RedisStore`] (one Lua script per write, all keys of a broadcast
//! under one cluster hash tag) and [`crate::EmbeddedStore`] (one fsynced batch per write, ledger
//! writes serialised by their own mutex). The key layouts are in [`crate::keys`].
//!
//! Size: a broadcast keeps one step key per applied step. A 1M-subscriber broadcast with pages
//! of 512 has about 2k page steps and 2k result steps, a few hundred kilobytes: fine as one set.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::model::{ScanCursor, TenantId, UnixSeconds};
use crate::shard::ShardId;
use pushfan_webpush::FailureClass;

/// How long a broadcast's ledger entries live after its last update (Redis expires them; the
/// embedded store sweeps them hourly, see [`crate::EmbeddedStore`]).
pub const BROADCAST_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// A broadcast's id: 1 to 64 bytes of `[A-Za-z0-9_-]`, assigned by ingest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BroadcastId(Arc<str>);

impl BroadcastId {
    /// Validates an id.
    pub fn new(id: &str) -> Result<Self, StoreError> {
        let reason = if id.is_empty() {
            "is empty"
        } else if id.len() > 64 {
            "is longer than 64 bytes"
        } else if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            "contains a character outside [A-Za-z0-9_-]"
        } else {
            return Ok(Self(id.into()));
        };
        Err(StoreError::InvalidName { kind: "broadcast id", name: id.chars().take(64).collect(), reason })
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BroadcastId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BroadcastId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BroadcastId({:?})", &*self.0)
    }
}

/// A broadcast's progress. Every field only grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BroadcastCounts {
    /// Subscriptions the audience resolved to.
    pub targeted: u64,
    /// Encrypted and handed to a gateway.
    pub encrypted: u64,
    /// Could not be encrypted for (a key the crypto refused).
    pub encrypt_failed: u64,
    /// Accepted by the push service.
    pub accepted: u64,
    /// Answered 404/410.
    pub gone: u64,
    /// Deleted from the store: of those gone, and those whose endpoint can never be sent to
    /// (`invalid`, `refused_by_policy`).
    pub pruned: u64,
    /// Refused for good: by the push service (4xx), by the egress policy, or unusable.
    pub rejected: u64,
    /// Failed after every retry, or throttled past the throttle deadline.
    pub failed: u64,
    /// Not delivered within the TTL.
    pub expired: u64,
    /// Shards whose scan has finished.
    pub shards_done: u64,
    /// Encrypted pushes handed to the gateways: the workers' progress, ahead of the results.
    pub handed_on: u64,
    /// Delivery batches handed to the gateways.
    pub batches_sent: u64,
    /// Delivery batches whose results are counted.
    pub batches_done: u64,
    /// Deliveries that did not end accepted, by [`FailureClass::index`]: `gone`, `rejected`,
    /// `failed` and `expired` above are sums of these. A fixed array, so a broadcast's failure
    /// counts are bounded whatever the push services answer.
    pub failures: [u64; FailureClass::COUNT],
}

impl BroadcastCounts {
    /// Subscriptions whose delivery has ended one way or another.
    pub fn finished(&self) -> u64 {
        self.encrypt_failed + self.accepted + self.gone + self.rejected + self.failed + self.expired
    }

    /// Adds `other` field by field.
    pub fn add(&mut self, other: &BroadcastCounts) {
        self.targeted += other.targeted;
        self.encrypted += other.encrypted;
        self.encrypt_failed += other.encrypt_failed;
        self.accepted += other.accepted;
        self.gone += other.gone;
        self.pruned += other.pruned;
        self.rejected += other.rejected;
        self.failed += other.failed;
        self.expired += other.expired;
        self.shards_done += other.shards_done;
        self.handed_on += other.handed_on;
        self.batches_sent += other.batches_sent;
        self.batches_done += other.batches_done;
        for (mine, theirs) in self.failures.iter_mut().zip(other.failures) {
            *mine += theirs;
        }
    }
}

/// Samples of failure text a broadcast keeps per failure class: the first ones written, each
/// different. With [`pushfan_webpush::failure::MAX_SAMPLE_LEN`] this bounds a broadcast's
/// stored and shown failure text, whatever its push services answer.
pub const MAX_SAMPLES_PER_CLASS: usize = 5;

/// One step's contribution to a broadcast's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressDelta {
    /// Counts to add.
    pub counts: BroadcastCounts,
    /// Failure text to keep, by class (already cut by [`pushfan_webpush::failure::sample`]):
    /// kept while the class has fewer than [`MAX_SAMPLES_PER_CLASS`] and the text is new.
    pub samples: Vec<(FailureClass, String)>,
    /// The provisional snapshot (see [`BroadcastLedger::set_partial`]) this step replaces: it is
    /// removed in the same write, whether or not the step is a repeat.
    pub replaces_partial: Option<String>,
}

/// A broadcast as the ledger knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastStatus {
    /// Shards the broadcast was split into.
    pub shards_total: u64,
    /// When ingest accepted it.
    pub created_at: UnixSeconds,
    /// Progress so far: the steps applied plus the live provisional snapshots.
    pub counts: BroadcastCounts,
    /// Failure text kept, by class (class order, then first kept first): at most
    /// [`MAX_SAMPLES_PER_CLASS`] per class.
    pub samples: Vec<(FailureClass, String)>,
}

impl BroadcastStatus {
    /// Every shard scanned, every batch handed on reported, every targeted subscription finished.
    pub fn is_complete(&self) -> bool {
        self.counts.shards_done >= self.shards_total
            && self.counts.batches_done >= self.counts.batches_sent
            && self.counts.finished() >= self.counts.targeted
    }
}

/// Where a shard job resumes after its worker died: the scan cursor of the next page not yet
/// handed on, and that page's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardCheckpoint {
    /// The next page's cursor; `None` once the last page was handed on, so a job redelivered
    /// after its work was done sends nothing again.
    pub cursor: Option<ScanCursor>,
    /// The next page's sequence number within the shard.
    pub next_page: u32,
}

/// Broadcast bookkeeping. Object safe; every future is `Send`.
///
/// Every call is scoped to one tenant: a broadcast id names a different broadcast in each tenant,
/// and no call sees another tenant's entries. Every write is atomic: it happens entirely or not
/// at all, even when the process dies halfway.
#[async_trait]
pub trait BroadcastLedger: Send + Sync + fmt::Debug {
    /// Claims `key` (1 to 255 bytes, e.g. a client's `Idempotency-Key`) for `broadcast` for
    /// `ttl` (millisecond resolution, at least 1 ms). `None` if the claim is new; otherwise the
    /// broadcast that already holds the key (a repeated publish; possibly `broadcast` itself).
    /// An expired claim is gone: the next claim of the key is new.
    async fn claim_idempotency_key(
        &self,
        tenant: &TenantId,
        key: &str,
        broadcast: &BroadcastId,
        ttl: Duration,
    ) -> Result<Option<BroadcastId>, StoreError>;

    /// Gives up a claim of `key` made for `broadcast`, so the next claim of the key is new.
    /// Returns whether a claim was released: a claim held for another broadcast, or none, is
    /// left as it is. For a claimant whose work behind the claim failed.
    async fn release_idempotency_key(
        &self,
        tenant: &TenantId,
        key: &str,
        broadcast: &BroadcastId,
    ) -> Result<bool, StoreError>;

    /// Records a broadcast split into `shards_total` shards. Creating it again changes nothing:
    /// the first `shards_total` and `at` stay.
    async fn create_broadcast(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shards_total: u64,
        at: UnixSeconds,
    ) -> Result<(), StoreError>;

    /// Adds `delta` once per `step` (1 to 255 bytes); returns whether it was applied (false: a
    /// repeat, nothing changed). Concurrent calls with the same step apply it once. Progress of a
    /// broadcast not created yet is kept and shows in [`BroadcastLedger::status`] once it is.
    async fn add_progress(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        step: &str,
        delta: &ProgressDelta,
    ) -> Result<bool, StoreError>;

    /// [`BroadcastLedger::add_progress`] and [`BroadcastLedger::save_checkpoint`] as one atomic
    /// write: a worker's page step with the checkpoint past that page, one fsync or round trip
    /// instead of two. The checkpoint is saved (by `save_checkpoint`'s rule) even when the step
    /// is a repeat: a page redone after a crash still moves its shard on. Returns whether the
    /// step was applied.
    async fn add_progress_with_checkpoint(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        step: &str,
        delta: &ProgressDelta,
        shard: ShardId,
        checkpoint: ShardCheckpoint,
    ) -> Result<bool, StoreError>;

    /// Replaces the provisional snapshot `partial` (1 to 255 bytes; a delivery batch's results
    /// so far, while the rest of it waits on a throttling push service) with `delta`'s counts,
    /// unless `final_step` (the batch's results step, which removes the snapshot when applied;
    /// see [`ProgressDelta::replaces_partial`]) is applied already or the stored snapshot has a
    /// `seq` at least as high. [`BroadcastLedger::status`] adds the live snapshots to the
    /// counts. Replacing, never adding, keeps a batch counted once however often it is
    /// snapshotted, redelivered or redone. Returns whether it was stored. Samples are not kept
    /// from snapshots.
    async fn set_partial(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        partial: &str,
        final_step: &str,
        seq: u64,
        delta: &ProgressDelta,
    ) -> Result<bool, StoreError>;

    /// Remembers where `shard`'s scan resumes. A checkpoint never moves back: one with a lower
    /// `next_page` than the stored one is ignored, so a stale worker still running a redelivered
    /// shard job cannot rewind the worker that took over.
    async fn save_checkpoint(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shard: ShardId,
        checkpoint: ShardCheckpoint,
    ) -> Result<(), StoreError>;

    /// Where `shard`'s scan resumes, if a worker got anywhere with it.
    async fn load_checkpoint(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shard: ShardId,
    ) -> Result<Option<ShardCheckpoint>, StoreError>;

    /// The broadcast's status; `None` if it was never created (or, in Redis, has expired).
    async fn status(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
    ) -> Result<Option<BroadcastStatus>, StoreError>;
}

/// Longest step or idempotency key, in bytes: both are part of a stored key.
pub(crate) const MAX_LABEL_LEN: usize = 255;

/// Checks a step or idempotency key: 1 to [`MAX_LABEL_LEN`] bytes.
pub(crate) fn check_label(kind: &'static str, label: &str) -> Result<(), StoreError> {
    let reason = if label.is_empty() {
        "is empty"
    } else if label.len() > MAX_LABEL_LEN {
        "is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidName { kind, name: label.chars().take(64).collect(), reason })
}

/// Picks one counter out of the counts.
pub(crate) type CounterField = fn(&mut BroadcastCounts) -> &mut u64;

/// Each counter's stored name (a Redis hash field, an embedded key suffix) and its field. The
/// names are stored data: never rename one. A stored name missing here (written by a newer
/// version) is ignored on read.
pub(crate) const COUNT_FIELDS: [(&str, CounterField); 13] = [
    ("targeted", |c| &mut c.targeted),
    ("encrypted", |c| &mut c.encrypted),
    ("encrypt_failed", |c| &mut c.encrypt_failed),
    ("accepted", |c| &mut c.accepted),
    ("gone", |c| &mut c.gone),
    ("pruned", |c| &mut c.pruned),
    ("rejected", |c| &mut c.rejected),
    ("failed", |c| &mut c.failed),
    ("expired", |c| &mut c.expired),
    ("shards_done", |c| &mut c.shards_done),
    ("handed_on", |c| &mut c.handed_on),
    ("batches_sent", |c| &mut c.batches_sent),
    ("batches_done", |c| &mut c.batches_done),
];

impl BroadcastCounts {
    /// The nonzero counters with their stored names, per-class failure counters included.
    pub(crate) fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let mut copy = *self;
        let classes = CLASS_FIELDS.iter().zip(self.failures);
        COUNT_FIELDS
            .iter()
            .map(move |(name, field)| (*name, *field(&mut copy)))
            .chain(classes.map(|(name, n)| (*name, n)))
            .filter(|(_, value)| *value > 0)
    }

    /// The counter stored as `name`, if this version knows it.
    pub(crate) fn named_mut(&mut self, name: &str) -> Option<&mut u64> {
        if let Some(class) = CLASS_FIELDS.iter().position(|known| *known == name) {
            return self.failures.get_mut(class);
        }
        COUNT_FIELDS.iter().find(|(known, _)| *known == name).map(|(_, field)| field(self))
    }
}

/// Each failure class's stored counter name, in [`FailureClass::index`] order: `class.` and its
/// label. Stored data: never rename one.
pub(crate) const CLASS_FIELDS: [&str; FailureClass::COUNT] = [
    "class.gone",
    "class.not_found",
    "class.unauthorized",
    "class.payload_too_large",
    "class.throttled",
    "class.server_error",
    "class.transport_connect",
    "class.transport_dns",
    "class.transport_tls",
    "class.transport_timeout",
    "class.transport_reset",
    "class.transport_protocol",
    "class.refused_by_policy",
    "class.invalid",
    "class.rejected",
    "class.expired",
];

/// A provisional snapshot's stored form: `<seq>;` then `name=value` pairs of its nonzero
/// counters, comma separated. The sequence number leads so Redis's script can compare it.
pub(crate) fn encode_partial(seq: u64, counts: &BroadcastCounts) -> String {
    let pairs: Vec<String> = counts.nonzero().map(|(name, n)| format!("{name}={n}")).collect();
    format!("{seq};{}", pairs.join(","))
}

/// Reads what [`encode_partial`] wrote; counters this version does not know are left out.
pub(crate) fn decode_partial(stored: &str) -> Result<(u64, BroadcastCounts), StoreError> {
    let corrupt = || StoreError::CorruptLedger { what: "provisional snapshot" };
    let (seq, pairs) = stored.split_once(';').ok_or_else(corrupt)?;
    let seq = seq.parse().map_err(|_| corrupt())?;
    let mut counts = BroadcastCounts::default();
    for pair in pairs.split(',').filter(|pair| !pair.is_empty()) {
        let (name, n) = pair.split_once('=').ok_or_else(corrupt)?;
        let n: u64 = n.parse().map_err(|_| corrupt())?;
        if let Some(counter) = counts.named_mut(name) {
            *counter = counter.saturating_add(n);
        }
    }
    Ok((seq, counts))
}

impl ProgressDelta {
    /// The samples worth writing: nonempty, each (class, text) once, at most
    /// [`MAX_SAMPLES_PER_CLASS`] per class, in class order.
    pub(crate) fn distinct_samples(&self) -> Vec<(FailureClass, &str)> {
        let mut samples: Vec<(FailureClass, &str)> = Vec::new();
        for (class, text) in &self.samples {
            let of_class = samples.iter().filter(|(c, _)| c == class).count();
            if !text.is_empty()
                && of_class < MAX_SAMPLES_PER_CLASS
                && !samples.iter().any(|(c, t)| c == class && *t == text.as_str())
            {
                samples.push((*class, text));
            }
        }
        samples.sort_by_key(|(class, _)| *class);
        samples
    }
}

/// Keeps at most [`MAX_SAMPLES_PER_CLASS`] samples per class of `stored` (in class order, then
/// stored order), for a status read.
pub(crate) fn sort_samples(samples: &mut Vec<(FailureClass, String)>) {
    samples.sort_by_key(|(class, _)| *class);
    let mut kept = 0;
    let mut last = None;
    samples.retain(|(class, _)| {
        if last != Some(*class) {
            (last, kept) = (Some(*class), 0);
        }
        kept += 1;
        kept <= MAX_SAMPLES_PER_CLASS
    });
}

impl ShardCheckpoint {
    /// The stored form: `next_page` as a big-endian `u32`, then [`ScanCursor::to_bytes`] (nothing
    /// when the scan is done). The page comes first so Redis's script can compare checkpoints
    /// without knowing cursors.
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let cursor = self.cursor.map(|cursor| cursor.to_bytes()).unwrap_or_default();
        [&self.next_page.to_be_bytes()[..], &cursor].concat()
    }

    /// Reads what [`ShardCheckpoint::to_bytes`] wrote.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::CorruptLedger { what: "shard checkpoint" };
        let (page, cursor) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let cursor = match cursor {
            [] => None,
            cursor => Some(ScanCursor::from_bytes(cursor).map_err(|_| corrupt())?),
        };
        Ok(Self { cursor, next_page: u32::from_be_bytes(*page) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CursorPosition, SubscriptionId};

    #[test]
    fn count_fields_name_every_counter_once() {
        let mut counts = BroadcastCounts::default();
        for (n, (name, _)) in COUNT_FIELDS.iter().enumerate() {
            *counts.named_mut(name).unwrap() = n as u64 + 1;
        }
        // Every field got its own value, so no two names share a field.
        let values: Vec<u64> = counts.nonzero().map(|(_, v)| v).collect();
        assert_eq!(values, (1..=13).collect::<Vec<_>>());
        assert_eq!(counts.finished(), 3 + 4 + 5 + 7 + 8 + 9);
        assert!(counts.named_mut("unknown").is_none());
        assert_eq!(BroadcastCounts::default().nonzero().count(), 0);
    }

    #[test]
    fn samples_are_distinct_and_bounded_per_class() {
        use FailureClass::{Gone, Rejected};
        let text = |n: usize| format!("body {n}");
        let mut samples: Vec<(FailureClass, String)> = (0..9).map(|n| (Rejected, text(n))).collect();
        samples.insert(0, (Rejected, text(0)));
        samples.push((Gone, String::new()));
        samples.push((Gone, "gone".into()));
        let delta = ProgressDelta { samples, ..ProgressDelta::default() };
        let distinct = delta.distinct_samples();
        assert_eq!(distinct[0], (Gone, "gone"));
        let rejected: Vec<&str> = distinct[1..].iter().map(|(_, t)| *t).collect();
        assert_eq!(rejected, ["body 0", "body 1", "body 2", "body 3", "body 4"]);

        let mut stored: Vec<(FailureClass, String)> = (0..7).map(|n| (Rejected, text(n))).collect();
        stored.push((Gone, "gone".into()));
        sort_samples(&mut stored);
        assert_eq!(stored.len(), 1 + MAX_SAMPLES_PER_CLASS);
        assert_eq!(stored[0].0, Gone);
    }

    #[test]
    fn class_counters_have_stored_names_and_partials_round_trip() {
        for class in FailureClass::ALL {
            assert_eq!(CLASS_FIELDS[class.index()], format!("class.{}", class.label()));
        }
        let mut counts = BroadcastCounts { accepted: 300, targeted: 305, ..BroadcastCounts::default() };
        counts.failures[FailureClass::Throttled.index()] = 5;
        *counts.named_mut("class.expired").unwrap() = 2;
        assert_eq!(counts.failures[FailureClass::Expired.index()], 2);
        let stored = encode_partial(7, &counts);
        assert_eq!(decode_partial(&stored).unwrap(), (7, counts));
        assert_eq!(decode_partial("3;").unwrap(), (3, BroadcastCounts::default()));
        assert_eq!(decode_partial("3;newer=4,accepted=1").unwrap().1.accepted, 1);
        for bad in ["", "x;", "3", "3;accepted", "3;accepted=x"] {
            assert!(matches!(decode_partial(bad), Err(StoreError::CorruptLedger { .. })), "{bad}");
        }
    }

    #[test]
    fn checkpoints_round_trip_and_bad_bytes_are_errors() {
        let id = SubscriptionId::from_bytes([3; SubscriptionId::LEN]);
        for cursor in [
            Some(ScanCursor::START),
            Some(ScanCursor(CursorPosition::Redis(9))),
            Some(ScanCursor(CursorPosition::After(id))),
            None,
        ] {
            let checkpoint = ShardCheckpoint { cursor, next_page: 70_000 };
            assert_eq!(ShardCheckpoint::from_bytes(&checkpoint.to_bytes()).unwrap(), checkpoint);
        }
        for bad in [&b""[..], b"\0\0\0", b"\0\0\0\x01\x09"] {
            assert!(matches!(ShardCheckpoint::from_bytes(bad), Err(StoreError::CorruptLedger { .. })));
        }
    }

    #[test]
    fn labels_are_checked() {
        assert!(check_label("progress step", "page/1/2").is_ok());
        assert!(check_label("progress step", &"x".repeat(255)).is_ok());
        for bad in ["", &"x".repeat(256)] {
            let err = check_label("progress step", bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidName { kind: "progress step", .. }), "{err}");
        }
    }
}
