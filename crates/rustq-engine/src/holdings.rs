//! How many copies of each job this process holds: reported by a fetch and not yet written back.
//! The orphan check ([`crate::orphans`]) compares the in-progress lists with it to find jobs a
//! lost fetch reply left there.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::work::UnitOfWork;

/// Copies held per job (queue and payload), keyed by a hash of the pair, so a job is not copied
/// to be counted.
#[derive(Default)]
pub struct Holdings {
    counts: Mutex<HashMap<u64, u32>>,
    total: AtomicUsize,
    suspect: Notify,
    released: Notify,
}

fn key(queue: &str, raw: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    queue.hash(&mut hasher);
    raw.hash(&mut hasher);
    hasher.finish()
}

impl Holdings {
    /// A fetch reported `unit`.
    pub fn take(&self, unit: &UnitOfWork) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(key(&unit.queue, &unit.raw)).or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    /// `unit`'s outcome is written: it is no longer in the in-progress list.
    pub fn release(&self, unit: &UnitOfWork) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(&unit.queue, &unit.raw);
        if let Some(n) = counts.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&k);
            }
            self.total.fetch_sub(1, Ordering::SeqCst);
        }
        drop(counts);
        self.released.notify_one();
    }

    /// How many jobs are held in all: fetched and not yet written back.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Resolves after the next [`Holdings::release`] (or at once if one came since the last
    /// wait).
    pub async fn released(&self) {
        self.released.notified().await;
    }

    /// How many copies of `raw` from `queue` are held.
    pub fn held(&self, queue: &str, raw: &[u8]) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&key(queue, raw)).copied().unwrap_or(0)
    }

    /// How many distinct jobs are held (the tests check that released ones leave no entry).
    #[cfg(test)]
    fn distinct(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A fetch failed without an answer: it may have moved jobs nobody was told of.
    pub fn fetch_failed(&self) {
        self.suspect.notify_one();
    }

    /// Resolves after the next [`Holdings::fetch_failed`].
    pub async fn suspected(&self) {
        self.suspect.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(queue: &str, raw: &str) -> UnitOfWork {
        UnitOfWork {
            queue: queue.into(),
            raw: raw.as_bytes().to_vec(),
        }
    }

    #[test]
    fn counts_copies_per_queue_and_payload() {
        let h = Holdings::default();
        h.take(&unit("a", "x"));
        h.take(&unit("a", "x"));
        h.take(&unit("b", "x"));
        assert_eq!(h.held("a", b"x"), 2);
        assert_eq!(h.held("b", b"x"), 1);
        assert_eq!(h.total(), 3);
        h.release(&unit("a", "x"));
        assert_eq!(h.held("a", b"x"), 1);
        h.release(&unit("a", "x"));
        h.release(&unit("a", "x"));
        assert_eq!(h.held("a", b"x"), 0);
        assert_eq!(h.distinct(), 1);
        assert_eq!(h.total(), 1);
    }
}
