//! The seam between Web Push encryption and the primitives that do the work.
//!
//! Encryption is written once, generically over [`Primitives`]; [`Backend`] picks an
//! implementation at run time and the hot loops are monomorphised for it, so the choice costs
//! nothing per message. Both backends give byte-identical output for the same keys and salt.

mod aws_lc;
mod rust_crypto;

pub(crate) use aws_lc::AwsLc;
pub(crate) use rust_crypto::RustCrypto;

use crate::subscription::P256_PUBLIC_KEY_LEN;

/// Which implementation computes P-256 ECDH, HKDF-SHA-256 and AES-128-GCM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// AWS-LC through `aws-lc-rs`: assembly P-256 and AES-GCM; about 4× faster here.
    #[default]
    AwsLc,
    /// RustCrypto's `p256`, `hkdf` and `aes-gcm`: pure Rust, no C toolchain needed.
    RustCrypto,
}

impl Backend {
    /// Every backend, for tests and benchmarks that compare them.
    pub const ALL: [Backend; 2] = [Backend::AwsLc, Backend::RustCrypto];

    /// The name used in configuration and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Backend::AwsLc => "aws-lc-rs",
            Backend::RustCrypto => "rustcrypto",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown crypto backend `{s}`; expected `aws-lc-rs` or `rustcrypto`"))
    }
}

/// Calls `$body` with `$p` bound to the [`Primitives`] type of `$backend`.
macro_rules! with_primitives {
    ($backend:expr, $p:ident => $body:expr) => {
        match $backend {
            $crate::backend::Backend::AwsLc => {
                type $p = $crate::backend::AwsLc;
                $body
            }
            $crate::backend::Backend::RustCrypto => {
                type $p = $crate::backend::RustCrypto;
                $body
            }
        }
    };
}
pub(crate) use with_primitives;

/// A P-256 public key failed to parse or lies off the curve; or a primitive failed outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PrimitiveError;

/// The primitives RFC 8188 and RFC 8291 are built from.
pub(crate) trait Primitives {
    /// A P-256 private key able to do ECDH.
    type PrivateKey;
    /// An HKDF-SHA-256 pseudorandom key, ready to expand.
    type Prk;

    /// A fresh random key pair.
    fn generate_key() -> Result<Self::PrivateKey, PrimitiveError>;
    /// Imports a raw 32-byte private scalar.
    fn private_key_from_bytes(bytes: &[u8; 32]) -> Result<Self::PrivateKey, PrimitiveError>;
    /// The uncompressed public key of `key`.
    fn public_key(key: &Self::PrivateKey) -> Result<[u8; P256_PUBLIC_KEY_LEN], PrimitiveError>;
    /// The ECDH shared secret (the x coordinate) of `key` and the uncompressed `peer` point.
    fn agree(key: &Self::PrivateKey, peer: &[u8; P256_PUBLIC_KEY_LEN]) -> Result<[u8; 32], PrimitiveError>;

    /// HKDF-Extract(salt, ikm).
    fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> Self::Prk;
    /// HKDF-Expand(prk, info parts concatenated, out.len()); `out` is at most 32 bytes here.
    fn hkdf_expand(prk: &Self::Prk, info: &[&[u8]], out: &mut [u8]);

    /// AES-128-GCM without associated data; encrypts `in_out` in place and returns the tag.
    fn seal(key: &[u8; 16], nonce: &[u8; 12], in_out: &mut [u8]) -> Result<[u8; 16], PrimitiveError>;
    /// Decrypts `ciphertext || tag` in place, checking the tag; the plaintext is the
    /// first `len - 16` bytes afterwards.
    fn open(key: &[u8; 16], nonce: &[u8; 12], ciphertext_and_tag: &mut [u8]) -> Result<(), PrimitiveError>;

    /// Fills `out` from a cryptographically secure generator.
    fn fill_random(out: &mut [u8]) -> Result<(), PrimitiveError>;
}
