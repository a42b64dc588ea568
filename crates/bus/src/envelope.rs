//! How a typed bus message becomes a [`Record`] (key, payload, headers) and back, and how an
//! unreadable record becomes a dead letter. Pure encoding; no I/O, no clock.
//!
//! Headers every record carries:
//! - `pushfan-schema`: the full protobuf type, e.g. `pushfan.bus.v1.ShardJob`. A reader
//!   dead-letters a record whose schema it does not know instead of guessing at its bytes.
//! - `pushfan-idempotency-key`: identifies the unit of work (see [`BusMessage::idempotency_key`]),
//!   so a consumer can recognise a redelivery.
//! - `traceparent` (optional): W3C trace context.
//! - `pushfan-dead-letter-reason` (dead letters only): why the record could not be read.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use pushfan_proto::bus::v1::{DeadLetter, DeliveryBatch, DeliveryResultBatch, PublishRequest, ShardJob};

use crate::topic::Topic;
use crate::trace_context::{MessageContext, TraceParent};

/// The protobuf package prefix shared by all schema versions.
const SCHEMA_PACKAGE: &str = "pushfan.bus.";
/// The schema version this build reads and writes.
const SCHEMA_VERSION: &str = "v1";

/// A record as the bus moves it: what Kafka stores and what the embedded bus queues.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// Partitioning key: records with equal keys land in the same partition, in order.
    pub key: Bytes,
    /// The encoded protobuf message.
    pub payload: Bytes,
    /// The pushfan headers.
    pub headers: Headers,
    /// Places the record on partition `spread % partitions` instead of by its key's hash. Shard
    /// jobs set it to their shard's index: a broadcast has only a dozen or so, and a hash of
    /// that few keys lands so unevenly on a few partitions that one worker got three times the
    /// work of another. Not carried on the wire.
    pub spread: Option<u32>,
    /// The message itself, when it stays in one process (the embedded bus): then `payload` is
    /// empty and nothing is encoded or decoded. Not carried on the wire.
    pub in_process: Option<InProcess>,
}

impl Record {
    /// The payload's size: its encoded size for a message handed over in process.
    pub fn size(&self) -> usize {
        self.in_process.as_ref().map_or(self.payload.len(), |held| held.encoded_len)
    }
}

/// A message handed over within one process; a receiver gets its own copy.
#[derive(Clone)]
pub struct InProcess {
    message: Arc<dyn Any + Send + Sync>,
    encoded_len: usize,
}

impl fmt::Debug for InProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcess").field("encoded_len", &self.encoded_len).finish_non_exhaustive()
    }
}

impl PartialEq for InProcess {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.message, &other.message)
    }
}

/// The headers pushfan reads and writes; other headers on a Kafka record are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    /// `pushfan-schema`.
    pub schema: Option<String>,
    /// `pushfan-idempotency-key`.
    pub idempotency_key: Option<String>,
    /// `traceparent`, as received (validated only when decoded).
    pub traceparent: Option<String>,
    /// `pushfan-dead-letter-reason`.
    pub dead_letter_reason: Option<String>,
}

impl Headers {
    /// Header name of [`Headers::schema`].
    pub const SCHEMA: &'static str = "pushfan-schema";
    /// Header name of [`Headers::idempotency_key`].
    pub const IDEMPOTENCY_KEY: &'static str = "pushfan-idempotency-key";
    /// Header name of [`Headers::traceparent`].
    pub const TRACEPARENT: &'static str = "traceparent";
    /// Header name of [`Headers::dead_letter_reason`].
    pub const DEAD_LETTER_REASON: &'static str = "pushfan-dead-letter-reason";

    /// The headers that are set, as (name, value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (Self::SCHEMA, &self.schema),
            (Self::IDEMPOTENCY_KEY, &self.idempotency_key),
            (Self::TRACEPARENT, &self.traceparent),
            (Self::DEAD_LETTER_REASON, &self.dead_letter_reason),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.as_deref()?)))
    }

    /// Records a received header; names pushfan does not use are ignored. A value that is not
    /// UTF-8 is kept lossily so the reader reports it rather than silently losing it.
    pub fn insert(&mut self, name: &str, value: &[u8]) {
        let slot = match name {
            Self::SCHEMA => &mut self.schema,
            Self::IDEMPOTENCY_KEY => &mut self.idempotency_key,
            Self::TRACEPARENT => &mut self.traceparent,
            Self::DEAD_LETTER_REASON => &mut self.dead_letter_reason,
            _ => return,
        };
        *slot = Some(String::from_utf8_lossy(value).into_owned());
    }
}

/// A protobuf message that travels on the bus: which topic it goes to and how it is keyed.
pub trait BusMessage: Message + Default + Clone + Send + Sync + 'static {
    /// The topic messages of this type go to.
    const TOPIC: Topic;
    /// The `pushfan-schema` header value: full protobuf type name, version included.
    const SCHEMA: &'static str;

    /// The partitioning key (see the table in [`crate::topic`]).
    fn key(&self) -> String;

    /// Overrides the key's partition choice; see [`Record::spread`].
    fn spread(&self) -> Option<u32> {
        None
    }

    /// Identifies the unit of work, equal across redeliveries and retries of the same work.
    fn idempotency_key(&self) -> String;
}

impl BusMessage for PublishRequest {
    const TOPIC: Topic = Topic::PublishRequests;
    const SCHEMA: &'static str = "pushfan.bus.v1.PublishRequest";

    fn key(&self) -> String {
        self.broadcast_id.clone()
    }

    /// The client's idempotency key when it gave one, else the broadcast id.
    fn idempotency_key(&self) -> String {
        if self.idempotency_key.is_empty() {
            self.broadcast_id.clone()
        } else {
            self.idempotency_key.clone()
        }
    }
}

impl BusMessage for ShardJob {
    const TOPIC: Topic = Topic::ShardJobs;
    const SCHEMA: &'static str = "pushfan.bus.v1.ShardJob";

    fn key(&self) -> String {
        format!("{}/{}", self.broadcast_id, self.shard_index)
    }

    fn spread(&self) -> Option<u32> {
        Some(self.shard_index)
    }

    fn idempotency_key(&self) -> String {
        format!("{}/{}/{}", self.broadcast_id, self.shard_index, self.shard_count)
    }
}

impl BusMessage for DeliveryBatch {
    const TOPIC: Topic = Topic::Deliveries;
    const SCHEMA: &'static str = "pushfan.bus.v1.DeliveryBatch";

    fn key(&self) -> String {
        format!("{}/{}/{}", self.broadcast_id, self.shard_index, self.batch_seq)
    }

    fn idempotency_key(&self) -> String {
        self.key()
    }
}

impl BusMessage for DeliveryResultBatch {
    const TOPIC: Topic = Topic::DeliveryResults;
    const SCHEMA: &'static str = "pushfan.bus.v1.DeliveryResultBatch";

    fn key(&self) -> String {
        self.broadcast_id.clone()
    }

    /// The delivery batch reported on: a result that arrives twice has the same key.
    fn idempotency_key(&self) -> String {
        format!("{}/{}/{}", self.broadcast_id, self.shard_index, self.batch_seq)
    }
}

impl BusMessage for DeadLetter {
    const TOPIC: Topic = Topic::DeadLetters;
    const SCHEMA: &'static str = "pushfan.bus.v1.DeadLetter";

    fn key(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    fn idempotency_key(&self) -> String {
        format!("{}/{}/{}", self.source_topic, self.source_partition, self.source_offset)
    }
}

/// Encodes `message` with its key and headers.
pub fn encode<M: BusMessage>(message: &M, context: &MessageContext) -> Record {
    Record { payload: Bytes::from(message.encode_to_vec()), ..envelope(message, context) }
}

/// `message` with its key and headers, for a bus that stays in one process: a copy of the
/// message instead of its encoding (a 512-push delivery batch is 1.6 MB to encode and decode).
pub fn in_process<M: BusMessage>(message: &M, context: &MessageContext) -> Record {
    let held = InProcess { message: Arc::new(message.clone()), encoded_len: message.encoded_len() };
    Record { in_process: Some(held), ..envelope(message, context) }
}

fn envelope<M: BusMessage>(message: &M, context: &MessageContext) -> Record {
    Record {
        key: Bytes::from(message.key()),
        payload: Bytes::new(),
        headers: Headers {
            schema: Some(M::SCHEMA.to_owned()),
            idempotency_key: Some(message.idempotency_key()),
            traceparent: context.traceparent.as_ref().map(|t| t.as_str().to_owned()),
            dead_letter_reason: None,
        },
        spread: message.spread(),
        in_process: None,
    }
}

/// Why a record could not be read as the expected message type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// No `pushfan-schema` header: not written by pushfan, or damaged.
    #[error("no {} header", Headers::SCHEMA)]
    MissingSchema,
    /// A pushfan schema version this build does not know (written by a newer or older release).
    #[error("unknown schema version {found:?} (this build reads {SCHEMA_PACKAGE}{SCHEMA_VERSION})")]
    UnknownVersion {
        /// The header value found.
        found: String,
    },
    /// A schema this topic does not carry.
    #[error("unexpected schema {found:?} on this topic, expected {expected:?}")]
    UnexpectedType {
        /// The schema this topic carries.
        expected: &'static str,
        /// The header value found.
        found: String,
    },
    /// The payload does not decode as the schema the header names.
    #[error("corrupt payload for {schema}: {message}")]
    Corrupt {
        /// The schema the header named.
        schema: &'static str,
        /// prost's description of the problem.
        message: String,
    },
}

impl DecodeError {
    /// A short, fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::MissingSchema => "missing_schema",
            DecodeError::UnknownVersion { .. } => "unknown_version",
            DecodeError::UnexpectedType { .. } => "unexpected_type",
            DecodeError::Corrupt { .. } => "corrupt",
        }
    }
}

/// A decoded message with the context that travelled beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<M> {
    /// The message.
    pub message: M,
    /// Its trace context; an invalid `traceparent` is dropped, as W3C asks.
    pub context: MessageContext,
    /// The `pushfan-idempotency-key` header.
    pub idempotency_key: Option<String>,
}

/// Reads `record` as an `M`, checking the schema header first.
pub fn decode<M: BusMessage>(record: &Record) -> Result<Decoded<M>, DecodeError> {
    let schema = record.headers.schema.as_deref().ok_or(DecodeError::MissingSchema)?;
    if schema != M::SCHEMA {
        let known_version = schema
            .strip_prefix(SCHEMA_PACKAGE)
            .and_then(|rest| rest.split_once('.'))
            .is_none_or(|(version, _)| version == SCHEMA_VERSION);
        return Err(if known_version {
            DecodeError::UnexpectedType { expected: M::SCHEMA, found: schema.to_owned() }
        } else {
            DecodeError::UnknownVersion { found: schema.to_owned() }
        });
    }
    let message = match &record.in_process {
        // The schema header came from the same `M` that made the message, so this holds.
        Some(held) => held.message.downcast_ref::<M>().cloned().ok_or_else(|| DecodeError::Corrupt {
            schema: M::SCHEMA,
            message: "an in-process message of another type".to_owned(),
        })?,
        None => M::decode(record.payload.clone())
            .map_err(|e| DecodeError::Corrupt { schema: M::SCHEMA, message: e.to_string() })?,
    };
    let traceparent = record.headers.traceparent.as_deref().and_then(|t| TraceParent::parse(t).ok());
    Ok(Decoded {
        message,
        context: MessageContext { traceparent },
        idempotency_key: record.headers.idempotency_key.clone(),
    })
}

/// Where a record sat on the bus (Kafka only; the embedded bus has no offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The partition.
    pub partition: i32,
    /// The offset within the partition.
    pub offset: i64,
}

/// Wraps an unreadable record, byte for byte, into a dead letter for the dead-letter topic. The
/// reason goes both into the envelope and into the `pushfan-dead-letter-reason` header.
pub fn dead_letter(
    source: Topic,
    position: Option<Position>,
    record: &Record,
    reason: &DecodeError,
    now_ms: i64,
) -> Record {
    let from = Source { topic: source, position, key: record.key.clone(), headers: record.headers.clone() };
    letter(&from, record.payload.clone(), &reason.to_string(), now_ms)
}

/// Where a received record came from, kept beside its decoded message so that a consumer can
/// still dead-letter it once its handler has given up on it (see [`letter`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The topic it was read from.
    pub topic: Topic,
    /// Where it sat (Kafka only).
    pub position: Option<Position>,
    /// Its key.
    pub key: Bytes,
    /// Its headers.
    pub headers: Headers,
}

/// A dead letter for a record from `source`: `payload` is the record's payload when the caller
/// still has it (or can encode the message again), else empty, and `reason` says why it was
/// given up. The reason goes both into the envelope and into the `pushfan-dead-letter-reason`
/// header, cut to [`MAX_REASON_BYTES`].
pub fn letter(source: &Source, payload: Bytes, reason: &str, now_ms: i64) -> Record {
    let reason_text = truncate(reason, MAX_REASON_BYTES).to_owned();
    let letter = DeadLetter {
        source_topic: source.topic.name().to_owned(),
        source_partition: source.position.map_or(-1, |p| p.partition),
        source_offset: source.position.map_or(-1, |p| p.offset),
        reason: reason_text.clone(),
        key: source.key.clone(),
        payload,
        schema: source.headers.schema.clone().unwrap_or_default(),
        dead_lettered_at_ms: now_ms,
    };
    Record {
        key: source.key.clone(),
        payload: Bytes::from(letter.encode_to_vec()),
        headers: Headers {
            schema: Some(DeadLetter::SCHEMA.to_owned()),
            idempotency_key: Some(letter.idempotency_key()),
            traceparent: source.headers.traceparent.clone(),
            dead_letter_reason: Some(reason_text),
        },
        spread: None,
        in_process: None,
    }
}

/// The longest dead-letter reason kept: a panic message or a push service's text can be
/// anything, and the reason travels in a record header.
pub const MAX_REASON_BYTES: usize = 1024;

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use pushfan_proto::bus::v1::{target, Delivery, Everyone, Target};

    use super::*;

    fn shard_job() -> ShardJob {
        ShardJob {
            broadcast_id: "b-1".into(),
            tenant: "t".into(),
            target: Some(Target { kind: Some(target::Kind::Everyone(Everyone {})) }),
            shard_index: 3,
            shard_count: 16,
            payload: Bytes::from_static(b"hello"),
            ..ShardJob::default()
        }
    }

    #[test]
    fn an_in_process_record_carries_the_message_itself() {
        let context = MessageContext::default();
        let record = in_process(&shard_job(), &context);
        assert!(record.payload.is_empty(), "nothing encoded");
        assert_eq!(record.size(), shard_job().encoded_len(), "sized as it would be on the wire");
        assert_eq!(
            (&record.key, &record.headers),
            (&encode(&shard_job(), &context).key, &encode(&shard_job(), &context).headers)
        );
        assert_eq!(decode::<ShardJob>(&record).expect("decodes").message, shard_job());
        // The schema header still guards the topic, as for an encoded record.
        assert!(matches!(decode::<DeliveryBatch>(&record), Err(DecodeError::UnexpectedType { .. })));
    }

    #[test]
    fn round_trips_message_key_and_headers() {
        let traceparent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").ok();
        let context = MessageContext { traceparent };
        let record = encode(&shard_job(), &context);
        assert_eq!(record.key, "b-1/3");
        assert_eq!(record.headers.schema.as_deref(), Some("pushfan.bus.v1.ShardJob"));
        assert_eq!(record.headers.idempotency_key.as_deref(), Some("b-1/3/16"));

        let decoded = decode::<ShardJob>(&record).expect("decodes");
        assert_eq!(decoded.message, shard_job());
        assert_eq!(decoded.context, context);
        assert_eq!(decoded.idempotency_key.as_deref(), Some("b-1/3/16"));
    }

    #[test]
    fn schema_constants_match_the_protobuf_full_names() {
        use prost::Name;
        assert_eq!(PublishRequest::SCHEMA, PublishRequest::full_name());
        assert_eq!(<ShardJob as BusMessage>::SCHEMA, ShardJob::full_name());
        assert_eq!(<DeliveryBatch as BusMessage>::SCHEMA, DeliveryBatch::full_name());
        assert_eq!(<DeliveryResultBatch as BusMessage>::SCHEMA, DeliveryResultBatch::full_name());
        assert_eq!(<DeadLetter as BusMessage>::SCHEMA, DeadLetter::full_name());
    }

    #[test]
    fn classifies_unreadable_records() {
        let good = encode(&shard_job(), &MessageContext::default());
        let with_schema = |schema: Option<&str>| Record {
            headers: Headers { schema: schema.map(str::to_owned), ..good.headers.clone() },
            ..good.clone()
        };
        let cases = [
            (with_schema(None), "missing_schema"),
            (with_schema(Some("pushfan.bus.v2.ShardJob")), "unknown_version"),
            (with_schema(Some("pushfan.bus.v1.DeliveryBatch")), "unexpected_type"),
            (with_schema(Some("something.else")), "unexpected_type"),
            (Record { payload: Bytes::from_static(&[0xff, 0xff, 0xff]), ..good.clone() }, "corrupt"),
        ];
        for (record, label) in cases {
            let error = decode::<ShardJob>(&record).expect_err(label);
            assert_eq!(error.label(), label, "{error}");
        }
    }

    #[test]
    fn invalid_traceparent_is_dropped_not_fatal() {
        let mut record = encode(&shard_job(), &MessageContext::default());
        record.headers.traceparent = Some("garbage".into());
        assert_eq!(decode::<ShardJob>(&record).map(|d| d.context.traceparent), Ok(None));
    }

    #[test]
    fn dead_letter_keeps_the_original_bytes_and_reason() {
        let mut record = encode(&shard_job(), &MessageContext::default());
        record.payload = Bytes::from_static(b"\xff\xff");
        let reason = decode::<ShardJob>(&record).expect_err("corrupt");
        let position = Some(Position { partition: 4, offset: 17 });
        let letter_record = dead_letter(Topic::ShardJobs, position, &record, &reason, 1_000);

        assert_eq!(letter_record.key, record.key);
        assert_eq!(letter_record.headers.dead_letter_reason.as_deref(), Some(reason.to_string().as_str()));
        let letter = decode::<DeadLetter>(&letter_record).expect("a dead letter decodes").message;
        assert_eq!(letter.payload, record.payload);
        assert_eq!(letter.schema, "pushfan.bus.v1.ShardJob");
        assert_eq!(
            (letter.source_topic.as_str(), letter.source_partition, letter.source_offset),
            ("shard-jobs", 4, 17)
        );
    }

    #[test]
    fn headers_iterate_only_what_is_set_and_ignore_foreign_names() {
        let mut headers = Headers::default();
        headers.insert(Headers::SCHEMA, b"pushfan.bus.v1.ShardJob");
        headers.insert("x-other", b"ignored");
        headers.insert(Headers::TRACEPARENT, b"\xff");
        let pairs: Vec<_> = headers.iter().collect();
        assert_eq!(pairs, [(Headers::SCHEMA, "pushfan.bus.v1.ShardJob"), (Headers::TRACEPARENT, "\u{fffd}")]);
    }

    #[test]
    fn delivery_batch_key_spreads_batches_and_results_group_by_broadcast() {
        let delivery = Delivery { subscription_id: "s".into(), ..Delivery::default() };
        let batch = DeliveryBatch {
            broadcast_id: "b".into(),
            shard_index: 2,
            batch_seq: 5,
            deliveries: vec![delivery],
            ..DeliveryBatch::default()
        };
        assert_eq!(batch.key(), "b/2/5");
        let result = DeliveryResultBatch {
            broadcast_id: "b".into(),
            shard_index: 2,
            batch_seq: 5,
            ..Default::default()
        };
        assert_eq!(result.key(), "b");
        assert_eq!(result.idempotency_key(), batch.idempotency_key());
    }
}
