//! Passive open: the SYN-RECEIVED queue and SYN cookies.
//!
//! A SYN to a listening address takes an entry in a small fixed table (default 4,096) that keeps
//! what the handshake needs and retransmits the SYN-ACK with backoff until a retry cap. When the
//! table is full the SYN-ACK carries a SYN cookie instead (no state at all), so a flood costs a
//! fixed amount of memory and a real client still gets through: its final ACK proves the cookie.
//! The connection's control block is made only when the handshake completes.
//!
//! Cookies follow Linux's layout (`net/ipv4/syncookies.c`): ISS = H1(tuple) + peer ISN +
//! (minute counter << 24) + ((H2(tuple, counter) + MSS index) mod 2^24), with H1, H2 keyed by
//! the endpoint's secret. A cookie is good for [`COOKIE_MAX_AGE`] counter steps.

use std::hash::{Hash, Hasher};

use bytemuck::{Pod, Zeroable};

use super::table::{Full, Key, Linked, Table};

/// The MSS values a cookie can say (2 bits of it): what Linux's table offers for IPv4.
pub const COOKIE_MSS: [u16; 4] = [536, 1300, 1440, 1460];
/// A cookie counter step: 64 s (as Linux).
pub const COOKIE_STEP_MS: u64 = 64_000;
/// Cookies older than this many steps are refused.
pub const COOKIE_MAX_AGE: u32 = 2;

/// One passive open between SYN and the final ACK: 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SynEntry {
    pub remote_ip: u32,
    pub local_ip: u32,
    pub remote_port: u16,
    pub local_port: u16,
    /// Our initial sequence number (the SYN-ACK's).
    pub iss: u32,
    /// The peer's initial sequence number.
    pub irs: u32,
    pub link: u32,
    /// When the next SYN-ACK retransmission is due (ms, low 32 bits).
    pub timer_at: u32,
    /// When the first SYN-ACK went out (for an RTT sample if it was not retransmitted).
    pub sent_at: u32,
    pub peer_mss: u16,
    pub peer_wnd: u16,
    pub retries: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(std::mem::size_of::<SynEntry>() == 40);

impl Linked for SynEntry {
    fn key(&self) -> Key {
        Key {
            local_ip: self.local_ip,
            remote_ip: self.remote_ip,
            local_port: self.local_port,
            remote_port: self.remote_port,
        }
    }
    fn link(&self) -> u32 {
        self.link
    }
    fn set_link(&mut self, link: u32) {
        self.link = link;
    }
}

impl SynEntry {
    pub fn new(key: Key) -> SynEntry {
        SynEntry {
            local_ip: key.local_ip,
            remote_ip: key.remote_ip,
            local_port: key.local_port,
            remote_port: key.remote_port,
            ..SynEntry::zeroed()
        }
    }
}

/// The bounded SYN-RECEIVED table.
pub struct SynQueue {
    pub table: Table<SynEntry>,
}

impl SynQueue {
    pub fn new(capacity: u32, seed: u64) -> SynQueue {
        SynQueue { table: Table::new(capacity, seed) }
    }

    pub fn insert(&mut self, e: SynEntry) -> Result<u32, Full> {
        self.table.insert(e)
    }
}

/// A keyed hash of a tuple and a number (std's SipHash with the secret mixed in first).
fn keyed(secret: u64, key: &Key, salt: u32, n: u32) -> u32 {
    let mut h = std::hash::DefaultHasher::new();
    secret.hash(&mut h);
    key.hash(&mut h);
    salt.hash(&mut h);
    n.hash(&mut h);
    h.finish() as u32
}

/// An initial sequence number (RFC 6528): a keyed hash of the tuple plus a 4 µs clock, so a new
/// incarnation of a tuple starts past the old one's numbers.
pub fn isn(secret: u64, key: &Key, now_ms: u64) -> u32 {
    keyed(secret, key, 0, 0).wrapping_add((now_ms as u32).wrapping_mul(250))
}

fn counter(now_ms: u64) -> u32 {
    (now_ms / COOKIE_STEP_MS) as u32
}

/// The index of the largest cookie MSS not above `mss`.
pub fn mss_index(mss: u16) -> u8 {
    COOKIE_MSS.iter().rposition(|&m| m <= mss).unwrap_or(0) as u8
}

/// The ISS of a cookie SYN-ACK answering a SYN with sequence `peer_isn` and MSS index `mss_idx`.
pub fn make_cookie(secret: u64, key: &Key, peer_isn: u32, mss_idx: u8, now_ms: u64) -> u32 {
    let c = counter(now_ms);
    keyed(secret, key, 1, 0)
        .wrapping_add(peer_isn)
        .wrapping_add(c << 24)
        .wrapping_add(keyed(secret, key, 2, c).wrapping_add(mss_idx as u32) & 0x00ff_ffff)
}

/// Checks the cookie in a final ACK (`ack` - 1 is the cookie, `seq` - 1 the peer's ISN). Returns
/// the MSS index it encodes, or `None` if it is forged or too old.
pub fn check_cookie(secret: u64, key: &Key, seq: u32, ack: u32, now_ms: u64) -> Option<u8> {
    let cookie = ack.wrapping_sub(1);
    let peer_isn = seq.wrapping_sub(1);
    let diff = cookie.wrapping_sub(keyed(secret, key, 1, 0)).wrapping_sub(peer_isn);
    let c = diff >> 24;
    let now = counter(now_ms) & 0xff;
    let age = now.wrapping_sub(c) & 0xff;
    if age > COOKIE_MAX_AGE {
        return None;
    }
    let full_counter = counter(now_ms).wrapping_sub(age);
    let idx = diff.wrapping_sub(keyed(secret, key, 2, full_counter)) & 0x00ff_ffff;
    (idx < COOKIE_MSS.len() as u32).then_some(idx as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(port: u16) -> Key {
        Key { local_ip: 0xc612_0001, remote_ip: 0xc612_0002, local_port: 7700, remote_port: port }
    }

    #[test]
    fn mss_index_rounds_down() {
        assert_eq!(mss_index(1460), 3);
        assert_eq!(mss_index(9000), 3);
        assert_eq!(mss_index(1400), 1);
        assert_eq!(mss_index(100), 0);
    }

    #[test]
    fn a_cookie_expires() {
        let k = key(1);
        let c = make_cookie(7, &k, 1000, 2, 0);
        assert_eq!(check_cookie(7, &k, 1001, c.wrapping_add(1), COOKIE_STEP_MS * 2), Some(2));
        assert_eq!(check_cookie(7, &k, 1001, c.wrapping_add(1), COOKIE_STEP_MS * 3), None);
    }

    proptest! {
        #[test]
        fn a_cookie_checks_out_and_forgeries_do_not(secret in any::<u64>(), port in any::<u16>(), isn in any::<u32>(), idx in 0u8..4, now in 0u64..1 << 40, age in 0u64..COOKIE_STEP_MS * 2, delta in 4u32..(1 << 24) - 8) {
            let k = key(port);
            let c = make_cookie(secret, &k, isn, idx, now);
            let ack = c.wrapping_add(1);
            let seq = isn.wrapping_add(1);
            prop_assert_eq!(check_cookie(secret, &k, seq, ack, now + age), Some(idx));
            // Another tuple, another secret, or a shifted ACK: refused (a guess passes with
            // probability 4 in 2^24, which these cases do not reach).
            prop_assert_eq!(check_cookie(secret, &key(port.wrapping_add(1)), seq, ack, now), None);
            prop_assert_eq!(check_cookie(secret ^ 1, &k, seq, ack, now), None);
            prop_assert_eq!(check_cookie(secret, &k, seq, ack.wrapping_add(delta), now), None);
        }
    }
}
