//! The io_uring runtime shared by the server and the load generator. It knows nothing of the
//! protocol: it owns rings, buffers, tokens and timers, and hands completions to a [`Service`].
//!
//! io_uring removes a syscall per operation and, with direct descriptors, the process fd table;
//! the kernel's TCP stack does the same work as for any other server.

pub mod buf_ring;
pub mod probe;
pub mod ring_set;
pub mod timer;
pub mod token;
pub mod worker;

pub use ring_set::{Ring, RingConfig, RingSet, Waker};
pub use token::{Op, Token};
pub use worker::{Service, run_worker};

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what} failed: {source}{}", hint(source))]
    RingSetup { what: &'static str, source: io::Error },
    #[error("io_uring is not usable here: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io { what: &'static str, source: io::Error },
}

impl EngineError {
    pub fn ring_setup(what: &'static str, source: io::Error) -> Self {
        EngineError::RingSetup { what, source }
    }
    pub fn io(what: &'static str, source: io::Error) -> Self {
        EngineError::Io { what, source }
    }
}

/// A hint that names the likely cause and the fix for the usual set-up errors.
fn hint(e: &io::Error) -> &'static str {
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
        let e = EngineError::ring_setup("io_uring_setup", io::Error::from_raw_os_error(libc::EPERM));
        assert!(e.to_string().contains("kernel.io_uring_disabled"), "{e}");
        let e = EngineError::ring_setup("IORING_REGISTER_FILES_SPARSE", io::Error::from_raw_os_error(libc::EMFILE));
        assert!(e.to_string().contains("RLIMIT_NOFILE"), "{e}");
        let e = EngineError::ring_setup("io_uring_setup", io::Error::from_raw_os_error(libc::EINVAL));
        assert!(e.to_string().contains("6.1"), "{e}");
    }
}
