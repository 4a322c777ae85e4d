//! The metrics an A/B run compares: each one's name, unit, which way is better, and where it is
//! read in a round's `c2m bench` result. One table, so the JSON, the report and the tests agree.

use crate::schema::ab::Better;
use crate::schema::bench::BenchResult;
use crate::schema::load::LatencySummary;

/// One compared metric.
pub struct Metric {
    /// The key in the result JSON (`rounds[].metrics`, `metrics[].key`) and the chart's name.
    pub key: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub better: Better,
    /// Shown first; the "headline metrics".
    pub headline: bool,
    /// The value in one round, `None` when that round did not measure it.
    pub read: fn(&BenchResult) -> Option<f64>,
}

/// A latency percentile, only when the run recorded that distribution.
fn percentile(s: &LatencySummary, pick: fn(&LatencySummary) -> f64) -> Option<f64> {
    (s.count > 0).then(|| pick(s))
}

/// Memory per connection is only a figure when connections were held when it was taken.
fn per_connection(r: &BenchResult, pick: fn(&crate::schema::bench::PerConnection) -> f64) -> Option<f64> {
    (r.memory.connections > 0).then(|| pick(&r.memory.per_connection))
}

/// CPU seconds of a process over the run, per message answered, in microseconds.
fn cpu_per_message(r: &BenchResult, user: f64, system: f64) -> Option<f64> {
    let answered = r.load.messages.received;
    (answered > 0).then(|| (user + system) * 1e6 / answered as f64)
}

/// Every metric, headline ones first.
pub const METRICS: [Metric; 15] = [
    Metric {
        key: "connect_rate",
        title: "connect rate",
        unit: "connects/s",
        better: Better::Higher,
        headline: true,
        read: |r| (r.load.connections.established > 0).then_some(r.load.connections.connect_rate_achieved),
    },
    Metric {
        key: "login_p99_us",
        title: "login p99",
        unit: "us",
        better: Better::Lower,
        headline: true,
        read: |r| percentile(&r.load.latency.login, |s| s.p99),
    },
    Metric {
        key: "rtt_p99_us",
        title: "round trip p99 (corrected)",
        unit: "us",
        better: Better::Lower,
        headline: true,
        read: |r| percentile(&r.load.latency.rtt_corrected, |s| s.p99),
    },
    Metric {
        key: "memory_per_connection",
        title: "memory per connection (headline)",
        unit: "bytes",
        better: Better::Lower,
        headline: true,
        read: |r| per_connection(r, |p| p.headline()),
    },
    Metric {
        key: "server_cpu_per_message_us",
        title: "c2m serve CPU per message",
        unit: "us",
        better: Better::Lower,
        headline: true,
        read: |r| cpu_per_message(r, r.server.cpu_user_seconds, r.server.cpu_system_seconds),
    },
    Metric {
        key: "errors",
        title: "errors (all kinds)",
        unit: "count",
        better: Better::Lower,
        headline: true,
        read: |r| Some(r.load.errors.values().sum::<u64>() as f64),
    },
    Metric {
        key: "connect_p50_us",
        title: "connect p50",
        unit: "us",
        better: Better::Lower,
        headline: false,
        read: |r| percentile(&r.load.latency.connect, |s| s.p50),
    },
    Metric {
        key: "connect_p99_us",
        title: "connect p99",
        unit: "us",
        better: Better::Lower,
        headline: false,
        read: |r| percentile(&r.load.latency.connect, |s| s.p99),
    },
    Metric {
        key: "login_p50_us",
        title: "login p50",
        unit: "us",
        better: Better::Lower,
        headline: false,
        read: |r| percentile(&r.load.latency.login, |s| s.p50),
    },
    Metric {
        key: "rtt_p50_us",
        title: "round trip p50 (corrected)",
        unit: "us",
        better: Better::Lower,
        headline: false,
        read: |r| percentile(&r.load.latency.rtt_corrected, |s| s.p50),
    },
    Metric {
        key: "memory_kernel",
        title: "memory per connection: kernel",
        unit: "bytes",
        better: Better::Lower,
        headline: false,
        read: |r| per_connection(r, |p| p.kernel_total),
    },
    Metric {
        key: "memory_server",
        title: "memory per connection: c2m serve",
        unit: "bytes",
        better: Better::Lower,
        headline: false,
        read: |r| per_connection(r, |p| p.server_user),
    },
    Metric {
        key: "memory_load",
        title: "memory per connection: c2m load",
        unit: "bytes",
        better: Better::Lower,
        headline: false,
        read: |r| per_connection(r, |p| p.load_user),
    },
    Metric {
        // What tcp_rmem/tcp_wmem move: socket buffers holding data (sockstat's TCP mem), as
        // against the kernel total, where slab noise hides it.
        key: "memory_tcp_buffers",
        title: "memory per connection: socket buffers",
        unit: "bytes",
        better: Better::Lower,
        headline: false,
        read: |r| per_connection(r, |p| p.tcp_buffers),
    },
    Metric {
        key: "load_cpu_per_message_us",
        title: "c2m load CPU per message",
        unit: "us",
        better: Better::Lower,
        headline: false,
        read: |r| cpu_per_message(r, r.load_process.cpu_user_seconds, r.load_process.cpu_system_seconds),
    },
];

/// The metric with this key.
pub fn by_key(key: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.key == key)
}

/// Every metric one round measured, by key.
pub fn read_all(r: &BenchResult) -> std::collections::BTreeMap<String, f64> {
    METRICS.iter().filter_map(|m| Some((m.key.to_string(), (m.read)(r).filter(|v| v.is_finite())?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_headlines_come_first() {
        let mut keys: Vec<&str> = METRICS.iter().map(|m| m.key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), METRICS.len());
        let first_other = METRICS.iter().position(|m| !m.headline).unwrap();
        assert!(METRICS[first_other..].iter().all(|m| !m.headline));
        assert!(by_key("connect_rate").is_some_and(|m| m.better == Better::Higher));
    }
}
