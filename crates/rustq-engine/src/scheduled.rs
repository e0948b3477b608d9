//! The scheduled poller: due jobs in `retry` and `schedule` go to their queues.
//!
//! A Lua script moves due jobs atomically from the sorted set into this process's `scheduling`
//! list; each is then pushed with a fresh `enqueued_at` in the same step that removes it from
//! that list (see [`crate::outcome`]). A process that dies in between leaves them to be recovered, never lost; a poll
//! that fails in between (Redis gone, or a reply lost) leaves them for the next poll, which
//! pushes whatever it finds in the list first: only this process's poller, one poll at a time,
//! moves jobs into it.

use std::time::Duration;

use rand::Rng;
use redis::AsyncCommands;
use rustq_core::wire::{self, keys, WireVersion};
use rustq_core::Conn;

use crate::control::Control;
use crate::dead_set::{self, DeadSetLimits};
use crate::keys as rkeys;
use crate::outcome::{self, Batch, Effect};
use crate::service::{BoxFuture, Service};
use crate::work;

const TAKE_DUE: &str = r#"
-- KEYS[1] = sorted set, KEYS[2] = this process's scheduling list; ARGV[1] = now, ARGV[2] = limit
local jobs = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, job in ipairs(jobs) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('LPUSH', KEYS[2], job)
end
return jobs
"#;

/// Jobs moved per script call.
const LIMIT: usize = 100;

/// Moves due jobs of `retry` and `schedule` to their queues.
pub struct Poller {
    conn: Conn,
    scheduling: String,
    wire: WireVersion,
    script: redis::Script,
    write: redis::Script,
    dead: DeadSetLimits,
}

impl Poller {
    /// The poller of the process `identity`.
    pub fn new(conn: Conn, identity: &str, wire: WireVersion) -> Poller {
        Poller {
            conn,
            scheduling: rkeys::scheduling(identity),
            wire,
            script: redis::Script::new(TAKE_DUE),
            write: outcome::script(),
            dead: DeadSetLimits::default(),
        }
    }

    /// Limits for the dead set (unreadable scheduled jobs end there); Sidekiq's by default.
    pub fn with_dead_set(mut self, limits: DeadSetLimits) -> Poller {
        self.dead = limits;
        self
    }

    /// Moves every due job of `retry` then `schedule` to its queue, after any a failed poll
    /// left in the scheduling list. Returns how many moved.
    pub async fn enqueue_due(&self) -> redis::RedisResult<usize> {
        let mut conn = self.conn.clone();
        let left: Vec<Vec<u8>> = conn.lrange(&self.scheduling, 0, -1).await?;
        let mut moved = 0;
        if !left.is_empty() {
            self.push_all(&mut conn, &left, wire::now_secs()).await?;
            tracing::warn!(
                jobs = left.len(),
                "pushed due jobs a failed poll had left behind"
            );
            moved += left.len();
        }
        for set in [keys::RETRY, keys::SCHEDULE] {
            loop {
                let mut conn = self.conn.clone();
                let now = wire::now_secs();
                let due: Vec<Vec<u8>> = self
                    .script
                    .key(set)
                    .key(&self.scheduling)
                    .arg(wire::format_float(now))
                    .arg(LIMIT)
                    .invoke_async(&mut conn)
                    .await?;
                if due.is_empty() {
                    break;
                }
                self.push_all(&mut conn, &due, now).await?;
                moved += due.len();
                if due.len() < LIMIT {
                    break;
                }
            }
        }
        Ok(moved)
    }

    /// Pushes `due` jobs from the scheduling list to their queues, in one step.
    async fn push_all(&self, conn: &mut Conn, due: &[Vec<u8>], now: f64) -> redis::RedisResult<()> {
        let mut batch = Batch::new(now, self.dead);
        for raw in due {
            match work::parse(raw) {
                Ok(mut job) => {
                    let queue = job.queue().unwrap_or("default").to_string();
                    job.set_time("enqueued_at", now, self.wire);
                    let payload = job.to_json();
                    batch.add(
                        &self.scheduling,
                        raw,
                        Effect::Push {
                            queue: &queue,
                            payload: &payload,
                        },
                        &[],
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "unreadable job in a scheduled set sent to the dead set");
                    let entry = dead_set::unreadable_entry(raw, "default", &e, self.wire, now);
                    batch.add(&self.scheduling, raw, Effect::Bury(&entry), &[]);
                }
            }
        }
        let written = batch.write(&self.write, conn).await?;
        written.log_refused("push due jobs");
        Ok(())
    }

    /// Seconds until the next poll: `avg * rand + avg / 2` (Sidekiq's spread), where `avg` is
    /// the fixed `poll_interval_average`, or `average × processes` so the cluster as a whole
    /// polls about every `average` seconds.
    pub async fn next_interval(&self, fixed: Option<f64>, average: f64) -> Duration {
        let avg = match fixed {
            Some(f) => f,
            None => {
                let mut conn = self.conn.clone();
                let processes: u64 = conn.scard(keys::PROCESSES).await.unwrap_or(1);
                average * processes.max(1) as f64
            }
        };
        let secs = avg * rand::rng().random::<f64>() + avg / 2.0;
        Duration::from_secs_f64(secs.max(0.05))
    }
}

/// Polls for due jobs for the life of the process, not while it is quiet.
pub struct Poll {
    /// The poller.
    pub poller: Poller,
    /// The process's control.
    pub control: Control,
    /// `poll_interval_average`, when set: this process's own average.
    pub fixed: Option<f64>,
    /// `average_scheduled_poll_interval`: the fleet's average.
    pub average: f64,
}

impl Service for Poll {
    fn name(&self) -> &'static str {
        "poller"
    }

    fn run(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            let Poll {
                poller,
                control,
                fixed,
                average,
            } = *self;
            // A random first wait keeps processes started together from polling together.
            let first =
                Duration::from_secs_f64(rand::random::<f64>() * fixed.unwrap_or(average).min(5.0));
            tokio::time::sleep(first).await;
            loop {
                if !control.is_quiet() {
                    match poller.enqueue_due().await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(jobs = n, "enqueued due scheduled/retry jobs"),
                        Err(e) => tracing::warn!(error = %e, "scheduled poll failed"),
                    }
                }
                tokio::time::sleep(poller.next_interval(fixed, average).await).await;
            }
        })
    }
}
