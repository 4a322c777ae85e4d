//! `c2m tune apply` and `c2m tune restore`: a sysctl.d profile written to /proc/sys with every
//! value it replaces saved first, and those exact values written back later.
//!
//! The state file is written (and synced) before the first sysctl changes, and an existing one is
//! never overwritten without `--force`: a second apply would save the first apply's values as the
//! "originals" and the real ones would be lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TuneError;
use super::sysctl::{ProcSys, Setting, normalize, parse_conf};

/// Where the old values go unless `--state` says otherwise.
pub const DEFAULT_STATE: &str = "/var/lib/c2m/tune-state.json";
const STATE_SCHEMA: &str = "c2m-tune-state";

/// A profile file: a path, or a name looked up as `tuning/NAME.conf` here and then in the
/// checkout the executable was built in.
pub fn resolve(name_or_path: &str) -> Result<PathBuf, TuneError> {
    let given = Path::new(name_or_path);
    if given.is_file() {
        return Ok(given.to_path_buf());
    }
    let file = if name_or_path.ends_with(".conf") { name_or_path.to_string() } else { format!("{name_or_path}.conf") };
    [Path::new("tuning").join(&file), Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning").join(&file)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| TuneError::NoProfile(name_or_path.into()))
}

/// Reads and parses a profile file.
pub fn load(path: &Path) -> Result<Vec<Setting>, TuneError> {
    let text = std::fs::read_to_string(path).map_err(|e| TuneError::io(path, e))?;
    parse_conf(&path.display().to_string(), &text)
}

/// One key the profile changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub key: String,
    pub current: String,
    pub new: String,
}

/// What applying a profile would do here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Keys already at the profile's value.
    pub unchanged: Vec<String>,
    /// Keys this kernel does not have (e.g. conntrack not loaded); skipped.
    pub missing: Vec<String>,
}

/// Compares the profile with the values now.
pub fn plan(settings: &[Setting], sys: &ProcSys) -> Result<Plan, TuneError> {
    let mut plan = Plan::default();
    for s in settings {
        match sys.read(&s.key)? {
            None => plan.missing.push(s.key.clone()),
            Some(current) if current == s.value => plan.unchanged.push(s.key.clone()),
            Some(current) => plan.changes.push(Change { key: s.key.clone(), current, new: s.value.clone() }),
        }
    }
    Ok(plan)
}

/// The values an apply replaced, as written to the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub schema: String,
    /// The profile that was applied (for messages).
    pub profile: String,
    /// The /proc/sys root the values belong to.
    pub proc_sys: String,
    /// Key -> value before the apply.
    pub values: BTreeMap<String, String>,
}

/// A key whose written value the kernel did not keep as written (it clamps some).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Adjusted {
    pub key: String,
    pub written: String,
    pub now: String,
}

/// Saves the current values of the plan's changes to `state`, then writes the new ones. If a
/// write fails, the keys already written are put back and the state file removed.
pub fn apply(plan: &Plan, profile: &str, sys: &ProcSys, state: &Path, force: bool) -> Result<Vec<Adjusted>, TuneError> {
    if state.exists() && !force {
        return Err(TuneError::StateExists(state.display().to_string()));
    }
    let saved = SavedState {
        schema: STATE_SCHEMA.into(),
        profile: profile.into(),
        proc_sys: sys.root().display().to_string(),
        values: plan.changes.iter().map(|c| (c.key.clone(), c.current.clone())).collect(),
    };
    write_state(state, &saved)?;
    let mut adjusted = Vec::new();
    for (i, change) in plan.changes.iter().enumerate() {
        if let Err(e) = sys.write(&change.key, &change.new) {
            // Best effort: the originals are still in the state file if this fails too.
            let rolled_back = plan.changes[..i].iter().all(|c| sys.write(&c.key, &c.current).is_ok());
            if rolled_back {
                let _ = std::fs::remove_file(state);
            }
            return Err(e);
        }
        let now = sys.read(&change.key)?.unwrap_or_default();
        if now != change.new {
            adjusted.push(Adjusted { key: change.key.clone(), written: change.new.clone(), now });
        }
    }
    Ok(adjusted)
}

/// A key written back by restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Restored {
    pub key: String,
    pub value: String,
}

/// Writes back every saved value and checks it reads back as saved; removes the state file only
/// when all of them do.
pub fn restore(sys: &ProcSys, state: &Path) -> Result<Vec<Restored>, TuneError> {
    let saved = read_state(state)?;
    let mut failures = Vec::new();
    let mut restored = Vec::new();
    for (key, value) in &saved.values {
        match sys.write(key, value).and_then(|()| sys.read(key)) {
            Ok(Some(now)) if now == normalize(value) => {
                restored.push(Restored { key: key.clone(), value: value.clone() })
            }
            Ok(now) => failures.push(format!("{key}: wrote {value:?}, reads {:?}", now.unwrap_or_default())),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if !failures.is_empty() {
        return Err(TuneError::State {
            path: state.display().to_string(),
            why: format!("kept, since not every value came back: {}", failures.join("; ")),
        });
    }
    std::fs::remove_file(state).map_err(|e| TuneError::io(state, e))?;
    Ok(restored)
}

fn write_state(path: &Path, state: &SavedState) -> Result<(), TuneError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TuneError::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(state).expect("a state serializes");
    // Written beside and renamed over, so a crash leaves either no state file or a whole one.
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| TuneError::io(path, e))
}

pub fn read_state(path: &Path) -> Result<SavedState, TuneError> {
    let text = std::fs::read_to_string(path).map_err(|e| TuneError::io(path, e))?;
    let state: SavedState = serde_json::from_str(&text)
        .map_err(|e| TuneError::State { path: path.display().to_string(), why: e.to_string() })?;
    if state.schema != STATE_SCHEMA {
        return Err(TuneError::State { path: path.display().to_string(), why: format!("not a {STATE_SCHEMA} file") });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc/sys stand-in with three keys.
    fn tree() -> (tempfile::TempDir, ProcSys) {
        let dir = tempfile::tempdir().unwrap();
        for (key, value) in
            [("net/core/somaxconn", "4096\n"), ("fs/file-max", "100\n"), ("net/ipv4/tcp_mem", "1\t2\t3\n")]
        {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value).unwrap();
        }
        let sys = ProcSys::new(dir.path());
        (dir, sys)
    }

    fn settings(text: &str) -> Vec<Setting> {
        parse_conf("test.conf", text).unwrap()
    }

    fn values(sys: &ProcSys) -> Vec<Option<String>> {
        ["net.core.somaxconn", "fs.file-max", "net.ipv4.tcp_mem"].iter().map(|k| sys.read(k).unwrap()).collect()
    }

    #[test]
    fn plan_sorts_keys_into_changed_unchanged_missing() {
        let (_dir, sys) = tree();
        let p = plan(&settings("net.core.somaxconn = 8192\nfs.file-max = 100\nnet.ipv4.tcp_mem = 1 2  3\nnet.netfilter.nf_conntrack_max = 9\n"), &sys).unwrap();
        assert_eq!(
            p.changes,
            vec![Change { key: "net.core.somaxconn".into(), current: "4096".into(), new: "8192".into() }]
        );
        assert_eq!(p.unchanged, vec!["fs.file-max", "net.ipv4.tcp_mem"]);
        assert_eq!(p.missing, vec!["net.netfilter.nf_conntrack_max"]);
    }

    #[test]
    fn apply_then_restore_round_trips() {
        let (dir, sys) = tree();
        let before = values(&sys);
        let state = dir.path().join("state/tune-state.json");
        let p = plan(&settings("net.core.somaxconn = 8192\nnet.ipv4.tcp_mem = 4 5 6\nvm.nothing = 1\n"), &sys).unwrap();
        assert!(apply(&p, "test", &sys, &state, false).unwrap().is_empty());
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("8192"));
        assert_eq!(sys.read("net.ipv4.tcp_mem").unwrap().as_deref(), Some("4 5 6"));
        let saved = read_state(&state).unwrap();
        assert_eq!(saved.values.len(), 2);
        assert_eq!(saved.values["net.ipv4.tcp_mem"], "1 2 3");
        let restored = restore(&sys, &state).unwrap();
        assert_eq!(restored.len(), 2);
        assert_eq!(values(&sys), before);
        assert!(!state.exists());
    }

    #[test]
    fn a_second_apply_does_not_lose_the_originals() {
        let (dir, sys) = tree();
        let state = dir.path().join("tune-state.json");
        let p = plan(&settings("net.core.somaxconn = 8192\n"), &sys).unwrap();
        apply(&p, "test", &sys, &state, false).unwrap();
        let p2 = plan(&settings("net.core.somaxconn = 16384\n"), &sys).unwrap();
        let err = apply(&p2, "test", &sys, &state, false).unwrap_err();
        assert!(matches!(err, TuneError::StateExists(_)), "{err}");
        // Nothing was written by the refused apply.
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("8192"));
        assert_eq!(read_state(&state).unwrap().values["net.core.somaxconn"], "4096");
        restore(&sys, &state).unwrap();
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("4096"));
    }

    #[test]
    fn state_is_saved_before_anything_is_written() {
        let (dir, sys) = tree();
        // A state path whose directory cannot be made: apply must stop before any write.
        std::fs::write(dir.path().join("blocker"), "").unwrap();
        let state = dir.path().join("blocker/tune-state.json");
        let p = plan(&settings("net.core.somaxconn = 8192\n"), &sys).unwrap();
        assert!(apply(&p, "test", &sys, &state, false).is_err());
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("4096"));
    }

    #[test]
    fn a_failed_write_rolls_back_and_keeps_no_state() {
        let (dir, sys) = tree();
        let state = dir.path().join("tune-state.json");
        let mut p = plan(&settings("net.core.somaxconn = 8192\n"), &sys).unwrap();
        // A key that vanished between plan and apply: its write fails.
        p.changes.push(Change { key: "net.core.gone".into(), current: "1".into(), new: "2".into() });
        assert!(apply(&p, "test", &sys, &state, false).is_err());
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("4096"));
        assert!(!state.exists());
    }

    #[test]
    fn restore_without_state_fails_and_a_foreign_file_is_refused() {
        let (dir, sys) = tree();
        assert!(restore(&sys, &dir.path().join("none.json")).is_err());
        let other = dir.path().join("other.json");
        std::fs::write(&other, r#"{"schema":"x","profile":"p","proc_sys":"/","values":{}}"#).unwrap();
        assert!(restore(&sys, &other).is_err());
        assert!(other.exists());
    }

    #[test]
    fn resolves_shipped_profiles_by_name() {
        for name in ["c2m-1m", "c2m-2m", "c2m-10m.conf"] {
            let path = resolve(name).unwrap();
            assert!(!load(&path).unwrap().is_empty(), "{}", path.display());
        }
        assert!(matches!(resolve("c2m-nope"), Err(TuneError::NoProfile(_))));
    }
}
