//! The main thread of `c2m load`: starts the workers, moves the run through its phases, samples
//! once a second (live line, events, interval log, MemFree guard), and builds the report.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, bounded};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriter, IntervalLogWriterBuilder, Tag};
use nix::sys::signal::{SigSet, Signal};

use super::LoadError;
use super::config::LoadConfig;
use super::progress::Progress;
use super::report::*;
use super::worker::{Control, Interval, LoadStats, LoadWorker, RunHistograms, WorkerOutcome, phase};
use crate::engine::probe::probe;
use crate::engine::ring_set::{rings_needed, table_limit};
use crate::engine::{RingConfig, RingSet, run_worker, worker::spawn_pinned};

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
}

fn mem_free() -> u64 {
    crate::host::memory::read_meminfo().map(|m| m.mem_free).unwrap_or(u64::MAX)
}

fn sum(stats: &[Arc<LoadStats>], f: impl Fn(&LoadStats) -> u64) -> u64 {
    stats.iter().map(|s| f(s)).sum()
}

/// Waits up to `timeout` for SIGINT or SIGTERM (blocked in every thread of the process).
fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts =
        libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: `set` is a valid sigset_t, the info pointer may be null, and `ts` lives across the
    // call.
    let signo = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (signo > 0).then(|| Signal::try_from(signo).ok()).flatten()
}

struct Workers {
    handles: Vec<JoinHandle<Result<WorkerOutcome, LoadError>>>,
    stats: Vec<Arc<LoadStats>>,
    intervals: Receiver<Interval>,
    rings: usize,
    files: u32,
}

fn start_workers(cfg: &Arc<LoadConfig>, control: &Arc<Control>) -> Result<Workers, LoadError> {
    let files = cfg.files_per_ring.unwrap_or_else(table_limit);
    if files < 64 {
        return Err(LoadError::Config(format!("{files} fixed files per ring is too few (RLIMIT_NOFILE?)")));
    }
    // The load keeps no reserve: it picks every slot itself.
    let rings = rings_needed(cfg.connections_of(0) as usize, files, 0);
    if rings > crate::engine::token::MAX_RINGS {
        return Err(LoadError::Config(format!(
            "{rings} rings per worker needed; use more workers or raise RLIMIT_NOFILE"
        )));
    }
    let ring_cfg = RingConfig {
        sq_entries: 2048,
        cq_entries: 16384,
        files,
        recv_buffers: cfg.recv_buffers,
        recv_buffer_size: cfg.recv_buffer_size,
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (interval_tx, intervals) = bounded(cfg.workers * 64);
    let (ready_tx, ready_rx) = bounded::<(usize, Result<(), String>)>(cfg.workers);
    let mut handles = Vec::new();
    let mut stats = Vec::new();
    for id in 0..cfg.workers {
        let worker_stats = Arc::new(LoadStats::default());
        stats.push(worker_stats.clone());
        let (cfg, control, tx, ready) = (cfg.clone(), control.clone(), interval_tx.clone(), ready_tx.clone());
        // Worker i goes on the core after the server's first worker would, so on a small box the
        // two processes' busiest threads do not start on one core.
        let core = (!cores.is_empty()).then(|| cores[(id + cores.len() / 2) % cores.len()]);
        let body = move || -> Result<WorkerOutcome, LoadError> {
            let setup = (|| {
                let mut set = RingSet::new(rings, &ring_cfg)?;
                let mut w = LoadWorker::new(id, cfg, control, worker_stats, files, tx)?;
                w.start(&mut set);
                Ok::<_, LoadError>((set, w))
            })();
            let (mut set, mut w) = match setup {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready.send((id, Err(e.to_string())));
                    return Err(e);
                }
            };
            let _ = ready.send((id, Ok(())));
            let result = run_worker(&mut set, &mut w);
            // The rings go first: their teardown ends what is still in flight, which points into
            // the worker's slab.
            drop(set);
            result.map_err(|e| LoadError::io(format!("worker {id} event loop"), e))?;
            Ok(w.into_outcome())
        };
        let handle =
            spawn_pinned(format!("c2m-load{id}"), core, body).map_err(|e| LoadError::io("spawning a worker", e))?;
        handles.push(handle);
    }
    for _ in 0..cfg.workers {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((id, Err(e))) => {
                control.phase.store(phase::CLOSE, Ordering::Relaxed);
                return Err(LoadError::Worker(id, e));
            }
            Err(_) => return Err(LoadError::Worker(usize::MAX, "a worker exited during start-up".into())),
        }
    }
    Ok(Workers { handles, stats, intervals, rings, files })
}

/// The interval log: HdrHistogram's format, values in nanoseconds.
type Hlog<'a> = IntervalLogWriter<'a, 'a, BufWriter<File>, V2DeflateSerializer>;

fn begin_hlog<'a>(
    out: &'a mut BufWriter<File>,
    serializer: &'a mut V2DeflateSerializer,
    started: SystemTime,
) -> Result<Hlog<'a>, LoadError> {
    IntervalLogWriterBuilder::new()
        .add_comment("c2m load: tag rtt = round trip from the scheduled send (corrected), tag connect = connect latency; values in ns")
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
    interval_rtt: Histogram<u64>,
    interval_connect: Histogram<u64>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Runs the load and returns what it measured; the JSON and interval log are written as asked.
pub fn run(cfg: LoadConfig, opts: &RunOptions) -> Result<LoadReport, LoadError> {
    cfg.validate()?;
    probe()?;
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(|e| LoadError::io("blocking SIGINT/SIGTERM", e.into()))?;

    let started_wall = SystemTime::now();
    let ledger = (cfg.workload == super::Workload::Chat).then(|| {
        let layout =
            crate::proto::GroupLayout { users: cfg.chat.users, groups: cfg.chat.groups, size: cfg.chat.group_size };
        Arc::new(super::chat::Ledger::new(cfg.first_user, cfg.connections, layout))
    });
    let control =
        Arc::new(Control { ledger: ledger.clone(), phase: AtomicU8::new(phase::CONNECT), base: Instant::now() });
    let cfg = Arc::new(cfg);
    let workers = start_workers(&cfg, &control)?;
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
    let params = params(&cfg, workers.rings, workers.files);
    let mut progress = Progress::new(opts.progress, opts.events, cfg.connections);
    progress.phase("connect", 0.0, 0);

    let t = || control.base.elapsed().as_secs_f64();
    let mut phases: Vec<Phase> = vec![Phase { name: "connect".into(), start: 0.0, end: 0.0 }];
    let mut phase_started = Instant::now();
    let mut timeline: Vec<Sample> = Vec::new();
    let mut abort: Option<String> = None;
    let mut peak = 0u64;
    let mut at_end = 0u64;
    let mut received_at = (0u64, 0u64);
    let mut connect_seconds = 0.0;
    let mut sampler = Sampler {
        last_at: Instant::now(),
        last_connected: 0,
        last_received: 0,
        interval_rtt: Histogram::new(3).expect("histogram"),
        interval_connect: Histogram::new(3).expect("histogram"),
    };
    let stats = workers.stats.clone();
    let mut next_sample = Instant::now() + Duration::from_secs(1);
    let mut closing = false;

    loop {
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(100))
            && !closing
        {
            abort.get_or_insert_with(|| format!("interrupted by {sig:?}"));
        }
        if workers.handles.iter().any(|h| h.is_finished()) && !closing {
            abort.get_or_insert_with(|| "a worker stopped early".into());
        }
        let current = control.phase.load(Ordering::Relaxed);
        let established = sum(&stats, |s| s.established.get());
        peak = peak.max(established);

        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            let sample = take_sample(&mut sampler, &stats, &workers.intervals, &mut hlog, &control, t())?;
            if sample.mem_free < cfg.keep_free && !closing {
                abort.get_or_insert_with(|| {
                    format!(
                        "MemFree fell to {} (below --keep-free {}) with {} connections established",
                        crate::units::human_bytes(sample.mem_free as f64),
                        crate::units::human_bytes(cfg.keep_free as f64),
                        sample.established
                    )
                });
            }
            progress.sample(&sample);
            timeline.push(sample);
        }

        let mut next_phase: Option<u8> = None;
        let elapsed = phase_started.elapsed();
        if abort.is_some() && !closing {
            next_phase = Some(phase::CLOSE);
        } else {
            match current {
                phase::CONNECT => {
                    let resolved = sum(&stats, |s| s.established_total.get() + s.failed.get());
                    if resolved >= cfg.connections {
                        connect_seconds = elapsed.as_secs_f64();
                        if sum(&stats, |s| s.established_total.get()) == 0 {
                            abort = Some("no connection was established (see errors)".into());
                            next_phase = Some(phase::CLOSE);
                        } else {
                            next_phase = Some(phase::MESSAGES);
                        }
                    } else if elapsed > cfg.connect_phase_limit() {
                        connect_seconds = elapsed.as_secs_f64();
                        abort = Some(format!(
                            "the connect phase did not finish within {:.0} s ({resolved} of {} connects resolved)",
                            cfg.connect_phase_limit().as_secs_f64(),
                            cfg.connections
                        ));
                        next_phase = Some(phase::CLOSE);
                    }
                }
                phase::MESSAGES if elapsed >= cfg.duration => next_phase = Some(phase::HOLD),
                // Without a hold, the sends stop for a moment before the close so the last
                // replies arrive instead of being counted unanswered.
                phase::HOLD if cfg.hold.is_zero() => {
                    let answered = sum(&stats, |s| s.received.get()) >= sum(&stats, |s| s.sent.get());
                    // Chat also waits for every delivery and its receipt.
                    let settled = cfg.workload != super::Workload::Chat || {
                        let delivered = sum(&stats, |s| s.chat.delivered.get());
                        delivered >= sum(&stats, |s| s.chat.expected.get())
                            && sum(&stats, |s| s.chat.receipted.get()) >= delivered
                    };
                    let limit = if cfg.workload == super::Workload::Chat { CHAT_DRAIN_LIMIT } else { DRAIN_LIMIT };
                    if (answered && settled) || elapsed >= limit {
                        next_phase = Some(phase::CLOSE);
                    }
                }
                phase::HOLD if elapsed >= cfg.hold => next_phase = Some(phase::CLOSE),
                _ => {}
            }
        }
        if let Some(next) = next_phase {
            let now = t();
            if current == phase::MESSAGES {
                received_at.1 = sum(&stats, |s| s.received.get());
            }
            if next == phase::CLOSE {
                at_end = established;
                closing = true;
            }
            if next == phase::MESSAGES {
                received_at.0 = sum(&stats, |s| s.received.get());
            }
            if let Some(last) = phases.last_mut() {
                last.end = now;
            }
            let name = match next {
                phase::HOLD if cfg.hold.is_zero() => "drain",
                _ => ["connect", "messages", "hold", "close"][next as usize],
            };
            phases.push(Phase { name: name.into(), start: now, end: now });
            progress.phase(name, now, established);
            control.phase.store(next, Ordering::Relaxed);
            phase_started = Instant::now();
        }
        if closing && workers.handles.iter().all(|h| h.is_finished()) {
            break;
        }
    }

    let mut histograms = RunHistograms::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (id, handle) in workers.handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(outcome)) => {
                histograms.add(&outcome.histograms);
                for (k, v) in outcome.errors {
                    *errors.entry(k).or_insert(0) += v;
                }
            }
            Ok(Err(e)) => {
                abort.get_or_insert_with(|| format!("worker {id} failed: {e}"));
            }
            Err(_) => {
                abort.get_or_insert_with(|| format!("worker {id} panicked"));
            }
        }
    }
    let end = t();
    if let Some(last) = phases.last_mut() {
        last.end = end;
    }
    let messages_seconds = phases.iter().find(|p| p.name == "messages").map(|p| p.end - p.start).unwrap_or(0.0);
    let established_total = sum(&stats, |s| s.established_total.get());
    let chat = ledger.as_ref().map(|l| {
        let (lost, unreceipted) = l.settle();
        let c = |f: fn(&super::worker::ChatCounts) -> &crate::stats::Counter| sum(&stats, |s| f(&s.chat).get());
        let sent = sum(&stats, |s| s.sent.get());
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
            lost,
            unreceipted,
            unknown: c(|x| &x.unknown),
            window_full: c(|x| &x.window_full),
            delivered_rate: if messages_seconds > 0.0 {
                histograms.deliver.len() as f64 / messages_seconds
            } else {
                0.0
            },
        }
    });
    let report = LoadReport {
        params,
        status: if abort.is_some() { RunStatus::Aborted } else { RunStatus::Complete },
        abort_reason: abort,
        started_unix_ms: started_wall.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        elapsed_seconds: end,
        connections: ConnectionCounts {
            requested: cfg.connections,
            connected: sum(&stats, |s| s.connected.get()),
            established: established_total,
            established_peak: peak,
            established_at_end: at_end,
            failed: sum(&stats, |s| s.failed.get()),
            lost: sum(&stats, |s| s.lost.get()),
            connect_seconds,
            connect_rate_achieved: if connect_seconds > 0.0 { established_total as f64 / connect_seconds } else { 0.0 },
        },
        errors,
        messages: MessageCounts {
            sent: sum(&stats, |s| s.sent.get()),
            received: sum(&stats, |s| s.received.get()),
            // Replies still arrive while the close goes out, so this is taken at the very end.
            unanswered: sum(&stats, |s| s.sent.get()).saturating_sub(sum(&stats, |s| s.received.get())),
            late: sum(&stats, |s| s.late.get()),
            bytes_sent: sum(&stats, |s| s.bytes_sent.get()),
            bytes_received: sum(&stats, |s| s.bytes_received.get()),
            rate_requested: cfg.message_rate(),
            recv_buffer_shortfalls: sum(&stats, |s| s.recv_no_buffers.get()),
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
        phases,
        timeline,
        chat,
    };
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

fn take_sample(
    s: &mut Sampler,
    stats: &[Arc<LoadStats>],
    intervals: &Receiver<Interval>,
    hlog: &mut Option<Hlog<'_>>,
    control: &Control,
    t: f64,
) -> Result<Sample, LoadError> {
    s.interval_rtt.reset();
    s.interval_connect.reset();
    while let Ok(i) = intervals.try_recv() {
        let _ = s.interval_rtt.add(&i.rtt_corrected);
        let _ = s.interval_connect.add(&i.connect);
    }
    let dt = s.last_at.elapsed().as_secs_f64().max(1e-3);
    s.last_at = Instant::now();
    let connected = sum(stats, |x| x.connected.get());
    let received = sum(stats, |x| x.received.get());
    if let Some(h) = hlog {
        let start = control.base.elapsed().saturating_sub(Duration::from_secs_f64(dt));
        let len = Duration::from_secs_f64(dt);
        write_interval(h, "rtt", &s.interval_rtt, start, len)?;
        write_interval(h, "connect", &s.interval_connect, start, len)?;
    }
    let pct = |q: f64| if s.interval_rtt.is_empty() { 0.0 } else { us(s.interval_rtt.value_at_quantile(q)) };
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
            assert_eq!(report.connections.established, 200);
            assert_eq!(report.params.rings_per_worker, 2);
            assert!(report.messages.received > 0);
            assert!(report.errors.is_empty(), "{:?}", report.errors);
        }
        server.stop();
        server.join().unwrap();
    }
}
