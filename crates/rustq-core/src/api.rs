//! Reading Sidekiq's data for humans and tests: the same questions `Sidekiq::Queue`,
//! `Sidekiq::ScheduledSet`/`RetrySet`/`DeadSet` and `Sidekiq::Stats` answer.

use crate::conn::Conn;
use redis::AsyncCommands;

use crate::client::Client;
use crate::error::{PayloadError, Result};
use crate::job::Job;
use crate::wire::{self, keys};

/// A queue (`queue:<name>`). Jobs are LPUSHed and taken from the right, so the oldest is last.
pub struct Queue<'a> {
    client: &'a Client,
    name: String,
}

impl Client {
    /// The queue `name`, like `Sidekiq::Queue.new(name)`. Touches no network.
    pub fn queue(&self, name: &str) -> Queue<'_> {
        Queue {
            client: self,
            name: name.to_string(),
        }
    }

    /// Names in the `queues` set, sorted.
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .connection()
            .smembers(keys::QUEUES)
            .await
            .map_err(self.redis_error("SMEMBERS queues"))?;
        names.sort();
        Ok(names)
    }

    /// The scheduled set (`schedule`), like `Sidekiq::ScheduledSet`.
    pub fn scheduled_set(&self) -> JobSet<'_> {
        JobSet::new(self, keys::SCHEDULE)
    }

    /// The retry set (`retry`), like `Sidekiq::RetrySet`.
    pub fn retry_set(&self) -> JobSet<'_> {
        JobSet::new(self, keys::RETRY)
    }

    /// The dead set (`dead`), like `Sidekiq::DeadSet`.
    pub fn dead_set(&self) -> JobSet<'_> {
        JobSet::new(self, keys::DEAD)
    }

    /// Totals like `Sidekiq::Stats`.
    pub async fn stats(&self) -> Result<Stats> {
        let mut conn = self.connection();
        let names = self.queue_names().await?;
        let mut pipe = redis::pipe();
        pipe.get(keys::STAT_PROCESSED)
            .get(keys::STAT_FAILED)
            .zcard(keys::SCHEDULE)
            .zcard(keys::RETRY)
            .zcard(keys::DEAD)
            .scard(keys::PROCESSES);
        for name in &names {
            pipe.llen(keys::queue(name));
        }
        let values: Vec<redis::Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.redis_error("stats"))?;
        let int = |v: &redis::Value| -> u64 {
            redis::from_redis_value_ref::<Option<u64>>(v)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let queue_sizes: Vec<(String, u64)> =
            names.into_iter().zip(values[6..].iter().map(int)).collect();
        Ok(Stats {
            processed: int(&values[0]),
            failed: int(&values[1]),
            scheduled_size: int(&values[2]),
            retry_size: int(&values[3]),
            dead_size: int(&values[4]),
            processes_size: int(&values[5]),
            enqueued: queue_sizes.iter().map(|(_, n)| n).sum(),
            queues: queue_sizes,
        })
    }
}

/// What `Sidekiq::Stats` reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Jobs processed, ever (`stat:processed`); failures count too.
    pub processed: u64,
    /// Jobs failed, ever (`stat:failed`).
    pub failed: u64,
    /// Jobs in the scheduled set.
    pub scheduled_size: u64,
    /// Jobs in the retry set.
    pub retry_size: u64,
    /// Jobs in the dead set.
    pub dead_size: u64,
    /// Process identities in the `processes` set.
    pub processes_size: u64,
    /// Jobs waiting in all queues together.
    pub enqueued: u64,
    /// `(queue name, size)` for every queue in the `queues` set.
    pub queues: Vec<(String, u64)>,
}

impl Queue<'_> {
    /// The queue's name, without the `queue:` prefix.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn conn(&self) -> Conn {
        self.client.connection()
    }

    /// How many jobs are waiting (`LLEN`).
    pub async fn size(&self) -> Result<u64> {
        self.conn()
            .llen(keys::queue(&self.name))
            .await
            .map_err(self.client.redis_error("LLEN"))
    }

    /// Seconds the oldest job has waited (0 when empty), from its `enqueued_at`.
    pub async fn latency(&self) -> Result<f64> {
        let oldest: Vec<String> = self
            .conn()
            .lrange(keys::queue(&self.name), -1, -1)
            .await
            .map_err(self.client.redis_error("LRANGE"))?;
        let enqueued = oldest
            .first()
            .and_then(|raw| Job::from_json(raw).ok())
            .and_then(|job| job.enqueued_at_secs());
        Ok(enqueued.map_or(0.0, |at| (wire::now_secs() - at).max(0.0)))
    }

    /// Raw payloads, oldest first.
    pub async fn raw_jobs(&self) -> Result<Vec<String>> {
        let mut raw: Vec<String> = self
            .conn()
            .lrange(keys::queue(&self.name), 0, -1)
            .await
            .map_err(self.client.redis_error("LRANGE"))?;
        raw.reverse();
        Ok(raw)
    }

    /// Parsed jobs, oldest first; payloads that do not parse are reported as errors in place.
    pub async fn jobs(&self) -> Result<Vec<Result<Job, PayloadError>>> {
        Ok(self
            .raw_jobs()
            .await?
            .iter()
            .map(|r| Job::from_json(r))
            .collect())
    }

    /// The waiting job with this jid, if any. Reads the whole queue; payloads that do not parse are
    /// skipped.
    pub async fn find_job(&self, jid: &str) -> Result<Option<Job>> {
        Ok(self
            .jobs()
            .await?
            .into_iter()
            .flatten()
            .find(|job| job.jid() == Some(jid)))
    }

    /// Deletes the waiting job with this jid; true if it was there. A unique job's lock goes
    /// with it, in the same step (only if the job was there to delete).
    pub async fn delete_job(&self, jid: &str) -> Result<bool> {
        let raw = self.raw_jobs().await?.into_iter().find(|raw| {
            Job::from_json(raw)
                .ok()
                .and_then(|j| j.jid().map(str::to_string))
                .as_deref()
                == Some(jid)
        });
        let Some(raw) = raw else {
            return Ok(false);
        };
        delete_with_lock(
            self.client,
            &raw,
            DELETE_FROM_LIST,
            &keys::queue(&self.name),
        )
        .await
    }

    /// Deletes the queue and removes it from `queues`.
    pub async fn clear(&self) -> Result<()> {
        redis::pipe()
            .del(keys::queue(&self.name))
            .ignore()
            .srem(keys::QUEUES, &self.name)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(self.client.redis_error("clear queue"))
    }
}

/// One member of a sorted set of jobs, with its score (epoch seconds).
#[derive(Clone, Debug, PartialEq)]
pub struct SetEntry {
    /// Epoch seconds: when the job runs (scheduled), is retried (retry) or died (dead).
    pub score: f64,
    /// The payload exactly as stored.
    pub raw: String,
}

impl SetEntry {
    /// Parses the payload.
    pub fn job(&self) -> Result<Job, PayloadError> {
        Job::from_json(&self.raw)
    }
}

/// `schedule`, `retry` or `dead`: jobs scored by time.
pub struct JobSet<'a> {
    client: &'a Client,
    key: &'static str,
}

impl<'a> JobSet<'a> {
    fn new(client: &'a Client, key: &'static str) -> JobSet<'a> {
        JobSet { client, key }
    }

    /// The set's Redis key: `schedule`, `retry` or `dead`.
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// How many jobs the set holds (`ZCARD`).
    pub async fn size(&self) -> Result<u64> {
        self.client
            .connection()
            .zcard(self.key)
            .await
            .map_err(self.client.redis_error("ZCARD"))
    }

    /// Every entry, lowest score (soonest) first.
    pub async fn entries(&self) -> Result<Vec<SetEntry>> {
        let pairs: Vec<(String, f64)> = self
            .client
            .connection()
            .zrange_withscores(self.key, 0, -1)
            .await
            .map_err(self.client.redis_error("ZRANGE"))?;
        Ok(pairs
            .into_iter()
            .map(|(raw, score)| SetEntry { score, raw })
            .collect())
    }

    /// The entry whose job has this jid, with the job parsed. Reads the whole set; payloads that do
    /// not parse are skipped.
    pub async fn find_job(&self, jid: &str) -> Result<Option<(SetEntry, Job)>> {
        Ok(self.entries().await?.into_iter().find_map(|entry| {
            let job = entry.job().ok()?;
            (job.jid() == Some(jid)).then_some((entry, job))
        }))
    }

    /// Deletes the entry whose job has this jid; true if it was there. A unique job's lock goes
    /// with it, in the same step (only if the job was there to delete).
    pub async fn delete_job(&self, jid: &str) -> Result<bool> {
        let Some((entry, _)) = self.find_job(jid).await? else {
            return Ok(false);
        };
        delete_with_lock(self.client, &entry.raw, DELETE_FROM_SET, self.key).await
    }

    /// Deletes the whole set.
    pub async fn clear(&self) -> Result<()> {
        self.client
            .connection()
            .del::<_, ()>(self.key)
            .await
            .map_err(self.client.redis_error("DEL"))
    }
}

const DELETE_FROM_LIST: &str = r#"
-- KEYS[1] the queue, KEYS[2] the job's unique lock (or the queue again). ARGV: payload, jid.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if KEYS[2] ~= KEYS[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
"#;

const DELETE_FROM_SET: &str = r#"
-- KEYS[1] the set, KEYS[2] the job's unique lock (or the set again). ARGV: payload, jid.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if KEYS[2] ~= KEYS[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
"#;

/// Deletes `raw` from `key` with `script`, and its unique lock (if it holds one) in the same step.
async fn delete_with_lock(client: &Client, raw: &str, script: &str, key: &str) -> Result<bool> {
    let job = Job::from_json(raw).ok();
    let lock = job
        .as_ref()
        .and_then(|j| crate::limits::unique(j.fields()).ok().flatten())
        .filter(|u| !u.digest.is_empty())
        .map(|u| crate::limits::unique_lock(&u.digest))
        .unwrap_or_else(|| key.to_string());
    let jid = job
        .as_ref()
        .and_then(|j| j.jid())
        .unwrap_or_default()
        .to_string();
    let deleted: i64 = redis::Script::new(script)
        .key(key)
        .key(lock)
        .arg(raw)
        .arg(jid)
        .invoke_async(&mut client.connection())
        .await
        .map_err(client.redis_error("delete job"))?;
    Ok(deleted == 1)
}
