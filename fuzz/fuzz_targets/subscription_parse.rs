//! Fuzz target: arbitrary UTF-8 as the JSON of a browser's `PushSubscription`, under both
//! endpoint policies. Nothing may panic, and what parses must format for logs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushfan_webpush::{EndpointPolicy, PushSubscription};

fuzz_target!(|json: &str| {
    for policy in [EndpointPolicy::default(), EndpointPolicy::allow_http_loopback()] {
        if let Ok(subscription) = PushSubscription::parse(json, &policy) {
            let _ = format!("{subscription:?} {}", subscription.endpoint);
        }
    }
});
