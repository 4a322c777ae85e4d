//! Hashed timing wheel for per-session deadlines (hello timeout, heartbeat timeout).
//!
//! Each item sits in at most one bucket, linked through arrays indexed by the item, so
//! scheduling allocates nothing. The wheel is coarse on purpose: a session's *real* deadline is
//! kept by its owner (e.g. last frame + 3 heartbeats); when a bucket fires, the owner checks the
//! real deadline and either acts or schedules the item again. So a frame costs a field update,
//! not a wheel operation.

const NONE: u32 = 0;

pub struct TimerWheel {
    /// Per bucket: first item + 1 (0 = empty).
    heads: Vec<u32>,
    /// Per item: [next + 1, prev + 1, bucket + 1]; zeroed memory means "not scheduled", so the
    /// array is allocated lazily by the OS and costs nothing for unused items.
    links: Vec<[u32; 3]>,
    /// The last tick that has been processed.
    now: u64,
    scheduled: usize,
}

impl TimerWheel {
    /// A wheel for items `0..capacity` with `buckets` buckets (its span in ticks).
    pub fn new(capacity: usize, buckets: usize) -> TimerWheel {
        assert!(buckets >= 2, "a wheel needs at least two buckets");
        TimerWheel { heads: vec![NONE; buckets], links: vec![[0; 3]; capacity], now: 0, scheduled: 0 }
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    /// The furthest tick ahead an item can be put; later deadlines are clamped to it and the
    /// owner re-schedules when it fires.
    pub fn span(&self) -> u64 {
        self.heads.len() as u64 - 1
    }

    pub fn len(&self) -> usize {
        self.scheduled
    }

    pub fn is_empty(&self) -> bool {
        self.scheduled == 0
    }

    pub fn is_scheduled(&self, item: u32) -> bool {
        self.links[item as usize][2] != NONE
    }

    /// Puts `item` in the bucket of tick `at` (clamped to `now+1 ..= now+span`), moving it if it
    /// was scheduled already.
    pub fn schedule(&mut self, item: u32, at: u64) {
        self.cancel(item);
        let at = at.clamp(self.now + 1, self.now + self.span());
        let bucket = (at % self.heads.len() as u64) as usize;
        let old_head = self.heads[bucket];
        self.links[item as usize] = [old_head, NONE, bucket as u32 + 1];
        if old_head != NONE {
            self.links[old_head as usize - 1][1] = item + 1;
        }
        self.heads[bucket] = item + 1;
        self.scheduled += 1;
    }

    /// Removes `item` from the wheel if it is there.
    pub fn cancel(&mut self, item: u32) {
        let [next, prev, bucket] = self.links[item as usize];
        if bucket == NONE {
            return;
        }
        if prev != NONE {
            self.links[prev as usize - 1][0] = next;
        } else {
            self.heads[bucket as usize - 1] = next;
        }
        if next != NONE {
            self.links[next as usize - 1][1] = prev;
        }
        self.links[item as usize] = [0; 3];
        self.scheduled -= 1;
    }

    /// Advances to tick `to`, appending every item whose bucket passed to `fired` (they are
    /// unscheduled). Items clamped to the span may fire before their real deadline.
    pub fn advance(&mut self, to: u64, fired: &mut Vec<u32>) {
        if to <= self.now {
            return;
        }
        let steps = (to - self.now).min(self.heads.len() as u64);
        for step in 1..=steps {
            let bucket = ((self.now + step) % self.heads.len() as u64) as usize;
            let mut cur = std::mem::replace(&mut self.heads[bucket], NONE);
            while cur != NONE {
                let item = cur - 1;
                cur = self.links[item as usize][0];
                self.links[item as usize] = [0; 3];
                self.scheduled -= 1;
                fired.push(item);
            }
        }
        self.now = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fires_at_the_scheduled_tick_and_not_before() {
        let mut w = TimerWheel::new(10, 8);
        w.schedule(3, 5);
        let mut fired = vec![];
        w.advance(4, &mut fired);
        assert!(fired.is_empty());
        w.advance(5, &mut fired);
        assert_eq!(fired, vec![3]);
        assert!(!w.is_scheduled(3));
        assert!(w.is_empty());
    }

    #[test]
    fn rescheduling_moves_and_cancel_removes() {
        let mut w = TimerWheel::new(10, 8);
        w.schedule(1, 2);
        w.schedule(2, 2);
        w.schedule(3, 2);
        w.schedule(2, 6);
        w.cancel(1);
        let mut fired = vec![];
        w.advance(3, &mut fired);
        assert_eq!(fired, vec![3]);
        fired.clear();
        w.advance(6, &mut fired);
        assert_eq!(fired, vec![2]);
    }

    #[test]
    fn far_deadlines_are_clamped_to_the_span() {
        let mut w = TimerWheel::new(4, 4);
        w.schedule(0, 1_000);
        let mut fired = vec![];
        w.advance(w.span(), &mut fired);
        assert_eq!(fired, vec![0]);
    }

    #[test]
    fn a_long_jump_fires_everything_once() {
        let mut w = TimerWheel::new(100, 16);
        for i in 0..100 {
            w.schedule(i, 1 + (i as u64 % 15));
        }
        let mut fired = vec![];
        w.advance(10_000, &mut fired);
        fired.sort();
        assert_eq!(fired, (0..100).collect::<Vec<_>>());
        assert!(w.is_empty());
    }

    proptest! {
        /// Against a simple model: every scheduled item fires exactly once, at its clamped tick.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u32..32, 0u64..40, any::<bool>()), 1..200)) {
            let mut w = TimerWheel::new(32, 16);
            let mut model: std::collections::HashMap<u32, u64> = Default::default();
            let mut fired = vec![];
            for (item, delta, cancel) in ops {
                if cancel {
                    w.cancel(item);
                    model.remove(&item);
                } else if delta == 0 {
                    let to = w.now() + 1;
                    fired.clear();
                    w.advance(to, &mut fired);
                    let mut due: Vec<u32> = model.iter().filter(|(_, at)| **at <= to).map(|(i, _)| *i).collect();
                    for i in &due { model.remove(i); }
                    due.sort();
                    fired.sort();
                    prop_assert_eq!(&fired, &due);
                } else {
                    let at = (w.now() + delta).clamp(w.now() + 1, w.now() + w.span());
                    w.schedule(item, w.now() + delta);
                    model.insert(item, at);
                }
                prop_assert_eq!(w.len(), model.len());
            }
        }
    }
}
