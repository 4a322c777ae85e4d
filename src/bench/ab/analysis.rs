//! From the rounds' values to the per-metric comparison: which metrics form the family, the
//! test and interval of each (see [`super::stats`]), the correction over the family, verdicts.

use super::metrics::METRICS;
use super::stats;
use crate::schema::ab::{AbRound, ArmName, ArmSummary, MetricComparison, NotCompared, StatisticsMethod, Verdict};

/// Rounds an arm needs before its spread (and so an interval or a sample size) means anything.
pub const MIN_ROUNDS_FOR_SPREAD: usize = 3;

/// Each compared metric, and those left out with why.
pub struct Analysis {
    pub metrics: Vec<MetricComparison>,
    pub not_compared: Vec<NotCompared>,
    pub method: StatisticsMethod,
}

fn summary(xs: &[f64]) -> ArmSummary {
    ArmSummary {
        n: xs.len() as u32,
        median: stats::median(xs),
        iqr: stats::iqr(xs),
        mad: stats::mad(xs),
        min: xs.iter().copied().fold(f64::INFINITY, f64::min),
        max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// The values of one metric in one arm's rounds, or `None` when a round lacks it.
fn arm_values(rounds: &[AbRound], arm: ArmName, key: &str) -> Option<Vec<f64>> {
    rounds.iter().filter(|r| r.arm == arm).map(|r| r.metrics.get(key).copied()).collect()
}

/// Compares the arms on every metric measured in every round. A metric enters the family only
/// when both arms have at least one round of it.
pub fn analyse(rounds: &[AbRound]) -> Analysis {
    let mut not_compared = Vec::new();
    let mut measured = Vec::new();
    for m in &METRICS {
        match (arm_values(rounds, ArmName::A, m.key), arm_values(rounds, ArmName::B, m.key)) {
            (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => measured.push((m, a, b)),
            (Some(a), Some(b)) => not_compared.push(NotCompared {
                key: m.key.into(),
                why: format!("{} round(s) of A and {} of B: each arm needs one", a.len(), b.len()),
            }),
            _ => not_compared.push(NotCompared { key: m.key.into(), why: "not measured in every round".into() }),
        }
    }
    let tests: Vec<stats::MannWhitney> = measured.iter().map(|(_, a, b)| stats::mann_whitney(a, b)).collect();
    let adjusted = stats::holm(&tests.iter().map(|t| t.p_value).collect::<Vec<_>>());
    let family = measured.len();
    // The rounds needed are sized at the Bonferroni level, which Holm's first step uses.
    let level = stats::ALPHA / family.max(1) as f64;
    let metrics = measured
        .iter()
        .zip(&tests)
        .zip(&adjusted)
        .map(|(((m, a, b), test), &p_adjusted)| {
            // Below MIN_ROUNDS_FOR_SPREAD an arm's spread is not known: no interval and no
            // rounds needed, rather than a confident-looking one from one or two values.
            let spread_known = a.len().min(b.len()) >= MIN_ROUNDS_FOR_SPREAD;
            let ratio = a.iter().all(|v| *v > 0.0).then(|| stats::median(b) / stats::median(a));
            let interval = spread_known
                .then(|| {
                    stats::ratio_interval(
                        a,
                        b,
                        stats::BOOTSTRAP_RESAMPLES,
                        stats::BOOTSTRAP_SEED,
                        stats::INTERVAL_LEVEL,
                    )
                })
                .flatten();
            let verdict = stats::verdict(test, p_adjusted, a.len(), b.len(), m.better, stats::ALPHA);
            let rounds_needed = (verdict == Verdict::NoDifference && spread_known)
                .then(|| stats::rounds_needed(a, b, stats::MIN_EFFECT, level, stats::POWER))
                .flatten();
            MetricComparison {
                key: m.key.into(),
                title: m.title.into(),
                unit: m.unit.into(),
                better: m.better,
                headline: m.headline,
                a: summary(a),
                b: summary(b),
                ratio,
                ratio_interval: interval.map(|(_, ci)| ci),
                u_b: test.u_b,
                p_value: test.p_value,
                p_adjusted,
                verdict,
                rounds_needed,
            }
        })
        .collect();
    let exact = rounds.len() <= stats::EXACT_MAX_N;
    Analysis { metrics, not_compared, method: method(family as u32, exact) }
}

fn method(family_size: u32, exact: bool) -> StatisticsMethod {
    StatisticsMethod {
        center: "median".into(),
        spread: "iqr (quantiles interpolated linearly, type 7) and mad (raw, unscaled)".into(),
        test: if exact {
            "mann-whitney u, two-sided, exact: the permutation distribution of the mid-rank sum, ties included"
        } else {
            "mann-whitney u, two-sided, normal approximation with tie-corrected variance and continuity correction"
        }
        .into(),
        correction: format!("holm-bonferroni over the {family_size} metrics compared"),
        alpha: stats::ALPHA,
        family_size,
        interval: "ratio of medians B/A, bootstrap percentile (each arm resampled with replacement, \
                   splitmix64 seeded); per metric, not corrected"
            .into(),
        interval_level: stats::INTERVAL_LEVEL,
        bootstrap_resamples: stats::BOOTSTRAP_RESAMPLES as u32,
        bootstrap_seed: stats::BOOTSTRAP_SEED,
        rounds_needed: format!(
            "rounds (both arms, a multiple of 4) at which a difference the size observed, or min_effect x A's \
             median if larger, is found with the stated power at alpha / family_size, by simulation: {} runs per \
             size, both arms drawn from the rounds' pooled deviations from their arm's median, B shifted, the same \
             test",
            stats::POWER_TRIALS
        ),
        min_effect: stats::MIN_EFFECT,
        power: stats::POWER,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::schema::load::RunStatus;

    fn round(i: u32, arm: ArmName, values: &[(&str, f64)]) -> AbRound {
        AbRound {
            round: i,
            arm,
            result: String::new(),
            status: RunStatus::Complete,
            started_utc: String::new(),
            applied: Vec::new(),
            restored: 0,
            metrics: values.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn a_clear_connect_rate_gain_is_b_better_and_the_rest_is_not_compared() {
        let order = super::super::rounds::abba(12);
        let rounds: Vec<AbRound> = order
            .iter()
            .enumerate()
            .map(|(i, &arm)| {
                let jitter = (i % 3) as f64;
                let rate = if arm == ArmName::A { 10_000.0 + 100.0 * jitter } else { 30_000.0 + 100.0 * jitter };
                round(i as u32 + 1, arm, &[("connect_rate", rate), ("errors", 0.0)])
            })
            .collect();
        let a = analyse(&rounds);
        assert_eq!(a.method.family_size, 2);
        let rate = &a.metrics[0];
        assert_eq!((rate.key.as_str(), rate.verdict), ("connect_rate", Verdict::BBetter));
        assert!(rate.p_adjusted < 0.01 && rate.rounds_needed.is_none());
        let ci = rate.ratio_interval.unwrap();
        assert!(ci[0] > 2.5 && ci[1] < 3.5, "{ci:?}");
        let errors = &a.metrics[1];
        assert_eq!((errors.verdict, errors.ratio, errors.p_value), (Verdict::NoDifference, None, 1.0));
        assert_eq!(a.not_compared.len(), METRICS.len() - 2);
        assert!(a.not_compared.iter().all(|n| n.why == "not measured in every round"));
    }
}
