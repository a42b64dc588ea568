//! pushfan's roles, each a loop over one bus topic, the same code in `pushfan standalone` (on the
//! embedded bus and store) and in a cluster (on Kafka and Redis):
//!
//! | loop                      | consumes          | does                                          | hands on to        |
//! |---------------------------|-------------------|-----------------------------------------------|--------------------|
//! | [`worker::run_planner`]   | publish requests  | records the broadcast, one job per shard      | shard jobs         |
//! | [`worker::run_encryptor`] | shard jobs        | scans the shard page by page, encrypts (rayon) | delivery batches   |
//! | [`deliverer::run`]        | delivery batches  | POSTs through the gateway, prunes 404/410     | delivery results   |
//! | [`stats::run`]            | delivery results  | adds them to the broadcast ledger             | (the ledger)       |
//!
//! Invariant: a loop acks a message only after its work is durably handed on (the next message
//! sent, the store or ledger written). A loop that dies mid-message leaves it unacked and the bus
//! delivers it again; every ledger write is keyed by its step, so repeated work counts once.

pub mod deliverer;
pub mod pauses;
pub mod plan;
pub mod stats;
pub mod worker;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use pushfan_bus::Bus;
use pushfan_gateway::Gateway;
use pushfan_store::ledger::BroadcastLedger;
use pushfan_store::{SubscriptionStore, VapidKeyId};
use pushfan_webpush::vapid::TokenCache;
use pushfan_webpush::{Backend, EndpointPolicy, Padding};
use tokio_util::sync::CancellationToken;

/// The VAPID keys a deployment signs with, by id. Subscriptions remember the key they were
/// created with, so an old key stays here until its subscriptions are gone.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: HashMap<VapidKeyId, Arc<TokenCache>>,
}

impl Keyring {
    /// Adds (or replaces) key `id`.
    pub fn insert(&mut self, id: VapidKeyId, tokens: TokenCache) {
        self.keys.insert(id, Arc::new(tokens));
    }

    /// The token cache of key `id`.
    pub fn get(&self, id: VapidKeyId) -> Option<&Arc<TokenCache>> {
        self.keys.get(&id)
    }
}

/// Tuning of the loops.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Subscriptions per store page; one page becomes one delivery batch per VAPID key.
    pub page_size: usize,
    /// Shard jobs one encryptor works on at once.
    pub concurrent_shard_jobs: usize,
    /// Delivery batches one deliverer works on at once.
    pub concurrent_batches: usize,
    /// Bytes of deliveries one deliverer may hold parked besides those: deliveries waiting for
    /// a paused push service or a retry backoff, their bodies copied out of their batch so that
    /// (on Kafka) the batch's page is freed, without taking one of the `concurrent_batches`
    /// places. Past it a waiting batch keeps its place (backpressure); 0 keeps every waiting
    /// batch in its place.
    pub parked_bytes: usize,
    /// Which crypto backend encrypts.
    pub backend: Backend,
    /// Padding to hide payload lengths.
    pub padding: Padding,
    /// Which endpoints the deliverer will send to.
    pub endpoint_policy: EndpointPolicy,
    /// Write each delivery's outcome (last success, consecutive failures) back to the store.
    pub record_outcomes: bool,
    /// How the encryptor hands its delivery batches to the gateway.
    pub hand_off: HandOff,
}

/// How encrypted deliveries get from the encryptor to the gateway. Like `page_size`, every
/// worker of a deployment must use the same: it decides how large a page may be, and a page
/// redone after a crash must be the same page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HandOff {
    /// The encryptor's own process delivers each page's batches through its gateway, and moves
    /// the shard's checkpoint past a page only once its results are on the bus. Nothing crosses
    /// the bus but results, and pages are not bounded by the bus's record size.
    #[default]
    Direct,
    /// Each batch goes to the `deliveries` topic for the gateway role's deliverers: a gateway tier
    /// apart from the workers (its own egress, its own scaling).
    Bus,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            page_size: 512,
            concurrent_shard_jobs: 4,
            concurrent_batches: 8,
            // What 128 whole Kafka-sized batches (768 KiB) held before deliveries parked on
            // their own.
            parked_bytes: 96 << 20,
            backend: Backend::default(),
            padding: Padding::None,
            endpoint_policy: EndpointPolicy::default(),
            record_outcomes: true,
            hand_off: HandOff::default(),
        }
    }
}

/// What every loop works with. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pipeline<B: Bus> {
    /// The job bus.
    pub bus: B,
    /// Subscriptions.
    pub store: Arc<dyn SubscriptionStore>,
    /// Broadcast bookkeeping.
    pub ledger: Arc<dyn BroadcastLedger>,
    /// VAPID keys.
    pub keyring: Arc<Keyring>,
    /// Sends to push services.
    pub gateway: Gateway,
    /// Tuning.
    pub config: PipelineConfig,
}

/// Consumer group names: one per loop, so every loop sees every message of its topic once
/// across all processes running it.
pub mod groups {
    /// Publish requests → shard jobs.
    pub const PLANNER: &str = "pushfan-planner";
    /// Shard jobs → delivery batches.
    pub const ENCRYPTOR: &str = "pushfan-encryptor";
    /// Delivery batches → results.
    pub const DELIVERER: &str = "pushfan-deliverer";
    /// Results → ledger.
    pub const STATS: &str = "pushfan-stats";
}

/// Why a loop stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("bus: {0}")]
    Bus(#[from] pushfan_bus::BusError),
    #[error("store: {0}")]
    Store(#[from] pushfan_store::StoreError),
}

/// Runs until `shutdown` fires, then returns; a loop that cannot go on returns its error.
pub(crate) async fn until_shutdown<F>(shutdown: &CancellationToken, work: F) -> Result<(), PipelineError>
where
    F: std::future::Future<Output = Result<(), PipelineError>>,
{
    tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        result = work => result,
    }
}

/// How handling one message failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandleError {
    /// The message itself is wrong: report it and move on, retrying cannot help.
    #[error(transparent)]
    Invalid(#[from] plan::PlanError),
    /// The bus or the store failed: keep the message and try again.
    #[error(transparent)]
    Transient(#[from] PipelineError),
}

impl From<pushfan_store::StoreError> for HandleError {
    fn from(error: pushfan_store::StoreError) -> Self {
        HandleError::Transient(error.into())
    }
}

impl From<pushfan_bus::BusError> for HandleError {
    fn from(error: pushfan_bus::BusError) -> Self {
        match error {
            // The same record is as large on every retry: only giving up on the message that
            // produced it (dead-lettered, like any poison) lets the loop go on.
            pushfan_bus::BusError::TooLarge { .. } => {
                HandleError::Invalid(plan::PlanError::Invalid { field: "record", reason: error.to_string() })
            }
            error => HandleError::Transient(error.into()),
        }
    }
}

/// A handler's hold on one of its loop's `concurrency` places. A handler that has nothing to do
/// for a while (a delivery batch whose deliveries all wait on a throttling push service) lets go
/// of it, so another message can be worked on meanwhile; one whose memory another bound covers
/// from then on (a parked batch's claim) may go on without it for a while. Writes and
/// transient-failure retries take one again first.
#[derive(Clone, Debug)]
pub(crate) struct Slot(Arc<SlotState>);

#[derive(Debug)]
struct SlotState {
    places: Arc<tokio::sync::Semaphore>,
    /// Taken by one handler at a time, never across an await.
    held: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl Slot {
    fn new(places: Arc<tokio::sync::Semaphore>, held: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self(Arc::new(SlotState { places, held: std::sync::Mutex::new(Some(held)) }))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<tokio::sync::OwnedSemaphorePermit>> {
        self.0.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the place back to the loop.
    pub(crate) fn release(&self) {
        self.held().take();
    }

    /// Waits for a place, unless this handler still holds one.
    pub(crate) async fn reacquire(&self) {
        if self.held().is_some() {
            return;
        }
        let permit = Arc::clone(&self.0.places).acquire_owned().await.expect("never closed");
        *self.held() = Some(permit);
    }
}

/// Consumes `M` in `group`, handling up to `concurrency` messages at once. A transient failure
/// retries the same message with capped backoff, holding its ack (so a broken store slows the
/// loop down instead of losing work); an invalid message is counted, logged and acked.
pub(crate) async fn consume<B, M, H, Fut>(
    bus: &B,
    group: &'static str,
    concurrency: usize,
    shutdown: &CancellationToken,
    handler: H,
) -> Result<(), PipelineError>
where
    B: Bus,
    M: pushfan_bus::BusMessage,
    H: Fn(Arc<M>, pushfan_bus::MessageContext, Slot) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), HandleError>> + Send + 'static,
{
    consume_owned::<B, M, _, _>(bus, group, concurrency, shutdown, move |message, context, slot| {
        let handler = handler.clone();
        async move {
            let message = Arc::new(message);
            retrying(group, &slot, || handler(Arc::clone(&message), context.clone(), slot.clone())).await
        }
    })
    .await
}

/// A message whose handler panics or finds it invalid is given up: counted in
/// `pushfan_pipeline_poison_total{group, reason}` (`panic`, `invalid`), sent to the dead-letter
/// topic with the reason, and acked, so it never comes back in a loop.
///
/// Like [`consume`], but the handler owns the message and retries its own transient failures,
/// so nothing else keeps the message alive while the handler runs: a handler can let go of a
/// large message (a delivery batch's page) before it is done with its work.
pub(crate) async fn consume_owned<B, M, H, Fut>(
    bus: &B,
    group: &'static str,
    concurrency: usize,
    shutdown: &CancellationToken,
    handler: H,
) -> Result<(), PipelineError>
where
    B: Bus,
    M: pushfan_bus::BusMessage,
    H: Fn(M, pushfan_bus::MessageContext, Slot) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), plan::PlanError>> + Send + 'static,
{
    let mut consumer = bus.consume::<M>(group)?;
    let places = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    // Dropping the set aborts in-flight handlers; their messages stay unacked and come back.
    let mut running = tokio::task::JoinSet::new();
    until_shutdown(shutdown, async {
        loop {
            let place = Arc::clone(&places).acquire_owned().await.expect("never closed");
            let received = consumer.next().await?;
            while running.try_join_next().is_some() {}
            let handler = handler.clone();
            let slot = Slot::new(Arc::clone(&places), place);
            let bus = bus.clone();
            running.spawn(async move {
                let pushfan_bus::Received { message, context, ack, source, .. } = received;
                // A panic is caught here rather than left to kill the task: a task that dies
                // drops its ack, and the message would come back to panic again and again.
                let handled = AssertUnwindSafe(handler(message, context, slot.clone())).catch_unwind().await;
                let (reason, label) = match handled {
                    Ok(Ok(())) => {
                        ack.ack();
                        return;
                    }
                    Ok(Err(error)) => (error.to_string(), "invalid"),
                    Err(panic) => (format!("handler panicked: {}", panic_message(&*panic)), "panic"),
                };
                tracing::error!(group, %reason, "giving up on a message: dead-lettered and acked");
                metrics::counter!("pushfan_pipeline_poison_total", "group" => group, "reason" => label)
                    .increment(1);
                // The handler may have consumed the message, so the letter carries its topic,
                // key, headers and position, not its payload.
                match pushfan_bus::dead_letter(&bus, &source, bytes::Bytes::new(), &reason, label).await {
                    Ok(()) => ack.ack(),
                    // Unacked, the message comes back later (with backoff on the embedded bus).
                    Err(error) => tracing::error!(group, %error, "could not dead-letter a message"),
                }
                drop(slot);
            });
        }
    })
    .await
}

/// The text of a caught panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs `step` until it succeeds or finds its message invalid. A transient failure (store,
/// bus) is retried with capped backoff, holding the handler's place once the wait is over.
pub(crate) async fn retrying<T, F, Fut>(
    group: &'static str,
    slot: &Slot,
    mut step: F,
) -> Result<T, plan::PlanError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, HandleError>>,
{
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match step().await {
            Ok(done) => return Ok(done),
            Err(HandleError::Invalid(error)) => return Err(error),
            Err(HandleError::Transient(error)) => {
                tracing::warn!(group, %error, retry_in_ms = backoff.as_millis() as u64, "handling failed; retrying");
                metrics::counter!("pushfan_pipeline_retries_total", "group" => group).increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
                slot.reacquire().await;
            }
        }
    }
}

/// One of the loops; a process runs any set of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// [`worker::run_planner`].
    Planner,
    /// [`worker::run_encryptor`].
    Encryptor,
    /// [`deliverer::run`].
    Deliverer,
    /// [`stats::run`].
    Stats,
}

impl Role {
    /// Every loop: what `pushfan standalone` runs.
    pub const ALL: [Role; 4] = [Role::Planner, Role::Encryptor, Role::Deliverer, Role::Stats];
}

/// Runs `roles` until `shutdown` fires; if one loop fails, the others are stopped and its error
/// returned.
pub async fn run_roles<B: Bus>(
    pipeline: Pipeline<B>,
    roles: &[Role],
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let local = shutdown.child_token();
    let mut loops = tokio::task::JoinSet::new();
    for role in roles {
        let (pipeline, stop) = (pipeline.clone(), local.clone());
        match role {
            Role::Planner => loops.spawn(worker::run_planner(pipeline, stop)),
            Role::Encryptor => loops.spawn(worker::run_encryptor(pipeline, stop)),
            Role::Deliverer => loops.spawn(deliverer::run(pipeline, stop)),
            Role::Stats => loops.spawn(stats::run(pipeline, stop)),
        };
    }
    let mut outcome = Ok(());
    while let Some(finished) = loops.join_next().await {
        let result = finished.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()));
        if let Err(error) = result {
            tracing::error!(%error, "a pipeline loop failed; stopping the others");
            local.cancel();
            outcome = outcome.and(Err(error));
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use pushfan_bus::messages::{DeadLetter, ShardJob};
    use pushfan_bus::{EmbeddedBus, EmbeddedConfig, MessageContext, Topic};

    use super::*;

    /// A handler that panics on one message: the panic is caught, that message is dead-lettered
    /// and acked (handled once, never redelivered in a loop), and the others are handled.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_handler_dead_letters_its_message_once_and_the_loop_goes_on() {
        let bus = EmbeddedBus::new(EmbeddedConfig::default());
        let mut letters = bus.consume::<DeadLetter>("reader").unwrap();
        for shard_index in 0..3 {
            let job = ShardJob { broadcast_id: "b".into(), shard_index, ..ShardJob::default() };
            bus.publish(&job, &MessageContext::default()).await.unwrap();
        }
        let calls: Arc<[AtomicU32; 3]> = Arc::new(Default::default());
        let (shutdown, seen) = (CancellationToken::new(), Arc::clone(&calls));
        let running = tokio::spawn({
            let (bus, shutdown) = (bus.clone(), shutdown.clone());
            async move {
                consume_owned::<_, ShardJob, _, _>(&bus, "test", 2, &shutdown, move |job, _, _| {
                    let seen = Arc::clone(&seen);
                    async move {
                        seen[job.shard_index as usize].fetch_add(1, Ordering::SeqCst);
                        assert_ne!(job.shard_index, 1, "a handler bug");
                        Ok(())
                    }
                })
                .await
            }
        });
        let letter = letters.next().await.unwrap();
        assert_eq!(letter.message.source_topic, Topic::ShardJobs.name());
        assert_eq!(&letter.message.key[..], b"b/1");
        assert!(letter.message.reason.contains("a handler bug"), "{}", letter.message.reason);
        // Long past any redelivery delay: nothing comes back.
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
        shutdown.cancel();
        running.await.unwrap().unwrap();
        let calls: Vec<u32> = calls.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        assert_eq!(calls, [1, 1, 1], "each message handled once, the panicking one included");
    }

    /// A handler whose output is over the bus's record limit gets the same refusal on every
    /// retry: its message is dead-lettered once instead of being retried for ever.
    #[tokio::test(start_paused = true)]
    async fn a_record_too_large_to_publish_is_dead_lettered_not_retried() {
        let bus = EmbeddedBus::new(EmbeddedConfig::default());
        let mut letters = bus.consume::<DeadLetter>("reader").unwrap();
        let job = ShardJob { broadcast_id: "b".into(), shard_index: 7, ..ShardJob::default() };
        bus.publish(&job, &MessageContext::default()).await.unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let (shutdown, seen) = (CancellationToken::new(), Arc::clone(&calls));
        let running = tokio::spawn({
            let (bus, shutdown) = (bus.clone(), shutdown.clone());
            async move {
                consume::<_, ShardJob, _, _>(&bus, "test", 1, &shutdown, move |_, _, _| {
                    let seen = Arc::clone(&seen);
                    async move {
                        seen.fetch_add(1, Ordering::SeqCst);
                        Err(pushfan_bus::BusError::TooLarge { topic: Topic::Deliveries, bytes: 5 << 20 }
                            .into())
                    }
                })
                .await
            }
        });
        // Virtual time: a retrying loop would back off for ever and never dead-letter.
        let letter = tokio::time::timeout(std::time::Duration::from_secs(600), letters.next())
            .await
            .expect("the message is dead-lettered")
            .unwrap();
        assert_eq!(&letter.message.key[..], b"b/7");
        assert!(letter.message.reason.contains("size limit"), "{}", letter.message.reason);
        shutdown.cancel();
        running.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "handled once, not retried");
    }
}
