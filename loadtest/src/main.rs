//! `pushfan-loadtest`: runs a scenario against pushfan and writes its results.
//!
//! ```text
//! pushfan-loadtest loadtest/scenarios/smoke.toml                    # spawns target/…/pushfan
//! pushfan-loadtest --attach http://pushfan:50051 --api-key K --pid 123 scenario.toml
//! ```

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use pushfan_loadtest::{FleetNetwork, Mode, RunOptions, Scenario};

/// Load-tests pushfan against a simulated push-service fleet.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The scenario file (TOML).
    scenario: PathBuf,
    /// The `pushfan` binary to start as `pushfan standalone`; defaults to the one next to this
    /// program, then `pushfan` on PATH.
    #[arg(long, conflicts_with = "attach")]
    pushfan: Option<PathBuf>,
    /// Drive a running pushfan through this gRPC URL instead of starting one.
    #[arg(long, requires = "api_key")]
    attach: Option<String>,
    /// The tenant API key, with `--attach`.
    #[arg(long, env = "PUSHFAN_API_KEY")]
    api_key: Option<String>,
    /// Process ids whose CPU to measure, with `--attach` (repeat for several).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Override the scenario's subscriber count.
    #[arg(long)]
    subscribers: Option<u64>,
    /// Override the scenario's payload size.
    #[arg(long)]
    payload_bytes: Option<usize>,
    /// Address the fleet binds.
    #[arg(long, default_value = "127.0.0.1")]
    fleet_bind: IpAddr,
    /// First fleet port (origin i listens on base+i); 0 picks free ports.
    #[arg(long, default_value_t = 0)]
    fleet_port_base: u16,
    /// Host name pushfan reaches the fleet by (needs --fleet-port-base); put in endpoints and
    /// the certificate.
    #[arg(long, requires = "fleet_port_base")]
    fleet_host: Option<String>,
    /// Issue the fleet's certificate from this CA certificate (PEM), which pushfan trusts.
    #[arg(long, requires = "fleet_ca_key")]
    fleet_ca_cert: Option<PathBuf>,
    /// The CA's private key (PEM), with --fleet-ca-cert.
    #[arg(long, requires = "fleet_ca_cert")]
    fleet_ca_key: Option<PathBuf>,
    /// Where the fleet's CA certificate is written (for an attached pushfan to trust).
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Directory of peer programs.
    #[arg(long, default_value = "loadtest/peers")]
    peers_dir: PathBuf,
    /// Directory for `<scenario>-<subscribers>.json` and `.svg`.
    #[arg(long, default_value = "loadtest/results")]
    out: PathBuf,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut scenario = Scenario::from_file(&args.scenario)?;
    if let Some(n) = args.subscribers {
        scenario.subscribers = n;
    }
    if let Some(n) = args.payload_bytes {
        scenario.publish.payload_bytes = n;
    }
    scenario.validate()?;
    let mode = match args.attach {
        Some(url) => {
            Mode::Attach { url, api_key: args.api_key.context("--attach needs --api-key")?, pids: args.pids }
        }
        None => Mode::Spawn { binary: args.pushfan.map_or_else(default_pushfan, Ok)? },
    };
    let ca = match (&args.fleet_ca_cert, &args.fleet_ca_key) {
        (Some(cert), Some(key)) => Some((
            std::fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?,
            std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?,
        )),
        _ => None,
    };
    let options = RunOptions {
        mode,
        network: FleetNetwork {
            bind: args.fleet_bind,
            port_base: args.fleet_port_base,
            public_host: args.fleet_host,
            ca,
        },
        peers_dir: args.peers_dir,
        progress: !args.quiet,
        ca_out: args.ca_out,
    };
    let report = pushfan_loadtest::run(&scenario, &options).await?;
    print!("{}", report.summary());
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    // The size is in the name: the same scenario is often run at several sizes.
    let stem = format!("{}-{}", scenario.name, scenario.subscribers);
    let json = args.out.join(format!("{stem}.json"));
    report.write_json(&json).with_context(|| format!("writing {}", json.display()))?;
    let svg = args.out.join(format!("{stem}.svg"));
    report.write_svg(&svg)?;
    println!("results: {} and {}", json.display(), svg.display());
    anyhow::ensure!(
        report.verification.ok,
        "verification failed: {}",
        report.verification.problems.join("; ")
    );
    Ok(())
}

/// `pushfan` next to this binary (both built into the same target directory), else on PATH.
fn default_pushfan() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this program")?;
    let sibling = exe.with_file_name("pushfan");
    Ok(if sibling.is_file() { sibling } else { PathBuf::from("pushfan") })
}
