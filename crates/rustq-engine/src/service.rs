//! What runs beside the jobs for the life of a process — the heartbeat, the scheduled poller,
//! the orphan check, the acker, the fetch-and-run manager — each a [`Service`] with its own
//! `run`, started by the launcher from one list. A capability with a loop of its own (recurring
//! jobs, metrics) is one more entry ([`crate::Worker::add_service`]).

use std::future::Future;
use std::pin::Pin;

/// A boxed future that can be sent to a runtime thread.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A loop of a worker process.
pub trait Service: Send + 'static {
    /// Its name in the log.
    fn name(&self) -> &'static str;

    /// True for a service that ends by itself once the process is stopping and its work is done
    /// (the manager once its jobs are written back, the acker once every job is): the launcher
    /// waits for those. Others run until the process has stopped and are then ended.
    fn finishes(&self) -> bool {
        false
    }

    /// Runs it.
    fn run(self: Box<Self>) -> BoxFuture<()>;
}
