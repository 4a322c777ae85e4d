//! A SYN flood against the xdp data plane (issue 13): 100,000 SYNs from spoofed sources that
//! never complete, sent as raw Ethernet frames from the client namespace. c2m's TCP keeps at most
//! its SYN-RECEIVED table's worth of half-open state per worker and answers the rest with SYN
//! cookies, so the server's memory stays bounded, and a real (Linux TCP) client is still served
//! during the flood. Needs root (namespaces, AF_XDP, a packet socket).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use c2m::proto::Frame;
use c2m::tcp::wire::{self, Header, flags};
use common::xdp_common::{packet_socket, send_frame};
use common::{ServerProcess, in_netns};

const SYNS: u32 = 100_000;
/// c2m's TCP default SYN-RECEIVED table, per worker (tcp::Config::default().syn_backlog).
const SYN_TABLE: u32 = 4096;

fn rss_bytes(pid: u32) -> u64 {
    c2m::host::process::memory(pid).expect("the server's smaps_rollup").rss
}

#[test]
fn a_syn_flood_keeps_memory_bounded_and_real_clients_are_served() {
    let server = ServerProcess::start_on(true, &[]);
    let net = server.net.as_ref().expect("an xdp server");
    let srv_mac = net.mac(&net.ns_srv, common::xdp_common::VETH_SRV);
    let cli_mac = net.mac(&net.ns_cli, common::xdp_common::VETH_CLI);
    let std::net::SocketAddr::V4(dst) = server.addr else { panic!("an IPv4 listener, not {}", server.addr) };
    // A client logged in before the flood stays served through it.
    let mut before = common::login(&server, 1);
    let rss_before = rss_bytes(server.child.id());
    let workers = server.scrape().lines().filter(|l| l.starts_with("c2m_tcp_syn_queue{")).count() as f64;
    assert!(workers >= 1.0, "no c2m_tcp_syn_queue series\n{}", server.scrape());

    let started = Instant::now();
    let sent = in_netns(&net.ns_cli, || {
        let fd = packet_socket(common::xdp_common::VETH_CLI);
        let mut buf = [0u8; 128];
        let mut sent = 0u32;
        for i in 0..SYNS {
            // Sources in 198.19.0.0/16, which no interface owns: the SYN-ACKs are dropped on
            // arrival and no handshake ever completes.
            let src = SocketAddrV4::new(Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8), 1024 + (i % 60_000) as u16);
            let hdr = Header {
                src_mac: cli_mac,
                dst_mac: srv_mac,
                src,
                dst,
                ip_id: i as u16,
                seq: i.wrapping_mul(2_654_435_761),
                ack: 0,
                flags: flags::SYN,
                window: 65_535,
                mss: Some(1460),
            };
            let len = wire::build(&mut buf, &hdr, &[]).expect("a SYN fits");
            if send_frame(&fd, &buf[..len]) {
                sent += 1;
            }
            // Paced a little (about 100k/s at most), so the flood reaches c2m's TCP rather than
            // overflowing the socket's RX ring, where the kernel would drop it first.
            if i % 128 == 127 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sent
    });
    let flood = started.elapsed();
    assert!(sent >= SYNS * 99 / 100, "sent {sent} of {SYNS} SYNs");

    // During the flood's aftermath (half-open entries are still waiting out their SYN-ACK
    // retransmissions): a new real client connects, logs in and is answered; the old one too.
    let mut during = common::login(&server, 2);
    for (who, c) in [("new", &mut during), ("old", &mut before)] {
        c.send(&Frame::Ping { seq: 7, t_ns: 1 }).expect("send PING");
        let reply = c.read_frame(Duration::from_secs(5)).expect("read").unwrap_or_else(|| panic!("{who}: no PONG"));
        assert!(matches!(reply.frame(), Frame::Pong { seq: 7, .. }), "{who}: {:?}", reply.frame());
    }

    let text = server.scrape();
    let syns = common::sum(&text, "c2m_tcp_syns_received_total");
    let cookies = common::sum(&text, "c2m_tcp_syn_cookies_sent_total");
    let half_open = common::sum(&text, "c2m_tcp_syn_queue");
    let open = common::sum(&text, "c2m_tcp_connections");
    let rss_after = rss_bytes(server.child.id());
    eprintln!(
        "{sent} SYNs in {flood:?}: {syns} reached c2m's TCP, {cookies} answered with cookies, {half_open} half-open, \
         {open} connections, server RSS {} -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    // Most of the flood reached TCP (the rest the kernel dropped at the RX ring, counted there).
    assert!(syns >= f64::from(SYNS) / 2.0, "only {syns} SYNs reached c2m's TCP\n{text}");
    // Half-open state is bounded by the table; everything past it got a cookie and no state.
    assert!(half_open <= f64::from(SYN_TABLE) * workers, "{half_open} half-open entries\n{text}");
    // (Each worker's table takes SYN_TABLE, the two real clients' SYNs took a place each.)
    let table_share = f64::from(SYN_TABLE) * workers + 2.0;
    assert!(cookies >= syns - table_share, "{cookies} cookies for {syns} SYNs, {table_share} kept in tables");
    // No spoofed handshake completed: the two real clients are the only connections.
    assert_eq!(open, 2.0, "{text}");
    // Memory: the control blocks and tables are allocated at start; the flood may touch their
    // pages for the half-open entries, nothing proportional to the flood.
    assert!(rss_after < rss_before + (64 << 20), "server RSS grew from {rss_before} to {rss_after} bytes");

    drop(before);
    drop(during);
    common::assert_no_leaks(&server);
}
