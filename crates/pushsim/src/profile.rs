//! How one real push service differs from the others, for a fleet of simulated origins: which
//! VAPID tokens it accepts, how its error bodies look, and how it answers under load.
//!
//! - [`Profile`]: FCM, Mozilla autopush or Apple rules on top of the common checks.
//! - [`Latency`]: the time a service takes to answer: a base, log-normal jitter, and a fraction
//!   of slow answers. Sampled per request with a thread-local generator (no locks).

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;

use crate::check::Rejection;
use crate::stats::Status;

/// Which real push service an origin imitates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    /// The common rules only, JSON `{"reason": …}` bodies.
    #[default]
    Generic,
    /// Firebase Cloud Messaging: plain-text error bodies.
    Fcm,
    /// Mozilla autopush: JSON `{"code", "errno", "error", "message"}` bodies.
    Mozilla,
    /// Apple's Web Push service: tokens valid at most one hour ahead, every token problem
    /// answered 403 `{"reason":"BadJwtToken"}`.
    Apple,
}

/// A profile name that is not one of `generic`, `fcm`, `mozilla`, `apple`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown push-service profile `{0}` (expected generic, fcm, mozilla or apple)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "generic" => Ok(Profile::Generic),
            "fcm" => Ok(Profile::Fcm),
            "mozilla" => Ok(Profile::Mozilla),
            "apple" => Ok(Profile::Apple),
            other => Err(UnknownProfile(other.to_owned())),
        }
    }
}

/// RFC 8292 caps a token's `exp` at 24 hours ahead.
const RFC_MAX_TOKEN_LIFETIME: u64 = 24 * 3600;
/// Apple refuses tokens whose `exp` is more than an hour ahead.
const APPLE_MAX_TOKEN_LIFETIME: u64 = 3600;

impl Profile {
    /// The furthest ahead a VAPID token's `exp` may be, in seconds.
    pub fn max_token_lifetime_secs(self) -> u64 {
        match self {
            Profile::Apple => APPLE_MAX_TOKEN_LIFETIME,
            _ => RFC_MAX_TOKEN_LIFETIME,
        }
    }

    /// How this service words a refused VAPID token. Apple does not say which part was wrong.
    pub fn vapid_rejection(self, rejection: Rejection) -> Rejection {
        match self {
            Profile::Apple => Rejection::new(Status::Forbidden, "BadJwtToken"),
            _ => rejection,
        }
    }

    /// The content type and body of an error answer.
    pub fn error_body(self, status: Status, reason: &str, detail: Option<&str>) -> (&'static str, Bytes) {
        let json = |value: serde_json::Value| ("application/json", Bytes::from(value.to_string()));
        match self {
            Profile::Generic => match detail {
                Some(detail) => json(serde_json::json!({ "reason": reason, "detail": detail })),
                None => json(serde_json::json!({ "reason": reason })),
            },
            Profile::Apple => json(serde_json::json!({ "reason": reason })),
            Profile::Fcm => {
                let text = match detail {
                    Some(detail) => format!("{reason}: {detail}\n"),
                    None => format!("{reason}\n"),
                };
                ("text/plain; charset=utf-8", Bytes::from(text))
            }
            Profile::Mozilla => json(serde_json::json!({
                "code": status.code(),
                "errno": autopush_errno(status),
                "error": reason,
                "message": detail.unwrap_or(reason),
            })),
        }
    }
}

/// autopush's documented error numbers for the answers the simulation gives.
fn autopush_errno(status: Status) -> u16 {
    match status {
        Status::NotFound => 102,
        Status::PayloadTooLarge => 104,
        Status::Gone => 106,
        Status::Unauthorized | Status::Forbidden => 109,
        Status::TooManyRequests => 201,
        _ => 999,
    }
}

/// How long the service takes before answering, drawn per request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    /// Always waited.
    pub base: Duration,
    /// Log-normal jitter added to `base`: `median · e^(sigma · N(0,1))`; `None` for none.
    pub jitter: Option<LogNormal>,
    /// The fraction of requests, `0.0..=1.0`, that wait `slow` on top (a slow backend).
    pub slow_fraction: f64,
    /// The extra wait of a slow answer.
    pub slow: Duration,
}

/// A log-normal distribution by its median and shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogNormal {
    /// Half the draws are below this.
    pub median: Duration,
    /// The spread of the underlying normal; 0.5 gives p99 ≈ 3.2 × the median.
    pub sigma: f64,
}

impl Latency {
    /// No wait at all.
    pub fn is_zero(&self) -> bool {
        self.base.is_zero() && self.jitter.is_none() && (self.slow_fraction <= 0.0 || self.slow.is_zero())
    }

    /// One draw.
    pub fn sample(&self) -> Duration {
        let mut wait = self.base;
        if let Some(jitter) = self.jitter {
            let factor = (jitter.sigma * standard_normal()).exp();
            wait += jitter.median.mul_f64(factor.min(1e3));
        }
        if self.slow_fraction > 0.0 && fastrand::f64() < self.slow_fraction {
            wait += self.slow;
        }
        wait
    }
}

/// A standard normal draw by Box–Muller.
fn standard_normal() -> f64 {
    // 1 - u is in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - fastrand::f64();
    let u2 = fastrand::f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_word_errors_their_way() {
        assert_eq!("apple".parse::<Profile>(), Ok(Profile::Apple));
        assert_eq!("gcm".parse::<Profile>(), Err(UnknownProfile("gcm".into())));
        let refused = Rejection::new(Status::Forbidden, "BadJwtAudience");
        assert_eq!(Profile::Apple.vapid_rejection(refused.clone()).reason, "BadJwtToken");
        assert_eq!(Profile::Fcm.vapid_rejection(refused.clone()), refused);
        assert_eq!(Profile::Apple.max_token_lifetime_secs(), 3600);

        let (kind, body) = Profile::Mozilla.error_body(Status::Gone, "Unregistered", None);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(kind, "application/json");
        assert_eq!((body["code"].as_u64(), body["errno"].as_u64()), (Some(410), Some(106)));
        let (kind, body) = Profile::Fcm.error_body(Status::NotFound, "NotFound", Some("expired"));
        assert_eq!((kind, &body[..]), ("text/plain; charset=utf-8", &b"NotFound: expired\n"[..]));
        let (_, body) = Profile::Apple.error_body(Status::Forbidden, "BadJwtToken", Some("hidden"));
        assert_eq!(&body[..], br#"{"reason":"BadJwtToken"}"#);
    }

    #[test]
    fn latency_draws_follow_the_model() {
        assert!(Latency::default().is_zero());
        assert_eq!(Latency::default().sample(), Duration::ZERO);
        let fixed = Latency { base: Duration::from_millis(3), ..Latency::default() };
        assert_eq!(fixed.sample(), Duration::from_millis(3));

        let median = Duration::from_millis(10);
        let model = Latency {
            jitter: Some(LogNormal { median, sigma: 0.5 }),
            slow_fraction: 0.1,
            slow: Duration::from_secs(1),
            ..Latency::default()
        };
        let mut draws: Vec<Duration> = (0..20_000).map(|_| model.sample()).collect();
        let slow = draws.iter().filter(|d| **d >= Duration::from_secs(1)).count();
        assert!((1_600..2_400).contains(&slow), "{slow} slow draws of 20000");
        draws.retain(|d| *d < Duration::from_secs(1));
        draws.sort();
        let observed = draws[draws.len() / 2];
        assert!(observed > Duration::from_millis(9) && observed < Duration::from_millis(11), "{observed:?}");
    }
}
