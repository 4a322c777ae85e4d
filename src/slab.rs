//! `SessionSlab`: fixed-size session slots in one preallocated mapping.
//!
//! Two parts, apart on purpose:
//! - a dense array of small typed headers (`H: bytemuck::Pod`), the hot per-session state: an
//!   idle session costs its header and nothing more;
//! - the slots, `slot_bytes` each, in one `MAP_NORESERVE` anonymous mapping. A slot's pages
//!   become resident only when its session buffers data, and are given back with
//!   `MADV_DONTNEED` when it is reclaimed or freed.
//!
//! Free slots are a stack of indices, plus a "never used" watermark so that start-up touches
//! nothing. Nothing here allocates per connection.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytemuck::{Pod, Zeroable};
use memmap2::{MmapMut, MmapOptions, UncheckedAdvice};

#[derive(Debug, thiserror::Error)]
pub enum SlabError {
    #[error("a slab needs at least one slot of at least one page, got {capacity} slots of {slot_bytes} bytes")]
    Size { capacity: usize, slot_bytes: usize },
    #[error("cannot map {bytes} bytes for the session slab: {source}")]
    Map { bytes: usize, source: io::Error },
}

pub const PAGE: usize = 4096;

/// Per-slot bookkeeping the slab itself needs.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SlotMeta {
    /// Bumped on every free, so tokens made for an earlier session are recognisably stale.
    generation: u32,
    /// Bytes from the slot's start that may be resident (a page-rounded high-water mark).
    touched: u32,
}

/// A bound on slot memory made resident, shared by every slab of a process: a slot that would
/// grow past what the budget has left is refused room (its session waits, as a full out area
/// does). Without it, each of N peers that send and never read makes a whole slot resident.
#[derive(Debug)]
pub struct ResidentBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ResidentBudget {
    pub fn new(limit: usize) -> ResidentBudget {
        ResidentBudget { limit, used: AtomicUsize::new(0) }
    }

    /// Bytes of slots marked possibly resident now, all slabs together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u + bytes <= self.limit).then_some(u + bytes))
            .is_ok()
    }

    fn take(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One session's header, slot bytes and touch mark, borrowed together.
pub struct SlotView<'a, H> {
    pub header: &'a mut H,
    pub slot: &'a mut [u8],
    pub touch: Touch<'a>,
}

/// A slot's "may be resident" mark: writers say how far into the slot they wrote.
pub struct Touch<'a> {
    mark: &'a mut u32,
    slot_bytes: usize,
    budget: Option<&'a ResidentBudget>,
}

impl Touch<'_> {
    fn pages(&self, bytes: usize) -> u32 {
        (bytes.min(self.slot_bytes).div_ceil(PAGE) * PAGE) as u32
    }

    /// Records that the slot's first `bytes` may now be resident (written: counted in the
    /// budget whatever it has left).
    #[inline]
    pub fn upto(&mut self, bytes: usize) {
        let bytes = self.pages(bytes);
        if bytes > *self.mark {
            if let Some(b) = self.budget {
                b.take((bytes - *self.mark) as usize);
            }
            *self.mark = bytes;
        }
    }

    /// Asks to write up to `bytes` into the slot: `true` if that stays within the pages already
    /// marked or the budget has room for the new ones (marked now).
    #[inline]
    pub fn reserve(&mut self, bytes: usize) -> bool {
        let bytes = self.pages(bytes);
        if bytes <= *self.mark {
            return true;
        }
        if let Some(b) = self.budget
            && !b.try_take((bytes - *self.mark) as usize)
        {
            return false;
        }
        *self.mark = bytes;
        true
    }
}

pub struct SessionSlab<H: Pod> {
    headers: MmapMut,
    meta: MmapMut,
    slots: MmapMut,
    slot_bytes: usize,
    capacity: u32,
    free: Vec<u32>,
    /// Slots `fresh..capacity` have never been handed out.
    fresh: u32,
    in_use: u32,
    budget: Option<std::sync::Arc<ResidentBudget>>,
    _header: std::marker::PhantomData<H>,
}

fn map(bytes: usize) -> Result<MmapMut, SlabError> {
    MmapOptions::new().len(bytes.max(1)).no_reserve_swap().map_anon().map_err(|source| SlabError::Map { bytes, source })
}

impl<H: Pod> SessionSlab<H> {
    /// `slot_bytes` is rounded up to whole pages so a slot can be given back on its own.
    pub fn new(capacity: usize, slot_bytes: usize) -> Result<Self, SlabError> {
        if capacity == 0 || capacity > u32::MAX as usize || slot_bytes == 0 {
            return Err(SlabError::Size { capacity, slot_bytes });
        }
        let slot_bytes = slot_bytes.div_ceil(PAGE) * PAGE;
        Ok(SessionSlab {
            headers: map(capacity * std::mem::size_of::<H>())?,
            meta: map(capacity * std::mem::size_of::<SlotMeta>())?,
            slots: map(capacity * slot_bytes)?,
            slot_bytes,
            capacity: capacity as u32,
            free: Vec::new(),
            fresh: 0,
            in_use: 0,
            budget: None,
            _header: std::marker::PhantomData,
        })
    }

    /// Counts this slab's touched slot pages in `budget` (shared with other slabs).
    pub fn with_budget(mut self, budget: std::sync::Arc<ResidentBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    pub fn budget(&self) -> Option<&ResidentBudget> {
        self.budget.as_deref()
    }

    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    pub fn in_use(&self) -> usize {
        self.in_use as usize
    }

    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Address range of the slot mapping, to measure what is resident.
    pub fn slots_range(&self) -> (usize, usize) {
        (self.slots.as_ptr() as usize, self.slots.len())
    }

    /// Address ranges of the header and bookkeeping arrays.
    pub fn header_ranges(&self) -> [(usize, usize); 2] {
        [(self.headers.as_ptr() as usize, self.headers.len()), (self.meta.as_ptr() as usize, self.meta.len())]
    }

    /// Takes a free slot; its header is zeroed. `None` when the slab is full.
    pub fn alloc(&mut self) -> Option<u32> {
        let index = match self.free.pop() {
            Some(i) => i,
            None if self.fresh < self.capacity => {
                self.fresh += 1;
                self.fresh - 1
            }
            None => return None,
        };
        self.in_use += 1;
        *self.header_mut(index) = H::zeroed();
        Some(index)
    }

    /// Returns a slot: bumps its generation and gives its touched pages back to the OS.
    pub fn free(&mut self, index: u32) {
        debug_assert!(index < self.fresh);
        self.reclaim(index);
        self.meta_mut(index).generation = self.meta(index).generation.wrapping_add(1);
        self.in_use -= 1;
        self.free.push(index);
    }

    pub fn generation(&self, index: u32) -> u32 {
        self.meta(index).generation
    }

    #[inline]
    pub fn header(&self, index: u32) -> &H {
        &bytemuck::cast_slice::<u8, H>(&self.headers)[index as usize]
    }

    #[inline]
    pub fn header_mut(&mut self, index: u32) -> &mut H {
        &mut bytemuck::cast_slice_mut::<u8, H>(&mut self.headers)[index as usize]
    }

    #[inline]
    pub fn slot(&self, index: u32) -> &[u8] {
        let start = index as usize * self.slot_bytes;
        &self.slots[start..start + self.slot_bytes]
    }

    /// The slot's bytes. Writers record how far they wrote with [`SessionSlab::touch`].
    #[inline]
    pub fn slot_mut(&mut self, index: u32) -> &mut [u8] {
        let start = index as usize * self.slot_bytes;
        &mut self.slots[start..start + self.slot_bytes]
    }

    /// Records that the first `bytes` of the slot may now be resident.
    #[inline]
    pub fn touch(&mut self, index: u32, bytes: usize) {
        self.session(index).touch.upto(bytes);
    }

    /// Header, slot and touch mark of one session at once (they live in different mappings).
    #[inline]
    pub fn session(&mut self, index: u32) -> SlotView<'_, H> {
        let start = index as usize * self.slot_bytes;
        let slot_bytes = self.slot_bytes;
        let meta = &mut bytemuck::cast_slice_mut::<u8, SlotMeta>(&mut self.meta)[index as usize];
        SlotView {
            header: &mut bytemuck::cast_slice_mut::<u8, H>(&mut self.headers)[index as usize],
            slot: &mut self.slots[start..start + slot_bytes],
            touch: Touch { mark: &mut meta.touched, slot_bytes, budget: self.budget.as_deref() },
        }
    }

    /// Slots `0..high_water()` have been handed out at least once.
    pub fn high_water(&self) -> u32 {
        self.fresh
    }

    /// Bytes of the slot that may be resident.
    pub fn touched(&self, index: u32) -> usize {
        self.meta(index).touched as usize
    }

    /// Gives the slot's pages back to the OS; the next touch reads zeros. Call only while nothing
    /// (kernel included) reads or writes the slot.
    pub fn reclaim(&mut self, index: u32) {
        let touched = self.meta(index).touched as usize;
        if touched == 0 {
            return;
        }
        let start = index as usize * self.slot_bytes;
        // SAFETY: the range is page aligned and inside our private anonymous mapping; the caller
        // guarantees no I/O is in flight on the slot, and no Rust reference to it outlives this
        // call (we hold &mut self). DONTNEED on anonymous memory just zero-fills later reads.
        let _ = unsafe { self.slots.unchecked_advise_range(UncheckedAdvice::DontNeed, start, touched) };
        self.meta_mut(index).touched = 0;
        if let Some(b) = &self.budget {
            b.give_back(touched);
        }
    }

    fn meta(&self, index: u32) -> &SlotMeta {
        &bytemuck::cast_slice::<u8, SlotMeta>(&self.meta)[index as usize]
    }

    fn meta_mut(&mut self, index: u32) -> &mut SlotMeta {
        &mut bytemuck::cast_slice_mut::<u8, SlotMeta>(&mut self.meta)[index as usize]
    }
}

/// Resident bytes of the pages in the given `(addr, len)` ranges, asked of the kernel with
/// `mincore` (adjacent anonymous mappings merge into one VMA, so smaps cannot tell them apart).
pub fn resident_bytes(ranges: &[(usize, usize)]) -> io::Result<u64> {
    const CHUNK_PAGES: usize = 1 << 16;
    let mut vec = vec![0u8; CHUNK_PAGES];
    let mut pages = 0u64;
    for &(addr, len) in ranges {
        let mut at = addr & !(PAGE - 1);
        let end = addr + len;
        while at < end {
            let n = (end - at).div_ceil(PAGE).min(CHUNK_PAGES);
            // SAFETY: mincore reads no memory of the range, only page-table state (a range that is
            // no longer mapped makes it fail with ENOMEM); it writes n bytes into `vec` (len >= n).
            let rc = unsafe { libc::mincore(at as *mut libc::c_void, n * PAGE, vec.as_mut_ptr()) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            pages += vec[..n].iter().filter(|&&b| b & 1 != 0).count() as u64;
            at += n * PAGE;
        }
    }
    Ok(pages * PAGE as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct Hdr {
        a: u64,
        b: u32,
        c: u32,
    }

    #[test]
    fn hands_out_every_slot_then_reports_full() {
        let mut slab: SessionSlab<Hdr> = SessionSlab::new(3, 100).unwrap();
        assert_eq!(slab.slot_bytes(), PAGE);
        let got: Vec<u32> = (0..3).map(|_| slab.alloc().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2]);
        assert!(slab.alloc().is_none());
        assert_eq!(slab.in_use(), 3);
        slab.free(1);
        assert_eq!(slab.alloc(), Some(1), "freed slots are reused first (LIFO keeps memory hot)");
    }

    #[test]
    fn free_bumps_the_generation_and_zeroes_the_header() {
        let mut slab: SessionSlab<Hdr> = SessionSlab::new(2, PAGE).unwrap();
        let i = slab.alloc().unwrap();
        slab.header_mut(i).a = 77;
        let g = slab.generation(i);
        slab.free(i);
        assert_eq!(slab.generation(i), g + 1);
        let j = slab.alloc().unwrap();
        assert_eq!(j, i);
        assert_eq!(slab.header(j).a, 0);
    }

    #[test]
    fn slot_pages_are_resident_only_while_used() {
        let slots = 64;
        let mut slab: SessionSlab<Hdr> = SessionSlab::new(slots, 10 * PAGE).unwrap();
        let range = [slab.slots_range()];
        assert_eq!(resident_bytes(&range).unwrap(), 0, "a new slab is not resident");
        let i = slab.alloc().unwrap();
        slab.slot_mut(i)[..2 * PAGE].fill(0xAB);
        slab.touch(i, 2 * PAGE - 10);
        assert_eq!(slab.touched(i), 2 * PAGE);
        assert_eq!(resident_bytes(&range).unwrap(), 2 * PAGE as u64);
        slab.reclaim(i);
        assert_eq!(resident_bytes(&range).unwrap(), 0);
        assert!(slab.slot_mut(i).iter().take(PAGE).all(|&b| b == 0), "reclaimed pages read as zeros");
        slab.free(i);
    }

    #[test]
    fn a_huge_slab_costs_address_space_not_memory() {
        // 1M slots of 40 KiB is 40 GiB of address space: fine with MAP_NORESERVE.
        let slab: SessionSlab<Hdr> = SessionSlab::new(1 << 20, 40 * 1024).unwrap();
        let mut ranges = vec![slab.slots_range()];
        ranges.extend(slab.header_ranges());
        assert!(resident_bytes(&ranges).unwrap() < 1 << 20);
    }

    #[test]
    fn header_and_slot_are_disjoint() {
        let mut slab: SessionSlab<Hdr> = SessionSlab::new(4, PAGE).unwrap();
        let i = slab.alloc().unwrap();
        let mut v = slab.session(i);
        v.header.a = 5;
        v.slot[..8].copy_from_slice(&[1; 8]);
        v.touch.upto(8);
        assert_eq!(slab.header(i).a, 5);
        assert_eq!(slab.touched(i), PAGE);
        assert_eq!(&slab.slot_mut(i)[..8], &[1; 8]);
    }
}
