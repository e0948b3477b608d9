//! Writes finished jobs back in batches: each job's removal from the in-progress list goes in
//! the same MULTI as whatever else its outcome needs (a retry, a dead-set entry, a requeue).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use rustq_core::wire::{self, keys};
use tokio::sync::mpsc;

use crate::fetch::UnitOfWork;
use crate::job_retry::Action;
use crate::keys as rkeys;
use crate::orphans::Holdings;

/// A finished job and what to write for it.
#[derive(Debug)]
pub struct Completion {
    pub unit: UnitOfWork,
    pub action: Action,
}

/// Most completions written in one round trip.
const BATCH: usize = 512;

/// Moves a job from the in-progress list back to the front of its queue, only if it is still
/// in the list: written again after a reply was lost (the batch had run), it pushes nothing.
const REQUEUE: &str = r#"
if redis.call('LREM', KEYS[1], -1, ARGV[1]) > 0 then redis.call('RPUSH', KEYS[2], ARGV[1]) end
"#;

/// Adds the commands for one completion to an atomic pipeline. Each outcome can be written
/// twice without a second effect (a batch whose reply was lost is written again): `ZADD` of the
/// same entry, `LREM` of a job already gone, a requeue that only moves what is still there.
pub fn add_commands(
    pipe: &mut redis::Pipeline,
    identity: &str,
    c: &Completion,
    now: f64,
    dead: DeadSetLimits,
) {
    let inprogress = rkeys::inprogress(identity, &c.unit.queue);
    match &c.action {
        Action::Acknowledge => {}
        Action::Retry { at, payload } => {
            pipe.zadd(keys::RETRY, payload, wire::format_float(*at))
                .ignore();
        }
        Action::Dead { payload } => add_dead(pipe, payload, now, dead),
        Action::Requeue => {
            pipe.cmd("EVAL")
                .arg(REQUEUE)
                .arg(2)
                .arg(inprogress)
                .arg(keys::queue(&c.unit.queue))
                .arg(&c.unit.raw)
                .ignore();
            return;
        }
    }
    pipe.lrem(inprogress, -1, &c.unit.raw).ignore();
}

/// How much the dead set keeps: Sidekiq's `dead_max_jobs` (10,000) and `dead_timeout_in_seconds`
/// (180 days), settable in the config file as in `sidekiq.yml`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeadSetLimits {
    pub max_jobs: i64,
    pub timeout_secs: f64,
}

impl Default for DeadSetLimits {
    fn default() -> Self {
        DeadSetLimits {
            max_jobs: wire::DEAD_MAX_JOBS,
            timeout_secs: wire::DEAD_TIMEOUT_SECS,
        }
    }
}

/// `DeadSet#kill`: add, then drop entries older than the timeout and all but the newest
/// `max_jobs`.
pub fn add_dead(pipe: &mut redis::Pipeline, payload: &str, now: f64, limits: DeadSetLimits) {
    pipe.zadd(keys::DEAD, payload, wire::format_float(now))
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(keys::DEAD)
        .arg("-inf")
        .arg(wire::format_float(now - limits.timeout_secs))
        .ignore()
        .cmd("ZREMRANGEBYRANK")
        .arg(keys::DEAD)
        .arg(0)
        .arg(-limits.max_jobs)
        .ignore();
}

/// Drains `rx` until every sender is gone, writing completions in batches. A failed write is
/// retried with backoff until Redis answers: an unwritten acknowledgement would only make the
/// job run again, but an unwritten retry or dead entry must not be dropped. Once written, a
/// job is no longer one of `holdings`.
pub async fn run(
    conn: ConnectionManager,
    identity: String,
    mut rx: mpsc::UnboundedReceiver<Completion>,
    dead: DeadSetLimits,
    holdings: Arc<Holdings>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let now = wire::now_secs();
        for c in &batch {
            add_commands(&mut pipe, &identity, c, now, dead);
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut c = conn.clone();
            match pipe.query_async::<()>(&mut c).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, jobs = batch.len(), "cannot write finished jobs; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.iter().for_each(|c| holdings.release(&c.unit));
        batch.clear();
    }
}
