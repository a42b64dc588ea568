//! The Redis store: a single Redis (through a reconnecting `ConnectionManager`) or a Redis
//! Cluster (`cluster-async`), with the key schema of [`crate::keys`].
//!
//! Every call groups its subscriptions by shard and sends one pipeline (or one script call) per
//! shard and round trip, several shards in flight at once. All keys of one (tenant, shard) share
//! a hash tag, so each pipeline and script stays on one cluster node. Per shard:
//!
//! - `import`: `HMGET` the old records (to drop memberships of topics no longer listed), then one
//!   pipeline of a variadic `HSET`, one `SADD` per topic and `SREM`s for dropped topics;
//! - `remove`: `HMGET` (for the topics), then `HDEL` and `SREM`s;
//! - `tag`/`untag`: `HMGET`, then a compare-and-set script that rewrites each record and its
//!   membership only if the record is unchanged since the read, outcome fields aside (retried a
//!   few times);
//! - `record_outcomes`: one script that edits the fixed-offset outcome fields of each record;
//! - `scan_shard`: everyone is `HSCAN` of the shard's hash (records come with it, one round
//!   trip); a topic is `SSCAN` of its member set then `HMGET` of the records (two).
//!
//! The broadcast ledger ([`crate::ledger::BroadcastLedger`]) is in the `ledger` submodule.
//!
//! The record is the source of truth for topics: a scan drops (and cleans up) a member whose
//! record is gone or no longer lists the topic, so a race between writers never sends a message
//! to a subscription outside the audience.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tracing::instrument;

use crate::error::StoreError;
use crate::model::{
    Audience, CursorPosition, DeliveryOutcome, DeliveryResult, RedisRunId, ScanCursor, ScanPage, ScanStamp,
    Subscription, SubscriptionId, TenantId, Topic, UnixSeconds,
};
use crate::shard::{ShardCount, ShardId};
use crate::telemetry::{self, count, observe};
use crate::{keys, last_per_id, record, retopic, OriginPause, PauseBoard, SubscriptionStore};

mod ledger;

const BACKEND: &str = "redis";

/// How often `tag`/`untag` re-read a record that a concurrent write changed before giving up.
const RETAG_ATTEMPTS: u32 = 5;

/// Edits the outcome fields at their fixed offsets in each record (see [`crate::record`]).
const OUTCOME_SCRIPT: &str = r"
-- KEYS[1]: one shard's subs hash. ARGV[1]: the time, 4 bytes big-endian.
-- Then pairs: a 14-byte id and 'd' (delivered) or 'f' (failed). Returns how many records existed.
-- A success within the resolution of a recorded one, with no failure since, is not rewritten.
local t1, t2, t3, t4 = string.byte(ARGV[1], 1, 4)
local now = ((t1 * 256 + t2) * 256 + t3) * 256 + t4
local resolution = {resolution}
local recorded = 0
for i = 2, #ARGV, 2 do
  local rec = redis.call('HGET', KEYS[1], ARGV[i])
  if rec then
    if string.byte(rec, 1) ~= 1 or #rec < 93 then
      return redis.error_reply('pushfan: record of unknown format version')
    end
    local updated
    if ARGV[i + 1] == 'd' then
      local b1, b2, b3, b4, f1, f2 = string.byte(rec, 2, 7)
      local last = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
      if not (f1 == 0 and f2 == 0 and last ~= 0 and now >= last and now < last + resolution) then
        updated = string.sub(rec, 1, 1) .. ARGV[1] .. '\0\0' .. string.sub(rec, 8)
      end
    else
      local failures = string.byte(rec, 6) * 256 + string.byte(rec, 7)
      if failures < 65535 then failures = failures + 1 end
      updated = string.sub(rec, 1, 5) .. string.char(math.floor(failures / 256), failures % 256)
        .. string.sub(rec, 8)
    end
    if updated then redis.call('HSET', KEYS[1], ARGV[i], updated) end
    recorded = recorded + 1
  end
end
return recorded
";

/// `share_pauses`: KEYS[1] the pauses hash; ARGV[1] now (ms); then origin, end (ms) pairs. Keeps
/// the later end per origin, drops ended pauses, returns the rest as a flat origin, end list.
const PAUSES_SCRIPT: &str = r"
local key, now = KEYS[1], tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local known = tonumber(redis.call('HGET', key, ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > known then redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
end
local all, live = redis.call('HGETALL', key), {}
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= now then
    redis.call('HDEL', key, all[i])
  else
    live[#live + 1] = all[i]
    live[#live + 1] = all[i + 1]
  end
end
return live
";

/// Compare-and-set of records plus the matching membership change.
const RETAG_SCRIPT: &str = r"
-- KEYS[1]: one shard's subs hash; KEYS[2]: one topic's member set in that shard.
-- ARGV[1]: 'add' or 'remove'; then triples: id, the record as read, the record to write.
-- Compares and writes from byte 8 on: bytes 1-7 (version and the outcome fields, which the
-- outcome script edits all the time) are kept as they are now, so recording outcomes never
-- conflicts with retagging. Returns the ids whose record changed otherwise since it was read;
-- the caller re-reads and retries them.
local conflicts = {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  local current = redis.call('HGET', KEYS[1], id)
  if current and string.sub(current, 8) == string.sub(ARGV[i + 1], 8) then
    redis.call('HSET', KEYS[1], id, string.sub(current, 1, 7) .. string.sub(ARGV[i + 2], 8))
    if ARGV[1] == 'add' then
      redis.call('SADD', KEYS[2], id)
    else
      redis.call('SREM', KEYS[2], id)
    end
  else
    conflicts[#conflicts + 1] = id
  end
end
return conflicts
";

/// Which Redis to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server, e.g. `redis://127.0.0.1:6379/`.
    Single(String),
    /// A Redis Cluster, given by one or more of its nodes.
    Cluster(Vec<String>),
}

/// How to connect and how hard to push.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// The server or cluster.
    pub target: RedisTarget,
    /// S. Must match what the data was written with.
    pub shards: ShardCount,
    /// Connect and response timeout; a Redis that does not answer in time is an error.
    pub timeout: Duration,
    /// How many per-shard pipelines one call keeps in flight.
    pub max_in_flight: usize,
}

impl RedisConfig {
    /// Defaults: 5 s timeout, 32 shard pipelines in flight.
    pub fn new(target: RedisTarget, shards: ShardCount) -> Self {
        Self { target, shards, timeout: Duration::from_secs(5), max_in_flight: 32 }
    }
}

/// A multiplexed connection to a single Redis or a cluster. Clones share the connection.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The Redis [`SubscriptionStore`]. Cheap to share behind an `Arc`; all calls multiplex over
/// one connection (per cluster node).
pub struct RedisStore {
    connection: Connection,
    shards: ShardCount,
    max_in_flight: usize,
    outcome_script: Script,
    retag_script: Script,
    pauses_script: Script,
    ledger_scripts: ledger::Scripts,
    /// Tenants whose recorded shard count this process has already checked.
    checked_tenants: Mutex<HashSet<TenantId>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.connection {
            Connection::Single(_) => "single",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// One shard's share of a batch call.
type ShardGroups<T> = BTreeMap<ShardId, Vec<T>>;

impl RedisStore {
    /// `tag` (`add`) or `untag`: one script per shard, counted and observed alike.
    async fn retag(
        &self,
        tenant: &TenantId,
        ids: &[SubscriptionId],
        topic: &Topic,
        add: bool,
    ) -> Result<usize, StoreError> {
        let result = async {
            self.check_tenant(tenant).await?;
            self.per_shard(self.group_ids(ids), |shard, ids| self.retag_shard(tenant, shard, ids, topic, add))
                .await
        }
        .await;
        let changed = observe(BACKEND, if add { "tag" } else { "untag" }, result)?;
        count(telemetry::RETAGGED, BACKEND, changed);
        Ok(changed)
    }
    /// Connects (failing if Redis cannot be reached within the timeout).
    pub async fn connect(config: RedisConfig) -> Result<Self, StoreError> {
        let connection = match &config.target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.timeout))
                    .set_response_timeout(Some(config.timeout));
                Connection::Single(client.get_connection_manager_with_config(manager_config).await?)
            }
            RedisTarget::Cluster(urls) => {
                let client = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(config.timeout)
                    .response_timeout(config.timeout)
                    .build()?;
                Connection::Cluster(client.get_async_connection().await?)
            }
        };
        let store = Self {
            connection,
            shards: config.shards,
            max_in_flight: config.max_in_flight.max(1),
            outcome_script: Script::new(
                &OUTCOME_SCRIPT.replace("{resolution}", &record::SUCCESS_RESOLUTION_SECS.to_string()),
            ),
            retag_script: Script::new(RETAG_SCRIPT),
            pauses_script: Script::new(PAUSES_SCRIPT),
            ledger_scripts: ledger::Scripts::new(),
            checked_tenants: Mutex::new(HashSet::new()),
        };
        if let Connection::Single(_) = store.connection {
            // Named now, the first scans (many shards at once) need not each read a page on
            // an unnamed connection, discard it and name the connection. A cluster's node
            // connections open as they are needed, and are named at their first scan.
            store.name_connection(keys::ORIGIN_PAUSES).await?;
        }
        Ok(store)
    }

    fn connection(&self) -> Connection {
        self.connection.clone()
    }

    /// Records the shard count for a new tenant, or checks it against the recorded one; once per
    /// tenant and process.
    async fn check_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let known = |tenants: &Mutex<HashSet<TenantId>>| {
            tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(tenant)
        };
        if known(&self.checked_tenants) {
            return Ok(());
        }
        let stored: Option<String> = redis::cmd("SET")
            .arg(keys::shard_count(tenant))
            .arg(self.shards.get())
            .arg("NX")
            .arg("GET")
            .query_async(&mut self.connection())
            .await?;
        if let Some(stored) = stored {
            let stored = stored.parse::<u16>().unwrap_or(0);
            if stored != self.shards.get() {
                return Err(StoreError::ShardCountMismatch { stored, configured: self.shards.get() });
            }
        }
        self.checked_tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(tenant.clone());
        Ok(())
    }

    fn group_ids(&self, ids: &[SubscriptionId]) -> ShardGroups<SubscriptionId> {
        let mut groups = ShardGroups::new();
        for id in ids {
            let group: &mut Vec<SubscriptionId> = groups.entry(self.shards.shard_of(id)).or_default();
            if !group.contains(id) {
                group.push(*id);
            }
        }
        groups
    }

    /// Runs `work` for every shard group, up to `max_in_flight` at once, and sums the counts.
    async fn per_shard<T, F, Fut>(&self, groups: ShardGroups<T>, work: F) -> Result<usize, StoreError>
    where
        F: Fn(ShardId, Vec<T>) -> Fut,
        Fut: std::future::Future<Output = Result<usize, StoreError>>,
    {
        futures::stream::iter(groups)
            .map(|(shard, items)| work(shard, items))
            .buffer_unordered(self.max_in_flight)
            .try_fold(0, |total, n| async move { Ok(total + n) })
            .await
    }

    /// The stored records of `ids` in `shard` (`None` where absent), in `ids` order.
    async fn read_records(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        ids: &[SubscriptionId],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(keys::subscriptions(tenant, shard));
        for id in ids {
            hmget.arg(id.as_bytes());
        }
        let records: Vec<Option<Vec<u8>>> = hmget.query_async(&mut self.connection()).await?;
        if records.len() != ids.len() {
            return Err(StoreError::UnexpectedReply(format!(
                "HMGET of {} ids gave {}",
                ids.len(),
                records.len()
            )));
        }
        Ok(records)
    }

    async fn import_shard(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        subs: Vec<&Subscription>,
    ) -> Result<usize, StoreError> {
        let ids: Vec<SubscriptionId> = subs.iter().map(|sub| sub.id).collect();
        let old_records = self.read_records(tenant, shard, &ids).await?;
        let subs_key = keys::subscriptions(tenant, shard);
        let mut pipe = redis::pipe();
        let mut hset = redis::cmd("HSET");
        hset.arg(&subs_key);
        let mut record = Vec::with_capacity(256);
        let mut added: BTreeMap<&Topic, Vec<SubscriptionId>> = BTreeMap::new();
        let mut dropped: BTreeMap<Topic, Vec<SubscriptionId>> = BTreeMap::new();
        for (sub, old) in subs.iter().zip(old_records) {
            record.clear();
            record::encode(sub, &mut record);
            hset.arg(sub.id.as_bytes()).arg(record.as_slice());
            for topic in &sub.topics {
                added.entry(topic).or_default().push(sub.id);
            }
            if let Some(old) = old {
                let old_topics = record::topics(&old)
                    .map_err(|source| StoreError::CorruptRecord { id: sub.id, source })?;
                for stale in old_topics.into_iter().filter(|t| sub.topics.binary_search(t).is_err()) {
                    dropped.entry(stale).or_default().push(sub.id);
                }
            }
        }
        pipe.add_command(hset).ignore();
        for (topic, ids) in added {
            pipe.cmd("SADD").arg(keys::topic_members(tenant, shard, topic)).arg(id_args(&ids)).ignore();
        }
        for (topic, ids) in dropped {
            pipe.cmd("SREM").arg(keys::topic_members(tenant, shard, &topic)).arg(id_args(&ids)).ignore();
        }
        pipe.query_async::<()>(&mut self.connection()).await?;
        Ok(subs.len())
    }

    async fn remove_shard(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        ids: Vec<SubscriptionId>,
    ) -> Result<usize, StoreError> {
        let records = self.read_records(tenant, shard, &ids).await?;
        let mut existing = Vec::with_capacity(ids.len());
        let mut memberships: BTreeMap<Topic, Vec<SubscriptionId>> = BTreeMap::new();
        for (id, record) in ids.iter().zip(records) {
            let Some(record) = record else { continue };
            existing.push(*id);
            for topic in
                record::topics(&record).map_err(|source| StoreError::CorruptRecord { id: *id, source })?
            {
                memberships.entry(topic).or_default().push(*id);
            }
        }
        if existing.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(keys::subscriptions(tenant, shard)).arg(id_args(&existing)).ignore();
        for (topic, members) in memberships {
            pipe.cmd("SREM").arg(keys::topic_members(tenant, shard, &topic)).arg(id_args(&members)).ignore();
        }
        pipe.query_async::<()>(&mut self.connection()).await?;
        Ok(existing.len())
    }

    async fn retag_shard(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        mut pending: Vec<SubscriptionId>,
        topic: &Topic,
        add: bool,
    ) -> Result<usize, StoreError> {
        let subs_key = keys::subscriptions(tenant, shard);
        let topic_key = keys::topic_members(tenant, shard, topic);
        let mut changed = 0;
        for attempt in 1..=RETAG_ATTEMPTS {
            let records = self.read_records(tenant, shard, &pending).await?;
            let mut invocation = self.retag_script.prepare_invoke();
            invocation.key(&subs_key).key(&topic_key).arg(if add { "add" } else { "remove" });
            let mut planned = 0;
            for (id, record) in pending.iter().zip(records) {
                let Some(record) = record else { continue };
                let corrupt = |source| StoreError::CorruptRecord { id: *id, source };
                let Some(topics) = retopic(&record::topics(&record).map_err(corrupt)?, topic, add)? else {
                    continue;
                };
                let updated = record::with_topics(&record, &topics).map_err(corrupt)?;
                invocation.arg(id.as_bytes()).arg(record).arg(updated);
                planned += 1;
            }
            if planned == 0 {
                break;
            }
            let conflicts: Vec<Vec<u8>> = invocation.invoke_async(&mut self.connection()).await?;
            changed += planned - conflicts.len();
            if conflicts.is_empty() {
                break;
            }
            pending = conflicts
                .iter()
                .filter_map(|id| <[u8; SubscriptionId::LEN]>::try_from(id.as_slice()).ok())
                .map(SubscriptionId::from_bytes)
                .collect();
            if attempt == RETAG_ATTEMPTS {
                return Err(StoreError::Contended { id: pending[0], attempts: RETAG_ATTEMPTS });
            }
        }
        Ok(changed)
    }

    async fn outcomes_shard(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        outcomes: Vec<DeliveryOutcome>,
        at: UnixSeconds,
    ) -> Result<usize, StoreError> {
        let mut invocation = self.outcome_script.prepare_invoke();
        invocation.key(keys::subscriptions(tenant, shard)).arg(&at.0.to_be_bytes()[..]);
        for outcome in &outcomes {
            let result = match outcome.result {
                DeliveryResult::Delivered => "d",
                DeliveryResult::Failed => "f",
            };
            invocation.arg(outcome.id.as_bytes()).arg(result);
        }
        let recorded: usize = invocation.invoke_async(&mut self.connection()).await?;
        Ok(recorded)
    }

    async fn scan(
        &self,
        tenant: &TenantId,
        audience: &Audience,
        shard: ShardId,
        cursor: ScanCursor,
        page_size: usize,
    ) -> Result<ScanPage, StoreError> {
        let (mut cursor, mut issuer) = match cursor.0 {
            CursorPosition::Start => (0, None),
            CursorPosition::Redis(cursor) => (cursor, None),
            CursorPosition::RedisAt { cursor, run } => (cursor, Some(run)),
            CursorPosition::After(_) => return Err(StoreError::InvalidCursor),
        };
        let page_size = page_size.max(1);
        let (scan_key, scan_command) = match audience {
            Audience::Everyone => (keys::subscriptions(tenant, shard), "HSCAN"),
            Audience::Topic(topic) => (keys::topic_members(tenant, shard, topic), "SSCAN"),
        };
        // The page comes with the name of the connection that read it, in the same pipeline (so
        // from the same server process): the name carries that server's run_id (see
        // `name_connection`). A connection without it is new (a reconnect, a new cluster node)
        // and is named, then the page read again.
        let mut attempts = 0;
        let (run, next, flat) = loop {
            attempts += 1;
            let mut pipe = redis::pipe();
            pipe.cmd("CLIENT").arg("GETNAME");
            pipe.cmd(scan_command).arg(&scan_key).arg(cursor).arg("COUNT").arg(page_size);
            let (name, (next, flat)): (Option<Vec<u8>>, ScanReply) =
                pipe.query_async(&mut self.connection()).await?;
            let Some(run) = name.as_deref().and_then(run_of_name) else {
                if attempts >= SCAN_ATTEMPTS {
                    return Err(StoreError::UnexpectedReply(
                        "a scan kept landing on connections that were not yet named".into(),
                    ));
                }
                self.name_connection(&scan_key).await?;
                continue;
            };
            if issuer.is_some_and(|issuer| issuer != run) && cursor != 0 {
                // Another server process issued the cursor: its iteration order is not this
                // one's, and resuming would skip fields. Every subscription of the shard is
                // returned again; the repeats are bounded by the shard.
                tracing::warn!(%tenant, %shard, "redis restarted or moved during a shard scan: the shard is scanned again from its start");
                count(telemetry::SCAN_RESTARTS, BACKEND, 1);
                cursor = 0;
                issuer = None;
                attempts = 0;
                continue;
            }
            break (run, next, flat);
        };
        let mut subscriptions = Vec::with_capacity(page_size);
        match audience {
            Audience::Everyone => {
                for pair in flat.chunks_exact(2) {
                    let id = parse_id(&pair[0])?;
                    subscriptions.push(decode(tenant, id, &pair[1])?);
                }
            }
            Audience::Topic(_) => {
                let ids = flat.iter().map(|id| parse_id(id)).collect::<Result<Vec<_>, _>>()?;
                let mut stale = Vec::new();
                if !ids.is_empty() {
                    for (id, record) in ids.iter().zip(self.read_records(tenant, shard, &ids).await?) {
                        match record.map(|record| decode(tenant, *id, &record)).transpose()? {
                            Some(subscription) if subscription.is_in(audience) => {
                                subscriptions.push(subscription)
                            }
                            _ => stale.push(*id),
                        }
                    }
                }
                if !stale.is_empty() {
                    // Left behind by a race between writers; the record is authoritative.
                    redis::cmd("SREM")
                        .arg(&scan_key)
                        .arg(id_args(&stale))
                        .query_async::<()>(&mut self.connection())
                        .await?;
                }
            }
        }
        let next = (next != 0).then_some(ScanCursor(CursorPosition::RedisAt { cursor: next, run }));
        Ok(ScanPage { subscriptions, next, stamp: None })
    }

    /// Names the connection that serves `key` after the run_id of the server process at its
    /// other end, so that later pages learn it from `CLIENT GETNAME` alone. The name is set in
    /// the same pipeline as an `INFO` that confirms the run_id, so a connection that changed
    /// between reading the run_id and naming is caught and named again. A connection's name
    /// ends with the connection, which ends with the server process.
    async fn name_connection(&self, key: &str) -> Result<(), StoreError> {
        let mut named = None;
        for _ in 0..SCAN_ATTEMPTS {
            let mut pipe = redis::pipe();
            if let Some(run) = named {
                pipe.cmd("CLIENT").arg("SETNAME").arg(connection_name(run)).ignore();
            }
            pipe.cmd("INFO").arg("server");
            // Routes the pipeline to the cluster node that serves the key.
            pipe.cmd("EXISTS").arg(key).ignore();
            let (info,): (String,) = pipe.query_async(&mut self.connection()).await?;
            let run = run_id_of(&info)
                .ok_or_else(|| StoreError::UnexpectedReply("INFO server without a run_id".into()))?;
            if named == Some(run) {
                return Ok(());
            }
            named = Some(run);
        }
        Err(StoreError::UnexpectedReply("the redis connection kept changing while it was named".into()))
    }
}

/// `HSCAN`/`SSCAN`'s reply: the next cursor and the flat list of what it found.
type ScanReply = (u64, Vec<Vec<u8>>);

/// How often a scan page is tried on a connection that turns out not to be named yet.
const SCAN_ATTEMPTS: u32 = 4;

const CONNECTION_NAME_PREFIX: &str = "pushfan-run-";

fn connection_name(run: RedisRunId) -> String {
    let mut name = String::with_capacity(CONNECTION_NAME_PREFIX.len() + 2 * RedisRunId::LEN);
    name.push_str(CONNECTION_NAME_PREFIX);
    for byte in run.0 {
        // Writing to a String cannot fail.
        let _ = write!(name, "{byte:02x}");
    }
    name
}

fn run_of_name(name: &[u8]) -> Option<RedisRunId> {
    let hex = std::str::from_utf8(name).ok()?.strip_prefix(CONNECTION_NAME_PREFIX)?;
    RedisRunId::parse_hex(hex)
}

fn run_id_of(info: &str) -> Option<RedisRunId> {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .and_then(|hex| RedisRunId::parse_hex(hex.trim()))
}

fn id_args(ids: &[SubscriptionId]) -> Vec<&[u8]> {
    ids.iter().map(|id| &id.as_bytes()[..]).collect()
}

fn parse_id(bytes: &[u8]) -> Result<SubscriptionId, StoreError> {
    <[u8; SubscriptionId::LEN]>::try_from(bytes)
        .map(SubscriptionId::from_bytes)
        .map_err(|_| StoreError::UnexpectedReply(format!("a subscription id of {} bytes", bytes.len())))
}

fn decode(tenant: &TenantId, id: SubscriptionId, record: &[u8]) -> Result<Subscription, StoreError> {
    record::decode(tenant, id, record).map_err(|source| StoreError::CorruptRecord { id, source })
}

#[async_trait]
impl PauseBoard for RedisStore {
    async fn share_pauses(&self, local: &[OriginPause], now_ms: u64) -> Result<Vec<OriginPause>, StoreError> {
        let mut invocation = self.pauses_script.prepare_invoke();
        invocation.key(keys::ORIGIN_PAUSES).arg(now_ms);
        for pause in local {
            invocation.arg(&pause.origin).arg(pause.until_ms);
        }
        let flat: Vec<(String, u64)> = observe(
            BACKEND,
            "share_pauses",
            async { Ok::<_, StoreError>(invocation.invoke_async(&mut self.connection()).await?) }.await,
        )?;
        Ok(flat.into_iter().map(|(origin, until_ms)| OriginPause { origin, until_ms }).collect())
    }
}

#[async_trait]
impl SubscriptionStore for RedisStore {
    fn shard_count(&self) -> ShardCount {
        self.shards
    }

    #[instrument(name = "store.import", skip_all, fields(backend = BACKEND, count = subscriptions.len()))]
    async fn import(&self, subscriptions: &[Subscription]) -> Result<usize, StoreError> {
        let mut by_tenant: BTreeMap<&TenantId, ShardGroups<&Subscription>> = BTreeMap::new();
        for sub in last_per_id(subscriptions) {
            by_tenant
                .entry(&sub.tenant)
                .or_default()
                .entry(self.shards.shard_of(&sub.id))
                .or_default()
                .push(sub);
        }
        let result = async {
            let mut written = 0;
            for (tenant, groups) in by_tenant {
                self.check_tenant(tenant).await?;
                written +=
                    self.per_shard(groups, |shard, subs| self.import_shard(tenant, shard, subs)).await?;
            }
            Ok(written)
        }
        .await;
        let written = observe(BACKEND, "import", result)?;
        count(telemetry::IMPORTED, BACKEND, written);
        Ok(written)
    }

    #[instrument(name = "store.get", skip_all, fields(backend = BACKEND, tenant = %tenant, %id))]
    async fn get(&self, tenant: &TenantId, id: SubscriptionId) -> Result<Option<Subscription>, StoreError> {
        let result = async {
            self.check_tenant(tenant).await?;
            let record: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(keys::subscriptions(tenant, self.shards.shard_of(&id)))
                .arg(id.as_bytes())
                .query_async(&mut self.connection())
                .await?;
            record.map(|record| decode(tenant, id, &record)).transpose()
        }
        .await;
        observe(BACKEND, "get", result)
    }

    #[instrument(name = "store.remove", skip_all, fields(backend = BACKEND, tenant = %tenant, count = ids.len()))]
    async fn remove(&self, tenant: &TenantId, ids: &[SubscriptionId]) -> Result<usize, StoreError> {
        let result = async {
            self.check_tenant(tenant).await?;
            self.per_shard(self.group_ids(ids), |shard, ids| self.remove_shard(tenant, shard, ids)).await
        }
        .await;
        let removed = observe(BACKEND, "remove", result)?;
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
        self.retag(tenant, ids, topic, true).await
    }

    #[instrument(name = "store.untag", skip_all, fields(backend = BACKEND, tenant = %tenant, %topic, count = ids.len()))]
    async fn untag(
        &self,
        tenant: &TenantId,
        ids: &[SubscriptionId],
        topic: &Topic,
    ) -> Result<usize, StoreError> {
        self.retag(tenant, ids, topic, false).await
    }

    #[instrument(name = "store.record_outcomes", skip_all, fields(backend = BACKEND, tenant = %tenant, count = outcomes.len()))]
    async fn record_outcomes(
        &self,
        tenant: &TenantId,
        outcomes: &[DeliveryOutcome],
        at: UnixSeconds,
        // The script reads each record where it edits it: a stamp would save nothing.
        _scanned: Option<ScanStamp>,
    ) -> Result<usize, StoreError> {
        let mut groups: ShardGroups<DeliveryOutcome> = ShardGroups::new();
        for outcome in outcomes {
            groups.entry(self.shards.shard_of(&outcome.id)).or_default().push(*outcome);
        }
        let result = async {
            self.check_tenant(tenant).await?;
            self.per_shard(groups, |shard, outcomes| self.outcomes_shard(tenant, shard, outcomes, at)).await
        }
        .await;
        let recorded = observe(BACKEND, "record_outcomes", result)?;
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
        let result = async {
            let shard = self.shards.check(shard)?;
            self.check_tenant(tenant).await?;
            self.scan(tenant, audience, shard, cursor, page_size).await
        }
        .await;
        let page = observe(BACKEND, "scan_shard", result)?;
        tracing::Span::current().record("returned", page.subscriptions.len());
        count(telemetry::SCANNED, BACKEND, page.subscriptions.len());
        Ok(page)
    }
}
