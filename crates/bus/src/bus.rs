//! The bus contract every implementation keeps, and the typed layer on top of it.
//!
//! - [`Bus::send`] resolves once the bus holds the record durably (Kafka: every in-sync replica
//!   has it); an error means the caller still owns the message. A full bus makes `send` wait,
//!   then fail with [`BusError::Backpressure`]: nothing is ever dropped silently.
//! - A [`Subscription`] joins a consumer group: the group's members share the topic's records,
//!   and every group gets every record.
//! - Each received record comes with an [`Ack`]. Ack only once the work is durably handed on
//!   (the next message is sent, the store is written). A record whose ack never happens is
//!   delivered again (Kafka: to the partition's next owner, from the last committed position;
//!   embedded: as soon as the ack is dropped; on Kafka the partition's committed position
//!   stays at that record until then). Delivery is therefore at least once, and consumers use
//!   the idempotency key to recognise repeats.
//! - [`Consumer`] decodes records into protobuf messages. A record it cannot read (corrupt,
//!   unknown schema version) goes to the dead-letter topic with the reason, is counted in
//!   `pushfan_bus_dead_lettered_total` and acked, so it never stops a consumer or a partition.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::counter;
use tracing::warn;

use crate::embedded::EmbeddedAck;
use crate::envelope::{self, BusMessage, DecodeError, Position, Record, Source};
use crate::error::BusError;
use crate::kafka::KafkaAck;
use crate::topic::Topic;
use crate::trace_context::MessageContext;

/// A message bus: Kafka ([`crate::KafkaBus`]) or in-process ([`crate::EmbeddedBus`]).
pub trait Bus: Clone + Send + Sync + 'static {
    /// A consumer group membership on one topic.
    type Subscription: Subscription;

    /// Sends one record to `topic`; resolves once the bus holds it durably.
    fn send(&self, topic: Topic, record: Record) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Joins consumer group `group` on `topic`.
    fn subscribe(&self, topic: Topic, group: &str) -> Result<Self::Subscription, BusError>;

    /// The largest record payload this bus carries; the worker sizes its pages to fit.
    fn max_record_bytes(&self) -> usize;

    /// Encodes and sends a typed message to its topic, with its key and headers.
    fn publish<M: BusMessage>(
        &self,
        message: &M,
        context: &MessageContext,
    ) -> impl Future<Output = Result<(), BusError>> + Send {
        self.send(M::TOPIC, envelope::encode(message, context))
    }

    /// Joins consumer group `group` on the topic of `M`, decoding records as `M`.
    fn consume<M: BusMessage>(&self, group: &str) -> Result<Consumer<Self, M>, BusError> {
        Ok(Consumer {
            bus: self.clone(),
            subscription: self.subscribe(M::TOPIC, group)?,
            message: PhantomData,
        })
    }
}

/// The receiving side of one consumer group membership.
pub trait Subscription: Send + 'static {
    /// The next record. Waits while there is none; records are pulled, so a slow consumer slows
    /// its source down rather than piling records up.
    fn recv(&mut self) -> impl Future<Output = Result<Incoming, BusError>> + Send;
}

/// A received record and the handle that acknowledges it.
#[derive(Debug)]
pub struct Incoming {
    /// The record as sent.
    pub record: Record,
    /// Where it sat (Kafka only).
    pub position: Option<Position>,
    /// Acknowledge once its work is durably handed on.
    pub ack: Ack,
}

/// Acknowledges one received record. Dropping it without [`Ack::ack`] means the work was not
/// done: the record will be delivered again.
#[derive(Debug)]
pub struct Ack(pub(crate) AckInner);

#[derive(Debug)]
pub(crate) enum AckInner {
    Kafka(KafkaAck),
    Embedded(EmbeddedAck),
}

impl Ack {
    /// The record's work is done and durably handed on; the bus may forget it.
    pub fn ack(self) {
        match self.0 {
            AckInner::Kafka(ack) => ack.ack(),
            AckInner::Embedded(ack) => ack.ack(),
        }
    }
}

/// A decoded message as a handler gets it.
#[derive(Debug)]
pub struct Received<M> {
    /// The message.
    pub message: M,
    /// Its trace context.
    pub context: MessageContext,
    /// The `pushfan-idempotency-key` header: equal for redeliveries of the same work.
    pub idempotency_key: Option<String>,
    /// Where it sat (Kafka only).
    pub position: Option<Position>,
    /// Acknowledge once its work is durably handed on.
    pub ack: Ack,
    /// Where it came from, to dead-letter it with [`dead_letter`] if its work cannot succeed.
    pub source: Source,
}

/// Sends a dead letter for a record from `source` whose work cannot succeed (its handler
/// panicked, or found it invalid): `payload` as in [`envelope::letter`]. Counted in
/// `pushfan_bus_dead_lettered_total{topic, reason}` with `label` as the reason. The caller acks
/// the record once this returns; an error means nothing was sent.
pub async fn dead_letter<B: Bus>(
    bus: &B,
    source: &Source,
    payload: bytes::Bytes,
    reason: &str,
    label: &'static str,
) -> Result<(), BusError> {
    if source.topic != Topic::DeadLetters {
        bus.send(Topic::DeadLetters, envelope::letter(source, payload, reason, now_ms())).await?;
    }
    counter!("pushfan_bus_dead_lettered_total", "topic" => source.topic.name(), "reason" => label)
        .increment(1);
    Ok(())
}

/// Receives typed messages of one topic, dead-lettering records it cannot read.
pub struct Consumer<B: Bus, M> {
    bus: B,
    subscription: B::Subscription,
    message: PhantomData<fn() -> M>,
}

impl<B: Bus, M: BusMessage> fmt::Debug for Consumer<B, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("topic", &M::TOPIC).finish_non_exhaustive()
    }
}

impl<B: Bus, M: BusMessage> Consumer<B, M> {
    /// The next readable message. Unreadable records on the way are dead-lettered and skipped.
    pub async fn next(&mut self) -> Result<Received<M>, BusError> {
        loop {
            let incoming = self.subscription.recv().await?;
            match envelope::decode::<M>(&incoming.record) {
                Ok(decoded) => {
                    counter!("pushfan_bus_consumed_total", "topic" => M::TOPIC.name()).increment(1);
                    let Incoming { record, position, ack } = incoming;
                    let source =
                        Source { topic: M::TOPIC, position, key: record.key, headers: record.headers };
                    return Ok(Received {
                        message: decoded.message,
                        context: decoded.context,
                        idempotency_key: decoded.idempotency_key,
                        position,
                        ack,
                        source,
                    });
                }
                Err(reason) => Self::dead_letter(&self.bus, incoming, &reason).await?,
            }
        }
    }

    /// Moves an unreadable record to the dead-letter topic, then acks it. If the dead-letter
    /// send fails the record stays unacked (and so is delivered again later). Takes the bus
    /// rather than `&self` so the future needs only `B: Sync`, not a `Sync` subscription.
    async fn dead_letter(bus: &B, incoming: Incoming, reason: &DecodeError) -> Result<(), BusError> {
        warn!(topic = %M::TOPIC, position = ?incoming.position, %reason, "dead-lettering an unreadable record");
        // An unreadable dead letter is only counted: re-dead-lettering it would loop.
        if M::TOPIC != Topic::DeadLetters {
            let letter =
                envelope::dead_letter(M::TOPIC, incoming.position, &incoming.record, reason, now_ms());
            bus.send(Topic::DeadLetters, letter).await?;
        }
        counter!("pushfan_bus_dead_lettered_total", "topic" => M::TOPIC.name(), "reason" => reason.label())
            .increment(1);
        incoming.ack.ack();
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}
