//! `Io`: what a service may do with its worker's rings. It owns the rings, the slot table and
//! the engine's own operations (tick, cross-worker wake), so a service never touches a ring's
//! internals, and every submission goes through one place that counts it and stamps it.

use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use io_uring::types::{Fd, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode, squeue};

use super::ring_set::{Ring, RingSet};
use super::slots::{SlotAnomalies, SlotTable};
use super::token::{EngineOp, Token};
use super::{EngineError, ServiceOp};

/// One completion, decoded, as the engine hands it to a service.
#[derive(Clone, Copy, Debug)]
pub struct Completion<Op> {
    pub op: Op,
    pub ring: usize,
    /// The slot (for a slot's op), or the payload the op was submitted with.
    pub slot: u32,
    pub result: i32,
    pub flags: u32,
}

impl<Op> Completion<Op> {
    /// More completions follow for the same (multishot) request.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel picked, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// How the worker's tick is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tick {
    Off,
    /// A multishot timeout: one completion per period, re-armed if the kernel ends it.
    Every,
    /// A one-shot absolute timeout; the service asks for the next one.
    At,
}

/// Counters of the engine's own (read by the service for its metrics).
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineCounts {
    pub slots: SlotAnomalies,
    /// Completions whose op no vocabulary knows.
    pub unknown: u64,
    /// MSG_RING wake-ups the kernel refused.
    pub wakes_failed: u64,
}

pub struct Io<Op> {
    // Field order matters: the rings go first, so the kernel is done with every operation
    // before anything they point at (the timespec) is freed.
    rings: RingSet,
    pub(super) slots: SlotTable,
    worker: usize,
    /// Ring 0 of every worker, the targets of MSG_RING; known once all workers have started.
    peers: Arc<OnceLock<Vec<RawFd>>>,
    tick: Box<Timespec>,
    tick_mode: Tick,
    pub(super) counts: EngineCounts,
    /// The service has work left that no completion will announce: do not sleep this round.
    pub(super) awake: bool,
    _op: PhantomData<Op>,
}

impl<Op: ServiceOp> Io<Op> {
    pub(super) fn new(worker: usize, rings: RingSet, peers: Arc<OnceLock<Vec<RawFd>>>) -> Io<Op> {
        Io {
            rings,
            slots: SlotTable::empty(),
            worker,
            peers,
            tick: Box::new(Timespec::new()),
            tick_mode: Tick::Off,
            counts: EngineCounts::default(),
            awake: false,
            _op: PhantomData,
        }
    }

    /// This worker's index in its pool.
    pub fn worker(&self) -> usize {
        self.worker
    }

    pub fn rings(&self) -> &RingSet {
        &self.rings
    }

    pub(super) fn rings_mut(&mut self) -> &mut RingSet {
        &mut self.rings
    }

    pub fn ring(&self, ring: usize) -> &Ring {
        self.rings.ring(ring)
    }

    /// Adds a ring (see [`RingSet::add_ring`]) and returns its index.
    pub fn add_ring(&mut self) -> Result<usize, EngineError> {
        self.rings.add_ring()
    }

    /// Work is left that no completion will announce (a ring of frames not drained): the
    /// worker goes round again instead of sleeping.
    pub fn keep_awake(&mut self) {
        self.awake = true;
    }

    // ---- slots ------------------------------------------------------------------------

    /// Room for slots `0..capacity`; a service calls this once, before opening any.
    pub fn reserve_slots(&mut self, capacity: usize) -> Result<(), EngineError> {
        self.slots.reserve(capacity)
    }

    /// A connection takes `slot`.
    pub fn open(&mut self, slot: u32) {
        self.slots.open(slot)
    }

    /// The connection on `slot` is done; the service hears `on_quiet` once nothing is in flight.
    pub fn retire(&mut self, slot: u32) {
        self.slots.retire(slot)
    }

    pub fn generation(&self, slot: u32) -> u32 {
        self.slots.generation(slot)
    }

    /// Operations in flight on `slot`.
    pub fn in_flight(&self, slot: u32) -> u16 {
        self.slots.in_flight(slot)
    }

    pub fn counts(&self) -> EngineCounts {
        EngineCounts { slots: self.slots.anomalies(), ..self.counts }
    }

    // ---- submitting -------------------------------------------------------------------

    /// The `user_data` of `op` for `slot` on `ring`, with the slot's current generation (not
    /// counted: [`Io::submit_chain`] counts what it queues).
    pub fn token(&self, ring: usize, op: Op, slot: u32) -> u64 {
        let generation = if op.on_slot() { self.slots.generation(slot) } else { 0 };
        Token::new(op.code(), ring as u16, generation, slot).0
    }

    /// Queues `entry` as `op` on `ring`. A slot's op is counted in flight on `slot` and stamped
    /// with its generation; any other op carries `slot` as its payload.
    ///
    /// # Safety
    /// The one contract of every submission in c2m: each pointer `entry` carries stays valid
    /// until the operation's final completion has been reaped. Memory a slot owns may therefore
    /// be released only in `Service::on_quiet` (the engine reports a slot quiet only when none of
    /// its operations is in flight), and memory that belongs to no slot must outlive the rings
    /// (a worker drops its rings before its service: see `pool.rs`).
    // SAFETY: a function marked unsafe: its callers hold the contract above, each call site says how.
    pub unsafe fn submit(&mut self, ring: usize, op: Op, slot: u32, entry: squeue::Entry) {
        let generation = if op.on_slot() { self.slots.stamp(slot) } else { 0 };
        let entry = entry.user_data(Token::new(op.code(), ring as u16, generation, slot).0);
        // SAFETY: forwarded from this function's contract.
        unsafe { self.rings.ring_mut(ring).push(entry) }
    }

    /// Queues a linked chain whole or not at all (`false`: no room now, nothing queued or
    /// counted). Each entry's `user_data` must come from [`Io::token`] for `slot`; the slot's
    /// ops among them are counted once the chain is in.
    ///
    /// # Safety
    /// As for [`Io::submit`], for every entry of the chain.
    // SAFETY: a function marked unsafe: its callers hold the contract above, each call site says how.
    pub unsafe fn submit_chain(&mut self, ring: usize, slot: u32, entries: &[squeue::Entry]) -> bool {
        // SAFETY: forwarded from this function's contract.
        if !unsafe { self.rings.ring_mut(ring).push_chain(entries) } {
            return false;
        }
        for entry in entries {
            let token = Token(entry.get_user_data());
            debug_assert_eq!(token.slot(), slot);
            if Op::from_code(token.op()).is_some_and(|op| op.on_slot()) {
                self.slots.stamp(slot);
            }
        }
        true
    }

    // ---- buffers ------------------------------------------------------------------------

    /// The first `len` bytes of provided buffer `bid` of `ring`, as the kernel filled them.
    #[inline]
    pub fn buffer(&self, ring: usize, bid: u16, len: usize) -> &[u8] {
        self.rings.ring(ring).bufs().data(bid, len)
    }

    /// Gives a provided buffer back to its ring (published after the batch).
    #[inline]
    pub fn recycle(&mut self, ring: usize, bid: u16) {
        self.rings.ring_mut(ring).bufs_mut().recycle(bid)
    }

    // ---- the engine's own operations ------------------------------------------------------

    /// Ticks the service every `period` from now on (a multishot timeout on ring 0).
    pub fn tick_every(&mut self, period: Duration) {
        *self.tick = Timespec::from(period);
        self.tick_mode = Tick::Every;
        self.arm_tick(TimeoutFlags::MULTISHOT);
    }

    /// Ticks the service once, at `monotonic` (CLOCK_MONOTONIC); the service asks again for the
    /// next one. An absolute deadline keeps ticks on a grid without drift.
    pub fn tick_at(&mut self, monotonic: Duration) {
        *self.tick = Timespec::new().sec(monotonic.as_secs()).nsec(monotonic.subsec_nanos());
        self.tick_mode = Tick::At;
        self.arm_tick(TimeoutFlags::ABS);
    }

    fn arm_tick(&mut self, flags: TimeoutFlags) {
        let entry = opcode::Timeout::new(&*self.tick).flags(flags).build().user_data(Token::engine(EngineOp::Tick).0);
        // SAFETY: the timespec is boxed and owned by `self`, whose rings are dropped first.
        unsafe { self.rings.ring_mut(0).push(entry) }
    }

    /// A tick completion: re-arms a periodic tick the kernel ended.
    pub(super) fn ticked(&mut self, more: bool) {
        if self.tick_mode == Tick::Every && !more {
            self.arm_tick(TimeoutFlags::MULTISHOT);
        }
    }

    /// Wakes worker `to` with an IORING_OP_MSG_RING from our ring 0; its service hears `on_wake`.
    /// `false` before every worker has started (the caller's next tick covers it).
    pub fn wake(&mut self, to: usize) -> bool {
        let Some(fd) = self.peers.get().and_then(|fds| fds.get(to).copied()) else { return false };
        let entry = opcode::MsgRingData::new(Fd(fd), 0, Token::engine(EngineOp::Wake).0, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(Token::engine(EngineOp::WakeSent).0);
        // SAFETY: a MSG_RING entry points at no memory of ours; the target is another worker's
        // ring, which lives until the pool stops (a closed one only fails the request).
        unsafe { self.rings.ring_mut(0).push(entry) };
        true
    }
}
