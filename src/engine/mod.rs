//! The io_uring runtime under both data planes, the server and the load generator. It knows
//! nothing of the protocol. It owns:
//! - the workers: started, pinned, made ready and stopped in one place ([`WorkerPool`]);
//! - each worker's rings, provided buffers and event loop ([`Io`], [`Service`]);
//! - the slot lifecycle: every submission for a slot is counted and stamped with its generation,
//!   stale completions are dropped here, and a service hears when a slot has gone quiet
//!   ([`slots`]), so no service keeps in-flight counts of its own;
//! - the token layout, with the engine's ops apart from each service's ([`token`]);
//! - a timing wheel for services' deadlines ([`timer`]).
//!
//! io_uring removes a syscall per operation and, with direct descriptors, the process fd table;
//! it does not bypass the kernel's TCP stack.

pub mod buf_ring;
pub mod io;
pub mod pool;
pub mod probe;
pub mod ring_set;
pub mod slots;
pub mod timer;
pub mod token;
pub mod worker;

pub use io::{Completion, Io};
pub use pool::{PoolConfig, PoolShared, WorkerPool};
pub use ring_set::{RingConfig, Waker};
pub use token::{ServiceOp, Token};
pub use worker::Service;

use std::io::Error as IoError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what} failed: {source}{}", hint(source))]
    RingSetup { what: &'static str, source: IoError },
    #[error("io_uring is not usable here: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io { what: &'static str, source: IoError },
    #[error("worker {id} failed: {message}")]
    Worker { id: usize, message: String },
}

impl EngineError {
    pub fn ring_setup(what: &'static str, source: IoError) -> Self {
        EngineError::RingSetup { what, source }
    }
    pub fn io(what: &'static str, source: IoError) -> Self {
        EngineError::Io { what, source }
    }
}

/// A hint that names the likely cause and the fix for the usual set-up errors.
fn hint(e: &IoError) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            " (io_uring is disabled for this process: check `sysctl kernel.io_uring_disabled`, 0 enables it; \
             containers may also block it with seccomp)"
        }
        Some(libc::ENOSYS) => " (this kernel was built without io_uring)",
        Some(libc::EINVAL) => " (the kernel lacks a needed io_uring feature: c2m needs Linux 6.1 or newer)",
        Some(libc::EMFILE) => {
            " (the fixed-file table is larger than RLIMIT_NOFILE allows: lower the per-ring size or raise `ulimit -n`)"
        }
        Some(libc::ENOMEM) => {
            " (out of memory, or the locked-memory limit `ulimit -l` too low: some kernels, 6.18 among them, charge ring memory to it unless the process has CAP_IPC_LOCK; see `c2m tune check`)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_up_errors_name_the_cause_and_the_fix() {
        let e = EngineError::ring_setup("io_uring_setup", IoError::from_raw_os_error(libc::EPERM));
        assert!(e.to_string().contains("kernel.io_uring_disabled"), "{e}");
        let e = EngineError::ring_setup("IORING_REGISTER_FILES_SPARSE", IoError::from_raw_os_error(libc::EMFILE));
        assert!(e.to_string().contains("RLIMIT_NOFILE"), "{e}");
        let e = EngineError::ring_setup("io_uring_setup", IoError::from_raw_os_error(libc::EINVAL));
        assert!(e.to_string().contains("6.1"), "{e}");
    }
}
