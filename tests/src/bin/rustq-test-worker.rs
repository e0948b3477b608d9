//! A `rustq-worker` with Rust handlers made for tests: every job it runs writes an entry to
//! the Redis list `ledger` (jid, class, args, retry_count), so a test can compare what was
//! pushed with what ran — lost and duplicated jobs included.

use std::process::ExitCode;
use std::time::Duration;

use redis::aio::ConnectionManager;
use rustq_core::Job;
use rustq_engine::{
    Action, CheckFuture, CheckPoint, Deferral, Failure, JobContext, JobResult, Outcome, Registry,
    UnitOfWork, Verdict, Write,
};
use serde_json::json;
use tokio::sync::OnceCell;

static LEDGER: OnceCell<ConnectionManager> = OnceCell::const_new();

async fn ledger_conn() -> Result<&'static ConnectionManager, Failure> {
    LEDGER
        .get_or_try_init(|| async {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            redis::Client::open(url)?.get_connection_manager().await
        })
        .await
        .map_err(|e| Failure::retry("Redis::CannotConnectError", e.to_string()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn record(ctx: &JobContext) -> JobResult {
    let conn = ledger_conn().await?;
    let entry = json!({
        "jid": ctx.jid(),
        "class": ctx.class(),
        "args": ctx.args(),
        "retry_count": ctx.retry_count(),
        "queue": ctx.queue(),
    });
    redis::cmd("RPUSH")
        .arg("ledger")
        .arg(entry.to_string())
        .query_async::<()>(&mut conn.clone())
        .await?;
    Ok(())
}

/// A check point for the tests: `DeferJob`s never run, they are deferred into the list
/// `deferred`; every `CountedJob` that succeeds has its jid pushed to `outcomes` in the same
/// atomic step as its acknowledgement.
struct TestGate;

impl CheckPoint for TestGate {
    fn before<'a>(&'a self, job: &'a Job, _unit: &'a UnitOfWork) -> CheckFuture<'a> {
        let verdict = match job.class() {
            Some("DeferJob") => Verdict::Defer(Deferral::Into("deferred".into())),
            _ => Verdict::Run,
        };
        Box::pin(std::future::ready(verdict))
    }

    fn on_outcome(&self, outcome: &Outcome<'_>, writes: &mut Vec<Write>) {
        if outcome.job.class() == Some("CountedJob") && outcome.action == &Action::Acknowledge {
            writes.push(
                Write::new("RPUSH")
                    .key("outcomes")
                    .arg(outcome.job.jid().unwrap_or_default()),
            );
        }
    }
}

fn main() -> ExitCode {
    let mut registry = Registry::new();
    for class in ["LedgerJob", "RecordJob", "Billing::ChargeJob", "DeferJob"] {
        registry.handle(class, |ctx: JobContext| async move { record(&ctx).await });
    }
    registry.handle_args("SlowJob", |ctx: JobContext, (ms,): (u64,)| async move {
        let started = now_ms();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        // When it ran, for tests of what may overlap.
        let run = json!({"jid": ctx.jid(), "start": started, "end": now_ms()});
        redis::cmd("RPUSH")
            .arg("slow_runs")
            .arg(run.to_string())
            .query_async::<()>(&mut ledger_conn().await?.clone())
            .await?;
        record(&ctx).await
    });
    // Runs under a concurrency limit or a rate in tests/tests/limits.rs: when it ran. The second
    // class has its limit from its registration, not its payload.
    for class in ["LimitedJob", "RegisteredLimitJob"] {
        let registered = registry.handle_args(
            class,
            |ctx: JobContext, (key, ms): (String, u64)| async move {
                let started = now_ms();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let run = json!({"jid": ctx.jid(), "key": key, "start": started, "end": now_ms(), "host": "rust"});
                redis::cmd("RPUSH")
                    .arg("limited_runs")
                    .arg(run.to_string())
                    .query_async::<()>(&mut ledger_conn().await?.clone())
                    .await?;
                Ok(())
            },
        );
        if class == "RegisteredLimitJob" {
            registered.concurrency(2, |args| {
                format!("registered:{}", args[0].as_str().unwrap_or(""))
            });
        }
    }
    // Batches' callbacks to "Report" or "Report#method", run by a Rust handler: each recorded in
    // `callbacks`, as the job's arguments.
    registry.on_batch(
        "Report",
        |ctx: JobContext, call: rustq_engine::BatchCall| async move {
            let args = json!([call.event.as_str(), call.bid, call.target, call.options]);
            let entry = json!({"jid": ctx.jid(), "args": args, "method": call.method});
            redis::cmd("RPUSH")
                .arg("callbacks")
                .arg(entry.to_string())
                .query_async::<()>(&mut ledger_conn().await?.clone())
                .await?;
            Ok(())
        },
    );
    registry.handle("FailJob", |ctx: JobContext| async move {
        record(&ctx).await?;
        Err(Failure::retry("RuntimeError", "boom"))
    });
    registry.handle("FailOnceJob", |ctx: JobContext| async move {
        record(&ctx).await?;
        match ctx.retry_count() {
            None => Err(Failure::retry("RuntimeError", "first run fails")),
            Some(_) => Ok(()),
        }
    });
    registry.handle("PanicJob", |_ctx: JobContext| async move {
        panic!("kaboom");
    });
    registry.handle("AbortJob", |ctx: JobContext| async move {
        record(&ctx).await?;
        std::process::abort();
    });
    registry.handle("NeverEndsJob", |_ctx: JobContext| async move {
        std::future::pending::<()>().await;
        Ok(())
    });
    // `CountedJob` with an index waits until the key `allowance` is above it: a test lets the
    // worker get only so far ahead of it.
    registry.handle("CountedJob", |ctx: JobContext| async move {
        if let Some(index) = ctx.args().first().and_then(|a| a.as_u64()) {
            let mut conn = ledger_conn().await?.clone();
            loop {
                let allowance: Option<u64> = redis::cmd("GET")
                    .arg("allowance")
                    .query_async(&mut conn)
                    .await?;
                if allowance.is_some_and(|a| index < a) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        record(&ctx).await
    });
    rustq_engine::cli::main_with(registry, |worker| {
        worker.add_check_point(TestGate);
    })
}
