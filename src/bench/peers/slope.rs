//! What one more connection costs, from the steady slope of a capacity run: memory against
//! connections established, fitted by least squares over the samples past the start-up
//! transient. An average over the whole run (the drop divided by the count) folds in what the
//! server and the load set up once, and anything freed or taken by others meanwhile; the slope
//! keeps only what grows with the connections.

pub use crate::schema::peers::Slope;

/// Samples below this share of the most connections held are left out of the fit: the first
/// seconds carry the processes' own start-up (threads, rings, first pages of the tables).
pub const STEADY_FROM: f64 = 0.2;
/// Fewer samples than this in the steady part give no slope.
pub const MIN_SAMPLES: usize = 3;

/// One sample: connections established and what was measured with them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SlopeSample {
    pub established: u64,
    /// MemFree's drop from the baseline.
    pub drop: u64,
    pub slab: u64,
    pub server_rss: u64,
    pub load_rss: u64,
}

/// The least-squares line y = a + b·x as (a, b, r²); `None` when the x values do not vary.
fn fit(xs: &[f64], ys: &[f64]) -> Option<(f64, f64, f64)> {
    crate::stats::line::least_squares(xs, ys).map(|l| (l.intercept, l.slope, l.r_squared))
}

/// The steady slope of a run's samples; `None` with too few steady samples or no growth.
pub fn steady_slope(samples: &[SlopeSample]) -> Option<Slope> {
    let most = samples.iter().map(|s| s.established).max()?;
    let floor = (most as f64 * STEADY_FROM).ceil() as u64;
    let steady: Vec<&SlopeSample> = samples.iter().filter(|s| s.established >= floor.max(1)).collect();
    if steady.len() < MIN_SAMPLES {
        return None;
    }
    let xs: Vec<f64> = steady.iter().map(|s| s.established as f64).collect();
    let by = |part: fn(&SlopeSample) -> u64| {
        let ys: Vec<f64> = steady.iter().map(|s| part(s) as f64).collect();
        fit(&xs, &ys)
    };
    let (_, total, r_squared) = by(|s| s.drop)?;
    let slope_of = |part: fn(&SlopeSample) -> u64| by(part).map_or(0.0, |(_, b, _)| b);
    Some(Slope {
        total,
        kernel_slab: slope_of(|s| s.slab),
        server_rss: slope_of(|s| s.server_rss),
        load_rss: slope_of(|s| s.load_rss),
        r_squared,
        samples: steady.len(),
        from_connections: steady.iter().map(|s| s.established).min().unwrap_or(0),
        to_connections: most,
    })
}

/// Connections a budget holds at a slope: the budget over the cost of one more connection
/// (what was set up once is not charged to the connections).
pub fn connections_at_slope(budget: u64, slope: &Slope) -> Option<f64> {
    (slope.total > 0.0).then(|| budget as f64 / slope.total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: u64, per: u64, fixed: u64) -> SlopeSample {
        SlopeSample {
            established: n,
            drop: fixed + per * n,
            slab: per / 2 * n,
            server_rss: 40_000_000 + 300 * n,
            load_rss: 200 * n,
        }
    }

    #[test]
    fn a_fixed_start_up_cost_is_not_charged_to_the_connections() {
        // 9,000 B a connection plus 300 MB set up once: the average at 100k says 12 KB, the
        // slope 9 KB.
        let samples: Vec<_> = (1..=10).map(|i| sample(i * 10_000, 9_000, 300_000_000)).collect();
        let s = steady_slope(&samples).unwrap();
        assert!((s.total - 9_000.0).abs() < 1e-6, "{s:?}");
        assert!((s.kernel_slab - 4_500.0).abs() < 1e-6);
        assert!((s.server_rss - 300.0).abs() < 1e-6 && (s.load_rss - 200.0).abs() < 1e-6);
        assert!((s.r_squared - 1.0).abs() < 1e-12);
        assert_eq!((s.from_connections, s.to_connections, s.samples), (20_000, 100_000, 9));
        let at = connections_at_slope(6 << 30, &s).unwrap();
        assert!((at - (6u64 << 30) as f64 / 9_000.0).abs() < 1e-6);
    }

    #[test]
    fn the_start_up_transient_is_left_out() {
        // The first sample (5% of the run) carries a 1 GB jump; the fit starts past it.
        let mut samples = vec![SlopeSample { established: 5_000, drop: 1 << 30, ..Default::default() }];
        samples.extend((1..=5).map(|i| sample(i * 20_000, 8_000, 0)));
        let s = steady_slope(&samples).unwrap();
        assert!((s.total - 8_000.0).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn too_few_samples_or_no_growth_give_no_slope() {
        assert_eq!(steady_slope(&[]), None);
        assert_eq!(steady_slope(&[sample(10, 1, 0), sample(20, 1, 0)]), None);
        let flat = [sample(100, 1, 0); 5];
        assert_eq!(steady_slope(&flat), None);
        let zero = Slope::default();
        assert_eq!(connections_at_slope(1 << 30, &zero), None);
    }

    proptest! {
        #[test]
        fn a_line_with_noise_is_recovered(per in 1_000u64..20_000, fixed in 0u64..1_000_000_000, noise in 0u64..4096) {
            // MemFree moves by a page here and there; the slope stays within a byte or two.
            let samples: Vec<_> = (1..=30u64)
                .map(|i| {
                    let mut s = sample(i * 10_000, per, fixed);
                    s.drop += if i % 2 == 0 { noise } else { 0 };
                    s
                })
                .collect();
            let s = steady_slope(&samples).unwrap();
            prop_assert!((s.total - per as f64).abs() < 1.0, "{} vs {}", s.total, per);
        }
    }
}
