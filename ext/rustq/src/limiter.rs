//! `Rustq::Native.limiter_*`: the Redis steps of `Rustq::Limiter` (lib/rustq/limiter.rb), each one
//! script of `rustq_core::limiter`, run with the GVL released. The waiting (up to `wait_timeout`)
//! is Ruby's.

use magnus::{Error, Ruby};
use rustq_core::{limiter, wire};

use crate::client;

fn now_ms() -> u64 {
    (wire::now_secs() * 1000.0) as u64
}

/// `limiter_acquire(name, limit, token, holder, lock_timeout_ms) → true | false`
pub fn acquire(
    ruby: &Ruby,
    name: String,
    limit: u64,
    token: String,
    holder: Option<String>,
    lock_timeout_ms: u64,
) -> Result<bool, Error> {
    client::session(ruby)?.run(ruby, |client| async move {
        let mut conn = client.connection();
        limiter::acquire_concurrent(
            &mut conn,
            &name,
            limit,
            &token,
            holder.as_deref(),
            lock_timeout_ms,
            now_ms(),
        )
        .await
        .map_err(client.redis_error("limiter"))
    })
}

/// `limiter_release(name, token, holder)`
pub fn release(
    ruby: &Ruby,
    name: String,
    token: String,
    holder: Option<String>,
) -> Result<(), Error> {
    client::session(ruby)?.run(ruby, |client| async move {
        let mut conn = client.connection();
        limiter::release_concurrent(&mut conn, &name, &token, holder.as_deref())
            .await
            .map_err(client.redis_error("limiter"))
    })
}

/// `limiter_bucket(name, limit, period_ms) → nil | ms to wait`
pub fn bucket(ruby: &Ruby, name: String, limit: u64, period_ms: u64) -> Result<Option<u64>, Error> {
    client::session(ruby)?.run(ruby, |client| async move {
        let mut conn = client.connection();
        limiter::bucket(&mut conn, &name, limit, period_ms, now_ms())
            .await
            .map_err(client.redis_error("limiter"))
    })
}

/// `limiter_window(name, limit, period_ms, token) → nil | ms to wait`
pub fn window(
    ruby: &Ruby,
    name: String,
    limit: u64,
    period_ms: u64,
    token: String,
) -> Result<Option<u64>, Error> {
    client::session(ruby)?.run(ruby, |client| async move {
        let mut conn = client.connection();
        limiter::window(&mut conn, &name, limit, period_ms, now_ms(), &token)
            .await
            .map_err(client.redis_error("limiter"))
    })
}

/// `limits_list → JSON`: every lock and limit in use (`rustq_core::limits::list`).
pub fn list(ruby: &Ruby) -> Result<String, Error> {
    client::session(ruby)?.run(ruby, |client| async move {
        let mut conn = client.connection();
        let listing = rustq_core::limits::list(&mut conn)
            .await
            .map_err(client.redis_error("limits"))?;
        Ok(serde_json::to_string(&listing).expect("a listing serializes"))
    })
}
