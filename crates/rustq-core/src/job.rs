//! The job payload: one JSON object per job, exactly as Sidekiq stores it.
//!
//! A [`Job`] keeps every key in the order it was written, known or not (`bid`, `unique_for`,
//! `cattr`, …), because byte-for-byte compatibility with Sidekiq depends on key order. Known
//! fields are read and written through typed accessors.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::PayloadError;
use crate::wire::{self, WireVersion};

/// An ordered JSON object: Sidekiq's job hash.
pub type Fields = Map<String, Value>;

/// The `retry` option of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// `true`: retry up to the process's maximum (25 by default).
    Default,
    /// `false`: never retry, and skip the dead set.
    Disabled,
    /// `N`: retry N times (`0` sends the job straight to the dead set).
    Times(u32),
}

impl Retry {
    /// Reads Sidekiq's truthiness: `nil`/`false` disable, an Integer counts, anything else is default.
    pub fn from_value(value: Option<&Value>) -> Option<Retry> {
        match value? {
            Value::Null => None,
            Value::Bool(false) => Some(Retry::Disabled),
            Value::Number(n) => Some(n.as_u64().map_or(Retry::Times(0), |n| {
                Retry::Times(u32::try_from(n).unwrap_or(u32::MAX))
            })),
            _ => Some(Retry::Default),
        }
    }

    /// How many retries this allows, given the process's default.
    pub fn max_retries(self, default: u32) -> u32 {
        match self {
            Retry::Default => default,
            Retry::Disabled => 0,
            Retry::Times(n) => n,
        }
    }

    /// The `retry` value as stored: `true`, `false` or the count.
    pub fn to_value(self) -> Value {
        match self {
            Retry::Default => Value::Bool(true),
            Retry::Disabled => Value::Bool(false),
            Retry::Times(n) => Value::from(n),
        }
    }
}

/// A Sidekiq job payload.
///
/// ```
/// use rustq_core::Job;
/// let job = Job::from_json(r#"{"class":"HardJob","args":[1,"a"],"jid":"abc","queue":"default","x":1}"#).unwrap();
/// assert_eq!(job.class(), Some("HardJob"));
/// assert_eq!(job.to_json(), r#"{"class":"HardJob","args":[1,"a"],"jid":"abc","queue":"default","x":1}"#);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    fields: Fields,
}

impl Job {
    /// Wraps an already-built hash.
    pub fn from_fields(fields: Fields) -> Job {
        Job { fields }
    }

    /// Parses a payload. Only the JSON shape is checked (an object); field types are checked
    /// by [`Job::check`], so a worker can still report on a payload with a bad field.
    pub fn from_json(json: &str) -> Result<Job, PayloadError> {
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(fields)) => Ok(Job { fields }),
            Ok(other) => Err(PayloadError::NotAnObject(type_name(&other))),
            Err(e) => Err(PayloadError::InvalidJson(e.to_string())),
        }
    }

    /// Compact JSON, keys in order: the exact bytes Sidekiq would write.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.fields).expect("a JSON object always serializes")
    }

    /// Checks what a server needs to run the job: a non-blank `class`, an Array `args`, a queue.
    pub fn check(&self) -> Result<(), PayloadError> {
        match self.fields.get("class") {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(PayloadError::MissingClass)
            }
            Some(other) => return Err(PayloadError::BadField("class", type_name(other))),
        }
        match self.fields.get("args") {
            Some(Value::Array(_)) => {}
            Some(other) => return Err(PayloadError::BadField("args", type_name(other))),
            None => return Err(PayloadError::MissingField("args")),
        }
        Ok(())
    }

    /// Every field, in order.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// The fields, to edit in place.
    pub fn fields_mut(&mut self) -> &mut Fields {
        &mut self.fields
    }

    /// Unwraps the hash.
    pub fn into_fields(self) -> Fields {
        self.fields
    }

    /// A field's value, as stored.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// Sets a field; an existing key keeps its position, a new one goes last (Ruby's `Hash#[]=`).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_string(), value.into());
    }

    /// Removes a field, keeping the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.fields.shift_remove(key)
    }

    /// Sets a timestamp field in the encoding of `version`.
    pub fn set_time(&mut self, key: &str, epoch_secs: f64, version: WireVersion) {
        self.set(key, version.timestamp(epoch_secs));
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    fn time_field(&self, key: &str) -> Option<f64> {
        self.fields.get(key).and_then(wire::read_timestamp)
    }

    /// `class`: the worker class to run (for ActiveJob, the wrapper; see [`Job::wrapped`]).
    pub fn class(&self) -> Option<&str> {
        self.str_field("class")
    }

    /// The ActiveJob class when `class` is the ActiveJob wrapper.
    pub fn wrapped(&self) -> Option<&str> {
        self.str_field("wrapped")
    }

    /// The name to show and count metrics under: `wrapped` if present, else `class`.
    pub fn display_class(&self) -> &str {
        self.wrapped().or_else(|| self.class()).unwrap_or("")
    }

    /// `args`, when it is an Array.
    pub fn args(&self) -> Option<&Vec<Value>> {
        self.fields.get("args").and_then(Value::as_array)
    }

    /// The job id, `jid`.
    pub fn jid(&self) -> Option<&str> {
        self.str_field("jid")
    }

    /// The queue the job is in or was pushed to, `queue`.
    pub fn queue(&self) -> Option<&str> {
        self.str_field("queue")
    }

    /// The `retry` option; `None` when it is absent or nil.
    pub fn retry(&self) -> Option<Retry> {
        Retry::from_value(self.fields.get("retry"))
    }

    /// Sidekiq's count of retries so far (`None` before the first failure). It can be `-1`:
    /// Sidekiq's "retry now" in the Web UI decrements it before pushing the job again.
    pub fn retry_count(&self) -> Option<i64> {
        self.fields.get("retry_count").and_then(Value::as_i64)
    }

    /// `retry_queue`: where the job's retries go instead of its own queue.
    pub fn retry_queue(&self) -> Option<&str> {
        self.str_field("retry_queue")
    }

    /// `false` only when the job asked to skip the dead set (`dead: false`).
    pub fn dead(&self) -> bool {
        !matches!(self.fields.get("dead"), Some(Value::Bool(false)))
    }

    /// How many backtrace lines to keep on failure: `backtrace: true` is all, `N` is N.
    pub fn backtrace_lines(&self) -> Option<usize> {
        match self.fields.get("backtrace")? {
            Value::Bool(true) => Some(usize::MAX),
            Value::Number(n) => n.as_u64().map(|n| n as usize).filter(|n| *n > 0),
            _ => None,
        }
    }

    /// 7.1.3+: retry only while less than this many seconds have passed since the first failure.
    pub fn retry_for(&self) -> Option<f64> {
        self.fields.get("retry_for").and_then(Value::as_f64)
    }

    /// The String entries of `tags`; empty when there are none.
    pub fn tags(&self) -> Vec<&str> {
        self.fields
            .get("tags")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The last failure's `error_message`.
    pub fn error_message(&self) -> Option<&str> {
        self.str_field("error_message")
    }

    /// The last failure's `error_class`.
    pub fn error_class(&self) -> Option<&str> {
        self.str_field("error_class")
    }

    /// The decoded `error_backtrace`, if any.
    pub fn error_backtrace(&self) -> Option<Vec<String>> {
        self.str_field("error_backtrace")
            .and_then(wire::decompress_backtrace)
    }

    /// `created_at` in epoch seconds, whichever generation wrote it.
    pub fn created_at_secs(&self) -> Option<f64> {
        self.time_field("created_at")
    }

    /// `enqueued_at` in epoch seconds, whichever generation wrote it.
    pub fn enqueued_at_secs(&self) -> Option<f64> {
        self.time_field("enqueued_at")
    }

    /// `failed_at` (the first failure) in epoch seconds, whichever generation wrote it.
    pub fn failed_at_secs(&self) -> Option<f64> {
        self.time_field("failed_at")
    }

    /// `retried_at` (the latest failure of a retry) in epoch seconds, whichever generation wrote
    /// it.
    pub fn retried_at_secs(&self) -> Option<f64> {
        self.time_field("retried_at")
    }

    /// `created_at` as a UTC time.
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.created_at_secs().and_then(to_datetime)
    }

    /// `enqueued_at` as a UTC time.
    pub fn enqueued_at(&self) -> Option<DateTime<Utc>> {
        self.enqueued_at_secs().and_then(to_datetime)
    }

    /// `failed_at` (the first failure) as a UTC time.
    pub fn failed_at(&self) -> Option<DateTime<Utc>> {
        self.failed_at_secs().and_then(to_datetime)
    }

    /// `retried_at` (the latest failure of a retry) as a UTC time.
    pub fn retried_at(&self) -> Option<DateTime<Utc>> {
        self.retried_at_secs().and_then(to_datetime)
    }
}

fn to_datetime(secs: f64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros((secs * 1_000_000.0).round() as i64)
}

/// A new job id: 24 lowercase hex characters from 12 bytes of the OS's CSPRNG-seeded generator.
pub fn generate_jid() -> String {
    let bytes: [u8; 12] = rand::random();
    hex::encode(bytes)
}

/// Where the `index`th of several pieces stored back to back lies, given where each one ends.
pub(crate) fn segment(ends: &[usize], index: usize) -> std::ops::Range<usize> {
    let start = match index {
        0 => 0,
        i => ends[i - 1],
    };
    start..ends[index]
}

/// Job ids in push order, back to back in one buffer: a bulk push makes 100,000 at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Jids {
    text: String,
    /// Where each jid ends in `text`.
    ends: Vec<usize>,
}

impl Jids {
    /// The jid of a single push.
    pub fn one(jid: String) -> Jids {
        Jids {
            ends: vec![jid.len()],
            text: jid,
        }
    }

    /// `count` jids as [`generate_jid`] makes them, from one draw of the CSPRNG.
    pub fn generate(count: usize) -> Jids {
        use rand::RngCore;
        let mut bytes = vec![0u8; count * 12];
        rand::rng().fill_bytes(&mut bytes);
        let mut hex_digits = vec![0u8; count * 24];
        hex::encode_to_slice(&bytes, &mut hex_digits).expect("two hex digits per byte");
        Jids {
            text: String::from_utf8(hex_digits).expect("hex digits are ASCII"),
            ends: (1..=count).map(|i| i * 24).collect(),
        }
    }

    /// How many jids there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `index`th jid. Panics past the end, like slice indexing.
    pub fn get(&self, index: usize) -> &str {
        &self.text[segment(&self.ends, index)]
    }

    /// The jids, in push order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The jids as owned strings, in push order.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }
}

/// Ruby's name for a JSON value's type, for error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "NilClass",
        Value::Bool(true) => "TrueClass",
        Value::Bool(false) => "FalseClass",
        Value::Number(n) if n.is_f64() => "Float",
        Value::Number(_) => "Integer",
        Value::String(_) => "String",
        Value::Array(_) => "Array",
        Value::Object(_) => "Hash",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIDEKIQ_RETRY_JOB: &str = r#"{"retry":true,"queue":"default","class":"HardJob","args":[1,{"a":[null,2.5]}],"jid":"0123456789abcdef01234567","created_at":1700000000.123456,"enqueued_at":1700000001.5,"error_message":"boom","error_class":"RuntimeError","failed_at":1700000002.0,"retry_count":0,"bid":"B-1","unique_for":60,"cattr":{"tenant":"x"},"tags":["a"]}"#;

    #[test]
    fn round_trips_every_field_in_order() {
        let job = Job::from_json(SIDEKIQ_RETRY_JOB).unwrap();
        assert_eq!(job.to_json(), SIDEKIQ_RETRY_JOB);
        assert_eq!(job.class(), Some("HardJob"));
        assert_eq!(job.retry(), Some(Retry::Default));
        assert_eq!(job.retry_count(), Some(0));
        assert_eq!(job.created_at_secs(), Some(1700000000.123456));
        assert_eq!(job.tags(), vec!["a"]);
        assert_eq!(job.get("bid"), Some(&Value::from("B-1")));
        job.check().unwrap();
    }

    #[test]
    fn setting_an_existing_key_keeps_its_place() {
        let mut job = Job::from_json(r#"{"a":1,"b":2,"c":3}"#).unwrap();
        job.set("b", 5);
        job.set("d", 6);
        job.remove("a");
        assert_eq!(job.to_json(), r#"{"b":5,"c":3,"d":6}"#);
    }

    #[test]
    fn reads_sidekiq_8_millisecond_timestamps() {
        let job = Job::from_json(r#"{"class":"A","args":[],"created_at":1700000000123}"#).unwrap();
        assert_eq!(job.created_at_secs(), Some(1700000000.123));
        assert_eq!(job.created_at().unwrap().timestamp_millis(), 1700000000123);
    }

    #[test]
    fn retry_option_follows_sidekiq_truthiness() {
        let r = |s: &str| Retry::from_value(Some(&serde_json::from_str(s).unwrap()));
        assert_eq!(r("true"), Some(Retry::Default));
        assert_eq!(r("false"), Some(Retry::Disabled));
        assert_eq!(r("3"), Some(Retry::Times(3)));
        assert_eq!(r("0"), Some(Retry::Times(0)));
        assert_eq!(r("null"), None);
        assert_eq!(Retry::Times(3).max_retries(25), 3);
        assert_eq!(Retry::Default.max_retries(25), 25);
    }

    #[test]
    fn check_names_what_is_wrong() {
        let err = |s: &str| Job::from_json(s).unwrap().check().unwrap_err().to_string();
        assert!(err(r#"{"args":[]}"#).contains("class"));
        assert!(err(r#"{"class":"  ","args":[]}"#).contains("class"));
        assert!(err(r#"{"class":"A","args":{}}"#).contains("args"));
        assert!(Job::from_json("[1]")
            .unwrap_err()
            .to_string()
            .contains("Array"));
        assert!(Job::from_json("{nope")
            .unwrap_err()
            .to_string()
            .contains("invalid JSON"));
    }

    #[test]
    fn jids_are_24_lowercase_hex_and_distinct() {
        let many = Jids::generate(1000);
        assert_eq!(many.len(), 1000);
        assert!(many.iter().all(|j| j.len() == 24
            && j.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())));
        assert_eq!(
            many.iter().collect::<std::collections::HashSet<_>>().len(),
            1000
        );
        let a = generate_jid();
        assert_eq!(a.len(), 24);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, generate_jid());
    }
}
