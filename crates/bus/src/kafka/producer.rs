//! librdkafka's producer with a polling thread of our own.
//!
//! rdkafka's `FutureProducer` polls for delivery reports in 100 ms windows and spins through the
//! last fraction of a millisecond of each (the time left is rounded down to 0 ms, so the last
//! polls return at once): 0.9% of a core in every process, sending or idle (measured: 180 ms of
//! its thread's CPU in 20 idle seconds, per role). Here the thread polls in 1 s windows, so at
//! most a millisecond a second, and a send awaits its own delivery report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long one poll of the delivery reports may wait.
const POLL_WINDOW: Duration = Duration::from_secs(1);
/// How long a send waits before it tries a full producer queue again.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(10);

/// Hands each delivery report to the send waiting for it.
pub(crate) struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<KafkaResult<()>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, done: Self::DeliveryOpaque) {
        // The sender gave up (its task was dropped): nobody to tell.
        let _ = done.send(result.as_ref().map(|_| ()).map_err(|(error, _)| error.clone()));
    }
}

/// What [`Producer::send`] sends.
pub(crate) struct Outgoing<'a> {
    pub(crate) topic: &'a str,
    pub(crate) key: &'a [u8],
    pub(crate) payload: &'a [u8],
    pub(crate) headers: OwnedHeaders,
    /// `None`: the key's hash picks the partition.
    pub(crate) partition: Option<i32>,
}

/// The producer and its polling thread. Dropped, it tells the thread to stop; the thread ends
/// after its current window, and librdkafka's producer with it.
pub(crate) struct Producer {
    base: Arc<BaseProducer<Reports>>,
    stop: Arc<AtomicBool>,
}

impl Producer {
    pub(crate) fn new(config: &ClientConfig) -> KafkaResult<Self> {
        let base: Arc<BaseProducer<Reports>> = Arc::new(config.create_with_context(Reports)?);
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name("kafka-producer".to_owned())
            .spawn({
                let (base, stop) = (Arc::clone(&base), Arc::clone(&stop));
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        base.poll(POLL_WINDOW);
                    }
                }
            })
            .map_err(|_| KafkaError::ClientCreation("cannot start the producer's polling thread".into()))?;
        Ok(Self { base, stop })
    }

    /// The underlying producer (metadata requests).
    pub(crate) fn base(&self) -> &Arc<BaseProducer<Reports>> {
        &self.base
    }

    /// Queues `record` (waiting up to `queue_full_wait` for room in a full queue) and resolves
    /// with its delivery report.
    pub(crate) async fn send(&self, outgoing: Outgoing<'_>, queue_full_wait: Duration) -> KafkaResult<()> {
        let (done, report) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(outgoing.topic, Box::new(done))
            .key(outgoing.key)
            .payload(outgoing.payload)
            .headers(outgoing.headers);
        if let Some(partition) = outgoing.partition {
            record = record.partition(partition);
        }
        let deadline = Instant::now() + queue_full_wait;
        loop {
            match self.base.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), unsent))
                    if Instant::now() < deadline =>
                {
                    record = unsent;
                    tokio::time::sleep(QUEUE_FULL_RETRY).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
        report.await.unwrap_or(Err(KafkaError::Canceled))
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
