//! The process's HTTP endpoint (`--http 127.0.0.1:9394`, `http:` in the config file; off unless
//! set), for Prometheus and Kubernetes:
//!
//! - `/metrics`: [`crate::metrics`] in Prometheus' text format. Bound beyond loopback it needs
//!   `Authorization: Bearer <http_token>`.
//! - `/livez`: 200 while the engine's loops turn — the heartbeat loop turns every
//!   `heartbeat_interval` whether or not Redis takes the beat, so a Redis outage does not fail it
//!   (restarting every pod would not bring Redis back); 503 once it has not turned for three
//!   intervals and 5 s. The endpoint answering at all shows the runtime is not stuck.
//! - `/readyz`: 200 when Redis answers a `PING` within a second, a heartbeat was written within
//!   three intervals and 5 s, and the process is not quiet; else 503 saying which.
//!
//! A scrape never hangs on Redis: each step has a time bound, and what cannot be read is left
//! out, with `rustq_redis_up 0`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rustq_core::Conn;

use crate::control::Control;
use crate::fleet;
use crate::heartbeat::{self, Busy};
use crate::metrics::{Metrics, ProcessState};
use crate::service::{BoxFuture, Service};

/// How long a scrape waits for Redis's `PING`, and for the fleet's state.
pub const REDIS_BOUND: Duration = Duration::from_secs(1);

/// Prometheus' text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (http): {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why not (in use, not an address of this host, not permitted).
    pub source: std::io::Error,
}

/// Opens the endpoint's socket (at boot, so a port in use stops the process before it works).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| BindError { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| BindError { addr, source })?;
    Ok(listener)
}

/// What the endpoint reads.
pub struct Endpoint {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The process's control: quiet, heartbeat loop turns and beats.
    pub control: Control,
    /// Redis, once connected (the endpoint serves probes before that).
    pub conn: Arc<OnceLock<Conn>>,
    /// This process's identity.
    pub identity: String,
    /// Its running jobs.
    pub busy: Arc<OnceLock<Arc<Busy>>>,
    /// `concurrency`.
    pub concurrency: usize,
    /// `heartbeat_interval`.
    pub heartbeat_interval: Duration,
    /// `http_token`: required of `/metrics` scrapes when set.
    pub token: Option<String>,
}

/// The endpoint as a service of the process.
pub struct Http {
    /// Its socket, opened by [`bind`].
    pub listener: std::net::TcpListener,
    /// What it serves.
    pub endpoint: Arc<Endpoint>,
}

impl Service for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn run(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            let Http { listener, endpoint } = *self;
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "the HTTP endpoint cannot run");
                    return;
                }
            };
            let app = Router::new()
                .route("/metrics", get(metrics))
                .route("/livez", get(livez))
                .route("/readyz", get(readyz))
                .with_state(endpoint);
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the HTTP endpoint stopped");
            }
        })
    }
}

impl Endpoint {
    /// Three heartbeat intervals and 5 s: how stale a turn or a beat may be.
    fn stale_after(&self) -> Duration {
        self.heartbeat_interval * 3 + Duration::from_secs(5)
    }

    /// Redis's round-trip time, or `None` when it did not answer within [`REDIS_BOUND`].
    async fn ping(&self) -> Option<Duration> {
        let conn = self.conn.get()?;
        let mut conn = conn.clone();
        let begun = Instant::now();
        let answer = tokio::time::timeout(
            REDIS_BOUND,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        matches!(answer, Ok(Ok(_))).then(|| begun.elapsed())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compared in time independent of where they differ.
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

async fn metrics(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    if !endpoint.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this endpoint needs Authorization: Bearer <http_token>\n",
        )
            .into_response();
    }
    let redis_rtt = endpoint.ping().await;
    let mut fleet = None;
    if let (Some(_), Some(conn)) = (redis_rtt, endpoint.conn.get()) {
        let read = async {
            if fleet::reports(conn, &endpoint.identity).await? {
                fleet::read(conn).await.map(Some)
            } else {
                Ok(None)
            }
        };
        match tokio::time::timeout(REDIS_BOUND, read).await {
            Ok(Ok(read)) => fleet = read,
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the fleet's state"),
            Err(_) => tracing::debug!("the fleet's state took too long to read"),
        }
    }
    let state = ProcessState {
        busy: endpoint.busy.get().map_or(0, |b| b.len()),
        concurrency: endpoint.concurrency,
        quiet: endpoint.control.is_quiet(),
        redis_rtt,
        rss_bytes: heartbeat::rss_kb() * 1024,
    };
    let body = endpoint.metrics.render(&state, fleet.as_ref());
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response()
}

async fn livez(State(endpoint): State<Arc<Endpoint>>) -> Response {
    match endpoint.control.since_turn() {
        Some(since) if since > endpoint.stale_after() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the heartbeat loop has not turned for {} s\n",
                since.as_secs()
            ),
        )
            .into_response(),
        _ => "ok\n".into_response(),
    }
}

async fn readyz(State(endpoint): State<Arc<Endpoint>>) -> Response {
    let mut why = Vec::new();
    if endpoint.ping().await.is_none() {
        why.push("Redis does not answer".to_string());
    }
    match endpoint.control.since_beat() {
        None => why.push("no heartbeat written yet".to_string()),
        Some(since) if since > endpoint.stale_after() => {
            why.push(format!("no heartbeat written for {} s", since.as_secs()))
        }
        Some(_) => {}
    }
    if endpoint.control.is_quiet() {
        why.push("quiet: fetching no new jobs".to_string());
    }
    if why.is_empty() {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        )
            .into_response()
    }
}
