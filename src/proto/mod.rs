//! Wire protocol v1.
//!
//! Every frame is a 4-byte header followed by a payload; all integers are
//! little-endian:
//!
//! ```text
//! offset 0  u16 len     whole frame length, header included: 4 <= len <= max_frame
//! offset 2  u8  kind
//! offset 3  u8  flags   must be 0 in v1
//! ```
//!
//! Parsing is zero copy: a [`Frame`] borrows its variable-length parts from the
//! input buffer, so the server can parse straight out of a connection's read
//! buffer without allocating.

mod reassembly;

pub use reassembly::{Fed, Step, reassemble};

use thiserror::Error;

/// Size of the frame header (`len`, `kind`, `flags`).
pub const HEADER_LEN: usize = 4;
/// Largest frame the server accepts unless configured otherwise.
pub const DEFAULT_MAX_FRAME: usize = 4096;
/// Hard ceiling for any `max_frame`: `len` is a `u16`.
pub const MAX_FRAME_LIMIT: usize = u16::MAX as usize;
/// Fixed part of SEND and DELIVER payloads (three u64s) before the body.
/// Both have the same layout size, so relaying a SEND as a DELIVER never
/// changes the frame length and cannot overflow `max_frame`.
pub const MSG_FIXED_LEN: usize = 24;

/// A SEND's `to_user` with this bit set names a group, not a user: group `to_user & !GROUP_BIT`.
/// User ids therefore live below 2^63.
pub const GROUP_BIT: u64 = 1 << 63;
/// Largest group the server fans out to.
pub const MAX_GROUP_SIZE: u32 = 1024;

/// The static group layout both `c2m serve` and `c2m load` derive from `--users`, `--groups` and
/// `--group-size`: member `i` of group `g` is user `1 + (g * size + i) % users`. Consecutive
/// groups tile the user range, so every user is in about `groups * size / users` groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLayout {
    pub users: u64,
    pub groups: u64,
    pub size: u32,
}

impl GroupLayout {
    /// Whether `id` (a SEND's `to_user`) names one of the groups.
    pub fn group_of(&self, id: u64) -> Option<u64> {
        (id & GROUP_BIT != 0 && (id & !GROUP_BIT) < self.groups).then_some(id & !GROUP_BIT)
    }

    /// The members of group `g` (distinct when `size <= users`).
    pub fn members(&self, g: u64) -> impl Iterator<Item = u64> + use<> {
        let (users, size) = (self.users.max(1), self.size as u64);
        (0..size.min(users)).map(move |i| 1 + (g.wrapping_mul(size).wrapping_add(i)) % users)
    }
}

/// Frame kind: byte 2 of the header. The high bit marks server -> client
/// frames (except ERROR = 0xFF, which is also server -> client).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Hello = 0x01,
    Welcome = 0x81,
    Ping = 0x02,
    Pong = 0x82,
    Echo = 0x03,
    EchoReply = 0x83,
    Send = 0x04,
    Ack = 0x84,
    Deliver = 0x85,
    Receipt = 0x05,
    ReceiptNotice = 0x86,
    Nack = 0x87,
    Bye = 0x06,
    Error = 0xFF,
}

impl Kind {
    /// Every kind, in [`Kind::index`] order.
    pub const ALL: [Kind; 14] = [
        Kind::Hello,
        Kind::Welcome,
        Kind::Ping,
        Kind::Pong,
        Kind::Echo,
        Kind::EchoReply,
        Kind::Send,
        Kind::Ack,
        Kind::Deliver,
        Kind::Receipt,
        Kind::ReceiptNotice,
        Kind::Nack,
        Kind::Bye,
        Kind::Error,
    ];

    pub const fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0x01 => Kind::Hello,
            0x81 => Kind::Welcome,
            0x02 => Kind::Ping,
            0x82 => Kind::Pong,
            0x03 => Kind::Echo,
            0x83 => Kind::EchoReply,
            0x04 => Kind::Send,
            0x84 => Kind::Ack,
            0x85 => Kind::Deliver,
            0x05 => Kind::Receipt,
            0x86 => Kind::ReceiptNotice,
            0x87 => Kind::Nack,
            0x06 => Kind::Bye,
            0xFF => Kind::Error,
            _ => return None,
        })
    }

    /// Dense index `0..14` (position in [`Kind::ALL`]), for per-kind counter arrays.
    pub const fn index(self) -> usize {
        match self {
            Kind::Hello => 0,
            Kind::Welcome => 1,
            Kind::Ping => 2,
            Kind::Pong => 3,
            Kind::Echo => 4,
            Kind::EchoReply => 5,
            Kind::Send => 6,
            Kind::Ack => 7,
            Kind::Deliver => 8,
            Kind::Receipt => 9,
            Kind::ReceiptNotice => 10,
            Kind::Nack => 11,
            Kind::Bye => 12,
            Kind::Error => 13,
        }
    }

    /// Lowercase snake-case name, stable: used as a Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Welcome => "welcome",
            Kind::Ping => "ping",
            Kind::Pong => "pong",
            Kind::Echo => "echo",
            Kind::EchoReply => "echo_reply",
            Kind::Send => "send",
            Kind::Ack => "ack",
            Kind::Deliver => "deliver",
            Kind::Receipt => "receipt",
            Kind::ReceiptNotice => "receipt_notice",
            Kind::Nack => "nack",
            Kind::Bye => "bye",
            Kind::Error => "error",
        }
    }

    /// Kinds a client may send. BYE goes both ways, so it is included.
    pub const fn is_client_to_server(self) -> bool {
        matches!(self, Kind::Hello | Kind::Ping | Kind::Echo | Kind::Send | Kind::Receipt | Kind::Bye)
    }
}

/// Codes carried by ERROR (fatal: the server closes after sending it) and by
/// NACK (not fatal).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Malformed = 1,
    FrameSize = 2,
    UnknownKind = 3,
    NotLoggedIn = 4,
    ServerFull = 5,
    Timeout = 6,
    UnknownRecipient = 7,
    OfflineQueueFull = 8,
    LoggedInElsewhere = 9,
}

impl ErrorCode {
    /// Every code, in [`ErrorCode::index`] order (which is numeric order).
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::Malformed,
        ErrorCode::FrameSize,
        ErrorCode::UnknownKind,
        ErrorCode::NotLoggedIn,
        ErrorCode::ServerFull,
        ErrorCode::Timeout,
        ErrorCode::UnknownRecipient,
        ErrorCode::OfflineQueueFull,
        ErrorCode::LoggedInElsewhere,
    ];

    pub const fn from_u16(v: u16) -> Option<Self> {
        // Codes are dense from 1, so ALL doubles as the lookup table.
        match v {
            1..=9 => Some(Self::ALL[v as usize - 1]),
            _ => None,
        }
    }

    /// Dense index `0..9`, for per-code counter arrays.
    pub const fn index(self) -> usize {
        self as usize - 1
    }

    /// Lowercase snake-case name, stable: used as a Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameSize => "frame_size",
            ErrorCode::UnknownKind => "unknown_kind",
            ErrorCode::NotLoggedIn => "not_logged_in",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::Timeout => "timeout",
            ErrorCode::UnknownRecipient => "unknown_recipient",
            ErrorCode::OfflineQueueFull => "offline_queue_full",
            ErrorCode::LoggedInElsewhere => "logged_in_elsewhere",
        }
    }

    /// Fatal codes travel in ERROR and end the connection; the others are
    /// per-message NACKs.
    pub const fn is_fatal(self) -> bool {
        !matches!(self, ErrorCode::UnknownRecipient | ErrorCode::OfflineQueueFull)
    }
}

/// A parsed frame, borrowing its variable-length parts from the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello {
        user_id: u64,
        client_time_ns: u64,
    },
    Welcome {
        session_id: u64,
        server_time_ns: u64,
        heartbeat_ms: u32,
    },
    Ping {
        seq: u64,
        t_ns: u64,
    },
    /// Echoes the PING's payload unchanged.
    Pong {
        seq: u64,
        t_ns: u64,
    },
    Echo {
        data: &'a [u8],
    },
    EchoReply {
        data: &'a [u8],
    },
    Send {
        to_user: u64,
        msg_id: u64,
        t_ns: u64,
        body: &'a [u8],
    },
    Ack {
        msg_id: u64,
    },
    Deliver {
        from_user: u64,
        msg_id: u64,
        t_ns: u64,
        body: &'a [u8],
    },
    /// Recipient -> server: "I got `msg_id` from `from_user`".
    Receipt {
        from_user: u64,
        msg_id: u64,
    },
    /// Server -> sender: "`to_user` got your `msg_id`".
    ReceiptNotice {
        to_user: u64,
        msg_id: u64,
    },
    Nack {
        msg_id: u64,
        code: u16,
    },
    Bye,
    /// `text` should be UTF-8, but parsing does not check it: the text is only
    /// for humans and validating it would cost time on every error.
    Error {
        code: u16,
        text: &'a [u8],
    },
}

impl<'a> Frame<'a> {
    /// A fatal ERROR frame.
    pub fn error(code: ErrorCode, text: &'a str) -> Self {
        Frame::Error { code: code as u16, text: text.as_bytes() }
    }

    /// A NACK frame for `msg_id`.
    pub fn nack(msg_id: u64, code: ErrorCode) -> Self {
        Frame::Nack { msg_id, code: code as u16 }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello { .. } => Kind::Hello,
            Frame::Welcome { .. } => Kind::Welcome,
            Frame::Ping { .. } => Kind::Ping,
            Frame::Pong { .. } => Kind::Pong,
            Frame::Echo { .. } => Kind::Echo,
            Frame::EchoReply { .. } => Kind::EchoReply,
            Frame::Send { .. } => Kind::Send,
            Frame::Ack { .. } => Kind::Ack,
            Frame::Deliver { .. } => Kind::Deliver,
            Frame::Receipt { .. } => Kind::Receipt,
            Frame::ReceiptNotice { .. } => Kind::ReceiptNotice,
            Frame::Nack { .. } => Kind::Nack,
            Frame::Bye => Kind::Bye,
            Frame::Error { .. } => Kind::Error,
        }
    }

    /// Whole frame length on the wire, header included. May exceed
    /// [`MAX_FRAME_LIMIT`] for oversized bodies; such a frame cannot be encoded.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        match self {
            Frame::Hello { .. } | Frame::Ping { .. } | Frame::Pong { .. } => 16,
            Frame::Receipt { .. } | Frame::ReceiptNotice { .. } => 16,
            Frame::Welcome { .. } => 20,
            Frame::Echo { data } | Frame::EchoReply { data } => data.len(),
            Frame::Send { body, .. } | Frame::Deliver { body, .. } => MSG_FIXED_LEN + body.len(),
            Frame::Ack { .. } => 8,
            Frame::Nack { .. } => 10,
            Frame::Bye => 0,
            Frame::Error { text, .. } => 2 + text.len(),
        }
    }
}

/// Why a buffer does not start with a valid frame. Every variant is fatal for
/// the connection: the server answers with ERROR [`ProtoError::code`] and closes.
#[derive(Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    #[error("frame length {len} out of range")]
    FrameSize { len: u16 },
    #[error("unknown frame kind {kind:#04x}")]
    UnknownKind { kind: u8 },
    #[error("nonzero flags {flags:#04x}")]
    BadFlags { flags: u8 },
    #[error("bad {} payload length {len}", kind.name())]
    BadPayload { kind: Kind, len: usize },
}

impl ProtoError {
    pub fn code(self) -> ErrorCode {
        match self {
            ProtoError::FrameSize { .. } => ErrorCode::FrameSize,
            ProtoError::UnknownKind { .. } => ErrorCode::UnknownKind,
            ProtoError::BadFlags { .. } | ProtoError::BadPayload { .. } => ErrorCode::Malformed,
        }
    }
}

/// Result of looking at the start of a byte buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole valid frame; `len` bytes of the buffer belong to it.
    Frame { frame: Frame<'a>, len: usize },
    /// Not enough bytes yet. `need` is the total frame length once the `len`
    /// field has arrived, else [`HEADER_LEN`]; it is a total, not a remainder.
    Incomplete { need: usize },
}

/// Parse one frame at the start of `buf`.
///
/// Header fields are checked as soon as their bytes are present, in this
/// order: `len` (once 2 bytes are there), `kind`, `flags`. So a bad header is
/// rejected before its payload arrives, and a peer that trickles bytes of a
/// bogus frame (slowloris) is caught early. Parsing a prefix of a buffer
/// therefore gives either `Incomplete` or the same result as the whole buffer.
/// The payload length is checked against the kind once the whole frame is
/// present. `max_frame` is clamped to [`MAX_FRAME_LIMIT`]; a `max_frame` below
/// [`HEADER_LEN`] rejects every frame.
///
/// Never panics.
pub fn parse(buf: &[u8], max_frame: usize) -> Result<Parsed<'_>, ProtoError> {
    let incomplete = |need| Ok(Parsed::Incomplete { need });
    let Some(&[l0, l1]) = buf.first_chunk::<2>() else {
        return incomplete(HEADER_LEN);
    };
    let len = u16::from_le_bytes([l0, l1]);
    let total = usize::from(len);
    if total < HEADER_LEN || total > max_frame {
        return Err(ProtoError::FrameSize { len });
    }
    let Some(&kind_byte) = buf.get(2) else {
        return incomplete(total);
    };
    let kind = Kind::from_u8(kind_byte).ok_or(ProtoError::UnknownKind { kind: kind_byte })?;
    let Some(&flags) = buf.get(3) else {
        return incomplete(total);
    };
    if flags != 0 {
        return Err(ProtoError::BadFlags { flags });
    }
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return incomplete(total);
    };
    let frame = decode_payload(kind, payload).ok_or(ProtoError::BadPayload { kind, len: payload.len() })?;
    Ok(Parsed::Frame { frame, len: total })
}

/// Decode a payload whose kind is known. `None` if its length is wrong:
/// fixed-size kinds must be consumed exactly, variable ones must hold at least
/// their fixed fields.
fn decode_payload(kind: Kind, payload: &[u8]) -> Option<Frame<'_>> {
    let mut r = Reader(payload);
    let frame = match kind {
        Kind::Hello => Frame::Hello { user_id: r.u64()?, client_time_ns: r.u64()? },
        Kind::Welcome => Frame::Welcome { session_id: r.u64()?, server_time_ns: r.u64()?, heartbeat_ms: r.u32()? },
        Kind::Ping => Frame::Ping { seq: r.u64()?, t_ns: r.u64()? },
        Kind::Pong => Frame::Pong { seq: r.u64()?, t_ns: r.u64()? },
        Kind::Echo => return Some(Frame::Echo { data: r.rest() }),
        Kind::EchoReply => return Some(Frame::EchoReply { data: r.rest() }),
        Kind::Send => {
            let (to_user, msg_id, t_ns) = (r.u64()?, r.u64()?, r.u64()?);
            return Some(Frame::Send { to_user, msg_id, t_ns, body: r.rest() });
        }
        Kind::Deliver => {
            let (from_user, msg_id, t_ns) = (r.u64()?, r.u64()?, r.u64()?);
            return Some(Frame::Deliver { from_user, msg_id, t_ns, body: r.rest() });
        }
        Kind::Ack => Frame::Ack { msg_id: r.u64()? },
        Kind::Receipt => Frame::Receipt { from_user: r.u64()?, msg_id: r.u64()? },
        Kind::ReceiptNotice => Frame::ReceiptNotice { to_user: r.u64()?, msg_id: r.u64()? },
        Kind::Nack => Frame::Nack { msg_id: r.u64()?, code: r.u16()? },
        Kind::Bye => Frame::Bye,
        Kind::Error => {
            let code = r.u16()?;
            return Some(Frame::Error { code, text: r.rest() });
        }
    };
    // Fixed-size kinds fall through here: trailing bytes are malformed.
    r.rest().is_empty().then_some(frame)
}

/// Bounds-checked little-endian reads; `None` when the payload runs out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn rest(&self) -> &'a [u8] {
        self.0
    }
}

/// Encode `frame` into the start of `out` and return the bytes written
/// (`frame.encoded_len()`).
///
/// # Panics
/// If `out` is shorter than `frame.encoded_len()`, or the frame is longer than
/// [`MAX_FRAME_LIMIT`] (its length does not fit the `u16` header field). Both
/// are caller bugs; use [`try_encode`] to handle them instead.
pub fn encode(frame: &Frame<'_>, out: &mut [u8]) -> usize {
    let len = frame.encoded_len();
    try_encode(frame, out).unwrap_or_else(|| {
        panic!(
            "cannot encode {} frame of {len} bytes into {} bytes (limit {MAX_FRAME_LIMIT})",
            frame.kind().name(),
            out.len()
        )
    })
}

/// Writes a frame header (`len` is the whole frame's, header included) into `out[..4]`. The
/// payload is the caller's: for frames built in place, such as the load generator's timed
/// messages.
///
/// # Panics
/// If `out` is shorter than [`HEADER_LEN`].
pub fn write_header(out: &mut [u8], kind: Kind, len: u16) {
    out[..2].copy_from_slice(&len.to_le_bytes());
    out[2] = kind as u8;
    out[3] = 0;
}

/// Like [`encode`], but returns `None` instead of panicking (and writes
/// nothing) when `out` is too short or the frame is too long.
pub fn try_encode(frame: &Frame<'_>, out: &mut [u8]) -> Option<usize> {
    let total = frame.encoded_len();
    let len = u16::try_from(total).ok()?;
    let out = out.get_mut(..total)?;
    write_header(out, frame.kind(), len);
    let mut w = Writer(&mut out[HEADER_LEN..]);
    match *frame {
        Frame::Hello { user_id: a, client_time_ns: b }
        | Frame::Ping { seq: a, t_ns: b }
        | Frame::Pong { seq: a, t_ns: b }
        | Frame::Receipt { from_user: a, msg_id: b }
        | Frame::ReceiptNotice { to_user: a, msg_id: b } => {
            w.put(&a.to_le_bytes());
            w.put(&b.to_le_bytes());
        }
        Frame::Welcome { session_id, server_time_ns, heartbeat_ms } => {
            w.put(&session_id.to_le_bytes());
            w.put(&server_time_ns.to_le_bytes());
            w.put(&heartbeat_ms.to_le_bytes());
        }
        Frame::Echo { data } | Frame::EchoReply { data } => w.put(data),
        Frame::Send { to_user: user, msg_id, t_ns, body } | Frame::Deliver { from_user: user, msg_id, t_ns, body } => {
            w.put(&user.to_le_bytes());
            w.put(&msg_id.to_le_bytes());
            w.put(&t_ns.to_le_bytes());
            w.put(body);
        }
        Frame::Ack { msg_id } => w.put(&msg_id.to_le_bytes()),
        Frame::Nack { msg_id, code } => {
            w.put(&msg_id.to_le_bytes());
            w.put(&code.to_le_bytes());
        }
        Frame::Bye => {}
        Frame::Error { code, text } => {
            w.put(&code.to_le_bytes());
            w.put(text);
        }
    }
    debug_assert!(w.0.is_empty(), "encoded_len disagrees with encoder");
    Some(total)
}

/// Encode to a fresh `Vec` (tests and clients; the server encodes in place).
///
/// # Panics
/// If the frame is longer than [`MAX_FRAME_LIMIT`].
pub fn encode_vec(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = vec![0; frame.encoded_len()];
    encode(frame, &mut out);
    out
}

/// Sequential writer over a slice already cut to the exact frame length.
struct Writer<'a>(&'a mut [u8]);

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let (head, tail) = std::mem::take(&mut self.0).split_at_mut(bytes.len());
        head.copy_from_slice(bytes);
        self.0 = tail;
    }
}

/// Iterates over the whole frames at the start of a buffer.
///
/// Yields `Ok(frame)` for each complete frame, then stops at the incomplete
/// tail, or after yielding the first `Err` (the stream cannot be resynchronised
/// after a bad header, so nothing past it is looked at). [`FrameIter::consumed`]
/// and [`FrameIter::remaining`] then tell where the unparsed tail (or the bad
/// frame) starts.
#[derive(Clone, Debug)]
pub struct FrameIter<'a> {
    buf: &'a [u8],
    max_frame: usize,
    consumed: usize,
    done: bool,
}

impl<'a> FrameIter<'a> {
    pub fn new(buf: &'a [u8], max_frame: usize) -> Self {
        FrameIter { buf, max_frame, consumed: 0, done: false }
    }

    /// Bytes taken by the frames yielded so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// The bytes after the frames yielded so far: an incomplete frame, or a bad one.
    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.consumed..]
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<Frame<'a>, ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match parse(self.remaining(), self.max_frame) {
            Ok(Parsed::Frame { frame, len }) => {
                self.consumed += len;
                Some(Ok(frame))
            }
            Ok(Parsed::Incomplete { .. }) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for FrameIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn groups_tile_the_user_range() {
        let layout = GroupLayout { users: 10, groups: 4, size: 4 };
        assert_eq!(layout.members(0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(layout.members(2).collect::<Vec<_>>(), vec![9, 10, 1, 2]);
        assert_eq!(layout.group_of(GROUP_BIT | 3), Some(3));
        assert_eq!(layout.group_of(GROUP_BIT | 4), None);
        assert_eq!(layout.group_of(3), None);
    }

    const BODY: &[u8] = b"hello, world";

    /// One frame of every kind, with distinct field values so that a swapped
    /// field would show.
    fn samples() -> Vec<Frame<'static>> {
        vec![
            Frame::Hello { user_id: 1, client_time_ns: 2 },
            Frame::Welcome { session_id: 3, server_time_ns: 4, heartbeat_ms: 5 },
            Frame::Ping { seq: 6, t_ns: 7 },
            Frame::Pong { seq: 8, t_ns: u64::MAX },
            Frame::Echo { data: BODY },
            Frame::EchoReply { data: b"" },
            Frame::Send { to_user: 9, msg_id: 10, t_ns: 11, body: BODY },
            Frame::Ack { msg_id: 12 },
            Frame::Deliver { from_user: 13, msg_id: 14, t_ns: 15, body: b"" },
            Frame::Receipt { from_user: 16, msg_id: 17 },
            Frame::ReceiptNotice { to_user: 18, msg_id: 19 },
            Frame::nack(20, ErrorCode::UnknownRecipient),
            Frame::Bye,
            Frame::error(ErrorCode::ServerFull, "server full"),
        ]
    }

    fn header(len: u16, kind: u8, flags: u8) -> Vec<u8> {
        let mut v = len.to_le_bytes().to_vec();
        v.extend([kind, flags]);
        v
    }

    /// A frame with the given kind and payload, header built by hand.
    fn raw(kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut v = header((HEADER_LEN + payload.len()) as u16, kind as u8, 0);
        v.extend_from_slice(payload);
        v
    }

    fn parse_all(buf: &[u8]) -> Result<Parsed<'_>, ProtoError> {
        parse(buf, MAX_FRAME_LIMIT)
    }

    #[test]
    fn every_kind_round_trips() {
        let samples = samples();
        let kinds: Vec<Kind> = samples.iter().map(Frame::kind).collect();
        assert_eq!(kinds, Kind::ALL, "samples cover every kind in ALL order");
        for f in samples {
            let bytes = encode_vec(&f);
            assert_eq!(bytes.len(), f.encoded_len());
            assert_eq!(bytes[2], f.kind() as u8);
            assert_eq!(parse(&bytes, DEFAULT_MAX_FRAME), Ok(Parsed::Frame { frame: f, len: bytes.len() }));
        }
    }

    #[test]
    fn encoding_is_the_documented_layout() {
        let f = Frame::Welcome { session_id: 0x0102, server_time_ns: 3, heartbeat_ms: 0x0405 };
        let mut want = vec![24, 0, 0x81, 0];
        want.extend(0x0102u64.to_le_bytes());
        want.extend(3u64.to_le_bytes());
        want.extend(0x0405u32.to_le_bytes());
        assert_eq!(encode_vec(&f), want);
        assert_eq!(encode_vec(&Frame::Bye), [4, 0, 0x06, 0]);
    }

    #[test]
    fn kind_tables_agree() {
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(Kind::from_u8(k as u8), Some(k));
            let n = k.name();
            assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{n}");
        }
        let names: std::collections::HashSet<_> = Kind::ALL.map(Kind::name).into();
        assert_eq!(names.len(), Kind::ALL.len());
        let known = (0..=255u8).filter(|&b| Kind::from_u8(b).is_some()).count();
        assert_eq!(known, Kind::ALL.len());
        let c2s: Vec<Kind> = Kind::ALL.into_iter().filter(|k| k.is_client_to_server()).collect();
        assert_eq!(c2s, [Kind::Hello, Kind::Ping, Kind::Echo, Kind::Send, Kind::Receipt, Kind::Bye]);
    }

    #[test]
    fn error_code_tables_agree() {
        for (i, c) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(c as u16, i as u16 + 1);
            assert_eq!(ErrorCode::from_u16(c as u16), Some(c));
            assert_eq!(c.is_fatal(), !matches!(c as u16, 7 | 8));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(10), None);
        assert_eq!(ErrorCode::LoggedInElsewhere.name(), "logged_in_elsewhere");
        let names: std::collections::HashSet<_> = ErrorCode::ALL.map(ErrorCode::name).into();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn proto_error_codes() {
        let bad_payload = ProtoError::BadPayload { kind: Kind::Ack, len: 0 };
        assert_eq!(ProtoError::FrameSize { len: 0 }.code(), ErrorCode::FrameSize);
        assert_eq!(ProtoError::UnknownKind { kind: 9 }.code(), ErrorCode::UnknownKind);
        assert_eq!(ProtoError::BadFlags { flags: 1 }.code(), ErrorCode::Malformed);
        assert_eq!(bad_payload.code(), ErrorCode::Malformed);
        assert_eq!(bad_payload.to_string(), "bad ack payload length 0");
    }

    #[test]
    fn len_below_header_rejected_with_two_bytes() {
        for len in 0..4u16 {
            let err = Err(ProtoError::FrameSize { len });
            assert_eq!(parse_all(&len.to_le_bytes()), err);
            assert_eq!(parse_all(&header(len, Kind::Bye as u8, 0)), err);
        }
    }

    #[test]
    fn len_above_max_frame_rejected_with_two_bytes() {
        let len = DEFAULT_MAX_FRAME as u16 + 1;
        let err = Err(ProtoError::FrameSize { len });
        assert_eq!(parse(&len.to_le_bytes(), DEFAULT_MAX_FRAME), err);
        assert_eq!(parse(&header(len, Kind::Echo as u8, 0), DEFAULT_MAX_FRAME), err);
        // Exactly max_frame is fine.
        let ok = vec![0; DEFAULT_MAX_FRAME - HEADER_LEN];
        assert!(matches!(
            parse(&raw(Kind::Echo, &ok), DEFAULT_MAX_FRAME),
            Ok(Parsed::Frame { len: DEFAULT_MAX_FRAME, .. })
        ));
        // A max_frame below the header rejects everything.
        assert_eq!(parse(&encode_vec(&Frame::Bye), 3), Err(ProtoError::FrameSize { len: 4 }));
    }

    #[test]
    fn unknown_kind_rejected_before_payload() {
        for kind in (0..=255u8).filter(|&b| Kind::from_u8(b).is_none()) {
            let err = Err(ProtoError::UnknownKind { kind });
            assert_eq!(parse_all(&header(100, kind, 0)), err);
            assert_eq!(parse_all(&header(100, kind, 0)[..3]), err);
        }
    }

    #[test]
    fn nonzero_flags_rejected_before_payload() {
        for flags in 1..=255u8 {
            let h = header(20, Kind::Ping as u8, flags);
            assert_eq!(parse_all(&h), Err(ProtoError::BadFlags { flags }));
        }
        // Kind is checked before flags.
        assert_eq!(parse_all(&header(20, 0, 1)), Err(ProtoError::UnknownKind { kind: 0 }));
    }

    #[test]
    fn fixed_kinds_reject_short_and_long_payloads() {
        for f in samples() {
            let kind = f.kind();
            let payload = &encode_vec(&f)[HEADER_LEN..];
            let exact = !matches!(kind, Kind::Echo | Kind::EchoReply | Kind::Send | Kind::Deliver | Kind::Error);
            if !exact {
                continue;
            }
            let mut long = payload.to_vec();
            long.push(0);
            let err = |len| Err(ProtoError::BadPayload { kind, len });
            assert_eq!(parse_all(&raw(kind, &long)), err(long.len()), "{kind:?} long");
            if let Some(short) = payload.len().checked_sub(1) {
                assert_eq!(parse_all(&raw(kind, &payload[..short])), err(short), "{kind:?} short");
                assert_eq!(parse_all(&raw(kind, &[])), err(0), "{kind:?} empty");
            }
        }
    }

    #[test]
    fn variable_kinds_enforce_minimum() {
        for kind in [Kind::Send, Kind::Deliver] {
            for len in 0..MSG_FIXED_LEN {
                let err = Err(ProtoError::BadPayload { kind, len });
                assert_eq!(parse_all(&raw(kind, &vec![7; len])), err);
            }
            assert!(matches!(parse_all(&raw(kind, &[7; MSG_FIXED_LEN])), Ok(Parsed::Frame { .. })));
        }
        for len in 0..2 {
            let err = Err(ProtoError::BadPayload { kind: Kind::Error, len });
            assert_eq!(parse_all(&raw(Kind::Error, &vec![1; len])), err);
        }
        let f = Frame::Error { code: 6, text: b"" };
        assert_eq!(parse_all(&raw(Kind::Error, &[6, 0])), Ok(Parsed::Frame { frame: f, len: 6 }));
        let f = Frame::Echo { data: b"" };
        assert_eq!(parse_all(&raw(Kind::Echo, &[])), Ok(Parsed::Frame { frame: f, len: 4 }));
    }

    #[test]
    fn incomplete_reports_need() {
        let bytes = encode_vec(&Frame::Send { to_user: 1, msg_id: 2, t_ns: 3, body: BODY });
        let total = bytes.len();
        assert_eq!(parse_all(&[]), Ok(Parsed::Incomplete { need: HEADER_LEN }));
        assert_eq!(parse_all(&bytes[..1]), Ok(Parsed::Incomplete { need: HEADER_LEN }));
        for cut in 2..total {
            assert_eq!(parse_all(&bytes[..cut]), Ok(Parsed::Incomplete { need: total }), "{cut}");
        }
        // Trailing bytes of the next frame are not consumed.
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes[..5]);
        assert!(matches!(parse_all(&two), Ok(Parsed::Frame { len, .. }) if len == total));
    }

    #[test]
    fn encode_limits() {
        let f = Frame::Send { to_user: 1, msg_id: 2, t_ns: 3, body: BODY };
        let mut out = vec![0xAA; f.encoded_len() - 1];
        assert_eq!(try_encode(&f, &mut out), None);
        assert!(out.iter().all(|&b| b == 0xAA), "failed try_encode writes nothing");
        let mut out = vec![0; f.encoded_len() + 10];
        assert_eq!(try_encode(&f, &mut out), Some(f.encoded_len()));

        // The largest frame that fits the u16 length, and one byte more.
        let big = vec![0u8; MAX_FRAME_LIMIT - HEADER_LEN];
        let f = Frame::Echo { data: &big };
        let bytes = encode_vec(&f);
        assert_eq!(parse(&bytes, MAX_FRAME_LIMIT), Ok(Parsed::Frame { frame: f, len: 65535 }));
        // A max_frame above the u16 range behaves like MAX_FRAME_LIMIT.
        assert!(matches!(parse(&bytes, usize::MAX), Ok(Parsed::Frame { .. })));
        let too_big = vec![0u8; MAX_FRAME_LIMIT - HEADER_LEN + 1];
        let f = Frame::Echo { data: &too_big };
        assert_eq!(try_encode(&f, &mut vec![0; 70_000]), None);
    }

    #[test]
    #[should_panic(expected = "cannot encode ack frame")]
    fn encode_panics_on_short_buffer() {
        encode(&Frame::Ack { msg_id: 1 }, &mut [0; 11]);
    }

    #[test]
    fn frame_iter_stops_at_tail_and_error() {
        let mut buf = Vec::new();
        for f in samples() {
            buf.extend(encode_vec(&f));
        }
        let whole = buf.len();
        buf.extend(&header(10, Kind::Ping as u8, 0)); // incomplete tail
        let mut it = FrameIter::new(&buf, DEFAULT_MAX_FRAME);
        let got: Vec<_> = it.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(got, samples());
        assert_eq!(it.consumed(), whole);
        assert_eq!(it.remaining(), &buf[whole..]);

        let mut bad = encode_vec(&Frame::Bye);
        bad.extend(header(4, Kind::Bye as u8, 1));
        bad.extend(encode_vec(&Frame::Bye));
        let mut it = FrameIter::new(&bad, DEFAULT_MAX_FRAME);
        assert_eq!(it.next(), Some(Ok(Frame::Bye)));
        assert_eq!(it.next(), Some(Err(ProtoError::BadFlags { flags: 1 })));
        assert_eq!(it.next(), None, "nothing after an error");
        assert_eq!(it.consumed(), 4, "consumed points at the bad frame");
    }

    // ---- property tests ----

    /// Field values for any frame kind; the frame borrows `bytes`.
    #[derive(Clone, Debug)]
    struct Fields {
        kind: Kind,
        a: u64,
        b: u64,
        c: u64,
        small: u32,
        bytes: Vec<u8>,
    }

    impl Fields {
        fn frame(&self) -> Frame<'_> {
            let Fields { kind, a, b, c, small, ref bytes } = *self;
            let code = small as u16;
            match kind {
                Kind::Hello => Frame::Hello { user_id: a, client_time_ns: b },
                Kind::Welcome => Frame::Welcome { session_id: a, server_time_ns: b, heartbeat_ms: small },
                Kind::Ping => Frame::Ping { seq: a, t_ns: b },
                Kind::Pong => Frame::Pong { seq: a, t_ns: b },
                Kind::Echo => Frame::Echo { data: bytes },
                Kind::EchoReply => Frame::EchoReply { data: bytes },
                Kind::Send => Frame::Send { to_user: a, msg_id: b, t_ns: c, body: bytes },
                Kind::Ack => Frame::Ack { msg_id: a },
                Kind::Deliver => Frame::Deliver { from_user: a, msg_id: b, t_ns: c, body: bytes },
                Kind::Receipt => Frame::Receipt { from_user: a, msg_id: b },
                Kind::ReceiptNotice => Frame::ReceiptNotice { to_user: a, msg_id: b },
                Kind::Nack => Frame::Nack { msg_id: a, code },
                Kind::Bye => Frame::Bye,
                Kind::Error => Frame::Error { code, text: bytes },
            }
        }
    }

    fn fields() -> impl Strategy<Value = Fields> {
        (
            proptest::sample::select(Kind::ALL.to_vec()),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(kind, a, b, c, small, bytes)| Fields { kind, a, b, c, small, bytes })
    }

    proptest! {
        #[test]
        fn prop_round_trip(f in fields()) {
            let frame = f.frame();
            let bytes = encode_vec(&frame);
            prop_assert_eq!(bytes.len(), frame.encoded_len());
            prop_assert_eq!(
                parse(&bytes, MAX_FRAME_LIMIT),
                Ok(Parsed::Frame { frame, len: frame.encoded_len() })
            );
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..10_000),
            max_frame in 4usize..=MAX_FRAME_LIMIT,
        ) {
            let _ = parse(&bytes, max_frame);
            let mut it = FrameIter::new(&bytes, max_frame);
            let mut sum = 0;
            while let Some(Ok(frame)) = it.next() {
                // Whatever parses re-encodes to the very same bytes.
                let len = frame.encoded_len();
                let again = encode_vec(&frame);
                prop_assert_eq!(again.as_slice(), &bytes[sum..sum + len]);
                sum += len;
            }
            prop_assert_eq!(it.consumed(), sum);
            prop_assert!(it.consumed() <= bytes.len());
        }

        /// Header checks are early: a prefix never contradicts the whole buffer.
        #[test]
        fn prop_prefix_is_incomplete_or_agrees(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            cut in any::<prop::sample::Index>(),
            max_frame in 0usize..=64,
        ) {
            let prefix = &bytes[..cut.index(bytes.len() + 1)];
            match parse(prefix, max_frame) {
                Ok(Parsed::Incomplete { need }) => {
                    prop_assert!(need > prefix.len());
                    if bytes.len() >= need {
                        let whole = parse(&bytes, max_frame);
                        prop_assert!(!matches!(whole, Ok(Parsed::Incomplete { .. })), "{:?}", whole);
                    }
                }
                other => prop_assert_eq!(other, parse(&bytes, max_frame)),
            }
        }

        #[test]
        fn prop_split_stream(
            frames in proptest::collection::vec(fields(), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let frames: Vec<Frame<'_>> = frames.iter().map(Fields::frame).collect();
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            for f in &frames {
                stream.extend(encode_vec(f));
                ends.push(stream.len());
            }
            let cut = cut.index(stream.len() + 1);
            let whole_inside = ends.iter().take_while(|&&e| e <= cut).count();

            let mut it = FrameIter::new(&stream[..cut], MAX_FRAME_LIMIT);
            let first: Vec<Frame<'_>> = it.by_ref().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(&first[..], &frames[..whole_inside]);
            let consumed = it.consumed();
            prop_assert_eq!(consumed, if whole_inside == 0 { 0 } else { ends[whole_inside - 1] });

            // The tail asks for exactly the next frame's length once its len field is in.
            if let Some(&next_end) = ends.get(whole_inside) {
                let want = if cut - consumed >= 2 { next_end - consumed } else { HEADER_LEN };
                prop_assert_eq!(
                    parse(&stream[consumed..cut], MAX_FRAME_LIMIT),
                    Ok(Parsed::Incomplete { need: want })
                );
            }

            // Resuming on the full stream yields the rest.
            let rest: Vec<Frame<'_>> = FrameIter::new(&stream[consumed..], MAX_FRAME_LIMIT)
                .collect::<Result<_, _>>()
                .unwrap();
            prop_assert_eq!(&rest[..], &frames[whole_inside..]);
        }
    }
}
