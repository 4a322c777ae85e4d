//! Steering works and passing works: with the program on the server's veth end and an AF_XDP
//! socket on each of its RX queues, the SYN of a kernel `connect` to the filtered address arrives
//! at a socket (with a correct TCP checksum: the offloads are off), while ping (and the ARP
//! before it) and a connect to another port are still answered by the kernel. And the program's
//! verdicts agree with `steers`, its reference in Rust, on crafted and random frames. Needs root.

mod xdp_common;

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use c2m::xdp::{
    BindMode, Filter, Frame, Interface, XDP_PASS, XDP_REDIRECT, XdpMode, XdpProgram, Xsk, XskConfig, netns, steers,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use socket2::{Domain, Protocol, Socket, Type};
use xdp_common::{CLI_IP, SRV_IP, SYN, Topology, VETH_SRV, parse_tcp};

const PORT: u16 = 7700;

fn small_config() -> XskConfig {
    XskConfig {
        frame_count: 512,
        fill_size: 256,
        completion_size: 256,
        rx_size: 256,
        tx_size: 256,
        rx_frames: 256,
        ..Default::default()
    }
}

/// One ICMP echo through a raw socket: Ok once the reply from `dst` arrives.
fn ping(dst: Ipv4Addr, timeout: Duration) -> io::Result<()> {
    let mut s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let id = (std::process::id() as u16).to_be_bytes();
    let mut req = [8, 0, 0, 0, id[0], id[1], 0, 1, b'c', b'2', b'm', b'!'];
    let sum = req.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    req[2..4].copy_from_slice(&sum.to_be_bytes());
    s.send_to(&req, &SocketAddr::from(SocketAddrV4::new(dst, 0)).into())?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e),
        };
        // A raw ICMP socket reads the IPv4 header too.
        let ihl = (buf[0] & 0x0f) as usize * 4;
        if n >= ihl + 8 && buf[12..16] == dst.octets() && buf[ihl] == 0 && buf[ihl + 4..ihl + 6] == id {
            return Ok(());
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, format!("no echo reply from {dst}")))
}

/// Takes every frame waiting on the sockets, hands each to `seen`, releases them.
fn drain(xsks: &mut [Xsk], rx: &mut Vec<Frame>, mut seen: impl FnMut(&[u8])) {
    for x in xsks.iter_mut() {
        while x.recv(rx) > 0 {
            for f in rx.iter() {
                seen(x.data(f));
            }
            x.release(rx);
        }
    }
}

fn steering(tag: &str, mode: XdpMode) {
    let topo = Topology::up(tag);
    let listen = SocketAddrV4::new(SRV_IP, PORT);
    let (prog, link, mut xsks) = {
        let _in = netns::enter(&topo.ns_srv).expect("enter the server namespace");
        let iface = Interface::by_name(VETH_SRV).expect("the veth end is there");
        let off = iface.offloads().expect("read offloads");
        assert!(off.frames_whole(), "netns.sh left offloads on: {off:?}");
        let prog = XdpProgram::load(&[Filter::TcpTo(listen)], iface.rx_queues()).expect("load");
        let link = prog.attach(&iface, mode).expect("attach");
        let xsks: Vec<Xsk> = (0..iface.rx_queues())
            .map(|q| {
                let x = Xsk::bind(&iface, q, &small_config()).unwrap_or_else(|e| panic!("bind queue {q}: {e}"));
                prog.register(&x).expect("register");
                x
            })
            .collect();
        (prog, link, xsks)
    };
    assert_eq!(xsks[0].mode(), BindMode::Copy, "veth gives copy mode, not zero-copy");
    eprintln!("program attached {}, sockets bound in {}", link.mode(), xsks[0].mode());
    let before: Vec<_> = xsks.iter().map(|x| x.frame_counts()).collect();

    // The SYN of a kernel connect to the filtered address goes to a socket, not to the kernel:
    // nothing answers, so the connect times out instead of being refused.
    let mut rx = Vec::with_capacity(64);
    let mut syn = None;
    let connect = std::thread::scope(|s| {
        let client = s.spawn(|| {
            netns::run_in(&topo.ns_cli, || TcpStream::connect_timeout(&listen.into(), Duration::from_millis(1500)))
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        while syn.is_none() && Instant::now() < deadline {
            let refs: Vec<&Xsk> = xsks.iter().collect();
            Xsk::wait_rx_any(&refs, Duration::from_millis(100)).expect("poll");
            drain(&mut xsks, &mut rx, |f| {
                let t = parse_tcp(f).expect("only IPv4 TCP is steered");
                assert_eq!(t.dst, listen, "only TCP to {listen} is steered");
                if t.flags & SYN != 0 && syn.is_none() {
                    syn = Some((t.src, t.flags, t.checksums_ok, f.len()));
                }
            });
        }
        client.join().unwrap().expect("enter the client namespace")
    });
    let (src, flags, checksums_ok, len) = syn.expect("the SYN reached an AF_XDP socket");
    assert_eq!(*src.ip(), CLI_IP);
    assert_eq!(flags, SYN);
    assert!(checksums_ok, "the SYN's checksums are wrong ({len} bytes): TX checksum offload is on?");
    let e = connect.expect_err("nothing answers a steered SYN");
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "the kernel answered a steered SYN: {e}");

    // Everything else still reaches the kernel: ARP and ping, and TCP to another port (refused).
    netns::run_in(&topo.ns_cli, || ping(SRV_IP, Duration::from_secs(2)))
        .unwrap()
        .expect("the kernel answers ARP and ping");
    let other = SocketAddrV4::new(SRV_IP, PORT + 1);
    let e = netns::run_in(&topo.ns_cli, || TcpStream::connect_timeout(&other.into(), Duration::from_secs(2)))
        .unwrap()
        .expect_err("nothing listens on the other port");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "the kernel answers another port with RST: {e}");

    // Late SYN retransmits only, and every frame back where it was.
    drain(&mut xsks, &mut rx, |f| assert_eq!(parse_tcp(f).map(|t| t.dst), Some(listen)));
    for (x, b) in xsks.iter().zip(&before) {
        assert_eq!(x.frame_counts(), *b, "queue {}: frames leaked", x.queue());
        let k = x.kernel_stats().expect("XDP_STATISTICS");
        assert_eq!((k.rx_dropped, k.rx_ring_full), (0, 0), "queue {}: {k:?}", x.queue());
    }
    let received: u64 = xsks.iter().map(|x| x.counters().rx_frames).sum();
    assert!(received >= 1);

    verdicts_match_the_reference(&prog, listen);
}

#[test]
fn steers_filtered_tcp_and_passes_the_rest_native() {
    steering("steer-drv", XdpMode::Native);
}

#[test]
fn steers_filtered_tcp_and_passes_the_rest_generic() {
    steering("steer-skb", XdpMode::Generic);
}

/// A frame with the header fields given, raw: nothing here has to be valid.
#[allow(clippy::too_many_arguments)]
fn raw_frame(
    ethertype: u16,
    ver_ihl: u8,
    proto: u8,
    frag: u16,
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
) -> Vec<u8> {
    let ihl = (ver_ihl & 0x0f) as usize * 4;
    let mut f = vec![0u8; 14 + 60 + 20];
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f[14] = ver_ihl;
    f[14 + 6..14 + 8].copy_from_slice(&frag.to_be_bytes());
    f[14 + 9] = proto;
    f[14 + 12..14 + 16].copy_from_slice(&src);
    f[14 + 16..14 + 20].copy_from_slice(&dst);
    let t = 14 + ihl.max(20);
    f[t..t + 2].copy_from_slice(&ports.0.to_be_bytes());
    f[t + 2..t + 4].copy_from_slice(&ports.1.to_be_bytes());
    f
}

/// BPF_PROG_TEST_RUN says XDP_REDIRECT (steered to the socket on queue 0) exactly where `steers`
/// says so, on frames of every shape and length (the kernel takes 14 bytes and up).
fn verdicts_match_the_reference(prog: &XdpProgram, listen: SocketAddrV4) {
    let filters = prog.filters().to_vec();
    let check = |f: &[u8]| -> Result<(), TestCaseError> {
        let got = prog.test_run(f).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want = if steers(&filters, f) { XDP_REDIRECT } else { XDP_PASS };
        prop_assert_eq!(got, want, "frame {:02x?}", f);
        Ok(())
    };
    let srv = listen.ip().octets();
    let syn = raw_frame(0x0800, 0x45, 6, 0x4000, CLI_IP.octets(), srv, (40000, PORT));
    check(&syn).unwrap();
    assert!(steers(&filters, &syn), "the template is a steered frame");
    for n in 14..syn.len() {
        check(&syn[..n]).unwrap();
    }
    let field = |i: usize, choices: Vec<u64>| prop_oneof![3 => proptest::sample::select(choices), 1 => any::<u64>().prop_map(move |r| r >> (i % 8))];
    let strategy = (
        field(0, vec![0x0800, 0x0806, 0x86dd]),
        field(1, vec![0x45, 0x46, 0x4f, 0x44, 0x55]),
        field(2, vec![6, 17, 1]),
        field(3, vec![0, 0x4000, 0x2000, 0x0001]),
        field(4, vec![u32::from_be_bytes(CLI_IP.octets()) as u64, 0xc613_0007]),
        field(5, vec![u32::from_be_bytes(srv) as u64, u32::from_be_bytes([198, 18, 0, 3]) as u64]),
        field(6, vec![PORT as u64, PORT as u64 + 1]),
        14usize..=94,
    );
    let mut runner = TestRunner::new(Config { cases: 2000, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |(et, vi, proto, frag, src, dst, dport, len)| {
            let f = raw_frame(
                et as u16,
                vi as u8,
                proto as u8,
                frag as u16,
                (src as u32).to_be_bytes(),
                (dst as u32).to_be_bytes(),
                (40000, dport as u16),
            );
            check(&f[..len])
        })
        .expect("the program agrees with steers()");
}
