//! `c2m bench --ab` end to end, tiny: two rounds of a small scenario over loopback, A = the box
//! as it is, B = a profile applied to a temporary sysctl tree (so the real /proc/sys is never
//! written). Checked for shape only (two rounds decide nothing): the result against its schema,
//! the ABBA order, B's change applied in its round and restored after it, no state file left,
//! the real sysctls untouched, the report's section and charts.

use std::path::Path;
use std::process::Command;

use c2m::schema::ab::{AbResult, ArmName};
use c2m::schema::bench::BenchResult;
use c2m::tune::sysctl::ProcSys;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_c2m");
const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results/schema/ab-result.schema.json");

const SCENARIO: &str = r#"
name = "ab-tiny"
description = "2,000 connections pinging every second for 2 s"
[load]
connections = 2000
ping_interval = "1s"
duration = "2s"
"#;

/// The real sysctls a profile could touch, to see that none moved.
const WATCHED: [&str; 4] =
    ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_rmem", "net.ipv4.ip_local_port_range"];

fn validate(value: &Value) {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(SCHEMA).unwrap()).unwrap();
    jsonschema::meta::validate(&schema).expect("the schema passes its meta-schema");
    let validator = jsonschema::draft202012::new(&schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(value).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "the result breaks the schema: {errors:#?}");
}

fn json_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

#[test]
fn two_rounds_apply_and_restore_and_write_the_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("ab-tiny.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let tree = dir.path().join("sys");
    std::fs::create_dir_all(tree.join("net/core")).unwrap();
    std::fs::write(tree.join("net/core/somaxconn"), "4096\n").unwrap();
    let profile = dir.path().join("small-backlog.conf");
    std::fs::write(&profile, "net.core.somaxconn = 128\n").unwrap();
    let state = dir.path().join("state/tune-state.json");
    let results = dir.path().join("results");
    let real = ProcSys::default();
    let before: Vec<Option<String>> = WATCHED.iter().map(|k| real.read(k).unwrap()).collect();

    let out = Command::new(BIN)
        .arg("bench")
        .arg("--ab")
        .arg(format!("current,{}", profile.display()))
        .args(["--rounds", "2", "--no-progress", "--scenario"])
        .arg(&scenario)
        .arg("--results-dir")
        .arg(&results)
        .arg("--tune-state")
        .arg(&state)
        .arg("--proc-sys")
        .arg(&tree)
        .output()
        .expect("run c2m bench --ab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "c2m bench --ab failed\nstdout:\n{stdout}\nstderr:\n{stderr}");

    // Nothing is left changed: B's key is back, no state file, the real keys as they were.
    assert_eq!(std::fs::read_to_string(tree.join("net/core/somaxconn")).unwrap(), "4096\n");
    assert!(!state.exists());
    let after: Vec<Option<String>> = WATCHED.iter().map(|k| real.read(k).unwrap()).collect();
    assert_eq!(before, after);

    let files = json_files(&results.join("ab"));
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    validate(&serde_json::from_str(&text).unwrap());
    let r: AbResult = serde_json::from_str(&text).unwrap();
    assert_eq!(r.status, c2m::schema::load::RunStatus::Complete, "{:?}", r.abort_reason);
    assert_eq!((r.a.given.as_str(), r.b.origin.as_str()), ("current", profile.to_str().unwrap()));
    assert_eq!(r.sysctl_diff.len(), 1);
    assert_eq!((r.sysctl_diff[0].a.as_deref(), r.sysctl_diff[0].b.as_deref()), (Some("4096"), Some("128")));

    // ABBA: A first; only B's round changed anything, and restored all of it.
    let arms: Vec<ArmName> = r.rounds.iter().map(|x| x.arm).collect();
    assert_eq!(arms, [ArmName::A, ArmName::B]);
    assert!(r.rounds[0].applied.is_empty() && r.rounds[0].restored == 0);
    let applied = &r.rounds[1].applied;
    assert_eq!(applied.len(), 1);
    assert_eq!((applied[0].before.as_str(), applied[0].during.as_str()), ("4096", "128"));
    assert_eq!(r.rounds[1].restored, 1);
    for round in &r.rounds {
        let path = results.join(&round.result);
        let bench: BenchResult = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(bench.load.connections.requested, 2000);
        assert!(round.metrics.contains_key("connect_rate"), "{:?}", round.metrics);
    }

    // One comparison per metric measured, the family the correction covers; one round an arm.
    assert_eq!(r.statistics.family_size as usize, r.metrics.len());
    assert!(r.metrics.len() >= 10, "{:?}", r.not_compared);
    for m in &r.metrics {
        assert_eq!((m.a.n, m.b.n), (1, 1), "{}", m.key);
        assert!(m.p_adjusted >= m.p_value);
    }
    assert!(stdout.contains("verdicts at 0.05 family-wise, holm-bonferroni"), "{stdout}");

    // The report's section, its sysctl diff and a chart per metric.
    let report = std::fs::read_to_string(results.join("REPORT.md")).unwrap();
    assert!(report.contains("## A/B: current against"), "{report}");
    assert!(report.contains("| `net.core.somaxconn` | `4096` | `128` |"), "{report}");
    for m in &r.metrics {
        let stem = files[0].file_stem().unwrap().to_string_lossy();
        assert!(results.join(format!("charts/ab-{stem}-{}.svg", m.key)).is_file(), "{}", m.key);
    }
    // The rounds are not taken for results of their own scenario.
    assert!(!results.join("ab-tiny").exists());
}

#[test]
fn an_odd_round_count_and_a_single_profile_are_usage_errors() {
    let run = |args: &[&str]| Command::new(BIN).arg("bench").args(args).output().unwrap().status.code();
    assert_eq!(run(&["--ab", "current,current", "--rounds", "3"]), Some(2));
    assert_eq!(run(&["--ab", "current"]), Some(2));
}
