//! The one atomic step that takes jobs out of a list this process holds them in — an in-progress
//! list, the poller's scheduling list, the poison list — together with what each job's outcome
//! writes: a retry, a dead-set entry, a requeue, a deferral, a push to its queue, and whatever a
//! check point adds ([`Write`]).
//!
//! Each job's writes run only if the job was still in its list (`LREM` removed it), so a batch
//! written again after its reply was lost, or an outcome for a job another process has since
//! recovered, applies nothing a second time. One Lua script, sent by hash, names every key it
//! touches in `KEYS`. A plain acknowledgement (nothing to write but the removal, most of them)
//! is a bare `LREM` in the same MULTI as the script: the same step, without the cost of a call
//! from Lua (measured: 1.5 µs of Redis CPU per job).

use std::collections::HashMap;

use rustq_core::wire::{self, keys};
use rustq_core::Conn;

use crate::dead_set::{self, DeadSetLimits};
use crate::work::{Action, Deferral, Write};

const WRITE_OUTCOMES: &str = r#"
-- KEYS: every key of the batch. ARGV[1] = number of jobs, then per job: the index in KEYS of
-- the list holding it (0: no list holds it, a job a Sidekiq process ran), the job as held there, how many commands carry it where it goes (its
-- effect), how many a check point adds (its writes), then each command: how many commands after
-- it it gates (0: none) and the reply it expects for them to run, its number of parts, then per
-- part a kind ('k': a key, by index in KEYS; 'j': the job as held; 'a': the value itself) and a
-- value. Last, the commands run once after every job (the dead set's trim, checks run once
-- per step), in the same form, gates included.
-- A job still in its list has its effect run first; only if that succeeds does it leave the
-- list, and then its writes run. A command Redis refuses (a wrong-typed key) leaves its job where
-- it was, never lost, and is reported, without failing the other jobs of the batch.
-- Returns {jobs written, then per refused command: the job, the error}.
local at, applied, refused = 2, 0, {}
local function command(job)
  local gates, expects = tonumber(ARGV[at]), ARGV[at + 1]
  at = at + 2
  local parts = {}
  for p = 1, tonumber(ARGV[at]) do
    local kind, value = ARGV[at + 2 * p - 1], ARGV[at + 2 * p]
    if kind == 'k' then parts[p] = KEYS[tonumber(value)]
    elseif kind == 'j' then parts[p] = job
    else parts[p] = value end
  end
  at = at + 1 + 2 * #parts
  return parts, gates, expects
end
-- Runs a command; returns whether Redis took it, and its reply as text (for gates).
local function run(parts, job)
  local reply = redis.pcall(unpack(parts))
  if type(reply) == 'table' and reply.err then
    refused[#refused + 1] = job
    refused[#refused + 1] = parts[1] .. ': ' .. reply.err
    return false, ''
  end
  if type(reply) == 'table' and reply.ok then return true, reply.ok end
  return true, tostring(reply)
end
for _ = 1, tonumber(ARGV[1]) do
  local list, job = KEYS[tonumber(ARGV[at])], ARGV[at + 1]
  local effects, writes = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  at = at + 4
  local ok
  if list == nil then
    ok = true
  elseif effects == 0 then
    ok = redis.call('LREM', list, -1, job) > 0
  else
    ok = redis.call('LPOS', list, job, 'RANK', -1) ~= false
    for _ = 1, effects do
      local parts = command(job)
      if ok then ok = run(parts, job) end
    end
    if ok then redis.call('LREM', list, -1, job) end
  end
  if ok then applied = applied + 1 end
  local skip = 0
  for _ = 1, writes do
    local parts, gates, expects = command(job)
    if skip > 0 then
      skip = skip - 1
    elseif ok then
      local taken, reply = run(parts, job)
      if gates > 0 and (not taken or reply ~= expects) then skip = gates end
    end
  end
end
local after = tonumber(ARGV[at])
at = at + 1
local skip = 0
for _ = 1, after do
  local parts, gates, expects = command(nil)
  if skip > 0 then
    skip = skip - 1
  else
    local taken, reply = run(parts, '')
    if gates > 0 and (not taken or reply ~= expects) then skip = gates end
  end
end
local reply = {applied}
for _, v in ipairs(refused) do reply[#reply + 1] = v end
return reply
"#;

/// A command's parts, each marked `k` (a key, by its index in `KEYS`), `j` (the job) or `a`.
type Parts = Vec<(u8, Vec<u8>)>;

/// A batch of jobs leaving the lists they are held in, written in one step by [`Batch::write`].
pub struct Batch {
    keys: Vec<Vec<u8>>,
    index: HashMap<Vec<u8>, usize>,
    /// Plain acknowledgements: the list (index in `keys`, from 1) and the job.
    plain: Vec<(usize, Vec<u8>)>,
    /// Jobs written through the script.
    jobs: usize,
    body: Vec<Vec<u8>>,
    /// Commands run once after every job: the dead set's trim, once a job is buried, and writes
    /// to run once per step ([`Write::once_per_step`]), with their gates.
    tail: Vec<(Parts, Option<(String, usize)>)>,
    /// Whether the dead set's trim is in the tail.
    trimmed: bool,
    /// Tags of the once-per-step blocks in the tail.
    once: std::collections::HashSet<String>,
    now: f64,
    dead: DeadSetLimits,
}

/// Where a job goes besides out of its list.
#[derive(Clone, Copy, Debug)]
pub enum Effect<'a> {
    /// What `action` says.
    Action(&'a Action, &'a str),
    /// `SADD queues <queue>` and `LPUSH queue:<queue> <payload>`: a due scheduled job, pushed.
    Push {
        /// The queue it goes to.
        queue: &'a str,
        /// The payload as pushed (with its new `enqueued_at`).
        payload: &'a str,
    },
    /// Into the dead set with this payload.
    Bury(&'a str),
}

impl Batch {
    /// An empty batch; `now` is the time dead-set entries get, `dead` their trim.
    pub fn new(now: f64, dead: DeadSetLimits) -> Batch {
        Batch {
            keys: Vec::new(),
            index: HashMap::new(),
            plain: Vec::new(),
            jobs: 0,
            body: Vec::new(),
            tail: Vec::new(),
            trimmed: false,
            once: std::collections::HashSet::new(),
            now,
            dead,
        }
    }

    /// The index of `key` in `KEYS` (from 1), added on first use.
    fn key_index(&mut self, key: &[u8]) -> usize {
        if let Some(at) = self.index.get(key) {
            return *at;
        }
        self.keys.push(key.to_vec());
        self.index.insert(key.to_vec(), self.keys.len());
        self.keys.len()
    }

    fn key(&mut self, key: &[u8]) -> Vec<u8> {
        self.key_index(key).to_string().into_bytes()
    }

    /// `job`, held in `list`, leaves it; `effect` and `writes` follow, only if it was there.
    pub fn add(&mut self, list: &str, job: &[u8], effect: Effect<'_>, writes: &[Write]) {
        let owned;
        let writes = if writes.iter().any(|w| w.once().is_some()) {
            owned = self.take_once(writes);
            &owned[..]
        } else {
            writes
        };
        let plain = matches!(effect, Effect::Action(Action::Acknowledge, _));
        if plain && writes.is_empty() {
            let at = self.key_index(list.as_bytes());
            self.plain.push((at, job.to_vec()));
            return;
        }
        let mut commands: Vec<Parts> = Vec::new();
        let job_part = || (b'j', Vec::new());
        match effect {
            Effect::Action(Action::Acknowledge, _) => {}
            Effect::Action(Action::Retry { at, payload }, _) => commands.push(
                self.parts(
                    &Write::new("ZADD")
                        .key(keys::RETRY)
                        .arg(wire::format_float(*at))
                        .arg(payload),
                ),
            ),
            Effect::Action(Action::Reschedule { at, payload }, _) => commands.push(
                self.parts(
                    &Write::new("ZADD")
                        .key(keys::SCHEDULE)
                        .arg(wire::format_float(*at))
                        .arg(payload),
                ),
            ),
            Effect::Action(Action::Dead { payload }, _) => {
                self.bury(&mut commands, payload);
            }
            Effect::Bury(payload) => {
                self.bury(&mut commands, payload);
            }
            Effect::Push { queue, payload } => {
                commands.push(self.parts(&Write::new("SADD").key(keys::QUEUES).arg(queue)));
                commands
                    .push(self.parts(&Write::new("LPUSH").key(keys::queue(queue)).arg(payload)));
            }
            Effect::Action(Action::Requeue, queue) => {
                let mut parts = self.parts(&Write::new("RPUSH").key(keys::queue(queue)));
                parts.push(job_part());
                commands.push(parts);
            }
            Effect::Action(Action::Defer(Deferral::Until(at)), _) => {
                let mut parts = self.parts(
                    &Write::new("ZADD")
                        .key(keys::SCHEDULE)
                        .arg(wire::format_float(*at)),
                );
                parts.push(job_part());
                commands.push(parts);
            }
            Effect::Action(Action::Defer(Deferral::Into(target)), _) => {
                let mut parts = self.parts(&Write::new("LPUSH").key(target));
                parts.push(job_part());
                commands.push(parts);
            }
        }
        let list = self.key(list.as_bytes());
        self.push_job(list, job, commands, writes);
    }

    /// One job in the script's form: its list (index in `KEYS`, 0 for none), itself, its
    /// effect's commands, then its writes with their gates.
    fn push_job(&mut self, list: Vec<u8>, job: &[u8], commands: Vec<Parts>, writes: &[Write]) {
        let gated: Vec<Parts> = writes.iter().map(|write| self.parts(write)).collect();
        self.jobs += 1;
        self.body.push(list);
        self.body.push(job.to_vec());
        self.body.push(commands.len().to_string().into_bytes());
        self.body.push(writes.len().to_string().into_bytes());
        for parts in commands {
            self.push_command(parts, None);
        }
        for (parts, write) in gated.into_iter().zip(writes) {
            self.push_command(parts, write.gated());
        }
    }

    /// The writes of a job no list holds — one that a Sidekiq process fetched and ran (with the
    /// gem's batch middleware) — run unconditionally, gates aside, in the batch's step.
    pub fn add_unheld(&mut self, job: &[u8], writes: &[Write]) {
        let writes = self.take_once(writes);
        self.push_job(b"0".to_vec(), job, Vec::new(), &writes);
    }

    /// Moves a job's once-per-step blocks to the tail (the first block of each tag; later ones
    /// are dropped) and returns its own writes.
    fn take_once(&mut self, writes: &[Write]) -> Vec<Write> {
        let mut own = Vec::with_capacity(writes.len());
        let mut at = 0;
        while at < writes.len() {
            let Some(tag) = writes[at].once() else {
                own.push(writes[at].clone());
                at += 1;
                continue;
            };
            let end = at
                + writes[at..]
                    .iter()
                    .take_while(|w| w.once() == Some(tag))
                    .count();
            if self.once.insert(tag.to_string()) {
                for write in &writes[at..end] {
                    let parts = self.parts(write);
                    let gate = write.gated().map(|(reply, n)| (reply.to_string(), n));
                    self.tail.push((parts, gate));
                }
            }
            at = end;
        }
        own
    }

    /// A dead-set entry, and the trim once per batch.
    fn bury(&mut self, commands: &mut Vec<Parts>, payload: &str) {
        if !self.trimmed {
            self.trimmed = true;
            for write in dead_set::trim(self.now, self.dead) {
                let parts = self.parts(&write);
                self.tail.push((parts, None));
            }
        }
        commands.push(self.parts(&dead_set::bury(payload, self.now)));
    }

    fn parts(&mut self, write: &Write) -> Parts {
        write
            .parts()
            .iter()
            .map(|(is_key, value)| {
                if *is_key {
                    (b'k', self.key(value))
                } else {
                    (b'a', value.clone())
                }
            })
            .collect()
    }

    fn push_command(&mut self, parts: Parts, gate: Option<(&str, usize)>) {
        let (expects, gates) = gate.unwrap_or(("", 0));
        self.body.push(gates.to_string().into_bytes());
        self.body.push(expects.as_bytes().to_vec());
        self.body.push(parts.len().to_string().into_bytes());
        for (kind, value) in parts {
            self.body.push(vec![kind]);
            self.body.push(value);
        }
    }

    /// Writes the batch in one step; returns how many of its jobs were still held (those
    /// whose outcome was written; should Redis have lost the script, which is then loaded and
    /// the batch sent again, plain acknowledgements done by the first try are not counted), and
    /// the commands Redis refused: `(job, error)`. A job whose
    /// effect was refused stays in its list (the orphan check gives an in-progress job back to
    /// its queue; the poller pushes a due job again); a refused check-point write is lost alone.
    pub async fn write(
        &self,
        script: &redis::Script,
        conn: &mut Conn,
    ) -> redis::RedisResult<Written> {
        match self.send(script, conn).await {
            // Redis lost its scripts (a restart): the plain removals of this first try are done,
            // and do nothing when written again.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script.prepare_invoke().load_async(conn).await?;
                self.send(script, conn).await
            }
            written => written,
        }
    }

    async fn send(&self, script: &redis::Script, conn: &mut Conn) -> redis::RedisResult<Written> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (list, job) in &self.plain {
            pipe.cmd("LREM")
                .arg(self.keys[list - 1].as_slice())
                .arg(-1)
                .arg(job.as_slice());
        }
        let scripted = self.jobs > 0 || !self.tail.is_empty();
        if scripted {
            let mut invocation = script.prepare_invoke();
            for k in &self.keys {
                invocation.key(k.as_slice());
            }
            invocation.arg(self.jobs);
            for part in &self.body {
                invocation.arg(part.as_slice());
            }
            invocation.arg(self.tail.len());
            for (parts, gate) in &self.tail {
                match gate {
                    Some((reply, gates)) => invocation.arg(*gates).arg(reply.as_str()),
                    None => invocation.arg(0).arg(""),
                };
                invocation.arg(parts.len());
                for (kind, value) in parts {
                    invocation.arg(&[*kind][..]).arg(value.as_slice());
                }
            }
            pipe.invoke_script(&invocation);
        }
        if self.plain.is_empty() && !scripted {
            return Ok(Written::default());
        }
        let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
        let script_reply = if scripted { replies.pop() } else { None };
        let mut applied = replies
            .into_iter()
            .filter(|r| matches!(r, redis::Value::Int(n) if *n > 0))
            .count() as u64;
        let mut refused = Vec::new();
        if let Some(reply) = script_reply {
            let reply: Vec<redis::Value> = redis::from_redis_value(reply)?;
            let mut reply = reply.into_iter();
            if let Some(redis::Value::Int(n)) = reply.next() {
                applied += n.max(0) as u64;
            }
            let text = |v: redis::Value| -> String {
                redis::from_redis_value::<Vec<u8>>(v)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            while let (Some(job), Some(error)) = (reply.next(), reply.next()) {
                refused.push((text(job), text(error)));
            }
        }
        Ok(Written { applied, refused })
    }
}

/// What [`Batch::write`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Jobs still held, whose outcome was written.
    pub applied: u64,
    /// Commands Redis refused: the job they were for, and the error.
    pub refused: Vec<(String, String)>,
}

impl Written {
    /// Logs what was refused, naming the job's jid where it has one.
    pub fn log_refused(&self, step: &str) {
        for (job, error) in &self.refused {
            let jid = serde_json::from_str::<serde_json::Value>(job)
                .ok()
                .and_then(|v| v.get("jid").and_then(|j| j.as_str().map(str::to_string)))
                .unwrap_or_default();
            tracing::error!(step, jid = %jid, error = %error, "Redis refused a write of a job's outcome; the job stays where it was");
        }
    }
}

/// The script [`Batch::write`] runs; load it once per process.
pub fn script() -> redis::Script {
    redis::Script::new(WRITE_OUTCOMES)
}
