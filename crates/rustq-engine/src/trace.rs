//! A job's trace: each job runs inside a `"<queue> process"` span of kind consumer, with the
//! attributes opentelemetry-instrumentation-sidekiq gives its own (`messaging.system`,
//! `messaging.sidekiq.job_class`, `messaging.message_id`, `messaging.destination`), so traces
//! and dashboards read the same whichever server ran the job. The span has its own target,
//! [`TARGET`]: the log leaves it out, and where no trace exporter is installed it costs nothing.
//!
//! The trace context a push carried (`traceparent`, `tracestate`, `baggage`: top-level payload
//! keys, as that instrumentation's client middleware and the gem write them) is where the span
//! belongs ([`Propagation`]); with the `otlp` feature and `otlp_endpoint` set, spans are exported
//! to an OpenTelemetry collector (see `otlp`). A host that runs the job elsewhere (the Ruby host)
//! hands it [`carrier`], so the job's own spans continue the trace.

use rustq_core::Job;

/// The `tracing` target of job spans.
pub const TARGET: &str = "rustq::job";

/// The payload keys that carry a trace context, as W3C's propagators name them.
pub const KEYS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// `trace_propagation`: how a job's span relates to the trace its push carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// The job's span is a child of the pusher's: one trace from the request to the job (the
    /// default: a slow job shows in the request's trace).
    #[default]
    Child,
    /// A new trace per job, linked to the pusher's (opentelemetry-instrumentation-sidekiq's
    /// default `propagation_style: :link`).
    Link,
    /// The push's context is ignored.
    None,
}

impl Propagation {
    /// `child`, `link` or `none`.
    pub fn parse(text: &str) -> Option<Propagation> {
        match text {
            "child" => Some(Propagation::Child),
            "link" => Some(Propagation::Link),
            "none" => Some(Propagation::None),
            _ => None,
        }
    }
}

/// Checks an `otlp_endpoint`: an `http://` URL (a collector's OTLP/HTTP base address, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT`). Returns it, or why not.
pub fn check_endpoint(url: &str) -> Result<String, String> {
    let url = url.trim();
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            "an http:// URL: send spans to a local collector or agent (https is not built in)"
                .into()
        } else {
            format!("an http:// URL such as http://127.0.0.1:4318, not {url:?}")
        });
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || url.parse::<axum::http::Uri>().is_err() {
        return Err(format!(
            "an http:// URL such as http://127.0.0.1:4318, not {url:?}"
        ));
    }
    Ok(url.to_string())
}

/// Where spans are posted: the endpoint with OTLP's `/v1/traces` path, as the OpenTelemetry SDKs
/// read `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The span `job` runs in.
pub fn job_span(job: &Job, queue: &str, class: &str) -> tracing::Span {
    tracing::info_span!(
        target: TARGET,
        "process",
        otel.name = %format_args!("{queue} process"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        messaging.system = "sidekiq",
        messaging.sidekiq.job_class = %class,
        messaging.message_id = job.jid().unwrap_or(""),
        messaging.destination = %queue,
        messaging.operation = "process",
    )
}

/// Marks the job's span as failed, with the error's class.
pub fn failed(span: &tracing::Span, error_class: &str) {
    span.record("otel.status_code", "error");
    span.record("error.type", error_class);
}

/// What exports spans, once one does (the `otlp` feature's exporter registers itself here, so
/// this module needs nothing above it).
pub trait Exporter: Send + Sync {
    /// The current span's context (the job's, inside its span) as W3C header pairs.
    fn carrier(&self, job: &Job) -> Vec<(&'static str, String)>;
    /// Sends the spans still batched and stops.
    fn shutdown(&self);
}

static EXPORTER: std::sync::OnceLock<Box<dyn Exporter>> = std::sync::OnceLock::new();

/// Registers the process's span exporter (the first one stays).
pub fn set_exporter(exporter: Box<dyn Exporter>) {
    let _ = EXPORTER.set(exporter);
}

/// The trace context for code that runs the job outside the engine (the Ruby host's threads),
/// called inside the job's span: the span's own context when spans are exported, else what the
/// push carried. Pairs of W3C header name and value.
pub fn carrier(job: &Job) -> Vec<(&'static str, String)> {
    match EXPORTER.get() {
        Some(exporter) => exporter.carrier(job),
        None => pushed(job),
    }
}

/// The well-formed context keys the payload carries (`traceparent` checked, the others only
/// with it).
pub fn pushed(job: &Job) -> Vec<(&'static str, String)> {
    let Some(parent) = traceparent(job) else {
        return Vec::new();
    };
    let mut pairs = vec![(KEYS[0], parent.to_string())];
    for key in &KEYS[1..] {
        if let Some(value) = job.get(key).and_then(|v| v.as_str()) {
            pairs.push((key, value.to_string()));
        }
    }
    pairs
}

/// Flushes and stops the span exporter, if any: spans of the last jobs are sent before the
/// process exits. Blocks up to the exporter's timeout; call it off the async runtime.
pub fn shutdown() {
    if let Some(exporter) = EXPORTER.get() {
        exporter.shutdown();
    }
}

/// The W3C `traceparent` a push carried, if well formed (`00-<32 hex>-<16 hex>-<2 hex>`, ids
/// not all zero).
pub fn traceparent(job: &Job) -> Option<&str> {
    let value = job.get("traceparent")?.as_str()?;
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    match parts.as_slice() {
        [version, trace, span, flags]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace, 32)
                && nonzero(trace)
                && hex(span, 16)
                && nonzero(span)
                && hex(flags, 2) =>
        {
            Some(value)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(traceparent: serde_json::Value) -> Job {
        Job::from_json(
            &serde_json::json!({"class": "A", "args": [], "jid": "j", "traceparent": traceparent})
                .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn endpoints_are_http_urls_and_get_the_traces_path() {
        assert_eq!(
            check_endpoint(" http://127.0.0.1:4318 ").unwrap(),
            "http://127.0.0.1:4318"
        );
        for bad in [
            "",
            "127.0.0.1:4318",
            "https://collector:4318",
            "http://",
            "http:// x",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn hands_on_the_pushed_context_only_with_a_good_traceparent() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with = |parent: &str| {
            Job::from_json(
                &serde_json::json!({"class": "A", "args": [], "traceparent": parent,
                    "tracestate": "k=v", "baggage": "user=1"})
                .to_string(),
            )
            .unwrap()
        };
        assert_eq!(
            pushed(&with(good)),
            vec![
                ("traceparent", good.to_string()),
                ("tracestate", "k=v".to_string()),
                ("baggage", "user=1".to_string())
            ]
        );
        assert!(pushed(&with("garbage")).is_empty());
    }

    #[test]
    fn reads_a_well_formed_traceparent_only() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent(&job(good.into())), Some(good));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            assert_eq!(traceparent(&job(bad.into())), None, "{bad}");
        }
        assert_eq!(traceparent(&job(serde_json::Value::from(7))), None);
    }
}
