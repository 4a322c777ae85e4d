//! `c2m tune`: what caps connections on this box and how to lift it.
//!
//! - [`check`]: every limit that caps connections, read into a [`check::Snapshot`] and judged
//!   against a count, so tests can feed fake values.
//! - [`profile`]: sysctl.d profiles (`tuning/*.conf`, built into the binary) applied to /proc/sys
//!   with the old values saved first, and restored from that state file.
//! - [`scoped`]: a profile applied around a piece of work (`c2m bench --ab`'s rounds) and
//!   restored after it, also when the work fails.
//! - [`compare`]: a profile against the values in force (`c2m tune verify`), and two profiles'
//!   sysctl diff on this box.
//! - [`state`]: the state file (one fixed place, private, locked while an apply or restore runs).
//! - [`size`]: connections and connect rate other hardware would reach, from a measured result.
//! - [`sysctl`]: /proc/sys (or a test tree standing in for it) and the sysctl.d format.

pub mod capacity;
pub mod check;
pub mod cli;
pub mod compare;
pub mod profile;
pub mod scoped;
pub mod size;
pub mod state;
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
    #[error(
        "no built-in profile {0:?}: the built-in ones are {names}; a file is read only when named by a path \
         (one with a '/' or ending in .conf, e.g. ./{0}.conf)",
        names = profile::SHIPPED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )]
    NoProfile(String),
    #[error("sysctl key {key:?}: {why}")]
    Key { key: String, why: String },
    #[error(
        "{lock}: another `c2m tune apply` or `c2m tune restore` holds this lock; waited {waited_s} s. \
         Try again once it has finished"
    )]
    Busy { lock: String, waited_s: u64 },
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
