//! Feeds c2m's TCP arbitrary frames.
//!
//! Two parts of the input: the first byte's low bit picks the mode.
//! - Parser: the rest is one frame for `wire::parse`, which must never panic; a frame it accepts
//!   must build back to the same header and payload.
//! - Endpoint: the rest is a script of records driving a listening `Endpoint` (and its timers)
//!   with raw frames and with well-formed segments whose numbers are either arbitrary or relative
//!   to the connection's own (so the fuzzer gets past the checksums and sequence checks into the
//!   state machine). After every record the endpoint's tables must be consistent.
#![no_main]

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};

use c2m::tcp::wire::{self, Header};
use c2m::tcp::{App, CloseCause, Config, ConnectError, Endpoint, TcbId, Tx};
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

#[derive(Default)]
struct Owner {
    out: Vec<VecDeque<u8>>,
    refuse: bool,
    pause: bool,
    to_close: Vec<TcbId>,
    tcbs: Vec<TcbId>,
}

impl App for Owner {
    fn accept(&mut self, tcb: TcbId, _: SocketAddrV4, _: SocketAddrV4) -> Option<u32> {
        if self.refuse {
            return None;
        }
        self.out.push(VecDeque::new());
        self.tcbs.push(tcb);
        Some(self.out.len() as u32 - 1)
    }
    fn connected(&mut self, _: u32) {}
    fn connect_failed(&mut self, _: u32, _: ConnectError) {}
    fn input(&mut self, conn: u32, data: &[u8]) -> usize {
        if self.pause {
            return data.len() / 2;
        }
        let q = &mut self.out[conn as usize];
        if q.len() < 100_000 {
            q.extend(data);
        }
        data.len()
    }
    fn output(&self, conn: u32, skip: usize) -> &[u8] {
        let (a, b) = self.out[conn as usize].as_slices();
        if skip < a.len() { &a[skip..] } else { b.get(skip - a.len()..).unwrap_or(&[]) }
    }
    fn output_len(&self, conn: u32) -> usize {
        self.out[conn as usize].len()
    }
    fn acked(&mut self, conn: u32, n: usize) {
        let q = &mut self.out[conn as usize];
        assert!(n <= q.len(), "acked more than was queued");
        q.drain(..n);
    }
    fn input_ended(&mut self, conn: u32) {
        self.to_close.push(self.tcbs[conn as usize]);
    }
    fn closed(&mut self, _: u32, _: CloseCause) {}
}

struct Sink(Vec<u8>);

impl Tx for Sink {
    fn buffer(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.0)
    }
    fn send(&mut self, len: usize) {
        assert!(wire::parse(&self.0[..len]).is_ok(), "the endpoint sent a frame it cannot parse");
    }
}

fn take<const N: usize>(d: &mut &[u8]) -> Option<[u8; N]> {
    let (a, rest) = d.split_first_chunk::<N>()?;
    *d = rest;
    Some(*a)
}

fn fuzz_endpoint(mut d: &[u8]) {
    let cfg = Config { capacity: 8, syn_backlog: 4, time_wait_ms: 1000, ..Config::default() };
    let mut ep = Endpoint::new(cfg, MAC);
    let server = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 7700);
    ep.listen(server);
    let mut owner = Owner::default();
    let mut tx = Sink(vec![0; wire::MAX_FRAME]);
    let mut now = 1_000u64;
    while let Some([op]) = take::<1>(&mut d) {
        match op % 4 {
            0 => {
                // A raw frame.
                let Some([len]) = take::<1>(&mut d) else { break };
                let n = (len as usize).min(d.len());
                let (f, rest) = d.split_at(n);
                d = rest;
                ep.on_frame(now, f, &mut owner, &mut tx);
            }
            1 => {
                // A well-formed segment from one of 4 clients.
                let Some(r) = take::<14>(&mut d) else { break };
                let client = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), 1000 + (r[0] % 4) as u16);
                let mut seq = u32::from_be_bytes([r[1], r[2], r[3], r[4]]);
                let mut ack = u32::from_be_bytes([r[5], r[6], r[7], r[8]]);
                if r[0] & 0x80 != 0 {
                    // Relative to the connection: small offsets around what it expects.
                    if let Some(t) = ep.find(server, client).and_then(|id| ep.tcb(id).copied()) {
                        seq = t.rcv_nxt.wrapping_add((seq as i8) as u32);
                        ack = t.snd_una.wrapping_add((ack as i8) as u32);
                    }
                }
                let plen = (r[12] as usize).min(d.len());
                let (payload, rest) = d.split_at(plen);
                d = rest;
                let hdr = Header {
                    src_mac: PEER_MAC,
                    dst_mac: MAC,
                    src: client,
                    dst: server,
                    ip_id: 0,
                    seq,
                    ack,
                    flags: r[9] & 0x3f,
                    window: u16::from_be_bytes([r[10], r[11]]),
                    mss: (r[13] & 1 != 0).then_some(u16::from_be_bytes([r[13], r[12]])),
                };
                let mut buf = vec![0; wire::MAX_FRAME];
                if let Some(n) = wire::build(&mut buf, &hdr, payload) {
                    ep.on_frame(now, &buf[..n], &mut owner, &mut tx);
                }
            }
            2 => {
                let Some([dt]) = take::<1>(&mut d) else { break };
                now += (dt as u64) * (dt as u64) * 4;
                ep.on_tick(now, &mut owner, &mut tx);
            }
            _ => {
                // The owner does something.
                let Some([what]) = take::<1>(&mut d) else { break };
                let tcb = owner.tcbs.get((what >> 3) as usize % owner.tcbs.len().max(1)).copied();
                match (what & 7, tcb) {
                    (0, _) => owner.refuse = !owner.refuse,
                    (1, _) => owner.pause = !owner.pause,
                    (2, Some(t)) => ep.close(now, t, &mut owner, &mut tx),
                    (3, Some(t)) => ep.abort(t, &mut tx),
                    (4, Some(t)) => ep.set_input_paused(t, false, &mut tx),
                    (5, Some(t)) => ep.output_ready(now, t, &mut owner, &mut tx),
                    _ => {}
                }
            }
        }
        for t in std::mem::take(&mut owner.to_close) {
            ep.close(now, t, &mut owner, &mut tx);
        }
        ep.check_invariants().unwrap();
        assert!(ep.syn_queue_len() <= 4 && ep.connections() <= 8);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        if let Ok(seg) = wire::parse(rest) {
            let mut buf = vec![0; wire::MAX_FRAME.max(rest.len())];
            let n = wire::build(&mut buf, &seg.hdr, seg.payload).expect("a parsed frame fits");
            let again = wire::parse(&buf[..n]).expect("a built frame parses");
            assert_eq!(again.hdr, seg.hdr);
            assert_eq!(again.payload, seg.payload);
        }
    } else {
        fuzz_endpoint(rest);
    }
});
