//! A worker with Rust handlers, run with the full `rustq-worker` command line:
//!
//! ```sh
//! cargo run --release -p rustq-engine --example billing_worker -- -c 20 -q critical,2 -q default
//! ```
//!
//! Ruby pushes the jobs as usual (`Billing::ChargeJob.perform_async(42, 1999)` with `Rustq::Job`
//! or `Sidekiq::Job`); these handlers run them.

use std::time::Duration;

use redis::AsyncCommands;
use rustq_core::Job;
use rustq_core::Retry;
use rustq_engine::{
    Action, Backoff, CheckFuture, CheckPoint, Deferral, Failure, JobContext, Outcome, Registry,
    UnitOfWork, Verdict, Write,
};
use serde::Deserialize;
use tokio::sync::OnceCell;

static REDIS: OnceCell<rustq_core::Conn> = OnceCell::const_new();

async fn redis() -> Result<rustq_core::Conn, Failure> {
    let conn = REDIS
        .get_or_try_init(|| async {
            rustq_core::RedisConfig::from_env()
                .connection_manager()
                .await
        })
        .await
        .map_err(|e| Failure::retry("Redis::CannotConnectError", e.to_string()))?;
    Ok(conn.clone())
}

/// Arguments can be any serde type that reads a JSON array: a tuple, or a struct like this one
/// (`[account_id, cents]` or `[{"account_id": 1, "cents": 2}]` would need a different shape).
#[derive(Deserialize)]
struct Charge(u64, i64);

/// The books, kept by a check point: monthly reports wait in a list until month end (deferred,
/// not failed), and every charge that succeeds is settled in `billing:settled` in the same atomic
/// step as its acknowledgement, so a crash can never settle a charge twice or lose one.
struct Books;

impl CheckPoint for Books {
    fn before<'a>(&'a self, job: &'a Job, _unit: &'a UnitOfWork) -> CheckFuture<'a> {
        let verdict = match job.class() {
            Some("Billing::MonthlyReportJob") => {
                Verdict::Defer(Deferral::Into("billing:reports:held".into()))
            }
            _ => Verdict::Run,
        };
        Box::pin(std::future::ready(verdict))
    }

    fn on_outcome(&self, outcome: &Outcome<'_>, writes: &mut Vec<Write>) {
        if outcome.job.class() != Some("Billing::ChargeJob")
            || outcome.action != &Action::Acknowledge
        {
            return;
        }
        if let Some([account, cents]) = outcome.job.args().map(Vec::as_slice) {
            writes.push(
                Write::new("HINCRBY")
                    .key("billing:settled")
                    .arg(account)
                    .arg(cents),
            );
        }
    }
}

fn main() -> std::process::ExitCode {
    let mut registry = Registry::new();

    registry
        .handle_args(
            "Billing::ChargeJob",
            |ctx: JobContext, Charge(account, cents)| async move {
                if cents <= 0 {
                    // Bad input will not get better: straight to the dead set.
                    return Err(Failure::kill(
                        "ArgumentError",
                        format!("cannot charge {cents} cents"),
                    ));
                }
                let mut conn = redis().await?;
                let total: i64 = conn.hincr("billing:charged", account, cents).await?;
                tracing::info!(jid = ctx.jid(), account, cents, total, "charged");
                Ok(())
            },
        )
        .retry(Retry::Times(5))
        .timeout(Duration::from_secs(30));

    // A flaky job with its own backoff (Sidekiq's `sidekiq_retry_in`): a few seconds, then give up.
    registry
        .handle("Billing::FlakyGatewayJob", |ctx: JobContext| async move {
            Err(Failure::retry(
                "Billing::GatewayDown",
                format!(
                    "gateway unreachable (attempt {})",
                    ctx.retry_count().map_or(1, |c| c + 2)
                ),
            ))
        })
        .retry_in(|count, _failure| {
            if count < 2 {
                Backoff::In(Duration::from_secs(5))
            } else {
                Backoff::Kill
            }
        });

    rustq_engine::cli::main_with(registry, |worker| {
        worker.add_check_point(Books);
    })
}
