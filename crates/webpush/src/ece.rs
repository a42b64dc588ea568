//! RFC 8188 `aes128gcm` content coding: the header, key derivation, and records.
//!
//! A body is `salt (16) | rs (u32 BE) | idlen (u8) | keyid | record...`. Each record is
//! AES-128-GCM over `data | delimiter | zero padding`, the delimiter being 0x01 for every record
//! but the last and 0x02 for the last, and each record but the last exactly `rs` bytes long.
//! Web Push uses one record; [`decrypt`] also reads several.

use crate::backend::{with_primitives, Backend, Primitives};

/// Bytes of the AES-GCM tag on every record.
pub const TAG_LEN: usize = 16;
/// Bytes of the salt at the start of the header.
pub const SALT_LEN: usize = 16;
/// Bytes of the header before the key id: salt, record size, key id length.
pub const HEADER_FIXED_LEN: usize = SALT_LEN + 4 + 1;
/// The smallest record size (RFC 8188 §2.1): a tag, a delimiter and one byte of data.
pub const MIN_RECORD_SIZE: u32 = (TAG_LEN + 2) as u32;

const CEK_INFO: &[u8] = b"Content-Encoding: aes128gcm\0";
const NONCE_INFO: &[u8] = b"Content-Encoding: nonce\0";
const DELIMITER_MORE: u8 = 1;
const DELIMITER_LAST: u8 = 2;

/// Why an `aes128gcm` body could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EceError {
    #[error("body is {0} bytes, shorter than the 21-byte aes128gcm header")]
    TruncatedHeader(usize),
    #[error("header announces a {announced}-byte keyid but only {available} bytes follow")]
    TruncatedKeyId { announced: usize, available: usize },
    #[error("keyid is {0} bytes; the header allows at most 255")]
    KeyIdTooLong(usize),
    #[error("record size {0} is below the minimum of 18")]
    RecordSizeTooSmall(u32),
    #[error("no records follow the header")]
    NoRecords,
    #[error("record {0} is {1} bytes, too short to hold a tag and a delimiter")]
    RecordTooShort(usize, usize),
    #[error("record {0} failed authentication: wrong key or corrupted data")]
    Authentication(usize),
    #[error("record {0} has no padding delimiter (all zero)")]
    NoDelimiter(usize),
    #[error("record {index} ends with delimiter {found:#04x}; expected {expected:#04x}{hint}")]
    WrongDelimiter { index: usize, found: u8, expected: u8, hint: &'static str },
    #[error("{padding} bytes of padding do not fit the last record (record size {record_size})")]
    PaddingTooLarge { padding: usize, record_size: u32 },
    #[error("the ECDH shared secret could not be computed: {0}")]
    KeyAgreement(&'static str),
    #[error("the crypto backend failed")]
    Backend,
}

/// The parsed header of an `aes128gcm` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Random per message; keys are derived from it.
    pub salt: [u8; SALT_LEN],
    /// The size of every record but the last, tag included.
    pub record_size: u32,
    /// Names the input keying material; Web Push puts the sender's public key here.
    pub key_id: &'a [u8],
}

impl<'a> Header<'a> {
    /// Splits `body` into its header and the records after it.
    pub fn parse(body: &'a [u8]) -> Result<(Self, &'a [u8]), EceError> {
        let fixed = body.get(..HEADER_FIXED_LEN).ok_or(EceError::TruncatedHeader(body.len()))?;
        let salt = fixed[..SALT_LEN].try_into().expect("16-byte slice");
        let record_size = u32::from_be_bytes(fixed[SALT_LEN..SALT_LEN + 4].try_into().expect("4-byte slice"));
        let id_len = usize::from(fixed[SALT_LEN + 4]);
        let rest = &body[HEADER_FIXED_LEN..];
        if rest.len() < id_len {
            return Err(EceError::TruncatedKeyId { announced: id_len, available: rest.len() });
        }
        if record_size < MIN_RECORD_SIZE {
            return Err(EceError::RecordSizeTooSmall(record_size));
        }
        let (key_id, records) = rest.split_at(id_len);
        Ok((Self { salt, record_size, key_id }, records))
    }

    /// Bytes this header takes.
    pub fn encoded_len(&self) -> usize {
        HEADER_FIXED_LEN + self.key_id.len()
    }

    /// Appends the header to `out`.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), EceError> {
        let id_len =
            u8::try_from(self.key_id.len()).map_err(|_| EceError::KeyIdTooLong(self.key_id.len()))?;
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.record_size.to_be_bytes());
        out.push(id_len);
        out.extend_from_slice(self.key_id);
        Ok(())
    }
}

/// The content-encryption key and base nonce for `salt` and `ikm` (RFC 8188 §2.2, §2.3).
pub fn key_and_nonce(backend: Backend, salt: &[u8], ikm: &[u8]) -> ([u8; 16], [u8; 12]) {
    with_primitives!(backend, P => derive_key_and_nonce::<P>(salt, ikm))
}

pub(crate) fn derive_key_and_nonce<P: Primitives>(salt: &[u8], ikm: &[u8]) -> ([u8; 16], [u8; 12]) {
    let prk = P::hkdf_extract(salt, ikm);
    let mut cek = [0; 16];
    let mut nonce = [0; 12];
    P::hkdf_expand(&prk, &[CEK_INFO], &mut cek);
    P::hkdf_expand(&prk, &[NONCE_INFO], &mut nonce);
    (cek, nonce)
}

/// The nonce of record `seq`: the base nonce XOR the big-endian sequence number.
fn record_nonce(base: &[u8; 12], seq: usize) -> [u8; 12] {
    let mut nonce = *base;
    for (n, s) in nonce[4..].iter_mut().zip((seq as u64).to_be_bytes()) {
        *n ^= s;
    }
    nonce
}

/// Encrypts `plaintext` into a whole body (header and records), with `padding` zero bytes
/// in the last record. Records are filled with data in order.
pub fn encrypt(
    backend: Backend,
    ikm: &[u8],
    header: &Header<'_>,
    plaintext: &[u8],
    padding: usize,
) -> Result<Vec<u8>, EceError> {
    with_primitives!(backend, P => encrypt_with::<P>(ikm, header, plaintext, padding))
}

fn encrypt_with<P: Primitives>(
    ikm: &[u8],
    header: &Header<'_>,
    plaintext: &[u8],
    padding: usize,
) -> Result<Vec<u8>, EceError> {
    if header.record_size < MIN_RECORD_SIZE {
        return Err(EceError::RecordSizeTooSmall(header.record_size));
    }
    let data_per_record = header.record_size as usize - TAG_LEN - 1;
    let records = plaintext.len().div_ceil(data_per_record).max(1);
    let last_data = plaintext.len() - (records - 1) * data_per_record;
    if last_data + padding > data_per_record {
        return Err(EceError::PaddingTooLarge { padding, record_size: header.record_size });
    }
    let (cek, base_nonce) = derive_key_and_nonce::<P>(&header.salt, ikm);
    let mut body =
        Vec::with_capacity(header.encoded_len() + plaintext.len() + padding + records * (TAG_LEN + 1));
    header.write(&mut body)?;
    for (seq, chunk) in
        plaintext.chunks(data_per_record).chain(plaintext.is_empty().then_some(&[][..])).enumerate()
    {
        let is_last = seq + 1 == records;
        let start = body.len();
        body.extend_from_slice(chunk);
        body.push(if is_last { DELIMITER_LAST } else { DELIMITER_MORE });
        if is_last {
            body.resize(body.len() + padding, 0);
        }
        let tag = P::seal(&cek, &record_nonce(&base_nonce, seq), &mut body[start..])
            .map_err(|_| EceError::Backend)?;
        body.extend_from_slice(&tag);
    }
    Ok(body)
}

/// Decrypts a whole body whose input keying material is `ikm`.
pub fn decrypt(backend: Backend, ikm: &[u8], body: &[u8]) -> Result<Vec<u8>, EceError> {
    let (header, records) = Header::parse(body)?;
    with_primitives!(backend, P => decrypt_records::<P>(ikm, &header, records))
}

/// Decrypts the records that follow `header`, returning the data without delimiters or padding.
pub(crate) fn decrypt_records<P: Primitives>(
    ikm: &[u8],
    header: &Header<'_>,
    records: &[u8],
) -> Result<Vec<u8>, EceError> {
    if records.is_empty() {
        return Err(EceError::NoRecords);
    }
    let (cek, base_nonce) = derive_key_and_nonce::<P>(&header.salt, ikm);
    let record_size = header.record_size as usize;
    let count = records.len().div_ceil(record_size);
    let mut plaintext = Vec::with_capacity(records.len());
    let mut scratch = Vec::with_capacity(record_size.min(records.len()));
    for (seq, record) in records.chunks(record_size).enumerate() {
        if record.len() < TAG_LEN + 1 {
            return Err(EceError::RecordTooShort(seq, record.len()));
        }
        scratch.clear();
        scratch.extend_from_slice(record);
        P::open(&cek, &record_nonce(&base_nonce, seq), &mut scratch)
            .map_err(|_| EceError::Authentication(seq))?;
        let content = &scratch[..record.len() - TAG_LEN];
        let delimiter_at = content.iter().rposition(|&b| b != 0).ok_or(EceError::NoDelimiter(seq))?;
        let is_last = seq + 1 == count;
        let (expected, hint) = if is_last {
            (DELIMITER_LAST, " (the body looks truncated)")
        } else {
            (DELIMITER_MORE, " (a last record is followed by more data)")
        };
        if content[delimiter_at] != expected {
            return Err(EceError::WrongDelimiter {
                index: seq,
                found: content[delimiter_at],
                expected,
                hint,
            });
        }
        plaintext.extend_from_slice(&content[..delimiter_at]);
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(salt: [u8; 16], record_size: u32, key_id: &[u8]) -> Header<'_> {
        Header { salt, record_size, key_id }
    }

    #[test]
    fn round_trips_across_records_on_both_backends() {
        let ikm = [9u8; 16];
        let plaintext: Vec<u8> = (0..199u8).collect();
        for backend in Backend::ALL {
            // 199 bytes leave 1 byte free in the last 25-byte record and 50 in the last 100-byte one.
            for (rs, padding) in [(18, 0), (25, 1), (100, 50), (4096, 0), (4096, 1000)] {
                let body = encrypt(backend, &ikm, &header([1; 16], rs, b"id"), &plaintext, padding).unwrap();
                assert_eq!(decrypt(backend, &ikm, &body).unwrap(), plaintext, "rs {rs} padding {padding}");
            }
            let empty = encrypt(backend, &ikm, &header([1; 16], 18, b""), b"", 0).unwrap();
            assert_eq!(decrypt(backend, &ikm, &empty).unwrap(), b"");
        }
    }

    #[test]
    fn rejects_truncation_reordering_and_bad_headers() {
        let ikm = [3u8; 16];
        let body = encrypt(Backend::AwsLc, &ikm, &header([2; 16], 20, b""), b"0123456789", 0).unwrap();
        // Three records of 20 bytes (3 data bytes each) and a last one of 18.
        let records = HEADER_FIXED_LEN;
        assert_eq!(body.len(), records + 3 * 20 + 18);

        let truncated = &body[..records + 2 * 20];
        assert!(matches!(
            decrypt(Backend::AwsLc, &ikm, truncated),
            Err(EceError::WrongDelimiter { index: 1, found: 1, expected: 2, .. })
        ));
        let mut swapped = body.clone();
        swapped[records..records + 40].rotate_left(20);
        assert_eq!(decrypt(Backend::AwsLc, &ikm, &swapped), Err(EceError::Authentication(0)));

        assert_eq!(decrypt(Backend::AwsLc, &ikm, &body[..20]), Err(EceError::TruncatedHeader(20)));
        assert_eq!(decrypt(Backend::AwsLc, &ikm, &body[..HEADER_FIXED_LEN]), Err(EceError::NoRecords));
        let mut tiny_rs = body.clone();
        tiny_rs[16..20].copy_from_slice(&17u32.to_be_bytes());
        assert_eq!(decrypt(Backend::AwsLc, &ikm, &tiny_rs), Err(EceError::RecordSizeTooSmall(17)));
        let mut long_id = body.clone();
        long_id[20] = 200;
        assert!(matches!(decrypt(Backend::AwsLc, &ikm, &long_id), Err(EceError::TruncatedKeyId { .. })));
        assert_eq!(
            encrypt(Backend::AwsLc, &ikm, &header([0; 16], 20, b""), b"ab", 2),
            Err(EceError::PaddingTooLarge { padding: 2, record_size: 20 })
        );
        assert_eq!(
            encrypt(Backend::AwsLc, &ikm, &header([0; 16], 4096, &[0; 256]), b"ab", 0),
            Err(EceError::KeyIdTooLong(256))
        );
    }

    #[test]
    fn record_nonces_follow_rfc8188() {
        let base = [0xffu8; 12];
        assert_eq!(record_nonce(&base, 0), base);
        let n = record_nonce(&base, 0x0102);
        assert_eq!(&n[..10], &[0xff; 10]);
        assert_eq!(&n[10..], &[0xfe, 0xfd]);
    }
}
