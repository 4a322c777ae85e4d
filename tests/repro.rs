//! Reproductions of the review's findings (`../shared/repro/README.md`, F1-F17), each turned into
//! a test that asserts what `docs/protocol.md` (chat delivery guarantee, wire protocol v1)
//! requires. Each starts its own `c2m serve` (or, for F9, a hostile server in a thread and a
//! `c2m load` child) with the flags the finding names, and drives it over loopback with plain
//! sockets. `C2M_TEST_BIN=/path/to/c2m` runs them against another build (they fail at f2b2d30).

mod repro_common;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use c2m::client::BlockingClient;
use c2m::proto::{ErrorCode, Frame, GROUP_BIT};
use repro_common::*;

const SECOND: Duration = Duration::from_secs(1);
/// The out area of a session slot with the defaults: --session-bytes 40 KiB - --max-frame 4 KiB.
const AREA: u64 = 40960 - 4096;
/// A SEND whose DELIVER is exactly --max-frame (4,096 B): 4 B header + 24 B fixed + body.
const FULL_BODY: usize = 4096 - 28;

/// What the replies of one connection added up to, read by a thread of its own.
#[derive(Debug, Default)]
struct Tally {
    acks: u64,
    nacks: std::collections::BTreeMap<u16, u64>,
    other: u64,
    closed: bool,
}

impl Tally {
    fn replies(&self) -> u64 {
        self.acks + self.nacks.values().sum::<u64>()
    }
    fn nack(&self, code: ErrorCode) -> u64 {
        self.nacks.get(&(code as u16)).copied().unwrap_or(0)
    }
}

/// Reads `c`'s frames in a thread, counting ACKs and NACKs, until `want` replies came, the
/// server closed, nothing arrived for `quiet`, or `limit` passed.
fn tally_replies(c: BlockingClient, want: u64, quiet: Duration, limit: Duration) -> JoinHandle<Tally> {
    tally_replies_until(c, Arc::new(AtomicU64::new(want)), quiet, limit)
}

/// [`tally_replies`], with a `want` the caller may set later (when it knows how many it sent).
fn tally_replies_until(
    mut c: BlockingClient,
    want: Arc<AtomicU64>,
    quiet: Duration,
    limit: Duration,
) -> JoinHandle<Tally> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        let mut t = Tally::default();
        while t.replies() < want.load(Ordering::Relaxed) && Instant::now() < deadline {
            match c.read_frame(quiet) {
                Ok(Some(f)) => match f.frame() {
                    Frame::Ack { .. } => t.acks += 1,
                    Frame::Nack { code, .. } => *t.nacks.entry(code).or_default() += 1,
                    _ => t.other += 1,
                },
                Ok(None) => {
                    t.closed = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::TimedOut => break,
                Err(_) => {
                    t.closed = true;
                    break;
                }
            }
        }
        t
    })
}

/// A second handle on `c`'s socket, for writing while a thread reads.
fn writer(c: &BlockingClient) -> TcpStream {
    let w = c.stream().try_clone().expect("clone socket");
    w.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    w
}

/// Waits until c2m_sent_bytes_total stops moving (3 scrapes in a row, 50 ms apart) and returns
/// it; bounded at 5 s.
fn settled_bytes_out(server: &ServerProcess) -> u64 {
    let (mut last, mut same) = (u64::MAX, 0);
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let bo = server.metric("c2m_sent_bytes_total") as u64;
        same = if bo == last { same + 1 } else { 0 };
        last = bo;
        if same >= 3 || Instant::now() >= deadline {
            return bo;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads what a logged-in recipient is given (RECEIPTing every DELIVER, as a client does) until
/// every msg_id in `want` came or 2 s pass without a frame; returns the (from_user, msg_id) pairs.
fn collect_delivers(c: &mut BlockingClient, want: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    let mut ids = BTreeSet::new();
    let deadline = Instant::now() + 10 * SECOND;
    while !want.is_subset(&ids) && Instant::now() < deadline {
        match c.read_frame(2 * SECOND) {
            Ok(Some(f)) => {
                if let Frame::Deliver { from_user, msg_id, .. } = f.frame() {
                    seen.push((from_user, msg_id));
                    ids.insert(msg_id);
                    let _ = c.send_raw(&receipt(from_user, msg_id));
                }
            }
            _ => break,
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// F2: DELIVERs in a session's out area (or sent, never receipted) are lost when it ends.

/// Fills the out area of user 2's non-reading session (`b1`) with DELIVERs from user 1 (`a`):
/// at least 5 x 4 KiB unsent in the area, the rest in kernel buffers. Returns the SENDs made,
/// every one of them ACKed, and the bytes left in the area.
fn fill_recipient_out_area(server: &ServerProcess, a: &mut BlockingClient) -> (u64, u64) {
    let body = vec![b'm'; FULL_BODY];
    let base = settled_bytes_out(server);
    let (mut sent, mut unsent) = (0u64, 0u64);
    let deadline = Instant::now() + 12 * SECOND;
    while unsent < 5 * 4096 && sent < 5000 && Instant::now() < deadline {
        // 8 x 4 KiB can never overflow an empty area; one at a time once it holds something.
        let n = if unsent == 0 { 8 } else { 1 };
        if unsent + n * 4096 > AREA - 4096 {
            break;
        }
        let batch: Vec<u8> = (sent + 1..=sent + n).flat_map(|i| send(2, i, &body)).collect();
        a.send_raw(&batch).unwrap();
        let got = read_while(a, 5 * SECOND, 10 * SECOND, |r| r.frames.len() < n as usize);
        assert_eq!(got.acks(), (sent + 1..=sent + n).collect::<Vec<_>>(), "setup: every SEND ACKed: {}", got.summary());
        sent += n;
        // DELIVER bytes the kernel has not taken yet (each ACK to A is 12 B of bytes_out).
        let unsent_at = |bo: u64| (4096 * sent).saturating_sub(bo - base - 12 * sent);
        unsent = unsent_at(server.metric("c2m_sent_bytes_total") as u64);
        if unsent > 0 {
            unsent = unsent_at(settled_bytes_out(server));
        }
    }
    assert!(unsent >= 4096, "setup: the recipient's out area never filled ({sent} SENDs, {unsent} B unsent)");
    (sent, unsent)
}

fn out_area_survives_the_end_of_the_session(replace: bool) {
    // Every message is held until receipted, so the recipient's bound must cover what fills its
    // socket buffers and out area (about 700 x 4 KiB), or the sender gets NACK 8 first.
    let server = ServerProcess::start(&[
        "--workers",
        "1",
        "--users",
        "100",
        "--heartbeat",
        "600000ms",
        "--offline-user-bytes",
        "16MiB",
        "--offline-sender-bytes",
        "16MiB",
    ]);
    let mut b1 = connect(server.addr, Some(4096));
    b1.login(2).unwrap();
    let mut a = server.login(1);
    let (sent, unsent) = fill_recipient_out_area(&server, &mut a);
    let mut b2 = if replace {
        // B1 is sent ERROR 9 it never reads; the server tears it down after its grace.
        let b2 = server.login(2);
        std::thread::sleep(3 * SECOND);
        b2
    } else {
        reset(b1);
        std::thread::sleep(SECOND);
        server.login(2)
    };
    let want: BTreeSet<u64> = (1..=sent).collect();
    let mut seen = collect_delivers(&mut b2, &want);
    if !want.iter().all(|m| seen.iter().any(|s| s.1 == *m)) {
        // Whatever has not come yet must come at the next login (the store keeps it).
        let _ = b2.send_raw(&bye());
        drop(b2);
        std::thread::sleep(Duration::from_millis(300));
        let mut b3 = server.login(2);
        seen.extend(collect_delivers(&mut b3, &want));
    }
    let got: BTreeSet<u64> = seen.iter().map(|s| s.1).collect();
    assert!(seen.iter().all(|s| s.0 == 1 && want.contains(&s.1)), "a DELIVER user 1 never sent: {seen:?}");
    let missing: Vec<u64> = want.difference(&got).copied().collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} ACKed messages never reached user 2 after its session was {} ({} DELIVERs sat unsent in \
         its out area); missing msg_ids {:?}..",
        missing.len(),
        if replace { "replaced (ERROR 9)" } else { "reset (RST)" },
        unsent / 4096,
        &missing[..missing.len().min(10)]
    );
}

#[test]
fn f2_rst_recipient_gets_every_acked_message_at_its_next_login() {
    out_area_survives_the_end_of_the_session(false);
}

#[test]
fn f2_replaced_recipient_gets_every_acked_message_in_its_new_session() {
    out_area_survives_the_end_of_the_session(true);
}

// ---------------------------------------------------------------------------------------------
// F3: HELLO + SEND in one write, the login drains a full out area of stored DELIVERs.

#[test]
fn f3_login_drain_never_costs_a_pipelined_send_its_ack() {
    let server = ServerProcess::start(&["--workers", "1", "--users", "100"]);
    let mut a = server.login(1);
    let body = vec![b'o'; FULL_BODY];
    let stored: Vec<u8> = (1..=9).flat_map(|i| send(2, i, &body)).collect();
    a.send_raw(&stored).unwrap();
    let got = read_while(&mut a, 5 * SECOND, 10 * SECOND, |r| r.frames.len() < 9);
    assert_eq!(got.acks(), (1..=9).collect::<Vec<u64>>(), "setup: {}", got.summary());
    assert!(
        wait_until(5 * SECOND, || server.metric("c2m_chat_offline_messages") == 9.0),
        "setup: 9 messages stored for user 2"
    );

    let mut b = server.connect();
    b.send_raw(&[hello(2), send(1, 77, b"hi")].concat()).unwrap();
    let mut replies = read_until_quiet(&mut b, 2 * SECOND, 10 * SECOND);
    b.send_raw(&ping(42)).unwrap();
    let later = read_until_quiet(&mut b, 2 * SECOND, 5 * SECOND);
    replies.frames.extend(later.frames);
    replies.closed |= later.closed;
    let a_got = read_until_quiet(&mut a, SECOND, 5 * SECOND);

    let answers =
        replies.acks().iter().filter(|&&m| m == 77).count() + replies.nacks().iter().filter(|n| n.0 == 77).count();
    assert_eq!(
        (replies.acks().iter().filter(|&&m| m == 77).count(), answers),
        (1, 1),
        "the SEND behind HELLO (msg 77, to the online user 1) must get one ACK; user 2 read {}; user 1 read {}",
        replies.summary(),
        a_got.summary()
    );
    let drained: BTreeSet<u64> = replies.delivers().iter().map(|d| d.1).collect();
    assert_eq!(drained, (1..=9).collect(), "the 9 stored DELIVERs: {}", replies.summary());
    assert!(replies.frames.iter().any(|f| matches!(f.frame(), Frame::Pong { seq: 42, .. })), "{}", replies.summary());
    assert!(a_got.delivers().contains(&(2, 77)), "user 1 gets msg 77: {}", a_got.summary());
}

// ---------------------------------------------------------------------------------------------
// F4: HELLO + BYE (or + a fatal frame) in one write.

fn hello_with_a_closing_frame_takes_nothing(closing: Vec<u8>, what: &str) {
    let server = ServerProcess::start(&["--workers", "1", "--users", "100"]);
    let mut a = server.login(1);
    a.send_raw(&(101..=103).flat_map(|i| send(2, i, b"for user 2")).collect::<Vec<u8>>()).unwrap();
    let got = read_while(&mut a, 5 * SECOND, 10 * SECOND, |r| r.frames.len() < 3);
    assert_eq!(got.acks(), vec![101, 102, 103], "setup: {}", got.summary());
    assert!(wait_until(5 * SECOND, || server.metric("c2m_chat_offline_messages") == 3.0), "setup: 3 stored");
    // User 3 is logged in: a HELLO 3 that closes in the same read must not replace it.
    let mut c = server.login(3);

    let mut x = server.connect();
    x.send_raw(&[hello(2), closing.clone()].concat()).unwrap();
    let x_got = read_until_quiet(&mut x, SECOND, 5 * SECOND);
    reset(x);
    let mut x3 = server.connect();
    x3.send_raw(&[hello(3), closing].concat()).unwrap();
    let x3_got = read_until_quiet(&mut x3, SECOND, 5 * SECOND);
    reset(x3);
    std::thread::sleep(Duration::from_millis(500));

    let mut b = server.login(2);
    let b_got = read_until_quiet(&mut b, 2 * SECOND, 10 * SECOND);
    c.send_raw(&ping(3)).unwrap();
    let c_got = read_until_quiet(&mut c, SECOND, 5 * SECOND);

    let delivered: BTreeSet<u64> = b_got.delivers().iter().map(|d| d.1).collect();
    assert_eq!(
        delivered,
        BTreeSet::from([101, 102, 103]),
        "HELLO + {what}: user 2's 3 stored messages must reach its real login; it read {}; the HELLO + {what} \
         connection read {}",
        b_got.summary(),
        x_got.summary()
    );
    assert!(
        x_got.delivers().is_empty(),
        "HELLO + {what} drained user 2's store into a closing connection: {}",
        x_got.summary()
    );
    assert!(
        c_got.errors().is_empty()
            && !c_got.closed
            && c_got.frames.iter().any(|f| matches!(f.frame(), Frame::Pong { .. })),
        "HELLO 3 + {what} took over logged-in user 3: it read {} (the HELLO + {what} connection read {})",
        c_got.summary(),
        x3_got.summary()
    );
}

#[test]
fn f4_hello_with_bye_neither_takes_over_nor_drains() {
    hello_with_a_closing_frame_takes_nothing(bye(), "BYE");
}

#[test]
fn f4_hello_with_a_fatal_frame_neither_takes_over_nor_drains() {
    // A PING with a 1-byte payload: ERROR 1 (malformed), and the server closes after it.
    hello_with_a_closing_frame_takes_nothing(raw_frame(0x02, b"x"), "a malformed PING");
}

// ---------------------------------------------------------------------------------------------
// F5: a group SEND whose copies cannot all be kept.

#[test]
fn f5_group_send_that_cannot_be_kept_whole_is_nacked() {
    let server = ServerProcess::start(&[
        "--workers",
        "1",
        "--users",
        "2000",
        "--groups",
        "1",
        "--group-size",
        "1024",
        "--offline-total-bytes",
        "64MiB",
    ]);
    // Group 0 is users 1..=1024, all offline; the sender is not a member: 1,024 copies a SEND,
    // 4 MiB each at 4 KiB, so 17 of them cannot all fit in 64 MiB.
    let x = server.login(1999);
    let mut w = writer(&x);
    let replies = tally_replies(x, 17, 10 * SECOND, 15 * SECOND);
    let body = vec![b'g'; FULL_BODY];
    for i in 0..17 {
        w.write_all(&send(GROUP_BIT, i, &body)).unwrap();
    }
    let t = replies.join().unwrap();
    let mut held = 0.0;
    wait_until(3 * SECOND, || {
        let now = server.metric("c2m_chat_offline_messages");
        let same = now == held;
        held = now;
        same && now > 0.0
    });
    let text = server.scrape();
    let expired = sum(&text, "c2m_chat_offline_expired_total");
    assert_eq!(t.replies(), 17, "every group SEND gets one ACK or NACK: {t:?}");
    assert_eq!(expired, 0.0, "{expired} member copies lost after their group SEND was answered {t:?}");
    assert_eq!(held, t.acks as f64 * 1024.0, "each ACKed group SEND keeps all 1,024 copies: {t:?}, {held} held");
    assert!(t.nack(ErrorCode::OfflineQueueFull) >= 1, "17 x 4 MiB do not fit in 64 MiB: NACK 8 expected, {t:?}");
}

// ---------------------------------------------------------------------------------------------
// F7: one sender fills the offline store; its byte count.

#[test]
fn f7_one_sender_cannot_lock_everyone_out_of_the_offline_store() {
    let server = ServerProcess::start(&["--workers", "1", "--users", "100000", "--offline-total-messages", "20000"]);
    let x = server.login(99999);
    let mut w = writer(&x);
    let replies = tally_replies(x, 20_000, 5 * SECOND, 20 * SECOND);
    // 1,000 (the per-user bound) to each of 20 offline users: the whole total bound.
    for user in 1..=20u64 {
        let batch: Vec<u8> = (0..1000).flat_map(|i| send(user, user * 1000 + i, b"")).collect();
        w.write_all(&batch).unwrap();
    }
    let t = replies.join().unwrap();
    assert_eq!(t.replies(), 20_000, "setup: every SEND answered: {t:?}");

    let mut a = server.login(50000);
    a.send_raw(&send(60000, 7, b"hello, are you there?")).unwrap();
    let got = read_until_quiet(&mut a, 2 * SECOND, 5 * SECOND);
    assert_eq!(
        got.acks(),
        vec![7],
        "after user 99999 stored as much as one sender may ({} ACK, NACKs {:?}), another sender's message to \
         another offline user must be taken; it got {}",
        t.acks,
        t.nacks,
        got.summary()
    );
}

#[test]
fn f7_offline_store_byte_count_is_true_to_its_memory() {
    let server = ServerProcess::start(&["--workers", "1", "--users", "100000", "--offline-total-messages", "1000000"]);
    // Warm up: the first SEND, store shard and directory page, so that their one-off memory is
    // not counted as the messages'.
    let mut warm = server.login(99999);
    warm.send_raw(&send(99998, 1, b"")).unwrap();
    let _ = read_until_quiet(&mut warm, Duration::from_millis(300), 2 * SECOND);
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let (rss0, bytes0) = (server.rss_kib(), server.metric("c2m_chat_offline_bytes"));
    // 200 senders, one at a time (one slot's worth of ACKs resident at most), 1,000 empty
    // messages each to its own offline recipient: 200,000 messages of 28 B.
    for s in 0..200u64 {
        let c = server.login(90_000 + s);
        let mut w = writer(&c);
        let replies = tally_replies(c, 1000, 5 * SECOND, 10 * SECOND);
        let batch: Vec<u8> = (0..1000).flat_map(|i| send(1 + s, i, b"")).collect();
        w.write_all(&batch).unwrap();
        let t = replies.join().unwrap();
        assert_eq!(t.replies(), 1000, "setup: every SEND answered: {t:?}");
    }
    let mut counted = 0.0;
    wait_until(3 * SECOND, || {
        let now = server.metric("c2m_chat_offline_bytes");
        let same = now == counted;
        counted = now;
        same
    });
    let grown = server.rss_kib().saturating_sub(rss0) * 1024;
    let counted = (counted - bytes0).max(0.0);
    let messages = server.metric("c2m_chat_offline_messages");
    // The store's own count leaves out the allocator's share (chunk rounding, queue slots, arena
    // growth): measured here 1.3x to 2.4x under RSS growth, run to run (the 2.4x runs, about a
    // third of them, grow by one more 8 MiB step; also on the code of 9c406e1). Before the fix it
    // was 4.4x under, which this bound still refuses.
    let bound = 2.5 * counted + 2.0 * 1024.0 * 1024.0;
    assert!(
        grown as f64 <= bound,
        "server RSS grew {:.1} MiB while c2m_chat_offline_bytes grew {:.1} MiB for {messages} stored messages \
         ({:.0} B counted per message, {:.0} B resident): the byte count is {:.1}x under the memory",
        grown as f64 / 1048576.0,
        counted / 1048576.0,
        counted / messages.max(1.0),
        grown as f64 / messages.max(1.0),
        grown as f64 / counted.max(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// F8: RECEIPTs for messages never delivered to the one who sends them.

#[test]
fn f8_forged_receipt_is_not_relayed() {
    let server = ServerProcess::start(&["--workers", "1", "--users", "100"]);
    let mut a = server.login(1);
    let mut x = server.login(3);
    // Control: a RECEIPT for a message X was given is relayed.
    a.send_raw(&send(3, 7, b"hi")).unwrap();
    let x_got = read_while(&mut x, 5 * SECOND, 5 * SECOND, |r| r.delivers().is_empty());
    assert_eq!(x_got.delivers(), vec![(1, 7)], "setup: {}", x_got.summary());
    x.send_raw(&receipt(1, 7)).unwrap();
    let a_got = read_while(&mut a, 5 * SECOND, 5 * SECOND, |r| r.notices().is_empty());
    assert_eq!(a_got.notices(), vec![(3, 7)], "setup: the genuine RECEIPT is relayed: {}", a_got.summary());

    // X never got message 424242 from user 1, nor a second copy of 7 (already receipted).
    x.send_raw(&[receipt(1, 424242), receipt(1, 7), receipt(2, 5)].concat()).unwrap();
    x.send_raw(&ping(1)).unwrap();
    let x_after = read_while(&mut x, 5 * SECOND, 5 * SECOND, |r| r.frames.is_empty());
    let a_after = read_until_quiet(&mut a, SECOND, 3 * SECOND);
    assert!(
        a_after.notices().is_empty(),
        "forged RECEIPTs were relayed to user 1 as \"delivered\": {}",
        a_after.summary()
    );
    assert!(!x_after.closed, "the forger's session stays (forged RECEIPTs are dropped): {}", x_after.summary());
}

#[test]
fn f8_receipt_flood_does_not_close_its_victim() {
    let server = ServerProcess::start(&["--workers", "1", "--users", "100"]);
    // The victim, busy (not reading) for a while, with a small window.
    let mut v = connect(server.addr, Some(4096));
    v.login(4).unwrap();
    let mut x = server.login(3);
    let closed0 = server.metric_where("c2m_sessions_closed_total", "reason=\"slow_consumer\"");
    let mut forged = 0u64;
    let deadline = Instant::now() + 12 * SECOND;
    while forged < 400_000 && Instant::now() < deadline {
        let batch: Vec<u8> = (forged..forged + 5000).flat_map(|i| receipt(4, i)).collect();
        if !write_or_stall(&mut x, &batch, 2 * SECOND) {
            break; // the server stopped reading (or closed) the forger: fine
        }
        forged += 5000;
        if server.metric_where("c2m_sessions_closed_total", "reason=\"slow_consumer\"") > closed0 {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let closed = server.metric_where("c2m_sessions_closed_total", "reason=\"slow_consumer\"") - closed0;
    let mut v_got = read_until_quiet(&mut v, SECOND, 10 * SECOND);
    if !v_got.closed {
        let _ = v.send_raw(&ping(44));
        let more = read_while(&mut v, 3 * SECOND, 5 * SECOND, |r| r.frames.is_empty());
        v_got.frames.extend(more.frames);
        v_got.closed |= more.closed;
    }
    assert_eq!(closed, 0.0, "{forged} forged RECEIPTs closed {closed} session(s) as slow consumers");
    assert!(
        !v_got.closed && v_got.frames.iter().any(|f| matches!(f.frame(), Frame::Pong { seq: 44, .. })),
        "the victim must stay open and answer a PING after {forged} forged RECEIPTs: it read {}",
        v_got.summary()
    );
    assert!(v_got.notices().is_empty(), "forged notices reached the victim: {}", v_got.summary());
}

// ---------------------------------------------------------------------------------------------
// F17: BYE and an immediate close shut down the next accepted connection.

#[test]
fn f17_bye_and_close_never_shut_down_another_users_connection() {
    let server = ServerProcess::start(&["--workers", "1", "--users", "100"]);
    let (mut rounds, mut failures) = (0u32, Vec::new());
    let deadline = Instant::now() + 15 * SECOND;
    // About 2 rounds in 1,000 failed at f2b2d30, 1 in 3,000 or fewer at ddd7bc1: ~12 s of rounds
    // (24,000 to 40,000 here) make a pass meaningful.
    while rounds < 100_000 && Instant::now() < deadline {
        // The connection hit may be the next round's user 5 as well as user 6.
        let mut a = server.connect();
        if let Err(e) = a.login(5) {
            failures.push((rounds, format!("user 5: {e}")));
            reset(a);
            rounds += 1;
            continue;
        }
        let _ = a.send_raw(&bye());
        drop(a); // a plain close, at once
        let mut b = server.connect();
        b.send_raw(&hello(6)).unwrap();
        match b.read_frame(5 * SECOND) {
            Ok(Some(f)) if matches!(f.frame(), Frame::Welcome { .. }) => {}
            other => failures.push((rounds, format!("user 6: {:?}", other.map(|o| o.map(|f| f.frame().kind()))))),
        }
        reset(b); // no TIME_WAIT left behind on either side
        rounds += 1;
    }
    assert!(rounds >= 5000, "only {rounds} rounds in 12 s");
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds: a new connection got no WELCOME after user 5 sent BYE and closed at once; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

// ---------------------------------------------------------------------------------------------
// F1: a session torn down while its input is paused leaves its receive buffer held, and the next
// session on that slot is fed the dead one's bytes.

/// Waits until the server has handled `echoes` ECHOs and c2m_sent_bytes_total stopped moving;
/// returns it. Bounded at 10 s.
fn settled_after_echoes(server: &ServerProcess, echoes: u64) -> u64 {
    let (mut last, mut same) = (u64::MAX, 0);
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let text = server.scrape();
        let handled = sum_where(&text, "c2m_frames_in_total", "kind=\"echo\"") as u64;
        let bo = sum(&text, "c2m_sent_bytes_total") as u64;
        if handled >= echoes {
            same = if bo == last { same + 1 } else { 0 };
            last = bo;
            if same >= 3 {
                return bo;
            }
        }
        assert!(Instant::now() < deadline, "setup: the server did not settle ({handled} of {echoes} ECHOs)");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends ECHOs on `c` (never reading) until its out area has fewer than 20 bytes of room, the
/// last ECHO sized to leave about `target_room`; `echoes` counts every ECHO the server has had.
/// Returns the room left.
fn fill_out_area_with_echoes(server: &ServerProcess, c: &mut BlockingClient, echoes: &mut u64, fill: &[u8]) -> u64 {
    let target_room = 8;
    let base = settled_after_echoes(server, *echoes);
    let mut sent_bytes = 0u64;
    let deadline = Instant::now() + 12 * SECOND;
    loop {
        // Fast while the kernel still takes every reply; settled once some wait in the area.
        let text = server.scrape();
        let mut bo = sum(&text, "c2m_sent_bytes_total") as u64;
        if (sum_where(&text, "c2m_frames_in_total", "kind=\"echo\"") as u64) < *echoes || sent_bytes > bo - base {
            bo = settled_after_echoes(server, *echoes);
        }
        let unsent = sent_bytes - (bo - base);
        let room = AREA - unsent;
        if room < 20 {
            return room;
        }
        assert!(*echoes < 20_000 && Instant::now() < deadline, "setup: the out area never filled ({room} B room)");
        let (n, size) = if unsent == 0 && room >= 8 * 4096 + 64 {
            (8, 4096)
        } else if room >= 4096 + 64 {
            (1, 4096)
        } else {
            (1, (room - target_room).min(4096))
        };
        c.send_raw(&echo(size as usize, fill).repeat(n as usize)).unwrap();
        *echoes += n;
        sent_bytes += n * size;
    }
}

#[test]
fn f1_session_torn_down_while_paused_leaves_no_held_buffer_nor_bytes_for_the_next() {
    let server = ServerProcess::start(&[
        "--workers",
        "1",
        "--max-sessions",
        "1000",
        "--users",
        "100",
        "--heartbeat",
        "600000ms",
    ]);
    let mut w = server.login(7); // a bystander, the target of X's SEND
    let mut x = connect(server.addr, Some(4096));
    x.login(5).unwrap();
    let mut echoes = 0u64;
    let room = fill_out_area_with_echoes(&server, &mut x, &mut echoes, b"x");
    // In one write: a RECEIPT whose notice goes to X itself (and cannot fit), an ECHO that
    // cannot be answered yet, a SEND and a PING: input that waits while X is paused.
    let marker = [b"STALE-FROM-X".as_slice(), &[b'!'; 20]].concat();
    let combo =
        [receipt(5, 1), enc(&Frame::Echo { data: &marker }), send(7, 0xBAD, b"forged-by-X"), ping(0x5EED)].concat();
    x.send_raw(&combo).unwrap();
    std::thread::sleep(SECOND);
    reset(x);
    let held = server.wait_metric("c2m_held_buffers", 0.0, 3 * SECOND);
    let text = server.scrape();
    let (slots, active) = (sum(&text, "c2m_slab_slots_in_use"), sum(&text, "c2m_sessions_active"));

    // The next connection takes X's slot (the free list is LIFO); it fills its own out area
    // until paused, then reads everything it is given.
    let mut v = connect(server.addr, Some(4096));
    v.login(6).unwrap();
    let pauses0 = server.metric("c2m_backpressure_pauses_total");
    settled_after_echoes(&server, echoes);
    let (mut v_echoes, deadline) = (0u64, Instant::now() + 10 * SECOND);
    while server.metric("c2m_backpressure_pauses_total") == pauses0 && v_echoes < 20_000 && Instant::now() < deadline {
        if !write_or_stall(&mut v, &echo(4096, b"v").repeat(8), SECOND) {
            break; // its socket stopped draining: paused
        }
        v_echoes += 8;
        std::thread::sleep(Duration::from_millis(20));
    }
    let v_got = read_until_quiet(&mut v, 3 * SECOND, 20 * SECOND);
    let w_got = read_until_quiet(&mut w, SECOND, 3 * SECOND);
    let stale: Vec<String> = v_got
        .frames
        .iter()
        .filter_map(|f| match f.frame() {
            Frame::EchoReply { data } if data.windows(5).any(|d| d == b"STALE") => {
                Some("ECHO_REPLY(STALE-FROM-X)".into())
            }
            Frame::Ack { msg_id: 0xBAD } => Some("ACK(0xbad)".into()),
            Frame::Pong { seq: 0x5EED, .. } => Some("PONG(0x5eed)".into()),
            _ => None,
        })
        .collect();
    assert_eq!(
        held, 0.0,
        "X (out area room {room} B) was torn down while paused and left {held} receive buffer(s) held \
         (slots in use {slots}, sessions active {active}: only the bystander's)"
    );
    assert!(stale.is_empty(), "the next session on X's slot was fed X's input: it read {stale:?}");
    assert!(
        !w_got.delivers().iter().any(|d| d.1 == 0xBAD),
        "X's SEND was routed under another user's id: the bystander read {}",
        w_got.summary()
    );
}

// ---------------------------------------------------------------------------------------------
// F9: `c2m load` against a hostile server that floods DELIVERs and never reads.

/// A server that logs one client in, then writes DELIVERs at it without reading, until `stop`.
/// Its small receive window (inherited by the accepted socket) makes the client's writes back up.
fn hostile_server(stop: Arc<AtomicBool>) -> (std::net::SocketAddr, JoinHandle<u64>) {
    use socket2::{Domain, Protocol, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    l.set_reuse_address(true).unwrap();
    l.set_recv_buffer_size(4096).unwrap();
    l.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    l.listen(16).unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let listener: std::net::TcpListener = l.into();
    let flood: Vec<u8> =
        (0..4096u64).flat_map(|i| enc(&Frame::Deliver { from_user: 9, msg_id: i, t_ns: 0, body: b"" })).collect();
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + 30 * SECOND;
        let mut written = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let mut c = match listener.accept() {
                Ok((c, _)) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(10 * SECOND)).unwrap();
            let mut hello = [0u8; 20];
            if c.read_exact(&mut hello).is_err() {
                continue;
            }
            let welcome = enc(&Frame::Welcome { session_id: 1, server_time_ns: 0, heartbeat_ms: 30_000 });
            if c.write_all(&welcome).is_err() {
                continue;
            }
            c.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
            // A write cut short resumes where it stopped, so every frame goes out whole.
            let mut pos = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c.write(&flood[pos..]) {
                    Ok(n) => {
                        written += n as u64;
                        pos = (pos + n) % flood.len();
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        }
        written
    });
    (addr, handle)
}

#[test]
fn f9_load_memory_stays_bounded_against_a_flooding_server() {
    // At f2b2d30 the load grew ~3 MiB/s here (38 MiB in this 12 s run, 335 MiB in 120 s): a
    // RECEIPT queued per DELIVER, never sent. A bounded queue needs a few MiB at most.
    const BOUND_MIB: u64 = 16;
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, flooder) = hostile_server(stop.clone());
    let mut load = std::process::Command::new(bin())
        .args(["load", "--server", &addr.to_string(), "-c", "1", "--workers", "1", "--workload", "echo"])
        .args(["--size", "64", "-d", "12s", "--force", "--no-progress"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn c2m load");
    let pid = load.id() as i32;
    // The baseline once its start-up (rings, histograms) is done: 1 s in.
    std::thread::sleep(SECOND);
    let (start, mut peak) = (rss_kib(pid), 0u64);
    let deadline = Instant::now() + 13 * SECOND;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = load.try_wait() {
            break;
        }
        peak = peak.max(rss_kib(pid));
        if peak.saturating_sub(start) > 4 * BOUND_MIB * 1024 {
            break; // enough to know
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = load.kill(); // by its PID, if it still runs
    let _ = load.wait();
    stop.store(true, Ordering::Relaxed);
    let written = flooder.join().unwrap();
    let grown_mib = peak.saturating_sub(start) / 1024;
    assert!(
        grown_mib < BOUND_MIB,
        "c2m load grew by {grown_mib} MiB (from {} MiB) while a server flooded it with {} MiB of DELIVERs and never \
         read; bound {BOUND_MIB} MiB",
        start / 1024,
        written >> 20
    );
}

// ---------------------------------------------------------------------------------------------
// F15: connections that never read make their session slots resident.

/// The bound asserted: the session-slot memory (c2m_slab_resident_bytes) that the non-reading
/// connections of one peer address may make resident, however many it opens: 1 MiB, about 25
/// full 40 KiB slots. Past it the server must pause that peer's sessions earlier, or close or
/// refuse them; any of these passes.
const PEER_RESIDENT_BOUND: f64 = 1024.0 * 1024.0;

#[test]
fn f15_non_reading_connections_of_one_peer_keep_bounded_slab_memory() {
    // A budget for replies not yet sent, under the bound less what 50 partial 4 KiB frames take
    // (the in area is not budgeted: a session keeps at most one partial frame).
    let server = ServerProcess::start(&["--slot-budget", "768KiB"]);
    let text = server.scrape();
    let (resident0, pauses0) = (sum(&text, "c2m_slab_resident_bytes"), sum(&text, "c2m_backpressure_pauses_total"));
    let n = 50;
    let mut conns: Vec<(Option<TcpStream>, usize)> = Vec::new();
    let mut refused = 0;
    for i in 0..n {
        let mut c = connect(server.addr, Some(2048));
        if c.login(1000 + i as u64).is_err() {
            refused += 1;
            continue;
        }
        let s = c.stream().try_clone().unwrap();
        s.set_nonblocking(true).unwrap();
        conns.push((Some(s), 0));
    }
    // Each writes an endless run of 4 KiB ECHOs, never reading; a partial write resumes where
    // it stopped, so frames stay whole.
    let pattern = echo(4096, b"e").repeat(8);
    let deadline = Instant::now() + 12 * SECOND;
    let mut idle_since = Instant::now();
    while Instant::now() < deadline {
        let mut progress = false;
        for (s, pos) in conns.iter_mut() {
            let Some(stream) = s else { continue };
            for _ in 0..64 {
                match stream.write(&pattern[*pos..]) {
                    Ok(k) => {
                        progress = true;
                        *pos = (*pos + k) % pattern.len();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *s = None; // closed by the server: a way to bound it
                        break;
                    }
                }
            }
        }
        if progress {
            idle_since = Instant::now();
        } else if idle_since.elapsed() > SECOND {
            break; // every connection is stuck: the server stopped reading them all
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let text = server.scrape();
    let grown = sum(&text, "c2m_slab_resident_bytes") - resident0;
    let paused = sum(&text, "c2m_backpressure_pauses_total") - pauses0;
    let open = conns.iter().filter(|c| c.0.is_some()).count();
    for (s, _) in conns.into_iter() {
        if let Some(s) = s {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    }
    assert!(
        grown <= PEER_RESIDENT_BOUND,
        "{n} non-reading connections from one address ({refused} refused, {open} still open, {paused} pauses) made \
         {:.1} MiB of session slots resident ({:.0} KiB each); bound {:.1} MiB per peer",
        grown / 1048576.0,
        grown / 1024.0 / n as f64,
        PEER_RESIDENT_BOUND / 1048576.0
    );
}

// ---------------------------------------------------------------------------------------------
// 07 (F5 at scale): group fan-out to members on another worker, faster than they can take it.

#[test]
fn group_fanout_across_workers_never_drops_an_acked_copy() {
    let server = ServerProcess::start(&[
        "--workers",
        "2",
        "--max-sessions",
        "5000",
        "--users",
        "2000",
        "--groups",
        "1",
        "--group-size",
        "1024",
        "--heartbeat",
        "600000ms",
    ]);
    let on_worker = |user: u64, w: u64| -> BlockingClient {
        for _ in 0..50 {
            let mut c = server.connect();
            if worker_of(c.login(user).expect("login")) == w {
                return c;
            }
            reset(c);
        }
        panic!("setup: could not place user {user} on worker {w}");
    };
    let rss0 = server.rss_kib();
    let members: Vec<BlockingClient> = (2..=1024).map(|u| on_worker(u, 1)).collect();
    let sender = on_worker(1500, 0);
    // The members read (and drop) what they get, as fast as one thread can.
    let stop = Arc::new(AtomicBool::new(false));
    let member_bytes = Arc::new(AtomicU64::new(0));
    let drain = {
        let (stop, member_bytes) = (stop.clone(), member_bytes.clone());
        let streams: Vec<TcpStream> = members.iter().map(|c| c.stream().try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = streams;
            for s in &open {
                s.set_nonblocking(true).unwrap();
            }
            let mut buf = vec![0u8; 1 << 16];
            let deadline = Instant::now() + 30 * SECOND;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut any = false;
                open.retain_mut(|s| match s.read(&mut buf) {
                    Ok(0) => false,
                    Ok(k) => {
                        any = true;
                        member_bytes.fetch_add(k as u64, Ordering::Relaxed);
                        true
                    }
                    Err(e) => e.kind() == ErrorKind::WouldBlock,
                });
                if !any {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let mut w = writer(&sender);
    let want = Arc::new(AtomicU64::new(u64::MAX));
    let replies = tally_replies_until(sender, want.clone(), 5 * SECOND, 12 * SECOND);
    // 1,000 group SENDs every 50 ms for 2 s (about 20,000/s, each 1,023 copies on worker 1).
    let (mut sent, started) = (0u64, Instant::now());
    let mut grown_mib = 0;
    while started.elapsed() < 2 * SECOND && grown_mib < 512 {
        let batch: Vec<u8> = (sent..sent + 1000).flat_map(|i| send(GROUP_BIT, i, b"")).collect();
        if w.write_all(&batch).is_err() {
            break;
        }
        sent += 1000;
        std::thread::sleep(Duration::from_millis(50));
        grown_mib = server.rss_kib().saturating_sub(rss0) / 1024;
    }
    drop(w);
    want.store(sent, Ordering::Relaxed);
    let t = replies.join().unwrap();
    std::thread::sleep(SECOND);
    let text = server.scrape();
    stop.store(true, Ordering::Relaxed);
    drain.join().unwrap();
    drop(members);
    // The members read but never RECEIPT: every copy of every ACKed SEND is still held (group 0
    // is users 1..=1024; the sender is not one of them).
    let held = sum(&text, "c2m_chat_held_messages");
    let slow = sum_where(&text, "c2m_sessions_closed_total", "reason=\"slow_consumer\"");
    assert_eq!(
        held,
        t.acks as f64 * 1024.0,
        "{sent} group SENDs ({t:?}): {held} member copies held for {} ACKed SENDs ({slow} members closed as slow \
         consumers, members read {} MiB, server RSS +{grown_mib} MiB)",
        t.acks,
        member_bytes.load(Ordering::Relaxed) >> 20
    );
    assert_eq!(t.replies(), sent, "every group SEND gets one ACK or NACK 8: {t:?}");
    assert!(grown_mib < 512, "server RSS grew {grown_mib} MiB in 2 s of group SENDs");
}
