//! The results JSON against its JSON Schema, and the report built from results on disk.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use c2m::results::report::{format_micros, render_report};
use c2m::schema::bench::{
    BenchResult, Build, Machine, MemoryMeasurement, PerConnection, ProcessUsage, SCHEMA_NAME, SCHEMA_VERSION,
    ScenarioInfo, SystemMemory,
};
use c2m::schema::load::{
    ConnectionCounts, Latencies, LatencySummary, LoadParams, LoadReport, MessageCounts, Phase, RunStatus, Sample,
};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// A realistic result

/// A deterministic spread of latencies in nanoseconds: most near `base_us`, a long tail.
fn latency_ns(base_us: u64, count: usize, seed: u64) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let mut x = seed;
    for _ in 0..count {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        // u^8 is small almost always and near 1 rarely: a tail 200x the base.
        let us = base_us as f64 * (1.0 + 200.0 * u.powi(8));
        h.record((us * 1000.0) as u64).expect("record");
    }
    h
}

fn latency(base_us: u64, count: usize, seed: u64) -> LatencySummary {
    LatencySummary::from_ns(&latency_ns(base_us, count, seed))
}

fn empty_latency() -> LatencySummary {
    LatencySummary::from_ns(&Histogram::<u64>::new(3).expect("histogram"))
}

/// Connect ramp to `established` over `ramp_s`, a hold, and a close.
fn timeline(established: u64, ramp_s: u64, total_s: u64, messages: bool) -> Vec<Sample> {
    let rate = established as f64 / ramp_s as f64;
    (1..=total_s)
        .map(|t| {
            let ramping = t <= ramp_s;
            let closing = t + 3 > total_s;
            let est = if closing { 0 } else { (t.min(ramp_s) as f64 * rate) as u64 };
            Sample {
                t: t as f64,
                established: est,
                connect_rate: if ramping { rate } else { 0.0 },
                msg_rate: if messages && !ramping && !closing { est as f64 / 10.0 } else { 0.0 },
                p50_us: if messages { 95.0 } else { 0.0 },
                p99_us: if messages { 900.0 } else { 0.0 },
                errors: if t > 3 { 1234 + 17 } else { 0 },
                mem_free: 20_000_000_000 - est * 9000,
            }
        })
        .collect()
}

fn system_memory(t: f64, conns: u64) -> SystemMemory {
    SystemMemory {
        t,
        mem_free: 22_000_000_000 - conns * 9_160,
        mem_available: 23_000_000_000 - conns * 2_000,
        slab: 300_000_000 + conns * 7_900,
        slab_unreclaimable: 120_000_000 + conns * 6_100,
        tcp_inuse: 12 + 2 * conns,
        tcp_mem_bytes: 4096 * 3 + conns * 8,
    }
}

struct Shape<'a> {
    name: &'a str,
    workload: &'a str,
    connections: u64,
    status: RunStatus,
    abort_reason: Option<&'a str>,
    started_utc: &'a str,
}

fn result(s: &Shape<'_>) -> BenchResult {
    let messages = s.workload != "idle";
    let n = s.connections;
    let established = if s.status == RunStatus::Aborted { n * 3 / 5 } else { n - 1251 };
    let mut errors = BTreeMap::new();
    errors.insert("connect ECONNREFUSED".to_string(), 1234);
    errors.insert("connect timeout".to_string(), 17);
    let rtt = |base, seed| if messages { latency(base, 50_000, seed) } else { empty_latency() };
    let phases = vec![
        Phase { name: "connect".into(), start: 0.0, end: 20.0 },
        Phase { name: if messages { "messages" } else { "hold" }.into(), start: 20.0, end: 57.0 },
        Phase { name: "close".into(), start: 57.0, end: 60.0 },
    ];
    let abort_reason = s.abort_reason.map(String::from);
    let load = LoadReport {
        params: LoadParams {
            target: "127.0.0.1:7000".into(),
            connections: n,
            connect_rate: 50_000.0,
            connect_concurrency: 4096,
            connect_timeout_ms: 5000,
            sources: vec!["127.0.0.2-127.0.0.21".into()],
            source_addresses: 20,
            source_ports: [1024, 65535],
            duration_ms: 37_000,
            ramp_ms: 20_000,
            warmup_ms: 0,
            hold_ms: 0,
            workload: s.workload.into(),
            message_interval_ms: if messages { 10_000.0 } else { 0.0 },
            message_rate: if messages { n as f64 / 10.0 } else { 0.0 },
            in_flight: 0,
            recv: String::new(),
            size: 64,
            workers: 2,
            rings_per_worker: 4,
            files_per_ring: 131_072,
            comeback: None,
        },
        status: s.status,
        abort_reason: abort_reason.clone(),
        started_unix_ms: 1_795_815_796_000,
        elapsed_seconds: 60.2,
        connections: ConnectionCounts {
            requested: n,
            connected: established + 3,
            established,
            established_peak: established,
            established_at_end: established - 2,
            failed: 1251,
            lost: 2,
            connect_seconds: 20.0,
            connect_rate_achieved: established as f64 / 20.0,
            ..Default::default()
        },
        errors,
        messages: if messages {
            MessageCounts {
                sent: 3_700_000,
                received: 3_699_900,
                unanswered: 100,
                late: 42,
                bytes_sent: 3_700_000 * 64,
                bytes_received: 3_699_900 * 64,
                rate_requested: n as f64 / 10.0,
                rate_achieved: n as f64 / 10.0 * 0.998,
                recv_buffer_shortfalls: 0,
            }
        } else {
            MessageCounts::default()
        },
        latency: Latencies {
            connect: latency(60, 20_000, 1),
            connect_corrected: latency(80, 20_000, 2),
            login: latency(40, 20_000, 3),
            rtt_corrected: rtt(90, 4),
            rtt_uncorrected: rtt(70, 5),
            schedule_lag: rtt(20, 6),
            ..Default::default()
        },
        phases,
        timeline: timeline(established, 20, 60, messages),
        chat: None,
        histograms: Default::default(),
        shard: None,
        merged: None,
    };
    BenchResult {
        schema: SCHEMA_NAME.into(),
        schema_version: SCHEMA_VERSION,
        c2m: Build { version: "0.1.0".into(), git_commit: "81ca120-dirty".into(), git_dirty: None },
        dataplane: Default::default(),
        machine: Machine {
            host: "vm".into(),
            kernel: "6.18.44-fc-v657".into(),
            cpu_model: "AMD EPYC 9R14".into(),
            cores: 2,
            memory_bytes: 25_276_510_208,
            mem_free_bytes: 22_000_000_000,
            rlimit_nofile: [20_000, 20_000],
            sysctls: BTreeMap::from([
                ("fs.nr_open".to_string(), "1073741816".to_string()),
                ("net.ipv4.ip_local_port_range".to_string(), "1024\t65535".to_string()),
                ("net.ipv4.tcp_mem".to_string(), "289401\t385869\t578802".to_string()),
            ]),
            virtualization: "none".into(),
        },
        scenario: ScenarioInfo {
            name: s.name.into(),
            description: format!("{n} {} connections on loopback", s.workload),
            file: format!("scenarios/{}.toml", s.name),
            settings: json!({
                "connections": n,
                "workload": s.workload,
                "connect_rate": 50_000,
                "workers": "auto",
                "sources": ["127.0.0.2-127.0.0.21"],
            }),
        },
        started_utc: s.started_utc.into(),
        elapsed_seconds: 75.5,
        status: s.status,
        abort_reason,
        shortfalls: Vec::new(),
        checks: Vec::new(),
        load_average: None,
        server: ProcessUsage {
            command: "c2m serve".into(),
            argv: Vec::new(),
            effective: String::new(),
            anon_bytes: 0,
            pid: 4242,
            rss_bytes: 6_000_000 + established * 214,
            pss_bytes: 5_900_000 + established * 214,
            rss_start_bytes: 6_000_000,
            cpu_user_seconds: 3.25,
            cpu_system_seconds: 18.5,
        },
        load_process: ProcessUsage {
            command: "c2m load".into(),
            argv: Vec::new(),
            effective: String::new(),
            anon_bytes: 0,
            pid: 4243,
            rss_bytes: 9_000_000 + established * 120,
            pss_bytes: 8_800_000 + established * 120,
            rss_start_bytes: 9_000_000,
            cpu_user_seconds: 4.0,
            cpu_system_seconds: 21.75,
        },
        memory: MemoryMeasurement {
            connections: established,
            baseline: system_memory(2.0, 0),
            loaded: system_memory(40.0, established),
            per_connection: PerConnection {
                server_user: 213.6,
                load_user: 120.2,
                kernel_slab: 7_900.4,
                kernel_unreclaimable: 6_100.9,
                tcp_buffers: 8.0,
                kernel_total: 8_826.2,
                total: 9_160.0,
                total_floor: 0.0,
                below_floor: false,
            },
            ..Default::default()
        },
        memory_timeline: (0..60).map(|t| system_memory(t as f64, 0)).collect(),
        server_metrics: BTreeMap::from([
            ("c2m_sessions_accepted_total".to_string(), established as f64),
            ("c2m_slab_resident_bytes".to_string(), 123_456_789.0),
        ]),
        load,
        hlog: format!("{}.hlog", s.started_utc.replace(':', "")),
    }
}

fn echo_result() -> BenchResult {
    result(&Shape {
        name: "echo-100k",
        workload: "echo",
        connections: 100_000,
        status: RunStatus::Complete,
        abort_reason: None,
        started_utc: "2026-11-27T22:30:00Z",
    })
}

const ABORT_REASON: &str = "MemFree fell below the 1 GiB floor at 612,000 connections";

fn idle_aborted_result() -> BenchResult {
    result(&Shape {
        name: "idle-1m",
        workload: "idle",
        connections: 1_000_000,
        status: RunStatus::Aborted,
        abort_reason: Some(ABORT_REASON),
        started_utc: "2026-11-28T01:00:00Z",
    })
}

// ---------------------------------------------------------------------------------------------
// The schema

fn schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/schema/bench-result.schema.json");
    let text = fs::read_to_string(&path).expect("schema file");
    serde_json::from_str(&text).expect("schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("schema compiles")
}

fn errors_of(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

#[test]
fn schema_is_a_valid_draft_2020_12_schema() {
    jsonschema::meta::validate(&schema()).expect("schema passes its meta-schema");
    assert_eq!(schema()["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

#[test]
fn serialized_results_validate() {
    let v = validator();
    for r in [echo_result(), idle_aborted_result()] {
        let json = serde_json::to_value(&r).expect("serialize");
        let errors = errors_of(&v, &json);
        assert!(errors.is_empty(), "{}: {errors:#?}", r.scenario.name);
        // And it reads back as it was written.
        let back: BenchResult = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, r);
    }
}

/// Every property in the schema says what it is.
#[test]
fn every_schema_property_has_a_description() {
    fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
        let Some(map) = node.as_object() else { return };
        if let Some(props) = map.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                if prop.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                    missing.push(format!("{path}/{name}"));
                }
            }
        }
        for (key, child) in map {
            walk(&format!("{path}/{key}"), child, missing);
        }
    }
    let mut missing = Vec::new();
    walk("", &schema(), &mut missing);
    assert!(missing.is_empty(), "no description: {missing:#?}");
}

/// Applies `edit` to a valid result's JSON, and checks the schema rejects it (and accepted it
/// before the edit, so the rejection is the edit's doing).
fn assert_rejected(what: &str, edit: impl FnOnce(&mut Value)) {
    let v = validator();
    let mut json = serde_json::to_value(echo_result()).expect("serialize");
    assert!(v.is_valid(&json), "the unbroken result must be valid: {:#?}", errors_of(&v, &json));
    edit(&mut json);
    assert!(!v.is_valid(&json), "the schema accepted {what}");
}

fn remove(json: &mut Value, pointer: &str, field: &str) {
    json.pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .and_then(|o| o.remove(field))
        .unwrap_or_else(|| panic!("{pointer}/{field} not in the result"));
}

#[test]
fn broken_results_fail_validation() {
    assert_rejected("a missing top-level field", |j| remove(j, "", "hlog"));
    assert_rejected("a missing nested field", |j| remove(j, "/load/connections", "lost"));
    assert_rejected("a missing latency field", |j| remove(j, "/load/latency/login", "p9999"));
    assert_rejected("a capitalised status", |j| j["status"] = json!("Complete"));
    assert_rejected("an unknown load status", |j| j["load"]["status"] = json!("done"));
    assert_rejected("an unknown field", |j| j["machine"]["numa_nodes"] = json!(1));
    assert_rejected("another schema name", |j| j["schema"] = json!("c2m-load-report"));
    assert_rejected("a later schema version", |j| j["schema_version"] = json!(3));
    assert_rejected("a spectrum triple", |j| j["load"]["latency"]["connect"]["spectrum"][0] = json!([50.0, 10.0, 3.0]));
    assert_rejected("three source ports", |j| j["load"]["params"]["source_ports"] = json!([1024, 2048, 65535]));
    assert_rejected("a port above 65535", |j| j["load"]["params"]["source_ports"] = json!([1024, 70000]));
    assert_rejected("a negative count", |j| j["load"]["connections"]["requested"] = json!(-1));
    assert_rejected("a number as abort reason", |j| j["abort_reason"] = json!(3));
    assert_rejected("a count in errors as text", |j| j["load"]["errors"]["connect timeout"] = json!("17"));
    assert_rejected("a NaN written as null", |j| j["elapsed_seconds"] = Value::Null);
    assert_rejected("a local start time", |j| j["started_utc"] = json!("2026-11-27 22:30"));
    assert_rejected("settings that are not an object", |j| j["scenario"]["settings"] = json!("connections=1m"));
}

// ---------------------------------------------------------------------------------------------
// The report

fn write_result(dir: &Path, r: &BenchResult, file: &str) -> PathBuf {
    let scenario_dir = dir.join(&r.scenario.name);
    fs::create_dir_all(&scenario_dir).expect("mkdir");
    let path = scenario_dir.join(file);
    fs::write(&path, serde_json::to_string_pretty(r).expect("serialize")).expect("write");
    path
}

/// Two scenarios (one aborted, idle), an older run of one, and a JSON of another format.
fn results_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut older = echo_result();
    older.started_utc = "2026-11-20T08:00:00Z".into();
    older.load.latency.rtt_corrected = latency(5_000, 1000, 9);
    write_result(dir.path(), &older, "2026-11-20T080000Z-vm.json");
    write_result(dir.path(), &echo_result(), "2026-11-27T223000Z-vm.json");
    write_result(dir.path(), &idle_aborted_result(), "2026-11-28T010000Z-vm.json");
    let other = dir.path().join("idle-memory");
    fs::create_dir_all(&other).expect("mkdir");
    fs::write(other.join("1795815796-vm-200000.json"), r#"{"c2m_version": "0.1.0", "connections": 200000}"#)
        .expect("write");
    fs::write(other.join("README.md"), "not a result").expect("write");
    dir
}

fn assert_svg(path: &Path) {
    let svg = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{} is not SVG", path.display());
    assert!(svg.contains("<text"), "{} has no text", path.display());
    assert!(svg.trim_end().ends_with("</svg>"), "{} is cut short", path.display());
}

#[test]
fn report_shows_each_scenario_with_its_charts() {
    let dir = results_dir();
    let report_path = render_report(dir.path()).expect("report");
    assert_eq!(report_path, dir.path().join("REPORT.md"));
    let report = fs::read_to_string(&report_path).expect("read report");

    assert!(report.contains("c2m bench"), "header names its generator");
    assert!(report.contains("Do not edit by hand"));
    for name in ["echo-100k", "idle-1m"] {
        assert!(report.contains(&format!("## {name}")), "a section for {name}");
    }
    assert!(!report.contains("idle-memory/"), "the foreign JSON is not a result");

    // The latest echo run is shown, with its p99, not the older one's.
    let echo = echo_result();
    let p99 = format_micros(echo.load.latency.rtt_corrected.p99);
    assert!(report.contains(&p99), "rtt p99 {p99} in the report");
    assert!(report.contains("2026-11-27T22:30:00Z"));
    assert!(report.contains("echo-100k/2026-11-20T080000Z-vm.json"), "older run linked");
    assert!(report.contains("(echo-100k/2026-11-27T223000Z-vm.json)"), "JSON linked");
    assert!(report.contains(&format!("echo-100k/{}", echo.hlog)), "hlog linked");

    // Errors by kind, and the abort, loudly.
    assert!(report.contains("| connect ECONNREFUSED | 1,234 |"), "errors table");
    assert!(report.contains("ABORTED"));
    assert!(report.contains(ABORT_REASON));

    let charts = dir.path().join("charts");
    for chart in ["echo-100k-connections", "echo-100k-memory", "echo-100k-latency"] {
        assert_svg(&charts.join(format!("{chart}.svg")));
        assert!(report.contains(&format!("](charts/{chart}.svg)")), "{chart} embedded");
    }
    assert_svg(&charts.join("idle-1m-connections.svg"));
    assert_svg(&charts.join("idle-1m-memory.svg"));
    assert!(!charts.join("idle-1m-latency.svg").exists(), "no empty latency chart");
    assert!(!report.contains("charts/idle-1m-latency.svg"));
    assert!(report.contains("No latency chart: the workload is idle"), "says why");
}

#[test]
fn report_is_the_same_when_rendered_twice() {
    let dir = results_dir();
    let first = fs::read(render_report(dir.path()).expect("report")).expect("read");
    let chart = fs::read(dir.path().join("charts/echo-100k-latency.svg")).expect("read");
    let second = fs::read(render_report(dir.path()).expect("report")).expect("read");
    assert_eq!(first, second);
    assert_eq!(chart, fs::read(dir.path().join("charts/echo-100k-latency.svg")).expect("read"));
}

#[test]
fn a_broken_result_is_an_error_naming_its_file() {
    let dir = results_dir();
    let path = dir.path().join("echo-100k/2026-11-29T000000Z-vm.json");
    let mut json = serde_json::to_value(echo_result()).expect("serialize");
    remove(&mut json, "/load", "timeline");
    fs::write(&path, json.to_string()).expect("write");
    let err = render_report(dir.path()).expect_err("a broken result must fail the report");
    let message = err.to_string();
    assert!(message.contains("2026-11-29T000000Z-vm.json"), "{message}");
    assert!(message.contains("timeline"), "{message}");

    // Cut short (as by a kill while writing): still a result, still an error.
    let text = serde_json::to_string(&echo_result()).expect("serialize");
    fs::write(&path, &text[..text.len() / 2]).expect("write");
    assert!(render_report(dir.path()).is_err());
}

#[test]
fn an_empty_results_directory_gives_a_report_that_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = fs::read_to_string(render_report(dir.path()).expect("report")).expect("read");
    assert!(report.contains("No results yet."));
}

/// Every result committed under results/ is valid against the schema it claims.
#[test]
fn committed_results_validate() {
    let v = validator();
    let mut checked = 0;
    for scenario in std::fs::read_dir("results").unwrap() {
        let dir = scenario.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let instance: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            if instance.get("schema").and_then(Value::as_str) != Some("c2m-bench-result") {
                continue;
            }
            let errors = errors_of(&v, &instance);
            assert!(errors.is_empty(), "{} breaks the schema: {errors:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "the c100k and c1m results are committed");
}
