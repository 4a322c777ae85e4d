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
    let field = |name: &str| words.iter().position(|w| *w == name).and_then(|i| words.get(i + 1)?.parse().ok()).unwrap_or(0);
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

fn snapshot(server: u32, clients: &[u32]) -> anyhow::Result<Snapshot> {
    let m = meminfo()?;
    let (tcp_inuse, tcp_mem_pages) = sockstat()?;
    let (server_rss, server_pss) = rss_pss(server)?;
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let free = meminfo()?["MemFree"];
    let fit = (free.saturating_sub(FLOOR) / PLAN_BYTES_PER_CONN) as usize;
    let n = match args.connections {
        Some(n) if n > fit => bail!(
            "{n} connections need about {} MiB at {PLAN_BYTES_PER_CONN} B each; MemFree is {} MiB and {} MiB must stay free: at most {fit} fit",
            n as u64 * PLAN_BYTES_PER_CONN >> 20,
            free >> 20,
            FLOOR >> 20
        ),
        Some(n) => n,
        None => 200_000.min(fit),
    };
    if n == 0 {
        bail!("not enough free memory for any connection");
    }
    let shards = n.div_ceil(args.per_client);
    if shards > 250 {
        bail!("{shards} client processes would need more than 250 source addresses");
    }
    let bin = c2m_bin();
    let mut serve = Command::new(&bin);
    serve.args(["serve", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    serve.args(["--max-sessions", &(n + n / 10 + 1000).to_string()]);
    if let Some(w) = args.workers {
        serve.args(["--workers", &w.to_string()]);
    }
    let mut server = serve.stdout(Stdio::piped()).spawn().with_context(|| format!("starting {}", bin.display()))?;
    let mut banner = String::new();
    BufReader::new(server.stdout.as_mut().unwrap()).read_line(&mut banner)?;
    print!("{banner}");
    let word_after = |key: &str| -> anyhow::Result<String> {
        Ok(banner.split(key).nth(1).and_then(|r| r.split_whitespace().next()).context("banner")?.to_string())
    };
    let addr = word_after("listening on ")?;
    let metrics: std::net::SocketAddr = word_after("metrics ")?.trim_start_matches("http://").trim_end_matches("/metrics").parse()?;
    std::thread::sleep(Duration::from_millis(300));
    let before = snapshot(server.id(), &[])?;
    let started = Instant::now();
    let mut holders = Vec::new();
    let mut left = n;
    for shard in 0..shards {
        let count = left.min(args.per_client);
        left -= count;
        let source = format!("127.0.{}.{}", 1 + shard / 250, 2 + shard % 250);
        let mut child = Command::new(&bin)
            .args(["hold", "--server", &addr, "--source", &source, "-c", &count.to_string()])
            .args(["--first-user", &(1 + (shard * args.per_client) as u64).to_string(), "--hold-secs", "600"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line)?;
        let report: HoldReport = serde_json::from_str(line.trim()).with_context(|| format!("hold report {line:?}"))?;
        eprintln!("shard {shard}: {} connected, {} logged in, {} ponged, {} errors", report.connected, report.logged_in, report.ponged, report.errors);
        holders.push(Holder { child, stdin, report });
    }
    let up_secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = holders.iter().map(|h| h.child.id()).collect();
    let after = snapshot(server.id(), &pids)?;
    let text = metrics_http::scrape(metrics)?;
    let metric = |name| sum_metric(&text, name).unwrap_or(f64::NAN);
    let active = metric("c2m_sessions_active");
    let slab_resident = metric("c2m_slab_resident_bytes");
    let ponged: usize = holders.iter().map(|h| h.report.ponged).sum();
    let errors: usize = holders.iter().map(|h| h.report.errors).sum();

    let per = |bytes: i64| bytes as f64 / n as f64;
    let server_user = after.server_rss as i64 - before.server_rss as i64;
    let clients_user = after.clients_rss as i64;
    let free_drop = before.mem_free as i64 - after.mem_free as i64;
    let kernel = free_drop - server_user - clients_user;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let result = serde_json::json!({
        "schema": "c2m.idle-memory/1",
        "c2m_version": env!("CARGO_PKG_VERSION"),
        "when_unix": SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        "machine": {
            "host": host,
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "mem_total": meminfo()?["MemTotal"],
            "server_banner": banner.trim(),
        },
        "asked": n,
        "sessions_active": active,
        "ponged": ponged,
        "client_errors": errors,
        "client_processes": shards,
        "seconds_to_open": up_secs,
        "before": before,
        "after": after,
        "per_connection_bytes": {
            "server_user_rss": per(server_user),
            "server_slab_resident": slab_resident / n as f64,
            "client_user_rss": per(clients_user),
            "kernel_memfree_minus_user": per(kernel),
            "kernel_slab": per(after.slab as i64 - before.slab as i64),
            "kernel_sunreclaim": per(after.sunreclaim as i64 - before.sunreclaim as i64),
            "tcp_mem": per((after.tcp_mem_pages as i64 - before.tcp_mem_pages as i64) * 4096),
            "total_memfree": per(free_drop),
        },
    });
    println!("\nidle sessions: asked {n}, active {active}, ponged {ponged}, client errors {errors}, opened in {up_secs:.1} s");
    println!("per connection (a client socket + a server socket on loopback):");
    for (k, v) in result["per_connection_bytes"].as_object().unwrap() {
        println!("  {k:<28} {:>9.1} B", v.as_f64().unwrap_or(f64::NAN));
    }
    let dir = std::path::Path::new(&args.out);
    std::fs::create_dir_all(dir)?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let path = dir.join(format!("{stamp}-{host}-{n}.json"));
    std::fs::File::create(&path)?.write_all(serde_json::to_string_pretty(&result)?.as_bytes())?;
    println!("wrote {}", path.display());

    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.child.wait();
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let status = server.wait()?;
    if !status.success() {
        bail!("server exited with {status}");
    }
    if active as usize != n || ponged != n {
        bail!("only {active} of {n} sessions were held ({ponged} answered a PING)");
    }
    Ok(())
}
