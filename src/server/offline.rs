//! Store and forward: DELIVER frames kept for a user until a session of theirs takes them: while
//! the user is offline (until the next HELLO, within a time to live), while their session has no
//! room (its overflow, drained in order as sends make room), and after a session ended with
//! messages it never receipted (put back at the front, in order).
//!
//! The store decides nothing about room: every message in it was reserved in [`Quotas`] when its
//! SEND was ACKed, and gives its reservation back when it expires here (counted) or when the
//! recipient receipts it. Bytes are counted as charged (frame plus keeping cost), so the store's
//! byte count is true to its memory.
//!
//! Sharded by user id over [`SHARDS`] mutexes rather than owned by one worker: a store is a
//! decision the sender's worker must make at once, and a shard lock is taken only on the offline
//! path (and at login), never for a delivery to a session that is online and has room, so there
//! is no global lock on the hot path. The lock also closes the race with a login: a login
//! publishes the user in the directory *before* it drains the shard, and a store re-checks the
//! directory *under* the shard lock, so a message is either drained by that login or routed to
//! the new session, never stranded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::directory::{Directory, Place};
use super::quota::{Quotas, charge};

pub const SHARDS: usize = 64;

/// The chat message bounds (see `quota.rs`).
#[derive(Clone, Copy, Debug)]
pub struct OfflineLimits {
    /// Per recipient: messages held for one user.
    pub per_user_messages: u32,
    pub per_user_bytes: u64,
    /// Per sender: messages one user sent that are not yet receipted (at most half the totals).
    pub per_sender_messages: u64,
    pub per_sender_bytes: u64,
    /// All messages held.
    pub total_messages: u64,
    pub total_bytes: u64,
    pub ttl: Duration,
}

impl Default for OfflineLimits {
    fn default() -> Self {
        use super::defaults as d;
        OfflineLimits {
            per_user_messages: d::OFFLINE_USER_MESSAGES,
            per_user_bytes: d::bytes(d::OFFLINE_USER_BYTES),
            per_sender_messages: d::count(d::OFFLINE_SENDER_MESSAGES),
            per_sender_bytes: d::bytes(d::OFFLINE_SENDER_BYTES),
            total_messages: d::count(d::OFFLINE_TOTAL_MESSAGES),
            total_bytes: d::bytes(d::OFFLINE_TOTAL_BYTES),
            ttl: d::duration(d::OFFLINE_TTL),
        }
    }
}

struct Stored {
    at: Instant,
    frame: Box<[u8]>,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Stored>,
}

/// Where a message offered to the store went.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Stored,
    /// The user logged in meanwhile: deliver there instead.
    Online(Place),
}

/// The sender and id of a DELIVER frame (header, then from_user and msg_id).
pub fn deliver_ids(frame: &[u8]) -> (u64, u64) {
    let word = |at: usize| frame.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
    (word(4), word(12))
}

pub struct OfflineStore {
    shards: Box<[Mutex<HashMap<u64, Queue>>]>,
    quotas: Quotas,
    ttl: Duration,
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Dropped because their TTL passed (their loss is counted, never silent).
    pub expired: AtomicU64,
}

impl OfflineStore {
    pub fn new(users: u64, limits: OfflineLimits) -> std::io::Result<OfflineStore> {
        Ok(OfflineStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            quotas: Quotas::new(users, limits)?,
            ttl: limits.ttl,
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        })
    }

    /// The message budget every ACKed message is held in.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    fn shard(&self, user: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Queue>> {
        // A panic while a shard was held leaves only whole entries behind: keep going.
        self.shards[user as usize % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages and charged bytes in the store now.
    pub fn held(&self) -> (u64, u64) {
        (self.messages.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    /// Keeps `frame` for `user` unless the user is online now.
    pub fn offer(&self, dir: &Directory, user: u64, frame: &[u8], now: Instant) -> Offer {
        let mut shard = self.shard(user);
        if let Some(place) = dir.get(user) {
            return Offer::Online(place);
        }
        self.keep(shard.entry(user).or_default(), frame.into(), now, false);
        Offer::Stored
    }

    /// Keeps `frame` for `user`, online or not: the overflow of a session with no room now, which
    /// drains it in order (its worker is the only one that delivers to it).
    pub fn push(&self, user: u64, frame: Box<[u8]>, now: Instant) {
        let mut shard = self.shard(user);
        self.keep(shard.entry(user).or_default(), frame, now, false);
    }

    /// Puts back, at the front and in order, what a session of `user` was delivered and never
    /// receipted, unless the user is online now (then `frames` is left for the caller to route).
    pub fn put_back(&self, dir: &Directory, user: u64, frames: &mut VecDeque<Box<[u8]>>, now: Instant) -> bool {
        let mut shard = self.shard(user);
        if dir.get(user).is_some() {
            return false;
        }
        let q = shard.entry(user).or_default();
        while let Some(frame) = frames.pop_back() {
            self.keep(q, frame, now, true);
        }
        true
    }

    /// Puts frames back at the front of `user`'s queue, in order, online or not (a drain that
    /// took more than it could queue).
    pub fn return_front(&self, user: u64, frames: &mut VecDeque<Box<[u8]>>, now: Instant) {
        let mut shard = self.shard(user);
        let q = shard.entry(user).or_default();
        while let Some(frame) = frames.pop_back() {
            self.keep(q, frame, now, true);
        }
    }

    fn keep(&self, q: &mut Queue, frame: Box<[u8]>, now: Instant, front: bool) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(charge(frame.len()), Ordering::Relaxed);
        let stored = Stored { at: now, frame };
        if front { q.frames.push_front(stored) } else { q.frames.push_back(stored) }
    }

    /// Takes up to `room` bytes of `user`'s oldest frames (whole frames); the rest stays for
    /// later. Call after publishing the login in the directory.
    pub fn take(&self, user: u64, room: usize, now: Instant, out: &mut Vec<Box<[u8]>>) {
        let mut shard = self.shard(user);
        let Some(q) = shard.get_mut(&user) else { return };
        self.expire(user, q, now);
        let mut used = 0usize;
        while let Some(front) = q.frames.front() {
            if used + front.frame.len() > room {
                break;
            }
            let s = q.frames.pop_front().expect("front exists");
            used += s.frame.len();
            self.forget(&s.frame);
            out.push(s.frame);
        }
        if q.frames.is_empty() {
            shard.remove(&user);
        }
    }

    pub fn has(&self, user: u64) -> bool {
        self.shard(user).contains_key(&user)
    }

    /// Drops frames past their TTL in one shard (called in turn from the workers' ticks).
    pub fn sweep(&self, shard: usize, now: Instant) {
        let mut s = self.shards[shard % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|&user, q| {
            self.expire(user, q, now);
            !q.frames.is_empty()
        });
    }

    fn expire(&self, user: u64, q: &mut Queue, now: Instant) {
        while q.frames.front().is_some_and(|s| now.duration_since(s.at) >= self.ttl) {
            let s = q.frames.pop_front().expect("front exists");
            self.forget(&s.frame);
            let (from, _) = deliver_ids(&s.frame);
            self.quotas.release(from, user, charge(s.frame.len()));
            self.expired.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn forget(&self, frame: &[u8]) {
        self.messages.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(charge(frame.len()), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Frame, encode_vec};

    fn limits() -> OfflineLimits {
        OfflineLimits { ttl: Duration::from_secs(60), ..OfflineLimits::default() }
    }

    fn deliver(from: u64, msg_id: u64) -> Box<[u8]> {
        encode_vec(&Frame::Deliver { from_user: from, msg_id, t_ns: 0, body: b"x" }).into_boxed_slice()
    }

    #[test]
    fn frames_come_out_in_order_as_room_allows() {
        let (dir, store, now) = (Directory::new(10), OfflineStore::new(10, limits()).unwrap(), Instant::now());
        for id in 1..=3 {
            assert_eq!(store.offer(&dir, 1, &deliver(2, id), now), Offer::Stored);
        }
        let one = deliver(2, 1).len();
        assert_eq!(store.held(), (3, 3 * charge(one)));
        let mut out = Vec::new();
        store.take(1, one + 1, now, &mut out);
        assert_eq!(out.len(), 1, "room for one");
        store.take(1, 4096, now, &mut out);
        let ids: Vec<u64> = out.iter().map(|f| deliver_ids(f).1).collect();
        assert_eq!((ids, store.has(1)), (vec![1, 2, 3], false));
        assert_eq!(store.held(), (0, 0));
    }

    #[test]
    fn what_a_session_never_receipted_goes_back_in_front() {
        let (dir, store, now) = (Directory::new(10), OfflineStore::new(10, limits()).unwrap(), Instant::now());
        store.offer(&dir, 1, &deliver(2, 3), now);
        let mut back: VecDeque<Box<[u8]>> = [deliver(2, 1), deliver(2, 2)].into_iter().collect();
        assert!(store.put_back(&dir, 1, &mut back, now));
        let mut out = Vec::new();
        store.take(1, 4096, now, &mut out);
        let ids: Vec<u64> = out.iter().map(|f| deliver_ids(f).1).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        // Online now: left for the caller to route to the session.
        dir.publish(1, Place { worker: 0, generation: 1, slot: 0 });
        let mut back: VecDeque<Box<[u8]>> = [deliver(2, 4)].into_iter().collect();
        assert!(!store.put_back(&dir, 1, &mut back, now));
        assert_eq!(back.len(), 1);
    }

    #[test]
    fn an_online_user_is_not_stored_for_and_old_frames_expire_and_give_back_their_quota() {
        let (dir, store, now) = (Directory::new(10), OfflineStore::new(10, limits()).unwrap(), Instant::now());
        let place = Place { worker: 1, generation: 2, slot: 3 };
        dir.publish(5, place);
        let frame = deliver(2, 1);
        assert_eq!(store.offer(&dir, 5, &frame, now), Offer::Online(place));
        assert!(store.quotas().reserve(2, &[6], charge(frame.len())));
        assert_eq!(store.offer(&dir, 6, &frame, now), Offer::Stored);
        store.sweep(6, now + Duration::from_secs(61));
        assert_eq!((store.held(), store.expired.load(Ordering::Relaxed)), ((0, 0), 1));
        assert_eq!(store.quotas().held(), (0, 0), "an expired message gives its reservation back");
    }
}
