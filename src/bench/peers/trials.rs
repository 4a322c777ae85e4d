//! The three measurements of one server in one round, each with a fresh server:
//! echo throughput (closed loop), latency (open loop, well below saturation; the server is
//! then stopped with the connections held, which times its shutdown), and capacity (idle
//! connections until the memory budget is spent). The echo and latency trials let messages
//! flow unrecorded for a warm-up first; the capacity trial starts only once memory holds
//! still, and charges a connection what the steady slope says one more costs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::load_run::{self, LoadEnd, LoadSpec, Work};
use super::manifest::Server;
use super::server::{RunningServer, Shape, Stopped, shape};
use super::slope::{SlopeSample, connections_at_slope, steady_slope};
use crate::bench::measure::{Held, per_connection};
use crate::host::memory::{self, SettlePlan};
use crate::host::process::{self, CpuTimes, ProcessMemory};
use crate::schema::bench::SystemMemory;
use crate::schema::load::{Event, LoadReport};
use crate::schema::peers::{
    CapacityMeasurement, CapacitySample, EchoMeasurement, LatencyMeasurement, LoadOutcome, ServerRun,
};

/// Between a server's readiness and its baseline: its threads finish setting up.
const SETTLE: Duration = Duration::from_millis(500);
/// The latency run's hold, during which the server is stopped.
const LATENCY_HOLD: Duration = Duration::from_secs(1);
/// How long the capacity run's connections stay up when the budget is not reached.
const CAPACITY_IDLE: Duration = Duration::from_secs(2);
/// Less than any server here can cost per connection, both loopback ends included: the most
/// connections a budget is asked to hold is budget / this.
pub const MIN_BYTES_PER_CONNECTION: u64 = 2048;
/// At most this many processes of one sharded peer. At 18,000 connections each that is
/// 1,152,000 connections, which a 6 GiB budget reaches at 5.6 KB a connection: less than the
/// kernel alone takes here for the two loopback ends (about 8 KB).
pub const MAX_SHARDS: u64 = 64;
/// After a capacity run, waiting at most this long for the closed sockets to be freed.
const SOCKETS_GONE: Duration = Duration::from_secs(20);
/// Before a capacity run, MemFree must move less than this over [`STILL_FOR`] (what earlier
/// trials free late, sockets and exited processes, would otherwise come back during this one
/// and shrink its drop: rounds 2 and 3 of an earlier run saw MemFree fall 2.7-4.9 KB a
/// connection while Slab alone grew 9.1 KB), waiting at most `--peer-settle` for it.
const MEMORY_STILL: u64 = 8 << 20;
const STILL_FOR: Duration = Duration::from_secs(3);
/// A drift of MemFree at the start worth a note: this share of the budget over the connects.
const DRIFT_NOTE: f64 = 0.02;

/// What every measurement shares.
#[derive(Clone, Debug)]
pub struct Setup {
    pub exe: PathBuf,
    pub cores: u64,
    pub connections: u64,
    pub window: Duration,
    pub echo_size: u64,
    pub in_flight: u32,
    pub latency_rate: u64,
    pub budget: u64,
    pub keep_free_floor: u64,
    pub per_shard: u64,
    /// Unrecorded messages before the echo and latency windows.
    pub warmup: Duration,
    /// The longest wait for memory to hold still before a capacity trial.
    pub settle: Duration,
    /// Where the load writes its report (read back, then removed).
    pub load_json: PathBuf,
}

impl Setup {
    fn spec(
        &self,
        server: &RunningServer,
        connections: u64,
        work: Work,
        duration: Duration,
        hold: Duration,
        keep_free: u64,
    ) -> LoadSpec {
        // Idle connections send nothing to warm up.
        let warmup = if work == Work::Idle { Duration::ZERO } else { self.warmup };
        LoadSpec {
            server: server.addr,
            connections,
            work,
            warmup,
            duration,
            hold,
            keep_free,
            json: self.load_json.clone(),
        }
    }

    /// Refuses to start a load when MemFree is already at the floor.
    fn check_floor(&self) -> anyhow::Result<()> {
        let free = memory::read_meminfo().context("reading /proc/meminfo")?.mem_free;
        if free <= self.keep_free_floor {
            bail!("MemFree is {} B, at or below the floor of {} B", free, self.keep_free_floor);
        }
        Ok(())
    }
}

fn server_run(s: &RunningServer, stopped: &Stopped, held: u64, rss_start: u64) -> ServerRun {
    ServerRun {
        shards: s.shape.shards,
        workers_per_shard: s.shape.workers_per_shard,
        startup_seconds: s.startup_seconds,
        accepting_seconds: s.accepting_seconds,
        shutdown_seconds: stopped.seconds,
        shutdown_connections: held,
        clean_exit: stopped.clean,
        exits: stopped.exits.clone(),
        rss_start_bytes: rss_start,
    }
}

fn outcome(end: &LoadEnd) -> LoadOutcome {
    let r = &end.report;
    let mut reasons: Vec<String> = end.stopped.iter().cloned().collect();
    reasons.extend(r.abort_reason.iter().cloned());
    LoadOutcome {
        status: if reasons.is_empty() && r.status == crate::schema::load::RunStatus::Complete {
            "complete"
        } else {
            "aborted"
        }
        .into(),
        abort_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        established: r.connections.established,
        failed: r.connections.failed,
        lost: r.connections.lost,
        errors: r.errors.clone(),
    }
}

/// An echo or latency trial's outcome: it must hold every connection it asked for, or it
/// fell short (and gets no ratio: a rate over a third of the connections is not comparable).
fn whole_outcome(end: &LoadEnd) -> LoadOutcome {
    let mut o = outcome(end);
    let c = &end.report.connections;
    if o.status == "complete" && c.established < c.requested {
        o.status = "fell short".into();
        o.abort_reason = Some(format!(
            "{} of {} connections logged in",
            crate::units::thousands(c.established),
            crate::units::thousands(c.requested)
        ));
    }
    o
}

fn phase_seconds(report: &LoadReport, name: &str) -> Option<f64> {
    report.phases.iter().find(|p| p.name == name).map(|p| p.end - p.start)
}

fn cpu_sum(c: CpuTimes) -> f64 {
    c.user_seconds + c.system_seconds
}

/// Starts the server for `connections`, lets it settle, and reads its RSS before any load.
fn start_settled(server: &Server, sh: Shape, connections: u64) -> anyhow::Result<(RunningServer, u64)> {
    let srv = RunningServer::start(server, sh, connections)?;
    std::thread::sleep(SETTLE);
    let rss_start = srv.memory().rss;
    Ok((srv, rss_start))
}

/// Echo throughput: `connections` each keeping `in_flight` ECHOs outstanding for the window;
/// server CPU over the message phase from /proc/PID/stat.
pub fn echo(setup: &Setup, server: &Server) -> anyhow::Result<EchoMeasurement> {
    let sh = shape(server.fd_per_connection, setup.connections, setup.per_shard, setup.cores);
    let (mut srv, rss_start) = start_settled(server, sh, setup.connections)?;
    setup.check_floor()?;
    let spec = setup.spec(
        &srv,
        setup.connections,
        Work::Echo { size: setup.echo_size, in_flight: setup.in_flight },
        setup.window,
        Duration::ZERO,
        setup.keep_free_floor,
    );
    let mut start: Option<(f64, f64)> = None;
    let mut end: Option<(f64, f64)> = None;
    let load = load_run::run(&setup.exe, &spec, &format!("{} echo", server.name), |event, running| {
        if let Event::Phase { name, .. } = event {
            let now = || (cpu_sum(srv.cpu()), process::cpu_times(running.load_pid).map(cpu_sum).unwrap_or(0.0));
            if name == "messages" {
                start = Some(now());
            } else if start.is_some() && end.is_none() {
                end = Some(now());
            }
        }
        if let Some(why) = srv.ended() {
            running.stop.get_or_insert(why);
        }
    });
    let stopped = srv.stop();
    let load = load?;
    let (Some(start), Some(end)) = (start, end) else {
        bail!("the echo load never finished its message phase ({}): {:?}", load.exit, outcome(&load).abort_reason);
    };
    let window = phase_seconds(&load.report, "messages").unwrap_or(0.0);
    let rate = load.report.messages.rate_achieved;
    let server_cpu = end.0 - start.0;
    let messages = rate * window;
    Ok(EchoMeasurement {
        server: server_run(&srv, &stopped, 0, rss_start),
        load: whole_outcome(&load),
        window_seconds: window,
        messages_per_second: rate,
        server_cpu_seconds: server_cpu,
        load_cpu_seconds: end.1 - start.1,
        server_cpu_us_per_message: if messages > 0.0 { server_cpu / messages * 1e6 } else { 0.0 },
    })
}

/// Latency at a fixed open-loop PING rate; the server is stopped (SIGTERM) in the hold after
/// the messages, with the connections still up.
pub fn latency(setup: &Setup, server: &Server) -> anyhow::Result<LatencyMeasurement> {
    let sh = shape(server.fd_per_connection, setup.connections, setup.per_shard, setup.cores);
    let (mut srv, rss_start) = start_settled(server, sh, setup.connections)?;
    setup.check_floor()?;
    let spec = setup.spec(
        &srv,
        setup.connections,
        Work::Ping { rate: setup.latency_rate },
        setup.window,
        LATENCY_HOLD,
        setup.keep_free_floor,
    );
    let mut stopped: Option<(Stopped, u64)> = None;
    let load = load_run::run(&setup.exe, &spec, &format!("{} latency", server.name), |event, running| {
        if let Event::Phase { name, established, .. } = event
            && name == "hold"
            && stopped.is_none()
        {
            stopped = Some((srv.stop(), *established));
        }
        if stopped.is_none()
            && let Some(why) = srv.ended()
        {
            running.stop.get_or_insert(why);
        }
    });
    let (stopped, held) = match stopped {
        Some(s) => s,
        None => (srv.stop(), 0),
    };
    let load = load?;
    let rtt = &load.report.latency.rtt_corrected;
    let m = LatencyMeasurement {
        server: server_run(&srv, &stopped, held, rss_start),
        load: whole_outcome(&load),
        rate_requested: load.report.messages.rate_requested,
        rate_achieved: load.report.messages.rate_achieved,
        count: rtt.count,
        p50_us: rtt.p50,
        p99_us: rtt.p99,
        p999_us: rtt.p999,
        max_us: rtt.max,
        schedule_lag_p99_us: load.report.latency.schedule_lag.p99,
    };
    if m.count == 0 {
        bail!("the latency load measured no round trip ({}): {:?}", load.exit, m.load.abort_reason);
    }
    Ok(m)
}

/// One once-a-second sample of the capacity run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Point {
    /// Seconds since the load started.
    pub t: f64,
    pub established: u64,
    /// MemFree as the load read it with `established`.
    pub mem_free: u64,
    /// /proc/meminfo and sockstat as read here when the sample arrived (for the slab, socket
    /// buffer and unreclaimable parts).
    pub system: SystemMemory,
    pub server: ProcessMemory,
    pub load: ProcessMemory,
    /// Still connecting (not yet in the idle message phase).
    pub connecting: bool,
}

/// Connections established where the MemFree drop from `baseline` crossed `budget`,
/// interpolated between the samples (the baseline being 0 connections); `None` when the drop
/// never reached the budget.
pub fn connections_at_budget(baseline: u64, budget: u64, points: &[(u64, u64)]) -> Option<f64> {
    let mut before = (0u64, 0u64); // (established, drop)
    for &(established, mem_free) in points {
        let drop = baseline.saturating_sub(mem_free);
        if drop >= budget {
            if drop == before.1 {
                return Some(established as f64);
            }
            let frac = (budget - before.1) as f64 / (drop - before.1) as f64;
            return Some(before.0 as f64 + frac * (established as f64 - before.0 as f64));
        }
        before = (established, drop.max(before.1));
    }
    None
}

/// How many connections (and processes) a capacity run asks for: budget / the least a
/// connection can cost, for a sharded peer in at most [`MAX_SHARDS`] processes.
pub fn capacity_size(budget: u64, fd_per_connection: bool, per_shard: u64, cores: u64) -> (u64, Shape) {
    let most = (budget / MIN_BYTES_PER_CONNECTION).max(1);
    let count = if fd_per_connection { most.min(MAX_SHARDS * per_shard) } else { most };
    (count, shape(fd_per_connection, count, per_shard, cores))
}

/// Idle logged-in connections, opened as fast as the server takes them, until MemFree has
/// dropped by the budget (the load's `--keep-free` stops it), measured once a second.
pub fn capacity(setup: &Setup, server: &Server) -> anyhow::Result<CapacityMeasurement> {
    // The bench's own settling, without dropping page cache (the trials before this one ran
    // with it, as this one will).
    let plan = SettlePlan { drop_page_cache: false, window: STILL_FOR, tolerance: MEMORY_STILL, timeout: setup.settle };
    let settle = memory::settle(&plan).context("settling memory")?;
    let free_now = memory::read_meminfo().context("reading /proc/meminfo")?.mem_free;
    let budget_here = setup.budget.min(free_now.saturating_sub(setup.keep_free_floor));
    if budget_here == 0 {
        bail!("no budget left: MemFree is {free_now} B, the floor {} B", setup.keep_free_floor);
    }
    let (count, sh) = capacity_size(budget_here, server.fd_per_connection, setup.per_shard, setup.cores);
    let tcp_before = memory::read_sockstat().map(|s| s.inuse).unwrap_or(0);
    let (mut srv, rss_start) = start_settled(server, sh, count)?;
    let baseline = memory::system_memory(0.0).context("baseline memory")?;
    let keep_free = baseline.mem_free.saturating_sub(setup.budget).max(setup.keep_free_floor);
    let budget = baseline.mem_free.saturating_sub(keep_free);
    if budget == 0 {
        srv.stop();
        bail!("no budget left once the server started: MemFree {} B", baseline.mem_free);
    }
    let spec = setup.spec(&srv, count, Work::Idle, CAPACITY_IDLE, Duration::ZERO, keep_free);
    let mut points: Vec<Point> = Vec::new();
    let mut connecting = true;
    let mut closing = false;
    let load = load_run::run(&setup.exe, &spec, &format!("{} capacity", server.name), |event, running| {
        match event {
            Event::Phase { name, .. } => {
                connecting = name == "connect";
                closing |= name == "close" || name == "drain" || name == "hold";
            }
            Event::Sample(s) if !closing => points.push(Point {
                t: s.t,
                established: s.established,
                mem_free: s.mem_free,
                system: memory::system_memory(s.t).unwrap_or_default(),
                server: srv.memory(),
                load: process::memory(running.load_pid).unwrap_or_default(),
                connecting,
            }),
            _ => {}
        }
        if let Some(why) = srv.ended() {
            running.stop.get_or_insert(why);
        }
    });
    let stopped = srv.stop();
    wait_sockets_gone(tcp_before);
    let load = load?;
    let Some(last) = points.iter().rev().find(|p| p.established > 0).cloned() else {
        bail!("no sample with connections established ({}): {:?}", load.exit, outcome(&load).abort_reason);
    };
    let pairs: Vec<(u64, u64)> = points.iter().map(|p| (p.established, p.mem_free)).collect();
    let at_budget = connections_at_budget(baseline.mem_free, budget, &pairs);
    let slope = steady_slope(&slope_samples(&points, baseline.mem_free, &baseline, rss_start));
    let by_slope = slope.as_ref().and_then(|s| connections_at_slope(budget, s));
    // MemFree as the load read it, with the count it read; the other parts as read here.
    let held = Held {
        memory: SystemMemory { mem_free: last.mem_free, ..last.system.clone() },
        established: last.established,
        server: last.server,
        load: last.load,
        server_sessions: None,
        kernel_sockets: None,
        xdp_connections: None,
    };
    let per = per_connection(&baseline, rss_start, 0, &held);
    // The load reports a rate only when its connect phase finished; a run the budget stopped
    // while connecting is timed by its last sample.
    let connect_rate = if load.report.connections.connect_rate_achieved > 0.0 {
        load.report.connections.connect_rate_achieved
    } else {
        points.iter().rev().find(|p| p.connecting && p.t > 0.0).map_or(0.0, |p| p.established as f64 / p.t)
    };
    Ok(CapacityMeasurement {
        server: server_run(&srv, &stopped, 0, rss_start),
        load: outcome(&load),
        baseline_mem_free: baseline.mem_free,
        keep_free,
        connections_requested: count,
        connections_in_budget: by_slope.or(at_budget).unwrap_or(load.report.connections.established_peak as f64),
        connections_at_crossing: at_budget,
        budget_reached: at_budget.is_some(),
        slope,
        settle_seconds: settle.seconds,
        settled: settle.settled,
        baseline_drift_bytes_per_second: settle.last_change_bytes as f64 / STILL_FOR.as_secs_f64(),
        established_peak: load.report.connections.established_peak,
        measured_connections: last.established,
        measured_mem_free_drop: baseline.mem_free.saturating_sub(last.mem_free),
        server_rss_bytes: last.server.rss,
        load_rss_bytes: last.load.rss,
        per_connection: per,
        connect_rate,
        samples: points
            .iter()
            .map(|p| CapacitySample {
                t: p.t,
                established: p.established,
                mem_free: p.mem_free,
                slab: p.system.slab,
                server_rss: p.server.rss,
                load_rss: p.load.rss,
            })
            .collect(),
    })
}

/// Waits (bounded) until the TCP sockets in use are back near `before`, so the next
/// measurement's baseline does not count this one's sockets being freed.
fn wait_sockets_gone(before: u64) {
    let deadline = Instant::now() + SOCKETS_GONE;
    while Instant::now() < deadline {
        match memory::read_sockstat() {
            Ok(s) if s.inuse <= before + 1000 => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(200)),
            Err(_) => return,
        }
    }
}

/// The samples as the slope fit takes them: MemFree's drop and each part's growth since the
/// baseline.
fn slope_samples(points: &[Point], baseline_free: u64, baseline: &SystemMemory, rss_start: u64) -> Vec<SlopeSample> {
    points
        .iter()
        .filter(|p| p.established > 0)
        .map(|p| SlopeSample {
            established: p.established,
            drop: baseline_free.saturating_sub(p.mem_free),
            slab: p.system.slab.saturating_sub(baseline.slab),
            server_rss: p.server.rss.saturating_sub(rss_start),
            load_rss: p.load.rss,
        })
        .collect()
}

/// A note when memory was still moving at the start of a capacity trial by enough to matter:
/// the drift over the connects, against the budget.
pub fn drift_note(m: &CapacityMeasurement) -> Option<String> {
    let budget = m.baseline_mem_free.saturating_sub(m.keep_free) as f64;
    let connecting = if m.connect_rate > 0.0 { m.measured_connections as f64 / m.connect_rate } else { 0.0 };
    let moved = m.baseline_drift_bytes_per_second.abs() * connecting;
    (budget > 0.0 && moved > DRIFT_NOTE * budget).then(|| {
        format!(
            "capacity: MemFree was still moving by {}/s when the trial began ({} over its connects, {:.0}% of the budget{})",
            crate::units::human_bytes(m.baseline_drift_bytes_per_second.abs()),
            crate::units::human_bytes(moved),
            moved / budget * 100.0,
            if m.settled { "" } else { "; it never held still within the wait" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_crossing_is_interpolated() {
        // 10 KB a connection: 1 MB budget = 100 connections, between the samples at 50 and 150.
        let baseline = 100_000_000;
        let points = [(50, baseline - 500_000), (150, baseline - 1_500_000)];
        let at = connections_at_budget(baseline, 1_000_000, &points).unwrap();
        assert!((at - 100.0).abs() < 1e-9, "{at}");
        // Crossed before the first sample: from zero connections.
        let at = connections_at_budget(baseline, 1_000_000, &[(400, baseline - 4_000_000)]).unwrap();
        assert!((at - 100.0).abs() < 1e-9, "{at}");
        assert_eq!(connections_at_budget(baseline, 1_000_000, &points[..1]), None);
    }

    #[test]
    fn a_drift_that_moves_the_budget_is_noted() {
        let gib = 1u64 << 30;
        let mut m = CapacityMeasurement {
            baseline_mem_free: 10 * gib,
            keep_free: 4 * gib,
            measured_connections: 600_000,
            connect_rate: 20_000.0,
            ..Default::default()
        };
        // 30 s of connects at 1 MiB/s: 30 MiB of 6 GiB, under 2%.
        m.baseline_drift_bytes_per_second = (1 << 20) as f64;
        assert_eq!(drift_note(&m), None);
        // At 8 MiB/s, 240 MiB: 4%.
        m.baseline_drift_bytes_per_second = -((8 << 20) as f64);
        let note = drift_note(&m).unwrap();
        assert!(note.contains("4% of the budget"), "{note}");
    }

    #[test]
    fn capacity_sizes() {
        let gib = 1u64 << 30;
        let (n, s) = capacity_size(gib, false, 18_000, 2);
        assert_eq!((n, s.shards, s.workers_per_shard), (gib / 2048, 1, 2));
        let (n, s) = capacity_size(gib / 4, true, 18_000, 2);
        assert_eq!((n, s.shards, s.workers_per_shard), (131_072, 8, 1));
        let (n, s) = capacity_size(6 * gib, true, 18_000, 2);
        assert_eq!((n, s.shards), (MAX_SHARDS * 18_000, MAX_SHARDS));
    }
}
