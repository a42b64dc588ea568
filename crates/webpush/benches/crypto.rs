//! The crypto core's cost: primitives per backend, full RFC 8291 encryption against a bare
//! AWS-LC loop doing the same work, VAPID signing, and the rayon batch on one and on all cores.
//!
//! `scripts/bench-report crypto` turns the results into the ratios BENCHMARKS.md records.

use std::hint::black_box;

use aws_lc_rs::{aead, agreement, hkdf, rand as lc_rand};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use pushfan_webpush::vapid::{Subject, VapidKey, VapidSigner};
use pushfan_webpush::{
    encrypt, encrypt_batch, Backend, ContentEncoding, Padding, SubscriptionKeys, UserAgentKeys,
};

const SMALL: usize = 100;
const LARGE: usize = 3 * 1024;
const BATCH: usize = 2048;

fn subscriber() -> SubscriptionKeys {
    UserAgentKeys::generate(Backend::AwsLc).unwrap().subscription_keys().clone()
}

struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// RFC 8291 written straight against aws-lc-rs with nothing else around it: the ceiling the
/// library's full encryption is measured against.
fn bare_aws_lc_encrypt(keys: &SubscriptionKeys, plaintext: &[u8]) -> Vec<u8> {
    let sender = agreement::PrivateKey::generate(&agreement::ECDH_P256).unwrap();
    let sender_public = sender.compute_public_key().unwrap();
    let mut salt = [0u8; 16];
    lc_rand::fill(&mut salt).unwrap();
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, keys.p256dh());
    let ikm = agreement::agree(&sender, peer, (), |ecdh| {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, keys.auth()).extract(ecdh);
        let mut ikm = [0u8; 32];
        let info: [&[u8]; 3] = [b"WebPush: info\0", keys.p256dh(), sender_public.as_ref()];
        prk.expand(&info, OkmLen(32)).unwrap().fill(&mut ikm).unwrap();
        Ok(ikm)
    })
    .unwrap();
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(&ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(&[b"Content-Encoding: aes128gcm\0"], OkmLen(16)).unwrap().fill(&mut cek).unwrap();
    prk.expand(&[b"Content-Encoding: nonce\0"], OkmLen(12)).unwrap().fill(&mut nonce).unwrap();

    let mut body = Vec::with_capacity(86 + plaintext.len() + 17);
    body.extend_from_slice(&salt);
    body.extend_from_slice(&4096u32.to_be_bytes());
    body.push(65);
    body.extend_from_slice(sender_public.as_ref());
    body.extend_from_slice(plaintext);
    body.push(2);
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &cek).unwrap());
    let tag = key
        .seal_in_place_separate_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::empty(),
            &mut body[86..],
        )
        .unwrap();
    body.extend_from_slice(tag.as_ref());
    body
}

fn primitives(c: &mut Criterion) {
    let peer = subscriber();
    let mut group = c.benchmark_group("primitives");
    group.bench_function("aws-lc-rs/keygen", |b| {
        b.iter(|| {
            let key = agreement::PrivateKey::generate(&agreement::ECDH_P256).unwrap();
            black_box(key.compute_public_key().unwrap());
        })
    });
    let lc_key = agreement::PrivateKey::generate(&agreement::ECDH_P256).unwrap();
    group.bench_function("aws-lc-rs/ecdh", |b| {
        b.iter(|| {
            let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer.p256dh());
            agreement::agree(&lc_key, peer, (), |s| Ok(black_box(s[0]))).unwrap()
        })
    });
    group.bench_function("rustcrypto/keygen", |b| {
        b.iter(|| {
            let key = p256::SecretKey::random(&mut rand_core::OsRng);
            black_box(key.public_key().to_encoded_point(false));
        })
    });
    let rc_key = p256::SecretKey::random(&mut rand_core::OsRng);
    group.bench_function("rustcrypto/ecdh", |b| {
        b.iter(|| {
            let peer = p256::PublicKey::from_sec1_bytes(peer.p256dh()).unwrap();
            black_box(p256::ecdh::diffie_hellman(rc_key.to_nonzero_scalar(), peer.as_affine()));
        })
    });
    group.finish();
}

fn full_encrypt(c: &mut Criterion) {
    let keys = subscriber();
    for size in [SMALL, LARGE] {
        let payload = vec![0x5a; size];
        let mut group = c.benchmark_group(format!("encrypt-{size}B"));
        group.throughput(Throughput::Elements(1));
        group
            .bench_function("bare-aws-lc-rs", |b| b.iter(|| black_box(bare_aws_lc_encrypt(&keys, &payload))));
        for backend in Backend::ALL {
            group.bench_function(backend.name(), |b| {
                b.iter(|| {
                    encrypt(backend, &keys, ContentEncoding::Aes128gcm, &payload, &Padding::None).unwrap()
                })
            });
        }
        group.finish();
    }
}

fn vapid(c: &mut Criterion) {
    let signer = VapidSigner::new(VapidKey::generate(), Subject::parse("mailto:ops@example.com").unwrap());
    c.bench_function("vapid/sign", |b| {
        b.iter(|| black_box(signer.sign("https://fcm.googleapis.com", 1_800_000_000)))
    });
}

fn batch(c: &mut Criterion) {
    let recipients: Vec<SubscriptionKeys> = (0..BATCH).map(|_| subscriber()).collect();
    let payload = vec![0x5a; SMALL];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for backend in Backend::ALL {
        let mut group = c.benchmark_group(format!("batch-{}", backend.name()));
        group.throughput(Throughput::Elements(BATCH as u64));
        group.sample_size(20);
        for threads in [1, cores] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            group.bench_function(format!("{threads}-threads"), |b| {
                b.iter(|| pool.install(|| encrypt_batch(backend, &recipients, &payload, &Padding::None)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, primitives, full_encrypt, vapid, batch);
criterion_main!(benches);
