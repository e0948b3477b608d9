//! Unique jobs: the client took the job's lock (`rustq:unique:<digest>`, a hash whose one field
//! is the holder's jid) in the same step as its push; this check point gives it up — when the job
//! starts (`unique_until: "start"`), or when it succeeds or dies (`"success"`, the default), in
//! the same atomic step as that outcome; an `"expired"` lock is never given up by its job. A failure that will be retried keeps it. `HDEL lock jid`
//! only ever removes the job's own lock, never one a later push took after it expired. A holder
//! that is killed leaves the lock to expire after `unique_for`, as the push set it.

use std::sync::{Arc, OnceLock};

use redis::AsyncCommands;
use rustq_core::limits::{self, Limits, UniqueUntil};
use rustq_core::{Conn, Job};

use crate::check_point::{CheckFuture, CheckPoint, Outcome, Verdict};
use crate::work::{Action, UnitOfWork, Write};

/// The check point that gives unique jobs' locks up.
pub struct UniqueLock {
    /// The connection, once the process has one.
    pub conn: Arc<OnceLock<Conn>>,
}

impl CheckPoint for UniqueLock {
    fn before<'a>(&'a self, job: &'a Job, _unit: &'a UnitOfWork) -> CheckFuture<'a> {
        let Some(unique) = Limits::of(job)
            .unique
            .filter(|u| u.until == UniqueUntil::Start)
        else {
            return Box::pin(std::future::ready(Verdict::Run));
        };
        Box::pin(async move {
            if let (Some(conn), Some(jid)) = (self.conn.get(), job.jid()) {
                let lock = limits::unique_lock(&unique.digest);
                let released: redis::RedisResult<()> = conn.clone().hdel(&lock, jid).await;
                if let Err(e) = released {
                    tracing::warn!(error = %e, jid, lock, "could not release a unique lock at start; it expires after unique_for");
                }
            }
            Verdict::Run
        })
    }

    fn on_outcome(&self, outcome: &Outcome<'_>, writes: &mut Vec<Write>) {
        let Some(unique) = Limits::of(outcome.job).unique else {
            return;
        };
        let gives_up = match outcome.action {
            Action::Acknowledge => outcome.passed && unique.until == UniqueUntil::Success,
            // Dead: whether it ran or was buried unread by a check point's panic. (`expired`
            // locks last their whole time, whatever happens.)
            Action::Dead { .. } => unique.until != UniqueUntil::Expired,
            _ => false,
        };
        if let (true, Some(jid)) = (gives_up, outcome.job.jid()) {
            writes.push(
                Write::new("HDEL")
                    .key(limits::unique_lock(&unique.digest))
                    .arg(jid),
            );
        }
    }
}
