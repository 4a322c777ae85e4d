//! The four single-producer single-consumer rings an AF_XDP socket shares with the kernel: fill
//! and TX (user space produces) and RX and completion (user space consumes). Each is a mapping
//! of the socket at a fixed page offset holding a producer index, a consumer index, a flags word
//! and a power-of-two array of entries, at the offsets `XDP_MMAP_OFFSETS` reports.
//!
//! Indices run freely and wrap at 2^32; an entry lives at `index & mask`. Each side caches the
//! other side's index and reads the shared one (Acquire) only when the cache says it must, and
//! publishes its own (Release) once per batch: that is the whole synchronization, the same as
//! libxdp's `xsk.h`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use memmap2::{MmapMut, MmapOptions};

/// Where one ring's words are, and how many entries it has.
struct RingPtrs<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    entries: NonNull<T>,
    mask: u32,
}

impl<T: Copy> RingPtrs<T> {
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the ring's mapping (or test memory) that the owning ring keeps alive,
        // aligned to 4 (the kernel's offsets are, and `from_raw`'s contract says so); the kernel and
        // we only ever access it atomically.
        unsafe { self.producer.as_ref() }
    }
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }
    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.flags.as_ref() }
    }
    fn read(&self, index: u32) -> T {
        // SAFETY: `index & mask` < the ring's size, so the entry lies inside the mapping; entries
        // are plain integers; the caller reads only entries the other side has published
        // (between the consumer and the Acquire-loaded producer), which it no longer writes.
        unsafe { self.entries.as_ptr().add((index & self.mask) as usize).read_volatile() }
    }
    fn write(&self, index: u32, value: T) {
        // SAFETY: in bounds as in `read`; the caller writes only entries between the producer and
        // the Acquire-loaded consumer + size, which the other side has released and does not read
        // until the next Release store of the producer.
        unsafe { self.entries.as_ptr().add((index & self.mask) as usize).write_volatile(value) }
    }
}

/// The memory a ring lives in: its own mapping of the socket, or (in unit tests) memory the test
/// owns.
enum Backing {
    Mapped(#[allow(dead_code)] MmapMut),
    #[cfg(test)]
    Borrowed,
}

/// Maps one ring of socket `fd` at page offset `pgoff`.
fn map_ring<T>(
    fd: BorrowedFd<'_>,
    pgoff: u64,
    off: &libc::xdp_ring_offset,
    size: u32,
) -> io::Result<(Backing, RingPtrs<T>)> {
    let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
    // SAFETY: an AF_XDP ring mapping is shared with the kernel, which writes its side's index and
    // the entries we consume concurrently; `RingPtrs` only touches it through atomics and volatile
    // accesses within the bounds checked here, never through references to the entries.
    let mut map = unsafe { MmapOptions::new().offset(pgoff).len(len).populate().map_mut(fd.as_raw_fd())? };
    let base = map.as_mut_ptr();
    for o in [off.producer, off.consumer, off.flags, off.desc] {
        if o as usize + 4 > len || o % 4 != 0 {
            return Err(io::Error::other(format!("ring offset {o} outside a mapping of {len} bytes")));
        }
    }
    // SAFETY: the offsets were checked against the mapping's length just above.
    let ptrs = unsafe { RingPtrs::at(base, off, size) };
    Ok((Backing::Mapped(map), ptrs))
}

impl<T> RingPtrs<T> {
    /// # Safety
    /// `base` + each offset must be inside live memory of at least `off.desc + size * size_of::<T>()`
    /// bytes, 4-byte aligned for the index words and aligned for `T` at `desc`; `size` a power of two.
    // SAFETY: a function marked unsafe: both callers check the offsets against the memory first and say so.
    unsafe fn at(base: *mut u8, off: &libc::xdp_ring_offset, size: u32) -> RingPtrs<T> {
        debug_assert!(size.is_power_of_two());
        // SAFETY: the caller guarantees the offsets lie inside the memory at `base`, which is not null.
        unsafe {
            RingPtrs {
                producer: NonNull::new_unchecked(base.add(off.producer as usize).cast()),
                consumer: NonNull::new_unchecked(base.add(off.consumer as usize).cast()),
                flags: NonNull::new_unchecked(base.add(off.flags as usize).cast()),
                entries: NonNull::new_unchecked(base.add(off.desc as usize).cast()),
                mask: size - 1,
            }
        }
    }
}

/// A ring user space writes: fill (frame addresses) or TX (descriptors).
pub(crate) struct Producer<T> {
    ptrs: RingPtrs<T>,
    _backing: Backing,
    size: u32,
    /// Our producer index, published by `submit`.
    prod: u32,
    /// The kernel's consumer index as last read.
    cons: u32,
}

impl<T: Copy> Producer<T> {
    pub(crate) fn map(fd: BorrowedFd<'_>, pgoff: u64, off: &libc::xdp_ring_offset, size: u32) -> io::Result<Self> {
        let (backing, ptrs) = map_ring(fd, pgoff, off, size)?;
        Ok(Self::new(ptrs, backing, size))
    }

    fn new(ptrs: RingPtrs<T>, backing: Backing, size: u32) -> Self {
        let prod = ptrs.producer().load(Ordering::Relaxed);
        let cons = ptrs.consumer().load(Ordering::Acquire);
        Producer { ptrs, _backing: backing, size, prod, cons }
    }

    /// Free slots, at most `want`: reads the kernel's consumer only when the cached one shows
    /// fewer than `want` free.
    pub(crate) fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.prod.wrapping_sub(self.cons);
        if free >= want {
            return want;
        }
        self.cons = self.ptrs.consumer().load(Ordering::Acquire);
        (self.size - self.prod.wrapping_sub(self.cons)).min(want)
    }

    /// Writes entry `i` of the batch being built (`i` below what `free` returned).
    pub(crate) fn write(&mut self, i: u32, value: T) {
        debug_assert!(i < self.size - self.prod.wrapping_sub(self.cons));
        self.ptrs.write(self.prod.wrapping_add(i), value);
    }

    /// Publishes the first `n` written entries: one Release store for the batch.
    pub(crate) fn submit(&mut self, n: u32) {
        if n == 0 {
            return;
        }
        self.prod = self.prod.wrapping_add(n);
        self.ptrs.producer().store(self.prod, Ordering::Release);
    }

    /// Entries published that the kernel has not taken yet.
    pub(crate) fn outstanding(&mut self) -> u32 {
        self.cons = self.ptrs.consumer().load(Ordering::Acquire);
        self.prod.wrapping_sub(self.cons)
    }

    /// The kernel asks to be woken (XDP_RING_NEED_WAKEUP) before it looks at this ring again.
    pub(crate) fn needs_wakeup(&self) -> bool {
        self.ptrs.flags().load(Ordering::Acquire) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    pub(crate) fn size(&self) -> u32 {
        self.size
    }
}

/// A ring user space reads: RX (descriptors) or completion (frame addresses).
pub(crate) struct Consumer<T> {
    ptrs: RingPtrs<T>,
    _backing: Backing,
    /// Our consumer index, published by `release`.
    cons: u32,
    /// The kernel's producer index as last read.
    prod: u32,
}

impl<T: Copy> Consumer<T> {
    pub(crate) fn map(fd: BorrowedFd<'_>, pgoff: u64, off: &libc::xdp_ring_offset, size: u32) -> io::Result<Self> {
        let (backing, ptrs) = map_ring(fd, pgoff, off, size)?;
        Ok(Self::new(ptrs, backing))
    }

    fn new(ptrs: RingPtrs<T>, backing: Backing) -> Self {
        let cons = ptrs.consumer().load(Ordering::Relaxed);
        let prod = ptrs.producer().load(Ordering::Acquire);
        Consumer { ptrs, _backing: backing, cons, prod }
    }

    /// Entries ready, at most `max`: reads the kernel's producer only when the cache is empty or
    /// short of `max`.
    pub(crate) fn available(&mut self, max: u32) -> u32 {
        let ready = self.prod.wrapping_sub(self.cons);
        if ready >= max {
            return max;
        }
        self.prod = self.ptrs.producer().load(Ordering::Acquire);
        self.prod.wrapping_sub(self.cons).min(max)
    }

    /// Entry `i` of the ready batch (`i` below what `available` returned).
    pub(crate) fn read(&self, i: u32) -> T {
        debug_assert!(i < self.prod.wrapping_sub(self.cons));
        self.ptrs.read(self.cons.wrapping_add(i))
    }

    /// Hands the first `n` ready entries back to the kernel: one Release store for the batch.
    pub(crate) fn release(&mut self, n: u32) {
        if n == 0 {
            return;
        }
        self.cons = self.cons.wrapping_add(n);
        self.ptrs.consumer().store(self.cons, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in test memory, with the kernel's side played by the test: the layout the kernel
    /// uses (producer, consumer, flags on their own words, then the entries). The memory is only
    /// touched through raw pointers, as the kernel's side of a real ring is.
    struct Fake {
        base: *mut u64,
        words: usize,
        off: libc::xdp_ring_offset,
    }

    impl Fake {
        fn new(size: u32) -> Fake {
            let words = 8 + size as usize * 2;
            let base = Box::into_raw(vec![0u64; words].into_boxed_slice()).cast::<u64>();
            Fake { base, words, off: libc::xdp_ring_offset { producer: 0, consumer: 8, flags: 16, desc: 64 } }
        }
        fn word(&self, at: u64) -> &AtomicU32 {
            // SAFETY: `at` is one of the index words inside the allocation, 4-aligned (u64 storage).
            unsafe { &*(self.base.cast::<u8>().add(at as usize).cast::<AtomicU32>()) }
        }
        fn producer<T: Copy>(&self, size: u32) -> Producer<T> {
            // SAFETY: the allocation holds the words and room for `size` entries of up to 16 bytes,
            // is 8-aligned, and outlives the ring (the test drops the ring before `self`).
            let ptrs = unsafe { RingPtrs::at(self.base.cast(), &self.off, size) };
            Producer::new(ptrs, Backing::Borrowed, size)
        }
        fn consumer<T: Copy>(&self, size: u32) -> Consumer<T> {
            // SAFETY: as in `producer`.
            let ptrs = unsafe { RingPtrs::at(self.base.cast(), &self.off, size) };
            Consumer::new(ptrs, Backing::Borrowed)
        }
        fn entry(&self, index: u32, size: u32) -> u64 {
            // SAFETY: entry slots start at word 8 and `index & (size - 1)` stays below `size`.
            unsafe { self.base.add(8 + (index & (size - 1)) as usize).read_volatile() }
        }
        fn set_entry(&self, index: u32, size: u32, v: u64) {
            // SAFETY: as in `entry`.
            unsafe { self.base.add(8 + (index & (size - 1)) as usize).write_volatile(v) }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            // SAFETY: `base` came from `Box::into_raw` of a slice of `words` u64s and is freed once.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.base, self.words)) });
        }
    }

    #[test]
    fn producer_batches_and_sees_the_consumer_move() {
        let fake = Fake::new(8);
        let mut ring: Producer<u64> = fake.producer(8);
        assert_eq!(ring.free(16), 8);
        for i in 0..5 {
            ring.write(i, 100 + i as u64);
        }
        ring.submit(5);
        assert_eq!(fake.word(0).load(Ordering::Relaxed), 5, "one store publishes the batch");
        assert_eq!((0..5).map(|i| fake.entry(i, 8)).collect::<Vec<_>>(), vec![100, 101, 102, 103, 104]);
        assert_eq!(ring.free(8), 3);
        assert_eq!(ring.outstanding(), 5);
        fake.word(8).store(4, Ordering::Release); // the kernel took four
        assert_eq!(ring.free(8), 7);
        assert_eq!(ring.outstanding(), 1);
        assert!(!ring.needs_wakeup());
        fake.word(16).store(libc::XDP_RING_NEED_WAKEUP, Ordering::Release);
        assert!(ring.needs_wakeup());
    }

    #[test]
    fn indices_wrap_at_two_to_the_32() {
        let fake = Fake::new(4);
        fake.word(0).store(u32::MAX - 1, Ordering::Relaxed);
        fake.word(8).store(u32::MAX - 1, Ordering::Relaxed);
        let mut prod: Producer<u64> = fake.producer(4);
        assert_eq!(prod.free(4), 4);
        for i in 0..4 {
            prod.write(i, i as u64);
        }
        prod.submit(4);
        assert_eq!(fake.word(0).load(Ordering::Relaxed), 2);
        let mut cons: Consumer<u64> = fake.consumer(4);
        assert_eq!(cons.available(16), 4);
        assert_eq!((0..4).map(|i| cons.read(i)).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        cons.release(4);
        assert_eq!(fake.word(8).load(Ordering::Relaxed), 2);
        assert_eq!(cons.available(16), 0);
    }

    #[test]
    fn consumer_reads_what_the_kernel_published_and_no_more() {
        let fake = Fake::new(8);
        let mut ring: Consumer<u64> = fake.consumer(8);
        assert_eq!(ring.available(8), 0);
        fake.set_entry(0, 8, 7);
        fake.set_entry(1, 8, 9);
        fake.word(0).store(2, Ordering::Release);
        assert_eq!(ring.available(1), 1, "capped by max");
        assert_eq!(ring.available(8), 2);
        assert_eq!((ring.read(0), ring.read(1)), (7, 9));
        ring.release(2);
        assert_eq!(fake.word(8).load(Ordering::Relaxed), 2);
    }

    #[test]
    fn xdp_desc_entries_round_trip() {
        // TX and RX rings hold 16-byte descriptors: a 4-entry ring of them needs 8 u64 words.
        let fake = Fake::new(8);
        let mut tx: Producer<libc::xdp_desc> = fake.producer(4);
        tx.write(0, libc::xdp_desc { addr: 4096, len: 60, options: 0 });
        tx.submit(1);
        let mut rx: Consumer<libc::xdp_desc> = fake.consumer(4);
        assert_eq!(rx.available(4), 1);
        let d = rx.read(0);
        assert_eq!((d.addr, d.len, d.options), (4096, 60, 0));
    }
}
