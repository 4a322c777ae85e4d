//! A plain blocking protocol v1 client on std sockets. It shares no code with the engine, so
//! tests that use it check the server against an independent implementation. It is also the
//! `c2m hold` reference client (one process stays under RLIMIT_NOFILE; run several).

use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::proto::{self, Frame, Parsed};

pub struct BlockingClient {
    stream: TcpStream,
    buf: Vec<u8>,
    max_frame: usize,
}

/// A frame read from the server, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame(pub Vec<u8>);

impl RawFrame {
    pub fn frame(&self) -> Frame<'_> {
        match proto::parse(&self.0, proto::MAX_FRAME_LIMIT) {
            Ok(Parsed::Frame { frame, .. }) => frame,
            other => panic!("RawFrame holds a whole valid frame, got {other:?}"),
        }
    }
}

/// Connects from `source` (`None`: the kernel picks address and port).
pub fn connect(server: SocketAddr, source: Option<SocketAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(source) = source {
        // A port whose last user is in TIME_WAIT may be taken again.
        socket.set_reuse_address(true)?;
        socket.bind(&source.into())?;
    }
    socket.connect_timeout(&server.into(), timeout)?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

impl BlockingClient {
    pub fn connect(server: SocketAddr) -> io::Result<Self> {
        Ok(Self::from_stream(connect(server, None, Duration::from_secs(5))?))
    }

    pub fn from_stream(stream: TcpStream) -> Self {
        BlockingClient { stream, buf: Vec::new(), max_frame: proto::MAX_FRAME_LIMIT }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send(&mut self, frame: &Frame<'_>) -> io::Result<()> {
        self.stream.write_all(&proto::encode_vec(frame))
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one whole frame, waiting at most `timeout`. `Ok(None)`: the server closed cleanly.
    pub fn read_frame(&mut self, timeout: Duration) -> io::Result<Option<RawFrame>> {
        let deadline = Instant::now() + timeout;
        loop {
            match proto::parse(&self.buf, self.max_frame) {
                Ok(Parsed::Frame { len, .. }) => {
                    let rest = self.buf.split_off(len);
                    return Ok(Some(RawFrame(std::mem::replace(&mut self.buf, rest))));
                }
                Ok(Parsed::Incomplete { .. }) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no frame in time"));
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed mid-frame")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A read with a timeout returns EINTR rather than restarting when the thread is
                // interrupted (a signal, or io_uring task work notified like one): read again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no frame in time"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// HELLO, then the WELCOME; returns the session id.
    pub fn login(&mut self, user_id: u64) -> io::Result<u64> {
        self.send(&Frame::Hello { user_id, client_time_ns: 0 })?;
        match self.read_frame(Duration::from_secs(10))? {
            Some(f) => match f.frame() {
                Frame::Welcome { session_id, .. } => Ok(session_id),
                other => Err(io::Error::other(format!("expected WELCOME, got {other:?}"))),
            },
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before WELCOME")),
        }
    }
}

/// What `c2m hold` is asked to do.
#[derive(Clone, Debug)]
pub struct HoldConfig {
    pub server: SocketAddr,
    pub source: Option<IpAddr>,
    /// With a source address, ports are assigned here, upward from this one: the kernel's own
    /// choice (a search of its ephemeral range per connect) slows to a crawl as the range fills.
    pub first_port: u16,
    pub connections: usize,
    pub first_user: u64,
    /// How long to hold at most; holding also ends when stdin closes.
    pub hold: Duration,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct HoldReport {
    pub connected: usize,
    pub logged_in: usize,
    pub ponged: usize,
    pub errors: usize,
    pub connect_ms: u64,
}

/// Opens `connections` connections, logs each in (HELLO/WELCOME) and pings each once (PING/PONG).
/// Writes go out for all connections first, then replies are read, so the server sees them all
/// at once. Prints one JSON report line, then holds the connections until stdin closes or the
/// hold time passes.
pub fn hold(cfg: &HoldConfig) -> io::Result<HoldReport> {
    let mut report = HoldReport::default();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(cfg.connections);
    let mut port = cfg.first_port;
    while clients.len() < cfg.connections {
        let source = match cfg.source {
            Some(ip) if port == u16::MAX => {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("ran out of ports on {ip}")));
            }
            Some(ip) => {
                port += 1;
                Some(SocketAddr::new(ip, port - 1))
            }
            None => None,
        };
        match connect(cfg.server, source, Duration::from_secs(10)) {
            Ok(s) => clients.push(BlockingClient::from_stream(s)),
            // Someone else holds this port on this address: take the next one.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => {
                report.errors += 1;
                if report.errors <= 3 {
                    eprintln!("hold: connect {}: {e}", cfg.server);
                }
                if report.errors > cfg.connections / 10 + 10 {
                    return Err(e);
                }
            }
        }
    }
    report.connected = clients.len();
    report.connect_ms = started.elapsed().as_millis() as u64;
    for (i, c) in clients.iter_mut().enumerate() {
        let user_id = cfg.first_user + i as u64;
        let mut bytes = proto::encode_vec(&Frame::Hello { user_id, client_time_ns: 0 });
        bytes.extend(proto::encode_vec(&Frame::Ping { seq: user_id, t_ns: 1 }));
        if c.send_raw(&bytes).is_err() {
            report.errors += 1;
        }
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let user_id = cfg.first_user + i as u64;
        match c.read_frame(Duration::from_secs(30)) {
            Ok(Some(f)) if matches!(f.frame(), Frame::Welcome { .. }) => report.logged_in += 1,
            _ => {
                report.errors += 1;
                continue;
            }
        }
        match c.read_frame(Duration::from_secs(30)) {
            Ok(Some(f)) if f.frame() == (Frame::Pong { seq: user_id, t_ns: 1 }) => report.ponged += 1,
            _ => report.errors += 1,
        }
    }
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    io::stdout().flush()?;
    // Hold until stdin closes (the parent is done) or the time is up.
    let deadline = started + cfg.hold;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while io::stdin().lock().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            line.clear();
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    // Abortive close (RST): no TIME_WAIT sockets linger for a minute on either side, so the
    // next measurement on this box starts from a clean kernel.
    for c in &clients {
        let _ = socket2::SockRef::from(c.stream()).set_linger(Some(Duration::ZERO));
    }
    drop(clients);
    Ok(report)
}
