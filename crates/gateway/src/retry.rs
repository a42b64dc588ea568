//! What to do after each attempt: finish, or retry after how long. Pure; the clock and the
//! jitter are inputs, so every decision is reproducible in tests.
//!
//! Retries use exponential backoff with full jitter, honour `Retry-After`, and never go past the
//! message's expiry: a push that cannot be delivered within its TTL is reported as expired, not
//! retried forever.

use std::time::{Duration, SystemTime};

use pushfan_webpush::{FailureClass, PushOutcome, RequestError};

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
    /// No request could be built: nothing was sent, and another try would fail the same way.
    Unsendable(RequestError),
}

/// How a delivery ended, as the statistics count it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalOutcome {
    /// The push service accepted the message.
    Accepted,
    /// It did not: why, as a class, and what the push service (or the network) said, bounded by
    /// what produced it (`classify`'s reason, [`TransportFailure::MAX_DETAIL`]); empty when
    /// there is nothing to add to the class.
    Failed { class: FailureClass, detail: String },
}

impl FinalOutcome {
    /// Every value [`FinalOutcome::label`] gives: `accepted`, then every failure class.
    pub const LABELS: [&'static str; 1 + FailureClass::COUNT] = {
        let mut labels = ["accepted"; 1 + FailureClass::COUNT];
        let mut i = 0;
        while i < FailureClass::COUNT {
            labels[i + 1] = FailureClass::LABELS[i];
            i += 1;
        }
        labels
    };

    /// A failure of `class`.
    pub fn failed(class: FailureClass, detail: impl Into<String>) -> Self {
        FinalOutcome::Failed { class, detail: detail.into() }
    }

    /// A short label for metrics and statistics: `accepted` or the failure's class.
    pub fn label(&self) -> &'static str {
        match self {
            FinalOutcome::Accepted => "accepted",
            FinalOutcome::Failed { class, .. } => class.label(),
        }
    }

    /// The failure's class; `None` when accepted.
    pub fn class(&self) -> Option<FailureClass> {
        match self {
            FinalOutcome::Accepted => None,
            FinalOutcome::Failed { class, .. } => Some(*class),
        }
    }
}

impl TransportKind {
    /// The failure class of a delivery that ended with this transport failure.
    pub fn class(self) -> FailureClass {
        match self {
            TransportKind::Connect => FailureClass::TransportConnect,
            TransportKind::Dns => FailureClass::TransportDns,
            TransportKind::Tls => FailureClass::TransportTls,
            TransportKind::Timeout => FailureClass::TransportTimeout,
            TransportKind::Reset => FailureClass::TransportReset,
            TransportKind::RefusedByPolicy => FailureClass::RefusedByPolicy,
            TransportKind::Protocol => FailureClass::TransportProtocol,
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

/// What a delivery has been through before the attempt being decided on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tries {
    /// Earlier attempts that failed other than by throttling: they count toward
    /// [`RetryPolicy::max_attempts`]. A 429/503 does not: waiting out a push service's pause is
    /// bounded by [`RetryPolicy::throttle_deadline`] instead.
    pub failures: u32,
    /// How long the delivery has been held back by its push service throttling (since its first
    /// 429/503, or since it first found its origin paused); `None` if it never was.
    pub throttled_for: Option<Duration>,
}

/// Backoff and attempt limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The backoff ceiling after the first failure; it doubles with each further failure.
    pub base_delay: Duration,
    /// No single wait is longer than this, `Retry-After` included.
    pub max_delay: Duration,
    /// Attempts in all, the first included, not counting those answered 429/503.
    pub max_attempts: u32,
    /// How long to pause a push service that throttles without saying for how long.
    pub default_throttle: Duration,
    /// How long one delivery may be held back by its push service throttling (429/503 answers,
    /// or the origin's pause) before it finishes as `throttled` without another request. The
    /// clock starts at the delivery's first 429/503 or the first time it finds its origin
    /// paused, so a batch's deliveries to one origin share about the same deadline, and one
    /// origin that throttles for ever holds a broadcast at most this long past the hand-on of
    /// its last page.
    pub throttle_deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(60),
            max_attempts: 6,
            default_throttle: Duration::from_secs(2),
            throttle_deadline: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// Decides after an attempt, given what the delivery went through before it (`tries`).
    /// `jitter` is uniform in [0, 1).
    pub fn next(
        &self,
        attempt: Attempt,
        tries: Tries,
        now: SystemTime,
        expires_at: SystemTime,
        jitter: f64,
    ) -> Next {
        // Failures that count toward `max_attempts`, this one included.
        let failures = tries.failures.saturating_add(1);
        let (delay, pause_origin, last) = match attempt {
            Attempt::Response(outcome) => match outcome {
                PushOutcome::Accepted => return Next::Finish(FinalOutcome::Accepted),
                PushOutcome::Gone { status } => {
                    return Next::Finish(FinalOutcome::failed(FailureClass::of_status(status), ""))
                }
                PushOutcome::TooLarge => {
                    return Next::Finish(FinalOutcome::failed(
                        FailureClass::PayloadTooLarge,
                        "payload too large for this push service",
                    ))
                }
                PushOutcome::Rejected { status, reason } => {
                    return Next::Finish(FinalOutcome::failed(FailureClass::of_status(status), reason))
                }
                PushOutcome::Throttled { status, retry_after } => {
                    let left = self.throttle_deadline.saturating_sub(tries.throttled_for.unwrap_or_default());
                    if left.is_zero() {
                        return Next::Finish(throttled_out(status));
                    }
                    // Neither a huge `Retry-After` nor one past the deadline holds the origin.
                    let pause = retry_after.unwrap_or(self.default_throttle).min(self.max_delay).min(left);
                    // Waiting out the pause is the backoff; a little jitter keeps the
                    // deliveries that were paused together from returning together.
                    let delay = pause + self.jittered(1, jitter) / 4;
                    if now + pause >= expires_at {
                        return Next::Finish(FinalOutcome::failed(FailureClass::Expired, ""));
                    }
                    return Next::Retry { delay, pause_origin: Some(pause) };
                }
                PushOutcome::Retryable { status } => (
                    self.jittered(failures, jitter),
                    None,
                    FinalOutcome::failed(FailureClass::ServerError, format!("HTTP {status}")),
                ),
            },
            Attempt::Unsendable(error) => {
                // An endpoint no request can carry is unusable (and pruned); options HTTP cannot
                // carry say nothing of the subscription.
                let class = match error {
                    RequestError::InvalidUri(_) => FailureClass::Invalid,
                    RequestError::InvalidHeader(_) => FailureClass::Rejected,
                };
                return Next::Finish(FinalOutcome::failed(class, error.to_string()));
            }
            Attempt::Transport(failure) if failure.kind == TransportKind::RefusedByPolicy => {
                return Next::Finish(FinalOutcome::failed(FailureClass::RefusedByPolicy, failure.detail))
            }
            Attempt::Transport(failure) => (
                self.jittered(failures, jitter),
                None,
                FinalOutcome::failed(failure.kind.class(), failure.detail),
            ),
        };
        if failures >= self.max_attempts {
            return Next::Finish(last);
        }
        if now + delay >= expires_at {
            return Next::Finish(FinalOutcome::failed(FailureClass::Expired, ""));
        }
        Next::Retry { delay, pause_origin }
    }

    /// Whether a delivery held back by throttling for `throttled_for` is past its deadline and
    /// finishes as [`throttled_out`] without another request.
    pub fn throttled_out(&self, throttled_for: Duration) -> bool {
        throttled_for >= self.throttle_deadline
    }

    /// Full jitter: uniform in [0, min(max, base * 2^(failures-1))].
    fn jittered(&self, failures: u32, jitter: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let ceiling = self.base_delay.saturating_mul(1 << exponent).min(self.max_delay);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// How a delivery ends that its push service throttled past the throttle deadline; `status`
/// is the last 429/503 (0: it only waited on its origin's pause).
pub fn throttled_out(status: u16) -> FinalOutcome {
    let detail = match status {
        0 => "origin paused past the throttle deadline".to_owned(),
        status => format!("HTTP {status} past the throttle deadline"),
    };
    FinalOutcome::failed(FailureClass::Throttled, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_list_accepted_then_every_class() {
        assert_eq!(FinalOutcome::Accepted.label(), FinalOutcome::LABELS[0]);
        for class in FailureClass::ALL {
            assert_eq!(FinalOutcome::failed(class, "").label(), FinalOutcome::LABELS[1 + class.index()]);
        }
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

    /// `failures` earlier counted failures, never throttled.
    fn after(failures: u32) -> Tries {
        Tries { failures, throttled_for: None }
    }

    fn class_of(next: Next) -> Option<FailureClass> {
        match next {
            Next::Finish(outcome) => outcome.class(),
            Next::Retry { .. } => panic!("retried: {next:?}"),
        }
    }

    #[test]
    fn final_answers_finish_at_once_with_their_class() {
        let p = policy();
        let finish = |outcome| p.next(response(outcome), after(0), NOW, far(), 0.5);
        assert_eq!(finish(PushOutcome::Accepted), Next::Finish(FinalOutcome::Accepted));
        assert_eq!(class_of(finish(PushOutcome::Gone { status: 410 })), Some(FailureClass::Gone));
        assert_eq!(class_of(finish(PushOutcome::Gone { status: 404 })), Some(FailureClass::NotFound));
        assert_eq!(
            finish(PushOutcome::Rejected { status: 403, reason: "BadJwtToken".into() }),
            Next::Finish(FinalOutcome::failed(FailureClass::Unauthorized, "BadJwtToken"))
        );
        assert_eq!(
            class_of(finish(PushOutcome::Rejected { status: 400, reason: "x".into() })),
            Some(FailureClass::Rejected)
        );
        assert_eq!(class_of(finish(PushOutcome::TooLarge)), Some(FailureClass::PayloadTooLarge));
    }

    #[test]
    fn server_errors_back_off_exponentially_with_full_jitter() {
        let p = policy();
        let error = || response(PushOutcome::Retryable { status: 502 });
        assert_eq!(
            p.next(error(), after(0), NOW, far(), 1.0),
            Next::Retry { delay: Duration::from_millis(250), pause_origin: None }
        );
        assert_eq!(
            p.next(error(), after(2), NOW, far(), 1.0),
            Next::Retry { delay: Duration::from_secs(1), pause_origin: None }
        );
        assert_eq!(
            p.next(error(), after(2), NOW, far(), 0.5),
            Next::Retry { delay: Duration::from_millis(500), pause_origin: None }
        );
        assert_eq!(
            p.next(error(), after(4), NOW, far(), 0.0),
            Next::Retry { delay: Duration::ZERO, pause_origin: None }
        );
        let long = RetryPolicy { max_attempts: 100, ..policy() };
        assert_eq!(
            long.next(error(), after(39), NOW, far(), 1.0),
            Next::Retry { delay: Duration::from_secs(60), pause_origin: None }
        );
        assert_eq!(
            p.next(error(), after(5), NOW, far(), 0.3),
            Next::Finish(FinalOutcome::failed(FailureClass::ServerError, "HTTP 502"))
        );
        let reset = || Attempt::Transport(TransportFailure::new(TransportKind::Reset, "connection reset"));
        assert_eq!(
            p.next(reset(), after(4), NOW, far(), 1.0),
            Next::Retry { delay: Duration::from_secs(4), pause_origin: None }
        );
        assert_eq!(
            p.next(reset(), after(5), NOW, far(), 0.3),
            Next::Finish(FinalOutcome::failed(FailureClass::TransportReset, "connection reset"))
        );
    }

    #[test]
    fn transport_failures_keep_their_kind_as_the_class() {
        use TransportKind::*;
        let p = RetryPolicy { max_attempts: 1, ..policy() };
        for (kind, class) in [
            (Connect, FailureClass::TransportConnect),
            (Dns, FailureClass::TransportDns),
            (Tls, FailureClass::TransportTls),
            (Timeout, FailureClass::TransportTimeout),
            (Reset, FailureClass::TransportReset),
            (Protocol, FailureClass::TransportProtocol),
        ] {
            let failed = Attempt::Transport(TransportFailure::new(kind, "x"));
            assert_eq!(class_of(p.next(failed, after(0), NOW, far(), 0.5)), Some(class));
        }
    }

    #[test]
    fn a_refusal_by_the_egress_policy_finishes_at_once() {
        let refused = Attempt::Transport(TransportFailure::new(
            TransportKind::RefusedByPolicy,
            "every address is loopback",
        ));
        assert_eq!(
            policy().next(refused, after(0), NOW, far(), 0.5),
            Next::Finish(FinalOutcome::failed(FailureClass::RefusedByPolicy, "every address is loopback"))
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
            p.next(throttled(Some(Duration::from_secs(7))), Tries::default(), NOW, far(), 0.0),
            Next::Retry { delay: Duration::from_secs(7), pause_origin: Some(Duration::from_secs(7)) }
        );
        assert_eq!(
            p.next(throttled(None), Tries::default(), NOW, far(), 0.0),
            Next::Retry { delay: Duration::from_secs(2), pause_origin: Some(Duration::from_secs(2)) }
        );
        // A huge Retry-After is capped at `max_delay`.
        assert_eq!(
            p.next(
                throttled(Some(Duration::from_secs(999_999_999))),
                Tries::default(),
                NOW,
                NOW + Duration::from_secs(86_400 * 2),
                0.0
            ),
            Next::Retry { delay: Duration::from_secs(60), pause_origin: Some(Duration::from_secs(60)) }
        );
    }

    #[test]
    fn throttling_spends_no_attempts_and_ends_at_the_throttle_deadline() {
        let p = RetryPolicy { throttle_deadline: Duration::from_secs(100), ..policy() };
        let throttled = || {
            response(PushOutcome::Throttled { status: 429, retry_after: Some(Duration::from_secs(999_999)) })
        };
        let held = |secs| Tries { failures: 5, throttled_for: Some(Duration::from_secs(secs)) };
        // Five failures already, one short of `max_attempts`: a 429 still waits, it is no failure.
        assert_eq!(
            p.next(throttled(), held(0), NOW, far(), 0.0),
            Next::Retry { delay: Duration::from_secs(60), pause_origin: Some(Duration::from_secs(60)) }
        );
        // The pause never reaches past the deadline...
        assert_eq!(
            p.next(throttled(), held(70), NOW, far(), 0.0),
            Next::Retry { delay: Duration::from_secs(30), pause_origin: Some(Duration::from_secs(30)) }
        );
        // ...and at the deadline the delivery is throttled out.
        assert_eq!(
            p.next(throttled(), held(100), NOW, far(), 0.0),
            Next::Finish(FinalOutcome::failed(
                FailureClass::Throttled,
                "HTTP 429 past the throttle deadline"
            ))
        );
        assert!(!p.throttled_out(Duration::from_secs(99)) && p.throttled_out(Duration::from_secs(100)));
        // A 429 does not spend attempts: after any number of them, a 500 still has its budget.
        let error = response(PushOutcome::Retryable { status: 500 });
        assert!(matches!(
            p.next(
                error,
                Tries { failures: 0, throttled_for: Some(Duration::from_secs(50)) },
                NOW,
                far(),
                0.0
            ),
            Next::Retry { pause_origin: None, .. }
        ));
    }

    #[test]
    fn nothing_is_retried_past_the_ttl() {
        let p = policy();
        let soon = NOW + Duration::from_secs(5);
        let throttled =
            response(PushOutcome::Throttled { status: 503, retry_after: Some(Duration::from_secs(30)) });
        assert_eq!(
            class_of(p.next(throttled, Tries::default(), NOW, soon, 0.0)),
            Some(FailureClass::Expired)
        );
        // TTL 0: deliver now or never.
        assert_eq!(
            class_of(p.next(response(PushOutcome::Retryable { status: 500 }), after(0), NOW, NOW, 0.0)),
            Some(FailureClass::Expired)
        );
    }
}
