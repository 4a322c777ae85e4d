//! A profile applied for as long as a value lives: `c2m bench --ab` applies each round's profile
//! with [`AppliedProfile::apply`] and restores it with [`AppliedProfile::restore`] whatever the
//! round did. It is `tune apply` and `tune restore` (the same plan, state file and lock), held
//! open around a piece of work instead of split over two commands.
//!
//! The state file is written before the first sysctl changes and stays until every value is
//! back, so a crash (or SIGKILL) in between leaves exactly what `c2m tune restore` needs; the
//! lock is held throughout, so no `tune apply` can save this round's values as the originals.
//! If the value is dropped without `restore` (an early return, a panic), Drop restores.

use std::path::Path;

use super::TuneError;
use super::profile::{self, Change, Profile, Restored};
use super::state::{LOCK_WAIT, StateFile};
use super::sysctl::ProcSys;

/// A profile in force until restored.
#[derive(Debug)]
pub struct AppliedProfile {
    sys: ProcSys,
    /// Held while anything is changed; `None` when nothing was (an empty profile, or every key
    /// already at its value) or once restored.
    state: Option<StateFile>,
    changes: Vec<Change>,
}

impl AppliedProfile {
    /// Applies `profile` to `sys`, saving the values it replaces in `state_path` first. An
    /// existing state file (an apply not restored) is refused, as `tune apply` refuses it. A
    /// profile with no settings touches nothing, not even the state directory.
    pub fn apply(profile: &Profile, sys: &ProcSys, state_path: &Path) -> Result<AppliedProfile, TuneError> {
        let mut applied = AppliedProfile { sys: sys.clone(), state: None, changes: Vec::new() };
        if profile.settings.is_empty() {
            return Ok(applied);
        }
        let state = StateFile::lock(state_path, LOCK_WAIT)?;
        if state.exists() {
            return Err(TuneError::StateExists(state.path().display().to_string()));
        }
        let plan = profile::plan(&profile.settings, sys)?;
        if plan.changes.is_empty() {
            return Ok(applied);
        }
        profile::apply(&plan, &profile.origin, sys, &state, false)?;
        applied.changes = plan.changes;
        applied.state = Some(state);
        Ok(applied)
    }

    /// What the profile changed: key, value before, value now.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Writes back every saved value; the state file is removed only when all came back.
    pub fn restore(mut self) -> Result<Vec<Restored>, TuneError> {
        match self.state.take() {
            Some(state) => profile::restore(&self.sys, &state),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for AppliedProfile {
    fn drop(&mut self) {
        if let Some(state) = self.state.take()
            && let Err(e) = profile::restore(&self.sys, &state)
        {
            eprintln!("c2m: restoring sysctls failed: {e}; run `c2m tune restore --state {}`", state.path().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::state::SavedState;
    use crate::tune::sysctl::parse_conf;

    fn tree() -> (tempfile::TempDir, ProcSys) {
        crate::tune::sysctl::fake_tree(&[("net/core/somaxconn", "4096\n")])
    }

    fn profile(text: &str) -> Profile {
        Profile { origin: "test".into(), settings: parse_conf("test.conf", text).unwrap() }
    }

    #[test]
    fn applies_then_restores_and_leaves_no_state() {
        let (dir, sys) = tree();
        let state = dir.path().join("state/s.json");
        let applied = AppliedProfile::apply(&profile("net.core.somaxconn = 128\n"), &sys, &state).unwrap();
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("128"));
        assert_eq!(applied.changes().len(), 1);
        assert!(state.exists());
        assert_eq!(applied.restore().unwrap().len(), 1);
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("4096"));
        assert!(!state.exists());
    }

    #[test]
    fn dropping_it_restores_too() {
        let (dir, sys) = tree();
        let state = dir.path().join("s.json");
        let result = std::panic::catch_unwind(|| {
            let _applied = AppliedProfile::apply(&profile("net.core.somaxconn = 128\n"), &sys, &state).unwrap();
            panic!("the round failed");
        });
        assert!(result.is_err());
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("4096"));
        assert!(!state.exists());
    }

    #[test]
    fn an_empty_profile_touches_nothing_and_a_leftover_state_is_refused() {
        let (dir, sys) = tree();
        let state = dir.path().join("nowhere/s.json");
        let applied = AppliedProfile::apply(&profile(""), &sys, &state).unwrap();
        assert!(applied.changes().is_empty() && !dir.path().join("nowhere").exists());
        assert!(applied.restore().unwrap().is_empty());
        // An apply that crashed before its restore left its state file.
        let state = dir.path().join("s.json");
        let saved = SavedState::new("earlier", sys.root(), [("net.core.somaxconn".into(), "1024".into())].into());
        StateFile::lock(&state, std::time::Duration::ZERO).unwrap().write(&saved).unwrap();
        let err = AppliedProfile::apply(&profile("net.core.somaxconn = 256\n"), &sys, &state).unwrap_err();
        assert!(matches!(err, TuneError::StateExists(_)), "{err}");
        assert_eq!(sys.read("net.core.somaxconn").unwrap().as_deref(), Some("4096"));
        assert_eq!(crate::tune::state::read_state(&state).unwrap(), saved);
    }
}
