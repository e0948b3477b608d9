//! What a job's payload says about uniqueness, concurrency and rate limits, and the Redis keys
//! they live under. The client checks these fields when pushing (a bad one is refused, nothing
//! written) and takes a unique job's lock in the push's own atomic step; the engine reads them to
//! admit, defer and release (`rustq-engine`'s `unique`, `concurrency` and `throttle` check points).
//!
//! The fields, as a payload carries them (every key is computed when pushing, so the engine never
//! runs app code for it and a retry keeps the key it was pushed with):
//!
//! ```json
//! {"class": "ChargeJob", "args": [7],
//!  "unique_for": 600, "unique_until": "success", "unique_digest": "5c1e…",
//!  "concurrency": {"key": "acct:7", "limit": 3},
//!  "throttle": {"key": "gateway", "limit": 100, "period": 60}}
//! ```
//!
//! `unique_for` and `unique_until` are Sidekiq Enterprise's names; the lock itself is rustq's
//! own (`rustq:unique:<digest>`), never Enterprise's key.

use serde_json::Value;

use crate::error::JobError;
use crate::job::{Fields, Job};

/// Seconds a unique job's lock lasts at most (`unique_for`).
pub const UNIQUE_FOR: &str = "unique_for";
/// When a unique job's lock is given up: `"success"` (the default) or `"start"`.
pub const UNIQUE_UNTIL: &str = "unique_until";
/// Which arguments count for uniqueness, when not all of them (set by the gem's `unique_by`).
pub const UNIQUE_ARGS: &str = "unique_args";
/// The lock's digest, written by the client when it pushes.
pub const UNIQUE_DIGEST: &str = "unique_digest";
/// `{"key": String, "limit": Integer}`: how many jobs with that key may run at once.
pub const CONCURRENCY: &str = "concurrency";
/// `{"key": String, "limit": Integer, "period": seconds}`: how many may start per period.
pub const THROTTLE: &str = "throttle";

/// Prefix of every key this module names.
pub const PREFIX: &str = "rustq:";

/// A unique job's lock: a hash whose one field is the holder's jid, expiring after
/// `unique_for`. Released with `HDEL lock jid`, which can only ever remove the holder's own.
pub fn unique_lock(digest: &str) -> String {
    format!("rustq:unique:{digest}")
}

/// The jobs running under a concurrency key: jid → identity of the process running it. The key's
/// keys share the hash tag `{key}`.
pub fn concurrency_running(key: &str) -> String {
    format!("rustq:limit:{{{key}}}:running")
}

/// The jobs of `queue` waiting for a slot under a concurrency key, oldest on the right.
pub fn concurrency_waiting(key: &str, queue: &str) -> String {
    format!("rustq:limit:{{{key}}}:waiting:{queue}")
}

/// Set: the queues that have had jobs waiting under a concurrency key.
pub fn concurrency_queues(key: &str) -> String {
    format!("rustq:limit:{{{key}}}:queues")
}

/// Set of every concurrency key in use (what the listing API reads).
pub const CONCURRENCY_KEYS: &str = "rustq:limits";

/// Hash: jid → concurrency key, of the slots one process holds (its reaper's index).
pub fn held_slots(identity: &str) -> String {
    format!("rustq:limit:held:{identity}")
}

/// Set of the identities that hold (or held) slots: where the reaper looks.
pub const SLOT_HOLDERS: &str = "rustq:limit:holders";

/// A throttle's state, a hash: `tat` (the GCRA's theoretical arrival time, ms) and `tolerance`
/// (its burst, ms: the next job may start at `tat - tolerance`).
pub fn throttle_state(key: &str) -> String {
    format!("rustq:throttle:{{{key}}}:state")
}

/// A throttle's reservations: jid → the millisecond a deferred job may start at.
pub fn throttle_reserved(key: &str) -> String {
    format!("rustq:throttle:{{{key}}}:reserved")
}

/// When a unique job's lock is given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UniqueUntil {
    /// When the job starts: a push while it runs enqueues again.
    Start,
    /// When it succeeds (or dies, or is deleted): the default.
    Success,
    /// Never by the job: the lock lasts its whole `unique_for` (activejob-uniqueness'
    /// `until_expired`).
    Expired,
}

/// A unique job's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Unique {
    /// Seconds the lock lasts at most.
    pub for_secs: f64,
    /// When it is given up.
    pub until: UniqueUntil,
    /// The lock's digest (empty until the client has computed it).
    pub digest: String,
}

/// A concurrency limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Concurrency {
    /// The key jobs share slots under.
    pub key: String,
    /// How many may run at once.
    pub limit: u64,
}

/// A rate limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Throttle {
    /// The key jobs share the rate under.
    pub key: String,
    /// How many may start per period.
    pub limit: u64,
    /// The period, in seconds.
    pub period: f64,
}

fn bad(field: &str, message: impl Into<String>) -> JobError {
    JobError::BadLimit {
        field: field.to_string(),
        message: message.into(),
    }
}

fn keyed<'a>(field: &str, value: &'a Value) -> Result<(String, u64, Option<&'a Value>), JobError> {
    let Value::Object(map) = value else {
        return Err(bad(field, "must be a Hash with 'key' and 'limit'"));
    };
    let key = match map.get("key") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(bad(field, "'key' must not be blank")),
        Some(other) => {
            return Err(bad(
                field,
                format!("'key' must be a String, got {}", json_type(other)),
            ))
        }
        None => return Err(bad(field, "needs a 'key'")),
    };
    let limit = match map.get("limit") {
        Some(v) => match v.as_f64() {
            Some(n) if n >= 1.0 && n.fract() == 0.0 && n <= u32::MAX as f64 => n as u64,
            _ => {
                return Err(bad(
                    field,
                    format!("'limit' must be an Integer of at least 1, got {v}"),
                ))
            }
        },
        None => return Err(bad(field, "needs a 'limit'")),
    };
    Ok((key, limit, map.get("period")))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a String",
        Value::Array(_) => "an Array",
        Value::Object(_) => "a Hash",
    }
}

/// The unique settings of a payload, if it asks for uniqueness.
pub fn unique(fields: &Fields) -> Result<Option<Unique>, JobError> {
    let for_secs = match fields.get(UNIQUE_FOR) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n > 0.0 && n.is_finite() => n,
            _ => {
                return Err(bad(
                    UNIQUE_FOR,
                    format!("must be a number of seconds above 0, got {v}"),
                ))
            }
        },
    };
    let until = match fields.get(UNIQUE_UNTIL) {
        None | Some(Value::Null) => UniqueUntil::Success,
        Some(Value::String(s)) if s == "success" => UniqueUntil::Success,
        Some(Value::String(s)) if s == "start" => UniqueUntil::Start,
        Some(Value::String(s)) if s == "expired" => UniqueUntil::Expired,
        Some(v) => {
            return Err(bad(
                UNIQUE_UNTIL,
                format!("must be \"start\", \"success\" or \"expired\", got {v}"),
            ))
        }
    };
    let digest = fields
        .get(UNIQUE_DIGEST)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(Some(Unique {
        for_secs,
        until,
        digest,
    }))
}

/// The concurrency limit of a payload, if it has one.
pub fn concurrency(fields: &Fields) -> Result<Option<Concurrency>, JobError> {
    match fields.get(CONCURRENCY) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let (key, limit, _) = keyed(CONCURRENCY, v)?;
            Ok(Some(Concurrency { key, limit }))
        }
    }
}

/// The rate limit of a payload, if it has one.
pub fn throttle(fields: &Fields) -> Result<Option<Throttle>, JobError> {
    match fields.get(THROTTLE) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let (key, limit, period) = keyed(THROTTLE, v)?;
            let period = match period {
                Some(p) => match p.as_f64() {
                    Some(n) if n > 0.0 && n.is_finite() => n,
                    _ => {
                        return Err(bad(
                            THROTTLE,
                            format!("'period' must be a number of seconds above 0, got {p}"),
                        ))
                    }
                },
                None => return Err(bad(THROTTLE, "needs a 'period' (seconds)")),
            };
            Ok(Some(Throttle { key, limit, period }))
        }
    }
}

/// Checks every limit field of a push; nothing is written for one that fails.
pub fn check(fields: &Fields) -> Result<(), JobError> {
    unique(fields)?;
    concurrency(fields)?;
    throttle(fields)?;
    Ok(())
}

/// The digest of a unique job: SHA-1 of the JSON `[class, queue, args]`, where `class` is the
/// wrapped class of an ActiveJob and `args` its `unique_args` if it has them, else all its
/// arguments.
pub fn digest(class: &str, queue: &str, args_json: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(b"[");
    sha.update(
        serde_json::to_string(class)
            .expect("a string serializes")
            .as_bytes(),
    );
    sha.update(b",");
    sha.update(
        serde_json::to_string(queue)
            .expect("a string serializes")
            .as_bytes(),
    );
    sha.update(b",");
    sha.update(args_json);
    sha.update(b"]");
    sha.digest().to_string()
}

/// Fills in a unique job's digest (when it asks for uniqueness and has none yet).
pub fn stamp_digest(job: &mut Job) -> Result<Option<Unique>, JobError> {
    let Some(mut unique) = unique(job.fields())? else {
        return Ok(None);
    };
    if unique.digest.is_empty() {
        let args = job
            .get(UNIQUE_ARGS)
            .or_else(|| job.get("args"))
            .map(Value::to_string)
            .unwrap_or_else(|| "[]".into());
        unique.digest = digest(
            job.wrapped().or(job.class()).unwrap_or_default(),
            job.queue().unwrap_or_default(),
            args.as_bytes(),
        );
        job.set(UNIQUE_DIGEST, unique.digest.clone());
    }
    Ok(Some(unique))
}

/// The limits a stored job carries, for the engine: fields that do not parse are ignored there
/// (the client refused them when pushing; a job written by other code runs unlimited).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// Its unique lock.
    pub unique: Option<Unique>,
    /// Its concurrency limit.
    pub concurrency: Option<Concurrency>,
    /// Its rate limit.
    pub throttle: Option<Throttle>,
}

impl Limits {
    /// What `job` carries.
    pub fn of(job: &Job) -> Limits {
        let fields = job.fields();
        Limits {
            unique: unique(fields)
                .ok()
                .flatten()
                .filter(|u| !u.digest.is_empty()),
            concurrency: concurrency(fields).ok().flatten(),
            throttle: throttle(fields).ok().flatten(),
        }
    }
}

/// Set of every throttle key in use (what the listing reads).
pub const THROTTLE_KEYS: &str = "rustq:throttles";

/// A job holding a concurrency slot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SlotHolder {
    /// The job's jid.
    pub jid: String,
    /// The process running it (its identity).
    pub process: String,
    /// Whether that process's heartbeat is there (a dead one's slots are about to be freed).
    pub alive: bool,
}

/// A concurrency key as it stands.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConcurrencyView {
    /// The key.
    pub key: String,
    /// The jobs holding its slots.
    pub running: Vec<SlotHolder>,
    /// Jobs waiting for a slot, over all their queues.
    pub waiting: u64,
}

/// A rate limit as it stands.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ThrottleView {
    /// The key.
    pub key: String,
    /// Jobs waiting for the moment reserved for them.
    pub reserved: u64,
    /// When the next job may start (epoch seconds; now or earlier when there is room).
    pub next_admission: Option<f64>,
}

/// A unique job's lock.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LockView {
    /// The lock's digest.
    pub digest: String,
    /// The jid holding it.
    pub jid: String,
    /// Seconds until it expires.
    pub expires_in: Option<f64>,
}

/// Every lock and limit in use: what an operator looks at (`Rustq::Limits.list` in Ruby).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Listing {
    /// Concurrency keys with running or waiting jobs.
    pub concurrency: Vec<ConcurrencyView>,
    /// Rate limits in use.
    pub throttles: Vec<ThrottleView>,
    /// Unique jobs' locks.
    pub unique: Vec<LockView>,
}

/// Reads every lock and limit (SCANs the unique locks, 1,000 keys a step; reads nothing else
/// beyond the keys of the limits in use).
pub async fn list(conn: &mut crate::Conn) -> redis::RedisResult<Listing> {
    use redis::AsyncCommands;
    let mut listing = Listing::default();
    let mut keys: Vec<String> = conn.smembers(CONCURRENCY_KEYS).await?;
    keys.sort();
    for key in keys {
        let running: Vec<(String, String)> = conn.hgetall(concurrency_running(&key)).await?;
        let queues: Vec<String> = conn.smembers(concurrency_queues(&key)).await?;
        let mut waiting = 0;
        for queue in &queues {
            waiting += conn
                .llen::<_, u64>(concurrency_waiting(&key, queue))
                .await?;
        }
        if running.is_empty() && waiting == 0 {
            continue;
        }
        let mut holders = Vec::with_capacity(running.len());
        for (jid, process) in running {
            let alive: bool = conn.exists(&process).await?;
            holders.push(SlotHolder {
                jid,
                process,
                alive,
            });
        }
        holders.sort_by(|a, b| a.jid.cmp(&b.jid));
        listing.concurrency.push(ConcurrencyView {
            key,
            running: holders,
            waiting,
        });
    }
    let mut throttles: Vec<String> = conn.smembers(THROTTLE_KEYS).await?;
    throttles.sort();
    for key in throttles {
        let state: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(throttle_state(&key))
            .arg("tat")
            .arg("tolerance")
            .query_async(conn)
            .await?;
        let number = |i: usize| {
            state
                .get(i)
                .cloned()
                .flatten()
                .and_then(|v| v.parse::<f64>().ok())
        };
        let next_admission = match (number(0), number(1)) {
            (Some(tat), Some(tolerance)) => Some((tat - tolerance) / 1000.0),
            _ => None,
        };
        let reserved: u64 = conn.hlen(throttle_reserved(&key)).await?;
        if next_admission.is_none() && reserved == 0 {
            continue;
        }
        listing.throttles.push(ThrottleView {
            key,
            reserved,
            next_admission,
        });
    }
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("rustq:unique:*")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        for lock in found {
            let jids: Vec<String> = conn.hkeys(&lock).await?;
            let ttl: i64 = conn.pttl(&lock).await?;
            for jid in jids {
                listing.unique.push(LockView {
                    digest: lock.trim_start_matches("rustq:unique:").to_string(),
                    jid,
                    expires_in: (ttl >= 0).then(|| ttl as f64 / 1000.0),
                });
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    listing.unique.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn bad_limits_are_refused_with_what_is_wrong() {
        let cases = [
            (
                json!({"concurrency": {"key": "a", "limit": 0}}),
                "'limit' must be an Integer of at least 1, got 0",
            ),
            (
                json!({"concurrency": {"key": 5, "limit": 2}}),
                "'key' must be a String, got a number",
            ),
            (json!({"concurrency": {"limit": 2}}), "needs a 'key'"),
            (json!({"concurrency": 3}), "must be a Hash"),
            (
                json!({"throttle": {"key": "a", "limit": 2}}),
                "needs a 'period'",
            ),
            (
                json!({"throttle": {"key": "a", "limit": 2, "period": -1}}),
                "'period' must be",
            ),
            (
                json!({"unique_for": -5}),
                "must be a number of seconds above 0",
            ),
            (
                json!({"unique_for": 5, "unique_until": "done"}),
                "must be \"start\", \"success\" or \"expired\"",
            ),
        ];
        for (payload, message) in cases {
            let err = check(&fields(payload.clone())).unwrap_err().to_string();
            assert!(err.contains(message), "{payload}: {err}");
        }
        assert!(check(&fields(json!({"concurrency": {"key": "a", "limit": 3}, "throttle": {"key": "b", "limit": 1, "period": 0.5}, "unique_for": 60}))).is_ok());
    }

    #[test]
    fn the_digest_depends_on_class_queue_and_the_arguments_that_count() {
        let mut a = Job::from_fields(fields(
            json!({"class": "A", "queue": "q", "args": [1, 2], "unique_for": 60}),
        ));
        let mut b = Job::from_fields(fields(
            json!({"class": "A", "queue": "q", "args": [1, 3], "unique_for": 60, "unique_args": [1]}),
        ));
        let mut c = Job::from_fields(fields(
            json!({"class": "A", "queue": "q", "args": [1, 4], "unique_for": 60, "unique_args": [1]}),
        ));
        let da = stamp_digest(&mut a).unwrap().unwrap().digest;
        let db = stamp_digest(&mut b).unwrap().unwrap().digest;
        let dc = stamp_digest(&mut c).unwrap().unwrap().digest;
        assert_ne!(da, db);
        assert_eq!(db, dc);
        assert_eq!(a.get(UNIQUE_DIGEST).unwrap(), &json!(da));
        assert_eq!(da, digest("A", "q", b"[1,2]"));
    }
}
