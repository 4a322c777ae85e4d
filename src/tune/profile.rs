//! `c2m tune apply` and `c2m tune restore`: a sysctl.d profile written to /proc/sys with every
//! value it replaces saved first, and those exact values written back later.
//!
//! The state file is written (and synced) before the first sysctl changes, and an existing one is
//! never overwritten without `--force`: a second apply would save the first apply's values as the
//! "originals" and the real ones would be lost. Both run under the state file's lock
//! ([`StateFile`]), so the check, the save and the writes of one cannot interleave with another's.

use std::path::Path;

use serde::Serialize;

use super::TuneError;
use super::state::{SavedState, StateFile};
use super::sysctl::{ProcSys, Setting, normalize, parse_conf};

/// The profiles in `tuning/`, built into the binary: a name means one of these and nothing else,
/// so a copied binary has them and the current directory never supplies one.
pub const SHIPPED: [(&str, &str); 3] = [
    ("c2m-1m", include_str!("../../tuning/c2m-1m.conf")),
    ("c2m-2m", include_str!("../../tuning/c2m-2m.conf")),
    ("c2m-10m", include_str!("../../tuning/c2m-10m.conf")),
];

/// A profile to apply: where it came from (for messages) and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// `c2m-2m (built in)` or the file's path as given.
    pub origin: String,
    pub settings: Vec<Setting>,
}

/// A built-in profile by name (`c2m-2m`), or a file when the argument is a path: it holds a `/`
/// or ends in `.conf` (`./mine.conf`, `/etc/sysctl.d/90-c2m.conf`).
pub fn resolve(name_or_path: &str) -> Result<Profile, TuneError> {
    if name_or_path.contains('/') || name_or_path.ends_with(".conf") {
        let path = Path::new(name_or_path);
        return Ok(Profile { origin: path.display().to_string(), settings: load(path)? });
    }
    let (name, text) = SHIPPED
        .iter()
        .find(|(name, _)| *name == name_or_path)
        .ok_or_else(|| TuneError::NoProfile(name_or_path.into()))?;
    let origin = format!("{name} (built in)");
    Ok(Profile { settings: parse_conf(&origin, text)?, origin })
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

/// A key whose written value the kernel did not keep as written (it clamps some).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Adjusted {
    pub key: String,
    pub written: String,
    pub now: String,
}

/// Saves the current values of the plan's changes to `state`, then writes the new ones. If a
/// write fails, the keys already written are put back and the state file removed. The plan
/// must have been made under the same lock.
pub fn apply(
    plan: &Plan,
    profile: &str,
    sys: &ProcSys,
    state: &StateFile,
    force: bool,
) -> Result<Vec<Adjusted>, TuneError> {
    if state.exists() && !force {
        return Err(TuneError::StateExists(state.path().display().to_string()));
    }
    let values = plan.changes.iter().map(|c| (c.key.clone(), c.current.clone())).collect();
    state.write(&SavedState::new(profile, sys.root(), values))?;
    let mut adjusted = Vec::new();
    for (i, change) in plan.changes.iter().enumerate() {
        if let Err(e) = sys.write(&change.key, &change.new) {
            // Best effort: the originals are still in the state file if this fails too.
            let rolled_back = plan.changes[..i].iter().all(|c| sys.write(&c.key, &c.current).is_ok());
            if rolled_back {
                let _ = state.remove();
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
/// when all of them do. Values saved from another sysctl root are refused (a test tree's state
/// must not land in the real /proc/sys).
pub fn restore(sys: &ProcSys, state: &StateFile) -> Result<Vec<Restored>, TuneError> {
    let saved = state.read()?;
    let here = sys.root().display().to_string();
    if saved.proc_sys != here {
        return Err(TuneError::State {
            path: state.path().display().to_string(),
            why: format!("holds values of {}, not of {here}; kept", saved.proc_sys),
        });
    }
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
            path: state.path().display().to_string(),
            why: format!("kept, since not every value came back: {}", failures.join("; ")),
        });
    }
    state.remove()?;
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tune::state::read_state;

    fn locked(path: &Path) -> StateFile {
        StateFile::lock(path, Duration::ZERO).unwrap()
    }

    /// A /proc/sys stand-in with three keys.
    fn tree() -> (tempfile::TempDir, ProcSys) {
        crate::tune::sysctl::fake_tree(&[
            ("net/core/somaxconn", "4096\n"),
            ("fs/file-max", "100\n"),
            ("net/ipv4/tcp_mem", "1\t2\t3\n"),
        ])
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
        assert!(apply(&p, "test", &sys, &locked(&state), false).unwrap().is_empty());
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("8192"));
        assert_eq!(sys.read("net.ipv4.tcp_mem").unwrap().as_deref(), Some("4 5 6"));
        let saved = read_state(&state).unwrap();
        assert_eq!(saved.values.len(), 2);
        assert_eq!(saved.values["net.ipv4.tcp_mem"], "1 2 3");
        let restored = restore(&sys, &locked(&state)).unwrap();
        assert_eq!(restored.len(), 2);
        assert_eq!(values(&sys), before);
        assert!(!state.exists());
    }

    #[test]
    fn a_second_apply_does_not_lose_the_originals() {
        let (dir, sys) = tree();
        let state = dir.path().join("tune-state.json");
        let p = plan(&settings("net.core.somaxconn = 8192\n"), &sys).unwrap();
        apply(&p, "test", &sys, &locked(&state), false).unwrap();
        let p2 = plan(&settings("net.core.somaxconn = 16384\n"), &sys).unwrap();
        let err = apply(&p2, "test", &sys, &locked(&state), false).unwrap_err();
        assert!(matches!(err, TuneError::StateExists(_)), "{err}");
        // Nothing was written by the refused apply.
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("8192"));
        assert_eq!(read_state(&state).unwrap().values["net.core.somaxconn"], "4096");
        restore(&sys, &locked(&state)).unwrap();
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("4096"));
    }

    #[test]
    fn state_is_saved_before_anything_is_written() {
        let (dir, sys) = tree();
        // A state path the file cannot be renamed onto (a directory with something in it):
        // apply must stop before any write.
        let state = dir.path().join("tune-state.json");
        std::fs::create_dir_all(state.join("x")).unwrap();
        let p = plan(&settings("net.core.somaxconn = 8192\n"), &sys).unwrap();
        assert!(apply(&p, "test", &sys, &locked(&state), true).is_err());
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("4096"));
    }

    #[test]
    fn a_failed_write_rolls_back_and_keeps_no_state() {
        let (dir, sys) = tree();
        let state = dir.path().join("tune-state.json");
        let mut p = plan(&settings("net.core.somaxconn = 8192\n"), &sys).unwrap();
        // A key that vanished between plan and apply: its write fails.
        p.changes.push(Change { key: "net.core.gone".into(), current: "1".into(), new: "2".into() });
        assert!(apply(&p, "test", &sys, &locked(&state), false).is_err());
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("4096"));
        assert!(!state.exists());
    }

    #[test]
    fn restore_without_state_fails_and_a_foreign_file_is_refused() {
        let (dir, sys) = tree();
        assert!(restore(&sys, &locked(&dir.path().join("none.json"))).is_err());
        let other = dir.path().join("other.json");
        std::fs::write(&other, r#"{"schema":"x","profile":"p","proc_sys":"/","values":{}}"#).unwrap();
        assert!(restore(&sys, &locked(&other)).is_err());
        assert!(other.exists());
    }

    #[test]
    fn restore_refuses_values_saved_from_another_tree() {
        let (dir, sys) = tree();
        let state = dir.path().join("tune-state.json");
        let p = plan(&settings("net.core.somaxconn = 8192\n"), &sys).unwrap();
        apply(&p, "test", &sys, &locked(&state), false).unwrap();
        let err = restore(&ProcSys::new(dir.path().join("elsewhere")), &locked(&state)).unwrap_err();
        assert!(err.to_string().contains("holds values of"), "{err}");
        assert!(state.exists());
    }

    #[test]
    fn a_name_is_a_built_in_profile_and_a_path_is_a_file() {
        for (name, _) in SHIPPED {
            let p = resolve(name).unwrap();
            assert_eq!(p.origin, format!("{name} (built in)"));
            assert!(p.settings.len() >= 10, "{name}");
        }
        assert!(matches!(resolve("c2m-nope"), Err(TuneError::NoProfile(_))));
        let err = resolve("c2m-nope").unwrap_err().to_string();
        assert!(err.contains("c2m-1m, c2m-2m, c2m-10m") && err.contains("./c2m-nope.conf"), "{err}");
        // `.conf` or a slash makes it a path, read as given (here: missing).
        assert!(matches!(resolve("c2m-2m.conf"), Err(TuneError::Io { .. })));
        assert!(matches!(resolve("tuning/c2m-2m"), Err(TuneError::Io { .. })));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mine.conf");
        std::fs::write(&file, "net.core.somaxconn = 1\n").unwrap();
        let p = resolve(file.to_str().unwrap()).unwrap();
        assert_eq!((p.origin.as_str(), p.settings.len()), (file.to_str().unwrap(), 1));
    }
}
