//! The state file `c2m tune apply` saves the replaced sysctl values to, and `restore` reads.
//!
//! It is the one record of the box's original settings, so:
//! - it lives in one fixed place ([`DEFAULT_STATE`]) that a plain `c2m tune restore` finds after
//!   a crash, whoever started the apply (`scripts/record.sh` included);
//! - applies and restores take an exclusive lock ([`StateFile`], flock(2) on `<state>.lock` next
//!   to it) for their whole read-plan-write, so two of them cannot interleave and lose an
//!   original (before, 75 of 200 concurrent pairs did);
//! - it is private: the directory is created 0700, the file 0600, neither is reached through a
//!   symlink, and a file another user could have written is not trusted (its values would go
//!   straight into /proc/sys).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::TuneError;

/// Where the old values go unless `--state` says otherwise.
pub const DEFAULT_STATE: &str = "/var/lib/c2m/tune-state.json";
/// How long an apply or restore waits for another one to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
const STATE_SCHEMA: &str = "c2m-tune-state";

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

impl SavedState {
    pub fn new(profile: &str, proc_sys: &Path, values: BTreeMap<String, String>) -> SavedState {
        SavedState {
            schema: STATE_SCHEMA.into(),
            profile: profile.into(),
            proc_sys: proc_sys.display().to_string(),
            values,
        }
    }
}

/// The state file, held under its lock: only an apply or restore holding one may write or remove
/// it. The lock is released when this is dropped (or the process ends, however it ends).
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    _lock: File,
}

impl StateFile {
    /// Makes the state directory (0700) if needed and takes the lock, waiting at most `wait` for
    /// another apply or restore to release it.
    pub fn lock(path: &Path, wait: Duration) -> Result<StateFile, TuneError> {
        let dir = parent(path);
        ensure_private_dir(dir)?;
        let lock_path = sibling(path, "lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(|e| TuneError::io(&lock_path, e))?;
        let deadline = Instant::now() + wait;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(TuneError::Busy { lock: lock_path.display().to_string(), waited_s: wait.as_secs() });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(TuneError::io(&lock_path, e)),
            }
        }
        Ok(StateFile { path: path.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a state file is there (a symlink counts: it is refused when read).
    pub fn exists(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok()
    }

    pub fn read(&self) -> Result<SavedState, TuneError> {
        read_state(&self.path)
    }

    /// Writes the state whole or not at all: a new 0600 file beside it (never through a
    /// symlink), synced, renamed over, and the directory synced, so a crash leaves either no
    /// state file or a complete one.
    pub fn write(&self, state: &SavedState) -> Result<(), TuneError> {
        let text = serde_json::to_string_pretty(state).expect("a state serializes");
        let tmp = sibling(&self.path, "tmp");
        let write = || -> std::io::Result<()> {
            // A leftover of a crashed write; under the lock nobody else is writing it.
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(parent(&self.path))?.sync_all()
        };
        write().map_err(|e| TuneError::io(&self.path, e))
    }

    pub fn remove(&self) -> Result<(), TuneError> {
        std::fs::remove_file(&self.path).map_err(|e| TuneError::io(&self.path, e))
    }
}

/// Reads a state file (no lock needed to look). Refuses a symlink, anything but a regular file,
/// and a file that is not the caller's or that others may write.
pub fn read_state(path: &Path) -> Result<SavedState, TuneError> {
    let refuse = |why: String| TuneError::State { path: path.display().to_string(), why };
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse("is a symlink; refusing to follow it".into()),
            Some(libc::ENOENT) => refuse("not there: no apply has saved values to restore".into()),
            _ => TuneError::io(path, e),
        })?;
    let meta = file.metadata().map_err(|e| TuneError::io(path, e))?;
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "owned by uid {} with mode {:o}: only a file of uid {euid} that others cannot write is trusted \
             (its values go into /proc/sys)",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| TuneError::io(path, e))?;
    let state: SavedState = serde_json::from_str(&text).map_err(|e| refuse(e.to_string()))?;
    if state.schema != STATE_SCHEMA {
        return Err(refuse(format!("not a {STATE_SCHEMA} file")));
    }
    Ok(state)
}

fn parent(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// `tune-state.json` -> `tune-state.json.lock`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `dir` (and its parents) 0700, or checks that the existing one is a directory and not
/// a symlink.
fn ensure_private_dir(dir: &Path) -> Result<(), TuneError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(TuneError::State {
            path: dir.display().to_string(),
            why: "the state directory is a symlink or not a directory; refusing it".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| TuneError::io(dir, e))
        }
        Err(e) => Err(TuneError::io(dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn sample() -> SavedState {
        SavedState::new("test", Path::new("/proc/sys"), [("net.core.somaxconn".into(), "4096".into())].into())
    }

    #[test]
    fn writes_a_private_file_in_a_private_directory_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/c2m/tune-state.json");
        let state = StateFile::lock(&path, Duration::ZERO).unwrap();
        assert!(!state.exists());
        state.write(&sample()).unwrap();
        assert!(state.exists());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("var/lib/c2m")), 0o700);
        assert_eq!(mode(&dir.path().join("var")), 0o700);
        assert_eq!(state.read().unwrap(), sample());
        // A leftover temporary file from a crashed write is replaced, not followed.
        std::fs::write(sibling(&path, "tmp"), "half").unwrap();
        state.write(&sample()).unwrap();
        assert_eq!(read_state(&path).unwrap(), sample());
        state.remove().unwrap();
        assert!(!state.exists());
    }

    #[test]
    fn a_second_holder_waits_then_is_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tune-state.json");
        let first = StateFile::lock(&path, Duration::ZERO).unwrap();
        let t = Instant::now();
        let err = StateFile::lock(&path, Duration::from_millis(200)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(matches!(err, TuneError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("tune-state.json.lock"), "{err}");
        drop(first);
        StateFile::lock(&path, Duration::ZERO).unwrap();
    }

    #[test]
    fn symlinks_and_files_others_may_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tune-state.json");
        let state = StateFile::lock(&path, Duration::ZERO).unwrap();
        state.write(&sample()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(read_state(&path).unwrap_err().to_string().contains("others cannot write"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_state(&link).unwrap_err().to_string().contains("symlink"));
        // A state directory that is a symlink is refused too.
        let linked_dir = dir.path().join("linked");
        std::os::unix::fs::symlink(dir.path(), &linked_dir).unwrap();
        assert!(StateFile::lock(&linked_dir.join("s.json"), Duration::ZERO).is_err());
        // A fifo is not read (it would block).
        let fifo = dir.path().join("fifo.json");
        std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(read_state(&fifo).unwrap_err().to_string().contains("regular file"));
    }
}
