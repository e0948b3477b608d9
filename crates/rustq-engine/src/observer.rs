//! The job observers: code registered here is told when each job starts running and when it has
//! finished, with its outcome and run time, and changes nothing about it. Metrics
//! ([`crate::metrics`]) and trace exporters plug in here; a check point
//! ([`crate::check_point`]) is the seam for code that decides or writes something.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use rustq_engine::observer::{Finished, Observer};
//!
//! /// Counts the jobs of one class that ended in the dead set.
//! #[derive(Default)]
//! struct Buried(AtomicU64);
//!
//! impl Observer for Buried {
//!     fn finished(&self, done: &Finished<'_>) {
//!         if done.job.class() == Some("ImportJob") && done.died() {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//! ```

use std::sync::Arc;
use std::time::Duration;

use rustq_core::Job;

use crate::work::Action;

/// A job that ran, as observers see it once its outcome is decided (before it is written).
#[derive(Debug)]
pub struct Finished<'a> {
    /// The job as fetched.
    pub job: &'a Job,
    /// The queue it was fetched from.
    pub queue: &'a str,
    /// Its class as shown in the Web UI (an ActiveJob's own class, not the wrapper).
    pub class: &'a str,
    /// What is to be written for it.
    pub action: &'a Action,
    /// True when the run failed (retried, dead, or dropped for `retry: false`).
    pub failed: bool,
    /// How long its handler ran.
    pub elapsed: Duration,
}

impl Finished<'_> {
    /// True when the failure sends it to the retry set.
    pub fn retried(&self) -> bool {
        matches!(self.action, Action::Retry { .. })
    }

    /// True when it goes to the dead set.
    pub fn died(&self) -> bool {
        matches!(self.action, Action::Dead { .. })
    }
}

/// Code told of each job's start and end.
pub trait Observer: Send + Sync + 'static {
    /// The job is about to run, inside `span` (the job's `"<queue> process"` span).
    fn started(&self, job: &Job, queue: &str, span: &tracing::Span) {
        let _ = (job, queue, span);
    }

    /// The job ran and its outcome is decided.
    fn finished(&self, finished: &Finished<'_>) {
        let _ = finished;
    }
}

/// The observers of a process, in the order they were registered.
#[derive(Clone, Default)]
pub struct Observers(Vec<Arc<dyn Observer>>);

impl Observers {
    /// Adds one.
    pub fn add(&mut self, observer: Arc<dyn Observer>) {
        self.0.push(observer);
    }

    /// True when none is registered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Tells each that `job` starts.
    pub fn started(&self, job: &Job, queue: &str, span: &tracing::Span) {
        for observer in &self.0 {
            told(|| observer.started(job, queue, span));
        }
    }

    /// Tells each that a job finished.
    pub fn finished(&self, finished: &Finished<'_>) {
        for observer in &self.0 {
            told(|| observer.finished(finished));
        }
    }
}

/// An observer that panics misses that event; the job goes on (a panic here would otherwise end
/// the job's task, and its place in the in-progress list would never be given up).
fn told(f: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        tracing::error!(error = %crate::failure::panic_message(panic.as_ref()), "an observer panicked");
    }
}
