//! The job check point and the engine's start of a job, against a real Redis, for a handler
//! that runs jobs on threads of its own (as the Ruby host's does): it passes the check points
//! like any Rust handler, and its time limit counts from the moment one of its threads takes the
//! job, not while the job waits for a thread.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustq_core::{Client, Job, RedisConfig};
use rustq_engine::handler::BoxFuture;
use rustq_engine::{
    Action, CheckFuture, CheckPoint, Deferral, Handler, JobContext, JobResult, Outcome,
    QueueWeight, Registry, UnitOfWork, Verdict, Worker, WorkerOptions, Write,
};
use rustq_testing::{wait_until, RedisServer};
use serde_json::json;
use tokio::sync::oneshot;

/// A handler with one thread of its own: jobs queue for it, and it claims each as it takes it.
struct OneThread {
    jobs: Mutex<mpsc::Sender<(JobContext, oneshot::Sender<JobResult>)>>,
}

impl OneThread {
    fn start(ran: Arc<Mutex<Vec<String>>>) -> OneThread {
        let (tx, rx) = mpsc::channel::<(JobContext, oneshot::Sender<JobResult>)>();
        std::thread::spawn(move || {
            for (ctx, reply) in rx {
                if !ctx.started() {
                    continue; // taken back by the engine: not ours to run
                }
                let ms = ctx.args().first().and_then(|a| a.as_u64()).unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                ran.lock().unwrap().push(ctx.jid().to_string());
                let _ = reply.send(Ok(()));
            }
        });
        OneThread {
            jobs: Mutex::new(tx),
        }
    }
}

impl Handler for OneThread {
    fn signals_start(&self) -> bool {
        true
    }

    fn perform(&self, ctx: JobContext) -> BoxFuture<JobResult> {
        let (reply, answer) = oneshot::channel();
        self.jobs.lock().unwrap().send((ctx, reply)).unwrap();
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(rustq_engine::Failure::retry("Gone", "thread gone")))
        })
    }
}

/// Defers `Parked` into a list and `Later` an hour; writes each `Counted` jid with its outcome.
struct Gate;

impl CheckPoint for Gate {
    fn before<'a>(&'a self, job: &'a Job, _unit: &'a UnitOfWork) -> CheckFuture<'a> {
        let verdict = match job.class() {
            Some("Parked") => Verdict::Defer(Deferral::Into("rustq:test:parked".into())),
            Some("Later") => Verdict::Defer(Deferral::Until(rustq_core::wire::now_secs() + 3600.0)),
            _ => Verdict::Run,
        };
        Box::pin(std::future::ready(verdict))
    }

    fn on_outcome(&self, outcome: &Outcome<'_>, writes: &mut Vec<Write>) {
        if outcome.job.class() == Some("Counted") && outcome.action == &Action::Acknowledge {
            writes.push(
                Write::new("RPUSH")
                    .key("rustq:test:outcomes")
                    .arg(outcome.job.jid().unwrap_or_default()),
            );
        }
    }
}

async fn push(client: &Client, class: &str, args: serde_json::Value) -> String {
    let item = json!({"class": class, "args": args});
    client
        .push(item.as_object().unwrap().clone())
        .await
        .unwrap()
}

/// A worker's options for this test's Redis: one slot, the queue `default`.
fn one_slot(redis: &RedisServer) -> WorkerOptions {
    let mut options = WorkerOptions::default();
    options.redis = RedisConfig::new(redis.url());
    options.concurrency = 1;
    options.queues = vec![QueueWeight {
        name: "default".into(),
        weight: 0,
    }];
    options
}

fn worker(redis: &RedisServer, ran: Arc<Mutex<Vec<String>>>, timeout: Option<f64>) -> Worker {
    let mut registry = Registry::new();
    registry.fallback(OneThread::start(ran));
    let mut options = one_slot(redis);
    options.dispatch_ahead = true;
    options.job_timeout = timeout.map(Duration::from_secs_f64);
    let mut worker = Worker::new(options, registry);
    worker.add_check_point(Gate);
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_with_threads_of_its_own_passes_the_check_points() {
    let redis = RedisServer::start();
    let client = Client::connect(&RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let parked = push(&client, "Parked", json!([])).await;
    let later = push(&client, "Later", json!([])).await;
    let counted = push(&client, "Counted", json!([])).await;
    let ran = Arc::new(Mutex::new(Vec::new()));
    let worker = worker(&redis, ran.clone(), None);
    let control = worker.control();
    let run = tokio::spawn(worker.run());
    let done = tokio::task::spawn_blocking({
        let ran = ran.clone();
        move || wait_until(Duration::from_secs(20), || ran.lock().unwrap().len() == 1)
    })
    .await
    .unwrap();
    // Its outcome is written by the acker just after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    control.stop();
    run.await.unwrap().unwrap();

    assert!(done);
    assert_eq!(
        *ran.lock().unwrap(),
        vec![counted.clone()],
        "only Counted ran"
    );
    let parked_list = redis.cli(&["LRANGE", "rustq:test:parked", "0", "-1"]);
    assert!(parked_list.contains(&parked), "{parked_list}");
    let schedule = redis.cli(&["ZRANGE", "schedule", "0", "-1"]);
    assert!(schedule.contains(&later), "{schedule}");
    assert_eq!(
        redis.cli(&["LRANGE", "rustq:test:outcomes", "0", "-1"]),
        counted
    );
    assert_eq!(
        redis.cli(&["ZCARD", "retry"]),
        "0",
        "a deferral is no retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_limit_counts_from_the_moment_a_thread_takes_the_job() {
    // One thread; the first job takes 1.5 s, over the 1 s limit; the second waits for the thread
    // all that time, then takes 10 ms. Only the first is over its limit.
    let redis = RedisServer::start();
    let client = Client::connect(&RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let slow = push(&client, "Counted", json!([1500])).await;
    let quick = push(&client, "Counted", json!([10])).await;
    let ran = Arc::new(Mutex::new(Vec::new()));
    let worker = worker(&redis, ran.clone(), Some(1.0));
    let control = worker.control();
    let run = tokio::spawn(worker.run());
    let done = tokio::task::spawn_blocking({
        let ran = ran.clone();
        move || wait_until(Duration::from_secs(20), || ran.lock().unwrap().len() == 2)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    control.stop();
    run.await.unwrap().unwrap();

    assert!(done);
    let retried = redis.cli(&["ZRANGE", "retry", "0", "-1"]);
    assert!(
        retried.contains(&slow) && retried.contains("Rustq::TimeoutError"),
        "{retried}"
    );
    assert!(
        !retried.contains(&quick),
        "the quick job timed out: {retried}"
    );
    assert_eq!(
        redis.cli(&["LRANGE", "rustq:test:outcomes", "0", "-1"]),
        quick
    );
}

/// Panics in `perform` itself, before any future exists.
struct PanicsAtCall;

impl Handler for PanicsAtCall {
    fn perform(&self, _ctx: JobContext) -> BoxFuture<JobResult> {
        panic!("no future for you")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_before_its_future_exists_fails_only_its_job() {
    // One slot: were the panic to escape, the slot would stay taken and the second job would
    // never run; the first would stay in the in-progress list.
    let redis = RedisServer::start();
    let client = Client::connect(&RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let first = push(&client, "Broken", json!([])).await;
    let second = push(&client, "Broken", json!([])).await;
    let mut registry = Registry::new();
    registry.fallback(PanicsAtCall);
    let mut options = one_slot(&redis);
    options.prefetch = 0;
    let worker = Worker::new(options, registry);
    let control = worker.control();
    let run = tokio::spawn(worker.run());
    let mut retried = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if redis.cli(&["ZCARD", "retry"]) == "2"
            && redis.cli(&["KEYS", "rustq:inprogress:*"]).trim().is_empty()
        {
            retried = true;
            break;
        }
    }
    control.stop();
    run.await.unwrap().unwrap();
    let retry = redis.cli(&["ZRANGE", "retry", "0", "-1"]);
    assert!(retried, "{retry}");
    assert!(
        retry.contains(&first) && retry.contains(&second) && retry.contains("no future for you"),
        "{retry}"
    );
}

/// Interrupts each job's first run (as an iterable job stopping to resume later), records runs.
struct InterruptsOnce {
    seen: Mutex<std::collections::HashSet<String>>,
    runs: Arc<Mutex<Vec<String>>>,
}

impl Handler for InterruptsOnce {
    fn perform(&self, ctx: JobContext) -> BoxFuture<JobResult> {
        let name = ctx.args()[0].as_str().unwrap_or_default().to_string();
        self.runs.lock().unwrap().push(name.clone());
        let first = self.seen.lock().unwrap().insert(name.clone());
        Box::pin(async move {
            if first && name == "iterable" {
                Err(rustq_engine::Failure::interrupted(
                    "Sidekiq::Job::Interrupted",
                    "interrupted",
                ))
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_job_goes_to_the_back_of_its_queue_without_a_failure() {
    let redis = RedisServer::start();
    let client = Client::connect(&RedisConfig::new(redis.url()))
        .await
        .unwrap();
    for name in ["iterable", "a", "b"] {
        push(&client, "Step", json!([name])).await;
    }
    let runs = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    registry.fallback(InterruptsOnce {
        seen: Mutex::new(Default::default()),
        runs: runs.clone(),
    });
    let mut options = one_slot(&redis);
    options.prefetch = 0;
    options.fetch_batch = 1;
    let worker = Worker::new(options, registry);
    let control = worker.control();
    let run = tokio::spawn(worker.run());
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if runs.lock().unwrap().len() >= 4 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    control.stop();
    run.await.unwrap().unwrap();
    // Sidekiq pushes an interrupted job again (to the back): the others run before its next run.
    assert_eq!(
        *runs.lock().unwrap(),
        vec!["iterable", "a", "b", "iterable"]
    );
    assert_eq!(redis.cli(&["ZCARD", "retry"]), "0");
    assert_eq!(redis.cli(&["LLEN", "queue:default"]), "0");
}
