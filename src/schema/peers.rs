//! What `c2m bench --peers` writes: `results/peers/<stamp>-<host>.json`, schema
//! `results/schema/peers-result.schema.json`. Every figure is one measurement of one server in
//! one round; the ratios in REPORT.md are computed from them (see `table.rs`).

use serde::{Deserialize, Serialize};

use super::bench::{Build, Machine, PerConnection};
use super::load::RunStatus;

/// Where peers results go, under the results directory.
pub const PEERS_RESULTS_DIR: &str = "peers";
/// The `schema` field of every peers result.
pub const PEERS_SCHEMA_NAME: &str = "c2m-peers-result";
/// Bumped whenever a field changes meaning or is removed.
pub const PEERS_SCHEMA_VERSION: u32 = 2;

/// One `c2m bench --peers` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeersResult {
    /// Always [`PEERS_SCHEMA_NAME`].
    pub schema: String,
    pub schema_version: u32,
    pub c2m: Build,
    pub machine: Machine,
    /// RFC 3339, UTC.
    pub started_utc: String,
    pub elapsed_seconds: f64,
    /// `complete`, or `aborted` when the run was stopped (a signal) before its last round.
    pub status: RunStatus,
    pub abort_reason: Option<String>,
    pub settings: PeersSettings,
    /// Every server asked for, run or skipped (and why).
    pub servers: Vec<ServerInfo>,
    pub rounds: Vec<Round>,
}

/// How the run was set up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeersSettings {
    pub rounds: u32,
    /// How the order changes between rounds: `rotated` (round r starts r places further on).
    pub order: String,
    /// Connections of the echo and latency measurements.
    pub connections: u64,
    /// Length of the echo and latency message windows, seconds.
    pub window_seconds: f64,
    /// ECHO frame size, header included.
    pub echo_size: u64,
    /// Messages each echo connection keeps outstanding (closed loop).
    pub echo_in_flight: u32,
    /// Open-loop PING rate of the latency measurement, messages per second over all connections.
    pub latency_rate: u64,
    /// MemFree the connections measurement may use (box-wide: server, both ends' kernel
    /// memory and the load generator).
    pub budget_bytes: u64,
    /// MemFree never allowed below this, whatever the budget.
    pub keep_free_floor_bytes: u64,
    /// Connections one process of a `fd_per_connection` peer is given at most.
    pub connections_per_shard: u64,
    /// Unrecorded messages before each echo and latency window, seconds (0 in results before
    /// schema 2).
    #[serde(default)]
    pub warmup_seconds: f64,
    /// How server and load share the cores.
    pub cpu_placement: String,
}

/// A server in the comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    pub description: String,
    /// The program run (c2m: this executable).
    pub bin: String,
    /// The peer's version file's first line, or c2m's version and commit.
    pub version: String,
    /// Whether each connection takes a descriptor (then it is sharded past the fd limit).
    pub fd_per_connection: bool,
    /// How it was built: compiler, flags and profile (empty in results before schema 2).
    #[serde(default)]
    pub build: String,
    /// False when it was asked for but could not be run; `skipped_reason` says why.
    pub available: bool,
    pub skipped_reason: Option<String>,
}

/// One round: every available server in turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// 1-based.
    pub round: u32,
    pub order: Vec<String>,
    pub turns: Vec<Turn>,
}

/// One server's measurements in one round. A measurement that failed is absent and its error
/// is in `errors`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub server: String,
    pub echo: Option<EchoMeasurement>,
    pub latency: Option<LatencyMeasurement>,
    pub capacity: Option<CapacityMeasurement>,
    pub errors: Vec<String>,
    /// What may have made a figure less sure without failing it (memory still moving when a
    /// trial began, too few samples for a slope).
    #[serde(default)]
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// How the server was run for one measurement, and how it started and stopped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerRun {
    /// Processes sharing the port (1 unless the peer is sharded).
    pub shards: u64,
    pub workers_per_shard: u64,
    /// Spawn to the last process's readiness line (`READY ...`, or c2m serve's banner).
    pub startup_seconds: f64,
    /// Spawn to the first TCP connect the port accepted.
    pub accepting_seconds: Option<f64>,
    /// SIGTERM to the last process's exit.
    pub shutdown_seconds: f64,
    /// Connections the load held when SIGTERM was sent.
    pub shutdown_connections: u64,
    /// Every process exited 0 before the grace ran out (else it was killed).
    pub clean_exit: bool,
    /// The exits, e.g. `exit status 0`, one per process.
    pub exits: Vec<String>,
    /// Server RSS (all processes) right after start-up.
    pub rss_start_bytes: u64,
}

/// The load's own verdict on a measurement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadOutcome {
    pub status: String,
    pub abort_reason: Option<String>,
    pub established: u64,
    pub failed: u64,
    pub lost: u64,
    /// Errors by kind, as the load counted them.
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// Echo throughput: 64 B frames, closed loop.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EchoMeasurement {
    pub server: ServerRun,
    pub load: LoadOutcome,
    /// The message phase as the load timed it.
    pub window_seconds: f64,
    /// Replies received per second over the window (the load's `rate_achieved`).
    pub messages_per_second: f64,
    /// Server CPU (all processes, user + system) over the window, from /proc/PID/stat.
    pub server_cpu_seconds: f64,
    /// The load's CPU over the window (it shares the cores with the server).
    pub load_cpu_seconds: f64,
    /// `server_cpu_seconds / (messages_per_second * window_seconds)`, in microseconds.
    pub server_cpu_us_per_message: f64,
}

/// Round trips at a fixed open-loop rate well below saturation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMeasurement {
    pub server: ServerRun,
    pub load: LoadOutcome,
    pub rate_requested: f64,
    pub rate_achieved: f64,
    /// Corrected round trip (from the scheduled send), microseconds.
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// How late the generator's own ticks ran (what it adds to the corrected round trips).
    pub schedule_lag_p99_us: f64,
}

/// How many idle logged-in connections fit in the memory budget, and what one costs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityMeasurement {
    pub server: ServerRun,
    pub load: LoadOutcome,
    /// MemFree at the baseline (server up, load not started).
    pub baseline_mem_free: u64,
    /// The `--keep-free` the load ran with: the baseline less the budget (or the floor).
    pub keep_free: u64,
    /// Connections asked of the load (the most the shards or the budget could take).
    pub connections_requested: u64,
    /// The budget over the steady slope's cost of one more connection (what was set up once is
    /// not charged to the connections); without a slope (results before schema 2, or too few
    /// samples), where the MemFree drop crossed the budget, or the most connections held.
    pub connections_in_budget: f64,
    /// Connections established where the MemFree drop crossed the budget, interpolated between
    /// the load's once-a-second samples (`None`: not reached, or results before schema 2).
    #[serde(default)]
    pub connections_at_crossing: Option<f64>,
    /// Whether the MemFree drop reached the budget.
    pub budget_reached: bool,
    /// What one more connection costs, from the steady part of the run.
    #[serde(default)]
    pub slope: Option<Slope>,
    /// How long the trial waited for memory to hold still before it began.
    #[serde(default)]
    pub settle_seconds: f64,
    /// Whether it did hold still within the wait.
    #[serde(default)]
    pub settled: bool,
    /// MemFree's change per second just before the baseline (positive: memory was still
    /// coming back).
    #[serde(default)]
    pub baseline_drift_bytes_per_second: f64,
    pub established_peak: u64,
    /// The measurement the per-connection figures come from: the last sample with the
    /// connections still held.
    pub measured_connections: u64,
    pub measured_mem_free_drop: u64,
    pub server_rss_bytes: u64,
    pub load_rss_bytes: u64,
    pub per_connection: PerConnection,
    /// Connections established per second up to the measurement (unpaced connects).
    pub connect_rate: f64,
    /// The load's once-a-second samples while the connections were held.
    pub samples: Vec<CapacitySample>,
}

/// Bytes per connection by least squares over a capacity run's steady samples (past the first
/// 20% of its connections), by part: what one more connection costs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Slope {
    /// MemFree's drop per connection: everything, both ends (the headline).
    pub total: f64,
    pub kernel_slab: f64,
    pub server_rss: f64,
    pub load_rss: f64,
    /// How well a line fits the MemFree drop (1 = exactly).
    pub r_squared: f64,
    pub samples: usize,
    /// The connections the fit spans.
    pub from_connections: u64,
    pub to_connections: u64,
}

/// One sample of the capacity run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacitySample {
    /// Seconds since the load started.
    pub t: f64,
    pub established: u64,
    /// MemFree as the load read it with `established`.
    pub mem_free: u64,
    /// Slab, as read by the bench when the sample arrived.
    pub slab: u64,
    /// Server RSS (all processes) when the sample arrived.
    pub server_rss: u64,
    pub load_rss: u64,
}
