//! One payload encrypted for many subscribers on every core.
//!
//! Work is split into chunks; each chunk carves its bodies out of one allocation, so a batch
//! allocates per chunk, not per subscriber. One subscriber's bad key fails that subscriber only.

use bytes::BytesMut;
use rayon::prelude::*;

use crate::backend::{with_primitives, Backend, Primitives};
use crate::message::{encrypt_fresh, ContentEncoding, EncryptError, EncryptedPush, Padding};
use crate::subscription::{PushSubscription, SubscriptionKeys};

/// Subscribers per rayon task: large enough to amortise scheduling and the chunk's allocation,
/// small enough to balance two cores on a few hundred subscribers.
const CHUNK: usize = 64;

/// Anything that can be encrypted for: its keys, and the encoding its user agent reads.
pub trait Recipient: Sync {
    /// The subscriber's keys.
    fn keys(&self) -> &SubscriptionKeys;
    /// The encoding to use; `aes128gcm` unless the user agent only supports `aesgcm`.
    fn encoding(&self) -> ContentEncoding {
        ContentEncoding::Aes128gcm
    }
}

impl Recipient for SubscriptionKeys {
    fn keys(&self) -> &SubscriptionKeys {
        self
    }
}

impl Recipient for PushSubscription {
    fn keys(&self) -> &SubscriptionKeys {
        &self.keys
    }
}

impl<R: Recipient> Recipient for &R {
    fn keys(&self) -> &SubscriptionKeys {
        (*self).keys()
    }

    fn encoding(&self) -> ContentEncoding {
        (*self).encoding()
    }
}

/// Encrypts `plaintext` for every recipient in parallel on rayon's pool; results are in the
/// recipients' order.
pub fn encrypt_batch<R: Recipient>(
    backend: Backend,
    recipients: &[R],
    plaintext: &[u8],
    padding: &Padding,
) -> Vec<Result<EncryptedPush, EncryptError>> {
    with_primitives!(backend, P => {
        recipients
            .par_chunks(CHUNK)
            .flat_map_iter(|chunk| encrypt_chunk::<P, R>(chunk, plaintext, padding))
            .collect()
    })
}

fn encrypt_chunk<P: Primitives, R: Recipient>(
    chunk: &[R],
    plaintext: &[u8],
    padding: &Padding,
) -> Vec<Result<EncryptedPush, EncryptError>> {
    let capacity = chunk
        .iter()
        .map(|r| {
            let max = r.encoding().max_plaintext_len();
            r.encoding().body_len(plaintext.len(), padding.padding_for(plaintext.len(), max))
        })
        .sum();
    let mut arena = BytesMut::with_capacity(capacity);
    chunk.iter().map(|r| encrypt_fresh::<P>(r.keys(), r.encoding(), plaintext, padding, &mut arena)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::UserAgentKeys;

    struct Legacy(SubscriptionKeys);

    impl Recipient for Legacy {
        fn keys(&self) -> &SubscriptionKeys {
            &self.0
        }
        fn encoding(&self) -> ContentEncoding {
            ContentEncoding::Aesgcm
        }
    }

    #[test]
    fn every_recipient_reads_its_own_message_in_order() {
        for backend in Backend::ALL {
            let agents: Vec<UserAgentKeys> =
                (0..150).map(|_| UserAgentKeys::generate(backend).unwrap()).collect();
            let keys: Vec<SubscriptionKeys> = agents.iter().map(|a| a.subscription_keys().clone()).collect();
            let results = encrypt_batch(backend, &keys, b"batch", &Padding::standard_buckets());
            assert_eq!(results.len(), agents.len());
            for (agent, result) in agents.iter().zip(results) {
                let push = result.unwrap();
                assert_eq!(push.body.len(), ContentEncoding::Aes128gcm.body_len(5, 123));
                assert_eq!(agent.decrypt(backend, push.encoding, &push.body, None).unwrap(), b"batch");
            }

            let legacy: Vec<Legacy> = keys.iter().take(3).cloned().map(Legacy).collect();
            for (agent, result) in agents.iter().zip(encrypt_batch(backend, &legacy, b"old", &Padding::None))
            {
                let push = result.unwrap();
                assert_eq!(push.encoding, ContentEncoding::Aesgcm);
                assert_eq!(
                    agent.decrypt(backend, push.encoding, &push.body, push.aesgcm.as_ref()).unwrap(),
                    b"old"
                );
            }
        }
    }

    #[test]
    fn an_oversize_payload_fails_each_recipient_with_a_clear_error() {
        let keys = vec![UserAgentKeys::generate(Backend::AwsLc).unwrap().subscription_keys().clone(); 2];
        let payload = vec![0u8; 3994];
        for result in encrypt_batch(Backend::AwsLc, &keys, &payload, &Padding::None) {
            let err = result.unwrap_err();
            assert_eq!(
                err,
                EncryptError::PayloadTooLarge { len: 3994, max: 3993, encoding: ContentEncoding::Aes128gcm }
            );
            assert_eq!(
                err.to_string(),
                "payload is 3994 bytes; aes128gcm carries at most 3993 (padding included)"
            );
        }
    }
}
