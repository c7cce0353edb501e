//! Reconnection delays as LaunchDarkly's SDKs compute them: exponential from the initial delay up to the maximum,
//! minus up to half as jitter, and back to the initial delay once a connection has stayed up for a minute.

use std::time::Duration;

use tokio::time::Instant;

/// How long a connection must stay up before the next failure starts again from the initial delay.
pub(crate) const RESET_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    reset_interval: Duration,
    /// Failures in a row since the last reset.
    attempts: u32,
    /// When the current connection was established, if it was.
    good_since: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, reset_interval: RESET_INTERVAL, attempts: 0, good_since: None }
    }

    /// A connection was established at `now`.
    pub(crate) fn connected(&mut self, now: Instant) {
        self.good_since = Some(now);
    }

    /// The delay before the next attempt after a failure at `now`, with a random jitter.
    pub(crate) fn next_delay(&mut self, now: Instant) -> Duration {
        self.next_delay_with(now, rand::random::<f64>())
    }

    /// [`Backoff::next_delay`] with a given jitter fraction in `[0, 1)`: the delay loses up to half of itself.
    pub(crate) fn next_delay_with(&mut self, now: Instant, jitter: f64) -> Duration {
        if let Some(since) = self.good_since.take()
            && now.saturating_duration_since(since) >= self.reset_interval
        {
            self.attempts = 0;
        }
        // 2^attempts, capped well before it could overflow.
        let factor = 1u32 << self.attempts.min(20);
        let delay = self.initial.saturating_mul(factor).min(self.max);
        self.attempts = self.attempts.saturating_add(1);
        delay.saturating_sub(delay.mul_f64(jitter.clamp(0.0, 1.0) / 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_maximum() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        let now = Instant::now();
        let delays: Vec<_> = (0..7).map(|_| backoff.next_delay_with(now, 0.0)).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS, 1000 * MS]);
        for _ in 0..100 {
            assert_eq!(backoff.next_delay_with(now, 0.0), 1000 * MS, "no overflow after many failures");
        }
    }

    #[test]
    fn jitter_takes_up_to_half() {
        let now = Instant::now();
        assert_eq!(Backoff::new(100 * MS, 1000 * MS).next_delay_with(now, 0.5), 75 * MS);
        let most = Backoff::new(100 * MS, 1000 * MS).next_delay_with(now, 0.999_999);
        assert!((50 * MS..51 * MS).contains(&most), "{most:?}");
        for _ in 0..200 {
            let delay = Backoff::new(100 * MS, 1000 * MS).next_delay(now);
            assert!((50 * MS..=100 * MS).contains(&delay), "{delay:?}");
        }
    }

    #[test]
    fn a_connection_that_stayed_up_a_minute_resets_the_delay() {
        let mut backoff = Backoff::new(100 * MS, 10_000 * MS);
        let start = Instant::now();
        for _ in 0..4 {
            backoff.next_delay_with(start, 0.0);
        }
        // Up for less than a minute: the delay keeps growing.
        backoff.connected(start);
        assert_eq!(backoff.next_delay_with(start + Duration::from_secs(59), 0.0), 1600 * MS);
        // Up for a minute: back to the start.
        backoff.connected(start + Duration::from_secs(60));
        assert_eq!(backoff.next_delay_with(start + Duration::from_secs(120), 0.0), 100 * MS);
        assert_eq!(backoff.next_delay_with(start + Duration::from_secs(121), 0.0), 200 * MS, "growing again");
    }
}
