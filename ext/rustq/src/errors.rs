//! Every error the extension raises, mapped in one place onto the gem's exception tree
//! (defined in `lib/rustq/errors.rb`):
//!
//! ```text
//! ::ArgumentError
//! └── Rustq::InvalidJob         a push Sidekiq would refuse; nothing was written
//! StandardError
//! └── Rustq::Error
//!     ├── Rustq::ConfigurationError   bad Redis URL, wire version, CA file
//!     ├── Rustq::ConnectionError      Redis unreachable, dropped or too slow
//!     ├── Rustq::CommandError         Redis answered with an error (READONLY, OOM, …)
//!     └── Rustq::UsageError           `rustq-worker` flags or config file (`status`: exit code)
//! ::ArgumentError
//! └── Rustq::Cron::InvalidSchedule    a schedule that cannot run; nothing was written
//! Rustq::Error
//! └── Rustq::Cron::ScheduleNotFound   no schedule of that name
//! ```

use magnus::{prelude::*, Error, ExceptionClass, RModule, Ruby, Value};
use rustq_core::JobError;

/// The exception class `Rustq::<name>`, or `RuntimeError` if the Ruby side did not define it
/// (only possible when the extension is loaded without `lib/rustq.rb`).
fn class(ruby: &Ruby, name: &str) -> ExceptionClass {
    ruby.class_object()
        .const_get::<_, RModule>("Rustq")
        .and_then(|rustq| rustq.const_get::<_, ExceptionClass>(name))
        .unwrap_or_else(|_| ruby.exception_runtime_error())
}

/// A push Sidekiq would refuse, with Sidekiq's message.
pub fn invalid_job(ruby: &Ruby, error: &JobError) -> Error {
    invalid_job_message(ruby, error.to_string())
}

/// A push refused for a reason `JobError` has no variant for (too deeply nested, not UTF-8).
pub fn invalid_job_message(ruby: &Ruby, message: String) -> Error {
    Error::new(class(ruby, "InvalidJob"), message)
}

pub fn configuration(ruby: &Ruby, message: String) -> Error {
    Error::new(class(ruby, "ConfigurationError"), message)
}

/// `Rustq::<name>` (or `Rustq::Cron::<name>` for the recurring jobs' own) with `message`.
pub fn named(ruby: &Ruby, name: &str, message: String) -> Error {
    let class = match name {
        "InvalidSchedule" | "ScheduleNotFound" => ruby
            .class_object()
            .const_get::<_, RModule>("Rustq")
            .and_then(|rustq| rustq.const_get::<_, RModule>("Cron"))
            .and_then(|cron| cron.const_get::<_, ExceptionClass>(name))
            .unwrap_or_else(|_| ruby.exception_arg_error()),
        "Immutable" | "NoSuchBatch" => ruby
            .class_object()
            .const_get::<_, RModule>("Rustq")
            .and_then(|rustq| rustq.const_get::<_, magnus::RClass>("Batch"))
            .and_then(|batch| batch.const_get::<_, ExceptionClass>(name))
            .unwrap_or_else(|_| ruby.exception_runtime_error()),
        other => class(ruby, other),
    };
    Error::new(class, message)
}

/// A bug in rustq (a caught panic, a runtime that cannot start): never a crash.
pub fn internal(ruby: &Ruby, message: &str) -> Error {
    Error::new(class(ruby, "Error"), message.to_string())
}

/// The wait was cut short by an interrupt that Ruby did not turn into its own exception.
pub fn interrupted(ruby: &Ruby) -> Error {
    Error::new(
        class(ruby, "Error"),
        "interrupted before Redis answered; the push may or may not have been written",
    )
}

/// `rustq-worker`'s flags or config file: clap's text (help and version too), and the exit code.
pub fn usage(ruby: &Ruby, message: String, status: i32) -> Error {
    let class = class(ruby, "UsageError");
    match class.new_instance((message.clone(),)) {
        Ok(exception) => {
            // Best effort: without `status` the CLI exits 2.
            let _ = exception.funcall::<_, _, Value>("instance_variable_set", ("@status", status));
            Error::from(exception)
        }
        Err(_) => Error::new(class, message),
    }
}

/// Maps a core error onto the tree above.
pub fn from_core(ruby: &Ruby, error: rustq_core::Error) -> Error {
    use rustq_core::Error as Core;
    let class_name = match &error {
        Core::InvalidJob(job) => return invalid_job(ruby, job),
        Core::Config { .. } => "ConfigurationError",
        e if e.is_connection() => "ConnectionError",
        Core::Connect { .. } => "ConnectionError",
        Core::Redis { .. } => "CommandError",
        _ => "Error",
    };
    Error::new(class(ruby, class_name), error.to_string())
}
