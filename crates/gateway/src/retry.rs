//! What to do after each attempt: finish, or retry after how long. Pure; the clock and the
//! jitter are inputs, so every decision is reproducible in tests.
//!
//! Retries use exponential backoff with full jitter, honour `Retry-After`, and never go past the
//! message's expiry: a push that cannot be delivered within its TTL is reported as expired, not
//! retried forever.

use std::time::{Duration, SystemTime};

use pushfan_webpush::PushOutcome;

/// What one attempt ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The push service answered.
    Response(PushOutcome),
    /// No answer: connect failure, reset, or timeout. Always worth another try.
    Transport(String),
}

/// How a delivery ended, as the statistics count it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalOutcome {
    /// The push service accepted the message.
    Accepted,
    /// The subscription no longer exists (404/410): prune it.
    Gone,
    /// The push service refused the message (400/401/403/413, other 4xx), with its reason.
    Rejected { status: u16, reason: String },
    /// Every attempt failed with a transient error; the last one is kept, and whether it was
    /// the push service throttling us.
    FailedAfterRetries { attempts: u32, last: String, throttled: bool },
    /// The message's TTL ran out before a push service took it.
    Expired,
}

impl FinalOutcome {
    /// Every value [`FinalOutcome::label`] gives.
    pub const LABELS: [&'static str; 5] = ["accepted", "gone", "rejected", "failed", "expired"];

    /// A short label for metrics and statistics.
    pub fn label(&self) -> &'static str {
        match self {
            FinalOutcome::Accepted => "accepted",
            FinalOutcome::Gone => "gone",
            FinalOutcome::Rejected { .. } => "rejected",
            FinalOutcome::FailedAfterRetries { .. } => "failed",
            FinalOutcome::Expired => "expired",
        }
    }
}

/// The decision after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Stop and report.
    Finish(FinalOutcome),
    /// Try again after `delay`; if `pause_origin` is set the whole push service asked to slow
    /// down, so every delivery to it waits that long.
    Retry { delay: Duration, pause_origin: Option<Duration> },
}

/// Backoff and attempt limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The backoff ceiling after the first failure; it doubles with each further failure.
    pub base_delay: Duration,
    /// No single wait is longer than this, `Retry-After` included.
    pub max_delay: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// How long to pause a push service that throttles without saying for how long.
    pub default_throttle: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(60),
            max_attempts: 6,
            default_throttle: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Decides after attempt number `attempt` (1 for the first). `jitter` is uniform in [0, 1).
    pub fn next(
        &self,
        attempt: Attempt,
        attempts: u32,
        now: SystemTime,
        expires_at: SystemTime,
        jitter: f64,
    ) -> Next {
        let (delay, pause_origin, last) = match &attempt {
            Attempt::Response(outcome) => match outcome.clone() {
                PushOutcome::Accepted => return Next::Finish(FinalOutcome::Accepted),
                PushOutcome::Gone { .. } => return Next::Finish(FinalOutcome::Gone),
                PushOutcome::TooLarge => {
                    return Next::Finish(FinalOutcome::Rejected {
                        status: 413,
                        reason: "payload too large for this push service".into(),
                    })
                }
                PushOutcome::Rejected { status, reason } => {
                    return Next::Finish(FinalOutcome::Rejected { status, reason })
                }
                PushOutcome::Throttled { status, retry_after } => {
                    let pause = retry_after.unwrap_or(self.default_throttle).min(self.max_delay);
                    // Waiting out the pause is the backoff; a little jitter keeps the
                    // deliveries that were paused together from returning together.
                    (pause + self.jittered(attempts, jitter) / 4, Some(pause), format!("HTTP {status}"))
                }
                PushOutcome::Retryable { status } => {
                    (self.jittered(attempts, jitter), None, format!("HTTP {status}"))
                }
            },
            Attempt::Transport(error) => (self.jittered(attempts, jitter), None, error.clone()),
        };
        if attempts >= self.max_attempts {
            let throttled = matches!(attempt, Attempt::Response(PushOutcome::Throttled { .. }));
            return Next::Finish(FinalOutcome::FailedAfterRetries { attempts, last, throttled });
        }
        if now + delay >= expires_at {
            return Next::Finish(FinalOutcome::Expired);
        }
        Next::Retry { delay, pause_origin }
    }

    /// Full jitter: uniform in [0, min(max, base * 2^(attempts-1))].
    fn jittered(&self, attempts: u32, jitter: f64) -> Duration {
        let exponent = attempts.saturating_sub(1).min(30);
        let ceiling = self.base_delay.saturating_mul(1 << exponent).min(self.max_delay);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_lists_every_outcome_label() {
        let outcomes = [
            FinalOutcome::Accepted,
            FinalOutcome::Gone,
            FinalOutcome::Rejected { status: 400, reason: String::new() },
            FinalOutcome::FailedAfterRetries { attempts: 1, last: String::new(), throttled: false },
            FinalOutcome::Expired,
        ];
        assert_eq!(outcomes.map(|o| o.label()), FinalOutcome::LABELS);
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    fn far() -> SystemTime {
        NOW + Duration::from_secs(3600)
    }

    fn response(outcome: PushOutcome) -> Attempt {
        Attempt::Response(outcome)
    }

    #[test]
    fn final_answers_finish_at_once() {
        let p = policy();
        assert_eq!(
            p.next(response(PushOutcome::Accepted), 1, NOW, far(), 0.5),
            Next::Finish(FinalOutcome::Accepted)
        );
        assert_eq!(
            p.next(response(PushOutcome::Gone { status: 410 }), 1, NOW, far(), 0.5),
            Next::Finish(FinalOutcome::Gone)
        );
        let rejected = PushOutcome::Rejected { status: 403, reason: "BadJwtToken".into() };
        assert_eq!(
            p.next(response(rejected), 1, NOW, far(), 0.5),
            Next::Finish(FinalOutcome::Rejected { status: 403, reason: "BadJwtToken".into() })
        );
        assert!(matches!(
            p.next(response(PushOutcome::TooLarge), 1, NOW, far(), 0.5),
            Next::Finish(FinalOutcome::Rejected { status: 413, .. })
        ));
    }

    #[test]
    fn server_errors_back_off_exponentially_with_full_jitter() {
        let p = policy();
        let error = || response(PushOutcome::Retryable { status: 502 });
        assert_eq!(
            p.next(error(), 1, NOW, far(), 1.0),
            Next::Retry { delay: Duration::from_millis(250), pause_origin: None }
        );
        assert_eq!(
            p.next(error(), 3, NOW, far(), 1.0),
            Next::Retry { delay: Duration::from_secs(1), pause_origin: None }
        );
        assert_eq!(
            p.next(error(), 3, NOW, far(), 0.5),
            Next::Retry { delay: Duration::from_millis(500), pause_origin: None }
        );
        assert_eq!(
            p.next(error(), 5, NOW, far(), 0.0),
            Next::Retry { delay: Duration::ZERO, pause_origin: None }
        );
        let long = RetryPolicy { max_attempts: 100, ..policy() };
        assert_eq!(
            long.next(error(), 40, NOW, far(), 1.0),
            Next::Retry { delay: Duration::from_secs(60), pause_origin: None }
        );
        assert_eq!(
            p.next(Attempt::Transport("connection reset".into()), 6, NOW, far(), 0.3),
            Next::Finish(FinalOutcome::FailedAfterRetries {
                attempts: 6,
                last: "connection reset".into(),
                throttled: false
            })
        );
    }

    #[test]
    fn throttling_pauses_the_origin_for_retry_after() {
        let p = policy();
        let throttled = |after| response(PushOutcome::Throttled { status: 429, retry_after: after });
        assert_eq!(
            p.next(throttled(Some(Duration::from_secs(7))), 1, NOW, far(), 0.0),
            Next::Retry { delay: Duration::from_secs(7), pause_origin: Some(Duration::from_secs(7)) }
        );
        assert_eq!(
            p.next(throttled(None), 1, NOW, far(), 0.0),
            Next::Retry { delay: Duration::from_secs(2), pause_origin: Some(Duration::from_secs(2)) }
        );
        assert_eq!(
            p.next(
                throttled(Some(Duration::from_secs(86_400))),
                1,
                NOW,
                NOW + Duration::from_secs(86_400 * 2),
                0.0
            ),
            Next::Retry { delay: Duration::from_secs(60), pause_origin: Some(Duration::from_secs(60)) }
        );
    }

    #[test]
    fn nothing_is_retried_past_the_ttl() {
        let p = policy();
        let soon = NOW + Duration::from_secs(5);
        let throttled =
            response(PushOutcome::Throttled { status: 503, retry_after: Some(Duration::from_secs(30)) });
        assert_eq!(p.next(throttled, 1, NOW, soon, 0.0), Next::Finish(FinalOutcome::Expired));
        // TTL 0: deliver now or never.
        assert_eq!(
            p.next(response(PushOutcome::Retryable { status: 500 }), 1, NOW, NOW, 0.0),
            Next::Finish(FinalOutcome::Expired)
        );
    }
}
