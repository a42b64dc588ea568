//! Load-test peer: sends one push per subscription with the Rust `web-push` crate (0.11), the way
//! a user of that crate would at its best: one partial VAPID builder parsed once, a signature and
//! an aes128gcm message built per push by the crate, requests built by the crate's
//! `request_builder` and sent over one hyper client (HTTP/2 by ALPN, keep-alive) with at most
//! `--concurrency` in flight, on one runtime thread unless `--threads` says otherwise.
//! Contract: `loadtest/peers/README.md`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use futures::stream::{self, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::{pem::PemObject, CertificateDer};
use serde::Serialize;
use web_push::{
    request_builder, ContentEncoding, PartialVapidSignatureBuilder, SubscriptionInfo, VapidSignatureBuilder,
    WebPushMessageBuilder,
};

const PEER: &str = "rust-web-push";
const LIBRARY: &str = "web-push";
const LIBRARY_VERSION: &str = "0.11.0";

/// Sends one Web Push message to each of the first N subscriptions and reports pushes/s and CPU.
#[derive(Debug, Parser)]
struct Args {
    /// JSON lines, each a `PushSubscription.toJSON()`.
    #[arg(long)]
    subscriptions: PathBuf,
    /// PEM CA certificate that signed the push service's TLS certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Raw 32-byte P-256 private scalar, base64url without padding.
    #[arg(long)]
    vapid_private: String,
    /// Raw 65-byte uncompressed P-256 public key, base64url without padding.
    #[arg(long)]
    vapid_public: String,
    /// VAPID `sub` claim, e.g. mailto:loadtest@pushfan.invalid.
    #[arg(long)]
    subject: String,
    /// Plaintext size in bytes.
    #[arg(long)]
    payload_bytes: usize,
    /// Send to the first N subscriptions of the file.
    #[arg(long)]
    count: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// TTL header, seconds.
    #[arg(long, default_value_t = 60)]
    ttl: u32,
    /// Runtime threads (beyond the contract). 1, the default, runs tokio's current-thread
    /// runtime, which spends the least CPU per push; more trade CPU per push for pushes/s.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    peer: &'static str,
    library: &'static str,
    version: &'static str,
    sent: usize,
    accepted: u64,
    statuses: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    wall_seconds: f64,
    cpu_seconds: f64,
    concurrency: usize,
    payload_bytes: usize,
}

/// What one push came to: an HTTP status, or an error before any response.
enum Outcome {
    Status(u16),
    Error(String),
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn main() {
    // Exit codes as in the contract: 1 when a push got no response, 2 when nothing could start.
    match run(Args::parse()) {
        Ok(all_answered) => std::process::exit(if all_answered { 0 } else { 1 }),
        Err(e) => {
            eprintln!("{PEER}: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Sends, prints the report, and tells whether every push got a response.
fn run(args: Args) -> anyhow::Result<bool> {
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let subscriptions = load_subscriptions(&args)?;
    let vapid = VapidSignatureBuilder::from_base64_no_sub(&args.vapid_private)
        .map_err(|e| anyhow::anyhow!("--vapid-private is not a base64url P-256 private scalar: {e}"))?;
    let public = URL_SAFE_NO_PAD
        .decode(args.vapid_public.trim_end_matches('='))
        .context("--vapid-public is not base64url")?;
    ensure!(public == vapid.get_public_key(), "--vapid-public does not match --vapid-private");
    let client = https_client(&args)?;
    let payload = vec![b'x'; args.payload_bytes];

    let runtime = match args.threads {
        0 => bail!("--threads must be at least 1"),
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        threads => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
        }
    };
    let (outcomes, wall, cpu) = runtime.block_on(async {
        let cpu_start = cpu_time();
        let start = Instant::now();
        let outcomes: Vec<Outcome> = stream::iter(subscriptions.iter())
            .map(|subscription| send(&client, &vapid, &args, subscription, &payload))
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        (outcomes, start.elapsed(), cpu_time() - cpu_start)
    });

    let mut report = Report {
        peer: PEER,
        library: LIBRARY,
        version: LIBRARY_VERSION,
        sent: subscriptions.len(),
        accepted: 0,
        statuses: BTreeMap::new(),
        errors: BTreeMap::new(),
        wall_seconds: wall.as_secs_f64(),
        cpu_seconds: cpu.as_secs_f64(),
        concurrency: args.concurrency,
        payload_bytes: args.payload_bytes,
    };
    for outcome in outcomes {
        match outcome {
            Outcome::Status(status) => {
                if (200..300).contains(&status) {
                    report.accepted += 1;
                }
                *report.statuses.entry(status.to_string()).or_default() += 1;
            }
            Outcome::Error(kind) => *report.errors.entry(kind).or_default() += 1,
        }
    }
    eprintln!(
        "{PEER}: {} pushes in {:.3} s ({:.0}/s), {:.3} CPU-s ({:.0} per CPU-second)",
        report.sent,
        report.wall_seconds,
        report.sent as f64 / report.wall_seconds,
        report.cpu_seconds,
        report.sent as f64 / report.cpu_seconds
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(report.errors.is_empty())
}

/// One push: the crate signs (no token cache: that is how the crate is used), encrypts and builds
/// the request; we only move it onto the HTTP/2-capable client and drain the answer.
async fn send(
    client: &HttpsClient,
    vapid: &PartialVapidSignatureBuilder,
    args: &Args,
    subscription: &Subscription,
    payload: &[u8],
) -> Outcome {
    let mut signature = vapid.clone().add_sub_info(&subscription.info);
    // web-push 0.11 derives `aud` from scheme and host only, dropping a non-default port, which a
    // push service on any port but 443 rightly rejects; an explicit `aud` claim is honoured as is.
    signature.add_claim("aud", subscription.audience.as_str());
    signature.add_claim("sub", args.subject.as_str());
    let signature = match signature.build() {
        Ok(signature) => signature,
        Err(e) => return Outcome::Error(format!("vapid: {e}")),
    };
    let mut message = WebPushMessageBuilder::new(&subscription.info);
    message.set_ttl(args.ttl);
    message.set_payload(ContentEncoding::Aes128Gcm, payload);
    message.set_vapid_signature(signature);
    let message = match message.build() {
        Ok(message) => message,
        Err(e) => return Outcome::Error(format!("message: {e}")),
    };
    // The crate's request is an `http` 0.2 one; hyper 1 takes `http` 1, so copy its parts over.
    let (parts, body) = request_builder::build_request::<Vec<u8>>(message).into_parts();
    let mut request = hyper::Request::builder().method(parts.method.as_str()).uri(subscription.uri.clone());
    for (name, value) in &parts.headers {
        request = request.header(name.as_str(), value.as_bytes());
    }
    let request = match request.body(Full::new(Bytes::from(body))) {
        Ok(request) => request,
        Err(e) => return Outcome::Error(format!("request: {e}")),
    };
    match client.request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.into_body().collect().await {
                Ok(_) => Outcome::Status(status),
                Err(e) => Outcome::Error(format!("response body: {e}")),
            }
        }
        Err(e) if e.is_connect() => Outcome::Error("connect".into()),
        Err(_) => Outcome::Error("request".into()),
    }
}

struct Subscription {
    info: SubscriptionInfo,
    uri: Uri,
    /// The endpoint's origin, port included unless it is the scheme's default.
    audience: String,
}

fn load_subscriptions(args: &Args) -> anyhow::Result<Vec<Subscription>> {
    let path = &args.subscriptions;
    let file = File::open(path).with_context(|| format!("opening --subscriptions {}", path.display()))?;
    let mut subscriptions = Vec::with_capacity(args.count);
    for (index, line) in BufReader::new(file).lines().enumerate() {
        if subscriptions.len() == args.count {
            break;
        }
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let info: SubscriptionInfo = serde_json::from_str(&line)
            .with_context(|| format!("{} line {number}: not a PushSubscription JSON", path.display()))?;
        let uri: Uri = info
            .endpoint
            .parse()
            .with_context(|| format!("{} line {number}: endpoint is not a URL", path.display()))?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            bail!("{} line {number}: endpoint has no scheme or host", path.display());
        };
        let audience = match (scheme, uri.port_u16()) {
            ("https", Some(443)) | ("http", Some(80)) | (_, None) => format!("{scheme}://{host}"),
            (_, Some(port)) => format!("{scheme}://{host}:{port}"),
        };
        subscriptions.push(Subscription { info, uri, audience });
    }
    ensure!(
        subscriptions.len() == args.count,
        "--count {} but {} holds only {} subscriptions",
        args.count,
        path.display(),
        subscriptions.len()
    );
    Ok(subscriptions)
}

/// rustls trusting the system roots plus `--ca`, offering h2 and http/1.1 by ALPN; hyper's pool
/// keeps connections alive and multiplexes on HTTP/2.
fn https_client(args: &Args) -> anyhow::Result<HttpsClient> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot use is no reason to stop: only --ca matters here.
        let _ = roots.add(cert);
    }
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(&args.ca)
        .with_context(|| format!("reading --ca {}", args.ca.display()))?
    {
        let cert = cert.with_context(|| format!("--ca {}: bad PEM", args.ca.display()))?;
        roots.add(cert).with_context(|| format!("--ca {}: unusable certificate", args.ca.display()))?;
        added += 1;
    }
    ensure!(added > 0, "--ca {} holds no certificate", args.ca.display());
    let tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(usize::MAX)
        .build(connector))
}

/// This process's user+system CPU time, all threads.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64);
    micros(usage.ru_utime) + micros(usage.ru_stime)
}
