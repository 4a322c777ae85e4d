//! UTC time stamps without a date crate: days since 1970 to a civil date (Howard Hinnant's
//! `civil_from_days`, exact for the proleptic Gregorian calendar).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch now.
pub fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// (year, month 1..=12, day 1..=31) of a day counted from 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: i64,
    minute: i64,
    second: i64,
}

fn utc(unix_seconds: i64) -> Utc {
    let (year, month, day) = civil_from_days(unix_seconds.div_euclid(86_400));
    let s = unix_seconds.rem_euclid(86_400);
    Utc { year, month, day, hour: s / 3600, minute: s % 3600 / 60, second: s % 60 }
}

/// RFC 3339 in UTC, e.g. `2026-11-27T22:30:00Z`.
pub fn rfc3339(unix_seconds: i64) -> String {
    let t = utc(unix_seconds);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year, t.month, t.day, t.hour, t.minute, t.second)
}

/// A stamp for file names that sorts by time, e.g. `20261127T223000Z`.
pub fn file_stamp(unix_seconds: i64) -> String {
    let t = utc(unix_seconds);
    format!("{:04}{:02}{:02}T{:02}{:02}{:02}Z", t.year, t.month, t.day, t.hour, t.minute, t.second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29)); // a leap day in a /400 year
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(47_540), (2100, 2, 28)); // 2100 is not a leap year
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
    }

    #[test]
    fn round_trips_every_day_for_centuries() {
        // Walk day by day and check the calendar advances by exactly one day each time.
        let days_in = |y: i64, m: u32| match m {
            4 | 6 | 9 | 11 => 30,
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            _ => 31,
        };
        let mut prev = civil_from_days(-80_000);
        for d in -79_999..80_000 {
            let (y, m, day) = civil_from_days(d);
            let expect = if prev.2 < days_in(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!((y, m, day), expect, "day {d}");
            prev = (y, m, day);
        }
    }

    #[test]
    fn formats() {
        // 2026-11-27T22:30:00Z
        let t = 1_795_818_600;
        assert_eq!(rfc3339(t), "2026-11-27T22:30:00Z");
        assert_eq!(file_stamp(t), "20261127T223000Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_399), "2000-02-28T23:59:59Z");
        assert_eq!(rfc3339(951_868_800), "2000-03-01T00:00:00Z");
    }
}
