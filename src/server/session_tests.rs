//! Unit tests for the session state machine in `session.rs`: no socket and no ring. A session
//! lives in a real `SessionSlab`, is fed bytes with `on_bytes`, and its output is drained the way
//! the worker does it (`next_send`, mark `send_len`, then `sent`), partial sends included.

use proptest::prelude::*;

use super::session::{
    self, Env, INLINE_OUT, Request, RouteRequests, Session, Verdict, flag, next_send, on_bytes, sent, state,
};
use crate::proto::{self, ErrorCode, Frame, FrameIter, HEADER_LEN, Kind, encode_vec};
use crate::slab::SessionSlab;
use crate::stats::{CloseReason, WorkerStats};

const MAX_FRAME: usize = 4096;
const SLOT_BYTES: usize = 40 * 1024;
/// The slot's out area: the slot less its in area (`max_frame` bytes).
const OUT_AREA: usize = SLOT_BYTES - MAX_FRAME;
const SESSION_ID: u64 = 7;
const HEARTBEAT_MS: u32 = 30_000;
const WALL_NS: u64 = 123;
const USER: u64 = 0x00A1_1CE0;
const BIG: usize = 4000;
/// Wire size of the ECHO_REPLY to a BIG echo.
const BIG_REPLY: usize = HEADER_LEN + BIG;

// ---- harness ----

fn test_env<'a>(stats: &'a WorkerStats, requests: &'a RouteRequests, now_tick: u32) -> Env<'a> {
    Env {
        stats,
        max_frame: MAX_FRAME,
        heartbeat_ms: HEARTBEAT_MS,
        session_id: SESSION_ID,
        now_tick,
        wall_ns: || WALL_NS,
        requests,
    }
}

/// One session in a slab, plus the worker's counters and clock.
struct Harness {
    slab: SessionSlab<Session>,
    i: u32,
    stats: WorkerStats,
    /// Routing requests the session made (the worker drains them after every call; a test
    /// keeps them for the whole test).
    requests: RouteRequests,
    now_tick: u32,
}

impl Harness {
    /// An accepted session, waiting for HELLO.
    fn open() -> Self {
        let mut slab: SessionSlab<Session> = SessionSlab::new(4, SLOT_BYTES).unwrap();
        let i = slab.alloc().unwrap();
        slab.header_mut(i).state = state::OPEN;
        Harness { slab, i, stats: WorkerStats::default(), requests: RouteRequests::default(), now_tick: 1 }
    }

    /// A session that said HELLO and whose WELCOME has been sent.
    fn logged_in() -> Self {
        let mut h = Self::open();
        assert_eq!(h.feed(&hello(USER)), Verdict::Open);
        assert_eq!(kinds(&h.drain()), [Kind::Welcome]);
        assert_eq!(h.s().state, state::LOGGED_IN);
        h
    }

    fn feed(&mut self, bytes: &[u8]) -> Verdict {
        let env = test_env(&self.stats, &self.requests, self.now_tick);
        on_bytes(self.slab.session(self.i), &env, bytes)
    }

    fn s(&self) -> &Session {
        self.slab.header(self.i)
    }

    fn s_mut(&mut self) -> &mut Session {
        self.slab.header_mut(self.i)
    }

    /// Starts a send as the worker does: takes `next_send`'s bytes and marks them in flight.
    fn submit(&mut self) -> Option<Vec<u8>> {
        let v = self.slab.session(self.i);
        let bytes = next_send(v.header, v.slot, MAX_FRAME)?.to_vec();
        assert!(!bytes.is_empty(), "next_send never offers an empty send");
        v.header.send_len = bytes.len() as u32;
        Some(bytes)
    }

    /// The send in flight completed with `n` bytes sent.
    fn complete(&mut self, n: usize) {
        assert_ne!(self.s().send_len, 0, "no send in flight");
        assert!(n <= self.s().send_len as usize);
        sent(self.s_mut(), n as u32);
        assert_eq!(self.s().send_len, 0);
    }

    /// Sends everything queued, at most `chunk` bytes per send, and returns what went out.
    fn drain_by(&mut self, chunk: usize) -> Vec<u8> {
        assert!(chunk > 0);
        let mut out = Vec::new();
        while let Some(bytes) = self.submit() {
            let n = bytes.len().min(chunk);
            out.extend_from_slice(&bytes[..n]);
            self.complete(n);
        }
        assert!(!self.s().has_output(), "next_send said nothing is left, has_output disagrees");
        out
    }

    fn drain(&mut self) -> Vec<u8> {
        self.drain_by(usize::MAX)
    }

    /// The partial frame kept in the slot's in area.
    fn in_area(&mut self) -> Vec<u8> {
        let n = self.s().in_len as usize;
        let i = self.i;
        self.slab.slot_mut(i)[..n].to_vec()
    }

    fn errors(&self, code: ErrorCode) -> u64 {
        self.stats.protocol_errors[code.index()].get()
    }

    fn errors_total(&self) -> u64 {
        self.stats.protocol_errors.iter().map(|c| c.get()).sum()
    }

    fn frames_in(&self, kind: Kind) -> u64 {
        self.stats.frames_in[kind.index()].get()
    }

    fn frames_out(&self, kind: Kind) -> u64 {
        self.stats.frames_out[kind.index()].get()
    }

    /// Invariants that hold after every `on_bytes` call.
    fn check_invariants(&self) {
        let s = self.s();
        assert!((s.in_len as usize) < MAX_FRAME, "in_len {} >= max_frame", s.in_len);
        assert!(s.inline_len as usize <= INLINE_OUT);
        assert!(s.inline_sent <= s.inline_len);
        assert!(s.slot_out_len as usize <= OUT_AREA, "slot_out_len {} past the out area", s.slot_out_len);
        assert!(s.slot_out_sent <= s.slot_out_len);
    }
}

// ---- frames ----

fn hello(user_id: u64) -> Vec<u8> {
    encode_vec(&Frame::Hello { user_id, client_time_ns: 55 })
}

fn ping(seq: u64) -> Vec<u8> {
    encode_vec(&Frame::Ping { seq, t_ns: t_ns_of(seq) })
}

fn t_ns_of(seq: u64) -> u64 {
    0x1234_5678_0000 + seq * 3
}

fn echo(data: &[u8]) -> Vec<u8> {
    encode_vec(&Frame::Echo { data })
}

fn send(msg_id: u64) -> Vec<u8> {
    encode_vec(&Frame::Send { to_user: 99, msg_id, t_ns: 5, body: b"hi there" })
}

fn bye() -> Vec<u8> {
    encode_vec(&Frame::Bye)
}

/// A frame with any header: `len` is written as given, not computed.
fn raw(len: u16, kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = len.to_le_bytes().to_vec();
    v.extend([kind, flags]);
    v.extend_from_slice(payload);
    v
}

/// A frame with a correct `len` and any kind byte and payload.
fn raw_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    raw((HEADER_LEN + payload.len()) as u16, kind, 0, payload)
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Parses server output: whole frames, nothing left over.
fn parse_all(bytes: &[u8]) -> Vec<Frame<'_>> {
    let mut it = FrameIter::new(bytes, proto::MAX_FRAME_LIMIT);
    let frames: Vec<Frame<'_>> = it.by_ref().collect::<Result<_, _>>().expect("server output parses");
    assert!(it.remaining().is_empty(), "server output ends inside a frame");
    frames
}

fn kinds(bytes: &[u8]) -> Vec<Kind> {
    parse_all(bytes).iter().map(Frame::kind).collect()
}

fn pong_seqs(bytes: &[u8]) -> Vec<u64> {
    parse_all(bytes)
        .into_iter()
        .map(|f| match f {
            Frame::Pong { seq, t_ns } => {
                assert_eq!(t_ns, t_ns_of(seq));
                seq
            }
            other => panic!("expected PONG, got {other:?}"),
        })
        .collect()
}

/// Feeds `input` and checks the fatal-error contract: CloseAfterSend(ProtocolError), the
/// output ends with exactly one ERROR `code` (after any replies to frames before the bad one),
/// and the error is counted once, under `code`. Returns the frames before the ERROR.
fn expect_fatal(h: &mut Harness, input: &[u8], code: ErrorCode) -> Vec<Kind> {
    let verdict = h.feed(input);
    assert_eq!(verdict, Verdict::CloseAfterSend(CloseReason::ProtocolError), "input {input:02x?}");
    h.check_invariants();
    let out = h.drain();
    let frames = parse_all(&out);
    let (last, before) = frames.split_last().expect("an ERROR frame is sent");
    assert_eq!(*last, Frame::Error { code: code as u16, text: code.name().as_bytes() });
    assert!(before.iter().all(|f| f.kind() != Kind::Error), "one ERROR only");
    assert_eq!(h.errors(code), 1, "protocol_errors[{code:?}]");
    assert_eq!(h.errors_total(), 1, "no other error code counted");
    assert_eq!(h.frames_out(Kind::Error), 1);
    before.iter().map(Frame::kind).collect()
}

// ---- happy path ----

#[test]
fn hello_gets_welcome_and_logs_in() {
    let mut h = Harness::open();
    assert_eq!(h.feed(&hello(USER)), Verdict::Open);
    assert_eq!(h.s().state, state::LOGGED_IN);
    assert_eq!(h.s().user_id, USER);
    let out = h.drain();
    assert_eq!(
        parse_all(&out),
        [Frame::Welcome { session_id: SESSION_ID, server_time_ns: WALL_NS, heartbeat_ms: HEARTBEAT_MS }]
    );
    assert_eq!(h.frames_in(Kind::Hello), 1);
    assert_eq!(h.frames_out(Kind::Welcome), 1);
    assert_eq!(h.errors_total(), 0);
}

#[test]
fn login_and_pings_never_touch_the_slot() {
    let mut h = Harness::logged_in();
    for seq in 0..3 {
        assert_eq!(h.feed(&ping(seq)), Verdict::Open);
        assert_eq!(pong_seqs(&h.drain()), [seq]);
    }
    assert_eq!(h.slab.touched(h.i), 0, "small replies go to the inline outbox only");
    assert!(h.s().slot_idle());
}

#[test]
fn ping_gets_pong_with_same_seq_and_t_ns() {
    let mut h = Harness::logged_in();
    let (seq, t_ns) = (u64::MAX - 1, 0xDEAD_BEEF_0000_0001);
    assert_eq!(h.feed(&encode_vec(&Frame::Ping { seq, t_ns })), Verdict::Open);
    assert_eq!(parse_all(&h.drain()), [Frame::Pong { seq, t_ns }]);
    assert_eq!(h.frames_in(Kind::Ping), 1);
    assert_eq!(h.frames_out(Kind::Pong), 1);
}

#[test]
fn small_echo_is_answered_inline_with_same_bytes() {
    let mut h = Harness::logged_in();
    let data = b"the quick brown fox";
    assert_eq!(h.feed(&echo(data)), Verdict::Open);
    assert_eq!(h.s().inline_len as usize, HEADER_LEN + data.len());
    assert_eq!(h.s().slot_out_len, 0);
    assert_eq!(parse_all(&h.drain()), [Frame::EchoReply { data }]);
    assert_eq!(h.slab.touched(h.i), 0);
}

#[test]
fn empty_echo_gets_empty_echo_reply() {
    let mut h = Harness::logged_in();
    assert_eq!(h.feed(&echo(b"")), Verdict::Open);
    assert_eq!(parse_all(&h.drain()), [Frame::EchoReply { data: b"" }]);
}

#[test]
fn large_echo_goes_through_the_slot_out_area() {
    let mut h = Harness::logged_in();
    let data: Vec<u8> = (0..BIG).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(h.feed(&echo(&data)), Verdict::Open);
    assert_eq!(h.s().inline_len, 0, "a 4004-byte reply does not fit inline");
    assert_eq!(h.s().slot_out_len as usize, BIG_REPLY);
    assert!(h.slab.touched(h.i) > 0, "writing the out area marks the slot touched");
    assert!(h.slab.touched(h.i) >= MAX_FRAME + BIG_REPLY);
    let out = h.drain();
    assert_eq!(parse_all(&out), [Frame::EchoReply { data: &data }]);
    assert!(h.s().slot_idle(), "a drained out area is reset");
    assert_eq!(h.frames_out(Kind::EchoReply), 1);
}

#[test]
fn largest_echo_allowed_by_max_frame_is_answered() {
    let mut h = Harness::logged_in();
    let data = vec![0x5A; MAX_FRAME - HEADER_LEN];
    assert_eq!(h.feed(&echo(&data)), Verdict::Open);
    assert_eq!(parse_all(&h.drain()), [Frame::EchoReply { data: &data }]);
}

#[test]
fn send_becomes_a_routing_request_with_its_deliver_encoded() {
    let mut h = Harness::logged_in();
    let requests = RouteRequests::default();
    {
        let env = test_env(&h.stats, &requests, 5);
        assert_eq!(on_bytes(h.slab.session(h.i), &env, &send(4242)), Verdict::Open);
    }
    assert!(h.drain().is_empty(), "the ACK is the worker's, after routing");
    let list = requests.list.borrow();
    let Request::Send { to_user, msg_id, frame } = &list[0] else { panic!("{list:?}") };
    assert_eq!((*to_user, *msg_id), (99, 4242));
    let frames = requests.frames.borrow();
    assert_eq!(
        parse_all(&frames[frame.clone()]),
        [Frame::Deliver { from_user: USER, msg_id: 4242, t_ns: 5, body: b"hi there" }]
    );
    assert_eq!(requests.reserved.get(), HEADER_LEN + 10, "room promised for the ACK or NACK");
    assert_eq!(h.frames_in(Kind::Send), 1);
    let _ = ErrorCode::UnknownRecipient;
}

#[test]
fn receipt_is_accepted_silently() {
    let mut h = Harness::logged_in();
    let receipt = encode_vec(&Frame::Receipt { from_user: 3, msg_id: 4 });
    let requests = RouteRequests::default();
    let env = test_env(&h.stats, &requests, 5);
    assert_eq!(on_bytes(h.slab.session(h.i), &env, &receipt), Verdict::Open);
    assert_eq!(*env.requests.list.borrow(), [Request::Receipt { from_user: 3, msg_id: 4 }]);
    assert!(h.drain().is_empty());
    assert_eq!(h.frames_in(Kind::Receipt), 1);
}

#[test]
fn bye_closes_after_sending_what_is_queued() {
    let mut h = Harness::logged_in();
    assert_eq!(h.feed(&bye()), Verdict::CloseAfterSend(CloseReason::Bye));
    assert!(h.drain().is_empty(), "nothing is said back to BYE");
    assert_eq!(h.frames_in(Kind::Bye), 1);
}

#[test]
fn frames_after_bye_are_not_handled() {
    let mut h = Harness::logged_in();
    let input = cat(&[&bye(), &ping(1)]);
    assert_eq!(h.feed(&input), Verdict::CloseAfterSend(CloseReason::Bye));
    assert_eq!(h.frames_in(Kind::Ping), 0);
    assert!(h.drain().is_empty());
}

#[test]
fn a_pong_queued_before_bye_is_still_sent() {
    let mut h = Harness::logged_in();
    let input = cat(&[&ping(9), &bye()]);
    assert_eq!(h.feed(&input), Verdict::CloseAfterSend(CloseReason::Bye));
    assert_eq!(parse_all(&h.drain()), [Frame::Pong { seq: 9, t_ns: t_ns_of(9) }]);
}

#[test]
fn several_frames_in_one_call_are_answered_in_order() {
    let mut h = Harness::open();
    let input = cat(&[&hello(USER), &ping(1), &echo(b"abc"), &send(9), &ping(2)]);
    assert_eq!(h.feed(&input), Verdict::Open);
    let out = h.drain();
    assert_eq!(kinds(&out), [Kind::Welcome, Kind::Pong, Kind::EchoReply, Kind::Pong]);
}

#[test]
fn timed_out_queues_error_6() {
    let mut h = Harness::logged_in();
    let env = test_env(&h.stats, &h.requests, 99);
    let (_, mut out) = session::split(h.slab.session(h.i), MAX_FRAME);
    assert_eq!(session::timed_out(&mut out, &env), Verdict::CloseAfterSend(CloseReason::Timeout));
    let code = ErrorCode::Timeout;
    assert_eq!(parse_all(&h.drain()), [Frame::Error { code: code as u16, text: code.name().as_bytes() }]);
    assert_eq!(h.errors(code), 1);
}

#[test]
fn say_bye_queues_bye_and_closes_after_send() {
    let mut h = Harness::logged_in();
    let env = test_env(&h.stats, &h.requests, 99);
    let (_, mut out) = session::split(h.slab.session(h.i), MAX_FRAME);
    assert_eq!(session::say_bye(&mut out, &env), Verdict::CloseAfterSend(CloseReason::Shutdown));
    assert_eq!(parse_all(&h.drain()), [Frame::Bye]);
    assert_eq!(h.frames_out(Kind::Bye), 1);
}

// ---- fatal rules ----

#[test]
fn fatal_len_below_header_is_frame_size() {
    for len in 0..HEADER_LEN as u16 {
        let mut h = Harness::logged_in();
        expect_fatal(&mut h, &raw(len, Kind::Ping as u8, 0, &[0; 16]), ErrorCode::FrameSize);
    }
}

#[test]
fn fatal_len_above_max_frame_is_frame_size() {
    for len in [MAX_FRAME as u16 + 1, u16::MAX] {
        let mut h = Harness::logged_in();
        // Only the len field: the error does not wait for the body.
        expect_fatal(&mut h, &len.to_le_bytes(), ErrorCode::FrameSize);
    }
}

#[test]
fn fatal_unknown_kind() {
    let mut h = Harness::logged_in();
    expect_fatal(&mut h, &raw_frame(0x42, &[0; 16]), ErrorCode::UnknownKind);
}

#[test]
fn fatal_server_to_client_kind_sent_by_client() {
    let server_frames = [
        Frame::Welcome { session_id: 1, server_time_ns: 2, heartbeat_ms: 3 },
        Frame::Pong { seq: 1, t_ns: 2 },
        Frame::EchoReply { data: b"x" },
        Frame::Ack { msg_id: 1 },
        Frame::Deliver { from_user: 1, msg_id: 2, t_ns: 3, body: b"b" },
        Frame::ReceiptNotice { to_user: 1, msg_id: 2 },
        Frame::Nack { msg_id: 1, code: 7 },
        Frame::Error { code: 1, text: b"e" },
    ];
    for f in server_frames {
        assert!(!f.kind().is_client_to_server());
        let mut h = Harness::logged_in();
        expect_fatal(&mut h, &encode_vec(&f), ErrorCode::UnknownKind);
        // Also before HELLO: the kind is checked before the login.
        let mut h = Harness::open();
        expect_fatal(&mut h, &encode_vec(&f), ErrorCode::UnknownKind);
    }
}

#[test]
fn fatal_nonzero_flags_is_malformed() {
    for flags in [1u8, 0x80, 0xFF] {
        let mut h = Harness::logged_in();
        expect_fatal(&mut h, &raw(20, Kind::Ping as u8, flags, &[0; 16]), ErrorCode::Malformed);
    }
}

#[test]
fn fatal_short_hello_payload_is_malformed() {
    let mut h = Harness::open();
    expect_fatal(&mut h, &raw_frame(Kind::Hello as u8, &[1; 15]), ErrorCode::Malformed);
    assert_eq!(h.s().state, state::OPEN, "a bad HELLO does not log in");
}

#[test]
fn fatal_long_ping_payload_is_malformed() {
    let mut h = Harness::logged_in();
    expect_fatal(&mut h, &raw_frame(Kind::Ping as u8, &[1; 17]), ErrorCode::Malformed);
}

#[test]
fn fatal_frame_before_hello_is_not_logged_in() {
    for input in [ping(1), echo(b"hi"), send(1), encode_vec(&Frame::Receipt { from_user: 1, msg_id: 2 })] {
        let mut h = Harness::open();
        expect_fatal(&mut h, &input, ErrorCode::NotLoggedIn);
        assert_eq!(h.s().state, state::OPEN);
    }
}

#[test]
fn fatal_second_hello_is_malformed() {
    let mut h = Harness::logged_in();
    expect_fatal(&mut h, &hello(USER + 1), ErrorCode::Malformed);
    assert_eq!(h.s().user_id, USER, "the second HELLO does not change the user");
}

#[test]
fn two_hellos_in_one_call_give_welcome_then_error() {
    let mut h = Harness::open();
    let before = expect_fatal(&mut h, &cat(&[&hello(1), &hello(2)]), ErrorCode::Malformed);
    assert_eq!(before, [Kind::Welcome]);
}

#[test]
fn replies_before_a_bad_frame_are_kept_and_frames_after_it_ignored() {
    let mut h = Harness::logged_in();
    let input = cat(&[&ping(1), &echo(b"e"), &raw_frame(0x42, &[]), &ping(2)]);
    let before = expect_fatal(&mut h, &input, ErrorCode::UnknownKind);
    assert_eq!(before, [Kind::Pong, Kind::EchoReply]);
    assert_eq!(h.frames_in(Kind::Ping), 1, "the PING after the bad frame is not handled");
}

#[test]
fn fatal_header_errors_are_caught_as_soon_as_the_bad_byte_arrives() {
    // (input, index of the byte that makes it bad, code). Fed one byte per call, the verdict
    // stays Open until that byte, even though the frame is far from complete: slowloris-safe.
    let cases: Vec<(Vec<u8>, usize, ErrorCode)> = vec![
        (raw(2, Kind::Ping as u8, 0, &[0; 16]), 1, ErrorCode::FrameSize),
        (raw(MAX_FRAME as u16 + 1, Kind::Echo as u8, 0, &[0; 16]), 1, ErrorCode::FrameSize),
        (raw(20, 0x42, 0, &[0; 16]), 2, ErrorCode::UnknownKind),
        (raw(20, Kind::Pong as u8, 0, &[0; 16]), 19, ErrorCode::UnknownKind),
        (raw(20, Kind::Ping as u8, 4, &[0; 16]), 3, ErrorCode::Malformed),
        (raw_frame(Kind::Ping as u8, &[0; 17]), 20, ErrorCode::Malformed),
        (raw(1000, Kind::Echo as u8, 9, &[0; 996]), 3, ErrorCode::Malformed),
    ];
    for (input, bad_at, code) in cases {
        let mut h = Harness::logged_in();
        for (at, b) in input[..bad_at].iter().enumerate() {
            assert_eq!(h.feed(&[*b]), Verdict::Open, "{input:02x?} byte {at}");
            assert_eq!(h.s().in_len as usize, at + 1, "the partial frame is kept");
        }
        expect_fatal(&mut h, &input[bad_at..bad_at + 1], code);
    }
}

// ---- frames split across calls ----

/// HELLO, PING, small ECHO, large ECHO, SEND, PING: every reply path and both outboxes.
fn split_stream() -> (Vec<u8>, Vec<usize>) {
    let big: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
    let frames = [hello(USER), ping(1), echo(b"split me"), echo(&big), send(77), ping(2)];
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for f in &frames {
        stream.extend_from_slice(f);
        ends.push(stream.len());
    }
    (stream, ends)
}

/// Output of the stream fed in one call.
fn unsplit_output(stream: &[u8]) -> Vec<u8> {
    let mut h = Harness::open();
    assert_eq!(h.feed(stream), Verdict::Open);
    assert_eq!(h.s().in_len, 0);
    let out = h.drain();
    assert_eq!(kinds(&out), [Kind::Welcome, Kind::Pong, Kind::EchoReply, Kind::EchoReply, Kind::Pong]);
    out
}

/// Start of the frame that byte offset `at` is inside of (or `at` itself on a boundary).
fn frame_start(ends: &[usize], at: usize) -> usize {
    ends.iter().copied().take_while(|&e| e <= at).last().unwrap_or(0)
}

#[test]
fn split_at_every_byte_boundary_gives_the_unsplit_output() {
    let (stream, ends) = split_stream();
    let expected = unsplit_output(&stream);
    for k in 0..=stream.len() {
        let mut h = Harness::open();
        assert_eq!(h.feed(&stream[..k]), Verdict::Open, "k={k}");
        h.check_invariants();
        let start = frame_start(&ends, k);
        assert_eq!(h.s().in_len as usize, k - start, "k={k}: the tail is kept in the slot");
        assert_eq!(h.in_area(), &stream[start..k], "k={k}: the tail's bytes");
        assert_eq!(h.feed(&stream[k..]), Verdict::Open, "k={k}");
        h.check_invariants();
        assert_eq!(h.s().in_len, 0, "k={k}");
        assert_eq!(h.drain(), expected, "k={k}");
    }
}

#[test]
fn split_with_output_drained_between_the_calls_gives_the_unsplit_output() {
    let (stream, _) = split_stream();
    let expected = unsplit_output(&stream);
    for k in (0..=stream.len()).step_by(7) {
        let mut h = Harness::open();
        assert_eq!(h.feed(&stream[..k]), Verdict::Open, "k={k}");
        let mut out = h.drain_by(13);
        assert_eq!(h.feed(&stream[k..]), Verdict::Open, "k={k}");
        out.extend(h.drain_by(13));
        assert_eq!(out, expected, "k={k}");
    }
}

#[test]
fn one_byte_per_call_gives_the_unsplit_output() {
    let (stream, ends) = split_stream();
    let expected = unsplit_output(&stream);
    let mut h = Harness::open();
    for (at, b) in stream.iter().enumerate() {
        assert_eq!(h.feed(&[*b]), Verdict::Open, "byte {at}");
        h.check_invariants();
        let done = at + 1;
        assert_eq!(h.s().in_len as usize, done - frame_start(&ends, done), "byte {at}");
    }
    assert_eq!(h.drain(), expected);
    assert_eq!(h.frames_in(Kind::Ping), 2);
    assert_eq!(h.frames_in(Kind::Echo), 2);
}

#[test]
fn partial_frame_keeps_the_slot_busy_until_completed() {
    let mut h = Harness::logged_in();
    let p = ping(5);
    assert_eq!(h.feed(&p[..7]), Verdict::Open);
    assert!(!h.s().slot_idle());
    assert!(h.slab.touched(h.i) > 0, "the kept tail marks the slot touched");
    assert!(h.drain().is_empty());
    assert_eq!(h.feed(&p[7..]), Verdict::Open);
    assert!(h.s().slot_idle());
    assert_eq!(pong_seqs(&h.drain()), [5]);
}

#[test]
fn empty_input_changes_nothing() {
    let mut h = Harness::logged_in();
    assert_eq!(h.feed(&[]), Verdict::Open);
    assert_eq!(h.feed(&ping(1)[..3]), Verdict::Open);
    assert_eq!(h.feed(&[]), Verdict::Open);
    assert_eq!(h.s().in_len, 3);
    assert_eq!(h.feed(&ping(1)[3..]), Verdict::Open);
    assert_eq!(pong_seqs(&h.drain()), [1]);
}

// ---- after a fatal error ----

#[test]
fn input_is_ignored_after_a_fatal_error() {
    let mut h = Harness::logged_in();
    expect_fatal(&mut h, &raw_frame(0x42, &[]), ErrorCode::UnknownKind);
    // What the worker does on CloseAfterSend.
    h.s_mut().flags |= flag::CLOSE_AFTER_SEND;
    assert_eq!(h.feed(&ping(1)), Verdict::Open);
    assert_eq!(h.feed(&ping(2)[..5]), Verdict::Open);
    assert!(h.drain().is_empty(), "no PONG after the ERROR");
    assert_eq!(h.frames_in(Kind::Ping), 0);
    assert_eq!(h.s().in_len, 0, "ignored input is not kept either");
    assert_eq!(h.errors_total(), 1);
}

#[test]
fn input_is_ignored_after_a_fatal_error_in_a_completed_partial_frame() {
    let mut h = Harness::logged_in();
    let bad = raw_frame(Kind::Ping as u8, &[0; 17]);
    assert_eq!(h.feed(&bad[..10]), Verdict::Open);
    expect_fatal(&mut h, &bad[10..], ErrorCode::Malformed);
    h.s_mut().flags |= flag::CLOSE_AFTER_SEND;
    assert_eq!(h.feed(&ping(1)), Verdict::Open);
    assert!(h.drain().is_empty());
    assert_eq!(h.frames_in(Kind::Ping), 0);
}

#[test]
fn input_is_ignored_during_teardown() {
    let mut h = Harness::logged_in();
    h.s_mut().flags |= flag::CLOSED;
    assert_eq!(h.feed(&ping(1)), Verdict::Open);
    assert!(h.drain().is_empty());
    assert_eq!(h.frames_in(Kind::Ping), 0);
}

// ---- output order ----

#[test]
fn ten_pings_overflow_inline_into_the_slot_in_order() {
    let mut h = Harness::logged_in();
    let input: Vec<u8> = (0..10).flat_map(ping).collect();
    assert_eq!(h.feed(&input), Verdict::Open);
    let pong = Frame::Pong { seq: 0, t_ns: 0 }.encoded_len();
    let inline_pongs = INLINE_OUT / pong;
    assert_eq!(h.s().inline_len as usize, inline_pongs * pong);
    assert_eq!(h.s().slot_out_len as usize, (10 - inline_pongs) * pong);
    assert_eq!(pong_seqs(&h.drain()), (0..10).collect::<Vec<_>>());
    assert!(h.s().slot_idle());
}

#[test]
fn ten_pings_in_order_with_partial_sends() {
    for chunk in [1, 3, 7, 19, 20, 21, 79, 80, 81] {
        let mut h = Harness::logged_in();
        let input: Vec<u8> = (0..10).flat_map(ping).collect();
        assert_eq!(h.feed(&input), Verdict::Open);
        assert_eq!(pong_seqs(&h.drain_by(chunk)), (0..10).collect::<Vec<_>>(), "chunk {chunk}");
    }
}

#[test]
fn order_kept_while_an_inline_send_is_in_flight() {
    let mut h = Harness::logged_in();
    let pings = |r: std::ops::Range<u64>| -> Vec<u8> { r.flat_map(ping).collect() };
    assert_eq!(h.feed(&pings(0..3)), Verdict::Open);
    let first = h.submit().unwrap();
    assert_eq!(first.len(), 60);
    assert!(h.submit().is_none(), "one send in flight at a time");
    // More frames while the send is in flight: one more PONG fits inline, the rest go to the slot.
    assert_eq!(h.feed(&pings(3..7)), Verdict::Open);
    assert_eq!(h.s().inline_len as usize, INLINE_OUT);
    assert_eq!(h.s().slot_out_len, 60);
    // The send completes partly.
    h.complete(25);
    let mut out = first[..25].to_vec();
    out.extend(h.drain_by(7));
    // The slot drained: new small replies go inline again.
    assert_eq!(h.feed(&pings(7..9)), Verdict::Open);
    assert_eq!(h.s().slot_out_len, 0);
    out.extend(h.drain());
    assert_eq!(pong_seqs(&out), (0..9).collect::<Vec<_>>());
}

#[test]
fn order_kept_while_more_frames_arrive_between_partial_sends() {
    let mut h = Harness::logged_in();
    let mut out = Vec::new();
    let mut seq = 0u64;
    for round in 0..40 {
        // Two or three PINGs, sometimes a large ECHO between them.
        let mut input = ping(seq);
        seq += 1;
        if round % 5 == 0 {
            input.extend(echo(&[round as u8; 300]));
        }
        input.extend(ping(seq));
        seq += 1;
        assert_eq!(h.feed(&input), Verdict::Open, "round {round}");
        h.check_invariants();
        // One partial send per round, so output piles up a little and drains slowly.
        if let Some(bytes) = h.submit() {
            let n = bytes.len().min(17 + round);
            out.extend_from_slice(&bytes[..n]);
            h.complete(n);
        }
    }
    out.extend(h.drain());
    let mut pongs = Vec::new();
    let mut echoes = 0;
    for f in parse_all(&out) {
        match f {
            Frame::Pong { seq, .. } => pongs.push(seq),
            Frame::EchoReply { data } => {
                assert_eq!(data, &[(echoes * 5) as u8; 300][..]);
                assert_eq!(pongs.len(), echoes * 10 + 1, "the echo reply sits between its PINGs' PONGs");
                echoes += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pongs, (0..seq).collect::<Vec<_>>());
    assert_eq!(echoes, 8);
}

#[test]
fn replies_queue_behind_a_slot_send_in_flight() {
    let mut h = Harness::logged_in();
    let data = vec![0xEE; BIG];
    assert_eq!(h.feed(&echo(&data)), Verdict::Open);
    let first = h.submit().unwrap();
    assert_eq!(first.len(), BIG_REPLY);
    assert_eq!(h.feed(&cat(&[&ping(1), &ping(2)])), Verdict::Open);
    assert_eq!(h.s().inline_len, 0, "PONGs must not jump ahead of the queued ECHO_REPLY");
    h.complete(1000);
    let mut out = first[..1000].to_vec();
    out.extend(h.drain_by(999));
    let frames = parse_all(&out);
    assert_eq!(
        frames,
        [
            Frame::EchoReply { data: &data },
            Frame::Pong { seq: 1, t_ns: t_ns_of(1) },
            Frame::Pong { seq: 2, t_ns: t_ns_of(2) }
        ]
    );
}

#[test]
fn inline_bytes_go_before_slot_bytes() {
    let mut h = Harness::logged_in();
    let data = vec![1; 500];
    let input = cat(&[&ping(1), &echo(&data), &ping(2)]);
    assert_eq!(h.feed(&input), Verdict::Open);
    assert_eq!(h.s().inline_len, 20, "PONG 1 inline");
    assert_eq!(h.s().slot_out_len as usize, 504 + 20, "ECHO_REPLY and PONG 2 in the slot");
    assert_eq!(kinds(&h.drain_by(11)), [Kind::Pong, Kind::EchoReply, Kind::Pong]);
}

// ---- slow consumer and the out area ----

#[test]
fn a_full_out_area_blocks_at_the_frame_whose_reply_does_not_fit() {
    let mut h = Harness::logged_in();
    let fits = OUT_AREA / BIG_REPLY;
    let mut verdict = Verdict::Open;
    let mut fed = 0;
    while verdict == Verdict::Open && fed < 50 {
        verdict = h.feed(&echo(&[fed as u8; BIG]));
        h.check_invariants();
        fed += 1;
    }
    assert_eq!(verdict, Verdict::Blocked(0), "nothing of the last input was handled");
    assert_eq!(fed, fits + 1, "blocked on the first reply that does not fit");
    assert_eq!(h.s().slot_out_len as usize, fits * BIG_REPLY);
    assert_eq!(h.frames_out(Kind::EchoReply), fits as u64);
    assert_eq!(h.frames_in(Kind::Echo), fits as u64, "the blocked frame is not counted as handled");
    // Once the replies are sent, the same input goes through, in order.
    let mut out = h.drain();
    assert_eq!(h.feed(&echo(&[fits as u8; BIG])), Verdict::Open);
    out.extend(h.drain());
    let frames = parse_all(&out);
    assert_eq!(frames.len(), fits + 1);
    for (n, f) in frames.into_iter().enumerate() {
        assert_eq!(f, Frame::EchoReply { data: &[n as u8; BIG] });
    }
}

#[test]
fn a_burst_of_small_frames_blocks_and_resumes_where_it_stopped() {
    let mut h = Harness::logged_in();
    let input: Vec<u8> = (0..3000).flat_map(ping).collect();
    let pong = 20;
    let first = INLINE_OUT / pong + OUT_AREA / pong;
    assert_eq!(h.feed(&input), Verdict::Blocked(first * 20), "the PINGs whose PONGs fit were handled");
    h.check_invariants();
    assert_eq!(h.frames_out(Kind::Pong), first as u64);
    // The worker feeds the rest again each time sends make room, as often as it takes.
    let mut out = Vec::new();
    let mut at = first * 20;
    while at < input.len() {
        out.extend(h.drain());
        match h.feed(&input[at..]) {
            Verdict::Blocked(done) => at += done,
            Verdict::Open => at = input.len(),
            other => panic!("unexpected {other:?}"),
        }
        h.check_invariants();
    }
    out.extend(h.drain());
    assert_eq!(pong_seqs(&out), (0..3000).collect::<Vec<_>>());
    assert_eq!(h.frames_in(Kind::Ping), 3000);
}

#[test]
fn a_partial_frame_completed_into_a_full_out_area_stays_in_the_slot() {
    let mut h = Harness::logged_in();
    let fits = OUT_AREA / BIG_REPLY;
    for n in 0..fits {
        assert_eq!(h.feed(&echo(&[n as u8; BIG])), Verdict::Open);
    }
    let next = echo(&[fits as u8; BIG]);
    assert_eq!(h.feed(&next[..100]), Verdict::Open, "a partial frame is kept");
    // Its end arrives while there is no room for its reply: the bytes taken are reported and
    // the whole frame waits in the in area.
    assert_eq!(h.feed(&next[100..]), Verdict::Blocked(next.len() - 100));
    assert_eq!(h.s().in_len as usize, next.len());
    let mut out = h.drain();
    assert_eq!(h.feed(&[]), Verdict::Open, "fed again with nothing new, the kept frame goes through");
    out.extend(h.drain());
    assert_eq!(parse_all(&out).len(), fits + 1);
    assert_eq!(h.s().in_len, 0);
}

#[test]
fn out_area_compacts_after_a_partial_send() {
    let mut h = Harness::logged_in();
    let fits = OUT_AREA / BIG_REPLY;
    for n in 0..fits {
        assert_eq!(h.feed(&echo(&[n as u8; BIG])), Verdict::Open);
    }
    let bytes = h.submit().unwrap();
    let n = 3 * BIG_REPLY + 100;
    let mut out = bytes[..n].to_vec();
    h.complete(n);
    // No send in flight, some bytes sent: the next reply makes room by moving the unsent part.
    for m in fits..fits + 3 {
        assert_eq!(h.feed(&echo(&[m as u8; BIG])), Verdict::Open, "echo {m}");
        h.check_invariants();
    }
    out.extend(h.drain_by(5000));
    let frames = parse_all(&out);
    assert_eq!(frames.len(), fits + 3);
    for (m, f) in frames.into_iter().enumerate() {
        assert_eq!(f, Frame::EchoReply { data: &[m as u8; BIG] }, "reply {m}");
    }
}

#[test]
fn the_out_area_rewinds_when_a_send_completes_with_more_queued() {
    // The worker's order: a send is in flight, another reply is queued behind it, the send
    // completes and the area is rewound before the next send. A reader that keeps up so never
    // runs out of room, however many replies it gets in all (40 x 4004 bytes here).
    let mut h = Harness::logged_in();
    let mut out = Vec::new();
    assert_eq!(h.feed(&echo(&[0; BIG])), Verdict::Open);
    for m in 1..40u8 {
        let in_flight = h.submit().expect("a reply to send");
        assert_eq!(h.feed(&echo(&[m; BIG])), Verdict::Open, "echo {m}");
        out.extend_from_slice(&in_flight);
        h.complete(in_flight.len());
        let i = h.i;
        let view = h.slab.session(i);
        super::session::rewind_out_area(view.header, view.slot, MAX_FRAME);
        h.check_invariants();
    }
    out.extend(h.drain_by(5000));
    let frames = parse_all(&out);
    assert_eq!(frames.len(), 40);
    for (m, f) in frames.into_iter().enumerate() {
        assert_eq!(f, Frame::EchoReply { data: &[m as u8; BIG] });
    }
}

#[test]
fn out_area_is_not_compacted_under_a_send_in_flight() {
    let mut h = Harness::logged_in();
    let fits = OUT_AREA / BIG_REPLY;
    for n in 0..fits {
        assert_eq!(h.feed(&echo(&[n as u8; BIG])), Verdict::Open);
    }
    let bytes = h.submit().unwrap();
    h.complete(2 * BIG_REPLY);
    let in_flight = h.submit().unwrap();
    assert_eq!(in_flight, bytes[2 * BIG_REPLY..]);
    // The area is full and a send reads it: the reply cannot be placed.
    assert_eq!(h.feed(&echo(&[0xAB; BIG])), Verdict::Blocked(0));
    let s = *h.s();
    let i = h.i;
    let start = MAX_FRAME + s.slot_out_sent as usize;
    assert_eq!(
        &h.slab.slot_mut(i)[start..start + in_flight.len()],
        &in_flight[..],
        "the bytes under the send in flight did not move"
    );
}

// ---- heartbeat base ----

#[test]
fn last_frame_tick_moves_on_whole_frames_only() {
    let mut h = Harness::logged_in();
    assert_eq!(h.s().last_frame_tick, 1);
    let (p1, p2) = (ping(1), ping(2));
    h.now_tick = 5;
    assert_eq!(h.feed(&p1[..10]), Verdict::Open);
    assert_eq!(h.s().last_frame_tick, 1, "a partial frame is not activity");
    h.now_tick = 6;
    assert_eq!(h.feed(&p1[10..19]), Verdict::Open);
    assert_eq!(h.s().last_frame_tick, 1);
    h.now_tick = 9;
    assert_eq!(h.feed(&cat(&[&p1[19..], &p2[..3]])), Verdict::Open);
    assert_eq!(h.s().last_frame_tick, 9, "the completed frame counts");
    h.now_tick = 12;
    assert_eq!(h.feed(&p2[3..]), Verdict::Open);
    assert_eq!(h.s().last_frame_tick, 12);
    assert_eq!(pong_seqs(&h.drain()), [1, 2]);
}

#[test]
fn slowloris_trickle_never_refreshes_last_frame_tick() {
    let mut h = Harness::logged_in();
    let e = echo(&[3; BIG]);
    for (at, b) in e[..e.len() - 1].iter().enumerate() {
        h.now_tick = 2 + at as u32;
        assert_eq!(h.feed(&[*b]), Verdict::Open);
        assert_eq!(h.s().last_frame_tick, 1, "byte {at}");
    }
    h.now_tick = 50_000;
    assert_eq!(h.feed(&e[e.len() - 1..]), Verdict::Open);
    assert_eq!(h.s().last_frame_tick, 50_000);
}

#[test]
fn partial_hello_is_not_activity_on_an_open_session() {
    let mut h = Harness::open();
    let hi = hello(USER);
    h.now_tick = 3;
    assert_eq!(h.feed(&hi[..10]), Verdict::Open);
    assert_eq!(h.s().last_frame_tick, 0);
    assert_eq!(h.s().state, state::OPEN);
    h.now_tick = 4;
    assert_eq!(h.feed(&hi[10..]), Verdict::Open);
    assert_eq!(h.s().last_frame_tick, 4);
    assert_eq!(h.s().state, state::LOGGED_IN);
}

// ---- properties ----

/// A client frame, valid or not quite: what a real (or buggy) client might send.
fn client_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<(u64, u64)>().prop_map(|(seq, t_ns)| encode_vec(&Frame::Ping { seq, t_ns })),
        proptest::collection::vec(any::<u8>(), 0..2000).prop_map(|d| echo(&d)),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..100))
            .prop_map(|(msg_id, body)| encode_vec(&Frame::Send { to_user: 1, msg_id, t_ns: 2, body: &body })),
        any::<(u64, u64)>().prop_map(|(from_user, msg_id)| encode_vec(&Frame::Receipt { from_user, msg_id })),
    ]
}

/// Cuts `stream` into pieces at the (sorted, deduplicated) positions picked by `cuts`.
fn cut(stream: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
    at.push(0);
    at.push(stream.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| stream[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any chunks fed in sequence never panic; in_len stays below max_frame and the outboxes
    /// within bounds. The verdict is acted on as the worker would.
    #[test]
    fn prop_arbitrary_chunks_never_panic(
        chunks in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..700), any::<bool>()),
            0..24,
        ),
        logged_in in any::<bool>(),
    ) {
        let mut h = if logged_in { Harness::logged_in() } else { Harness::open() };
        for (chunk, drain) in &chunks {
            let verdict = h.feed(chunk);
            h.check_invariants();
            prop_assert!(h.s().in_len as usize <= MAX_FRAME);
            match verdict {
                Verdict::Open => {}
                Verdict::CloseAfterSend(_) => h.s_mut().flags |= flag::CLOSE_AFTER_SEND,
                Verdict::CloseNow(_) | Verdict::Blocked(_) => break,
            }
            if *drain {
                let out = h.drain_by(1 + chunk.len());
                parse_all(&out);
            }
        }
    }

    /// Arbitrary chunks that start with a valid login and a few valid frames: gets past the
    /// first header check far more often than pure noise does.
    #[test]
    fn prop_valid_prefix_then_noise_never_panics(
        frames in proptest::collection::vec(client_frame(), 0..6),
        noise in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = hello(USER);
        for f in &frames {
            stream.extend_from_slice(f);
        }
        stream.extend_from_slice(&noise);
        let mut h = Harness::open();
        for chunk in cut(&stream, &cuts) {
            let verdict = h.feed(&chunk);
            h.check_invariants();
            match verdict {
                Verdict::Open => {}
                Verdict::CloseAfterSend(_) => h.s_mut().flags |= flag::CLOSE_AFTER_SEND,
                Verdict::CloseNow(_) | Verdict::Blocked(_) => break,
            }
        }
        parse_all(&h.drain());
    }

    /// Valid frames cut at random places and drained with random partial sends give exactly
    /// the output of the unsplit stream.
    #[test]
    fn prop_random_splits_give_the_unsplit_output(
        frames in proptest::collection::vec(client_frame(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
        chunk in 1usize..5000,
    ) {
        let mut stream = hello(USER);
        for f in &frames {
            stream.extend_from_slice(f);
        }
        let mut whole = Harness::open();
        prop_assert_eq!(whole.feed(&stream), Verdict::Open);
        let expected = whole.drain();

        let mut h = Harness::open();
        let mut out = Vec::new();
        for piece in cut(&stream, &cuts) {
            prop_assert_eq!(h.feed(&piece), Verdict::Open);
            h.check_invariants();
            out.extend(h.drain_by(chunk));
        }
        prop_assert_eq!(h.s().in_len, 0);
        prop_assert_eq!(out, expected);
    }
}
