//! The part of c2m's wire protocol v1 a peer speaks (see docs/protocol.md): HELLO
//! -> WELCOME, PING -> PONG, ECHO -> ECHO_REPLY, SEND -> NACK 7 (no routing, as in c2m serve),
//! RECEIPT ignored, BYE -> close, and the same fatal ERROR codes as c2m for bad input.
//!
//! Frame: u16 len (whole frame, header included), u8 kind, u8 flags; little-endian.

use std::time::{SystemTime, UNIX_EPOCH};

pub const HEADER_LEN: usize = 4;
/// c2m serve's default `--max-frame`.
pub const MAX_FRAME: usize = 4096;
/// What c2m serve announces by default; these peers never time a session out.
pub const HEARTBEAT_MS: u32 = 30_000;

const HELLO: u8 = 0x01;
const WELCOME: u8 = 0x81;
const PING: u8 = 0x02;
const PONG: u8 = 0x82;
const ECHO: u8 = 0x03;
const ECHO_REPLY: u8 = 0x83;
const SEND: u8 = 0x04;
const ACK: u8 = 0x84;
const DELIVER: u8 = 0x85;
const RECEIPT: u8 = 0x05;
const RECEIPT_NOTICE: u8 = 0x86;
const NACK: u8 = 0x87;
const BYE: u8 = 0x06;
const ERROR: u8 = 0xFF;

/// NACK code for a SEND: c2m does no routing yet, so every recipient is unknown.
const UNKNOWN_RECIPIENT: u16 = 7;

/// Fatal ERROR codes, with the text c2m sends beside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Malformed = 1,
    FrameSize = 2,
    UnknownKind = 3,
    NotLoggedIn = 4,
}

impl ErrorCode {
    fn text(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameSize => "frame_size",
            ErrorCode::UnknownKind => "unknown_kind",
            ErrorCode::NotLoggedIn => "not_logged_in",
        }
    }
}

/// What the connection does once the replies in `out` are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Open,
    /// ERROR or BYE: write what is queued, then close.
    Close,
}

/// Payload bounds per kind, `None` for a kind protocol v1 does not have.
fn payload_bounds(kind: u8) -> Option<(usize, usize)> {
    let any = MAX_FRAME;
    Some(match kind {
        HELLO | PING | PONG | RECEIPT | RECEIPT_NOTICE => (16, 16),
        WELCOME => (20, 20),
        ECHO | ECHO_REPLY => (0, any),
        SEND | DELIVER => (24, any),
        ACK => (8, 8),
        NACK => (10, 10),
        BYE => (0, 0),
        ERROR => (2, any),
        _ => return None,
    })
}

fn is_client_to_server(kind: u8) -> bool {
    matches!(kind, HELLO | PING | ECHO | SEND | RECEIPT | BYE)
}

/// Wall-clock nanoseconds, for WELCOME.
pub fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn put_header(out: &mut Vec<u8>, len: usize, kind: u8) {
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&[kind, 0]);
}

fn put_error(out: &mut Vec<u8>, code: ErrorCode) -> Verdict {
    let text = code.text().as_bytes();
    put_header(out, HEADER_LEN + 2 + text.len(), ERROR);
    out.extend_from_slice(&(code as u16).to_le_bytes());
    out.extend_from_slice(text);
    Verdict::Close
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    session_id: u64,
    logged_in: bool,
}

impl Session {
    pub fn new(session_id: u64) -> Session {
        Session { session_id, logged_in: false }
    }

    /// Handles the whole frames at the start of `input`, appending replies to `out`. Returns the
    /// bytes consumed (an incomplete frame stays for the next read) and what to do next. A bad
    /// header is refused as soon as its bytes are there, as c2m does, not when the frame is whole.
    pub fn on_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Verdict) {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            if rest.len() < 2 {
                return (at, Verdict::Open);
            }
            let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            if !(HEADER_LEN..=MAX_FRAME).contains(&len) {
                return (input.len(), put_error(out, ErrorCode::FrameSize));
            }
            let Some(&kind) = rest.get(2) else { return (at, Verdict::Open) };
            let Some((min, max)) = payload_bounds(kind) else {
                return (input.len(), put_error(out, ErrorCode::UnknownKind));
            };
            let Some(&flags) = rest.get(3) else { return (at, Verdict::Open) };
            if flags != 0 {
                return (input.len(), put_error(out, ErrorCode::Malformed));
            }
            let Some(frame) = rest.get(..len) else { return (at, Verdict::Open) };
            let payload = &frame[HEADER_LEN..];
            if !(min..=max).contains(&payload.len()) {
                return (input.len(), put_error(out, ErrorCode::Malformed));
            }
            at += len;
            if self.answer(kind, frame, out) == Verdict::Close {
                return (input.len(), Verdict::Close);
            }
        }
    }

    /// Answers one well-formed frame, in c2m serve's order of rules.
    fn answer(&mut self, kind: u8, frame: &[u8], out: &mut Vec<u8>) -> Verdict {
        let payload = &frame[HEADER_LEN..];
        match kind {
            HELLO if !self.logged_in => {
                self.logged_in = true;
                put_header(out, HEADER_LEN + 20, WELCOME);
                out.extend_from_slice(&self.session_id.to_le_bytes());
                out.extend_from_slice(&wall_ns().to_le_bytes());
                out.extend_from_slice(&HEARTBEAT_MS.to_le_bytes());
                Verdict::Open
            }
            HELLO => put_error(out, ErrorCode::Malformed),
            _ if !is_client_to_server(kind) => put_error(out, ErrorCode::UnknownKind),
            _ if !self.logged_in => put_error(out, ErrorCode::NotLoggedIn),
            PING | ECHO => {
                // PONG and ECHO_REPLY carry the request's payload unchanged.
                out.extend_from_slice(frame);
                let at = out.len() - frame.len();
                out[at + 2] = kind | 0x80;
                Verdict::Open
            }
            SEND => {
                put_header(out, HEADER_LEN + 10, NACK);
                out.extend_from_slice(&payload[8..16]);
                out.extend_from_slice(&UNKNOWN_RECIPIENT.to_le_bytes());
                Verdict::Open
            }
            BYE => Verdict::Close,
            _ => Verdict::Open, // RECEIPT: nothing to route.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        put_header(&mut f, HEADER_LEN + payload.len(), kind);
        f.extend_from_slice(payload);
        f
    }

    fn hello() -> Vec<u8> {
        frame(HELLO, &[7; 16])
    }

    /// Feeds `input` to a fresh session; the replies' (kind, payload) and the verdict.
    fn run(input: &[u8]) -> (Vec<(u8, Vec<u8>)>, usize, Verdict) {
        let mut out = Vec::new();
        let (used, verdict) = Session::new(42).on_bytes(input, &mut out);
        let mut frames = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let len = u16::from_le_bytes([out[at], out[at + 1]]) as usize;
            frames.push((out[at + 2], out[at + 4..at + len].to_vec()));
            at += len;
        }
        (frames, used, verdict)
    }

    fn error_code(input: &[u8]) -> u16 {
        let (frames, used, verdict) = run(input);
        assert_eq!((used, verdict), (input.len(), Verdict::Close));
        let (kind, payload) = frames.last().unwrap();
        assert_eq!(*kind, ERROR);
        u16::from_le_bytes([payload[0], payload[1]])
    }

    #[test]
    fn hello_gets_welcome_then_ping_pong_and_echo_come_back_unchanged() {
        let mut input = hello();
        input.extend(frame(PING, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
        input.extend(frame(ECHO, &[9; 60]));
        let (frames, used, verdict) = run(&input);
        assert_eq!((used, verdict), (input.len(), Verdict::Open));
        assert_eq!(frames[0].0, WELCOME);
        assert_eq!(frames[0].1[..8], 42u64.to_le_bytes());
        assert_eq!(frames[0].1[16..], HEARTBEAT_MS.to_le_bytes());
        assert_eq!(frames[1], (PONG, (1..=16).collect()));
        assert_eq!(frames[2], (ECHO_REPLY, vec![9; 60]));
    }

    #[test]
    fn an_incomplete_frame_is_left_for_the_next_read() {
        let mut input = hello();
        input.extend(&frame(ECHO, &[1; 100])[..50]);
        let (frames, used, verdict) = run(&input);
        assert_eq!((frames.len(), used, verdict), (1, 20, Verdict::Open));
    }

    #[test]
    fn bad_input_gets_c2m_error_codes() {
        assert_eq!(error_code(&[3, 0]), 2, "len below the header");
        assert_eq!(error_code(&4097u16.to_le_bytes()), 2, "len above max_frame, before its payload");
        assert_eq!(error_code(&[20, 0, 0x42]), 3, "unknown kind, before its payload");
        assert_eq!(error_code(&[20, 0, HELLO, 1]), 1, "nonzero flags");
        assert_eq!(error_code(&frame(HELLO, &[0; 15])), 1, "short HELLO");
        assert_eq!(error_code(&frame(PING, &[0; 16])), 4, "PING before HELLO");
        assert_eq!(error_code(&frame(BYE, &[])), 4, "BYE before HELLO");
        assert_eq!(error_code(&frame(WELCOME, &[0; 20])), 3, "a server kind from a client");
        assert_eq!(error_code(&[hello(), hello()].concat()), 1, "a second HELLO");
        assert_eq!(error_code(&[hello(), frame(PING, &[0; 17])].concat()), 1, "long PING");
        assert_eq!(error_code(&[hello(), frame(SEND, &[0; 23])].concat()), 1, "short SEND");
    }

    #[test]
    fn error_frames_carry_c2m_text() {
        let (frames, _, _) = run(&frame(PING, &[0; 16]));
        assert_eq!(frames, vec![(ERROR, [&4u16.to_le_bytes()[..], b"not_logged_in"].concat())]);
    }

    #[test]
    fn send_is_nacked_receipt_ignored_bye_closes() {
        let mut send = vec![0; 24];
        send[8..16].copy_from_slice(&99u64.to_le_bytes());
        let input = [hello(), frame(SEND, &send), frame(RECEIPT, &[0; 16]), frame(BYE, &[])].concat();
        let (frames, used, verdict) = run(&input);
        assert_eq!((used, verdict), (input.len(), Verdict::Close));
        assert_eq!(frames[1], (NACK, [&99u64.to_le_bytes()[..], &7u16.to_le_bytes()].concat()));
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn any_split_of_a_stream_gives_the_same_replies() {
        let input = [hello(), frame(PING, &[5; 16]), frame(ECHO, &[6; 300]), frame(ECHO, &[])].concat();
        let (whole, _, _) = run(&input);
        for cut in 0..input.len() {
            let mut s = Session::new(42);
            let mut out = Vec::new();
            let (used, _) = s.on_bytes(&input[..cut], &mut out);
            let mut rest = input[used..cut].to_vec();
            rest.extend(&input[cut..]);
            let (used2, verdict) = s.on_bytes(&rest, &mut out);
            assert_eq!((used2, verdict), (rest.len(), Verdict::Open));
            let kinds: Vec<u8> = whole.iter().map(|f| f.0).collect();
            assert_eq!(out.len(), whole.iter().map(|f| f.1.len() + 4).sum::<usize>(), "cut {cut} {kinds:?}");
        }
    }
}
