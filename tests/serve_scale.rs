//! 30,000 sessions in one server process: more than one ring's fixed-file table (RLIMIT_NOFILE is
//! 20,000 here), so the worker's RingSet must really spread them. The clients are two `c2m hold`
//! processes of 15,000 connections each, so each stays under the same cap.

mod common;

use std::time::Duration;

use common::{HoldProcess, ServerProcess};

#[test]
fn thirty_thousand_sessions_log_in_and_get_a_pong_on_one_worker() {
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap().0;
    let per_ring = nofile.min(1 << 20);
    let total = 30_000usize;
    assert!(total as u64 > per_ring || per_ring > 20_000, "the test must exceed one ring's table");
    // One worker, so all 30,000 sessions share one thread's RingSet; a per-ring table no larger
    // than RLIMIT_NOFILE (20,000 here) cannot hold them in one ring.
    let server = ServerProcess::start(&["--workers", "1", "--max-sessions", "40000"]);
    let half = total / 2;
    let a = HoldProcess::start(server.addr, "127.0.0.2", half, 1);
    let b = HoldProcess::start(server.addr, "127.0.0.3", half, 1 + half as u64);
    for h in [&a, &b] {
        assert_eq!(h.report.connected, half, "{:?}", h.report);
        assert_eq!(h.report.logged_in, half, "every connection gets a WELCOME: {:?}", h.report);
        assert_eq!(h.report.ponged, half, "every connection gets its PONG: {:?}", h.report);
        assert_eq!(h.report.errors, 0);
    }
    let text = server.scrape();
    let m = |name| c2m::stats::sum_metric(&text, name).unwrap();
    assert_eq!(m("c2m_sessions_active"), total as f64);
    assert_eq!(m("c2m_fixed_files_in_use"), total as f64);
    assert!(m("c2m_rings") >= 2.0, "30,000 direct descriptors need at least two rings");
    assert_eq!(m("c2m_frames_out_total"), 2.0 * total as f64, "a WELCOME and a PONG each");
    // Idle sessions that only said HELLO and PING never touch their slots.
    let resident = m("c2m_slab_resident_bytes");
    assert!(resident / (total as f64) < 256.0, "slab resident {resident} B for {total} sessions");
    a.release();
    b.release();
    server.wait_metric("c2m_sessions_active", 0.0, Duration::from_secs(30));
    server.wait_metric("c2m_slab_slots_in_use", 0.0, Duration::from_secs(10));
    server.wait_metric("c2m_fixed_files_in_use", 0.0, Duration::from_secs(10));
}
