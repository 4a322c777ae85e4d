//! What a bench result says about itself: the load's counts against the server's and the
//! kernel's (cross-checks), memory against its floor, and every reason the run is not complete.
//! The bench runs these when it writes a result; the report runs them again on older results,
//! which did not carry them.

use std::collections::BTreeMap;

use crate::schema::bench::{BenchResult, CrossCheck, MemoryMeasurement, PerConnection};
use crate::schema::load::{LoadReport, RunStatus};
use crate::units::thousands;

/// The server's metrics the checks read (sums over workers and kinds).
pub const ACCEPTED: &str = "c2m_sessions_accepted_total";
pub const REJECTED: &str = "c2m_sessions_rejected_total";
pub const FRAMES_IN: &str = "c2m_frames_in_total";
pub const FRAMES_OUT: &str = "c2m_frames_out_total";
pub const BYTES_IN: &str = "c2m_received_bytes_total";
pub const BYTES_OUT: &str = "c2m_sent_bytes_total";
/// What results written before the Prometheus names were fixed call them.
const LEGACY_BYTES_IN: &str = "c2m_bytes_in_total";
const LEGACY_BYTES_OUT: &str = "c2m_bytes_out_total";

/// What the checks compare.
pub struct Sources<'a> {
    pub load: &'a LoadReport,
    /// The server's metrics after the load ended (empty if the scrape failed).
    pub server_metrics: &'a BTreeMap<String, f64>,
    pub memory: &'a MemoryMeasurement,
    /// The server's open sessions at the `loaded` measurement: `None` in older results (no
    /// check), `Some(None)` when its /metrics did not answer then (the check fails: nothing
    /// stands in for it).
    pub server_sessions_held: Option<Option<u64>>,
    /// The kernel's established sockets on the server's port at the `loaded` measurement
    /// (older results: none; sockstat stands in).
    pub kernel_sockets_held: Option<u64>,
    /// The xdp data plane: the server's TCP connections at the `loaded` measurement (c2m's TCP
    /// holds them; the kernel holds no socket to count). `None` on the kernel data plane.
    pub xdp_connections_held: Option<u64>,
    /// sockstat `TCP: inuse` with the server up and no load yet; older results took the
    /// baseline then, so it is the baseline's.
    pub tcp_inuse_before_load: u64,
}

fn exact(name: &str, expected: f64, expected_from: &str, observed: f64, observed_from: &str) -> CrossCheck {
    CrossCheck {
        name: name.into(),
        expected,
        expected_from: expected_from.into(),
        observed,
        observed_from: observed_from.into(),
        difference: observed - expected,
        passed: observed == expected,
        note: String::new(),
    }
}

/// The cross-checks of one run. Each must agree exactly, save the kernel's socket count (see
/// its note). Chat frames are not counted by kind here (SEND, DELIVER, RECEIPT each way), so a
/// chat run checks bytes, not frames.
pub fn cross_checks(s: &Sources<'_>) -> Vec<CrossCheck> {
    let (c, m) = (&s.load.connections, &s.load.messages);
    let mut out = Vec::new();
    if s.server_metrics.is_empty() {
        out.push(CrossCheck {
            name: "server metrics".into(),
            expected_from: "c2m serve's /metrics after the run".into(),
            observed_from: "nothing: the scrape failed".into(),
            note: "no server counter could be checked".into(),
            ..Default::default()
        });
    } else {
        let metric = |name: &str| {
            let legacy = match name {
                BYTES_IN => LEGACY_BYTES_IN,
                BYTES_OUT => LEGACY_BYTES_OUT,
                other => other,
            };
            s.server_metrics.get(name).or_else(|| s.server_metrics.get(legacy)).copied().unwrap_or(0.0)
        };
        out.push(exact(
            "accepted: c2m serve vs c2m load",
            c.connected as f64,
            "c2m load: connects completed",
            metric(ACCEPTED) + metric(REJECTED),
            "c2m serve: sessions accepted + rejected (server full)",
        ));
        if s.load.chat.is_none() {
            out.push(exact(
                "frames in: c2m serve vs c2m load",
                (c.established + m.sent) as f64,
                "c2m load: HELLOs answered + messages sent",
                metric(FRAMES_IN),
                "c2m serve: frames received",
            ));
            // An ERROR frame the load read is counted as an error, not a reply.
            let errors: u64 =
                s.load.errors.iter().filter(|(kind, _)| kind.starts_with("server ERROR")).map(|(_, n)| n).sum();
            out.push(exact(
                "frames out: c2m serve vs c2m load",
                (c.established + m.received + errors) as f64,
                "c2m load: WELCOMEs + replies + ERRORs received",
                metric(FRAMES_OUT),
                "c2m serve: frames sent",
            ));
        }
        out.push(exact(
            "bytes in: c2m serve vs c2m load",
            m.bytes_sent as f64,
            "c2m load: bytes sent",
            metric(BYTES_IN),
            "c2m serve: bytes received",
        ));
        out.push(exact(
            "bytes out: c2m serve vs c2m load",
            m.bytes_received as f64,
            "c2m load: bytes received",
            metric(BYTES_OUT),
            "c2m serve: bytes sent",
        ));
    }
    let held = s.memory.connections;
    match s.server_sessions_held {
        Some(Some(sessions)) => out.push(exact(
            "sessions at the hold: c2m serve vs c2m load",
            held as f64,
            "c2m load: logged in at the measurement",
            sessions as f64,
            "c2m serve: sessions open then",
        )),
        Some(None) => out.push(CrossCheck {
            name: "sessions at the hold: c2m serve vs c2m load".into(),
            expected: held as f64,
            expected_from: "c2m load: logged in at the measurement".into(),
            observed_from: "nothing: c2m serve's /metrics did not answer then".into(),
            difference: -(held as f64),
            note: "not checked".into(),
            ..Default::default()
        }),
        None => {}
    }
    if let Some(conns) = s.xdp_connections_held {
        out.push(exact(
            "connections at the hold: c2m's TCP vs c2m load",
            held as f64,
            "c2m load: logged in at the measurement",
            conns as f64,
            "c2m serve: connections of its TCP then (xdp data plane)",
        ));
    } else if let Some(sockets) = s.kernel_sockets_held {
        out.push(exact(
            "sockets at the hold: kernel vs c2m load",
            2.0 * held as f64,
            "2 x logged in (both ends on this box)",
            sockets as f64,
            "kernel: established sockets on the server's port (inet_diag)",
        ));
    } else if held > 0 {
        // An older result: only sockstat, which counts the whole box. More sockets than the
        // run's may be someone else's; fewer means the load counted connections the kernel did
        // not hold (or someone else's closed meanwhile).
        let observed = s.memory.loaded.tcp_inuse as f64 - s.tcp_inuse_before_load as f64;
        let mut check = exact(
            "sockets at the hold: kernel vs c2m load",
            2.0 * held as f64,
            "2 x logged in (both ends on this box)",
            observed,
            "/proc/net/sockstat TCP inuse, less its count before the load",
        );
        if observed > check.expected {
            check.passed = true;
            check.note = format!(
                "{} sockets beyond the run's: sockstat counts the whole box, so only fewer than expected fails",
                thousands((observed - check.expected) as u64)
            );
        }
        out.push(check);
    }
    out
}

/// Why a run that reached its end is not complete: connections or answers missing, a
/// cross-check that failed. Empty when it did all it was asked.
pub fn shortfalls(load: &LoadReport, checks: &[CrossCheck]) -> Vec<String> {
    let mut out = Vec::new();
    let c = &load.connections;
    if c.established < c.requested {
        out.push(format!(
            "{} of {} connections logged in ({} short)",
            thousands(c.established),
            thousands(c.requested),
            thousands(c.requested - c.established)
        ));
    }
    if let Some(short) = load.shortfall() {
        out.push(short);
    }
    for check in checks.iter().filter(|c| !c.passed) {
        out.push(format!(
            "{}: {} {} vs {} {} (off by {})",
            check.name,
            check.expected_from,
            thousands(check.expected.max(0.0) as u64),
            check.observed_from,
            thousands(check.observed.max(0.0) as u64),
            signed(check.difference)
        ));
    }
    out
}

fn signed(x: f64) -> String {
    let n = thousands(x.abs() as u64);
    if x < 0.0 { format!("-{n}") } else { format!("+{n}") }
}

/// The checks a result carries, or for an older result without them, the ones its stored
/// figures allow (no sessions-at-the-hold check; its baseline was taken with the server up).
pub fn checks_of(r: &BenchResult) -> Vec<CrossCheck> {
    if !r.checks.is_empty() {
        return r.checks.clone();
    }
    cross_checks(&Sources {
        load: &r.load,
        server_metrics: &r.server_metrics,
        memory: &r.memory,
        server_sessions_held: None,
        kernel_sockets_held: None,
        xdp_connections_held: None,
        tcp_inuse_before_load: r.memory.server_up.as_ref().unwrap_or(&r.memory.baseline).tcp_inuse,
    })
}

/// The run's status under today's checks: a result written before them may have said
/// `complete` while it fell short.
pub fn assessed_status(r: &BenchResult) -> (RunStatus, Vec<String>) {
    if r.status == RunStatus::Aborted {
        let reasons =
            if r.shortfalls.is_empty() { r.abort_reason.iter().cloned().collect() } else { r.shortfalls.clone() };
        return (RunStatus::Aborted, reasons);
    }
    let reasons = shortfalls(&r.load, &checks_of(r));
    if reasons.is_empty() { (RunStatus::Complete, reasons) } else { (RunStatus::FellShort, reasons) }
}

/// Memory per connection with its floor: a result before schema 2 has none, so it is worked
/// out from its stored figures (Slab growth plus both processes' RSS growth from just before
/// their first connection: a lower bound, start-up memory left out).
pub fn per_connection_with_floor(r: &BenchResult) -> PerConnection {
    let mut p = r.memory.per_connection.clone();
    if p.total_floor == 0.0 && r.memory.connections > 0 {
        p.total_floor = p.kernel_slab + p.server_user.max(0.0) + p.load_user.max(0.0);
        p.below_floor = p.total < p.total_floor;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::bench::SystemMemory;
    use crate::schema::load::{ConnectionCounts, MessageCounts};

    fn load(requested: u64, established: u64, sent: u64) -> LoadReport {
        let params = serde_json::from_value(serde_json::json!({
            "target": "127.0.0.1:1", "connections": requested, "connect_rate": 0.0, "connect_concurrency": 1,
            "connect_timeout_ms": 1, "sources": [], "source_addresses": 1, "source_ports": [1, 2], "duration_ms": 1,
            "ramp_ms": 0, "hold_ms": 0, "workload": "ping", "message_interval_ms": 1.0, "message_rate": 1.0,
            "size": 20, "workers": 1, "rings_per_worker": 1, "files_per_ring": 1
        }))
        .unwrap();
        let mut r = LoadReport {
            params,
            status: RunStatus::Complete,
            abort_reason: None,
            started_unix_ms: 0,
            elapsed_seconds: 1.0,
            connections: Default::default(),
            errors: Default::default(),
            messages: Default::default(),
            latency: Default::default(),
            phases: Vec::new(),
            timeline: Vec::new(),
            chat: None,
            histograms: Default::default(),
            shard: None,
            merged: None,
        };
        r.connections = ConnectionCounts { requested, connected: established, established, ..Default::default() };
        r.messages = MessageCounts {
            sent,
            received: sent,
            bytes_sent: 20 * (established + sent),
            bytes_received: 20 * (established + sent),
            ..Default::default()
        };
        r
    }

    fn metrics(accepted: u64, frames: u64) -> BTreeMap<String, f64> {
        [
            (ACCEPTED, accepted as f64),
            (REJECTED, 0.0),
            (FRAMES_IN, frames as f64),
            (FRAMES_OUT, frames as f64),
            (BYTES_IN, 20.0 * frames as f64),
            (BYTES_OUT, 20.0 * frames as f64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn memory(held: u64, inuse: u64) -> MemoryMeasurement {
        MemoryMeasurement {
            connections: held,
            loaded: SystemMemory { tcp_inuse: inuse, ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn agreeing_counts_pass() {
        let l = load(100, 100, 400);
        let (m, mem) = (metrics(100, 500), memory(100, 203));
        let s = Sources {
            load: &l,
            server_metrics: &m,
            memory: &mem,
            server_sessions_held: Some(Some(100)),
            kernel_sockets_held: Some(200),
            xdp_connections_held: None,
            tcp_inuse_before_load: 3,
        };
        let checks = cross_checks(&s);
        assert_eq!(checks.len(), 7, "{checks:?}");
        assert!(checks.iter().all(|c| c.passed), "{checks:?}");
        assert!(shortfalls(&l, &checks).is_empty());
    }

    #[test]
    fn a_mismatch_says_by_how_much() {
        let l = load(100, 100, 400);
        // The server saw 3 frames (60 bytes) fewer; the kernel holds 10 sockets fewer than 2 x 100.
        let (m, mem) = (metrics(100, 497), memory(100, 193));
        let s = Sources {
            load: &l,
            server_metrics: &m,
            memory: &mem,
            server_sessions_held: Some(Some(99)),
            kernel_sockets_held: None,
            xdp_connections_held: None,
            tcp_inuse_before_load: 3,
        };
        let checks = cross_checks(&s);
        let failed: Vec<&str> = checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
        assert_eq!(
            failed,
            [
                "frames in: c2m serve vs c2m load",
                "frames out: c2m serve vs c2m load",
                "bytes in: c2m serve vs c2m load",
                "bytes out: c2m serve vs c2m load",
                "sessions at the hold: c2m serve vs c2m load",
                "sockets at the hold: kernel vs c2m load"
            ]
        );
        let reasons = shortfalls(&l, &checks);
        assert!(reasons[0].contains("(off by -3)"), "{reasons:?}");
        assert!(reasons[2].contains("(off by -60)"), "{reasons:?}");
        assert!(reasons[5].contains("(off by -10)"), "{reasons:?}");
        // More sockets than the run's are someone else's: noted, not failed.
        let more = memory(100, 250);
        let s =
            Sources { memory: &more, server_sessions_held: Some(Some(100)), server_metrics: &metrics(100, 500), ..s };
        let sockets = cross_checks(&s).pop().unwrap();
        assert!(sockets.passed && sockets.note.contains("47 sockets beyond"), "{sockets:?}");
        // The kernel's count of the run's own sockets must agree exactly.
        let s = Sources { kernel_sockets_held: Some(199), ..s };
        let sockets = cross_checks(&s).pop().unwrap();
        assert!(!sockets.passed && sockets.difference == -1.0, "{sockets:?}");
    }

    #[test]
    fn missing_connections_fall_short() {
        let l = load(100, 64, 0);
        let reasons = shortfalls(&l, &[]);
        assert_eq!(reasons, ["64 of 100 connections logged in (36 short)"]);
        let empty = BTreeMap::new();
        let mem = memory(0, 0);
        let s = Sources {
            load: &l,
            server_metrics: &empty,
            memory: &mem,
            server_sessions_held: None,
            kernel_sockets_held: None,
            xdp_connections_held: None,
            tcp_inuse_before_load: 0,
        };
        let checks = cross_checks(&s);
        assert_eq!(checks.len(), 1);
        assert!(!checks[0].passed && checks[0].name == "server metrics");
    }
}
