//! The event loop of one worker thread, and how workers are started and pinned.

use std::io;

use io_uring::cqueue;

use super::ring_set::RingSet;

/// What a worker runs: the engine hands it every completion and lets it act between batches.
pub trait Service {
    /// One completion from ring `ring`.
    fn on_completion(&mut self, rings: &mut RingSet, ring: u16, cqe: &cqueue::Entry);
    /// After every round over all rings: publish recycled buffers, re-arm, flush.
    fn after_batch(&mut self, rings: &mut RingSet);
    /// The loop ends once this says so (checked after every batch).
    fn done(&self) -> bool;
}

/// Completions handled per ring before moving on, so one busy ring cannot starve the others.
const REAP_BATCH: usize = 512;

/// Runs `service` over `rings` until it is done. Blocks in the rings' shared eventfd only when
/// no ring has anything to submit or reap.
pub fn run_worker<S: Service>(rings: &mut RingSet, service: &mut S) -> io::Result<()> {
    let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(REAP_BATCH);
    loop {
        let mut progressed = false;
        for index in 0..rings.len() {
            let ring = &mut rings.rings[index];
            // Reap what is there before entering again: the service's view of the ring (e.g.
            // free table slots) must not fall further behind the kernel's.
            if !ring.has_completions() && (ring.needs_enter() || ring.busy) {
                ring.submit()?;
            }
            cqes.clear();
            ring.reap(&mut cqes);
            // A ring that gave completions is entered again next round: the kernel may hold
            // more task work for it without flagging it (see `Ring::submit`).
            ring.busy = !cqes.is_empty();
            if ring.busy {
                progressed = true;
            }
            for cqe in &cqes {
                service.on_completion(rings, index as u16, cqe);
            }
        }
        service.after_batch(rings);
        if service.done() {
            return Ok(());
        }
        if !progressed {
            // Anything pushed by after_batch must reach the kernel before we sleep.
            let mut pending = false;
            for ring in &mut rings.rings {
                if ring.needs_enter() {
                    ring.submit()?;
                    pending = true;
                }
                pending |= ring.has_completions();
            }
            if !pending {
                rings.wait()?;
            }
        }
    }
}

/// Starts a named thread pinned to `core` (if the OS lets us) running `body`.
pub fn spawn_pinned<T, F>(
    name: String,
    core: Option<core_affinity::CoreId>,
    body: F,
) -> io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name).spawn(move || {
        if let Some(core) = core {
            core_affinity::set_for_current(core);
        }
        body()
    })
}
