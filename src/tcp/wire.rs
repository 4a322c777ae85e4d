//! Ethernet II + IPv4 + TCP: parse a received frame, build one to send.
//!
//! Parsing is total: every read is through `get`/`split_at_checked`, so no input can panic it,
//! and every reason to refuse a frame has its own [`WireError`] (counted by the endpoint). What
//! c2m's TCP does not take is refused here rather than half-handled: IP options and fragments (a
//! Linux peer sends neither with DF set and no options asked for), anything but IPv4/TCP.
//! TCP options: MSS is read; every other one is skipped (we never offer window scaling, SACK or
//! timestamps, so a peer that follows RFC 9293 never uses them).
//!
//! Output always carries DF, TTL 64, no IP options, and a TCP header of 20 bytes (24 with the
//! MSS option, sent only with SYN). Checksums are verified on input and produced on output.

use std::net::{Ipv4Addr, SocketAddrV4};

use thiserror::Error;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const TCP_LEN: usize = 20;
/// The MSS option: kind 2, length 4, the value.
pub const MSS_OPTION_LEN: usize = 4;
/// Headers of a frame without options: where the payload starts.
pub const HEADERS_LEN: usize = ETH_LEN + IPV4_LEN + TCP_LEN;
/// Largest frame sent: a 1500-byte IP packet in Ethernet II.
pub const MAX_FRAME: usize = ETH_LEN + 1500;
/// The largest MSS a 1500-byte MTU allows.
pub const MAX_MSS: u16 = (1500 - IPV4_LEN - TCP_LEN) as u16;

const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_TCP: u8 = 6;
const TTL: u8 = 64;
/// IP flags: don't fragment, and the more-fragments bit with the offset mask.
const IP_DF: u16 = 0x4000;
const IP_MF_OFFSET: u16 = 0x3fff;

/// TCP header flag bits.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// Why a frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("frame shorter than its headers")]
    TooShort,
    #[error("not IPv4 (ARP, IPv6, a VLAN tag, ...)")]
    NotIpv4,
    #[error("IPv4 header with options")]
    IpOptions,
    #[error("IPv4 total length disagrees with the frame")]
    IpLength,
    #[error("an IPv4 fragment")]
    Fragment,
    #[error("bad IPv4 header checksum")]
    IpChecksum,
    #[error("not TCP")]
    NotTcp,
    #[error("TCP data offset out of range")]
    DataOffset,
    #[error("bad TCP checksum")]
    TcpChecksum,
    #[error("malformed TCP option")]
    BadOption,
}

impl WireError {
    pub const ALL: [WireError; 10] = [
        WireError::TooShort,
        WireError::NotIpv4,
        WireError::IpOptions,
        WireError::IpLength,
        WireError::Fragment,
        WireError::IpChecksum,
        WireError::NotTcp,
        WireError::DataOffset,
        WireError::TcpChecksum,
        WireError::BadOption,
    ];

    /// Position in [`WireError::ALL`], for a counter array.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Everything in a segment's headers that c2m's TCP reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ip_id: u16,
    pub seq: u32,
    pub ack: u32,
    /// [`flags`] bits.
    pub flags: u8,
    pub window: u16,
    /// The MSS option, if the segment carried one.
    pub mss: Option<u16>,
}

impl Header {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Where the payload starts in a frame built from this header.
    pub fn payload_offset(&self) -> usize {
        HEADERS_LEN + if self.mss.is_some() { MSS_OPTION_LEN } else { 0 }
    }
}

/// A parsed segment: its header and the payload it borrows from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub hdr: Header,
    pub payload: &'a [u8],
}

impl Segment<'_> {
    /// Sequence space the segment occupies: payload, plus one each for SYN and FIN.
    pub fn seq_len(&self) -> u32 {
        self.payload.len() as u32 + self.hdr.has(flags::SYN) as u32 + self.hdr.has(flags::FIN) as u32
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn mac(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

/// One's-complement sum of `data` as big-endian 16-bit words (odd tail padded), added to `acc`.
fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = words.remainder() {
        acc += (*last as u64) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The TCP checksum's pseudo-header sum: addresses, protocol, TCP length.
fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: usize) -> u64 {
    sum(&src.octets(), 0) + sum(&dst.octets(), 0) + PROTO_TCP as u64 + tcp_len as u64
}

/// Parses one frame. Ethernet padding after the IP packet (short frames) is ignored.
pub fn parse(frame: &[u8]) -> Result<Segment<'_>, WireError> {
    let (eth, ip) = frame.split_at_checked(ETH_LEN).ok_or(WireError::TooShort)?;
    if be16(eth, 12) != Some(ETHERTYPE_IPV4) {
        return Err(WireError::NotIpv4);
    }
    let version_ihl = *ip.first().ok_or(WireError::TooShort)?;
    if version_ihl >> 4 != 4 {
        return Err(WireError::NotIpv4);
    }
    if ip.len() < IPV4_LEN {
        return Err(WireError::TooShort);
    }
    match version_ihl & 0x0f {
        5 => {}
        ihl if ihl > 5 => return Err(WireError::IpOptions),
        _ => return Err(WireError::IpLength),
    }
    let total = be16(ip, 2).ok_or(WireError::TooShort)? as usize;
    let ip = ip.get(..total).ok_or(WireError::IpLength)?;
    if total < IPV4_LEN {
        return Err(WireError::IpLength);
    }
    let (iph, tcp) = ip.split_at(IPV4_LEN);
    if fold(sum(iph, 0)) != 0xffff {
        return Err(WireError::IpChecksum);
    }
    if be16(iph, 6).ok_or(WireError::TooShort)? & IP_MF_OFFSET != 0 {
        return Err(WireError::Fragment);
    }
    if iph.get(9) != Some(&PROTO_TCP) {
        return Err(WireError::NotTcp);
    }
    let src_ip = Ipv4Addr::from(be32(iph, 12).ok_or(WireError::TooShort)?);
    let dst_ip = Ipv4Addr::from(be32(iph, 16).ok_or(WireError::TooShort)?);
    if tcp.len() < TCP_LEN {
        return Err(WireError::TooShort);
    }
    let data_offset = (*tcp.get(12).ok_or(WireError::TooShort)? >> 4) as usize * 4;
    if data_offset < TCP_LEN || data_offset > tcp.len() {
        return Err(WireError::DataOffset);
    }
    if fold(sum(tcp, pseudo(src_ip, dst_ip, tcp.len()))) != 0xffff {
        return Err(WireError::TcpChecksum);
    }
    let (tcph, payload) = tcp.split_at(data_offset);
    let hdr_flags = *tcph.get(13).ok_or(WireError::TooShort)?;
    let mss = parse_options(tcph.get(TCP_LEN..).unwrap_or(&[]))?;
    let g = |r: Option<u32>| r.ok_or(WireError::TooShort);
    let hdr = Header {
        src_mac: mac(eth, 6).ok_or(WireError::TooShort)?,
        dst_mac: mac(eth, 0).ok_or(WireError::TooShort)?,
        src: SocketAddrV4::new(src_ip, be16(tcph, 0).ok_or(WireError::TooShort)?),
        dst: SocketAddrV4::new(dst_ip, be16(tcph, 2).ok_or(WireError::TooShort)?),
        ip_id: be16(iph, 4).ok_or(WireError::TooShort)?,
        seq: g(be32(tcph, 4))?,
        ack: g(be32(tcph, 8))?,
        flags: hdr_flags & 0x3f,
        window: be16(tcph, 14).ok_or(WireError::TooShort)?,
        mss,
    };
    Ok(Segment { hdr, payload })
}

/// Walks the options: returns the MSS if one is there; skips every other kind.
fn parse_options(mut opts: &[u8]) -> Result<Option<u16>, WireError> {
    let mut mss = None;
    while let Some((&kind, rest)) = opts.split_first() {
        match kind {
            0 => break,
            1 => opts = rest,
            _ => {
                let len = *rest.first().ok_or(WireError::BadOption)? as usize;
                let body = opts.get(2..len.max(2)).ok_or(WireError::BadOption)?;
                if len < 2 {
                    return Err(WireError::BadOption);
                }
                if kind == 2 {
                    let v: [u8; 2] = body.try_into().map_err(|_| WireError::BadOption)?;
                    mss = Some(u16::from_be_bytes(v));
                }
                opts = opts.get(len..).ok_or(WireError::BadOption)?;
            }
        }
    }
    Ok(mss)
}

/// Writes the headers of `hdr` in front of a payload of `payload_len` bytes already at
/// `buf[hdr.payload_offset()..]`, with both checksums. Returns the frame's length, or `None` if
/// `buf` is too small.
pub fn finish(buf: &mut [u8], hdr: &Header, payload_len: usize) -> Option<usize> {
    let off = hdr.payload_offset();
    let len = off + payload_len;
    let frame = buf.get_mut(..len)?;
    let (eth, rest) = frame.split_at_mut(ETH_LEN);
    eth[0..6].copy_from_slice(&hdr.dst_mac);
    eth[6..12].copy_from_slice(&hdr.src_mac);
    eth[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let (ip, tcp) = rest.split_at_mut(IPV4_LEN);
    let tcp_len = tcp.len();
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&((IPV4_LEN + tcp_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&hdr.ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&IP_DF.to_be_bytes());
    ip[8] = TTL;
    ip[9] = PROTO_TCP;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&hdr.src.ip().octets());
    ip[16..20].copy_from_slice(&hdr.dst.ip().octets());
    let c = !fold(sum(ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    tcp[0..2].copy_from_slice(&hdr.src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&hdr.dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&hdr.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&hdr.ack.to_be_bytes());
    tcp[12] = (((off - ETH_LEN - IPV4_LEN) / 4) as u8) << 4;
    tcp[13] = hdr.flags;
    tcp[14..16].copy_from_slice(&hdr.window.to_be_bytes());
    tcp[16..20].fill(0);
    if let Some(mss) = hdr.mss {
        tcp[20..22].copy_from_slice(&[2, 4]);
        tcp[22..24].copy_from_slice(&mss.to_be_bytes());
    }
    let c = !fold(sum(tcp, pseudo(*hdr.src.ip(), *hdr.dst.ip(), tcp_len)));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

/// Builds a whole frame: copies `payload` in, then [`finish`].
pub fn build(buf: &mut [u8], hdr: &Header, payload: &[u8]) -> Option<usize> {
    let off = hdr.payload_offset();
    buf.get_mut(off..off + payload.len())?.copy_from_slice(payload);
    finish(buf, hdr, payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: "198.18.0.1:7700".parse().unwrap(),
            dst: "198.18.0.2:40000".parse().unwrap(),
            ip_id: 7,
            seq: 1000,
            ack: 2000,
            flags: flags::ACK | flags::PSH,
            window: 65535,
            mss: None,
        }
    }

    fn frame(hdr: &Header, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; MAX_FRAME];
        let n = build(&mut buf, hdr, payload).unwrap();
        buf.truncate(n);
        buf
    }

    /// A known frame: the kernel's SYN from 10.0.0.1:12345 to 10.0.0.2:80 (checksums checked by
    /// hand with the RFC 1071 sum; an independent check that ours is the Internet checksum).
    #[test]
    fn checksums_match_an_independent_computation() {
        let mut h = header();
        h.src = "10.0.0.1:12345".parse().unwrap();
        h.dst = "10.0.0.2:80".parse().unwrap();
        h.ip_id = 0;
        h.seq = 0;
        h.ack = 0;
        h.flags = flags::SYN;
        h.window = 1024;
        let f = frame(&h, &[]);
        // IP header checksum, computed independently over the 10 words.
        let ip = &f[14..34];
        let mut s: u32 = 0;
        for i in (0..20).step_by(2) {
            if i != 10 {
                s += u16::from_be_bytes([ip[i], ip[i + 1]]) as u32;
            }
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        assert_eq!(u16::from_be_bytes([ip[10], ip[11]]), !(s as u16));
        assert_eq!(&ip[6..9], &[0x40, 0, 64], "DF set, TTL 64");
        assert!(parse(&f).is_ok());
    }

    #[test]
    fn roundtrip_with_mss_and_payload() {
        let mut h = header();
        h.flags = flags::SYN | flags::ACK;
        h.mss = Some(1460);
        let f = frame(&h, b"hello");
        let s = parse(&f).unwrap();
        assert_eq!(s.hdr, h);
        assert_eq!(s.payload, b"hello");
        assert_eq!(s.seq_len(), 6);
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut f = frame(&header(), b"x");
        f.resize(60.max(f.len()) + 6, 0xee);
        assert_eq!(parse(&f).unwrap().payload, b"x");
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let good = frame(&header(), b"data");
        let with = |i: usize, v: u8| {
            let mut f = good.clone();
            f[i] = v;
            f
        };
        assert_eq!(parse(&good[..10]), Err(WireError::TooShort));
        assert_eq!(parse(&good[..30]), Err(WireError::TooShort));
        assert_eq!(parse(&with(12, 0x86)), Err(WireError::NotIpv4));
        assert_eq!(parse(&with(14, 0x65)), Err(WireError::NotIpv4));
        assert_eq!(parse(&with(14, 0x46)), Err(WireError::IpOptions));
        assert_eq!(parse(&with(14, 0x44)), Err(WireError::IpLength));
        assert_eq!(parse(&with(17, 0xff)), Err(WireError::IpLength));
        assert_eq!(parse(&with(15, 0x10)), Err(WireError::IpChecksum));
        assert_eq!(parse(&with(34 + 13, 0x11)), Err(WireError::TcpChecksum));
        assert_eq!(parse(&with(34 + 12, 0x40)), Err(WireError::DataOffset));
        assert_eq!(parse(&with(34 + 12, 0xf0)), Err(WireError::DataOffset));
        assert_eq!(parse(&good[..good.len() - 1]), Err(WireError::IpLength));
        // Fragments and non-TCP need a fixed-up IP checksum to reach their check.
        let mut fr = good.clone();
        fr[20] = 0x20; // MF
        refix_ip(&mut fr);
        assert_eq!(parse(&fr), Err(WireError::Fragment));
        let mut udp = good.clone();
        udp[23] = 17;
        refix_ip(&mut udp);
        assert_eq!(parse(&udp), Err(WireError::NotTcp));
    }

    fn refix_ip(f: &mut [u8]) {
        f[24..26].fill(0);
        let c = !fold(sum(&f[14..34], 0));
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }

    /// A frame with the given raw TCP options (a multiple of 4 bytes) and fixed checksums.
    fn with_options(opts: &[u8]) -> Vec<u8> {
        let mut h = header();
        h.flags = flags::SYN;
        let mut f = frame(&h, &[]);
        f.extend_from_slice(opts);
        let tcp_len = f.len() - 34;
        f[16..18].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        refix_ip(&mut f);
        f[34 + 12] = (((20 + opts.len()) / 4) << 4) as u8;
        f[34 + 16..34 + 18].fill(0);
        let c = !fold(sum(&f[34..], pseudo(*h.src.ip(), *h.dst.ip(), tcp_len)));
        f[34 + 16..34 + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn options_other_than_mss_are_skipped() {
        // Linux's SYN: MSS, SACK-permitted, timestamps, NOP, window scale.
        let opts = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
        let s = with_options(&opts);
        assert_eq!(parse(&s).unwrap().hdr.mss, Some(1460));
        assert_eq!(parse(&with_options(&[1, 1, 1, 0])).unwrap().hdr.mss, None);
        assert_eq!(parse(&with_options(&[2, 1, 0, 0])), Err(WireError::BadOption));
        assert_eq!(parse(&with_options(&[8, 10, 0, 0])), Err(WireError::BadOption));
        assert_eq!(parse(&with_options(&[2, 3, 0, 0])), Err(WireError::BadOption));
    }

    fn arb_header() -> impl Strategy<Value = Header> {
        (
            (any::<[u8; 6]>(), any::<[u8; 6]>(), any::<u32>(), any::<u16>(), any::<u32>(), any::<u16>()),
            (any::<u16>(), any::<u32>(), any::<u32>(), 0u8..0x40, any::<u16>(), proptest::option::of(any::<u16>())),
        )
            .prop_map(|((sm, dm, si, sp, di, dp), (id, seq, ack, fl, win, mss))| Header {
                src_mac: sm,
                dst_mac: dm,
                src: SocketAddrV4::new(si.into(), sp),
                dst: SocketAddrV4::new(di.into(), dp),
                ip_id: id,
                seq,
                ack,
                flags: fl,
                window: win,
                mss,
            })
    }

    proptest! {
        #[test]
        fn parse_inverts_build(hdr in arb_header(), payload in proptest::collection::vec(any::<u8>(), 0..1460)) {
            // A SYN's MSS option takes 4 bytes of the largest frame's room.
            prop_assume!(hdr.payload_offset() + payload.len() <= MAX_FRAME);
            let f = frame(&hdr, &payload);
            let s = parse(&f).unwrap();
            prop_assert_eq!(s.hdr, hdr);
            prop_assert_eq!(s.payload, &payload[..]);
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        /// Flipping any one byte of the IP or TCP part is caught (or still parses to a valid
        /// frame: a flip in the padding-free frame always changes a checksummed field).
        #[test]
        fn a_flipped_byte_is_refused(payload in proptest::collection::vec(any::<u8>(), 1..100), at in 14usize..2000, x in 1u8..=255) {
            let mut f = frame(&header(), &payload);
            let at = 14 + at % (f.len() - 14);
            f[at] ^= x;
            prop_assert!(parse(&f).is_err(), "flip at {} by {:#x} accepted", at, x);
        }

        /// Any mutation of a valid frame parses or fails without panicking.
        #[test]
        fn mutated_frames_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..64), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8), cut in any::<usize>()) {
            let mut f = frame(&header(), &payload);
            for (i, v) in edits {
                let n = f.len();
                f[i % n] = v;
            }
            let n = f.len();
            f.truncate(cut % (n + 1));
            let _ = parse(&f);
        }
    }
}
