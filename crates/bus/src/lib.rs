//! pushfan's job bus: moves publish requests, shard jobs, delivery batches and delivery results
//! between roles, at least once.
//!
//! - [`Bus`] / [`Subscription`]: the contract (see [`bus`] for its rules), implemented by
//!   [`KafkaBus`] (a cluster) and [`EmbeddedBus`] (`pushfan standalone`, in-process).
//! - [`Bus::publish`] and [`Bus::consume`] move typed protobuf messages ([`BusMessage`], from
//!   `pushfan-proto`); [`Consumer`] dead-letters records it cannot read.
//! - Pure parts, without I/O: [`topic`] (names and keys), [`envelope`] (records, headers,
//!   schema versions, dead letters), [`trace_context`], and the commit bookkeeping in `offsets`.
//!
//! Metrics: `pushfan_bus_produced_total{topic}`, `pushfan_bus_produce_errors_total{topic,error}`,
//! `pushfan_bus_consumed_total{topic}`, `pushfan_bus_dead_lettered_total{topic,reason}`,
//! `pushfan_bus_redelivered_total{topic}` (embedded), `pushfan_bus_revoked_skipped_total{topic}`,
//! `pushfan_bus_commits_total{topic}` and `pushfan_bus_commit_errors_total{topic}` (Kafka).

pub mod bus;
pub mod embedded;
pub mod envelope;
pub mod error;
pub mod kafka;
mod offsets;
pub mod topic;
pub mod trace_context;

pub use bus::{dead_letter, Ack, Bus, Consumer, Incoming, Received, Subscription};
pub use embedded::{EmbeddedBus, EmbeddedConfig};
pub use envelope::{BusMessage, Headers, Position, Record, Source};
pub use error::BusError;
pub use kafka::{KafkaBus, KafkaConfig};
/// The protobuf messages the bus carries.
pub use pushfan_proto::bus::v1 as messages;
pub use topic::{Topic, TopicNames};
pub use trace_context::{MessageContext, TraceParent};
