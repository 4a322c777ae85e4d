//! The xdp data plane: AF_XDP sockets (`crate::xdp`) carry raw Ethernet frames between the NIC and
//! this worker, and c2m's own TCP (`crate::tcp`) runs the connections; the owner (a [`Handler`])
//! is the same session logic as on the kernel data plane. It runs on the same engine: a multishot
//! poll on the socket's descriptor wakes the worker when frames arrive (it blocks, never spins:
//! two busy-spinning ends on a small box starve the softirq that moves frames over a veth), the
//! engine's tick drives TCP's timers, and MSG_RING wakes it for mail.
//!
//! On a veth pair AF_XDP runs in copy mode: this bypasses the kernel's TCP stack, not the kernel
//! (frames are still copied by it). Zero-copy is only where a NIC driver gives it.
//!
//! Per connection this plane keeps the TCP control block (64 bytes, in the endpoint's dense
//! table) and a 4-byte map from the owner's slot to it. Output stays in the owner's memory until
//! acknowledged (`Handler::peek_output`, `Handler::sent`); input goes straight to the owner, and
//! an owner that consumes less pauses the connection (window 0) until it asks to resume.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::opcode;
use io_uring::types::Fd;

use super::held::{HeldInput, Offered};
use super::{Close, ConnId, ConnectError, Failure, Handler, Request, Requests, TickPlan};
use crate::engine::{Completion, EngineError, Io, Service};
use crate::stats::TransportStats;
use crate::tcp::{self, CloseCause, Endpoint, FaultConfig, FaultInjector, TcbId};
use crate::xdp::{Frame, XdpProgram, Xsk};

crate::service_ops! {
    /// The xdp data plane's operations.
    pub enum XdpOp {
        /// A multishot poll on the AF_XDP socket: frames are on its RX ring.
        Readable: free,
    }
}

/// No control block (the slot has no connection on this plane).
const NONE: u32 = u32::MAX;
/// Frames taken off the RX ring per batch, and batches per wake-up before the worker lets the
/// rest of its loop run.
const RX_BATCH: usize = 64;
const RX_ROUNDS: usize = 16;
/// Free TX frames kept at hand while frames are handled (TCP asks for one per segment).
const TX_SPARE: usize = 64;

/// Each worker's AF_XDP socket: 16,384 frames of 2 KiB (a 32 MiB UMEM), 8,192 of them with the
/// kernel to receive into. A burst (every client of a big run connecting or closing at once)
/// arrives faster than the worker is scheduled on a small box; what its RX ring cannot hold is
/// dropped (SYNs then come again a second later, RSTs not at all). The default socket's 2,048
/// dropped 80,000 frames of a 2,000,000-connection run here.
fn socket_config() -> crate::xdp::XskConfig {
    crate::xdp::XskConfig {
        frame_size: 2048,
        frame_count: 16_384,
        fill_size: 8192,
        completion_size: 8192,
        rx_size: 8192,
        tx_size: 4096,
        rx_frames: 8192,
        ..Default::default()
    }
}

/// One worker's share of the xdp data plane.
pub struct XdpConfig {
    /// The socket, bound to this worker's queue and registered in `program`'s map.
    pub xsk: Xsk,
    /// Kept alive while the worker runs (its map holds the socket).
    pub program: Arc<XdpProgram>,
    pub tcp: tcp::Config,
    pub local_mac: [u8; 6],
    /// The next hop's MAC (learned from received frames when not given).
    pub peer_mac: Option<[u8; 6]>,
    /// Accept connections to this address (a server).
    pub listen: Option<SocketAddrV4>,
    /// Connections (owner slots) at most.
    pub slots: usize,
    /// Faults on received frames (a test option: netem is not built into this kernel).
    pub fault: Option<(FaultConfig, u64)>,
}

/// The io_uring ring of an xdp worker: it only polls the AF_XDP socket and ticks (no sockets of
/// its own, no receive buffers).
pub const POLL_RING: crate::engine::RingConfig =
    crate::engine::RingConfig { sq_entries: 64, cq_entries: 256, files: 16, recv_buffers: 2, recv_buffer_size: 64 };

impl XdpConfig {
    /// Worker `queue`'s share: the AF_XDP socket bound to that queue of `iface` and registered in
    /// `program`'s map, TCP with `tcp`, faults (if any) seeded per queue. Not listening, no
    /// slots and no peer MAC until the caller says.
    pub fn on_queue(
        iface: &crate::xdp::Interface,
        program: &Arc<XdpProgram>,
        queue: u32,
        tcp: tcp::Config,
        fault: Option<FaultConfig>,
    ) -> Result<XdpConfig, String> {
        let xsk = Xsk::bind(iface, queue, &socket_config()).map_err(|e| e.to_string())?;
        program.register(&xsk).map_err(|e| e.to_string())?;
        let seed = tcp.secret ^ queue as u64;
        Ok(XdpConfig {
            xsk,
            program: program.clone(),
            tcp,
            local_mac: iface.mac(),
            peer_mac: None,
            listen: None,
            slots: 0,
            fault: fault.map(|f| (f, seed)),
        })
    }
}

/// Connections refused for want of room: told the owner's refusal (ERROR 5), then closed. They
/// take ids above the owner's slots, so the endpoint can name them.
#[derive(Default)]
struct Refused {
    first: u32,
    next: u32,
    /// Bytes of the refusal acknowledged, per refused connection.
    acked: HashMap<u32, usize>,
    /// Refused connections whose refusal and FIN are still to be queued.
    to_close: Vec<TcbId>,
}

impl Refused {
    fn is(&self, conn: u32) -> bool {
        conn >= self.first
    }

    fn open(&mut self, tcb: TcbId) -> u32 {
        let id = self.next;
        self.next = if self.next == u32::MAX - 1 { self.first } else { self.next + 1 };
        self.acked.insert(id, 0);
        self.to_close.push(tcb);
        id
    }
}

/// An `Owner` over the transport's fields (a macro, not a method: the endpoint and the TX frames
/// are borrowed beside it).
macro_rules! owner {
    ($t:expr) => {
        Owner {
            handler: &mut $t.handler,
            q: &mut $t.q,
            tcb_of: &mut $t.tcb_of,
            refused: &mut $t.refused,
            held: &mut $t.held,
            accepting: $t.accepting,
        }
    };
}

/// The TX frames over the transport's fields (a macro for the same reason as `owner!`).
macro_rules! tx_frames {
    ($t:expr) => {
        TxFrames { xsk: &mut $t.xsk, free: &mut $t.tx_free, out: &mut $t.tx_out, current: None }
    };
}

/// What the TCP endpoint asks of the connections' owner, answered by the owner's `Handler`.
struct Owner<'a, H> {
    handler: &'a mut H,
    q: &'a mut Requests,
    tcb_of: &'a mut [u32],
    refused: &'a mut Refused,
    held: &'a mut HeldInput,
    accepting: bool,
}

impl<H: Handler> Owner<'_, H> {
    /// The owner asked for its input again: the held bytes first, then (all taken) the window
    /// reopens. True when it may reopen.
    fn resume(&mut self, conn: u32) -> bool {
        let (handler, q) = (&mut *self.handler, &mut *self.q);
        match self.held.offer(conn, |data| handler.input(q, conn, data)) {
            Offered::Nothing => true,
            Offered::All { ended } => {
                if ended {
                    self.handler.input_ended(self.q, conn);
                }
                true
            }
            Offered::Some => false,
        }
    }
}

impl<H: Handler> tcp::App for Owner<'_, H> {
    fn accept(&mut self, tcb: TcbId, _local: SocketAddrV4, _remote: SocketAddrV4) -> Option<u32> {
        if !self.accepting {
            return None;
        }
        match self.handler.admit() {
            Some(conn) => {
                self.tcb_of[conn as usize] = tcb.0;
                self.handler.opened(self.q, conn);
                Some(conn)
            }
            None => Some(self.refused.open(tcb)),
        }
    }

    fn connected(&mut self, conn: u32) {
        self.handler.opened(self.q, conn);
    }

    fn connect_failed(&mut self, conn: u32, why: tcp::ConnectError) {
        self.held.forget(conn);
        self.tcb_of[conn as usize] = NONE;
        self.handler.connect_failed(self.q, conn, connect_error(why));
        self.handler.released(self.q, conn);
        self.q.forget(conn);
    }

    fn input(&mut self, conn: u32, data: &[u8]) -> usize {
        if self.refused.is(conn) {
            return data.len();
        }
        // While bytes are held, later ones queue behind them, in order.
        let taken = if self.held.holds(conn) { 0 } else { self.handler.input(self.q, conn, data) };
        if taken < data.len() && self.held.keep(conn, &data[taken..]) {
            return data.len();
        }
        taken
    }

    fn input_held(&self, conn: u32) -> bool {
        self.held.holds(conn)
    }

    fn output(&self, conn: u32, skip: usize) -> &[u8] {
        match self.refused.acked.get(&conn) {
            Some(&acked) => self.handler.refusal().get(acked + skip..).unwrap_or(&[]),
            None if self.refused.is(conn) => &[],
            None => self.handler.peek_output(conn, skip),
        }
    }

    fn output_len(&self, conn: u32) -> usize {
        match self.refused.acked.get(&conn) {
            Some(&acked) => self.handler.refusal().len().saturating_sub(acked),
            None if self.refused.is(conn) => 0,
            None => self.handler.output_len(conn),
        }
    }

    fn acked(&mut self, conn: u32, n: usize) {
        if let Some(acked) = self.refused.acked.get_mut(&conn) {
            *acked += n;
        } else if !self.refused.is(conn) {
            self.handler.sent(self.q, conn, n);
        }
    }

    fn input_ended(&mut self, conn: u32) {
        if !self.refused.is(conn) && !self.held.end(conn) {
            self.handler.input_ended(self.q, conn);
        }
    }

    fn closed(&mut self, conn: u32, why: CloseCause) {
        if self.refused.is(conn) {
            self.refused.acked.remove(&conn);
            return;
        }
        self.held.forget(conn);
        self.tcb_of[conn as usize] = NONE;
        match why {
            CloseCause::Closed => {}
            CloseCause::Reset => self.handler.failed(self.q, conn, Failure::Recv(libc::ECONNRESET)),
            CloseCause::TimedOut => self.handler.failed(self.q, conn, Failure::Send(libc::ETIMEDOUT)),
        }
        self.handler.released(self.q, conn);
        // What the owner asked for this connection is void: TCP has let it go, and a SYN later
        // in this batch may be given the same slot (an old session's close, carried out after
        // the batch, aborted the new connection: tests/xdp_faults.rs).
        self.q.forget(conn);
    }
}

fn connect_error(e: tcp::ConnectError) -> ConnectError {
    let failed = |errno| ConnectError::Failed { step: "connect", errno };
    match e {
        tcp::ConnectError::TimedOut => ConnectError::TimedOut,
        tcp::ConnectError::Refused => failed(libc::ECONNREFUSED),
        tcp::ConnectError::NoRoom => failed(libc::EMFILE),
        tcp::ConnectError::InUse => failed(libc::EADDRINUSE),
        tcp::ConnectError::NoRoute => failed(libc::EHOSTUNREACH),
    }
}

/// How many workers serve an interface of `queues` RX queues: exactly one per queue, whatever was
/// asked. A frame arrives on the queue its sender hashed it to, and a queue without an AF_XDP
/// socket passes it to the kernel, which resets a connection it does not know. (A peer on the
/// kernel path hashes flows over every queue.) A request that differs is said on stderr.
pub fn workers_for_queues(asked: usize, queues: u32) -> usize {
    let queues = queues.max(1) as usize;
    if asked != queues {
        eprintln!("c2m: the xdp data plane runs one worker per queue: {queues} workers, not {asked}");
    }
    queues
}

/// Where the endpoint writes frames: UMEM frames of this worker's socket, queued for its TX ring.
/// It never runs dry while the socket has frames to give: with none at hand it puts what is
/// written on the TX ring, kicks the kernel and takes the completed frames back (a timer tick on
/// a million connections writes far more segments than any fixed stock of frames).
struct TxFrames<'a> {
    xsk: &'a mut Xsk,
    free: &'a mut Vec<Frame>,
    out: &'a mut Vec<Frame>,
    current: Option<Frame>,
}

impl TxFrames<'_> {
    /// Queues what is written on the TX ring, makes the kernel send it and takes back the frames
    /// it has sent.
    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.xsk.send(self.out);
        }
        if self.xsk.tx_outstanding() > 0 {
            // A failed kick leaves the frames on the ring; TCP's timers resend what is lost.
            let _ = self.xsk.kick();
        }
        self.xsk.reap();
    }

    /// Free frames back to `TX_SPARE` at hand, sending what is written first when none is free.
    fn top_up(&mut self) {
        let want = TX_SPARE.saturating_sub(self.free.len());
        if want == 0 {
            return;
        }
        self.xsk.reap();
        if self.xsk.alloc(want, self.free) == 0 {
            self.flush();
            self.xsk.alloc(want, self.free);
        }
    }
}

impl tcp::Tx for TxFrames<'_> {
    fn buffer(&mut self) -> Option<&mut [u8]> {
        if self.current.is_none() {
            if self.free.is_empty() {
                self.top_up();
            }
            self.current = self.free.pop();
        }
        let xsk = &*self.xsk;
        self.current.as_mut().map(|f| xsk.buf_mut(f))
    }

    fn send(&mut self, len: usize) {
        if let Some(mut f) = self.current.take() {
            f.set_len(len);
            self.out.push(f);
            if self.out.len() >= TX_SPARE {
                // A burst (a tick's timers, a load closing every connection): out with what is
                // written, so its frames come back for the rest.
                self.flush();
            }
        }
    }
}

impl Drop for TxFrames<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.current.take() {
            self.free.push(f);
        }
    }
}

/// The xdp data plane for one worker, driving the owner `H`.
pub struct XdpTransport<H, S> {
    handler: H,
    stats: Arc<S>,
    xsk: Xsk,
    _program: Arc<XdpProgram>,
    endpoint: Endpoint,
    /// The control block of each owner slot (`NONE`: no connection).
    tcb_of: Vec<u32>,
    refused: Refused,
    held: HeldInput,
    accepting: bool,
    rx: Vec<Frame>,
    /// The received frame TCP is reading, copied out of the UMEM.
    frame: Vec<u8>,
    tx_free: Vec<Frame>,
    tx_out: Vec<Frame>,
    fault: Option<FaultInjector>,
    q: Requests,
    pending: Vec<Request>,
    started: Instant,
    tick_ms: u64,
    plan: TickPlan,
    /// When the owner's tick is next due (ms since start, or CLOCK_MONOTONIC for `At`).
    owner_due: Duration,
}

impl<H: Handler, S: AsRef<TransportStats>> XdpTransport<H, S> {
    pub fn new(cfg: XdpConfig, handler: H, stats: Arc<S>) -> Result<XdpTransport<H, S>, EngineError> {
        let slots = u32::try_from(cfg.slots).map_err(|_| EngineError::Config("too many slots".into()))?;
        let tick_ms = cfg.tcp.tick_ms.max(1) as u64;
        let mut endpoint = Endpoint::new(cfg.tcp, cfg.local_mac);
        if let Some(addr) = cfg.listen {
            endpoint.listen(addr);
        }
        if let Some(mac) = cfg.peer_mac {
            endpoint.set_peer_mac(mac);
        }
        Ok(XdpTransport {
            handler,
            stats,
            xsk: cfg.xsk,
            _program: cfg.program,
            endpoint,
            tcb_of: vec![NONE; cfg.slots],
            refused: Refused { first: slots, next: slots, ..Refused::default() },
            held: HeldInput::default(),
            accepting: cfg.listen.is_some(),
            rx: Vec::with_capacity(RX_BATCH),
            frame: Vec::with_capacity(crate::tcp::wire::MAX_FRAME),
            tx_free: Vec::with_capacity(TX_SPARE),
            tx_out: Vec::with_capacity(TX_SPARE),
            fault: cfg.fault.map(|(f, seed)| FaultInjector::new(f, seed)),
            q: Requests::default(),
            pending: Vec::new(),
            started: Instant::now(),
            tick_ms,
            plan: TickPlan::Every(Duration::from_millis(tick_ms)),
            owner_due: Duration::ZERO,
        })
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    pub fn into_handler(self) -> H {
        self.handler
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn arm_poll(&mut self, io: &mut Io<XdpOp>) {
        use std::os::fd::AsRawFd;
        let entry = opcode::PollAdd::new(Fd(self.xsk.as_raw_fd()), libc::POLLIN as u32).multi(true).build();
        // SAFETY: a poll entry points at no memory; the socket's descriptor is owned by `self`,
        // which outlives the rings (the pool drops a worker's rings before its service).
        unsafe { io.submit(0, XdpOp::Readable, 0, entry) }
    }

    /// Takes what arrived off the RX ring and hands it to TCP, batch by batch. Each frame is
    /// copied out first (an Ethernet frame at most, most of them under 100 bytes): its UMEM frame goes
    /// back to the kernel with the batch, and TCP may take TX frames from the same socket while
    /// it reads the copy.
    fn pump(&mut self, io: &mut Io<XdpOp>) {
        for _ in 0..RX_ROUNDS {
            if self.xsk.recv(&mut self.rx) == 0 {
                return;
            }
            let now = self.now_ms();
            for i in 0..self.rx.len() {
                self.frame.clear();
                self.frame.extend_from_slice(self.xsk.data(&self.rx[i]));
                let data = &self.frame[..];
                let mut owner = owner!(self);
                let mut tx = tx_frames!(self);
                match &mut self.fault {
                    Some(fault) => fault.send(now, data, &mut |f| self.endpoint.on_frame(now, f, &mut owner, &mut tx)),
                    None => self.endpoint.on_frame(now, data, &mut owner, &mut tx),
                }
            }
            self.xsk.release(&mut self.rx);
            self.close_refused(now);
            self.apply(io);
        }
        // More may be waiting: the poll fires only for new frames, so come back next round.
        io.keep_awake();
    }

    /// Refused connections: their refusal goes out, then their FIN.
    fn close_refused(&mut self, now: u64) {
        for tcb in std::mem::take(&mut self.refused.to_close) {
            let mut owner = owner!(self);
            let mut tx = tx_frames!(self);
            self.endpoint.output_ready(now, tcb, &mut owner, &mut tx);
            self.endpoint.close(now, tcb, &mut owner, &mut tx);
        }
    }

    /// Queues what TCP wrote on the TX ring and makes the kernel send it.
    fn flush_tx(&mut self) {
        tx_frames!(self).flush();
    }

    /// Carries out what the owner asked for, in order, until it asks nothing more.
    fn apply(&mut self, io: &mut Io<XdpOp>) {
        let now = self.now_ms();
        loop {
            self.q.take(&mut self.pending);
            if self.pending.is_empty() {
                break;
            }
            let mut pending = std::mem::take(&mut self.pending);
            for request in pending.drain(..) {
                self.carry_out(io, now, request);
            }
            self.pending = pending;
        }
        self.flush_tx();
    }

    fn carry_out(&mut self, io: &mut Io<XdpOp>, now: u64, request: Request) {
        let tcb = |conn: ConnId, tcb_of: &[u32]| tcb_of.get(conn as usize).copied().filter(|&t| t != NONE).map(TcbId);
        let mut owner = owner!(self);
        let mut tx = tx_frames!(self);
        match request {
            Request::Send(conn) => {
                if let Some(t) = tcb(conn, owner.tcb_of) {
                    self.endpoint.output_ready(now, t, &mut owner, &mut tx);
                }
            }
            Request::Resume(conn) => {
                if let Some(t) = tcb(conn, owner.tcb_of)
                    && owner.resume(conn)
                {
                    self.endpoint.set_input_paused(t, false, &mut tx);
                }
            }
            Request::Close(conn, Close::Graceful) => {
                if let Some(t) = tcb(conn, owner.tcb_of) {
                    self.endpoint.close(now, t, &mut owner, &mut tx);
                }
            }
            Request::Close(conn, Close::Now | Close::Abort) => {
                // RST: the connection is let go at once (TCP tells the owner nothing more).
                if let Some(t) = tcb(conn, owner.tcb_of) {
                    self.endpoint.abort(t, &mut tx);
                    owner.held.forget(conn);
                    owner.tcb_of[conn as usize] = NONE;
                    owner.handler.released(owner.q, conn);
                    owner.q.forget(conn);
                }
            }
            Request::Connect { conn, from, to } => {
                let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
                    let err = ConnectError::Failed { step: "connect", errno: libc::EAFNOSUPPORT };
                    owner.handler.connect_failed(owner.q, conn, err);
                    owner.handler.released(owner.q, conn);
                    return owner.q.forget(conn);
                };
                match self.endpoint.connect(now, from, to, conn, &mut tx) {
                    Ok(t) => owner.tcb_of[conn as usize] = t.0,
                    Err(e) => {
                        owner.handler.connect_failed(owner.q, conn, connect_error(e));
                        owner.handler.released(owner.q, conn);
                        owner.q.forget(conn);
                    }
                }
            }
            Request::StopAccepting => self.accepting = false,
            Request::Wake(worker) => {
                io.wake(worker);
            }
        }
    }

    /// The engine's next tick: TCP's timer grain, or sooner if the owner's is due first.
    fn arm_tick(&mut self, io: &mut Io<XdpOp>) {
        let grain = Duration::from_millis(self.tick_ms);
        match self.plan {
            TickPlan::Every(_) => {}
            TickPlan::At(_) => io.tick_at(self.owner_due.min(monotonic() + grain)),
        }
    }

    fn publish_stats(&self) {
        let (t, s) = (self.endpoint.stats(), (*self.stats).as_ref());
        s.bytes_in.set(t.bytes_in);
        s.bytes_out.set(t.bytes_out);
        let time_wait = self.endpoint.time_wait();
        s.tcp_open.set((self.endpoint.connections() - time_wait) as u64);
        s.tcp_time_wait.set(time_wait as u64);
        s.held_input_bytes.set(self.held.bytes() as u64);
        s.frames_in.set(t.frames_in);
        s.retransmits.set(t.retransmits);
        s.resets.set(t.resets_in + t.resets_out);
        s.tx_full.set(t.tx_full);
        s.syns_in.set(t.syns_in);
        s.syn_cookies_sent.set(t.cookies_sent);
        s.syn_queue.set(u64::from(self.endpoint.syn_queue_len()));
        s.bad_segments.set(t.bad_frames.iter().sum::<u64>() + t.bad_flags);
        s.no_connection.set(t.no_connection);
        s.challenge_acks.set(t.challenge_acks);
        if let Ok(k) = self.xsk.kernel_stats() {
            s.xsk_dropped.set(k.rx_dropped + k.rx_ring_full + k.rx_fill_ring_empty_descs + k.rx_invalid_descs);
        }
    }
}

fn monotonic() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(Duration::from).unwrap_or_default()
}

impl<H: Handler, S: AsRef<TransportStats>> Service for XdpTransport<H, S> {
    type Op = XdpOp;

    fn start(&mut self, io: &mut Io<XdpOp>) {
        self.plan = self.handler.start(&mut self.q);
        let grain = Duration::from_millis(self.tick_ms);
        match self.plan {
            TickPlan::Every(period) => {
                io.tick_every(period.min(grain));
                self.owner_due = period;
            }
            TickPlan::At(at) => {
                self.owner_due = at;
                self.arm_tick(io);
            }
        }
        (*self.stats).as_ref().rings.set(1);
        self.arm_poll(io);
        self.apply(io);
    }

    fn on_completion(&mut self, io: &mut Io<XdpOp>, c: Completion<XdpOp>) {
        match c.op {
            XdpOp::Readable => {
                if !c.more() {
                    self.arm_poll(io);
                }
                self.pump(io);
            }
        }
    }

    fn on_quiet(&mut self, _io: &mut Io<XdpOp>, _slot: u32) {}

    fn on_tick(&mut self, io: &mut Io<XdpOp>) {
        let now = self.now_ms();
        {
            let mut owner = owner!(self);
            let mut tx = tx_frames!(self);
            if let Some(fault) = &mut self.fault {
                fault.release(now, &mut |f| self.endpoint.on_frame(now, f, &mut owner, &mut tx));
            }
            self.endpoint.on_tick(now, &mut owner, &mut tx);
        }
        match self.plan {
            TickPlan::Every(period) => {
                let since = Duration::from_millis(now);
                if since >= self.owner_due {
                    self.owner_due = since + period;
                    self.handler.tick(&mut self.q);
                }
            }
            TickPlan::At(_) => {
                if monotonic() >= self.owner_due
                    && let Some(next) = self.handler.tick(&mut self.q)
                {
                    self.owner_due = next;
                }
                self.arm_tick(io);
            }
        }
        self.publish_stats();
        self.apply(io);
    }

    fn on_wake(&mut self, io: &mut Io<XdpOp>) {
        self.handler.wake(&mut self.q);
        self.apply(io);
    }

    fn after_batch(&mut self, io: &mut Io<XdpOp>) {
        self.handler.after_batch(&mut self.q);
        self.apply(io);
    }

    fn done(&self) -> bool {
        self.handler.done()
    }
}
