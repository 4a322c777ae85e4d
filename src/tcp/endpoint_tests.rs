//! Two endpoints in memory, a client (`connect`) and a server (`listen`), frames passed between
//! them through a [`FaultInjector`] each way, time simulated in 1 ms steps. Each test checks
//! exact byte streams end to end and, after every step, the endpoints' tables
//! ([`Endpoint::check_invariants`]); at the end, that no control block, half-open entry or timer
//! is left that should not be.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::fault::{FaultConfig, FaultInjector};
use super::wire::{self, Header, WireError, flags};
use super::{App, CloseCause, Config, ConnectError, Endpoint, State, TcbId, Tx};

const MAC_C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
const MAC_S: [u8; 6] = [2, 0, 0, 0, 0, 0x5];

fn server_addr() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 7700)
}

fn client_addr(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), port)
}

// ---- the owner: a test App ----

#[derive(Default, Debug)]
struct Conn {
    tcb: Option<TcbId>,
    remote: Option<SocketAddrV4>,
    input: Vec<u8>,
    out: VecDeque<u8>,
    acked: usize,
    connected: bool,
    ended: bool,
    closed: Option<CloseCause>,
    failed: Option<ConnectError>,
}

#[derive(Default)]
struct Owner {
    conns: Vec<Conn>,
    /// Echo input back (the server).
    echo: bool,
    refuse: bool,
    /// Take no input (returns 0).
    paused: bool,
    /// Take at most this many bytes per `input` call.
    take_at_most: Option<usize>,
    /// Give output out in pieces of at most this many bytes.
    piece: Option<usize>,
}

impl Owner {
    fn new_conn(&mut self) -> u32 {
        self.conns.push(Conn::default());
        self.conns.len() as u32 - 1
    }

    fn c(&self, conn: u32) -> &Conn {
        &self.conns[conn as usize]
    }

    fn live(&self, conn: u32) -> &Conn {
        let c = self.c(conn);
        assert!(c.closed.is_none() && c.failed.is_none(), "call for a connection already gone: {c:?}");
        c
    }
}

impl App for Owner {
    fn accept(&mut self, tcb: TcbId, local: SocketAddrV4, remote: SocketAddrV4) -> Option<u32> {
        assert_eq!(local, server_addr());
        if self.refuse {
            return None;
        }
        let id = self.new_conn();
        self.conns[id as usize].tcb = Some(tcb);
        self.conns[id as usize].remote = Some(remote);
        self.conns[id as usize].connected = true;
        Some(id)
    }

    fn connected(&mut self, conn: u32) {
        assert!(!self.live(conn).connected);
        self.conns[conn as usize].connected = true;
    }

    fn connect_failed(&mut self, conn: u32, why: ConnectError) {
        self.live(conn);
        self.conns[conn as usize].failed = Some(why);
    }

    fn input(&mut self, conn: u32, data: &[u8]) -> usize {
        let c = self.live(conn);
        assert!(!c.ended, "input after the peer's FIN");
        assert!(!data.is_empty());
        if self.paused {
            return 0;
        }
        let n = data.len().min(self.take_at_most.unwrap_or(usize::MAX));
        let c = &mut self.conns[conn as usize];
        c.input.extend_from_slice(&data[..n]);
        if self.echo {
            c.out.extend(&data[..n]);
        }
        n
    }

    fn output(&self, conn: u32, skip: usize) -> &[u8] {
        let (a, b) = self.live(conn).out.as_slices();
        let piece = if skip < a.len() { &a[skip..] } else { b.get(skip - a.len()..).unwrap_or(&[]) };
        &piece[..piece.len().min(self.piece.unwrap_or(usize::MAX))]
    }

    fn output_len(&self, conn: u32) -> usize {
        self.live(conn).out.len()
    }

    fn acked(&mut self, conn: u32, n: usize) {
        let c = &mut self.conns[conn as usize];
        assert!(n > 0 && n <= c.out.len(), "acked {n} of {}", c.out.len());
        c.out.drain(..n);
        c.acked += n;
    }

    fn input_ended(&mut self, conn: u32) {
        assert!(!self.live(conn).ended);
        self.conns[conn as usize].ended = true;
    }

    fn closed(&mut self, conn: u32, why: CloseCause) {
        self.live(conn);
        self.conns[conn as usize].closed = Some(why);
    }
}

// ---- the wire ----

#[derive(Default)]
struct Wire {
    frames: Vec<Vec<u8>>,
    buf: Vec<u8>,
    /// Refuse a buffer this many times (Tx full).
    refuse: usize,
}

impl Tx for Wire {
    fn buffer(&mut self) -> Option<&mut [u8]> {
        if self.refuse > 0 {
            self.refuse -= 1;
            return None;
        }
        self.buf.resize(wire::MAX_FRAME, 0);
        Some(&mut self.buf)
    }

    fn send(&mut self, len: usize) {
        self.frames.push(self.buf[..len].to_vec());
    }
}

fn cfg() -> Config {
    Config { capacity: 64, syn_backlog: 16, time_wait_ms: 2_000, ..Config::default() }
}

struct Net {
    now: u64,
    c: Endpoint,
    s: Endpoint,
    oc: Owner,
    os: Owner,
    tc: Wire,
    ts: Wire,
    /// client -> server and server -> client.
    fc: FaultInjector,
    fs: FaultInjector,
    /// Every frame each way, as delivered (for tests that look at the segments).
    seen_cs: Vec<Vec<u8>>,
    seen_sc: Vec<Vec<u8>>,
    keep_seen: bool,
}

impl Net {
    fn new(faults: FaultConfig) -> Net {
        Self::with(cfg(), cfg(), faults)
    }

    fn with(cc: Config, sc: Config, faults: FaultConfig) -> Net {
        let mut c = Endpoint::new(cc, MAC_C);
        let mut s = Endpoint::new(sc, MAC_S);
        c.set_peer_mac(MAC_S);
        s.listen(server_addr());
        Net {
            now: 1_000_000,
            c,
            s,
            oc: Owner::default(),
            os: Owner { echo: true, ..Owner::default() },
            tc: Wire::default(),
            ts: Wire::default(),
            fc: FaultInjector::new(faults, 1),
            fs: FaultInjector::new(faults, 2),
            seen_cs: vec![],
            seen_sc: vec![],
            keep_seen: false,
        }
    }

    fn connect(&mut self, port: u16) -> (u32, TcbId) {
        let conn = self.oc.new_conn();
        let tcb = self.c.connect(self.now, client_addr(port), server_addr(), conn, &mut self.tc).unwrap();
        self.oc.conns[conn as usize].tcb = Some(tcb);
        (conn, tcb)
    }

    /// Moves every frame queued now through the injectors to the other side, until quiet.
    fn deliver(&mut self) {
        for _ in 0..10_000 {
            let (cs, sc) = (std::mem::take(&mut self.tc.frames), std::mem::take(&mut self.ts.frames));
            let mut to_s = vec![];
            let mut to_c = vec![];
            for f in &cs {
                self.fc.send(self.now, f, &mut |b| to_s.push(b.to_vec()));
            }
            self.fc.release(self.now, &mut |b| to_s.push(b.to_vec()));
            for f in &sc {
                self.fs.send(self.now, f, &mut |b| to_c.push(b.to_vec()));
            }
            self.fs.release(self.now, &mut |b| to_c.push(b.to_vec()));
            if to_s.is_empty() && to_c.is_empty() && cs.is_empty() && sc.is_empty() {
                return;
            }
            for f in to_s {
                self.s.on_frame(self.now, &f, &mut self.os, &mut self.ts);
                if self.keep_seen {
                    self.seen_cs.push(f);
                }
            }
            for f in to_c {
                self.c.on_frame(self.now, &f, &mut self.oc, &mut self.tc);
                if self.keep_seen {
                    self.seen_sc.push(f);
                }
            }
            self.check();
        }
        panic!("frames never stopped flowing");
    }

    fn check(&self) {
        self.c.check_invariants().unwrap_or_else(|e| panic!("client: {e}"));
        self.s.check_invariants().unwrap_or_else(|e| panic!("server: {e}"));
    }

    /// One millisecond: deliver, then both endpoints' timers.
    fn step(&mut self) {
        self.deliver();
        self.now += 1;
        self.c.on_tick(self.now, &mut self.oc, &mut self.tc);
        self.s.on_tick(self.now, &mut self.os, &mut self.ts);
        self.deliver();
    }

    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step();
        }
    }

    /// Steps until `done` holds; panics after `max_ms`.
    fn run_until(&mut self, max_ms: u64, what: &str, done: impl Fn(&Net) -> bool) {
        for _ in 0..max_ms {
            if done(self) {
                return;
            }
            self.step();
        }
        assert!(done(self), "not within {max_ms} ms: {what}");
    }

    /// The client owner appends `data` to connection `conn` and tells the endpoint.
    fn client_send(&mut self, conn: u32, data: &[u8]) {
        self.oc.conns[conn as usize].out.extend(data);
        let tcb = self.oc.c(conn).tcb.unwrap();
        self.c.output_ready(self.now, tcb, &mut self.oc, &mut self.tc);
    }

    fn server_tcb(&self, port: u16) -> Option<TcbId> {
        self.s.find(server_addr(), client_addr(port))
    }

    /// Closes every connection still open, both sides, waits out TIME-WAIT, and checks that
    /// nothing is left: every test ends here or with [`Net::assert_empty`].
    fn finish(&mut self) {
        self.oc.paused = false;
        self.os.paused = false;
        self.os.take_at_most = None;
        for _ in 0..300_000 {
            if self.c.connections() == 0 && self.s.connections() == 0 && self.s.syn_queue_len() == 0 {
                break;
            }
            for i in 0..self.oc.conns.len() {
                let c = &self.oc.conns[i];
                if let (Some(tcb), None, None) = (c.tcb, c.closed, c.failed) {
                    self.c.close(self.now, tcb, &mut self.oc, &mut self.tc);
                }
            }
            for i in 0..self.os.conns.len() {
                let c = &self.os.conns[i];
                if let (Some(tcb), None) = (c.tcb, c.closed) {
                    self.s.set_input_paused(tcb, false, &mut self.ts);
                    self.s.close(self.now, tcb, &mut self.os, &mut self.ts);
                }
            }
            self.step();
        }
        assert!(self.os.conns.iter().all(|c| c.closed.is_some()), "every accepted connection was told it closed");
        self.assert_empty();
    }

    /// Both sides closed and out of TIME-WAIT: nothing left anywhere.
    fn assert_empty(&self) {
        self.check();
        for (name, e) in [("client", &self.c), ("server", &self.s)] {
            assert_eq!(e.connections(), 0, "{name}: control blocks left");
            assert_eq!(e.syn_queue_len(), 0, "{name}: half-open entries left");
            assert_eq!(e.timers_scheduled(), 0, "{name}: timers left");
        }
    }
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn established(net: &mut Net, port: u16) -> (u32, TcbId) {
    let (conn, tcb) = net.connect(port);
    net.run_until(60_000, "connected", |n| n.oc.c(conn).connected && n.server_tcb(port).is_some());
    assert_eq!(net.c.state(tcb), Some(State::Established));
    assert_eq!(net.s.state(net.server_tcb(port).unwrap()), Some(State::Established));
    (conn, tcb)
}

// ---- tests ----

#[test]
fn handshake_then_echo() {
    let mut net = Net::new(FaultConfig::default());
    let (conn, tcb) = established(&mut net, 40_000);
    assert_eq!(net.s.stats().accepted, 1);
    let t = net.c.tcb(tcb).unwrap();
    assert_eq!(t.peer_mss, wire::MAX_MSS, "the MSS option went both ways");
    let data = pattern(10_000, 1);
    net.client_send(conn, &data);
    net.run_until(1_000, "echoed", |n| n.oc.c(conn).input.len() == data.len());
    assert_eq!(net.os.conns[0].input, data);
    assert_eq!(net.oc.c(conn).input, data);
    assert_eq!(net.oc.c(conn).acked, data.len());
    net.run(100);
    assert!(net.oc.c(conn).out.is_empty() && net.os.conns[0].out.is_empty(), "all output acknowledged");
    assert_eq!(net.c.stats().retransmits + net.s.stats().retransmits, 0);
    net.finish();
}

/// A PING answered at once: the reply carries the ACK, no pure ACK goes before it.
#[test]
fn an_immediate_reply_carries_the_ack() {
    let mut net = Net::new(FaultConfig::default());
    let (conn, _) = established(&mut net, 40_001);
    net.keep_seen = true;
    net.client_send(conn, b"PING");
    net.deliver();
    let replies: Vec<_> = net.seen_sc.iter().map(|f| wire::parse(f).unwrap()).collect();
    assert_eq!(replies.len(), 1, "one segment: the echo with the ACK");
    assert_eq!(replies[0].payload, b"PING");
    assert!(replies[0].hdr.has(flags::ACK));
    // The client's ACK of the reply is delayed, then sent once.
    let before = net.seen_cs.len();
    net.run(100);
    assert_eq!(net.seen_cs.len(), before + 1, "one delayed ACK");
    net.finish();
}

#[test]
fn exact_streams_under_loss_reordering_duplication_and_corruption() {
    let faults =
        FaultConfig { drop: 50, corrupt: 10, duplicate: 20, delay: 30, reorder: 30, max_delay_ms: 20, max_held: 64 };
    let mut net = Net::new(faults);
    let mut conns = vec![];
    for i in 0..4u16 {
        conns.push(net.connect(41_000 + i));
    }
    net.run_until(60_000, "all connected", |n| conns.iter().all(|&(c, _)| n.oc.c(c).connected));
    let sizes = [1, 1_000, 60_000, 200_000];
    let data: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| pattern(n, i as u32 + 7)).collect();
    for (&(c, _), d) in conns.iter().zip(&data) {
        net.client_send(c, d);
    }
    net.run_until(600_000, "all echoed", |n| {
        conns.iter().zip(&data).all(|(&(c, _), d)| n.oc.c(c).input.len() >= d.len())
    });
    for (&(c, _), d) in conns.iter().zip(&data) {
        assert_eq!(&net.oc.c(c).input, d, "client {c} got its bytes back exactly");
    }
    for &(c, tcb) in &conns {
        net.c.close(net.now, tcb, &mut net.oc, &mut net.tc);
        let _ = c;
    }
    net.run_until(120_000, "servers saw FIN", |n| n.os.conns.iter().all(|c| c.ended));
    for i in 0..net.os.conns.len() {
        let tcb = net.os.conns[i].tcb.unwrap();
        net.s.close(net.now, tcb, &mut net.os, &mut net.ts);
    }
    net.run_until(300_000, "everything closed", |n| n.c.connections() == 0 && n.s.connections() == 0);
    assert_eq!(net.os.conns.len(), 4);
    for s in &net.os.conns {
        let i = (s.remote.unwrap().port() - 41_000) as usize;
        assert_eq!(s.input, data[i], "the server got client {i}'s bytes exactly");
        assert_eq!(s.closed, Some(CloseCause::Closed));
    }
    for &(c, _) in &conns {
        assert_eq!(net.oc.c(c).closed, Some(CloseCause::Closed));
    }
    net.assert_empty();
    let (cs, ss) = (net.c.stats(), net.s.stats());
    let bad = |s: &super::TcpStats| {
        s.bad_frames[WireError::TcpChecksum.index()] + s.bad_frames[WireError::IpChecksum.index()]
    };
    assert!(bad(cs) + bad(ss) > 0, "corrupted frames were caught: {cs:?} {ss:?}");
    assert!(cs.retransmits > 0 && ss.retransmits > 0);
    assert!(net.fc.stats().dropped > 0 && net.fc.stats().reordered > 0 && net.fc.stats().duplicated > 0);
}

/// Client closes first: FIN-WAIT-1, FIN-WAIT-2, TIME-WAIT; the server CLOSE-WAIT, LAST-ACK.
#[test]
fn active_and_passive_close_walk_every_state() {
    let mut net = Net::new(FaultConfig::default());
    let (conn, tcb) = established(&mut net, 42_000);
    let stcb = net.server_tcb(42_000).unwrap();
    net.c.close(net.now, tcb, &mut net.oc, &mut net.tc);
    assert_eq!(net.c.state(tcb), Some(State::FinWait1));
    net.deliver();
    assert_eq!(net.c.state(tcb), Some(State::FinWait2));
    assert_eq!(net.s.state(stcb), Some(State::CloseWait));
    assert!(net.os.conns[0].ended);
    // Half-closed: the server still sends, the client still reads.
    net.os.conns[0].out.extend(b"last words");
    net.s.output_ready(net.now, stcb, &mut net.os, &mut net.ts);
    net.deliver();
    assert_eq!(net.oc.c(conn).input, b"last words");
    net.s.close(net.now, stcb, &mut net.os, &mut net.ts);
    assert_eq!(net.s.state(stcb), Some(State::LastAck));
    net.deliver();
    assert_eq!(net.s.state(stcb), None, "LAST-ACK ends at the ACK of the FIN");
    assert_eq!(net.os.conns[0].closed, Some(CloseCause::Closed));
    assert_eq!(net.c.state(tcb), Some(State::TimeWait));
    assert_eq!(net.oc.c(conn).closed, Some(CloseCause::Closed), "the owner is told at TIME-WAIT");
    net.run(1_900);
    assert_eq!(net.c.state(tcb), Some(State::TimeWait));
    net.run(200);
    assert_eq!(net.c.state(tcb), None, "TIME-WAIT expired");
    assert_eq!(net.c.stats().time_wait_expired, 1);
    net.assert_empty();
}

/// Both close at once: each gets the other's FIN in FIN-WAIT-1 (CLOSING), then TIME-WAIT.
#[test]
fn simultaneous_close_goes_through_closing() {
    let mut net = Net::new(FaultConfig::default());
    let (_, tcb) = established(&mut net, 42_001);
    let stcb = net.server_tcb(42_001).unwrap();
    net.c.close(net.now, tcb, &mut net.oc, &mut net.tc);
    net.s.close(net.now, stcb, &mut net.os, &mut net.ts);
    // Swap the FINs by hand, then look before the ACKs are delivered.
    let (fc, fs) = (std::mem::take(&mut net.tc.frames), std::mem::take(&mut net.ts.frames));
    assert_eq!((fc.len(), fs.len()), (1, 1));
    net.s.on_frame(net.now, &fc[0], &mut net.os, &mut net.ts);
    net.c.on_frame(net.now, &fs[0], &mut net.oc, &mut net.tc);
    assert_eq!(net.c.state(tcb), Some(State::Closing));
    assert_eq!(net.s.state(stcb), Some(State::Closing));
    net.deliver();
    assert_eq!(net.c.state(tcb), Some(State::TimeWait));
    assert_eq!(net.s.state(stcb), Some(State::TimeWait));
    net.run(2_100);
    net.assert_empty();
    assert_eq!(net.os.conns[0].closed, Some(CloseCause::Closed));
}

/// A FIN riding on the last data segment, and a FIN that waits for queued data.
#[test]
fn close_sends_fin_after_queued_output() {
    let mut net = Net::new(FaultConfig { drop: 100, ..FaultConfig::default() });
    let (conn, tcb) = established(&mut net, 42_002);
    let data = pattern(100_000, 3);
    net.oc.conns[conn as usize].out.extend(&data);
    net.os.echo = false;
    net.c.close(net.now, tcb, &mut net.oc, &mut net.tc);
    net.run_until(120_000, "server saw FIN", |n| n.os.conns[0].ended);
    assert_eq!(net.os.conns[0].input, data, "every byte before the FIN");
    net.finish();
}

#[test]
fn abort_resets_the_peer() {
    let mut net = Net::new(FaultConfig::default());
    let (_, tcb) = established(&mut net, 43_000);
    net.c.abort(tcb, &mut net.tc);
    assert_eq!(net.c.state(tcb), None);
    net.deliver();
    assert_eq!(net.os.conns[0].closed, Some(CloseCause::Reset));
    net.assert_empty();
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    let mut net = Net::new(FaultConfig::default());
    let conn = net.oc.new_conn();
    let remote = SocketAddrV4::new(*server_addr().ip(), 9);
    net.c.connect(net.now, client_addr(43_001), remote, conn, &mut net.tc).unwrap();
    net.deliver();
    assert_eq!(net.oc.c(conn).failed, Some(ConnectError::Refused));
    assert_eq!(net.s.stats().resets_out, 1);
    net.assert_empty();
}

#[test]
fn refused_by_the_owner_is_reset() {
    let mut net = Net::new(FaultConfig::default());
    net.os.refuse = true;
    let (conn, tcb) = net.connect(43_002);
    net.run(10);
    // The client saw the SYN-ACK (connected), then the server's RST.
    assert!(net.oc.c(conn).connected);
    assert_eq!(net.oc.c(conn).closed, Some(CloseCause::Reset));
    assert_eq!(net.c.state(tcb), None);
    assert_eq!(net.s.stats().accept_refused, 1);
    net.assert_empty();
}

#[test]
fn connect_times_out_after_its_retries() {
    let mut net = Net::new(FaultConfig::drop(1000));
    let (conn, _) = net.connect(43_003);
    // 1 + 2 + 4 + 8 + 16 + 32 + 64 s of backoff for 6 retries.
    net.run_until(200_000, "connect failed", |n| n.oc.c(conn).failed.is_some());
    assert_eq!(net.oc.c(conn).failed, Some(ConnectError::TimedOut));
    assert_eq!(net.c.stats().retransmits, 6);
    net.assert_empty();
}

#[test]
fn connect_times_out_at_its_deadline_before_its_retries() {
    let cc = Config { connect_timeout_ms: 2_500, ..cfg() };
    let mut net = Net::with(cc, cfg(), FaultConfig::drop(1000));
    let started = net.now;
    let (conn, _) = net.connect(43_004);
    net.run_until(10_000, "connect failed", |n| n.oc.c(conn).failed.is_some());
    assert_eq!(net.oc.c(conn).failed, Some(ConnectError::TimedOut));
    // SYN at 0, again at 1 s; the next (at 3 s) would pass the deadline, which comes first.
    let took = net.now - started;
    assert!((2_500..2_600).contains(&took), "failed after {took} ms");
    assert_eq!(net.c.stats().retransmits, 1);
    net.assert_empty();
}

#[test]
fn connect_refuses_a_tuple_in_use_and_a_full_table() {
    let mut net = Net::with(Config { capacity: 1, ..cfg() }, cfg(), FaultConfig::default());
    net.connect(43_004);
    let conn = net.oc.new_conn();
    assert_eq!(net.c.connect(net.now, client_addr(43_004), server_addr(), conn, &mut net.tc), Err(ConnectError::InUse));
    assert_eq!(
        net.c.connect(net.now, client_addr(43_005), server_addr(), conn, &mut net.tc),
        Err(ConnectError::NoRoom)
    );
    let mut lone = Endpoint::new(cfg(), MAC_C);
    assert_eq!(lone.connect(0, client_addr(1), server_addr(), 0, &mut net.tc), Err(ConnectError::NoRoute));
    net.finish();
}

/// The owner takes nothing for a while: the window goes to 0, the sender probes, nothing is
/// lost, and when the owner resumes everything arrives in order.
#[test]
fn backpressure_closes_the_window_and_loses_nothing() {
    let mut net = Net::new(FaultConfig::default());
    let (conn, tcb) = established(&mut net, 44_000);
    let stcb = net.server_tcb(44_000).unwrap();
    net.os.echo = false;
    net.os.paused = true;
    let data = pattern(300_000, 9);
    net.client_send(conn, &data);
    net.run_until(5_000, "server paused", |n| n.s.tcb(stcb).unwrap().flags & super::tcb::flag::PAUSED != 0);
    net.run(5_000);
    assert_eq!(net.c.tcb(tcb).unwrap().snd_wnd, 0, "the client sees a zero window");
    assert!(net.os.conns[0].input.is_empty());
    assert!(net.c.stats().window_probes > 0, "{:?}", net.c.stats());
    net.os.paused = false;
    net.os.take_at_most = None;
    net.s.set_input_paused(stcb, false, &mut net.ts);
    net.run_until(120_000, "all delivered", |n| n.os.conns[0].input.len() == data.len());
    assert_eq!(net.os.conns[0].input, data);
    assert_eq!(net.oc.c(conn).closed, None, "the connection survived the pause");
    net.finish();
}

/// The owner never reads: the sender's retransmissions stop at the cap, and it gives up.
#[test]
fn an_owner_that_never_reads_makes_the_sender_give_up() {
    let c = Config { max_retries: 5, rto_max_ms: 4_000, ..cfg() };
    let mut net = Net::with(c, cfg(), FaultConfig::default());
    let (conn, _) = established(&mut net, 44_001);
    net.os.paused = true;
    net.client_send(conn, &pattern(10_000, 4));
    net.run_until(60_000, "sender gave up", |n| n.oc.c(conn).closed.is_some());
    assert_eq!(net.oc.c(conn).closed, Some(CloseCause::TimedOut));
    let st = net.c.stats();
    assert_eq!(st.rto_expired + st.window_probes, 5, "exactly max_retries timeouts: {st:?}");
    assert!(net.os.conns[0].input.is_empty());
    // The give-up RST (at the unacknowledged sequence) resets the paused receiver too.
    assert_eq!(net.os.conns[0].closed, Some(CloseCause::Reset));
    net.assert_empty();
}

#[test]
fn one_byte_at_a_time() {
    let mut net = Net::new(FaultConfig { drop: 30, reorder: 30, ..FaultConfig::default() });
    let (conn, _) = established(&mut net, 44_002);
    net.oc.piece = Some(1);
    net.os.take_at_most = None;
    let data = pattern(2_000, 5);
    for b in &data {
        net.client_send(conn, std::slice::from_ref(b));
        net.step();
    }
    net.run_until(60_000, "all echoed", |n| n.oc.c(conn).input.len() == data.len());
    assert_eq!(net.os.conns[0].input, data);
    assert_eq!(net.oc.c(conn).input, data);
    net.finish();
}

/// Input taken one byte per call: the rest of each segment waits (paused), and resumes.
#[test]
fn an_owner_taking_one_byte_per_call() {
    let mut net = Net::new(FaultConfig::default());
    let (conn, _) = established(&mut net, 44_003);
    let stcb = net.server_tcb(44_003).unwrap();
    net.os.echo = false;
    net.os.take_at_most = Some(1);
    let data = pattern(50, 6);
    net.client_send(conn, &data);
    for _ in 0..200 {
        net.run(5);
        net.s.set_input_paused(stcb, false, &mut net.ts);
        if net.os.conns[0].input.len() == data.len() {
            break;
        }
    }
    net.run_until(60_000, "all delivered", |n| n.os.conns[0].input.len() == data.len());
    assert_eq!(net.os.conns[0].input, data);
    net.finish();
}

/// A frame from `src` to the server, built by hand.
fn raw(src: SocketAddrV4, seq: u32, ack: u32, fl: u8, payload: &[u8]) -> Vec<u8> {
    let hdr = Header {
        src_mac: MAC_C,
        dst_mac: MAC_S,
        src,
        dst: server_addr(),
        ip_id: 0,
        seq,
        ack,
        flags: fl,
        window: 65535,
        mss: (fl & flags::SYN != 0).then_some(1460),
    };
    let mut buf = vec![0; wire::MAX_FRAME];
    let n = wire::build(&mut buf, &hdr, payload).unwrap();
    buf.truncate(n);
    buf
}

/// 100,000 SYNs from distinct tuples: the listen queue fills and stays at its bound, cookies
/// answer the rest, a real client still connects, and the queue drains once the flood's entries
/// run out of retries.
#[test]
fn a_syn_flood_is_bounded_and_a_real_client_still_connects() {
    let sc = Config { capacity: 64, syn_backlog: 4096, ..cfg() };
    let mut net = Net::with(cfg(), sc, FaultConfig::default());
    let mem = net.s.memory();
    let mut sink = Wire::default();
    for i in 0..100_000u32 {
        let src = SocketAddrV4::new(Ipv4Addr::from(0xc613_0100 + i / 50_000), (i % 50_000) as u16 + 1);
        let f = raw(src, i.wrapping_mul(7919), 0, flags::SYN, &[]);
        net.s.on_frame(net.now, &f, &mut net.os, &mut sink);
        sink.frames.clear();
        if i == 50_000 {
            // A real client in the middle of the flood: cookies carry it through.
            let (conn, _) = net.connect(45_000);
            net.run_until(1_000, "connected through the flood", |n| n.oc.c(conn).connected);
            net.client_send(conn, b"still here");
            net.run_until(1_000, "echo", |n| n.oc.c(conn).input == b"still here");
        }
    }
    let st = net.s.stats();
    assert_eq!(net.s.syn_queue_len(), 4096, "the queue is full and no larger");
    assert_eq!(st.syns_in, 100_001);
    assert_eq!(st.cookies_sent, 100_001 - 4096);
    assert_eq!(st.cookies_ok, 1);
    assert_eq!(net.s.connections(), 1, "only the real client has a control block");
    assert_eq!(net.s.memory(), mem, "nothing grew");
    assert!(net.s.timers_scheduled() <= 4096 + 1);
    net.check();
    // The flood's entries retransmit their SYN-ACKs (to nobody), then give up.
    for _ in 0..2_000 {
        net.now += 100;
        net.s.on_tick(net.now, &mut net.os, &mut sink);
        sink.frames.clear();
    }
    assert_eq!(net.s.syn_queue_len(), 0);
    assert_eq!(net.s.stats().syn_queue_timeouts, 4096);
    assert_eq!(net.s.stats().synack_retransmits, 4096 * 5);
    assert_eq!(net.os.conns[0].closed, None);
    net.check();
    net.finish();
}

/// A forged cookie ACK is refused with an RST and makes nothing.
#[test]
fn a_forged_cookie_ack_is_reset() {
    let mut net = Net::new(FaultConfig::default());
    let mut sink = Wire::default();
    let f = raw(client_addr(46_000), 1234, 0xdead_beef, flags::ACK, b"hi");
    net.s.on_frame(net.now, &f, &mut net.os, &mut sink);
    assert_eq!(net.s.stats().cookies_bad, 1);
    assert_eq!(sink.frames.len(), 1);
    let rst = wire::parse(&sink.frames[0]).unwrap();
    assert_eq!((rst.hdr.flags, rst.hdr.seq), (flags::RST, 0xdead_beef));
    assert_eq!(net.s.connections(), 0);
    net.finish();
}

/// Bad segments: counted, answered as the RFCs say or dropped; no crash, no leak.
#[test]
fn bad_segments_are_counted_and_dropped() {
    let mut net = Net::new(FaultConfig::default());
    let (conn, tcb) = established(&mut net, 47_000);
    let t = *net.c.tcb(tcb).unwrap();
    let src = client_addr(47_000);
    let mut sink = Wire::default();
    let mut feed = |net: &mut Net, f: Vec<u8>| {
        sink.frames.clear();
        net.s.on_frame(net.now, &f, &mut net.os, &mut sink);
        sink.frames.iter().map(|f| wire::parse(f).unwrap().hdr).collect::<Vec<_>>()
    };
    // Bad checksum, bad data offset.
    let mut f = raw(src, t.snd_nxt, t.rcv_nxt, flags::ACK, b"x");
    let last = f.len() - 1;
    f[last] ^= 1;
    assert!(feed(&mut net, f).is_empty());
    let mut f = raw(src, t.snd_nxt, t.rcv_nxt, flags::ACK, b"x");
    f[14 + 20 + 12] = 0x30;
    assert!(feed(&mut net, f).is_empty());
    let st = net.s.stats();
    assert_eq!(st.bad_frames[WireError::TcpChecksum.index()], 1);
    assert_eq!(st.bad_frames[WireError::DataOffset.index()], 1);
    // SYN+FIN, SYN+RST: dropped.
    assert!(feed(&mut net, raw(src, t.snd_nxt, 0, flags::SYN | flags::FIN, &[])).is_empty());
    assert!(feed(&mut net, raw(src, t.snd_nxt, 0, flags::SYN | flags::RST, &[])).is_empty());
    assert_eq!(net.s.stats().bad_flags, 2);
    // An RST outside the window: silently dropped. In the window but not exact: challenge ACK.
    assert!(feed(&mut net, raw(src, t.snd_nxt.wrapping_add(100_000), 0, flags::RST, &[])).is_empty());
    let acks = feed(&mut net, raw(src, t.snd_nxt.wrapping_add(10), 0, flags::RST, &[]));
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].flags, acks[0].ack), (flags::ACK, t.snd_nxt));
    // A SYN on the connection: challenge ACK (RFC 5961 §4).
    let acks = feed(&mut net, raw(src, 5, 0, flags::SYN, &[]));
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].flags, flags::ACK);
    assert_eq!(net.s.stats().challenge_acks, 2);
    // An ACK of data never sent: dropped with an ACK.
    let acks = feed(&mut net, raw(src, t.snd_nxt, t.rcv_nxt.wrapping_add(5_000), flags::ACK, b"no"));
    assert_eq!(acks.len(), 1);
    assert_eq!(net.s.stats().bad_acks, 1);
    assert!(net.os.conns[0].input.is_empty(), "its payload was not taken");
    // Unknown tuples: RST (never for an RST).
    let other = client_addr(47_001);
    let r = feed(&mut net, raw(other, 99, 1234, flags::ACK, b"?"));
    assert_eq!((r.len(), r[0].flags, r[0].seq), (1, flags::RST, 1234));
    let unknown_port = SocketAddrV4::new(*server_addr().ip(), 1);
    let mut f = raw(other, 99, 0, flags::PSH, b"?");
    // Re-address to a port nobody listens on.
    let hdr = Header { dst: unknown_port, ..wire::parse(&f).unwrap().hdr };
    f = {
        let mut b = vec![0; wire::MAX_FRAME];
        let n = wire::build(&mut b, &hdr, b"?").unwrap();
        b.truncate(n);
        b
    };
    let r = feed(&mut net, f);
    assert_eq!((r[0].flags, r[0].ack), (flags::RST | flags::ACK, 100));
    assert!(feed(&mut net, raw(other, 99, 0, flags::RST, &[])).is_empty());
    // Garbage and frames for another MAC.
    assert!(feed(&mut net, vec![0xff; 7]).is_empty());
    let mut f = raw(src, t.snd_nxt, t.rcv_nxt, flags::ACK, &[]);
    f[0] = 0x42;
    assert!(feed(&mut net, f).is_empty());
    assert_eq!(net.s.stats().not_for_us, 1);
    // The connection is unharmed.
    assert_eq!(net.s.connections(), 1);
    net.check();
    net.client_send(conn, b"fine");
    net.run_until(100, "echo", |n| n.oc.c(conn).input == b"fine");
    net.finish();
}

/// An RST with exactly the next sequence number resets; TIME-WAIT answers a retransmitted FIN.
#[test]
fn exact_rst_resets_and_time_wait_reacks_a_fin() {
    let mut net = Net::new(FaultConfig::default());
    let (_, tcb) = established(&mut net, 48_000);
    let t = *net.c.tcb(tcb).unwrap();
    let mut sink = Wire::default();
    net.s.on_frame(net.now, &raw(client_addr(48_000), t.snd_nxt, 0, flags::RST, &[]), &mut net.os, &mut sink);
    assert_eq!(net.os.conns[0].closed, Some(CloseCause::Reset));
    assert_eq!(net.s.connections(), 0);
    net.c.abort(tcb, &mut net.tc);
    net.deliver();

    let (_, tcb) = established(&mut net, 48_001);
    let stcb = net.server_tcb(48_001).unwrap();
    net.keep_seen = true;
    net.s.close(net.now, stcb, &mut net.os, &mut net.ts);
    net.deliver();
    let c = *net.c.tcb(tcb).unwrap();
    net.c.close(net.now, tcb, &mut net.oc, &mut net.tc);
    net.deliver();
    assert_eq!(net.s.state(stcb), Some(State::TimeWait));
    // The client's FIN again, as if our ACK was lost: ACKed again.
    let fin = raw(client_addr(48_001), c.snd_nxt, c.rcv_nxt, flags::FIN | flags::ACK, &[]);
    sink.frames.clear();
    net.s.on_frame(net.now, &fin, &mut net.os, &mut sink);
    assert_eq!(sink.frames.len(), 1);
    assert_eq!(wire::parse(&sink.frames[0]).unwrap().hdr.ack, c.snd_nxt.wrapping_add(1));
    net.run(2_100);
    net.assert_empty();
}

/// No transmit buffer for a while: output waits and goes when the timer retries.
#[test]
fn a_full_transmit_ring_delays_but_loses_nothing() {
    let mut net = Net::new(FaultConfig::default());
    let (conn, _) = established(&mut net, 49_000);
    net.tc.refuse = 3;
    net.client_send(conn, b"later");
    assert!(net.c.stats().tx_full > 0);
    net.run_until(10_000, "echo", |n| n.oc.c(conn).input == b"later");
    net.finish();
}

#[test]
fn memory_per_connection() {
    let e = Endpoint::new(Config { capacity: 1 << 20, ..Config::default() }, MAC_S);
    let m = e.memory();
    assert_eq!(m.tcb, 64);
    assert!(m.index_per_conn <= 5, "{m:?}");
    assert_eq!(m.per_conn, 64 + m.index_per_conn + 12);
    eprintln!("memory: {m:?}");
}
