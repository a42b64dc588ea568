//! `pushfan`: one binary, every role.
//!
//! - `pushfan standalone`: everything in one process on the embedded store and bus.
//! - `pushfan ingest | worker | gateway`: one role of a cluster, on Redis and Kafka.
//! - `pushfan demo`: the main job end to end against a simulated push service.
//! - `pushfan vapid generate`: a new VAPID key.
//! - `pushfan subscribe | publish`: clients of the gRPC API.

mod allocator;
mod app;
mod client;
mod config;
mod demo;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pushfan_proto::v1::publish_request::Target;
use pushfan_proto::v1::{
    Everyone, PublishRequest, PushOptions, SubscribeRequest, SubscriptionIds, SubscriptionKeys,
};
use pushfan_webpush::vapid::VapidKey;

use crate::app::Roles;
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "pushfan", version, about = "Web Push fan-out to millions of subscribers")]
struct Cli {
    /// A TOML config file; `PUSHFAN__SECTION__KEY` environment variables override it.
    #[arg(long, short, global = true, env = "PUSHFAN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every role in one process (embedded store and bus unless the config says otherwise).
    Standalone,
    /// The gRPC API and the stats loop.
    Ingest,
    /// Planning and encryption.
    Worker,
    /// Delivery to push services.
    Gateway,
    /// Simulated push service + standalone + subscribers + one broadcast, with a report.
    Demo(demo::DemoArgs),
    /// VAPID keys.
    #[command(subcommand)]
    Vapid(VapidCommand),
    /// Registers one subscription.
    Subscribe(SubscribeArgs),
    /// Publishes a message and optionally watches it go out.
    Publish(PublishArgs),
}

#[derive(Debug, Subcommand)]
enum VapidCommand {
    /// Prints a new key pair: the private key (base64url and PKCS#8 PEM) and the public key
    /// browsers subscribe with (`applicationServerKey`).
    Generate,
}

#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The pushfan API: `http://` for plaintext, `https://` for TLS.
    #[arg(long, env = "PUSHFAN_URL", default_value = "http://127.0.0.1:50051")]
    url: String,
    /// The tenant's API key.
    #[arg(long, env = "PUSHFAN_API_KEY")]
    api_key: String,
    #[command(flatten)]
    tls: client::ClientTls,
}

#[derive(Debug, clap::Args)]
struct SubscribeArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The subscription's JSON (`PushSubscription.toJSON()`), or `-` for standard input.
    json: String,
    /// Topics to tag it with.
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// The VAPID key id it was created with.
    #[arg(long, default_value_t = 1)]
    vapid_key_id: u32,
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Send to the members of this topic.
    #[arg(long, conflicts_with_all = ["everyone", "subscription"])]
    topic: Option<String>,
    /// Send to every subscription of the tenant.
    #[arg(long)]
    everyone: bool,
    /// Send to these subscription ids.
    #[arg(long)]
    subscription: Vec<String>,
    /// The message.
    #[arg(long)]
    payload: String,
    /// Seconds the push services keep it for offline browsers.
    #[arg(long)]
    ttl: Option<u32>,
    /// very-low, low, normal or high.
    #[arg(long, default_value = "normal")]
    urgency: String,
    /// RFC 8030 Topic: replaces an undelivered message with the same topic.
    #[arg(long)]
    collapse_key: Option<String>,
    /// Makes a retried publish safe.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Follow the broadcast to the end with a progress bar.
    #[arg(long)]
    watch: bool,
}

fn main() -> anyhow::Result<()> {
    allocator::keep_large_buffers();
    let cli = Cli::parse();
    // Servers log what they do; client commands and the demo keep the terminal for their output.
    let default_filter = match cli.command {
        Command::Standalone | Command::Ingest | Command::Worker | Command::Gateway => "warn,pushfan=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Named, so CPU accounting (the load-test harness, `top -H`) tells encryption from the rest.
    rayon::ThreadPoolBuilder::new().thread_name(|i| format!("crypto-{i}")).build_global()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Standalone => serve(cli.config, Roles::STANDALONE).await,
        Command::Ingest => serve(cli.config, Roles::INGEST).await,
        Command::Worker => serve(cli.config, Roles::WORKER).await,
        Command::Gateway => serve(cli.config, Roles::GATEWAY).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Vapid(VapidCommand::Generate) => {
            let key = VapidKey::generate();
            println!("private_key = \"{}\"", key.private_base64());
            println!("public_key (applicationServerKey) = \"{}\"", key.public_base64());
            print!("{}", key.to_pkcs8_pem());
            Ok(())
        }
        Command::Subscribe(args) => subscribe(args).await,
        Command::Publish(args) => publish(args).await,
    }
}

async fn serve(config_file: Option<PathBuf>, roles: Roles) -> anyhow::Result<()> {
    let config = Config::load(config_file.as_deref())?;
    if let Some(listen) = config.metrics.listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(listen)
            .install()
            .with_context(|| format!("serving metrics on {listen}"))?;
    }
    if roles == Roles::GATEWAY && config.worker.hand_off == config::HandOffSetting::Direct {
        tracing::warn!(
            "worker.hand_off is \"direct\": workers deliver their own pages, and this gateway only \
             gets batches from workers set to \"bus\""
        );
    }
    let running = app::start(&config, roles).await?;
    if let Some(addr) = running.ingest_addr {
        tracing::info!(%addr, "gRPC API listening");
    }
    let shutdown = running.shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    running.done.await?
}

async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let json = if args.json == "-" { std::io::read_to_string(std::io::stdin())? } else { args.json };
    // Parse locally first: a bad subscription is reported field by field before any call.
    // Only the shape here: which hosts are allowed is the server's policy ([egress]).
    let parsed = pushfan_webpush::PushSubscription::parse(&json, pushfan_webpush::EndpointPolicy::stored())?;
    let mut clients = client::Clients::connect_with(&args.api.url, &args.api.api_key, &args.api.tls).await?;
    let response = clients
        .subscriptions
        .subscribe(SubscribeRequest {
            endpoint: parsed.endpoint.as_str().to_owned(),
            keys: Some(SubscriptionKeys {
                p256dh: pushfan_webpush::b64::encode(parsed.keys.p256dh()),
                auth: pushfan_webpush::b64::encode(parsed.keys.auth()),
            }),
            expiration_time: parsed.expiration_time.and_then(|t| i64::try_from(t).ok()),
            topics: args.topics,
            vapid_key_id: args.vapid_key_id,
            ..SubscribeRequest::default()
        })
        .await?
        .into_inner();
    println!("{}", response.subscription_id);
    Ok(())
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let target = match (args.topic, args.everyone, args.subscription.as_slice()) {
        (Some(topic), false, []) => Target::Topic(topic),
        (None, true, []) => Target::Everyone(Everyone {}),
        (None, false, [one]) => Target::SubscriptionId(one.clone()),
        (None, false, many) if !many.is_empty() => {
            Target::SubscriptionIds(SubscriptionIds { ids: many.to_vec() })
        }
        _ => anyhow::bail!("say who to send to: exactly one of --topic, --everyone or --subscription"),
    };
    let urgency = match args.urgency.as_str() {
        "very-low" => pushfan_proto::v1::Urgency::VeryLow,
        "low" => pushfan_proto::v1::Urgency::Low,
        "normal" => pushfan_proto::v1::Urgency::Normal,
        "high" => pushfan_proto::v1::Urgency::High,
        other => anyhow::bail!("--urgency must be very-low, low, normal or high, not `{other}`"),
    };
    let mut clients = client::Clients::connect_with(&args.api.url, &args.api.api_key, &args.api.tls).await?;
    let broadcast_id = clients
        .publish
        .publish(PublishRequest {
            target: Some(target),
            payload: args.payload.into_bytes().into(),
            options: Some(PushOptions {
                ttl_seconds: args.ttl,
                urgency: urgency as i32,
                topic: args.collapse_key.unwrap_or_default(),
            }),
            idempotency_key: args.idempotency_key.unwrap_or_default(),
            vapid_key_id: None,
        })
        .await?
        .into_inner()
        .broadcast_id;
    println!("broadcast {broadcast_id}");
    if args.watch {
        let (broadcast, elapsed) = clients.watch(&broadcast_id, true).await?;
        println!("{}", client::summary(&broadcast));
        println!("finished in {elapsed:.2?}");
    }
    Ok(())
}
