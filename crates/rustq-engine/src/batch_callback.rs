//! Batch callbacks run by Rust handlers: Sidekiq Pro's `on(:success, "ImportDone")` calls
//! `ImportDone#on_success(status, options)`; a Rust worker registers a handler for the target
//! `ImportDone` instead ([`Registry::on_batch`]). Callback jobs are ordinary jobs of class
//! `Rustq::Batch::Callback` (`rustq_core::batch::CALLBACK_CLASS`), enqueued once by the step that
//! sees their event happen, so a handler runs once per event unless it fails (then it is retried
//! like any job).

use std::future::Future;
use std::sync::Arc;

use rustq_core::batch::{Event, CALLBACK_CLASS};
use serde_json::Value;

use crate::failure::{Failure, JobResult};
use crate::handler::{JobContext, Registered, Registry};

/// One call of a batch callback: what `on_<event>(status, options)` is given in Ruby.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchCall {
    /// The event: complete, success or death.
    pub event: Event,
    /// The batch whose event it is (`rustq_core::batch::status` reads its counts).
    pub bid: String,
    /// The target as given to `on`: `"Class"` or `"Class#method"`.
    pub target: String,
    /// The method the target names (`"Class#method"`), or `on_<event>`.
    pub method: String,
    /// The options given to `on`.
    pub options: Value,
}

impl BatchCall {
    /// Reads a callback job's arguments: `[event, bid, target, options]`.
    pub fn from_args(args: &[Value]) -> Result<BatchCall, Failure> {
        let text = |at: usize| args.get(at).and_then(Value::as_str).unwrap_or_default();
        let event = Event::parse(text(0)).ok_or_else(|| {
            Failure::kill(
                "ArgumentError",
                format!("not a batch event: {:?}", args.first()),
            )
        })?;
        let target = text(2).to_string();
        let method = match target.split_once('#') {
            Some((_, method)) => method.to_string(),
            None => format!("on_{}", event.as_str()),
        };
        Ok(BatchCall {
            event,
            bid: text(1).to_string(),
            target,
            method,
            options: args.get(3).cloned().unwrap_or(Value::Null),
        })
    }

    /// The class the target names.
    pub fn class(&self) -> &str {
        self.target.split('#').next().unwrap_or_default()
    }
}

impl Registry {
    /// Runs batch callbacks whose target is `class` (`on(:success, "ImportDone")` or
    /// `"ImportDone#finished"`) with `f`; the call says which event and method.
    ///
    /// ```
    /// use rustq_engine::Registry;
    /// let mut registry = Registry::new();
    /// registry.on_batch("ImportDone", |_ctx, call| async move {
    ///     println!("batch {} {:?} ({})", call.bid, call.event, call.method);
    ///     Ok(())
    /// });
    /// ```
    pub fn on_batch<F, Fut>(&mut self, class: &str, f: F) -> &mut Registered
    where
        F: Fn(JobContext, BatchCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let f = Arc::new(f);
        let callback = move |ctx: JobContext| {
            let f = f.clone();
            async move {
                let call = BatchCall::from_args(ctx.args())?;
                f(ctx, call).await
            }
        };
        let callbacks = self.batch_callbacks();
        if let Ok(mut map) = callbacks.lock() {
            map.insert(class.to_string(), Arc::new(callback));
        }
        self.handle(CALLBACK_CLASS, move |ctx: JobContext| {
            let target = ctx
                .args()
                .get(2)
                .and_then(Value::as_str)
                .unwrap_or_default();
            let class = target.split('#').next().unwrap_or_default();
            let handler = callbacks
                .lock()
                .ok()
                .and_then(|map| map.get(class).cloned());
            let target = target.to_string();
            async move {
                let Some(handler) = handler else {
                    // Another process of the fleet (a Ruby one) may know it: retried like any job.
                    return Err(Failure::retry(
                        "NameError",
                        format!("no Rust handler for batch callback {target}"),
                    ));
                };
                handler.perform(ctx).await
            }
        })
    }
}
