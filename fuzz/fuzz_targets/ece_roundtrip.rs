//! Fuzz target: what pushfan encrypts, it and a user agent read back, on both backends.
//!
//! `ece_decrypt` cannot get past the AES-GCM tag, so the delimiter, padding and multi-record code
//! after it is reached here instead: the input picks a record size, a padding length and the
//! plaintext; RFC 8188 `ece::encrypt` and RFC 8291 `encrypt_with_keys` (both encodings) must
//! either refuse or produce a body that decrypts to the plaintext, byte-identical across backends.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pushfan_webpush::ece::{self, Header};
use pushfan_webpush::message::encrypt_with_keys;
use pushfan_webpush::{Backend, ContentEncoding, UserAgentKeys};

/// Fixed keys keep every input reproducible; reusing them is harmless in a test.
const IKM: [u8; 16] = [0x42; 16];
const SENDER: [u8; 32] = [0x5a; 32];
const SALT: [u8; 16] = [0xc3; 16];

static USER_AGENT: LazyLock<UserAgentKeys> =
    LazyLock::new(|| UserAgentKeys::from_private_key(Backend::AwsLc, [0x17; 32], [0x29; 16]).unwrap());

fuzz_target!(|data: &[u8]| {
    let Some((head, plaintext)) = data.split_first_chunk::<6>() else { return };
    let record_size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let padding = usize::from(u16::from_be_bytes([head[4], head[5]])) % 4096;

    let header = Header { salt: SALT, record_size, key_id: b"fuzz" };
    let [aws_lc, rust_crypto] = Backend::ALL.map(|b| ece::encrypt(b, &IKM, &header, plaintext, padding));
    assert_eq!(aws_lc, rust_crypto, "ece::encrypt differs between backends");
    if let Ok(body) = &aws_lc {
        for backend in Backend::ALL {
            assert_eq!(ece::decrypt(backend, &IKM, body).as_deref(), Ok(plaintext), "{backend:?}");
        }
    }

    let ua = &*USER_AGENT;
    for encoding in [ContentEncoding::Aes128gcm, ContentEncoding::Aesgcm] {
        let [aws_lc, rust_crypto] = Backend::ALL.map(|b| {
            encrypt_with_keys(b, ua.subscription_keys(), encoding, plaintext, padding, &SENDER, SALT)
        });
        assert_eq!(aws_lc, rust_crypto, "{encoding} differs between backends");
        if let Ok(push) = &aws_lc {
            assert_eq!(push.body.len(), encoding.body_len(plaintext.len(), padding), "{encoding}");
            for backend in Backend::ALL {
                let read = ua.decrypt(backend, encoding, &push.body, push.aesgcm.as_ref());
                assert_eq!(read.as_deref(), Ok(plaintext), "{encoding} {backend:?}");
            }
        }
    }
});
