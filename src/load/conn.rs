//! One load connection's state: a 128-byte `Pod` header in a `SessionSlab`, plus the pure
//! parts of its life (reassembling replies into frames, staging messages) that do no I/O and
//! are unit-tested here.
//!
//! A load slot is used by exactly one connection for the whole run (there are no reconnects),
//! so no completion can ever be stale: the slot index alone says whose it is.

use bytemuck::{Pod, Zeroable};

use crate::proto::{self, Frame, FrameIter, Parsed, ProtoError};

pub mod state {
    /// Never started.
    pub const FREE: u8 = 0;
    /// The socket/bind/connect chain is in flight.
    pub const CONNECTING: u8 = 1;
    /// Connected, HELLO sent, waiting for WELCOME.
    pub const HELLO_SENT: u8 = 2;
    pub const LOGGED_IN: u8 = 3;
    /// Cancel and close in flight.
    pub const CLOSING: u8 = 4;
    /// Closed; nothing in flight.
    pub const DONE: u8 = 5;
}

pub mod flag {
    pub const RECV_ARMED: u8 = 1;
    /// A send is in flight (one at a time).
    pub const SENDING: u8 = 2;
    /// The connect completed successfully.
    pub const CONNECT_OK: u8 = 4;
    /// The connect's linked timeout fired.
    pub const TIMED_OUT: u8 = 8;
    /// The run is closing: close as soon as the connect chain ends.
    pub const CLOSE_WANTED: u8 = 16;
    /// Counted as logged in (so its loss is counted once).
    pub const COUNTED_UP: u8 = 32;
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
    /// The out area of ping and idle connections (echo uses the slot). While connecting it
    /// holds the bind address.
    pub out: [u8; INLINE_OUT],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct ConnState {
    pub state: u8,
    pub flags: u8,
    /// Operations in flight whose completion is still expected.
    pub inflight: u8,
    /// Which step of the connect chain failed first (see `Step`).
    pub err_step: u8,
    /// The first error of the connect chain (negative errno), 0 if none.
    pub err: i32,
    /// Bytes of a partial incoming frame kept at the start of the slot.
    pub partial_len: u16,
    /// Bytes of the send in flight, from the start of the out area.
    pub send_len: u16,
    /// Bytes staged in the out area, the send in flight included.
    pub out_len: u16,
    pub _pad: u16,
    /// While connecting: when the connect was scheduled. Logged in: when the next message is
    /// due. In nanoseconds since the load started.
    pub due_ns: u64,
    /// When the connect was issued, then when HELLO was sent.
    pub t_ns: u64,
    /// Messages sent but not answered.
    pub outstanding: u32,
    pub _pad2: u32,
    /// Chat: the last msg_id this connection sent (its SENDs are numbered 1, 2, ...).
    pub msg_seq: u64,
}

const _: () = assert!(std::mem::size_of::<Conn>() == 128);

impl ConnState {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// What went wrong with the server's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct BadInput(pub ProtoError);

/// Feeds received bytes through the connection's reassembly: whole frames are handed to
/// `on_frame` in order (straight from `data` where they lie whole in it), and a partial tail is
/// kept in `partial` (at least `max_frame` bytes of the slot). `on_frame` returns `false` to stop
/// (the connection is closing); the rest is dropped.
pub fn take_bytes(
    partial_len: &mut u16,
    partial: &mut [u8],
    mut data: &[u8],
    max_frame: usize,
    mut on_frame: impl FnMut(Frame<'_>) -> bool,
) -> Result<(), BadInput> {
    if *partial_len > 0 {
        let mut have = *partial_len as usize;
        loop {
            let need = match proto::parse(&partial[..have], max_frame).map_err(BadInput)? {
                Parsed::Incomplete { need } => need,
                // A whole frame is never left in the partial area.
                Parsed::Frame { .. } => have,
            };
            let take = (need - have).min(data.len());
            partial[have..have + take].copy_from_slice(&data[..take]);
            have += take;
            data = &data[take..];
            match proto::parse(&partial[..have], max_frame).map_err(BadInput)? {
                Parsed::Frame { frame, .. } => {
                    *partial_len = 0;
                    if !on_frame(frame) {
                        return Ok(());
                    }
                    break;
                }
                Parsed::Incomplete { .. } if data.is_empty() => {
                    *partial_len = have as u16;
                    return Ok(());
                }
                Parsed::Incomplete { .. } => {}
            }
        }
    }
    let mut frames = FrameIter::new(data, max_frame);
    for frame in &mut frames {
        if !on_frame(frame.map_err(BadInput)?) {
            return Ok(());
        }
    }
    let rest = frames.remaining();
    partial[..rest.len()].copy_from_slice(rest);
    *partial_len = rest.len() as u16;
    Ok(())
}

/// Writes a timed message frame (PING, or ECHO of `len` bytes) into `out`: its payload starts
/// with the time it is handed to the kernel and the time it was scheduled, which the server
/// sends back unchanged.
pub fn write_message(out: &mut [u8], echo: bool, len: usize, sent_ns: u64, due_ns: u64) {
    out[..len].fill(0);
    let kind = if echo { proto::Kind::Echo } else { proto::Kind::Ping };
    out[0..2].copy_from_slice(&(len as u16).to_le_bytes());
    out[2] = kind as u8;
    out[3] = 0;
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
    use proptest::prelude::*;

    use super::*;
    use crate::proto::encode_vec;

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(encode_vec(&Frame::Welcome { session_id: 7, server_time_ns: 8, heartbeat_ms: 9 }));
        s.extend(encode_vec(&Frame::Pong { seq: 1, t_ns: 2 }));
        s.extend(encode_vec(&Frame::EchoReply { data: &[5u8; 300] }));
        s.extend(encode_vec(&Frame::Error { code: 5, text: b"server full" }));
        s
    }

    fn feed(chunks: &[&[u8]]) -> (Vec<crate::proto::Kind>, Result<(), BadInput>) {
        let mut partial_len = 0u16;
        let mut partial = vec![0u8; 4096];
        let mut kinds = Vec::new();
        for chunk in chunks {
            let r = take_bytes(&mut partial_len, &mut partial, chunk, 4096, |f| {
                kinds.push(f.kind());
                true
            });
            if r.is_err() {
                return (kinds, r);
            }
        }
        assert_eq!(partial_len, 0);
        (kinds, Ok(()))
    }

    #[test]
    fn whole_frames_come_out_in_order() {
        let s = stream();
        let (kinds, r) = feed(&[&s]);
        assert!(r.is_ok());
        use crate::proto::Kind::*;
        assert_eq!(kinds, vec![Welcome, Pong, EchoReply, Error]);
    }

    #[test]
    fn a_bad_header_is_an_error_not_a_panic() {
        let (_, r) = feed(&[&[2, 0, 0x82, 0]]);
        assert!(r.is_err());
        let (_, r) = feed(&[&[20, 0, 0x82, 7]]);
        assert!(r.is_err());
    }

    #[test]
    fn messages_round_trip_their_times() {
        let mut out = [0u8; 64];
        write_message(&mut out, false, 20, 111, 100);
        match proto::parse(&out[..20], 4096) {
            Ok(Parsed::Frame { frame: Frame::Ping { seq, t_ns }, .. }) => assert_eq!((seq, t_ns), (111, 100)),
            other => panic!("{other:?}"),
        }
        assert_eq!(reply_times(&Frame::Pong { seq: 111, t_ns: 100 }), Some((111, 100)));
        write_message(&mut out, true, 64, 5, 4);
        match proto::parse(&out, 4096) {
            Ok(Parsed::Frame { frame: Frame::Echo { data }, .. }) => {
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

    proptest! {
        /// However the stream is cut into reads, the same frames come out.
        #[test]
        fn any_split_gives_the_same_frames(cuts in proptest::collection::vec(0usize..400, 0..12)) {
            let s = stream();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (s.len() + 1)).collect();
            points.push(0);
            points.push(s.len());
            points.sort();
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &s[w[0]..w[1]]).collect();
            let (kinds, r) = feed(&chunks);
            prop_assert!(r.is_ok());
            prop_assert_eq!(kinds.len(), 4);
        }
    }
}
