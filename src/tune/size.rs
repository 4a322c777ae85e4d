//! `c2m tune size`: connections held and connect rate on other hardware, scaled from what one
//! committed result measured. The output says, line by line, what the figures rest on.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::TuneError;
use crate::schema::bench::BenchResult;
use crate::units::round_down_3_digits;
use crate::units::{human_bytes, thousands};

/// MemFree c2m's guards keep free (`--keep-free` default).
const KEEP_FREE: u64 = 2 << 30;
/// Kernel and system daemons at idle, besides `struct page`.
const OS_BASE: u64 = 1 << 30;

/// The hardware to predict for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Target {
    pub memory_bytes: u64,
    pub cores: u64,
    /// The load runs on other machines: only the server end's cost is here.
    pub server_only: bool,
    /// Memory not available to connections; `None`: [`default_reserve`].
    pub reserve_bytes: Option<u64>,
}

/// 2 GiB c2m keeps free, 1/64 of memory for `struct page` (64 bytes per 4 KiB page), and 1 GiB
/// for the kernel and daemons at idle.
pub fn default_reserve(memory: u64) -> u64 {
    KEEP_FREE + memory / 64 + OS_BASE
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub result: String,
    pub target: Target,
    pub reserve_bytes: u64,
    /// Bytes per connection on the target (per pair with both ends there, per server end without).
    pub bytes_per_connection: f64,
    /// Rounded down to three significant digits.
    pub connections: u64,
    /// CPU seconds per connect on the measured box (both processes, or the server's share).
    pub cpu_seconds_per_connect: f64,
    pub connect_rate: f64,
    pub measured_connect_rate: f64,
    /// What the figures rest on, one statement a line.
    pub basis: Vec<String>,
}

/// Finds the complete result with the most connections under `dir` (newest of equals).
pub fn largest_result(dir: &Path) -> Option<(PathBuf, BenchResult)> {
    crate::results::files::largest_result(dir, 1)
}

/// Reads a c2m-bench-result file.
pub fn read_result(path: &Path) -> Result<BenchResult, TuneError> {
    crate::results::files::read_result(path).map_err(|why| TuneError::Result(format!("{}: {why}", path.display())))
}

/// Scales `r`'s measured costs to `target`.
pub fn predict(label: &str, r: &BenchResult, target: &Target) -> Result<Prediction, TuneError> {
    let n = r.memory.connections;
    let per = &r.memory.per_connection;
    let m = &r.machine;
    if n == 0 || r.load.connections.connect_seconds <= 0.0 || m.cores == 0 {
        return Err(TuneError::Result(format!("{label}: no connections or connect time measured")));
    }
    // As fit.rs: MemFree moves either way, so what the kernel cannot reclaim plus both processes'
    // growth is a floor under the measured total.
    let pair = per.total.max(per.kernel_unreclaimable + per.server_user + per.load_user);
    let kernel = per.kernel_total.clamp(0.0, pair);
    let each = if target.server_only { kernel / 2.0 + per.server_user } else { pair };
    let reserve = target.reserve_bytes.unwrap_or_else(|| default_reserve(target.memory_bytes));
    let usable = target.memory_bytes.saturating_sub(reserve);
    let connections = round_down_3_digits((usable as f64 / each.max(1.0)) as u64);

    let server_cpu = r.server.cpu_user_seconds + r.server.cpu_system_seconds;
    let load_cpu = r.load_process.cpu_user_seconds + r.load_process.cpu_system_seconds;
    let t = r.load.connections.connect_seconds;
    let connected = r.load.connections.established.max(1) as f64;
    // The ramp's CPU: at most every core for the whole ramp, and at most the run's whole CPU.
    let (ramp_cpu, bound) = if server_cpu + load_cpu < m.cores as f64 * t {
        (server_cpu + load_cpu, "the whole run's CPU (server + load), all of it charged to the ramp")
    } else {
        (m.cores as f64 * t, "every core busy for the whole ramp (the ramp was CPU-bound)")
    };
    let share = if target.server_only { server_cpu / (server_cpu + load_cpu).max(f64::MIN_POSITIVE) } else { 1.0 };
    let cpu_per_connect = ramp_cpu * share / connected;
    let connect_rate = target.cores as f64 / cpu_per_connect;
    let measured_rate = r.load.connections.connect_rate_achieved;

    let mut basis = vec![
        format!(
            "result: {label} (scenario {}, {}, {} connections, status complete)",
            r.scenario.name,
            r.started_utc,
            thousands(n)
        ),
        format!(
            "measured on: {} ({}, {} cores, {} RAM), kernel {}",
            m.host,
            m.cpu_model,
            m.cores,
            human_bytes(m.memory_bytes as f64),
            m.kernel
        ),
        format!(
            "memory per connection measured: {} total as the MemFree drop (kernel {}, c2m serve {}, c2m load {}), client and server on loopback",
            human_bytes(pair),
            human_bytes(kernel),
            human_bytes(per.server_user),
            human_bytes(per.load_user)
        ),
    ];
    if target.server_only {
        basis.push(format!(
            "--server-only: the load runs on other machines, so each connection here is one socket: half the kernel part ({}) + c2m serve's {} = {}",
            human_bytes(kernel / 2.0),
            human_bytes(per.server_user),
            human_bytes(each)
        ));
    } else {
        basis.push(format!("both ends on the one box (as measured): {} per connection", human_bytes(each)));
    }
    basis.extend([
        format!(
            "memory kept from connections: {}{}",
            human_bytes(reserve as f64),
            if target.reserve_bytes.is_none() {
                " = 2 GiB c2m keeps free + 1/64 of memory for struct page + 1 GiB kernel and daemons"
            } else {
                " (--reserve)"
            }
        ),
        format!("no margin on the measured cost (c2m's own start-up check adds {:.0}% to a cost measured over this many connections)", (crate::tune::capacity::margin_for(n) - 1.0) * 100.0),
        "same kernel struct sizes (tcp_sock, file, inode, dentry, io_uring request): another kernel version or config moves the kernel part".into(),
        "no other limit stops it first: the sysctls raised as in tuning/ (run `c2m tune check` on the box itself)".into(),
        format!(
            "connect rate measured: {}/s with {} cores over a {:.1} s ramp; CPU taken as {bound}: {:.1} CPU s, {:.1} us per connect{}",
            thousands(measured_rate as u64),
            m.cores,
            t,
            ramp_cpu,
            ramp_cpu / connected * 1e6,
            if target.server_only {
                format!(
                    ", of which the server's share {:.0}% (its part of the whole run's CPU, assumed the same in the ramp)",
                    share * 100.0
                )
            } else {
                " (server and load shared the box)".into()
            }
        ),
        format!(
            "connect rate scales linearly in cores ({} here): no lock contention, loopback instead of a NIC and its interrupts, \
             connect concurrency high enough to keep every core busy",
            target.cores
        ),
    ]);
    Ok(Prediction {
        result: label.to_string(),
        target: target.clone(),
        reserve_bytes: reserve,
        bytes_per_connection: each,
        connections,
        cpu_seconds_per_connect: cpu_per_connect,
        connect_rate,
        measured_connect_rate: measured_rate,
        basis,
    })
}

pub fn render(p: &Prediction) -> String {
    let mut out = format!(
        "A box with {} and {} cores{} holds about {} connections and opens about {}/s.\n\nThis rests on:\n",
        human_bytes(p.target.memory_bytes as f64),
        p.target.cores,
        if p.target.server_only { " (server only, load elsewhere)" } else { " (c2m serve and c2m load both on it)" },
        thousands(p.connections),
        thousands(round_down_3_digits(p.connect_rate as u64)),
    );
    for line in &p.basis {
        out.push_str(&format!("  - {line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// A result as the c1m run wrote it, cut to the fields `predict` reads.
    fn result() -> BenchResult {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/results/c1m/20261127T230951Z-vm.json"))
                .unwrap();
        let mut r: BenchResult = serde_json::from_str(&text).unwrap();
        let per = &mut r.memory.per_connection;
        per.total = 10_000.0;
        per.kernel_total = 9_600.0;
        per.kernel_unreclaimable = 7_600.0;
        per.server_user = 200.0;
        per.load_user = 200.0;
        r.memory.connections = 1_000_000;
        r.machine.cores = 2;
        r.load.connections.established = 1_000_000;
        r.load.connections.connect_seconds = 40.0;
        r.load.connections.connect_rate_achieved = 25_000.0;
        r.server.cpu_user_seconds = 10.0;
        r.server.cpu_system_seconds = 50.0;
        r.load_process.cpu_user_seconds = 10.0;
        r.load_process.cpu_system_seconds = 70.0;
        r
    }

    fn target(server_only: bool) -> Target {
        Target { memory_bytes: 128 * GIB, cores: 16, server_only, reserve_bytes: None }
    }

    #[test]
    fn memory_bound_both_ends() {
        let p = predict("r.json", &result(), &target(false)).unwrap();
        // 128 GiB - (2 + 2 + 1) GiB = 123 GiB / 10,000 B = 13,207,024 -> 13,200,000.
        assert_eq!(p.reserve_bytes, 5 * GIB);
        assert_eq!(p.bytes_per_connection, 10_000.0);
        assert_eq!(p.connections, 13_200_000);
    }

    #[test]
    fn server_only_halves_the_kernel_and_drops_the_load() {
        let p = predict("r.json", &result(), &target(true)).unwrap();
        // 9,600 / 2 + 200.
        assert_eq!(p.bytes_per_connection, 5_000.0);
        assert_eq!(p.connections, 26_400_000);
    }

    #[test]
    fn connect_rate_scales_with_cores() {
        // 140 CPU s over the run > 2 cores x 40 s: the ramp is taken as CPU-bound, 80 us a connect.
        let p = predict("r.json", &result(), &target(false)).unwrap();
        assert!((p.cpu_seconds_per_connect - 80e-6).abs() < 1e-12);
        assert!((p.connect_rate - 200_000.0).abs() < 1e-6);
        // The server took 60 of the run's 140 CPU s: its share of a connect is 3/7 of 80 us.
        let s = predict("r.json", &result(), &target(true)).unwrap();
        assert!((s.connect_rate - 200_000.0 * 7.0 / 3.0).abs() < 1e-3);
        assert!(s.basis.iter().any(|l| l.contains("server's share 43%")));
    }

    #[test]
    fn a_ramp_that_was_not_cpu_bound_uses_the_run_cpu() {
        let mut r = result();
        r.server.cpu_system_seconds = 10.0;
        r.load_process.cpu_system_seconds = 10.0;
        // 40 CPU s < 80 core-seconds of ramp: 40 us per connect.
        let p = predict("r.json", &r, &target(false)).unwrap();
        assert!((p.cpu_seconds_per_connect - 40e-6).abs() < 1e-12);
    }

    #[test]
    fn a_given_reserve_is_used_and_said() {
        let t = Target { reserve_bytes: Some(8 * GIB), ..target(false) };
        let p = predict("r.json", &result(), &t).unwrap();
        assert_eq!(p.connections, round_down_3_digits((120 * GIB) / 10_000));
        let text = render(&p);
        assert!(text.contains("(--reserve)"), "{text}");
        assert!(text.starts_with("A box with 128.0 GiB and 16 cores"), "{text}");
    }

    #[test]
    fn finds_the_largest_committed_result() {
        let (path, r) = largest_result(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/results"))).unwrap();
        assert!(r.memory.connections >= 1_000_000, "{}", path.display());
        assert!(predict(&path.display().to_string(), &r, &target(false)).unwrap().connections > 0);
    }
}
