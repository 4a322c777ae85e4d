//! Helpers for the finding reproductions (`tests/repro.rs`): a `c2m serve` child whose binary
//! may be swapped for an older build (`C2M_TEST_BIN`), raw protocol v1 clients on std sockets,
//! and readers for frames, metrics and process memory. Copied from `tests/common` where it
//! overlaps, so that one stays untouched.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use c2m::client::{BlockingClient, RawFrame};
use c2m::proto::{self, Frame};
use c2m::stats::{metrics_http, sum_metric};
use socket2::{Domain, Protocol, Socket, Type};

/// The `c2m` binary under test: `C2M_TEST_BIN` (e.g. an older build, to show a test fails
/// there), else the one cargo built for this test run.
pub fn bin() -> String {
    std::env::var("C2M_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_c2m").to_string())
}

/// A `c2m serve` child process, stopped with SIGTERM (by its PID) when dropped, SIGKILL if it
/// does not exit in time.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
}

impl ServerProcess {
    pub fn start(extra: &[&str]) -> ServerProcess {
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn c2m serve");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).expect("read banner");
        let field = |key: &str| -> SocketAddr {
            let rest = line.split(key).nth(1).unwrap_or_else(|| panic!("no {key:?} in banner {line:?}"));
            let word = rest.split_whitespace().next().unwrap();
            word.trim_start_matches("http://").trim_end_matches("/metrics").parse().unwrap()
        };
        let (addr, metrics) = (field("listening on "), field("metrics "));
        ServerProcess { child, addr, metrics }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn scrape(&self) -> String {
        metrics_http::scrape(self.metrics).expect("scrape /metrics")
    }

    /// The sum of a metric family over its labels.
    pub fn metric(&self, name: &str) -> f64 {
        sum(&self.scrape(), name)
    }

    /// The sum of the lines of `name` whose labels contain `label` (e.g. `reason="bye"`).
    pub fn metric_where(&self, name: &str, label: &str) -> f64 {
        sum_where(&self.scrape(), name, label)
    }

    /// Waits until `name` sums to `want`, at most `timeout`; returns the last value seen.
    pub fn wait_metric(&self, name: &str, want: f64, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.metric(name);
            if got == want || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn connect(&self) -> BlockingClient {
        connect(self.addr, None)
    }

    /// A connection logged in as `user`; panics without a WELCOME.
    pub fn login(&self, user: u64) -> BlockingClient {
        let mut c = self.connect();
        c.login(user).unwrap_or_else(|e| panic!("login as user {user}: {e}"));
        c
    }

    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    fn stop(&mut self, timeout: Duration) {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // Short: sessions still open would otherwise hold the drain for --drain-timeout.
            self.stop(Duration::from_secs(2));
        }
    }
}

pub fn sum(text: &str, name: &str) -> f64 {
    sum_metric(text, name).unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Sums the lines of family `name` whose label set contains `label` (e.g. `code="6"`).
pub fn sum_where(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let metric = key.split('{').next()?;
            (metric == name && key.contains(label)).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// VmRSS of a process in KiB (0 once it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A TCP connection to `addr`; with `rcvbuf`, its receive buffer is set before the connect, so
/// the advertised window stays small and the server's output backs up quickly.
pub fn connect_stream(addr: SocketAddr, rcvbuf: Option<usize>) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).unwrap();
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(5)).expect("connect");
    s.set_tcp_nodelay(true).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.into()
}

pub fn connect(addr: SocketAddr, rcvbuf: Option<usize>) -> BlockingClient {
    BlockingClient::from_stream(connect_stream(addr, rcvbuf))
}

/// Closes with RST (SO_LINGER 0), as a crashed or vanished client does.
pub fn reset(c: BlockingClient) {
    let _ = socket2::SockRef::from(c.stream()).set_linger(Some(Duration::ZERO));
    drop(c);
}

/// The session id's worker (its top 16 bits).
pub fn worker_of(session_id: u64) -> u64 {
    session_id >> 48
}

// Frames, encoded.

pub fn enc(frame: &Frame<'_>) -> Vec<u8> {
    proto::encode_vec(frame)
}

pub fn hello(user_id: u64) -> Vec<u8> {
    enc(&Frame::Hello { user_id, client_time_ns: 0 })
}

pub fn send(to_user: u64, msg_id: u64, body: &[u8]) -> Vec<u8> {
    enc(&Frame::Send { to_user, msg_id, t_ns: 0, body })
}

pub fn receipt(from_user: u64, msg_id: u64) -> Vec<u8> {
    enc(&Frame::Receipt { from_user, msg_id })
}

pub fn ping(seq: u64) -> Vec<u8> {
    enc(&Frame::Ping { seq, t_ns: 0 })
}

pub fn bye() -> Vec<u8> {
    enc(&Frame::Bye)
}

/// An ECHO frame of exactly `total` bytes (header included), its body `fill` repeated.
pub fn echo(total: usize, fill: &[u8]) -> Vec<u8> {
    let body: Vec<u8> = fill.iter().copied().cycle().take(total - proto::HEADER_LEN).collect();
    enc(&Frame::Echo { data: &body })
}

/// A frame from raw parts (any kind, any payload; for malformed input).
pub fn raw_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&((4 + payload.len()) as u16).to_le_bytes());
    v.extend_from_slice(&[kind, 0]);
    v.extend_from_slice(payload);
    v
}

/// What a client read: its frames, and whether the server closed (EOF or reset).
#[derive(Debug, Default)]
pub struct Received {
    pub frames: Vec<RawFrame>,
    pub closed: bool,
}

impl Received {
    /// (from_user, msg_id) of every DELIVER, in order.
    pub fn delivers(&self) -> Vec<(u64, u64)> {
        self.frames
            .iter()
            .filter_map(|f| match f.frame() {
                Frame::Deliver { from_user, msg_id, .. } => Some((from_user, msg_id)),
                _ => None,
            })
            .collect()
    }

    /// (to_user, msg_id) of every RECEIPT notice (0x86).
    pub fn notices(&self) -> Vec<(u64, u64)> {
        self.frames
            .iter()
            .filter_map(|f| match f.frame() {
                Frame::ReceiptNotice { to_user, msg_id } => Some((to_user, msg_id)),
                _ => None,
            })
            .collect()
    }

    pub fn acks(&self) -> Vec<u64> {
        self.frames
            .iter()
            .filter_map(|f| match f.frame() {
                Frame::Ack { msg_id } => Some(msg_id),
                _ => None,
            })
            .collect()
    }

    /// (msg_id, code) of every NACK.
    pub fn nacks(&self) -> Vec<(u64, u16)> {
        self.frames
            .iter()
            .filter_map(|f| match f.frame() {
                Frame::Nack { msg_id, code } => Some((msg_id, code)),
                _ => None,
            })
            .collect()
    }

    pub fn errors(&self) -> Vec<u16> {
        self.frames
            .iter()
            .filter_map(|f| match f.frame() {
                Frame::Error { code, .. } => Some(code),
                _ => None,
            })
            .collect()
    }

    /// One short line per frame, for assertion messages.
    pub fn summary(&self) -> String {
        let mut kinds: Vec<String> = Vec::new();
        for f in &self.frames {
            let name = match f.frame() {
                Frame::Deliver { from_user, msg_id, .. } => format!("DELIVER({from_user},{msg_id:#x})"),
                Frame::Ack { msg_id } => format!("ACK({msg_id:#x})"),
                Frame::Nack { msg_id, code } => format!("NACK({msg_id:#x},{code})"),
                Frame::Error { code, .. } => format!("ERROR({code})"),
                Frame::ReceiptNotice { to_user, msg_id } => format!("RECEIPT_NOTICE({to_user},{msg_id:#x})"),
                Frame::Pong { seq, .. } => format!("PONG({seq:#x})"),
                Frame::EchoReply { data } => format!("ECHO_REPLY({} B)", data.len() + 4),
                other => format!("{:?}", other.kind()),
            };
            if kinds.last().is_some_and(|l| l.starts_with("ECHO_REPLY") && name.starts_with("ECHO_REPLY")) {
                continue;
            }
            kinds.push(name);
        }
        if kinds.len() > 40 {
            let tail = kinds.split_off(kinds.len() - 10);
            kinds.truncate(30);
            kinds.push("...".into());
            kinds.extend(tail);
        }
        format!("{} frames{}: {}", self.frames.len(), if self.closed { " then close" } else { "" }, kinds.join(" "))
    }
}

/// Reads frames until none arrives for `quiet`, `limit` passes, or the server closes.
pub fn read_until_quiet(c: &mut BlockingClient, quiet: Duration, limit: Duration) -> Received {
    read_while(c, quiet, limit, |_| true)
}

/// Reads frames like [`read_until_quiet`], and also stops after a frame for which `more` says
/// false.
pub fn read_while(
    c: &mut BlockingClient,
    quiet: Duration,
    limit: Duration,
    mut more: impl FnMut(&Received) -> bool,
) -> Received {
    let deadline = Instant::now() + limit;
    let mut got = Received::default();
    while Instant::now() < deadline {
        let wait = quiet.min(deadline.saturating_duration_since(Instant::now()));
        match c.read_frame(wait) {
            Ok(Some(f)) => {
                got.frames.push(f);
                if !more(&got) {
                    break;
                }
            }
            Ok(None) => {
                got.closed = true;
                break;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => break,
            Err(_) => {
                got.closed = true;
                break;
            }
        }
    }
    got
}

/// Writes `bytes` in full unless the peer stops taking them for `timeout`; false then.
pub fn write_or_stall(c: &mut BlockingClient, bytes: &[u8], timeout: Duration) -> bool {
    let _ = c.stream().set_write_timeout(Some(timeout));
    let mut s = c.stream();
    s.write_all(bytes).is_ok()
}

/// Polls `f` every 20 ms until it returns true, at most `timeout`; returns its last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
