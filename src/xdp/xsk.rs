//! One AF_XDP socket bound to one (interface, RX queue), with its own UMEM, its four rings and
//! its frame pool, driven by one thread in batches.
//!
//! Frames are owned through [`Frame`] tokens: a frame is the user's exactly while a token for it
//! exists, and the kernel's (fill, RX, TX or completion ring) otherwise. Tokens cannot be copied
//! and name the socket they came from, so the bytes behind a token ([`Xsk::data`],
//! [`Xsk::buf_mut`]) are never ones the kernel may be writing. A batch is a caller-owned
//! `Vec<Frame>` whose spare capacity says how many frames to move: nothing allocates per frame,
//! and each call moves its whole batch with one ring-index update.
//!
//! ```text
//! recv(&mut rx)            RX ring    -> rx      (frames the kernel received)
//! data(&frame)                                   (read them)
//! release(&mut rx)         rx         -> free -> fill ring
//! alloc(n, &mut tx)        free       -> tx      (buffers to write: buf_mut, set_len)
//! send(&mut tx)            tx         -> TX ring (a received frame may be sent as it is)
//! kick()                   sendto until the kernel has taken the TX ring (copy mode), reaping
//! reap()                   completion ring -> free
//! ```
//!
//! Blocking: poll the socket's fd for POLLIN (or POLL_ADD it on io_uring). Bound with
//! XDP_USE_NEED_WAKEUP, the kernel is entered only when a ring's flag asks for it, so a blocked
//! user leaves the CPU to the softirq that moves the frames (two busy-spinning ends on two cores
//! starve it: 10x slower, measured here).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use memmap2::{MmapMut, MmapOptions};

use super::iface::Interface;
use super::pool::{FrameCounts, FramePool};
use super::ring::{Consumer, Producer};
use super::stats::{KernelStats, XskCounters};
use super::{XdpError, sys, syscall};

/// How to bind: zero-copy where the driver offers it, else copy mode (Auto); or only one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindPolicy {
    Auto,
    Copy,
    ZeroCopy,
}

/// How the socket bound. On veth it is copy mode: the kernel copies each frame between the skb
/// and the UMEM (still no kernel TCP stack); zero-copy only where a NIC driver gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    Copy,
    ZeroCopy,
}

impl std::fmt::Display for BindMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindMode::Copy => "copy mode",
            BindMode::ZeroCopy => "zero-copy",
        })
    }
}

/// Sizes of one socket's UMEM and rings.
#[derive(Clone, Debug)]
pub struct XskConfig {
    /// Bytes per UMEM frame, 2048 or 4096: one Ethernet frame each (a received frame starts 256
    /// bytes in, after the kernel's XDP headroom).
    pub frame_size: u32,
    /// Frames in the UMEM.
    pub frame_count: u32,
    /// Ring sizes, powers of two.
    pub fill_size: u32,
    pub completion_size: u32,
    pub rx_size: u32,
    pub tx_size: u32,
    /// Frames kept with the kernel for receiving (on the fill and RX rings); the rest serve TX
    /// and the frames the user holds. At most `fill_size`.
    pub rx_frames: u32,
    pub bind: BindPolicy,
}

impl Default for XskConfig {
    fn default() -> XskConfig {
        XskConfig {
            frame_size: 2048,
            frame_count: 4096,
            fill_size: 2048,
            completion_size: 2048,
            rx_size: 2048,
            tx_size: 2048,
            rx_frames: 2048,
            bind: BindPolicy::Auto,
        }
    }
}

impl XskConfig {
    fn validate(&self) -> Result<(), XdpError> {
        let bad = |m: String| Err(XdpError::Config(m));
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return bad(format!("frame size {} is not 2048 or 4096", self.frame_size));
        }
        for (name, n) in
            [("fill", self.fill_size), ("completion", self.completion_size), ("rx", self.rx_size), ("tx", self.tx_size)]
        {
            if !n.is_power_of_two() {
                return bad(format!("{name} ring size {n} is not a power of two"));
            }
        }
        if self.rx_frames == 0 || self.rx_frames > self.fill_size || self.rx_frames >= self.frame_count {
            return bad(format!(
                "rx_frames {} must be 1..=fill_size ({}) and below frame_count ({})",
                self.rx_frames, self.fill_size, self.frame_count
            ));
        }
        if self.frame_count as u64 * self.frame_size as u64 > 1 << 40 {
            return bad(format!("a UMEM of {} frames is too large", self.frame_count));
        }
        Ok(())
    }
}

/// A UMEM frame the user holds: received (its bytes are what arrived) or taken for TX (its bytes
/// are what will be sent once `set_len` says how many). Not `Clone`: one owner at a time. A token
/// dropped without `release` or `send` is a leaked frame (see [`Xsk::frame_counts`]).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a frame must go back with release() or send(), or it leaks"]
pub struct Frame {
    addr: u64,
    len: u32,
    owner: u32,
}

impl Frame {
    /// Offset of the frame's first byte in the UMEM (the descriptor's address).
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Bytes of frame data.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Sets how many bytes (from the start of `buf_mut`) will be sent.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(u32::MAX as usize) as u32;
    }
}

/// What one `kick` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kick {
    /// sendto calls made.
    pub syscalls: u32,
    /// The kernel has taken every descriptor off the TX ring.
    pub drained: bool,
    /// Frames the kernel took but could not send (EBUSY: the device dropped it), completed anyway.
    pub dropped: u32,
}

static NEXT_SOCKET_ID: AtomicU32 = AtomicU32::new(1);

/// Whatever a copy-mode kick moves at most per call (the kernel's TX_BATCH_SIZE), used only to
/// bound the kick loop.
const KICK_BATCH: u32 = 32;

pub struct Xsk {
    fill: Producer<u64>,
    completion: Consumer<u64>,
    rx: Consumer<libc::xdp_desc>,
    tx: Producer<libc::xdp_desc>,
    fd: OwnedFd,
    /// The UMEM: kept mapped for as long as the socket lives; accessed through `base` only.
    _umem: MmapMut,
    base: NonNull<u8>,
    umem_len: usize,
    pool: FramePool,
    rx_frames: u32,
    mode: BindMode,
    id: u32,
    ifindex: u32,
    queue: u32,
    counters: XskCounters,
}

// SAFETY: an Xsk owns its mappings and socket outright; the raw pointers in it point into memory
// it owns, so moving it to another thread moves the only user. It is not Sync (&self hands out
// frame bytes whose exclusivity rests on `&mut Frame`, which is fine, but the rings are not
// thread-safe), and it has no Sync impl.
unsafe impl Send for Xsk {}

impl Xsk {
    /// Creates a socket on `iface`'s RX queue `queue` (and TX queue of the same index), with its
    /// own UMEM, and hands `rx_frames` frames to the kernel for receiving. Frames reach it once a
    /// steering program registers it ([`super::XdpProgram::register`]).
    pub fn bind(iface: &Interface, queue: u32, cfg: &XskConfig) -> Result<Xsk, XdpError> {
        cfg.validate()?;
        if queue >= iface.rx_queues() {
            return Err(XdpError::Config(format!(
                "{} has {} RX queue(s); there is no queue {queue}",
                iface.name(),
                iface.rx_queues()
            )));
        }
        let umem_len = cfg.frame_count as usize * cfg.frame_size as usize;
        let mut umem =
            MmapOptions::new().len(umem_len).populate().map_anon().map_err(|e| syscall("mmap of the UMEM", e))?;
        let base = NonNull::new(umem.as_mut_ptr()).expect("mmap never returns null");
        let parts = match cfg.bind {
            BindPolicy::Copy => Parts::open(iface, queue, cfg, base, libc::XDP_COPY)?,
            BindPolicy::ZeroCopy => Parts::open(iface, queue, cfg, base, libc::XDP_ZEROCOPY)?,
            // A failed zero-copy bind leaves the socket half set up: start over with a new one.
            BindPolicy::Auto => match Parts::open(iface, queue, cfg, base, libc::XDP_ZEROCOPY) {
                Ok(p) => p,
                Err(_) => Parts::open(iface, queue, cfg, base, libc::XDP_COPY)?,
            },
        };
        let mut xsk = Xsk {
            fill: parts.fill,
            completion: parts.completion,
            rx: parts.rx,
            tx: parts.tx,
            fd: parts.fd,
            _umem: umem,
            base,
            umem_len,
            pool: FramePool::new(cfg.frame_count, cfg.frame_size),
            rx_frames: cfg.rx_frames,
            mode: parts.mode,
            id: NEXT_SOCKET_ID.fetch_add(1, Ordering::Relaxed),
            ifindex: iface.index(),
            queue,
            counters: XskCounters::default(),
        };
        xsk.refill();
        Ok(xsk)
    }

    pub fn mode(&self) -> BindMode {
        self.mode
    }
    pub fn queue(&self) -> u32 {
        self.queue
    }
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    pub fn frame_size(&self) -> u32 {
        self.pool.frame_size()
    }

    /// Moves received frames into `out`, as many as its spare capacity holds (it never grows):
    /// one RX-ring update for the batch. Returns how many. Then tops the fill ring up.
    pub fn recv(&mut self, out: &mut Vec<Frame>) -> usize {
        let room = (out.capacity() - out.len()).min(u32::MAX as usize) as u32;
        let n = self.rx.available(room);
        let frame_size = self.pool.frame_size() as u64;
        for i in 0..n {
            let d = self.rx.read(i);
            // The kernel only hands back frames we gave it; a descriptor outside the UMEM or
            // across a frame's end would still be a bug to survive, not to trust.
            if d.addr as usize >= self.umem_len || (d.addr % frame_size) + d.len as u64 > frame_size {
                self.counters.rx_bad_desc += 1;
                continue;
            }
            out.push(Frame { addr: d.addr, len: d.len, owner: self.id });
        }
        self.rx.release(n);
        self.pool.kernel_rx_sub(n);
        if n > 0 {
            self.counters.rx_frames += n as u64;
            self.counters.rx_batches += 1;
        }
        self.refill();
        n as usize
    }

    /// Gives every frame in `frames` back (it is left empty): to the free stack, and from there
    /// to the fill ring up to `rx_frames`, with one fill-ring update.
    pub fn release(&mut self, frames: &mut Vec<Frame>) {
        for f in frames.drain(..) {
            self.check(&f);
            self.pool.put(f.addr);
        }
        self.refill();
    }

    /// Gives one frame back to the free stack (the fill ring is topped up by the next `recv`,
    /// `release` or `refill`).
    pub fn release_one(&mut self, f: Frame) {
        self.check(&f);
        self.pool.put(f.addr);
    }

    /// Tops the fill ring up from the free stack so the kernel holds `rx_frames` frames to
    /// receive into; one ring update. Wakes the kernel if the fill ring asks for it (drivers in
    /// zero-copy mode do). Returns how many frames went on the ring.
    pub fn refill(&mut self) -> u32 {
        let want = self.rx_frames.saturating_sub(self.pool.kernel_rx()).min(self.pool.free_len());
        let n = if want == 0 { 0 } else { self.fill.free(want) };
        for i in 0..n {
            let addr = self.pool.take().expect("free stack holds at least `want` frames");
            self.fill.write(i, addr);
        }
        self.fill.submit(n);
        self.pool.kernel_rx_add(n);
        self.counters.fill_submitted += n as u64;
        if self.fill.needs_wakeup() {
            self.counters.rx_wakeups += 1;
            // Best effort: a failed wake-up shows as a stalled RX ring, and the next call retries.
            let _ = sys::wake_rx(self.fd.as_fd());
        }
        n
    }

    /// Takes up to `n` free frames for TX into `out` (up to its spare capacity). Returns how many.
    pub fn alloc(&mut self, n: usize, out: &mut Vec<Frame>) -> usize {
        let n = n.min(out.capacity() - out.len());
        let mut got = 0;
        while got < n {
            let Some(addr) = self.pool.take() else { break };
            out.push(Frame { addr, len: 0, owner: self.id });
            got += 1;
        }
        got
    }

    /// One free frame for TX, if any.
    pub fn alloc_one(&mut self) -> Option<Frame> {
        self.pool.take().map(|addr| Frame { addr, len: 0, owner: self.id })
    }

    /// The bytes of a frame (its `len` of them).
    pub fn data<'a>(&'a self, f: &'a Frame) -> &'a [u8] {
        self.check(f);
        let len = (f.len as usize).min(self.capacity(f));
        // SAFETY: `f` is a token of this socket (checked), so `f.addr` is inside the UMEM and the
        // frame is the user's: the kernel neither reads nor writes it until the token goes back;
        // `len` stops at the frame's end; `&'a self` keeps the mapping alive and `&'a Frame`
        // excludes a `buf_mut` of the same frame for as long as the slice lives.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(f.addr as usize), len) }
    }

    /// The frame's whole buffer, from its first byte to the frame's end, to write a frame into
    /// (then `set_len`). Several frames' buffers can be open at once: each borrows its token.
    #[allow(clippy::mut_from_ref)] // exclusivity comes from `&mut Frame`, see SAFETY
    pub fn buf_mut<'a>(&'a self, f: &'a mut Frame) -> &'a mut [u8] {
        self.check(f);
        let cap = self.capacity(f);
        // SAFETY: as in `data`, and `&'a mut Frame` is the only token for this frame, so no other
        // slice of these bytes exists while this one lives.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(f.addr as usize), cap) }
    }

    /// Queues the frames of `tx` on the TX ring, as many as fit, with one ring update; those that
    /// do not fit stay in `tx`, in order. Returns how many were queued. They go out on `kick`.
    pub fn send(&mut self, tx: &mut Vec<Frame>) -> usize {
        let n = self.tx.free(tx.len().min(u32::MAX as usize) as u32) as usize;
        let mut queued = 0u32;
        for f in tx.drain(..n) {
            self.check(&f);
            if f.len == 0 || f.len as usize > self.capacity(&f) {
                self.counters.tx_bad_len += 1;
                self.pool.put(f.addr);
                continue;
            }
            self.tx.write(queued, libc::xdp_desc { addr: f.addr, len: f.len, options: 0 });
            queued += 1;
        }
        self.tx.submit(queued);
        self.pool.kernel_tx_add(queued);
        self.counters.tx_frames += queued as u64;
        if queued > 0 {
            self.counters.tx_batches += 1;
        }
        if !tx.is_empty() {
            self.counters.tx_ring_full += 1;
        }
        queued as usize
    }

    /// Descriptors on the TX ring the kernel has not taken yet.
    pub fn tx_outstanding(&mut self) -> u32 {
        self.tx.outstanding()
    }

    /// True when the kernel asks to be woken for TX (XDP_RING_NEED_WAKEUP on the TX ring).
    pub fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    /// Makes the kernel send what is on the TX ring: sendto(MSG_DONTWAIT), again while it asks
    /// for a wake-up and the ring is not drained (a copy-mode kick moves at most 32 frames),
    /// reaping completions when it says EAGAIN (a full completion ring is one cause). Bounded: at
    /// most tx_size/32 + 4 calls; a ring still not drained then is reported, not waited for.
    pub fn kick(&mut self) -> Result<Kick, XdpError> {
        let mut k = Kick::default();
        let limit = self.tx.size() / KICK_BATCH + 4;
        loop {
            if self.tx.outstanding() == 0 {
                k.drained = true;
                break;
            }
            if !self.tx.needs_wakeup() {
                // The kernel is working on the ring by itself (zero-copy drivers do).
                self.counters.kicks_not_needed += 1;
                break;
            }
            if k.syscalls >= limit {
                break;
            }
            k.syscalls += 1;
            match sys::kick_tx(self.fd.as_fd()) {
                Ok(()) => {}
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                        self.counters.kick_again += 1;
                        self.reap();
                    }
                    Some(libc::EBUSY) => k.dropped += 1,
                    _ => return Err(syscall("sendto (AF_XDP TX kick)", e)),
                },
            }
        }
        self.counters.kicks += k.syscalls as u64;
        self.counters.tx_dropped += k.dropped as u64;
        Ok(k)
    }

    /// Takes sent frames off the completion ring back to the free stack, one ring update.
    /// Returns how many.
    pub fn reap(&mut self) -> u32 {
        let n = self.completion.available(u32::MAX);
        for i in 0..n {
            let addr = self.completion.read(i);
            self.pool.put(addr);
        }
        self.completion.release(n);
        self.pool.kernel_tx_sub(n);
        self.counters.completed += n as u64;
        n
    }

    /// Blocks until a frame is on the RX ring or `timeout` passes: true if one is. (A data plane
    /// on io_uring polls [`Xsk::as_fd`] instead.)
    pub fn wait_rx(&self, timeout: Duration) -> Result<bool, XdpError> {
        Xsk::wait_rx_any(&[self], timeout)
    }

    /// Blocks until one of `sockets` has a frame on its RX ring or `timeout` passes: true if one
    /// does (one thread serving several queues).
    pub fn wait_rx_any(sockets: &[&Xsk], timeout: Duration) -> Result<bool, XdpError> {
        let mut fds: Vec<libc::pollfd> =
            sockets.iter().map(|x| libc::pollfd { fd: x.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        sys::poll(&mut fds, timeout).map(|n| n > 0).map_err(|e| syscall("poll (AF_XDP RX)", e))
    }

    /// Where every UMEM frame is: free, with the kernel, or with the user.
    pub fn frame_counts(&self) -> FrameCounts {
        self.pool.counts()
    }

    /// The kernel's counters for this socket (XDP_STATISTICS).
    pub fn kernel_stats(&self) -> Result<KernelStats, XdpError> {
        let (s, _) = sys::getsockopt::<libc::xdp_statistics>(self.fd.as_fd(), libc::SOL_XDP, libc::XDP_STATISTICS)
            .map_err(|e| syscall("getsockopt(XDP_STATISTICS)", e))?;
        Ok(KernelStats::from(s))
    }

    /// This socket's own counters.
    pub fn counters(&self) -> XskCounters {
        XskCounters { bad_returns: self.pool.bad_returns(), ..self.counters }
    }

    fn capacity(&self, f: &Frame) -> usize {
        let fs = self.pool.frame_size() as u64;
        (fs - f.addr % fs) as usize
    }

    /// A token from another socket would name bytes this socket's kernel side may be using.
    fn check(&self, f: &Frame) {
        assert_eq!(f.owner, self.id, "a Frame of socket {} used with socket {}", f.owner, self.id);
    }
}

impl AsFd for Xsk {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Xsk {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A bound socket with its rings mapped, before the Xsk around it exists.
struct Parts {
    fd: OwnedFd,
    fill: Producer<u64>,
    completion: Consumer<u64>,
    rx: Consumer<libc::xdp_desc>,
    tx: Producer<libc::xdp_desc>,
    mode: BindMode,
}

impl Parts {
    fn open(
        iface: &Interface,
        queue: u32,
        cfg: &XskConfig,
        umem: NonNull<u8>,
        copy_flag: u16,
    ) -> Result<Parts, XdpError> {
        let fd = sys::socket(libc::AF_XDP, libc::SOCK_RAW, 0).map_err(|e| syscall("socket(AF_XDP)", e))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.as_ptr() as u64,
            len: cfg.frame_count as u64 * cfg.frame_size as u64,
            chunk_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        let fdb = fd.as_fd();
        sys::setsockopt(fdb, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg).map_err(|e| syscall("XDP_UMEM_REG", e))?;
        for (opt, size, what) in [
            (libc::XDP_UMEM_FILL_RING, cfg.fill_size, "XDP_UMEM_FILL_RING"),
            (libc::XDP_UMEM_COMPLETION_RING, cfg.completion_size, "XDP_UMEM_COMPLETION_RING"),
            (libc::XDP_RX_RING, cfg.rx_size, "XDP_RX_RING"),
            (libc::XDP_TX_RING, cfg.tx_size, "XDP_TX_RING"),
        ] {
            sys::setsockopt(fdb, libc::SOL_XDP, opt, &size).map_err(|e| syscall(what, e))?;
        }
        let (off, len) = sys::getsockopt::<libc::xdp_mmap_offsets>(fdb, libc::SOL_XDP, libc::XDP_MMAP_OFFSETS)
            .map_err(|e| syscall("XDP_MMAP_OFFSETS", e))?;
        if len != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            return Err(XdpError::Config("this kernel's AF_XDP rings have no flags word: c2m needs Linux 5.4+".into()));
        }
        let ring = |what: &'static str| move |e| syscall(what, e);
        let fill = Producer::map(fdb, libc::XDP_UMEM_PGOFF_FILL_RING, &off.fr, cfg.fill_size)
            .map_err(ring("mmap of the fill ring"))?;
        let completion = Consumer::map(fdb, libc::XDP_UMEM_PGOFF_COMPLETION_RING, &off.cr, cfg.completion_size)
            .map_err(ring("mmap of the completion ring"))?;
        let rx = Consumer::map(fdb, libc::XDP_PGOFF_RX_RING as u64, &off.rx, cfg.rx_size)
            .map_err(ring("mmap of the RX ring"))?;
        let tx = Producer::map(fdb, libc::XDP_PGOFF_TX_RING as u64, &off.tx, cfg.tx_size)
            .map_err(ring("mmap of the TX ring"))?;
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: copy_flag | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: iface.index(),
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        let what =
            if copy_flag == libc::XDP_ZEROCOPY { "bind(AF_XDP, XDP_ZEROCOPY)" } else { "bind(AF_XDP, XDP_COPY)" };
        sys::bind_xdp(fdb, &addr).map_err(|e| syscall(what, e))?;
        // Ask the kernel rather than trust the flag we passed.
        let (opts, _) = sys::getsockopt::<libc::xdp_options>(fdb, libc::SOL_XDP, libc::XDP_OPTIONS)
            .map_err(|e| syscall("XDP_OPTIONS", e))?;
        let mode = if opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0 { BindMode::ZeroCopy } else { BindMode::Copy };
        Ok(Parts { fd, fill, completion, rx, tx, mode })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_bad_ones_say_why() {
        XskConfig::default().validate().unwrap();
        let e = XskConfig { frame_size: 3000, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("2048 or 4096"), "{e}");
        let e = XskConfig { tx_size: 1000, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("tx ring size 1000"), "{e}");
        let e = XskConfig { rx_frames: 4096, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("rx_frames"), "{e}");
    }

    #[test]
    fn frame_tokens_are_small() {
        assert_eq!(std::mem::size_of::<Frame>(), 16);
    }
}
