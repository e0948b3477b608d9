//! `Rustq::Native::Worker`: the engine of `crates/rustq-engine` running inside a Ruby process,
//! for `bundle exec rustq-worker`.
//!
//! Rust does everything but run the job: fetch, check points, the time limit, the give-back of
//! jobs not started when the process quiets, retries, scheduling, heartbeat, stats, shutdown.
//! Every job goes to the engine's fallback handler ([`crate::ruby_handler`]), which queues it for
//! the Ruby threads of `Rustq::CLI` ([`crate::job_queue`]) and waits for their answer, filed
//! back in batches ([`crate::answers`]) and read by [`crate::failure`]:
//!
//! ```text
//! engine task ── Dispatch{tape, json, started, reply, …} ──▶ queue ──▶ Ruby thread: run_jobs
//!      ▲                                                                   │ processor.process
//!      └──────────────── oneshot: Ok(()) / Err(Failure) ◀──── its answer ◀─┘
//! ```
//!
//! Ruby threads wait for the queue, and the main thread for the engine, with the GVL released.
//! No Ruby value ever reaches a tokio thread: payloads cross as a [`to_ruby::Tape`] the engine's
//! runtime writes from the parsed job, turned into a Ruby Hash by the Ruby thread that takes it;
//! answers cross as `Failure`s built under the GVL. This file is the bridge: the Ruby class, the
//! loop each Ruby thread runs, and the raise that stops a job the engine gave up on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use magnus::error::ErrorType;
use magnus::value::{BoxValue, Opaque};
use magnus::{block::Proc, prelude::*, Error, IntoValue, RHash, RString, Ruby, Value};
use rustq_engine::cli::{self, Parsed};
use rustq_engine::job_retry::{Outlook, RetryPolicy};
use rustq_engine::{
    failure::class, Control, Failure, JobResult, Registry, Signal, Worker as Engine,
};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch, Notify};

use crate::answers::{collect, Answers};
use crate::failure::{failure, resume_jump, unreportable};
use crate::job_queue::{Dispatch, JobQueue, QueueSender, Wait};
use crate::ruby_handler::RubyHandler;
use crate::{client, errors, gvl, to_ruby};

/// How `Worker::run` ended, once it has.
type Outcome = Option<Result<(), String>>;

/// `Rustq::Native::Worker`: the engine and the channel its jobs come through.
#[magnus::wrap(class = "Rustq::Native::Worker", free_immediately, size)]
pub struct Worker {
    runtime: Arc<Runtime>,
    control: Control,
    identity: String,
    concurrency: usize,
    wire_version: u8,
    allowed_jobs: Option<Vec<String>>,
    allowed_mailers: Option<Vec<String>>,
    require: Option<String>,
    environment: Option<String>,
    /// Taken by `start`.
    pending: Mutex<Option<(Engine, Parsed)>>,
    jobs: Arc<JobQueue>,
    answers: Arc<Answers>,
    /// The Ruby threads in `run_jobs`.
    running: Mutex<Vec<Arc<Seat>>>,
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
struct Seat {
    /// The Ruby Thread: alive while registered, since its own `run_jobs` call removes it.
    thread: Opaque<Value>,
    /// The running job's answer: taken by the thread when the job ends, or by
    /// `stop_abandoned` once the engine no longer waits for it.
    current: Mutex<Option<oneshot::Sender<JobResult>>>,
    /// The running (or last) job's JSON as stored in Redis.
    json: Mutex<Option<Arc<str>>>,
    /// The running (or last) job's payload, for `Running#payload`.
    tape: Mutex<Option<to_ruby::Tape>>,
    /// The running (or last) job's trace context, for `Running#trace_context`.
    trace: Mutex<Vec<(&'static str, String)>>,
    /// `stop_abandoned` took this thread's job and has not finished raising in it yet.
    raising: AtomicBool,
}

/// Keeps a [`Seat`] in the worker's list for as long as its `run_jobs` call lasts.
struct Registered<'a> {
    running: &'a Mutex<Vec<Arc<Seat>>>,
    seat: Arc<Seat>,
}

impl<'a> Registered<'a> {
    fn new(running: &'a Mutex<Vec<Arc<Seat>>>, seat: Arc<Seat>) -> Self {
        lock(running).push(seat.clone());
        Registered { running, seat }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(self.running).retain(|s| !Arc::ptr_eq(s, &self.seat));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Rustq::Native::Running`: what a Ruby thread's jobs get as `source`; one per thread. It
/// keeps the thread alive for as long as it lives itself, so the [`Seat`]'s thread is never a
/// dangling VALUE (should `run_jobs` be left by a longjmp that skips its cleanup, its `source`
/// stays registered with the GC).
#[derive(magnus::TypedData)]
#[magnus(class = "Rustq::Native::Running", free_immediately, size, mark)]
pub struct Running {
    seat: Arc<Seat>,
}

impl magnus::DataTypeFunctions for Running {
    fn mark(&self, marker: &magnus::gc::Marker) {
        marker.mark(self.seat.thread);
    }
}

impl Running {
    /// `payload`: the running job's payload as a new Hash, as `JSON.parse` makes it (nil before
    /// the first job).
    pub fn payload(ruby: &Ruby, rb_self: &Running) -> Option<RHash> {
        // Copied out first: no lock is held while Ruby allocates.
        let tape = lock(&rb_self.seat.tape).clone();
        tape.map(|tape| to_ruby::hash_from_tape(ruby, &tape))
    }

    /// `trace_context`: the running job's W3C trace context (`traceparent`, `tracestate`,
    /// `baggage`) as a Hash, for `OpenTelemetry.propagation.extract`: its engine span's when the
    /// engine exports spans, else its push's; nil when it has none.
    pub fn trace_context(ruby: &Ruby, rb_self: &Running) -> Result<Option<RHash>, Error> {
        let pairs = lock(&rb_self.seat.trace).clone();
        if pairs.is_empty() {
            return Ok(None);
        }
        let hash = ruby.hash_new();
        for (key, value) in pairs {
            hash.aset(key, value)?;
        }
        Ok(Some(hash))
    }

    /// `payload_json`: the running job's JSON as it was stored in Redis (what Sidekiq's error
    /// handlers get as `jobstr`).
    pub fn payload_json(&self) -> String {
        lock(&self.seat.json)
            .as_deref()
            .map(str::to_string)
            .unwrap_or_default()
    }
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
        let mut registry = Registry::new();
        registry.add_configured(&options.handlers);
        let queue = Arc::new(JobQueue::default());
        registry.fallback(RubyHandler {
            jobs: QueueSender(queue.clone()),
            policy: RetryPolicy {
                wire: options.wire,
                max_retries: options.max_retries,
            },
            active_job_wrappers,
        });
        // Ruby threads take jobs fetched ahead straight from the engine. Not with `exec`
        // handlers from the config file: those would run in seats of their own on top of the
        // Ruby threads, so every job goes through the engine's `concurrency` seats instead.
        options.dispatch_ahead = options.handlers.is_empty();
        // systemd's watchdog is pinged from a Ruby thread (`ping_watchdog`), as Sidekiq pings it:
        // a VM stuck holding the GVL then stops the pings and gets restarted.
        let watchdog = rustq_engine::systemd::watchdog_interval().and_then(|every| {
            let notifier = rustq_engine::systemd::Notifier::from_env()?;
            Some(Watchdog { notifier, every })
        });
        options.host_watchdog = true;
        let engine = Engine::new(options, registry);
        let (finish, outcome) = watch::channel(None);
        Ok(Worker {
            runtime: client::session(ruby)?.runtime(),
            control: engine.control(),
            identity: engine.identity().to_string(),
            concurrency: parsed.options.concurrency,
            wire_version: parsed.options.wire.number(),
            allowed_jobs: parsed.options.allowed_jobs.clone(),
            allowed_mailers: parsed.options.allowed_mailers.clone(),
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

    /// `allowed_jobs`: the config file's list, or nil when every job class may run.
    pub fn allowed_jobs(&self) -> Option<Vec<String>> {
        self.allowed_jobs.clone()
    }

    /// `allowed_mailers`: the config file's list, or nil when every mailer may be called.
    pub fn allowed_mailers(&self) -> Option<Vec<String>> {
        self.allowed_mailers.clone()
    }

    /// `wire_version`: 7 or 8, how the engine writes timestamps.
    pub fn wire_version(&self) -> u8 {
        self.wire_version
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
        redis.check().map_err(|e| errors::from_core(ruby, e))?;
        let redacted = redis.redacted_url();
        options.redis = redis;
        Ok(Some(redacted))
    }

    /// `listen`: opens the HTTP endpoint's socket (`--http`/`http:`) before the app boots, so a port
    /// in use or an address this host does not have is a usage error (exit 2) naming it.
    pub fn listen(ruby: &Ruby, rb_self: &Worker) -> Result<(), Error> {
        let mut pending = rb_self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some((engine, _)) = pending.as_mut() else {
            return Err(errors::internal(
                ruby,
                "this worker has already been started",
            ));
        };
        engine
            .listen()
            .map_err(|e| errors::usage(ruby, format!("rustq-worker: {e}\n"), 2))
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
            // The last jobs' spans go out before the process exits.
            let _ = tokio::task::spawn_blocking(rustq_engine::trace::shutdown).await;
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
        let seat = Arc::new(Seat {
            thread: Opaque::from(ruby.thread_current().as_value()),
            current: Mutex::new(None),
            json: Mutex::new(None),
            tape: Mutex::new(None),
            trace: Mutex::new(Vec::new()),
            raising: AtomicBool::new(false),
        });
        let _registered = Registered::new(&rb_self.running, seat.clone());
        let source = BoxValue::new(
            Running {
                seat: Arc::clone(&seat),
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
            *lock(&seat.json) = Some(dispatch.json);
            *lock(&seat.trace) = dispatch.trace;
            *lock(&seat.current) = Some(dispatch.reply);
            let answer = match &dispatch.active_job {
                Some(parts) => {
                    let data = to_ruby::first_arg_from_tape(ruby, &dispatch.tape)
                        .expect("an ActiveJob payload's args[0] is on its tape");
                    let jid = ruby.str_new(&parts.jid);
                    let wrapper = to_ruby::word(ruby, &parts.wrapper);
                    *lock(&seat.tape) = Some(dispatch.tape);
                    processor.funcall::<_, _, Value>(
                        process_active_job,
                        (data, jid, wrapper, queue, outlook, *source),
                    )
                }
                None => {
                    let payload = to_ruby::hash_from_tape(ruby, &dispatch.tape);
                    *lock(&seat.tape) = Some(dispatch.tape);
                    processor.funcall::<_, _, Value>(process, (payload, queue, outlook, *source))
                }
            };
            let Some(reply) = lock(&seat.current).take() else {
                // `stop_abandoned` took the job (the engine has given up on it) and raises
                // Rustq::JobTimeout in this thread: once it has, the exception, if not already
                // delivered in the job, is cleared here so it cannot reach the next job.
                // `discard_late_timeout` also lets the GVL go, should the raise still be under way.
                loop {
                    let raising = seat.raising.load(Ordering::SeqCst);
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
                    .and_then(failure)
                    .unwrap_or_else(|e| unreportable(ruby, &e))),
                Err(e) => Err(match e.error_type() {
                    ErrorType::Jump(_) => {
                        Failure::retry(class::ABANDONED, "the job's Ruby thread was killed")
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
        let seats: Vec<Arc<Seat>> = lock(&rb_self.running).clone();
        let mut stopped = 0;
        for seat in seats {
            {
                let mut current = lock(&seat.current);
                if !current.as_ref().is_some_and(|reply| reply.is_closed()) {
                    continue;
                }
                seat.raising.store(true, Ordering::SeqCst);
                current.take();
            }
            let thread = ruby.get_inner(seat.thread);
            let raised = thread.funcall::<_, _, Value>("raise", (exception_class, message));
            seat.raising.store(false, Ordering::SeqCst);
            match raised {
                Ok(_) => stopped += 1,
                Err(e) if matches!(e.error_type(), ErrorType::Jump(_)) => return Err(e),
                // The thread has just ended: nothing to stop.
                Err(_) => {}
            }
        }
        Ok(stopped)
    }

    /// `signal(name)`: what the engine's table of signals says ([`rustq_engine::control::SIGNALS`]:
    /// "TERM"/"INT" stop, "TSTP"/"USR1" quiet, "TTIN" logs the running jobs).
    pub fn signal(ruby: &Ruby, rb_self: &Worker, name: String) -> Result<(), Error> {
        match Signal::from_name(&name) {
            Some(signal) => {
                rb_self.control.apply(signal);
                Ok(())
            }
            None => Err(Error::new(
                ruby.exception_arg_error(),
                format!(
                    "rustq-worker does not handle SIG{}",
                    name.trim_start_matches("SIG")
                ),
            )),
        }
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

/// `Rustq::Native.capsules_refused(what)`: the engine's one text for refused capsules.
pub fn capsules_refused(what: String) -> String {
    rustq_engine::options::capsules_refused(&what)
}

/// `Rustq::Native.signals`: every signal the engine answers and what it means ("stop", "quiet",
/// "dump"), as `[name, meaning]` pairs from its one table.
pub fn signals() -> Vec<(&'static str, &'static str)> {
    rustq_engine::control::SIGNALS
        .iter()
        .map(|(name, signal)| {
            let meaning = match signal {
                Signal::Stop => "stop",
                Signal::Quiet => "quiet",
                _ => "dump",
            };
            (*name, meaning)
        })
        .collect()
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
