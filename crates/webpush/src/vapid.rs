//! VAPID (RFC 8292): the application server's identity, an ES256 JWT per push-service origin.
//!
//! Signing is not per message: [`TokenCache`] keeps one token per origin and signs again only
//! when less than half of its validity remains, so a broadcast signs once per push service.
//! [`verify`] is the push service's side, for the simulated push service and the tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

use crate::b64;
use crate::subscription::P256_PUBLIC_KEY_LEN;

/// RFC 8292 §2: `exp` must be no more than 24 hours after the request.
pub const MAX_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);
/// The validity [`VapidSigner::new`] uses unless told otherwise.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(12 * 60 * 60);

/// `{"typ":"JWT","alg":"ES256"}`, base64url: the same for every token.
const JWT_HEADER: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9";

/// What is wrong with a VAPID key, subject, or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VapidError {
    #[error("VAPID private key is not base64url")]
    PrivateKeyNotBase64,
    #[error("VAPID private key must be a 32-byte P-256 scalar, got {0} bytes")]
    PrivateKeyWrongLength(usize),
    #[error("VAPID private key is not a valid P-256 scalar (zero or not below the group order)")]
    PrivateKeyOutOfRange,
    #[error("VAPID key PEM is neither PKCS#8 (`PRIVATE KEY`) nor SEC1 (`EC PRIVATE KEY`) for P-256")]
    InvalidPem,
    #[error("VAPID subject must start with `mailto:` or `https:`, got `{0}`")]
    SubjectScheme(String),
    #[error("VAPID subject has `mailto:` twice")]
    SubjectDoubleMailto,
    #[error("VAPID subject names localhost, which push services such as Apple's reject (403 BadJwtToken)")]
    SubjectLocalhost,
    #[error("VAPID subject has nothing after the scheme")]
    SubjectEmpty,
    #[error("VAPID token validity {0:?} is outside 1 minute ..= 24 hours")]
    Validity(Duration),
    #[error("Authorization header is not `vapid t=<jwt>, k=<key>`")]
    MalformedHeader,
    #[error("VAPID token is not a well-formed ES256 JWT: {0}")]
    MalformedToken(&'static str),
    #[error("VAPID public key `k` is not a valid P-256 point")]
    InvalidPublicKey,
    #[error("VAPID signature does not verify")]
    BadSignature,
    #[error("VAPID `aud` is `{got}`, expected `{expected}`")]
    WrongAudience { got: String, expected: String },
    #[error("VAPID token expired at {exp}, now is {now}")]
    Expired { exp: u64, now: u64 },
    #[error("VAPID `exp` {exp} is more than 24 hours after now ({now})")]
    ExpiresTooLate { exp: u64, now: u64 },
}

/// An application server's P-256 key pair.
#[derive(Clone)]
pub struct VapidKey {
    signing: SigningKey,
    public: [u8; P256_PUBLIC_KEY_LEN],
    public_base64: String,
}

impl fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapidKey").field("public", &self.public_base64).finish_non_exhaustive()
    }
}

impl VapidKey {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::random(&mut OsRng))
    }

    /// Imports a raw 32-byte private scalar.
    pub fn from_private_bytes(bytes: &[u8]) -> Result<Self, VapidError> {
        if bytes.len() != 32 {
            return Err(VapidError::PrivateKeyWrongLength(bytes.len()));
        }
        let signing = SigningKey::from_slice(bytes).map_err(|_| VapidError::PrivateKeyOutOfRange)?;
        Ok(Self::from_signing_key(signing))
    }

    /// Imports the base64url private scalar that `web-push generate-vapid-keys` and most
    /// libraries print.
    pub fn from_base64(text: &str) -> Result<Self, VapidError> {
        let bytes = b64::decode(text.trim()).map_err(|_| VapidError::PrivateKeyNotBase64)?;
        Self::from_private_bytes(&bytes)
    }

    /// Imports a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, VapidError> {
        let secret = p256::SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| p256::SecretKey::from_sec1_pem(pem))
            .map_err(|_| VapidError::InvalidPem)?;
        Ok(Self::from_signing_key(SigningKey::from(secret)))
    }

    fn from_signing_key(signing: SigningKey) -> Self {
        let point = signing.verifying_key().to_encoded_point(false);
        let public: [u8; P256_PUBLIC_KEY_LEN] =
            point.as_bytes().try_into().expect("an uncompressed P-256 point is 65 bytes");
        Self { signing, public_base64: b64::encode(&public), public }
    }

    /// The private key as PKCS#8 PEM. A secret: store it like one.
    pub fn to_pkcs8_pem(&self) -> String {
        let secret = p256::SecretKey::from(self.signing.as_nonzero_scalar());
        secret.to_pkcs8_pem(LineEnding::LF).expect("P-256 keys always encode as PKCS#8").to_string()
    }

    /// The private scalar as base64url. A secret: store it like one.
    pub fn private_base64(&self) -> String {
        b64::encode(&self.signing.to_bytes())
    }

    /// The uncompressed public key: the `applicationServerKey` browsers subscribe with.
    pub fn public_key(&self) -> &[u8; P256_PUBLIC_KEY_LEN] {
        &self.public
    }

    /// The public key as base64url: the `k=` of the `Authorization` header.
    pub fn public_base64(&self) -> &str {
        &self.public_base64
    }

    /// Signs `claims` into a compact ES256 JWT.
    pub fn sign(&self, claims: &Claims<'_>) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let mut jwt = format!("{JWT_HEADER}.{}", b64::encode(&payload));
        let signature: Signature = self.signing.sign(jwt.as_bytes());
        jwt.push('.');
        jwt.push_str(&b64::encode(&signature.to_bytes()));
        jwt
    }
}

/// The JWT claims RFC 8292 §2 asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims<'a> {
    /// The push service's origin: `https://host[:port]`.
    pub aud: &'a str,
    /// Expiry, seconds since the Unix epoch; at most 24 hours ahead.
    pub exp: u64,
    /// How the push service can reach the operator: `mailto:` or `https:`.
    pub sub: &'a str,
}

/// A contact URI that push services accept as `sub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    /// Accepts `mailto:` and `https:` URIs; refuses a doubled `mailto:` and localhost, which
    /// Apple answers with 403 BadJwtToken.
    pub fn parse(text: &str) -> Result<Self, VapidError> {
        let text = text.trim();
        let rest = if let Some(address) = text.strip_prefix("mailto:") {
            if address.starts_with("mailto:") {
                return Err(VapidError::SubjectDoubleMailto);
            }
            let domain = address.rsplit_once('@').map_or(address, |(_, domain)| domain);
            if is_localhost(domain) {
                return Err(VapidError::SubjectLocalhost);
            }
            address
        } else if let Some(rest) = text.strip_prefix("https:") {
            let url = url::Url::parse(text).map_err(|_| VapidError::SubjectScheme(text.to_owned()))?;
            if url.host_str().is_none_or(is_localhost) {
                return Err(VapidError::SubjectLocalhost);
            }
            rest
        } else {
            return Err(VapidError::SubjectScheme(text.to_owned()));
        };
        if rest.trim_matches('/').is_empty() {
            return Err(VapidError::SubjectEmpty);
        }
        Ok(Self(text.to_owned()))
    }

    /// The subject as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_localhost(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// A signed token and the headers that carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VapidToken {
    /// The JWT.
    pub jwt: String,
    /// Its `exp` claim.
    pub expires_at: u64,
    /// `vapid t=<jwt>, k=<public key>`, the RFC 8292 `Authorization` header value.
    pub authorization: String,
    /// The same, built once: every push to the origin clones it instead of copying the text.
    pub authorization_header: http::HeaderValue,
    /// The signer's public key, base64url: `k=`, and `p256ecdsa=` for the legacy encoding.
    pub public_key_base64: String,
}

impl VapidToken {
    /// `Authorization` for the legacy `aesgcm` encoding: `WebPush <jwt>`.
    pub fn legacy_authorization(&self) -> String {
        format!("WebPush {}", self.jwt)
    }
}

/// A key, a subject and a validity: everything needed to sign for any origin.
#[derive(Debug, Clone)]
pub struct VapidSigner {
    key: VapidKey,
    subject: Subject,
    validity: Duration,
}

impl VapidSigner {
    /// A signer with [`DEFAULT_VALIDITY`].
    pub fn new(key: VapidKey, subject: Subject) -> Self {
        Self { key, subject, validity: DEFAULT_VALIDITY }
    }

    /// Sets how long each token is valid: at least a minute, at most 24 hours.
    pub fn with_validity(mut self, validity: Duration) -> Result<Self, VapidError> {
        if validity < Duration::from_secs(60) || validity > MAX_VALIDITY {
            return Err(VapidError::Validity(validity));
        }
        self.validity = validity;
        Ok(self)
    }

    /// The key this signer signs with.
    pub fn key(&self) -> &VapidKey {
        &self.key
    }

    /// Signs a token for `audience` (a push service origin) valid from `now_unix`.
    pub fn sign(&self, audience: &str, now_unix: u64) -> VapidToken {
        let expires_at = now_unix + self.validity.as_secs();
        let jwt = self.key.sign(&Claims { aud: audience, exp: expires_at, sub: self.subject.as_str() });
        let authorization = format!("vapid t={jwt}, k={}", self.key.public_base64());
        let authorization_header =
            http::HeaderValue::from_str(&authorization).expect("base64url and ASCII are valid header values");
        VapidToken {
            jwt,
            expires_at,
            authorization,
            authorization_header,
            public_key_base64: self.key.public_base64().to_owned(),
        }
    }
}

/// One token per push-service origin for one [`VapidSigner`], signed again when less than half
/// of its validity remains (so a token in flight is never close to expiry).
///
/// Origins are whatever hosts subscribers registered, so the cache is bounded: when a new
/// origin finds it full, the tokens past their half-life (which would be signed again anyway)
/// are dropped, and if that frees nothing, the one that expires first.
#[derive(Debug)]
pub struct TokenCache {
    signer: VapidSigner,
    tokens: RwLock<HashMap<String, Arc<VapidToken>>>,
    capacity: usize,
}

impl TokenCache {
    /// Origins a cache holds tokens for unless told otherwise.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    /// An empty cache for `signer`, holding at most [`TokenCache::DEFAULT_CAPACITY`] tokens.
    pub fn new(signer: VapidSigner) -> Self {
        Self::with_capacity(signer, Self::DEFAULT_CAPACITY)
    }

    /// An empty cache for `signer`, holding at most `capacity` tokens (at least one).
    pub fn with_capacity(signer: VapidSigner, capacity: usize) -> Self {
        Self { signer, tokens: RwLock::default(), capacity: capacity.max(1) }
    }

    /// Tokens held now.
    pub fn len(&self) -> usize {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The signer behind the cache.
    pub fn signer(&self) -> &VapidSigner {
        &self.signer
    }

    /// A token for `origin` that stays valid for at least half the signer's validity.
    pub fn token(&self, origin: &str, now_unix: u64) -> Arc<VapidToken> {
        let fresh_until = now_unix + self.signer.validity.as_secs() / 2;
        let is_fresh = |token: &VapidToken| token.expires_at > fresh_until;
        // A poisoned lock only means another thread panicked mid-insert; the map is still sound.
        if let Some(token) = self.tokens.read().unwrap_or_else(|e| e.into_inner()).get(origin) {
            if is_fresh(token) {
                return Arc::clone(token);
            }
        }
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        match tokens.get(origin) {
            Some(token) if is_fresh(token) => Arc::clone(token),
            _ => {
                let token = Arc::new(self.signer.sign(origin, now_unix));
                if tokens.len() >= self.capacity && !tokens.contains_key(origin) {
                    // Runs only when a new origin meets a full cache: a scan, no per-push cost.
                    tokens.retain(|_, token| is_fresh(token));
                    if tokens.len() >= self.capacity {
                        let first_to_expire = tokens
                            .iter()
                            .min_by_key(|(_, token)| token.expires_at)
                            .map(|(origin, _)| origin.clone());
                        if let Some(first) = first_to_expire {
                            tokens.remove(&first);
                        }
                    }
                }
                tokens.insert(origin.to_owned(), Arc::clone(&token));
                token
            }
        }
    }
}

/// What a push service learns from a verified `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The application server's public key (`k=`).
    pub public_key: [u8; P256_PUBLIC_KEY_LEN],
    /// `exp`.
    pub expires_at: u64,
    /// `sub`.
    pub subject: String,
}

#[derive(Deserialize)]
struct OwnedClaims {
    aud: String,
    exp: u64,
    sub: String,
}

/// Verifies a `vapid t=…, k=…` header as a push service would: signature, `aud` equal to
/// `expected_audience`, `exp` in the future and at most 24 hours away, `sub` acceptable.
pub fn verify(
    authorization: &str,
    expected_audience: &str,
    now_unix: u64,
) -> Result<VerifiedToken, VapidError> {
    let params = authorization.strip_prefix("vapid ").ok_or(VapidError::MalformedHeader)?;
    let (mut jwt, mut key) = (None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", value)) => jwt = Some(value),
            Some(("k", value)) => key = Some(value),
            _ => return Err(VapidError::MalformedHeader),
        }
    }
    let (jwt, key) = jwt.zip(key).ok_or(VapidError::MalformedHeader)?;
    let public_key: [u8; P256_PUBLIC_KEY_LEN] =
        b64::decode(key).ok().and_then(|k| k.try_into().ok()).ok_or(VapidError::InvalidPublicKey)?;
    let verifying = VerifyingKey::from_sec1_bytes(&public_key).map_err(|_| VapidError::InvalidPublicKey)?;

    let (signing_input, signature) =
        jwt.rsplit_once('.').ok_or(VapidError::MalformedToken("no signature"))?;
    let (header, payload) = signing_input.split_once('.').ok_or(VapidError::MalformedToken("no payload"))?;
    let header: serde_json::Value = b64::decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(VapidError::MalformedToken("header is not base64url JSON"))?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
        return Err(VapidError::MalformedToken("alg is not ES256"));
    }
    let signature = b64::decode(signature)
        .ok()
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or(VapidError::MalformedToken("signature is not 64 bytes of r || s"))?;
    verifying.verify(signing_input.as_bytes(), &signature).map_err(|_| VapidError::BadSignature)?;

    let claims: OwnedClaims = b64::decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(VapidError::MalformedToken("claims are not base64url JSON with aud, exp and sub"))?;
    if claims.aud != expected_audience {
        return Err(VapidError::WrongAudience { got: claims.aud, expected: expected_audience.to_owned() });
    }
    if claims.exp <= now_unix {
        return Err(VapidError::Expired { exp: claims.exp, now: now_unix });
    }
    if claims.exp > now_unix + MAX_VALIDITY.as_secs() {
        return Err(VapidError::ExpiresTooLate { exp: claims.exp, now: now_unix });
    }
    Subject::parse(&claims.sub)?;
    Ok(VerifiedToken { public_key, expires_at: claims.exp, subject: claims.sub })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const ORIGIN: &str = "https://updates.push.services.mozilla.com";

    fn signer() -> VapidSigner {
        VapidSigner::new(VapidKey::generate(), Subject::parse("mailto:ops@example.com").unwrap())
    }

    #[test]
    fn tokens_verify_and_carry_the_claims() {
        let signer = signer();
        let token = signer.sign(ORIGIN, NOW);
        let verified = verify(&token.authorization, ORIGIN, NOW + 1).unwrap();
        assert_eq!(&verified.public_key, signer.key().public_key());
        assert_eq!(verified.expires_at, NOW + DEFAULT_VALIDITY.as_secs());
        assert_eq!(verified.subject, "mailto:ops@example.com");
        assert!(token.authorization.starts_with("vapid t=eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9."));
        assert_eq!(token.legacy_authorization(), format!("WebPush {}", token.jwt));
    }

    #[test]
    fn verification_refuses_what_a_push_service_refuses() {
        let signer = signer();
        let token = signer.sign(ORIGIN, NOW);
        assert!(matches!(
            verify(&token.authorization, "https://fcm.googleapis.com", NOW),
            Err(VapidError::WrongAudience { .. })
        ));
        assert!(matches!(
            verify(&token.authorization, ORIGIN, NOW + 13 * 3600),
            Err(VapidError::Expired { .. })
        ));
        let too_late = signer.key().sign(&Claims { aud: ORIGIN, exp: NOW + 25 * 3600, sub: "mailto:a@b.c" });
        let header = format!("vapid t={too_late}, k={}", signer.key().public_base64());
        assert!(matches!(verify(&header, ORIGIN, NOW), Err(VapidError::ExpiresTooLate { .. })));
        let other_key = VapidKey::generate();
        let forged = token.authorization.replace(signer.key().public_base64(), other_key.public_base64());
        assert_eq!(verify(&forged, ORIGIN, NOW), Err(VapidError::BadSignature));
        assert_eq!(verify("WebPush abc", ORIGIN, NOW), Err(VapidError::MalformedHeader));
        let mut tampered = token.authorization.clone();
        tampered.insert(20, 'A');
        assert!(verify(&tampered, ORIGIN, NOW).is_err());
    }

    #[test]
    fn keys_round_trip_through_base64_and_pem() {
        let key = VapidKey::generate();
        let from_b64 = VapidKey::from_base64(&key.private_base64()).unwrap();
        assert_eq!(from_b64.public_key(), key.public_key());
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(VapidKey::from_pem(&pem).unwrap().public_key(), key.public_key());
        assert!(!format!("{key:?}").contains(&key.private_base64()));
    }

    #[test]
    fn bad_keys_are_named() {
        assert_eq!(VapidKey::from_base64("***").unwrap_err(), VapidError::PrivateKeyNotBase64);
        assert_eq!(
            VapidKey::from_base64(&b64::encode(&[1; 31])).unwrap_err(),
            VapidError::PrivateKeyWrongLength(31)
        );
        assert_eq!(VapidKey::from_private_bytes(&[0; 32]).unwrap_err(), VapidError::PrivateKeyOutOfRange);
        assert_eq!(VapidKey::from_private_bytes(&[0xff; 32]).unwrap_err(), VapidError::PrivateKeyOutOfRange);
        assert_eq!(
            VapidKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap_err(),
            VapidError::InvalidPem
        );
    }

    #[test]
    fn subjects_follow_what_push_services_accept() {
        assert!(Subject::parse("mailto:ops@example.com").is_ok());
        assert!(Subject::parse("https://example.com/contact").is_ok());
        assert_eq!(Subject::parse("mailto:mailto:ops@example.com"), Err(VapidError::SubjectDoubleMailto));
        assert_eq!(Subject::parse("mailto:root@localhost"), Err(VapidError::SubjectLocalhost));
        assert_eq!(Subject::parse("https://localhost:8443"), Err(VapidError::SubjectLocalhost));
        assert_eq!(Subject::parse("https://127.0.0.1/"), Err(VapidError::SubjectLocalhost));
        assert_eq!(
            Subject::parse("ops@example.com"),
            Err(VapidError::SubjectScheme("ops@example.com".into()))
        );
        assert_eq!(Subject::parse("mailto:"), Err(VapidError::SubjectEmpty));
    }

    #[test]
    fn validity_is_bounded_by_rfc8292() {
        assert!(signer().with_validity(MAX_VALIDITY).is_ok());
        let too_long = MAX_VALIDITY + Duration::from_secs(1);
        assert_eq!(signer().with_validity(too_long).unwrap_err(), VapidError::Validity(too_long));
    }

    #[test]
    fn the_cache_is_bounded_and_lets_stale_tokens_go_first() {
        let cache = TokenCache::with_capacity(signer().with_validity(Duration::from_secs(3600)).unwrap(), 3);
        let origin = |i: u64| format!("https://push{i}.example.com");
        for i in 0..3 {
            cache.token(&origin(i), NOW + i);
        }
        assert_eq!(cache.len(), 3);
        // Full, all fresh: the first to expire (origin 0) makes room.
        cache.token(&origin(3), NOW + 3);
        assert_eq!(cache.len(), 3);
        let kept = cache.token(&origin(1), NOW + 4);
        assert_eq!(kept.expires_at, NOW + 1 + 3600, "origin 1 was kept, not signed again");
        // Past the half-life every token held is stale: all of them go at once for a new origin.
        let later = NOW + 4 + 1800;
        cache.token(&origin(4), later);
        assert_eq!(cache.len(), 1);
        // A thousand origins through a cache of three: never more than three held.
        for i in 10..1010 {
            cache.token(&origin(i), later);
            assert!(cache.len() <= 3);
        }
        // Signing again for an origin already held does not evict anything.
        let renewed = cache.token(&origin(1009), later + 1800);
        assert_eq!(renewed.expires_at, later + 1800 + 3600);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn the_cache_signs_once_per_origin_until_half_the_validity_is_gone() {
        let cache = TokenCache::new(signer().with_validity(Duration::from_secs(3600)).unwrap());
        let first = cache.token(ORIGIN, NOW);
        assert!(Arc::ptr_eq(&first, &cache.token(ORIGIN, NOW + 1799)));
        let other = cache.token("https://fcm.googleapis.com", NOW);
        assert!(!Arc::ptr_eq(&first, &other));
        let renewed = cache.token(ORIGIN, NOW + 1800);
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert_eq!(renewed.expires_at, NOW + 1800 + 3600);
    }
}
