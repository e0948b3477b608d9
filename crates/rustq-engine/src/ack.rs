//! Acknowledges finished jobs in batches: each job leaves its in-progress list in the same atomic
//! step as whatever its outcome writes (a retry, a dead-set entry, a requeue, a deferral, a check
//! point's writes; see [`crate::outcome`]).

use std::sync::Arc;
use std::time::Duration;

use rustq_core::wire;
use rustq_core::Conn;
use tokio::sync::mpsc;

use crate::dead_set::DeadSetLimits;
use crate::holdings::Holdings;
use crate::keys as rkeys;
use crate::outcome::{self, Batch, Effect};
use crate::service::Service;
use crate::work::Completion;

/// Most completions written in one round trip.
pub const BATCH: usize = 512;

/// Adds one completion to `batch`.
pub fn add(batch: &mut Batch, identity: &str, c: &Completion) {
    let inprogress = rkeys::inprogress(identity, &c.unit.queue);
    batch.add(
        &inprogress,
        &c.unit.raw,
        Effect::Action(&c.action, &c.unit.queue),
        &c.writes,
    );
}

/// Writes completions until every sender is gone. A failed write is retried with backoff until
/// Redis answers: an unwritten acknowledgement would only make the job run again, but an
/// unwritten retry or dead entry must not be dropped. Once written, a job is no longer one of
/// `holdings`.
pub struct Acker {
    /// Its own connection's manager.
    pub conn: Conn,
    /// This process's identity (its in-progress lists are named after it).
    pub identity: String,
    /// Finished jobs.
    pub rx: mpsc::UnboundedReceiver<Completion>,
    /// The dead set's trim.
    pub dead: DeadSetLimits,
    /// What this process holds.
    pub holdings: Arc<Holdings>,
}

impl Service for Acker {
    fn name(&self) -> &'static str {
        "acker"
    }

    fn finishes(&self) -> bool {
        true
    }

    fn run(self: Box<Self>) -> crate::handler::BoxFuture<()> {
        Box::pin(self.drain())
    }
}

impl Acker {
    async fn drain(mut self) {
        let script = outcome::script();
        // Loaded once up front, so the first batch with a retry is not refused with NOSCRIPT.
        let _ = script
            .prepare_invoke()
            .load_async(&mut self.conn.clone())
            .await;
        let mut completions = Vec::with_capacity(BATCH);
        while let Some(first) = self.rx.recv().await {
            completions.push(first);
            while completions.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(c) => completions.push(c),
                    Err(_) => break,
                }
            }
            let mut batch = Batch::new(wire::now_secs(), self.dead);
            for c in &completions {
                add(&mut batch, &self.identity, c);
            }
            let mut backoff = Duration::from_millis(50);
            loop {
                let mut conn = self.conn.clone();
                match batch.write(&script, &mut conn).await {
                    Ok(written) => {
                        written.log_refused("acknowledge");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, jobs = completions.len(), "cannot write finished jobs; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            completions
                .iter()
                .for_each(|c| self.holdings.release(&c.unit));
            completions.clear();
        }
    }
}
