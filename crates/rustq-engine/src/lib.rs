//! rustq-engine: a Sidekiq-compatible job server.
//!
//! Follow a job through the files in order: [`fetch`] takes it (reliably: into an in-progress
//! list), [`processor`] runs it with its [`handler`], [`job_retry`] decides what a failure means,
//! [`ack`] writes the outcome, [`scheduled`] brings due retries and scheduled jobs back,
//! [`heartbeat`] keeps the process visible with its [`stats`], [`recovery`] rescues the jobs of
//! processes that died, [`orphans`] those a lost fetch reply left in this process's lists, and [`launcher`] runs the whole life of a process (telling [`systemd`]
//! when it is ready and when it stops, as `sidekiq` does).
//!
//! ```no_run
//! use rustq_engine::{Failure, JobContext, Registry, Worker, WorkerOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut registry = Registry::new();
//! registry.handle_args("Billing::ChargeJob", |ctx: JobContext, (account, cents): (u64, i64)| async move {
//!     println!("charging {account}: {cents} (jid {}, retry {:?})", ctx.jid(), ctx.retry_count());
//!     Ok::<(), Failure>(())
//! });
//! let worker = Worker::new(WorkerOptions::default(), registry);
//! worker.control().listen_for_signals()?;
//! worker.run().await?;
//! # Ok(()) }
//! ```

pub mod ack;
pub mod cli;
pub mod erb;
pub mod fetch;
pub mod handler;
pub mod heartbeat;
pub mod job_retry;
pub mod keys;
pub mod launcher;
pub mod options;
pub mod orphans;
pub mod processor;
pub mod recovery;
pub mod scheduled;
pub mod stats;
pub mod systemd;

pub use handler::{
    Backoff, Failure, FailureKind, Handler, HandlerOptions, JobContext, JobResult, Registry,
    Started,
};
pub use launcher::{Control, EngineError, Worker};
pub use options::{HandlerConfig, HandlerSpec, QueueWeight, WorkerOptions};
