//! The connection rustq's commands go through: a self-reconnecting connection to one Redis, or
//! to whichever server the Sentinels name master, followed across failovers.
//!
//! Behind Sentinel, a command that finds the master gone (the connection drops or is refused, a
//! reply times out) or demoted (`READONLY`: it answers as a replica now) fails as it would
//! against one Redis — callers retry as they always do — and the next command goes to the
//! master the Sentinels name then. Only one lookup runs at a time; commands that failed against
//! a master already left behind do not look again.

use std::sync::{Arc, Mutex};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::SentinelClient;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

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
    config: ConnectionManagerConfig,
    db: i64,
    master: String,
}

impl Conn {
    /// A connection to one Redis.
    pub fn direct(manager: ConnectionManager) -> Conn {
        Conn(Inner::Direct(manager))
    }

    /// A connection to the master `sentinel` names (`master` is its name, for logs).
    pub async fn sentinel(
        mut sentinel: SentinelClient,
        config: ConnectionManagerConfig,
        db: i64,
        master: String,
    ) -> RedisResult<Conn> {
        let manager = master_connection(&mut sentinel, &config).await?;
        Ok(Conn(Inner::Sentinel(Arc::new(Follow {
            sentinel: tokio::sync::Mutex::new(sentinel),
            current: Mutex::new((0, manager)),
            config,
            db,
            master,
        }))))
    }
}

async fn master_connection(
    sentinel: &mut SentinelClient,
    config: &ConnectionManagerConfig,
) -> RedisResult<ConnectionManager> {
    let client = sentinel.async_get_client().await?;
    client
        .get_connection_manager_with_config(config.clone())
        .await
}

/// Whether `error` says the master is gone or no longer master.
fn lost_master(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(error.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly))
        || error.to_string().contains("READONLY")
}

impl Follow {
    fn current(&self) -> (u64, ConnectionManager) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (current.0, current.1.clone())
    }

    /// Asks the Sentinels for the master, unless someone did since `seen`.
    async fn follow(&self, seen: u64) {
        let mut sentinel = self.sentinel.lock().await;
        if self.current().0 != seen {
            return;
        }
        match master_connection(&mut sentinel, &self.config).await {
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
                if result.as_ref().is_err_and(lost_master) {
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
                if result.as_ref().is_err_and(lost_master) {
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
