//! One load connection's state: a 128-byte `Pod` header in a `SessionSlab`, plus the pure
//! parts of its life (reassembling replies into frames, staging messages) that do no I/O and
//! are unit-tested here.
//!
//! A load slot belongs to one client for the whole run. With `--reconnect` or `--churn` the
//! client opens a new connection on the same slot once the data plane has let go of the old
//! one (`Handler::released`), so the transport never sees two connections on one slot.

use bytemuck::{Pod, Zeroable};

use crate::proto::{self, Frame};

pub mod state {
    /// Never started.
    pub const FREE: u8 = 0;
    /// The connect is under way (the data plane answers `opened` or `connect_failed`).
    pub const CONNECTING: u8 = 1;
    /// Connected, HELLO sent, waiting for WELCOME.
    pub const HELLO_SENT: u8 = 2;
    pub const LOGGED_IN: u8 = 3;
    /// Asked to close; the data plane has not let go yet.
    pub const CLOSING: u8 = 4;
    /// Closed; the data plane has let go.
    pub const DONE: u8 = 5;
    /// Closed and let go; opens again when its backoff (or churned time away) is over.
    pub const WAITING: u8 = 6;
}

pub mod flag {
    /// Churn picked it: no new messages; it says BYE once nothing is outstanding.
    pub const LEAVING: u8 = 1;
    /// A send is in flight (one at a time): its bytes stay at the front of the out area.
    pub const SENDING: u8 = 2;
    /// Still counted among the connects in flight.
    pub const CONNECT_PENDING: u8 = 4;
    /// Input left unconsumed (too many RECEIPTs owed): resumed once they drain.
    pub const INPUT_PAUSED: u8 = 8;
    /// Opens again once released (`--reconnect` after a loss, or churned).
    pub const COMEBACK: u8 = 16;
    /// Counted as logged in (so its loss is counted once).
    pub const COUNTED_UP: u8 = 32;
    /// Has logged in before: its next login is a relogin.
    pub const EVER_UP: u8 = 64;
    /// Left by churn (BYE): its close is graceful, and it comes back after its time away.
    pub const CHURNED: u8 = 128;
}

/// What the run has seen of a connection, once each.
pub mod mark {
    /// A reply (PONG, ECHO_REPLY, ACK, NACK) arrived in the message phase.
    pub const ANSWERED_IN_MESSAGES: u8 = 1;
}

/// Bytes of outgoing data kept in the header: a HELLO or up to four PINGs, so a ping
/// connection never touches its slot.
pub const INLINE_OUT: usize = 80;

/// A connection's header: its state, and its inline out area apart so both can be borrowed
/// at once.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct Conn {
    pub s: ConnState,
    /// The out area of ping and idle connections (echo and chat use the slot).
    pub out: [u8; INLINE_OUT],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct ConnState {
    pub state: u8,
    pub flags: u8,
    /// What the run has seen of it ([`mark`]).
    pub marks: u8,
    pub _pad0: [u8; 5],
    /// Bytes of a partial incoming frame kept at the start of the slot.
    pub partial_len: u16,
    /// Bytes of the send in flight, from the start of the out area.
    pub send_len: u16,
    /// Bytes staged in the out area, the send in flight included.
    pub out_len: u16,
    /// Reconnects since its last login (the backoff's exponent).
    pub attempts: u16,
    /// While connecting: when the connect was scheduled. Logged in: when the next message is
    /// due. In nanoseconds since the load started.
    pub due_ns: u64,
    /// When the connect was issued, then when HELLO was sent.
    pub t_ns: u64,
    /// Messages sent but not answered.
    pub outstanding: u32,
    /// Chat: RECEIPTs owed for DELIVERs that wait for room in the out area.
    pub receipts_owed: u32,
    /// Chat: the last msg_id this connection sent (its SENDs are numbered 1, 2, ...).
    pub msg_seq: u64,
}

const _: () = assert!(std::mem::size_of::<Conn>() == 128);

impl ConnState {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// Writes a timed message frame (PING, or ECHO of `len` bytes) into `out`: its payload starts
/// with the time it is handed to the kernel and the time it was scheduled, which the server
/// sends back unchanged.
pub fn write_message(out: &mut [u8], echo: bool, len: usize, sent_ns: u64, due_ns: u64) {
    out[..len].fill(0);
    let kind = if echo { proto::Kind::Echo } else { proto::Kind::Ping };
    proto::write_header(out, kind, len as u16);
    out[4..12].copy_from_slice(&sent_ns.to_le_bytes());
    out[12..20].copy_from_slice(&due_ns.to_le_bytes());
}

/// The two timestamps a PONG or ECHO_REPLY carries back, if it carries them.
pub fn reply_times(frame: &Frame<'_>) -> Option<(u64, u64)> {
    match *frame {
        Frame::Pong { seq, t_ns } => Some((seq, t_ns)),
        Frame::EchoReply { data } if data.len() >= 16 => {
            Some((u64::from_le_bytes(data[0..8].try_into().ok()?), u64::from_le_bytes(data[8..16].try_into().ok()?)))
        }
        _ => None,
    }
}

/// After a send of `n` bytes completed: drops them from the out area (a short send leaves
/// the rest at the front, to go next).
pub fn sent(conn: &mut ConnState, out: &mut [u8], n: usize) {
    let n = n.min(conn.out_len as usize);
    out.copy_within(n..conn.out_len as usize, 0);
    conn.out_len -= n as u16;
    conn.send_len = 0;
    conn.flags &= !flag::SENDING;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_their_times() {
        let mut out = [0u8; 64];
        write_message(&mut out, false, 20, 111, 100);
        match proto::parse(&out[..20], 4096) {
            Ok(proto::Parsed::Frame { frame: Frame::Ping { seq, t_ns }, .. }) => assert_eq!((seq, t_ns), (111, 100)),
            other => panic!("{other:?}"),
        }
        assert_eq!(reply_times(&Frame::Pong { seq: 111, t_ns: 100 }), Some((111, 100)));
        write_message(&mut out, true, 64, 5, 4);
        match proto::parse(&out, 4096) {
            Ok(proto::Parsed::Frame { frame: Frame::Echo { data }, .. }) => {
                assert_eq!(reply_times(&Frame::EchoReply { data }), Some((5, 4)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_sends_keep_the_rest_in_front() {
        let mut conn = ConnState::zeroed();
        let mut out = [0u8; 8];
        out[..6].copy_from_slice(b"abcdef");
        conn.out_len = 6;
        conn.send_len = 6;
        conn.flags = flag::SENDING;
        sent(&mut conn, &mut out, 4);
        assert_eq!((conn.out_len, conn.send_len, conn.has(flag::SENDING)), (2, 0, false));
        assert_eq!(&out[..2], b"ef");
    }
}
