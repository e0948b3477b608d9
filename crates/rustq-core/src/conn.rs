//! The connection rustq's commands go through: a self-reconnecting connection to one Redis, or
//! to whichever server the Sentinels name master, followed across failovers.
//!
//! Behind Sentinel, a command that finds the master gone (the connection drops or is refused, a
//! reply times out) or demoted (`READONLY`: it answers as a replica now) fails as it would
//! against one Redis — callers retry as they always do — and the next command goes to the
//! master the Sentinels name then. Only one lookup runs at a time, at most one per
//! [`LOOKUP_EVERY`], each bounded in time; commands that failed meanwhile return their error at
//! once rather than queue for lookups of their own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::SentinelClient;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerError, ServerErrorKind,
    Value,
};

/// At most one lookup of the master per this long: while the Sentinels still name a master
/// that is gone (the seconds before they agree), failing commands do not each ask again.
const LOOKUP_EVERY: Duration = Duration::from_millis(500);

/// A cheap-to-clone connection; see the module docs.
#[derive(Clone)]
pub struct Conn(Inner);

#[derive(Clone)]
enum Inner {
    Direct(ConnectionManager),
    Sentinel(Arc<Follow>),
}

/// The master as last named by the Sentinels, and how to ask them again.
struct Follow {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The current master's connection and how many masters came before it.
    current: Mutex<(u64, ConnectionManager)>,
    /// When the last lookup began.
    looked: Mutex<Option<Instant>>,
    config: ConnectionManagerConfig,
    lookup_timeout: Duration,
    db: i64,
    master: String,
}

impl Conn {
    /// A connection to one Redis.
    pub fn direct(manager: ConnectionManager) -> Conn {
        Conn(Inner::Direct(manager))
    }

    /// A connection to the master `sentinel` names (`master` is its name, for logs).
    /// A lookup (asking the Sentinels, then connecting) that takes over `lookup_timeout` fails.
    pub async fn sentinel(
        mut sentinel: SentinelClient,
        config: ConnectionManagerConfig,
        lookup_timeout: Duration,
        db: i64,
        master: String,
    ) -> RedisResult<Conn> {
        let manager = master_connection(&mut sentinel, &config, lookup_timeout).await?;
        Ok(Conn(Inner::Sentinel(Arc::new(Follow {
            sentinel: tokio::sync::Mutex::new(sentinel),
            current: Mutex::new((0, manager)),
            looked: Mutex::new(Some(Instant::now())),
            config,
            lookup_timeout,
            db,
            master,
        }))))
    }
}

/// `work`, failed with the same error as any lookup of the master that takes over `timeout`.
async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(RedisError::from((
                ErrorKind::Io,
                "no Sentinel named a reachable master in time",
            )))
        })
}

/// The client of the master the Sentinels name now, asked within `timeout`.
pub(crate) async fn master_client(
    sentinel: &mut SentinelClient,
    timeout: Duration,
) -> RedisResult<redis::Client> {
    within(timeout, sentinel.async_get_client()).await
}

/// A connection to that master, asked for and opened within `timeout`.
async fn master_connection(
    sentinel: &mut SentinelClient,
    config: &ConnectionManagerConfig,
    timeout: Duration,
) -> RedisResult<ConnectionManager> {
    within(timeout, async {
        sentinel
            .async_get_client()
            .await?
            .get_connection_manager_with_config(config.clone())
            .await
    })
    .await
}

/// Whether `error` says the master is gone or no longer master.
fn lost_master(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(error.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly))
        || {
            // A transaction's aborted commands are listed in its error's text.
            let text = error.to_string();
            text.contains("READONLY") || text.contains("ReadOnly")
        }
}

/// A server's error reply saying it is a replica now. (Error replies arrive as values; they
/// become errors only when a caller converts the reply.)
fn demoted(reply: &ServerError) -> bool {
    reply.kind() == Some(ServerErrorKind::ReadOnly)
        || reply.code() == "READONLY"
        || reply.details().is_some_and(|d| d.contains("READONLY"))
}

/// Whether a reply says the master is gone or no longer master.
fn reply_lost_master(value: &Value) -> bool {
    match value {
        Value::ServerError(reply) => demoted(reply),
        Value::Array(items) => items.iter().any(reply_lost_master),
        _ => false,
    }
}

impl Follow {
    fn current(&self) -> (u64, ConnectionManager) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (current.0, current.1.clone())
    }

    /// Asks the Sentinels for the master, unless a lookup is under way, or one began since
    /// `seen` failed or within [`LOOKUP_EVERY`].
    async fn follow(&self, seen: u64) {
        let Ok(mut sentinel) = self.sentinel.try_lock() else {
            return; // a lookup is under way
        };
        if self.current().0 != seen {
            return;
        }
        {
            let mut looked = self.looked.lock().unwrap_or_else(|p| p.into_inner());
            if looked.is_some_and(|at| at.elapsed() < LOOKUP_EVERY) {
                return;
            }
            *looked = Some(Instant::now());
        }
        match master_connection(&mut sentinel, &self.config, self.lookup_timeout).await {
            Ok(manager) => {
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = (seen + 1, manager);
                tracing::warn!(master = %self.master, "Redis master lost; now using the master the Sentinels name");
            }
            Err(e) => {
                tracing::warn!(master = %self.master, error = %e, "the Sentinels name no reachable master yet")
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Direct(manager) => manager.req_packed_command(cmd),
            Inner::Sentinel(follow) => Box::pin(async move {
                let (seen, mut manager) = follow.current();
                let result = manager.req_packed_command(cmd).await;
                let lost = match &result {
                    Ok(value) => reply_lost_master(value),
                    Err(e) => lost_master(e),
                };
                if lost {
                    follow.follow(seen).await;
                }
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Direct(manager) => manager.req_packed_commands(cmd, offset, count),
            Inner::Sentinel(follow) => Box::pin(async move {
                let (seen, mut manager) = follow.current();
                let result = manager.req_packed_commands(cmd, offset, count).await;
                let lost = match &result {
                    Ok(values) => values.iter().any(reply_lost_master),
                    Err(e) => lost_master(e),
                };
                if lost {
                    follow.follow(seen).await;
                }
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Direct(manager) => manager.get_db(),
            Inner::Sentinel(follow) => follow.db,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustq_testing::RedisServer;

    #[tokio::test]
    async fn a_replicas_readonly_reply_counts_as_a_lost_master() {
        // Error replies reach a connection as values, whatever the command: a plain write, a
        // script, a pipeline or a transaction. Each must send the next command to a new master.
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
        let mut conn = redis::Client::open(replica.url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let set = redis::cmd("SET").arg("k").arg("v").clone();
        let reply = conn.req_packed_command(&set).await.unwrap();
        assert!(reply_lost_master(&reply), "{reply:?}");
        let script = redis::cmd("EVAL")
            .arg("return redis.call('SET', KEYS[1], 'v')")
            .arg(1)
            .arg("k")
            .clone();
        let reply = conn.req_packed_command(&script).await;
        assert!(
            match &reply {
                Ok(value) => reply_lost_master(value),
                Err(e) => lost_master(e),
            },
            "{reply:?}"
        );
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg("k").cmd("SET").arg("k").arg("v");
        let replies = conn.req_packed_commands(&pipe, 0, 2).await.unwrap();
        assert!(replies.iter().any(reply_lost_master), "{replies:?}");
        let mut multi = redis::pipe();
        multi.atomic().cmd("SET").arg("k").arg("v");
        let replies = conn.req_packed_commands(&multi, 2, 1).await;
        assert!(
            match &replies {
                Ok(values) => values.iter().any(reply_lost_master),
                Err(e) => lost_master(e),
            },
            "{replies:?}"
        );
        let reply = multi.query_async::<()>(&mut conn).await.unwrap_err();
        assert!(lost_master(&reply), "{reply:?}");
        // What a master answers is no such sign.
        let mut on_master = redis::Client::open(master.url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let reply = on_master.req_packed_command(&set).await.unwrap();
        assert!(!reply_lost_master(&reply), "{reply:?}");
    }
}
