//! The main thread of `c2m load`: starts the workers, moves the run through its phases, samples
//! once a second (live line, events, interval log, MemFree guard), and builds the report.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, bounded};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriter, IntervalLogWriterBuilder, Tag};

use super::LoadError;
use super::config::LoadConfig;
use super::conns::Conns;
use super::progress::Progress;
use super::stats::{Control, Interval, LoadStats, Phase, RunHistograms, WorkerOutcome};
use crate::engine::probe::probe;
use crate::engine::ring_set::{rings_needed, table_limit};
use crate::engine::{PoolConfig, RingConfig, WorkerPool};
use crate::host::signal::{block_stop_signals, wait_signal};
use crate::schema::load::*;
use crate::transport::DataPlane;
use crate::transport::kernel::{self, ConnectPlan, KernelConfig, KernelTransport};
use crate::transport::xdp::XdpTransport;

/// How long the sends stop before the close (when there is no hold) for the last replies.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Chat waits longer: deliveries and receipts follow the ACKs.
const CHAT_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Where the results go and how the run shows itself.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub json: Option<PathBuf>,
    pub hlog: Option<PathBuf>,
    /// A live line on stderr (a bar on a terminal).
    pub progress: bool,
    /// `Event` JSON lines on stdout, for a parent process.
    pub events: bool,
    /// Serve the run's live counters at http://ADDR/metrics.
    pub metrics: Option<std::net::SocketAddr>,
}

fn mem_free() -> u64 {
    crate::host::memory::read_meminfo().map(|m| m.mem_free).unwrap_or(u64::MAX)
}

fn sum(stats: &[Arc<LoadStats>], f: impl Fn(&LoadStats) -> u64) -> u64 {
    stats.iter().map(|s| f(s)).sum()
}

/// The workers, on one data plane or the other; both drive the same connections.
enum LoadPool {
    Kernel(WorkerPool<KernelTransport<Conns, LoadStats>>),
    /// With the steering program's link: detached when the run ends.
    Xdp(WorkerPool<XdpTransport<Conns, LoadStats>>, crate::xdp::XdpLink),
}

impl LoadPool {
    fn ended(&self) -> Option<usize> {
        match self {
            LoadPool::Kernel(p) => p.ended(),
            LoadPool::Xdp(p, _) => p.ended(),
        }
    }

    fn all_ended(&self) -> bool {
        match self {
            LoadPool::Kernel(p) => p.all_ended(),
            LoadPool::Xdp(p, _) => p.all_ended(),
        }
    }

    fn join(self) -> Vec<Result<Conns, crate::engine::EngineError>> {
        match self {
            LoadPool::Kernel(p) => p.join().into_iter().map(|r| r.map(|w| w.into_handler())).collect(),
            LoadPool::Xdp(p, _link) => p.join().into_iter().map(|r| r.map(|w| w.into_handler())).collect(),
        }
    }
}

struct Workers {
    pool: LoadPool,
    stats: Vec<Arc<LoadStats>>,
    intervals: Receiver<Interval>,
    rings: usize,
    files: u32,
}

fn start_workers(cfg: &Arc<LoadConfig>, control: &Arc<Control>) -> Result<Workers, LoadError> {
    let (interval_tx, intervals) = bounded(cfg.workers * 64);
    let stats: Vec<Arc<LoadStats>> = (0..cfg.workers).map(|_| Arc::new(LoadStats::default())).collect();
    let make = {
        let (cfg, control, stats) = (cfg.clone(), control.clone(), stats.clone());
        move |id: usize| Conns::new(id, cfg.clone(), control.clone(), stats[id].clone(), interval_tx.clone())
    };
    match &cfg.dataplane {
        DataPlane::Kernel => start_kernel(cfg, stats, intervals, make),
        DataPlane::Xdp(xdp) => start_xdp(cfg, xdp, stats, intervals, make),
    }
}

fn start_kernel(
    cfg: &Arc<LoadConfig>,
    stats: Vec<Arc<LoadStats>>,
    intervals: Receiver<Interval>,
    make: impl Fn(usize) -> Result<Conns, LoadError> + Send + Sync + 'static,
) -> Result<Workers, LoadError> {
    let files = cfg.files_per_ring.unwrap_or_else(table_limit);
    if files < 64 {
        return Err(LoadError::Config(format!("{files} fixed files per ring is too few (RLIMIT_NOFILE?)")));
    }
    // The load keeps no reserve: it picks every descriptor itself.
    let rings = rings_needed(cfg.connections_of(0) as usize, files, 0);
    if rings > crate::engine::token::MAX_RINGS {
        return Err(LoadError::Config(format!(
            "{rings} rings per worker needed; use more workers or raise RLIMIT_NOFILE"
        )));
    }
    let pool_cfg = PoolConfig {
        workers: cfg.workers,
        name: "c2m-load",
        // Worker i goes on the core after the server's first worker would, so on a small box the
        // two processes' busiest threads do not start on one core.
        core_offset: core_affinity::get_core_ids().map_or(0, |c| c.len() / 2),
        ring: RingConfig {
            sq_entries: super::config::SQ_ENTRIES,
            cq_entries: super::config::CQ_ENTRIES,
            files,
            recv_buffers: cfg.recv_buffers,
            recv_buffer_size: cfg.recv_buffer_size,
        },
        rings,
    };
    let (worker_cfg, worker_stats) = (cfg.clone(), stats.clone());
    let pool = WorkerPool::start(&pool_cfg, move |id, io, _shared| {
        let cfg = &worker_cfg;
        let conns = make(id).map_err(|e| e.to_string())?;
        let kernel_cfg = KernelConfig {
            recv: if cfg.recv_on_demand() { kernel::RecvArm::OnDemand } else { kernel::RecvArm::Multishot },
            slots: cfg.connections_of(id).max(1) as usize,
            listen: None,
            connect: Some(ConnectPlan {
                concurrency: Conns::concurrency(cfg) as usize,
                timeout: cfg.connect_timeout,
                max_rings: rings,
            }),
        };
        KernelTransport::new(io, kernel_cfg, conns, worker_stats[id].clone()).map_err(|e| e.to_string())
    })?;
    Ok(Workers { pool: LoadPool::Kernel(pool), stats, intervals, rings, files })
}

/// The xdp data plane: the steering program on the interface (replies from the target only),
/// an AF_XDP socket per worker on the queue of the same index, c2m's TCP opening from any
/// source address (nothing is configured in a kernel for them).
fn start_xdp(
    cfg: &Arc<LoadConfig>,
    xdp: &crate::transport::XdpSettings,
    stats: Vec<Arc<LoadStats>>,
    intervals: Receiver<Interval>,
    make: impl Fn(usize) -> Result<Conns, LoadError> + Send + Sync + 'static,
) -> Result<Workers, LoadError> {
    use crate::transport::xdp::XdpConfig;
    use crate::xdp::{Filter, Interface, XdpProgram};
    let config = |e: crate::xdp::XdpError| LoadError::Config(e.to_string());
    let std::net::SocketAddr::V4(target) = cfg.target else {
        return Err(LoadError::Config("the xdp data plane connects to IPv4 targets only".into()));
    };
    let iface = Interface::by_name(&xdp.iface).map_err(config)?;
    let peer_mac = crate::xdp::iface::neighbour_mac(*target.ip(), std::time::Duration::from_secs(2)).map_err(config)?;
    let program = Arc::new(XdpProgram::load(&[Filter::TcpFrom(target)], iface.rx_queues().max(1)).map_err(config)?);
    let link = program.attach(&iface, xdp.mode).map_err(config)?;
    let pool_cfg = PoolConfig {
        workers: cfg.workers,
        name: "c2m-loadx",
        core_offset: core_affinity::get_core_ids().map_or(0, |c| c.len() / 2),
        ring: crate::transport::xdp::POLL_RING,
        rings: 1,
    };
    let secret = crate::server::tcp_secret();
    let (worker_cfg, worker_stats, fault) = (cfg.clone(), stats.clone(), xdp.fault);
    let pool = WorkerPool::start(&pool_cfg, move |id, _io, _shared| {
        let cfg = &worker_cfg;
        let conns = make(id).map_err(|e| e.to_string())?;
        let slots = cfg.connections_of(id).max(1) as usize;
        let tcp = crate::tcp::Config {
            capacity: u32::try_from(slots + 1024).unwrap_or(u32::MAX),
            syn_retries: 6,
            // As on the kernel data plane, a connect not up within --connect-timeout fails.
            connect_timeout_ms: u32::try_from(cfg.connect_timeout.as_millis()).unwrap_or(u32::MAX),
            secret,
            ..crate::tcp::Config::default()
        };
        let xdp_cfg = XdpConfig {
            peer_mac: Some(peer_mac),
            slots,
            ..XdpConfig::on_queue(&iface, &program, id as u32, tcp, fault)?
        };
        XdpTransport::new(xdp_cfg, conns, worker_stats[id].clone()).map_err(|e| e.to_string())
    })?;
    Ok(Workers { pool: LoadPool::Xdp(pool, link), stats, intervals, rings: 1, files: 0 })
}

/// The interval log: HdrHistogram's format, values in nanoseconds.
type Hlog<'a> = IntervalLogWriter<'a, 'a, BufWriter<File>, V2DeflateSerializer>;

fn begin_hlog<'a>(
    out: &'a mut BufWriter<File>,
    serializer: &'a mut V2DeflateSerializer,
    started: SystemTime,
) -> Result<Hlog<'a>, LoadError> {
    IntervalLogWriterBuilder::new()
        .add_comment(
            "c2m load: values in ns; tags: connect = connect latency, rtt = round trip from the scheduled send \
             (corrected), rtt_uncorrected = from the send, ack / deliver / receipt = chat SEND scheduled to its \
             ACK, its DELIVER, its RECEIPT notice; every interval, the last partial one included",
        )
        .with_start_time(started)
        .with_max_value_divisor(1e6)
        .begin_log_with(out, serializer)
        .map_err(|e| LoadError::io("writing the interval log header", e))
}

fn write_interval(
    log: &mut Hlog<'_>,
    tag: &str,
    h: &Histogram<u64>,
    start: Duration,
    len: Duration,
) -> Result<(), LoadError> {
    if h.is_empty() {
        return Ok(());
    }
    log.write_histogram(h, start, len, Tag::new(tag))
        .map_err(|e| LoadError::io("writing the interval log", std::io::Error::other(e.to_string())))
}

/// The once-a-second view of the run.
struct Sampler {
    last_at: Instant,
    last_connected: u64,
    last_received: u64,
    interval: Interval,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Runs the load and returns what it measured; the JSON and interval log are written as asked.
pub fn run(mut cfg: LoadConfig, opts: &RunOptions) -> Result<LoadReport, LoadError> {
    cfg.validate()?;
    // The whole run lives in the namespace (workers are born in their creator's).
    let _netns = match &cfg.netns {
        Some(ns) => Some(crate::xdp::netns::enter(ns).map_err(|e| LoadError::Config(e.to_string()))?),
        None => None,
    };
    if let DataPlane::Xdp(xdp) = &cfg.dataplane {
        let iface = crate::xdp::Interface::by_name(&xdp.iface).map_err(|e| LoadError::Config(e.to_string()))?;
        cfg.workers = crate::transport::xdp::workers_for_queues(cfg.workers, iface.rx_queues());
    }
    probe()?;
    let signals = block_stop_signals().map_err(|e| LoadError::io("blocking SIGINT/SIGTERM", e.into()))?;
    if let Some(at) = cfg.start_at {
        wait_for_start(at, &signals)?;
    }

    let started_wall = SystemTime::now();
    let ledger = (cfg.workload == super::Workload::Chat).then(|| {
        let layout =
            crate::proto::GroupLayout { users: cfg.chat.users, groups: cfg.chat.groups, size: cfg.chat.group_size };
        Arc::new(super::chat::Ledger::new(
            cfg.first_user,
            cfg.run_connections,
            cfg.shard,
            layout,
            cfg.chat.group_fraction,
        ))
    });
    let control = Arc::new(Control::new(ledger.clone()));
    let cfg = Arc::new(cfg);
    let workers = start_workers(&cfg, &control)?;
    if let Some(addr) = opts.metrics {
        let render = super::metrics::render(workers.stats.clone(), control.clone());
        let bound = crate::stats::metrics_http::spawn(addr, render)
            .map_err(|e| LoadError::io(format!("metrics endpoint on {addr}"), e))?;
        eprintln!("c2m load: metrics at http://{bound}/metrics");
    }
    let mut hlog_out = match &opts.hlog {
        Some(path) => Some(BufWriter::new(
            File::create(path).map_err(|e| LoadError::io(format!("creating {}", path.display()), e))?,
        )),
        None => None,
    };
    let mut serializer = V2DeflateSerializer::new();
    let mut hlog = match hlog_out.as_mut() {
        Some(out) => Some(begin_hlog(out, &mut serializer, started_wall)?),
        None => None,
    };
    let mut progress = Progress::new(opts.progress, opts.events, cfg.connections);
    progress.phase("connect", 0.0, 0);
    let mut course = Course::new(&cfg);
    let mut sampler =
        Sampler { last_at: Instant::now(), last_connected: 0, last_received: 0, interval: Interval::new() };
    let stats = workers.stats.clone();
    let mut next_sample = Instant::now() + Duration::from_secs(1);
    loop {
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(100)) {
            course.abort(format!("interrupted by {sig:?}"));
        }
        if workers.pool.ended().is_some() {
            course.abort("a worker stopped early".into());
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            let sample =
                take_sample(&mut sampler, &stats, &workers.intervals, &mut hlog, &control, course.t(&control))?;
            if sample.mem_free < cfg.keep_free {
                course.abort(format!(
                    "MemFree fell to {} (below --keep-free {}) with {} connections established",
                    crate::units::human_bytes(sample.mem_free as f64),
                    crate::units::human_bytes(cfg.keep_free as f64),
                    sample.established
                ));
            }
            progress.sample(&sample);
            course.timeline.push(sample);
        }
        let current = control.phase();
        if let Some(next) = course.next_phase(current, &stats) {
            let name = course.enter(next, current, &stats, &control);
            progress.phase(name, course.t(&control), sum(&stats, |s| s.established.get()));
            control.set_phase(next);
        }
        if course.closing && workers.pool.all_ended() {
            break;
        }
    }

    let (histograms, errors, last_interval) = gather(workers.pool.join(), &mut course);
    if let Some(h) = hlog.as_mut() {
        // The last, partial second: what the workers had not published yet.
        let since = sampler.last_at.elapsed();
        collect_interval(&mut sampler, &workers.intervals, Some(&last_interval));
        log_interval(h, &sampler.interval, &control, since)?;
    }
    let report = course.report(
        &cfg,
        &stats,
        histograms,
        errors,
        ledger.as_deref(),
        params(&cfg, workers.rings, workers.files),
        started_wall,
        &control,
    );
    if matches!(cfg.dataplane, DataPlane::Xdp(_)) {
        warn_misrouted(stats.iter().map(|s| s.transport.no_connection.get()).sum(), cfg.connections);
    }
    drop(hlog);
    if let Some(mut out) = hlog_out {
        out.flush().map_err(|e| LoadError::io("writing the interval log", e))?;
    }
    if let Some(path) = &opts.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| LoadError::io("serializing the report", e.into()))?;
        std::fs::write(path, text + "\n").map_err(|e| LoadError::io(format!("writing {}", path.display()), e))?;
    }
    progress.done(&report);
    Ok(report)
}

/// Says so when many segments reached an xdp worker that holds no connection for them: a peer
/// that answers on another queue than the one it heard on (Linux over several queues hashes each
/// connection's replies by its own flow hash) sends replies to workers that did not open the
/// connection, which reset it. A few are strays after the close.
fn warn_misrouted(segments: u64, connections: u64) {
    if segments > connections / 100 {
        eprintln!(
            "c2m load: {} segments reached a worker with no connection for them (answered with RST). Many during the \
             connects mean the server replies on other queues than it was reached on (a Linux server over several \
             queues): give the interface one queue (C2M_QUEUES=1 scripts/netns.sh up)",
            crate::units::thousands(segments)
        );
    }
}

/// Sleeps until `at` (`--start-at`: the shards on several hosts start together); SIGINT or
/// SIGTERM ends the wait and the run.
fn wait_for_start(at: SystemTime, signals: &nix::sys::signal::SigSet) -> Result<(), LoadError> {
    match at.duration_since(SystemTime::now()) {
        Ok(wait) => {
            eprintln!("c2m load: starting in {:.1} s (--start-at)", wait.as_secs_f64());
            let until = Instant::now() + wait;
            while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                if let Some(sig) = wait_signal(signals, left.min(Duration::from_millis(200))) {
                    return Err(LoadError::Config(format!("interrupted by {sig:?} before --start-at")));
                }
            }
        }
        Err(late) => eprintln!("c2m load: --start-at passed {:.1} s ago: starting now", late.duration().as_secs_f64()),
    }
    Ok(())
}

/// Every worker's histograms and errors, merged; a worker that failed aborts the run.
fn gather(
    outcomes: Vec<Result<Conns, crate::engine::EngineError>>,
    course: &mut Course,
) -> (RunHistograms, BTreeMap<String, u64>, Interval) {
    let mut histograms = RunHistograms::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut rest = Interval::new();
    for outcome in outcomes {
        match outcome {
            Ok(conns) => {
                let WorkerOutcome { histograms: h, errors: e, last_interval } = conns.into_outcome();
                histograms.add(&h);
                rest.add(&last_interval);
                for (k, v) in e {
                    *errors.entry(k).or_insert(0) += v;
                }
            }
            Err(e) => course.abort(e.to_string()),
        }
    }
    (histograms, errors, rest)
}

/// The run's course through its phases: when each began and ended, why it stopped early, and
/// the figures taken at the transitions.
struct Course {
    workload: super::Workload,
    connections: u64,
    warmup: Duration,
    duration: Duration,
    hold: Duration,
    connect_limit: Duration,
    phases: Vec<crate::schema::load::Phase>,
    phase_started: Instant,
    timeline: Vec<Sample>,
    abort: Option<String>,
    closing: bool,
    peak: u64,
    at_end: u64,
    /// Replies received when the message phase began and ended.
    received_at: (u64, u64),
    connect_seconds: f64,
}

impl Course {
    fn new(cfg: &LoadConfig) -> Course {
        Course {
            workload: cfg.workload,
            connections: cfg.connections,
            warmup: cfg.warmup,
            duration: cfg.duration,
            hold: cfg.hold,
            connect_limit: cfg.connect_phase_limit(),
            phases: vec![crate::schema::load::Phase { name: "connect".into(), start: 0.0, end: 0.0 }],
            phase_started: Instant::now(),
            timeline: Vec::new(),
            abort: None,
            closing: false,
            peak: 0,
            at_end: 0,
            received_at: (0, 0),
            connect_seconds: 0.0,
        }
    }

    fn t(&self, control: &Control) -> f64 {
        control.base.elapsed().as_secs_f64()
    }

    /// Stops the run early (the first reason is kept); ignored once it is closing anyway.
    fn abort(&mut self, why: String) {
        if !self.closing {
            self.abort.get_or_insert(why);
        }
    }

    /// The phase to move to now, if any.
    fn next_phase(&mut self, current: Phase, stats: &[Arc<LoadStats>]) -> Option<Phase> {
        self.peak = self.peak.max(sum(stats, |s| s.established.get()));
        if self.closing {
            return None;
        }
        if self.abort.is_some() {
            return Some(Phase::Close);
        }
        let elapsed = self.phase_started.elapsed();
        match current {
            Phase::Connect => self.connect_over(stats, elapsed),
            Phase::Warmup => (elapsed >= self.warmup).then_some(Phase::Messages),
            Phase::Messages => (elapsed >= self.duration).then_some(Phase::Hold),
            // Without a hold, the sends stop for a moment before the close so the last replies
            // arrive instead of being counted unanswered.
            Phase::Hold if self.hold.is_zero() => self.drained(stats, elapsed).then_some(Phase::Close),
            Phase::Hold => (elapsed >= self.hold).then_some(Phase::Close),
            Phase::Close => None,
        }
    }

    /// Every connect resolved (on to the messages), or the connect phase ran out of time.
    fn connect_over(&mut self, stats: &[Arc<LoadStats>], elapsed: Duration) -> Option<Phase> {
        // A connection is resolved by its first login or a failure not tried again.
        let first_logins = sum(stats, |s| s.established_total.get() - s.relogins.get());
        let resolved = first_logins + sum(stats, |s| s.failed.get());
        if resolved >= self.connections {
            self.connect_seconds = elapsed.as_secs_f64();
            if first_logins == 0 {
                self.abort = Some("no connection was established (see errors)".into());
                return Some(Phase::Close);
            }
            return Some(if self.warmup.is_zero() { Phase::Messages } else { Phase::Warmup });
        }
        if elapsed > self.connect_limit {
            self.connect_seconds = elapsed.as_secs_f64();
            self.abort = Some(format!(
                "the connect phase did not finish within {:.0} s ({resolved} of {} connects resolved)",
                self.connect_limit.as_secs_f64(),
                self.connections
            ));
            return Some(Phase::Close);
        }
        None
    }

    /// Every message answered (chat: every delivery made and receipted), or the drain's limit.
    fn drained(&self, stats: &[Arc<LoadStats>], elapsed: Duration) -> bool {
        let chat = self.workload == super::Workload::Chat;
        let answered = sum(stats, |s| s.received.get()) >= sum(stats, |s| s.sent.get());
        // Every delivery the SENDs called for receipted (a RECEIPT follows its delivery, so this
        // is also "all delivered"; a shard's receipts come back for other shards' deliveries).
        let settled = !chat || sum(stats, |s| s.chat.receipted.get()) >= sum(stats, |s| s.chat.expected.get());
        let limit = if chat { CHAT_DRAIN_LIMIT } else { DRAIN_LIMIT };
        (answered && settled) || elapsed >= limit
    }

    /// Records the move from `current` to `next`; returns the new phase's name.
    fn enter(&mut self, next: Phase, current: Phase, stats: &[Arc<LoadStats>], control: &Control) -> &'static str {
        let now = self.t(control);
        if current == Phase::Messages {
            self.received_at.1 = sum(stats, |s| s.received.get());
        }
        if next == Phase::Messages {
            self.received_at.0 = sum(stats, |s| s.received.get());
        }
        if next == Phase::Close {
            self.at_end = sum(stats, |s| s.established.get());
            self.closing = true;
        }
        if let Some(last) = self.phases.last_mut() {
            last.end = now;
        }
        let name = match next {
            Phase::Connect => "connect",
            Phase::Warmup => "warmup",
            Phase::Messages => "messages",
            Phase::Hold if self.hold.is_zero() => "drain",
            Phase::Hold => "hold",
            Phase::Close => "close",
        };
        self.phases.push(crate::schema::load::Phase { name: name.into(), start: now, end: now });
        self.phase_started = Instant::now();
        name
    }

    /// The report: counts from the workers' counters, latencies from their histograms.
    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        cfg: &LoadConfig,
        stats: &[Arc<LoadStats>],
        histograms: RunHistograms,
        errors: BTreeMap<String, u64>,
        ledger: Option<&super::chat::Ledger>,
        params: LoadParams,
        started_wall: SystemTime,
        control: &Control,
    ) -> LoadReport {
        let end = self.t(control);
        if let Some(last) = self.phases.last_mut() {
            last.end = end;
        }
        let messages_seconds =
            self.phases.iter().find(|p| p.name == "messages").map(|p| p.end - p.start).unwrap_or(0.0);
        // Each connection's first login (its later ones are `relogins`).
        let established_total = sum(stats, |s| s.established_total.get() - s.relogins.get());
        let chat = ledger.map(|l| chat_counts(l, stats, &histograms, messages_seconds));
        let (connect_seconds, received_at) = (self.connect_seconds, self.received_at);
        LoadReport {
            params,
            status: if self.abort.is_some() { RunStatus::Aborted } else { RunStatus::Complete },
            abort_reason: self.abort.take(),
            started_unix_ms: started_wall.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            elapsed_seconds: end,
            connections: ConnectionCounts {
                requested: cfg.connections,
                connected: sum(stats, |s| s.connected.get()),
                established: established_total,
                established_peak: self.peak,
                established_at_end: self.at_end,
                failed: sum(stats, |s| s.failed.get()),
                lost: sum(stats, |s| s.lost.get()),
                reconnects: sum(stats, |s| s.reconnects.get()),
                relogins: sum(stats, |s| s.relogins.get()),
                retried: sum(stats, |s| s.retried.get()),
                churned: sum(stats, |s| s.churned.get()),
                answered_in_messages: sum(stats, |s| s.answered_in_messages.get()),
                connect_seconds,
                connect_rate_achieved: if connect_seconds > 0.0 {
                    established_total as f64 / connect_seconds
                } else {
                    0.0
                },
            },
            errors,
            messages: MessageCounts {
                sent: sum(stats, |s| s.sent.get()),
                received: sum(stats, |s| s.received.get()),
                // Replies still arrive while the close goes out, so this is taken at the very end.
                unanswered: sum(stats, |s| s.sent.get()).saturating_sub(sum(stats, |s| s.received.get())),
                late: sum(stats, |s| s.late.get()),
                bytes_sent: sum(stats, |s| s.transport.bytes_out.get()),
                bytes_received: sum(stats, |s| s.transport.bytes_in.get()),
                rate_requested: cfg.message_rate(),
                recv_buffer_shortfalls: sum(stats, |s| s.transport.recv_no_buffers.get()),
                rate_achieved: if messages_seconds > 0.0 {
                    received_at.1.saturating_sub(received_at.0) as f64 / messages_seconds
                } else {
                    0.0
                },
            },
            latency: Latencies {
                connect: LatencySummary::from_ns(&histograms.connect),
                connect_corrected: LatencySummary::from_ns(&histograms.connect_corrected),
                login: LatencySummary::from_ns(&histograms.login),
                rtt_corrected: LatencySummary::from_ns(&histograms.rtt_corrected),
                rtt_uncorrected: LatencySummary::from_ns(&histograms.rtt_uncorrected),
                schedule_lag: LatencySummary::from_ns(&histograms.schedule_lag),
                chat_ack: LatencySummary::from_ns(&histograms.ack),
                chat_deliver: LatencySummary::from_ns(&histograms.deliver),
                chat_receipt: LatencySummary::from_ns(&histograms.receipt),
            },
            phases: std::mem::take(&mut self.phases),
            timeline: std::mem::take(&mut self.timeline),
            chat,
            histograms: embedded(&histograms),
            shard: (!cfg.shard.is_whole()).then(|| ShardInfo {
                run_id: cfg.run_id.clone(),
                index: cfg.shard.index,
                count: cfg.shard.count,
                run_connections: cfg.run_connections,
            }),
            merged: None,
        }
    }
}

/// The run's histograms as the report embeds them, keyed by their `latency` field's name;
/// empty ones are left out.
fn embedded(h: &RunHistograms) -> BTreeMap<String, String> {
    [
        ("connect", &h.connect),
        ("connect_corrected", &h.connect_corrected),
        ("login", &h.login),
        ("rtt_corrected", &h.rtt_corrected),
        ("rtt_uncorrected", &h.rtt_uncorrected),
        ("schedule_lag", &h.schedule_lag),
        ("chat_ack", &h.ack),
        ("chat_deliver", &h.deliver),
        ("chat_receipt", &h.receipt),
    ]
    .into_iter()
    .filter(|(_, h)| !h.is_empty())
    .filter_map(|(name, h)| Some((name.to_string(), crate::schema::histogram::encode(h).ok()?)))
    .collect()
}

/// The chat ledger's accounting at the end of the run.
fn chat_counts(
    l: &super::chat::Ledger,
    stats: &[Arc<LoadStats>],
    histograms: &RunHistograms,
    messages_seconds: f64,
) -> ChatCounts {
    let books = l.settle();
    let c = |f: fn(&super::stats::ChatCounts) -> &crate::stats::Counter| sum(stats, |s| f(&s.chat).get());
    let sent = sum(stats, |s| s.sent.get());
    let (acked, n7, n8, nx) =
        (c(|x| &x.acked), c(|x| &x.nacked_unknown), c(|x| &x.nacked_full), c(|x| &x.nacked_other));
    ChatCounts {
        sent,
        acked,
        nacked_unknown_recipient: n7,
        nacked_offline_full: n8,
        nacked_other: nx,
        unanswered: sent.saturating_sub(acked + n7 + n8 + nx),
        expected: c(|x| &x.expected),
        delivered: c(|x| &x.delivered),
        receipted: c(|x| &x.receipted),
        duplicates: c(|x| &x.duplicates),
        lost: books.lost(),
        lost_after_ack: books.lost_after_ack,
        lost_unacked: books.lost_unacked,
        unreceipted: books.unreceipted,
        unknown: c(|x| &x.unknown),
        window_full: c(|x| &x.window_full),
        delivered_rate: if messages_seconds > 0.0 { histograms.deliver.len() as f64 / messages_seconds } else { 0.0 },
    }
}

/// This interval's histograms: what the workers published since the last sample, and `rest`.
fn collect_interval(s: &mut Sampler, intervals: &Receiver<Interval>, rest: Option<&Interval>) {
    s.interval.reset();
    while let Ok(i) = intervals.try_recv() {
        s.interval.add(&i);
    }
    if let Some(rest) = rest {
        s.interval.add(rest);
    }
}

/// One interval of every tag, ending now and `len` long.
fn log_interval(h: &mut Hlog<'_>, interval: &Interval, control: &Control, len: Duration) -> Result<(), LoadError> {
    let start = control.base.elapsed().saturating_sub(len);
    for (tag, histogram) in interval.tagged() {
        write_interval(h, tag, histogram, start, len)?;
    }
    Ok(())
}

fn take_sample(
    s: &mut Sampler,
    stats: &[Arc<LoadStats>],
    intervals: &Receiver<Interval>,
    hlog: &mut Option<Hlog<'_>>,
    control: &Control,
    t: f64,
) -> Result<Sample, LoadError> {
    let since = s.last_at.elapsed();
    collect_interval(s, intervals, None);
    let dt = since.as_secs_f64().max(1e-3);
    s.last_at = Instant::now();
    let connected = sum(stats, |x| x.connected.get());
    let received = sum(stats, |x| x.received.get());
    if let Some(h) = hlog {
        log_interval(h, &s.interval, control, since)?;
    }
    let live = s.interval.live_rtt();
    let pct = |q: f64| if live.is_empty() { 0.0 } else { us(live.value_at_quantile(q)) };
    let sample = Sample {
        t,
        established: sum(stats, |x| x.established.get()),
        connect_rate: (connected - s.last_connected) as f64 / dt,
        msg_rate: (received - s.last_received) as f64 / dt,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        errors: sum(stats, |x| x.errors.get()),
        mem_free: mem_free(),
    };
    s.last_connected = connected;
    s.last_received = received;
    Ok(sample)
}

fn params(cfg: &LoadConfig, rings: usize, files: u32) -> LoadParams {
    let ms = |d: Duration| d.as_millis() as u64;
    LoadParams {
        target: cfg.target.to_string(),
        connections: cfg.connections,
        connect_rate: cfg.connect_rate,
        connect_concurrency: cfg.connect_concurrency,
        connect_timeout_ms: ms(cfg.connect_timeout),
        sources: cfg.source_specs.clone(),
        source_addresses: cfg.ports.sources.len(),
        source_ports: [cfg.ports.first_port, cfg.ports.last_port],
        duration_ms: ms(cfg.duration),
        ramp_ms: ms(cfg.ramp),
        warmup_ms: ms(cfg.warmup),
        hold_ms: ms(cfg.hold),
        workload: cfg.workload.name().into(),
        message_interval_ms: if cfg.workload == super::Workload::Idle {
            0.0
        } else {
            cfg.message_interval.as_secs_f64() * 1e3
        },
        message_rate: cfg.message_rate(),
        in_flight: cfg.in_flight,
        recv: if cfg.recv_on_demand() { "on-demand" } else { "multishot" }.into(),
        size: cfg.frame_len() as u64,
        workers: cfg.workers as u64,
        rings_per_worker: rings as u64,
        files_per_ring: files as u64,
        comeback: {
            let b = &cfg.comeback;
            (b.reconnect || b.churn > 0.0).then_some(crate::schema::load::ComebackParams {
                reconnect: b.reconnect,
                backoff_min_ms: b.backoff_min.as_secs_f64() * 1e3,
                backoff_max_ms: b.backoff_max.as_secs_f64() * 1e3,
                reconnect_rate: b.rate,
                churn_percent_per_minute: b.churn * 100.0,
                churn_away_ms: b.churn_away.as_secs_f64() * 1e3,
            })
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Workload;
    use crate::load::sources::{PortPlan, Sources};
    use crate::server::{ServeConfig, Server};

    fn config(target: std::net::SocketAddr, workload: Workload, first_port: u16) -> LoadConfig {
        LoadConfig {
            target,
            connections: 200,
            shard: crate::load::shard::Shard::WHOLE,
            run_connections: 200,
            run_id: "test".into(),
            start_at: None,
            connect_rate: 0.0,
            connect_concurrency: 16,
            connect_timeout: Duration::from_secs(5),
            ports: PortPlan {
                sources: Sources::parse("127.0.4.1-127.0.4.2").unwrap(),
                first_port,
                last_port: first_port + 99,
                skip_port: None,
            },
            source_specs: vec!["127.0.4.1-127.0.4.2".into()],
            duration: Duration::from_millis(1500),
            ramp: Duration::ZERO,
            warmup: Duration::ZERO,
            hold: Duration::from_millis(200),
            workload,
            message_interval: Duration::from_millis(50),
            in_flight: 0,
            recv: crate::load::config::RecvMode::Auto,
            size: 3000,
            first_user: 1,
            workers: 2,
            // Tables of 64 files: each worker spreads its 100 connections over 2 rings.
            files_per_ring: Some(64),
            recv_buffers: 8,
            recv_buffer_size: 256,
            max_frame: 4096,
            keep_free: 0,
            chat: Default::default(),
            comeback: Default::default(),
            dataplane: Default::default(),
            netns: None,
        }
    }

    /// The whole load generator in-process against the in-process server (so sanitizers see
    /// every unsafe block of both run): connect chains into fixed slots over several rings,
    /// receives that span small buffers, inline and slot out areas, the close.
    #[test]
    fn in_process_load_against_in_process_server() {
        let server = Server::start(ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: 1,
            max_sessions: 500,
            files_per_ring: Some(128),
            ..ServeConfig::default()
        })
        .expect("server starts");
        for (workload, port) in [(Workload::Ping, 21000), (Workload::Echo, 21200)] {
            let report = run(config(server.local_addr(), workload, port), &RunOptions::default()).expect("load runs");
            assert_eq!(
                report.status,
                RunStatus::Complete,
                "{workload:?}: {:?} {:?}",
                report.abort_reason,
                report.errors
            );
            let server_view = || {
                let text = crate::stats::render_prometheus(&server.stats());
                text.lines()
                    .filter(|l| l.contains("closed_total") || l.contains("rejected") || l.contains("errors_total"))
                    .filter(|l| !l.ends_with(" 0") && !l.starts_with('#'))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(
                report.connections.established,
                200,
                "{workload:?}: {:?}\nserver:\n{}",
                report.errors,
                server_view()
            );
            assert_eq!(report.params.rings_per_worker, 2);
            assert!(report.messages.received > 0);
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            // Every session of this run is gone before the next run starts.
            let stats = server.stats();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while stats.iter().map(|s| s.slots_in_use.get()).sum::<u64>() > 0 {
                assert!(std::time::Instant::now() < deadline, "{workload:?}: sessions left on the server");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        server.stop();
        server.join().unwrap();
    }
}
