//! Redis keys that only rustq uses (Sidekiq's own keys live in `rustq_core::wire::keys`).

/// Hash: identity → `{"queues": [...], "concurrency": N}` of that process. A process whose
/// heartbeat key has expired and that still has an entry here left jobs behind.
pub const PROCESSES: &str = "rustq:processes";
/// Hash: jid → how many times a process died while running it (expires a day after the last).
pub const RECOVERIES: &str = "rustq:recoveries";
/// List: jobs recovered too often, waiting to be moved to the dead set with an explanation.
pub const POISON: &str = "rustq:poison";
/// Prefix of a process's in-progress list for one queue: `rustq:inprogress:<identity>:<queue>`.
pub const INPROGRESS_PREFIX: &str = "rustq:inprogress:";
/// Prefix of a process's list of due scheduled/retry jobs being pushed to their queues.
pub const SCHEDULING_PREFIX: &str = "rustq:scheduling:";

/// The list holding jobs this process took from `queue` and has not acknowledged yet.
pub fn inprogress(identity: &str, queue: &str) -> String {
    format!("{INPROGRESS_PREFIX}{identity}:{queue}")
}

/// The list holding due jobs this process took from `schedule`/`retry` and has not pushed yet.
pub fn scheduling(identity: &str) -> String {
    format!("{SCHEDULING_PREFIX}{identity}")
}
