//! The endpoint: the one object a data plane drives (one per worker). It owns the control blocks,
//! the listen queue and the timers, and talks to the connections' owner through [`App`] and to
//! the wire through [`Tx`]. No I/O and no clock here: frames and the time come in as arguments.
//!
//! Segment handling for a connection is in `input.rs`; sending and timers in `output.rs`.

use std::net::{Ipv4Addr, SocketAddrV4};

use thiserror::Error;

use super::listen::{self, COOKIE_MSS, SynEntry, SynQueue};
use super::table::{Key, Table};
use super::tcb::{NO_CONN, State, TCB_SIZE, Tcb, flag};
use super::wire::{self, Header, Segment, WireError, flags};
use crate::engine::timer::TimerWheel;

/// Sizes, limits and timeouts. Times in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Control blocks (connections, TIME-WAIT included); fixed for the endpoint's life.
    pub capacity: u32,
    /// The MSS we announce (and the most we send in one segment).
    pub mss: u16,
    /// The receive window we advertise (no window scaling: at most 65,535).
    pub rcv_wnd: u16,
    /// SYN-RECEIVED entries; past this, SYN cookies.
    pub syn_backlog: u32,
    /// SYN retransmissions before a connect fails with TimedOut.
    pub syn_retries: u8,
    /// An active open that is not established this long after its SYN fails (0: only
    /// `syn_retries` bounds it), as a kernel socket's connect with a linked timeout does.
    pub connect_timeout_ms: u32,
    /// SYN-ACK retransmissions before a half-open entry is dropped.
    pub synack_retries: u8,
    /// Retransmissions (or unanswered window probes) before a connection is given up.
    pub max_retries: u8,
    pub rto_initial_ms: u32,
    pub rto_min_ms: u32,
    /// At most 65,535 (the control block keeps the RTO in 16 bits).
    pub rto_max_ms: u32,
    pub delayed_ack_ms: u32,
    pub time_wait_ms: u32,
    /// Timer granularity: deadlines are rounded up to a tick.
    pub tick_ms: u32,
    /// Key for initial sequence numbers, SYN cookies and the tables' hash (the data plane picks
    /// a random one at start; tests fix it).
    pub secret: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            capacity: 65_536,
            mss: wire::MAX_MSS,
            rcv_wnd: u16::MAX,
            syn_backlog: 4096,
            syn_retries: 6,
            connect_timeout_ms: 0,
            synack_retries: 5,
            max_retries: 15,
            rto_initial_ms: 1000,
            rto_min_ms: 200,
            rto_max_ms: 60_000,
            delayed_ack_ms: 40,
            time_wait_ms: 60_000,
            tick_ms: 10,
            secret: 0x5eed_c2a1_7c90_0001,
        }
    }
}

/// A control block's index: valid from `accept`/`connect` until the owner is told the connection
/// is gone (`closed`, `connect_failed`) or calls `abort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcbId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ConnectError {
    #[error("connection refused (RST)")]
    Refused,
    #[error("no answer to the SYN after every retry")]
    TimedOut,
    #[error("no free control block")]
    NoRoom,
    #[error("the 4-tuple is in use")]
    InUse,
    #[error("no next-hop MAC address known (set_peer_mac)")]
    NoRoute,
}

/// Why a connection ended (told to the owner in [`App::closed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// FIN both ways.
    Closed,
    /// The peer reset it.
    Reset,
    /// Retransmissions or window probes went unanswered `max_retries` times.
    TimedOut,
}

/// What the endpoint asks of the connections' owner (the session logic), by the owner's id.
pub trait App {
    /// A passive open completed. Return the owner's id for the connection, or None to refuse (RST).
    fn accept(&mut self, tcb: TcbId, local: SocketAddrV4, remote: SocketAddrV4) -> Option<u32>;
    fn connected(&mut self, conn: u32);
    /// An active open failed: Refused (RST) or TimedOut (SYN retries). `conn` may be reused.
    fn connect_failed(&mut self, conn: u32, why: ConnectError);
    /// In-order payload. Returns how many bytes were consumed; fewer than all means the owner is
    /// paused: the rest is not acknowledged, the window goes to 0, and the peer sends it again
    /// after [`Endpoint::set_input_paused`]`(false)` reopens it.
    fn input(&mut self, conn: u32, data: &[u8]) -> usize;
    /// The owner consumed its input but holds it, paused: the window goes to 0 all the same (and
    /// what the peer had in flight is still offered), until `set_input_paused(false)`.
    fn input_held(&self, _conn: u32) -> bool {
        false
    }
    /// The owner's output queue: contiguous bytes starting `skip` bytes after its head (a piece;
    /// may be shorter than the rest: called again with a larger skip). Every byte stays until
    /// `acked` says it is done: the TCP keeps no send buffer of its own.
    fn output(&self, conn: u32, skip: usize) -> &[u8];
    fn output_len(&self, conn: u32) -> usize;
    /// `n` bytes from the head of the output queue are acknowledged: the owner drops them.
    fn acked(&mut self, conn: u32, n: usize);
    /// The peer's FIN, after all its data.
    fn input_ended(&mut self, conn: u32);
    /// The connection is gone (closed both ways, reset, or retries exhausted); `conn` may be reused.
    fn closed(&mut self, conn: u32, why: CloseCause);
}

/// Where frames go out.
pub trait Tx {
    /// A free transmit buffer of at least [`wire::MAX_FRAME`] bytes, or None: no buffer free now
    /// (data stays queued and goes at the next `output_ready` or timer; a lost pure ACK is fine).
    fn buffer(&mut self) -> Option<&mut [u8]>;
    /// The buffer last returned by `buffer` holds a frame of `len` bytes: send it.
    fn send(&mut self, len: usize);
}

/// Counters, each written by the endpoint's thread only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    pub frames_in: u64,
    /// Frames refused by the parser, by [`WireError::index`].
    pub bad_frames: [u64; WireError::ALL.len()],
    /// Parsed, but addressed to another MAC.
    pub not_for_us: u64,
    pub segments_in: u64,
    pub segments_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Flag combinations no stack sends (SYN+FIN, SYN+RST), dropped.
    pub bad_flags: u64,
    /// Segments for no connection and no listener (answered with RST unless they were one).
    pub no_connection: u64,
    pub resets_in: u64,
    pub resets_out: u64,
    /// RFC 5961 challenge ACKs (RST in window but not exact, SYN on a connection).
    pub challenge_acks: u64,
    /// Segments outside the receive window (answered with an ACK).
    pub out_of_window: u64,
    /// In window but not the next byte: dropped with a duplicate ACK.
    pub out_of_order: u64,
    /// ACKs of data never sent or too old (RFC 5961 §5), dropped with an ACK.
    pub bad_acks: u64,
    pub retransmits: u64,
    pub rto_expired: u64,
    pub fast_retransmits: u64,
    pub window_probes: u64,
    pub tx_full: u64,
    pub syns_in: u64,
    pub synack_retransmits: u64,
    pub syn_queue_timeouts: u64,
    pub cookies_sent: u64,
    pub cookies_ok: u64,
    pub cookies_bad: u64,
    pub accepted: u64,
    pub accept_refused: u64,
    /// A handshake completed with every control block in use: RST.
    pub table_full: u64,
    pub connects: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub closed: u64,
    pub reset: u64,
    pub timed_out: u64,
    pub aborted: u64,
    pub time_wait_expired: u64,
}

/// What the endpoint keeps, in bytes (fixed at start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    pub tcb: usize,
    /// Per connection: table index (buckets, in-use bit) + timer wheel link.
    pub index_per_conn: usize,
    pub wheel_link: usize,
    /// Control block + index + wheel link, for one connection.
    pub per_conn: usize,
    /// Everything: control blocks, index, listen queue, wheel.
    pub total: usize,
}

pub struct Endpoint {
    pub(super) cfg: Config,
    pub(super) local_mac: [u8; 6],
    pub(super) peer_mac: Option<[u8; 6]>,
    listeners: Vec<SocketAddrV4>,
    pub(super) tcbs: Table<Tcb>,
    pub(super) syn: SynQueue,
    /// Items `0..capacity` are control blocks, `capacity..` listen-queue entries.
    pub(super) wheel: TimerWheel,
    fired: Vec<u32>,
    ip_id: u16,
    pub(super) stats: TcpStats,
    /// Control blocks in TIME-WAIT (a gauge: a closed connection's block waits out 2MSL).
    pub(super) time_wait: u32,
}

pub(super) fn now32(now_ms: u64) -> u32 {
    now_ms as u32
}

pub(super) fn ip(a: &SocketAddrV4) -> u32 {
    u32::from(*a.ip())
}

impl Endpoint {
    pub fn new(mut cfg: Config, local_mac: [u8; 6]) -> Self {
        cfg.rto_max_ms = cfg.rto_max_ms.clamp(1, u16::MAX as u32);
        cfg.rto_min_ms = cfg.rto_min_ms.clamp(1, cfg.rto_max_ms);
        cfg.rto_initial_ms = cfg.rto_initial_ms.clamp(cfg.rto_min_ms, cfg.rto_max_ms);
        cfg.tick_ms = cfg.tick_ms.max(1);
        cfg.mss = cfg.mss.clamp(64, wire::MAX_MSS);
        // The wheel spans the longest deadline, so most timers fire once, at their tick.
        let longest = cfg.time_wait_ms.max(cfg.rto_max_ms).max(cfg.rto_initial_ms) as u64;
        let buckets = ((longest / cfg.tick_ms as u64) + 2).next_power_of_two().clamp(64, 1 << 16);
        let items = cfg.capacity as usize + cfg.syn_backlog as usize;
        Endpoint {
            tcbs: Table::new(cfg.capacity, cfg.secret),
            syn: SynQueue::new(cfg.syn_backlog, cfg.secret.rotate_left(17)),
            wheel: TimerWheel::new(items, buckets as usize),
            fired: Vec::new(),
            listeners: Vec::new(),
            peer_mac: None,
            ip_id: 0,
            stats: TcpStats::default(),
            time_wait: 0,
            local_mac,
            cfg,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn listen(&mut self, addr: SocketAddrV4) {
        if !self.listeners.contains(&addr) {
            self.listeners.push(addr);
        }
    }

    /// The next-hop MAC frames are sent to (one per interface: a veth peer or a router); also
    /// learned from the first received frame when not set.
    pub fn set_peer_mac(&mut self, mac: [u8; 6]) {
        self.peer_mac = Some(mac);
    }

    pub fn stats(&self) -> &TcpStats {
        &self.stats
    }

    /// Control blocks in use (TIME-WAIT included).
    pub fn connections(&self) -> u32 {
        self.tcbs.len()
    }

    /// Control blocks in TIME-WAIT: closed connections waiting out 2MSL.
    pub fn time_wait(&self) -> u32 {
        self.time_wait
    }

    /// Half-open passive opens waiting for their final ACK.
    pub fn syn_queue_len(&self) -> u32 {
        self.syn.table.len()
    }

    pub fn timers_scheduled(&self) -> usize {
        self.wheel.len()
    }

    /// A connection's state, while its control block is in use.
    pub fn state(&self, tcb: TcbId) -> Option<State> {
        self.tcbs.is_used(tcb.0).then(|| self.tcbs.get(tcb.0).state())
    }

    pub fn tcb(&self, tcb: TcbId) -> Option<&Tcb> {
        self.tcbs.is_used(tcb.0).then(|| self.tcbs.get(tcb.0))
    }

    /// The control block of the connection `local` <-> `remote`.
    pub fn find(&self, local: SocketAddrV4, remote: SocketAddrV4) -> Option<TcbId> {
        let key =
            Key { local_ip: ip(&local), remote_ip: ip(&remote), local_port: local.port(), remote_port: remote.port() };
        self.tcbs.lookup(&key).map(TcbId)
    }

    pub fn memory(&self) -> MemoryUse {
        let cap = self.cfg.capacity.max(1) as usize;
        let wheel_link = 12;
        let index_per_conn = self.tcbs.index_bytes().div_ceil(cap);
        let total = cap * (TCB_SIZE + wheel_link)
            + self.tcbs.index_bytes()
            + self.syn.table.capacity() as usize * (std::mem::size_of::<SynEntry>() + wheel_link)
            + self.syn.table.index_bytes()
            + self.wheel.span() as usize * 4;
        MemoryUse { tcb: TCB_SIZE, index_per_conn, wheel_link, per_conn: TCB_SIZE + index_per_conn + wheel_link, total }
    }

    fn listening(&self, dst: &SocketAddrV4) -> bool {
        // A handful of listeners, not connections: a scan here is fine.
        self.listeners.iter().any(|l| l.port() == dst.port() && (l.ip() == dst.ip() || l.ip().is_unspecified()))
    }

    /// A live control block the owner may act on.
    fn owned(&self, tcb: TcbId) -> bool {
        self.tcbs.is_used(tcb.0) && !self.tcbs.get(tcb.0).has(flag::DETACHED)
    }

    /// One received Ethernet frame.
    pub fn on_frame<A: App, T: Tx>(&mut self, now_ms: u64, frame: &[u8], app: &mut A, tx: &mut T) {
        self.stats.frames_in += 1;
        let seg = match wire::parse(frame) {
            Ok(s) => s,
            Err(e) => {
                self.stats.bad_frames[e.index()] += 1;
                return;
            }
        };
        let h = &seg.hdr;
        if h.dst_mac != self.local_mac {
            self.stats.not_for_us += 1;
            return;
        }
        if self.peer_mac.is_none() {
            self.peer_mac = Some(h.src_mac);
        }
        self.stats.segments_in += 1;
        if h.has(flags::SYN) && h.flags & (flags::FIN | flags::RST) != 0 {
            self.stats.bad_flags += 1;
            return;
        }
        let key =
            Key { local_ip: ip(&h.dst), remote_ip: ip(&h.src), local_port: h.dst.port(), remote_port: h.src.port() };
        if let Some(id) = self.tcbs.lookup(&key) {
            self.segment_in_tcb(now_ms, id, &seg, app, tx);
        } else if let Some(id) = self.syn.table.lookup(&key) {
            self.segment_in_syn(now_ms, key, id, &seg, app, tx);
        } else if self.listening(&h.dst) {
            self.segment_to_listener(now_ms, key, &seg, app, tx);
        } else {
            self.stats.no_connection += 1;
            self.reset_answer(&seg, tx);
        }
    }

    /// An RST answering `seg` (RFC 9293 §3.10.7.1), never one answering an RST.
    pub(super) fn reset_answer<T: Tx>(&mut self, seg: &Segment<'_>, tx: &mut T) {
        let h = &seg.hdr;
        if h.has(flags::RST) {
            return;
        }
        let (seq, ack, fl) = if h.has(flags::ACK) {
            (h.ack, 0, flags::RST)
        } else {
            (0, h.seq.wrapping_add(seg.seq_len()), flags::RST | flags::ACK)
        };
        self.stats.resets_out += 1;
        self.send_ctl(tx, h.dst, h.src, seq, ack, fl, 0, None);
    }

    /// A segment to a listening address with no state for its tuple: a SYN (queue or cookie), or
    /// the final ACK of a cookie handshake.
    fn segment_to_listener<A: App, T: Tx>(&mut self, now: u64, key: Key, seg: &Segment<'_>, app: &mut A, tx: &mut T) {
        let h = &seg.hdr;
        if h.has(flags::RST) {
            return;
        }
        if h.has(flags::ACK) {
            if h.has(flags::SYN) {
                self.stats.no_connection += 1;
                return self.reset_answer(seg, tx);
            }
            match listen::check_cookie(self.cfg.secret, &key, h.seq, h.ack, now) {
                Some(idx) => {
                    self.stats.cookies_ok += 1;
                    let iss = h.ack.wrapping_sub(1);
                    let irs = h.seq.wrapping_sub(1);
                    self.complete_passive(now, key, iss, irs, COOKIE_MSS[idx as usize], None, seg, app, tx);
                }
                None => {
                    self.stats.cookies_bad += 1;
                    self.reset_answer(seg, tx);
                }
            }
            return;
        }
        if !h.has(flags::SYN) {
            self.stats.no_connection += 1;
            return;
        }
        self.stats.syns_in += 1;
        let peer_mss = h.mss.unwrap_or(536);
        let iss = if self.syn.table.is_full() {
            // No room to remember this SYN: let its final ACK carry what we would have kept.
            self.stats.cookies_sent += 1;
            listen::make_cookie(self.cfg.secret, &key, h.seq, listen::mss_index(peer_mss), now)
        } else {
            let iss = listen::isn(self.cfg.secret, &key, now);
            let mut e = SynEntry::new(key);
            e.iss = iss;
            e.irs = h.seq;
            e.peer_mss = peer_mss;
            e.peer_wnd = h.window;
            e.sent_at = now32(now);
            e.timer_at = now32(now).wrapping_add(self.cfg.rto_initial_ms);
            let id = self.syn.insert(e).expect("checked not full");
            self.schedule(self.cfg.capacity + id, now + self.cfg.rto_initial_ms as u64);
            iss
        };
        self.send_synack(tx, h.dst, h.src, iss, h.seq.wrapping_add(1));
    }

    pub(super) fn send_synack<T: Tx>(
        &mut self,
        tx: &mut T,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        iss: u32,
        ack: u32,
    ) {
        let (wnd, mss) = (self.cfg.rcv_wnd, self.cfg.mss);
        self.send_ctl(tx, local, remote, iss, ack, flags::SYN | flags::ACK, wnd, Some(mss));
    }

    /// A segment for a half-open passive connection.
    fn segment_in_syn<A: App, T: Tx>(
        &mut self,
        now: u64,
        key: Key,
        id: u32,
        seg: &Segment<'_>,
        app: &mut A,
        tx: &mut T,
    ) {
        let h = &seg.hdr;
        let e = *self.syn.table.get(id);
        if h.has(flags::RST) {
            // Only an exact RST removes it (RFC 5961 §3 applied to SYN-RECEIVED).
            if h.seq == e.irs.wrapping_add(1) {
                self.stats.resets_in += 1;
                self.free_syn(id);
            }
            return;
        }
        if h.has(flags::SYN) {
            // The peer's SYN again (our SYN-ACK was lost): answer it again.
            if h.seq == e.irs {
                self.stats.synack_retransmits += 1;
                self.send_synack(tx, h.dst, h.src, e.iss, e.irs.wrapping_add(1));
            }
            return;
        }
        if !h.has(flags::ACK) {
            return;
        }
        if h.ack != e.iss.wrapping_add(1) {
            self.stats.bad_acks += 1;
            return self.reset_answer(seg, tx);
        }
        if h.seq != e.irs.wrapping_add(1) {
            self.stats.out_of_window += 1;
            return;
        }
        self.free_syn(id);
        let rtt = (e.retries == 0).then(|| now32(now).wrapping_sub(e.sent_at).min(8191) as u16);
        self.complete_passive(now, key, e.iss, e.irs, e.peer_mss, rtt, seg, app, tx);
    }

    fn free_syn(&mut self, id: u32) {
        self.wheel.cancel(self.cfg.capacity + id);
        self.syn.table.remove(id);
    }

    /// The final ACK of a passive open arrived: make the control block, ask the owner, then
    /// handle the rest of the segment (it may carry data and a FIN).
    #[allow(clippy::too_many_arguments)]
    fn complete_passive<A: App, T: Tx>(
        &mut self,
        now: u64,
        key: Key,
        iss: u32,
        irs: u32,
        peer_mss: u16,
        rtt: Option<u16>,
        seg: &Segment<'_>,
        app: &mut A,
        tx: &mut T,
    ) {
        let mut t = Tcb::new(key);
        t.set_state(State::Established);
        t.snd_una = iss.wrapping_add(1);
        t.snd_nxt = t.snd_una;
        t.rcv_nxt = irs.wrapping_add(1);
        t.snd_wnd = seg.hdr.window;
        t.conn = NO_CONN;
        t.set(flag::DETACHED, true);
        self.init_tcb(&mut t, peer_mss);
        if let Some(r) = rtt {
            t.sample_rtt(r, self.cfg.rto_min_ms as u16, self.cfg.rto_max_ms as u16);
        }
        let Ok(id) = self.tcbs.insert(t) else {
            self.stats.table_full += 1;
            return self.reset_answer(seg, tx);
        };
        let local = SocketAddrV4::new(Ipv4Addr::from(key.local_ip), key.local_port);
        let remote = SocketAddrV4::new(Ipv4Addr::from(key.remote_ip), key.remote_port);
        match app.accept(TcbId(id), local, remote) {
            Some(conn) => {
                self.stats.accepted += 1;
                let t = self.tcbs.get_mut(id);
                t.conn = conn;
                t.set(flag::DETACHED, false);
                self.segment_in_tcb(now, id, seg, app, tx);
            }
            None => {
                self.stats.accept_refused += 1;
                self.send_reset(id, tx);
                self.tcbs.remove(id);
            }
        }
    }

    /// Sets what a new control block starts with: MSS, windows, RTO.
    pub(super) fn init_tcb(&self, t: &mut Tcb, peer_mss: u16) {
        t.peer_mss = peer_mss.clamp(64, self.cfg.mss);
        let mss = t.peer_mss as u32;
        // RFC 6928's initial window: 10 segments, at most max(2 MSS, 14,600) bytes.
        t.cwnd = (10 * mss).min((2 * mss).max(14_600)).min(u16::MAX as u32) as u16;
        t.ssthresh = u16::MAX;
        t.rto = self.cfg.rto_initial_ms as u16;
    }

    /// Active open from `local` (any address/port the caller picked; nothing is configured in a
    /// kernel) to `remote`, for the owner's connection `conn`.
    pub fn connect<T: Tx>(
        &mut self,
        now_ms: u64,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        conn: u32,
        tx: &mut T,
    ) -> Result<TcbId, ConnectError> {
        if self.peer_mac.is_none() {
            return Err(ConnectError::NoRoute);
        }
        let key =
            Key { local_ip: ip(&local), remote_ip: ip(&remote), local_port: local.port(), remote_port: remote.port() };
        if self.tcbs.lookup(&key).is_some() || self.syn.table.lookup(&key).is_some() {
            return Err(ConnectError::InUse);
        }
        let mut t = Tcb::new(key);
        self.init_tcb(&mut t, 536);
        let iss = listen::isn(self.cfg.secret, &key, now_ms);
        t.set_state(State::SynSent);
        t.snd_una = iss;
        t.snd_nxt = iss.wrapping_add(1);
        t.conn = conn;
        t.time_segment(t.snd_nxt, now32(now_ms));
        // Nothing is received in SYN-SENT: until the SYN-ACK, rcv_nxt keeps the connect deadline.
        t.rcv_nxt = now32(now_ms).wrapping_add(self.cfg.connect_timeout_ms);
        let id = self.tcbs.insert(t).map_err(|_| ConnectError::NoRoom)?;
        self.stats.connects += 1;
        let (wnd, mss) = (self.cfg.rcv_wnd, self.cfg.mss);
        self.send_ctl(tx, local, remote, iss, 0, flags::SYN, wnd, Some(mss));
        let at = self.syn_timer_at(now_ms, &t, now_ms + self.cfg.rto_initial_ms as u64);
        self.arm(now_ms, id, at);
        Ok(TcbId(id))
    }

    /// A SYN-SENT block's next timer: the retransmission at `retransmit_at`, or its connect
    /// deadline if that comes first.
    pub(super) fn syn_timer_at(&self, now_ms: u64, t: &Tcb, retransmit_at: u64) -> u64 {
        if self.cfg.connect_timeout_ms == 0 {
            return retransmit_at;
        }
        let left = t.rcv_nxt.wrapping_sub(now32(now_ms)) as i32;
        retransmit_at.min(now_ms + left.max(0) as u64)
    }

    /// A SYN-SENT block's connect deadline has passed.
    pub(super) fn connect_timed_out(&self, now_ms: u64, t: &Tcb) -> bool {
        self.cfg.connect_timeout_ms > 0 && super::tcb::time_reached(now32(now_ms), t.rcv_nxt)
    }

    /// The owner appended output: send what the peer's window (and cwnd) allows.
    pub fn output_ready<A: App, T: Tx>(&mut self, now_ms: u64, tcb: TcbId, app: &mut A, tx: &mut T) {
        if self.owned(tcb) {
            self.push_output(now_ms, tcb.0, app, tx);
        }
    }

    /// Stop / restart taking input (backpressure): while paused, the advertised window is 0 and
    /// data is not acknowledged; on resume a window update goes out.
    pub fn set_input_paused<T: Tx>(&mut self, tcb: TcbId, paused: bool, tx: &mut T) {
        if !self.owned(tcb) {
            return;
        }
        let t = self.tcbs.get_mut(tcb.0);
        let was = t.has(flag::PAUSED);
        t.set(flag::PAUSED, paused);
        if was && !paused && t.state() != State::SynSent {
            self.send_ack(tcb.0, tx);
        }
    }

    /// Graceful close: a FIN goes out after everything the owner has queued (on the last data
    /// segment when it can). The owner must not append output after this; it is told `closed`
    /// when the connection is done (at TIME-WAIT for the side that closed first). A connect still
    /// in SYN-SENT is dropped silently.
    pub fn close<A: App, T: Tx>(&mut self, now_ms: u64, tcb: TcbId, app: &mut A, tx: &mut T) {
        if !self.owned(tcb) {
            return;
        }
        let t = self.tcbs.get_mut(tcb.0);
        match t.state() {
            State::Established => t.set_state(State::FinWait1),
            State::CloseWait => t.set_state(State::LastAck),
            State::SynSent => return self.free_tcb(tcb.0),
            _ => return,
        }
        self.push_output(now_ms, tcb.0, app, tx);
    }

    /// Abortive close: RST now; the control block is freed (the owner is not called back).
    pub fn abort<T: Tx>(&mut self, tcb: TcbId, tx: &mut T) {
        if !self.owned(tcb) {
            return;
        }
        self.stats.aborted += 1;
        if self.tcbs.get(tcb.0).state() != State::SynSent {
            self.send_reset(tcb.0, tx);
        }
        self.free_tcb(tcb.0);
    }

    /// RST|ACK from a connection's current numbers.
    pub(super) fn send_reset<T: Tx>(&mut self, id: u32, tx: &mut T) {
        let t = *self.tcbs.get(id);
        let (local, remote) = addrs(&t);
        self.stats.resets_out += 1;
        self.send_ctl(tx, local, remote, t.snd_nxt, t.rcv_nxt, flags::RST | flags::ACK, 0, None);
    }

    /// Unlinks and zeroes a control block and its timer. No owner call.
    pub(super) fn free_tcb(&mut self, id: u32) {
        if self.tcbs.is_used(id) && self.tcbs.get(id).state() == State::TimeWait {
            self.time_wait -= 1;
        }
        self.wheel.cancel(id);
        self.tcbs.remove(id);
    }

    /// A header from this endpoint to a peer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn header(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        seq: u32,
        ack: u32,
        fl: u8,
        window: u16,
        mss: Option<u16>,
    ) -> Header {
        self.ip_id = self.ip_id.wrapping_add(1);
        Header {
            src_mac: self.local_mac,
            dst_mac: self.peer_mac.unwrap_or([0xff; 6]),
            src: local,
            dst: remote,
            ip_id: self.ip_id,
            seq,
            ack,
            flags: fl,
            window,
            mss,
        }
    }

    /// A segment without payload.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_ctl<T: Tx>(
        &mut self,
        tx: &mut T,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        seq: u32,
        ack: u32,
        fl: u8,
        window: u16,
        mss: Option<u16>,
    ) -> bool {
        let hdr = self.header(local, remote, seq, ack, fl, window, mss);
        let Some(buf) = tx.buffer() else {
            self.stats.tx_full += 1;
            return false;
        };
        match wire::finish(buf, &hdr, 0) {
            Some(len) => {
                tx.send(len);
                self.stats.segments_out += 1;
                true
            }
            None => false,
        }
    }

    /// Timers due by `now_ms`: retransmission, SYN/SYN-ACK retries, delayed ACK, TIME-WAIT.
    pub fn on_tick<A: App, T: Tx>(&mut self, now_ms: u64, app: &mut A, tx: &mut T) {
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.wheel.advance(now_ms / self.cfg.tick_ms as u64, &mut fired);
        for &item in &fired {
            if item < self.cfg.capacity {
                self.tcb_timer(now_ms, item, app, tx);
            } else {
                self.syn_timer(now_ms, item - self.cfg.capacity, tx);
            }
        }
        self.fired = fired;
    }

    /// Puts wheel item `item` at the tick of `at_ms` (rounded up).
    pub(super) fn schedule(&mut self, item: u32, at_ms: u64) {
        self.wheel.schedule(item, at_ms.div_ceil(self.cfg.tick_ms as u64));
    }

    fn syn_timer<T: Tx>(&mut self, now: u64, id: u32, tx: &mut T) {
        if !self.syn.table.is_used(id) {
            return;
        }
        let e = *self.syn.table.get(id);
        let item = self.cfg.capacity + id;
        if !super::tcb::time_reached(now32(now), e.timer_at) {
            let left = e.timer_at.wrapping_sub(now32(now)) as u64;
            return self.schedule(item, now + left);
        }
        if e.retries >= self.cfg.synack_retries {
            self.stats.syn_queue_timeouts += 1;
            return self.free_syn(id);
        }
        // Exponential backoff; 2^20 x the initial RTO is past any rto_max (the shift stays small).
        let rto = ((self.cfg.rto_initial_ms as u64) << (e.retries as u32 + 1).min(20)).min(self.cfg.rto_max_ms as u64);
        let e = self.syn.table.get_mut(id);
        e.retries += 1;
        e.timer_at = now32(now).wrapping_add(rto as u32);
        let e = *e;
        self.schedule(item, now + rto);
        self.stats.synack_retransmits += 1;
        let (local, remote) = (
            SocketAddrV4::new(Ipv4Addr::from(e.local_ip), e.local_port),
            SocketAddrV4::new(Ipv4Addr::from(e.remote_ip), e.remote_port),
        );
        self.send_synack(tx, local, remote, e.iss, e.irs.wrapping_add(1));
    }

    /// Checks the tables against each other; an error names the first inconsistency. For tests:
    /// it walks every slot.
    pub fn check_invariants(&self) -> Result<(), String> {
        let (mut scheduled, mut time_wait) = (0, 0);
        for id in self.tcbs.used_ids() {
            let t = self.tcbs.get(id);
            time_wait += (t.state() == State::TimeWait) as u32;
            if t.state() == State::Free {
                return Err(format!("tcb {id} in use but free"));
            }
            if self.tcbs.lookup(&super::table::Linked::key(t)) != Some(id) {
                return Err(format!("tcb {id} not found by its tuple"));
            }
            let timed = t.has(flag::TIMER) || t.has(flag::ACK_DELAYED);
            if timed != self.wheel.is_scheduled(id) {
                return Err(format!(
                    "tcb {id} {:?} flags {:#x}: timer flags disagree with the wheel",
                    t.state(),
                    t.flags
                ));
            }
            if t.state() == State::TimeWait && !(t.has(flag::DETACHED) && t.has(flag::TIMER)) {
                return Err(format!("tcb {id} in TIME-WAIT still attached or without its timer"));
            }
            if t.has(flag::DETACHED) != (t.conn == NO_CONN) {
                return Err(format!("tcb {id}: DETACHED and conn disagree"));
            }
            if super::seq::gt(t.snd_una, t.snd_nxt) {
                return Err(format!("tcb {id}: snd_una past snd_nxt"));
            }
            scheduled += self.wheel.is_scheduled(id) as usize;
        }
        for id in self.syn.table.used_ids() {
            if !self.wheel.is_scheduled(self.cfg.capacity + id) {
                return Err(format!("syn entry {id} without its timer"));
            }
            scheduled += 1;
        }
        if time_wait != self.time_wait {
            return Err(format!("{time_wait} blocks in TIME-WAIT, counted {}", self.time_wait));
        }
        if scheduled != self.wheel.len() {
            return Err(format!("wheel holds {} items, live ones {scheduled}", self.wheel.len()));
        }
        Ok(())
    }
}

/// A control block's (local, remote) addresses.
pub(super) fn addrs(t: &Tcb) -> (SocketAddrV4, SocketAddrV4) {
    (
        SocketAddrV4::new(Ipv4Addr::from(t.local_ip), t.local_port),
        SocketAddrV4::new(Ipv4Addr::from(t.remote_ip), t.remote_port),
    )
}
