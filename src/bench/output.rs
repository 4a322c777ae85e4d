//! Where a result goes, the load report it embeds (or stands in for), and the summary printed at
//! the end.

use std::path::{Path, PathBuf};

use super::follow::Followed;
use super::load::LoadPlan;
use crate::schema::bench::BenchResult;
use crate::schema::load::{ConnectionCounts, LoadParams, LoadReport, RunStatus};
use crate::units::{human_bytes, thousands};

/// `results/<scenario>/<stamp>-<host>` with no `.json` or `.hlog` there yet (`-2`, `-3`, ... if
/// two runs start in the same second).
pub fn result_base(dir: &Path, stamp: &str, host: &str) -> PathBuf {
    let host: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect();
    let taken = |base: &Path| with_ext(base, "json").exists() || with_ext(base, "hlog").exists();
    let mut base = dir.join(format!("{stamp}-{host}"));
    let mut i = 2;
    while taken(&base) {
        base = dir.join(format!("{stamp}-{host}-{i}"));
        i += 1;
    }
    base
}

/// `base` + `.ext` (not `with_extension`: a host name may hold dots).
pub fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

/// Reads the load's `--json` report.
pub fn read_load_report(path: &Path) -> Result<LoadReport, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A stand-in report when the load wrote none (it crashed or was killed): what was asked, and
/// what its events said.
pub fn stand_in_report(
    plan: &LoadPlan,
    followed: &Followed,
    started_unix_ms: u64,
    elapsed_seconds: f64,
    reason: &str,
) -> LoadReport {
    let established = followed.samples.last().map_or(0, |s| s.established);
    let peak = followed.samples.iter().map(|s| s.established).max().unwrap_or(0);
    LoadReport {
        params: LoadParams {
            target: plan.server.to_string(),
            connections: plan.connections,
            connect_rate: plan.connect_rate as f64,
            connect_concurrency: 0,
            connect_timeout_ms: 0,
            sources: Vec::new(),
            source_addresses: 0,
            source_ports: [0, 0],
            duration_ms: plan.duration.0.as_millis() as u64,
            ramp_ms: 0,
            warmup_ms: 0,
            hold_ms: plan.hold.0.as_millis() as u64,
            workload: plan.workload.name().into(),
            message_interval_ms: plan.ping_interval.0.as_secs_f64() * 1e3,
            message_rate: 0.0,
            in_flight: 0,
            recv: String::new(),
            size: plan.size.unwrap_or(0),
            workers: 0,
            rings_per_worker: 0,
            files_per_ring: 0,
            comeback: None,
        },
        status: RunStatus::Aborted,
        abort_reason: Some(reason.to_string()),
        started_unix_ms,
        elapsed_seconds,
        connections: ConnectionCounts {
            requested: plan.connections,
            established,
            established_peak: peak,
            ..Default::default()
        },
        errors: Default::default(),
        messages: Default::default(),
        latency: Default::default(),
        phases: followed.phases.clone(),
        timeline: followed.samples.clone(),
        chat: None,
        histograms: Default::default(),
        shard: None,
        merged: None,
    }
}

/// The lines printed when the run is over.
pub fn summary(r: &BenchResult, json: &Path, hlog: Option<&Path>, report: Option<&Path>) -> String {
    let c = &r.load.connections;
    let m = &r.load.messages;
    let rtt = &r.load.latency.rtt_corrected;
    let p = &r.memory.per_connection;
    let status = match r.status {
        RunStatus::Complete => "complete".to_string(),
        RunStatus::FellShort => format!("FELL SHORT: {}", r.shortfalls.join("; ")),
        RunStatus::Aborted => format!("ABORTED: {}", r.abort_reason.as_deref().unwrap_or("no reason given")),
    };
    let mut out = format!("c2m bench {}: {status} in {:.1} s\n", r.scenario.name, r.elapsed_seconds);
    out += &format!(
        "  connections  {} of {} established (peak {}), {}/s\n",
        thousands(c.established),
        thousands(c.requested),
        thousands(c.established_peak),
        thousands(c.connect_rate_achieved.round() as u64)
    );
    match &r.load.chat {
        Some(chat) => {
            let d = &r.load.latency.chat_deliver;
            out += &format!(
                "  chat         {} sent, {} delivered of {} expected, {} receipted, {} lost, {} duplicates; DELIVER p50 {:.0} us, p99 {:.0} us\n",
                thousands(chat.sent),
                thousands(chat.delivered),
                thousands(chat.expected),
                thousands(chat.receipted),
                thousands(chat.lost),
                thousands(chat.duplicates),
                d.p50,
                d.p99
            );
        }
        None => {
            out += &format!(
                "  messages     {} sent, {} answered, round trip p50 {:.0} us, p99 {:.0} us (corrected)\n",
                thousands(m.sent),
                thousands(m.received),
                rtt.p50,
                rtt.p99
            );
        }
    }
    if p.below_floor {
        out += &format!(
            "  memory       at least {} per connection at {} (MemFree fell by only {}, below its floor of Slab + both processes' memory: not a measurement)\n",
            human_bytes(p.total_floor),
            thousands(r.memory.connections),
            human_bytes(p.total)
        );
    } else {
        out += &format!(
            "  memory       {} per connection at {} (floor {}): kernel {}, server {}, load {}\n",
            human_bytes(p.total),
            thousands(r.memory.connections),
            human_bytes(p.total_floor),
            human_bytes(p.kernel_total),
            human_bytes(p.server_user),
            human_bytes(p.load_user)
        );
    }
    let failed = r.checks.iter().filter(|c| !c.passed).count();
    out += &format!("  checks       {} of {} cross-checks agree\n", r.checks.len() - failed, r.checks.len());
    out += &format!("  result       {}\n", json.display());
    if let Some(h) = hlog {
        out += &format!("  histograms   {}\n", h.display());
    }
    if let Some(rep) = report {
        out += &format!("  report       {}\n", rep.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names_do_not_clash() {
        let dir = tempfile::tempdir().unwrap();
        let first = result_base(dir.path(), "20261127T223000Z", "vm one");
        assert_eq!(first, dir.path().join("20261127T223000Z-vm-one"));
        std::fs::write(with_ext(&first, "hlog"), "").unwrap();
        assert_eq!(with_ext(&dir.path().join("t-vm.example.com"), "json"), dir.path().join("t-vm.example.com.json"));
        assert_eq!(result_base(dir.path(), "20261127T223000Z", "vm one"), dir.path().join("20261127T223000Z-vm-one-2"));
    }
}
