//! Starting a real `c2m serve` process and talking to it: over loopback on the kernel data
//! plane, or, with `C2M_TEST_DATAPLANE=xdp`, on the xdp data plane (AF_XDP and c2m's TCP) in a
//! namespace pair of the server's own, the test's clients (unmodified Linux TCP) in the other
//! namespace and `/metrics` on loopback. `scripts/test.sh` runs the protocol tests both ways.
#![allow(dead_code)]

#[path = "../xdp_common/mod.rs"]
pub mod xdp_common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use c2m::client::{BlockingClient, HoldReport, RawFrame};
use c2m::proto::{ErrorCode, Frame};
use c2m::stats::{metrics_http, sum_metric};

pub const BIN: &str = env!("CARGO_BIN_EXE_c2m");

/// The port the server listens on under xdp (its namespace is its own, so no clash).
const XDP_PORT: u16 = 7700;

/// True when `C2M_TEST_DATAPLANE=xdp`: the servers under test run the xdp data plane.
pub fn xdp_under_test() -> bool {
    match std::env::var("C2M_TEST_DATAPLANE").as_deref() {
        Ok("xdp") => true,
        Ok("kernel") | Err(_) => false,
        Ok(other) => panic!("C2M_TEST_DATAPLANE={other}: want kernel or xdp"),
    }
}

/// Runs `f` on this thread inside network namespace `ns` (a socket keeps the namespace it was
/// made in), then puts the thread back where it was.
pub fn in_netns<T>(ns: &str, f: impl FnOnce() -> T) -> T {
    use std::os::fd::AsRawFd;
    let home = std::fs::File::open("/proc/thread-self/ns/net").expect("open this thread's netns");
    let there = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap_or_else(|e| panic!("netns {ns}: {e}"));
    // SAFETY: setns only switches this thread's network namespace; both descriptors are open
    // namespace files and stay open across the calls.
    assert_eq!(unsafe { libc::setns(there.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns into {ns}");
    let out = f();
    // SAFETY: as above; back to the namespace the thread started in.
    assert_eq!(unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns back from {ns}");
    out
}

/// A `c2m serve` child process, stopped with SIGTERM (by its PID) when dropped; under xdp, its
/// namespace pair goes after it.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub net: Option<xdp_common::Topology>,
}

impl ServerProcess {
    /// A server on the data plane under test (`C2M_TEST_DATAPLANE`).
    pub fn start(extra: &[&str]) -> ServerProcess {
        ServerProcess::start_on(xdp_under_test(), extra)
    }

    /// A server on the xdp data plane (its namespace pair of its own) or on loopback.
    pub fn start_on(xdp: bool, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_with_queues(xdp, 2, extra)
    }

    /// As `start_on`, the topology's veth ends with `queues` queues each (xdp only).
    pub fn start_with_queues(xdp: bool, queues: u32, extra: &[&str]) -> ServerProcess {
        let net = xdp.then(|| xdp_common::Topology::up_with_queues("sp", queues));
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--metrics", "127.0.0.1:0"]);
        match &net {
            Some(t) => {
                let listen = format!("{}:{XDP_PORT}", xdp_common::SRV_IP);
                cmd.args(["--listen", &listen, "--dataplane", "xdp", "--iface", xdp_common::VETH_SRV]);
                cmd.args(["--netns", &t.ns_srv]);
            }
            None => {
                cmd.args(["--listen", "127.0.0.1:0"]);
            }
        }
        ServerProcess::spawn(cmd, extra, net)
    }

    /// A kernel-data-plane server in the server namespace of a topology of its own, on the
    /// address the xdp server would have: the peer of an xdp load (interop). One queue each way:
    /// Linux sends a connection's replies on the TX queue its own hash picks, so with several
    /// queues half of them would reach an xdp load worker that did not open the connection.
    pub fn start_kernel_in_netns(extra: &[&str]) -> ServerProcess {
        let net = xdp_common::Topology::up_with_queues("kp", 1);
        let mut cmd = Command::new(BIN);
        let listen = format!("{}:{XDP_PORT}", xdp_common::SRV_IP);
        cmd.args(["serve", "--metrics", "127.0.0.1:0", "--listen", &listen, "--netns", &net.ns_srv]);
        ServerProcess::spawn(cmd, extra, Some(net))
    }

    /// A kernel-data-plane server on `listen` (a restart on the port a killed server had).
    pub fn start_listening(listen: SocketAddr, extra: &[&str]) -> ServerProcess {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--metrics", "127.0.0.1:0", "--listen", &listen.to_string()]);
        ServerProcess::spawn(cmd, extra, None)
    }

    fn spawn(mut cmd: Command, extra: &[&str], net: Option<xdp_common::Topology>) -> ServerProcess {
        let mut child =
            cmd.args(extra).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn c2m serve");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).expect("read banner");
        let field = |key: &str| -> SocketAddr {
            let rest = line.split(key).nth(1).unwrap_or_else(|| panic!("no {key:?} in banner {line:?}"));
            let word = rest.split_whitespace().next().unwrap();
            word.trim_start_matches("http://").trim_end_matches("/metrics").parse().unwrap()
        };
        let (addr, metrics) = (field("listening on "), field("metrics "));
        ServerProcess { child, addr, metrics, net }
    }

    /// Runs `f` where the clients live: the client namespace under xdp, here otherwise.
    pub fn as_client<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.net {
            Some(t) => in_netns(&t.ns_cli, f),
            None => f(),
        }
    }

    pub fn scrape(&self) -> String {
        metrics_http::scrape(self.metrics).expect("scrape /metrics")
    }

    pub fn metric(&self, name: &str) -> f64 {
        sum_metric(&self.scrape(), name).unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Waits until `name` sums to `want`, at most `timeout`.
    pub fn wait_metric(&self, name: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.metric(name);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{name} is {got}, want {want}\n{}", self.scrape());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit status, at most `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit within {timeout:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> BlockingClient {
        self.as_client(|| BlockingClient::connect(self.addr)).expect("connect")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.terminate(Duration::from_secs(10));
        }
    }
}

/// A `c2m hold` child holding connections until its stdin is closed.
pub struct HoldProcess {
    pub child: Child,
    stdin: Option<ChildStdin>,
    pub report: HoldReport,
}

impl HoldProcess {
    pub fn start(server: SocketAddr, source: &str, connections: usize, first_user: u64) -> HoldProcess {
        let mut child = Command::new(BIN)
            .args(["hold", "--server", &server.to_string(), "--source", source])
            .args(["-c", &connections.to_string(), "--first-user", &first_user.to_string(), "--hold-secs", "300"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn c2m hold");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).expect("hold report");
        let report = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("bad hold report {line:?}: {e}"));
        HoldProcess { child, stdin, report }
    }

    /// Closes stdin (the signal to let go) and waits for the process.
    pub fn release(mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.flush();
        }
        let status = self.child.wait().expect("wait for c2m hold");
        assert!(status.success(), "c2m hold failed: {status}");
    }
}

/// Reads frames until an ERROR arrives and returns its code; panics on anything else.
pub fn expect_error(c: &mut BlockingClient, within: Duration) -> u16 {
    match c.read_frame(within) {
        Ok(Some(f)) => match f.frame() {
            Frame::Error { code, .. } => code,
            other => panic!("expected ERROR, got {other:?}"),
        },
        other => panic!("expected ERROR, got {other:?}"),
    }
}

/// After its last frame, the server closes: the next read sees EOF (or a reset, when our own
/// unread bytes made the kernel answer with RST).
pub fn expect_closed(c: &mut BlockingClient) {
    match c.read_frame(Duration::from_secs(5)) {
        Ok(None) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
}

pub fn expect_frame(c: &mut BlockingClient) -> RawFrame {
    c.read_frame(Duration::from_secs(10)).expect("read").expect("a frame, not EOF")
}

pub fn code(c: ErrorCode) -> u16 {
    c as u16
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

pub fn sum(text: &str, name: &str) -> f64 {
    c2m::stats::sum_metric(text, name).unwrap_or_else(|| panic!("metric {name} missing"))
}

/// No session, slab slot, direct descriptor, held receive buffer, unreceipted list or TCP
/// control block outlives its connection, the offline store's byte count goes with its
/// messages, and every accepted session was closed exactly once.
pub fn assert_no_leaks(server: &ServerProcess) {
    server.wait_metric("c2m_sessions_active", 0.0, Duration::from_secs(10));
    server.wait_metric("c2m_slab_slots_in_use", 0.0, Duration::from_secs(10));
    server.wait_metric("c2m_fixed_files_in_use", 0.0, Duration::from_secs(10));
    server.wait_metric("c2m_held_buffers", 0.0, Duration::from_secs(10));
    server.wait_metric("c2m_chat_pending_messages", 0.0, Duration::from_secs(10));
    // Under xdp: every connection of c2m's TCP closed (a block in TIME-WAIT is closed), and
    // no input held for a paused one.
    server.wait_metric("c2m_tcp_connections", 0.0, Duration::from_secs(10));
    let text = server.scrape();
    if c2m::stats::sum_metric(&text, "c2m_xdp_held_input_bytes").is_some() {
        assert_eq!(sum(&text, "c2m_xdp_held_input_bytes"), 0.0, "{text}");
    }
    if sum(&text, "c2m_chat_offline_messages") == 0.0 {
        assert_eq!(sum(&text, "c2m_chat_offline_bytes"), 0.0, "store bytes without a message\n{text}");
    }
    let accepted = sum(&text, "c2m_sessions_accepted_total");
    assert!(accepted > 0.0, "{text}");
    assert_eq!(accepted, sum(&text, "c2m_sessions_closed_total"), "accepted != closed\n{text}");
}

pub fn login(server: &ServerProcess, user_id: u64) -> BlockingClient {
    let mut c = server.client();
    c.login(user_id).expect("login");
    c
}

/// A client whose receive buffer is small, so the server's replies back up quickly.
pub fn small_window_client(server: &ServerProcess) -> BlockingClient {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = server.as_client(|| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect_timeout(&server.addr.into(), Duration::from_secs(5)).unwrap();
        s
    });
    s.set_tcp_nodelay(true).unwrap();
    BlockingClient::from_stream(s.into())
}

/// Runs `c2m load` from the client namespace of `server`'s topology, on the xdp data plane if
/// `xdp` (from the default 198.19.0.1 up), else on the kernel's from the client veth's address;
/// returns its JSON report. The load must exit 0.
pub fn run_load(server: &ServerProcess, xdp: bool, args: &[&str]) -> serde_json::Value {
    let net = server.net.as_ref().expect("a server in a namespace pair");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let mut cmd = Command::new(BIN);
    cmd.args(["load", "--netns", &net.ns_cli, "--server", &server.addr.to_string(), "--no-progress", "--force"]);
    if xdp {
        cmd.args(["--dataplane", "xdp", "--iface", xdp_common::VETH_CLI]);
    } else {
        cmd.args(["--sources", &xdp_common::CLI_IP.to_string()]);
    }
    let out = cmd.arg("--json").arg(&json).args(args).output().expect("run c2m load");
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    assert!(
        out.status.success(),
        "c2m load {args:?} exited {:?}\n{}{}\n{text}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).expect("the load's JSON report")
}
