//! The chat workload's ledger: exact accounting of every SEND across the load's workers. The
//! sender and the recipient are connections of the same run, so the recipient's worker finds
//! the sender's entry by the sender's user id and message id, and counts the delivery there: a
//! second delivery of the same message is a duplicate, a message whose deliveries never all
//! arrived is lost.
//!
//! Each connection has [`WINDOW`] entries (msg_id % WINDOW). An entry is reused only once its
//! message is fully delivered and receipted; a SEND that finds its entry still open is not sent
//! (counted as `window_full`), so no accounting is ever overwritten.
//!
//! A run split into shards (`--shard I/N`) has its senders and recipients in different
//! processes. A message's recipient is then a function of its sender and id alone
//! ([`Ledger::recipient_of`]), so every shard knows how many of a message's deliveries are its
//! own: the sender's shard counts the deliveries all shards owe (`expected`), the RECEIPT
//! notices that come back for them, and the deliveries to its own users; a recipient's shard
//! counts deliveries from other shards' senders in a table of its own (`seen`), where a second
//! copy is a duplicate. The shards' counts add up to what one process counts, and
//! `c2m results merge` finds the lost (expected - delivered) and the unreceipted (delivered -
//! receipted) of the whole run.

use std::sync::atomic::{AtomicU64, Ordering};

use super::shard::{Shard, mix64};
use crate::proto::{GROUP_BIT, GroupLayout};

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
    /// Every delivery the message called for receipted (a delivery is receipted only after it
    /// arrived, and arrives at most `expected` times, so this is "all delivered and receipted").
    fn settled(self) -> bool {
        self.receipted >= self.expected
    }
}

/// An entry of the `seen` table: a message of another shard's sender, as delivered here.
/// Layout: id 40 | expected here 12 | delivered here 12 (ids of one connection stay below 2^40).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    id: u64,
    expected: u64,
    delivered: u64,
}

impl Seen {
    fn unpack(v: u64) -> Seen {
        Seen { id: v >> 24, expected: (v >> 12) & MASK12, delivered: v & MASK12 }
    }
    fn pack(self) -> u64 {
        (self.id & ((1 << 40) - 1)) << 24 | (self.expected & MASK12) << 12 | (self.delivered & MASK12)
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
    /// The run's users are `first_user .. first_user + run_connections`, every shard's.
    pub first_user: u64,
    pub run_connections: u64,
    /// Which of them this process runs.
    pub shard: Shard,
    pub layout: GroupLayout,
    /// Share of SENDs addressed to a group.
    group_fraction: f64,
    /// This process's senders: (its connection) * WINDOW + msg_id % WINDOW.
    entries: Box<[AtomicU64]>,
    sent_ns: Box<[AtomicU64]>,
    /// Deliveries here of other shards' senders' messages: (run connection) * WINDOW + msg_id %
    /// WINDOW. Empty for a run in one process.
    seen: Box<[AtomicU64]>,
}

impl Ledger {
    pub fn new(
        first_user: u64,
        run_connections: u64,
        shard: Shard,
        layout: GroupLayout,
        group_fraction: f64,
    ) -> Ledger {
        let atomics = |n: u64| (0..n * WINDOW).map(|_| AtomicU64::new(0)).collect();
        let own = shard.connections_of(run_connections);
        Ledger {
            first_user,
            run_connections,
            shard,
            layout,
            group_fraction,
            entries: atomics(own),
            sent_ns: atomics(own),
            seen: atomics(if shard.is_whole() { 0 } else { run_connections }),
        }
    }

    /// The run-wide connection number of `user`, if the run has it.
    fn run_index(&self, user: u64) -> Option<u64> {
        user.checked_sub(self.first_user).filter(|&c| c < self.run_connections)
    }

    /// Whether `user` is one of this process's connections.
    fn is_own(&self, user: u64) -> bool {
        self.run_index(user).is_some_and(|c| Shard::locate(self.shard.count, c).0 == self.shard.index)
    }

    /// The entry of a message of one of this process's senders.
    fn index(&self, user: u64, msg_id: u64) -> Option<usize> {
        let (shard, local) = Shard::locate(self.shard.count, self.run_index(user)?);
        (shard == self.shard.index).then_some((local * WINDOW + msg_id % WINDOW) as usize)
    }

    /// Who message `msg_id` of `from` goes to: a peer of the run (never `from`) or, a share
    /// `group_fraction` of the time, a group. A function of the two ids alone, so the shard of
    /// a recipient knows it as well as the sender's does.
    pub fn recipient_of(&self, from: u64, msg_id: u64) -> u64 {
        let h = mix64(from.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ mix64(msg_id));
        let scale = (1u64 << 20) as f64;
        if self.layout.groups > 0 && ((h >> 44) as f64) < self.group_fraction * scale {
            return GROUP_BIT | (mix64(h ^ 1) % self.layout.groups);
        }
        let peer = self.first_user + mix64(h ^ 2) % self.run_connections.saturating_sub(1).max(1);
        if peer >= from { peer + 1 } else { peer }
    }

    /// How many of the run's connections a SEND from `from` to `to` reaches.
    pub fn recipients(&self, from: u64, to: u64) -> u64 {
        self.count_recipients(from, to, |u| self.run_index(u).is_some())
    }

    /// How many of this process's connections a SEND from `from` to `to` reaches.
    fn recipients_here(&self, from: u64, to: u64) -> u64 {
        self.count_recipients(from, to, |u| self.is_own(u))
    }

    fn count_recipients(&self, from: u64, to: u64, counted: impl Fn(u64) -> bool) -> u64 {
        let ours = |u: u64| u != from && counted(u);
        match self.layout.group_of(to) {
            Some(g) => self.layout.members(g).filter(|&m| ours(m)).count() as u64,
            None => ours(to) as u64,
        }
    }

    /// Deliveries of `from`'s message `msg_id` that are this process's to receive; `None` for a
    /// run in one process (all of them: the entry's `expected`).
    fn expected_here(&self, from: u64, msg_id: u64) -> Option<u64> {
        (!self.shard.is_whole()).then(|| self.recipients_here(from, self.recipient_of(from, msg_id)))
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
        if !self.is_own(from) {
            return match self.run_index(from) {
                Some(c) if !self.shard.is_whole() => self.delivered_from_another_shard(c, from, msg_id),
                _ => Delivery::Unknown,
            };
        }
        let here = self.expected_here(from, msg_id);
        match self.update(from, msg_id, |e| {
            if e.delivered >= here.map_or(e.expected, |h| h.min(e.expected)) {
                return false;
            }
            e.delivered += 1;
            true
        }) {
            Some(true) => Delivery::First,
            Some(false) | None => Delivery::Duplicate,
        }
    }

    /// A DELIVER here of a message whose sender another shard runs: the first of the
    /// deliveries this shard owes, or a copy (a later message in the same window entry means
    /// this one was settled already).
    fn delivered_from_another_shard(&self, c: u64, from: u64, msg_id: u64) -> Delivery {
        let expected = self.recipients_here(from, self.recipient_of(from, msg_id));
        if expected == 0 {
            return Delivery::Unknown;
        }
        let cell = &self.seen[(c * WINDOW + msg_id % WINDOW) as usize];
        let id = msg_id & ((1 << 40) - 1);
        let mut current = cell.load(Ordering::Acquire);
        loop {
            let e = Seen::unpack(current);
            let (next, outcome) = if current == 0 || e.id < id {
                (Seen { id, expected, delivered: 1 }, Delivery::First)
            } else if e.id == id && e.delivered < e.expected {
                (Seen { delivered: e.delivered + 1, ..e }, Delivery::First)
            } else {
                return Delivery::Duplicate;
            };
            match cell.compare_exchange_weak(current, next.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return outcome,
                Err(now) => current = now,
            }
        }
    }

    /// A RECEIPT notice; `Some(scheduled send time)` if it was the first for a delivery. One
    /// process saw every delivery, so a notice beyond them is refused; a shard sees only its
    /// own, and the other shards' recipients may receipt as many as they owe.
    pub fn receipted(&self, from: u64, msg_id: u64) -> Option<u64> {
        let i = self.index(from, msg_id)?;
        let here = self.expected_here(from, msg_id);
        let ok = self.update(from, msg_id, |e| {
            let elsewhere = here.map_or(0, |h| e.expected.saturating_sub(h));
            if e.receipted >= e.delivered + elsewhere {
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

    /// At the end: deliveries that never arrived, and deliveries never receipted. A shard
    /// cannot tell (other shards received part of its messages): it answers (0, 0), and
    /// `c2m results merge` counts both for the whole run.
    pub fn settle(&self) -> (u64, u64) {
        if !self.shard.is_whole() {
            return (0, 0);
        }
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
        Ledger::new(1, 10, Shard::WHOLE, GroupLayout { users: 10, groups: 2, size: 4 }, 0.0)
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

    /// The members of a SEND's recipient (a peer or a group), but the sender.
    fn members(l: &Ledger, from: u64, to: u64) -> Vec<u64> {
        match l.layout.group_of(to) {
            Some(g) => l.layout.members(g).filter(|&m| m != from).collect(),
            None => vec![to],
        }
    }

    /// Totals of (first deliveries, duplicates, receipts) when every message of a run is
    /// delivered to each recipient twice and receipted once, the run split in `n` shards.
    fn run_split(n: u32, run: u64) -> (u64, u64, u64, u64) {
        let layout = GroupLayout { users: run, groups: 3, size: 5 };
        let shards: Vec<Ledger> =
            (0..n).map(|index| Ledger::new(1, run, Shard { index, count: n }, layout, 0.3)).collect();
        let of = |user: u64| &shards[Shard::locate(n, user - 1).0 as usize];
        let (mut expected, mut first, mut dup, mut receipts) = (0, 0, 0, 0);
        for round in 0..3u64 {
            for from in 1..=run {
                let msg_id = round * WINDOW + 1;
                let sender = of(from);
                let to = sender.recipient_of(from, msg_id);
                let want = sender.recipients(from, to);
                expected += want;
                assert!(sender.begin(from, msg_id, want, 0), "entry {from}/{msg_id} still open");
                for r in members(sender, from, to) {
                    assert_eq!(of(r).recipient_of(from, msg_id), to, "every shard derives the same recipient");
                    for _ in 0..2 {
                        match of(r).delivered(from, msg_id) {
                            Delivery::First => first += 1,
                            Delivery::Duplicate => dup += 1,
                            Delivery::Unknown => panic!("{from}/{msg_id} to {r}: unknown"),
                        }
                    }
                    receipts += sender.receipted(from, msg_id).is_some() as u64;
                }
                assert_eq!(sender.receipted(from, msg_id), None, "no more receipts than deliveries");
            }
        }
        (expected, first, dup, receipts)
    }

    #[test]
    fn shards_count_what_one_process_counts() {
        let whole = run_split(1, 23);
        assert_eq!(whole.0, whole.1, "every delivery first once");
        assert_eq!(whole.1, whole.2, "and once a duplicate");
        assert_eq!(whole.1, whole.3, "and receipted");
        for n in [2, 3, 5, 7] {
            assert_eq!(run_split(n, 23), whole, "{n} shards");
        }
    }

    #[test]
    fn a_shard_takes_receipts_owed_elsewhere_and_leaves_loss_to_the_merge() {
        let layout = GroupLayout { users: 6, groups: 0, size: 0 };
        let l = Ledger::new(1, 6, Shard { index: 0, count: 2 }, layout, 0.0);
        // Users 1, 3, 5 are shard 0's; find a message of user 1 to a peer in shard 1.
        let msg_id = (1..100).find(|&m| !l.is_own(l.recipient_of(1, m))).expect("some peer is in shard 1");
        assert!(l.begin(1, msg_id, l.recipients(1, l.recipient_of(1, msg_id)), 7));
        assert_eq!(l.receipted(1, msg_id), Some(7), "delivered in shard 1, receipted back here");
        assert_eq!(l.receipted(1, msg_id), None, "one delivery owed, one receipt");
        assert_eq!(l.settle(), (0, 0), "a shard leaves the loss to the merge");
        // User 2 is shard 1's: its message to a user here is delivered once, then copied; one
        // addressed to shard 1 is none of this shard's.
        let here = (1..100).find(|&m| l.is_own(l.recipient_of(2, m))).expect("some peer is here");
        assert_eq!(l.delivered(2, here), Delivery::First);
        assert_eq!(l.delivered(2, here), Delivery::Duplicate);
        let there = (1..100).find(|&m| !l.is_own(l.recipient_of(2, m))).expect("some peer is in shard 1");
        assert_eq!(l.delivered(2, there), Delivery::Unknown);
        assert_eq!(l.delivered(99, 1), Delivery::Unknown, "a user outside the run");
    }
}
