//! A least-squares line through points: the steady slope of a capacity run (bytes per
//! connection) and the drift of a soak (bytes per hour) are both one.

/// y = intercept + slope·x, and how much of y's variance the line explains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    pub intercept: f64,
    pub slope: f64,
    pub r_squared: f64,
}

/// The least-squares line through (xs[i], ys[i]); `None` when the x values do not vary.
pub fn least_squares(xs: &[f64], ys: &[f64]) -> Option<Line> {
    let n = xs.len().min(ys.len());
    if n == 0 {
        return None;
    }
    let (xs, ys) = (&xs[..n], &ys[..n]);
    let (mx, my) = (xs.iter().sum::<f64>() / n as f64, ys.iter().sum::<f64>() / n as f64);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let syy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r_squared = if syy > 0.0 { sxy * sxy / (sxx * syy) } else { 1.0 };
    Some(Line { intercept: my - slope * mx, slope, r_squared })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_through_exact_points_and_a_flat_one() {
        let l = least_squares(&[1.0, 2.0, 3.0], &[5.0, 7.0, 9.0]).unwrap();
        assert!((l.slope - 2.0).abs() < 1e-12 && (l.intercept - 3.0).abs() < 1e-12 && l.r_squared > 0.999);
        let flat = least_squares(&[0.0, 10.0, 20.0], &[4.0, 4.0, 4.0]).unwrap();
        assert_eq!((flat.slope, flat.r_squared), (0.0, 1.0));
        assert_eq!(least_squares(&[3.0, 3.0], &[1.0, 2.0]), None, "x does not vary");
        assert_eq!(least_squares(&[], &[]), None);
    }
}
