//! One run over several load hosts: three network namespaces stand for three load hosts and a
//! fourth for the server's, joined by a bridge in the server's (addresses from 198.18.0.0/15,
//! only inside namespaces this test makes and removes, even when it fails). `c2m load --shard
//! i/3` runs in each against one `c2m serve`; `c2m results merge` makes their reports into the
//! run's, which must match one unsharded run of the same size: every connection, and a chat
//! ledger with every delivery made once and receipted. Needs root (it skips, loudly, without).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use c2m::schema::load::{LoadReport, RunStatus};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_c2m");
const SHARDS: u32 = 3;
const CONNECTIONS: u64 = 3000;
const SERVER_IP: &str = "198.18.0.1";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The server's namespace and the load hosts' ones, removed when dropped (removing a namespace
/// removes its veth ends and its bridge).
struct Hosts {
    server: String,
    loads: Vec<String>,
}

impl Hosts {
    fn up() -> Hosts {
        remove_stale();
        let pid = std::process::id();
        let hosts = Hosts {
            server: format!("c2mt-{pid}-sh-srv"),
            loads: (0..SHARDS).map(|i| format!("c2mt-{pid}-sh-l{i}")).collect(),
        };
        for ns in std::iter::once(&hosts.server).chain(&hosts.loads) {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let srv = hosts.server.as_str();
        ip(&["-n", srv, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", srv, "addr", "add", &format!("{SERVER_IP}/15"), "dev", "br0"]);
        ip(&["-n", srv, "link", "set", "br0", "up"]);
        for (i, ns) in hosts.loads.iter().enumerate() {
            let port = format!("v{i}");
            // Both ends are made inside the namespaces: nothing appears in the root namespace.
            ip(&["-n", srv, "link", "add", &port, "type", "veth", "peer", "name", "e0", "netns", ns]);
            ip(&["-n", srv, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("198.18.0.{}/15", 10 + i), "dev", "e0"]);
            ip(&["-n", ns, "link", "set", "e0", "up"]);
        }
        hosts
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in std::iter::once(&self.server).chain(&self.loads) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Namespaces of earlier runs of this test whose process is gone (killed before its guard ran).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else { return };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("c2mt-").and_then(|r| r.split('-').next()) else { continue };
        if name.contains("-sh-") && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A child process stopped by its PID when dropped (a test that fails leaves none behind).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start_server(ns: &str) -> Killed {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, BIN, "serve", "--listen", &format!("{SERVER_IP}:7700"), "--workers", "1"])
        .args(["--users", &CONNECTIONS.to_string(), "--groups", "20", "--group-size", "8", "--max-sessions", "10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn c2m serve");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).expect("read the banner");
    assert!(line.contains("listening"), "banner: {line:?}");
    Killed(child)
}

/// `c2m load` in namespace `ns`: a chat run of the test's size, `extra` added; bounded in time.
fn load(ns: &str, json: &Path, extra: &[String]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, BIN, "load", "--server", &format!("{SERVER_IP}:7700")])
        .args(["-c", &CONNECTIONS.to_string(), "--workers", "1", "--workload", "chat", "--msg-rate", "2"])
        .args(["--group-fraction", "0.2", "--groups", "20", "--group-size", "8"])
        .args(["-d", "3s", "--hold", "2s", "--connect-timeout", "5s", "--no-progress"])
        .arg("--json")
        .arg(json)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn c2m load")
}

/// Waits for a child at most `limit`, then kills it and fails.
fn finish(child: Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let mut child = Killed(child);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} still runs after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> LoadReport {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn merge(files: &[PathBuf], out: &Path) -> Output {
    Command::new(BIN).args(["results", "merge", "-o"]).arg(out).args(files).output().expect("run c2m results merge")
}

/// The merged report validates against the results schema's LoadReport.
fn assert_valid(path: &Path) {
    let schema_path = concat!(env!("CARGO_MANIFEST_DIR"), "/results/schema/bench-result.schema.json");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let defs = schema["$defs"].take();
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": "#/$defs/LoadReport", "$defs": defs
    });
    let validator = jsonschema::draft202012::new(&schema).expect("schema compiles");
    let value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
}

/// Every connection logged in, none failed or lost; every delivery the SENDs called for made
/// once and receipted; the latencies counted every login.
fn assert_clean(what: &str, r: &LoadReport) {
    assert_eq!(r.status, RunStatus::Complete, "{what}: {:?} {:?}", r.abort_reason, r.errors);
    let c = &r.connections;
    assert_eq!((c.requested, c.established, c.failed, c.lost), (CONNECTIONS, CONNECTIONS, 0, 0), "{what}: {c:?}");
    assert_eq!(r.latency.login.count, CONNECTIONS, "{what}: logins measured");
    let chat = r.chat.as_ref().unwrap_or_else(|| panic!("{what}: no chat ledger"));
    assert!(chat.sent > 0 && chat.expected > 0, "{what}: {chat:?}");
    assert_eq!(chat.acked, chat.sent, "{what}: {chat:?}");
    assert_eq!((chat.delivered, chat.receipted), (chat.expected, chat.expected), "{what}: {chat:?}");
    assert_eq!((chat.lost, chat.unreceipted, chat.duplicates, chat.unknown), (0, 0, 0, 0), "{what}: {chat:?}");
    assert!(r.shortfall().is_none(), "{what}: {:?}", r.shortfall());
}

#[test]
fn shards_in_three_namespaces_merge_to_one_run() {
    if !is_root() {
        eprintln!(
            "\n*** SKIPPED shards_in_three_namespaces_merge_to_one_run: it needs root (network namespaces) ***\n"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::up();
    let _server = start_server(&hosts.server);

    // The shards start together, as an orchestrator starts them: one --start-at for all.
    let start_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 2;
    let shard_files: Vec<PathBuf> = (0..SHARDS).map(|i| dir.path().join(format!("shard-{i}.json"))).collect();
    let children: Vec<Child> = (0..SHARDS)
        .map(|i| {
            let extra = [format!("--shard={i}/{SHARDS}"), format!("--start-at={start_at}"), "--run-id=t".into()];
            load(&hosts.loads[i as usize], &shard_files[i as usize], &extra)
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let status = finish(child, Duration::from_secs(90), &format!("shard {i}"));
        assert!(status.success(), "shard {i}: {status}");
    }
    let shards: Vec<LoadReport> = shard_files.iter().map(|p| read(p)).collect();
    for (i, s) in shards.iter().enumerate() {
        let info = s.shard.as_ref().expect("a shard's report says so");
        assert_eq!((info.index, info.count, info.run_connections), (i as u32, SHARDS, CONNECTIONS));
        assert_eq!(s.connections.established, CONNECTIONS / SHARDS as u64);
    }

    let merged_path = dir.path().join("merged.json");
    let out = merge(&shard_files, &merged_path);
    assert!(out.status.success(), "merge: {}", String::from_utf8_lossy(&out.stderr));
    assert_valid(&merged_path);
    let merged = read(&merged_path);
    assert_clean("merged", &merged);
    let sum = |f: fn(&LoadReport) -> u64| shards.iter().map(f).sum::<u64>();
    assert_eq!(merged.messages.sent, sum(|r| r.messages.sent));
    assert_eq!(merged.latency.rtt_corrected.count, sum(|r| r.latency.rtt_corrected.count));
    assert_eq!(merged.latency.chat_deliver.count, sum(|r| r.latency.chat_deliver.count));
    // Messages crossed shards: each shard got deliveries its own senders did not expect.
    assert!(shards.iter().any(|s| s.chat.as_ref().unwrap().delivered != s.chat.as_ref().unwrap().expected));

    // Reports that are not each shard of the run once are refused, naming why.
    let refused = merge(&shard_files[..2], &dir.path().join("no.json"));
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("shard 2 of 3 missing"));
    let twice = [shard_files.clone(), vec![shard_files[0].clone()]].concat();
    let refused = merge(&twice, &dir.path().join("no.json"));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("given twice"), "{refused:?}");

    // The same run in one process, from one of the hosts.
    let whole_path = dir.path().join("whole.json");
    let status = finish(load(&hosts.loads[0], &whole_path, &[]), Duration::from_secs(90), "the unsharded run");
    assert!(status.success(), "unsharded: {status}");
    let whole = read(&whole_path);
    assert_clean("unsharded", &whole);
    // Same connections and the same kind of ledger; the message counts follow the clock, so
    // they agree within a margin (each connection sends every 500 ms for about 3 s).
    let (a, b) = (merged.chat.as_ref().unwrap(), whole.chat.as_ref().unwrap());
    let near = |x: u64, y: u64| (x as f64 - y as f64).abs() <= 0.25 * y as f64;
    assert!(near(a.sent, b.sent) && near(a.expected, b.expected), "merged {a:?}\nunsharded {b:?}");
    assert_eq!(merged.params.connections, whole.params.connections);
    assert_eq!(merged.params.workload, whole.params.workload);
    drop(hosts);
}
