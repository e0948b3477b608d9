//! `Rustq::Native::Worker`: the engine of `crates/rustq-engine` running inside a Ruby process,
//! for `bundle exec rustq-worker`.
//!
//! Rust does everything but run the job: fetch, retries, scheduling, heartbeat, stats, shutdown.
//! Every job goes to the engine's fallback handler, which hands it over a channel to the Ruby
//! threads of `Rustq::CLI` and waits for their answer:
//!
//! ```text
//! engine task ── Dispatch{tape, json, queue, outlook, reply} ──▶ queue ──▶ Ruby thread: run_jobs
//!      ▲                                                                         │ processor.process
//!      └──────────────── oneshot: Ok(()) / Err(Failure) ◀──── its answer ◀───────┘
//! ```
//!
//! Ruby threads wait for the queue, and the main thread for the engine, with the GVL released.
//! No Ruby value ever reaches a tokio thread: payloads cross as a [`to_ruby::Tape`] the engine's
//! runtime writes from the parsed job, turned into a Ruby Hash by the Ruby thread that takes it;
//! answers cross as `Failure`s built under the GVL.
//!
//! Only one Ruby thread runs at a time, so the queue wakes idle threads sparingly: a thread
//! that finishes a job takes the next one without letting go of the GVL, and at most one idle
//! thread is woken at a time, to take a job should the running one block (on I/O, a sleep). It
//! takes its job only once it holds the GVL, so a job never waits in a thread that cannot run.
//! (Waking a thread per job, each to wait for the GVL, cost more than a no-op job itself.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;

use magnus::error::ErrorType;
use magnus::value::{BoxValue, Opaque};
use magnus::{
    block::Proc, prelude::*, Error, IntoValue, RArray, RHash, RString, Ruby, Symbol, Value,
};
use rustq_engine::cli::{self, Parsed};
use rustq_engine::job_retry::{self, Outlook, RetryPolicy};
use rustq_engine::{
    Backoff, Control, Failure, FailureKind, JobContext, JobResult, Registry, Started,
    Worker as Engine,
};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch, Notify};

use crate::{client, errors, gvl, to_ruby};

/// One job on its way to a Ruby thread. `claim` decides, once, whether a Ruby thread takes it
/// (`TAKEN`) or the engine gives it back unstarted because the process is quieting (`WITHDRAWN`).
struct Dispatch {
    /// The payload as the engine parsed it, written out for the Ruby thread that makes it a Hash
    /// (the parsed payload itself stays with the engine, which frees it on its own runtime).
    tape: to_ruby::Tape,
    /// For an ActiveJob wrapper's payload: the wrapper's class name and the jid. The Ruby thread
    /// then makes only `args[0]` (ActiveJob's own data) a Hash (`process_active_job`), and the
    /// whole payload only should the job fail.
    active_job: Option<ActiveJobParts>,
    /// Its JSON as stored in Redis (for error handlers' `jobstr`).
    json: Arc<str>,
    queue: String,
    outlook: Outlook,
    claim: Arc<AtomicU8>,
    /// Marks the job busy (Web UI, heartbeat) from the moment a Ruby thread takes it.
    started: Started,
    /// With a time limit: told when a Ruby thread takes the job, since its limit starts then.
    taken: Option<oneshot::Sender<()>>,
    reply: oneshot::Sender<JobResult>,
}

struct ActiveJobParts {
    wrapper: String,
    jid: String,
}

impl ActiveJobParts {
    /// `wrappers`: the class names ActiveJob adapters put on a payload
    /// (`Rustq::Job::ACTIVE_JOB_WRAPPERS`).
    fn of(
        job: &rustq_core::Job,
        tape: &to_ruby::Tape,
        wrappers: &[String],
    ) -> Option<ActiveJobParts> {
        let wrapper = job.class()?;
        if !tape.has_first_arg() || !wrappers.iter().any(|w| w == wrapper) {
            return None;
        }
        Some(ActiveJobParts {
            wrapper: wrapper.to_string(),
            jid: job.jid()?.to_string(),
        })
    }
}

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Dispatch {
    /// Takes the job for the calling Ruby thread; false if it is no longer to be run.
    fn take(&mut self) -> bool {
        if self.reply.is_closed()
            || self
                .claim
                .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        self.started.signal();
        if let Some(taken) = self.taken.take() {
            let _ = taken.send(());
        }
        true
    }
}

/// The jobs handed to the Ruby threads, in fetch order.
#[derive(Default)]
struct JobQueue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Dispatch>,
    /// The engine has let go of its handler: no more jobs will come.
    closed: bool,
    /// Ruby threads waiting for a job, without the GVL.
    idle: usize,
    /// Where the one wake-up that may be under way is; while one is, no other thread is woken.
    waking: Waking,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Waking {
    #[default]
    No,
    /// Granted to the idle threads (one was notified) and not yet claimed by one.
    Granted,
    /// Claimed by a thread that has not yet looked at the queue holding the GVL.
    Claimed,
}

/// How a wait of a Ruby thread ended.
enum Wait {
    /// Woken to take a job: the wake-up is this thread's to end (see [`JobQueue::next`]).
    Woken,
    /// Nothing to wait for: a job came or the engine stopped before the thread went to sleep.
    Look,
    /// `Thread#kill`/`#raise` or a signal: back to Ruby at once.
    Interrupted,
}

impl JobQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every change to the state is complete before anything that could panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, dispatch: Dispatch) {
        let mut state = self.lock();
        state.jobs.push_back(dispatch);
        self.wake_one(&mut state);
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Wakes an idle thread, unless one is already on its way.
    fn wake_one(&self, state: &mut QueueState) {
        if state.waking == Waking::No && state.idle > 0 {
            state.waking = Waking::Granted;
            self.wake.notify_one();
        }
    }

    /// A thread woken to take a job goes back to Ruby without looking (an interrupt): the
    /// next idle thread may be woken in its place.
    fn forgo_wake(&self) {
        let mut state = self.lock();
        state.waking = Waking::No;
        if !state.jobs.is_empty() {
            self.wake_one(&mut state);
        }
    }

    /// Holding the GVL: the next job to run, `Err(())` once the engine has stopped, or
    /// `Ok(None)` when there is none yet (the caller then `wait`s). `woken` says the caller was
    /// woken to look, which lets the next idle thread be woken.
    fn next(&self, woken: bool) -> Result<Option<Dispatch>, ()> {
        loop {
            let mut state = self.lock();
            if woken {
                state.waking = Waking::No;
            }
            let Some(mut dispatch) = state.jobs.pop_front() else {
                return if state.closed { Err(()) } else { Ok(None) };
            };
            // More jobs wait: have a thread ready to take one should this one block.
            if !state.jobs.is_empty() {
                self.wake_one(&mut state);
            }
            drop(state);
            if dispatch.take() {
                return Ok(Some(dispatch));
            }
        }
    }

    /// Without the GVL: sleeps until woken to look at the queue again, or interrupted.
    fn wait(&self, interrupted: &AtomicBool) -> Wait {
        let mut state = self.lock();
        if !state.jobs.is_empty() || state.closed {
            return Wait::Look;
        }
        state.idle += 1;
        loop {
            if interrupted.load(Ordering::Acquire) {
                state.idle -= 1;
                // A wake-up granted while no other thread is left idle to claim it lapses. (With
                // others left, one claims it: the interrupt woke them all.)
                if state.waking == Waking::Granted && state.idle == 0 {
                    state.waking = Waking::No;
                }
                return Wait::Interrupted;
            }
            if state.waking == Waking::Granted {
                state.waking = Waking::Claimed;
                state.idle -= 1;
                return Wait::Woken;
            }
            if state.closed {
                state.idle -= 1;
                return Wait::Look;
            }
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The engine's end of the queue: dropping it (the engine has stopped) ends the Ruby threads'
/// loops once no job is left.
struct QueueSender(Arc<JobQueue>);

impl Drop for QueueSender {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Answers of finished jobs on their way back to the engine. A Ruby thread files its answer here
/// rather than waking the engine's runtime for each job: waking a parked runtime thread cost the
/// Ruby thread ~10 µs per job, a fifth of a no-op ActiveJob job. [`collect`] hands them over
/// every millisecond while jobs run, at once when the Ruby threads have run out of jobs (so the
/// engine fetches more) or 64 are waiting, and rests after 100 ms without any.
#[derive(Default)]
struct Answers {
    pending: Mutex<Vec<(oneshot::Sender<JobResult>, JobResult)>>,
    wake: Notify,
    /// `collect` waits for a wake instead of ticking.
    resting: AtomicBool,
}

/// Answers waiting past this many wake the collector at once.
const ANSWERS_BATCH: usize = 32;

impl Answers {
    fn file(&self, reply: oneshot::Sender<JobResult>, result: JobResult, out_of_jobs: bool) {
        let waiting = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push((reply, result));
            pending.len()
        };
        if out_of_jobs || waiting >= ANSWERS_BATCH || self.resting.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Hands every waiting answer to its engine task; how many there were.
    fn deliver(&self) -> usize {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let count = batch.len();
        for (reply, result) in batch {
            // The engine task may have stopped waiting (time limit, shutdown): nothing to do.
            let _ = reply.send(result);
        }
        count
    }
}

/// Runs on the engine's runtime for as long as the engine does (see [`Answers`]).
async fn collect(answers: Arc<Answers>) {
    let mut quiet_ticks = 0;
    loop {
        if quiet_ticks >= 100 {
            answers.resting.store(true, Ordering::SeqCst);
            // Whatever was filed before `resting` was set is delivered here; anything filed after
            // it sees `resting` and wakes us.
            if answers.deliver() == 0 {
                answers.wake.notified().await;
            }
            answers.resting.store(false, Ordering::SeqCst);
            quiet_ticks = 0;
        } else {
            tokio::select! {
                () = answers.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        if answers.deliver() == 0 {
            quiet_ticks += 1;
        } else {
            quiet_ticks = 0;
        }
    }
}

/// The fallback handler: every job class is resolved and run by Ruby.
struct RubyHandler {
    jobs: QueueSender,
    policy: RetryPolicy,
    /// `--job-timeout`, counted from when a Ruby thread takes the job (not while it waits for a
    /// thread still busy with a job that went over its own limit).
    time_limit: Option<Duration>,
    /// Set once the engine exists: jobs still waiting for a thread go back when it quiets.
    control: Arc<OnceLock<Control>>,
    /// `Rustq::Job::ACTIVE_JOB_WRAPPERS`: payloads of these classes take the ActiveJob path.
    active_job_wrappers: Vec<String>,
}

impl rustq_engine::Handler for RubyHandler {
    fn signals_start(&self) -> bool {
        true
    }

    fn perform(&self, ctx: JobContext) -> rustq_engine::handler::BoxFuture<JobResult> {
        let (reply, answer) = oneshot::channel();
        let (taken, taken_rx) = match self.time_limit {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let claim = Arc::new(AtomicU8::new(WAITING));
        let tape = to_ruby::Tape::of(ctx.job().fields());
        self.jobs.0.push(Dispatch {
            active_job: ActiveJobParts::of(ctx.job(), &tape, &self.active_job_wrappers),
            tape,
            json: ctx.shared_payload_json(),
            queue: ctx.queue().to_string(),
            outlook: job_retry::outlook(ctx.job(), None, self.policy, rustq_core::wire::now_secs()),
            claim: claim.clone(),
            started: ctx.start_signal(),
            taken,
            reply,
        });
        let time_limit = self.time_limit;
        let control = self.control.get().cloned();
        Box::pin(async move {
            let quieted = async {
                match &control {
                    Some(control) => control.quieted().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(quieted);
            // A reply dropped unanswered means the Ruby thread died with the job (or, before it
            // was taken, that the Ruby threads are gone).
            let answered = async {
                answer.await.unwrap_or_else(|_| {
                    Err(Failure::retry(
                        "Rustq::JobAbandoned",
                        "the Ruby thread running this job ended without reporting back",
                    ))
                })
            };
            tokio::pin!(answered);
            let withdraw = || {
                claim
                    .compare_exchange(WAITING, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            };
            let (Some(limit), Some(mut taken_rx)) = (time_limit, taken_rx) else {
                // No time limit: only the answer, unless the process quiets before a thread
                // has taken the job.
                return tokio::select! {
                    biased;
                    result = &mut answered => result,
                    () = &mut quieted => {
                        if withdraw() {
                            return Err(Failure::requeue());
                        }
                        answered.await
                    }
                };
            };
            let taken = tokio::select! {
                biased;
                taken = &mut taken_rx => taken.is_ok(),
                () = &mut quieted => {
                    if withdraw() {
                        return Err(Failure::requeue());
                    }
                    // A thread has just taken it: wait for it to say so.
                    (&mut taken_rx).await.is_ok()
                }
            };
            if !taken {
                return Err(Failure::retry(
                    "Rustq::WorkerStopped",
                    "the Ruby threads of this worker are gone",
                ));
            }
            // Dropping `answer` tells Ruby (`stop_abandoned`) to stop the job's thread.
            tokio::time::timeout(limit, answered)
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::retry(
                        "Rustq::TimeoutError",
                        format!(
                            "job exceeded its time limit of {:.1} s",
                            limit.as_secs_f64()
                        ),
                    ))
                })
        })
    }
}

/// How `Worker::run` ended, once it has.
type Outcome = Option<Result<(), String>>;

/// `Rustq::Native::Worker`: the engine and the channel its jobs come through.
#[magnus::wrap(class = "Rustq::Native::Worker", free_immediately, size)]
pub struct Worker {
    runtime: Arc<Runtime>,
    control: Control,
    identity: String,
    concurrency: usize,
    require: Option<String>,
    environment: Option<String>,
    /// Taken by `start`.
    pending: Mutex<Option<(Engine, Parsed)>>,
    jobs: Arc<JobQueue>,
    answers: Arc<Answers>,
    /// The Ruby threads in `run_jobs`.
    running: Mutex<Vec<Arc<Slot>>>,
    outcome: watch::Receiver<Outcome>,
    finish: Mutex<Option<watch::Sender<Outcome>>>,
    watchdog: Option<Watchdog>,
}

/// systemd's watchdog (`WATCHDOG_USEC` and `NOTIFY_SOCKET`, for this process).
struct Watchdog {
    notifier: rustq_engine::systemd::Notifier,
    every: Duration,
}

/// One Ruby thread in `run_jobs`, and the job it runs (where `stop_abandoned` looks).
struct Slot {
    /// The Ruby Thread: alive while registered, since its own `run_jobs` call removes it.
    thread: Opaque<Value>,
    /// The running job's answer: taken by the thread when the job ends, or by
    /// `stop_abandoned` once the engine no longer waits for it.
    current: Mutex<Option<oneshot::Sender<JobResult>>>,
    /// The running (or last) job's JSON as stored in Redis.
    json: Mutex<Option<Arc<str>>>,
    /// The running (or last) job's payload, for `Running#payload`.
    tape: Mutex<Option<to_ruby::Tape>>,
    /// `stop_abandoned` took this thread's job and has not finished raising in it yet.
    raising: AtomicBool,
}

/// Keeps a [`Slot`] in the worker's list for as long as its `run_jobs` call lasts.
struct Registered<'a> {
    running: &'a Mutex<Vec<Arc<Slot>>>,
    slot: Arc<Slot>,
}

impl<'a> Registered<'a> {
    fn new(running: &'a Mutex<Vec<Arc<Slot>>>, slot: Arc<Slot>) -> Self {
        lock(running).push(slot.clone());
        Registered { running, slot }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(self.running).retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Rustq::Native::Running`: what a Ruby thread's jobs get as `source`; one per thread. It
/// keeps the thread alive for as long as it lives itself, so the [`Slot`]'s thread is never a
/// dangling VALUE (should `run_jobs` be left by a longjmp that skips its cleanup, its `source`
/// stays registered with the GC).
#[derive(magnus::TypedData)]
#[magnus(class = "Rustq::Native::Running", free_immediately, size, mark)]
pub struct Running {
    slot: Arc<Slot>,
}

impl magnus::DataTypeFunctions for Running {
    fn mark(&self, marker: &magnus::gc::Marker) {
        marker.mark(self.slot.thread);
    }
}

impl Running {
    /// `payload`: the running job's payload as a new Hash, as `JSON.parse` makes it (nil before
    /// the first job).
    pub fn payload(ruby: &Ruby, rb_self: &Running) -> Option<RHash> {
        // Copied out first: no lock is held while Ruby allocates.
        let tape = lock(&rb_self.slot.tape).clone();
        tape.map(|tape| to_ruby::hash_from_tape(ruby, &tape))
    }

    /// `payload_json`: the running job's JSON as it was stored in Redis (what Sidekiq's error
    /// handlers get as `jobstr`).
    pub fn payload_json(&self) -> String {
        lock(&self.slot.json)
            .as_deref()
            .map(str::to_string)
            .unwrap_or_default()
    }
}

/// `Thread#kill`/`Thread.exit` inside a job (a jump, not an exception): it goes on once the job
/// has been answered for. Any other outcome has been answered already.
fn resume_jump(answer: Result<Value, Error>) -> Result<(), Error> {
    match answer {
        Err(e) if matches!(e.error_type(), ErrorType::Jump(_)) => Err(e),
        _ => Ok(()),
    }
}

/// The failure for an answer the engine cannot take (a bug in the host), or an exception that
/// escaped `process`: the job still fails rather than lose its thread.
fn unreportable(ruby: &Ruby, error: &Error) -> Failure {
    let class = error
        .value()
        .and_then(|v| {
            let class = if v.is_kind_of(ruby.class_module()) {
                v
            } else {
                v.class().as_value()
            };
            class.funcall::<_, _, String>("name", ()).ok()
        })
        .unwrap_or_else(|| "Rustq::Error".to_string());
    tracing::error!(error_class = %class, error = %error, "rustq-worker: cannot report a job's outcome; the job fails with this error");
    Failure::retry(class, error.to_string())
}

impl Worker {
    /// `Worker.new(argv, erb, active_job_wrappers)`: parses `rustq-worker` arguments (`argv[0]`
    /// is the program name) and the config file exactly as the standalone binary does, except
    /// that ERB in the file is rendered by `erb` (a Proc taking and returning the text: Ruby's
    /// own ERB, as Sidekiq). Payloads whose class is one of `active_job_wrappers` go to
    /// `process_active_job`. `--help`, `--version` and bad options raise `Rustq::UsageError`
    /// whose `status` is the exit code (0 or 2).
    pub fn new(
        ruby: &Ruby,
        argv: Vec<String>,
        erb: Proc,
        active_job_wrappers: Vec<String>,
    ) -> Result<Worker, Error> {
        let render = |text: &str| -> Result<String, String> {
            erb.call::<_, String>((text,)).map_err(|e| e.to_string())
        };
        let parsed = cli::parse_from_with(argv, &render).map_err(|e| {
            let status = if e.exit_code() == 0 { 0 } else { 2 };
            errors::usage(ruby, e.render().to_string(), status)
        })?;
        let mut options = parsed.options.clone();
        // The Ruby handler applies `--job-timeout` itself (see `RubyHandler::time_limit`); the
        // config file's handlers (`noop`, `exec`) keep it as their default and keep working.
        let time_limit = options.job_timeout.take();
        for handler in options.handlers.values_mut() {
            handler.timeout = handler.timeout.or(time_limit);
        }
        let mut registry = Registry::new();
        registry.add_configured(&options.handlers);
        let queue = Arc::new(JobQueue::default());
        let control = Arc::new(OnceLock::new());
        registry.fallback(RubyHandler {
            jobs: QueueSender(queue.clone()),
            policy: RetryPolicy {
                wire: options.wire,
                max_retries: options.max_retries,
            },
            time_limit,
            control: control.clone(),
            active_job_wrappers,
        });
        // Ruby threads take jobs fetched ahead straight from the engine. Not with `exec`
        // handlers from the config file: those would run in slots of their own on top of the
        // Ruby threads, so every job goes through the engine's `concurrency` slots instead.
        options.dispatch_ahead = options.handlers.is_empty();
        // systemd's watchdog is pinged from a Ruby thread (`ping_watchdog`), as Sidekiq pings it:
        // a VM stuck holding the GVL then stops the pings and gets restarted.
        let watchdog = rustq_engine::systemd::watchdog_interval().and_then(|every| {
            let notifier = rustq_engine::systemd::Notifier::from_env()?;
            Some(Watchdog { notifier, every })
        });
        options.host_watchdog = true;
        let engine = Engine::new(options, registry);
        let _ = control.set(engine.control());
        let (finish, outcome) = watch::channel(None);
        Ok(Worker {
            runtime: client::session(ruby)?.runtime(),
            control: engine.control(),
            identity: engine.identity().to_string(),
            concurrency: parsed.options.concurrency,
            require: parsed.require.clone(),
            environment: parsed.environment.clone(),
            pending: Mutex::new(Some((engine, parsed))),
            jobs: queue,
            answers: Arc::default(),
            running: Mutex::default(),
            outcome,
            finish: Mutex::new(Some(finish)),
            watchdog,
        })
    }

    /// `-r`: the file or app directory to load, nil for the current directory.
    pub fn require_path(&self) -> Option<String> {
        self.require.clone()
    }

    /// `-e`, when given.
    pub fn environment(&self) -> Option<String> {
        self.environment.clone()
    }

    /// How many jobs run at once, so how many Ruby threads to start.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// `hostname:pid:<12 hex>`, as in `Sidekiq::ProcessSet`.
    pub fn identity(&self) -> String {
        self.identity.clone()
    }

    /// `adopt_redis_url(url)`: before `start`, the Redis the app's `Sidekiq.configure_server`
    /// names, used unless `--redis-url` or the config file named one (Sidekiq's own order: its
    /// server config wins over `REDIS_URL`). Returns the redacted URL in use from now on, or nil
    /// when it was not adopted.
    pub fn adopt_redis_url(
        ruby: &Ruby,
        rb_self: &Worker,
        url: String,
    ) -> Result<Option<String>, Error> {
        let mut pending = rb_self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some((engine, _)) = pending.as_mut() else {
            return Err(errors::internal(
                ruby,
                "this worker has already been started",
            ));
        };
        let options = engine.options_mut();
        if options.redis_url_given || same_server(&options.redis.url, &url) {
            return Ok(None);
        }
        let mut redis = options.redis.clone();
        redis.url = url;
        redis.client().map_err(|e| errors::from_core(ruby, e))?;
        let redacted = redis.redacted_url();
        options.redis = redis;
        Ok(Some(redacted))
    }

    /// Sets up logging as the flags ask and starts the engine on rustq's runtime. Once.
    pub fn start(ruby: &Ruby, rb_self: &Worker) -> Result<(), Error> {
        let Some((engine, parsed)) = rb_self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Err(errors::internal(
                ruby,
                "this worker has already been started",
            ));
        };
        let finish = rb_self
            .finish
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("taken together with pending");
        // tracing has one subscriber per process; a second worker in one process logs to it too.
        static LOGGING: Once = Once::new();
        LOGGING.call_once(|| parsed.init_logging());
        let collector = rb_self.runtime.spawn(collect(rb_self.answers.clone()));
        let answers = rb_self.answers.clone();
        rb_self.runtime.spawn(async move {
            let outcome = engine.run().await.map_err(|e| e.to_string());
            collector.abort();
            answers.deliver();
            let _ = finish.send(Some(outcome));
        });
        Ok(())
    }

    /// `run_jobs(processor, host)`: the loop of one Ruby thread, until the engine has stopped.
    /// Each job goes to `processor.process(payload, queue, outlook, source)`, whose answer (nil,
    /// or a failure Hash) goes back to the engine. `payload` is the job as a Hash, as
    /// `JSON.parse` would make it (see [`to_ruby`]); `queue` and `outlook` ("retry", "exhausted"
    /// or "no_retry": what a failure will lead to) are frozen Strings; `source` answers
    /// `payload_json` (the job as stored, for error handlers).
    ///
    /// The bookkeeping around each job is native code, where Ruby delivers no interrupt: a
    /// `Rustq::JobTimeout` from [`Worker::stop_abandoned`] can only land inside `process`, or,
    /// raised just as the job ended, is cleared by `host.discard_late_timeout` before the next
    /// one. Jobs are taken holding the GVL and waited for without it; `Thread#kill`/`#raise`
    /// interrupt the wait. A job whose thread is killed (`Thread.exit` inside it) fails as
    /// `Rustq::JobAbandoned`, and the kill goes on.
    pub fn run_jobs(
        ruby: &Ruby,
        rb_self: &Worker,
        processor: Value,
        host: Value,
    ) -> Result<(), Error> {
        let slot = Arc::new(Slot {
            thread: Opaque::from(ruby.thread_current().as_value()),
            current: Mutex::new(None),
            json: Mutex::new(None),
            tape: Mutex::new(None),
            raising: AtomicBool::new(false),
        });
        let _registered = Registered::new(&rb_self.running, slot.clone());
        let source = BoxValue::new(
            Running {
                slot: Arc::clone(&slot),
            }
            .into_value_with(ruby),
        );
        let process = ruby.intern("process");
        let process_active_job = ruby.intern("process_active_job");
        loop {
            let Some(dispatch) = rb_self.take(ruby)? else {
                return Ok(());
            };
            let outlook = match dispatch.outlook {
                Outlook::Retry => "retry",
                Outlook::Exhausted => "exhausted",
                Outlook::NoRetry => "no_retry",
            };
            let queue = to_ruby::word(ruby, &dispatch.queue);
            let outlook = to_ruby::word(ruby, outlook);
            *lock(&slot.json) = Some(dispatch.json);
            *lock(&slot.current) = Some(dispatch.reply);
            let answer = match &dispatch.active_job {
                Some(parts) => {
                    let data = to_ruby::first_arg_from_tape(ruby, &dispatch.tape)
                        .expect("an ActiveJob payload's args[0] is on its tape");
                    let jid = ruby.str_new(&parts.jid);
                    let wrapper = to_ruby::word(ruby, &parts.wrapper);
                    *lock(&slot.tape) = Some(dispatch.tape);
                    processor.funcall::<_, _, Value>(
                        process_active_job,
                        (data, jid, wrapper, queue, outlook, *source),
                    )
                }
                None => {
                    let payload = to_ruby::hash_from_tape(ruby, &dispatch.tape);
                    *lock(&slot.tape) = Some(dispatch.tape);
                    processor.funcall::<_, _, Value>(process, (payload, queue, outlook, *source))
                }
            };
            let Some(reply) = lock(&slot.current).take() else {
                // `stop_abandoned` took the job (the engine has given up on it) and raises
                // Rustq::JobTimeout in this thread: once it has, the exception, if not already
                // delivered in the job, is cleared here so it cannot reach the next job.
                // `discard_late_timeout` also lets the GVL go, should the raise still be under way.
                loop {
                    let raising = slot.raising.load(Ordering::SeqCst);
                    host.funcall::<_, _, Value>("discard_late_timeout", ())?;
                    if !raising {
                        break;
                    }
                }
                resume_jump(answer)?;
                continue;
            };
            let result = match &answer {
                Ok(v) if v.is_nil() => Ok(()),
                Ok(v) => Err(RHash::try_convert(*v)
                    .and_then(|hash| failure(ruby, hash))
                    .unwrap_or_else(|e| unreportable(ruby, &e))),
                Err(e) => Err(match e.error_type() {
                    ErrorType::Jump(_) => {
                        Failure::retry("Rustq::JobAbandoned", "the job's Ruby thread was killed")
                    }
                    _ => unreportable(ruby, e),
                }),
            };
            if !reply.is_closed() {
                let out_of_jobs = rb_self.jobs.lock().jobs.is_empty();
                rb_self.answers.file(reply, result, out_of_jobs);
            }
            resume_jump(answer)?;
        }
    }

    /// Holding the GVL: the next job, waiting for one without the GVL; `None` once the engine has
    /// stopped. A wait cut short without an exception of Ruby's own waits again.
    fn take(&self, ruby: &Ruby) -> Result<Option<Dispatch>, Error> {
        let queue = &self.jobs;
        let mut woken = false;
        loop {
            match queue.next(woken) {
                Ok(Some(dispatch)) => return Ok(Some(dispatch)),
                Err(()) => return Ok(None),
                Ok(None) => {}
            }
            let interrupted = AtomicBool::new(false);
            let woke = std::cell::Cell::new(false);
            let wait = gvl::without_gvl(
                ruby,
                || {
                    let wait = queue.wait(&interrupted);
                    woke.set(matches!(wait, Wait::Woken));
                    wait
                },
                || {
                    interrupted.store(true, Ordering::Release);
                    // Take the lock so the store cannot slip in between the sleeper's check
                    // and its wait.
                    drop(queue.lock());
                    queue.wake.notify_all();
                },
            );
            match wait {
                Ok(Wait::Woken) => woken = true,
                Ok(Wait::Look | Wait::Interrupted) => woken = false,
                // An interrupt raised as the wait ended.
                Err(e) => {
                    if woke.get() {
                        queue.forgo_wake();
                    }
                    return Err(e);
                }
            }
        }
    }

    /// `stop_abandoned(exception_class, message)`: raises the exception in every Ruby thread
    /// whose job the engine no longer waits for (over its time limit: retried; past the shutdown
    /// timeout: back on its queue), so the thread takes the next job. Returns how many.
    ///
    /// No lock is held across the call into Ruby (`Thread#raise` may hand the GVL to another
    /// thread, which may then want it); the thread's `raising` flag tells it to wait for the
    /// raise instead (see `run_jobs`).
    pub fn stop_abandoned(
        ruby: &Ruby,
        rb_self: &Worker,
        exception_class: Value,
        message: RString,
    ) -> Result<usize, Error> {
        let slots: Vec<Arc<Slot>> = lock(&rb_self.running).clone();
        let mut stopped = 0;
        for slot in slots {
            {
                let mut current = lock(&slot.current);
                if !current.as_ref().is_some_and(|reply| reply.is_closed()) {
                    continue;
                }
                slot.raising.store(true, Ordering::SeqCst);
                current.take();
            }
            let thread = ruby.get_inner(slot.thread);
            let raised = thread.funcall::<_, _, Value>("raise", (exception_class, message));
            slot.raising.store(false, Ordering::SeqCst);
            match raised {
                Ok(_) => stopped += 1,
                Err(e) if matches!(e.error_type(), ErrorType::Jump(_)) => return Err(e),
                // The thread has just ended: nothing to stop.
                Err(_) => {}
            }
        }
        Ok(stopped)
    }

    /// `signal(name)`: "TERM"/"INT" stop, "TSTP" quiet, "TTIN" logs the running jobs.
    pub fn signal(ruby: &Ruby, rb_self: &Worker, name: String) -> Result<(), Error> {
        match name.trim_start_matches("SIG") {
            "TERM" | "INT" => rb_self.control.stop(),
            "TSTP" => rb_self.control.quiet(),
            "TTIN" => rb_self.control.dump(),
            other => {
                return Err(Error::new(
                    ruby.exception_arg_error(),
                    format!("rustq-worker does not handle SIG{other}"),
                ))
            }
        }
        Ok(())
    }

    pub fn stopping(&self) -> bool {
        self.control.is_stopping()
    }

    /// `quiet?`: no new jobs are fetched (TSTP, the Web UI's Quiet, or stopping).
    pub fn quiet(&self) -> bool {
        self.control.is_quiet()
    }

    /// `watchdog_interval`: how often (seconds) systemd's watchdog wants a ping, or nil when it
    /// does not watch this process.
    pub fn watchdog_interval(&self) -> Option<f64> {
        self.watchdog.as_ref().map(|w| w.every.as_secs_f64())
    }

    /// `ping_watchdog`: tells systemd's watchdog this process is alive (`WATCHDOG=1`).
    pub fn ping_watchdog(&self) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.notifier.notify("WATCHDOG=1");
        }
    }

    /// `beats`: how many heartbeats the engine has written.
    pub fn beats(&self) -> u64 {
        self.control.beats()
    }

    /// `wait(seconds)`: true once the engine has stopped (raising `Rustq::Error` if it failed),
    /// false after `seconds` or when interrupted (a signal trap runs meanwhile). No GVL held.
    pub fn wait(ruby: &Ruby, rb_self: &Worker, seconds: f64) -> Result<bool, Error> {
        let mut outcome = rb_self.outcome.clone();
        let cancel = Notify::new();
        let limit = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::ZERO);
        let done = gvl::without_gvl(
            ruby,
            || {
                rb_self.runtime.block_on(async {
                    tokio::select! {
                        biased;
                        () = cancel.notified() => None,
                        () = tokio::time::sleep(limit) => None,
                        done = outcome.wait_for(Option::is_some) => match done {
                            Ok(done) => (*done).clone(),
                            Err(_) => Some(Err("the engine's task ended without a result".to_string())),
                        },
                    }
                })
            },
            || cancel.notify_one(),
        )?;
        match done {
            None => Ok(false),
            Some(Ok(())) => Ok(true),
            Some(Err(e)) => Err(errors::internal(ruby, &format!("rustq-worker failed: {e}"))),
        }
    }
}

/// Whether two Redis URLs name the same server, database and user (`redis://h:6379` and
/// `redis://h:6379/0` do).
fn same_server(a: &str, b: &str) -> bool {
    use redis::IntoConnectionInfo;
    match (a.into_connection_info(), b.into_connection_info()) {
        (Ok(a), Ok(b)) => {
            let (x, y) = (a.redis_settings(), b.redis_settings());
            a.addr() == b.addr()
                && x.db() == y.db()
                && x.username() == y.username()
                && x.password() == y.password()
        }
        _ => a == b,
    }
}

fn failure(ruby: &Ruby, hash: RHash) -> Result<Failure, Error> {
    let text = |key: &str| -> Result<String, Error> {
        match hash.get(key).filter(|v| !v.is_nil()) {
            Some(v) => RString::try_convert(v)?.to_string(),
            None => Ok(String::new()),
        }
    };
    let backtrace = match hash.get("backtrace").filter(|v| !v.is_nil()) {
        Some(lines) => RArray::try_convert(lines)?
            .into_iter()
            .map(|line| RString::try_convert(line)?.to_string())
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let failure = Failure::retry(text("error_class")?, text("message")?).with_backtrace(backtrace);
    Ok(match hash.get("retry_in").filter(|v| !v.is_nil()) {
        None => failure,
        Some(value) => apply_retry_in(ruby, failure, value)?,
    })
}

/// `retry_in`: seconds (Integer/Float), or "kill"/:kill (dead set now), "discard"/:discard.
fn apply_retry_in(ruby: &Ruby, failure: Failure, value: Value) -> Result<Failure, Error> {
    let word = if let Some(symbol) = Symbol::from_value(value) {
        Some(symbol.name()?.to_string())
    } else {
        RString::from_value(value)
            .map(|s| s.to_string())
            .transpose()?
    };
    match word.as_deref() {
        Some("kill") => Ok(Failure {
            kind: FailureKind::Kill,
            ..failure
        }),
        Some("discard") => Ok(Failure {
            kind: FailureKind::Discard,
            ..failure
        }),
        Some(other) => Err(Error::new(
            ruby.exception_arg_error(),
            format!("retry_in must be seconds, \"kill\" or \"discard\", not {other:?}"),
        )),
        None => {
            let secs = f64::try_convert(value)?;
            let delay = Duration::try_from_secs_f64(secs).map_err(|_| {
                Error::new(
                    ruby.exception_arg_error(),
                    format!("retry_in must be a positive number of seconds, not {secs}"),
                )
            })?;
            Ok(failure.with_backoff(Backoff::In(delay)))
        }
    }
}
