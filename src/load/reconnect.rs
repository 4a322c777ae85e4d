//! Clients that come back: `--reconnect` (a lost connection, or one whose connect or login
//! failed, opens again after a backoff with jitter, paced) and `--churn` (a share of the
//! logged-in clients say BYE every minute and come back after a while). Pure policy, no I/O:
//! the delays, the pacing and the churn draw, unit-tested here; `conns::comeback` applies them.

use std::time::Duration;

use super::shard::mix64;

/// When and how fast clients come back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comeback {
    /// Reopen lost and failed connections until the run closes.
    pub reconnect: bool,
    /// The first retry waits about `backoff_min`, each next one twice as long, up to
    /// `backoff_max`; each delay is then jittered into [half, whole].
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Reconnects per second over all workers; 0: as fast as --connect-concurrency allows.
    pub rate: f64,
    /// Share of the logged-in connections that leave (BYE) and come back, per minute.
    pub churn: f64,
    /// How long a churned client stays away, on average (jittered into [half, one and a half]).
    pub churn_away: Duration,
}

impl Default for Comeback {
    fn default() -> Self {
        Comeback {
            reconnect: false,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            rate: 0.0,
            churn: 0.0,
            churn_away: Duration::from_secs(5),
        }
    }
}

impl Comeback {
    /// The wait before retry number `attempt` (1 for the first), jittered by `noise`:
    /// exponential, capped, then "equal jitter" (half fixed, half random) so that clients
    /// dropped together do not come back together, and none comes back at once.
    pub fn backoff(&self, attempt: u16, noise: u64) -> Duration {
        let doubled = self.backoff_min.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        jitter(doubled.min(self.backoff_max), 0.5, noise)
    }

    /// How long a churned client stays away.
    pub fn away(&self, noise: u64) -> Duration {
        jitter(self.churn_away, 1.0, noise).saturating_add(self.churn_away / 2)
    }

    /// Leaves per nanosecond for `logged_in` connections.
    pub fn churn_per_ns(&self, logged_in: u64) -> f64 {
        self.churn * logged_in as f64 / 60e9
    }
}

/// `d` less a random share (up to `spread` of it) drawn from `noise`.
fn jitter(d: Duration, spread: f64, noise: u64) -> Duration {
    let unit = (mix64(noise) >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(1.0 - spread * unit)
}

/// A token bucket: at most `per_second` events, with a burst of `burst`; 0 per second means
/// no pacing.
#[derive(Clone, Debug)]
pub struct Pacer {
    per_ns: f64,
    burst: f64,
    tokens: f64,
    last_ns: u64,
}

impl Pacer {
    pub fn new(per_second: f64, burst: f64) -> Pacer {
        Pacer { per_ns: per_second / 1e9, burst: burst.max(1.0), tokens: burst.max(1.0), last_ns: 0 }
    }

    /// Takes a token at `now_ns` if there is one.
    pub fn take(&mut self, now_ns: u64) -> bool {
        if self.per_ns <= 0.0 {
            return true;
        }
        let dt = now_ns.saturating_sub(self.last_ns) as f64;
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + dt * self.per_ns).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

/// Fractional events accumulated over time (the churn's leaves per tick).
#[derive(Clone, Debug, Default)]
pub struct Credit {
    owed: f64,
    last_ns: u64,
}

impl Credit {
    /// Whole events due at `now_ns` at `per_ns`; the fraction carries over.
    pub fn due(&mut self, now_ns: u64, per_ns: f64) -> u64 {
        let dt = now_ns.saturating_sub(self.last_ns) as f64;
        self.last_ns = self.last_ns.max(now_ns);
        self.owed += dt * per_ns;
        let whole = self.owed.floor();
        self.owed -= whole;
        whole as u64
    }

    /// Starts counting from `now_ns` (nothing is owed for the time before).
    pub fn restart(&mut self, now_ns: u64) {
        self.last_ns = now_ns;
        self.owed = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitters_within_half() {
        let p = Comeback {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..Default::default()
        };
        for attempt in 1..40u16 {
            let whole =
                Duration::from_millis(100).saturating_mul(1 << (attempt - 1).min(20)).min(Duration::from_secs(2));
            for noise in 0..200 {
                let d = p.backoff(attempt, noise);
                assert!(d <= whole && d >= whole / 2, "attempt {attempt}: {d:?} outside [{:?}, {whole:?}]", whole / 2);
            }
        }
        // Clients dropped together spread out: 1,000 draws of one attempt are not one value.
        let mut seen: Vec<_> = (0..1000).map(|n| p.backoff(3, n)).collect();
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 900, "{} distinct delays of 1000", seen.len());
        assert_eq!(p.backoff(0, 7), p.backoff(1, 7), "attempt 0 is treated as the first");
    }

    #[test]
    fn churned_clients_stay_away_half_to_one_and_a_half_times_the_mean() {
        let p = Comeback { churn_away: Duration::from_secs(4), ..Default::default() };
        let all: Vec<Duration> = (0..2000).map(|n| p.away(n)).collect();
        assert!(all.iter().all(|d| *d >= Duration::from_secs(2) && *d <= Duration::from_secs(6)));
        let mean = all.iter().sum::<Duration>() / all.len() as u32;
        assert!(mean > Duration::from_millis(3800) && mean < Duration::from_millis(4200), "mean {mean:?}");
    }

    #[test]
    fn the_pacer_lets_through_its_rate_after_the_burst() {
        let mut p = Pacer::new(1000.0, 10.0);
        let burst = (0..100).filter(|_| p.take(0)).count();
        assert_eq!(burst, 10);
        // One second later: 1,000 more (the bucket holds 10, so take them as they come).
        let mut taken = 0;
        for ms in 1..=1000u64 {
            while p.take(ms * 1_000_000) {
                taken += 1;
            }
        }
        assert!((999..=1001).contains(&taken), "{taken}");
        assert!(Pacer::new(0.0, 1.0).take(0), "rate 0 is unpaced");
    }

    #[test]
    fn churn_credit_carries_fractions_over() {
        let p = Comeback { churn: 0.01, ..Default::default() };
        // 1% of 6,000 a minute is 1 a second: 60 over a minute of 1 ms ticks.
        let per_ns = p.churn_per_ns(6000);
        let mut c = Credit::default();
        c.restart(0);
        let total: u64 = (1..=60_000u64).map(|ms| c.due(ms * 1_000_000, per_ns)).sum();
        assert!((59..=60).contains(&total), "{total}");
    }
}
