//! Facts of Sidekiq's wire format that are not a job's fields: key names, timestamp encodings,
//! the retry backoff, the dead set's bounds and the backtrace encoding. Every other module takes
//! these from here, so a fact lives in one place.

use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;

/// Redis key names, exactly as Sidekiq spells them (no namespace).
pub mod keys {
    /// Set of every queue name that has been pushed to.
    pub const QUEUES: &str = "queues";
    /// Sorted set of scheduled jobs, scored by the time they should run.
    pub const SCHEDULE: &str = "schedule";
    /// Sorted set of jobs waiting to be retried, scored by the retry time.
    pub const RETRY: &str = "retry";
    /// Sorted set of jobs that ran out of retries, scored by the time they died.
    pub const DEAD: &str = "dead";
    /// Set of live process identities.
    pub const PROCESSES: &str = "processes";
    /// Set of paused queue names (Sidekiq Pro's pause; rustq honours it).
    pub const PAUSED: &str = "paused";
    /// Counter of jobs processed, ever, failures included.
    pub const STAT_PROCESSED: &str = "stat:processed";
    /// Counter of jobs that failed, ever.
    pub const STAT_FAILED: &str = "stat:failed";

    /// The list holding a queue's jobs: `queue:<name>`.
    pub fn queue(name: &str) -> String {
        format!("queue:{name}")
    }

    /// A daily stat counter: `stat:processed:2026-11-23` (UTC date).
    pub fn daily_stat(stat: &str, date: &str) -> String {
        format!("{stat}:{date}")
    }

    /// The hash of a process's busy jobs: `<identity>:work` (Sidekiq 7+).
    pub fn work(identity: &str) -> String {
        format!("{identity}:work")
    }

    /// The same hash under Sidekiq 6's name, `<identity>:workers`, which 6.x's API reads.
    pub fn workers_v6(identity: &str) -> String {
        format!("{identity}:workers")
    }

    /// The list the Web UI pushes `TSTP`/`TERM`/`TTIN` to: `<identity>-signals`.
    pub fn signals(identity: &str) -> String {
        format!("{identity}-signals")
    }
}

/// Default number of retries for `retry: true`.
pub const DEFAULT_MAX_RETRIES: u32 = 25;
/// The dead set keeps at most this many jobs...
pub const DEAD_MAX_JOBS: i64 = 10_000;
/// ...and none older than this (180 days).
pub const DEAD_TIMEOUT_SECS: f64 = 180.0 * 24.0 * 60.0 * 60.0;
/// `push_bulk` writes jobs in slices of this many (Sidekiq 7.1+).
pub const BULK_SLICE: usize = 1000;
/// `error_message` is cut to this many characters.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 10_000;
/// `perform_in`/`at` values below this are intervals, not epoch timestamps.
pub const RELATIVE_INTERVAL_LIMIT: f64 = 1_000_000_000.0;
/// Process hashes and busy-work hashes expire after this many seconds without a beat.
pub const PROCESS_TTL_SECS: i64 = 60;
/// Daily stat keys expire after five years.
pub const DAILY_STAT_TTL_SECS: i64 = 5 * 365 * 24 * 60 * 60;

/// Which Sidekiq generation rustq writes timestamps for.
///
/// `V7` (the default) writes Float epoch seconds, which Sidekiq 6, 7 and 8 all read. `V8` writes
/// Integer epoch milliseconds, which only Sidekiq 8 reads. Reading always accepts both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WireVersion {
    /// Sidekiq 6 and 7: Float epoch seconds.
    #[default]
    V7,
    /// Sidekiq 8: Integer epoch milliseconds.
    V8,
}

impl WireVersion {
    /// Parses `7` or `8` (also `"7"`, `"8"`, and 6 as an alias of 7: they share the format).
    pub fn from_number(n: i64) -> Option<WireVersion> {
        match n {
            6 | 7 => Some(WireVersion::V7),
            8 => Some(WireVersion::V8),
            _ => None,
        }
    }

    /// The generation as a number: 7 or 8.
    pub fn number(self) -> u8 {
        match self {
            WireVersion::V7 => 7,
            WireVersion::V8 => 8,
        }
    }

    /// Encodes an epoch time (seconds) the way this generation stores `created_at` and friends.
    pub fn timestamp(self, epoch_secs: f64) -> Value {
        match self {
            WireVersion::V7 => float_value(epoch_secs),
            WireVersion::V8 => Value::from((epoch_secs * 1000.0).round() as i64),
        }
    }

    /// The retry delay in seconds for the `count`-th retry (0-based) with a random `jitter_seed`
    /// in `0..10` (6/7: `rand(10) * (count + 1)`) or `0..10*(count+1)` (8: `rand(10 * (count + 1))`).
    pub fn retry_delay(self, count: u32, rng: &mut impl rand::Rng) -> u64 {
        let count = u64::from(count);
        let jitter = match self {
            WireVersion::V7 => rng.random_range(0..10u64) * (count + 1),
            WireVersion::V8 => rng.random_range(0..10 * (count + 1)),
        };
        count
            .saturating_pow(4)
            .saturating_add(15)
            .saturating_add(jitter)
    }
}

/// Seconds since the Unix epoch, with sub-second precision (Ruby's `Time.now.to_f`).
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A JSON number that prints exactly as Ruby writes the Float (see [`format_float`]).
pub fn float_value(f: f64) -> Value {
    if !f.is_finite() {
        return Value::Null;
    }
    format_float(f)
        .parse::<serde_json::Number>()
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Formats a float as Ruby's `Float#to_s` (and so Ruby's JSON generator) does: the shortest
/// digits that round-trip, fixed notation for decimal exponents from -4 to 16 (`0.0001`,
/// `1700000000.5`, always with a decimal point), scientific otherwise (`1.0e+20`, `2.5e-07`).
pub fn format_float(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN"
        } else if f > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        }
        .to_string();
    }
    // `{:e}` gives the shortest round-trip digits: "-2.5e-7", "1e20".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f < 0.0 { "-" } else { "" };
    // Ruby's decpt: where the decimal point falls relative to the digits.
    let decpt = exp + 1;
    let n = digits.len() as i32;
    if 0 < decpt && decpt <= 16 {
        if decpt >= n {
            format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
        } else {
            let (int, frac) = digits.split_at(decpt as usize);
            format!("{sign}{int}.{frac}")
        }
    } else if -4 < decpt && decpt <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
    } else {
        let frac = if n > 1 { &digits[1..] } else { "0" };
        let e = decpt - 1;
        let esign = if e < 0 { '-' } else { '+' };
        format!("{sign}{}.{frac}e{esign}{:02}", &digits[..1], e.abs())
    }
}

/// Reads a timestamp field written by any Sidekiq generation: a Float is epoch seconds, an
/// Integer is epoch milliseconds (8.x), a numeric String is parsed the same way. Returns seconds.
pub fn read_timestamp(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) if n.is_f64() => n.as_f64(),
        Value::Number(n) => n.as_i64().map(|ms| ms as f64 / 1000.0),
        Value::String(s) if s.contains('.') => s.parse().ok(),
        Value::String(s) => s.parse::<i64>().ok().map(|ms| ms as f64 / 1000.0),
        _ => None,
    }
}

/// Encodes backtrace lines as Sidekiq does: JSON array → zlib deflate → base64 (MIME, as Ruby's
/// `Base64.encode64`, newline every 60 characters).
pub fn compress_backtrace(lines: &[String]) -> String {
    let json = serde_json::to_vec(lines).unwrap_or_else(|_| b"[]".to_vec());
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(&json);
    let deflated = enc.finish().unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD.encode(deflated);
    let mut out = String::with_capacity(b64.len() + b64.len() / 60 + 1);
    for chunk in b64.as_bytes().chunks(60) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// Decodes an `error_backtrace` written by Sidekiq or rustq (MIME or strict base64).
pub fn decompress_backtrace(encoded: &str) -> Option<Vec<String>> {
    let compact: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    let deflated = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(&deflated[..])
        .read_to_end(&mut json)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Cuts an error message to Sidekiq's limit, on a character boundary.
pub fn truncate_error_message(message: &str) -> String {
    match message.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        Some((idx, _)) => message[..idx].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_ruby() {
        assert_eq!(format_float(1700000000.0), "1700000000.0");
        assert_eq!(format_float(1700000000.123456), "1700000000.123456");
        assert_eq!(format_float(1732345678.1234567), "1732345678.1234567");
        let cases = [
            (1.0e20, "1.0e+20"),
            (2.5e-7, "2.5e-07"),
            (-0.0001, "-0.0001"),
            (0.00001, "1.0e-05"),
            (1.0e16, "1.0e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (123.456, "123.456"),
            (-0.0, "-0.0"),
            (1.5e300, "1.5e+300"),
            (0.1, "0.1"),
        ];
        for (f, ruby) in cases {
            assert_eq!(format_float(f), ruby, "{f:e}");
            assert_eq!(float_value(f).to_string(), ruby);
        }
    }

    #[test]
    fn timestamps_read_both_generations() {
        assert_eq!(
            read_timestamp(&serde_json::json!(1700000000.5)),
            Some(1700000000.5)
        );
        assert_eq!(
            read_timestamp(&serde_json::json!(1700000000500i64)),
            Some(1700000000.5)
        );
        assert_eq!(read_timestamp(&serde_json::json!("x")), None);
        assert_eq!(
            WireVersion::V8.timestamp(1700000000.5),
            serde_json::json!(1700000000500i64)
        );
        assert_eq!(
            WireVersion::V7.timestamp(1700000000.0).to_string(),
            "1700000000.0"
        );
    }

    #[test]
    fn backtrace_round_trips() {
        let lines = vec!["app/jobs/a.rb:1:in `perform'".to_string(); 30];
        let enc = compress_backtrace(&lines);
        assert!(enc.contains('\n'));
        assert_eq!(decompress_backtrace(&enc), Some(lines));
        assert_eq!(decompress_backtrace("not base64!"), None);
    }

    #[test]
    fn retry_delay_follows_the_formula() {
        let mut rng = rand::rng();
        for count in 0..25 {
            let d = WireVersion::V7.retry_delay(count, &mut rng);
            let base = u64::from(count).pow(4) + 15;
            assert!(
                d >= base && d <= base + 9 * (u64::from(count) + 1),
                "{count}: {d}"
            );
            let d8 = WireVersion::V8.retry_delay(count, &mut rng);
            assert!(d8 >= base && d8 < base + 10 * (u64::from(count) + 1));
        }
    }

    #[test]
    fn error_messages_are_cut_on_char_boundaries() {
        let long = "é".repeat(MAX_ERROR_MESSAGE_CHARS + 5);
        assert_eq!(
            truncate_error_message(&long).chars().count(),
            MAX_ERROR_MESSAGE_CHARS
        );
    }
}
