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

use std::time::Duration;

use redis::AsyncCommands;
use rustq_core::wire::{self, keys};
use rustq_core::Conn;
use rustq_core::WireVersion;

use crate::check_point::CheckPoints;
use crate::dead_set::{self, DeadSetLimits};
use crate::failure::class;
use crate::keys as rkeys;
use crate::outcome::{self, Batch, Effect};
use crate::service::{BoxFuture, Service};
use crate::work::{self, Action};

const RECOVER: &str = r#"
-- KEYS[1] = rustq:processes, KEYS[2] = rustq:recoveries, KEYS[3] = rustq:poison,
-- KEYS[4] = the process's heartbeat key, KEYS[5] = queues, KEYS[6] = its scheduling list,
-- KEYS[7] = schedule, then per queue of its entry: its in-progress list, the queue's list.
-- ARGV[1] = identity, ARGV[2] = max recoveries, ARGV[3] = force (skip the liveness check),
-- ARGV[4] = count (1 to count this as a death), ARGV[5] = its entry as read (the keys were named
-- from it), ARGV[6] = now, then the queue names in the order of the key pairs.
if ARGV[3] ~= '1' and redis.call('EXISTS', KEYS[4]) == 1 then return {0, 0} end
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return {0, 0} end
if entry ~= ARGV[5] then return {-1, 0} end
local ok, decoded = pcall(cjson.decode, entry)
-- Older entries were a bare list of queues: count every job then. An entry that is not JSON
-- names no queue (nothing to give back from them), and goes like any other.
local concurrency = 1e9
if ok and type(decoded) == 'table' and decoded.queues then concurrency = tonumber(decoded.concurrency) or 1e9 end
local limit = tonumber(ARGV[2])
local moved, poisoned = 0, 0
local function jid_of(job)
  local ok, decoded = pcall(cjson.decode, job)
  if ok and type(decoded) == 'table' and type(decoded.jid) == 'string' then return decoded.jid, decoded end
  return redis.sha1hex(job), nil
end
local function give_back(job, name, queue, started)
  if ARGV[4] == '1' and started then
    local id = jid_of(job)
    if redis.call('HINCRBY', KEYS[2], id, 1) > limit then
      redis.call('LPUSH', KEYS[3], job)
      poisoned = poisoned + 1
      return
    end
  end
  redis.call('SADD', KEYS[5], name)
  redis.call('RPUSH', queue, job)
  moved = moved + 1
end
-- The list's right end is its oldest job. Taking from the left (newest) and pushing on the
-- queue's right end puts the oldest job back at the very front, so order is kept and the
-- job that was running is the first one fetched again.
for i = 7, #ARGV do
  local list, queue = KEYS[2 * i - 6], KEYS[2 * i - 5]
  local remaining = redis.call('LLEN', list)
  while remaining > 0 do
    local job = redis.call('LPOP', list)
    if not job then break end
    give_back(job, ARGV[i], queue, remaining <= concurrency)
    remaining = remaining - 1
  end
end
-- Due scheduled jobs it had taken were never started: they do not count as a death. Their
-- queue comes from the payload, so its key cannot be named beforehand: they go back to the
-- schedule set, due now, for the next poll to push.
while true do
  local job = redis.call('RPOP', KEYS[6])
  if not job then break end
  redis.call('ZADD', KEYS[7], ARGV[6], job)
  moved = moved + 1
end
redis.call('EXPIRE', KEYS[2], 86400)
redis.call('HDEL', KEYS[1], ARGV[1])
return {moved, poisoned}
"#;

/// Finds processes that died and gives back their jobs.
pub struct Recovery {
    conn: Conn,
    identity: String,
    max_recoveries: u32,
    wire: WireVersion,
    script: redis::Script,
    dead: DeadSetLimits,
    serves_metrics: bool,
    check_points: CheckPoints,
}

impl Recovery {
    /// The recovery of process `identity`, burying a job after `max_recoveries` deaths.
    pub fn new(conn: Conn, identity: &str, max_recoveries: u32, wire: WireVersion) -> Recovery {
        Recovery {
            conn,
            identity: identity.to_string(),
            max_recoveries,
            wire,
            script: redis::Script::new(RECOVER),
            dead: DeadSetLimits::default(),
            serves_metrics: false,
            check_points: CheckPoints::default(),
        }
    }

    /// The check points whose writes go with a buried job's burial (its batch counts it, its
    /// unique lock goes), as they go with any job's death.
    pub fn with_check_points(mut self, check_points: CheckPoints) -> Recovery {
        self.check_points = check_points;
        self
    }

    /// Says in this process's entry that it serves `/metrics`, so it may report the fleet
    /// (see [`crate::fleet`]).
    pub fn serving_metrics(mut self, serves: bool) -> Recovery {
        self.serves_metrics = serves;
        self
    }

    /// Limits for the dead set (jobs buried after `max_recoveries` deaths); Sidekiq's by default.
    pub fn with_dead_set(mut self, limits: DeadSetLimits) -> Recovery {
        self.dead = limits;
        self
    }

    /// Records that this process fetches from `queues` running `concurrency` jobs at once, so
    /// others can recover it if it dies.
    /// The entry also says where its pid means something (`boot_id` and `pidns`): only a process
    /// on the same boot of the same machine, in the same PID namespace, may take a missing pid
    /// for a death.
    pub async fn register(&self, queues: &[String], concurrency: usize) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let (boot_id, pidns) = pid_scope();
        let entry = serde_json::json!({
            "queues": queues,
            "concurrency": concurrency,
            "boot_id": boot_id,
            "pidns": pidns,
            "metrics": self.serves_metrics,
        });
        conn.hset(rkeys::PROCESSES, &self.identity, entry.to_string())
            .await
    }

    /// Recovers every dead process's jobs; returns how many jobs went back to their queues.
    pub async fn recover_dead(&self) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        let identities: Vec<String> = conn.hkeys(rkeys::PROCESSES).await?;
        let mut total = 0;
        for identity in identities.iter().filter(|i| **i != self.identity) {
            let entry: Option<String> = conn.hget(rkeys::PROCESSES, identity).await?;
            let force =
                entry.as_deref().is_some_and(shares_pid_scope) && pid_gone_on_this_host(identity);
            // One entry that cannot be recovered must not stop the others' recovery.
            let (moved, poisoned) = match self.run(identity, entry, force, true).await {
                Ok(counts) => counts,
                Err(e) if e.is_io_error() || e.is_connection_dropped() => return Err(e),
                Err(e) => {
                    tracing::warn!(process = %identity, error = %e, "cannot recover this process's jobs");
                    continue;
                }
            };
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
        let entry: Option<String> = self.conn.clone().hget(rkeys::PROCESSES, &identity).await?;
        Ok(self.run(&identity, entry, true, false).await?.0)
    }

    /// Gives back the jobs of `identity` (`force`: whether or not it beats; `count`: as a
    /// death). The keys are named from its `entry` as the caller read it, which the script checks
    /// is still the same (it is read again should it have changed).
    async fn run(
        &self,
        identity: &str,
        mut entry: Option<String>,
        force: bool,
        count: bool,
    ) -> redis::RedisResult<(u64, u64)> {
        let mut conn = self.conn.clone();
        loop {
            let Some(read) = entry.take() else {
                return Ok((0, 0));
            };
            let queues = entry_queues(&read);
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(rkeys::PROCESSES)
                .key(rkeys::RECOVERIES)
                .key(rkeys::POISON)
                .key(identity)
                .key(keys::QUEUES)
                .key(rkeys::scheduling(identity))
                .key(keys::SCHEDULE);
            for queue in &queues {
                invocation
                    .key(rkeys::inprogress(identity, queue))
                    .key(keys::queue(queue));
            }
            invocation
                .arg(identity)
                .arg(self.max_recoveries)
                .arg(if force { "1" } else { "0" })
                .arg(if count { "1" } else { "0" })
                .arg(&read)
                .arg(wire::format_float(wire::now_secs()));
            for queue in &queues {
                invocation.arg(queue);
            }
            let (moved, poisoned): (i64, u64) = invocation.invoke_async(&mut conn).await?;
            // -1: the entry changed between the read and the script; read it again.
            if moved >= 0 {
                return Ok((moved as u64, poisoned));
            }
            entry = conn.hget(rkeys::PROCESSES, identity).await?;
        }
    }

    /// Moves jobs that keep killing processes to the dead set, with an error saying so.
    async fn bury_poison(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let write = outcome::script();
        loop {
            let tail: Vec<Vec<u8>> = conn.lrange(rkeys::POISON, -50, -1).await?;
            if tail.is_empty() {
                return Ok(());
            }
            let now = wire::now_secs();
            let mut batch = Batch::new(now, self.dead);
            let message = format!(
                "the process running this job died {} times (killed, crashed or out of memory); it was moved to the dead set so it cannot crash-loop every worker",
                self.max_recoveries + 1
            );
            for raw in &tail {
                let mut writes = Vec::new();
                let payload = match work::parse(raw) {
                    Ok(mut job) => {
                        job.set("error_message", message.as_str());
                        job.set("error_class", class::PROCESS_DIED);
                        job.set_time("failed_at", now, self.wire);
                        let payload = job.to_json();
                        if !self.check_points.is_empty() {
                            self.check_points.prepare(&job).await;
                            let dead = Action::Dead {
                                payload: payload.clone(),
                            };
                            let queue = job.queue().unwrap_or("default").to_string();
                            writes = self.check_points.on_outcome(&job, &queue, &dead, 0, true);
                        }
                        payload
                    }
                    Err(_) => dead_set::unreadable_entry(
                        raw,
                        "default",
                        &rustq_core::PayloadError::InvalidJson(message.clone()),
                        self.wire,
                        now,
                    ),
                };
                batch.add(rkeys::POISON, raw, Effect::Bury(&payload), &writes);
            }
            let written = batch.write(&write, &mut conn).await?;
            written.log_refused("bury poison");
            if written.applied == 0 {
                // Nothing could be buried (the dead set is not a sorted set): try again later.
                return Ok(());
            }
        }
    }
}

/// The queues of a `rustq:processes` entry: `{"queues": [...], "concurrency": N}`, or the bare
/// list older versions wrote.
fn entry_queues(entry: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(entry).unwrap_or_default();
    let list = value.get("queues").unwrap_or(&value);
    list.as_array()
        .map(|queues| {
            queues
                .iter()
                .filter_map(|q| q.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Recovers the jobs of dead processes every `every` (the heartbeat interval), for the life of
/// the process.
pub struct Recover {
    /// The recovery.
    pub recovery: std::sync::Arc<Recovery>,
    /// How often.
    pub every: Duration,
}

impl Service for Recover {
    fn name(&self) -> &'static str {
        "recovery"
    }

    fn run(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            loop {
                tokio::time::sleep(self.every).await;
                if let Err(e) = self.recovery.recover_dead().await {
                    tracing::warn!(error = %e, "recovering dead processes failed");
                }
            }
        })
    }
}

/// This process's boot of its machine and PID namespace (`/proc/sys/kernel/random/boot_id`,
/// `/proc/self/ns/pid`), empty where unknown; read once, as neither changes while it runs.
fn pid_scope() -> &'static (String, String) {
    static SCOPE: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    SCOPE.get_or_init(|| {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let pidns = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        (boot_id, pidns)
    })
}

/// True when the process of `entry` (its `rustq:processes` value) runs on this boot of this
/// machine and in this PID namespace, where its pid can be looked up in `/proc`. Containers that
/// share a hostname (one pod's, hostNetwork pods on a node) do not share a PID namespace; an
/// entry from an older version, without these fields, is left to its heartbeat.
fn shares_pid_scope(entry: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(entry) else {
        return false;
    };
    let (boot_id, pidns) = pid_scope();
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
    !boot_id.is_empty()
        && !pidns.is_empty()
        && field("boot_id") == boot_id
        && field("pidns") == pidns
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
