//! The kernel's own count of one run's TCP connections: an inet_diag dump over netlink of the
//! established sockets, counted by the server's port. sockstat counts the whole box, so on a
//! shared machine other programs' sockets come and go in it; these are the run's alone.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::HostError;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_ESTABLISHED: u32 = 1;
const NLMSG_HEADER: usize = 16;
/// inet_diag_req_v2: family, protocol, ext, pad, states (u32), then the 48-byte socket id.
const REQUEST: usize = 8 + 48;

/// Established TCP sockets on this host (this network namespace) with `server`'s port at
/// either end: one per connection at the server and one at a client on the same host.
pub fn established_on_port(server: SocketAddr) -> Result<Counted, HostError> {
    let sys = |call: &'static str| HostError::Sys { call, source: std::io::Error::last_os_error() };
    // SAFETY: socket has no memory-safety preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(sys("socket(NETLINK_SOCK_DIAG)"));
    }
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let family = if server.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let mut msg = [0u8; NLMSG_HEADER + REQUEST];
    msg[0..4].copy_from_slice(&((NLMSG_HEADER + REQUEST) as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[NLMSG_HEADER] = family as u8;
    msg[NLMSG_HEADER + 1] = libc::IPPROTO_TCP as u8;
    msg[NLMSG_HEADER + 4..NLMSG_HEADER + 8].copy_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    // SAFETY: msg is a live buffer of msg.len() bytes; the kernel reads it only during the call.
    let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent != msg.len() as isize {
        return Err(sys("send(inet_diag request)"));
    }
    let mut counted = Counted::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        // SAFETY: buf is a live, writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(sys("recv(inet_diag dump)"));
        }
        match counted.add_messages(&buf[..n as usize], server.port()) {
            Ok(true) => return Ok(counted),
            Ok(false) if n > 0 => {}
            Ok(false) => return Err(HostError::Missing { path: "inet_diag dump".into(), field: "NLMSG_DONE".into() }),
            Err(errno) => {
                return Err(HostError::Sys {
                    call: "inet_diag dump",
                    source: std::io::Error::from_raw_os_error(errno),
                });
            }
        }
    }
}

/// A dump's count so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// Sockets whose local port is the server's (the server's ends).
    pub server_side: u64,
    /// Sockets whose remote port is the server's (the clients' ends, when they are here).
    pub client_side: u64,
}

impl Counted {
    pub fn total(&self) -> u64 {
        self.server_side + self.client_side
    }

    /// Counts the inet_diag messages in one datagram; `Ok(true)` at NLMSG_DONE, `Err(errno)` on
    /// NLMSG_ERROR. A short or odd message ends the datagram (never a panic).
    fn add_messages(&mut self, mut data: &[u8], port: u16) -> Result<bool, i32> {
        while data.len() >= NLMSG_HEADER {
            let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
            let kind = u16::from_ne_bytes([data[4], data[5]]);
            if len < NLMSG_HEADER || len > data.len() {
                break;
            }
            match kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let errno = data.get(16..20).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return Err(-errno);
                }
                SOCK_DIAG_BY_FAMILY if len >= NLMSG_HEADER + 8 => {
                    // inet_diag_msg: family, state, timer, retrans, then the id: sport, dport
                    // (network order).
                    let body = &data[NLMSG_HEADER..];
                    let sport = u16::from_be_bytes([body[4], body[5]]);
                    let dport = u16::from_be_bytes([body[6], body[7]]);
                    self.server_side += u64::from(sport == port);
                    self.client_side += u64::from(dport == port);
                }
                _ => {}
            }
            data = &data[len.next_multiple_of(4).min(data.len())..];
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn diag_msg(sport: u16, dport: u16) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HEADER + 72];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m[NLMSG_HEADER + 4..NLMSG_HEADER + 6].copy_from_slice(&sport.to_be_bytes());
        m[NLMSG_HEADER + 6..NLMSG_HEADER + 8].copy_from_slice(&dport.to_be_bytes());
        m
    }

    #[test]
    fn counts_by_port_and_survives_junk() {
        let mut data = diag_msg(7000, 50_001);
        data.extend(diag_msg(50_001, 7000));
        data.extend(diag_msg(1, 2));
        let mut c = Counted::default();
        assert_eq!(c.add_messages(&data, 7000), Ok(false));
        assert_eq!(c, Counted { server_side: 1, client_side: 1 });
        let mut done = vec![0u8; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert_eq!(c.add_messages(&done, 7000), Ok(true));
        // Truncated, zero-length and oversized headers end the datagram quietly.
        assert_eq!(c.add_messages(&data[..30], 7000), Ok(false));
        assert_eq!(c.add_messages(&[0u8; 40], 7000), Ok(false));
        assert_eq!(c.add_messages(&[0xff; 40], 7000), Ok(false));
        assert_eq!(c.total(), 2);
    }

    #[test]
    fn counts_this_hosts_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let accepted: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
        let c = established_on_port(addr).unwrap();
        assert_eq!(c, Counted { server_side: 3, client_side: 3 });
        drop((clients, accepted));
    }
}
