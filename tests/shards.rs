//! One run over several load hosts: three network namespaces stand for three load hosts and a
//! fourth for the server's, joined by a bridge in the server's (addresses from 198.18.0.0/15,
//! only inside namespaces this test makes and removes, even when it fails). `c2m load --shard
//! i/3` runs in each against one `c2m serve`; `c2m results merge` makes their reports into the
//! run's, which must match one unsharded run of the same size: every connection, and a chat
//! ledger with every delivery made once and receipted. The Ansible playbook of deploy/ runs the
//! same way, the namespaces as its hosts, when `ansible-playbook` is installed; the deploy files
//! are checked with `ansible-playbook --syntax-check` and a YAML parse. Needs root (the namespace
//! tests skip, loudly, without).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use c2m::schema::load::{LoadReport, RunStatus};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_c2m");
const SHARDS: u32 = 3;
const CONNECTIONS: u64 = 3000;
const SERVER_IP: &str = "198.18.0.1";

/// The namespace tests run one after the other: the machine is small and shared.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    /// The hosts of one test (`tag` tells the tests of this process apart).
    fn up(tag: &str) -> Hosts {
        remove_stale();
        let pid = std::process::id();
        let hosts = Hosts {
            server: format!("c2mt-{pid}-sh{tag}-srv"),
            loads: (0..SHARDS).map(|i| format!("c2mt-{pid}-sh{tag}-l{i}")).collect(),
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
        if name.contains("-sh") && !Path::new(&format!("/proc/{pid}")).exists() {
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
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::up("c");
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

/// `ansible-playbook` if it is installed (on PATH, or named by C2M_ANSIBLE_PLAYBOOK).
fn ansible_playbook() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("C2M_ANSIBLE_PLAYBOOK") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("ansible-playbook")).find(|p| p.is_file())
}

const PLAYBOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/ansible/load-shards.yml");

/// The deploy files parse: the playbook passes `ansible-playbook --syntax-check` (when Ansible
/// is installed), and every YAML file parses (with Python's yaml module, when it is there), the
/// Indexed Job giving each pod its completion index as the shard.
#[test]
fn the_deploy_files_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    match ansible_playbook() {
        Some(bin) => {
            let out = Command::new(bin)
                .args(["--syntax-check", "-i"])
                .arg(root.join("ansible/inventory.example.ini"))
                .arg(PLAYBOOK)
                .output()
                .expect("run ansible-playbook");
            assert!(out.status.success(), "--syntax-check: {}", String::from_utf8_lossy(&out.stderr));
        }
        None => eprintln!("\n*** ansible-playbook is not installed: the playbook gets a YAML parse only ***\n"),
    }
    let check = r#"
import sys, yaml
for path in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    assert docs, path
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "Job" and d["spec"].get("completionMode") == "Indexed":
            spec = d["spec"]
            assert spec["completions"] == spec["parallelism"], path
            env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
            assert env["SHARDS"] == str(spec["completions"]), path
            assert "--shard \"$JOB_COMPLETION_INDEX/$SHARDS\"" in spec["template"]["spec"]["containers"][0]["args"][0], path
    if path.endswith(".yml"):
        assert all("hosts" in play and "tasks" in play for play in docs[0]), path
"#;
    let files = ["ansible/load-shards.yml", "k8s/load-indexed-job.yaml", "k8s/merge-job.yaml"].map(|f| root.join(f));
    match Command::new("python3").arg("-c").arg(check).args(&files).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named 'yaml'") => {
            eprintln!("\n*** python3 has no yaml module: the deploy files were not parsed ***\n")
        }
        Ok(out) => panic!("deploy files: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => eprintln!("\n*** no python3 ({e}): the deploy files were not parsed ***\n"),
    }
}

/// The playbook itself starts the shards and merges their reports: its hosts are the load
/// namespaces (a local connection whose `c2m_bin` runs c2m inside the host's namespace).
#[test]
fn the_ansible_playbook_runs_the_shards_and_merges_them() {
    if !is_root() {
        eprintln!("\n*** SKIPPED the_ansible_playbook_runs_the_shards_and_merges_them: it needs root ***\n");
        return;
    }
    let Some(playbook_bin) = ansible_playbook() else {
        eprintln!(
            "\n*** SKIPPED the_ansible_playbook_runs_the_shards_and_merges_them: ansible-playbook is not installed ***\n"
        );
        return;
    };
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::up("a");
    let _server = start_server(&hosts.server);
    let mut inventory = String::from("[c2m_load]\n");
    for (i, ns) in hosts.loads.iter().enumerate() {
        let wrapper = dir.path().join(format!("c2m-{i}"));
        std::fs::write(&wrapper, format!("#!/bin/sh\nexec ip netns exec {ns} {BIN} \"$@\"\n")).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&wrapper, mode).unwrap();
        inventory += &format!("host{i} c2m_bin={}\n", wrapper.display());
    }
    // The Python that runs Ansible runs its modules too (discovery may pick a broken shim).
    let python = [playbook_bin.with_file_name("python3"), PathBuf::from("/usr/bin/python3")]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"));
    inventory += &format!(
        "[c2m_load:vars]\nansible_connection=local\nansible_python_interpreter={}\nc2m_remote_dir={}\n",
        python.display(),
        dir.path().display()
    );
    std::fs::write(dir.path().join("inventory.ini"), inventory).unwrap();
    let results = dir.path().join("results");
    let child = Command::new(&playbook_bin)
        .arg("-i")
        .arg(dir.path().join("inventory.ini"))
        .arg(PLAYBOOK)
        .args(["-e", &format!("c2m_server={SERVER_IP}:7700"), "-e", "c2m_connections=1500", "-e", "c2m_start_delay=2"])
        .args(["-e", &format!("c2m_local_bin={BIN}"), "-e", &format!("c2m_results_dir={}", results.display())])
        .args([
            "-e",
            r#"{"c2m_load_args": ["--workload", "ping", "-d", "2s", "--workers", "1", "--connect-timeout", "5s"]}"#,
        ])
        .env("ANSIBLE_NOCOLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ansible-playbook");
    let status = finish_output(child, Duration::from_secs(180));
    assert!(status.0.success(), "ansible-playbook failed:\n{}", status.1);
    let run = std::fs::read_dir(&results).unwrap().next().expect("a run directory").unwrap().path();
    for i in 0..SHARDS {
        assert!(run.join(format!("shard-{i}.json")).is_file(), "shard {i}'s report was not fetched");
    }
    let merged = read(&run.join("merged.json"));
    assert_eq!(merged.status, RunStatus::Complete, "{:?}", merged.abort_reason);
    assert_eq!((merged.connections.requested, merged.connections.established), (1500, 1500));
    assert_eq!(merged.merged.as_ref().map(|m| m.shards), Some(SHARDS));
    assert_eq!(merged.messages.unanswered, 0);
    drop(hosts);
}

/// Like `finish`, keeping the child's output for the failure message.
fn finish_output(child: Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.expect("wait for ansible-playbook");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status, text)
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            panic!("ansible-playbook still runs after {limit:?}");
        }
    }
}
