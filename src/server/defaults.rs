//! `c2m serve`'s defaults, named once: [`super::ServeConfig::default`], the CLI's flags and
//! `c2m tune check` (which sizes what a default server needs) all read them here. Values a person
//! gives with units are kept as the text the CLI shows (`"4GiB"`, `"30s"`) and parsed where a
//! number is needed, so `--help` and the config cannot disagree.

use std::time::Duration;

use crate::units::{parse_bytes, parse_count, parse_duration};

pub const LISTEN: &str = "127.0.0.1:7700";
pub const MAX_SESSIONS: usize = 1_000_000;
pub const SESSION_BYTES: usize = 40 * 1024;
pub const SLOT_BUDGET: &str = "4GiB";
pub const HEARTBEAT: &str = "30s";
pub const HELLO_TIMEOUT: &str = "10s";
pub const DRAIN_TIMEOUT: &str = "5s";
/// Listen backlog per worker.
pub const BACKLOG: u32 = 4096;
/// Provided receive buffers per ring (a power of two) and their size.
pub const RECV_BUFFERS: u16 = 512;
pub const RECV_BUFFER_SIZE: u32 = 2048;
/// Each ring's submission and completion queues.
pub const SQ_ENTRIES: u32 = 1024;
pub const CQ_ENTRIES: u32 = 8192;
/// Chat: user ids 1..=USERS can receive messages.
pub const USERS: &str = "4000000";
/// Chat: how long a message waits for an offline user, and what the store holds (per recipient,
/// per sender, in total).
pub const OFFLINE_TTL: &str = "720h";
pub const OFFLINE_USER_MESSAGES: u32 = 1000;
pub const OFFLINE_USER_BYTES: &str = "1MiB";
pub const OFFLINE_SENDER_MESSAGES: &str = "10k";
pub const OFFLINE_SENDER_BYTES: &str = "16MiB";
pub const OFFLINE_TOTAL_MESSAGES: &str = "10m";
pub const OFFLINE_TOTAL_BYTES: &str = "1GiB";

/// A default given as a byte size.
pub fn bytes(text: &str) -> u64 {
    parse_bytes(text).expect("a built-in default parses")
}
/// A default given as a count.
pub fn count(text: &str) -> u64 {
    parse_count(text).expect("a built-in default parses")
}
/// A default given as a duration.
pub fn duration(text: &str) -> Duration {
    parse_duration(text).expect("a built-in default parses")
}
/// A default duration in whole milliseconds, as the server's config keeps them.
pub fn millis(text: &str) -> u32 {
    u32::try_from(duration(text).as_millis()).expect("a built-in default fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses() {
        assert_eq!(bytes(SLOT_BUDGET), 4 << 30);
        assert_eq!(millis(HEARTBEAT), 30_000);
        assert_eq!(millis(HELLO_TIMEOUT), 10_000);
        assert_eq!(millis(DRAIN_TIMEOUT), 5_000);
        assert_eq!(count(USERS), 4_000_000);
        assert_eq!(duration(OFFLINE_TTL), Duration::from_secs(30 * 24 * 3600));
        for text in [OFFLINE_USER_BYTES, OFFLINE_SENDER_BYTES, OFFLINE_TOTAL_BYTES] {
            assert!(bytes(text) > 0);
        }
        assert_eq!(count(OFFLINE_SENDER_MESSAGES), 10_000);
        assert_eq!(count(OFFLINE_TOTAL_MESSAGES), 10_000_000);
        assert!(LISTEN.parse::<std::net::SocketAddr>().is_ok());
        assert!(RECV_BUFFERS.is_power_of_two());
    }
}
