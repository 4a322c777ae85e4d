//! One load worker: opens its share of the connections on its rings, logs them in, sends their
//! messages on schedule and records what it measures. Everything it touches is its own; the
//! main thread sees its counters (single-writer atomics) and a histogram once a second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::Sender;
use hdrhistogram::Histogram;
use io_uring::types::{CancelBuilder, DestinationSlot, Fixed, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode, squeue};
use nix::errno::Errno;

use super::config::{LoadConfig, Workload};
use bytemuck::Zeroable;

use super::conn::{self, Conn, ConnState, flag, state};
use crate::engine::timer::TimerWheel;
use crate::engine::{Op, RingSet, Service, Token};
use crate::proto::{self, Frame};
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

/// The steps of the connect chain, for error messages and tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Socket = Op::FIRST_USER,
    Option,
    Bind,
    Connect,
    Timeout,
}

impl Step {
    fn from_op(op: u8) -> Option<Step> {
        [Step::Socket, Step::Option, Step::Bind, Step::Connect, Step::Timeout].into_iter().find(|s| *s as u8 == op)
    }

    fn name(self) -> &'static str {
        match self {
            Step::Socket => "socket",
            Step::Option => "setsockopt",
            Step::Bind => "bind",
            Step::Connect | Step::Timeout => "connect",
        }
    }
}

/// Counters of one worker, read by the main thread.
#[derive(Default)]
pub struct LoadStats {
    pub connects_started: Counter,
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
}

/// State the main thread shares with every worker.
pub struct Control {
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
        }
    }

    pub fn add(&mut self, other: &RunHistograms) {
        for (a, b) in [
            (&mut self.connect, &other.connect),
            (&mut self.connect_corrected, &other.connect_corrected),
            (&mut self.login, &other.login),
            (&mut self.rtt_corrected, &other.rtt_corrected),
            (&mut self.rtt_uncorrected, &other.rtt_uncorrected),
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
    pub worker: usize,
    pub rtt_corrected: Histogram<u64>,
    pub connect: Histogram<u64>,
}

/// What a worker hands back when it ends.
pub struct WorkerOutcome {
    pub histograms: RunHistograms,
    pub errors: BTreeMap<String, u64>,
}

fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

// Socket options every connection gets, at static addresses the kernel may read at any time.
static ONE: libc::c_int = 1;
/// Linger 0: a close ends the connection with RST, so no TIME_WAIT holds the source port and
/// the next run can bind it at once.
static LINGER_ZERO: libc::linger = libc::linger { l_onoff: 1, l_linger: 0 };

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
        // A slot keeps a partial reply (max_frame) and, for echo, the out area (2 x max_frame).
        let slot_bytes = match cfg.workload {
            Workload::Echo => 3 * cfg.max_frame,
            _ => cfg.max_frame,
        };
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
            cfg,
        })
    }

    pub fn start(&mut self, rings: &mut RingSet) {
        // CLOCK_MONOTONIC (what io_uring's absolute timeouts count in) at the load's base instant.
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| Duration::from(t).as_nanos() as u64).unwrap_or(0);
        self.mono_base = mono.saturating_sub(self.now_ns());
        self.tick_origin = self.now_ns();
        self.arm_tick(rings);
    }

    /// Arms a one-shot timeout for the next instant of the tick grid. An absolute deadline
    /// keeps the ticks on the grid: a relative (or multishot) timeout drifts by each tick's
    /// handling time, so messages would wait half a tick on average.
    fn arm_tick(&mut self, rings: &mut RingSet) {
        let next = self.on_grid(self.now_ns() + 1);
        let at = Duration::from_nanos(self.mono_base + next);
        *self.tick = Timespec::new().sec(at.as_secs()).nsec(at.subsec_nanos());
        let entry = opcode::Timeout::new(&*self.tick).flags(TimeoutFlags::ABS).build().user_data(Token::of(Op::Tick, 0, 0, 0).0);
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

    // ---- connecting -------------------------------------------------------------------

    /// Starts the connects that are due, within the concurrency bound.
    fn start_due_connects(&mut self, rings: &mut RingSet, now_ns: u64) {
        while self.next < self.total && self.connecting < self.concurrency {
            // Unpaced connects have no schedule: each is due when it is issued.
            let due = match self.cfg.connect_rate > 0.0 {
                true => self.cfg.connect_due(self.id, self.next).as_nanos() as u64,
                false => now_ns,
            };
            if due > now_ns || !self.start_connect(rings, due, now_ns) {
                break;
            }
        }
    }

    /// Makes, configures, binds and connects one socket with a chain of linked SQEs. The socket
    /// goes straight into a fixed-file slot chosen here (so later links can name it) and never
    /// enters the fd table.
    /// Returns `false` when the ring's SQ had no room for the chain (nothing was started).
    fn start_connect(&mut self, rings: &mut RingSet, due_ns: u64, now_ns: u64) -> bool {
        // Slots are handed out in order and never freed, so the next slot is `next`.
        let (ring, file) = self.place(self.next as u32);
        let Some(slot) = self.slab.alloc() else { return false };
        debug_assert_eq!(slot as u64, self.next);
        let k = self.next;
        self.next += 1;
        self.connecting += 1;
        self.stats.connects_started.inc();
        let g = k * self.cfg.workers as u64 + self.id as u64;
        let source = self.cfg.ports.source_of(g).expect("validated: the port plan covers every connection");
        let bind = socket2::SockAddr::from(source);
        let with_timeout = !self.cfg.connect_timeout.is_zero();
        let c = self.slab.header_mut(slot);
        c.s.state = state::CONNECTING;
        c.s.due_ns = due_ns;
        c.s.t_ns = now_ns;
        c.s.inflight = 1 + with_timeout as u8;
        // The bind address waits in the (still unused) out area until the kernel has read it.
        // SAFETY: `as_ptr` points at `len` initialised bytes of a sockaddr, and a sockaddr_in6
        // (28 bytes) fits the 80-byte out area.
        let bind_bytes = unsafe { std::slice::from_raw_parts(bind.as_ptr() as *const u8, bind.len() as usize) };
        c.out[..bind_bytes.len()].copy_from_slice(bind_bytes);
        let (bind_ptr, bind_len) = (c.out.as_ptr() as *const libc::sockaddr, bind.len());
        let link = squeue::Flags::IO_LINK;
        let quiet = link | squeue::Flags::SKIP_SUCCESS;
        let family = if self.cfg.target.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
        let slot_target = DestinationSlot::try_from_slot_target(file).expect("file index below the table size");
        let mut entries = vec![
            opcode::Socket::new(family, libc::SOCK_STREAM, 0)
                .file_index(Some(slot_target))
                .build()
                .flags(quiet)
                .user_data(self.token(Step::Socket as u8, slot)),
        ];
        for (level, name, value, len) in [
            (libc::SOL_SOCKET, libc::SO_REUSEADDR, &ONE as *const _ as *const libc::c_void, 4),
            (libc::SOL_SOCKET, libc::SO_LINGER, &LINGER_ZERO as *const _ as *const libc::c_void, std::mem::size_of::<libc::linger>() as u32),
            (libc::IPPROTO_TCP, libc::TCP_NODELAY, &ONE as *const _ as *const libc::c_void, 4),
        ] {
            entries.push(
                opcode::SetSockOpt::new(Fixed(file), level as u32, name as u32, value, len)
                    .build()
                    .flags(quiet)
                    .user_data(self.token(Step::Option as u8, slot)),
            );
        }
        entries.push(
            opcode::Bind::new(Fixed(file), bind_ptr, bind_len)
                .build()
                .flags(quiet)
                .user_data(self.token(Step::Bind as u8, slot)),
        );
        let connect = opcode::Connect::new(Fixed(file), self.target.as_ptr() as *const libc::sockaddr, self.target.len())
            .build()
            .user_data(self.token(Step::Connect as u8, slot));
        if with_timeout {
            entries.push(connect.flags(link));
            entries.push(opcode::LinkTimeout::new(&*self.connect_timeout).build().user_data(self.token(Step::Timeout as u8, slot)));
        } else {
            entries.push(connect);
        }
        // SAFETY: as in `push`: the entries point at the connection's header (the bind address),
        // the boxed target and timeout, and static option values, all of which outlive the chain.
        if unsafe { rings.rings[ring].push_chain(&entries) } {
            return true;
        }
        // No room: give the slot back untouched and try at a later tick.
        let c = self.slab.header_mut(slot);
        *c = Conn::zeroed();
        self.slab.free(slot);
        self.next -= 1;
        self.connecting -= 1;
        self.stats.connects_started.sub(1);
        false
    }

    fn on_connect_step(&mut self, rings: &mut RingSet, step: Step, slot: u32, res: i32) {
        let c = self.slab.header_mut(slot);
        if c.s.state != state::CONNECTING {
            return;
        }
        match step {
            Step::Connect if res >= 0 => c.s.flags |= flag::CONNECT_OK,
            Step::Timeout if res == -libc::ETIME => c.s.flags |= flag::TIMED_OUT,
            _ if res < 0 && res != -libc::ECANCELED && c.s.err == 0 && step != Step::Timeout => {
                c.s.err = res;
                c.s.err_step = step as u8;
            }
            _ => {}
        }
        if matches!(step, Step::Connect | Step::Timeout) {
            c.s.inflight -= 1;
            if c.s.inflight == 0 {
                self.connect_done(rings, slot);
            }
        }
    }

    /// The whole connect chain has reported: log in, or count the failure and close.
    fn connect_done(&mut self, rings: &mut RingSet, slot: u32) {
        self.connecting -= 1;
        let now = self.now_ns();
        let c = *self.slab.header(slot);
        if c.s.has(flag::CONNECT_OK) {
            self.stats.connected.inc();
            record(&mut self.hist.connect, now - c.s.t_ns);
            record(&mut self.hist.connect_corrected, now.saturating_sub(c.s.due_ns));
            record(&mut self.interval_connect, now - c.s.t_ns);
            if c.s.has(flag::CLOSE_WANTED) {
                return self.close(rings, slot);
            }
            self.login(rings, slot, now);
            return;
        }
        let kind = if c.s.has(flag::TIMED_OUT) {
            "connect timeout".to_string()
        } else if c.s.err != 0 {
            let step = Step::from_op(c.s.err_step).map(Step::name).unwrap_or("connect");
            format!("{step} {:?}", Errno::from_raw(-c.s.err))
        } else {
            "connect ECANCELED".to_string()
        };
        self.error(kind);
        self.stats.failed.inc();
        self.close(rings, slot);
    }

    fn login(&mut self, rings: &mut RingSet, slot: u32, now: u64) {
        let g = self.global(slot);
        let hello = Frame::Hello { user_id: self.cfg.first_user + g, client_time_ns: now };
        let timeout = self.cfg.connect_timeout.max(Duration::from_secs(1));
        let (c, out) = self.out_area(slot);
        c.state = state::HELLO_SENT;
        c.t_ns = now;
        c.out_len = proto::encode(&hello, out) as u16;
        self.arm_recv(rings, slot);
        self.flush(rings, slot);
        self.wheel.schedule(slot, self.tick_of(now + timeout.as_nanos() as u64));
    }

    fn global(&self, slot: u32) -> u64 {
        // Slots are handed out in order, so slot k is this worker's k-th connection.
        slot as u64 * self.cfg.workers as u64 + self.id as u64
    }

    // ---- receiving --------------------------------------------------------------------

    fn arm_recv(&mut self, rings: &mut RingSet, slot: u32) {
        let (ring, file) = self.place(slot);
        let token = self.token(Op::Recv as u8, slot);
        let c = self.slab.header_mut(slot);
        c.s.flags |= flag::RECV_ARMED;
        c.s.inflight += 1;
        let entry = opcode::RecvMulti::new(Fixed(file), rings.rings[ring].bufs.bgid()).build().user_data(token);
        Self::push(rings, ring, entry);
    }

    fn on_recv(&mut self, rings: &mut RingSet, ring: usize, slot: u32, cqe: &cqueue::Entry) {
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        if !more {
            let c = self.slab.header_mut(slot);
            c.s.flags &= !flag::RECV_ARMED;
            c.s.inflight -= 1;
        }
        let live = matches!(self.slab.header(slot).s.state, state::HELLO_SENT | state::LOGGED_IN);
        if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
            if res > 0 && live {
                self.stats.bytes_received.add(res as u64);
                self.take_input(rings, ring, slot, bid, res as usize);
            }
            rings.rings[ring].bufs.recycle(bid);
        }
        let still_live = matches!(self.slab.header(slot).s.state, state::HELLO_SENT | state::LOGGED_IN);
        match res {
            0 if still_live => self.lose(rings, slot, "closed by server".into()),
            _ if res == -libc::ENOBUFS => {
                self.stats.recv_no_buffers.inc();
            }
            _ if res < 0 && res != -libc::ECANCELED && still_live => {
                self.lose(rings, slot, format!("recv {:?}", Errno::from_raw(-res)))
            }
            _ => {}
        }
        let c = self.slab.header(slot);
        if !more && res != 0 && matches!(c.s.state, state::HELLO_SENT | state::LOGGED_IN) {
            self.rearm.push(slot);
        }
        self.maybe_done(slot);
    }

    fn take_input(&mut self, rings: &mut RingSet, ring: usize, slot: u32, bid: u16, len: usize) {
        let max_frame = self.cfg.max_frame;
        let now = self.now_ns();
        let measuring = self.control.phase.load(Ordering::Relaxed) == phase::MESSAGES;
        let data = rings.rings[ring].bufs.data(bid, len);
        let mut outcome: Option<String> = None;
        let mut logged_in = false;
        let mut replies = 0u64;
        let view = self.slab.session(slot);
        let (c, partial) = (&mut view.header.s, view.slot);
        let hist = &mut self.hist;
        let interval_rtt = &mut self.interval_rtt;
        let mut touch = view.touch;
        let (st, outstanding) = (&mut c.state, &mut c.outstanding);
        let result = conn::take_bytes(&mut c.partial_len, &mut partial[..max_frame], data, max_frame, |frame| {
            match frame {
                Frame::Welcome { .. } if *st == state::HELLO_SENT => {
                    *st = state::LOGGED_IN;
                    logged_in = true;
                    true
                }
                Frame::Pong { .. } | Frame::EchoReply { .. } => match conn::reply_times(&frame) {
                    Some((sent_ns, due_ns)) if *st == state::LOGGED_IN && *outstanding > 0 => {
                        *outstanding -= 1;
                        replies += 1;
                        record(interval_rtt, now.saturating_sub(due_ns));
                        if measuring {
                            record(&mut hist.rtt_corrected, now.saturating_sub(due_ns));
                            record(&mut hist.rtt_uncorrected, now.saturating_sub(sent_ns));
                        }
                        true
                    }
                    _ => {
                        outcome = Some("unexpected reply from server".into());
                        false
                    }
                },
                Frame::Error { code, .. } => {
                    let name = proto::ErrorCode::from_u16(code).map(|c| c.name()).unwrap_or("unknown");
                    outcome = Some(format!("server ERROR {code} {name}"));
                    false
                }
                Frame::Bye => {
                    outcome = Some("server BYE".into());
                    false
                }
                other => {
                    outcome = Some(format!("unexpected {} from server", other.kind().name()));
                    false
                }
            }
        });
        if c.partial_len > 0 {
            touch.upto(c.partial_len as usize);
        }
        if let Err(bad) = result {
            outcome = Some(format!("bad frame from server: {:?}", bad.0));
        }
        if replies > 0 {
            self.stats.received.add(replies);
        }
        if logged_in {
            self.logged_in(slot, now);
        }
        if let Some(kind) = outcome {
            self.lose(rings, slot, kind);
        }
    }

    fn logged_in(&mut self, slot: u32, now: u64) {
        let c = self.slab.header_mut(slot);
        let t = c.s.t_ns;
        c.s.flags |= flag::COUNTED_UP;
        record(&mut self.hist.login, now - t);
        self.stats.established_total.inc();
        self.stats.established.add(1);
        self.wheel.cancel(slot);
        if self.cfg.workload != Workload::Idle && self.control.phase.load(Ordering::Relaxed) < phase::HOLD {
            // A random phase within one interval, so connections do not send in step; on the
            // tick grid, so a message is not counted late for waiting for the next tick.
            let jitter = self.rand_below(self.interval_ns);
            let first = self.on_grid(now + jitter);
            self.slab.header_mut(slot).s.due_ns = first;
            self.wheel.schedule(slot, self.tick_of(first));
        }
    }

    // ---- sending ----------------------------------------------------------------------

    /// A connection's state and its out area: inline in the header for ping and idle, in the
    /// slot for echo (frames up to max_frame).
    fn out_area(&mut self, slot: u32) -> (&mut ConnState, &mut [u8]) {
        let max_frame = self.cfg.max_frame;
        let echo = self.cfg.workload == Workload::Echo;
        let view = self.slab.session(slot);
        let Conn { s, out } = view.header;
        if echo {
            let mut touch = view.touch;
            touch.upto(3 * max_frame);
            (s, &mut view.slot[max_frame..3 * max_frame])
        } else {
            (s, &mut out[..])
        }
    }

    /// Stages every message that is due (as many as the out area holds) and sends.
    fn send_due(&mut self, rings: &mut RingSet, slot: u32, now: u64) {
        if self.slab.header(slot).s.has(flag::SENDING) {
            // The previous send has not completed: this one goes when it does.
            self.stats.late.inc();
            return;
        }
        let (echo, len, interval) = (self.cfg.workload == Workload::Echo, self.frame_len, self.interval_ns);
        let mut staged = 0u64;
        let (c, out) = self.out_area(slot);
        while c.due_ns <= now && c.out_len as usize + len <= out.len() {
            let at = c.out_len as usize;
            conn::write_message(&mut out[at..], echo, len, now, c.due_ns);
            c.out_len += len as u16;
            c.due_ns += interval;
            c.outstanding += 1;
            staged += 1;
        }
        let next_due = c.due_ns;
        self.stats.sent.add(staged);
        self.flush(rings, slot);
        if self.control.phase.load(Ordering::Relaxed) < phase::HOLD {
            self.wheel.schedule(slot, self.tick_of(next_due));
        }
    }

    /// Starts a send of everything staged, if none is in flight.
    fn flush(&mut self, rings: &mut RingSet, slot: u32) {
        let (ring, file) = self.place(slot);
        let token = self.token(Op::Send as u8, slot);
        let (c, out) = self.out_area(slot);
        if c.has(flag::SENDING) || c.out_len == 0 {
            return;
        }
        c.flags |= flag::SENDING;
        c.send_len = c.out_len;
        c.inflight += 1;
        let entry = opcode::Send::new(Fixed(file), out.as_ptr(), c.send_len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token);
        Self::push(rings, ring, entry);
    }

    fn on_send(&mut self, rings: &mut RingSet, slot: u32, res: i32) {
        let (c, out) = self.out_area(slot);
        c.inflight -= 1;
        let live = matches!(c.state, state::HELLO_SENT | state::LOGGED_IN);
        if res < 0 {
            c.flags &= !flag::SENDING;
            if live {
                self.lose(rings, slot, format!("send {:?}", Errno::from_raw(-res)));
            }
        } else {
            conn::sent(c, out, res as usize);
            self.stats.bytes_sent.add(res as u64);
            if live {
                let now = self.now_ns();
                if self.slab.header(slot).s.out_len > 0 {
                    self.flush(rings, slot);
                } else if self.slab.header(slot).s.state == state::LOGGED_IN
                    && self.slab.header(slot).s.due_ns <= now
                    && self.control.phase.load(Ordering::Relaxed) < phase::HOLD
                {
                    self.send_due(rings, slot, now);
                }
            }
        }
        self.maybe_done(slot);
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
        self.arm_tick(rings);
        let now = self.now_ns();
        let current = self.control.phase.load(Ordering::Relaxed);
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
                worker: self.id,
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
                let limit = c.s.t_ns + self.cfg.connect_timeout.max(Duration::from_secs(1)).as_nanos() as u64;
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
