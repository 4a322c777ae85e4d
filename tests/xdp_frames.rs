//! Frames both ways between two AF_XDP sockets, one per namespace, on both queues: the client's
//! sockets send N TCP frames (as an xdp load generator would, from 198.19.0.7, an address no
//! kernel has), the server's echo each one back in place, and every frame arrives exactly once
//! each way, in batches, through the need-wakeup TX kick. And the frame pool never leaks: every
//! path a frame can take (received, released one by one or in a batch, sent, refused for a bad
//! length) brings it back. Needs root.

mod xdp_common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use c2m::xdp::{Filter, Frame, FrameCounts, Interface, XdpLink, XdpMode, XdpProgram, Xsk, XskConfig, netns};
use xdp_common::{ACK, PSH, SRV_IP, Topology, VETH_CLI, VETH_SRV, parse_tcp, swap_in_place, write_tcp};

const PORT: u16 = 7700;
const LOADGEN_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 7);

/// One namespace's end: its program, link and one socket per queue.
struct End {
    _prog: XdpProgram,
    link: XdpLink,
    xsks: Vec<Xsk>,
    mac: [u8; 6],
}

fn end(ns: &str, dev: &str, filter: Filter, mode: XdpMode, cfg: &XskConfig) -> End {
    let _in = netns::enter(ns).expect("enter namespace");
    let iface = Interface::by_name(dev).expect("veth end");
    let prog = XdpProgram::load(&[filter], iface.rx_queues()).expect("load");
    let link = prog.attach(&iface, mode).expect("attach");
    let xsks = (0..iface.rx_queues())
        .map(|q| {
            let x = Xsk::bind(&iface, q, cfg).unwrap_or_else(|e| panic!("bind {dev} queue {q}: {e}"));
            prog.register(&x).expect("register");
            x
        })
        .collect();
    End { _prog: prog, link, xsks, mac: iface.mac() }
}

/// Waits (bounded) until every frame sent has come back on the completion ring.
fn reap_all(x: &mut Xsk) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while x.frame_counts().kernel_tx > 0 && Instant::now() < deadline {
        x.kick().expect("kick");
        if x.reap() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The load generator's address for a sequence number: one source port per sending queue.
fn loadgen(seq: usize) -> SocketAddrV4 {
    SocketAddrV4::new(LOADGEN_IP, 40000 + (seq / N_PER_QUEUE) as u16)
}

const N_PER_QUEUE: usize = 10_000;

fn seq_of(payload: &[u8]) -> usize {
    u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize
}

fn both_ways(tag: &str, mode: XdpMode) {
    const WINDOW: usize = 256;
    const BATCH: usize = 64;
    let topo = Topology::up(tag);
    let listen = SocketAddrV4::new(SRV_IP, PORT);
    let cfg = XskConfig::default();
    let mut srv = end(&topo.ns_srv, VETH_SRV, Filter::TcpTo(listen), mode, &cfg);
    let mut cli = end(&topo.ns_cli, VETH_CLI, Filter::TcpFrom(listen), mode, &cfg);
    let queues = srv.xsks.len();
    assert_eq!(queues, 2);
    let start_counts: Vec<FrameCounts> = srv.xsks.iter().chain(&cli.xsks).map(|x| x.frame_counts()).collect();
    eprintln!("{} / {}: {} and {}", srv.link.mode(), srv.xsks[0].mode(), VETH_SRV, VETH_CLI);

    let n = N_PER_QUEUE * queues;
    let mut at_server = vec![0u8; n];
    let mut at_client = vec![0u8; n];
    let mut sent = vec![0usize; queues];
    let mut back = vec![0usize; queues];
    let mut tx: Vec<Frame> = Vec::with_capacity(BATCH);
    let mut rx: Vec<Frame> = Vec::with_capacity(BATCH);
    let mut echo: Vec<Vec<Frame>> = (0..queues).map(|_| Vec::with_capacity(cfg.rx_size as usize)).collect();
    let mut wakeups_seen = 0u64;
    let mut waits = 0u64;
    let payload_pad = [0x5au8; 60];
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(30);

    while back.iter().sum::<usize>() < n && Instant::now() < deadline {
        let mut progress = 0;
        for q in 0..queues {
            // Client: a batch of new frames, within the window.
            let c = &mut cli.xsks[q];
            c.reap();
            let want = BATCH.min(N_PER_QUEUE - sent[q]).min(WINDOW - (sent[q] - back[q]));
            c.alloc(want, &mut tx);
            let src = loadgen(q * N_PER_QUEUE);
            for (i, f) in tx.iter_mut().enumerate() {
                let seq = q * N_PER_QUEUE + sent[q] + i;
                let mut payload = payload_pad;
                payload[..4].copy_from_slice(&(seq as u32).to_be_bytes());
                let len = write_tcp(c.buf_mut(f), (cli.mac, srv.mac), src, listen, ACK | PSH, &payload);
                f.set_len(len);
            }
            let queued = c.send(&mut tx);
            sent[q] += queued;
            c.release(&mut tx); // what did not fit on the TX ring (its sequence numbers go again)
            if c.tx_needs_wakeup() {
                wakeups_seen += 1;
            }
            c.kick().expect("client kick");

            // Server: every frame back as it came, turned around in place.
            let s = &mut srv.xsks[q];
            s.reap();
            s.recv(&mut rx);
            for mut f in rx.drain(..) {
                let t = parse_tcp(s.data(&f)).expect("a TCP frame");
                assert!(t.checksums_ok, "checksums of a frame from the client socket");
                let seq = seq_of(t.payload);
                assert_eq!((t.src, t.dst), (loadgen(seq), listen));
                at_server[seq] += 1;
                swap_in_place(&mut s.buf_mut(&mut f)[..]);
                echo[q].push(f);
            }
            s.send(&mut echo[q]);
            s.kick().expect("server kick");

            // Client: the echoes.
            let c = &mut cli.xsks[q];
            // An echo may come back on either queue (generic XDP on veth sees every frame on
            // queue 0): count it for the queue that sent it.
            let got = c.recv(&mut rx);
            for f in rx.iter() {
                let t = parse_tcp(c.data(f)).expect("an echoed TCP frame");
                assert!(t.checksums_ok);
                let seq = seq_of(t.payload);
                assert_eq!((t.src, t.dst), (listen, loadgen(seq)), "only echoes reach the client socket");
                at_client[seq] += 1;
                back[seq / N_PER_QUEUE] += 1;
            }
            c.release(&mut rx);
            progress += queued + got;
        }
        if progress == 0 {
            // Block, as a data plane must: two spinning ends starve the softirq that moves frames.
            let all: Vec<&Xsk> = srv.xsks.iter().chain(&cli.xsks).collect();
            Xsk::wait_rx_any(&all, Duration::from_millis(10)).expect("poll");
            waits += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (sc, cc) = (srv.xsks[0].counters(), cli.xsks[0].counters());
    let per_queue = |e: &End| e.xsks.iter().map(|x| x.counters().rx_frames).collect::<Vec<_>>();
    eprintln!("frames received per queue: server {:?}, client {:?}", per_queue(&srv), per_queue(&cli));
    eprintln!(
        "{n} frames each way in {secs:.2}s ({:.0} round trips/s, one thread, {waits} waits); client queue 0: {} \
         frames in {} TX batches, {} kicks ({} EAGAIN), TX wake-up flag seen {wakeups_seen} times; server queue 0: \
         {} frames in {} RX batches",
        n as f64 / secs,
        cc.tx_frames,
        cc.tx_batches,
        cc.kicks,
        cc.kick_again,
        sc.rx_frames,
        sc.rx_batches
    );
    let missing = at_client.iter().filter(|&&c| c == 0).count();
    assert_eq!(missing, 0, "{missing} of {n} frames did not come back; sent {sent:?}, back {back:?}");
    assert!(at_server.iter().all(|&c| c == 1), "each frame reaches the server exactly once");
    assert!(at_client.iter().all(|&c| c == 1), "each frame comes back exactly once");
    assert!(wakeups_seen > 0 && cc.kicks > 0, "the TX need-wakeup path ran");
    assert!(cc.tx_frames as f64 / cc.tx_batches as f64 > 2.0, "frames went out in batches: {cc:?}");
    assert!(sc.rx_frames as f64 / sc.rx_batches as f64 > 1.0, "frames came in batches: {sc:?}");

    for x in srv.xsks.iter_mut().chain(cli.xsks.iter_mut()) {
        reap_all(x);
        let k = x.kernel_stats().expect("XDP_STATISTICS");
        assert_eq!((k.rx_dropped, k.rx_ring_full, k.tx_invalid_descs), (0, 0, 0), "{k:?}");
        let c = x.counters();
        assert_eq!((c.tx_dropped, c.tx_bad_len, c.rx_bad_desc, c.bad_returns), (0, 0, 0, 0), "{c:?}");
    }
    let end_counts: Vec<FrameCounts> = srv.xsks.iter().chain(&cli.xsks).map(|x| x.frame_counts()).collect();
    assert_eq!(end_counts, start_counts, "every frame is back where it started");
    assert!(end_counts.iter().all(|c| c.user == 0 && c.kernel_tx == 0));
}

#[test]
fn frames_both_ways_between_two_sockets_none_lost_native() {
    both_ways("frames-drv", XdpMode::Native);
}

#[test]
fn frames_both_ways_between_two_sockets_none_lost_generic() {
    both_ways("frames-skb", XdpMode::Generic);
}

#[test]
fn the_frame_pool_never_leaks_a_frame() {
    let topo = Topology::up("pool");
    let listen = SocketAddrV4::new(SRV_IP, PORT);
    let cfg = XskConfig {
        frame_count: 1024,
        fill_size: 512,
        completion_size: 512,
        rx_size: 512,
        tx_size: 256,
        rx_frames: 384,
        ..Default::default()
    };
    let mut srv = end(&topo.ns_srv, VETH_SRV, Filter::TcpTo(listen), XdpMode::Native, &cfg);
    let (first, rest) = srv.xsks.split_at_mut(1);
    let (x, other) = (&mut first[0], &mut rest[0]);
    let before = x.frame_counts();
    assert_eq!(before, FrameCounts { total: 1024, free: 640, kernel_rx: 384, kernel_tx: 0, user: 0 });

    // Take every free frame.
    let mut held: Vec<Frame> = Vec::with_capacity(1024);
    while let Some(f) = x.alloc_one() {
        held.push(f);
    }
    assert_eq!(held.len(), 640);
    assert_eq!(x.frame_counts().user, 640);
    assert!(x.alloc_one().is_none());

    // A token of one socket is refused by another (the panic message below is expected).
    assert!(catch_unwind(AssertUnwindSafe(|| other.data(&held[0]))).is_err(), "foreign token accepted");

    // Back one by one, in a batch, and as sends: empty ones (refused, freed) and real ones that
    // go out of the client's end of the pair (an ethertype no one handles: dropped there).
    for f in held.drain(..100) {
        x.release_one(f);
    }
    let mut batch: Vec<Frame> = held.drain(..100).collect();
    x.release(&mut batch);
    let mut empty: Vec<Frame> = held.drain(..40).collect();
    assert_eq!(x.send(&mut empty), 0);
    assert_eq!(x.counters().tx_bad_len, 40);
    for f in held.iter_mut() {
        let b = x.buf_mut(f);
        b[..6].fill(0xff);
        b[6..12].copy_from_slice(&srv.mac);
        b[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        f.set_len(64);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !held.is_empty() && Instant::now() < deadline {
        x.send(&mut held);
        x.kick().expect("kick");
        x.reap();
    }
    assert!(held.is_empty(), "{} frames never fit on the TX ring", held.len());
    reap_all(x);
    let c = x.counters();
    assert_eq!(c.tx_frames, 400);
    assert_eq!(c.completed, 400, "{c:?}");
    assert_eq!(c.bad_returns, 0);
    x.refill();
    assert_eq!(x.frame_counts(), before, "all frames back: free {} fill/RX {}", before.free, before.kernel_rx);
}
