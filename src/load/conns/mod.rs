//! One load worker's connections: it opens its share of them, logs them in, sends their
//! messages on schedule and records what it measures. This is the load generator's side of the
//! transport seam: it runs unchanged over any data plane. Everything it touches is its own; the
//! main thread sees its counters (single-writer atomics) and a histogram once a second.

mod comeback;
mod connect;
mod traffic;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::Sender;

use super::config::LoadConfig;
use super::conn::{Conn, flag, state};
use super::reconnect::{Credit, Pacer};
use super::stats::{Control, Interval, LoadStats, Phase, RunHistograms, WorkerOutcome, record};
use crate::engine::timer::TimerWheel;
use crate::slab::SessionSlab;
use crate::transport::{Close, ConnId, ConnectError, Failure, Handler, Requests, TickPlan};

/// Ticks of the worker's clock (and of its timing wheel).
const TICK: Duration = Duration::from_millis(1);
/// The wheel reaches 65 s ahead; later deadlines are re-scheduled when their bucket comes up.
const WHEEL_BUCKETS: usize = 1 << 16;
/// How long the close phase may take before the worker gives up waiting for its data plane to
/// let go (the rings' teardown then closes what is left).
const CLOSE_LIMIT: Duration = Duration::from_secs(20);
/// RECEIPTs owed at most per connection while its out area is full; past that its input pauses
/// until sends make room, so a server that floods DELIVERs cannot grow the load without bound.
pub const RECEIPTS_WAITING_PER_CONN: usize = 64;

pub struct Conns {
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
    wheel: TimerWheel,
    fired: Vec<u32>,
    /// Chat: RECEIPTs that found the out area full, sent as it drains.
    receipts_waiting: VecDeque<(u32, u64, u64)>,
    /// Connections whose input may flow again (reused by `send_waiting_receipts`).
    unpaused: Vec<u32>,
    hist: RunHistograms,
    interval: Interval,
    interval_tx: Sender<Interval>,
    last_second: u64,
    errors: BTreeMap<String, u64>,
    interval_ns: u64,
    frame_len: usize,
    closing_since: Option<Instant>,
    /// The close phase: the next slot to close, the end of the slots ever opened, and the pace
    /// (None: all at once).
    close_next: u32,
    close_end: u32,
    close_pacer: Option<Pacer>,
    /// The first tick instant: messages are scheduled on a grid from here, so they wait only
    /// for the timer's own lateness.
    tick_origin: u64,
    /// CLOCK_MONOTONIC nanoseconds at the load's base instant.
    mono_base: u64,
    /// The grid instant the pending tick is due at.
    tick_at: u64,
    /// A chat body, built once.
    body: Vec<u8>,
    /// Clients whose wait is over, queued for a connect (`--reconnect`, `--churn`).
    comebacks: VecDeque<u32>,
    /// Paces the comebacks (`--reconnect-rate`).
    pacer: Pacer,
    /// Churn: leaves owed so far, and the clients picked to leave that still have traffic.
    churn_credit: Credit,
    leaving: Vec<u32>,
    /// Draws of the jitter and churn noise so far.
    draws: u64,
}

impl Conns {
    pub fn new(
        id: usize,
        cfg: Arc<LoadConfig>,
        control: Arc<Control>,
        stats: Arc<LoadStats>,
        interval_tx: Sender<Interval>,
    ) -> Result<Conns, super::LoadError> {
        let total = cfg.connections_of(id);
        let capacity = total.max(1) as usize;
        // A slot keeps a partial reply (max_frame) and, for echo and chat, the out area.
        let slot_bytes = cfg.max_frame + if cfg.out_in_slot() { cfg.out_capacity() } else { 0 };
        let slab = SessionSlab::<Conn>::new(capacity, slot_bytes)?;
        let ns = |d: Duration| d.as_nanos() as u64;
        Ok(Conns {
            id,
            wheel: TimerWheel::new(capacity, WHEEL_BUCKETS),
            fired: Vec::new(),
            receipts_waiting: VecDeque::new(),
            unpaused: Vec::new(),
            hist: RunHistograms::new(),
            interval: Interval::new(),
            interval_tx,
            last_second: 0,
            errors: BTreeMap::new(),
            interval_ns: ns(cfg.message_interval),
            frame_len: cfg.frame_len(),
            total,
            next: 0,
            connecting: 0,
            concurrency: Self::concurrency(&cfg),
            slab,
            control,
            stats,
            closing_since: None,
            close_next: 0,
            close_end: 0,
            // A burst of 10 ms' worth: a 1 ms tick never waits on a token.
            close_pacer: cfg.close_rate_per_worker().map(|r| Pacer::new(r, (r / 100.0).max(1.0))),
            tick_origin: 0,
            mono_base: 0,
            tick_at: 0,
            body: vec![0x63u8; cfg.chat.body],
            comebacks: VecDeque::new(),
            pacer: {
                let per_worker = cfg.comeback.rate / cfg.workers as f64;
                // A burst of 10 ms' worth, so a 1 ms tick never waits on a token.
                Pacer::new(per_worker, (per_worker / 100.0).max(1.0))
            },
            churn_credit: Credit::default(),
            leaving: Vec::new(),
            draws: 0,
            cfg,
        })
    }

    /// Connects each worker keeps in flight at most.
    pub fn concurrency(cfg: &LoadConfig) -> u64 {
        (cfg.connect_concurrency / cfg.workers as u64).max(1)
    }

    pub fn into_outcome(self) -> WorkerOutcome {
        WorkerOutcome { histograms: self.hist, errors: self.errors, last_interval: self.interval }
    }

    fn now_ns(&self) -> u64 {
        self.control.base.elapsed().as_nanos() as u64
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

    /// The next tick of the grid, as a CLOCK_MONOTONIC instant (what the engine's absolute
    /// timeout counts in). An absolute deadline keeps ticks on the grid: a relative one drifts
    /// by each tick's handling time, so messages would wait half a tick on average.
    fn next_tick(&mut self) -> Duration {
        self.tick_at = self.on_grid(self.now_ns() + 1);
        Duration::from_nanos(self.mono_base + self.tick_at)
    }

    /// This worker's k-th connection's number in the run (see `LoadConfig::global`).
    fn global(&self, slot: u32) -> u64 {
        self.cfg.global(self.id, slot as u64)
    }

    /// The user id a connection logs in as.
    fn user_of(&self, slot: u32) -> u64 {
        self.cfg.first_user + self.global(slot)
    }

    fn error(&mut self, kind: String) {
        self.stats.errors.inc();
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    // ---- closing ----------------------------------------------------------------------

    /// A live connection ended before the run did (with `--reconnect` it comes back).
    fn lose(&mut self, q: &mut Requests, slot: u32, kind: String) {
        let retrying = self.retrying();
        let c = self.slab.header_mut(slot);
        if c.s.has(flag::COUNTED_UP) {
            self.stats.lost.inc();
        } else if retrying {
            // Connected but never logged in; it tries again.
            self.stats.retried.inc();
        } else {
            self.stats.failed.inc();
        }
        if retrying {
            c.s.flags |= flag::COMEBACK;
        }
        self.error(kind);
        self.close(q, slot);
    }

    /// Closes a connection with RST (its socket has SO_LINGER 0): no TIME_WAIT holds its source
    /// port for the next run.
    fn close(&mut self, q: &mut Requests, slot: u32) {
        let c = self.slab.header_mut(slot);
        if matches!(c.s.state, state::CLOSING | state::DONE | state::FREE) {
            return;
        }
        if c.s.has(flag::COUNTED_UP) {
            c.s.flags &= !flag::COUNTED_UP;
            self.stats.established.sub(1);
        }
        c.s.outstanding = 0;
        c.s.receipts_owed = 0;
        c.s.flags &= !flag::LEAVING;
        c.s.state = state::CLOSING;
        self.wheel.cancel(slot);
        if self.receipts_waiting.iter().any(|r| r.0 == slot) {
            // RECEIPTs of this connection's DELIVERs must not go out on its next one (the
            // server delivers again what was never receipted).
            self.receipts_waiting.retain(|r| r.0 != slot);
        }
        q.close(slot, Close::Abort);
    }

    fn begin_close(&mut self, q: &mut Requests, now: u64) {
        self.closing_since = Some(Instant::now());
        // Connections never started count as finished: the run is over for them.
        self.stats.finished.add(self.total - self.next);
        self.comebacks.clear();
        self.leaving.clear();
        self.close_end = self.next as u32;
        self.next = self.total;
        self.close_some(q, now);
    }

    /// How long the close phase may take: the paced closes, then `CLOSE_LIMIT`.
    fn close_limit(&self) -> Duration {
        let pacing = self.cfg.close_rate_per_worker().map_or(0.0, |rate| f64::from(self.close_end) / rate);
        CLOSE_LIMIT + Duration::from_secs_f64(pacing)
    }

    /// Closes the connections in slot order, as many as the close pace allows now (all of them
    /// when it is unpaced); the next tick goes on.
    fn close_some(&mut self, q: &mut Requests, now: u64) {
        while self.close_next < self.close_end {
            if let Some(pacer) = &mut self.close_pacer
                && !pacer.take(now)
            {
                return;
            }
            let slot = self.close_next;
            self.close_next += 1;
            if self.slab.header(slot).s.state == state::WAITING {
                // Let go already, waiting to come back: done.
                self.wheel.cancel(slot);
                self.slab.header_mut(slot).s.state = state::DONE;
                self.stats.finished.inc();
                continue;
            }
            self.close(q, slot);
        }
    }

    // ---- time -------------------------------------------------------------------------

    fn on_timer(&mut self, q: &mut Requests, slot: u32, now: u64) {
        let c = *self.slab.header(slot);
        match c.s.state {
            state::HELLO_SENT => {
                let limit = c.s.t_ns + self.cfg.connect_timeout.as_nanos() as u64;
                if now >= limit {
                    self.lose(q, slot, "login timeout".into());
                } else {
                    self.wheel.schedule(slot, self.tick_of(limit));
                }
            }
            state::LOGGED_IN if self.control.phase() < Phase::Hold => {
                if c.s.due_ns <= now {
                    self.send_due(q, slot, now);
                } else {
                    self.wheel.schedule(slot, self.tick_of(c.s.due_ns));
                }
            }
            state::WAITING => self.on_waiting_timer(slot, now),
            state::CLOSING => self.on_leave_timer(q, slot),
            _ => {}
        }
    }

    /// Hands the main thread this second's histograms.
    fn publish_interval(&mut self, now: u64) {
        let second = now / 1_000_000_000;
        if second > self.last_second {
            self.last_second = second;
            let interval = std::mem::take(&mut self.interval);
            let _ = self.interval_tx.try_send(interval);
        }
    }
}

impl Handler for Conns {
    fn start(&mut self, _q: &mut Requests) -> TickPlan {
        // CLOCK_MONOTONIC (what io_uring's absolute timeouts count in) at the load's base instant.
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Duration::from(t).as_nanos() as u64)
            .unwrap_or(0);
        self.mono_base = mono.saturating_sub(self.now_ns());
        self.tick_origin = self.now_ns();
        TickPlan::At(self.next_tick())
    }

    /// The load generator accepts nothing.
    fn admit(&mut self) -> Option<ConnId> {
        None
    }

    fn refusal(&self) -> &[u8] {
        &[]
    }

    fn opened(&mut self, q: &mut Requests, conn: ConnId) {
        self.connect_done(conn);
        self.stats.connected.inc();
        let (now, c) = (self.now_ns(), self.slab.header(conn).s);
        record(&mut self.hist.connect, now - c.t_ns);
        record(&mut self.hist.connect_corrected, now.saturating_sub(c.due_ns));
        record(&mut self.interval.connect, now - c.t_ns);
        if c.state == state::CONNECTING {
            self.login(q, conn, now);
        }
    }

    fn connect_failed(&mut self, _q: &mut Requests, conn: ConnId, err: ConnectError) {
        self.connect_done(conn);
        self.error(err.to_string());
        let retrying = self.retrying();
        let c = &mut self.slab.header_mut(conn).s;
        c.state = state::CLOSING;
        if retrying {
            c.flags |= flag::COMEBACK;
            self.stats.retried.inc();
        } else {
            self.stats.failed.inc();
        }
    }

    fn input(&mut self, q: &mut Requests, conn: ConnId, data: &[u8]) -> usize {
        self.take_input(q, conn, data)
    }

    fn input_ended(&mut self, q: &mut Requests, conn: ConnId) {
        if matches!(self.slab.header(conn).s.state, state::HELLO_SENT | state::LOGGED_IN) {
            self.lose(q, conn, "closed by server".into());
        }
    }

    fn wants_input(&self, conn: ConnId) -> bool {
        // On demand a receive waits in the kernel only while a reply is owed.
        let c = &self.slab.header(conn).s;
        c.state == state::HELLO_SENT || c.outstanding > 0
    }

    fn output(&mut self, conn: ConnId) -> &[u8] {
        let (c, out) = self.out_area(conn);
        c.flags |= flag::SENDING;
        c.send_len = c.out_len;
        let len = c.out_len as usize;
        &out[..len]
    }

    fn peek_output(&self, conn: ConnId, skip: usize) -> &[u8] {
        let c = self.slab.header(conn);
        let len = c.s.out_len as usize;
        let out = match self.cfg.out_in_slot() {
            true => &self.slab.slot(conn)[self.cfg.max_frame..],
            false => &c.out[..],
        };
        out.get(skip..len).unwrap_or(&[])
    }

    fn output_len(&self, conn: ConnId) -> usize {
        self.slab.header(conn).s.out_len as usize
    }

    fn sent(&mut self, q: &mut Requests, conn: ConnId, n: usize) {
        self.on_sent(q, conn, n);
    }

    fn failed(&mut self, q: &mut Requests, conn: ConnId, why: Failure) {
        if matches!(self.slab.header(conn).s.state, state::HELLO_SENT | state::LOGGED_IN) {
            self.lose(q, conn, why.to_string());
        }
    }

    fn released(&mut self, _q: &mut Requests, conn: ConnId) {
        // A connection closed while its connect was under way never heard back.
        self.connect_done(conn);
        self.parted(conn);
    }

    fn tick(&mut self, q: &mut Requests) -> Option<Duration> {
        let now = self.now_ns();
        let phase = self.control.phase();
        if phase == Phase::Messages {
            // What the generator itself adds to a corrected round trip: how late its tick ran.
            record(&mut self.hist.schedule_lag, now.saturating_sub(self.tick_at));
        }
        if phase == Phase::Close {
            if self.closing_since.is_none() {
                self.begin_close(q, now);
            } else {
                self.close_some(q, now);
            }
        } else {
            self.start_due_connects(q, now);
            self.start_comebacks(q, now);
            self.churn(q, now);
        }
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.wheel.advance(self.tick_of(now), &mut fired);
        for &slot in &fired {
            self.on_timer(q, slot, now);
        }
        self.fired = fired;
        self.publish_interval(now);
        Some(self.next_tick())
    }

    fn after_batch(&mut self, q: &mut Requests) {
        self.send_waiting_receipts(q);
    }

    fn done(&self) -> bool {
        match self.closing_since {
            Some(since) => self.stats.finished.get() >= self.total || since.elapsed() >= self.close_limit(),
            None => false,
        }
    }
}
