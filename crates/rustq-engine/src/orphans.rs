//! Jobs Redis moved into this process's in-progress lists without the process hearing of it.
//!
//! A fetch moves jobs inside Redis and reports them in its reply. When that reply is lost — the
//! connection drops, Redis is killed after writing the move to its log, or the reply times out
//! after Redis ran the command — the jobs sit in the in-progress list of a process that never
//! learned of them: nothing would run them until the process stops or dies.
//!
//! So the process counts what it holds ([`crate::holdings::Holdings`]: taken when a fetch reports a job, let go
//! once the job's outcome is written), and after a failed fetch, and every [`RECHECK`] besides,
//! it compares its lists with that count, twice: a job in a list and not held at the first
//! look, and still there and still not held [`grace`] later, was never reported. It goes back
//! to the front of its queue. (A job reported late is held by the second look; a finished one
//! is gone from the list.) The periodic look finds what a fetch moved after the look that
//! followed its failure: a command sent on a connection just before it broke can still reach
//! Redis later.
//!
//! Copies of one payload are told apart only by number: should a job with the very same bytes
//! as an orphan be fetched and reported between the second look and the give-back, one copy too
//! many goes back and runs twice. Jids make such twins rare; nothing is ever lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use rustq_core::wire::keys;
use rustq_core::Conn;
use rustq_core::RedisConfig;

use crate::fetch::BLOCK_SECS;
use crate::holdings::Holdings;
use crate::keys as rkeys;
use crate::service::{BoxFuture, Service};

/// How long after a failed fetch the lists are first compared (time for Redis to come back).
pub const SETTLE: Duration = Duration::from_secs(1);
/// How long a job must stay in a list unreported before it counts as orphaned: longer than a
/// fetch's reply may take to arrive and still be read (a waiter's `BLMOVE` waits up to
/// `BLOCK_SECS`, and its reply may then take up to the response timeout), so a reply that is
/// merely slow is never taken for a lost one. Without a response timeout, 30 s.
pub fn grace(redis: &RedisConfig) -> Duration {
    let reply = redis.response_timeout.unwrap_or(Duration::from_secs(30));
    reply + Duration::from_secs_f64(BLOCK_SECS) + Duration::from_secs(1)
}

/// How often the lists are compared when no fetch has failed: one `LRANGE` per queue.
pub const RECHECK: Duration = Duration::from_secs(60);

/// Jobs of one list that are there more often than they are held: `(payload, extra copies)`,
/// in the list's order (newest first), so that pushed back in this order the oldest is fetched
/// first again.
pub fn unreported(holdings: &Holdings, queue: &str, list: Vec<Vec<u8>>) -> Vec<(Vec<u8>, u32)> {
    let mut seen: HashMap<&[u8], u32> = HashMap::new();
    let mut order: Vec<&[u8]> = Vec::new();
    for raw in &list {
        let n = seen.entry(raw).or_default();
        if *n == 0 {
            order.push(raw);
        }
        *n += 1;
    }
    order
        .into_iter()
        .filter_map(|raw| {
            let (n, held) = (seen[raw], holdings.held(queue, raw));
            (n > held).then(|| (raw.to_vec(), n - held))
        })
        .collect()
}

const GIVE_BACK: &str = r#"
-- KEYS[1] = in-progress list, KEYS[2] = queue list, KEYS[3] = queues; ARGV[1] = queue name,
-- then per job: payload, copies found unreported before, copies held now.
-- The list is read once and, if anything goes back, written once: one pass whatever the number
-- of orphans (a lookup and a removal per job would scan the list once per job).
local list = redis.call('LRANGE', KEYS[1], 0, -1)
local found = {}
for _, job in ipairs(list) do found[job] = (found[job] or 0) + 1 end
local take, back = {}, {}
for i = 2, #ARGV, 3 do
  local job, before, held = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local n = math.min(before, (found[job] or 0) - held)
  if n > 0 and not take[job] then
    take[job] = n
    for _ = 1, n do back[#back + 1] = job end
  end
end
if #back == 0 then return 0 end
-- Keep all but the oldest copies taken (the list's right end); `keep` runs right to left, so
-- pushed on the left in its order the list is rebuilt as it was.
local keep = {}
for i = #list, 1, -1 do
  local job = list[i]
  local n = take[job]
  if n and n > 0 then take[job] = n - 1 else keep[#keep + 1] = job end
end
local function push(command, key, items)
  for i = 1, #items, 1000 do
    redis.call(command, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
redis.call('DEL', KEYS[1])
push('LPUSH', KEYS[1], keep)
-- Back to the queue's front (its right end), newest first, so the oldest is fetched first.
push('RPUSH', KEYS[2], back)
redis.call('SADD', KEYS[3], ARGV[1])
return #back
"#;

/// Finds and gives back this process's orphaned jobs after each failed fetch, and every
/// `recheck` ([`RECHECK`]); a job counts as orphaned once unreported for `grace` ([`grace`]).
pub struct Adopter {
    /// A connection's manager.
    pub conn: Conn,
    /// This process's identity.
    pub identity: String,
    /// The queues it fetches from.
    pub queues: Vec<String>,
    /// What it holds.
    pub holdings: Arc<Holdings>,
    /// How often to look when no fetch failed.
    pub recheck: Duration,
    /// How long a job must stay unreported.
    pub grace: Duration,
}

impl Service for Adopter {
    fn name(&self) -> &'static str {
        "orphans"
    }

    fn run(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(self.watch())
    }
}

impl Adopter {
    /// Runs for the life of the process.
    pub async fn watch(self) {
        loop {
            tokio::select! {
                () = self.holdings.suspected() => tokio::time::sleep(SETTLE).await,
                () = tokio::time::sleep(self.recheck) => {}
            }
            match self.check(self.grace).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    jobs = n,
                    "returned jobs a lost fetch reply had left in this process's in-progress lists to their queues"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the in-progress lists yet; will retry");
                    self.holdings.fetch_failed();
                }
            }
        }
    }

    /// Looks, waits `grace`, looks again and gives back what stayed unreported.
    pub async fn check(&self, grace: Duration) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        let mut found = Vec::new();
        for queue in &self.queues {
            let list: Vec<Vec<u8>> = conn
                .lrange(rkeys::inprogress(&self.identity, queue), 0, -1)
                .await?;
            let extra = unreported(&self.holdings, queue, list);
            if !extra.is_empty() {
                found.push((queue, extra));
            }
        }
        if found.is_empty() {
            return Ok(0);
        }
        tokio::time::sleep(grace).await;
        let script = redis::Script::new(GIVE_BACK);
        let mut moved = 0;
        for (queue, extra) in found {
            let mut invocation = script.prepare_invoke();
            invocation
                .key(rkeys::inprogress(&self.identity, queue))
                .key(keys::queue(queue))
                .key(keys::QUEUES)
                .arg(queue);
            for (raw, before) in &extra {
                invocation
                    .arg(raw)
                    .arg(before)
                    .arg(self.holdings.held(queue, raw));
            }
            moved += invocation.invoke_async::<u64>(&mut conn).await?;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::work::UnitOfWork;

    fn unit(queue: &str, raw: &str) -> UnitOfWork {
        UnitOfWork {
            queue: queue.into(),
            raw: raw.as_bytes().to_vec(),
        }
    }

    #[test]
    fn only_copies_beyond_those_held_are_unreported() {
        let h = Holdings::default();
        h.take(&unit("q", "held"));
        h.take(&unit("q", "twice"));
        let list = ["held", "orphan", "twice", "twice"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(
            unreported(&h, "q", list),
            vec![(b"orphan".to_vec(), 1), (b"twice".to_vec(), 1)]
        );
        assert_eq!(
            unreported(&h, "other", vec![b"held".to_vec()]),
            vec![(b"held".to_vec(), 1)]
        );
    }
}
