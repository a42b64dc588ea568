//! The Kafka bus: a thin adapter from the [`Bus`] contract to rdkafka (bundled librdkafka).
//! The only module in pushfan that knows rdkafka.
//!
//! Producing: one idempotent producer (`enable.idempotence=true`, `acks=all`) per [`KafkaBus`];
//! `send` resolves when the brokers acknowledge the record. librdkafka's queue is bounded
//! (`queue.buffering.max.*`); a send that finds it full waits up to `queue_full_wait`, then
//! fails with [`BusError::Backpressure`]. A record the brokers do not acknowledge within
//! `message_timeout` (e.g. Kafka is down) fails with [`BusError::Unavailable`]. Delivery
//! reports come from a polling thread of ours ([`producer`]), not rdkafka's `FutureProducer`.
//!
//! Consuming: see [`consumer`].

mod consumer;
mod producer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::counter;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer as _;
use rdkafka::util::Timeout;
use tracing::{debug_span, warn, Instrument};

pub(crate) use self::consumer::KafkaAck;
pub use self::consumer::KafkaSubscription;
use crate::bus::Bus;
use crate::envelope::{Headers, Record};
use crate::error::BusError;
use crate::topic::{Topic, TopicNames};

/// Settings of the Kafka bus.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `kafka-0:9092,kafka-1:9092`.
    pub brokers: String,
    /// Kafka topic names: prefix + logical name (see [`crate::topic`]).
    pub topic_names: TopicNames,
    /// `client.id`, shown in broker logs.
    pub client_id: String,
    /// How long librdkafka keeps retrying a record before `send` fails (`message.timeout.ms`).
    pub message_timeout: Duration,
    /// How long `send` waits for room in a full producer queue before [`BusError::Backpressure`].
    pub queue_full_wait: Duration,
    /// Records the producer queues before it is full (`queue.buffering.max.messages`).
    pub max_queued_messages: u32,
    /// Bytes the producer queues before it is full, in KiB (`queue.buffering.max.kbytes`).
    pub max_queued_kbytes: u32,
    /// How long the producer waits to fill a batch (`linger.ms`).
    pub linger: Duration,
    /// Records a consumer fetches ahead of its handlers.
    pub consumer_buffer: usize,
    /// `fetch.wait.max.ms`: how long a broker may hold a fetch that finds nothing new. Kafka
    /// answers as soon as a record arrives, so this only paces an idle consumer's polling;
    /// brokers that hold every fetch for the whole wait (tansu) deliver at most one fetch per
    /// partition per wait, which at librdkafka's 500 ms capped a broadcast at ~4k pushes/s.
    pub fetch_wait: Duration,
    /// How often a consumer commits acked positions.
    pub commit_interval: Duration,
    /// `session.timeout.ms`: how long a silent consumer keeps its partitions.
    pub session_timeout: Duration,
    /// `heartbeat.interval.ms`: how soon a member learns the group is rebalancing. Its commits
    /// fail until it rejoins, so a short interval means fewer records redone after a rebalance.
    pub heartbeat_interval: Duration,
    /// The largest record payload pushfan sends, so the largest delivery batch (the worker
    /// sizes its pages to fit). Brokers refuse records over their `message.max.bytes` (1 MB by
    /// default), so the default leaves room under that; raise both together. The producer's
    /// `message.max.bytes` and the topics pushfan creates (`max.message.bytes`) follow it.
    pub max_record_bytes: usize,
    /// Further librdkafka properties (security, tuning), applied last.
    pub extra: Vec<(String, String)>,
}

/// Room for a record's headers and the batch framing above its payload.
const RECORD_FRAMING_BYTES: usize = 64 * 1024;

impl KafkaConfig {
    /// Defaults for a cluster at `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_names: TopicNames::default(),
            client_id: "pushfan".to_owned(),
            message_timeout: Duration::from_secs(30),
            queue_full_wait: Duration::from_secs(5),
            max_queued_messages: 10_000,
            max_queued_kbytes: 256 * 1024,
            linger: Duration::from_millis(5),
            consumer_buffer: 64,
            fetch_wait: Duration::from_millis(100),
            commit_interval: Duration::from_millis(200),
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(500),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            extra: Vec::new(),
        }
    }

    /// `message.max.bytes` for a record of [`KafkaConfig::max_record_bytes`], never below
    /// librdkafka's and Kafka's 1 MB default.
    fn message_max_bytes(&self) -> String {
        (self.max_record_bytes + RECORD_FRAMING_BYTES).max(1_000_000).to_string()
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("client.id", &self.client_id);
        config
    }

    fn apply_extra(&self, config: &mut ClientConfig) {
        for (key, value) in &self.extra {
            config.set(key, value);
        }
    }
}

/// The Kafka bus. Cloning shares its producer.
#[derive(Clone)]
pub struct KafkaBus {
    config: KafkaConfig,
    producer: Arc<producer::Producer>,
    /// Partitions per topic name, learnt once, for [`Record::spread`].
    partitions: Arc<Mutex<HashMap<String, u32>>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus").field("config", &self.config).finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Creates the producer; connects lazily.
    pub fn new(config: KafkaConfig) -> Result<Self, BusError> {
        let mut client = config.client_config();
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", millis(config.message_timeout))
            .set("queue.buffering.max.messages", config.max_queued_messages.to_string())
            .set("queue.buffering.max.kbytes", config.max_queued_kbytes.to_string())
            .set("linger.ms", millis(config.linger))
            .set("message.max.bytes", config.message_max_bytes());
        config.apply_extra(&mut client);
        let producer = producer::Producer::new(&client).map_err(|e| BusError::Config(Box::new(e)))?;
        Ok(Self { config, producer: Arc::new(producer), partitions: Arc::default() })
    }

    /// The bus's settings.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Creates the bus's five topics (an existing topic is left as it is). Deployments may
    /// instead create them with their own tooling; brokers without auto-create need one or
    /// the other.
    pub async fn create_topics(&self, partitions: i32, replication: i32) -> Result<(), BusError> {
        let mut client = self.config.client_config();
        self.config.apply_extra(&mut client);
        let admin: AdminClient<DefaultClientContext> =
            client.create().map_err(|e| BusError::Config(Box::new(e)))?;
        let names: Vec<String> =
            Topic::ALL.iter().map(|&topic| self.config.topic_names.name(topic)).collect();
        let max_message_bytes = self.config.message_max_bytes();
        let new_topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| {
                NewTopic::new(name, partitions, TopicReplication::Fixed(replication))
                    .set("max.message.bytes", &max_message_bytes)
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|e| BusError::CreateTopic { name: names.join(","), cause: Box::new(e) })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::CreateTopic { name, cause: Box::new(KafkaError::AdminOp(code)) })
                }
            }
        }
        Ok(())
    }
}

/// Kafka refuses records over 1 MB by default (`message.max.bytes`, broker and producer); the
/// rest is headroom for headers and the batch framing.
const DEFAULT_MAX_RECORD_BYTES: usize = 768 * 1024;

impl Bus for KafkaBus {
    type Subscription = KafkaSubscription;

    fn max_record_bytes(&self) -> usize {
        self.config.max_record_bytes
    }

    async fn send(&self, topic: Topic, record: Record) -> Result<(), BusError> {
        let name = self.config.topic_names.name(topic);
        let span = debug_span!("bus.send", topic = topic.name(), bytes = record.payload.len());
        let partition = match record.spread {
            // Unknown partitions (no metadata yet): the key's hash decides, as without spread.
            Some(spread) => self.partitions(&name).await.map(|partitions| (spread % partitions) as i32),
            None => None,
        };
        let outgoing = producer::Outgoing {
            topic: &name,
            key: record.key.as_ref(),
            payload: record.payload.as_ref(),
            headers: kafka_headers(&record.headers),
            partition,
        };
        let result = self.producer.send(outgoing, self.config.queue_full_wait).instrument(span).await;
        match result {
            Ok(()) => {
                counter!("pushfan_bus_produced_total", "topic" => topic.name()).increment(1);
                Ok(())
            }
            Err(error) => {
                let error = self.produce_error(topic, record.payload.len(), error);
                counter!("pushfan_bus_produce_errors_total", "topic" => topic.name(), "error" => error.label())
                    .increment(1);
                Err(error)
            }
        }
    }

    fn subscribe(&self, topic: Topic, group: &str) -> Result<KafkaSubscription, BusError> {
        KafkaSubscription::start(&self.config, topic, group)
    }
}

impl KafkaBus {
    /// How many partitions topic `name` has, from the broker's metadata the first time.
    async fn partitions(&self, name: &str) -> Option<u32> {
        if let Some(&known) = self.partitions.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Some(known);
        }
        let producer = Arc::clone(self.producer.base());
        let topic = name.to_owned();
        let timeout = self.config.queue_full_wait.max(Duration::from_secs(1));
        let fetched = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
                .map(|metadata| metadata.topics().first().map_or(0, |topic| topic.partitions().len() as u32))
        })
        .await;
        match fetched {
            Ok(Ok(count)) if count > 0 => {
                self.partitions.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), count);
                Some(count)
            }
            Ok(Ok(_)) | Err(_) => None,
            Ok(Err(error)) => {
                warn!(topic = name, %error, "no partition count; placing records by key");
                None
            }
        }
    }

    fn produce_error(&self, topic: Topic, bytes: usize, error: KafkaError) -> BusError {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => {
                BusError::Backpressure { topic, waited: self.config.queue_full_wait }
            }
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => BusError::TooLarge { topic, bytes },
            Some(
                RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NotEnoughReplicas
                | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition,
            ) => BusError::Unavailable { topic, cause: Box::new(error) },
            _ => BusError::Kafka { topic, cause: Box::new(error) },
        }
    }
}

fn kafka_headers(headers: &Headers) -> OwnedHeaders {
    headers
        .iter()
        .fold(OwnedHeaders::new(), |kafka, (key, value)| kafka.insert(Header { key, value: Some(value) }))
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}
