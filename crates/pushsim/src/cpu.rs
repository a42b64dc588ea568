//! CPU accounting for runs against the simulated push service: how much CPU pushfan used, set
//! against the crypto core's cost per push measured in the same run. Shared by `pushfan demo`
//! (pushfan and the service in one process, told apart by thread name) and the load-test
//! harness (pushfan in processes of its own).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pushfan_webpush::{encrypt, Backend, ContentEncoding, Padding, SubscriptionKeys};

/// Linux reports `utime` and `stime` in USER_HZ ticks, which the kernel ABI fixes at 100/s.
const TICKS_PER_SECOND: f64 = 100.0;

/// Why CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A `stat` file is unreadable (the process is gone, or not on this host).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A `stat` file did not have the expected fields.
    #[error("{path} has no utime/stime fields")]
    Format {
        /// The file.
        path: String,
    },
}

/// User plus system CPU time of process `pid` so far (all its threads).
pub fn process_cpu(pid: u32) -> Result<Duration, CpuError> {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).map_err(|source| CpuError::Read { path: path.clone(), source })?;
    let (_, ticks) = parse_stat(&stat).ok_or(CpuError::Format { path })?;
    Ok(from_ticks(ticks))
}

/// CPU used so far by this process's live threads whose name starts with `prefix`.
pub fn threads_cpu(prefix: &str) -> Result<Duration, CpuError> {
    let ticks = live_threads("/proc/self/task")?
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, ticks)| ticks)
        .sum();
    Ok(from_ticks(ticks))
}

/// CPU used so far by each group of process `pid`'s live threads, grouped by thread name with
/// any trailing number dropped (`crypto-0` and `crypto-1` are `crypto`). Threads that ended
/// are not counted: set against [`process_cpu`] it shows where most of the time went.
pub fn threads_by_name(pid: u32) -> Result<BTreeMap<String, Duration>, CpuError> {
    let mut groups = BTreeMap::new();
    for (name, ticks) in live_threads(&format!("/proc/{pid}/task"))? {
        let group = name.trim_end_matches(|c: char| c.is_ascii_digit() || matches!(c, '-' | '#' | ' '));
        *groups.entry(group.to_owned()).or_default() += from_ticks(ticks);
    }
    Ok(groups)
}

/// The name and CPU ticks of every thread listed under `tasks` (a `/proc/…/task` directory).
fn live_threads(tasks: &str) -> Result<Vec<(String, u64)>, CpuError> {
    let read = |source| CpuError::Read { path: tasks.into(), source };
    let mut threads = Vec::new();
    for task in std::fs::read_dir(tasks).map_err(read)? {
        let path = task.map_err(read)?.path().join("stat");
        // A thread that ended since the listing has no stat any more, and no CPU to count.
        let Ok(stat) = std::fs::read_to_string(&path) else { continue };
        let (name, ticks) =
            parse_stat(&stat).ok_or_else(|| CpuError::Format { path: path.display().to_string() })?;
        threads.push((name.to_owned(), ticks));
    }
    Ok(threads)
}

/// The crypto core's cost: single-thread RFC 8291 encryption (aes128gcm, AWS-LC, a fresh
/// ephemeral key per message, as pushfan's workers do) of `payload` for `messages` messages,
/// cycling through `keys`. CPU time per message, measured on the calling thread.
///
/// # Panics
/// If `keys` is empty, or the payload is too large to encrypt.
pub fn crypto_core_per_push(keys: &[SubscriptionKeys], payload: &[u8], messages: u64) -> Duration {
    assert!(!keys.is_empty(), "no keys to encrypt for");
    let started = cpu_time::ThreadTime::now();
    for key in keys.iter().cycle().take(messages as usize) {
        let push = encrypt(Backend::AwsLc, key, ContentEncoding::Aes128gcm, payload, &Padding::None)
            .expect("valid keys and a payload that fits");
        std::hint::black_box(push);
    }
    started.elapsed() / messages.max(1) as u32
}

/// [`crypto_core_per_push`] on `threads` threads at once, each encrypting its share: CPU time
/// per message summed over the threads. Set against the one-thread figure it shows what running
/// every core costs the crypto itself (shared caches, clocks), the condition a broadcast runs in.
///
/// # Panics
/// As [`crypto_core_per_push`].
pub fn crypto_core_per_push_parallel(
    keys: &[SubscriptionKeys],
    payload: &[u8],
    messages: u64,
    threads: usize,
) -> Duration {
    let threads = threads.max(1);
    let share = messages.div_ceil(threads as u64).max(1);
    let total: Duration = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| crypto_core_per_push(keys, payload, share) * share as u32))
            .collect();
        workers.into_iter().map(|worker| worker.join().expect("the crypto measurement does not panic")).sum()
    });
    total / (share * threads as u64) as u32
}

/// [`crypto_core_per_push`] sampled on a thread of its own while a broadcast runs:
/// [`CryptoProbe::MESSAGES`] messages every [`CryptoProbe::EVERY`], after a few untimed ones.
/// Readings taken before and after a broadcast miss what the host does meanwhile (on a shared
/// machine the same encryption's cost moved by a fifth within one run); sampled alongside, the
/// crypto core meets the same host, clocks and shared caches as pushfan's crypto threads.
/// About 1.5% of one core.
#[derive(Debug)]
pub struct CryptoProbe {
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<ProbeReading>,
}

/// What a [`CryptoProbe`] measured.
#[derive(Clone, Copy, Debug)]
pub struct ProbeReading {
    /// Mean CPU time per timed message.
    pub per_push: Duration,
    /// Messages timed.
    pub messages: u64,
    /// All the CPU the probe's thread used, warm-up included: what to take off a process's CPU
    /// when the probe ran inside it.
    pub thread_cpu: Duration,
}

impl CryptoProbe {
    /// Messages timed per sample.
    pub const MESSAGES: u64 = 20;
    /// Messages encrypted untimed before each sample.
    pub const WARM_UP: u64 = 4;
    /// Time between samples.
    pub const EVERY: Duration = Duration::from_millis(100);

    /// Starts sampling; encrypts `payload` for `keys` in turn.
    ///
    /// # Panics
    /// As [`crypto_core_per_push`].
    pub fn start(keys: Vec<SubscriptionKeys>, payload: Vec<u8>) -> Self {
        assert!(!keys.is_empty(), "no keys to encrypt for");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let sampler = std::thread::Builder::new()
            .name("crypto-probe".into())
            .spawn(move || {
                let started = cpu_time::ThreadTime::now();
                let (mut cpu, mut messages) = (Duration::ZERO, 0);
                // At least one sample, however short the broadcast.
                loop {
                    // Untimed: after the pause, the first encryptions refill the caches that
                    // pushfan's crypto threads, never pausing, keep warm.
                    crypto_core_per_push(&keys, &payload, Self::WARM_UP);
                    cpu += crypto_core_per_push(&keys, &payload, Self::MESSAGES) * Self::MESSAGES as u32;
                    messages += Self::MESSAGES;
                    std::thread::sleep(Self::EVERY);
                    // Checked after the pause, so no sample falls after the broadcast.
                    if stopped.load(Ordering::Acquire) {
                        return ProbeReading {
                            per_push: cpu / messages as u32,
                            messages,
                            thread_cpu: started.elapsed(),
                        };
                    }
                }
            })
            .expect("a thread can be started");
        Self { stop, sampler }
    }

    /// Stops sampling and says what it measured.
    pub fn finish(self) -> ProbeReading {
        self.stop.store(true, Ordering::Release);
        self.sampler.join().expect("the crypto probe does not panic")
    }
}

fn from_ticks(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND)
}

/// The name and utime + stime in ticks from a `/proc/…/stat` line, per proc(5). The name is
/// parenthesised and may itself hold spaces and parentheses, hence the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    // After the name: state (field 3) … utime (14) and stime (15).
    let mut rest = stat.get(close + 1..)?.split_ascii_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_samples_until_it_is_finished() {
        let keys = vec![pushfan_webpush::UserAgentKeys::generate(Backend::AwsLc)
            .unwrap()
            .subscription_keys()
            .clone()];
        let probe = CryptoProbe::start(keys, vec![b'x'; 3072]);
        std::thread::sleep(CryptoProbe::EVERY * 3);
        let reading = probe.finish();
        let messages = reading.messages;
        assert!(messages >= 2 * CryptoProbe::MESSAGES, "sampled again after each pause: {messages}");
        assert_eq!(messages % CryptoProbe::MESSAGES, 0);
        assert!(reading.per_push > Duration::ZERO);
        // The warm-up is the thread's too.
        assert!(reading.thread_cpu > reading.per_push * messages as u32, "{reading:?}");
    }

    #[test]
    fn stat_lines_with_awkward_names_parse() {
        let line = "4242 (tokio (rt) 1) S 1 2 3 4 5 6 7 8 9 10 1234 56 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("tokio (rt) 1", 1290)));
        assert_eq!(parse_stat("4242 (short) S 1"), None);
    }

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let pid = std::process::id();
        let before = process_cpu(pid).unwrap();
        let spin = cpu_time::ThreadTime::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(process_cpu(pid).unwrap() >= before);
        assert!(matches!(process_cpu(u32::MAX), Err(CpuError::Read { .. })));
    }

    #[test]
    fn a_threads_cpu_is_counted_under_its_name() {
        let busy = std::thread::Builder::new()
            .name("cpu-test-spin".into())
            .spawn(|| {
                let started = cpu_time::ThreadTime::now();
                while started.elapsed() < Duration::from_millis(100) {
                    std::hint::black_box(0u64);
                }
                threads_cpu("cpu-test-spin").unwrap()
            })
            .unwrap();
        assert!(busy.join().unwrap() > Duration::ZERO, "a spinning thread shows CPU under its name");
        assert_eq!(threads_cpu("no-such-thread-name").unwrap(), Duration::ZERO);
    }

    #[test]
    fn threads_are_grouped_by_name_without_their_number() {
        // Both threads stay alive, parked on the barrier, until they have been listed.
        let listed = std::sync::Arc::new(std::sync::Barrier::new(3));
        let spin = |name: &str| {
            let listed = std::sync::Arc::clone(&listed);
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    listed.wait();
                    listed.wait();
                })
                .unwrap()
        };
        let threads = [spin("grouped-0"), spin("grouped-1")];
        listed.wait();
        let groups = threads_by_name(std::process::id()).unwrap();
        listed.wait();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(groups.contains_key("grouped"), "{groups:?}");
        assert!(!groups.contains_key("grouped-0"), "{groups:?}");
    }

    #[test]
    fn the_crypto_core_is_timed_on_one_thread_and_on_several() {
        let population = crate::Population::new(7, 4);
        let keys: Vec<_> = (0..4).map(|i| population.keys(i).subscription_keys().clone()).collect();
        assert!(crypto_core_per_push(&keys, b"payload", 8) > Duration::ZERO);
        assert!(crypto_core_per_push_parallel(&keys, b"payload", 8, 2) > Duration::ZERO);
    }
}
