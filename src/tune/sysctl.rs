//! Sysctls as files under /proc/sys (or a directory tree standing in for it in tests), and the
//! sysctl.d file format the profiles in `tuning/` are written in.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::TuneError;

/// Checks a sysctl name and gives its path under the sysctl root: dot-separated segments of
/// `[a-z0-9_-]`, no empty segment (so no leading or trailing dot, no `..`) and no `/`. A name
/// that passes cannot name anything outside the tree; a leading dot once turned
/// `.etc.hostname` into `/etc/hostname`.
pub fn key_path(key: &str) -> Result<PathBuf, String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.contains('/') {
        return Err("a key is written with dots (net.core.somaxconn), not slashes".into());
    }
    if let Some(c) = key.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.')) {
        return Err(format!("{c:?} is not allowed: a key is segments of a-z, 0-9, '_' and '-' joined by dots"));
    }
    if key.split('.').any(str::is_empty) {
        return Err("a key may not start or end with a dot or have two in a row".into());
    }
    Ok(key.split('.').collect())
}

/// The root sysctls are read from and written to.
#[derive(Clone, Debug)]
pub struct ProcSys {
    root: PathBuf,
}

impl Default for ProcSys {
    fn default() -> Self {
        ProcSys::new("/proc/sys")
    }
}

impl ProcSys {
    pub fn new(root: impl Into<PathBuf>) -> ProcSys {
        ProcSys { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `net.core.somaxconn` -> ROOT/net/core/somaxconn, for messages; a bad key is an error.
    pub fn path(&self, key: &str) -> Result<PathBuf, TuneError> {
        Ok(self.root.join(checked(key)?))
    }

    /// Opens a key's file beneath the root, never through a symlink (see [`open_beneath`]).
    fn open(&self, key: &str, write: bool) -> std::io::Result<File> {
        let rel = checked(key).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&self.root)?;
        let opened = match open_beneath(&root, &rel, write) {
            // Before Linux 5.6 (no openat2): the same refusals, checked then opened.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => open_checked(&self.root, &rel, write),
            other => other,
        };
        opened.map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => {
                std::io::Error::new(e.kind(), format!("{e}: a symlink inside the sysctl tree is not followed"))
            }
            _ => e,
        })
    }

    /// The value, whitespace runs made one space (`tcp_mem` is tab-separated); `None` when this
    /// kernel has no such key.
    pub fn read(&self, key: &str) -> Result<Option<String>, TuneError> {
        let mut text = String::new();
        match self.open(key, false).and_then(|mut f| f.read_to_string(&mut text)) {
            Ok(_) => Ok(Some(normalize(&text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TuneError::io(self.path(key)?, e)),
        }
    }

    /// A number-valued key; `None` when missing or not a number.
    pub fn read_u64(&self, key: &str) -> Option<u64> {
        self.read(key).ok().flatten()?.parse().ok()
    }

    /// A key's words as numbers (`tcp_mem`, `ip_local_port_range`).
    pub fn read_u64s(&self, key: &str) -> Option<Vec<u64>> {
        let text = self.read(key).ok().flatten()?;
        text.split(' ').map(|w| w.parse().ok()).collect()
    }

    /// Writes a value the way `sysctl -w` does (one write of the whole value). A key this
    /// kernel lacks fails: it is opened, never created.
    pub fn write(&self, key: &str, value: &str) -> Result<(), TuneError> {
        checked(key)?;
        let failed = |source| TuneError::Write { key: key.into(), value: value.into(), source };
        let mut file = self.open(key, true).map_err(failed)?;
        file.write_all(format!("{value}\n").as_bytes()).map_err(failed)
    }
}

fn checked(key: &str) -> Result<PathBuf, TuneError> {
    key_path(key).map_err(|why| TuneError::Key { key: key.into(), why })
}

/// [`open_beneath`] for kernels without openat2: every directory on the way must not be a
/// symlink, and the file is opened with O_NOFOLLOW. (A symlink swapped in between the check and
/// the open would still be followed; in /proc/sys nobody can make one.)
fn open_checked(root: &Path, rel: &Path, write: bool) -> std::io::Result<File> {
    let mut dir = root.to_path_buf();
    for part in rel.parent().into_iter().flat_map(Path::components) {
        dir.push(part);
        if std::fs::symlink_metadata(&dir)?.file_type().is_symlink() {
            return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
        }
    }
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .truncate(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(root.join(rel))
}

/// `open_how` of linux/openat2.h (the kernel ABI: three u64, 24 bytes).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `rel` (plain names joined by `/`) beneath the directory `root`, with openat2(2) and
/// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS: the kernel refuses a path that
/// leaves `root` or passes a symlink anywhere (ELOOP, EXDEV), with no gap between a check and
/// the open. /proc/sys has no symlinks, so this refuses nothing real; a test tree may.
fn open_beneath(root: &File, rel: &Path, write: bool) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let access = if write { libc::O_WRONLY | libc::O_TRUNC } else { libc::O_RDONLY };
    let how = OpenHow {
        flags: (access | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    let path = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL in a sysctl path"))?;
    // SAFETY: openat2 reads the NUL-terminated `path` and `how` (whose size is passed, matching
    // the kernel's struct open_how), both live across the call, and writes nothing of ours; the
    // descriptor it returns is new and owned by nothing else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &raw const how,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat2 and is not owned elsewhere.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// A /proc/sys of its own in a temporary directory, with `values` (path under /proc/sys,
/// content), for tests that apply and restore.
#[cfg(test)]
pub fn fake_tree(values: &[(&str, &str)]) -> (tempfile::TempDir, ProcSys) {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in values {
        let path = dir.path().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, value).unwrap();
    }
    let sys = ProcSys::new(dir.path());
    (dir, sys)
}

/// Runs of whitespace made one space, ends trimmed: how values are compared.
pub fn normalize(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One `key = value` line of a sysctl.d file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    /// 1-based, for messages.
    pub line: usize,
    /// `-key = value`: systemd-sysctl ignores failures to set it.
    pub optional: bool,
}

/// Parses sysctl.d(5) text: `key = value` lines, `#` and `;` comment lines, blank lines. A key
/// given twice keeps its last value, as systemd-sysctl does.
pub fn parse_conf(path: &str, text: &str) -> Result<Vec<Setting>, TuneError> {
    let mut out: Vec<Setting> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let bad = |why: &str| TuneError::Parse { path: path.into(), line: i + 1, why: why.into() };
        let (key, value) = line.split_once('=').ok_or_else(|| bad("not `key = value`"))?;
        let (key, value) = (key.trim(), normalize(value));
        let (key, optional) = match key.strip_prefix('-') {
            Some(k) => (k.trim(), true),
            None => (key, false),
        };
        if let Err(why) = key_path(key) {
            return Err(bad(&format!("bad key {key:?}: {why}")));
        }
        if value.is_empty() {
            return Err(bad("empty value"));
        }
        let setting = Setting { key: key.to_string(), value, line: i + 1, optional };
        match out.iter_mut().find(|s| s.key == setting.key) {
            Some(old) => *old = setting,
            None => out.push(setting),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysctl_d() {
        let text = "# why\n; also a comment\n\nfs.file-max = 100\nnet.ipv4.tcp_mem =  1\t2   3 \n-net.netfilter.nf_conntrack_max=5\nfs.file-max = 200\n";
        let s = parse_conf("t.conf", text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].key.as_str(), s[0].value.as_str(), s[0].line), ("fs.file-max", "200", 7));
        assert_eq!(s[1].value, "1 2 3");
        assert!(s[2].optional && s[2].key == "net.netfilter.nf_conntrack_max");
    }

    #[test]
    fn rejects_bad_lines_with_their_number() {
        let err = parse_conf("t.conf", "fs.file-max = 1\nnonsense\n").unwrap_err().to_string();
        assert_eq!(err, "t.conf:2: not `key = value`");
        assert!(parse_conf("t.conf", "a.b =\n").is_err());
        assert!(parse_conf("t.conf", "a..b = 1\n").is_err());
        let err = parse_conf("t.conf", "fs.file-max = 1\n.etc.hostname = x\n").unwrap_err().to_string();
        assert!(err.starts_with("t.conf:2: bad key \".etc.hostname\""), "{err}");
    }

    #[test]
    fn keys_stay_inside_the_tree() {
        assert_eq!(key_path("net.core.somaxconn").unwrap(), Path::new("net/core/somaxconn"));
        assert_eq!(key_path("fs.file-max").unwrap(), Path::new("fs/file-max"));
        assert_eq!(key_path("net.netfilter.nf_conntrack_max").unwrap(), Path::new("net/netfilter/nf_conntrack_max"));
        for bad in [
            "",
            ".etc.hostname",
            "net.",
            "net..core",
            "..",
            "net/core/x",
            "/etc/passwd",
            "Net.core",
            "a b",
            "a.b\0",
            "ä",
        ] {
            assert!(key_path(bad).is_err(), "{bad:?}");
        }
        let sys = ProcSys::new("/nonexistent");
        assert!(matches!(sys.read(".etc.hostname"), Err(TuneError::Key { .. })));
        assert!(matches!(sys.write(".etc.hostname", "x"), Err(TuneError::Key { .. })));
    }

    proptest::proptest! {
        /// Whatever a key is, the path it passes as stays beneath the root: only plain names.
        #[test]
        fn an_accepted_key_is_only_plain_names(key in "[a-z0-9_./-]{0,24}") {
            if let Ok(path) = key_path(&key) {
                proptest::prop_assert!(path.is_relative());
                for part in path.components() {
                    proptest::prop_assert!(matches!(part, std::path::Component::Normal(_)), "{key:?} -> {path:?}");
                }
            }
        }
    }

    #[test]
    fn symlinks_in_the_tree_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys");
        std::fs::create_dir_all(root.join("net/core")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/victim"), "precious\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside/victim"), root.join("net/core/leaf")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("net/ipv4")).unwrap();
        let sys = ProcSys::new(&root);
        for key in ["net.core.leaf", "net.ipv4.victim"] {
            let err = sys.read(key).unwrap_err().to_string();
            assert!(err.contains("symlink"), "{key}: {err}");
            assert!(sys.write(key, "x").is_err(), "{key}");
        }
        assert_eq!(std::fs::read_to_string(dir.path().join("outside/victim")).unwrap(), "precious\n");
        // The same refusals where openat2 is missing.
        for rel in ["net/core/leaf", "net/ipv4/victim"] {
            for write in [false, true] {
                let err = open_checked(&root, Path::new(rel), write).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{rel}");
            }
        }
        std::fs::write(root.join("net/core/somaxconn"), "4096\n").unwrap();
        let mut f = open_checked(&root, Path::new("net/core/somaxconn"), true).unwrap();
        f.write_all(b"8192\n").unwrap();
        let mut text = String::new();
        open_checked(&root, Path::new("net/core/somaxconn"), false).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "8192\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("outside/victim")).unwrap(), "precious\n");
    }

    #[test]
    fn reads_and_writes_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let sys = ProcSys::new(dir.path());
        std::fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        std::fs::write(dir.path().join("net/ipv4/tcp_mem"), "1\t2\t3\n").unwrap();
        assert_eq!(sys.read("net.ipv4.tcp_mem").unwrap().as_deref(), Some("1 2 3"));
        assert_eq!(sys.read_u64s("net.ipv4.tcp_mem"), Some(vec![1, 2, 3]));
        assert_eq!(sys.read("net.ipv4.nothing").unwrap(), None);
        sys.write("net.ipv4.tcp_mem", "4 5 6").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("net/ipv4/tcp_mem")).unwrap(), "4 5 6\n");
        // A key the kernel lacks is not created.
        assert!(sys.write("net.ipv4.nothing", "1").is_err());
        assert!(!dir.path().join("net/ipv4/nothing").exists());
    }

    #[test]
    fn reads_this_kernel() {
        let sys = ProcSys::default();
        assert!(sys.read_u64("fs.file-max").unwrap() > 0);
        assert_eq!(sys.read_u64s("net.ipv4.ip_local_port_range").unwrap().len(), 2);
    }
}
