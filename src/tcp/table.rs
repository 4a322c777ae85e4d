//! A fixed-capacity hash table from a connection's 4-tuple to its slot in a dense array.
//!
//! Capacity is chosen at start and never grows. Index overhead per slot: one `u32` bucket head
//! per slot rounded up to a power of two (4-8 bytes); the chain link and the free-list link share
//! a `u32` inside each entry. Slots are handed out from a high-water mark first, then from the
//! free list, so the array's untouched tail stays untouched (zeroed pages the OS has not mapped).
//! Lookups hash with a per-endpoint secret, so an attacker who picks tuples cannot aim them at
//! one chain.

use bytemuck::Pod;

/// A connection's 4-tuple, from this endpoint's side. Addresses and ports in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Key {
    pub local_ip: u32,
    pub remote_ip: u32,
    pub local_port: u16,
    pub remote_port: u16,
}

/// An entry that knows its key and carries the table's link.
pub trait Linked: Pod {
    fn key(&self) -> Key;
    /// Next in its chain (or in the free list) as index + 1; 0 = none.
    fn link(&self) -> u32;
    fn set_link(&mut self, link: u32);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("table full")]
pub struct Full;

pub struct Table<T: Linked> {
    /// The entries, kept as `u64`s: `vec![0u64; n]` is a zeroed allocation the OS maps lazily
    /// (a `Vec<T>` built element by element would touch every page at start).
    raw: Vec<u64>,
    capacity: u32,
    /// Per bucket: first slot + 1 (0 = empty).
    buckets: Vec<u32>,
    /// Per slot: whether it is in use (a bit each; free slots hold the free-list link).
    used: Vec<u64>,
    free_head: u32,
    high_water: u32,
    len: u32,
    seed: u64,
    _entries: std::marker::PhantomData<T>,
}

impl<T: Linked> Table<T> {
    pub fn new(capacity: u32, seed: u64) -> Table<T> {
        assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() <= 8, "entries are whole u64s");
        let buckets = (capacity.max(1) as usize).next_power_of_two();
        Table {
            raw: vec![0u64; capacity as usize * size_of::<T>() / 8],
            capacity,
            buckets: vec![0; buckets],
            used: vec![0; (capacity as usize).div_ceil(64)],
            free_head: 0,
            high_water: 0,
            len: 0,
            seed: seed | 1,
            _entries: std::marker::PhantomData,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn slots(&self) -> &[T] {
        bytemuck::cast_slice(&self.raw)
    }

    fn slots_mut(&mut self) -> &mut [T] {
        bytemuck::cast_slice_mut(&mut self.raw)
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.capacity()
    }

    /// Bytes of index kept per slot: buckets and the in-use bitmap, over the capacity.
    pub fn index_bytes(&self) -> usize {
        self.buckets.len() * 4 + self.used.len() * 8
    }

    fn bucket(&self, key: &Key) -> usize {
        // Two rounds of a multiply-xorshift mix over the tuple, keyed by the seed.
        let a = (key.local_ip as u64) << 32 | key.remote_ip as u64;
        let b = (key.local_port as u64) << 16 | key.remote_port as u64;
        let mut h = (a ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 29) ^ b).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 32;
        (h as usize) & (self.buckets.len() - 1)
    }

    pub fn is_used(&self, id: u32) -> bool {
        self.used.get(id as usize / 64).is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    fn mark(&mut self, id: u32, on: bool) {
        let w = &mut self.used[id as usize / 64];
        if on {
            *w |= 1 << (id % 64);
        } else {
            *w &= !(1 << (id % 64));
        }
    }

    pub fn lookup(&self, key: &Key) -> Option<u32> {
        let mut cur = self.buckets[self.bucket(key)];
        while cur != 0 {
            let slot = &self.slots()[cur as usize - 1];
            if slot.key() == *key {
                return Some(cur - 1);
            }
            cur = slot.link();
        }
        None
    }

    /// Puts `entry` in a free slot and indexes it by its key (which must not be there already).
    pub fn insert(&mut self, mut entry: T) -> Result<u32, Full> {
        let id = if self.free_head != 0 {
            let id = self.free_head - 1;
            self.free_head = self.slots()[id as usize].link();
            id
        } else if self.high_water < self.capacity() {
            self.high_water += 1;
            self.high_water - 1
        } else {
            return Err(Full);
        };
        debug_assert!(self.lookup(&entry.key()).is_none(), "key inserted twice");
        let b = self.bucket(&entry.key());
        entry.set_link(self.buckets[b]);
        self.buckets[b] = id + 1;
        self.slots_mut()[id as usize] = entry;
        self.mark(id, true);
        self.len += 1;
        Ok(id)
    }

    /// Unindexes slot `id`, zeroes it and puts it on the free list. A free slot is left alone.
    pub fn remove(&mut self, id: u32) {
        if !self.is_used(id) {
            return;
        }
        let key = self.slots()[id as usize].key();
        let b = self.bucket(&key);
        let next = self.slots()[id as usize].link();
        if self.buckets[b] == id + 1 {
            self.buckets[b] = next;
        } else {
            let mut cur = self.buckets[b];
            while cur != 0 {
                let link = self.slots()[cur as usize - 1].link();
                if link == id + 1 {
                    self.slots_mut()[cur as usize - 1].set_link(next);
                    break;
                }
                cur = link;
            }
        }
        let free_head = self.free_head;
        let slot = &mut self.slots_mut()[id as usize];
        *slot = T::zeroed();
        slot.set_link(free_head);
        self.free_head = id + 1;
        self.mark(id, false);
        self.len -= 1;
    }

    pub fn get(&self, id: u32) -> &T {
        &self.slots()[id as usize]
    }

    /// The entry in slot `id`. Its key must not be changed while it is indexed.
    pub fn get_mut(&mut self, id: u32) -> &mut T {
        &mut self.slots_mut()[id as usize]
    }

    /// Ids of the slots in use (for tests and teardown; not on any per-packet path).
    pub fn used_ids(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.high_water).filter(|&i| self.is_used(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;
    use proptest::prelude::*;

    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
    struct E {
        ip: u32,
        port: u16,
        _pad: u16,
        link: u32,
        value: u32,
    }

    impl Linked for E {
        fn key(&self) -> Key {
            Key { local_ip: 1, remote_ip: self.ip, local_port: 80, remote_port: self.port }
        }
        fn link(&self) -> u32 {
            self.link
        }
        fn set_link(&mut self, link: u32) {
            self.link = link;
        }
    }

    fn e(ip: u32, port: u16, value: u32) -> E {
        E { ip, port, _pad: 0, link: 0, value }
    }

    #[test]
    fn insert_lookup_remove_and_full() {
        let mut t: Table<E> = Table::new(3, 42);
        let a = t.insert(e(1, 1, 10)).unwrap();
        let b = t.insert(e(2, 1, 20)).unwrap();
        let c = t.insert(e(1, 2, 30)).unwrap();
        assert_eq!(t.insert(e(9, 9, 0)), Err(Full));
        assert_eq!(t.lookup(&e(2, 1, 0).key()), Some(b));
        t.remove(b);
        t.remove(b);
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(&e(2, 1, 0).key()), None);
        assert_eq!(t.lookup(&e(1, 1, 0).key()), Some(a));
        assert_eq!(t.lookup(&e(1, 2, 0).key()), Some(c));
        assert_eq!(t.insert(e(5, 5, 50)).unwrap(), b, "a freed slot is reused");
        assert_eq!(t.used_ids().count(), 3);
    }

    proptest! {
        /// Against a HashMap: every operation agrees, whatever collides.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u32..40, 0u16..4, any::<bool>()), 1..300), seed in any::<u64>()) {
            let mut t: Table<E> = Table::new(24, seed);
            let mut model: std::collections::HashMap<Key, u32> = Default::default();
            for (n, (ip, port, insert)) in ops.into_iter().enumerate() {
                let entry = e(ip, port, n as u32);
                let key = entry.key();
                if insert {
                    if model.contains_key(&key) {
                        continue;
                    }
                    match t.insert(entry) {
                        Ok(id) => { model.insert(key, id); }
                        Err(Full) => prop_assert_eq!(model.len(), 24),
                    }
                } else if let Some(id) = model.remove(&key) {
                    t.remove(id);
                }
                prop_assert_eq!(t.len() as usize, model.len());
                for (k, id) in &model {
                    prop_assert_eq!(t.lookup(k), Some(*id));
                    prop_assert_eq!(t.get(*id).key(), *k);
                }
                prop_assert_eq!(t.lookup(&key), model.get(&key).copied());
            }
        }
    }
}
