//! The bus's typed errors.

use std::time::Duration;

use crate::topic::Topic;

/// A boxed cause from the transport (kept opaque so no other crate depends on rdkafka).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong moving messages over the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus had no room for the message within the configured wait; the caller should slow
    /// down and retry. Nothing was sent.
    #[error("bus full: {topic} took no message for {waited:?}")]
    Backpressure {
        /// Where the message was going.
        topic: Topic,
        /// How long the send waited for room.
        waited: Duration,
    },
    /// The brokers did not acknowledge the message in time (down, unreachable, no leader). The
    /// message may or may not have been stored; retrying is safe for an idempotent consumer.
    #[error("kafka unavailable: {topic} message not acknowledged: {cause}")]
    Unavailable {
        /// Where the message was going.
        topic: Topic,
        /// The transport's report.
        cause: Cause,
    },
    /// The encoded message is over the broker's size limit; split the batch.
    #[error("{topic} message of {bytes} bytes is over the broker's size limit")]
    TooLarge {
        /// Where the message was going.
        topic: Topic,
        /// Encoded payload size.
        bytes: usize,
    },
    /// Any other Kafka failure on `topic`.
    #[error("kafka error on {topic}: {cause}")]
    Kafka {
        /// The topic concerned.
        topic: Topic,
        /// The transport's report.
        cause: Cause,
    },
    /// The Kafka client could not be created (bad configuration).
    #[error("kafka client configuration: {0}")]
    Config(Cause),
    /// Topic administration failed.
    #[error("creating topic {name}: {cause}")]
    CreateTopic {
        /// The Kafka topic name.
        name: String,
        /// The broker's or client's report.
        cause: Cause,
    },
    /// The consumer stopped (fatal client error or shutdown); create a new one.
    #[error("consumer of {topic} stopped")]
    ConsumerStopped {
        /// The topic it consumed.
        topic: Topic,
    },
}

impl BusError {
    /// A short, fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BusError::Backpressure { .. } => "backpressure",
            BusError::Unavailable { .. } => "unavailable",
            BusError::TooLarge { .. } => "too_large",
            BusError::Kafka { .. } => "kafka",
            BusError::Config(_) => "config",
            BusError::CreateTopic { .. } => "create_topic",
            BusError::ConsumerStopped { .. } => "consumer_stopped",
        }
    }
}
