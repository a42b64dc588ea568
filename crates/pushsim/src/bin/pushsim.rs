//! `pushsim`: runs the simulated push service standalone, prints where it listens and which CA to
//! trust, optionally writes the population's subscriptions as JSON lines, and prints its
//! statistics on Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pushfan_pushsim::{
    subscription_json, Burst, FaultPlan, Latency, LogNormal, Population, Profile, PushSim, PushSimConfig,
    Sample, Selection,
};

/// A simulated browser push service for pushfan's tests and load tests.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Serve HTTPS (HTTP/2 or HTTP/1.1 by ALPN) with a generated certificate; otherwise plain
    /// HTTP/1.1 and h2c.
    #[arg(long)]
    tls: bool,
    /// Seed of the subscribers' keys; senders must use the same seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How many subscribers exist (`/push/0` … `/push/N-1`).
    #[arg(long, default_value_t = 1000)]
    subscribers: u64,
    /// Fraction of subscribers answered 410 Gone.
    #[arg(long, default_value_t = 0.0)]
    gone: f64,
    /// Fraction of subscribers answered 404 Not Found.
    #[arg(long, default_value_t = 0.0)]
    not_found: f64,
    /// Fraction of subscribers whose first `--throttle-first` requests get 429.
    #[arg(long, default_value_t = 0.0)]
    throttle: f64,
    /// How many requests per throttled subscriber get 429.
    #[arg(long, default_value_t = 1)]
    throttle_first: u32,
    /// `Retry-After` seconds sent with 429.
    #[arg(long, default_value_t = 1)]
    retry_after: u32,
    /// Fraction of subscribers whose first `--fail-first` requests get 500.
    #[arg(long, default_value_t = 0.0)]
    fail: f64,
    /// How many requests per failing subscriber get 500.
    #[arg(long, default_value_t = 1)]
    fail_first: u32,
    /// Milliseconds to hold every answer.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Median of a log-normal jitter added to every answer, milliseconds (0: none).
    #[arg(long, default_value_t = 0.0)]
    jitter_median_ms: f64,
    /// Behave like this service: generic, fcm, mozilla or apple (Apple: tokens at most 1 h).
    #[arg(long, default_value = "generic")]
    profile: Profile,
    /// HTTP/2 streams allowed per connection (hyper's default when unset).
    #[arg(long)]
    max_concurrent_streams: Option<u32>,
    /// Verify VAPID on one request in N (0: never).
    #[arg(long, default_value_t = 1)]
    vapid_sample: u32,
    /// Decrypt one body in N (0: never).
    #[arg(long, default_value_t = 1)]
    decrypt_sample: u32,
    /// Where to write the CA certificate (PEM) with `--tls`.
    #[arg(long)]
    cert_out: Option<PathBuf>,
    /// Write every subscription as `PushSubscription.toJSON()`, one per line, to this file.
    #[arg(long)]
    export: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..3_600_000.0).contains(&args.jitter_median_ms),
        "--jitter-median-ms must be 0 to 3600000, got {}",
        args.jitter_median_ms
    );
    // Distinct salts, so a subscriber chosen for one fault is not automatically chosen for all.
    let faults = FaultPlan {
        gone: Selection::fraction(args.gone, args.seed),
        not_found: Selection::fraction(args.not_found, args.seed ^ 1),
        throttle: Burst {
            selection: Selection::fraction(args.throttle, args.seed ^ 2),
            first: args.throttle_first,
        },
        retry_after_secs: args.retry_after,
        fail: Burst { selection: Selection::fraction(args.fail, args.seed ^ 3), first: args.fail_first },
        delay: Duration::from_millis(args.delay_ms),
        garbled: Selection::None,
    };
    let mut config = PushSimConfig {
        vapid_sample: Sample::one_in(args.vapid_sample),
        decrypt_sample: Sample::one_in(args.decrypt_sample),
        faults,
        profile: args.profile,
        latency: Latency {
            jitter: (args.jitter_median_ms > 0.0).then(|| LogNormal {
                median: Duration::from_secs_f64(args.jitter_median_ms / 1000.0),
                sigma: 0.5,
            }),
            ..Latency::default()
        },
        max_concurrent_streams: args.max_concurrent_streams,
        ..PushSimConfig::new(Population::new(args.seed, args.subscribers))
    };
    if args.tls {
        config = config.with_tls()?;
    }
    let sim = PushSim::bind(args.listen, config).await?;
    println!("base url: {}", sim.base_url());
    if let Some(pem) = sim.cert_pem() {
        let path = args
            .cert_out
            .unwrap_or_else(|| std::env::temp_dir().join(format!("pushsim-{}-ca.pem", sim.addr().port())));
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        println!("ca cert: {}", path.display());
    }
    if let Some(path) = &args.export {
        export(sim.population(), path).with_context(|| format!("writing {}", path.display()))?;
        println!("subscriptions: {}", path.display());
    }
    tokio::signal::ctrl_c().await?;
    println!("{:#?}", sim.stats());
    sim.shutdown().await?;
    Ok(())
}

/// Derives the population a chunk at a time, so a million subscribers never sit in memory.
fn export(population: &Population, path: &Path) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for range in population.chunks(10_000) {
        for subscriber in population.subscribers(range)? {
            writeln!(out, "{}", subscription_json(&subscriber))?;
        }
    }
    out.flush()?;
    Ok(())
}
