//! The engine's fallback handler in the Ruby host: every job class is resolved and run by Ruby.
//! It only queues the job for a Ruby thread and waits for the answer; the engine decides the
//! rest alike for every handler (a job not taken when the process quiets goes back, the time
//! limit counts from when a thread takes it).

use rustq_engine::handler::BoxFuture;
use rustq_engine::job_retry::{self, RetryPolicy};
use rustq_engine::{failure::class, Failure, Handler, JobContext, JobResult};
use tokio::sync::oneshot;

use crate::job_queue::{ActiveJobParts, Dispatch, QueueSender};
use crate::to_ruby;

/// The fallback handler: every job class is resolved and run by Ruby.
pub struct RubyHandler {
    /// Where jobs go to the Ruby threads.
    pub jobs: QueueSender,
    /// Retry settings, to tell Ruby what a failure will lead to.
    pub policy: RetryPolicy,
    /// `Rustq::Job::ACTIVE_JOB_WRAPPERS`: payloads of these classes take the ActiveJob path.
    pub active_job_wrappers: Vec<String>,
}

impl Handler for RubyHandler {
    fn signals_start(&self) -> bool {
        true
    }

    fn perform(&self, ctx: JobContext) -> BoxFuture<JobResult> {
        let (reply, answer) = oneshot::channel();
        let tape = to_ruby::Tape::of(ctx.job().fields());
        self.jobs.0.push(Dispatch {
            active_job: ActiveJobParts::of(ctx.job(), &tape, &self.active_job_wrappers),
            tape,
            json: ctx.shared_payload_json(),
            queue: ctx.queue().to_string(),
            outlook: job_retry::outlook(ctx.job(), None, self.policy, rustq_core::wire::now_secs()),
            started: ctx.start_signal(),
            reply,
            trace: rustq_engine::trace::carrier(ctx.job()),
        });
        // Dropping this future (time limit, the job taken back) drops `answer`, which tells the
        // Ruby side (`stop_abandoned`, `Dispatch::take`) the engine no longer waits for the job.
        Box::pin(async move {
            // A reply dropped unanswered means the Ruby thread died with the job (or, before it
            // was taken, that the Ruby threads are gone).
            answer.await.unwrap_or_else(|_| {
                Err(Failure::retry(
                    class::ABANDONED,
                    "the Ruby thread running this job ended without reporting back",
                ))
            })
        })
    }
}
