//! The `c2m` command line: parses flags and calls into the library, nothing else.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use c2m::server::{ServeConfig, Server, defaults};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "c2m", version, about = "Hold millions of TCP connections on one Linux box and measure what it costs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the protocol v1 server (thread-per-core io_uring engine).
    Serve(ServeArgs),
    /// Open N connections to a protocol v1 server, send messages on an open-loop schedule and
    /// measure connect and round-trip latency (thread-per-core io_uring engine).
    Load(c2m::load::cli::LoadArgs),
    /// Run a scenario end to end on this box (c2m serve + c2m load) and write results/.
    Bench(c2m::bench::BenchArgs),
    /// Reference client on plain sockets: open N connections, log in, ping once, hold.
    /// One process stays under RLIMIT_NOFILE; tests and benches run several.
    #[command(hide = true)]
    Hold(HoldArgs),
    /// What caps connections here (check), sysctl profiles (apply, restore), and sizing other
    /// hardware from a measured result (size).
    Tune(c2m::tune::TuneArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (one SO_REUSEPORT listener per worker).
    #[arg(long, default_value = defaults::LISTEN)]
    listen: SocketAddr,
    /// Worker threads, one pinned per core [default: cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Sessions held at most, all workers together (one budget, whichever worker the kernel picks).
    #[arg(long, default_value_t = defaults::MAX_SESSIONS)]
    max_sessions: usize,
    /// Bytes of one session slot (rounded up to pages); only touched pages become resident.
    #[arg(long, default_value_t = defaults::SESSION_BYTES)]
    session_bytes: usize,
    /// Slot memory all sessions together may fill with replies not yet sent; past it a session
    /// waits (as with a full out area) instead of growing.
    #[arg(long, value_parser = c2m::units::parse_bytes, default_value = defaults::SLOT_BUDGET)]
    slot_budget: u64,
    /// Largest frame accepted, header included.
    #[arg(long, default_value_t = c2m::proto::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Heartbeat period told to clients; a session silent for 3 periods is closed.
    #[arg(long, default_value_t = defaults::millis(defaults::HEARTBEAT))]
    heartbeat_ms: u32,
    /// Time a new connection has to say HELLO, in milliseconds.
    #[arg(long, default_value_t = defaults::millis(defaults::HELLO_TIMEOUT))]
    hello_timeout: u32,
    /// On SIGINT/SIGTERM, time to say BYE and drain before exiting, in milliseconds.
    #[arg(long, default_value_t = defaults::millis(defaults::DRAIN_TIMEOUT))]
    drain_timeout: u32,
    /// Listen backlog per worker (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = defaults::BACKLOG)]
    backlog: u32,
    /// Fixed-file slots per ring [default: RLIMIT_NOFILE, at most 2^20].
    #[arg(long)]
    files_per_ring: Option<u32>,
    /// Provided receive buffers per ring (power of two).
    #[arg(long, default_value_t = defaults::RECV_BUFFERS)]
    recv_buffers: u16,
    /// Size of one receive buffer.
    #[arg(long, default_value_t = defaults::RECV_BUFFER_SIZE)]
    recv_buffer_size: u32,
    /// How a session waits for input: `poll` (a multishot poll, then a receive: least kernel
    /// memory per idle session) or `multishot` (a multishot receive: fewest completions).
    #[arg(long, value_enum, default_value_t = c2m::server::RecvArm::Poll)]
    recv_arm: c2m::server::RecvArm,
    #[command(flatten)]
    dataplane: c2m::transport::DataPlaneArgs,
    /// Serve Prometheus text at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Chat: user ids 1..=N can receive messages (8 bytes of directory per id, resident once
    /// used); a SEND to any other id gets NACK 7.
    #[arg(long, value_parser = c2m::units::parse_count, default_value = defaults::USERS)]
    users: u64,
    /// Chat: static groups, ids 2^63 + g (g < N); member i of group g is user 1 + (g*K + i) % users.
    #[arg(long, value_parser = c2m::units::parse_count, default_value = "0")]
    groups: u64,
    /// Chat: members per group (K), at most 1024.
    #[arg(long, default_value_t = 0)]
    group_size: u32,
    /// Chat: how long a message waits for an offline user (default 30 days, at most 87600h).
    #[arg(long, value_parser = c2m::units::duration_in(Duration::ZERO..=c2m::server::MAX_OFFLINE_TTL), default_value = defaults::OFFLINE_TTL)]
    offline_ttl: Duration,
    /// Chat: messages and bytes held for one recipient until receipted (offline, queued or in
    /// flight); over either, the sender gets NACK 8.
    #[arg(long, default_value_t = defaults::OFFLINE_USER_MESSAGES)]
    offline_user_messages: u32,
    #[arg(long, value_parser = c2m::units::parse_bytes, default_value = defaults::OFFLINE_USER_BYTES)]
    offline_user_bytes: u64,
    /// Chat: messages and bytes one sender may have held, not yet receipted (at most half the
    /// totals, so one client cannot lock everyone else out).
    #[arg(long, value_parser = c2m::units::parse_count, default_value = defaults::OFFLINE_SENDER_MESSAGES)]
    offline_sender_messages: u64,
    #[arg(long, value_parser = c2m::units::parse_bytes, default_value = defaults::OFFLINE_SENDER_BYTES)]
    offline_sender_bytes: u64,
    /// Chat: messages and bytes held for all users together.
    #[arg(long, value_parser = c2m::units::parse_count, default_value = defaults::OFFLINE_TOTAL_MESSAGES)]
    offline_total_messages: u64,
    #[arg(long, value_parser = c2m::units::parse_bytes, default_value = defaults::OFFLINE_TOTAL_BYTES)]
    offline_total_bytes: u64,
}

#[derive(Args)]
struct HoldArgs {
    #[arg(long, default_value = defaults::LISTEN)]
    server: SocketAddr,
    /// Source address to connect from (any of 127.0.0.0/8).
    #[arg(long)]
    source: Option<IpAddr>,
    /// First source port to bind (with --source); the next connections take the ports above it.
    #[arg(long, default_value_t = 10_000)]
    first_port: u16,
    /// Connections (one process holds at most 2^20: each is an ordinary fd).
    #[arg(short = 'c', long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    connections: u64,
    #[arg(long, default_value_t = 1)]
    first_user: u64,
    /// Seconds to hold at most (also ends when stdin closes); at most a year.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=8760 * 3600))]
    hold_secs: u64,
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let dataplane = args.dataplane.dataplane().map_err(anyhow::Error::msg)?;
    let defaults = ServeConfig::default();
    let cfg = ServeConfig {
        listen: args.listen,
        workers: args.workers.unwrap_or(defaults.workers),
        max_sessions: args.max_sessions,
        session_bytes: args.session_bytes,
        slot_budget: args.slot_budget as usize,
        max_frame: args.max_frame,
        heartbeat_ms: args.heartbeat_ms,
        hello_timeout_ms: args.hello_timeout,
        drain_timeout_ms: args.drain_timeout,
        backlog: args.backlog,
        files_per_ring: args.files_per_ring,
        recv_buffers: args.recv_buffers,
        recv_arm: args.recv_arm,
        dataplane,
        netns: args.dataplane.netns.clone(),
        recv_buffer_size: args.recv_buffer_size,
        users: args.users,
        groups: args.groups,
        group_size: args.group_size,
        offline: c2m::server::offline::OfflineLimits {
            per_user_messages: args.offline_user_messages,
            per_user_bytes: args.offline_user_bytes,
            per_sender_messages: args.offline_sender_messages,
            per_sender_bytes: args.offline_sender_bytes,
            total_messages: args.offline_total_messages,
            total_bytes: args.offline_total_bytes,
            ttl: args.offline_ttl,
        },
        ..defaults
    };
    // Block SIGINT/SIGTERM in every thread (workers inherit the mask); this thread waits for them.
    let signals = c2m::host::signal::block_stop_signals().context("blocking SIGINT/SIGTERM")?;
    let server = Server::start(cfg.clone()).context("starting the server")?;
    if let Some(warning) = c2m::host::memory::read_meminfo().ok().and_then(|m| cfg.memory_warning(m.mem_total)) {
        eprintln!("{warning}");
    }
    let layout = server.layout();
    let metrics = match args.metrics {
        Some(addr) => Some(
            c2m::stats::metrics_http::spawn(addr, server.stats())
                .with_context(|| format!("metrics endpoint on {addr}"))?,
        ),
        None => None,
    };
    println!(
        "c2m serve: listening on {} | {} | {} workers x {} rings (up to {}) x {} fixed files | up to {} sessions, {} B slots | kernel {}{}",
        server.local_addr(),
        layout.dataplane,
        layout.workers,
        layout.rings_per_worker,
        layout.max_rings_per_worker,
        layout.files_per_ring,
        layout.max_sessions,
        cfg.session_bytes,
        layout.features.kernel,
        metrics.map(|m| format!(" | metrics http://{m}/metrics")).unwrap_or_default(),
    );
    // Between waits, watch the workers: one that ended on its own failed, and its sessions are
    // unreachable; the server then stops rather than serve on without them.
    let signal = loop {
        if let Some(signal) = c2m::host::signal::wait_signal(&signals, std::time::Duration::from_millis(200)) {
            break Some(signal);
        }
        if server.ended_worker().is_some() {
            break None;
        }
    };
    let stats = server.stats();
    let Some(signal) = signal else {
        let worker = server.ended_worker().unwrap_or_default();
        eprintln!("c2m serve: worker {worker} stopped; stopping the server");
        server.stop();
        let why = server.join().err().map(|e| e.to_string()).unwrap_or_else(|| "it ended without an error".into());
        anyhow::bail!("worker {worker} stopped while serving: {why}");
    };
    println!("c2m serve: {signal:?}: saying BYE and draining (at most {} ms)", cfg.drain_timeout_ms);
    server.stop();
    server.join().context("a worker failed")?;
    let left: u64 = stats.iter().map(|s| s.active()).sum();
    println!("c2m serve: stopped, {left} sessions were still open at the drain deadline");
    Ok(())
}

fn load(args: c2m::load::cli::LoadArgs) -> anyhow::Result<()> {
    let cfg = args.to_config().map_err(anyhow::Error::msg)?;
    if !args.force {
        // Both ends are on this box when the target is loopback: count both sockets.
        let both_ends_here = args.server.ip().is_loopback();
        let model = c2m::tune::capacity::CostModel::measured_or_default(std::path::Path::new("results"));
        c2m::tune::capacity::check(cfg.connections, both_ends_here, cfg.keep_free, &model)
            .map_err(|e| anyhow::anyhow!("{e} (--force starts anyway; the MemFree guard still stops the run)"))?;
    }
    let opts = c2m::load::RunOptions {
        json: args.json.clone(),
        hlog: args.hlog.clone(),
        progress: !args.no_progress,
        events: args.events,
    };
    let report = c2m::load::run(cfg, &opts).context("running the load")?;
    if report.status == c2m::schema::load::RunStatus::Aborted {
        // The report is written; the exit status still tells a script the run fell short.
        std::process::exit(3);
    }
    if let Some(short) = report.shortfall() {
        eprintln!("c2m load: fell short: {short}");
        std::process::exit(3);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => match c2m::bench::run(args) {
            // The result is written; the exit status tells a script the run fell short.
            Err(e) if e.is::<c2m::bench::RunFellShort>() => {
                eprintln!("c2m bench: {e}");
                std::process::exit(3)
            }
            other => other,
        },
        Command::Load(args) => load(args),
        Command::Tune(args) => match c2m::tune::run(args) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("Error: {e:#}");
                std::process::exit(2)
            }
        },
        Command::Hold(a) => {
            let cfg = c2m::client::HoldConfig {
                server: a.server,
                source: a.source,
                first_port: a.first_port,
                connections: a.connections as usize,
                first_user: a.first_user,
                hold: Duration::from_secs(a.hold_secs),
            };
            c2m::client::hold(&cfg).context("holding connections")?;
            Ok(())
        }
    }
}
