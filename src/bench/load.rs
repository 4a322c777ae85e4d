//! The `c2m load` child: its command line, and its `--events` lines turned into [`Event`]s on a
//! channel (text on its stdout and all of its stderr are passed through).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};

use anyhow::Context;

use super::child::{ChildProcess, read_lines};
use super::progress::Progress;
use super::scenario::{HumanDuration, LoadSettings, Workload};
use crate::schema::load::Event;

/// What the load is asked to do.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadPlan {
    pub server: SocketAddr,
    pub connections: u64,
    pub connect_rate: u64,
    pub workload: Workload,
    pub ping_interval: HumanDuration,
    pub duration: HumanDuration,
    pub hold: HumanDuration,
    pub size: Option<u64>,
    pub rate: Option<u64>,
    pub in_flight: Option<u64>,
    /// Where it writes its report (read back, then removed).
    pub json: PathBuf,
    /// Where it writes its HdrHistogram log (beside the result).
    pub hlog: PathBuf,
    pub keep_free: u64,
    /// The data plane's flags (`--dataplane xdp --iface .. --netns ..`), none for the kernel's.
    pub dataplane_args: Vec<String>,
}

impl LoadPlan {
    pub fn new(
        server: SocketAddr,
        connections: u64,
        s: &LoadSettings,
        json: PathBuf,
        hlog: PathBuf,
        keep_free: u64,
    ) -> LoadPlan {
        LoadPlan {
            server,
            connections,
            connect_rate: s.connect_rate.0,
            workload: s.workload,
            ping_interval: s.ping_interval,
            duration: s.duration,
            hold: s.hold,
            size: s.size.map(|b| b.0),
            rate: s.rate.map(|r| r.0),
            in_flight: s.in_flight.map(|n| n.0),
            json,
            hlog,
            keep_free,
            dataplane_args: Vec::new(),
        }
    }

    /// `c2m load`'s arguments (after the program name).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "load".into(),
            "--server".into(),
            self.server.to_string(),
            "-c".into(),
            self.connections.to_string(),
            "--connect-rate".into(),
            self.connect_rate.to_string(),
            "--workload".into(),
            self.workload.name().into(),
            "--ping-interval".into(),
            self.ping_interval.to_string(),
            "--duration".into(),
            self.duration.to_string(),
            "--hold".into(),
            self.hold.to_string(),
        ];
        if let Some(size) = self.size {
            a.extend(["--size".into(), size.to_string()]);
        }
        if let Some(rate) = self.rate {
            a.extend(["--rate".into(), rate.to_string()]);
        }
        if let Some(n) = self.in_flight {
            a.extend(["--in-flight".into(), n.to_string()]);
        }
        a.extend(self.dataplane_args.iter().cloned());
        a.extend(["--json".into(), self.json.display().to_string(), "--hlog".into(), self.hlog.display().to_string()]);
        // `c2m bench` has checked the fit already, with its own --results-dir.
        a.extend(followed_args(self.keep_free));
        a
    }
}

/// The arguments every `c2m load` a parent follows ends with: no live line, JSON events on
/// stdout, the MemFree guard, and `--force` (the parent has done its own memory check).
pub fn followed_args(keep_free: u64) -> [String; 5] {
    ["--no-progress".into(), "--events".into(), "--keep-free".into(), keep_free.to_string(), "--force".into()]
}

pub struct LoadChild {
    pub process: ChildProcess,
    /// Its events in order; disconnected once its stdout closes.
    pub events: Receiver<Event>,
}

impl LoadChild {
    pub fn start(exe: &Path, plan: &LoadPlan, progress: &Progress) -> anyhow::Result<LoadChild> {
        let mut cmd = Command::new(exe);
        cmd.args(plan.args()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let (process, mut handle) =
            ChildProcess::spawn("c2m load", &mut cmd).with_context(|| format!("starting {} load", exe.display()))?;
        if let Some(err) = handle.stderr.take() {
            let out = progress.clone();
            read_lines(err, move |line| out.println(&line));
        }
        let stdout = handle.stdout.take().context("c2m load's stdout")?;
        let (tx, events) = mpsc::channel();
        let out = progress.clone();
        read_lines(stdout, move |line| match parse_event(&line) {
            Some(event) => {
                let _ = tx.send(event);
            }
            None if line.trim().is_empty() => {}
            None => out.println(&format!("load: {line}")),
        });
        Ok(LoadChild { process, events })
    }
}

/// An `--events` line, or `None` for any other text.
pub fn parse_event(line: &str) -> Option<Event> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    serde_json::from_str(line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::load::RunStatus;
    use std::time::Duration;

    #[test]
    fn command_line() {
        let plan = LoadPlan {
            server: "127.0.0.1:7700".parse().unwrap(),
            connections: 10_000,
            connect_rate: 0,
            workload: Workload::Ping,
            ping_interval: HumanDuration(Duration::from_secs(1)),
            duration: HumanDuration(Duration::from_millis(1500)),
            hold: HumanDuration(Duration::ZERO),
            size: None,
            rate: Some(500),
            in_flight: None,
            json: "/tmp/l.json".into(),
            hlog: "results/smoke/x.hlog".into(),
            keep_free: 2 << 30,
            dataplane_args: Vec::new(),
        };
        assert_eq!(
            plan.args().join(" "),
            "load --server 127.0.0.1:7700 -c 10000 --connect-rate 0 --workload ping --ping-interval 1s \
             --duration 1500ms --hold 0s --rate 500 --json /tmp/l.json --hlog results/smoke/x.hlog \
             --no-progress --events --keep-free 2147483648 --force"
        );
    }

    #[test]
    fn events_and_text() {
        let phase = parse_event(r#"{"event":"phase","name":"messages","t":3.5,"established":10000}"#).unwrap();
        assert_eq!(phase, Event::Phase { name: "messages".into(), t: 3.5, established: 10_000 });
        let done = parse_event(r#"{"event":"done","status":"aborted","abort_reason":"MemFree"}"#).unwrap();
        assert_eq!(done, Event::Done { status: RunStatus::Aborted, abort_reason: Some("MemFree".into()) });
        let sample = r#"{"event":"sample","t":1.0,"established":5,"connect_rate":5.0,"msg_rate":0.0,"p50_us":0.0,"p99_us":0.0,"errors":0,"mem_free":1}"#;
        assert!(matches!(parse_event(sample), Some(Event::Sample(s)) if s.established == 5));
        assert_eq!(parse_event("c2m load: 10,000 connections"), None);
    }
}
