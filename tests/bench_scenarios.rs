//! `c2m bench`: the scenario files, the memory-fit refusal through the CLI, and the smoke
//! scenario end to end (a real `c2m serve` and `c2m load` over loopback).

use std::path::Path;
use std::process::{Command, Output};

use c2m::bench::scenario::{self, AutoOr};
use c2m::schema::bench::BenchResult;
use c2m::schema::load::RunStatus;

const BIN: &str = env!("CARGO_BIN_EXE_c2m");
const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/scenarios");

fn bench(args: &[&str]) -> Output {
    Command::new(BIN).arg("bench").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run c2m bench")
}

/// The one smoke result written under `dir`: its path and what it says.
fn smoke_result(dir: &Path) -> (std::path::PathBuf, BenchResult) {
    let json = std::fs::read_dir(dir.join("smoke"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("the result is written");
    let result = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("a BenchResult");
    (json, result)
}

/// The file as written (not only as serde reads it back) is valid against the JSON Schema.
fn assert_matches_schema(json: &Path) {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("results/schema/bench-result.schema.json").unwrap()).unwrap();
    let instance: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let validator = jsonschema::draft202012::new(&schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(&instance).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{} breaks the schema: {errors:?}", json.display());
}

#[test]
fn every_scenario_parses_and_the_four_exist() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(SCENARIOS).expect("bench/scenarios") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(Some(s.name.as_str()), path.file_stem().and_then(|n| n.to_str()), "name matches the file");
            assert!(!s.description.is_empty(), "{}: no description", path.display());
            names.push(s.name);
        }
    }
    for required in ["smoke", "default", "c100k", "c1m"] {
        assert!(names.iter().any(|n| n == required), "bench/scenarios/{required}.toml missing (found {names:?})");
    }
    let smoke = scenario::load(&Path::new(SCENARIOS).join("smoke.toml")).unwrap();
    assert_eq!(smoke.load.connections, AutoOr::Fixed(10_000));
    let default = scenario::load(&Path::new(SCENARIOS).join("default.toml")).unwrap();
    assert_eq!(default.load.connections, AutoOr::Auto);
    assert_eq!(default.load.max_connections.map(|c| c.0), Some(200_000));
}

#[test]
fn refuses_what_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&["-c", "100000000", "--results-dir", dir.path().to_str().unwrap(), "--no-progress"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "100,000,000 connections were not refused:\n{stderr}");
    assert!(stderr.contains("at most"), "no 'at most' in:\n{stderr}");
    assert!(stderr.contains("100,000,000 connections"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a refused run wrote files");
}

#[test]
fn lists_scenarios() {
    let out = bench(&["--list"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["smoke", "default", "c100k", "c1m"] {
        assert!(stdout.contains(name), "{stdout}");
    }
}

#[test]
fn smoke_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&["--scenario", "smoke", "--results-dir", dir.path().to_str().unwrap(), "--no-progress"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "c2m bench --scenario smoke failed\nstdout:\n{stdout}\nstderr:\n{stderr}");

    let results: Vec<_> = std::fs::read_dir(dir.path().join("smoke"))
        .expect("results/smoke/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(results.len(), 1, "{results:?}");
    let json = &results[0];
    let result: BenchResult = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).expect("a BenchResult");
    assert_eq!(result.status, RunStatus::Complete, "{:?}", result.abort_reason);
    assert_eq!(result.scenario.name, "smoke");
    assert_eq!(result.load.connections.requested, 10_000);
    assert_eq!(result.load.connections.established, 10_000);
    assert_eq!(result.memory.connections, 10_000);
    // MemFree moves with everything else on a shared box; the slab the 20,000 sockets take
    // (about 140 MB) does not go unseen.
    assert!(result.memory.per_connection.kernel_slab > 0.0, "{:?}", result.memory);
    assert!(result.server.rss_bytes > 0 && result.load_process.rss_bytes > 0);
    assert!(!result.memory_timeline.is_empty());
    assert!(
        result.server_metrics.get("c2m_sessions_accepted_total").copied().unwrap_or(0.0) >= 10_000.0,
        "{:?}",
        result.server_metrics
    );

    assert_matches_schema(json);
    assert!(result.load.latency.rtt_corrected.count > 0, "round trips were measured");

    // The run checks its own figures: every cross-check is there and agrees, memory has its
    // floor, and the result says what made it.
    let names: Vec<&str> = result.checks.iter().map(|c| c.name.split(':').next().unwrap()).collect();
    assert_eq!(
        names,
        ["accepted", "frames in", "frames out", "bytes in", "bytes out", "sessions at the hold", "sockets at the hold"]
    );
    assert!(result.checks.iter().all(|c| c.passed), "{:?}", result.checks);
    assert!(result.shortfalls.is_empty(), "{:?}", result.shortfalls);
    let p = &result.memory.per_connection;
    assert!(p.total_floor >= p.kernel_slab && p.total_floor > 0.0, "{p:?}");
    assert_eq!(p.below_floor, p.total < p.total_floor);
    assert!(result.memory.settle.is_some() && result.memory.server_up.is_some());
    assert_eq!(result.c2m.git_commit.len(), 40, "{:?}", result.c2m);
    assert!(result.server.argv.iter().any(|a| a == "--max-sessions"), "{:?}", result.server.argv);
    assert!(result.server.effective.contains("listening on"), "{}", result.server.effective);
    assert!(result.load_process.argv.iter().any(|a| a == "--hlog"), "{:?}", result.load_process.argv);
    assert!(!result.machine.virtualization.is_empty() && result.load_average.is_some());
    // The whole histograms travel in the result and read back as what the summary says.
    let rtt = c2m::schema::histogram::decode(&result.load.histograms["rtt_corrected"]).unwrap();
    assert_eq!(rtt.len(), result.load.latency.rtt_corrected.count);

    let hlog = json.with_extension("hlog");
    assert!(hlog.is_file(), "no {}", hlog.display());
    // Every reply is in the interval log, under both round trips, the last partial second too.
    let text = std::fs::read(&hlog).unwrap();
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    let mut deserializer = hdrhistogram::serialization::Deserializer::new();
    for entry in hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&text) {
        if let Ok(hdrhistogram::serialization::interval_log::LogEntry::Interval(i)) = entry {
            let bytes =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, i.encoded_histogram()).unwrap();
            let h: hdrhistogram::Histogram<u64> = deserializer.deserialize(&mut bytes.as_slice()).unwrap();
            *counts.entry(i.tag().map(|t| t.as_str().to_string()).unwrap_or_default()).or_default() += h.len();
        }
    }
    let received = result.load.messages.received;
    assert_eq!(counts.get("rtt"), Some(&received), "{counts:?}");
    assert_eq!(counts.get("rtt_uncorrected"), Some(&received), "{counts:?}");
    assert_eq!(counts.get("connect"), Some(&10_000), "{counts:?}");
    assert_eq!(result.hlog, hlog.file_name().unwrap().to_str().unwrap());
    let report = std::fs::read_to_string(dir.path().join("REPORT.md")).expect("REPORT.md written");
    assert!(report.contains("## smoke"), "the report has the scenario's section");
    for chart in ["connections", "memory", "latency"] {
        assert!(dir.path().join(format!("charts/smoke-{chart}.svg")).is_file(), "no {chart} chart");
    }
}

/// A run made to fall short (the server takes fewer sessions than the load opens) says so in
/// its result and its exit status, with the reasons and by how much.
#[test]
fn a_short_run_says_so_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&[
        "--scenario",
        "smoke",
        "-c",
        "2000",
        "--max-sessions",
        "1500",
        "--duration",
        "2s",
        "--results-dir",
        dir.path().to_str().unwrap(),
        "--no-progress",
        "--no-report",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr:\n{stderr}");
    assert!(stderr.contains("fell short") && stderr.contains("500 short"), "{stderr}");
    let (_, result) = smoke_result(dir.path());
    assert_eq!(result.status, RunStatus::FellShort, "{:?}", result.shortfalls);
    assert_eq!(result.shortfalls[0], "1,500 of 2,000 connections logged in (500 short)");
    // The HELLOs of the 500 refused never reached a session: the server read 500 x 20 B fewer.
    let bytes_in = result.checks.iter().find(|c| c.name.starts_with("bytes in")).unwrap();
    assert!(!bytes_in.passed && bytes_in.difference == -10_000.0, "{bytes_in:?}");
}

/// `--dataplane xdp`: both ends on AF_XDP and c2m's TCP between two network namespaces the bench
/// makes and removes; the sockets check becomes a count of c2m's TCP connections. Needs root.
#[test]
fn an_xdp_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let refused = bench(&["--dataplane", "xdp", "-c", "100000000", "--results-dir", d, "--no-progress"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("built-in xdp"), "{stderr}");

    let child = Command::new(BIN)
        .args(["bench", "--scenario", "smoke", "--dataplane", "xdp", "-c", "5000", "--duration", "2s"])
        .args(["--results-dir", d, "--no-progress", "--no-report"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run c2m bench");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "c2m bench --dataplane xdp failed:\n{text}");
    let left: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!left.iter().any(|n| n.starts_with(&format!("c2mb-{pid}-"))), "namespaces left: {left:?}");

    let (json, result) = smoke_result(dir.path());
    assert_eq!(result.status, RunStatus::Complete, "{:?}\n{text}", result.abort_reason);
    assert_eq!(result.dataplane, c2m::transport::DataPlaneName::Xdp);
    assert!(result.server.effective.contains("c2m's TCP"), "{}", result.server.effective);
    assert!(result.load_process.argv.iter().any(|a| a == "xdp"), "{:?}", result.load_process.argv);
    assert_eq!(result.load.connections.established, 5_000);
    assert_eq!(result.load.connections.answered_in_messages, 5_000);
    let names: Vec<&str> = result.checks.iter().map(|c| c.name.split(':').next().unwrap()).collect();
    assert_eq!(names.last(), Some(&"connections at the hold"), "{names:?}");
    assert!(result.checks.iter().all(|c| c.passed), "{:?}", result.checks);
    assert_matches_schema(&json);
}
