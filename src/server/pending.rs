//! Messages delivered to a session and not yet receipted by it, per session, on the worker that
//! owns the session (no lock). A RECEIPT is relayed only for a message found here; when the
//! session ends, whatever is still here goes back to the store (or the user's newer session), so
//! a DELIVER that was queued, or sent but lost with the connection, is delivered again.
//! Only sessions with messages in flight have an entry: an idle session costs nothing here.

use std::collections::{HashMap, VecDeque};

/// One delivered message: who sent it, its id, and its DELIVER frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Unreceipted {
    pub from_user: u64,
    pub msg_id: u64,
    pub frame: Box<[u8]>,
}

#[derive(Default)]
pub struct Pending {
    by_slot: HashMap<u32, VecDeque<Unreceipted>>,
    total: usize,
}

impl Pending {
    /// Records a DELIVER queued to `slot`'s session.
    pub fn add(&mut self, slot: u32, from_user: u64, msg_id: u64, frame: Box<[u8]>) {
        self.by_slot.entry(slot).or_default().push_back(Unreceipted { from_user, msg_id, frame });
        self.total += 1;
    }

    /// The session receipted `(from_user, msg_id)`: takes it out, if it was delivered there.
    /// Receipts come nearly in order, so the search from the front is short.
    pub fn receipt(&mut self, slot: u32, from_user: u64, msg_id: u64) -> Option<Unreceipted> {
        let queue = self.by_slot.get_mut(&slot)?;
        let at = queue.iter().position(|m| m.from_user == from_user && m.msg_id == msg_id)?;
        let found = queue.remove(at);
        if queue.is_empty() {
            self.by_slot.remove(&slot);
        }
        self.total -= 1;
        found
    }

    /// Everything still unreceipted for `slot`, oldest first (the session ended).
    pub fn take_all(&mut self, slot: u32) -> VecDeque<Unreceipted> {
        let queue = self.by_slot.remove(&slot).unwrap_or_default();
        self.total -= queue.len();
        queue
    }

    /// Messages held for all sessions of this worker.
    pub fn len(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(b: u8) -> Box<[u8]> {
        vec![b].into_boxed_slice()
    }

    #[test]
    fn a_receipt_takes_only_what_was_delivered_to_that_session() {
        let mut p = Pending::default();
        p.add(1, 10, 100, frame(1));
        p.add(1, 10, 101, frame(2));
        p.add(2, 10, 102, frame(3));
        assert_eq!(p.receipt(1, 10, 102), None, "delivered to session 2, not 1");
        assert_eq!(p.receipt(1, 11, 100), None, "another sender's message 100");
        assert_eq!(p.receipt(1, 10, 101).map(|m| m.frame), Some(frame(2)));
        assert_eq!(p.receipt(1, 10, 101), None, "a second receipt finds nothing");
        assert_eq!(p.len(), 2);
        let rest: Vec<u64> = p.take_all(1).into_iter().map(|m| m.msg_id).collect();
        assert_eq!(rest, vec![100]);
        assert_eq!(p.len(), 1);
        assert!(p.take_all(1).is_empty());
    }
}
