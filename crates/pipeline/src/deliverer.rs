//! The gateway role's loop: delivery batches in, HTTP requests out, results on the bus.
//!
//! Subscriptions the push service calls gone (404/410) are deleted from the store before the
//! batch's results are sent, so "pruned" in a broadcast's counts means deleted.

use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use pushfan_bus::messages::{DeliveryBatch, DeliveryResultBatch, OutcomeCounts, Rejection};
use pushfan_bus::{Bus, MessageContext};
use pushfan_gateway::{Delivery, FinalOutcome, Message};
use pushfan_store::{DeliveryOutcome, DeliveryResult, SubscriptionId, UnixSeconds, VapidKeyId};
use pushfan_webpush::Endpoint;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::plan::{self, PlanError};
use crate::{consume, groups, HandleError, Pipeline, PipelineError};

/// Delivers batches until `shutdown`.
pub async fn run<B: Bus>(pipeline: Pipeline<B>, shutdown: CancellationToken) -> Result<(), PipelineError> {
    let bus = pipeline.bus.clone();
    let concurrency = pipeline.config.concurrent_batches;
    consume::<B, DeliveryBatch, _, _>(
        &bus,
        groups::DELIVERER,
        concurrency,
        &shutdown,
        move |batch, context| {
            let pipeline = pipeline.clone();
            async move {
                let span = tracing::info_span!(
                    "deliver_batch",
                    broadcast = %batch.broadcast_id,
                    shard = batch.shard_index,
                    batch = batch.batch_seq,
                    deliveries = batch.deliveries.len()
                );
                deliver_batch(&pipeline, batch, &context).instrument(span).await
            }
        },
    )
    .await
}

async fn deliver_batch<B: Bus>(
    pipeline: &Pipeline<B>,
    batch: Arc<DeliveryBatch>,
    context: &MessageContext,
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
                deliveries.push(Delivery { tag: id, endpoint, push: plan::encrypted_push(on_bus)? })
            }
            Err(error) => plan::add_rejection(&mut refused, 0, &format!("endpoint refused: {error}"), 1),
        }
    }

    let reports: Vec<_> = pipeline.gateway.send_all(&message, deliveries).collect().await;
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
