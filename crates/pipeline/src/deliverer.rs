//! The gateway role's loop: delivery batches in, HTTP requests out, results on the bus.
//!
//! Subscriptions the push service calls gone (404/410) are deleted from the store before the
//! batch's results are sent, so "pruned" in a broadcast's counts means deleted.
//!
//! A batch (a store page) holds subscribers of every push service. When all it has left waits
//! on a throttling one (or on retry backoffs), it parks: it gives its place among
//! `concurrent_batches` to the next batch until its earliest wait ends, so one origin's
//! `Retry-After` does not hold back the others. Its ack, and so the at-least-once contract,
//! waits with it.

use std::pin::pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use pushfan_bus::messages::{DeliveryBatch, DeliveryResultBatch, OutcomeCounts, Rejection};
use pushfan_bus::{Bus, MessageContext};
use pushfan_gateway::{Delivery, FinalOutcome, Message, Pending, Progress, Report};
use pushfan_store::{DeliveryOutcome, DeliveryResult, SubscriptionId, UnixSeconds, VapidKeyId};
use pushfan_webpush::Endpoint;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::plan::{self, PlanError};
use crate::{consume, groups, HandleError, Pipeline, PipelineError, Slot};

/// Delivers batches until `shutdown`.
pub async fn run<B: Bus>(pipeline: Pipeline<B>, shutdown: CancellationToken) -> Result<(), PipelineError> {
    let bus = pipeline.bus.clone();
    let concurrency = pipeline.config.concurrent_batches;
    let parking = Arc::new(Semaphore::new(pipeline.config.parked_batches));
    consume::<B, DeliveryBatch, _, _>(
        &bus,
        groups::DELIVERER,
        concurrency,
        &shutdown,
        move |batch, context, slot| {
            let pipeline = pipeline.clone();
            let parking = Arc::clone(&parking);
            async move {
                let span = tracing::info_span!(
                    "deliver_batch",
                    broadcast = %batch.broadcast_id,
                    shard = batch.shard_index,
                    batch = batch.batch_seq,
                    deliveries = batch.deliveries.len()
                );
                deliver_batch(&pipeline, batch, &context, &Waiter { slot, parking }).instrument(span).await
            }
        },
    )
    .await
}

/// How a batch waits when every delivery it has left waits on a paused push service or a retry
/// backoff: parked, its place handed to the next batch, so a throttling origin holds back only
/// its own deliveries. At most `parked_batches` park at once (each holds its whole batch in
/// memory); past that a waiting batch keeps its place, and the loop takes no new batches until
/// one frees up, as before.
struct Waiter {
    slot: Slot,
    parking: Arc<Semaphore>,
}

impl Waiter {
    async fn wait_until(&self, ready_at: Instant) {
        let Ok(permit) = Arc::clone(&self.parking).try_acquire_owned() else {
            tokio::time::sleep_until(ready_at).await;
            return;
        };
        let parked = Parked::new(permit);
        self.slot.release();
        tokio::time::sleep_until(ready_at).await;
        // Still parked (in memory, not working) until a place is free again.
        self.slot.reacquire().await;
        drop(parked);
    }
}

/// A parked batch's claim on `parked_batches`, counted in `pushfan_deliverer_parked_batches`
/// for as long as it lives (a batch dropped at shutdown included).
struct Parked {
    _permit: OwnedSemaphorePermit,
    gauge: metrics::Gauge,
}

impl Parked {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        let gauge = metrics::gauge!("pushfan_deliverer_parked_batches");
        gauge.increment(1.0);
        Self { _permit: permit, gauge }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Sends every delivery through the gateway, in rounds: a round sends whatever may go now and
/// hands back what has to wait; between rounds the batch waits for the earliest of those.
async fn send_all(
    pipeline: &Pipeline<impl Bus>,
    message: &Message,
    mut pending: Vec<Pending<SubscriptionId>>,
    waiter: &Waiter,
) -> Vec<Report<SubscriptionId>> {
    let mut reports = Vec::with_capacity(pending.len());
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
        waiter.wait_until(ready_at).await;
        pending = waiting;
    }
}

async fn deliver_batch<B: Bus>(
    pipeline: &Pipeline<B>,
    batch: Arc<DeliveryBatch>,
    context: &MessageContext,
    waiter: &Waiter,
) -> Result<(), HandleError> {
    let (tenant, _) = plan::identity(&batch.tenant, &batch.broadcast_id)?;
    let key = batch.vapid_key_id.parse::<u32>().ok().map(VapidKeyId);
    let Some(vapid) = key.and_then(|key| pipeline.keyring.get(key)) else {
        let (counts, rejections) =
            plan::refuse_batch(&batch, &format!("unknown VAPID key id {:?}", batch.vapid_key_id));
        return send_results(pipeline, &batch, counts, Vec::new(), rejections, context).await;
    };
    let message = Message {
        options: plan::push_options(batch.options.as_ref())?,
        expires_at: plan::system_time(batch.expires_at_ms),
        vapid: Arc::clone(vapid),
    };

    let mut refused: Vec<Rejection> = Vec::new();
    let mut deliveries = Vec::with_capacity(batch.deliveries.len());
    for on_bus in &batch.deliveries {
        let id = SubscriptionId::parse_hex(&on_bus.subscription_id)
            .map_err(|e| PlanError::Invalid { field: "subscription_id", reason: e.to_string() })?;
        match Endpoint::from_serialized(on_bus.endpoint.as_str(), pipeline.config.endpoint_policy) {
            Ok(endpoint) => {
                let delivery = Delivery { tag: id, endpoint, push: plan::encrypted_push(on_bus)? };
                deliveries.push(Pending::from(delivery));
            }
            Err(error) => plan::add_rejection(&mut refused, 0, &format!("endpoint refused: {error}"), 1),
        }
    }

    let reports = send_all(pipeline, &message, deliveries, waiter).await;
    let (mut counts, gone, mut rejections) = plan::tally(&reports);
    for refusal in refused {
        counts.rejected += refusal.count;
        plan::add_rejection(&mut rejections, refusal.http_status, &refusal.reason, refusal.count);
    }
    if !gone.is_empty() {
        counts.pruned = pipeline.store.remove(&tenant, &gone).await? as u64;
    }
    if pipeline.config.record_outcomes {
        let outcomes: Vec<DeliveryOutcome> = reports
            .iter()
            .filter_map(|report| {
                let result = match report.outcome {
                    FinalOutcome::Accepted => DeliveryResult::Delivered,
                    FinalOutcome::FailedAfterRetries { .. } | FinalOutcome::Expired => DeliveryResult::Failed,
                    FinalOutcome::Gone | FinalOutcome::Rejected { .. } => return None,
                };
                Some(DeliveryOutcome { id: report.tag, result })
            })
            .collect();
        let now = UnixSeconds::from_system_time(SystemTime::now());
        pipeline.store.record_outcomes(&tenant, &outcomes, now).await?;
    }
    let gone = gone.iter().map(ToString::to_string).collect();
    send_results(pipeline, &batch, counts, gone, rejections, context).await
}

async fn send_results<B: Bus>(
    pipeline: &Pipeline<B>,
    batch: &DeliveryBatch,
    counts: OutcomeCounts,
    gone_subscription_ids: Vec<String>,
    rejections: Vec<Rejection>,
    context: &MessageContext,
) -> Result<(), HandleError> {
    let results = DeliveryResultBatch {
        broadcast_id: batch.broadcast_id.clone(),
        tenant: batch.tenant.clone(),
        shard_index: batch.shard_index,
        batch_seq: batch.batch_seq,
        counts: Some(counts),
        gone_subscription_ids,
        rejections,
        page_counts: batch.page_counts,
    };
    pipeline.bus.publish(&results, context).await?;
    Ok(())
}
