//! The one error type of the store. Every variant says what went wrong; a backend that cannot be
//! reached is an error the caller sees, never a silently dropped write.

use crate::model::SubscriptionId;
use crate::record::RecordError;

/// What went wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid {kind} name {name:?}: it {reason}")]
    InvalidName { kind: &'static str, name: String, reason: &'static str },
    #[error("a subscription may have at most 32 topics, got {count}")]
    TooManyTopics { count: usize },
    #[error("the shard count must be at least 1")]
    ZeroShards,
    #[error("shard {shard} does not exist: the store has {count} shards")]
    ShardOutOfRange { shard: u16, count: u16 },
    #[error("the data was written with {stored} shards but the store is configured with {configured}")]
    ShardCountMismatch { stored: u16, configured: u16 },
    #[error("{0:?} is not a subscription id (28 hex digits)")]
    InvalidId(String),
    #[error("the scan cursor is malformed or belongs to the other kind of store")]
    InvalidCursor,
    #[error("stored record of subscription {id} cannot be read: {source}")]
    CorruptRecord { id: SubscriptionId, source: RecordError },
    #[error("stored {what} of the broadcast ledger cannot be read")]
    CorruptLedger { what: &'static str },
    #[error("subscription {id} kept changing during a read-modify-write; gave up after {attempts} attempts")]
    Contended { id: SubscriptionId, attempts: u32 },
    #[error("redis is unavailable: {0}")]
    RedisUnavailable(#[source] redis::RedisError),
    #[error("redis refused a command: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("redis replied with something unexpected: {0}")]
    UnexpectedReply(String),
    #[error("embedded store failed: {0}")]
    Embedded(#[from] fjall::Error),
    #[error("embedded store worker thread failed: {0}")]
    EmbeddedTask(#[from] tokio::task::JoinError),
    #[error("could not start the embedded store's ledger expiry thread: {0}")]
    EmbeddedThread(#[source] std::io::Error),
}

impl From<redis::RedisError> for StoreError {
    fn from(error: redis::RedisError) -> Self {
        if error.is_io_error()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || error.is_timeout()
            || error.is_cluster_error()
        {
            Self::RedisUnavailable(error)
        } else {
            Self::Redis(error)
        }
    }
}

impl StoreError {
    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidName { .. } | Self::TooManyTopics { .. } | Self::ZeroShards => "invalid_input",
            Self::ShardOutOfRange { .. } | Self::InvalidCursor | Self::InvalidId(_) => "invalid_input",
            Self::ShardCountMismatch { .. } => "shard_count_mismatch",
            Self::CorruptRecord { .. } | Self::CorruptLedger { .. } => "corrupt_record",
            Self::Contended { .. } => "contended",
            Self::RedisUnavailable(_) => "unavailable",
            Self::Redis(_) | Self::UnexpectedReply(_) => "redis",
            Self::Embedded(_) | Self::EmbeddedTask(_) | Self::EmbeddedThread(_) => "embedded",
        }
    }
}
