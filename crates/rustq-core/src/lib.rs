//! rustq-core: Sidekiq's Redis wire format in Rust.
//!
//! - [`Job`]: the payload, every field kept in order.
//! - [`Client`]: `push`/`push_bulk`, exactly as `Sidekiq::Client` writes.
//! - [`api`]: read queues, scheduled/retry/dead sets and stats, like `Sidekiq::Stats` & co.
//! - [`batch`]: batches' keys, adding jobs in one step, their status.
//! - [`limiter`]: concurrent, bucket and window limiters for code inside a job.
//! - [`limits`]: the payload's unique, concurrency and throttle fields and their keys.
//! - [`wire`]: key names, timestamps, backoff, backtrace encoding.
//! - [`spin`]: when a client spins for a reply rather than sleeping.
//!
//! Nothing here knows about Ruby, threads of Ruby, or command lines.

#![warn(missing_docs)]

pub mod api;
pub mod batch;
pub mod client;
pub mod config;
pub mod conn;
pub mod error;
pub mod job;
pub mod limiter;
pub mod limits;
pub mod sentinel;
pub mod spin;
pub mod wire;

pub use client::{BulkArgs, Client, ClientOptions, Clock, PreparedJob, PreparedPush};
pub use config::RedisConfig;
pub use conn::Conn;
pub use error::{Error, JobError, PayloadError, Result};
pub use job::{generate_jid, Fields, Jids, Job, Retry};
pub use spin::SpinBackoff;
pub use wire::WireVersion;
