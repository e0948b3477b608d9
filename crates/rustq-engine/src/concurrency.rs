//! Concurrency limits: a job whose payload has `"concurrency": {"key": K, "limit": N}` runs only
//! while fewer than N jobs with key K run, fleet-wide. One over the limit waits in a list for its
//! key and queue — not requeued, not retried, not churning its queue — and goes back to the front
//! of its queue, oldest first, in the same atomic step that frees a slot.
//!
//! A slot belongs to the process running the job (`rustq:limit:{K}:running`: jid → identity) and
//! is given up with the job's outcome, whatever it is, atomically. A process that dies holding
//! slots has them freed by [`Reaper`] once its heartbeat key is gone — at once after a restart
//! on the same host (recovery unlinks a dead local process's key), else when it expires — never
//! because time went by: a long job keeps its slot.
//!
//! Keys of one limit share the hash tag `{K}`; the in-progress list a waiting job leaves and the
//! process's index of its slots do not (a Redis Cluster would need them on one node).

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use redis::AsyncCommands;
use rustq_core::limits::{self, Concurrency, Limits};
use rustq_core::wire::keys;
use rustq_core::{Conn, Job};

use crate::check_point::{CheckFuture, CheckPoint, Outcome, Verdict};
use crate::keys as rkeys;
use crate::service::{BoxFuture, Service};
use crate::work::{Deferral, UnitOfWork, Write};

/// Takes a slot, or moves the job from the in-progress list to its waiting list, in one step.
const ADMIT: &str = r#"
-- KEYS[1] the key's running hash, KEYS[2] its waiting list for this queue, KEYS[3] the
-- in-progress list holding the job, KEYS[4] the process's slot index, KEYS[5] the set of slot
-- holders, KEYS[6] the set of the key's queues, KEYS[7] the set of every key, KEYS[8] the set of
-- keys whose jobs come from more than one queue.
-- ARGV: limit, jid, identity, the job as held, its slot's entry in the index, the key, the queue.
-- Returns 1 (run) or 0 (it now waits).
local running = redis.call('HGET', KEYS[1], ARGV[2])
if running or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[1]) then
  -- Its own slot (a job given back after its process died runs again in it) or a free one.
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[5])
  redis.call('SADD', KEYS[5], ARGV[3])
  redis.call('SADD', KEYS[7], ARGV[6])
  return 1
end
if redis.call('LREM', KEYS[3], -1, ARGV[4]) == 0 then
  -- No longer this process's (recovered elsewhere): leave it alone.
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[4])
if redis.call('SADD', KEYS[6], ARGV[7]) == 1 and redis.call('SCARD', KEYS[6]) > 1 then
  redis.call('SADD', KEYS[8], ARGV[6])
end
redis.call('SADD', KEYS[7], ARGV[6])
return 0
"#;

/// Frees the slot a dead process held and lets waiting jobs go, in one step.
const FREE: &str = r#"
-- KEYS[1] the dead process's slot index, KEYS[2] its heartbeat key, KEYS[3] the set of slot
-- holders, KEYS[4] the key's running hash, KEYS[5] its waiting list for the queue, KEYS[6] the
-- queue, KEYS[7] `queues`.
-- ARGV: identity, jid, limit, queue name. Returns how many waiting jobs went back to the queue,
-- or -1 if the process beats again.
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('HGET', KEYS[4], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[4], ARGV[2]) end
redis.call('HDEL', KEYS[1], ARGV[2])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
local free = tonumber(ARGV[3]) - redis.call('HLEN', KEYS[4])
local moved = 0
while moved < free do
  if not redis.call('LMOVE', KEYS[5], KEYS[6], 'RIGHT', 'RIGHT') then break end
  moved = moved + 1
end
if moved > 0 then redis.call('SADD', KEYS[7], ARGV[4]) end
return moved
"#;

/// Frees the slot of an inline limiter (`Rustq::Limiter.concurrent`) a dead process held.
const FREE_LIMITER: &str = r#"
-- KEYS[1] the dead process's slot index, KEYS[2] its heartbeat key, KEYS[3] the set of slot
-- holders, KEYS[4] the limiter's slots. ARGV: identity, token. Returns -1 if the process beats.
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('HGET', KEYS[4], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[4], ARGV[2]) end
redis.call('HDEL', KEYS[1], ARGV[2])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return 0
"#;

/// Lets waiting jobs of a queue go while the key has free slots (keys used from several queues,
/// whose waiting jobs a finishing job of another queue does not release).
const RELEASE_FREE: &str = r#"
-- KEYS[1] the key's running hash, KEYS[2] its waiting list for the queue, KEYS[3] the queue,
-- KEYS[4] `queues`. ARGV: limit, queue name. Returns how many went back.
local free = tonumber(ARGV[1]) - redis.call('HLEN', KEYS[1])
local moved = 0
while moved < free do
  if not redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'RIGHT') then break end
  moved = moved + 1
end
if moved > 0 then redis.call('SADD', KEYS[4], ARGV[2]) end
return moved
"#;

static ADMIT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ADMIT));
static FREE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FREE));
static FREE_LIMITER_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(FREE_LIMITER));
static RELEASE_FREE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(RELEASE_FREE));

/// How often [`Reaper`] looks for dead holders' slots.
pub const REAP_EVERY: Duration = Duration::from_secs(2);

/// Set of the keys whose jobs come from more than one queue.
pub const MIXED_KEYS: &str = "rustq:limit:mixed";

/// Counts of jobs deferred by a limit, by kind (`concurrency`, `throttle`).
#[derive(Clone)]
pub struct LimitCounters {
    /// Jobs that waited instead of running.
    pub deferred: IntCounterVec,
}

impl Default for LimitCounters {
    fn default() -> Self {
        LimitCounters {
            deferred: IntCounterVec::new(
                Opts::new(
                    "rustq_limit_deferred_total",
                    "Jobs that waited instead of running: over a concurrency limit (kind=concurrency) or a rate (kind=throttle)",
                ),
                &["kind", "class"],
            )
            .expect("valid metric"),
        }
    }
}

impl LimitCounters {
    /// Serves them with the process's other metrics.
    pub fn register(&self, registry: &Registry) {
        let _ = registry.register(Box::new(self.deferred.clone()));
    }
}

/// The check point that admits jobs under their concurrency limit.
pub struct ConcurrencyLimit {
    /// The connection, once the process has one.
    pub conn: Arc<OnceLock<Conn>>,
    /// This process's identity (its heartbeat key).
    pub identity: String,
    /// Deferral counts.
    pub counters: LimitCounters,
}

/// The slot's entry in the holder's index: what the reaper needs to free it.
fn slot_entry(limit: &Concurrency, queue: &str) -> String {
    serde_json::json!({"key": limit.key, "limit": limit.limit, "queue": queue}).to_string()
}

impl CheckPoint for ConcurrencyLimit {
    fn before<'a>(&'a self, job: &'a Job, unit: &'a UnitOfWork) -> CheckFuture<'a> {
        let Some(limit) = Limits::of(job).concurrency else {
            return Box::pin(std::future::ready(Verdict::Run));
        };
        Box::pin(async move {
            let (Some(conn), Some(jid)) = (self.conn.get(), job.jid()) else {
                return Verdict::Run;
            };
            let waiting = limits::concurrency_waiting(&limit.key, &unit.queue);
            let mut invocation = ADMIT_SCRIPT.prepare_invoke();
            invocation
                .key(limits::concurrency_running(&limit.key))
                .key(&waiting)
                .key(rkeys::inprogress(&self.identity, &unit.queue))
                .key(limits::held_slots(&self.identity))
                .key(limits::SLOT_HOLDERS)
                .key(limits::concurrency_queues(&limit.key))
                .key(limits::CONCURRENCY_KEYS)
                .key(MIXED_KEYS)
                .arg(limit.limit)
                .arg(jid)
                .arg(&self.identity)
                .arg(unit.raw.as_slice())
                .arg(slot_entry(&limit, &unit.queue))
                .arg(&limit.key)
                .arg(&unit.queue);
            // Redis away: keep asking (the job must neither run over its limit nor be lost).
            let mut backoff = Duration::from_millis(50);
            loop {
                match invocation.invoke_async::<i64>(&mut conn.clone()).await {
                    Ok(1) => return Verdict::Run,
                    Ok(_) => {
                        self.counters
                            .deferred
                            .with_label_values(&["concurrency", job.display_class()])
                            .inc();
                        tracing::debug!(jid, key = %limit.key, "over its concurrency limit: waits");
                        return Verdict::Taken(Deferral::Into(waiting));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, jid, "cannot take a concurrency slot; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        })
    }

    fn on_outcome(&self, outcome: &Outcome<'_>, writes: &mut Vec<Write>) {
        if !outcome.passed {
            return;
        }
        let (Some(limit), Some(jid)) = (Limits::of(outcome.job).concurrency, outcome.job.jid())
        else {
            return;
        };
        writes.extend(release(&limit, jid, &self.identity, outcome.queue));
    }
}

/// What gives up a job's slot: the slot, its index entry, and the oldest job waiting in its
/// queue back to the front of that queue (it is admitted when fetched, or waits again).
pub fn release(limit: &Concurrency, jid: &str, identity: &str, queue: &str) -> Vec<Write> {
    vec![
        Write::new("HDEL")
            .key(limits::concurrency_running(&limit.key))
            .arg(jid),
        Write::new("HDEL")
            .key(limits::held_slots(identity))
            .arg(jid),
        Write::new("LMOVE")
            .key(limits::concurrency_waiting(&limit.key, queue))
            .key(keys::queue(queue))
            .arg("RIGHT")
            .arg("RIGHT"),
    ]
}

/// Frees the slots of processes that died, and lets waiting jobs of keys shared by several
/// queues go where slots are free.
pub struct Reaper {
    /// Its connection.
    pub conn: Conn,
    /// This process's identity.
    pub identity: String,
    /// How often it looks.
    pub every: Duration,
}

/// A slot in a holder's index: a job's concurrency slot (`key`, `limit`, `queue`), or an inline
/// limiter's (`running`: the limiter's slots).
#[derive(serde::Deserialize)]
struct SlotEntry {
    #[serde(default)]
    key: String,
    #[serde(default)]
    limit: u64,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    running: Option<String>,
}

impl Reaper {
    /// One look: frees every slot of every holder whose heartbeat key is gone; returns how many
    /// waiting jobs went back to their queues.
    pub async fn reap(&self) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        let holders: Vec<String> = conn.smembers(limits::SLOT_HOLDERS).await?;
        let mut moved = 0;
        for holder in holders.iter().filter(|h| **h != self.identity) {
            if conn.exists::<_, bool>(holder).await? {
                continue;
            }
            let index = limits::held_slots(holder);
            let slots: Vec<(String, String)> = conn.hgetall(&index).await?;
            if slots.is_empty() {
                let _: () = conn.srem(limits::SLOT_HOLDERS, holder).await?;
                continue;
            }
            for (jid, entry) in slots {
                let Ok(slot) = serde_json::from_str::<SlotEntry>(&entry) else {
                    let _: () = conn.hdel(&index, &jid).await?;
                    continue;
                };
                if let Some(running) = &slot.running {
                    let freed: i64 = FREE_LIMITER_SCRIPT
                        .key(&index)
                        .key(holder)
                        .key(limits::SLOT_HOLDERS)
                        .key(running)
                        .arg(holder)
                        .arg(&jid)
                        .invoke_async(&mut conn)
                        .await?;
                    if freed < 0 {
                        break;
                    }
                    tracing::warn!(process = %holder, limiter = %running, "freed the limiter slot of a dead process");
                    continue;
                }
                let freed: i64 = FREE_SCRIPT
                    .key(&index)
                    .key(holder)
                    .key(limits::SLOT_HOLDERS)
                    .key(limits::concurrency_running(&slot.key))
                    .key(limits::concurrency_waiting(&slot.key, &slot.queue))
                    .key(keys::queue(&slot.queue))
                    .key(keys::QUEUES)
                    .arg(holder)
                    .arg(&jid)
                    .arg(slot.limit)
                    .arg(&slot.queue)
                    .invoke_async(&mut conn)
                    .await?;
                if freed < 0 {
                    break;
                }
                tracing::warn!(process = %holder, jid = %jid, key = %slot.key, "freed the concurrency slot of a dead process");
                moved += freed as u64;
            }
        }
        moved += self.release_mixed().await?;
        Ok(moved)
    }

    /// Keys used from several queues: waiting jobs of a queue other than the finishing job's go
    /// back once a slot is free.
    async fn release_mixed(&self) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        let mixed: Vec<String> = conn.smembers(MIXED_KEYS).await?;
        let mut moved = 0;
        for key in mixed {
            let queues: Vec<String> = conn.smembers(limits::concurrency_queues(&key)).await?;
            let running = limits::concurrency_running(&key);
            for queue in queues {
                let waiting = limits::concurrency_waiting(&key, &queue);
                // The limit is in each waiting job's payload: read from the oldest.
                let oldest: Option<String> = conn.lindex(&waiting, -1).await?;
                let Some(limit) = oldest
                    .and_then(|raw| Job::from_json(&raw).ok())
                    .and_then(|job| Limits::of(&job).concurrency)
                else {
                    continue;
                };
                let n: i64 = RELEASE_FREE_SCRIPT
                    .key(&running)
                    .key(&waiting)
                    .key(keys::queue(&queue))
                    .key(keys::QUEUES)
                    .arg(limit.limit)
                    .arg(&queue)
                    .invoke_async(&mut conn)
                    .await?;
                moved += n.max(0) as u64;
            }
        }
        Ok(moved)
    }
}

impl Service for Reaper {
    fn name(&self) -> &'static str {
        "limit reaper"
    }

    fn run(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            loop {
                if let Err(e) = self.reap().await {
                    tracing::warn!(error = %e, "cannot free dead processes' concurrency slots; will retry");
                }
                tokio::time::sleep(self.every).await;
            }
        })
    }
}
