//! Answers of finished jobs on their way from the Ruby threads back to the engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustq_engine::JobResult;
use tokio::sync::{oneshot, Notify};

/// Answers of finished jobs on their way back to the engine. A Ruby thread files its answer here
/// rather than waking the engine's runtime for each job: waking a parked runtime thread cost the
/// Ruby thread ~10 µs per job, a fifth of a no-op ActiveJob job. [`collect`] hands them over
/// every millisecond while jobs run, at once when the Ruby threads have run out of jobs (so the
/// engine fetches more) or 64 are waiting, and rests after 100 ms without any.
#[derive(Default)]
pub struct Answers {
    pending: Mutex<Vec<(oneshot::Sender<JobResult>, JobResult)>>,
    wake: Notify,
    /// `collect` waits for a wake instead of ticking.
    resting: AtomicBool,
}

/// Answers waiting past this many wake the collector at once.
const ANSWERS_BATCH: usize = 32;

impl Answers {
    pub fn file(&self, reply: oneshot::Sender<JobResult>, result: JobResult, out_of_jobs: bool) {
        let waiting = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push((reply, result));
            pending.len()
        };
        if out_of_jobs || waiting >= ANSWERS_BATCH || self.resting.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Hands every waiting answer to its engine task; how many there were.
    pub fn deliver(&self) -> usize {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let count = batch.len();
        for (reply, result) in batch {
            // The engine task may have stopped waiting (time limit, shutdown): nothing to do.
            let _ = reply.send(result);
        }
        count
    }
}

/// Runs on the engine's runtime for as long as the engine does (see [`Answers`]).
pub async fn collect(answers: Arc<Answers>) {
    let mut quiet_ticks = 0;
    loop {
        if quiet_ticks >= 100 {
            answers.resting.store(true, Ordering::SeqCst);
            // Whatever was filed before `resting` was set is delivered here; anything filed after
            // it sees `resting` and wakes us.
            if answers.deliver() == 0 {
                answers.wake.notified().await;
            }
            answers.resting.store(false, Ordering::SeqCst);
            quiet_ticks = 0;
        } else {
            tokio::select! {
                () = answers.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        if answers.deliver() == 0 {
            quiet_ticks += 1;
        } else {
            quiet_ticks = 0;
        }
    }
}
