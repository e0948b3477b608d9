//! What runs a job: handlers registered for job class names, in Rust or as programs.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustq_core::{Job, Retry};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::failure::{class, Backoff, Failure, JobResult};
use crate::options::{HandlerConfig, HandlerSpec};
pub use crate::service::BoxFuture;

/// The moment a job begins, for a handler that runs jobs on threads of its own
/// ([`Handler::signals_start`]): the thread that takes the job [`claims`](Started::claim) it,
/// unless the engine has [`withdrawn`](Started::withdraw) it first (the process quieted while it
/// waited): exactly one of the two wins. The engine counts the job busy and starts its time limit
/// from the claim.
#[derive(Clone, Default)]
pub struct Started(Option<Arc<StartState>>);

type OnStart = Box<dyn FnOnce() + Send>;

struct StartState {
    state: AtomicU8,
    claimed: Notify,
    /// Someone waits in [`Started::claimed`]: only then does a claim notify. (A notify from the
    /// Ruby thread that claims would wake the engine's runtime for every job, ~10 µs each.)
    watched: AtomicBool,
    on_start: Mutex<Option<OnStart>>,
}

const WAITING: u8 = 0;
const CLAIMED: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Started {
    /// A start that runs `on_start` when claimed.
    pub fn new(on_start: impl FnOnce() + Send + 'static) -> Started {
        Started(Some(Arc::new(StartState {
            state: AtomicU8::new(WAITING),
            claimed: Notify::new(),
            watched: AtomicBool::new(false),
            on_start: Mutex::new(Some(Box::new(on_start))),
        })))
    }

    /// The job begins now, on the calling thread. False when the engine has withdrawn it: the
    /// thread must not run it (the engine gives it back to its queue).
    pub fn claim(&self) -> bool {
        let Some(state) = &self.0 else { return true };
        if state
            .state
            .compare_exchange(WAITING, CLAIMED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return state.state.load(Ordering::Acquire) == CLAIMED;
        }
        let on_start = state
            .on_start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(on_start) = on_start {
            on_start();
        }
        if state.watched.load(Ordering::SeqCst) {
            state.claimed.notify_waiters();
        }
        true
    }

    /// The engine takes the job back before any thread claimed it; false when one already has.
    pub fn withdraw(&self) -> bool {
        let Some(state) = &self.0 else { return false };
        state
            .state
            .compare_exchange(WAITING, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Resolves once the job is claimed (never, once withdrawn).
    pub async fn claimed(&self) {
        let Some(state) = &self.0 else { return };
        loop {
            // Registered from its creation: a claim between here and the await still wakes it.
            let notified = state.claimed.notified();
            state.watched.store(true, Ordering::SeqCst);
            if state.state.load(Ordering::SeqCst) == CLAIMED {
                return;
            }
            notified.await;
        }
    }
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Started")
    }
}

/// What a handler sees of the job it runs.
#[derive(Clone, Debug)]
pub struct JobContext {
    job: Arc<Job>,
    queue: String,
    started: Started,
    raw: Option<Arc<str>>,
}

impl JobContext {
    /// The context of `job`, fetched from `queue`, for a handler that runs it where it is called
    /// (no start signal: [`JobContext::started`] is always true).
    pub fn new(job: Arc<Job>, queue: String) -> JobContext {
        JobContext::with_start(job, queue, Started::default())
    }

    /// The context of `job`, fetched from `queue`, with the start signal of a handler that runs
    /// jobs on threads of its own ([`Handler::signals_start`]).
    pub fn with_start(job: Arc<Job>, queue: String, started: Started) -> JobContext {
        JobContext {
            job,
            queue,
            started,
            raw: None,
        }
    }

    /// Keeps the payload's JSON exactly as it was stored, for [`JobContext::payload_json`].
    pub fn with_raw(mut self, raw: Arc<str>) -> JobContext {
        self.raw = Some(raw);
        self
    }

    /// The payload's JSON: as stored in Redis when known, else written from [`JobContext::job`].
    pub fn payload_json(&self) -> std::borrow::Cow<'_, str> {
        match &self.raw {
            Some(raw) => std::borrow::Cow::Borrowed(raw),
            None => std::borrow::Cow::Owned(self.job.to_json()),
        }
    }

    /// [`JobContext::payload_json`], shared rather than copied: for a handler that hands it to
    /// threads of its own.
    pub fn shared_payload_json(&self) -> Arc<str> {
        match &self.raw {
            Some(raw) => raw.clone(),
            None => Arc::from(self.job.to_json()),
        }
    }

    /// The parsed payload, shared: for a handler that hands it to threads of its own.
    pub fn shared_job(&self) -> Arc<Job> {
        self.job.clone()
    }

    /// For a handler that queues jobs for its own threads ([`Handler::signals_start`]): the job
    /// begins now on one of them; false when the engine took it back first (do not run it). It
    /// counts as busy (Web UI, heartbeat) from now on.
    pub fn started(&self) -> bool {
        self.started.claim()
    }

    /// The same signal as [`JobContext::started`], to give to the thread that will run the job.
    pub fn start_signal(&self) -> Started {
        self.started.clone()
    }

    /// The job's jid (empty if the payload has none).
    pub fn jid(&self) -> &str {
        self.job.jid().unwrap_or_default()
    }

    /// The job's class (`Billing::ChargeJob`, or the ActiveJob wrapper).
    pub fn class(&self) -> &str {
        self.job.class().unwrap_or_default()
    }

    /// The queue the job was fetched from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// `None` on the first run; `Some(0)` on the first retry, as Sidekiq counts (`-1` after a
    /// "retry now" from the Web UI).
    pub fn retry_count(&self) -> Option<i64> {
        self.job.retry_count()
    }

    /// The job's arguments (empty if `args` is not an Array).
    pub fn args(&self) -> &[Value] {
        self.job.args().map(Vec::as_slice).unwrap_or_default()
    }

    /// The arguments as a typed value: a tuple for `[1, "a"]`, a struct for positional fields…
    pub fn args_as<A: DeserializeOwned>(&self) -> Result<A, Failure> {
        serde_json::from_value(Value::Array(self.args().to_vec())).map_err(|e| {
            Failure::retry(
                "ArgumentError",
                format!("arguments of {} do not fit the handler: {e}", self.class()),
            )
        })
    }

    /// The whole payload, every field.
    pub fn job(&self) -> &Job {
        &self.job
    }
}

/// A handler's own backoff rule (Sidekiq's `sidekiq_retry_in`): the `count`-th retry, this
/// failure.
pub type RetryIn = Arc<dyn Fn(u32, &Failure) -> Backoff + Send + Sync>;

/// Runs jobs of one class.
pub trait Handler: Send + Sync + 'static {
    /// Runs one job. `Ok(())` acknowledges it; a [`Failure`] decides whether it goes to the retry
    /// set, the dead set or nowhere.
    fn perform(&self, ctx: JobContext) -> BoxFuture<JobResult>;

    /// True for a handler that runs jobs on threads of its own and may be given more jobs than
    /// it has threads (with `WorkerOptions::dispatch_ahead`): a thread calls
    /// [`JobContext::started`] when it takes a job, and runs it only if that returns true. The
    /// engine decides the rest: a job not taken when the process quiets goes back to its queue,
    /// and the time limit counts from the start.
    fn signals_start(&self) -> bool {
        false
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = JobResult> + Send + 'static,
{
    fn perform(&self, ctx: JobContext) -> BoxFuture<JobResult> {
        Box::pin(self(ctx))
    }
}

/// Per-class options: retries, backoff, time limit.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct HandlerOptions {
    /// Retries for jobs of this class whose payload has no `retry` of its own.
    pub retry: Option<Retry>,
    /// Time limit of one run, in place of the process's `job_timeout`; a job over it fails and is
    /// retried.
    pub timeout: Option<Duration>,
    /// Backoff for this class's retries, like `sidekiq_retry_in`, when the failure names none.
    pub retry_in: Option<RetryIn>,
    /// Limits for this class's jobs whose payload carries none (pushed by Sidekiq or by code that
    /// does not set them): a concurrency limit and a rate, keyed from the job's arguments.
    pub limits: Vec<LimitRule>,
}

/// The key of a limit, from a job's arguments.
pub type KeyFn = Arc<dyn Fn(&[serde_json::Value]) -> String + Send + Sync>;

/// A limit a handler is registered with (see [`Registered::concurrency`], [`Registered::throttle`]).
#[derive(Clone)]
pub enum LimitRule {
    /// At most `limit` at once per key.
    Concurrency {
        /// How many at once.
        limit: u64,
        /// The key, from the arguments.
        key: KeyFn,
    },
    /// At most `limit` starts per `period` per key.
    Throttle {
        /// How many per period.
        limit: u64,
        /// The period.
        period: Duration,
        /// The key, from the arguments.
        key: KeyFn,
    },
}

impl LimitRule {
    /// Adds this limit's field to `job` unless the job carries one of its own (what it was pushed
    /// with wins, as a payload's `retry` wins over the handler's).
    pub fn apply(&self, job: &mut rustq_core::Job) {
        let args = job.args().cloned().unwrap_or_default();
        match self {
            LimitRule::Concurrency { limit, key }
                if job.get(rustq_core::limits::CONCURRENCY).is_none() =>
            {
                job.set(
                    rustq_core::limits::CONCURRENCY,
                    serde_json::json!({"key": key(&args), "limit": limit}),
                );
            }
            LimitRule::Throttle { limit, period, key }
                if job.get(rustq_core::limits::THROTTLE).is_none() =>
            {
                job.set(
                    rustq_core::limits::THROTTLE,
                    serde_json::json!({"key": key(&args), "limit": limit, "period": period.as_secs_f64()}),
                );
            }
            _ => {}
        }
    }
}

impl fmt::Debug for HandlerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerOptions")
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("retry_in", &self.retry_in.is_some())
            .field("limits", &self.limits.len())
            .finish()
    }
}

/// A registered handler and its options.
#[derive(Clone)]
pub struct Registered {
    /// What runs the jobs.
    pub handler: Arc<dyn Handler>,
    /// Its retries, backoff and time limit.
    pub options: HandlerOptions,
}

impl Registered {
    /// Retry this many times (`Retry::Times`), never (`Retry::Disabled`) or the default.
    pub fn retry(&mut self, retry: Retry) -> &mut Registered {
        self.options.retry = Some(retry);
        self
    }

    /// Fail the job (and retry it) when it runs longer than this.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Registered {
        self.options.timeout = Some(timeout);
        self
    }

    /// At most `limit` of this class's jobs with the same key run at once, fleet-wide (for jobs
    /// pushed without a `concurrency` field; see `rustq_core::limits`).
    ///
    /// ```
    /// # let mut registry = rustq_engine::Registry::new();
    /// registry
    ///     .handle("Billing::ChargeJob", |_ctx| async { Ok(()) })
    ///     .concurrency(3, |args| format!("acct:{}", args[0]));
    /// ```
    pub fn concurrency(
        &mut self,
        limit: u64,
        key: impl Fn(&[serde_json::Value]) -> String + Send + Sync + 'static,
    ) -> &mut Registered {
        self.options.limits.push(LimitRule::Concurrency {
            limit: limit.max(1),
            key: Arc::new(key),
        });
        self
    }

    /// At most `limit` of this class's jobs with the same key start per `period` (for jobs
    /// pushed without a `throttle` field).
    pub fn throttle(
        &mut self,
        limit: u64,
        period: Duration,
        key: impl Fn(&[serde_json::Value]) -> String + Send + Sync + 'static,
    ) -> &mut Registered {
        self.options.limits.push(LimitRule::Throttle {
            limit: limit.max(1),
            period,
            key: Arc::new(key),
        });
        self
    }

    /// Custom backoff, like `sidekiq_retry_in { |count, exception| … }`.
    pub fn retry_in(
        &mut self,
        f: impl Fn(u32, &Failure) -> Backoff + Send + Sync + 'static,
    ) -> &mut Registered {
        self.options.retry_in = Some(Arc::new(f));
        self
    }
}

/// Handlers by a name other than a job's class (a batch callback's target class).
pub(crate) type TargetHandlers = Arc<std::sync::Mutex<HashMap<String, Arc<dyn Handler>>>>;

/// Handlers by job class name (`"Billing::ChargeJob"`).
///
/// ```
/// use rustq_engine::{Failure, JobContext, Registry};
/// let mut registry = Registry::new();
/// registry
///     .handle_args("Billing::ChargeJob", |ctx: JobContext, (account, cents): (u64, i64)| async move {
///         if cents < 0 {
///             return Err(Failure::kill("ArgumentError", format!("negative charge for {account}")));
///         }
///         println!("charging {account} {cents} (jid {})", ctx.jid());
///         Ok(())
///     })
///     .retry(rustq_core::Retry::Times(5));
/// registry.handle("Ping", |_ctx| async { Ok(()) });
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Registered>,
    fallback: Option<Registered>,
    /// Rust handlers of batch callbacks, by target class (`Registry::on_batch`), shared with
    /// the one handler of callback jobs that dispatches to them.
    batch_callbacks: TargetHandlers,
}

impl Registry {
    /// An empty registry: no handlers, no fallback.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers any [`Handler`] (closures `Fn(JobContext) -> impl Future<Output = JobResult>`
    /// are handlers).
    pub fn handle(&mut self, class: &str, handler: impl Handler) -> &mut Registered {
        self.handlers.insert(
            class.to_string(),
            Registered {
                handler: Arc::new(handler),
                options: HandlerOptions::default(),
            },
        );
        self.handlers.get_mut(class).expect("just inserted")
    }

    /// Registers a handler taking typed arguments, deserialised from `args` with serde.
    pub fn handle_args<A, F, Fut>(&mut self, class: &str, f: F) -> &mut Registered
    where
        A: DeserializeOwned + Send + 'static,
        F: Fn(JobContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let f = Arc::new(f);
        self.handle(class, move |ctx: JobContext| {
            let f = f.clone();
            async move {
                let args = ctx.args_as::<A>()?;
                f(ctx, args).await
            }
        })
    }

    /// Adds the handlers declared in the config file.
    pub fn add_configured(&mut self, configs: &std::collections::BTreeMap<String, HandlerConfig>) {
        for (class, config) in configs {
            let registered = match &config.spec {
                HandlerSpec::Noop => self.handle(class, |_ctx: JobContext| async { Ok(()) }),
                HandlerSpec::Exec { argv, env } => self.handle(
                    class,
                    ExecHandler {
                        argv: argv.clone(),
                        env: env.clone(),
                    },
                ),
            };
            if let Some(retry) = config.retry {
                registered.retry(retry);
            }
            if let Some(timeout) = config.timeout {
                registered.timeout(timeout);
            }
        }
    }

    /// Registers the handler for every class without one of its own: a host that resolves
    /// classes itself (the Ruby host runs the app's job classes this way).
    pub fn fallback(&mut self, handler: impl Handler) -> &mut Registered {
        self.fallback.insert(Registered {
            handler: Arc::new(handler),
            options: HandlerOptions::default(),
        })
    }

    pub(crate) fn batch_callbacks(&self) -> TargetHandlers {
        self.batch_callbacks.clone()
    }

    /// The handler registered for exactly `class`.
    pub fn get(&self, class: &str) -> Option<&Registered> {
        self.handlers.get(class)
    }

    /// The handler that runs a job: its `class`'s, else its `wrapped` (ActiveJob) class's, else
    /// the fallback.
    pub fn resolve(&self, class: &str, wrapped: Option<&str>) -> Option<&Registered> {
        self.handlers
            .get(class)
            .or_else(|| wrapped.and_then(|w| self.handlers.get(w)))
            .or(self.fallback.as_ref())
    }

    /// The class names that have a handler of their own, sorted (the fallback is not counted).
    pub fn classes(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort();
        names
    }
}

/// Variables every `exec` program gets from the worker's environment (besides `RUSTQ_JID`,
/// `RUSTQ_QUEUE`, `RUSTQ_CLASS` and the handler's own `env:` list): what a program needs to run,
/// nothing that usually holds a secret.
pub const EXEC_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// The most of a program's stdout, and of its stderr, that is kept for the log; the rest is read
/// and dropped, so a chatty program neither blocks nor grows the worker.
pub const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;

/// Runs a program for each job: argv as configured (never through a shell), the job's JSON on
/// stdin, `RUSTQ_JID`/`RUSTQ_QUEUE`/`RUSTQ_CLASS` and [`EXEC_ENV`] in its environment. Exit status
/// 0 is success; stdout and stderr go to the log (the first [`EXEC_OUTPUT_LIMIT`] bytes of each).
///
/// The program runs in a process group of its own, which ends with it: whatever it left running
/// when it exits is killed, and when the job's time limit passes the whole group gets SIGTERM,
/// then SIGKILL a second later, so a grandchild cannot outlive the job (or hold its output open).
pub struct ExecHandler {
    /// The program, then its arguments.
    pub argv: Vec<String>,
    /// More variables to pass on from the worker's environment.
    pub env: Vec<String>,
}

/// A program's process group, ended when this is dropped: SIGTERM, then SIGKILL a second later.
struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    /// Kills what is left of the group now (the program has exited).
    fn end_now(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: killpg only sends a signal; a group that is gone makes it return ESRCH.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: as above.
            unsafe { libc::killpg(pgid, libc::SIGTERM) };
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(1));
                // SAFETY: as above.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            });
        }
    }
}

/// Reads `from` to its end, keeping the first `limit` bytes.
async fn read_capped(from: Option<impl tokio::io::AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(mut from) = from else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

impl Handler for ExecHandler {
    fn perform(&self, ctx: JobContext) -> BoxFuture<JobResult> {
        let argv = self.argv.clone();
        let pass_on: Vec<String> = EXEC_ENV
            .iter()
            .map(|s| s.to_string())
            .chain(self.env.iter().cloned())
            .collect();
        Box::pin(async move {
            let mut command = tokio::process::Command::new(&argv[0]);
            command.args(&argv[1..]).env_clear();
            for name in &pass_on {
                if let Some(value) = std::env::var_os(name) {
                    command.env(name, value);
                }
            }
            let mut child = command
                .env("RUSTQ_JID", ctx.jid())
                .env("RUSTQ_QUEUE", ctx.queue())
                .env("RUSTQ_CLASS", ctx.class())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                // A timed-out job drops this future; the program must not outlive it.
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    Failure::retry(class::EXEC_ERROR, format!("cannot run {:?}: {e}", argv[0]))
                })?;
            let mut group = ProcessGroup(child.id().and_then(|id| i32::try_from(id).ok()));
            let payload = ctx.job().to_json();
            let mut stdin = child.stdin.take().expect("piped stdin");
            let writer = async move {
                // A program that does not read its stdin is not an error.
                let _ = stdin.write_all(payload.as_bytes()).await;
            };
            let stdout = read_capped(child.stdout.take(), EXEC_OUTPUT_LIMIT);
            let stderr = read_capped(child.stderr.take(), EXEC_OUTPUT_LIMIT);
            let exited = async {
                let status = child.wait().await;
                // What it left running goes with it, and lets go of its output.
                group.end_now();
                status
            };
            let (_, stdout, stderr, status) = tokio::join!(writer, stdout, stderr, exited);
            let status = status
                .map_err(|e| Failure::retry(class::EXEC_ERROR, format!("{:?}: {e}", argv[0])))?;
            let stdout = String::from_utf8_lossy(&stdout);
            let stderr = String::from_utf8_lossy(&stderr);
            for line in stdout.lines() {
                tracing::info!(jid = ctx.jid(), class = ctx.class(), "{line}");
            }
            for line in stderr.lines() {
                tracing::warn!(jid = ctx.jid(), class = ctx.class(), "{line}");
            }
            if status.success() {
                return Ok(());
            }
            let tail: Vec<&str> = stderr
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(Failure::retry(
                class::EXEC_FAILED,
                format!(
                    "{} exited with {}{}",
                    argv[0],
                    status,
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", tail.join("\n"))
                    }
                ),
            ))
        })
    }
}
