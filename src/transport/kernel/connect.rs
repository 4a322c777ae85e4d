//! Active opens: one linked chain of SQEs per connection (socket straight into a fixed-file
//! slot chosen here, options, bind, connect, linked timeout), and what its completions say.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use io_uring::types::{DestinationSlot, Fixed, Timespec};
use io_uring::{opcode, squeue};
use socket2::SockAddr;

use super::{KernelOp, KernelTransport, RecvArm, Sock, flag};
use crate::engine::{Completion, Io};
use crate::stats::TransportStats;
use crate::transport::{Close, ConnId, ConnectError, Handler};

// Socket option values, at static addresses the kernel may read at any time.
static ONE: libc::c_int = 1;
/// Linger 0: a close ends the connection with RST, so no TIME_WAIT holds the source port and
/// the next run can bind it at once.
static LINGER_ZERO: libc::linger = libc::linger { l_onoff: 1, l_linger: 0 };

/// One connect chain in flight: the addresses the kernel reads, and what its steps reported.
struct Pending {
    bind: SockAddr,
    target: SockAddr,
    /// The first error of the chain (negative errno) and the step that had it.
    err: i32,
    step: KernelOp,
    ok: bool,
    timed_out: bool,
    /// Completions still to come (the connect, and its timeout).
    left: u8,
}

/// Records of the connect chains in flight, allocated once (the kernel reads their addresses in
/// place, so they never move), and the chains waiting for room in the submission queue.
pub(super) struct ConnectPool {
    records: Vec<Pending>,
    free: Vec<u32>,
    timeout: Box<Timespec>,
    has_timeout: bool,
    /// Connections whose chain did not fit the SQ yet, in order.
    deferred: VecDeque<ConnId>,
    /// Where the search for a free descriptor starts.
    ring_hint: usize,
}

impl ConnectPool {
    pub(super) fn new(concurrency: usize, timeout: Duration) -> ConnectPool {
        let any = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        let records = (0..concurrency)
            .map(|_| Pending {
                bind: any.clone(),
                target: any.clone(),
                err: 0,
                step: KernelOp::Connect,
                ok: false,
                timed_out: false,
                left: 0,
            })
            .collect();
        ConnectPool {
            records,
            free: (0..concurrency as u32).rev().collect(),
            timeout: Box::new(Timespec::from(timeout)),
            has_timeout: !timeout.is_zero(),
            deferred: VecDeque::new(),
            ring_hint: 0,
        }
    }
}

fn step_name(op: KernelOp) -> &'static str {
    match op {
        KernelOp::Socket => "socket",
        KernelOp::SockOpt => "setsockopt",
        KernelOp::Bind => "bind",
        _ => "connect",
    }
}

impl<H: Handler, S: AsRef<TransportStats>> KernelTransport<H, S> {
    /// A free direct descriptor for a connect, adding a ring when every table is full.
    fn take_file(&mut self, io: &mut Io<KernelOp>) -> Option<(usize, u32)> {
        let rings = self.files.len();
        for i in 0..rings {
            let ring = (self.connects.ring_hint + i) % rings;
            let f = &mut self.files[ring];
            let file = match f.free.pop() {
                Some(file) => file,
                None if f.fresh < f.capacity => {
                    f.fresh += 1;
                    f.fresh - 1
                }
                None => continue,
            };
            self.connects.ring_hint = ring;
            self.file_installed(ring);
            return Some((ring, file));
        }
        if rings >= self.max_rings {
            return None;
        }
        let ring = io.add_ring().ok()?;
        self.ring_added(io, ring);
        self.take_file(io)
    }

    /// Opens `conn` from `from` to `to`. The socket goes straight into a fixed-file slot chosen
    /// here (so the later links can name it) and never enters the fd table.
    pub(super) fn start_connect(&mut self, io: &mut Io<KernelOp>, conn: ConnId, from: SocketAddr, to: SocketAddr) {
        io.open(conn);
        let place = match self.connects.free.pop() {
            Some(record) => match self.take_file(io) {
                Some(place) => Some((record, place)),
                None => {
                    self.connects.free.push(record);
                    None
                }
            },
            None => None,
        };
        let Some((record, (ring, file))) = place else {
            // The owner asked for more chains than it said it would, or every table is full.
            self.socks[conn as usize] = Sock { flags: flag::CONNECTING | flag::TEARDOWN, ..Sock::default() };
            let err = ConnectError::Failed { step: "socket", errno: libc::EMFILE };
            self.handler.connect_failed(&mut self.q, conn, err);
            return io.retire(conn);
        };
        let p = &mut self.connects.records[record as usize];
        p.bind = SockAddr::from(from);
        p.target = SockAddr::from(to);
        p.err = 0;
        p.ok = false;
        p.timed_out = false;
        p.left = 1 + self.connects.has_timeout as u8;
        self.socks[conn as usize] =
            Sock { file, send_len: record, ring: ring as u16, flags: flag::CONNECTING | flag::FILE };
        if !self.connects.deferred.is_empty() || !self.submit_connect(io, conn) {
            self.connects.deferred.push_back(conn);
        }
    }

    /// Chains that found the SQ full go in as it drains.
    pub(super) fn submit_deferred(&mut self, io: &mut Io<KernelOp>) {
        while let Some(&conn) = self.connects.deferred.front() {
            if !self.submit_connect(io, conn) {
                return;
            }
            self.connects.deferred.pop_front();
        }
    }

    /// Queues `conn`'s chain whole; `false` if the SQ has no room for it now.
    fn submit_connect(&mut self, io: &mut Io<KernelOp>, conn: ConnId) -> bool {
        let s = self.socks[conn as usize];
        let (ring, file) = (s.ring as usize, s.file);
        let p = &self.connects.records[s.send_len as usize];
        let link = squeue::Flags::IO_LINK;
        let quiet = link | squeue::Flags::SKIP_SUCCESS;
        let family = if p.target.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
        let token = |op| io.token(ring, op, conn);
        let Ok(slot_target) = DestinationSlot::try_from_slot_target(file) else { return false };
        let mut entries = [
            opcode::Socket::new(family, libc::SOCK_STREAM, 0)
                .file_index(Some(slot_target))
                .build()
                .flags(quiet)
                .user_data(token(KernelOp::Socket)),
            sockopt(file, libc::SOL_SOCKET, libc::SO_REUSEADDR, &ONE).flags(quiet).user_data(token(KernelOp::SockOpt)),
            sockopt(file, libc::SOL_SOCKET, libc::SO_LINGER, &LINGER_ZERO)
                .flags(quiet)
                .user_data(token(KernelOp::SockOpt)),
            sockopt(file, libc::IPPROTO_TCP, libc::TCP_NODELAY, &ONE).flags(quiet).user_data(token(KernelOp::SockOpt)),
            opcode::Bind::new(Fixed(file), p.bind.as_ptr().cast(), p.bind.len())
                .build()
                .flags(quiet)
                .user_data(token(KernelOp::Bind)),
            opcode::Connect::new(Fixed(file), p.target.as_ptr().cast(), p.target.len())
                .build()
                .user_data(token(KernelOp::Connect)),
            opcode::LinkTimeout::new(&*self.connects.timeout).build().user_data(token(KernelOp::ConnectTimeout)),
        ];
        let chain = match self.connects.has_timeout {
            true => {
                entries[5] = entries[5].clone().flags(link);
                &entries[..]
            }
            false => &entries[..6],
        };
        // SAFETY: the entries point at the connect record's addresses (allocated once, never
        // moved, reused only after this chain's last completion), the boxed timeout and static
        // option values: all outlive the chain (see `submit`).
        unsafe { io.submit_chain(ring, conn, chain) }
    }

    pub(super) fn on_connect_step(&mut self, io: &mut Io<KernelOp>, c: Completion<KernelOp>) {
        let conn = c.slot;
        let s = self.socks[conn as usize];
        if !s.has(flag::CONNECTING) {
            return;
        }
        let p = &mut self.connects.records[s.send_len as usize];
        match c.op {
            KernelOp::Connect if c.result >= 0 => p.ok = true,
            KernelOp::ConnectTimeout if c.result == -libc::ETIME => p.timed_out = true,
            op if c.result < 0 && c.result != -libc::ECANCELED && p.err == 0 && op != KernelOp::ConnectTimeout => {
                p.err = c.result;
                p.step = op;
            }
            _ => {}
        }
        if matches!(c.op, KernelOp::Connect | KernelOp::ConnectTimeout) {
            p.left -= 1;
            if p.left == 0 {
                self.connect_done(io, conn);
            }
        }
    }

    /// The whole chain has reported: the connection is open, or it failed and is closed.
    fn connect_done(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        let s = &mut self.socks[conn as usize];
        let record = s.send_len;
        s.send_len = 0;
        s.flags &= !flag::CONNECTING;
        self.connects.free.push(record);
        let p = &self.connects.records[record as usize];
        let close_wanted = s.has(flag::CLOSE_WANTED);
        if p.ok {
            if close_wanted {
                return self.teardown(io, conn, Close::Abort);
            }
            s.flags |= flag::OPEN;
            self.handler.opened(&mut self.q, conn);
            if self.recv != RecvArm::OnDemand {
                self.arm_input(io, conn);
            }
            return;
        }
        let err = if p.timed_out {
            ConnectError::TimedOut
        } else if p.err != 0 {
            ConnectError::Failed { step: step_name(p.step), errno: -p.err }
        } else {
            ConnectError::Failed { step: "connect", errno: libc::ECANCELED }
        };
        self.handler.connect_failed(&mut self.q, conn, err);
        self.teardown(io, conn, Close::Abort);
    }
}

fn sockopt<T>(file: u32, level: libc::c_int, name: libc::c_int, value: &'static T) -> squeue::Entry {
    opcode::SetSockOpt::new(
        Fixed(file),
        level as u32,
        name as u32,
        (value as *const T).cast(),
        std::mem::size_of::<T>() as u32,
    )
    .build()
}
