//! A network interface as the xdp layer needs it: index, MAC address, queue counts, and the
//! offloads that decide whether frames reach an AF_XDP socket whole (see [`Offloads`]). Looked
//! up in the calling thread's network namespace (see `netns.rs`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::{XdpError, sys, syscall};

// Legacy SIOCETHTOOL commands (uapi/linux/ethtool.h): each reads one feature as a u32.
const ETHTOOL_GRXCSUM: u32 = 0x14;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_GGSO: u32 = 0x23;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_GCHANNELS: u32 = 0x3c;

#[repr(C)]
#[derive(Default)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    name: String,
    index: u32,
    mac: [u8; 6],
    rx_queues: u32,
    tx_queues: u32,
}

/// The offloads that matter to an AF_XDP data plane. With TX checksum offload on, a kernel
/// socket's frames cross a veth with only the pseudo-header sum in the TCP checksum field
/// (CHECKSUM_PARTIAL): an XSK would read a wrong checksum. TSO and GSO hand over 64 KiB
/// super-frames, GRO builds them on receive (generic XDP runs after GRO). `scripts/netns.sh`
/// turns all of these off; with RX checksum offload off as well, the kernel verifies the checksums
/// of the frames c2m's own TCP sends instead of trusting them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offloads {
    pub rx_checksum: bool,
    pub tx_checksum: bool,
    pub tso: bool,
    pub gso: bool,
    pub gro: bool,
}

impl Offloads {
    /// True when frames from kernel sockets reach an XSK one segment each, checksummed in full.
    pub fn frames_whole(&self) -> bool {
        !(self.tx_checksum || self.tso || self.gso || self.gro)
    }
}

fn ioctl_socket() -> Result<OwnedFd, XdpError> {
    sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(|e| syscall("socket(AF_INET) for interface ioctls", e))
}

fn ethtool<T>(sock: &OwnedFd, name: &str, cmd: &mut T) -> io::Result<()> {
    let mut req = sys::ifreq(name)?;
    req.ifr_ifru.ifru_data = cmd as *mut T as *mut libc::c_char;
    sys::ioctl_ifreq(sock.as_fd(), libc::SIOCETHTOOL, &mut req)
}

impl Interface {
    /// Looks `name` up in the calling thread's network namespace.
    pub fn by_name(name: &str) -> Result<Interface, XdpError> {
        let cname = CString::new(name).map_err(|_| XdpError::NoInterface(name.to_string()))?;
        let index = sys::if_index(&cname).map_err(|_| XdpError::NoInterface(name.to_string()))?;
        let sock = ioctl_socket()?;
        let mut req = sys::ifreq(name).map_err(|e| syscall("ifreq", e))?;
        sys::ioctl_ifreq(sock.as_fd(), libc::SIOCGIFHWADDR, &mut req).map_err(|e| syscall("SIOCGIFHWADDR", e))?;
        // SAFETY: SIOCGIFHWADDR filled the union's hwaddr member.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *d = *s as u8;
        }
        // Drivers without channel reporting (lo) have one queue each way.
        let mut ch = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
        let (rx_queues, tx_queues) = match ethtool(&sock, name, &mut ch) {
            Ok(()) => ((ch.rx_count + ch.combined_count).max(1), (ch.tx_count + ch.combined_count).max(1)),
            Err(_) => (1, 1),
        };
        Ok(Interface { name: name.to_string(), index, mac, rx_queues, tx_queues })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn index(&self) -> u32 {
        self.index
    }
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
    /// RX queues: one AF_XDP socket per queue receives all the steered frames.
    pub fn rx_queues(&self) -> u32 {
        self.rx_queues
    }
    pub fn tx_queues(&self) -> u32 {
        self.tx_queues
    }

    /// The interface's offloads now (SIOCETHTOOL, in the calling thread's namespace).
    pub fn offloads(&self) -> Result<Offloads, XdpError> {
        let sock = ioctl_socket()?;
        let get = |cmd: u32, what: &'static str| {
            let mut v = EthtoolValue { cmd, data: 0 };
            ethtool(&sock, &self.name, &mut v).map(|()| v.data != 0).map_err(|e| syscall(what, e))
        };
        Ok(Offloads {
            rx_checksum: get(ETHTOOL_GRXCSUM, "ETHTOOL_GRXCSUM")?,
            tx_checksum: get(ETHTOOL_GTXCSUM, "ETHTOOL_GTXCSUM")?,
            tso: get(ETHTOOL_GTSO, "ETHTOOL_GTSO")?,
            gso: get(ETHTOOL_GGSO, "ETHTOOL_GGSO")?,
            gro: get(ETHTOOL_GGRO, "ETHTOOL_GGRO")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_with_one_queue() {
        let lo = Interface::by_name("lo").expect("every namespace has lo");
        assert_eq!(lo.mac(), [0; 6]);
        assert!(lo.index() >= 1);
        assert_eq!(lo.rx_queues(), 1);
        lo.offloads().expect("lo answers the legacy ethtool feature reads");
    }

    #[test]
    fn a_missing_interface_is_named() {
        let e = Interface::by_name("c2m-nosuch0").unwrap_err();
        assert!(e.to_string().contains("c2m-nosuch0"), "{e}");
        assert!(Interface::by_name("a-name-too-long-for-ifnamsiz").is_err());
    }

    #[test]
    fn whole_frames_need_every_offload_off() {
        let off = Offloads { rx_checksum: true, tx_checksum: false, tso: false, gso: false, gro: false };
        assert!(off.frames_whole(), "RX checksum offload does not change what an XSK receives");
        assert!(!Offloads { tx_checksum: true, ..off }.frames_whole());
        assert!(!Offloads { gro: true, ..off }.frames_whole());
    }
}

/// The MAC of `ip`, a neighbour on this thread's network namespace's links, as the kernel's ARP
/// resolves it: a UDP datagram to its discard port makes the kernel ask, and /proc/net/arp then
/// holds the answer. A data plane that opens connections itself (c2m's TCP from an xdp load
/// generator) needs it for its first SYN; the kernel still answers ARP on the interface, since
/// the steering program passes everything but the matching TCP frames.
pub fn neighbour_mac(ip: std::net::Ipv4Addr, wait: std::time::Duration) -> Result<[u8; 6], XdpError> {
    let deadline = std::time::Instant::now() + wait;
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| syscall("bind (ARP probe)", e))?;
    loop {
        if let Some(mac) = arp_entry(ip) {
            return Ok(mac);
        }
        // Best effort: the datagram itself is dropped by the peer; the ARP request it needs is
        // what matters. Sent again each round in case the first request was lost.
        let _ = probe.send_to(&[0], (ip, 9));
        if std::time::Instant::now() >= deadline {
            return Err(XdpError::Config(format!(
                "no ARP answer from {ip} within {wait:?}: is it on a link of this namespace (ip route get {ip})?"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A complete entry for `ip` in /proc/net/arp.
fn arp_entry(ip: std::net::Ipv4Addr) -> Option<[u8; 6]> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp(&table, ip)
}

/// `IP address  HW type  Flags  HW address  Mask  Device`; flag 0x2 means complete.
fn parse_arp(table: &str, ip: std::net::Ipv4Addr) -> Option<[u8; 6]> {
    let want = ip.to_string();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let complete = f.get(2).and_then(|x| u32::from_str_radix(x.trim_start_matches("0x"), 16).ok())? & 0x2 != 0;
        if f.first() != Some(&want.as_str()) || !complete {
            return None;
        }
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = f.get(3)?.split(':').collect();
        if parts.len() != 6 {
            return None;
        }
        for (byte, part) in mac.iter_mut().zip(parts) {
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        Some(mac)
    })
}

#[cfg(test)]
mod arp_tests {
    use super::parse_arp;

    #[test]
    fn a_complete_entry_gives_its_mac_and_an_incomplete_one_nothing() {
        let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
                     198.18.0.1       0x1         0x2         02:aa:bb:cc:dd:01     *        c2m-c0\n\
                     198.18.0.9       0x1         0x0         00:00:00:00:00:00     *        c2m-c0\n";
        assert_eq!(parse_arp(table, "198.18.0.1".parse().unwrap()), Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 1]));
        assert_eq!(parse_arp(table, "198.18.0.9".parse().unwrap()), None);
        assert_eq!(parse_arp(table, "198.18.0.2".parse().unwrap()), None);
    }
}
