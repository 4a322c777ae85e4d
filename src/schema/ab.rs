//! What `c2m bench --ab` writes: `results/ab/<stamp>-<host>.json`, schema
//! `results/schema/ab-result.schema.json`. The rounds' own results (whole `c2m bench` results)
//! lie beside it in `results/ab/<stamp>-<host>/`; every figure here is computed from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bench::{Build, Machine};
use super::load::RunStatus;

/// Where A/B results go, under the results directory.
pub const AB_RESULTS_DIR: &str = "ab";
/// The `schema` field of every A/B result.
pub const AB_SCHEMA_NAME: &str = "c2m-ab-result";
/// Bumped whenever a field changes meaning or is removed.
pub const AB_SCHEMA_VERSION: u32 = 1;

/// One arm of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ArmName {
    A,
    B,
}

/// Which way a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// What the run says about one metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    BBetter,
    BWorse,
    /// Not told apart at this number of rounds (which is not "the same").
    NoDifference,
}

impl Verdict {
    pub fn words(self) -> &'static str {
        match self {
            Verdict::BBetter => "B better",
            Verdict::BWorse => "B worse",
            Verdict::NoDifference => "no difference at this N",
        }
    }
}

/// One `c2m bench --ab` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbResult {
    /// Always [`AB_SCHEMA_NAME`].
    pub schema: String,
    pub schema_version: u32,
    pub c2m: Build,
    /// As read before the first round (its sysctls are the box's own, no profile applied).
    pub machine: Machine,
    /// RFC 3339, UTC.
    pub started_utc: String,
    pub elapsed_seconds: f64,
    /// `complete` when every round ran; `aborted` when a signal or an error stopped the run
    /// (the rounds run until then are kept and compared).
    pub status: RunStatus,
    pub abort_reason: Option<String>,
    /// The scenario's name and file, as `c2m bench` resolved them.
    pub scenario: String,
    pub scenario_file: String,
    pub a: ArmProfile,
    pub b: ArmProfile,
    /// Every key either profile sets whose value differs between the arms on this box: a key
    /// one profile leaves alone keeps the box's value in that arm.
    pub sysctl_diff: Vec<SysctlDifference>,
    /// Rounds asked for; `rounds` holds those run.
    pub rounds_requested: u32,
    /// How arms alternate: `ABBA` (A B B A, repeated), so a linear drift over the run weighs
    /// on both arms alike.
    pub order: String,
    pub rounds: Vec<AbRound>,
    pub statistics: StatisticsMethod,
    /// One per metric measured in every round, in a fixed order.
    pub metrics: Vec<MetricComparison>,
    /// Metrics left out of the comparison, and why (e.g. no round trips in an idle workload).
    #[serde(default)]
    pub not_compared: Vec<NotCompared>,
}

/// A tuning profile as one arm ran it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmProfile {
    /// As given on the command line: `current`, a built-in name or a path.
    pub given: String,
    /// `current (nothing applied)`, `c2m-2m (built in)` or the file's path.
    pub origin: String,
    /// The profile's keys and values (empty for `current`).
    pub settings: BTreeMap<String, String>,
}

/// A sysctl that differs between the arms. `None`: not on this kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlDifference {
    pub key: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

/// A key a round's profile changed, and the value it had before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedKey {
    pub key: String,
    pub before: String,
    pub during: String,
}

/// One round: an arm's profile applied, the scenario run, the profile restored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbRound {
    /// 1-based.
    pub round: u32,
    pub arm: ArmName,
    /// The round's `c2m bench` result, relative to the results directory. (A round whose run
    /// wrote none stops the A/B run and is not listed; `abort_reason` says why.)
    pub result: String,
    pub status: RunStatus,
    pub started_utc: String,
    /// What the round's profile changed; every one was written back before the next round.
    pub applied: Vec<AppliedKey>,
    /// Keys written back after the round (as many as `applied` unless the restore failed, which
    /// stops the run).
    pub restored: u32,
    /// Each metric's value in this round (metric key -> value); absent when not measured.
    pub metrics: BTreeMap<String, f64>,
}

/// How the figures in `metrics` were computed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatisticsMethod {
    /// `median`.
    pub center: String,
    /// `iqr (type 7 quantiles) and mad (raw)`.
    pub spread: String,
    /// The test and how its p-value was computed.
    pub test: String,
    /// The correction for many metrics, e.g. `holm-bonferroni over 13 metrics`.
    pub correction: String,
    /// Family-wise error rate of the verdicts.
    pub alpha: f64,
    /// Metrics in the family the correction covers.
    pub family_size: u32,
    /// The ratio's interval and how it was computed.
    pub interval: String,
    pub interval_level: f64,
    pub bootstrap_resamples: u32,
    pub bootstrap_seed: u64,
    /// How `rounds_needed` is sized.
    pub rounds_needed: String,
    /// The smallest difference sized for, as a share of A's median.
    pub min_effect: f64,
    pub power: f64,
}

/// One arm's rounds of one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmSummary {
    pub n: u32,
    pub median: f64,
    pub iqr: f64,
    pub mad: f64,
    pub min: f64,
    pub max: f64,
}

/// One metric, A against B.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricComparison {
    /// e.g. `connect_rate`, `rtt_p99_us` (the keys of `rounds[].metrics`).
    pub key: String,
    /// e.g. `connect rate`.
    pub title: String,
    /// e.g. `connects/s`, `us`, `bytes`.
    pub unit: String,
    pub better: Better,
    /// One of the few figures a tuner reads first.
    pub headline: bool,
    pub a: ArmSummary,
    pub b: ArmSummary,
    /// Median of B / median of A; absent when A has a value of 0 or less.
    pub ratio: Option<f64>,
    /// Its bootstrap interval, `[low, high]`.
    pub ratio_interval: Option<[f64; 2]>,
    /// Mann-Whitney U of B (pairs with B above A, ties one half).
    pub u_b: f64,
    pub p_value: f64,
    /// After the correction for the family of metrics.
    pub p_adjusted: f64,
    pub verdict: Verdict,
    /// With no difference found: rounds (both arms) to find one of the size sized for (see
    /// `statistics.rounds_needed`); absent when a difference was found or nothing sizes it.
    pub rounds_needed: Option<u32>,
}

/// A metric not compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotCompared {
    pub key: String,
    pub why: String,
}
