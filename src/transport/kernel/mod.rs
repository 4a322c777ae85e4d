//! The kernel data plane: io_uring over kernel TCP sockets held as direct descriptors (they
//! never enter the fd table, so one process holds more than RLIMIT_NOFILE). It accepts (a
//! server) or connects (a load generator), arms receives into provided buffers, sends straight
//! from the owner's memory, holds a paused connection's input, and closes; the owner (a
//! [`Handler`]) does everything else.
//!
//! io_uring removes a syscall per operation; every connection is still a kernel socket, with
//! the kernel's TCP stack and its memory.

mod accept;
mod connect;

pub use accept::{accept_queue_len, ensure_port_free, listener};
mod held;
mod stream;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::Fixed;

use self::accept::AcceptState;
use self::connect::ConnectPool;
use self::held::HeldInput;
use super::{ConnId, Handler, Request, Requests, TickPlan};
use crate::engine::{Completion, EngineError, Io, Service};
use crate::stats::TransportStats;

crate::service_ops! {
    /// The kernel data plane's operations.
    pub enum KernelOp {
        /// Multishot accept on a ring (payload: the ring's accept generation).
        Accept: free,
        AcceptCancel: free,
        /// ERROR 5 to a connection that found no room, then its shutdown and close (payload: the
        /// direct descriptor).
        RejectSend: free,
        RejectShutdown: free,
        RejectClose: free,
        /// A connection's multishot poll for input (poll arming).
        Readable: slot,
        /// A receive (one-shot or multishot) into a provided buffer.
        Recv: slot,
        Send: slot,
        /// Cancel of the armed poll or receive.
        Cancel: slot,
        /// The write side shut after a graceful close's last bytes; input still drained.
        HalfClose: slot,
        /// Shutdown before the close of a connection that did not half-close.
        Shutdown: slot,
        /// The descriptor's close, once nothing else is in flight on it (payload: the
        /// descriptor): an operation still queued on a closed index would hit the next
        /// connection given that index.
        Close: free,
        /// Steps of a connect chain that post a completion only when they fail
        /// (CQE_SKIP_SUCCESS), so they cannot be counted in flight (payload: the slot).
        Socket: free,
        SockOpt: free,
        Bind: free,
        Connect: slot,
        ConnectTimeout: slot,
    }
}

/// How a connection waits for input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvArm {
    /// A multishot poll; a one-shot receive with a provided buffer when it fires. An idle
    /// connection holds one `io_kiocb` (256 B) in the kernel.
    Poll,
    /// A multishot receive: fewest completions, ~860 B of kernel memory per idle connection (its
    /// `io_kiocb`, a 512 B async msghdr and a poll entry).
    Multishot,
    /// A one-shot receive armed only while the owner wants input (after a send, or when
    /// `Handler::wants_input` says so): an idle connection holds no request at all.
    OnDemand,
}

/// A server's side: the listener and how its rings grow.
pub struct Listen {
    pub fd: OwnedFd,
    /// Free table slots a ring keeps before it stops accepting: one accept run can take a whole
    /// listen backlog, and a full table would drop those connections.
    pub margin: u32,
    /// Rings the worker may grow to.
    pub max_rings: usize,
}

/// A load generator's side: active opens.
pub struct ConnectPlan {
    /// Connect chains in flight at most (each holds a record with its addresses).
    pub concurrency: usize,
    /// The connect's linked timeout (zero: none).
    pub timeout: Duration,
    /// Rings the worker may grow to.
    pub max_rings: usize,
}

pub struct KernelConfig {
    pub recv: RecvArm,
    /// Connections (slots) at most.
    pub slots: usize,
    pub listen: Option<Listen>,
    pub connect: Option<ConnectPlan>,
}

/// Per-connection state, 12 bytes in a dense array indexed by the owner's slot.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
struct Sock {
    /// Direct descriptor (index in its ring's fixed-file table).
    file: u32,
    /// Bytes of the send in flight; while connecting, the index of its connect record.
    send_len: u32,
    ring: u16,
    flags: u16,
}

mod flag {
    /// Given to the owner (`opened`) and not yet closing.
    pub const OPEN: u16 = 1;
    pub const CONNECTING: u16 = 1 << 1;
    /// A poll (poll arming) or a receive (the other modes) is armed.
    pub const RECV_ARMED: u16 = 1 << 2;
    /// Poll arming: a one-shot receive is in flight.
    pub const READING: u16 = 1 << 3;
    /// Poll arming: there may be more input than the last receive took: receive again.
    pub const READ_AGAIN: u16 = 1 << 4;
    /// The peer's input ended (a receive returned 0).
    pub const INPUT_ENDED: u16 = 1 << 5;
    /// A poll saw the peer's FIN or an error: read until a receive returns 0 or fails (one poll
    /// completion may stand for several wake-ups).
    pub const PEER_HUP: u16 = 1 << 6;
    /// The owner left input unconsumed: no receive armed; the rest is held.
    pub const PAUSED: u16 = 1 << 7;
    pub const SENDING: u16 = 1 << 8;
    /// A graceful close: input is dropped, output drains, then FIN.
    pub const CLOSING: u16 = 1 << 9;
    pub const WRITE_SHUT: u16 = 1 << 10;
    /// The close is under way; the slot is retired.
    pub const TEARDOWN: u16 = 1 << 11;
    /// Closed while its connect chain was in flight: close when the chain ends.
    pub const CLOSE_WANTED: u16 = 1 << 12;
    /// A descriptor slot is held (closed once the connection is quiet).
    pub const FILE: u16 = 1 << 13;
}

impl Sock {
    fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
}

/// Free direct descriptors of one ring: the kernel picks them for accepts, this worker for
/// connects (a chain's later steps must name the socket's slot).
#[derive(Default)]
struct RingFiles {
    in_use: u32,
    capacity: u32,
    /// Connect mode: descriptors given back, and the first never handed out.
    free: Vec<u32>,
    fresh: u32,
}

/// The kernel data plane for one worker, driving the owner `H`. Its stats `S` hold
/// [`TransportStats`] (the server's or the load's own counters).
pub struct KernelTransport<H, S> {
    handler: H,
    stats: Arc<S>,
    recv: RecvArm,
    socks: Vec<Sock>,
    files: Vec<RingFiles>,
    listen: Option<Listen>,
    accept: Vec<AcceptState>,
    accepting: bool,
    /// Ticks seen; a failed accept waits for the next one.
    ticks: u32,
    accepted_since_tick: u32,
    connects: ConnectPool,
    max_rings: usize,
    held: HeldInput,
    /// Connections whose receive is to be armed (or read again) after the batch.
    rearm: Vec<ConnId>,
    /// Connections whose cancel found nothing while the receive was still armed: sent again at
    /// the next tick.
    recancel: Vec<ConnId>,
    tick_plan: Option<TickPlan>,
    /// Descriptor closes in flight: the worker stops only once they are done, so every
    /// descriptor it opened is closed and counted back.
    closes: u32,
    q: Requests,
    pending: Vec<Request>,
    scratch: Vec<held::Held>,
}

impl<H: Handler, S: AsRef<TransportStats>> KernelTransport<H, S> {
    /// Builds the transport on the worker's thread (`io` is its engine context).
    pub fn new(
        io: &mut Io<KernelOp>,
        cfg: KernelConfig,
        handler: H,
        stats: Arc<S>,
    ) -> Result<KernelTransport<H, S>, EngineError> {
        io.reserve_slots(cfg.slots)?;
        let max_rings = match (&cfg.listen, &cfg.connect) {
            (Some(l), _) => l.max_rings,
            (None, Some(c)) => c.max_rings,
            (None, None) => io.rings().len(),
        };
        let connects = match &cfg.connect {
            Some(plan) => ConnectPool::new(plan.concurrency, plan.timeout),
            None => ConnectPool::new(0, Duration::ZERO),
        };
        let rings = io.rings().len();
        let mut t = KernelTransport {
            handler,
            stats,
            recv: cfg.recv,
            socks: bytemuck::zeroed_vec(cfg.slots),
            files: Vec::new(),
            accepting: cfg.listen.is_some(),
            listen: cfg.listen,
            accept: Vec::new(),
            ticks: 0,
            accepted_since_tick: 0,
            connects,
            max_rings,
            held: HeldInput::new(0),
            rearm: Vec::new(),
            recancel: Vec::new(),
            tick_plan: None,
            closes: 0,
            q: Requests::default(),
            pending: Vec::new(),
            scratch: Vec::new(),
        };
        for ring in 0..rings {
            t.ring_added(io, ring);
        }
        Ok(t)
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    pub fn into_handler(self) -> H {
        self.handler
    }

    fn stats(&self) -> &TransportStats {
        (*self.stats).as_ref()
    }

    /// Book-keeping for a new ring (at start, or grown).
    fn ring_added(&mut self, io: &mut Io<KernelOp>, ring: usize) {
        debug_assert_eq!(ring, self.files.len());
        self.files.push(RingFiles { capacity: io.ring(ring).files(), ..Default::default() });
        self.held.add_ring();
        if self.listen.is_some() {
            self.accept.push(AcceptState::default());
        }
        self.stats().rings.set(io.rings().len() as u64);
        self.stats().recv_buffer_bytes.set(io.rings().buffer_bytes() as u64);
    }

    /// Carries out what the owner asked for, in order, until it asks nothing more.
    fn apply(&mut self, io: &mut Io<KernelOp>) {
        loop {
            self.q.take(&mut self.pending);
            if self.pending.is_empty() {
                return;
            }
            let mut pending = std::mem::take(&mut self.pending);
            for request in pending.drain(..) {
                match request {
                    Request::Send(conn) => self.flush(io, conn),
                    Request::Resume(conn) => self.resume(io, conn),
                    Request::Close(conn, how) => self.close(io, conn, how),
                    Request::Connect { conn, from, to } => self.start_connect(io, conn, from, to),
                    Request::StopAccepting => self.stop_accepting(io),
                    Request::Wake(worker) => {
                        io.wake(worker);
                    }
                }
            }
            self.pending = pending;
        }
    }

    /// One submission; the one place this data plane calls into the engine's unsafe submit.
    fn submit(&mut self, io: &mut Io<KernelOp>, ring: usize, op: KernelOp, slot: u32, entry: squeue::Entry) {
        // SAFETY: every entry this module builds points only at (a) the owner's output bytes,
        // pinned by `Handler::output` until `sent` and owned by a slot that the engine reports
        // quiet only after this send completed; (b) records of the connect pool and the refusal
        // bytes, owned by this transport or its owner, which outlive the rings (the pool drops
        // a worker's rings before its service); (c) statics.
        unsafe { io.submit(ring, op, slot, entry) }
    }
}

impl<H: Handler, S: AsRef<TransportStats>> Service for KernelTransport<H, S> {
    type Op = KernelOp;

    fn start(&mut self, io: &mut Io<KernelOp>) {
        let plan = self.handler.start(&mut self.q);
        match plan {
            TickPlan::Every(period) => io.tick_every(period),
            TickPlan::At(at) => io.tick_at(at),
        }
        self.tick_plan = Some(plan);
        for ring in 0..io.rings().len() {
            self.arm_accept(io, ring);
        }
        self.apply(io);
    }

    fn on_completion(&mut self, io: &mut Io<KernelOp>, c: Completion<KernelOp>) {
        match c.op {
            KernelOp::Accept => self.on_accept(io, c),
            KernelOp::AcceptCancel => {}
            KernelOp::RejectSend | KernelOp::RejectShutdown | KernelOp::RejectClose => self.on_reject(io, c),
            KernelOp::Readable => self.on_readable(io, c),
            KernelOp::Recv => self.on_recv(io, c),
            KernelOp::Send => self.on_send(io, c),
            KernelOp::Cancel => {
                // The cancel found nothing while the receive is still armed (it was between the
                // poll table and its task work): try again at the next tick.
                if c.result < 0 && self.socks[c.slot as usize].has(flag::RECV_ARMED) {
                    self.recancel.push(c.slot);
                }
            }
            KernelOp::HalfClose => {}
            KernelOp::Shutdown => {}
            KernelOp::Close => {
                self.closes -= 1;
                self.file_released(io, c.ring, c.slot);
            }
            KernelOp::Socket | KernelOp::SockOpt | KernelOp::Bind => self.on_connect_step(io, c),
            KernelOp::Connect | KernelOp::ConnectTimeout => self.on_connect_step(io, c),
        }
        self.apply(io);
    }

    fn on_quiet(&mut self, io: &mut Io<KernelOp>, slot: u32) {
        let conn = slot;
        self.release_held(io, conn);
        self.rearm.retain(|&c| c != conn);
        self.recancel.retain(|&c| c != conn);
        let s = std::mem::take(&mut self.socks[conn as usize]);
        if s.has(flag::FILE) {
            // Nothing is in flight on the descriptor any more: close it. Its table slot is
            // free for another connection only once this completes.
            self.submit(io, s.ring as usize, KernelOp::Close, s.file, opcode::Close::new(Fixed(s.file)).build());
            self.closes += 1;
        }
        self.handler.released(&mut self.q, conn);
        self.q.forget(conn);
        self.apply(io);
    }

    fn on_tick(&mut self, io: &mut Io<KernelOp>) {
        self.ticks = self.ticks.wrapping_add(1);
        if self.listen.is_some() {
            for ring in 0..io.rings().len() {
                // Accepts that failed wait for a tick before they are tried again.
                self.maybe_arm_accept(io, ring);
            }
            self.watch_accept_queue(io);
        }
        for conn in std::mem::take(&mut self.recancel) {
            let s = self.socks[conn as usize];
            if s.has(flag::TEARDOWN) && s.has(flag::RECV_ARMED) {
                self.cancel_recv(io, conn);
            }
        }
        let counts = io.counts();
        let stats = self.stats();
        stats.sq_backlog.set(io.rings().backlog_len() as u64);
        stats.stale_completions.set(counts.slots.stale);
        stats.unexpected_completions.set(counts.slots.unexpected);
        let next = self.handler.tick(&mut self.q);
        if let (Some(TickPlan::At(_)), Some(at)) = (self.tick_plan, next) {
            io.tick_at(at);
        }
        self.apply(io);
    }

    fn on_wake(&mut self, io: &mut Io<KernelOp>) {
        self.handler.wake(&mut self.q);
        self.apply(io);
    }

    fn after_batch(&mut self, io: &mut Io<KernelOp>) {
        self.handler.after_batch(&mut self.q);
        self.apply(io);
        self.submit_deferred(io);
        for conn in std::mem::take(&mut self.rearm) {
            self.rearm_one(io, conn);
        }
        self.apply(io);
    }

    fn done(&self) -> bool {
        self.handler.done() && self.closes == 0
    }
}
