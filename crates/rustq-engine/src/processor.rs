//! Runs one job: parse it, find its handler, wait for its start, pass the check points, run it
//! under its time limit with panics caught, log start/done/fail like Sidekiq, and decide what to
//! write back.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rustq_core::wire;
use rustq_core::Job;
use tracing::Instrument;

use crate::check_point::{CheckPoints, Verdict};
use crate::control::Control;
use crate::dead_set;
use crate::failure::{class, Failure, FailureKind, JobResult};
use crate::handler::{JobContext, Registered, Registry, Started};
use crate::job_retry::{self, RetryPolicy};
use crate::observer::{Finished, Observers};
use crate::stats::Counters;
use crate::work::{Action, Deferral, UnitOfWork, Write};

/// What a processor needs from its process.
pub struct Processor {
    /// Handlers by class.
    pub registry: Registry,
    /// Retry settings.
    pub policy: RetryPolicy,
    /// `--job-timeout`: the time limit of jobs whose handler sets none.
    pub job_timeout: Option<Duration>,
    /// Processed/failed counts for the heartbeat and `stat:*`.
    pub counters: Arc<Counters>,
    /// What sees each job before it runs and each outcome.
    pub check_points: CheckPoints,
    /// What is told of each job's start and end (metrics, traces).
    pub observers: Observers,
    /// The process's control: a job not started when it quiets goes back.
    pub control: Control,
    /// With `WorkerOptions::dispatch_ahead`: the `concurrency` permits that handlers which do
    /// not run jobs on threads of their own (Rust and `exec` handlers) wait for before they
    /// start. (Handlers with threads of their own start a job when a thread claims it.)
    pub permits: Option<Arc<tokio::sync::Semaphore>>,
}

/// What to write for a job: its action and the check points' writes.
pub type Decision = (Action, Vec<Write>);

impl Processor {
    /// Runs `unit` and returns what to write for it; `started` is claimed when the job begins.
    pub async fn process(&self, unit: &UnitOfWork, started: Started) -> Decision {
        let mut job = match unit.parse() {
            Ok(job) => job,
            Err(e) => {
                let now = wire::now_secs();
                tracing::error!(queue = %unit.queue, error = %e, "poison job sent to the dead set");
                self.counters.record(class::INVALID_PAYLOAD, 0, true);
                let payload =
                    dead_set::unreadable_entry(&unit.raw, &unit.queue, &e, self.policy.wire, now);
                return (Action::Dead { payload }, Vec::new());
            }
        };
        if let Err(e) = job.check() {
            tracing::error!(queue = %unit.queue, jid = job.jid().unwrap_or(""), error = %e, "poison job sent to the dead set");
            self.counters.record(class::INVALID_PAYLOAD, 0, true);
            let failure = Failure::kill(class::INVALID_PAYLOAD, e.to_string());
            let mut dead = job.clone();
            job_retry::record_error(
                &mut dead,
                &unit.queue,
                &failure,
                self.policy.wire,
                wire::now_secs(),
            );
            let action = Action::Dead {
                payload: dead.to_json(),
            };
            return self.decided(&job, &unit.queue, action, 0, true);
        }

        let registered = self
            .registry
            .resolve(job.class().unwrap_or_default(), job.wrapped());
        // Limits its handler was registered with, for a job pushed without its own.
        for rule in registered
            .map(|r| r.options.limits.as_slice())
            .unwrap_or_default()
        {
            rule.apply(&mut job);
        }
        let own_threads = registered.is_some_and(|r| r.handler.signals_start());
        let mut _permit = None;
        if !own_threads {
            if let Some(permits) = &self.permits {
                match self
                    .control
                    .start_unless_quiet(permits.clone().acquire_owned())
                    .await
                {
                    None => return self.decided(&job, &unit.queue, Action::Requeue, 0, false),
                    Some(permit) => _permit = permit.ok(),
                }
            }
            started.claim();
        }
        let (verdict, passed) = if self.check_points.is_empty() {
            (Verdict::Run, 0)
        } else {
            // A check point that panics fails the job (retried, then dead, its error in the Web
            // UI) rather than its task: a lost task would hold the job until the process stops.
            match AssertUnwindSafe(self.check_points.before(&job, unit))
                .catch_unwind()
                .await
            {
                Ok(checked) => checked,
                Err(panic) => {
                    let failure = Failure::panicked(panic.as_ref());
                    tracing::error!(class = %job.display_class(), jid = job.jid().unwrap_or(""), error = %failure, "a check point panicked");
                    let action = job_retry::on_failure(
                        job.clone(),
                        &unit.queue,
                        &failure,
                        registered.map(|r| &r.options),
                        self.policy,
                        wire::now_secs(),
                    );
                    return self.decided(&job, &unit.queue, action, 0, true);
                }
            }
        };
        if let Verdict::Defer(deferral) | Verdict::Taken(deferral) = verdict {
            tracing::debug!(class = %job.display_class(), jid = job.jid().unwrap_or(""), ?deferral, "deferred");
            let deferral = match deferral {
                // Redis cannot score a time that is not a number: due now instead.
                Deferral::Until(at) if !at.is_finite() => Deferral::Until(wire::now_secs()),
                other => other,
            };
            return self.decided(&job, &unit.queue, Action::Defer(deferral), passed, false);
        }

        let job = Arc::new(job);
        let class = job.display_class().to_string();
        let jid = job.jid().unwrap_or("").to_string();
        let span = crate::trace::job_span(&job, &unit.queue, &class);
        self.observers.started(&job, &unit.queue, &span);
        let begun = Instant::now();
        tracing::info!(class = %class, jid = %jid, "start");
        let result = match registered {
            // Sidekiq's rule for a class it cannot find: a normal failure (retried, then dead).
            None => Err(Failure::retry(
                "NameError",
                format!("uninitialized constant {}", job.class().unwrap_or_default()),
            )),
            Some(registered) => match self
                .run(registered, &job, unit, started)
                .instrument(span.clone())
                .await
            {
                Some(result) => result,
                None => {
                    return self.decided(&job, &unit.queue, Action::Requeue, passed, false);
                }
            },
        };
        let elapsed = begun.elapsed();
        let ms = elapsed.as_millis() as u64;
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        // A limiter over its limit reschedules the job; once it has too often, it fails.
        let rescheduled = match &result {
            Err(f) if f.kind == FailureKind::OverLimit => {
                job_retry::reschedule(&job, f, wire::now_secs())
            }
            _ => None,
        };
        let result = match result {
            Err(f) if f.kind == FailureKind::OverLimit && rescheduled.is_none() => {
                Err(Failure::retry(f.error_class, f.message))
            }
            other => other,
        };
        let failed = matches!(&result, Err(f) if !matches!(f.kind, FailureKind::Requeue | FailureKind::Interrupted | FailureKind::OverLimit));
        let action = match result {
            Ok(()) => {
                self.counters.record(&class, ms, false);
                tracing::info!(class = %class, jid = %jid, elapsed_ms, "done");
                Action::Acknowledge
            }
            Err(failure) if failure.kind == FailureKind::OverLimit => {
                tracing::info!(class = %class, jid = %jid, elapsed_ms, error = %failure, "over a limiter's limit; scheduled again");
                rescheduled.expect("an over-limit failure still here was rescheduled")
            }
            Err(failure) if failure.kind == FailureKind::Requeue => Action::Requeue,
            Err(failure) if failure.kind == FailureKind::Interrupted => {
                tracing::info!(class = %class, jid = %jid, elapsed_ms, "interrupted; to the back of its queue");
                Action::Defer(Deferral::Into(wire::keys::queue(&unit.queue)))
            }
            Err(failure) => {
                self.counters.record(&class, ms, true);
                crate::trace::failed(&span, &failure.error_class);
                tracing::warn!(class = %class, jid = %jid, elapsed_ms, error = %failure, "fail");
                job_retry::on_failure(
                    (*job).clone(),
                    &unit.queue,
                    &failure,
                    registered.map(|r| &r.options),
                    self.policy,
                    wire::now_secs(),
                )
            }
        };
        if !self.observers.is_empty() {
            self.observers.finished(&Finished {
                job: &job,
                queue: &unit.queue,
                class: &class,
                action: &action,
                failed,
                elapsed,
            });
        }
        self.decided(&job, &unit.queue, action, passed, failed)
    }

    /// Runs the job with its handler under its time limit, panics caught. `None` when the job
    /// went back unstarted: its handler runs jobs on threads of its own, and the process quieted
    /// before one took it.
    async fn run(
        &self,
        registered: &Registered,
        job: &Arc<Job>,
        unit: &UnitOfWork,
        started: Started,
    ) -> Option<JobResult> {
        let mut ctx = JobContext::with_start(job.clone(), unit.queue.clone(), started.clone());
        if let Ok(raw) = std::str::from_utf8(&unit.raw) {
            ctx = ctx.with_raw(Arc::from(raw));
        }
        // A handler may panic in `perform` itself, before its future exists: that too fails
        // only its job (left uncaught it would end the job's task, and its slot and its place in
        // the in-progress list would never be given up).
        let perform =
            std::panic::catch_unwind(AssertUnwindSafe(|| registered.handler.perform(ctx)));
        let perform = match perform {
            Ok(future) => future,
            Err(panic) => return Some(Err(Failure::panicked(panic.as_ref()))),
        };
        let mut run = AssertUnwindSafe(perform).catch_unwind();
        let limit = registered.options.timeout.or(self.job_timeout);
        if registered.handler.signals_start() {
            // The job waits for one of the handler's threads. Should the process quiet first,
            // it is taken back, unless a thread has just claimed it. With a time limit, the limit
            // starts at the claim; without one, the claim need not wake this task at all. (An
            // answer before the claim: the handler could not run the job at all.)
            tokio::select! {
                biased;
                answer = &mut run => return Some(answer.unwrap_or_else(|panic| Err(Failure::panicked(panic.as_ref())))),
                () = started.claimed(), if limit.is_some() => {}
                () = self.control.quieted() => {
                    if started.withdraw() {
                        return None;
                    }
                    started.claimed().await;
                }
            }
        }
        let answer = match limit {
            // Dropping `run` tells the handler the engine no longer waits for the job.
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(answer) => answer,
                Err(_) => return Some(Err(Failure::timed_out(limit))),
            },
            None => run.await,
        };
        Some(answer.unwrap_or_else(|panic| Err(Failure::panicked(panic.as_ref()))))
    }

    /// The decision, with what the check points write with it.
    fn decided(
        &self,
        job: &Job,
        queue: &str,
        action: Action,
        passed: usize,
        failed: bool,
    ) -> Decision {
        if self.check_points.is_empty() {
            return (action, Vec::new());
        }
        let writes = self
            .check_points
            .on_outcome(job, queue, &action, passed, failed);
        (action, writes)
    }
}
