//! `c2m load` against a real `c2m serve` over loopback: counts, latency, the report, source
//! address and port assignment, and every way a run can fall short being counted.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output, Stdio};

use c2m::schema::load::{Event, LoadReport, RunStatus};
use common::{BIN, ServerProcess};

fn load(server: SocketAddr, args: &[&str]) -> (Output, LoadReport) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let hlog = dir.path().join("load.hlog");
    let out = Command::new(BIN)
        .arg("load")
        .args(["--server", &server.to_string(), "--no-progress", "--json"])
        .arg(&json)
        .arg("--hlog")
        .arg(&hlog)
        .args(args)
        .output()
        .expect("run c2m load");
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no report ({e}); stderr:\n{}", String::from_utf8_lossy(&out.stderr)));
    let report: LoadReport = serde_json::from_str(&text).expect("the report parses");
    let log = std::fs::read_to_string(&hlog).expect("interval log written");
    assert!(log.starts_with("#"), "the interval log starts with its header");
    (out, report)
}

#[test]
fn pings_are_answered_and_measured() {
    let server = ServerProcess::start(&["--max-sessions", "5000"]);
    let (out, r) = load(
        server.addr,
        &["-c", "3k", "--duration", "2s", "--ping-interval", "200ms", "--source-ports", "20000-29999"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r.status, RunStatus::Complete);
    let c = &r.connections;
    assert_eq!((c.requested, c.connected, c.established, c.failed, c.lost), (3000, 3000, 3000, 0, 0));
    assert_eq!(c.established_at_end, 3000);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.messages.received > 0 && r.messages.received <= r.messages.sent);
    assert_eq!(r.messages.unanswered, r.messages.sent - r.messages.received);
    assert_eq!(r.latency.connect.count, 3000);
    assert_eq!(r.latency.login.count, 3000);
    let rtt = &r.latency.rtt_corrected;
    assert!(rtt.count > 0 && rtt.count == r.latency.rtt_uncorrected.count);
    assert!(rtt.p50 <= rtt.p99 && rtt.p99 <= rtt.max && rtt.unit == "us");
    assert!(!rtt.spectrum.is_empty());
    assert!(r.latency.schedule_lag.count > 0, "the generator's own tick lateness is measured");
    // Corrected latency counts from the scheduled send, which is never after the real one.
    assert!(rtt.max >= r.latency.rtt_uncorrected.max);
    assert_eq!(r.phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["connect", "messages", "drain", "close"]);
    assert!(!r.timeline.is_empty());
    // The server saw every connection log in and leave.
    server.wait_metric("c2m_sessions_active", 0.0, std::time::Duration::from_secs(10));
    assert_eq!(server.metric("c2m_sessions_accepted_total"), 3000.0);
}

#[test]
fn a_warmup_sends_messages_that_are_not_measured() {
    // 500 connections, a PING each 100 ms: about 5,000 a second. The warm-up's second of them
    // is answered but in no histogram; the measured window has its own second.
    let server = ServerProcess::start(&["--max-sessions", "1000"]);
    let (out, r) = load(
        server.addr,
        &[
            "-c",
            "500",
            "--warmup",
            "1s",
            "--duration",
            "1s",
            "--ping-interval",
            "100ms",
            "--source-ports",
            "30000-30999",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r.status, RunStatus::Complete);
    let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["connect", "warmup", "messages", "drain", "close"]);
    let warmup = &r.phases[1];
    assert!(warmup.end - warmup.start >= 0.99, "{warmup:?}");
    assert_eq!(r.params.warmup_ms, 1000);
    // Everything sent was answered, but only the measured window's round trips were recorded:
    // about half of them (the window is as long as the warm-up).
    assert_eq!(r.messages.unanswered, 0);
    let recorded = r.latency.rtt_corrected.count;
    assert!(recorded > 0 && recorded < r.messages.received * 3 / 4, "{recorded} of {}", r.messages.received);
}

#[test]
fn echo_frames_of_the_given_size_come_back() {
    let server = ServerProcess::start(&["--max-sessions", "1000"]);
    let (out, r) = load(
        server.addr,
        &[
            "-c",
            "200",
            "--workload",
            "echo",
            "--size",
            "1000",
            "--rate",
            "2000",
            "--duration",
            "1s",
            "--source-ports",
            "30000-30999",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r.connections.established, 200);
    assert!(r.messages.received > 0);
    assert!(r.messages.bytes_received >= r.messages.received * 1000);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

#[test]
fn closed_loop_keeps_the_given_messages_in_flight_and_all_are_answered() {
    let server = ServerProcess::start(&["--max-sessions", "1000"]);
    let (out, r) = load(
        server.addr,
        &[
            "-c",
            "200",
            "--workload",
            "echo",
            "--size",
            "64",
            "--in-flight",
            "2",
            "--duration",
            "1s",
            "--source-ports",
            "31000-31999",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r.connections.established, 200);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.params.in_flight, 2);
    // Each reply sends the next: far more than the 400 a single round would give.
    assert!(r.messages.received >= 4000, "{} received", r.messages.received);
    // The drain lets every outstanding message come back.
    assert_eq!(r.messages.unanswered, 0);
    assert_eq!(r.messages.late, 0, "closed loop has no schedule to be late for");
    let out = Command::new(BIN).args(["load", "--workload", "ping", "--in-flight", "5"]).output().unwrap();
    assert!(!out.status.success(), "5 PINGs do not fit the 80-byte inline out area");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--in-flight"));
}

/// Reads /proc/net/tcp: the (local, remote) pairs of established IPv4 connections.
fn established_tcp() -> Vec<(SocketAddr, SocketAddr)> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let addr = |s: &str| -> SocketAddr {
        let (ip, port) = s.split_once(':').unwrap();
        let ip = u32::from_str_radix(ip, 16).unwrap();
        SocketAddr::new(Ipv4Addr::from(u32::from_be(ip)).into(), u16::from_str_radix(port, 16).unwrap())
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[3] == "01").then(|| (addr(f[1]), addr(f[2])))
        })
        .collect()
}

#[test]
fn every_connection_has_its_own_source_address_and_port() {
    let server = ServerProcess::start(&["--max-sessions", "3000"]);
    // 1,500 connections over 100 ports per address need 15 addresses of the range.
    let mut child = Command::new(BIN)
        .args(["load", "--server", &server.addr.to_string(), "-c", "1500", "--workload", "idle"])
        .args(["--sources", "127.0.3.1-127.0.3.40", "--source-ports", "40000-40099"])
        .args(["--duration", "0s", "--hold", "30s", "--no-progress", "--events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Ok(Event::Phase { name, .. }) = serde_json::from_str::<Event>(&line) {
            if name == "hold" {
                break;
            }
            assert_ne!(name, "close", "the run closed before it held its connections");
        }
    }
    let ours: Vec<_> = established_tcp().into_iter().filter(|(_, remote)| *remote == server.addr).collect();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    assert_eq!(ours.len(), 1500, "every connection is established on the server side");
    let locals: HashSet<SocketAddr> = ours.iter().map(|(local, _)| *local).collect();
    assert_eq!(locals.len(), 1500, "no two connections share a source address and port");
    let addrs: HashSet<_> = locals.iter().map(|a| a.ip()).collect();
    assert_eq!(addrs.len(), 15);
    for a in &locals {
        assert!((40000..=40099).contains(&a.port()) && a.ip().to_string().starts_with("127.0.3."), "{a}");
    }
}

#[test]
fn refused_connects_are_counted_by_kind_and_the_run_is_marked_aborted() {
    // A port with nothing listening: bind one, note it, let it go.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (out, r) = load(addr, &["-c", "50", "--duration", "1s", "--source-ports", "41000-41999"]);
    assert_eq!(out.status.code(), Some(3), "an aborted run exits 3");
    assert_eq!(r.status, RunStatus::Aborted);
    assert!(r.abort_reason.as_deref().unwrap_or("").contains("no connection"));
    assert_eq!(r.connections.failed, 50);
    assert_eq!(r.errors.get("connect ECONNREFUSED"), Some(&50), "{:?}", r.errors);
}

#[test]
fn a_full_server_is_reported_as_such() {
    let server = ServerProcess::start(&["--max-sessions", "100", "--workers", "1"]);
    let (out, r) = load(server.addr, &["-c", "150", "--duration", "1s", "--source-ports", "42000-42999"]);
    // The run goes through its phases, but fell short of what it asked for: exit 3.
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fell short: 50 connections failed"));
    assert_eq!(r.status, RunStatus::Complete);
    assert_eq!(r.connections.established, 100);
    assert_eq!(r.connections.failed, 50);
    assert_eq!(r.errors.get("server ERROR 5 server_full"), Some(&50), "{:?}", r.errors);
}

#[test]
fn the_memfree_guard_stops_a_run_and_still_writes_its_report() {
    let server = ServerProcess::start(&["--max-sessions", "1000"]);
    let (out, r) = load(
        server.addr,
        &["-c", "100", "--duration", "30s", "--keep-free", "100000GiB", "--force", "--source-ports", "43000-43999"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(r.status, RunStatus::Aborted);
    assert!(r.abort_reason.as_deref().unwrap_or("").contains("MemFree"), "{:?}", r.abort_reason);
    assert!(r.elapsed_seconds < 30.0, "the guard stopped the run before its end");
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    let out = Command::new(BIN)
        .args(["load", "-c", "200000", "--sources", "127.0.0.9", "--source-ports", "10000-10099"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("add addresses"), "{err}");
    let out = Command::new(BIN).args(["load", "--workload", "chat"]).output().unwrap();
    assert!(!out.status.success());
}
