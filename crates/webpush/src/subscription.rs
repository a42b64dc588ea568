//! The browser's `PushSubscription`: parsing, validation and the redacted endpoint.
//!
//! Everything that enters pushfan as a subscription passes through [`PushSubscription::parse`]
//! or [`PushSubscription::new`], so the rest of the system may assume a valid key on the curve,
//! a 16-byte auth secret and an endpoint the [`EndpointPolicy`] allows.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, LazyLock};

use url::Url;

use crate::b64;
use crate::egress::{EgressError, EgressPolicy};

/// Length of an uncompressed SEC1 P-256 public key (`0x04 || x || y`).
pub const P256_PUBLIC_KEY_LEN: usize = 65;
/// Length of the subscription's authentication secret (RFC 8291 §3.2).
pub const AUTH_SECRET_LEN: usize = 16;
/// The longest endpoint URL accepted, in bytes, before and after normalisation.
///
/// The push services' endpoints are far shorter: FCM's about 150-250 characters, Mozilla
/// autopush's 200-400, Apple's 150-200, Windows WNS's up to about 500. 2048 leaves four times
/// the longest room, is the limit URLs have long been held to in practice, and keeps what one
/// subscription costs bounded: every store record and every delivery on the bus holds the
/// endpoint whole, and an `http::Uri` (which cannot hold 64 KiB) must be able to carry it.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// Why a subscription was refused. Each variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("subscription is not valid JSON: {0}")]
    Json(String),
    #[error("subscription field `{0}` is missing or not a string")]
    MissingField(&'static str),
    #[error("endpoint is not a valid URL: {0}")]
    EndpointNotUrl(String),
    #[error("endpoint must use https, not `{0}`")]
    EndpointNotHttps(String),
    #[error("endpoint has no host")]
    EndpointNoHost,
    #[error("endpoint must not carry credentials")]
    EndpointHasCredentials,
    #[error("endpoint must not carry a fragment")]
    EndpointHasFragment,
    #[error("endpoint is {len} bytes long, more than the {max} allowed")]
    EndpointTooLong { len: usize, max: usize },
    #[error("endpoint is not a URL an HTTP request can carry (its host or path)")]
    EndpointNotRequestUri,
    #[error("endpoint refused: {0}")]
    EndpointRefused(#[from] EgressError),
    #[error("keys.p256dh is not base64url")]
    P256dhNotBase64,
    #[error("keys.p256dh must be a 65-byte uncompressed P-256 point, got {0} bytes")]
    P256dhWrongLength(usize),
    #[error("keys.p256dh is not an uncompressed point (first byte {0:#04x}, expected 0x04)")]
    P256dhNotUncompressed(u8),
    #[error("keys.p256dh is not a point on the P-256 curve")]
    P256dhNotOnCurve,
    #[error("keys.auth is not base64url")]
    AuthNotBase64,
    #[error("keys.auth must be 16 bytes, got {0}")]
    AuthWrongLength(usize),
    #[error("expirationTime must be a non-negative integer of milliseconds, got {0}")]
    BadExpirationTime(String),
}

/// Which endpoints are acceptable. The default accepts only `https` URLs whose host the default
/// [`EgressPolicy`] allows: named hosts that are not local names (no IP literals, no
/// `localhost`, no `*.internal`).
///
/// Plain `http` on loopback exists for the simulated push service in tests and demos; it needs
/// loopback allowed by `egress` as well, which [`EndpointPolicy::allow_http_loopback`] does. The
/// gateway checks the addresses a host resolves to against the same [`EgressPolicy`] when it
/// connects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Also accept `http://` endpoints whose host is a loopback address or `localhost`.
    pub allow_http_loopback: bool,
    /// Which hosts may be sent to; shared with the gateway's connect-time check.
    pub egress: Arc<EgressPolicy>,
}

impl EndpointPolicy {
    /// Accepts `https` and `http` on loopback, and loopback hosts (`127.0.0.0/8`, `::1`,
    /// `localhost`): the simulated push service of tests and the demo.
    pub fn allow_http_loopback() -> Self {
        Self { allow_http_loopback: true, egress: Arc::new(EgressPolicy::allow_loopback()) }
    }

    /// `https` (and `http` on loopback, if `allow_http_loopback`) to the hosts `egress` allows.
    pub fn new(allow_http_loopback: bool, egress: Arc<EgressPolicy>) -> Self {
        Self { allow_http_loopback, egress }
    }

    /// The egress policy endpoints are held to.
    pub fn egress(&self) -> &Arc<EgressPolicy> {
        &self.egress
    }

    /// For reading back endpoints that were validated when written (store records): every
    /// well-formed endpoint, `http` on loopback included, whatever its host. The sender checks
    /// each against its own policy with [`Endpoint::check`] before sending.
    pub fn stored() -> &'static EndpointPolicy {
        static STORED: LazyLock<EndpointPolicy> = LazyLock::new(|| EndpointPolicy {
            allow_http_loopback: true,
            egress: Arc::new(EgressPolicy::unrestricted()),
        });
        &STORED
    }
}

/// A push service endpoint: a secret capability URL.
///
/// `Debug` and `Display` show only the origin and a short fingerprint of the rest, so an endpoint
/// can be logged without leaking the capability; [`Endpoint::as_str`] gives the full URL to the
/// code that sends to it.
///
/// Held as the URL's normalised text plus where its origin ends: the delivery path reads
/// endpoints back from the store and the bus for every push, and parsing each again as a URL
/// cost 2% of pushfan's CPU per push.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    url: Box<str>,
    origin_len: usize,
}

impl Endpoint {
    /// Parses and validates an endpoint URL under `policy`: what this accepts, an HTTP request
    /// can always be built for ([`crate::build_request`]).
    pub fn parse(raw: &str, policy: &EndpointPolicy) -> Result<Self, SubscriptionError> {
        // Before parsing, so that an oversized input costs no parse; and after, since
        // normalisation (percent-encoding, punycode) can lengthen it.
        let too_long = |len: usize| SubscriptionError::EndpointTooLong { len, max: MAX_ENDPOINT_LEN };
        if raw.len() > MAX_ENDPOINT_LEN {
            return Err(too_long(raw.len()));
        }
        let url = Url::parse(raw).map_err(|e| SubscriptionError::EndpointNotUrl(e.to_string()))?;
        if url.as_str().len() > MAX_ENDPOINT_LEN {
            return Err(too_long(url.as_str().len()));
        }
        let host = url.host().ok_or(SubscriptionError::EndpointNoHost)?;
        match url.scheme() {
            "https" => {}
            "http" if policy.allow_http_loopback && is_loopback(&host) => {}
            other => return Err(SubscriptionError::EndpointNotHttps(other.to_owned())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SubscriptionError::EndpointHasCredentials);
        }
        if url.fragment().is_some() {
            return Err(SubscriptionError::EndpointHasFragment);
        }
        // The URL standard lets through hosts an HTTP request cannot carry (`a{b.example`): the
        // request must be buildable from exactly this text, naming the same host, port and path.
        let uri = http::Uri::try_from(url.as_str()).map_err(|_| SubscriptionError::EndpointNotRequestUri)?;
        let same = uri.authority().map(|a| a.as_str())
            == Some(&url[url::Position::BeforeHost..url::Position::AfterPort])
            && uri.path_and_query().map(|p| p.as_str())
                == Some(&url[url::Position::BeforePath..url::Position::AfterQuery]);
        if !same {
            return Err(SubscriptionError::EndpointNotRequestUri);
        }
        policy.egress.check_host(&host)?;
        // For http(s) without credentials, the serialisation up to the path is exactly the
        // origin's (default ports are dropped, the host is normalised).
        let origin_len = url[..url::Position::BeforePath].len();
        Ok(Self { url: url.as_str().into(), origin_len })
    }

    /// An endpoint as [`Endpoint::as_str`] gave it out (read back from the store or the bus):
    /// the scheme, the policy and the shape of the origin are checked here, the rest was
    /// validated by [`Endpoint::parse`] before it was written. Text that does not look like
    /// that goes through the full parse, which names what is wrong with it.
    pub fn from_serialized(
        text: impl Into<String>,
        policy: &EndpointPolicy,
    ) -> Result<Self, SubscriptionError> {
        let text = text.into();
        match Self::serialized_origin_len(&text, policy) {
            Some(origin_len) => Ok(Self { url: text.into_boxed_str(), origin_len }),
            None => Self::parse(&text, policy),
        }
    }

    /// Checks an endpoint read back under a looser policy than the sender's (the store reads
    /// every well-formed endpoint, [`EndpointPolicy::stored`]) against `policy`, failing as
    /// [`Endpoint::parse`] would.
    pub fn check(&self, policy: &EndpointPolicy) -> Result<(), SubscriptionError> {
        if self.url.starts_with("http://") && !policy.allow_http_loopback {
            return Err(SubscriptionError::EndpointNotHttps("http".into()));
        }
        let host = self.host().ok_or(SubscriptionError::EndpointNoHost)?;
        policy.egress.check_host(&host)?;
        Ok(())
    }

    /// The host, as the URL parser normalised it.
    pub fn host(&self) -> Option<url::Host<&str>> {
        let (_, authority) = self.origin().split_once("://")?;
        if let Some(bracketed) = authority.strip_prefix('[') {
            let (v6, _) = bracketed.split_once(']')?;
            return v6.parse::<Ipv6Addr>().ok().map(url::Host::Ipv6);
        }
        let host = authority.rsplit_once(':').map_or(authority, |(host, _port)| host);
        // A normalised URL writes every IPv4 host in dotted-decimal form, and no name as one.
        Some(host.parse::<Ipv4Addr>().map_or(url::Host::Domain(host), url::Host::Ipv4))
    }

    /// Where the origin of a normalised http(s) URL ends, if `text` is one `policy` allows.
    fn serialized_origin_len(text: &str, policy: &EndpointPolicy) -> Option<usize> {
        if text.len() > MAX_ENDPOINT_LEN {
            return None;
        }
        let (scheme_len, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (8, rest)
        } else {
            (7, text.strip_prefix("http://").filter(|_| policy.allow_http_loopback)?)
        };
        // A normalised http(s) URL always has a path, so the origin ends at the first '/'.
        let authority = &rest[..rest.find('/')?];
        let default_port = if scheme_len == 8 { 443 } else { 80 };
        let host = match authority.rsplit_once(':') {
            // As written by a parser: no default port, no leading zeros.
            Some((host, port)) => match port.parse::<u16>() {
                Ok(number) if number != default_port && !port.starts_with('0') => host,
                _ => return None,
            },
            None => authority,
        };
        let normalised_host =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-');
        if !host.bytes().all(normalised_host) || host.split('.').any(str::is_empty) {
            return None;
        }
        // Hosts a URL parser would rewrite: numbers (IPv4 in any notation) unless already in
        // dotted-decimal form (which the standard library's parser insists on), and IDNA
        // labels, which it would check.
        let numeric = |label: &str| label.bytes().all(|b| b.is_ascii_digit()) || label.starts_with("0x");
        if host.split('.').any(numeric) && host.parse::<std::net::Ipv4Addr>().is_err() {
            return None;
        }
        if host.contains("xn--") || (scheme_len == 7 && !is_loopback_name(host)) {
            return None;
        }
        let parsed_host = host.parse::<Ipv4Addr>().map_or(url::Host::Domain(host), url::Host::Ipv4);
        if policy.egress.check_host(&parsed_host).is_err() {
            return None;
        }
        // The path and query as a parser leaves them: nothing it would percent-encode, no
        // fragment, no dot segments (`%2e` is a dot to it, so any is sent the long way).
        let path = &rest[authority.len()..];
        let kept = |b: u8| {
            matches!(b, b'!'..=b'~')
                && !matches!(b, b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}' | b'\'' | b'#')
        };
        let encoded_dot =
            path.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'2' && w[2] | 0x20 == b'e');
        let before_query = path.split('?').next().unwrap_or_default();
        let dot_segment = before_query.split('/').any(|segment| segment == "." || segment == "..");
        if !path.bytes().all(kept) || encoded_dot || dot_segment {
            return None;
        }
        Some(scheme_len + authority.len())
    }

    /// The full URL. Treat it as a secret: do not log it.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// `scheme://host[:port]`, the VAPID audience and the key for per-push-service state.
    pub fn origin(&self) -> &str {
        &self.url[..self.origin_len]
    }

    /// The origin plus a fingerprint of the secret part, safe for logs and error messages.
    pub fn redacted(&self) -> String {
        format!("{}/…#{:08x}", self.origin(), fnv1a(self.url.as_bytes()) as u32)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Endpoint").field(&self.redacted()).finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `localhost` or a dotted IPv4 loopback address, as a normalised URL writes them.
fn is_loopback_name(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// A short, stable, non-cryptographic fingerprint: enough to tell endpoints apart in logs
/// without revealing them.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The user agent's keys: what a sender needs to encrypt for one subscription.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SubscriptionKeys {
    p256dh: [u8; P256_PUBLIC_KEY_LEN],
    auth: [u8; AUTH_SECRET_LEN],
}

impl SubscriptionKeys {
    /// Validates raw key bytes: `p256dh` must be an uncompressed point on P-256, `auth` 16 bytes.
    pub fn from_bytes(p256dh: &[u8], auth: &[u8]) -> Result<Self, SubscriptionError> {
        let p256dh = validate_p256dh(p256dh)?;
        let auth: [u8; AUTH_SECRET_LEN] =
            auth.try_into().map_err(|_| SubscriptionError::AuthWrongLength(auth.len()))?;
        Ok(Self { p256dh, auth })
    }

    /// Keys read back from storage that validated them when they were written. Only the
    /// uncompressed-point prefix is checked: both encryption backends check the point is on the
    /// curve again before using it, so a damaged key fails its encryption, not silently.
    pub fn from_stored(
        p256dh: [u8; P256_PUBLIC_KEY_LEN],
        auth: [u8; AUTH_SECRET_LEN],
    ) -> Result<Self, SubscriptionError> {
        if p256dh[0] != 0x04 {
            return Err(SubscriptionError::P256dhNotUncompressed(p256dh[0]));
        }
        Ok(Self { p256dh, auth })
    }

    /// Decodes and validates the base64url strings a browser gives (padding optional).
    pub fn from_base64(p256dh: &str, auth: &str) -> Result<Self, SubscriptionError> {
        let p256dh = b64::decode(p256dh).map_err(|_| SubscriptionError::P256dhNotBase64)?;
        let auth = b64::decode(auth).map_err(|_| SubscriptionError::AuthNotBase64)?;
        Self::from_bytes(&p256dh, &auth)
    }

    /// The user agent's public key, 65 bytes uncompressed.
    pub fn p256dh(&self) -> &[u8; P256_PUBLIC_KEY_LEN] {
        &self.p256dh
    }

    /// The authentication secret.
    pub fn auth(&self) -> &[u8; AUTH_SECRET_LEN] {
        &self.auth
    }
}

impl fmt::Debug for SubscriptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The auth secret is a secret; the public key is not, but it identifies a user agent.
        f.debug_struct("SubscriptionKeys").finish_non_exhaustive()
    }
}

fn validate_p256dh(bytes: &[u8]) -> Result<[u8; P256_PUBLIC_KEY_LEN], SubscriptionError> {
    let key: [u8; P256_PUBLIC_KEY_LEN] =
        bytes.try_into().map_err(|_| SubscriptionError::P256dhWrongLength(bytes.len()))?;
    if key[0] != 0x04 {
        return Err(SubscriptionError::P256dhNotUncompressed(key[0]));
    }
    p256::PublicKey::from_sec1_bytes(&key).map_err(|_| SubscriptionError::P256dhNotOnCurve)?;
    Ok(key)
}

/// A validated `PushSubscription`, as `PushSubscription.toJSON()` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSubscription {
    /// Where to send; a secret.
    pub endpoint: Endpoint,
    /// The keys to encrypt for.
    pub keys: SubscriptionKeys,
    /// When the push service will expire the subscription, in milliseconds since the Unix epoch.
    pub expiration_time: Option<u64>,
}

impl PushSubscription {
    /// Parses the JSON of `PushSubscription.toJSON()` and validates every field.
    pub fn parse(json: &str, policy: &EndpointPolicy) -> Result<Self, SubscriptionError> {
        let raw: serde_json::Value =
            serde_json::from_str(json).map_err(|e| SubscriptionError::Json(e.to_string()))?;
        fn text<'a>(
            value: Option<&'a serde_json::Value>,
            name: &'static str,
        ) -> Result<&'a str, SubscriptionError> {
            value.and_then(|v| v.as_str()).ok_or(SubscriptionError::MissingField(name))
        }
        let endpoint = text(raw.get("endpoint"), "endpoint")?;
        let keys = raw.get("keys");
        let p256dh = text(keys.and_then(|k| k.get("p256dh")), "keys.p256dh")?;
        let auth = text(keys.and_then(|k| k.get("auth")), "keys.auth")?;
        let expiration_time = match raw.get("expirationTime") {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => {
                Some(value.as_u64().ok_or_else(|| SubscriptionError::BadExpirationTime(value.to_string()))?)
            }
        };
        let mut subscription = Self::new(endpoint, p256dh, auth, policy)?;
        subscription.expiration_time = expiration_time;
        Ok(subscription)
    }

    /// Validates the three fields a subscription is made of.
    pub fn new(
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        policy: &EndpointPolicy,
    ) -> Result<Self, SubscriptionError> {
        Ok(Self {
            endpoint: Endpoint::parse(endpoint, policy)?,
            keys: SubscriptionKeys::from_base64(p256dh, auth)?,
            expiration_time: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8291 Appendix A.
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const ENDPOINT: &str = "https://fcm.googleapis.com/fcm/send/dGhpcyBpcyBzZWNyZXQ:APA91bH";

    #[test]
    fn stored_keys_off_the_curve_fail_their_encryption_on_every_backend() {
        let valid = SubscriptionKeys::from_base64(UA_PUBLIC, AUTH).unwrap();
        assert_eq!(SubscriptionKeys::from_stored(*valid.p256dh(), *valid.auth()).unwrap(), valid);
        let mut damaged = *valid.p256dh();
        damaged[64] ^= 1;
        let stored = SubscriptionKeys::from_stored(damaged, *valid.auth()).unwrap();
        for backend in crate::Backend::ALL {
            let result = crate::encrypt(
                backend,
                &stored,
                crate::ContentEncoding::Aes128gcm,
                b"hi",
                &crate::Padding::None,
            );
            assert!(result.is_err(), "{backend:?} encrypted for a point off the curve");
        }
        let mut hybrid = *valid.p256dh();
        hybrid[0] = 0x06;
        assert_eq!(
            SubscriptionKeys::from_stored(hybrid, *valid.auth()),
            Err(SubscriptionError::P256dhNotUncompressed(0x06))
        );
    }

    fn json(endpoint: &str, p256dh: &str, auth: &str) -> String {
        format!(
            r#"{{"endpoint":"{endpoint}","expirationTime":null,"keys":{{"p256dh":"{p256dh}","auth":"{auth}"}}}}"#
        )
    }

    fn parse(endpoint: &str, p256dh: &str, auth: &str) -> Result<PushSubscription, SubscriptionError> {
        PushSubscription::parse(&json(endpoint, p256dh, auth), &EndpointPolicy::default())
    }

    #[test]
    fn parses_a_browser_subscription() {
        let sub = parse(ENDPOINT, UA_PUBLIC, AUTH).unwrap();
        assert_eq!(sub.endpoint.as_str(), ENDPOINT);
        assert_eq!(sub.endpoint.origin(), "https://fcm.googleapis.com");
        assert_eq!(sub.keys.p256dh()[0], 4);
        assert_eq!(sub.expiration_time, None);
    }

    #[test]
    fn accepts_padded_base64url_and_an_expiration_time() {
        let json = format!(
            r#"{{"endpoint":"{ENDPOINT}","expirationTime":1700000000000,"keys":{{"p256dh":"{UA_PUBLIC}=","auth":"{AUTH}=="}}}}"#
        );
        let sub = PushSubscription::parse(&json, &EndpointPolicy::default()).unwrap();
        assert_eq!(sub.expiration_time, Some(1_700_000_000_000));
    }

    #[test]
    fn every_malformed_field_is_named() {
        use SubscriptionError::*;
        let short_key = &UA_PUBLIC[..40];
        let off_curve = {
            let mut key = b64::decode(UA_PUBLIC).unwrap();
            key[64] ^= 1;
            b64::encode(&key)
        };
        let compressed = {
            let mut key = b64::decode(UA_PUBLIC).unwrap();
            key[0] = 2;
            b64::encode(&key)
        };
        let auth15 = b64::encode(&[7u8; 15]);
        let cases: Vec<(Result<PushSubscription, SubscriptionError>, SubscriptionError)> = vec![
            (parse("http://push.example/x", UA_PUBLIC, AUTH), EndpointNotHttps("http".into())),
            (parse("not a url", UA_PUBLIC, AUTH), EndpointNotUrl("relative URL without a base".into())),
            (parse("https://u:p@push.example/x", UA_PUBLIC, AUTH), EndpointHasCredentials),
            (parse(ENDPOINT, short_key, AUTH), P256dhWrongLength(30)),
            (parse(ENDPOINT, &off_curve, AUTH), P256dhNotOnCurve),
            (parse(ENDPOINT, &compressed, AUTH), P256dhNotUncompressed(2)),
            (parse(ENDPOINT, "***", AUTH), P256dhNotBase64),
            (parse(ENDPOINT, UA_PUBLIC, &auth15), AuthWrongLength(15)),
            (parse(ENDPOINT, UA_PUBLIC, "@@"), AuthNotBase64),
        ];
        for (got, want) in cases {
            assert_eq!(got.unwrap_err(), want);
        }
        let parse_json = |json: &str| PushSubscription::parse(json, &EndpointPolicy::default()).unwrap_err();
        assert_eq!(parse_json(r#"{"endpoint": 3}"#), MissingField("endpoint"));
        assert_eq!(parse_json(&format!(r#"{{"endpoint": "{ENDPOINT}"}}"#)), MissingField("keys.p256dh"));
        assert!(matches!(parse_json("{"), Json(_)));
        let negative = json(ENDPOINT, UA_PUBLIC, AUTH).replace("null", "-1");
        assert_eq!(parse_json(&negative), BadExpirationTime("-1".into()));
    }

    #[test]
    fn http_only_on_loopback_and_only_when_allowed() {
        let policy = &EndpointPolicy::allow_http_loopback();
        assert!(Endpoint::parse("http://127.0.0.1:8080/p/1", policy).is_ok());
        assert!(Endpoint::parse("http://[::1]:8080/p/1", policy).is_ok());
        assert!(Endpoint::parse("http://localhost/p/1", policy).is_ok());
        assert_eq!(
            Endpoint::parse("http://10.0.0.1/p/1", policy),
            Err(SubscriptionError::EndpointNotHttps("http".into()))
        );
        assert!(Endpoint::parse("http://127.0.0.1/p/1", &EndpointPolicy::default()).is_err());
    }

    #[test]
    fn serialized_endpoints_read_back_exactly_as_a_full_parse_gives_them() {
        let inputs = [
            ENDPOINT,
            "https://fcm.googleapis.com/fcm/send/abc:APA91b-x_y~z?q=1&r=%41",
            "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk",
            "https://web.push.apple.com/QGx1YmU",
            "https://push.example:8443/a",
            "https://push.example:443/a",
            "https://push.example:08443/a",
            "https://push.example:99999/a",
            "https://push.example",
            "https://push.example?x",
            "https://PUSH.example/a",
            "HTTPS://push.example/a",
            "https://push.example./a",
            "https://push..example/a",
            "https://xn--nxasmq6b.example/a",
            "https://xn--zz.example/a",
            "https://1.2.3/a",
            "https://0x7f.1/a",
            "https://192.168.0.1/a",
            "https://010.0.0.1/a",
            "https://[2001:db8::1]/a",
            "https://push.example/a b",
            "https://push.example/a/./b",
            "https://push.example/a/../b",
            "https://push.example/a/%2e%2E/b",
            "https://push.example/a\\b",
            "https://push.example/a{b}",
            "https://push.example/a#frag",
            "https://user:pw@push.example/a",
            "https://push.example/caf\u{e9}",
            "http://127.0.0.1:8080/p/1",
            "http://127.1/p/1",
            "http://localhost/p/1",
            "http://localhost:80/p/1",
            "http://[::1]:8080/p/1",
            "http://10.0.0.1/p/1",
            "ftp://push.example/a",
            "not a url",
        ];
        for policy in [&EndpointPolicy::default(), &EndpointPolicy::allow_http_loopback()] {
            for raw in inputs {
                let full = Endpoint::parse(raw, policy);
                assert_eq!(Endpoint::from_serialized(raw, policy), full, "{raw:?} under {policy:?}");
                if let Ok(endpoint) = full {
                    let url = Url::parse(endpoint.as_str()).unwrap();
                    assert_eq!(endpoint.origin(), url.origin().ascii_serialization(), "{raw:?}");
                    let again = Endpoint::from_serialized(endpoint.as_str(), policy).unwrap();
                    assert_eq!((again.as_str(), again.origin()), (endpoint.as_str(), endpoint.origin()));
                }
            }
        }
        // An endpoint read back under the loose policy, checked against each, fails as reading
        // it under that policy would.
        for raw in inputs {
            if let Ok(loose) = Endpoint::parse(raw, EndpointPolicy::stored()) {
                for policy in [&EndpointPolicy::default(), &EndpointPolicy::allow_http_loopback()] {
                    let strict = Endpoint::from_serialized(loose.as_str(), policy);
                    assert_eq!(loose.check(policy), strict.map(|_| ()), "{raw:?} under {policy:?}");
                }
            }
        }
        // The push services' endpoints, as stored, take the short way.
        let policy = &EndpointPolicy::allow_http_loopback();
        for raw in &inputs[..5] {
            assert!(Endpoint::serialized_origin_len(raw, policy).is_some(), "{raw:?}");
        }
        assert!(Endpoint::serialized_origin_len("http://127.0.0.1:8080/p/1", policy).is_some());
        assert!(Endpoint::serialized_origin_len("https://127.0.0.1:41234/push/5", policy).is_some());
    }

    #[test]
    fn endpoints_a_request_cannot_carry_are_refused_naming_the_endpoint() {
        let policy = &EndpointPolicy::default();
        let huge = format!("https://push.example/{}", "a".repeat(70_000));
        assert_eq!(
            Endpoint::parse(&huge, policy),
            Err(SubscriptionError::EndpointTooLong { len: huge.len(), max: MAX_ENDPOINT_LEN })
        );
        assert_eq!(Endpoint::from_serialized(huge.as_str(), policy), Endpoint::parse(&huge, policy));
        let longest = format!("https://push.example/{}", "a".repeat(MAX_ENDPOINT_LEN - 21));
        assert_eq!(Endpoint::parse(&longest, policy).unwrap().as_str(), longest);
        // Percent-encoding lengthens an endpoint past the cap.
        let grows = format!("https://push.example/{}", "\u{e9}".repeat(MAX_ENDPOINT_LEN / 4));
        assert!(grows.len() <= MAX_ENDPOINT_LEN);
        assert!(matches!(Endpoint::parse(&grows, policy), Err(SubscriptionError::EndpointTooLong { .. })));
        for raw in ["https://a{b.example.com/x", "https://a}b.example.com/x"] {
            assert_eq!(
                Endpoint::parse(raw, policy),
                Err(SubscriptionError::EndpointNotRequestUri),
                "{raw:?}"
            );
            assert_eq!(Endpoint::from_serialized(raw, policy), Err(SubscriptionError::EndpointNotRequestUri));
        }
        for error in [
            SubscriptionError::EndpointTooLong { len: 3, max: 2 },
            SubscriptionError::EndpointNotRequestUri,
            SubscriptionError::EndpointRefused(crate::EgressError::IpLiteral([8, 8, 8, 8].into())),
        ] {
            assert!(error.to_string().starts_with("endpoint "), "{error}");
        }
        // IDN hosts are sent in their punycode form.
        let idn = Endpoint::parse("https://B\u{fc}cher.example/push/1", policy).unwrap();
        assert_eq!(idn.as_str(), "https://xn--bcher-kva.example/push/1");
        assert_eq!(Endpoint::from_serialized(idn.as_str(), policy).unwrap(), idn);
    }

    #[test]
    fn endpoints_to_internal_hosts_are_refused_unless_allowed() {
        use crate::egress::AddressClass;
        let strict = &EndpointPolicy::default();
        let metadata = "https://169.254.169.254/latest/meta-data/";
        let refused = SubscriptionError::EndpointRefused(EgressError::Address {
            ip: [169, 254, 169, 254].into(),
            class: AddressClass::LinkLocal,
        });
        assert_eq!(Endpoint::parse(metadata, strict), Err(refused.clone()));
        assert_eq!(Endpoint::from_serialized(metadata, strict), Err(refused.clone()));
        // Read back as stored, then checked before sending.
        let stored = Endpoint::from_serialized(metadata, EndpointPolicy::stored()).unwrap();
        assert_eq!(stored.check(strict), Err(refused));
        assert!(stored.check(&EndpointPolicy::allow_http_loopback()).is_err());
        for raw in
            ["https://localhost/p", "https://127.0.0.1:8443/p", "https://[::1]/p", "https://0x7f000001/p"]
        {
            assert!(
                matches!(Endpoint::parse(raw, strict), Err(SubscriptionError::EndpointRefused(_))),
                "{raw}"
            );
            let loopback = Endpoint::parse(raw, &EndpointPolicy::allow_http_loopback()).unwrap();
            assert_eq!(loopback.check(&EndpointPolicy::allow_http_loopback()), Ok(()));
            assert!(loopback.check(strict).is_err());
        }
        let private = EgressPolicy::new(vec!["10.0.0.0/8".parse().unwrap()], Vec::new());
        let policy = &EndpointPolicy::new(false, Arc::new(private));
        assert!(Endpoint::parse("https://10.1.2.3/p", policy).is_ok());
        assert!(Endpoint::parse("https://127.0.0.1/p", policy).is_err());
    }

    #[test]
    fn endpoint_hosts_read_back_as_parsed() {
        for (raw, host) in [
            ("https://push.example:8443/a", url::Host::Domain("push.example")),
            ("https://127.0.0.1:8443/a", url::Host::Ipv4([127, 0, 0, 1].into())),
            ("https://[::1]:8443/a", url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST)),
            ("https://[::ffff:127.0.0.1]/a", url::Host::Ipv6("::ffff:127.0.0.1".parse().unwrap())),
        ] {
            let endpoint = Endpoint::parse(raw, EndpointPolicy::stored()).unwrap();
            assert_eq!(endpoint.host(), Some(host), "{raw}");
        }
    }

    proptest::proptest! {
        /// Whatever is accepted, by the full parse or the fast path, reads back the same and
        /// builds a request; the fast path never accepts what the full parse refuses.
        #[test]
        fn accepted_endpoints_always_build_a_request(
            origin in proptest::sample::select(vec![
                "https://push.example", "https://PUSH.example:443", "https://push.example:8443",
                "http://127.0.0.1:8080", "http://localhost", "https://[::1]", "https://127.0.0.1",
                "https://a{b.example", "https://xn--bcher-kva.example", "https://b\u{fc}cher.example",
                "https://10.0.0.1", "https://0x7f000001", "https://push.internal", "https://push.",
                "https://[::ffff:127.0.0.1]:1", "https://push.example:0", "https://push.example:65536",
            ]),
            rest in "[/?#a-zA-Z0-9%.:@!$&'()*+,;=\\\\ \"<>^`{|}~\\[\\]\u{e9}\u{7f}\t-]{0,24}",
        ) {
            let raw = format!("{origin}{rest}");
            let (push, token) = request_parts();
            for policy in [&EndpointPolicy::default(), &EndpointPolicy::allow_http_loopback(), EndpointPolicy::stored()] {
                let full = Endpoint::parse(&raw, policy);
                proptest::prop_assert_eq!(&Endpoint::from_serialized(raw.as_str(), policy), &full, "{:?}", raw);
                if let Ok(endpoint) = full {
                    let again = Endpoint::from_serialized(endpoint.as_str(), policy);
                    proptest::prop_assert_eq!(again.as_ref(), Ok(&endpoint));
                    proptest::prop_assert_eq!(endpoint.check(policy), Ok(()));
                    let options = crate::PushOptions::default();
                    let built = crate::build_request(&endpoint, &push, &options, options.ttl, &token);
                    proptest::prop_assert!(built.is_ok(), "{:?}: {:?}", raw, built.err());
                }
            }
        }
    }

    fn request_parts() -> (crate::EncryptedPush, crate::vapid::VapidToken) {
        use crate::vapid::{Subject, VapidKey, VapidSigner};
        let keys = SubscriptionKeys::from_base64(UA_PUBLIC, AUTH).unwrap();
        let push = crate::encrypt(
            crate::Backend::AwsLc,
            &keys,
            crate::ContentEncoding::Aes128gcm,
            b"hi",
            &crate::Padding::None,
        )
        .unwrap();
        let signer =
            VapidSigner::new(VapidKey::generate(), Subject::parse("mailto:ops@example.com").unwrap());
        (push, signer.sign("https://push.example", 1_800_000_000))
    }

    #[test]
    fn endpoints_are_redacted_in_logs() {
        let endpoint = Endpoint::parse(ENDPOINT, &EndpointPolicy::default()).unwrap();
        for shown in [format!("{endpoint}"), format!("{endpoint:?}")] {
            assert!(!shown.contains("dGhpcyBpcyBzZWNyZXQ"), "{shown}");
            assert!(shown.contains("https://fcm.googleapis.com/…#"), "{shown}");
        }
        let other = Endpoint::parse("https://fcm.googleapis.com/fcm/send/other", &EndpointPolicy::default());
        assert_ne!(endpoint.redacted(), other.unwrap().redacted());
    }
}
