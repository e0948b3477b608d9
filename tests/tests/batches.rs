//! Batches on a real Redis, run by standalone and Ruby-host workers, one SIGKILLed mid-run: each
//! job counted once, each callback enqueued once and run once (callbacks run by a Rust handler
//! or by the gem's Rustq::Batch::Callback, both recorded in the ledger list `callbacks`).

use std::collections::HashSet;
use std::time::Duration;

use rustq_core::batch::{self, BatchJob, Definition, Stage};
use rustq_core::{generate_jid, Client, RedisConfig};
use rustq_interop::{config_file, ruby_host_worker, wait_until, RedisServer, TestWorker};
use serde_json::{json, Value};

const WORKER: &str = env!("CARGO_BIN_EXE_rustq-test-worker");
const FAST: &str = "heartbeat_interval: 1\npoll_interval_average: 0.2\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn worker(redis: &RedisServer) -> TestWorker {
    let config = config_file(redis, FAST);
    TestWorker::start(WORKER, redis, &["-C", &config, "-c", "10", "-t", "2"])
}

/// Creates batch `bid` with one job per `(class, args, retry)` and the given callbacks, through
/// the Rust client's `push_batch`.
fn create(redis: &RedisServer, bid: &str, jobs: &[(&str, Value, Value)], callbacks: Value) {
    runtime().block_on(async {
        let client = Client::connect(&RedisConfig::new(redis.url()))
            .await
            .unwrap();
        let items = jobs
            .iter()
            .map(|(class, args, retry)| {
                json!({"class": class, "args": args, "retry": retry})
                    .as_object()
                    .unwrap()
                    .clone()
            })
            .collect();
        let definition = Definition {
            bid: bid.into(),
            callbacks,
            ..Definition::default()
        };
        let jids = client
            .push_batch(&definition, Stage::Create, items)
            .await
            .unwrap();
        assert_eq!(jids.len(), jobs.len());
    })
}

fn callbacks(redis: &RedisServer) -> Vec<Value> {
    redis
        .cli(&["LRANGE", "callbacks", "0", "-1"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["args"].clone())
        .collect()
}

fn events(redis: &RedisServer, bid: &str) -> Vec<String> {
    let mut events: Vec<String> = callbacks(redis)
        .iter()
        .filter(|args| args[1] == bid)
        .map(|args| args[0].as_str().unwrap().to_string())
        .collect();
    events.sort();
    events
}

/// Retries are due at once (Sidekiq's backoff would make the test wait 20 s and more).
fn retries_due_now(redis: &RedisServer) {
    let members = redis.cli(&["ZRANGE", "retry", "0", "-1"]);
    for member in members.lines().filter(|l| !l.is_empty()) {
        redis.cli(&["ZADD", "retry", "XX", "0", member]);
    }
}

#[test]
fn callbacks_fire_once_and_counts_are_exact_while_workers_are_sigkilled() {
    const JOBS: usize = 10_000;
    let redis = RedisServer::start();
    // "good": 1 % fail once and succeed on retry. "doomed": 0.1 % die (`retry: 0`: straight to
    // the dead set), and one more fails with `retry: false` (discarded: a failure, not a death).
    let good: Vec<(&str, Value, Value)> = (0..JOBS)
        .map(|i| {
            if i % 100 == 0 {
                ("FailOnceJob", json!([i]), json!(true))
            } else {
                ("SlowJob", json!([5]), json!(true))
            }
        })
        .collect();
    let doomed: Vec<(&str, Value, Value)> = (0..JOBS)
        .map(|i| {
            if i % 1000 == 0 {
                ("FailJob", json!([i]), json!(0))
            } else if i == 1 {
                ("FailJob", json!([i]), json!(false))
            } else {
                ("SlowJob", json!([5]), json!(true))
            }
        })
        .collect();
    let all = json!({"complete": [["Report", {"n": 1}]], "success": [["Report#done", {}]], "death": [["Report#dead", {}]]});
    create(&redis, "good", &good, all.clone());
    create(&redis, "doomed", &doomed, all);
    let status = runtime().block_on(async {
        let client = Client::connect(&RedisConfig::new(redis.url()))
            .await
            .unwrap();
        batch::status(&mut client.connection(), "good")
            .await
            .unwrap()
    });
    assert_eq!(
        (status.total, status.pending, status.failures),
        (JOBS as u64, JOBS as u64, 0)
    );

    // 2 standalone workers, one of them SIGKILLed three times, and a Ruby-host worker.
    let steady = worker(&redis);
    let config = config_file(&redis, FAST);
    let ruby = ruby_host_worker(
        &redis,
        "batch_app.rb",
        &["-C", &config, "-c", "10", "-t", "2"],
    );
    let mut victim = worker(&redis);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        victim.signal("KILL");
        assert!(victim.wait(Duration::from_secs(5)).is_some());
        victim = worker(&redis);
    }
    let done = wait_until(Duration::from_secs(120), || {
        retries_due_now(&redis);
        events(&redis, "good") == ["complete", "success"]
            && events(&redis, "doomed") == ["complete", "death"]
    });
    assert!(
        done,
        "callbacks: {:?}\n{}\n--- ruby host ---\n{}",
        callbacks(&redis),
        steady.log_text(),
        ruby.log_text()
    );
    // Nothing more fires later.
    std::thread::sleep(Duration::from_secs(2));
    retries_due_now(&redis);
    assert_eq!(events(&redis, "good"), ["complete", "success"]);
    assert_eq!(
        events(&redis, "doomed"),
        ["complete", "death"],
        "never success"
    );

    let (good, doomed) = runtime().block_on(async {
        let client = Client::connect(&RedisConfig::new(redis.url()))
            .await
            .unwrap();
        let mut conn = client.connection();
        (
            batch::status(&mut conn, "good").await.unwrap(),
            batch::status(&mut conn, "doomed").await.unwrap(),
        )
    });
    assert_eq!(
        (good.total, good.pending, good.failures),
        (JOBS as u64, 0, 0)
    );
    assert_eq!(
        (doomed.total, doomed.pending, doomed.failures),
        (JOBS as u64, 0, 11),
        "ten died, one failed with retry: false"
    );
    assert_eq!(redis.cli(&["SCARD", "rustq:batch:{doomed}:dead"]), "10");
    for key in ["rustq:batch:{doomed}:failed", "rustq:batch:{doomed}:dead"] {
        let ttl: i64 = redis.cli(&["TTL", key]).trim().parse().unwrap();
        assert!(
            ttl > 29 * 24 * 3600,
            "{key} kept 30 days, then gone: TTL {ttl}"
        );
    }
    let ruby_ran: u64 = redis.cli(&["GET", "ruby_ran"]).trim().parse().unwrap_or(0);
    assert!(ruby_ran > 0, "the Ruby host ran jobs of the batches too");
    for field in ["complete_at", "success_at"] {
        assert!(good.fields.contains_key(field), "{field}");
    }
    assert!(!doomed.fields.contains_key("success_at"));
    assert!(doomed.fields.contains_key("death_at"));
    let targets: HashSet<String> = callbacks(&redis)
        .iter()
        .map(|args| {
            format!(
                "{}:{}",
                args[1].as_str().unwrap(),
                args[2].as_str().unwrap()
            )
        })
        .collect();
    assert!(targets.contains("good:Report#done") && targets.contains("doomed:Report#dead"));
}

#[test]
fn a_complete_batch_takes_no_more_jobs() {
    let redis = RedisServer::start();
    create(
        &redis,
        "small",
        &[("SlowJob", json!([1]), json!(true))],
        json!({}),
    );
    let _worker = worker(&redis);
    assert!(wait_until(Duration::from_secs(20), || !redis
        .cli(&["HGET", "rustq:batch:{small}", "complete_at"])
        .is_empty()));
    let refused = runtime().block_on(async {
        let client = Client::connect(&RedisConfig::new(redis.url()))
            .await
            .unwrap();
        let job = BatchJob {
            jid: generate_jid(),
            queue: "default".into(),
            at: None,
            payload: json!({"class": "SlowJob", "args": [1], "bid": "small"}).to_string(),
        };
        let definition = Definition {
            bid: "small".into(),
            ..Definition::default()
        };
        batch::add_jobs(
            &mut client.connection(),
            &definition,
            Stage::Add,
            &[job],
            0.0,
            rustq_core::WireVersion::V7,
        )
        .await
    });
    assert!(
        matches!(refused, Err(batch::BatchError::Immutable(_))),
        "{refused:?}"
    );
    assert_eq!(
        redis.cli(&["SCARD", "rustq:batch:{small}:jids"]),
        "1",
        "nothing written"
    );
}

#[test]
fn a_job_that_kills_its_process_counts_when_it_is_buried_and_its_batch_completes() {
    let redis = RedisServer::start();
    let mut jobs = vec![("AbortJob", json!([]), json!(true))];
    jobs.extend((0..5).map(|i| ("SlowJob", json!([i]), json!(true))));
    create(
        &redis,
        "fatal",
        &jobs,
        json!({"complete": [["Report", {}]], "death": [["Report", {}]]}),
    );
    let config = config_file(&redis, FAST);
    for _ in 0..8 {
        let mut w = TestWorker::start(WORKER, &redis, &["-C", &config, "-c", "1", "-t", "2"]);
        match w.wait(Duration::from_secs(8)) {
            Some(status) if !status.success() => continue,
            _ => break,
        }
    }
    let _final = worker(&redis);
    assert!(
        wait_until(Duration::from_secs(30), || events(&redis, "fatal")
            == ["complete", "death"]),
        "callbacks: {:?}; dead set: {}",
        callbacks(&redis),
        redis.cli(&["ZRANGE", "dead", "0", "-1"])
    );
    assert_eq!(redis.cli(&["SCARD", "rustq:batch:{fatal}:pending"]), "0");
    assert_eq!(redis.cli(&["SCARD", "rustq:batch:{fatal}:dead"]), "1");
}

#[test]
fn a_parent_batch_succeeds_after_its_childs_callbacks_ran() {
    let redis = RedisServer::start();
    let rt = runtime();
    let client = rt
        .block_on(Client::connect(&RedisConfig::new(redis.url())))
        .unwrap();
    let items = |n: usize| -> Vec<rustq_core::Fields> {
        (0..n)
            .map(|i| {
                json!({"class": "SlowJob", "args": [i]})
                    .as_object()
                    .unwrap()
                    .clone()
            })
            .collect()
    };
    let mom = Definition {
        bid: "mom".into(),
        callbacks: json!({"success": [["Report#mom", {}]], "complete": [["Report#mom", {}]]}),
        ..Definition::default()
    };
    let kid = Definition {
        bid: "kid".into(),
        callbacks: json!({"success": [["Report#kid", {}]], "complete": [["Report#kid", {}]]}),
        parent_bid: Some("mom".into()),
        ..Definition::default()
    };
    // As `jobs { }` blocks nest: the parent opened, the child made (and run!) inside it, the
    // parent's own jobs written last.
    rt.block_on(client.push_batch(&mom, Stage::Open, Vec::new()))
        .unwrap();
    rt.block_on(client.push_batch(&kid, Stage::Create, items(5)))
        .unwrap();
    let _worker = worker(&redis);
    assert!(wait_until(Duration::from_secs(20), || events(
        &redis, "kid"
    ) == [
        "complete", "success"
    ]));
    std::thread::sleep(Duration::from_millis(500));
    assert!(events(&redis, "mom").is_empty(), "the parent is still open");
    rt.block_on(client.push_batch(&mom, Stage::Close, items(5)))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || events(&redis, "mom")
            == ["complete", "success"]),
        "callbacks: {:?}",
        callbacks(&redis)
    );
    let order: Vec<String> = callbacks(&redis)
        .iter()
        .map(|args| {
            format!(
                "{}:{}",
                args[1].as_str().unwrap(),
                args[0].as_str().unwrap()
            )
        })
        .collect();
    let last_kid = order.iter().rposition(|e| e.starts_with("kid:")).unwrap();
    let first_mom = order.iter().position(|e| e.starts_with("mom:")).unwrap();
    assert!(
        last_kid < first_mom,
        "the child's callbacks ran first: {order:?}"
    );
    let status = rt
        .block_on(batch::status(&mut client.connection(), "mom"))
        .unwrap();
    assert_eq!(
        (status.total, status.pending, status.failures),
        (7, 0, 0),
        "its 5 jobs and the child's 2 callbacks"
    );
}

#[test]
fn an_empty_batch_and_a_parent_whose_children_finished_before_it_closed_complete() {
    let redis = RedisServer::start();
    let rt = runtime();
    let client = rt
        .block_on(Client::connect(&RedisConfig::new(redis.url())))
        .unwrap();
    let both = |name: &str| json!({"complete": [[format!("Report#{name}"), {}]], "success": [[format!("Report#{name}"), {}]]});
    let definition = |bid: &str, parent: Option<&str>| Definition {
        bid: bid.into(),
        callbacks: both(bid),
        parent_bid: parent.map(str::to_string),
        ..Definition::default()
    };
    let _worker = worker(&redis);
    // A block that pushed nothing: complete and success at once, as Sidekiq Pro does.
    rt.block_on(client.push_batch(&definition("empty", None), Stage::Create, Vec::new()))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || events(&redis, "empty")
            == ["complete", "success"]),
        "callbacks: {:?}",
        callbacks(&redis)
    );
    // A parent held open while its children — one with jobs, run to the end meanwhile, one
    // empty — finish, then closed with no jobs of its own: it completes as it closes.
    let dad = definition("dad", None);
    rt.block_on(client.push_batch(&dad, Stage::Open, Vec::new()))
        .unwrap();
    let job = json!({"class": "SlowJob", "args": [1]})
        .as_object()
        .unwrap()
        .clone();
    rt.block_on(client.push_batch(
        &definition("son", Some("dad")),
        Stage::Create,
        vec![job.clone(), job],
    ))
    .unwrap();
    rt.block_on(client.push_batch(
        &definition("nobody", Some("dad")),
        Stage::Create,
        Vec::new(),
    ))
    .unwrap();
    assert!(wait_until(Duration::from_secs(20), || events(
        &redis, "son"
    ) == [
        "complete", "success"
    ] && events(
        &redis, "nobody"
    ) == [
        "complete", "success"
    ]));
    std::thread::sleep(Duration::from_millis(500));
    assert!(events(&redis, "dad").is_empty(), "the parent is still open");
    assert_eq!(
        redis.cli(&["SMEMBERS", "rustq:batch:{dad}:pending"]),
        "open"
    );
    rt.block_on(client.push_batch(&dad, Stage::Close, Vec::new()))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || events(&redis, "dad")
            == ["complete", "success"]),
        "callbacks: {:?}",
        callbacks(&redis)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(events(&redis, "dad"), ["complete", "success"], "once each");
    let status = rt
        .block_on(batch::status(&mut client.connection(), "dad"))
        .unwrap();
    assert_eq!(
        (status.total, status.pending, status.failures),
        (4, 0, 0),
        "the children's 4 callbacks"
    );
}

#[test]
fn a_batch_older_than_its_keys_leaves_the_list_of_batches() {
    let redis = RedisServer::start();
    let rt = runtime();
    let client = rt
        .block_on(Client::connect(&RedisConfig::new(redis.url())))
        .unwrap();
    let now = rustq_core::wire::now_secs();
    for (bid, at) in [
        ("old", now - batch::EXPIRY_SECS as f64 - 60.0),
        ("new", now),
    ] {
        let definition = Definition {
            bid: bid.into(),
            ..Definition::default()
        };
        rt.block_on(batch::add_jobs(
            &mut client.connection(),
            &definition,
            Stage::Open,
            &[],
            at,
            rustq_core::WireVersion::V7,
        ))
        .unwrap();
    }
    assert_eq!(
        redis.cli(&["ZRANGE", batch::BATCHES, "0", "-1"]),
        "new",
        "the old one's keys have expired by now"
    );
}
