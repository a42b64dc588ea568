//! CPU accounting for the demo: pushfan's own CPU per push, set against the crypto core's cost
//! measured in the same run.
//!
//! The demo hosts the simulated push service in the same process, on threads of its own whose
//! names start with [`SIM_THREAD_NAME`]; pushfan's share is the process's CPU minus theirs.

use std::time::Duration;

use anyhow::Context;
use pushfan_webpush::{encrypt, Backend, ContentEncoding, Padding, SubscriptionKeys};

/// Thread name of the simulated push service's runtime.
pub(crate) const SIM_THREAD_NAME: &str = "pushsim";

/// CPU used so far by this process's live threads whose name starts with `prefix`.
pub(crate) fn threads_cpu(prefix: &str) -> anyhow::Result<Duration> {
    let ticks_per_second = rustix::param::clock_ticks_per_second();
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        let path = task?.path().join("stat");
        // A thread that ended since the listing has no stat any more, and no CPU to count.
        let Ok(stat) = std::fs::read_to_string(&path) else { continue };
        let (name, fields) = parse_stat(&stat).with_context(|| format!("parsing {}", path.display()))?;
        if name.starts_with(prefix) {
            ticks += fields.0 + fields.1;
        }
    }
    Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_second as f64))
}

/// The name and (utime, stime) in clock ticks from a `/proc/…/stat` line, per proc(5). The
/// name is parenthesised and may itself hold spaces and parentheses, hence the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, (u64, u64))> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    // After the name: state (field 3) … utime (14) and stime (15).
    let mut rest = stat.get(close + 1..)?.split_ascii_whitespace().skip(11);
    let utime = rest.next()?.parse().ok()?;
    let stime = rest.next()?.parse().ok()?;
    Some((name, (utime, stime)))
}

/// CPU per message of the crypto core alone: one thread encrypting `plaintext` for each of
/// `keys` in turn, the way criterion's `full_encrypt` bench does.
pub(crate) fn crypto_core_per_push(keys: &[SubscriptionKeys], plaintext: &[u8]) -> anyhow::Result<Duration> {
    anyhow::ensure!(!keys.is_empty(), "no keys to encrypt for");
    let keys = keys.to_vec();
    let plaintext = plaintext.to_vec();
    std::thread::spawn(move || -> anyhow::Result<Duration> {
        let started = cpu_time::ThreadTime::now();
        for key in &keys {
            encrypt(Backend::AwsLc, key, ContentEncoding::Aes128gcm, &plaintext, &Padding::None)?;
        }
        Ok(started.elapsed() / keys.len() as u32)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the crypto measurement panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_awkward_names_parse() {
        let line = "4242 (tokio (rt) 1) S 1 2 3 4 5 6 7 8 9 10 1234 56 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("tokio (rt) 1", (1234, 56))));
        assert_eq!(parse_stat("4242 (short) S 1"), None);
    }

    #[test]
    fn this_threads_cpu_is_counted_under_its_name() {
        let busy = std::thread::Builder::new()
            .name("cpu-test-spin".into())
            .spawn(|| {
                let started = cpu_time::ThreadTime::now();
                let mut x = 0u64;
                while started.elapsed() < Duration::from_millis(100) {
                    x = x.wrapping_mul(31).wrapping_add(7);
                }
                let counted = threads_cpu("cpu-test-spin").unwrap();
                (x, counted)
            })
            .unwrap();
        let (_, counted) = busy.join().unwrap();
        assert!(counted > Duration::ZERO, "a spinning thread shows CPU under its name");
        assert_eq!(threads_cpu("no-such-thread-name").unwrap(), Duration::ZERO);
    }
}
