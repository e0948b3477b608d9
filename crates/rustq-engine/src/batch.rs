//! Batches: the check point that counts each job of a batch (payload `"bid"`) once, atomically
//! with its outcome, and enqueues a callback in the same step that sees its event happen
//! (`rustq_core::batch`). Every count is gated on the job's own membership (`SREM pending
//! <jid>` changes a set, never a counter), so a job that runs twice — its process died after it
//! ran — cannot count twice, and no count goes below zero; each event is stamped with `HSETNX`,
//! so its callbacks are enqueued once. A job that kills its process is counted when it is buried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rustq_core::batch::{self, Event};
use rustq_core::wire::{self, keys};
use rustq_core::{Conn, Job, WireVersion};
use serde_json::Value;

use crate::check_point::{CheckFuture, CheckPoint, Outcome, Verdict};
use crate::work::{Action, UnitOfWork, Write};

/// What a batch's callbacks are, read once per batch (they are set before its first jobs).
#[derive(Clone, Debug, Default)]
struct Callbacks {
    queue: String,
    by_event: HashMap<&'static str, Vec<(String, Value)>>,
    /// The batch it was made in, if any.
    parent: Option<String>,
}

/// How many generations of parents an outcome's step walks up (a batch in a batch in a batch…).
const MAX_DEPTH: usize = 8;

/// The check point that counts batches' jobs.
pub struct BatchCounts {
    /// The connection, once the process has one.
    pub conn: Arc<OnceLock<Conn>>,
    /// The wire format of callback jobs' timestamps.
    pub wire: WireVersion,
    known: Mutex<HashMap<String, Callbacks>>,
}

impl BatchCounts {
    /// A check point with nothing read yet.
    pub fn new(conn: Arc<OnceLock<Conn>>, wire: WireVersion) -> BatchCounts {
        BatchCounts {
            conn,
            wire,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn callbacks(&self, bid: &str) -> Option<Callbacks> {
        self.known.lock().ok()?.get(bid).cloned()
    }

    async fn read(&self, bid: &str) -> Option<Callbacks> {
        if let Some(known) = self.callbacks(bid) {
            return Some(known);
        }
        let mut conn = self.conn.get()?.clone();
        let (queue, callbacks, parent): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(batch::batch_key(bid))
                .arg("callback_queue")
                .arg("callbacks")
                .arg("parent_bid")
                .query_async(&mut conn)
                .await
                .ok()?;
        let parsed: Value = serde_json::from_str(callbacks.as_deref().unwrap_or("{}")).ok()?;
        let mut by_event = HashMap::new();
        for event in [Event::Complete, Event::Success, Event::Death] {
            by_event.insert(event.as_str(), batch::callbacks_of(&parsed, event));
        }
        let known = Callbacks {
            queue: queue.unwrap_or_else(|| "default".into()),
            by_event,
            parent: parent.filter(|p| !p.is_empty()),
        };
        if let Ok(mut map) = self.known.lock() {
            // Bounded: a long-lived process sees many batches.
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(bid.to_string(), known.clone());
        }
        Some(known)
    }

    /// Reads `bid`'s callbacks and those of its parents (boxed: it recurses).
    fn read_line<'a>(
        &'a self,
        bid: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Callbacks>> + Send + 'a>> {
        Box::pin(async move {
            let mine = self.read(bid).await?;
            let mut parent = mine.parent.clone();
            for _ in 0..MAX_DEPTH {
                let Some(p) = parent else { break };
                parent = self.read(&p).await?.parent;
            }
            Some(mine)
        })
    }

    /// The writes of one event: stamp it once, and only then enqueue its callbacks (as jobs of
    /// the parent batch, if there is one, so the parent's callbacks come after them) and tell the
    /// parent that this child is complete or has succeeded.
    fn event(
        &self,
        bid: &str,
        event: Event,
        cbs: &Callbacks,
        now: f64,
        depth: usize,
    ) -> Vec<Write> {
        let pushes = cbs
            .by_event
            .get(event.as_str())
            .cloned()
            .unwrap_or_default();
        let mut gated = Vec::new();
        let parent = cbs.parent.as_deref().filter(|_| depth < MAX_DEPTH);
        for (target, options) in &pushes {
            let jid = rustq_core::generate_jid();
            let callback = batch::Callback {
                event,
                bid,
                target,
                options,
                queue: &cbs.queue,
                in_batch: parent,
            };
            gated.push(Write::new("SADD").key(keys::QUEUES).arg(&cbs.queue));
            gated.push(
                Write::new("LPUSH")
                    .key(keys::queue(&cbs.queue))
                    .arg(callback.payload(&jid, now, self.wire)),
            );
            if let Some(parent) = parent {
                gated.push(Write::new("SADD").key(batch::pending_key(parent)).arg(&jid));
                gated.push(Write::new("SADD").key(batch::jids_key(parent)).arg(&jid));
            }
        }
        if let (Some(parent), Some(parent_cbs)) = (parent, parent.and_then(|p| self.callbacks(p))) {
            let member = batch::child_member(bid);
            match event {
                Event::Complete => {
                    // Complete in the parent; failed there too until it succeeds.
                    gated.push(
                        Write::new("SREM")
                            .key(batch::pending_key(parent))
                            .arg(&member),
                    );
                    gated.extend(keep(&batch::failed_key(parent), &member));
                    gated.push(Write::new("SCARD").key(batch::failed_key(bid)).gate(0, 1));
                    gated.push(
                        Write::new("SREM")
                            .key(batch::failed_key(parent))
                            .arg(&member),
                    );
                    gated.extend(self.when_done(parent, &parent_cbs, now, depth + 1));
                }
                Event::Success => {
                    gated.push(
                        Write::new("SREM")
                            .key(batch::failed_key(parent))
                            .arg(&member),
                    );
                    gated.extend(self.when_done(parent, &parent_cbs, now, depth + 1));
                }
                Event::Death => {}
            }
        }
        let mut writes = vec![Write::new("HSETNX")
            .key(batch::batch_key(bid))
            .arg(event.field())
            .arg(wire::format_float(now))
            .gate(1, gated.len())];
        writes.extend(gated);
        writes
    }

    /// Complete once nothing is pending, and success once nothing has failed either.
    fn when_done(&self, bid: &str, cbs: &Callbacks, now: f64, depth: usize) -> Vec<Write> {
        let complete = self.event(bid, Event::Complete, cbs, now, depth);
        let block = self.event(bid, Event::Success, cbs, now, depth);
        let mut success = vec![Write::new("SCARD")
            .key(batch::failed_key(bid))
            .gate(0, block.len())];
        success.extend(block);
        // Complete (stamped once) gates nothing of success: success may come later, when a
        // failed job succeeds on retry after the batch was complete.
        let mut writes = vec![Write::new("SCARD")
            .key(batch::pending_key(bid))
            .gate(0, complete.len() + success.len())];
        writes.extend(complete);
        writes.extend(success);
        writes
    }
}

/// `SADD set member`, and the set kept as long as the batch's other keys (it is made after
/// them, by outcomes; 30 days, `rustq_core::batch::EXPIRY_SECS`).
fn keep(set: &str, member: &str) -> [Write; 2] {
    [
        Write::new("SADD").key(set).arg(member),
        Write::new("EXPIRE").key(set).arg(batch::EXPIRY_SECS),
    ]
}

fn bid_of(job: &Job) -> Option<&str> {
    job.get(batch::BID)?.as_str().filter(|b| !b.is_empty())
}

impl CheckPoint for BatchCounts {
    fn before<'a>(&'a self, job: &'a Job, _unit: &'a UnitOfWork) -> CheckFuture<'a> {
        let Some(bid) = bid_of(job) else {
            return Box::pin(std::future::ready(Verdict::Run));
        };
        Box::pin(async move {
            // Read now, before it runs: its outcome is then written without a round trip. Redis
            // away: keep asking (an outcome counted without its callbacks could leave the batch's
            // last event unfired).
            let mut backoff = std::time::Duration::from_millis(50);
            while self.conn.get().is_some() && self.read_line(bid).await.is_none() {
                tracing::warn!(bid, "cannot read a batch's callbacks; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
            }
            Verdict::Run
        })
    }

    fn prepare<'a>(
        &'a self,
        job: &'a Job,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if let Some(bid) = bid_of(job) {
                let _ = self.read_line(bid).await;
            }
        })
    }

    fn on_outcome(&self, outcome: &Outcome<'_>, writes: &mut Vec<Write>) {
        let (Some(bid), Some(jid)) = (bid_of(outcome.job), outcome.job.jid()) else {
            return;
        };
        let counted = matches!(
            outcome.action,
            Action::Acknowledge | Action::Retry { .. } | Action::Dead { .. }
        );
        if !counted {
            return;
        }
        let Some(callbacks) = self.callbacks(bid) else {
            // Its sets change as they must; its events are stamped by the next job's outcome
            // that sees them.
            tracing::warn!(bid, jid, "a batch's callbacks were not read before its job's outcome; counting it without them");
            return count(outcome, bid, jid, writes);
        };
        let now = wire::now_secs();
        count(outcome, bid, jid, writes);
        if matches!(outcome.action, Action::Dead { .. }) {
            writes.extend(self.event(bid, Event::Death, &callbacks, now, 0));
        }
        // Whether the batch is now complete (and has succeeded) reads only what the step's jobs
        // wrote: asked once per step and batch, after them all, however many of its jobs the
        // step writes. Success is gated on nothing having failed, so one check serves every
        // outcome.
        let tag = format!("batch-done:{bid}");
        writes.extend(
            self.when_done(bid, &callbacks, now, 0)
                .into_iter()
                .map(|write| write.once_per_step(tag.as_str())),
        );
    }
}

/// A counted job's memberships: out of `pending`; into `failed` when it failed (`retry: false`
/// too: it never succeeds now) and `dead` when it died, or out of `failed` when it succeeded.
fn count(outcome: &Outcome<'_>, bid: &str, jid: &str, writes: &mut Vec<Write>) {
    let failed = batch::failed_key(bid);
    match outcome.action {
        Action::Acknowledge if !outcome.failed => {
            // Only a job that failed before (and so was retried) can be in `failed`.
            if outcome.job.get("retry_count").is_some() {
                writes.push(Write::new("SREM").key(&failed).arg(jid));
            }
        }
        Action::Dead { .. } => {
            writes.extend(keep(&failed, jid));
            writes.extend(keep(&batch::dead_key(bid), jid));
        }
        _ => writes.extend(keep(&failed, jid)),
    }
    writes.push(Write::new("SREM").key(batch::pending_key(bid)).arg(jid));
}

/// What a process outside the engine saw a batch's job do: a Sidekiq process running it with
/// the gem's batch middleware (`Rustq::Batch::SidekiqMiddleware`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// It succeeded (or middleware skipped it: Sidekiq counts that as done).
    Succeeded,
    /// It raised; Sidekiq retries it or not, as it decides.
    Failed,
    /// It died: Sidekiq buried it (its death handlers ran).
    Died,
}

/// Counts batch job `job`, run by a process outside the engine, with the very writes an
/// engine outcome makes — set memberships, events stamped once, callback jobs enqueued — in one
/// atomic step. Sidekiq took the job off its queue when it fetched it, so no list holds it:
/// the step runs its writes unconditionally, which membership makes safe to repeat. Returns
/// false when the job has no batch.
pub async fn count_ran(
    conn: &Conn,
    wire: WireVersion,
    job: &Job,
    ran: Ran,
) -> redis::RedisResult<bool> {
    let Some(bid) = bid_of(job) else {
        return Ok(false);
    };
    let counts = BatchCounts::new(Arc::new(OnceLock::from(conn.clone())), wire);
    if counts.read_line(bid).await.is_none() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "cannot read the batch's callbacks",
        )));
    }
    let action = match ran {
        Ran::Succeeded | Ran::Failed => Action::Acknowledge,
        Ran::Died => Action::Dead {
            payload: String::new(),
        },
    };
    let outcome = Outcome {
        job,
        queue: job.queue().unwrap_or("default"),
        action: &action,
        passed: true,
        failed: ran != Ran::Succeeded,
    };
    let mut writes = Vec::new();
    counts.on_outcome(&outcome, &mut writes);
    let now = wire::now_secs();
    let mut step = crate::outcome::Batch::new(now, crate::dead_set::DeadSetLimits::default());
    step.add_unheld(job.to_json().as_bytes(), &writes);
    let written = step
        .write(&crate::outcome::script(), &mut conn.clone())
        .await?;
    written.log_refused("batch count");
    Ok(true)
}
