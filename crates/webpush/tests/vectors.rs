//! The RFC 8291 Appendix A and RFC 8188 §3 examples, byte for byte, on every backend.
//!
//! The JSON files are copies of `shared/conformance/`; every value in them is checked.

use pushfan_webpush::b64;
use pushfan_webpush::ece::{self, Header};
use pushfan_webpush::message::{encrypt_with_keys, key_schedule};
use pushfan_webpush::{Backend, ContentEncoding, SubscriptionKeys, UserAgentKeys};
use serde_json::Value;

/// The package's directory as the test runner gives it at run time. The compile-time value may
/// name another clone: clones share one target directory, and cargo reuses a test binary that
/// an identical clone elsewhere built.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", manifest_dir());
    serde_json::from_str(&std::fs::read_to_string(&path).expect("vector file")).expect("vector JSON")
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    b64::decode(v[field].as_str().unwrap_or_else(|| panic!("{field} missing"))).expect("base64url")
}

fn array<const N: usize>(v: &Value, field: &str) -> [u8; N] {
    bytes(v, field).try_into().unwrap_or_else(|_| panic!("{field} is not {N} bytes"))
}

#[test]
fn rfc8291_appendix_a_on_every_backend() {
    let v = load("rfc8291-appendix-a.json");
    let plaintext = v["plaintext_utf8"].as_str().unwrap().as_bytes();
    let keys = SubscriptionKeys::from_bytes(&bytes(&v, "ua_public"), &bytes(&v, "auth_secret")).unwrap();
    let as_private: [u8; 32] = array(&v, "as_private");
    let salt: [u8; 16] = array(&v, "salt");
    for backend in Backend::ALL {
        let schedule = key_schedule(backend, &keys, &as_private, &salt).unwrap();
        assert_eq!(schedule.ecdh_secret, array(&v, "ecdh_secret"), "{backend:?} ecdh");
        assert_eq!(schedule.ikm, array(&v, "ikm"), "{backend:?} ikm");
        assert_eq!(schedule.cek, array(&v, "cek"), "{backend:?} cek");
        assert_eq!(schedule.nonce, array(&v, "nonce"), "{backend:?} nonce");
        // The PRK is HKDF-Extract(salt, IKM): its expansions above are the CEK and nonce, and
        // here it is recomputed directly as HMAC-SHA-256(salt, IKM).
        let prk = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &salt),
            &schedule.ikm,
        );
        assert_eq!(prk.as_ref(), bytes(&v, "prk"), "prk");

        let sent =
            encrypt_with_keys(backend, &keys, ContentEncoding::Aes128gcm, plaintext, 0, &as_private, salt)
                .unwrap();
        assert_eq!(sent.body.as_ref(), bytes(&v, "body"), "{backend:?} body");
        let header_len = bytes(&v, "header").len();
        assert_eq!(&sent.body[..header_len], bytes(&v, "header"), "{backend:?} header");
        assert_eq!(&sent.body[header_len..], bytes(&v, "ciphertext"), "{backend:?} ciphertext");
        let (header, _) = Header::parse(&sent.body).unwrap();
        assert_eq!(header.record_size, v["record_size"].as_u64().unwrap() as u32);
        assert_eq!(header.key_id, bytes(&v, "as_public"));

        let ua = UserAgentKeys::from_private_key(backend, array(&v, "ua_private"), array(&v, "auth_secret"))
            .unwrap();
        assert_eq!(ua.subscription_keys(), &keys);
        let read = ua.decrypt(backend, ContentEncoding::Aes128gcm, &bytes(&v, "body"), None).unwrap();
        assert_eq!(read, plaintext, "{backend:?} decrypt");
    }
}

#[test]
fn rfc8188_examples_on_every_backend() {
    let v = load("rfc8188-examples.json");
    let examples = v["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 2);
    for backend in Backend::ALL {
        for example in examples {
            let section = example["section"].as_str().unwrap();
            let plaintext = example["plaintext_utf8"].as_str().unwrap().as_bytes();
            let ikm = bytes(example, "ikm");
            let body = bytes(example, "body");
            assert_eq!(
                ece::decrypt(backend, &ikm, &body).unwrap(),
                plaintext,
                "{backend:?} §{section} decrypt"
            );

            let key_id = example["keyid_utf8"].as_str().map(str::as_bytes).unwrap_or_default();
            let (header, records) = Header::parse(&body).unwrap();
            assert_eq!(header.salt.as_slice(), bytes(example, "salt"));
            assert_eq!(header.record_size, example["record_size"].as_u64().unwrap() as u32);
            assert_eq!(header.key_id, key_id);
            if section == "3.1" {
                let (cek, nonce) = ece::key_and_nonce(backend, &header.salt, &ikm);
                assert_eq!(cek.as_slice(), bytes(example, "cek"), "{backend:?} cek");
                assert_eq!(nonce.as_slice(), bytes(example, "nonce"), "{backend:?} nonce");
                let ours = ece::encrypt(backend, &ikm, &header, plaintext, 0).unwrap();
                assert_eq!(ours, body, "{backend:?} §3.1 encrypt");
            } else {
                // §3.2 puts one byte of padding in its first record; check our reading of its
                // structure: two records, the first exactly `rs` bytes.
                assert_eq!(records.len().div_ceil(header.record_size as usize), 2);
                let ours = ece::encrypt(backend, &ikm, &header, plaintext, 0).unwrap();
                assert_eq!(
                    ece::decrypt(backend, &ikm, &ours).unwrap(),
                    plaintext,
                    "{backend:?} §3.2 round trip"
                );
            }
        }
    }
}

/// Found by fuzzing: AWS-LC alone accepted a SEC1 "hybrid" sender key (0x07 prefix).
#[test]
fn both_backends_refuse_a_hybrid_form_sender_key_alike() {
    let v = load("rfc8291-appendix-a.json");
    let mut body = bytes(&v, "body");
    body[21] = 0x07;
    let results: Vec<_> = Backend::ALL
        .into_iter()
        .map(|backend| {
            let ua =
                UserAgentKeys::from_private_key(backend, array(&v, "ua_private"), array(&v, "auth_secret"))
                    .unwrap();
            ua.decrypt(backend, ContentEncoding::Aes128gcm, &body, None)
        })
        .collect();
    assert!(results[0].is_err());
    assert_eq!(results[0], results[1]);
}
