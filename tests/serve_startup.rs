//! What `c2m serve` costs and says before any session arrives: the user directory is address
//! space, not memory (finding F16), and a session count whose slots could outgrow the box is
//! named in a warning at start.

mod common;

use common::ServerProcess;

fn rss_mib(server: &ServerProcess) -> u64 {
    c2m::host::process::memory(server.child.id()).expect("smaps_rollup of c2m serve").rss >> 20
}

#[test]
fn a_hundred_million_users_cost_no_memory_at_start() {
    let small = ServerProcess::start(&["--workers", "1", "--max-sessions", "100", "--users", "1000"]);
    let large = ServerProcess::start(&["--workers", "1", "--max-sessions", "100", "--users", "100m"]);
    // Both are serving (the banner came, so the directory exists); 100m entries of 8 bytes would
    // be 763 MiB if written at start.
    let (small_mib, large_mib) = (rss_mib(&small), rss_mib(&large));
    assert!(large_mib < small_mib + 16, "--users 100m: {large_mib} MiB resident, --users 1000: {small_mib} MiB");
    assert!(large.scrape().contains("c2m_"));
}

/// Starts `c2m serve` with `extra`, waits for its banner, stops it, and returns its stderr.
fn stderr_of_a_start(extra: &[&str]) -> String {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn c2m serve");
    let mut banner = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut banner).unwrap();
    if !banner.contains("listening on") {
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        panic!("c2m serve {} did not start: {banner:?}\n{err}", extra.join(" "));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    err
}

#[test]
fn a_session_count_that_could_outgrow_memory_is_named_at_start() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let mem_total: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024;
    // Twice the box in 1 GiB slots (few sessions, so the rings they need fit any RLIMIT_NOFILE).
    let sessions = (2 * mem_total / (1 << 30) + 1).to_string();
    let err =
        stderr_of_a_start(&["--max-sessions", &sessions, "--session-bytes", "1073741824", "--slot-budget", "1024GiB"]);
    assert!(err.contains("warning") && err.contains("MemTotal") && err.contains("--max-sessions"), "{err}");
    let err = stderr_of_a_start(&["--max-sessions", "1000"]);
    assert!(!err.contains("warning"), "{err}");
}

/// `c2m serve --listen ADDR`, run to its end (it must refuse to start), and its exit status and
/// stderr.
fn refused_start(listen: &str) -> (i32, String) {
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--workers", "2", "--max-sessions", "100", "--listen", listen])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run c2m serve");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// SO_REUSEPORT would let a second server join a busy port and take a share of its connections;
/// a port someone listens on is refused instead, while one server's own workers still share it.
#[test]
fn a_port_another_process_listens_on_is_refused() {
    // Another program's listener (no SO_REUSEPORT).
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, err) = refused_start(&other.local_addr().unwrap().to_string());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already in use") && err.contains("--listen"), "{err}");
    if common::xdp_under_test() {
        // The xdp server listens inside a namespace of its own: no loopback port to share.
        return;
    }
    // Another c2m serve (SO_REUSEPORT on each of its two workers' listeners).
    let first = ServerProcess::start(&["--workers", "2", "--max-sessions", "100"]);
    let (code, err) = refused_start(&first.addr.to_string());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already in use"), "{err}");
    // The first server still answers on its port.
    common::login(&first, 1);
}

/// `--heartbeat 750ms` reaches clients in WELCOME, and the old `--heartbeat-ms` (hidden, bare
/// milliseconds) still means what it did.
#[test]
fn the_heartbeat_takes_units_and_the_old_spelling_still_works() {
    use c2m::proto::{Frame, encode_vec};
    for flag in [["--heartbeat", "750ms"], ["--heartbeat-ms", "750"]] {
        let server = ServerProcess::start(&["--workers", "1", "--max-sessions", "100", flag[0], flag[1]]);
        let mut c = server.client();
        c.send_raw(&encode_vec(&Frame::Hello { user_id: 1, client_time_ns: 0 })).unwrap();
        let welcome = common::expect_frame(&mut c);
        assert!(matches!(welcome.frame(), Frame::Welcome { heartbeat_ms: 750, .. }), "{flag:?}: {:?}", welcome.frame());
    }
}
