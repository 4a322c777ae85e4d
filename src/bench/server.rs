//! The `c2m serve` child: started on free loopback ports, known to listen once it prints its
//! banner, its output passed through, scraped at the end.

use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::child::{ChildProcess, read_lines};
use super::progress::Progress;
use super::scenario::{AutoOr, ServerSettings};

/// The server's gauge of open sessions (accepted, not yet closed).
pub const SESSIONS_ACTIVE: &str = "c2m_sessions_active";
/// Open connections of c2m's TCP (the xdp data plane), TIME-WAIT left out.
pub const TCP_CONNECTIONS: &str = "c2m_tcp_connections";

/// How long the server may take to print its banner.
/// The server's port on the xdp data plane (its namespace is the run's own).
const XDP_PORT: u16 = 7700;
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of its stderr kept for error messages.
const STDERR_TAIL: usize = 40;

pub struct ServerChild {
    pub process: ChildProcess,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub banner: String,
    /// The command line it was started with, program first.
    pub argv: Vec<String>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

/// A loopback port nobody listens on now (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sessions the server is sized for: exactly the connections asked for. The limit is one
/// budget for all workers, so however the kernel's reuseport hash splits the connections, a run
/// of N fits a server of N (and every bench run checks that it does).
pub fn max_sessions(connections: u64) -> u64 {
    connections
}

impl ServerChild {
    /// `max_sessions`: its session limit, [`max_sessions`] of the count unless overridden.
    /// Starts `c2m serve` on loopback, or with `xdp` on the xdp data plane in that topology's
    /// server namespace (its metrics stay on this namespace's loopback).
    pub fn start(
        exe: &Path,
        settings: &ServerSettings,
        max_sessions: u64,
        xdp: Option<&super::netns::XdpTopology>,
        progress: &Progress,
    ) -> anyhow::Result<ServerChild> {
        let listen = match xdp {
            Some(_) => std::net::SocketAddrV4::new(super::netns::SERVER_IP, XDP_PORT).to_string(),
            None => format!("127.0.0.1:{}", free_port().context("finding a free port")?),
        };
        let metrics = format!("127.0.0.1:{}", free_port().context("finding a free port")?);
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--listen", &listen, "--metrics", &metrics])
            .args(xdp.map(|t| t.server_args()).unwrap_or_default())
            .args(["--max-sessions", &max_sessions.to_string()])
            .args(["--session-bytes", &settings.session_bytes.0.to_string()])
            .args(["--heartbeat", &format!("{}ms", settings.heartbeat.0.as_millis())]);
        if let AutoOr::Fixed(w) = settings.workers {
            cmd.args(["--workers", &w.to_string()]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let argv = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let (process, mut handle) =
            ChildProcess::spawn("c2m serve", &mut cmd).with_context(|| format!("starting {} serve", exe.display()))?;

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = handle.stderr.take() {
            let (tail, out) = (stderr_tail.clone(), progress.clone());
            read_lines(err, move |line| {
                out.println(&format!("serve: {line}"));
                if let Ok(mut t) = tail.lock() {
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let (banner_tx, banner_rx) = mpsc::channel();
        let stdout = handle.stdout.take().context("c2m serve's stdout")?;
        let out = progress.clone();
        let mut first = true;
        read_lines(stdout, move |line| {
            if first {
                first = false;
                let _ = banner_tx.send(line);
            } else {
                out.println(&format!("serve: {line}"));
            }
        });

        let mut server = ServerChild {
            process,
            addr: listen.parse().context("listen address")?,
            metrics: metrics.parse().context("metrics address")?,
            banner: String::new(),
            argv,
            stderr_tail,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match banner_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    server.banner = line;
                    break;
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Some(exit) = server.process.try_reap()? {
                        bail!("c2m serve ended before listening ({exit}):\n{}", server.stderr_tail());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("c2m serve did not say it was listening within {START_TIMEOUT:?}:\n{}", server.stderr_tail())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Stdout closed without a line: it is exiting; give it a moment to be reaped.
                    let exit = server.process.wait_for(Duration::from_secs(5))?;
                    let how = exit.map(|e| e.to_string()).unwrap_or_else(|| "closed its stdout".into());
                    // Let the stderr reader catch up before quoting it.
                    std::thread::sleep(Duration::from_millis(100));
                    bail!("c2m serve ended before listening ({how}):\n{}", server.stderr_tail());
                }
            }
        }
        if !server.banner.contains("listening on") {
            bail!("c2m serve's first line is not its banner: {:?}\n{}", server.banner, server.stderr_tail());
        }
        // Trust the banner over the flags: it is the address actually bound.
        let word_after = |key: &str| server.banner.split(key).nth(1).and_then(|r| r.split_whitespace().next());
        if let Some(addr) = word_after("listening on ").and_then(|w| w.parse().ok()) {
            server.addr = addr;
        }
        if let Some(m) = word_after("metrics http://").and_then(|w| w.trim_end_matches("/metrics").parse().ok()) {
            server.metrics = m;
        }
        Ok(server)
    }

    /// Its last lines on stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail.lock().map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }

    /// Its /metrics, each metric summed over its label sets (workers, kinds, reasons); tried a
    /// few times, since right after a load closes its connections the loopback ports may be
    /// briefly scarce.
    pub fn scrape_totals(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        scrape_totals(self.metrics)
    }
}

/// [`ServerChild::scrape_totals`] for a metrics address.
pub fn scrape_totals(metrics: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    const TRIES: u32 = 5;
    let mut last = None;
    for attempt in 0..TRIES {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        let scraped = match crate::stats::metrics_http::scrape(metrics) {
            // A load holding its connections has every ephemeral port (its sources bind them):
            // connect from a port below the load's source ports instead.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                connect_from_low_port(metrics).and_then(|s| crate::stats::metrics_http::scrape_on(s, metrics))
            }
            other => other,
        };
        match scraped {
            Ok(body) => return Ok(sum_by_name(&body)),
            Err(e) => last = Some(e),
        }
    }
    let err = last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("no attempt made"));
    Err(err.context(format!("scraping http://{metrics}/metrics ({TRIES} tries)")))
}

/// A connection to `to` from a source port below 10,000 (the load's source ports start there),
/// the first one free.
fn connect_from_low_port(to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let from_ip =
        if to.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() };
    // Spread over the range so that a scrape does not wait on the last one's TIME-WAIT.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let start = (std::process::id() ^ nanos) % 8_000;
    let mut last = None;
    for i in 0..256u16 {
        let port = 1_500 + ((start + u32::from(i) * 31) % 8_000) as u16;
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
        if let Err(e) = socket.bind(&SocketAddr::new(from_ip, port).into()) {
            last = Some(e);
            continue;
        }
        socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
        return Ok(socket.into());
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free low port")))
}

/// Sums every sample line of a Prometheus text body by metric name.
pub fn sum_by_name(body: &str) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let name = key.split('{').next().unwrap_or(key).trim();
        *totals.entry(name.to_string()).or_insert(0.0) += value;
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_label_sets() {
        let body =
            "# HELP c2m_x x\n# TYPE c2m_x gauge\nc2m_x{worker=\"0\"} 3\nc2m_x{worker=\"1\"} 4\nc2m_y 1.5\n\nbad line\n";
        let t = sum_by_name(body);
        assert_eq!(t["c2m_x"], 7.0);
        assert_eq!(t["c2m_y"], 1.5);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn sized_to_the_count() {
        assert_eq!(max_sessions(10_000), 10_000);
    }
}
