//! The API against hostile and careless clients: API keys checked before a body is read,
//! per-tenant rates, bounded connections, requests and messages, deadlines on handshakes and
//! stalled requests, and TLS with optional client certificates. A real server on loopback over
//! the embedded store and bus; raw TCP where a well-behaved client cannot misbehave enough.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pushfan_bus::{EmbeddedBus, EmbeddedConfig};
use pushfan_ingest::limits::{ManualClock, RateClock};
use pushfan_ingest::{serve_with, ApiKeys, IngestState, Limits, Rate, ServeOptions, TenantRates, TlsFiles};
use pushfan_proto::v1::broadcast_service_client::BroadcastServiceClient;
use pushfan_proto::v1::publish_service_client::PublishServiceClient;
use pushfan_proto::v1::subscription_service_client::SubscriptionServiceClient;
use pushfan_proto::v1::{self, publish_request::Target};
use pushfan_store::{EmbeddedStore, ShardCount, TenantId};
use pushfan_webpush::EndpointPolicy;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

const ACME_KEY: &str = "acme-test-key-0123456789";
const GLOBEX_KEY: &str = "globex-test-key-0123456789";
/// A safety net for waits on events: a test that reaches it has failed.
const WAIT: Duration = Duration::from_secs(30);
/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A running server over a fresh embedded store.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), pushfan_ingest::ServeError>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(options: ServeOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path(), ShardCount::new(2).unwrap()).expect("store opens");
        let mut keys = ApiKeys::new();
        keys.insert(TenantId::new("acme").unwrap(), ACME_KEY).unwrap();
        keys.insert(TenantId::new("globex").unwrap(), GLOBEX_KEY).unwrap();
        let state = IngestState::new(
            Arc::new(store.clone()),
            Arc::new(store),
            EmbeddedBus::new(EmbeddedConfig::default()),
            keys,
            EndpointPolicy::default(),
            [1],
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(listener, state, options, async {
            let _ = stopped.await;
        }));
        Self { addr, stop: Some(stop), task, _dir: dir }
    }

    async fn channel(&self) -> Channel {
        channel_to(self.addr).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(WAIT, self.task).await.expect("stops").expect("no panic").expect("clean stop");
    }
}

async fn channel_to(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connects")
}

fn options(limits: Limits) -> ServeOptions {
    ServeOptions { tls: None, limits }
}

fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// A request the server answers NOT_FOUND once it gets as far as the store.
fn get_subscription(key: &str) -> Request<v1::GetSubscriptionRequest> {
    authed(key, v1::GetSubscriptionRequest { subscription_id: "00".repeat(14) })
}

async fn get(channel: &Channel, key: &str) -> Result<(), Status> {
    SubscriptionServiceClient::new(channel.clone()).get_subscription(get_subscription(key)).await.map(drop)
}

fn subscribe_request(endpoint: String) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        endpoint,
        keys: Some(v1::SubscriptionKeys {
            p256dh: "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
                .into(),
            auth: "BTBZMqHH6r4Tts7J_aSIgg".into(),
        }),
        expiration_time: None,
        topics: vec![],
        content_encodings: vec![],
        vapid_key_id: 1,
    }
}

/// A TCP proxy to `target` that counts the bytes clients send through it: what the server let
/// them send. HTTP/2 flow control lets a client send only as much of a request body as the
/// server's window allows (1 MiB), and the server opens it further only by reading the body.
async fn counting_proxy(target: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else { return };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    (addr, sent)
}

#[tokio::test]
async fn an_unknown_key_is_refused_before_the_body_is_read() {
    let server = Server::start(ServeOptions::default()).await;
    let (proxy, sent) = counting_proxy(server.addr).await;
    let mut client = SubscriptionServiceClient::new(channel_to(proxy).await);
    // Just under the 4 MiB the subscription service decodes, so without the check first the
    // server reads and decodes all of it before refusing.
    let message_len = (4 << 20) - 4096;
    let calls = 10_u64;
    for _ in 0..calls {
        let request = authed("not-a-configured-key-123", subscribe_request("x".repeat(message_len)));
        let status = client.subscribe(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let unauthenticated = sent.load(Ordering::Relaxed);
    // At most a stream window (1 MiB) per call got through, not the message.
    assert!(
        unauthenticated < calls * (2 << 20),
        "{unauthenticated} bytes sent for {calls} refused calls of {message_len}"
    );
    // The proxy does count whole messages the server reads: a known key's is read in full (and
    // refused for its endpoint).
    let status = client
        .subscribe(authed(ACME_KEY, subscribe_request("x".repeat(message_len))))
        .await
        .expect_err("bad");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(sent.load(Ordering::Relaxed) - unauthenticated >= message_len as u64);
    server.stop().await;
}

#[tokio::test]
async fn a_tenant_over_its_rate_is_told_when_to_retry() {
    let clock = ManualClock::new();
    let rates = TenantRates {
        default: Rate { per_second: 1, burst: 2 },
        overrides: [(TenantId::new("globex").unwrap(), Rate { per_second: 1000, burst: 1000 })].into(),
        clock: RateClock::Manual(Arc::clone(&clock)),
    };
    let server = Server::start(options(Limits { tenant_rates: rates, ..Limits::default() })).await;
    let channel = server.channel().await;
    for _ in 0..2 {
        assert_eq!(get(&channel, ACME_KEY).await.unwrap_err().code(), Code::NotFound, "within the burst");
    }
    // Every service is behind the same limit.
    let publish = v1::PublishRequest {
        payload: b"x".to_vec().into(),
        target: Some(Target::Topic("news".into())),
        ..Default::default()
    };
    let status = PublishServiceClient::new(channel.clone())
        .publish(authed(ACME_KEY, publish))
        .await
        .expect_err("over");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "tenant acme exceeded 1 requests/s; retry after 1.000 s");
    assert_eq!(status.metadata().get("retry-after").expect("retry-after metadata"), "1");
    assert_eq!(status.get_details_retry_info().expect("RetryInfo").retry_delay, Some(Duration::from_secs(1)));
    let status = get(&channel, ACME_KEY).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Another tenant has its own allowance.
    for _ in 0..10 {
        assert_eq!(get(&channel, GLOBEX_KEY).await.unwrap_err().code(), Code::NotFound);
    }
    clock.advance(Duration::from_secs(1));
    assert_eq!(get(&channel, ACME_KEY).await.unwrap_err().code(), Code::NotFound, "refilled");
    assert_eq!(get(&channel, ACME_KEY).await.unwrap_err().code(), Code::ResourceExhausted);
    server.stop().await;
}

#[tokio::test]
async fn oversize_messages_are_refused_by_service() {
    let server = Server::start(options(Limits { max_message_bytes: 256 << 10, ..Limits::default() })).await;
    let channel = server.channel().await;
    let mut subscriptions = SubscriptionServiceClient::new(channel.clone());
    let status = subscriptions
        .subscribe(authed(ACME_KEY, subscribe_request("y".repeat(300 << 10))))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // Publishing takes 1 MiB at most whatever the setting (4 MiB is the default); 100,000 ids
    // are 3 MB.
    let ids = v1::SubscriptionIds { ids: vec!["00".repeat(14); 100_000] };
    let publish = v1::PublishRequest { target: Some(Target::SubscriptionIds(ids)), ..Default::default() };
    let status = PublishServiceClient::new(channel.clone())
        .publish(authed(ACME_KEY, publish))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // Broadcast requests carry an id: 64 KiB at most.
    let request = v1::GetBroadcastRequest { broadcast_id: "b".repeat(100 << 10) };
    let status = BroadcastServiceClient::new(channel.clone())
        .get_broadcast(authed(ACME_KEY, request))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // Bulk import batches within the limit are fine.
    let items = (0..100).map(|n| subscribe_request(format!("https://push.example/{n}"))).collect();
    let response = subscriptions
        .bulk_import(authed(ACME_KEY, futures::stream::iter([v1::BulkImportRequest { items }])))
        .await
        .expect("imported")
        .into_inner();
    assert_eq!((response.imported, response.failed), (100, 0));
    server.stop().await;
}

#[tokio::test]
async fn requests_past_the_concurrency_limit_wait_then_fail_unavailable() {
    let limits = Limits {
        max_concurrent_requests: 1,
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = Server::start(options(limits)).await;
    let channel = server.channel().await;
    // A bulk import that never ends holds the one place: the client sends empty batches for as
    // long as the server reads them.
    let endless = futures::stream::repeat_with(v1::BulkImportRequest::default);
    let mut importer = SubscriptionServiceClient::new(channel.clone());
    let import = tokio::spawn(async move { importer.bulk_import(authed(ACME_KEY, endless)).await.map(drop) });
    // Until the import has its place a probe may still get one; after, each waits out the
    // request timeout.
    let mut refused = None;
    for _ in 0..100 {
        match get(&channel, ACME_KEY).await {
            Err(status) if status.code() == Code::NotFound => continue,
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let status = refused.expect("a probe waits for a place").expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("concurrent requests"), "{status:?}");
    // Ending the import frees the place.
    import.abort();
    let mut served = false;
    for _ in 0..100 {
        if get(&channel, ACME_KEY).await.unwrap_err().code() == Code::NotFound {
            served = true;
            break;
        }
    }
    assert!(served, "the place came back");
    server.stop().await;
}

#[tokio::test]
async fn watches_past_their_limit_are_refused_until_one_ends() {
    let server = Server::start(options(Limits { max_watches: 1, ..Limits::default() })).await;
    let mut client = BroadcastServiceClient::new(server.channel().await);
    // A broadcast that does not exist (yet): the watch waits for it and holds its place.
    let watch = || authed(ACME_KEY, v1::WatchBroadcastRequest { broadcast_id: "not-yet".into() });
    let first = client.watch_broadcast(watch()).await.expect("the first watch is admitted");
    let status = client.watch_broadcast(watch()).await.expect_err("one watch at a time");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Other calls are not watches.
    assert_eq!(get(&server.channel().await, ACME_KEY).await.unwrap_err().code(), Code::NotFound);
    // The client going away frees the place, once the server has seen the stream reset.
    drop(first);
    timeout(WAIT, async {
        while client.watch_broadcast(watch()).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the place came back");
    server.stop().await;
}

#[tokio::test]
async fn a_request_stream_that_stalls_is_ended() {
    let limits = Limits { request_timeout: Duration::from_millis(300), ..Limits::default() };
    let server = Server::start(options(limits)).await;
    let mut client = SubscriptionServiceClient::new(server.channel().await);
    // One batch, then nothing: the stream neither ends nor sends.
    let batch = v1::BulkImportRequest { items: vec![subscribe_request("https://push.example/1".into())] };
    let stalled = futures::stream::iter([batch]).chain(futures::stream::pending());
    let status = timeout(WAIT, client.bulk_import(authed(ACME_KEY, stalled)))
        .await
        .expect("ended by the server")
        .expect_err("cut off");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    server.stop().await;
}

/// INVALID_ARGUMENT naming `field`, in the message and in a `google.rpc.BadRequest` detail.
fn assert_names(status: &Status, field: &str, what: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(status.message().starts_with(&format!("{field}: ")), "{what}: {}", status.message());
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("a BadRequest detail").field_violations;
    assert_eq!(violations.len(), 1, "{what}");
    assert_eq!(violations[0].field, field, "{what}");
}

/// Endpoints that could not be sent to, or must not be: each refused as it comes in.
fn refused_endpoints() -> Vec<(&'static str, String)> {
    vec![
        ("70,000 characters", format!("https://push.example/{}", "a".repeat(70_000))),
        ("a host no HTTP request can carry", "https://a{b.example.com/x".into()),
        ("a private address", "https://10.0.0.5/x".into()),
        ("the cloud metadata address", "https://169.254.169.254/latest/meta-data".into()),
        ("loopback by name", "https://localhost/x".into()),
        ("IPv6 loopback", "https://[::1]/x".into()),
        ("IPv4-mapped loopback", "https://[::ffff:127.0.0.1]/x".into()),
        ("loopback as one number", "https://2130706433/x".into()),
        ("loopback in hex", "https://0x7f000001/x".into()),
        ("the unspecified address", "https://0.0.0.0/x".into()),
    ]
}

#[tokio::test]
async fn endpoints_that_cannot_or_must_not_be_sent_to_are_refused_naming_the_field() {
    let server = Server::start(ServeOptions::default()).await;
    let mut client = SubscriptionServiceClient::new(server.channel().await);
    for (what, endpoint) in refused_endpoints() {
        let status = client.subscribe(authed(ACME_KEY, subscribe_request(endpoint))).await.expect_err(what);
        assert_names(&status, "endpoint", what);
        assert!(status.message().len() < 1000, "{what}: the endpoint is not echoed whole");
    }
    // A bulk import reports each by its index and writes the good ones around them.
    let mut items: Vec<_> = refused_endpoints().into_iter().map(|(_, e)| subscribe_request(e)).collect();
    items.insert(3, subscribe_request("https://push.example/good".into()));
    let response = client
        .bulk_import(authed(ACME_KEY, futures::stream::iter([v1::BulkImportRequest { items }])))
        .await
        .expect("imported")
        .into_inner();
    assert_eq!((response.imported, response.failed), (1, refused_endpoints().len() as u64));
    let indices: Vec<u64> = response.errors.iter().map(|e| e.index).collect();
    let expected: Vec<u64> = (0..=refused_endpoints().len() as u64).filter(|i| *i != 3).collect();
    assert_eq!(indices, expected);
    assert!(response.errors.iter().all(|e| e.field == "endpoint"), "{:?}", response.errors);
    // Nothing refused was written: the tenant has the one good subscription.
    let list = client
        .list_subscriptions(authed(ACME_KEY, v1::ListSubscriptionsRequest::default()))
        .await
        .expect("listed")
        .into_inner();
    let endpoints: Vec<_> = list.subscriptions.iter().map(|s| s.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["https://push.example/good"]);
    server.stop().await;
}

/// Reads whatever the server sends until it closes the connection.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = timeout(WAIT, stream.read_to_end(&mut received)).await.expect("the server closed the connection");
    received
}

#[tokio::test]
async fn a_connection_that_does_not_start_http2_in_time_is_closed() {
    let limits = Limits { handshake_timeout: Duration::from_millis(300), ..Limits::default() };
    let server = Server::start(options(limits)).await;
    // A client that connected properly keeps its connection past the deadline.
    let channel = server.channel().await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&PREFACE[..10]).await.unwrap();
    read_until_closed(&mut silent).await;
    read_until_closed(&mut half).await;
    assert_eq!(get(&channel, ACME_KEY).await.unwrap_err().code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    let server = Server::start(options(Limits { max_connections: 2, ..Limits::default() })).await;
    // The server speaks first on a connection it serves (its SETTINGS frame).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(PREFACE).await.unwrap();
        let mut first = [0; 9];
        timeout(WAIT, stream.read_exact(&mut first)).await.expect("served").unwrap();
        held.push(stream);
    }
    // The third connects (the kernel completes the handshake into the backlog) but is not
    // served. Proving a negative needs a bound; on a slow host this can only pass wrongly,
    // never fail wrongly.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(PREFACE).await.unwrap();
    let mut first = [0; 9];
    assert!(
        timeout(Duration::from_millis(500), third.read_exact(&mut first)).await.is_err(),
        "a third connection was served"
    );
    drop(held.pop());
    timeout(WAIT, third.read_exact(&mut first)).await.expect("served once a place is free").unwrap();
    drop((held, third));
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_answer_cannot_hold_up_shutdown() {
    let limits = Limits { request_timeout: Duration::from_millis(300), ..Limits::default() };
    let server = Server::start(options(limits)).await;
    // It starts HTTP/2 and then ignores the server, including the GOAWAY and the ping of a
    // graceful shutdown.
    let mut mute = TcpStream::connect(server.addr).await.unwrap();
    mute.write_all(PREFACE).await.unwrap();
    let mut first = [0; 9];
    timeout(WAIT, mute.read_exact(&mut first)).await.expect("served").unwrap();
    server.stop().await;
    drop(mute);
}

/// A CA, and a certificate it issued for `names` with `purpose`, as PEM.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Self { ca_pem: ca.pem(), issuer: Issuer::new(params, key) }
    }

    /// (certificate PEM, key PEM).
    fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }
}

/// Writes the server's identity (and the client CA) to `dir`.
fn tls_files(dir: &std::path::Path, server_ca: &Pki, client_ca: Option<&Pki>) -> TlsFiles {
    let (cert, key) = server_ca.issue(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let client_ca_file = client_ca.map(|ca| {
        std::fs::write(dir.join("clients.pem"), &ca.ca_pem).unwrap();
        dir.join("clients.pem")
    });
    TlsFiles { cert_file: dir.join("server.pem"), key_file: dir.join("server.key"), client_ca_file }
}

async fn tls_channel(
    addr: SocketAddr,
    ca: &Pki,
    identity: Option<(String, String)>,
) -> Result<Channel, String> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap();
    endpoint.connect().await.map_err(|error| format!("{error:?}"))
}

/// Whether a call over `channel` reaches the service (NOT_FOUND) rather than failing below it.
async fn served(channel: Result<Channel, String>) -> bool {
    match channel {
        Ok(channel) => match get(&channel, ACME_KEY).await {
            Err(status) if status.code() == Code::NotFound => true,
            Err(status) => {
                assert!(matches!(status.code(), Code::Unavailable | Code::Unknown), "{status:?}");
                false
            }
            Ok(()) => panic!("no subscription exists"),
        },
        Err(_) => false,
    }
}

#[tokio::test]
async fn tls_serves_clients_that_trust_its_certificate_and_not_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Pki::new("server CA");
    let tls = tls_files(dir.path(), &server_ca, None);
    let limits = Limits { handshake_timeout: Duration::from_millis(500), ..Limits::default() };
    let server = Server::start(ServeOptions { tls: Some(tls), limits }).await;
    assert!(served(tls_channel(server.addr, &server_ca, None).await).await, "a TLS client is served");
    let plaintext = Endpoint::from_shared(format!("http://{}", server.addr)).unwrap().connect().await;
    assert!(!served(plaintext.map_err(|e| e.to_string())).await, "a plaintext client is not");
    assert!(
        !served(tls_channel(server.addr, &Pki::new("other CA"), None).await).await,
        "nor one trusting another CA"
    );
    // A client that completes the TLS handshake but never starts HTTP/2 is closed too.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(pem_der(&server_ca.ca_pem))).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, &mut silent).await.expect("the handshake completes");
    let mut received = Vec::new();
    let closed = timeout(WAIT, tls.read_to_end(&mut received)).await.expect("the server closed it");
    drop(closed);
    server.stop().await;
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, stranger_ca) =
        (Pki::new("server CA"), Pki::new("client CA"), Pki::new("other CA"));
    let tls = tls_files(dir.path(), &server_ca, Some(&client_ca));
    let server = Server::start(ServeOptions { tls: Some(tls), limits: Limits::default() }).await;
    let ours = client_ca.issue(&["backend.acme.test"], ExtendedKeyUsagePurpose::ClientAuth);
    assert!(
        served(tls_channel(server.addr, &server_ca, Some(ours)).await).await,
        "a client with a certificate"
    );
    assert!(!served(tls_channel(server.addr, &server_ca, None).await).await, "a client without");
    let theirs = stranger_ca.issue(&["backend.acme.test"], ExtendedKeyUsagePurpose::ClientAuth);
    assert!(
        !served(tls_channel(server.addr, &server_ca, Some(theirs)).await).await,
        "a certificate of another CA"
    );
    server.stop().await;
}

#[tokio::test]
async fn tls_files_that_do_not_load_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut tls = tls_files(dir.path(), &Pki::new("server CA"), None);
    tls.key_file = dir.path().join("missing.key");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store"), ShardCount::new(1).unwrap()).unwrap();
    let state = IngestState::new(
        Arc::new(store.clone()),
        Arc::new(store),
        EmbeddedBus::new(EmbeddedConfig::default()),
        ApiKeys::new(),
        EndpointPolicy::default(),
        [1],
    );
    let options = ServeOptions { tls: Some(tls), limits: Limits::default() };
    let error = serve_with(listener, state, options, std::future::pending()).await.unwrap_err();
    assert!(error.to_string().contains("missing.key"), "{error}");
}
