//! The `/metrics` endpoint of a real `c2m serve` against hostile scrapers (finding F6): a client
//! that trickles header lines must not hold other scrapes up, a request line without end must not
//! grow the server, and a client that never finishes its request is dropped.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ServerProcess;

fn rss(server: &ServerProcess) -> u64 {
    c2m::host::process::memory(server.child.id()).expect("smaps_rollup of c2m serve").rss
}

fn small_server() -> ServerProcess {
    ServerProcess::start(&["--workers", "1", "--max-sessions", "100", "--users", "100"])
}

#[test]
fn a_client_trickling_headers_does_not_hold_up_other_scrapes() {
    let server = small_server();
    let mut hog = TcpStream::connect(server.metrics).unwrap();
    hog.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let stop = Instant::now() + Duration::from_secs(3);
    let trickle = std::thread::spawn(move || {
        // One header line every 300 ms, never the blank line that ends the request.
        while Instant::now() < stop {
            if hog.write_all(b"X-Slow: 1\r\n").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..3 {
        let t = Instant::now();
        let text = server.scrape();
        assert!(text.contains("c2m_"), "{text}");
        assert!(t.elapsed() < Duration::from_secs(1), "scrape {i} took {:?} while one client trickled", t.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    trickle.join().unwrap();
}

#[test]
fn a_request_line_without_end_is_cut_off_and_does_not_grow_the_server() {
    let server = small_server();
    let before = rss(&server);
    let mut s = TcpStream::connect(server.metrics).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![b'A'; 1 << 20];
    let mut sent = 0usize;
    // 100 MiB without a newline; the server may stop reading (the write then fails or stalls).
    while sent < 100 << 20 {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let grown = rss(&server).saturating_sub(before);
    assert!(grown < 16 << 20, "c2m serve grew by {} MiB after {} MiB of request line", grown >> 20, sent >> 20);
    drop(s);
    // The endpoint still answers.
    assert!(server.scrape().contains("c2m_"));
}

#[test]
fn an_oversized_header_gets_431() {
    let server = small_server();
    let mut s = TcpStream::connect(server.metrics).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    // 9 KiB of headers: past the 8 KiB cap, but small enough that the server reads all of it
    // before answering (so no reset destroys the answer).
    for _ in 0..9 {
        s.write_all(format!("X-Big: {}\r\n", "b".repeat(1000)).as_bytes()).unwrap();
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
}

#[test]
fn a_client_that_never_finishes_its_request_is_dropped() {
    let server = small_server();
    let mut s = TcpStream::connect(server.metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let mut writer = s.try_clone().unwrap();
    let stop = Instant::now() + Duration::from_secs(15);
    // A header line every 500 ms: each read gets bytes, so only a deadline on the whole request
    // ends it.
    let trickle = std::thread::spawn(move || {
        while Instant::now() < stop && writer.write_all(b"X-Slow: 1\r\n").is_ok() {
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    // Closed by the server (EOF or a reset), not answered and not left open.
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("answered an unfinished request: {:?}", String::from_utf8_lossy(&buf[..n])),
    }
    assert!(t.elapsed() < Duration::from_secs(10), "dropped only after {:?}", t.elapsed());
    let _ = s.shutdown(std::net::Shutdown::Both);
    trickle.join().unwrap();
}

#[test]
fn many_idle_connections_do_not_lock_scrapes_out() {
    let server = small_server();
    // More idle connections than the endpoint keeps: the oldest unfinished ones make room.
    let idle: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(server.metrics).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    assert!(server.scrape().contains("c2m_"));
    assert!(t.elapsed() < Duration::from_secs(1), "scrape took {:?} next to 100 idle connections", t.elapsed());
    drop(idle);
}

/// Conventional names and units, every series from the first scrape (zeros included), the build
/// and the standard process families.
#[test]
fn every_series_is_there_from_the_start_with_conventional_names() {
    let server = small_server();
    let text = server.scrape();
    for name in [
        "c2m_received_bytes_total",
        "c2m_sent_bytes_total",
        "c2m_frames_in_total",
        "c2m_frames_out_total",
        "c2m_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing\n{text}");
    }
    for old in ["c2m_bytes_in_total", "c2m_bytes_out_total"] {
        assert!(!text.contains(old), "{old} is still served");
    }
    // No frame has moved yet, and every kind is there at 0.
    assert!(text.contains("c2m_frames_in_total{worker=\"0\",kind=\"ping\"} 0"), "{text}");
    assert!(text.contains("c2m_frames_out_total{worker=\"0\",kind=\"deliver\"} 0"), "{text}");
    let info = text.lines().find(|l| l.starts_with("c2m_build_info{")).unwrap();
    assert!(info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))) && info.ends_with("} 1"), "{info}");
    // The process families are the server's own: its resident memory, as smaps_rollup says.
    let resident = c2m::stats::sum_metric(&text, "process_resident_memory_bytes").unwrap();
    let rss = rss(&server) as f64;
    assert!((resident - rss).abs() < rss / 2.0 + (8 << 20) as f64, "{resident} vs smaps_rollup {rss}");
}

/// `c2m load --metrics ADDR` serves the run's counters while it runs.
#[test]
fn load_serves_its_counters_during_the_run() {
    use std::io::BufRead;
    if common::xdp_under_test() {
        eprintln!("skipped under xdp: this case is about the load's endpoint, not the server's data plane");
        return;
    }
    let server = small_server();
    let mut load = std::process::Command::new(common::BIN)
        .args(["load", "--server", &server.addr.to_string(), "-c", "20", "--workers", "1", "--no-progress"])
        .args(["--ping-interval", "100ms", "-d", "3s", "--metrics", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn c2m load");
    let mut err = std::io::BufReader::new(load.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "c2m load ended without naming its metrics address");
        if let Some(rest) = line.trim().strip_prefix("c2m load: metrics at http://") {
            break rest.trim_end_matches("/metrics").parse::<std::net::SocketAddr>().unwrap();
        }
    };
    // The message phase: all 20 logged in, PINGs going out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = c2m::stats::metrics_http::scrape(addr).expect("scrape the load");
        let established = c2m::stats::sum_metric(&text, "c2m_load_connections_established").unwrap();
        let sent = c2m::stats::sum_metric(&text, "c2m_load_messages_sent_total").unwrap();
        if established == 20.0 && sent > 0.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "never saw the run going:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(c2m::stats::sum_metric(&text, "c2m_sent_bytes_total").unwrap() > 0.0, "{text}");
    assert!(text.contains("c2m_build_info{") && text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
    assert!(load.wait().unwrap().success());
}
