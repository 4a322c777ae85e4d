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
//! A client that comes back (`--reconnect`, `--churn`) retires its entries still open when it
//! logs in again: they move to a side table where their deliveries and RECEIPTs still count,
//! so its window opens for new messages and nothing is counted twice or lost from the books.
//! Each entry says whether its SEND was ACKed: a message lost after its ACK broke the delivery
//! guarantee (or died with a killed server); one lost before it was never promised.
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

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::shard::{Shard, mix64};
use crate::proto::{GROUP_BIT, GroupLayout};

pub const WINDOW: u64 = 8;

// Entry layout: acked 1 | id 23 | expected 12 | delivered 14 | receipted 14. 0 = never used.
const ACKED: u64 = 1 << 63;
const ID_SHIFT: u32 = 40;
const EXP_SHIFT: u32 = 28;
const DEL_SHIFT: u32 = 14;
const MASK14: u64 = (1 << 14) - 1;
const MASK12: u64 = (1 << 12) - 1;
const ID_MASK: u64 = (1 << 23) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    id: u64,
    acked: bool,
    expected: u64,
    delivered: u64,
    receipted: u64,
}

impl Entry {
    fn unpack(v: u64) -> Entry {
        Entry {
            id: (v >> ID_SHIFT) & ID_MASK,
            acked: v & ACKED != 0,
            expected: (v >> EXP_SHIFT) & MASK12,
            delivered: (v >> DEL_SHIFT) & MASK14,
            receipted: v & MASK14,
        }
    }
    fn pack(self) -> u64 {
        (if self.acked { ACKED } else { 0 })
            | (self.id & ID_MASK) << ID_SHIFT
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
    /// Entries retired by a sender that logged in again, by (sender, masked id): the packed
    /// entry and its send time. An entry leaves once settled. Touched only when not empty.
    retired: Mutex<HashMap<(u64, u64), (u64, u64)>>,
    retired_len: AtomicUsize,
}

/// The ledger's books at the end of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Deliveries that never arrived, of messages the server had ACKed.
    pub lost_after_ack: u64,
    /// Deliveries that never arrived, of messages never ACKed (the SEND or its ACK was lost
    /// with its connection).
    pub lost_unacked: u64,
    /// Deliveries never receipted.
    pub unreceipted: u64,
}

impl Settled {
    pub fn lost(&self) -> u64 {
        self.lost_after_ack + self.lost_unacked
    }

    fn count(&mut self, e: Entry) {
        let missing = e.expected.saturating_sub(e.delivered);
        match e.acked {
            true => self.lost_after_ack += missing,
            false => self.lost_unacked += missing,
        }
        self.unreceipted += e.delivered.saturating_sub(e.receipted);
    }
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
            retired: Mutex::new(HashMap::new()),
            retired_len: AtomicUsize::new(0),
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
        let e = Entry { id: msg_id & ID_MASK, acked: false, expected, delivered: 0, receipted: 0 };
        self.entries[i].store(e.pack(), Ordering::Release);
        true
    }

    /// When the SEND of `msg_id` was scheduled, if its entry is still its own.
    #[cfg(test)]
    pub fn sent_ns(&self, from: u64, msg_id: u64) -> Option<u64> {
        let i = self.index(from, msg_id)?;
        (Entry::unpack(self.entries[i].load(Ordering::Acquire)).id == msg_id & ID_MASK)
            .then(|| self.sent_ns[i].load(Ordering::Relaxed))
    }

    /// The server ACKed the SEND: from now on its loss breaks the guarantee. Returns when the
    /// SEND was scheduled (for the ACK's latency), in the same look-up.
    pub fn acked(&self, from: u64, msg_id: u64) -> Option<u64> {
        self.update_timed(from, msg_id, |e| e.acked = true).map(|((), sent)| sent)
    }

    /// `from` logged in again: its entries still open move to the retired table (their
    /// deliveries and RECEIPTs still count there), so its window is open for new messages.
    pub fn retire_open(&self, from: u64) {
        let Some(first) = self.index(from, 0) else { return };
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: an update that finds its entry gone looks here only after this.
        for i in first..first + WINDOW as usize {
            let old = self.entries[i].swap(0, Ordering::AcqRel);
            let e = Entry::unpack(old);
            if old != 0 && !e.settled() {
                retired.insert((from, e.id), (old, self.sent_ns[i].load(Ordering::Relaxed)));
            }
        }
        self.retired_len.store(retired.len(), Ordering::Release);
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
        let here = self.expected_here(from, msg_id);
        let sent = self.update_timed(from, msg_id, |e| {
            let elsewhere = here.map_or(0, |h| e.expected.saturating_sub(h));
            if e.receipted >= e.delivered + elsewhere {
                return false;
            }
            e.receipted += 1;
            true
        })?;
        sent.0.then_some(sent.1)
    }

    fn update<T>(&self, user: u64, msg_id: u64, f: impl FnMut(&mut Entry) -> T) -> Option<T> {
        self.update_timed(user, msg_id, f).map(|(out, _)| out)
    }

    /// Applies `f` to the entry of `msg_id` of `user` (live or retired); its result and the
    /// message's send time.
    fn update_timed<T>(&self, user: u64, msg_id: u64, mut f: impl FnMut(&mut Entry) -> T) -> Option<(T, u64)> {
        let i = self.index(user, msg_id)?;
        let cell = &self.entries[i];
        let mut current = cell.load(Ordering::Acquire);
        loop {
            let mut e = Entry::unpack(current);
            if e.id != msg_id & ID_MASK || current == 0 {
                return self.update_retired(user, msg_id, f);
            }
            let out = f(&mut e);
            match cell.compare_exchange_weak(current, e.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some((out, self.sent_ns[i].load(Ordering::Relaxed))),
                Err(now) => current = now,
            }
        }
    }

    fn update_retired<T>(&self, user: u64, msg_id: u64, mut f: impl FnMut(&mut Entry) -> T) -> Option<(T, u64)> {
        if self.retired_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user, msg_id & ID_MASK);
        let (packed, sent) = retired.get_mut(&key)?;
        let mut e = Entry::unpack(*packed);
        let out = f(&mut e);
        *packed = e.pack();
        let sent = *sent;
        if e.settled() {
            retired.remove(&key);
            self.retired_len.store(retired.len(), Ordering::Release);
        }
        Some((out, sent))
    }

    /// At the end: deliveries that never arrived (after an ACK or not), and deliveries never
    /// receipted. A shard cannot tell (other shards received part of its messages): it answers
    /// zeros, and
    /// `c2m results merge` counts both for the whole run.
    pub fn settle(&self) -> Settled {
        let mut books = Settled::default();
        if !self.shard.is_whole() {
            return books;
        }
        for cell in self.entries.iter() {
            books.count(Entry::unpack(cell.load(Ordering::Acquire)));
        }
        for (packed, _) in self.retired.lock().unwrap_or_else(|e| e.into_inner()).values() {
            books.count(Entry::unpack(*packed));
        }
        books
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
        assert_eq!(l.settle(), Settled { lost_unacked: 1, ..Default::default() });
        assert_eq!(l.delivered(1, 5), Delivery::First);
        assert_eq!(l.delivered(1, 5), Delivery::Duplicate);
        assert_eq!(l.receipted(1, 5), Some(100));
        assert_eq!(l.receipted(1, 5), None);
        assert_eq!(l.settle(), Settled::default());
        assert_eq!(l.delivered(99, 5), Delivery::Unknown);
        // Entry reused by msg 13 (13 % 8 == 5): a late copy of 5 is a duplicate.
        assert!(l.begin(1, 13, 1, 200));
        assert_eq!(l.delivered(1, 5), Delivery::Duplicate);
    }

    #[test]
    fn a_sender_that_logs_in_again_retires_its_open_entries_and_they_still_count() {
        let l = ledger();
        // Message 1 ACKed and delivered but not receipted; 2 ACKed, never delivered; 3 never
        // ACKed (its connection went); 4 settled.
        for (id, t) in [(1, 10), (2, 20), (3, 30), (4, 40)] {
            assert!(l.begin(1, id, 1, t));
        }
        for id in [1, 2, 4] {
            l.acked(1, id);
        }
        assert_eq!(l.delivered(1, 1), Delivery::First);
        assert_eq!(l.delivered(1, 4), Delivery::First);
        assert_eq!(l.receipted(1, 4), Some(40));
        l.retire_open(1);
        assert_eq!(l.settle(), Settled { lost_after_ack: 1, lost_unacked: 1, unreceipted: 1 });
        // The window is open again: 9 reuses 1's entry, and 1's RECEIPT still counts.
        assert!(l.begin(1, 9, 1, 90));
        assert_eq!(l.receipted(1, 1), Some(10));
        assert_eq!(l.receipted(1, 1), None, "one delivery, one receipt");
        // 2 arrives late (stored while its recipient was away): first, then a copy.
        assert_eq!(l.delivered(1, 2), Delivery::First);
        assert_eq!(l.delivered(1, 2), Delivery::Duplicate);
        assert_eq!(l.receipted(1, 2), Some(20));
        assert_eq!(l.delivered(1, 4), Delivery::Duplicate, "settled before it was retired");
        // Left: 3 (never ACKed, never delivered) and 9 (open, not ACKed).
        assert_eq!(l.settle(), Settled { lost_after_ack: 0, lost_unacked: 2, unreceipted: 0 });
        l.acked(1, 9);
        assert_eq!(l.settle().lost_after_ack, 1);
        assert_eq!(l.retired.lock().unwrap().len(), 1, "settled entries leave the table");
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
        assert_eq!(l.settle(), Settled::default(), "a shard leaves the loss to the merge");
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
