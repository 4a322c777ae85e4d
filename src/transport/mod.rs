//! The seam between a data plane and the connections' owner.
//!
//! A *data plane* (a transport) moves bytes for many connections: the kernel one with io_uring
//! over kernel TCP sockets ([`kernel`]); the xdp one with c2m's own TCP over AF_XDP. The
//! connections' *owner* (a [`Handler`]) is the session logic: the server's protocol, chat routing
//! and backpressure, or the load generator's schedules and ledger. The owner is written once,
//! against this seam, and runs over either data plane unchanged.
//!
//! What a transport tells the owner: a connection was *opened* (accepted, or connected), *bytes
//! came in*, *bytes went out* (room to send), input *ended*, the connection *failed*, and that it
//! has *let go* of the connection. What the owner asks of the transport ([`Requests`]): *send*
//! what is queued, *resume* input, *close* gracefully or abortively, *connect*, *stop accepting*.
//! Pausing input needs no request: consuming fewer bytes than offered pauses the connection, and
//! the transport offers the rest again after a `Resume`.
//!
//! Connections are named by the owner's slot index ([`ConnId`]): the owner allocates it when a
//! connection is admitted (or before it asks to connect) and may reuse it after
//! [`Handler::released`]. The transport keeps its own per-connection state in a dense array
//! indexed the same way.
//!
//! Output stays in the owner's memory: the transport never copies it into a buffer of its own.
//! [`Handler::output`] gives the bytes at the head of a connection's output queue and pins them
//! (the kernel reads them in place during a send); they stay where they are until
//! [`Handler::sent`] says how many went out. A transport that must keep bytes until they are
//! acknowledged (c2m's TCP) reads them with [`Handler::peek_output`], which pins nothing, and
//! calls `sent` when the peer acknowledges them.

mod args;
mod held;
pub mod kernel;
pub mod xdp;

pub use args::{DataPlane, DataPlaneArgs, DataPlaneName, XdpSettings};

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A connection, named by its owner's slot index.
pub type ConnId = u32;

/// How a connection is to be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Send what is queued, then FIN; input is read and dropped until the peer closes too (so
    /// the final close does not meet unread data, which would turn it into an RST). The owner
    /// bounds the wait with a close of its own.
    Graceful,
    /// FIN after what was sent, and let go now.
    Now,
    /// Let go at once, with an RST where the data plane can (the load generator's sockets have
    /// SO_LINGER 0), so no TIME_WAIT holds the source port.
    Abort,
}

/// Why a data plane ended a connection on its own (the owner then counts it; the transport is
/// already closing it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A receive failed with this errno.
    Recv(i32),
    /// A send failed with this errno.
    Send(i32),
    /// The transport cannot hold more of a paused connection's input.
    InputOverflow,
}

impl Failure {
    /// The peer reset the connection or went away under a send, rather than a local error.
    pub fn is_peer_gone(self) -> bool {
        matches!(self, Failure::Recv(e) | Failure::Send(e) if e == libc::ECONNRESET || e == libc::EPIPE)
    }
}

impl fmt::Display for Failure {
    /// "recv ECONNRESET", "send EPIPE", "input overflow".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Failure::Recv(e) => write!(f, "recv {:?}", nix::errno::Errno::from_raw(e)),
            Failure::Send(e) => write!(f, "send {:?}", nix::errno::Errno::from_raw(e)),
            Failure::InputOverflow => f.write_str("input overflow"),
        }
    }
}

/// Why an active open failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    TimedOut,
    /// `step` ("socket", "bind", "connect", ...) failed with `errno`.
    Failed {
        step: &'static str,
        errno: i32,
    },
}

impl fmt::Display for ConnectError {
    /// The error kinds a load report counts: "connect timeout", "connect ECONNREFUSED", ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConnectError::TimedOut => f.write_str("connect timeout"),
            ConnectError::Failed { step, errno } => write!(f, "{step} {:?}", nix::errno::Errno::from_raw(errno)),
        }
    }
}

/// What the owner asks of the transport, in order; the transport carries them out after each
/// call into the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// New output is queued on the connection.
    Send(ConnId),
    /// Input may flow again, starting with what was left unconsumed.
    Resume(ConnId),
    Close(ConnId, Close),
    /// Open `conn` from `from` to `to` (an active open; the answer is `opened` or
    /// `connect_failed`).
    Connect {
        conn: ConnId,
        from: SocketAddr,
        to: SocketAddr,
    },
    /// Accept no more connections (a server that drains).
    StopAccepting,
    /// Wake worker `n` of the pool (it hears `Handler::wake`): something was sent to it.
    Wake(usize),
}

impl Request {
    /// The connection a request is about, if any.
    pub fn conn(&self) -> Option<ConnId> {
        match *self {
            Request::Send(c) | Request::Resume(c) | Request::Close(c, _) | Request::Connect { conn: c, .. } => Some(c),
            Request::StopAccepting | Request::Wake(_) => None,
        }
    }
}

/// The owner's requests, collected during a call and carried out after it. Reused, so steady
/// state allocates nothing.
#[derive(Debug, Default)]
pub struct Requests {
    list: Vec<Request>,
}

impl Requests {
    pub fn send(&mut self, conn: ConnId) {
        self.list.push(Request::Send(conn));
    }

    pub fn resume(&mut self, conn: ConnId) {
        self.list.push(Request::Resume(conn));
    }

    pub fn close(&mut self, conn: ConnId, how: Close) {
        self.list.push(Request::Close(conn, how));
    }

    pub fn connect(&mut self, conn: ConnId, from: SocketAddr, to: SocketAddr) {
        self.list.push(Request::Connect { conn, from, to });
    }

    pub fn stop_accepting(&mut self) {
        self.list.push(Request::StopAccepting);
    }

    pub fn wake(&mut self, worker: usize) {
        self.list.push(Request::Wake(worker));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Drops what was asked for `conn` so far: it was released, and its slot may be given to a
    /// new connection before these requests are carried out (an old session's close would end
    /// the new one). What is asked after this is for whoever holds the slot then.
    pub fn forget(&mut self, conn: ConnId) {
        self.list.retain(|r| r.conn() != Some(conn));
    }

    /// Takes the requests made so far, in order.
    pub fn take(&mut self, into: &mut Vec<Request>) {
        into.append(&mut self.list);
    }
}

/// How often the owner wants its tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickPlan {
    /// Every period, from the start.
    Every(Duration),
    /// Once at this CLOCK_MONOTONIC instant; each tick returns the next one.
    At(Duration),
}

/// The connections' owner: the session logic of the server or of the load generator.
pub trait Handler {
    /// Before anything else; says how the owner wants to be ticked.
    fn start(&mut self, q: &mut Requests) -> TickPlan;

    /// A connection arrived (passive open): its slot, or `None` to refuse it.
    fn admit(&mut self) -> Option<ConnId>;
    /// What a refused connection is told before it is closed. The bytes stay valid as long as
    /// the owner lives (the kernel reads them in place).
    fn refusal(&self) -> &[u8];

    /// The connection is open: accepted (after `admit`) or connected (after a `Connect`).
    fn opened(&mut self, q: &mut Requests, conn: ConnId);
    /// An active open failed; `released` follows once the transport has let go.
    fn connect_failed(&mut self, q: &mut Requests, conn: ConnId, err: ConnectError);

    /// Input for the connection. Returns how many bytes were consumed; fewer than all pauses
    /// its input: the transport keeps the rest and offers it again after a `Resume`.
    fn input(&mut self, q: &mut Requests, conn: ConnId, data: &[u8]) -> usize;
    /// The peer sends nothing more (its FIN, after all its data).
    fn input_ended(&mut self, q: &mut Requests, conn: ConnId);
    /// Whether the connection wants a receive armed now (consulted only by transports that arm
    /// receives on demand, to spare the kernel memory of an armed receive on idle connections).
    fn wants_input(&self, _conn: ConnId) -> bool {
        true
    }

    /// The bytes to send next, from the head of the output queue, pinned in place until `sent`
    /// (the transport calls this only to send them).
    fn output(&mut self, conn: ConnId) -> &[u8];
    /// Output bytes after the first `skip`, a contiguous piece (call again with a larger skip
    /// for more); pins nothing.
    fn peek_output(&self, conn: ConnId, skip: usize) -> &[u8];
    /// Bytes queued for output (unsent and unacknowledged ones together).
    fn output_len(&self, conn: ConnId) -> usize;
    /// `n` bytes from the head of the output queue are done (sent, or acknowledged).
    fn sent(&mut self, q: &mut Requests, conn: ConnId, n: usize);

    /// The connection broke; the transport is closing it.
    fn failed(&mut self, q: &mut Requests, conn: ConnId, why: Failure);
    /// The transport has let go of the connection: nothing refers to its slot any more, and
    /// what was asked for it and not yet carried out is dropped (the slot may be given to a new
    /// connection before that). Never reuses the slot within this call.
    fn released(&mut self, q: &mut Requests, conn: ConnId);

    /// The tick asked for in the [`TickPlan`]; returns the next instant for `TickPlan::At`.
    fn tick(&mut self, q: &mut Requests) -> Option<Duration>;
    /// Another worker woke this one (see `engine::Io::wake`).
    fn wake(&mut self, _q: &mut Requests) {}
    /// After every round of completions.
    fn after_batch(&mut self, _q: &mut Requests) {}
    /// The worker stops once this says so.
    fn done(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_connection_s_requests_are_dropped_and_later_ones_kept() {
        let mut q = Requests::default();
        q.send(3);
        q.close(7, Close::Now);
        q.wake(1);
        q.resume(7);
        q.send(4);
        // Connection 7 is released; then its slot is given to a new connection, which asks too.
        q.forget(7);
        q.send(7);
        let mut out = Vec::new();
        q.take(&mut out);
        assert_eq!(out, [Request::Send(3), Request::Wake(1), Request::Send(4), Request::Send(7)]);
    }
}
