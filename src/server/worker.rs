//! One server worker: its listener, rings, slab and timers, and the glue from completions to
//! the session state machine.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use io_uring::types::{CancelBuilder, Fd, Fixed, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode};

use super::budget::SessionBudget;
use super::held::{Held, HeldInput};
use super::mailbox::Routed;
use super::route::{ChatShared, OP_MAIL};
use super::session::{self, Env, Requests, Session, Verdict, chat, flag, state};
use super::{RecvArm, ServeConfig};
use crate::engine::timer::TimerWheel;
use crate::engine::{Op, RingSet, Service, Token};
use crate::proto::{self, ErrorCode, Frame};
use crate::slab::SessionSlab;
use crate::stats::{CloseReason, WorkerStats};

/// How far ahead the timing wheel reaches, in ticks.
const WHEEL_BUCKETS: usize = 4096;
/// A session told to close after its last send gets this long before it is closed anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Per-ring accept state.
struct AcceptState {
    armed: bool,
    /// After a failed accept, the tick before which it is not re-armed (no spinning on ENOMEM).
    retry_tick: u32,
    /// Bumped on every arm, carried in the token, so the end of an old accept is not mistaken
    /// for the end of the current one.
    generation: u32,
}

pub struct ServerWorker {
    pub(super) id: usize,
    pub(super) cfg: Arc<ServeConfig>,
    pub(super) stats: Arc<WorkerStats>,
    listener: OwnedFd,
    pub(super) slab: SessionSlab<Session>,
    pub(super) chat: Arc<ChatShared>,
    /// What sessions' input asked the router for (see `route.rs`); reused, never reallocated
    /// in steady state.
    pub(super) requests: Requests,
    pub(super) mail_buf: Vec<Routed>,
    pub(super) fanout: Vec<Vec<(u64, super::directory::Place)>>,
    pub(super) offline_buf: Vec<Box<[u8]>>,
    pub(super) sweep_shard: usize,
    wheel: TimerWheel,
    fired: Vec<u32>,
    accept: Vec<AcceptState>,
    /// Free table slots a ring keeps before it stops accepting: one accept run can take a whole
    /// listen backlog, and a full table would drop those connections.
    accept_margin: u32,
    /// The server-wide session budget (see `budget.rs`).
    budget: Arc<SessionBudget>,
    /// Rings this worker may grow to: enough to hold every session of the server.
    max_rings: usize,
    /// Sessions whose multishot receive ended while they still need one (no buffers, CQ
    /// pressure, a lifted pause), re-armed once the buffers are back with the kernel.
    rearm: Vec<u32>,
    /// Sessions whose receive cancel found nothing to cancel while the receive was still armed;
    /// the cancel is sent again at the next tick.
    recancel: Vec<u32>,
    /// Input of paused sessions, in order.
    held: HeldInput,
    tick: Box<Timespec>,
    tick_ms: u64,
    started: Instant,
    now_tick: u32,
    hello_ticks: u32,
    heartbeat_ticks: u32,
    /// ERROR 5, sent to connections that find the slab full (stable address for the kernel).
    full_frame: Box<[u8]>,
    stop: Arc<AtomicBool>,
    drain_until: Option<Instant>,
    /// Connections accepted since the last tick (see `watch_accept_queue`).
    accepted_since_tick: u32,
}

/// What frame handling needs, built from the worker's fields (not `&self`) so the slab can be
/// borrowed mutably beside it.
fn env<'a>(
    id: usize,
    cfg: &'a ServeConfig,
    stats: &'a WorkerStats,
    requests: &'a Requests,
    generation: u32,
    slot: u32,
    now_tick: u32,
) -> Env<'a> {
    let generation = generation as u64 & 0xffff;
    Env {
        stats,
        max_frame: cfg.max_frame,
        heartbeat_ms: cfg.heartbeat_ms,
        session_id: (id as u64) << 48 | generation << 32 | slot as u64,
        now_tick,
        wall_ns: || SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
        requests,
    }
}

/// Free table slots a ring keeps in reserve (see `ServerWorker::accept_margin`).
pub fn accept_margin(cfg: &ServeConfig, files: u32) -> u32 {
    cfg.backlog.saturating_add(64).min(files / 4)
}

impl ServerWorker {
    // Each argument is a different part of the worker's world, built by `Server::start`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        cfg: Arc<ServeConfig>,
        stats: Arc<WorkerStats>,
        listener: OwnedFd,
        budget: Arc<SessionBudget>,
        max_rings: usize,
        accept_margin: u32,
        stop: Arc<AtomicBool>,
        chat: Arc<ChatShared>,
    ) -> Result<ServerWorker, super::ServerError> {
        // Address space for every session of the server (MAP_NORESERVE: only what sessions
        // touch becomes resident); the budget decides how many are admitted.
        let sessions = budget.limit();
        let slab = SessionSlab::<Session>::new(sessions, cfg.session_bytes)?;
        let [h, m] = slab.header_ranges();
        stats.set_slab_ranges([h, m, slab.slots_range()]);
        let tick_ms = (cfg.hello_timeout_ms.min(cfg.heartbeat_ms) as u64 / 10).clamp(10, 100);
        let ticks = |ms: u64| ms.div_ceil(tick_ms) as u32;
        let full = proto::encode_vec(&Frame::error(ErrorCode::ServerFull, ErrorCode::ServerFull.name()));
        Ok(ServerWorker {
            id,
            stats,
            listener,
            wheel: TimerWheel::new(sessions, WHEEL_BUCKETS),
            slab,
            fired: Vec::new(),
            accept: Vec::new(),
            accept_margin,
            budget,
            max_rings,
            rearm: Vec::new(),
            recancel: Vec::new(),
            held: HeldInput::default(),
            tick: Box::new(Timespec::from(Duration::from_millis(tick_ms))),
            tick_ms,
            started: Instant::now(),
            now_tick: 0,
            hello_ticks: ticks(cfg.hello_timeout_ms as u64),
            heartbeat_ticks: ticks(3 * cfg.heartbeat_ms as u64),
            full_frame: full.into_boxed_slice(),
            stop,
            drain_until: None,
            accepted_since_tick: 0,
            chat,
            requests: Requests::default(),
            mail_buf: Vec::new(),
            fanout: Vec::new(),
            offline_buf: Vec::new(),
            sweep_shard: 0,
            cfg,
        })
    }

    /// Arms accepts on every ring and the tick on ring 0.
    pub fn start(&mut self, rings: &mut RingSet) {
        self.held = HeldInput::new(rings.len());
        self.accept = (0..rings.len()).map(|_| AcceptState { armed: false, retry_tick: 0, generation: 0 }).collect();
        for ring in 0..rings.len() {
            self.arm_accept(rings, ring);
        }
        self.arm_tick(rings);
        self.count_rings(rings);
    }

    fn count_rings(&self, rings: &RingSet) {
        self.stats.rings.set(rings.len() as u64);
        self.stats.recv_buffer_bytes.set(rings.rings.iter().map(|r| r.bufs.mapped_bytes() as u64).sum());
    }

    /// Adds a ring when none can accept (each table is down to its reserve) and the worker may
    /// still grow: the hash sent this worker more than its share.
    fn grow_if_full(&mut self, rings: &mut RingSet) {
        if self.drain_until.is_some() || self.accept.iter().any(|a| a.armed) || rings.len() >= self.max_rings {
            return;
        }
        match rings.add_ring() {
            Ok(ring) => {
                self.accept.push(AcceptState { armed: false, retry_tick: 0, generation: 0 });
                self.held.add_ring();
                self.arm_accept(rings, ring);
                self.count_rings(rings);
            }
            // Counted and tried again at the next tick (`watch_accept_queue`).
            Err(_) => self.stats.accept_errors.inc(),
        }
    }

    pub(super) fn push(rings: &mut RingSet, ring: usize, entry: io_uring::squeue::Entry) {
        // SAFETY: every entry built in this file points only at memory that outlives the
        // operation: session headers and slots (the slab's mappings live as long as the worker,
        // and a slot is freed only once nothing is in flight on it), `full_frame` and `tick`
        // (boxed, owned by the worker, which outlives its rings' operations), and fds the
        // worker owns.
        unsafe { rings.rings[ring].push(entry) }
    }

    fn arm_accept(&mut self, rings: &mut RingSet, ring: usize) {
        let a = &mut self.accept[ring];
        a.generation = a.generation.wrapping_add(1);
        a.armed = true;
        let entry = opcode::AcceptMulti::new(Fd(self.listener.as_raw_fd()))
            .allocate_file_index(true)
            .build()
            .user_data(Token::of(Op::Accept, ring as u16, 0, a.generation).0);
        Self::push(rings, ring, entry);
    }

    fn cancel_accept(&mut self, rings: &mut RingSet, ring: usize) {
        let a = &mut self.accept[ring];
        if !a.armed {
            return;
        }
        a.armed = false;
        let target = Token::of(Op::Accept, ring as u16, 0, a.generation).0;
        let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(target))
            .build()
            .user_data(Token::of(Op::AcceptCancel, ring as u16, 0, 0).0);
        Self::push(rings, ring, entry);
    }

    fn arm_tick(&mut self, rings: &mut RingSet) {
        let entry = opcode::Timeout::new(&*self.tick)
            .flags(TimeoutFlags::MULTISHOT)
            .build()
            .user_data(Token::of(Op::Tick, 0, 0, 0).0);
        Self::push(rings, 0, entry);
    }

    /// A direct descriptor of `ring` was installed (`true`) or closed (`false`).
    fn count_file(&mut self, rings: &mut RingSet, ring: usize, installed: bool) {
        let r = &mut rings.rings[ring];
        if installed {
            r.files_in_use += 1;
            self.stats.fixed_files_in_use.add(1);
        } else {
            r.files_in_use -= 1;
            self.stats.fixed_files_in_use.sub(1);
            self.maybe_arm_accept(rings, ring);
        }
    }

    /// Arms a ring's accept if it is off, the worker is not draining, no failed accept asks to
    /// wait, and the ring's table has its reserve free. The threshold is the cancel's: with a
    /// higher one, every ring could sit between the two and the worker stop accepting with room
    /// left.
    fn maybe_arm_accept(&mut self, rings: &mut RingSet, ring: usize) {
        let (r, a) = (&rings.rings[ring], &self.accept[ring]);
        if !a.armed
            && self.drain_until.is_none()
            && self.now_tick >= a.retry_tick
            && r.files_capacity - r.files_in_use >= self.accept_margin
        {
            self.arm_accept(rings, ring);
        }
    }

    fn on_accept(&mut self, rings: &mut RingSet, ring: usize, token: Token, cqe: &cqueue::Entry) {
        let current = token.slot() == self.accept[ring].generation;
        if current && !cqueue::more(cqe.flags()) {
            self.accept[ring].armed = false;
        }
        let res = cqe.result();
        if res < 0 {
            if res != -libc::ECANCELED {
                self.stats.accept_errors.inc();
                if current && !cqueue::more(cqe.flags()) {
                    self.accept[ring].retry_tick = self.now_tick + 1;
                }
            }
            return;
        }
        let file = res as u32;
        self.accepted_since_tick += 1;
        self.count_file(rings, ring, true);
        if rings.rings[ring].files_capacity - rings.rings[ring].files_in_use < self.accept_margin {
            self.cancel_accept(rings, ring);
            self.grow_if_full(rings);
        } else {
            // The multishot may have ended (CQ pressure) with this accept.
            self.maybe_arm_accept(rings, ring);
        }
        if self.drain_until.is_some() {
            self.reject_close(rings, ring, file);
            return;
        }
        let slot = match self.budget.try_take() {
            // Every worker's slab has room for the whole budget, so this cannot fail; if it
            // did, the budget is given back and the connection refused.
            true => self.slab.alloc().or_else(|| {
                self.budget.give_back();
                None
            }),
            false => None,
        };
        let Some(slot) = slot else {
            // Server full: say so, then close. The connection never becomes a session.
            self.stats.sessions_rejected.inc();
            self.stats.protocol_errors[ErrorCode::ServerFull.index()].inc();
            self.stats.frames_out[proto::Kind::Error.index()].inc();
            let entry = opcode::Send::new(Fixed(file), self.full_frame.as_ptr(), self.full_frame.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(Token::of(Op::RejectSend, ring as u16, 0, file).0);
            Self::push(rings, ring, entry);
            return;
        };
        self.stats.sessions_accepted.inc();
        self.stats.slots_in_use.set(self.slab.in_use() as u64);
        let s = self.slab.header_mut(slot);
        s.state = state::OPEN;
        s.ring = ring as u16;
        s.file = file;
        s.opened_tick = self.now_tick;
        s.last_frame_tick = self.now_tick;
        s.chat = 0;
        self.wheel.schedule(slot, self.now_tick as u64 + self.hello_ticks as u64);
        self.arm_recv(rings, slot);
    }

    /// Re-arms an accept if connections wait in the listener's queue and none was accepted for a
    /// whole tick. The rings' accepts wait on the listener exclusively: a wake-up is taken by the
    /// first one only, and if that one was cancelled (its ring full) with the wake-up in hand
    /// while the queue was full, no new connection comes to wake the next one (their SYNs are
    /// dropped). A freshly armed accept drains the queue at once.
    fn watch_accept_queue(&mut self, rings: &mut RingSet) {
        let accepted = std::mem::take(&mut self.accepted_since_tick);
        if accepted > 0 || self.drain_until.is_some() {
            return;
        }
        if !super::accept_queue_len(self.listener.as_fd()).is_ok_and(|n| n > 0) {
            return;
        }
        if let Some(ring) = (0..rings.len()).find(|&r| self.accept[r].armed) {
            self.stats.accept_rearms.inc();
            self.cancel_accept(rings, ring);
            self.arm_accept(rings, ring);
        } else {
            // Every ring is full and an earlier growth failed: try again.
            self.grow_if_full(rings);
        }
    }

    fn reject_close(&mut self, rings: &mut RingSet, ring: usize, file: u32) {
        let entry =
            opcode::Close::new(Fixed(file)).build().user_data(Token::of(Op::RejectClose, ring as u16, 0, file).0);
        Self::push(rings, ring, entry);
    }

    fn token(&self, op: Op, slot: u32) -> Token {
        let s = self.slab.header(slot);
        Token::of(op, s.ring, self.slab.generation(slot), slot)
    }

    /// The op of a session's armed input wait: what a cancel targets.
    fn armed_op(&self) -> Op {
        match self.cfg.recv_arm {
            RecvArm::Poll => Op::Readable,
            RecvArm::Multishot => Op::Recv,
        }
    }

    /// Arms the session's wait for input: a multishot poll or a multishot receive.
    fn arm_recv(&mut self, rings: &mut RingSet, slot: u32) {
        let token = self.token(self.armed_op(), slot);
        let s = self.slab.header_mut(slot);
        s.flags |= flag::RECV_ARMED;
        s.inflight += 1;
        let ring = s.ring as usize;
        let entry = match self.cfg.recv_arm {
            RecvArm::Poll => {
                opcode::PollAdd::new(Fixed(s.file), (libc::POLLIN | libc::POLLRDHUP) as u32).multi(true).build()
            }
            RecvArm::Multishot => opcode::RecvMulti::new(Fixed(s.file), rings.rings[ring].bufs.bgid()).build(),
        };
        Self::push(rings, ring, entry.user_data(token.0));
    }

    /// Poll arming: the session's multishot poll fired (or ended).
    fn on_readable(&mut self, rings: &mut RingSet, token: Token, cqe: &cqueue::Entry) {
        let Some(slot) = self.live_slot(token) else { return };
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        let s = self.slab.header_mut(slot);
        if !more {
            s.flags &= !flag::RECV_ARMED;
            s.inflight -= 1;
        }
        if res > 0 {
            if res & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as i32 != 0 {
                self.slab.header_mut(slot).peer_hup = 1;
            }
            self.read(rings, slot);
        }
        let s = self.slab.header(slot);
        if !more && !s.has(flag::TEARDOWN | flag::INPUT_ENDED) {
            // The poll ended (the cancel of a pause since lifted, or an error on the socket):
            // arm it again unless paused; a receive that follows says what happened.
            self.rearm.push(slot);
        }
        self.maybe_free(slot);
    }

    /// Poll arming: a one-shot, non-blocking receive into a provided buffer. At most one is in
    /// flight; a poll that fires meanwhile asks for another once it completes.
    fn read(&mut self, rings: &mut RingSet, slot: u32) {
        let token = self.token(Op::Recv, slot);
        let s = self.slab.header_mut(slot);
        if s.has(flag::TEARDOWN | flag::PAUSED | flag::INPUT_ENDED) {
            return;
        }
        if s.has(flag::READING) {
            s.flags |= flag::READ_AGAIN;
            return;
        }
        s.flags = (s.flags | flag::READING) & !flag::READ_AGAIN;
        s.inflight += 1;
        let ring = s.ring as usize;
        // Length 0: the provided buffer's own size. MSG_DONTWAIT: with nothing to read it
        // completes with EAGAIN instead of arming a poll of its own (the multishot one waits).
        let entry = opcode::Recv::new(Fixed(s.file), std::ptr::null_mut(), 0)
            .buf_group(rings.rings[ring].bufs.bgid())
            .flags(libc::MSG_DONTWAIT)
            .build()
            .flags(io_uring::squeue::Flags::BUFFER_SELECT)
            .user_data(token.0);
        Self::push(rings, ring, entry);
    }

    /// The slot a session-op token refers to, if it is still that session's.
    fn live_slot(&self, token: Token) -> Option<u32> {
        let slot = token.slot();
        (slot < self.slab.high_water()
            && self.slab.header(slot).state != state::FREE
            && token.matches_generation(self.slab.generation(slot)))
        .then_some(slot)
    }

    fn on_recv(&mut self, rings: &mut RingSet, ring: usize, token: Token, cqe: &cqueue::Entry) {
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        let bid = cqueue::buffer_select(cqe.flags());
        let Some(slot) = self.live_slot(token) else {
            if let Some(bid) = bid {
                rings.rings[ring].bufs.recycle(bid);
            }
            return;
        };
        let poll = self.cfg.recv_arm == RecvArm::Poll;
        if !more {
            let s = self.slab.header_mut(slot);
            // With poll arming this was the one-shot receive; the poll stays armed.
            s.flags &= if poll { !flag::READING } else { !flag::RECV_ARMED };
            s.inflight -= 1;
        }
        if res == 0 {
            self.slab.header_mut(slot).flags |= flag::INPUT_ENDED;
        }
        let full = res > 0 && res as u32 >= rings.rings[ring].bufs.buf_len();
        if poll && (res == -libc::ENOBUFS || full || (res > 0 && self.slab.header(slot).peer_hup != 0)) {
            // More may be waiting than one buffer held, or the FIN behind the data: the poll
            // does not fire again for what was already there.
            self.slab.header_mut(slot).flags |= flag::READ_AGAIN;
        }
        let mut keep_buffer = false;
        let verdict = match res {
            1.. => match bid {
                Some(bid) => {
                    self.stats.bytes_in.add(res as u64);
                    let held = Held { ring: ring as u16, bid, offset: 0, len: res as u32 };
                    let (verdict, kept) = self.take_input(rings, slot, held);
                    keep_buffer = kept;
                    verdict
                }
                None => Verdict::Open,
            },
            // The peer shut its write side; it may still read: send what is owed, then close.
            0 => Verdict::CloseAfterSend(CloseReason::PeerClosed),
            _ if res == -libc::ENOBUFS => {
                self.stats.recv_no_buffers.inc();
                Verdict::Open
            }
            _ if res == -libc::ECANCELED || res == -libc::EAGAIN => Verdict::Open,
            _ if res == -libc::ECONNRESET || res == -libc::EPIPE => Verdict::CloseNow(CloseReason::PeerClosed),
            _ => Verdict::CloseNow(CloseReason::IoError),
        };
        // Every buffer the kernel handed out goes back (now, or when a paused session is done
        // with it), whatever the completion said.
        if let (Some(bid), false) = (bid, keep_buffer) {
            rings.rings[ring].bufs.recycle(bid);
        }
        let s = self.slab.header(slot);
        if poll {
            if s.has(flag::READ_AGAIN) && !s.has(flag::TEARDOWN) {
                self.rearm.push(slot);
            }
        } else if !more && res != 0 && !s.has(flag::TEARDOWN) {
            // The multishot ended (no buffer left, CQ pressure, or the cancel of a pause that
            // has since been lifted): receive again once the buffers are back, unless paused.
            self.rearm.push(slot);
        }
        self.apply(rings, slot, verdict);
        self.maybe_free(slot);
    }

    /// Handles newly received input, or holds it if the session is paused. Returns the verdict
    /// and whether the buffer was kept (held) rather than done with.
    fn take_input(&mut self, rings: &mut RingSet, slot: u32, input: Held) -> (Verdict, bool) {
        if self.slab.header(slot).has(flag::PAUSED) {
            return match self.hold(rings, slot, input) {
                true => (Verdict::Open, true),
                false => (Verdict::CloseNow(CloseReason::SlowConsumer), false),
            };
        }
        let env = env(self.id, &self.cfg, &self.stats, &self.requests, self.slab.generation(slot), slot, self.now_tick);
        let data = rings.rings[input.ring as usize].bufs.data(input.bid, input.len as usize);
        let verdict = session::on_bytes(self.slab.session(slot), &env, data);
        self.route_requests(rings, slot);
        match verdict {
            Verdict::Blocked(done) => {
                let rest = Held { offset: done as u32, ..input };
                if !self.hold(rings, slot, rest) {
                    return (Verdict::CloseNow(CloseReason::SlowConsumer), false);
                }
                self.pause(rings, slot);
                (Verdict::Open, true)
            }
            verdict => (verdict, false),
        }
    }

    /// Keeps a buffer for a paused session, if its ring can spare it.
    fn hold(&mut self, rings: &RingSet, slot: u32, input: Held) -> bool {
        let kept = self.held.hold(slot, input, rings.rings[input.ring as usize].bufs.count());
        self.stats.held_buffers.set(self.held.len() as u64);
        kept
    }

    /// Cancels a session's armed multishot receive (its final completion still arrives).
    fn cancel_recv(&mut self, rings: &mut RingSet, slot: u32) {
        let (recv, cancel) = (self.token(self.armed_op(), slot), self.token(Op::Cancel, slot));
        let s = self.slab.header_mut(slot);
        s.inflight += 1;
        let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(recv.0)).build().user_data(cancel.0);
        Self::push(rings, s.ring as usize, entry);
    }

    /// Stops reading from a session whose replies filled its out area; the socket's own buffers
    /// then push back on the client (TCP flow control).
    fn pause(&mut self, rings: &mut RingSet, slot: u32) {
        self.stats.backpressure_pauses.inc();
        let s = self.slab.header_mut(slot);
        s.flags |= flag::PAUSED;
        if s.has(flag::RECV_ARMED) {
            self.cancel_recv(rings, slot);
        }
    }

    /// Feeds a paused session its held input now that sends made room; un-pauses it and
    /// receives again once all of it is handled.
    fn resume(&mut self, rings: &mut RingSet, slot: u32) {
        while let Some(front) = self.held.front(slot) {
            let env =
                env(self.id, &self.cfg, &self.stats, &self.requests, self.slab.generation(slot), slot, self.now_tick);
            let data =
                &rings.rings[front.ring as usize].bufs.data(front.bid, front.len as usize)[front.offset as usize..];
            let verdict = session::on_bytes(self.slab.session(slot), &env, data);
            self.route_requests(rings, slot);
            match verdict {
                Verdict::Blocked(done) => return self.held.advance(slot, done),
                Verdict::Open => {
                    self.held.release_front(slot, rings);
                    self.stats.held_buffers.set(self.held.len() as u64);
                }
                verdict => {
                    self.release_held(rings, slot);
                    return self.apply(rings, slot, verdict);
                }
            }
        }
        let s = self.slab.header_mut(slot);
        s.flags &= !flag::PAUSED;
        if !s.has(flag::TEARDOWN | flag::CLOSE_AFTER_SEND | flag::INPUT_ENDED) {
            // Re-armed (and, with poll arming, read again if input is waiting) after the batch;
            // a receive whose cancel is still under way is re-armed when it ends.
            self.rearm.push(slot);
        }
    }

    /// Gives every held buffer of a session back and un-pauses it.
    fn release_held(&mut self, rings: &mut RingSet, slot: u32) {
        self.held.release_all(slot, rings);
        self.stats.held_buffers.set(self.held.len() as u64);
        self.slab.header_mut(slot).flags &= !flag::PAUSED;
    }

    /// Acts on a verdict: keep going (send replies), close after sending, or close now.
    pub(super) fn apply(&mut self, rings: &mut RingSet, slot: u32, verdict: Verdict) {
        if matches!(verdict, Verdict::CloseAfterSend(_) | Verdict::CloseNow(_)) {
            // Messages that arrive from now on go to a newer session or the offline store.
            self.unlist(slot);
        }
        match verdict {
            Verdict::Open => {}
            Verdict::CloseAfterSend(reason) => {
                let s = self.slab.header_mut(slot);
                if s.has(flag::TEARDOWN) {
                    return;
                }
                if !s.has(flag::CLOSE_AFTER_SEND) {
                    s.flags |= flag::CLOSE_AFTER_SEND;
                    s.close_reason = reason as u8;
                    let at = self.now_tick as u64 + CLOSE_GRACE.as_millis() as u64 / self.tick_ms;
                    self.wheel.schedule(slot, at);
                }
            }
            Verdict::CloseNow(reason) => return self.teardown(rings, slot, reason),
            // on_bytes's Blocked is turned into a pause by its callers.
            Verdict::Blocked(_) => {}
        }
        self.flush(rings, slot);
    }

    /// Starts the next send if none is in flight; closes a finished CLOSE_AFTER_SEND session.
    pub(super) fn flush(&mut self, rings: &mut RingSet, slot: u32) {
        let s = self.slab.header(slot);
        if s.has(flag::TEARDOWN) {
            return;
        }
        if let Some(bytes) = session::next_send(s, self.slab.slot(slot), self.cfg.max_frame) {
            let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
            let token = self.token(Op::Send, slot);
            let s = self.slab.header_mut(slot);
            s.send_len = len;
            s.inflight += 1;
            let entry = opcode::Send::new(Fixed(s.file), ptr, len).flags(libc::MSG_NOSIGNAL).build().user_data(token.0);
            Self::push(rings, s.ring as usize, entry);
        } else if s.has(flag::CLOSE_AFTER_SEND) && s.send_len == 0 {
            if !s.has(flag::RECV_ARMED) || s.has(flag::INPUT_ENDED) {
                // The peer is gone or its input ended: nothing to wait for.
                let reason = CloseReason::ALL[s.close_reason as usize];
                self.teardown(rings, slot, reason);
            } else if !s.has(flag::WRITE_SHUT) {
                // FIN after the last words; the close follows the peer's own close (or the grace
                // timer), with its input drained.
                let token = self.token(Op::HalfClose, slot);
                let s = self.slab.header_mut(slot);
                s.flags |= flag::WRITE_SHUT;
                s.inflight += 1;
                let entry = opcode::Shutdown::new(Fixed(s.file), libc::SHUT_WR).build().user_data(token.0);
                Self::push(rings, s.ring as usize, entry);
            }
        }
    }

    fn on_send(&mut self, rings: &mut RingSet, token: Token, res: i32) {
        let Some(slot) = self.live_slot(token) else { return };
        let s = self.slab.header_mut(slot);
        s.inflight -= 1;
        if res < 0 {
            s.send_len = 0;
            let reason = if res == -libc::EPIPE || res == -libc::ECONNRESET {
                CloseReason::PeerClosed
            } else {
                CloseReason::IoError
            };
            self.teardown(rings, slot, reason);
        } else {
            self.stats.bytes_out.add(res as u64);
            session::sent(s, res as u32);
            let view = self.slab.session(slot);
            session::rewind_out_area(view.header, view.slot, self.cfg.max_frame);
            if self.slab.header(slot).has(flag::PAUSED) {
                self.resume(rings, slot);
            }
            if self.slab.header(slot).chat & chat::OFFLINE_PENDING != 0 {
                self.drain_offline(rings, slot);
            }
            self.flush(rings, slot);
        }
        self.maybe_free(slot);
    }

    /// Closes a session: cancel its receive, shut the socket's write side (FIN after what was
    /// sent) unless a half-close did already, then close the direct descriptor. The slot is freed
    /// when all of that completed. A session that was closing after its last words is counted
    /// under the reason it was closing for.
    pub(super) fn teardown(&mut self, rings: &mut RingSet, slot: u32, reason: CloseReason) {
        let s = self.slab.header(slot);
        if s.has(flag::TEARDOWN) {
            return;
        }
        self.unlist(slot);
        let s = self.slab.header(slot);
        let reason = if s.has(flag::CLOSE_AFTER_SEND) { CloseReason::ALL[s.close_reason as usize] } else { reason };
        let ring = s.ring as usize;
        let file = s.file;
        let armed = s.has(flag::RECV_ARMED);
        let write_shut = s.has(flag::WRITE_SHUT);
        let next = self.token(if write_shut { Op::Close } else { Op::Shutdown }, slot);
        if self.held.has(slot) {
            self.release_held(rings, slot);
        }
        self.slab.header_mut(slot).flags |= flag::TEARDOWN;
        self.stats.closed(reason).inc();
        self.wheel.cancel(slot);
        if armed {
            self.cancel_recv(rings, slot);
        }
        self.slab.header_mut(slot).inflight += 1;
        let entry = if write_shut {
            opcode::Close::new(Fixed(file)).build().user_data(next.0)
        } else {
            opcode::Shutdown::new(Fixed(file), libc::SHUT_WR).build().user_data(next.0)
        };
        Self::push(rings, ring, entry);
    }

    fn on_teardown_step(&mut self, rings: &mut RingSet, ring: usize, token: Token, op: Op, res: i32) {
        let Some(slot) = self.live_slot(token) else { return };
        let s = self.slab.header_mut(slot);
        s.inflight -= 1;
        match op {
            Op::Shutdown => {
                s.inflight += 1;
                let entry = opcode::Close::new(Fixed(s.file)).build().user_data(self.token(Op::Close, slot).0);
                Self::push(rings, ring, entry);
            }
            Op::Close => {
                self.count_file(rings, ring, false);
            }
            // The cancel found nothing while the receive is still armed (it was between the
            // poll table and its task work): try again at the next tick.
            Op::Cancel if res < 0 && s.has(flag::RECV_ARMED) => self.recancel.push(slot),
            _ => {}
        }
        self.maybe_free(slot);
    }

    fn maybe_free(&mut self, slot: u32) {
        let s = self.slab.header_mut(slot);
        if s.has(flag::TEARDOWN) && s.inflight == 0 && s.state != state::FREE {
            s.state = state::FREE;
            self.slab.free(slot);
            self.budget.give_back();
            self.stats.slots_in_use.set(self.slab.in_use() as u64);
        }
    }

    fn on_reject(&mut self, rings: &mut RingSet, ring: usize, token: Token, op: Op) {
        let file = token.slot();
        let next = match op {
            Op::RejectSend => opcode::Shutdown::new(Fixed(file), libc::SHUT_WR)
                .build()
                .user_data(Token::of(Op::RejectShutdown, ring as u16, 0, file).0),
            Op::RejectShutdown => {
                return self.reject_close(rings, ring, file);
            }
            _ => {
                self.count_file(rings, ring, false);
                return;
            }
        };
        Self::push(rings, ring, next);
    }

    fn on_tick(&mut self, rings: &mut RingSet, cqe: &cqueue::Entry) {
        if !cqueue::more(cqe.flags()) {
            self.arm_tick(rings);
        }
        self.now_tick = (self.started.elapsed().as_millis() as u64 / self.tick_ms) as u32;
        for ring in 0..rings.len() {
            // Accepts that failed wait for a tick before they are tried again.
            self.maybe_arm_accept(rings, ring);
        }
        self.watch_accept_queue(rings);
        self.stats.sq_backlog.set(rings.rings.iter().map(|r| r.backlog_len() as u64).sum());
        for slot in std::mem::take(&mut self.recancel) {
            let s = self.slab.header(slot);
            if s.state != state::FREE && s.has(flag::TEARDOWN) && s.has(flag::RECV_ARMED) {
                self.cancel_recv(rings, slot);
            }
        }
        self.chat_tick(rings);
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.wheel.advance(self.now_tick as u64, &mut fired);
        for &slot in &fired {
            self.on_deadline(rings, slot);
        }
        self.fired = fired;
    }

    /// A session's wheel bucket came up: check its real deadline.
    fn on_deadline(&mut self, rings: &mut RingSet, slot: u32) {
        let s = self.slab.header(slot);
        if s.state == state::FREE || s.has(flag::TEARDOWN) {
            return;
        }
        if s.has(flag::CLOSE_AFTER_SEND) {
            // Its last words were not read in time.
            let reason = CloseReason::ALL[s.close_reason as usize];
            return self.teardown(rings, slot, reason);
        }
        let deadline = if s.state == state::LOGGED_IN {
            s.last_frame_tick + self.heartbeat_ticks
        } else {
            s.opened_tick + self.hello_ticks
        };
        if self.now_tick >= deadline {
            let env =
                env(self.id, &self.cfg, &self.stats, &self.requests, self.slab.generation(slot), slot, self.now_tick);
            let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
            let verdict = session::timed_out(&mut out, &env);
            self.apply(rings, slot, verdict);
            return;
        }
        self.wheel.schedule(slot, deadline as u64);
        // An idle session gives its slot pages back; done here so it costs at most one
        // madvise per session per heartbeat period.
        if s.slot_idle() && s.send_len == 0 && self.slab.touched(slot) > 0 {
            self.slab.reclaim(slot);
        }
    }

    fn begin_drain(&mut self, rings: &mut RingSet) {
        self.drain_until = Some(Instant::now() + Duration::from_millis(self.cfg.drain_timeout_ms as u64));
        for ring in 0..rings.len() {
            self.cancel_accept(rings, ring);
        }
        for slot in 0..self.slab.high_water() {
            let s = self.slab.header(slot);
            if s.state == state::FREE || s.has(flag::TEARDOWN | flag::CLOSE_AFTER_SEND) {
                continue;
            }
            let env =
                env(self.id, &self.cfg, &self.stats, &self.requests, self.slab.generation(slot), slot, self.now_tick);
            let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
            let verdict = session::say_bye(&mut out, &env);
            self.apply(rings, slot, verdict);
        }
    }
}

impl Service for ServerWorker {
    fn on_completion(&mut self, rings: &mut RingSet, ring: u16, cqe: &cqueue::Entry) {
        let token = Token(cqe.user_data());
        let ring = ring as usize;
        if token.op_raw() == OP_MAIL {
            return self.take_mail(rings);
        }
        match token.op() {
            Some(Op::Accept) => self.on_accept(rings, ring, token, cqe),
            Some(Op::Recv) => self.on_recv(rings, ring, token, cqe),
            Some(Op::Readable) => self.on_readable(rings, token, cqe),
            Some(Op::Send) => self.on_send(rings, token, cqe.result()),
            Some(op @ (Op::Cancel | Op::Shutdown | Op::Close | Op::HalfClose)) => {
                self.on_teardown_step(rings, ring, token, op, cqe.result())
            }
            Some(op @ (Op::RejectSend | Op::RejectShutdown | Op::RejectClose)) => {
                self.on_reject(rings, ring, token, op)
            }
            Some(Op::Tick) => self.on_tick(rings, cqe),
            Some(Op::AcceptCancel) | None => {}
        }
    }

    fn after_batch(&mut self, rings: &mut RingSet) {
        for ring in &mut rings.rings {
            ring.bufs.commit();
        }
        for slot in std::mem::take(&mut self.rearm) {
            let s = self.slab.header(slot);
            if s.state == state::FREE || s.has(flag::TEARDOWN | flag::PAUSED | flag::INPUT_ENDED) {
                continue;
            }
            if !s.has(flag::RECV_ARMED) {
                self.arm_recv(rings, slot);
            }
            if self.slab.header(slot).has(flag::READ_AGAIN) {
                self.read(rings, slot);
            }
        }
        if self.drain_until.is_none() && self.stop.load(Ordering::Relaxed) {
            self.begin_drain(rings);
        }
    }

    fn done(&self) -> bool {
        match self.drain_until {
            Some(until) => self.slab.in_use() == 0 || Instant::now() >= until,
            None => false,
        }
    }
}
