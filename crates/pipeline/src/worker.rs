//! The worker role: the planner turns publish requests into shard jobs, the encryptor turns a
//! shard job into delivery batches, page by page.
//!
//! A shard job survives its worker's death: after each page is handed on, the encryptor saves
//! the scan cursor in the ledger (no cursor after the last page), and a redelivered job resumes
//! from there, or only marks its shard done. At most the page in flight is encrypted and sent
//! twice; its counts still add once (ledger steps).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::try_join_all;
use pushfan_bus::messages::{DeliveryBatch, PageCounts, PublishRequest, ShardJob};
use pushfan_bus::{Bus, MessageContext};
use pushfan_store::ledger::{BroadcastCounts, ProgressDelta, ShardCheckpoint};
use pushfan_store::{ContentEncodings, ScanCursor, ShardId, Subscription, UnixSeconds, VapidKeyId};
use pushfan_webpush::batch::{encrypt_batch, Recipient};
use pushfan_webpush::{ContentEncoding, EncryptError, EncryptedPush, Padding, SubscriptionKeys};
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use crate::plan::{self, JobTarget, PlanError};
use crate::{consume, groups, HandleError, Pipeline, PipelineError};

/// Expands publish requests into shard jobs until `shutdown`.
pub async fn run_planner<B: Bus>(
    pipeline: Pipeline<B>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let bus = pipeline.bus.clone();
    consume::<B, PublishRequest, _, _>(&bus, groups::PLANNER, 4, &shutdown, move |request, context, _| {
        let pipeline = pipeline.clone();
        async move { plan_broadcast(&pipeline, &request, &context).await }
    })
    .await
}

async fn plan_broadcast<B: Bus>(
    pipeline: &Pipeline<B>,
    request: &PublishRequest,
    context: &MessageContext,
) -> Result<(), HandleError> {
    let (tenant, broadcast) = plan::identity(&request.tenant, &request.broadcast_id)?;
    let jobs = plan::shard_jobs(request, pipeline.store.shard_count())?;
    let span = tracing::info_span!("plan", %broadcast, shards = jobs.len());
    async {
        let created = UnixSeconds::from_system_time(plan::system_time(request.created_at_ms));
        pipeline.ledger.create_broadcast(&tenant, &broadcast, jobs.len() as u64, created).await?;
        try_join_all(jobs.iter().map(|job| pipeline.bus.publish(job, context))).await?;
        metrics::counter!("pushfan_worker_shard_jobs_total").increment(jobs.len() as u64);
        info!("broadcast planned");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Encrypts shard jobs into delivery batches until `shutdown`.
pub async fn run_encryptor<B: Bus>(
    pipeline: Pipeline<B>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let bus = pipeline.bus.clone();
    let concurrency = pipeline.config.concurrent_shard_jobs;
    consume::<B, ShardJob, _, _>(&bus, groups::ENCRYPTOR, concurrency, &shutdown, move |job, context, _| {
        let pipeline = pipeline.clone();
        async move {
            let span =
                tracing::info_span!("encrypt_shard", broadcast = %job.broadcast_id, shard = job.shard_index);
            encrypt_shard(&pipeline, job, &context).instrument(span).await
        }
    })
    .await
}

async fn encrypt_shard<B: Bus>(
    pipeline: &Pipeline<B>,
    job: Arc<ShardJob>,
    context: &MessageContext,
) -> Result<(), HandleError> {
    let (tenant, broadcast) = plan::identity(&job.tenant, &job.broadcast_id)?;
    let shards = pipeline.store.shard_count();
    if job.shard_count != u32::from(shards.get()) {
        return Err(PlanError::Invalid {
            field: "shard_count",
            reason: format!("job was planned for {} shards, the store has {}", job.shard_count, shards.get()),
        }
        .into());
    }
    let shard = ShardId(job.shard_index as u16);
    let padded = !matches!(pipeline.config.padding, Padding::None);
    let page_size = plan::page_size(
        pipeline.config.page_size,
        job.payload.len(),
        padded,
        pipeline.bus.max_record_bytes(),
    );
    let pages = Pages { pipeline, job: &job, payload: job.payload.clone(), context };
    let checkpoint = pipeline.ledger.load_checkpoint(&tenant, &broadcast, shard).await?;
    // `None`: every page was handed on before, by this job's earlier delivery.
    let (mut cursor, mut page) = checkpoint.map_or((Some(ScanCursor::START), 0), |c| (c.cursor, c.next_page));
    let target = plan::job_target(&job)?;
    while let Some(at) = cursor {
        let subscriptions = match &target {
            JobTarget::Subscriptions(ids) => {
                cursor = None;
                let found = try_join_all(ids.iter().map(|id| pipeline.store.get(&tenant, *id))).await?;
                found.into_iter().flatten().collect()
            }
            JobTarget::Audience(audience) => {
                let scanned = pipeline.store.scan_shard(&tenant, audience, shard, at, page_size).await?;
                cursor = scanned.next;
                scanned.subscriptions
            }
        };
        let step = pages.hand_on(page, subscriptions).await?;
        let checkpoint = ShardCheckpoint { cursor, next_page: page + 1 };
        // The page's step and the checkpoint past it are one write.
        match step {
            Some(delta) => {
                let step = plan::page_step(job.shard_index, page);
                pipeline
                    .ledger
                    .add_progress_with_checkpoint(&tenant, &broadcast, &step, &delta, shard, checkpoint)
                    .await?;
            }
            None => pipeline.ledger.save_checkpoint(&tenant, &broadcast, shard, checkpoint).await?,
        }
        page += 1;
    }
    let done = ProgressDelta {
        counts: BroadcastCounts { shards_done: 1, ..Default::default() },
        ..Default::default()
    };
    pipeline.ledger.add_progress(&tenant, &broadcast, &plan::shard_done_step(job.shard_index), &done).await?;
    Ok(())
}

/// Encrypts pages of one shard job and hands them on.
struct Pages<'a, B: Bus> {
    pipeline: &'a Pipeline<B>,
    job: &'a ShardJob,
    payload: Bytes,
    context: &'a MessageContext,
}

impl<B: Bus> Pages<'_, B> {
    /// Encrypts page `page` on the rayon pool and sends one delivery batch per VAPID key; returns
    /// the page's ledger step (`None` for an empty page). The page's counts travel with its
    /// batches (see `PageCounts`); only a page that sends nothing is counted in its step.
    async fn hand_on(
        &self,
        page: u32,
        subscriptions: Vec<Subscription>,
    ) -> Result<Option<ProgressDelta>, HandleError> {
        if subscriptions.is_empty() {
            return Ok(None);
        }
        let job = self.job;
        let targeted = subscriptions.len() as u64;
        let (subscriptions, gone, pruned) = self.prune_expired(subscriptions).await?;
        let mut counts = BroadcastCounts { targeted, gone, pruned, ..Default::default() };
        let live = targeted - gone;
        let ttl = job.options.as_ref().map_or(0, |o| o.ttl_seconds);
        if live == 0 {
            // Every subscription of the page had expired: the page step counts them.
        } else if ttl > 0 && SystemTime::now() >= plan::system_time(job.expires_at_ms) {
            // TTL 0 means "now or never": the gateway tries once. Any other TTL that has run out
            // would only be dropped by the push service.
            counts.expired = live;
            metrics::counter!("pushfan_worker_expired_total").increment(live);
        } else {
            let signing_key = plan::signing_key(job)?;
            let (subscriptions, results) = self.encrypt(subscriptions).await;
            let mut by_key: BTreeMap<VapidKeyId, Vec<_>> = BTreeMap::new();
            for (subscription, result) in subscriptions.into_iter().zip(results) {
                let key = signing_key.unwrap_or(subscription.vapid_key);
                match result {
                    Ok(push) => by_key.entry(key).or_default().push(plan::delivery(
                        subscription.id,
                        subscription.endpoint.as_str(),
                        push,
                    )),
                    Err(_) => counts.encrypt_failed += 1,
                }
            }
            if by_key.len() > plan::MAX_KEYS_PER_PAGE {
                return Err(PlanError::Invalid {
                    field: "vapid_key",
                    reason: format!(
                        "one page mixes {} VAPID keys; at most {}",
                        by_key.len(),
                        plan::MAX_KEYS_PER_PAGE
                    ),
                }
                .into());
            }
            let encrypt_failed = counts.encrypt_failed;
            metrics::counter!("pushfan_worker_encrypted_total").increment(live - encrypt_failed);
            metrics::counter!("pushfan_worker_encrypt_failed_total").increment(encrypt_failed);
            let batches: Vec<DeliveryBatch> = by_key
                .into_iter()
                .enumerate()
                .map(|(group, (key, deliveries))| {
                    let encrypted = deliveries.len() as u64;
                    // The first batch also carries the page's encryption failures and expired
                    // subscriptions.
                    let first = group == 0;
                    let failed_here = if first { encrypt_failed } else { 0 };
                    let (gone_here, pruned_here) = if first { (gone, pruned) } else { (0, 0) };
                    DeliveryBatch {
                        broadcast_id: job.broadcast_id.clone(),
                        tenant: job.tenant.clone(),
                        options: job.options.clone(),
                        vapid_key_id: key.0.to_string(),
                        expires_at_ms: job.expires_at_ms,
                        deliveries,
                        shard_index: job.shard_index,
                        batch_seq: plan::batch_seq(page, group),
                        page_counts: Some(PageCounts {
                            targeted: encrypted + failed_here + gone_here,
                            encrypted,
                            encrypt_failed: failed_here,
                            gone: gone_here,
                            pruned: pruned_here,
                        }),
                    }
                })
                .collect();
            if !batches.is_empty() {
                try_join_all(batches.iter().map(|batch| self.pipeline.bus.publish(batch, self.context)))
                    .await?;
                counts = BroadcastCounts {
                    handed_on: live - encrypt_failed,
                    batches_sent: batches.len() as u64,
                    ..Default::default()
                };
            }
        }
        Ok(Some(ProgressDelta { counts, ..Default::default() }))
    }

    /// Splits off the subscriptions whose `expirationTime` has passed and deletes them: the push
    /// service has expired them, so nothing sent could arrive. Returns the rest, how many had
    /// expired, and how many of those the store still held. The deletion comes before the
    /// hand-on, so a redone page no longer holds them: a crash in between loses their count,
    /// never a push.
    async fn prune_expired(
        &self,
        subscriptions: Vec<Subscription>,
    ) -> Result<(Vec<Subscription>, u64, u64), HandleError> {
        let now = SystemTime::now();
        if !subscriptions.iter().any(|s| s.is_expired(now)) {
            return Ok((subscriptions, 0, 0));
        }
        let (expired, live): (Vec<_>, Vec<_>) = subscriptions.into_iter().partition(|s| s.is_expired(now));
        let ids: Vec<_> = expired.iter().map(|s| s.id).collect();
        let tenant = &expired[0].tenant;
        let pruned = self.pipeline.store.remove(tenant, &ids).await? as u64;
        metrics::counter!("pushfan_worker_subscriptions_expired_total").increment(ids.len() as u64);
        Ok((live, ids.len() as u64, pruned))
    }

    /// Runs the batch encryption on rayon's pool so the async threads never block on crypto.
    async fn encrypt(
        &self,
        subscriptions: Vec<Subscription>,
    ) -> (Vec<Subscription>, Vec<Result<EncryptedPush, EncryptError>>) {
        let (done, result) = tokio::sync::oneshot::channel();
        let payload = self.payload.clone();
        let config = self.pipeline.config.clone();
        rayon::spawn(move || {
            let recipients: Vec<Stored<'_>> = subscriptions.iter().map(Stored).collect();
            let results = encrypt_batch(config.backend, &recipients, &payload, &config.padding);
            drop(recipients);
            // The receiver only goes away if the shard job was abandoned; nothing to report to.
            let _ = done.send((subscriptions, results));
        });
        result.await.expect("the encryption task does not panic")
    }
}

/// A stored subscription as the crypto core sees it.
struct Stored<'a>(&'a Subscription);

impl Recipient for Stored<'_> {
    fn keys(&self) -> &SubscriptionKeys {
        &self.0.keys
    }

    fn encoding(&self) -> ContentEncoding {
        if self.0.encodings.contains(ContentEncodings::AES128GCM)
            || self.0.encodings == ContentEncodings::NONE
        {
            ContentEncoding::Aes128gcm
        } else {
            ContentEncoding::Aesgcm
        }
    }
}
