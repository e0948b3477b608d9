//! A Ruby thread's answer for a job, as the engine takes it: nil (done) or a failure Hash.

use magnus::error::ErrorType;
use magnus::{prelude::*, Error, RArray, RHash, RString, Ruby, Symbol, Value};
use rustq_core::{wire, Job, WireVersion};
use rustq_engine::{job_retry, Backoff, Failure, FailureKind};

use crate::to_ruby;

/// `Thread#kill`/`Thread.exit` inside a job (a jump, not an exception): it goes on once the job
/// has been answered for. Any other outcome has been answered already.
pub fn resume_jump(answer: Result<Value, Error>) -> Result<(), Error> {
    match answer {
        Err(e) if matches!(e.error_type(), ErrorType::Jump(_)) => Err(e),
        _ => Ok(()),
    }
}

/// The failure for an answer the engine cannot take (a bug in the host), or an exception that
/// escaped `process`: the job still fails rather than lose its thread.
pub fn unreportable(ruby: &Ruby, error: &Error) -> Failure {
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

/// A failure Hash from `Processor#process` (`error_class`, `message`, `backtrace`, `retry_in`),
/// `{"over_limit" => true, "message", "retry_in"}` (a limiter was over its limit), or
/// `{"requeue" => true}`: the job stopped early and goes to the back of its queue unchanged,
/// no failure (an iterable job interrupted because the process quiets or ran past its time).
pub fn failure(hash: RHash) -> Result<Failure, Error> {
    if hash.get("requeue").is_some_and(|v| v.to_bool()) {
        return Ok(Failure::interrupted(
            "Sidekiq::Job::Interrupted",
            "interrupted; back on its queue",
        ));
    }
    let text = |key: &str| -> Result<String, Error> {
        match hash.get(key).filter(|v| !v.is_nil()) {
            Some(v) => RString::try_convert(v)?.to_string(),
            None => Ok(String::new()),
        }
    };
    // Rustq::OverLimit: scheduled again (when its limiter has room, if it said), not a failure.
    if hash.get("over_limit").is_some_and(|v| v.to_bool()) {
        let wait = match hash.get("retry_in").filter(|v| !v.is_nil()) {
            Some(v) => Some(f64::try_convert(v)?)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(std::time::Duration::from_secs_f64),
            None => None,
        };
        return Ok(Failure::over_limit(text("message")?, wait));
    }
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
        Some(value) => apply_retry_in(failure, value)?,
    })
}

/// `retry_in`: what the job's `sidekiq_retry_in` said, read by [`rustq_engine::Backoff`]'s one
/// rule (seconds, "kill"/:kill, "discard"/:discard; anything else is Sidekiq's formula).
fn apply_retry_in(failure: Failure, value: Value) -> Result<Failure, Error> {
    Ok(match backoff(value)? {
        Backoff::Kill => Failure {
            kind: FailureKind::Kill,
            ..failure
        },
        Backoff::Discard => Failure {
            kind: FailureKind::Discard,
            ..failure
        },
        Backoff::Default => failure,
        other => failure.with_backoff(other),
    })
}

/// A `sidekiq_retry_in` block's value as the engine reads it.
pub fn backoff(value: Value) -> Result<Backoff, Error> {
    if value.is_nil() {
        return Ok(Backoff::Default);
    }
    if let Some(symbol) = Symbol::from_value(value) {
        return Ok(Backoff::from_word(&symbol.name()?));
    }
    if let Some(text) = RString::from_value(value) {
        return Ok(Backoff::from_word(&text.to_string()?));
    }
    Ok(match f64::try_convert(value) {
        Ok(secs) => Backoff::from_seconds(secs),
        Err(_) => Backoff::Default,
    })
}

/// `Rustq::Native.retry_in(value)`: a `sidekiq_retry_in` block's value as the engine will read
/// it — "kill", "discard", whole seconds, or nil for Sidekiq's formula.
pub fn retry_in(ruby: &Ruby, value: Value) -> Result<Value, Error> {
    Ok(match backoff(value)? {
        Backoff::Kill => ruby.str_new("kill").as_value(),
        Backoff::Discard => ruby.str_new("discard").as_value(),
        Backoff::In(d) => ruby.integer_from_u64(d.as_secs()).as_value(),
        _ => ruby.qnil().as_value(),
    })
}

/// `Rustq::Native.failed_payload(json, queue, error_class, message, backtrace, wire_version)`:
/// the payload
/// with this failure recorded as the engine records it (`job_retry::record_error`: the retry
/// queue, `error_message` truncated, `error_class`, `failed_at`/`retried_at`, `retry_count`,
/// `error_backtrace` when asked for), for the job's retry hooks, as a new Hash.
pub fn failed_payload(
    ruby: &Ruby,
    json: String,
    queue: String,
    error_class: String,
    message: String,
    backtrace: Vec<String>,
    wire_version: i64,
) -> Result<RHash, Error> {
    let wire = WireVersion::from_number(wire_version).unwrap_or(WireVersion::V7);
    let mut job =
        Job::from_json(&json).map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))?;
    let failure = Failure::retry(error_class, message).with_backtrace(backtrace);
    job_retry::record_error(&mut job, &queue, &failure, wire, wire::now_secs());
    Ok(to_ruby::hash_from_tape(
        ruby,
        &to_ruby::Tape::of(job.fields()),
    ))
}
