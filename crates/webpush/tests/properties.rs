//! Property tests: any payload and padding round-trips on every backend, and any single
//! flipped bit makes decryption fail, except in the one field the format leaves unauthenticated.

use proptest::prelude::*;
use pushfan_webpush::message::MAX_PLAINTEXT_LEN;
use pushfan_webpush::{encrypt, Backend, ContentEncoding, Padding, UserAgentKeys};

fn backend() -> impl Strategy<Value = Backend> {
    prop::sample::select(Backend::ALL.to_vec())
}

fn encoding() -> impl Strategy<Value = ContentEncoding> {
    prop::sample::select(vec![ContentEncoding::Aes128gcm, ContentEncoding::Aesgcm])
}

fn padding() -> impl Strategy<Value = Padding> {
    prop_oneof![
        Just(Padding::None),
        Just(Padding::standard_buckets()),
        prop::collection::vec(1usize..=MAX_PLAINTEXT_LEN, 1..4).prop_map(|mut sizes| {
            sizes.sort_unstable();
            Padding::Buckets(sizes)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_payload_round_trips(
        backend in backend(),
        decrypt_with in backend(),
        encoding in encoding(),
        padding in padding(),
        payload in prop::collection::vec(any::<u8>(), 0..=MAX_PLAINTEXT_LEN),
    ) {
        let agent = UserAgentKeys::generate(backend).unwrap();
        let push = encrypt(backend, agent.subscription_keys(), encoding, &payload, &padding).unwrap();
        let max = encoding.max_plaintext_len();
        prop_assert_eq!(push.body.len(), encoding.body_len(payload.len(), padding.padding_for(payload.len(), max)));
        prop_assert!(push.body.len() <= 4096);
        let read = agent.decrypt(decrypt_with, encoding, &push.body, push.aesgcm.as_ref()).unwrap();
        prop_assert_eq!(read, payload);
    }

    #[test]
    fn any_flipped_byte_fails_decryption(
        backend in backend(),
        encoding in encoding(),
        payload in prop::collection::vec(any::<u8>(), 0..300),
        position in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let agent = UserAgentKeys::generate(backend).unwrap();
        let push = encrypt(backend, agent.subscription_keys(), encoding, &payload, &Padding::None).unwrap();
        let mut body = push.body.to_vec();
        let at = position.index(body.len());
        body[at] ^= 1 << bit;
        let read = agent.decrypt(backend, encoding, &body, push.aesgcm.as_ref());
        // RFC 8188 does not authenticate the record size (bytes 16..20): a single record stays
        // readable under any size at least as large as itself, and must then read the same.
        let in_record_size = encoding == ContentEncoding::Aes128gcm && (16..20).contains(&at);
        match read {
            Ok(plaintext) if in_record_size => prop_assert_eq!(plaintext, payload),
            Ok(_) => prop_assert!(false, "flipping bit {} of byte {} still decrypted", bit, at),
            Err(_) => {}
        }
    }
}
