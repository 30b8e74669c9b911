//! UTC calendar dates and RFC 3339 timestamps from the system clock,
//! without a date-time crate (the stub carries no code it can do without).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A day of the proleptic Gregorian calendar, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// Field order makes the derived order chronological.
    pub year: i32,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
}

impl fmt::Display for Date {
    /// `2026-12-04`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl FromStr for Date {
    type Err = ();

    /// Exactly `YYYY-MM-DD`, with a month and a day in range.
    fn from_str(s: &str) -> Result<Date, ()> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(());
        }
        let num = |range: std::ops::Range<usize>| -> Result<u32, ()> {
            let digits = &s[range];
            if !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(());
            }
            digits.parse().map_err(|_| ())
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return Err(());
        }
        Ok(Date {
            year: i32::try_from(year).map_err(|_| ())?,
            month: u8::try_from(month).map_err(|_| ())?,
            day: u8::try_from(day).map_err(|_| ())?,
        })
    }
}

/// An instant, as the logger prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// The UTC day.
    pub date: Date,
    /// Seconds since midnight UTC, 0–86399.
    second_of_day: u32,
    micros: u32,
}

impl Timestamp {
    /// Now, from the system clock; a clock before 1970 reads as 1970.
    pub fn now() -> Timestamp {
        Timestamp::at(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    /// The instant `since_epoch` after 1970-01-01T00:00:00Z.
    pub fn at(since_epoch: Duration) -> Timestamp {
        let secs = since_epoch.as_secs();
        let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
        Timestamp {
            date: civil_from_days(days),
            second_of_day: u32::try_from(secs % 86_400).expect("below 86400"),
            micros: since_epoch.subsec_micros(),
        }
    }
}

impl fmt::Display for Timestamp {
    /// `2026-12-04T16:35:00.123456Z`, the format `tracing-subscriber` used.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.second_of_day;
        write!(
            f,
            "{}T{:02}:{:02}:{:02}.{:06}Z",
            self.date,
            s / 3600,
            s / 60 % 60,
            s % 60,
            self.micros
        )
    }
}

/// The date `days` days after 1970-01-01: Howard Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html>), which counts in
/// 400-year eras of 146,097 days starting on March 1st so that the leap day
/// is the last day of a year.
fn civil_from_days(days: i64) -> Date {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    Date {
        year: i32::try_from(year).unwrap_or(i32::MAX),
        month: u8::try_from(month).expect("1..=12"),
        day: u8::try_from(day).expect("1..=31"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_by_table() {
        // Expected values from `date -u -d @<secs> +%FT%T`.
        let cases: &[(u64, u32, &str)] = &[
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000005Z"),
            (951_868_799, 999_999, "2000-02-29T23:59:59.999999Z"),
            (1_709_251_199, 0, "2024-02-29T23:59:59.000000Z"),
            (1_709_251_200, 0, "2024-03-01T00:00:00.000000Z"),
            (1_798_373_700, 123_456, "2026-12-27T12:15:00.123456Z"),
            (4_102_444_800, 0, "2100-01-01T00:00:00.000000Z"),
            (4_107_456_000, 0, "2100-02-28T00:00:00.000000Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000000Z"),
        ];
        for (secs, micros, want) in cases {
            let at = Duration::new(*secs, micros * 1000);
            assert_eq!(Timestamp::at(at).to_string(), *want, "{secs}");
        }
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_previous_one() {
        let mut prev = civil_from_days(-1);
        assert_eq!(prev.to_string(), "1969-12-31");
        for days in 0..146_097 {
            let date = civil_from_days(days);
            assert!(date > prev, "{date} after {prev}");
            let next_day = date.day == prev.day + 1 && date.month == prev.month;
            let next_month = date.day == 1
                && ((date.month == prev.month + 1 && date.year == prev.year)
                    || (date.month == 1 && prev.month == 12 && date.year == prev.year + 1));
            assert!(next_day || next_month, "{prev} → {date}");
            assert_eq!(date.to_string().parse::<Date>(), Ok(date));
            prev = date;
        }
    }

    #[test]
    fn dates_parse_strictly() {
        for bad in [
            "2026-1-04",
            "2026-13-01",
            "2026-00-10",
            "2026-12-32",
            "+026-12-04",
            "2026_12_04",
            "",
        ] {
            assert_eq!(bad.parse::<Date>(), Err(()), "{bad}");
        }
    }
}
