//! The rustq gem's native extension: a thin bridge from Ruby to `rustq-core`.
//!
//! Everything Ruby-shaped (the `Rustq::Job` mixin, `Rustq::Client`, the ActiveJob adapter,
//! testing modes) lives in the gem's `lib/`; this crate only converts values and calls the
//! core. Its methods hang off the private `Rustq::Native` module:
//!
//! | method | does |
//! |---|---|
//! | `configure(settings)` | replaces the Redis/client settings; the next push reconnects |
//! | `push(item)` | pushes one job, returns its jid |
//! | `push_bulk(items)` | pushes many jobs of one class, returns their jids |
//! | `prepare(item, bulk)` | validates and normalises without Redis, returns payload JSON (testing) |
//! | `runtime_pid` | the pid that built the current runtime, or nil |
//! | `spin_wait` | seconds a single push spins for its reply, as configured or defaulted |
//! | `cron_save`, `cron_find`, `cron_all`, `cron_destroy`, `cron_status`, `cron_enqueue`, `cron_history` | recurring jobs, for `Rustq::Cron` |
//!
//! and `Rustq::Native::Worker` (with `Rustq::Native::Running`) runs the worker engine for
//! `rustq-worker` (see [`worker`]).

use magnus::{function, method, prelude::*, Error, Ruby};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod answers;
mod batch;
mod client;
mod convert;
mod cron;
mod errors;
mod failure;
mod gvl;
mod job_queue;
mod limiter;
mod push;
mod ruby_handler;
mod to_ruby;
mod worker;

#[magnus::init(name = "rustq")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let native = ruby.define_module("Rustq")?.define_module("Native")?;
    native.define_singleton_method("configure", function!(client::configure, 1))?;
    native.define_singleton_method("runtime_pid", function!(client::runtime_pid, 0))?;
    native.define_singleton_method("spin_wait", function!(client::spin_wait, 0))?;
    native.define_singleton_method("push", function!(push::push, 1))?;
    native.define_singleton_method("push_bulk", function!(push::push_bulk, 1))?;
    native.define_singleton_method("push_payloads", function!(push::push_payloads, 1))?;
    native.define_singleton_method("prepare", function!(push::prepare, 2))?;
    native.define_singleton_method("retry_in", function!(failure::retry_in, 1))?;
    native.define_singleton_method("capsules_refused", function!(worker::capsules_refused, 1))?;
    native.define_singleton_method("failed_payload", function!(failure::failed_payload, 6))?;
    native.define_singleton_method("signals", function!(worker::signals, 0))?;
    native.define_singleton_method("limiter_acquire", function!(limiter::acquire, 5))?;
    native.define_singleton_method("limiter_release", function!(limiter::release, 3))?;
    native.define_singleton_method("limiter_bucket", function!(limiter::bucket, 3))?;
    native.define_singleton_method("limiter_window", function!(limiter::window, 4))?;
    native.define_singleton_method("limits_list", function!(limiter::list, 0))?;
    native.define_singleton_method("batch_add", function!(batch::add, 3))?;
    native.define_singleton_method("batch_prepare", function!(batch::prepare, 3))?;
    native.define_singleton_method("batch_status", function!(batch::status, 1))?;
    native.define_singleton_method("batch_members", function!(batch::members, 2))?;
    native.define_singleton_method("batch_all", function!(batch::all, 0))?;
    native.define_singleton_method("batch_invalidate", function!(batch::invalidate, 1))?;
    native.define_singleton_method("batch_invalidated?", function!(batch::invalidated, 1))?;
    native.define_singleton_method("batch_count", function!(batch::count, 2))?;
    native.define_singleton_method("cron_save", function!(cron::save, 2))?;
    native.define_singleton_method("cron_find", function!(cron::find, 2))?;
    native.define_singleton_method("cron_all", function!(cron::all, 1))?;
    native.define_singleton_method("cron_destroy", function!(cron::destroy, 2))?;
    native.define_singleton_method("cron_status", function!(cron::set_status, 3))?;
    native.define_singleton_method("cron_enqueue", function!(cron::enqueue, 2))?;
    native.define_singleton_method("cron_history", function!(cron::history, 2))?;
    native.define_singleton_method("cron_command", function!(cron::command, 2))?;

    let worker = native.define_class("Worker", ruby.class_object())?;
    worker.define_singleton_method("new", function!(worker::Worker::new, 3))?;
    worker.define_method("require_path", method!(worker::Worker::require_path, 0))?;
    worker.define_method("environment", method!(worker::Worker::environment, 0))?;
    worker.define_method("concurrency", method!(worker::Worker::concurrency, 0))?;
    worker.define_method("wire_version", method!(worker::Worker::wire_version, 0))?;
    worker.define_method("allowed_jobs", method!(worker::Worker::allowed_jobs, 0))?;
    worker.define_method(
        "allowed_mailers",
        method!(worker::Worker::allowed_mailers, 0),
    )?;
    worker.define_method("identity", method!(worker::Worker::identity, 0))?;
    worker.define_method("listen", method!(worker::Worker::listen, 0))?;
    worker.define_method("start", method!(worker::Worker::start, 0))?;
    worker.define_method(
        "adopt_redis_url",
        method!(worker::Worker::adopt_redis_url, 1),
    )?;
    worker.define_method("run_jobs", method!(worker::Worker::run_jobs, 2))?;
    worker.define_method("stop_abandoned", method!(worker::Worker::stop_abandoned, 2))?;
    worker.define_method("signal", method!(worker::Worker::signal, 1))?;
    worker.define_method("stopping?", method!(worker::Worker::stopping, 0))?;
    worker.define_method("quiet?", method!(worker::Worker::quiet, 0))?;
    worker.define_method("beats", method!(worker::Worker::beats, 0))?;
    worker.define_method(
        "watchdog_interval",
        method!(worker::Worker::watchdog_interval, 0),
    )?;
    worker.define_method("ping_watchdog", method!(worker::Worker::ping_watchdog, 0))?;
    worker.define_method("wait", method!(worker::Worker::wait, 1))?;
    let running = native.define_class("Running", ruby.class_object())?;
    running.define_method("payload_json", method!(worker::Running::payload_json, 0))?;
    running.define_method("payload", method!(worker::Running::payload, 0))?;
    running.define_method("trace_context", method!(worker::Running::trace_context, 0))?;
    Ok(())
}
