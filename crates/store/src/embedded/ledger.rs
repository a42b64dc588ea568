//! [`BroadcastLedger`] on the embedded store: the `ledger` partition, key layout in
//! [`crate::keys`].
//!
//! Every ledger write reads what it builds on (the step marker, the stored counters, the stored
//! checkpoint) and commits one batch, all while holding the ledger mutex. That makes each write
//! atomic on disk (the batch) and free of check-then-act races (the mutex: this process is the
//! only writer). Claims and broadcasts are fsynced on commit; progress and checkpoints, written
//! per page, are bookkeeping, fsynced within a second (see the store's module docs). The ledger
//! has its own mutex rather than the subscription writers' one, so a large import never stalls
//! progress bookkeeping; the two never touch the same keys. Ledger writes come per page, not per
//! subscription, so serialising them costs little.
//!
//! Expiry, as on Redis: a broadcast's entries (a few hundred kilobytes for a 1M-subscriber
//! broadcast, mostly step markers) go [`BROADCAST_RETENTION`] after its last write, which every
//! write batch records (`LastWrite`); an idempotency claim goes once past its TTL (until then an
//! expired claim is also overwritten by the next one). Redis expires keys itself; here a sweep
//! ([`Inner::expire`], hourly on the store's upkeep thread, the first a minute after open)
//! deletes them, so an expired broadcast may be readable for up to an hour longer.

use std::ops::Bound;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fjall::Batch;
use tracing::instrument;

use super::{EmbeddedStore, Inner, BACKEND};
use crate::error::StoreError;
use crate::keys::{self, LedgerEntry, LedgerKey};
use crate::ledger::{
    self, BroadcastCounts, BroadcastId, BroadcastLedger, BroadcastStatus, ProgressDelta, ShardCheckpoint,
    BROADCAST_RETENTION,
};
use crate::model::{TenantId, UnixSeconds};
use crate::shard::ShardId;
use crate::telemetry::{self, observe};

/// Milliseconds since the Unix epoch (0 for a clock set before 1970).
pub(super) fn now_millis() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// What one expiry sweep deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Expired {
    pub(super) broadcasts: u64,
    pub(super) claims: u64,
}

/// A broadcast's meta entry: `shards_total` and `created_at`.
fn read_meta(meta: &[u8]) -> Result<(u64, UnixSeconds), StoreError> {
    let corrupt = || StoreError::CorruptLedger { what: "broadcast meta" };
    let (shards_total, created_at) = meta.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let created_at = <[u8; 4]>::try_from(created_at).map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(*shards_total), UnixSeconds(u32::from_be_bytes(created_at))))
}

/// A stored big-endian `u64` counter.
fn read_u64(bytes: &[u8], what: &'static str) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes).map(u64::from_be_bytes).map_err(|_| StoreError::CorruptLedger { what })
}

impl Inner {
    fn ledger_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panicking writer leaves nothing half-updated in memory,
        // and its batch either committed whole or not at all.
        self.ledger_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn claim(
        &self,
        tenant: &TenantId,
        key: &str,
        broadcast: &BroadcastId,
        ttl: Duration,
    ) -> Result<Option<BroadcastId>, StoreError> {
        let stored_key = keys::embedded_idempotency(tenant, key);
        let _writer = self.ledger_lock();
        let now = now_millis();
        if let Some(stored) = self.ledger.get(&stored_key)? {
            let corrupt = || StoreError::CorruptLedger { what: "idempotency claim" };
            let (expires, holder) = stored.split_first_chunk::<8>().ok_or_else(corrupt)?;
            if u64::from_be_bytes(*expires) > now {
                let holder = std::str::from_utf8(holder).map_err(|_| corrupt())?;
                return BroadcastId::new(holder).map(Some).map_err(|_| corrupt());
            }
        }
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let value = [&now.saturating_add(ttl).to_be_bytes()[..], broadcast.as_str().as_bytes()].concat();
        let mut batch = self.write_batch();
        batch.insert(&self.ledger, stored_key, value);
        batch.commit()?;
        Ok(None)
    }

    fn release(&self, tenant: &TenantId, key: &str, broadcast: &BroadcastId) -> Result<bool, StoreError> {
        let stored_key = keys::embedded_idempotency(tenant, key);
        let _writer = self.ledger_lock();
        let Some(stored) = self.ledger.get(&stored_key)? else { return Ok(false) };
        let corrupt = || StoreError::CorruptLedger { what: "idempotency claim" };
        let (_, holder) = stored.split_first_chunk::<8>().ok_or_else(corrupt)?;
        if holder != broadcast.as_str().as_bytes() {
            return Ok(false);
        }
        let mut batch = self.write_batch();
        batch.remove(&self.ledger, stored_key);
        batch.commit()?;
        Ok(true)
    }

    fn create_broadcast(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shards_total: u64,
        at: UnixSeconds,
    ) -> Result<(), StoreError> {
        let key = keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Meta);
        let _writer = self.ledger_lock();
        if self.ledger.contains_key(&key)? {
            return Ok(());
        }
        let mut batch = self.write_batch();
        batch.insert(&self.ledger, key, [&shards_total.to_be_bytes()[..], &at.0.to_be_bytes()].concat());
        self.commit_for(batch, tenant, broadcast)
    }

    fn add_progress(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        step: &str,
        delta: &ProgressDelta,
        checkpoint: Option<(ShardId, ShardCheckpoint)>,
    ) -> Result<bool, StoreError> {
        let step_key =
            [keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Step), step.as_bytes().to_vec()]
                .concat();
        let counter_prefix = keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Count);
        let failure_prefix = keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Failure);
        let _writer = self.ledger_lock();
        let mut batch = self.bookkeeping_batch();
        let mut staged = false;
        if let Some((shard, checkpoint)) = checkpoint {
            staged = self.stage_checkpoint(&mut batch, tenant, broadcast, shard, checkpoint)?;
        }
        if let Some(partial) = &delta.replaces_partial {
            let key = [&failure_prefix[..], keys::partial_field(partial).as_bytes()].concat();
            if self.ledger.contains_key(&key)? {
                batch.remove(&self.ledger, key);
                staged = true;
            }
        }
        let applied = !self.ledger.contains_key(&step_key)?;
        if applied {
            // Each stored counter is read and written once: counter names are unique, so no
            // addition builds on a value this batch replaces.
            for (name, n) in delta.counts.nonzero() {
                let key = [&counter_prefix[..], name.as_bytes()].concat();
                let stored = self.ledger.get(&key)?.map(|bytes| read_u64(&bytes, "counter")).transpose()?;
                batch.insert(&self.ledger, key, stored.unwrap_or(0).saturating_add(n).to_be_bytes());
            }
            self.stage_samples(&mut batch, &failure_prefix, delta)?;
            batch.insert(&self.ledger, step_key, []);
        }
        if applied || staged {
            self.commit_for(batch, tenant, broadcast)?;
        }
        Ok(applied)
    }

    /// Adds `delta`'s samples to `batch`: each class keeps its first
    /// [`ledger::MAX_SAMPLES_PER_CLASS`] distinct ones. The caller holds the ledger lock.
    fn stage_samples(
        &self,
        batch: &mut Batch,
        prefix: &[u8],
        delta: &ProgressDelta,
    ) -> Result<(), StoreError> {
        let samples = delta.distinct_samples();
        let mut classes: Vec<_> = samples.iter().map(|(class, _)| *class).collect();
        classes.dedup();
        for class in classes {
            let mut stored = Vec::new();
            for n in 0..ledger::MAX_SAMPLES_PER_CLASS {
                let key = [prefix, keys::sample_field(class, n).as_bytes()].concat();
                match self.ledger.get(&key)? {
                    Some(text) => stored.push(text.to_vec()),
                    None => break,
                }
            }
            for (_, text) in samples.iter().filter(|(c, _)| *c == class) {
                if stored.len() >= ledger::MAX_SAMPLES_PER_CLASS {
                    break;
                }
                if !stored.iter().any(|known| known == text.as_bytes()) {
                    let key = [prefix, keys::sample_field(class, stored.len()).as_bytes()].concat();
                    batch.insert(&self.ledger, key, text.as_bytes());
                    stored.push(text.as_bytes().to_vec());
                }
            }
        }
        Ok(())
    }

    fn set_partial(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        partial: &str,
        final_step: &str,
        seq: u64,
        delta: &ProgressDelta,
    ) -> Result<bool, StoreError> {
        let step_key =
            [keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Step), final_step.as_bytes().to_vec()]
                .concat();
        let key = [
            keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Failure),
            keys::partial_field(partial).into_bytes(),
        ]
        .concat();
        let _writer = self.ledger_lock();
        if self.ledger.contains_key(&step_key)? {
            return Ok(false);
        }
        if let Some(stored) = self.ledger.get(&key)? {
            let stored = std::str::from_utf8(&stored)
                .map_err(|_| StoreError::CorruptLedger { what: "provisional snapshot" })?;
            if ledger::decode_partial(stored)?.0 >= seq {
                return Ok(false);
            }
        }
        let mut batch = self.bookkeeping_batch();
        batch.insert(&self.ledger, key, ledger::encode_partial(seq, &delta.counts).into_bytes());
        self.commit_for(batch, tenant, broadcast)?;
        Ok(true)
    }

    fn save_checkpoint(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shard: ShardId,
        checkpoint: ShardCheckpoint,
    ) -> Result<bool, StoreError> {
        let _writer = self.ledger_lock();
        let mut batch = self.bookkeeping_batch();
        let staged = self.stage_checkpoint(&mut batch, tenant, broadcast, shard, checkpoint)?;
        if staged {
            self.commit_for(batch, tenant, broadcast)?;
        }
        Ok(staged)
    }

    /// Adds `checkpoint` to `batch` unless the stored one is further on; the caller holds the
    /// ledger lock.
    fn stage_checkpoint(
        &self,
        batch: &mut Batch,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shard: ShardId,
        checkpoint: ShardCheckpoint,
    ) -> Result<bool, StoreError> {
        let key = self.checkpoint_key(tenant, broadcast, shard);
        if let Some(stored) = self.ledger.get(&key)? {
            if ShardCheckpoint::from_bytes(&stored)?.next_page > checkpoint.next_page {
                return Ok(false);
            }
        }
        batch.insert(&self.ledger, key, checkpoint.to_bytes());
        Ok(true)
    }

    /// Commits a batch of writes to one broadcast, recording with them that it was written now,
    /// which restarts its retention. Every write to a broadcast's entries commits through here.
    fn commit_for(
        &self,
        mut batch: Batch,
        tenant: &TenantId,
        broadcast: &BroadcastId,
    ) -> Result<(), StoreError> {
        let key = keys::embedded_broadcast(tenant, broadcast, LedgerEntry::LastWrite);
        batch.insert(&self.ledger, key, now_millis().to_be_bytes());
        Ok(batch.commit()?)
    }

    /// Deletes every broadcast last written [`BROADCAST_RETENTION`] or more before `now_ms`, and
    /// every idempotency claim expired by then. Steps from one broadcast's first key past all of
    /// its entries, so a sweep reads a few keys per broadcast, not its thousands of steps. Each
    /// deletion looks again under the ledger lock: a broadcast written meanwhile stays.
    pub(super) fn expire(&self, now_ms: u64) -> Result<Expired, StoreError> {
        let retention = u64::try_from(BROADCAST_RETENTION.as_millis()).unwrap_or(u64::MAX);
        let expired_broadcast = |prefix: &[u8]| -> Result<bool, StoreError> {
            Ok(self.last_write(prefix)?.saturating_add(retention) <= now_ms)
        };
        let expired_claim = |value: &[u8]| -> Result<bool, StoreError> {
            let expiry =
                value.first_chunk::<8>().ok_or(StoreError::CorruptLedger { what: "idempotency claim" })?;
            Ok(u64::from_be_bytes(*expiry) <= now_ms)
        };
        let mut expired = Expired::default();
        let mut from = Bound::Unbounded;
        while let Some(entry) = self.ledger.range::<Vec<u8>, _>((from, Bound::Unbounded)).next() {
            let (key, value) = entry?;
            match keys::parse_embedded_ledger_key(&key) {
                Some(LedgerKey::Broadcast { prefix }) => {
                    if expired_broadcast(prefix)? {
                        let _writer = self.ledger_lock();
                        if expired_broadcast(prefix)? {
                            let mut batch = self.write_batch();
                            for stored in self.ledger.prefix(prefix) {
                                batch.remove(&self.ledger, stored?.0);
                            }
                            batch.commit()?;
                            expired.broadcasts += 1;
                        }
                    }
                    from = Bound::Included(keys::past_broadcast(prefix));
                }
                Some(LedgerKey::Claim) => {
                    if expired_claim(&value)? {
                        let _writer = self.ledger_lock();
                        if let Some(stored) = self.ledger.get(&key)? {
                            if expired_claim(&stored)? {
                                let mut batch = self.write_batch();
                                batch.remove(&self.ledger, key.clone());
                                batch.commit()?;
                                expired.claims += 1;
                            }
                        }
                    }
                    from = Bound::Excluded(key.to_vec());
                }
                None => from = Bound::Excluded(key.to_vec()),
            }
        }
        Ok(expired)
    }

    /// When the broadcast whose entries start with `prefix` was last written: its `LastWrite`
    /// entry, else (entries from before there was one) its creation, else long ago.
    fn last_write(&self, prefix: &[u8]) -> Result<u64, StoreError> {
        if let Some(at) = self.ledger.get(keys::broadcast_entry(prefix, LedgerEntry::LastWrite))? {
            return read_u64(&at, "last write");
        }
        let Some(meta) = self.ledger.get(keys::broadcast_entry(prefix, LedgerEntry::Meta))? else {
            return Ok(0);
        };
        let (_, created_at) = read_meta(&meta)?;
        Ok(u64::from(created_at.0) * 1000)
    }

    fn checkpoint_key(&self, tenant: &TenantId, broadcast: &BroadcastId, shard: ShardId) -> Vec<u8> {
        let prefix = keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Checkpoint);
        [&prefix[..], &shard.0.to_be_bytes()].concat()
    }

    fn load_checkpoint(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shard: ShardId,
    ) -> Result<Option<ShardCheckpoint>, StoreError> {
        let stored = self.ledger.get(self.checkpoint_key(tenant, broadcast, shard))?;
        stored.map(|bytes| ShardCheckpoint::from_bytes(&bytes)).transpose()
    }

    fn status(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
    ) -> Result<Option<BroadcastStatus>, StoreError> {
        // Under the writers' lock, so counters and rejections come from the same instant.
        let _reader = self.ledger_lock();
        let Some(meta) = self.ledger.get(keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Meta))?
        else {
            return Ok(None);
        };
        let (shards_total, created_at) = read_meta(&meta)?;
        let mut counts = BroadcastCounts::default();
        let counter_prefix = keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Count);
        // One point read per known counter (one written by a newer version is left out). A
        // prefix scan would step over every overwritten version the LSM tree still holds: at 1M
        // subscribers that was 7% of the process's CPU, for a watcher polling a few times a second.
        for (name, field) in ledger::COUNT_FIELDS {
            if let Some(value) = self.ledger.get([&counter_prefix[..], name.as_bytes()].concat())? {
                *field(&mut counts) = read_u64(&value, "counter")?;
            }
        }
        for (n, name) in ledger::CLASS_FIELDS.iter().enumerate() {
            if let Some(value) = self.ledger.get([&counter_prefix[..], name.as_bytes()].concat())? {
                counts.failures[n] = read_u64(&value, "counter")?;
            }
        }
        // Samples and the live provisional snapshots: a few dozen entries at most. Entries of
        // other versions (an older one's rejection reasons) are left out.
        let mut samples = Vec::new();
        let failure_prefix = keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Failure);
        for entry in self.ledger.prefix(&failure_prefix) {
            let (key, value) = entry?;
            let Ok(field) = std::str::from_utf8(&key[failure_prefix.len()..]) else { continue };
            let corrupt = || StoreError::CorruptLedger { what: "failure entry" };
            match keys::parse_failure_field(field) {
                Some(keys::FailureField::Sample(class)) => {
                    samples.push((class, String::from_utf8(value.to_vec()).map_err(|_| corrupt())?));
                }
                Some(keys::FailureField::Partial) => {
                    let value = std::str::from_utf8(&value).map_err(|_| corrupt())?;
                    counts.add(&ledger::decode_partial(value)?.1);
                }
                None => {}
            }
        }
        ledger::sort_samples(&mut samples);
        Ok(Some(BroadcastStatus { shards_total, created_at, counts, samples }))
    }
}

impl EmbeddedStore {
    /// A progress step, with the checkpoint past its page when there is one, in one batch.
    async fn progress(
        &self,
        op: &'static str,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        step: &str,
        delta: &ProgressDelta,
        checkpoint: Option<(ShardId, ShardCheckpoint)>,
    ) -> Result<bool, StoreError> {
        observe(BACKEND, op, ledger::check_label("progress step", step))?;
        let checkpoint = match checkpoint {
            Some((shard, checkpoint)) => {
                Some((observe(BACKEND, op, self.inner.shards.check(shard))?, checkpoint))
            }
            None => None,
        };
        let (tenant, broadcast, step, delta) =
            (tenant.clone(), broadcast.clone(), step.to_owned(), delta.clone());
        let applied = self
            .blocking(op, move |inner| inner.add_progress(&tenant, &broadcast, &step, &delta, checkpoint))
            .await?;
        tracing::Span::current().record("applied", applied);
        telemetry::progress_step(BACKEND, applied);
        Ok(applied)
    }
}

#[async_trait]
impl BroadcastLedger for EmbeddedStore {
    #[instrument(name = "store.claim_idempotency_key", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast))]
    async fn claim_idempotency_key(
        &self,
        tenant: &TenantId,
        key: &str,
        broadcast: &BroadcastId,
        ttl: Duration,
    ) -> Result<Option<BroadcastId>, StoreError> {
        observe(BACKEND, "claim_idempotency_key", ledger::check_label("idempotency key", key))?;
        let (tenant, key, broadcast) = (tenant.clone(), key.to_owned(), broadcast.clone());
        self.blocking("claim_idempotency_key", move |inner| inner.claim(&tenant, &key, &broadcast, ttl)).await
    }

    #[instrument(name = "store.release_idempotency_key", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast))]
    async fn release_idempotency_key(
        &self,
        tenant: &TenantId,
        key: &str,
        broadcast: &BroadcastId,
    ) -> Result<bool, StoreError> {
        observe(BACKEND, "release_idempotency_key", ledger::check_label("idempotency key", key))?;
        let (tenant, key, broadcast) = (tenant.clone(), key.to_owned(), broadcast.clone());
        self.blocking("release_idempotency_key", move |inner| inner.release(&tenant, &key, &broadcast)).await
    }

    #[instrument(name = "store.create_broadcast", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast, shards_total))]
    async fn create_broadcast(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shards_total: u64,
        at: UnixSeconds,
    ) -> Result<(), StoreError> {
        let (tenant, broadcast) = (tenant.clone(), broadcast.clone());
        self.blocking("create_broadcast", move |inner| {
            inner.create_broadcast(&tenant, &broadcast, shards_total, at)
        })
        .await
    }

    #[instrument(name = "store.add_progress", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast, step = %step, applied))]
    async fn add_progress(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        step: &str,
        delta: &ProgressDelta,
    ) -> Result<bool, StoreError> {
        self.progress("add_progress", tenant, broadcast, step, delta, None).await
    }

    #[instrument(name = "store.add_progress_with_checkpoint", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast, step = %step, %shard, next_page = checkpoint.next_page, applied))]
    async fn add_progress_with_checkpoint(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        step: &str,
        delta: &ProgressDelta,
        shard: ShardId,
        checkpoint: ShardCheckpoint,
    ) -> Result<bool, StoreError> {
        self.progress(
            "add_progress_with_checkpoint",
            tenant,
            broadcast,
            step,
            delta,
            Some((shard, checkpoint)),
        )
        .await
    }

    #[instrument(name = "store.set_partial", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast, partial = %partial, seq))]
    async fn set_partial(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        partial: &str,
        final_step: &str,
        seq: u64,
        delta: &ProgressDelta,
    ) -> Result<bool, StoreError> {
        observe(BACKEND, "set_partial", ledger::check_label("progress step", partial))?;
        observe(BACKEND, "set_partial", ledger::check_label("progress step", final_step))?;
        let (tenant, broadcast, partial, final_step, delta) =
            (tenant.clone(), broadcast.clone(), partial.to_owned(), final_step.to_owned(), delta.clone());
        self.blocking("set_partial", move |inner| {
            inner.set_partial(&tenant, &broadcast, &partial, &final_step, seq, &delta)
        })
        .await
    }

    #[instrument(name = "store.save_checkpoint", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast, %shard, next_page = checkpoint.next_page))]
    async fn save_checkpoint(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shard: ShardId,
        checkpoint: ShardCheckpoint,
    ) -> Result<(), StoreError> {
        let shard = observe(BACKEND, "save_checkpoint", self.inner.shards.check(shard))?;
        let (tenant, broadcast) = (tenant.clone(), broadcast.clone());
        let stored = self
            .blocking("save_checkpoint", move |inner| {
                inner.save_checkpoint(&tenant, &broadcast, shard, checkpoint)
            })
            .await?;
        if !stored {
            tracing::debug!("a later checkpoint is stored; kept it");
        }
        Ok(())
    }

    #[instrument(name = "store.load_checkpoint", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast, %shard))]
    async fn load_checkpoint(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shard: ShardId,
    ) -> Result<Option<ShardCheckpoint>, StoreError> {
        let shard = observe(BACKEND, "load_checkpoint", self.inner.shards.check(shard))?;
        let (tenant, broadcast) = (tenant.clone(), broadcast.clone());
        self.blocking("load_checkpoint", move |inner| inner.load_checkpoint(&tenant, &broadcast, shard)).await
    }

    #[instrument(name = "store.status", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast))]
    async fn status(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
    ) -> Result<Option<BroadcastStatus>, StoreError> {
        let (tenant, broadcast) = (tenant.clone(), broadcast.clone());
        self.blocking("status", move |inner| inner.status(&tenant, &broadcast)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardCount;
    use crate::EmbeddedStore;

    fn entries_of(store: &EmbeddedStore, tenant: &TenantId, broadcast: &BroadcastId) -> usize {
        let prefix = keys::embedded_broadcast(tenant, broadcast, LedgerEntry::Meta);
        store.inner.ledger.prefix(&prefix[..prefix.len() - 1]).count()
    }

    #[tokio::test]
    async fn expiry_deletes_what_outlived_its_retention_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), ShardCount::new(2).unwrap()).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let delta = ProgressDelta {
            counts: BroadcastCounts { targeted: 3, accepted: 2, ..Default::default() },
            ..Default::default()
        };
        let [old, fresh, legacy] = ["old", "fresh", "legacy"].map(|id| BroadcastId::new(id).unwrap());
        let now = now_millis();
        for broadcast in [&old, &fresh, &legacy] {
            let created = UnixSeconds(u32::try_from(now / 1000).unwrap());
            store.create_broadcast(&tenant, broadcast, 2, created).await.unwrap();
            store.add_progress(&tenant, broadcast, "page/0/0", &delta).await.unwrap();
            let checkpoint = ShardCheckpoint { cursor: None, next_page: 1 };
            store.save_checkpoint(&tenant, broadcast, ShardId(1), checkpoint).await.unwrap();
        }
        store.claim_idempotency_key(&tenant, "brief", &old, Duration::from_secs(60)).await.unwrap();
        store.claim_idempotency_key(&tenant, "lasting", &fresh, BROADCAST_RETENTION * 2).await.unwrap();
        let last_write =
            |broadcast: &BroadcastId| keys::embedded_broadcast(&tenant, broadcast, LedgerEntry::LastWrite);
        // `old` was last written longer ago than the retention; `legacy` has no last write (an
        // older version's entries), so its creation, just now, counts.
        let long_ago = now - u64::try_from(BROADCAST_RETENTION.as_millis()).unwrap() - 1;
        store.inner.ledger.insert(last_write(&old), long_ago.to_be_bytes()).unwrap();
        store.inner.ledger.remove(last_write(&legacy)).unwrap();
        let before = entries_of(&store, &tenant, &fresh);
        assert!(before >= 5, "meta, counters, step, checkpoint, last write: {before}");

        assert_eq!(store.inner.expire(now).unwrap(), Expired { broadcasts: 1, claims: 0 });
        assert_eq!(entries_of(&store, &tenant, &old), 0);
        assert!(store.status(&tenant, &old).await.unwrap().is_none());
        assert_eq!(entries_of(&store, &tenant, &fresh), before);
        assert_eq!(store.status(&tenant, &fresh).await.unwrap().unwrap().counts.accepted, 2);
        assert_eq!(entries_of(&store, &tenant, &legacy), before - 1);

        // An hour on, the brief claim has lapsed; the lasting one and both broadcasts stay.
        assert_eq!(store.inner.expire(now + 3_600_000).unwrap(), Expired { broadcasts: 0, claims: 1 });
        let other = BroadcastId::new("other").unwrap();
        let held = store.claim_idempotency_key(&tenant, "lasting", &other, Duration::from_secs(60)).await;
        assert_eq!(held.unwrap(), Some(fresh.clone()));
        assert_eq!(
            store.claim_idempotency_key(&tenant, "brief", &other, Duration::from_secs(60)).await.unwrap(),
            None
        );

        // Past the retention everything goes, the lasting claim included.
        let later = now + 3 * u64::try_from(BROADCAST_RETENTION.as_millis()).unwrap();
        assert_eq!(store.inner.expire(later).unwrap(), Expired { broadcasts: 2, claims: 2 });
        assert_eq!(store.inner.ledger.iter().count(), 0);
    }
}
