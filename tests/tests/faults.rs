//! Fault injection: every case counts jobs with a ledger (each run records its jid) and compares
//! sets — lost must be 0; duplicates are reported (at-least-once allows them after a crash).

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use rustq_core::{Client, Fields, RedisConfig};
use rustq_interop::{config_file, ledger, report, tally, wait_until, RedisServer, TestWorker};
use serde_json::{json, Value};

const WORKER: &str = env!("CARGO_BIN_EXE_rustq-test-worker");
const FAST: &str = "heartbeat_interval: 1\npoll_interval_average: 1\n";

fn start(redis: &RedisServer, extra: &[&str]) -> TestWorker {
    let config = config_file(redis, FAST);
    let mut args = vec!["-C", config.as_str()];
    if !extra.contains(&"-t") {
        args.extend(["-t", "2"]);
    }
    args.extend_from_slice(extra);
    TestWorker::start(WORKER, redis, &args)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Pushes `n` jobs of `class` with `args` each, in bulk; returns their jids.
fn push_many(redis: &RedisServer, class: &str, args: Value, n: usize) -> HashSet<String> {
    push_each(redis, class, vec![args; n])
}

/// Pushes `n` jobs of `class`, job i with the single argument `first + i`; returns their jids.
fn push_indexed(redis: &RedisServer, class: &str, first: usize, n: usize) -> HashSet<String> {
    push_each(
        redis,
        class,
        (first..first + n).map(|i| json!([i])).collect(),
    )
}

/// Pushes one job of `class` per element of `args` (each job's arguments), in bulk slices of
/// 50,000; returns their jids.
fn push_each(redis: &RedisServer, class: &str, args: Vec<Value>) -> HashSet<String> {
    runtime().block_on(async {
        let client = Client::connect(&RedisConfig::new(redis.url()))
            .await
            .unwrap();
        let mut jids = HashSet::new();
        for chunk in args.chunks(50_000) {
            let item = json!({"class": class, "args": chunk});
            let pushed = client
                .push_bulk(item.as_object().unwrap().clone())
                .await
                .unwrap();
            jids.extend(pushed);
        }
        jids
    })
}

fn ledger_jids(redis: &RedisServer) -> HashSet<String> {
    ledger(redis)
        .iter()
        .filter_map(|e| e["jid"].as_str().map(str::to_string))
        .collect()
}

fn inprogress_total(redis: &RedisServer) -> usize {
    redis
        .cli(&["KEYS", "rustq:inprogress:*"])
        .lines()
        .filter(|k| !k.is_empty())
        .map(|k| redis.cli(&["LLEN", k]).parse::<usize>().unwrap_or(0))
        .sum()
}

#[test]
fn sigkill_mid_run_then_a_new_worker_finishes_everything() {
    let redis = RedisServer::start();
    let jids = push_many(&redis, "SlowJob", json!([1]), 10_000);
    let mut first = start(&redis, &["-c", "25"]);
    assert!(
        wait_until(Duration::from_secs(60), || ledger(&redis).len() >= 2_000),
        "{}",
        first.log_text()
    );
    first.signal("KILL");
    first
        .wait(Duration::from_secs(5))
        .expect("killed worker exits");
    let in_flight = inprogress_total(&redis);
    let second = start(&redis, &["-c", "25"]);
    let done = wait_until(Duration::from_secs(120), || {
        ledger_jids(&redis).is_superset(&jids)
    });
    let t = tally(&jids, &ledger(&redis));
    report(
        "sigkill-rust-worker",
        t,
        &format!("{in_flight} in flight at the kill"),
    );
    assert!(done && t.lost == 0, "{t:?}\n{}", second.log_text());
    assert!(
        t.duplicated <= in_flight,
        "{t:?}: more duplicates than jobs in flight"
    );
}

#[test]
fn redis_restart_mid_run_loses_no_acknowledged_push_and_no_job() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let jids = push_many(&redis, "SlowJob", json!([1]), 3_000);
    let worker = start(&redis, &["-c", "10"]);
    assert!(
        wait_until(Duration::from_secs(60), || ledger(&redis).len() >= 500),
        "{}",
        worker.log_text()
    );

    // A client keeps pushing while Redis goes away; every push it was told succeeded must run.
    let url = redis.url();
    let pusher = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut config = RedisConfig::new(url);
            config.connect_timeout = Duration::from_millis(200);
            config.response_timeout = Some(Duration::from_millis(500));
            let client = Client::connect(&config).await.unwrap();
            let (mut acked, mut refused) = (HashSet::new(), 0);
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                let item: Fields = json!({"class": "LedgerJob", "args": ["during restart"]})
                    .as_object()
                    .unwrap()
                    .clone();
                match client.push(item).await {
                    Ok(jid) => {
                        acked.insert(jid);
                    }
                    Err(e) => {
                        assert!(e.is_connection(), "unexpected error: {e}");
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, refused)
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    redis.kill();
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    let (acked, refused) = pusher.join().unwrap();
    assert!(!acked.is_empty());
    let mut all = jids.clone();
    all.extend(acked.iter().cloned());
    let done = wait_until(Duration::from_secs(90), || {
        ledger_jids(&redis).is_superset(&all)
    });
    let t = tally(&all, &ledger(&redis));
    report(
        "redis-restart",
        t,
        &format!(
            "{} pushes acknowledged during the restart, {refused} refused with a connection error",
            acked.len()
        ),
    );
    assert!(done && t.lost == 0, "{t:?}\n{}", worker.log_text());
    assert!(worker.log_text().contains("rustq-worker started"));
}

#[test]
fn a_job_whose_fetch_reply_was_lost_still_runs() {
    let redis = RedisServer::start();
    let worker = start(&redis, &["-c", "5"]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            worker.log_text().contains("rustq-worker started")
        }),
        "{}",
        worker.log_text()
    );
    let identity = redis.cli(&["HKEYS", "rustq:processes"]);
    let identity = identity.trim();
    assert!(
        !identity.is_empty() && !identity.contains('\n'),
        "{identity}"
    );
    // As if Redis had moved a job into the worker's list and the reply had been lost with the
    // connection: the job is in the list, the worker never heard of it, and its fetch fails.
    let jid = "0123456789abcdef01234567";
    redis.cli(&[
        "LPUSH",
        &format!("rustq:inprogress:{identity}:default"),
        &format!(r#"{{"class":"LedgerJob","args":["orphan"],"jid":"{jid}","queue":"default"}}"#),
    ]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    let ran = wait_until(Duration::from_secs(30), || {
        ledger_jids(&redis).contains(jid)
    });
    let t = tally(&HashSet::from([jid.to_string()]), &ledger(&redis));
    report(
        "lost-fetch-reply",
        t,
        "a job in the worker's in-progress list that no fetch reported; connections dropped",
    );
    assert!(ran && t.lost == 0, "{t:?}\n{}", worker.log_text());
    assert!(worker.log_text().contains("lost fetch reply"));
}

#[test]
fn redis_unreachable_at_start_is_waited_out_without_spinning() {
    let redis = RedisServer::start();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{port}/0");
    // The client fails fast and clearly.
    let started = Instant::now();
    let err = runtime().block_on(async {
        let mut config = RedisConfig::new(url.clone());
        config.connect_timeout = Duration::from_millis(500);
        Client::connect(&config)
            .await
            .err()
            .expect("nothing listens there")
    });
    assert!(
        err.is_connection() && err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    let client_ms = started.elapsed().as_millis();

    let log = redis.dir().join("unreachable.log");
    let mut worker = rustq_testing::ChildGuard::spawn(
        Command::new(WORKER)
            .args(["-t", "1"])
            .env("REDIS_URL", &url)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap()),
    );
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "the worker exited while Redis was away"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let attempts = text.matches("Redis is unreachable").count();
    let cpu_ticks = cpu_ticks(worker.pid());
    assert!(
        (3..=40).contains(&attempts),
        "{attempts} connection attempts in 30 s:\n{text}"
    );

    // Redis appears on that port: the worker connects and works.
    let late = RedisServer::start_on(port);
    late.cli(&["LPUSH", "queue:default", r#"{"class":"LedgerJob","args":["late"],"jid":"abcabcabcabcabcabcabcabc","queue":"default"}"#]);
    let ran = wait_until(Duration::from_secs(20), || {
        late.cli(&["LLEN", "ledger"]) == "1"
    });
    report(
        "redis-unreachable-at-start",
        rustq_interop::Tally { pushed: 1, ran: ran as usize, lost: 1 - ran as usize, duplicated: 0 },
        &format!("{attempts} connection attempts in 30 s, {cpu_ticks} CPU ticks used; client raised after {client_ms} ms"),
    );
    assert!(ran, "{}", std::fs::read_to_string(&log).unwrap());
    drop(redis);
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

#[test]
fn graceful_stop_with_long_jobs_requeues_them_for_the_next_worker() {
    let redis = RedisServer::start();
    let jids = push_many(&redis, "SlowJob", json!([3000]), 4);
    let mut first = start(&redis, &["-c", "10", "-t", "1"]);
    assert!(
        wait_until(Duration::from_secs(10), || inprogress_total(&redis) == 4),
        "{}",
        first.log_text()
    );
    first.signal("TERM");
    let status = first
        .wait(Duration::from_secs(10))
        .expect("exits after its 1 s timeout");
    assert_eq!(status.code(), Some(0), "{}", first.log_text());
    assert_eq!(redis.cli(&["LLEN", "queue:default"]), "4");
    let second = start(&redis, &["-c", "10"]);
    let done = wait_until(Duration::from_secs(30), || {
        ledger_jids(&redis).is_superset(&jids)
    });
    let t = tally(&jids, &ledger(&redis));
    report(
        "graceful-stop-long-jobs",
        t,
        "TERM with 4 jobs of 3 s and a 1 s timeout; exit 0",
    );
    assert!(
        done && t.lost == 0 && t.duplicated == 0,
        "{t:?}\n{}",
        second.log_text()
    );
}

#[test]
fn a_job_that_kills_its_process_is_buried_after_bounded_retries() {
    let redis = RedisServer::start();
    let killer = push_many(&redis, "AbortJob", json!([]), 1);
    let killer_jid = killer.iter().next().unwrap().clone();
    let good = push_many(&redis, "LedgerJob", json!(["innocent"]), 50);
    let mut deaths = 0;
    for _ in 0..8 {
        let mut worker = start(&redis, &["-c", "1"]);
        let exited = worker.wait(Duration::from_secs(8));
        match exited {
            Some(status) if !status.success() => deaths += 1,
            _ => {
                drop(worker);
                break;
            }
        }
    }
    let buried = wait_until(Duration::from_secs(20), || {
        redis.cli(&["ZCARD", "dead"]) == "1"
    });
    let dead = redis.cli(&["ZRANGE", "dead", "0", "-1"]);
    let final_worker = start(&redis, &["-c", "5"]);
    let done = wait_until(Duration::from_secs(30), || {
        ledger_jids(&redis).is_superset(&good)
    });
    let t = tally(&good, &ledger(&redis));
    report(
        "self-killing-job",
        t,
        &format!("the job killed {deaths} worker processes, then went to the dead set"),
    );
    assert!(buried, "dead set: {dead}\n{}", final_worker.log_text());
    assert!(
        dead.contains(&killer_jid)
            && dead.contains("Rustq::ProcessDied")
            && dead.contains("died 4 times"),
        "{dead}"
    );
    assert_eq!(
        deaths, 4,
        "the job killed {deaths} processes; it should be buried on the 4th death"
    );
    assert!(done && t.lost == 0, "{t:?}");
}

#[test]
fn several_workers_share_the_queues_and_run_every_job_once() {
    for workers in [2, 4] {
        let redis = RedisServer::start();
        let jids = push_many(&redis, "LedgerJob", json!(["shared"]), 10_000);
        let pool: Vec<TestWorker> = (0..workers).map(|_| start(&redis, &["-c", "10"])).collect();
        let done = wait_until(Duration::from_secs(120), || {
            ledger(&redis).len() >= jids.len()
        });
        std::thread::sleep(Duration::from_millis(500));
        let t = tally(&jids, &ledger(&redis));
        report(
            &format!("{workers}-workers"),
            t,
            "no faults: no job may run twice",
        );
        assert!(
            done && t.lost == 0 && t.duplicated == 0,
            "{t:?}\n{}",
            pool[0].log_text()
        );
    }
}

#[test]
fn soak_a_million_jobs_without_memory_or_descriptor_growth() {
    let redis = RedisServer::start();
    let total = 1_000_000;
    push_many(&redis, "NoopJob", json!([1]), total);
    let worker = start(&redis, &["-c", "50", "--noop", "NoopJob", "-l", "warn"]);
    let processed = || {
        redis
            .cli(&["LLEN", "queue:default"])
            .parse::<usize>()
            .map(|left| total - left)
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(300), || processed() >= 100_000),
        "{}",
        worker.log_text()
    );
    let (rss_early, fds_early) = (rss_kb(worker.pid()), fd_count(worker.pid()));
    assert!(
        wait_until(Duration::from_secs(600), || processed() >= total),
        "{}",
        worker.log_text()
    );
    assert!(wait_until(Duration::from_secs(30), || inprogress_total(
        &redis
    ) == 0));
    let (rss_late, fds_late) = (rss_kb(worker.pid()), fd_count(worker.pid()));
    let growth = (rss_late as f64 - rss_early as f64) / rss_early as f64 * 100.0;
    report(
        "soak-1m",
        rustq_interop::Tally { pushed: total, ran: total, lost: 0, duplicated: 0 },
        &format!("RSS {rss_early} KB at 100k → {rss_late} KB at 1M ({growth:+.1} %), fds {fds_early} → {fds_late}"),
    );
    assert!(growth <= 10.0, "RSS grew {growth:.1} %");
    // A leak would grow with the 900,000 jobs in between; a connection re-opened meanwhile is not one.
    assert!(
        fds_late <= fds_early + 2,
        "file descriptors grew: {fds_early} → {fds_late}"
    );
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Every entry of the Redis list `key`, in order.
fn list(redis: &RedisServer, key: &str) -> Vec<String> {
    redis
        .cli(&["LRANGE", key, "0", "-1"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Each value of `entries` (read by `id`) once; panics naming a value seen twice.
fn once_each(entries: &[String], id: impl Fn(&str) -> String) -> HashSet<String> {
    let mut seen = HashSet::new();
    for entry in entries {
        let id = id(entry);
        assert!(seen.insert(id.clone()), "{id} was written twice");
    }
    seen
}

#[test]
fn check_point_deferrals_and_outcome_writes_are_atomic_under_sigkill() {
    // The test worker's check point defers every DeferJob into the list `deferred` (it never
    // runs) and pushes each CountedJob's jid to `outcomes` with its acknowledgement. Workers
    // are killed mid-run three times; whatever instant a kill lands on, each deferred job must
    // be in `deferred` once and each counted job's jid in `outcomes` once.
    let redis = RedisServer::start();
    // Interleaved, so every round has CountedJobs running (2 ms each) when the kill lands.
    // CountedJob number i runs only once `allowance` is above i: the worker can never finish
    // a round's work before this thread sees the round's target and kills it (were this thread
    // slow, the worker would wait at the allowance with jobs in flight, not drain the queue).
    let mut deferred = HashSet::new();
    let mut counted = HashSet::new();
    for batch in 0..6 {
        deferred.extend(push_many(&redis, "DeferJob", json!([]), 500));
        counted.extend(push_indexed(&redis, "CountedJob", batch * 500, 500));
    }
    let llen = |key: &str| redis.cli(&["LLEN", key]).parse::<usize>().unwrap_or(0);
    let mut in_flight = Vec::new();
    for round in 1..=3 {
        redis.cli(&["SET", "allowance", &(round * 750 + 250).to_string()]);
        let mut worker = start(&redis, &["-c", "10"]);
        let target = round * 1_500;
        let moved = wait_until(Duration::from_secs(60), || {
            llen("deferred") + llen("outcomes") >= target
        });
        assert!(moved, "round {round}: {}", worker.log_text());
        worker.signal("KILL");
        worker
            .wait(Duration::from_secs(5))
            .expect("killed worker exits");
        in_flight.push(inprogress_total(&redis));
    }
    assert!(
        in_flight.iter().all(|n| *n > 0),
        "every kill must land mid-run: {in_flight:?} jobs in flight"
    );
    redis.cli(&["SET", "allowance", "1000000"]);
    let last = start(&redis, &["-c", "10"]);
    let done = wait_until(Duration::from_secs(120), || {
        list(&redis, "deferred").len() >= deferred.len()
            && list(&redis, "outcomes").len() >= counted.len()
            && inprogress_total(&redis) == 0
    });
    assert!(done, "{}", last.log_text());
    // Let any write that might wrongly come twice arrive before counting.
    std::thread::sleep(Duration::from_secs(2));

    let parked = once_each(&list(&redis, "deferred"), |raw| {
        serde_json::from_str::<Value>(raw).unwrap()["jid"]
            .as_str()
            .unwrap()
            .to_string()
    });
    assert_eq!(parked, deferred, "every DeferJob deferred, none lost");
    let written = once_each(&list(&redis, "outcomes"), str::to_string);
    assert_eq!(
        written, counted,
        "every CountedJob's outcome written, none lost"
    );
    let ran = ledger(&redis);
    assert!(
        ran.iter().all(|e| e["class"] != "DeferJob"),
        "a deferred job ran"
    );
    let t = tally(&counted, &ran);
    report(
        "check-point-sigkill",
        t,
        &format!(
            "3 kills with {in_flight:?} in flight; 3,000 deferred and 3,000 outcome writes, each once"
        ),
    );
    assert_eq!(t.lost, 0, "{t:?}");
    assert_eq!(redis.cli(&["LLEN", "queue:default"]), "0");
}

#[test]
fn workers_sharing_a_hostname_in_separate_pid_namespaces_never_recover_each_other() {
    // Containers of one pod (or hostNetwork pods on a node) share a hostname, not a PID
    // namespace: a missing pid in this namespace's /proc says nothing about a process in another.
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare --pid --fork --mount-proc` is not allowed here (needs root)");
        return;
    }
    let redis = RedisServer::start();
    let jids = push_many(&redis, "SlowJob", json!([20]), 1_000);
    let config = config_file(&redis, FAST);
    // In one namespace the worker runs as a child of a shell that first used up ~100 pids, so
    // its pid (~102) does not exist in the other namespace's /proc; in the other it is pid 2.
    let in_namespace = |burn: usize| {
        let script =
            format!(r#"i=0; while [ $i -lt {burn} ]; do /bin/true; i=$((i+1)); done; "$@"; true"#);
        TestWorker::start(
            "unshare",
            &redis,
            &[
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "sh",
                "-c",
                &script,
                "sh",
                WORKER,
                "-C",
                &config,
                "-c",
                "5",
            ],
        )
    };
    let first = in_namespace(100);
    let second = in_namespace(0);
    let done = wait_until(Duration::from_secs(120), || {
        ledger_jids(&redis).is_superset(&jids)
    });
    let t = tally(&jids, &ledger(&redis));
    report(
        "shared-hostname-pid-namespaces",
        t,
        "2 workers, one hostname, separate PID namespaces, recovery every 1 s",
    );
    assert!(
        done && t.lost == 0,
        "{t:?}\n{}\n{}",
        first.log_text(),
        second.log_text()
    );
    assert_eq!(
        t.duplicated,
        0,
        "a live worker was taken for dead:\n{}\n{}",
        first.log_text(),
        second.log_text()
    );
}

#[test]
fn a_wrong_typed_retry_set_stops_no_other_job() {
    // Whoever can write to Redis can break a key Sidekiq owns. The outcomes that cannot be
    // written stay where they are, logged; every other job is acknowledged as usual.
    let redis = RedisServer::start();
    redis.cli(&["SET", "retry", "not a sorted set"]);
    let failing = push_many(&redis, "FailJob", json!([]), 5);
    let jids = push_many(&redis, "LedgerJob", json!([]), 1_000);
    let worker = start(&redis, &["-c", "10"]);
    let settled = wait_until(Duration::from_secs(30), || {
        ledger_jids(&redis).is_superset(&jids) && inprogress_total(&redis) <= failing.len()
    });
    let log = worker.log_text();
    assert!(
        settled,
        "{} jobs still in progress\n{log}",
        inprogress_total(&redis)
    );
    assert!(
        log.contains("Redis refused a write") && log.contains("WRONGTYPE"),
        "{log}"
    );
    // The failing jobs were not lost: still held in the in-progress list, where the orphan
    // check gives them back to their queue.
    let held: usize = redis
        .cli(&["KEYS", "rustq:inprogress:*"])
        .lines()
        .filter(|k| !k.is_empty())
        .map(|k| {
            redis
                .cli(&["LRANGE", k, "0", "-1"])
                .matches("FailJob")
                .count()
        })
        .sum();
    assert_eq!(held, failing.len());
}

#[test]
fn acknowledgements_refused_for_good_pause_fetching_and_lose_nothing() {
    // Redis takes fetches but refuses every acknowledgement (here an ACL denies LREM): finished
    // jobs wait in memory to be written. Fetching pauses once ACK_BACKLOG (1,024) of them wait,
    // instead of draining the whole queue into memory; when Redis takes writes again every job
    // is acknowledged, each having run once.
    let redis = RedisServer::start();
    let jids = push_many(&redis, "LedgerJob", json!([]), 5_000);
    assert_eq!(redis.cli(&["ACL", "SETUSER", "default", "-lrem"]), "OK");
    let worker = start(&redis, &["-c", "10"]);
    let ledger_len = || redis.cli(&["LLEN", "ledger"]).parse::<usize>().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(30), || ledger_len() >= 1_024),
        "{}",
        worker.log_text()
    );
    // Settled: nothing more runs over two seconds.
    let mut last = ledger_len();
    assert!(
        wait_until(Duration::from_secs(30), || {
            std::thread::sleep(Duration::from_secs(2));
            let now = ledger_len();
            std::mem::replace(&mut last, now) == now
        }),
        "jobs kept running with no acknowledgement written"
    );
    // concurrency 10 + prefetch 100 + one sweep 100 + the backlog 1,024 (+ a waiter's job)
    let held = inprogress_total(&redis);
    assert!(held <= 1_240, "{held} jobs fetched with none written back");
    let queued: usize = redis.cli(&["LLEN", "queue:default"]).parse().unwrap();
    assert_eq!(queued + held, 5_000);
    assert!(
        worker.log_text().contains("cannot write finished jobs"),
        "{}",
        worker.log_text()
    );

    assert_eq!(redis.cli(&["ACL", "SETUSER", "default", "+lrem"]), "OK");
    assert!(
        wait_until(Duration::from_secs(60), || {
            ledger_len() >= jids.len() && inprogress_total(&redis) == 0
        }),
        "{} run, {} in progress",
        ledger_len(),
        inprogress_total(&redis)
    );
    let ledger = ledger(&redis);
    let t = tally(&jids, &ledger);
    report("acks refused, then accepted", t, "");
    assert_eq!(ledger.len(), jids.len(), "a job ran twice");
    assert_eq!(ledger_jids(&redis), jids);
}
