//! The in-process bus for `pushfan standalone`: bounded tokio channels, one per consumer group
//! and topic, with the same contract as Kafka where it applies.
//!
//! - Bounded in records and in bytes: a full group queue makes [`Bus::send`] wait
//!   (backpressure), and fail with [`BusError::Backpressure`] after the configured wait. The
//!   byte bound counts a record until it is acked, not just while it is queued: an unacked
//!   record is held for redelivery, so it is memory all the same. A record
//!   over [`EmbeddedConfig::max_record_bytes`] is refused with [`BusError::TooLarge`], as Kafka
//!   would.
//! - Groups: members of one group share its queue; each group gets its own copy of each record.
//!   Records sent before any group joined a topic are kept for the first group that joins.
//! - Acks: an [`Ack`] dropped without acking puts its record back in the group's queue, so work a
//!   crashed handler task held is done by another member. It comes back after a delay that
//!   doubles with each redelivery of that record ([`redelivery_delay`]: 100 ms, 200 ms, ...,
//!   at most 30 s), ahead of new records once due: a record whose handler keeps dying is
//!   retried slowly instead of in a tight loop, and the rest of the queue goes on meanwhile.
//!   Durability ends with the process: what standalone loses with it, the ledger's record of
//!   each running broadcast brings back on restart (`pushfan_pipeline::resume`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use metrics::counter;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::bus::{Ack, AckInner, Bus, Incoming, Subscription};
use crate::envelope::{self, BusMessage, Record};
use crate::error::BusError;
use crate::topic::Topic;
use crate::trace_context::MessageContext;

/// Sizing of the embedded bus.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Records each group's queue holds before senders wait.
    pub queue_capacity: usize,
    /// Payload bytes each group holds, queued or received and not yet acked, before senders
    /// wait (counted in KiB).
    pub queue_bytes: usize,
    /// The largest record payload sent; the worker sizes its pages to fit.
    pub max_record_bytes: usize,
    /// How long a send waits for room before failing with [`BusError::Backpressure`].
    pub send_timeout: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        // No broker limit to fit under: 4 MiB lets a page of 512 of the largest pushes travel
        // as one record, and the byte bound keeps queued pages to a few dozen of those.
        Self {
            queue_capacity: 1024,
            queue_bytes: 256 << 20,
            max_record_bytes: 4 << 20,
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// The in-process bus. Cloning shares it.
#[derive(Clone, Debug)]
pub struct EmbeddedBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: EmbeddedConfig,
    topics: Mutex<HashMap<Topic, TopicQueues>>,
}

#[derive(Debug, Default)]
struct TopicQueues {
    groups: HashMap<String, Arc<GroupQueue>>,
    /// Holds records sent while no group has joined yet; the first group adopts it.
    unclaimed: Option<Arc<GroupQueue>>,
}

/// One consumer group's queue on one topic.
#[derive(Debug)]
struct GroupQueue {
    topic: Topic,
    sender: mpsc::Sender<Queued>,
    receiver: tokio::sync::Mutex<mpsc::Receiver<Queued>>,
    /// Room left in the queue, in KiB of payload.
    room_kib: Arc<Semaphore>,
    capacity_kib: u32,
    /// Records whose ack was dropped, by when they are due again (ties in drop order); served
    /// before new records once due.
    redeliveries: Mutex<Redeliveries>,
    redelivery_added: Notify,
}

#[derive(Debug, Default)]
struct Redeliveries {
    due: BTreeMap<(Instant, u64), Queued>,
    dropped: u64,
}

/// How long a record whose ack was dropped for the `redelivery`-th time (1 for the first) waits
/// before it is delivered again: 100 ms, doubling, at most 30 s.
pub fn redelivery_delay(redelivery: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);
    let doublings = redelivery.saturating_sub(1).min(16);
    FIRST.saturating_mul(1 << doublings).min(MAX)
}

/// A record with the room it takes in its group's queue, given back only when it is acked: an
/// unacked record is held here for redelivery, so it is memory this queue holds as much as a
/// queued one.
#[derive(Debug)]
struct Queued {
    record: Record,
    _room: OwnedSemaphorePermit,
    /// How often this record's ack was dropped so far.
    redeliveries: u32,
}

impl GroupQueue {
    fn new(topic: Topic, config: &EmbeddedConfig) -> Arc<Self> {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let capacity_kib = u32::try_from(config.queue_bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        Arc::new(Self {
            topic,
            sender,
            receiver: tokio::sync::Mutex::new(receiver),
            room_kib: Arc::new(Semaphore::new(capacity_kib as usize)),
            capacity_kib,
            redeliveries: Mutex::new(Redeliveries::default()),
            redelivery_added: Notify::new(),
        })
    }

    /// Queues `record` once there is room for it.
    async fn push(&self, record: Record) -> Result<(), ()> {
        // A record larger than the whole queue waits for an empty queue rather than forever.
        let kib = u32::try_from(record.size().div_ceil(1024)).unwrap_or(u32::MAX).min(self.capacity_kib);
        let room = Arc::clone(&self.room_kib).acquire_many_owned(kib).await.map_err(drop)?;
        self.sender.send(Queued { record, _room: room, redeliveries: 0 }).await.map_err(drop)
    }

    /// A redelivery that is due, or when the next one will be.
    fn pop_redelivery(&self) -> Result<Queued, Option<Instant>> {
        let mut redeliveries = self.redeliveries.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match redeliveries.due.first_key_value() {
            Some((&(at, _), _)) if at <= now => {
                redeliveries.due.pop_first().map(|(_, queued)| queued).ok_or(None)
            }
            Some((&(at, _), _)) => Err(Some(at)),
            None => Err(None),
        }
    }

    fn redeliver(&self, mut queued: Queued) {
        queued.redeliveries = queued.redeliveries.saturating_add(1);
        let at = Instant::now() + redelivery_delay(queued.redeliveries);
        let mut redeliveries = self.redeliveries.lock().unwrap_or_else(PoisonError::into_inner);
        redeliveries.dropped += 1;
        let seq = redeliveries.dropped;
        redeliveries.due.insert((at, seq), queued);
        drop(redeliveries);
        counter!("pushfan_bus_redelivered_total", "topic" => self.topic.name()).increment(1);
        // `notify_one` stores a permit when nobody waits, so a receiver never misses it.
        self.redelivery_added.notify_one();
    }
}

impl EmbeddedBus {
    /// An empty bus.
    pub fn new(config: EmbeddedConfig) -> Self {
        Self { shared: Arc::new(Shared { config, topics: Mutex::new(HashMap::new()) }) }
    }

    /// The queues a record sent to `topic` goes into.
    fn queues_for_send(&self, topic: Topic) -> Vec<Arc<GroupQueue>> {
        let mut topics = self.shared.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let queues = topics.entry(topic).or_default();
        if queues.groups.is_empty() {
            let config = &self.shared.config;
            vec![Arc::clone(queues.unclaimed.get_or_insert_with(|| GroupQueue::new(topic, config)))]
        } else {
            queues.groups.values().cloned().collect()
        }
    }
}

impl Bus for EmbeddedBus {
    type Subscription = EmbeddedSubscription;

    async fn send(&self, topic: Topic, record: Record) -> Result<(), BusError> {
        let bytes = record.size();
        if bytes > self.shared.config.max_record_bytes {
            counter!("pushfan_bus_produce_errors_total", "topic" => topic.name(), "error" => "too_large")
                .increment(1);
            return Err(BusError::TooLarge { topic, bytes });
        }
        let waited = self.shared.config.send_timeout;
        for queue in self.queues_for_send(topic) {
            match tokio::time::timeout(waited, queue.push(record.clone())).await {
                Ok(Ok(())) => {}
                // The queue owns its receiver, so the channel never closes while `queue` lives;
                // a full queue past the wait is backpressure either way.
                Ok(Err(_)) | Err(_) => {
                    counter!("pushfan_bus_produce_errors_total", "topic" => topic.name(), "error" => "backpressure")
                        .increment(1);
                    return Err(BusError::Backpressure { topic, waited });
                }
            }
        }
        counter!("pushfan_bus_produced_total", "topic" => topic.name()).increment(1);
        Ok(())
    }

    fn max_record_bytes(&self) -> usize {
        self.shared.config.max_record_bytes
    }

    /// Sends the message itself: within one process there is nothing to encode.
    fn publish<M: BusMessage>(
        &self,
        message: &M,
        context: &MessageContext,
    ) -> impl Future<Output = Result<(), BusError>> + Send {
        self.send(M::TOPIC, envelope::in_process(message, context))
    }

    fn subscribe(&self, topic: Topic, group: &str) -> Result<EmbeddedSubscription, BusError> {
        let mut topics = self.shared.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let queues = topics.entry(topic).or_default();
        let config = &self.shared.config;
        let queue = match queues.groups.get(group) {
            Some(queue) => Arc::clone(queue),
            None => {
                let queue = queues.unclaimed.take().unwrap_or_else(|| GroupQueue::new(topic, config));
                queues.groups.insert(group.to_owned(), Arc::clone(&queue));
                queue
            }
        };
        Ok(EmbeddedSubscription { queue })
    }
}

/// A member of one consumer group on the embedded bus.
#[derive(Debug)]
pub struct EmbeddedSubscription {
    queue: Arc<GroupQueue>,
}

impl EmbeddedSubscription {
    fn incoming(&self, queued: Queued) -> Incoming {
        let record = queued.record.clone();
        let ack = EmbeddedAck { held: Some(queued), queue: Arc::downgrade(&self.queue) };
        Incoming { record, position: None, ack: Ack(AckInner::Embedded(ack)) }
    }
}

impl Subscription for EmbeddedSubscription {
    async fn recv(&mut self) -> Result<Incoming, BusError> {
        loop {
            let next_due = match self.queue.pop_redelivery() {
                Ok(queued) => return Ok(self.incoming(queued)),
                Err(next_due) => next_due,
            };
            // Members of a group take turns on the shared receiver.
            let mut receiver = self.queue.receiver.lock().await;
            let due = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = due => continue,
                () = self.queue.redelivery_added.notified() => continue,
                received = receiver.recv() => match received {
                    Some(queued) => return Ok(self.incoming(queued)),
                    None => return Err(BusError::ConsumerStopped { topic: self.queue.topic }),
                },
            }
        }
    }
}

/// The embedded bus's ack: holds the record (and its room in the queue) until acked, and
/// requeues it if dropped unacked.
#[derive(Debug)]
pub(crate) struct EmbeddedAck {
    held: Option<Queued>,
    queue: Weak<GroupQueue>,
}

impl EmbeddedAck {
    pub(crate) fn ack(mut self) {
        self.held = None;
    }
}

impl Drop for EmbeddedAck {
    fn drop(&mut self) {
        if let (Some(held), Some(queue)) = (self.held.take(), self.queue.upgrade()) {
            queue.redeliver(held);
        }
    }
}
