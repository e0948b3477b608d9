//! The fleet's state for `/metrics`: queue sizes and latencies, the schedule, retry and dead set
//! sizes, live processes and their busy jobs — what Sidekiq's API shows on its dashboard.
//!
//! Every pod is scraped, but the fleet is one: only one process reports it, so a sum over pods
//! never counts a queue twice. That process is chosen afresh at each scrape, with no lock and no
//! lease: the live rustq process serving metrics (its `rustq:processes` entry says `"metrics":
//! true` and its heartbeat key exists) whose identity sorts first. When it dies, its heartbeat
//! expires and the next one reports; for a moment around a process's start or end two may
//! both report, which `max without(instance)` in a query absorbs.

use std::collections::HashMap;

use redis::AsyncCommands;
use rustq_core::wire::{self, keys};
use rustq_core::{Conn, Job};

use crate::keys as rkeys;

/// One queue's state.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueState {
    /// Its name (without `queue:`).
    pub name: String,
    /// Jobs waiting.
    pub size: u64,
    /// Seconds since the oldest waiting job was pushed (0 when empty).
    pub latency_secs: f64,
}

/// The fleet's state at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fleet {
    /// Every queue in the `queues` set.
    pub queues: Vec<QueueState>,
    /// Size of the `schedule` set.
    pub scheduled: u64,
    /// Size of the `retry` set.
    pub retries: u64,
    /// Size of the `dead` set.
    pub dead: u64,
    /// Live processes in the `processes` set, rustq's and Sidekiq's.
    pub processes: u64,
    /// Their busy jobs, summed.
    pub busy: u64,
}

/// True when `identity` is the process that reports the fleet now.
pub async fn reports(conn: &Conn, identity: &str) -> redis::RedisResult<bool> {
    let mut conn = conn.clone();
    let entries: HashMap<String, String> = conn.hgetall(rkeys::PROCESSES).await?;
    let mut serving: Vec<&String> = entries
        .iter()
        .filter(|(_, entry)| {
            serde_json::from_str::<serde_json::Value>(entry)
                .is_ok_and(|e| e.get("metrics") == Some(&serde_json::Value::Bool(true)))
        })
        .map(|(identity, _)| identity)
        .collect();
    serving.sort();
    if serving.is_empty() {
        return Ok(false);
    }
    let mut pipe = redis::pipe();
    for candidate in &serving {
        pipe.exists(candidate.as_str());
    }
    let alive: Vec<bool> = pipe.query_async(&mut conn).await?;
    Ok(serving
        .iter()
        .zip(alive)
        .find(|(_, alive)| *alive)
        .is_some_and(|(first, _)| first.as_str() == identity))
}

/// Reads the fleet's state: two round trips.
pub async fn read(conn: &Conn) -> redis::RedisResult<Fleet> {
    let mut conn = conn.clone();
    let (queues, processes, scheduled, retries, dead): (Vec<String>, Vec<String>, u64, u64, u64) =
        redis::pipe()
            .smembers(keys::QUEUES)
            .smembers(keys::PROCESSES)
            .zcard(keys::SCHEDULE)
            .zcard(keys::RETRY)
            .zcard(keys::DEAD)
            .query_async(&mut conn)
            .await?;
    let mut queues = queues;
    queues.sort();
    let mut pipe = redis::pipe();
    for queue in &queues {
        let key = keys::queue(queue);
        pipe.llen(&key).lindex(&key, -1);
    }
    for process in &processes {
        pipe.exists(process).hget(process, "busy");
    }
    let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
    let now = wire::now_secs();
    let mut replies = replies.into_iter();
    let mut fleet = Fleet {
        scheduled,
        retries,
        dead,
        ..Fleet::default()
    };
    for name in queues {
        let size: u64 =
            redis::from_redis_value(replies.next().unwrap_or(redis::Value::Nil)).unwrap_or(0);
        let oldest: Option<String> =
            redis::from_redis_value(replies.next().unwrap_or(redis::Value::Nil)).unwrap_or(None);
        let latency_secs = oldest
            .and_then(|raw| Job::from_json(&raw).ok())
            .and_then(|job| job.enqueued_at_secs())
            .map_or(0.0, |at| (now - at).max(0.0));
        fleet.queues.push(QueueState {
            name,
            size,
            latency_secs,
        });
    }
    for _ in &processes {
        let alive: bool =
            redis::from_redis_value(replies.next().unwrap_or(redis::Value::Nil)).unwrap_or(false);
        let busy: Option<u64> =
            redis::from_redis_value(replies.next().unwrap_or(redis::Value::Nil)).unwrap_or(None);
        if alive {
            fleet.processes += 1;
            fleet.busy += busy.unwrap_or(0);
        }
    }
    Ok(fleet)
}
