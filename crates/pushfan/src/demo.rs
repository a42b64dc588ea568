//! `pushfan demo`: the main job end to end on one machine. Starts the simulated push service
//! (HTTP/2 over TLS, verifying VAPID and decrypting), starts `pushfan standalone` in the same
//! process, registers simulated subscribers through the gRPC API, broadcasts to everyone, and
//! reports progress, the final counts and the throughput.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use pushfan_proto::v1::publish_request::Target;
use pushfan_proto::v1::{BulkImportRequest, Everyone, PublishRequest};
use pushfan_pushsim::{cpu, Population, PushSim, PushSimConfig, Sample};
use pushfan_webpush::b64;
use pushfan_webpush::vapid::VapidKey;
use tokio_stream::StreamExt as _;

use crate::app::{self, Roles};
use crate::client::{self, Clients};
use crate::config::{Config, TenantConfig, VapidKeyConfig};

/// Thread name of the simulated push service's runtime: pushfan's CPU is the process's minus
/// these threads'.
const SIM_THREAD_NAME: &str = "pushsim";

/// Messages the crypto core is timed on, before and after each broadcast.
const CRYPTO_MESSAGES: u64 = 5_000;

/// The crypto core's CPU per push, on a blocking thread away from the async ones.
async fn crypto_core_per_push(
    keys: &[pushfan_webpush::SubscriptionKeys],
    payload: &Bytes,
) -> anyhow::Result<std::time::Duration> {
    let (keys, payload) = (keys.to_vec(), payload.clone());
    Ok(tokio::task::spawn_blocking(move || cpu::crypto_core_per_push(&keys, &payload, CRYPTO_MESSAGES))
        .await?)
}

/// What the demo does.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Simulated subscribers to register and broadcast to.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) subscribers: u64,
    /// Payload bytes (at most 3993).
    #[arg(long, default_value_t = 1024)]
    pub(crate) payload_bytes: usize,
    /// The push service decrypts and verifies 1 in N messages (1: all of them). Checking costs
    /// it as much CPU as encrypting costs pushfan.
    #[arg(long, default_value_t = 100)]
    pub(crate) check_one_in: u32,
    /// Broadcasts to send one after another; the first reaches subscribers that never got a
    /// push, later ones show the steady state.
    #[arg(long, default_value_t = 1)]
    pub(crate) broadcasts: u32,
    /// Where the embedded store lives; a fresh temporary directory if unset.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// No progress bars (for logs and CI).
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Runs the demo; returns an error if any subscriber did not get exactly one message.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.subscribers > 0, "--subscribers must be at least 1");
    anyhow::ensure!(args.broadcasts > 0, "--broadcasts must be at least 1");
    anyhow::ensure!(args.payload_bytes <= 3993, "--payload-bytes must be at most 3993");
    let temporary = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = args.data_dir.clone().unwrap_or_else(|| temporary.path().to_owned());

    let mut sim_config = PushSimConfig::new(Population::new(2026u64, args.subscribers)).with_tls()?;
    let check = if args.check_one_in <= 1 { Sample::ALL } else { Sample::one_in(args.check_one_in) };
    sim_config.vapid_sample = check;
    sim_config.decrypt_sample = check;
    let payload = Bytes::from(vec![b'x'; args.payload_bytes]);
    sim_config.expected_payload = Some(payload.clone());
    // The push service gets threads of its own, so pushfan's CPU can be told apart from its.
    let sim_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SIM_THREAD_NAME)
        .enable_all()
        .build()
        .context("starting the simulated push service's runtime")?;
    let sim = sim_runtime
        .spawn(PushSim::start(sim_config))
        .await?
        .context("starting the simulated push service")?;
    let ca = dir.join("pushsim-ca.pem");
    std::fs::write(&ca, sim.cert_pem().context("the simulated push service has no certificate")?)?;
    println!("simulated push service on {} (HTTP/2, TLS)", sim.base_url());

    let api_key = b64::encode(VapidKey::generate().public_key());
    let mut config = Config::default();
    config.store.path = dir.join("data");
    config.ingest.listen = ([127, 0, 0, 1], 0).into();
    config.tenants = vec![TenantConfig {
        name: "demo".into(),
        api_keys: vec![api_key.clone()],
        requests_per_second: None,
        burst: None,
    }];
    config.vapid.subject = "mailto:demo@pushfan.example".into();
    config.vapid.keys = vec![VapidKeyConfig {
        id: 1,
        private_key: Some(VapidKey::generate().private_base64()),
        private_key_file: None,
    }];
    config.gateway.extra_root_certs = vec![ca];
    // The simulated push service listens on loopback, which pushfan refuses unless allowed.
    config.egress.allowed_networks = vec!["127.0.0.0/8".into(), "::1/128".into()];
    config.validate()?;
    let running = app::start(&config, Roles::STANDALONE).await?;
    let url = format!("http://{}", running.ingest_addr.context("standalone serves the API")?);
    println!("pushfan standalone: gRPC API on {url}, store in {}", config.store.path.display());
    let mut clients = Clients::connect(&url, &api_key).await?;

    let started = Instant::now();
    import(&mut clients, sim.population(), args.quiet).await?;
    println!("registered {} subscribers in {:.1?}", args.subscribers, started.elapsed());

    let crypto_sample: Vec<_> = (0..args.subscribers.min(CRYPTO_MESSAGES))
        .map(|i| sim.population().keys(i).subscription_keys().clone())
        .collect();
    let mut all_valid = true;
    for round in 1..=args.broadcasts {
        if args.broadcasts > 1 {
            println!("\nbroadcast {round} of {}", args.broadcasts);
        }
        sim.live_stats().reset();
        let crypto_before = crypto_core_per_push(&crypto_sample, &payload).await?;
        let cpu_before = cpu_time::ProcessTime::now();
        let sim_cpu_before = cpu::threads_cpu(SIM_THREAD_NAME)?;
        // Inside the CPU window, so that all of its thread's CPU can be taken off again.
        let probe = cpu::CryptoProbe::start(crypto_sample.clone(), payload.to_vec());
        let broadcast_id = clients
            .publish
            .publish(PublishRequest {
                target: Some(Target::Everyone(Everyone {})),
                payload: payload.clone(),
                ..PublishRequest::default()
            })
            .await
            .context("publishing")?
            .into_inner()
            .broadcast_id;
        let (broadcast, elapsed) = clients.watch(&broadcast_id, !args.quiet).await?;
        let sim_cpu = cpu::threads_cpu(SIM_THREAD_NAME)? - sim_cpu_before;
        let during = probe.finish();
        let cpu = cpu_before.elapsed().saturating_sub(during.thread_cpu);
        let pushfan_cpu = cpu.saturating_sub(sim_cpu);
        let crypto = (crypto_before + crypto_core_per_push(&crypto_sample, &payload).await?) / 2;
        println!("{}", client::summary(&broadcast));
        let stats = sim.stats();
        let rate = broadcast.accepted as f64 / elapsed.as_secs_f64();
        let per_push = |cpu: std::time::Duration| cpu.as_secs_f64() * 1e6 / broadcast.accepted.max(1) as f64;
        println!("{} pushes in {:.2?}: {:.0} pushes/s", broadcast.accepted, elapsed, rate);
        println!(
            "pushfan CPU per push: {:.1} µs = {:.2}× the crypto core's {:.1} µs measured in this run \
             (the simulated push service's threads excluded; with them {:.1} µs)",
            per_push(pushfan_cpu),
            per_push(pushfan_cpu) / (crypto.as_secs_f64() * 1e6),
            crypto.as_secs_f64() * 1e6,
            per_push(cpu),
        );
        println!(
            "                      = {:.2}× the crypto core's {:.1} µs sampled during the broadcast",
            per_push(pushfan_cpu) / (during.per_push.as_secs_f64() * 1e6),
            during.per_push.as_secs_f64() * 1e6,
        );
        println!(
            "push service: {} × 201, VAPID verified {} (failed {}), decrypted {} (failed {}, wrong payload {}), subscribers with exactly one message {}",
            stats.status(201),
            stats.vapid_verified,
            stats.vapid_failures,
            stats.decrypted,
            stats.decrypt_failures,
            stats.payload_mismatches,
            stats.received.exactly_one,
        );
        all_valid &= stats.received.exactly_one == args.subscribers
            && stats.vapid_failures == 0
            && stats.decrypt_failures == 0
            && stats.payload_mismatches == 0;
    }
    running.shutdown.cancel();
    running.done.await??;
    sim_runtime.spawn(sim.shutdown()).await??;
    sim_runtime.shutdown_background();
    anyhow::ensure!(all_valid, "in some broadcast, not every subscriber received exactly one valid message");
    Ok(())
}

/// Registers the population through `BulkImport`, 5,000 per stream message.
async fn import(clients: &mut Clients, population: &Population, quiet: bool) -> anyhow::Result<()> {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(population.count()) };
    bar.set_style(ProgressStyle::with_template("registering {bar:40} {pos}/{len} {per_sec}").expect("valid"));
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let ranges: Vec<_> = population.chunks(5_000).collect();
    let expected = population.count();
    let population = population.clone();
    let producer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for range in ranges {
            let items =
                population.subscribers(range)?.into_iter().map(|s| s.subscribe_request(Vec::new())).collect();
            if sender.blocking_send(BulkImportRequest { items }).is_err() {
                break;
            }
        }
        Ok(())
    });
    let progress = bar.clone();
    let stream =
        tokio_stream::wrappers::ReceiverStream::new(receiver).map(move |batch: BulkImportRequest| {
            progress.inc(batch.items.len() as u64);
            batch
        });
    let response = clients.subscriptions.bulk_import(stream).await.context("bulk import")?.into_inner();
    producer.await??;
    bar.finish_and_clear();
    anyhow::ensure!(
        response.failed == 0 && response.imported == expected,
        "bulk import wrote {} and refused {}: {:?}",
        response.imported,
        response.failed,
        response.errors.first()
    );
    Ok(())
}
