//! RFC 8030 push message delivery: the request a push service expects, and what its answer means.
//!
//! [`classify`] is the one place that decides what a status code means; the gateway, the
//! simulated push service's tests and the statistics all go through it.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request};

use crate::message::{ContentEncoding, EncryptedPush};
use crate::subscription::Endpoint;
use crate::vapid::VapidToken;

/// Four weeks, the TTL most senders default to and push services cap at.
pub const DEFAULT_TTL: u32 = 28 * 24 * 60 * 60;
/// RFC 8030 §5.4: a `Topic` is at most 32 characters of the base64url alphabet.
pub const MAX_TOPIC_LEN: usize = 32;
/// The longest push-service reason kept: enough to diagnose, short enough to store per failure.
const MAX_REASON_LEN: usize = 200;

/// Why no request could be built for a push. Retrying cannot help: the same endpoint and
/// options fail the same way, so the delivery is final.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The endpoint is not a URI an HTTP request can carry. [`Endpoint::parse`] refuses such
    /// endpoints, so only one that bypassed it (a damaged record) gets here.
    #[error("endpoint {0} is not a valid request URI")]
    InvalidUri(String),
    /// A header value that HTTP cannot carry.
    #[error("header `{0}` has a value HTTP cannot carry")]
    InvalidHeader(&'static str),
}

/// What is wrong with push options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("topic must be 1 to 32 characters, got {0}")]
    TopicLength(usize),
    #[error("topic may only use the base64url alphabet (A-Z a-z 0-9 - _), found {0:?}")]
    TopicCharacter(char),
    #[error("urgency must be very-low, low, normal or high, got `{0}`")]
    Urgency(String),
}

/// RFC 8030 §5.3 `Urgency`: lets the user agent save battery on less urgent messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Urgency {
    VeryLow,
    Low,
    #[default]
    Normal,
    High,
}

impl Urgency {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

impl FromStr for Urgency {
    type Err = OptionsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Urgency::VeryLow, Urgency::Low, Urgency::Normal, Urgency::High]
            .into_iter()
            .find(|u| u.as_str() == s)
            .ok_or_else(|| OptionsError::Urgency(s.to_owned()))
    }
}

impl fmt::Display for Urgency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 8030 §5.4 `Topic`: a newer message with the same topic replaces an undelivered one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Topic(String);

impl Topic {
    /// Validates length and alphabet.
    pub fn parse(text: &str) -> Result<Self, OptionsError> {
        if text.is_empty() || text.len() > MAX_TOPIC_LEN {
            return Err(OptionsError::TopicLength(text.chars().count()));
        }
        if let Some(bad) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(OptionsError::TopicCharacter(bad));
        }
        Ok(Self(text.to_owned()))
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The per-message delivery options of RFC 8030.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushOptions {
    /// Seconds the push service should keep the message for an offline user agent; 0 means
    /// deliver now or never.
    pub ttl: u32,
    /// Delivery urgency.
    pub urgency: Urgency,
    /// Replaces an undelivered message with the same topic.
    pub topic: Option<Topic>,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self { ttl: DEFAULT_TTL, urgency: Urgency::Normal, topic: None }
    }
}

const TTL: HeaderName = HeaderName::from_static("ttl");
const URGENCY: HeaderName = HeaderName::from_static("urgency");
const TOPIC: HeaderName = HeaderName::from_static("topic");
const ENCRYPTION: HeaderName = HeaderName::from_static("encryption");
const CRYPTO_KEY: HeaderName = HeaderName::from_static("crypto-key");

/// The `TTL` header of an attempt at a message asked to live `requested` seconds until
/// `expires_at`: the first attempt sends exactly what was asked; a retry sends what is left,
/// rounded up (a message with 0.3 s left may still be delivered, so it is never 0 unless 0 was
/// asked), and never more than was asked.
pub fn ttl_header(requested: u32, expires_at: SystemTime, now: SystemTime, first_attempt: bool) -> u32 {
    if first_attempt || requested == 0 {
        return requested;
    }
    let left = expires_at.duration_since(now).unwrap_or(Duration::ZERO);
    let seconds = left.as_secs().saturating_add(u64::from(left.subsec_nanos() > 0));
    u32::try_from(seconds).unwrap_or(u32::MAX).clamp(1, requested)
}

/// The `POST` to a subscription's endpoint carrying `push`, signed with `vapid`. `ttl` is the
/// `TTL` header ([`ttl_header`]).
pub fn build_request(
    endpoint: &Endpoint,
    push: &EncryptedPush,
    options: &PushOptions,
    ttl: u32,
    vapid: &VapidToken,
) -> Result<Request<Bytes>, RequestError> {
    let uri =
        http::Uri::try_from(endpoint.as_str()).map_err(|_| RequestError::InvalidUri(endpoint.redacted()))?;
    let mut request = Request::new(push.body.clone());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    // Room for every header below at once, rather than growing the map twice per push; header
    // names as constants, not parsed from text per push.
    headers.reserve(10);
    headers.insert(TTL, HeaderValue::from(ttl));
    headers.insert(URGENCY, HeaderValue::from_static(options.urgency.as_str()));
    if let Some(topic) = &options.topic {
        headers.insert(TOPIC, header_value(topic.as_str(), "topic")?);
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(push.encoding.as_str()));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(push.body.len()));
    match (push.encoding, &push.aesgcm) {
        (ContentEncoding::Aesgcm, Some(params)) => {
            headers.insert(AUTHORIZATION, header_value(&vapid.legacy_authorization(), "authorization")?);
            headers.insert(ENCRYPTION, header_value(&params.encryption_header(), "encryption")?);
            let crypto_key = format!("{};p256ecdsa={}", params.crypto_key_dh(), vapid.public_key_base64);
            headers.insert(CRYPTO_KEY, header_value(&crypto_key, "crypto-key")?);
        }
        _ => {
            headers.insert(AUTHORIZATION, vapid.authorization_header.clone());
        }
    }
    Ok(request)
}

/// Every value put in a header here is base64url, digits or fixed ASCII; a value that is not
/// fails its request rather than the process.
fn header_value(text: &str, name: &'static str) -> Result<HeaderValue, RequestError> {
    HeaderValue::from_str(text).map_err(|_| RequestError::InvalidHeader(name))
}

/// What a push service's answer means for the message and the subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// 2xx (201 Created, or 202 with a receipt): the push service took the message.
    Accepted,
    /// 404 or 410: the subscription is gone; delete it.
    Gone { status: u16 },
    /// 413: the body is too large for this push service; retrying cannot help.
    TooLarge,
    /// The push service refused this request (400, 401, 403, other 4xx): fix the sender,
    /// retrying the same request cannot help. Apple's 403 `BadJwtToken` lands here.
    Rejected { status: u16, reason: String },
    /// 429 or 503: slow down this push service; retry after the given time if it said one.
    Throttled { status: u16, retry_after: Option<Duration> },
    /// Other 5xx: a transient failure; retry with backoff.
    Retryable { status: u16 },
}

impl PushOutcome {
    /// Every value [`PushOutcome::label`] gives.
    pub const LABELS: [&'static str; 6] =
        ["accepted", "gone", "too_large", "rejected", "throttled", "retryable"];

    /// A short label for metrics and statistics.
    pub fn label(&self) -> &'static str {
        match self {
            PushOutcome::Accepted => "accepted",
            PushOutcome::Gone { .. } => "gone",
            PushOutcome::TooLarge => "too_large",
            PushOutcome::Rejected { .. } => "rejected",
            PushOutcome::Throttled { .. } => "throttled",
            PushOutcome::Retryable { .. } => "retryable",
        }
    }
}

/// Classifies a push service's response. `retry_after` is the raw `Retry-After` header (seconds
/// or an HTTP date, read against `now`); `body` may carry the push service's reason.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8], now: SystemTime) -> PushOutcome {
    match status {
        200..=299 => PushOutcome::Accepted,
        404 | 410 => PushOutcome::Gone { status },
        413 => PushOutcome::TooLarge,
        429 | 503 => PushOutcome::Throttled {
            status,
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        500..=599 => PushOutcome::Retryable { status },
        _ => PushOutcome::Rejected { status, reason: reason(body) },
    }
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3); a date in the past is zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The push service's own words: `reason` (Apple), `message` or `error` (Mozilla, FCM JSON), else
/// the text itself; cut short and stripped of control characters.
fn reason(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let from_json = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|json| {
        ["reason", "message", "error"].into_iter().find_map(|field| {
            json.get(field).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_owned)
        })
    });
    let reason = from_json.unwrap_or_else(|| text.trim().to_owned());
    reason.chars().filter(|c| !c.is_control()).take(MAX_REASON_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{encrypt, Padding};
    use crate::vapid::{Subject, VapidKey, VapidSigner};
    use crate::{Backend, EndpointPolicy, UserAgentKeys};

    #[test]
    fn labels_lists_every_outcome_label() {
        let outcomes = [
            PushOutcome::Accepted,
            PushOutcome::Gone { status: 410 },
            PushOutcome::TooLarge,
            PushOutcome::Rejected { status: 400, reason: String::new() },
            PushOutcome::Throttled { status: 429, retry_after: None },
            PushOutcome::Retryable { status: 500 },
        ];
        assert_eq!(outcomes.map(|o| o.label()), PushOutcome::LABELS);
    }

    #[test]
    fn statuses_map_to_what_the_sender_must_do() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(classify(201, None, b"", now), PushOutcome::Accepted);
        assert_eq!(classify(202, None, b"", now), PushOutcome::Accepted);
        assert_eq!(classify(404, None, b"", now), PushOutcome::Gone { status: 404 });
        assert_eq!(classify(410, None, b"", now), PushOutcome::Gone { status: 410 });
        assert_eq!(classify(413, None, b"", now), PushOutcome::TooLarge);
        assert_eq!(
            classify(403, None, br#"{"reason":"BadJwtToken"}"#, now),
            PushOutcome::Rejected { status: 403, reason: "BadJwtToken".into() }
        );
        assert_eq!(
            classify(
                400,
                None,
                br#"{"code":400,"errno":110,"error":"Bad Request","message":"Invalid aes128gcm"}"#,
                now
            ),
            PushOutcome::Rejected { status: 400, reason: "Invalid aes128gcm".into() }
        );
        assert_eq!(
            classify(400, None, b"<html>\n<b>UnauthorizedRegistration</b></html>", now),
            PushOutcome::Rejected {
                status: 400,
                reason: "<html><b>UnauthorizedRegistration</b></html>".into()
            }
        );
        assert_eq!(
            classify(429, Some("120"), b"", now),
            PushOutcome::Throttled { status: 429, retry_after: Some(Duration::from_secs(120)) }
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            classify(503, Some(&date), b"", now),
            PushOutcome::Throttled { status: 503, retry_after: Some(Duration::from_secs(30)) }
        );
        assert_eq!(
            classify(429, Some("soon"), b"", now),
            PushOutcome::Throttled { status: 429, retry_after: None }
        );
        assert_eq!(classify(502, None, b"", now), PushOutcome::Retryable { status: 502 });
        let long = "x".repeat(1000);
        match classify(400, None, long.as_bytes(), now) {
            PushOutcome::Rejected { reason, .. } => assert_eq!(reason.len(), MAX_REASON_LEN),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn first_attempts_send_the_ttl_asked_and_retries_what_is_left_rounded_up() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let after = |millis: u64| now + Duration::from_millis(millis);
        // A first attempt is sent as soon as the message's expiry is computed, so a little of
        // it has always passed: the header is still what was asked.
        assert_eq!(ttl_header(120, after(119_990), now, true), 120);
        assert_eq!(ttl_header(1, after(990), now, true), 1);
        assert_eq!(ttl_header(0, now, now, true), 0);
        assert_eq!(ttl_header(0, now, after(5_000), false), 0);
        assert_eq!(ttl_header(120, after(119_200), now, false), 120);
        assert_eq!(ttl_header(120, after(60_000), now, false), 60);
        assert_eq!(ttl_header(120, after(300), now, false), 1);
        assert_eq!(ttl_header(120, now, after(1_000), false), 1, "expired: the least that is not 0");
        assert_eq!(ttl_header(120, after(500_000), now, false), 120, "never more than asked");
        assert_eq!(ttl_header(u32::MAX, after(u64::MAX / 2), now, false), u32::MAX);
    }

    #[test]
    fn topics_and_urgency_are_validated() {
        assert!(Topic::parse("news-2026_11").is_ok());
        assert_eq!(Topic::parse(&"a".repeat(33)), Err(OptionsError::TopicLength(33)));
        assert_eq!(Topic::parse(""), Err(OptionsError::TopicLength(0)));
        assert_eq!(Topic::parse("news/today"), Err(OptionsError::TopicCharacter('/')));
        assert_eq!("very-low".parse(), Ok(Urgency::VeryLow));
        assert_eq!("urgent".parse::<Urgency>(), Err(OptionsError::Urgency("urgent".into())));
    }

    #[test]
    fn requests_carry_the_rfc8030_and_vapid_headers() {
        let ua = UserAgentKeys::generate(Backend::AwsLc).unwrap();
        let endpoint =
            Endpoint::parse("https://push.example.net/wpush/v2/abc", &EndpointPolicy::default()).unwrap();
        let signer =
            VapidSigner::new(VapidKey::generate(), Subject::parse("mailto:ops@example.com").unwrap());
        let token = signer.sign(endpoint.origin(), 1_800_000_000);
        let options =
            PushOptions { ttl: 60, urgency: Urgency::High, topic: Some(Topic::parse("scores").unwrap()) };

        let push = encrypt(
            Backend::AwsLc,
            ua.subscription_keys(),
            ContentEncoding::Aes128gcm,
            b"hi",
            &Padding::None,
        )
        .unwrap();
        let request = build_request(&endpoint, &push, &options, options.ttl, &token).unwrap();
        let h = request.headers();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "https://push.example.net/wpush/v2/abc");
        assert_eq!(h["ttl"], "60");
        assert_eq!(h["urgency"], "high");
        assert_eq!(h["topic"], "scores");
        assert_eq!(h["content-encoding"], "aes128gcm");
        assert_eq!(h["content-length"], push.body.len().to_string().as_str());
        assert_eq!(h["authorization"], token.authorization.as_str());
        assert!(crate::vapid::verify(
            h["authorization"].to_str().unwrap(),
            "https://push.example.net",
            1_800_000_001
        )
        .is_ok());

        let legacy =
            encrypt(Backend::AwsLc, ua.subscription_keys(), ContentEncoding::Aesgcm, b"hi", &Padding::None)
                .unwrap();
        let request = build_request(&endpoint, &legacy, &options, options.ttl, &token).unwrap();
        let h = request.headers();
        let params = legacy.aesgcm.unwrap();
        assert_eq!(h["content-encoding"], "aesgcm");
        assert_eq!(h["authorization"], format!("WebPush {}", token.jwt).as_str());
        assert_eq!(h["encryption"], params.encryption_header().as_str());
        assert_eq!(
            h["crypto-key"],
            format!("{};p256ecdsa={}", params.crypto_key_dh(), signer.key().public_base64()).as_str()
        );
    }
}
