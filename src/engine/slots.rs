//! The slot lifecycle, owned by the engine: "a slot is reused only after every operation on it
//! has completed".
//!
//! A service opens a slot when a connection takes it, and retires it when the connection is
//! done. Every submission for the slot is counted and stamped with the slot's generation
//! ([`Io::submit`](super::Io::submit)); every final completion (one without IORING_CQE_F_MORE)
//! takes one off. A completion whose generation is not the slot's is stale: counted and dropped
//! here, never shown to the service. Once a retired slot has nothing in flight it is *quiet*:
//! the engine tells the service (`Service::on_quiet`), which frees what the slot owns, and the
//! generation moves on. Memory a slot's operations point at must stay valid until then.
//!
//! Eight bytes a slot, in a `MAP_NORESERVE` mapping: only slots that were used become resident.

use bytemuck::{Pod, Zeroable};
use memmap2::{MmapMut, MmapOptions};

use super::EngineError;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
struct SlotMeta {
    generation: u32,
    /// Operations in flight (submitted, final completion not yet seen).
    inflight: u16,
    state: u8,
    _pad: u8,
}

const FREE: u8 = 0;
const LIVE: u8 = 1;
const RETIRING: u8 = 2;

/// What a completion for a slot turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// For the slot as it is now: hand it to the service.
    Current,
    /// Made for an earlier user of the slot, or for a free slot: dropped.
    Stale,
}

/// Things that must not happen, counted rather than trusted (a wrap would free a slot early).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotAnomalies {
    /// Completions dropped as stale.
    pub stale: u64,
    /// Final completions for a slot with nothing counted in flight.
    pub unexpected: u64,
}

pub struct SlotTable {
    meta: Option<MmapMut>,
    capacity: u32,
    quiet: Vec<u32>,
    anomalies: SlotAnomalies,
}

impl SlotTable {
    /// A table with no slots; a service sets its size with [`SlotTable::reserve`].
    pub fn empty() -> SlotTable {
        SlotTable { meta: None, capacity: 0, quiet: Vec::new(), anomalies: SlotAnomalies::default() }
    }

    /// Room for slots `0..capacity` (address space only until used).
    pub fn reserve(&mut self, capacity: usize) -> Result<(), EngineError> {
        if capacity > u32::MAX as usize {
            return Err(EngineError::Config(format!("{capacity} slots do not fit a 32-bit slot index")));
        }
        let bytes = (capacity * std::mem::size_of::<SlotMeta>()).max(1);
        let map = MmapOptions::new()
            .len(bytes)
            .no_reserve_swap()
            .map_anon()
            .map_err(|e| EngineError::io("mapping the slot table", e))?;
        self.meta = Some(map);
        self.capacity = capacity as u32;
        Ok(())
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    #[inline]
    fn get(&self, slot: u32) -> Option<&SlotMeta> {
        let meta = self.meta.as_ref()?;
        bytemuck::cast_slice::<u8, SlotMeta>(meta).get(slot as usize)
    }

    #[inline]
    fn get_mut(&mut self, slot: u32) -> &mut SlotMeta {
        let meta = self.meta.as_mut().expect("slot table reserved before use");
        &mut bytemuck::cast_slice_mut::<u8, SlotMeta>(meta)[slot as usize]
    }

    /// A connection takes `slot`: its operations count from here.
    pub fn open(&mut self, slot: u32) {
        let m = self.get_mut(slot);
        debug_assert_eq!(m.state, FREE, "slot {slot} opened twice");
        m.state = LIVE;
        m.inflight = 0;
    }

    /// The slot's connection is done: once nothing is in flight the slot is quiet. Retiring a
    /// slot twice, or one that is not open, does nothing.
    pub fn retire(&mut self, slot: u32) {
        let m = self.get_mut(slot);
        if m.state != LIVE {
            return;
        }
        m.state = RETIRING;
        if m.inflight == 0 {
            self.quiet.push(slot);
        }
    }

    /// Counts one more operation on `slot` and returns the generation to stamp it with.
    #[inline]
    pub fn stamp(&mut self, slot: u32) -> u32 {
        let m = self.get_mut(slot);
        debug_assert_ne!(m.state, FREE, "an operation submitted for free slot {slot}");
        m.inflight = m.inflight.checked_add(1).expect("65,535 operations in flight on one slot");
        m.generation
    }

    /// A completion for `slot` made at `generation`; `last` when it is the operation's final one.
    #[inline]
    pub fn arrive(&mut self, slot: u32, generation: u32, last: bool) -> Arrival {
        let current =
            self.get(slot).is_some_and(|m| m.state != FREE && m.generation & super::token::GEN_MASK == generation);
        if !current {
            self.anomalies.stale += 1;
            return Arrival::Stale;
        }
        if last {
            let m = self.get_mut(slot);
            match m.inflight.checked_sub(1) {
                Some(n) => m.inflight = n,
                None => self.anomalies.unexpected += 1,
            }
            let m = *self.get_mut(slot);
            if m.state == RETIRING && m.inflight == 0 {
                // A candidate: the service may still submit (a close after a shutdown) while
                // handling this completion; `take_quiet` checks again afterwards.
                self.quiet.push(slot);
            }
        }
        Arrival::Current
    }

    /// The next slot that has gone quiet: it is free from here, with a new generation. A
    /// candidate that got a new operation since it was listed is skipped; it is listed again
    /// when that one comes back.
    pub fn take_quiet(&mut self) -> Option<u32> {
        while let Some(slot) = self.quiet.pop() {
            let m = self.get_mut(slot);
            if m.state == RETIRING && m.inflight == 0 {
                m.state = FREE;
                m.generation = m.generation.wrapping_add(1);
                return Some(slot);
            }
        }
        None
    }

    pub fn generation(&self, slot: u32) -> u32 {
        self.get(slot).map(|m| m.generation).unwrap_or(0)
    }

    pub fn in_flight(&self, slot: u32) -> u16 {
        self.get(slot).map(|m| m.inflight).unwrap_or(0)
    }

    /// Open and not retired.
    pub fn is_live(&self, slot: u32) -> bool {
        self.get(slot).is_some_and(|m| m.state == LIVE)
    }

    pub fn anomalies(&self) -> SlotAnomalies {
        self.anomalies
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(n: usize) -> SlotTable {
        let mut t = SlotTable::empty();
        t.reserve(n).unwrap();
        t
    }

    #[test]
    fn a_slot_is_quiet_only_when_its_last_operation_is_back() {
        let mut t = table(4);
        t.open(2);
        let g = t.stamp(2);
        t.stamp(2);
        t.retire(2);
        assert_eq!(t.take_quiet(), None, "two operations still in flight");
        assert_eq!(t.arrive(2, g, false), Arrival::Current, "a multishot's intermediate completion");
        assert_eq!(t.arrive(2, g, true), Arrival::Current);
        assert_eq!(t.take_quiet(), None);
        assert_eq!(t.arrive(2, g, true), Arrival::Current);
        assert_eq!(t.take_quiet(), Some(2));
        assert_eq!(t.take_quiet(), None);
        assert_ne!(t.generation(2), g, "the generation moved on");
    }

    #[test]
    fn completions_of_an_earlier_user_are_dropped() {
        let mut t = table(1);
        t.open(0);
        let old = t.stamp(0);
        t.retire(0);
        t.arrive(0, old, true);
        assert_eq!(t.take_quiet(), Some(0));
        t.open(0);
        assert_eq!(t.arrive(0, old, true), Arrival::Stale);
        assert_eq!(t.anomalies().stale, 1);
        assert!(t.is_live(0), "a stale completion does not touch the new user's count");
    }

    #[test]
    fn a_retired_slot_with_nothing_in_flight_is_quiet_at_once() {
        let mut t = table(3);
        t.open(1);
        t.retire(1);
        t.retire(1);
        assert_eq!(t.take_quiet(), Some(1));
        assert_eq!(t.take_quiet(), None, "retiring twice is one retirement");
    }

    #[test]
    fn an_operation_submitted_while_its_slot_retires_keeps_it_open() {
        let mut t = table(1);
        t.open(0);
        let g = t.stamp(0);
        t.retire(0);
        // The last operation comes back, and its handler submits the next step (a close after
        // a shutdown) before the engine looks for quiet slots.
        t.arrive(0, g, true);
        t.stamp(0);
        assert_eq!(t.take_quiet(), None, "the close is in flight");
        t.arrive(0, g, true);
        assert_eq!(t.take_quiet(), Some(0));
    }

    #[test]
    fn an_unexpected_completion_is_counted_not_wrapped() {
        let mut t = table(1);
        t.open(0);
        let g = t.generation(0);
        assert_eq!(t.arrive(0, g, true), Arrival::Current);
        assert_eq!(t.anomalies().unexpected, 1);
        assert_eq!(t.in_flight(0), 0);
    }

    #[test]
    fn out_of_range_and_free_slots_are_stale() {
        let mut t = table(2);
        assert_eq!(t.arrive(7, 0, true), Arrival::Stale);
        assert_eq!(t.arrive(1, 0, true), Arrival::Stale, "never opened");
    }

    proptest! {
        /// Any interleaving of stamps, completions and a retirement: the slot goes quiet exactly
        /// once, exactly when the last operation came back.
        #[test]
        fn quiet_once_at_the_last_completion(ops in 1usize..20, retire_after in 0usize..20, order in proptest::collection::vec(any::<bool>(), 0..40)) {
            let mut t = table(1);
            t.open(0);
            let g = (0..ops).map(|_| t.stamp(0)).last().unwrap();
            let mut pending = ops;
            let mut retired = false;
            let mut quiet = 0;
            let mut step = 0;
            let mut intermediate = order.into_iter();
            while pending > 0 {
                if step == retire_after.min(ops) && !retired {
                    t.retire(0);
                    retired = true;
                }
                let last = !intermediate.next().unwrap_or(false);
                t.arrive(0, g, last);
                if last {
                    pending -= 1;
                    step += 1;
                }
                while t.take_quiet().is_some() {
                    quiet += 1;
                    prop_assert_eq!(pending, 0, "quiet with operations in flight");
                }
            }
            if !retired {
                t.retire(0);
            }
            while t.take_quiet().is_some() {
                quiet += 1;
            }
            prop_assert_eq!(quiet, 1);
        }
    }
}
