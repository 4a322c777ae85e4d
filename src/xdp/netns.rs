//! Entering a network namespace from a thread: `setns(2)` on `/var/run/netns/NAME`, the file
//! `ip netns add` makes. Only the calling thread moves; sockets keep the namespace they were
//! created in, so one thread can make sockets in several namespaces and then drive them all.

use std::fs::File;
use std::os::fd::AsFd;

use super::{XdpError, sys, syscall};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The thread is in another network namespace while this lives, and back in its previous one
/// when it drops (or for good after [`NetnsGuard::stay`]).
#[must_use = "dropping the guard moves the thread back at once"]
pub struct NetnsGuard {
    previous: Option<File>,
    name: String,
}

/// Moves the calling thread into network namespace `name` (as `ip netns exec NAME` would).
pub fn enter(name: &str) -> Result<NetnsGuard, XdpError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(XdpError::Config(format!("{name:?} is not a network namespace name")));
    }
    let previous = File::open("/proc/thread-self/ns/net").map_err(|e| syscall("open /proc/thread-self/ns/net", e))?;
    let target = File::open(format!("{NETNS_DIR}/{name}"))
        .map_err(|source| XdpError::NoNetns { name: name.to_string(), source })?;
    sys::setns_net(target.as_fd()).map_err(|e| syscall("setns(CLONE_NEWNET)", e))?;
    Ok(NetnsGuard { previous: Some(previous), name: name.to_string() })
}

/// Runs `f` on a new thread inside namespace `name` and returns its result.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, XdpError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _in = enter(name)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

impl NetnsGuard {
    /// The namespace the thread is in.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps the thread in the namespace (a worker that runs there for good).
    pub fn stay(mut self) {
        self.previous = None;
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Some(prev) = self.previous.take() {
            // setns back into a namespace we hold open fails only if the process lost
            // CAP_SYS_ADMIN meanwhile; a thread left in the wrong namespace must not go unnoticed.
            if let Err(e) = sys::setns_net(prev.as_fd())
                && !std::thread::panicking()
            {
                panic!("could not return from network namespace {}: {e}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_and_missing_names_are_errors() {
        assert!(matches!(enter("../etc"), Err(XdpError::Config(_))));
        match enter("c2m-no-such-netns") {
            Err(e @ XdpError::NoNetns { .. }) => assert!(e.to_string().contains("netns.sh up"), "{e}"),
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("entered a namespace that does not exist"),
        }
    }
}
