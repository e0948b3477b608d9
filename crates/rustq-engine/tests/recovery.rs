//! Recovery of a dead process's jobs against a real Redis.

use rustq_core::{RedisConfig, WireVersion};
use rustq_engine::keys;
use rustq_engine::recovery::Recovery;
use rustq_testing::RedisServer;

#[tokio::test]
async fn only_jobs_that_may_have_been_running_count_as_deaths() {
    let redis = RedisServer::start();
    // A dead process on another host, `-c 1`, holding its running job (oldest, right end)
    // and three it fetched ahead.
    let dead = "elsewhere:4242:0123456789ab";
    redis.cli(&[
        "HSET",
        keys::PROCESSES,
        dead,
        r#"{"queues":["default"],"concurrency":1}"#,
    ]);
    let list = keys::inprogress(dead, "default");
    for job in ["killer", "ahead-1", "ahead-2", "ahead-3"] {
        redis.cli(&[
            "LPUSH",
            &list,
            &format!(r#"{{"class":"X","args":[],"jid":"{job}","queue":"default"}}"#),
        ]);
    }
    let conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let recovery = Recovery::new(conn, "me:1:000000000000", 0, WireVersion::V7);
    let moved = recovery.recover_dead().await.unwrap();

    assert_eq!(moved, 3, "the jobs fetched ahead go back to the queue");
    let queue = redis.cli(&["LRANGE", "queue:default", "0", "-1"]);
    assert!(
        !queue.contains("killer") && queue.contains("ahead-3"),
        "{queue}"
    );
    let dead_set = redis.cli(&["ZRANGE", "dead", "0", "-1"]);
    assert!(
        dead_set.contains("\"jid\":\"killer\"") && dead_set.contains("Rustq::ProcessDied"),
        "{dead_set}"
    );
    assert!(!dead_set.contains("ahead"), "{dead_set}");
    assert_eq!(redis.cli(&["HGET", keys::RECOVERIES, "ahead-1"]), "");
    assert_eq!(redis.cli(&["HEXISTS", keys::PROCESSES, dead]), "0");
    assert_eq!(redis.cli(&["EXISTS", &list]), "0");
}

#[tokio::test]
async fn a_live_process_is_left_alone() {
    let redis = RedisServer::start();
    let alive = "elsewhere:4243:0123456789ab";
    redis.cli(&["HSET", alive, "info", "{}"]);
    redis.cli(&[
        "HSET",
        keys::PROCESSES,
        alive,
        r#"{"queues":["default"],"concurrency":5}"#,
    ]);
    redis.cli(&[
        "LPUSH",
        &keys::inprogress(alive, "default"),
        r#"{"class":"X","args":[],"jid":"busy"}"#,
    ]);
    let conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let recovery = Recovery::new(conn, "me:1:000000000000", 3, WireVersion::V7);
    assert_eq!(recovery.recover_dead().await.unwrap(), 0);
    assert_eq!(
        redis.cli(&["LLEN", &keys::inprogress(alive, "default")]),
        "1"
    );
}

#[tokio::test]
async fn recovered_jobs_keep_their_order_at_the_front_of_the_queue() {
    let redis = RedisServer::start();
    let dead = "elsewhere:4244:0123456789ab";
    redis.cli(&[
        "HSET",
        keys::PROCESSES,
        dead,
        r#"{"queues":["default"],"concurrency":1}"#,
    ]);
    redis.cli(&["LPUSH", "queue:default", r#"{"jid":"waiting"}"#]);
    let list = keys::inprogress(dead, "default");
    // Fetched in this order: `first` is the oldest (right end) and was the one running.
    for job in ["first", "second", "third"] {
        redis.cli(&["LPUSH", &list, &format!(r#"{{"jid":"{job}"}}"#)]);
    }
    let conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let recovery = Recovery::new(conn, "me:1:000000000000", 3, WireVersion::V7);
    assert_eq!(recovery.recover_dead().await.unwrap(), 3);

    // Workers take from the right: the running job comes first again, then the rest in order.
    let mut fetch_order = Vec::new();
    loop {
        let job = redis.cli(&["RPOP", "queue:default"]);
        if job.is_empty() {
            break;
        }
        fetch_order.push(job);
    }
    assert_eq!(
        fetch_order,
        [
            r#"{"jid":"first"}"#,
            r#"{"jid":"second"}"#,
            r#"{"jid":"third"}"#,
            r#"{"jid":"waiting"}"#
        ]
    );
    assert_eq!(redis.cli(&["HGET", keys::RECOVERIES, "first"]), "1");
    assert_eq!(redis.cli(&["HEXISTS", keys::RECOVERIES, "second"]), "0");
}

#[tokio::test]
async fn due_jobs_a_dead_process_was_pushing_go_back_due_and_uncounted() {
    let redis = RedisServer::start();
    let dead = "elsewhere:4244:0123456789ab";
    redis.cli(&[
        "HSET",
        keys::PROCESSES,
        dead,
        r#"{"queues":["default","mail"],"concurrency":5}"#,
    ]);
    let due = r#"{"class":"X","args":[],"jid":"due-1","queue":"mail"}"#;
    redis.cli(&["LPUSH", &keys::scheduling(dead), due]);
    let conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let recovery = Recovery::new(conn, "me:1:000000000000", 0, WireVersion::V7);
    assert_eq!(recovery.recover_dead().await.unwrap(), 1);

    // Its queue is in its payload, a key the script cannot name beforehand: it goes back to
    // the schedule set, due now, for the next poll to push.
    assert_eq!(redis.cli(&["ZRANGE", "schedule", "0", "-1"]), due);
    let score: f64 = redis
        .cli(&["ZSCORE", "schedule", due])
        .parse()
        .expect("a score");
    assert!(score <= rustq_core::wire::now_secs(), "due now: {score}");
    assert_eq!(redis.cli(&["EXISTS", &keys::scheduling(dead)]), "0");
    assert_eq!(redis.cli(&["HLEN", keys::RECOVERIES]), "0", "not a death");
    assert_eq!(redis.cli(&["HEXISTS", keys::PROCESSES, dead]), "0");
}

#[tokio::test]
async fn an_entry_that_is_not_json_stops_no_other_recovery() {
    let redis = RedisServer::start();
    redis.cli(&[
        "HSET",
        keys::PROCESSES,
        "garbage:1:000000000000",
        "not json {",
    ]);
    let dead = "elsewhere:4246:0123456789ab";
    redis.cli(&[
        "HSET",
        keys::PROCESSES,
        dead,
        r#"{"queues":["default"],"concurrency":1}"#,
    ]);
    redis.cli(&[
        "LPUSH",
        &keys::inprogress(dead, "default"),
        r#"{"class":"X","args":[],"jid":"saved","queue":"default"}"#,
    ]);
    let conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let recovery = Recovery::new(conn, "me:1:000000000000", 3, WireVersion::V7);
    assert_eq!(recovery.recover_dead().await.unwrap(), 1);
    assert!(redis
        .cli(&["LRANGE", "queue:default", "0", "-1"])
        .contains("saved"));
    assert_eq!(
        redis.cli(&["HEXISTS", keys::PROCESSES, "garbage:1:000000000000"]),
        "0",
        "a dead process's unreadable entry goes too"
    );
}
