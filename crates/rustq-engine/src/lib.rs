//! rustq-engine: a Sidekiq-compatible job server.
//!
//! Follow a job through the files in order: [`fetch`] takes it (reliably: into an in-progress
//! list) as a [`work::UnitOfWork`]; the [`manager`] runs it with the [`processor`], which waits
//! for its start, passes it through the [`check_point`]s (its rate: [`throttle`]; its slot:
//! [`concurrency`]; its lock: [`unique`]; its batch: [`batch`]) and runs its [`handler`] (a Rust
//! handler, a program, or the Ruby host); [`failure`] says why it failed and [`job_retry`] what
//! that means; [`ack`] writes its outcome, through the one atomic step of [`outcome`] (a retry,
//! the [`dead_set`], a requeue, a deferral, a check point's writes). Beside the jobs run the
//! [`service`]s: [`scheduled`] brings due retries and scheduled jobs back, [`heartbeat`] keeps
//! the process visible with its [`stats`], [`recovery`] rescues the jobs of processes that died,
//! [`orphans`] those a lost fetch reply left in this process's lists (counted by [`holdings`]),
//! and [`cron`] enqueues recurring jobs on their ticks.
//! The [`launcher`] runs the whole life of a process under its [`control`] (telling [`systemd`]
//! when it is ready and when it stops, as `sidekiq` does); [`options`] and [`cli`] read its
//! settings, [`keys`] names rustq's own Redis keys.
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

#![warn(missing_docs)]

pub mod work;

pub mod ack;
pub mod batch;
pub mod batch_callback;
pub mod check_point;
pub mod concurrency;
pub mod dead_set;
pub mod failure;
pub mod fetch;
pub mod handler;
pub mod job_retry;
pub mod manager;
pub mod observer;
pub mod outcome;
pub mod processor;
pub mod throttle;
pub mod unique;

pub mod cron;
pub mod heartbeat;
pub mod holdings;
pub mod orphans;
pub mod recovery;
pub mod scheduled;
pub mod service;
pub mod stats;

pub mod cli;
pub mod control;
pub mod cron_command;
pub mod erb;
pub mod fleet;
pub mod http;
pub mod keys;
pub mod launcher;
pub mod metrics;
pub mod options;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod systemd;
pub mod trace;

pub use batch_callback::BatchCall;
pub use check_point::{CheckFuture, CheckPoint, Outcome, Verdict};
pub use control::{Control, Signal};
pub use failure::{Backoff, Failure, FailureKind, JobResult};
pub use handler::{Handler, HandlerOptions, JobContext, Registry, Started};
pub use launcher::{EngineError, Worker};
pub use observer::{Finished, Observer};
pub use options::{HandlerConfig, HandlerSpec, QueueWeight, WorkerOptions};
pub use service::Service;
pub use work::{Action, Deferral, UnitOfWork, Write};
