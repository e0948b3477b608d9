//! A cron line as sidekiq-cron reads it (through fugit): 5 fields, or 6 with seconds first;
//! `@hourly`-style names; ranges, steps, lists, month and day names, `L` and `#`; an optional
//! time-zone suffix (`0 9 * * 1-5 Europe/Berlin`, `+09:00`); the common natural-language phrases
//! ([`crate::nat`]). The fields are parsed by `croner`.
//!
//! Daylight saving time follows croner's rule (the Open Cron Pattern Specification's): a job
//! at a fixed time (second, minute and hour each one value) that falls in the hour skipped at
//! spring-forward runs at the first instant after it, and runs once, at the first of the two
//! instants, on the hour repeated at fall-back; a job with a wildcard or step in those fields
//! runs on real time (every real hour of a doubled hour, none in a skipped one). fugit skips
//! the first and doubles the second; outside those hours the two give the same ticks.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::{Cron, CronDateTime};

/// The zone a cron line's fields are read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    /// An IANA zone (`Europe/Berlin`, `UTC`).
    Named(chrono_tz::Tz),
    /// A fixed offset (`+09:00`, `-0530`).
    Offset(FixedOffset),
}

impl Zone {
    /// An IANA name or an offset (`+09:00`, `+0900`), as fugit takes them.
    pub fn parse(text: &str) -> Option<Zone> {
        if let Ok(tz) = text.parse::<chrono_tz::Tz>() {
            return Some(Zone::Named(tz));
        }
        let (sign, digits) = match text.as_bytes().first()? {
            b'+' => (1, &text[1..]),
            b'-' => (-1, &text[1..]),
            _ => return None,
        };
        let digits: String = digits.chars().filter(|c| *c != ':').collect();
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let hours: i32 = digits[..2].parse().ok()?;
        let minutes: i32 = digits[2..].parse().ok()?;
        if hours > 14 || minutes >= 60 {
            return None;
        }
        FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)).map(Zone::Offset)
    }

    /// `TZ` when set to a zone this knows, else UTC: the zone sidekiq-cron reads lines without
    /// a suffix in (fugit takes the process's local zone, `TZ` first).
    pub fn from_env() -> Zone {
        std::env::var("TZ")
            .ok()
            .and_then(|tz| Zone::parse(tz.trim_start_matches(':')))
            .unwrap_or(Zone::Named(chrono_tz::UTC))
    }
}

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Zone::Named(tz) => write!(f, "{}", tz.name()),
            Zone::Offset(o) => write!(f, "{o}"),
        }
    }
}

/// Why a cron line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

/// fugit's names for common lines (lower case only, as fugit).
const NAMES: [(&str, &str); 8] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@noon", "0 12 * * *"),
    ("@hourly", "0 * * * *"),
];

/// A parsed cron line and the zone its fields are read in.
#[derive(Clone, Debug)]
pub struct CronLine {
    text: String,
    cron: Cron,
    zone: Zone,
}

impl CronLine {
    /// Parses `text`, reading it in its own zone suffix, else in `default_zone`.
    pub fn parse(text: &str, default_zone: Zone) -> Result<CronLine, CronError> {
        let mut tokens: Vec<&str> = text.split_whitespace().collect();
        let refuse = |why: String| CronError(format!("cron line {text:?} {why}"));
        if tokens.is_empty() {
            return Err(refuse("is empty".into()));
        }
        let mut zone = default_zone;
        // A zone follows 5 or 6 fields, an @name, or natural language.
        let words =
            tokens[0].starts_with('@') || tokens[0].chars().next().is_some_and(char::is_alphabetic);
        let zone_allowed = if words { 2 } else { 6 };
        if tokens.len() >= zone_allowed {
            let last = tokens[tokens.len() - 1];
            match Zone::parse(last) {
                Some(z) => {
                    zone = z;
                    tokens.pop();
                }
                None if last.contains('/')
                    && last.chars().next().is_some_and(char::is_alphabetic) =>
                {
                    return Err(refuse(format!("names an unknown time zone {last:?}")));
                }
                None => {}
            }
        }
        let fields = if tokens[0].starts_with('@') {
            if tokens.len() != 1 {
                return Err(refuse("has more after its @name than a time zone".into()));
            }
            NAMES
                .iter()
                .find(|(name, _)| *name == tokens[0])
                .map(|(_, line)| line.to_string())
                .ok_or_else(|| {
                    refuse(format!(
                        "uses an unknown name {:?} (known: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @noon, @hourly)",
                        tokens[0]
                    ))
                })?
        } else if tokens[0].chars().next().is_some_and(char::is_alphabetic) {
            // fugit's natural language: `every day at 5pm` and the like.
            crate::nat::to_cron(&tokens).map_err(refuse)?
        } else {
            if tokens.len() != 5 && tokens.len() != 6 {
                return Err(refuse(format!(
                    "has {} fields: 5 (minute hour day month weekday) or 6 (seconds first) are read",
                    tokens.len()
                )));
            }
            // fugit's `&` after the weekday field (day of month AND weekday) is croner's `+` before it.
            let last = tokens.len() - 1;
            let mut owned: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
            if let Some(dow) = owned[last].strip_suffix('&') {
                owned[last] = format!("+{dow}");
            }
            owned.join(" ")
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(&fields)
            .map_err(|e| refuse(format!("is not valid: {e}")))?;
        Ok(CronLine {
            text: text.to_string(),
            cron,
            zone,
        })
    }

    /// The line as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The zone its fields are read in.
    pub fn zone(&self) -> Zone {
        self.zone
    }

    /// The first tick after `after` (never `after` itself).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.find(after, false, true)
    }

    /// The latest tick at or before `at`.
    pub fn latest_at(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.find(at, true, false)
    }

    /// Ticks in `(after, upto]`, newest first, at most `limit`.
    pub fn ticks_back(
        &self,
        after: DateTime<Utc>,
        upto: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut ticks = Vec::new();
        let mut cursor = self.latest_at(upto);
        while let Some(t) = cursor {
            if t <= after || ticks.len() >= limit {
                break;
            }
            ticks.push(t);
            cursor = self.find(t, false, false);
        }
        ticks
    }

    fn find(&self, at: DateTime<Utc>, inclusive: bool, forward: bool) -> Option<DateTime<Utc>> {
        // Ticks fall on whole seconds.
        let at = DateTime::from_timestamp(at.timestamp(), 0)?;
        match self.zone {
            Zone::Named(tz) => find_in(&self.cron, at.with_timezone(&tz), inclusive, forward),
            Zone::Offset(offset) => {
                find_in(&self.cron, at.with_timezone(&offset), inclusive, forward)
            }
        }
    }
}

fn find_in<Z: TimeZone>(
    cron: &Cron,
    at: DateTime<Z>,
    inclusive: bool,
    forward: bool,
) -> Option<DateTime<Utc>>
where
    DateTime<Z>: CronDateTime,
{
    let found = if forward {
        cron.find_next_occurrence(&at, inclusive)
    } else {
        cron.find_previous_occurrence(&at, inclusive)
    };
    found.ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn line(text: &str) -> CronLine {
        CronLine::parse(text, Zone::Named(chrono_tz::UTC)).unwrap()
    }

    fn next_n(line: &CronLine, from: &str, n: usize) -> Vec<String> {
        let mut at = utc(from);
        (0..n)
            .map(|_| {
                at = line.next_after(at).unwrap();
                at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            })
            .collect()
    }

    #[test]
    fn six_fields_put_seconds_first_and_names_and_zones_are_read() {
        assert_eq!(
            next_n(&line("*/20 * * * * *"), "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-01T00:00:20Z",
                "2026-01-01T00:00:40Z",
                "2026-01-01T00:01:00Z"
            ]
        );
        assert_eq!(
            next_n(&line("0 0 * * * *"), "2026-01-01T00:00:00Z", 1),
            ["2026-01-01T01:00:00Z"]
        );
        assert_eq!(
            next_n(&line("@noon Europe/Berlin"), "2026-01-01T00:00:00Z", 1),
            ["2026-01-01T11:00:00Z"]
        );
        assert_eq!(
            next_n(&line("0 9 * * mon-fri +09:00"), "2026-01-02T00:00:00Z", 2),
            ["2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z"]
        );
        assert_eq!(
            line("0 9 * * 1 Asia/Tokyo").zone().to_string(),
            "Asia/Tokyo"
        );
    }

    #[test]
    fn bad_lines_say_why() {
        let err = |t: &str| {
            CronLine::parse(t, Zone::Named(chrono_tz::UTC))
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("61 * * * *").contains("is not valid"),
            "{}",
            err("61 * * * *")
        );
        assert!(err("0 9 * * * Mars/Olympus").contains("unknown time zone \"Mars/Olympus\""));
        assert!(
            err("every month on the 1st").contains("not a natural-language schedule rustq reads")
        );
        assert!(err("@reboot").contains("unknown name"));
        assert!(err("* * * *").contains("has 4 fields"));
    }

    #[test]
    fn ticks_back_are_newest_first_and_bounded() {
        let l = line("* * * * *");
        let ticks = l.ticks_back(utc("2026-01-01T00:00:00Z"), utc("2026-01-01T00:05:30Z"), 10);
        assert_eq!(ticks.len(), 5);
        assert_eq!(ticks[0], utc("2026-01-01T00:05:00Z"));
        assert_eq!(ticks[4], utc("2026-01-01T00:01:00Z"));
        assert_eq!(
            l.ticks_back(utc("2020-01-01T00:00:00Z"), utc("2026-01-01T00:05:30Z"), 3)
                .len(),
            3
        );
    }

    #[test]
    fn dst_neither_doubles_nor_loses_a_fixed_time_run() {
        // Europe/Berlin: 2026-03-29 02:00 → 03:00 (spring-forward), 2026-10-25 03:00 → 02:00 (fall-back).
        let at_0230 = line("30 2 * * * Europe/Berlin");
        assert_eq!(
            next_n(&at_0230, "2026-03-27T12:00:00Z", 3),
            // 02:30 CET on the 28th, the first instant after the skipped hour (03:00 CEST) on the
            // 29th, 02:30 CEST on the 30th.
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ]
        );
        assert_eq!(
            next_n(&at_0230, "2026-10-23T12:00:00Z", 3),
            // 02:30 comes twice on the 25th (CEST, then CET): one run, at the first.
            [
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z"
            ]
        );
        // An hourly line runs on real time: each of the 25 real hours of the fall-back day.
        let hourly = line("0 * * * * Europe/Berlin");
        let day = hourly.ticks_back(
            utc("2026-10-24T22:00:00Z"),
            utc("2026-10-25T23:00:00Z"),
            100,
        );
        assert_eq!(day.len(), 25);
    }
}
