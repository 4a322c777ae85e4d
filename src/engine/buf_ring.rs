//! Provided buffer ring: receive buffers shared by every socket of one ring.
//!
//! The kernel picks a buffer only when data arrives, so an idle connection holds no receive
//! buffer at all. A buffer is handed back (`recycle`) as soon as its completion has been
//! handled; the new tail is published once per batch (`commit`).

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use memmap2::{MmapMut, MmapOptions};

pub struct BufRing {
    /// The ring of `io_uring_buf` entries shared with the kernel (page aligned by mmap).
    entries: MmapMut,
    /// The buffers themselves, `count * buf_size` bytes.
    buffers: MmapMut,
    count: u16,
    buf_size: u32,
    /// Tail as we have written it, published to the kernel by `commit`.
    local_tail: u16,
    /// Tail as last published, so a commit with nothing new is free.
    published_tail: u16,
    bgid: u16,
}

impl BufRing {
    /// Allocates `count` buffers of `buf_size` bytes (count: a power of two, at most 32768).
    /// Registration with a ring is a separate step, see [`BufRing::register`].
    pub fn new(count: u16, buf_size: u32, bgid: u16) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer ring size {count} is not a power of two up to 32768"),
            ));
        }
        let entries = MmapOptions::new().len(count as usize * std::mem::size_of::<BufRingEntry>()).map_anon()?;
        let buffers = MmapOptions::new().len(count as usize * buf_size as usize).no_reserve_swap().map_anon()?;
        let mut ring = BufRing { entries, buffers, count, buf_size, local_tail: 0, published_tail: 0, bgid };
        for bid in 0..count {
            ring.recycle(bid);
        }
        ring.commit();
        Ok(ring)
    }

    /// Registers the ring as buffer group `bgid` of `submitter`'s ring.
    pub fn register(&self, submitter: &io_uring::Submitter<'_>) -> io::Result<()> {
        // SAFETY: `self.entries` is a live mapping of `count` entries that stays mapped for as long
        // as `self` lives; the owner (`Ring`) drops the io_uring before the BufRing (field order),
        // so the kernel never sees the memory after it is unmapped.
        unsafe { submitter.register_buf_ring_with_flags(self.entries.as_ptr() as u64, self.count, self.bgid, 0) }
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// Size of one buffer.
    pub fn buf_len(&self) -> u32 {
        self.buf_size
    }

    /// Bytes of memory this ring owns (entries + buffers), resident or not.
    pub fn mapped_bytes(&self) -> usize {
        self.entries.len() + self.buffers.len()
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    #[inline]
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * self.buf_size as usize;
        let len = len.min(self.buf_size as usize);
        &self.buffers[start..start + len]
    }

    /// Gives buffer `bid` back to the kernel (visible after the next `commit`).
    #[inline]
    pub fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let mask = self.count - 1;
        let index = (self.local_tail & mask) as usize;
        let addr = self.buffers.as_ptr() as u64 + bid as u64 * self.buf_size as u64;
        let base = self.entries.as_mut_ptr() as *mut BufRingEntry;
        // SAFETY: `index < count`, so the entry lies inside the `entries` mapping; the kernel only
        // reads entries between its head and the published tail, and this one is past the tail
        // until `commit`. Writing addr/len/bid leaves the shared tail field of entry 0 alone
        // (BufRingEntry's setters touch only their own fields).
        unsafe {
            let entry = &mut *base.add(index);
            entry.set_addr(addr);
            entry.set_len(self.buf_size);
            entry.set_bid(bid);
        }
        self.local_tail = self.local_tail.wrapping_add(1);
    }

    /// Publishes every recycled buffer to the kernel (nothing to do if none was recycled).
    #[inline]
    pub fn commit(&mut self) {
        if self.published_tail == self.local_tail {
            return;
        }
        self.published_tail = self.local_tail;
        let base = self.entries.as_ptr() as *const BufRingEntry;
        // SAFETY: the tail is a u16 inside entry 0 of our mapping (io_uring's ABI), 2-byte aligned;
        // the kernel reads it with acquire semantics, so the release store orders the entry writes
        // before it.
        unsafe {
            let tail = BufRingEntry::tail(base) as *const AtomicU16;
            (*tail).store(self.local_tail, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_entry_and_publishes_the_tail() {
        let ring = BufRing::new(8, 64, 0).unwrap();
        let base = ring.entries.as_ptr() as *const BufRingEntry;
        for i in 0..8usize {
            // SAFETY: i < count, inside the mapping.
            let e = unsafe { &*base.add(i) };
            assert_eq!(e.bid() as usize, i);
            assert_eq!(e.len(), 64);
            assert_eq!(e.addr(), ring.buffers.as_ptr() as u64 + 64 * i as u64);
        }
        // SAFETY: entry 0 holds the tail.
        let tail = unsafe { *BufRingEntry::tail(base) };
        assert_eq!(tail, 8);
    }

    #[test]
    fn recycled_buffers_wrap_around_the_ring() {
        let mut ring = BufRing::new(4, 16, 1).unwrap();
        for bid in [2u16, 0, 3] {
            ring.recycle(bid);
        }
        ring.commit();
        let base = ring.entries.as_ptr() as *const BufRingEntry;
        // SAFETY: indices below count.
        let bids: Vec<u16> = (0..3).map(|i| unsafe { (*base.add(i)).bid() }).collect();
        assert_eq!(bids, vec![2, 0, 3]);
        assert_eq!(ring.data(3, 100).len(), 16, "data is clamped to the buffer size");
    }

    #[test]
    fn rejects_sizes_the_kernel_would() {
        assert!(BufRing::new(3, 16, 0).is_err());
        assert!(BufRing::new(0, 16, 0).is_err());
    }
}
