//! Passive opens: a multishot accept per ring straight into the ring's fixed-file table, rings
//! added as tables fill, the accept-queue watchdog, and the refusal of connections the owner has
//! no room for.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use io_uring::opcode;
use io_uring::types::{CancelBuilder, Fd, Fixed};
use socket2::{Domain, Protocol, Socket, Type};

use super::{KernelOp, KernelTransport, Sock, flag};
use crate::engine::{Completion, Io};
use crate::stats::TransportStats;
use crate::transport::Handler;

/// Per-ring accept state.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct AcceptState {
    armed: bool,
    /// After a failed accept, the tick before which it is not re-armed (no spinning on ENOMEM).
    retry_tick: u32,
    /// Bumped on every arm, carried in the token, so the end of an old accept is not mistaken
    /// for the end of the current one.
    generation: u32,
}

/// A non-blocking TCP listener for one worker: SO_REUSEPORT (each worker has its own, the kernel
/// spreads connections over them), SO_REUSEADDR, and TCP_NODELAY, which accepted sockets inherit
/// (replies are small and must not wait for Nagle).
pub fn listener(addr: SocketAddr, backlog: u32) -> std::io::Result<Socket> {
    let with = |what: &str| {
        let what = format!("{what} {addr}");
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))
        .map_err(with("socket for"))?;
    socket.set_reuse_address(true).map_err(with("SO_REUSEADDR on"))?;
    socket.set_reuse_port(true).map_err(with("SO_REUSEPORT on"))?;
    socket.set_tcp_nodelay(true).map_err(with("TCP_NODELAY on"))?;
    socket.bind(&addr.into()).map_err(with("bind"))?;
    socket.listen(backlog as i32).map_err(with("listen on"))?;
    Ok(socket)
}

/// Refuses `addr` when another socket already listens on it. SO_REUSEPORT lets any process of
/// the same user join a port and silently take a share of its connections, so before binding its
/// own reuseport listeners the server binds once without SO_REUSEPORT: that bind fails with
/// EADDRINUSE exactly when someone listens there (SO_REUSEADDR keeps TIME-WAIT leftovers of an
/// earlier run from counting). Port 0 asks for a fresh port and cannot collide.
///
/// A server killed a moment ago still listens for a while: its rings are torn down after the
/// process is gone (io_uring's exit work), and their accepts hold the listener open until then.
/// A restart must not fail on that, so a port in use is probed again for up to
/// [`PORT_RELEASE_WAIT`] before it is refused.
pub fn ensure_port_free(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    loop {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        match probe.bind(&addr.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "{addr} is already in use by another process (another c2m serve?): stop it, or pick a free \
                         port with --listen (`ss -ltnp 'sport = :{}'` shows who holds it)",
                        addr.port()
                    ),
                ));
            }
            other => return other,
        }
    }
}

/// How long a port held by a listener is probed again before it is refused (see
/// [`ensure_port_free`]).
pub const PORT_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections waiting in a listener's accept queue (TCP_INFO's `tcpi_unacked` on a listener).
pub fn accept_queue_len(listener: BorrowedFd<'_>) -> std::io::Result<u32> {
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: tcp_info is plain integers, so all zeroes is a valid value; `info` is live and
    // writable and `len` says its size: the kernel writes at most `len` bytes into it.
    let (rc, info) = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let rc =
            libc::getsockopt(listener.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len);
        (rc, info)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

impl<H: Handler, S: AsRef<TransportStats>> KernelTransport<H, S> {
    pub(super) fn arm_accept(&mut self, io: &mut Io<KernelOp>, ring: usize) {
        let Some(listen) = &self.listen else { return };
        let fd = listen.fd.as_raw_fd();
        let a = &mut self.accept[ring];
        a.generation = a.generation.wrapping_add(1);
        a.armed = true;
        let generation = a.generation;
        let entry = opcode::AcceptMulti::new(Fd(fd)).allocate_file_index(true).build();
        self.submit(io, ring, KernelOp::Accept, generation, entry);
    }

    fn cancel_accept(&mut self, io: &mut Io<KernelOp>, ring: usize) {
        let a = &mut self.accept[ring];
        if !a.armed {
            return;
        }
        a.armed = false;
        let target = io.token(ring, KernelOp::Accept, a.generation);
        let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(target)).build();
        self.submit(io, ring, KernelOp::AcceptCancel, 0, entry);
    }

    /// Free table slots of `ring`.
    fn files_free(&self, ring: usize) -> u32 {
        let f = &self.files[ring];
        f.capacity - f.in_use
    }

    /// Arms a ring's accept if it is off, accepting has not stopped, no failed accept asks to
    /// wait, and the ring's table has its reserve free. The threshold is the cancel's: with a
    /// higher one, every ring could sit between the two and the worker stop accepting with room
    /// left.
    pub(super) fn maybe_arm_accept(&mut self, io: &mut Io<KernelOp>, ring: usize) {
        let Some(listen) = &self.listen else { return };
        let a = self.accept[ring];
        if !a.armed && self.accepting && self.ticks >= a.retry_tick && self.files_free(ring) >= listen.margin {
            self.arm_accept(io, ring);
        }
    }

    /// Adds a ring when none can accept (each table is down to its reserve) and the worker may
    /// still grow: the kernel's reuseport hash sent this worker more than its share.
    fn grow_if_full(&mut self, io: &mut Io<KernelOp>) {
        if !self.accepting || self.accept.iter().any(|a| a.armed) || io.rings().len() >= self.max_rings {
            return;
        }
        match io.add_ring() {
            Ok(ring) => {
                self.ring_added(io, ring);
                self.arm_accept(io, ring);
            }
            // Counted and tried again at the next tick (`watch_accept_queue`).
            Err(_) => self.stats().accept_errors.inc(),
        }
    }

    pub(super) fn on_accept(&mut self, io: &mut Io<KernelOp>, c: Completion<KernelOp>) {
        let ring = c.ring;
        let current = c.slot == self.accept[ring].generation;
        if current && !c.more() {
            self.accept[ring].armed = false;
        }
        if c.result < 0 {
            if c.result != -libc::ECANCELED {
                self.stats().accept_errors.inc();
                if current && !c.more() {
                    self.accept[ring].retry_tick = self.ticks.wrapping_add(1);
                }
            }
            return;
        }
        let file = c.result as u32;
        self.accepted_since_tick += 1;
        self.file_installed(ring);
        let margin = self.listen.as_ref().map_or(0, |l| l.margin);
        if self.files_free(ring) < margin {
            self.cancel_accept(io, ring);
            self.grow_if_full(io);
        } else {
            // The multishot may have ended (CQ pressure) with this accept.
            self.maybe_arm_accept(io, ring);
        }
        if !self.accepting {
            return self.reject_close(io, ring, file);
        }
        let Some(conn) = self.handler.admit() else {
            // No room: say so, then close. The connection never reaches the owner.
            let refusal = self.handler.refusal();
            let entry = opcode::Send::new(Fixed(file), refusal.as_ptr(), refusal.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build();
            return self.submit(io, ring, KernelOp::RejectSend, file, entry);
        };
        io.open(conn);
        self.socks[conn as usize] = Sock { file, send_len: 0, ring: ring as u16, flags: flag::OPEN | flag::FILE };
        self.handler.opened(&mut self.q, conn);
        self.arm_input(io, conn);
    }

    /// Re-arms an accept if connections wait in the listener's queue and none was accepted for a
    /// whole tick. The rings' accepts wait on the listener exclusively: a wake-up is taken by the
    /// first one only, and if that one was cancelled (its ring full) with the wake-up in hand
    /// while the queue was full, no new connection comes to wake the next one (their SYNs are
    /// dropped). A freshly armed accept drains the queue at once.
    pub(super) fn watch_accept_queue(&mut self, io: &mut Io<KernelOp>) {
        let accepted = std::mem::take(&mut self.accepted_since_tick);
        let Some(listen) = &self.listen else { return };
        if accepted > 0 || !self.accepting || !accept_queue_len(listen.fd.as_fd()).is_ok_and(|n| n > 0) {
            return;
        }
        if let Some(ring) = (0..io.rings().len()).find(|&r| self.accept[r].armed) {
            self.stats().accept_rearms.inc();
            self.cancel_accept(io, ring);
            self.arm_accept(io, ring);
        } else {
            // Every ring is full and an earlier growth failed: try again.
            self.grow_if_full(io);
        }
    }

    pub(super) fn stop_accepting(&mut self, io: &mut Io<KernelOp>) {
        self.accepting = false;
        for ring in 0..self.accept.len() {
            self.cancel_accept(io, ring);
        }
    }

    fn reject_close(&mut self, io: &mut Io<KernelOp>, ring: usize, file: u32) {
        self.submit(io, ring, KernelOp::RejectClose, file, opcode::Close::new(Fixed(file)).build());
        self.closes += 1;
    }

    pub(super) fn on_reject(&mut self, io: &mut Io<KernelOp>, c: Completion<KernelOp>) {
        let (ring, file) = (c.ring, c.slot);
        match c.op {
            KernelOp::RejectSend => {
                let entry = opcode::Shutdown::new(Fixed(file), libc::SHUT_WR).build();
                self.submit(io, ring, KernelOp::RejectShutdown, file, entry);
            }
            KernelOp::RejectShutdown => self.reject_close(io, ring, file),
            _ => {
                self.closes -= 1;
                self.file_released(io, ring, file);
            }
        }
    }

    pub(super) fn file_installed(&mut self, ring: usize) {
        self.files[ring].in_use += 1;
        self.stats().fixed_files_in_use.add(1);
    }

    /// Direct descriptor `file` of `ring` was closed: one more free slot in its table (the
    /// kernel picks accepts' slots; connects pick from the free list).
    pub(super) fn file_released(&mut self, io: &mut Io<KernelOp>, ring: usize, file: u32) {
        let f = &mut self.files[ring];
        f.in_use -= 1;
        if self.listen.is_none() {
            f.free.push(file);
        }
        self.stats().fixed_files_in_use.sub(1);
        self.maybe_arm_accept(io, ring);
    }
}
