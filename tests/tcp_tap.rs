//! c2m's TCP against unmodified Linux TCP, without AF_XDP: a TAP device in a network namespace
//! this test makes and removes. The kernel side has 198.18.0.2/15 on the tap and a permanent
//! neighbour entry for the endpoint's 198.18.0.1 (so it needs no ARP answer); the test thread
//! enters the namespace and reads and writes Ethernet frames on /dev/net/tun (IFF_TAP |
//! IFF_NO_PI), driving an `Endpoint` with a wall clock. Kernel peers run in threads spawned after
//! `setns`, so they live in the namespace too.
//!
//! Needs root, /dev/net/tun and `ip` with netns support: a kernel without them fails the test
//! with a message naming what is missing; it does not pass silently.
//!
//! Checksums: a tap with no TUNSETOFFLOAD has no checksum offload, so the kernel hands over
//! frames with full checksums (checked: `bad_frames` stays 0 in every test here).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use c2m::tcp::wire::{MAX_FRAME, WireError};
use c2m::tcp::{App, CloseCause, Config, ConnectError, Endpoint, FaultConfig, FaultInjector, TcbId, Tx};

const EP_MAC: [u8; 6] = [0x02, 0, 0, 0xc2, 0x3a, 0x01];
const KERNEL_MAC: &str = "02:00:00:c2:3a:02";
const KERNEL_MAC_BYTES: [u8; 6] = [0x02, 0, 0, 0xc2, 0x3a, 0x02];
const EP_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const TAP: &str = "c2mtap0";
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---- the namespace and the tap ----

fn run_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A network namespace the test thread is in while this lives; on drop the thread goes back and
/// the namespace (and the tap in it) is deleted, on failure too.
struct Netns {
    name: String,
    orig: File,
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

fn setns(file: &File) -> std::io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `file` keeps open for the call; it changes
    // the calling thread's network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

impl Netns {
    fn enter() -> Netns {
        if !std::path::Path::new("/dev/net/tun").exists() {
            panic!("/dev/net/tun is missing: this kernel lacks the tun driver (CONFIG_TUN), which this test needs");
        }
        let name = format!("c2m-tcp-{}-{}", std::process::id(), NEXT_NS.fetch_add(1, Ordering::Relaxed));
        run_ip(&["netns", "add", &name])
            .unwrap_or_else(|e| panic!("cannot make a network namespace (needs root and CONFIG_NET_NS): {e}"));
        let orig = File::open("/proc/thread-self/ns/net").expect("open this thread's netns");
        let ns = Netns { name, orig };
        let target = File::open(format!("/run/netns/{}", ns.name)).expect("open the new netns");
        setns(&target).unwrap_or_else(|e| panic!("setns into {}: {e}", ns.name));
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = setns(&self.orig);
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Opens the tap (in the thread's namespace), non-blocking, and configures the kernel side.
fn open_tap(ns: &Netns) -> File {
    let tap = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .unwrap_or_else(|e| panic!("open /dev/net/tun: {e}"));
    // SAFETY: ifreq is plain data; all-zero is a valid value (empty name, no flags).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(TAP.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and may write the name back to) the ifreq we pass, which lives
    // across the call; the descriptor is the open tun device.
    let rc = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc != 0 {
        panic!("TUNSETIFF (IFF_TAP): {}", std::io::Error::last_os_error());
    }
    let n = ns.name.as_str();
    let steps: [&[&str]; 4] = [
        &["-n", n, "link", "set", "lo", "up"],
        &["-n", n, "link", "set", TAP, "address", KERNEL_MAC, "up"],
        &["-n", n, "addr", "add", "198.18.0.2/15", "dev", TAP],
        &["-n", n, "neigh", "add", "198.18.0.1", "lladdr", "02:00:00:c2:3a:01", "dev", TAP, "nud", "permanent"],
    ];
    for s in steps {
        run_ip(s).unwrap_or_else(|e| panic!("configuring the tap: {e}"));
    }
    tap
}

// ---- the owner ----

#[derive(Default, Debug)]
struct Conn {
    tcb: Option<TcbId>,
    input: Vec<u8>,
    out: VecDeque<u8>,
    connected: bool,
    ended: bool,
    close_asked: bool,
    closed: Option<CloseCause>,
    failed: Option<ConnectError>,
}

#[derive(Default)]
struct Owner {
    conns: Vec<Conn>,
    echo: bool,
    /// Close once this many bytes came in (and were echoed).
    close_after: Option<usize>,
    /// Close when the peer's FIN arrives.
    close_on_fin: bool,
    /// Connections to close (the owner cannot call the endpoint from inside a callback).
    to_close: Vec<u32>,
}

impl Owner {
    fn ask_close(&mut self, conn: u32) {
        let c = &mut self.conns[conn as usize];
        if !c.close_asked {
            c.close_asked = true;
            self.to_close.push(conn);
        }
    }

    fn all_closed(&self, n: usize) -> bool {
        self.conns.len() == n && self.conns.iter().all(|c| c.closed.is_some() || c.failed.is_some())
    }
}

impl App for Owner {
    fn accept(&mut self, tcb: TcbId, _local: SocketAddrV4, _remote: SocketAddrV4) -> Option<u32> {
        self.conns.push(Conn { tcb: Some(tcb), connected: true, ..Conn::default() });
        Some(self.conns.len() as u32 - 1)
    }
    fn connected(&mut self, conn: u32) {
        self.conns[conn as usize].connected = true;
    }
    fn connect_failed(&mut self, conn: u32, why: ConnectError) {
        self.conns[conn as usize].failed = Some(why);
    }
    fn input(&mut self, conn: u32, data: &[u8]) -> usize {
        let c = &mut self.conns[conn as usize];
        c.input.extend_from_slice(data);
        if self.echo {
            c.out.extend(data);
        }
        if self.close_after.is_some_and(|n| c.input.len() >= n) {
            self.ask_close(conn);
        }
        data.len()
    }
    fn output(&self, conn: u32, skip: usize) -> &[u8] {
        let (a, b) = self.conns[conn as usize].out.as_slices();
        if skip < a.len() { &a[skip..] } else { b.get(skip - a.len()..).unwrap_or(&[]) }
    }
    fn output_len(&self, conn: u32) -> usize {
        self.conns[conn as usize].out.len()
    }
    fn acked(&mut self, conn: u32, n: usize) {
        self.conns[conn as usize].out.drain(..n);
    }
    fn input_ended(&mut self, conn: u32) {
        self.conns[conn as usize].ended = true;
        if self.close_on_fin {
            self.ask_close(conn);
        }
    }
    fn closed(&mut self, conn: u32, why: CloseCause) {
        self.conns[conn as usize].closed = Some(why);
    }
}

// ---- the driver ----

/// Frames out: written to the tap, through a fault injector when there is one.
struct TapTx {
    tap: File,
    buf: Vec<u8>,
    fault: Option<FaultInjector>,
    now: u64,
    write_errors: u64,
}

impl TapTx {
    fn write_frame(tap: &mut File, errors: &mut u64, frame: &[u8]) {
        if tap.write(frame).is_err() {
            *errors += 1;
        }
    }

    fn release(&mut self) {
        let (tap, errors) = (&mut self.tap, &mut self.write_errors);
        if let Some(f) = self.fault.as_mut() {
            f.release(self.now, &mut |b| Self::write_frame(tap, errors, b));
        }
    }
}

impl Tx for TapTx {
    fn buffer(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.buf)
    }
    fn send(&mut self, len: usize) {
        let (tap, errors) = (&mut self.tap, &mut self.write_errors);
        match self.fault.as_mut() {
            Some(f) => f.send(self.now, &self.buf[..len], &mut |b| Self::write_frame(tap, errors, b)),
            None => Self::write_frame(tap, errors, &self.buf[..len]),
        }
    }
}

struct Driver {
    ep: Endpoint,
    tap: File,
    tx: TapTx,
    fault_in: Option<FaultInjector>,
    start: Instant,
}

impl Driver {
    fn new(tap: File, faults: Option<FaultConfig>) -> Driver {
        let cfg = Config { capacity: 1024, time_wait_ms: 500, secret: 0xc2a1, ..Config::default() };
        let mut ep = Endpoint::new(cfg, EP_MAC);
        ep.listen(SocketAddrV4::new(EP_IP, 7700));
        ep.set_peer_mac(KERNEL_MAC_BYTES);
        let tx = TapTx {
            tap: tap.try_clone().expect("dup the tap"),
            buf: vec![0; MAX_FRAME],
            fault: faults.map(|f| FaultInjector::new(f, 11)),
            now: 0,
            write_errors: 0,
        };
        Driver { ep, tap, tx, fault_in: faults.map(|f| FaultInjector::new(f, 12)), start: Instant::now() }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    /// Reads frames, runs timers and the owner's closes until `done` or the test timeout.
    fn pump(&mut self, owner: &mut Owner, what: &str, mut done: impl FnMut(&Owner, &Endpoint) -> bool) {
        let mut frame = vec![0u8; 65_536];
        while !done(owner, &self.ep) {
            assert!(self.start.elapsed() < TEST_TIMEOUT, "timed out waiting for: {what}; stats {:?}", self.ep.stats());
            let now = self.now();
            self.tx.now = now;
            let mut idle = true;
            for _ in 0..256 {
                match self.tap.read(&mut frame) {
                    Ok(n) => {
                        idle = false;
                        let (ep, tx) = (&mut self.ep, &mut self.tx);
                        match self.fault_in.as_mut() {
                            Some(f) => f.send(now, &frame[..n], &mut |b| ep.on_frame(now, b, owner, tx)),
                            None => ep.on_frame(now, &frame[..n], owner, tx),
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("reading the tap: {e}"),
                }
            }
            if let Some(f) = self.fault_in.as_mut() {
                let (ep, tx) = (&mut self.ep, &mut self.tx);
                f.release(now, &mut |b| ep.on_frame(now, b, owner, tx));
            }
            self.tx.release();
            self.ep.on_tick(now, owner, &mut self.tx);
            for conn in std::mem::take(&mut owner.to_close) {
                let tcb = owner.conns[conn as usize].tcb.unwrap();
                self.ep.close(now, tcb, owner, &mut self.tx);
            }
            self.ep.check_invariants().unwrap_or_else(|e| panic!("{e}"));
            if idle {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn assert_clean(&self) {
        let st = self.ep.stats();
        assert_eq!(st.bad_frames[WireError::TcpChecksum.index()], 0, "partial checksums from the kernel? {st:?}");
        assert_eq!(st.bad_frames[WireError::IpChecksum.index()], 0);
        assert_eq!(self.tx.write_errors, 0);
        assert_eq!(self.ep.connections(), 0, "control blocks left");
        assert_eq!(self.ep.syn_queue_len(), 0);
        assert_eq!(self.ep.timers_scheduled(), 0);
        eprintln!("endpoint stats: {st:?}");
    }
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

const CLIENTS: u32 = 4;
const BYTES: usize = 100_000;

/// A kernel client: connect, send BYTES, read the echo; then close first (shutdown, then EOF
/// from the endpoint) or wait for the endpoint's FIN first.
fn kernel_client(i: u32, close_first: bool) -> JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let addr = SocketAddrV4::new(EP_IP, 7700).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let data = pattern(BYTES, i);
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&data).map(|_| w));
        let mut got = vec![0; BYTES];
        s.read_exact(&mut got).map_err(|e| format!("read echo: {e}"))?;
        let w = writer.join().unwrap().map_err(|e| format!("write: {e}"))?;
        if got != pattern(BYTES, i) {
            return Err(format!("client {i}: echo differs"));
        }
        if close_first {
            w.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
        }
        let mut rest = [0u8; 16];
        match s.read(&mut rest) {
            Ok(0) => Ok(()),
            other => Err(format!("client {i}: expected EOF, got {other:?}")),
        }
    })
}

fn endpoint_serves_kernel_clients(close_first: bool, faults: Option<FaultConfig>) {
    let ns = Netns::enter();
    let mut d = Driver::new(open_tap(&ns), faults);
    let mut owner = Owner { echo: true, ..Owner::default() };
    if close_first {
        owner.close_on_fin = true;
    } else {
        owner.close_after = Some(BYTES);
    }
    let clients: Vec<_> = (0..CLIENTS).map(|i| kernel_client(i, close_first)).collect();
    d.pump(&mut owner, "every client served and closed", |o, ep| {
        o.all_closed(CLIENTS as usize) && ep.connections() == 0 && clients.iter().all(|c| c.is_finished())
    });
    for c in clients {
        c.join().unwrap().unwrap();
    }
    for (i, c) in owner.conns.iter().enumerate() {
        assert_eq!(c.closed, Some(CloseCause::Closed), "conn {i}");
        assert_eq!(c.input.len(), BYTES);
    }
    d.assert_clean();
}

/// The endpoint connects out to a kernel listener that echoes until EOF.
fn endpoint_connects_to_kernel(faults: Option<FaultConfig>) {
    let ns = Netns::enter();
    let mut d = Driver::new(open_tap(&ns), faults);
    let listener = TcpListener::bind(SocketAddrV4::new(KERNEL_IP, 7701)).expect("bind in the namespace");
    let server = std::thread::spawn(move || -> Result<usize, String> {
        let mut total = 0;
        for _ in 0..CLIENTS {
            let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut w = s.try_clone().unwrap();
            let echo = std::thread::spawn(move || std::io::copy(&mut s, &mut w));
            total += echo.join().unwrap().map_err(|e| format!("echo: {e}"))? as usize;
        }
        Ok(total)
    });
    let mut owner = Owner { close_after: Some(BYTES), ..Owner::default() };
    for i in 0..CLIENTS {
        owner.conns.push(Conn::default());
        owner.conns[i as usize].out.extend(pattern(BYTES, 100 + i));
        let local = SocketAddrV4::new(EP_IP, 40_000 + i as u16);
        let remote = SocketAddrV4::new(KERNEL_IP, 7701);
        let tcb = d.ep.connect(d.now(), local, remote, i, &mut d.tx).expect("connect");
        owner.conns[i as usize].tcb = Some(tcb);
        // One at a time: the listener serves connections in turn.
        d.pump(&mut owner, "echo back", |o, _| o.conns[i as usize].input.len() >= BYTES);
    }
    d.pump(&mut owner, "all closed, TIME-WAIT over", |o, ep| o.all_closed(CLIENTS as usize) && ep.connections() == 0);
    assert_eq!(server.join().unwrap().unwrap(), CLIENTS as usize * BYTES);
    for (i, c) in owner.conns.iter().enumerate() {
        assert_eq!(c.input, pattern(BYTES, 100 + i as u32), "conn {i}");
        assert_eq!(c.closed, Some(CloseCause::Closed));
        assert!(c.ended);
    }
    assert!(d.ep.stats().time_wait_expired >= CLIENTS as u64);
    d.assert_clean();
}

#[test]
fn kernel_clients_close_first() {
    endpoint_serves_kernel_clients(true, None);
}

#[test]
fn endpoint_closes_first() {
    endpoint_serves_kernel_clients(false, None);
}

#[test]
fn endpoint_connects_out_to_a_kernel_listener() {
    endpoint_connects_to_kernel(None);
}

#[test]
fn kernel_clients_through_2pct_loss_both_ways() {
    endpoint_serves_kernel_clients(true, Some(FaultConfig::drop(20)));
}

#[test]
fn endpoint_connects_out_through_2pct_loss_both_ways() {
    endpoint_connects_to_kernel(Some(FaultConfig::drop(20)));
}

/// A connect to a kernel port nobody listens on is refused (the kernel's RST).
#[test]
fn a_kernel_rst_refuses_a_connect() {
    let ns = Netns::enter();
    let mut d = Driver::new(open_tap(&ns), None);
    let mut owner = Owner { conns: vec![Conn::default()], ..Owner::default() };
    let tcb =
        d.ep.connect(d.now(), SocketAddrV4::new(EP_IP, 40_100), SocketAddrV4::new(KERNEL_IP, 9), 0, &mut d.tx).unwrap();
    owner.conns[0].tcb = Some(tcb);
    d.pump(&mut owner, "refused", |o, _| o.conns[0].failed.is_some());
    assert_eq!(owner.conns[0].failed, Some(ConnectError::Refused));
    d.assert_clean();
}
