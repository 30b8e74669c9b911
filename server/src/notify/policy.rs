//! Delivery decisions as pure functions (tested by table below): what an
//! answer means, when to try again, when to give up, how fast to send.
//! The worker (`worker.rs`) only waits and performs them.

use std::time::{Duration, Instant};

/// First retry delay ceiling.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Largest retry delay ceiling.
pub const RETRY_CAP: Duration = Duration::from_secs(300);
/// Longest `Retry-After` obeyed; a receiver asking for more is retried then.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);
/// Attempts before a delivery is given up (about a day at [`RETRY_CAP`]).
pub const MAX_ATTEMPTS: u32 = 300;
/// Age after which a failing delivery is given up: news a day old is no
/// longer worth a page.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3_600);

/// What an attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver accepted the message: mark it sent.
    Accepted,
    /// Try again later (`after`: the receiver's `Retry-After`).
    Retry {
        after: Option<Duration>,
        error: String,
    },
    /// The receiver refused it for good (4xx other than 408/429, bad
    /// address, bad routing key): dead-letter it.
    Permanent(String),
}

/// The meaning of an HTTP answer with `status`, its `Retry-After` header and
/// (the start of) its body, at `now_unix_ms`.
pub fn classify_http(
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    now_unix_ms: u64,
) -> Outcome {
    let error = || {
        let body = body.trim();
        if body.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {body}")
        }
    };
    match status {
        200..=299 => Outcome::Accepted,
        408 | 425 | 429 | 500..=599 => Outcome::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now_unix_ms)),
            error: error(),
        },
        300..=399 => Outcome::Permanent(format!(
            "{}; redirects are not followed, give the final URL",
            error()
        )),
        _ => Outcome::Permanent(error()),
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date (IMF-fixdate),
/// capped at [`MAX_RETRY_AFTER`]. `None` when it is neither.
pub fn parse_retry_after(value: &str, now_unix_ms: u64) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at_ms = parse_imf_fixdate(value)?;
        Duration::from_millis(at_ms.saturating_sub(now_unix_ms))
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` in Unix milliseconds.
fn parse_imf_fixdate(value: &str) -> Option<u64> {
    let mut parts = value.split_whitespace();
    let (_weekday, day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if zone != "GMT" || parts.next().is_some() {
        return None;
    }
    let day: u64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day as i64);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3_600 + m * 60 + s;
    Some(secs * 1_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The delay before the next attempt after `attempts` failed ones: the
/// receiver's `Retry-After` when it gave one, else exponential backoff from
/// [`RETRY_BASE`] doubling to [`RETRY_CAP`] with "equal jitter" (a uniform
/// pick in the upper half of the ceiling, from `random`), so retries of many
/// deliveries spread out but never come back at once.
pub fn retry_delay(attempts: u32, retry_after: Option<Duration>, random: u64) -> Duration {
    if let Some(after) = retry_after {
        return after.min(MAX_RETRY_AFTER);
    }
    let factor = 1u32.checked_shl(attempts.min(31)).unwrap_or(u32::MAX);
    let ceiling = RETRY_BASE.saturating_mul(factor).min(RETRY_CAP);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    let half = ceiling_ms / 2;
    Duration::from_millis(half + random % (ceiling_ms - half + 1))
}

/// Whether a delivery that failed `attempts` times and was created `age`
/// ago is given up.
pub fn give_up(attempts: u32, age: Duration) -> bool {
    attempts >= MAX_ATTEMPTS || age >= MAX_AGE
}

/// Spaces the requests of one receiver at least `1 / rate` apart *as the
/// receiver sees them*: the next request may start `1 / rate` after the
/// previous one finished, so its arrival is at least that long after the
/// previous arrival whatever the latency. No burst credit: a burst is what
/// Slack and PagerDuty answer with 429.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: Option<Instant>,
}

impl RateLimiter {
    /// At most `per_sec` requests per second (at least 1).
    pub fn new(per_sec: u32) -> RateLimiter {
        RateLimiter {
            interval: Duration::from_secs(1) / per_sec.max(1),
            next: None,
        }
    }

    /// When the next request may start, given it is `now`.
    pub fn ready_at(&self, now: Instant) -> Instant {
        self.next.map_or(now, |next| next.max(now))
    }

    /// A request finished (answered or failed) at `finished`.
    pub fn finished(&mut self, finished: Instant) {
        self.next = Some(finished + self.interval);
    }
}

/// Default and highest rate of each receiver kind: Slack allows one message
/// per second per channel, PagerDuty about 120 events per minute per
/// routing key; webhooks and mail servers are the operator's to tune.
pub fn rate_limits(kind: &str) -> (u32, u32) {
    match kind {
        "slack" => (1, 1),
        "pagerduty" => (2, 2),
        "email" => (5, 100),
        _ => (10, 1_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT

    #[test]
    fn http_answers_are_classified_by_table() {
        let retry = |after: Option<u64>, error: &str| Outcome::Retry {
            after: after.map(Duration::from_secs),
            error: error.to_owned(),
        };
        let table: &[(u16, Option<&str>, &str, Outcome)] = &[
            (200, None, "ok", Outcome::Accepted),
            (202, None, "", Outcome::Accepted),
            (204, Some("5"), "", Outcome::Accepted),
            (
                429,
                Some("7"),
                "slow down",
                retry(Some(7), "HTTP 429: slow down"),
            ),
            (429, None, "", retry(None, "HTTP 429")),
            (429, Some("soon"), "", retry(None, "HTTP 429")),
            (503, Some("2"), "", retry(Some(2), "HTTP 503")),
            (500, None, "boom\n", retry(None, "HTTP 500: boom")),
            (408, None, "", retry(None, "HTTP 408")),
            (
                400,
                None,
                "invalid_payload",
                Outcome::Permanent("HTTP 400: invalid_payload".into()),
            ),
            (
                404,
                Some("1"),
                "channel_not_found",
                Outcome::Permanent("HTTP 404: channel_not_found".into()),
            ),
            (410, None, "", Outcome::Permanent("HTTP 410".into())),
            (
                301,
                None,
                "",
                Outcome::Permanent(
                    "HTTP 301; redirects are not followed, give the final URL".into(),
                ),
            ),
        ];
        for (status, after, body, expected) in table {
            assert_eq!(
                &classify_http(*status, *after, body, NOW),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        assert_eq!(parse_retry_after("30", NOW), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", NOW),
            Some(Duration::from_secs(30))
        );
        // A date in the past: retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", NOW),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", NOW), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 CET", NOW),
            None
        );
        assert_eq!(parse_retry_after("-1", NOW), None);
        assert_eq!(parse_retry_after("", NOW), None);
    }

    #[test]
    fn civil_dates_count_days_like_the_calendar() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(
            days_from_civil(1994, 11, 6) * 86_400_000 + 31_777_000,
            NOW as i64
        );
    }

    #[test]
    fn backoff_doubles_within_jitter_and_honours_retry_after() {
        for attempts in 0..40 {
            let ceiling = RETRY_BASE
                .saturating_mul(1u32.checked_shl(attempts.min(31)).unwrap_or(u32::MAX))
                .min(RETRY_CAP);
            for random in [0, 1, 499, u64::MAX] {
                let d = retry_delay(attempts, None, random);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "attempt {attempts}: {d:?} of {ceiling:?}"
                );
            }
        }
        assert_eq!(retry_delay(0, None, 0), Duration::from_millis(500));
        assert_eq!(retry_delay(3, None, 0), Duration::from_secs(4));
        assert_eq!(retry_delay(20, None, 0), RETRY_CAP / 2);
        assert_eq!(
            retry_delay(0, Some(Duration::from_secs(42)), 7),
            Duration::from_secs(42)
        );
        assert_eq!(
            retry_delay(0, Some(Duration::from_secs(1 << 20)), 7),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn deliveries_are_given_up_by_count_or_age() {
        assert!(!give_up(0, Duration::ZERO));
        assert!(!give_up(MAX_ATTEMPTS - 1, MAX_AGE - Duration::from_secs(1)));
        assert!(give_up(MAX_ATTEMPTS, Duration::ZERO));
        assert!(give_up(1, MAX_AGE));
    }

    #[test]
    fn rate_limiter_spaces_requests_after_the_previous_one_finished() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut slack = RateLimiter::new(1);
        assert_eq!(slack.ready_at(t0), t0);
        // A request that took 300 ms: the next starts 1 s after it ended.
        slack.finished(t0 + ms(300));
        assert_eq!(slack.ready_at(t0), t0 + ms(1_300));
        assert_eq!(
            slack.ready_at(t0 + ms(5_000)),
            t0 + ms(5_000),
            "idle time is no burst credit"
        );
        let mut pd = RateLimiter::new(2);
        pd.finished(t0);
        assert_eq!(pd.ready_at(t0), t0 + ms(500));
        let mut zero = RateLimiter::new(0);
        zero.finished(t0);
        assert_eq!(
            zero.ready_at(t0),
            t0 + ms(1_000),
            "a rate of 0 is taken as 1"
        );
    }

    #[test]
    fn rates_default_and_cap_per_kind() {
        assert_eq!(rate_limits("slack"), (1, 1));
        assert_eq!(rate_limits("pagerduty"), (2, 2));
        assert_eq!(rate_limits("webhook").0, 10);
        assert_eq!(rate_limits("email").0, 5);
    }
}
