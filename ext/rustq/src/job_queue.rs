//! The jobs the engine hands to the Ruby threads, in fetch order, and how the threads wait for
//! them: only one Ruby thread runs at a time, so the queue wakes idle threads sparingly — a
//! thread that finishes a job takes the next one without letting go of the GVL, and at most one
//! idle thread is woken at a time, to take a job should the running one block (on I/O, a sleep).
//! It takes its job only once it holds the GVL, so a job never waits in a thread that cannot run.
//! (Waking a thread per job, each to wait for the GVL, cost more than a no-op job itself.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rustq_engine::job_retry::Outlook;
use rustq_engine::{JobResult, Started};
use tokio::sync::oneshot;

use crate::to_ruby;

/// One job on its way to a Ruby thread. Its `started` decides, once, whether a Ruby thread takes
/// it or the engine takes it back unstarted because the process is quieting.
pub struct Dispatch {
    /// The payload as the engine parsed it, written out for the Ruby thread that makes it a Hash
    /// (the parsed payload itself stays with the engine, which frees it on its own runtime).
    pub tape: to_ruby::Tape,
    /// For an ActiveJob wrapper's payload: the wrapper's class name and the jid. The Ruby thread
    /// then makes only `args[0]` (ActiveJob's own data) a Hash (`process_active_job`), and the
    /// whole payload only should the job fail.
    pub active_job: Option<ActiveJobParts>,
    /// Its JSON as stored in Redis (for error handlers' `jobstr`).
    pub json: Arc<str>,
    /// The queue it was fetched from.
    pub queue: String,
    /// What a failure will lead to.
    pub outlook: Outlook,
    /// Claimed by the Ruby thread that takes the job: it counts as begun (busy, time limit) then.
    pub started: Started,
    /// Where the answer goes.
    pub reply: oneshot::Sender<JobResult>,
    /// The job's trace context, for the Ruby thread to run it in.
    pub trace: Vec<(&'static str, String)>,
}

/// An ActiveJob payload's wrapper class and jid.
pub struct ActiveJobParts {
    pub wrapper: String,
    pub jid: String,
}

impl ActiveJobParts {
    /// `wrappers`: the class names ActiveJob adapters put on a payload
    /// (`Rustq::Job::ACTIVE_JOB_WRAPPERS`).
    pub fn of(
        job: &rustq_core::Job,
        tape: &to_ruby::Tape,
        wrappers: &[String],
    ) -> Option<ActiveJobParts> {
        let wrapper = job.class()?;
        if !tape.has_first_arg() || !wrappers.iter().any(|w| w == wrapper) {
            return None;
        }
        Some(ActiveJobParts {
            wrapper: wrapper.to_string(),
            jid: job.jid()?.to_string(),
        })
    }
}

impl Dispatch {
    /// Takes the job for the calling Ruby thread; false if it is no longer to be run (the engine
    /// took it back, or stopped waiting for it).
    fn take(&mut self) -> bool {
        !self.reply.is_closed() && self.started.claim()
    }
}

/// The jobs handed to the Ruby threads, in fetch order.
#[derive(Default)]
pub struct JobQueue {
    state: Mutex<QueueState>,
    pub wake: Condvar,
}

#[derive(Default)]
pub struct QueueState {
    pub jobs: VecDeque<Dispatch>,
    /// The engine has let go of its handler: no more jobs will come.
    closed: bool,
    /// Ruby threads waiting for a job, without the GVL.
    idle: usize,
    /// Where the one wake-up that may be under way is; while one is, no other thread is woken.
    waking: Waking,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Waking {
    #[default]
    No,
    /// Granted to the idle threads (one was notified) and not yet claimed by one.
    Granted,
    /// Claimed by a thread that has not yet looked at the queue holding the GVL.
    Claimed,
}

/// How a wait of a Ruby thread ended.
pub enum Wait {
    /// Woken to take a job: the wake-up is this thread's to end (see [`JobQueue::next`]).
    Woken,
    /// Nothing to wait for: a job came or the engine stopped before the thread went to sleep.
    Look,
    /// `Thread#kill`/`#raise` or a signal: back to Ruby at once.
    Interrupted,
}

impl JobQueue {
    pub fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every change to the state is complete before anything that could panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, dispatch: Dispatch) {
        let mut state = self.lock();
        state.jobs.push_back(dispatch);
        self.wake_one(&mut state);
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Wakes an idle thread, unless one is already on its way.
    fn wake_one(&self, state: &mut QueueState) {
        if state.waking == Waking::No && state.idle > 0 {
            state.waking = Waking::Granted;
            self.wake.notify_one();
        }
    }

    /// A thread woken to take a job goes back to Ruby without looking (an interrupt): the
    /// next idle thread may be woken in its place.
    pub fn forgo_wake(&self) {
        let mut state = self.lock();
        state.waking = Waking::No;
        if !state.jobs.is_empty() {
            self.wake_one(&mut state);
        }
    }

    /// Holding the GVL: the next job to run, `Err(())` once the engine has stopped, or
    /// `Ok(None)` when there is none yet (the caller then `wait`s). `woken` says the caller was
    /// woken to look, which lets the next idle thread be woken.
    pub fn next(&self, woken: bool) -> Result<Option<Dispatch>, ()> {
        loop {
            let mut state = self.lock();
            if woken {
                state.waking = Waking::No;
            }
            let Some(mut dispatch) = state.jobs.pop_front() else {
                return if state.closed { Err(()) } else { Ok(None) };
            };
            // More jobs wait: have a thread ready to take one should this one block.
            if !state.jobs.is_empty() {
                self.wake_one(&mut state);
            }
            drop(state);
            if dispatch.take() {
                return Ok(Some(dispatch));
            }
        }
    }

    /// Without the GVL: sleeps until woken to look at the queue again, or interrupted.
    pub fn wait(&self, interrupted: &AtomicBool) -> Wait {
        let mut state = self.lock();
        if !state.jobs.is_empty() || state.closed {
            return Wait::Look;
        }
        state.idle += 1;
        loop {
            if interrupted.load(Ordering::Acquire) {
                state.idle -= 1;
                // A wake-up granted while no other thread is left idle to claim it lapses. (With
                // others left, one claims it: the interrupt woke them all.)
                if state.waking == Waking::Granted && state.idle == 0 {
                    state.waking = Waking::No;
                }
                return Wait::Interrupted;
            }
            if state.waking == Waking::Granted {
                state.waking = Waking::Claimed;
                state.idle -= 1;
                return Wait::Woken;
            }
            if state.closed {
                state.idle -= 1;
                return Wait::Look;
            }
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The engine's end of the queue: dropping it (the engine has stopped) ends the Ruby threads'
/// loops once no job is left.
pub struct QueueSender(pub Arc<JobQueue>);

impl Drop for QueueSender {
    fn drop(&mut self) {
        self.0.close();
    }
}
