//! Input a paused owner could not take, kept by the xdp data plane until the owner's `Resume`.
//!
//! The seam promises that a transport keeps what `Handler::input` left and offers it again after
//! a `Resume`; the kernel path has the socket's receive buffer for that. c2m's TCP has no receive
//! buffer, and leaving the bytes unacknowledged instead makes a Linux peer wait for its
//! retransmission timer, backed off while the window was closed (seconds), before it sends them
//! again. So the bytes are kept here, acknowledged, and the window is closed; bounded per
//! connection and per worker, past which TCP falls back to not acknowledging them.

use std::collections::HashMap;

/// Held bytes per worker, at most.
pub const WORKER_CAP: usize = 16 << 20;
/// Held bytes per connection, at most: what a peer had in flight when the window closed (one
/// 64 KiB window) and one more.
pub const CONN_CAP: usize = 128 << 10;

#[derive(Default)]
struct Held {
    data: Vec<u8>,
    /// The peer's FIN came after these bytes: the owner is told once they are taken.
    ended: bool,
}

/// What `offer` did with a connection's held bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// Nothing was held.
    Nothing,
    /// Every held byte was taken: the input can reopen. `ended`: the peer's FIN followed them.
    All { ended: bool },
    /// The owner paused again; the rest stays held.
    Some,
}

pub struct HeldInput {
    conns: HashMap<u32, Held>,
    bytes: usize,
    worker_cap: usize,
    conn_cap: usize,
}

impl Default for HeldInput {
    fn default() -> HeldInput {
        HeldInput::with_caps(WORKER_CAP, CONN_CAP)
    }
}

impl HeldInput {
    pub fn with_caps(worker_cap: usize, conn_cap: usize) -> HeldInput {
        HeldInput { conns: HashMap::new(), bytes: 0, worker_cap, conn_cap }
    }

    /// True while bytes are held for `conn` (its input is paused).
    pub fn holds(&self, conn: u32) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Bytes held over all connections.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `data` after what is held for `conn`, whole or not at all: false when a cap would be
    /// passed (the caller leaves it unacknowledged).
    pub fn keep(&mut self, conn: u32, data: &[u8]) -> bool {
        let held = self.conns.get(&conn).map_or(0, |h| h.data.len());
        if self.bytes + data.len() > self.worker_cap || held + data.len() > self.conn_cap {
            return false;
        }
        self.conns.entry(conn).or_default().data.extend_from_slice(data);
        self.bytes += data.len();
        true
    }

    /// Notes the peer's FIN behind the held bytes; false if nothing is held (tell the owner now).
    pub fn end(&mut self, conn: u32) -> bool {
        match self.conns.get_mut(&conn) {
            Some(h) => {
                h.ended = true;
                true
            }
            None => false,
        }
    }

    /// Offers the held bytes to `take`, which returns how many it took.
    pub fn offer(&mut self, conn: u32, take: impl FnOnce(&[u8]) -> usize) -> Offered {
        let Some(mut held) = self.conns.remove(&conn) else { return Offered::Nothing };
        let n = take(&held.data).min(held.data.len());
        self.bytes -= n;
        if n == held.data.len() {
            return Offered::All { ended: held.ended };
        }
        held.data.drain(..n);
        self.conns.insert(conn, held);
        Offered::Some
    }

    /// The connection is gone: what it held is dropped.
    pub fn forget(&mut self, conn: u32) {
        if let Some(h) = self.conns.remove(&conn) {
            self.bytes -= h.data.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_bytes_come_back_in_order_until_all_are_taken() {
        let mut h = HeldInput::default();
        assert!(!h.holds(1));
        assert!(h.keep(1, b"abc"));
        assert!(h.keep(1, b"def"));
        assert!(h.holds(1));
        assert_eq!(h.bytes(), 6);
        let mut seen = Vec::new();
        assert_eq!(
            h.offer(1, |d| {
                seen.extend_from_slice(&d[..2]);
                2
            }),
            Offered::Some
        );
        assert_eq!(h.bytes(), 4);
        assert_eq!(
            h.offer(1, |d| {
                seen.extend_from_slice(d);
                d.len()
            }),
            Offered::All { ended: false }
        );
        assert_eq!(seen, b"abcdef");
        assert!(!h.holds(1));
        assert_eq!(h.bytes(), 0);
        assert_eq!(h.offer(1, |_| unreachable!()), Offered::Nothing);
    }

    #[test]
    fn a_fin_waits_behind_the_held_bytes() {
        let mut h = HeldInput::default();
        assert!(!h.end(3), "nothing held: the owner is told at once");
        assert!(h.keep(3, b"x"));
        assert!(h.end(3));
        assert_eq!(h.offer(3, |_| 0), Offered::Some);
        assert_eq!(h.offer(3, |d| d.len()), Offered::All { ended: true });
    }

    #[test]
    fn caps_per_connection_and_per_worker_refuse_whole_pieces() {
        let mut h = HeldInput::with_caps(10, 6);
        assert!(h.keep(1, b"12345"));
        assert!(!h.keep(1, b"67"), "past the connection's cap");
        assert!(h.keep(2, b"1234"));
        assert!(!h.keep(3, b"12"), "past the worker's cap");
        assert_eq!(h.bytes(), 9);
        h.forget(1);
        assert_eq!(h.bytes(), 4);
        assert!(h.keep(3, b"12"));
        assert!(!h.holds(1));
    }
}
