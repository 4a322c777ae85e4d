//! `c2m bench --peers` end to end over loopback, tiny: c2m alone (every measurement, the JSON
//! against its schema, the report's section), and c2m beside a stand-in peer run sharded (a
//! script that execs `c2m serve`, declared `fd_per_connection`) with an unbuilt peer that must
//! be reported as skipped, not dropped.

use std::path::Path;
use std::process::{Command, Output};

use c2m::schema::load::RunStatus;
use c2m::schema::peers::PeersResult;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_c2m");
const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results/schema/peers-result.schema.json");

/// Runs `c2m bench --peers ...` in `cwd` with tiny sizes, results in `cwd/results`.
fn bench_peers(cwd: &Path, connections: &str, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("bench")
        .args(["--peer-connections", connections, "--peer-window", "1s", "--rounds", "1", "--peer-budget", "64MiB"])
        // The tests run side by side, so memory never holds still: measure its drift, don't
        // wait for it.
        .args(["--peer-rate", "1000", "--peer-settle", "0s", "--peer-warmup", "500ms", "--results-dir"])
        .arg(cwd.join("results"))
        .args(extra)
        .current_dir(cwd)
        .output()
        .expect("run c2m bench --peers")
}

/// The one result written, as JSON and as the type, checked against the schema.
fn read_result(results: &Path) -> (Value, PeersResult) {
    let files: Vec<_> = std::fs::read_dir(results.join("peers"))
        .expect("results/peers/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(SCHEMA).unwrap()).unwrap();
    jsonschema::meta::validate(&schema).expect("the schema passes its meta-schema");
    let validator = jsonschema::draft202012::new(&schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "the result breaks the schema: {errors:#?}");
    let result: PeersResult = serde_json::from_str(&text).expect("a PeersResult");
    (value, result)
}

fn assert_ran(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "c2m bench --peers failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

#[test]
fn c2m_alone_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench_peers(dir.path(), "200", &["--peers", "c2m"]);
    assert_ran(&out);
    let (_, r) = read_result(&dir.path().join("results"));
    assert_eq!(r.status, RunStatus::Complete, "{:?}", r.abort_reason);
    assert_eq!(r.settings.rounds, 1);
    assert_eq!(r.servers.len(), 1);
    assert!(r.servers[0].available);
    assert_eq!(r.rounds.len(), 1);
    let turn = &r.rounds[0].turns[0];
    assert_eq!(turn.server, "c2m");
    assert!(turn.errors.is_empty(), "{:?}", turn.errors);

    let echo = turn.echo.as_ref().expect("echo measured");
    assert_eq!(echo.load.status, "complete");
    assert_eq!(echo.load.established, 200);
    assert!(echo.messages_per_second > 0.0 && echo.server_cpu_seconds > 0.0);
    assert_eq!(echo.server.shards, 1);

    let latency = turn.latency.as_ref().expect("latency measured");
    assert_eq!(latency.load.status, "complete");
    assert!(
        latency.count > 0
            && latency.p50_us > 0.0
            && latency.p50_us <= latency.p99_us
            && latency.p99_us <= latency.p999_us
    );
    assert_eq!(latency.server.shutdown_connections, 200, "stopped with the connections held");
    assert!(latency.server.clean_exit, "{:?}", latency.server.exits);
    assert!(latency.server.startup_seconds > 0.0);

    let capacity = turn.capacity.as_ref().expect("capacity measured");
    assert!(capacity.budget_reached, "64 MiB is spent long before budget / 2 KiB connections");
    assert!(capacity.connections_in_budget > 0.0);
    assert!(capacity.connections_in_budget <= capacity.established_peak as f64);
    assert!(capacity.connect_rate > 0.0);
    assert!(!capacity.samples.is_empty());
    assert!(capacity.settle_seconds >= 3.0, "the drift is read over three seconds");
    assert_eq!(r.settings.warmup_seconds, 0.5);
    assert!(r.servers[0].build.contains("rustc") && r.servers[0].build.contains("opt-level"), "{:?}", r.servers[0]);
    assert!(!r.servers[0].version.contains("unknown"), "{}", r.servers[0].version);

    let report = std::fs::read_to_string(dir.path().join("results/REPORT.md")).expect("REPORT.md written");
    assert!(report.contains("## Side by side: c2m and its peers"), "{report}");
    assert!(report.contains("| echo throughput (64 B, closed loop) |"), "{report}");
}

#[test]
fn sharded_stand_in_peer_and_a_skipped_one() {
    let dir = tempfile::tempdir().unwrap();
    let peers = dir.path().join("bench/peers");
    std::fs::create_dir_all(peers.join("bin")).unwrap();
    let script = peers.join("bin/stand-in");
    std::fs::write(&script, format!("#!/bin/sh\nexec {BIN} serve --share-port --max-sessions 6000 \"$@\"\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(peers.join("bin/stand-in.version"), "stand-in 1\n").unwrap();
    std::fs::write(
        peers.join("peers.toml"),
        "[[peer]]\nname = \"stand-in\"\nbin = \"bench/peers/bin/stand-in\"\ndescription = \"c2m serve, sharded\"\n\
         fd_per_connection = true\nversion_file = \"bench/peers/bin/stand-in.version\"\n\n\
         [[peer]]\nname = \"unbuilt\"\nbin = \"bench/peers/bin/unbuilt\"\n",
    )
    .unwrap();
    // 4,096 connections a process: 5,000 echo connections take 2 processes, the capacity run
    // (64 MiB / 2 KiB = 32,768 connections asked) 8.
    let out = bench_peers(dir.path(), "5000", &["--peers", "c2m,stand-in,unbuilt", "--peer-shard-connections", "4096"]);
    let stdout = assert_ran(&out);
    assert!(stdout.contains("SKIPPING unbuilt"), "{stdout}");
    let (_, r) = read_result(&dir.path().join("results"));
    let unbuilt = r.servers.iter().find(|s| s.name == "unbuilt").expect("the skipped peer is in the result");
    assert!(!unbuilt.available && unbuilt.skipped_reason.as_deref().is_some_and(|w| w.contains("not built")));
    let stand_in = r.servers.iter().find(|s| s.name == "stand-in").unwrap();
    assert_eq!(stand_in.version, "stand-in 1");
    assert_eq!(r.rounds[0].order, ["c2m", "stand-in"]);
    let turn = r.rounds[0].turns.iter().find(|t| t.server == "stand-in").unwrap();
    assert!(turn.errors.is_empty(), "{:?}", turn.errors);
    let echo = turn.echo.as_ref().unwrap();
    assert_eq!((echo.server.shards, echo.server.workers_per_shard), (2, 1));
    assert_eq!(echo.load.established, 5000);
    assert!(echo.server.exits.len() == 2 && echo.server.clean_exit, "{:?}", echo.server.exits);
    let capacity = turn.capacity.as_ref().unwrap();
    assert_eq!(capacity.server.shards, 8);
    // Both servers ran in the round: the ratio table has the peer's column.
    let report = std::fs::read_to_string(dir.path().join("results/REPORT.md")).unwrap();
    assert!(report.contains("c2m / stand-in"), "{report}");
    assert!(report.contains("unbuilt (") && report.contains("not built"), "the report names the skipped peer");
}
