//! Opening connections: one linked chain of SQEs per connection (socket into a fixed slot,
//! options, bind, connect, linked timeout), and what its completions say.

use bytemuck::Zeroable;
use io_uring::types::{DestinationSlot, Fixed};
use io_uring::{opcode, squeue};
use nix::errno::Errno;

use super::{LINGER_ZERO, LoadWorker, ONE, record};
use crate::engine::{Op, RingSet};
use crate::load::conn::{Conn, flag, state};
use crate::proto::{self, Frame};

/// The steps of the connect chain, for error messages and tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Step {
    Socket = Op::FIRST_USER,
    Option,
    Bind,
    Connect,
    Timeout,
}

impl Step {
    pub(super) fn from_op(op: u8) -> Option<Step> {
        [Step::Socket, Step::Option, Step::Bind, Step::Connect, Step::Timeout].into_iter().find(|s| *s as u8 == op)
    }

    fn name(self) -> &'static str {
        match self {
            Step::Socket => "socket",
            Step::Option => "setsockopt",
            Step::Bind => "bind",
            Step::Connect | Step::Timeout => "connect",
        }
    }
}

impl LoadWorker {
    /// Starts the connects that are due, within the concurrency bound.
    pub(super) fn start_due_connects(&mut self, rings: &mut RingSet, now_ns: u64) {
        while self.next < self.total && self.connecting < self.concurrency {
            // Unpaced connects have no schedule: each is due when it is issued.
            let due = match self.cfg.connect_rate > 0.0 {
                true => self.cfg.connect_due(self.id, self.next).as_nanos() as u64,
                false => now_ns,
            };
            if due > now_ns || !self.start_connect(rings, due, now_ns) {
                break;
            }
        }
    }

    /// Makes, configures, binds and connects one socket with a chain of linked SQEs. The socket
    /// goes straight into a fixed-file slot chosen here (so later links can name it) and never
    /// enters the fd table.
    /// Returns `false` when the ring's SQ had no room for the chain (nothing was started).
    pub(super) fn start_connect(&mut self, rings: &mut RingSet, due_ns: u64, now_ns: u64) -> bool {
        // Slots are handed out in order and never freed, so the next slot is `next`.
        let (ring, file) = self.place(self.next as u32);
        let Some(slot) = self.slab.alloc() else { return false };
        debug_assert_eq!(slot as u64, self.next);
        let k = self.next;
        self.next += 1;
        self.connecting += 1;
        let g = k * self.cfg.workers as u64 + self.id as u64;
        let source = self.cfg.ports.source_of(g).expect("validated: the port plan covers every connection");
        let bind = socket2::SockAddr::from(source);
        let with_timeout = !self.cfg.connect_timeout.is_zero();
        let c = self.slab.header_mut(slot);
        c.s.state = state::CONNECTING;
        c.s.due_ns = due_ns;
        c.s.t_ns = now_ns;
        c.s.inflight = 1 + with_timeout as u8;
        // The bind address waits in the (still unused) out area until the kernel has read it.
        // SAFETY: `as_ptr` points at `len` initialised bytes of a sockaddr, and a sockaddr_in6
        // (28 bytes) fits the 80-byte out area.
        let bind_bytes = unsafe { std::slice::from_raw_parts(bind.as_ptr() as *const u8, bind.len() as usize) };
        c.out[..bind_bytes.len()].copy_from_slice(bind_bytes);
        let (bind_ptr, bind_len) = (c.out.as_ptr() as *const libc::sockaddr, bind.len());
        let link = squeue::Flags::IO_LINK;
        let quiet = link | squeue::Flags::SKIP_SUCCESS;
        let family = if self.cfg.target.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
        let slot_target = DestinationSlot::try_from_slot_target(file).expect("file index below the table size");
        let mut entries = vec![
            opcode::Socket::new(family, libc::SOCK_STREAM, 0)
                .file_index(Some(slot_target))
                .build()
                .flags(quiet)
                .user_data(self.token(Step::Socket as u8, slot)),
        ];
        for (level, name, value, len) in [
            (libc::SOL_SOCKET, libc::SO_REUSEADDR, &ONE as *const _ as *const libc::c_void, 4),
            (
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &LINGER_ZERO as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as u32,
            ),
            (libc::IPPROTO_TCP, libc::TCP_NODELAY, &ONE as *const _ as *const libc::c_void, 4),
        ] {
            entries.push(
                opcode::SetSockOpt::new(Fixed(file), level as u32, name as u32, value, len)
                    .build()
                    .flags(quiet)
                    .user_data(self.token(Step::Option as u8, slot)),
            );
        }
        entries.push(
            opcode::Bind::new(Fixed(file), bind_ptr, bind_len)
                .build()
                .flags(quiet)
                .user_data(self.token(Step::Bind as u8, slot)),
        );
        let connect =
            opcode::Connect::new(Fixed(file), self.target.as_ptr() as *const libc::sockaddr, self.target.len())
                .build()
                .user_data(self.token(Step::Connect as u8, slot));
        if with_timeout {
            entries.push(connect.flags(link));
            entries.push(
                opcode::LinkTimeout::new(&*self.connect_timeout)
                    .build()
                    .user_data(self.token(Step::Timeout as u8, slot)),
            );
        } else {
            entries.push(connect);
        }
        // SAFETY: as in `push`: the entries point at the connection's header (the bind address),
        // the boxed target and timeout, and static option values, all of which outlive the chain.
        if unsafe { rings.rings[ring].push_chain(&entries) } {
            return true;
        }
        // No room: give the slot back untouched and try at a later tick.
        let c = self.slab.header_mut(slot);
        *c = Conn::zeroed();
        self.slab.free(slot);
        self.next -= 1;
        self.connecting -= 1;
        false
    }

    pub(super) fn on_connect_step(&mut self, rings: &mut RingSet, step: Step, slot: u32, res: i32) {
        let c = self.slab.header_mut(slot);
        if c.s.state != state::CONNECTING {
            return;
        }
        match step {
            Step::Connect if res >= 0 => c.s.flags |= flag::CONNECT_OK,
            Step::Timeout if res == -libc::ETIME => c.s.flags |= flag::TIMED_OUT,
            _ if res < 0 && res != -libc::ECANCELED && c.s.err == 0 && step != Step::Timeout => {
                c.s.err = res;
                c.s.err_step = step as u8;
            }
            _ => {}
        }
        if matches!(step, Step::Connect | Step::Timeout) {
            c.s.inflight -= 1;
            if c.s.inflight == 0 {
                self.connect_done(rings, slot);
            }
        }
    }

    /// The whole connect chain has reported: log in, or count the failure and close.
    pub(super) fn connect_done(&mut self, rings: &mut RingSet, slot: u32) {
        self.connecting -= 1;
        let now = self.now_ns();
        let c = *self.slab.header(slot);
        if c.s.has(flag::CONNECT_OK) {
            self.stats.connected.inc();
            record(&mut self.hist.connect, now - c.s.t_ns);
            record(&mut self.hist.connect_corrected, now.saturating_sub(c.s.due_ns));
            record(&mut self.interval_connect, now - c.s.t_ns);
            if c.s.has(flag::CLOSE_WANTED) {
                return self.close(rings, slot);
            }
            self.login(rings, slot, now);
            return;
        }
        let kind = if c.s.has(flag::TIMED_OUT) {
            "connect timeout".to_string()
        } else if c.s.err != 0 {
            let step = Step::from_op(c.s.err_step).map(Step::name).unwrap_or("connect");
            format!("{step} {:?}", Errno::from_raw(-c.s.err))
        } else {
            "connect ECANCELED".to_string()
        };
        self.error(kind);
        self.stats.failed.inc();
        self.close(rings, slot);
    }

    pub(super) fn login(&mut self, rings: &mut RingSet, slot: u32, now: u64) {
        let g = self.global(slot);
        let hello = Frame::Hello { user_id: self.cfg.first_user + g, client_time_ns: now };
        let timeout = self.cfg.connect_timeout;
        let (c, out) = self.out_area(slot);
        c.state = state::HELLO_SENT;
        c.t_ns = now;
        c.out_len = proto::encode(&hello, out) as u16;
        self.arm_recv(rings, slot);
        self.flush(rings, slot);
        if !timeout.is_zero() {
            // WELCOME must come within the connect timeout too.
            self.wheel.schedule(slot, self.tick_of(now + timeout.as_nanos() as u64));
        }
    }

    pub(super) fn global(&self, slot: u32) -> u64 {
        // Slots are handed out in order, so slot k is this worker's k-th connection.
        slot as u64 * self.cfg.workers as u64 + self.id as u64
    }
}
