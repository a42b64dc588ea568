//! The embedded store: subscriptions on local disk inside the process (`pushfan standalone`).
//!
//! Built on fjall, an LSM-tree key-value store: every write call is one atomic batch, written
//! to the journal before the call returns. Subscription writes (imports, removals, tags) and the
//! ledger's claims and broadcasts are fsynced before the call returns, so a restart, a crash or
//! a power loss after it loses nothing of them. Bookkeeping written per page of a broadcast
//! (delivery outcomes, progress counts, checkpoints) is handed to the OS at once, which a
//! process crash does not lose, and fsynced within [`BOOKKEEPING_FSYNC`] by the store's upkeep
//! thread, as Redis's `appendfsync everysec` does: a power loss may take its last second, while
//! the in-flight broadcast it describes is lost with the process anyway (the embedded bus lives
//! in memory). An fsync per page was two per 512 pushes, half a microsecond of each push's CPU.
//! The key layout is in [`crate::keys`]; records are the same binary records Redis holds.
//!
//! Delivery outcomes do not rewrite records: the `outcomes` partition keeps, under the record's
//! key, an edited copy of its 7-byte outcome header, and reads lay it over the record. A first
//! broadcast otherwise rewrote every record it reached (read, copy, journal, flush and compact
//! ~210 bytes per push for 6 bytes of news). Invariant: an outcome header exists only beside its
//! record (written under the writer lock after the record was read, or while the stamp of the
//! scan that read it shows no deletion since; removed with the record; dropped when an import
//! replaces the record).
//!
//! Why fjall: a quick measurement on this machine (200k records of 210 bytes under 36-byte
//! random keys, one fsynced transaction per batch) gave fjall 89k–134k writes/s and redb
//! 12k–48k/s (copy-on-write B-tree pages for random keys, and a file of 676–1350 bytes per
//! record); scans were 0.2–1M/s (fjall) and 0.8–2.3M/s (redb), both far above what one process
//! can encrypt. Import speed decided it.
//!
//! fjall is synchronous, so every call runs on tokio's blocking pool. Writers are serialized by
//! a mutex (this process is the only writer), which makes read-modify-write calls (`tag`,
//! `record_outcomes`) atomic without transactions; scans do not take it.
//!
//! The broadcast ledger ([`crate::ledger::BroadcastLedger`]) lives in the `ledger` partition and
//! the `ledger` submodule, with a mutex of its own. The store's upkeep thread sweeps expired
//! broadcasts and idempotency claims out of it a minute after open and hourly after that, until
//! the store is dropped.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fjall::{Batch, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use tracing::instrument;

use crate::error::StoreError;
use crate::model::{
    Audience, CursorPosition, DeliveryOutcome, DeliveryResult, ScanCursor, ScanPage, ScanStamp, Subscription,
    SubscriptionId, TenantId, Topic, UnixSeconds,
};
use crate::shard::{ShardCount, ShardId};
use crate::telemetry::{self, count, observe};
use crate::{keys, last_per_id, record, retopic, SubscriptionStore};

mod ledger;

const BACKEND: &str = "embedded";
/// How soon bookkeeping writes (see the module's docs) are fsynced.
const BOOKKEEPING_FSYNC: Duration = Duration::from_secs(1);
const SHARDS_KEY: &str = "shards";
/// When the ledger is first swept for expired entries (not at once: opening stays quick, and
/// tests see no sweep of their own), and how often after that.
const FIRST_EXPIRY_SWEEP: Duration = Duration::from_secs(60);
const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Numbers the stores opened in this process.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(0);

/// The embedded, on-disk [`SubscriptionStore`]. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    keyspace: Keyspace,
    subscriptions: PartitionHandle,
    members: PartitionHandle,
    /// Outcome headers laid over `subscriptions`' records (see the module's docs).
    outcomes: PartitionHandle,
    ledger: PartitionHandle,
    shards: ShardCount,
    /// Held by every write call, so read-modify-writes see no concurrent change.
    write_lock: Mutex<()>,
    /// The same for the ledger's writes, which never touch the subscription keys.
    ledger_lock: Mutex<()>,
    /// Which store of this process this is, so a stamp is not taken for another's.
    instance: u64,
    /// How many `remove` calls have deleted records: while a scan's count still holds, what
    /// it read still exists (see [`ScanStamp`]).
    deletions: AtomicU64,
    /// Dropped with the store, which ends the upkeep thread's wait.
    _stop_upkeep: mpsc::Sender<()>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("shards", &self.inner.shards).finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `path`. Blocks while fjall recovers its
    /// journal, so call it at startup. Refuses data written with a different shard count.
    pub fn open(path: &Path, shards: ShardCount) -> Result<Self, StoreError> {
        let keyspace = fjall::Config::new(path).open()?;
        let meta = keyspace.open_partition("meta", PartitionCreateOptions::default())?;
        let subscriptions = keyspace.open_partition("subs", PartitionCreateOptions::default())?;
        let members = keyspace.open_partition("members", PartitionCreateOptions::default())?;
        let outcomes = keyspace.open_partition("outcomes", PartitionCreateOptions::default())?;
        let ledger = keyspace.open_partition("ledger", PartitionCreateOptions::default())?;
        match meta.get(SHARDS_KEY)? {
            Some(stored) => {
                let stored = <[u8; 2]>::try_from(&*stored).map(u16::from_be_bytes).unwrap_or(0);
                if stored != shards.get() {
                    return Err(StoreError::ShardCountMismatch { stored, configured: shards.get() });
                }
            }
            None => {
                let mut batch = keyspace.batch().durability(Some(PersistMode::SyncAll));
                batch.insert(&meta, SHARDS_KEY, shards.get().to_be_bytes());
                batch.commit()?;
            }
        }
        let (stop_upkeep, stopped) = mpsc::channel();
        let inner = Inner {
            keyspace,
            subscriptions,
            members,
            outcomes,
            ledger,
            shards,
            write_lock: Mutex::new(()),
            ledger_lock: Mutex::new(()),
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            deletions: AtomicU64::new(0),
            _stop_upkeep: stop_upkeep,
        };
        let inner = Arc::new(inner);
        let upkept = Arc::downgrade(&inner);
        thread::Builder::new()
            .name("store-upkeep".into())
            .spawn(move || upkeep(&upkept, &stopped))
            .map_err(StoreError::EmbeddedThread)?;
        Ok(Self { inner })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        let result = match tokio::task::spawn_blocking(move || work(&inner)).await {
            Ok(result) => result,
            Err(join_error) => Err(StoreError::EmbeddedTask(join_error)),
        };
        observe(BACKEND, op, result)
    }
}

/// Until the store is gone: fsyncs the journal every [`BOOKKEEPING_FSYNC`] (cheap when nothing
/// was written), and sweeps the ledger after [`FIRST_EXPIRY_SWEEP`] and then every
/// [`EXPIRY_SWEEP_INTERVAL`].
fn upkeep(store: &Weak<Inner>, stopped: &mpsc::Receiver<()>) {
    let mut next_sweep = Instant::now() + FIRST_EXPIRY_SWEEP;
    loop {
        if stopped.recv_timeout(BOOKKEEPING_FSYNC) != Err(RecvTimeoutError::Timeout) {
            return;
        }
        let Some(inner) = store.upgrade() else { return };
        if let Err(error) = inner.keyspace.persist(PersistMode::SyncAll) {
            tracing::warn!(%error, "fsyncing the store's journal failed; the next tick tries again");
        }
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + EXPIRY_SWEEP_INTERVAL;
            sweep_expired(&inner);
        }
    }
}

fn sweep_expired(inner: &Inner) {
    match inner.expire(ledger::now_millis()) {
        Ok(expired) => {
            count("pushfan_store_expired_broadcasts_total", BACKEND, expired.broadcasts as usize);
            count("pushfan_store_expired_claims_total", BACKEND, expired.claims as usize);
            if expired != ledger::Expired::default() {
                tracing::info!(
                    broadcasts = expired.broadcasts,
                    claims = expired.claims,
                    "ledger entries expired"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "ledger expiry sweep failed; the next one tries again"),
    }
}

/// A subscription ready to write: its keys and encoded record.
struct Encoded {
    shard: ShardId,
    shard_prefix: Vec<u8>,
    id: SubscriptionId,
    tenant: TenantId,
    record: Vec<u8>,
    topics: Vec<Topic>,
}

impl Inner {
    /// A batch fsynced on commit.
    fn write_batch(&self) -> Batch {
        self.keyspace.batch().durability(Some(PersistMode::SyncAll))
    }

    /// A batch of bookkeeping, handed to the OS on commit and fsynced by the upkeep thread
    /// within [`BOOKKEEPING_FSYNC`] (see the module's docs).
    fn bookkeeping_batch(&self) -> Batch {
        self.keyspace.batch().durability(Some(PersistMode::Buffer))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panicking writer leaves nothing half-updated in memory,
        // and fjall batches are atomic on disk.
        self.write_lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_record(&self, key: &[u8]) -> Result<Option<fjall::Slice>, StoreError> {
        Ok(self.subscriptions.get(key)?)
    }

    fn stored_topics(&self, id: SubscriptionId, record: &[u8]) -> Result<Vec<Topic>, StoreError> {
        record::topics(record).map_err(|source| StoreError::CorruptRecord { id, source })
    }

    fn import(&self, encoded: Vec<Encoded>) -> Result<usize, StoreError> {
        let _writer = self.lock();
        let mut batch = self.write_batch();
        for sub in &encoded {
            let key = keys::with_id(&sub.shard_prefix, &sub.id);
            let old_topics = match self.read_record(&key)? {
                Some(old) => self.stored_topics(sub.id, &old)?,
                None => Vec::new(),
            };
            let shard = sub.shard;
            for stale in old_topics.iter().filter(|t| sub.topics.binary_search(t).is_err()) {
                batch.remove(
                    &self.members,
                    keys::with_id(&keys::embedded_topic(&sub.tenant, shard, stale), &sub.id),
                );
            }
            for topic in &sub.topics {
                batch.insert(
                    &self.members,
                    keys::with_id(&keys::embedded_topic(&sub.tenant, shard, topic), &sub.id),
                    [],
                );
            }
            // The new record's own header is the truth now.
            if self.outcomes.contains_key(&key)? {
                batch.remove(&self.outcomes, key.clone());
            }
            batch.insert(&self.subscriptions, key, sub.record.as_slice());
        }
        batch.commit()?;
        Ok(encoded.len())
    }

    fn get(&self, tenant: &TenantId, id: SubscriptionId) -> Result<Option<Subscription>, StoreError> {
        let key = keys::with_id(&keys::embedded_shard(tenant, self.shards.shard_of(&id)), &id);
        let Some(record) = self.read_record(&key)? else { return Ok(None) };
        let outcome = self.outcomes.get(&key)?;
        decode(tenant, id, &record, outcome.as_deref()).map(Some)
    }

    fn remove(&self, tenant: &TenantId, ids: &[SubscriptionId]) -> Result<usize, StoreError> {
        let _writer = self.lock();
        let mut batch = self.write_batch();
        let mut removed = 0;
        for id in ids {
            let shard = self.shards.shard_of(id);
            let key = keys::with_id(&keys::embedded_shard(tenant, shard), id);
            let Some(old) = self.read_record(&key)? else { continue };
            for topic in self.stored_topics(*id, &old)? {
                batch.remove(&self.members, keys::with_id(&keys::embedded_topic(tenant, shard, &topic), id));
            }
            batch.remove(&self.outcomes, key.clone());
            batch.remove(&self.subscriptions, key);
            removed += 1;
        }
        batch.commit()?;
        if removed > 0 {
            // After the commit: a scan that read the count before it may have read these
            // records, and must not find its stamp still holding.
            self.deletions.fetch_add(1, Ordering::AcqRel);
        }
        Ok(removed)
    }

    fn retag(
        &self,
        tenant: &TenantId,
        ids: &[SubscriptionId],
        topic: &Topic,
        add: bool,
    ) -> Result<usize, StoreError> {
        let _writer = self.lock();
        let mut batch = self.write_batch();
        let mut changed = 0;
        for id in ids {
            let shard = self.shards.shard_of(id);
            let key = keys::with_id(&keys::embedded_shard(tenant, shard), id);
            let Some(old) = self.read_record(&key)? else { continue };
            let Some(topics) = retopic(&self.stored_topics(*id, &old)?, topic, add)? else { continue };
            let updated = record::with_topics(&old, &topics)
                .map_err(|source| StoreError::CorruptRecord { id: *id, source })?;
            let member = keys::with_id(&keys::embedded_topic(tenant, shard, topic), id);
            if add {
                batch.insert(&self.members, member, []);
            } else {
                batch.remove(&self.members, member);
            }
            batch.insert(&self.subscriptions, key, updated);
            changed += 1;
        }
        batch.commit()?;
        Ok(changed)
    }

    /// This store's stamp as of now; a scan takes it before reading.
    fn stamp(&self) -> ScanStamp {
        ScanStamp { store: self.instance, deletions: self.deletions.load(Ordering::Acquire) }
    }

    fn record_outcomes(
        &self,
        tenant: &TenantId,
        outcomes: &[DeliveryOutcome],
        at: UnixSeconds,
        scanned: Option<ScanStamp>,
    ) -> Result<usize, StoreError> {
        // In shard and id order (stable: one id's outcomes keep theirs), so that each shard's
        // outcome headers and records are read in one walk each from its lowest id to its
        // highest: a delivery batch is one page of one shard, so its ids lie close together.
        let mut sorted: Vec<(ShardId, &DeliveryOutcome)> =
            outcomes.iter().map(|outcome| (self.shards.shard_of(&outcome.id), outcome)).collect();
        sorted.sort_by_key(|&(shard, outcome)| (shard, outcome.id));
        let _writer = self.lock();
        // Deletions take the writer lock too, so none comes between this check and the commit.
        let all_exist = scanned == Some(self.stamp());
        let mut batch = self.bookkeeping_batch();
        let mut recorded = 0;
        for group in sorted.chunk_by(|a, b| a.0 == b.0) {
            let prefix = keys::embedded_shard(tenant, group[0].0);
            let span = keys::id_span(&prefix, group[0].1.id, group[group.len() - 1].1.id);
            let mut kept = Walk::new(self.outcomes.range(span.clone()));
            let mut records = Walk::new(self.subscriptions.range(span));
            // A sparse group (a small topic's members) would step over many records: past this,
            // the rest are point reads.
            let budget = 4 * group.len() + 64;
            let mut last: Option<(SubscriptionId, [u8; record::OUTCOME_LEN])> = None;
            for &(_, outcome) in group {
                let id = outcome.id;
                let key = keys::with_id(&prefix, &id);
                let corrupt = |source| StoreError::CorruptRecord { id, source };
                let header = match last {
                    // The same id again in this call: go on from its updated header.
                    Some((previous, header)) if previous == id => Some(header),
                    // A kept header means the record exists (the module's invariant); without
                    // one, the record's own header is where this outcome starts from.
                    _ => {
                        let head = |stored: fjall::Slice| record::outcome_header(&stored).map_err(corrupt);
                        match kept.value(id)? {
                            Some(header) => Some(head(header)?),
                            // A success sets every field, and the scan vouches that the record
                            // exists: reading it would tell nothing.
                            None if all_exist && outcome.result == DeliveryResult::Delivered => {
                                Some(record::BLANK_OUTCOME)
                            }
                            None => match records.find(id, budget)? {
                                Found::At(record) => Some(head(record)?),
                                Found::Absent => None,
                                Found::GaveUp => self.read_record(&key)?.map(head).transpose()?,
                            },
                        }
                    }
                };
                let Some(mut header) = header else { continue };
                if record::apply_outcome(&mut header, outcome.result, at).map_err(corrupt)? {
                    batch.insert(&self.outcomes, key, header);
                }
                last = Some((id, header));
                recorded += 1;
            }
        }
        batch.commit()?;
        Ok(recorded)
    }

    fn scan(
        &self,
        tenant: &TenantId,
        audience: &Audience,
        shard: ShardId,
        after: Option<SubscriptionId>,
        page_size: usize,
    ) -> Result<ScanPage, StoreError> {
        let shard_prefix = keys::embedded_shard(tenant, shard);
        let (partition, prefix) = match audience {
            Audience::Everyone => (&self.subscriptions, shard_prefix.clone()),
            Audience::Topic(topic) => (&self.members, keys::embedded_topic(tenant, shard, topic)),
        };
        let page_size = page_size.max(1);
        // Before the reads: a deletion after this either came too late for them or changes
        // the count.
        let stamp = self.stamp();
        let mut subscriptions = Vec::with_capacity(page_size);
        let mut seen = 0;
        let mut last = None;
        // Members come in id order, as records and outcome headers do: one pass over each.
        let mut outcomes = Walk::new(self.outcomes.range(keys::id_range(&shard_prefix, after)));
        for entry in partition.range(keys::id_range(&prefix, after)).take(page_size) {
            let (key, value) = entry?;
            // Every key in the range is the prefix plus an id.
            let Some(id) = keys::id_suffix(&key) else { continue };
            seen += 1;
            last = Some(id);
            let record = match audience {
                Audience::Everyone => Some(value),
                Audience::Topic(_) => self.read_record(&keys::with_id(&shard_prefix, &id))?,
            };
            // A membership without its record would be a bug in this module's batches; skip it
            // rather than fail a broadcast.
            let Some(record) = record else { continue };
            let subscription = decode(tenant, id, &record, outcomes.value(id)?.as_deref())?;
            if subscription.is_in(audience) {
                subscriptions.push(subscription);
            }
        }
        let next =
            (seen == page_size).then_some(last).flatten().map(|id| ScanCursor(CursorPosition::After(id)));
        Ok(ScanPage { subscriptions, next, stamp: Some(stamp) })
    }
}

/// Decodes a record, with its kept outcome header laid over its own.
fn decode(
    tenant: &TenantId,
    id: SubscriptionId,
    record: &[u8],
    outcome: Option<&[u8]>,
) -> Result<Subscription, StoreError> {
    let corrupt = |source| StoreError::CorruptRecord { id, source };
    let mut subscription = record::decode(tenant, id, record).map_err(corrupt)?;
    if let Some(header) = outcome {
        (subscription.last_success_at, subscription.consecutive_failures) =
            record::outcome(header).map_err(corrupt)?;
    }
    Ok(subscription)
}

/// One id-ordered key range (a shard's records or outcome headers), looked up in ascending id
/// order in a single pass: stepping to the next entry costs a fraction of a point read, which
/// searches the memtable and probes every segment's filter again.
struct Walk<I> {
    entries: I,
    next: Option<(SubscriptionId, fjall::Slice)>,
    stepped: usize,
}

/// What [`Walk::find`] found.
enum Found {
    At(fjall::Slice),
    Absent,
    /// The step budget ran out first; the walk is spent.
    GaveUp,
}

impl<I: Iterator<Item = fjall::Result<fjall::KvPair>>> Walk<I> {
    fn new(entries: I) -> Self {
        Self { entries, next: None, stepped: 0 }
    }

    /// The value under `id`, stepping over at most `budget` entries in the walk's life; ids
    /// must come in ascending order.
    fn find(&mut self, id: SubscriptionId, budget: usize) -> Result<Found, StoreError> {
        loop {
            match &self.next {
                Some((next, _)) if *next > id => return Ok(Found::Absent),
                Some((next, _)) if *next == id => {
                    return Ok(self.next.take().map_or(Found::Absent, |(_, value)| Found::At(value)))
                }
                _ => {}
            }
            if self.stepped >= budget {
                return Ok(Found::GaveUp);
            }
            self.stepped += 1;
            let Some(entry) = self.entries.next() else {
                self.next = None;
                return Ok(Found::Absent);
            };
            let (key, value) = entry?;
            self.next = keys::id_suffix(&key).map(|next| (next, value));
        }
    }

    /// [`Walk::find`] without a budget.
    fn value(&mut self, id: SubscriptionId) -> Result<Option<fjall::Slice>, StoreError> {
        Ok(match self.find(id, usize::MAX)? {
            Found::At(value) => Some(value),
            Found::Absent | Found::GaveUp => None,
        })
    }
}

#[async_trait]
impl SubscriptionStore for EmbeddedStore {
    fn shard_count(&self) -> ShardCount {
        self.inner.shards
    }

    #[instrument(name = "store.import", skip_all, fields(backend = BACKEND, count = subscriptions.len()))]
    async fn import(&self, subscriptions: &[Subscription]) -> Result<usize, StoreError> {
        let shards = self.inner.shards;
        let encoded: Vec<Encoded> = last_per_id(subscriptions)
            .into_iter()
            .map(|sub| {
                let mut record = Vec::with_capacity(256);
                record::encode(sub, &mut record);
                let shard = shards.shard_of(&sub.id);
                Encoded {
                    shard,
                    shard_prefix: keys::embedded_shard(&sub.tenant, shard),
                    id: sub.id,
                    tenant: sub.tenant.clone(),
                    record,
                    topics: sub.topics.clone(),
                }
            })
            .collect();
        let written = self.blocking("import", move |inner| inner.import(encoded)).await?;
        count(telemetry::IMPORTED, BACKEND, written);
        Ok(written)
    }

    #[instrument(name = "store.get", skip_all, fields(backend = BACKEND, tenant = %tenant, %id))]
    async fn get(&self, tenant: &TenantId, id: SubscriptionId) -> Result<Option<Subscription>, StoreError> {
        let tenant = tenant.clone();
        self.blocking("get", move |inner| inner.get(&tenant, id)).await
    }

    #[instrument(name = "store.remove", skip_all, fields(backend = BACKEND, tenant = %tenant, count = ids.len()))]
    async fn remove(&self, tenant: &TenantId, ids: &[SubscriptionId]) -> Result<usize, StoreError> {
        let (tenant, ids) = (tenant.clone(), ids.to_vec());
        let removed = self.blocking("remove", move |inner| inner.remove(&tenant, &ids)).await?;
        count(telemetry::REMOVED, BACKEND, removed);
        Ok(removed)
    }

    #[instrument(name = "store.tag", skip_all, fields(backend = BACKEND, tenant = %tenant, %topic, count = ids.len()))]
    async fn tag(
        &self,
        tenant: &TenantId,
        ids: &[SubscriptionId],
        topic: &Topic,
    ) -> Result<usize, StoreError> {
        let (tenant, ids, topic) = (tenant.clone(), ids.to_vec(), topic.clone());
        let changed = self.blocking("tag", move |inner| inner.retag(&tenant, &ids, &topic, true)).await?;
        count(telemetry::RETAGGED, BACKEND, changed);
        Ok(changed)
    }

    #[instrument(name = "store.untag", skip_all, fields(backend = BACKEND, tenant = %tenant, %topic, count = ids.len()))]
    async fn untag(
        &self,
        tenant: &TenantId,
        ids: &[SubscriptionId],
        topic: &Topic,
    ) -> Result<usize, StoreError> {
        let (tenant, ids, topic) = (tenant.clone(), ids.to_vec(), topic.clone());
        let changed = self.blocking("untag", move |inner| inner.retag(&tenant, &ids, &topic, false)).await?;
        count(telemetry::RETAGGED, BACKEND, changed);
        Ok(changed)
    }

    #[instrument(name = "store.record_outcomes", skip_all, fields(backend = BACKEND, tenant = %tenant, count = outcomes.len()))]
    async fn record_outcomes(
        &self,
        tenant: &TenantId,
        outcomes: &[DeliveryOutcome],
        at: UnixSeconds,
        scanned: Option<ScanStamp>,
    ) -> Result<usize, StoreError> {
        let (tenant, outcomes) = (tenant.clone(), outcomes.to_vec());
        let recorded = self
            .blocking("record_outcomes", move |inner| inner.record_outcomes(&tenant, &outcomes, at, scanned))
            .await?;
        count(telemetry::OUTCOMES, BACKEND, recorded);
        Ok(recorded)
    }

    #[instrument(name = "store.scan_shard", skip_all, fields(backend = BACKEND, tenant = %tenant, %shard, page_size, returned))]
    async fn scan_shard(
        &self,
        tenant: &TenantId,
        audience: &Audience,
        shard: ShardId,
        cursor: ScanCursor,
        page_size: usize,
    ) -> Result<ScanPage, StoreError> {
        let shard = observe(BACKEND, "scan_shard", self.inner.shards.check(shard))?;
        let after = match cursor.0 {
            CursorPosition::Start => None,
            CursorPosition::After(id) => Some(id),
            CursorPosition::Redis(_) | CursorPosition::RedisAt { .. } => {
                return observe(BACKEND, "scan_shard", Err(StoreError::InvalidCursor))
            }
        };
        let (tenant, audience) = (tenant.clone(), audience.clone());
        let page = self
            .blocking("scan_shard", move |inner| inner.scan(&tenant, &audience, shard, after, page_size))
            .await?;
        tracing::Span::current().record("returned", page.subscriptions.len());
        count(telemetry::SCANNED, BACKEND, page.subscriptions.len());
        Ok(page)
    }
}
