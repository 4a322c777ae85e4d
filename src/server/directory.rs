//! Where each user is logged in: one `AtomicU64` per user id in `1..=users`, written only by the
//! worker that owns the session (on login and logout) and read by any worker that routes to it.
//! No lock: a reader may see an entry a moment old, so every delivery re-checks the slot's
//! generation and user id where it lands and re-routes if the session is gone.

use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

/// Where a session lives. Packed as `(worker + 1) << 56 | (generation & 0xff_ffff) << 32 | slot`,
/// so 0 means "offline".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub worker: u8,
    pub generation: u32,
    pub slot: u32,
}

pub const GEN_MASK: u32 = 0xff_ffff;

impl Place {
    pub fn pack(self) -> u64 {
        (self.worker as u64 + 1) << 56 | ((self.generation & GEN_MASK) as u64) << 32 | self.slot as u64
    }

    pub fn unpack(v: u64) -> Option<Place> {
        (v != 0).then(|| Place {
            worker: ((v >> 56) - 1) as u8,
            generation: (v >> 32) as u32 & GEN_MASK,
            slot: v as u32,
        })
    }
}

pub struct Directory {
    /// Index = user id; entry 0 is unused. An anonymous MAP_NORESERVE mapping: its pages are the
    /// kernel's shared zero page until an entry on them is written, so a large `--users` costs
    /// address space, not memory (written in full at start, `--users 100m` was 768 MiB resident).
    map: MmapRaw,
    /// Entries, `users + 1`.
    len: usize,
}

impl Directory {
    /// A directory for user ids `1..=users`, every entry "offline".
    ///
    /// Panics when the address space cannot be had (`ServeConfig::validate` caps `users` at
    /// 2^32, 32 GiB of address space, which MAP_NORESERVE gets unless overcommit is strict);
    /// [`Directory::try_new`] reports that as an error instead.
    pub fn new(users: u64) -> Directory {
        Directory::try_new(users).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_new(users: u64) -> std::io::Result<Directory> {
        let too_many = || std::io::Error::other(format!("{users} users do not fit the address space"));
        let len = usize::try_from(users).ok().and_then(|u| u.checked_add(1)).ok_or_else(too_many)?;
        let bytes = len.checked_mul(std::mem::size_of::<AtomicU64>()).ok_or_else(too_many)?;
        let map = MmapOptions::new().len(bytes).no_reserve_swap().map_anon().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("mapping {bytes} bytes for the user directory (--users {users}): {e}"),
            )
        })?;
        // Raw from here on: the entries are reached only through pointers, never a `&[u8]` that
        // would claim the bytes do not change while other workers swap entries.
        Ok(Directory { map: MmapRaw::from(map), len })
    }

    fn entries(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `len` * 8 bytes, page-aligned (so aligned for AtomicU64), and
        // lives as long as `self`; an anonymous mapping reads as zeroes, a valid AtomicU64 (0 =
        // offline). It is only ever accessed through these atomics (MmapRaw hands out raw
        // pointers, no byte slices), so shared references to it may coexist with atomic writes.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.len) }
    }

    /// Highest user id routed to.
    pub fn users(&self) -> u64 {
        self.len as u64 - 1
    }

    pub fn contains(&self, user: u64) -> bool {
        user >= 1 && user <= self.users()
    }

    pub fn get(&self, user: u64) -> Option<Place> {
        self.entry(user).and_then(|e| Place::unpack(e.load(Ordering::Acquire)))
    }

    /// Publishes a login; returns the session it replaced (logged in elsewhere), if any.
    pub fn publish(&self, user: u64, place: Place) -> Option<Place> {
        let e = self.entry(user)?;
        Place::unpack(e.swap(place.pack(), Ordering::AcqRel)).filter(|&old| old != place)
    }

    /// Clears a logout, unless a newer session of the same user has replaced it.
    pub fn withdraw(&self, user: u64, place: Place) -> bool {
        self.entry(user)
            .is_some_and(|e| e.compare_exchange(place.pack(), 0, Ordering::AcqRel, Ordering::Acquire).is_ok())
    }

    fn entry(&self, user: u64) -> Option<&AtomicU64> {
        self.entries().get(usize::try_from(user).ok()?)
    }

    /// Address range of the entries, to measure what is resident.
    pub fn range(&self) -> (usize, usize) {
        (self.map.as_ptr() as usize, self.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_login_wins_and_an_old_logout_does_not_clear_it() {
        let d = Directory::new(10);
        let a = Place { worker: 0, generation: 5, slot: 3 };
        let b = Place { worker: 1, generation: 1, slot: 0 };
        assert_eq!(d.get(4), None);
        assert_eq!(d.publish(4, a), None);
        assert_eq!(d.get(4), Some(a));
        assert_eq!(d.publish(4, b), Some(a));
        assert!(!d.withdraw(4, a), "a stale logout must not remove the newer session");
        assert_eq!(d.get(4), Some(b));
        assert!(d.withdraw(4, b));
        assert_eq!(d.get(4), None);
        assert!(d.contains(10) && !d.contains(11) && !d.contains(0));
        assert_eq!(
            Place::unpack(Place { worker: 255 - 1, generation: u32::MAX, slot: u32::MAX }.pack()).unwrap().generation,
            GEN_MASK
        );
    }

    /// Pages of `range` resident now (mincore(2)).
    fn resident_pages((addr, len): (usize, usize)) -> usize {
        let pages = len.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        // SAFETY: `addr..addr + len` is one live mapping (page-aligned), and `vec` has one byte
        // per page of it for the kernel to fill.
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    /// A hundred million users cost nothing until they log in: only the pages of written
    /// entries become resident, and reads of unwritten ones see "offline".
    #[test]
    fn entries_are_resident_only_once_written() {
        let d = Directory::new(100_000_000);
        assert_eq!(d.users(), 100_000_000);
        assert_eq!(resident_pages(d.range()), 0);
        assert_eq!(d.get(99_999_999), None);
        let p = Place { worker: 3, generation: 9, slot: 7 };
        for user in [1, 50_000_000, 100_000_000] {
            assert_eq!(d.publish(user, p), None);
            assert_eq!(d.get(user), Some(p));
        }
        assert_eq!(resident_pages(d.range()), 3);
        assert!(!d.contains(100_000_001) && d.get(100_000_001).is_none() && d.publish(u64::MAX, p).is_none());
        assert!(!d.withdraw(u64::MAX, p));
    }

    #[test]
    fn an_impossible_size_is_an_error() {
        assert!(Directory::try_new(u64::MAX).is_err());
        assert!(Directory::try_new(u64::MAX / 8).is_err());
    }
}
