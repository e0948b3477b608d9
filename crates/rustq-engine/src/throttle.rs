//! Rate limits: a job whose payload has `"throttle": {"key": K, "limit": N, "period": S}` starts
//! only as the rate allows (at most N per S seconds, in bursts of at most N), by the generic cell
//! rate algorithm. One over the rate is not failed and not retried: it gets the next free moment
//! (a reservation) and waits in the `schedule` set until then, where the poller brings it back;
//! when it comes back it runs on its reservation without taking another.
//!
//! A reservation is only a moment in the rate, never a lock: one whose job was deleted meanwhile
//! lowers the rate once and expires with the key.

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use rustq_core::limits::{self, Limits};
use rustq_core::{wire, Conn, Job};

use crate::check_point::{CheckFuture, CheckPoint, Verdict};
use crate::concurrency::LimitCounters;
use crate::work::{Deferral, UnitOfWork};

const ADMIT: &str = r#"
-- KEYS[1] the key's state (a hash: tat, the theoretical arrival time in ms, and tolerance),
-- KEYS[2] its reservations (jid -> ms), KEYS[3] the set of throttle keys.
-- ARGV: now (ms), emission interval (ms), burst tolerance (ms), jid, the key.
-- Returns 0 (run now) or the millisecond it may start at (reserved for it).
local now, interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reserved = redis.call('HGET', KEYS[2], ARGV[4])
if reserved then
  reserved = tonumber(reserved)
  -- Back on its reservation (the poller may be a little early): run.
  if reserved <= now + 1000 then
    redis.call('HDEL', KEYS[2], ARGV[4])
    return 0
  end
  return reserved
end
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat < now then tat = now end
local start = tat - tolerance
local keep = math.ceil(tat + interval - now + tolerance + 1000)
redis.call('HSET', KEYS[1], 'tat', tostring(tat + interval), 'tolerance', tostring(tolerance))
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('SADD', KEYS[3], ARGV[5])
if start <= now then return 0 end
redis.call('HSET', KEYS[2], ARGV[4], tostring(start))
redis.call('PEXPIRE', KEYS[2], keep + 60000)
return start
"#;

static ADMIT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ADMIT));

/// The check point that holds jobs to their rate.
pub struct ThrottleLimit {
    /// The connection, once the process has one.
    pub conn: Arc<OnceLock<Conn>>,
    /// Deferral counts.
    pub counters: LimitCounters,
}

impl CheckPoint for ThrottleLimit {
    fn before<'a>(&'a self, job: &'a Job, _unit: &'a UnitOfWork) -> CheckFuture<'a> {
        let Some(throttle) = Limits::of(job).throttle else {
            return Box::pin(std::future::ready(Verdict::Run));
        };
        Box::pin(async move {
            let (Some(conn), Some(jid)) = (self.conn.get(), job.jid()) else {
                return Verdict::Run;
            };
            let period_ms = throttle.period * 1000.0;
            let interval = period_ms / throttle.limit as f64;
            let tolerance = period_ms - interval;
            let mut backoff = Duration::from_millis(50);
            loop {
                let now_ms = (wire::now_secs() * 1000.0).floor();
                let answer: redis::RedisResult<f64> = ADMIT_SCRIPT
                    .key(limits::throttle_state(&throttle.key))
                    .key(limits::throttle_reserved(&throttle.key))
                    .key(limits::THROTTLE_KEYS)
                    .arg(now_ms)
                    .arg(interval)
                    .arg(tolerance)
                    .arg(jid)
                    .arg(&throttle.key)
                    .invoke_async(&mut conn.clone())
                    .await;
                match answer {
                    Ok(at) if at <= 0.0 => return Verdict::Run,
                    Ok(at) => {
                        self.counters
                            .deferred
                            .with_label_values(&["throttle", job.display_class()])
                            .inc();
                        tracing::debug!(jid, key = %throttle.key, wait_ms = at - now_ms, "over its rate: waits");
                        return Verdict::Defer(Deferral::Until(at / 1000.0));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, jid, "cannot check a rate limit; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        })
    }
}
