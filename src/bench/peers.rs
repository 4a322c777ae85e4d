//! `c2m bench --peers`: the same measurements against c2m and each peer server of
//! `bench/peers/peers.toml`, in turns, round after round (the order rotated by one each round,
//! so no server always follows the same one), with `c2m load` as the only load generator.
//! Writes `results/peers/<stamp>-<host>.json` (a [`result::PeersResult`]) and the comparison
//! table into results/REPORT.md.
//!
//! Per server and round, each with a fresh server: echo throughput (64 B, closed loop), ping
//! latency at a fixed open-loop rate (then SIGTERM with the connections held: the shutdown
//! time), and idle connections until MemFree has dropped by the budget. A peer whose program
//! takes a descriptor per connection runs as several processes on one SO_REUSEPORT port, none
//! given more than `connections_per_shard`.

pub mod load_run;
pub mod manifest;
pub mod server;
pub mod slope;
pub mod trials;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use self::manifest::Server;
use self::trials::Setup;
use super::output::{result_base, with_ext};
use super::{BenchArgs, signals};
use crate::host::{clock, machine};
use crate::schema::load::RunStatus;
use crate::schema::peers::{
    PEERS_RESULTS_DIR, PEERS_SCHEMA_NAME, PEERS_SCHEMA_VERSION, PeersResult, PeersSettings, Round, ServerInfo, Turn,
};
use crate::units::{human_bytes, parse_bytes, parse_count, parse_duration, thousands};

/// Where peers results go, under the results directory.
/// Connections one process of a descriptor-per-connection peer is given at most: under the
/// fixed RLIMIT_NOFILE of 20,000 here, with room for the reuseport hash's unevenness.
pub const CONNECTIONS_PER_SHARD: u64 = 18_000;
/// ECHO frame size, header included.
const ECHO_SIZE: u64 = 64;

/// The `--peers` flags of `c2m bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct PeersArgs {
    /// Compare c2m with its peers (bench/peers/peers.toml): a comma-separated list of NAMES
    /// (c2m,tokio,erlang,epoll-c,monoio), or all of them when none is given.
    #[arg(long, num_args = 0..=1, default_missing_value = "all", value_name = "NAMES")]
    pub peers: Option<String>,
    /// Connections of the echo and latency measurements.
    #[arg(long, default_value = "10k", value_parser = parse_count)]
    pub peer_connections: u64,
    /// Message window of the echo and latency measurements.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub peer_window: Duration,
    /// PING rate of the latency measurement, messages per second over all connections.
    #[arg(long, default_value = "10k", value_parser = parse_count)]
    pub peer_rate: u64,
    /// Before a capacity trial, wait at most this long for MemFree to hold still (tests, on a
    /// box busy with other tests, lower it).
    #[arg(long, hide = true, default_value = "60s", value_parser = parse_duration)]
    pub peer_settle: Duration,
    /// Before each echo and latency window, messages flow unrecorded this long (every server's
    /// first messages pay for lazy set-up: page faults, allocator pools, process heaps).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub peer_warmup: Duration,
    /// ECHOs each connection keeps outstanding in the echo measurement (closed loop).
    #[arg(long, default_value_t = 1)]
    pub peer_in_flight: u32,
    /// MemFree the connections measurement may spend (e.g. 6GiB, 256MiB).
    #[arg(long, default_value = "6GiB", value_parser = parse_bytes)]
    pub peer_budget: u64,
    /// Connections one process of a descriptor-per-connection peer is given at most (tests
    /// lower it to exercise sharding with few connections).
    #[arg(long, hide = true, default_value_t = CONNECTIONS_PER_SHARD)]
    pub peer_shard_connections: u64,
}

/// Rounds of a peers comparison unless `--rounds` says otherwise (every server once a round).
pub const DEFAULT_ROUNDS: u32 = 3;

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let p = &args.peers;
    let round_count = args.rounds.unwrap_or(DEFAULT_ROUNDS);
    if round_count == 0 {
        bail!("--rounds must be at least 1");
    }
    let started = Instant::now();
    let started_unix = clock::unix_now();
    let exe = std::env::current_exe().context("finding the c2m executable")?;
    let manifest = manifest::load().context("reading the peers manifest")?;
    let names = p.peers.as_deref().filter(|n| *n != "all");
    let asked = manifest::asked(names, manifest.as_ref().map_or(&[], |m| m.1.as_slice()));
    let servers = manifest::resolve(&asked, manifest.as_ref(), &exe);
    for s in servers.iter().filter(|s| s.missing.is_some()) {
        let line = format!("c2m bench --peers: SKIPPING {}: {}", s.name, s.missing.as_deref().unwrap_or(""));
        println!("{line}");
        eprintln!("{line}");
    }
    let available: Vec<&Server> = servers.iter().filter(|s| s.missing.is_none()).collect();
    if available.is_empty() {
        bail!("none of {asked:?} can be run");
    }
    let machine = machine::read_machine().context("reading this machine")?;
    signals::install().context("installing the SIGINT/SIGTERM handler")?;
    let setup = Setup {
        exe: exe.clone(),
        cores: machine.cores,
        connections: p.peer_connections,
        window: p.peer_window,
        echo_size: ECHO_SIZE,
        in_flight: p.peer_in_flight,
        latency_rate: p.peer_rate,
        budget: p.peer_budget,
        keep_free_floor: args.keep_free,
        per_shard: p.peer_shard_connections.max(1),
        warmup: p.peer_warmup,
        settle: p.peer_settle,
        load_json: std::env::temp_dir().join(format!("c2m-peers-{}-{started_unix}.load.json", std::process::id())),
    };
    println!(
        "c2m bench --peers: {} in {} rounds (order rotated each round): echo and latency with {} connections for {:.0} s, \
         capacity within {} of MemFree (never below {})",
        available.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
        round_count,
        thousands(p.peer_connections),
        p.peer_window.as_secs_f64(),
        human_bytes(p.peer_budget as f64),
        human_bytes(args.keep_free as f64),
    );

    let mut rounds = Vec::new();
    let mut abort_reason = None;
    'rounds: for r in 0..round_count {
        let order = rotated(&available, r as usize);
        let mut round =
            Round { round: r + 1, order: order.iter().map(|s| s.name.clone()).collect(), turns: Vec::new() };
        for server in order {
            if let Some((signal, _)) = signals::received() {
                abort_reason = Some(format!("stopped by {signal:?} in round {}", r + 1));
                rounds.push(round);
                break 'rounds;
            }
            println!("c2m bench --peers: round {}/{}, {}", r + 1, round_count, server.name);
            let turn = run_turn(&setup, server);
            println!("{}", turn_line(&turn));
            round.turns.push(turn);
        }
        rounds.push(round);
    }

    let result = PeersResult {
        schema: PEERS_SCHEMA_NAME.into(),
        schema_version: PEERS_SCHEMA_VERSION,
        c2m: crate::schema::bench::Build::this_binary(),
        machine,
        started_utc: clock::rfc3339(started_unix),
        elapsed_seconds: started.elapsed().as_secs_f64(),
        status: if abort_reason.is_some() { RunStatus::Aborted } else { RunStatus::Complete },
        abort_reason,
        settings: PeersSettings {
            rounds: round_count,
            order: "rotated".into(),
            connections: p.peer_connections,
            window_seconds: p.peer_window.as_secs_f64(),
            echo_size: ECHO_SIZE,
            echo_in_flight: p.peer_in_flight,
            latency_rate: p.peer_rate,
            budget_bytes: p.peer_budget,
            keep_free_floor_bytes: args.keep_free,
            connections_per_shard: p.peer_shard_connections.max(1),
            warmup_seconds: p.peer_warmup.as_secs_f64(),
            cpu_placement:
                "one box: server and load share every core; c2m serve and c2m load pin one worker per core, \
                            peers place their threads as they do by default"
                    .into(),
        },
        servers: servers.iter().map(server_info).collect(),
        rounds,
    };
    let path = write_result(&args.results_dir, &result, started_unix)?;
    println!("\n{}", crate::results::peers_table::markdown(&result));
    println!(
        "c2m bench --peers: {} in {:.0} s; result {}",
        status_word(&result),
        result.elapsed_seconds,
        path.display()
    );
    if !args.no_report {
        match crate::results::report::render_report(&args.results_dir) {
            Ok(report) => println!("c2m bench --peers: report {}", report.display()),
            Err(e) => println!("c2m bench --peers: rebuilding the report failed: {e}"),
        }
    }
    if let Some(reason) = &result.abort_reason {
        bail!("the peers run was aborted: {reason} (result written to {})", path.display());
    }
    Ok(())
}

/// The servers in round `r`'s order: the list rotated left by `r`.
pub fn rotated<T: Clone>(list: &[T], r: usize) -> Vec<T> {
    let mut v = list.to_vec();
    if !v.is_empty() {
        let n = r % v.len();
        v.rotate_left(n);
    }
    v
}

/// Echo, latency, capacity; a failed one is noted and the next still runs.
fn run_turn(setup: &Setup, server: &Server) -> Turn {
    let started = Instant::now();
    let mut turn = Turn { server: server.name.clone(), ..Default::default() };
    let load_note = |what: &str, status: &str, reason: &Option<String>, turn: &mut Turn| {
        if status != "complete" {
            let how = if status == "fell short" { "fell short" } else { "was aborted" };
            turn.errors.push(format!("{what}: the load {how}: {}", reason.as_deref().unwrap_or("no reason given")));
        }
    };
    match trials::echo(setup, server) {
        Ok(m) => {
            load_note("echo", &m.load.status, &m.load.abort_reason, &mut turn);
            turn.echo = Some(m);
        }
        Err(e) => turn.errors.push(format!("echo: {e:#}")),
    }
    if signals::received().is_none() {
        match trials::latency(setup, server) {
            Ok(m) => {
                load_note("latency", &m.load.status, &m.load.abort_reason, &mut turn);
                turn.latency = Some(m);
            }
            Err(e) => turn.errors.push(format!("latency: {e:#}")),
        }
    }
    if signals::received().is_none() {
        match trials::capacity(setup, server) {
            Ok(m) => {
                // The budget stops the load through its MemFree guard: that abort is the point.
                let reason = m.load.abort_reason.clone().filter(|r| !r.starts_with("MemFree fell"));
                if reason.is_some() {
                    load_note("capacity", "aborted", &reason, &mut turn);
                }
                let budget = m.baseline_mem_free.saturating_sub(m.keep_free);
                if budget < setup.budget {
                    turn.errors.push(format!(
                        "capacity: the budget was cut to {} to keep {} free",
                        human_bytes(budget as f64),
                        human_bytes(setup.keep_free_floor as f64)
                    ));
                }
                if !m.budget_reached {
                    turn.errors.push(format!(
                        "capacity: the budget was not reached with {} connections asked (a lower bound)",
                        thousands(m.connections_requested)
                    ));
                }
                if let Some(note) = trials::drift_note(&m) {
                    turn.notes.push(note);
                }
                if m.slope.is_none() {
                    turn.notes.push(
                        "capacity: too few samples past the start-up for a slope: the count is where the drop crossed the budget"
                            .into(),
                    );
                }
                turn.capacity = Some(m);
            }
            Err(e) => turn.errors.push(format!("capacity: {e:#}")),
        }
    }
    for e in &turn.errors {
        println!("  {}: {e}", server.name);
    }
    for n in &turn.notes {
        println!("  {} (note): {n}", server.name);
    }
    turn.seconds = started.elapsed().as_secs_f64();
    turn
}

fn turn_line(t: &Turn) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &t.echo {
        parts.push(format!(
            "echo {}/s, {:.2} µs server CPU each",
            thousands(e.messages_per_second as u64),
            e.server_cpu_us_per_message
        ));
    }
    if let Some(l) = &t.latency {
        parts.push(format!(
            "ping p50/p99/p99.9 {:.0}/{:.0}/{:.0} µs; start {:.0} ms, stop {:.0} ms",
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.server.startup_seconds * 1e3,
            l.server.shutdown_seconds * 1e3
        ));
    }
    if let Some(c) = &t.capacity {
        parts.push(format!(
            "{} connections in budget ({} shard(s)), {} each at the steady slope ({} on average), {}/s",
            thousands(c.connections_in_budget as u64),
            c.server.shards,
            c.slope.as_ref().map_or_else(|| "–".into(), |s| human_bytes(s.total)),
            human_bytes(c.per_connection.total),
            thousands(c.connect_rate as u64)
        ));
    }
    format!("  {} ({:.0} s): {}", t.server, t.seconds, parts.join("; "))
}

fn server_info(s: &Server) -> ServerInfo {
    ServerInfo {
        name: s.name.clone(),
        description: s.description.clone(),
        bin: s.bin.display().to_string(),
        version: s.version.clone(),
        build: s.build.clone(),
        fd_per_connection: s.fd_per_connection,
        available: s.missing.is_none(),
        skipped_reason: s.missing.clone(),
    }
}

fn status_word(r: &PeersResult) -> &'static str {
    match r.status {
        RunStatus::Complete => "complete",
        RunStatus::FellShort => "FELL SHORT",
        RunStatus::Aborted => "ABORTED",
    }
}

fn write_result(results_dir: &Path, result: &PeersResult, started_unix: i64) -> anyhow::Result<PathBuf> {
    let dir = results_dir.join(PEERS_RESULTS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = with_ext(&result_base(&dir, &clock::file_stamp(started_unix), &result.machine.host), "json");
    let text = serde_json::to_string_pretty(result).context("serializing the peers result")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate() {
        let names = ["c2m", "tokio", "erlang", "epoll-c", "monoio"];
        assert_eq!(rotated(&names, 0), names);
        assert_eq!(rotated(&names, 1), ["tokio", "erlang", "epoll-c", "monoio", "c2m"]);
        assert_eq!(rotated(&names, 7), ["erlang", "epoll-c", "monoio", "c2m", "tokio"]);
        assert!(rotated::<&str>(&[], 3).is_empty());
    }
}
