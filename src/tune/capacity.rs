//! Will N connections fit? The capacity model: the prediction `c2m bench`, `c2m load` and
//! `c2m tune check` make before they start, so a run that would exhaust memory is refused up front
//! with what would fit instead.
//!
//! Cost per connection comes from the best result measured here (`results/<scenario>/*.json`)
//! or, without one, from the idle-memory runs in `results/idle-memory/`. Memory is compared with
//! MemFree (not MemAvailable, which counts live sockets' inodes as reclaimable), less a floor
//! that must stay free; open files with what fs.file-max still allows.

use std::fmt;
use std::path::Path;

use crate::host::{HostError, machine, memory};
use crate::results::files::largest_result_on;
use crate::transport::DataPlaneName;
use crate::units::{human_bytes, round_down_3_digits, short_count, thousands};

/// Head room on a measured cost: MemFree moves with page-cache activity and with what earlier
/// runs left in the slab caches, by hundreds of bytes per connection.
pub const MARGIN: f64 = 1.15;
/// Head room on a cost measured at [`LARGE_RUN`] connections or more: there the noise is spread
/// over so many connections that two runs agreed within 1% (results/c1m).
pub const MARGIN_LARGE: f64 = 1.05;
pub const LARGE_RUN: u64 = 500_000;

/// The head room for a cost measured over `connections`.
pub fn margin_for(connections: u64) -> f64 {
    if connections >= LARGE_RUN { MARGIN_LARGE } else { MARGIN }
}
/// Results with fewer connections are not used: there, MemFree noise (tens of MB) is kilobytes
/// per connection.
pub const MIN_MEASURED_CONNECTIONS: u64 = 50_000;

/// Built-in figures (bytes per loopback pair) from the idle runs in results/idle-memory/:
/// kernel from MemFree at 1,000,000 connections, and c2m serve's user space.
const DEFAULT_KERNEL: f64 = 9_212.0;
const DEFAULT_SERVER_USER: f64 = 207.0;
/// Not measured yet when this was written: the io_uring load generator's user space.
const DEFAULT_LOAD_USER: f64 = 300.0;
/// The xdp data plane's user space per connection, each end (see [`CostModel::built_in_xdp`]).
const DEFAULT_XDP_SERVER_USER: f64 = 240.0;
const DEFAULT_XDP_LOAD_USER: f64 = 240.0;

/// What one connection costs, margin included.
#[derive(Clone, Debug, PartialEq)]
pub struct CostModel {
    /// A client and a server socket on this box, kernel and both processes' user space.
    pub per_connection_bytes: f64,
    /// The kernel's part of `per_connection_bytes` (halved when only one end is here).
    pub kernel_bytes: f64,
    /// Where the figure comes from, for messages.
    pub source: String,
    /// Open files a connection holds at each end on this box: its socket on the kernel data
    /// plane, none on xdp (c2m's TCP keeps a control block, not a file).
    pub files_per_end: u64,
}

impl CostModel {
    /// The best measured cost under `results_dir` (see [`CostModel::measured`]), else the
    /// built-in one.
    pub fn measured_or_default(results_dir: &Path) -> CostModel {
        CostModel::for_plane(results_dir, DataPlaneName::Kernel)
    }

    /// The best measured cost on data plane `plane` under `results_dir`, else the built-in one.
    pub fn for_plane(results_dir: &Path, plane: DataPlaneName) -> CostModel {
        let built_in = match plane {
            DataPlaneName::Kernel => CostModel::built_in,
            DataPlaneName::Xdp => CostModel::built_in_xdp,
        };
        CostModel::measured_on(results_dir, plane).unwrap_or_else(built_in)
    }

    /// Both ends on the xdp data plane, before any `c2m bench --dataplane xdp` result is here:
    /// each end's user space, from a 2,000,000-connection run on this box (c2m serve 235 B and
    /// c2m load 238 B a connection by RSS, MemFree 485 B); the kernel holds no socket.
    pub fn built_in_xdp() -> CostModel {
        CostModel {
            per_connection_bytes: (DEFAULT_XDP_SERVER_USER + DEFAULT_XDP_LOAD_USER) * MARGIN,
            kernel_bytes: 0.0,
            source: format!(
                "built-in xdp: {:.2} KB server + {:.2} KB load per pair, no kernel socket, + {:.0}%",
                DEFAULT_XDP_SERVER_USER / 1e3,
                DEFAULT_XDP_LOAD_USER / 1e3,
                (MARGIN - 1.0) * 100.0
            ),
            files_per_end: 0,
        }
    }

    /// From the idle-memory runs on this box, with the load's user space assumed.
    pub fn built_in() -> CostModel {
        let kernel = DEFAULT_KERNEL * MARGIN;
        CostModel {
            per_connection_bytes: (DEFAULT_KERNEL + DEFAULT_SERVER_USER + DEFAULT_LOAD_USER) * MARGIN,
            kernel_bytes: kernel,
            source: format!(
                "built-in: {:.1} KB kernel + {:.1} KB server + {:.1} KB load (assumed) per pair, from results/idle-memory, + {:.0}%",
                DEFAULT_KERNEL / 1e3,
                DEFAULT_SERVER_USER / 1e3,
                DEFAULT_LOAD_USER / 1e3,
                (MARGIN - 1.0) * 100.0
            ),
            files_per_end: 1,
        }
    }

    /// The complete c2m-bench-result under `results_dir` (any scenario) with the most
    /// connections (at least [`MIN_MEASURED_CONNECTIONS`]), the newest of equals: its
    /// `memory.per_connection.total` plus [`margin_for`] its size. Files that are not bench results are
    /// skipped.
    pub fn measured(results_dir: &Path) -> Option<CostModel> {
        CostModel::measured_on(results_dir, DataPlaneName::Kernel)
    }

    /// [`CostModel::measured`] among the runs on data plane `plane`.
    pub fn measured_on(results_dir: &Path, plane: DataPlaneName) -> Option<CostModel> {
        let (path, result) = largest_result_on(results_dir, MIN_MEASURED_CONNECTIONS, plane)?;
        let n = result.memory.connections;
        let per = &result.memory.per_connection;
        // MemFree can move either way; what the kernel cannot reclaim plus both processes'
        // growth is a floor under the real cost.
        let floor = per.kernel_unreclaimable + per.server_user + per.load_user;
        let total = per.total.max(floor);
        if !total.is_finite() || total <= 0.0 {
            return None;
        }
        let kernel = per.kernel_total.clamp(0.0, total);
        let margin = margin_for(n);
        Some(CostModel {
            per_connection_bytes: total * margin,
            kernel_bytes: kernel * margin,
            source: format!(
                "measured in {} ({} connections), + {:.0}%",
                path.display(),
                thousands(n),
                (margin - 1.0) * 100.0
            ),
            files_per_end: match plane {
                DataPlaneName::Kernel => 1,
                DataPlaneName::Xdp => 0,
            },
        })
    }

    /// Bytes one connection costs here: with only the client end on this box, half the kernel.
    pub fn bytes_each(&self, both_ends_here: bool) -> f64 {
        if both_ends_here { self.per_connection_bytes } else { self.per_connection_bytes - self.kernel_bytes / 2.0 }
    }
}

/// A count that fits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fit {
    pub connections: u64,
    pub need_bytes: u64,
    pub mem_free: u64,
    pub keep_free: u64,
    /// Most connections that fit here, rounded down to three significant digits.
    pub max_connections: u64,
}

/// Not enough memory: what was asked, what there is, what would fit.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryShortfall {
    pub connections: u64,
    pub need_bytes: u64,
    pub bytes_each: f64,
    pub cost_source: String,
    pub mem_free: u64,
    pub keep_free: u64,
    pub max_connections: u64,
}

impl fmt::Display for MemoryShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections need about {} ({} each, {}); MemFree is {} and {} must stay free, so ",
            thousands(self.connections),
            human_bytes(self.need_bytes as f64),
            human_bytes(self.bytes_each),
            self.cost_source,
            human_bytes(self.mem_free as f64),
            human_bytes(self.keep_free as f64),
        )?;
        if self.max_connections == 0 {
            write!(f, "none fit here (at most 0). Free memory first.")
        } else {
            write!(
                f,
                "at most {} fit here. Ask for fewer (-c {}) or free memory.",
                thousands(self.max_connections),
                short_count(self.max_connections)
            )
        }
    }
}

/// Not enough open files system-wide (fs.file-max).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileShortfall {
    pub connections: u64,
    pub files_needed: u64,
    pub files_free: u64,
    pub max_connections: u64,
    /// What memory alone would allow, when it too is short of `connections`.
    pub memory_max: Option<u64>,
}

impl fmt::Display for FileShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections hold {} open files (a socket at each end here) but fs.file-max leaves {} free, so at most {} fit here. \
             Ask for fewer (-c {}) or raise fs.file-max (sysctl -w fs.file-max=N).",
            thousands(self.connections),
            thousands(self.files_needed),
            thousands(self.files_free),
            thousands(self.max_connections),
            short_count(self.max_connections)
        )?;
        match self.memory_max {
            Some(m) => write!(f, " Memory alone allows at most {}.", thousands(m)),
            None => Ok(()),
        }
    }
}

/// Why a count does not fit.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("{0}")]
    Memory(MemoryShortfall),
    #[error("{0}")]
    Files(FileShortfall),
    #[error("cannot tell what fits: {0}")]
    Host(#[from] HostError),
}

impl FitError {
    /// What would fit, when the host could be read.
    pub fn max_connections(&self) -> Option<u64> {
        match self {
            FitError::Memory(m) => Some(m.max_connections),
            FitError::Files(f) => Some(f.max_connections),
            FitError::Host(_) => None,
        }
    }
}

/// Checks `connections` against this host's MemFree and fs.file-max now.
pub fn check(connections: u64, both_ends_here: bool, keep_free: u64, model: &CostModel) -> Result<Fit, FitError> {
    let mem_free = memory::read_meminfo()?.mem_free;
    let files_free = machine::files_free()?;
    check_with(connections, both_ends_here, keep_free, model, mem_free, files_free)
}

/// [`check`] with the host's figures given: `files_free` is fs.file-max less the files open now.
/// Each connection holds a file per end on this box (direct descriptors included: a fixed file
/// is still a `struct file`).
pub fn check_with(
    connections: u64,
    both_ends_here: bool,
    keep_free: u64,
    model: &CostModel,
    mem_free: u64,
    files_free: u64,
) -> Result<Fit, FitError> {
    let each = model.bytes_each(both_ends_here).max(1.0);
    let usable = mem_free.saturating_sub(keep_free);
    let by_memory = (usable as f64 / each).floor() as u64;
    let files_each = model.files_per_end * if both_ends_here { 2 } else { 1 };
    let by_files = files_free.checked_div(files_each).unwrap_or(u64::MAX);
    let max_connections = round_down_3_digits(by_memory.min(by_files));
    let need_bytes = (connections as f64 * each).ceil() as u64;
    if connections > by_memory && by_memory <= by_files {
        return Err(FitError::Memory(MemoryShortfall {
            connections,
            need_bytes,
            bytes_each: each,
            cost_source: model.source.clone(),
            mem_free,
            keep_free,
            max_connections,
        }));
    }
    if connections > by_files {
        return Err(FitError::Files(FileShortfall {
            connections,
            files_needed: connections * files_each,
            files_free,
            max_connections,
            memory_max: (connections > by_memory).then(|| round_down_3_digits(by_memory)),
        }));
    }
    Ok(Fit { connections, need_bytes, mem_free, keep_free, max_connections })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::bench::{BenchResult, SCHEMA_NAME};
    use crate::schema::load::RunStatus;

    const GIB: u64 = 1 << 30;

    fn model(each: f64, kernel: f64) -> CostModel {
        CostModel { per_connection_bytes: each, kernel_bytes: kernel, source: "test figure".into(), files_per_end: 1 }
    }

    #[test]
    fn fits_when_memory_and_files_allow() {
        let fit = check_with(100_000, true, 2 * GIB, &model(10_000.0, 9_000.0), 8 * GIB, 2_000_000).unwrap();
        assert_eq!(fit.need_bytes, 1_000_000_000);
        assert_eq!(fit.mem_free, 8 * GIB);
        // (8 - 2) GiB / 10,000 B = 644,245 -> 644,000.
        assert_eq!(fit.max_connections, 644_000);
    }

    #[test]
    fn refuses_with_what_would_fit() {
        let err = check_with(1_000_000, true, 2 * GIB, &model(10_000.0, 9_000.0), 6 * GIB, 10_000_000).unwrap_err();
        assert_eq!(err.max_connections(), Some(429_000));
        let text = err.to_string();
        assert!(text.starts_with("1,000,000 connections need about 9.3 GiB (9.8 KiB each, test figure)"), "{text}");
        assert!(text.contains("MemFree is 6.0 GiB and 2.0 GiB must stay free"), "{text}");
        assert!(text.contains("at most 429,000 fit here. Ask for fewer (-c 429k)"), "{text}");
    }

    #[test]
    fn nothing_fits_below_the_floor() {
        let err = check_with(10, true, 2 * GIB, &model(10_000.0, 9_000.0), GIB, 10_000_000).unwrap_err();
        assert_eq!(err.max_connections(), Some(0));
        assert!(err.to_string().contains("none fit here"), "{err}");
    }

    #[test]
    fn one_end_here_halves_the_kernel_part() {
        let m = model(10_000.0, 9_000.0);
        assert_eq!(m.bytes_each(false), 5_500.0);
        // 4 GiB free above the floor: 390,451 pairs, or 780,903 client ends.
        assert!(check_with(700_000, false, 2 * GIB, &m, 6 * GIB, 10_000_000).is_ok());
        assert!(check_with(700_000, true, 2 * GIB, &m, 6 * GIB, 10_000_000).is_err());
    }

    #[test]
    fn file_max_caps_loopback_pairs() {
        let err = check_with(1_500_000, true, 2 * GIB, &model(1_000.0, 900.0), 100 * GIB, 2_466_183).unwrap_err();
        let FitError::Files(f) = &err else { panic!("{err}") };
        assert_eq!(f.files_needed, 3_000_000);
        assert_eq!(f.max_connections, 1_230_000);
        assert!(err.to_string().contains("at most 1,230,000 fit here. Ask for fewer (-c 1.23m)"), "{err}");
        assert_eq!(f.memory_max, None);
        // Short of memory too: say so, or raising fs.file-max would only meet the next wall.
        let err = check_with(2_000_000, true, 2 * GIB, &model(10_000.0, 9_000.0), 16 * GIB, 2_466_183).unwrap_err();
        assert!(err.to_string().ends_with("Memory alone allows at most 1,500,000."), "{err}");
        // With the server elsewhere one file per connection.
        assert!(check_with(1_500_000, false, 2 * GIB, &model(1_000.0, 900.0), 100 * GIB, 2_466_183).is_ok());
    }

    fn bench_result(connections: u64, total: f64, status: RunStatus, started_utc: &str) -> BenchResult {
        use crate::schema::bench::{Build, Machine, MemoryMeasurement, PerConnection, ScenarioInfo};
        use crate::schema::load::{LoadParams, LoadReport};
        let params = LoadParams {
            target: "127.0.0.1:7700".into(),
            connections,
            connect_rate: 0.0,
            connect_concurrency: 0,
            connect_timeout_ms: 0,
            sources: vec![],
            source_addresses: 0,
            source_ports: [0, 0],
            duration_ms: 0,
            ramp_ms: 0,
            warmup_ms: 0,
            hold_ms: 0,
            workload: "ping".into(),
            message_interval_ms: 0.0,
            message_rate: 0.0,
            in_flight: 0,
            recv: String::new(),
            size: 0,
            workers: 0,
            rings_per_worker: 0,
            files_per_ring: 0,
            comeback: None,
        };
        BenchResult {
            schema: SCHEMA_NAME.into(),
            schema_version: crate::schema::bench::SCHEMA_VERSION,
            c2m: Build { version: "0".into(), git_commit: "unknown".into(), git_dirty: None },
            dataplane: Default::default(),
            machine: Machine {
                host: "t".into(),
                kernel: "k".into(),
                cpu_model: "c".into(),
                cores: 1,
                memory_bytes: 0,
                mem_free_bytes: 0,
                rlimit_nofile: [0, 0],
                sysctls: Default::default(),
                virtualization: String::new(),
            },
            scenario: ScenarioInfo {
                name: "t".into(),
                description: String::new(),
                file: String::new(),
                settings: Default::default(),
            },
            started_utc: started_utc.into(),
            elapsed_seconds: 1.0,
            status,
            abort_reason: None,
            shortfalls: Vec::new(),
            checks: Vec::new(),
            load_average: None,
            server: Default::default(),
            load_process: Default::default(),
            memory: MemoryMeasurement {
                connections,
                per_connection: PerConnection {
                    total,
                    kernel_total: total - 500.0,
                    kernel_unreclaimable: 6_000.0,
                    ..Default::default()
                },
                ..Default::default()
            },
            memory_timeline: vec![],
            server_metrics: Default::default(),
            load: LoadReport {
                params,
                status,
                abort_reason: None,
                started_unix_ms: 0,
                elapsed_seconds: 0.0,
                connections: Default::default(),
                errors: Default::default(),
                messages: Default::default(),
                latency: Default::default(),
                phases: vec![],
                timeline: vec![],
                chat: None,
                histograms: Default::default(),
                shard: None,
                merged: None,
            },
            hlog: String::new(),
        }
    }

    #[test]
    fn measured_prefers_the_most_connections_then_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let write = |sub: &str, file: &str, r: &BenchResult| {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            std::fs::write(dir.path().join(sub).join(file), serde_json::to_string(r).unwrap()).unwrap();
        };
        write("smoke", "a.json", &bench_result(10_000, 5_000.0, RunStatus::Complete, "2026-11-27T22:00:00Z"));
        write("c1m", "b.json", &bench_result(1_000_000, 9_000.0, RunStatus::Aborted, "2026-11-27T22:00:00Z"));
        write("c100k", "old.json", &bench_result(100_000, 10_000.0, RunStatus::Complete, "2026-11-27T20:00:00Z"));
        write("c100k", "new.json", &bench_result(100_000, 8_000.0, RunStatus::Complete, "2026-11-27T21:00:00Z"));
        std::fs::write(dir.path().join("other.json"), r#"{"schema":"c2m.idle-memory/1"}"#).unwrap();
        let m = CostModel::measured(dir.path()).unwrap();
        assert!((m.per_connection_bytes - 8_000.0 * MARGIN).abs() < 1e-6, "{m:?}");
        assert!((m.kernel_bytes - 7_500.0 * MARGIN).abs() < 1e-6, "{m:?}");
        assert!(m.source.contains("new.json") && m.source.contains("100,000 connections"), "{}", m.source);
        // A MemFree figure below what the kernel cannot reclaim is raised to that floor.
        write("c200k", "low.json", &bench_result(200_000, 1_000.0, RunStatus::Complete, "2026-11-27T23:00:00Z"));
        assert!((CostModel::measured(dir.path()).unwrap().per_connection_bytes - 6_000.0 * MARGIN).abs() < 1e-6);
        // Measured over a million connections, the cost gets the smaller head room.
        write("c1m", "ok.json", &bench_result(1_000_000, 8_500.0, RunStatus::Complete, "2026-11-27T23:30:00Z"));
        let m = CostModel::measured(dir.path()).unwrap();
        assert!((m.per_connection_bytes - 8_500.0 * MARGIN_LARGE).abs() < 1e-6, "{m:?}");
        assert!(m.source.contains("+ 5%"), "{}", m.source);
    }

    #[test]
    fn each_data_plane_is_costed_from_its_own_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("record-xdp")).unwrap();
        let mut xdp = bench_result(10_000_000, 484.0, RunStatus::Complete, "2026-12-07T14:30:00Z");
        xdp.dataplane = DataPlaneName::Xdp;
        xdp.memory.per_connection.kernel_unreclaimable = 1.0;
        xdp.memory.per_connection.kernel_total = 1.0;
        std::fs::write(dir.path().join("record-xdp/a.json"), serde_json::to_string(&xdp).unwrap()).unwrap();
        // The kernel data plane never takes an xdp run's cost (it has no kernel socket).
        assert_eq!(CostModel::measured(dir.path()), None);
        assert_eq!(CostModel::measured_or_default(dir.path()), CostModel::built_in());
        let m = CostModel::for_plane(dir.path(), DataPlaneName::Xdp);
        assert!((m.per_connection_bytes - 484.0 * MARGIN_LARGE).abs() < 1e-6, "{m:?}");
        assert_eq!(m.files_per_end, 0);
        // No xdp run: the built-in xdp figure, and no file per connection to run out of.
        let empty = tempfile::tempdir().unwrap();
        let m = CostModel::for_plane(empty.path(), DataPlaneName::Xdp);
        assert_eq!(m, CostModel::built_in_xdp());
        let fit = check_with(10_000_000, true, 2 * GIB, &m, 20 * GIB, 1_000).unwrap();
        assert_eq!(fit.connections, 10_000_000);
    }

    #[test]
    fn built_in_default_is_about_eleven_kb() {
        let m = CostModel::built_in();
        assert!((11_000.0..11_300.0).contains(&m.per_connection_bytes), "{}", m.per_connection_bytes);
        assert!(m.source.starts_with("built-in"));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(CostModel::measured_or_default(empty.path()), m);
    }
}
