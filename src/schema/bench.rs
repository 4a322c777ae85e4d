//! The result of one `c2m bench` run, serialized as the results JSON (schema in
//! `results/schema/bench-result.schema.json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::load::{LoadReport, RunStatus};

/// Bumped whenever a field changes meaning or is removed (adding a field keeps the version).
pub const SCHEMA_VERSION: u32 = 1;
/// The `schema` field of every result.
pub const SCHEMA_NAME: &str = "c2m-bench-result";

/// The c2m that produced a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub version: String,
    /// `git rev-parse HEAD` at build or run time, with `-dirty` if the tree had changes;
    /// `unknown` outside a git checkout.
    pub git_commit: String,
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
    pub pid: u32,
    /// From /proc/PID/smaps_rollup.
    pub rss_bytes: u64,
    pub pss_bytes: u64,
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
}

/// Memory before the connections and while they were held.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryMeasurement {
    /// Connections logged in when `loaded` was taken (the divisor of `per_connection`).
    pub connections: u64,
    pub baseline: SystemMemory,
    pub loaded: SystemMemory,
    pub per_connection: PerConnection,
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
    /// RFC 3339, UTC, e.g. `2026-11-27T22:30:00Z`.
    pub started_utc: String,
    pub elapsed_seconds: f64,
    pub status: RunStatus,
    pub abort_reason: Option<String>,
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
