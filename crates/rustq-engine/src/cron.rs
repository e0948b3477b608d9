//! The scheduler: recurring jobs enqueued on their ticks, in every process, with no leader.
//!
//! Schedules live in sidekiq-cron 2.x's keys ([`rustq_cron`]), so sidekiq-cron's API, its Web
//! UI tab and its own pollers share them. Each process wakes at the next tick of any schedule;
//! for a due schedule it reads the schedule again (a disable or a change made anywhere counts
//! at once), works out which ticks since the last claimed one to enqueue — every on-time tick,
//! and of the missed ones what the schedule's `missed` says — and claims each with
//! [`Schedules::claim`]: the `ZADD NX` sidekiq-cron's pollers claim with, and the push, in one
//! script. Whichever process (rustq's or sidekiq-cron's) claims a tick first enqueues it; a
//! process killed at any instant leaves the tick claimed and pushed, or neither.
//!
//! The list of schedules is read again when its size changes (one `SCARD` a second sees a
//! schedule created or deleted anywhere, or a flushed Redis), when a due schedule's cron line
//! turns out changed, and every [`RELOAD`] (a line changed to fire sooner); schedule files are
//! reconciled then too: a file's schedule missing from Redis is saved again, one changed in the
//! file is updated; at boot, a file's schedule removed from the file is removed (as
//! sidekiq-cron's load does), and schedules made through an API stay. An idle fleet with
//! thousands of schedules thus reads each once per [`RELOAD`], where sidekiq-cron's poller reads
//! every one at each poll (every 15-45 s).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, Opts, Registry};
use rustq_cron::schedule::{GRACE_SECS, ON_TIME_SECS};
use rustq_cron::store::DEFAULT_NAMESPACE;
use rustq_cron::{Claim, CronLine, Missed, Schedule, Schedules, Source, Status};

use crate::check_point::{CheckFuture, CheckPoint, Outcome, Verdict};
use crate::control::Control;
use crate::service::{BoxFuture, Service};
use crate::work::Write;
use redis::AsyncCommands;

/// How often the list of schedules is read again and files reconciled, at the latest.
pub const RELOAD: Duration = Duration::from_secs(300);

/// Ticks counted per schedule, for `/metrics`.
#[derive(Clone)]
pub struct CronCounters {
    /// Ticks this process enqueued.
    pub enqueued: IntCounterVec,
    /// Ticks missed (not enqueued by anyone when due, and left by `missed`).
    pub missed: IntCounterVec,
    /// Ticks this process claimed and did not enqueue: the previous job had not finished.
    pub skipped: IntCounterVec,
}

impl Default for CronCounters {
    fn default() -> Self {
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["schedule"]).expect("valid metric")
        };
        CronCounters {
            enqueued: counter(
                "rustq_cron_enqueued_total",
                "Recurring jobs' ticks this process enqueued",
            ),
            missed: counter(
                "rustq_cron_missed_total",
                "Recurring jobs' ticks found missed (no scheduler ran) and not enqueued, per the schedule's `missed`",
            ),
            skipped: counter(
                "rustq_cron_skipped_total",
                "Recurring jobs' ticks not enqueued because the previous job had not finished (the schedule's `overlap`)",
            ),
        }
    }
}

impl CronCounters {
    /// Serves them with the process's other metrics.
    pub fn register(&self, registry: &Registry) {
        let _ = registry.register(Box::new(self.enqueued.clone()));
        let _ = registry.register(Box::new(self.missed.clone()));
        let _ = registry.register(Box::new(self.skipped.clone()));
    }
}

/// Which of the ticks since the last claimed one to enqueue, oldest first: every tick at most
/// [`ON_TIME_SECS`] late, and of the missed ones none (`skip`), the latest if no tick was on
/// time and it is at most [`GRACE_SECS`] late (`latest`), or the latest `missed_cap` (`all`).
/// Also returns how many missed ticks were left (counted up to about 1,000).
pub fn ticks_to_enqueue(
    line: &CronLine,
    missed: Missed,
    missed_cap: u32,
    last_claimed: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Vec<DateTime<Utc>>, usize) {
    // Missed ticks are counted up to 1,000 per pass (a seconds-level schedule down for a day
    // misses 86,400).
    let limit = (ON_TIME_SECS as usize + 2 + missed_cap as usize).max(1000);
    let ticks = line.ticks_back(last_claimed, now, limit);
    let late = |t: &DateTime<Utc>| (now - *t).num_seconds();
    let (on_time, late_ticks): (Vec<_>, Vec<_>) =
        ticks.into_iter().partition(|t| late(t) <= ON_TIME_SECS);
    let mut chosen: Vec<DateTime<Utc>> = match missed {
        Missed::Skip => Vec::new(),
        Missed::Latest => late_ticks
            .first()
            .filter(|t| on_time.is_empty() && late(t) <= GRACE_SECS)
            .into_iter()
            .copied()
            .collect(),
        Missed::All => late_ticks
            .iter()
            .take(missed_cap as usize)
            .copied()
            .collect(),
    };
    let left = late_ticks.len() - chosen.len();
    chosen.extend(on_time);
    chosen.sort();
    (chosen, left)
}

struct Entry {
    line: CronLine,
    next: Option<DateTime<Utc>>,
}

/// Enqueues recurring jobs for the life of the process, not while it is quiet.
pub struct Scheduler {
    /// The schedules' store.
    pub schedules: Schedules,
    /// The process's control.
    pub control: Control,
    /// Schedules of the config's `schedule:` and the schedule file; `None` when neither was
    /// given (then nothing is removed for being absent from a file).
    pub files: Option<Vec<Schedule>>,
    /// Counters for `/metrics`.
    pub counters: CronCounters,
}

impl Scheduler {
    fn namespaces(&self) -> Vec<String> {
        let mut namespaces = vec![DEFAULT_NAMESPACE.to_string()];
        for s in self.files.iter().flatten() {
            if !namespaces.contains(&s.namespace) {
                namespaces.push(s.namespace.clone());
            }
        }
        namespaces
    }

    /// Saves the files' schedules Redis lacks or holds otherwise; at boot also applies their
    /// `status` and removes file schedules no longer in a file.
    async fn reconcile(
        &self,
        found: &[Schedule],
        boot: bool,
    ) -> Result<bool, rustq_cron::StoreError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let by_name: HashMap<(&str, &str), &Schedule> = found
            .iter()
            .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
            .collect();
        let mut changed = false;
        for wanted in files {
            let held = by_name.get(&(wanted.namespace.as_str(), wanted.name.as_str()));
            if held.is_some_and(|h| same_definition(h, wanted)) && !boot {
                continue;
            }
            let mut saving = wanted.clone();
            if !boot {
                saving.status = None; // a disable made in the Web UI stays
            }
            self.schedules.save(&saving).await?;
            if held.is_none() {
                tracing::info!(schedule = %wanted.name, cron = %wanted.cron, "schedule saved from the schedule file");
            }
            changed = true;
        }
        if boot {
            for held in found.iter().filter(|s| s.source == Source::File) {
                if !files.iter().any(|f| f.name == held.name) {
                    self.schedules.destroy(&held.namespace, &held.name).await?;
                    tracing::info!(schedule = %held.name, "schedule removed: no longer in the schedule file");
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// Reads every schedule, reconciling files first.
    async fn load(
        &self,
        boot: bool,
    ) -> Result<HashMap<(String, String), Entry>, rustq_cron::StoreError> {
        self.schedules.check_layout().await?;
        let namespaces = self.namespaces();
        let mut all = self.schedules.all(&namespaces).await?;
        let readable: Vec<Schedule> = all
            .iter()
            .filter_map(|s| s.as_ref().ok().cloned())
            .collect();
        if self.reconcile(&readable, boot).await? {
            all = self.schedules.all(&namespaces).await?;
        }
        let now = Utc::now();
        let mut entries = HashMap::new();
        for schedule in all {
            let checked = schedule.and_then(|s| {
                let line = s.check(self.schedules.zone())?;
                Ok((s, line))
            });
            match checked {
                Ok((s, line)) => {
                    // Due at once: ticks missed while no scheduler ran are looked for first.
                    let next = Some(now);
                    entries.insert((s.namespace, s.name), Entry { line, next });
                }
                // One bad schedule (say, made by sidekiq-cron with a line rustq does not read)
                // stops only itself.
                Err(e) => tracing::error!(error = %e, "schedule not run"),
            }
        }
        Ok(entries)
    }

    /// Enqueues the due ticks of one schedule; false if it is gone or changed (reload).
    async fn run_due(
        &self,
        namespace: &str,
        name: &str,
        line: &CronLine,
    ) -> Result<bool, rustq_cron::StoreError> {
        let Some(schedule) = self.schedules.find(namespace, name).await? else {
            return Ok(false);
        };
        if schedule.cron != line.text() {
            return Ok(false);
        }
        if schedule.status == Some(Status::Disabled) {
            return Ok(true);
        }
        let now = Utc::now();
        let last = self
            .schedules
            .last_claimed(namespace, name)
            .await?
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            // Nothing claimed (its ticks forgotten): only on-time ticks, no backfill from the epoch.
            .unwrap_or(now - chrono::Duration::seconds(ON_TIME_SECS + 1));
        let (ticks, left) = ticks_to_enqueue(line, schedule.missed, schedule.missed_cap, last, now);
        if left > 0 {
            self.counters
                .missed
                .with_label_values(&[name])
                .inc_by(left as u64);
            tracing::warn!(schedule = %name, missed = left, policy = schedule.missed.as_str(), "missed ticks not enqueued");
        }
        for tick in ticks {
            match self.schedules.claim(&schedule, Some(tick)).await? {
                Claim::Pushed { jid } => {
                    self.counters.enqueued.with_label_values(&[name]).inc();
                    tracing::info!(schedule = %name, tick = %rustq_cron::schedule::tick_member(tick), jid = %jid, class = %schedule.class, "recurring job enqueued");
                }
                Claim::Taken => {}
                Claim::Skipped => {
                    self.counters.skipped.with_label_values(&[name]).inc();
                    tracing::info!(schedule = %name, tick = %rustq_cron::schedule::tick_member(tick), overlap = schedule.overlap.as_str(), "tick skipped: the previous job has not finished");
                }
                Claim::Disabled => return Ok(true),
                Claim::Changed => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// Marks the runs of schedules that skip ticks while one runs (`overlap: skip_if_running`):
/// a job carrying [`rustq_cron::schedule::SCHEDULE_FIELD`] is entered in its schedule's running
/// hash (jid → this process) just before it runs, and removed in the same atomic step that
/// writes its outcome. A run whose process dies is left for the next claim, which finds the
/// process's key gone and ignores it: never by elapsed time.
pub struct CronRuns {
    /// The connection, once the process has one.
    pub conn: Arc<OnceLock<rustq_core::Conn>>,
    /// This process's identity (its heartbeat key).
    pub identity: String,
}

fn running_key_of(job: &rustq_core::Job) -> Option<String> {
    rustq_cron::store::running_key_of(job.get(rustq_cron::schedule::SCHEDULE_FIELD)?.as_str()?)
}

impl CheckPoint for CronRuns {
    fn before<'a>(
        &'a self,
        job: &'a rustq_core::Job,
        _unit: &'a crate::work::UnitOfWork,
    ) -> CheckFuture<'a> {
        let Some(key) = running_key_of(job) else {
            return Box::pin(std::future::ready(Verdict::Run));
        };
        Box::pin(async move {
            if let (Some(conn), Some(jid)) = (self.conn.get(), job.jid()) {
                let mut conn = conn.clone();
                let marked: redis::RedisResult<()> = conn.hset(&key, jid, &self.identity).await;
                if let Err(e) = marked {
                    tracing::warn!(error = %e, jid, "could not mark a recurring job's run; its next tick may overlap it");
                }
            }
            Verdict::Run
        })
    }

    fn on_outcome(&self, outcome: &Outcome<'_>, writes: &mut Vec<Write>) {
        if !outcome.passed {
            return;
        }
        if let (Some(key), Some(jid)) = (running_key_of(outcome.job), outcome.job.jid()) {
            writes.push(Write::new("HDEL").key(key).arg(jid));
        }
    }
}

/// The same schedule as far as a file says: what a file sets, not status or history.
fn same_definition(held: &Schedule, wanted: &Schedule) -> bool {
    held.cron == wanted.cron
        && held.class == wanted.class
        && held.args == wanted.args
        && held.queue == wanted.queue
        && held.retry.as_ref().filter(|r| !r.is_null()) == wanted.retry.as_ref()
        && held.description == wanted.description
        && held.active_job == wanted.active_job
        && held.date_as_argument == wanted.date_as_argument
        && held.queue_name_prefix == wanted.queue_name_prefix
        && held.queue_name_delimiter == wanted.queue_name_delimiter
        && held.missed == wanted.missed
        && held.missed_cap == wanted.missed_cap
        && held.overlap == wanted.overlap
        && held.source == wanted.source
}

impl Service for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn run(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            let mut entries = HashMap::new();
            let mut reload_at = tokio::time::Instant::now();
            let mut booted = false;
            let namespaces = self.namespaces();
            let mut listed = None;
            loop {
                if self.control.is_quiet() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                // A schedule created or deleted elsewhere (sidekiq-cron's API, another
                // process's file) is seen within a second, not at the next reload.
                let count = self.schedules.count(&namespaces).await.ok();
                if booted && count.is_some() && count != listed {
                    reload_at = tokio::time::Instant::now();
                }
                if tokio::time::Instant::now() >= reload_at {
                    match self.load(!booted).await {
                        Ok(loaded) => {
                            if !booted {
                                tracing::info!(schedules = loaded.len(), "scheduler started");
                            }
                            booted = true;
                            listed = self.schedules.count(&namespaces).await.ok();
                            // Keep where each unchanged schedule was: a reload must not skip a tick.
                            let mut fresh = HashMap::with_capacity(loaded.len());
                            for (key, entry) in loaded {
                                let next = entries
                                    .get(&key)
                                    .filter(|old: &&Entry| old.line.text() == entry.line.text())
                                    .map(|old| old.next)
                                    .unwrap_or(entry.next);
                                fresh.insert(key, Entry { next, ..entry });
                            }
                            entries = fresh;
                            reload_at = tokio::time::Instant::now() + RELOAD;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "could not read the schedules; retrying");
                            reload_at = tokio::time::Instant::now() + Duration::from_secs(5);
                        }
                    }
                }
                let now = Utc::now();
                let mut reload = false;
                for ((namespace, name), entry) in entries.iter_mut() {
                    if entry.next.is_none_or(|next| next > now) {
                        continue;
                    }
                    match self.run_due(namespace, name, &entry.line).await {
                        Ok(true) => {}
                        Ok(false) => reload = true,
                        Err(e) => {
                            tracing::warn!(error = %e, schedule = %name, "could not enqueue a recurring job; retrying");
                            continue; // `next` stays: tried again on the next turn
                        }
                    }
                    entry.next = entry.line.next_after(now);
                }
                if reload {
                    // Read again at once; unchanged schedules keep their next tick.
                    reload_at = tokio::time::Instant::now();
                    continue;
                }
                let until_next = entries
                    .values()
                    .filter_map(|e| e.next)
                    .min()
                    .map(|next| (next - Utc::now()).to_std().unwrap_or_default())
                    .unwrap_or(RELOAD);
                let until_reload = reload_at.saturating_duration_since(tokio::time::Instant::now());
                // A few ms of spread, so the fleet's processes do not all race for each tick.
                let spread = Duration::from_millis(rand::random::<u64>() % 20);
                tokio::time::sleep(
                    until_next.min(until_reload).min(Duration::from_secs(1)) + spread,
                )
                .await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn missed_ticks_follow_the_schedules_policy() {
        let utc = rustq_cron::Zone::parse("UTC").unwrap();
        let every_second = CronLine::parse("* * * * * *", utc).unwrap();
        // Claimed last at 0 s, now 30 s: ticks 25..=30 are on time, 1..=24 missed.
        let (all, left) = ticks_to_enqueue(&every_second, Missed::All, 10, at(0), at(30));
        assert_eq!(
            all,
            (15..=30).map(at).collect::<Vec<_>>(),
            "the 10 latest missed, then the on-time ones"
        );
        assert_eq!(left, 14);
        let (latest, left) = ticks_to_enqueue(&every_second, Missed::Latest, 10, at(0), at(30));
        assert_eq!(
            latest,
            (25..=30).map(at).collect::<Vec<_>>(),
            "on-time ticks, so no missed one"
        );
        assert_eq!(left, 24);
        let minutely = CronLine::parse("0 * * * * *", utc).unwrap();
        // Ten minutely ticks missed, the latest 50 s ago.
        let (latest, left) = ticks_to_enqueue(&minutely, Missed::Latest, 10, at(-600), at(50));
        assert_eq!((latest, left), (vec![at(0)], 9));
        let hourly = CronLine::parse("0 0 * * * *", utc).unwrap();
        let (latest, left) = ticks_to_enqueue(&hourly, Missed::Latest, 10, at(-7200), at(100));
        assert_eq!(
            (latest, left),
            (vec![], 2),
            "the latest is beyond the 60 s grace"
        );
        let (skip, left) = ticks_to_enqueue(&minutely, Missed::Skip, 10, at(-600), at(50));
        assert_eq!((skip, left), (vec![], 10));
        let (all, left) = ticks_to_enqueue(&minutely, Missed::All, 3, at(-600), at(50));
        assert_eq!((all, left), (vec![at(-120), at(-60), at(0)], 7));
    }
}
