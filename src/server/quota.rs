//! The chat message budget: every message the server has ACKed and not yet seen receipted (or
//! expired) holds a reservation, wherever it is: a queue between workers, a recipient's
//! delivered-but-unreceipted list, or the offline store. A SEND is ACKed only once its
//! reservation is made; otherwise the sender gets NACK 8 there and then. So no later step can
//! run out of room: an ACK is never followed by a drop.
//!
//! Bounds: per recipient (one user's backlog), per sender (one client cannot fill the store and
//! lock everyone else out), and in total. Bytes are counted as the memory a stored message takes
//! (its frame plus what keeping it costs), so the totals are true to the server's memory.
//!
//! Per-user counters live in anonymous `MAP_NORESERVE` mappings of atomics: a user who never
//! sends or receives costs address space, not memory.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::offline::OfflineLimits;

/// Memory one kept message costs besides its frame: the frame's heap block rounding and header,
/// and its entry in a queue (time, pointer, length).
pub const KEEP_OVERHEAD: u64 = 48;

/// The bytes a message of `frame_len` is charged.
pub fn charge(frame_len: usize) -> u64 {
    (frame_len as u64).div_ceil(16) * 16 + KEEP_OVERHEAD
}

/// A lazily touched array of `AtomicU32`, one per user id.
struct PerUser {
    map: MmapRaw,
    len: usize,
}

impl PerUser {
    fn new(users: u64) -> std::io::Result<PerUser> {
        let len = usize::try_from(users)
            .ok()
            .and_then(|u| u.checked_add(1))
            .ok_or_else(|| std::io::Error::other("too many users for the address space"))?;
        let map = MmapOptions::new().len(len * std::mem::size_of::<AtomicU32>()).no_reserve_swap().map_anon()?;
        Ok(PerUser { map: MmapRaw::from(map), len })
    }

    fn get(&self, user: u64) -> Option<&AtomicU32> {
        let index = usize::try_from(user).ok().filter(|&i| i < self.len)?;
        // SAFETY: the mapping holds `len` AtomicU32s, is page-aligned (so aligned for them) and
        // lives as long as `self`; anonymous memory reads as zeroes, a valid AtomicU32; it is
        // only ever reached through these atomics, never as plain bytes.
        Some(unsafe { &*self.map.as_ptr().cast::<AtomicU32>().add(index) })
    }

    /// Adds `n` to `user`'s count if it stays within `limit`.
    fn try_add(&self, user: u64, n: u32, limit: u64) -> bool {
        let Some(c) = self.get(user) else { return false };
        c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let next = v as u64 + n as u64;
            (next <= limit).then_some(next as u32)
        })
        .is_ok()
    }

    fn sub(&self, user: u64, n: u32) {
        if let Some(c) = self.get(user) {
            let _ = c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(n)));
        }
    }

    fn load(&self, user: u64) -> u32 {
        self.get(user).map_or(0, |c| c.load(Ordering::Acquire))
    }
}

/// The budget: counts in messages and charged bytes.
pub struct Quotas {
    limits: OfflineLimits,
    to_messages: PerUser,
    to_bytes: PerUser,
    from_messages: PerUser,
    from_bytes: PerUser,
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Quotas {
    pub fn new(users: u64, limits: OfflineLimits) -> std::io::Result<Quotas> {
        Ok(Quotas {
            limits,
            to_messages: PerUser::new(users)?,
            to_bytes: PerUser::new(users)?,
            from_messages: PerUser::new(users)?,
            from_bytes: PerUser::new(users)?,
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// Per-sender bounds: the configured ones, and never more than half the totals, so that one
    /// sender cannot take the whole budget.
    fn sender_limits(&self) -> (u64, u64) {
        let l = &self.limits;
        (l.per_sender_messages.min(l.total_messages / 2).max(1), l.per_sender_bytes.min(l.total_bytes / 2).max(1))
    }

    /// Reserves one copy of a `bytes`-charged message from `from` for each of `to`, all or
    /// nothing. `false`: a bound is reached (NACK 8), and nothing is held.
    pub fn reserve(&self, from: u64, to: &[u64], bytes: u64) -> bool {
        let copies = to.len() as u64;
        let (total_bytes, per_copy) = (bytes * copies, bytes.min(u32::MAX as u64) as u32);
        let l = &self.limits;
        if !add_within(&self.messages, copies, l.total_messages) {
            return false;
        }
        if !add_within(&self.bytes, total_bytes, l.total_bytes) {
            self.messages.fetch_sub(copies, Ordering::AcqRel);
            return false;
        }
        let (sender_messages, sender_bytes) = self.sender_limits();
        let copies32 = copies.min(u32::MAX as u64) as u32;
        let sender_ok = self.from_messages.try_add(from, copies32, sender_messages);
        let sender_ok = sender_ok
            && (self.from_bytes.try_add(from, total_bytes.min(u32::MAX as u64) as u32, sender_bytes) || {
                self.from_messages.sub(from, copies32);
                false
            });
        if !sender_ok {
            self.messages.fetch_sub(copies, Ordering::AcqRel);
            self.bytes.fetch_sub(total_bytes, Ordering::AcqRel);
            return false;
        }
        for (i, &user) in to.iter().enumerate() {
            let ok = self.to_messages.try_add(user, 1, l.per_user_messages as u64)
                && (self.to_bytes.try_add(user, per_copy, l.per_user_bytes) || {
                    self.to_messages.sub(user, 1);
                    false
                });
            if !ok {
                for &undo in &to[..i] {
                    self.to_messages.sub(undo, 1);
                    self.to_bytes.sub(undo, per_copy);
                }
                self.release_sender(from, copies, total_bytes);
                return false;
            }
        }
        true
    }

    fn release_sender(&self, from: u64, copies: u64, bytes: u64) {
        self.from_messages.sub(from, copies.min(u32::MAX as u64) as u32);
        self.from_bytes.sub(from, bytes.min(u32::MAX as u64) as u32);
        self.messages.fetch_sub(copies, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// One copy is done with (receipted, or expired): its reservation goes back.
    pub fn release(&self, from: u64, to: u64, bytes: u64) {
        self.to_messages.sub(to, 1);
        self.to_bytes.sub(to, bytes.min(u32::MAX as u64) as u32);
        self.release_sender(from, 1, bytes);
    }

    /// Messages and charged bytes held now, everywhere.
    pub fn held(&self) -> (u64, u64) {
        (self.messages.load(Ordering::Acquire), self.bytes.load(Ordering::Acquire))
    }

    /// Messages held for `user` (as recipient), and sent by `user` and not yet done.
    pub fn of_user(&self, user: u64) -> (u32, u32) {
        (self.to_messages.load(user), self.from_messages.load(user))
    }
}

/// Adds `n` to `counter` if it stays within `limit`.
fn add_within(counter: &AtomicU64, n: u64, limit: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_add(n).filter(|&next| next <= limit))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> OfflineLimits {
        OfflineLimits {
            per_user_messages: 2,
            per_user_bytes: 1000,
            per_sender_messages: 3,
            per_sender_bytes: 10_000,
            total_messages: 10,
            total_bytes: 100_000,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn each_bound_refuses_and_holds_nothing() {
        let q = Quotas::new(100, limits()).unwrap();
        assert!(q.reserve(1, &[2], 100));
        assert!(q.reserve(1, &[2], 100));
        assert!(!q.reserve(1, &[2], 100), "2 messages per recipient");
        assert!(q.reserve(1, &[3], 100));
        assert!(!q.reserve(1, &[4], 100), "3 messages per sender");
        assert_eq!(q.held(), (3, 300));
        assert_eq!(q.of_user(2), (2, 0));
        assert_eq!(q.of_user(1), (0, 3));
        q.release(1, 2, 100);
        assert_eq!(q.held(), (2, 200));
        assert!(q.reserve(1, &[4], 100), "a receipt made room");
    }

    #[test]
    fn a_group_is_reserved_whole_or_not_at_all() {
        let q = Quotas::new(100, OfflineLimits { per_sender_messages: 100, ..limits() }).unwrap();
        assert!(q.reserve(50, &[7], 10));
        assert!(q.reserve(50, &[7], 10));
        // Member 7 is at its bound: the group send takes nothing from anyone.
        assert!(!q.reserve(1, &[5, 6, 7, 8], 10));
        assert_eq!(q.held(), (2, 20));
        assert_eq!((q.of_user(5), q.of_user(6), q.of_user(1)), ((0, 0), (0, 0), (0, 0)));
        assert!(q.reserve(1, &[5, 6, 8], 10));
        assert_eq!(q.held(), (5, 50));
    }

    #[test]
    fn one_sender_never_takes_more_than_half_the_total() {
        let q =
            Quotas::new(100, OfflineLimits { per_sender_messages: 1000, per_user_messages: 1000, ..limits() }).unwrap();
        let taken = (0..20).filter(|i| q.reserve(1, &[10 + i], 1)).count();
        assert_eq!(taken, 5, "half of a total of 10");
        assert!(q.reserve(2, &[99], 1), "another sender still gets in");
    }

    #[test]
    fn the_charge_covers_what_keeping_a_message_costs() {
        assert_eq!(charge(28), 32 + KEEP_OVERHEAD);
        assert!(charge(4096) >= 4096);
    }
}
