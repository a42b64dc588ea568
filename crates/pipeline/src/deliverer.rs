//! The gateway role's loop: delivery batches in, HTTP requests out, results on the bus.
//!
//! Subscriptions the push service calls gone (404/410) are deleted from the store before the
//! batch's results are sent, so "pruned" in a broadcast's counts means deleted.
//!
//! A batch (a store page) holds subscribers of every push service. When all it has left waits
//! on a throttling one (or on retry backoffs), it parks: it copies the bodies of the deliveries
//! still waiting out of the page, so the page's buffer is freed, and gives its place among
//! `concurrent_batches` to the next batch, so one origin's `Retry-After` does not hold back the
//! others. What parks is bounded by the bytes of those
//! deliveries (`parked_bytes`), not by whole pages. Its ack, and so the at-least-once contract,
//! waits with it; it retries its own store and bus steps, so a transient failure after sending
//! neither sends again nor needs the page.

use std::pin::pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use pushfan_bus::messages::{DeliveryBatch, DeliveryResultBatch, OutcomeCounts};
use pushfan_bus::{Bus, MessageContext};
use pushfan_gateway::{Delivery, Message, Pending, Progress, Report};
use pushfan_store::ledger::BroadcastId;
use pushfan_store::{
    DeliveryOutcome, DeliveryResult, ScanStamp, SubscriptionId, TenantId, UnixSeconds, VapidKeyId,
};
use pushfan_webpush::failure::Summary;
use pushfan_webpush::Endpoint;
use pushfan_webpush::{FailureClass, SubscriptionError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::plan::{self, PlanError};
use crate::{consume_owned, groups, retrying, HandleError, Pipeline, PipelineError, Slot};

/// Delivers batches until `shutdown`.
pub async fn run<B: Bus>(pipeline: Pipeline<B>, shutdown: CancellationToken) -> Result<(), PipelineError> {
    let bus = pipeline.bus.clone();
    let concurrency = pipeline.config.concurrent_batches;
    // A bound past what a semaphore counts is no bound anyone could fill.
    let parking = Arc::new(Semaphore::new(pipeline.config.parked_bytes.min(Semaphore::MAX_PERMITS)));
    consume_owned::<B, DeliveryBatch, _, _>(
        &bus,
        groups::DELIVERER,
        concurrency,
        &shutdown,
        move |batch, context, slot| {
            let pipeline = pipeline.clone();
            let parking = Arc::clone(&parking);
            async move {
                let span = batch_span(
                    &batch.broadcast_id,
                    batch.shard_index,
                    batch.batch_seq,
                    batch.deliveries.len(),
                );
                let mut waiter = Waiter { slot, parking, claim: None };
                deliver_batch(&pipeline, batch, &context, &mut waiter).instrument(span).await
            }
        },
    )
    .await
}

/// The span one delivery batch is sent in, from the bus or from the encryptor.
pub(crate) fn batch_span(broadcast: &str, shard: u32, batch_seq: u32, deliveries: usize) -> tracing::Span {
    tracing::info_span!("deliver_batch", broadcast, shard, batch = batch_seq, deliveries)
}

/// How a batch waits when every delivery it has left waits on a paused push service or a retry
/// backoff: parked, its place handed to the next batch until its sending is over, so a
/// throttling origin holds back only its own deliveries. Parking first claims the waiting deliveries' bytes from
/// `parked_bytes` and copies their bodies out of the page; without room a waiting batch keeps
/// its place, and the loop takes no new batches until one frees up, as before.
pub(crate) struct Waiter {
    pub(crate) slot: Slot,
    parking: Arc<Semaphore>,
    /// Held from the first park until the batch is done, shrunk as its deliveries finish.
    claim: Option<Claim>,
}

impl Waiter {
    /// A waiter for a batch holding `slot`, parking within `parking`'s bytes.
    pub(crate) fn new(slot: Slot, parking: Arc<Semaphore>) -> Self {
        Self { slot, parking, claim: None }
    }

    async fn wait_until(&mut self, ready_at: Instant, waiting: &mut [Pending<SubscriptionId>]) {
        let bytes: usize = waiting.iter().map(parked_bytes).sum();
        match &mut self.claim {
            // Every delivery still waiting was copied out when the claim was taken.
            Some(claim) => claim.shrink_to(bytes),
            None => {
                let permit = u32::try_from(bytes)
                    .ok()
                    .and_then(|bytes| Arc::clone(&self.parking).try_acquire_many_owned(bytes).ok());
                let Some(permit) = permit else {
                    tokio::time::sleep_until(ready_at).await;
                    return;
                };
                // The bodies are slices of the page: copied, the page's buffer can go.
                for pending in waiting.iter_mut() {
                    let body = &mut pending.delivery_mut().push.body;
                    *body = Bytes::copy_from_slice(body);
                }
                self.claim = Some(Claim::new(permit));
            }
        }
        // The claim bounds what a parked batch holds from now on, so it sends without a place:
        // woken together after a pause, parked batches all send at once (the origin's in-flight
        // bound applies) instead of queueing for `concurrent_batches` places one round each.
        self.slot.release();
        tokio::time::sleep_until(ready_at).await;
    }
}

/// What a parked delivery keeps in memory: its body, its endpoint and its place in the list.
fn parked_bytes(pending: &Pending<SubscriptionId>) -> usize {
    let delivery = pending.delivery();
    delivery.push.body.len()
        + delivery.endpoint.as_str().len()
        + std::mem::size_of::<Pending<SubscriptionId>>()
}

/// A batch's claim on `parked_bytes`, counted in `pushfan_deliverer_parked_batches` and
/// `pushfan_deliverer_parked_bytes` for as long as it lives (a batch dropped at shutdown
/// included).
struct Claim {
    permit: OwnedSemaphorePermit,
    batches: metrics::Gauge,
    bytes: metrics::Gauge,
}

impl Claim {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        let batches = metrics::gauge!("pushfan_deliverer_parked_batches");
        let bytes = metrics::gauge!("pushfan_deliverer_parked_bytes");
        batches.increment(1.0);
        bytes.increment(permit.num_permits() as f64);
        Self { permit, batches, bytes }
    }

    /// Gives back what the deliveries that finished since held.
    fn shrink_to(&mut self, bytes: usize) {
        let freed = self.permit.num_permits().saturating_sub(bytes);
        if let Some(freed) = self.permit.split(freed) {
            self.bytes.decrement(freed.num_permits() as f64);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.batches.decrement(1.0);
        self.bytes.decrement(self.permit.num_permits() as f64);
    }
}

/// Sends every delivery through the gateway, in rounds: a round sends whatever may go now and
/// hands back what has to wait; between rounds the batch waits for the earliest of those, and
/// before it does, the results reached so far go to the ledger as the batch's provisional
/// snapshot, so a throttling push service holds back only its own deliveries' counts.
async fn send_all(
    pipeline: &Pipeline<impl Bus>,
    message: &Message,
    mut pending: Vec<Pending<SubscriptionId>>,
    waiter: &mut Waiter,
    snapshot: &Snapshot<'_>,
) -> Vec<Report<SubscriptionId>> {
    let mut reports = Vec::with_capacity(pending.len());
    let mut snapshotted = 0;
    loop {
        let mut waiting = Vec::new();
        let mut round = pin!(pipeline.gateway.send_ready(message, pending));
        while let Some(progress) = round.next().await {
            match progress {
                Progress::Done(report) => reports.push(report),
                Progress::Waiting(delivery) => waiting.push(delivery),
            }
        }
        let Some(ready_at) = waiting.iter().filter_map(Pending::ready_at).min() else {
            return reports;
        };
        if reports.len() > snapshotted {
            snapshotted = reports.len();
            snapshot.write(pipeline, &reports).await;
        }
        waiter.wait_until(ready_at, &mut waiting).await;
        pending = waiting;
    }
}

async fn deliver_batch<B: Bus>(
    pipeline: &Pipeline<B>,
    batch: DeliveryBatch,
    context: &MessageContext,
    waiter: &mut Waiter,
) -> Result<(), PlanError> {
    let (tenant, _) = plan::identity(&batch.tenant, &batch.broadcast_id)?;
    let key = batch.vapid_key_id.parse::<u32>().ok().map(VapidKeyId);
    let Some(vapid) = key.and_then(|key| pipeline.keyring.get(key)) else {
        let reason = format!("unknown VAPID key id {:?}", batch.vapid_key_id);
        let count = batch.deliveries.len() as u64;
        return refuse(pipeline, results_header(batch), count, &reason, context, &waiter.slot).await;
    };
    let message = Message {
        options: plan::push_options(batch.options.as_ref())?,
        expires_at: plan::system_time(batch.expires_at_ms),
        vapid: Arc::clone(vapid),
    };

    let mut refused = Vec::new();
    let mut deliveries = Vec::with_capacity(batch.deliveries.len());
    for on_bus in &batch.deliveries {
        let id = SubscriptionId::parse_hex(&on_bus.subscription_id)
            .map_err(|e| PlanError::Invalid { field: "subscription_id", reason: e.to_string() })?;
        match Endpoint::from_serialized(on_bus.endpoint.as_str(), &pipeline.config.endpoint_policy) {
            Ok(endpoint) => {
                let delivery = Delivery { tag: id, endpoint, push: plan::encrypted_push(on_bus)? };
                deliveries.push(Pending::from(delivery));
            }
            Err(error) => refused.push(Refused::new(id, &error)),
        }
    }
    // Only the results' header is needed from here on: the page is held by the deliveries'
    // bodies alone, and a parked batch copies out those it keeps.
    let batch = Batch { tenant, header: results_header(batch), deliveries, refused, scanned: None };
    deliver(pipeline, batch, &message, context, waiter).await
}

/// One delivery batch ready to send, off the bus or straight from the encryptor.
pub(crate) struct Batch {
    pub(crate) tenant: TenantId,
    /// The results message without its outcomes: the batch's identity and its page's counts.
    pub(crate) header: DeliveryResultBatch,
    pub(crate) deliveries: Vec<Pending<SubscriptionId>>,
    /// Deliveries refused before any was sent (an endpoint invalid or the policy forbids):
    /// counted and pruned, never sent.
    pub(crate) refused: Vec<Refused>,
    /// The stamp of the scan that found the batch's subscriptions, when this process scanned.
    pub(crate) scanned: Option<ScanStamp>,
}

/// A subscription whose stored endpoint can never be sent to: it fails validation (`invalid`) or
/// the egress policy (`refused_by_policy`). Counted in its class and pruned like a 410.
#[derive(Debug)]
pub(crate) struct Refused {
    id: SubscriptionId,
    class: FailureClass,
    reason: String,
}

impl Refused {
    pub(crate) fn new(id: SubscriptionId, error: &SubscriptionError) -> Self {
        Self { id, class: plan::endpoint_refusal(error), reason: error.to_string() }
    }
}

/// Where a batch's provisional snapshot goes: the ledger, directly, from whichever process
/// delivers (a snapshot replaces the last one, so it needs no bus step to count once).
pub(crate) struct Snapshot<'a> {
    tenant: &'a TenantId,
    header: &'a DeliveryResultBatch,
    refused: &'a [Refused],
}

impl Snapshot<'_> {
    /// Writes what `reports` (and the refused) reached as the batch's snapshot. A failure is
    /// only logged: the batch's results step counts everything anyway.
    async fn write(&self, pipeline: &Pipeline<impl Bus>, reports: &[Report<SubscriptionId>]) {
        let header = self.header;
        let Ok(broadcast) = BroadcastId::new(&header.broadcast_id) else { return };
        let (delivered, mut failures, _) = plan::tally(reports);
        for refused in self.refused {
            failures.add(refused.class, 1, "");
        }
        let delta = plan::snapshot(header.page_counts.unwrap_or_default(), delivered, &failures);
        let (partial, step) = (
            plan::partial_step(header.shard_index, header.batch_seq),
            plan::result_step(header.shard_index, header.batch_seq),
        );
        let seq = (reports.len() + self.refused.len()) as u64;
        if let Err(error) =
            pipeline.ledger.set_partial(self.tenant, &broadcast, &partial, &step, seq, &delta).await
        {
            tracing::warn!(%error, "could not write a batch's provisional results; they count when it ends");
        }
    }
}

/// Sends `batch`, prunes the subscriptions found gone, records outcomes and publishes the
/// results: when it returns, the batch is durably accounted for.
pub(crate) async fn deliver<B: Bus>(
    pipeline: &Pipeline<B>,
    batch: Batch,
    message: &Message,
    context: &MessageContext,
    waiter: &mut Waiter,
) -> Result<(), PlanError> {
    let Batch { tenant, header, deliveries, refused, scanned } = batch;
    let snapshot = Snapshot { tenant: &tenant, header: &header, refused: &refused };
    let reports = send_all(pipeline, message, deliveries, waiter, &snapshot).await;
    // A parked batch sent without a place; its store and bus steps take one again, so batches
    // woken by the same pause's end do not all write at once.
    let slot = &waiter.slot;
    slot.reacquire().await;
    let (delivered, mut failures, mut gone) = plan::tally(&reports);
    for refusal in refused {
        failures.add(refusal.class, 1, &refusal.reason);
        gone.push(refusal.id);
    }
    let mut counts = OutcomeCounts { delivered, pruned: 0 };
    if !gone.is_empty() {
        counts.pruned = retrying(groups::DELIVERER, slot, || async {
            Ok::<_, HandleError>(pipeline.store.remove(&tenant, &gone).await? as u64)
        })
        .await?;
    }
    if pipeline.config.record_outcomes {
        let outcomes: Vec<DeliveryOutcome> = reports
            .iter()
            .filter_map(|report| {
                // A refusal says nothing of the subscription's health, and the dead are pruned.
                let result = match report.outcome.class().map(FailureClass::summary) {
                    None => DeliveryResult::Delivered,
                    Some(Summary::Failed | Summary::Expired) => DeliveryResult::Failed,
                    Some(Summary::Gone | Summary::Rejected) => return None,
                };
                Some(DeliveryOutcome { id: report.tag, result })
            })
            .collect();
        let now = UnixSeconds::from_system_time(SystemTime::now());
        retrying(groups::DELIVERER, slot, || async {
            Ok::<_, HandleError>(pipeline.store.record_outcomes(&tenant, &outcomes, now, scanned).await?)
        })
        .await?;
    }
    let results = DeliveryResultBatch {
        counts: Some(counts),
        gone_subscription_ids: gone.iter().map(ToString::to_string).collect(),
        failures: failures.to_bus(),
        ..header
    };
    send_results(pipeline, &results, context, slot).await
}

/// Reports all `count` deliveries of a batch as `unauthorized` for `reason` (no key of this
/// deployment signs for them) without sending any, so the broadcast's counts still close.
pub(crate) async fn refuse<B: Bus>(
    pipeline: &Pipeline<B>,
    header: DeliveryResultBatch,
    count: u64,
    reason: &str,
    context: &MessageContext,
    slot: &Slot,
) -> Result<(), PlanError> {
    let failures = plan::refuse_batch(count, FailureClass::Unauthorized, reason);
    let results =
        DeliveryResultBatch { counts: Some(OutcomeCounts::default()), failures: failures.to_bus(), ..header };
    send_results(pipeline, &results, context, slot).await
}

/// The results message for `batch` without its outcomes, taking the batch's header fields
/// without copying them.
fn results_header(batch: DeliveryBatch) -> DeliveryResultBatch {
    DeliveryResultBatch {
        broadcast_id: batch.broadcast_id,
        tenant: batch.tenant,
        shard_index: batch.shard_index,
        batch_seq: batch.batch_seq,
        page_counts: batch.page_counts,
        ..DeliveryResultBatch::default()
    }
}

async fn send_results<B: Bus>(
    pipeline: &Pipeline<B>,
    results: &DeliveryResultBatch,
    context: &MessageContext,
    slot: &Slot,
) -> Result<(), PlanError> {
    retrying(groups::DELIVERER, slot, || async {
        Ok::<_, HandleError>(pipeline.bus.publish(results, context).await?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use pushfan_webpush::{ContentEncoding, EncryptedPush, EndpointPolicy};

    use super::*;

    fn pending(body: Bytes) -> Pending<SubscriptionId> {
        let endpoint = Endpoint::parse("https://push.example/send/abc", &EndpointPolicy::default()).unwrap();
        let push = EncryptedPush { body, encoding: ContentEncoding::Aes128gcm, aesgcm: None };
        Pending::from(Delivery { tag: SubscriptionId::from_bytes([1; SubscriptionId::LEN]), endpoint, push })
    }

    fn waiter(places: &Arc<Semaphore>, parked_bytes: usize) -> Waiter {
        let slot = Slot::new(Arc::clone(places), Arc::clone(places).try_acquire_owned().unwrap());
        Waiter { slot, parking: Arc::new(Semaphore::new(parked_bytes)), claim: None }
    }

    #[tokio::test]
    async fn parking_copies_the_waiting_bodies_out_of_the_page_and_gives_the_place_back() {
        let page = Bytes::from(vec![7u8; 4096]);
        let places = Arc::new(Semaphore::new(1));
        let mut waiter = waiter(&places, 1 << 20);
        let mut waiting = vec![pending(page.slice(0..100)), pending(page.slice(100..300))];
        waiter.wait_until(Instant::now(), &mut waiting).await;

        let page_range = page.as_ptr_range();
        for pending in &waiting {
            let body = &pending.delivery().push.body;
            assert!(!page_range.contains(&body.as_ptr()), "the body still points into the page");
            assert!(body.iter().all(|&b| b == 7));
        }
        assert_eq!(places.available_permits(), 1, "a parked batch gives its place back");
        let claimed: usize = waiting.iter().map(parked_bytes).sum();
        assert_eq!(waiter.parking.available_permits(), (1 << 20) - claimed);

        // One delivery finished: the next park gives back what it held.
        waiting.truncate(1);
        waiter.wait_until(Instant::now(), &mut waiting).await;
        assert_eq!(waiter.parking.available_permits(), (1 << 20) - parked_bytes(&waiting[0]));
        // The batch is done: the rest goes back too.
        let parking = Arc::clone(&waiter.parking);
        drop(waiter);
        assert_eq!(parking.available_permits(), 1 << 20);
    }

    #[tokio::test]
    async fn without_room_a_waiting_batch_keeps_its_place_and_its_page() {
        let page = Bytes::from(vec![7u8; 4096]);
        let places = Arc::new(Semaphore::new(1));
        let mut waiter = waiter(&places, 100);
        let mut waiting = vec![pending(page.slice(0..200))];
        waiter.wait_until(Instant::now(), &mut waiting).await;

        assert!(page.as_ptr_range().contains(&waiting[0].delivery().push.body.as_ptr()));
        assert_eq!(places.available_permits(), 0, "the batch still holds its place");
        assert_eq!(waiter.parking.available_permits(), 100);
        assert!(waiter.claim.is_none());
    }
}
