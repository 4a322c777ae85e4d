//! A minimal HTTP endpoint for `/metrics`: one thread, one request at a time, off the hot path.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{WorkerStats, render_prometheus};

/// Binds `addr` and serves Prometheus text at `/metrics` from a background thread. Returns the
/// bound address (useful with port 0).
pub fn spawn(addr: SocketAddr, workers: Vec<Arc<WorkerStats>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("c2m-metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, &workers);
        }
    })?;
    Ok(bound)
}

fn answer(stream: TcpStream, workers: &[Arc<WorkerStats>]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers; we need none of them.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
        ("200 OK", render_prometheus(workers))
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    let mut stream = &stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Fetches `http://addr/metrics` (for tests and tools; plain blocking HTTP/1.1).
pub fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("bad metrics answer: {}", text.lines().next().unwrap_or("")))),
    }
}
