//! The pipeline's pure decisions: how a publish splits into shard jobs, how bus messages map to
//! the standards core's types and back, and how delivery reports add up. No I/O.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pushfan_bus::messages::{
    self as bus, target, FailureCount, OutcomeCounts, PageCounts, PublishRequest, ShardJob,
};
use pushfan_gateway::{FinalOutcome, Report};
use pushfan_store::ledger::{BroadcastCounts, BroadcastId, ProgressDelta, ShardCheckpoint};
use pushfan_store::{Audience, ShardCount, ShardId, SubscriptionId, TenantId, Topic, VapidKeyId};
use pushfan_webpush::failure::{self, Summary};
use pushfan_webpush::{
    message, AesgcmParams, ContentEncoding, EncryptedPush, FailureClass, PushOptions, SubscriptionError,
    Urgency,
};

/// A bus message that breaks the pipeline's rules. Ingest validates everything it accepts, so
/// this means a bug or a foreign writer; the message is reported and skipped, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl ToString) -> PlanError {
    PlanError::Invalid { field, reason: reason.to_string() }
}

/// The VAPID key a publish asked to sign with (`PublishRequest.vapid_key_id`): `None` when it
/// left it to each subscription's own key.
pub fn signing_key(job: &ShardJob) -> Result<Option<VapidKeyId>, PlanError> {
    if job.vapid_key_id.is_empty() {
        return Ok(None);
    }
    job.vapid_key_id.parse().map(|id| Some(VapidKeyId(id))).map_err(|e| invalid("vapid_key_id", e))
}

/// Who a shard job sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobTarget {
    /// Named subscriptions (all in the job's shard).
    Subscriptions(Vec<SubscriptionId>),
    /// The members of a topic, or everyone.
    Audience(Audience),
}

/// A publish request's tenant and broadcast id, validated.
pub fn identity(tenant: &str, broadcast: &str) -> Result<(TenantId, BroadcastId), PlanError> {
    Ok((
        TenantId::new(tenant).map_err(|e| invalid("tenant", e))?,
        BroadcastId::new(broadcast).map_err(|e| invalid("broadcast_id", e))?,
    ))
}

/// Splits a publish into one job per shard that can hold any of its audience: every shard for
/// a topic or everyone, only the shards of the named ids for a list.
pub fn shard_jobs(request: &PublishRequest, shards: ShardCount) -> Result<Vec<ShardJob>, PlanError> {
    let ttl = request.options.as_ref().map_or(0, |o| o.ttl_seconds);
    let expires_at_ms = request.created_at_ms.saturating_add(i64::from(ttl) * 1000);
    let job = |shard: ShardId, target: bus::Target| ShardJob {
        broadcast_id: request.broadcast_id.clone(),
        tenant: request.tenant.clone(),
        target: Some(target),
        shard_index: u32::from(shard.0),
        shard_count: u32::from(shards.get()),
        payload: request.payload.clone(),
        options: request.options.clone(),
        vapid_key_id: request.vapid_key_id.clone(),
        created_at_ms: request.created_at_ms,
        expires_at_ms,
    };
    let target =
        request.target.as_ref().and_then(|t| t.kind.as_ref()).ok_or_else(|| invalid("target", "missing"))?;
    match target {
        target::Kind::Subscriptions(list) => {
            let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); usize::from(shards.get())];
            for hex in &list.ids {
                let id = SubscriptionId::parse_hex(hex).map_err(|e| invalid("target.subscriptions", e))?;
                by_shard[usize::from(shards.shard_of(&id).0)].push(hex.clone());
            }
            Ok(by_shard
                .into_iter()
                .enumerate()
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(shard, ids)| {
                    let kind = target::Kind::Subscriptions(bus::SubscriptionIds { ids });
                    job(ShardId(shard as u16), bus::Target { kind: Some(kind) })
                })
                .collect())
        }
        target::Kind::Topic(_) | target::Kind::Everyone(_) => {
            Ok(shards.all().map(|shard| job(shard, bus::Target { kind: Some(target.clone()) })).collect())
        }
    }
}

/// The job's target in store terms.
pub fn job_target(job: &ShardJob) -> Result<JobTarget, PlanError> {
    match job.target.as_ref().and_then(|t| t.kind.as_ref()).ok_or_else(|| invalid("target", "missing"))? {
        target::Kind::Subscriptions(list) => list
            .ids
            .iter()
            .map(|hex| SubscriptionId::parse_hex(hex).map_err(|e| invalid("target.subscriptions", e)))
            .collect::<Result<_, _>>()
            .map(JobTarget::Subscriptions),
        target::Kind::Topic(name) => Topic::new(name)
            .map(|t| JobTarget::Audience(Audience::Topic(t)))
            .map_err(|e| invalid("target.topic", e)),
        target::Kind::Everyone(_) => Ok(JobTarget::Audience(Audience::Everyone)),
    }
}

/// RFC 8030 options from their bus form.
pub fn push_options(options: Option<&bus::PushOptions>) -> Result<PushOptions, PlanError> {
    let Some(options) = options else { return Ok(PushOptions::default()) };
    let urgency =
        match bus::Urgency::try_from(options.urgency).map_err(|_| invalid("urgency", options.urgency))? {
            bus::Urgency::Unspecified | bus::Urgency::Normal => Urgency::Normal,
            bus::Urgency::VeryLow => Urgency::VeryLow,
            bus::Urgency::Low => Urgency::Low,
            bus::Urgency::High => Urgency::High,
        };
    let topic = match options.topic.as_str() {
        "" => None,
        topic => Some(pushfan_webpush::Topic::parse(topic).map_err(|e| invalid("options.topic", e))?),
    };
    Ok(PushOptions { ttl: options.ttl_seconds, urgency, topic })
}

/// Milliseconds since the Unix epoch as a `SystemTime`; negative clamps to the epoch.
pub fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The bus form of one encrypted push.
pub fn delivery(id: SubscriptionId, endpoint: &str, push: EncryptedPush) -> bus::Delivery {
    bus::Delivery {
        subscription_id: id.to_string(),
        endpoint: endpoint.to_owned(),
        content_encoding: match push.encoding {
            ContentEncoding::Aes128gcm => bus::ContentEncoding::Aes128gcm,
            ContentEncoding::Aesgcm => bus::ContentEncoding::Aesgcm,
        } as i32,
        aesgcm: push.aesgcm.map(|p| bus::AesgcmParams {
            salt: bytes::Bytes::copy_from_slice(&p.salt),
            dh: bytes::Bytes::copy_from_slice(&p.dh),
        }),
        body: push.body,
    }
}

/// One encrypted push back from its bus form.
pub fn encrypted_push(delivery: &bus::Delivery) -> Result<EncryptedPush, PlanError> {
    let encoding = match bus::ContentEncoding::try_from(delivery.content_encoding) {
        Ok(bus::ContentEncoding::Aes128gcm | bus::ContentEncoding::Unspecified) => ContentEncoding::Aes128gcm,
        Ok(bus::ContentEncoding::Aesgcm) => ContentEncoding::Aesgcm,
        Err(_) => return Err(invalid("content_encoding", delivery.content_encoding)),
    };
    let aesgcm = match (encoding, delivery.aesgcm.as_ref()) {
        (ContentEncoding::Aesgcm, Some(p)) => Some(AesgcmParams {
            salt: p.salt.as_ref().try_into().map_err(|_| invalid("aesgcm.salt", "not 16 bytes"))?,
            dh: p.dh.as_ref().try_into().map_err(|_| invalid("aesgcm.dh", "not 65 bytes"))?,
        }),
        (ContentEncoding::Aesgcm, None) => return Err(invalid("aesgcm", "missing for an aesgcm delivery")),
        (ContentEncoding::Aes128gcm, _) => None,
    };
    Ok(EncryptedPush { body: delivery.body.clone(), encoding, aesgcm })
}

/// Samples of failure text one delivery batch carries per class: the ledger keeps the first
/// few per broadcast, so more per batch would only be carried to be dropped.
pub const MAX_BATCH_SAMPLES: usize = 3;

/// A delivery batch's failures: a count per class (a fixed array) and a few short samples.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    counts: [u64; FailureClass::COUNT],
    samples: Vec<(FailureClass, String)>,
}

impl Failures {
    /// Counts `n` failures of `class`, keeping `text` (cut by [`failure::sample`]) as a sample
    /// while the class has fewer than [`MAX_BATCH_SAMPLES`] and it is new.
    pub fn add(&mut self, class: FailureClass, n: u64, text: &str) {
        self.counts[class.index()] += n;
        if n > 0 {
            self.keep_sample(class, text);
        }
    }

    fn keep_sample(&mut self, class: FailureClass, text: &str) {
        if text.is_empty() || self.samples.iter().filter(|(c, _)| *c == class).count() >= MAX_BATCH_SAMPLES {
            return;
        }
        let sample = failure::sample(text);
        if !sample.is_empty() && !self.samples.iter().any(|(c, known)| *c == class && *known == sample) {
            self.samples.push((class, sample));
        }
    }

    /// How many failed in `class`.
    pub fn count(&self, class: FailureClass) -> u64 {
        self.counts[class.index()]
    }

    /// The counts by [`FailureClass::index`].
    pub fn counts(&self) -> &[u64; FailureClass::COUNT] {
        &self.counts
    }

    /// The bus form: one entry per class that occurred, in class order.
    pub fn to_bus(&self) -> Vec<FailureCount> {
        FailureClass::ALL
            .into_iter()
            .filter(|class| self.count(*class) > 0)
            .map(|class| FailureCount {
                class: class.label().to_owned(),
                count: self.count(class),
                samples: self.samples.iter().filter(|(c, _)| *c == class).map(|(_, s)| s.clone()).collect(),
            })
            .collect()
    }

    /// Reads the bus form. A class this version does not know (a newer writer's) is counted as
    /// `rejected`, so the counts still close; samples past the bound are dropped.
    pub fn from_bus(failures: &[FailureCount]) -> Self {
        let mut read = Failures::default();
        for entry in failures {
            let class = FailureClass::from_label(&entry.class).unwrap_or(FailureClass::Rejected);
            read.add(class, entry.count, "");
            for sample in &entry.samples {
                read.keep_sample(class, sample);
            }
        }
        read
    }
}

/// Adds up a delivery batch's reports: how many were accepted, the failures by class, and the
/// ids to prune (gone, not found, and endpoints that can never be sent to).
pub fn tally(reports: &[Report<SubscriptionId>]) -> (u64, Failures, Vec<SubscriptionId>) {
    let mut delivered = 0;
    let mut failures = Failures::default();
    let mut prune = Vec::new();
    for report in reports {
        match &report.outcome {
            FinalOutcome::Accepted => delivered += 1,
            FinalOutcome::Failed { class, detail } => {
                failures.add(*class, 1, detail);
                if class.prunes() {
                    prune.push(report.tag);
                }
            }
        }
    }
    (delivered, failures, prune)
}

/// What a delivery batch's results, with the worker's counts for its subscriptions, add to its
/// broadcast's progress: one step, so both halves come from the same version of the batch.
/// `partial` names the batch's provisional snapshot, which the step replaces.
pub fn progress(
    counts: &OutcomeCounts,
    page: PageCounts,
    failures: &Failures,
    partial: Option<String>,
) -> ProgressDelta {
    let mut delta = ProgressDelta {
        counts: BroadcastCounts {
            targeted: page.targeted,
            encrypted: page.encrypted,
            encrypt_failed: page.encrypt_failed,
            batches_done: 1,
            accepted: counts.delivered,
            gone: page.gone,
            pruned: counts.pruned + page.pruned,
            ..BroadcastCounts::default()
        },
        samples: failures.samples.clone(),
        replaces_partial: partial,
    };
    add_failures(&mut delta.counts, failures);
    delta
}

/// What a delivery batch's results message adds to its broadcast's progress, under
/// [`result_step`]: its counts, failures by class and samples, and the removal of its provisional
/// snapshot ([`partial_step`]).
pub fn results_progress(results: &bus::DeliveryResultBatch) -> ProgressDelta {
    progress(
        &results.counts.unwrap_or_default(),
        results.page_counts.unwrap_or_default(),
        &Failures::from_bus(&results.failures),
        Some(partial_step(results.shard_index, results.batch_seq)),
    )
}

/// What a delivery batch has reached so far, as its provisional snapshot (see
/// `BroadcastLedger::set_partial`): its page's counts and its finished deliveries, but not
/// `batches_done`, so a snapshot never completes a broadcast.
pub fn snapshot(page: PageCounts, delivered: u64, failures: &Failures) -> ProgressDelta {
    let mut counts = BroadcastCounts {
        targeted: page.targeted,
        encrypted: page.encrypted,
        encrypt_failed: page.encrypt_failed,
        gone: page.gone,
        pruned: page.pruned,
        accepted: delivered,
        ..BroadcastCounts::default()
    };
    add_failures(&mut counts, failures);
    ProgressDelta { counts, ..ProgressDelta::default() }
}

/// Adds failures by class, and to the summary counter each class belongs to.
fn add_failures(counts: &mut BroadcastCounts, failures: &Failures) {
    for class in FailureClass::ALL {
        let n = failures.count(class);
        counts.failures[class.index()] += n;
        let summary = match class.summary() {
            Summary::Gone => &mut counts.gone,
            Summary::Rejected => &mut counts.rejected,
            Summary::Failed => &mut counts.failed,
            Summary::Expired => &mut counts.expired,
        };
        *summary += n;
    }
}

/// A delivery batch of `count` with nothing deliverable in it: every subscription is reported
/// as failed in `class` with `reason` (an unknown VAPID key, say) so the broadcast's counts
/// still close.
pub fn refuse_batch(count: u64, class: FailureClass, reason: &str) -> Failures {
    let mut failures = Failures::default();
    failures.add(class, count, reason);
    failures
}

/// The class of a stored endpoint that cannot be sent to: refused by the egress policy (its
/// host, or plain `http` where only loopback may use it), or otherwise unusable.
pub fn endpoint_refusal(error: &SubscriptionError) -> FailureClass {
    match error {
        SubscriptionError::EndpointRefused(_) | SubscriptionError::EndpointNotHttps(_) => {
            FailureClass::RefusedByPolicy
        }
        _ => FailureClass::Invalid,
    }
}

/// The key of a delivery batch's provisional snapshot, replaced by its results step.
pub fn partial_step(shard: u32, batch_seq: u32) -> String {
    format!("partial/{shard}/{batch_seq}")
}

/// The step key under which a delivery batch's results count once.
pub fn result_step(shard: u32, batch_seq: u32) -> String {
    format!("result/{shard}/{batch_seq}")
}

/// The step key under which an encrypted page counts once.
pub fn page_step(shard: u32, page: u32) -> String {
    format!("page/{shard}/{page}")
}

/// The step key under which a finished shard counts once.
pub fn shard_done_step(shard: u32) -> String {
    format!("shard-done/{shard}")
}

/// A batch's sequence number: pages are numbered per shard, and a page splits into one batch
/// per VAPID key among its subscriptions (at most [`MAX_KEYS_PER_PAGE`]).
pub fn batch_seq(page: u32, key_group: usize) -> u32 {
    page * MAX_KEYS_PER_PAGE as u32 + key_group as u32
}

/// What one delivery takes on the bus besides its body: the endpoint (a few hundred bytes at the
/// big push services), the subscription id and the protobuf framing.
const DELIVERY_OVERHEAD_BYTES: usize = 640;

/// Subscriptions per page for a payload of `payload_len` bytes: `configured`, or fewer when a
/// page's batch (one bus record) would not fit in `max_record_bytes` (the bus's limit: Kafka's
/// is well under 1 MB, the embedded bus's is larger, and every page costs a scan, ledger steps
/// and an fsync or a round trip each, so the fewer the better). A function of the job and the
/// deployment's configuration, so a page redone after a crash is the same page.
pub fn page_size(configured: usize, payload_len: usize, padded: bool, max_record_bytes: usize) -> usize {
    let overhead = message::MAX_BODY_LEN - message::MAX_PLAINTEXT_LEN;
    let body =
        if padded { message::MAX_BODY_LEN } else { (payload_len + overhead).min(message::MAX_BODY_LEN) };
    configured.min(max_record_bytes / (body + DELIVERY_OVERHEAD_BYTES)).max(1)
}

/// Distinct VAPID keys one page may mix; more would need a new numbering, so the worker splits
/// a page's encryption into one batch per key and refuses a page with more keys than this.
pub const MAX_KEYS_PER_PAGE: usize = 16;

/// The pages of one shard job whose deliveries are still in flight, in page order. A shard's
/// checkpoint says where a redelivered job resumes, so it may pass a page only once that page and
/// every page before it are delivered: pages finish out of order (a page parked on a throttling
/// push service finishes after the pages behind it), and the checkpoint follows the finished
/// prefix.
#[derive(Debug)]
pub struct PageWindow {
    /// Where the job resumes now: past the finished prefix.
    resume: ShardCheckpoint,
    /// Pages started and not yet part of the finished prefix: (page, checkpoint past it, finished).
    pages: VecDeque<(u32, ShardCheckpoint, bool)>,
}

impl PageWindow {
    /// A window for a job resuming at `resume`.
    pub fn new(resume: ShardCheckpoint) -> Self {
        Self { resume, pages: VecDeque::new() }
    }

    /// Page `page` is being handed on; `after` is the checkpoint past it. Pages start in order.
    pub fn start(&mut self, page: u32, after: ShardCheckpoint) {
        debug_assert!(self.pages.back().is_none_or(|&(last, _, _)| last < page), "pages start in order");
        self.pages.push_back((page, after, false));
    }

    /// Page `page` is delivered: returns the checkpoint past every page finished so far without
    /// a gap (unchanged while an earlier page is still in flight).
    pub fn finish(&mut self, page: u32) -> ShardCheckpoint {
        if let Some(entry) = self.pages.iter_mut().find(|(p, _, _)| *p == page) {
            entry.2 = true;
        }
        while let Some(&(_, after, true)) = self.pages.front() {
            self.resume = after;
            self.pages.pop_front();
        }
        self.resume
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushfan_bus::messages::{DeliveryBatch, Everyone, SubscriptionIds};

    fn request(target: target::Kind) -> PublishRequest {
        PublishRequest {
            broadcast_id: "b1".into(),
            tenant: "acme".into(),
            target: Some(bus::Target { kind: Some(target) }),
            payload: bytes::Bytes::from_static(b"hello"),
            options: Some(bus::PushOptions {
                ttl_seconds: 60,
                urgency: bus::Urgency::High as i32,
                topic: "t".into(),
            }),
            vapid_key_id: "1".into(),
            idempotency_key: String::new(),
            created_at_ms: 1_000,
        }
    }

    #[test]
    fn a_publish_may_name_the_key_to_sign_with() {
        let job = |key: &str| ShardJob { vapid_key_id: key.into(), ..ShardJob::default() };
        assert_eq!(signing_key(&job("")).unwrap(), None);
        assert_eq!(signing_key(&job("2")).unwrap(), Some(VapidKeyId(2)));
        assert!(matches!(signing_key(&job("two")), Err(PlanError::Invalid { field: "vapid_key_id", .. })));
    }

    #[test]
    fn a_topic_or_everyone_gets_a_job_per_shard() {
        let shards = ShardCount::new(4).unwrap();
        let jobs = shard_jobs(&request(target::Kind::Everyone(Everyone {})), shards).unwrap();
        assert_eq!(jobs.iter().map(|j| j.shard_index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert!(jobs
            .iter()
            .all(|j| j.shard_count == 4 && j.expires_at_ms == 61_000 && j.payload == b"hello"[..]));
        assert_eq!(job_target(&jobs[0]).unwrap(), JobTarget::Audience(Audience::Everyone));
        let jobs = shard_jobs(&request(target::Kind::Topic("news".into())), shards).unwrap();
        assert_eq!(
            job_target(&jobs[3]).unwrap(),
            JobTarget::Audience(Audience::Topic(Topic::new("news").unwrap()))
        );
    }

    #[test]
    fn a_list_gets_a_job_per_shard_it_touches() {
        let shards = ShardCount::new(64).unwrap();
        let ids: Vec<SubscriptionId> = (0..3u8).map(|n| SubscriptionId::from_bytes([n; 14])).collect();
        let list = SubscriptionIds { ids: ids.iter().map(|id| id.to_string()).collect() };
        let jobs = shard_jobs(&request(target::Kind::Subscriptions(list)), shards).unwrap();
        let mut found: Vec<SubscriptionId> = Vec::new();
        for job in &jobs {
            let JobTarget::Subscriptions(in_job) = job_target(job).unwrap() else { panic!("not a list") };
            assert!(in_job.iter().all(|id| u32::from(shards.shard_of(id).0) == job.shard_index));
            found.extend(in_job);
        }
        found.sort();
        assert_eq!(found, ids);
        let bad = SubscriptionIds { ids: vec!["zz".into()] };
        assert!(matches!(
            shard_jobs(&request(target::Kind::Subscriptions(bad)), shards),
            Err(PlanError::Invalid { field: "target.subscriptions", .. })
        ));
    }

    #[test]
    fn options_map_to_rfc8030() {
        let options = push_options(request(target::Kind::Everyone(Everyone {})).options.as_ref()).unwrap();
        assert_eq!(options.ttl, 60);
        assert_eq!(options.urgency, Urgency::High);
        assert_eq!(options.topic.unwrap().as_str(), "t");
        let bad = bus::PushOptions { ttl_seconds: 1, urgency: 0, topic: "no/slashes".into() };
        assert!(push_options(Some(&bad)).is_err());
    }

    #[test]
    fn reports_add_up_by_class_and_the_dead_are_pruned() {
        use FailureClass::*;
        let id = |n| SubscriptionId::from_bytes([n; 14]);
        let report = |n, outcome| Report { tag: id(n), outcome, attempts: 1 };
        let reports = vec![
            report(1, FinalOutcome::Accepted),
            report(2, FinalOutcome::failed(Gone, "")),
            report(3, FinalOutcome::failed(Unauthorized, "BadJwtToken")),
            report(4, FinalOutcome::failed(Unauthorized, "BadJwtToken")),
            report(5, FinalOutcome::failed(Throttled, "HTTP 429 past the throttle deadline")),
            report(6, FinalOutcome::failed(TransportReset, "connection reset")),
            report(7, FinalOutcome::failed(Expired, "")),
            report(8, FinalOutcome::failed(RefusedByPolicy, "loopback")),
            report(9, FinalOutcome::failed(NotFound, "")),
        ];
        let (delivered, failures, prune) = tally(&reports);
        assert_eq!(delivered, 1);
        assert_eq!(prune, vec![id(2), id(8), id(9)]);
        assert_eq!((failures.count(Unauthorized), failures.count(Throttled)), (2, 1));
        let on_bus = failures.to_bus();
        assert_eq!(on_bus.len(), 7, "one entry per class that occurred: {on_bus:?}");
        let unauthorized = on_bus.iter().find(|f| f.class == "unauthorized").unwrap();
        assert_eq!((unauthorized.count, &unauthorized.samples[..]), (2, &["BadJwtToken".to_owned()][..]));
        assert_eq!(Failures::from_bus(&on_bus), failures);

        // The page also held two expired subscriptions, one of them still in the store.
        let page = PageCounts { targeted: 12, encrypted: 9, encrypt_failed: 1, gone: 2, pruned: 1 };
        let counts = OutcomeCounts { delivered, pruned: 3 };
        let delta = progress(&counts, page, &failures, Some(partial_step(1, 2)));
        let c = delta.counts;
        assert_eq!((c.gone, c.pruned, c.rejected, c.failed, c.expired), (4, 4, 3, 2, 1));
        assert_eq!(c.failures[Unauthorized.index()], 2);
        assert_eq!(delta.replaces_partial.as_deref(), Some("partial/1/2"));
        // The worker's counts come in the same step: the batch closes its own subscriptions.
        assert_eq!((c.targeted, c.encrypted, c.batches_done), (12, 9, 1));
        assert_eq!(c.finished(), 12);
        // A snapshot of the same counts never completes a batch.
        let snapshot = snapshot(page, delivered, &failures);
        assert_eq!((snapshot.counts.batches_done, snapshot.counts.finished()), (0, 12));
    }

    #[test]
    fn a_batch_carries_few_short_samples_whatever_the_push_service_says() {
        let mut failures = Failures::default();
        for n in 0..5_000 {
            let body = format!("random body {n} {}", "x".repeat(n % 700));
            failures.add(FailureClass::Rejected, 1, &body);
        }
        failures.add(FailureClass::Rejected, 1, "random body 0");
        let on_bus = failures.to_bus();
        assert_eq!(on_bus.len(), 1);
        assert_eq!(on_bus[0].count, 5_001);
        assert_eq!(on_bus[0].samples.len(), MAX_BATCH_SAMPLES);
        assert!(on_bus[0].samples.iter().all(|s| s.len() <= failure::MAX_SAMPLE_LEN));
        let newer = FailureCount { class: "from_the_future".into(), count: 2, samples: Vec::new() };
        assert_eq!(Failures::from_bus(&[newer]).count(FailureClass::Rejected), 2);
    }

    #[test]
    fn pages_shrink_so_a_batch_fits_one_bus_record() {
        const KAFKA: usize = 768 * 1024;
        assert_eq!(page_size(512, 100, false, KAFKA), 512, "small payloads keep the configured size");
        let largest = page_size(512, message::MAX_PLAINTEXT_LEN, false, KAFKA);
        assert!(largest < 512 && largest * (message::MAX_BODY_LEN + DELIVERY_OVERHEAD_BYTES) <= KAFKA);
        assert_eq!(page_size(512, 100, true, KAFKA), largest, "padding may grow any body to the maximum");
        assert_eq!(page_size(0, 100, false, KAFKA), 1);
        assert_eq!(
            page_size(512, message::MAX_PLAINTEXT_LEN, false, 4 << 20),
            512,
            "a roomier bus keeps the size"
        );
        // A full batch of the largest pushes, encoded, fits Kafka's default 1 MB record limit.
        let push = EncryptedPush {
            body: vec![0; message::MAX_BODY_LEN].into(),
            encoding: ContentEncoding::Aes128gcm,
            aesgcm: None,
        };
        let endpoint = format!("https://fcm.googleapis.com/fcm/send/{}", "x".repeat(400));
        let batch = DeliveryBatch {
            deliveries: (0..largest)
                .map(|_| delivery(SubscriptionId::from_bytes([7; 14]), &endpoint, push.clone()))
                .collect(),
            ..DeliveryBatch::default()
        };
        assert!(prost::Message::encoded_len(&batch) < 1_000_000);
    }

    #[test]
    fn encrypted_pushes_survive_the_bus() {
        let push = EncryptedPush {
            body: vec![1, 2, 3].into(),
            encoding: ContentEncoding::Aesgcm,
            aesgcm: Some(AesgcmParams { salt: [7; 16], dh: [4; 65] }),
        };
        let mut on_bus =
            delivery(SubscriptionId::from_bytes([9; 14]), "https://push.example/x", push.clone());
        assert_eq!(encrypted_push(&on_bus).unwrap(), push);
        on_bus.aesgcm = None;
        assert!(encrypted_push(&on_bus).is_err());
    }

    #[test]
    fn the_checkpoint_follows_the_pages_finished_without_a_gap() {
        let at =
            |page: u32| ShardCheckpoint { cursor: Some(pushfan_store::ScanCursor::START), next_page: page };
        let mut window = PageWindow::new(at(3));
        for page in 3..7 {
            window.start(page, at(page + 1));
        }
        // Page 4 finishes while 3 is still out: the job must still resume at 3.
        assert_eq!(window.finish(4), at(3));
        assert_eq!(window.finish(3), at(5), "3 and 4 are done");
        assert_eq!(window.finish(6), at(5));
        let last = ShardCheckpoint { cursor: None, next_page: 8 };
        window.start(7, last);
        assert_eq!(window.finish(7), at(5));
        assert_eq!(window.finish(5), last, "everything done: past the last page");
    }
}
