//! Input held for paused sessions (backpressure): the received buffers a session could not
//! handle yet because its replies filled its out area, kept in order until sends make room.
//! Only paused sessions have an entry, so this costs nothing per idle connection.

use std::collections::{HashMap, VecDeque};

use crate::engine::RingSet;

/// A received buffer, or the part of it not handled yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub ring: u16,
    pub bid: u16,
    /// Bytes of it already handled.
    pub offset: u32,
    pub len: u32,
}

#[derive(Default)]
pub struct HeldInput {
    by_slot: HashMap<u32, VecDeque<Held>>,
    /// Buffers held per ring: at most half a ring's buffers may be held, so paused sessions
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

    /// Buffers held, all sessions together.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn has(&self, slot: u32) -> bool {
        self.by_slot.contains_key(&slot)
    }

    /// Keeps `input` for `slot` if its ring can spare the buffer (a ring of `ring_buffers`).
    pub fn hold(&mut self, slot: u32, input: Held, ring_buffers: u16) -> bool {
        let ring = input.ring as usize;
        if self.per_ring[ring] + 1 > ring_buffers as u32 / 2 {
            return false;
        }
        self.per_ring[ring] += 1;
        self.total += 1;
        self.by_slot.entry(slot).or_default().push_back(input);
        true
    }

    /// The oldest input held for `slot`.
    pub fn front(&self, slot: u32) -> Option<Held> {
        self.by_slot.get(&slot).and_then(|q| q.front().copied())
    }

    /// Records that `n` more bytes of the oldest input were handled.
    pub fn advance(&mut self, slot: u32, n: usize) {
        if let Some(h) = self.by_slot.get_mut(&slot).and_then(|q| q.front_mut()) {
            h.offset += n as u32;
        }
    }

    /// Gives the oldest input's buffer back to its ring; forgets the slot once nothing is held.
    pub fn release_front(&mut self, slot: u32, rings: &mut RingSet) {
        let Some(queue) = self.by_slot.get_mut(&slot) else { return };
        if let Some(h) = queue.pop_front() {
            self.give_back(h, rings);
        }
        if self.by_slot.get(&slot).is_some_and(VecDeque::is_empty) {
            self.by_slot.remove(&slot);
        }
    }

    /// Gives every buffer held for `slot` back.
    pub fn release_all(&mut self, slot: u32, rings: &mut RingSet) {
        for h in self.by_slot.remove(&slot).unwrap_or_default() {
            self.give_back(h, rings);
        }
    }

    fn give_back(&mut self, h: Held, rings: &mut RingSet) {
        rings.rings[h.ring as usize].bufs.recycle(h.bid);
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
    }
}
