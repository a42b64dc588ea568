//! Sharding: which of the S shards a subscription lives in.
//!
//! A broadcast is split into one job per shard, so S must be at least the number of bus
//! partitions for every worker to get work. The shard is a pure function of the subscription id
//! and S, which is why S is fixed for the lifetime of a tenant's data: the stores record it and
//! refuse to open with a different one (changing it means re-importing).

use std::fmt;
use std::num::NonZeroU16;

use crate::error::StoreError;
use crate::model::SubscriptionId;

/// How many shards a tenant's subscriptions are spread over (S).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardCount(NonZeroU16);

impl ShardCount {
    /// A default that leaves room for up to 64 bus partitions.
    pub const DEFAULT: Self = Self(match NonZeroU16::new(64) {
        Some(count) => count,
        None => unreachable!(),
    });

    /// `count` shards; zero is an error.
    pub fn new(count: u16) -> Result<Self, StoreError> {
        NonZeroU16::new(count).map(Self).ok_or(StoreError::ZeroShards)
    }

    /// The number of shards.
    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// The shard `id` belongs to.
    pub fn shard_of(self, id: &SubscriptionId) -> ShardId {
        // The id is a SHA-256 prefix, so its first 8 bytes are uniform; the modulo bias over
        // 2^64 is negligible.
        let mut head = [0; 8];
        head.copy_from_slice(&id.as_bytes()[..8]);
        let shard = u64::from_be_bytes(head) % u64::from(self.get());
        ShardId(shard as u16)
    }

    /// Every shard, in order.
    pub fn all(self) -> impl Iterator<Item = ShardId> {
        (0..self.get()).map(ShardId)
    }

    /// `shard` itself if it exists under this count.
    pub fn check(self, shard: ShardId) -> Result<ShardId, StoreError> {
        if shard.0 < self.get() {
            Ok(shard)
        } else {
            Err(StoreError::ShardOutOfRange { shard: shard.0, count: self.get() })
        }
    }
}

impl Default for ShardCount {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One shard: `0..S`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> SubscriptionId {
        let mut bytes = [0; SubscriptionId::LEN];
        // Spread like a hash would: a multiplicative mix of n in the leading bytes.
        bytes[..8].copy_from_slice(&(u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes());
        SubscriptionId::from_bytes(bytes)
    }

    #[test]
    fn the_shard_is_a_pure_function_of_id_and_count() {
        let count = ShardCount::new(7).unwrap();
        let mut bytes = [0; SubscriptionId::LEN];
        bytes[7] = 9;
        assert_eq!(count.shard_of(&SubscriptionId::from_bytes(bytes)), ShardId(2));
        for n in 0..1000 {
            assert_eq!(count.shard_of(&id(n)), count.shard_of(&id(n)));
            assert!(count.shard_of(&id(n)).0 < 7);
        }
    }

    #[test]
    fn shards_are_roughly_balanced() {
        let count = ShardCount::new(16).unwrap();
        let mut sizes = [0u32; 16];
        for n in 0..16_000 {
            sizes[usize::from(count.shard_of(&id(n)).0)] += 1;
        }
        assert!(sizes.iter().all(|&size| (800..1200).contains(&size)), "{sizes:?}");
    }

    #[test]
    fn zero_and_out_of_range_shards_are_refused() {
        assert!(matches!(ShardCount::new(0), Err(StoreError::ZeroShards)));
        let count = ShardCount::new(4).unwrap();
        assert_eq!(count.all().collect::<Vec<_>>(), [ShardId(0), ShardId(1), ShardId(2), ShardId(3)]);
        assert_eq!(count.check(ShardId(3)).unwrap(), ShardId(3));
        assert!(matches!(count.check(ShardId(4)), Err(StoreError::ShardOutOfRange { shard: 4, count: 4 })));
    }
}
