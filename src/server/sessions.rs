//! One server worker's sessions: admission, input through the protocol state machine, replies,
//! deadlines, backpressure and the drain. This is the server's side of the transport seam: it
//! runs unchanged over any data plane, which moves the bytes and says what happened.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::ServeConfig;
use super::budget::SessionBudget;
use super::mailbox::Routed;
use super::pending::Pending;
use super::route::ChatShared;
use super::session::{self, Env, RouteRequests, Session, Verdict, chat, flag, state};
use crate::engine::PoolShared;
use crate::engine::timer::TimerWheel;
use crate::proto::{self, ErrorCode, Frame};
use crate::slab::{ResidentBudget, SessionSlab};
use crate::stats::{CloseReason, WorkerStats};
use crate::transport::{Close, ConnId, ConnectError, Failure, Handler, Requests, TickPlan};

/// How far ahead the timing wheel reaches, in ticks.
const WHEEL_BUCKETS: usize = 4096;
/// A session told to close after its last send gets this long before it is closed anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub struct Sessions {
    pub(super) id: usize,
    pub(super) cfg: Arc<ServeConfig>,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) slab: SessionSlab<Session>,
    pub(super) chat: Arc<ChatShared>,
    /// What sessions' input asked the router for (see `route.rs`); reused, never reallocated
    /// in steady state.
    pub(super) routing: RouteRequests,
    pub(super) mail_buf: Vec<Routed>,
    pub(super) fanout: Vec<Vec<(u64, super::directory::Place)>>,
    pub(super) offline_buf: Vec<Box<[u8]>>,
    pub(super) sweep_shard: usize,
    /// Delivered messages its sessions have not receipted yet (see `pending.rs`).
    pub(super) pending: Pending,
    /// The server-wide session budget (see `budget.rs`).
    budget: Arc<SessionBudget>,
    wheel: TimerWheel,
    fired: Vec<u32>,
    tick_ms: u64,
    started: Instant,
    now_tick: u32,
    hello_ticks: u32,
    heartbeat_ticks: u32,
    /// ERROR 5, told to connections that find the server full (read in place by the kernel).
    full_frame: Box<[u8]>,
    pool: Arc<PoolShared>,
    drain_until: Option<Instant>,
}

/// What frame handling needs, built from the worker's fields (not `&self`) so the slab can be
/// borrowed mutably beside it.
fn env<'a>(
    id: usize,
    cfg: &'a ServeConfig,
    stats: &'a WorkerStats,
    routing: &'a RouteRequests,
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
        requests: routing,
    }
}

impl Sessions {
    pub fn new(
        id: usize,
        cfg: Arc<ServeConfig>,
        stats: Arc<WorkerStats>,
        budget: Arc<SessionBudget>,
        resident: Arc<ResidentBudget>,
        chat: Arc<ChatShared>,
        pool: Arc<PoolShared>,
    ) -> Result<Sessions, super::ServerError> {
        // Address space for every session of the server (MAP_NORESERVE: only what sessions
        // touch becomes resident); the budget decides how many are admitted, and the resident
        // budget how much of their slots replies may fill.
        let sessions = budget.limit();
        let slab = SessionSlab::<Session>::new(sessions, cfg.session_bytes)?.with_budget(resident);
        let [h, m] = slab.header_ranges();
        stats.set_slab_ranges([h, m, slab.slots_range()]);
        let tick_ms = cfg.tick().as_millis() as u64;
        let ticks = |ms: u64| ms.div_ceil(tick_ms) as u32;
        let full = proto::encode_vec(&Frame::error(ErrorCode::ServerFull, ErrorCode::ServerFull.name()));
        Ok(Sessions {
            id,
            stats,
            wheel: TimerWheel::new(sessions, WHEEL_BUCKETS),
            slab,
            budget,
            fired: Vec::new(),
            tick_ms,
            started: Instant::now(),
            now_tick: 0,
            hello_ticks: ticks(cfg.hello_timeout_ms as u64),
            heartbeat_ticks: ticks(3 * cfg.heartbeat_ms as u64),
            full_frame: full.into_boxed_slice(),
            pool,
            drain_until: None,
            chat,
            routing: RouteRequests::default(),
            mail_buf: Vec::new(),
            fanout: Vec::new(),
            offline_buf: Vec::new(),
            sweep_shard: 0,
            pending: Pending::default(),
            cfg,
        })
    }

    /// Feeds bytes to a session and acts on the verdict; returns how many were consumed, and
    /// whether its replies filled the out area (it is paused).
    fn feed(&mut self, q: &mut Requests, slot: u32, data: &[u8]) -> (usize, bool) {
        let env = env(self.id, &self.cfg, &self.stats, &self.routing, self.slab.generation(slot), slot, self.now_tick);
        let verdict = session::on_bytes(self.slab.session(slot), &env, data);
        let closing = matches!(verdict, Verdict::CloseAfterSend(_) | Verdict::CloseNow(_));
        self.route_requests(q, slot, closing);
        match verdict {
            Verdict::Blocked(done) => {
                // Its replies filled the out area: the rest waits in the transport until sends
                // make room; meanwhile TCP flow control pushes back on the client.
                let s = self.slab.header_mut(slot);
                if !s.has(flag::PAUSED) {
                    s.flags |= flag::PAUSED;
                    self.stats.backpressure_pauses.inc();
                }
                q.send(slot);
                (done, true)
            }
            verdict => {
                self.apply(q, slot, verdict);
                (data.len(), false)
            }
        }
    }

    /// Sends made room for a paused session's replies. A frame that blocked after its read was
    /// taken whole (the read completed it in the in area, where it waits) is not held by the
    /// transport, so nothing else would offer it again: it goes first, fed with nothing new.
    /// Returns whether the session is through it and may take input again.
    fn unblock(&mut self, q: &mut Requests, slot: u32) -> bool {
        // Still marked paused, so blocking again is not counted as a second pause.
        if self.feed(q, slot, &[]).1 {
            return false;
        }
        self.slab.header_mut(slot).flags &= !flag::PAUSED;
        true
    }

    /// Acts on a verdict: keep going (send replies), close after sending, or close now.
    pub(super) fn apply(&mut self, q: &mut Requests, slot: u32, verdict: Verdict) {
        match verdict {
            Verdict::Open | Verdict::Blocked(_) => {}
            Verdict::CloseAfterSend(reason) => {
                // Messages that arrive from now on go to a newer session or the offline store.
                self.unlist(slot);
                let s = self.slab.header_mut(slot);
                if s.has(flag::CLOSED | flag::CLOSE_AFTER_SEND) {
                    return;
                }
                s.flags |= flag::CLOSE_AFTER_SEND;
                s.close_reason = reason as u8;
                let at = self.now_tick as u64 + CLOSE_GRACE.as_millis() as u64 / self.tick_ms;
                self.wheel.schedule(slot, at);
                q.close(slot, Close::Graceful);
                return;
            }
            Verdict::CloseNow(reason) => return self.close_now(q, slot, reason),
        }
        if self.slab.header(slot).has_output() {
            q.send(slot);
        }
    }

    /// Closes a session at once. One that was closing after its last words keeps the reason it
    /// was closing for.
    pub(super) fn close_now(&mut self, q: &mut Requests, slot: u32, reason: CloseReason) {
        self.unlist(slot);
        let s = self.slab.header_mut(slot);
        if s.has(flag::CLOSED) {
            return;
        }
        if !s.has(flag::CLOSE_AFTER_SEND) {
            s.close_reason = reason as u8;
        }
        s.flags |= flag::CLOSED;
        self.wheel.cancel(slot);
        q.close(slot, Close::Now);
    }

    /// A session's wheel bucket came up: check its real deadline.
    fn on_deadline(&mut self, q: &mut Requests, slot: u32) {
        let s = self.slab.header(slot);
        if s.state == state::FREE || s.has(flag::CLOSED) {
            return;
        }
        if s.has(flag::CLOSE_AFTER_SEND) {
            // Its last words were not read in time.
            let reason = CloseReason::ALL[s.close_reason as usize];
            return self.close_now(q, slot, reason);
        }
        let deadline = if s.state == state::LOGGED_IN {
            s.last_frame_tick + self.heartbeat_ticks
        } else {
            s.opened_tick + self.hello_ticks
        };
        if self.now_tick >= deadline {
            let env =
                env(self.id, &self.cfg, &self.stats, &self.routing, self.slab.generation(slot), slot, self.now_tick);
            let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
            let verdict = session::timed_out(&mut out, &env);
            return self.apply(q, slot, verdict);
        }
        self.wheel.schedule(slot, deadline as u64);
        // An idle session gives its slot pages back; done here so it costs at most one
        // madvise per session per heartbeat period.
        if s.slot_idle() && s.send_len == 0 && self.slab.touched(slot) > 0 {
            self.slab.reclaim(slot);
        }
    }

    fn begin_drain(&mut self, q: &mut Requests) {
        self.drain_until = Some(Instant::now() + Duration::from_millis(self.cfg.drain_timeout_ms as u64));
        q.stop_accepting();
        for slot in 0..self.slab.high_water() {
            let s = self.slab.header(slot);
            if s.state == state::FREE || s.has(flag::CLOSED | flag::CLOSE_AFTER_SEND) {
                continue;
            }
            let env =
                env(self.id, &self.cfg, &self.stats, &self.routing, self.slab.generation(slot), slot, self.now_tick);
            let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
            let verdict = session::say_bye(&mut out, &env);
            self.apply(q, slot, verdict);
        }
    }
}

impl Handler for Sessions {
    fn start(&mut self, _q: &mut Requests) -> TickPlan {
        TickPlan::Every(Duration::from_millis(self.tick_ms))
    }

    fn admit(&mut self) -> Option<ConnId> {
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
            self.stats.sessions_rejected.inc();
            self.stats.protocol_errors[ErrorCode::ServerFull.index()].inc();
            self.stats.frames_out[proto::Kind::Error.index()].inc();
            return None;
        };
        self.stats.sessions_accepted.inc();
        self.stats.slots_in_use.set(self.slab.in_use() as u64);
        let s = self.slab.header_mut(slot);
        s.state = state::OPEN;
        s.opened_tick = self.now_tick;
        s.last_frame_tick = self.now_tick;
        self.wheel.schedule(slot, self.now_tick as u64 + self.hello_ticks as u64);
        Some(slot)
    }

    fn refusal(&self) -> &[u8] {
        &self.full_frame
    }

    fn opened(&mut self, _q: &mut Requests, _conn: ConnId) {}

    fn connect_failed(&mut self, _q: &mut Requests, _conn: ConnId, _err: ConnectError) {}

    fn input(&mut self, q: &mut Requests, conn: ConnId, data: &[u8]) -> usize {
        self.slab.header_mut(conn).flags &= !flag::PAUSED;
        self.feed(q, conn, data).0
    }

    fn input_ended(&mut self, q: &mut Requests, conn: ConnId) {
        // The peer shut its write side; it may still read: send what is owed, then close.
        self.apply(q, conn, Verdict::CloseAfterSend(CloseReason::PeerClosed));
    }

    fn output(&mut self, conn: ConnId) -> &[u8] {
        let max_frame = self.cfg.max_frame;
        let len = session::next_send(self.slab.header(conn), self.slab.slot(conn), max_frame).map_or(0, <[u8]>::len);
        // Pinned: the out area is not compacted while these bytes are being sent.
        self.slab.header_mut(conn).send_len = len as u32;
        let s = self.slab.header(conn);
        match s.inline_sent < s.inline_len {
            true => &s.inline_out[s.inline_sent as usize..s.inline_len as usize],
            false => &self.slab.slot(conn)[max_frame + s.slot_out_sent as usize..max_frame + s.slot_out_len as usize],
        }
    }

    fn peek_output(&self, conn: ConnId, skip: usize) -> &[u8] {
        session::peek_output(self.slab.header(conn), self.slab.slot(conn), self.cfg.max_frame, skip)
    }

    fn output_len(&self, conn: ConnId) -> usize {
        let s = self.slab.header(conn);
        (s.inline_len - s.inline_sent) as usize + (s.slot_out_len - s.slot_out_sent) as usize
    }

    fn sent(&mut self, q: &mut Requests, conn: ConnId, n: usize) {
        session::sent(self.slab.header_mut(conn), n as u32);
        let view = self.slab.session(conn);
        session::rewind_out_area(view.header, view.slot, self.cfg.max_frame);
        if self.slab.header(conn).has(flag::PAUSED) && self.unblock(q, conn) {
            // Room was made: the transport offers the held input again.
            q.resume(conn);
        }
        if self.slab.header(conn).chat & chat::OFFLINE_PENDING != 0 {
            self.drain_offline(q, conn);
        }
        if self.slab.header(conn).has_output() {
            q.send(conn);
        }
    }

    fn failed(&mut self, q: &mut Requests, conn: ConnId, why: Failure) {
        let reason = match why {
            Failure::InputOverflow => CloseReason::SlowConsumer,
            why if why.is_peer_gone() => CloseReason::PeerClosed,
            _ => CloseReason::IoError,
        };
        self.close_now(q, conn, reason);
    }

    fn released(&mut self, q: &mut Requests, conn: ConnId) {
        self.unlist(conn);
        self.put_back(q, conn);
        let s = self.slab.header(conn);
        let reason = match s.has(flag::CLOSED | flag::CLOSE_AFTER_SEND) {
            true => CloseReason::ALL[s.close_reason as usize],
            // The transport let go on its own (it always says why first): counted, not lost.
            false => CloseReason::IoError,
        };
        self.stats.closed(reason).inc();
        self.wheel.cancel(conn);
        self.slab.header_mut(conn).state = state::FREE;
        self.slab.free(conn);
        self.budget.give_back();
        self.stats.slots_in_use.set(self.slab.in_use() as u64);
    }

    fn tick(&mut self, q: &mut Requests) -> Option<Duration> {
        self.now_tick = (self.started.elapsed().as_millis() as u64 / self.tick_ms) as u32;
        if let Some(b) = self.slab.budget() {
            self.stats.slot_budget_used.set(b.used() as u64);
        }
        self.chat_tick(q);
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.wheel.advance(self.now_tick as u64, &mut fired);
        for &slot in &fired {
            self.on_deadline(q, slot);
        }
        self.fired = fired;
        None
    }

    fn wake(&mut self, q: &mut Requests) {
        self.take_mail(q);
    }

    fn after_batch(&mut self, q: &mut Requests) {
        if self.drain_until.is_none() && self.pool.stopping() {
            self.begin_drain(q);
        }
    }

    fn done(&self) -> bool {
        match self.drain_until {
            Some(until) => self.slab.in_use() == 0 || Instant::now() >= until,
            None => false,
        }
    }
}
