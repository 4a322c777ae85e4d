//! Store and forward: DELIVER frames for users who are not logged in, kept until their next
//! HELLO, within per-user and total bounds and a time to live.
//!
//! Sharded by user id over [`SHARDS`] mutexes rather than owned by one worker: a store is a
//! decision the sender's worker must make at once (ACK or NACK 8), and a shard lock is taken
//! only on the offline path (and at login), never for a delivery to a session that is online,
//! so there is no global lock on the hot path. The lock also closes the race with a login:
//! a login publishes the user in the directory *before* it drains the shard, and a store
//! re-checks the directory *under* the shard lock, so a message is either drained by that
//! login or routed to the new session, never stranded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::directory::{Directory, Place};

pub const SHARDS: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct OfflineLimits {
    pub per_user_messages: u32,
    pub per_user_bytes: u64,
    pub total_messages: u64,
    pub total_bytes: u64,
    pub ttl: Duration,
}

impl Default for OfflineLimits {
    fn default() -> Self {
        OfflineLimits {
            per_user_messages: 1000,
            per_user_bytes: 1 << 20,
            total_messages: 10_000_000,
            total_bytes: 1 << 30,
            ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

struct Stored {
    at: Instant,
    frame: Box<[u8]>,
}

#[derive(Default)]
struct Queue {
    bytes: u64,
    frames: VecDeque<Stored>,
}

/// What became of a message offered to the store.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Stored,
    /// The user logged in meanwhile: deliver there instead.
    Online(Place),
    /// Over a bound: refused (NACK 8 for the sender).
    Full,
}

pub struct OfflineStore {
    shards: Box<[Mutex<HashMap<u64, Queue>>]>,
    limits: OfflineLimits,
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Dropped because their TTL passed.
    pub expired: AtomicU64,
}

impl OfflineStore {
    pub fn new(limits: OfflineLimits) -> OfflineStore {
        OfflineStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            limits,
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }

    fn shard(&self, user: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Queue>> {
        // A panic while a shard was held leaves only whole entries behind: keep going.
        self.shards[user as usize % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages and bytes held now.
    pub fn held(&self) -> (u64, u64) {
        (self.messages.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    /// Keeps `frame` for `user` unless the user is online now or a bound is reached.
    pub fn offer(&self, dir: &Directory, user: u64, frame: &[u8], now: Instant) -> Offer {
        let mut shard = self.shard(user);
        if let Some(place) = dir.get(user) {
            return Offer::Online(place);
        }
        let len = frame.len() as u64;
        let q = shard.entry(user).or_default();
        self.expire(q, now);
        let l = &self.limits;
        if q.frames.len() as u32 >= l.per_user_messages
            || q.bytes + len > l.per_user_bytes
            || self.messages.load(Ordering::Relaxed) >= l.total_messages
            || self.bytes.load(Ordering::Relaxed) + len > l.total_bytes
        {
            if q.frames.is_empty() {
                shard.remove(&user);
            }
            return Offer::Full;
        }
        q.bytes += len;
        q.frames.push_back(Stored { at: now, frame: frame.into() });
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        Offer::Stored
    }

    /// Takes up to `room` bytes of `user`'s oldest frames (whole frames);
    /// the rest stays for later. Call after publishing the login in the directory.
    pub fn take(&self, user: u64, room: usize, now: Instant, out: &mut Vec<Box<[u8]>>) {
        let mut shard = self.shard(user);
        let Some(q) = shard.get_mut(&user) else { return };
        self.expire(q, now);
        let mut used = 0usize;
        while let Some(front) = q.frames.front() {
            if used + front.frame.len() > room {
                break;
            }
            let s = q.frames.pop_front().expect("front exists");
            used += s.frame.len();
            self.forget(q, s.frame.len() as u64);
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
        s.retain(|_, q| {
            self.expire(q, now);
            !q.frames.is_empty()
        });
    }

    fn expire(&self, q: &mut Queue, now: Instant) {
        while q.frames.front().is_some_and(|s| now.duration_since(s.at) >= self.limits.ttl) {
            let s = q.frames.pop_front().expect("front exists");
            self.forget(q, s.frame.len() as u64);
            self.expired.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn forget(&self, q: &mut Queue, len: u64) {
        q.bytes -= len;
        self.messages.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OfflineLimits {
        OfflineLimits {
            per_user_messages: 2,
            per_user_bytes: 100,
            total_messages: 3,
            total_bytes: 1000,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn bounds_per_user_and_in_total_refuse_rather_than_drop() {
        let (dir, store, now) = (Directory::new(10), OfflineStore::new(limits()), Instant::now());
        assert_eq!(store.offer(&dir, 1, &[0; 10], now), Offer::Stored);
        assert_eq!(store.offer(&dir, 1, &[0; 10], now), Offer::Stored);
        assert_eq!(store.offer(&dir, 1, &[0; 10], now), Offer::Full, "2 messages per user");
        assert_eq!(store.offer(&dir, 2, &[0; 101], now), Offer::Full, "100 bytes per user");
        assert_eq!(store.offer(&dir, 2, &[0; 10], now), Offer::Stored);
        assert_eq!(store.offer(&dir, 3, &[0; 10], now), Offer::Full, "3 messages in total");
        assert_eq!(store.held(), (3, 30));
        let mut out = Vec::new();
        store.take(1, 15, now, &mut out);
        assert_eq!(out.len(), 1, "room for one");
        store.take(1, 4096, now, &mut out);
        assert_eq!((out.len(), store.has(1)), (2, false));
        assert_eq!(store.held(), (1, 10));
    }

    #[test]
    fn an_online_user_is_not_stored_for_and_old_frames_expire() {
        let (dir, store, now) = (Directory::new(10), OfflineStore::new(limits()), Instant::now());
        let place = Place { worker: 1, generation: 2, slot: 3 };
        dir.publish(5, place);
        assert_eq!(store.offer(&dir, 5, &[1], now), Offer::Online(place));
        assert_eq!(store.offer(&dir, 6, &[1], now), Offer::Stored);
        store.sweep(6, now + Duration::from_secs(61));
        assert_eq!((store.held(), store.expired.load(Ordering::Relaxed)), ((0, 0), 1));
    }
}
