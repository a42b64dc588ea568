//! One scenario end to end: fleet up, pushfan up (or attached), subscribers imported, crypto
//! core timed, broadcasts published and watched, CPU read, every subscriber's count checked,
//! peers run side by side, and the [`Report`] assembled.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pushfan_proto::v1::publish_request::Target as ProtoTarget;
use pushfan_proto::v1::{
    Broadcast, BulkImportRequest, Everyone, ListSubscriptionsRequest, PublishRequest, PushOptions,
    Subscription, WatchBroadcastRequest,
};
use tokio_stream::StreamExt as _;

use crate::fleet::{Fleet, FleetError, FleetNetwork};
use crate::measure::{self, Collector};
use crate::peers::{self, PeerError, PeerRequest};
use crate::report::{BroadcastReport, CompareRow, CpuReport, Report, Verification};
use crate::scenario::{Scenario, Target};
use crate::target::{Api, Credentials, Spawned, TargetError, SUBJECT};
use pushfan_pushsim::cpu::{self, CpuError};

/// Subscribers per `BulkImport` stream message.
const IMPORT_CHUNK: u64 = 5_000;
/// Messages encrypted to time the crypto core, before and after the broadcasts.
const CRYPTO_MESSAGES: u64 = 3_000;
/// Listing the store to prove pruning is skipped above this many subscribers (it would take
/// longer than the broadcast).
const LIST_LIMIT: u64 = 200_000;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The fleet.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// pushfan.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// An API call.
    #[error("{call}: {status}")]
    Api {
        /// Which call.
        call: &'static str,
        /// What pushfan answered.
        status: Box<tonic::Status>,
    },
    /// The import did not write every subscriber.
    #[error("bulk import wrote {imported} of {expected} and refused {failed}: {first_error}")]
    Import {
        /// Written.
        imported: u64,
        /// Asked.
        expected: u64,
        /// Refused.
        failed: u64,
        /// The first refusal.
        first_error: String,
    },
    /// CPU accounting.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// A peer.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// Local files.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The population.
    #[error("{0}")]
    Population(#[from] pushfan_pushsim::PopulationError),
    /// pushfan's answers do not fit together.
    #[error("pushfan's answers are inconsistent: {0}")]
    Inconsistent(String),
    /// The watch ended early.
    #[error("watching broadcast {0}: the stream ended before it completed")]
    WatchEnded(String),
    /// A scenario problem found at run time.
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
}

fn api(call: &'static str) -> impl FnOnce(tonic::Status) -> RunError {
    move |status| RunError::Api { call, status: Box::new(status) }
}

/// Which pushfan to drive.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Start `<binary> standalone` with a generated config.
    Spawn {
        /// The `pushfan` binary.
        binary: PathBuf,
    },
    /// Use running processes.
    Attach {
        /// Their gRPC API.
        url: String,
        /// The tenant's API key.
        api_key: String,
        /// Processes whose CPU to measure (on this host); empty: CPU not measured.
        pids: Vec<u32>,
    },
}

/// How to run a scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Which pushfan.
    pub mode: Mode,
    /// Where the fleet listens.
    pub network: FleetNetwork,
    /// Where peer launchers live (`<dir>/<name>/run`).
    pub peers_dir: PathBuf,
    /// Draw progress bars.
    pub progress: bool,
    /// Write the fleet's CA certificate here once it exists (for an attached pushfan).
    pub ca_out: Option<PathBuf>,
}

/// Runs `scenario` and returns what was measured and checked.
pub async fn run(scenario: &Scenario, options: &RunOptions) -> Result<Report, RunError> {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let payload = Bytes::from(payload(scenario.publish.payload_bytes));
    let (collector, tap) = Collector::start(clock, scenario.origins.len());
    let fleet = Fleet::start(scenario, payload.clone(), &options.network, tap).await?;
    if let Some(path) = &options.ca_out {
        std::fs::write(path, fleet.ca_pem())?;
    }
    let credentials = Credentials::generate();
    let (spawned, url, api_key, pids) = match &options.mode {
        Mode::Spawn { binary } => {
            let child = Spawned::start(binary, &credentials, fleet.ca_pem(), &scenario.pushfan).await?;
            let (url, pid) = (child.url.clone(), child.pid);
            (Some(child), url, credentials.api_key.clone(), vec![pid])
        }
        Mode::Attach { url, api_key, pids } => (None, url.clone(), api_key.clone(), pids.clone()),
    };
    let mut client = Api::connect(&url, &api_key).await?;
    let bars = MultiProgress::with_draw_target(if options.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });

    let import_started = Instant::now();
    import(&mut client, scenario, fleet.population(), &bars).await?;
    let import_seconds = import_started.elapsed().as_secs_f64();

    let crypto_before = crypto(&fleet, &payload, 1).await;
    let driver_pid = std::process::id();
    let cpu_before = pids.iter().map(|&pid| cpu::process_cpu(pid)).collect::<Result<Vec<_>, _>>()?;
    let threads_before = pids.iter().map(|&pid| cpu::threads_by_name(pid)).collect::<Result<Vec<_>, _>>()?;
    let driver_before = cpu::process_cpu(driver_pid)?;
    let expected = expected_counts(scenario, &fleet)?;
    let probe = cpu::CryptoProbe::start(crypto_keys(&fleet), payload.to_vec());
    let window_start = Instant::now();
    let broadcasts = publish_all(&client, scenario, &collector, &bars, expected.total).await?;
    let window_end = Instant::now();
    let crypto_during = probe.finish();
    let cpu_after = pids.iter().map(|&pid| cpu::process_cpu(pid)).collect::<Result<Vec<_>, _>>()?;
    let threads_after = pids.iter().map(|&pid| cpu::threads_by_name(pid)).collect::<Result<Vec<_>, _>>()?;
    let driver_after = cpu::process_cpu(driver_pid)?;
    let crypto_after = crypto(&fleet, &payload, 1).await;
    let all_cores = std::thread::available_parallelism().map_or(1, usize::from);
    let crypto_all_cores = crypto(&fleet, &payload, all_cores).await;
    collector.settle(expected.total, Duration::from_secs(5)).await;

    let seconds = window_end.duration_since(window_start).as_secs_f64();
    let pushes: u64 = broadcasts.iter().map(|b| b.finished()).sum();
    let accepted: u64 = broadcasts.iter().map(|b| b.accepted).sum();
    let crypto_us = (crypto_before + crypto_after).as_secs_f64() / 2.0 * 1e6;
    let per_pid: Vec<f64> = cpu_before.iter().zip(&cpu_after).map(|(b, a)| (*a - *b).as_secs_f64()).collect();
    let pushfan_cpu = (!per_pid.is_empty()).then(|| per_pid.iter().sum::<f64>());
    let cpu = CpuReport {
        pushfan_pids: pids.clone(),
        cpu_seconds_per_pid: per_pid,
        pushfan_cpu_seconds: pushfan_cpu,
        pushfan_cpu_per_push_us: pushfan_cpu.map(|c| c * 1e6 / pushes.max(1) as f64),
        crypto_per_push_us_before: crypto_before.as_secs_f64() * 1e6,
        crypto_per_push_us_after: crypto_after.as_secs_f64() * 1e6,
        pushfan_over_crypto: pushfan_cpu.map(|c| c * 1e6 / pushes.max(1) as f64 / crypto_us),
        crypto_all_cores_per_push_us: crypto_all_cores.as_secs_f64() * 1e6,
        crypto_during_per_push_us: crypto_during.per_push.as_secs_f64() * 1e6,
        crypto_during_messages: crypto_during.messages,
        thread_groups_per_pid: threads_before
            .iter()
            .zip(&threads_after)
            .map(|(b, a)| window_cpu(b, a))
            .collect(),
        all_cores,
        driver_and_fleet_cpu_seconds: (driver_after - driver_before).as_secs_f64(),
    };

    let verification = verify(scenario, &fleet, &mut client, &broadcasts, &expected).await?;
    let latency = collector.summary(window_start, window_end);

    let compare = match &scenario.compare {
        Some(spec) => {
            let pushfan_row = CompareRow::pushfan(pushes, seconds, pushfan_cpu, &verification);
            compare(scenario, spec, &fleet, &credentials, options, pushfan_row).await?
        }
        None => Vec::new(),
    };

    let report = Report {
        scenario: scenario.clone(),
        started_at_unix: started_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mode: match &options.mode {
            Mode::Spawn { .. } => "spawn".into(),
            Mode::Attach { .. } => "attach".into(),
        },
        import_seconds,
        broadcast_seconds: seconds,
        pushes,
        accepted,
        pushes_per_sec: pushes as f64 / seconds.max(f64::EPSILON),
        broadcasts,
        latency,
        cpu,
        origins: fleet.reports(scenario),
        verification,
        compare,
    };
    bars.clear().ok();
    if let Some(child) = spawned {
        child.stop().await;
    }
    fleet.shutdown().await?;
    Ok(report)
}

/// The payload: `n` times `x`, the bytes the peer contract's senders use too, so one fleet
/// checks every sender's messages against the same plaintext.
fn payload(n: usize) -> Vec<u8> {
    vec![b'x'; n]
}

/// Each thread group's CPU seconds between two readings; a group that started meanwhile counts
/// from zero.
fn window_cpu(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(group, cpu)| {
            let earlier = before.get(group).copied().unwrap_or_default();
            (group.clone(), cpu.saturating_sub(earlier).as_secs_f64())
        })
        .collect()
}

/// The crypto core's CPU per push on `threads` threads at once (1: the reference the targets use).
async fn crypto(fleet: &Fleet, payload: &Bytes, threads: usize) -> Duration {
    let keys = crypto_keys(fleet);
    let payload = payload.clone();
    // Dedicated threads: the measurement is CPU time, away from the async threads.
    tokio::task::spawn_blocking(move || {
        cpu::crypto_core_per_push_parallel(&keys, &payload, CRYPTO_MESSAGES, threads)
    })
    .await
    .expect("the crypto measurement does not panic")
}

/// The subscribers' keys the crypto core is timed with.
fn crypto_keys(fleet: &Fleet) -> Vec<pushfan_webpush::SubscriptionKeys> {
    let population = fleet.population();
    (0..CRYPTO_MESSAGES.min(256).min(population.count()))
        .map(|i| population.keys(i).subscription_keys().clone())
        .collect()
}

/// Registers every subscriber through `BulkImport`, with its topics.
async fn import(
    client: &mut Api,
    scenario: &Scenario,
    population: &pushfan_pushsim::Population,
    bars: &MultiProgress,
) -> Result<(), RunError> {
    let bar = bars.add(ProgressBar::new(population.count()));
    bar.set_style(ProgressStyle::with_template("importing {bar:40} {pos}/{len} {per_sec}").expect("valid"));
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let count = population.count();
    let (population, scenario_copy) = (population.clone(), scenario.clone());
    let producer = tokio::task::spawn_blocking(move || -> Result<(), RunError> {
        for start in (0..count).step_by(IMPORT_CHUNK as usize) {
            let items = population
                .subscribers(start..(start + IMPORT_CHUNK).min(count))?
                .into_iter()
                .map(|s| s.subscribe_request(scenario_copy.topics_of(s.index)))
                .collect();
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
    let response = client.subscriptions.bulk_import(stream).await.map_err(api("bulk import"))?.into_inner();
    producer.await.expect("the import producer does not panic")?;
    bar.finish_and_clear();
    if response.failed != 0 || response.imported != count {
        return Err(RunError::Import {
            imported: response.imported,
            expected: count,
            failed: response.failed,
            first_error: response.errors.first().map_or_else(String::new, |e| format!("{e:?}")),
        });
    }
    Ok(())
}

/// What every subscriber should have received.
#[derive(Debug)]
struct Expected {
    /// 201s per subscriber index.
    per_subscriber: Vec<u32>,
    /// Their sum.
    total: u64,
    /// Subscribers targeted and answered 404/410.
    gone: u64,
    /// Subscribers targeted at all.
    targeted: u64,
}

fn expected_counts(scenario: &Scenario, fleet: &Fleet) -> Result<Expected, RunError> {
    let target = scenario.target()?;
    let broadcasts = scenario.publish.broadcasts;
    let mut expected = Expected {
        per_subscriber: Vec::with_capacity(scenario.subscribers as usize),
        total: 0,
        gone: 0,
        targeted: 0,
    };
    for i in 0..scenario.subscribers {
        let times = match &target {
            Target::Everyone => broadcasts,
            Target::Topic(topic) => broadcasts * u32::from(scenario.is_member(topic, i)),
            Target::Single => {
                (0..broadcasts).filter(|&k| u64::from(k) % scenario.subscribers == i).count() as u32
            }
        };
        let targeted = times > 0;
        let gone = fleet.is_permanently_gone(scenario, i);
        let n = if gone { 0 } else { times };
        expected.targeted += u64::from(targeted);
        expected.gone += u64::from(targeted && gone);
        expected.total += u64::from(n);
        expected.per_subscriber.push(n);
    }
    Ok(expected)
}

/// Publishes the scenario's broadcasts (one after another, or at the configured rate) and
/// watches each to completion.
async fn publish_all(
    client: &Api,
    scenario: &Scenario,
    collector: &Collector,
    bars: &MultiProgress,
    expected_201: u64,
) -> Result<Vec<BroadcastReport>, RunError> {
    let bar = bars.add(ProgressBar::new(expected_201));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} pushes accepted  {per_sec}  {msg}",
        )
        .expect("valid"),
    );
    let ticker = {
        let (bar, collector) = (bar.clone(), collector.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(collector.accepted());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut client_for_ids = client.clone();
    let ids = match scenario.target()? {
        Target::Single => subscription_ids(&mut client_for_ids, scenario).await?,
        _ => Vec::new(),
    };
    let target = |seq: u32| match scenario.target() {
        Ok(Target::Topic(topic)) => ProtoTarget::Topic(topic),
        Ok(Target::Single) => {
            ProtoTarget::SubscriptionId(ids[(u64::from(seq) % scenario.subscribers) as usize].clone())
        }
        _ => ProtoTarget::Everyone(Everyone {}),
    };
    let payload = Bytes::from(payload(scenario.publish.payload_bytes));
    let mut tasks = tokio::task::JoinSet::new();
    let interval = (scenario.publish.rate_per_sec > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / scenario.publish.rate_per_sec));
    let mut results = Vec::new();
    let started = Instant::now();
    for seq in 0..scenario.publish.broadcasts {
        let job = broadcast(
            client.clone(),
            collector.clone(),
            seq,
            target(seq),
            payload.clone(),
            scenario.publish.ttl_secs,
        );
        match interval {
            None => {
                bar.set_message(format!("broadcast {}/{}", seq + 1, scenario.publish.broadcasts));
                results.push(job.await?);
            }
            Some(interval) => {
                tokio::time::sleep_until((started + interval * seq).into()).await;
                tasks.spawn(job);
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.expect("a broadcast task does not panic")?);
    }
    ticker.abort();
    bar.finish_and_clear();
    results.sort_by_key(|b| b.seq);
    Ok(results)
}

async fn broadcast(
    mut client: Api,
    collector: Collector,
    seq: u32,
    target: ProtoTarget,
    payload: Bytes,
    ttl: u32,
) -> Result<BroadcastReport, RunError> {
    let started = Instant::now();
    collector.published(seq, started);
    let id = client
        .publish
        .publish(PublishRequest {
            target: Some(target),
            payload,
            options: Some(PushOptions {
                ttl_seconds: Some(ttl),
                topic: measure::topic_of(seq),
                ..PushOptions::default()
            }),
            ..PublishRequest::default()
        })
        .await
        .map_err(api("publish"))?
        .into_inner()
        .broadcast_id;
    let mut updates = client
        .broadcasts
        .watch_broadcast(WatchBroadcastRequest { broadcast_id: id.clone() })
        .await
        .map_err(api("watch broadcast"))?
        .into_inner();
    let mut last: Option<Broadcast> = None;
    while let Some(update) = updates.message().await.map_err(api("watch broadcast"))? {
        if let Some(broadcast) = update.broadcast {
            let complete = broadcast.complete;
            last = Some(broadcast);
            if complete {
                break;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    match last {
        Some(b) if b.complete => Ok(BroadcastReport::from_proto(seq, &b, seconds)),
        _ => Err(RunError::WatchEnded(id)),
    }
}

/// Compares what every subscriber received with what it should have, and the ledger's counts
/// with the fleet's.
async fn verify(
    scenario: &Scenario,
    fleet: &Fleet,
    client: &mut Api,
    broadcasts: &[BroadcastReport],
    expected: &Expected,
) -> Result<Verification, RunError> {
    let mut wrong = Vec::new();
    let mut wrong_count = 0u64;
    for (i, &want) in expected.per_subscriber.iter().enumerate() {
        let got = fleet.received(i as u64);
        if got != want {
            wrong_count += 1;
            if wrong.len() < 10 {
                wrong.push((i as u64, want, got));
            }
        }
    }
    let snapshots = fleet.snapshots();
    let sum =
        |f: &dyn Fn(&pushfan_pushsim::StatsSnapshot) -> u64| snapshots.iter().map(|(_, s)| f(s)).sum::<u64>();
    let remaining =
        if scenario.subscribers <= LIST_LIMIT { Some(count_subscriptions(client).await?) } else { None };
    let sequential = scenario.publish.rate_per_sec == 0.0;
    let ledger_gone: u64 = broadcasts.iter().map(|b| b.gone).sum();
    let ledger_pruned: u64 = broadcasts.iter().map(|b| b.pruned).sum();
    let ledger_accepted: u64 = broadcasts.iter().map(|b| b.accepted).sum();
    let mut problems = Vec::new();
    if wrong_count > 0 {
        problems.push(format!("{wrong_count} subscribers received a different number of messages than expected (index, want, got): {wrong:?}"));
    }
    if ledger_accepted != expected.total {
        problems.push(format!("the ledger counts {ledger_accepted} accepted, expected {}", expected.total));
    }
    // Concurrent broadcasts may each meet a subscriber before it is pruned; one after another,
    // only the first does.
    if sequential && (ledger_gone != expected.gone || ledger_pruned != expected.gone) {
        problems.push(format!(
            "the ledger counts {ledger_gone} gone and {ledger_pruned} pruned, expected {} of each",
            expected.gone
        ));
    }
    if let Some(remaining) = remaining {
        if remaining != scenario.subscribers - expected.gone {
            problems.push(format!(
                "{remaining} subscriptions remain in the store, expected {}",
                scenario.subscribers - expected.gone
            ));
        }
    }
    let (vapid_failures, decrypt_failures, mismatches) =
        (sum(&|s| s.vapid_failures), sum(&|s| s.decrypt_failures), sum(&|s| s.payload_mismatches));
    if vapid_failures + decrypt_failures + mismatches > 0 {
        problems.push(format!("{vapid_failures} VAPID failures, {decrypt_failures} decryption failures, {mismatches} wrong payloads"));
    }
    let failed: u64 = broadcasts.iter().map(|b| b.rejected + b.failed + b.expired + b.encrypt_failed).sum();
    if failed > 0 {
        problems.push(format!(
            "{failed} pushes were rejected, failed after retries, expired or failed to encrypt"
        ));
    }
    Ok(Verification {
        ok: problems.is_empty(),
        problems,
        subscribers: scenario.subscribers,
        targeted: expected.targeted,
        expected_201: expected.total,
        expected_gone: expected.gone,
        subscribers_with_wrong_count: wrong_count,
        received_201: sum(&|s| s.status(201)),
        vapid_verified: sum(&|s| s.vapid_verified),
        decrypted: sum(&|s| s.decrypted),
        vapid_failures,
        decrypt_failures,
        payload_mismatches: mismatches,
        ledger_accepted,
        ledger_gone,
        ledger_pruned,
        subscriptions_remaining: remaining,
    })
}

/// Every subscriber's subscription id, by index, from listing the store (endpoints end in
/// `/push/<index>`).
async fn subscription_ids(client: &mut Api, scenario: &Scenario) -> Result<Vec<String>, RunError> {
    let count = scenario.subscribers;
    if count > LIST_LIMIT {
        return Err(RunError::Scenario(crate::scenario::ScenarioError::Invalid {
            scenario: scenario.name.clone(),
            key: "publish.target".into(),
            problem: format!("`single` lists every subscription; at most {LIST_LIMIT} subscribers"),
        }));
    }
    let mut ids = vec![String::new(); count as usize];
    each_subscription(client, |subscription| {
        let index = subscription.endpoint.rsplit_once("/push/").and_then(|(_, i)| i.parse::<usize>().ok());
        if let Some(slot) = index.and_then(|i| ids.get_mut(i)) {
            *slot = subscription.subscription_id;
        }
    })
    .await?;
    match ids.iter().position(String::is_empty) {
        Some(missing) => {
            Err(RunError::Inconsistent(format!("no subscription id listed for subscriber {missing}")))
        }
        None => Ok(ids),
    }
}

/// Counts the tenant's subscriptions by listing them.
async fn count_subscriptions(client: &mut Api) -> Result<u64, RunError> {
    let mut total = 0;
    each_subscription(client, |_| total += 1).await?;
    Ok(total)
}

/// Lists every subscription of the tenant, a page at a time.
async fn each_subscription(client: &mut Api, mut visit: impl FnMut(Subscription)) -> Result<(), RunError> {
    let mut page_token = String::new();
    loop {
        let page = client
            .subscriptions
            .list_subscriptions(ListSubscriptionsRequest {
                topic: String::new(),
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(api("list subscriptions"))?
            .into_inner();
        page.subscriptions.into_iter().for_each(&mut visit);
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

/// Sends the same broadcast with each installed peer, checking the fleet's counts after each.
async fn compare(
    scenario: &Scenario,
    spec: &crate::scenario::CompareSpec,
    fleet: &Fleet,
    credentials: &Credentials,
    options: &RunOptions,
    pushfan_row: CompareRow,
) -> Result<Vec<CompareRow>, RunError> {
    let dir = tempfile::tempdir()?;
    let subscriptions = dir.path().join("subscriptions.jsonl");
    let ca = dir.path().join("ca.pem");
    peers::export_subscriptions(fleet.population(), scenario.subscribers, &subscriptions)?;
    std::fs::write(&ca, fleet.ca_pem())?;
    let private = credentials.vapid.private_base64();
    let mut rows = vec![pushfan_row];
    for name in &spec.peers {
        let Some(launcher) = peers::find(&options.peers_dir, name) else {
            let message = format!("peer `{name}` is not installed ({}/{name}/run missing or not executable; run loadtest/peers/setup.sh)", options.peers_dir.display());
            eprintln!("skipping: {message}");
            rows.push(CompareRow::skipped(name, message));
            continue;
        };
        fleet.reset();
        let request = PeerRequest {
            subscriptions: &subscriptions,
            ca: &ca,
            vapid_private: &private,
            vapid_public: credentials.vapid.public_base64(),
            subject: SUBJECT,
            payload_bytes: scenario.publish.payload_bytes,
            count: scenario.subscribers,
            concurrency: spec.concurrency,
            ttl: scenario.publish.ttl_secs,
        };
        eprintln!("running peer `{name}` ({} pushes, {} in flight)", scenario.subscribers, spec.concurrency);
        match peers::run(name, &launcher, &request).await {
            Ok(result) => {
                let exactly_once = (0..scenario.subscribers)
                    .filter(|&i| fleet.received(i) == u32::from(!fleet.is_permanently_gone(scenario, i)))
                    .count() as u64;
                let snapshots = fleet.snapshots();
                let failures: u64 = snapshots
                    .iter()
                    .map(|(_, s)| s.vapid_failures + s.decrypt_failures + s.payload_mismatches)
                    .sum();
                rows.push(CompareRow::peer(result, exactly_once == scenario.subscribers && failures == 0));
            }
            Err(error) => {
                eprintln!("peer `{name}` failed: {error}");
                rows.push(CompareRow::skipped(name, error.to_string()));
            }
        }
    }
    Ok(rows)
}
