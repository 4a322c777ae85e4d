//! A seeded, deterministic fault injector to put between an endpoint and the wire: drops,
//! delays (a bounded queue released by time), reorders, duplicates and corrupts frames, each with
//! a per-mille probability, and counts what it did. Used by the tests, and by the data plane's
//! test option (DESIGN.md: netem is not built into this kernel).

use std::collections::VecDeque;

/// Per-mille probabilities (0..=1000) of each fault, applied to each frame in this order:
/// drop, corrupt, duplicate, delay, reorder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultConfig {
    pub drop: u16,
    pub corrupt: u16,
    pub duplicate: u16,
    pub delay: u16,
    pub reorder: u16,
    /// A delayed frame is held 1..=`max_delay_ms`.
    pub max_delay_ms: u32,
    /// At most this many frames held; a frame that would exceed it passes undelayed.
    pub max_held: usize,
}

impl std::str::FromStr for FaultConfig {
    type Err = String;

    /// `drop=20,reorder=30,duplicate=5,corrupt=5,delay=10[,max-delay-ms=50]`: per mille each.
    fn from_str(s: &str) -> Result<FaultConfig, String> {
        let mut cfg = FaultConfig { max_delay_ms: 20, max_held: 4096, ..FaultConfig::default() };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("{part:?}: want key=per-mille"))?;
            let n: u32 = value.trim().parse().map_err(|_| format!("{part:?}: not a whole number"))?;
            let per_mille =
                || u16::try_from(n).ok().filter(|&v| v <= 1000).ok_or(format!("{part:?}: at most 1000 (per mille)"));
            match key.trim() {
                "drop" => cfg.drop = per_mille()?,
                "corrupt" => cfg.corrupt = per_mille()?,
                "duplicate" => cfg.duplicate = per_mille()?,
                "delay" => cfg.delay = per_mille()?,
                "reorder" => cfg.reorder = per_mille()?,
                "max-delay-ms" => cfg.max_delay_ms = n.clamp(1, 10_000),
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (drop, corrupt, duplicate, delay, reorder, max-delay-ms)"
                    ));
                }
            }
        }
        Ok(cfg)
    }
}

impl FaultConfig {
    /// Drops only.
    pub fn drop(per_mille: u16) -> FaultConfig {
        FaultConfig { drop: per_mille, ..FaultConfig::default() }
    }
}

/// What the injector did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub frames: u64,
    pub dropped: u64,
    pub corrupted: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub reordered: u64,
    pub delivered: u64,
}

pub struct FaultInjector {
    cfg: FaultConfig,
    rng: u64,
    /// Delayed frames with their release time, in arrival order.
    held: VecDeque<(u64, Vec<u8>)>,
    /// A frame held back to go out after the next one (reorder).
    swapped: Option<Vec<u8>>,
    stats: FaultStats,
}

impl FaultInjector {
    pub fn new(cfg: FaultConfig, seed: u64) -> FaultInjector {
        FaultInjector {
            cfg,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            held: VecDeque::new(),
            swapped: None,
            stats: FaultStats::default(),
        }
    }

    pub fn stats(&self) -> &FaultStats {
        &self.stats
    }

    /// SplitMix64: small, seeded, good enough to pick faults.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, per_mille: u16) -> bool {
        per_mille > 0 && self.next() % 1000 < per_mille as u64
    }

    /// One frame in at `now_ms`; `out` gets every frame that leaves now (this one, a duplicate, a
    /// frame held for reordering, or none).
    pub fn send(&mut self, now_ms: u64, frame: &[u8], out: &mut impl FnMut(&[u8])) {
        self.stats.frames += 1;
        if self.chance(self.cfg.drop) {
            self.stats.dropped += 1;
            return;
        }
        let mut f = frame.to_vec();
        if !f.is_empty() && self.chance(self.cfg.corrupt) {
            let at = (self.next() % f.len() as u64) as usize;
            f[at] ^= (self.next() % 255 + 1) as u8;
            self.stats.corrupted += 1;
        }
        let copies = if self.chance(self.cfg.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.route(now_ms, f.clone(), out);
        }
    }

    fn route(&mut self, now_ms: u64, f: Vec<u8>, out: &mut impl FnMut(&[u8])) {
        let room = self.held.len() < self.cfg.max_held;
        if room && self.cfg.max_delay_ms > 0 && self.chance(self.cfg.delay) {
            let at = now_ms + 1 + self.next() % self.cfg.max_delay_ms as u64;
            self.held.push_back((at, f));
            self.stats.delayed += 1;
            return;
        }
        if self.swapped.is_none() && self.chance(self.cfg.reorder) {
            self.swapped = Some(f);
            self.stats.reordered += 1;
            return;
        }
        self.deliver(&f, out);
        if let Some(s) = self.swapped.take() {
            self.deliver(&s, out);
        }
    }

    fn deliver(&mut self, f: &[u8], out: &mut impl FnMut(&[u8])) {
        self.stats.delivered += 1;
        out(f);
    }

    /// Releases held frames whose time has come (and a frame waiting to be reordered once no
    /// other frame came along by then). Call it whenever time passes.
    pub fn release(&mut self, now_ms: u64, out: &mut impl FnMut(&[u8])) {
        // Delays differ per frame, so release by time, not only from the front.
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].0 <= now_ms {
                let (_, f) = self.held.remove(i).expect("index checked");
                self.deliver(&f, out);
            } else {
                i += 1;
            }
        }
        if let Some(s) = self.swapped.take() {
            self.deliver(&s, out);
        }
    }

    /// Frames held now (delayed or waiting to be reordered).
    pub fn in_transit(&self) -> usize {
        self.held.len() + self.swapped.is_some() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: FaultConfig, seed: u64, n: usize) -> (Vec<Vec<u8>>, FaultStats) {
        let mut f = FaultInjector::new(cfg, seed);
        let mut got = vec![];
        for i in 0..n {
            f.send(i as u64, &(i as u32).to_le_bytes(), &mut |b| got.push(b.to_vec()));
            f.release(i as u64, &mut |b| got.push(b.to_vec()));
        }
        f.release(u64::MAX, &mut |b| got.push(b.to_vec()));
        assert_eq!(f.in_transit(), 0);
        (got, *f.stats())
    }

    #[test]
    fn no_faults_passes_everything_in_order() {
        let (got, s) = run(FaultConfig::default(), 1, 100);
        assert_eq!(got.len(), 100);
        assert!(got.iter().enumerate().all(|(i, b)| b == &(i as u32).to_le_bytes()));
        assert_eq!(s.delivered, 100);
    }

    #[test]
    fn rates_are_near_their_per_mille_and_counted() {
        let cfg = FaultConfig {
            drop: 50,
            corrupt: 20,
            duplicate: 30,
            delay: 40,
            reorder: 60,
            max_delay_ms: 10,
            max_held: 64,
        };
        let (got, s) = run(cfg, 7, 20_000);
        assert!((800..1200).contains(&s.dropped), "{s:?}");
        assert!((250..550).contains(&s.corrupted), "{s:?}");
        assert!((400..800).contains(&s.duplicated), "{s:?}");
        assert!(s.delayed > 400 && s.reordered > 700, "{s:?}");
        assert_eq!(got.len() as u64, s.delivered);
        assert_eq!(s.delivered, s.frames - s.dropped + s.duplicated);
        let n = |b: &Vec<u8>| u32::from_le_bytes(b[..4].try_into().unwrap());
        let out_of_order = got.windows(2).filter(|w| n(&w[0]) > n(&w[1])).count();
        assert!(out_of_order > 500, "{out_of_order}");
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let cfg = FaultConfig {
            drop: 100,
            corrupt: 100,
            duplicate: 100,
            delay: 100,
            reorder: 100,
            max_delay_ms: 5,
            max_held: 8,
        };
        assert_eq!(run(cfg, 3, 1000), run(cfg, 3, 1000));
        assert_ne!(run(cfg, 3, 1000).0, run(cfg, 4, 1000).0);
    }

    #[test]
    fn the_delay_queue_is_bounded() {
        let cfg = FaultConfig { delay: 1000, max_delay_ms: 1000, max_held: 5, ..FaultConfig::default() };
        let mut f = FaultInjector::new(cfg, 1);
        let mut n = 0;
        for i in 0..100u8 {
            f.send(0, &[i], &mut |_| n += 1);
        }
        assert_eq!(f.in_transit(), 5);
        assert_eq!(n, 95);
    }
}
