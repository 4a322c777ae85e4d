//! What this host says about itself: memory (/proc/meminfo, /proc/net/sockstat), one process's
//! memory and CPU (/proc/PID/smaps_rollup, /proc/PID/stat, wait4), the machine (uname, cpuinfo,
//! sysctls), the limits this process runs under (capabilities, rlimits, cgroup), the git commit
//! of the checkout, UTC time stamps, and stop signals.

pub mod clock;
pub mod git;
pub mod limits;
pub mod machine;
pub mod memory;
pub mod process;
pub mod signal;
pub mod sockets;

/// Why something could not be read from the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: no {field:?} in it")]
    Missing { path: String, field: String },
    #[error("{call}: {source}")]
    Sys { call: &'static str, source: std::io::Error },
}

/// Reads a whole /proc (or other small) file as text.
pub(crate) fn read_text(path: &str) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|source| HostError::Read { path: path.to_string(), source })
}
