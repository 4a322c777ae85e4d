//! The frame pool: which UMEM frames user space may hand out. A stack of free frame addresses
//! (its capacity fixed at the UMEM's frame count: it never allocates after creation), a bitmap of
//! which frames are on it (so an address returned twice, or one the kernel had no business
//! returning, is counted and ignored instead of handed out twice), and counts of the frames the
//! kernel holds, so that every frame is accounted for: free, with the kernel, or with the user.

/// Where the UMEM's frames are. `user` is what is left: frames received and not released, or
/// taken for TX and not sent. After a run has released and reaped everything it is 0; anything
/// else is a leak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameCounts {
    pub total: u32,
    /// On the free stack.
    pub free: u32,
    /// On the fill ring or the RX ring: the kernel's to receive into.
    pub kernel_rx: u32,
    /// On the TX ring or sent and not yet on the completion ring.
    pub kernel_tx: u32,
    /// Held by the user.
    pub user: u32,
}

pub struct FramePool {
    free: Vec<u64>,
    on_free: Vec<u64>,
    frame_size: u64,
    count: u32,
    kernel_rx: u32,
    kernel_tx: u32,
    /// Returns of addresses outside the UMEM or already free.
    bad_returns: u64,
}

impl FramePool {
    /// `count` frames of `frame_size` bytes (a power of two), all free.
    pub fn new(count: u32, frame_size: u32) -> FramePool {
        assert!(frame_size.is_power_of_two(), "frame size {frame_size} is not a power of two");
        let mut free = Vec::with_capacity(count as usize);
        // Highest address at the bottom, so frames are handed out from the start of the UMEM.
        free.extend((0..count as u64).rev().map(|i| i * frame_size as u64));
        let mut on_free = vec![0u64; (count as usize).div_ceil(64)];
        for i in 0..count as usize {
            on_free[i / 64] |= 1 << (i % 64);
        }
        FramePool { free, on_free, frame_size: frame_size as u64, count, kernel_rx: 0, kernel_tx: 0, bad_returns: 0 }
    }

    /// The frame an address falls in, if it is inside the UMEM.
    fn index(&self, addr: u64) -> Option<usize> {
        let i = addr / self.frame_size;
        (i < self.count as u64).then_some(i as usize)
    }

    /// A free frame's address (its first byte).
    pub fn take(&mut self) -> Option<u64> {
        let addr = self.free.pop()?;
        let i = (addr / self.frame_size) as usize;
        self.on_free[i / 64] &= !(1 << (i % 64));
        Some(addr)
    }

    /// Returns the frame `addr` points into (any offset inside it). False, and counted, when the
    /// address is outside the UMEM or the frame is already free.
    pub fn put(&mut self, addr: u64) -> bool {
        let Some(i) = self.index(addr) else {
            self.bad_returns += 1;
            return false;
        };
        let bit = 1 << (i % 64);
        if self.on_free[i / 64] & bit != 0 {
            self.bad_returns += 1;
            return false;
        }
        self.on_free[i / 64] |= bit;
        self.free.push(i as u64 * self.frame_size);
        true
    }

    pub fn free_len(&self) -> u32 {
        self.free.len() as u32
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size as u32
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn bad_returns(&self) -> u64 {
        self.bad_returns
    }

    /// Bookkeeping of the frames the kernel holds, moved by the socket as rings move them.
    pub(crate) fn kernel_rx_add(&mut self, n: u32) {
        self.kernel_rx += n;
    }
    pub(crate) fn kernel_rx_sub(&mut self, n: u32) {
        self.kernel_rx = self.kernel_rx.saturating_sub(n);
    }
    pub(crate) fn kernel_tx_add(&mut self, n: u32) {
        self.kernel_tx += n;
    }
    pub(crate) fn kernel_tx_sub(&mut self, n: u32) {
        self.kernel_tx = self.kernel_tx.saturating_sub(n);
    }
    pub(crate) fn kernel_rx(&self) -> u32 {
        self.kernel_rx
    }

    pub fn counts(&self) -> FrameCounts {
        let free = self.free_len();
        FrameCounts {
            total: self.count,
            free,
            kernel_rx: self.kernel_rx,
            kernel_tx: self.kernel_tx,
            user: self.count.saturating_sub(free + self.kernel_rx + self.kernel_tx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_come_out_in_address_order_and_go_back() {
        let mut p = FramePool::new(4, 2048);
        assert_eq!((p.take(), p.take()), (Some(0), Some(2048)));
        assert!(p.put(2048 + 256), "an offset inside the frame returns the frame");
        assert_eq!(p.take(), Some(2048));
        assert_eq!(p.counts(), FrameCounts { total: 4, free: 2, kernel_rx: 0, kernel_tx: 0, user: 2 });
    }

    #[test]
    fn double_and_foreign_returns_are_refused_and_counted() {
        let mut p = FramePool::new(4, 2048);
        let a = p.take().unwrap();
        assert!(p.put(a));
        assert!(!p.put(a), "already free");
        assert!(!p.put(4 * 2048), "past the end");
        assert_eq!(p.bad_returns(), 2);
        assert_eq!(p.free_len(), 4);
    }

    #[test]
    fn the_free_stack_never_grows() {
        let mut p = FramePool::new(100, 4096);
        let cap = p.free.capacity();
        let taken: Vec<u64> = std::iter::from_fn(|| p.take()).collect();
        assert_eq!(taken.len(), 100);
        for a in taken {
            p.put(a);
        }
        assert_eq!(p.free.capacity(), cap);
    }

    proptest! {
        /// Whatever mix of takes and (good, repeated or foreign) returns, every frame is either
        /// free or held, exactly once, and none is handed out twice.
        #[test]
        fn no_frame_is_lost_or_duplicated(ops in proptest::collection::vec((0u8..3, 0usize..64, 0u64..80_000), 0..400)) {
            let mut p = FramePool::new(33, 2048);
            let mut held: Vec<u64> = Vec::new();
            for (op, pick, raw) in ops {
                match op {
                    0 => if let Some(a) = p.take() {
                        prop_assert!(!held.contains(&a));
                        held.push(a);
                    },
                    1 if !held.is_empty() => {
                        let a = held.swap_remove(pick % held.len());
                        prop_assert!(p.put(a + raw % 2048));
                    }
                    _ => {
                        // A foreign or repeated return changes nothing unless it names a held frame.
                        let is_held = held.iter().position(|&h| h == raw / 2048 * 2048);
                        let accepted = p.put(raw);
                        prop_assert_eq!(accepted, is_held.is_some());
                        if let Some(i) = is_held { held.swap_remove(i); }
                    }
                }
                let c = p.counts();
                prop_assert_eq!(c.free + c.user, 33);
                prop_assert_eq!(c.user as usize, held.len());
            }
        }
    }
}
