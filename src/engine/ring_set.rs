//! One worker's rings. A ring's fixed-file table is capped by RLIMIT_NOFILE (and 2^20), so a
//! worker that must hold more sessions than that owns several rings, each with its own sparse
//! table and its own provided-buffer ring, all driven from the worker's one thread.
//!
//! The rings share one eventfd, which the kernel signals when a ring posts a completion, and
//! `TASKRUN_FLAG` marks a ring with task work pending, so an idle worker sleeps in one `read` and
//! enters only the rings that need it. The rings use `COOP_TASKRUN`, not `DEFER_TASKRUN`: with
//! deferred task work the kernel signals the eventfd only once the CQ tail moves (kernel
//! 6.18.44-fc-v1272, seen here; earlier builds signalled on the first pending work), and the tail
//! moves only when the sleeping worker runs that work: every wake-up then waited for the next
//! tick (16 ms per login, where 0.2 ms is the norm).

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{IoUring, cqueue, squeue};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::EngineError;
use super::buf_ring::BufRing;

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (and the hard one too where allowed) and
/// returns the fixed-file table size a ring may have.
pub fn table_limit() -> u32 {
    let want = crate::host::limits::nr_open().unwrap_or(1 << 20).min(1 << 20);
    crate::host::limits::raise_nofile(want).min(1 << 20) as u32
}

/// Rings a worker needs so that `items` sockets, plus a reserve of `margin` free slots per
/// ring, fit fixed-file tables of `files` slots.
pub fn rings_needed(items: usize, files: u32, margin: u32) -> usize {
    let usable = (files - margin) as usize;
    (items + margin as usize).div_ceil(usable).max(1)
}

/// Sizes of one ring.
#[derive(Clone, Copy, Debug)]
pub struct RingConfig {
    pub sq_entries: u32,
    /// Completion queue size; several times the SQ since multishot requests post many CQEs each.
    pub cq_entries: u32,
    /// Slots in the sparse fixed-file table (direct descriptors).
    pub files: u32,
    /// Provided receive buffers (power of two) and their size.
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
}

pub struct Ring {
    // Field order matters: the io_uring is dropped (and the kernel lets go of the buffer ring)
    // before the buffer memory is unmapped.
    uring: IoUring,
    bufs: BufRing,
    /// Entries that did not fit a full SQ; they go in first at the next submit.
    backlog: VecDeque<squeue::Entry>,
    files: u32,
    /// The last round reaped completions from this ring: enter it again even if the kernel
    /// did not raise IORING_SQ_TASKRUN (see [`Ring::submit`]).
    pub(super) busy: bool,
}

/// `IORING_ENTER_GETEVENTS` (uapi value): the enter runs deferred task work.
const ENTER_GETEVENTS: u32 = 1;

impl Ring {
    pub fn new(cfg: &RingConfig, bgid: u16, eventfd: &EventFd) -> Result<Ring, EngineError> {
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_submit_all()
            .setup_cqsize(cfg.cq_entries)
            .build(cfg.sq_entries)
            .map_err(|e| EngineError::ring_setup("io_uring_setup(SINGLE_ISSUER|COOP_TASKRUN)", e))?;
        let submitter = uring.submitter();
        submitter
            .register_files_sparse(cfg.files)
            .map_err(|e| EngineError::ring_setup("IORING_REGISTER_FILES_SPARSE", e))?;
        let bufs = BufRing::new(cfg.recv_buffers, cfg.recv_buffer_size, bgid)
            .map_err(|e| EngineError::ring_setup("mmap of the provided buffers", e))?;
        bufs.register(&submitter).map_err(|e| EngineError::ring_setup("IORING_REGISTER_PBUF_RING", e))?;
        submitter
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(|e| EngineError::ring_setup("IORING_REGISTER_EVENTFD", e))?;
        Ok(Ring { uring, bufs, backlog: VecDeque::new(), files: cfg.files, busy: false })
    }

    /// Queues one SQE; if the SQ is full it is submitted first, and if it is still full the
    /// entry waits in the backlog.
    ///
    /// # Safety
    /// SAFETY contract for callers: every buffer or pointer the entry refers to must stay valid
    /// until its completion arrives.
    pub(super) unsafe fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // SAFETY: forwarded from the caller's contract.
        if unsafe { self.uring.submission().push(&entry) }.is_err() {
            let _ = self.submit();
            // SAFETY: as above.
            if unsafe { self.uring.submission().push(&entry) }.is_err() {
                self.backlog.push_back(entry);
            }
        }
    }

    /// Queues a linked chain whole, or nothing: a chain split across two submissions would
    /// lose its links (the kernel ends a chain at the end of a submission). Returns `false` when
    /// the SQ has no room for it even after a submit; the caller tries again later.
    ///
    /// # Safety
    /// SAFETY contract for callers: as for [`Ring::push`], for every entry: whatever it points at
    /// stays valid until its completion arrives.
    pub(super) unsafe fn push_chain(&mut self, entries: &[squeue::Entry]) -> bool {
        let room = |u: &mut IoUring| {
            let sq = u.submission();
            sq.capacity() - sq.len()
        };
        if !self.backlog.is_empty() || room(&mut self.uring) < entries.len() {
            let _ = self.submit();
            if !self.backlog.is_empty() || room(&mut self.uring) < entries.len() {
                return false;
            }
        }
        // SAFETY: forwarded from the caller's contract; there is room for every entry.
        unsafe { self.uring.submission().push_multiple(entries) }.is_ok()
    }

    /// Whether entering the kernel would do anything: SQEs to submit, deferred task work
    /// (completions waiting to be posted) or an overflowed CQ to flush.
    pub(super) fn needs_enter(&mut self) -> bool {
        let sq = self.uring.submission();
        !sq.is_empty() || sq.taskrun() || sq.cq_overflow() || !self.backlog.is_empty()
    }

    /// Submits queued SQEs and runs deferred task work (posting completions). Never blocks.
    ///
    /// Every enter carries GETEVENTS. Under DEFER_TASKRUN (which the rings used until the
    /// eventfd stopped waking them, see the module doc), task work ran only in such an enter,
    /// a bounded batch (20 items) per enter: the rest waited on a retry list without
    /// IORING_SQ_TASKRUN being raised again, so a ring whose flag was clear could still hold
    /// completions-to-be; entering busy rings again costs little and stays. Seen here: before busy rings were entered again, a
    /// 2,000,000-connection run had logins waiting up to 10 s (3,581 timed out); after, the
    /// slowest of 2,000,000 took 90 ms (results/record/).
    pub(super) fn submit(&mut self) -> io::Result<usize> {
        self.move_backlog();
        let to_submit = self.uring.submission().len() as u32;
        // SAFETY: no argument pointer is passed, and `to_submit` counts entries already
        // published in the SQ (the submission queue syncs its tail when dropped).
        let entered = unsafe { self.uring.submitter().enter::<libc::sigset_t>(to_submit, 0, ENTER_GETEVENTS, None) };
        match entered {
            Ok(n) => Ok(n),
            // The CQ is overflowing or the kernel is short of memory for a moment: reap
            // completions, then the next round submits again.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn move_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: the entry was accepted by `push`, whose caller vouched for its buffers.
            if unsafe { self.uring.submission().push(entry) }.is_err() {
                break;
            }
            self.backlog.pop_front();
        }
    }

    /// Moves up to `out.capacity()` completions into `out`.
    pub(super) fn reap(&mut self, out: &mut Vec<cqueue::Entry>) {
        let room = out.capacity() - out.len();
        out.extend(self.uring.completion().take(room));
    }

    /// The ring's own descriptor: the target of another thread's `IORING_OP_MSG_RING`.
    pub fn ring_fd(&self) -> std::os::fd::RawFd {
        self.uring.as_raw_fd()
    }

    /// Whether completions wait to be reaped.
    pub(super) fn has_completions(&mut self) -> bool {
        !self.uring.completion().is_empty()
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Slots in this ring's fixed-file table.
    pub fn files(&self) -> u32 {
        self.files
    }

    /// The ring's provided receive buffers.
    pub fn bufs(&self) -> &BufRing {
        &self.bufs
    }

    pub fn bufs_mut(&mut self) -> &mut BufRing {
        &mut self.bufs
    }
}

/// All rings of one worker plus the eventfd they share.
pub struct RingSet {
    rings: Vec<Ring>,
    eventfd: Arc<EventFd>,
    cfg: RingConfig,
}

impl RingSet {
    /// Creates `count` rings. Must run on the thread that will drive them (SINGLE_ISSUER).
    pub fn new(count: usize, cfg: &RingConfig) -> Result<RingSet, EngineError> {
        if count == 0 || count > super::token::MAX_RINGS {
            return Err(EngineError::Config(format!(
                "a worker needs 1..={} rings, asked for {count}",
                super::token::MAX_RINGS
            )));
        }
        let eventfd =
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC).map_err(|e| EngineError::ring_setup("eventfd", e.into()))?;
        let mut set = RingSet { rings: Vec::with_capacity(count), eventfd: Arc::new(eventfd), cfg: *cfg };
        for _ in 0..count {
            set.add_ring()?;
        }
        Ok(set)
    }

    /// Adds one more ring, on the thread that drives the set (SINGLE_ISSUER), and returns its
    /// index. A worker grows its set when every ring's fixed-file table is near full, so rings
    /// exist only for sessions that came.
    pub fn add_ring(&mut self) -> Result<usize, EngineError> {
        let index = self.rings.len();
        if index >= super::token::MAX_RINGS {
            return Err(EngineError::Config(format!("a worker has at most {} rings", super::token::MAX_RINGS)));
        }
        self.rings.push(Ring::new(&self.cfg, index as u16, &self.eventfd)?);
        Ok(index)
    }

    pub fn config(&self) -> &RingConfig {
        &self.cfg
    }

    pub fn len(&self) -> usize {
        self.rings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    pub fn ring(&self, index: usize) -> &Ring {
        &self.rings[index]
    }

    pub fn ring_mut(&mut self, index: usize) -> &mut Ring {
        &mut self.rings[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Ring> {
        self.rings.iter()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Ring> {
        self.rings.iter_mut()
    }

    /// Entries waiting for room in the rings' SQs, all rings together.
    pub fn backlog_len(&self) -> usize {
        self.rings.iter().map(Ring::backlog_len).sum()
    }

    /// Bytes of provided-buffer memory mapped by the rings (resident or not).
    pub fn buffer_bytes(&self) -> usize {
        self.rings.iter().map(|r| r.bufs.mapped_bytes()).sum()
    }

    /// A handle other threads use to wake this worker.
    pub fn waker(&self) -> Waker {
        Waker(self.eventfd.clone())
    }

    /// Sleeps until some ring has work or someone writes the eventfd.
    pub(super) fn wait(&self) -> io::Result<()> {
        match self.eventfd.read() {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Wakes a worker blocked in [`RingSet::wait`] (control events such as shutdown). It shares
/// ownership of the eventfd, so it can never write to a descriptor number that was reused.
#[derive(Clone)]
pub struct Waker(Arc<EventFd>);

impl Waker {
    pub fn wake(&self) {
        let _ = self.0.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

    fn small(sq: u32, cq: u32) -> RingConfig {
        RingConfig { sq_entries: sq, cq_entries: cq, files: 16, recv_buffers: 4, recv_buffer_size: 64 }
    }

    fn nop(i: u64) -> squeue::Entry {
        opcode::Nop::new().build().user_data(i)
    }

    #[test]
    fn rings_needed_keeps_the_reserve_free_in_every_ring() {
        assert_eq!(rings_needed(0, 100, 10), 1, "at least one ring");
        assert_eq!(rings_needed(80, 100, 10), 1, "80 + a reserve of 10 fit 100");
        assert_eq!(rings_needed(81, 100, 10), 2);
        assert_eq!(rings_needed(1_000_000, 20_000, 4_160), 64);
        assert_eq!(rings_needed(1_000_000, 20_000, 0), 50);
    }

    #[test]
    fn a_chain_goes_in_whole_or_not_at_all() {
        let mut set = RingSet::new(1, &small(4, 16)).unwrap();
        let ring = set.ring_mut(0);
        let chain: Vec<_> = (0..5).map(nop).collect();
        // SAFETY: NOPs point at no memory.
        assert!(!unsafe { ring.push_chain(&chain) }, "five entries never fit an SQ of four");
        // SAFETY: as above.
        assert!(unsafe { ring.push_chain(&chain[..3]) });
        // Three are queued: a second chain of three needs a submit first, which push_chain does.
        // SAFETY: as above.
        assert!(unsafe { ring.push_chain(&chain[..3]) });
        ring.submit().unwrap();
        let mut cqes = Vec::with_capacity(16);
        ring.reap(&mut cqes);
        assert_eq!(cqes.len(), 6);
    }

    /// More entries than the SQ holds while the CQ is full: the rest wait in the backlog, and
    /// every one of them completes once completions are reaped.
    #[test]
    fn a_full_queue_spills_into_the_backlog_and_nothing_is_lost() {
        let mut set = RingSet::new(1, &small(4, 8)).unwrap();
        let ring = set.ring_mut(0);
        for i in 0..100 {
            // SAFETY: NOPs point at no memory.
            unsafe { ring.push(nop(i)) };
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut cqes = Vec::with_capacity(8);
        for _ in 0..1000 {
            ring.submit().unwrap();
            cqes.clear();
            ring.reap(&mut cqes);
            seen.extend(cqes.iter().map(|c| c.user_data()));
            if seen.len() == 100 {
                break;
            }
        }
        assert_eq!(seen.len(), 100, "every NOP completes once, in the backlog or not");
        assert_eq!(ring.backlog_len(), 0);
    }

    #[test]
    fn rings_are_added_up_to_the_token_limit() {
        let mut set = RingSet::new(1, &small(4, 8)).unwrap();
        assert_eq!(set.add_ring().unwrap(), 1);
        assert_eq!(set.len(), 2);
        assert_eq!(set.ring(1).bufs().bgid(), 1, "each ring has its own buffer group");
    }
}
