//! The limits this process runs under: capabilities, rlimits (read, and RLIMIT_NOFILE raised for
//! the engine's file tables), the memory cgroup's limit, the kernel version, mappings in use and
//! the commit limit. The one reader of these for tune, the engine and bench.

/// Capability bits (linux/capability.h) that change which limits apply.
pub const CAP_IPC_LOCK: u32 = 14;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;

/// CapEff from /proc/PID/status text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// This process's effective capabilities (0 if unreadable).
pub fn cap_eff() -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(parse_cap_eff).unwrap_or(0)
}

pub fn has_cap(caps: u64, bit: u32) -> bool {
    caps & (1u64 << bit) != 0
}

/// `6.18.44-fc-v657` -> (6, 18).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// (soft, hard) of an rlimit; `u64::MAX` is unlimited.
pub fn rlimit(resource: nix::sys::resource::Resource) -> (u64, u64) {
    nix::sys::resource::getrlimit(resource).unwrap_or((0, 0))
}

/// RLIMIT_NOFILE's soft limit.
pub fn nofile_soft() -> u64 {
    rlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).0
}

/// Raises RLIMIT_NOFILE towards `want`: both limits to `want` where allowed (CAP_SYS_RESOURCE),
/// else the soft limit to the hard one. Returns the soft limit after.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{Resource, setrlimit};
    let (soft, hard) = rlimit(Resource::RLIMIT_NOFILE);
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        // Raised past the hard limit.
    } else if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    nofile_soft()
}

/// fs.nr_open: the most RLIMIT_NOFILE can be raised to.
pub fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}

/// A memory cgroup's limit and what it holds now, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CgroupMemory {
    pub limit: u64,
    pub usage: u64,
}

/// Values at or above this are "no limit" (v1 shows the page-rounded i64 max).
const NO_LIMIT: u64 = 1 << 60;

/// Parses a memory.max / memory.limit_in_bytes value: `None` for "max" or a huge number.
pub fn parse_cgroup_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&v| v < NO_LIMIT)
}

/// The memory cgroup of this process from /proc/self/cgroup text: the v2 path (`0::/x`), else
/// the v1 `memory` controller's.
pub fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        if id == "0" && ctrl.is_empty() {
            v2 = Some(path.to_string());
        } else if ctrl.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// The tightest memory limit among this process's cgroup and its parents, `None` without one.
pub fn cgroup_memory() -> Option<CgroupMemory> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (v2, v1) = parse_proc_cgroup(&text);
    let read = |p: String| std::fs::read_to_string(p).ok();
    let mut best: Option<CgroupMemory> = None;
    let mut consider = |limit: Option<u64>, usage: Option<u64>| {
        if let (Some(limit), Some(usage)) = (limit, usage) {
            let room = limit.saturating_sub(usage);
            if best.is_none_or(|b| room < b.limit.saturating_sub(b.usage)) {
                best = Some(CgroupMemory { limit, usage });
            }
        }
    };
    let ancestors = |path: &str| -> Vec<String> {
        let mut out = vec![path.trim_end_matches('/').to_string()];
        let mut p = path.trim_end_matches('/');
        while let Some((parent, _)) = p.rsplit_once('/') {
            out.push(parent.to_string());
            p = parent;
        }
        out
    };
    for (mount, path) in [("/sys/fs/cgroup", &v2), ("/sys/fs/cgroup/unified", &v2)] {
        if let Some(path) = path {
            for dir in ancestors(path) {
                let limit = read(format!("{mount}{dir}/memory.max")).as_deref().and_then(parse_cgroup_limit);
                let usage = read(format!("{mount}{dir}/memory.current")).and_then(|t| t.trim().parse().ok());
                consider(limit, usage);
            }
        }
    }
    if let Some(path) = &v1 {
        for dir in ancestors(path) {
            let base = format!("/sys/fs/cgroup/memory{dir}");
            let limit = read(format!("{base}/memory.limit_in_bytes")).as_deref().and_then(parse_cgroup_limit);
            let usage = read(format!("{base}/memory.usage_in_bytes")).and_then(|t| t.trim().parse().ok());
            consider(limit, usage);
        }
    }
    best
}

/// Mappings this process has now (lines of /proc/self/maps): vm.max_map_count counts per process.
pub fn maps_in_use() -> u64 {
    std::fs::read_to_string("/proc/self/maps").map(|t| t.lines().count() as u64).unwrap_or(0)
}

/// /proc/meminfo's CommitLimit and Committed_AS in bytes (vm.overcommit_memory = 2 caps on them).
pub fn parse_commit(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == name).then(|| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kb| kb * 1024))?
        })
    };
    Some((field("CommitLimit")?, field("Committed_AS")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        let caps = parse_cap_eff("Name:\tx\nCapPrm:\t0\nCapEff:\t000001fffeffffff\n").unwrap();
        assert!(has_cap(caps, CAP_SYS_ADMIN));
        assert!(has_cap(caps, CAP_IPC_LOCK));
        assert!(!has_cap(caps, CAP_SYS_RESOURCE));
        assert_eq!(parse_cap_eff("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_kernel_version("weird"), None);
    }

    #[test]
    fn cgroup_files() {
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(parse_cgroup_limit("8589934592\n"), Some(8 << 30));
        let (v2, v1) = parse_proc_cgroup("4:memory:/a/b\n3:cpu,cpuacct:/\n0::/user.slice/x.scope\n");
        assert_eq!(v2.as_deref(), Some("/user.slice/x.scope"));
        assert_eq!(v1.as_deref(), Some("/a/b"));
    }

    #[test]
    fn commit_figures() {
        let text = "MemTotal: 10 kB\nCommitLimit:    12342044 kB\nCommitted_AS:     240232 kB\n";
        assert_eq!(parse_commit(text), Some((12_342_044 * 1024, 240_232 * 1024)));
        assert_eq!(parse_commit("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn reads_this_process() {
        assert!(maps_in_use() > 0);
        let (soft, hard) = rlimit(nix::sys::resource::Resource::RLIMIT_NOFILE);
        assert!(soft > 0 && hard >= soft);
    }
}
