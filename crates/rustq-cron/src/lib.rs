//! rustq-cron: recurring jobs in sidekiq-cron 2.x's Redis layout.
//!
//! [`expr`] reads cron lines as sidekiq-cron does; a [`Schedule`] is one recurring job and its
//! hash; [`store`] keeps schedules in Redis and claims ticks ([`Schedules::claim`]: the claim
//! and the push in one script); [`file`] reads schedule files. The engine's scheduler (in
//! `rustq-engine`) decides which ticks are due.
//!
//! ```no_run
//! # async fn demo(conn: rustq_core::Conn) -> Result<(), rustq_cron::StoreError> {
//! use rustq_cron::{Schedule, Schedules, Zone};
//! let schedules = Schedules::new(conn, rustq_core::WireVersion::default(), Zone::from_env());
//! let mut nightly = Schedule::new("nightly report", "0 3 * * * Europe/Berlin", "ReportJob");
//! nightly.queue = "low".into();
//! schedules.save(&nightly).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod expr;
pub mod file;
pub mod nat;
pub mod schedule;
pub mod store;

pub use expr::{CronError, CronLine, Zone};
pub use schedule::{Missed, Overlap, Schedule, ScheduleError, Source, Status};
pub use store::{Claim, Schedules, StoreError};
