//! Counters of one AF_XDP socket: the kernel's (XDP_STATISTICS) and c2m's own.

/// The kernel's counters for one socket (`struct xdp_statistics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Frames dropped for any reason other than below (e.g. a frame larger than a UMEM frame).
    pub rx_dropped: u64,
    /// Fill-ring entries the kernel found invalid.
    pub rx_invalid_descs: u64,
    /// TX descriptors the kernel found invalid (outside the UMEM, too long).
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full: the user did not keep up.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty: no frame to receive into.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty when woken.
    pub tx_ring_empty_descs: u64,
}

impl From<libc::xdp_statistics> for KernelStats {
    fn from(s: libc::xdp_statistics) -> KernelStats {
        KernelStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        }
    }
}

/// c2m's counters for one socket; plain integers, one owner thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskCounters {
    /// Frames taken off the RX ring, and the batches (non-empty `recv` calls) they came in.
    pub rx_frames: u64,
    pub rx_batches: u64,
    /// RX descriptors outside the UMEM or past a frame's end (never seen; dropped if they were).
    pub rx_bad_desc: u64,
    /// Frames put on the fill ring.
    pub fill_submitted: u64,
    /// Fill-ring wake-ups (recvfrom) the kernel asked for.
    pub rx_wakeups: u64,
    /// Frames put on the TX ring, and the batches (non-empty `send` calls).
    pub tx_frames: u64,
    pub tx_batches: u64,
    /// `send` calls that left frames behind because the TX ring was full.
    pub tx_ring_full: u64,
    /// Frames handed to `send` with length 0 or past the frame's end: freed, not sent.
    pub tx_bad_len: u64,
    /// sendto calls made to kick TX; the ones answered EAGAIN or ENOBUFS (retried after a reap).
    pub kicks: u64,
    pub kick_again: u64,
    /// `kick` calls that found the kernel not asking for a wake-up with frames on the ring.
    pub kicks_not_needed: u64,
    /// Frames the kernel took but did not send (sendto EBUSY).
    pub tx_dropped: u64,
    /// Frames taken off the completion ring.
    pub completed: u64,
    /// Frame addresses returned that were outside the UMEM or already free (ignored).
    pub bad_returns: u64,
}
