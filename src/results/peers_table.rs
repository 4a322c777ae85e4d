//! The comparison table: for each measure, c2m / peer per round (the two ran in the same
//! round, minutes apart), then the median, least and greatest of those ratios over the rounds;
//! and each server's median value. Written into results/REPORT.md and printed after a run.

use crate::schema::peers::{PeersResult, Turn};
use crate::units::{human_bytes, thousands};

/// One compared figure.
pub struct Measure {
    pub title: &'static str,
    pub higher_is_better: bool,
    pub value: fn(&Turn) -> Option<f64>,
    pub format: fn(f64) -> String,
}

fn complete<T>(m: &Option<T>, status: impl Fn(&T) -> &str) -> Option<&T> {
    m.as_ref().filter(|m| status(m) == "complete")
}

fn echo(t: &Turn) -> Option<&crate::schema::peers::EchoMeasurement> {
    complete(&t.echo, |m| &m.load.status)
}

fn latency(t: &Turn) -> Option<&crate::schema::peers::LatencyMeasurement> {
    complete(&t.latency, |m| &m.load.status)
}

fn capacity(t: &Turn) -> Option<&crate::schema::peers::CapacityMeasurement> {
    t.capacity.as_ref().filter(|m| m.measured_connections > 0)
}

fn rate(v: f64) -> String {
    format!("{}/s", thousands(v.round() as u64))
}

fn micros(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0} µs") } else { format!("{v:.2} µs") }
}

fn millis(v: f64) -> String {
    format!("{:.1} ms", v * 1e3)
}

fn count(v: f64) -> String {
    thousands(v.round() as u64)
}

fn bytes(v: f64) -> String {
    human_bytes(v)
}

/// The measures, in table order.
pub fn measures() -> Vec<Measure> {
    vec![
        Measure {
            title: "echo throughput (64 B, closed loop)",
            higher_is_better: true,
            value: |t| echo(t).map(|m| m.messages_per_second),
            format: rate,
        },
        Measure {
            title: "server CPU per echo",
            higher_is_better: false,
            value: |t| echo(t).map(|m| m.server_cpu_us_per_message),
            format: micros,
        },
        Measure {
            title: "ping RTT p50 (corrected)",
            higher_is_better: false,
            value: |t| latency(t).map(|m| m.p50_us),
            format: micros,
        },
        Measure {
            title: "ping RTT p99",
            higher_is_better: false,
            value: |t| latency(t).map(|m| m.p99_us),
            format: micros,
        },
        Measure {
            title: "ping RTT p99.9",
            higher_is_better: false,
            value: |t| latency(t).map(|m| m.p999_us),
            format: micros,
        },
        Measure {
            title: "connections in the memory budget",
            higher_is_better: true,
            value: |t| capacity(t).map(|m| m.connections_in_budget),
            format: count,
        },
        Measure {
            title: "memory per connection, steady slope (MemFree)",
            higher_is_better: false,
            value: |t| capacity(t).and_then(|m| m.slope.as_ref()).map(|s| s.total),
            format: bytes,
        },
        Measure {
            title: "memory per connection, average (MemFree drop / connections)",
            higher_is_better: false,
            value: |t| capacity(t).map(|m| m.per_connection.total),
            format: bytes,
        },
        Measure {
            title: "kernel memory per connection (MemFree less RSS)",
            higher_is_better: false,
            value: |t| capacity(t).map(|m| m.per_connection.kernel_total),
            format: bytes,
        },
        Measure {
            title: "kernel slab per connection",
            higher_is_better: false,
            value: |t| capacity(t).map(|m| m.per_connection.kernel_slab),
            format: bytes,
        },
        Measure {
            title: "server user memory per connection",
            higher_is_better: false,
            value: |t| capacity(t).map(|m| m.per_connection.server_user),
            format: bytes,
        },
        Measure {
            title: "connect rate",
            higher_is_better: true,
            value: |t| capacity(t).map(|m| m.connect_rate),
            format: rate,
        },
        Measure {
            title: "start-up (spawn to ready)",
            higher_is_better: false,
            value: |t| latency(t).map(|m| m.server.startup_seconds),
            format: millis,
        },
        Measure {
            title: "shutdown (SIGTERM to exit, connections held)",
            higher_is_better: false,
            value: |t| latency(t).map(|m| m.server.shutdown_seconds),
            format: millis,
        },
    ]
}

/// Median, least and greatest of some values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// The spread of the finite values; `None` when there are none.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some(Spread { median, min: v[0], max: v[n - 1], n })
}

/// A server's values of a measure, one per round it has one.
pub fn values(result: &PeersResult, server: &str, measure: &Measure) -> Vec<f64> {
    result
        .rounds
        .iter()
        .flat_map(|r| r.turns.iter().filter(|t| t.server == server))
        .filter_map(|t| (measure.value)(t))
        .collect()
}

/// c2m / peer in each round where both have the measure (and the peer's is not zero).
pub fn ratios(result: &PeersResult, peer: &str, measure: &Measure) -> Vec<f64> {
    result
        .rounds
        .iter()
        .filter_map(|r| {
            let of = |name: &str| r.turns.iter().find(|t| t.server == name).and_then(|t| (measure.value)(t));
            match (of("c2m"), of(peer)) {
                (Some(c), Some(p)) if p != 0.0 => Some(c / p),
                _ => None,
            }
        })
        .collect()
}

fn ratio_cell(s: Option<Spread>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.2}× ({:.2}–{:.2})", s.median, s.min, s.max),
        Some(s) => format!("{:.2}× (1 round)", s.median),
        None => "–".into(),
    }
}

fn value_cell(s: Option<Spread>, format: fn(f64) -> String) -> String {
    s.map_or_else(|| "–".into(), |s| format(s.median))
}

/// The servers that ran, in the first round's order.
fn ran(result: &PeersResult) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for t in result.rounds.iter().flat_map(|r| &r.turns) {
        if !names.contains(&t.server) {
            names.push(t.server.clone());
        }
    }
    names
}

fn row(md: &mut String, cells: &[String]) {
    md.push_str("| ");
    md.push_str(&cells.join(" | "));
    md.push_str(" |\n");
}

/// The tables as Markdown (no heading).
pub fn markdown(result: &PeersResult) -> String {
    let mut md = String::new();
    let servers = ran(result);
    let peers: Vec<&String> = servers.iter().filter(|s| *s != "c2m").collect();
    let measures = measures();
    if servers.iter().any(|s| s == "c2m") && !peers.is_empty() {
        md.push_str(
            "c2m / peer: the ratio in each round (both ran in it), median (least–greatest) over the \
             rounds: the one convention for ratios here and in README.md (the median of the per-round \
             ratios, not the ratio of the medians). Above 1 is better for c2m where higher is better, \
             below 1 where lower is better. Connections in the budget: the budget over the steady \
             slope's cost of one more connection.\n\n",
        );
        let mut header = vec!["measure".to_string(), "better".into(), "c2m (median)".into()];
        header.extend(peers.iter().map(|p| format!("c2m / {p}")));
        row(&mut md, &header);
        row(&mut md, &vec!["---".to_string(); header.len()]);
        for m in &measures {
            let mut cells = vec![
                m.title.to_string(),
                if m.higher_is_better { "higher" } else { "lower" }.to_string(),
                value_cell(spread(&values(result, "c2m", m)), m.format),
            ];
            cells.extend(peers.iter().map(|p| ratio_cell(spread(&ratios(result, p, m)))));
            row(&mut md, &cells);
        }
        md.push('\n');
    }
    md.push_str("Each server's median over the rounds:\n\n");
    let mut header = vec!["measure".to_string()];
    header.extend(servers.iter().cloned());
    row(&mut md, &header);
    row(&mut md, &vec!["---".to_string(); header.len()]);
    for m in &measures {
        let mut cells = vec![m.title.to_string()];
        cells.extend(servers.iter().map(|s| value_cell(spread(&values(result, s, m)), m.format)));
        row(&mut md, &cells);
    }
    let built: Vec<_> = result.servers.iter().filter(|s| s.available && !s.build.is_empty()).collect();
    if !built.is_empty() {
        md.push_str("\nHow each was built:\n\n");
        for s in built {
            md.push_str(&format!("- {}: {}; {}\n", s.name, s.version, s.build));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::peers::{EchoMeasurement, LoadOutcome, Round};

    fn turn(server: &str, rate: f64, status: &str) -> Turn {
        Turn {
            server: server.into(),
            echo: Some(EchoMeasurement {
                messages_per_second: rate,
                load: LoadOutcome { status: status.into(), ..Default::default() },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn result(rounds: Vec<Vec<Turn>>) -> PeersResult {
        let machine = crate::schema::bench::Machine {
            host: "h".into(),
            kernel: "k".into(),
            cpu_model: "c".into(),
            cores: 2,
            memory_bytes: 1,
            mem_free_bytes: 1,
            rlimit_nofile: [1, 1],
            sysctls: Default::default(),
            virtualization: String::new(),
        };
        let settings = crate::schema::peers::PeersSettings {
            rounds: 1,
            order: "rotated".into(),
            connections: 1,
            window_seconds: 1.0,
            echo_size: 64,
            echo_in_flight: 1,
            latency_rate: 1,
            budget_bytes: 1,
            keep_free_floor_bytes: 1,
            connections_per_shard: 1,
            warmup_seconds: 0.0,
            cpu_placement: String::new(),
        };
        let rounds = rounds
            .into_iter()
            .enumerate()
            .map(|(i, turns)| Round {
                round: i as u32 + 1,
                order: turns.iter().map(|t| t.server.clone()).collect(),
                turns,
            })
            .collect();
        PeersResult {
            schema: "c2m-peers-result".into(),
            schema_version: 1,
            c2m: crate::schema::bench::Build { version: "0".into(), git_commit: "x".into(), git_dirty: None },
            machine,
            started_utc: String::new(),
            elapsed_seconds: 0.0,
            status: crate::schema::load::RunStatus::Complete,
            abort_reason: None,
            settings,
            servers: Vec::new(),
            rounds,
        }
    }

    #[test]
    fn spread_of_odd_even_and_none() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0, n: 3 }));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(spread(&[f64::NAN]), None);
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn ratios_pair_rounds_and_skip_incomplete_ones() {
        let r = result(vec![
            vec![turn("c2m", 200.0, "complete"), turn("tokio", 100.0, "complete")],
            vec![turn("tokio", 100.0, "complete"), turn("c2m", 150.0, "complete")],
            // The peer's load aborted: no ratio this round.
            vec![turn("c2m", 900.0, "complete"), turn("tokio", 1.0, "aborted")],
            vec![turn("c2m", 300.0, "complete"), turn("tokio", 100.0, "complete")],
        ]);
        let echo = &measures()[0];
        assert_eq!(ratios(&r, "tokio", echo), [2.0, 1.5, 3.0]);
        assert_eq!(spread(&ratios(&r, "tokio", echo)), Some(Spread { median: 2.0, min: 1.5, max: 3.0, n: 3 }));
        assert_eq!(values(&r, "c2m", echo), [200.0, 150.0, 900.0, 300.0]);
        let md = markdown(&r);
        assert!(md.contains("| echo throughput (64 B, closed loop) | higher | 250/s | 2.00× (1.50–3.00) |"), "{md}");
        assert!(md.contains("| ping RTT p99 | lower | – | – |"), "{md}");
        assert!(md.contains("| echo throughput (64 B, closed loop) | 250/s | 100/s |"), "{md}");
    }

    #[test]
    fn c2m_alone_gets_values_only() {
        let r = result(vec![vec![turn("c2m", 10.0, "complete")]]);
        let md = markdown(&r);
        assert!(!md.contains("c2m / "), "{md}");
        assert!(md.contains("| echo throughput (64 B, closed loop) | 10/s |"), "{md}");
    }
}
