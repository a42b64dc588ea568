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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::model::{ScanCursor, TenantId, UnixSeconds};
use crate::shard::ShardId;

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
    /// Of those gone, deleted from the store.
    pub pruned: u64,
    /// Refused by the push service (see the rejections for reasons).
    pub rejected: u64,
    /// Failed after every retry.
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
    }
}

/// Rejections grouped by status and the push service's reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RejectionReason {
    /// HTTP status.
    pub status: u16,
    /// The push service's reason, as `pushfan_webpush::classify` extracted it.
    pub reason: String,
}

/// One step's contribution to a broadcast's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressDelta {
    /// Counts to add.
    pub counts: BroadcastCounts,
    /// Rejections to add, with how many of each.
    pub rejections: Vec<(RejectionReason, u64)>,
}

/// A broadcast as the ledger knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastStatus {
    /// Shards the broadcast was split into.
    pub shards_total: u64,
    /// When ingest accepted it.
    pub created_at: UnixSeconds,
    /// Progress so far.
    pub counts: BroadcastCounts,
    /// Rejections by reason, most frequent first.
    pub rejections: Vec<(RejectionReason, u64)>,
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
    /// The nonzero counters with their stored names.
    pub(crate) fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let mut copy = *self;
        COUNT_FIELDS
            .iter()
            .map(move |(name, field)| (*name, *field(&mut copy)))
            .filter(|(_, value)| *value > 0)
    }

    /// The counter stored as `name`, if this version knows it.
    pub(crate) fn named_mut(&mut self, name: &str) -> Option<&mut u64> {
        COUNT_FIELDS.iter().find(|(known, _)| *known == name).map(|(_, field)| field(self))
    }
}

impl ProgressDelta {
    /// The nonzero rejections, each reason once (summed), so a backend that reads a stored count
    /// before adding never adds to a stale value.
    pub(crate) fn merged_rejections(&self) -> BTreeMap<&RejectionReason, u64> {
        let mut merged = BTreeMap::new();
        for (reason, n) in self.rejections.iter().filter(|(_, n)| *n > 0) {
            *merged.entry(reason).or_insert(0) += n;
        }
        merged
    }
}

/// Sorts rejections most frequent first, ties by status and reason (so the order is stable).
pub(crate) fn sort_rejections(rejections: &mut [(RejectionReason, u64)]) {
    rejections.sort_by(|(a, a_n), (b, b_n)| b_n.cmp(a_n).then_with(|| a.cmp(b)));
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
    fn rejections_merge_and_sort_most_frequent_first() {
        let reason = |status, text: &str| RejectionReason { status, reason: text.into() };
        let delta = ProgressDelta {
            counts: BroadcastCounts::default(),
            rejections: vec![(reason(400, "b"), 1), (reason(413, "big"), 0), (reason(400, "b"), 2)],
        };
        let merged: Vec<_> = delta.merged_rejections().into_iter().collect();
        assert_eq!(merged, vec![(&reason(400, "b"), 3)]);
        let mut rejections = vec![(reason(400, "z"), 1), (reason(403, "a"), 5), (reason(400, "a"), 1)];
        sort_rejections(&mut rejections);
        assert_eq!(rejections, vec![(reason(403, "a"), 5), (reason(400, "a"), 1), (reason(400, "z"), 1)]);
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
