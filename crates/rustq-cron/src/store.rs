//! Schedules in Redis, in sidekiq-cron 2.x's keys: the `cron_jobs:<namespace>` set of hash keys,
//! the `cron_job:<namespace>:<name>` hash, its `:enqueued` sorted set of claimed ticks and its
//! `:jid_history` list. Every write is one Lua script naming its keys, so sidekiq-cron's API,
//! its Web UI tab and its pollers work on the same data.
//!
//! The one step that matters is [`Schedules::claim`]: a tick is claimed (`ZADD NX` of the
//! tick's member, as sidekiq-cron's poller claims it) and its job pushed in the same script, so
//! a process killed at any instant neither loses the tick nor pushes it twice. sidekiq-cron's
//! keys and Sidekiq's queue keys cannot share a hash tag: under Redis Cluster the script needs
//! them on one node.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use rustq_core::wire::keys;
use rustq_core::{Conn, WireVersion};

use crate::schedule::{
    history_entry, last_enqueue_format, tick_member, Overlap, Schedule, ScheduleError, Status,
};

/// sidekiq-cron's default namespace.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The set sidekiq-cron 1.x kept its jobs in (no namespace): refused, not migrated.
pub const LEGACY_JOBS: &str = "cron_jobs";
/// Entries of `:jid_history` kept (sidekiq-cron's `cron_history_size`).
pub const HISTORY_SIZE: i64 = 10;
/// Claimed ticks older than this are trimmed from `:enqueued` (sidekiq-cron's 24 h).
pub const REMEMBER_SECS: i64 = 24 * 60 * 60;

/// `cron_jobs:<namespace>`.
pub fn jobs_key(namespace: &str) -> String {
    format!("cron_jobs:{namespace}")
}

/// `cron_job:<namespace>:<name>`.
pub fn job_key(namespace: &str, name: &str) -> String {
    format!("cron_job:{namespace}:{name}")
}

/// `cron_job:<namespace>:<name>:enqueued`.
pub fn enqueued_key(namespace: &str, name: &str) -> String {
    format!("{}:enqueued", job_key(namespace, name))
}

/// `cron_job:<namespace>:<name>:jid_history`.
pub fn history_key(namespace: &str, name: &str) -> String {
    format!("{}:jid_history", job_key(namespace, name))
}

const SAVE: &str = r#"
-- KEYS: jobs set, hash, enqueued; ARGV: status ('' keeps), seed member, seed score, field, value, ...
redis.call('SADD', KEYS[1], KEYS[2])
local status = ARGV[1]
if status == '' then status = redis.call('HGET', KEYS[2], 'status') or 'enabled' end
redis.call('HSET', KEYS[2], 'status', status, unpack(ARGV, 4))
redis.call('HSETNX', KEYS[2], 'last_enqueue_time', '')
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2]) end
return status
"#;

const DESTROY: &str = r#"
-- KEYS: jobs set, hash, enqueued, history, running
local removed = redis.call('SREM', KEYS[1], KEYS[2])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
return removed + redis.call('DEL', KEYS[2])
"#;

const SET_STATUS: &str = r#"
-- KEYS: hash; ARGV: status
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
return 1
"#;

const CLAIM: &str = r#"
-- KEYS: hash, enqueued, history, queue list, queues set, running hash, then the process keys
--       of the runs the running hash held when read
-- ARGV: cron line, tick member ('' = enqueue now: no claim), tick score, payload, queue name,
--       last_enqueue_time, history entry, history last index, forget before ('(score'), overlap,
--       runs read
local status, cron = unpack(redis.call('HMGET', KEYS[1], 'status', 'cron'))
if not cron then return -1 end
if ARGV[2] ~= '' then
  if status == 'disabled' then return -2 end
  if cron ~= ARGV[1] then return -3 end
  if redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[2]) == 0 then return 0 end
  -- The tick is this process's to decide: enqueued, or skipped for the previous job.
  if ARGV[10] == 'skip_if_queued' then
    local last = redis.call('HGET', KEYS[1], 'rustq_last_payload')
    if last and redis.call('LPOS', KEYS[4], last) then return -4 end
  elseif ARGV[10] == 'skip_if_running' then
    if redis.call('HLEN', KEYS[6]) ~= tonumber(ARGV[11]) then
      redis.call('ZREM', KEYS[2], ARGV[2])
      return -5
    end
    for i = 7, #KEYS do
      if redis.call('EXISTS', KEYS[i]) == 1 then return -4 end
    end
    -- Every run left was held by a process that is gone.
    redis.call('DEL', KEYS[6])
  end
end
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('HSET', KEYS[1], 'last_enqueue_time', ARGV[6])
if ARGV[10] ~= 'allow' then redis.call('HSET', KEYS[1], 'rustq_last_payload', ARGV[4]) end
redis.call('LPUSH', KEYS[3], ARGV[7])
redis.call('LTRIM', KEYS[3], 0, ARGV[8])
if ARGV[2] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[2], 0, ARGV[9]) end
return 1
"#;

/// `rustq:cron:<namespace>:<name>:running`: jid → identity of the process running it, for each
/// run of a schedule that skips ticks while one runs.
pub fn running_key(namespace: &str, name: &str) -> String {
    format!("rustq:cron:{namespace}:{name}:running")
}

/// The running hash of the schedule a payload's `rustq_cron` names (`<namespace>:<name>`).
pub fn running_key_of(tag: &str) -> Option<String> {
    let (namespace, name) = tag.split_once(':')?;
    Some(running_key(namespace, name))
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This process claimed the tick and pushed its job.
    Pushed {
        /// The job's jid.
        jid: String,
    },
    /// Another poller (rustq's or sidekiq-cron's) had claimed it.
    Taken,
    /// The schedule is disabled.
    Disabled,
    /// The schedule was deleted, or its cron line changed since it was read.
    Changed,
    /// Claimed, and not enqueued: the previous job has not finished (its `overlap`).
    Skipped,
}

/// An error of the schedules API: Redis's, or a schedule's own.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis refused or was unreachable.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// A schedule is not valid.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// No schedule of that name.
    #[error("no schedule named {0:?}")]
    NotFound(String),
    /// sidekiq-cron 1.x's layout is in this Redis.
    #[error("this Redis holds sidekiq-cron 1.x schedules (the `cron_jobs` set, {0} entries): run sidekiq-cron 2.x once to migrate them to its 2.x layout, which rustq reads, or delete `cron_jobs` and the `cron_job:<name>` keys it lists")]
    Legacy(u64),
}

/// The schedules of one Redis.
#[derive(Clone)]
pub struct Schedules {
    conn: Conn,
    wire: WireVersion,
    zone: crate::Zone,
}

impl Schedules {
    /// Schedules in `conn`'s Redis; pushes write `wire`'s timestamps; cron lines without a
    /// zone are read in `zone`.
    pub fn new(conn: Conn, wire: WireVersion, zone: crate::Zone) -> Schedules {
        Schedules { conn, wire, zone }
    }

    /// The zone cron lines without a suffix are read in.
    pub fn zone(&self) -> crate::Zone {
        self.zone
    }

    /// Refuses a Redis holding sidekiq-cron 1.x's layout.
    pub async fn check_layout(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let legacy: u64 = conn.scard(LEGACY_JOBS).await?;
        if legacy > 0 {
            return Err(StoreError::Legacy(legacy));
        }
        Ok(())
    }

    /// Creates or updates `schedule` (checked first; nothing is written if it is not valid).
    /// Its status and last enqueue time stay as Redis holds them unless it sets a status; a new
    /// schedule's already-passed tick is marked claimed, as sidekiq-cron's save does, so
    /// creating it never enqueues at once. Returns the status it has now.
    pub async fn save(&self, schedule: &Schedule) -> Result<Status, StoreError> {
        let line = schedule.check(self.zone)?;
        let now = Utc::now();
        let seed = line
            .latest_at(now - chrono::Duration::seconds(1))
            .map(tick_member)
            .unwrap_or_default();
        let script = redis::Script::new(SAVE);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(jobs_key(&schedule.namespace))
            .key(job_key(&schedule.namespace, &schedule.name))
            .key(enqueued_key(&schedule.namespace, &schedule.name))
            .arg(schedule.status.map(Status::as_str).unwrap_or(""))
            .arg(seed)
            .arg(now.timestamp());
        for (field, value) in schedule.fields() {
            invocation.arg(field).arg(value);
        }
        let mut conn = self.conn.clone();
        let status: String = invocation.invoke_async(&mut conn).await?;
        Ok(if status == "disabled" {
            Status::Disabled
        } else {
            Status::Enabled
        })
    }

    /// Deletes a schedule, its claimed ticks and its history (sidekiq-cron's `destroy`).
    /// False when there was none.
    pub async fn destroy(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let removed: i64 = redis::Script::new(DESTROY)
            .key(jobs_key(namespace))
            .key(job_key(namespace, name))
            .key(enqueued_key(namespace, name))
            .key(history_key(namespace, name))
            .key(running_key(namespace, name))
            .invoke_async(&mut conn)
            .await?;
        Ok(removed > 0)
    }

    /// Enables or disables a schedule; [`StoreError::NotFound`] when there is none.
    pub async fn set_status(
        &self,
        namespace: &str,
        name: &str,
        status: Status,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let found: i64 = redis::Script::new(SET_STATUS)
            .key(job_key(namespace, name))
            .arg(status.as_str())
            .invoke_async(&mut conn)
            .await?;
        if found == 0 {
            return Err(StoreError::NotFound(name.into()));
        }
        Ok(())
    }

    /// One schedule, read back; `None` when there is none.
    pub async fn find(&self, namespace: &str, name: &str) -> Result<Option<Schedule>, StoreError> {
        let mut conn = self.conn.clone();
        let hash: HashMap<String, String> = conn.hgetall(job_key(namespace, name)).await?;
        if hash.is_empty() {
            return Ok(None);
        }
        Ok(Some(Schedule::from_hash(name, &hash)?))
    }

    /// Every schedule of `namespaces` (each read back, or why it cannot be), by name.
    pub async fn all(
        &self,
        namespaces: &[String],
    ) -> Result<Vec<Result<Schedule, ScheduleError>>, StoreError> {
        let mut conn = self.conn.clone();
        let mut keys_found = Vec::new();
        for namespace in namespaces {
            let members: Vec<String> = conn.smembers(jobs_key(namespace)).await?;
            keys_found.extend(members);
        }
        keys_found.sort();
        let mut found = Vec::with_capacity(keys_found.len());
        for chunk in keys_found.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.hgetall(key);
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
            for (key, hash) in chunk.iter().zip(hashes) {
                if hash.is_empty() {
                    continue; // listed, but its hash is gone: sidekiq-cron skips it too
                }
                let name = key.splitn(3, ':').nth(2).unwrap_or(key);
                found.push(Schedule::from_hash(name, &hash));
            }
        }
        Ok(found)
    }

    /// How many schedules `namespaces` list (one `SCARD` each): a cheap sign of a schedule
    /// created or deleted elsewhere.
    pub async fn count(&self, namespaces: &[String]) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let mut total = 0;
        for namespace in namespaces {
            let n: u64 = conn.scard(jobs_key(namespace)).await?;
            total += n;
        }
        Ok(total)
    }

    /// The score of the latest tick claimed (or marked claimed when the schedule was saved).
    pub async fn last_claimed(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn.clone();
        let latest: Vec<(String, f64)> = conn
            .zrevrange_withscores(enqueued_key(namespace, name), 0, 0)
            .await?;
        Ok(latest.first().map(|(_, score)| *score as i64))
    }

    /// The jobs enqueued lately, newest first: `(jid, enqueued)` as `:jid_history` holds them.
    pub async fn history(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut conn = self.conn.clone();
        let entries: Vec<String> = conn.lrange(history_key(namespace, name), 0, -1).await?;
        Ok(entries
            .iter()
            .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
            .map(|v| {
                (
                    v["jid"].as_str().unwrap_or_default().to_string(),
                    v["enqueued"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// Claims `tick` of `schedule` and pushes its job, in one step; with `tick` `None`, pushes
    /// it now without claiming anything ("Enqueue now", whatever the status).
    pub async fn claim(
        &self,
        schedule: &Schedule,
        tick: Option<DateTime<Utc>>,
    ) -> Result<Claim, StoreError> {
        let (ns, name) = (&schedule.namespace, &schedule.name);
        let running = running_key(ns, name);
        let mut conn = self.conn.clone();
        // A run marked by a process that died between this read and the script changes
        // nothing; one marked meanwhile makes the script refuse, and this reads again.
        for _ in 0..5 {
            let runs: Vec<String> = if schedule.overlap == Overlap::SkipIfRunning && tick.is_some()
            {
                conn.hvals(&running).await?
            } else {
                Vec::new()
            };
            let mut holders = runs.clone();
            holders.sort();
            holders.dedup();
            let now = Utc::now();
            let (jid, payload) = schedule.payload(now, self.wire);
            let queue = schedule.push_queue();
            let script = redis::Script::new(CLAIM);
            let mut invocation = script.prepare_invoke();
            invocation
                .key(job_key(ns, name))
                .key(enqueued_key(ns, name))
                .key(history_key(ns, name))
                .key(keys::queue(&queue))
                .key(keys::QUEUES)
                .key(&running);
            for holder in &holders {
                invocation.key(holder);
            }
            invocation
                .arg(&schedule.cron)
                .arg(tick.map(tick_member).unwrap_or_default())
                .arg(tick.map(|t| t.timestamp()).unwrap_or_default())
                .arg(payload)
                .arg(&queue)
                .arg(last_enqueue_format(now))
                .arg(history_entry(&jid, now))
                .arg(HISTORY_SIZE - 1)
                .arg(format!("({}", now.timestamp() - REMEMBER_SECS))
                .arg(schedule.overlap.as_str())
                .arg(runs.len());
            let result: i64 = invocation.invoke_async(&mut conn).await?;
            return Ok(match result {
                1 => Claim::Pushed { jid },
                0 => Claim::Taken,
                -2 => Claim::Disabled,
                -4 => Claim::Skipped,
                -5 => continue,
                _ => Claim::Changed,
            });
        }
        Ok(Claim::Taken)
    }

    /// "Enqueue now": pushes the schedule's job at once, enabled or not.
    pub async fn enqueue_now(&self, namespace: &str, name: &str) -> Result<String, StoreError> {
        let schedule = self
            .find(namespace, name)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.into()))?;
        match self.claim(&schedule, None).await? {
            Claim::Pushed { jid } => Ok(jid),
            _ => Err(StoreError::NotFound(name.into())),
        }
    }
}
