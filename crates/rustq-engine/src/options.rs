//! How a worker is configured: Sidekiq's options (`sidekiq.yml` shape) plus rustq's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustq_core::{RedisConfig, Retry, WireVersion};

use crate::dead_set::DeadSetLimits;
use serde_norway::Value as Yaml;

/// Why Sidekiq 7's capsules (`what`: where they were found) are refused rather than left
/// unworked; the config file and the Ruby host's check of `Sidekiq.configure_server` both say it.
pub fn capsules_refused(what: &str) -> String {
    format!("{what} are not supported: run one rustq-worker per capsule, with its own -q and -c")
}

/// A queue and its weight, as in `-q critical,3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueWeight {
    /// The queue's name, without the `queue:` prefix.
    pub name: String,
    /// 0 when no weight was given.
    pub weight: u32,
}

impl QueueWeight {
    /// Parses `name` or `name,weight`.
    pub fn parse(spec: &str) -> Result<QueueWeight, ConfigError> {
        let (name, weight) = match spec.split_once(',') {
            Some((n, w)) => (
                n.trim(),
                w.trim().parse().map_err(|_| {
                    ConfigError::Invalid(format!("queue weight in {spec:?} is not a number"))
                })?,
            ),
            None => (spec.trim(), 0),
        };
        rustq_core::client::check_queue_name(name)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(QueueWeight {
            name: name.to_string(),
            weight,
        })
    }
}

/// A handler declared in the config file rather than in Rust.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum HandlerSpec {
    /// Run a program (no shell): job JSON on stdin, exit status 0 is success.
    Exec {
        /// The program, then its arguments.
        argv: Vec<String>,
        /// Variables of the worker's environment the program also gets (`env: [NAME, …]`),
        /// besides [`crate::handler::EXEC_ENV`]: the worker's own (its Redis URL, an app's secrets)
        /// are not passed on unless named.
        env: Vec<String>,
    },
    /// Succeed without doing anything (benchmarks, smoke tests).
    Noop,
}

/// A per-class entry of the config file's `handlers:` map.
#[derive(Clone, Debug, PartialEq)]
pub struct HandlerConfig {
    /// What runs the jobs.
    pub spec: HandlerSpec,
    /// `timeout`: the time limit of one run, in place of the process's `job_timeout`.
    pub timeout: Option<Duration>,
    /// `retry`: retries for jobs of this class whose payload has no `retry` of its own.
    pub retry: Option<Retry>,
}

/// Everything a worker process needs to know.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// The Redis to work from (`--redis-url`, `REDIS_URL` or the file's `redis_url`).
    pub redis: RedisConfig,
    /// Jobs run at once (`-c`).
    pub concurrency: usize,
    /// Queues in the order given, with weights (`-q`).
    pub queues: Vec<QueueWeight>,
    /// Graceful shutdown waits this long for running jobs before pushing them back (`-t`).
    pub shutdown_timeout: Duration,
    /// A per-job time limit for jobs whose handler sets none.
    pub job_timeout: Option<Duration>,
    /// Tag shown in the Web UI's process list (`-g`, `tag`).
    pub tag: Option<String>,
    /// Labels shown in the Web UI's process list (`--label`, `labels`).
    pub labels: Vec<String>,
    /// Which Sidekiq generation's wire format to write: timestamps and retry backoff.
    pub wire: WireVersion,
    /// Which Sidekiq generations' execution-metrics keys to write (`metrics_format:`; both by
    /// default, so 7.x's and 8.x's Metrics tabs both chart rustq's jobs).
    pub metrics: crate::stats::MetricsFormats,
    /// Retries for `retry: true`.
    pub max_retries: u32,
    /// Scheduled poller: average seconds between polls for one process (Sidekiq: 5).
    pub average_scheduled_poll_interval: f64,
    /// Fixed average poll interval, overriding the process-count scaling.
    pub poll_interval_average: Option<f64>,
    /// Seconds between heartbeats.
    pub heartbeat_interval: Duration,
    /// A job in flight on processes that died this many times goes to the dead set.
    pub max_recoveries: u32,
    /// Most jobs taken from Redis in one fetch round trip.
    pub fetch_batch: usize,
    /// Jobs that may be taken beyond `concurrency` while jobs are short (under 5 ms on
    /// average), so a fast worker is never waiting on a round trip. Long jobs are never taken
    /// ahead: they spread over all processes, as with Sidekiq.
    pub prefetch: usize,
    /// Hand jobs fetched ahead straight to handlers that run them on threads of their own and
    /// signal when each starts ([`crate::Handler::signals_start`], the Ruby host's threads), so
    /// a thread finishing one short job finds the next one waiting instead of a round trip
    /// through the engine. Busy counts, timing and requeue-on-quiet follow the real starts.
    pub dispatch_ahead: bool,
    /// systemd's watchdog (`WATCHDOG_USEC`) is pinged by the host process (the Ruby host, from
    /// a Ruby thread, so a VM stuck holding its lock stops the pings), not by the engine.
    pub host_watchdog: bool,
    /// Handlers declared in the config file's `handlers:` (and by `--noop`), by class name.
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// `dead_max_jobs` and `dead_timeout_in_seconds`, as in `sidekiq.yml`.
    pub dead_set: DeadSetLimits,
    /// `require`: the file or Rails root a Ruby host loads when `-r` is not given.
    pub require: Option<String>,
    /// The Redis URL came from the config file or `--redis-url`, not from `REDIS_URL` or the
    /// default: a Ruby host then keeps it over the app's `Sidekiq.configure_server` one.
    pub redis_url_given: bool,
    /// `allowed_jobs`: when set, the only job classes (a Ruby job's class, an ActiveJob's
    /// `job_class`; `Namespace::*` for all under a namespace) the Ruby host runs. Anyone who can
    /// write to Redis can otherwise name any job class the app has.
    pub allowed_jobs: Option<Vec<String>>,
    /// `allowed_mailers`: when set, the only mailers `ActionMailer::MailDeliveryJob` may call.
    pub allowed_mailers: Option<Vec<String>>,
    /// `http`: where the HTTP endpoint (`/metrics`, `/livez`, `/readyz`) listens; off when unset.
    pub http: Option<std::net::SocketAddr>,
    /// `http_token`: the bearer token `/metrics` asks for (required when `http` is beyond loopback).
    pub http_token: Option<String>,
    /// `otlp_endpoint`: the OTLP/HTTP collector job spans go to (`http://host:4318`, as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; `/v1/traces` is added); no export when unset.
    pub otlp_endpoint: Option<String>,
    /// `trace_propagation`: how a job's span relates to the trace its push carried.
    pub trace_propagation: crate::trace::Propagation,
    /// `cron`: run the scheduler of recurring jobs (on unless `false`).
    pub cron: bool,
    /// `cron_timezone`: the zone of cron lines without one (default: `TZ`, else UTC).
    pub cron_timezone: rustq_cron::Zone,
    /// Schedules of the `schedule:` section and the schedule file (`schedule_file`, default
    /// `config/schedule.yml` when it exists); `None` when neither was given.
    pub schedule: Option<Vec<rustq_cron::Schedule>>,
    /// `schedule_file`: sidekiq-cron's schedule file to read.
    pub schedule_file: Option<String>,
    /// `recurring_file`: Solid Queue's recurring tasks to read (default `config/recurring.yml`
    /// when it exists).
    pub recurring_file: Option<String>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            redis: RedisConfig::from_env(),
            concurrency: 10,
            queues: vec![QueueWeight {
                name: "default".into(),
                weight: 0,
            }],
            shutdown_timeout: Duration::from_secs(25),
            job_timeout: None,
            tag: None,
            labels: Vec::new(),
            wire: WireVersion::V7,
            metrics: crate::stats::MetricsFormats::default(),
            max_retries: rustq_core::wire::DEFAULT_MAX_RETRIES,
            average_scheduled_poll_interval: 5.0,
            poll_interval_average: None,
            heartbeat_interval: Duration::from_secs(10),
            max_recoveries: 3,
            fetch_batch: 100,
            prefetch: 100,
            dispatch_ahead: false,
            host_watchdog: false,
            handlers: BTreeMap::new(),
            dead_set: DeadSetLimits::default(),
            require: None,
            redis_url_given: false,
            allowed_jobs: None,
            allowed_mailers: None,
            http: None,
            http_token: None,
            otlp_endpoint: None,
            trace_propagation: crate::trace::Propagation::default(),
            cron: true,
            cron_timezone: rustq_cron::Zone::from_env(),
            schedule: None,
            schedule_file: None,
            recurring_file: None,
        }
    }
}

/// Why the options could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file's path.
        path: String,
        /// Why it could not be read.
        reason: String,
    },
    /// Something in the configuration is not valid; holds what and why.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Parses an `http` address: `host:port`, `[v6]:port`, or a bare port (on 127.0.0.1).
pub fn parse_http_addr(text: &str) -> Option<std::net::SocketAddr> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let text = text
        .strip_prefix("localhost:")
        .map_or(text.to_string(), |port| format!("127.0.0.1:{port}"));
    text.parse().ok()
}

impl WorkerOptions {
    /// Refuses settings that cannot hold together: an HTTP endpoint beyond loopback without a
    /// token would show the fleet's queues to anyone who can reach it.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(addr) = self.http {
            if !addr.ip().is_loopback() && self.http_token.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::Invalid(format!(
                    "http: {addr} is beyond loopback: set http_token (or RUSTQ_HTTP_TOKEN) so only your scraper reads /metrics"
                )));
            }
        }
        if self.otlp_endpoint.is_some() && !cfg!(feature = "otlp") {
            return Err(ConfigError::Invalid(
                "otlp_endpoint: this rustq-worker was built without span export (cargo feature `otlp`)".into(),
            ));
        }
        Ok(())
    }

    /// True when queues are checked in the order given (no weights), as `sidekiq -q a -q b`.
    pub fn strict_order(&self) -> bool {
        self.queues.iter().all(|q| q.weight == 0)
    }

    /// Applies a `sidekiq.yml`-shaped file: `concurrency`, `queues` (names or `[name, weight]`),
    /// `timeout`, `tag`, `labels`, `max_retries`, `dead_max_jobs`, `dead_timeout_in_seconds`, keys
    /// with or without Sidekiq's leading colon,
    /// an environment section (`production:`) overriding the top level, and rustq's own keys
    /// (`wire_version`, `job_timeout`, `heartbeat_interval`, `max_recoveries`, `fetch_batch`, `prefetch`,
    /// `redis_url`, `handlers`) at the top level or under `rustq:`.
    ///
    /// ERB tags are rendered first, as Sidekiq does, by [`crate::erb::render_env`] (environment
    /// lookups only); [`WorkerOptions::apply_file_with`] takes another renderer.
    pub fn apply_file(
        &mut self,
        path: &Path,
        environment: Option<&str>,
    ) -> Result<(), ConfigError> {
        self.apply_file_with(path, environment, &crate::erb::render_env)
    }

    /// [`WorkerOptions::apply_file`] with `render` for files holding ERB (`<%`): the gem's
    /// `rustq-worker` passes Ruby's own ERB.
    pub fn apply_file_with(
        &mut self,
        path: &Path,
        environment: Option<&str>,
        render: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<(), ConfigError> {
        let text = read_rendered(path, render)?;
        // The file's name leads every complaint about what is in it, so a bad key says where.
        self.apply_yaml(&text, environment).map_err(|e| match e {
            ConfigError::Invalid(why) => ConfigError::Invalid(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    /// [`WorkerOptions::apply_file`] for the text of a config file, ERB already rendered.
    pub fn apply_yaml(&mut self, text: &str, environment: Option<&str>) -> Result<(), ConfigError> {
        let doc: Yaml = serde_norway::from_str(text)
            .map_err(|e| ConfigError::Invalid(format!("config is not valid YAML: {e}")))?;
        let root = normalize_keys(doc);
        let mut layers = vec![root.clone()];
        if let Some(section) = root.get("rustq") {
            layers.push(section.clone());
        }
        if let Some(env) = environment.and_then(|e| root.get(e)) {
            layers.push(env.clone());
            if let Some(section) = env.get("rustq") {
                layers.push(section.clone());
            }
        }
        for layer in layers {
            self.apply_layer(&layer)?;
        }
        self.check_schedules()
    }

    /// Reads a schedule file in sidekiq-cron's shapes (hash or array; ERB rendered by `render`),
    /// adding its schedules to the `schedule:` section's. Its path leads every complaint.
    pub fn apply_schedule_file(
        &mut self,
        path: &Path,
        render: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<(), ConfigError> {
        self.add_schedules(path, render, rustq_cron::file::schedules)
    }

    /// Reads Solid Queue's `config/recurring.yml` (its `environment` section), adding its tasks
    /// as schedules of ActiveJob classes.
    pub fn apply_recurring_file(
        &mut self,
        path: &Path,
        environment: Option<&str>,
        render: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<(), ConfigError> {
        let environment = environment.unwrap_or("development");
        self.add_schedules(path, render, |doc| {
            rustq_cron::file::recurring(doc, Some(environment))
        })
    }

    fn add_schedules(
        &mut self,
        path: &Path,
        render: &dyn Fn(&str) -> Result<String, String>,
        read: impl Fn(&Yaml) -> Result<Vec<rustq_cron::Schedule>, rustq_cron::file::FileError>,
    ) -> Result<(), ConfigError> {
        let text = read_rendered(path, render)?;
        let at = |why: String| ConfigError::Invalid(format!("{}: {why}", path.display()));
        let doc: Yaml =
            serde_norway::from_str(&text).map_err(|e| at(format!("not valid YAML: {e}")))?;
        let found = read(&doc).map_err(|e| at(e.to_string()))?;
        let all = self.schedule.get_or_insert_with(Vec::new);
        for s in found {
            if all
                .iter()
                .any(|held| held.name == s.name && held.namespace == s.namespace)
            {
                return Err(at(format!("schedule {:?} is declared twice", s.name)));
            }
            all.push(s);
        }
        self.check_schedules().map_err(|e| match e {
            ConfigError::Invalid(why) => at(why),
            other => other,
        })
    }

    /// Every declared schedule's cron line parses, in `cron_timezone`.
    fn check_schedules(&self) -> Result<(), ConfigError> {
        for s in self.schedule.iter().flatten() {
            s.check(self.cron_timezone)
                .map_err(|e| ConfigError::Invalid(format!("`schedule`: {e}")))?;
        }
        Ok(())
    }

    fn apply_layer(&mut self, map: &Yaml) -> Result<(), ConfigError> {
        let invalid =
            |key: &str, what: &str| ConfigError::Invalid(format!("`{key}` must be {what}"));
        let uint = |key: &str| -> Result<Option<u64>, ConfigError> {
            match map.get(key) {
                None | Some(Yaml::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| invalid(key, "a whole number")),
            }
        };
        let secs = |key: &str| -> Result<Option<Duration>, ConfigError> {
            match map.get(key) {
                None | Some(Yaml::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|s| *s >= 0.0)
                    .map(|s| Some(Duration::from_secs_f64(s)))
                    .ok_or_else(|| invalid(key, "a number of seconds")),
            }
        };
        if let Some(n) = uint("concurrency")? {
            if n == 0 {
                return Err(invalid("concurrency", "at least 1"));
            }
            self.concurrency = n as usize;
        }
        if let Some(t) = secs("timeout")? {
            self.shutdown_timeout = t;
        }
        if let Some(t) = secs("job_timeout")? {
            self.job_timeout = Some(t);
        }
        if let Some(t) = secs("heartbeat_interval")? {
            self.heartbeat_interval = t.max(Duration::from_millis(100));
        }
        if let Some(n) = uint("max_retries")? {
            self.max_retries = n as u32;
        }
        if let Some(n) = uint("dead_max_jobs")? {
            if n == 0 {
                return Err(invalid("dead_max_jobs", "at least 1"));
            }
            self.dead_set.max_jobs = i64::try_from(n).unwrap_or(i64::MAX);
        }
        if let Some(t) = secs("dead_timeout_in_seconds")? {
            self.dead_set.timeout_secs = t.as_secs_f64();
        }
        if map.get("capsules").is_some() {
            return Err(ConfigError::Invalid(capsules_refused(
                "`capsules` (Sidekiq 7)",
            )));
        }
        if let Some(n) = uint("max_recoveries")? {
            self.max_recoveries = n as u32;
        }
        if let Some(n) = uint("prefetch")? {
            self.prefetch = n as usize;
        }
        if let Some(n) = uint("fetch_batch")? {
            self.fetch_batch = (n as usize).max(1);
        }
        if let Some(n) = map.get("poll_interval_average").and_then(Yaml::as_f64) {
            self.poll_interval_average = Some(n);
        }
        if let Some(n) = map
            .get("average_scheduled_poll_interval")
            .and_then(Yaml::as_f64)
        {
            self.average_scheduled_poll_interval = n;
        }
        if let Some(v) = uint("wire_version")? {
            self.wire = WireVersion::from_number(v as i64)
                .ok_or_else(|| invalid("wire_version", "7 or 8"))?;
        }
        if let Some(v) = map.get("metrics_format") {
            self.metrics = yaml_scalar(v)
                .as_deref()
                .and_then(crate::stats::MetricsFormats::parse)
                .ok_or_else(|| invalid("metrics_format", "both, 7, 8 or none"))?;
        }
        if let Some(path) = map.get("require") {
            self.require =
                Some(yaml_scalar(path).ok_or_else(|| invalid("require", "a file or directory"))?);
        }
        if let Some(addr) = map.get("http") {
            self.http = Some(
                yaml_scalar(addr)
                    .and_then(|a| parse_http_addr(&a))
                    .ok_or_else(|| {
                        invalid("http", "an address such as 127.0.0.1:9394, or a port")
                    })?,
            );
        }
        if let Some(token) = map.get("http_token") {
            self.http_token =
                Some(yaml_scalar(token).ok_or_else(|| invalid("http_token", "a string"))?);
        }
        if let Some(url) = map.get("otlp_endpoint") {
            let url = yaml_scalar(url).unwrap_or_default();
            self.otlp_endpoint = Some(
                crate::trace::check_endpoint(&url).map_err(|why| invalid("otlp_endpoint", &why))?,
            );
        }
        if let Some(style) = map.get("trace_propagation") {
            self.trace_propagation = yaml_scalar(style)
                .as_deref()
                .and_then(crate::trace::Propagation::parse)
                .ok_or_else(|| invalid("trace_propagation", "child, link or none"))?;
        }
        if let Some(on) = map.get("cron") {
            self.cron = on
                .as_bool()
                .ok_or_else(|| invalid("cron", "true or false"))?;
        }
        if let Some(zone) = map.get("cron_timezone") {
            self.cron_timezone = yaml_scalar(zone)
                .as_deref()
                .and_then(rustq_cron::Zone::parse)
                .ok_or_else(|| {
                    invalid(
                        "cron_timezone",
                        "a time zone such as Europe/Berlin, UTC or +09:00",
                    )
                })?;
        }
        if let Some(section) = map.get("schedule") {
            self.schedule = Some(
                rustq_cron::file::schedules(section)
                    .map_err(|e| ConfigError::Invalid(format!("`schedule`: {e}")))?,
            );
        }
        if let Some(path) = map.get("recurring_file") {
            self.recurring_file =
                Some(yaml_scalar(path).ok_or_else(|| invalid("recurring_file", "a file path"))?);
        }
        if let Some(path) = map.get("schedule_file") {
            self.schedule_file =
                Some(yaml_scalar(path).ok_or_else(|| invalid("schedule_file", "a file path"))?);
        }
        if let Some(tag) = map.get("tag") {
            self.tag = tag.as_str().map(str::to_string);
        }
        if let Some(url) = map.get("redis_url").and_then(Yaml::as_str) {
            self.redis.url = url.to_string();
            self.redis_url_given = true;
        }
        for key in ["allowed_jobs", "allowed_mailers"] {
            let Some(list) = map.get(key) else { continue };
            let names = list
                .as_sequence()
                .ok_or_else(|| invalid(key, "a list of class names"))?
                .iter()
                .map(|n| yaml_scalar(n).ok_or_else(|| invalid(key, "a list of class names")))
                .collect::<Result<Vec<_>, _>>()?;
            match key {
                "allowed_jobs" => self.allowed_jobs = Some(names),
                _ => self.allowed_mailers = Some(names),
            }
        }
        if let Some(labels) = map.get("labels") {
            self.labels = labels
                .as_sequence()
                .ok_or_else(|| invalid("labels", "a list"))?
                .iter()
                .map(|l| yaml_scalar(l).ok_or_else(|| invalid("labels", "a list of strings")))
                .collect::<Result<_, _>>()?;
        }
        if let Some(queues) = map.get("queues") {
            let list = queues
                .as_sequence()
                .ok_or_else(|| invalid("queues", "a list"))?;
            let mut parsed = Vec::new();
            for entry in list {
                let q = match entry {
                    Yaml::Sequence(pair) => {
                        let name = pair
                            .first()
                            .and_then(yaml_scalar)
                            .ok_or_else(|| invalid("queues", "names or [name, weight] pairs"))?;
                        let weight = pair.get(1).and_then(Yaml::as_u64).unwrap_or(0);
                        QueueWeight::parse(&format!("{name},{weight}"))?
                    }
                    other => QueueWeight::parse(
                        &yaml_scalar(other)
                            .ok_or_else(|| invalid("queues", "names or [name, weight] pairs"))?,
                    )?,
                };
                parsed.push(q);
            }
            if parsed.is_empty() {
                return Err(invalid("queues", "a non-empty list"));
            }
            self.queues = parsed;
        }
        if let Some(handlers) = map.get("handlers") {
            let handlers = handlers
                .as_mapping()
                .ok_or_else(|| invalid("handlers", "a map of class name to handler"))?;
            for (class, spec) in handlers {
                let class =
                    yaml_scalar(class).ok_or_else(|| invalid("handlers", "keyed by class name"))?;
                self.handlers
                    .insert(class.clone(), parse_handler(&class, spec)?);
            }
        }
        Ok(())
    }
}

fn parse_handler(class: &str, spec: &Yaml) -> Result<HandlerConfig, ConfigError> {
    let bad = |what: &str| ConfigError::Invalid(format!("handler for {class}: {what}"));
    let spec_kind = if let Some(exec) = spec.get("exec") {
        let argv: Vec<String> = match exec {
            Yaml::Sequence(items) => items.iter().filter_map(yaml_scalar).collect(),
            // A string is split on whitespace; it is never given to a shell.
            Yaml::String(s) => s.split_whitespace().map(str::to_string).collect(),
            _ => return Err(bad("`exec` must be a command as a list or a string")),
        };
        if argv.is_empty() {
            return Err(bad("`exec` names no program"));
        }
        let env = match spec.get("env") {
            None => Vec::new(),
            Some(Yaml::Sequence(items)) => items.iter().filter_map(yaml_scalar).collect(),
            Some(_) => return Err(bad("`env` must be a list of variable names")),
        };
        HandlerSpec::Exec { argv, env }
    } else if spec.get("noop").and_then(Yaml::as_bool) == Some(true) {
        HandlerSpec::Noop
    } else {
        return Err(bad("needs `exec: [program, args…]` or `noop: true`"));
    };
    let timeout = match spec.get("timeout") {
        None => None,
        Some(v) => Some(Duration::from_secs_f64(
            v.as_f64()
                .filter(|s| *s > 0.0)
                .ok_or_else(|| bad("`timeout` must be seconds"))?,
        )),
    };
    let retry = match spec.get("retry") {
        None => None,
        Some(Yaml::Bool(b)) => Some(if *b { Retry::Default } else { Retry::Disabled }),
        Some(v) => Some(Retry::Times(
            v.as_u64()
                .ok_or_else(|| bad("`retry` must be true, false or a number"))? as u32,
        )),
    };
    Ok(HandlerConfig {
        spec: spec_kind,
        timeout,
        retry,
    })
}

/// A config or schedule file's text, its ERB (`<%`) rendered by `render`; complaints name the file.
fn read_rendered(
    path: &Path,
    render: &dyn Fn(&str) -> Result<String, String>,
) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if !text.contains("<%") {
        return Ok(text);
    }
    render(&text).map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
}

fn yaml_scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `:concurrency:` and `concurrency:` mean the same (Sidekiq's files use symbol keys).
fn normalize_keys(v: Yaml) -> Yaml {
    match v {
        Yaml::Mapping(map) => Yaml::Mapping(
            map.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        Yaml::String(s) => Yaml::String(s.trim_start_matches(':').to_string()),
                        other => other,
                    };
                    (k, normalize_keys(v))
                })
                .collect(),
        ),
        other => other,
    }
}

/// Applies the config file named, else the first of `config/rustq.yml`, `config/sidekiq.yml` and
/// `config/sidekiq.yml.erb` there is; then the schedule file it names, else
/// `config/schedule.yml` when there is one.
pub fn apply_config(
    options: &mut WorkerOptions,
    named: Option<PathBuf>,
    environment: Option<&str>,
    render: &dyn Fn(&str) -> Result<String, String>,
) -> Result<(), String> {
    let first = |paths: &[&str]| {
        paths
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .map(Path::to_path_buf)
    };
    let config = named.or_else(|| {
        first(&[
            "config/rustq.yml",
            "config/sidekiq.yml",
            "config/sidekiq.yml.erb",
        ])
    });
    if let Some(path) = &config {
        options
            .apply_file_with(path, environment, render)
            .map_err(|e| e.to_string())?;
    }
    let schedule_file = options
        .schedule_file
        .clone()
        .map(PathBuf::from)
        .or_else(|| first(&["config/schedule.yml", "config/schedule.yaml"]));
    if let Some(path) = schedule_file {
        options
            .apply_schedule_file(&path, render)
            .map_err(|e| e.to_string())?;
    }
    let recurring_file = options
        .recurring_file
        .clone()
        .map(PathBuf::from)
        .or_else(|| first(&["config/recurring.yml"]));
    if let Some(path) = recurring_file {
        options
            .apply_recurring_file(&path, environment, render)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Options for a command that only reads the config (`rustq-worker cron`): the file, its
/// schedule file, then `redis_url`.
pub fn config_options(
    config: Option<PathBuf>,
    environment: Option<String>,
    redis_url: Option<String>,
    render: &dyn Fn(&str) -> Result<String, String>,
) -> Result<WorkerOptions, String> {
    let mut options = WorkerOptions::default();
    let environment = environment.or_else(|| {
        ["RAILS_ENV", "RACK_ENV", "APP_ENV"]
            .iter()
            .find_map(|v| std::env::var(v).ok())
    });
    apply_config(&mut options, config, environment.as_deref(), render)?;
    if let Some(url) = redis_url {
        options.redis.url = url;
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_with_erb_is_rendered_first() {
        let dir = std::env::temp_dir().join(format!("rustq-erb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sidekiq.yml");
        // PATH is set everywhere; the other name nowhere.
        std::fs::write(
            &path,
            ":concurrency: <%= ENV.fetch(\"RUSTQ_TEST_UNSET_CONCURRENCY\", 7) %>\n\
             :tag: <%= ENV[\"PATH\"] ? \"x\" : \"y\" %>\n",
        )
        .unwrap();
        let error = WorkerOptions::default()
            .apply_file(&path, None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sidekiq.yml: `<%= ENV[\"PATH\"] ? \"x\" : \"y\" %>` is Ruby"),
            "{error}"
        );

        std::fs::write(
            &path,
            ":concurrency: <%= ENV.fetch(\"RUSTQ_TEST_UNSET_CONCURRENCY\", 7) %>\n\
             :tag: <%= ENV[\"RUSTQ_TEST_UNSET_TAG\"] || \"billing\" %>\n",
        )
        .unwrap();
        let mut o = WorkerOptions::default();
        o.apply_file(&path, None).unwrap();
        assert_eq!((o.concurrency, o.tag.as_deref()), (7, Some("billing")));

        // Another renderer (the gem passes Ruby's ERB) sees the whole text.
        let mut o = WorkerOptions::default();
        o.apply_file_with(&path, None, &|text| {
            assert!(text.starts_with(":concurrency: <%="));
            Ok(":concurrency: 3\n".into())
        })
        .unwrap();
        assert_eq!(o.concurrency, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_a_sidekiq_yml() {
        let mut o = WorkerOptions::default();
        o.apply_yaml(
            r#"
:concurrency: 5
:timeout: 8
:queues:
  - [critical, 3]
  - default
  - low
:tag: billing
:labels: [a, b]
:dead_max_jobs: 50000
:dead_timeout_in_seconds: 86400
:require: ./lib/boot.rb
production:
  :concurrency: 20
rustq:
  wire_version: 8
  handlers:
    ReportJob:
      exec: [bin/report, "--fast"]
      timeout: 30
      retry: 2
    NoopJob: { noop: true }
"#,
            Some("production"),
        )
        .unwrap();
        assert_eq!(o.concurrency, 20);
        assert_eq!(o.shutdown_timeout, Duration::from_secs(8));
        assert_eq!(
            o.queues[0],
            QueueWeight {
                name: "critical".into(),
                weight: 3
            }
        );
        assert_eq!(
            o.queues[1],
            QueueWeight {
                name: "default".into(),
                weight: 0
            }
        );
        assert!(!o.strict_order());
        assert_eq!(o.tag.as_deref(), Some("billing"));
        assert_eq!(o.labels, vec!["a", "b"]);
        assert_eq!(o.require.as_deref(), Some("./lib/boot.rb"));
        assert_eq!(
            o.dead_set,
            DeadSetLimits {
                max_jobs: 50_000,
                timeout_secs: 86_400.0
            }
        );
        assert_eq!(o.wire, WireVersion::V8);
        let report = &o.handlers["ReportJob"];
        assert_eq!(
            report.spec,
            HandlerSpec::Exec {
                argv: vec!["bin/report".into(), "--fast".into()],
                env: Vec::new(),
            }
        );
        assert_eq!(report.timeout, Some(Duration::from_secs(30)));
        assert_eq!(report.retry, Some(Retry::Times(2)));
        assert_eq!(o.handlers["NoopJob"].spec, HandlerSpec::Noop);
    }

    #[test]
    fn bad_config_is_explained() {
        let cases = [
            ("concurrency: lots", "concurrency"),
            ("queues: [\"bad name\"]", "queue name"),
            ("handlers: {X: {run: y}}", "exec"),
            (
                ":capsules:\n  :single:\n    :concurrency: 1\n",
                "one rustq-worker per capsule",
            ),
            (":dead_max_jobs: 0", "dead_max_jobs"),
        ];
        for (yaml, expected) in cases {
            let err = WorkerOptions::default()
                .apply_yaml(yaml, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }

    #[test]
    fn queue_flags_parse() {
        assert_eq!(QueueWeight::parse("critical,3").unwrap().weight, 3);
        assert_eq!(QueueWeight::parse("default").unwrap().weight, 0);
        assert!(QueueWeight::parse("x,y").is_err());
    }
}
