//! System-wide memory: /proc/meminfo and /proc/net/sockstat.
//!
//! MemFree is what the guards watch, not MemAvailable: MemAvailable counts live sockets' inodes
//! and dentries as reclaimable and overstates what is free (see DESIGN.md).

use std::time::{Duration, Instant};

use super::{HostError, read_text};
use crate::schema::bench::{MemorySettle, SystemMemory};

const MEMINFO: &str = "/proc/meminfo";
const SOCKSTAT: &str = "/proc/net/sockstat";

/// The /proc/meminfo lines c2m uses, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub mem_total: u64,
    pub mem_free: u64,
    pub mem_available: u64,
    pub slab: u64,
    pub slab_unreclaimable: u64,
}

/// Parses /proc/meminfo text (values in kB, given back in bytes).
pub fn parse_meminfo(text: &str) -> Result<MemInfo, HostError> {
    let field = |name: &str| -> Result<u64, HostError> {
        text.lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                if key != name {
                    return None;
                }
                value.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
            })
            .map(|kb| kb * 1024)
            .ok_or_else(|| HostError::Missing { path: MEMINFO.into(), field: name.into() })
    };
    Ok(MemInfo {
        mem_total: field("MemTotal")?,
        mem_free: field("MemFree")?,
        mem_available: field("MemAvailable")?,
        slab: field("Slab")?,
        slab_unreclaimable: field("SUnreclaim")?,
    })
}

pub fn read_meminfo() -> Result<MemInfo, HostError> {
    parse_meminfo(&read_text(MEMINFO)?)
}

/// /proc/net/sockstat's `TCP:` line: sockets in use and memory in pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSockstat {
    pub inuse: u64,
    pub mem_pages: u64,
}

pub fn parse_sockstat(text: &str) -> Result<TcpSockstat, HostError> {
    let missing = |field: &str| HostError::Missing { path: SOCKSTAT.into(), field: field.into() };
    let line = text.lines().find(|l| l.starts_with("TCP:")).ok_or_else(|| missing("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1)?.parse::<u64>().ok())
            .ok_or_else(|| missing(name))
    };
    Ok(TcpSockstat { inuse: field("inuse")?, mem_pages: field("mem")? })
}

pub fn read_sockstat() -> Result<TcpSockstat, HostError> {
    parse_sockstat(&read_text(SOCKSTAT)?)
}

/// The kernel's page size (sockstat counts TCP memory in pages).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// One [`SystemMemory`] sample, stamped `t` (seconds since the caller's start).
pub fn system_memory(t: f64) -> Result<SystemMemory, HostError> {
    let m = read_meminfo()?;
    let tcp = read_sockstat()?;
    Ok(SystemMemory {
        t,
        mem_free: m.mem_free,
        mem_available: m.mem_available,
        slab: m.slab,
        slab_unreclaimable: m.slab_unreclaimable,
        tcp_inuse: tcp.inuse,
        tcp_mem_bytes: tcp.mem_pages * page_size(),
    })
}

/// How memory is brought to rest before a baseline.
#[derive(Clone, Copy, Debug)]
pub struct SettlePlan {
    /// Drop clean page cache first (only done as root; others cannot).
    pub drop_page_cache: bool,
    /// MemFree must move less than `tolerance` over one `window`.
    pub window: Duration,
    pub tolerance: u64,
    /// Give up (and say so) after this long.
    pub timeout: Duration,
}

impl Default for SettlePlan {
    fn default() -> Self {
        SettlePlan {
            drop_page_cache: true,
            window: Duration::from_secs(1),
            tolerance: 4 << 20,
            timeout: Duration::from_secs(20),
        }
    }
}

/// Drops clean page cache (when root) and waits for MemFree to stop moving: memory an earlier
/// run freed comes back for seconds, and page cache given back during a run would make MemFree
/// fall by less than the run took.
pub fn settle(plan: &SettlePlan) -> Result<MemorySettle, HostError> {
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let dropped = plan.drop_page_cache && root && drop_page_cache().is_ok();
    let step = plan.window / 4;
    let mut samples: Vec<(Instant, u64)> = vec![(Instant::now(), read_meminfo()?.mem_free)];
    loop {
        std::thread::sleep(step);
        let now = Instant::now();
        samples.push((now, read_meminfo()?.mem_free));
        let window_start = samples.iter().rev().find(|(at, _)| now.duration_since(*at) >= plan.window).copied();
        if let Some((_, before)) = window_start {
            let change = samples.last().map_or(0, |&(_, free)| free as i64 - before as i64);
            let settled = change.unsigned_abs() < plan.tolerance;
            if settled || started.elapsed() >= plan.timeout {
                return Ok(MemorySettle {
                    dropped_page_cache: dropped,
                    settled,
                    seconds: started.elapsed().as_secs_f64(),
                    last_change_bytes: change,
                    tolerance_bytes: plan.tolerance,
                });
            }
        }
    }
}

/// `vm.drop_caches = 1`: clean page cache only (dirty pages stay; nothing is synced). A
/// trigger, not a setting: there is nothing to restore.
fn drop_page_cache() -> Result<(), HostError> {
    let path = "/proc/sys/vm/drop_caches";
    std::fs::write(path, "1").map_err(|source| HostError::Read { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO_TEXT: &str = "MemTotal:       24684092 kB\nMemFree:        22376256 kB\n\
        MemAvailable:   24209808 kB\nBuffers:           18672 kB\nSlab:             130748 kB\n\
        SReclaimable:     101508 kB\nSUnreclaim:        29240 kB\n";

    #[test]
    fn meminfo_in_bytes() {
        let m = parse_meminfo(MEMINFO_TEXT).unwrap();
        assert_eq!(m.mem_total, 24_684_092 * 1024);
        assert_eq!(m.mem_free, 22_376_256 * 1024);
        assert_eq!(m.mem_available, 24_209_808 * 1024);
        assert_eq!(m.slab, 130_748 * 1024);
        assert_eq!(m.slab_unreclaimable, 29_240 * 1024);
    }

    #[test]
    fn meminfo_missing_field_is_named() {
        let err = parse_meminfo("MemTotal: 1 kB\n").unwrap_err().to_string();
        assert!(err.contains("MemFree"), "{err}");
    }

    #[test]
    fn sockstat_tcp_line() {
        let text = "sockets: used 212\nTCP: inuse 7 orphan 0 tw 3 alloc 9 mem 42\nUDP: inuse 1 mem 2\n";
        assert_eq!(parse_sockstat(text).unwrap(), TcpSockstat { inuse: 7, mem_pages: 42 });
        assert!(parse_sockstat("UDP: inuse 1 mem 2\n").is_err());
    }

    #[test]
    fn settles_or_says_it_did_not() {
        let plan = SettlePlan {
            drop_page_cache: false,
            window: Duration::from_millis(200),
            tolerance: 1 << 40,
            timeout: Duration::from_secs(2),
        };
        let s = settle(&plan).unwrap();
        assert!(s.settled && !s.dropped_page_cache && s.seconds >= 0.2, "{s:?}");
        // Nothing moves less than 0 bytes: it gives up at the timeout and says so.
        let strict = SettlePlan { tolerance: 0, timeout: Duration::from_millis(400), ..plan };
        let s = settle(&strict).unwrap();
        assert!(!s.settled && s.seconds >= 0.4 && s.seconds < 2.0, "{s:?}");
    }

    #[test]
    fn reads_this_host() {
        let s = system_memory(1.5).unwrap();
        assert!(s.mem_free > 0 && s.slab > 0);
        assert_eq!(s.t, 1.5);
    }
}
