//! The statistics of `c2m bench --ab`, and nothing else: two arms' samples (one value per round)
//! in, summaries, a test, an interval, a verdict and a sample size out.
//!
//! The choices, stated once (the report and the result JSON repeat them):
//! - **Spread**: the interquartile range (quantiles interpolated linearly, R's type 7) and the
//!   median absolute deviation (raw, not scaled by 1.4826).
//! - **Test**: Mann-Whitney U, two-sided. Up to [`EXACT_MAX_N`] rounds in all the p-value is
//!   exact: the permutation distribution of the rank sum over all ways to split the rounds into
//!   the two arms, with tied values given their mid-rank, so ties are handled exactly. Beyond
//!   that it is the normal approximation with the tie-corrected variance and a continuity
//!   correction. No normality is assumed: round-to-round noise on a shared box is skewed.
//! - **Correction**: Holm-Bonferroni over every metric compared in one run (the family), at
//!   [`ALPHA`]: the chance that an A/A run calls any metric different is at most 5%.
//! - **Interval**: the B/A ratio of medians with a 95% bootstrap percentile interval
//!   ([`BOOTSTRAP_RESAMPLES`] resamples of each arm with replacement, SplitMix64 seeded with
//!   [`BOOTSTRAP_SEED`], so a result recomputes to the same digits). It shows the size of the
//!   difference; it is per metric and not corrected, and with few rounds a percentile interval
//!   of a median is too narrow, which is why the verdict comes from the corrected test.
//! - **Rounds needed**: for a metric with no difference found, the rounds (both arms, a
//!   multiple of 4 for ABBA) at which a difference the size of the one observed, or of
//!   [`MIN_EFFECT`] of A's median if that is larger, is found with [`POWER`] at the Bonferroni
//!   level ALPHA / metrics. By simulation, not a formula: both arms are drawn from the rounds'
//!   own deviations from their arm's median (pooled), B shifted by that difference, and the same
//!   Mann-Whitney test run [`POWER_TRIALS`] times per size. A normal-theory size assumes a spread
//!   that a few rounds do not show: one outlying round (a connect burst that happened not to
//!   overflow) is what keeps 12 rounds from a verdict, and the simulation draws it as often as it
//!   came.

use crate::schema::ab::{Better, Verdict};

/// Family-wise error rate of one run's verdicts.
pub const ALPHA: f64 = 0.05;
/// Coverage of the B/A interval.
pub const INTERVAL_LEVEL: f64 = 0.95;
pub const BOOTSTRAP_RESAMPLES: usize = 4000;
pub const BOOTSTRAP_SEED: u64 = 0xc2ab_5eed;
/// Rounds in all (both arms) up to which Mann-Whitney's p-value is exact.
pub const EXACT_MAX_N: usize = 60;
/// The smallest difference worth finding, as a share of A's median (for the rounds needed).
pub const MIN_EFFECT: f64 = 0.05;
/// The chance of finding a difference of that size, for the rounds needed.
pub const POWER: f64 = 0.8;

/// The median; NaN for no values.
pub fn median(xs: &[f64]) -> f64 {
    quantile(&sorted(xs), 0.5)
}

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q` quantile of sorted values, interpolated linearly between order statistics (R type 7).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

/// Third quartile minus first.
pub fn iqr(xs: &[f64]) -> f64 {
    let s = sorted(xs);
    quantile(&s, 0.75) - quantile(&s, 0.25)
}

/// Median absolute deviation from the median (raw).
pub fn mad(xs: &[f64]) -> f64 {
    let m = median(xs);
    median(&xs.iter().map(|x| (x - m).abs()).collect::<Vec<_>>())
}

/// How a Mann-Whitney p-value was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PMethod {
    /// The permutation distribution of the mid-rank sum, ties included.
    Exact,
    /// Normal, tie-corrected variance, continuity correction.
    Normal,
}

/// A two-sided Mann-Whitney U test of A against B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// U of B: the pairs (a, b) with b > a, ties counting one half. Above `n_a * n_b / 2`, B
    /// tends to be larger.
    pub u_b: f64,
    pub p_value: f64,
    pub method: PMethod,
}

impl MannWhitney {
    /// Whether B's values tend to be larger than A's (ignoring significance).
    pub fn b_larger(&self, n_a: usize, n_b: usize) -> bool {
        self.u_b > (n_a * n_b) as f64 / 2.0
    }
}

/// Mid-ranks (1-based) of all values, A's first then B's, doubled so they are integers.
fn doubled_midranks(all: &[f64]) -> Vec<u64> {
    let mut idx: Vec<usize> = (0..all.len()).collect();
    idx.sort_by(|&i, &j| all[i].total_cmp(&all[j]));
    let mut ranks = vec![0u64; all.len()];
    let mut start = 0;
    while start < idx.len() {
        let mut end = start + 1;
        while end < idx.len() && all[idx[end]] == all[idx[start]] {
            end += 1;
        }
        // Ranks start+1 ..= end share their mean; doubled: start + 1 + end.
        for &i in &idx[start..end] {
            ranks[i] = (start + 1 + end) as u64;
        }
        start = end;
    }
    ranks
}

/// Mann-Whitney U, two-sided; p = 1 when either arm is empty.
pub fn mann_whitney(a: &[f64], b: &[f64]) -> MannWhitney {
    let (na, nb) = (a.len(), b.len());
    if na == 0 || nb == 0 {
        return MannWhitney { u_b: 0.0, p_value: 1.0, method: PMethod::Exact };
    }
    let all: Vec<f64> = a.iter().chain(b).copied().collect();
    let ranks = doubled_midranks(&all);
    let rank_sum_b2: u64 = ranks[na..].iter().sum();
    let u_b = rank_sum_b2 as f64 / 2.0 - (nb * (nb + 1)) as f64 / 2.0;
    if na + nb <= EXACT_MAX_N {
        MannWhitney { u_b, p_value: exact_p(&ranks, nb, rank_sum_b2), method: PMethod::Exact }
    } else {
        MannWhitney { u_b, p_value: normal_p(&all, na, nb, u_b), method: PMethod::Normal }
    }
}

/// P(|S - E| >= |s - E|) for S the doubled rank sum of `k` of the ranks drawn without
/// replacement: counts[j][s] is the number of ways to pick j ranks summing to s, built one rank
/// at a time. Counts are f64: exact below 2^53, and past it (C(60, 30) ~ 1.2e17) off by a
/// relative 1e-16, far below anything a p-value is read to.
fn exact_p(ranks: &[u64], k: usize, observed: u64) -> f64 {
    let max_sum: u64 = ranks.iter().sum();
    let width = max_sum as usize + 1;
    let mut counts = vec![vec![0f64; width]; k + 1];
    counts[0][0] = 1.0;
    for (i, &r) in ranks.iter().enumerate() {
        let r = r as usize;
        for j in (1..=k.min(i + 1)).rev() {
            let (lower, upper) = counts.split_at_mut(j);
            let (from, to) = (&lower[j - 1], &mut upper[0]);
            for s in (r..width).rev() {
                if from[s - r] != 0.0 {
                    to[s] += from[s - r];
                }
            }
        }
    }
    let n = ranks.len() as f64;
    // Doubled expectation of the rank sum: k (n + 1).
    let mean2 = k as f64 * (n + 1.0);
    let distance = (observed as f64 - mean2).abs();
    let (mut total, mut extreme) = (0.0, 0.0);
    for (s, &c) in counts[k].iter().enumerate() {
        total += c;
        // A hair of slack: distances are half-integers compared as floats.
        if (s as f64 - mean2).abs() >= distance - 1e-9 {
            extreme += c;
        }
    }
    (extreme / total).min(1.0)
}

fn normal_p(all: &[f64], na: usize, nb: usize, u_b: f64) -> f64 {
    let n = (na + nb) as f64;
    let s = sorted(all);
    let mut ties = 0.0;
    let mut i = 0;
    while i < s.len() {
        let j = s[i..].iter().take_while(|v| **v == s[i]).count();
        ties += (j * j * j - j) as f64;
        i += j;
    }
    let var = (na * nb) as f64 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let z = ((u_b - (na * nb) as f64 / 2.0).abs() - 0.5).max(0.0) / var.sqrt();
    (2.0 * (1.0 - normal_cdf(z))).clamp(0.0, 1.0)
}

/// The standard normal CDF (erfc to a relative error below 1.2e-7, Numerical Recipes' erfcc).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The standard normal quantile, by bisection on [`normal_cdf`] (only a few are needed).
pub fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-12.0, 12.0);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < p { lo = mid } else { hi = mid }
    }
    (lo + hi) / 2.0
}

/// Holm-Bonferroni adjusted p-values, in the order given: the k-th smallest is multiplied by
/// (m - k + 1), then made non-decreasing in that order and capped at 1. A metric is different at
/// family-wise level alpha when its adjusted p is below alpha.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (k, &i) in order.iter().enumerate() {
        running = running.max(((m - k) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed generator; deterministic from its
/// seed, which is all the bootstrap needs.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below n / 2^64).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The B/A ratio of medians with its bootstrap percentile interval at `level`; `None` when a
/// ratio is undefined (an arm is empty, or A has a value of 0 or less, so a resampled median
/// could be 0).
pub fn ratio_interval(a: &[f64], b: &[f64], resamples: usize, seed: u64, level: f64) -> Option<(f64, [f64; 2])> {
    if a.is_empty() || b.is_empty() || a.iter().any(|v| *v <= 0.0) {
        return None;
    }
    let point = median(b) / median(a);
    let mut rng = SplitMix64(seed);
    let mut draw = |xs: &[f64]| -> f64 {
        let sample: Vec<f64> = (0..xs.len()).map(|_| xs[rng.below(xs.len())]).collect();
        median(&sample)
    };
    let mut ratios: Vec<f64> = (0..resamples).map(|_| draw(b) / draw(a)).collect();
    ratios.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    Some((point, [quantile(&ratios, tail), quantile(&ratios, 1.0 - tail)]))
}

/// The verdict for one metric: a difference only when its corrected p is below `alpha`, and then
/// better or worse by the direction in which B's values lie and which way is better.
pub fn verdict(test: &MannWhitney, p_adjusted: f64, n_a: usize, n_b: usize, better: Better, alpha: f64) -> Verdict {
    if p_adjusted >= alpha {
        return Verdict::NoDifference;
    }
    match (test.b_larger(n_a, n_b), better) {
        (true, Better::Higher) | (false, Better::Lower) => Verdict::BBetter,
        _ => Verdict::BWorse,
    }
}

/// Rounds per arm below which the exact test cannot reach `level` at all (no ties): the
/// smallest two-sided p with n per arm is 2 / C(2n, n).
pub fn fewest_per_arm(level: f64) -> usize {
    (1..).find(|&n| 2.0 / binomial(2 * n, n) <= level).expect("C(2n, n) grows without bound")
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Simulated runs per candidate size in [`rounds_needed`].
pub const POWER_TRIALS: usize = 200;
/// Rounds an arm beyond which [`rounds_needed`] stops looking (and says nothing).
const MAX_PER_ARM: usize = 1000;
/// Up to this many rounds in all the simulation uses the exact test, as the run itself would;
/// beyond, the normal approximation (the exact one costs n^3 per test, times the trials).
const SIMULATION_EXACT_MAX_N: usize = 16;

/// Rounds in all (both arms, a multiple of 4 for ABBA) at which a difference the size of the one
/// observed, or of `min_effect` x A's median if larger, is found with `power` at the per-metric
/// level `level` (see the module's notes). `None` when there is nothing to size from (A's median
/// and the observed difference are both 0) or more than 2 x 1000 rounds would be needed.
pub fn rounds_needed(a: &[f64], b: &[f64], min_effect: f64, level: f64, power: f64) -> Option<u32> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (ma, mb) = (median(a), median(b));
    let effect = (mb - ma).abs().max(min_effect * ma.abs());
    if effect <= 0.0 {
        return None;
    }
    let deviations: Vec<f64> = a.iter().map(|x| x - ma).chain(b.iter().map(|x| x - mb)).collect();
    let mut rng = SplitMix64(BOOTSTRAP_SEED);
    let mut n = fewest_per_arm(level);
    while n <= MAX_PER_ARM {
        if simulated_power(&deviations, effect, n, level, &mut rng) >= power {
            return Some((n * 2).div_ceil(4) as u32 * 4);
        }
        n = if n < 30 { n + 1 } else { n + n / 10 };
    }
    None
}

/// The share of [`POWER_TRIALS`] simulated runs of `n` rounds an arm in which the test finds B
/// (shifted by `effect`) different at `level`.
fn simulated_power(deviations: &[f64], effect: f64, n: usize, level: f64, rng: &mut SplitMix64) -> f64 {
    let mut draw =
        |shift: f64| -> Vec<f64> { (0..n).map(|_| shift + deviations[rng.below(deviations.len())]).collect() };
    let found = (0..POWER_TRIALS)
        .filter(|_| {
            let (a, b) = (draw(0.0), draw(effect));
            let p = if 2 * n <= SIMULATION_EXACT_MAX_N {
                mann_whitney(&a, &b).p_value
            } else {
                let all: Vec<f64> = a.iter().chain(&b).copied().collect();
                normal_p(&all, n, n, mann_whitney_u(&a, &b))
            };
            p < level
        })
        .count();
    found as f64 / POWER_TRIALS as f64
}

/// U of B alone, without a p-value.
fn mann_whitney_u(a: &[f64], b: &[f64]) -> f64 {
    let all: Vec<f64> = a.iter().chain(b).copied().collect();
    let ranks = doubled_midranks(&all);
    ranks[a.len()..].iter().sum::<u64>() as f64 / 2.0 - (b.len() * (b.len() + 1)) as f64 / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn summaries_on_known_data() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        // R: quantile(1:9, c(.25, .75)) = 3, 7.
        let nine: Vec<f64> = (1..=9).map(f64::from).collect();
        assert_eq!(iqr(&nine), 4.0);
        // R: quantile(c(1,2,3,4), .25) = 1.75, .75 = 3.25.
        assert_eq!(iqr(&[1.0, 2.0, 3.0, 4.0]), 1.5);
        // R: mad(c(1,2,3,4,100), constant = 1) = 1.
        assert_eq!(mad(&[1.0, 2.0, 3.0, 4.0, 100.0]), 1.0);
    }

    #[test]
    fn mann_whitney_textbook_exact() {
        // SciPy's mannwhitneyu example (males vs females): U = 17, exact two-sided p = 1/9.
        let males = [19.0, 22.0, 16.0, 29.0, 24.0];
        let females = [20.0, 11.0, 17.0, 12.0];
        let t = mann_whitney(&females, &males);
        assert_eq!(t.u_b, 17.0);
        assert_eq!(t.method, PMethod::Exact);
        assert!(close(t.p_value, 1.0 / 9.0, 1e-12), "{}", t.p_value);
        assert!(t.b_larger(4, 5));
        // Swapping the arms gives the other U (n_a n_b - U) and the same p.
        let s = mann_whitney(&males, &females);
        assert_eq!(s.u_b, 3.0);
        assert!(close(s.p_value, t.p_value, 1e-12));
    }

    #[test]
    fn mann_whitney_normal_approximation_matches_scipy() {
        // SciPy, method="asymptotic" (continuity corrected): p = 0.11134688653314041.
        let males = [19.0, 22.0, 16.0, 29.0, 24.0];
        let females = [20.0, 11.0, 17.0, 12.0];
        let all: Vec<f64> = females.iter().chain(&males).copied().collect();
        let p = normal_p(&all, 4, 5, 17.0);
        assert!(close(p, 0.111_346_886_533_140_41, 1e-6), "{p}");
    }

    #[test]
    fn mann_whitney_with_ties_is_exact_over_midranks() {
        // Complete separation, 3 vs 3: p = 2 / C(6, 3) = 0.1.
        let t = mann_whitney(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]);
        assert!(close(t.p_value, 0.1, 1e-12));
        // All tied: nothing to tell apart.
        assert_eq!(mann_whitney(&[0.0; 4], &[0.0; 4]).p_value, 1.0);
        // A = {1, 2, 2}, B = {2, 3, 3}: midranks 1, 3, 3 | 3, 5.5, 5.5, B's sum 14. Of the 20
        // ways to pick B's three ranks, 3 sum to 14 (5.5 + 5.5 + a 3) and 3 to 7 (1 + two 3s),
        // as far from the mean 10.5; every other sum lies between 9 and 12.
        let t = mann_whitney(&[1.0, 2.0, 2.0], &[2.0, 3.0, 3.0]);
        assert_eq!(t.u_b, 14.0 - 6.0);
        assert!(close(t.p_value, 6.0 / 20.0, 1e-12), "{}", t.p_value);
    }

    #[test]
    fn holm_on_known_values() {
        let adj = holm(&[0.01, 0.04, 0.03, 0.005]);
        for (got, want) in adj.iter().zip([0.03, 0.06, 0.06, 0.02]) {
            assert!(close(*got, want, 1e-12), "{adj:?}");
        }
        assert_eq!(holm(&[0.5, 0.9]), vec![1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn normal_functions() {
        assert!(close(normal_cdf(0.0), 0.5, 1e-7));
        assert!(close(normal_cdf(1.959_963_985), 0.975, 1e-7));
        assert!(close(normal_quantile(0.975), 1.959_964, 1e-5));
        assert!(close(normal_quantile(0.8), 0.841_621, 1e-5));
    }

    #[test]
    fn fewest_rounds_the_exact_test_needs() {
        // 2 / C(6,3) = 0.1, 2 / C(8,4) = 0.029, 2 / C(12,6) = 0.0022.
        assert_eq!(fewest_per_arm(0.05), 4);
        assert_eq!(fewest_per_arm(0.05 / 13.0), 6);
    }

    #[test]
    fn the_interval_is_seeded_and_brackets_a_clear_ratio() {
        let a = [100.0, 102.0, 98.0, 101.0, 99.0, 100.0];
        let b = [150.0, 153.0, 147.0, 151.0, 149.0, 150.0];
        let (point, ci) = ratio_interval(&a, &b, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, 0.95).unwrap();
        assert_eq!(point, 1.5);
        assert!(ci[0] <= 1.5 && 1.5 <= ci[1] && ci[0] > 1.4 && ci[1] < 1.6, "{ci:?}");
        assert_eq!(ratio_interval(&a, &b, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, 0.95).unwrap().1, ci);
        assert!(ratio_interval(&[0.0, 1.0], &b, 100, 1, 0.95).is_none());
    }

    #[test]
    fn verdicts_follow_which_way_is_better() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [11.0, 12.0, 13.0, 14.0, 15.0, 16.0];
        let t = mann_whitney(&a, &b);
        assert!(t.p_value < 0.01);
        assert_eq!(verdict(&t, t.p_value, 6, 6, Better::Higher, ALPHA), Verdict::BBetter);
        assert_eq!(verdict(&t, t.p_value, 6, 6, Better::Lower, ALPHA), Verdict::BWorse);
        assert_eq!(verdict(&t, 0.2, 6, 6, Better::Lower, ALPHA), Verdict::NoDifference);
    }

    /// Samples of a right-skewed noise (log-normal around `center`), like round-to-round jitter.
    fn draw(rng: &mut SplitMix64, n: usize, center: f64, spread: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                // Box-Muller.
                let (u1, u2) = (rng.unit().max(1e-300), rng.unit());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                center * (spread * z).exp()
            })
            .collect()
    }

    /// The family's verdicts for `metrics` metrics of `per_arm` rounds each, B shifted by
    /// `shift` (a factor) on the first metric only.
    fn family_verdicts(rng: &mut SplitMix64, metrics: usize, per_arm: usize, shift: f64) -> Vec<Verdict> {
        let samples: Vec<(Vec<f64>, Vec<f64>)> = (0..metrics)
            .map(|m| {
                let factor = if m == 0 { shift } else { 1.0 };
                (draw(rng, per_arm, 100.0, 0.1), draw(rng, per_arm, 100.0 * factor, 0.1))
            })
            .collect();
        let tests: Vec<MannWhitney> = samples.iter().map(|(a, b)| mann_whitney(a, b)).collect();
        let adjusted = holm(&tests.iter().map(|t| t.p_value).collect::<Vec<_>>());
        tests.iter().zip(adjusted).map(|(t, p)| verdict(t, p, per_arm, per_arm, Better::Higher, ALPHA)).collect()
    }

    #[test]
    fn a_over_a_finds_no_difference_in_at_least_95_percent_of_trials() {
        let mut rng = SplitMix64(17);
        for per_arm in [3, 6, 10] {
            let trials = 400;
            let clean = (0..trials)
                .filter(|_| family_verdicts(&mut rng, 13, per_arm, 1.0).iter().all(|v| *v == Verdict::NoDifference))
                .count();
            assert!(clean as f64 >= 0.95 * trials as f64, "{per_arm} rounds per arm: {clean} of {trials} clean");
        }
    }

    #[test]
    fn a_clear_shift_is_found_at_12_rounds() {
        let mut rng = SplitMix64(23);
        let trials = 200;
        // B 60% higher with a 10% log-spread: about 4.7 spreads apart. At 6 rounds an arm and 13
        // metrics only a complete separation of the arms is significant (p = 2 / 924 against
        // 0.05 / 13), which this shift gives almost always; 40% (3.4 spreads) gives it 85% of the
        // time.
        let found = (0..trials).filter(|_| family_verdicts(&mut rng, 13, 6, 1.6)[0] == Verdict::BBetter).count();
        assert!(found as f64 >= 0.9 * trials as f64, "found in {found} of {trials}");
    }

    #[test]
    fn rounds_needed_grows_with_noise_and_with_an_outlying_round() {
        let level = ALPHA / 13.0;
        // No spread at all: the exact test's floor (6 per arm at 0.05/13) -> 12 rounds.
        assert_eq!(rounds_needed(&[100.0; 4], &[100.0; 4], MIN_EFFECT, level, POWER), Some(12));
        let a = [100.0, 101.0, 99.0, 100.0, 100.5, 99.5];
        let quiet = rounds_needed(&a, &a, MIN_EFFECT, level, POWER).unwrap();
        let noisy = rounds_needed(&[80.0, 120.0, 90.0, 110.0, 95.0, 105.0], &a, MIN_EFFECT, level, POWER).unwrap();
        assert!(quiet >= 12 && noisy > quiet && noisy.is_multiple_of(4), "{quiet} {noisy}");
        // A 3x difference with one B round up among A's: 12 rounds are not enough.
        let rate_a = [25_000.0, 23_500.0, 31_000.0, 27_000.0, 23_000.0, 23_500.0];
        let rate_b = [8_000.0, 7_500.0, 7_600.0, 8_200.0, 7_500.0, 31_600.0];
        let t = mann_whitney(&rate_a, &rate_b);
        assert!(t.p_value * 13.0 > ALPHA, "{}", t.p_value);
        let needed = rounds_needed(&rate_a, &rate_b, MIN_EFFECT, level, POWER).unwrap();
        assert!(needed > 12, "{needed}");
        assert_eq!(rounds_needed(&[0.0; 3], &[0.0; 3], MIN_EFFECT, 0.05, POWER), None);
    }

    proptest::proptest! {
        #[test]
        fn mann_whitney_is_a_probability_and_symmetric(
            a in proptest::collection::vec(0u8..6, 1..8),
            b in proptest::collection::vec(0u8..6, 1..8),
        ) {
            let a: Vec<f64> = a.into_iter().map(f64::from).collect();
            let b: Vec<f64> = b.into_iter().map(f64::from).collect();
            let ab = mann_whitney(&a, &b);
            let ba = mann_whitney(&b, &a);
            proptest::prop_assert!(ab.p_value > 0.0 && ab.p_value <= 1.0);
            proptest::prop_assert!((ab.p_value - ba.p_value).abs() < 1e-9);
            proptest::prop_assert!((ab.u_b + ba.u_b - (a.len() * b.len()) as f64).abs() < 1e-9);
        }

        #[test]
        fn holm_never_lowers_a_p_value_and_keeps_their_order(p in proptest::collection::vec(0.0f64..1.0, 0..15)) {
            let adj = holm(&p);
            for i in 0..p.len() {
                proptest::prop_assert!(adj[i] >= p[i] && adj[i] <= 1.0);
                for j in 0..p.len() {
                    if p[i] < p[j] {
                        proptest::prop_assert!(adj[i] <= adj[j]);
                    }
                }
            }
        }

        #[test]
        fn the_exact_and_normal_p_values_agree_roughly_at_moderate_sizes(
            a in proptest::collection::vec(0.0f64..100.0, 12..16),
            b in proptest::collection::vec(0.0f64..100.0, 12..16),
        ) {
            let t = mann_whitney(&a, &b);
            let all: Vec<f64> = a.iter().chain(&b).copied().collect();
            let approx = normal_p(&all, a.len(), b.len(), t.u_b);
            proptest::prop_assert!((t.p_value - approx).abs() < 0.03, "exact {} normal {}", t.p_value, approx);
        }
    }
}
