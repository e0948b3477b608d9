//! Jobs Redis moved into this process's in-progress lists without the process hearing of it.
//!
//! A fetch moves jobs inside Redis and reports them in its reply. When that reply is lost — the
//! connection drops, Redis is killed after writing the move to its log, or the reply times out
//! after Redis ran the command — the jobs sit in the in-progress list of a process that never
//! learned of them: nothing would run them until the process stops or dies.
//!
//! So the process counts what it holds ([`Holdings`]: taken when a fetch reports a job, let go
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

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use rustq_core::wire::keys;
use rustq_core::RedisConfig;
use tokio::sync::Notify;

use crate::fetch::{UnitOfWork, BLOCK_SECS};
use crate::keys as rkeys;

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

/// How many copies of each job (queue and payload) this process holds: reported by a fetch and
/// not yet written back. Keyed by a hash of the pair, so a job is not copied to be counted.
#[derive(Default)]
pub struct Holdings {
    counts: Mutex<HashMap<u64, u32>>,
    suspect: Notify,
}

fn key(queue: &str, raw: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    queue.hash(&mut hasher);
    raw.hash(&mut hasher);
    hasher.finish()
}

impl Holdings {
    /// A fetch reported `unit`.
    pub fn take(&self, unit: &UnitOfWork) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(key(&unit.queue, &unit.raw)).or_default() += 1;
    }

    /// `unit`'s outcome is written: it is no longer in the in-progress list.
    pub fn release(&self, unit: &UnitOfWork) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(&unit.queue, &unit.raw);
        if let Some(n) = counts.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&k);
            }
        }
    }

    /// How many copies of `raw` from `queue` are held.
    pub fn held(&self, queue: &str, raw: &[u8]) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&key(queue, raw)).copied().unwrap_or(0)
    }

    /// How many distinct jobs are held (the tests check that released ones leave no entry).
    #[cfg(test)]
    fn distinct(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A fetch failed without an answer: it may have moved jobs nobody was told of.
    pub fn fetch_failed(&self) {
        self.suspect.notify_one();
    }
}

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
-- KEYS[1] = in-progress list, KEYS[2] = queue list; ARGV[1] = queue name,
-- then per job: payload, copies found unreported before, copies held now
local moved = 0
for i = 2, #ARGV, 3 do
  local job, before, held = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local now = #redis.call('LPOS', KEYS[1], job, 'COUNT', 0)
  local n = math.min(before, now - held)
  if n > 0 then
    -- Oldest copies first (the list's right end); back to the queue's front (its right end).
    local removed = redis.call('LREM', KEYS[1], -n, job)
    for _ = 1, removed do redis.call('RPUSH', KEYS[2], job) end
    moved = moved + removed
  end
end
if moved > 0 then redis.call('SADD', 'queues', ARGV[1]) end
return moved
"#;

/// Finds and gives back this process's orphaned jobs after each failed fetch, and every
/// `recheck` ([`RECHECK`]); a job counts as orphaned once unreported for `grace` ([`grace`]).
pub struct Adopter {
    pub conn: ConnectionManager,
    pub identity: String,
    pub queues: Vec<String>,
    pub holdings: Arc<Holdings>,
    pub recheck: Duration,
    pub grace: Duration,
}

impl Adopter {
    /// Runs for the life of the process.
    pub async fn run(self) {
        loop {
            tokio::select! {
                () = self.holdings.suspect.notified() => tokio::time::sleep(SETTLE).await,
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

    fn unit(queue: &str, raw: &str) -> UnitOfWork {
        UnitOfWork {
            queue: queue.into(),
            raw: raw.as_bytes().to_vec(),
        }
    }

    #[test]
    fn counts_copies_per_queue_and_payload() {
        let h = Holdings::default();
        h.take(&unit("a", "x"));
        h.take(&unit("a", "x"));
        h.take(&unit("b", "x"));
        assert_eq!(h.held("a", b"x"), 2);
        assert_eq!(h.held("b", b"x"), 1);
        h.release(&unit("a", "x"));
        assert_eq!(h.held("a", b"x"), 1);
        h.release(&unit("a", "x"));
        h.release(&unit("a", "x"));
        assert_eq!(h.held("a", b"x"), 0);
        assert_eq!(h.distinct(), 1);
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
