//! `user_data` encoding: every completion says what it was for without a lookup table.
//!
//! Layout of the 64 bits, high to low:
//! `op: 8 | ring: 12 | generation: 12 | slot: 32`.
//! The generation is the low 12 bits of the slot's generation counter; together with the rule
//! that a slot is reused only once nothing is in flight on it, it lets a stale completion be
//! recognised and dropped instead of being applied to the session that took the slot over.

/// What an operation was. The engine reserves the low values; users may add their own above
/// [`Op::FIRST_USER`] by using [`Token::new`] with a raw op byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Multishot accept on a ring (slot unused).
    Accept = 1,
    /// Multishot receive for a session.
    Recv = 2,
    /// A send for a session.
    Send = 3,
    /// Cancel of a session's receive.
    Cancel = 4,
    /// Close of a session's direct descriptor.
    Close = 5,
    /// The worker's periodic tick (a multishot timeout).
    Tick = 6,
    /// A send on a connection that has no session (e.g. "server full"); slot = direct descriptor.
    RejectSend = 7,
    /// The close that follows a `RejectSend`; slot = direct descriptor.
    RejectClose = 8,
    /// Cancel of a ring's multishot accept.
    AcceptCancel = 9,
    /// Shutdown (write side) of a session's socket, before its close.
    Shutdown = 10,
    /// The shutdown that follows a `RejectSend`; slot = direct descriptor.
    RejectShutdown = 11,
    /// A session's half-close (write side shut after its last words; input still drained).
    HalfClose = 12,
    /// A session's multishot poll for input (the receive arming that costs least memory).
    Readable = 13,
}

impl Op {
    pub const FIRST_USER: u8 = 32;

    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Cancel,
            5 => Op::Close,
            6 => Op::Tick,
            7 => Op::RejectSend,
            8 => Op::RejectClose,
            9 => Op::AcceptCancel,
            10 => Op::Shutdown,
            11 => Op::RejectShutdown,
            12 => Op::HalfClose,
            13 => Op::Readable,
            _ => return None,
        })
    }
}

pub const RING_BITS: u32 = 12;
pub const GEN_BITS: u32 = 12;
/// Rings a worker may own (the ring index must fit its field).
pub const MAX_RINGS: usize = 1 << RING_BITS;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;
const RING_MASK: u64 = (1 << RING_BITS) - 1;

/// A packed `user_data` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token(pub u64);

impl Token {
    /// Packs a token. `generation` is truncated to its low [`GEN_BITS`] bits; `ring` must be
    /// below [`MAX_RINGS`] (checked in debug builds; the ring set never creates more).
    #[inline]
    pub fn new(op: u8, ring: u16, generation: u32, slot: u32) -> Token {
        debug_assert!((ring as usize) < MAX_RINGS);
        Token(
            (op as u64) << 56
                | ((ring as u64) & RING_MASK) << 44
                | ((generation & GEN_MASK) as u64) << 32
                | slot as u64,
        )
    }

    #[inline]
    pub fn of(op: Op, ring: u16, generation: u32, slot: u32) -> Token {
        Token::new(op as u8, ring, generation, slot)
    }

    #[inline]
    pub fn op_raw(self) -> u8 {
        (self.0 >> 56) as u8
    }

    #[inline]
    pub fn op(self) -> Option<Op> {
        Op::from_u8(self.op_raw())
    }

    #[inline]
    pub fn ring(self) -> u16 {
        ((self.0 >> 44) & RING_MASK) as u16
    }

    #[inline]
    pub fn generation(self) -> u32 {
        ((self.0 >> 32) as u32) & GEN_MASK
    }

    #[inline]
    pub fn slot(self) -> u32 {
        self.0 as u32
    }

    /// Whether this token was made for a slot whose generation is now `current`.
    #[inline]
    pub fn matches_generation(self, current: u32) -> bool {
        self.generation() == current & GEN_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_round_trip_at_their_limits() {
        let t = Token::of(Op::Recv, (MAX_RINGS - 1) as u16, GEN_MASK, u32::MAX);
        assert_eq!(t.op(), Some(Op::Recv));
        assert_eq!(t.ring() as usize, MAX_RINGS - 1);
        assert_eq!(t.generation(), GEN_MASK);
        assert_eq!(t.slot(), u32::MAX);
    }

    #[test]
    fn a_newer_generation_makes_old_tokens_stale() {
        let t = Token::of(Op::Send, 3, 7, 42);
        assert!(t.matches_generation(7));
        assert!(!t.matches_generation(8));
        // Only the low bits travel; the wrap is the documented limit.
        assert!(t.matches_generation(7 + (1 << GEN_BITS)));
    }

    #[test]
    fn every_engine_op_decodes() {
        for v in 0..=255u8 {
            if let Some(op) = Op::from_u8(v) {
                assert_eq!(op as u8, v);
                assert_eq!(Token::of(op, 0, 0, 0).op(), Some(op));
            }
        }
    }

    proptest! {
        #[test]
        fn pack_unpack(op in 0u8..=255, ring in 0u16..(MAX_RINGS as u16), generation: u32, slot: u32) {
            let t = Token::new(op, ring, generation, slot);
            prop_assert_eq!(t.op_raw(), op);
            prop_assert_eq!(t.ring(), ring);
            prop_assert_eq!(t.generation(), generation & GEN_MASK);
            prop_assert_eq!(t.slot(), slot);
        }
    }
}
