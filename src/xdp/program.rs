//! The steering program: an XDP program that hands the AF_XDP socket of the frame's RX queue
//! the IPv4 TCP frames that match a filter, and passes everything else to the kernel (XDP_PASS),
//! so ARP, ICMP and other TCP ports are still answered by the kernel.
//!
//! It is assembled here (see `asm.rs`), loaded with `bpf(BPF_PROG_LOAD)` and attached as a BPF
//! link, so it is detached when the link's fd is closed: by [`XdpLink`]'s drop, or by the kernel
//! when the process dies. [`steers`] is the same decision written in Rust, the reference the
//! program is tested against.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::asm::{Asm, Insn, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9};
use super::bpf;
use super::iface::Interface;
use super::xsk::Xsk;
use super::{XdpError, syscall};

/// Which IPv4 TCP frames go to the AF_XDP socket. An unspecified address (0.0.0.0) matches any
/// address and port 0 any port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// TCP to this address: a server's listen address.
    TcpTo(SocketAddrV4),
    /// TCP from this address: the replies of the server a load generator targets.
    TcpFrom(SocketAddrV4),
}

/// Where the headers are (a frame without VLAN tags; anything else is passed to the kernel).
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IPV4_MIN: usize = 20;
const TCP_MIN: usize = 20;
/// The fragment offset and more-fragments bits of the IPv4 flags field: any fragment is passed,
/// the kernel reassembles it (a later fragment has no TCP header to match).
const IP_FRAG_MASK: u16 = 0x3fff;

/// True when the steering program hands `frame` to the AF_XDP socket: an Ethernet II frame
/// holding IPv4 (version 4, a header of at least 20 bytes), not a fragment, TCP, with the whole
/// 20-byte TCP header inside the frame, matching one of `filters`.
pub fn steers(filters: &[Filter], frame: &[u8]) -> bool {
    let Some(eth) = frame.get(..ETH_HLEN + IPV4_MIN) else { return false };
    let ip = &eth[ETH_HLEN..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IP
        || ip[0] >> 4 != 4
        || ihl < IPV4_MIN
        || ip[9] != IPPROTO_TCP
        || u16::from_be_bytes([ip[6], ip[7]]) & IP_FRAG_MASK != 0
    {
        return false;
    }
    let Some(tcp) = frame.get(ETH_HLEN + ihl..ETH_HLEN + ihl + TCP_MIN) else { return false };
    let src = SocketAddrV4::new(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]), u16::from_be_bytes([tcp[0], tcp[1]]));
    let dst = SocketAddrV4::new(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]), u16::from_be_bytes([tcp[2], tcp[3]]));
    let matches = |want: &SocketAddrV4, got: &SocketAddrV4| {
        (want.ip().is_unspecified() || want.ip() == got.ip()) && (want.port() == 0 || want.port() == got.port())
    };
    filters.iter().any(|f| match f {
        Filter::TcpTo(want) => matches(want, &dst),
        Filter::TcpFrom(want) => matches(want, &src),
    })
}

/// A network-order field as the program loads it: BPF loads are in host byte order.
fn be16(v: u16) -> i32 {
    u16::from_ne_bytes(v.to_be_bytes()) as i32
}
fn be32(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The program text for `filters`, redirecting through the XSKMAP `map_fd`. Register use:
/// r6 ctx, r2 data, r3 data_end, r8 source address, r9 destination address, r5 source port,
/// r7 destination port. Every packet read is preceded by a check of its end against data_end.
fn assemble(filters: &[Filter], map_fd: i32) -> Vec<Insn> {
    let mut a = Asm::new();
    let pass = a.new_label();
    let redirect = a.new_label();

    a.mov64_reg(R6, R1);
    a.ldx_w(R2, R6, 0); // xdp_md.data
    a.ldx_w(R3, R6, 4); // xdp_md.data_end
    // Ethernet and the fixed part of the IPv4 header.
    a.mov64_reg(R4, R2);
    a.add64_imm(R4, (ETH_HLEN + IPV4_MIN) as i32);
    a.jgt_reg(R4, R3, pass);
    a.ldx_h(R5, R2, 12); // ethertype
    a.jne_imm(R5, be16(ETH_P_IP), pass);
    a.ldx_b(R5, R2, ETH_HLEN as i16); // version and IHL
    a.mov64_reg(R7, R5);
    a.and64_imm(R7, 0xf0);
    a.jne_imm(R7, 0x40, pass);
    a.and64_imm(R5, 0x0f);
    a.lsh64_imm(R5, 2); // header length in bytes, 0..=60: a bounded offset the verifier tracks
    a.jlt_imm(R5, IPV4_MIN as i32, pass);
    a.ldx_b(R7, R2, (ETH_HLEN + 9) as i16); // protocol
    a.jne_imm(R7, IPPROTO_TCP as i32, pass);
    a.ldx_h(R7, R2, (ETH_HLEN + 6) as i16); // flags and fragment offset
    a.and64_imm(R7, be16(IP_FRAG_MASK));
    a.jne_imm(R7, 0, pass);
    a.ldx_w(R8, R2, (ETH_HLEN + 12) as i16); // source address
    a.ldx_w(R9, R2, (ETH_HLEN + 16) as i16); // destination address
    // The TCP header starts after the IPv4 header, options included.
    a.mov64_reg(R4, R2);
    a.add64_imm(R4, ETH_HLEN as i32);
    a.add64_reg(R4, R5);
    a.mov64_reg(R5, R4);
    a.add64_imm(R5, TCP_MIN as i32);
    a.jgt_reg(R5, R3, pass);
    a.ldx_h(R5, R4, 0); // source port
    a.ldx_h(R7, R4, 2); // destination port

    // A filter that matches anything makes the ones after it unreachable, and the verifier
    // refuses unreachable instructions: stop there and fall through to the redirect.
    let mut catch_all = false;
    for filter in filters {
        let (addr, port_reg, want) = match filter {
            Filter::TcpTo(want) => (R9, R7, want),
            Filter::TcpFrom(want) => (R8, R5, want),
        };
        if want.ip().is_unspecified() && want.port() == 0 {
            catch_all = true;
            break;
        }
        let next = a.new_label();
        if !want.ip().is_unspecified() {
            a.jne32_imm(addr, be32(*want.ip()), next);
        }
        if want.port() != 0 {
            a.jne_imm(port_reg, be16(want.port()), next);
        }
        a.ja(redirect);
        a.label(next);
    }
    if !catch_all {
        a.ja(pass);
    }

    // bpf_redirect_map(xsks, ctx->rx_queue_index, XDP_PASS): the low bits of the flags are the
    // verdict when no socket sits at that key, so a queue without an XSK still reaches the kernel.
    a.label(redirect);
    a.ldx_w(R2, R6, 16); // xdp_md.rx_queue_index
    a.ld_map_fd(R1, map_fd);
    a.mov64_imm(R3, bpf::XDP_PASS as i32);
    a.call(bpf::BPF_FUNC_REDIRECT_MAP);
    a.exit();

    a.label(pass);
    a.mov64_imm(R0, bpf::XDP_PASS as i32);
    a.exit();
    a.finish().expect("the steering program's labels are all placed and its jumps are short")
}

/// How to attach: native (the driver runs the program, `drv` in `ip link`), generic (the kernel
/// runs it on the skb, `xdpgeneric`), or native with generic as the fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
}

/// The mode a program was attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Native => bpf::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => bpf::XDP_FLAGS_SKB_MODE,
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native (drv)",
            AttachMode::Generic => "generic (skb)",
        })
    }
}

/// A loaded steering program and its XSKMAP (one slot per RX queue).
pub struct XdpProgram {
    prog: OwnedFd,
    map: OwnedFd,
    queues: u32,
    filters: Vec<Filter>,
}

impl XdpProgram {
    /// Loads the program for `filters` with an XSKMAP of `queues` slots (RX queues 0..queues).
    pub fn load(filters: &[Filter], queues: u32) -> Result<XdpProgram, XdpError> {
        if filters.is_empty() || queues == 0 {
            return Err(XdpError::Config("the steering program needs at least one filter and one queue".into()));
        }
        let map = bpf::create_xskmap("c2m_xsks", queues).map_err(|e| syscall("BPF_MAP_CREATE (XSKMAP)", e))?;
        let insns = assemble(filters, map.as_raw_fd());
        let prog =
            bpf::load_xdp("c2m_steer", &insns).map_err(|e| XdpError::Verifier { source: e.source, log: e.log })?;
        Ok(XdpProgram { prog, map, queues, filters: filters.to_vec() })
    }

    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }

    /// Number of XSKMAP slots (RX queues the program can steer from).
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// Attaches the program to `iface`; the returned link says in which mode. `Auto` tries native
    /// first and falls back to generic.
    pub fn attach(&self, iface: &Interface, mode: XdpMode) -> Result<XdpLink, XdpError> {
        let try_mode = |m: AttachMode| {
            bpf::link_create_xdp(self.prog.as_fd(), iface.index(), m.flags()).map(|fd| XdpLink {
                _fd: fd,
                mode: m,
                ifindex: iface.index(),
            })
        };
        let fail = |m: AttachMode, e| XdpError::Attach { iface: iface.name().to_string(), mode: m, source: e };
        match mode {
            XdpMode::Native => try_mode(AttachMode::Native).map_err(|e| fail(AttachMode::Native, e)),
            XdpMode::Generic => try_mode(AttachMode::Generic).map_err(|e| fail(AttachMode::Generic, e)),
            // Generic only where native is not to be had: not when the interface is taken.
            XdpMode::Auto => match try_mode(AttachMode::Native) {
                Ok(link) => Ok(link),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST | libc::EPERM)) => {
                    Err(fail(AttachMode::Native, e))
                }
                Err(_) => try_mode(AttachMode::Generic).map_err(|e| fail(AttachMode::Generic, e)),
            },
        }
    }

    /// Steers the frames of `xsk`'s RX queue to it (XSKMAP[queue] = the socket). The kernel drops
    /// the entry by itself when the socket closes.
    pub fn register(&self, xsk: &Xsk) -> Result<(), XdpError> {
        if xsk.queue() >= self.queues {
            return Err(XdpError::Config(format!(
                "queue {} is outside the program's XSKMAP of {} slots",
                xsk.queue(),
                self.queues
            )));
        }
        bpf::map_update_u32(self.map.as_fd(), xsk.queue(), xsk.as_raw_fd() as u32)
            .map_err(|e| syscall("BPF_MAP_UPDATE_ELEM (XSKMAP)", e))
    }

    /// Stops steering queue `queue` (its frames go to the kernel again).
    pub fn unregister(&self, queue: u32) -> Result<(), XdpError> {
        bpf::map_delete_u32(self.map.as_fd(), queue).map_err(|e| syscall("BPF_MAP_DELETE_ELEM (XSKMAP)", e))
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN, as if received on queue 0 of `lo`)
    /// and returns its verdict: [`XDP_REDIRECT`] when it was steered to a registered socket,
    /// [`XDP_PASS`] otherwise. Frames shorter than an Ethernet header are refused by the kernel.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, XdpError> {
        bpf::test_run(self.prog.as_fd(), frame).map_err(|e| syscall("BPF_PROG_TEST_RUN", e))
    }

    pub fn prog_fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}

pub use bpf::{XDP_PASS, XDP_REDIRECT};

/// An attached program. Dropping it detaches the program (the link's fd is its only holder).
pub struct XdpLink {
    _fd: OwnedFd,
    mode: AttachMode,
    ifindex: u32,
}

impl XdpLink {
    pub fn mode(&self) -> AttachMode {
        self.mode
    }
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ihl_words: u8, proto: u8, frag: u16, src: SocketAddrV4, dst: SocketAddrV4, len: usize) -> Vec<u8> {
        let ihl = ihl_words as usize * 4;
        let mut f = vec![0u8; (ETH_HLEN + ihl + TCP_MIN).max(len)];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let ip = &mut f[ETH_HLEN..];
        ip[0] = 0x40 | ihl_words;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src.ip().octets());
        ip[16..20].copy_from_slice(&dst.ip().octets());
        let tcp = &mut f[ETH_HLEN + ihl..];
        tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
        tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
        f.truncate(len);
        f
    }

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn reference_decision() {
        let srv = sa("198.18.0.1:7700");
        let cli = sa("198.19.0.7:40000");
        let to = [Filter::TcpTo(srv)];
        let from = [Filter::TcpFrom(srv)];
        let syn = frame(5, 6, 0, cli, srv, 54);
        assert!(steers(&to, &syn));
        assert!(!steers(&from, &syn));
        let reply = frame(5, 6, 0, srv, cli, 54);
        assert!(steers(&from, &reply));
        assert!(!steers(&to, &reply));
        // Options in the IP header move the TCP header.
        assert!(steers(&to, &frame(15, 6, 0, cli, srv, 14 + 60 + 20)));
        assert!(!steers(&to, &frame(15, 6, 0, cli, srv, 14 + 60 + 19)), "TCP header cut short");
        assert!(!steers(&to, &frame(5, 17, 0, cli, srv, 54)), "UDP");
        assert!(!steers(&to, &frame(5, 6, 0x2000, cli, srv, 54)), "first fragment (MF)");
        assert!(!steers(&to, &frame(5, 6, 0x0001, cli, srv, 54)), "later fragment");
        assert!(steers(&to, &frame(5, 6, 0x4000, cli, srv, 54)), "DF is not a fragment");
        assert!(!steers(&to, &frame(4, 6, 0, cli, srv, 54)), "IHL below 5");
        assert!(!steers(&[Filter::TcpTo(sa("198.18.0.1:7701"))], &syn));
        assert!(!steers(&[Filter::TcpTo(sa("198.18.0.3:7700"))], &syn));
        assert!(steers(&[Filter::TcpTo(sa("0.0.0.0:7700"))], &syn), "any address");
        assert!(steers(&[Filter::TcpTo(sa("198.18.0.1:0"))], &syn), "any port");
        assert!(steers(&[Filter::TcpFrom(sa("1.2.3.4:1")), Filter::TcpTo(srv)], &syn), "second filter");
        let mut arp = syn.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(!steers(&to, &arp));
        for n in 0..54 {
            assert!(!steers(&to, &syn[..n]), "truncated at {n}");
        }
    }

    #[test]
    fn program_text_has_one_block_per_filter() {
        let one = assemble(&[Filter::TcpTo(sa("198.18.0.1:7700"))], 3);
        let two = assemble(&[Filter::TcpTo(sa("198.18.0.1:7700")), Filter::TcpFrom(sa("198.18.0.1:0"))], 3);
        // A full filter is 3 instructions (address, port, goto), an any-port one 2.
        assert_eq!(two.len(), one.len() + 2);
        assert!(one.iter().any(|i| i.code == 0x18 && i.imm == 3), "the map fd is loaded");
        // Anything after a catch-all filter is left out, and so is the jump to "pass".
        let all = assemble(&[Filter::TcpTo(sa("0.0.0.0:0")), Filter::TcpFrom(sa("198.18.0.1:1"))], 3);
        assert_eq!(all.len(), one.len() - 4);
        assert!(one.iter().any(|i| i.code == 0x56 && i.imm as u32 == be32(Ipv4Addr::new(198, 18, 0, 1))));
    }
}
