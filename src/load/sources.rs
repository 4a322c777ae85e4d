//! Local source addresses and ports. c2m binds every connection's source address and port
//! itself, so the kernel's ephemeral range (about 28,000 ports) never caps a run: connection
//! `g` (numbered over the whole run) gets address `g / ports_per_address` and port
//! `first_port + g % ports_per_address`. With one target, two connections therefore never share
//! a 4-tuple, and every worker knows its connections' addresses without coordination.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::LoadError;

/// An ordered list of local addresses, given as ranges and CIDR blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    blocks: Vec<Block>,
    total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Block {
    V4 { first: u32, count: u64 },
    V6 { first: u128, count: u64 },
}

impl Block {
    fn count(&self) -> u64 {
        match *self {
            Block::V4 { count, .. } | Block::V6 { count, .. } => count,
        }
    }

    fn nth(&self, i: u64) -> IpAddr {
        match *self {
            Block::V4 { first, .. } => IpAddr::V4(Ipv4Addr::from(first + i as u32)),
            Block::V6 { first, .. } => IpAddr::V6(Ipv6Addr::from(first + i as u128)),
        }
    }
}

fn bad(spec: &str, why: &str) -> LoadError {
    LoadError::Config(format!("--sources {spec:?}: {why} (e.g. 127.0.0.2-127.0.0.60, 127.1.0.0/24, ::1)"))
}

fn parse_block(spec: &str) -> Result<Block, LoadError> {
    if let Some((addr, len)) = spec.split_once('/') {
        let len: u32 = len.parse().map_err(|_| bad(spec, "bad prefix length"))?;
        return match addr.parse::<IpAddr>().map_err(|_| bad(spec, "bad address"))? {
            IpAddr::V4(a) if len <= 32 => {
                let size = 1u64 << (32 - len);
                let base = u32::from(a) & !((size - 1) as u32);
                // A /24 and wider skips the network and broadcast addresses, as ip(8) would.
                let (first, count) = if size >= 256 { (base + 1, size - 2) } else { (base, size) };
                Ok(Block::V4 { first, count })
            }
            IpAddr::V6(a) if (64..=128).contains(&len) => {
                let size = 1u64 << (128 - len).min(63);
                Ok(Block::V6 { first: u128::from(a) & !((size - 1) as u128), count: size })
            }
            _ => Err(bad(spec, "prefix length out of range")),
        };
    }
    if let Some((from, to)) = spec.split_once('-') {
        let (from, to) = (from.trim(), to.trim());
        return match (from.parse::<IpAddr>(), to.parse::<IpAddr>()) {
            (Ok(IpAddr::V4(a)), Ok(IpAddr::V4(b))) if u32::from(a) <= u32::from(b) => {
                Ok(Block::V4 { first: a.into(), count: (u32::from(b) - u32::from(a)) as u64 + 1 })
            }
            (Ok(IpAddr::V6(a)), Ok(IpAddr::V6(b))) if u128::from(a) <= u128::from(b) => {
                let count = (u128::from(b) - u128::from(a)).min(u64::MAX as u128 - 1) as u64 + 1;
                Ok(Block::V6 { first: a.into(), count })
            }
            _ => Err(bad(spec, "a range needs two addresses of one family, low to high")),
        };
    }
    match spec.parse::<IpAddr>().map_err(|_| bad(spec, "bad address"))? {
        IpAddr::V4(a) => Ok(Block::V4 { first: a.into(), count: 1 }),
        IpAddr::V6(a) => Ok(Block::V6 { first: a.into(), count: 1 }),
    }
}

impl Sources {
    /// Parses a comma-separated list of addresses, `A-B` ranges and CIDR blocks.
    pub fn parse(spec: &str) -> Result<Sources, LoadError> {
        let blocks =
            spec.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse_block).collect::<Result<Vec<_>, _>>()?;
        if blocks.is_empty() {
            return Err(bad(spec, "no address"));
        }
        let total = blocks.iter().map(Block::count).sum();
        Ok(Sources { blocks, total })
    }

    /// Enough loopback addresses for `connections`, from 127.0.1.1 upward (all of 127.0.0.0/8 is
    /// local, and 127.0.0.1, where servers usually listen, stays out of the way).
    pub fn loopback_for(connections: u64, ports_per_address: u64) -> Sources {
        Sources::from_for(Ipv4Addr::new(127, 0, 1, 1), connections, ports_per_address)
    }

    /// As many addresses from `first` up as `connections` need at `ports_per_address` each.
    pub fn from_for(first: Ipv4Addr, connections: u64, ports_per_address: u64) -> Sources {
        let count = connections.div_ceil(ports_per_address.max(1)).max(1);
        Sources { blocks: vec![Block::V4 { first: u32::from(first), count }], total: count }
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The `i`-th address of the list.
    pub fn nth(&self, mut i: u64) -> Option<IpAddr> {
        for block in &self.blocks {
            if i < block.count() {
                return Some(block.nth(i));
            }
            i -= block.count();
        }
        None
    }

    pub fn is_ipv6(&self) -> bool {
        matches!(self.blocks.first(), Some(Block::V6 { .. }))
    }

    pub fn mixed_families(&self) -> bool {
        let v6 = self.blocks.iter().filter(|b| matches!(b, Block::V6 { .. })).count();
        v6 != 0 && v6 != self.blocks.len()
    }
}

/// Which source address and port each connection of a run uses.
#[derive(Clone, Debug)]
pub struct PortPlan {
    pub sources: Sources,
    pub first_port: u16,
    pub last_port: u16,
    /// The target's port is skipped on every address: a listener on the wildcard address
    /// holds it.
    pub skip_port: Option<u16>,
}

impl PortPlan {
    pub fn ports_per_address(&self) -> u64 {
        let span = (self.last_port - self.first_port) as u64 + 1;
        match self.skip_port {
            Some(p) if (self.first_port..=self.last_port).contains(&p) => span - 1,
            _ => span,
        }
    }

    /// How many connections the plan can give distinct (address, port) pairs.
    pub fn capacity(&self) -> u64 {
        self.sources.len().saturating_mul(self.ports_per_address())
    }

    /// The source of connection `g` (numbered over the whole run), or `None` past capacity.
    pub fn source_of(&self, g: u64) -> Option<SocketAddr> {
        let per = self.ports_per_address();
        let addr = self.sources.nth(g / per)?;
        let mut port = self.first_port as u64 + g % per;
        if let Some(skip) = self.skip_port
            && port >= skip as u64
            && (self.first_port..=self.last_port).contains(&skip)
        {
            port += 1;
        }
        Some(SocketAddr::new(addr, port as u16))
    }
}

/// Parses `LO-HI` (inclusive).
pub fn parse_port_range(spec: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = spec.split_once('-').ok_or_else(|| format!("{spec:?}: expected LO-HI, e.g. 10000-65000"))?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("{spec:?}: bad low port"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("{spec:?}: bad high port"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{spec:?}: need 1 <= LO <= HI"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ranges_cidr_and_lists() {
        let s = Sources::parse("127.0.0.2-127.0.0.4, 127.1.0.0/30,::1").unwrap();
        assert_eq!(s.len(), 3 + 4 + 1);
        assert_eq!(s.nth(0), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(s.nth(2), Some("127.0.0.4".parse().unwrap()));
        assert_eq!(s.nth(3), Some("127.1.0.0".parse().unwrap()));
        assert_eq!(s.nth(7), Some("::1".parse().unwrap()));
        assert_eq!(s.nth(8), None);
        assert!(s.mixed_families());
        let wide = Sources::parse("127.2.0.0/24").unwrap();
        assert_eq!(wide.len(), 254);
        assert_eq!(wide.nth(0), Some("127.2.0.1".parse().unwrap()));
        for bad in ["", "127.0.0.9-127.0.0.1", "127.0.0.1/33", "nope", "127.0.0.1-::1"] {
            assert!(Sources::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn the_target_port_is_skipped() {
        let plan = PortPlan {
            sources: Sources::parse("127.0.0.2").unwrap(),
            first_port: 7699,
            last_port: 7701,
            skip_port: Some(7700),
        };
        assert_eq!(plan.capacity(), 2);
        assert_eq!(plan.source_of(0).unwrap().port(), 7699);
        assert_eq!(plan.source_of(1).unwrap().port(), 7701);
        assert_eq!(plan.source_of(2), None);
    }

    #[test]
    fn loopback_sources_cover_the_run() {
        let s = Sources::loopback_for(2_000_000, 55_000);
        assert_eq!(s.len(), 37);
        assert_eq!(s.nth(0), Some("127.0.1.1".parse().unwrap()));
    }

    proptest! {
        /// No two connections of a run share a source (address, port): with one target, no two
        /// share a 4-tuple.
        #[test]
        fn sources_are_distinct(first in 1024u16..60000, span in 1u16..200, addrs in 1u64..20, skip in proptest::option::of(1024u16..62000)) {
            let last = first.saturating_add(span);
            let plan = PortPlan { sources: Sources::loopback_for(addrs * 1000, 1000), first_port: first, last_port: last, skip_port: skip };
            let mut seen = HashSet::new();
            for g in 0..plan.capacity() {
                let a = plan.source_of(g).unwrap();
                prop_assert!(a.port() >= first && a.port() <= last);
                prop_assert!(Some(a.port()) != skip);
                prop_assert!(seen.insert(a), "{a} used twice");
            }
            prop_assert_eq!(plan.source_of(plan.capacity()), None);
        }
    }
}
