//! What runs a job: handlers registered for job class names, in Rust or as programs.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustq_core::{Job, Retry};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::options::{HandlerConfig, HandlerSpec};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Tells the process a job has begun; called at most once, and a no-op when nobody listens.
#[derive(Clone, Default)]
pub struct Started(Option<Arc<std::sync::Mutex<Option<OnStart>>>>);

type OnStart = Box<dyn FnOnce() + Send>;

impl Started {
    pub fn new(on_start: impl FnOnce() + Send + 'static) -> Started {
        Started(Some(Arc::new(std::sync::Mutex::new(Some(Box::new(
            on_start,
        ))))))
    }

    pub fn signal(&self) {
        let Some(cell) = &self.0 else { return };
        let on_start = cell.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(on_start) = on_start {
            on_start();
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
    pub fn new(job: Arc<Job>, queue: String) -> JobContext {
        JobContext::with_start(job, queue, Started::default())
    }

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
    /// has just begun on one of them. It then counts as busy (Web UI, heartbeat) from now on.
    pub fn started(&self) {
        self.started.signal();
    }

    /// The same signal as [`JobContext::started`], to give to the thread that will run the job.
    pub fn start_signal(&self) -> Started {
        self.started.clone()
    }

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

/// Why a job did not succeed, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Retry with backoff, then the dead set.
    Retry,
    /// Straight to the dead set.
    Kill,
    /// Drop it: no retry, no dead set.
    Discard,
    /// It never started (the process is quieting): back on its queue untouched, not a failure.
    Requeue,
}

/// A failed job: Sidekiq's `error_class`/`error_message`, plus what to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub error_class: String,
    pub message: String,
    pub backtrace: Vec<String>,
    /// When to retry, decided by the job itself (a Ruby job's `sidekiq_retry_in`); `None` leaves
    /// it to the handler's `retry_in`, else Sidekiq's formula. Only used while retries are left.
    pub backoff: Option<Backoff>,
}

impl Failure {
    pub fn retry(error_class: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Retry,
            error_class: error_class.into(),
            message: message.into(),
            backtrace: Vec::new(),
            backoff: None,
        }
    }

    pub fn kill(error_class: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Kill,
            ..Failure::retry(error_class, message)
        }
    }

    pub fn discard(message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Discard,
            ..Failure::retry("Rustq::Discard", message)
        }
    }

    /// The job was never started and goes back to its queue as it was (see
    /// [`Handler::signals_start`]).
    pub fn requeue() -> Failure {
        Failure {
            kind: FailureKind::Requeue,
            ..Failure::retry("Rustq::Requeued", "not started before the process quieted")
        }
    }

    pub fn with_backtrace(mut self, lines: Vec<String>) -> Failure {
        self.backtrace = lines;
        self
    }

    /// Retries this failure after `backoff` rather than the handler's or Sidekiq's delay.
    pub fn with_backoff(mut self, backoff: Backoff) -> Failure {
        self.backoff = Some(backoff);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_class, self.message)
    }
}

/// Any error converts into a retryable failure named after its type.
impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(e: E) -> Failure {
        let name = std::any::type_name::<E>();
        Failure::retry(name, e.to_string())
    }
}

pub type JobResult = Result<(), Failure>;

/// A handler's answer to "when should the `count`-th retry run?" (Sidekiq's `sidekiq_retry_in`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// Sidekiq's formula.
    Default,
    In(Duration),
    Kill,
    Discard,
}

pub type RetryIn = Arc<dyn Fn(u32, &Failure) -> Backoff + Send + Sync>;

/// Runs jobs of one class.
pub trait Handler: Send + Sync + 'static {
    fn perform(&self, ctx: JobContext) -> BoxFuture<JobResult>;

    /// True for a handler that runs jobs on threads of its own and may be given more jobs than
    /// it has threads (with `WorkerOptions::dispatch_ahead`): it calls [`JobContext::started`]
    /// when a job begins, and answers [`Failure::requeue`] for one it gives back unstarted.
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
pub struct HandlerOptions {
    pub retry: Option<Retry>,
    pub timeout: Option<Duration>,
    pub retry_in: Option<RetryIn>,
}

impl fmt::Debug for HandlerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerOptions")
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("retry_in", &self.retry_in.is_some())
            .finish()
    }
}

/// A registered handler and its options.
#[derive(Clone)]
pub struct Registered {
    pub handler: Arc<dyn Handler>,
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

    /// Custom backoff, like `sidekiq_retry_in { |count, exception| … }`.
    pub fn retry_in(
        &mut self,
        f: impl Fn(u32, &Failure) -> Backoff + Send + Sync + 'static,
    ) -> &mut Registered {
        self.options.retry_in = Some(Arc::new(f));
        self
    }
}

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
}

impl Registry {
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
                HandlerSpec::Exec { argv } => {
                    self.handle(class, ExecHandler { argv: argv.clone() })
                }
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

    pub fn classes(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort();
        names
    }
}

/// Runs a program for each job: argv as configured (never through a shell), the job's JSON on
/// stdin, `RUSTQ_JID`/`RUSTQ_QUEUE`/`RUSTQ_CLASS` in its environment. Exit status 0 is success;
/// stdout and stderr go to the log.
pub struct ExecHandler {
    pub argv: Vec<String>,
}

impl Handler for ExecHandler {
    fn perform(&self, ctx: JobContext) -> BoxFuture<JobResult> {
        let argv = self.argv.clone();
        Box::pin(async move {
            let mut child = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .env("RUSTQ_JID", ctx.jid())
                .env("RUSTQ_QUEUE", ctx.queue())
                .env("RUSTQ_CLASS", ctx.class())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // A timed-out job drops this future; the program must not outlive it.
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    Failure::retry("Rustq::ExecError", format!("cannot run {:?}: {e}", argv[0]))
                })?;
            let payload = ctx.job().to_json();
            let mut stdin = child.stdin.take().expect("piped stdin");
            let writer = async move {
                // A program that does not read its stdin is not an error.
                let _ = stdin.write_all(payload.as_bytes()).await;
            };
            let (_, output) = tokio::join!(writer, child.wait_with_output());
            let output = output
                .map_err(|e| Failure::retry("Rustq::ExecError", format!("{:?}: {e}", argv[0])))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            for line in stdout.lines() {
                tracing::info!(jid = ctx.jid(), class = ctx.class(), "{line}");
            }
            for line in stderr.lines() {
                tracing::warn!(jid = ctx.jid(), class = ctx.class(), "{line}");
            }
            if output.status.success() {
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
                "Rustq::ExecFailed",
                format!(
                    "{} exited with {}{}",
                    argv[0],
                    output.status,
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
