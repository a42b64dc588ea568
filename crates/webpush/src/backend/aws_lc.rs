//! [`Primitives`] on AWS-LC (`aws-lc-rs`).

use aws_lc_rs::{aead, agreement, hkdf, rand};

use super::{PrimitiveError, Primitives};
use crate::subscription::P256_PUBLIC_KEY_LEN;

/// The `aws-lc-rs` backend.
#[derive(Debug)]
pub(crate) struct AwsLc;

/// An HKDF output length, as `aws-lc-rs` wants it.
struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

impl From<aws_lc_rs::error::Unspecified> for PrimitiveError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        PrimitiveError
    }
}

impl Primitives for AwsLc {
    type PrivateKey = agreement::PrivateKey;
    type Prk = hkdf::Prk;

    fn generate_key() -> Result<Self::PrivateKey, PrimitiveError> {
        Ok(agreement::PrivateKey::generate(&agreement::ECDH_P256)?)
    }

    fn private_key_from_bytes(bytes: &[u8; 32]) -> Result<Self::PrivateKey, PrimitiveError> {
        agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, bytes).map_err(|_| PrimitiveError)
    }

    fn public_key(key: &Self::PrivateKey) -> Result<[u8; P256_PUBLIC_KEY_LEN], PrimitiveError> {
        key.compute_public_key()?.as_ref().try_into().map_err(|_| PrimitiveError)
    }

    fn agree(key: &Self::PrivateKey, peer: &[u8; P256_PUBLIC_KEY_LEN]) -> Result<[u8; 32], PrimitiveError> {
        // AWS-LC also accepts the SEC1 "hybrid" forms (0x06, 0x07); Web Push keys are
        // uncompressed only, and both backends must agree on what they accept.
        if peer[0] != 0x04 {
            return Err(PrimitiveError);
        }
        let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer);
        agreement::agree(key, peer, PrimitiveError, |secret| secret.try_into().map_err(|_| PrimitiveError))
    }

    fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> Self::Prk {
        hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm)
    }

    fn hkdf_expand(prk: &Self::Prk, info: &[&[u8]], out: &mut [u8]) {
        // Only fails when `out` is longer than 255 hash lengths; ours are at most 32 bytes.
        prk.expand(info, OkmLen(out.len()))
            .and_then(|okm| okm.fill(out))
            .expect("HKDF output of at most 32 bytes");
    }

    fn seal(key: &[u8; 16], nonce: &[u8; 12], in_out: &mut [u8]) -> Result<[u8; 16], PrimitiveError> {
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, key)?);
        let nonce = aead::Nonce::assume_unique_for_key(*nonce);
        let tag = key.seal_in_place_separate_tag(nonce, aead::Aad::empty(), in_out)?;
        tag.as_ref().try_into().map_err(|_| PrimitiveError)
    }

    fn open(key: &[u8; 16], nonce: &[u8; 12], ciphertext_and_tag: &mut [u8]) -> Result<(), PrimitiveError> {
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, key)?);
        let nonce = aead::Nonce::assume_unique_for_key(*nonce);
        key.open_in_place(nonce, aead::Aad::empty(), ciphertext_and_tag)?;
        Ok(())
    }

    fn fill_random(out: &mut [u8]) -> Result<(), PrimitiveError> {
        Ok(rand::fill(out)?)
    }
}
