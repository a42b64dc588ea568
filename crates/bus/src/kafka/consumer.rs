//! Kafka consumer groups with manual, at-least-once commits.
//!
//! Like quickwit's Kafka source, the blocking librdkafka poll loop runs on its own thread, off
//! the async executor, and hands records to the async side over a bounded channel. A full
//! channel pauses fetching (backpressure) while polling continues, so the member still takes
//! part in rebalances and commits. Rebalance callbacks run inside `poll` on that thread;
//! the custom [`ConsumerContext`] applies each revoke and assign to the [`OffsetTracker`] shared
//! with the async side before the callback returns, so a revoked partition is fenced off at
//! once: its final safe position is committed synchronously, acks of its in-flight work are
//! ignored from then on, and its records still buffered in the channel are dropped instead of
//! handed out. The partition's next owner re-reads that work from the committed position.
//!
//! Rebalancing is incremental (`cooperative-sticky`): only partitions that move are revoked.
//!
//! Commits: the poll thread commits, every `commit_interval`, each partition's position up to
//! its lowest unacked offset, synchronously; a failed commit is retried on the next tick. On
//! revoke the safe position is committed again even if it was committed before, in case that
//! commit was lost in the rebalance. Nothing is auto-committed or auto-stored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use metrics::counter;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{millis, KafkaConfig};
use crate::bus::{Ack, AckInner, Incoming, Subscription};
use crate::envelope::{Headers, Position, Record};
use crate::error::BusError;
use crate::offsets::OffsetTracker;
use crate::topic::Topic;

/// How long one `poll` blocks; bounds how fast the thread notices shutdown.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a seek before resuming fetch may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one `poll` blocks while the channel is full, between attempts to hand on records.
const FULL_CHANNEL_POLL: Duration = Duration::from_millis(5);

type SharedTracker = Arc<Mutex<OffsetTracker>>;

fn lock(tracker: &SharedTracker) -> std::sync::MutexGuard<'_, OffsetTracker> {
    tracker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A record read by the poll thread, tagged with its partition's assignment generation.
struct Polled {
    record: Record,
    position: Position,
    generation: u64,
}

/// A member of a Kafka consumer group on one topic. Dropping it leaves the group (after
/// committing what was acked); unacked work goes to the partitions' next owners.
#[derive(Debug)]
pub struct KafkaSubscription {
    topic: Topic,
    records: mpsc::Receiver<Polled>,
    tracker: SharedTracker,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Polled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Polled").field("position", &self.position).finish_non_exhaustive()
    }
}

impl KafkaSubscription {
    pub(super) fn start(config: &KafkaConfig, topic: Topic, group: &str) -> Result<Self, BusError> {
        let tracker = SharedTracker::default();
        let context = RebalanceContext { tracker: Arc::clone(&tracker), topic };
        let mut client = config.client_config();
        client
            .set("group.id", config.topic_names.group(group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Incremental rebalancing: members keep their partitions (and keep committing them)
            // while others join or leave. With the eager protocol every member drops everything
            // and its commits fail until it rejoins; on the mock cluster that redid ~300 of 600
            // records after one member died, against 10 (its unacked ones) with this.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", millis(config.session_timeout))
            .set("heartbeat.interval.ms", millis(config.heartbeat_interval))
            .set("fetch.wait.max.ms", millis(config.fetch_wait))
            // A member that joins before its topic exists (roles start together) is assigned
            // nothing, and librdkafka looks again only at the next metadata refresh: 5 minutes
            // by default, during which that topic's work would wait.
            .set("topic.metadata.refresh.interval.ms", "2000");
        config.apply_extra(&mut client);
        let consumer: BaseConsumer<RebalanceContext> =
            client.create_with_context(context).map_err(|e| BusError::Config(Box::new(e)))?;
        let name = config.topic_names.name(topic);
        consumer.subscribe(&[&name]).map_err(|e| BusError::Kafka { topic, cause: Box::new(e) })?;

        let (sender, records) = mpsc::channel(config.consumer_buffer.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let poll_loop = PollLoop {
            consumer,
            sender,
            tracker: Arc::clone(&tracker),
            stop: Arc::clone(&stop),
            commit_interval: config.commit_interval,
            last_commit: Instant::now(),
            topic,
            topic_name: name,
        };
        thread::Builder::new()
            .name(format!("kafka-{}", topic.name()))
            .spawn(move || poll_loop.run())
            .map_err(|e| BusError::Kafka { topic, cause: Box::new(e) })?;
        Ok(Self { topic, records, tracker, stop })
    }
}

impl Subscription for KafkaSubscription {
    async fn recv(&mut self) -> Result<Incoming, BusError> {
        loop {
            let polled = self.records.recv().await.ok_or(BusError::ConsumerStopped { topic: self.topic })?;
            let Position { partition, offset } = polled.position;
            if !lock(&self.tracker).is_current(partition, polled.generation) {
                // Fetched before its partition was revoked; the new owner reads it again.
                counter!("pushfan_bus_revoked_skipped_total", "topic" => self.topic.name()).increment(1);
                continue;
            }
            let ack = KafkaAck {
                tracker: Arc::clone(&self.tracker),
                partition,
                generation: polled.generation,
                offset,
            };
            return Ok(Incoming {
                record: polled.record,
                position: Some(polled.position),
                ack: Ack(AckInner::Kafka(ack)),
            });
        }
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The Kafka ack: marks the offset done; the poll thread commits it on its next tick.
#[derive(Debug)]
pub(crate) struct KafkaAck {
    tracker: SharedTracker,
    partition: i32,
    generation: u64,
    offset: i64,
}

impl KafkaAck {
    pub(crate) fn ack(self) {
        if !lock(&self.tracker).ack(self.partition, self.generation, self.offset) {
            debug!(
                partition = self.partition,
                offset = self.offset,
                "ack after the partition was revoked; ignored"
            );
        }
    }
}

/// Applies rebalances to the offset tracker from inside librdkafka's callback.
struct RebalanceContext {
    tracker: SharedTracker,
    topic: Topic,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let mut final_positions = TopicPartitionList::new();
        {
            let mut tracker = lock(&self.tracker);
            for element in revoked.elements() {
                if let Some(position) = tracker.revoke(element.partition()) {
                    // Cannot fail: the partition is new to this list.
                    let _ = final_positions.add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Offset(position),
                    );
                }
            }
        }
        info!(topic = %self.topic, partitions = revoked.count(), "partitions revoked");
        if final_positions.count() > 0 {
            if let Err(error) = consumer.commit(&final_positions, CommitMode::Sync) {
                // The next owner starts from the previous commit: duplicates, nothing lost.
                warn!(topic = %self.topic, %error, "final commit of revoked partitions failed");
                counter!("pushfan_bus_commit_errors_total", "topic" => self.topic.name()).increment(1);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                let mut tracker = lock(&self.tracker);
                for element in assigned.elements() {
                    tracker.assign(element.partition());
                }
                info!(topic = %self.topic, partitions = assigned.count(), "partitions assigned");
            }
            Rebalance::Error(error) => warn!(topic = %self.topic, %error, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The poll thread's state.
struct PollLoop {
    consumer: BaseConsumer<RebalanceContext>,
    sender: mpsc::Sender<Polled>,
    tracker: SharedTracker,
    stop: Arc<AtomicBool>,
    commit_interval: Duration,
    last_commit: Instant,
    topic: Topic,
    /// The Kafka name of `topic`.
    topic_name: String,
}

impl PollLoop {
    fn run(mut self) {
        // Records polled but not yet taken by the (full) channel.
        let mut pending: VecDeque<Polled> = VecDeque::new();
        let mut paused = false;
        while !self.stop.load(Ordering::Relaxed) {
            if !self.hand_off(&mut pending) {
                break;
            }
            // A full channel pauses fetching, but polling goes on: rebalances and commits are
            // served from `poll`, and a member that stops polling holds up its whole group.
            // Fetching resumes once half the channel is free, not at the first free slot, so a
            // consumer running at its handlers' pace does not flap between the two.
            let full = !pending.is_empty();
            if full && !paused {
                self.pause();
                paused = true;
            } else if paused && !full && self.sender.capacity() * 2 >= self.sender.max_capacity() {
                self.resume();
                paused = false;
            }
            match self.consumer.poll(if full { FULL_CHANNEL_POLL } else { POLL_TIMEOUT }) {
                None => {}
                Some(Ok(message)) => {
                    pending.extend(self.track(&message));
                    if paused {
                        // Fetched while paused: from a partition assigned since; pause it too.
                        self.pause();
                    }
                }
                Some(Err(error)) => {
                    // librdkafka reconnects and retries by itself; these are reports, not the end.
                    warn!(topic = %self.topic, %error, "kafka consumer error");
                }
            }
            self.commit_if_due();
        }
        self.commit();
        debug!(topic = %self.topic, "consumer leaving its group");
        // Dropping the consumer closes it: it leaves the group, running the revoke callback.
    }

    /// Registers the record as in flight, or `None` if its partition is not ours.
    fn track(&self, message: &BorrowedMessage<'_>) -> Option<Polled> {
        let position = Position { partition: message.partition(), offset: message.offset() };
        let generation = lock(&self.tracker).track(position.partition, position.offset)?;
        let mut headers = Headers::default();
        if let Some(kafka_headers) = message.headers() {
            for header in kafka_headers.iter() {
                headers.insert(header.key, header.value.unwrap_or_default());
            }
        }
        let record = Record {
            key: bytes::Bytes::copy_from_slice(message.key().unwrap_or_default()),
            payload: bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            headers,
            spread: None,
            in_process: None,
        };
        Some(Polled { record, position, generation })
    }

    /// Moves pending records into the channel while it has room; false once the subscription
    /// is gone.
    fn hand_off(&self, pending: &mut VecDeque<Polled>) -> bool {
        while let Some(polled) = pending.pop_front() {
            match self.sender.try_send(polled) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(back)) => {
                    pending.push_front(back);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// Stops fetching for the whole current assignment.
    fn pause(&self) {
        if let Err(error) = self.consumer.assignment().and_then(|assignment| self.consumer.pause(&assignment))
        {
            warn!(topic = %self.topic, %error, "pausing fetch failed");
        }
    }

    /// Resumes fetching where the handed-out records end. librdkafka would restart a paused
    /// partition from its committed position (we store no offsets), re-fetching records already
    /// handed out; the tracker would skip them, but the seek saves fetching them.
    fn resume(&self) {
        let mut next = TopicPartitionList::new();
        for (partition, offset) in lock(&self.tracker).next_offsets() {
            // Cannot fail: each partition appears once.
            let _ = next.add_partition_offset(&self.topic_name, partition, Offset::Offset(offset));
        }
        let result = self.consumer.seek_partitions(next, SEEK_TIMEOUT).and_then(|_| {
            let assignment = self.consumer.assignment()?;
            self.consumer.resume(&assignment)
        });
        if let Err(error) = result {
            warn!(topic = %self.topic, %error, "resuming fetch failed");
        }
    }

    fn commit_if_due(&mut self) {
        if self.last_commit.elapsed() >= self.commit_interval {
            self.commit();
            self.last_commit = Instant::now();
        }
    }

    /// Commits synchronously: the result is then known here, rather than in a callback that
    /// librdkafka delivers on its own schedule, so a failed commit is reliably retried. It
    /// costs one coordinator round trip per `commit_interval` on this thread, while the
    /// handlers keep working through the buffered records.
    fn commit(&self) {
        let positions = lock(&self.tracker).take_commits();
        if positions.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for &(partition, position) in &positions {
            // Cannot fail: each partition appears once.
            let _ = list.add_partition_offset(&self.topic_name, partition, Offset::Offset(position));
        }
        match self.consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => counter!("pushfan_bus_commits_total", "topic" => self.topic.name()).increment(1),
            Err(error) => {
                warn!(topic = %self.topic, %error, "commit failed; retrying on the next tick");
                counter!("pushfan_bus_commit_errors_total", "topic" => self.topic.name()).increment(1);
                lock(&self.tracker).commit_failed(&positions);
            }
        }
    }
}
