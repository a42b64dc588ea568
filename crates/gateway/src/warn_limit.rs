//! Rate-limited warnings: a push service that fails every request must not turn each failure
//! into a log line, yet the first failure of each kind has to be seen at the default level.

use std::time::Duration;

use tokio::time::Instant;

/// At most one line per class per window, counting the lines it held back so the next one can
/// say how many there were. Pure: the clock is an argument.
#[derive(Debug)]
pub(crate) struct WarnLimiter<const N: usize> {
    window: Duration,
    last: [Option<Instant>; N],
    suppressed: [u64; N],
}

impl<const N: usize> WarnLimiter<N> {
    pub(crate) fn new(window: Duration) -> Self {
        Self { window, last: [None; N], suppressed: [0; N] }
    }

    /// Whether a line of class `class` may be written at `now`: `Some` with how many were held
    /// back since the last one written, or `None` to stay quiet (and count it). A class out of
    /// range is never written.
    pub(crate) fn admit(&mut self, class: usize, now: Instant) -> Option<u64> {
        let (last, suppressed) = (self.last.get_mut(class)?, self.suppressed.get_mut(class)?);
        match *last {
            Some(at) if now.saturating_duration_since(at) < self.window => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_class_per_window_with_the_count_held_back() {
        let mut limiter = WarnLimiter::<2>::new(Duration::from_secs(10));
        assert_eq!(limiter.admit(0, Instant::now()), Some(0));
        for _ in 0..3 {
            assert_eq!(limiter.admit(0, Instant::now()), None);
        }
        // Another class has a window of its own.
        assert_eq!(limiter.admit(1, Instant::now()), Some(0));
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(limiter.admit(0, Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(limiter.admit(0, Instant::now()), Some(4), "four held back");
        assert_eq!(limiter.admit(0, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(limiter.admit(0, Instant::now()), Some(1));
        assert_eq!(limiter.admit(1, Instant::now()), Some(0));
        assert_eq!(limiter.admit(2, Instant::now()), None, "out of range");
    }
}
