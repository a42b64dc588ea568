//! Fuzz target: arbitrary text as an endpoint URL, read under every endpoint policy by the full
//! parse and by the fast path for stored endpoints, then built into a request. Nothing may
//! panic; the fast path never accepts what the full parse refuses; and what either accepts
//! always builds a request (an accepted endpoint that cannot be sent looped a worker once).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pushfan_webpush::vapid::{Subject, VapidKey, VapidSigner, VapidToken};
use pushfan_webpush::{
    build_request, encrypt, Backend, ContentEncoding, EncryptedPush, Endpoint, EndpointPolicy, Padding,
    PushOptions, UserAgentKeys,
};

static PARTS: LazyLock<(EncryptedPush, VapidToken)> = LazyLock::new(|| {
    let ua = UserAgentKeys::generate(Backend::AwsLc).unwrap();
    let push = encrypt(Backend::AwsLc, ua.subscription_keys(), ContentEncoding::Aes128gcm, b"hi", &Padding::None)
        .unwrap();
    let signer = VapidSigner::new(VapidKey::generate(), Subject::parse("mailto:ops@example.com").unwrap());
    (push, signer.sign("https://push.example", 1_800_000_000))
});

fuzz_target!(|text: &str| {
    let (push, token) = &*PARTS;
    let options = PushOptions::default();
    let strict = EndpointPolicy::default();
    let loopback = EndpointPolicy::allow_http_loopback();
    for policy in [&strict, &loopback, EndpointPolicy::stored()] {
        let full = Endpoint::parse(text, policy);
        let fast = Endpoint::from_serialized(text, policy);
        assert_eq!(fast, full, "the fast path and the full parse disagree");
        if let Ok(endpoint) = full {
            let again = Endpoint::from_serialized(endpoint.as_str(), policy);
            assert_eq!(again.as_ref(), Ok(&endpoint), "an endpoint does not read back as written");
            assert_eq!(endpoint.check(policy), Ok(()));
            let _ = (endpoint.host(), endpoint.redacted(), endpoint.origin());
            if let Err(error) = build_request(&endpoint, push, &options, options.ttl, token) {
                panic!("an accepted endpoint builds no request: {error}");
            }
            for other in [&strict, &loopback] {
                let _ = endpoint.check(other);
            }
        }
    }
});
