//! Messages between server workers: one MPSC queue per destination worker, and a wake-up by
//! `IORING_OP_MSG_RING` from the sender's ring to the destination's ring 0 (its eventfd then
//! wakes the destination thread, and the completion tells it to read its queue).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam::queue::SegQueue;

use super::directory::Place;

/// What one worker hands another.
pub enum Routed {
    /// An encoded frame (DELIVER or RECEIPT notice) for `user`, whose session the sender saw
    /// at `place` on the destination worker.
    ToSession { user: u64, place: Place, frame: Box<[u8]> },
    /// One group message for the members the sender saw on the destination worker: a
    /// delivery tree, one queue item per destination worker rather than one per member.
    Group { members: Vec<(u64, Place)>, frame: Arc<[u8]> },
    /// A newer session of the same user logged in elsewhere: close this one (ERROR 9).
    Replaced { user: u64, place: Place },
}

#[derive(Default)]
pub struct Mailbox {
    queue: SegQueue<Routed>,
    /// A wake-up is on its way (or the worker is about to read its queue): senders do not
    /// send another.
    woken: AtomicBool,
}

impl Mailbox {
    /// Queues `item`; `true` if the caller must wake the destination.
    pub fn post(&self, item: Routed) -> bool {
        self.queue.push(item);
        !self.woken.swap(true, Ordering::AcqRel)
    }

    /// The destination takes its mail: clears the wake flag first, so a post racing with the
    /// drain either lands in this drain or sends a new wake-up.
    pub fn take(&self, out: &mut Vec<Routed>) {
        self.woken.store(false, Ordering::Release);
        while let Some(item) = self.queue.pop() {
            out.push(item);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wake_per_drain() {
        let m = Mailbox::default();
        let place = Place { worker: 0, generation: 0, slot: 0 };
        let item = || Routed::Replaced { user: 1, place };
        assert!(m.post(item()));
        assert!(!m.post(item()), "a wake-up is already on its way");
        let mut out = Vec::new();
        m.take(&mut out);
        assert_eq!(out.len(), 2);
        assert!(m.post(item()), "after a drain the next post wakes again");
    }
}
