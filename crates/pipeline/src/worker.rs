//! The worker role: the planner turns publish requests into shard jobs, the encryptor turns a
//! shard job into delivery batches, page by page.
//!
//! A shard job survives its worker's death: after each page is handed on, the encryptor saves
//! the scan cursor in the ledger (no cursor after the last page), and a redelivered job resumes
//! from there, or only marks its shard done. With the direct hand-off a page is handed on once
//! its results are on the bus, several pages are in flight, and the cursor moves past a page only
//! when every page before it is done too ([`PageWindow`]). Only pages in flight are encrypted and
//! sent twice; their counts still add once (ledger steps).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::try_join_all;
use pushfan_bus::messages::{DeliveryBatch, DeliveryResultBatch, PageCounts, PublishRequest, ShardJob};
use pushfan_bus::{Bus, MessageContext};
use pushfan_gateway::{Delivery, Message, Pending};
use pushfan_store::ledger::{BroadcastCounts, BroadcastId, ProgressDelta, ShardCheckpoint};
use pushfan_store::{
    ContentEncodings, ScanCursor, ScanStamp, ShardId, Subscription, TenantId, UnixSeconds, VapidKeyId,
};
use pushfan_webpush::batch::{encrypt_batch, Recipient};
use pushfan_webpush::{ContentEncoding, EncryptError, EncryptedPush, Padding, SubscriptionKeys};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use crate::deliverer::{self, Batch, Waiter};
use crate::plan::{self, JobTarget, PageWindow, PlanError};
use crate::{consume, groups, retrying, HandOff, HandleError, Pipeline, PipelineError, Slot};

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
    let bounds = DeliveryBounds::new(&pipeline.config);
    consume::<B, ShardJob, _, _>(&bus, groups::ENCRYPTOR, concurrency, &shutdown, move |job, context, slot| {
        let (pipeline, bounds) = (pipeline.clone(), bounds.clone());
        async move {
            let span =
                tracing::info_span!("encrypt_shard", broadcast = %job.broadcast_id, shard = job.shard_index);
            encrypt_shard(&pipeline, &bounds, job, &context, &slot).instrument(span).await
        }
    })
    .await
}

/// What bounds the batches a direct hand-off delivers from this process, as `deliverer::run`'s
/// bound its own: `concurrent_batches` places, and `parked_bytes` for deliveries waiting on a
/// paused push service without a place.
#[derive(Clone, Debug)]
struct DeliveryBounds {
    places: Arc<Semaphore>,
    parking: Arc<Semaphore>,
}

impl DeliveryBounds {
    fn new(config: &crate::PipelineConfig) -> Self {
        Self {
            places: Arc::new(Semaphore::new(config.concurrent_batches.max(1))),
            parking: Arc::new(Semaphore::new(config.parked_bytes.min(Semaphore::MAX_PERMITS))),
        }
    }
}

async fn encrypt_shard<B: Bus>(
    pipeline: &Pipeline<B>,
    bounds: &DeliveryBounds,
    job: Arc<ShardJob>,
    context: &MessageContext,
    slot: &Slot,
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
    // A page handed on directly never becomes a bus record, so only the bus bounds its size.
    let max_batch_bytes = match pipeline.config.hand_off {
        HandOff::Direct => usize::MAX,
        HandOff::Bus => pipeline.bus.max_record_bytes(),
    };
    let page_size = plan::page_size(pipeline.config.page_size, job.payload.len(), padded, max_batch_bytes);
    let pages = Pages { pipeline, bounds, job: &job, tenant: &tenant, payload: job.payload.clone(), context };
    let checkpoint = pipeline.ledger.load_checkpoint(&tenant, &broadcast, shard).await?;
    // `None`: every page was handed on before, by this job's earlier delivery.
    let (mut cursor, mut page) = checkpoint.map_or((Some(ScanCursor::START), 0), |c| (c.cursor, c.next_page));
    let window = Arc::new(Mutex::new(PageWindow::new(ShardCheckpoint { cursor, next_page: page })));
    // Pages delivered from this process, each writing its own step when done; dropped (a job
    // abandoned at shutdown, or retried after a failure) they stop, and the checkpoint, which
    // never passed them, brings them back.
    let mut delivering = JoinSet::new();
    let target = plan::job_target(&job)?;
    while let Some(at) = cursor {
        let (subscriptions, scanned) = match &target {
            JobTarget::Subscriptions(ids) => {
                cursor = None;
                let found = try_join_all(ids.iter().map(|id| pipeline.store.get(&tenant, *id))).await?;
                (found.into_iter().flatten().collect(), None)
            }
            JobTarget::Audience(audience) => {
                let scanned = pipeline.store.scan_shard(&tenant, audience, shard, at, page_size).await?;
                cursor = scanned.next;
                (scanned.subscriptions, scanned.stamp)
            }
        };
        lock(&window).start(page, ShardCheckpoint { cursor, next_page: page + 1 });
        let step = PageStep {
            pipeline: pipeline.clone(),
            tenant: tenant.clone(),
            broadcast: broadcast.clone(),
            shard,
            page,
            window: Arc::clone(&window),
        };
        match pages.hand_on(page, subscriptions, scanned).await? {
            HandedOn::Done(delta) => step.record(delta.as_ref(), slot).await?,
            HandedOn::Delivering(batches, delta) => {
                let (pipeline, context) = (pipeline.clone(), context.clone());
                delivering.spawn(
                    async move {
                        let waiters = try_join_all(
                            batches.into_iter().map(|direct| direct.deliver(&pipeline, &context)),
                        )
                        .await?;
                        // The page's places are held until its step is written.
                        step.record(Some(&delta), &waiters[0].slot).await
                    }
                    .in_current_span(),
                );
            }
        }
        while let Some(finished) = delivering.try_join_next() {
            finished.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))?;
        }
        page += 1;
    }
    if !delivering.is_empty() {
        // The job's last pages are on the wire (or parked on a paused push service): let another
        // job encrypt meanwhile.
        slot.release();
        while let Some(finished) = delivering.join_next().await {
            finished.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))?;
        }
        slot.reacquire().await;
    }
    let done = ProgressDelta {
        counts: BroadcastCounts { shards_done: 1, ..Default::default() },
        ..Default::default()
    };
    pipeline.ledger.add_progress(&tenant, &broadcast, &plan::shard_done_step(job.shard_index), &done).await?;
    Ok(())
}

fn lock(window: &Mutex<PageWindow>) -> std::sync::MutexGuard<'_, PageWindow> {
    window.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes one page's ledger step once the page is handed on, with the checkpoint past every
/// page handed on before it.
struct PageStep<B: Bus> {
    pipeline: Pipeline<B>,
    tenant: TenantId,
    broadcast: BroadcastId,
    shard: ShardId,
    page: u32,
    window: Arc<Mutex<PageWindow>>,
}

impl<B: Bus> PageStep<B> {
    /// `delta` is `None` for a page that held nothing. Checkpoints never move back, so steps
    /// written out of order by pages finishing out of order leave the furthest one.
    async fn record(self, delta: Option<&ProgressDelta>, slot: &Slot) -> Result<(), PlanError> {
        let checkpoint = lock(&self.window).finish(self.page);
        let (ledger, tenant, broadcast) = (&self.pipeline.ledger, &self.tenant, &self.broadcast);
        retrying(groups::ENCRYPTOR, slot, || async {
            match delta {
                // The page's step and the checkpoint past it are one write.
                Some(delta) => {
                    let step = plan::page_step(u32::from(self.shard.0), self.page);
                    ledger
                        .add_progress_with_checkpoint(tenant, broadcast, &step, delta, self.shard, checkpoint)
                        .await?;
                }
                None => ledger.save_checkpoint(tenant, broadcast, self.shard, checkpoint).await?,
            }
            Ok::<_, HandleError>(())
        })
        .await
    }
}

/// What became of one page.
enum HandedOn {
    /// Handed on (to the bus, or nothing to send): the page's step, `None` for an empty page.
    Done(Option<ProgressDelta>),
    /// Its batches, to deliver from this process; then the page's step.
    Delivering(Vec<DirectBatch>, ProgressDelta),
}

/// One batch of a page handed on directly, with its place among this process's deliveries.
struct DirectBatch {
    batch: Batch,
    /// `None` when no key of this deployment signs the batch.
    message: Option<Message>,
    key: VapidKeyId,
    waiter: Waiter,
}

impl DirectBatch {
    /// Delivers the batch and publishes its results; returns its waiter, holding its place.
    async fn deliver<B: Bus>(
        self,
        pipeline: &Pipeline<B>,
        context: &MessageContext,
    ) -> Result<Waiter, PlanError> {
        let Self { batch, message, key, mut waiter } = self;
        let header = &batch.header;
        let span = deliverer::batch_span(
            &header.broadcast_id,
            header.shard_index,
            header.batch_seq,
            batch.deliveries.len(),
        );
        match message {
            Some(message) => {
                deliverer::deliver(pipeline, batch, &message, context, &mut waiter).instrument(span).await?
            }
            None => {
                let reason = format!("unknown VAPID key id {:?}", key.0.to_string());
                let count = (batch.deliveries.len() + batch.refused.len()) as u64;
                deliverer::refuse(pipeline, batch.header, count, &reason, context, &waiter.slot)
                    .instrument(span)
                    .await?
            }
        }
        Ok(waiter)
    }
}

/// Encrypts pages of one shard job and hands them on.
struct Pages<'a, B: Bus> {
    pipeline: &'a Pipeline<B>,
    bounds: &'a DeliveryBounds,
    job: &'a ShardJob,
    /// The job's tenant, validated.
    tenant: &'a TenantId,
    payload: Bytes,
    context: &'a MessageContext,
}

impl<B: Bus> Pages<'_, B> {
    /// Encrypts page `page` on the rayon pool and hands on one delivery batch per VAPID key: to
    /// the bus, or to this process's gateway (see [`HandOff`]). The page's counts travel with its
    /// batches (see `PageCounts`); only a page that sends nothing is counted in its step.
    async fn hand_on(
        &self,
        page: u32,
        subscriptions: Vec<Subscription>,
        scanned: Option<ScanStamp>,
    ) -> Result<HandedOn, HandleError> {
        if subscriptions.is_empty() {
            return Ok(HandedOn::Done(None));
        }
        let job = self.job;
        let targeted = subscriptions.len() as u64;
        let (subscriptions, gone, pruned) = self.prune_expired(subscriptions).await?;
        let mut counts = BroadcastCounts { targeted, gone, pruned, ..Default::default() };
        let live = targeted - gone;
        let ttl = job.options.as_ref().map_or(0, |o| o.ttl_seconds);
        if live == 0 {
            // Every subscription of the page had expired: the page step counts them.
            return Ok(HandedOn::Done(Some(ProgressDelta { counts, ..Default::default() })));
        }
        if ttl > 0 && SystemTime::now() >= plan::system_time(job.expires_at_ms) {
            // TTL 0 means "now or never": the gateway tries once. Any other TTL that has run out
            // would only be dropped by the push service.
            counts.expired = live;
            metrics::counter!("pushfan_worker_expired_total").increment(live);
            return Ok(HandedOn::Done(Some(ProgressDelta { counts, ..Default::default() })));
        }
        let signing_key = plan::signing_key(job)?;
        let (subscriptions, results) = self.encrypt(subscriptions).await;
        let mut by_key: BTreeMap<VapidKeyId, Vec<(Subscription, EncryptedPush)>> = BTreeMap::new();
        for (subscription, result) in subscriptions.into_iter().zip(results) {
            let key = signing_key.unwrap_or(subscription.vapid_key);
            match result {
                Ok(push) => by_key.entry(key).or_default().push((subscription, push)),
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
        if by_key.is_empty() {
            // Nothing encrypted: the page step counts the failures.
            return Ok(HandedOn::Done(Some(ProgressDelta { counts, ..Default::default() })));
        }
        // The first batch also carries the page's encryption failures and expired subscriptions.
        let page_counts = |group: usize, encrypted: u64| {
            let first = group == 0;
            let failed_here = if first { encrypt_failed } else { 0 };
            let (gone_here, pruned_here) = if first { (gone, pruned) } else { (0, 0) };
            PageCounts {
                targeted: encrypted + failed_here + gone_here,
                encrypted,
                encrypt_failed: failed_here,
                gone: gone_here,
                pruned: pruned_here,
            }
        };
        let delta = ProgressDelta {
            counts: BroadcastCounts {
                handed_on: live - encrypt_failed,
                batches_sent: by_key.len() as u64,
                ..Default::default()
            },
            ..Default::default()
        };
        let batches = by_key.into_iter().enumerate().map(|(group, (key, encrypted))| {
            (plan::batch_seq(page, group), key, page_counts(group, encrypted.len() as u64), encrypted)
        });
        match self.pipeline.config.hand_off {
            HandOff::Bus => {
                let batches: Vec<DeliveryBatch> = batches
                    .map(|(batch_seq, key, counts, encrypted)| {
                        self.bus_batch(batch_seq, key, counts, encrypted)
                    })
                    .collect();
                try_join_all(batches.iter().map(|batch| self.pipeline.bus.publish(batch, self.context)))
                    .await?;
                Ok(HandedOn::Done(Some(delta)))
            }
            HandOff::Direct => {
                let mut direct = Vec::new();
                for (batch_seq, key, counts, encrypted) in batches {
                    direct.push(self.direct_batch(batch_seq, key, counts, encrypted, scanned).await?);
                }
                Ok(HandedOn::Delivering(direct, delta))
            }
        }
    }

    /// One batch of a page, for the `deliveries` topic.
    fn bus_batch(
        &self,
        batch_seq: u32,
        key: VapidKeyId,
        page_counts: PageCounts,
        encrypted: Vec<(Subscription, EncryptedPush)>,
    ) -> DeliveryBatch {
        let job = self.job;
        DeliveryBatch {
            broadcast_id: job.broadcast_id.clone(),
            tenant: job.tenant.clone(),
            options: job.options.clone(),
            vapid_key_id: key.0.to_string(),
            expires_at_ms: job.expires_at_ms,
            page_counts: Some(page_counts),
            deliveries: encrypted
                .into_iter()
                .map(|(s, push)| plan::delivery(s.id, s.endpoint.as_str(), push))
                .collect(),
            shard_index: job.shard_index,
            batch_seq,
        }
    }

    /// One batch of a page, for this process's gateway, once it has its place among this
    /// process's deliveries (backpressure: the encryptor waits here).
    async fn direct_batch(
        &self,
        batch_seq: u32,
        key: VapidKeyId,
        page_counts: PageCounts,
        encrypted: Vec<(Subscription, EncryptedPush)>,
        scanned: Option<ScanStamp>,
    ) -> Result<DirectBatch, PlanError> {
        let job = self.job;
        let header = DeliveryResultBatch {
            broadcast_id: job.broadcast_id.clone(),
            tenant: job.tenant.clone(),
            shard_index: job.shard_index,
            batch_seq,
            page_counts: Some(page_counts),
            ..DeliveryResultBatch::default()
        };
        let mut batch = Batch {
            tenant: self.tenant.clone(),
            header,
            deliveries: Vec::with_capacity(encrypted.len()),
            refused: Vec::new(),
            scanned,
        };
        let policy = &self.pipeline.config.endpoint_policy;
        for (subscription, push) in encrypted {
            match subscription.endpoint.check(policy) {
                Ok(()) => batch.deliveries.push(Pending::from(Delivery {
                    tag: subscription.id,
                    endpoint: subscription.endpoint,
                    push,
                })),
                // Counted in its class and pruned by the batch, never sent.
                Err(error) => batch.refused.push(deliverer::Refused::new(subscription.id, &error)),
            }
        }
        let message = match self.pipeline.keyring.get(key) {
            Some(vapid) => Some(Message {
                options: plan::push_options(job.options.as_ref())?,
                expires_at: plan::system_time(job.expires_at_ms),
                vapid: Arc::clone(vapid),
            }),
            None => None,
        };
        let place = Arc::clone(&self.bounds.places).acquire_owned().await.expect("never closed");
        let waiter =
            Waiter::new(Slot::new(Arc::clone(&self.bounds.places), place), Arc::clone(&self.bounds.parking));
        Ok(DirectBatch { batch, message, key, waiter })
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
        let pruned = self.pipeline.store.remove(self.tenant, &ids).await? as u64;
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
