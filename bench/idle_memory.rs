//! Idle-session memory benchmark: what one held, logged-in connection costs, server user space
//! and kernel, measured as DESIGN.md says (MemFree/Slab/SUnreclaim deltas, /proc/net/sockstat,
//! Rss/Pss from smaps_rollup). Starts `c2m serve` and shards of the plain-socket `c2m hold`
//! client (19,000 connections per process, one source address each), all on loopback.
//!
//! cargo run --release --example idle-memory -- [-c N] [--workers W] [--out DIR]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use c2m::client::HoldReport;
use c2m::stats::{metrics_http, sum_metric};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Connections to hold [default: 200,000, or fewer if this box's free memory says so].
    #[arg(short = 'c', long)]
    connections: Option<usize>,
    /// Server workers [default: cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Where the JSON result goes.
    #[arg(long, default_value = "results/idle-memory")]
    out: String,
    /// Connections per client process (each stays under RLIMIT_NOFILE).
    #[arg(long, default_value_t = 19_000)]
    per_client: usize,
    /// Which servers to measure, one after the other in this run: c2m, the epoll-c peer
    /// (bench/peers/epoll-c, sharded into processes of 19,000), or both.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    server: Which,
    /// Rounds; with both servers their order alternates from round to round, so neither always
    /// inherits the other's freed kernel memory.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    C2m,
    EpollC,
    Both,
}

/// Memory the box must keep free (MemFree, not MemAvailable).
const FLOOR: u64 = 2 << 30;
/// Planning figure per connection (both ends, kernel + user) before anything is measured: the
/// plain epoll pair costs ~8.5 KB here; the std-socket client adds its own user memory.
const PLAN_BYTES_PER_CONN: u64 = 12 * 1024;

fn meminfo() -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb: u64 = v.trim().trim_end_matches(" kB").parse().ok()?;
            Some((k.to_string(), kb * 1024))
        })
        .collect())
}

/// (TCP sockets in use, TCP memory pages) from /proc/net/sockstat.
fn sockstat() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/sockstat")?;
    let line = text.lines().find(|l| l.starts_with("TCP:")).context("no TCP line in sockstat")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field =
        |name: &str| words.iter().position(|w| *w == name).and_then(|i| words.get(i + 1)?.parse().ok()).unwrap_or(0);
    Ok((field("inuse"), field("mem")))
}

/// (Rss, Pss) of a process in bytes, from smaps_rollup.
fn rss_pss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((field("Rss:"), field("Pss:")))
}

#[derive(serde::Serialize, Clone, Copy, Default)]
struct Snapshot {
    mem_free: u64,
    slab: u64,
    sunreclaim: u64,
    tcp_inuse: u64,
    tcp_mem_pages: u64,
    server_rss: u64,
    server_pss: u64,
    clients_rss: u64,
}

fn snapshot(servers: &[u32], clients: &[u32]) -> anyhow::Result<Snapshot> {
    let m = meminfo()?;
    let (tcp_inuse, tcp_mem_pages) = sockstat()?;
    let (mut server_rss, mut server_pss) = (0, 0);
    for &pid in servers {
        let (rss, pss) = rss_pss(pid)?;
        server_rss += rss;
        server_pss += pss;
    }
    let mut clients_rss = 0;
    for &pid in clients {
        clients_rss += rss_pss(pid)?.0;
    }
    Ok(Snapshot {
        mem_free: m["MemFree"],
        slab: m["Slab"],
        sunreclaim: m["SUnreclaim"],
        tcp_inuse,
        tcp_mem_pages,
        server_rss,
        server_pss,
        clients_rss,
    })
}

struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    report: HoldReport,
}

fn c2m_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("C2M_BIN") {
        return p.into();
    }
    // target/<profile>/examples/idle-memory -> target/<profile>/c2m
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().join("c2m")
}

/// The servers under test: one `c2m serve`, or the epoll-c peer's processes.
struct Servers {
    children: Vec<Child>,
    addr: String,
    /// c2m's /metrics, for its slab figures.
    metrics: Option<std::net::SocketAddr>,
    banner: String,
}

impl Servers {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    fn stop(self) -> anyhow::Result<()> {
        for mut child in self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let status = child.wait()?;
            if !status.success() {
                bail!("server process exited with {status}");
            }
        }
        Ok(())
    }
}

fn first_line(child: &mut Child) -> anyhow::Result<String> {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
    Ok(line)
}

fn start_c2m(bin: &std::path::Path, n: usize, workers: Option<usize>) -> anyhow::Result<Servers> {
    let mut serve = Command::new(bin);
    serve.args(["serve", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    serve.args(["--max-sessions", &(n + n / 10 + 1000).to_string()]);
    if let Some(w) = workers {
        serve.args(["--workers", &w.to_string()]);
    }
    let mut child = serve.stdout(Stdio::piped()).spawn().with_context(|| format!("starting {}", bin.display()))?;
    let banner = first_line(&mut child)?;
    let word_after = |key: &str| -> anyhow::Result<String> {
        Ok(banner.split(key).nth(1).and_then(|r| r.split_whitespace().next()).context("banner")?.to_string())
    };
    let addr = word_after("listening on ")?;
    let metrics = word_after("metrics ")?.trim_start_matches("http://").trim_end_matches("/metrics").parse()?;
    Ok(Servers { children: vec![child], addr, metrics: Some(metrics), banner: banner.trim().to_string() })
}

/// Builds bench/peers/epoll-c with the system C compiler and starts enough processes of it,
/// sharing one port with SO_REUSEPORT, to hold `n` connections under RLIMIT_NOFILE each.
fn start_epoll_c(n: usize, per_process: usize) -> anyhow::Result<Servers> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("target/peers/epoll-c");
    std::fs::create_dir_all(bin.parent().unwrap())?;
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(root.join("bench/peers/epoll-c/server.c"))
        .status()
        .context("running cc (the epoll-c peer needs a C compiler)")?;
    if !status.success() {
        bail!("building epoll-c failed");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // The kernel's reuseport hash is not perfectly even: leave headroom per process.
    let processes = (n + n / 8).div_ceil(per_process).max(1);
    let mut children = Vec::new();
    let mut banner = String::new();
    for _ in 0..processes {
        let mut child = Command::new(&bin).args(["127.0.0.1", &port.to_string()]).stdout(Stdio::piped()).spawn()?;
        banner = first_line(&mut child)?;
        children.push(child);
    }
    let banner = format!("{} x {}", processes, banner.trim());
    Ok(Servers { children, addr: format!("127.0.0.1:{port}"), metrics: None, banner })
}

/// Opens `n` idle logged-in connections to `servers` and measures what they cost.
fn measure(
    name: &str,
    servers: &Servers,
    n: usize,
    per_client: usize,
    bin: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    println!("\n== {name}: {}", servers.banner);
    std::thread::sleep(Duration::from_millis(300));
    let before = snapshot(&servers.pids(), &[])?;
    let started = Instant::now();
    let mut holders = Vec::new();
    let mut left = n;
    for shard in 0..n.div_ceil(per_client) {
        let count = left.min(per_client);
        left -= count;
        let source = format!("127.0.{}.{}", 1 + shard / 250, 2 + shard % 250);
        let mut child = Command::new(bin)
            .args(["hold", "--server", &servers.addr, "--source", &source, "-c", &count.to_string()])
            .args(["--first-user", &(1 + (shard * per_client) as u64).to_string(), "--hold-secs", "600"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let line = first_line(&mut child)?;
        let report: HoldReport = serde_json::from_str(line.trim()).with_context(|| format!("hold report {line:?}"))?;
        if report.errors > 0 {
            eprintln!("client {shard}: {report:?}");
        }
        holders.push(Holder { child, stdin, report });
    }
    let up_secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = holders.iter().map(|h| h.child.id()).collect();
    let after = snapshot(&servers.pids(), &pids)?;
    let (active, slab_resident) = match servers.metrics {
        Some(m) => {
            let text = metrics_http::scrape(m)?;
            let metric = |name| sum_metric(&text, name).unwrap_or(f64::NAN);
            (metric("c2m_sessions_active"), metric("c2m_slab_resident_bytes"))
        }
        None => (f64::NAN, f64::NAN),
    };
    let ponged: usize = holders.iter().map(|h| h.report.ponged).sum();
    let errors: usize = holders.iter().map(|h| h.report.errors).sum();
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.child.wait();
    }

    let per = |bytes: i64| bytes as f64 / n as f64;
    let server_user = after.server_rss as i64 - before.server_rss as i64;
    let clients_user = after.clients_rss as i64;
    let free_drop = before.mem_free as i64 - after.mem_free as i64;
    let result = serde_json::json!({
        "server": name,
        "server_banner": servers.banner,
        "asked": n,
        "sessions_active": active,
        "ponged": ponged,
        "client_errors": errors,
        "client_processes": pids.len(),
        "seconds_to_open": up_secs,
        "before": before,
        "after": after,
        "per_connection_bytes": {
            "server_user_rss": per(server_user),
            "server_slab_resident": slab_resident / n as f64,
            "client_user_rss": per(clients_user),
            "kernel": per(free_drop - server_user - clients_user),
            "kernel_slab": per(after.slab as i64 - before.slab as i64),
            "kernel_sunreclaim": per(after.sunreclaim as i64 - before.sunreclaim as i64),
            "tcp_mem": per((after.tcp_mem_pages as i64 - before.tcp_mem_pages as i64) * 4096),
            "total_memfree": per(free_drop),
        },
    });
    println!("{n} idle sessions: {ponged} answered a PING, {errors} client errors, opened in {up_secs:.1} s");
    println!("per connection (a client socket + a server socket on loopback):");
    for (k, v) in result["per_connection_bytes"].as_object().unwrap() {
        println!("  {k:<24} {:>9.1} B", v.as_f64().unwrap_or(f64::NAN));
    }
    if ponged != n {
        bail!("{name}: only {ponged} of {n} connections were held and answered");
    }
    Ok(result)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let free = meminfo()?["MemFree"];
    let fit = (free.saturating_sub(FLOOR) / PLAN_BYTES_PER_CONN) as usize;
    let n = match args.connections {
        Some(n) if n > fit => bail!(
            "{n} connections need about {} MiB at {PLAN_BYTES_PER_CONN} B each; MemFree is {} MiB and {} MiB must stay free: at most {fit} fit",
            (n as u64 * PLAN_BYTES_PER_CONN) >> 20,
            free >> 20,
            FLOOR >> 20
        ),
        Some(n) => n,
        None => 200_000.min(fit),
    };
    if n == 0 {
        bail!("not enough free memory for any connection");
    }
    if n.div_ceil(args.per_client) > 250 * 250 {
        bail!("too many client processes for the source addresses");
    }
    let bin = c2m_bin();
    let mut order = Vec::new();
    for round in 0..args.rounds.max(1) {
        match args.server {
            Which::C2m => order.push(Which::C2m),
            Which::EpollC => order.push(Which::EpollC),
            Which::Both if round % 2 == 0 => order.extend([Which::C2m, Which::EpollC]),
            Which::Both => order.extend([Which::EpollC, Which::C2m]),
        }
    }
    let mut runs = Vec::new();
    for (i, which) in order.into_iter().enumerate() {
        if i > 0 {
            // Let the last run's sockets finish closing so their memory is back.
            std::thread::sleep(Duration::from_secs(3));
        }
        let (name, servers) = match which {
            Which::C2m => ("c2m", start_c2m(&bin, n, args.workers)?),
            _ => ("epoll-c", start_epoll_c(n, args.per_client)?),
        };
        let run = measure(name, &servers, n, args.per_client, &bin);
        servers.stop()?;
        runs.push(run?);
    }
    let mean = |name: &str, field: &str| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r["server"] == name)
            .filter_map(|r| r["per_connection_bytes"][field].as_f64())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut summary = serde_json::Map::new();
    for name in ["c2m", "epoll-c"] {
        let fields = ["kernel", "kernel_sunreclaim", "server_user_rss", "total_memfree"];
        let m: serde_json::Map<String, serde_json::Value> =
            fields.iter().filter_map(|f| Some((f.to_string(), mean(name, f)?.into()))).collect();
        if !m.is_empty() {
            summary.insert(name.to_string(), m.into());
        }
    }
    // Unreclaimable slab is the steady figure: MemFree moves with whatever the previous run left
    // in the slab caches and with page-cache activity, by thousands of bytes per connection.
    let ratio = match (mean("c2m", "kernel_sunreclaim"), mean("epoll-c", "kernel_sunreclaim")) {
        (Some(a), Some(b)) => Some(a / b),
        _ => None,
    };
    println!("\nmeans over rounds, bytes per connection: {}", serde_json::Value::Object(summary.clone()));
    if let Some(r) = ratio {
        println!("kernel unreclaimable slab per connection, c2m / epoll-c in this run: {r:.3}");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let result = serde_json::json!({
        "schema": "c2m.idle-memory/1",
        "c2m_version": env!("CARGO_PKG_VERSION"),
        "git_commit": Command::new("git").args(["describe", "--always", "--dirty"]).output().ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        "when_unix": SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        "machine": {
            "host": host,
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "mem_total": meminfo()?["MemTotal"],
            "rlimit_nofile": nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?.0,
        },
        "connections": n,
        "runs": runs,
        "mean_per_connection_bytes": summary,
        "sunreclaim_ratio_c2m_over_epoll_c": ratio,
    });
    let dir = std::path::Path::new(&args.out);
    std::fs::create_dir_all(dir)?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let path = dir.join(format!("{stamp}-{host}-{n}.json"));
    std::fs::File::create(&path)?.write_all(serde_json::to_string_pretty(&result)?.as_bytes())?;
    println!("wrote {}", path.display());
    Ok(())
}
