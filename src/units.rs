//! Human units on the command line and in scenario files: counts (`10k`, `2m`), durations
//! (`500ms`, `30s`, `2m`, `1h`) and byte sizes (`40KiB`, `2GiB`, `4096`). A value that does not fit
//! its type is an error, never a saturated number or a panic.

use std::ops::RangeInclusive;
use std::time::Duration;

/// 2^64 as a float: products at or above it do not fit a u64 (`u64::MAX as f64` rounds up to it).
const U64_END: f64 = 18_446_744_073_709_551_616.0;

/// `num` (digits, perhaps with a decimal point) times `mult`, as a u64: exact for whole numbers,
/// rounded otherwise, and refused rather than saturated when it does not fit.
fn scaled(s: &str, num: &str, mult: u64, what: &str) -> Result<u64, String> {
    let too_large = || format!("{s:?} is too large (at most {})", u64::MAX);
    if let Ok(whole) = num.parse::<u64>() {
        return whole.checked_mul(mult).ok_or_else(too_large);
    }
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not {what}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not {what}"));
    }
    let x = (v * mult as f64).round();
    if x >= U64_END {
        return Err(too_large());
    }
    Ok(x as u64)
}

/// A count: digits with an optional `k` (10^3), `m` (10^6) or `g` (10^9) suffix; a decimal
/// point is allowed before a suffix (`1.5m`). Underscores are ignored (`2_000_000`).
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "").to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1_000),
        Some('m') => (&t[..t.len() - 1], 1_000_000),
        Some('g') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (&t[..], 1),
    };
    let what = "a count (e.g. 5000, 10k, 2m)";
    if mult == 1 {
        // No fractions without a suffix: 1.5 connections is not a count.
        return match num.parse::<u64>() {
            Ok(n) => Ok(n),
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                Err(format!("{s:?} is too large (at most {})", u64::MAX))
            }
            Err(_) => Err(format!("{s:?} is not {what}")),
        };
    }
    scaled(s, num, mult, what)
}

/// A duration as seconds, unchecked against what a `Duration` holds.
fn duration_secs(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 2m)"))?;
    let secs = match unit.trim() {
        "ns" => v / 1e9,
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "" | "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(secs)
}

/// A duration: a number with a unit `ns`, `us`, `ms`, `s`, `m`, `h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(duration_secs(s)?).map_err(|_| format!("{s:?} is too long"))
}

/// A parser for a duration flag that accepts only `range`; its message says the range (clap
/// adds the flag's name).
pub fn duration_in(
    range: RangeInclusive<Duration>,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| {
        let secs = duration_secs(s)?;
        let out_of_range = || format!("{s:?} is out of range: {}", duration_range(&range));
        let d = Duration::try_from_secs_f64(secs).map_err(|_| out_of_range())?;
        if range.contains(&d) { Ok(d) } else { Err(out_of_range()) }
    }
}

/// `must be in 0s..=8760h`, the words every duration range check uses.
pub fn duration_range(range: &RangeInclusive<Duration>) -> String {
    format!("must be in {}..={}", human_duration(*range.start()), human_duration(*range.end()))
}

/// A duration in the largest unit `parse_duration` reads that writes it whole: `8760h`, `90s`,
/// `250ms`, `1500us`, `7ns`.
pub fn human_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    let units: [(u128, &str); 5] =
        [(3_600_000_000_000, "h"), (60_000_000_000, "m"), (1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")];
    for (size, unit) in units {
        if ns >= size && ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    if ns == 0 { "0s".into() } else { format!("{ns}ns") }
}

/// A byte size: a number with an optional unit `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB` (powers of
/// 1024) or `KB`, `MB`, `GB` (powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!("{s:?}: unknown unit (use B, KiB, MiB, GiB, KB, MB or GB)"));
        }
    };
    scaled(s, num, mult, "a size (e.g. 4096, 40KiB, 2GiB)")
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes as `1.5 GiB`, `12.3 KiB` or `512 B`.
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// `412_345` -> `412_000`: a count a person would ask for.
pub fn round_down_3_digits(n: u64) -> u64 {
    let mut unit = 1;
    while n / unit >= 1000 {
        unit *= 10;
    }
    n / unit * unit
}

/// A count as `-c` takes it: `412k`, `1.23m`, `950`.
pub fn short_count(n: u64) -> String {
    let trim = |s: String| s.trim_end_matches('0').trim_end_matches('.').to_string();
    if n >= 1_000_000 && n.is_multiple_of(10_000) {
        format!("{}m", trim(format!("{:.2}", n as f64 / 1e6)))
    } else if n >= 1_000 && n.is_multiple_of(10) {
        format!("{}k", trim(format!("{:.2}", n as f64 / 1e3)))
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(parse_count("5000"), Ok(5000));
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("2M"), Ok(2_000_000));
        assert_eq!(parse_count("1.5m"), Ok(1_500_000));
        assert_eq!(parse_count("2_000_000"), Ok(2_000_000));
        assert!(parse_count("ten").is_err());
        assert!(parse_count("-1k").is_err());
        // Past 2^64: refused, not saturated to u64::MAX.
        assert_eq!(parse_count("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_count("18446744073709551616").unwrap_err().contains("too large"));
        assert!(parse_count("99999999999999999999g").unwrap_err().contains("too large"));
        assert!(parse_count("18446744073709552k").unwrap_err().contains("too large"));
        assert_eq!(parse_count("18446744073709551k"), Ok(18_446_744_073_709_551_000));
        assert!(parse_count("nank").is_err() && parse_count("infm").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("3 weeks").is_err());
        // 10^20 s does not fit a Duration: refused, not a panic.
        assert!(parse_duration("100000000000000000000").unwrap_err().contains("too long"));
        for odd in ["", "NaN", "inf", "-1s", "1e3s", ".s"] {
            assert!(parse_duration(odd).is_err(), "{odd:?}");
        }
    }

    #[test]
    fn duration_ranges_name_their_bounds() {
        let year = Duration::from_secs(8760 * 3600);
        let p = duration_in(Duration::ZERO..=year);
        assert_eq!(p("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(p("8760h"), Ok(year));
        assert_eq!(p("8761h").unwrap_err(), "\"8761h\" is out of range: must be in 0s..=8760h");
        assert!(p("100000000000000000000").unwrap_err().ends_with("must be in 0s..=8760h"));
        let p = duration_in(Duration::from_millis(1)..=Duration::from_secs(90));
        assert_eq!(p("0.5ms").unwrap_err(), "\"0.5ms\" is out of range: must be in 1ms..=90s");
        assert_eq!(human_duration(Duration::from_nanos(1500)), "1500ns");
        assert_eq!(human_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("40KiB"), Ok(40 * 1024));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert!(parse_bytes("2 parsecs").is_err());
        assert!(parse_bytes("16777216TiB").is_err());
        assert!(parse_bytes("99999999999999999999GiB").unwrap_err().contains("too large"));
        // Whole numbers are exact: u64::MAX itself fits.
        assert_eq!(parse_bytes("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert!(parse_bytes("-1").is_err() && parse_bytes("NaN").is_err());
    }

    proptest::proptest! {
        /// Any text: an answer or an error, never a panic, and a duration that fits.
        #[test]
        fn parsers_never_panic(s in "[0-9.]{0,30}[a-zA-Z]{0,4}") {
            let _ = parse_count(&s);
            let _ = parse_bytes(&s);
            let _ = parse_duration(&s);
            let _ = duration_in(Duration::ZERO..=Duration::from_secs(1))(&s);
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
    }

    #[test]
    fn rounding_and_short_counts_parse_back() {
        assert_eq!(round_down_3_digits(412_345), 412_000);
        assert_eq!(round_down_3_digits(999), 999);
        assert_eq!(round_down_3_digits(1_234_567), 1_230_000);
        for (n, s) in [(412_000, "412k"), (1_230_000, "1.23m"), (2_000_000, "2m"), (950, "950"), (5_430, "5.43k")] {
            assert_eq!(short_count(n), s);
            assert_eq!(parse_count(s), Ok(n));
        }
    }
}
