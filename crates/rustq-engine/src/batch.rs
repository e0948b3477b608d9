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
}

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
        let (queue, callbacks): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(batch::batch_key(bid))
            .arg("callback_queue")
            .arg("callbacks")
            .query_async(&mut conn)
            .await
            .ok()?;
        let parsed: Value = serde_json::from_str(callbacks.as_deref().unwrap_or("{}")).ok()?;
        let mut by_event = HashMap::new();
        for event in [Event::Complete, Event::Success, Event::Death] {
            let list = parsed
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
                .unwrap_or_default();
            by_event.insert(event.as_str(), list);
        }
        let known = Callbacks {
            queue: queue.unwrap_or_else(|| "default".into()),
            by_event,
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

    /// The writes of one event: stamp it once, and enqueue its callbacks only then.
    fn event(&self, bid: &str, event: Event, callbacks: &Callbacks, now: f64) -> Vec<Write> {
        let pushes = callbacks
            .by_event
            .get(event.as_str())
            .cloned()
            .unwrap_or_default();
        let mut writes = vec![Write::new("HSETNX")
            .key(batch::batch_key(bid))
            .arg(event.field())
            .arg(wire::format_float(now))
            .gate(1, 2 * pushes.len())];
        for (target, options) in pushes {
            writes.push(Write::new("SADD").key(keys::QUEUES).arg(&callbacks.queue));
            writes.push(Write::new("LPUSH").key(keys::queue(&callbacks.queue)).arg(
                batch::callback_payload(
                    event,
                    bid,
                    &target,
                    &options,
                    &callbacks.queue,
                    now,
                    self.wire,
                ),
            ));
        }
        writes
    }

    /// Complete once nothing is pending (and success, once nothing has failed either, when
    /// `with_success`).
    fn when_done(
        &self,
        bid: &str,
        callbacks: &Callbacks,
        now: f64,
        with_success: bool,
    ) -> Vec<Write> {
        let complete = self.event(bid, Event::Complete, callbacks, now);
        let success = if with_success {
            let block = self.event(bid, Event::Success, callbacks, now);
            let mut gated = vec![Write::new("SCARD")
                .key(batch::failed_key(bid))
                .gate(0, block.len())];
            gated.extend(block);
            gated
        } else {
            Vec::new()
        };
        let mut writes = vec![Write::new("SCARD")
            .key(batch::pending_key(bid))
            .gate(0, complete.len() + success.len())];
        writes.extend(complete);
        writes.extend(success);
        writes
    }
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
            while self.conn.get().is_some() && self.read(bid).await.is_none() {
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
                let _ = self.read(bid).await;
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
            tracing::warn!(bid, jid, "a batch's callbacks were not read before its job's outcome; counting it without them");
            return self.count_without_callbacks(bid, jid, outcome.action, outcome.failed, writes);
        };
        let now = wire::now_secs();
        let pending = batch::pending_key(bid);
        let failed = batch::failed_key(bid);
        match outcome.action {
            // Failed with `retry: false`: done, as a failure (it never succeeds now).
            Action::Acknowledge if outcome.failed => {
                writes.push(Write::new("SADD").key(&failed).arg(jid));
                writes.push(Write::new("SREM").key(&pending).arg(jid));
                writes.extend(self.when_done(bid, &callbacks, now, false));
            }
            Action::Acknowledge => {
                writes.push(Write::new("SREM").key(&pending).arg(jid));
                writes.push(Write::new("SREM").key(&failed).arg(jid));
                writes.extend(self.when_done(bid, &callbacks, now, true));
            }
            Action::Retry { .. } => {
                writes.push(Write::new("SADD").key(&failed).arg(jid));
                writes.push(Write::new("SREM").key(&pending).arg(jid));
                writes.extend(self.when_done(bid, &callbacks, now, false));
            }
            _ => {
                writes.push(Write::new("SADD").key(&failed).arg(jid));
                writes.push(Write::new("SADD").key(batch::dead_key(bid)).arg(jid));
                writes.push(Write::new("SREM").key(&pending).arg(jid));
                writes.extend(self.event(bid, Event::Death, &callbacks, now));
                writes.extend(self.when_done(bid, &callbacks, now, false));
            }
        }
    }
}

impl BatchCounts {
    /// Counts a job whose batch could not be read (Redis was away at its start): its sets change
    /// as they must; its events are stamped by the next job's outcome that sees them.
    fn count_without_callbacks(
        &self,
        bid: &str,
        jid: &str,
        action: &Action,
        failed_run: bool,
        writes: &mut Vec<Write>,
    ) {
        let pending = batch::pending_key(bid);
        let failed = batch::failed_key(bid);
        match action {
            Action::Acknowledge if !failed_run => {
                writes.push(Write::new("SREM").key(&failed).arg(jid));
            }
            Action::Acknowledge | Action::Retry { .. } => {
                writes.push(Write::new("SADD").key(&failed).arg(jid));
            }
            _ => {
                writes.push(Write::new("SADD").key(&failed).arg(jid));
                writes.push(Write::new("SADD").key(batch::dead_key(bid)).arg(jid));
            }
        }
        writes.push(Write::new("SREM").key(&pending).arg(jid));
    }
}
