//! Protocol v1 against a real `c2m serve` process: every fatal error a client can provoke gets
//! its ERROR code, is counted under that code, and ends the connection; timeouts hold against
//! silent and trickling (slowloris) peers; resets mid-frame are counted as peer closes; and a
//! well-behaved session beside all of that still gets its replies. Every test ends by checking
//! that no session, slab slot or direct descriptor was leaked.

mod common;

use std::thread::sleep;
use std::time::{Duration, Instant};

use c2m::client::BlockingClient;
use c2m::proto::{ErrorCode, Frame, encode_vec};
use common::*;

const HELLO_TIMEOUT_MS: u64 = 800;
const HEARTBEAT_MS: u64 = 500;

/// A server with short timeouts; `--max-sessions` kept small so many servers start quickly side by
/// side (tests run in parallel).
fn start() -> ServerProcess {
    ServerProcess::start(&[
        "--workers",
        "2",
        "--hello-timeout",
        "800ms",
        "--heartbeat",
        "500ms",
        "--max-sessions",
        "1000",
    ])
}

/// A case about the kernel data plane's own machinery (its receive buffer ring): on xdp there is
/// none to test, and the test says so on stderr.
fn skipped_on_xdp(what: &str) -> bool {
    let skip = xdp_under_test();
    if skip {
        eprintln!("not run on the xdp data plane: it has no {what}");
    }
    skip
}

/// Waits until `pred` holds on a scrape, at most `timeout`; returns that scrape.
fn wait_for(server: &ServerProcess, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = server.scrape();
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{text}");
        sleep(Duration::from_millis(25));
    }
}

fn errors_with_code(text: &str, code: ErrorCode) -> f64 {
    sum_where(text, "c2m_protocol_errors_total", &format!("code=\"{}\"", code as u16))
}

fn closed_with_reason(text: &str, reason: &str) -> f64 {
    sum_where(text, "c2m_sessions_closed_total", &format!("reason=\"{reason}\""))
}

/// Waits until exactly `n` errors of `code` (and no other protocol error) were counted and `n`
/// sessions were closed for `reason`.
fn expect_counted(server: &ServerProcess, code: ErrorCode, n: f64, reason: &str) {
    let text = wait_for(server, &format!("{n} x error {code:?}, closed {reason}"), Duration::from_secs(5), |t| {
        errors_with_code(t, code) >= n && closed_with_reason(t, reason) >= n
    });
    assert_eq!(errors_with_code(&text, code), n, "{text}");
    assert_eq!(sum(&text, "c2m_protocol_errors_total"), n, "no other protocol error\n{text}");
    assert_eq!(closed_with_reason(&text, reason), n, "{text}");
    assert_eq!(sum_where(&text, "c2m_frames_out_total", "kind=\"error\""), n, "one ERROR frame each\n{text}");
}

/// One connection sends `bytes` and must get ERROR `want`, then EOF.
fn send_expect_error(server: &ServerProcess, bytes: &[u8], want: ErrorCode) {
    let mut c = server.client();
    c.send_raw(bytes).unwrap();
    assert_eq!(expect_error(&mut c, Duration::from_secs(5)), want as u16, "answer to {bytes:02x?}");
    expect_closed(&mut c);
}

/// A fresh server; one connection sends `bytes`; ERROR `want`, close, counted, nothing leaked.
fn bad_input_case(bytes: &[u8], want: ErrorCode) {
    let server = start();
    send_expect_error(&server, bytes, want);
    expect_counted(&server, want, 1.0, "protocol_error");
    assert_no_leaks(&server);
}

fn hello(user_id: u64) -> Vec<u8> {
    encode_vec(&Frame::Hello { user_id, client_time_ns: 42 })
}

fn with_flags(mut frame: Vec<u8>, flags: u8) -> Vec<u8> {
    frame[3] = flags;
    frame
}

fn ping(seq: u64) -> Vec<u8> {
    encode_vec(&Frame::Ping { seq, t_ns: seq * 3 })
}

fn expect_pong(c: &mut BlockingClient, seq: u64) {
    let f = expect_frame(c);
    assert_eq!(f.frame(), Frame::Pong { seq, t_ns: seq * 3 });
}

/// Every server-to-client kind, validly encoded.
fn server_kinds() -> Vec<Vec<u8>> {
    [
        Frame::Welcome { session_id: 1, server_time_ns: 2, heartbeat_ms: 3 },
        Frame::Pong { seq: 1, t_ns: 2 },
        Frame::EchoReply { data: b"x" },
        Frame::Ack { msg_id: 1 },
        Frame::Deliver { from_user: 1, msg_id: 2, t_ns: 3, body: b"hi" },
        Frame::ReceiptNotice { to_user: 1, msg_id: 2 },
        Frame::Nack { msg_id: 1, code: 7 },
        Frame::Error { code: 1, text: b"no" },
    ]
    .iter()
    .map(encode_vec)
    .collect()
}

// ---- header errors ----

#[test]
fn length_below_header_is_error_2() {
    bad_input_case(&[3, 0, 1, 0], ErrorCode::FrameSize);
}

#[test]
fn length_above_max_frame_is_error_2() {
    bad_input_case(&[0xff, 0xff, 1, 0], ErrorCode::FrameSize);
}

#[test]
fn one_byte_over_max_frame_is_error_2_before_its_payload() {
    // 4097 > 4096: rejected from the header alone, the payload never sent.
    bad_input_case(&[0x01, 0x10, 3, 0], ErrorCode::FrameSize);
}

#[test]
fn nonzero_flags_on_hello_is_error_1() {
    bad_input_case(&with_flags(hello(7), 1), ErrorCode::Malformed);
}

#[test]
fn unknown_kind_is_error_3() {
    let mut bytes = vec![20, 0, 0x42, 0];
    bytes.extend([0u8; 16]);
    bad_input_case(&bytes, ErrorCode::UnknownKind);
}

#[test]
fn welcome_sent_by_a_client_is_error_3() {
    let bytes = encode_vec(&Frame::Welcome { session_id: 1, server_time_ns: 2, heartbeat_ms: 3 });
    bad_input_case(&bytes, ErrorCode::UnknownKind);
}

#[test]
fn every_server_kind_sent_by_a_client_is_error_3_logged_in_or_not() {
    let server = start();
    let kinds = server_kinds();
    for bytes in &kinds {
        send_expect_error(&server, bytes, ErrorCode::UnknownKind);
        let mut c = login(&server, 9);
        c.send_raw(bytes).unwrap();
        assert_eq!(expect_error(&mut c, Duration::from_secs(5)), ErrorCode::UnknownKind as u16, "{bytes:02x?}");
        expect_closed(&mut c);
    }
    expect_counted(&server, ErrorCode::UnknownKind, 2.0 * kinds.len() as f64, "protocol_error");
    assert_no_leaks(&server);
}

// ---- session errors ----

#[test]
fn ping_before_hello_is_error_4() {
    bad_input_case(&ping(1), ErrorCode::NotLoggedIn);
}

#[test]
fn any_client_frame_before_hello_is_error_4() {
    let server = start();
    let frames = [
        encode_vec(&Frame::Echo { data: b"hello?" }),
        encode_vec(&Frame::Send { to_user: 1, msg_id: 2, t_ns: 3, body: b"x" }),
        encode_vec(&Frame::Receipt { from_user: 1, msg_id: 2 }),
        encode_vec(&Frame::Bye),
    ];
    for bytes in &frames {
        send_expect_error(&server, bytes, ErrorCode::NotLoggedIn);
    }
    expect_counted(&server, ErrorCode::NotLoggedIn, frames.len() as f64, "protocol_error");
    assert_no_leaks(&server);
}

#[test]
fn second_hello_after_welcome_is_error_1() {
    let server = start();
    let mut c = server.client();
    c.send_raw(&hello(5)).unwrap();
    assert!(matches!(expect_frame(&mut c).frame(), Frame::Welcome { heartbeat_ms: 500, .. }));
    c.send_raw(&hello(5)).unwrap();
    assert_eq!(expect_error(&mut c, Duration::from_secs(5)), ErrorCode::Malformed as u16);
    expect_closed(&mut c);
    expect_counted(&server, ErrorCode::Malformed, 1.0, "protocol_error");
    assert_no_leaks(&server);
}

#[test]
fn bad_payload_length_after_login_is_error_1() {
    let server = start();
    let mut c = login(&server, 1);
    let mut bytes = ping(1);
    bytes.pop();
    bytes[0] -= 1; // a PING of 15 payload bytes
    c.send_raw(&bytes).unwrap();
    assert_eq!(expect_error(&mut c, Duration::from_secs(5)), ErrorCode::Malformed as u16);
    expect_closed(&mut c);
    expect_counted(&server, ErrorCode::Malformed, 1.0, "protocol_error");
    assert_no_leaks(&server);
}

// ---- timeouts ----

/// Connects, sends `bytes`, then stays silent: ERROR 6 arrives at the hello timeout, not before.
fn silent_after(bytes: &[u8]) {
    let server = start();
    let mut c = server.client();
    let t0 = Instant::now();
    c.send_raw(bytes).unwrap();
    assert_eq!(expect_error(&mut c, Duration::from_secs(5)), ErrorCode::Timeout as u16);
    let took = t0.elapsed();
    // The deadline is counted in 50 ms ticks from the tick before the accept.
    assert!(took >= Duration::from_millis(HELLO_TIMEOUT_MS - 100), "ERROR 6 after only {took:?}");
    assert!(took < Duration::from_millis(HELLO_TIMEOUT_MS + 1200), "ERROR 6 only after {took:?}");
    expect_closed(&mut c);
    expect_counted(&server, ErrorCode::Timeout, 1.0, "timeout");
    assert_no_leaks(&server);
}

#[test]
fn short_header_then_silence_is_error_6_at_the_hello_timeout() {
    silent_after(&hello(1)[..3]);
}

#[test]
fn silence_past_the_hello_timeout_is_error_6() {
    silent_after(&[]);
}

/// Sends `bytes` one at a time, `gap` apart, until an ERROR arrives; returns (code, bytes sent).
fn trickle_until_error(c: &mut BlockingClient, bytes: &[u8], gap: Duration) -> (u16, usize) {
    let mut sent = 0;
    loop {
        match c.read_frame(gap) {
            Ok(Some(f)) => match f.frame() {
                Frame::Error { code, .. } => return (code, sent),
                other => panic!("expected ERROR, got {other:?} after {sent} bytes"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            other => panic!("expected ERROR, got {other:?} after {sent} bytes"),
        }
        assert!(sent < bytes.len(), "the whole frame went out and no ERROR came");
        c.send_raw(&bytes[sent..sent + 1]).unwrap();
        sent += 1;
    }
}

/// Every byte its own segment (TCP_NODELAY and a pause between): a HELLO and five PINGs arrive
/// one byte at a time, and the WELCOME and every PONG come back in order. On the xdp data plane
/// this is c2m's TCP taking 1-byte segments and the session reassembling frames from them.
#[test]
fn a_client_sending_one_byte_at_a_time_gets_every_reply() {
    let server = start();
    let mut c = server.client();
    c.stream().set_nodelay(true).unwrap();
    let mut bytes = hello(9);
    for seq in 1..=5 {
        bytes.extend(ping(seq));
    }
    for b in &bytes {
        c.send_raw(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(matches!(expect_frame(&mut c).frame(), Frame::Welcome { .. }));
    for seq in 1..=5 {
        expect_pong(&mut c, seq);
    }
    drop(c);
    assert_no_leaks(&server);
}

#[test]
fn slowloris_hello_is_cut_off_at_the_hello_timeout() {
    let server = start();
    let mut c = server.client();
    let t0 = Instant::now();
    let (code, sent) = trickle_until_error(&mut c, &hello(3), Duration::from_millis(300));
    let took = t0.elapsed();
    assert_eq!(code, ErrorCode::Timeout as u16);
    // 20 bytes at 300 ms would take 6 s; bytes arriving do not move the hello deadline.
    assert!(took < Duration::from_millis(1500), "ERROR 6 only after {took:?} ({sent} bytes sent)");
    assert!(took >= Duration::from_millis(HELLO_TIMEOUT_MS - 100), "ERROR 6 after only {took:?}");
    assert!((2..=5).contains(&sent), "{sent} bytes sent before ERROR 6");
    expect_closed(&mut c);
    expect_counted(&server, ErrorCode::Timeout, 1.0, "timeout");
    assert_no_leaks(&server);
}

#[test]
fn logged_in_slowloris_is_cut_off_at_three_heartbeats() {
    let server = start();
    let mut c = login(&server, 4);
    let t0 = Instant::now();
    let (code, sent) = trickle_until_error(&mut c, &ping(1), Duration::from_millis(200));
    let took = t0.elapsed();
    assert_eq!(code, ErrorCode::Timeout as u16);
    // Only whole frames count as life: the bytes kept flowing, yet the deadline is 3 x 500 ms
    // after the HELLO.
    let limit = Duration::from_millis(3 * HEARTBEAT_MS);
    assert!(took >= limit - Duration::from_millis(150), "ERROR 6 after only {took:?}");
    assert!(took < limit + Duration::from_millis(1000), "ERROR 6 only after {took:?} ({sent} bytes sent)");
    assert!((5..20).contains(&sent), "{sent} bytes sent before ERROR 6");
    expect_closed(&mut c);
    expect_counted(&server, ErrorCode::Timeout, 1.0, "timeout");
    let text = server.scrape();
    assert_eq!(sum_where(&text, "c2m_frames_in_total", "kind=\"ping\""), 0.0, "{text}");
    assert_no_leaks(&server);
}

#[test]
fn a_session_that_pings_in_time_outlives_three_heartbeats() {
    let server = start();
    let mut c = login(&server, 4);
    let t0 = Instant::now();
    let mut seq = 0;
    let mut last_ping = t0;
    while t0.elapsed() < Duration::from_millis(4 * HEARTBEAT_MS) {
        seq += 1;
        last_ping = Instant::now();
        c.send_raw(&ping(seq)).unwrap();
        expect_pong(&mut c, seq);
        sleep(Duration::from_millis(HEARTBEAT_MS / 2));
    }
    // Then silence: cut off at 3 heartbeats after the last PING.
    let t1 = last_ping;
    assert_eq!(expect_error(&mut c, Duration::from_secs(5)), ErrorCode::Timeout as u16);
    let took = t1.elapsed();
    assert!(took >= Duration::from_millis(3 * HEARTBEAT_MS - 150), "ERROR 6 after only {took:?}");
    assert!(took < Duration::from_millis(3 * HEARTBEAT_MS + 1000), "ERROR 6 only after {took:?}");
    expect_closed(&mut c);
    expect_counted(&server, ErrorCode::Timeout, 1.0, "timeout");
    assert_no_leaks(&server);
}

// ---- resets ----

fn reset(c: BlockingClient) {
    socket2::SockRef::from(c.stream()).set_linger(Some(Duration::ZERO)).unwrap();
    drop(c); // close with SO_LINGER 0: RST
}

#[test]
fn reset_mid_frame_is_counted_peer_closed_and_leaks_nothing() {
    let server = start();
    // Half a HELLO, before login.
    let mut a = server.client();
    a.send_raw(&hello(1)[..10]).unwrap();
    // Half of a 4000-byte ECHO, logged in: the partial frame sits in the slot's in area.
    let mut b = login(&server, 2);
    let echo = encode_vec(&Frame::Echo { data: &[0x5a; 4000] });
    b.send_raw(&echo[..2000]).unwrap();
    wait_for(&server, "the partial frames to arrive", Duration::from_secs(5), |t| {
        sum(t, "c2m_received_bytes_total") >= (10 + 20 + 2000) as f64
    });
    reset(a);
    reset(b);
    let text =
        wait_for(&server, "two peer_closed", Duration::from_secs(5), |t| closed_with_reason(t, "peer_closed") >= 2.0);
    assert_eq!(closed_with_reason(&text, "peer_closed"), 2.0, "{text}");
    assert_eq!(sum(&text, "c2m_protocol_errors_total"), 0.0, "{text}");
    assert_no_leaks(&server);
}

#[test]
fn reset_with_replies_unread_is_counted_and_leaks_nothing() {
    // Replies the client never read, and half a frame, when the RST comes.
    let server = start();
    let mut c = login(&server, 2);
    let mut burst = Vec::new();
    for seq in 1..=50 {
        burst.extend(ping(seq));
    }
    burst.extend(encode_vec(&Frame::Echo { data: &[1; 4000] }));
    c.send_raw(&burst).unwrap();
    c.send_raw(&hello(3)[..7]).unwrap();
    wait_for(&server, "the burst to arrive", Duration::from_secs(5), |t| {
        sum(t, "c2m_received_bytes_total") >= (20 + burst.len() + 7) as f64
    });
    reset(c);
    let text =
        wait_for(&server, "peer_closed", Duration::from_secs(5), |t| closed_with_reason(t, "peer_closed") >= 1.0);
    assert_eq!(closed_with_reason(&text, "peer_closed"), 1.0, "{text}");
    assert_no_leaks(&server);
}

/// Reply bytes pushed (WELCOME is 24 bytes, each ECHO_REPLY 4004) but not yet sent, for one
/// logged-in session that only sent ECHOs of 4000 bytes.
fn owed(text: &str) -> f64 {
    24.0 + 4004.0 * sum_where(text, "c2m_frames_out_total", "kind=\"echo_reply\"") - sum(text, "c2m_sent_bytes_total")
}

#[test]
fn a_client_that_never_reads_is_paused_then_timed_out_and_leaks_nothing() {
    // ECHOs in, replies never read. Once the kernel's buffers and the slot's out area are full,
    // the server stops reading from the session (backpressure): the client's own writes then
    // stall on TCP flow control instead of the session being dropped. With no whole frame
    // handled for 3 heartbeats it is closed as timed out, while the client still holds its
    // socket open and unread, so only the server's own teardown can end its stuck send.
    let server = start();
    let mut c = small_window_client(&server);
    c.login(1).unwrap();
    c.stream().set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    socket2::SockRef::from(c.stream()).set_send_buffer_size(16 * 1024).unwrap();
    let echo = encode_vec(&Frame::Echo { data: &[7; 4000] });
    let mut written = 0;
    while written < 2000 && std::io::Write::write_all(&mut c.stream(), &echo).is_ok() {
        written += 1;
    }
    assert!(written < 2000, "8 MB written and the client's writes never stalled: no backpressure");
    let text = server.scrape();
    assert!(sum(&text, "c2m_backpressure_pauses_total") >= 1.0, "{text}");
    assert_eq!(closed_with_reason(&text, "slow_consumer"), 0.0, "{text}");
    assert!(owed(&text) >= 4004.0, "replies are owed while paused\n{text}");
    let text =
        wait_for(&server, "the timeout close", Duration::from_secs(8), |t| closed_with_reason(t, "timeout") >= 1.0);
    assert_eq!(closed_with_reason(&text, "timeout"), 1.0, "{text}");
    assert_no_leaks(&server);
    assert_eq!(sum(&server.scrape(), "c2m_held_buffers"), 0.0);
    drop(c);
}

#[test]
fn a_burst_bigger_than_the_out_area_is_answered_in_full_while_the_client_reads() {
    // 100 ECHOs of 4000 bytes (400 KB) in one go, about 11 times the out area: the server pauses
    // and resumes the session as its replies drain, and every reply arrives, in order. The
    // clients have small windows and read only after 300 ms, and a receive takes up to 64 KB, so
    // the out area fills whatever the receive arming.
    for arm in ["poll", "multishot"] {
        let server = ServerProcess::start(&[
            "--workers",
            "2",
            "--hello-timeout",
            "5000ms",
            "--heartbeat",
            "5000ms",
            "--max-sessions",
            "1000",
            "--recv-buffer-size",
            "65536",
            "--recv-buffers",
            "64",
            "--recv-arm",
            arm,
        ]);
        burst_is_answered_in_full(&server, arm);
    }
}

fn burst_is_answered_in_full(server: &ServerProcess, arm: &str) {
    let got = echo_storm_reading_after(server, 2, 100, Some(Duration::from_millis(300)));
    let text = server.scrape();
    assert_eq!(got, vec![100, 100], "{arm}: {text}");
    assert!(sum(&text, "c2m_backpressure_pauses_total") >= 1.0, "{arm}: the burst never filled the out area\n{text}");
    assert_eq!(closed_with_reason(&text, "slow_consumer"), 0.0, "{text}");
    assert_eq!(sum(&text, "c2m_held_buffers"), 0.0, "{text}");
}

// ---- a good session among bad ones ----

#[test]
fn a_valid_session_alongside_bad_ones_still_works() {
    let server = start();
    let mut good = login(&server, 77);
    let mut seq = 0;
    let mut bad = 0.0;
    let mut bad_inputs: Vec<(Vec<u8>, ErrorCode)> = vec![
        (vec![3, 0, 1, 0], ErrorCode::FrameSize),
        (vec![0xff, 0xff, 1, 0], ErrorCode::FrameSize),
        (with_flags(hello(1), 0x80), ErrorCode::Malformed),
        (vec![4, 0, 0x42, 0], ErrorCode::UnknownKind),
        (ping(1), ErrorCode::NotLoggedIn),
    ];
    bad_inputs.push((server_kinds()[0].clone(), ErrorCode::UnknownKind));
    for (bytes, code) in &bad_inputs {
        send_expect_error(&server, bytes, *code);
        bad += 1.0;
        seq += 1;
        good.send_raw(&ping(seq)).unwrap();
        expect_pong(&mut good, seq);
    }
    // ECHO of 4000 bytes: more than a receive buffer (2048), so it is reassembled in the slot,
    // and more than the inline outbox, so the reply goes out from the slot.
    let data: Vec<u8> = (0..4000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    good.send(&Frame::Echo { data: &data }).unwrap();
    let reply = expect_frame(&mut good);
    assert_eq!(reply.frame(), Frame::EchoReply { data: &data });
    // The largest frame there is: exactly max_frame.
    let data: Vec<u8> = (0..4092u32).map(|i| (i % 251) as u8).collect();
    good.send(&Frame::Echo { data: &data }).unwrap();
    assert_eq!(expect_frame(&mut good).frame(), Frame::EchoReply { data: &data });
    // A PING trickled in byte by byte, every header boundary crossed in its own segment.
    seq += 1;
    for b in ping(seq) {
        good.send_raw(&[b]).unwrap();
        sleep(Duration::from_millis(3));
    }
    expect_pong(&mut good, seq);
    // 200 PINGs and an ECHO in one write: replies in order, some inline and most from the slot.
    let mut burst = Vec::new();
    for _ in 0..200 {
        seq += 1;
        burst.extend(ping(seq));
    }
    burst.extend(encode_vec(&Frame::Echo { data: b"tail" }));
    good.send_raw(&burst).unwrap();
    for s in seq - 199..=seq {
        expect_pong(&mut good, s);
    }
    assert_eq!(expect_frame(&mut good).frame(), Frame::EchoReply { data: b"tail" });
    // Frames split across writes at odd places: half a PING + a whole ECHO's head, then the rest.
    seq += 1;
    let mut two = ping(seq);
    two.extend(encode_vec(&Frame::Echo { data: &[9; 3000] }));
    good.send_raw(&two[..11]).unwrap();
    sleep(Duration::from_millis(20));
    good.send_raw(&two[11..1500]).unwrap();
    sleep(Duration::from_millis(20));
    good.send_raw(&two[1500..]).unwrap();
    expect_pong(&mut good, seq);
    assert_eq!(expect_frame(&mut good).frame(), Frame::EchoReply { data: &[9; 3000] });
    // Leaving politely: BYE, the server closes without a word.
    good.send(&Frame::Bye).unwrap();
    expect_closed(&mut good);
    let text = wait_for(&server, "the BYE close", Duration::from_secs(5), |t| closed_with_reason(t, "bye") >= 1.0);
    assert_eq!(closed_with_reason(&text, "bye"), 1.0, "{text}");
    assert_eq!(closed_with_reason(&text, "protocol_error"), bad, "{text}");
    assert_eq!(sum(&text, "c2m_protocol_errors_total"), bad, "{text}");
    // Frames are counted in as parsed, the bad client's PING before HELLO included.
    assert_eq!(sum_where(&text, "c2m_frames_in_total", "kind=\"ping\""), seq as f64 + 1.0, "{text}");
    assert_eq!(sum_where(&text, "c2m_frames_out_total", "kind=\"pong\""), seq as f64, "{text}");
    assert_eq!(sum_where(&text, "c2m_frames_out_total", "kind=\"echo_reply\""), 4.0, "{text}");
    assert_no_leaks(&server);
}

#[test]
fn pipelined_frames_after_a_fatal_one_are_ignored() {
    // HELLO, PING, a bad frame, then more PINGs in one write: WELCOME, PONG, ERROR, and nothing
    // after the ERROR.
    let server = start();
    let mut c = server.client();
    let mut bytes = hello(1);
    bytes.extend(ping(1));
    bytes.extend([4, 0, 0x42, 0]);
    bytes.extend(ping(2));
    bytes.extend(ping(3));
    c.send_raw(&bytes).unwrap();
    assert!(matches!(expect_frame(&mut c).frame(), Frame::Welcome { .. }));
    expect_pong(&mut c, 1);
    assert_eq!(expect_error(&mut c, Duration::from_secs(5)), ErrorCode::UnknownKind as u16);
    expect_closed(&mut c);
    expect_counted(&server, ErrorCode::UnknownKind, 1.0, "protocol_error");
    let text = server.scrape();
    assert_eq!(sum_where(&text, "c2m_frames_out_total", "kind=\"pong\""), 1.0, "{text}");
    assert_no_leaks(&server);
}

#[test]
fn bye_after_pipelined_frames_gets_their_replies_first() {
    let server = start();
    let mut c = login(&server, 1);
    let mut bytes = Vec::new();
    for seq in 1..=100 {
        bytes.extend(ping(seq));
    }
    bytes.extend(encode_vec(&Frame::Echo { data: &[4; 3000] }));
    bytes.extend(encode_vec(&Frame::Bye));
    c.send_raw(&bytes).unwrap();
    for seq in 1..=100 {
        expect_pong(&mut c, seq);
    }
    assert_eq!(expect_frame(&mut c).frame(), Frame::EchoReply { data: &[4; 3000] });
    expect_closed(&mut c);
    server.wait_metric("c2m_sessions_closed_total", 1.0, Duration::from_secs(5));
    assert_eq!(closed_with_reason(&server.scrape(), "bye"), 1.0);
    assert_no_leaks(&server);
}

/// A server whose rings have only 8 provided receive buffers of 2048 bytes.
fn start_with_few_buffers() -> ServerProcess {
    ServerProcess::start(&[
        "--workers",
        "1",
        "--recv-buffers",
        "8",
        "--hello-timeout",
        "5000ms",
        "--heartbeat",
        "5000ms",
        "--max-sessions",
        "1000",
    ])
}

fn echo_body(u: usize, k: usize) -> Vec<u8> {
    (0..4000).map(|i| (i * 13 + u * 7 + k) as u8).collect()
}

/// `clients` clients each write `echoes` ECHOs of 4000 bytes (in odd-sized pieces, so frames
/// straddle segments) from one thread while another reads the replies. Returns how many replies
/// each client got, in order and intact, before the stream ended.
fn echo_storm(server: &ServerProcess, clients: usize, echoes: usize) -> Vec<usize> {
    echo_storm_reading_after(server, clients, echoes, None)
}

/// `echo_storm`; with `slow`, clients have a small receive window and start reading only after
/// that long, so the server's replies back up into its out area.
fn echo_storm_reading_after(
    server: &ServerProcess,
    clients: usize,
    echoes: usize,
    slow: Option<Duration>,
) -> Vec<usize> {
    let delay = slow.unwrap_or_default();
    let streams: Vec<std::net::TcpStream> = (1..=clients as u64)
        .map(|u| {
            let c = match slow {
                Some(_) => {
                    let mut c = small_window_client(server);
                    c.login(u).expect("login");
                    c
                }
                None => login(server, u),
            };
            c.stream().try_clone().unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(u, stream)| {
                let mut writer = stream.try_clone().unwrap();
                s.spawn(move || {
                    let mut bytes = Vec::new();
                    for k in 0..echoes {
                        bytes.extend(encode_vec(&Frame::Echo { data: &echo_body(u, k) }));
                    }
                    for chunk in bytes.chunks(7001) {
                        if std::io::Write::write_all(&mut writer, chunk).is_err() {
                            break;
                        }
                    }
                });
                s.spawn(move || {
                    std::thread::sleep(delay);
                    let mut reader = BlockingClient::from_stream(stream);
                    for k in 0..echoes {
                        match reader.read_frame(Duration::from_secs(10)) {
                            Ok(Some(f)) => {
                                assert_eq!(
                                    f.frame(),
                                    Frame::EchoReply { data: &echo_body(u, k) },
                                    "client {u} reply {k}"
                                )
                            }
                            _ => return k,
                        }
                    }
                    echoes
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn receive_buffers_running_dry_lose_no_bytes() {
    // 24 clients writing 8 ECHOs of 4000 bytes each at once run the 8 buffers dry, so multishot
    // receives end with ENOBUFS and are re-armed; every byte must still arrive, in order. (8
    // replies fit a slot's out area even if none had been sent.) With poll arming, each
    // receive takes one buffer and gives it back soon, so the ring has one buffer to run dry.
    if skipped_on_xdp("the kernel data plane's provided receive buffers") {
        return;
    }
    for (arm, buffers) in [("poll", "1"), ("multishot", "8")] {
        let server = ServerProcess::start(&[
            "--workers",
            "1",
            "--recv-buffers",
            buffers,
            "--hello-timeout",
            "5000ms",
            "--heartbeat",
            "5000ms",
            "--max-sessions",
            "1000",
            "--recv-arm",
            arm,
        ]);
        buffers_running_dry_lose_no_bytes(&server, arm);
    }
}

fn buffers_running_dry_lose_no_bytes(server: &ServerProcess, arm: &str) {
    let got = echo_storm(server, 24, 8);
    let text = server.scrape();
    assert!(got.iter().all(|&n| n == 8), "{arm}: replies per client: {got:?}\n{text}");
    assert!(sum(&text, "c2m_recv_no_buffers_total") > 0.0, "{arm}: the buffer ring never ran dry\n{text}");
    assert_eq!(sum_where(&text, "c2m_frames_out_total", "kind=\"echo_reply\""), 24.0 * 8.0, "{text}");
    assert_eq!(sum(&text, "c2m_protocol_errors_total"), 0.0, "{text}");
    assert_eq!(closed_with_reason(&text, "slow_consumer"), 0.0, "{text}");
    assert_no_leaks(server);
}

#[test]
fn a_client_that_reads_everything_is_never_a_slow_consumer() {
    // Each client reads its replies as they come (its kernel buffer takes them at once), and at
    // most one batch of receives (8 x 2048 bytes, 4 ECHOs) is handled between two sends, so no
    // more than a few replies are ever owed: far below the 36 KiB out area, as long as the area
    // is rewound when a send completes (its replies add up to 20 x 4004 bytes).
    let server = start_with_few_buffers();
    let got = echo_storm(&server, 24, 20);
    let text = server.scrape();
    let queued = 24.0 * 24.0 + 4004.0 * sum_where(&text, "c2m_frames_out_total", "kind=\"echo_reply\"");
    let owed = queued - sum(&text, "c2m_sent_bytes_total");
    assert_eq!(
        closed_with_reason(&text, "slow_consumer"),
        0.0,
        "replies per client: {got:?}; {owed} reply bytes owed over all sessions when they were dropped\n{text}"
    );
    assert!(got.iter().all(|&n| n == 20), "replies per client: {got:?}");
}

#[test]
fn half_close_after_pipelined_pings_still_gets_every_pong() {
    // The client sends its PINGs and shuts its write side (TCP half-close), then reads until EOF.
    let server = start();
    let mut c = login(&server, 1);
    let mut bytes = Vec::new();
    for seq in 1..=100 {
        bytes.extend(ping(seq));
    }
    c.send_raw(&bytes).unwrap();
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let mut pongs = 0;
    loop {
        match c.read_frame(Duration::from_secs(5)) {
            Ok(Some(f)) => {
                pongs += 1;
                assert_eq!(f.frame(), Frame::Pong { seq: pongs, t_ns: pongs * 3 });
            }
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("after {pongs} PONGs: {e}"),
        }
    }
    let text =
        wait_for(&server, "peer_closed", Duration::from_secs(5), |t| closed_with_reason(t, "peer_closed") >= 1.0);
    assert_eq!(closed_with_reason(&text, "peer_closed"), 1.0, "{text}");
    assert_no_leaks(&server);
    assert_eq!(pongs, 100, "PONGs before EOF");
}
