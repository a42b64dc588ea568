//! A run's results: the JSON written to disk, a text summary for the terminal, and an SVG of
//! throughput and latency over time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use pushfan_proto::v1::Broadcast;
use serde::Serialize;

use crate::fleet::OriginReport;
use crate::measure::LatencyReport;
use crate::peers::PeerResult;
use crate::scenario::Scenario;

/// Everything one run measured and checked.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The scenario as run.
    pub scenario: Scenario,
    /// When it started.
    pub started_at_unix: u64,
    /// CPU cores of this machine.
    pub cores: usize,
    /// `spawn` or `attach`.
    pub mode: String,
    /// Time to bulk-import the population.
    pub import_seconds: f64,
    /// First publish to last broadcast complete.
    pub broadcast_seconds: f64,
    /// Pushes with a final answer (accepted, gone, rejected, failed, expired).
    pub pushes: u64,
    /// Pushes accepted (201).
    pub accepted: u64,
    /// `pushes / broadcast_seconds`.
    pub pushes_per_sec: f64,
    /// Each broadcast's final counts.
    pub broadcasts: Vec<BroadcastReport>,
    /// Latency and throughput over time.
    pub latency: LatencyReport,
    /// CPU per push.
    pub cpu: CpuReport,
    /// What each simulated push service saw.
    pub origins: Vec<OriginReport>,
    /// Whether every count is exact.
    pub verification: Verification,
    /// pushfan and the peers side by side (the `compare` scenario).
    pub compare: Vec<CompareRow>,
}

/// One broadcast's final ledger counts.
#[derive(Clone, Debug, Serialize)]
pub struct BroadcastReport {
    /// Its number in the run.
    pub seq: u32,
    /// pushfan's id.
    pub id: String,
    /// Subscribers targeted.
    pub targeted: u64,
    /// Encrypted.
    pub encrypted: u64,
    /// Encryption failures.
    pub encrypt_failed: u64,
    /// 2xx.
    pub accepted: u64,
    /// 404/410.
    pub gone: u64,
    /// Subscriptions deleted for being gone.
    pub pruned: u64,
    /// Refused (4xx).
    pub rejected: u64,
    /// Failed after retries.
    pub failed: u64,
    /// TTL ran out.
    pub expired: u64,
    /// Publish call to complete.
    pub seconds: f64,
}

impl BroadcastReport {
    /// From the final `WatchBroadcast` update.
    pub fn from_proto(seq: u32, b: &Broadcast, seconds: f64) -> Self {
        Self {
            seq,
            id: b.broadcast_id.clone(),
            targeted: b.targeted,
            encrypted: b.encrypted,
            encrypt_failed: b.encrypt_failed,
            accepted: b.accepted,
            gone: b.gone,
            pruned: b.pruned,
            rejected: b.rejected,
            failed: b.failed,
            expired: b.expired,
            seconds,
        }
    }

    /// Pushes with a final answer.
    pub fn finished(&self) -> u64 {
        self.accepted + self.gone + self.rejected + self.failed + self.expired
    }
}

/// CPU time over the broadcast window.
#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    /// The processes measured.
    pub pushfan_pids: Vec<u32>,
    /// Each one's user+system CPU over the window, in `pushfan_pids` order.
    pub cpu_seconds_per_pid: Vec<f64>,
    /// Their sum (`None` when no pid was given).
    pub pushfan_cpu_seconds: Option<f64>,
    /// Per push with a final answer.
    pub pushfan_cpu_per_push_us: Option<f64>,
    /// Single-thread encryption of the same payload, before the broadcasts.
    pub crypto_per_push_us_before: f64,
    /// The same, after.
    pub crypto_per_push_us_after: f64,
    /// pushfan CPU per push ÷ the mean crypto cost per push.
    pub pushfan_over_crypto: Option<f64>,
    /// The same encryption on every core at once (`all_cores` threads), CPU per push, after the
    /// broadcasts: what the crypto costs in the conditions a broadcast runs in.
    pub crypto_all_cores_per_push_us: f64,
    /// The threads of that measurement.
    pub all_cores: usize,
    /// Single-thread encryption of the same payload sampled on a thread of the harness while
    /// the broadcasts ran (`pushfan_pushsim::cpu::CryptoProbe`), CPU per push: the crypto core
    /// under the same host noise and shared caches as pushfan's own crypto threads.
    pub crypto_during_per_push_us: f64,
    /// How many messages that sampling timed.
    pub crypto_during_messages: u64,
    /// Per process (in `pushfan_pids` order), CPU seconds over the window by thread name
    /// (numbers dropped; threads that ended meanwhile are missing): `crypto` is the encryption.
    pub thread_groups_per_pid: Vec<BTreeMap<String, f64>>,
    /// This process (driver and fleet: TLS, VAPID checks, decryption) over the window.
    pub driver_and_fleet_cpu_seconds: f64,
}

/// The correctness checks.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    /// No problem found.
    pub ok: bool,
    /// What was wrong.
    pub problems: Vec<String>,
    /// The population.
    pub subscribers: u64,
    /// Subscribers the broadcasts target.
    pub targeted: u64,
    /// 201s the fleet should have given.
    pub expected_201: u64,
    /// Targeted subscribers answered 404/410.
    pub expected_gone: u64,
    /// Subscribers whose receive count differs from the expected.
    pub subscribers_with_wrong_count: u64,
    /// 201s the fleet gave.
    pub received_201: u64,
    /// Tokens verified.
    pub vapid_verified: u64,
    /// Bodies decrypted to the payload.
    pub decrypted: u64,
    /// Tokens refused.
    pub vapid_failures: u64,
    /// Bodies that did not decrypt.
    pub decrypt_failures: u64,
    /// Bodies with the wrong plaintext.
    pub payload_mismatches: u64,
    /// pushfan's accepted count.
    pub ledger_accepted: u64,
    /// pushfan's gone count.
    pub ledger_gone: u64,
    /// pushfan's pruned count.
    pub ledger_pruned: u64,
    /// Subscriptions left in pushfan's store (listed when small enough).
    pub subscriptions_remaining: Option<u64>,
}

/// One sender in the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    /// `pushfan` or the peer's name.
    pub sender: String,
    /// Library and version.
    pub library: String,
    /// `ok`, or why it has no numbers.
    pub status: String,
    /// Pushes answered.
    pub pushes: u64,
    /// Pushes per wall-clock second.
    pub pushes_per_sec: Option<f64>,
    /// Sender CPU per push.
    pub cpu_per_push_us: Option<f64>,
    /// Pushes per sender CPU-second.
    pub pushes_per_cpu_second: Option<f64>,
    /// Every subscriber got exactly one valid message from this sender.
    pub exactly_once: bool,
}

impl CompareRow {
    /// pushfan's row, from the main broadcast.
    pub fn pushfan(pushes: u64, seconds: f64, cpu: Option<f64>, verification: &Verification) -> Self {
        Self {
            sender: "pushfan".into(),
            library: format!("pushfan {}", env!("CARGO_PKG_VERSION")),
            status: "ok".into(),
            pushes,
            pushes_per_sec: Some(pushes as f64 / seconds.max(f64::EPSILON)),
            cpu_per_push_us: cpu.map(|c| c * 1e6 / pushes.max(1) as f64),
            pushes_per_cpu_second: cpu.map(|c| pushes as f64 / c.max(f64::EPSILON)),
            exactly_once: verification.ok,
        }
    }

    /// A peer's row.
    pub fn peer(result: PeerResult, exactly_once: bool) -> Self {
        let answered: u64 = result.statuses.values().sum();
        Self {
            sender: result.peer,
            library: format!("{} {}", result.library, result.version),
            status: "ok".into(),
            pushes: answered,
            pushes_per_sec: Some(answered as f64 / result.wall_seconds.max(f64::EPSILON)),
            cpu_per_push_us: Some(result.cpu_seconds * 1e6 / answered.max(1) as f64),
            pushes_per_cpu_second: Some(answered as f64 / result.cpu_seconds.max(f64::EPSILON)),
            exactly_once,
        }
    }

    /// A peer that could not run.
    pub fn skipped(name: &str, why: String) -> Self {
        Self {
            sender: name.to_owned(),
            library: String::new(),
            status: why,
            pushes: 0,
            pushes_per_sec: None,
            cpu_per_push_us: None,
            pushes_per_cpu_second: None,
            exactly_once: false,
        }
    }
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let l = &self.latency.publish_to_201;
        let _ = writeln!(
            s,
            "scenario {}: {} subscribers, {} broadcast(s) of {} B",
            self.scenario.name,
            self.scenario.subscribers,
            self.broadcasts.len(),
            self.scenario.publish.payload_bytes
        );
        let _ = writeln!(s, "  import       {:.1} s", self.import_seconds);
        let _ = writeln!(
            s,
            "  pushes       {} answered ({} accepted) in {:.2} s: {:.0} pushes/s",
            self.pushes, self.accepted, self.broadcast_seconds, self.pushes_per_sec
        );
        let _ = writeln!(
            s,
            "  latency      publish→201 p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
        );
        let _ = writeln!(s, "  answers      {:?}", self.latency.answers);
        let c = &self.cpu;
        let _ = writeln!(
            s,
            "  cpu          pushfan {} s = {} µs/push; crypto core {:.1}/{:.1} µs/push (before/after); ratio {}",
            opt(c.pushfan_cpu_seconds, 2),
            opt(c.pushfan_cpu_per_push_us, 1),
            c.crypto_per_push_us_before,
            c.crypto_per_push_us_after,
            opt(c.pushfan_over_crypto, 2)
        );
        let _ = writeln!(
            s,
            "               crypto core on all {} cores at once: {:.1} µs/push; ratio to it {}",
            c.all_cores,
            c.crypto_all_cores_per_push_us,
            opt(c.pushfan_cpu_per_push_us.map(|p| p / c.crypto_all_cores_per_push_us), 2)
        );
        let _ = writeln!(
            s,
            "               crypto core sampled during the broadcast: {:.1} µs/push ({} messages); ratio to it {}",
            c.crypto_during_per_push_us,
            c.crypto_during_messages,
            opt(c.pushfan_cpu_per_push_us.map(|p| p / c.crypto_during_per_push_us), 2)
        );
        for (pid, groups) in c.pushfan_pids.iter().zip(&c.thread_groups_per_pid) {
            let mut busiest: Vec<_> = groups.iter().filter(|(_, s)| **s >= 0.01).collect();
            busiest.sort_by(|a, b| b.1.total_cmp(a.1));
            let shown: Vec<String> = busiest
                .iter()
                .map(|(name, s)| {
                    format!("{name} {s:.2} s ({:.1} µs/push)", *s * 1e6 / self.pushes.max(1) as f64)
                })
                .collect();
            let _ = writeln!(s, "  threads      pid {pid}: {}", shown.join(", "));
        }
        if c.pushfan_pids.len() > 1 {
            let each: Vec<String> = c
                .pushfan_pids
                .iter()
                .zip(&c.cpu_seconds_per_pid)
                .map(|(p, s)| format!("pid {p}: {s:.2} s"))
                .collect();
            let _ = writeln!(s, "  cpu per pid  {}", each.join(", "));
        }
        let _ = writeln!(s, "  fleet+driver {:.2} s CPU", c.driver_and_fleet_cpu_seconds);
        let v = &self.verification;
        let _ = writeln!(
            s,
            "  verification {}: {} expected 201, fleet gave {}, ledger {}; gone {} (ledger {}, pruned {}); remaining {}",
            if v.ok { "OK" } else { "FAILED" },
            v.expected_201,
            v.received_201,
            v.ledger_accepted,
            v.expected_gone,
            v.ledger_gone,
            v.ledger_pruned,
            v.subscriptions_remaining.map_or_else(|| "not listed".into(), |r| r.to_string())
        );
        for problem in &v.problems {
            let _ = writeln!(s, "    problem: {problem}");
        }
        if !self.compare.is_empty() {
            let _ = writeln!(
                s,
                "  {:<16} {:>10} {:>12} {:>14} {:>16}  exactly-once  library",
                "sender", "pushes", "pushes/s", "CPU µs/push", "pushes/CPU-s"
            );
            for row in &self.compare {
                if row.status != "ok" {
                    let _ = writeln!(s, "  {:<16} skipped: {}", row.sender, row.status);
                    continue;
                }
                let _ = writeln!(
                    s,
                    "  {:<16} {:>10} {:>12} {:>14} {:>16}  {:<12}  {}",
                    row.sender,
                    row.pushes,
                    opt(row.pushes_per_sec, 0),
                    opt(row.cpu_per_push_us, 1),
                    opt(row.pushes_per_cpu_second, 0),
                    row.exactly_once,
                    row.library
                );
            }
        }
        s
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }

    /// Draws throughput (201/s and other answers/s) and latency (p50, p99 per bucket) over time.
    pub fn write_svg(&self, path: &Path) -> Result<(), PlotError> {
        let points = &self.latency.timeline;
        let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
        root.fill(&WHITE).map_err(plot)?;
        let title = format!(
            "pushfan load test `{}`: {} subscribers, {} B payload, {} broadcast(s)",
            self.scenario.name,
            self.scenario.subscribers,
            self.scenario.publish.payload_bytes,
            self.broadcasts.len()
        );
        let root = root.titled(&title, ("sans-serif", 20)).map_err(plot)?;
        let (upper, lower) = root.split_vertically(330);
        let t_max = points.last().map_or(1.0, |p| p.t_seconds + self.latency.bucket_seconds).max(0.5);

        let rate_max =
            points.iter().map(|p| p.pushes_per_sec.max(p.other_answers_per_sec)).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&upper)
            .caption(format!("throughput ({:.0} pushes/s overall)", self.pushes_per_sec), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..rate_max)
            .map_err(plot)?;
        chart
            .configure_mesh()
            .x_desc("seconds since first publish")
            .y_desc("answers / s")
            .draw()
            .map_err(plot)?;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.t_seconds, p.pushes_per_sec)),
                BLUE.stroke_width(2),
            ))
            .map_err(plot)?
            .label("201 Created / s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        // One thin line per origin when there are several: shows whether a slow or throttling
        // origin holds the others back.
        if self.origins.len() > 1 {
            for (o, origin) in self.origins.iter().enumerate() {
                let color = Palette99::pick(o + 3).mix(0.9);
                let series = points
                    .iter()
                    .map(|p| (p.t_seconds, p.pushes_per_sec_by_origin.get(o).copied().unwrap_or(0.0)));
                chart
                    .draw_series(LineSeries::new(series, color.stroke_width(1)))
                    .map_err(plot)?
                    .label(format!("201 / s from `{}`", origin.name))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1)));
            }
        }
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.t_seconds, p.other_answers_per_sec)), RED))
            .map_err(plot)?
            .label("other answers (410, 429, 500…) / s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot)?;

        let l = &self.latency.publish_to_201;
        let lat_max = points.iter().filter_map(|p| p.p99_ms).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&lower)
            .caption(
                format!(
                    "publish → 201 latency (overall p50 {:.1} ms, p90 {:.1}, p99 {:.1}, max {:.1})",
                    l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..lat_max)
            .map_err(plot)?;
        chart.configure_mesh().x_desc("seconds since first publish").y_desc("ms").draw().map_err(plot)?;
        for (label, color, pick) in [
            (
                "p50 of pushes accepted in the bucket",
                GREEN,
                (|p: &crate::measure::TimePoint| p.p50_ms) as fn(&crate::measure::TimePoint) -> Option<f64>,
            ),
            ("p99", MAGENTA, |p| p.p99_ms),
        ] {
            chart
                .draw_series(LineSeries::new(
                    points.iter().filter_map(|p| pick(p).map(|v| (p.t_seconds, v))),
                    color.stroke_width(2),
                ))
                .map_err(plot)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot)?;
        root.present().map_err(plot)?;
        Ok(())
    }
}

/// Drawing the plot failed.
#[derive(Debug, thiserror::Error)]
#[error("drawing the plot: {0}")]
pub struct PlotError(String);

fn plot<E: std::fmt::Display>(error: E) -> PlotError {
    PlotError(error.to_string())
}
