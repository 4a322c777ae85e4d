//! One A/B round: the arm's profile applied, the scenario run once as `c2m bench` runs it, the
//! profile restored, whatever the run did; and the order the arms take turns in.

use std::path::Path;

use anyhow::Context;

use super::metrics;
use crate::bench::BenchArgs;
use crate::bench::run::{prepare, run_once};
use crate::host::clock;
use crate::schema::ab::{AbRound, AppliedKey, ArmName};
use crate::schema::load::RunStatus;
use crate::tune::profile::Profile;
use crate::tune::scoped::AppliedProfile;
use crate::tune::sysctl::ProcSys;

/// `rounds` arms in ABBA order (A B B A A B B A ...): within each block of four, both arms sit
/// once early and once late, so a drift that is linear over the block cancels out of the
/// comparison. An even count gives both arms the same number of rounds.
pub fn abba(rounds: u32) -> Vec<ArmName> {
    (0..rounds).map(|i| if matches!(i % 4, 0 | 3) { ArmName::A } else { ArmName::B }).collect()
}

/// Where a round's result goes and who runs it.
pub struct RoundPlan<'a> {
    pub args: &'a BenchArgs,
    pub sys: &'a ProcSys,
    /// `results/ab/<stamp>-<host>`: the round's files are `round-01-A.json` and so on.
    pub dir: &'a Path,
    /// What to write in `AbRound::result`: `dir` relative to the results directory.
    pub rel_dir: &'a str,
}

/// Runs round `round` (1-based) of `arm` under `profile`. The profile is restored before this
/// returns, also when the run failed; a restore that fails is an error (the state file is kept
/// for `c2m tune restore`), and so is a run that wrote no result.
pub fn run_round(plan: &RoundPlan<'_>, round: u32, arm: ArmName, profile: &Profile) -> anyhow::Result<AbRound> {
    let started_utc = clock::rfc3339(clock::unix_now());
    let applied = AppliedProfile::apply(profile, plan.sys, &plan.args.tune_state)
        .with_context(|| format!("round {round}: applying {}", profile.origin))?;
    let changed: Vec<AppliedKey> = applied
        .changes()
        .iter()
        .map(|c| AppliedKey { key: c.key.clone(), before: c.current.clone(), during: c.new.clone() })
        .collect();
    for c in &changed {
        println!("c2m bench --ab: round {round} ({arm:?}): {} {} -> {}", c.key, c.before, c.during);
    }
    let name = format!("round-{round:02}-{arm:?}");
    let base = plan.dir.join(&name);
    // Prepared under the profile, so the round's result records the sysctls it ran with.
    let outcome = prepare(plan.args).and_then(|prepared| run_once(plan.args, prepared, &base));
    let restored = applied.restore().with_context(|| {
        format!(
            "round {round}: restoring the sysctls {} changed; the saved values are in {} (`c2m tune restore --state {0}`)",
            profile.origin,
            plan.args.tune_state.display()
        )
    })?;
    let out = outcome.with_context(|| format!("round {round} ({arm:?})"))?;
    Ok(AbRound {
        round,
        arm,
        result: format!("{}/{name}.json", plan.rel_dir),
        status: out.result.status,
        started_utc,
        applied: changed,
        restored: restored.len() as u32,
        metrics: metrics::read_all(&out.result),
    })
}

/// A one-line account of a round, printed when it ends.
pub fn describe(r: &AbRound) -> String {
    let value = |key: &str| r.metrics.get(key).map_or("-".to_string(), |v| format!("{v:.0}"));
    format!(
        "c2m bench --ab: round {} ({:?}) {}: {} connects/s, login p99 {} us, round trip p99 {} us, {} B per connection; {} key(s) restored",
        r.round,
        r.arm,
        match r.status {
            RunStatus::Complete => "complete",
            RunStatus::FellShort => "FELL SHORT",
            RunStatus::Aborted => "ABORTED",
        },
        value("connect_rate"),
        value("login_p99_us"),
        value("rtt_p99_us"),
        value("memory_per_connection"),
        r.restored
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ArmName::{A, B};

    #[test]
    fn abba_order_balances_the_arms() {
        assert_eq!(abba(2), [A, B]);
        assert_eq!(abba(6), [A, B, B, A, A, B]);
        assert_eq!(abba(8), [A, B, B, A, A, B, B, A]);
        for n in (2..40).step_by(2) {
            let order = abba(n);
            assert_eq!(order.iter().filter(|a| **a == A).count(), n as usize / 2);
        }
    }
}
