//! `c2m tune` end to end: the binary on a temporary sysctl tree, dry runs of the shipped profiles
//! on the real /proc/sys (nothing may change), and, as root, an apply + restore round trip on
//! real keys that leaves every value as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use c2m::tune::profile;
use c2m::tune::state;
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
fn verify_says_what_is_in_force_and_exits_3_when_a_value_differs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    std::fs::create_dir_all(root.join("net/core")).unwrap();
    std::fs::write(root.join("net/core/somaxconn"), "4096\n").unwrap();
    let conf = dir.path().join("p.conf");
    let verify = || c2m(&["tune", "verify", conf.to_str().unwrap(), "--proc-sys", root.to_str().unwrap()]);
    std::fs::write(&conf, "net.core.somaxconn = 8192\nvm.absent = 1\n").unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("differs   net.core.somaxconn: 4096 now, the profile says 8192"), "{}", text(&out));
    // After an apply every key the kernel has is in force; a missing one does not fail it.
    let state = dir.path().join("s.json");
    let (c, r, st) = (conf.to_str().unwrap(), root.to_str().unwrap(), state.to_str().unwrap());
    assert!(c2m(&["tune", "apply", c, "--proc-sys", r, "--state", st]).status.success());
    let out = verify();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("1 of 2 key(s) in force, 0 differ, 1 not on this kernel"), "{}", text(&out));
    assert!(c2m(&["tune", "restore", "--proc-sys", r, "--state", st]).status.success());
    assert_eq!(verify().status.code(), Some(3));
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
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
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
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["fits"], false);
    assert!(report["rows"].as_array().unwrap().iter().any(|r| r["verdict"] == "limits you"));
    let out = c2m(&["tune", "size", "--memory", "64G", "--cores", "8", "--from", "/nonexistent.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
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
    let saved = state::read_state(&state).unwrap();
    assert_eq!(saved.values.len(), keys.len());

    let out = c2m(&["tune", "restore", "--state", state.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for (k, v) in &before {
        assert_eq!(sys.read(k).unwrap().as_deref(), Some(v.as_str()), "{k} not restored");
    }
    assert!(!state.exists(), "restore left the state file");
}

/// A temporary sysctl tree with `net/core/somaxconn` = 4096 and `net/core/a`, `net/core/b`.
fn fake_tree(dir: &Path) -> PathBuf {
    let root = dir.join("sys");
    std::fs::create_dir_all(root.join("net/core")).unwrap();
    for (key, value) in [("somaxconn", "4096\n"), ("a", "100\n"), ("b", "200\n")] {
        std::fs::write(root.join("net/core").join(key), value).unwrap();
    }
    root
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// F10: a key is dot-separated segments of [a-z0-9_-] and nothing else. A leading dot once made
/// `.tmp.x.victim` the absolute path /tmp/x/victim, so a dry run printed any file and an apply
/// overwrote it.
#[test]
fn a_key_that_would_leave_the_sysctl_tree_is_refused_naming_its_line() {
    // A directory name without a leading dot, so the victim's path has a dotted-key spelling.
    let dir = tempfile::Builder::new().prefix("c2mtune").tempdir().unwrap();
    let root = fake_tree(dir.path());
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let dotted = victim.to_str().unwrap().replace('/', ".");
    let state = dir.path().join("state.json");
    for bad in [
        dotted.as_str(),
        "net..core.somaxconn",
        "net/core/somaxconn",
        "net.core.",
        "net.core.Somaxconn",
        "net.core.some$",
    ] {
        let conf = dir.path().join("bad.conf");
        std::fs::write(&conf, format!("net.core.somaxconn = 8192\n{bad} = overwritten\n")).unwrap();
        for dry in [true, false] {
            let mut args = vec!["tune", "apply", s(&conf), "--proc-sys", s(&root), "--state", s(&state)];
            if dry {
                args.push("--dry-run");
            }
            let out = c2m(&args);
            let printed = text(&out);
            assert_eq!(out.status.code(), Some(1), "{bad}: {printed}");
            assert!(printed.contains("bad.conf:2:") && printed.contains("key"), "{bad}: {printed}");
            assert!(!printed.contains("precious"), "{bad}: {printed}");
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "{bad} overwrote the victim");
        assert_eq!(std::fs::read_to_string(root.join("net/core/somaxconn")).unwrap(), "4096\n", "{bad}");
        assert!(!state.exists());
    }
}

/// Symlinks inside the tree are not followed, so a key cannot be pointed outside /proc/sys.
#[test]
fn symlinks_inside_the_sysctl_tree_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_tree(dir.path());
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "precious\n").unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), root.join("net/core/rmem_max")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("net/ipv4")).unwrap();
    let state = dir.path().join("state.json");
    for key in ["net.core.rmem_max", "net.ipv4.victim"] {
        let conf = dir.path().join("p.conf");
        std::fs::write(&conf, format!("{key} = 1\n")).unwrap();
        for dry in [true, false] {
            let mut args = vec!["tune", "apply", s(&conf), "--proc-sys", s(&root), "--state", s(&state)];
            if dry {
                args.push("--dry-run");
            }
            let out = c2m(&args);
            assert_eq!(out.status.code(), Some(1), "{key}: {}", text(&out));
            assert!(!text(&out).contains("precious"), "{key}: {}", text(&out));
        }
        assert_eq!(std::fs::read_to_string(outside.join("victim")).unwrap(), "precious\n", "{key}");
    }
}

/// F11: a profile name comes from the profiles built into c2m, never from the current
/// directory; a file is read only when named by a path.
#[test]
fn a_profile_name_is_never_taken_from_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_tree(dir.path());
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(cwd.join("tuning")).unwrap();
    for planted in [cwd.join("tuning/c2m-2m.conf"), cwd.join("c2m-2m")] {
        std::fs::write(planted, "net.core.somaxconn = 1\n").unwrap();
    }
    let state = dir.path().join("state.json");
    let out = Command::new(env!("CARGO_BIN_EXE_c2m"))
        .args(["tune", "apply", "c2m-2m", "--dry-run", "--proc-sys", s(&root), "--state", s(&state)])
        .current_dir(&cwd)
        .output()
        .unwrap();
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("net.core.somaxconn: 4096 -> 65535"), "not the built-in c2m-2m: {printed}");
    // Named by a path, the file is read.
    let out = Command::new(env!("CARGO_BIN_EXE_c2m"))
        .args(["tune", "apply", "./tuning/c2m-2m.conf", "--dry-run", "--proc-sys", s(&root), "--state", s(&state)])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert!(text(&out).contains("net.core.somaxconn: 4096 -> 1"), "{}", text(&out));
}

/// The shipped profiles are built into the binary: a copy of c2m away from the checkout applies
/// them by name.
#[test]
fn a_copied_binary_applies_the_shipped_profiles_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_tree(dir.path());
    let copy = dir.path().join("c2m");
    std::fs::copy(env!("CARGO_BIN_EXE_c2m"), &copy).unwrap();
    for name in ["c2m-1m", "c2m-2m", "c2m-10m"] {
        let run = || {
            Command::new(&copy)
                .args(["tune", "apply", name, "--dry-run", "--proc-sys", s(&root)])
                .current_dir(dir.path())
                .output()
        };
        // Another test thread forking while the copy was open for writing leaves the child a
        // moment with that descriptor: exec then fails with ETXTBSY until it has exec'd.
        let mut out = run();
        for _ in 0..50 {
            match &out {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => break,
            }
            out = run();
        }
        let out = out.unwrap();
        assert!(out.status.success() && text(&out).contains("net.core.somaxconn: 4096 ->"), "{name}: {}", text(&out));
    }
}

/// F12: two applies at once, each with its own keys, then one restore: every key is back. One of
/// the two applies may be refused (the other's state file is there), but no original is lost.
#[test]
fn concurrent_applies_never_lose_an_original() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..25 {
        let base = dir.path().join(round.to_string());
        let root = fake_tree(&base);
        let state = base.join("state/tune-state.json");
        let (pa, pb) = (base.join("pa.conf"), base.join("pb.conf"));
        std::fs::write(&pa, "net.core.a = 101\n").unwrap();
        std::fs::write(&pb, "net.core.b = 201\n").unwrap();
        let spawn = |conf: &Path| {
            Command::new(env!("CARGO_BIN_EXE_c2m"))
                .args(["tune", "apply", s(conf), "--proc-sys", s(&root), "--state", s(&state)])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let (mut a, mut b) = (spawn(&pa), spawn(&pb));
        let (ra, rb) = (a.wait().unwrap(), b.wait().unwrap());
        assert!(ra.success() || rb.success(), "round {round}: both applies failed");
        let out = c2m(&["tune", "restore", "--proc-sys", s(&root), "--state", s(&state)]);
        assert!(out.status.success(), "round {round}: {}", text(&out));
        let read = |k: &str| std::fs::read_to_string(root.join("net/core").join(k)).unwrap();
        assert_eq!((read("a"), read("b")), ("100\n".into(), "200\n".into()), "round {round}");
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The state file is the one record of the original values: private to its owner (0600 in a
/// 0700 directory), never reached through a symlink, and refused when others could have
/// written it.
#[test]
fn the_state_file_is_private_and_not_reached_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_tree(dir.path());
    let conf = dir.path().join("p.conf");
    std::fs::write(&conf, "net.core.a = 101\n").unwrap();
    let state_dir = dir.path().join("var/lib/c2m");
    let state = state_dir.join("tune-state.json");
    let apply = |state: &Path| c2m(&["tune", "apply", s(&conf), "--proc-sys", s(&root), "--state", s(state)]);
    let restore = |state: &Path| c2m(&["tune", "restore", "--proc-sys", s(&root), "--state", s(state)]);
    let out = apply(&state);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&state), 0o600);
    assert_eq!(mode(&state_dir), 0o700);

    // A state file others may write is not trusted.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = restore(&state);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Nor one reached through a symlink.
    let link = state_dir.join("link.json");
    std::os::unix::fs::symlink(&state, &link).unwrap();
    let out = restore(&link);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(root.join("net/core/a")).unwrap(), "101\n");

    let out = restore(&state);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(root.join("net/core/a")).unwrap(), "100\n");
    assert!(!state.exists());

    // An apply does not write through a symlink planted where its state file goes.
    let target = dir.path().join("elsewhere.json");
    std::fs::write(&target, "untouched").unwrap();
    std::os::unix::fs::symlink(&target, &state).unwrap();
    let out = apply(&state);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    assert_eq!(std::fs::read_to_string(root.join("net/core/a")).unwrap(), "100\n");
}

/// An apply waits while another apply or restore holds the state lock, then goes on.
#[test]
fn an_apply_waits_for_the_state_lock() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_tree(dir.path());
    let conf = dir.path().join("p.conf");
    std::fs::write(&conf, "net.core.a = 101\n").unwrap();
    let state = dir.path().join("tune-state.json");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.path().join("tune-state.json.lock"))
        .unwrap();
    lock.lock().unwrap();
    let start = std::time::Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_c2m"))
        .args(["tune", "apply", s(&conf), "--proc-sys", s(&root), "--state", s(&state)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(std::fs::read_to_string(root.join("net/core/a")).unwrap(), "100\n", "applied under another's lock");
    lock.unlock().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(start.elapsed() >= std::time::Duration::from_millis(1000));
    assert_eq!(std::fs::read_to_string(root.join("net/core/a")).unwrap(), "101\n");
    let out = c2m(&["tune", "restore", "--proc-sys", s(&root), "--state", s(&state)]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `scripts/record.sh` run with a stand-in c2m that logs its calls and keeps a pretend state
/// file: the script uses c2m's own state file (no `--state`), and every way it ends after an
/// apply (bench success, bench failure, SIGTERM, an earlier run's state found) restores.
mod record_script {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    const FAKE_C2M: &str = r#"#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$1 $2" in
  "tune check") exit "${FAKE_CHECK:-0}" ;;
  "tune apply") if [ -f "$FAKE_STATE" ]; then echo "state file exists" >&2; exit 1; fi; echo saved > "$FAKE_STATE" ;;
  "tune restore") if [ ! -f "$FAKE_STATE" ]; then echo "no state file" >&2; exit 1; fi; rm "$FAKE_STATE" ;;
  bench*) case "$FAKE_BENCH" in ok) exit 0 ;; fail) exit 1 ;; hang) exec sleep 30 ;; esac ;;
esac
"#;

    struct Checkout {
        dir: tempfile::TempDir,
    }

    impl Checkout {
        fn new() -> Checkout {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/record.sh");
            std::fs::copy(script, dir.path().join("scripts/record.sh")).unwrap();
            let fake = dir.path().join("fake-c2m");
            std::fs::write(&fake, FAKE_C2M).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
            Checkout { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn start(&self, bench: &str, check: &str) -> Child {
            self.start_with(&["2m", "c2m-2m"], bench, check)
        }

        fn start_with(&self, args: &[&str], bench: &str, check: &str) -> Child {
            Command::new("bash")
                .arg(self.path("scripts/record.sh"))
                .args(args)
                .env("C2M", self.path("fake-c2m"))
                .env("RECORD_DROP_CACHES", "0")
                .env("FAKE_LOG", self.path("calls.log"))
                .env("FAKE_STATE", self.path("state"))
                .env("FAKE_BENCH", bench)
                .env("FAKE_CHECK", check)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        }

        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.path("calls.log")).unwrap_or_default().lines().map(String::from).collect()
        }
    }

    fn wait(child: Child) -> (Option<i32>, String) {
        let out = child.wait_with_output().unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    const FULL_RUN: [&str; 4] =
        ["tune check -c 2m", "tune apply c2m-2m", "bench --scenario record -c 2m --no-progress", "tune restore"];

    #[test]
    fn restores_after_the_bench_whether_it_passed_or_failed() {
        for (bench, code) in [("ok", 0), ("fail", 1)] {
            let c = Checkout::new();
            let (got, out) = wait(c.start(bench, "0"));
            assert_eq!(got, Some(code), "{bench}: {out}");
            assert_eq!(c.calls(), FULL_RUN, "{bench}: {out}");
            assert!(!c.path("state").exists(), "{bench}: {out}");
        }
    }

    #[test]
    fn restores_when_terminated_during_the_bench() {
        let c = Checkout::new();
        let child = c.start("hang", "0");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.calls().iter().any(|l| l.starts_with("bench")) {
            assert!(Instant::now() < deadline, "the bench never started: {:?}", c.calls());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let (got, out) = wait(child);
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?} to stop: {out}", started.elapsed());
        assert_eq!(got, Some(143), "{out}");
        assert_eq!(c.calls(), FULL_RUN, "{out}");
        assert!(!c.path("state").exists(), "{out}");
    }

    #[test]
    fn an_earlier_runs_state_is_restored_and_a_failed_check_changes_nothing() {
        let c = Checkout::new();
        std::fs::write(c.path("state"), "from a crashed run").unwrap();
        let (got, out) = wait(c.start("ok", "0"));
        assert_eq!(got, Some(1), "{out}");
        assert_eq!(c.calls(), ["tune check -c 2m", "tune apply c2m-2m", "tune restore"], "{out}");
        assert!(!c.path("state").exists(), "{out}");

        let c = Checkout::new();
        let (got, out) = wait(c.start("ok", "3"));
        assert_eq!(got, Some(1), "{out}");
        assert_eq!(c.calls(), ["tune check -c 2m"], "{out}");
    }

    #[test]
    fn the_xdp_data_plane_runs_its_scenario_and_touches_no_sysctl() {
        let c = Checkout::new();
        let (got, out) = wait(c.start_with(&["--dataplane", "xdp"], "ok", "0"));
        assert_eq!(got, Some(0), "{out}");
        assert_eq!(c.calls(), ["bench --scenario record-xdp -c 10m --no-progress"], "{out}");
        assert!(c.path("results/record-xdp/logs").is_dir(), "{out}");

        let c = Checkout::new();
        let (got, out) = wait(c.start_with(&["--dataplane", "xdp", "12m", "c2m-2m"], "ok", "0"));
        assert_eq!(got, Some(2), "{out}");
        assert!(out.contains("no tuning profile on the xdp data plane"), "{out}");
        assert!(c.calls().is_empty(), "{out}");
    }
}

/// The profiles built into the binary are exactly the files in tuning/.
#[test]
fn the_built_in_profiles_are_the_files_in_tuning() {
    let files: Vec<(String, String)> = shipped_profiles()
        .iter()
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(p).unwrap()))
        .collect();
    let mut built_in: Vec<(String, String)> =
        profile::SHIPPED.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
    built_in.sort();
    assert_eq!(built_in, files);
}
