//! One run split over several load processes (`c2m load --shard I/N`), usually on as many hosts.
//! Shard `I` of `N` opens the run's connections `g` with `g % N == I`: the same interleaving one
//! process uses between its workers, so the N shards together open every connection of the run
//! exactly once, each connection keeps the user id (`first_user + g`), connect time (`g / rate`)
//! and first-message offset it would have in one process, and every shard ramps at `1/N` of the
//! run's rate at the same time. Source ports are split into N disjoint ranges by default, so
//! shards that share an address (several on one host, or hosts behind one NAT address) never
//! share a 4-tuple.

use std::fmt;
use std::str::FromStr;

/// Which part of a run this process is: `index` of `count` (0-based, `index < count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// Most shards of one run (a shard's connections are numbered in u64; this only bounds typos).
pub const MAX_SHARDS: u32 = 65_536;

impl Shard {
    /// The whole run in one process.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn is_whole(self) -> bool {
        self.count == 1
    }

    /// How many of a run's `run_connections` this shard opens.
    pub fn connections_of(self, run_connections: u64) -> u64 {
        let i = self.index as u64;
        if i >= run_connections { 0 } else { (run_connections - i).div_ceil(self.count as u64) }
    }

    /// The run-wide number of this shard's `local`-th connection.
    pub fn global(self, local: u64) -> u64 {
        local * self.count as u64 + self.index as u64
    }

    /// The run-wide connection `g` as (its shard's index, its number in that shard).
    pub fn locate(count: u32, g: u64) -> (u32, u64) {
        ((g % count as u64) as u32, g / count as u64)
    }

    /// This shard's part of the inclusive port range `first..=last`: N contiguous ranges that do
    /// not overlap and together cover it. `None` when the range has fewer ports than shards.
    pub fn ports_of(self, first: u16, last: u16) -> Option<(u16, u16)> {
        let span = (last as u64).checked_sub(first as u64)? + 1;
        let n = self.count as u64;
        if span < n {
            return None;
        }
        let lo = first as u64 + span * self.index as u64 / n;
        let hi = first as u64 + span * (self.index as u64 + 1) / n - 1;
        Some((lo as u16, hi as u16))
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `I/N`, 0 <= I < N <= [`MAX_SHARDS`] (a Kubernetes Indexed Job's completion index is I).
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = |why: &str| format!("{s:?}: {why} (I/N with 0 <= I < N, e.g. 0/3, 1/3, 2/3)");
        let (i, n) = s.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let index: u32 = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let count: u32 = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 || count > MAX_SHARDS {
            return Err(bad(&format!("N must be in 1..={MAX_SHARDS}")));
        }
        if index >= count {
            return Err(bad("I must be below N"));
        }
        Ok(Shard { index, count })
    }
}

/// How a shard chooses its source ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ShardPorts {
    /// Shard I of N takes the I-th of N equal parts of --source-ports: shards never share a
    /// source (address, port), even on one address.
    #[default]
    Split,
    /// Every shard uses all of --source-ports: for hosts whose addresses differ (N times the
    /// room per address; shards on one address would collide).
    Whole,
}

/// A 64-bit mix (splitmix64's finaliser): the same input gives the same output in every process
/// and on every host, so a connection's schedule and its messages' recipients follow from its
/// run-wide number alone, not from which process or worker runs it.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The default run id: the same on every shard given the same command line (up to the shard),
/// so the shards of a run agree without talking; pass `--run-id` to tell two runs of one
/// command line apart.
pub fn default_run_id(canonical: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let h = canonical.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("run-{:016x}", mix64(h))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_i_of_n_and_refuses_the_rest() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        assert_eq!("0/1".parse::<Shard>(), Ok(Shard::WHOLE));
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2", "1/70000"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad} should be refused");
        }
        assert_eq!(Shard { index: 1, count: 5 }.to_string(), "1/5");
    }

    #[test]
    fn three_shards_of_ten_connections() {
        let of = |i| Shard { index: i, count: 3 };
        assert_eq!([of(0), of(1), of(2)].map(|s| s.connections_of(10)), [4, 3, 3]);
        assert_eq!((0..4).map(|l| of(0).global(l)).collect::<Vec<_>>(), [0, 3, 6, 9]);
        assert_eq!(Shard::locate(3, 7), (1, 2));
        assert_eq!(Shard { index: 4, count: 5 }.connections_of(3), 0);
    }

    #[test]
    fn port_ranges_split_evenly() {
        let of = |i| Shard { index: i, count: 3 }.ports_of(10000, 10009);
        assert_eq!([of(0), of(1), of(2)], [Some((10000, 10002)), Some((10003, 10005)), Some((10006, 10009))]);
        assert_eq!(Shard::WHOLE.ports_of(1, 65535), Some((1, 65535)));
        assert_eq!(Shard { index: 0, count: 4 }.ports_of(10, 12), None);
    }

    #[test]
    fn the_run_id_is_stable() {
        assert_eq!(default_run_id("a"), default_run_id("a"));
        assert_ne!(default_run_id("a"), default_run_id("b"));
        assert!(default_run_id("a").starts_with("run-"));
    }

    proptest! {
        /// For any N (odd ones included) the shards' connections are disjoint and together are
        /// exactly the run's, each where `locate` says it is.
        #[test]
        fn shards_are_disjoint_and_complete(run in 0u64..2000, count in 1u32..12) {
            let mut seen = HashSet::new();
            let mut total = 0;
            for index in 0..count {
                let s = Shard { index, count };
                let n = s.connections_of(run);
                total += n;
                for local in 0..n {
                    let g = s.global(local);
                    prop_assert!(g < run);
                    prop_assert!(seen.insert(g), "connection {} twice", g);
                    prop_assert_eq!(Shard::locate(count, g), (index, local));
                }
            }
            prop_assert_eq!(total, run);
            prop_assert_eq!(seen.len() as u64, run);
        }

        /// The shards' port ranges are disjoint and cover the whole range.
        #[test]
        fn port_ranges_are_disjoint_and_complete(first in 1u16..60000, span in 0u16..3000, count in 1u32..40) {
            let last = first.saturating_add(span);
            let mut next = first as u32;
            for index in 0..count {
                match (Shard { index, count }).ports_of(first, last) {
                    Some((lo, hi)) => {
                        prop_assert_eq!(lo as u32, next);
                        prop_assert!(lo <= hi);
                        next = hi as u32 + 1;
                    }
                    None => {
                        prop_assert!(((last - first) as u32 + 1) < count);
                        return Ok(());
                    }
                }
            }
            prop_assert_eq!(next, last as u32 + 1);
        }
    }
}
