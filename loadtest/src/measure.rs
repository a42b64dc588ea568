//! Measurements: publish-to-201 latency and throughput over time from the fleet's answers. CPU
//! time and the crypto core's cost come from `pushfan_pushsim::cpu`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pushfan_pushsim::{Observer, Status};
use serde::Serialize;
use tokio::sync::mpsc;

/// Width of one throughput/latency time bucket.
pub const BUCKET: Duration = Duration::from_millis(500);

/// The `Topic` header value that tags broadcast `seq`, so the fleet can tell which publish a
/// push belongs to. RFC 8030 topics are base64url, at most 32 characters.
pub fn topic_of(seq: u32) -> String {
    format!("lt{seq}")
}

fn seq_of(topic: &str) -> Option<u32> {
    topic.strip_prefix("lt")?.parse().ok()
}

/// One answer, as the fleet saw it.
#[derive(Debug)]
struct Answer {
    at: Instant,
    status: Status,
    broadcast: Option<u32>,
    /// The origin the subscriber lives on (`index % origins`).
    origin: Option<usize>,
}

/// The fleet's [`Observer`]: forwards each answer through an unbounded channel (no lock on the
/// request path) to the [`Collector`].
#[derive(Debug)]
pub struct AnswerTap {
    sender: mpsc::UnboundedSender<Answer>,
    origins: u64,
}

impl Observer for AnswerTap {
    fn answered(&self, index: Option<u64>, status: Status, topic: Option<&str>) {
        let answer = Answer {
            at: Instant::now(),
            status,
            broadcast: topic.and_then(seq_of),
            origin: index.map(|i| (i % self.origins) as usize),
        };
        // The collector outlives the fleet's traffic; a closed channel means the run is over.
        let _ = self.sender.send(answer);
    }
}

/// What the collector has so far, readable while it runs.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    origins: usize,
    publishes: BTreeMap<u32, Instant>,
    latency: Histogram<u64>,
    buckets: Vec<Bucket>,
    accepted: u64,
    answers: BTreeMap<u16, u64>,
    untagged: u64,
}

#[derive(Debug, Clone)]
struct Bucket {
    accepted: u64,
    accepted_by_origin: Vec<u64>,
    other: u64,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 1 hour at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Timeline {
    fn record(&mut self, answer: Answer) {
        *self.answers.entry(answer.status.code()).or_default() += 1;
        let slot = (answer.at.saturating_duration_since(self.start).as_nanos() / BUCKET.as_nanos()) as usize;
        if self.buckets.len() <= slot {
            let empty = Bucket {
                accepted: 0,
                accepted_by_origin: vec![0; self.origins],
                other: 0,
                latency: histogram(),
            };
            self.buckets.resize(slot + 1, empty);
        }
        let bucket = &mut self.buckets[slot];
        if answer.status != Status::Created {
            bucket.other += 1;
            return;
        }
        bucket.accepted += 1;
        if let Some(count) = answer.origin.and_then(|o| bucket.accepted_by_origin.get_mut(o)) {
            *count += 1;
        }
        self.accepted += 1;
        let published = answer.broadcast.and_then(|seq| self.publishes.get(&seq));
        match published {
            Some(published) => {
                let micros = answer.at.saturating_duration_since(*published).as_micros().max(1) as u64;
                self.latency.saturating_record(micros);
                bucket.latency.saturating_record(micros);
            }
            None => self.untagged += 1,
        }
    }
}

/// Receives the fleet's answers and keeps the histograms.
#[derive(Debug, Clone)]
pub struct Collector {
    timeline: Arc<Mutex<Timeline>>,
}

impl Collector {
    /// A collector and the tap to give a fleet of `origins` origins; `start` is time zero of
    /// the timeline.
    pub fn start(start: Instant, origins: usize) -> (Collector, Arc<AnswerTap>) {
        let origins = origins.max(1);
        let (sender, mut receiver) = mpsc::unbounded_channel::<Answer>();
        let timeline = Arc::new(Mutex::new(Timeline {
            start,
            origins,
            publishes: BTreeMap::new(),
            latency: histogram(),
            buckets: Vec::new(),
            accepted: 0,
            answers: BTreeMap::new(),
            untagged: 0,
        }));
        let shared = Arc::clone(&timeline);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(1024);
            while receiver.recv_many(&mut batch, 1024).await > 0 {
                let mut timeline = shared.lock().unwrap_or_else(PoisonError::into_inner);
                for answer in batch.drain(..) {
                    timeline.record(answer);
                }
            }
        });
        (Collector { timeline }, Arc::new(AnswerTap { sender, origins: origins as u64 }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timeline> {
        self.timeline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes when broadcast `seq` was published. Call before the publish request is sent, so
    /// no answer can arrive first.
    pub fn published(&self, seq: u32, at: Instant) {
        self.lock().publishes.insert(seq, at);
    }

    /// 201 answers recorded so far.
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }

    /// Waits until the channel has drained up to `expected` 201s, or `patience` passed.
    pub async fn settle(&self, expected: u64, patience: Duration) {
        let deadline = Instant::now() + patience;
        while self.accepted() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything measured, with the timeline cut to `[from, to]`.
    pub fn summary(&self, from: Instant, to: Instant) -> LatencyReport {
        let timeline = self.lock();
        let first = (from.saturating_duration_since(timeline.start).as_nanos() / BUCKET.as_nanos()) as usize;
        let last = (to.saturating_duration_since(timeline.start).as_nanos() / BUCKET.as_nanos()) as usize;
        let buckets = timeline
            .buckets
            .iter()
            .enumerate()
            .filter(|(i, _)| (first..=last).contains(i))
            .map(|(i, b)| TimePoint {
                t_seconds: (i - first) as f64 * BUCKET.as_secs_f64(),
                pushes_per_sec: b.accepted as f64 / BUCKET.as_secs_f64(),
                pushes_per_sec_by_origin: b
                    .accepted_by_origin
                    .iter()
                    .map(|&n| n as f64 / BUCKET.as_secs_f64())
                    .collect(),
                other_answers_per_sec: b.other as f64 / BUCKET.as_secs_f64(),
                p50_ms: quantile_ms(&b.latency, 0.5),
                p99_ms: quantile_ms(&b.latency, 0.99),
            })
            .collect();
        LatencyReport {
            publish_to_201: Percentiles::of(&timeline.latency),
            answers: timeline.answers.clone(),
            untagged_201: timeline.untagged,
            bucket_seconds: BUCKET.as_secs_f64(),
            timeline: buckets,
        }
    }
}

fn quantile_ms(histogram: &Histogram<u64>, q: f64) -> Option<f64> {
    (!histogram.is_empty()).then(|| histogram.value_at_quantile(q) as f64 / 1000.0)
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// Latency and throughput of a run.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    /// Publish call to the push service's 201, over every accepted push.
    pub publish_to_201: Percentiles,
    /// Every answer the fleet gave, by status, retries included.
    pub answers: BTreeMap<u16, u64>,
    /// 201s without a known broadcast topic (should be 0).
    pub untagged_201: u64,
    /// Width of a timeline point.
    pub bucket_seconds: f64,
    /// Throughput and latency over time.
    pub timeline: Vec<TimePoint>,
}

/// One bucket of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimePoint {
    /// Seconds since the first publish.
    pub t_seconds: f64,
    /// 201s per second.
    pub pushes_per_sec: f64,
    /// The same per origin, in scenario order.
    pub pushes_per_sec_by_origin: Vec<f64>,
    /// Other answers (410, 429, 500, …) per second.
    pub other_answers_per_sec: f64,
    /// Median publish-to-201 of the pushes accepted in this bucket.
    pub p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub p99_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_tag_broadcasts() {
        assert_eq!(seq_of(&topic_of(17)), Some(17));
        assert_eq!(seq_of("news"), None);
    }

    #[tokio::test]
    async fn answers_become_latencies_and_buckets() {
        let start = Instant::now();
        let (collector, tap) = Collector::start(start, 2);
        collector.published(0, start);
        tap.answered(Some(1), Status::Created, Some("lt0"));
        tap.answered(Some(2), Status::Gone, Some("lt0"));
        tap.answered(Some(3), Status::Created, None);
        collector.settle(2, Duration::from_secs(5)).await;
        let report = collector.summary(start, Instant::now());
        assert_eq!(report.publish_to_201.count, 1);
        assert_eq!(report.untagged_201, 1);
        assert_eq!(report.answers, BTreeMap::from([(201, 2), (410, 1)]));
        assert_eq!(report.timeline.iter().map(|p| p.pushes_per_sec).sum::<f64>(), 2.0 / BUCKET.as_secs_f64());
        // Subscriber 1 lives on origin 1, subscriber 3 too; origin 0 accepted nothing.
        let by_origin: Vec<f64> =
            (0..2).map(|o| report.timeline.iter().map(|p| p.pushes_per_sec_by_origin[o]).sum()).collect();
        assert_eq!(by_origin, vec![0.0, 2.0 / BUCKET.as_secs_f64()]);
    }
}
