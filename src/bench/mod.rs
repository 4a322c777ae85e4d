//! `c2m bench`: runs a scenario end to end on this box. It checks that the connections fit,
//! starts `c2m serve` and `c2m load` as children, follows the load's `--events`, measures memory
//! while the connections are held, stops everything within bounded waits, and writes
//! `results/<scenario>/<stamp>-<host>.json` (a [`crate::schema::bench::BenchResult`]) with the load's
//! `.hlog` beside it. With `--ab A,B` it runs the scenario in rounds under two tuning profiles
//! and compares them ([`ab`]).

pub mod ab;
pub mod child;
mod follow;
pub mod load;
pub mod measure;
pub mod netns;
mod output;
pub mod peers;
pub mod progress;
mod run;
pub mod scenario;
pub mod server;
pub mod signals;

use std::path::PathBuf;
use std::time::Duration;

use crate::units::{parse_bytes, parse_count, parse_duration};

pub use run::run;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenario: a NAME (bench/scenarios/NAME.toml, looked up here, then in the checkout the
    /// executable was built in) or a path to a .toml file.
    #[arg(long, default_value = "default")]
    pub scenario: String,
    /// The data plane, instead of the scenario's: kernel (io_uring over kernel TCP sockets, on
    /// loopback) or xdp (AF_XDP and c2m's own TCP at both ends, between two network namespaces
    /// made for the run with scripts/netns.sh and removed after it; needs root).
    #[arg(long, value_enum)]
    pub dataplane: Option<crate::transport::DataPlaneName>,
    /// Connections, instead of the scenario's (e.g. 50000, 100k, 1m).
    #[arg(short = 'c', long, value_parser = parse_count)]
    pub connections: Option<u64>,
    /// Message phase, instead of the scenario's (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Where results go (results/<scenario>/) and where measured costs are read from.
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// MemFree that must stay free: refuse a run predicted to go below it, and stop the load if
    /// it does (e.g. 2GiB, 512MiB).
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    pub keep_free: u64,
    /// The server's session limit instead of the connection count: a run made to fall short,
    /// to see that the bench says so (e.g. 9000 with -c 10000).
    #[arg(long, value_parser = parse_count)]
    pub max_sessions: Option<u64>,
    /// Do not rebuild results/REPORT.md after the run.
    #[arg(long)]
    pub no_report: bool,
    /// No redrawn live line; a plain progress line every 5 s instead.
    #[arg(long)]
    pub no_progress: bool,
    /// Only rebuild results/REPORT.md and its charts from the results already there.
    #[arg(long)]
    pub report_only: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Compare two tuning profiles: A,B, each `current` (the box as it is), a built-in profile
    /// (c2m-2m) or a sysctl.d file (./mine.conf). Rounds alternate A B B A, each applying its
    /// profile, running the scenario and restoring what it changed; writes results/ab/.
    #[arg(long, value_name = "A,B", value_parser = ab::parse_pair)]
    pub ab: Option<ab::ProfilePair>,
    /// Rounds: of --peers, every server once a round [default: 3]; of --ab, both arms together,
    /// even, in ABBA order [default: 12, the fewest at which a verdict at 5% over every metric
    /// is possible; see the guide].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=400))]
    pub rounds: Option<u32>,
    /// Where --ab saves the values a round's profile replaces until it restores them (the same
    /// state file as `c2m tune apply`; `c2m tune restore` reads it after a crash).
    #[arg(long, default_value = crate::tune::state::DEFAULT_STATE)]
    pub tune_state: PathBuf,
    /// Root of the sysctl tree --ab applies profiles to (tests point it at a temporary tree).
    #[arg(long, default_value = "/proc/sys", hide = true)]
    pub proc_sys: PathBuf,
    #[command(flatten)]
    pub peers: peers::PeersArgs,
}
