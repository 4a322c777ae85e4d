//! Shared by the tests/xdp_*.rs tests: a namespace pair made with scripts/netns.sh and removed
//! by a drop guard (also when the test fails), and Ethernet/IPv4/TCP frames built and checked
//! by hand. These tests need root; a machine without AF_XDP, veth or network namespaces makes
//! them fail with a message naming what is missing, never pass.
#![allow(dead_code)] // each test binary uses a different part

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

pub const SRV_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLI_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const VETH_SRV: &str = "t-s0";
pub const VETH_CLI: &str = "t-c0";

/// A packet socket bound to `ifname` in the calling thread's namespace.
pub fn packet_socket(ifname: &str) -> OwnedFd {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "no interface {ifname} here");
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket() has no memory preconditions; the result is checked before it is owned.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: sll is a valid sockaddr_ll of `len` bytes for the duration of the call.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), len) };
    assert_eq!(rc, 0, "bind to {ifname}: {}", std::io::Error::last_os_error());
    fd
}

pub fn send_frame(fd: &OwnedFd, frame: &[u8]) -> bool {
    // SAFETY: `frame` is a valid buffer of its length for the duration of the call.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    n == frame.len() as isize
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "the xdp tests need root (network namespaces, bpf(), AF_XDP); run them as root");
}

/// A namespace pair of its own (names unique to this process and test), up while this lives.
pub struct Topology {
    pub ns_srv: String,
    pub ns_cli: String,
    /// RX and TX queues of each veth end.
    pub queues: u32,
}

static NEXT: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// Removes the namespaces of test processes that are gone (killed before their guards ran).
fn remove_stale_namespaces() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else { return };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("c2mt-").and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

impl Topology {
    pub fn up(tag: &str) -> Topology {
        Topology::up_with_queues(tag, 2)
    }

    /// A pair whose veth ends have `queues` queues each way.
    pub fn up_with_queues(tag: &str, queues: u32) -> Topology {
        require_root();
        SWEEP.call_once(remove_stale_namespaces);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let topo =
            Topology { ns_srv: format!("c2mt-{pid}-{n}-{tag}-s"), ns_cli: format!("c2mt-{pid}-{n}-{tag}-c"), queues };
        let out = topo.script("up");
        assert!(
            out.status.success(),
            "scripts/netns.sh up failed (does this kernel have veth and network namespaces?):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        topo
    }

    fn script(&self, cmd: &str) -> std::process::Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns.sh"))
            .arg(cmd)
            .env("C2M_NS_SRV", &self.ns_srv)
            .env("C2M_NS_CLI", &self.ns_cli)
            .env("C2M_VETH_SRV", VETH_SRV)
            .env("C2M_VETH_CLI", VETH_CLI)
            .env("C2M_ADDR_SRV", SRV_IP.to_string())
            .env("C2M_ADDR_CLI", CLI_IP.to_string())
            .env("C2M_QUEUES", self.queues.to_string())
            .output()
            .expect("run scripts/netns.sh")
    }

    /// `ip -d link show DEV` in a namespace (shows an attached XDP program).
    pub fn link_show(&self, ns: &str, dev: &str) -> String {
        let out = Command::new("ip").args(["-n", ns, "-d", "link", "show", "dev", dev]).output().expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Topology {
    /// The MAC address of `dev` in namespace `ns`.
    pub fn mac(&self, ns: &str, dev: &str) -> [u8; 6] {
        let text = self.link_show(ns, dev);
        let word = text
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no link/ether for {dev} in {ns}: {text}"));
        let mut mac = [0u8; 6];
        for (b, part) in mac.iter_mut().zip(word.split(':')) {
            *b = u8::from_str_radix(part, 16).expect("a hex byte");
        }
        mac
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let out = self.script("down");
        if !out.status.success() {
            eprintln!("scripts/netns.sh down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// The ones' complement sum of `data` (RFC 1071), folded, not inverted.
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn tcp_pseudo_sum(ip: &[u8], tcp_len: usize) -> u32 {
    let mut acc = sum16(0, &ip[12..20]);
    acc += 6 + tcp_len as u32;
    acc
}

/// A parsed IPv4 TCP frame.
#[derive(Debug)]
pub struct Tcp<'a> {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub flags: u8,
    pub payload: &'a [u8],
    /// The IPv4 header checksum and the TCP checksum (over the pseudo-header) verify.
    pub checksums_ok: bool,
}

pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
pub const PSH: u8 = 0x08;

pub fn parse_tcp(frame: &[u8]) -> Option<Tcp<'_>> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 6 || total > ip.len() || total < ihl + 20 {
        return None;
    }
    let tcp = &ip[ihl..total];
    let doff = (tcp[12] >> 4) as usize * 4;
    if doff < 20 || doff > tcp.len() {
        return None;
    }
    let ip_ok = sum16(0, &ip[..ihl]) == 0xffff;
    let tcp_ok = sum16(tcp_pseudo_sum(ip, tcp.len()), tcp) == 0xffff;
    Some(Tcp {
        src: SocketAddrV4::new(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]), u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: SocketAddrV4::new(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]), u16::from_be_bytes([tcp[2], tcp[3]])),
        flags: tcp[13],
        payload: &tcp[doff..],
        checksums_ok: ip_ok && tcp_ok,
    })
}

/// Writes an Ethernet + IPv4 + TCP frame (no options) with correct checksums into `buf`;
/// returns its length.
pub fn write_tcp(
    buf: &mut [u8],
    macs: ([u8; 6], [u8; 6]),
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    payload: &[u8],
) -> usize {
    let (src_mac, dst_mac) = macs;
    let len = 14 + 20 + 20 + payload.len();
    let f = &mut buf[..len];
    f.fill(0);
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 20 + payload.len()) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = !(sum16(0, &ip[..20]) as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp_len = 20 + payload.len();
    let pseudo = tcp_pseudo_sum(ip, tcp_len);
    let tcp = &mut ip[20..20 + tcp_len];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    tcp[20..].copy_from_slice(payload);
    let c = !(sum16(pseudo, tcp) as u16);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    len
}

/// Turns a frame around in place: MACs, addresses and ports swapped. The IPv4 and TCP
/// checksums stay valid (a sum does not depend on the order of its terms).
pub fn swap_in_place(f: &mut [u8]) {
    let (dst, rest) = f.split_at_mut(6);
    dst.swap_with_slice(&mut rest[..6]);
    let ip = &mut f[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let (a, b) = ip[12..20].split_at_mut(4);
    a.swap_with_slice(b);
    let (a, b) = ip[ihl..ihl + 4].split_at_mut(2);
    a.swap_with_slice(b);
}

#[test]
fn frames_built_here_check_out() {
    let mut buf = [0u8; 128];
    let src = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 7), 40000);
    let dst = SocketAddrV4::new(SRV_IP, 7700);
    let n = write_tcp(&mut buf, ([1; 6], [2; 6]), src, dst, ACK | PSH, b"hello");
    let t = parse_tcp(&buf[..n]).unwrap();
    assert!(t.checksums_ok);
    assert_eq!((t.src, t.dst, t.payload), (src, dst, &b"hello"[..]));
    swap_in_place(&mut buf[..n]);
    let t = parse_tcp(&buf[..n]).unwrap();
    assert!(t.checksums_ok, "swapping keeps the checksums");
    assert_eq!((t.src, t.dst), (dst, src));
    assert_eq!(&buf[..6], &[1; 6]);
    buf[14 + 20 + 20] ^= 1;
    assert!(!parse_tcp(&buf[..n]).unwrap().checksums_ok);
}
