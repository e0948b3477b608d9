//! Finds processes that died with jobs in progress and puts those jobs back on their queues.
//!
//! A process is dead when its heartbeat key has expired, or, on this host, when its pid is
//! gone (so a restart after SIGKILL recovers at once, not 60 s later). A job that was running
//! on dying processes more than `max_recoveries` times is taken to be what kills them and goes
//! to the dead set with an explanation, so one job cannot crash-loop a fleet.
//!
//! Only running jobs count: a process holds its jobs oldest-first (the right end of each
//! in-progress list) and starts them in that order, so the `concurrency` oldest of each list
//! are the ones that may have been running; jobs fetched ahead behind them were never started
//! and go back without a mark.

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use rustq_core::wire::{self, keys};
use rustq_core::Job;

use crate::ack::{add_dead, DeadSetLimits};
use crate::keys as rkeys;

const RECOVER: &str = r#"
-- KEYS[1] = rustq:processes, KEYS[2] = rustq:recoveries, KEYS[3] = rustq:poison
-- ARGV[1] = identity, ARGV[2] = max recoveries, ARGV[3] = force (skip the liveness check),
-- ARGV[4] = count (1 to count this as a death), ARGV[5] = in-progress prefix, ARGV[6] = scheduling list
local identity = ARGV[1]
if ARGV[3] ~= '1' and redis.call('EXISTS', identity) == 1 then return {0, 0} end
local entry = redis.call('HGET', KEYS[1], identity)
if not entry then return {0, 0} end
entry = cjson.decode(entry)
-- Older entries were a bare list of queues: count every job then.
local queues, concurrency = entry, 1e9
if entry.queues then queues, concurrency = entry.queues, entry.concurrency end
local limit = tonumber(ARGV[2])
local moved, poisoned = 0, 0
local function jid_of(job)
  local ok, decoded = pcall(cjson.decode, job)
  if ok and type(decoded) == 'table' and type(decoded.jid) == 'string' then return decoded.jid, decoded end
  return redis.sha1hex(job), nil
end
local function give_back(job, queue, started)
  if ARGV[4] == '1' and started then
    local id = jid_of(job)
    if redis.call('HINCRBY', KEYS[2], id, 1) > limit then
      redis.call('LPUSH', KEYS[3], job)
      poisoned = poisoned + 1
      return
    end
  end
  redis.call('SADD', 'queues', queue)
  redis.call('RPUSH', 'queue:' .. queue, job)
  moved = moved + 1
end
-- The list's right end is its oldest job. Taking from the left (newest) and pushing on the
-- queue's right end puts the oldest job back at the very front, so order is kept and the
-- job that was running is the first one fetched again.
for _, queue in ipairs(queues) do
  local list = ARGV[5] .. identity .. ':' .. queue
  local remaining = redis.call('LLEN', list)
  while remaining > 0 do
    local job = redis.call('LPOP', list)
    if not job then break end
    give_back(job, queue, remaining <= concurrency)
    remaining = remaining - 1
  end
end
while true do
  local job = redis.call('RPOP', ARGV[6])
  if not job then break end
  local _, decoded = jid_of(job)
  local queue = (decoded and type(decoded.queue) == 'string') and decoded.queue or 'default'
  -- A due scheduled job was never started: it does not count as a death.
  redis.call('SADD', 'queues', queue)
  redis.call('LPUSH', 'queue:' .. queue, job)
  moved = moved + 1
end
redis.call('EXPIRE', KEYS[2], 86400)
redis.call('HDEL', KEYS[1], identity)
return {moved, poisoned}
"#;

pub struct Recovery {
    conn: ConnectionManager,
    identity: String,
    max_recoveries: u32,
    wire: rustq_core::WireVersion,
    script: redis::Script,
    dead: DeadSetLimits,
}

impl Recovery {
    pub fn new(
        conn: ConnectionManager,
        identity: &str,
        max_recoveries: u32,
        wire: rustq_core::WireVersion,
    ) -> Recovery {
        Recovery {
            conn,
            identity: identity.to_string(),
            max_recoveries,
            wire,
            script: redis::Script::new(RECOVER),
            dead: DeadSetLimits::default(),
        }
    }

    /// Limits for the dead set (jobs buried after `max_recoveries` deaths); Sidekiq's by default.
    pub fn with_dead_set(mut self, limits: DeadSetLimits) -> Recovery {
        self.dead = limits;
        self
    }

    /// Records that this process fetches from `queues` running `concurrency` jobs at once, so
    /// others can recover it if it dies.
    pub async fn register(&self, queues: &[String], concurrency: usize) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let entry = serde_json::json!({ "queues": queues, "concurrency": concurrency });
        conn.hset(rkeys::PROCESSES, &self.identity, entry.to_string())
            .await
    }

    /// Recovers every dead process's jobs; returns how many jobs went back to their queues.
    pub async fn recover_dead(&self) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        let identities: Vec<String> = conn.hkeys(rkeys::PROCESSES).await?;
        let mut total = 0;
        for identity in identities.iter().filter(|i| **i != self.identity) {
            let force = pid_gone_on_this_host(identity);
            let (moved, poisoned) = self.run(identity, force, true).await?;
            if force {
                // Its heartbeat would linger in the Web UI for up to a minute: remove it now.
                redis::pipe()
                    .srem(keys::PROCESSES, identity)
                    .ignore()
                    .unlink(&[
                        identity.clone(),
                        keys::work(identity),
                        keys::workers_v6(identity),
                    ])
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            if moved + poisoned > 0 {
                tracing::warn!(process = %identity, moved, poisoned, "recovered jobs of a dead process");
            }
            total += moved;
        }
        self.bury_poison().await?;
        Ok(total)
    }

    /// On a clean exit: anything still in this process's lists goes back, not counted as a death.
    pub async fn release_own(&self) -> redis::RedisResult<u64> {
        let identity = self.identity.clone();
        Ok(self.run(&identity, true, false).await?.0)
    }

    async fn run(
        &self,
        identity: &str,
        force: bool,
        count: bool,
    ) -> redis::RedisResult<(u64, u64)> {
        let mut conn = self.conn.clone();
        self.script
            .key(rkeys::PROCESSES)
            .key(rkeys::RECOVERIES)
            .key(rkeys::POISON)
            .arg(identity)
            .arg(self.max_recoveries)
            .arg(if force { "1" } else { "0" })
            .arg(if count { "1" } else { "0" })
            .arg(rkeys::INPROGRESS_PREFIX)
            .arg(rkeys::scheduling(identity))
            .invoke_async(&mut conn)
            .await
    }

    /// Moves jobs that keep killing processes to the dead set, with an error saying so.
    async fn bury_poison(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        loop {
            let tail: Vec<Vec<u8>> = conn.lrange(rkeys::POISON, -50, -1).await?;
            if tail.is_empty() {
                return Ok(());
            }
            let now = wire::now_secs();
            let mut pipe = redis::pipe();
            pipe.atomic();
            for raw in &tail {
                let message = format!(
                    "the process running this job died {} times (killed, crashed or out of memory); it was moved to the dead set so it cannot crash-loop every worker",
                    self.max_recoveries + 1
                );
                let payload = match std::str::from_utf8(raw)
                    .ok()
                    .and_then(|s| Job::from_json(s).ok())
                {
                    Some(mut job) => {
                        job.set("error_message", message);
                        job.set("error_class", "Rustq::ProcessDied");
                        job.set_time("failed_at", now, self.wire);
                        job.to_json()
                    }
                    None => crate::processor::poison_payload(
                        raw,
                        "default",
                        &rustq_core::PayloadError::InvalidJson(message),
                        self.wire,
                        now,
                    ),
                };
                add_dead(&mut pipe, &payload, now, self.dead);
                pipe.lrem(rkeys::POISON, -1, raw).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
    }
}

/// True when `identity` (`host:pid:nonce`) names this host and its pid no longer runs.
fn pid_gone_on_this_host(identity: &str) -> bool {
    let mut parts = identity.rsplitn(3, ':');
    let (Some(_nonce), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let this_host = gethostname::gethostname().to_string_lossy().into_owned();
    if host != this_host {
        return false;
    }
    match pid.parse::<u32>() {
        Ok(pid) if pid == std::process::id() => false,
        Ok(pid) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}
