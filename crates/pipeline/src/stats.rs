//! The stats loop: delivery results into the broadcast ledger, each batch's counted once.

use std::sync::Arc;

use pushfan_bus::messages::DeliveryResultBatch;
use pushfan_bus::Bus;
use tokio_util::sync::CancellationToken;

use crate::plan;
use crate::{consume, groups, HandleError, Pipeline, PipelineError};

/// Adds delivery results to the ledger until `shutdown`.
pub async fn run<B: Bus>(pipeline: Pipeline<B>, shutdown: CancellationToken) -> Result<(), PipelineError> {
    let bus = pipeline.bus.clone();
    consume::<B, DeliveryResultBatch, _, _>(&bus, groups::STATS, 8, &shutdown, move |results, _, _| {
        let pipeline = pipeline.clone();
        async move { record(&pipeline, &results).await }
    })
    .await
}

async fn record<B: Bus>(
    pipeline: &Pipeline<B>,
    results: &Arc<DeliveryResultBatch>,
) -> Result<(), HandleError> {
    let (tenant, broadcast) = plan::identity(&results.tenant, &results.broadcast_id)?;
    let delta = plan::results_progress(results);
    let step = plan::result_step(results.shard_index, results.batch_seq);
    pipeline.ledger.add_progress(&tenant, &broadcast, &step, &delta).await?;
    Ok(())
}
