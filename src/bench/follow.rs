//! Following a running load: its events (phases, samples, done), a system memory sample and a
//! progress line every second, the `loaded` measurement once the message phase has settled, and
//! the stops: MemFree below the floor, a signal to the bench, the server dying, the load running
//! far past its expected end. Every stop is SIGTERM to the load, then SIGKILL 60 s later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::Signal;

use super::child::ChildProcess;
use super::load::LoadChild;
use super::measure::{self, Held};
use super::progress::{Progress, Status};
use super::{server, signals};
use crate::host::process::Exit;
use crate::host::{memory, process, sockets};
use crate::schema::bench::SystemMemory;
use crate::schema::load::{Event, Phase, RunStatus, Sample};
use crate::transport::DataPlaneName;
use crate::units::human_bytes;

const TICK: Duration = Duration::from_secs(1);
/// How often the load is checked for having exited between ticks.
const POLL: Duration = Duration::from_millis(100);
/// From the start of the message phase to the `loaded` measurement: the last connects' and
/// first messages' allocations settle.
const SETTLE: Duration = Duration::from_secs(3);
/// From SIGTERM to SIGKILL for the load: it closes its connections and writes its report.
const STOP_GRACE: Duration = Duration::from_secs(60);
/// From SIGKILL to giving up on reaping it.
const KILL_GRACE: Duration = Duration::from_secs(15);

/// What following the load found out.
#[derive(Default)]
pub struct Followed {
    /// Memory once a second over the run.
    pub timeline: Vec<SystemMemory>,
    /// The measurement while the message phase ran (or at its end if it was shorter than the
    /// settle time).
    pub settled: Option<Held>,
    /// The most connections measured before the message phase, for runs that never got there.
    pub early: Option<Held>,
    /// The load's RSS when it began connecting.
    pub load_rss_start: u64,
    pub reached_messages: bool,
    /// Why the bench stopped the load, if it did.
    pub stop_reason: Option<String>,
    /// The load's `done` event.
    pub done: Option<(RunStatus, Option<String>)>,
    pub samples: Vec<Sample>,
    pub phases: Vec<Phase>,
    pub events_seen: u64,
    /// The server's metrics when the load began closing (kept in case the scrape after the
    /// run fails).
    pub metrics_at_close: Option<BTreeMap<String, f64>>,
}

pub struct Follower<'a> {
    pub started: Instant,
    pub target: u64,
    pub keep_free: u64,
    /// Past this (from the bench's start) the load is stopped.
    pub watchdog: Duration,
    /// The server's /metrics address.
    pub metrics: SocketAddr,
    /// The address it serves on (its port names the run's sockets).
    pub listen: SocketAddr,
    /// The data plane: on xdp the connections are c2m's TCP's, counted by the server.
    pub dataplane: DataPlaneName,
    pub progress: &'a Progress,
    pub out: Followed,
    established: u64,
    phase: String,
    messages_at: Option<Instant>,
    term_sent: Option<Instant>,
    kill_sent: Option<Instant>,
    signals_seen: u32,
    warned_measure: bool,
}

impl<'a> Follower<'a> {
    pub fn new(
        started: Instant,
        target: u64,
        keep_free: u64,
        watchdog: Duration,
        metrics: SocketAddr,
        listen: SocketAddr,
        progress: &'a Progress,
    ) -> Follower<'a> {
        Follower {
            started,
            target,
            keep_free,
            watchdog,
            metrics,
            listen,
            dataplane: DataPlaneName::Kernel,
            progress,
            out: Followed::default(),
            established: 0,
            phase: "starting".into(),
            messages_at: None,
            term_sent: None,
            kill_sent: None,
            signals_seen: 0,
            warned_measure: false,
        }
    }

    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Follows `load` until it has exited (and is reaped); `server` is watched too.
    pub fn follow(&mut self, load: &mut LoadChild, server: &mut ChildProcess) -> anyhow::Result<Exit> {
        let server_pid = server.pid;
        let mut next_tick = Instant::now();
        let mut stdout_open = true;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now()).min(POLL);
            if stdout_open {
                match load.events.recv_timeout(wait) {
                    Ok(event) => self.on_event(event, server_pid, Some(load.process.pid)),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => stdout_open = false,
                }
            } else {
                std::thread::sleep(wait);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(load, server);
                next_tick = (next_tick + TICK).max(now);
            }
            if self.messages_at.is_some_and(|at| at.elapsed() >= SETTLE) && self.out.settled.is_none() {
                self.out.settled = self.measure_held(server_pid, load.process.pid);
            }
            if let Some(exit) = load.process.try_reap()? {
                // Its last lines may still be in the pipe.
                let until = Instant::now() + Duration::from_secs(2);
                while let Ok(event) = load.events.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    self.on_event(event, server_pid, None);
                }
                return Ok(exit);
            }
            if self.kill_sent.is_some_and(|at| at.elapsed() > KILL_GRACE) {
                bail!("c2m load (pid {}) did not end {KILL_GRACE:?} after SIGKILL", load.process.pid);
            }
        }
    }

    /// Handles one event; `load_pid` is `None` once the load is reaped (nothing to measure).
    fn on_event(&mut self, event: Event, server_pid: u32, load_pid: Option<u32>) {
        self.out.events_seen += 1;
        match event {
            Event::Phase { name, t, established } => {
                self.established = established;
                if let Some(last) = self.out.phases.last_mut() {
                    last.end = t;
                }
                self.out.phases.push(Phase { name: name.clone(), start: t, end: t });
                if name == "close" {
                    self.out.metrics_at_close = server::scrape_totals(self.metrics).ok();
                }
                if let Some(pid) = load_pid {
                    match name.as_str() {
                        "connect" => self.out.load_rss_start = process::memory(pid).map(|m| m.rss).unwrap_or(0),
                        "messages" => {
                            self.out.reached_messages = true;
                            self.messages_at = Some(Instant::now());
                        }
                        // The message phase was shorter than the settle time: measure before the
                        // connections go.
                        "hold" | "drain" | "close" if self.out.reached_messages && self.out.settled.is_none() => {
                            self.out.settled = self.measure_held(server_pid, pid);
                        }
                        "close" => self.measure_early(server_pid, pid),
                        _ => {}
                    }
                }
                self.phase = name;
            }
            Event::Sample(sample) => {
                self.established = sample.established;
                self.out.samples.push(sample);
            }
            Event::Done { status, abort_reason } => self.out.done = Some((status, abort_reason)),
        }
    }

    /// The `loaded` measurement, with the server's and the kernel's own counts at the same
    /// moment (for the cross-checks).
    fn measure_held(&mut self, server_pid: u32, load_pid: u32) -> Option<Held> {
        let mut held = self.measure(server_pid, load_pid)?;
        if self.dataplane == DataPlaneName::Kernel {
            held.kernel_sockets = sockets::established_on_port(self.listen).ok().map(|c| c.total());
        }
        match server::scrape_totals(self.metrics) {
            Ok(m) => {
                held.server_sessions = m.get(server::SESSIONS_ACTIVE).map(|&v| v as u64);
                if self.dataplane == DataPlaneName::Xdp {
                    held.xdp_connections = m.get(server::TCP_CONNECTIONS).map(|&v| v as u64);
                }
            }
            Err(e) => self.progress.println(&format!("c2m bench: the server's sessions at the hold: {e:#}")),
        }
        Some(held)
    }

    fn measure(&mut self, server_pid: u32, load_pid: u32) -> Option<Held> {
        match measure::take(self.t(), self.established, server_pid, load_pid) {
            Ok(held) => Some(held),
            Err(e) => {
                if !self.warned_measure {
                    self.warned_measure = true;
                    self.progress.println(&format!("c2m bench: measuring memory failed: {e}"));
                }
                None
            }
        }
    }

    /// Before the message phase: keep the measurement with the most connections, in case the
    /// run never gets further.
    fn measure_early(&mut self, server_pid: u32, load_pid: u32) {
        let best = self.out.early.as_ref().map_or(0, |h| h.established);
        if !self.out.reached_messages
            && self.established > best
            && let Some(held) = self.measure(server_pid, load_pid)
        {
            self.out.early = Some(held);
        }
    }

    /// Asks the load to stop (once), noting why.
    fn stop_load(&mut self, load: &ChildProcess, reason: String) {
        if self.term_sent.is_none() {
            self.progress.println(&format!("c2m bench: {reason}: stopping the load"));
            self.out.stop_reason.get_or_insert(reason);
            load.signal(Signal::SIGTERM);
            self.term_sent = Some(Instant::now());
        }
    }

    fn kill_load(&mut self, load: &ChildProcess, why: &str) {
        if self.kill_sent.is_none() {
            self.progress.println(&format!("c2m bench: {why}: killing the load (SIGKILL)"));
            load.signal(Signal::SIGKILL);
            self.kill_sent = Some(Instant::now());
        }
    }

    fn tick(&mut self, load: &mut LoadChild, server: &mut ChildProcess) {
        let t = self.t();
        let mem = memory::system_memory(t);
        if let Ok(m) = &mem {
            self.out.timeline.push(m.clone());
            if m.mem_free < self.keep_free {
                let reason = format!(
                    "MemFree fell to {}, below the {} that must stay free (--keep-free)",
                    human_bytes(m.mem_free as f64),
                    human_bytes(self.keep_free as f64)
                );
                self.stop_load(&load.process, reason);
            }
        }
        if let Some((signal, count)) = signals::received()
            && count > self.signals_seen
        {
            self.signals_seen = count;
            if self.term_sent.is_none() {
                self.stop_load(&load.process, format!("interrupted by {signal}"));
            } else {
                self.kill_load(&load.process, &format!("{signal} again"));
            }
        }
        if let Ok(Some(exit)) = server.try_reap() {
            self.stop_load(&load.process, format!("c2m serve ended during the run ({exit})"));
        }
        if self.started.elapsed() > self.watchdog {
            self.stop_load(&load.process, format!("the run went past {:?}, twice its expected length", self.watchdog));
        }
        if self.term_sent.is_some_and(|at| at.elapsed() > STOP_GRACE) {
            self.kill_load(&load.process, &format!("no exit {STOP_GRACE:?} after SIGTERM"));
        }
        if !self.out.reached_messages && load.process.exit().is_none() {
            self.measure_early(server.pid, load.process.pid);
        }
        let last = self.out.samples.last().cloned().unwrap_or_default();
        let mem_free = mem.map(|m| m.mem_free).unwrap_or(last.mem_free);
        self.progress.update(&Status {
            phase: self.phase.clone(),
            target: self.target,
            sample: Sample { t, established: self.established, mem_free, ..last },
        });
    }
}
