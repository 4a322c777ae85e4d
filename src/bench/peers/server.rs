//! One server of the comparison, running: one process, or several sharing a SO_REUSEPORT port
//! when each connection takes a descriptor. Timed from spawn to readiness and from SIGTERM to
//! exit; its CPU and memory summed over every process (and their children, in case a peer's
//! program is a wrapper that starts the real server).

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use super::manifest::{Launch, Server};
use crate::bench::child::{ChildProcess, read_lines};
use crate::bench::server::{free_port, max_sessions};
use crate::host::process::{self, CpuTimes, ProcessMemory};

/// How long every process has to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// From SIGTERM to SIGKILL. The contract asks a peer to exit within 2 s; c2m drains for at
/// most 5 s by default.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of the processes' stderr kept for error messages.
const STDERR_TAIL: usize = 20;

/// How many processes and workers a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub shards: u64,
    pub workers_per_shard: u64,
}

/// Processes for `connections`: one unless the server takes a descriptor per connection, then
/// enough that none holds more than `per_shard`; the cores split evenly over them (at least one
/// worker each), so the sharded server uses the same cores as an unsharded one.
pub fn shape(fd_per_connection: bool, connections: u64, per_shard: u64, cores: u64) -> Shape {
    let shards = if fd_per_connection { connections.div_ceil(per_shard.max(1)).max(1) } else { 1 };
    Shape { shards, workers_per_shard: (cores / shards).max(1) }
}

/// A started server.
pub struct RunningServer {
    pub name: String,
    pub addr: SocketAddr,
    pub shape: Shape,
    pub startup_seconds: f64,
    pub accepting_seconds: Option<f64>,
    processes: Vec<ChildProcess>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

/// How it stopped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stopped {
    pub seconds: f64,
    pub clean: bool,
    pub exits: Vec<String>,
}

/// Whether a line says the process accepts connections: the contract's `READY <ip:port>`, or
/// `c2m serve`'s banner (its first line, printed once its listeners are bound).
pub fn is_ready_line(line: &str) -> bool {
    line.starts_with("READY ") || line.contains(": listening on ")
}

impl RunningServer {
    /// Starts `shape.shards` processes of `server` on one free loopback port, sized for
    /// `connections`, and waits until each says it is ready.
    pub fn start(server: &Server, shape: Shape, connections: u64) -> anyhow::Result<RunningServer> {
        let port = free_port().context("finding a free port")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().context("listen address")?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<usize>();
        let spawned = Instant::now();
        let probe = spawn_accept_probe(addr, spawned);
        let mut running = RunningServer {
            name: server.name.clone(),
            addr,
            shape,
            startup_seconds: 0.0,
            accepting_seconds: None,
            processes: Vec::new(),
            stderr_tail,
        };
        for shard in 0..shape.shards as usize {
            let mut cmd = command(server, addr, shape.workers_per_shard, connections / shape.shards + 1);
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let (process, mut handle) = ChildProcess::spawn("server", &mut cmd)
                .with_context(|| format!("starting {}", server.bin.display()))?;
            running.processes.push(process);
            let label = if shape.shards > 1 { format!("{}[{shard}]", server.name) } else { server.name.clone() };
            if let Some(err) = handle.stderr.take() {
                let (tail, label) = (running.stderr_tail.clone(), label.clone());
                read_lines(err, move |line| {
                    println!("  {label}: {line}");
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_TAIL {
                            t.pop_front();
                        }
                        t.push_back(format!("{label}: {line}"));
                    }
                });
            }
            let out = handle.stdout.take().context("the server's stdout")?;
            let tx = ready_tx.clone();
            let mut ready = false;
            read_lines(out, move |line| {
                if !ready && is_ready_line(&line) {
                    ready = true;
                    let _ = tx.send(shard);
                } else {
                    println!("  {label}: {line}");
                }
            });
        }
        drop(ready_tx);
        running.wait_ready(spawned, &ready_rx)?;
        running.accepting_seconds = probe.join().ok().flatten();
        Ok(running)
    }

    fn wait_ready(&mut self, spawned: Instant, ready: &mpsc::Receiver<usize>) -> anyhow::Result<()> {
        let deadline = spawned + START_TIMEOUT;
        let mut pending = self.processes.len();
        while pending > 0 {
            match ready.recv_timeout(Duration::from_millis(50)) {
                Ok(_) => pending -= 1,
                Err(RecvTimeoutError::Timeout) => {
                    for p in &mut self.processes {
                        if let Some(exit) = p.try_reap()? {
                            bail!("{} ended before it was ready ({exit}):\n{}", self.name, self.stderr_tail());
                        }
                    }
                    if Instant::now() >= deadline {
                        bail!("{} was not ready within {START_TIMEOUT:?}:\n{}", self.name, self.stderr_tail());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Let the stderr readers catch up before quoting them.
                    std::thread::sleep(Duration::from_millis(100));
                    bail!("{} closed its stdout before it was ready:\n{}", self.name, self.stderr_tail());
                }
            }
        }
        self.startup_seconds = spawned.elapsed().as_secs_f64();
        Ok(())
    }

    /// The PIDs of its processes.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.pid).collect()
    }

    /// CPU time of every process and their descendants so far.
    pub fn cpu(&self) -> CpuTimes {
        let mut total = CpuTimes::default();
        for pid in process_tree(&self.pids()) {
            if let Ok(c) = process::cpu_times(pid) {
                total.user_seconds += c.user_seconds;
                total.system_seconds += c.system_seconds;
            }
        }
        total
    }

    /// Resident memory of every process and their descendants now.
    pub fn memory(&self) -> ProcessMemory {
        let mut total = ProcessMemory::default();
        for pid in process_tree(&self.pids()) {
            if let Ok(m) = process::memory(pid) {
                total.rss += m.rss;
                total.pss += m.pss;
                total.anon += m.anon;
            }
        }
        total
    }

    /// Whether a process has ended (it should not have, while the load runs).
    pub fn ended(&mut self) -> Option<String> {
        let ended = self.processes.iter_mut().find_map(|p| Some((p.pid, p.try_reap().ok()??)));
        ended.map(|(pid, exit)| format!("{} (pid {pid}) ended: {exit}\n{}", self.name, self.stderr_tail()))
    }

    /// SIGTERM to every process at once; timed to the last exit (SIGKILL after the grace).
    pub fn stop(&mut self) -> Stopped {
        let sent = Instant::now();
        for p in &self.processes {
            p.signal(Signal::SIGTERM);
        }
        let mut killed = false;
        loop {
            let all = self.processes.iter_mut().all(|p| p.try_reap().ok().flatten().is_some() || p.exit().is_some());
            if all {
                break;
            }
            if !killed && sent.elapsed() >= STOP_GRACE {
                killed = true;
                for p in &self.processes {
                    p.signal(Signal::SIGKILL);
                }
            }
            if sent.elapsed() >= STOP_GRACE + Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let seconds = sent.elapsed().as_secs_f64();
        let exits: Vec<String> =
            self.processes.iter().map(|p| p.exit().map_or_else(|| "not reaped".into(), |e| e.to_string())).collect();
        let clean = !killed && self.processes.iter().all(|p| p.exit().is_some_and(|e| e.success()));
        Stopped { seconds, clean, exits }
    }

    pub fn stderr_tail(&self) -> String {
        self.stderr_tail.lock().map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }
}

/// The command that starts one process of `server`.
fn command(server: &Server, addr: SocketAddr, workers: u64, sessions: u64) -> Command {
    let mut cmd = Command::new(&server.bin);
    match server.launch {
        Launch::C2m => {
            cmd.args(["serve", "--listen", &addr.to_string(), "--workers", &workers.to_string()])
                .args(["--max-sessions", &max_sessions(sessions).to_string()]);
        }
        Launch::Peer => {
            cmd.args(["--listen", &addr.to_string(), "--workers", &workers.to_string()]);
        }
    }
    cmd
}

/// From `spawned`, tries a TCP connect every millisecond until one is accepted (at most
/// [`START_TIMEOUT`]); the connection is closed at once. Returns the seconds it took.
fn spawn_accept_probe(addr: SocketAddr, spawned: Instant) -> std::thread::JoinHandle<Option<f64>> {
    std::thread::spawn(move || {
        while spawned.elapsed() < START_TIMEOUT {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Some(spawned.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    })
}

/// `roots` and every process descended from them, from /proc/*/stat's parent fields.
pub fn process_tree(roots: &[u32]) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|t| parse_ppid(&t)) {
                parent_of.push((pid, ppid));
            }
        }
    }
    descendants(roots, &parent_of)
}

/// `roots` and their descendants in a (pid, parent) list.
fn descendants(roots: &[u32], parent_of: &[(u32, u32)]) -> Vec<u32> {
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for &(pid, ppid) in parent_of {
            if ppid == parent && !out.contains(&pid) {
                out.push(pid);
            }
        }
        i += 1;
    }
    out
}

/// Field 4 of /proc/PID/stat (counted after the command name's last `)`).
fn parse_ppid(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_cores() {
        assert_eq!(shape(false, 1_000_000, 18_000, 2), Shape { shards: 1, workers_per_shard: 2 });
        assert_eq!(shape(true, 10_000, 18_000, 2), Shape { shards: 1, workers_per_shard: 2 });
        assert_eq!(shape(true, 36_001, 18_000, 2), Shape { shards: 3, workers_per_shard: 1 });
        assert_eq!(shape(true, 36_000, 18_000, 4), Shape { shards: 2, workers_per_shard: 2 });
    }

    #[test]
    fn readiness_lines() {
        assert!(is_ready_line("READY 127.0.0.1:7700"));
        assert!(is_ready_line("c2m serve: listening on 127.0.0.1:7700 | 2 workers"));
        assert!(!is_ready_line("starting"));
    }

    #[test]
    fn tree_from_parents() {
        let list = [(10, 1), (11, 10), (12, 11), (13, 1), (14, 10)];
        assert_eq!(descendants(&[10], &list), [10, 11, 14, 12]);
        assert_eq!(parse_ppid("42 (a (b) c) S 7 42 42 0"), Some(7));
        assert!(process_tree(&[std::process::id()]).contains(&std::process::id()));
    }
}
