//! One `c2m load` run against a server of the comparison: its command line, its `--events`
//! handed to the measurement as they come, bounded in time, and its `--json` report read back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use crate::bench::child::{ChildProcess, read_lines};
use crate::bench::load::{followed_args, parse_event};
use crate::bench::signals;
use crate::schema::load::{Event, LoadReport};

/// From SIGTERM to SIGKILL for the load (it closes its connections and writes its report).
const STOP_GRACE: Duration = Duration::from_secs(60);

/// What the load does.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// Closed-loop ECHO of `size` bytes, `in_flight` outstanding per connection.
    Echo { size: u64, in_flight: u32 },
    /// PING at `rate` messages per second over all connections (open loop).
    Ping { rate: u64 },
    /// Log in and stay silent.
    Idle,
}

/// A load run's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadSpec {
    pub server: SocketAddr,
    pub connections: u64,
    pub work: Work,
    /// Unrecorded messages before the measured window.
    pub warmup: Duration,
    pub duration: Duration,
    pub hold: Duration,
    pub keep_free: u64,
    pub json: PathBuf,
}

impl LoadSpec {
    /// `c2m load`'s arguments (after the program name). Connects are unpaced (as fast as the
    /// server takes them, 1,024 in flight).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "load".into(),
            "--server".into(),
            self.server.to_string(),
            "-c".into(),
            self.connections.to_string(),
            "--connect-rate".into(),
            "0".into(),
        ];
        match &self.work {
            Work::Echo { size, in_flight } => {
                a.extend(["--workload".into(), "echo".into(), "--size".into(), size.to_string()]);
                a.extend(["--in-flight".into(), in_flight.to_string()]);
            }
            Work::Ping { rate } => a.extend(["--workload".into(), "ping".into(), "--rate".into(), rate.to_string()]),
            Work::Idle => a.extend(["--workload".into(), "idle".into()]),
        }
        a.extend([
            "--warmup".into(),
            format!("{}ms", self.warmup.as_millis()),
            "--duration".into(),
            format!("{}ms", self.duration.as_millis()),
            "--hold".into(),
            format!("{}ms", self.hold.as_millis()),
            "--json".into(),
            self.json.display().to_string(),
        ]);
        // The peers run checks the memory itself (the budget, the floor).
        a.extend(followed_args(self.keep_free));
        a
    }

    /// Longest the run may take before it is stopped: the connects at a slow 2,000 a second,
    /// the messages, the hold, and a minute for closing.
    pub fn watchdog(&self) -> Duration {
        Duration::from_secs_f64(self.connections as f64 / 2000.0)
            + self.warmup
            + self.duration
            + self.hold
            + Duration::from_secs(60)
    }
}

/// What the measurement's callback may ask of the run.
pub struct Running {
    pub load_pid: u32,
    /// Set by the callback to have the load stopped now (SIGTERM), with the reason.
    pub stop: Option<String>,
}

/// How the run ended.
pub struct LoadEnd {
    pub report: LoadReport,
    /// Why the run was stopped from outside (a signal to the bench, the watchdog, the callback).
    pub stopped: Option<String>,
    pub exit: String,
}

/// Runs the load; `on_event` sees every event as it arrives. Fails when the load wrote no report.
pub fn run(
    exe: &Path,
    spec: &LoadSpec,
    label: &str,
    mut on_event: impl FnMut(&Event, &mut Running),
) -> anyhow::Result<LoadEnd> {
    let _ = std::fs::remove_file(&spec.json);
    let mut cmd = Command::new(exe);
    cmd.args(spec.args()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let (mut child, mut handle) = ChildProcess::spawn("c2m load", &mut cmd).context("starting c2m load")?;
    let tag = label.to_string();
    if let Some(err) = handle.stderr.take() {
        read_lines(err, move |line| println!("  load ({tag}): {line}"));
    }
    let (tx, events) = mpsc::channel();
    let tag = label.to_string();
    read_lines(handle.stdout.take().context("c2m load's stdout")?, move |line| match parse_event(&line) {
        Some(event) => {
            let _ = tx.send(event);
        }
        None if line.trim().is_empty() => {}
        None => println!("  load ({tag}): {line}"),
    });

    let started = Instant::now();
    let watchdog = spec.watchdog();
    let mut running = Running { load_pid: child.pid, stop: None };
    let mut stopped: Option<String> = None;
    let mut term_at: Option<Instant> = None;
    let mut killed = false;
    let mut signals_seen = 0;
    loop {
        match events.recv_timeout(Duration::from_millis(50)) {
            Ok(event) => on_event(&event, &mut running),
            Err(RecvTimeoutError::Disconnected) => {
                if child.wait_for(Duration::from_millis(50))?.is_some() {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some((signal, count)) = signals::received()
            && count > signals_seen
        {
            signals_seen = count;
            running.stop.get_or_insert_with(|| format!("the bench got {signal:?}"));
            if count > 1 {
                child.signal(Signal::SIGKILL);
            }
        }
        if started.elapsed() > watchdog {
            running.stop.get_or_insert_with(|| format!("the load ran past {:.0} s", watchdog.as_secs_f64()));
        }
        if let Some(why) = running.stop.take()
            && term_at.is_none()
        {
            println!("  load ({label}): stopping it: {why}");
            stopped = Some(why);
            child.signal(Signal::SIGTERM);
            term_at = Some(Instant::now());
        }
        if let Some(at) = term_at
            && !killed
            && at.elapsed() > STOP_GRACE
        {
            killed = true;
            child.signal(Signal::SIGKILL);
        }
        if child.try_reap()?.is_some() {
            // Hand over the events still queued, then finish.
            while let Ok(event) = events.recv_timeout(Duration::from_millis(200)) {
                on_event(&event, &mut running);
            }
            break;
        }
    }
    let exit = child.exit().map(|e| e.to_string()).unwrap_or_else(|| "not reaped".into());
    let report = read_report(&spec.json).with_context(|| format!("c2m load ({label}) wrote no report ({exit})"));
    let _ = std::fs::remove_file(&spec.json);
    let report = report?;
    Ok(LoadEnd { report, stopped, exit })
}

fn read_report(path: &Path) -> anyhow::Result<LoadReport> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim().is_empty() {
        bail!("{} is empty", path.display());
    }
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let spec = LoadSpec {
            server: "127.0.0.1:7700".parse().unwrap(),
            connections: 10_000,
            work: Work::Echo { size: 64, in_flight: 1 },
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            hold: Duration::ZERO,
            keep_free: 1 << 30,
            json: "/tmp/x.json".into(),
        };
        assert_eq!(
            spec.args().join(" "),
            "load --server 127.0.0.1:7700 -c 10000 --connect-rate 0 --workload echo --size 64 --in-flight 1 \
             --warmup 2000ms --duration 10000ms --hold 0ms --json /tmp/x.json --no-progress --events --keep-free 1073741824 --force"
        );
        let ping = LoadSpec { work: Work::Ping { rate: 10_000 }, ..spec.clone() };
        assert!(ping.args().join(" ").contains("--workload ping --rate 10000 --warmup 2000ms"));
        let idle = LoadSpec { work: Work::Idle, ..spec };
        assert!(idle.args().join(" ").contains("--workload idle --warmup 2000ms"));
        assert_eq!(idle.watchdog(), Duration::from_secs(77));
    }
}
