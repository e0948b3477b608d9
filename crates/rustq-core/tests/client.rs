//! rustq-core's client and read API against a private, real Redis.

use rustq_core::{Client, ClientOptions, Clock, Fields, Job, JobError, RedisConfig, WireVersion};
use rustq_testing::RedisServer;
use serde_json::{json, Value};

fn fields(v: Value) -> Fields {
    v.as_object().expect("an object").clone()
}

async fn client(redis: &RedisServer) -> Client {
    Client::connect(&RedisConfig::new(redis.url()))
        .await
        .expect("connect")
}

#[tokio::test]
async fn push_writes_sidekiqs_commands_and_payload() {
    let redis = RedisServer::start();
    let options = ClientOptions {
        clock: Clock::fixed(1_700_000_000.25),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&RedisConfig::new(redis.url()), options)
        .await
        .unwrap();
    let jid = client
        .push(fields(
            json!({"class": "HardJob", "args": [1, "two", {"k": [null, 2.5]}], "bid": "B1"}),
        ))
        .await
        .unwrap();
    assert_eq!(jid.len(), 24);
    assert_eq!(redis.cli(&["SMEMBERS", "queues"]), "default");
    let raw = redis.cli(&["LRANGE", "queue:default", "0", "-1"]);
    assert_eq!(
        raw,
        format!(
            r#"{{"retry":true,"queue":"default","class":"HardJob","args":[1,"two",{{"k":[null,2.5]}}],"bid":"B1","jid":"{jid}","created_at":1700000000.25,"enqueued_at":1700000000.25}}"#
        )
    );
    assert_eq!(client.queue("default").size().await.unwrap(), 1);
    let job = client
        .queue("default")
        .find_job(&jid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.get("bid"), Some(&json!("B1")));
}

#[tokio::test]
async fn scheduled_push_goes_to_the_schedule_set_without_at() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let at = rustq_core::wire::now_secs() + 3600.0;
    let jid = client
        .push(fields(
            json!({"class": "Later", "args": [], "queue": "low", "at": at}),
        ))
        .await
        .unwrap();
    assert_eq!(redis.cli(&["EXISTS", "queue:low"]), "0");
    let (entry, job) = client
        .scheduled_set()
        .find_job(&jid)
        .await
        .unwrap()
        .unwrap();
    assert!((entry.score - at).abs() < 1e-3, "{} vs {at}", entry.score);
    assert!(job.get("at").is_none());
    assert!(job.get("enqueued_at").is_none());
    assert_eq!(job.queue(), Some("low"));
    assert_eq!(client.stats().await.unwrap().scheduled_size, 1);
}

#[tokio::test]
async fn bulk_push_returns_jids_in_order_and_slices() {
    bulk_push_keeps_order().await;
}

/// On a multi-threaded runtime too, where spawned tasks may run in any order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_push_keeps_order_on_a_multi_threaded_runtime() {
    bulk_push_keeps_order().await;
}

async fn bulk_push_keeps_order() {
    // 25,001 jobs: 26 slices of 1,000 over 3 round trips, written while the next is rendered.
    const N: usize = 25_001;
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let args: Vec<Value> = (0..N).map(|i| json!([i])).collect();
    let jids = client
        .push_bulk(fields(
            json!({"class": "BulkJob", "args": args, "queue": "bulk"}),
        ))
        .await
        .unwrap();
    assert_eq!(jids.len(), N);
    let jobs: Vec<Job> = client
        .queue("bulk")
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(jobs.len(), N);
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(job.args().unwrap(), &vec![json!(i)]);
        assert_eq!(job.jid(), Some(jids[i].as_str()));
    }
    let distinct: std::collections::HashSet<_> = jids.iter().collect();
    assert_eq!(distinct.len(), N);
}

#[tokio::test]
async fn bulk_push_with_per_job_times_schedules_each() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let now = rustq_core::wire::now_secs();
    let jids = client
        .push_bulk(fields(json!({"class": "B", "args": [[1], [2], [3]], "at": [now + 10.0, now + 20.0, now + 30.0]})))
        .await
        .unwrap();
    let entries = client.scheduled_set().entries().await.unwrap();
    assert_eq!(entries.len(), 3);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.job().unwrap().jid(), Some(jids[i].as_str()));
        assert!((entry.score - (now + 10.0 * (i as f64 + 1.0))).abs() < 1e-3);
    }
}

#[tokio::test]
async fn bad_pushes_fail_with_sidekiqs_message_and_write_nothing() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let cases: Vec<(Value, bool, &str)> = vec![
        (
            json!({"class": "A", "args": 1}),
            false,
            "Job args must be an Array",
        ),
        (
            json!({"args": []}),
            false,
            "Job must be a Hash with 'class' and 'args' keys",
        ),
        (
            json!({"class": "", "args": []}),
            false,
            "Job class must be either a Class or String representation of the class name",
        ),
        (
            json!({"class": "A", "args": [], "queue": ""}),
            false,
            "Job must include a valid queue name",
        ),
        (
            json!({"class": "A", "args": [], "queue": "no spaces"}),
            false,
            "Job must include a valid queue name",
        ),
        (
            json!({"class": "A", "args": [], "at": "tomorrow"}),
            false,
            "Job 'at' must be a Numeric timestamp",
        ),
        (
            json!({"class": "A", "args": [1, 2]}),
            true,
            "Bulk arguments must be an Array of Arrays: [[1], [2]]",
        ),
        (
            json!({"class": "A", "args": [[1], [2]], "at": [1.0]}),
            true,
            "Job 'at' Array must have same size as 'args' Array",
        ),
        (
            json!({"class": "A", "args": [[1]], "at": "x"}),
            true,
            "Job 'at' must be a Numeric or an Array of Numeric timestamps",
        ),
        (
            json!({"class": "A", "args": [[1]], "queue": ""}),
            true,
            "Job must include a valid queue name",
        ),
    ];
    for (item, bulk, message) in cases {
        let result = if bulk {
            client.push_bulk(fields(item.clone())).await.map(|_| ())
        } else {
            client.push(fields(item.clone())).await.map(|_| ())
        };
        let err = result.expect_err(&format!("{item} should be refused"));
        assert!(matches!(err, rustq_core::Error::InvalidJob(_)), "{err:?}");
        assert!(err.to_string().starts_with(message), "{item}: {err}");
    }
    assert_eq!(redis.cli(&["DBSIZE"]), "0", "a refused push wrote to Redis");
    let err = client
        .prepare_push(fields(json!({"class": "A", "args": {}})))
        .err()
        .unwrap();
    assert_eq!(err, JobError::ArgsNotArray);
}

#[tokio::test]
async fn wire_version_8_writes_integer_milliseconds() {
    let redis = RedisServer::start();
    let options = ClientOptions {
        wire: WireVersion::V8,
        clock: Clock::fixed(1_700_000_000.5),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&RedisConfig::new(redis.url()), options)
        .await
        .unwrap();
    client
        .push(fields(json!({"class": "A", "args": []})))
        .await
        .unwrap();
    let job = client
        .queue("default")
        .jobs()
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(job.get("created_at"), Some(&json!(1_700_000_000_500i64)));
    assert_eq!(job.get("enqueued_at"), Some(&json!(1_700_000_000_500i64)));
    assert_eq!(job.created_at_secs(), Some(1_700_000_000.5));
}

#[tokio::test]
async fn stats_and_latency_read_what_is_there() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    redis.cli(&["SET", "stat:processed", "42"]);
    redis.cli(&["SET", "stat:failed", "7"]);
    for q in ["a", "b", "b"] {
        client
            .push(fields(json!({"class": "A", "args": [], "queue": q})))
            .await
            .unwrap();
    }
    let stats = client.stats().await.unwrap();
    assert_eq!((stats.processed, stats.failed, stats.enqueued), (42, 7, 3));
    assert_eq!(
        stats.queues,
        vec![("a".to_string(), 1), ("b".to_string(), 2)]
    );
    let latency = client.queue("b").latency().await.unwrap();
    assert!((0.0..60.0).contains(&latency));
    client.queue("b").clear().await.unwrap();
    assert_eq!(client.queue_names().await.unwrap(), vec!["a".to_string()]);
}

#[tokio::test]
async fn unreachable_redis_is_a_connection_error_naming_the_url() {
    let mut config = RedisConfig::new("redis://:hunter2@127.0.0.1:1/0");
    config.connect_timeout = std::time::Duration::from_millis(300);
    let err = Client::connect(&config)
        .await
        .err()
        .expect("no server on port 1");
    assert!(err.is_connection());
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("hunter2"), "password leaked: {message}");
}

#[tokio::test]
async fn a_sentinel_url_that_is_wrong_or_unreachable_says_so_and_never_hangs() {
    // No master name: refused before any connection, naming the (redacted) URL.
    let err = RedisConfig::new("redis+sentinel://:hunter2@127.0.0.1:26379")
        .check()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no master name")
            && err.contains("redis+sentinel://:REDACTED@127.0.0.1:26379"),
        "{err}"
    );
    // No Sentinel answers: a connection error within the connect timeouts.
    let mut config = RedisConfig::new(
        "redis+sentinel://:hunter2@127.0.0.1:1,127.0.0.1:2/mymaster?sentinel_password=sp",
    );
    config.connect_timeout = std::time::Duration::from_millis(300);
    config.check().unwrap();
    let err = tokio::time::timeout(std::time::Duration::from_secs(5), Client::connect(&config))
        .await
        .expect("no hang")
        .err()
        .expect("no Sentinel there");
    assert!(err.is_connection());
    let message = err.to_string();
    assert!(
        message.contains("127.0.0.1:1,127.0.0.1:2/mymaster"),
        "{message}"
    );
    assert!(
        !message.contains("hunter2") && !message.contains("=sp"),
        "password leaked: {message}"
    );
}

#[tokio::test]
async fn acl_user_and_unix_socket_urls_work() {
    let redis = RedisServer::start_with(&["--unixsocket", "redis.sock", "--unixsocketperm", "700"]);
    redis.cli(&[
        "ACL", "SETUSER", "app", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    let url = format!("redis://app:s3cret@127.0.0.1:{}/3", redis.port());
    let acl = Client::connect(&RedisConfig::new(url)).await.unwrap();
    acl.push(fields(json!({"class": "A", "args": []})))
        .await
        .unwrap();
    assert_eq!(redis.cli(&["-n", "3", "LLEN", "queue:default"]), "1");

    let wrong = RedisConfig::new(format!("redis://app:wrong@127.0.0.1:{}/0", redis.port()));
    let err = Client::connect(&wrong)
        .await
        .err()
        .expect("wrong password refused");
    assert!(!err.to_string().contains("wrong@"), "{err}");

    let sock = redis.dir().join("redis.sock");
    let unix = Client::connect(&RedisConfig::new(format!("unix://{}", sock.display())))
        .await
        .unwrap();
    assert_eq!(
        unix.queue("default").size().await.unwrap(),
        0,
        "db 0 over the socket"
    );
}
