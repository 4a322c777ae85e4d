//! System-wide memory: /proc/meminfo and /proc/net/sockstat.
//!
//! MemFree is what the guards watch, not MemAvailable: MemAvailable counts live sockets' inodes
//! and dentries as reclaimable and overstates what is free (see DESIGN.md).

use super::{HostError, read_text};
use crate::schema::bench::SystemMemory;

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
    fn reads_this_host() {
        let s = system_memory(1.5).unwrap();
        assert!(s.mem_free > 0 && s.slab > 0);
        assert_eq!(s.t, 1.5);
    }
}
