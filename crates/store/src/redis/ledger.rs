//! [`BroadcastLedger`] on Redis: the key layout is in [`crate::keys`].
//!
//! Every write is one Lua script over the broadcast's five keys (one hash tag, so one cluster
//! node), which makes it atomic: `add_progress` adds its step to the step set and increments the
//! counters only if the step was new, in one step that nothing can interleave with, so a
//! redelivered step never counts twice. Every write also refreshes the five keys' expiry. An
//! idempotency key is one `SET NX PX GET`: the claim and the read of the holder are one command.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use tracing::instrument;

use super::{RedisStore, BACKEND};
use crate::error::StoreError;
use crate::keys::{self, BroadcastKeys};
use crate::ledger::{
    self, BroadcastCounts, BroadcastId, BroadcastLedger, BroadcastStatus, ProgressDelta, ShardCheckpoint,
    BROADCAST_RETENTION,
};
use crate::model::{TenantId, UnixSeconds};
use crate::shard::ShardId;
use crate::telemetry::{self, observe};

/// Records a broadcast unless it exists.
const CREATE_SCRIPT: &str = r"
-- KEYS: the broadcast's meta, counts, rej, steps and ckpt keys.
-- ARGV[1]: retention in ms; ARGV[2]: shards_total; ARGV[3]: created_at.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'shards_total', ARGV[2], 'created_at', ARGV[3])
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return 1
";

/// Adds a step's delta once: the `SADD` decides, in the same atomic script as the increments.
/// The provisional snapshot the step replaces goes whether or not the step is new.
const PROGRESS_SCRIPT: &str = r"
-- KEYS: the broadcast's meta, counts, rej, steps and ckpt keys.
-- ARGV[1]: retention in ms; ARGV[2]: the step; ARGV[3]: n, the number of counter pairs;
-- then n pairs (counter, increment), then the snapshot field to remove ('' for none), then
-- pairs (failure class, sample).
-- Returns 1 if the step was applied, 0 if it had been already.
local applied = redis.call('SADD', KEYS[4], ARGV[2])
local counters_end = 3 + 2 * tonumber(ARGV[3])
if ARGV[counters_end + 1] ~= '' then
  redis.call('HDEL', KEYS[3], ARGV[counters_end + 1])
end
if applied == 1 then
  for i = 4, counters_end, 2 do
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  for i = counters_end + 2, #ARGV, 2 do
    SAMPLE
  end
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return applied
";

/// Keeps one sample: in the first free of its class's fields `s|<class>|0..N-1`, unless one of
/// them holds the same text already (so the first N distinct samples stay).
const SAMPLE: &str = r"
    local class, text = ARGV[i], ARGV[i + 1]
    for n = 0, MAX_SAMPLES - 1 do
      local field = 's|' .. class .. '|' .. n
      local stored = redis.call('HGET', KEYS[3], field)
      if not stored then
        redis.call('HSET', KEYS[3], field, text)
        break
      end
      if stored == text then break end
    end
";

/// Replaces a batch's provisional snapshot unless its results step is applied or the stored
/// snapshot is as recent.
const PARTIAL_SCRIPT: &str = r"
-- KEYS: the broadcast's meta, counts, rej, steps and ckpt keys.
-- ARGV[1]: retention in ms; ARGV[2]: the results step; ARGV[3]: the snapshot's field;
-- ARGV[4]: its sequence number; ARGV[5]: the snapshot, '<seq>;<counters>'.
-- Returns 1 if stored.
if redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 1 then
  return 0
end
local stored = redis.call('HGET', KEYS[3], ARGV[3])
if stored then
  local seq = tonumber(string.match(stored, '^(%d+);'))
  if seq and seq >= tonumber(ARGV[4]) then
    return 0
  end
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return 1
";

/// A page's step and the checkpoint past it, in one atomic script: the checkpoint is stored
/// unless the stored one is further on, whether or not the step is new; the step's increments
/// are applied once.
const PAGE_SCRIPT: &str = r"
-- KEYS: the broadcast's meta, counts, rej, steps and ckpt keys.
-- ARGV[1]: retention in ms; ARGV[2]: the shard; ARGV[3]: its checkpoint, whose first 4 bytes are
-- its next page as a big-endian u32; ARGV[4]: the step; ARGV[5]: n, the number of counter pairs;
-- then n pairs (counter, increment), then the snapshot field to remove ('' for none), then
-- pairs (failure class, sample).
-- Returns 1 if the step was applied, 0 if it had been already.
local function page(checkpoint)
  local a, b, c, d = string.byte(checkpoint, 1, 4)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local stored = redis.call('HGET', KEYS[5], ARGV[2])
if not (stored and #stored >= 4 and page(stored) > page(ARGV[3])) then
  redis.call('HSET', KEYS[5], ARGV[2], ARGV[3])
end
local applied = redis.call('SADD', KEYS[4], ARGV[4])
local counters_end = 5 + 2 * tonumber(ARGV[5])
if ARGV[counters_end + 1] ~= '' then
  redis.call('HDEL', KEYS[3], ARGV[counters_end + 1])
end
if applied == 1 then
  for i = 6, counters_end, 2 do
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  for i = counters_end + 2, #ARGV, 2 do
    SAMPLE
  end
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return applied
";

/// Stores a checkpoint unless the stored one is further on.
const CHECKPOINT_SCRIPT: &str = r"
-- KEYS: the broadcast's meta, counts, rej, steps and ckpt keys.
-- ARGV[1]: retention in ms; ARGV[2]: the shard; ARGV[3]: the checkpoint, whose first 4 bytes are
-- its next page as a big-endian u32. Returns 1 if stored, 0 if the stored one is further on.
local function page(checkpoint)
  local a, b, c, d = string.byte(checkpoint, 1, 4)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local stored = redis.call('HGET', KEYS[5], ARGV[2])
if stored and #stored >= 4 and page(stored) > page(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[5], ARGV[2], ARGV[3])
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return 1
";

/// Reads a broadcast's meta, counts and failure entries (samples, provisional snapshots) at one
/// instant, so a snapshot and the results step that replaces it never both count.
const STATUS_SCRIPT: &str = r"
-- KEYS: the broadcast's meta, counts and rej keys.
return {
  redis.call('HGETALL', KEYS[1]),
  redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
}
";

/// Deletes an idempotency claim only if it still names the given broadcast.
const RELEASE_SCRIPT: &str = r"
-- KEYS[1]: the claim. ARGV[1]: the broadcast id it must hold. Returns 1 if deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The ledger's scripts, hashed once per store.
pub(super) struct Scripts {
    create: Script,
    progress: Script,
    page: Script,
    partial: Script,
    checkpoint: Script,
    status: Script,
    release: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            create: Script::new(CREATE_SCRIPT),
            progress: Script::new(&with_sample(PROGRESS_SCRIPT)),
            page: Script::new(&with_sample(PAGE_SCRIPT)),
            partial: Script::new(PARTIAL_SCRIPT),
            checkpoint: Script::new(CHECKPOINT_SCRIPT),
            status: Script::new(STATUS_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
        }
    }
}

/// A progress script with [`SAMPLE`] in its sample loop.
fn with_sample(script: &str) -> String {
    let sample = SAMPLE.replace("MAX_SAMPLES", &ledger::MAX_SAMPLES_PER_CLASS.to_string());
    script.replace("    SAMPLE\n", &sample)
}

/// A duration in whole milliseconds, at least 1 (Redis refuses an expiry of 0).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn invoke_on_broadcast<'a>(script: &'a Script, keys: &BroadcastKeys) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for key in keys.all() {
        invocation.key(key);
    }
    invocation.arg(millis(BROADCAST_RETENTION));
    invocation
}

fn unexpected(what: &str, value: &str) -> StoreError {
    StoreError::UnexpectedReply(format!("ledger {what} {value:?}"))
}

impl RedisStore {
    /// A progress step, with the checkpoint past its page when there is one: the progress
    /// script, or the page script that also stores the checkpoint.
    async fn progress(
        &self,
        op: &'static str,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        step: &str,
        delta: &ProgressDelta,
        checkpoint: Option<(ShardId, ShardCheckpoint)>,
    ) -> Result<bool, StoreError> {
        let result = async {
            ledger::check_label("progress step", step)?;
            let keys = BroadcastKeys::new(tenant, broadcast);
            let mut invocation = match checkpoint {
                Some((shard, checkpoint)) => {
                    let shard = self.shards.check(shard)?;
                    let mut invocation = invoke_on_broadcast(&self.ledger_scripts.page, &keys);
                    invocation.arg(shard.0).arg(checkpoint.to_bytes());
                    invocation
                }
                None => invoke_on_broadcast(&self.ledger_scripts.progress, &keys),
            };
            progress_args(&mut invocation, step, delta);
            let applied: bool = invocation.invoke_async(&mut self.connection()).await?;
            Ok(applied)
        }
        .await;
        let applied = observe(BACKEND, op, result)?;
        tracing::Span::current().record("applied", applied);
        telemetry::progress_step(BACKEND, applied);
        Ok(applied)
    }
}

/// The progress script's step, counter, snapshot and sample arguments (the page script's too).
fn progress_args(invocation: &mut redis::ScriptInvocation<'_>, step: &str, delta: &ProgressDelta) {
    let counters: Vec<(&str, u64)> = delta.counts.nonzero().collect();
    invocation.arg(step).arg(counters.len());
    for (name, n) in counters {
        invocation.arg(name).arg(n);
    }
    invocation.arg(delta.replaces_partial.as_deref().map(keys::partial_field).unwrap_or_default());
    for (class, text) in delta.distinct_samples() {
        invocation.arg(class.label()).arg(text);
    }
}

/// Builds a status from the three hashes the status script read; `None` without meta.
fn parse_status(
    meta: HashMap<String, String>,
    counters: HashMap<String, u64>,
    failures: HashMap<String, String>,
) -> Result<Option<BroadcastStatus>, StoreError> {
    if meta.is_empty() {
        return Ok(None);
    }
    let meta_field = |name: &str| -> Result<&String, StoreError> {
        meta.get(name).ok_or_else(|| StoreError::UnexpectedReply(format!("ledger meta without {name}")))
    };
    let shards_total = meta_field("shards_total")?;
    let shards_total = shards_total.parse().map_err(|_| unexpected("shards_total", shards_total))?;
    let created_at = meta_field("created_at")?;
    let created_at = UnixSeconds(created_at.parse().map_err(|_| unexpected("created_at", created_at))?);
    let mut counts = BroadcastCounts::default();
    for (name, value) in counters {
        if let Some(counter) = counts.named_mut(&name) {
            *counter = value;
        }
    }
    let mut samples = Vec::new();
    // Fields of other versions (an older one's rejection reasons) are left out.
    for (field, value) in failures {
        match keys::parse_failure_field(&field) {
            Some(keys::FailureField::Sample(class)) => samples.push((class, value)),
            Some(keys::FailureField::Partial) => counts.add(&ledger::decode_partial(&value)?.1),
            None => {}
        }
    }
    ledger::sort_samples(&mut samples);
    Ok(Some(BroadcastStatus { shards_total, created_at, counts, samples }))
}

#[async_trait]
impl BroadcastLedger for RedisStore {
    #[instrument(name = "store.claim_idempotency_key", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast))]
    async fn claim_idempotency_key(
        &self,
        tenant: &TenantId,
        key: &str,
        broadcast: &BroadcastId,
        ttl: Duration,
    ) -> Result<Option<BroadcastId>, StoreError> {
        let result = async {
            ledger::check_label("idempotency key", key)?;
            // NX with GET (Redis 7): sets only if absent and returns what was there, atomically.
            let holder: Option<String> = redis::cmd("SET")
                .arg(keys::idempotency(tenant, key))
                .arg(broadcast.as_str())
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .arg("GET")
                .query_async(&mut self.connection())
                .await?;
            holder
                .map(|holder| {
                    BroadcastId::new(&holder).map_err(|_| unexpected("idempotency holder", &holder))
                })
                .transpose()
        }
        .await;
        observe(BACKEND, "claim_idempotency_key", result)
    }

    #[instrument(name = "store.release_idempotency_key", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast))]
    async fn release_idempotency_key(
        &self,
        tenant: &TenantId,
        key: &str,
        broadcast: &BroadcastId,
    ) -> Result<bool, StoreError> {
        let result = async {
            ledger::check_label("idempotency key", key)?;
            // Compare and delete in one step, so a claim another request made since stays.
            let released: i64 = self
                .ledger_scripts
                .release
                .key(keys::idempotency(tenant, key))
                .arg(broadcast.as_str())
                .invoke_async(&mut self.connection())
                .await?;
            Ok(released == 1)
        }
        .await;
        observe(BACKEND, "release_idempotency_key", result)
    }

    #[instrument(name = "store.create_broadcast", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast, shards_total))]
    async fn create_broadcast(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shards_total: u64,
        at: UnixSeconds,
    ) -> Result<(), StoreError> {
        let keys = BroadcastKeys::new(tenant, broadcast);
        let mut invocation = invoke_on_broadcast(&self.ledger_scripts.create, &keys);
        invocation.arg(shards_total).arg(at.0);
        let result = invocation.invoke_async::<()>(&mut self.connection()).await.map_err(StoreError::from);
        observe(BACKEND, "create_broadcast", result)
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

    #[instrument(name = "store.set_partial", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast, partial = %partial, seq, stored))]
    async fn set_partial(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        partial: &str,
        final_step: &str,
        seq: u64,
        delta: &ProgressDelta,
    ) -> Result<bool, StoreError> {
        let result = async {
            ledger::check_label("progress step", partial)?;
            ledger::check_label("progress step", final_step)?;
            let keys = BroadcastKeys::new(tenant, broadcast);
            let mut invocation = invoke_on_broadcast(&self.ledger_scripts.partial, &keys);
            invocation
                .arg(final_step)
                .arg(keys::partial_field(partial))
                .arg(seq)
                .arg(ledger::encode_partial(seq, &delta.counts));
            let stored: bool = invocation.invoke_async(&mut self.connection()).await?;
            tracing::Span::current().record("stored", stored);
            Ok(stored)
        }
        .await;
        observe(BACKEND, "set_partial", result)
    }

    #[instrument(name = "store.save_checkpoint", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast, %shard, next_page = checkpoint.next_page))]
    async fn save_checkpoint(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shard: ShardId,
        checkpoint: ShardCheckpoint,
    ) -> Result<(), StoreError> {
        let result = async {
            let shard = self.shards.check(shard)?;
            let keys = BroadcastKeys::new(tenant, broadcast);
            let mut invocation = invoke_on_broadcast(&self.ledger_scripts.checkpoint, &keys);
            invocation.arg(shard.0).arg(checkpoint.to_bytes());
            let stored: bool = invocation.invoke_async(&mut self.connection()).await?;
            if !stored {
                tracing::debug!("a later checkpoint is stored; kept it");
            }
            Ok(())
        }
        .await;
        observe(BACKEND, "save_checkpoint", result)
    }

    #[instrument(name = "store.load_checkpoint", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast, %shard))]
    async fn load_checkpoint(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
        shard: ShardId,
    ) -> Result<Option<ShardCheckpoint>, StoreError> {
        let result = async {
            let shard = self.shards.check(shard)?;
            let stored: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(BroadcastKeys::new(tenant, broadcast).checkpoints)
                .arg(shard.0)
                .query_async(&mut self.connection())
                .await?;
            stored.map(|bytes| ShardCheckpoint::from_bytes(&bytes)).transpose()
        }
        .await;
        observe(BACKEND, "load_checkpoint", result)
    }

    #[instrument(name = "store.status", skip_all, fields(backend = BACKEND, tenant = %tenant, %broadcast))]
    async fn status(
        &self,
        tenant: &TenantId,
        broadcast: &BroadcastId,
    ) -> Result<Option<BroadcastStatus>, StoreError> {
        let result = async {
            let keys = BroadcastKeys::new(tenant, broadcast);
            let mut invocation = self.ledger_scripts.status.prepare_invoke();
            invocation.key(&keys.meta).key(&keys.counts).key(&keys.failures);
            let (meta, counters, failures): (
                HashMap<String, String>,
                HashMap<String, u64>,
                HashMap<String, String>,
            ) = invocation.invoke_async(&mut self.connection()).await?;
            parse_status(meta, counters, failures)
        }
        .await;
        observe(BACKEND, "status", result)
    }
}
