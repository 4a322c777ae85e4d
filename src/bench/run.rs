//! `c2m bench`, step by step: scenario and fit, server, baseline, load, follow, stop, result.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use super::BenchArgs;
use super::follow::{Followed, Follower};
use super::load::{LoadChild, LoadPlan};
use super::measure::{self, Held};
use super::netns::XdpTopology;
use super::output::{self, with_ext};
use super::progress::Progress;
use super::scenario::{self, AutoOr, LoadSettings, Scenario};
use super::server::{self, ServerChild};
use super::signals;
use crate::host::memory::SettlePlan;
use crate::host::{clock, machine, memory, process};
use crate::results::checks::{self, Sources};
use crate::schema::bench::{
    BenchResult, Build, LoadAverage, MemoryMeasurement, MemorySettle, ProcessUsage, SCHEMA_NAME, SCHEMA_VERSION,
    ScenarioInfo, SystemMemory,
};
use crate::schema::load::RunStatus;
use crate::transport::DataPlaneName;
use crate::tune::capacity::{self, CostModel};
use crate::units::{human_bytes, thousands};

/// How long the server has to drain and exit after SIGTERM before SIGKILL.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(30);
/// Between the server's banner and the baseline: its threads finish setting up.
const SERVER_SETTLE: Duration = Duration::from_millis(500);
/// A connect rate to plan with when the scenario leaves it unpaced (slower than measured here).
const PLANNING_CONNECT_RATE: u64 = 5_000;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.list {
        return list();
    }
    if let Some(pair) = &args.ab {
        return super::ab::run(&args, pair);
    }
    if args.peers.peers.is_some() {
        return super::peers::run(&args);
    }
    if args.report_only {
        let report = crate::results::report::render_report(&args.results_dir)
            .with_context(|| format!("rendering the report in {}", args.results_dir.display()))?;
        println!("c2m bench: wrote {}", report.display());
        return Ok(());
    }
    let prepared = prepare(&args)?;
    signals::install().context("installing the SIGINT/SIGTERM handler")?;
    let dir = args.results_dir.join(&prepared.scenario.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = output::result_base(&dir, &clock::file_stamp(clock::unix_now()), &prepared.machine.host);
    let out = run_once(&args, prepared, &base)?;
    let report = if args.no_report { None } else { render_report(&args.results_dir) };
    let summary = output::summary(&out.result, &out.json_path, out.hlog_path.as_deref(), report.as_deref());
    let _ = writeln!(std::io::stdout(), "{summary}");
    if out.result.status != RunStatus::Complete {
        let how = if out.result.status == RunStatus::Aborted { "was aborted" } else { "fell short" };
        return Err(crate::exit::FellShort(format!(
            "the run {how}: {} (result written to {})",
            out.result.shortfalls.join("; "),
            out.json_path.display()
        ))
        .into());
    }
    Ok(())
}

/// A scenario found, overridden by the command line, checked, and sized for this box as it is
/// now (its sysctls are read here: an A/B round prepares after its profile is applied).
pub(super) struct Prepared {
    pub scenario: Scenario,
    pub file: String,
    pub machine: crate::schema::bench::Machine,
    model: CostModel,
    connections: u64,
    fit: capacity::Fit,
}

pub(super) fn prepare(args: &BenchArgs) -> anyhow::Result<Prepared> {
    let located = scenario::locate(&args.scenario)?;
    let mut sc = located.parse()?;
    if let Some(n) = args.connections {
        sc.load.connections = AutoOr::Fixed(n);
        sc.load.max_connections = None;
    }
    if let Some(d) = args.duration {
        sc.load.duration = scenario::HumanDuration(d);
    }
    if let Some(plane) = args.dataplane {
        sc.dataplane = plane;
    }
    sc.validate().map_err(|e| anyhow!("{}: {e}", located.file))?;

    let machine = machine::read_machine().context("reading this machine")?;
    let model = CostModel::for_plane(&args.results_dir, sc.dataplane);
    let connections = size_connections(&sc.load, args.keep_free, &model)?;
    let fit = capacity::check(connections, true, args.keep_free, &model)?;
    sc.load.connections = AutoOr::Fixed(connections);
    Ok(Prepared { scenario: sc, file: located.file, machine, model, connections, fit })
}

/// What one run wrote.
pub(super) struct RunOutput {
    pub result: BenchResult,
    pub json_path: PathBuf,
    /// The load's histogram log, when it wrote one.
    pub hlog_path: Option<PathBuf>,
}

/// Runs a prepared scenario once and writes its result to `base`.json (the histograms to
/// `base`.hlog). A run that fell short or was aborted is still an `Ok` with that status; an
/// error means no result was written. The SIGINT/SIGTERM handler must be installed.
pub(super) fn run_once(args: &BenchArgs, prepared: Prepared, base: &Path) -> anyhow::Result<RunOutput> {
    let Prepared { scenario: sc, file, machine, model, connections, fit } = prepared;
    let progress = Progress::new(!args.no_progress);
    progress.println(&format!(
        "c2m bench {}: {}\n  {} connections need about {} ({}); MemFree {}, {} kept free",
        sc.name,
        sc.description,
        thousands(connections),
        human_bytes(fit.need_bytes as f64),
        model.source,
        human_bytes(fit.mem_free as f64),
        human_bytes(args.keep_free as f64),
    ));
    let bench = Bench { args, scenario: &sc, scenario_file: &file, machine, model, connections, progress };
    let outcome = bench.execute(base);
    bench.progress.finish();
    outcome
}

/// Rebuilds results/REPORT.md; a failure is reported, not fatal (the result is written).
pub(super) fn render_report(results_dir: &Path) -> Option<PathBuf> {
    match crate::results::report::render_report(results_dir) {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!("c2m bench: rebuilding the report failed: {e}");
            None
        }
    }
}

/// The count to run: the scenario's, or for `"auto"` what fits here, capped by
/// `max_connections`.
fn size_connections(load: &LoadSettings, keep_free: u64, model: &CostModel) -> anyhow::Result<u64> {
    match load.connections {
        AutoOr::Fixed(n) => Ok(n),
        AutoOr::Auto => {
            let most = capacity::check(1, true, keep_free, model)?.max_connections;
            let n = load.max_connections.map_or(most, |cap| cap.0.min(most));
            if n == 0 {
                bail!("no connection fits here with {} kept free", human_bytes(keep_free as f64));
            }
            Ok(n)
        }
    }
}

fn list() -> anyhow::Result<()> {
    println!("built-in scenarios (--scenario NAME; a file of your own: --scenario ./mine.toml):");
    for (name, parsed) in scenario::list() {
        match parsed {
            Ok(s) => println!("  {name:<12} {}", s.description),
            Err(e) => println!("  {name:<12} (does not parse: {e})"),
        }
    }
    Ok(())
}

struct Bench<'a> {
    args: &'a BenchArgs,
    scenario: &'a Scenario,
    scenario_file: &'a str,
    machine: crate::schema::bench::Machine,
    model: CostModel,
    connections: u64,
    progress: Progress,
}

impl Bench<'_> {
    fn execute(&self, base: &Path) -> anyhow::Result<RunOutput> {
        let started = Instant::now();
        let started_unix = clock::unix_now();
        let exe = std::env::current_exe().context("finding the c2m executable")?;
        let json_path = with_ext(base, "json");
        let hlog_path = with_ext(base, "hlog");
        let load_json =
            std::env::temp_dir().join(format!("c2m-bench-{}-{}.load.json", std::process::id(), started_unix));

        let load_average_before = machine::load_average().ok();
        // Both processes start after the baseline, so both count their start-up the same way.
        self.progress.println("c2m bench: letting memory settle before the baseline");
        let settle = memory::settle(&SettlePlan::default()).context("settling memory")?;
        if !settle.settled {
            self.progress.println(&format!(
                "c2m bench: MemFree still moved {} in the last second after {:.0} s; measuring anyway (noted)",
                crate::units::human_bytes(settle.last_change_bytes.unsigned_abs() as f64),
                settle.seconds
            ));
        }
        let baseline = memory::system_memory(started.elapsed().as_secs_f64()).context("baseline memory")?;
        let max_sessions = self.args.max_sessions.unwrap_or_else(|| server::max_sessions(self.connections));
        let xdp = match self.scenario.dataplane {
            DataPlaneName::Kernel => None,
            DataPlaneName::Xdp => {
                self.progress.println("c2m bench: making the xdp run's network namespaces (scripts/netns.sh)");
                Some(XdpTopology::up()?)
            }
        };
        let mut server = ServerChild::start(&exe, &self.scenario.server, max_sessions, xdp.as_ref(), &self.progress)?;
        self.progress.println(&format!("c2m bench: {}", server.banner));
        std::thread::sleep(SERVER_SETTLE);
        let server_up = memory::system_memory(started.elapsed().as_secs_f64()).context("memory with the server up")?;
        let server_start = process::memory(server.process.pid).context("c2m serve's memory at start")?;

        let mut plan = LoadPlan::new(
            server.addr,
            self.connections,
            &self.scenario.load,
            load_json.clone(),
            hlog_path.clone(),
            self.args.keep_free,
        );
        plan.dataplane_args = xdp.as_ref().map(|t| t.load_args()).unwrap_or_default();
        let mut load_child = LoadChild::start(&exe, &plan, &self.progress)?;
        let load_pid = load_child.process.pid;
        let mut follower = Follower::new(
            started,
            self.connections,
            self.args.keep_free,
            self.watchdog(),
            server.metrics,
            server.addr,
            &self.progress,
        );
        follower.dataplane = self.scenario.dataplane;
        let load_exit = follower.follow(&mut load_child, &mut server.process)?;
        let followed = follower.out;
        self.progress.finish();

        let server_metrics = match (server.scrape_totals(), &followed.metrics_at_close) {
            (Ok(totals), _) => totals,
            (Err(e), Some(at_close)) => {
                self.progress
                    .println(&format!("c2m bench: {e:#}; keeping the metrics scraped when the load began closing"));
                at_close.clone()
            }
            (Err(e), None) => {
                self.progress.println(&format!("c2m bench: {e:#}"));
                Default::default()
            }
        };
        let server_exit = server.process.stop(SERVER_STOP_GRACE).context("stopping c2m serve")?;
        let load_report = output::read_load_report(&load_json);
        let _ = std::fs::remove_file(&load_json);
        if followed.events_seen == 0 && load_report.is_err() {
            bail!("c2m load failed before its run began ({load_exit}); see its messages above");
        }
        let elapsed = started.elapsed().as_secs_f64();

        // The measurement: while the messages ran, else the most connections seen before.
        let held = followed.settled.clone().or_else(|| followed.early.clone()).unwrap_or_default();
        // Why the run stopped early, cause first: the bench's own stop (the load's reason then
        // only echoes the signal it was sent), else the load's.
        let mut aborted: Vec<String> = followed.stop_reason.iter().cloned().collect();
        let mut short = Vec::new();
        let load = match load_report {
            Ok(report) => {
                if report.status == RunStatus::Aborted && followed.stop_reason.is_none() {
                    aborted.push(report.abort_reason.clone().unwrap_or_else(|| "c2m load aborted".into()));
                } else if report.status == RunStatus::Complete && !load_exit.success() && load_exit.code != Some(3) {
                    // Exit 3 is the load saying it fell short, which the checks below say too.
                    short.push(format!("c2m load: {load_exit}"));
                }
                report
            }
            Err(why) => {
                let reason = format!("c2m load wrote no report ({load_exit}; {why})");
                aborted.push(reason.clone());
                output::stand_in_report(&plan, &followed, started_unix as u64 * 1000, elapsed, &reason)
            }
        };
        if !followed.reached_messages {
            aborted.push("the load never reached its message phase".into());
        }
        let memory = memory_measurement(&baseline, &server_up, settle, server_start.rss, &followed, &held);
        let checks = checks::cross_checks(&Sources {
            load: &load,
            server_metrics: &server_metrics,
            memory: &memory,
            server_sessions_held: followed.settled.as_ref().map(|h| h.server_sessions),
            kernel_sockets_held: followed.settled.as_ref().and_then(|h| h.kernel_sockets),
            xdp_connections_held: followed.settled.as_ref().and_then(|h| h.xdp_connections),
            tcp_inuse_before_load: server_up.tcp_inuse,
        });
        short.extend(checks::shortfalls(&load, &checks));
        let status = if !aborted.is_empty() {
            RunStatus::Aborted
        } else if !short.is_empty() {
            RunStatus::FellShort
        } else {
            RunStatus::Complete
        };
        let mut shortfalls = aborted;
        shortfalls.extend(short);
        shortfalls.dedup();

        let hlog_name = hlog_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let hlog_written = hlog_path.is_file();
        if !hlog_written {
            self.progress.println(&format!("c2m bench: no histogram log at {}", hlog_path.display()));
        }
        let result = BenchResult {
            schema: SCHEMA_NAME.into(),
            schema_version: SCHEMA_VERSION,
            c2m: Build::this_binary(),
            machine: self.machine.clone(),
            scenario: self.scenario_info(),
            dataplane: self.scenario.dataplane,
            started_utc: clock::rfc3339(started_unix),
            elapsed_seconds: elapsed,
            status,
            abort_reason: (!shortfalls.is_empty()).then(|| shortfalls.join("; ")),
            shortfalls,
            checks,
            load_average: load_average_before
                .map(|before| LoadAverage { before, after: machine::load_average().unwrap_or_default() }),
            server: ProcessUsage {
                command: "c2m serve".into(),
                argv: server.argv.clone(),
                effective: server.banner.clone(),
                pid: server.process.pid,
                rss_bytes: held.server.rss,
                pss_bytes: held.server.pss,
                anon_bytes: held.server.anon,
                rss_start_bytes: server_start.rss,
                cpu_user_seconds: server_exit.cpu.user_seconds,
                cpu_system_seconds: server_exit.cpu.system_seconds,
            },
            load_process: ProcessUsage {
                command: "c2m load".into(),
                argv: std::iter::once(exe.display().to_string()).chain(plan.args()).collect(),
                effective: "see load.params".into(),
                pid: load_pid,
                rss_bytes: held.load.rss,
                pss_bytes: held.load.pss,
                anon_bytes: held.load.anon,
                rss_start_bytes: followed.load_rss_start,
                cpu_user_seconds: load_exit.cpu.user_seconds,
                cpu_system_seconds: load_exit.cpu.system_seconds,
            },
            memory,
            memory_timeline: followed.timeline.clone(),
            server_metrics,
            load,
            hlog: if hlog_written { hlog_name } else { String::new() },
        };
        let text = serde_json::to_string_pretty(&result).context("serializing the result")?;
        std::fs::write(&json_path, text + "\n").with_context(|| format!("writing {}", json_path.display()))?;

        Ok(RunOutput { result, json_path, hlog_path: hlog_written.then_some(hlog_path) })
    }

    /// Twice the run's expected length: connects at the scenario's rate (or a slow planning
    /// rate when unpaced), the message phase, the hold, and a minute for start and close.
    fn watchdog(&self) -> Duration {
        let load = &self.scenario.load;
        let rate = if load.connect_rate.0 > 0 {
            load.connect_rate.0.min(PLANNING_CONNECT_RATE)
        } else {
            PLANNING_CONNECT_RATE
        };
        let connect = Duration::from_secs_f64(self.connections as f64 / rate as f64);
        (connect + load.duration.0 + load.hold.0 + Duration::from_secs(60)) * 2
    }

    fn scenario_info(&self) -> ScenarioInfo {
        let settings = serde_json::json!({
            "server": self.scenario.server,
            "load": self.scenario.load,
            "keep_free": self.args.keep_free,
            "cost_per_connection_bytes": self.model.per_connection_bytes,
            "cost_source": self.model.source,
        });
        ScenarioInfo {
            name: self.scenario.name.clone(),
            description: self.scenario.description.clone(),
            file: self.scenario_file.to_string(),
            settings,
        }
    }
}

fn memory_measurement(
    baseline: &SystemMemory,
    server_up: &SystemMemory,
    settle: MemorySettle,
    server_rss_start: u64,
    followed: &Followed,
    held: &Held,
) -> MemoryMeasurement {
    MemoryMeasurement {
        connections: held.established,
        settle: Some(settle),
        baseline: baseline.clone(),
        server_up: Some(server_up.clone()),
        loaded: held.memory.clone(),
        per_connection: measure::per_connection(baseline, server_rss_start, followed.load_rss_start, held),
    }
}
