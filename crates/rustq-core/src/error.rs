//! Errors at rustq-core's boundary. Push validation errors carry Sidekiq's own messages.

use redis::RedisError;

/// A push that Sidekiq would refuse. Nothing is written to Redis for it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The push has no `class` or no `args` key.
    #[error("Job must be a Hash with 'class' and 'args' keys")]
    NotAJob,
    /// `args` is not an Array.
    #[error("Job args must be an Array")]
    ArgsNotArray,
    /// `class` is not a non-blank String.
    #[error("Job class must be either a Class or String representation of the class name")]
    BadClass,
    /// `at` is not a number.
    #[error("Job 'at' must be a Numeric timestamp")]
    BadAt,
    /// `tags` is neither nil nor an Array.
    #[error("Job tags must be an Array")]
    BadTags,
    /// `queue` is missing, nil or blank once the default job options are merged in.
    #[error("Job must include a valid queue name")]
    MissingQueue,
    /// The queue name has characters the Web UI cannot show, or is not a String or number;
    /// holds it as given.
    #[error("Job must include a valid queue name: {0:?} may only contain letters, digits, '_', ':', '.' and '-'")]
    BadQueueName(String),
    /// An argument is not a native JSON type (Sidekiq 7's strict args). The Ruby extension reports
    /// it while converting arguments, before the core sees them.
    #[error("Job arguments to {class} must be native JSON types, but {value} is a {type_name}.\nSee https://github.com/sidekiq/sidekiq/wiki/Best-Practices")]
    NotNativeJson {
        /// The job class being pushed.
        class: String,
        /// The offending argument, as Ruby's `inspect` shows it.
        value: String,
        /// The offending argument's Ruby class.
        type_name: String,
    },
    /// `push_bulk`'s `args` is not an Array of Arrays.
    #[error("Bulk arguments must be an Array of Arrays: [[1], [2]]")]
    BulkArgs,
    /// `push_bulk`'s `at` is neither a number nor a non-empty Array of numbers.
    #[error("Job 'at' must be a Numeric or an Array of Numeric timestamps")]
    BulkAt,
    /// `push_bulk`'s `at` Array does not have one timestamp per job.
    #[error("Job 'at' Array must have same size as 'args' Array")]
    BulkAtSize,
    /// A uniqueness, concurrency or rate-limit field that cannot hold; names the field.
    #[error("Job '{field}' {message}")]
    BadLimit {
        /// The payload field (`concurrency`, `throttle`, `unique_for`, `unique_until`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A bulk push of unique jobs with one `at` per job: each job's lock would last a different
    /// time, which one bulk write cannot promise.
    #[error("Unique jobs cannot be bulk pushed with one 'at' per job: push them one by one, or with one 'at' for all")]
    UniqueBulkAt,
}

/// A stored payload that a server cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The payload is not JSON; holds the parser's message.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The payload is JSON but not an object; holds the Ruby name of what it is instead.
    #[error("job payload must be a JSON object, got a {0}")]
    NotAnObject(&'static str),
    /// `class` is missing, null or blank.
    #[error("job payload has no 'class' (or it is blank)")]
    MissingClass,
    /// A required field is missing; holds its name.
    #[error("job payload has no '{0}'")]
    MissingField(&'static str),
    /// A field has the wrong type; holds its name and the Ruby name of its type.
    #[error("job payload's '{0}' must not be a {1}")]
    BadField(&'static str, &'static str),
}

/// Everything rustq-core can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A push that Sidekiq would refuse; nothing was written.
    #[error(transparent)]
    InvalidJob(#[from] JobError),
    /// The Redis URL, or the CA file it needs, cannot be used.
    #[error("invalid Redis configuration {url}: {reason}")]
    Config {
        /// The Redis URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection to Redis could be opened.
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        /// The Redis URL, password redacted.
        url: String,
        /// Why the connection failed.
        #[source]
        source: RedisError,
    },
    /// A unique job was pushed while its lock is held: nothing was written.
    #[error("not unique: a job with the same class, queue and arguments holds lock {lock}")]
    NotUnique {
        /// The lock's key.
        lock: String,
    },
    /// A Redis command failed.
    #[error("Redis {op} failed on {url}: {source}")]
    Redis {
        /// What was being done: a Redis command, or an operation such as `push`.
        op: &'static str,
        /// The Redis URL, password redacted.
        url: String,
        /// The error Redis or the connection returned.
        #[source]
        source: RedisError,
    },
}

impl Error {
    /// True when the failure is the connection (refused, dropped, timed out), not the command.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_unrecoverable_error()
            }
            _ => false,
        }
    }
}

/// rustq-core's result; the error is [`Error`] unless given.
pub type Result<T, E = Error> = std::result::Result<T, E>;
