//! The fault suite's cases at CI size (scripts/chaos.sh runs them at 100k-200k clients): a real
//! `c2m serve` and a real `c2m load` over loopback, something broken in the middle, then the
//! server's gauges back to 0 and the chat ledger balanced. Clients come back with
//! `c2m load --reconnect` (backoff with jitter) and leave and return with `--churn`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use c2m::schema::load::LoadReport;
use common::{BIN, ServerProcess, assert_no_leaks};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A `c2m load` in the background, its JSON report written at the end.
struct LoadProcess {
    child: Child,
    json: tempfile::NamedTempFile,
}

impl LoadProcess {
    fn start(server: &ServerProcess, clients: u64, args: &[&str]) -> LoadProcess {
        let json = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(BIN)
            .args(["load", "--server", &server.addr.to_string(), "-c", &clients.to_string()])
            .args(["--no-progress", "--connect-timeout", "5s", "--json"])
            .arg(json.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn c2m load");
        LoadProcess { child, json }
    }

    /// Waits for the run to end; its report.
    fn report(self) -> LoadReport {
        let out = self.child.wait_with_output().expect("wait for c2m load");
        let text = std::fs::read_to_string(self.json.path()).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("no report ({e}); c2m load exited {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr))
        })
    }
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).expect("signal a child of this test");
}

/// Waits until the server holds `n` sessions.
fn wait_sessions(server: &ServerProcess, n: f64, within: Duration) {
    let deadline = Instant::now() + within;
    while server.metric("c2m_sessions_active") < n {
        assert!(Instant::now() < deadline, "{} of {n} sessions after {within:?}", server.metric("c2m_sessions_active"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ledger accounts for every delivery a SEND called for: delivered once or counted lost
/// (after its ACK, or never ACKed), nothing from outside the run.
fn assert_ledger_balances(r: &LoadReport) {
    let chat = r.chat.as_ref().expect("a chat report");
    assert_eq!(chat.expected, chat.delivered + chat.lost, "{chat:#?}");
    assert_eq!(chat.lost, chat.lost_after_ack + chat.lost_unacked, "{chat:#?}");
    assert_eq!(chat.unknown, 0, "{chat:#?}");
    assert!(chat.delivered > 0, "{chat:#?}");
}

const CLIENTS: u64 = 1000;

/// kill -9 of the server in the middle of a chat run, a new one on its port: every client comes
/// back by itself, and the ledger says what went with the killed server.
#[test]
fn a_killed_server_s_clients_come_back_to_its_successor_and_the_ledger_balances() {
    let users = CLIENTS.to_string();
    let mut first = ServerProcess::start(&["--users", &users]);
    let addr = first.addr;
    let load = LoadProcess::start(
        &first,
        CLIENTS,
        &["--workload", "chat", "--users", &users, "--msg-rate", "2", "-d", "8s", "--hold", "2s", "--reconnect"],
    );
    wait_sessions(&first, CLIENTS as f64, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    signal(&first.child, Signal::SIGKILL);
    first.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let second = ServerProcess::start_listening(addr, &["--users", &users]);
    let r = load.report();
    let c = &r.connections;
    assert!(c.relogins >= CLIENTS, "every client logged in again: {c:#?}");
    assert_eq!(c.established_at_end, CLIENTS, "{c:#?}\n{:#?}", r.errors);
    assert_eq!(c.failed, 0, "{c:#?}");
    assert_ledger_balances(&r);
    assert_no_leaks(&second);
}

/// SIGSTOP of the server, then SIGCONT: the clients wait (their messages queue in the kernel),
/// nothing is lost or doubled.
#[test]
fn a_stopped_and_continued_server_loses_nothing() {
    let users = CLIENTS.to_string();
    let server = ServerProcess::start(&["--users", &users]);
    let load = LoadProcess::start(
        &server,
        CLIENTS,
        &["--workload", "chat", "--users", &users, "--msg-rate", "2", "-d", "8s", "--reconnect"],
    );
    wait_sessions(&server, CLIENTS as f64, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    signal(&server.child, Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    signal(&server.child, Signal::SIGCONT);
    let r = load.report();
    assert_eq!(r.connections.lost, 0, "{:#?}", r.connections);
    let chat = r.chat.as_ref().unwrap();
    assert_eq!((chat.lost, chat.duplicates), (0, 0), "{chat:#?}");
    assert_ledger_balances(&r);
    assert_no_leaks(&server);
}

/// kill -9 of the load in the middle of a chat run: every session, slot, descriptor, held buffer
/// and unreceipted list goes, and the mail of the clients that vanished leaves the store with its
/// TTL, its byte count with it.
#[test]
fn a_killed_load_leaves_nothing_behind_on_the_server() {
    let users = CLIENTS.to_string();
    let server = ServerProcess::start(&["--users", &users, "--offline-ttl", "2s"]);
    let mut load = LoadProcess::start(
        &server,
        CLIENTS,
        &["--workload", "chat", "--users", &users, "--msg-rate", "5", "-d", "30s"],
    );
    wait_sessions(&server, CLIENTS as f64, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    signal(&load.child, Signal::SIGKILL);
    load.child.wait().unwrap();
    assert_no_leaks(&server);
    server.wait_metric("c2m_chat_offline_messages", 0.0, Duration::from_secs(15));
    server.wait_metric("c2m_chat_offline_bytes", 0.0, Duration::from_secs(5));
}

/// Churn: a share of the clients says BYE each minute and comes back; what they were sent while
/// away waits in the store and arrives after their login, exactly once (RECEIPT notices are best
/// effort: one for a sender who is away is dropped, one that arrives after a BYE is not read).
#[test]
fn churned_clients_get_their_mail_once_after_they_come_back() {
    let users = CLIENTS.to_string();
    let server = ServerProcess::start(&["--users", &users]);
    let load = LoadProcess::start(
        &server,
        CLIENTS,
        &[
            "--workload",
            "chat",
            "--users",
            &users,
            "--msg-rate",
            "1",
            "-d",
            "8s",
            "--hold",
            "3s",
            "--churn",
            "60",
            "--churn-away",
            "1s",
        ],
    );
    let r = load.report();
    let c = &r.connections;
    // 60% a minute of 1,000 over 8 s is about 80.
    assert!(c.churned >= 30, "{c:#?}");
    assert_eq!(c.relogins, c.churned, "every churned client came back: {c:#?}");
    assert_eq!((c.lost, c.failed, c.established_at_end), (0, 0, CLIENTS), "{c:#?}");
    let chat = r.chat.as_ref().unwrap();
    assert_eq!((chat.lost, chat.duplicates), (0, 0), "{chat:#?}");
    // A RECEIPT notice for a sender who is away is not stored (the server counts it dropped),
    // and one that reaches a sender after its BYE is not read: at most its window per leave.
    let dropped = server.metric("c2m_chat_notices_dropped_total");
    let bound = dropped + (c2m::load::chat::WINDOW * c.churned) as f64;
    assert!(chat.unreceipted as f64 <= bound, "{} unreceipted, {dropped} notices dropped", chat.unreceipted);
    assert!(server.metric("c2m_chat_offline_delivered_total") > 0.0, "some mail waited in the store");
    assert_ledger_balances(&r);
    assert_no_leaks(&server);
}

/// Every connection reset at once (sock_destroy on the server's sockets, root only): the storm
/// of reconnects is absorbed and every client is back.
#[test]
fn a_reconnect_storm_after_every_connection_is_reset_brings_all_back() {
    // `ss -K` (sock_destroy) needs root, as CI runs; without it the test fails saying so.
    common::xdp_common::require_root();
    let clients = 2000u64;
    let server = ServerProcess::start(&[]);
    let load = LoadProcess::start(
        &server,
        clients,
        &["--ping-interval", "2s", "-d", "8s", "--recv", "multishot", "--reconnect", "--reconnect-min", "50ms"],
    );
    wait_sessions(&server, clients as f64, Duration::from_secs(20));
    let out = Command::new("ss")
        .args(["-K", "-Htn", &format!("sport = :{}", server.addr.port())])
        .output()
        .expect("run ss -K (iproute2)");
    let killed = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    assert!(killed >= clients, "ss -K destroyed {killed} sockets (needs CONFIG_INET_DIAG_DESTROY)");
    let r = load.report();
    let c = &r.connections;
    assert_eq!((c.relogins, c.established_at_end, c.failed), (clients, clients, 0), "{c:#?}\n{:#?}", r.errors);
    assert_no_leaks(&server);
}
