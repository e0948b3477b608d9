//! A failed job's next step, as Sidekiq's `JobRetry` decides it: back into the `retry` set with
//! backoff, into the `dead` set when retries run out, or dropped when `retry: false`.

use rand::Rng;
use rustq_core::wire::{self, WireVersion};
use rustq_core::{Job, Retry};

use crate::failure::{Backoff, Failure, FailureKind};
use crate::handler::HandlerOptions;
use crate::work::Action;

/// Settings the retry decision needs from the process.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// How timestamps are written.
    pub wire: WireVersion,
    /// Retries for a job whose `retry` is `true` (Sidekiq's `max_retries`, 25).
    pub max_retries: u32,
}

/// What a retryable failure of a job's next run would lead to, known before it runs, so a host
/// can call its hooks as Sidekiq does (`sidekiq_retry_in` only while retries are left,
/// `sidekiq_retries_exhausted` when they are not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outlook {
    /// Into the `retry` set.
    Retry,
    /// Retries are used up (or `retry_for` has passed): the dead set, unless `dead: false`.
    Exhausted,
    /// `retry: false`: dropped, no dead set.
    NoRetry,
}

/// The [`Outlook`] of `job` (as fetched, before it runs) should it fail with a retryable failure.
pub fn outlook(
    job: &Job,
    handler: Option<&HandlerOptions>,
    policy: RetryPolicy,
    now: f64,
) -> Outlook {
    let retry = retry_setting(job, handler);
    if retry == Retry::Disabled {
        return Outlook::NoRetry;
    }
    // What `record_error` will write: the count goes up, `failed_at` is set on the first failure.
    let (count, first_failed) = match job.retry_count() {
        Some(count) => (count.saturating_add(1), job.failed_at_secs()),
        None => (0, Some(now)),
    };
    let count = u32::try_from(count.max(0)).unwrap_or(u32::MAX);
    if retries_left(
        job,
        count,
        first_failed,
        retry.max_retries(policy.max_retries),
        now,
    ) {
        Outlook::Retry
    } else {
        Outlook::Exhausted
    }
}

/// The payload's own `retry` wins; a job without one takes its handler's, else the default.
fn retry_setting(job: &Job, handler: Option<&HandlerOptions>) -> Retry {
    job.retry()
        .or_else(|| handler.and_then(|h| h.retry))
        .unwrap_or(Retry::Default)
}

fn retries_left(job: &Job, count: u32, first_failed: Option<f64>, max: u32, now: f64) -> bool {
    let within_retry_for = match (job.retry_for(), first_failed) {
        (Some(limit), Some(first)) => now - first < limit,
        _ => true,
    };
    count < max && within_retry_for
}

/// How often in a row a job may run into a limiter over its limit and be scheduled again, before
/// that counts as a failure (Sidekiq Enterprise's default).
pub const MAX_OVERRATED: u64 = 20;

/// A job that ran into a limiter over its limit ([`FailureKind::OverLimit`]): scheduled again
/// when the limiter says it may have room, else after a backoff that grows with each time
/// (5 s, 10 s, 20 s … at most 5 min, plus up to 5 s of jitter), its payload counting the times in
/// `overrated`. `None` once it has been [`MAX_OVERRATED`] times: then it fails like any error.
pub fn reschedule(job: &Job, failure: &Failure, now: f64) -> Option<Action> {
    let overrated = job.get("overrated").and_then(|v| v.as_u64()).unwrap_or(0);
    if overrated >= MAX_OVERRATED {
        return None;
    }
    let jitter: f64 = rand::rng().random_range(0.0..5.0);
    let wait = match failure.backoff {
        Some(Backoff::In(wait)) => wait.as_secs_f64() + jitter.min(wait.as_secs_f64() * 0.1),
        _ => (5.0 * 2f64.powi(overrated as i32)).min(300.0) + jitter,
    };
    let mut job = job.clone();
    job.set("overrated", overrated + 1);
    Some(Action::Reschedule {
        at: now + wait,
        payload: job.to_json(),
    })
}

/// Decides what happens to `job` (fetched from `queue`) after `failure`.
pub fn on_failure(
    mut job: Job,
    queue: &str,
    failure: &Failure,
    handler: Option<&HandlerOptions>,
    policy: RetryPolicy,
    now: f64,
) -> Action {
    if failure.kind == FailureKind::Discard {
        return Action::Acknowledge;
    }
    let retry = retry_setting(&job, handler);
    if retry == Retry::Disabled && failure.kind == FailureKind::Retry {
        return Action::Acknowledge;
    }
    record_error(&mut job, queue, failure, policy.wire, now);
    // Negative (-1 after the Web UI's "retry now") counts as 0; past u32, as exhausted.
    let count = u32::try_from(job.retry_count().unwrap_or(0).max(0)).unwrap_or(u32::MAX);
    let max = retry.max_retries(policy.max_retries);
    let first_failed = job.failed_at_secs();
    if failure.kind == FailureKind::Retry && retries_left(&job, count, first_failed, max, now) {
        // The job's own answer first, then its handler's, then Sidekiq's formula.
        let backoff = failure
            .backoff
            .or_else(|| {
                handler
                    .and_then(|h| h.retry_in.as_ref())
                    .map(|f| f(count, failure))
            })
            .unwrap_or(Backoff::Default);
        let mut rng = rand::rng();
        let delay = match backoff {
            Backoff::Default => policy.wire.retry_delay(count, &mut rng) as f64,
            // Sidekiq adds the same jitter to a custom delay.
            Backoff::In(d) => {
                d.as_secs_f64() + f64::from(rng.random_range(0..10u32)) * (f64::from(count) + 1.0)
            }
            Backoff::Discard => return Action::Acknowledge,
            Backoff::Kill => return dead(job),
        };
        return Action::Retry {
            at: now + delay,
            payload: job.to_json(),
        };
    }
    dead(job)
}

fn dead(job: Job) -> Action {
    if job.dead() {
        Action::Dead {
            payload: job.to_json(),
        }
    } else {
        Action::Acknowledge
    }
}

/// Writes Sidekiq's failure fields: `queue` (the retry queue), `error_message`, `error_class`,
/// `failed_at`/`retried_at`, `retry_count`, and `error_backtrace` when `backtrace` asks for it.
pub fn record_error(job: &mut Job, queue: &str, failure: &Failure, wire: WireVersion, now: f64) {
    let retry_queue = job.retry_queue().unwrap_or(queue).to_string();
    job.set("queue", retry_queue);
    job.set(
        "error_message",
        wire::truncate_error_message(&failure.message),
    );
    job.set("error_class", failure.error_class.as_str());
    match job.retry_count() {
        Some(count) => {
            job.set_time("retried_at", now, wire);
            job.set("retry_count", count.saturating_add(1));
        }
        None => {
            job.set_time("failed_at", now, wire);
            job.set("retry_count", 0);
        }
    }
    if let Some(lines) = job.backtrace_lines() {
        let kept: Vec<String> = failure.backtrace.iter().take(lines).cloned().collect();
        job.set("error_backtrace", wire::compress_backtrace(&kept));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    const POLICY: RetryPolicy = RetryPolicy {
        wire: WireVersion::V7,
        max_retries: 25,
    };

    fn job(json: &str) -> Job {
        Job::from_json(json).unwrap()
    }

    #[test]
    fn first_failure_sets_failed_at_and_schedules_a_retry() {
        let j = job(r#"{"retry":true,"queue":"default","class":"A","args":[],"jid":"j"}"#);
        let action = on_failure(
            j,
            "default",
            &Failure::retry("RuntimeError", "boom"),
            None,
            POLICY,
            1000.0,
        );
        let Action::Retry { at, payload } = action else {
            panic!("{action:?}")
        };
        assert!((1015.0..=1024.0).contains(&at), "{at}");
        let out = job(&payload);
        assert_eq!(out.retry_count(), Some(0));
        assert_eq!(out.failed_at_secs(), Some(1000.0));
        assert_eq!(out.error_message(), Some("boom"));
        assert_eq!(out.error_class(), Some("RuntimeError"));
        assert!(payload.ends_with(r#""error_message":"boom","error_class":"RuntimeError","failed_at":1000.0,"retry_count":0}"#), "{payload}");
    }

    #[test]
    fn later_failures_count_up_and_use_retry_queue() {
        let j = job(
            r#"{"retry":3,"queue":"default","retry_queue":"slow","class":"A","args":[],"retry_count":1,"failed_at":900.0}"#,
        );
        let Action::Retry { payload, at } = on_failure(
            j,
            "default",
            &Failure::retry("E", "m"),
            None,
            POLICY,
            1000.0,
        ) else {
            panic!()
        };
        let out = job(&payload);
        assert_eq!(out.retry_count(), Some(2));
        assert_eq!(out.retried_at_secs(), Some(1000.0));
        assert_eq!(out.queue(), Some("slow"));
        assert!(at >= 1000.0 + 16.0 + 15.0);
    }

    #[test]
    fn exhausted_jobs_die_unless_dead_is_false() {
        let j = job(r#"{"retry":2,"queue":"q","class":"A","args":[],"retry_count":1}"#);
        assert!(matches!(
            on_failure(j, "q", &Failure::retry("E", "m"), None, POLICY, 1.0),
            Action::Dead { .. }
        ));
        let j = job(r#"{"retry":0,"queue":"q","class":"A","args":[]}"#);
        assert!(matches!(
            on_failure(j, "q", &Failure::retry("E", "m"), None, POLICY, 1.0),
            Action::Dead { .. }
        ));
        let j = job(r#"{"retry":0,"dead":false,"queue":"q","class":"A","args":[]}"#);
        assert_eq!(
            on_failure(j, "q", &Failure::retry("E", "m"), None, POLICY, 1.0),
            Action::Acknowledge
        );
    }

    #[test]
    fn retry_false_drops_and_kill_goes_straight_to_dead() {
        let j = job(r#"{"retry":false,"queue":"q","class":"A","args":[]}"#);
        assert_eq!(
            on_failure(j.clone(), "q", &Failure::retry("E", "m"), None, POLICY, 1.0),
            Action::Acknowledge
        );
        assert!(matches!(
            on_failure(j.clone(), "q", &Failure::kill("E", "m"), None, POLICY, 1.0),
            Action::Dead { .. }
        ));
        assert_eq!(
            on_failure(j, "q", &Failure::discard("m"), None, POLICY, 1.0),
            Action::Acknowledge
        );
    }

    #[test]
    fn handler_options_fill_in_and_custom_backoff_applies() {
        let j = job(r#"{"queue":"q","class":"A","args":[]}"#);
        let opts = HandlerOptions {
            retry: Some(Retry::Times(5)),
            timeout: None,
            retry_in: Some(Arc::new(|count, _| {
                if count == 0 {
                    Backoff::In(Duration::from_secs(100))
                } else {
                    Backoff::Kill
                }
            })),
            limits: Vec::new(),
        };
        let Action::Retry { at, .. } = on_failure(
            j.clone(),
            "q",
            &Failure::retry("E", "m"),
            Some(&opts),
            POLICY,
            0.0,
        ) else {
            panic!()
        };
        assert!((100.0..110.0).contains(&at));
        let mut again = j;
        again.set("retry_count", 0);
        assert!(matches!(
            on_failure(
                again,
                "q",
                &Failure::retry("E", "m"),
                Some(&opts),
                POLICY,
                0.0
            ),
            Action::Dead { .. }
        ));
    }

    #[test]
    fn backtrace_is_kept_when_asked() {
        let j = job(r#"{"queue":"q","class":"A","args":[],"backtrace":1}"#);
        let f = Failure::retry("E", "m").with_backtrace(vec!["a.rs:1".into(), "b.rs:2".into()]);
        let Action::Retry { payload, .. } = on_failure(j, "q", &f, None, POLICY, 0.0) else {
            panic!()
        };
        assert_eq!(
            job(&payload).error_backtrace(),
            Some(vec!["a.rs:1".to_string()])
        );
    }

    #[test]
    fn retry_for_limits_retries_by_time() {
        let j = job(
            r#"{"queue":"q","class":"A","args":[],"retry_for":60,"retry_count":0,"failed_at":0.0}"#,
        );
        assert!(matches!(
            on_failure(j, "q", &Failure::retry("E", "m"), None, POLICY, 100.0),
            Action::Dead { .. }
        ));
    }

    #[test]
    fn a_failure_s_own_backoff_wins_over_the_handler_s() {
        let j = job(r#"{"queue":"q","class":"A","args":[]}"#);
        let opts = HandlerOptions {
            retry_in: Some(Arc::new(|_, _| Backoff::In(Duration::from_secs(1000)))),
            ..HandlerOptions::default()
        };
        let failure = Failure::retry("E", "m").with_backoff(Backoff::In(Duration::from_secs(100)));
        let Action::Retry { at, .. } =
            on_failure(j.clone(), "q", &failure, Some(&opts), POLICY, 0.0)
        else {
            panic!()
        };
        assert!((100.0..110.0).contains(&at), "{at}");
        let kill = Failure::retry("E", "m").with_backoff(Backoff::Kill);
        assert!(matches!(
            on_failure(j.clone(), "q", &kill, None, POLICY, 0.0),
            Action::Dead { .. }
        ));
        let discard = Failure::retry("E", "m").with_backoff(Backoff::Discard);
        assert_eq!(
            on_failure(j, "q", &discard, None, POLICY, 0.0),
            Action::Acknowledge
        );
    }

    #[test]
    fn outlook_foretells_what_a_failure_will_do() {
        let cases = [
            (r#"{"queue":"q","class":"A","args":[]}"#, Outlook::Retry),
            (
                r#"{"retry":false,"queue":"q","class":"A","args":[]}"#,
                Outlook::NoRetry,
            ),
            (
                r#"{"retry":0,"queue":"q","class":"A","args":[]}"#,
                Outlook::Exhausted,
            ),
            (
                r#"{"retry":2,"queue":"q","class":"A","args":[],"retry_count":0}"#,
                Outlook::Retry,
            ),
            (
                r#"{"retry":2,"queue":"q","class":"A","args":[],"retry_count":1}"#,
                Outlook::Exhausted,
            ),
            (
                r#"{"queue":"q","class":"A","args":[],"retry_for":60,"retry_count":0,"failed_at":0.0}"#,
                Outlook::Exhausted,
            ),
            (
                r#"{"queue":"q","class":"A","args":[],"retry_for":60}"#,
                Outlook::Retry,
            ),
        ];
        for (json, expected) in cases {
            let j = job(json);
            assert_eq!(outlook(&j, None, POLICY, 100.0), expected, "{json}");
            // It agrees with what the failure then does.
            let action = on_failure(j, "q", &Failure::retry("E", "m"), None, POLICY, 100.0);
            let agreed = match expected {
                Outlook::Retry => matches!(action, Action::Retry { .. }),
                Outlook::Exhausted => matches!(action, Action::Dead { .. }),
                Outlook::NoRetry => action == Action::Acknowledge,
            };
            assert!(agreed, "{json}: {action:?}");
        }
        let handler = HandlerOptions {
            retry: Some(Retry::Disabled),
            ..HandlerOptions::default()
        };
        let j = job(r#"{"queue":"q","class":"A","args":[]}"#);
        assert_eq!(outlook(&j, Some(&handler), POLICY, 0.0), Outlook::NoRetry);
    }

    #[test]
    fn a_retry_count_at_the_edge_of_its_type_is_no_panic() {
        // Whoever writes to Redis chooses retry_count; a failure must still be decided.
        for count in [i64::from(u32::MAX), i64::MAX] {
            let j = job(&format!(
                r#"{{"retry":true,"queue":"q","class":"A","args":[],"retry_count":{count}}}"#
            ));
            let failure =
                Failure::retry("E", "m").with_backoff(Backoff::In(Duration::from_secs(5)));
            let _ = outlook(&j, None, POLICY, 1000.0);
            match on_failure(j, "q", &failure, None, POLICY, 1000.0) {
                Action::Dead { payload } => assert!(payload.contains("retry_count"), "{payload}"),
                other => panic!("{count}: {other:?}"),
            }
        }
    }
}
