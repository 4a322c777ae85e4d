//! The `c2m` command line: parses flags and calls into the library, nothing else.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use c2m::server::{ServeConfig, Server, defaults};
use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "c2m",
    version = c2m::build_info::LONG_VERSION,
    about = "Hold millions of TCP connections on one Linux box and measure what it costs",
    after_help = "Exit status: 0 done, 1 error, 2 usage, 3 fell short (a run that did not hold what it asked for; \
                  `tune check` for a count that does not fit)."
)]
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
    Load(Box<c2m::load::cli::LoadArgs>),
    /// Run a scenario end to end on this box (c2m serve + c2m load) and write results/.
    Bench(c2m::bench::BenchArgs),
    /// Work with result files: merge the reports of a run's shards into the run's.
    #[command(subcommand)]
    Results(ResultsCommand),
    /// Reference client on plain sockets: open N connections, log in, ping once, hold.
    /// One process stays under RLIMIT_NOFILE; tests and benches run several.
    #[command(hide = true)]
    Hold(HoldArgs),
    /// What caps connections here (check), sysctl profiles (apply, restore), and sizing other
    /// hardware from a measured result (size).
    Tune(c2m::tune::TuneArgs),
    /// Drop a share of the frames an interface receives, for a while: an XDP program (generic
    /// mode) that stands in for netem and nftables' `numgen random` in the test namespaces
    /// (scripts/chaos.sh). Ends, and detaches, after --for or on SIGINT/SIGTERM. Needs root.
    Loss(LossArgs),
    /// Print a shell completion script (bash: `c2m completions bash > /etc/bash_completion.d/c2m`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `c2m man > c2m.1 && man ./c2m.1`.
    Man,
}

#[derive(Subcommand)]
enum ResultsCommand {
    /// Merge the --json reports of every shard of one run (`c2m load --shard I/N`) into the
    /// run's report: counts added, latencies from the shards' HdrHistograms added exactly. Exit 3
    /// when the merged run fell short (connections failed or lost, chat messages lost).
    Merge {
        /// One report per shard, each shard once, in any order.
        #[arg(required = true)]
        reports: Vec<std::path::PathBuf>,
        /// Write the merged report here [default: stdout].
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// A soak's verdict (scripts/soak.sh leaves samples.csv, load.json and server.metrics in
    /// DIR): drift per hour of memory and gauges over the steady window, leaks, the chat ledger;
    /// writes summary.md and three SVG charts into DIR. Exit 3 when it did not hold.
    Soak { dir: std::path::PathBuf },
}

/// Shortest heartbeat and HELLO timeout, and longest of any serve timeout (WELCOME carries the
/// heartbeat in u32 milliseconds).
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_millis(u32::MAX as u64);

/// A count that fits a u32 (`4096`, `64k`).
fn count_u32(s: &str) -> Result<u32, String> {
    c2m::units::count_in(0..=u32::MAX as u64)(s).map(|n| n as u32)
}

/// A byte size that fits a u32 (`2048`, `2KiB`).
fn bytes_u32(s: &str) -> Result<u32, String> {
    let n = c2m::units::parse_bytes(s)?;
    u32::try_from(n).map_err(|_| format!("{s:?} is out of range: must be in 0..={}", u32::MAX))
}

/// Whole milliseconds of a duration a parser already bounded to u32 milliseconds.
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[derive(Args)]
struct LossArgs {
    /// The interface whose received frames are dropped (e.g. c2m-c0).
    #[arg(long)]
    iface: String,
    /// The network namespace the interface is in (e.g. c2m-cli).
    #[arg(long)]
    netns: Option<String>,
    /// Frames dropped per thousand received (20 is 2%), at most 400.
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=c2m::xdp::loss::MAX_LOSS_PER_MILLE as i64))]
    per_mille: u16,
    /// How long the loss lasts (at most a day).
    #[arg(long = "for", value_parser = c2m::units::duration_with_unit(Duration::ZERO..=Duration::from_secs(86_400)), default_value = "60s")]
    lasting: Duration,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (one SO_REUSEPORT listener per worker).
    #[arg(long, default_value = defaults::LISTEN)]
    listen: SocketAddr,
    /// Share --listen's port with other processes on purpose (a server sharded over several
    /// processes, as `c2m bench --peers` runs one); without it, a port in use is refused.
    #[arg(long)]
    share_port: bool,
    /// Worker threads, one pinned per core [default: cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Sessions held at most, all workers together (one budget, whichever worker the kernel
    /// picks): 100k, 1m, 2m.
    #[arg(long, value_parser = c2m::units::parse_count, default_value_t = defaults::MAX_SESSIONS as u64)]
    max_sessions: u64,
    /// Bytes of one session slot (rounded up to pages); only touched pages become resident.
    #[arg(long, value_parser = c2m::units::parse_bytes, default_value_t = defaults::SESSION_BYTES as u64)]
    session_bytes: u64,
    /// Slot memory all sessions together may fill with replies not yet sent; past it a session
    /// waits (as with a full out area) instead of growing.
    #[arg(long, value_parser = c2m::units::parse_bytes, default_value = defaults::SLOT_BUDGET)]
    slot_budget: u64,
    /// Largest frame accepted, header included.
    #[arg(long, value_parser = c2m::units::parse_bytes, default_value_t = c2m::proto::DEFAULT_MAX_FRAME as u64)]
    max_frame: u64,
    /// Heartbeat period told to clients in WELCOME; a session silent for 3 periods is closed.
    #[arg(long, value_parser = c2m::units::duration_with_unit(MIN_TIMEOUT..=MAX_TIMEOUT), default_value = defaults::HEARTBEAT)]
    heartbeat: Duration,
    /// The old spelling of --heartbeat, in bare milliseconds.
    #[arg(long, hide = true, conflicts_with = "heartbeat", value_parser = clap::value_parser!(u32).range(1..))]
    heartbeat_ms: Option<u32>,
    /// Time a new connection has to say HELLO (ERROR 6 after).
    #[arg(long, value_parser = c2m::units::duration_with_unit(MIN_TIMEOUT..=MAX_TIMEOUT), default_value = defaults::HELLO_TIMEOUT)]
    hello_timeout: Duration,
    /// On SIGINT/SIGTERM, time to say BYE and drain before exiting.
    #[arg(long, value_parser = c2m::units::duration_with_unit(Duration::ZERO..=MAX_TIMEOUT), default_value = defaults::DRAIN_TIMEOUT)]
    drain_timeout: Duration,
    /// Listen backlog per worker (the kernel caps it at net.core.somaxconn).
    #[arg(long, value_parser = count_u32, default_value_t = defaults::BACKLOG)]
    backlog: u32,
    /// Fixed-file slots per ring [default: RLIMIT_NOFILE, at most 2^20].
    #[arg(long, value_parser = count_u32)]
    files_per_ring: Option<u32>,
    /// Provided receive buffers per ring (power of two).
    #[arg(long, value_parser = count_u32, default_value_t = defaults::RECV_BUFFERS as u32)]
    recv_buffers: u32,
    /// Size of one receive buffer.
    #[arg(long, value_parser = bytes_u32, default_value_t = defaults::RECV_BUFFER_SIZE)]
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
    #[arg(long, value_parser = count_u32, default_value = "0")]
    group_size: u32,
    /// Chat: how long a message waits for an offline user (default 30 days, at most 87600h).
    #[arg(long, value_parser = c2m::units::duration_in(Duration::ZERO..=c2m::server::MAX_OFFLINE_TTL), default_value = defaults::OFFLINE_TTL)]
    offline_ttl: Duration,
    /// Chat: messages and bytes held for one recipient until receipted (offline, queued or in
    /// flight); over either, the sender gets NACK 8.
    #[arg(long, value_parser = count_u32, default_value_t = defaults::OFFLINE_USER_MESSAGES)]
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
        // On 64-bit targets these all fit; a value past usize saturates and `validate` refuses it.
        max_sessions: usize::try_from(args.max_sessions).unwrap_or(usize::MAX),
        session_bytes: usize::try_from(args.session_bytes).unwrap_or(usize::MAX),
        slot_budget: usize::try_from(args.slot_budget).unwrap_or(usize::MAX),
        max_frame: usize::try_from(args.max_frame).unwrap_or(usize::MAX),
        heartbeat_ms: args.heartbeat_ms.unwrap_or_else(|| millis(args.heartbeat)),
        hello_timeout_ms: millis(args.hello_timeout),
        drain_timeout_ms: millis(args.drain_timeout),
        backlog: args.backlog,
        files_per_ring: args.files_per_ring,
        recv_buffers: u16::try_from(args.recv_buffers).unwrap_or(u16::MAX),
        recv_arm: args.recv_arm,
        dataplane,
        netns: args.dataplane.netns.clone(),
        share_port: args.share_port,
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
    let server = match Server::start(cfg.clone()) {
        Ok(server) => server,
        Err(c2m::server::ServerError::Config(why)) => return Err(c2m::exit::Usage(why).into()),
        Err(e) => return Err(anyhow::Error::new(e).context("starting the server")),
    };
    if let Some(warning) = c2m::host::memory::read_meminfo().ok().and_then(|m| cfg.memory_warning(m.mem_total)) {
        eprintln!("{warning}");
    }
    let layout = server.layout();
    let metrics = match args.metrics {
        Some(addr) => Some(
            c2m::stats::metrics_http::spawn(addr, c2m::stats::server_render(server.stats()))
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
    println!(
        "c2m serve: {signal:?}: saying BYE and draining (at most {})",
        c2m::units::human_duration(Duration::from_millis(cfg.drain_timeout_ms.into()))
    );
    server.stop();
    server.join().context("a worker failed")?;
    let left: u64 = stats.iter().map(|s| s.active()).sum();
    println!("c2m serve: stopped, {left} sessions were still open at the drain deadline");
    Ok(())
}

fn load(args: c2m::load::cli::LoadArgs) -> anyhow::Result<()> {
    let cfg = args.to_config().map_err(c2m::exit::Usage)?;
    if !cfg.target.ip().is_loopback() {
        // On a real network the plan is the first thing to check: which address, how many ports.
        eprintln!("{}", c2m::load::target::describe(cfg.target, &cfg.ports, &cfg.source_specs, cfg.connections));
    }
    cfg.validate().map_err(|e| c2m::exit::Usage(e.to_string()))?;
    if !args.force {
        // Both ends are on this box when the target is loopback: count both sockets.
        let both_ends_here = cfg.target.ip().is_loopback();
        let results = std::path::Path::new("results");
        let model = c2m::tune::capacity::CostModel::for_plane(results, cfg.dataplane.name());
        c2m::tune::capacity::check(cfg.connections, both_ends_here, cfg.keep_free, &model)
            .map_err(|e| anyhow::anyhow!("{e} (--force starts anyway; the MemFree guard still stops the run)"))?;
    }
    let opts = c2m::load::RunOptions {
        json: args.json.clone(),
        hlog: args.hlog.clone(),
        progress: !args.no_progress,
        events: args.events,
        metrics: args.metrics,
    };
    let report = c2m::load::run(cfg, &opts).context("running the load")?;
    if report.status == c2m::schema::load::RunStatus::Aborted {
        // The report is written; the exit status still tells a script the run fell short.
        return Err(c2m::exit::FellShort("the run was aborted (its report says why)".into()).into());
    }
    if let Some(short) = report.shortfall() {
        return Err(c2m::exit::FellShort(format!("c2m load: fell short: {short}")).into());
    }
    Ok(())
}

fn soak(dir: &std::path::Path) -> anyhow::Result<()> {
    let held =
        c2m::results::soak::summarize(dir).with_context(|| format!("summarizing the soak in {}", dir.display()))?;
    if !held {
        return Err(c2m::exit::FellShort(
            "the soak did not hold (summary.md says what drifted, leaked or went missing)".into(),
        )
        .into());
    }
    Ok(())
}

fn merge(reports: &[std::path::PathBuf], output: Option<&std::path::Path>) -> anyhow::Result<()> {
    let merged = c2m::results::merge::merge_files(reports).map_err(|e| match e {
        c2m::results::merge::MergeError::Read { .. } => anyhow::Error::new(e),
        _ => anyhow::Error::new(c2m::exit::Usage(e.to_string())),
    })?;
    let text = serde_json::to_string_pretty(&merged).context("serializing the merged report")? + "\n";
    match output {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()).context("writing stdout")?,
    }
    eprint!("{}", c2m::load::progress::summary(&merged));
    if merged.status == c2m::schema::load::RunStatus::Aborted {
        return Err(c2m::exit::FellShort("a shard of the run was aborted (the report says why)".into()).into());
    }
    if let Some(short) = merged.shortfall() {
        return Err(c2m::exit::FellShort(format!("c2m results merge: the run fell short: {short}")).into());
    }
    Ok(())
}

/// Exit status: 0 done, 1 error, 2 usage, 3 fell short (see `c2m::exit`); clap itself ends a
/// wrong command line with 2 before any of this runs.
fn main() {
    let outcome = match Cli::parse().command {
        Command::Serve(args) => serve(args).map(|()| c2m::exit::DONE),
        Command::Bench(args) => c2m::bench::run(args).map(|()| c2m::exit::DONE),
        Command::Load(args) => load(*args).map(|()| c2m::exit::DONE),
        Command::Results(ResultsCommand::Merge { reports, output }) => {
            merge(&reports, output.as_deref()).map(|()| c2m::exit::DONE)
        }
        Command::Results(ResultsCommand::Soak { dir }) => soak(&dir).map(|()| c2m::exit::DONE),
        Command::Tune(args) => c2m::tune::run(args),
        Command::Hold(a) => hold(a).map(|()| c2m::exit::DONE),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "c2m", &mut std::io::stdout());
            Ok(c2m::exit::DONE)
        }
        Command::Man => man().map(|()| c2m::exit::DONE),
        Command::Loss(a) => loss(a).map(|()| c2m::exit::DONE),
    };
    match outcome {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("Error: {}", message(&e));
            std::process::exit(c2m::exit::status_of(&e));
        }
    }
}

/// An error and its causes on one line, each cause once: many of the library's errors already
/// print their source in their own message.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The man page: the top command's, then one section per subcommand (what `--help` says of each).
fn man() -> anyhow::Result<()> {
    let cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd.clone()).render(&mut out).context("writing the man page")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("c2m-{}", sub.get_name());
        let sub = sub.clone().name(name).version(c2m::build_info::LONG_VERSION);
        clap_mangen::Man::new(sub).render(&mut out).context("writing the man page")?;
    }
    Ok(())
}

fn loss(a: LossArgs) -> anyhow::Result<()> {
    let _netns = match &a.netns {
        Some(ns) => Some(c2m::xdp::netns::enter(ns).with_context(|| format!("entering network namespace {ns}"))?),
        None => None,
    };
    let iface = c2m::xdp::Interface::by_name(&a.iface).with_context(|| format!("interface {}", a.iface))?;
    // Detached when the link's descriptor closes: at the end, or when the process is killed.
    let _loss = c2m::xdp::loss::Loss::attach(&iface, a.per_mille)
        .with_context(|| format!("attaching the loss program to {}", a.iface))?;
    eprintln!(
        "c2m loss: dropping {}.{}% of the frames {} receives for {}",
        a.per_mille / 10,
        a.per_mille % 10,
        a.iface,
        c2m::units::human_duration(a.lasting)
    );
    let signals = c2m::host::signal::block_stop_signals().context("blocking SIGINT/SIGTERM")?;
    let _ = c2m::host::signal::wait_signal(&signals, a.lasting);
    Ok(())
}

fn hold(a: HoldArgs) -> anyhow::Result<()> {
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
