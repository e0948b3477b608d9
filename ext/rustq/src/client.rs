//! The settings and runtime of this process, and each Ruby thread's connection: built lazily
//! and rebuilt in a forked child.
//!
//! Puma, Unicorn and Sidekiq fork after the app has booted. A tokio runtime's threads do not
//! survive `fork`, and a connection's socket would be shared with the parent, so both remember
//! the pid that built them: a child that finds a foreign pid forgets (leaks, never drops) the
//! parent's and builds its own.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use magnus::{prelude::*, Error, RHash, RString, Ruby, Value};
use rustq_core::{Client, ClientOptions, RedisConfig, WireVersion};
use tokio::io::unix::AsyncFd;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::{convert, errors, gvl};

/// Where Redis is and how jobs are filled in, as last given to `Rustq::Native.configure`.
pub struct Settings {
    pub redis: RedisConfig,
    pub options: ClientOptions,
}

/// What this process has built: the runtime the worker engine runs on, and a connection on it.
struct Process {
    pid: u32,
    runtime: Arc<Runtime>,
    shared: SharedClient,
}

/// A connection driven by the shared runtime, for writes that run while the calling Ruby thread
/// goes on (see [`Session::spawn`]); rebuilt when the settings change.
type SharedClient = Arc<tokio::sync::Mutex<Option<(Arc<Settings>, Client)>>>;

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
        .client()
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
    Ok(Settings { redis, options })
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
    shared: SharedClient,
    pub settings: Arc<Settings>,
}

/// The current session, building the runtime on first use and again after a fork.
pub fn session(ruby: &Ruby) -> Result<Session, Error> {
    let mut guard = lock();
    let state = guard.get_or_insert_with(|| State {
        settings: Arc::new(Settings {
            redis: RedisConfig::from_env(),
            options: ClientOptions::default(),
        }),
        process: None,
    });
    let pid = std::process::id();
    if state.process.as_ref().is_some_and(|p| p.pid != pid) {
        // Built by our parent: its threads are gone and its socket is the parent's. Dropping
        // either would wait on threads that do not exist here, so leak them.
        std::mem::forget(state.process.take());
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
            shared: SharedClient::default(),
        });
    }
    let process = state.process.as_ref().expect("built above");
    Ok(Session {
        runtime: process.runtime.clone(),
        shared: process.shared.clone(),
        settings: state.settings.clone(),
    })
}

impl Session {
    /// The runtime, for work that outlives one call (the worker engine).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.clone()
    }

    /// Starts `work` on the shared runtime with the process's shared client (connecting on first
    /// use), and returns at once: the calling thread keeps the GVL and goes on (building what it
    /// returns to Ruby) while Redis is written. [`Session::wait`] waits for the outcome.
    pub fn spawn<F, Fut, T>(&self, work: F) -> tokio::task::JoinHandle<rustq_core::Result<T>>
    where
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = rustq_core::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        let settings = self.settings.clone();
        self.runtime.spawn(async move {
            let client = {
                let mut slot = shared.lock().await;
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
        })
    }

    /// Waits, with the GVL released, for what [`Session::spawn`] started. An interrupt of the
    /// Ruby thread stops waiting and cancels the work.
    pub fn wait<T: Send + 'static>(
        &self,
        ruby: &Ruby,
        mut task: tokio::task::JoinHandle<rustq_core::Result<T>>,
    ) -> Result<T, Error> {
        let cancel = Notify::new();
        let outcome = gvl::without_gvl(
            ruby,
            || {
                self.runtime.block_on(async {
                    tokio::select! {
                        biased;
                        () = cancel.notified() => {
                            task.abort();
                            None
                        }
                        joined = &mut task => Some(joined),
                    }
                })
            },
            || cancel.notify_one(),
        )?;
        match outcome {
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
    /// pool its own connection.)
    pub fn run<F, Fut, T>(&self, ruby: &Ruby, work: F) -> Result<T, Error>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = rustq_core::Result<T>>,
    {
        // Built (once per thread) holding the GVL, so the unblock function knows what to wake.
        let wake_fd = THREAD_CLIENT.with(|cell| {
            ThreadClient::current(&mut cell.borrow_mut(), &self.settings).map(|c| c.wake_fd())
        });
        let wake_fd = wake_fd.map_err(|message| errors::internal(ruby, &message))?;
        let interrupted = AtomicBool::new(false);
        let outcome = gvl::without_gvl_signal_safe(
            ruby,
            || -> Result<Option<rustq_core::Result<T>>, String> {
                THREAD_CLIENT.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    let local = ThreadClient::current(&mut slot, &self.settings)?;
                    let runtime = &local.runtime;
                    let client = &mut local.client;
                    let wake = &local.wake;
                    let settings = &self.settings;
                    Ok(runtime.block_on(async {
                        let call = async {
                            if client.is_none() {
                                *client = Some(
                                    Client::connect_with(&settings.redis, settings.options.clone())
                                        .await?,
                                );
                            }
                            work(client.clone().expect("connected above")).await
                        };
                        tokio::pin!(call);
                        loop {
                            tokio::select! {
                                biased;
                                // A wake left over from an earlier call is drained and ignored;
                                // one that came before this wait began is seen at once.
                                ready = wake.readable() => {
                                    if let Ok(mut guard) = ready {
                                        drain(wake.as_raw_fd());
                                        guard.clear_ready();
                                    }
                                    if interrupted.load(Ordering::SeqCst) {
                                        return None;
                                    }
                                }
                                result = &mut call => return Some(result),
                            }
                        }
                    }))
                })
            },
            // Async-signal-safe: an atomic store and write(2).
            || {
                interrupted.store(true, Ordering::SeqCst);
                let one: u64 = 1;
                // SAFETY: writes 8 bytes from a live u64 to this thread's eventfd.
                unsafe {
                    libc::write(wake_fd, std::ptr::addr_of!(one).cast(), 8);
                }
            },
        )?;
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

/// One Ruby thread's runtime and connection, rebuilt after a fork or a new `configure`.
struct ThreadClient {
    pid: u32,
    settings: Arc<Settings>,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    /// An eventfd on `runtime`: the unblock function writes to it to cut a wait short.
    wake: AsyncFd<OwnedFd>,
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
        if slot
            .as_ref()
            .is_some_and(|c| !Arc::ptr_eq(&c.settings, settings))
        {
            *slot = None;
        }
        if slot.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start rustq's runtime: {e}"))?;
            // SAFETY: eventfd returns a new descriptor (or -1), owned from here on.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(format!(
                    "cannot create an eventfd: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: `fd` is open and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let wake = {
                let _entered = runtime.enter();
                // SAFETY: an OwnedFd's descriptor stays open, and the same, until it is dropped
                // with the AsyncFd.
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                    .map_err(|e| format!("cannot watch an eventfd: {e}"))?
            };
            *slot = Some(ThreadClient {
                pid,
                settings: settings.clone(),
                runtime,
                client: None,
                wake,
            });
        }
        Ok(slot.as_mut().expect("built above"))
    }

    fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}
