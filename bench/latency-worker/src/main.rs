//! `rustq-latency-worker`: `rustq-worker` plus a Rust handler for `LatencyJob`, whose only
//! argument is the Float epoch seconds at which it was pushed. Each run appends
//! `start of execution − push time` (seconds) to the Redis list `bench:latency`, exactly as
//! the Sidekiq side of the benchmark (`bench/ruby/sidekiq_app.rb`) does.

use std::time::{SystemTime, UNIX_EPOCH};

use rustq_core::Conn;
use rustq_core::RedisConfig;
use rustq_engine::{Failure, JobContext, Registry};
use tokio::sync::OnceCell;

/// The list the benchmark reads latencies from.
const LATENCY_KEY: &str = "bench:latency";

static CONN: OnceCell<Conn> = OnceCell::const_new();

async fn record(ctx: JobContext) -> Result<(), Failure> {
    // Taken first: the figure is push → start of execution, not → end.
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let pushed = ctx
        .args()
        .first()
        .and_then(|v| v.as_f64())
        .ok_or_else(|| Failure::kill("ArgumentError", "LatencyJob takes the push time"))?;
    let conn = CONN
        .get_or_try_init(|| async { RedisConfig::from_env().connection_manager().await })
        .await?;
    let mut conn = conn.clone();
    redis::cmd("RPUSH")
        .arg(LATENCY_KEY)
        .arg(started - pushed)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut registry = Registry::new();
    registry.handle("LatencyJob", record);
    rustq_engine::cli::main(registry)
}
