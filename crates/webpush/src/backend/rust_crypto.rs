//! [`Primitives`] on RustCrypto (`p256`, `hkdf`, `aes-gcm`): pure Rust.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, KeyInit};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::{OsRng, RngCore};
use sha2::Sha256;

use super::{PrimitiveError, Primitives};
use crate::subscription::P256_PUBLIC_KEY_LEN;

/// The RustCrypto backend.
#[derive(Debug)]
pub(crate) struct RustCrypto;

impl Primitives for RustCrypto {
    type PrivateKey = p256::SecretKey;
    type Prk = hkdf::Hkdf<Sha256>;

    fn generate_key() -> Result<Self::PrivateKey, PrimitiveError> {
        Ok(p256::SecretKey::random(&mut OsRng))
    }

    fn private_key_from_bytes(bytes: &[u8; 32]) -> Result<Self::PrivateKey, PrimitiveError> {
        p256::SecretKey::from_slice(bytes).map_err(|_| PrimitiveError)
    }

    fn public_key(key: &Self::PrivateKey) -> Result<[u8; P256_PUBLIC_KEY_LEN], PrimitiveError> {
        key.public_key().to_encoded_point(false).as_bytes().try_into().map_err(|_| PrimitiveError)
    }

    fn agree(key: &Self::PrivateKey, peer: &[u8; P256_PUBLIC_KEY_LEN]) -> Result<[u8; 32], PrimitiveError> {
        let peer = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| PrimitiveError)?;
        let shared = p256::ecdh::diffie_hellman(key.to_nonzero_scalar(), peer.as_affine());
        Ok((*shared.raw_secret_bytes()).into())
    }

    fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> Self::Prk {
        hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
    }

    fn hkdf_expand(prk: &Self::Prk, info: &[&[u8]], out: &mut [u8]) {
        // Only fails when `out` is longer than 255 hash lengths; ours are at most 32 bytes.
        prk.expand_multi_info(info, out).expect("HKDF output of at most 32 bytes");
    }

    fn seal(key: &[u8; 16], nonce: &[u8; 12], in_out: &mut [u8]) -> Result<[u8; 16], PrimitiveError> {
        let cipher = Aes128Gcm::new(key.into());
        let tag = cipher.encrypt_in_place_detached(nonce.into(), &[], in_out).map_err(|_| PrimitiveError)?;
        Ok(tag.into())
    }

    fn open(key: &[u8; 16], nonce: &[u8; 12], ciphertext_and_tag: &mut [u8]) -> Result<(), PrimitiveError> {
        let split = ciphertext_and_tag.len().checked_sub(16).ok_or(PrimitiveError)?;
        let (ciphertext, tag) = ciphertext_and_tag.split_at_mut(split);
        let cipher = Aes128Gcm::new(key.into());
        cipher
            .decrypt_in_place_detached(nonce.into(), &[], ciphertext, (&*tag).into())
            .map_err(|_| PrimitiveError)
    }

    fn fill_random(out: &mut [u8]) -> Result<(), PrimitiveError> {
        OsRng.try_fill_bytes(out).map_err(|_| PrimitiveError)
    }
}
