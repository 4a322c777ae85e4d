//! The steering program loads (the verifier accepts it for every kind of filter set), attaches to
//! a veth end natively and generically, and is gone from the interface once its link drops.
//! Needs root.

mod xdp_common;

use std::net::SocketAddrV4;

use c2m::xdp::{AttachMode, BindMode, BindPolicy, Filter, Interface, XdpMode, XdpProgram, Xsk, XskConfig, netns};
use xdp_common::{SRV_IP, Topology, VETH_SRV, require_root};

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

#[test]
fn the_verifier_accepts_the_program_for_every_filter_shape() {
    require_root();
    let many: Vec<Filter> = (0..16).map(|i| Filter::TcpTo(SocketAddrV4::new(SRV_IP, 7000 + i))).collect();
    for filters in [
        vec![Filter::TcpTo(SocketAddrV4::new(SRV_IP, 7700))],
        vec![Filter::TcpFrom(SocketAddrV4::new(SRV_IP, 7700))],
        vec![Filter::TcpTo(sa("0.0.0.0:7700"))],
        vec![Filter::TcpFrom(sa("198.18.0.1:0"))],
        vec![Filter::TcpTo(sa("0.0.0.0:0"))],
        vec![Filter::TcpTo(sa("198.18.200.129:65535")), Filter::TcpFrom(sa("198.19.255.255:1"))],
        many,
    ] {
        if let Err(e) = XdpProgram::load(&filters, 64) {
            panic!("{filters:?} refused: {e}");
        }
    }
}

#[test]
fn attaches_natively_and_generically_and_goes_with_its_link() {
    let topo = Topology::up("attach");
    let _in = netns::enter(&topo.ns_srv).expect("enter the server namespace");
    let iface = Interface::by_name(VETH_SRV).expect("the veth end is there");
    assert_eq!(iface.rx_queues(), 2, "netns.sh makes 2 RX queues");
    let prog = XdpProgram::load(&[Filter::TcpTo(SocketAddrV4::new(SRV_IP, 7700))], iface.rx_queues()).unwrap();
    let shown = || topo.link_show(&topo.ns_srv, VETH_SRV);
    assert!(!shown().contains("prog/xdp"), "nothing attached before: {}", shown());

    for (mode, want, marker) in [
        (XdpMode::Native, AttachMode::Native, " xdp "),
        (XdpMode::Generic, AttachMode::Generic, " xdpgeneric "),
        (XdpMode::Auto, AttachMode::Native, " xdp "),
    ] {
        let link = prog.attach(&iface, mode).unwrap_or_else(|e| panic!("attach {mode:?}: {e}"));
        assert_eq!(link.mode(), want, "{mode:?} attached as {}", link.mode());
        let s = shown();
        assert!(s.contains("prog/xdp") && s.contains(marker), "{mode:?} should show{marker}: {s}");
        // A second program in the same mode is refused while the link holds the interface.
        let e = prog.attach(&iface, mode).err().expect("a second attach in the same mode is refused");
        assert!(e.to_string().contains("already attached"), "{e}");
        drop(link);
        assert!(!shown().contains("prog/xdp"), "{mode:?}: still attached after the link dropped: {}", shown());
    }

    // AF_XDP on veth: zero-copy is refused, Auto falls back to copy mode and says so.
    let zc = XskConfig { bind: BindPolicy::ZeroCopy, ..Default::default() };
    let e = Xsk::bind(&iface, 0, &zc).err().expect("veth has no zero-copy AF_XDP");
    assert!(e.to_string().contains("XDP_ZEROCOPY"), "{e}");
    eprintln!("zero-copy bind on veth: {e}");
    let auto = Xsk::bind(&iface, 0, &XskConfig::default()).expect("bind");
    assert_eq!(auto.mode(), BindMode::Copy);
    assert_eq!(auto.mode().to_string(), "copy mode");
}
