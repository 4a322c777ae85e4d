//! Chat over loopback against a real `c2m serve`: routing across workers (MSG_RING), offline
//! delivery on reconnect, group fan-out, NACK 7 and 8, ERROR 9, and churn with nothing lost or
//! doubled.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use c2m::client::BlockingClient;
use c2m::proto::{ErrorCode, Frame, GROUP_BIT};
use common::{ServerProcess, sum};

const T: Duration = Duration::from_secs(5);

fn send(c: &mut BlockingClient, to_user: u64, msg_id: u64, body: &[u8]) {
    c.send(&Frame::Send { to_user, msg_id, t_ns: 0, body }).unwrap();
}

fn expect_deliver(c: &mut BlockingClient) -> (u64, u64, Vec<u8>) {
    let f = c.read_frame(T).unwrap().expect("server closed");
    match f.frame() {
        Frame::Deliver { from_user, msg_id, body, .. } => (from_user, msg_id, body.to_vec()),
        other => panic!("expected DELIVER, got {other:?}"),
    }
}

fn worker_of(session_id: u64) -> u64 {
    session_id >> 48
}

/// Logs in users until two of them are on different workers; returns them with their clients.
fn two_on_different_workers(server: &ServerProcess, first_user: u64) -> [(u64, BlockingClient); 2] {
    let mut seen: Vec<(u64, u64, BlockingClient)> = Vec::new();
    for user in first_user..first_user + 64 {
        let mut c = server.client();
        let w = worker_of(c.login(user).unwrap());
        if let Some(i) = seen.iter().position(|(_, other, _)| *other != w) {
            let (u0, _, c0) = seen.swap_remove(i);
            return [(u0, c0), (user, c)];
        }
        seen.push((user, w, c));
    }
    panic!("64 connections all landed on one worker");
}

#[test]
fn messages_cross_workers_with_ack_deliver_and_receipt() {
    let server = ServerProcess::start(&["--workers", "2", "--users", "1000"]);
    let [(a, mut ca), (b, mut cb)] = two_on_different_workers(&server, 1);
    for i in 0..50u64 {
        send(&mut ca, b, i, format!("hello {i}").as_bytes());
    }
    let mut acks = 0;
    for i in 0..50u64 {
        let (from, msg_id, body) = expect_deliver(&mut cb);
        assert_eq!((from, msg_id, body), (a, i, format!("hello {i}").into_bytes()), "in order, once");
        cb.send(&Frame::Receipt { from_user: a, msg_id }).unwrap();
    }
    let mut receipts = BTreeSet::new();
    while acks < 50 || receipts.len() < 50 {
        match ca.read_frame(T).unwrap().unwrap().frame() {
            Frame::Ack { .. } => acks += 1,
            Frame::ReceiptNotice { to_user, msg_id } => {
                assert_eq!(to_user, b);
                assert!(receipts.insert(msg_id), "receipt {msg_id} twice");
            }
            other => panic!("{other:?}"),
        }
    }
    let text = server.scrape();
    assert!(sum(&text, "c2m_chat_forwarded_total") >= 100.0, "50 DELIVERs and 50 notices crossed workers\n{text}");
    assert!(sum(&text, "c2m_chat_wakes_sent_total") >= 1.0, "{text}");
    assert_eq!(sum(&text, "c2m_chat_delivered_total"), 50.0);
}

#[test]
fn an_offline_user_gets_its_messages_at_the_next_hello() {
    let server = ServerProcess::start(&["--workers", "2", "--users", "1000"]);
    let mut a = common::login(&server, 1);
    for i in 0..20u64 {
        send(&mut a, 7, i, b"while you were out");
    }
    for _ in 0..20 {
        assert!(matches!(a.read_frame(T).unwrap().unwrap().frame(), Frame::Ack { .. }));
    }
    server.wait_metric("c2m_chat_offline_messages", 20.0, T);
    // Several logins, so that the one that gets the messages may be on either worker.
    let mut got = Vec::new();
    let mut b = common::login(&server, 7);
    while got.len() < 20 {
        let (from, msg_id, _) = expect_deliver(&mut b);
        assert_eq!(from, 1);
        got.push(msg_id);
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    server.wait_metric("c2m_chat_offline_messages", 0.0, T);
    assert_eq!(server.metric("c2m_chat_offline_delivered_total"), 20.0);
}

/// Found by tests/xdp_faults.rs (users whose login came late under loss): once a login had
/// drained stored messages, the user still looked as if some were waiting, so the next message
/// went into the store too and waited there for a send that never came (the recipient said
/// nothing more). It must arrive by itself.
#[test]
fn a_message_after_the_login_drain_arrives_without_further_traffic() {
    let server = ServerProcess::start(&["--workers", "1", "--users", "1000"]);
    let mut a = common::login(&server, 1);
    send(&mut a, 7, 0, b"while you were out");
    assert!(matches!(a.read_frame(T).unwrap().unwrap().frame(), Frame::Ack { .. }));
    server.wait_metric("c2m_chat_offline_messages", 1.0, T);
    let mut b = common::login(&server, 7);
    assert_eq!(expect_deliver(&mut b).1, 0);
    // b sends nothing (not even a RECEIPT): the next message has only its own delivery to go by.
    send(&mut a, 7, 1, b"and now");
    assert!(matches!(a.read_frame(T).unwrap().unwrap().frame(), Frame::Ack { .. }));
    assert_eq!(expect_deliver(&mut b).1, 1, "the message after the login drain");
}

#[test]
fn unknown_recipients_and_full_offline_queues_are_nacked() {
    let server = ServerProcess::start(&["--workers", "2", "--users", "100", "--offline-user-messages", "3"]);
    let mut a = common::login(&server, 1);
    send(&mut a, 101, 1, b"x");
    send(&mut a, 0, 2, b"x");
    send(&mut a, GROUP_BIT | 5, 3, b"no groups configured");
    for msg_id in 1..=3 {
        assert_eq!(
            a.read_frame(T).unwrap().unwrap().frame(),
            Frame::Nack { msg_id, code: ErrorCode::UnknownRecipient as u16 }
        );
    }
    for msg_id in 10..15 {
        send(&mut a, 50, msg_id, b"y");
    }
    for msg_id in 10..15 {
        let f = a.read_frame(T).unwrap().unwrap();
        if msg_id < 13 {
            assert_eq!(f.frame(), Frame::Ack { msg_id });
        } else {
            assert_eq!(f.frame(), Frame::Nack { msg_id, code: ErrorCode::OfflineQueueFull as u16 });
        }
    }
    // The session stays usable after NACKs.
    a.send(&Frame::Ping { seq: 1, t_ns: 2 }).unwrap();
    assert_eq!(a.read_frame(T).unwrap().unwrap().frame(), Frame::Pong { seq: 1, t_ns: 2 });
    let text = server.scrape();
    assert_eq!(common::sum_where(&text, "c2m_protocol_errors_total", "code=\"7\""), 3.0);
    assert_eq!(common::sum_where(&text, "c2m_protocol_errors_total", "code=\"8\""), 2.0);
    assert_eq!(sum(&text, "c2m_chat_offline_refused_total"), 2.0);
}

#[test]
fn a_group_message_reaches_every_member_once() {
    // 4 groups of 8 over 32 users: group 1 is users 9..=16.
    let server = ServerProcess::start(&["--workers", "2", "--users", "32", "--groups", "4", "--group-size", "8"]);
    let mut members: Vec<(u64, BlockingClient, u64)> = (9..=16)
        .filter(|u| *u != 12)
        .map(|u| {
            let mut c = server.client();
            let w = worker_of(c.login(u).unwrap());
            (u, c, w)
        })
        .collect();
    let workers: BTreeSet<u64> = members.iter().map(|m| m.2).collect();
    // The sender is not a member; member 12 is offline.
    let mut outsider = common::login(&server, 20);
    send(&mut outsider, GROUP_BIT | 1, 77, b"to the group");
    assert_eq!(outsider.read_frame(T).unwrap().unwrap().frame(), Frame::Ack { msg_id: 77 });
    for (u, c, _) in members.iter_mut() {
        assert_eq!(expect_deliver(c), (20, 77, b"to the group".to_vec()), "member {u}");
    }
    // User 12 was offline: the copy waits for it.
    let mut late = common::login(&server, 12);
    assert_eq!(expect_deliver(&mut late), (20, 77, b"to the group".to_vec()));
    let text = server.scrape();
    assert_eq!(sum(&text, "c2m_chat_group_sends_total"), 1.0);
    assert_eq!(sum(&text, "c2m_chat_delivered_total"), 8.0, "{text}");
    if workers.len() == 2 {
        assert!(sum(&text, "c2m_chat_forwarded_total") >= 1.0, "{text}");
    }
}

#[test]
fn a_second_login_replaces_the_first_with_error_9() {
    let server = ServerProcess::start(&["--workers", "2", "--users", "10"]);
    let mut first = common::login(&server, 3);
    let mut second = common::login(&server, 3);
    assert_eq!(common::expect_error(&mut first, T), ErrorCode::LoggedInElsewhere as u16);
    let mut a = common::login(&server, 1);
    send(&mut a, 3, 1, b"to the new one");
    assert_eq!(expect_deliver(&mut second), (1, 1, b"to the new one".to_vec()));
}

/// Recipients leave (BYE, then read to the end) and come back while messages flow; every
/// message arrives exactly once.
#[test]
fn churn_loses_and_doubles_nothing() {
    let server = ServerProcess::start(&["--workers", "2", "--users", "100"]);
    const RECIPIENTS: u64 = 12;
    const ROUNDS: u64 = 30;
    let mut sender = common::login(&server, 100);
    let mut online: BTreeMap<u64, BlockingClient> = (1..=RECIPIENTS).map(|u| (u, common::login(&server, u))).collect();
    let mut got: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let take = |u: u64, c: &mut BlockingClient, got: &mut BTreeMap<u64, Vec<u64>>, receipts: bool, to_end: bool| loop {
        let timeout = if to_end { T } else { Duration::from_millis(20) };
        match c.read_frame(timeout) {
            Ok(Some(f)) => match f.frame() {
                Frame::Deliver { from_user: 100, msg_id, .. } => {
                    got.entry(u).or_default().push(msg_id);
                    if receipts {
                        c.send(&Frame::Receipt { from_user: 100, msg_id }).unwrap();
                    }
                }
                other => panic!("user {u}: {other:?}"),
            },
            Ok(None) => return,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && !to_end => return,
            Err(e) => panic!("user {u}: {e}"),
        }
    };
    let mut msg_id = 0;
    for round in 0..ROUNDS {
        for u in 1..=RECIPIENTS {
            msg_id += 1;
            send(&mut sender, u, msg_id, b"churn");
        }
        for u in 1..=RECIPIENTS {
            match (round + u) % 4 {
                0 => {
                    if let Some(mut c) = online.remove(&u) {
                        c.send(&Frame::Bye).unwrap();
                        take(u, &mut c, &mut got, false, true);
                    }
                }
                2 => {
                    online.entry(u).or_insert_with(|| common::login(&server, u));
                }
                _ => {
                    if let Some(c) = online.get_mut(&u) {
                        take(u, c, &mut got, true, false);
                    }
                }
            }
        }
    }
    for u in 1..=RECIPIENTS {
        online.entry(u).or_insert_with(|| common::login(&server, u));
    }
    let want_each = ROUNDS as usize;
    for (u, c) in online.iter_mut() {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let distinct = |got: &BTreeMap<u64, Vec<u64>>| {
            got.get(u).map_or(0, |ids| ids.iter().collect::<std::collections::BTreeSet<_>>().len())
        };
        while distinct(&got) < want_each && std::time::Instant::now() < deadline {
            take(*u, c, &mut got, true, false);
        }
    }
    let mut acks = 0;
    while acks < ROUNDS * RECIPIENTS {
        match sender.read_frame(T).unwrap().unwrap().frame() {
            Frame::Ack { .. } => acks += 1,
            Frame::ReceiptNotice { .. } => {}
            other => panic!("sender: {other:?}"),
        }
    }
    // A copy delivered again after a BYE may still be on its way once every id has been seen:
    // read and receipt those too, until the server holds nothing.
    let mut text = server.scrape();
    for _ in 0..100 {
        if sum(&text, "c2m_chat_held_messages") == 0.0 {
            break;
        }
        for (u, c) in online.iter_mut() {
            take(*u, c, &mut got, true, false);
        }
        text = server.scrape();
    }

    // At least once: a DELIVER read but not receipted before a BYE comes again at the next
    // login; a client keeps exactly one of each (from_user, msg_id), as DESIGN says it must.
    for u in 1..=RECIPIENTS {
        let mut ids = got.remove(&u).unwrap_or_default();
        ids.sort_unstable();
        ids.dedup();
        let want: Vec<u64> = (0..ROUNDS).map(|r| r * RECIPIENTS + u).collect();
        assert_eq!(ids, want, "user {u}: every message, after dedupe");
    }
    // Every message was receipted in the end: the server holds none, lost none.
    assert_eq!(sum(&text, "c2m_chat_held_messages"), 0.0, "{text}");
    assert_eq!(sum(&text, "c2m_chat_offline_messages"), 0.0);
    assert_eq!(sum(&text, "c2m_chat_offline_expired_total"), 0.0);
}
