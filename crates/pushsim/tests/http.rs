//! The simulated push service over real loopback sockets with hyper's client: HTTP/2 over TLS
//! trusting the generated CA, h2c, and HTTP/1.1, with messages made by pushfan-webpush exactly as
//! the gateway makes them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pushfan_pushsim::{
    Burst, FaultPlan, Population, PushSim, PushSimConfig, PushSimHandle, Sample, Selection,
};
use pushfan_webpush::vapid::{Subject, VapidKey, VapidSigner};
use pushfan_webpush::{
    build_request, classify, encrypt, Backend, ContentEncoding, Padding, PushOptions, PushOutcome,
};

type HttpClient<C> = Client<C, Full<Bytes>>;

struct Answer {
    status: StatusCode,
    version: Version,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn outcome(&self) -> PushOutcome {
        let retry_after = self.headers.get("retry-after").and_then(|v| v.to_str().ok());
        classify(self.status.as_u16(), retry_after, &self.body, SystemTime::now())
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn signer() -> VapidSigner {
    VapidSigner::new(VapidKey::generate(), Subject::parse("mailto:ops@example.com").unwrap())
}

/// A message for subscriber `to`, encrypted for subscriber `keys_of`'s keys, signed for the
/// endpoint's origin.
fn message(
    sim: &PushSimHandle,
    signer: &VapidSigner,
    to: u64,
    keys_of: u64,
    encoding: ContentEncoding,
    payload: &[u8],
) -> Request<Full<Bytes>> {
    let endpoint = sim.population().endpoint(to).unwrap();
    let keys = sim.population().keys(keys_of);
    let push = encrypt(Backend::AwsLc, keys.subscription_keys(), encoding, payload, &Padding::None).unwrap();
    let token = signer.sign(endpoint.origin(), now());
    build_request(&endpoint, &push, &PushOptions::default(), PushOptions::default().ttl, &token)
        .unwrap()
        .map(Full::new)
}

async fn send<C: Connect + Clone + Send + Sync + 'static>(
    client: &HttpClient<C>,
    request: Request<Full<Bytes>>,
) -> Answer {
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn http1_client() -> HttpClient<HttpConnector> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c_client() -> HttpClient<HttpConnector> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

async fn plain(count: u64) -> PushSimHandle {
    PushSim::start(PushSimConfig::new(Population::new(7, count))).await.unwrap()
}

#[tokio::test]
async fn http2_over_tls_trusting_the_generated_ca() {
    let config = PushSimConfig::new(Population::new(1, 4)).with_tls().unwrap();
    let sim = PushSim::start(config).await.unwrap();
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));
    assert!(sim.cert_pem().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    let identity = sim.tls().unwrap();
    let h2 = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(identity.client_config(&[]).unwrap())
        .https_only()
        .enable_http2()
        .build();
    let h2: HttpClient<_> = Client::builder(TokioExecutor::new()).http2_only(true).build(h2);
    let signer = signer();
    for i in 0..3 {
        let answer = send(&h2, message(&sim, &signer, i, i, ContentEncoding::Aes128gcm, b"over h2")).await;
        assert_eq!((answer.status, answer.version), (StatusCode::CREATED, Version::HTTP_2));
        assert!(answer.headers["location"].to_str().unwrap().starts_with("/m/"));
    }

    // The same server speaks HTTP/1.1 to a client that offers no ALPN.
    let h1 = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(identity.client_config(&[]).unwrap())
        .https_only()
        .enable_http1()
        .build();
    let h1: HttpClient<_> = Client::builder(TokioExecutor::new()).build(h1);
    let answer = send(&h1, message(&sim, &signer, 3, 3, ContentEncoding::Aes128gcm, b"over h1")).await;
    assert_eq!((answer.status, answer.version), (StatusCode::CREATED, Version::HTTP_11));

    let stats = sim.stats();
    assert_eq!(stats.status(201), 4);
    assert_eq!((stats.vapid_verified, stats.decrypted), (4, 4));
    assert_eq!(stats.received.exactly_one, 4);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let sim = plain(2).await;
    let answer =
        send(&h2c_client(), message(&sim, &signer(), 1, 1, ContentEncoding::Aes128gcm, b"h2c")).await;
    assert_eq!((answer.status, answer.version), (StatusCode::CREATED, Version::HTTP_2));
    assert_eq!(sim.live_stats().receive_counts(), vec![0, 1]);

    // An origin label in the path, as a load test simulating several push services uses it.
    let labelled = Population::new(7, 2).with_origins(&[format!("{}/fcm", sim.base_url())]).unwrap();
    let endpoint = labelled.endpoint(0).unwrap();
    assert!(endpoint.as_str().ends_with("/fcm/push/0"));
    let signer = signer();
    let push = encrypt(
        Backend::AwsLc,
        labelled.keys(0).subscription_keys(),
        ContentEncoding::Aes128gcm,
        b"labelled",
        &Padding::None,
    )
    .unwrap();
    let token = signer.sign(endpoint.origin(), now());
    let request =
        build_request(&endpoint, &push, &PushOptions::default(), PushOptions::default().ttl, &token)
            .unwrap()
            .map(Full::new);
    assert_eq!(send(&h2c_client(), request).await.status, StatusCode::CREATED);
    assert_eq!(sim.live_stats().receive_counts(), vec![1, 1]);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn http1_broadcast_reaches_every_subscriber_exactly_once_in_both_encodings() {
    let count = 12;
    let config = PushSimConfig {
        expected_payload: Some(Bytes::from_static(b"breaking news")),
        ..PushSimConfig::new(Population::new(3, count))
    };
    let sim = PushSim::start(config).await.unwrap();
    let client = http1_client();
    let signer = signer();
    for i in 0..count {
        let encoding = if i % 2 == 0 { ContentEncoding::Aes128gcm } else { ContentEncoding::Aesgcm };
        let answer = send(&client, message(&sim, &signer, i, i, encoding, b"breaking news")).await;
        assert_eq!((answer.status, answer.version), (StatusCode::CREATED, Version::HTTP_11), "{i}");
    }
    let stats = sim.stats();
    assert_eq!(stats.received.exactly_one, count);
    assert_eq!(stats.received.max, 1);
    assert_eq!((stats.decrypted, stats.payload_mismatches), (count, 0));

    let wrong = send(&client, message(&sim, &signer, 0, 0, ContentEncoding::Aes128gcm, b"old news")).await;
    assert_eq!(wrong.outcome(), PushOutcome::Rejected { status: 400, reason: "UnexpectedPayload".into() });
    assert_eq!(sim.stats().payload_mismatches, 1);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_push_services_reasons() {
    let sim = plain(3).await;
    let client = h2c_client();
    let signer = signer();

    let mut bad_audience = message(&sim, &signer, 0, 0, ContentEncoding::Aes128gcm, b"x");
    let token = signer.sign("https://push.example.net", now());
    bad_audience.headers_mut().insert("authorization", token.authorization.parse().unwrap());
    let answer = send(&client, bad_audience).await;
    assert_eq!(answer.outcome(), PushOutcome::Rejected { status: 403, reason: "BadJwtAudience".into() });

    let mut unsigned = message(&sim, &signer, 0, 0, ContentEncoding::Aes128gcm, b"x");
    unsigned.headers_mut().remove("authorization");
    assert_eq!(send(&client, unsigned).await.status, StatusCode::UNAUTHORIZED);

    let wrong_key = send(&client, message(&sim, &signer, 1, 2, ContentEncoding::Aes128gcm, b"x")).await;
    assert_eq!(wrong_key.outcome(), PushOutcome::Rejected { status: 400, reason: "DecryptionFailed".into() });

    let mut oversize = message(&sim, &signer, 0, 0, ContentEncoding::Aes128gcm, b"x");
    *oversize.body_mut() = Full::new(Bytes::from(vec![0; 4097]));
    oversize.headers_mut().insert("content-length", 4097.into());
    assert_eq!(send(&client, oversize).await.outcome(), PushOutcome::TooLarge);

    let mut no_ttl = message(&sim, &signer, 0, 0, ContentEncoding::Aes128gcm, b"x");
    no_ttl.headers_mut().remove("ttl");
    assert_eq!(
        send(&client, no_ttl).await.outcome(),
        PushOutcome::Rejected { status: 400, reason: "MissingTtl".into() }
    );

    let mut gzip = message(&sim, &signer, 0, 0, ContentEncoding::Aes128gcm, b"x");
    gzip.headers_mut().insert("content-encoding", "gzip".parse().unwrap());
    assert_eq!(send(&client, gzip).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let mut stranger = message(&sim, &signer, 0, 0, ContentEncoding::Aes128gcm, b"x");
    *stranger.uri_mut() = format!("{}/push/3", sim.base_url()).parse().unwrap();
    assert_eq!(send(&client, stranger).await.status, StatusCode::NOT_FOUND);

    let stats = sim.stats();
    // The unsigned request counts as a VAPID failure too.
    assert_eq!((stats.vapid_failures, stats.decrypt_failures), (2, 1));
    assert_eq!(stats.statuses.values().sum::<u64>(), 7);
    assert_eq!(stats.status(201), 0);
    assert_eq!(stats.received.none, 3);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn injected_faults_behave_as_configured_and_change_at_run_time() {
    let faults = FaultPlan {
        gone: Selection::indices([0]),
        not_found: Selection::indices([1]),
        throttle: Burst { selection: Selection::indices([2]), first: 2 },
        retry_after_secs: 7,
        fail: Burst { selection: Selection::indices([3]), first: 1 },
        ..FaultPlan::default()
    };
    let sim =
        PushSim::start(PushSimConfig { faults, ..PushSimConfig::new(Population::new(5, 5)) }).await.unwrap();
    let client = http1_client();
    let signer = signer();
    let to = |i| message(&sim, &signer, i, i, ContentEncoding::Aes128gcm, b"x");

    assert_eq!(send(&client, to(0)).await.outcome(), PushOutcome::Gone { status: 410 });
    assert_eq!(send(&client, to(1)).await.outcome(), PushOutcome::Gone { status: 404 });
    for _ in 0..2 {
        let throttled = send(&client, to(2)).await;
        assert_eq!(
            throttled.outcome(),
            PushOutcome::Throttled { status: 429, retry_after: Some(Duration::from_secs(7)) }
        );
    }
    assert_eq!(send(&client, to(2)).await.status, StatusCode::CREATED);
    assert_eq!(send(&client, to(3)).await.outcome(), PushOutcome::Retryable { status: 500 });
    assert_eq!(send(&client, to(3)).await.status, StatusCode::CREATED);

    sim.faults().set_gone(4, true);
    assert_eq!(send(&client, to(4)).await.status, StatusCode::GONE);
    sim.faults().set_gone(4, false);
    sim.faults().set_delay(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(send(&client, to(4)).await.status, StatusCode::CREATED);
    assert!(started.elapsed() >= Duration::from_millis(150));

    assert_eq!(sim.live_stats().receive_counts(), vec![0, 0, 1, 1, 1]);
    let stats = sim.stats();
    assert_eq!((stats.status(410), stats.status(404), stats.status(429), stats.status(500)), (2, 1, 2, 1));
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn unsampled_requests_skip_vapid_and_decryption() {
    let config = PushSimConfig {
        vapid_sample: Sample::NONE,
        decrypt_sample: Sample::NONE,
        ..PushSimConfig::new(Population::new(9, 2))
    };
    let sim = PushSim::start(config).await.unwrap();
    let mut forged = message(&sim, &signer(), 0, 1, ContentEncoding::Aes128gcm, b"x");
    forged.headers_mut().insert("authorization", "vapid t=nonsense, k=nonsense".parse().unwrap());
    assert_eq!(send(&h2c_client(), forged).await.status, StatusCode::CREATED);
    let stats = sim.stats();
    assert_eq!(
        (stats.vapid_verified, stats.vapid_failures, stats.decrypted, stats.decrypt_failures),
        (0, 0, 0, 0)
    );
    let addr = sim.addr();
    sim.shutdown().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_h2c_broadcast_lands_exactly_once_each() {
    let count = 200;
    let config = PushSimConfig {
        vapid_sample: Sample::one_in(10),
        decrypt_sample: Sample::one_in(10),
        ..PushSimConfig::new(Population::new(11, count))
    };
    let sim = PushSim::start(config).await.unwrap();
    let client = h2c_client();
    let signer = signer();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..count {
        let request = message(&sim, &signer, i, i, ContentEncoding::Aes128gcm, b"everyone");
        let client = client.clone();
        requests.spawn(async move { send(&client, request).await.status });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::CREATED);
    }
    let stats = sim.stats();
    assert_eq!(stats.received.exactly_one, count);
    // Sequence numbers 0, 10, …, 190 are sampled, whatever order the requests arrived in.
    assert_eq!((stats.vapid_verified, stats.decrypted), (20, 20));
    sim.shutdown().await.unwrap();
}
