//! Where each user is logged in: one `AtomicU64` per user id in `1..=users`, written only by the
//! worker that owns the session (on login and logout) and read by any worker that routes to it.
//! No lock: a reader may see an entry a moment old, so every delivery re-checks the slot's
//! generation and user id where it lands and re-routes if the session is gone.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Index = user id; entry 0 is unused. Zeroed pages are not resident until written, so a
    /// large `--users` costs address space, not memory.
    entries: Box<[AtomicU64]>,
}

impl Directory {
    pub fn new(users: u64) -> Directory {
        Directory { entries: (0..=users).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Highest user id routed to.
    pub fn users(&self) -> u64 {
        self.entries.len() as u64 - 1
    }

    pub fn contains(&self, user: u64) -> bool {
        user >= 1 && user <= self.users()
    }

    pub fn get(&self, user: u64) -> Option<Place> {
        self.entries.get(user as usize).and_then(|e| Place::unpack(e.load(Ordering::Acquire)))
    }

    /// Publishes a login; returns the session it replaced (logged in elsewhere), if any.
    pub fn publish(&self, user: u64, place: Place) -> Option<Place> {
        let e = self.entries.get(user as usize)?;
        Place::unpack(e.swap(place.pack(), Ordering::AcqRel)).filter(|&old| old != place)
    }

    /// Clears a logout, unless a newer session of the same user has replaced it.
    pub fn withdraw(&self, user: u64, place: Place) -> bool {
        self.entries
            .get(user as usize)
            .is_some_and(|e| e.compare_exchange(place.pack(), 0, Ordering::AcqRel, Ordering::Acquire).is_ok())
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
}
