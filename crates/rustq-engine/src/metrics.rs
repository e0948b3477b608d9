//! Prometheus metrics of a process: an [`Observer`] counting each job by queue and class, with
//! its run time and its wait from push to start, plus the gauges read at each scrape (busy,
//! concurrency, quiet, Redis, memory) and the fleet's state when this process is the one
//! reporting it ([`crate::fleet`]). Served at `/metrics` by [`crate::http`], in Prometheus'
//! text format (0.0.4), which every Prometheus, `promtool check metrics` and agents read.
//!
//! Names follow Prometheus' conventions: counters end in `_total`, times are in `_seconds`.
//! Other capabilities (recurring jobs, limits, batches) register their counters in
//! [`Metrics::registry`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    Opts, Registry, TextEncoder,
};
use rustq_core::wire;

use crate::fleet::Fleet;
use crate::observer::{Finished, Observer};

/// Bounds of the run time histogram, in seconds: from a no-op job to a long import.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Bounds of the push-to-start histogram, in seconds: a healthy queue starts jobs within
/// milliseconds; a backed-up one within minutes or hours.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

/// One (queue, class)'s series, looked up once per job.
struct Series {
    executed: IntCounter,
    succeeded: IntCounter,
    failed: IntCounter,
    retried: IntCounter,
    dead: IntCounter,
    duration: Histogram,
    latency: Histogram,
}

/// What the process reports at a scrape besides its job counts.
#[derive(Clone, Debug, Default)]
pub struct ProcessState {
    /// Jobs running now.
    pub busy: usize,
    /// Jobs it may run at once.
    pub concurrency: usize,
    /// Quiet or stopping: fetching nothing new.
    pub quiet: bool,
    /// Redis answered a `PING` during this scrape, and how long it took.
    pub redis_rtt: Option<Duration>,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

/// A process's metrics.
pub struct Metrics {
    registry: Registry,
    executed: IntCounterVec,
    succeeded: IntCounterVec,
    failed: IntCounterVec,
    retried: IntCounterVec,
    dead: IntCounterVec,
    duration: HistogramVec,
    latency: HistogramVec,
    /// queue → class → series: two lookups by `&str`, no allocation once a pair was seen.
    series: Mutex<HashMap<String, HashMap<String, Arc<Series>>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

const JOB_LABELS: [&str; 2] = ["queue", "class"];

impl Metrics {
    /// Metrics with every job series registered and empty.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &JOB_LABELS).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &JOB_LABELS,
            )
            .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        Metrics {
            executed: counter(
                "rustq_jobs_executed_total",
                "Jobs run by this process, whatever their outcome.",
            ),
            succeeded: counter(
                "rustq_jobs_succeeded_total",
                "Jobs that ran without error.",
            ),
            failed: counter(
                "rustq_jobs_failed_total",
                "Jobs that raised or returned an error (retried, dead, or dropped with retry: false).",
            ),
            retried: counter(
                "rustq_jobs_retried_total",
                "Failed jobs sent to the retry set.",
            ),
            dead: counter("rustq_jobs_dead_total", "Failed jobs sent to the dead set."),
            duration: histogram(
                "rustq_job_duration_seconds",
                "How long jobs ran.",
                &DURATION_BUCKETS,
            ),
            latency: histogram(
                "rustq_job_latency_seconds",
                "How long jobs waited from being pushed to their queue to their start.",
                &LATENCY_BUCKETS,
            ),
            registry,
            series: Mutex::new(HashMap::new()),
        }
    }

    /// The registry the process's counters live in: a capability registers its own here.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn series(&self, queue: &str, class: &str) -> Arc<Series> {
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = all.get(queue).and_then(|classes| classes.get(class)) {
            return series.clone();
        }
        let labels = [queue, class];
        let series = Arc::new(Series {
            executed: self.executed.with_label_values(&labels),
            succeeded: self.succeeded.with_label_values(&labels),
            failed: self.failed.with_label_values(&labels),
            retried: self.retried.with_label_values(&labels),
            dead: self.dead.with_label_values(&labels),
            duration: self.duration.with_label_values(&labels),
            latency: self.latency.with_label_values(&labels),
        });
        all.entry(queue.to_string())
            .or_default()
            .insert(class.to_string(), series.clone());
        series
    }

    /// The text `/metrics` serves: this process's counters, `state`, and the fleet's state
    /// when this process reports it (`None`: another process does, or Redis could not say).
    pub fn render(&self, state: &ProcessState, fleet: Option<&Fleet>) -> String {
        let scrape = Registry::new();
        let gauge = |name: &str, help: &str, value: f64| {
            let g = Gauge::new(name, help).expect("valid metric");
            g.set(value);
            scrape.register(Box::new(g)).expect("unique");
        };
        gauge(
            "rustq_busy",
            "Jobs running in this process now.",
            state.busy as f64,
        );
        gauge(
            "rustq_concurrency",
            "Jobs this process may run at once.",
            state.concurrency as f64,
        );
        gauge(
            "rustq_quiet",
            "1 while this process is quiet or stopping (fetching nothing new).",
            f64::from(u8::from(state.quiet)),
        );
        gauge(
            "rustq_redis_up",
            "1 when Redis answered this scrape's PING within a second.",
            f64::from(u8::from(state.redis_rtt.is_some())),
        );
        if let Some(rtt) = state.redis_rtt {
            gauge(
                "rustq_redis_rtt_seconds",
                "Round-trip time of this scrape's PING to Redis.",
                rtt.as_secs_f64(),
            );
        }
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            state.rss_bytes as f64,
        );
        gauge(
            "rustq_fleet_reporter",
            "1 on the one process that reports the rustq_fleet_*, rustq_queue_* and set sizes (the live rustq process with an HTTP endpoint whose identity sorts first).",
            f64::from(u8::from(fleet.is_some())),
        );
        if let Some(fleet) = fleet {
            fleet_gauges(&scrape, fleet);
        }
        let mut families = self.registry.gather();
        families.extend(scrape.gather());
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("encoding to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

fn fleet_gauges(scrape: &Registry, fleet: &Fleet) {
    let gauge = |name: &str, help: &str, value: f64| {
        let g = Gauge::new(name, help).expect("valid metric");
        g.set(value);
        scrape.register(Box::new(g)).expect("unique");
    };
    let per_queue = |name: &str, help: &str| {
        let g = GaugeVec::new(Opts::new(name, help), &["queue"]).expect("valid metric");
        scrape.register(Box::new(g.clone())).expect("unique");
        g
    };
    let size = per_queue("rustq_queue_size", "Jobs waiting in each queue.");
    let latency = per_queue(
        "rustq_queue_latency_seconds",
        "Age of the oldest job waiting in each queue (Sidekiq's Queue#latency).",
    );
    for queue in &fleet.queues {
        size.with_label_values(&[queue.name.as_str()])
            .set(queue.size as f64);
        latency
            .with_label_values(&[queue.name.as_str()])
            .set(queue.latency_secs);
    }
    gauge(
        "rustq_scheduled_size",
        "Jobs in the schedule set.",
        fleet.scheduled as f64,
    );
    gauge(
        "rustq_retry_size",
        "Jobs in the retry set.",
        fleet.retries as f64,
    );
    gauge(
        "rustq_dead_size",
        "Jobs in the dead set.",
        fleet.dead as f64,
    );
    gauge(
        "rustq_fleet_processes",
        "Live processes in the processes set (rustq and Sidekiq).",
        fleet.processes as f64,
    );
    gauge(
        "rustq_fleet_busy",
        "Jobs running across the live processes.",
        fleet.busy as f64,
    );
}

impl Observer for Metrics {
    fn finished(&self, done: &Finished<'_>) {
        let series = self.series(done.queue, done.class);
        series.executed.inc();
        if done.failed {
            series.failed.inc();
            if done.retried() {
                series.retried.inc();
            } else if done.died() {
                series.dead.inc();
            }
        } else {
            series.succeeded.inc();
        }
        series.duration.observe(done.elapsed.as_secs_f64());
        if let Some(enqueued) = done.job.enqueued_at_secs() {
            let started = wire::now_secs() - done.elapsed.as_secs_f64();
            series.latency.observe((started - enqueued).max(0.0));
        }
    }
}
