//! REPORT.md's A/B sections (`c2m bench --ab`, `results_dir/ab/*.json`), one per run: the
//! comparison table, the sysctl diff, the rounds, and one chart per metric with every round as a
//! point.

use std::fs;
use std::path::Path;

use super::chart::{self, ArmPoints};
use super::report::machine_line;
use super::report::{
    ChartOutcome, ReportError, facts, file_name, file_stem, link_target, push_line, save_chart, sorted_entries, table,
};
use crate::schema::ab::{AB_RESULTS_DIR, AB_SCHEMA_NAME, AbResult, ArmName, Better, MetricComparison, Verdict};
use crate::schema::load::RunStatus;

/// A section for every A/B result, newest first (file names start with a UTC stamp); nothing
/// when there is none. Every run is shown, not only the latest: an A/B run is a question asked
/// on purpose (A/A to see the noise, then A/B), and its answer stays readable beside the next.
pub fn write_ab(md: &mut String, results_dir: &Path, charts_dir: &Path) -> Result<(), ReportError> {
    let dir = results_dir.join(AB_RESULTS_DIR);
    if !dir.is_dir() {
        return Ok(());
    }
    let mut found = Vec::new();
    for file in sorted_entries(&dir)? {
        if file.extension().is_some_and(|e| e == "json") && file.is_file() {
            let text = fs::read_to_string(&file).map_err(|source| ReportError::Read { path: file.clone(), source })?;
            if text.contains(&format!("\"{AB_SCHEMA_NAME}\"")) {
                let r: AbResult = serde_json::from_str(&text)
                    .map_err(|source| ReportError::AbParse { path: file.clone(), source })?;
                found.push((file, r));
            }
        }
    }
    for (file, r) in found.iter().rev() {
        let name = file_name(file);
        let rel = format!("{AB_RESULTS_DIR}/{name}");
        let stem = name.trim_end_matches(".json");
        write_intro(md, r, &rel);
        write_metrics(md, r);
        write_diff(md, r);
        write_rounds(md, r);
        write_charts(md, r, charts_dir, stem)?;
    }
    Ok(())
}

fn write_intro(md: &mut String, r: &AbResult, rel: &str) {
    push_line(md, &format!("## A/B: {} against {}, {} ({})", r.a.given, r.b.given, r.scenario, r.started_utc));
    push_line(md, "");
    let s = &r.statistics;
    push_line(
        md,
        &format!(
            "`c2m bench --ab {},{} --scenario {} --rounds {}`: rounds in ABBA order, each applying its \
             arm's profile, running the scenario once and restoring every value it changed. Per metric: \
             each arm's median and IQR over its rounds; B/A the ratio of medians with a {:.0}% bootstrap \
             percentile interval ({} resamples, seed {:#x}; per metric, not corrected); p from a two-sided \
             Mann-Whitney U test ({}); verdicts at {} family-wise, {}. \"No difference at this N\" is not \
             \"the same\": the last column says how many rounds would find a difference of the size \
             observed or of {:.0}% of A's median, whichever is larger, {:.0}% of the time.",
            r.a.given,
            r.b.given,
            r.scenario,
            r.rounds_requested,
            s.interval_level * 100.0,
            s.bootstrap_resamples,
            s.bootstrap_seed,
            s.test.trim_start_matches("mann-whitney u, two-sided, "),
            s.alpha,
            s.correction,
            s.min_effect * 100.0,
            s.power * 100.0,
        ),
    );
    push_line(md, "");
    facts(
        md,
        &[
            ("result", format!("[{rel}]({})", link_target(rel))),
            (
                "status",
                match r.status {
                    RunStatus::Complete => "complete".to_string(),
                    _ => {
                        format!("**{}**: {}", r.status.words().to_uppercase(), r.abort_reason.as_deref().unwrap_or(""))
                    }
                },
            ),
            ("started (UTC)", format!("{}, {:.0} s", r.started_utc, r.elapsed_seconds)),
            ("scenario", format!("{} ({})", r.scenario, r.scenario_file)),
            ("rounds", format!("{} of {}, {}", r.rounds.len(), r.rounds_requested, r.order)),
            ("A", r.a.origin.clone()),
            ("B", r.b.origin.clone()),
            ("machine", machine_line(&r.machine)),
        ],
    );
}

fn better_word(b: Better) -> &'static str {
    match b {
        Better::Higher => "higher",
        Better::Lower => "lower",
    }
}

fn median_cell(m: &MetricComparison, arm: ArmName) -> String {
    let s = if arm == ArmName::A { &m.a } else { &m.b };
    format!("{} ({})", figure(s.median), figure(s.iqr))
}

fn write_metrics(md: &mut String, r: &AbResult) {
    let rows: Vec<Vec<String>> = r
        .metrics
        .iter()
        .map(|m| {
            let name = if m.headline { format!("**{}**", m.title) } else { m.title.clone() };
            vec![
                name,
                m.unit.clone(),
                better_word(m.better).into(),
                median_cell(m, ArmName::A),
                median_cell(m, ArmName::B),
                ratio_text(m),
                format!("{:.4}", m.p_value),
                format!("{:.4}", m.p_adjusted),
                match m.verdict {
                    Verdict::NoDifference => m.verdict.words().to_string(),
                    v => format!("**{}**", v.words()),
                },
                m.rounds_needed.map_or("-".into(), |n| n.to_string()),
            ]
        })
        .collect();
    table(
        md,
        &[
            "metric",
            "unit",
            "better",
            "A median (IQR)",
            "B median (IQR)",
            "B/A [95% CI]",
            "p",
            "p (Holm)",
            "verdict",
            "rounds to resolve",
        ],
        "lllrrrrrlr",
        &rows,
    );
    if !r.not_compared.is_empty() {
        let list: Vec<String> = r.not_compared.iter().map(|n| format!("{} ({})", n.key, n.why)).collect();
        push_line(md, &format!("Not compared: {}.", list.join("; ")));
        push_line(md, "");
    }
}

fn write_diff(md: &mut String, r: &AbResult) {
    push_line(md, "### sysctls: A against B");
    push_line(md, "");
    if r.sysctl_diff.is_empty() {
        push_line(md, "None: both arms ran with the same values (an A/A run).");
        push_line(md, "");
        return;
    }
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not on this kernel)".into());
    let rows: Vec<Vec<String>> = r
        .sysctl_diff
        .iter()
        .map(|d| vec![format!("`{}`", d.key), format!("`{}`", shown(&d.a)), format!("`{}`", shown(&d.b))])
        .collect();
    table(md, &["key", "A", "B"], "lll", &rows);
}

fn write_rounds(md: &mut String, r: &AbResult) {
    push_line(md, "### Rounds");
    push_line(md, "");
    let rows: Vec<Vec<String>> = r
        .rounds
        .iter()
        .map(|x| {
            let changed = if x.applied.is_empty() {
                "nothing".to_string()
            } else {
                format!("{} key(s), {} restored", x.applied.len(), x.restored)
            };
            vec![
                x.round.to_string(),
                format!("{:?}", x.arm),
                x.status.words().into(),
                changed,
                format!("[{}]({})", x.result, link_target(&x.result)),
            ]
        })
        .collect();
    table(md, &["round", "arm", "status", "sysctls changed", "result"], "rllll", &rows);
}

fn points(r: &AbResult, arm: ArmName, key: &str) -> Vec<(f64, f64)> {
    r.rounds.iter().filter(|x| x.arm == arm).filter_map(|x| Some((x.round as f64, *x.metrics.get(key)?))).collect()
}

/// One chart per metric compared, `charts/ab-<stem>-<key>.svg` (`stem`: the result's file name
/// without `.json`, so every run keeps its own).
fn write_charts(md: &mut String, r: &AbResult, charts_dir: &Path, stem: &str) -> Result<(), ReportError> {
    push_line(md, "### Every round, by metric");
    push_line(md, "");
    for c in &r.metrics {
        let file = format!("ab-{}-{}.svg", file_stem(stem), c.key);
        let (a, b) = (points(r, ArmName::A, &c.key), points(r, ArmName::B, &c.key));
        let label_a = format!("A: {}", r.a.given);
        let label_b = format!("B: {}", r.b.given);
        let svg = chart::rounds_chart(
            &format!("{}: {}", c.title, c.verdict.words()),
            &c.unit,
            &[
                ArmPoints { name: &label_a, points: &a, median: c.a.median },
                ArmPoints { name: &label_b, points: &b, median: c.b.median },
            ],
        )
        .map_err(|e| format!("the chart could not be drawn ({e})"));
        match save_chart(&charts_dir.join(&file), svg, format!("{}/{file}", super::report::CHARTS_DIR))? {
            ChartOutcome::Drawn(path) => push_line(md, &format!("![{}]({})", c.title, link_target(&path))),
            ChartOutcome::Skipped(why) => push_line(md, &format!("No chart of {}: {why}.", c.title)),
        }
        push_line(md, "");
    }
    Ok(())
}

/// A figure for a table (here and in `c2m bench --ab`'s summary): whole with separators from 100
/// up, three decimals below.
pub fn figure(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    if v.abs() >= 100.0 {
        format!("{sign}{}", crate::units::thousands(v.abs().round() as u64))
    } else {
        format!("{v:.3}")
    }
}

/// `1.23 [1.10, 1.31]`; the ratio alone when too few rounds give no interval; `-` when A has a
/// value of 0 or less.
pub fn ratio_text(m: &MetricComparison) -> String {
    match (m.ratio, m.ratio_interval) {
        (Some(r), Some([lo, hi])) => format!("{r:.3} [{lo:.3}, {hi:.3}]"),
        (Some(r), None) => format!("{r:.3}"),
        _ => "-".into(),
    }
}
