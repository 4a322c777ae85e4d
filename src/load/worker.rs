//! One load worker: opens its share of the connections on its rings, logs them in, sends their
//! messages on schedule and records what it measures. Everything it touches is its own; the
//! main thread sees its counters (single-writer atomics) and a histogram once a second.

mod connect;
mod traffic;

use connect::Step;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::Sender;
use hdrhistogram::Histogram;
use io_uring::types::{CancelBuilder, Fixed, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode, squeue};

use super::config::LoadConfig;
use super::conn::{Conn, flag, state};
use crate::engine::timer::TimerWheel;
use crate::engine::{Op, RingSet, Service, Token};
use crate::slab::SessionSlab;
use crate::stats::Counter;

/// Phases the main thread moves the run through.
pub mod phase {
    /// Connects go out on schedule; logged-in connections already send their messages.
    pub const CONNECT: u8 = 0;
    /// Every connect is done; round trips are recorded in the run's histograms.
    pub const MESSAGES: u8 = 1;
    /// No new messages; connections stay open.
    pub const HOLD: u8 = 2;
    /// Close everything and stop.
    pub const CLOSE: u8 = 3;
}

/// Counters of one worker, read by the main thread.
#[derive(Default)]
pub struct LoadStats {
    pub connected: Counter,
    pub established_total: Counter,
    /// Logged in right now.
    pub established: Counter,
    pub failed: Counter,
    pub lost: Counter,
    pub errors: Counter,
    pub sent: Counter,
    pub received: Counter,
    pub late: Counter,
    pub bytes_sent: Counter,
    pub bytes_received: Counter,
    pub recv_no_buffers: Counter,
    /// Connections started whose close has completed (or that failed and were closed).
    pub finished: Counter,
    pub chat: ChatCounts,
}

/// Chat accounting of one worker (see `load::chat`).
#[derive(Default)]
pub struct ChatCounts {
    /// Deliveries the SENDs of this worker's connections should bring (less the NACKed ones).
    pub expected: Counter,
    pub acked: Counter,
    /// NACKs by code: 7 unknown recipient, 8 offline queue full, anything else.
    pub nacked_unknown: Counter,
    pub nacked_full: Counter,
    pub nacked_other: Counter,
    pub delivered: Counter,
    pub duplicates: Counter,
    /// DELIVERs from outside this load, or of messages it never recorded.
    pub unknown: Counter,
    pub receipted: Counter,
    /// Scheduled SENDs not sent because the connection's ledger window was still open.
    pub window_full: Counter,
}

/// State the main thread shares with every worker.
pub struct Control {
    /// The chat workload's shared ledger.
    pub ledger: Option<Arc<crate::load::chat::Ledger>>,
    pub phase: AtomicU8,
    /// `Instant` all timestamps count from.
    pub base: Instant,
}

/// Latency histograms (nanoseconds).
pub struct RunHistograms {
    pub connect: Histogram<u64>,
    pub connect_corrected: Histogram<u64>,
    pub login: Histogram<u64>,
    pub rtt_corrected: Histogram<u64>,
    pub rtt_uncorrected: Histogram<u64>,
    pub schedule_lag: Histogram<u64>,
    /// Chat: SEND scheduled to its ACK (one tick), to its DELIVER at the recipient, and to the
    /// RECEIPT notice back at the sender (two ticks).
    pub ack: Histogram<u64>,
    pub deliver: Histogram<u64>,
    pub receipt: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 1 hour at 3 significant digits; values above are clamped, never dropped.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

impl RunHistograms {
    pub fn new() -> RunHistograms {
        RunHistograms {
            connect: histogram(),
            connect_corrected: histogram(),
            login: histogram(),
            rtt_corrected: histogram(),
            rtt_uncorrected: histogram(),
            schedule_lag: histogram(),
            ack: histogram(),
            deliver: histogram(),
            receipt: histogram(),
        }
    }

    pub fn add(&mut self, other: &RunHistograms) {
        for (a, b) in [
            (&mut self.connect, &other.connect),
            (&mut self.connect_corrected, &other.connect_corrected),
            (&mut self.login, &other.login),
            (&mut self.rtt_corrected, &other.rtt_corrected),
            (&mut self.rtt_uncorrected, &other.rtt_uncorrected),
            (&mut self.schedule_lag, &other.schedule_lag),
            (&mut self.ack, &other.ack),
            (&mut self.deliver, &other.deliver),
            (&mut self.receipt, &other.receipt),
        ] {
            let _ = a.add(b);
        }
    }
}

impl Default for RunHistograms {
    fn default() -> Self {
        RunHistograms::new()
    }
}

/// One second of one worker's measurements, for the live line and the interval log.
pub struct Interval {
    pub rtt_corrected: Histogram<u64>,
    pub connect: Histogram<u64>,
}

/// What a worker hands back when it ends.
pub struct WorkerOutcome {
    pub histograms: RunHistograms,
    pub errors: BTreeMap<String, u64>,
}

pub(super) fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

// Socket options every connection gets, at static addresses the kernel may read at any time.
pub(super) static ONE: libc::c_int = 1;
/// Linger 0: a close ends the connection with RST, so no TIME_WAIT holds the source port and
/// the next run can bind it at once.
pub(super) static LINGER_ZERO: libc::linger = libc::linger { l_onoff: 1, l_linger: 0 };

pub struct LoadWorker {
    id: usize,
    cfg: Arc<LoadConfig>,
    control: Arc<Control>,
    stats: Arc<LoadStats>,
    slab: SessionSlab<Conn>,
    /// Connections this worker opens, and the next one to start.
    total: u64,
    next: u64,
    connecting: u64,
    concurrency: u64,
    files_per_ring: u32,
    /// The target address, at a stable place for the kernel to read.
    target: Box<socket2::SockAddr>,
    connect_timeout: Box<Timespec>,
    tick: Box<Timespec>,
    wheel: TimerWheel,
    fired: Vec<u32>,
    rearm: Vec<u32>,
    /// Chat: RECEIPTs that found the out area full, sent as it drains.
    receipts_waiting: std::collections::VecDeque<(u32, u64, u64)>,
    hist: RunHistograms,
    interval_rtt: Histogram<u64>,
    interval_connect: Histogram<u64>,
    interval_tx: Sender<Interval>,
    last_second: u64,
    errors: BTreeMap<String, u64>,
    rng: u64,
    interval_ns: u64,
    frame_len: usize,
    closing_since: Option<Instant>,
    /// When the tick was armed: the multishot timeout fires every TICK from here without drift,
    /// so messages are scheduled on this grid and wait only for the timer's own lateness.
    tick_origin: u64,
    /// CLOCK_MONOTONIC nanoseconds at the load's base instant.
    mono_base: u64,
    /// The grid instant the pending tick is due at.
    tick_at: u64,
}

/// Ticks of the worker's clock (and of its timing wheel).
const TICK: Duration = Duration::from_millis(1);
/// The wheel reaches 65 s ahead; later deadlines are re-scheduled when their bucket comes up.
const WHEEL_BUCKETS: usize = 1 << 16;
/// How long the close phase may take before the worker gives up waiting for completions (its
/// rings' teardown then closes what is left).
const CLOSE_LIMIT: Duration = Duration::from_secs(20);

impl LoadWorker {
    pub fn new(
        id: usize,
        cfg: Arc<LoadConfig>,
        control: Arc<Control>,
        stats: Arc<LoadStats>,
        files_per_ring: u32,
        interval_tx: Sender<Interval>,
    ) -> Result<LoadWorker, super::LoadError> {
        let total = cfg.connections_of(id);
        let capacity = total.max(1) as usize;
        // A slot keeps a partial reply (max_frame) and, for echo and chat, the out area.
        let slot_bytes = cfg.max_frame + if cfg.out_in_slot() { cfg.out_capacity() } else { 0 };
        let slab = SessionSlab::<Conn>::new(capacity, slot_bytes)?;
        let concurrency = (cfg.connect_concurrency / cfg.workers as u64).max(1);
        let ns = |d: Duration| d.as_nanos() as u64;
        Ok(LoadWorker {
            id,
            target: Box::new(socket2::SockAddr::from(cfg.target)),
            connect_timeout: Box::new(Timespec::from(cfg.connect_timeout)),
            tick: Box::new(Timespec::from(TICK)),
            wheel: TimerWheel::new(capacity, WHEEL_BUCKETS),
            fired: Vec::new(),
            rearm: Vec::new(),
            receipts_waiting: std::collections::VecDeque::new(),
            hist: RunHistograms::new(),
            interval_rtt: histogram(),
            interval_connect: histogram(),
            interval_tx,
            last_second: 0,
            errors: BTreeMap::new(),
            rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            interval_ns: ns(cfg.message_interval),
            frame_len: cfg.frame_len(),
            total,
            next: 0,
            connecting: 0,
            concurrency,
            files_per_ring,
            slab,
            control,
            stats,
            closing_since: None,
            tick_origin: 0,
            mono_base: 0,
            tick_at: 0,
            cfg,
        })
    }

    pub fn start(&mut self, rings: &mut RingSet) {
        // CLOCK_MONOTONIC (what io_uring's absolute timeouts count in) at the load's base instant.
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Duration::from(t).as_nanos() as u64)
            .unwrap_or(0);
        self.mono_base = mono.saturating_sub(self.now_ns());
        self.tick_origin = self.now_ns();
        self.arm_tick(rings);
    }

    /// Arms a one-shot timeout for the next instant of the tick grid. An absolute deadline
    /// keeps the ticks on the grid: a relative (or multishot) timeout drifts by each tick's
    /// handling time, so messages would wait half a tick on average.
    fn arm_tick(&mut self, rings: &mut RingSet) {
        let next = self.on_grid(self.now_ns() + 1);
        self.tick_at = next;
        let at = Duration::from_nanos(self.mono_base + next);
        *self.tick = Timespec::new().sec(at.as_secs()).nsec(at.subsec_nanos());
        let entry = opcode::Timeout::new(&*self.tick)
            .flags(TimeoutFlags::ABS)
            .build()
            .user_data(Token::of(Op::Tick, 0, 0, 0).0);
        Self::push(rings, 0, entry);
    }

    pub fn into_outcome(self) -> WorkerOutcome {
        WorkerOutcome { histograms: self.hist, errors: self.errors }
    }

    fn push(rings: &mut RingSet, ring: usize, entry: squeue::Entry) {
        // SAFETY: every entry built here points only at memory that outlives its operation:
        // connection headers and slots (the slab's mappings live as long as the worker, and a
        // load slot is never reused), the boxed target, bind addresses, timespecs (owned by the
        // worker, which outlives its rings), and the static socket option values.
        unsafe { rings.rings[ring].push(entry) }
    }

    /// The wheel tick `ns` falls in.
    fn tick_of(&self, ns: u64) -> u64 {
        ns.saturating_sub(self.tick_origin) / TICK.as_nanos() as u64
    }

    /// The first tick instant at or after `ns`.
    fn on_grid(&self, ns: u64) -> u64 {
        let tick = TICK.as_nanos() as u64;
        let since = ns.saturating_sub(self.tick_origin);
        self.tick_origin + since.div_ceil(tick) * tick
    }

    fn now_ns(&self) -> u64 {
        self.control.base.elapsed().as_nanos() as u64
    }

    fn place(&self, slot: u32) -> (usize, u32) {
        ((slot / self.files_per_ring) as usize, slot % self.files_per_ring)
    }

    fn token(&self, op: u8, slot: u32) -> u64 {
        Token::new(op, self.place(slot).0 as u16, 0, slot).0
    }

    fn error(&mut self, kind: String) {
        self.stats.errors.inc();
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    fn rand_below(&mut self, n: u64) -> u64 {
        // xorshift64*: jitter only, not security.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        if n == 0 { 0 } else { r % n }
    }

    // ---- closing ----------------------------------------------------------------------

    /// A live connection ended before the run did.
    fn lose(&mut self, rings: &mut RingSet, slot: u32, kind: String) {
        let c = self.slab.header(slot);
        if c.s.has(flag::COUNTED_UP) {
            self.stats.lost.inc();
        } else {
            // Connected but never logged in.
            self.stats.failed.inc();
        }
        self.error(kind);
        self.close(rings, slot);
    }

    /// Cancels the receive and closes the socket (RST, see `LINGER_ZERO`).
    fn close(&mut self, rings: &mut RingSet, slot: u32) {
        let (ring, file) = self.place(slot);
        let (recv, cancel, close) =
            (self.token(Op::Recv as u8, slot), self.token(Op::Cancel as u8, slot), self.token(Op::Close as u8, slot));
        let c = self.slab.header_mut(slot);
        if matches!(c.s.state, state::CLOSING | state::DONE | state::FREE) {
            return;
        }
        if c.s.has(flag::COUNTED_UP) {
            c.s.flags &= !flag::COUNTED_UP;
            self.stats.established.sub(1);
        }
        c.s.outstanding = 0;
        c.s.state = state::CLOSING;
        if c.s.has(flag::RECV_ARMED) {
            c.s.inflight += 1;
            let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(recv)).build().user_data(cancel);
            Self::push(rings, ring, entry);
        }
        let c = self.slab.header_mut(slot);
        c.s.inflight += 1;
        Self::push(rings, ring, opcode::Close::new(Fixed(file)).build().user_data(close));
        self.wheel.cancel(slot);
    }

    fn on_close_step(&mut self, slot: u32) {
        let c = self.slab.header_mut(slot);
        c.s.inflight -= 1;
        self.maybe_done(slot);
    }

    fn maybe_done(&mut self, slot: u32) {
        let c = self.slab.header_mut(slot);
        if c.s.state == state::CLOSING && c.s.inflight == 0 {
            c.s.state = state::DONE;
            self.stats.finished.inc();
        }
    }

    fn begin_close(&mut self, rings: &mut RingSet) {
        self.closing_since = Some(Instant::now());
        // Connections never started count as finished: the run is over for them.
        self.stats.finished.add(self.total - self.next);
        for slot in 0..self.next as u32 {
            let c = self.slab.header_mut(slot);
            match c.s.state {
                state::CONNECTING => c.s.flags |= flag::CLOSE_WANTED,
                state::HELLO_SENT | state::LOGGED_IN => self.close(rings, slot),
                _ => {}
            }
        }
        self.next = self.total;
    }

    // ---- time -------------------------------------------------------------------------

    fn on_tick(&mut self, rings: &mut RingSet) {
        let now = self.now_ns();
        let current = self.control.phase.load(Ordering::Relaxed);
        if current == phase::MESSAGES {
            // What the generator itself adds to a corrected round trip: how late its tick ran.
            record(&mut self.hist.schedule_lag, now.saturating_sub(self.tick_at));
        }
        self.arm_tick(rings);
        if current == phase::CLOSE {
            if self.closing_since.is_none() {
                self.begin_close(rings);
            }
        } else {
            self.start_due_connects(rings, now);
        }
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.wheel.advance(self.tick_of(now), &mut fired);
        for &slot in &fired {
            self.on_timer(rings, slot, now);
        }
        self.fired = fired;
        let second = now / 1_000_000_000;
        if second > self.last_second {
            self.last_second = second;
            let interval = Interval {
                rtt_corrected: std::mem::replace(&mut self.interval_rtt, histogram()),
                connect: std::mem::replace(&mut self.interval_connect, histogram()),
            };
            let _ = self.interval_tx.try_send(interval);
        }
    }

    fn on_timer(&mut self, rings: &mut RingSet, slot: u32, now: u64) {
        let c = *self.slab.header(slot);
        match c.s.state {
            state::HELLO_SENT => {
                let limit = c.s.t_ns + self.cfg.connect_timeout.as_nanos() as u64;
                if now >= limit {
                    self.lose(rings, slot, "login timeout".into());
                } else {
                    self.wheel.schedule(slot, self.tick_of(limit));
                }
            }
            state::LOGGED_IN if self.control.phase.load(Ordering::Relaxed) < phase::HOLD => {
                if c.s.due_ns <= now {
                    self.send_due(rings, slot, now);
                } else {
                    self.wheel.schedule(slot, self.tick_of(c.s.due_ns));
                }
            }
            _ => {}
        }
    }
}

impl Service for LoadWorker {
    fn on_completion(&mut self, rings: &mut RingSet, ring: u16, cqe: &cqueue::Entry) {
        let token = Token(cqe.user_data());
        let slot = token.slot();
        if let Some(step) = Step::from_op(token.op_raw()) {
            return self.on_connect_step(rings, step, slot, cqe.result());
        }
        match token.op() {
            Some(Op::Recv) => self.on_recv(rings, ring as usize, slot, cqe),
            Some(Op::Send) => self.on_send(rings, slot, cqe.result()),
            Some(Op::Cancel | Op::Close) => self.on_close_step(slot),
            Some(Op::Tick) => self.on_tick(rings),
            _ => {}
        }
    }

    fn after_batch(&mut self, rings: &mut RingSet) {
        for ring in &mut rings.rings {
            ring.bufs.commit();
        }
        self.send_waiting_receipts(rings);
        for slot in std::mem::take(&mut self.rearm) {
            let c = self.slab.header(slot);
            if matches!(c.s.state, state::HELLO_SENT | state::LOGGED_IN) && !c.s.has(flag::RECV_ARMED) {
                self.arm_recv(rings, slot);
            }
        }
    }

    fn done(&self) -> bool {
        match self.closing_since {
            Some(since) => self.stats.finished.get() >= self.total || since.elapsed() >= CLOSE_LIMIT,
            None => false,
        }
    }
}
