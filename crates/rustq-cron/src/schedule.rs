//! A recurring job — what sidekiq-cron calls a cron job — and its hash in sidekiq-cron 2.x's
//! layout: the 16 fields `Sidekiq::Cron::Job#save` writes, in its formats, plus rustq's own
//! settings in `rustq_*` fields sidekiq-cron ignores (and never removes: its saves only set fields).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rustq_core::job::{generate_jid, Fields};
use rustq_core::{Job, WireVersion};
use serde_json::{json, Value};

use crate::expr::{CronError, CronLine, Zone};

/// The class sidekiq-cron (and Rails' Sidekiq adapter) wraps ActiveJob payloads in.
pub const ACTIVE_JOB_WRAPPER: &str = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper";

/// Whether a schedule's ticks are enqueued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Ticks are enqueued.
    Enabled,
    /// Ticks pass; "Enqueue now" still works.
    Disabled,
}

impl Status {
    /// `enabled` or `disabled`, as the hash holds it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "enabled",
            Status::Disabled => "disabled",
        }
    }
}

/// Where a schedule came from: a schedule file is reconciled with Redis (a schedule removed
/// from the file is removed); one made through an API stays until deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Made through an API (sidekiq-cron's `dynamic`).
    Dynamic,
    /// From a schedule file (sidekiq-cron's `schedule`).
    File,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Dynamic => "dynamic",
            Source::File => "schedule",
        }
    }
}

/// What happens to ticks missed while no scheduler ran (more than [`ON_TIME_SECS`] late).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Missed {
    /// None of them is enqueued.
    Skip,
    /// The latest, if within [`GRACE_SECS`] (sidekiq-cron's `reschedule_grace_period`).
    #[default]
    Latest,
    /// Each, oldest first, at most `missed_cap` (the latest ones).
    All,
}

impl Missed {
    /// `skip`, `latest` or `all`.
    pub fn parse(text: &str) -> Option<Missed> {
        match text {
            "skip" => Some(Missed::Skip),
            "latest" => Some(Missed::Latest),
            "all" => Some(Missed::All),
            _ => None,
        }
    }

    /// Its name in files and in the `rustq_missed` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::Latest => "latest",
            Missed::All => "all",
        }
    }
}

/// Whether a tick is enqueued while the schedule's previous job has not finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overlap {
    /// Always (sidekiq-cron's behaviour).
    #[default]
    Allow,
    /// Not while a run of the schedule is running in a live rustq process (started, outcome not
    /// yet written); a run whose process died does not count.
    SkipIfRunning,
    /// Not while the previous enqueue still waits in its queue.
    SkipIfQueued,
}

impl Overlap {
    /// `allow`, `skip_if_running` or `skip_if_queued`.
    pub fn parse(text: &str) -> Option<Overlap> {
        match text {
            "allow" => Some(Overlap::Allow),
            "skip_if_running" => Some(Overlap::SkipIfRunning),
            "skip_if_queued" => Some(Overlap::SkipIfQueued),
            _ => None,
        }
    }

    /// Its name in files and in the `rustq_overlap` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::SkipIfRunning => "skip_if_running",
            Overlap::SkipIfQueued => "skip_if_queued",
        }
    }
}

/// The payload field naming the schedule (`<namespace>:<name>`) of a job whose schedule
/// controls overlap, so the engine can tell when its run starts and ends.
pub const SCHEDULE_FIELD: &str = "rustq_cron";

/// A tick enqueued this late or less is on time, whatever the schedule's [`Missed`].
pub const ON_TIME_SECS: i64 = 5;
/// `latest` enqueues a missed tick at most this late (sidekiq-cron's default grace period).
pub const GRACE_SECS: i64 = 60;
/// `all` enqueues at most this many missed ticks unless the schedule says otherwise.
pub const DEFAULT_MISSED_CAP: u32 = 10;

/// Why a schedule was refused; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {name:?}: {why}")]
pub struct ScheduleError {
    /// The schedule's name.
    pub name: String,
    /// What is wrong.
    pub why: String,
}

/// A recurring job.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Its name, unique in its namespace.
    pub name: String,
    /// sidekiq-cron's namespace (`default`).
    pub namespace: String,
    /// The job class enqueued.
    pub class: String,
    /// The cron line, as written.
    pub cron: String,
    /// The job's arguments.
    pub args: Vec<Value>,
    /// The queue it is pushed to.
    pub queue: String,
    /// The payload's `retry`, when set.
    pub retry: Option<Value>,
    /// Shown in the Web UI.
    pub description: String,
    /// `None`: keep what Redis holds (enabled for a new schedule), as sidekiq-cron's loads do.
    pub status: Option<Status>,
    /// Where it came from.
    pub source: Source,
    /// Enqueue as an ActiveJob payload (Rails' Sidekiq adapter's wrapper).
    pub active_job: bool,
    /// Append the enqueue time (epoch seconds, a Float) to the arguments.
    pub date_as_argument: bool,
    /// ActiveJob's `queue_name_prefix` for this job (`""`: none).
    pub queue_name_prefix: String,
    /// ActiveJob's `queue_name_delimiter` (`""`: `_`).
    pub queue_name_delimiter: String,
    /// sidekiq-cron's `symbolize_args` (kept for it; rustq's payloads are JSON either way).
    pub symbolize_args: bool,
    /// Missed ticks.
    pub missed: Missed,
    /// The most missed ticks `Missed::All` enqueues.
    pub missed_cap: u32,
    /// Ticks while the previous job has not finished.
    pub overlap: Overlap,
    /// The last enqueue, as the hash holds it (`2026-12-07 12:02:10 +0000`), when read back.
    pub last_enqueue_time: Option<String>,
    /// The payload template (`message`) when read back: its keys beyond queue, class, args and
    /// retry are pushed too, as sidekiq-cron does.
    pub message: Option<Fields>,
}

impl Schedule {
    /// A schedule with sidekiq-cron's defaults: queue `default`, enabled, no arguments.
    pub fn new(name: &str, cron: &str, class: &str) -> Schedule {
        Schedule {
            name: name.into(),
            namespace: "default".into(),
            class: class.into(),
            cron: cron.into(),
            args: Vec::new(),
            queue: "default".into(),
            retry: None,
            description: String::new(),
            status: None,
            source: Source::Dynamic,
            active_job: false,
            date_as_argument: false,
            queue_name_prefix: String::new(),
            queue_name_delimiter: String::new(),
            symbolize_args: false,
            missed: Missed::default(),
            missed_cap: DEFAULT_MISSED_CAP,
            overlap: Overlap::Allow,
            last_enqueue_time: None,
            message: None,
        }
    }

    fn error(&self, why: impl Into<String>) -> ScheduleError {
        ScheduleError {
            name: self.name.clone(),
            why: why.into(),
        }
    }

    /// Checks everything a push would need: a name, a class, a queue, a cron line that parses.
    pub fn check(&self, zone: Zone) -> Result<CronLine, ScheduleError> {
        if self.name.trim().is_empty() {
            return Err(self.error("`name` is missing"));
        }
        if self.namespace == "*" || self.namespace.is_empty() {
            return Err(self.error(format!("namespace {:?} is not allowed", self.namespace)));
        }
        if self.class.trim().is_empty() {
            return Err(self.error("`class` is missing"));
        }
        rustq_core::client::check_queue_name(&self.queue)
            .map_err(|e| self.error(format!("`queue`: {e}")))?;
        if self.missed_cap == 0 {
            return Err(self.error("`missed_cap` must be at least 1"));
        }
        CronLine::parse(&self.cron, zone).map_err(|e: CronError| self.error(format!("`cron`: {e}")))
    }

    /// The hash's fields, in the order and formats sidekiq-cron 2.x's `save` writes them, but
    /// `status` and `last_enqueue_time` (the save keeps what Redis holds unless told).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let retry = match &self.retry {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        vec![
            ("name", self.name.clone()),
            ("namespace", self.namespace.clone()),
            ("klass", self.class.clone()),
            ("cron", self.cron.clone()),
            ("description", self.description.clone()),
            ("source", self.source.as_str().into()),
            ("args", Value::Array(self.args.clone()).to_string()),
            ("date_as_argument", flag(self.date_as_argument)),
            ("message", self.message_json()),
            ("active_job", flag(self.active_job)),
            ("queue_name_prefix", self.queue_name_prefix.clone()),
            ("queue_name_delimiter", self.queue_name_delimiter.clone()),
            ("retry", retry),
            ("symbolize_args", flag(self.symbolize_args)),
            ("rustq_missed", self.missed.as_str().into()),
            ("rustq_missed_cap", self.missed_cap.to_string()),
            ("rustq_overlap", self.overlap.as_str().into()),
        ]
    }

    /// `message`: sidekiq-cron's payload template for a class it cannot load, which is where it
    /// reads `queue` and `retry` back from: `{"queue":…,"class":…,"args":…[,"retry":…]}`.
    fn message_json(&self) -> String {
        let mut message = self.message.clone().unwrap_or_default();
        message.insert("queue".into(), Value::String(self.queue.clone()));
        message.insert("class".into(), Value::String(self.class.clone()));
        message.insert("args".into(), Value::Array(self.args.clone()));
        match &self.retry {
            Some(r) if !r.is_null() => {
                message.insert("retry".into(), r.clone());
            }
            _ => {
                message.shift_remove("retry");
            }
        }
        Value::Object(message).to_string()
    }

    /// Reads a schedule back from its hash (`HGETALL`), as sidekiq-cron's `Job.new` does:
    /// `message` is where queue and retry come from, `args` replaces its arguments.
    pub fn from_hash(
        key_name: &str,
        hash: &HashMap<String, String>,
    ) -> Result<Schedule, ScheduleError> {
        let get = |f: &str| hash.get(f).map(String::as_str).unwrap_or("");
        let name = if get("name").is_empty() {
            key_name
        } else {
            get("name")
        };
        let mut schedule = Schedule::new(name, get("cron"), get("klass"));
        let fail = |why: String| ScheduleError {
            name: name.to_string(),
            why,
        };
        if !get("namespace").is_empty() {
            schedule.namespace = get("namespace").into();
        }
        schedule.args = parse_args(get("args"));
        schedule.description = get("description").into();
        schedule.source = if get("source") == "schedule" {
            Source::File
        } else {
            Source::Dynamic
        };
        schedule.status = Some(if get("status") == "disabled" {
            Status::Disabled
        } else {
            Status::Enabled
        });
        let flag = |f: &str| {
            matches!(
                get(f).to_ascii_lowercase().as_str(),
                "1" | "true" | "t" | "yes" | "y"
            )
        };
        schedule.active_job = flag("active_job");
        schedule.date_as_argument = flag("date_as_argument");
        schedule.symbolize_args = flag("symbolize_args");
        schedule.queue_name_prefix = get("queue_name_prefix").into();
        schedule.queue_name_delimiter = get("queue_name_delimiter").into();
        if let Some(m) = get("rustq_missed")
            .parse::<String>()
            .ok()
            .as_deref()
            .and_then(Missed::parse)
        {
            schedule.missed = m;
        }
        if let Ok(cap) = get("rustq_missed_cap").parse::<u32>() {
            schedule.missed_cap = cap.max(1);
        }
        if let Some(o) = Overlap::parse(get("rustq_overlap")) {
            schedule.overlap = o;
        }
        let last = get("last_enqueue_time");
        schedule.last_enqueue_time = (!last.is_empty()).then(|| last.to_string());
        if !get("message").is_empty() {
            match serde_json::from_str::<Value>(get("message")) {
                Ok(Value::Object(mut message)) => {
                    if let Some(Value::String(q)) = message.get("queue") {
                        schedule.queue = q.clone();
                    }
                    schedule.retry = message.get("retry").cloned();
                    if schedule.class.is_empty() {
                        if let Some(Value::String(c)) = message.get("class") {
                            schedule.class = c.clone();
                        }
                    }
                    for k in ["queue", "class", "args", "retry"] {
                        message.shift_remove(k);
                    }
                    schedule.message = Some(message);
                }
                _ => return Err(fail("`message` is not a JSON object".into())),
            }
        }
        if schedule.class.is_empty() {
            return Err(fail("`klass` is missing".into()));
        }
        Ok(schedule)
    }

    /// The queue a push goes to: for an ActiveJob, with its `queue_name_prefix`.
    pub fn push_queue(&self) -> String {
        if self.active_job && !self.queue_name_prefix.is_empty() {
            let delimiter = if self.queue_name_delimiter.is_empty() {
                "_"
            } else {
                &self.queue_name_delimiter
            };
            format!("{}{delimiter}{}", self.queue_name_prefix, self.queue)
        } else {
            self.queue.clone()
        }
    }

    /// The job one enqueue pushes at `now`: its jid and payload (with `enqueued_at`), as
    /// sidekiq-cron's `enqueue!` would push it; an ActiveJob in Rails' wrapper.
    pub fn payload(&self, now: DateTime<Utc>, wire: WireVersion) -> (String, String) {
        let epoch = now.timestamp_micros() as f64 / 1e6;
        let mut args = self.args.clone();
        if self.date_as_argument {
            args.push(json!(epoch));
        }
        let queue = self.push_queue();
        let jid = generate_jid();
        let mut fields = Fields::new();
        fields.insert(
            "retry".into(),
            self.retry
                .clone()
                .filter(|r| !r.is_null())
                .unwrap_or(Value::Bool(true)),
        );
        fields.insert("queue".into(), Value::String(queue.clone()));
        if self.active_job {
            fields.insert("class".into(), Value::String(ACTIVE_JOB_WRAPPER.into()));
            fields.insert("wrapped".into(), Value::String(self.class.clone()));
            let job_id = uuid_v4();
            fields.insert(
                "args".into(),
                json!([{
                    "job_class": self.class,
                    "job_id": job_id,
                    "provider_job_id": null,
                    "queue_name": queue,
                    "priority": null,
                    "arguments": args,
                    "executions": 0,
                    "exception_executions": {},
                    "locale": "en",
                    "timezone": "UTC",
                    "enqueued_at": now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                }]),
            );
        } else {
            fields.insert("class".into(), Value::String(self.class.clone()));
            fields.insert("args".into(), Value::Array(args));
        }
        for (k, v) in self.message.iter().flatten() {
            fields.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if self.overlap != Overlap::Allow {
            fields.insert(
                SCHEDULE_FIELD.into(),
                Value::String(format!("{}:{}", self.namespace, self.name)),
            );
        }
        let mut job = Job::from_fields(fields);
        job.set("jid", jid.clone());
        job.set_time("created_at", epoch, wire);
        job.set_time("enqueued_at", epoch, wire);
        (jid, job.to_json())
    }
}

/// sidekiq-cron's `parse_args`: a JSON string is parsed (a non-array wrapped), anything else
/// that is not JSON becomes the one argument.
pub fn parse_args(text: &str) -> Vec<Value> {
    if text.is_empty() {
        return Vec::new();
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Null) => Vec::new(),
        Ok(other) => vec![other],
        Err(_) => vec![Value::String(text.into())],
    }
}

/// A random UUID (version 4), ActiveJob's `job_id`.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `last_enqueue_time`'s format: `2026-12-07 12:02:10 +0000`.
pub fn last_enqueue_format(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S +0000").to_string()
}

/// The `:enqueued` sorted set's member for a tick: `2026-12-07T12:02:10Z`.
pub fn tick_member(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A `:jid_history` entry: `{"jid":"…","enqueued":"2026-12-07 12:02:10 UTC"}`.
pub fn history_entry(jid: &str, t: DateTime<Utc>) -> String {
    json!({"jid": jid, "enqueued": t.format("%Y-%m-%d %H:%M:%S UTC").to_string()}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_round_trips_in_sidekiq_crons_formats() {
        let mut s = Schedule::new("my job", "*/5 * * * *", "HardWorker");
        s.args = vec![json!(1), json!("two"), json!({"k": "v"})];
        s.queue = "hard".into();
        s.retry = Some(json!(5));
        s.description = "desc".into();
        let fields: HashMap<String, String> = s
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(fields["args"], r#"[1,"two",{"k":"v"}]"#);
        assert_eq!(
            fields["message"],
            r#"{"queue":"hard","class":"HardWorker","args":[1,"two",{"k":"v"}],"retry":5}"#
        );
        assert_eq!(fields["retry"], "5");
        assert_eq!(fields["date_as_argument"], "0");
        let back = Schedule::from_hash("my job", &fields).unwrap();
        assert_eq!(back.queue, "hard");
        assert_eq!(back.retry, Some(json!(5)));
        assert_eq!(back.args, s.args);
        assert_eq!(back.status, Some(Status::Enabled));
    }

    #[test]
    fn reads_what_sidekiq_cron_wrote_for_a_known_class() {
        let hash: HashMap<String, String> = [
            ("name", "nightly"),
            ("klass", "HardWorker"),
            ("cron", "0 3 * * *"),
            ("args", "[]"),
            (
                "message",
                r#"{"retry":true,"queue":"default","class":"HardWorker","args":[],"tags":["x"]}"#,
            ),
            ("status", "disabled"),
            ("last_enqueue_time", "2026-12-07 03:00:01 +0000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = Schedule::from_hash("nightly", &hash).unwrap();
        assert_eq!(s.status, Some(Status::Disabled));
        assert_eq!(s.retry, Some(json!(true)));
        let (jid, payload) = s.payload(Utc::now(), WireVersion::default());
        let job: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(job["jid"], jid);
        assert_eq!(job["class"], "HardWorker");
        assert_eq!(job["tags"], json!(["x"]));
    }

    #[test]
    fn an_active_job_is_wrapped_with_its_prefixed_queue() {
        let mut s = Schedule::new("aj", "@daily", "CleanupJob");
        s.active_job = true;
        s.queue_name_prefix = "pre".into();
        s.args = vec![json!({"a": 1})];
        let (_, payload) = s.payload(Utc::now(), WireVersion::default());
        let job: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(job["class"], ACTIVE_JOB_WRAPPER);
        assert_eq!(job["wrapped"], "CleanupJob");
        assert_eq!(job["queue"], "pre_default");
        assert_eq!(job["args"][0]["job_class"], "CleanupJob");
        assert_eq!(job["args"][0]["arguments"], json!([{"a": 1}]));
    }

    #[test]
    fn formats_match_sidekiq_cron() {
        let t = DateTime::from_timestamp(1796644930, 0).unwrap();
        assert_eq!(tick_member(t), "2026-12-07T12:02:10Z");
        assert_eq!(last_enqueue_format(t), "2026-12-07 12:02:10 +0000");
        assert_eq!(
            history_entry("abc", t),
            r#"{"jid":"abc","enqueued":"2026-12-07 12:02:10 UTC"}"#
        );
    }
}
