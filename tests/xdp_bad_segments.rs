//! Bad segments against the xdp server (issue 13): raw Ethernet frames from the client
//! namespace with a bad TCP or IPv4 checksum, a data offset past the segment or below the
//! header, a truncated header, SYN+FIN, data for a connection that does not exist, and a blind
//! RST and a blind SYN on a live connection's 4-tuple (RFC 5961). The server refuses or answers
//! each as it should and counts it; the live connection and a new one are served afterwards, and
//! nothing leaks. Needs root (namespaces, AF_XDP, a packet socket).

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use c2m::proto::Frame;
use common::xdp_common::{self, ACK, PSH, RST, SYN, packet_socket, send_frame, write_tcp};
use common::{ServerProcess, in_netns};

/// Frames of each kind.
const EACH: usize = 50;
const FIN: u8 = 0x01;

fn ping_pong(c: &mut c2m::client::BlockingClient, seq: u64, who: &str) {
    c.send(&Frame::Ping { seq, t_ns: 1 }).expect("send PING");
    let reply = c.read_frame(Duration::from_secs(5)).expect("read").unwrap_or_else(|| panic!("{who}: no PONG"));
    assert!(matches!(reply.frame(), Frame::Pong { seq: s, .. } if s == seq), "{who}: {:?}", reply.frame());
}

#[test]
fn bad_segments_are_refused_counted_and_harm_no_connection() {
    // One queue, one worker: a frame spoofed on the live connection's tuple must reach the worker
    // that holds it (a packet socket and the Linux client may hash it to different queues).
    let server = ServerProcess::start_with_queues(true, 1, &[]);
    let net = server.net.as_ref().expect("an xdp server");
    let macs = (net.mac(&net.ns_cli, xdp_common::VETH_CLI), net.mac(&net.ns_srv, xdp_common::VETH_SRV));
    let SocketAddr::V4(dst) = server.addr else { panic!("an IPv4 listener, not {}", server.addr) };
    let mut live = common::login(&server, 1);
    let SocketAddr::V4(live_addr) = live.stream().local_addr().unwrap() else { panic!("IPv4") };
    let stranger = SocketAddrV4::new(Ipv4Addr::new(198, 19, 9, 9), 5555);

    // Each kind: (name, source, flags, what to do to a good frame).
    type Spoil = fn(&mut Vec<u8>);
    let kinds: [(&str, SocketAddrV4, u8, Spoil); 8] = [
        ("bad TCP checksum", stranger, SYN, |f| f[14 + 20 + 16] ^= 0x5a),
        ("bad IPv4 checksum", stranger, SYN, |f| f[14 + 10] ^= 0x5a),
        ("data offset past the segment", stranger, ACK, |f| f[14 + 20 + 12] = 15 << 4),
        ("data offset below the header", stranger, ACK, |f| f[14 + 20 + 12] = 2 << 4),
        // Stopped before c2m: the steering program's bounds check passes it to the kernel.
        ("truncated TCP header", stranger, ACK, |f| f.truncate(14 + 20 + 10)),
        ("SYN+FIN", stranger, SYN | FIN, |_| {}),
        // To the listening address with no state: a failed SYN cookie, answered with an RST.
        ("data for an unknown tuple", stranger, ACK | PSH, |_| {}),
        ("blind RST on a live connection", live_addr, RST, |_| {}),
    ];
    in_netns(&net.ns_cli, || {
        let fd = packet_socket(xdp_common::VETH_CLI);
        let mut buf = [0u8; 256];
        for (name, src, flags, spoil) in kinds {
            for _ in 0..EACH {
                let n = write_tcp(&mut buf, macs, src, dst, flags, b"not a session");
                let mut frame = buf[..n].to_vec();
                spoil(&mut frame);
                assert!(send_frame(&fd, &frame), "{name}: send");
            }
        }
        // A SYN on the live connection's tuple (RFC 5961 §4: a challenge ACK, not a reset).
        for _ in 0..EACH {
            let n = write_tcp(&mut buf, macs, live_addr, dst, SYN, b"");
            assert!(send_frame(&fd, &buf[..n]), "blind SYN: send");
        }
    });

    // The live connection is still served, and a new one is.
    ping_pong(&mut live, 11, "the live connection");
    let mut new = common::login(&server, 2);
    ping_pong(&mut new, 12, "a new connection");

    let text = server.scrape();
    let count = |name: &str| common::sum(&text, name);
    eprintln!(
        "bad segments {}, challenge ACKs {}, resets {}",
        count("c2m_tcp_bad_segments_total"),
        count("c2m_tcp_challenge_acks_total"),
        count("c2m_tcp_resets_total")
    );
    // Checksums, data offsets and SYN+FIN: refused by the parser or the flag check.
    assert!(count("c2m_tcp_bad_segments_total") >= (5 * EACH) as f64, "{text}");
    // Data for an unknown tuple: an RST each (the blind RSTs are not answered, nor counted as
    // received: they are out of the window).
    assert!(count("c2m_tcp_resets_total") >= EACH as f64, "{text}");
    // A SYN on a live connection is challenged (the blind RSTs, out of the window, are
    // answered with an ACK or challenged too).
    assert!(count("c2m_tcp_challenge_acks_total") >= EACH as f64, "{text}");
    // Only the two real clients (the gauges are published at the worker's next tick).
    server.wait_metric("c2m_tcp_connections", 2.0, Duration::from_secs(2));
    server.wait_metric("c2m_sessions_active", 2.0, Duration::from_secs(2));

    drop(live);
    drop(new);
    common::assert_no_leaks(&server);
}
