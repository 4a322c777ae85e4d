//! The peer servers of bench/peers (built by `bench/peers/build.sh` into bench/peers/bin/)
//! against the real `c2m load` and the reference client: every connection logs in, every ECHO
//! and PING is answered, bad input gets c2m's ERROR codes and a close, and SIGTERM stops a peer
//! within 2 s.
//!
//! A peer that is not built is skipped with a note; none built at all fails the run unless
//! C2M_PEERS_OPTIONAL=1, so a missing build is never mistaken for a pass.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use c2m::proto::{ErrorCode, Frame, encode_vec};
use c2m::schema::load::{LoadReport, RunStatus};
use common::{BIN, code, expect_closed, expect_error, expect_frame};

const PEERS: [&str; 4] = ["tokio", "monoio", "epoll-c", "erlang"];
const CONNECTIONS: u64 = 200;

fn peer_bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/peers/bin").join(name)
}

fn optional() -> bool {
    std::env::var("C2M_PEERS_OPTIONAL").is_ok_and(|v| v == "1")
}

/// The peer's binary, or `None` (with a note) when it is not built.
fn built(name: &str) -> Option<PathBuf> {
    let bin = peer_bin(name);
    if bin.is_file() {
        return Some(bin);
    }
    eprintln!("peer {name} is not built ({}): skipped; run bench/peers/build.sh", bin.display());
    None
}

#[test]
fn peers_are_built() {
    let found: Vec<&str> = PEERS.into_iter().filter(|p| peer_bin(p).is_file()).collect();
    assert!(
        !found.is_empty() || optional(),
        "no peer is built in bench/peers/bin: run bench/peers/build.sh (or set C2M_PEERS_OPTIONAL=1 to skip the peers)"
    );
}

/// A running peer on a loopback port of its choosing, stopped when dropped (SIGTERM, then
/// SIGKILL: bin/erlang is a wrapper, and only SIGTERM reaches its node at once).
struct Peer {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Peer {
    fn start(name: &'static str, bin: PathBuf) -> Peer {
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--workers", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("{name}: no READY line within 20 s");
            }
        };
        let addr = line
            .strip_prefix("READY ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name}: expected `READY <ip:port>`, got {line:?}"));
        Peer { name, child, addr }
    }

    /// SIGTERM, then the exit status and how long it took (gives up after 10 s).
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{}: still running 10 s after SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `c2m load` for 2 s at 200 connections from its own source addresses (127.0.172.first..+3,
/// ports 17200-17299, 400 pairs), so parallel tests never compete for a source port.
fn load(peer: &Peer, workload: &str, first_source: u8) -> LoadReport {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let sources = format!("127.0.172.{first_source}-127.0.172.{}", first_source + 3);
    let out = Command::new(BIN)
        .args(["load", "--server", &peer.addr.to_string(), "--workload", workload])
        .args(["-c", &CONNECTIONS.to_string(), "--rate", "2000", "--duration", "2s", "--workers", "1"])
        .args(["--sources", &sources, "--source-ports", "17200-17299", "--no-progress", "--json"])
        .arg(&json)
        .output()
        .expect("run c2m load");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text =
        std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{}: no load report ({e}):\n{stderr}", peer.name));
    assert!(out.status.success(), "{}: c2m load {workload} failed: {}\n{stderr}", peer.name, out.status);
    serde_json::from_str(&text).expect("the load report parses")
}

fn assert_all_answered(peer: &Peer, workload: &str, r: &LoadReport) {
    let what = format!("{} {workload}", peer.name);
    assert_eq!(r.status, RunStatus::Complete, "{what}: {:?}", r.abort_reason);
    let c = &r.connections;
    assert_eq!((c.established, c.failed, c.lost), (CONNECTIONS, 0, 0), "{what}: connections {c:?}");
    assert_eq!(c.established_at_end, CONNECTIONS, "{what}");
    assert!(r.errors.is_empty(), "{what}: errors {:?}", r.errors);
    let m = &r.messages;
    assert!(m.sent > 1000, "{what}: only {} messages sent", m.sent);
    assert_eq!((m.received, m.unanswered), (m.sent, 0), "{what}: every message is answered");
    assert!(r.latency.rtt_corrected.count > 0, "{what}: replies carried their timestamps back");
}

fn answers_load_then_stops_on_sigterm(name: &'static str, block: u8) {
    let Some(bin) = built(name) else { return };
    let mut peer = Peer::start(name, bin);
    let echo = load(&peer, "echo", block * 20 + 1);
    assert_all_answered(&peer, "echo", &echo);
    assert!(echo.messages.bytes_received >= echo.messages.received * 64, "{name}: ECHO replies are whole 64 B frames");
    let ping = load(&peer, "ping", block * 20 + 11);
    assert_all_answered(&peer, "ping", &ping);
    let (status, took) = peer.terminate();
    assert!(status.success(), "{name}: exit status {status} after SIGTERM");
    assert!(took < Duration::from_secs(2), "{name}: took {took:?} to exit after SIGTERM");
}

fn hello(user_id: u64) -> Vec<u8> {
    encode_vec(&Frame::Hello { user_id, client_time_ns: 0 })
}

/// Sends `bytes` on a fresh connection: the peer answers ERROR `want` and closes.
fn expect_refused(peer: &Peer, bytes: &[u8], want: ErrorCode) {
    refused(peer, false, bytes, want);
}

/// Sends HELLO and `bytes` at once: WELCOME, then ERROR `want` and a close.
fn expect_refused_after_login(peer: &Peer, bytes: &[u8], want: ErrorCode) {
    refused(peer, true, bytes, want);
}

fn refused(peer: &Peer, login: bool, bytes: &[u8], want: ErrorCode) {
    let mut c = c2m::client::BlockingClient::connect(peer.addr).expect("connect");
    let hello = if login { hello(1) } else { Vec::new() };
    c.send_raw(&[&hello[..], bytes].concat()).unwrap();
    if login {
        let welcome = expect_frame(&mut c);
        assert!(matches!(welcome.frame(), Frame::Welcome { .. }), "{}: {welcome:?}", peer.name);
    }
    assert_eq!(expect_error(&mut c, Duration::from_secs(5)), code(want), "{}: {bytes:?}", peer.name);
    expect_closed(&mut c);
}

fn speaks_protocol_v1_like_c2m(name: &'static str) {
    let Some(bin) = built(name) else { return };
    let peer = Peer::start(name, bin);

    let mut c = c2m::client::BlockingClient::connect(peer.addr).expect("connect");
    c.login(7).expect("HELLO gets WELCOME");
    c.send(&Frame::Ping { seq: 11, t_ns: 22 }).unwrap();
    assert_eq!(
        expect_frame(&mut c).frame(),
        Frame::Pong { seq: 11, t_ns: 22 },
        "{name}: PONG carries the PING's payload"
    );
    // An ECHO split across two writes comes back whole and unchanged.
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let echo = encode_vec(&Frame::Echo { data: &data });
    c.send_raw(&echo[..300]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(&echo[300..]).unwrap();
    assert_eq!(expect_frame(&mut c).frame(), Frame::EchoReply { data: &data }, "{name}");
    // No routing, as in c2m serve: a SEND is refused with NACK 7 and the session stays.
    c.send(&Frame::Send { to_user: 8, msg_id: 99, t_ns: 0, body: b"hi" }).unwrap();
    assert_eq!(expect_frame(&mut c).frame(), Frame::nack(99, ErrorCode::UnknownRecipient), "{name}");
    c.send(&Frame::Bye).unwrap();
    expect_closed(&mut c);

    let ping = encode_vec(&Frame::Ping { seq: 1, t_ns: 2 });
    let mut flagged = hello(1);
    flagged[3] = 1;
    expect_refused(&peer, &[3, 0], ErrorCode::FrameSize);
    expect_refused(&peer, &4097u16.to_le_bytes(), ErrorCode::FrameSize);
    expect_refused(&peer, &[20, 0, 0x42, 0], ErrorCode::UnknownKind);
    expect_refused(&peer, &flagged, ErrorCode::Malformed);
    expect_refused(&peer, &[8, 0, 0x01, 0, 1, 2, 3, 4], ErrorCode::Malformed);
    expect_refused(&peer, &ping, ErrorCode::NotLoggedIn);
    expect_refused(&peer, &encode_vec(&Frame::Pong { seq: 1, t_ns: 2 }), ErrorCode::UnknownKind);
    expect_refused_after_login(&peer, &hello(1), ErrorCode::Malformed);
    let mut long_ping = ping.clone();
    long_ping[0] += 1;
    long_ping.push(0);
    expect_refused_after_login(&peer, &long_ping, ErrorCode::Malformed);
    let welcome = encode_vec(&Frame::Welcome { session_id: 1, server_time_ns: 2, heartbeat_ms: 3 });
    expect_refused_after_login(&peer, &welcome, ErrorCode::UnknownKind);
}

macro_rules! peer_tests {
    ($($module:ident => $name:literal, $block:literal;)*) => {$(
        mod $module {
            #[test]
            fn answers_c2m_load_echo_and_ping_then_stops_on_sigterm() {
                super::answers_load_then_stops_on_sigterm($name, $block);
            }

            #[test]
            fn speaks_protocol_v1_like_c2m() {
                super::speaks_protocol_v1_like_c2m($name);
            }
        }
    )*};
}

peer_tests! {
    tokio => "tokio", 0;
    monoio => "monoio", 1;
    epoll_c => "epoll-c", 2;
    erlang => "erlang", 3;
}
