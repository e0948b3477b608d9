//! The process entry that makes a worker visible in Sidekiq's Web UI and `Sidekiq::ProcessSet`,
//! the busy-work hash `Sidekiq::Workers` reads, the stat counters, and the Web UI's signals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustq_core::wire::{self, keys};
use rustq_core::Conn;
use serde_json::json;

use crate::control::{Control, Signal};
use crate::options::WorkerOptions;
use crate::service::{BoxFuture, Service};
use crate::stats::{Counters, MetricsFormats};
use crate::work::UnitOfWork;

/// Jobs running now, by task id (Sidekiq's `tid`).
#[derive(Default)]
pub struct Busy {
    next: AtomicU64,
    running: Mutex<HashMap<u64, (Arc<UnitOfWork>, i64)>>,
}

impl Busy {
    /// Marks `unit` running; returns its `tid`.
    pub fn start(&self, unit: Arc<UnitOfWork>) -> u64 {
        let tid = self.next.fetch_add(1, Ordering::Relaxed);
        let run_at = wire::now_secs() as i64;
        self.lock().insert(tid, (unit, run_at));
        tid
    }

    /// The job `tid` is no longer running.
    pub fn finish(&self, tid: u64) {
        self.lock().remove(&tid);
    }

    /// How many run.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every job still marked running (after their tasks were stopped).
    pub fn drain(&self) -> Vec<Arc<UnitOfWork>> {
        self.lock().drain().map(|(_, (u, _))| u).collect()
    }

    /// Every running job: `tid`, the job, when it started (epoch seconds).
    pub fn snapshot(&self) -> Vec<(u64, Arc<UnitOfWork>, i64)> {
        self.lock()
            .iter()
            .map(|(t, (u, r))| (*t, u.clone(), *r))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<UnitOfWork>, i64)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes this process's heartbeat.
pub struct Heartbeat {
    /// This process's identity.
    pub identity: String,
    info: String,
    concurrency: usize,
    metrics: MetricsFormats,
    conn: Conn,
    /// Counts to flush with each beat.
    pub counters: Arc<Counters>,
    /// Jobs running now.
    pub busy: Arc<Busy>,
}

/// `hostname:pid:<12 hex>`, as Sidekiq names processes.
pub fn identity() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let nonce: [u8; 6] = rand::random();
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}:{}:{hex}", std::process::id())
}

impl Heartbeat {
    /// The heartbeat of a process with these options.
    pub fn new(
        options: &WorkerOptions,
        identity: String,
        conn: Conn,
        counters: Arc<Counters>,
        busy: Arc<Busy>,
    ) -> Heartbeat {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let queues: Vec<&str> = options.queues.iter().map(|q| q.name.as_str()).collect();
        let weights: Vec<serde_json::Value> = options
            .queues
            .iter()
            .map(|q| json!({ q.name.clone(): q.weight }))
            .collect();
        // Sidekiq 8.0.9+ describes its queues per capsule (and reads them from there); 6.x and
        // 7.x read `queues` and `weights`. rustq works one set of queues: one capsule.
        let capsule_weights: serde_json::Map<String, serde_json::Value> = options
            .queues
            .iter()
            .map(|q| (q.name.clone(), json!(q.weight)))
            .collect();
        let mode = if options.queues.iter().all(|q| q.weight == 0) {
            "strict"
        } else if options.queues.iter().all(|q| q.weight == 1) {
            "random"
        } else {
            "weighted"
        };
        let info = json!({
            "hostname": host,
            "started_at": wire::float_value(wire::now_secs()),
            "pid": std::process::id(),
            "tag": options.tag.clone().unwrap_or_default(),
            "concurrency": options.concurrency,
            "capsules": {
                "default": {
                    "concurrency": options.concurrency,
                    "mode": mode,
                    "weights": capsule_weights,
                },
            },
            "queues": queues,
            "weights": weights,
            "labels": options.labels,
            "identity": identity,
            "version": concat!("rustq ", env!("CARGO_PKG_VERSION")),
            "embedded": false,
        });
        Heartbeat {
            identity,
            info: info.to_string(),
            concurrency: options.concurrency,
            metrics: options.metrics,
            conn,
            counters,
            busy,
        }
    }

    /// One beat: the process entry, busy jobs and counters in one MULTI (the Web UI's signals
    /// are read by [`Signals`]). Counts that could not be written are kept for the next beat.
    pub async fn beat(&self, quiet: bool) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let t0 = Instant::now();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        let rtt_us = t0.elapsed().as_micros() as u64;
        let id = &self.identity;
        // Sidekiq 7+ reads `<id>:work`, Sidekiq 6 `<id>:workers`: write both.
        let work_keys = [keys::work(id), keys::workers_v6(id)];
        let flush = self.counters.take();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.sadd(keys::PROCESSES, id).ignore();
        pipe.hset_multiple(
            id,
            &[
                ("info", self.info.clone()),
                ("busy", self.busy.len().to_string()),
                ("beat", wire::format_float(wire::now_secs())),
                ("quiet", quiet.to_string()),
                ("rss", rss_kb().to_string()),
                ("rtt_us", rtt_us.to_string()),
                ("concurrency", self.concurrency.to_string()),
            ],
        )
        .ignore();
        pipe.expire(id, wire::PROCESS_TTL_SECS).ignore();
        pipe.unlink(&work_keys).ignore();
        let busy = self.busy.snapshot();
        if !busy.is_empty() {
            let entries: Vec<(String, String)> = busy
                .iter()
                .map(|(tid, unit, run_at)| {
                    let work = json!({
                        "queue": unit.queue,
                        "payload": String::from_utf8_lossy(&unit.raw),
                        "run_at": run_at,
                    });
                    (format!("{tid:x}"), work.to_string())
                })
                .collect();
            for key in &work_keys {
                pipe.hset_multiple(key, &entries).ignore();
                pipe.expire(key, wire::PROCESS_TTL_SECS).ignore();
            }
        }
        flush.write(&mut pipe, chrono::Utc::now(), self.metrics);
        pipe.query_async::<()>(&mut conn)
            .await
            .inspect_err(|_| self.counters.restore(flush))
    }

    /// Removes the process from `processes` and its busy hash, after flushing the counters.
    pub async fn clear(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let flush = self.counters.take();
        let mut pipe = redis::pipe();
        pipe.atomic();
        flush.write(&mut pipe, chrono::Utc::now(), self.metrics);
        pipe.srem(keys::PROCESSES, &self.identity)
            .ignore()
            .unlink(&[
                self.identity.clone(),
                keys::work(&self.identity),
                keys::workers_v6(&self.identity),
            ])
            .ignore();
        pipe.query_async::<()>(&mut conn).await
    }
}

/// Beats every `every`, and at once when the process quiets (so the Web UI shows it), applying
/// the signals the Web UI sends.
pub struct Beat {
    /// What writes the beat.
    pub heartbeat: Arc<Heartbeat>,
    /// The process's control.
    pub control: Control,
    /// `heartbeat_interval`.
    pub every: Duration,
}

impl Service for Beat {
    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn run(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            let Beat {
                heartbeat,
                control,
                every,
            } = *self;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = control.quieted(), if !control.is_quiet() => {}
                }
                match heartbeat.beat(control.is_quiet()).await {
                    Ok(()) => control.beaten(),
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
                control.turned();
            }
        })
    }
}

/// Reads the Web UI's signals (`<identity>-signals`) every second, so its Quiet and Stop take
/// effect, and show, within about a second rather than at the next heartbeat: one `RPOP` a
/// second. (The beat follows a quiet at once, so the Web UI shows it.)
pub struct Signals {
    /// A connection's manager.
    pub conn: Conn,
    /// This process's identity.
    pub identity: String,
    /// The process's control.
    pub control: Control,
}

/// How often [`Signals`] looks.
pub const SIGNALS_EVERY: Duration = Duration::from_secs(1);

impl Service for Signals {
    fn name(&self) -> &'static str {
        "signals"
    }

    fn run(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            let key = keys::signals(&self.identity);
            loop {
                tokio::time::sleep(SIGNALS_EVERY).await;
                let mut conn = self.conn.clone();
                let popped: redis::RedisResult<Option<String>> =
                    redis::cmd("RPOP").arg(&key).query_async(&mut conn).await;
                if let Ok(Some(name)) = popped {
                    match Signal::from_name(&name) {
                        Some(signal) => {
                            tracing::info!(signal = ?signal, "signal from the Web UI");
                            self.control.apply(signal);
                        }
                        None => tracing::warn!(signal = %name, "unknown signal from the Web UI"),
                    }
                }
            }
        })
    }
}

/// Logs the running jobs when asked (SIGTTIN, the Web UI): class and jid, not arguments.
pub struct Dump {
    /// Jobs running now.
    pub busy: Arc<Busy>,
    /// The process's control.
    pub control: Control,
}

impl Service for Dump {
    fn name(&self) -> &'static str {
        "dump"
    }

    fn run(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            loop {
                self.control.dump_asked().await;
                let running = self.busy.snapshot();
                tracing::info!(running = running.len(), "state dump");
                // Class and jid, never the arguments: whoever can write to Redis would otherwise
                // choose what lands in the logs (personal data included).
                for (tid, unit, run_at) in running {
                    let job = unit.parse().ok();
                    let class = job.as_ref().map(|j| j.display_class().to_string());
                    let jid = job.as_ref().and_then(|j| j.jid().map(str::to_string));
                    tracing::info!(
                        tid = format!("{tid:x}"),
                        queue = %unit.queue,
                        run_at,
                        class = class.as_deref().unwrap_or("?"),
                        jid = jid.as_deref().unwrap_or("?"),
                        "running"
                    );
                }
            }
        })
    }
}

/// Resident set size in KB, from /proc (0 where there is none).
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}
