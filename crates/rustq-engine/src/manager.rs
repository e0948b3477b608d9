//! Fetches jobs and runs them, at most `concurrency` at once: Sidekiq's manager and its
//! processors. When the process quiets it stops fetching and gives back what has not started;
//! when it stops it waits for running jobs up to the shutdown timeout and gives back the rest.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::control::Control;
use crate::fetch::{Fetcher, Waiters, BLOCK_SECS};
use crate::handler::Started;
use crate::heartbeat::Busy;
use crate::holdings::Holdings;
use crate::processor::{Decision, Processor};
use crate::service::{BoxFuture, Service};
use crate::work::{Action, Completion, UnitOfWork};

/// Jobs shorter than this on average may be fetched ahead of free slots (`prefetch`); longer
/// ones are fetched one free slot at a time, so they spread over every process as with Sidekiq.
const PREFETCH_BELOW_US: u64 = 5_000;

/// Most finished jobs that may wait to be written back before fetching pauses. While Redis
/// refuses or cannot take acknowledgements, finished jobs would otherwise pile up in memory
/// (and all run again after a restart) while fetching went on; with it, a process holds at most
/// `concurrency + prefetch + fetch_batch + ACK_BACKLOG` jobs, whatever happens to its writes.
/// Twice the acker's batch, so a healthy acker never makes fetching wait.
pub const ACK_BACKLOG: usize = 2 * crate::ack::BATCH;

/// The fetch-and-run service.
pub struct Manager {
    /// Takes jobs with sweeps.
    pub fetcher: Fetcher,
    /// Takes jobs with blocking moves while idle.
    pub waiters: Waiters,
    /// Runs each job.
    pub processor: Arc<Processor>,
    /// Where finished jobs go.
    pub ack_tx: mpsc::UnboundedSender<Completion>,
    /// Jobs running now.
    pub busy: Arc<Busy>,
    /// Jobs fetched and not yet written back (the fetcher's and the acker's count).
    pub holdings: Arc<Holdings>,
    /// The process's control.
    pub control: Control,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Jobs fetched ahead of free slots, while jobs are short.
    pub prefetch: usize,
    /// Most jobs taken per sweep.
    pub fetch_batch: usize,
    /// How long running jobs may finish once the process stops.
    pub shutdown_timeout: Duration,
    /// `WorkerOptions::dispatch_ahead`: jobs go to their handler at once, and each starts when
    /// it is claimed (a thread of the handler's own, or a permit the processor waits for).
    pub dispatch_ahead: bool,
}

impl Service for Manager {
    fn name(&self) -> &'static str {
        "manager"
    }

    fn finishes(&self) -> bool {
        true
    }

    fn run(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(self.manage())
    }
}

impl Manager {
    async fn manage(self) {
        let Manager {
            fetcher,
            mut waiters,
            processor,
            ack_tx,
            busy,
            holdings,
            control,
            concurrency,
            prefetch,
            fetch_batch,
            shutdown_timeout,
            dispatch_ahead,
        } = self;
        let pool = JobPool {
            processor,
            ack_tx: ack_tx.clone(),
            busy: busy.clone(),
            running: Arc::new(Semaphore::new(concurrency)),
            dispatch_ahead,
            intake: Arc::new(Intake::default()),
            holdings,
            control: control.clone(),
        };
        let mut tasks = JoinSet::new();
        fetch_loop(
            &fetcher,
            &mut waiters,
            &pool,
            &mut tasks,
            concurrency,
            prefetch,
            fetch_batch,
        )
        .await;
        // Jobs a waiter moved in as the process quieted never started: back to their queues
        // now, so a quiet process holds only what it runs.
        for unit in waiters.finish(!control.is_stopping()).await {
            let _ = ack_tx.send(Completion::new(unit, Action::Requeue));
        }
        // Running jobs hold their own handles; the pool's must go, or the acker (waiting for
        // every `ack_tx`) and a host's job channel (in the processor's handlers) never close.
        drop(pool);

        // Quiet: nothing new is fetched; the heartbeat goes on (quiet=true) until stop.
        control.stopped().await;
        tracing::info!(
            running = busy.len(),
            timeout_s = shutdown_timeout.as_secs_f64(),
            "shutting down"
        );
        let deadline = tokio::time::sleep(shutdown_timeout);
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
            let _ = ack_tx.send(Completion::new(unit, Action::Requeue));
        }
    }
}

/// Jobs fetched and not finished, and how long jobs take lately.
#[derive(Default)]
struct Intake {
    held: AtomicUsize,
    freed: Notify,
    /// Moving average of job run time, in microseconds.
    avg_us: AtomicU64,
}

impl Intake {
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
    (action, writes): Decision,
    ack_tx: &mpsc::UnboundedSender<Completion>,
    intake: &Intake,
) {
    let unit = Arc::try_unwrap(unit).unwrap_or_else(|shared| UnitOfWork::clone(&shared));
    let _ = ack_tx.send(Completion {
        unit,
        action,
        writes,
    });
    intake.held.fetch_sub(1, Ordering::SeqCst);
    intake.freed.notify_one();
}

/// Runs fetched jobs: at most `concurrency` at once (`running`), the rest waiting their turn.
struct JobPool {
    processor: Arc<Processor>,
    ack_tx: mpsc::UnboundedSender<Completion>,
    busy: Arc<Busy>,
    running: Arc<Semaphore>,
    dispatch_ahead: bool,
    intake: Arc<Intake>,
    holdings: Arc<Holdings>,
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
        self.intake.held.fetch_add(1, Ordering::SeqCst);
        let unit = Arc::new(unit);
        let ack_tx = self.ack_tx.clone();
        let busy = self.busy.clone();
        let intake = self.intake.clone();
        let control = self.control.clone();
        let processor = self.processor.clone();
        let mut first_poll = Context::from_waker(Waker::noop());
        if self.dispatch_ahead {
            // Busy and timed from the moment the job is claimed.
            let begun = Arc::new(std::sync::Mutex::new(None));
            let started = {
                let (busy, unit, begun) = (busy.clone(), unit.clone(), begun.clone());
                Started::new(move || {
                    let tid = busy.start(unit);
                    *begun.lock().unwrap_or_else(|p| p.into_inner()) = Some((tid, Instant::now()));
                })
            };
            let mut run = {
                let unit = unit.clone();
                Box::pin(async move { processor.process(&unit, started).await })
            };
            let first = run.as_mut().poll(&mut first_poll);
            tasks.spawn(async move {
                let decision = match first {
                    Poll::Ready(decision) => decision,
                    Poll::Pending => run.await,
                };
                let begun = begun.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some((tid, at)) = begun {
                    busy.finish(tid);
                    intake.record(at.elapsed());
                }
                finish(unit, decision, &ack_tx, &intake);
            });
        } else {
            let mut permit = Box::pin(self.running.clone().acquire_owned());
            let first = permit.as_mut().poll(&mut first_poll);
            tasks.spawn(async move {
                let permit = match first {
                    Poll::Ready(permit) => permit.ok(),
                    // A job fetched ahead that has not started goes back when the process quiets.
                    Poll::Pending => control
                        .start_unless_quiet(permit)
                        .await
                        .and_then(Result::ok),
                };
                let decision = match permit {
                    None => (Action::Requeue, Vec::new()),
                    Some(_permit) => {
                        let tid = busy.start(unit.clone());
                        let at = Instant::now();
                        // Busy already; a handler with threads of its own still claims the job
                        // (its time limit starts then, and it can be taken back until then).
                        let decision = processor.process(&unit, Started::new(|| {})).await;
                        busy.finish(tid);
                        intake.record(at.elapsed());
                        decision
                    }
                };
                finish(unit, decision, &ack_tx, &intake);
            });
        }
    }

    /// How many more jobs may be taken now: none while [`ACK_BACKLOG`] finished jobs wait to
    /// be written back.
    fn room(&self, concurrency: usize, prefetch: usize) -> usize {
        let held = self.intake.held.load(Ordering::SeqCst);
        if self.holdings.total().saturating_sub(held) >= ACK_BACKLOG {
            return 0;
        }
        let fast = self.intake.avg_us.load(Ordering::Relaxed) < PREFETCH_BELOW_US;
        let limit = concurrency + if fast { prefetch } else { 0 };
        limit.saturating_sub(held)
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
        let held = pool.intake.held.load(Ordering::SeqCst);
        if room == 0 || (held >= concurrency && room < (prefetch / 2).clamp(1, batch)) {
            tokio::select! {
                _ = pool.intake.freed.notified() => {}
                _ = pool.holdings.released() => {}
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
