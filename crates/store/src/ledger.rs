//! Broadcast bookkeeping shared by every role: idempotency keys, progress counts, and shard
//! checkpoints.
//!
//! The bus delivers work at least once, so every write here is keyed by the step that made it
//! (`step` in [`BroadcastLedger::add_counts`]): the same step applied twice counts once. That is
//! what keeps a broadcast's counts exact when a worker dies and its work is redone.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::model::{ScanCursor, TenantId, UnixSeconds};
use crate::shard::ShardId;

/// How long a broadcast's ledger entries live after its last update.
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
    /// Every shard scanned and every targeted subscription finished.
    pub fn is_complete(&self) -> bool {
        self.counts.shards_done >= self.shards_total && self.counts.finished() >= self.counts.targeted
    }
}

/// Where a shard job resumes after its worker died: the scan cursor of the next page not yet
/// handed on, and that page's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardCheckpoint {
    /// The next page's cursor.
    pub cursor: ScanCursor,
    /// The next page's sequence number within the shard.
    pub next_page: u32,
}

/// Broadcast bookkeeping. Object safe; every future is `Send`.
#[async_trait]
pub trait BroadcastLedger: Send + Sync + fmt::Debug {
    /// Claims `key` for `broadcast` for `ttl`. `None` if the claim is new; otherwise the
    /// broadcast that already holds the key (a repeated publish).
    async fn claim_idempotency_key(
        &self,
        tenant: &TenantId,
        key: &str,
        broadcast: &BroadcastId,
        ttl: Duration,
    ) -> Result<Option<BroadcastId>, StoreError>;

    /// Records a broadcast split into `shards_total` shards. Creating it again changes nothing.
    async fn create_broadcast(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shards_total: u64,
        at: UnixSeconds,
    ) -> Result<(), StoreError>;

    /// Adds `delta` once per `step`; returns whether it was applied (false: a repeat).
    async fn add_progress(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        step: &str,
        delta: &ProgressDelta,
    ) -> Result<bool, StoreError>;

    /// Remembers where `shard`'s scan resumes.
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

    /// The broadcast's status, if the ledger has it.
    async fn status(&self, tenant: &TenantId, broadcast: &BroadcastId) -> Result<Option<BroadcastStatus>, StoreError>;
}
