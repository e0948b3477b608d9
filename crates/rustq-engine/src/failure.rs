//! Why a job did not succeed, and what it asks for next: Sidekiq's `error_class`/`error_message`,
//! a backtrace, and whether to retry, kill or discard it. Also the error classes the engine
//! itself gives jobs, so each is spelled in one place.

use std::fmt;
use std::time::Duration;

/// Error classes the engine writes into a payload's `error_class` for failures of its own.
pub mod class {
    /// Bytes that are not a job at all (not JSON, no class, args not an Array).
    pub const INVALID_PAYLOAD: &str = "Rustq::InvalidPayload";
    /// The job ran past its time limit (`--job-timeout`, a handler's `timeout`).
    pub const TIMEOUT: &str = "Rustq::TimeoutError";
    /// A limiter inside the job was over its limit too many times in a row.
    pub const OVER_LIMIT: &str = "Rustq::OverLimit";
    /// A Rust handler panicked.
    pub const PANIC: &str = "Rustq::Panic";
    /// The thread running the job ended without an answer (a Ruby thread killed inside it).
    pub const ABANDONED: &str = "Rustq::JobAbandoned";
    /// The threads that run a host's jobs are gone.
    pub const WORKER_STOPPED: &str = "Rustq::WorkerStopped";
    /// Processes running this job kept dying; it was buried so it cannot crash-loop a fleet.
    pub const PROCESS_DIED: &str = "Rustq::ProcessDied";
    /// An `exec` handler's program could not be run.
    pub const EXEC_ERROR: &str = "Rustq::ExecError";
    /// An `exec` handler's program exited unsuccessfully.
    pub const EXEC_FAILED: &str = "Rustq::ExecFailed";
    /// [`super::Failure::discard`]'s class.
    pub const DISCARD: &str = "Rustq::Discard";
    /// [`super::Failure::requeue`]'s class.
    pub const REQUEUED: &str = "Rustq::Requeued";
}

/// Why a job did not succeed, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// Retry with backoff, then the dead set.
    Retry,
    /// Straight to the dead set.
    Kill,
    /// Drop it: no retry, no dead set.
    Discard,
    /// It never started (the process is quieting): back on its queue untouched, not a failure.
    Requeue,
    /// It stopped early to resume later (an iterable job interrupted as the process quiets, or
    /// past its run time): to the back of its queue untouched, as Sidekiq pushes it again; not a
    /// failure.
    Interrupted,
    /// A limiter inside the job was over its limit (`Rustq::OverLimit`): the job is scheduled
    /// again later (when the limiter says, else with backoff), not a failure and not a retry —
    /// up to [`crate::job_retry::MAX_OVERRATED`] times, then a failure like any other.
    OverLimit,
}

/// A failed job: Sidekiq's `error_class`/`error_message`, plus what to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What to do with the job.
    pub kind: FailureKind,
    /// `error_class` in the payload (`"RuntimeError"`, `"Net::ReadTimeout"`).
    pub error_class: String,
    /// `error_message`; truncated when written, as Sidekiq truncates it.
    pub message: String,
    /// Backtrace lines, kept when the job's `backtrace` option asks for them.
    pub backtrace: Vec<String>,
    /// When to retry, decided by the job itself (a Ruby job's `sidekiq_retry_in`); `None` leaves
    /// it to the handler's `retry_in`, else Sidekiq's formula. Only used while retries are left.
    pub backoff: Option<Backoff>,
}

impl Failure {
    /// A failure retried with backoff, then buried in the dead set.
    pub fn retry(error_class: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Retry,
            error_class: error_class.into(),
            message: message.into(),
            backtrace: Vec::new(),
            backoff: None,
        }
    }

    /// A failure that sends the job straight to the dead set.
    pub fn kill(error_class: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Kill,
            ..Failure::retry(error_class, message)
        }
    }

    /// A failure that drops the job: no retry, no dead set.
    pub fn discard(message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Discard,
            ..Failure::retry(class::DISCARD, message)
        }
    }

    /// The job was never started and goes back to its queue as it was (see
    /// [`crate::Handler::signals_start`]).
    pub fn requeue() -> Failure {
        Failure {
            kind: FailureKind::Requeue,
            ..Failure::retry(class::REQUEUED, "not started before the process quieted")
        }
    }

    /// The job stopped early to resume later (see [`FailureKind::Interrupted`]).
    pub fn interrupted(error_class: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Interrupted,
            ..Failure::retry(error_class, message)
        }
    }

    /// A limiter was over its limit; `wait` is when it may have room (if it knows).
    pub fn over_limit(message: impl Into<String>, wait: Option<Duration>) -> Failure {
        Failure {
            kind: FailureKind::OverLimit,
            backoff: wait.map(Backoff::In),
            ..Failure::retry(class::OVER_LIMIT, message)
        }
    }

    /// The job ran past `limit`.
    pub fn timed_out(limit: Duration) -> Failure {
        Failure::retry(
            class::TIMEOUT,
            format!(
                "job exceeded its time limit of {:.1} s",
                limit.as_secs_f64()
            ),
        )
    }

    /// A handler panicked with `panic` (what `catch_unwind` caught).
    pub fn panicked(panic: &(dyn std::any::Any + Send)) -> Failure {
        Failure::retry(
            class::PANIC,
            format!("handler panicked: {}", panic_message(panic)),
        )
    }

    /// Keeps these backtrace lines (written when the job's `backtrace` option asks).
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

/// What a handler returns.
pub type JobResult = Result<(), Failure>;

/// An answer to "when should the `count`-th retry run?" (Sidekiq's `sidekiq_retry_in`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backoff {
    /// Sidekiq's formula.
    Default,
    /// After this long (plus Sidekiq's jitter).
    In(Duration),
    /// To the dead set now.
    Kill,
    /// Dropped.
    Discard,
}

impl Backoff {
    /// What a `sidekiq_retry_in` block's value means, as Sidekiq reads it: a positive number of
    /// seconds (a Float is cut to whole seconds), `"kill"`, `"discard"`; anything else (`nil`,
    /// zero, a negative number, another word) is Sidekiq's formula.
    pub fn from_seconds(secs: f64) -> Backoff {
        let whole = secs.trunc();
        match Duration::try_from_secs_f64(whole) {
            Ok(delay) if whole >= 1.0 => Backoff::In(delay),
            _ => Backoff::Default,
        }
    }

    /// See [`Backoff::from_seconds`]: `"kill"` and `"discard"`, else the formula.
    pub fn from_word(word: &str) -> Backoff {
        match word {
            "kill" => Backoff::Kill,
            "discard" => Backoff::Discard,
            _ => Backoff::Default,
        }
    }
}

/// The message a panic carried (`panic!("...")`), or a placeholder.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_values_read_as_sidekiq_reads_them() {
        assert_eq!(
            Backoff::from_seconds(30.0),
            Backoff::In(Duration::from_secs(30))
        );
        assert_eq!(
            Backoff::from_seconds(2.9),
            Backoff::In(Duration::from_secs(2))
        );
        assert_eq!(Backoff::from_seconds(0.5), Backoff::Default);
        assert_eq!(Backoff::from_seconds(-4.0), Backoff::Default);
        assert_eq!(Backoff::from_seconds(f64::NAN), Backoff::Default);
        assert_eq!(Backoff::from_seconds(1e20), Backoff::Default);
        assert_eq!(Backoff::from_word("kill"), Backoff::Kill);
        assert_eq!(Backoff::from_word("discard"), Backoff::Discard);
        assert_eq!(Backoff::from_word("later"), Backoff::Default);
    }

    #[test]
    fn a_panic_message_is_read_from_either_kind_of_payload() {
        let text: Box<dyn std::any::Any + Send> = Box::new("kaboom");
        assert_eq!(panic_message(text.as_ref()), "kaboom");
        let owned: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(owned.as_ref()), "owned");
        let other: Box<dyn std::any::Any + Send> = Box::new(7);
        assert_eq!(panic_message(other.as_ref()), "unknown panic");
    }
}
