//! Fault injection: which subscribers the simulated push service answers 404, 410, 429 or 500.
//!
//! A [`FaultPlan`] is the declarative form (config, command line). [`Faults`] is its run-time
//! form: one flag byte and one attempt counter per subscriber plus a few global knobs, all
//! atomics, so the request path takes no lock and tests can change faults while traffic flows.
//! `decide` is the pure rule that turns a subscriber's flags and attempt number into an answer.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use sha2::{Digest, Sha256};

const GONE: u8 = 1;
const NOT_FOUND: u8 = 2;
const THROTTLE: u8 = 4;
const FAIL: u8 = 8;
const GARBLE: u8 = 16;

/// Which subscribers a fault applies to.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Selection {
    /// Nobody.
    #[default]
    None,
    /// Exactly these indices.
    Indices(BTreeSet<u64>),
    /// A pseudo-random fraction in `0.0..=1.0`, the same subscribers for the same `salt`.
    Fraction { fraction: f64, salt: u64 },
}

impl Selection {
    /// The given indices.
    pub fn indices(indices: impl IntoIterator<Item = u64>) -> Self {
        Selection::Indices(indices.into_iter().collect())
    }

    /// About `fraction` of the population, chosen by hashing each index with `salt`.
    pub fn fraction(fraction: f64, salt: u64) -> Self {
        Selection::Fraction { fraction: fraction.clamp(0.0, 1.0), salt }
    }

    /// Whether subscriber `index` is selected.
    pub fn contains(&self, index: u64) -> bool {
        match self {
            Selection::None => false,
            Selection::Indices(set) => set.contains(&index),
            Selection::Fraction { fraction, salt } => {
                let digest = Sha256::new()
                    .chain_update(salt.to_le_bytes())
                    .chain_update(index.to_le_bytes())
                    .finalize();
                let draw = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
                // The top 53 bits as a uniform float in [0, 1).
                ((draw >> 11) as f64 / (1u64 << 53) as f64) < *fraction
            }
        }
    }
}

/// Answer the first `first` requests of each selected subscriber with a failure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Burst {
    /// Who gets the failures.
    pub selection: Selection,
    /// How many requests per subscriber fail before it is served normally.
    pub first: u32,
}

/// Every fault the push service injects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Answered 410 Gone on every request (an unsubscribed browser).
    pub gone: Selection,
    /// Answered 404 Not Found on every request (an expired subscription, FCM style).
    pub not_found: Selection,
    /// Answered 429 with `Retry-After: retry_after_secs` for their first requests.
    pub throttle: Burst,
    /// The `Retry-After` seconds sent with 429.
    pub retry_after_secs: u32,
    /// Answered 500 for their first requests, after any throttled ones.
    pub fail: Burst,
    /// Held before every answer, to simulate a slow push service.
    pub delay: Duration,
    /// Answered 400 with a random body (up to 1 KB, different every time) on every request: a
    /// push service that answers anything.
    pub garbled: Selection,
}

/// A fault the push service answers with instead of processing the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 410.
    Gone,
    /// 404.
    NotFound,
    /// 429 with `Retry-After`.
    Throttled { retry_after_secs: u32 },
    /// 500.
    ServerError,
    /// 400 with a random body.
    Garbled,
}

/// The rule: gone and not-found are permanent; a throttled subscriber's first `throttle_first`
/// attempts get 429; a failing subscriber's next `fail_first` attempts get 500; then it is served.
pub(crate) fn decide(
    flags: u8,
    attempt: u32,
    throttle_first: u32,
    fail_first: u32,
    retry_after_secs: u32,
) -> Option<Fault> {
    if flags & GONE != 0 {
        return Some(Fault::Gone);
    }
    if flags & NOT_FOUND != 0 {
        return Some(Fault::NotFound);
    }
    if flags & GARBLE != 0 {
        return Some(Fault::Garbled);
    }
    let throttled = if flags & THROTTLE != 0 { throttle_first } else { 0 };
    if attempt < throttled {
        return Some(Fault::Throttled { retry_after_secs });
    }
    if flags & FAIL != 0 && attempt - throttled < fail_first {
        return Some(Fault::ServerError);
    }
    None
}

/// The run-time fault state for a population of `count` subscribers.
#[derive(Debug)]
pub struct Faults {
    flags: Box<[AtomicU8]>,
    attempts: Box<[AtomicU32]>,
    throttle_first: AtomicU32,
    fail_first: AtomicU32,
    retry_after_secs: AtomicU32,
    delay_micros: AtomicU64,
}

impl Faults {
    /// Fault state for `count` subscribers, following `plan`.
    pub fn new(count: u64, plan: &FaultPlan) -> Self {
        let faults = Self {
            flags: (0..count).map(|_| AtomicU8::new(0)).collect(),
            attempts: (0..count).map(|_| AtomicU32::new(0)).collect(),
            throttle_first: AtomicU32::new(0),
            fail_first: AtomicU32::new(0),
            retry_after_secs: AtomicU32::new(0),
            delay_micros: AtomicU64::new(0),
        };
        faults.apply(plan);
        faults
    }

    /// Replaces the faults with `plan`. Attempt counts are kept, so a burst already served does
    /// not start again; call [`Faults::reset_attempts`] for that.
    pub fn apply(&self, plan: &FaultPlan) {
        for (index, flags) in self.flags.iter().enumerate() {
            let index = index as u64;
            let mut value = 0;
            for (selection, bit) in [
                (&plan.gone, GONE),
                (&plan.not_found, NOT_FOUND),
                (&plan.throttle.selection, THROTTLE),
                (&plan.fail.selection, FAIL),
                (&plan.garbled, GARBLE),
            ] {
                if selection.contains(index) {
                    value |= bit;
                }
            }
            flags.store(value, Relaxed);
        }
        self.throttle_first.store(plan.throttle.first, Relaxed);
        self.fail_first.store(plan.fail.first, Relaxed);
        self.retry_after_secs.store(plan.retry_after_secs, Relaxed);
        self.set_delay(plan.delay);
    }

    /// Marks one subscriber gone (410) or not.
    pub fn set_gone(&self, index: u64, gone: bool) {
        self.set_flag(index, GONE, gone);
    }

    /// Marks one subscriber not found (404) or not.
    pub fn set_not_found(&self, index: u64, not_found: bool) {
        self.set_flag(index, NOT_FOUND, not_found);
    }

    /// Throttles one subscriber's first requests (429), or stops.
    pub fn set_throttled(&self, index: u64, throttled: bool) {
        self.set_flag(index, THROTTLE, throttled);
    }

    /// Answers one subscriber 400 with a random body, or stops.
    pub fn set_garbled(&self, index: u64, garbled: bool) {
        self.set_flag(index, GARBLE, garbled);
    }

    /// Fails one subscriber's first requests (500), or stops.
    pub fn set_failing(&self, index: u64, failing: bool) {
        self.set_flag(index, FAIL, failing);
    }

    /// Changes the delay held before every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_micros.store(delay.as_micros().try_into().unwrap_or(u64::MAX), Relaxed);
    }

    /// Forgets how many requests each subscriber has made, so bursts apply again.
    pub fn reset_attempts(&self) {
        for attempts in self.attempts.iter() {
            attempts.store(0, Relaxed);
        }
    }

    /// The delay to hold before answering.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_micros.load(Relaxed))
    }

    /// Counts a request to subscriber `index` and says which fault, if any, answers it.
    /// Indices outside the population have no faults.
    pub fn on_request(&self, index: u64) -> Option<Fault> {
        let slot = usize::try_from(index).ok()?;
        let flags = self.flags.get(slot)?.load(Relaxed);
        let attempt = self.attempts[slot].fetch_add(1, Relaxed);
        if flags == 0 {
            return None;
        }
        decide(
            flags,
            attempt,
            self.throttle_first.load(Relaxed),
            self.fail_first.load(Relaxed),
            self.retry_after_secs.load(Relaxed),
        )
    }

    fn set_flag(&self, index: u64, bit: u8, on: bool) {
        if let Some(flags) = usize::try_from(index).ok().and_then(|i| self.flags.get(i)) {
            if on {
                flags.fetch_or(bit, Relaxed);
            } else {
                flags.fetch_and(!bit, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_orders_permanent_faults_then_throttling_then_errors() {
        assert_eq!(decide(0, 0, 3, 3, 7), None);
        assert_eq!(decide(GONE | THROTTLE, 0, 3, 3, 7), Some(Fault::Gone));
        assert_eq!(decide(NOT_FOUND | FAIL, 9, 3, 3, 7), Some(Fault::NotFound));
        let both = THROTTLE | FAIL;
        let answers: Vec<_> = (0..6).map(|attempt| decide(both, attempt, 2, 3, 7)).collect();
        let throttled = Some(Fault::Throttled { retry_after_secs: 7 });
        let error = Some(Fault::ServerError);
        assert_eq!(answers, vec![throttled, throttled, error, error, error, None]);
        assert_eq!(decide(FAIL, 0, 2, 1, 7), error);
        assert_eq!(decide(FAIL, 1, 2, 1, 7), None);
        assert_eq!(decide(GARBLE | THROTTLE, 0, 2, 1, 7), Some(Fault::Garbled));
    }

    #[test]
    fn fractions_are_deterministic_and_about_right() {
        let selection = Selection::fraction(0.1, 5);
        let chosen = (0..10_000).filter(|&i| selection.contains(i)).count();
        assert!((800..1200).contains(&chosen), "{chosen}");
        let again = (0..10_000).filter(|&i| Selection::fraction(0.1, 5).contains(i)).count();
        assert_eq!(chosen, again);
        assert!(!(0..1000).any(|i| Selection::fraction(0.0, 5).contains(i)));
        assert!((0..1000).all(|i| Selection::fraction(1.0, 5).contains(i)));
    }

    #[test]
    fn run_time_state_follows_the_plan_and_changes() {
        let plan = FaultPlan {
            gone: Selection::indices([1]),
            throttle: Burst { selection: Selection::indices([2]), first: 1 },
            retry_after_secs: 30,
            ..FaultPlan::default()
        };
        let faults = Faults::new(4, &plan);
        assert_eq!(faults.on_request(1), Some(Fault::Gone));
        assert_eq!(faults.on_request(2), Some(Fault::Throttled { retry_after_secs: 30 }));
        assert_eq!(faults.on_request(2), None);
        assert_eq!(faults.on_request(99), None);

        faults.set_gone(1, false);
        faults.set_not_found(0, true);
        faults.set_delay(Duration::from_millis(5));
        assert_eq!(faults.on_request(1), None);
        assert_eq!(faults.on_request(0), Some(Fault::NotFound));
        assert_eq!(faults.delay(), Duration::from_millis(5));

        faults.reset_attempts();
        assert_eq!(faults.on_request(2), Some(Fault::Throttled { retry_after_secs: 30 }));
        faults.apply(&FaultPlan::default());
        assert_eq!(faults.on_request(0), None);
    }
}
