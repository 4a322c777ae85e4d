//! `c2m tune` flags and what each subcommand prints.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::check::{self, CheckOptions, Snapshot};
use super::compare;
use super::profile::{self, Plan};
use super::size::{self, Target};
use super::state::{DEFAULT_STATE, LOCK_WAIT, StateFile};
use super::sysctl::ProcSys;
use crate::units::{parse_bytes, parse_count};

#[derive(Args, Debug)]
pub struct TuneArgs {
    #[command(subcommand)]
    pub command: TuneCommand,
}

#[derive(Subcommand, Debug)]
pub enum TuneCommand {
    /// Read every limit that caps connections and say which stops you first.
    /// Exit status: 0 if the count fits, 3 if not, 1 on error.
    Check(CheckArgs),
    /// Write a sysctl.d profile to /proc/sys, saving the values it replaces first.
    Apply(ApplyArgs),
    /// Write back the values the last apply saved, then remove the state file.
    Restore(RestoreArgs),
    /// Say which of a profile's values are in force now and which differ.
    /// Exit status: 0 if all are in force (keys this kernel lacks aside), 3 if any differs.
    Verify(VerifyArgs),
    /// Predict connections held and connect rate for other hardware from a measured result.
    Size(SizeArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Connections wanted (10k, 2m) [default: what this box can hold].
    #[arg(short = 'c', long, value_parser = parse_count)]
    pub connections: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Where the measured cost per connection is read from.
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// MemFree that must stay free.
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    pub keep_free: u64,
    /// Bytes queued per connection at once, for tcp_mem (0: idle or ping workloads).
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    pub in_flight: u64,
    /// Only the server end runs here (the load is on other machines).
    #[arg(long)]
    pub server_only: bool,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// A built-in profile (c2m-1m, c2m-2m, c2m-10m, the files of tuning/) or a path to a sysctl.d
    /// file (with a '/' or ending in .conf: ./mine.conf).
    pub profile: String,
    /// Print each key's current -> new value and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the replaced values are saved (created 0600; `<state>.lock` beside it keeps two
    /// applies or restores from interleaving).
    #[arg(long, default_value = DEFAULT_STATE)]
    pub state: PathBuf,
    /// Overwrite an existing state file (its saved originals are lost).
    #[arg(long)]
    pub force: bool,
    /// Root of the sysctl tree (tests point it at a temporary directory).
    #[arg(long, default_value = "/proc/sys", hide = true)]
    pub proc_sys: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[arg(long, default_value = DEFAULT_STATE)]
    pub state: PathBuf,
    #[arg(long, default_value = "/proc/sys", hide = true)]
    pub proc_sys: PathBuf,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A built-in profile (c2m-1m, c2m-2m, c2m-10m) or a path to a sysctl.d file.
    pub profile: String,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "/proc/sys", hide = true)]
    pub proc_sys: PathBuf,
}

#[derive(Args, Debug)]
pub struct SizeArgs {
    /// Memory of the box to predict for (128G, 512GiB).
    #[arg(long, value_parser = parse_bytes)]
    pub memory: u64,
    /// Cores of the box to predict for.
    #[arg(long)]
    pub cores: u64,
    /// The result to scale from [default: the complete result with the most connections under
    /// --results-dir].
    #[arg(long)]
    pub from: Option<PathBuf>,
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// The load runs on other machines: count one socket per connection and the server's CPU.
    #[arg(long)]
    pub server_only: bool,
    /// Memory kept from connections [default: 2 GiB + memory/64 + 1 GiB].
    #[arg(long, value_parser = parse_bytes)]
    pub reserve: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

/// Runs a tune subcommand; the exit status it should end with (check: [`crate::exit::FELL_SHORT`]
/// when the count does not fit).
pub fn run(args: TuneArgs) -> anyhow::Result<i32> {
    match args.command {
        TuneCommand::Check(a) => run_check(a),
        TuneCommand::Apply(a) => run_apply(a),
        TuneCommand::Restore(a) => run_restore(a),
        TuneCommand::Verify(a) => run_verify(a),
        TuneCommand::Size(a) => run_size(a),
    }
}

fn run_check(a: CheckArgs) -> anyhow::Result<i32> {
    let snapshot = Snapshot::read(&a.results_dir).context("reading this host's limits")?;
    let opts = CheckOptions {
        connections: a.connections,
        both_ends_here: !a.server_only,
        keep_free: a.keep_free,
        in_flight: a.in_flight,
    };
    let report = check::evaluate(&snapshot, &opts);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", check::render(&report));
    }
    Ok(if report.fits { crate::exit::DONE } else { crate::exit::FELL_SHORT })
}

fn run_apply(a: ApplyArgs) -> anyhow::Result<i32> {
    let profile = profile::resolve(&a.profile)?;
    let sys = ProcSys::new(&a.proc_sys);
    if a.dry_run {
        let plan = profile::plan(&profile.settings, &sys)?;
        print_plan(&profile.origin, &plan, true);
        println!("dry run: nothing changed ({} key(s) would change)", plan.changes.len());
        return Ok(0);
    }
    // The plan is read under the lock too: values another apply or restore is changing are not
    // taken as the originals.
    let state = StateFile::lock(&a.state, LOCK_WAIT)?;
    let plan = profile::plan(&profile.settings, &sys)?;
    print_plan(&profile.origin, &plan, false);
    if plan.changes.is_empty() {
        println!("nothing to change; no state file written");
        return Ok(0);
    }
    let adjusted = profile::apply(&plan, &profile.origin, &sys, &state, a.force)?;
    for x in &adjusted {
        println!("  note: {} was written as {:?} but reads {:?} (the kernel adjusted it)", x.key, x.written, x.now);
    }
    println!(
        "saved {} old value(s) to {}, then changed them; `c2m tune restore{}` puts them back",
        plan.changes.len(),
        a.state.display(),
        state_flag(&a.state)
    );
    Ok(0)
}

fn print_plan(origin: &str, plan: &Plan, dry_run: bool) {
    println!("c2m tune apply {origin}{}", if dry_run { " (dry run)" } else { "" });
    for c in &plan.changes {
        println!("  {}: {} -> {}", c.key, c.current, c.new);
    }
    if !plan.unchanged.is_empty() {
        println!("  already set: {}", plan.unchanged.join(", "));
    }
    if !plan.missing.is_empty() {
        println!("  not on this kernel (skipped): {}", plan.missing.join(", "));
    }
}

fn state_flag(state: &Path) -> String {
    if state == Path::new(DEFAULT_STATE) { String::new() } else { format!(" --state {}", state.display()) }
}

fn run_restore(a: RestoreArgs) -> anyhow::Result<i32> {
    let sys = ProcSys::new(&a.proc_sys);
    let state = StateFile::lock(&a.state, LOCK_WAIT)?;
    let restored = profile::restore(&sys, &state)?;
    for r in &restored {
        println!("  {} = {}", r.key, r.value);
    }
    println!("restored {} value(s); removed {}", restored.len(), a.state.display());
    Ok(0)
}

fn run_verify(a: VerifyArgs) -> anyhow::Result<i32> {
    let profile = profile::resolve(&a.profile)?;
    let v = compare::verify(&profile.settings, &ProcSys::new(&a.proc_sys))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", compare::render(&profile.origin, &v));
    }
    Ok(if v.all_in_force() { crate::exit::DONE } else { crate::exit::FELL_SHORT })
}

fn run_size(a: SizeArgs) -> anyhow::Result<i32> {
    let (path, result) = match &a.from {
        Some(p) => (p.clone(), size::read_result(p)?),
        None => size::largest_result(&a.results_dir)
            .with_context(|| format!("no complete c2m bench result under {}", a.results_dir.display()))?,
    };
    let target =
        Target { memory_bytes: a.memory, cores: a.cores.max(1), server_only: a.server_only, reserve_bytes: a.reserve };
    let prediction = size::predict(&path.display().to_string(), &result, &target)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&prediction)?);
    } else {
        print!("{}", size::render(&prediction));
    }
    Ok(0)
}
