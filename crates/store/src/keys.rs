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
//! ## Embedded
//!
//! Two ordered keyspaces (fjall partitions) with binary keys, where `T` is the tenant as one
//! length byte plus its bytes and `S` the shard as a big-endian `u16`:
//!
//! | partition | key                              | value  |
//! |-----------|----------------------------------|--------|
//! | `meta`    | `shards`                         | S as a big-endian `u16` |
//! | `subs`    | `T S id`                         | binary record |
//! | `members` | `T S len(topic) topic id`        | empty |
//!
//! Keys sort by tenant, then shard, then id, so one shard (or one topic of one shard) is one
//! contiguous range, scanned in id order: the cursor is the last id returned.

use crate::model::{SubscriptionId, TenantId, Topic};
use crate::shard::ShardId;

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

/// The embedded `subs` key prefix of one shard; append an id for a record's key.
pub(crate) fn embedded_shard(tenant: &TenantId, shard: ShardId) -> Vec<u8> {
    let tenant = tenant.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + tenant.len() + 2 + SubscriptionId::LEN);
    // Tenant names are at most 64 bytes, so the length fits a byte.
    key.push(tenant.len() as u8);
    key.extend_from_slice(tenant);
    key.extend_from_slice(&shard.0.to_be_bytes());
    key
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
