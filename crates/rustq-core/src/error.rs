//! Errors at rustq-core's boundary. Push validation errors carry Sidekiq's own messages.

use redis::RedisError;

/// A push that Sidekiq would refuse. Nothing is written to Redis for it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("Job must be a Hash with 'class' and 'args' keys")]
    NotAJob,
    #[error("Job args must be an Array")]
    ArgsNotArray,
    #[error("Job class must be either a Class or String representation of the class name")]
    BadClass,
    #[error("Job 'at' must be a Numeric timestamp")]
    BadAt,
    #[error("Job tags must be an Array")]
    BadTags,
    #[error("Job must include a valid queue name")]
    MissingQueue,
    #[error("Job must include a valid queue name: {0:?} may only contain letters, digits, '_', ':', '.' and '-'")]
    BadQueueName(String),
    #[error("Job arguments to {class} must be native JSON types, but {value} is a {type_name}.\nSee https://github.com/sidekiq/sidekiq/wiki/Best-Practices")]
    NotNativeJson {
        class: String,
        value: String,
        type_name: String,
    },
    #[error("Bulk arguments must be an Array of Arrays: [[1], [2]]")]
    BulkArgs,
    #[error("Job 'at' must be a Numeric or an Array of Numeric timestamps")]
    BulkAt,
    #[error("Job 'at' Array must have same size as 'args' Array")]
    BulkAtSize,
}

/// A stored payload that a server cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("job payload must be a JSON object, got a {0}")]
    NotAnObject(&'static str),
    #[error("job payload has no 'class' (or it is blank)")]
    MissingClass,
    #[error("job payload has no '{0}'")]
    MissingField(&'static str),
    #[error("job payload's '{0}' must not be a {1}")]
    BadField(&'static str, &'static str),
}

/// Everything rustq-core can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidJob(#[from] JobError),
    #[error("invalid Redis configuration {url}: {reason}")]
    Config { url: String, reason: String },
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: RedisError,
    },
    #[error("Redis {op} failed on {url}: {source}")]
    Redis {
        op: &'static str,
        url: String,
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
