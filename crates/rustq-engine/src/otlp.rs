//! Exports job spans ([`crate::trace`]) to an OpenTelemetry collector over OTLP/HTTP (JSON),
//! when `otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is set; built with the `otlp` feature.
//!
//! Spans are batched on the SDK's own thread and posted there with a blocking client, never on
//! the job runtime: a slow or absent collector costs jobs nothing (the batch queue drops spans
//! when full). `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are read as by every SDK; the
//! service is `rustq-worker` otherwise.
//!
//! Chosen: the OpenTelemetry project's own crates (`opentelemetry`, `_sdk`, `-otlp`) and
//! `tracing-opentelemetry`, which turns the engine's `tracing` span into an OpenTelemetry span,
//! so the engine names its span once for logs and traces alike.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use rustq_core::Job;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::observer::Observer;
use crate::trace::{self, Propagation, TARGET};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The `tracing` layer that exports job spans to `endpoint`. Once per process (a second call
/// exports to the first endpoint).
pub fn layer<S>(endpoint: &str) -> Result<Box<dyn Layer<S> + Send + Sync>, String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let provider = match PROVIDER.get() {
        Some(provider) => provider.clone(),
        None => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .with_endpoint(trace::traces_url(endpoint))
                .build()
                .map_err(|e| format!("cannot export spans to {endpoint}: {e}"))?;
            let mut resource = Resource::builder();
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                resource = resource.with_service_name("rustq-worker");
            }
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build();
            let provider = PROVIDER.get_or_init(|| provider).clone();
            trace::set_exporter(Box::new(Otlp));
            provider
        }
    };
    let tracer = provider.tracer("rustq");
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO))
        .boxed())
}

/// The OTLP exporter, as [`crate::trace`] sees it.
struct Otlp;

impl trace::Exporter for Otlp {
    fn carrier(&self, job: &Job) -> Vec<(&'static str, String)> {
        current_carrier(job)
    }

    fn shutdown(&self) {
        if let Some(provider) = PROVIDER.get() {
            let _ = provider.shutdown();
        }
    }
}

/// The current span's context (the job's, when called inside it) as W3C headers, with the
/// push's `baggage`.
pub fn current_carrier(job: &Job) -> Vec<(&'static str, String)> {
    let mut headers = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut headers);
    let mut pairs = Vec::new();
    for key in &trace::KEYS[..2] {
        if let Some(value) = headers.remove(*key).filter(|v| !v.is_empty()) {
            pairs.push((*key, value));
        }
    }
    if pairs.is_empty() {
        return trace::pushed(job);
    }
    if let Some(baggage) = job.get("baggage").and_then(|v| v.as_str()) {
        pairs.push((trace::KEYS[2], baggage.to_string()));
    }
    pairs
}

/// Puts each job's span where `trace_propagation` says: under the push's span, linked to it,
/// or on its own.
pub struct Propagate(pub Propagation);

impl Observer for Propagate {
    fn started(&self, job: &Job, _queue: &str, span: &tracing::Span) {
        if self.0 == Propagation::None {
            return;
        }
        let pushed: HashMap<String, String> = trace::pushed(job)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        if pushed.is_empty() {
            return;
        }
        let parent = TraceContextPropagator::new().extract(&pushed);
        let context = parent.span().span_context().clone();
        if !context.is_valid() {
            return;
        }
        match self.0 {
            Propagation::Child => {
                let _ = span.set_parent(parent);
            }
            Propagation::Link => span.add_link(context),
            Propagation::None => {}
        }
    }
}
