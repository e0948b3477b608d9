//! Limiters for code inside a job, in Sidekiq Enterprise's shape (the gem's `Rustq::Limiter`):
//! a concurrent limiter (at most N holders at once), a bucket (at most N per fixed interval:
//! second, minute, hour, day or any number of seconds) and a window (at most N in any sliding
//! interval). Each check is one Lua script naming its keys; the keys of one limiter share the
//! hash tag `{name}`.
//!
//! A concurrent limiter's slot held by a worker process belongs to that process: it is given up
//! when the block ends, or freed by the engine's reaper when the process is found dead — never
//! because time went by while it lives. A slot taken outside a worker (a console, a rake task:
//! no heartbeat to watch) lasts at most `lock_timeout`.

use crate::conn::Conn;
use crate::limits;

/// The hash of a concurrent limiter's slots: token → holder identity (empty outside a worker).
pub fn concurrent_running(name: &str) -> String {
    format!("rustq:limiter:{{{name}}}:running")
}

/// The deadlines of slots taken outside a worker: token → ms.
pub fn concurrent_expires(name: &str) -> String {
    format!("rustq:limiter:{{{name}}}:expires")
}

/// A bucket's count for the interval starting at `start_ms`.
pub fn bucket_count(name: &str, start_ms: u64) -> String {
    format!("rustq:limiter:{{{name}}}:bucket:{start_ms}")
}

/// A window's starts: a sorted set of tokens scored by ms.
pub fn window_starts(name: &str) -> String {
    format!("rustq:limiter:{{{name}}}:window")
}

const ACQUIRE: &str = r#"
-- KEYS[1] the slots, KEYS[2] the deadlines of slots held outside a worker, KEYS[3] the holder's
-- slot index (a worker's), KEYS[4] the set of slot holders.
-- ARGV: limit, token, holder identity ('' outside a worker), now ms, lock timeout ms, the slot's
-- entry in the holder's index.
local now = tonumber(ARGV[4])
for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], token)
  redis.call('ZREM', KEYS[2], token)
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if ARGV[3] == '' then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[2])
else
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[6])
  redis.call('SADD', KEYS[4], ARGV[3])
end
return 1
"#;

const RELEASE: &str = r#"
-- KEYS[1] the slots, KEYS[2] the deadlines, KEYS[3] the holder's slot index. ARGV: token.
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"#;

const BUCKET: &str = r#"
-- KEYS[1] this interval's count. ARGV: limit, ms left in the interval.
-- Returns 0 when taken, else the ms until the next interval.
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return tonumber(ARGV[2])
end
return 0
"#;

const WINDOW: &str = r#"
-- KEYS[1] the window's starts. ARGV: limit, period ms, now ms, token.
-- Returns 0 when taken, else the ms until the oldest start leaves the window.
local now, period = tonumber(ARGV[3]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + period - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], period + 1000)
return 0
"#;

/// Tries to take a slot of concurrent limiter `name` (at most `limit` at once) for `token`.
/// `holder` is the worker process's identity (its heartbeat key), or `None` outside a worker,
/// where the slot lasts at most `lock_timeout_ms`. True when taken.
pub async fn acquire_concurrent(
    conn: &mut Conn,
    name: &str,
    limit: u64,
    token: &str,
    holder: Option<&str>,
    lock_timeout_ms: u64,
    now_ms: u64,
) -> redis::RedisResult<bool> {
    let holder = holder.unwrap_or("");
    let running = concurrent_running(name);
    let entry = serde_json::json!({"running": running}).to_string();
    let taken: i64 = redis::Script::new(ACQUIRE)
        .key(&running)
        .key(concurrent_expires(name))
        .key(limits::held_slots(holder))
        .key(limits::SLOT_HOLDERS)
        .arg(limit)
        .arg(token)
        .arg(holder)
        .arg(now_ms)
        .arg(lock_timeout_ms)
        .arg(entry)
        .invoke_async(conn)
        .await?;
    Ok(taken == 1)
}

/// Gives back the slot `token` holds.
pub async fn release_concurrent(
    conn: &mut Conn,
    name: &str,
    token: &str,
    holder: Option<&str>,
) -> redis::RedisResult<()> {
    let _: i64 = redis::Script::new(RELEASE)
        .key(concurrent_running(name))
        .key(concurrent_expires(name))
        .key(limits::held_slots(holder.unwrap_or("")))
        .arg(token)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Counts one use of bucket `name` (at most `limit` per interval of `period_ms`, intervals
/// aligned to the epoch, as calendar seconds, minutes, hours and days are). `None` when taken,
/// else the ms until the next interval.
pub async fn bucket(
    conn: &mut Conn,
    name: &str,
    limit: u64,
    period_ms: u64,
    now_ms: u64,
) -> redis::RedisResult<Option<u64>> {
    let period_ms = period_ms.max(1);
    let start = now_ms - now_ms % period_ms;
    let left = start + period_ms - now_ms;
    let wait: u64 = redis::Script::new(BUCKET)
        .key(bucket_count(name, start))
        .arg(limit)
        .arg(left)
        .invoke_async(conn)
        .await?;
    Ok((wait > 0).then_some(wait))
}

/// Counts one use of sliding window `name` (at most `limit` in any `period_ms`). `None` when
/// taken, else the ms until one leaves the window.
pub async fn window(
    conn: &mut Conn,
    name: &str,
    limit: u64,
    period_ms: u64,
    now_ms: u64,
    token: &str,
) -> redis::RedisResult<Option<u64>> {
    let wait: u64 = redis::Script::new(WINDOW)
        .key(window_starts(name))
        .arg(limit)
        .arg(period_ms.max(1))
        .arg(now_ms)
        .arg(token)
        .invoke_async(conn)
        .await?;
    Ok((wait > 0).then_some(wait))
}
