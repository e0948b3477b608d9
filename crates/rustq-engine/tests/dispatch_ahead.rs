//! How fetched jobs are started, against a real Redis: in fetch order (what recovery relies on
//! to tell which jobs were running), and, with `WorkerOptions::dispatch_ahead`, still at most
//! `concurrency` at once for handlers that do not run jobs on threads of their own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustq_core::{Client, RedisConfig};
use rustq_engine::{JobContext, QueueWeight, Registry, Worker, WorkerOptions};
use rustq_testing::{wait_until, RedisServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_handlers_keep_to_the_concurrency_when_jobs_are_dispatched_ahead() {
    const JOBS: usize = 40;
    let redis = redis_with_jobs("ShortJob", JOBS).await;

    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    {
        let (running, most, done) = (running.clone(), most.clone(), done.clone());
        registry.handle("ShortJob", move |_ctx: JobContext| {
            let (running, most, done) = (running.clone(), most.clone(), done.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Short enough that jobs are fetched (and dispatched) ahead of free slots.
                tokio::time::sleep(Duration::from_millis(2)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
    }
    let finished = run_until(&redis, 3, true, registry, {
        let done = done.clone();
        move || done.load(Ordering::SeqCst) == JOBS
    })
    .await;

    assert!(finished, "ran {} of {JOBS}", done.load(Ordering::SeqCst));
    assert_eq!(most.load(Ordering::SeqCst), 3, "most jobs running at once");
    assert_eq!(redis.cli(&["LLEN", "queue:default"]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_start_in_the_order_they_were_fetched() {
    const JOBS: usize = 30;
    for dispatch_ahead in [false, true] {
        let redis = redis_with_jobs("OrderedJob", JOBS).await;

        let order = Arc::new(Mutex::new(Vec::new()));
        let mut registry = Registry::new();
        {
            let order = order.clone();
            registry.handle("OrderedJob", move |ctx: JobContext| {
                order.lock().unwrap().push(ctx.args()[0].as_u64().unwrap());
                async { Ok(()) }
            });
        }
        let finished = run_until(&redis, 1, dispatch_ahead, registry, {
            let order = order.clone();
            move || order.lock().unwrap().len() == JOBS
        })
        .await;

        assert!(finished, "dispatch_ahead {dispatch_ahead}");
        let expected: Vec<u64> = (0..JOBS as u64).collect();
        assert_eq!(
            *order.lock().unwrap(),
            expected,
            "dispatch_ahead {dispatch_ahead}"
        );
    }
}

/// A private Redis holding `count` jobs of `class`, with args `[0]`, `[1]`, … in push order.
async fn redis_with_jobs(class: &str, count: usize) -> RedisServer {
    let redis = RedisServer::start();
    let client = Client::connect(&RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let args: Vec<_> = (0..count).map(|i| json!([i])).collect();
    let item = json!({"class": class, "args": args});
    client
        .push_bulk(item.as_object().unwrap().clone())
        .await
        .unwrap();
    redis
}

/// Runs a worker on the default queue until `done` holds (30 s at most), then stops it;
/// whether `done` held.
async fn run_until(
    redis: &RedisServer,
    concurrency: usize,
    dispatch_ahead: bool,
    registry: Registry,
    done: impl Fn() -> bool + Send + 'static,
) -> bool {
    let mut options = WorkerOptions::default();
    options.redis = RedisConfig::new(redis.url());
    options.concurrency = concurrency;
    options.queues = vec![QueueWeight {
        name: "default".into(),
        weight: 0,
    }];
    options.dispatch_ahead = dispatch_ahead;
    let worker = Worker::new(options, registry);
    let control = worker.control();
    let run = tokio::spawn(worker.run());
    let finished = tokio::task::spawn_blocking(move || wait_until(Duration::from_secs(30), done))
        .await
        .unwrap();
    control.stop();
    run.await.unwrap().unwrap();
    finished
}
