//! What to do after each attempt: finish, or retry after how long. Pure; the clock and the
//! jitter are inputs, so every decision is reproducible in tests.
//!
//! Retries use exponential backoff with full jitter, honour `Retry-After`, and never go past the
//! message's expiry: a push that cannot be delivered within its TTL is reported as expired, not
//! retried forever.

use std::time::{Duration, SystemTime};

use pushfan_webpush::PushOutcome;

/// Why a request got no answer from the push service, as a small fixed set: metrics and
/// statistics label by it, so it never grows with what a network or a push service does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// The TCP connection could not be opened (refused, unreachable).
    Connect,
    /// The push service's host name did not resolve.
    Dns,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// No connection or no answer in time.
    Timeout,
    /// The connection was reset or closed under the request (GOAWAY, RST_STREAM, EOF).
    Reset,
    /// The egress policy refuses every address the host resolves to (loopback, private,
    /// link-local...): another try cannot help.
    RefusedByPolicy,
    /// The push service broke HTTP (a malformed frame or response).
    Protocol,
}

impl TransportKind {
    /// Every value [`TransportKind::label`] gives.
    pub const LABELS: [&'static str; 7] =
        ["connect", "dns", "tls", "timeout", "reset", "refused_by_policy", "protocol"];

    /// A short label for metrics, logs and statistics.
    pub fn label(self) -> &'static str {
        match self {
            TransportKind::Connect => "connect",
            TransportKind::Dns => "dns",
            TransportKind::Tls => "tls",
            TransportKind::Timeout => "timeout",
            TransportKind::Reset => "reset",
            TransportKind::RefusedByPolicy => "refused_by_policy",
            TransportKind::Protocol => "protocol",
        }
    }
}

/// Why a request got no answer: its class and a short detail. The detail is bounded
/// ([`TransportFailure::MAX_DETAIL`]) and never carries the endpoint URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportFailure {
    /// The class.
    pub kind: TransportKind,
    /// What the network stack said, cut at [`TransportFailure::MAX_DETAIL`] bytes.
    pub detail: String,
}

impl TransportFailure {
    /// Details longer than this are cut: error chains can quote what a server sent.
    pub const MAX_DETAIL: usize = 200;

    /// A failure of class `kind`; `detail` is cut to [`TransportFailure::MAX_DETAIL`] bytes.
    pub fn new(kind: TransportKind, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > Self::MAX_DETAIL {
            let mut end = Self::MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        Self { kind, detail }
    }
}

impl std::fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.label(), self.detail)
    }
}

/// What one attempt ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The push service answered.
    Response(PushOutcome),
    /// No answer. Worth another try, except when the egress policy refused the address.
    Transport(TransportFailure),
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
    /// Every attempt failed with a transient error; the last one is kept, whether it was
    /// the push service throttling us, and its transport class when there was no answer.
    FailedAfterRetries { attempts: u32, last: String, throttled: bool, transport: Option<TransportKind> },
    /// The message's TTL ran out before a push service took it.
    Expired,
    /// The egress policy refuses every address the endpoint's host resolves to: never sent,
    /// never retried. The subscription is worth pruning.
    Refused { reason: String },
}

impl FinalOutcome {
    /// Every value [`FinalOutcome::label`] gives.
    pub const LABELS: [&'static str; 6] = ["accepted", "gone", "rejected", "failed", "expired", "refused"];

    /// A short label for metrics and statistics.
    pub fn label(&self) -> &'static str {
        match self {
            FinalOutcome::Accepted => "accepted",
            FinalOutcome::Gone => "gone",
            FinalOutcome::Rejected { .. } => "rejected",
            FinalOutcome::FailedAfterRetries { .. } => "failed",
            FinalOutcome::Expired => "expired",
            FinalOutcome::Refused { .. } => "refused",
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
        let (delay, pause_origin, last, transport) = match &attempt {
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
                    let delay = pause + self.jittered(attempts, jitter) / 4;
                    (delay, Some(pause), format!("HTTP {status}"), None)
                }
                PushOutcome::Retryable { status } => {
                    (self.jittered(attempts, jitter), None, format!("HTTP {status}"), None)
                }
            },
            Attempt::Transport(failure) if failure.kind == TransportKind::RefusedByPolicy => {
                return Next::Finish(FinalOutcome::Refused { reason: failure.detail.clone() })
            }
            Attempt::Transport(failure) => {
                (self.jittered(attempts, jitter), None, failure.to_string(), Some(failure.kind))
            }
        };
        if attempts >= self.max_attempts {
            let throttled = matches!(attempt, Attempt::Response(PushOutcome::Throttled { .. }));
            return Next::Finish(FinalOutcome::FailedAfterRetries { attempts, last, throttled, transport });
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
            FinalOutcome::FailedAfterRetries {
                attempts: 1,
                last: String::new(),
                throttled: false,
                transport: None,
            },
            FinalOutcome::Expired,
            FinalOutcome::Refused { reason: String::new() },
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
        let reset = || Attempt::Transport(TransportFailure::new(TransportKind::Reset, "connection reset"));
        assert_eq!(
            p.next(reset(), 5, NOW, far(), 1.0),
            Next::Retry { delay: Duration::from_secs(4), pause_origin: None }
        );
        assert_eq!(
            p.next(reset(), 6, NOW, far(), 0.3),
            Next::Finish(FinalOutcome::FailedAfterRetries {
                attempts: 6,
                last: "reset: connection reset".into(),
                throttled: false,
                transport: Some(TransportKind::Reset),
            })
        );
    }

    #[test]
    fn a_refusal_by_the_egress_policy_finishes_at_once() {
        let refused = Attempt::Transport(TransportFailure::new(
            TransportKind::RefusedByPolicy,
            "every address is loopback",
        ));
        assert_eq!(
            policy().next(refused, 1, NOW, far(), 0.5),
            Next::Finish(FinalOutcome::Refused { reason: "every address is loopback".into() })
        );
    }

    #[test]
    fn transport_labels_list_every_kind_and_details_are_bounded() {
        use TransportKind::*;
        let kinds = [Connect, Dns, Tls, Timeout, Reset, RefusedByPolicy, Protocol];
        assert_eq!(kinds.map(TransportKind::label), TransportKind::LABELS);
        let long = TransportFailure::new(Connect, "é".repeat(1000));
        assert!(long.detail.len() <= TransportFailure::MAX_DETAIL && !long.detail.is_empty());
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
