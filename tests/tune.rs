//! `c2m tune` end to end: the binary on a temporary sysctl tree, dry runs of the shipped profiles
//! on the real /proc/sys (nothing may change), and, as root, an apply + restore round trip on
//! real keys that leaves every value as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use c2m::tune::profile;
use c2m::tune::sysctl::ProcSys;

/// Tests that read or write the real /proc/sys run one at a time: a dry run must not see the
/// round trip's change.
static PROC_SYS: Mutex<()> = Mutex::new(());

fn c2m(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_c2m")).args(args).output().expect("running c2m")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn shipped_profiles() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    out.sort();
    out
}

#[test]
fn shipped_profiles_parse_and_dry_run_changes_nothing() {
    let _lock = PROC_SYS.lock().unwrap_or_else(|e| e.into_inner());
    let profiles = shipped_profiles();
    let names: Vec<String> = profiles.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["c2m-10m.conf", "c2m-1m.conf", "c2m-2m.conf"]);
    let sys = ProcSys::default();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    for path in &profiles {
        let settings = profile::load(path).unwrap();
        assert!(settings.len() >= 10, "{}", path.display());
        let before: Vec<Option<String>> = settings.iter().map(|s| sys.read(&s.key).unwrap()).collect();
        let out = c2m(&["tune", "apply", path.to_str().unwrap(), "--dry-run", "--state", state.to_str().unwrap()]);
        let printed = text(&out);
        assert!(out.status.success(), "{printed}");
        for (s, now) in settings.iter().zip(&before) {
            match now {
                Some(v) if *v != s.value => {
                    assert!(
                        printed.contains(&format!("{}: {} -> {}", s.key, v, s.value)),
                        "{} missing in:\n{printed}",
                        s.key
                    )
                }
                Some(_) => assert!(printed.contains(&s.key), "{printed}"),
                None => {
                    assert!(printed.contains("not on this kernel (skipped)") && printed.contains(&s.key), "{printed}")
                }
            }
        }
        assert!(printed.contains("dry run: nothing changed"), "{printed}");
        let after: Vec<Option<String>> = settings.iter().map(|s| sys.read(&s.key).unwrap()).collect();
        assert_eq!(before, after, "{} changed a value in a dry run", path.display());
        assert!(!state.exists(), "a dry run wrote a state file");
    }
}

#[test]
fn apply_and_restore_through_the_binary_on_a_temporary_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    for (key, value) in [("net/core/somaxconn", "4096\n"), ("net/ipv4/tcp_mem", "1\t2\t3\n")] {
        std::fs::create_dir_all(root.join(key).parent().unwrap()).unwrap();
        std::fs::write(root.join(key), value).unwrap();
    }
    let conf = dir.path().join("p.conf");
    std::fs::write(&conf, "# test\nnet.core.somaxconn = 8192\nnet.ipv4.tcp_mem = 4 5 6\nvm.absent = 1\n").unwrap();
    let state = dir.path().join("state/s.json");
    let args = |extra: &[&str]| {
        let mut v = vec![
            "tune",
            "apply",
            conf.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--proc-sys",
            root.to_str().unwrap(),
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| c2m(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(args(&[]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("net.core.somaxconn: 4096 -> 8192"), "{}", text(&out));
    assert!(text(&out).contains("not on this kernel (skipped): vm.absent"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(root.join("net/core/somaxconn")).unwrap(), "8192\n");
    // The same profile again has nothing to change; another one is refused: it would save 8192 as
    // the original.
    let same = run(args(&[]));
    assert!(same.status.success() && text(&same).contains("nothing to change"), "{}", text(&same));
    std::fs::write(&conf, "net.core.somaxconn = 16384\n").unwrap();
    let again = run(args(&[]));
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(root.join("net/core/somaxconn")).unwrap(), "8192\n");
    let out = c2m(&["tune", "restore", "--state", state.to_str().unwrap(), "--proc-sys", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(root.join("net/core/somaxconn")).unwrap(), "4096\n");
    assert_eq!(std::fs::read_to_string(root.join("net/ipv4/tcp_mem")).unwrap(), "1 2 3\n");
    assert!(!state.exists());
}

#[test]
fn check_exit_status_says_whether_the_count_fits() {
    let out = c2m(&["tune", "check", "-c", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).starts_with("This box can hold about"), "{}", text(&out));
    // A thousand billion connections fit nowhere.
    let out = c2m(&["tune", "check", "-c", "1000g", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["fits"], false);
    assert!(report["rows"].as_array().unwrap().iter().any(|r| r["verdict"] == "limits you"));
    let out = c2m(&["tune", "size", "--memory", "64G", "--cores", "8", "--from", "/nonexistent.json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

fn effective_uid_is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    // Uid: real effective saved filesystem
    uid.split_whitespace().nth(2) == Some("0")
}

/// Puts the saved values back into /proc/sys when dropped, so a failing assertion never leaves
/// a sysctl changed.
struct PutBack {
    sys: ProcSys,
    saved: Vec<(String, String)>,
}

impl Drop for PutBack {
    fn drop(&mut self) {
        for (key, value) in &self.saved {
            if self.sys.read(key).ok().flatten().as_deref() != Some(value.as_str()) {
                let _ = self.sys.write(key, value);
            }
        }
    }
}

#[test]
fn apply_and_restore_on_the_real_proc_sys_leave_every_value_as_it_was() {
    if !effective_uid_is_root() {
        eprintln!("skipped: writing /proc/sys needs root");
        return;
    }
    let _lock = PROC_SYS.lock().unwrap_or_else(|e| e.into_inner());
    let sys = ProcSys::default();
    let keys = ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"];
    let before: Vec<(String, String)> = keys.iter().map(|k| (k.to_string(), sys.read(k).unwrap().unwrap())).collect();
    let _guard = PutBack { sys: sys.clone(), saved: before.clone() };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("plus-one.conf");
    let raised: Vec<(String, String)> =
        before.iter().map(|(k, v)| (k.clone(), (v.parse::<u64>().unwrap() + 1).to_string())).collect();
    std::fs::write(&conf, raised.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>()).unwrap();
    let state = dir.path().join("tune-state.json");

    let out = c2m(&["tune", "apply", conf.to_str().unwrap(), "--state", state.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for (k, v) in &raised {
        assert_eq!(sys.read(k).unwrap().as_deref(), Some(v.as_str()), "{k} not applied");
    }
    let saved = profile::read_state(&state).unwrap();
    assert_eq!(saved.values.len(), keys.len());

    let out = c2m(&["tune", "restore", "--state", state.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for (k, v) in &before {
        assert_eq!(sys.read(k).unwrap().as_deref(), Some(v.as_str()), "{k} not restored");
    }
    assert!(!state.exists(), "restore left the state file");
}
