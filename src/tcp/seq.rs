//! Sequence-number arithmetic (RFC 9293 §3.4): 32-bit numbers compared modulo 2^32, so "a before
//! b" holds when b is less than 2^31 ahead of a. Every comparison of two sequence numbers in
//! `src/tcp/` goes through here; a plain `<` on them is a bug once the numbers wrap.

/// `a` comes before `b`.
#[inline]
pub fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a` comes before `b` or is `b`.
#[inline]
pub fn le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

#[inline]
pub fn gt(a: u32, b: u32) -> bool {
    lt(b, a)
}

#[inline]
pub fn ge(a: u32, b: u32) -> bool {
    le(b, a)
}

/// `x` lies in the `len` numbers starting at `start`: `start <= x < start + len`.
#[inline]
pub fn in_window(x: u32, start: u32, len: u32) -> bool {
    x.wrapping_sub(start) < len
}

/// `lo <= x <= hi`, for a range shorter than 2^31.
#[inline]
pub fn between(lo: u32, x: u32, hi: u32) -> bool {
    le(lo, x) && le(x, hi)
}

/// The later of two sequence numbers.
#[inline]
pub fn max(a: u32, b: u32) -> u32 {
    if lt(a, b) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_around_zero() {
        assert!(lt(u32::MAX, 0));
        assert!(lt(u32::MAX - 10, 5));
        assert!(gt(5, u32::MAX - 10));
        assert!(in_window(3, u32::MAX - 2, 10));
        assert!(!in_window(7, u32::MAX - 2, 10));
        assert!(between(u32::MAX, 0, 1));
        assert_eq!(max(u32::MAX, 2), 2);
    }

    #[test]
    fn an_empty_window_holds_nothing() {
        assert!(!in_window(5, 5, 0));
    }

    proptest! {
        /// Against a model in i64: b = a + d for |d| < 2^31.
        #[test]
        fn ordering_matches_the_distance(a in any::<u32>(), d in -(1i64 << 31) + 1..(1i64 << 31)) {
            let b = (a as i64 + d).rem_euclid(1 << 32) as u32;
            prop_assert_eq!(lt(a, b), d > 0);
            prop_assert_eq!(le(a, b), d >= 0);
            prop_assert_eq!(gt(a, b), d < 0);
            prop_assert_eq!(ge(a, b), d <= 0);
            prop_assert_eq!(max(a, b), if d > 0 { b } else { a });
            // Exactly one of <, =, > holds.
            prop_assert_eq!(lt(a, b) as u8 + (a == b) as u8 + gt(a, b) as u8, 1);
        }

        #[test]
        fn window_matches_a_model(start in any::<u32>(), off in any::<u32>(), len in any::<u32>()) {
            let x = start.wrapping_add(off);
            prop_assert_eq!(in_window(x, start, len), (off as u64) < len as u64);
        }

        #[test]
        fn between_matches_a_model(lo in any::<u32>(), a in 0u32..1 << 30, b in 0u32..1 << 30) {
            let (x, hi) = (lo.wrapping_add(a.min(b)), lo.wrapping_add(a.max(b)));
            prop_assert!(between(lo, x, hi));
            prop_assert!(!between(lo, hi.wrapping_add(1), hi));
            prop_assert!(!between(lo, lo.wrapping_sub(1), hi));
        }
    }
}
