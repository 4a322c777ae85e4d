//! `REPORT.md` and its SVG charts, rebuilt from every result under a results directory.
//!
//! The report shows the latest result of each scenario. It is a pure function of the result
//! files (sorted scenarios, no clock), so regenerating it without new results changes nothing
//! and a diff of it shows what a new run changed.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::checks;
use crate::results::chart::{self, Bar, ChartError, Spectrum};
use crate::schema::bench::{BenchResult, PerConnection, SCHEMA_NAME, SCHEMA_VERSION, SystemMemory};
use crate::schema::load::{LatencySummary, Phase, RunStatus};
use crate::units::{human_bytes, thousands};

/// The report's file name, in the results directory.
pub const REPORT_FILE: &str = "REPORT.md";
/// The charts' folder, in the results directory.
pub const CHARTS_DIR: &str = "charts";
/// How to rebuild the report from the result files alone (named in the report's header).
pub const REGENERATE_COMMAND: &str = "c2m bench --report-only";

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} says it is a {SCHEMA_NAME} but does not parse as one: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path} says it is a {} but does not parse as one: {source}", crate::schema::peers::PEERS_SCHEMA_NAME)]
    PeersParse { path: PathBuf, source: serde_json::Error },
    #[error("{path} says it is a {} but does not parse as one: {source}", crate::schema::ab::AB_SCHEMA_NAME)]
    AbParse { path: PathBuf, source: serde_json::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Reads every `results_dir/*/*.json` that is a `c2m-bench-result`, and writes
/// `results_dir/REPORT.md` and `results_dir/charts/*.svg` for the latest result of each
/// scenario. Other JSON files are skipped. Returns the report's path.
pub fn render_report(results_dir: &Path) -> Result<PathBuf, ReportError> {
    let found = find_results(results_dir)?;
    let scenarios = latest_per_scenario(&found);
    let charts_dir = results_dir.join(CHARTS_DIR);
    fs::create_dir_all(&charts_dir).map_err(|source| ReportError::Write { path: charts_dir.clone(), source })?;

    let mut md = String::new();
    write_header(&mut md, &scenarios, found.len());
    write_summary(&mut md, &scenarios);
    write_audit(&mut md, &found);
    for (name, runs) in &scenarios {
        let charts = render_charts(&charts_dir, name, &runs.latest.result)?;
        write_scenario(&mut md, runs, &charts);
    }
    write_peers(&mut md, results_dir)?;
    super::ab_report::write_ab(&mut md, results_dir, &charts_dir)?;
    let report_path = results_dir.join(REPORT_FILE);
    fs::write(&report_path, md).map_err(|source| ReportError::Write { path: report_path.clone(), source })?;
    Ok(report_path)
}

// ---------------------------------------------------------------------------------------------
// Finding the results

/// A result file and what it holds.
#[derive(Debug)]
struct FoundResult {
    /// Relative to the results directory, `/`-separated (for links in the report).
    rel_path: String,
    /// The result's folder, relative to the results directory.
    rel_dir: String,
    result: BenchResult,
}

/// The results of one scenario: its latest, which the report shows, and the others.
#[derive(Debug)]
struct ScenarioRuns<'a> {
    latest: &'a FoundResult,
    older: Vec<&'a FoundResult>,
}

pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let list_err = |source| ReportError::List { path: dir.to_path_buf(), source };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        paths.push(entry.map_err(list_err)?.path());
    }
    paths.sort();
    Ok(paths)
}

fn find_results(results_dir: &Path) -> Result<Vec<FoundResult>, ReportError> {
    let mut found = Vec::new();
    for sub in sorted_entries(results_dir)?.into_iter().filter(|p| p.is_dir()) {
        for file in sorted_entries(&sub)? {
            if !(file.extension().is_some_and(|e| e == "json") && file.is_file()) {
                continue;
            }
            if let Some(result) = read_result(&file)? {
                found.push(FoundResult {
                    rel_path: format!("{}/{}", file_name(&sub), file_name(&file)),
                    rel_dir: file_name(&sub),
                    result,
                });
            }
        }
    }
    Ok(found)
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The result in `path`, or `None` when the file is some other JSON.
fn read_result(path: &Path) -> Result<Option<BenchResult>, ReportError> {
    let text = fs::read_to_string(path).map_err(|source| ReportError::Read { path: path.to_path_buf(), source })?;
    if !claims_bench_result(&text) {
        return Ok(None);
    }
    // Parsed from the text (not from a Value) so the error carries a line and column.
    serde_json::from_str(&text).map(Some).map_err(|source| ReportError::Parse { path: path.to_path_buf(), source })
}

/// Whether a file says it is a bench result. A file cut short (a run killed while writing)
/// is not valid JSON but still says so, and must be reported rather than silently dropped.
fn claims_bench_result(text: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => value.get("schema").and_then(|s| s.as_str()) == Some(SCHEMA_NAME),
        Err(_) => text.contains(&format!("\"{SCHEMA_NAME}\"")),
    }
}

/// Groups results by scenario name; the latest is the one started last (RFC 3339 UTC strings
/// sort by time), the file path breaking ties so the choice is stable.
fn latest_per_scenario(found: &[FoundResult]) -> BTreeMap<&str, ScenarioRuns<'_>> {
    let mut by_name: BTreeMap<&str, Vec<&FoundResult>> = BTreeMap::new();
    for f in found {
        by_name.entry(f.result.scenario.name.as_str()).or_default().push(f);
    }
    by_name
        .into_iter()
        .filter_map(|(name, mut runs)| {
            runs.sort_by(|a, b| (&a.result.started_utc, &a.rel_path).cmp(&(&b.result.started_utc, &b.rel_path)));
            let latest = runs.pop()?;
            runs.reverse();
            Some((name, ScenarioRuns { latest, older: runs }))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Charts

/// A chart drawn (its path relative to the results directory) or why there is none.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ChartOutcome {
    Drawn(String),
    Skipped(String),
}

#[derive(Clone, Debug, PartialEq)]
struct ScenarioCharts {
    connections: ChartOutcome,
    memory: ChartOutcome,
    latency: ChartOutcome,
}

/// A scenario name as a file name: anything but letters, digits, `.`, `_` and `-` becomes `-`.
pub(super) fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).collect()
}

fn render_charts(charts_dir: &Path, scenario: &str, r: &BenchResult) -> Result<ScenarioCharts, ReportError> {
    let stem = file_stem(scenario);
    let out = |kind: &str, svg: Result<String, String>| -> Result<ChartOutcome, ReportError> {
        let file = format!("{stem}-{kind}.svg");
        save_chart(&charts_dir.join(&file), svg, format!("{CHARTS_DIR}/{file}"))
    };
    Ok(ScenarioCharts {
        connections: out("connections", connections_svg(scenario, r))?,
        memory: out("memory", memory_svg(scenario, r))?,
        latency: out("latency", latency_svg(scenario, r))?,
    })
}

/// Writes a drawn chart, or removes the file a previous report may have left for a chart that
/// is now skipped (an old chart beside a new report would be read as this run's).
pub(super) fn save_chart(
    path: &Path,
    svg: Result<String, String>,
    rel_path: String,
) -> Result<ChartOutcome, ReportError> {
    match svg {
        Ok(svg) => {
            fs::write(path, svg).map_err(|source| ReportError::Write { path: path.to_path_buf(), source })?;
            Ok(ChartOutcome::Drawn(rel_path))
        }
        Err(why) => {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(ReportError::Write { path: path.to_path_buf(), source: e });
                }
                _ => {}
            }
            Ok(ChartOutcome::Skipped(why))
        }
    }
}

/// The SVG, or (as `Err`) the sentence saying why there is no chart. A plotters failure also
/// becomes a sentence: losing one chart is better than losing the report of a long run.
type ChartResult = Result<String, String>;

fn chart_or_reason(drawn: Result<String, ChartError>, no_data: &str) -> ChartResult {
    match drawn {
        Ok(svg) => Ok(svg),
        Err(ChartError::NoData) => Err(no_data.to_string()),
        Err(e) => Err(format!("the chart could not be drawn ({e})")),
    }
}

fn connections_svg(scenario: &str, r: &BenchResult) -> ChartResult {
    let c = &r.load.connections;
    let title =
        format!("{scenario}: {} of {} connections established", thousands(c.established), thousands(c.requested));
    chart_or_reason(
        chart::connections_chart(&title, c.requested, &r.load.timeline, &r.load.phases),
        "No connections chart: the load recorded no timeline (it ended before its first \
         once-a-second sample).",
    )
}

fn memory_svg(scenario: &str, r: &BenchResult) -> ChartResult {
    if r.memory.connections == 0 {
        return Err("No memory chart: no connections were held when memory was measured, so \
                    there is no per-connection figure."
            .into());
    }
    let title = format!("{scenario}: memory per connection, {} connections held", thousands(r.memory.connections));
    let bars: Vec<Bar<'_>> =
        memory_parts(r).into_iter().map(|(label, value, is_sum, _)| Bar { label, value, is_sum }).collect();
    chart_or_reason(chart::bytes_bar_chart(&title, &bars), "No memory chart: nothing measured.")
}

fn has_rtt(r: &BenchResult) -> bool {
    let l = &r.load.latency;
    !l.rtt_corrected.spectrum.is_empty() || !l.rtt_uncorrected.spectrum.is_empty()
}

fn latency_svg(scenario: &str, r: &BenchResult) -> ChartResult {
    if !has_rtt(r) {
        return Err(no_rtt_reason(r));
    }
    let l = &r.load.latency;
    let title = format!("{scenario}: latency by percentile, {} connections", thousands(r.load.connections.established));
    let spectra = [
        Spectrum { name: "rtt_corrected", points: &l.rtt_corrected.spectrum },
        Spectrum { name: "rtt_uncorrected", points: &l.rtt_uncorrected.spectrum },
        Spectrum { name: "connect", points: &l.connect.spectrum },
    ];
    chart_or_reason(chart::latency_chart(&title, &spectra), "No latency chart: no latency recorded.")
}

fn no_rtt_reason(r: &BenchResult) -> String {
    if r.load.params.workload == "idle" {
        "No latency chart: the workload is idle, so no messages were sent and there is no \
         round-trip latency to plot (connect and login latency are in the table above)."
            .into()
    } else {
        format!(
            "No latency chart: no message was answered ({} sent, {} received), so there is no \
             round-trip latency to plot.",
            thousands(r.load.messages.sent),
            thousands(r.load.messages.received)
        )
    }
}

/// The memory parts in report order: label, bytes per connection, whether it is a sum of
/// others, what it counts.
fn memory_parts(r: &BenchResult) -> Vec<(&'static str, f64, bool, &'static str)> {
    let p = &r.memory.per_connection;
    vec![
        ("server_user", p.server_user, false, "server RSS growth / connections"),
        ("load_user", p.load_user, false, "load generator RSS growth / connections"),
        ("kernel_unreclaimable", p.kernel_unreclaimable, false, "SUnreclaim growth / connections"),
        ("kernel_slab", p.kernel_slab, false, "Slab growth / connections (sockets, inodes, files, io_uring requests)"),
        ("tcp_buffers", p.tcp_buffers, false, "sockstat TCP memory growth / connections (buffers holding data)"),
        (
            "kernel_total",
            p.kernel_total,
            true,
            "(MemFree drop - both processes' memory) / connections: all kernel memory",
        ),
        ("total", p.total, true, "MemFree drop / connections: everything (not a measurement below its floor)"),
    ]
}

// ---------------------------------------------------------------------------------------------
// Number formatting

/// Microseconds for people: `3.21 µs`, `45.6 µs`, `1,234 µs`, then milliseconds above
/// 10,000 µs (`12.3 ms`, `1,234 ms`) and seconds above 10,000 ms (`12.3 s`).
pub fn format_micros(us: f64) -> String {
    if !us.is_finite() {
        return "—".into();
    }
    let ms = us / 1e3;
    match us.abs() {
        a if a < 10.0 => format!("{us:.2} µs"),
        a if a < 100.0 => format!("{us:.1} µs"),
        a if a <= 10_000.0 => format!("{} µs", signed_thousands(us)),
        a if a < 100_000.0 => format!("{ms:.1} ms"),
        a if a <= 10_000_000.0 => format!("{} ms", signed_thousands(ms)),
        _ => format!("{:.1} s", us / 1e6),
    }
}

/// A rate per second: `12,345/s`, or with one decimal below 100 (`2.5/s`).
pub fn format_rate(per_second: f64) -> String {
    if !per_second.is_finite() {
        return "—".into();
    }
    if per_second.abs() < 100.0 { format!("{per_second:.1}/s") } else { format!("{}/s", signed_thousands(per_second)) }
}

/// Bytes per connection with both a human size and the exact figure: `8.2 KiB (8,381 B)`.
pub fn format_bytes_exact(bytes: f64) -> String {
    if bytes.abs() < 1024.0 {
        return format!("{} B", signed_thousands(bytes));
    }
    format!("{} ({} B)", human_bytes(bytes), signed_thousands(bytes))
}

/// A whole number with thousands separators and its sign: `-1,234`.
fn signed_thousands(v: f64) -> String {
    let rounded = v.round();
    let sign = if rounded < 0.0 { "-" } else { "" };
    format!("{sign}{}", thousands(rounded.abs() as u64))
}

/// Milliseconds: whole ones with separators (`10,000 ms`), small ones with a decimal.
fn format_millis(ms: f64) -> String {
    if ms == ms.round() { format!("{} ms", signed_thousands(ms)) } else { format!("{ms:.1} ms") }
}

fn format_seconds(s: f64) -> String {
    format!("{s:.1} s")
}

/// An achieved rate, with its share of the requested one when one was requested.
fn rate_achieved(achieved: f64, requested: f64) -> String {
    if requested > 0.0 {
        format!("{} ({} of requested)", format_rate(achieved), share(achieved, requested))
    } else {
        format_rate(achieved)
    }
}

/// `achieved` as a share of `requested`, or nothing when nothing was asked.
fn share(achieved: f64, requested: f64) -> String {
    if requested > 0.0 && achieved.is_finite() { format!("{:.1}%", 100.0 * achieved / requested) } else { "—".into() }
}

/// A latency figure, or a dash when the distribution is empty.
fn latency_cell(summary: &LatencySummary, value: f64) -> String {
    if summary.count == 0 { "—".into() } else { format_micros(value) }
}

// ---------------------------------------------------------------------------------------------
// Markdown

/// Text safe inside a table cell (a `|` would end the cell, a newline the row; tabs, as in
/// multi-value sysctls, render unevenly).
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\t'], " ")
}

/// A Markdown table; `align` has one `l` or `r` per column.
pub(super) fn table(md: &mut String, header: &[&str], align: &str, rows: &[Vec<String>]) {
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    md.push_str(&line(header.iter().map(|h| cell(h)).collect()));
    md.push_str(&line(align.chars().map(|a| if a == 'r' { "---:".into() } else { "---".into() }).collect()));
    for row in rows {
        md.push_str(&line(row.iter().map(|c| cell(c)).collect()));
    }
    md.push('\n');
}

/// A key/value table, values right-aligned (figures).
fn figures(md: &mut String, rows: &[(&str, String)]) {
    key_values(md, rows, "lr");
}

/// A key/value table, values left-aligned (text).
pub(super) fn facts(md: &mut String, rows: &[(&str, String)]) {
    key_values(md, rows, "ll");
}

fn key_values(md: &mut String, rows: &[(&str, String)], align: &str) {
    let rows: Vec<Vec<String>> = rows.iter().map(|(k, v)| vec![k.to_string(), v.clone()]).collect();
    table(md, &["", ""], align, &rows);
}

pub(super) fn push_line(md: &mut String, text: &str) {
    md.push_str(text);
    md.push('\n');
}

/// A GitHub heading anchor: lower case, spaces to `-`, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// A relative link target; spaces would end it.
pub(super) fn link_target(rel_path: &str) -> String {
    rel_path.replace(' ', "%20")
}

// ---------------------------------------------------------------------------------------------
// The peers comparison (`c2m bench --peers`, results_dir/peers/*.json)

/// The latest peers comparison's section (file names are UTC stamps, so the last sorts
/// latest); nothing when there is none.
fn write_peers(md: &mut String, results_dir: &Path) -> Result<(), ReportError> {
    use crate::results::peers_table as table;
    use crate::schema::peers::{PEERS_RESULTS_DIR, PEERS_SCHEMA_NAME, PeersResult};
    let dir = results_dir.join(PEERS_RESULTS_DIR);
    if !dir.is_dir() {
        return Ok(());
    }
    let mut latest = None;
    for file in sorted_entries(&dir)? {
        if file.extension().is_some_and(|e| e == "json") && file.is_file() {
            let text = fs::read_to_string(&file).map_err(|source| ReportError::Read { path: file.clone(), source })?;
            if text.contains(&format!("\"{PEERS_SCHEMA_NAME}\"")) {
                latest = Some((file, text));
            }
        }
    }
    let Some((file, text)) = latest else { return Ok(()) };
    let r: PeersResult =
        serde_json::from_str(&text).map_err(|source| ReportError::PeersParse { path: file.clone(), source })?;
    let rel = format!("{PEERS_RESULTS_DIR}/{}", file_name(&file));
    let s = &r.settings;
    push_line(md, "## Side by side: c2m and its peers");
    push_line(md, "");
    push_line(
        md,
        &format!(
            "`c2m bench --peers`: every server in turn with the same `c2m load`, {} round(s), the order \
             rotated by one each round. Echo: {} connections, {} B frames, {} in flight each (closed loop), \
             {:.0} s; server CPU from /proc/PID/stat over the window. Latency: {} connections, PING at {}/s \
             (open loop), {:.0} s, then SIGTERM with the connections held (shutdown). Capacity: idle \
             connections until MemFree dropped by {} (both loopback ends and the load included), the count \
             interpolated at the budget. Peers with a descriptor per connection run as processes of at most \
             {} connections on one SO_REUSEPORT port. CPU: {}.",
            s.rounds,
            thousands(s.connections),
            s.echo_size,
            s.echo_in_flight,
            s.window_seconds,
            thousands(s.connections),
            thousands(s.latency_rate),
            s.window_seconds,
            human_bytes(s.budget_bytes as f64),
            thousands(s.connections_per_shard),
            s.cpu_placement.trim_end_matches('.'),
        ),
    );
    push_line(md, "");
    let skipped: Vec<String> = r
        .servers
        .iter()
        .filter(|v| !v.available)
        .map(|v| format!("{} ({})", v.name, v.skipped_reason.as_deref().unwrap_or("no reason given")))
        .collect();
    let shards: Vec<String> = r
        .rounds
        .iter()
        .flat_map(|round| &round.turns)
        .filter_map(|t| Some((t.server.as_str(), t.capacity.as_ref()?.server.shards)))
        .filter(|(_, n)| *n > 1)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|(name, n)| format!("{name}: {n} processes"))
        .collect();
    let problems: usize = r.rounds.iter().flat_map(|round| &round.turns).map(|t| t.errors.len()).sum();
    facts(
        md,
        &[
            ("result", format!("[{rel}]({})", link_target(&rel))),
            (
                "status",
                match r.status {
                    RunStatus::Complete => "complete".to_string(),
                    RunStatus::FellShort => format!("**FELL SHORT**: {}", r.abort_reason.as_deref().unwrap_or("")),
                    RunStatus::Aborted => format!("**ABORTED**: {}", r.abort_reason.as_deref().unwrap_or("")),
                },
            ),
            ("started (UTC)", format!("{}, {:.0} s", r.started_utc, r.elapsed_seconds)),
            ("machine", machine_line(&r.machine)),
            (
                "versions",
                r.servers
                    .iter()
                    .filter(|v| v.available)
                    .map(|v| format!("{} {}", v.name, v.version))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            ("skipped", if skipped.is_empty() { "none".into() } else { skipped.join("; ") }),
            ("capacity shards", if shards.is_empty() { "none".into() } else { shards.join(", ") }),
            ("problems noted", format!("{problems} (see `errors` in the result)")),
        ],
    );
    md.push_str(&table::markdown(&r));
    push_line(md, "");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report

fn write_header(md: &mut String, scenarios: &BTreeMap<&str, ScenarioRuns<'_>>, files: usize) {
    push_line(md, "# c2m benchmark results");
    push_line(md, "");
    push_line(
        md,
        &format!(
            "Generated by `c2m bench` from the result files in this directory (`*/*.json` with \
             `\"schema\": \"{SCHEMA_NAME}\"`, version {SCHEMA_VERSION}; JSON Schema in \
             `results/schema/bench-result.schema.json`). **Do not edit by hand**: every \
             `c2m bench` run rewrites this file and `{CHARTS_DIR}/` (unless given \
             `--no-report`). To rebuild them from the result files alone, run \
             `{REGENERATE_COMMAND}`."
        ),
    );
    push_line(md, "");
    push_line(
        md,
        &format!(
            "{} scenario(s) from {} result file(s); each section shows the latest run of its \
             scenario. One connection is a client socket and a server socket on loopback, so \
             memory per connection counts both ends.",
            scenarios.len(),
            files
        ),
    );
    push_line(md, "");
}

fn write_summary(md: &mut String, scenarios: &BTreeMap<&str, ScenarioRuns<'_>>) {
    push_line(md, "## Summary");
    push_line(md, "");
    if scenarios.is_empty() {
        push_line(md, "No results yet.");
        push_line(md, "");
        return;
    }
    let rows: Vec<Vec<String>> = scenarios.iter().map(|(name, runs)| summary_row(name, &runs.latest.result)).collect();
    table(
        md,
        &[
            "scenario",
            "status",
            "established / requested",
            "connect rate",
            "mem/conn",
            "floor",
            "kernel",
            "server user",
            "rtt p50",
            "rtt p99",
            "rtt p99.9",
            "started (UTC)",
            "machine",
        ],
        "llrrrrrrrrrll",
        &rows,
    );
    push_line(
        md,
        "Status is today's verdict on each result: *complete* only when every connection asked for \
         logged in, every message was answered and every cross-check (the load's counts against the \
         server's and the kernel's) agreed; a result that said `complete` when written may say *fell short* \
         here. Memory per connection: *mem/conn* is the MemFree drop, and *floor* the least it can be \
         (Slab growth plus both processes' memory); a drop below its floor is not a measurement (memory \
         was given back meanwhile), so it is struck through and the floor is the figure (marked ≥). \
         *kernel* is the part not in either process, *server user* the server's RSS growth. rtt is the \
         message round trip corrected for coordinated omission.",
    );
    push_line(md, "");
}

/// Memory per connection as a headline: the total, or when it is below its floor, the floor
/// (a lower bound) with the total struck through.
fn headline_memory(p: &PerConnection) -> String {
    if p.below_floor {
        format!("≥ {} (~~{}~~ below floor)", human_bytes(p.total_floor), human_bytes(p.total))
    } else {
        human_bytes(p.total)
    }
}

/// Every result file, not only each scenario's latest, under today's checks: what it said when
/// written, what it is now, and its memory against its floor.
fn write_audit(md: &mut String, found: &[FoundResult]) {
    if found.is_empty() {
        return;
    }
    push_line(md, "## Every result under today's checks");
    push_line(md, "");
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|f| {
            let r = &f.result;
            let (status, reasons) = checks::assessed_status(r);
            let p = checks::per_connection_with_floor(r);
            let floor = if p.below_floor {
                format!("**below** by {}", format_bytes_exact(p.total_floor - p.total))
            } else {
                "above".into()
            };
            vec![
                format!("[{0}]({1})", f.rel_path, link_target(&f.rel_path)),
                r.status.words().to_string(),
                status_word(status).to_string(),
                format!("{} / {}", thousands(r.load.connections.established), thousands(r.load.connections.requested)),
                format_bytes_exact(p.total),
                format_bytes_exact(p.total_floor),
                floor,
                reasons.join("; "),
            ]
        })
        .collect();
    table(
        md,
        &[
            "result",
            "written as",
            "now",
            "established / requested",
            "mem/conn",
            "floor",
            "vs floor",
            "why not complete",
        ],
        "lllrrrll",
        &rows,
    );
    push_line(
        md,
        "Results written before the checks existed carry no cross-checks; theirs are recomputed from the \
         stored counts (the kernel's from sockstat, which counts the whole box) and their floor is Slab \
         growth plus both processes' RSS growth (start-up left out: a lower bound).",
    );
    push_line(md, "");
}

fn summary_row(name: &str, r: &BenchResult) -> Vec<String> {
    let c = &r.load.connections;
    let p = checks::per_connection_with_floor(r);
    let rtt = &r.load.latency.rtt_corrected;
    vec![
        format!("[{name}](#{})", anchor(name)),
        status_word(checks::assessed_status(r).0).to_string(),
        format!("{} / {}", thousands(c.established), thousands(c.requested)),
        format_rate(c.connect_rate_achieved),
        headline_memory(&p),
        human_bytes(p.total_floor),
        human_bytes(p.kernel_total),
        human_bytes(p.server_user),
        latency_cell(rtt, rtt.p50),
        latency_cell(rtt, rtt.p99),
        latency_cell(rtt, rtt.p999),
        r.started_utc.clone(),
        machine_short(r),
    ]
}

fn status_word(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Complete => "complete",
        RunStatus::FellShort => "**fell short**",
        RunStatus::Aborted => "**ABORTED**",
    }
}

fn machine_short(r: &BenchResult) -> String {
    let m = &r.machine;
    format!("{} ({} cores, {})", m.host, m.cores, human_bytes(m.memory_bytes as f64))
}

fn write_scenario(md: &mut String, runs: &ScenarioRuns<'_>, charts: &ScenarioCharts) {
    let found = runs.latest;
    let r = &found.result;
    push_line(md, &format!("## {}", r.scenario.name));
    push_line(md, "");
    if !r.scenario.description.is_empty() {
        // The scenario's words; the run may have asked for another count (`-c`).
        push_line(
            md,
            &format!(
                "*{}* (the scenario file; this run asked for {} connections)",
                r.scenario.description.trim(),
                thousands(r.load.connections.requested)
            ),
        );
        push_line(md, "");
    }
    write_status(md, r);
    write_run(md, found, runs.older.len());
    write_machine(md, r);
    write_settings(md, r);
    write_connections(md, r);
    write_chart_link(md, "Connections over time", &charts.connections);
    write_errors(md, r);
    write_messages(md, r);
    write_latency(md, r);
    write_chart_link(md, "Latency by percentile", &charts.latency);
    write_checks(md, r);
    write_memory(md, r);
    write_chart_link(md, "Memory per connection", &charts.memory);
    write_processes(md, r);
    write_server_metrics(md, r);
    write_files(md, runs);
}

/// A run that is not complete is said first and loudly, with every reason: an aborted one, or
/// one that fell short under today's checks (even if it said `complete` when written).
fn write_status(md: &mut String, r: &BenchResult) {
    let (status, reasons) = checks::assessed_status(r);
    match status {
        RunStatus::Complete => push_line(md, "**Status: complete** (all connections, all answers, every cross-check)."),
        RunStatus::FellShort => {
            let written = if r.status == RunStatus::Complete {
                " It was written as `complete`, before these checks existed."
            } else {
                ""
            };
            push_line(md, &format!("> **⚠ FELL SHORT — it did not do all the scenario asked.**{written}"));
            for reason in reasons {
                push_line(md, ">");
                push_line(md, &format!("> - {reason}"));
            }
        }
        RunStatus::Aborted => {
            let bench = (r.status == RunStatus::Aborted).then(|| reason_text(&r.abort_reason));
            let load = (r.load.status == RunStatus::Aborted).then(|| reason_text(&r.load.abort_reason));
            let aborted = match (bench, load) {
                (Some(b), Some(l)) if b == l => vec![format!("the bench and the load: {b}")],
                (b, l) => b
                    .map(|b| format!("the bench: {b}"))
                    .into_iter()
                    .chain(l.map(|l| format!("the load: {l}")))
                    .collect(),
            };
            push_line(md, "> **⚠ ABORTED — these figures are not what the scenario asked for.**");
            for a in aborted {
                push_line(md, ">");
                push_line(md, &format!("> Aborted by {a}"));
            }
        }
    }
    push_line(md, "");
}

/// The load's counts against the server's and the kernel's.
fn write_checks(md: &mut String, r: &BenchResult) {
    push_line(md, "### Cross-checks");
    push_line(md, "");
    let checks = checks::checks_of(r);
    if r.checks.is_empty() {
        push_line(
            md,
            "Recomputed from this older result's stored figures (it carried none); the kernel's count \
             is sockstat's, which counts the whole box.",
        );
        push_line(md, "");
    }
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                format!("{} ({})", thousands(c.expected.max(0.0) as u64), c.expected_from),
                format!("{} ({})", thousands(c.observed.max(0.0) as u64), c.observed_from),
                signed_thousands(c.difference),
                if c.passed { "agrees".into() } else { "**differs**".into() },
                c.note.clone(),
            ]
        })
        .collect();
    table(md, &["check", "expected", "observed", "difference", "", "note"], "lrrrll", &rows);
}

fn reason_text(reason: &Option<String>) -> String {
    match reason {
        Some(text) if !text.trim().is_empty() => text.trim().to_string(),
        _ => "(no reason recorded)".into(),
    }
}

fn write_run(md: &mut String, found: &FoundResult, older: usize) {
    let r = &found.result;
    push_line(
        md,
        &format!(
            "Started {} (UTC), ran {}. c2m {} built from commit `{}`{}.{}",
            r.started_utc,
            format_seconds(r.elapsed_seconds),
            r.c2m.version,
            r.c2m.git_commit,
            match r.c2m.git_dirty {
                Some(true) => " with uncommitted changes",
                Some(false) => " (clean)",
                None if r.c2m.git_commit.ends_with("-dirty") => " (read at run time from a tree with changes)",
                None => "",
            },
            if older > 0 {
                format!(" {older} older result(s) of this scenario in `{}/`.", found.rel_dir)
            } else {
                String::new()
            }
        ),
    );
    push_line(md, "");
}

fn write_machine(md: &mut String, r: &BenchResult) {
    let m = &r.machine;
    push_line(md, "### Machine");
    push_line(md, "");
    facts(
        md,
        &[
            ("host", m.host.clone()),
            ("kernel", m.kernel.clone()),
            ("cpu", m.cpu_model.clone()),
            ("cores", m.cores.to_string()),
            ("memory", human_bytes(m.memory_bytes as f64)),
            ("free at start", human_bytes(m.mem_free_bytes as f64)),
            ("virtualised", if m.virtualization.is_empty() { "not recorded".into() } else { m.virtualization.clone() }),
            (
                "load average (1, 5, 15 min)",
                match &r.load_average {
                    Some(l) => format!(
                        "{:.2} {:.2} {:.2} before, {:.2} {:.2} {:.2} after",
                        l.before[0], l.before[1], l.before[2], l.after[0], l.after[1], l.after[2]
                    ),
                    None => "not recorded".into(),
                },
            ),
            (
                "RLIMIT_NOFILE soft / hard",
                format!("{} / {}", thousands(m.rlimit_nofile[0]), thousands(m.rlimit_nofile[1])),
            ),
        ],
    );
    if m.sysctls.is_empty() {
        push_line(md, "No sysctls recorded.");
        push_line(md, "");
    } else {
        let rows: Vec<Vec<String>> = m.sysctls.iter().map(|(k, v)| vec![format!("`{k}`"), v.clone()]).collect();
        table(md, &["sysctl", "value at start"], "ll", &rows);
    }
}

fn write_settings(md: &mut String, r: &BenchResult) {
    push_line(md, "### Settings");
    push_line(md, "");
    push_line(md, &format!("Scenario file `{}`, after defaults and sizing:", r.scenario.file));
    push_line(md, "");
    match r.scenario.settings.as_object() {
        Some(map) if !map.is_empty() => {
            let rows: Vec<Vec<String>> = map.iter().map(|(k, v)| vec![k.clone(), setting_value(v)]).collect();
            table(md, &["setting", "value"], "ll", &rows);
        }
        _ => {
            push_line(md, &format!("`{}`", r.scenario.settings));
            push_line(md, "");
        }
    }
    let p = &r.load.params;
    push_line(md, "The load as run:");
    push_line(md, "");
    facts(
        md,
        &[
            ("target", p.target.clone()),
            ("connections", thousands(p.connections)),
            ("connect rate", if p.connect_rate > 0.0 { format_rate(p.connect_rate) } else { "unpaced".into() }),
            ("connect concurrency", thousands(p.connect_concurrency)),
            ("connect timeout", format!("{} ms", thousands(p.connect_timeout_ms))),
            ("sources", format!("{} ({} addresses)", p.sources.join(", "), thousands(p.source_addresses))),
            ("source ports", format!("{}–{}", p.source_ports[0], p.source_ports[1])),
            ("duration", format_seconds(p.duration_ms as f64 / 1e3)),
            ("ramp", format_seconds(p.ramp_ms as f64 / 1e3)),
            ("hold", format_seconds(p.hold_ms as f64 / 1e3)),
            ("workload", p.workload.clone()),
            ("message interval", format_millis(p.message_interval_ms)),
            ("message rate", format_rate(p.message_rate)),
            ("frame size", format!("{} B", thousands(p.size))),
            (
                "workers × rings × files",
                format!("{} × {} × {}", p.workers, p.rings_per_worker, thousands(p.files_per_ring)),
            ),
        ],
    );
}

/// A setting as text: strings bare, everything else as compact JSON.
fn setting_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn write_connections(md: &mut String, r: &BenchResult) {
    let c = &r.load.connections;
    let asked_rate = r.load.params.connect_rate;
    push_line(md, "### Connections");
    push_line(md, "");
    figures(
        md,
        &[
            ("requested", thousands(c.requested)),
            ("connected (TCP handshake done)", thousands(c.connected)),
            ("established (logged in)", thousands(c.established)),
            ("established at peak", thousands(c.established_peak)),
            ("established when messages ended", thousands(c.established_at_end)),
            ("failed", thousands(c.failed)),
            ("lost after establishing", thousands(c.lost)),
            ("connect phase", format_seconds(c.connect_seconds)),
            ("connect rate requested", if asked_rate > 0.0 { format_rate(asked_rate) } else { "unpaced".into() }),
            ("connect rate achieved", rate_achieved(c.connect_rate_achieved, asked_rate)),
        ],
    );
    write_phases(md, &r.load.phases);
}

fn write_phases(md: &mut String, phases: &[Phase]) {
    if phases.is_empty() {
        push_line(md, "No phases recorded.");
        push_line(md, "");
        return;
    }
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| vec![p.name.clone(), format_seconds(p.start), format_seconds(p.end), format_seconds(p.end - p.start)])
        .collect();
    table(md, &["phase", "start", "end", "duration"], "lrrr", &rows);
}

fn write_chart_link(md: &mut String, title: &str, chart: &ChartOutcome) {
    match chart {
        ChartOutcome::Drawn(rel) => push_line(md, &format!("![{title}]({})", link_target(rel))),
        ChartOutcome::Skipped(why) => push_line(md, &format!("*{why}*")),
    }
    push_line(md, "");
}

fn write_errors(md: &mut String, r: &BenchResult) {
    push_line(md, "### Errors by kind");
    push_line(md, "");
    if r.load.errors.is_empty() {
        push_line(md, "none");
        push_line(md, "");
        return;
    }
    let rows: Vec<Vec<String>> = r.load.errors.iter().map(|(kind, n)| vec![kind.clone(), thousands(*n)]).collect();
    table(md, &["error", "count"], "lr", &rows);
}

fn write_messages(md: &mut String, r: &BenchResult) {
    let m = &r.load.messages;
    push_line(md, "### Messages");
    push_line(md, "");
    if r.load.params.workload == "idle" {
        push_line(md, "Idle workload: the connections send nothing after logging in.");
        push_line(md, "");
    }
    figures(
        md,
        &[
            ("sent", thousands(m.sent)),
            ("received", thousands(m.received)),
            ("unanswered at the end", thousands(m.unanswered)),
            ("sent late (previous send still in flight)", thousands(m.late)),
            ("receives stopped for want of buffers", thousands(m.recv_buffer_shortfalls)),
            ("bytes sent", human_bytes(m.bytes_sent as f64)),
            ("bytes received", human_bytes(m.bytes_received as f64)),
            ("rate requested", format_rate(m.rate_requested)),
            ("rate achieved", rate_achieved(m.rate_achieved, m.rate_requested)),
        ],
    );
    if let Some(c) = &r.load.chat {
        push_line(md, "Chat, every message accounted for:");
        push_line(md, "");
        figures(
            md,
            &[
                ("SENDs", thousands(c.sent)),
                ("ACKed (one tick)", thousands(c.acked)),
                (
                    "NACK 7 (unknown recipient) / NACK 8 (offline store full)",
                    format!("{} / {}", thousands(c.nacked_unknown_recipient), thousands(c.nacked_offline_full)),
                ),
                ("deliveries expected / delivered", format!("{} / {}", thousands(c.expected), thousands(c.delivered))),
                ("RECEIPTs back to the sender (two ticks)", thousands(c.receipted)),
                ("lost / delivered twice", format!("{} / {}", thousands(c.lost), thousands(c.duplicates))),
                ("deliveries per second", format_rate(c.delivered_rate)),
            ],
        );
    }
}

fn write_latency(md: &mut String, r: &BenchResult) {
    let l = &r.load.latency;
    push_line(md, "### Latency");
    push_line(md, "");
    let rows: Vec<Vec<String>> = [
        ("connect", "connect issued → TCP connected", &l.connect),
        ("connect_corrected", "connect scheduled → TCP connected", &l.connect_corrected),
        ("login", "TCP connected → WELCOME", &l.login),
        ("rtt_corrected", "round trip from the scheduled send", &l.rtt_corrected),
        ("rtt_uncorrected", "round trip from the actual send", &l.rtt_uncorrected),
        ("schedule_lag", "how late the load's ticks ran (the generator's own share)", &l.schedule_lag),
        ("chat_ack", "SEND → its ACK (one tick)", &l.chat_ack),
        ("chat_deliver", "SEND → DELIVER at the recipient", &l.chat_deliver),
        ("chat_receipt", "SEND → the RECEIPT back (two ticks)", &l.chat_receipt),
    ]
    .into_iter()
    .filter(|(name, _, s)| !name.starts_with("chat") || s.count > 0)
    .map(|(name, what, s)| latency_row(name, what, s))
    .collect();
    table(md, &["latency", "measures", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max"], "llrrrrrrr", &rows);
    push_line(
        md,
        "Corrected figures count from when the connect or message was *scheduled*, so time \
         spent waiting behind a slow one is included (coordinated omission corrected, as wrk2 \
         reports it).",
    );
    push_line(md, "");
}

fn latency_row(name: &str, what: &str, s: &LatencySummary) -> Vec<String> {
    vec![
        name.to_string(),
        what.to_string(),
        thousands(s.count),
        latency_cell(s, s.p50),
        latency_cell(s, s.p90),
        latency_cell(s, s.p99),
        latency_cell(s, s.p999),
        latency_cell(s, s.p9999),
        latency_cell(s, s.max),
    ]
}

fn write_memory(md: &mut String, r: &BenchResult) {
    let mem = &r.memory;
    push_line(md, "### Memory per connection");
    push_line(md, "");
    push_line(
        md,
        &format!("Divided by {} connections logged in when the loaded figures were taken.", thousands(mem.connections)),
    );
    push_line(md, "");
    let p = checks::per_connection_with_floor(r);
    if p.below_floor {
        push_line(
            md,
            &format!(
                "> **⚠ Below its floor:** MemFree fell by {} per connection, less than the {} that Slab growth and \
                 the processes' own memory took. Memory came back from elsewhere during the run (page cache, an \
                 earlier run's), so the total is not this run's cost; **at least {}** is.",
                format_bytes_exact(p.total),
                format_bytes_exact(p.total_floor),
                format_bytes_exact(p.total_floor)
            ),
        );
        push_line(md, "");
    }
    match &mem.settle {
        Some(settle) => push_line(
            md,
            &format!(
                "Before the baseline (taken before either process started): page cache {}, MemFree {} ({} in the \
                 last second) after {:.1} s.",
                if settle.dropped_page_cache { "dropped" } else { "not dropped" },
                if settle.settled { "settled" } else { "**still moving**" },
                signed_thousands(settle.last_change_bytes as f64) + " B",
                settle.seconds
            ),
        ),
        None => push_line(
            md,
            "An older result: its baseline was taken with the server already up (its start-up memory left \
             out) and memory not settled first; its floor is Slab growth plus both processes' RSS growth.",
        ),
    }
    push_line(md, "");
    let conns = mem.connections as f64;
    let mut rows: Vec<Vec<String>> = memory_parts(r)
        .into_iter()
        .map(|(label, v, _, what)| {
            vec![label.to_string(), format_bytes_exact(v), human_bytes(v * conns), what.to_string()]
        })
        .collect();
    rows.push(vec![
        "total_floor".into(),
        format_bytes_exact(p.total_floor),
        human_bytes(p.total_floor * conns),
        "the least total can be: Slab growth + both processes' memory".into(),
    ]);
    table(md, &["part", "per connection", "all connections", "what"], "lrrl", &rows);
    write_system_memory(md, &mem.baseline, &mem.loaded);
}

fn write_system_memory(md: &mut String, before: &SystemMemory, loaded: &SystemMemory) {
    let bytes = |a: u64, b: u64| vec![human_bytes(a as f64), human_bytes(b as f64), human_bytes(b as f64 - a as f64)];
    let row = |name: &str, mut cells: Vec<String>| {
        cells.insert(0, name.to_string());
        cells
    };
    let rows = vec![
        row("taken at", vec![format_seconds(before.t), format_seconds(loaded.t), format_seconds(loaded.t - before.t)]),
        row("MemFree", bytes(before.mem_free, loaded.mem_free)),
        row("MemAvailable", bytes(before.mem_available, loaded.mem_available)),
        row("Slab", bytes(before.slab, loaded.slab)),
        row("SUnreclaim", bytes(before.slab_unreclaimable, loaded.slab_unreclaimable)),
        row(
            "TCP sockets in use",
            vec![
                thousands(before.tcp_inuse),
                thousands(loaded.tcp_inuse),
                signed_thousands(loaded.tcp_inuse as f64 - before.tcp_inuse as f64),
            ],
        ),
        row("TCP memory", bytes(before.tcp_mem_bytes, loaded.tcp_mem_bytes)),
    ];
    table(md, &["system", "before connecting", "while held", "change"], "lrrr", &rows);
    push_line(
        md,
        "MemAvailable counts live sockets' inodes as reclaimable and overstates what is free; \
         the per-connection figures use MemFree.",
    );
    push_line(md, "");
}

fn write_processes(md: &mut String, r: &BenchResult) {
    push_line(md, "### Processes");
    push_line(md, "");
    let rows: Vec<Vec<String>> = [("server", &r.server), ("load", &r.load_process)]
        .into_iter()
        .map(|(role, p)| {
            vec![
                role.to_string(),
                format!("`{}`", p.command),
                human_bytes(p.rss_start_bytes as f64),
                human_bytes(p.rss_bytes as f64),
                human_bytes(p.pss_bytes as f64),
                format!("{:.1} s", p.cpu_user_seconds),
                format!("{:.1} s", p.cpu_system_seconds),
            ]
        })
        .collect();
    table(
        md,
        &["process", "command", "RSS at start", "RSS held", "PSS held", "CPU user", "CPU system"],
        "llrrrrr",
        &rows,
    );
    for (role, p) in [("server", &r.server), ("load", &r.load_process)] {
        if !p.argv.is_empty() {
            push_line(md, &format!("The {role}'s command line: `{}`", p.argv.join(" ")));
            push_line(md, "");
        }
        if p.effective.contains("listening on") {
            push_line(md, &format!("The {role}'s effective settings (its banner): `{}`", p.effective));
            push_line(md, "");
        }
    }
}

fn write_server_metrics(md: &mut String, r: &BenchResult) {
    if r.server_metrics.is_empty() {
        return;
    }
    push_line(md, "<details><summary>Server metrics at the end (sum over workers)</summary>");
    push_line(md, "");
    let rows: Vec<Vec<String>> =
        r.server_metrics.iter().map(|(name, v)| vec![format!("`{name}`"), metric_value(*v)]).collect();
    table(md, &["metric", "value"], "lr", &rows);
    push_line(md, "</details>");
    push_line(md, "");
}

/// Counters as whole numbers, anything fractional as it is.
fn metric_value(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 { signed_thousands(v) } else { format!("{v}") }
}

fn write_files(md: &mut String, runs: &ScenarioRuns<'_>) {
    let found = runs.latest;
    let hlog = &found.result.hlog;
    push_line(md, "### Files");
    push_line(md, "");
    push_line(md, &format!("- result: [{0}]({1})", found.rel_path, link_target(&found.rel_path)));
    if hlog.is_empty() {
        push_line(md, "- histogram log: none recorded");
    } else {
        let rel = format!("{}/{hlog}", found.rel_dir);
        push_line(md, &format!("- histogram log (HdrHistogram interval log): [{rel}]({})", link_target(&rel)));
    }
    for older in &runs.older {
        push_line(
            md,
            &format!(
                "- older: [{0}]({1}) ({2})",
                older.rel_path,
                link_target(&older.rel_path),
                older.result.started_utc
            ),
        );
    }
    push_line(md, "");
}

/// The machine a result ran on, in one line: host, cores, memory, kernel.
pub(crate) fn machine_line(m: &crate::schema::bench::Machine) -> String {
    format!("{} ({} cores, {}), kernel {}", m.host, m.cores, human_bytes(m.memory_bytes as f64), m.kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_switch_to_ms_above_ten_thousand() {
        assert_eq!(format_micros(3.214), "3.21 µs");
        assert_eq!(format_micros(45.66), "45.7 µs");
        assert_eq!(format_micros(1234.4), "1,234 µs");
        assert_eq!(format_micros(10_000.0), "10,000 µs");
        assert_eq!(format_micros(12_345.0), "12.3 ms");
        assert_eq!(format_micros(1_234_567.0), "1,235 ms");
        assert_eq!(format_micros(12_300_000.0), "12.3 s");
        assert_eq!(format_micros(f64::NAN), "—");
    }

    #[test]
    fn rates_and_bytes() {
        assert_eq!(format_rate(2.46), "2.5/s");
        assert_eq!(format_rate(49_999.6), "50,000/s");
        assert_eq!(format_bytes_exact(512.0), "512 B");
        assert_eq!(format_bytes_exact(8380.9), "8.2 KiB (8,381 B)");
        assert_eq!(format_bytes_exact(-2048.0), "-2.0 KiB (-2,048 B)");
        assert_eq!(share(50.0, 200.0), "25.0%");
        assert_eq!(share(50.0, 0.0), "—");
    }

    #[test]
    fn markdown_helpers() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
        assert_eq!(anchor("Echo 100k (v2)"), "echo-100k-v2");
        assert_eq!(file_stem("idle 1m/x"), "idle-1m-x");
        assert!(claims_bench_result(r#"{"schema": "c2m-bench-result", "x": "#));
        assert!(!claims_bench_result(r#"{"c2m_version": "0.1.0"}"#));
        assert!(!claims_bench_result(r#"{"note": "mentions \"c2m-bench-result\""}"#));
    }
}
