//! What the simulated push service saw: counters per answer, check outcomes, and how many
//! messages each subscriber accepted. Relaxed atomics only; [`Stats::snapshot`] reads them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Every status the simulated push service answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Created,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Gone,
    PayloadTooLarge,
    UnsupportedMediaType,
    TooManyRequests,
    InternalServerError,
}

impl Status {
    pub(crate) const ALL: [Status; 11] = [
        Status::Created,
        Status::BadRequest,
        Status::Unauthorized,
        Status::Forbidden,
        Status::NotFound,
        Status::MethodNotAllowed,
        Status::Gone,
        Status::PayloadTooLarge,
        Status::UnsupportedMediaType,
        Status::TooManyRequests,
        Status::InternalServerError,
    ];

    /// The HTTP status code.
    pub fn code(self) -> u16 {
        match self {
            Status::Created => 201,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::Gone => 410,
            Status::PayloadTooLarge => 413,
            Status::UnsupportedMediaType => 415,
            Status::TooManyRequests => 429,
            Status::InternalServerError => 500,
        }
    }

    /// The code as a static string, for metric labels without allocating.
    pub fn label(self) -> &'static str {
        match self {
            Status::Created => "201",
            Status::BadRequest => "400",
            Status::Unauthorized => "401",
            Status::Forbidden => "403",
            Status::NotFound => "404",
            Status::MethodNotAllowed => "405",
            Status::Gone => "410",
            Status::PayloadTooLarge => "413",
            Status::UnsupportedMediaType => "415",
            Status::TooManyRequests => "429",
            Status::InternalServerError => "500",
        }
    }
}

/// The live counters.
#[derive(Debug)]
pub struct Stats {
    statuses: [AtomicU64; Status::ALL.len()],
    vapid_verified: AtomicU64,
    vapid_failures: AtomicU64,
    decrypted: AtomicU64,
    decrypt_failures: AtomicU64,
    payload_mismatches: AtomicU64,
    /// Messages answered 201, per subscriber index.
    received: Box<[AtomicU32]>,
    /// The lowest and highest `TTL` header seen on a well-formed message (`u64::MAX` and 0
    /// before any), so tests can check what went out on the wire.
    ttl_min: AtomicU64,
    ttl_max: AtomicU64,
}

impl Stats {
    /// Zeroed counters for `count` subscribers.
    pub fn new(count: u64) -> Self {
        Self {
            statuses: Default::default(),
            vapid_verified: AtomicU64::new(0),
            vapid_failures: AtomicU64::new(0),
            decrypted: AtomicU64::new(0),
            decrypt_failures: AtomicU64::new(0),
            payload_mismatches: AtomicU64::new(0),
            received: (0..count).map(|_| AtomicU32::new(0)).collect(),
            ttl_min: AtomicU64::new(u64::MAX),
            ttl_max: AtomicU64::new(0),
        }
    }

    pub(crate) fn ttl(&self, ttl: u64) {
        self.ttl_min.fetch_min(ttl, Relaxed);
        self.ttl_max.fetch_max(ttl, Relaxed);
    }

    /// The lowest and highest `TTL` header seen since the start or the last reset, if any.
    pub fn ttl_range(&self) -> Option<(u64, u64)> {
        let (min, max) = (self.ttl_min.load(Relaxed), self.ttl_max.load(Relaxed));
        (min <= max).then_some((min, max))
    }

    pub(crate) fn answered(&self, status: Status) {
        self.statuses[status as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn accepted(&self, index: u64) {
        if let Some(count) = usize::try_from(index).ok().and_then(|i| self.received.get(i)) {
            count.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn vapid(&self, ok: bool) {
        let counter = if ok { &self.vapid_verified } else { &self.vapid_failures };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn decrypt(&self, ok: bool) {
        let counter = if ok { &self.decrypted } else { &self.decrypt_failures };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn payload_mismatch(&self) {
        self.payload_mismatches.fetch_add(1, Relaxed);
    }

    /// How many messages subscriber `index` accepted (0 outside the population).
    pub fn received(&self, index: u64) -> u32 {
        usize::try_from(index).ok().and_then(|i| self.received.get(i)).map_or(0, |c| c.load(Relaxed))
    }

    /// Accepted messages for every subscriber, by index.
    pub fn receive_counts(&self) -> Vec<u32> {
        self.received.iter().map(|c| c.load(Relaxed)).collect()
    }

    /// Zeroes every counter, between phases of a test.
    pub fn reset(&self) {
        let scalars = [
            &self.vapid_verified,
            &self.vapid_failures,
            &self.decrypted,
            &self.decrypt_failures,
            &self.payload_mismatches,
        ];
        for counter in self.statuses.iter().chain(scalars) {
            counter.store(0, Relaxed);
        }
        for counter in self.received.iter() {
            counter.store(0, Relaxed);
        }
        self.ttl_min.store(u64::MAX, Relaxed);
        self.ttl_max.store(0, Relaxed);
    }

    /// The counters now. Concurrent requests may land between two reads, so totals are only
    /// exact once traffic has stopped.
    pub fn snapshot(&self) -> StatsSnapshot {
        let statuses = Status::ALL
            .iter()
            .map(|&s| (s.code(), self.statuses[s as usize].load(Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect();
        let mut received = ReceiveSummary::default();
        for count in self.received.iter() {
            let n = count.load(Relaxed);
            received.max = received.max.max(n);
            match n {
                0 => received.none += 1,
                1 => received.exactly_one += 1,
                _ => received.more_than_one += 1,
            }
        }
        StatsSnapshot {
            statuses,
            vapid_verified: self.vapid_verified.load(Relaxed),
            vapid_failures: self.vapid_failures.load(Relaxed),
            decrypted: self.decrypted.load(Relaxed),
            decrypt_failures: self.decrypt_failures.load(Relaxed),
            payload_mismatches: self.payload_mismatches.load(Relaxed),
            received,
        }
    }
}

/// How accepted messages spread over the subscribers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiveSummary {
    /// Subscribers with no accepted message.
    pub none: u64,
    /// Subscribers with exactly one: after one broadcast, everyone who should have it.
    pub exactly_one: u64,
    /// Subscribers with duplicates.
    pub more_than_one: u64,
    /// The most any subscriber accepted.
    pub max: u32,
}

/// The counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Answers by HTTP status; statuses never answered are absent.
    pub statuses: BTreeMap<u16, u64>,
    /// VAPID tokens that verified.
    pub vapid_verified: u64,
    /// VAPID tokens refused (401 or 403).
    pub vapid_failures: u64,
    /// Bodies that decrypted with the subscriber's keys.
    pub decrypted: u64,
    /// Bodies that did not (400).
    pub decrypt_failures: u64,
    /// Bodies that decrypted to something other than the expected payload (400).
    pub payload_mismatches: u64,
    /// Accepted messages per subscriber, summarised.
    pub received: ReceiveSummary,
}

impl StatsSnapshot {
    /// How many answers had `code`.
    pub fn status(&self, code: u16) -> u64 {
        self.statuses.get(&code).copied().unwrap_or(0)
    }

    /// All answers.
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_count_statuses_and_summarise_receipts() {
        let stats = Stats::new(4);
        stats.answered(Status::Created);
        stats.answered(Status::Created);
        stats.answered(Status::Gone);
        stats.accepted(0);
        stats.accepted(1);
        stats.accepted(1);
        stats.accepted(1);
        stats.accepted(99);
        stats.vapid(true);
        stats.decrypt(false);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.statuses, BTreeMap::from([(201, 2), (410, 1)]));
        assert_eq!(snapshot.status(201), 2);
        assert_eq!(snapshot.status(500), 0);
        assert_eq!(snapshot.requests(), 3);
        assert_eq!(snapshot.received, ReceiveSummary { none: 2, exactly_one: 1, more_than_one: 1, max: 3 });
        assert_eq!((snapshot.vapid_verified, snapshot.decrypt_failures), (1, 1));
        assert_eq!(stats.receive_counts(), vec![1, 3, 0, 0]);
        assert_eq!(stats.received(1), 3);

        stats.reset();
        assert_eq!(
            stats.snapshot(),
            StatsSnapshot {
                received: ReceiveSummary { none: 4, ..Default::default() },
                ..Default::default()
            }
        );
    }

    #[test]
    fn status_labels_match_codes() {
        for status in Status::ALL {
            assert_eq!(status.label(), status.code().to_string());
        }
    }
}
