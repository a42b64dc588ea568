//! The Web Push standards core of pushfan.
//!
//! - [`subscription`]: the browser's `PushSubscription`, validated; endpoints redacted in logs.
//! - [`egress`]: where pushfan may send: address classes and the SSRF policy, as pure functions.
//! - [`ece`]: RFC 8188 `aes128gcm` content coding.
//! - [`message`]: RFC 8291 message encryption (and the legacy `aesgcm` draft), padding, and the
//!   user agent's side for decryption.
//! - [`batch`]: one payload for many subscribers with rayon, a result per subscriber.
//! - [`rfc8030`]: request headers (TTL, Urgency, Topic) and response classification.
//! - [`failure`]: the closed set of failure classes a broadcast counts, and bounded samples.
//! - [`vapid`]: RFC 8292 keys, tokens, a per-origin token cache, and verification.
//! - [`Backend`]: AWS-LC (default) or RustCrypto, byte-identical.
//!
//! Architecture invariant: this crate does no I/O (no sockets, files, clocks or environment);
//! callers pass the time in. Everything here is deterministic except the random ephemeral keys
//! and salts that encryption requires.

pub mod b64;
mod backend;
pub mod batch;
pub mod ece;
pub mod egress;
pub mod failure;
pub mod message;
pub mod rfc8030;
pub mod subscription;
pub mod vapid;

pub use backend::Backend;
pub use batch::{encrypt_batch, Recipient};
pub use egress::{AddressClass, EgressError, EgressPolicy, HostPattern, HostPatternError};
pub use failure::FailureClass;
pub use message::{
    encrypt, AesgcmParams, ContentEncoding, DecryptError, EncryptError, EncryptedPush, Padding, UserAgentKeys,
};
pub use rfc8030::{
    build_request, classify, ttl_header, PushOptions, PushOutcome, RequestError, Topic, Urgency,
};
pub use subscription::{
    Endpoint, EndpointPolicy, PushSubscription, SubscriptionError, SubscriptionKeys, MAX_ENDPOINT_LEN,
};
