//! A minimal HTTP endpoint for `/metrics`, off the hot path: one thread, an epoll loop over
//! non-blocking sockets, so no client can hold up another's scrape.
//!
//! What a client gets at most (before, one client trickling header lines blocked every scrape,
//! and a request line without end grew the server by as much as it sent):
//! - [`MAX_REQUEST`] bytes of request line and headers; past that, 431 and a close;
//! - [`REQUEST_DEADLINE`] to send its whole request and [`ANSWER_DEADLINE`] to take the answer;
//! - one of [`MAX_CONNECTIONS`] places; a new connection past that takes the place of the oldest
//!   one not being answered, so idle or trickling connections cannot lock scrapes out.
//!
//! After an answer the endpoint half-closes and reads (and drops) what the client still sends,
//! briefly and up to [`LINGER_BYTES`], before closing: closing with unread input would send a
//! reset that can destroy the answer before the client reads it.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

/// What a scrape answers: the families of the process that serves them (`c2m serve`'s or
/// `c2m load`'s); [`super::process::render`] (build info, process_*) is added to every answer.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Request line and headers together, at most.
pub const MAX_REQUEST: usize = 8 * 1024;
/// From accept to the end of the request's headers.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// From the end of the request to the last byte of the answer sent.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// Connections held at once.
pub const MAX_CONNECTIONS: usize = 64;
/// After the answer: how long, and how many bytes, a client's leftover input is read and dropped.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// The epoll token of the listener; connections get 1, 2, ...
const LISTENER: u64 = 0;

/// Binds `addr` and serves Prometheus text at `/metrics` from a background thread. Returns the
/// bound address (useful with port 0).
pub fn spawn(addr: SocketAddr, render: Render) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    let endpoint = Endpoint { listener, epoll, conns: HashMap::new(), next_id: LISTENER + 1, render };
    std::thread::Builder::new().name("c2m-metrics".into()).spawn(move || endpoint.run())?;
    Ok(bound)
}

struct Endpoint {
    listener: TcpListener,
    epoll: Epoll,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    render: Render,
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    /// When the current phase must be over; past it the connection is dropped.
    deadline: Instant,
    opened: Instant,
}

enum Phase {
    /// The request so far (at most [`MAX_REQUEST`] bytes).
    Reading(Vec<u8>),
    Answering {
        out: Vec<u8>,
        sent: usize,
    },
    /// Answered and half-closed; input read and dropped until EOF.
    Lingering {
        dropped: usize,
    },
}

/// What to do with a connection after it was served.
enum Next {
    Keep,
    Close,
}

impl Endpoint {
    fn run(mut self) {
        let mut events = [EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut events, self.wait_ms()) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(_) => {
                    // Nothing here fails for long; do not spin if it does.
                    std::thread::sleep(Duration::from_millis(100));
                    0
                }
            };
            for event in &events[..n] {
                match event.data() {
                    LISTENER => self.accept(),
                    id => self.serve(id),
                }
            }
            let now = Instant::now();
            self.conns.retain(|_, c| c.deadline > now);
        }
    }

    /// Until the nearest deadline, at most a second.
    fn wait_ms(&self) -> u16 {
        let now = Instant::now();
        let nearest = self.conns.values().map(|c| c.deadline.saturating_duration_since(now)).min();
        nearest.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1)).as_millis() as u16 + 1
    }

    fn accept(&mut self) {
        // Bounded: the backlog holds at most somaxconn connections.
        for _ in 0..1024 {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // Out of descriptors or memory: leave the rest queued, try again shortly.
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            }
        }
    }

    fn admit(&mut self, stream: TcpStream) {
        if self.conns.len() >= MAX_CONNECTIONS {
            // The oldest connection not being answered makes room; if every one is being
            // answered, the newcomer is closed.
            let victim = self
                .conns
                .iter()
                .filter(|(_, c)| !matches!(c.phase, Phase::Answering { .. }))
                .min_by_key(|(_, c)| c.opened)
                .map(|(&id, _)| id);
            match victim {
                Some(id) => drop(self.conns.remove(&id)),
                None => return,
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        if stream.set_nonblocking(true).is_err()
            || self.epoll.add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, id)).is_err()
        {
            return;
        }
        let now = Instant::now();
        let conn = Conn { stream, phase: Phase::Reading(Vec::new()), deadline: now + REQUEST_DEADLINE, opened: now };
        self.conns.insert(id, conn);
    }

    fn serve(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let next = match conn.phase {
            Phase::Reading(_) => match read_request(conn) {
                Request::Incomplete => Next::Keep,
                Request::Gone => Next::Close,
                Request::Head(head) => self.start_answer(id, Some(&head)),
                Request::TooLarge => self.start_answer(id, None),
            },
            Phase::Answering { .. } => send_answer(conn, &self.epoll, id),
            Phase::Lingering { .. } => linger(conn),
        };
        if let Next::Close = next
            && let Some(conn) = self.conns.remove(&id)
        {
            let _ = self.epoll.delete(&conn.stream);
        }
    }

    fn start_answer(&mut self, id: u64, head: Option<&[u8]>) -> Next {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Next::Close;
        };
        conn.phase = Phase::Answering { out: answer(head, &*self.render), sent: 0 };
        conn.deadline = Instant::now() + ANSWER_DEADLINE;
        let _ = self.epoll.modify(&conn.stream, &mut EpollEvent::new(EpollFlags::EPOLLOUT, id));
        send_answer(conn, &self.epoll, id)
    }
}

/// What a connection's request is so far.
enum Request {
    Incomplete,
    /// Closed or failed before the end of its request: nothing to answer.
    Gone,
    /// The request line and headers, whole.
    Head(Vec<u8>),
    /// More than [`MAX_REQUEST`] bytes without the end of the headers.
    TooLarge,
}

/// Reads what has arrived, up to the cap.
fn read_request(conn: &mut Conn) -> Request {
    let Phase::Reading(buf) = &mut conn.phase else {
        return Request::Incomplete;
    };
    let mut chunk = [0u8; 4096];
    loop {
        let room = MAX_REQUEST - buf.len();
        if room == 0 {
            return Request::TooLarge;
        }
        let want = room.min(chunk.len());
        match conn.stream.read(&mut chunk[..want]) {
            Ok(0) => return Request::Gone,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = header_end(buf) {
                    return Request::Head(buf[..end].to_vec());
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Request::Incomplete,
            Err(_) => return Request::Gone,
        }
    }
}

fn send_answer(conn: &mut Conn, epoll: &Epoll, id: u64) -> Next {
    let Phase::Answering { out, sent } = &mut conn.phase else {
        return Next::Keep;
    };
    while *sent < out.len() {
        match conn.stream.write(&out[*sent..]) {
            Ok(0) => return Next::Close,
            Ok(n) => *sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
            Err(_) => return Next::Close,
        }
    }
    let _ = conn.stream.shutdown(Shutdown::Write);
    conn.phase = Phase::Lingering { dropped: 0 };
    conn.deadline = Instant::now() + LINGER;
    let _ = epoll.modify(&conn.stream, &mut EpollEvent::new(EpollFlags::EPOLLIN, id));
    linger(conn)
}

fn linger(conn: &mut Conn) -> Next {
    let Phase::Lingering { dropped } = &mut conn.phase else {
        return Next::Keep;
    };
    let mut chunk = [0u8; 4096];
    while *dropped < LINGER_BYTES {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return Next::Close,
            Ok(n) => *dropped += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
            Err(_) => return Next::Close,
        }
    }
    Next::Close
}

/// Where the request line and headers end (just past the blank line), if they have.
fn header_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The whole HTTP answer to a request head; `None`: the head was too large.
fn answer(head: Option<&[u8]>, render: &(dyn Fn() -> String + Send + Sync)) -> Vec<u8> {
    let Some(head) = head else {
        return response("431 Request Header Fields Too Large", "request line and headers are limited to 8 KiB\n");
    };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let path = line.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).nth(1).unwrap_or_default();
    if path == b"/metrics" || path.starts_with(b"/metrics?") {
        let mut body = render();
        super::process::render(&mut body);
        response("200 OK", &body)
    } else {
        response("404 Not Found", "try /metrics\n")
    }
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Fetches `http://addr/metrics` (for tests and tools; plain blocking HTTP/1.1).
pub fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    scrape_on(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?, addr)
}

/// [`scrape`] over a connection the caller made (e.g. from a source port it chose).
pub fn scrape_on(mut s: TcpStream, addr: SocketAddr) -> std::io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("bad metrics answer: {}", text.lines().next().unwrap_or("")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_the_headers() {
        assert_eq!(header_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(27));
        assert_eq!(header_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(header_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(header_end(b""), None);
    }

    #[test]
    fn answers_metrics_404_and_431() {
        let text = |v: Vec<u8>| String::from_utf8(v).unwrap();
        let none = || String::new();
        let ok = text(answer(Some(b"GET /metrics HTTP/1.1\r\n\r\n"), &none));
        assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.contains("c2m_build_info{"), "{ok}");
        assert!(text(answer(Some(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"), &none)).starts_with("HTTP/1.1 200 OK"));
        assert!(text(answer(Some(b"GET / HTTP/1.1\r\n\r\n"), &none)).starts_with("HTTP/1.1 404"));
        assert!(text(answer(Some(b"\r\n\r\n"), &none)).starts_with("HTTP/1.1 404"));
        let too_large = text(answer(None, &none));
        assert!(too_large.starts_with("HTTP/1.1 431") && too_large.ends_with("8 KiB\n"), "{too_large}");
    }

    /// The loop itself in-process: a scrape is answered next to a connection holding a partial
    /// request, and a request past the cap gets 431.
    #[test]
    fn serves_a_scrape_beside_a_stalled_request_and_caps_requests() {
        let workers = vec![Arc::new(super::super::WorkerStats::default())];
        let addr = spawn("127.0.0.1:0".parse().unwrap(), super::super::server_render(workers)).unwrap();
        let mut stalled = TcpStream::connect(addr).unwrap();
        stalled.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: 1\r\n").unwrap();
        let t = Instant::now();
        assert!(scrape(addr).unwrap().contains("c2m_sessions_active{worker=\"0\"} 0"));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        let mut big = TcpStream::connect(addr).unwrap();
        big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        big.write_all(&vec![b'A'; MAX_REQUEST + 100]).unwrap();
        let mut answer = String::new();
        let _ = big.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
        drop(stalled);
    }
}
