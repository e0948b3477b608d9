//! Job spans exported over OTLP/HTTP (`--otlp-endpoint`) to a stand-in collector: a job pushed
//! with a `traceparent` continues that trace (`trace_propagation: child`, the default) or links
//! to it (`link`); a failed job's span says so; spans carry the attributes
//! opentelemetry-instrumentation-sidekiq gives its own. The gem's half (a Ruby push's context,
//! a Ruby-host job inside the engine's span) is in spec/worker/rustq_worker_spec.rb.

use std::time::Duration;

use rustq_interop::{config_file, ledger, TestWorker};
use rustq_testing::{otlp_attribute, wait_until, OtlpReceiver, RedisServer};

const WORKER: &str = env!("CARGO_BIN_EXE_rustq-test-worker");
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn push(redis: &RedisServer, class: &str, jid: &str, traced: bool) {
    let now = rustq_core::wire::now_secs();
    let mut job = serde_json::json!({
        "class": class, "args": [], "jid": jid, "queue": "default", "retry": 3,
        "created_at": now, "enqueued_at": now,
    });
    if traced {
        job["traceparent"] = format!("00-{TRACE}-{PARENT}-01").into();
        job["tracestate"] = "vendor=1".into();
    }
    redis.cli(&["LPUSH", "queue:default", &job.to_string()]);
    redis.cli(&["SADD", "queues", "default"]);
}

fn span_of(receiver: &OtlpReceiver, jid: &str) -> Option<serde_json::Value> {
    receiver
        .spans()
        .into_iter()
        .find(|s| otlp_attribute(s, "messaging.message_id").as_deref() == Some(jid))
}

/// Runs the given jobs and returns each one's exported span, after a graceful stop (which
/// flushes the exporter's batch).
fn spans(yaml: &str, jobs: &[(&str, &str, bool)]) -> Vec<serde_json::Value> {
    let redis = RedisServer::start();
    let receiver = OtlpReceiver::start();
    let endpoint = receiver.endpoint();
    let config = config_file(&redis, yaml);
    let mut worker = TestWorker::start(
        WORKER,
        &redis,
        &["-c", "2", "--otlp-endpoint", &endpoint, "-C", &config],
    );
    for (class, jid, traced) in jobs {
        push(&redis, class, jid, *traced);
    }
    assert!(
        wait_until(Duration::from_secs(20), || ledger(&redis).len()
            == jobs.len()),
        "jobs not run: {}",
        worker.log_text()
    );
    worker.signal("TERM");
    assert!(worker
        .wait(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    let log = worker.log_text();
    assert!(
        !log.contains("process{"),
        "the log shows job spans, which are for traces only:\n{log}"
    );
    jobs.iter()
        .map(|(_, jid, _)| {
            span_of(&receiver, jid)
                .unwrap_or_else(|| panic!("no span for {jid}: {:?}\n{log}", receiver.spans()))
        })
        .collect()
}

#[test]
fn a_pushed_trace_continues_in_the_jobs_consumer_span() {
    let found = spans(
        "concurrency: 2\n",
        &[
            ("LedgerJob", "traced-ok", true),
            ("FailJob", "traced-fail", true),
            ("LedgerJob", "untraced", false),
        ],
    );
    let (ok, failed, untraced) = (&found[0], &found[1], &found[2]);
    assert_eq!(ok["traceId"], TRACE, "{ok}");
    assert_eq!(ok["parentSpanId"], PARENT, "{ok}");
    assert_eq!(ok["name"], "default process");
    assert_eq!(ok["kind"], 5, "SPAN_KIND_CONSUMER: {ok}");
    assert_eq!(
        otlp_attribute(ok, "messaging.system").as_deref(),
        Some("sidekiq")
    );
    assert_eq!(
        otlp_attribute(ok, "messaging.sidekiq.job_class").as_deref(),
        Some("LedgerJob")
    );
    assert_eq!(
        otlp_attribute(ok, "messaging.destination").as_deref(),
        Some("default")
    );
    assert_eq!(
        otlp_attribute(&ok["resource"], "service.name").as_deref(),
        Some("rustq-worker")
    );
    assert_ne!(ok["status"]["code"], 2, "{ok}");

    assert_eq!(failed["traceId"], TRACE);
    assert_eq!(failed["status"]["code"], 2, "STATUS_CODE_ERROR: {failed}");
    assert_eq!(
        otlp_attribute(failed, "error.type").as_deref(),
        Some("RuntimeError")
    );

    assert_ne!(untraced["traceId"], TRACE);
    assert!(
        untraced["parentSpanId"].as_str().unwrap_or("").is_empty(),
        "{untraced}"
    );
}

#[test]
fn link_mode_starts_a_trace_per_job_linked_to_the_push() {
    let found = spans(
        "trace_propagation: link\n",
        &[("LedgerJob", "linked", true)],
    );
    let span = &found[0];
    assert_ne!(span["traceId"], TRACE, "{span}");
    assert!(
        span["parentSpanId"].as_str().unwrap_or("").is_empty(),
        "{span}"
    );
    assert_eq!(span["links"][0]["traceId"], TRACE, "{span}");
    assert_eq!(span["links"][0]["spanId"], PARENT, "{span}");
}

#[test]
fn a_bad_endpoint_or_propagation_exits_2_naming_it() {
    for (args, expected) in [
        (
            vec!["--otlp-endpoint", "collector:4318"],
            "--otlp-endpoint must be an http:// URL",
        ),
        (
            vec!["--otlp-endpoint", "https://collector:4318"],
            "https is not built in",
        ),
    ] {
        let out = std::process::Command::new(WORKER)
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(expected), "{args:?}: {text}");
    }
    let redis = RedisServer::start();
    let config = config_file(&redis, "trace_propagation: sideways\n");
    let out = std::process::Command::new(WORKER)
        .args(["-C", &config])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("rustq.yml")
            && text.contains("`trace_propagation` must be child, link or none"),
        "{text}"
    );
}
