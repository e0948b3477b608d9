//! The unit of work and its outcome: a job taken from a queue (Sidekiq's `UnitOfWork`), what is
//! to be written for it once it has run ([`Action`]), and the extra Redis commands a check point
//! adds to that write ([`Write`]). Every other step of a job's life speaks in these terms.

use rustq_core::{Job, PayloadError};

/// One job taken from a queue, not yet acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitOfWork {
    /// The queue it was taken from (without `queue:`).
    pub queue: String,
    /// The payload exactly as stored (it may not even be UTF-8).
    pub raw: Vec<u8>,
}

impl UnitOfWork {
    /// The payload read as a job: UTF-8 JSON of Sidekiq's shape.
    pub fn parse(&self) -> Result<Job, PayloadError> {
        parse(&self.raw)
    }
}

/// Reads stored bytes as a job: UTF-8 JSON of Sidekiq's shape.
pub fn parse(raw: &[u8]) -> Result<Job, PayloadError> {
    let text = std::str::from_utf8(raw)
        .map_err(|e| PayloadError::InvalidJson(format!("payload is not valid UTF-8 ({e})")))?;
    Job::from_json(text)
}

/// What to write for a finished job. Each is written atomically with removing the job from the
/// in-progress list, and only if it was still there (see [`crate::outcome`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Done (succeeded, discarded, or `retry: false`): just remove it.
    Acknowledge,
    /// `ZADD retry <at> <payload>`.
    Retry {
        /// When to run it again (epoch seconds).
        at: f64,
        /// The payload with its failure recorded.
        payload: String,
    },
    /// `ZADD dead <now> <payload>` and trim the dead set.
    Dead {
        /// The payload with its failure recorded.
        payload: String,
    },
    /// Put it back at the front of its queue (`RPUSH queue:<q>`), unchanged.
    Requeue,
    /// A check point deferred it before it ran: not a failure, not a retry; unchanged.
    Defer(Deferral),
    /// `ZADD schedule <at> <payload>`: it ran into a limiter over its limit and runs again later,
    /// not a failure, not a retry (the payload counts how often, in `overrated`).
    Reschedule {
        /// When to run it again (epoch seconds).
        at: f64,
        /// The payload with its `overrated` count.
        payload: String,
    },
}

/// Where a deferred job waits, unchanged, without counting as a failure or a retry.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Deferral {
    /// Into the `schedule` set until this time (epoch seconds): the poller brings it back.
    Until(f64),
    /// Onto the back of this list (`LPUSH`), which its check point drains (`RPOP`: oldest first).
    Into(String),
}

/// One Redis command written with a job's outcome, in the same atomic step; see
/// [`crate::CheckPoint::on_outcome`]. Keys are named with [`Write::key`], so the step can name
/// every key it touches.
///
/// ```
/// use rustq_engine::Write;
/// let w = Write::new("HINCRBY").key("rustq:report:done").arg("ReportJob").arg(1);
/// assert_eq!(w.keys().collect::<Vec<_>>(), vec![b"rustq:report:done".as_slice()]);
/// ```
///
/// A write may gate the ones after it: with [`Write::gate`], the next `n` writes of the same job
/// run only if this one answers as expected — so a count changes once however often the job runs
/// (`SREM pending <jid>` answering 1), and a step that sees a total reach zero can enqueue what
/// follows, exactly once, in the same atomic step:
///
/// ```
/// use rustq_engine::Write;
/// let writes = vec![
///     // Counted once: only the run that takes the jid out of `pending` goes on.
///     Write::new("SREM").key("rustq:report:pending").arg("jid-1").gate(1, 2),
///     Write::new("SCARD").key("rustq:report:pending").gate(0, 1),
///     Write::new("LPUSH").key("queue:default").arg(r#"{"class":"ReportDoneJob","args":[]}"#),
/// ];
/// assert_eq!(writes[0].gated(), Some(("1", 2)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    parts: Vec<(bool, Vec<u8>)>,
    gate: Option<(String, usize)>,
    once: Option<String>,
}

impl Write {
    /// A command named `name` (`"SREM"`, `"HINCRBY"`, `"LMOVE"`…).
    pub fn new(name: &str) -> Write {
        Write {
            parts: vec![(false, name.as_bytes().to_vec())],
            gate: None,
            once: None,
        }
    }

    /// Runs once per atomic step, after every job's own writes, whatever the jobs of the step
    /// (the first of identical `tag`s wins; consecutive writes with one tag are one block, kept
    /// or dropped whole, their gates intact). For a check that only reads what the jobs wrote and
    /// changes nothing a second run would change again — "is the batch done?" — which would
    /// otherwise run once per job.
    pub fn once_per_step(mut self, tag: impl Into<String>) -> Write {
        self.once = Some(tag.into());
        self
    }

    /// The tag of a [`Write::once_per_step`] write.
    pub fn once(&self) -> Option<&str> {
        self.once.as_deref()
    }

    /// The next `following` writes of the same job run only if this one answers `reply` (an
    /// integer reply as its number, a bulk string as itself, nil as `false`); otherwise they are
    /// skipped. Gates nest: a skipped gate skips what it gates as well.
    pub fn gate(mut self, reply: impl ToString, following: usize) -> Write {
        self.gate = Some((reply.to_string(), following));
        self
    }

    /// What this write's gate expects and how many writes it gates.
    pub fn gated(&self) -> Option<(&str, usize)> {
        self.gate.as_ref().map(|(reply, n)| (reply.as_str(), *n))
    }

    /// Adds a key argument.
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Write {
        self.parts.push((true, key.as_ref().to_vec()));
        self
    }

    /// Adds a plain argument.
    pub fn arg(mut self, arg: impl ToString) -> Write {
        self.parts.push((false, arg.to_string().into_bytes()));
        self
    }

    /// Adds a plain argument given as bytes.
    pub fn arg_bytes(mut self, arg: impl AsRef<[u8]>) -> Write {
        self.parts.push((false, arg.as_ref().to_vec()));
        self
    }

    /// The keys it touches.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.parts
            .iter()
            .filter(|(is_key, _)| *is_key)
            .map(|(_, k)| k.as_slice())
    }

    /// Its name and arguments in order, each marked true when it is a key.
    pub fn parts(&self) -> &[(bool, Vec<u8>)] {
        &self.parts
    }
}

/// A finished job and what to write for it.
#[derive(Debug)]
pub struct Completion {
    /// The job, as fetched.
    pub unit: UnitOfWork,
    /// What its run decided.
    pub action: Action,
    /// What check points add to the same atomic step.
    pub writes: Vec<Write>,
}

impl Completion {
    /// A completion without extra writes.
    pub fn new(unit: UnitOfWork, action: Action) -> Completion {
        Completion {
            unit,
            action,
            writes: Vec::new(),
        }
    }
}
