//! Reliable fetch: a job moves atomically from `queue:<q>` into this process's in-progress list
//! and stays there until it is acknowledged, so a process that dies loses nothing.
//!
//! Sidekiq's `BRPOP` wakes instantly but is not atomic with a move to a private list, and
//! `BLMOVE` is atomic but watches one list. We take both: a busy process takes jobs with a Lua
//! sweep (`LMOVE` over the queues in weighted order, many jobs per round trip), and an idle one
//! waits on one dedicated connection per queue doing `BLMOVE queue:q <in-progress list> RIGHT
//! LEFT 2`, so a push is taken, atomically, in the same round trip that wakes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rustq_core::wire::keys;
use rustq_core::Conn;
use rustq_core::RedisConfig;
use tokio::sync::Notify;

use crate::holdings::Holdings;
use crate::keys as rkeys;
use crate::options::QueueWeight;
use crate::work::UnitOfWork;

const SWEEP: &str = r#"
-- KEYS[1] = paused set, then per queue: queue list, in-progress list
-- ARGV[1] = max jobs, ARGV[2..] = queue names (same order as the key pairs)
local max = tonumber(ARGV[1])
local jobs, paused = {}, {}
local n = 0
for i = 2, #ARGV do
  local name = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], name) == 1 then
    paused[#paused + 1] = name
  elseif n < max then
    local src, dst = KEYS[2 * i - 2], KEYS[2 * i - 1]
    while n < max do
      local job = redis.call('LMOVE', src, dst, 'RIGHT', 'LEFT')
      if not job then break end
      n = n + 1
      jobs[#jobs + 1] = name
      jobs[#jobs + 1] = job
    end
  end
end
return {jobs, paused}
"#;

/// Takes jobs for one process.
pub struct Fetcher {
    conn: Conn,
    identity: String,
    queues: Vec<QueueWeight>,
    strict: bool,
    sweep: redis::Script,
    holdings: Arc<Holdings>,
}

impl Fetcher {
    /// The fetcher of process `identity`, over `queues` (in order when `strict`).
    pub fn new(
        conn: Conn,
        identity: &str,
        queues: Vec<QueueWeight>,
        strict: bool,
        holdings: Arc<Holdings>,
    ) -> Fetcher {
        Fetcher {
            conn,
            identity: identity.to_string(),
            queues,
            strict,
            sweep: redis::Script::new(SWEEP),
            holdings,
        }
    }

    /// Queue names in the order to try them this time: as given when strict, otherwise each
    /// queue repeated by its weight, shuffled, first occurrences kept (Sidekiq's weighting).
    pub fn ordered_queues(&self) -> Vec<String> {
        if self.strict {
            return self.queues.iter().map(|q| q.name.clone()).collect();
        }
        let mut expanded: Vec<&str> = self
            .queues
            .iter()
            .flat_map(|q| std::iter::repeat_n(q.name.as_str(), q.weight.max(1) as usize))
            .collect();
        expanded.shuffle(&mut rand::rng());
        let mut order: Vec<String> = Vec::with_capacity(self.queues.len());
        for name in expanded {
            if !order.iter().any(|o| o == name) {
                order.push(name.to_string());
            }
        }
        order
    }

    /// Moves up to `max` jobs into the in-progress lists. Also returns the paused queues.
    pub async fn sweep(&self, max: usize) -> redis::RedisResult<(Vec<UnitOfWork>, Vec<String>)> {
        let order = self.ordered_queues();
        let mut invocation = self.sweep.prepare_invoke();
        invocation.key(keys::PAUSED);
        for q in &order {
            invocation
                .key(keys::queue(q))
                .key(rkeys::inprogress(&self.identity, q));
        }
        invocation.arg(max);
        for q in &order {
            invocation.arg(q);
        }
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<(Vec<Vec<u8>>, Vec<String>)> =
            invocation.invoke_async(&mut conn).await;
        let (flat, paused) = reply.inspect_err(|_| self.holdings.fetch_failed())?;
        let units: Vec<UnitOfWork> = flat
            .chunks_exact(2)
            .map(|pair| UnitOfWork {
                queue: String::from_utf8_lossy(&pair[0]).into_owned(),
                raw: pair[1].clone(),
            })
            .collect();
        units.iter().for_each(|unit| self.holdings.take(unit));
        Ok((units, paused))
    }

    /// The names of its queues.
    pub fn queue_names(&self) -> Vec<String> {
        self.queues.iter().map(|q| q.name.clone()).collect()
    }
}

/// Per-queue blocking moves that hand an idle fetcher the next job as soon as it is pushed.
pub struct Waiters {
    arms: Vec<(String, Arc<Notify>)>,
    closing: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Jobs the waiters took (already in this process's in-progress lists).
    pub taken: tokio::sync::mpsc::UnboundedReceiver<UnitOfWork>,
    /// Signalled when a wait ended without a job (time-out or error): time to sweep again.
    pub wake: Arc<Notify>,
}

impl Drop for Waiters {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How long one blocking move waits before the waiter checks in again.
pub const BLOCK_SECS: f64 = 2.0;

impl Waiters {
    /// Spawns one waiter task per queue, each with its own connection (response timeout above
    /// the block time: redis 1.x would otherwise give up after 500 ms).
    pub fn spawn(
        config: &RedisConfig,
        identity: &str,
        queues: &[String],
        holdings: Arc<Holdings>,
    ) -> Waiters {
        let wake = Arc::new(Notify::new());
        let (tx, taken) = tokio::sync::mpsc::unbounded_channel();
        let closing = Arc::new(AtomicBool::new(false));
        let mut arms = Vec::new();
        let mut tasks = Vec::new();
        for queue in queues {
            let arm = Arc::new(Notify::new());
            arms.push((queue.clone(), arm.clone()));
            let waiter = Waiter {
                config: config.clone(),
                queue: queue.clone(),
                inprogress: rkeys::inprogress(identity, queue),
                arm,
                closing: closing.clone(),
                wake: wake.clone(),
                taken: tx.clone(),
                holdings: holdings.clone(),
            };
            tasks.push(tokio::spawn(waiter.run()));
        }
        Waiters {
            arms,
            closing,
            tasks,
            taken,
            wake,
        }
    }

    /// Ends the waiters and returns the jobs they took that were not run. With `patient`,
    /// every blocking move in flight may end first (up to `BLOCK_SECS`), so a job Redis hands
    /// over as the process quiets is not left in the in-progress list until stop; otherwise
    /// they are cut off at once (such a job then goes back at stop with the list, or earlier
    /// through the periodic orphan check: see `orphans`).
    pub async fn finish(mut self, patient: bool) -> Vec<UnitOfWork> {
        self.closing.store(true, Ordering::SeqCst);
        for (_, arm) in &self.arms {
            arm.notify_one();
        }
        let limit = Duration::from_secs_f64(if patient { BLOCK_SECS + 1.0 } else { 0.0 });
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(limit, task).await.is_err() {
                abort.abort();
            }
        }
        let mut left = Vec::new();
        while let Ok(unit) = self.taken.try_recv() {
            left.push(unit);
        }
        left
    }

    /// Asks the waiters of the queues not in `paused` to wait for their queue's next job.
    pub fn arm(&self, paused: &[String]) {
        for (queue, arm) in &self.arms {
            if !paused.contains(queue) {
                arm.notify_one();
            }
        }
    }
}

struct Waiter {
    config: RedisConfig,
    queue: String,
    inprogress: String,
    arm: Arc<Notify>,
    closing: Arc<AtomicBool>,
    wake: Arc<Notify>,
    taken: tokio::sync::mpsc::UnboundedSender<UnitOfWork>,
    holdings: Arc<Holdings>,
}

impl Waiter {
    async fn run(self) {
        let key = keys::queue(&self.queue);
        let mut conn = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            self.arm.notified().await;
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            if conn.is_none() {
                match self
                    .config
                    .blocking_connection(Duration::from_secs_f64(BLOCK_SECS))
                    .await
                {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::debug!(queue = %self.queue, error = %e, "waiter cannot connect");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        self.wake.notify_one();
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let moved: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("BLMOVE")
                .arg(&key)
                .arg(&self.inprogress)
                .arg("RIGHT")
                .arg("LEFT")
                .arg(BLOCK_SECS)
                .query_async(c)
                .await;
            match moved {
                Ok(Some(raw)) => {
                    backoff = Duration::from_millis(100);
                    let unit = UnitOfWork {
                        queue: self.queue.clone(),
                        raw,
                    };
                    self.holdings.take(&unit);
                    // With the fetcher gone the job stays in the in-progress list, which a
                    // stopping process gives back to the queue.
                    if self.taken.send(unit).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    backoff = Duration::from_millis(100);
                    self.wake.notify_one();
                }
                Err(e) => {
                    tracing::debug!(queue = %self.queue, error = %e, "waiter lost its connection");
                    self.holdings.fetch_failed();
                    conn = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    self.wake.notify_one();
                }
            }
        }
    }
}
