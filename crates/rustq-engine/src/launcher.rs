//! A worker process's life: connect, beat, register, start the services, then quiet and stop
//! gracefully — the manager waits for running jobs and gives back the rest, the acker writes
//! every outcome — and leave.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustq_core::Conn;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::ack::Acker;
use crate::batch::BatchCounts;
use crate::check_point::{CheckPoint, CheckPoints};
use crate::concurrency::{ConcurrencyLimit, LimitCounters, Reaper};
use crate::control::Control;
use crate::cron::{CronCounters, CronRuns, Scheduler};
use crate::fetch::{Fetcher, Waiters};
use crate::handler::Registry;
use crate::heartbeat::{self, Beat, Busy, Dump, Heartbeat, Signals};
use crate::holdings::Holdings;
use crate::http::{self, Endpoint, Http};
use crate::job_retry::RetryPolicy;
use crate::manager::Manager;
use crate::metrics::Metrics;
use crate::observer::{Observer, Observers};
use crate::options::WorkerOptions;
use crate::orphans::{self, Adopter};
use crate::processor::Processor;
use crate::recovery::{Recover, Recovery};
use crate::scheduled::{Poll, Poller};
use crate::service::Service;
use crate::stats::Counters;
use crate::systemd::{self, Notifier, Watchdog};
use crate::throttle::ThrottleLimit;
use crate::unique::UniqueLock;

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A configuration Redis refuses outright (a malformed URL).
    #[error(transparent)]
    Config(#[from] rustq_core::Error),
    /// The HTTP endpoint's address cannot be listened on (in use, not this host's).
    #[error(transparent)]
    Http(#[from] http::BindError),
}

/// A Sidekiq-compatible worker process.
pub struct Worker {
    options: WorkerOptions,
    registry: Registry,
    control: Control,
    identity: String,
    check_points: CheckPoints,
    observers: Observers,
    services: Vec<Box<dyn Service>>,
    listener: Option<std::net::TcpListener>,
}

impl Worker {
    /// A worker running `registry`'s handlers with `options`.
    pub fn new(options: WorkerOptions, registry: Registry) -> Worker {
        Worker {
            options,
            registry,
            control: Control::default(),
            identity: heartbeat::identity(),
            check_points: CheckPoints::default(),
            observers: Observers::default(),
            services: Vec::new(),
            listener: None,
        }
    }

    /// Opens the HTTP endpoint's socket now, if `http` is set (else [`Worker::run`] does): a
    /// host calls it at boot so that a port in use is a usage error, before anything runs.
    pub fn listen(&mut self) -> Result<(), EngineError> {
        if let (Some(addr), None) = (self.options.http, &self.listener) {
            self.listener = Some(http::bind(addr)?);
        }
        Ok(())
    }

    /// Its control: quiet, stop, dump.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// `hostname:pid:<12 hex>`, the name in `processes` and the Web UI.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The options it will run with; a host may still change them before [`Worker::run`].
    pub fn options_mut(&mut self) -> &mut WorkerOptions {
        &mut self.options
    }

    /// Registers a check point: it sees each job before its handler does, and each outcome.
    pub fn add_check_point(&mut self, check_point: impl CheckPoint) -> &mut Worker {
        self.check_points.add(check_point);
        self
    }

    /// Registers an observer: it is told of each job's start and end.
    pub fn add_observer(&mut self, observer: Arc<dyn Observer>) -> &mut Worker {
        self.observers.add(observer);
        self
    }

    /// Runs `service` beside the engine's own for the life of the process.
    pub fn add_service(&mut self, service: impl Service) -> &mut Worker {
        self.services.push(Box::new(service));
        self
    }

    /// Runs until stopped. Redis being away (at start or later) is waited out, never fatal.
    pub async fn run(mut self) -> Result<(), EngineError> {
        // Fail fast on a malformed URL or a port in use; an unreachable Redis is waited out.
        self.options.redis.check()?;
        self.listen()?;
        let Worker {
            options,
            registry,
            control,
            identity,
            mut check_points,
            mut observers,
            services: extra,
            listener,
        } = self;
        let mut background = JoinSet::new();
        #[cfg(feature = "otlp")]
        if options.otlp_endpoint.is_some() {
            observers.add(Arc::new(crate::otlp::Propagate(options.trace_propagation)));
        }
        // The endpoint serves from the start: probes answer while Redis is still awaited.
        let redis_cell = Arc::new(OnceLock::new());
        let busy_cell = Arc::new(OnceLock::new());
        let cron_counters = CronCounters::default();
        if options.cron {
            check_points.add(CronRuns {
                conn: redis_cell.clone(),
                identity: identity.clone(),
            });
        }
        // A job's limits, in this order: its rate, then its slot, then (once it is sure to
        // start) its unique lock.
        let limit_counters = LimitCounters::default();
        check_points.add(ThrottleLimit {
            conn: redis_cell.clone(),
            counters: limit_counters.clone(),
        });
        check_points.add(ConcurrencyLimit {
            conn: redis_cell.clone(),
            identity: identity.clone(),
            counters: limit_counters.clone(),
        });
        check_points.add(UniqueLock {
            conn: redis_cell.clone(),
        });
        check_points.add(BatchCounts::new(redis_cell.clone(), options.wire));
        if let Some(listener) = listener {
            let metrics = Arc::new(Metrics::new());
            cron_counters.register(metrics.registry());
            limit_counters.register(metrics.registry());
            observers.add(metrics.clone());
            let endpoint = Arc::new(Endpoint {
                metrics,
                control: control.clone(),
                conn: redis_cell.clone(),
                identity: identity.clone(),
                busy: busy_cell.clone(),
                concurrency: options.concurrency,
                heartbeat_interval: options.heartbeat_interval,
                token: options.http_token.clone().filter(|t| !t.is_empty()),
            });
            tracing::info!(addr = ?listener.local_addr().ok(), "serving /metrics, /livez and /readyz");
            background.spawn(Box::new(Http { listener, endpoint }).run());
        }
        let Some(conn) = connect(&options, &control).await else {
            return Ok(());
        };
        let _ = redis_cell.set(conn.clone());
        let counters = Arc::new(Counters::default());
        let busy = Arc::new(Busy::default());
        let _ = busy_cell.set(busy.clone());
        let heartbeat = Arc::new(Heartbeat::new(
            &options,
            identity.clone(),
            conn.clone(),
            counters.clone(),
            busy.clone(),
        ));
        let recovery = Arc::new(
            Recovery::new(
                conn.clone(),
                &identity,
                options.max_recoveries,
                options.wire,
            )
            .with_dead_set(options.dead_set)
            .with_check_points(check_points.clone())
            .serving_metrics(options.http.is_some()),
        );
        let queue_names: Vec<String> = options.queues.iter().map(|q| q.name.clone()).collect();

        // Visible first, registered second, fetching last: nobody may recover a process that is
        // registered but has not beaten yet.
        if retry_until_ok(&control, "heartbeat", || heartbeat.beat(false)).await {
            control.beaten();
        }
        control.turned();
        retry_until_ok(&control, "register", || {
            recovery.register(&queue_names, options.concurrency)
        })
        .await;
        if let Err(e) = recovery.recover_dead().await {
            tracing::warn!(error = %e, "recovering dead processes failed; will retry");
        }
        if options.redis.url.contains("#insecure") {
            tracing::warn!(
                redis = %options.redis.redacted_url(),
                "TLS certificate checks are off (#insecure): anyone on the path to Redis can read and write its jobs"
            );
        }
        tracing::info!(
            identity = %identity,
            concurrency = options.concurrency,
            queues = ?queue_names,
            redis = %options.redis.redacted_url(),
            handlers = ?registry.classes(),
            "rustq-worker started"
        );

        let holdings = Arc::new(Holdings::default());
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let processor = Arc::new(Processor {
            registry,
            policy: RetryPolicy {
                wire: options.wire,
                max_retries: options.max_retries,
            },
            job_timeout: options.job_timeout,
            counters: counters.clone(),
            check_points,
            observers,
            control: control.clone(),
            permits: options
                .dispatch_ahead
                .then(|| Arc::new(tokio::sync::Semaphore::new(options.concurrency))),
        });
        let systemd = Notifier::from_env().map(Arc::new);
        let mut services: Vec<Box<dyn Service>> = vec![
            Box::new(Beat {
                heartbeat: heartbeat.clone(),
                control: control.clone(),
                every: options.heartbeat_interval,
            }),
            Box::new(Signals {
                conn: conn.clone(),
                identity: identity.clone(),
                control: control.clone(),
            }),
            Box::new(Recover {
                recovery: recovery.clone(),
                every: options.heartbeat_interval,
            }),
            Box::new(Poll {
                poller: Poller::new(conn.clone(), &identity, options.wire)
                    .with_dead_set(options.dead_set),
                control: control.clone(),
                fixed: options.poll_interval_average,
                average: options.average_scheduled_poll_interval,
            }),
            Box::new(Reaper {
                conn: conn.clone(),
                identity: identity.clone(),
                every: crate::concurrency::REAP_EVERY,
            }),
            Box::new(Dump {
                busy: busy.clone(),
                control: control.clone(),
            }),
            Box::new(Adopter {
                conn: conn.clone(),
                identity: identity.clone(),
                queues: queue_names.clone(),
                holdings: holdings.clone(),
                recheck: orphans::RECHECK,
                grace: orphans::grace(&options.redis),
            }),
            Box::new(Acker {
                conn: conn.clone(),
                identity: identity.clone(),
                rx: ack_rx,
                dead: options.dead_set,
                holdings: holdings.clone(),
            }),
            Box::new(Manager {
                fetcher: Fetcher::new(
                    conn.clone(),
                    &identity,
                    options.queues.clone(),
                    options.strict_order(),
                    holdings.clone(),
                ),
                waiters: Waiters::spawn(&options.redis, &identity, &queue_names, holdings.clone()),
                processor,
                ack_tx,
                busy: busy.clone(),
                holdings,
                control: control.clone(),
                concurrency: options.concurrency,
                prefetch: options.prefetch,
                fetch_batch: options.fetch_batch,
                shutdown_timeout: options.shutdown_timeout,
                dispatch_ahead: options.dispatch_ahead,
            }),
        ];
        if let Some(notifier) = &systemd {
            if let Some(every) = systemd::watchdog_interval().filter(|_| !options.host_watchdog) {
                services.push(Box::new(Watchdog {
                    notifier: notifier.clone(),
                    every,
                }));
            }
        }
        if options.cron {
            services.push(Box::new(Scheduler {
                schedules: rustq_cron::Schedules::new(
                    conn.clone(),
                    options.wire,
                    options.cron_timezone,
                ),
                control: control.clone(),
                files: options.schedule.clone(),
                counters: cron_counters,
            }));
        }
        services.extend(extra);

        let mut finishing = JoinSet::new();
        for service in services {
            tracing::debug!(service = service.name(), "starting");
            if service.finishes() {
                finishing.spawn(service.run());
            } else {
                background.spawn(service.run());
            }
        }
        // Under systemd (`Type=notify`): ready now, registered and fetching.
        if let Some(notifier) = &systemd {
            notifier.notify("READY=1");
        }
        // The manager and the acker end only once the process is stopping: one that ends sooner
        // (a panic) stops the process, rather than leave it beating while it runs nothing.
        tokio::select! {
            () = control.stopped() => {}
            Some(ended) = finishing.join_next() => {
                match ended {
                    Err(e) if e.is_panic() => tracing::error!(
                        error = %crate::failure::panic_message(e.into_panic().as_ref()),
                        "a service panicked; stopping"
                    ),
                    _ => tracing::error!("a service ended before the process was told to stop; stopping"),
                }
                control.stop();
            }
        }
        if let Some(notifier) = &systemd {
            notifier.notify("STOPPING=1");
        }
        while finishing.join_next().await.is_some() {}
        background.abort_all();
        while background.join_next().await.is_some() {}
        match recovery.release_own().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "returned leftover jobs to their queues"),
            Err(e) => {
                tracing::error!(error = %e, "could not release this process's lists; another process will recover them")
            }
        }
        if let Err(e) = heartbeat.clear().await {
            tracing::warn!(error = %e, "could not remove the process entry; it expires in 60 s");
        }
        tracing::info!("bye");
        Ok(())
    }
}

/// Connects, waiting out an unreachable Redis with backoff; `None` if stopped meanwhile.
async fn connect(options: &WorkerOptions, control: &Control) -> Option<Conn> {
    let mut backoff = Duration::from_millis(250);
    loop {
        match options.redis.connection_manager().await {
            Ok(conn) => return Some(conn),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Redis is unreachable; waiting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = control.stopped() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Calls `f` until it succeeds (true) or the worker is told to stop (false).
async fn retry_until_ok<F, Fut, T>(control: &Control, what: &str, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut backoff = Duration::from_millis(250);
    loop {
        match f().await {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, step = what, "Redis error; retrying");
                if control.is_stopping() {
                    return false;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
