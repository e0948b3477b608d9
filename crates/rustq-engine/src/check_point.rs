//! The job check point: code registered here sees every job just before its handler is given
//! it, and may let it run or defer it (to a time, or into a list it names) without that counting
//! as a failure or a retry; and it sees every outcome, and may add Redis commands that are
//! written in the same atomic step as the acknowledgement (see [`crate::outcome`]). Rust
//! handlers and the Ruby host pass through it alike; Sidekiq's server middleware in the Ruby host
//! runs later, inside the job's thread, as it always did.
//!
//! A job's outcome is written exactly once for each time it was held: the writes of a job whose
//! process died before its outcome was written are never applied (the job is recovered and runs
//! again), and a batch written again after a lost reply applies nothing twice.
//!
//! ```
//! use rustq_core::Job;
//! use rustq_engine::{Action, CheckFuture, CheckPoint, Deferral, Outcome, UnitOfWork, Verdict, Write};
//!
//! /// Parks reports while a maintenance flag is up; counts finished invoices.
//! struct Gate;
//!
//! impl CheckPoint for Gate {
//!     fn before<'a>(&'a self, job: &'a Job, _unit: &'a UnitOfWork) -> CheckFuture<'a> {
//!         let park = job.class() == Some("ReportJob");
//!         Box::pin(async move {
//!             if park {
//!                 Verdict::Defer(Deferral::Into("rustq:parked:reports".into()))
//!             } else {
//!                 Verdict::Run
//!             }
//!         })
//!     }
//!
//!     fn on_outcome(&self, outcome: &Outcome<'_>, writes: &mut Vec<Write>) {
//!         if outcome.job.class() == Some("InvoiceJob") && outcome.action == &Action::Acknowledge {
//!             writes.push(Write::new("INCR").key("rustq:invoices:done"));
//!         }
//!     }
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rustq_core::Job;

use crate::work::{Action, Deferral, UnitOfWork, Write};

/// What [`CheckPoint::before`] returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// A check point's answer for a job about to run.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Verdict {
    /// Let it run.
    Run,
    /// Do not run it now: it waits where the deferral says, unchanged, and its outcome is
    /// [`Action::Defer`].
    Defer(Deferral),
    /// The check point has itself moved the job out of this process's in-progress list to where
    /// the deferral says, in the same atomic step that decided it must wait (so no slot freed in
    /// between is missed). The outcome, [`Action::Defer`], then finds nothing left to move.
    Taken(Deferral),
}

/// A job's outcome as check points see it, before it is written.
#[derive(Debug)]
pub struct Outcome<'a> {
    /// The job as fetched.
    pub job: &'a Job,
    /// The queue it was fetched from.
    pub queue: &'a str,
    /// What is to be written for it.
    pub action: &'a Action,
    /// True when this check point's [`CheckPoint::before`] let the job run (false when the job
    /// was deferred, by this check point or an earlier one, or given back before it got here).
    pub passed: bool,
    /// True when the job failed (whatever follows: a retry, the dead set, or nothing when it
    /// has `retry: false`).
    pub failed: bool,
}

/// Code that sees each job before it runs and each outcome before it is written.
pub trait CheckPoint: Send + Sync + 'static {
    /// Just before the job's handler is given it: [`Verdict::Run`] or [`Verdict::Defer`]. The
    /// first check point to defer a job decides; later ones are not asked.
    ///
    /// `unit` is the job as this process holds it: its queue and its bytes exactly as they sit
    /// in the process's in-progress list for that queue, so a check point may move the job
    /// itself in the same atomic step that decides ([`Verdict::Taken`]).
    fn before<'a>(&'a self, job: &'a Job, unit: &'a UnitOfWork) -> CheckFuture<'a> {
        let _ = (job, unit);
        Box::pin(std::future::ready(Verdict::Run))
    }

    /// Before the outcome of a job that did not pass [`CheckPoint::before`] in this process is
    /// decided — a job buried after the processes running it kept dying — read what
    /// [`CheckPoint::on_outcome`] will need for it.
    fn prepare<'a>(&'a self, job: &'a Job) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        let _ = job;
        Box::pin(std::future::ready(()))
    }

    /// When the job's outcome is decided (every job that could be read, whatever its outcome):
    /// commands to write with it, atomically, only if the job is still this process's to write.
    fn on_outcome(&self, outcome: &Outcome<'_>, writes: &mut Vec<Write>) {
        let _ = (outcome, writes);
    }
}

/// The check points of a process, in the order they were registered.
#[derive(Clone, Default)]
pub struct CheckPoints(Vec<Arc<dyn CheckPoint>>);

impl CheckPoints {
    /// Adds one.
    pub fn add(&mut self, check_point: impl CheckPoint) {
        self.0.push(Arc::new(check_point));
    }

    /// True when none is registered (the engine then skips both steps).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Asks each in turn; returns the verdict and how many let the job run before it.
    pub async fn before(&self, job: &Job, unit: &UnitOfWork) -> (Verdict, usize) {
        for (i, check_point) in self.0.iter().enumerate() {
            let verdict = check_point.before(job, unit).await;
            if verdict != Verdict::Run {
                return (verdict, i);
            }
        }
        (Verdict::Run, self.0.len())
    }

    /// Lets each prepare for an outcome decided without [`CheckPoint::before`] (see
    /// [`CheckPoint::prepare`]).
    pub async fn prepare(&self, job: &Job) {
        for check_point in &self.0 {
            check_point.prepare(job).await;
        }
    }

    /// Collects the writes of every check point for this outcome; `passed` is how many let the
    /// job run (the first `passed` of them), `failed` whether the job failed.
    pub fn on_outcome(
        &self,
        job: &Job,
        queue: &str,
        action: &Action,
        passed: usize,
        failed: bool,
    ) -> Vec<Write> {
        let mut writes = Vec::new();
        for (i, check_point) in self.0.iter().enumerate() {
            let outcome = Outcome {
                job,
                queue,
                action,
                passed: i < passed,
                failed,
            };
            // A check point that panics adds nothing; the outcome is written all the same.
            let mut own = Vec::new();
            let added = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_point.on_outcome(&outcome, &mut own)
            }));
            match added {
                Ok(()) => writes.append(&mut own),
                Err(panic) => tracing::error!(
                    jid = job.jid().unwrap_or(""),
                    error = %crate::failure::panic_message(panic.as_ref()),
                    "a check point panicked on an outcome; its writes are skipped"
                ),
            }
        }
        writes
    }
}
