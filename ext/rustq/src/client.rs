//! The settings and runtime of this process, and each Ruby thread's connection: built lazily
//! and rebuilt in a forked child.
//!
//! Puma, Unicorn and Sidekiq fork after the app has booted. A tokio runtime's threads do not
//! survive `fork`, and a connection's socket would be shared with the parent, so both remember
//! the pid that built them: a child that finds a foreign pid forgets (leaks, never drops) the
//! parent's and builds its own.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use magnus::{prelude::*, Error, RHash, RString, Ruby, Value};
use rustq_core::spin::Calls;
use rustq_core::{Client, ClientOptions, RedisConfig, SpinBackoff, WireVersion};
use tokio::io::unix::AsyncFd;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::{convert, errors, gvl};

/// Where Redis is and how jobs are filled in, as last given to `Rustq::Native.configure`.
pub struct Settings {
    pub redis: RedisConfig,
    pub options: ClientOptions,
    /// How long a single push (or other call on a Ruby thread's own connection) spins for
    /// Redis's reply before it sleeps (see [`rustq_core::spin`]).
    pub spin: Duration,
}

/// How long a call spins by default: [`LOCAL_SPIN`] for a Redis on this machine, which answers
/// well within it; none for one elsewhere, whose round trip a spin would mostly burn CPU on.
fn default_spin(redis: &RedisConfig) -> Duration {
    if redis.is_local() {
        LOCAL_SPIN
    } else {
        Duration::ZERO
    }
}

const LOCAL_SPIN: Duration = Duration::from_micros(200);

/// What this process has built: the runtime the worker engine runs on, and the one bulk pushes
/// write on (built on the first bulk push).
struct Process {
    pid: u32,
    runtime: Arc<Runtime>,
    bulk: Arc<OnceLock<Bulk>>,
}

/// A runtime of its own (a bulk push of 100,000 jobs renders for ~30 ms, which must not hold up
/// the worker engine's runtime) and a connection on it, for writes that run while the calling
/// Ruby thread goes on (see [`Session::spawn`]). The connection is rebuilt when the settings
/// change.
struct Bulk {
    runtime: Runtime,
    client: tokio::sync::Mutex<Option<(Arc<Settings>, Client)>>,
}

/// A write started by [`Session::spawn`]; dropped before [`Session::wait`] took it (an exception
/// while the jids were built, an interrupt raised before the wait began), it is cancelled.
pub struct Spawned<T>(Option<tokio::task::JoinHandle<rustq_core::Result<T>>>);

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

struct State {
    settings: Arc<Settings>,
    process: Option<Process>,
}

// Locked only briefly by threads holding the GVL, and never across a wait, so a `fork` (which
// also needs the GVL) can never inherit it locked.
static STATE: Mutex<Option<State>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<State>> {
    // A panic while holding the lock leaves the state valid (every write is a single store).
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `Rustq::Native.configure(settings)`: replaces the settings. Validates them now (URL, CA
/// file, wire version) so a typo fails at boot, not at the first push. The next push connects
/// with the new settings.
pub fn configure(ruby: &Ruby, settings: RHash) -> Result<(), Error> {
    let settings = Arc::new(parse_settings(ruby, settings)?);
    settings
        .redis
        .check()
        .map_err(|e| errors::from_core(ruby, e))?;
    let mut state = lock();
    match state.as_mut() {
        Some(state) => {
            state.settings = settings;
        }
        None => {
            *state = Some(State {
                settings,
                process: None,
            })
        }
    }
    Ok(())
}

/// `Rustq::Native.runtime_pid`: the pid that built the current runtime, nil before the first
/// push. Lets the fork-safety spec see that a child built its own.
pub fn runtime_pid() -> Option<u32> {
    lock().as_ref()?.process.as_ref().map(|p| p.pid)
}

/// `Rustq::Native.spin_wait`: how long (seconds) a single push spins for its reply with the
/// settings in effect, the default for where Redis is included.
pub fn spin_wait() -> f64 {
    match lock().as_ref() {
        Some(state) => state.settings.spin.as_secs_f64(),
        None => default_spin(&RedisConfig::from_env()).as_secs_f64(),
    }
}

fn parse_settings(ruby: &Ruby, hash: RHash) -> Result<Settings, Error> {
    let get = |key: &str| hash.get(key).filter(|v| !v.is_nil());
    let mut redis = match get("url") {
        Some(url) => RedisConfig::new(RString::try_convert(url)?.to_string()?),
        None => RedisConfig::from_env(),
    };
    if let Some(secs) = get("connect_timeout") {
        redis.connect_timeout = duration(ruby, "connect_timeout", secs)?;
    }
    // An explicit nil response_timeout means "wait forever"; absent keeps the default.
    if hash.get("response_timeout").is_some() {
        redis.response_timeout = match get("response_timeout") {
            Some(secs) => Some(duration(ruby, "response_timeout", secs)?),
            None => None,
        };
    }
    // An explicit nil (or 0) turns spinning off; absent means the default for where Redis is.
    let spin = if hash.get("spin_wait").is_some() {
        match get("spin_wait") {
            Some(secs) => {
                let spin = duration(ruby, "spin_wait", secs)?;
                if spin > MAX_SPIN {
                    return Err(errors::configuration(
                        ruby,
                        format!(
                            "spin_wait must be at most {} seconds, not {}",
                            MAX_SPIN.as_secs_f64(),
                            spin.as_secs_f64()
                        ),
                    ));
                }
                spin
            }
            None => Duration::ZERO,
        }
    } else {
        default_spin(&redis)
    };
    if let Some(path) = get("ca_file") {
        redis.ca_file = Some(RString::try_convert(path)?.to_string()?.into());
    }
    let mut options = ClientOptions::default();
    if let Some(wire) = get("wire") {
        let number = i64::try_convert(wire)?;
        options.wire = WireVersion::from_number(number).ok_or_else(|| {
            errors::configuration(ruby, format!("wire version must be 7 or 8, not {number}"))
        })?;
    }
    if let Some(defaults) = get("default_job_options") {
        let defaults = RHash::try_convert(defaults)?;
        for (key, value) in convert::options(ruby, defaults)? {
            options.default_job_options.insert(key, value);
        }
    }
    Ok(Settings {
        redis,
        options,
        spin,
    })
}

fn duration(ruby: &Ruby, name: &str, secs: Value) -> Result<Duration, Error> {
    let secs = f64::try_convert(secs)?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        errors::configuration(
            ruby,
            format!("{name} must be a positive number of seconds, not {secs}"),
        )
    })
}

/// The runtime and settings for one call, taken from the shared state under the GVL.
pub struct Session {
    runtime: Arc<Runtime>,
    bulk: Arc<OnceLock<Bulk>>,
    pub settings: Arc<Settings>,
}

/// The current session, building the runtime on first use and again after a fork.
pub fn session(ruby: &Ruby) -> Result<Session, Error> {
    let mut guard = lock();
    let state = guard.get_or_insert_with(|| {
        let redis = RedisConfig::from_env();
        State {
            settings: Arc::new(Settings {
                spin: default_spin(&redis),
                redis,
                options: ClientOptions::default(),
            }),
            process: None,
        }
    });
    let pid = std::process::id();
    if state.process.as_ref().is_some_and(|p| p.pid != pid) {
        // Built by our parent: its threads are gone and its socket is the parent's. Dropping
        // either would wait on threads that do not exist here, so leak them.
        std::mem::forget(state.process.take());
        // The parent's calls in flight are not here.
        CALLS.reset();
    }
    if state.process.is_none() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rustq-runtime")
            .enable_all()
            .build()
            .map_err(|e| errors::internal(ruby, &format!("cannot start rustq's runtime: {e}")))?;
        state.process = Some(Process {
            pid,
            runtime: Arc::new(runtime),
            bulk: Arc::default(),
        });
    }
    let process = state.process.as_ref().expect("built above");
    Ok(Session {
        runtime: process.runtime.clone(),
        bulk: process.bulk.clone(),
        settings: state.settings.clone(),
    })
}

impl Session {
    /// The runtime, for work that outlives one call (the worker engine).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.clone()
    }

    /// Starts `work` on the bulk runtime with its client (connecting on first use), and returns
    /// at once: the calling thread keeps the GVL and goes on (building what it returns to Ruby)
    /// while Redis is written. [`Session::wait`] waits for the outcome.
    pub fn spawn<F, Fut, T>(&self, ruby: &Ruby, work: F) -> Result<Spawned<T>, Error>
    where
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = rustq_core::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let bulk = match self.bulk.get() {
            Some(bulk) => bulk,
            None => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("rustq-bulk")
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        errors::internal(ruby, &format!("cannot start rustq's runtime: {e}"))
                    })?;
                // Two threads racing here: one runtime is kept, the other dropped unused.
                let _ = self.bulk.set(Bulk {
                    runtime,
                    client: tokio::sync::Mutex::new(None),
                });
                self.bulk.get().expect("set above")
            }
        };
        let shared = self.bulk.clone();
        let settings = self.settings.clone();
        let task = bulk.runtime.spawn(async move {
            let bulk = shared.get().expect("built before the task");
            let client = {
                let mut slot = bulk.client.lock().await;
                match &*slot {
                    Some((built_with, client)) if Arc::ptr_eq(built_with, &settings) => {
                        client.clone()
                    }
                    _ => {
                        let client =
                            Client::connect_with(&settings.redis, settings.options.clone()).await?;
                        *slot = Some((settings, client.clone()));
                        client
                    }
                }
            };
            work(client).await
        });
        Ok(Spawned(Some(task)))
    }

    /// Waits, with the GVL released, for what [`Session::spawn`] started. An interrupt of the
    /// Ruby thread stops waiting and cancels the work.
    pub fn wait<T: Send + 'static>(
        &self,
        ruby: &Ruby,
        mut spawned: Spawned<T>,
    ) -> Result<T, Error> {
        let Some(bulk) = self.bulk.get() else {
            return Err(errors::internal(ruby, "no bulk runtime to wait on"));
        };
        let cancel = Notify::new();
        let outcome = gvl::without_gvl(
            ruby,
            || {
                let task = spawned.0.as_mut().expect("taken only by Drop");
                bulk.runtime.block_on(async {
                    tokio::select! {
                        biased;
                        () = cancel.notified() => None,
                        joined = task => Some(joined),
                    }
                })
            },
            || cancel.notify_one(),
        );
        // Finished: nothing to cancel. Otherwise (interrupted), dropping `spawned` cancels it.
        if matches!(outcome, Ok(Some(_))) {
            spawned.0 = None;
        }
        match outcome? {
            Some(Ok(Ok(value))) => Ok(value),
            Some(Ok(Err(e))) => Err(errors::from_core(ruby, e)),
            Some(Err(e)) => Err(errors::internal(
                ruby,
                &format!("rustq's write failed: {e}"),
            )),
            None => Err(errors::interrupted(ruby)),
        }
    }

    /// Runs `work` with this thread's client (connecting on first use) with the GVL released.
    /// An interrupt of the Ruby thread (`Thread#raise`, `#kill`, a signal) cancels the wait.
    ///
    /// Each Ruby thread drives its own connection on its own single-threaded runtime, so a
    /// push is a write and a read on the calling thread: no hand-off to a runtime thread and
    /// back, which cost more than the round trip itself. (redis-rb, too, gives each thread of a
    /// pool its own connection.) The thread spins for the reply before it sleeps (see
    /// [`rustq_core::spin`]): `yield_now` defers its wake-up, so the current-thread runtime
    /// polls its I/O driver without blocking (`park_yield`) and looks again.
    pub fn run<F, Fut, T>(&self, ruby: &Ruby, work: F) -> Result<T, Error>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = rustq_core::Result<T>>,
    {
        // Built (once per thread) holding the GVL, so the unblock function knows what to wake.
        let (wake, call) = THREAD_CLIENT
            .with(|cell| {
                ThreadClient::current(&mut cell.borrow_mut(), &self.settings).map(|c| c.arm())
            })
            .map_err(|message| errors::internal(ruby, &message))?;
        let outcome = gvl::without_gvl_signal_safe(
            ruby,
            || -> Result<Option<rustq_core::Result<T>>, String> {
                THREAD_CLIENT.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    let local = ThreadClient::current(&mut slot, &self.settings)?;
                    let runtime = &local.runtime;
                    let client = &mut local.client;
                    let readiness = &local.readiness;
                    let settings = &self.settings;
                    let spin_state = &mut local.spin;
                    // This thread's Wake (one per thread, never freed) tells its calls apart.
                    let in_flight = CALLS.enter(local.wake as *const Wake as usize, since());
                    let spin = if in_flight.alone() {
                        spin_state.budget(settings.spin)
                    } else {
                        Duration::ZERO
                    };
                    // A call that connects first says nothing of how soon Redis answers.
                    let connecting = client.is_none();
                    let spin_until = Instant::now() + spin;
                    let spinning = || !spin.is_zero() && Instant::now() < spin_until;
                    Ok(runtime.block_on(async {
                        let call_future = async {
                            if client.is_none() {
                                *client = Some(
                                    Client::connect_with(&settings.redis, settings.options.clone())
                                        .await?,
                                );
                            }
                            work(client.clone().expect("connected above")).await
                        };
                        tokio::pin!(call_future);
                        loop {
                            tokio::select! {
                                biased;
                                // A wake meant for an earlier call is drained and ignored; one
                                // that came before this wait began is seen at once.
                                ready = readiness.readable() => {
                                    if let Ok(mut guard) = ready {
                                        drain(readiness.as_raw_fd());
                                        guard.clear_ready();
                                    }
                                    if wake.interrupted(call) {
                                        return None;
                                    }
                                }
                                result = &mut call_future => {
                                    if !connecting {
                                        spin_state.record(spin, spinning());
                                    }
                                    return Some(result);
                                }
                                // Spinning: the runtime looks for the reply without sleeping.
                                () = tokio::task::yield_now(), if spinning() => {}
                            }
                        }
                    }))
                })
            },
            wake,
        );
        wake.disarm();
        let outcome = outcome?;
        match outcome {
            Ok(Some(Ok(value))) => Ok(value),
            Ok(Some(Err(e))) => Err(errors::from_core(ruby, e)),
            Ok(None) => Err(errors::interrupted(ruby)),
            Err(message) => Err(errors::internal(ruby, &message)),
        }
    }
}

/// Empties an eventfd (non-blocking: one read resets its counter).
fn drain(fd: RawFd) {
    let mut count: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64.
    unsafe {
        libc::read(fd, std::ptr::addr_of_mut!(count).cast(), 8);
    }
}

/// How an interrupt reaches a Ruby thread's waiting push. Ruby may call the unblock function from
/// a signal handler on any thread, even just after the push has returned, so this is never
/// freed (one per thread and process) and its eventfd never closed: a late call only leaves a
/// wake that the next push drains and ignores. Each push has a number; an interrupt is for the
/// push that was armed when it came.
struct Wake {
    fd: RawFd,
    armed: AtomicU64,
    hit: AtomicU64,
    next: AtomicU64,
}

impl Wake {
    fn new() -> Result<&'static Wake, String> {
        // SAFETY: eventfd returns a new descriptor (or -1), which this Wake keeps open forever.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "cannot create an eventfd: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Box::leak(Box::new(Wake {
            fd,
            armed: AtomicU64::new(0),
            hit: AtomicU64::new(0),
            next: AtomicU64::new(1),
        })))
    }

    /// Numbers the push about to wait; interrupts from now on are for it.
    fn arm(&self) -> u64 {
        let call = self.next.fetch_add(1, Ordering::SeqCst);
        self.armed.store(call, Ordering::SeqCst);
        call
    }

    fn disarm(&self) {
        self.armed.store(0, Ordering::SeqCst);
    }

    fn interrupted(&self, call: u64) -> bool {
        self.hit.load(Ordering::SeqCst) == call
    }
}

impl gvl::Unblock for Wake {
    /// Async-signal-safe: atomics and write(2) only.
    fn unblock(&self) {
        self.hit
            .store(self.armed.load(Ordering::SeqCst), Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd that is never closed.
        unsafe {
            libc::write(self.fd, std::ptr::addr_of!(one).cast(), 8);
        }
    }
}

/// One Ruby thread's runtime and connection, rebuilt after a fork or a new `configure`.
struct ThreadClient {
    pid: u32,
    settings: Arc<Settings>,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    wake: &'static Wake,
    /// A duplicate of `wake`'s eventfd, watched by `runtime` (and closed with it).
    readiness: AsyncFd<OwnedFd>,
    spin: SpinBackoff,
}

thread_local! {
    static THREAD_CLIENT: std::cell::RefCell<Option<ThreadClient>> = const { std::cell::RefCell::new(None) };
}

impl ThreadClient {
    fn current<'a>(
        slot: &'a mut Option<ThreadClient>,
        settings: &Arc<Settings>,
    ) -> Result<&'a mut ThreadClient, String> {
        let pid = std::process::id();
        if slot.as_ref().is_some_and(|c| c.pid != pid) {
            // The parent's connection: its socket is shared with the parent, so never touch
            // (or close) it here.
            std::mem::forget(slot.take());
        }
        // New settings: a new runtime and connection, but this thread (in this process) keeps
        // its Wake, which is never freed.
        let mut kept_wake = None;
        if slot
            .as_ref()
            .is_some_and(|c| !Arc::ptr_eq(&c.settings, settings))
        {
            kept_wake = slot.take().map(|c| c.wake);
        }
        if slot.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start rustq's runtime: {e}"))?;
            let wake = match kept_wake {
                Some(wake) => wake,
                None => Wake::new()?,
            };
            // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (or -1), owned from here on.
            let dup = unsafe { libc::fcntl(wake.fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return Err(format!(
                    "cannot duplicate an eventfd: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: `dup` is open and nothing else owns it.
            let dup = unsafe { OwnedFd::from_raw_fd(dup) };
            let readiness = {
                let _entered = runtime.enter();
                // SAFETY: an OwnedFd's descriptor stays open, and the same, until it is dropped
                // with the AsyncFd.
                unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
                    .map_err(|e| format!("cannot watch an eventfd: {e}"))?
            };
            *slot = Some(ThreadClient {
                pid,
                settings: settings.clone(),
                runtime,
                client: None,
                wake,
                readiness,
                spin: SpinBackoff::default(),
            });
        }
        Ok(slot.as_mut().expect("built above"))
    }

    /// This thread's wake, armed for the push about to wait, and that push's number.
    fn arm(&self) -> (&'static Wake, u64) {
        (self.wake, self.wake.arm())
    }
}

/// The most `spin_wait` may be: past this, sleeping is cheaper than a wasted spin.
const MAX_SPIN: Duration = Duration::from_millis(1);

/// The calls on the Ruby threads' own connections, in this process: only a thread calling
/// alone spins (see [`Calls`]).
static CALLS: Calls = Calls::new();

/// Microseconds since the first call, for [`Calls`].
fn since() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}
