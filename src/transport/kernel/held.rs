//! Input held for paused connections (backpressure): the received buffers an owner could not
//! consume yet, kept in order until it asks to resume. Only paused connections have an entry, so
//! this costs nothing per idle connection.

use std::collections::{HashMap, VecDeque};

use crate::transport::ConnId;

/// A received buffer, or the part of it not consumed yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub ring: u16,
    pub bid: u16,
    /// Bytes of it already consumed.
    pub offset: u32,
    pub len: u32,
}

#[derive(Default)]
pub struct HeldInput {
    by_conn: HashMap<ConnId, VecDeque<Held>>,
    /// Buffers held per ring: at most half a ring's buffers may be held, so paused connections
    /// cannot starve the others.
    per_ring: Vec<u32>,
    total: usize,
}

impl HeldInput {
    pub fn new(rings: usize) -> Self {
        HeldInput { per_ring: vec![0; rings], ..Default::default() }
    }

    /// Makes room for a ring added to the worker's set.
    pub fn add_ring(&mut self) {
        self.per_ring.push(0);
    }

    /// Buffers held, all connections together.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn has(&self, conn: ConnId) -> bool {
        self.by_conn.contains_key(&conn)
    }

    /// Keeps `input` for `conn` if its ring can spare the buffer (a ring of `ring_buffers`).
    pub fn hold(&mut self, conn: ConnId, input: Held, ring_buffers: u16) -> bool {
        let ring = input.ring as usize;
        if self.per_ring[ring] + 1 > ring_buffers as u32 / 2 {
            return false;
        }
        self.per_ring[ring] += 1;
        self.total += 1;
        self.by_conn.entry(conn).or_default().push_back(input);
        true
    }

    /// The oldest input held for `conn`.
    pub fn front(&self, conn: ConnId) -> Option<Held> {
        self.by_conn.get(&conn).and_then(|q| q.front().copied())
    }

    /// Records that `n` more bytes of the oldest input were consumed.
    pub fn advance(&mut self, conn: ConnId, n: usize) {
        if let Some(h) = self.by_conn.get_mut(&conn).and_then(|q| q.front_mut()) {
            h.offset += n as u32;
        }
    }

    /// Takes the oldest input out (its buffer goes back to its ring: the caller's job); forgets
    /// the connection once nothing is held.
    pub fn pop_front(&mut self, conn: ConnId) -> Option<Held> {
        let queue = self.by_conn.get_mut(&conn)?;
        let h = queue.pop_front();
        if queue.is_empty() {
            self.by_conn.remove(&conn);
        }
        if let Some(h) = h {
            self.forget(h);
        }
        h
    }

    /// Takes everything held for `conn` out, oldest first (the buffers go back: the caller's job).
    pub fn take_all(&mut self, conn: ConnId, out: &mut Vec<Held>) {
        for h in self.by_conn.remove(&conn).unwrap_or_default() {
            self.forget(h);
            out.push(h);
        }
    }

    fn forget(&mut self, h: Held) {
        self.per_ring[h.ring as usize] -= 1;
        self.total -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(ring: u16, bid: u16) -> Held {
        Held { ring, bid, offset: 0, len: 100 }
    }

    #[test]
    fn a_ring_lends_at_most_half_its_buffers() {
        let mut h = HeldInput::new(2);
        for bid in 0..4 {
            assert!(h.hold(7, input(0, bid), 8));
        }
        assert!(!h.hold(8, input(0, 4), 8), "ring 0 has lent 4 of its 8");
        assert!(h.hold(8, input(1, 0), 8), "ring 1 has its own budget");
        assert_eq!(h.len(), 5);
        assert!(h.has(7) && h.has(8) && !h.has(9));
    }

    #[test]
    fn input_is_kept_in_order_and_advanced_in_place() {
        let mut h = HeldInput::new(1);
        assert!(h.hold(3, input(0, 5), 16));
        assert!(h.hold(3, input(0, 6), 16));
        assert_eq!(h.front(3).map(|f| f.bid), Some(5));
        h.advance(3, 40);
        h.advance(3, 2);
        assert_eq!(h.front(3).map(|f| f.offset), Some(42));
        assert_eq!(h.front(4), None);
        assert_eq!(h.pop_front(3).map(|f| f.bid), Some(5));
        let mut rest = Vec::new();
        h.take_all(3, &mut rest);
        assert_eq!(rest.iter().map(|f| f.bid).collect::<Vec<_>>(), vec![6]);
        assert!(h.len() == 0 && !h.has(3));
    }

    #[test]
    fn a_ring_added_later_has_its_own_budget() {
        let mut h = HeldInput::new(1);
        h.add_ring();
        assert!(h.hold(1, input(1, 0), 2));
        assert!(!h.hold(1, input(1, 1), 2));
    }
}
