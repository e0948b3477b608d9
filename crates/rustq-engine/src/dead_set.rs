//! The dead set: where jobs go when retries run out, when they are killed, and when they are not
//! jobs at all. One place writes an entry, with Sidekiq's trim (`DeadSet#kill`).

use rustq_core::wire::{self, keys, WireVersion};
use rustq_core::{Job, PayloadError};
use serde_json::Value;

use crate::failure::class;
use crate::work::Write;

/// How much the dead set keeps: Sidekiq's `dead_max_jobs` (10,000) and `dead_timeout_in_seconds`
/// (180 days), settable in the config file as in `sidekiq.yml`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeadSetLimits {
    /// Entries kept at most (the newest).
    pub max_jobs: i64,
    /// Entries older than this many seconds are dropped.
    pub timeout_secs: f64,
}

impl Default for DeadSetLimits {
    fn default() -> Self {
        DeadSetLimits {
            max_jobs: wire::DEAD_MAX_JOBS,
            timeout_secs: wire::DEAD_TIMEOUT_SECS,
        }
    }
}

/// `DeadSet#kill`: the entry for `payload`, killed at `now`; follow it with [`trim`].
pub fn bury(payload: &str, now: f64) -> Write {
    Write::new("ZADD")
        .key(keys::DEAD)
        .arg(wire::format_float(now))
        .arg(payload)
}

/// After burying: drop entries older than the timeout and all but the newest `max_jobs`.
pub fn trim(now: f64, limits: DeadSetLimits) -> [Write; 2] {
    [
        Write::new("ZREMRANGEBYSCORE")
            .key(keys::DEAD)
            .arg("-inf")
            .arg(wire::format_float(now - limits.timeout_secs)),
        Write::new("ZREMRANGEBYRANK")
            .key(keys::DEAD)
            .arg(0)
            .arg(-limits.max_jobs),
    ]
}

/// A dead-set entry for bytes that are not a job at all: a JSON object Sidekiq's Web UI can show,
/// with the error, and the original bytes (lossily decoded) under `payload` for salvage.
pub fn unreadable_entry(
    raw: &[u8],
    queue: &str,
    error: &PayloadError,
    wire: WireVersion,
    now: f64,
) -> String {
    let mut job = Job::from_fields(Default::default());
    job.set("class", class::INVALID_PAYLOAD);
    job.set("args", Value::Array(Vec::new()));
    job.set("queue", queue);
    job.set("retry", false);
    job.set("jid", rustq_core::generate_jid());
    job.set_time("created_at", now, wire);
    job.set(
        "error_message",
        wire::truncate_error_message(&format!("cannot run job: {error}")),
    );
    job.set("error_class", class::INVALID_PAYLOAD);
    job.set_time("failed_at", now, wire);
    job.set("retry_count", 0);
    job.set("payload", String::from_utf8_lossy(raw).into_owned());
    job.to_json()
}
