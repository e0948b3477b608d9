//! Pushing jobs: Sidekiq's `Sidekiq::Client#push` and `#push_bulk`, with the same checks, the
//! same normalisation (defaults first, then the caller's keys, then `jid` and `created_at`) and
//! exactly the same Redis commands: a pipelined `SADD queues` + `LPUSH queue:<q>`, or
//! `ZADD schedule` for jobs with an `at`.

use std::fmt;
use std::sync::Arc;

use crate::conn::Conn;
use serde_json::Value;

use crate::error::{Error, JobError, Result};
use crate::job::{generate_jid, segment, Fields, Jids, Job};
use crate::limits::{self, Unique};
use crate::wire::{self, keys, WireVersion};

/// Where the current time comes from (tests pin it; everything else uses the system clock).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> f64 + Send + Sync>);

impl Clock {
    /// The system clock, in epoch seconds.
    pub fn system() -> Clock {
        Clock(Arc::new(wire::now_secs))
    }

    /// A clock that always answers `epoch_secs`.
    pub fn fixed(epoch_secs: f64) -> Clock {
        Clock(Arc::new(move || epoch_secs))
    }

    /// The current time in epoch seconds.
    pub fn now(&self) -> f64 {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// How a [`Client`] fills in what a push leaves out.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Which Sidekiq generation's timestamps to write (`created_at`, `enqueued_at`).
    pub wire: WireVersion,
    /// Merged under every job, like `Sidekiq.default_job_options` (`retry: true, queue: "default"`).
    pub default_job_options: Fields,
    /// Where `created_at` and `enqueued_at` take the time from.
    pub clock: Clock,
}

impl Default for ClientOptions {
    fn default() -> Self {
        let mut defaults = Fields::new();
        defaults.insert("retry".into(), Value::Bool(true));
        defaults.insert("queue".into(), Value::from("default"));
        ClientOptions {
            wire: WireVersion::default(),
            default_job_options: defaults,
            clock: Clock::system(),
        }
    }
}

/// Jobs ready to be written: their jids and payloads, in push order.
///
/// `enqueued_at` is not set yet: like Sidekiq's `raw_push`, [`Client::write`] stamps it on the
/// jobs that go straight to a queue at the moment they are written.
pub struct PreparedPush {
    /// The jobs' jids, in push order: what `push` and `push_bulk` return.
    pub jids: Jids,
    queue: String,
    /// The normalised job; for a bulk push, every job's fields but its `args` and `jid`.
    template: Job,
    /// A bulk push's arguments, one JSON array per job.
    args: BulkArgs,
    /// One per job: when it is scheduled.
    entries: Vec<Entry>,
    /// The jobs' unique lock, when they ask for one: then each is written by [`UNIQUE_PUSH`].
    unique: Option<Unique>,
}

/// Which jobs of a push were written: all of them, but unique jobs whose lock another job holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    duplicates: Vec<usize>,
}

impl Pushed {
    /// True when job `index` (in push order) was written.
    pub fn is_written(&self, index: usize) -> bool {
        !self.duplicates.contains(&index)
    }

    /// The jobs not written because their lock was held, in push order.
    pub fn duplicates(&self) -> &[usize] {
        &self.duplicates
    }
}

static UNIQUE_PUSH_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(UNIQUE_PUSH));

/// A unique job's push: its lock and its push in one step. A lock already held by this very
/// job (a push sent again after a lost reply) counts as written.
const UNIQUE_PUSH: &str = r#"
-- KEYS[1] the lock, KEYS[2] `queues`, KEYS[3] the queue (or `schedule`).
-- ARGV: jid, the lock's lifetime in ms, the payload, the queue's name, `at` ('' to enqueue now),
-- the time of the push.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[5] == '' then
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('LPUSH', KEYS[3], ARGV[3])
else
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
end
return 1
"#;

struct Entry {
    at: Option<f64>,
}

/// The arguments of a bulk push's jobs, each already written as a JSON array, back to back in
/// one buffer (no allocation per job). The Ruby extension writes Ruby arrays straight into it.
#[derive(Default)]
pub struct BulkArgs {
    json: Vec<u8>,
    /// Where each job's arguments end in `json`.
    ends: Vec<usize>,
}

impl BulkArgs {
    /// An empty buffer with room for `jobs` jobs.
    pub fn with_capacity(jobs: usize) -> BulkArgs {
        BulkArgs {
            json: Vec::with_capacity(jobs * 16),
            ends: Vec::with_capacity(jobs),
        }
    }

    /// Adds a job whose arguments are `args` (a JSON array).
    pub fn push_value(&mut self, args: &Value) {
        serde_json::to_writer(&mut self.json, args).expect("a JSON value serializes");
        self.end_job();
    }

    /// The buffer to write the next job's arguments into: one JSON array, then [`end_job`].
    ///
    /// [`end_job`]: BulkArgs::end_job
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.json
    }

    /// Ends the job whose arguments were written into [`BulkArgs::buffer`].
    pub fn end_job(&mut self) {
        self.ends.push(self.json.len());
    }

    /// How many jobs' arguments it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when no job has been added.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Job `index`'s arguments as JSON.
    fn get(&self, index: usize) -> &[u8] {
        &self.json[segment(&self.ends, index)]
    }
}

/// One normalised job of a [`PreparedPush`].
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedJob {
    /// The payload as it will be stored (without `at` and `enqueued_at`).
    pub job: Job,
    /// When it is scheduled to run (epoch seconds), or `None` to enqueue it now.
    pub at: Option<f64>,
}

/// A piece of a job's JSON: fixed text, or a value that differs from job to job.
enum Piece {
    Text(String),
    Args,
    Jid,
    EnqueuedAt,
}

impl PreparedPush {
    /// True when there is nothing to write (a bulk push of no jobs).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The normalised jobs, in push order. Test doubles (fake queues) keep these instead of
    /// writing them.
    pub fn jobs(&self) -> Vec<PreparedJob> {
        self.entries
            .iter()
            .zip(self.jids.iter())
            .enumerate()
            .map(|(index, (entry, jid))| {
                let mut job = self.template.clone();
                if self.is_bulk() {
                    let args = serde_json::from_slice(self.args.get(index))
                        .expect("bulk arguments are written as valid JSON");
                    job.set("args", Value::Array(args));
                    job.set("jid", jid);
                }
                PreparedJob { job, at: entry.at }
            })
            .collect()
    }

    fn is_bulk(&self) -> bool {
        !self.args.is_empty()
    }

    /// The queue every job of this push goes to.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The template's JSON cut into fixed text and per-job holes, so each job of a bulk push is
    /// written straight into one buffer instead of cloning and serialising a map per job. The
    /// bytes are exactly `Job::to_json` of the job with `enqueued_at` set (in place if the
    /// template has one, else last, as Ruby's `Hash#[]=` would put it).
    fn pieces(&self, immediate: bool) -> Vec<Piece> {
        let bulk = self.is_bulk();
        let mut pieces = Vec::new();
        let mut text = String::from("{");
        let mut has_enqueued_at = false;
        for (i, (key, value)) in self.template.fields().iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&serde_json::to_string(key).expect("a string serializes"));
            text.push(':');
            let hole = match key.as_str() {
                "args" if bulk => Some(Piece::Args),
                "jid" if bulk => Some(Piece::Jid),
                "enqueued_at" if immediate => {
                    has_enqueued_at = true;
                    Some(Piece::EnqueuedAt)
                }
                _ => None,
            };
            match hole {
                Some(hole) => {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                    pieces.push(hole);
                }
                None => text.push_str(&value.to_string()),
            }
        }
        if immediate && !has_enqueued_at {
            text.push_str(if self.template.fields().is_empty() {
                "\"enqueued_at\":"
            } else {
                ",\"enqueued_at\":"
            });
            pieces.push(Piece::Text(std::mem::take(&mut text)));
            pieces.push(Piece::EnqueuedAt);
        }
        text.push('}');
        pieces.push(Piece::Text(text));
        pieces
    }

    fn render(pieces: &[Piece], args: &[u8], jid: &str, enqueued_at: &str, out: &mut Vec<u8>) {
        for piece in pieces {
            match piece {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Args => out.extend_from_slice(args),
                Piece::Jid => {
                    out.push(b'"');
                    out.extend_from_slice(jid.as_bytes());
                    out.push(b'"');
                }
                Piece::EnqueuedAt => out.extend_from_slice(enqueued_at.as_bytes()),
            }
        }
    }

    /// Sidekiq's `atomic_push`, slice by slice: `ZADD schedule` for scheduled jobs, else
    /// `SADD queues` + `LPUSH queue:<q>` with `enqueued_at` stamped now. Ten slices of
    /// 1,000 jobs go per round trip ([`Renderer::next_pipeline`]), which keeps memory bounded
    /// on huge bulk pushes.
    fn renderer(&self, now: f64, wire: WireVersion) -> Renderer<'_> {
        Renderer {
            push: self,
            immediate_pieces: self.pieces(true),
            scheduled_pieces: self.pieces(false),
            enqueued_at: wire.timestamp(now).to_string(),
            queue_key: keys::queue(&self.queue),
            json: Vec::with_capacity(256),
            done: 0,
        }
    }

    #[cfg(test)]
    fn pipelines(&self, now: f64, wire: WireVersion) -> Vec<redis::Pipeline> {
        let mut renderer = self.renderer(now, wire);
        std::iter::from_fn(|| renderer.next_pipeline()).collect()
    }
}

/// Renders a [`PreparedPush`] one round trip at a time. Each job is written into one reused
/// buffer and copied straight into its command.
struct Renderer<'a> {
    push: &'a PreparedPush,
    immediate_pieces: Vec<Piece>,
    scheduled_pieces: Vec<Piece>,
    enqueued_at: String,
    queue_key: String,
    json: Vec<u8>,
    /// Jobs rendered so far.
    done: usize,
}

/// Slices of [`wire::BULK_SLICE`] jobs per round trip.
const SLICES_PER_ROUND_TRIP: usize = 10;

impl Renderer<'_> {
    fn next_pipeline(&mut self) -> Option<redis::Pipeline> {
        let push = self.push;
        if self.done >= push.entries.len() {
            return None;
        }
        let mut pipe = redis::pipe();
        for _ in 0..SLICES_PER_ROUND_TRIP {
            let end = (self.done + wire::BULK_SLICE).min(push.entries.len());
            if self.done >= end {
                break;
            }
            let mut lpush = redis::cmd("LPUSH");
            lpush.arg(&self.queue_key);
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(keys::SCHEDULE);
            let (mut immediate, mut scheduled) = (0, 0);
            for index in self.done..end {
                let (entry, jid) = (&push.entries[index], push.jids.get(index));
                let args = if push.is_bulk() {
                    push.args.get(index)
                } else {
                    &[]
                };
                self.json.clear();
                match entry.at {
                    Some(at) => {
                        PreparedPush::render(
                            &self.scheduled_pieces,
                            args,
                            jid,
                            &self.enqueued_at,
                            &mut self.json,
                        );
                        zadd.arg(wire::format_float(at)).arg(&self.json[..]);
                        scheduled += 1;
                    }
                    None => {
                        PreparedPush::render(
                            &self.immediate_pieces,
                            args,
                            jid,
                            &self.enqueued_at,
                            &mut self.json,
                        );
                        lpush.arg(&self.json[..]);
                        immediate += 1;
                    }
                }
            }
            if scheduled > 0 {
                pipe.add_command(zadd).ignore();
            }
            if immediate > 0 {
                pipe.sadd(keys::QUEUES, &push.queue)
                    .ignore()
                    .add_command(lpush)
                    .ignore();
            }
            self.done = end;
        }
        Some(pipe)
    }
}

/// Pushes jobs to Redis. Cheap to clone; clones share one self-reconnecting connection.
#[derive(Clone)]
pub struct Client {
    conn: Conn,
    url: String,
    options: ClientOptions,
}

impl Client {
    /// Connects with default options.
    pub async fn connect(config: &crate::RedisConfig) -> Result<Client> {
        Client::connect_with(config, ClientOptions::default()).await
    }

    /// Connects with the given wire version, default job options and clock.
    pub async fn connect_with(
        config: &crate::RedisConfig,
        options: ClientOptions,
    ) -> Result<Client> {
        let conn = config.connection_manager().await?;
        Ok(Client {
            conn,
            url: config.redacted_url(),
            options,
        })
    }

    /// The options this client pushes with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The connection, for the read API and the worker engine.
    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }

    /// The Redis URL with its password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Wraps a Redis failure with what we were doing and where.
    pub fn redis_error(&self, op: &'static str) -> impl FnOnce(redis::RedisError) -> Error + '_ {
        move |source| Error::Redis {
            op,
            url: self.url.clone(),
            source,
        }
    }

    /// Pushes one job (Sidekiq's hash shape: `class`, `args`, optional `queue`, `at`, `retry`,
    /// `jid` and any other option) and returns its jid.
    ///
    /// ```no_run
    /// # async fn demo(client: rustq_core::Client) -> rustq_core::Result<()> {
    /// let item = serde_json::json!({"class": "HardJob", "args": [1, "two"], "queue": "critical"});
    /// let jid = client.push(item.as_object().unwrap().clone()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// A unique job (`unique_for`, see [`crate::limits`]) whose lock another job holds is not
    /// written: [`Error::NotUnique`].
    pub async fn push(&self, item: Fields) -> Result<String> {
        let prepared = self.prepare_push(item)?;
        let pushed = self.write(&prepared).await?;
        if !pushed.is_written(0) {
            return Err(Error::NotUnique {
                lock: limits::unique_lock(&prepared.unique.map(|u| u.digest).unwrap_or_default()),
            });
        }
        Ok(prepared.jids.get(0).to_string())
    }

    /// Pushes many jobs of one class: `args` is an Array of Arrays (one per job) and `at`, if
    /// given, is one timestamp or one per job. Returns the jids in order (of unique jobs, those
    /// written: a job whose lock another holds is left out).
    pub async fn push_bulk(&self, items: Fields) -> Result<Vec<String>> {
        let prepared = self.prepare_bulk(items)?;
        let pushed = self.write(&prepared).await?;
        Ok(prepared
            .jids
            .iter()
            .enumerate()
            .filter(|(i, _)| pushed.is_written(*i))
            .map(|(_, jid)| jid.to_string())
            .collect())
    }

    /// Writes prepared jobs; says which were written (unique jobs whose lock is held are not).
    pub async fn write(&self, prepared: &PreparedPush) -> Result<Pushed> {
        if prepared.unique.is_some() {
            return self.write_unique(prepared).await;
        }
        self.write_plain(prepared).await?;
        Ok(Pushed::default())
    }

    /// Unique jobs: each job's lock and push in one step ([`UNIQUE_PUSH`]), all in one round trip.
    async fn write_unique(&self, prepared: &PreparedPush) -> Result<Pushed> {
        let now = self.options.clock.now();
        let script = &*UNIQUE_PUSH_SCRIPT;
        let mut pipe = redis::pipe();
        for entry in prepared.jobs() {
            let mut job = entry.job;
            let unique = limits::stamp_digest(&mut job)?.expect("a unique push's jobs are unique");
            let queue = job.queue().unwrap_or_default().to_string();
            let lifetime = unique.for_secs + entry.at.map_or(0.0, |at| (at - now).max(0.0));
            let mut invocation = script.prepare_invoke();
            invocation
                .key(limits::unique_lock(&unique.digest))
                .key(keys::QUEUES);
            let at = match entry.at {
                Some(at) => {
                    invocation.key(keys::SCHEDULE);
                    wire::format_float(at)
                }
                None => {
                    invocation.key(keys::queue(&queue));
                    job.set_time("enqueued_at", now, self.options.wire);
                    String::new()
                }
            };
            invocation
                .arg(job.jid().unwrap_or_default())
                .arg(((lifetime * 1000.0).ceil() as u64).max(1))
                .arg(job.to_json())
                .arg(&queue)
                .arg(at)
                .arg(wire::format_float(now));
            pipe.invoke_script(&invocation);
        }
        let mut conn = self.conn.clone();
        let written: Vec<i64> = match pipe.query_async(&mut conn).await {
            // Redis lost its scripts (a restart): none ran; load it and send them again.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(self.redis_error("push"))?;
                pipe.query_async(&mut conn)
                    .await
                    .map_err(self.redis_error("push"))?
            }
            other => other.map_err(self.redis_error("push"))?,
        };
        Ok(Pushed {
            duplicates: written
                .iter()
                .enumerate()
                .filter(|(_, w)| **w == 0)
                .map(|(i, _)| i)
                .collect(),
        })
    }

    async fn write_plain(&self, prepared: &PreparedPush) -> Result<()> {
        let mut renderer = prepared.renderer(self.options.clock.now(), self.options.wire);
        if prepared.entries.len() <= SLICES_PER_ROUND_TRIP * wire::BULK_SLICE {
            let Some(pipe) = renderer.next_pipeline() else {
                return Ok(());
            };
            let mut conn = self.conn.clone();
            return pipe
                .query_async::<()>(&mut conn)
                .await
                .map_err(self.redis_error("push"));
        }
        // One round trip in flight while the next is rendered: Redis applies one batch while
        // this thread writes the next. The next is sent only once the previous one has been
        // answered, so batches land in order (on any runtime) and none is sent after an error.
        let mut in_flight: Option<tokio::task::JoinHandle<redis::RedisResult<()>>> = None;
        while let Some(pipe) = renderer.next_pipeline() {
            if let Some(previous) = in_flight.take() {
                self.join_write(previous).await?;
            }
            let mut conn = self.conn.clone();
            in_flight = Some(tokio::spawn(async move {
                pipe.query_async::<()>(&mut conn).await
            }));
            // Let it go out before rendering the next batch.
            tokio::task::yield_now().await;
        }
        match in_flight {
            Some(last) => self.join_write(last).await,
            None => Ok(()),
        }
    }

    /// Writes several prepared pushes in one round trip, in order (each job written exactly as
    /// its own push would write it): for jobs that no longer share one template, such as those a
    /// client middleware has changed one by one.
    /// Unique jobs among them are written one push at a time. Says which were written, per push.
    pub async fn write_all(&self, prepared: &[PreparedPush]) -> Result<Vec<Pushed>> {
        if prepared.iter().any(|p| p.unique.is_some()) {
            let mut all = Vec::with_capacity(prepared.len());
            for push in prepared {
                all.push(self.write(push).await?);
            }
            return Ok(all);
        }
        let now = self.options.clock.now();
        let mut pipe = redis::pipe();
        for push in prepared {
            let mut renderer = push.renderer(now, self.options.wire);
            while let Some(part) = renderer.next_pipeline() {
                for cmd in part.cmd_iter() {
                    pipe.add_command(cmd.clone()).ignore();
                }
            }
        }
        let all = vec![Pushed::default(); prepared.len()];
        if pipe.is_empty() {
            return Ok(all);
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(self.redis_error("push"))?;
        Ok(all)
    }

    async fn join_write(
        &self,
        write: tokio::task::JoinHandle<redis::RedisResult<()>>,
    ) -> Result<()> {
        match write.await {
            Ok(result) => result.map_err(self.redis_error("push")),
            Err(e) => Err(self.redis_error("push")(redis::RedisError::from((
                redis::ErrorKind::Io,
                "write task failed",
                e.to_string(),
            )))),
        }
    }

    /// Validates and normalises one job, touching no network (see [`ClientOptions::prepare_push`]).
    pub fn prepare_push(&self, item: Fields) -> Result<PreparedPush, JobError> {
        self.options.prepare_push(item)
    }

    /// Validates and normalises a bulk push, touching no network (see [`ClientOptions::prepare_bulk`]).
    pub fn prepare_bulk(&self, items: Fields) -> Result<PreparedPush, JobError> {
        self.options.prepare_bulk(items)
    }
}

/// Preparing pushes needs only the options, not a connection, so test doubles can normalise
/// jobs exactly as a real push would.
impl ClientOptions {
    /// Validates and normalises one job (Sidekiq's hash shape), touching no network.
    pub fn prepare_push(&self, item: Fields) -> Result<PreparedPush, JobError> {
        validate(&item)?;
        let mut job = self.normalize(item)?;
        limits::check(job.fields())?;
        let unique = limits::stamp_digest(&mut job)?;
        let jid = job.jid().unwrap_or_default().to_string();
        let queue = job.queue().unwrap_or_default().to_string();
        let at = match job.remove("at") {
            Some(at) => Some(at.as_f64().ok_or(JobError::BadAt)?),
            None => None,
        };
        Ok(PreparedPush {
            jids: Jids::one(jid),
            queue,
            template: job,
            args: BulkArgs::default(),
            entries: vec![Entry { at }],
            unique,
        })
    }

    /// Validates and normalises a bulk push: `args` is an Array of Arrays, one per job, and
    /// `at`, if given, one timestamp or one per job. Touches no network.
    pub fn prepare_bulk(&self, mut items: Fields) -> Result<PreparedPush, JobError> {
        // Take the jobs' args out, leaving `[]` in place: the template must not carry every
        // job's arguments.
        let all_args: Vec<Value> = match items.get_mut("args") {
            Some(Value::Array(list)) if list.iter().all(Value::is_array) => std::mem::take(list),
            _ => return Err(JobError::BulkArgs),
        };
        let mut args = BulkArgs::with_capacity(all_args.len());
        for job_args in &all_args {
            args.push_value(job_args);
        }
        self.prepare_bulk_rendered(items, args)
    }

    /// [`ClientOptions::prepare_bulk`] for arguments already written as JSON: `items` holds
    /// every key but the jobs' arguments, with `"args": []` in the place `args` had.
    pub fn prepare_bulk_rendered(
        &self,
        mut items: Fields,
        args: BulkArgs,
    ) -> Result<PreparedPush, JobError> {
        if !matches!(items.get("args"), Some(Value::Array(list)) if list.is_empty()) {
            return Err(JobError::BulkArgs);
        }
        if args.is_empty() {
            return Ok(PreparedPush {
                jids: Jids::default(),
                queue: String::new(),
                template: Job::from_fields(Fields::new()),
                args,
                entries: Vec::new(),
                unique: None,
            });
        }
        let count = args.len();
        let at = items.shift_remove("at");
        let per_job_at = matches!(at, Some(Value::Array(_)));
        let at: Option<Vec<f64>> = match at {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(vec![n.as_f64().ok_or(JobError::BulkAt)?; count]),
            Some(Value::Array(list)) => {
                let times = list
                    .iter()
                    .map(Value::as_f64)
                    .collect::<Option<Vec<f64>>>()
                    .filter(|t| !t.is_empty())
                    .ok_or(JobError::BulkAt)?;
                if times.len() != count {
                    return Err(JobError::BulkAtSize);
                }
                Some(times)
            }
            Some(_) => return Err(JobError::BulkAt),
        };
        validate(&items)?;
        let template = self.normalize(items)?;
        limits::check(template.fields())?;
        // Each job's digest depends on its own arguments: stamped as it is written.
        let unique = limits::unique(template.fields())?;
        if unique.is_some() && per_job_at {
            return Err(JobError::UniqueBulkAt);
        }
        let queue = template.queue().unwrap_or_default().to_string();
        let jids = Jids::generate(count);
        let entries = match at {
            Some(times) => times.into_iter().map(|at| Entry { at: Some(at) }).collect(),
            None => (0..count).map(|_| Entry { at: None }).collect(),
        };
        Ok(PreparedPush {
            jids,
            queue,
            template,
            args,
            entries,
            unique,
        })
    }

    /// Sidekiq's `normalize_item`: defaults first, then the caller's keys, class and queue as
    /// strings, and `jid`/`created_at` filled in when absent.
    fn normalize(&self, item: Fields) -> Result<Job, JobError> {
        let mut fields = self.default_job_options.clone();
        for (k, v) in item {
            fields.insert(k, v);
        }
        let queue = match fields.get("queue") {
            None | Some(Value::Null) => return Err(JobError::MissingQueue),
            Some(Value::String(s)) if s.is_empty() => return Err(JobError::MissingQueue),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => return Err(JobError::BadQueueName(other.to_string())),
        };
        check_queue_name(&queue)?;
        fields.insert("queue".into(), Value::String(queue));
        let mut job = Job::from_fields(fields);
        if matches!(
            job.get("jid"),
            None | Some(Value::Null) | Some(Value::Bool(false))
        ) {
            job.set("jid", generate_jid());
        }
        if matches!(
            job.get("created_at"),
            None | Some(Value::Null) | Some(Value::Bool(false))
        ) {
            job.set_time("created_at", self.clock.now(), self.wire);
        }
        Ok(job)
    }
}

/// Sidekiq's `validate`: the checks run before anything else, with Sidekiq's messages.
pub fn validate(item: &Fields) -> Result<(), JobError> {
    if !item.contains_key("class") || !item.contains_key("args") {
        return Err(JobError::NotAJob);
    }
    if !item["args"].is_array() {
        return Err(JobError::ArgsNotArray);
    }
    match &item["class"] {
        Value::String(s) if !s.trim().is_empty() => {}
        _ => return Err(JobError::BadClass),
    }
    if let Some(at) = item.get("at") {
        if !at.is_number() {
            return Err(JobError::BadAt);
        }
    }
    if let Some(tags) = item.get("tags") {
        if !tags.is_null() && !tags.is_array() {
            return Err(JobError::BadTags);
        }
    }
    Ok(())
}

/// Queue names the Web UI can show: letters, digits, `_`, `:`, `.`, `-`.
pub fn check_queue_name(name: &str) -> Result<(), JobError> {
    if name.is_empty() {
        return Err(JobError::MissingQueue);
    }
    let ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(JobError::BadQueueName(name.to_string()))
    }
}

/// `perform_in`'s rule: values below 1,000,000,000 are an interval from `now`, larger ones an
/// epoch time. Returns `None` when the time is not in the future (push immediately).
pub fn schedule_time(interval_or_epoch: f64, now: f64) -> Option<f64> {
    let ts = if interval_or_epoch < wire::RELATIVE_INTERVAL_LIMIT {
        now + interval_or_epoch
    } else {
        interval_or_epoch
    };
    (ts > now).then_some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn validation_uses_sidekiqs_messages() {
        let e = |v: Value| validate(&fields(v)).unwrap_err().to_string();
        assert_eq!(
            e(json!({"args": []})),
            "Job must be a Hash with 'class' and 'args' keys"
        );
        assert_eq!(
            e(json!({"class": "A", "args": 1})),
            "Job args must be an Array"
        );
        assert_eq!(
            e(json!({"class": 5, "args": []})),
            "Job class must be either a Class or String representation of the class name"
        );
        assert_eq!(
            e(json!({"class": "A", "args": [], "at": "soon"})),
            "Job 'at' must be a Numeric timestamp"
        );
        assert_eq!(
            e(json!({"class": "A", "args": [], "tags": "x"})),
            "Job tags must be an Array"
        );
    }

    #[test]
    fn bulk_payloads_are_the_bytes_of_the_jobs() {
        let options = ClientOptions {
            clock: Clock::fixed(1_700_000_000.5),
            ..ClientOptions::default()
        };
        let cases = [
            json!({"class": "A", "args": [[1, {"x": [1.0e20, null]}], ["é\"\n"]], "bid": "b", "tags": ["t"]}),
            json!({"class": "A", "args": [[1], [2]], "enqueued_at": 1.0, "jid": "given"}),
            json!({"class": "A", "args": [[1], [2]], "at": [1_800_000_000.25, 1_800_000_001.0]}),
        ];
        for item in cases {
            let prepared = options.prepare_bulk(fields(item.clone())).unwrap();
            let packed = String::from_utf8(
                prepared
                    .pipelines(1_700_000_001.5, WireVersion::V7)
                    .iter()
                    .flat_map(|p| p.get_packed_pipeline())
                    .collect(),
            )
            .unwrap();
            for expected in prepared.jobs() {
                let mut job = expected.job.clone();
                if expected.at.is_none() {
                    job.set_time("enqueued_at", 1_700_000_001.5, WireVersion::V7);
                }
                assert!(
                    packed.contains(&job.to_json()),
                    "{item}: {} not in {packed}",
                    job.to_json()
                );
            }
        }
        let single = options
            .prepare_push(fields(json!({"class": "A", "args": [1], "x": {"y": 2}})))
            .unwrap();
        let packed =
            String::from_utf8(single.pipelines(1.5, WireVersion::V8)[0].get_packed_pipeline())
                .unwrap();
        let mut job = single.jobs().remove(0).job;
        job.set_time("enqueued_at", 1.5, WireVersion::V8);
        assert!(packed.contains(&job.to_json()), "{packed}");
    }

    #[test]
    fn arguments_written_as_json_make_the_same_jobs_as_values() {
        let options = ClientOptions {
            clock: Clock::fixed(1_700_000_000.5),
            ..ClientOptions::default()
        };
        let item = json!({"class": "A", "args": [[1, "x"], [{"k": [null, 2.5]}]], "at": [1_800_000_000.5, 1_800_000_001.0], "tags": ["t"]});
        let from_values = options.prepare_bulk(fields(item.clone())).unwrap();
        let mut args = BulkArgs::default();
        args.buffer().extend_from_slice(br#"[1,"x"]"#);
        args.end_job();
        args.buffer().extend_from_slice(br#"[{"k":[null,2.5]}]"#);
        args.end_job();
        let mut rest = fields(item);
        rest.insert("args".into(), json!([]));
        let rendered = options.prepare_bulk_rendered(rest, args).unwrap();
        let without_jid = |push: &PreparedPush| {
            push.jobs()
                .into_iter()
                .map(|mut prepared| {
                    prepared.job.remove("jid");
                    (prepared.job.to_json(), prepared.at)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(without_jid(&rendered), without_jid(&from_values));
        assert_eq!(rendered.jids.len(), 2);

        // The arguments must have been taken out, leaving `[]` in their place.
        let still_there = options.prepare_bulk_rendered(
            fields(json!({"class": "A", "args": [[1]]})),
            BulkArgs::default(),
        );
        assert!(matches!(still_there, Err(JobError::BulkArgs)));
    }

    #[test]
    fn queue_names_are_checked() {
        check_queue_name("critical").unwrap();
        check_queue_name("a:b.c-d_1").unwrap();
        assert_eq!(check_queue_name(""), Err(JobError::MissingQueue));
        assert!(matches!(
            check_queue_name("bad queue"),
            Err(JobError::BadQueueName(_))
        ));
    }

    #[test]
    fn schedule_time_follows_perform_in() {
        assert_eq!(schedule_time(10.0, 1_700_000_000.0), Some(1_700_000_010.0));
        assert_eq!(
            schedule_time(1_800_000_000.0, 1_700_000_000.0),
            Some(1_800_000_000.0)
        );
        assert_eq!(schedule_time(1_600_000_000.0, 1_700_000_000.0), None);
        assert_eq!(schedule_time(0.0, 1_700_000_000.0), None);
    }
}
