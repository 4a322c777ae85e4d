//! `c2m results soak DIR`: the verdict of a soak (`scripts/soak.sh`) from what it left in DIR:
//! `samples.csv` (every 10 s: the server's RSS, the kernel's Slab and MemFree, the server's
//! gauges), `load.json` (the load's report and chat ledger) and `server.metrics` (the server's
//! counters after the load closed). Each series' drift per hour is the least-squares slope over
//! the steady window: from three SEND intervals after every client first logged in to the last
//! sample with the clients up. Writes `summary.md`, `memory.svg`, `connections.svg` and
//! `store.svg` into DIR.

use std::fmt::Write as _;
use std::path::Path;

use super::chart::{TimeSeries, time_series_chart};
use crate::schema::load::LoadReport;
use crate::stats::line::least_squares;
use crate::units::{human_bytes, thousands};

/// Seconds after every client is first up before the steady window starts: three SEND
/// intervals (a minute each), so the store of the connect phase has drained.
const SETTLE_SECONDS: f64 = 180.0;
/// The steady window ends at the last sample with this share of the clients up.
const UP_SHARE: f64 = 0.95;

#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Bad(String),
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("drawing {0}: {1}")]
    Chart(&'static str, super::chart::ChartError),
}

/// The samples, one column per series.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    names: Vec<String>,
    rows: Vec<Vec<f64>>,
}

impl Samples {
    pub fn parse(text: &str) -> Result<Samples, SoakError> {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let header = lines.first().ok_or_else(|| SoakError::Bad("samples.csv is empty".into()))?;
        let names: Vec<String> = header.split(',').map(|s| s.trim().to_string()).collect();
        let mut rows = Vec::new();
        for (i, line) in lines.iter().enumerate().skip(1) {
            let row: Result<Vec<f64>, _> = line.split(',').map(|v| v.trim().parse::<f64>()).collect();
            match row {
                Ok(r) if r.len() == names.len() => rows.push(r),
                // The last line may be cut by the end of the run: leave it out.
                _ if i == lines.len() - 1 && i > 1 => {}
                _ => return Err(SoakError::Bad(format!("samples.csv line {}: {line:?}", i + 1))),
            }
        }
        Ok(Samples { names, rows })
    }

    fn column(&self, name: &str) -> Option<Vec<f64>> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(self.rows.iter().map(|r| r[i]).collect())
    }

    fn points(&self, name: &str) -> Vec<(f64, f64)> {
        let (t, v) = (self.column("t").unwrap_or_default(), self.column(name).unwrap_or_default());
        t.into_iter().zip(v).collect()
    }
}

/// How one series behaved over the steady window.
#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    pub name: &'static str,
    pub bytes: bool,
    pub mean: f64,
    pub first: f64,
    pub last: f64,
    pub per_hour: f64,
    /// What counts as flat for it, per hour.
    pub tolerance: f64,
}

impl Drift {
    pub fn flat(&self) -> bool {
        self.per_hour.abs() <= self.tolerance
    }
}

/// The series checked for drift: (column, name, in bytes, tolerance per hour as a share of its
/// mean, and as an absolute floor).
const CHECKED: [(&str, &str, bool, f64, f64); 9] = [
    ("server_rss", "server RSS", true, 0.02, 16.0 * 1048576.0),
    ("load_rss", "load RSS", true, 0.02, 16.0 * 1048576.0),
    ("slab", "kernel Slab", true, 0.02, 64.0 * 1048576.0),
    ("sunreclaim", "kernel SUnreclaim", true, 0.02, 64.0 * 1048576.0),
    ("sessions", "sessions", false, 0.01, 1000.0),
    ("fixed_files", "fixed files", false, 0.01, 1000.0),
    ("store_messages", "offline store, messages", false, 0.05, 1000.0),
    ("store_bytes", "offline store, bytes", true, 0.05, 1048576.0),
    ("pending", "unreceipted, held", false, 0.05, 1000.0),
];

/// The steady window [from, to] of the samples, in seconds.
fn steady_window(s: &Samples, clients: f64) -> Option<(f64, f64)> {
    let (t, up) = (s.column("t")?, s.column("sessions")?);
    let first_full = t.iter().zip(&up).find(|(_, u)| **u >= clients * 0.99).map(|(t, _)| *t)?;
    let last_up = t.iter().zip(&up).rev().find(|(_, u)| **u >= clients * UP_SHARE).map(|(t, _)| *t)?;
    let from = first_full + SETTLE_SECONDS;
    (last_up > from).then_some((from, last_up))
}

pub fn drifts(s: &Samples, window: (f64, f64)) -> Vec<Drift> {
    let t = s.column("t").unwrap_or_default();
    let inside: Vec<usize> = (0..t.len()).filter(|&i| t[i] >= window.0 && t[i] <= window.1).collect();
    let mut out = Vec::new();
    for (col, name, bytes, share, floor) in CHECKED {
        let Some(v) = s.column(col) else { continue };
        let (xs, ys): (Vec<f64>, Vec<f64>) = inside.iter().map(|&i| (t[i], v[i])).unzip();
        let Some(line) = least_squares(&xs, &ys) else { continue };
        let mean = ys.iter().sum::<f64>() / ys.len() as f64;
        out.push(Drift {
            name,
            bytes,
            mean,
            first: ys[0],
            last: ys[ys.len() - 1],
            per_hour: line.slope * 3600.0,
            tolerance: (mean * share).max(floor),
        });
    }
    out
}

/// Sums a family in a Prometheus text scrape.
fn family(metrics: &str, name: &str) -> f64 {
    crate::stats::sum_metric(metrics, name).unwrap_or(0.0)
}

/// Reads DIR, writes the summary and charts; `Ok(true)` when nothing drifted, nothing leaked and
/// the ledger is exact.
pub fn summarize(dir: &Path) -> Result<bool, SoakError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| SoakError::Read { path: path.display().to_string(), source })
    };
    let samples = Samples::parse(&read("samples.csv")?)?;
    let load: LoadReport = serde_json::from_str(&read("load.json")?)
        .map_err(|e| SoakError::Bad(format!("load.json is not a load report: {e}")))?;
    let after = read("server.metrics").unwrap_or_default();
    let clients = load.params.connections as f64;
    let window = steady_window(&samples, clients).ok_or_else(|| {
        SoakError::Bad(format!(
            "no steady window: the clients were never all up, or not for {SETTLE_SECONDS} s after (see samples.csv)"
        ))
    })?;
    let drifts = drifts(&samples, window);

    let mut md = String::new();
    let p = &load.params;
    let churn = p.comeback.as_ref().map_or(0.0, |b| b.churn_percent_per_minute);
    let _ = writeln!(
        md,
        "# Soak: {} chat clients for {:.0} s, churn {churn}% a minute\n",
        thousands(p.connections),
        p.duration_ms as f64 / 1e3
    );
    if let Ok(m) = crate::host::machine::read_machine() {
        let _ = writeln!(
            md,
            "Machine: {}. Command: `scripts/soak.sh` (one c2m serve, one c2m load, loopback, kernel TCP).\n",
            super::report::machine_line(&m)
        );
    }
    let _ = writeln!(
        md,
        "Each client sends a SEND every {:.0} s to a random peer; {churn}% of the logged-in clients say BYE each minute and come back about 10 s later. Drift is the least-squares slope over the steady window, {:.0} s to {:.0} s (shaded in the charts).\n",
        p.message_interval_ms / 1e3,
        window.0,
        window.1
    );
    md += "| series | mean | at the start | at the end | drift per hour | flat (within) |\n|---|---|---|---|---|---|\n";
    let show = |bytes: bool, v: f64| if bytes { human_bytes(v) } else { thousands(v.max(0.0).round() as u64) };
    let mut flat = true;
    for d in &drifts {
        flat &= d.flat();
        let signed =
            if d.per_hour < 0.0 { format!("-{}", show(d.bytes, -d.per_hour)) } else { show(d.bytes, d.per_hour) };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {signed} | {} ({}) |",
            d.name,
            show(d.bytes, d.mean),
            show(d.bytes, d.first),
            show(d.bytes, d.last),
            if d.flat() { "yes" } else { "**no**" },
            show(d.bytes, d.tolerance)
        );
    }

    // After the load closed: every per-connection gauge back to 0.
    let mut leaked = Vec::new();
    for g in [
        "c2m_sessions_active",
        "c2m_slab_slots_in_use",
        "c2m_fixed_files_in_use",
        "c2m_held_buffers",
        "c2m_chat_pending_messages",
    ] {
        let v = family(&after, g);
        if v != 0.0 || after.is_empty() {
            leaked.push(format!("{g} {v}"));
        }
    }
    let _ = writeln!(
        md,
        "\nAfter the load closed: {}.",
        if leaked.is_empty() {
            "sessions, slots, fixed files, held buffers and unreceipted lists all 0".to_string()
        } else {
            format!("left: {}", leaked.join(", "))
        }
    );

    let c = &load.connections;
    let _ = writeln!(
        md,
        "\nClients: {} logged in, {} churned (BYE) and {} logged in again; {} connections lost, {} failed; {} up at the end.",
        thousands(c.established),
        thousands(c.churned),
        thousands(c.relogins),
        thousands(c.lost),
        thousands(c.failed),
        thousands(c.established_at_end)
    );
    let mut exact = true;
    if let Some(ch) = &load.chat {
        let dropped = family(&after, "c2m_chat_notices_dropped_total");
        // RECEIPT notices are not part of the delivery guarantee: one for a sender who is away
        // is dropped by the server (counted), one that reaches a leaving sender after its BYE
        // is not read (at most its window of open messages, per leave).
        let notice_bound = dropped + (crate::load::chat::WINDOW * c.churned) as f64;
        exact = ch.lost == 0
            && ch.unknown == 0
            && ch.expected == ch.delivered + ch.lost
            && ch.unreceipted as f64 <= notice_bound;
        let _ = writeln!(
            md,
            "\nLedger: {} SENDs, {} ACKed, {} NACKed; {} deliveries expected, {} delivered, {} lost ({} after their ACK), {} duplicates (a DELIVER taken but not receipted before a BYE, delivered again), {} from outside the run. RECEIPT notices (best effort, not part of the guarantee): {} missing, of which the server dropped {} for senders who were away; the rest reached a sender after its BYE, which it no longer reads. {}",
            thousands(ch.sent),
            thousands(ch.acked),
            thousands(ch.nacked_unknown_recipient + ch.nacked_offline_full + ch.nacked_other),
            thousands(ch.expected),
            thousands(ch.delivered),
            thousands(ch.lost),
            thousands(ch.lost_after_ack),
            thousands(ch.duplicates),
            thousands(ch.unknown),
            thousands(ch.unreceipted),
            thousands(dropped as u64),
            if exact { "Exact." } else { "**Not exact.**" }
        );
    }
    let held = flat && leaked.is_empty() && exact;
    let _ = writeln!(
        md,
        "\nVerdict: {}.",
        if held { "held (flat, nothing leaked, ledger exact)" } else { "**did not hold**" }
    );
    md += "\n![memory](memory.svg)\n\n![connections](connections.svg)\n\n![store](store.svg)\n";

    let mut files = vec![("summary.md", md.clone())];
    for (file, title, unit, columns) in CHARTS {
        let points: Vec<Vec<(f64, f64)>> = columns
            .iter()
            .map(|&(_, column, unit)| samples.points(column).into_iter().map(|(t, v)| (t, v / unit)).collect())
            .collect();
        let series: Vec<TimeSeries> =
            columns.iter().zip(&points).map(|(&(name, _, _), points)| TimeSeries { name, points }).collect();
        let svg = time_series_chart(title, unit, &series, Some(window)).map_err(|e| SoakError::Chart(file, e))?;
        files.push((file, svg));
    }
    for (name, text) in &files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| SoakError::Write { path: path.display().to_string(), source })?;
    }
    print!("{md}");
    Ok(held)
}

const MIB: f64 = 1048576.0;

/// The soak's charts: file, title, unit, and each line as (label, samples.csv column, divisor).
/// Three, so that no series is a flat line at the bottom of a bigger one's axis.
type ChartSpec = (&'static str, &'static str, &'static str, &'static [(&'static str, &'static str, f64)]);
const CHARTS: [ChartSpec; 3] = [
    (
        "memory.svg",
        "Memory over the soak",
        "MiB",
        &[
            ("kernel Slab", "slab", MIB),
            ("kernel SUnreclaim", "sunreclaim", MIB),
            ("load RSS", "load_rss", MIB),
            ("server RSS", "server_rss", MIB),
        ],
    ),
    (
        "connections.svg",
        "Sessions and fixed files over the soak",
        "count",
        &[("sessions", "sessions", 1.0), ("fixed files", "fixed_files", 1.0)],
    ),
    (
        "store.svg",
        "Offline store and held messages over the soak",
        "count (bytes in KiB)",
        &[
            ("store, messages", "store_messages", 1.0),
            ("store, KiB", "store_bytes", 1024.0),
            ("unreceipted, held", "pending", 1.0),
            ("held receive buffers", "held_buffers", 1.0),
        ],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rows: impl Iterator<Item = (f64, f64, f64)>) -> Samples {
        let mut text = String::from("t,sessions,server_rss\n");
        for (t, s, r) in rows {
            text += &format!("{t},{s},{r}\n");
        }
        Samples::parse(&text).unwrap()
    }

    #[test]
    fn the_window_starts_after_the_settle_and_a_climb_is_not_flat() {
        // 1,000 clients up from t = 20; RSS flat at 100 MiB, then climbing 1 MiB a minute.
        let mib = 1048576.0;
        let flat = samples((0..400).map(|i| {
            let t = i as f64 * 10.0;
            (t, if t < 20.0 { 500.0 } else { 1000.0 }, 100.0 * mib)
        }));
        let w = steady_window(&flat, 1000.0).unwrap();
        assert_eq!(w, (200.0, 3990.0));
        let d = drifts(&flat, w);
        assert_eq!(d.len(), 2, "sessions and server RSS: {d:?}");
        assert!(d.iter().all(Drift::flat), "{d:?}");
        let climbing = samples((0..400).map(|i| {
            let t = i as f64 * 10.0;
            (t, 1000.0, 100.0 * mib + t / 60.0 * mib)
        }));
        let rss = drifts(&climbing, (200.0, 3990.0)).into_iter().find(|d| d.name == "server RSS").unwrap();
        assert!((rss.per_hour / mib - 60.0).abs() < 0.01 && !rss.flat(), "{rss:?}");
        assert_eq!(steady_window(&samples((0..10).map(|i| (i as f64, 10.0, 0.0))), 1000.0), None, "never all up");
    }

    #[test]
    fn a_bad_line_is_refused_with_its_number() {
        let err = Samples::parse("t,sessions\n0,1\n1,x\n2,2\n").unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert_eq!(Samples::parse("t,sessions\n0,1\n1,2\n2,").unwrap().rows.len(), 2, "a cut last line is left out");
    }
}
