//! The chat workload's ledger: exact accounting of every SEND across the load's workers. The
//! sender and the recipient are connections of the same process, so the recipient's worker
//! finds the sender's entry by the sender's user id and message id, and counts the delivery
//! there: a second delivery of the same message is a duplicate, a message whose deliveries never
//! all arrived is lost.
//!
//! Each connection has [`WINDOW`] entries (msg_id % WINDOW). An entry is reused only once its
//! message is fully delivered and receipted; a SEND that finds its entry still open is not sent
//! (counted as `window_full`), so no accounting is ever overwritten.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::GroupLayout;

pub const WINDOW: u64 = 8;

// Entry layout: id 24 | expected 12 | delivered 14 | receipted 14. 0 = never used.
const ID_SHIFT: u32 = 40;
const EXP_SHIFT: u32 = 28;
const DEL_SHIFT: u32 = 14;
const MASK14: u64 = (1 << 14) - 1;
const MASK12: u64 = (1 << 12) - 1;
const ID_MASK: u64 = (1 << 24) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    id: u64,
    expected: u64,
    delivered: u64,
    receipted: u64,
}

impl Entry {
    fn unpack(v: u64) -> Entry {
        Entry {
            id: v >> ID_SHIFT,
            expected: (v >> EXP_SHIFT) & MASK12,
            delivered: (v >> DEL_SHIFT) & MASK14,
            receipted: v & MASK14,
        }
    }
    fn pack(self) -> u64 {
        (self.id & ID_MASK) << ID_SHIFT
            | (self.expected & MASK12) << EXP_SHIFT
            | (self.delivered & MASK14) << DEL_SHIFT
            | (self.receipted & MASK14)
    }
    fn settled(self) -> bool {
        self.delivered >= self.expected && self.receipted >= self.delivered
    }
}

/// What a DELIVER turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    First,
    Duplicate,
    /// From a user outside this load, or for a message this load never recorded.
    Unknown,
}

pub struct Ledger {
    pub first_user: u64,
    pub connections: u64,
    pub layout: GroupLayout,
    entries: Box<[AtomicU64]>,
    sent_ns: Box<[AtomicU64]>,
}

impl Ledger {
    pub fn new(first_user: u64, connections: u64, layout: GroupLayout) -> Ledger {
        let n = (connections * WINDOW) as usize;
        Ledger {
            first_user,
            connections,
            layout,
            entries: (0..n).map(|_| AtomicU64::new(0)).collect(),
            sent_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(&self, user: u64, msg_id: u64) -> Option<usize> {
        let conn = user.checked_sub(self.first_user).filter(|&c| c < self.connections)?;
        Some((conn * WINDOW + msg_id % WINDOW) as usize)
    }

    /// How many of this load's connections a SEND from `from` to `to` reaches.
    pub fn recipients(&self, from: u64, to: u64) -> u64 {
        let ours = |u: u64| u >= self.first_user && u < self.first_user + self.connections && u != from;
        match self.layout.group_of(to) {
            Some(g) => self.layout.members(g).filter(|&m| ours(m)).count() as u64,
            None => ours(to) as u64,
        }
    }

    /// Opens the entry of a SEND about to go out; `false`: its entry is still open.
    pub fn begin(&self, from: u64, msg_id: u64, expected: u64, t_ns: u64) -> bool {
        let Some(i) = self.index(from, msg_id) else { return false };
        let old = Entry::unpack(self.entries[i].load(Ordering::Acquire));
        if old.id != 0 && !old.settled() {
            return false;
        }
        self.sent_ns[i].store(t_ns, Ordering::Relaxed);
        let e = Entry { id: msg_id & ID_MASK, expected, delivered: 0, receipted: 0 };
        self.entries[i].store(e.pack(), Ordering::Release);
        true
    }

    /// When the SEND of `msg_id` was scheduled, if its entry is still its own.
    pub fn sent_ns(&self, from: u64, msg_id: u64) -> Option<u64> {
        let i = self.index(from, msg_id)?;
        (Entry::unpack(self.entries[i].load(Ordering::Acquire)).id == msg_id & ID_MASK)
            .then(|| self.sent_ns[i].load(Ordering::Relaxed))
    }

    /// A NACK: nothing will be delivered. Returns the deliveries that were expected.
    pub fn refused(&self, from: u64, msg_id: u64) -> u64 {
        self.update(from, msg_id, |e| {
            let was = e.expected;
            e.expected = e.delivered;
            was - e.delivered
        })
        .unwrap_or(0)
    }

    pub fn delivered(&self, from: u64, msg_id: u64) -> Delivery {
        match self.update(from, msg_id, |e| {
            if e.delivered >= e.expected {
                return false;
            }
            e.delivered += 1;
            true
        }) {
            Some(true) => Delivery::First,
            Some(false) => Delivery::Duplicate,
            None if self.index(from, msg_id).is_some() => Delivery::Duplicate,
            None => Delivery::Unknown,
        }
    }

    /// A RECEIPT notice; `Some(scheduled send time)` if it was the first for a delivery.
    pub fn receipted(&self, from: u64, msg_id: u64) -> Option<u64> {
        let i = self.index(from, msg_id)?;
        let ok = self.update(from, msg_id, |e| {
            if e.receipted >= e.delivered {
                return false;
            }
            e.receipted += 1;
            true
        })?;
        ok.then(|| self.sent_ns[i].load(Ordering::Relaxed))
    }

    fn update<T>(&self, user: u64, msg_id: u64, mut f: impl FnMut(&mut Entry) -> T) -> Option<T> {
        let i = self.index(user, msg_id)?;
        let cell = &self.entries[i];
        let mut current = cell.load(Ordering::Acquire);
        loop {
            let mut e = Entry::unpack(current);
            if e.id != msg_id & ID_MASK || current == 0 {
                return None;
            }
            let out = f(&mut e);
            match cell.compare_exchange_weak(current, e.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(out),
                Err(now) => current = now,
            }
        }
    }

    /// At the end: deliveries that never arrived, and deliveries never receipted.
    pub fn settle(&self) -> (u64, u64) {
        let (mut lost, mut unreceipted) = (0, 0);
        for cell in self.entries.iter() {
            let e = Entry::unpack(cell.load(Ordering::Acquire));
            lost += e.expected.saturating_sub(e.delivered);
            unreceipted += e.delivered.saturating_sub(e.receipted);
        }
        (lost, unreceipted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        Ledger::new(1, 10, GroupLayout { users: 10, groups: 2, size: 4 })
    }

    #[test]
    fn a_message_is_delivered_once_then_duplicates_are_counted() {
        let l = ledger();
        assert!(l.begin(1, 5, l.recipients(1, 2), 100));
        assert_eq!(l.sent_ns(1, 5), Some(100));
        assert_eq!(l.settle(), (1, 0));
        assert_eq!(l.delivered(1, 5), Delivery::First);
        assert_eq!(l.delivered(1, 5), Delivery::Duplicate);
        assert_eq!(l.receipted(1, 5), Some(100));
        assert_eq!(l.receipted(1, 5), None);
        assert_eq!(l.settle(), (0, 0));
        assert_eq!(l.delivered(99, 5), Delivery::Unknown);
        // Entry reused by msg 13 (13 % 8 == 5): a late copy of 5 is a duplicate.
        assert!(l.begin(1, 13, 1, 200));
        assert_eq!(l.delivered(1, 5), Delivery::Duplicate);
    }

    #[test]
    fn an_open_entry_is_not_reused_and_a_nack_settles_it() {
        let l = ledger();
        assert!(l.begin(2, 1, 1, 0));
        assert!(!l.begin(2, 9, 1, 0), "entry 1 still waits for its delivery");
        assert_eq!(l.refused(2, 1), 1);
        assert!(l.begin(2, 9, 1, 0));
    }

    #[test]
    fn group_recipients_are_the_members_of_this_load_but_the_sender() {
        let l = ledger();
        // Group 1 is users 5..=8.
        assert_eq!(l.recipients(5, crate::proto::GROUP_BIT | 1), 3);
        assert_eq!(l.recipients(1, crate::proto::GROUP_BIT | 1), 4);
        assert_eq!(l.recipients(1, 1), 0);
        assert_eq!(l.recipients(1, 11), 0);
    }
}
