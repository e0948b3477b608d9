//! A worker process's life: connect, beat, recover, fetch and run, then quiet and stop
//! gracefully — waiting for running jobs, pushing back the ones that would not finish.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::ack::{self, Completion};
use crate::fetch::{Fetcher, UnitOfWork, Waiters, BLOCK_SECS};
use crate::handler::{Registry, Started};
use crate::heartbeat::{self, Busy, Heartbeat, Signal};
use crate::job_retry::{Action, RetryPolicy};
use crate::options::WorkerOptions;
use crate::orphans::{self, Adopter, Holdings};
use crate::processor::Processor;
use crate::recovery::Recovery;
use crate::scheduled::Poller;
use crate::stats::Counters;
use crate::systemd::{self, Notifier};

/// Tells a running worker to quiet down or stop; cheap to clone.
#[derive(Clone, Default)]
pub struct Control {
    inner: Arc<ControlState>,
}

#[derive(Default)]
struct ControlState {
    quiet: AtomicBool,
    stop: AtomicBool,
    changed: Notify,
    dump: Notify,
    beats: AtomicU64,
}

impl Control {
    /// Stop fetching new jobs (SIGTSTP, or "Quiet" in the Web UI).
    pub fn quiet(&self) {
        self.inner.quiet.store(true, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
    }

    /// Stop: quiet, wait for running jobs up to the timeout, push back the rest, exit.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.quiet();
    }

    /// Log the running jobs (SIGTTIN).
    pub fn dump(&self) {
        self.inner.dump.notify_waiters();
    }

    pub fn is_quiet(&self) -> bool {
        self.inner.quiet.load(Ordering::SeqCst)
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stop.load(Ordering::SeqCst)
    }

    /// How many heartbeats have been written so far (a host fires Sidekiq's `:heartbeat` and
    /// `:beat` events from it).
    pub fn beats(&self) -> u64 {
        self.inner.beats.load(Ordering::SeqCst)
    }

    fn beaten(&self) {
        self.inner.beats.fetch_add(1, Ordering::SeqCst);
    }

    /// Resolves once `quiet` (or `stop`) has been asked for.
    pub async fn quieted(&self) {
        loop {
            let notified = self.inner.changed.notified();
            if self.is_quiet() {
                return;
            }
            notified.await;
        }
    }

    pub async fn stopped(&self) {
        loop {
            let notified = self.inner.changed.notified();
            if self.is_stopping() {
                return;
            }
            notified.await;
        }
    }

    /// Maps SIGTERM/SIGINT to stop, SIGTSTP to quiet and SIGTTIN to a dump of running jobs.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            (SignalKind::terminate(), Signal::Stop),
            (SignalKind::interrupt(), Signal::Stop),
            (SignalKind::from_raw(20), Signal::Quiet), // SIGTSTP
            (SignalKind::from_raw(21), Signal::Dump),  // SIGTTIN
        ];
        for (kind, action) in kinds {
            let mut stream = signal(kind)?;
            let control = self.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    tracing::info!(signal = ?action, "signal received");
                    control.apply(action);
                }
            });
        }
        Ok(())
    }

    fn apply(&self, signal: Signal) {
        match signal {
            Signal::Quiet => self.quiet(),
            Signal::Stop => self.stop(),
            Signal::Dump => self.dump(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] rustq_core::Error),
}

/// A Sidekiq-compatible worker process.
pub struct Worker {
    options: WorkerOptions,
    registry: Registry,
    control: Control,
    identity: String,
}

impl Worker {
    pub fn new(options: WorkerOptions, registry: Registry) -> Worker {
        Worker {
            options,
            registry,
            control: Control::default(),
            identity: heartbeat::identity(),
        }
    }

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

    /// Runs until stopped. Redis being away (at start or later) is waited out, never fatal.
    pub async fn run(self) -> Result<(), EngineError> {
        let Worker {
            options,
            registry,
            control,
            identity,
        } = self;
        // Fail fast on a malformed URL; an unreachable server is retried below.
        options.redis.client()?;
        let Some(conn) = connect(&options, &control).await else {
            return Ok(());
        };
        let counters = Arc::new(Counters::default());
        let busy = Arc::new(Busy::default());
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
            .with_dead_set(options.dead_set),
        );
        let queue_names: Vec<String> = options.queues.iter().map(|q| q.name.clone()).collect();

        // Visible first, registered second, fetching last: nobody may recover a process that is
        // registered but has not beaten yet.
        if retry_until_ok(&control, "heartbeat", || heartbeat.beat(false)).await {
            control.beaten();
        }
        retry_until_ok(&control, "register", || {
            recovery.register(&queue_names, options.concurrency)
        })
        .await;
        if let Err(e) = recovery.recover_dead().await {
            tracing::warn!(error = %e, "recovering dead processes failed; will retry");
        }
        tracing::info!(
            identity = %identity,
            concurrency = options.concurrency,
            queues = ?queue_names,
            redis = %options.redis.redacted_url(),
            handlers = ?registry.classes(),
            "rustq-worker started"
        );

        let mut background = JoinSet::new();
        background.spawn(heartbeat_loop(
            heartbeat.clone(),
            recovery.clone(),
            control.clone(),
            options.heartbeat_interval,
        ));
        background.spawn(poll_loop(
            Poller::new(conn.clone(), &identity, options.wire).with_dead_set(options.dead_set),
            control.clone(),
            options.poll_interval_average,
            options.average_scheduled_poll_interval,
        ));
        background.spawn(dump_loop(busy.clone(), control.clone()));
        // Under systemd (`Type=notify`): ready now, registered and about to fetch.
        let systemd = Notifier::from_env().map(Arc::new);
        if let Some(notifier) = &systemd {
            if let Some(every) = systemd::watchdog_interval().filter(|_| !options.host_watchdog) {
                background.spawn(systemd::watchdog(notifier.clone(), every));
            }
            notifier.notify("READY=1");
        }

        let holdings = Arc::new(Holdings::default());
        background.spawn(
            Adopter {
                conn: conn.clone(),
                identity: identity.clone(),
                queues: queue_names.clone(),
                holdings: holdings.clone(),
                recheck: orphans::RECHECK,
                grace: orphans::grace(&options.redis),
            }
            .run(),
        );
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let acker = tokio::spawn(ack::run(
            conn.clone(),
            identity.clone(),
            ack_rx,
            options.dead_set,
            holdings.clone(),
        ));
        let running = Arc::new(Semaphore::new(options.concurrency));
        let processor = Arc::new(Processor {
            registry,
            policy: RetryPolicy {
                wire: options.wire,
                max_retries: options.max_retries,
            },
            job_timeout: options.job_timeout,
            counters: counters.clone(),
            slots: options
                .dispatch_ahead
                .then(|| (running.clone(), control.clone())),
        });
        let fetcher = Fetcher::new(
            conn.clone(),
            &identity,
            options.queues.clone(),
            options.strict_order(),
            holdings.clone(),
        );
        let mut waiters = Waiters::spawn(&options.redis, &identity, &queue_names, holdings);
        let mut tasks = JoinSet::new();
        let pool = JobPool {
            processor,
            ack_tx: ack_tx.clone(),
            busy: busy.clone(),
            running,
            dispatch_ahead: options.dispatch_ahead,
            slots: Arc::new(Slots::default()),
            control: control.clone(),
        };
        fetch_loop(
            &fetcher,
            &mut waiters,
            &pool,
            &mut tasks,
            options.concurrency,
            options.prefetch,
            options.fetch_batch,
        )
        .await;
        // Jobs a waiter moved in as the process quieted never started: back to their queues now,
        // so a quiet process holds only what it runs.
        for unit in waiters.finish(!control.is_stopping()).await {
            let _ = ack_tx.send(Completion {
                unit,
                action: Action::Requeue,
            });
        }
        // Running jobs hold their own handles; the pool's must go, or the acker (waiting for
        // every `ack_tx`) and a host's job channel (in the processor's handlers) never close.
        drop(pool);

        // Quiet: nothing new is fetched; the heartbeat goes on (quiet=true) until stop.
        control.stopped().await;
        if let Some(notifier) = &systemd {
            notifier.notify("STOPPING=1");
        }
        tracing::info!(
            running = busy.len(),
            timeout_s = options.shutdown_timeout.as_secs_f64(),
            "shutting down"
        );
        let deadline = tokio::time::sleep(options.shutdown_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => break,
            }
        }
        if !tasks.is_empty() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        let unfinished = busy.drain();
        if !unfinished.is_empty() {
            tracing::warn!(
                jobs = unfinished.len(),
                "pushing unfinished jobs back to their queues"
            );
        }
        for unit in unfinished {
            let unit = Arc::try_unwrap(unit).unwrap_or_else(|shared| (*shared).clone());
            let _ = ack_tx.send(Completion {
                unit,
                action: Action::Requeue,
            });
        }
        drop(ack_tx);
        let _ = acker.await;
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
async fn connect(options: &WorkerOptions, control: &Control) -> Option<ConnectionManager> {
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

/// Jobs fetched and not finished, and how long jobs take lately.
#[derive(Default)]
struct Slots {
    held: AtomicUsize,
    freed: Notify,
    /// Moving average of job run time, in microseconds.
    avg_us: AtomicU64,
}

impl Slots {
    /// Folds one job's run time into the moving average.
    fn record(&self, took: Duration) {
        let us = took.as_micros() as u64;
        let avg = self.avg_us.load(Ordering::Relaxed);
        self.avg_us.store(avg - avg / 8 + us / 8, Ordering::Relaxed);
    }
}

/// Hands a finished (or given back) job to the acker and frees its place.
fn finish(
    unit: Arc<UnitOfWork>,
    action: Action,
    ack_tx: &mpsc::UnboundedSender<Completion>,
    slots: &Slots,
) {
    let unit = Arc::try_unwrap(unit).unwrap_or_else(|shared| UnitOfWork::clone(&shared));
    let _ = ack_tx.send(Completion { unit, action });
    slots.held.fetch_sub(1, Ordering::SeqCst);
    slots.freed.notify_one();
}

/// Jobs shorter than this on average may be fetched ahead of free slots (`prefetch`); longer
/// ones are fetched one free slot at a time, so they spread over every process as with Sidekiq.
const PREFETCH_BELOW_US: u64 = 5_000;

/// Runs fetched jobs: at most `concurrency` at once (`running`), the rest waiting their turn.
struct JobPool {
    processor: Arc<Processor>,
    ack_tx: mpsc::UnboundedSender<Completion>,
    busy: Arc<Busy>,
    running: Arc<Semaphore>,
    /// `WorkerOptions::dispatch_ahead`: jobs go to their handler at once, which says when each
    /// starts; `running` is not used (`room` still bounds how many are held).
    dispatch_ahead: bool,
    slots: Arc<Slots>,
    control: Control,
}

impl JobPool {
    /// Runs `unit` in a task of its own. Jobs start in the order they were fetched (the order
    /// of their in-progress list, which recovery relies on to tell which jobs were running):
    /// the step that fixes a job's place — queueing for a slot, or handing the job to a
    /// handler's own threads — is taken here, in fetch order, by polling it once before the
    /// task is spawned. (Tokio polls the last task spawned first, so left to the tasks the
    /// order would not hold.)
    fn spawn(&self, tasks: &mut JoinSet<()>, unit: UnitOfWork) {
        self.slots.held.fetch_add(1, Ordering::SeqCst);
        let unit = Arc::new(unit);
        let ack_tx = self.ack_tx.clone();
        let busy = self.busy.clone();
        let slots = self.slots.clone();
        let control = self.control.clone();
        let processor = self.processor.clone();
        let mut first_poll = Context::from_waker(Waker::noop());
        if self.dispatch_ahead {
            // Busy and timed from the moment a handler thread takes the job.
            let begun = Arc::new(std::sync::Mutex::new(None));
            let started = {
                let (busy, unit, begun) = (busy.clone(), unit.clone(), begun.clone());
                Started::new(move || {
                    let tid = busy.start(unit);
                    *begun.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((tid, std::time::Instant::now()));
                })
            };
            let mut run = {
                let unit = unit.clone();
                Box::pin(async move { processor.process(&unit, started).await })
            };
            let first = run.as_mut().poll(&mut first_poll);
            tasks.spawn(async move {
                let action = match first {
                    Poll::Ready(action) => action,
                    Poll::Pending => run.await,
                };
                let begun = begun.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some((tid, at)) = begun {
                    busy.finish(tid);
                    slots.record(at.elapsed());
                }
                finish(unit, action, &ack_tx, &slots);
            });
        } else {
            let mut permit = Box::pin(self.running.clone().acquire_owned());
            let first = permit.as_mut().poll(&mut first_poll);
            tasks.spawn(async move {
                let permit = match first {
                    Poll::Ready(permit) => permit.ok(),
                    Poll::Pending => tokio::select! {
                        biased;
                        // A job fetched ahead that has not started goes back when the process quiets.
                        _ = control.quieted() => None,
                        permit = &mut permit => permit.ok(),
                    },
                };
                let action = match permit {
                    None => Action::Requeue,
                    Some(_permit) => {
                        let tid = busy.start(unit.clone());
                        let at = std::time::Instant::now();
                        let action = processor.process(&unit, Started::default()).await;
                        busy.finish(tid);
                        slots.record(at.elapsed());
                        action
                    }
                };
                finish(unit, action, &ack_tx, &slots);
            });
        }
    }

    /// How many more jobs may be taken now.
    fn room(&self, concurrency: usize, prefetch: usize) -> usize {
        let fast = self.slots.avg_us.load(Ordering::Relaxed) < PREFETCH_BELOW_US;
        let limit = concurrency + if fast { prefetch } else { 0 };
        limit.saturating_sub(self.slots.held.load(Ordering::SeqCst))
    }
}

async fn fetch_loop(
    fetcher: &Fetcher,
    waiters: &mut Waiters,
    pool: &JobPool,
    tasks: &mut JoinSet<()>,
    concurrency: usize,
    prefetch: usize,
    batch: usize,
) {
    let control = &pool.control;
    let mut backoff = Duration::from_millis(100);
    loop {
        while tasks.try_join_next().is_some() {}
        if control.is_quiet() {
            break;
        }
        // Jobs a waiter already moved into our in-progress list are ours to run.
        while let Ok(unit) = waiters.taken.try_recv() {
            pool.spawn(tasks, unit);
        }
        let room = pool.room(concurrency, prefetch);
        // While every slot has a job and more wait behind them, top up in sizeable batches
        // (half the prefetch window) rather than one round trip per few jobs finished.
        let held = pool.slots.held.load(Ordering::SeqCst);
        if room == 0 || (held >= concurrency && room < (prefetch / 2).clamp(1, batch)) {
            tokio::select! {
                _ = pool.slots.freed.notified() => {}
                Some(unit) = waiters.taken.recv() => pool.spawn(tasks, unit),
                _ = control.quieted() => break,
            }
            continue;
        }
        match fetcher.sweep(room.min(batch)).await {
            Ok((units, paused)) if units.is_empty() => {
                backoff = Duration::from_millis(100);
                waiters.arm(&paused);
                tokio::select! {
                    Some(unit) = waiters.taken.recv() => pool.spawn(tasks, unit),
                    _ = waiters.wake.notified() => {}
                    _ = control.quieted() => break,
                    _ = tokio::time::sleep(Duration::from_secs_f64(BLOCK_SECS + 0.5)) => {}
                }
            }
            Ok((units, _)) => {
                backoff = Duration::from_millis(100);
                for unit in units {
                    pool.spawn(tasks, unit);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "fetch failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = control.quieted() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn heartbeat_loop(
    heartbeat: Arc<Heartbeat>,
    recovery: Arc<Recovery>,
    control: Control,
    every: Duration,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = control.quieted(), if !control.is_quiet() => {}
        }
        let beat = heartbeat.beat(control.is_quiet()).await;
        if beat.is_ok() {
            control.beaten();
        }
        match beat {
            Ok(Some(signal)) => {
                tracing::info!(signal = ?signal, "signal from the Web UI");
                control.apply(signal);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        if let Err(e) = recovery.recover_dead().await {
            tracing::warn!(error = %e, "recovering dead processes failed");
        }
    }
}

async fn poll_loop(poller: Poller, control: Control, fixed: Option<f64>, average: f64) {
    // A random first wait keeps processes started together from polling together.
    let first = Duration::from_secs_f64(rand::random::<f64>() * fixed.unwrap_or(average).min(5.0));
    tokio::time::sleep(first).await;
    loop {
        if !control.is_quiet() {
            match poller.enqueue_due().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(jobs = n, "enqueued due scheduled/retry jobs"),
                Err(e) => tracing::warn!(error = %e, "scheduled poll failed"),
            }
        }
        tokio::time::sleep(poller.next_interval(fixed, average).await).await;
    }
}

async fn dump_loop(busy: Arc<Busy>, control: Control) {
    loop {
        control.inner.dump.notified().await;
        let running = busy.snapshot();
        tracing::info!(running = running.len(), "state dump");
        for (tid, unit, run_at) in running {
            tracing::info!(tid = format!("{tid:x}"), queue = %unit.queue, run_at, payload = %String::from_utf8_lossy(&unit.raw), "running");
        }
    }
}
