//! A `c2m serve` process's life: a full slab refuses with ERROR 5 and frees up again, SIGTERM says
//! BYE to every session and exits 0 within the drain bound (even with clients that never read),
//! the metrics endpoint answers, and bad flags are refused at start-up.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use c2m::client::BlockingClient;
use c2m::proto::{ErrorCode, Frame, encode_vec};
use common::*;

/// The rest of the server's stdout after it exited (the banner line was read at start).
fn rest_of_stdout(server: &mut ServerProcess) -> String {
    let mut out = String::new();
    if let Some(mut s) = server.child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    out
}

// ---- a full slab ----

#[test]
fn full_slab_refuses_with_error_5_and_reuses_a_freed_slot() {
    let server = ServerProcess::start(&["--workers", "1", "--max-sessions", "100"]);
    let mut ids = std::collections::HashSet::new();
    let mut clients: Vec<BlockingClient> = (1..=100)
        .map(|u| {
            let mut c = server.client();
            assert!(ids.insert(c.login(u).unwrap()), "session ids are unique");
            c
        })
        .collect();
    let text = server.scrape();
    assert_eq!(sum(&text, "c2m_sessions_active"), 100.0, "{text}");
    assert_eq!(sum(&text, "c2m_slab_slots_in_use"), 100.0, "{text}");

    // The 101st: ERROR 5 right away, then the server closes; it never becomes a session.
    let mut extra = server.client();
    assert_eq!(expect_error(&mut extra, Duration::from_secs(5)), ErrorCode::ServerFull as u16);
    expect_closed(&mut extra);
    server.wait_metric("c2m_fixed_files_in_use", 100.0, Duration::from_secs(5));
    let text = server.scrape();
    assert_eq!(sum(&text, "c2m_sessions_rejected_total"), 1.0, "{text}");
    assert_eq!(sum_where(&text, "c2m_protocol_errors_total", "code=\"5\""), 1.0, "{text}");
    assert_eq!(sum(&text, "c2m_sessions_accepted_total"), 100.0, "a refused connection is no session\n{text}");
    assert_eq!(sum(&text, "c2m_sessions_active"), 100.0, "{text}");

    // The 100 are unharmed.
    for (i, c) in clients.iter_mut().enumerate().step_by(9) {
        c.send(&Frame::Ping { seq: i as u64, t_ns: 5 }).unwrap();
        assert_eq!(expect_frame(c).frame(), Frame::Pong { seq: i as u64, t_ns: 5 });
    }

    // One leaves; its slot is free again once the server has closed it.
    drop(clients.remove(17));
    server.wait_metric("c2m_slab_slots_in_use", 99.0, Duration::from_secs(5));
    server.wait_metric("c2m_fixed_files_in_use", 99.0, Duration::from_secs(5));
    let mut again = server.client();
    // Same slot, new generation: a session id never seen before.
    assert!(ids.insert(again.login(1000).unwrap()), "a reused slot gets a fresh session id");
    again.send(&Frame::Ping { seq: 1, t_ns: 2 }).unwrap();
    assert_eq!(expect_frame(&mut again).frame(), Frame::Pong { seq: 1, t_ns: 2 });
    clients.push(again);
    let text = server.scrape();
    assert_eq!(sum(&text, "c2m_sessions_active"), 100.0, "{text}");
    assert_eq!(sum(&text, "c2m_sessions_accepted_total"), 101.0, "{text}");
    assert_eq!(sum_where(&text, "c2m_sessions_closed_total", "reason=\"peer_closed\""), 1.0, "{text}");

    // Full again: the next one is refused too.
    let mut extra = server.client();
    assert_eq!(expect_error(&mut extra, Duration::from_secs(5)), ErrorCode::ServerFull as u16);
    expect_closed(&mut extra);
    let text = server.scrape();
    assert_eq!(sum(&text, "c2m_sessions_rejected_total"), 2.0, "{text}");

    drop(clients);
    assert_no_leaks(&server);
}

// ---- SIGTERM ----

#[test]
fn sigterm_says_bye_to_every_session_and_exits_0() {
    let mut server = ServerProcess::start(&["--workers", "2", "--drain-timeout", "3s", "--max-sessions", "1000"]);
    let mut clients: Vec<BlockingClient> = (1..=20).map(|u| login(&server, u)).collect();
    // Two that connected but have not said HELLO yet are sessions too.
    clients.push(server.client());
    clients.push(server.client());
    server.wait_metric("c2m_sessions_active", 22.0, Duration::from_secs(5));

    let t0 = Instant::now();
    let status = server.terminate(Duration::from_secs(10));
    let took = t0.elapsed();
    eprintln!("SIGTERM to exit with 22 reading clients: {took:?}");
    assert!(status.success(), "exit status {status}");
    // Every client's kernel buffer takes its BYE at once, so the drain ends long before its bound.
    assert!(took < Duration::from_secs(5), "exit took {took:?} with --drain-timeout 3s");

    // The BYEs wait in the clients' sockets, each followed by the server's FIN.
    for (i, c) in clients.iter_mut().enumerate() {
        let f = expect_frame(c);
        assert_eq!(f.frame(), Frame::Bye, "client {i}");
        expect_closed(c);
    }
    let out = rest_of_stdout(&mut server);
    assert!(out.contains("stopped, 0 sessions were still open"), "server said: {out:?}");
}

#[test]
fn sigterm_with_a_client_that_never_reads_still_exits_0_in_time() {
    let mut server = ServerProcess::start(&["--workers", "1", "--drain-timeout", "3s", "--max-sessions", "1000"]);
    // Logged in, then never reads and never closes.
    let holder = login(&server, 1);
    // One that never even said HELLO.
    let silent = server.client();
    server.wait_metric("c2m_sessions_active", 2.0, Duration::from_secs(5));
    let t0 = Instant::now();
    let status = server.terminate(Duration::from_secs(10));
    let took = t0.elapsed();
    eprintln!("SIGTERM to exit with a client that never reads: {took:?}");
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_millis(3000 + 2000), "exit took {took:?} with --drain-timeout 3s");
    drop((holder, silent));
}

#[test]
fn sigterm_with_a_send_stuck_on_a_full_socket_still_exits_0_in_time() {
    // The client never reads and its window is closed: a send of the server's is stuck in flight
    // and more replies wait in the slot when SIGTERM comes, so the BYE cannot go out.
    let mut server = ServerProcess::start(&["--workers", "1", "--drain-timeout", "3s", "--max-sessions", "1000"]);
    let mut c = small_window_client(&server);
    c.login(1).unwrap();
    let echo = encode_vec(&Frame::Echo { data: &[3; 4000] });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut owed = 0.0;
    let mut rounds = 0;
    loop {
        // A burst far smaller than the slot's out area (9 replies) while nothing is owed, then one
        // at a time, until a whole reply is owed: the send in flight is stuck.
        for _ in 0..if owed == 0.0 { 6 } else { 1 } {
            c.send_raw(&echo).unwrap();
        }
        rounds += 1;
        sleep(Duration::from_millis(5));
        let text = server.scrape();
        assert_eq!(sum_where(&text, "c2m_sessions_closed_total", "reason=\"slow_consumer\""), 0.0, "{text}");
        let queued = 24.0 + 4004.0 * sum_where(&text, "c2m_frames_out_total", "kind=\"echo_reply\"");
        owed = queued - sum(&text, "c2m_sent_bytes_total");
        if owed >= 4004.0 {
            eprintln!("{rounds} rounds, {queued} reply bytes queued, {owed} owed");
            break;
        }
        assert!(Instant::now() < deadline, "replies never backed up\n{text}");
    }
    assert_eq!(sum(&server.scrape(), "c2m_sessions_active"), 1.0);
    let t0 = Instant::now();
    let status = server.terminate(Duration::from_secs(10));
    let took = t0.elapsed();
    eprintln!("SIGTERM to exit with a send stuck on a full socket: {took:?}");
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_millis(3000 + 2000), "exit took {took:?} with --drain-timeout 3s");
    drop(c);
}

// ---- the metrics endpoint ----

fn http_get(server: &ServerProcess, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&server.metrics, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn metrics_endpoint_serves_metrics_and_404s_elsewhere() {
    let server = ServerProcess::start(&["--workers", "2", "--max-sessions", "1000"]);
    let nope = http_get(&server, "/nope");
    assert!(nope.starts_with("HTTP/1.1 404"), "{nope:?}");
    let root = http_get(&server, "/");
    assert!(root.starts_with("HTTP/1.1 404"), "{root:?}");
    let ok = http_get(&server, "/metrics");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok:?}");
    let (head, body) = ok.split_once("\r\n\r\n").unwrap();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).expect("Content-Length").trim().parse().unwrap();
    assert_eq!(len, body.len(), "Content-Length matches the body");
    assert!(body.contains("# TYPE c2m_sessions_active gauge"), "{body}");
    for (name, kind) in [
        ("c2m_sessions_accepted_total", "counter"),
        ("c2m_sessions_closed_total", "counter"),
        ("c2m_sessions_rejected_total", "counter"),
        ("c2m_protocol_errors_total", "counter"),
        ("c2m_slab_slots_in_use", "gauge"),
        ("c2m_fixed_files_in_use", "gauge"),
        ("c2m_frames_in_total", "counter"),
        ("c2m_frames_out_total", "counter"),
    ] {
        assert!(body.contains(&format!("# TYPE {name} {kind}")), "{name} {kind} missing\n{body}");
    }
    // Two workers, each with its own label.
    assert!(body.contains("c2m_sessions_active{worker=\"0\"} 0"), "{body}");
    assert!(body.contains("c2m_sessions_active{worker=\"1\"} 0"), "{body}");
    assert!(http_get(&server, "/metrics?x=1").starts_with("HTTP/1.1 200"));
    // A session shows up.
    let c = login(&server, 1);
    server.wait_metric("c2m_sessions_active", 1.0, Duration::from_secs(5));
    drop(c);
    assert_no_leaks(&server);
}

// ---- bad flags ----

/// Runs `c2m serve` with `args`; it must exit non-zero (within 10 s) with `needle` on stderr.
fn serve_refuses(args: &[&str], needle: &str) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn c2m serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("c2m serve {args:?} is still running: it should have refused its flags");
        }
        sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "c2m serve {args:?} exited with {status}");
    assert!(stderr.contains(needle), "c2m serve {args:?}: stderr does not mention {needle:?}:\n{stderr}");
}

#[test]
fn bad_flags_are_refused_at_start_up() {
    serve_refuses(&["--session-bytes", "1000"], "--session-bytes");
    serve_refuses(&["--workers", "0"], "--workers");
    serve_refuses(&["--max-frame", "10"], "--max-frame");
    serve_refuses(&["--max-frame", "70000"], "--max-frame");
    serve_refuses(&["--recv-buffers", "100"], "--recv-buffers");
    // One budget for all workers: fewer sessions than workers is fine, none is not.
    serve_refuses(&["--workers", "4", "--max-sessions", "0"], "--max-sessions");
    serve_refuses(&["--hello-timeout", "0"], "timeout");
    serve_refuses(&["--no-such-flag"], "--no-such-flag");
}
