//! The push service's checks on one request, as pure functions of its method, path, headers and
//! body: routing, RFC 8030 headers, VAPID (RFC 8292, and the legacy `WebPush` scheme), and
//! decryption with the subscriber's keys. No hyper, no sockets: the server plumbing calls these.

use std::cell::RefCell;

use http::header::{AUTHORIZATION, CONTENT_ENCODING, HOST};
use http::{HeaderMap, Method, Uri};
use pushfan_webpush::message::MAX_BODY_LEN;
use pushfan_webpush::vapid::{self, VapidError};
use pushfan_webpush::{b64, AesgcmParams, ContentEncoding, UserAgentKeys};
use pushfan_webpush::{Backend, DecryptError};

use crate::stats::Status;

/// Why a request is refused: the status, an Apple-style `reason` word for the JSON body, and
/// for the sender's debugging a sentence of detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The answer.
    pub status: Status,
    /// `{"reason": …}`.
    pub reason: &'static str,
    /// `{"detail": …}` when there is more to say.
    pub detail: Option<String>,
}

impl Rejection {
    /// A refusal without detail.
    pub fn new(status: Status, reason: &'static str) -> Self {
        Self { status, reason, detail: None }
    }

    fn with_detail(status: Status, reason: &'static str, detail: impl ToString) -> Self {
        Self { status, reason, detail: Some(detail.to_string()) }
    }

    /// The JSON body the push service answers with.
    pub fn body(&self) -> String {
        match &self.detail {
            Some(detail) => serde_json::json!({ "reason": self.reason, "detail": detail }).to_string(),
            None => serde_json::json!({ "reason": self.reason }).to_string(),
        }
    }
}

/// Finds the subscriber a request is for: `POST /push/{i}`, optionally under an origin label
/// (`/fcm/push/{i}`), with `i` below `count`.
pub fn route(method: &Method, path: &str, count: u64) -> Result<u64, Rejection> {
    let index = path
        .rsplit_once("/push/")
        .and_then(|(_, index)| index.parse::<u64>().ok())
        .filter(|&index| index < count)
        .ok_or(Rejection::new(Status::NotFound, "NoSuchSubscription"))?;
    if method != Method::POST {
        return Err(Rejection::new(Status::MethodNotAllowed, "MethodNotAllowed"));
    }
    Ok(index)
}

/// A declared body length above what push services accept, caught before reading the body.
pub fn check_content_length(headers: &HeaderMap) -> Result<(), Rejection> {
    let declared =
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_BODY_LEN as u64 => Err(too_large()),
        _ => Ok(()),
    }
}

/// RFC 8030 §7.2: push services must accept at least 4096 bytes and may refuse more with 413.
pub fn too_large() -> Rejection {
    Rejection::new(Status::PayloadTooLarge, "PayloadTooLarge")
}

/// The message headers that matter to the push service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageHeaders<'a> {
    /// `TTL` in seconds.
    pub ttl: u64,
    /// `None` for a message without a payload.
    pub encoding: Option<ContentEncoding>,
    /// For `aesgcm`: the salt and sender key from `Encryption` and `Crypto-Key`.
    pub aesgcm: Option<AesgcmParams>,
    /// `p256ecdsa=` of `Crypto-Key`: the VAPID key of the legacy `WebPush <jwt>` scheme.
    pub legacy_vapid_key: Option<&'a str>,
}

/// Reads `TTL`, `Content-Encoding`, and for `aesgcm` `Encryption` and `Crypto-Key`. A body needs
/// a content encoding; an empty body (a push without payload) needs none.
pub fn message_headers(headers: &HeaderMap, body_len: usize) -> Result<MessageHeaders<'_>, Rejection> {
    let ttl = headers.get("ttl").ok_or(Rejection::new(Status::BadRequest, "MissingTtl"))?;
    let ttl = ttl
        .to_str()
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .ok_or(Rejection::new(Status::BadRequest, "InvalidTtl"))?;
    let encoding = match headers.get(CONTENT_ENCODING) {
        None if body_len == 0 => None,
        None => return Err(Rejection::new(Status::BadRequest, "MissingContentEncoding")),
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<ContentEncoding>().ok())
                .ok_or(Rejection::new(Status::UnsupportedMediaType, "UnsupportedContentEncoding"))?,
        ),
    };
    let crypto_key = headers.get("crypto-key").and_then(|v| v.to_str().ok()).unwrap_or("");
    let legacy_vapid_key = param(crypto_key, "p256ecdsa");
    let aesgcm = match encoding {
        Some(ContentEncoding::Aesgcm) => {
            let encryption = headers.get("encryption").and_then(|v| v.to_str().ok()).unwrap_or("");
            let salt = param(encryption, "salt").and_then(|s| b64::decode(s).ok()?.try_into().ok());
            let dh = param(crypto_key, "dh").and_then(|d| b64::decode(d).ok()?.try_into().ok());
            let (salt, dh) = salt.zip(dh).ok_or(Rejection::new(Status::BadRequest, "MissingAesgcmKeys"))?;
            Some(AesgcmParams { salt, dh })
        }
        _ => None,
    };
    Ok(MessageHeaders { ttl, encoding, aesgcm, legacy_vapid_key })
}

/// A `name=value` parameter of a `Crypto-Key` or `Encryption` header; senders separate them
/// with `;` or `,`.
fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split([';', ',']).find_map(|part| {
        let (key, value) = part.trim().split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// The `aud` a token must carry: this service's origin as the client addressed it, from
/// HTTP/2's `:authority` (or an absolute HTTP/1.1 target) or else `Host`.
pub fn authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority().map(|a| a.as_str()).or_else(|| headers.get(HOST)?.to_str().ok())
}

thread_local! {
    /// The expected audience is built per request; one buffer per thread keeps that free of
    /// allocation.
    static AUDIENCE: RefCell<String> = RefCell::new(String::with_capacity(64));
}

/// Verifies the request's VAPID token against `scheme://authority` at `now_unix`: RFC 8292's
/// `vapid t=…, k=…`, or the legacy `WebPush <jwt>` with the key from `Crypto-Key: p256ecdsa=`.
/// A token whose `exp` is more than `max_lifetime_secs` ahead is refused (Apple allows 1 h).
pub fn check_vapid(
    headers: &HeaderMap,
    legacy_vapid_key: Option<&str>,
    scheme: &str,
    authority: &str,
    now_unix: u64,
    max_lifetime_secs: u64,
) -> Result<(), Rejection> {
    let authorization = headers
        .get(AUTHORIZATION)
        .ok_or(Rejection::new(Status::Unauthorized, "MissingAuthorization"))?
        .to_str()
        .map_err(|_| vapid_rejection(&VapidError::MalformedHeader))?;
    let legacy;
    let authorization = match (authorization.strip_prefix("WebPush "), legacy_vapid_key) {
        (Some(jwt), Some(key)) => {
            legacy = format!("vapid t={}, k={key}", jwt.trim());
            legacy.as_str()
        }
        (Some(_), None) => {
            return Err(Rejection::with_detail(
                Status::Unauthorized,
                "MissingVapidKey",
                "`Authorization: WebPush` needs `Crypto-Key: p256ecdsa=<key>`",
            ))
        }
        (None, _) => authorization,
    };
    AUDIENCE.with_borrow_mut(|audience| {
        audience.clear();
        audience.push_str(scheme);
        audience.push_str("://");
        audience.push_str(authority);
        let token = vapid::verify(authorization, audience, now_unix).map_err(|e| vapid_rejection(&e))?;
        if token.expires_at > now_unix.saturating_add(max_lifetime_secs) {
            return Err(Rejection::with_detail(
                Status::Forbidden,
                "BadJwtExpiration",
                format!(
                    "exp is {} s ahead; this service allows {max_lifetime_secs} s",
                    token.expires_at - now_unix
                ),
            ));
        }
        Ok(())
    })
}

/// Names each VAPID problem the way Apple's push service does (`BadJwtToken`, …), more finely.
fn vapid_rejection(error: &VapidError) -> Rejection {
    let reason = match error {
        VapidError::MalformedHeader => "BadAuthorizationHeader",
        VapidError::InvalidPublicKey => "BadVapidKey",
        VapidError::BadSignature => "BadJwtSignature",
        VapidError::WrongAudience { .. } => "BadJwtAudience",
        VapidError::Expired { .. } => "ExpiredJwtToken",
        VapidError::ExpiresTooLate { .. } => "BadJwtExpiration",
        VapidError::SubjectScheme(_)
        | VapidError::SubjectDoubleMailto
        | VapidError::SubjectLocalhost
        | VapidError::SubjectEmpty => "BadJwtSubject",
        _ => "BadJwtToken",
    };
    Rejection::with_detail(Status::Forbidden, reason, error)
}

/// Decrypts `body` with the subscriber's keys and, when given, compares it with the payload the
/// test sent.
pub fn check_body(
    keys: &UserAgentKeys,
    encoding: ContentEncoding,
    body: &[u8],
    aesgcm: Option<&AesgcmParams>,
    expected: Option<&[u8]>,
) -> Result<(), BodyRejection> {
    let plaintext = keys.decrypt(Backend::AwsLc, encoding, body, aesgcm).map_err(BodyRejection::Decrypt)?;
    match expected {
        Some(expected) if expected != plaintext.as_slice() => Err(BodyRejection::Mismatch),
        _ => Ok(()),
    }
}

/// Why a body was refused; both are answered 400 but counted apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyRejection {
    /// It did not decrypt with the subscriber's keys.
    Decrypt(DecryptError),
    /// It decrypted, but not to the expected payload.
    Mismatch,
}

impl BodyRejection {
    /// The answer.
    pub fn rejection(&self) -> Rejection {
        match self {
            BodyRejection::Decrypt(e) => Rejection::with_detail(Status::BadRequest, "DecryptionFailed", e),
            BodyRejection::Mismatch => Rejection::new(Status::BadRequest, "UnexpectedPayload"),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use pushfan_webpush::vapid::{Subject, VapidKey, VapidSigner};
    use pushfan_webpush::{encrypt, Padding};

    use super::*;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    fn signer() -> VapidSigner {
        VapidSigner::new(VapidKey::generate(), Subject::parse("mailto:ops@example.com").unwrap())
    }

    #[test]
    fn routes_name_a_subscriber_in_range() {
        assert_eq!(route(&Method::POST, "/push/7", 10), Ok(7));
        assert_eq!(route(&Method::POST, "/fcm/push/7", 10), Ok(7));
        assert_eq!(route(&Method::POST, "/push/10", 10).unwrap_err().status, Status::NotFound);
        assert_eq!(route(&Method::POST, "/push/x", 10).unwrap_err().status, Status::NotFound);
        assert_eq!(route(&Method::GET, "/push/1", 10).unwrap_err().status, Status::MethodNotAllowed);
    }

    #[test]
    fn message_headers_need_ttl_and_a_known_encoding() {
        let ok = headers(&[("ttl", "60"), ("content-encoding", "aes128gcm")]);
        let parsed = message_headers(&ok, 100).unwrap();
        assert_eq!((parsed.ttl, parsed.encoding), (60, Some(ContentEncoding::Aes128gcm)));
        assert_eq!(message_headers(&headers(&[("ttl", "0")]), 0).unwrap().encoding, None);

        let reason = |h: HeaderMap| message_headers(&h, 10).unwrap_err();
        assert_eq!(reason(headers(&[("content-encoding", "aes128gcm")])).reason, "MissingTtl");
        assert_eq!(
            reason(headers(&[("ttl", "soon"), ("content-encoding", "aes128gcm")])).reason,
            "InvalidTtl"
        );
        assert_eq!(reason(headers(&[("ttl", "1")])).reason, "MissingContentEncoding");
        let gzip = reason(headers(&[("ttl", "1"), ("content-encoding", "gzip")]));
        assert_eq!((gzip.status, gzip.reason), (Status::UnsupportedMediaType, "UnsupportedContentEncoding"));
        assert_eq!(
            reason(headers(&[("ttl", "1"), ("content-encoding", "aesgcm")])).reason,
            "MissingAesgcmKeys"
        );
        assert_eq!(check_content_length(&headers(&[("content-length", "4097")])), Err(too_large()));
        assert_eq!(check_content_length(&headers(&[("content-length", "4096")])), Ok(()));
    }

    #[test]
    fn vapid_is_checked_against_the_origin_the_client_used() {
        let signer = signer();
        let token = signer.sign("https://127.0.0.1:8443", NOW);
        let h = headers(&[("authorization", &token.authorization)]);
        assert_eq!(check_vapid(&h, None, "https", "127.0.0.1:8443", NOW + 1, DAY), Ok(()));
        let wrong = check_vapid(&h, None, "https", "localhost:8443", NOW + 1, DAY).unwrap_err();
        assert_eq!((wrong.status, wrong.reason), (Status::Forbidden, "BadJwtAudience"));
        let late = check_vapid(&h, None, "https", "127.0.0.1:8443", token.expires_at, DAY).unwrap_err();
        assert_eq!(late.reason, "ExpiredJwtToken");
        let missing = check_vapid(&HeaderMap::new(), None, "https", "127.0.0.1:8443", NOW, DAY).unwrap_err();
        assert_eq!((missing.status, missing.reason), (Status::Unauthorized, "MissingAuthorization"));
        assert!(missing.body().contains(r#""reason":"MissingAuthorization""#));

        let legacy = headers(&[("authorization", &token.legacy_authorization())]);
        let key = token.public_key_base64.as_str();
        assert_eq!(check_vapid(&legacy, Some(key), "https", "127.0.0.1:8443", NOW + 1, DAY), Ok(()));
        let other_key = signer_key_b64();
        let forged =
            check_vapid(&legacy, Some(&other_key), "https", "127.0.0.1:8443", NOW + 1, DAY).unwrap_err();
        assert_eq!(forged.reason, "BadJwtSignature");
        assert_eq!(
            check_vapid(&legacy, None, "https", "127.0.0.1:8443", NOW, DAY).unwrap_err().reason,
            "MissingVapidKey"
        );
        // The signer's default validity is 12 h: fine by RFC 8292, too long for Apple.
        let apple = check_vapid(&h, None, "https", "127.0.0.1:8443", NOW + 1, 3600).unwrap_err();
        assert_eq!((apple.status, apple.reason), (Status::Forbidden, "BadJwtExpiration"));
    }

    fn signer_key_b64() -> String {
        signer().key().public_base64().to_owned()
    }

    #[test]
    fn aesgcm_parameters_come_from_the_headers_and_decrypt() {
        let keys = UserAgentKeys::generate(Backend::AwsLc).unwrap();
        let push =
            encrypt(Backend::AwsLc, keys.subscription_keys(), ContentEncoding::Aesgcm, b"hi", &Padding::None)
                .unwrap();
        let params = push.aesgcm.unwrap();
        let crypto_key = format!("{};p256ecdsa=abc", params.crypto_key_dh());
        let h = headers(&[
            ("ttl", "60"),
            ("content-encoding", "aesgcm"),
            ("encryption", &params.encryption_header()),
            ("crypto-key", &crypto_key),
        ]);
        let parsed = message_headers(&h, push.body.len()).unwrap();
        assert_eq!(parsed.aesgcm, Some(params));
        assert_eq!(parsed.legacy_vapid_key, Some("abc"));
        assert_eq!(
            check_body(&keys, ContentEncoding::Aesgcm, &push.body, Some(&params), Some(b"hi")),
            Ok(())
        );
        assert_eq!(
            check_body(&keys, ContentEncoding::Aesgcm, &push.body, Some(&params), Some(b"ho")),
            Err(BodyRejection::Mismatch)
        );
        let stranger = UserAgentKeys::generate(Backend::AwsLc).unwrap();
        let refused =
            check_body(&stranger, ContentEncoding::Aesgcm, &push.body, Some(&params), None).unwrap_err();
        assert_eq!(refused.rejection().reason, "DecryptionFailed");
    }
}
