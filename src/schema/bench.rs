//! The result of one `c2m bench` run, serialized as the results JSON (schema in
//! `results/schema/bench-result.schema.json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::load::{LoadReport, RunStatus};

/// Bumped whenever a field changes meaning or is removed (adding a field keeps the version).
/// 2: `c2m.git_commit` is the commit the binary was built from (no `-dirty`; see `git_dirty`),
/// the memory baseline is taken before either process starts, `status` may be `fell_short`.
pub const SCHEMA_VERSION: u32 = 2;
/// The `schema` field of every result.
pub const SCHEMA_NAME: &str = "c2m-bench-result";

/// The c2m that produced a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub version: String,
    /// The commit the binary was built from (embedded at build time); `unknown` outside a git
    /// checkout. Results before schema 2 read it at run time and appended `-dirty`.
    pub git_commit: String,
    /// Whether the sources the binary was built from (src/, build.rs, Cargo.*) differed from
    /// that commit; `None` when git could not tell, and in results before schema 2.
    #[serde(default)]
    pub git_dirty: Option<bool>,
}

impl Build {
    /// This binary, as build.rs saw its checkout.
    pub fn this_binary() -> Build {
        let dirty = match env!("C2M_GIT_DIRTY") {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        Build { version: env!("CARGO_PKG_VERSION").into(), git_commit: env!("C2M_GIT_COMMIT").into(), git_dirty: dirty }
    }

    /// `abc1234` or `abc1234-dirty`, for tables.
    pub fn short(&self) -> String {
        let hash: String = self.git_commit.chars().take(12).collect();
        match self.git_dirty {
            Some(true) if !hash.ends_with("-dirty") => format!("{hash}-dirty"),
            _ => hash,
        }
    }
}

/// The machine a result was measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub host: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cores: u64,
    pub memory_bytes: u64,
    /// MemFree when the run started.
    pub mem_free_bytes: u64,
    pub rlimit_nofile: [u64; 2],
    /// The sysctls that cap connections, as read at the start (name -> value as in /proc/sys).
    pub sysctls: BTreeMap<String, String>,
    /// `none` on bare metal, else what gave the hypervisor away (e.g. `kvm (dmi: Google)`,
    /// `hypervisor flag`); empty in older results.
    #[serde(default)]
    pub virtualization: String,
}

/// /proc/loadavg's 1, 5 and 15 minute averages before the run and after it: anything else
/// running on the box shows here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    pub before: [f64; 3],
    pub after: [f64; 3],
}

/// Which scenario ran, and with what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioInfo {
    pub name: String,
    pub description: String,
    /// The scenario file, relative to the repository (or as given).
    pub file: String,
    /// The scenario's settings after defaults and sizing ("auto" resolved).
    pub settings: serde_json::Value,
}

/// One process's cost, measured while the connections were held.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// The command line's first words, e.g. `c2m serve`.
    pub command: String,
    /// The whole command line it was started with (empty in older results).
    #[serde(default)]
    pub argv: Vec<String>,
    /// The settings it ran with after its defaults and sizing: the server's banner line (workers,
    /// rings, fixed files, session limit, slot size); for the load see `load.params`.
    #[serde(default)]
    pub effective: String,
    pub pid: u32,
    /// From /proc/PID/smaps_rollup.
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    /// Anonymous resident memory (smaps_rollup `Anonymous:`): what it took from MemFree, unlike
    /// its file pages, which may have been cached before it started. 0 in older results.
    #[serde(default)]
    pub anon_bytes: u64,
    /// RSS before any connection was opened (right after start-up).
    pub rss_start_bytes: u64,
    /// CPU seconds over the whole run (from /proc/PID/stat).
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
}

/// System-wide memory figures at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemMemory {
    /// Seconds since the bench started.
    pub t: f64,
    pub mem_free: u64,
    pub mem_available: u64,
    pub slab: u64,
    pub slab_unreclaimable: u64,
    /// /proc/net/sockstat `TCP: inuse` and `mem` (pages, times the page size here in bytes).
    pub tcp_inuse: u64,
    pub tcp_mem_bytes: u64,
}

/// Memory per connection, by part, in bytes. One connection is a client socket and a server
/// socket on loopback.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PerConnection {
    /// (server RSS - its RSS at start) / connections.
    pub server_user: f64,
    /// (load RSS - its RSS at start) / connections.
    pub load_user: f64,
    /// Slab delta / connections (sockets, inodes, files, io_uring requests).
    pub kernel_slab: f64,
    /// SUnreclaim delta / connections.
    pub kernel_unreclaimable: f64,
    /// sockstat TCP memory delta / connections (socket buffers with data in them).
    pub tcp_buffers: f64,
    /// (MemFree drop - both processes' RSS growth) / connections: all kernel memory.
    pub kernel_total: f64,
    /// MemFree drop / connections: everything.
    pub total: f64,
    /// The least `total` can be: Slab growth plus both processes' anonymous memory (neither
    /// existed at the baseline), per connection. 0 in results before schema 2.
    #[serde(default)]
    pub total_floor: f64,
    /// `total` is below `total_floor`: MemFree was given back by something else during the run
    /// (page cache, an earlier run's memory), so `total` is not a measurement of this run and is
    /// never the headline.
    #[serde(default)]
    pub below_floor: bool,
}

impl PerConnection {
    /// The figure to show: `total` when it is sound, else the floor (a lower bound).
    pub fn headline(&self) -> f64 {
        if self.below_floor { self.total_floor } else { self.total }
    }
}

/// How the memory was brought to rest before the baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemorySettle {
    /// Clean page cache was dropped first (`vm.drop_caches = 1`; needs root).
    pub dropped_page_cache: bool,
    /// MemFree moved less than `tolerance_bytes` over the last window before the baseline.
    pub settled: bool,
    pub seconds: f64,
    /// MemFree's change over the last window, bytes (signed: up is positive).
    pub last_change_bytes: i64,
    pub tolerance_bytes: u64,
}

/// Memory before the connections and while they were held.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryMeasurement {
    /// Connections logged in when `loaded` was taken (the divisor of `per_connection`).
    pub connections: u64,
    /// Before the baseline (absent in older results, whose baseline was taken with the server
    /// already up, its start-up memory left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<MemorySettle>,
    pub baseline: SystemMemory,
    /// With the server started and the load not yet: the server's start-up, and the sockets
    /// (its listeners) that are not the run's connections. Absent in older results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_up: Option<SystemMemory>,
    pub loaded: SystemMemory,
    pub per_connection: PerConnection,
}

/// One figure checked against another source that must agree with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CrossCheck {
    /// What is compared, e.g. `accepted: c2m serve vs c2m load`.
    pub name: String,
    /// The value the other sources must agree with, and where it comes from.
    pub expected: f64,
    pub expected_from: String,
    pub observed: f64,
    pub observed_from: String,
    /// `observed - expected`.
    pub difference: f64,
    pub passed: bool,
    /// How the comparison was made (a stated allowance, or why a difference is not a failure).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// One `c2m bench` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// Always [`SCHEMA_NAME`].
    pub schema: String,
    pub schema_version: u32,
    pub c2m: Build,
    pub machine: Machine,
    pub scenario: ScenarioInfo,
    /// The data plane both processes ran on: kernel (io_uring over kernel TCP sockets) or xdp
    /// (AF_XDP and c2m's own TCP, between two network namespaces). Older results: kernel.
    #[serde(default)]
    pub dataplane: crate::transport::DataPlaneName,
    /// RFC 3339, UTC, e.g. `2026-11-27T22:30:00Z`.
    pub started_utc: String,
    pub elapsed_seconds: f64,
    /// `complete` only when every connection asked for was made and held and every message
    /// answered, and every cross-check passed; `fell_short` (see `shortfalls`) or `aborted`.
    pub status: RunStatus,
    /// All the reasons, joined (kept for older readers; `shortfalls` lists them).
    pub abort_reason: Option<String>,
    /// Every reason the run is not `complete`, one each.
    #[serde(default)]
    pub shortfalls: Vec<String>,
    /// The load's counts against the server's and the kernel's.
    #[serde(default)]
    pub checks: Vec<CrossCheck>,
    /// Absent in older results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<LoadAverage>,
    pub server: ProcessUsage,
    pub load_process: ProcessUsage,
    pub memory: MemoryMeasurement,
    /// MemFree and friends once a second over the run (for charts).
    pub memory_timeline: Vec<SystemMemory>,
    /// Totals scraped from the server's /metrics at the end (metric name -> sum over workers).
    pub server_metrics: BTreeMap<String, f64>,
    /// The load generator's own report, whole.
    pub load: LoadReport,
    /// The HdrHistogram interval log beside this file (file name only).
    pub hlog: String,
}
