//! Sysctls as files under /proc/sys (or a directory tree standing in for it in tests), and the
//! sysctl.d file format the profiles in `tuning/` are written in.

use std::path::{Path, PathBuf};

use super::TuneError;

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

    /// `net.core.somaxconn` -> ROOT/net/core/somaxconn (a key written with slashes is taken as is).
    pub fn path(&self, key: &str) -> PathBuf {
        let rel = if key.contains('/') { key.trim_start_matches('/').to_string() } else { key.replace('.', "/") };
        self.root.join(rel)
    }

    /// The value, whitespace runs made one space (`tcp_mem` is tab-separated); `None` when this
    /// kernel has no such key.
    pub fn read(&self, key: &str) -> Result<Option<String>, TuneError> {
        let path = self.path(key);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(normalize(&text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TuneError::io(path, e)),
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

    /// Writes a value the way `sysctl -w` does (one write of the whole value).
    pub fn write(&self, key: &str, value: &str) -> Result<(), TuneError> {
        let path = self.path(key);
        // Open without create: a key this kernel lacks must fail, not appear as a new file.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| TuneError::Write { key: key.into(), value: value.into(), source })?;
        use std::io::Write;
        file.write_all(format!("{value}\n").as_bytes()).map_err(|source| TuneError::Write {
            key: key.into(),
            value: value.into(),
            source,
        })
    }
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
        if key.is_empty() || key.contains(char::is_whitespace) || key.contains("..") {
            return Err(bad("bad key"));
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
        assert_eq!(sys.read("net/ipv4/tcp_mem").unwrap().as_deref(), Some("4 5 6"));
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
