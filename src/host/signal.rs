//! Stop signals, taken synchronously: SIGINT and SIGTERM are blocked in every thread (workers
//! inherit the mask of the thread that starts them) and the main thread waits for them with a
//! timeout, so it can watch its workers between waits.

use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

/// Blocks SIGINT and SIGTERM in the calling thread (call it before starting any thread).
pub fn block_stop_signals() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    Ok(set)
}

/// Waits up to `timeout` for a signal of `set` (which must be blocked).
pub fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts =
        libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: `set` is a valid sigset_t, the info pointer may be null, and `ts` lives across the
    // call.
    let signo = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (signo > 0).then(|| Signal::try_from(signo).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_taken_not_delivered() {
        let set = block_stop_signals().unwrap();
        assert_eq!(wait_signal(&set, Duration::from_millis(1)), None);
        // SAFETY: raising a signal this thread has blocked only makes it pending.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
        assert_eq!(wait_signal(&set, Duration::from_secs(1)), Some(Signal::SIGTERM));
    }
}
