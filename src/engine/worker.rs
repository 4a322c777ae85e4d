//! The event loop of one worker thread: enter the rings that need it, reap, hand each
//! completion to the service, and sleep on the rings' shared eventfd when nothing moves.

use std::io;

use io_uring::cqueue;

use super::ServiceOp;
use super::io::{Completion, Io};
use super::slots::Arrival;
use super::token::{EngineOp, Token};

/// What a worker runs: the engine hands it every completion of its own ops, its ticks and
/// wake-ups, and tells it when a slot has gone quiet.
pub trait Service {
    /// The service's own operations (declared with `service_ops!`).
    type Op: ServiceOp;
    /// Once, on the worker thread, before the first round: arm what must be armed.
    fn start(&mut self, io: &mut Io<Self::Op>);
    /// One completion of the service's ops; a slot's stale ones never arrive here.
    fn on_completion(&mut self, io: &mut Io<Self::Op>, c: Completion<Self::Op>);
    /// A retired slot has nothing left in flight: release what it owns; it may be reused.
    fn on_quiet(&mut self, io: &mut Io<Self::Op>, slot: u32);
    /// The tick asked for with `Io::tick_every` or `Io::tick_at`.
    fn on_tick(&mut self, io: &mut Io<Self::Op>);
    /// Another worker woke this one (`Io::wake`).
    fn on_wake(&mut self, _io: &mut Io<Self::Op>) {}
    /// After every round over all rings: re-arm, flush, check for stop.
    fn after_batch(&mut self, io: &mut Io<Self::Op>);
    /// The loop ends once this says so (checked after every round).
    fn done(&self) -> bool;
}

/// Completions handled per ring before moving on, so one busy ring cannot starve the others.
const REAP_BATCH: usize = 512;

/// Runs `service` until it is done. Blocks in the rings' shared eventfd only when no ring has
/// anything to submit or reap.
pub fn run<S: Service>(io: &mut Io<S::Op>, service: &mut S) -> io::Result<()> {
    service.start(io);
    let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(REAP_BATCH);
    loop {
        let mut progressed = false;
        // Rings added during the round (a worker that grows) are entered from the next one.
        for index in 0..io.rings().len() {
            let ring = io.rings_mut().ring_mut(index);
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
            progressed |= ring.busy;
            for cqe in &cqes {
                dispatch(io, service, index, cqe);
            }
        }
        // Buffers handed back during the round go to the kernel before anything is re-armed:
        // a receive armed on an empty buffer ring ends at once with ENOBUFS.
        for ring in io.rings_mut().iter_mut() {
            ring.bufs_mut().commit();
        }
        service.after_batch(io);
        release_quiet(io, service);
        // And those handed back by after_batch (a resumed connection's held input).
        for ring in io.rings_mut().iter_mut() {
            ring.bufs_mut().commit();
        }
        if service.done() {
            return Ok(());
        }
        if !progressed && !std::mem::take(&mut io.awake) {
            // Anything pushed by after_batch must reach the kernel before we sleep.
            let mut pending = false;
            for ring in io.rings_mut().iter_mut() {
                if ring.needs_enter() {
                    ring.submit()?;
                    pending = true;
                }
                pending |= ring.has_completions();
            }
            if !pending {
                io.rings().wait()?;
            }
        }
    }
}

fn dispatch<S: Service>(io: &mut Io<S::Op>, service: &mut S, ring: usize, cqe: &cqueue::Entry) {
    let token = Token(cqe.user_data());
    if let Some(op) = EngineOp::from_code(token.op()) {
        match op {
            EngineOp::Tick => {
                io.ticked(cqueue::more(cqe.flags()));
                service.on_tick(io);
            }
            EngineOp::Wake => service.on_wake(io),
            EngineOp::WakeSent => io.counts.wakes_failed += 1,
        }
        return release_quiet(io, service);
    }
    let Some(op) = S::Op::from_code(token.op()) else {
        io.counts.unknown += 1;
        return;
    };
    let (slot, last) = (token.slot(), !cqueue::more(cqe.flags()));
    if op.on_slot() && io.slots.arrive(slot, token.generation(), last) == Arrival::Stale {
        // Made for an earlier user of the slot: a provided buffer it took still goes back.
        if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
            io.recycle(ring, bid);
        }
        return;
    }
    service.on_completion(io, Completion { op, ring, slot, result: cqe.result(), flags: cqe.flags() });
    release_quiet(io, service);
}

fn release_quiet<S: Service>(io: &mut Io<S::Op>, service: &mut S) {
    while let Some(slot) = io.slots.take_quiet() {
        service.on_quiet(io, slot);
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
