//! `c2m bench --ab A,B`: one scenario in rounds under two tuning profiles, compared with
//! statistics a tuner can trust.
//!
//! - [`rounds`]: the ABBA order and one round (apply, run, restore).
//! - [`metrics`]: what is compared, read from each round's `c2m bench` result.
//! - [`stats`]: medians, spread, Mann-Whitney, Holm, the bootstrap interval, rounds needed.
//! - [`analysis`]: the per-metric comparison built from those.
//!
//! Writes `results/ab/<stamp>-<host>.json` (schema `results/schema/ab-result.schema.json`) with
//! the rounds' own results in `results/ab/<stamp>-<host>/`, and REPORT.md's A/B section.

pub mod analysis;
pub mod metrics;
pub mod rounds;
pub mod stats;

use std::path::Path;

use anyhow::{Context, bail};

use super::BenchArgs;
use super::output;
use super::signals;
use crate::host::{clock, machine};
use crate::results::ab_report::{figure, ratio_text};
use crate::schema::ab::{
    AB_RESULTS_DIR, AB_SCHEMA_NAME, AB_SCHEMA_VERSION, AbResult, AbRound, ArmName, ArmProfile, SysctlDifference,
};
use crate::schema::bench::Build;
use crate::schema::load::RunStatus;
use crate::tune::compare;
use crate::tune::profile::{self, Profile};
use crate::tune::sysctl::ProcSys;

/// Rounds unless `--rounds` says otherwise: 6 per arm is the fewest at which the exact test can
/// reach 0.05 / 15 (Holm's first step over every metric) at all.
pub const DEFAULT_ROUNDS: u32 = 12;

/// The arm that applies nothing: the box as it is.
pub const CURRENT: &str = "current";

/// `--ab A,B` as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfilePair {
    pub a: String,
    pub b: String,
}

/// Parses `A,B`: two non-empty profile names or paths.
pub fn parse_pair(s: &str) -> Result<ProfilePair, String> {
    match s.split_once(',') {
        Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() && !b.contains(',') => {
            Ok(ProfilePair { a: a.trim().into(), b: b.trim().into() })
        }
        _ => Err(format!(
            "{s:?}: expected two profiles, A,B: each `current`, a built-in profile (c2m-2m) or a .conf file"
        )),
    }
}

/// An arm's profile: `current` is one with no settings.
pub fn resolve_arm(given: &str) -> anyhow::Result<Profile> {
    if given == CURRENT {
        return Ok(Profile { origin: "current (nothing applied)".into(), settings: Vec::new() });
    }
    Ok(profile::resolve(given)?)
}

fn arm_profile(given: &str, p: &Profile) -> ArmProfile {
    ArmProfile {
        given: given.into(),
        origin: p.origin.clone(),
        settings: p.settings.iter().map(|s| (s.key.clone(), s.value.clone())).collect(),
    }
}

pub fn run(args: &BenchArgs, pair: &ProfilePair) -> anyhow::Result<()> {
    if args.peers.peers.is_some() || args.report_only {
        return Err(
            crate::exit::Usage("--ab runs a scenario; it does not go with --peers or --report-only".into()).into()
        );
    }
    let round_count = args.rounds.unwrap_or(DEFAULT_ROUNDS);
    if !round_count.is_multiple_of(2) {
        return Err(crate::exit::Usage(format!(
            "--rounds {round_count}: an A/B run needs an even number of rounds, so both arms get as many"
        ))
        .into());
    }
    let profiles = [resolve_arm(&pair.a)?, resolve_arm(&pair.b)?];
    let sys = ProcSys::new(&args.proc_sys);
    let diff = compare::diff(&profiles[0].settings, &profiles[1].settings, &sys).context("comparing A and B")?;
    let applies = profiles.iter().any(|p| !p.settings.is_empty());
    if applies && std::fs::symlink_metadata(&args.tune_state).is_ok() {
        bail!(
            "{} exists: an earlier `c2m tune apply` has not been restored, so this box is not in its own state. \
             Run `c2m tune restore` first",
            args.tune_state.display()
        );
    }
    // The scenario is checked before any round, so a typo fails at once.
    let located = super::scenario::locate(&args.scenario)?;
    located.parse()?;

    let started = std::time::Instant::now();
    let started_unix = clock::unix_now();
    let machine = machine::read_machine().context("reading this machine")?;
    let ab_dir = args.results_dir.join(AB_RESULTS_DIR);
    std::fs::create_dir_all(&ab_dir).with_context(|| format!("creating {}", ab_dir.display()))?;
    let base = output::result_base(&ab_dir, &clock::file_stamp(started_unix), &machine.host);
    let json_path = output::with_ext(&base, "json");
    let stem = base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let rel_dir = format!("{AB_RESULTS_DIR}/{stem}");

    println!(
        "c2m bench --ab: A = {}, B = {}, {} rounds ABBA, scenario {}",
        profiles[0].origin, profiles[1].origin, round_count, args.scenario
    );
    for d in &diff {
        println!("  {}: A {} / B {}", d.key, shown(&d.a), shown(&d.b));
    }
    if diff.is_empty() {
        println!("  A and B set every sysctl alike here (an A/A run)");
    }
    signals::install().context("installing the SIGINT/SIGTERM handler")?;
    let plan = rounds::RoundPlan { args, sys: &sys, dir: &base, rel_dir: &rel_dir };
    let mut done: Vec<AbRound> = Vec::new();
    let mut stop: Option<String> = None;
    for (i, arm) in rounds::abba(round_count).into_iter().enumerate() {
        let round = i as u32 + 1;
        if let Some((signal, _)) = signals::received() {
            stop = Some(format!("stopped by {signal} before round {round}"));
            break;
        }
        let profile = &profiles[if arm == ArmName::A { 0 } else { 1 }];
        match rounds::run_round(&plan, round, arm, profile) {
            Ok(r) => {
                println!("{}", rounds::describe(&r));
                let aborted = r.status == RunStatus::Aborted;
                done.push(r);
                if aborted {
                    stop = Some(format!("round {round} was aborted (see its result)"));
                    break;
                }
            }
            Err(e) => {
                stop = Some(format!("{e:#}"));
                break;
            }
        }
    }

    let analysis = analysis::analyse(&done);
    let result = AbResult {
        schema: AB_SCHEMA_NAME.into(),
        schema_version: AB_SCHEMA_VERSION,
        c2m: Build::this_binary(),
        machine,
        started_utc: clock::rfc3339(started_unix),
        elapsed_seconds: started.elapsed().as_secs_f64(),
        status: if stop.is_some() { RunStatus::Aborted } else { RunStatus::Complete },
        abort_reason: stop.clone(),
        scenario: args.scenario.clone(),
        scenario_file: located.file.clone(),
        a: arm_profile(&pair.a, &profiles[0]),
        b: arm_profile(&pair.b, &profiles[1]),
        sysctl_diff: diff.into_iter().map(|d| SysctlDifference { key: d.key, a: d.a, b: d.b }).collect(),
        rounds_requested: round_count,
        order: "ABBA".into(),
        rounds: done,
        statistics: analysis.method,
        metrics: analysis.metrics,
        not_compared: analysis.not_compared,
    };
    let text = serde_json::to_string_pretty(&result).context("serializing the A/B result")?;
    std::fs::write(&json_path, text + "\n").with_context(|| format!("writing {}", json_path.display()))?;
    let report = if args.no_report { None } else { super::run::render_report(&args.results_dir) };
    print!("{}", summary(&result, &json_path, report.as_deref()));
    if let Some(why) = stop {
        return Err(crate::exit::FellShort(format!(
            "the A/B run was aborted: {why} (result of the rounds run written to {})",
            json_path.display()
        ))
        .into());
    }
    Ok(())
}

fn shown(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(not on this kernel)")
}

/// The table printed at the end: one line per metric.
pub fn summary(r: &AbResult, json: &Path, report: Option<&Path>) -> String {
    let s = &r.statistics;
    let mut out = format!(
        "c2m bench --ab {}: {} of {} rounds, {}; verdicts at {} family-wise, {}\n",
        r.scenario,
        r.rounds.len(),
        r.rounds_requested,
        r.status.words(),
        s.alpha,
        s.correction
    );
    out += &format!(
        "  {:<44} {:>12} {:>12} {:>22} {:>8}  verdict\n",
        "metric", "A median", "B median", "B/A [95% CI]", "p (Holm)"
    );
    for m in &r.metrics {
        out += &format!(
            "  {:<44} {:>12} {:>12} {:>22} {:>8.3}  {}{}\n",
            format!("{} ({})", m.title, m.unit),
            figure(m.a.median),
            figure(m.b.median),
            ratio_text(m),
            m.p_adjusted,
            m.verdict.words(),
            m.rounds_needed.map_or(String::new(), |n| format!(" (~{n} rounds to resolve)"))
        );
    }
    out += &format!("  result  {}\n", json.display());
    if let Some(rep) = report {
        out += &format!("  report  {}\n", rep.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse() {
        assert_eq!(parse_pair("current,c2m-2m").unwrap(), ProfilePair { a: "current".into(), b: "c2m-2m".into() });
        assert_eq!(parse_pair("./a.conf, ./b.conf").unwrap().b, "./b.conf");
        for bad in ["current", ",x", "x,", "a,b,c", ""] {
            assert!(parse_pair(bad).is_err(), "{bad:?}");
        }
        assert!(resolve_arm(CURRENT).unwrap().settings.is_empty());
        assert!(resolve_arm("c2m-2m").unwrap().settings.len() >= 10);
        assert!(resolve_arm("c2m-nope").is_err());
    }

    #[test]
    fn the_default_rounds_are_the_fewest_that_can_reach_a_verdict() {
        let per_arm = stats::fewest_per_arm(stats::ALPHA / metrics::METRICS.len() as f64);
        assert_eq!(DEFAULT_ROUNDS as usize, 2 * per_arm);
    }
}
