//! Batches, in Sidekiq Pro's terms: a set of jobs (each payload carries `"bid"`) and callbacks
//! for when every job has run (`complete`: succeeded, or failed at least once), when all have
//! succeeded (`success`), and the first time one dies (`death`).
//!
//! The keys of a batch share the hash tag `{bid}`:
//! - `rustq:batch:{bid}` (hash): `description`, `callback_queue`, `callbacks` (JSON: event →
//!   `[[target, options], …]`), `created_at`, `parent_bid`, and once they happen `complete_at`,
//!   `success_at`, `death_at`;
//! - `…:jids` every job's jid; `…:pending` those not yet run to an outcome; `…:failed` those that
//!   failed and have not succeeded since; `…:dead` those that died.
//!
//! Jobs join a batch in one step with their push ([`add_jobs`]): nothing of a batch is visible to
//! workers before its jobs are all written, and a batch that is complete takes no more jobs.
//! The engine's `batch` check point counts each job once, atomically with its outcome, and
//! enqueues a callback in the step that sees its event happen.

use serde_json::{json, Value};

use crate::conn::Conn;
use crate::wire::keys;

/// The payload field naming a job's batch.
pub const BID: &str = "bid";

/// Seconds a batch's keys are kept after its last change (Sidekiq Pro: 30 days).
pub const EXPIRY_SECS: u64 = 30 * 24 * 60 * 60;

/// The class of a callback job: `args` = `[event, bid, target, options]`.
pub const CALLBACK_CLASS: &str = "Rustq::Batch::Callback";

/// The batch's hash.
pub fn batch_key(bid: &str) -> String {
    format!("rustq:batch:{{{bid}}}")
}

/// Every jid of the batch.
pub fn jids_key(bid: &str) -> String {
    format!("rustq:batch:{{{bid}}}:jids")
}

/// Jids not yet run to an outcome.
pub fn pending_key(bid: &str) -> String {
    format!("rustq:batch:{{{bid}}}:pending")
}

/// Jids that failed and have not succeeded since.
pub fn failed_key(bid: &str) -> String {
    format!("rustq:batch:{{{bid}}}:failed")
}

/// Jids that died.
pub fn dead_key(bid: &str) -> String {
    format!("rustq:batch:{{{bid}}}:dead")
}

/// Sorted set of every batch by creation time (`Rustq::BatchSet`).
pub const BATCHES: &str = "rustq:batches";

/// A batch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Every job has run: succeeded, or failed at least once.
    Complete,
    /// Every job has succeeded.
    Success,
    /// A job died (the first time).
    Death,
}

impl Event {
    /// Its name, as `on(:complete)` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Complete => "complete",
            Event::Success => "success",
            Event::Death => "death",
        }
    }

    /// The hash field stamped when it happens.
    pub fn field(self) -> &'static str {
        match self {
            Event::Complete => "complete_at",
            Event::Success => "success_at",
            Event::Death => "death_at",
        }
    }

    /// An event by name.
    pub fn parse(name: &str) -> Option<Event> {
        match name {
            "complete" => Some(Event::Complete),
            "success" => Some(Event::Success),
            "death" => Some(Event::Death),
            _ => None,
        }
    }
}

/// Why a batch could not take jobs.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The batch is complete (or was never created): Sidekiq Pro's `Batch::Immutable`.
    #[error("batch {0} is complete and takes no more jobs")]
    Immutable(String),
    /// No such batch.
    #[error("no batch {0}")]
    NotFound(String),
    /// A job Sidekiq would refuse: nothing was written.
    #[error(transparent)]
    InvalidJob(#[from] crate::JobError),
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// The batch's definition, written when its first jobs are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Definition {
    /// Its bid.
    pub bid: String,
    /// `description=`.
    pub description: Option<String>,
    /// `callback_queue=` (default `default`).
    pub callback_queue: Option<String>,
    /// Callbacks by event: `[[target, options], …]` (JSON).
    pub callbacks: Value,
    /// The batch it was made in (its `jobs` block ran inside another batch's).
    pub parent_bid: Option<String>,
}

const ADD_JOBS: &str = r#"
-- KEYS[1] the batch, KEYS[2] its jids, KEYS[3] its pending jids, KEYS[4] the set of batches,
-- KEYS[5] `queues`, KEYS[6] `schedule`, KEYS[7] its parent's pending jids, KEYS[8] its parent's
-- jids, KEYS[9] its parent's failed jids (7-9: its own when it has no parent), KEYS[10] its
-- failed jids, KEYS[11] its callback queue's list, then per queue used: the queue's list.
-- A child batch is pending in its parent (as `bid:<bid>`) from its creation until it completes.
-- ARGV: bid, now, expiry (s), the stage ('create': a new batch with its jobs; 'open': a new
-- batch whose jobs come later, held open meanwhile by the member 'open' in its pending set;
-- 'add': more jobs for an existing batch; 'close': its last jobs, the 'open' member removed), its
-- member in its parent's pending set, its definition as field/value pairs count then pairs, its
-- callback queue, its complete callbacks (count, then jid and payload each), its success
-- callbacks (the same), then per job: jid, queue index in KEYS (or 0 for `schedule`), queue
-- name, at ('' to enqueue now), payload.
-- A batch left with nothing pending when it is created or closed (its block pushed nothing, or
-- its children completed before it closed) completes here: the engine completes a batch only
-- at a job's outcome.
-- Returns 1, or 0 when the batch is complete (or, not being created, does not exist).
local bid, now, expiry = ARGV[1], ARGV[2], tonumber(ARGV[3])
local stage = ARGV[4]
local creating = stage == 'create' or stage == 'open'
local has_parent = KEYS[7] ~= KEYS[3]
if redis.call('HEXISTS', KEYS[1], 'complete_at') == 1 then return 0 end
if not creating and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local fields = tonumber(ARGV[6])
local at = 7
if creating then
  for i = 0, fields - 1 do
    redis.call('HSETNX', KEYS[1], ARGV[at + 2 * i], ARGV[at + 2 * i + 1])
  end
  redis.call('ZADD', KEYS[4], now, bid)
  -- Batches whose keys have expired leave the list of batches.
  local expired = '(' .. (tonumber(now) - expiry)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', expired)
  if has_parent then
    redis.call('SADD', KEYS[7], ARGV[5])
    redis.call('EXPIRE', KEYS[7], expiry)
  end
end
at = at + 2 * fields
local callback_queue = ARGV[at]
local on_complete = at + 1
local on_success = on_complete + 1 + 2 * tonumber(ARGV[on_complete])
at = on_success + 1 + 2 * tonumber(ARGV[on_success])
if stage == 'open' then redis.call('SADD', KEYS[3], 'open') end
-- Jobs are written a slice at a time, one command per set or list a slice touches.
local members, pushes, names, scheduled = {}, {}, {}, {}
local function flush()
  if #members > 0 then
    redis.call('SADD', KEYS[2], unpack(members))
    redis.call('SADD', KEYS[3], unpack(members))
  end
  for index, payloads in pairs(pushes) do
    redis.call('SADD', KEYS[5], names[index])
    redis.call('LPUSH', KEYS[index], unpack(payloads))
  end
  if #scheduled > 0 then redis.call('ZADD', KEYS[6], unpack(scheduled)) end
  members, pushes, scheduled = {}, {}, {}
end
while at <= #ARGV do
  local jid, index, queue, when, payload = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  members[#members + 1] = jid
  if when == '' then
    names[index] = queue
    local payloads = pushes[index] or {}
    pushes[index] = payloads
    payloads[#payloads + 1] = payload
  else
    scheduled[#scheduled + 1] = when
    scheduled[#scheduled + 1] = payload
  end
  if #members == 1000 then flush() end
  at = at + 5
end
flush()
if stage == 'close' then redis.call('SREM', KEYS[3], 'open') end
-- Stamps `field` once and enqueues the callbacks listed from ARGV[from]; a child's callback jobs
-- belong to its parent, which cannot complete in this step (its own block, or the job making
-- this child, still holds it).
local function finish(field, from)
  if redis.call('HSETNX', KEYS[1], field, now) == 0 then return false end
  for i = 1, tonumber(ARGV[from]) do
    local jid, payload = ARGV[from + 2 * i - 1], ARGV[from + 2 * i]
    redis.call('SADD', KEYS[5], callback_queue)
    redis.call('LPUSH', KEYS[11], payload)
    if has_parent then
      redis.call('SADD', KEYS[7], jid)
      redis.call('SADD', KEYS[8], jid)
    end
  end
  return true
end
if (stage == 'close' or stage == 'create') and redis.call('SCARD', KEYS[3]) == 0 then
  if finish('complete_at', on_complete) and has_parent then
    redis.call('SREM', KEYS[7], ARGV[5])
    if redis.call('SCARD', KEYS[10]) > 0 then
      redis.call('SADD', KEYS[9], ARGV[5])
      redis.call('EXPIRE', KEYS[9], expiry)
    end
  end
  if redis.call('SCARD', KEYS[10]) == 0 and finish('success_at', on_success) and has_parent then
    redis.call('SREM', KEYS[9], ARGV[5])
  end
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], expiry) end
return 1
"#;

static ADD_JOBS_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(ADD_JOBS));

/// A job to add: its jid, queue, when (None: now), and its payload as it will be stored (with
/// `"bid"` and, for one enqueued now, `enqueued_at`).
#[derive(Clone, Debug)]
pub struct BatchJob {
    /// Its jid.
    pub jid: String,
    /// Its queue.
    pub queue: String,
    /// When it is scheduled (epoch seconds), or None to enqueue it now.
    pub at: Option<f64>,
    /// The payload.
    pub payload: String,
}

/// How a step of [`add_jobs`] stands to the batch's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A new batch and all its jobs, in one step.
    Create,
    /// A new batch whose jobs come later (child batches may be made meanwhile): held open, so
    /// it cannot complete before [`Stage::Close`].
    Open,
    /// More jobs for an existing batch (from one of its jobs, say).
    Add,
    /// The last jobs of a batch opened with [`Stage::Open`]; it may complete from now on.
    Close,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Create => "create",
            Stage::Open => "open",
            Stage::Add => "add",
            Stage::Close => "close",
        }
    }
}

/// Writes `jobs` into batch `definition.bid` and pushes them, in one step, at `stage` of the
/// batch's life (a new batch's definition is written with its first step).
/// [`BatchError::Immutable`] when the batch is complete: nothing is written.
pub async fn add_jobs(
    conn: &mut Conn,
    definition: &Definition,
    stage: Stage,
    jobs: &[BatchJob],
    now: f64,
    wire: crate::WireVersion,
) -> Result<(), BatchError> {
    let bid = &definition.bid;
    let parent = definition.parent_bid.as_deref().unwrap_or(bid);
    let callback_queue = definition.callback_queue.as_deref().unwrap_or("default");
    let mut invocation = ADD_JOBS_SCRIPT.prepare_invoke();
    invocation
        .key(batch_key(bid))
        .key(jids_key(bid))
        .key(pending_key(bid))
        .key(BATCHES)
        .key(keys::QUEUES)
        .key(keys::SCHEDULE)
        .key(pending_key(parent))
        .key(jids_key(parent))
        .key(failed_key(parent))
        .key(failed_key(bid))
        .key(keys::queue(callback_queue));
    let mut queues: Vec<&str> = Vec::new();
    for job in jobs {
        if job.at.is_none() && !queues.contains(&job.queue.as_str()) {
            queues.push(&job.queue);
            invocation.key(keys::queue(&job.queue));
        }
    }
    let mut fields: Vec<(&str, String)> = vec![
        ("bid", bid.clone()),
        ("created_at", crate::wire::format_float(now)),
        ("callbacks", definition.callbacks.to_string()),
        ("callback_queue", callback_queue.to_string()),
    ];
    if let Some(d) = &definition.description {
        fields.push(("description", d.clone()));
    }
    if let Some(p) = &definition.parent_bid {
        fields.push(("parent_bid", p.clone()));
    }
    invocation
        .arg(bid)
        .arg(crate::wire::format_float(now))
        .arg(EXPIRY_SECS)
        .arg(stage.as_str())
        .arg(child_member(bid))
        .arg(fields.len());
    for (k, v) in &fields {
        invocation.arg(*k).arg(v);
    }
    // The callbacks a batch left with nothing pending runs at once (see the script).
    invocation.arg(callback_queue);
    for event in [Event::Complete, Event::Success] {
        let targets = callbacks_of(&definition.callbacks, event);
        invocation.arg(targets.len());
        for (target, options) in &targets {
            let jid = crate::generate_jid();
            let callback = Callback {
                event,
                bid,
                target,
                options,
                queue: callback_queue,
                in_batch: definition.parent_bid.as_deref(),
            };
            invocation.arg(&jid).arg(callback.payload(&jid, now, wire));
        }
    }
    for job in jobs {
        let index = match job.at {
            Some(_) => 0,
            None => 12 + queues.iter().position(|q| *q == job.queue).unwrap_or(0),
        };
        invocation
            .arg(&job.jid)
            .arg(index)
            .arg(&job.queue)
            .arg(job.at.map(crate::wire::format_float).unwrap_or_default())
            .arg(&job.payload);
    }
    let added: i64 = invocation.invoke_async(conn).await?;
    if added == 1 {
        Ok(())
    } else {
        Err(BatchError::Immutable(bid.clone()))
    }
}

impl crate::Client {
    /// Pushes `items` (Sidekiq's hash shape, as [`crate::Client::push`] takes them) as jobs of
    /// batch `definition.bid` — at `stage` of its life — all in one step; returns their jids.
    ///
    /// ```no_run
    /// # async fn demo(client: rustq_core::Client) -> Result<(), rustq_core::batch::BatchError> {
    /// use rustq_core::batch::{Definition, Stage};
    /// let definition = Definition {
    ///     bid: "import-42".into(),
    ///     callbacks: serde_json::json!({"success": [["ImportDone", {"file": "a.csv"}]]}),
    ///     ..Definition::default()
    /// };
    /// let rows = (0..3).map(|n| serde_json::json!({"class": "RowJob", "args": [n]}).as_object().unwrap().clone());
    /// let jids = client.push_batch(&definition, Stage::Create, rows.collect()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn push_batch(
        &self,
        definition: &Definition,
        stage: Stage,
        items: Vec<crate::Fields>,
    ) -> Result<Vec<String>, BatchError> {
        let now = self.options().clock.now();
        let mut jobs = Vec::with_capacity(items.len());
        for item in items {
            for entry in self.prepare_push(item)?.jobs() {
                let mut job = entry.job;
                job.set(BID, definition.bid.as_str());
                if entry.at.is_none() {
                    job.set_time("enqueued_at", now, self.options().wire);
                }
                jobs.push(BatchJob {
                    jid: job.jid().unwrap_or_default().to_string(),
                    queue: job.queue().unwrap_or("default").to_string(),
                    at: entry.at,
                    payload: job.to_json(),
                });
            }
        }
        add_jobs(
            &mut self.connection(),
            definition,
            stage,
            &jobs,
            now,
            self.options().wire,
        )
        .await?;
        Ok(jobs.into_iter().map(|job| job.jid).collect())
    }
}

/// A batch's status, as `Sidekiq::Batch::Status` reads it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Status {
    /// Its bid.
    pub bid: String,
    /// How many jobs it has had.
    pub total: u64,
    /// How many have not run to an outcome.
    pub pending: u64,
    /// How many failed and have not succeeded since.
    pub failures: u64,
    /// Its hash, as stored (description, callback_queue, created_at, complete_at, …).
    pub fields: std::collections::HashMap<String, String>,
}

/// Reads batch `bid`'s status; [`BatchError::NotFound`] when it has no keys (never made, or
/// expired).
pub async fn status(conn: &mut Conn, bid: &str) -> Result<Status, BatchError> {
    let (fields, total, pending, failures): (
        std::collections::HashMap<String, String>,
        u64,
        u64,
        u64,
    ) = redis::pipe()
        .hgetall(batch_key(bid))
        .scard(jids_key(bid))
        .scard(pending_key(bid))
        .scard(failed_key(bid))
        .query_async(conn)
        .await?;
    if fields.is_empty() {
        return Err(BatchError::NotFound(bid.to_string()));
    }
    Ok(Status {
        bid: bid.to_string(),
        total,
        pending,
        failures,
        fields,
    })
}

/// The members of one of a batch's jid sets (`jids`, `failed`, `dead`).
pub async fn members(conn: &mut Conn, key: &str) -> Result<Vec<String>, BatchError> {
    let mut jids: Vec<String> = redis::cmd("SMEMBERS").arg(key).query_async(conn).await?;
    jids.sort();
    Ok(jids)
}

/// A child batch's member in its parent's pending set, until the child completes.
pub fn child_member(bid: &str) -> String {
    format!("bid:{bid}")
}

/// The callbacks of `event` in a batch's `callbacks` field: `(target, options)` each.
pub fn callbacks_of(callbacks: &Value, event: Event) -> Vec<(String, Value)> {
    callbacks
        .get(event.as_str())
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|entry| {
                    let target = entry.get(0)?.as_str()?.to_string();
                    Some((target, entry.get(1).cloned().unwrap_or(Value::Null)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A callback job for `event` of batch `bid`.
pub struct Callback<'a> {
    /// The event.
    pub event: Event,
    /// The batch whose event it is.
    pub bid: &'a str,
    /// A class, or `"Class#method"`.
    pub target: &'a str,
    /// What `on` was given.
    pub options: &'a Value,
    /// The callback queue.
    pub queue: &'a str,
    /// The batch the callback job itself belongs to: the parent of a child batch, whose
    /// callbacks so run before the parent's.
    pub in_batch: Option<&'a str>,
}

impl Callback<'_> {
    /// The job's payload, with `jid`.
    pub fn payload(&self, jid: &str, now: f64, wire: crate::WireVersion) -> String {
        let mut job = json!({
            "class": CALLBACK_CLASS,
            "args": [self.event.as_str(), self.bid, self.target, self.options],
            "queue": self.queue,
            "retry": true,
            "jid": jid,
            "created_at": wire.timestamp(now),
            "enqueued_at": wire.timestamp(now),
        });
        if let Some(parent) = self.in_batch {
            job[BID] = Value::from(parent);
        }
        job.to_string()
    }
}
