//! Subscription state for pushfan: who to send to, sharded so a broadcast can be read in
//! parallel, page by page.
//!
//! One trait, [`SubscriptionStore`], two implementations:
//! - [`RedisStore`]: a single Redis or a Redis Cluster, for the clustered deployment;
//! - [`EmbeddedStore`]: an on-disk store inside the process, the standalone default.
//!
//! Both keep the same data the same way: per tenant, S shards ([`ShardCount`]); per shard, the
//! subscriptions as compact binary records ([`record`] format) keyed by a 14-byte id derived from
//! the endpoint, and per topic the set of member ids. "Everyone" is the implicit topic of all of
//! a tenant's subscriptions. A broadcast runs [`SubscriptionStore::scan_shard`] over every shard,
//! each with its own cursor, and gets full records back, ready to encrypt.
//!
//! Both stores also implement [`ledger::BroadcastLedger`], the broadcast bookkeeping every
//! pipeline role shares (idempotency keys, progress counted once per step, shard checkpoints),
//! so one store object serves both traits.
//!
//! Module map: [`model`] (types), [`shard`] (the shard function), [`record`] (the binary
//! record), [`keys`] (the key schemas) are pure; [`ledger`] is the ledger's trait and types;
//! `redis` and `embedded` (each with a `ledger` submodule) do the I/O.
//!
//! Architecture invariant: only this crate knows Redis keys or the record format.

use async_trait::async_trait;

mod embedded;
mod error;
pub mod keys;
pub mod ledger;
pub mod model;
pub mod pauses;
pub mod record;
mod redis;
pub mod shard;
mod telemetry;

pub use crate::embedded::EmbeddedStore;
pub use crate::error::StoreError;
pub use crate::model::{
    Audience, ContentEncodings, DeliveryOutcome, DeliveryResult, ScanCursor, ScanPage, ScanStamp,
    Subscription, SubscriptionId, TenantId, Topic, UnixSeconds, VapidKeyId,
};
pub use crate::pauses::{OriginPause, PauseBoard};
pub use crate::record::RecordError;
pub use crate::redis::{RedisConfig, RedisStore, RedisTarget};
pub use crate::shard::{ShardCount, ShardId};

/// The subscription store. Object safe: workers hold an `Arc<dyn SubscriptionStore>` and call it
/// from any tokio task (every future is `Send`).
///
/// Every call is scoped to one tenant (imports use each record's tenant): no call can read or
/// change another tenant's subscriptions. Batch calls touch each shard with one pipelined round
/// trip or two, never one per subscription.
#[async_trait]
pub trait SubscriptionStore: Send + Sync + std::fmt::Debug {
    /// The number of shards, S. Broadcasts scan shards `0..S`.
    fn shard_count(&self) -> ShardCount;

    /// Stores `subscriptions`, replacing any stored record with the same id (re-subscribing the
    /// same endpoint updates it), and makes each one's topic memberships match its `topics`.
    /// Returns how many were written. A subscription listed twice counts once: the last wins.
    async fn import(&self, subscriptions: &[Subscription]) -> Result<usize, StoreError>;

    /// The subscription with `id`, if the tenant has it.
    async fn get(&self, tenant: &TenantId, id: SubscriptionId) -> Result<Option<Subscription>, StoreError>;

    /// Deletes subscriptions (e.g. after a 404 or 410 from the push service), topic memberships
    /// included. Returns how many existed.
    async fn remove(&self, tenant: &TenantId, ids: &[SubscriptionId]) -> Result<usize, StoreError>;

    /// Adds `topic` to the subscriptions; returns how many were not tagged with it before.
    /// Unknown ids are skipped.
    async fn tag(
        &self,
        tenant: &TenantId,
        ids: &[SubscriptionId],
        topic: &Topic,
    ) -> Result<usize, StoreError>;

    /// Removes `topic` from the subscriptions; returns how many had it.
    async fn untag(
        &self,
        tenant: &TenantId,
        ids: &[SubscriptionId],
        topic: &Topic,
    ) -> Result<usize, StoreError>;

    /// Records delivery outcomes at time `at`: a delivery sets the last-success time and clears
    /// the failure count, a failure increments it. Returns how many subscriptions still existed.
    /// `scanned`: the stamp of the page whose scan returned every one of these subscriptions, if
    /// one did; a store may use it to skip looking up what the scan already saw.
    async fn record_outcomes(
        &self,
        tenant: &TenantId,
        outcomes: &[DeliveryOutcome],
        at: UnixSeconds,
        scanned: Option<ScanStamp>,
    ) -> Result<usize, StoreError>;

    /// One page of the members of `audience` in `shard`, starting at `cursor`
    /// ([`ScanCursor::START`] for the first page); follow `next` until it is `None`.
    ///
    /// `page_size` is a target: Redis may return somewhat more or fewer per page. Members that
    /// stay in the audience for the whole scan are returned at least once; Redis may repeat a
    /// member when a shard's hash is resized mid-scan. The embedded store returns each once.
    ///
    /// Decoding and validating a record (endpoint URL, key on the curve) costs about 2 µs of the
    /// calling task's CPU, so a page of 1,000 holds a tokio worker for about 2 ms: use pages of
    /// a few hundred where the same runtime serves latency-sensitive work.
    async fn scan_shard(
        &self,
        tenant: &TenantId,
        audience: &Audience,
        shard: ShardId,
        cursor: ScanCursor,
        page_size: usize,
    ) -> Result<ScanPage, StoreError>;
}

/// Keeps the last of several subscriptions with the same id, in first-seen order, so a batch
/// never writes one id twice.
fn last_per_id(subscriptions: &[Subscription]) -> Vec<&Subscription> {
    let mut position = std::collections::HashMap::with_capacity(subscriptions.len());
    let mut unique: Vec<&Subscription> = Vec::with_capacity(subscriptions.len());
    for subscription in subscriptions {
        match position.entry((&subscription.tenant, subscription.id)) {
            std::collections::hash_map::Entry::Occupied(slot) => unique[*slot.get()] = subscription,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(unique.len());
                unique.push(subscription);
            }
        }
    }
    unique
}

/// `topics` with `topic` added or removed; `None` when that changes nothing.
fn retopic(topics: &[Topic], topic: &Topic, add: bool) -> Result<Option<Vec<Topic>>, StoreError> {
    match (topics.binary_search(topic), add) {
        (Ok(_), true) | (Err(_), false) => Ok(None),
        (Err(at), true) => {
            if topics.len() >= model::MAX_TOPICS_PER_SUBSCRIPTION {
                return Err(StoreError::TooManyTopics { count: topics.len() + 1 });
            }
            let mut changed = topics.to_vec();
            changed.insert(at, topic.clone());
            Ok(Some(changed))
        }
        (Ok(at), false) => {
            let mut changed = topics.to_vec();
            changed.remove(at);
            Ok(Some(changed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retopic_changes_only_what_needs_changing() {
        let t = |name: &str| Topic::new(name).unwrap();
        let topics = vec![t("a"), t("c")];
        assert_eq!(retopic(&topics, &t("b"), true).unwrap(), Some(vec![t("a"), t("b"), t("c")]));
        assert_eq!(retopic(&topics, &t("a"), true).unwrap(), None);
        assert_eq!(retopic(&topics, &t("c"), false).unwrap(), Some(vec![t("a")]));
        assert_eq!(retopic(&topics, &t("b"), false).unwrap(), None);
        let full: Vec<Topic> = (0..32).map(|n| t(&format!("t{n:02}"))).collect();
        assert!(matches!(retopic(&full, &t("x"), true), Err(StoreError::TooManyTopics { count: 33 })));
    }
}
