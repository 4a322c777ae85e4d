//! `user_data` encoding: every completion says what it was for without a lookup table.
//!
//! Layout of the 64 bits, high to low:
//! `op: 8 | ring: 12 | generation: 12 | slot: 32`.
//!
//! Two vocabularies share the op byte, apart by range: codes below [`FIRST_SERVICE_OP`] are the
//! engine's own (its tick and cross-worker wake, see [`EngineOp`]); a service declares its ops
//! with [`service_ops!`], numbered from [`FIRST_SERVICE_OP`]. An op that belongs to a slot carries
//! the low 12 bits of the slot's generation; together with the rule that a slot is reused only
//! once nothing is in flight on it (see `slots.rs`), that lets the engine recognise and drop a
//! stale completion instead of applying it to the session that took the slot over. Ops that
//! belong to no slot use the slot field for a payload of their own (a ring's accept generation,
//! a descriptor index).

/// The first op code a service may use; the codes below are the engine's.
pub const FIRST_SERVICE_OP: u8 = 16;

/// The engine's own operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EngineOp {
    /// The worker's periodic tick (a timeout).
    Tick = 1,
    /// Another worker's `IORING_OP_MSG_RING`: "look at what was sent to you".
    Wake = 2,
    /// A failed `IORING_OP_MSG_RING` of ours (successes post nothing: CQE_SKIP_SUCCESS).
    WakeSent = 3,
}

impl EngineOp {
    pub fn from_code(code: u8) -> Option<EngineOp> {
        [EngineOp::Tick, EngineOp::Wake, EngineOp::WakeSent].into_iter().find(|op| *op as u8 == code)
    }
}

/// A service's operation vocabulary: one enum per service, declared with [`service_ops!`].
pub trait ServiceOp: Copy + std::fmt::Debug + PartialEq + 'static {
    fn code(self) -> u8;
    fn from_code(code: u8) -> Option<Self>;
    /// Whether the op belongs to a slot's lifecycle: counted in flight, stamped with the slot's
    /// generation, and dropped by the engine if stale.
    fn on_slot(self) -> bool;
}

/// Declares a service's op enum: each variant is `slot` (part of a slot's lifecycle) or `free`
/// (belongs to no slot; its token's slot field is a payload). Codes are given in order from
/// [`FIRST_SERVICE_OP`], so the table that decodes them cannot drift from the enum.
#[macro_export]
macro_rules! service_ops {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident: $kind:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        $vis enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            const ALL: &'static [$name] = &[$($name::$variant,)+];
        }

        impl $crate::engine::ServiceOp for $name {
            #[inline]
            fn code(self) -> u8 {
                $crate::engine::token::FIRST_SERVICE_OP + self as u8
            }
            #[inline]
            fn from_code(code: u8) -> Option<Self> {
                let index = code.checked_sub($crate::engine::token::FIRST_SERVICE_OP)? as usize;
                Self::ALL.get(index).copied()
            }
            #[inline]
            fn on_slot(self) -> bool {
                match self {
                    $($name::$variant => $crate::service_ops!(@slot $kind),)+
                }
            }
        }
    };
    (@slot slot) => { true };
    (@slot free) => { false };
}

pub const RING_BITS: u32 = 12;
pub const GEN_BITS: u32 = 12;
/// Rings a worker may own (the ring index must fit its field).
pub const MAX_RINGS: usize = 1 << RING_BITS;
pub const GEN_MASK: u32 = (1 << GEN_BITS) - 1;
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
    pub fn engine(op: EngineOp) -> Token {
        Token::new(op as u8, 0, 0, 0)
    }

    #[inline]
    pub fn op(self) -> u8 {
        (self.0 >> 56) as u8
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

    crate::service_ops! {
        /// A vocabulary for the tests.
        enum TestOp {
            First: free,
            Second: slot,
            Third: slot,
        }
    }

    #[test]
    fn fields_round_trip_at_their_limits() {
        let t = Token::new(255, (MAX_RINGS - 1) as u16, GEN_MASK, u32::MAX);
        assert_eq!(t.op(), 255);
        assert_eq!(t.ring() as usize, MAX_RINGS - 1);
        assert_eq!(t.generation(), GEN_MASK);
        assert_eq!(t.slot(), u32::MAX);
    }

    #[test]
    fn a_newer_generation_makes_old_tokens_stale() {
        let t = Token::new(FIRST_SERVICE_OP, 3, 7, 42);
        assert!(t.matches_generation(7));
        assert!(!t.matches_generation(8));
        // Only the low bits travel; the wrap is the documented limit.
        assert!(t.matches_generation(7 + (1 << GEN_BITS)));
    }

    #[test]
    fn service_and_engine_ops_never_share_a_code() {
        for code in 0..=255u8 {
            let engine = EngineOp::from_code(code);
            let service = TestOp::from_code(code);
            assert!(!(engine.is_some() && service.is_some()), "code {code} decodes both ways");
            if let Some(op) = engine {
                assert_eq!(op as u8, code);
                assert!(code < FIRST_SERVICE_OP);
            }
            if let Some(op) = service {
                assert_eq!(op.code(), code);
            }
        }
        assert_eq!(TestOp::from_code(FIRST_SERVICE_OP), Some(TestOp::First));
        assert_eq!(TestOp::from_code(FIRST_SERVICE_OP + 3), None);
        assert!(!TestOp::First.on_slot() && TestOp::Second.on_slot() && TestOp::Third.on_slot());
    }

    proptest! {
        #[test]
        fn pack_unpack(op in 0u8..=255, ring in 0u16..(MAX_RINGS as u16), generation: u32, slot: u32) {
            let t = Token::new(op, ring, generation, slot);
            prop_assert_eq!(t.op(), op);
            prop_assert_eq!(t.ring(), ring);
            prop_assert_eq!(t.generation(), generation & GEN_MASK);
            prop_assert_eq!(t.slot(), slot);
        }
    }
}
