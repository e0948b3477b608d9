//! Runs one job: parse, find its handler, run it under a time limit with panics caught, log
//! start/done/fail like Sidekiq, and decide what to write back.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rustq_core::wire::{self, WireVersion};
use rustq_core::{Job, PayloadError};
use serde_json::Value;

use crate::fetch::UnitOfWork;
use crate::handler::{Failure, FailureKind, JobContext, Registry, Started};
use crate::job_retry::{self, Action, RetryPolicy};
use crate::stats::Counters;

/// The error class given to payloads that cannot be run at all.
pub const INVALID_PAYLOAD: &str = "Rustq::InvalidPayload";

/// What a processor needs from its process.
pub struct Processor {
    pub registry: Registry,
    pub policy: RetryPolicy,
    pub job_timeout: Option<Duration>,
    pub counters: Arc<Counters>,
    /// With `WorkerOptions::dispatch_ahead`: the `concurrency` slots that handlers which do not
    /// run jobs on threads of their own (Rust and `exec` handlers) wait for before they start,
    /// and the process's control: a job still waiting for a slot goes back when it quiets.
    pub slots: Option<(Arc<tokio::sync::Semaphore>, crate::Control)>,
}

impl Processor {
    /// Runs `unit` and returns what to write for it; `started` is signalled when the job begins.
    pub async fn process(&self, unit: &UnitOfWork, started: Started) -> Action {
        let job = match parse(&unit.raw) {
            Ok(job) => job,
            Err(e) => {
                let now = wire::now_secs();
                tracing::error!(queue = %unit.queue, error = %e, "poison job sent to the dead set");
                self.counters.record(INVALID_PAYLOAD, 0, true);
                return Action::Dead {
                    payload: poison_payload(&unit.raw, &unit.queue, &e, self.policy.wire, now),
                };
            }
        };
        if let Err(e) = job.check() {
            tracing::error!(queue = %unit.queue, jid = job.jid().unwrap_or(""), error = %e, "poison job sent to the dead set");
            self.counters.record(INVALID_PAYLOAD, 0, true);
            let failure = Failure::kill(INVALID_PAYLOAD, e.to_string());
            let mut job = job;
            job_retry::record_error(
                &mut job,
                &unit.queue,
                &failure,
                self.policy.wire,
                wire::now_secs(),
            );
            return Action::Dead {
                payload: job.to_json(),
            };
        }

        let job = Arc::new(job);
        let class = job.display_class().to_string();
        let jid = job.jid().unwrap_or("").to_string();
        let registered = self
            .registry
            .resolve(job.class().unwrap_or_default(), job.wrapped());
        let begun = Instant::now();
        tracing::info!(class = %class, jid = %jid, "start");
        let result = match registered {
            // Sidekiq's rule for a class it cannot find: a normal failure (retried, then dead).
            None => Err(Failure::retry(
                "NameError",
                format!("uninitialized constant {}", job.class().unwrap_or_default()),
            )),
            Some(registered) => {
                let mut _slot = None;
                if !registered.handler.signals_start() {
                    if let Some((slots, control)) = &self.slots {
                        tokio::select! {
                            biased;
                            () = control.quieted() => return Action::Requeue,
                            slot = slots.clone().acquire_owned() => _slot = slot.ok(),
                        }
                    }
                    started.signal();
                }
                let mut ctx = JobContext::with_start(job.clone(), unit.queue.clone(), started);
                if let Ok(raw) = std::str::from_utf8(&unit.raw) {
                    ctx = ctx.with_raw(Arc::from(raw));
                }
                let run = AssertUnwindSafe(registered.handler.perform(ctx)).catch_unwind();
                match registered.options.timeout.or(self.job_timeout) {
                    Some(limit) => match tokio::time::timeout(limit, run).await {
                        Ok(r) => r.unwrap_or_else(|panic| Err(panic_failure(panic))),
                        Err(_) => Err(Failure::retry(
                            "Rustq::TimeoutError",
                            format!(
                                "job exceeded its time limit of {:.1} s",
                                limit.as_secs_f64()
                            ),
                        )),
                    },
                    None => run.await.unwrap_or_else(|panic| Err(panic_failure(panic))),
                }
            }
        };
        let elapsed = begun.elapsed();
        let ms = elapsed.as_millis() as u64;
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        match result {
            Ok(()) => {
                self.counters.record(&class, ms, false);
                tracing::info!(class = %class, jid = %jid, elapsed_ms, "done");
                Action::Acknowledge
            }
            Err(failure) if failure.kind == FailureKind::Requeue => Action::Requeue,
            Err(failure) => {
                self.counters.record(&class, ms, true);
                tracing::warn!(class = %class, jid = %jid, elapsed_ms, error = %failure, "fail");
                let job = Arc::try_unwrap(job).unwrap_or_else(|shared| (*shared).clone());
                job_retry::on_failure(
                    job,
                    &unit.queue,
                    &failure,
                    registered.map(|r| &r.options),
                    self.policy,
                    wire::now_secs(),
                )
            }
        }
    }
}

fn parse(raw: &[u8]) -> Result<Job, PayloadError> {
    let text = std::str::from_utf8(raw)
        .map_err(|e| PayloadError::InvalidJson(format!("payload is not valid UTF-8 ({e})")))?;
    Job::from_json(text)
}

fn panic_failure(panic: Box<dyn std::any::Any + Send>) -> Failure {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "handler panicked".to_string());
    Failure::retry("Rustq::Panic", format!("handler panicked: {message}"))
}

/// A dead-set entry for bytes that are not a job at all: a JSON object Sidekiq's Web UI can show,
/// with the error, and the original bytes (lossily decoded) under `payload` for salvage.
pub fn poison_payload(
    raw: &[u8],
    queue: &str,
    error: &PayloadError,
    wire: WireVersion,
    now: f64,
) -> String {
    let mut job = Job::from_fields(Default::default());
    job.set("class", INVALID_PAYLOAD);
    job.set("args", Value::Array(Vec::new()));
    job.set("queue", queue);
    job.set("retry", false);
    job.set("jid", rustq_core::generate_jid());
    job.set_time("created_at", now, wire);
    job.set(
        "error_message",
        wire::truncate_error_message(&format!("cannot run job: {error}")),
    );
    job.set("error_class", INVALID_PAYLOAD);
    job.set_time("failed_at", now, wire);
    job.set("retry_count", 0);
    job.set("payload", String::from_utf8_lossy(raw).into_owned());
    job.to_json()
}
