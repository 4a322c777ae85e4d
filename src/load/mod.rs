//! `c2m load`: the load generator, a second user of the engine and the transport seam. One
//! pinned worker per core opens its share of the connections through its data plane (the
//! kernel one: socket, options, bind and connect linked in one io_uring chain into a fixed-file
//! slot, so no socket enters the fd table), logs them in, sends messages on an open-loop
//! schedule and records latency in HdrHistograms (`conns/`). The main thread moves the run
//! through its phases, prints the live line, writes the interval log and builds the report.

pub mod chat;
pub mod cli;
pub mod config;
pub mod conn;
pub mod conns;
pub mod metrics;
pub mod progress;
pub mod reconnect;
pub mod run;
pub mod shard;
pub mod sources;
pub mod stats;
pub mod target;

pub use config::{LoadConfig, Workload};
pub use run::{RunOptions, run};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Slab(#[from] crate::slab::SlabError),
    #[error("worker {0}: {1}")]
    Worker(usize, String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

impl LoadError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> LoadError {
        LoadError::Io { what: what.into(), source }
    }
}
