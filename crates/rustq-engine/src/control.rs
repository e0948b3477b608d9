//! Quiet, stop and dump: what a process is told, by a Unix signal, the Web UI's buttons or a host
//! (the Ruby host forwards the signals Ruby traps), and the one table of signal names all of them
//! read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What a signal asks of a worker process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// Stop fetching new jobs (SIGTSTP; the Web UI's "Quiet").
    Quiet,
    /// Quiet, wait for running jobs up to the shutdown timeout, push back the rest, exit
    /// (SIGTERM, SIGINT; the Web UI's "Stop").
    Stop,
    /// Log the running jobs (SIGTTIN).
    Dump,
}

/// Every signal name a process answers, with what it means: Unix signals, the names the Web UI
/// pushes to `<identity>-signals`, and those a host forwards. `USR1` is Sidekiq 5's quiet, still
/// pushed by old Web UIs.
pub const SIGNALS: [(&str, Signal); 5] = [
    ("TERM", Signal::Stop),
    ("INT", Signal::Stop),
    ("TSTP", Signal::Quiet),
    ("USR1", Signal::Quiet),
    ("TTIN", Signal::Dump),
];

impl Signal {
    /// The signal called `name` (`"TSTP"`, or `"SIGTSTP"`), if a process answers it.
    pub fn from_name(name: &str) -> Option<Signal> {
        let name = name.strip_prefix("SIG").unwrap_or(name);
        SIGNALS
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, signal)| *signal)
    }
}

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
    /// Milliseconds after [`epoch`] of the heartbeat loop's last turn, and of its last beat
    /// written (0: never): what `/livez` and `/readyz` read.
    turned_ms: AtomicU64,
    beaten_ms: AtomicU64,
}

/// The instant this process's control clocks count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

fn since(ms: u64) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(now_ms().saturating_sub(ms)))
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

    /// Does what `signal` asks.
    pub fn apply(&self, signal: Signal) {
        match signal {
            Signal::Quiet => self.quiet(),
            Signal::Stop => self.stop(),
            Signal::Dump => self.dump(),
        }
    }

    /// True once quiet (or stop) has been asked for: nothing new is fetched.
    pub fn is_quiet(&self) -> bool {
        self.inner.quiet.load(Ordering::SeqCst)
    }

    /// True once stop has been asked for.
    pub fn is_stopping(&self) -> bool {
        self.inner.stop.load(Ordering::SeqCst)
    }

    /// How many heartbeats have been written so far (a host fires Sidekiq's `:heartbeat` and
    /// `:beat` events from it).
    pub fn beats(&self) -> u64 {
        self.inner.beats.load(Ordering::SeqCst)
    }

    /// Counts one heartbeat written.
    pub fn beaten(&self) {
        self.inner.beats.fetch_add(1, Ordering::SeqCst);
        self.inner.beaten_ms.store(now_ms(), Ordering::SeqCst);
    }

    /// The heartbeat loop turned (whether or not Redis took the beat).
    pub fn turned(&self) {
        self.inner.turned_ms.store(now_ms(), Ordering::SeqCst);
    }

    /// How long since the heartbeat loop last turned; `None` before its first turn.
    pub fn since_turn(&self) -> Option<Duration> {
        since(self.inner.turned_ms.load(Ordering::SeqCst))
    }

    /// How long since a heartbeat was last written; `None` before the first.
    pub fn since_beat(&self) -> Option<Duration> {
        since(self.inner.beaten_ms.load(Ordering::SeqCst))
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

    /// Resolves once `stop` has been asked for.
    pub async fn stopped(&self) {
        loop {
            let notified = self.inner.changed.notified();
            if self.is_stopping() {
                return;
            }
            notified.await;
        }
    }

    /// Waits for `start` — a free slot, a thread taking the job — unless the process quiets
    /// first: then `None`, and the job, never started, goes back to its queue. The one place
    /// that decides the give-back of unstarted jobs.
    pub async fn start_unless_quiet<T>(
        &self,
        start: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            biased;
            () = self.quieted() => None,
            started = start => Some(started),
        }
    }

    /// Resolves at the next [`Control::dump`].
    pub async fn dump_asked(&self) {
        self.inner.dump.notified().await;
    }

    /// Maps the Unix signals of [`SIGNALS`] to what they ask, for as long as the runtime runs.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        for (name, action) in SIGNALS {
            let kind = match name {
                "TERM" => SignalKind::terminate(),
                "INT" => SignalKind::interrupt(),
                "TSTP" => SignalKind::from_raw(libc_signal::SIGTSTP),
                "USR1" => SignalKind::user_defined1(),
                "TTIN" => SignalKind::from_raw(libc_signal::SIGTTIN),
                _ => continue,
            };
            let mut stream = signal(kind)?;
            let control = self.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    tracing::info!(signal = name, "signal received");
                    control.apply(action);
                }
            });
        }
        Ok(())
    }
}

/// Linux's numbers for the job-control signals tokio has no name for.
mod libc_signal {
    pub const SIGTSTP: i32 = 20;
    pub const SIGTTIN: i32 = 21;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_or_without_sig() {
        assert_eq!(Signal::from_name("TSTP"), Some(Signal::Quiet));
        assert_eq!(Signal::from_name("SIGTSTP"), Some(Signal::Quiet));
        assert_eq!(Signal::from_name("USR1"), Some(Signal::Quiet));
        assert_eq!(Signal::from_name("INT"), Some(Signal::Stop));
        assert_eq!(Signal::from_name("TERM"), Some(Signal::Stop));
        assert_eq!(Signal::from_name("TTIN"), Some(Signal::Dump));
        assert_eq!(Signal::from_name("HUP"), None);
    }
}
