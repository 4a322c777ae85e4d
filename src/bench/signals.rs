//! SIGINT/SIGTERM to `c2m bench`: noted, not obeyed at once, so the run can stop its load
//! cleanly and still write an (aborted) result.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static LAST: AtomicI32 = AtomicI32::new(0);
static COUNT: AtomicU32 = AtomicU32::new(0);

extern "C" fn note(signal: libc::c_int) {
    // Only atomics here: async-signal-safe.
    LAST.store(signal, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() -> nix::Result<()> {
    let action = SigAction::new(SigHandler::Handler(note), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only touches atomics.
        unsafe { sigaction(signal, &action)? };
    }
    Ok(())
}

/// The last signal received and how many have come, if any.
pub fn received() -> Option<(Signal, u32)> {
    let count = COUNT.load(Ordering::SeqCst);
    if count == 0 {
        return None;
    }
    let signal = Signal::try_from(LAST.load(Ordering::SeqCst)).unwrap_or(Signal::SIGTERM);
    Some((signal, count))
}
