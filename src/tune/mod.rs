//! `c2m tune`: what caps connections on this box and how to lift it.
//!
//! - [`check`]: every limit that caps connections, read into a [`check::Snapshot`] and judged
//!   against a count, so tests can feed fake values.
//! - [`profile`]: sysctl.d profiles (`tuning/*.conf`) applied to /proc/sys with the old values
//!   saved first, and restored from that state file.
//! - [`size`]: connections and connect rate other hardware would reach, from a measured result.
//! - [`sysctl`]: /proc/sys (or a test tree standing in for it) and the sysctl.d format.

pub mod check;
pub mod cli;
pub mod host;
pub mod profile;
pub mod size;
pub mod sysctl;

pub use cli::{TuneArgs, run};

/// Why a tune command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {why}")]
    Parse { path: String, line: usize, why: String },
    #[error(
        "state file {0} already exists: an earlier apply has not been restored, and overwriting it \
         would lose the original values. Run `c2m tune restore` first (or pass --force)"
    )]
    StateExists(String),
    #[error("state file {path}: {why}")]
    State { path: String, why: String },
    #[error("setting {key} to {value:?} failed: {source}")]
    Write { key: String, value: String, source: std::io::Error },
    #[error("no profile {0:?}: give a path to a sysctl.d file or a name from tuning/ (c2m-1m, c2m-2m, c2m-10m)")]
    NoProfile(String),
    #[error("{0}")]
    Result(String),
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
}

impl TuneError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> TuneError {
        TuneError::Io { path: path.as_ref().display().to_string(), source }
    }
}
