//! Fuzz target: arbitrary bytes as a push message body, read every way pushfan reads one.
//!
//! - RFC 8188 alone: `ece::Header::parse` and `ece::decrypt` with the RFC 8188 §3.1 key.
//! - RFC 8291: `UserAgentKeys::decrypt` as the RFC 8291 Appendix A user agent, as `aes128gcm`
//!   and as legacy `aesgcm` (with that example's salt and sender key, and with the first 81 input
//!   bytes taken as salt and sender key, so that invalid points are tried too).
//!
//! On both backends. Nothing may panic (errors are the expected outcome), and the backends must
//! agree on every outcome, error or plaintext.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pushfan_webpush::ece::{self, Header};
use pushfan_webpush::{b64, AesgcmParams, Backend, ContentEncoding, UserAgentKeys};

fn decoded<const N: usize>(text: &str) -> [u8; N] {
    b64::decode(text).unwrap().try_into().unwrap()
}

/// The keys of RFC 8188 §3.1 and RFC 8291 Appendix A: the seed corpus holds those examples'
/// bodies, so the fuzzer starts from messages these keys really open. Made once, not per input.
struct Keys {
    ikm: [u8; 16],
    user_agents: [(Backend, UserAgentKeys); 2],
    example: AesgcmParams,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let ua_private = decoded("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94");
    let auth = decoded("BTBZMqHH6r4Tts7J_aSIgg");
    Keys {
        ikm: decoded("yqdlZ-tYemfogSmv7Ws5PQ"),
        user_agents: Backend::ALL.map(|b| (b, UserAgentKeys::from_private_key(b, ua_private, auth).unwrap())),
        example: AesgcmParams {
            salt: decoded("DGv6ra1nlYgDCS1FRnbzlw"),
            dh: decoded(
                "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8",
            ),
        },
    }
});

fuzz_target!(|body: &[u8]| {
    let keys = &*KEYS;
    let from_input = (body.len() >= 81)
        .then(|| AesgcmParams { salt: body[..16].try_into().unwrap(), dh: body[16..81].try_into().unwrap() });

    if let Ok((header, records)) = Header::parse(body) {
        assert_eq!(header.encoded_len() + records.len(), body.len());
    }
    let read = |(backend, ua): &(Backend, UserAgentKeys)| {
        (
            ece::decrypt(*backend, &keys.ikm, body),
            ua.decrypt(*backend, ContentEncoding::Aes128gcm, body, None),
            ua.decrypt(*backend, ContentEncoding::Aesgcm, body, Some(&keys.example)),
            from_input.as_ref().map(|p| ua.decrypt(*backend, ContentEncoding::Aesgcm, &body[81..], Some(p))),
        )
    };
    let [aws_lc, rust_crypto] = &keys.user_agents;
    assert_eq!(read(aws_lc), read(rust_crypto), "the backends disagree");
});
