//! `Rustq::Native.batch_*`: the Redis steps of `Rustq::Batch` (lib/rustq/batch.rb), each through
//! `rustq_core::batch`, run with the GVL released. Definitions and jobs cross as JSON text.

use magnus::{Error, RHash, Ruby};
use redis::AsyncCommands;
use rustq_core::batch::{self, BatchError, BatchJob, Definition, Stage};
use rustq_engine::batch::Ran;
use serde_json::Value;

use crate::{client, errors};

fn batch_error(ruby: &Ruby, error: BatchError) -> Error {
    match error {
        BatchError::Immutable(bid) => errors::named(
            ruby,
            "Immutable",
            format!("batch {bid} is complete: it takes no more jobs"),
        ),
        BatchError::NotFound(bid) => errors::named(ruby, "NoSuchBatch", format!("no batch {bid}")),
        BatchError::InvalidJob(e) => errors::invalid_job(ruby, &e),
        BatchError::Redis(e) => errors::named(ruby, "CommandError", e.to_string()),
    }
}

fn run<T, F, Fut>(ruby: &Ruby, work: F) -> Result<T, Error>
where
    F: FnOnce(rustq_core::Conn, rustq_core::WireVersion) -> Fut,
    Fut: std::future::Future<Output = Result<T, BatchError>>,
{
    let outcome = client::session(ruby)?.run(ruby, |client| async move {
        Ok(work(client.connection(), client.options().wire).await)
    })?;
    outcome.map_err(|e| batch_error(ruby, e))
}

/// A job kept for a batch until its `jobs` block ends: jid, queue, when (nil: now), payload.
type Kept = (String, String, Option<f64>, String);

/// `batch_prepare(item, bulk, bid) → [[jid, queue, at, payload_json], …]`: the jobs a push inside
/// a batch's `jobs` block would write, with `"bid"`, kept in Ruby until the block ends (what
/// `prepare` does for a push, without a JSON round trip through Ruby per job).
pub fn prepare(ruby: &Ruby, item: RHash, bulk: bool, bid: String) -> Result<Vec<Kept>, Error> {
    let session = client::session(ruby)?;
    let prepared = crate::push::prepared(ruby, &session, item, bulk)?;
    let options = &session.settings.options;
    let now = options.clock.now();
    Ok(prepared
        .jobs()
        .into_iter()
        .map(|entry| {
            let mut job = entry.job;
            job.set(batch::BID, bid.as_str());
            if entry.at.is_none() {
                job.set_time("enqueued_at", now, options.wire);
            }
            (
                job.jid().unwrap_or_default().to_string(),
                job.queue().unwrap_or("default").to_string(),
                entry.at,
                job.to_json(),
            )
        })
        .collect())
}

/// `batch_add(definition_json, stage, jobs)`: jobs of the batch (as `batch_prepare` gave them)
/// at `stage` ("create", "open", "add" or "close"; see `rustq_core::batch::Stage`), in one step;
/// Rustq::Batch::Immutable when it is complete.
pub fn add(ruby: &Ruby, definition: String, stage: String, jobs: Vec<Kept>) -> Result<(), Error> {
    let stage = match stage.as_str() {
        "create" => Stage::Create,
        "open" => Stage::Open,
        "add" => Stage::Add,
        "close" => Stage::Close,
        other => {
            return Err(errors::internal(
                ruby,
                &format!("batch_add: stage {other:?}"),
            ))
        }
    };
    let bad = |e: serde_json::Error| errors::internal(ruby, &format!("batch_add: {e}"));
    let d: Value = serde_json::from_str(&definition).map_err(bad)?;
    let text = |key: &str| d.get(key).and_then(Value::as_str).map(str::to_string);
    let definition = Definition {
        bid: text("bid").unwrap_or_default(),
        description: text("description"),
        callback_queue: text("callback_queue"),
        callbacks: d.get("callbacks").cloned().unwrap_or(Value::Null),
        parent_bid: text("parent_bid"),
    };
    let jobs: Vec<BatchJob> = jobs
        .into_iter()
        .map(|(jid, queue, at, payload)| BatchJob {
            jid,
            queue,
            at,
            payload,
        })
        .collect();
    let now = rustq_core::wire::now_secs();
    run(ruby, |mut conn, wire| async move {
        batch::add_jobs(&mut conn, &definition, stage, &jobs, now, wire).await
    })
}

/// `batch_status(bid) → JSON` (`rustq_core::batch::Status`).
pub fn status(ruby: &Ruby, bid: String) -> Result<String, Error> {
    let status = run(ruby, |mut conn, _| async move {
        batch::status(&mut conn, &bid).await
    })?;
    Ok(serde_json::to_string(&status).expect("a status serializes"))
}

/// `batch_members(bid, "jids" | "failed" | "dead") → [jid, …]`
pub fn members(ruby: &Ruby, bid: String, which: String) -> Result<Vec<String>, Error> {
    let key = match which.as_str() {
        "failed" => batch::failed_key(&bid),
        "dead" => batch::dead_key(&bid),
        _ => batch::jids_key(&bid),
    };
    run(ruby, |mut conn, _| async move {
        batch::members(&mut conn, &key).await
    })
}

/// `batch_all → [bid, …]`, newest first.
pub fn all(ruby: &Ruby) -> Result<Vec<String>, Error> {
    run(ruby, |mut conn, _| async move {
        Ok(conn.zrevrange(batch::BATCHES, 0, -1).await?)
    })
}

/// `batch_invalidate(bid)`: jobs of the batch that have not started are to be skipped.
pub fn invalidate(ruby: &Ruby, bid: String) -> Result<(), Error> {
    run(ruby, |mut conn, _| async move {
        Ok(conn
            .hset(batch::batch_key(&bid), "invalidated", "1")
            .await?)
    })
}

/// `batch_invalidated?(bid)`
pub fn invalidated(ruby: &Ruby, bid: String) -> Result<bool, Error> {
    run(ruby, |mut conn, _| async move {
        Ok(conn.hexists(batch::batch_key(&bid), "invalidated").await?)
    })
}

/// `batch_count(payload_json, "succeeded" | "failed" | "died") → true | false`: counts a batch
/// job a Sidekiq process ran (`Rustq::Batch::SidekiqMiddleware`), as the engine counts its own
/// (`rustq_engine::batch::count_ran`); false when the job has no batch.
pub fn count(ruby: &Ruby, payload: String, ran: String) -> Result<bool, Error> {
    let ran = match ran.as_str() {
        "succeeded" => Ran::Succeeded,
        "failed" => Ran::Failed,
        "died" => Ran::Died,
        other => return Err(errors::internal(ruby, &format!("batch_count: {other:?}"))),
    };
    let job = rustq_engine::work::parse(payload.as_bytes())
        .map_err(|e| errors::internal(ruby, &format!("batch_count: {e}")))?;
    run(ruby, |conn, wire| async move {
        Ok(rustq_engine::batch::count_ran(&conn, wire, &job, ran).await?)
    })
}
