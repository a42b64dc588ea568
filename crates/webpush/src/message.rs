//! Message encryption for Web Push: RFC 8291 over `aes128gcm`, and the legacy `aesgcm` draft.
//!
//! Every message gets a fresh ephemeral P-256 key pair and a fresh 16-byte salt: one ECDH per
//! subscriber is the floor of a broadcast's cost, so the hot path does nothing else it can avoid
//! (no allocation beyond the output, no copies of the keys). [`crate::batch`] runs it over many
//! subscribers at once.

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::b64;
use crate::backend::{with_primitives, Backend, Primitives};
use crate::ece::{self, EceError, Header, SALT_LEN, TAG_LEN};
use crate::subscription::{SubscriptionKeys, AUTH_SECRET_LEN, P256_PUBLIC_KEY_LEN};

/// The record size written in every Web Push `aes128gcm` header.
pub const RECORD_SIZE: u32 = 4096;
/// Push services accept bodies up to 4096 bytes (RFC 8030 §7.2 asks for at least that).
pub const MAX_BODY_LEN: usize = 4096;
/// `aes128gcm` header for Web Push: salt, record size, key id length, the sender's public key.
pub const AES128GCM_HEADER_LEN: usize = ece::HEADER_FIXED_LEN + P256_PUBLIC_KEY_LEN;
/// The largest payload (plus padding) that fits one 4096-byte `aes128gcm` body.
pub const MAX_PLAINTEXT_LEN: usize = MAX_BODY_LEN - AES128GCM_HEADER_LEN - 1 - TAG_LEN;
/// The largest payload (plus padding) that fits one 4096-byte legacy `aesgcm` body.
pub const AESGCM_MAX_PLAINTEXT_LEN: usize = MAX_BODY_LEN - 2 - TAG_LEN;

const WEBPUSH_INFO: &[u8] = b"WebPush: info\0";
const AESGCM_AUTH_INFO: &[u8] = b"Content-Encoding: auth\0";
const AESGCM_CEK_INFO: &[u8] = b"Content-Encoding: aesgcm\0";
const AESGCM_NONCE_INFO: &[u8] = b"Content-Encoding: nonce\0";

/// How a push message body is encrypted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ContentEncoding {
    /// RFC 8291 over RFC 8188: the standard, and what every current browser supports.
    #[default]
    Aes128gcm,
    /// draft-ietf-webpush-encryption-04: for user agents that only advertise it.
    Aesgcm,
}

impl ContentEncoding {
    /// The `Content-Encoding` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentEncoding::Aes128gcm => "aes128gcm",
            ContentEncoding::Aesgcm => "aesgcm",
        }
    }

    /// The largest payload, padding included, that one message of this encoding can carry.
    pub fn max_plaintext_len(self) -> usize {
        match self {
            ContentEncoding::Aes128gcm => MAX_PLAINTEXT_LEN,
            ContentEncoding::Aesgcm => AESGCM_MAX_PLAINTEXT_LEN,
        }
    }

    /// The exact body length for `plaintext_len` bytes of payload and `padding` bytes of padding.
    pub fn body_len(self, plaintext_len: usize, padding: usize) -> usize {
        match self {
            ContentEncoding::Aes128gcm => AES128GCM_HEADER_LEN + plaintext_len + 1 + padding + TAG_LEN,
            ContentEncoding::Aesgcm => 2 + padding + plaintext_len + TAG_LEN,
        }
    }
}

impl fmt::Display for ContentEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContentEncoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aes128gcm" => Ok(ContentEncoding::Aes128gcm),
            "aesgcm" => Ok(ContentEncoding::Aesgcm),
            other => Err(format!("unknown content encoding `{other}`; expected `aes128gcm` or `aesgcm`")),
        }
    }
}

/// Padding that hides a payload's length from the push service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Padding {
    /// No padding: the body length reveals the payload length.
    #[default]
    None,
    /// Pad up to the smallest of these sizes that holds the payload; beyond the largest, up to
    /// the encoding's maximum. Sizes are payload bytes, ascending.
    Buckets(Vec<usize>),
}

impl Padding {
    /// Buckets that suit typical notification payloads.
    pub fn standard_buckets() -> Self {
        Padding::Buckets(vec![128, 512, 1024, 2048])
    }

    /// How many padding bytes a payload of `len` bytes gets, given at most `max` in all.
    pub fn padding_for(&self, len: usize, max: usize) -> usize {
        match self {
            Padding::None => 0,
            Padding::Buckets(sizes) => {
                let target = sizes.iter().copied().find(|&size| size >= len).unwrap_or(max).min(max);
                target.saturating_sub(len)
            }
        }
    }
}

/// Why a message could not be encrypted for a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    #[error("payload is {len} bytes; {encoding} carries at most {max} (padding included)")]
    PayloadTooLarge { len: usize, max: usize, encoding: ContentEncoding },
    #[error("ECDH with the subscriber's key failed (p256dh is not a valid P-256 point)")]
    KeyAgreement,
    #[error("the crypto backend failed to generate a key or encrypt")]
    Backend,
}

/// An encrypted push message, ready to send.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedPush {
    /// The HTTP request body.
    pub body: Bytes,
    /// The `Content-Encoding` to send it with.
    pub encoding: ContentEncoding,
    /// For `aesgcm` only: the values that travel in headers instead of in the body.
    pub aesgcm: Option<AesgcmParams>,
}

impl fmt::Debug for EncryptedPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedPush")
            .field("body_len", &self.body.len())
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

/// The salt and sender key of an `aesgcm` message, sent as `Encryption` and `Crypto-Key` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AesgcmParams {
    /// Goes into `Encryption: salt=…`.
    pub salt: [u8; SALT_LEN],
    /// The sender's ephemeral public key; goes into `Crypto-Key: dh=…`.
    pub dh: [u8; P256_PUBLIC_KEY_LEN],
}

impl AesgcmParams {
    /// The `Encryption` header value.
    pub fn encryption_header(&self) -> String {
        format!("salt={}", b64::encode(&self.salt))
    }

    /// The `dh=…` parameter of the `Crypto-Key` header.
    pub fn crypto_key_dh(&self) -> String {
        format!("dh={}", b64::encode(&self.dh))
    }
}

/// Encrypts `plaintext` for one subscriber with a fresh ephemeral key and salt.
pub fn encrypt(
    backend: Backend,
    keys: &SubscriptionKeys,
    encoding: ContentEncoding,
    plaintext: &[u8],
    padding: &Padding,
) -> Result<EncryptedPush, EncryptError> {
    let mut out = BytesMut::new();
    with_primitives!(backend, P => encrypt_fresh::<P>(keys, encoding, plaintext, padding, &mut out))
}

/// Encrypts with a caller-chosen sender key and salt, for conformance vectors and
/// reproducible fixtures. Reusing a key or salt across messages breaks the encryption.
#[cfg(feature = "test-keys")]
pub fn encrypt_with_keys(
    backend: Backend,
    keys: &SubscriptionKeys,
    encoding: ContentEncoding,
    plaintext: &[u8],
    padding: usize,
    sender_private_key: &[u8; 32],
    salt: [u8; SALT_LEN],
) -> Result<EncryptedPush, EncryptError> {
    with_primitives!(backend, P => {
        let sender = P::private_key_from_bytes(sender_private_key).map_err(|_| EncryptError::Backend)?;
        let mut out = BytesMut::new();
        encrypt_into::<P>(&sender, salt, keys, encoding, plaintext, padding, &mut out)
    })
}

/// The intermediate values of RFC 8291 §3.4 for one message, to check against Appendix A.
#[cfg(feature = "test-keys")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchedule {
    /// The ECDH shared secret.
    pub ecdh_secret: [u8; 32],
    /// The input keying material for RFC 8188.
    pub ikm: [u8; 32],
    /// The content-encryption key.
    pub cek: [u8; 16],
    /// The base nonce.
    pub nonce: [u8; 12],
}

/// Computes [`KeySchedule`] for a sender key, a subscriber and a salt.
#[cfg(feature = "test-keys")]
pub fn key_schedule(
    backend: Backend,
    keys: &SubscriptionKeys,
    sender_private_key: &[u8; 32],
    salt: &[u8; SALT_LEN],
) -> Result<KeySchedule, EncryptError> {
    with_primitives!(backend, P => {
        let sender = P::private_key_from_bytes(sender_private_key).map_err(|_| EncryptError::Backend)?;
        let sender_public = P::public_key(&sender).map_err(|_| EncryptError::Backend)?;
        let ecdh_secret = P::agree(&sender, keys.p256dh()).map_err(|_| EncryptError::KeyAgreement)?;
        let ikm = webpush_ikm::<P>(&ecdh_secret, keys.auth(), keys.p256dh(), &sender_public);
        let (cek, nonce) = ece::derive_key_and_nonce::<P>(salt, &ikm);
        Ok(KeySchedule { ecdh_secret, ikm, cek, nonce })
    })
}

/// Checks the length, draws a key and salt, and encrypts into `out`'s spare capacity.
pub(crate) fn encrypt_fresh<P: Primitives>(
    keys: &SubscriptionKeys,
    encoding: ContentEncoding,
    plaintext: &[u8],
    padding: &Padding,
    out: &mut BytesMut,
) -> Result<EncryptedPush, EncryptError> {
    let max = encoding.max_plaintext_len();
    if plaintext.len() > max {
        return Err(EncryptError::PayloadTooLarge { len: plaintext.len(), max, encoding });
    }
    let pad = padding.padding_for(plaintext.len(), max);
    let sender = P::generate_key().map_err(|_| EncryptError::Backend)?;
    let mut salt = [0; SALT_LEN];
    P::fill_random(&mut salt).map_err(|_| EncryptError::Backend)?;
    encrypt_into::<P>(&sender, salt, keys, encoding, plaintext, pad, out)
}

/// The body is appended to `out` and split off, so a batch can carve many bodies out of one
/// allocation.
fn encrypt_into<P: Primitives>(
    sender: &P::PrivateKey,
    salt: [u8; SALT_LEN],
    keys: &SubscriptionKeys,
    encoding: ContentEncoding,
    plaintext: &[u8],
    padding: usize,
    out: &mut BytesMut,
) -> Result<EncryptedPush, EncryptError> {
    let max = encoding.max_plaintext_len();
    if plaintext.len() + padding > max {
        return Err(EncryptError::PayloadTooLarge { len: plaintext.len() + padding, max, encoding });
    }
    let sender_public = P::public_key(sender).map_err(|_| EncryptError::Backend)?;
    let ecdh = P::agree(sender, keys.p256dh()).map_err(|_| EncryptError::KeyAgreement)?;
    let ua_public = keys.p256dh();
    let auth = keys.auth();
    out.reserve(encoding.body_len(plaintext.len(), padding));
    match encoding {
        ContentEncoding::Aes128gcm => {
            let ikm = webpush_ikm::<P>(&ecdh, auth, ua_public, &sender_public);
            let (cek, nonce) = ece::derive_key_and_nonce::<P>(&salt, &ikm);
            out.put_slice(&salt);
            out.put_u32(RECORD_SIZE);
            out.put_u8(P256_PUBLIC_KEY_LEN as u8);
            out.put_slice(&sender_public);
            let start = out.len();
            out.put_slice(plaintext);
            out.put_u8(2);
            out.put_bytes(0, padding);
            seal_tail::<P>(&cek, &nonce, out, start)?;
        }
        ContentEncoding::Aesgcm => {
            let (cek, nonce) = aesgcm_key_and_nonce::<P>(&ecdh, auth, &salt, ua_public, &sender_public);
            let start = out.len();
            out.put_u16(padding as u16);
            out.put_bytes(0, padding);
            out.put_slice(plaintext);
            seal_tail::<P>(&cek, &nonce, out, start)?;
        }
    }
    let aesgcm = (encoding == ContentEncoding::Aesgcm).then_some(AesgcmParams { salt, dh: sender_public });
    Ok(EncryptedPush { body: out.split().freeze(), encoding, aesgcm })
}

fn seal_tail<P: Primitives>(
    cek: &[u8; 16],
    nonce: &[u8; 12],
    out: &mut BytesMut,
    start: usize,
) -> Result<(), EncryptError> {
    let tag = P::seal(cek, nonce, &mut out[start..]).map_err(|_| EncryptError::Backend)?;
    out.put_slice(&tag);
    Ok(())
}

/// RFC 8291 §3.3: the input keying material for `aes128gcm`.
fn webpush_ikm<P: Primitives>(
    ecdh: &[u8; 32],
    auth: &[u8; AUTH_SECRET_LEN],
    ua_public: &[u8; P256_PUBLIC_KEY_LEN],
    as_public: &[u8; P256_PUBLIC_KEY_LEN],
) -> [u8; 32] {
    let prk = P::hkdf_extract(auth, ecdh);
    let mut ikm = [0; 32];
    P::hkdf_expand(&prk, &[WEBPUSH_INFO, ua_public, as_public], &mut ikm);
    ikm
}

/// draft-ietf-webpush-encryption-04 §3 with draft-ietf-httpbis-encryption-encoding-03 §4.2.
fn aesgcm_key_and_nonce<P: Primitives>(
    ecdh: &[u8; 32],
    auth: &[u8; AUTH_SECRET_LEN],
    salt: &[u8; SALT_LEN],
    ua_public: &[u8; P256_PUBLIC_KEY_LEN],
    as_public: &[u8; P256_PUBLIC_KEY_LEN],
) -> ([u8; 16], [u8; 12]) {
    let auth_prk = P::hkdf_extract(auth, ecdh);
    let mut ikm = [0; 32];
    P::hkdf_expand(&auth_prk, &[AESGCM_AUTH_INFO], &mut ikm);
    let key_len = (P256_PUBLIC_KEY_LEN as u16).to_be_bytes();
    // The info is `label || context`, passed as parts so no message allocates to join them.
    let info = |label: &'static [u8]| -> [&[u8]; 6] {
        [label, b"P-256\0", &key_len, ua_public, &key_len, as_public]
    };
    let prk = P::hkdf_extract(salt, &ikm);
    let mut cek = [0; 16];
    let mut nonce = [0; 12];
    P::hkdf_expand(&prk, &info(AESGCM_CEK_INFO), &mut cek);
    P::hkdf_expand(&prk, &info(AESGCM_NONCE_INFO), &mut nonce);
    (cek, nonce)
}

/// The user agent's side of a subscription: its private key and auth secret. The simulated push
/// service, the load generator and the tests use it to read what pushfan sends.
#[derive(Clone)]
pub struct UserAgentKeys {
    private_key: [u8; 32],
    public: SubscriptionKeys,
}

impl fmt::Debug for UserAgentKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAgentKeys").finish_non_exhaustive()
    }
}

/// Why a user agent could not read a push message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error(transparent)]
    Ece(#[from] EceError),
    #[error("aes128gcm keyid must be the sender's 65-byte public key, got {0} bytes")]
    KeyIdNotAPublicKey(usize),
    #[error("the private key is not a valid P-256 scalar")]
    InvalidPrivateKey,
    #[error("an aesgcm message needs the salt and dh from its Encryption and Crypto-Key headers")]
    MissingAesgcmParams,
    #[error("aesgcm padding length {0} exceeds the record")]
    BadAesgcmPadding(usize),
}

impl UserAgentKeys {
    /// A fresh key pair and auth secret, as a browser makes on `subscribe()`.
    pub fn generate(backend: Backend) -> Result<Self, DecryptError> {
        let mut private_key = [0; 32];
        let mut auth = [0; AUTH_SECRET_LEN];
        with_primitives!(backend, P => {
            P::fill_random(&mut auth).map_err(|_| DecryptError::InvalidPrivateKey)?;
            // A random 256-bit string is a valid scalar but for a chance of about 2^-32.
            loop {
                P::fill_random(&mut private_key).map_err(|_| DecryptError::InvalidPrivateKey)?;
                if P::private_key_from_bytes(&private_key).is_ok() {
                    break;
                }
            }
        });
        Self::from_private_key(backend, private_key, auth)
    }

    /// Rebuilds the keys from a raw private scalar and auth secret.
    pub fn from_private_key(
        backend: Backend,
        private_key: [u8; 32],
        auth: [u8; AUTH_SECRET_LEN],
    ) -> Result<Self, DecryptError> {
        let p256dh = with_primitives!(backend, P => {
            let key = P::private_key_from_bytes(&private_key).map_err(|_| DecryptError::InvalidPrivateKey)?;
            P::public_key(&key).map_err(|_| DecryptError::InvalidPrivateKey)?
        });
        let public =
            SubscriptionKeys::from_bytes(&p256dh, &auth).map_err(|_| DecryptError::InvalidPrivateKey)?;
        Ok(Self { private_key, public })
    }

    /// What the browser hands the application server.
    pub fn subscription_keys(&self) -> &SubscriptionKeys {
        &self.public
    }

    /// The raw private scalar.
    pub fn private_key(&self) -> &[u8; 32] {
        &self.private_key
    }

    /// Decrypts a push message; `aesgcm` needs the parameters from its headers.
    pub fn decrypt(
        &self,
        backend: Backend,
        encoding: ContentEncoding,
        body: &[u8],
        aesgcm: Option<&AesgcmParams>,
    ) -> Result<Vec<u8>, DecryptError> {
        with_primitives!(backend, P => self.decrypt_with::<P>(encoding, body, aesgcm))
    }

    fn decrypt_with<P: Primitives>(
        &self,
        encoding: ContentEncoding,
        body: &[u8],
        aesgcm: Option<&AesgcmParams>,
    ) -> Result<Vec<u8>, DecryptError> {
        let key =
            P::private_key_from_bytes(&self.private_key).map_err(|_| DecryptError::InvalidPrivateKey)?;
        let agree = |peer: &[u8; P256_PUBLIC_KEY_LEN]| {
            P::agree(&key, peer).map_err(|_| EceError::KeyAgreement("sender key is not on the curve"))
        };
        match encoding {
            ContentEncoding::Aes128gcm => {
                let (header, records) = Header::parse(body)?;
                let as_public: &[u8; P256_PUBLIC_KEY_LEN] = header
                    .key_id
                    .try_into()
                    .map_err(|_| DecryptError::KeyIdNotAPublicKey(header.key_id.len()))?;
                let ecdh = agree(as_public)?;
                let ikm = webpush_ikm::<P>(&ecdh, self.public.auth(), self.public.p256dh(), as_public);
                Ok(ece::decrypt_records::<P>(&ikm, &header, records)?)
            }
            ContentEncoding::Aesgcm => {
                let params = aesgcm.ok_or(DecryptError::MissingAesgcmParams)?;
                let ecdh = agree(&params.dh)?;
                let (cek, nonce) = aesgcm_key_and_nonce::<P>(
                    &ecdh,
                    self.public.auth(),
                    &params.salt,
                    self.public.p256dh(),
                    &params.dh,
                );
                if body.len() < TAG_LEN + 2 {
                    return Err(EceError::RecordTooShort(0, body.len()).into());
                }
                let mut record = body.to_vec();
                P::open(&cek, &nonce, &mut record).map_err(|_| EceError::Authentication(0))?;
                record.truncate(body.len() - TAG_LEN);
                let pad = usize::from(u16::from_be_bytes([record[0], record[1]]));
                if 2 + pad > record.len() {
                    return Err(DecryptError::BadAesgcmPadding(pad));
                }
                Ok(record.split_off(2 + pad))
            }
        }
    }
}
