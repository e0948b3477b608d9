//! Finished jobs written back, against a real Redis: a batch is written again when its reply is
//! lost, and must then change nothing more — check points' writes included, even those that are
//! not idempotent themselves (an `INCR`, an `LPUSH`).

use rustq_core::RedisConfig;
use rustq_engine::ack;
use rustq_engine::dead_set::DeadSetLimits;
use rustq_engine::keys;
use rustq_engine::outcome::{self, Batch};
use rustq_engine::work::Completion;
use rustq_engine::{Action, Deferral, UnitOfWork, Write};
use rustq_testing::RedisServer;

const ME: &str = "me:1:000000000000";

fn job(jid: &str) -> String {
    format!(r#"{{"class":"X","args":[],"jid":"{jid}","queue":"default"}}"#)
}

fn completion(jid: &str, action: Action) -> Completion {
    Completion::new(
        UnitOfWork {
            queue: "default".into(),
            raw: job(jid).into_bytes(),
        },
        action,
    )
}

#[tokio::test]
async fn a_batch_written_twice_has_the_effect_of_one() {
    let redis = RedisServer::start();
    let list = keys::inprogress(ME, "default");
    for jid in ["done", "requeued", "retried", "dead", "later", "parked"] {
        redis.cli(&["LPUSH", &list, &job(jid)]);
    }
    let mut done = completion("done", Action::Acknowledge);
    done.writes = vec![
        Write::new("INCR").key("rustq:test:outcomes"),
        Write::new("LPUSH").key("rustq:test:log").arg("done"),
    ];
    let batch = [
        done,
        completion("requeued", Action::Requeue),
        completion(
            "retried",
            Action::Retry {
                at: 2_000_000_000.0,
                payload: job("retried"),
            },
        ),
        completion(
            "dead",
            Action::Dead {
                payload: job("dead"),
            },
        ),
        completion("later", Action::Defer(Deferral::Until(2_100_000_000.0))),
        completion(
            "parked",
            Action::Defer(Deferral::Into("rustq:test:parked".into())),
        ),
        // Not in the list (another process recovered it): nothing of it is written.
        {
            let mut gone = completion("gone", Action::Requeue);
            gone.writes = vec![Write::new("INCR").key("rustq:test:outcomes")];
            gone
        },
    ];
    let mut writes = Batch::new(1_900_000_000.0, DeadSetLimits::default());
    for c in &batch {
        ack::add(&mut writes, ME, c);
    }
    let mut conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let script = outcome::script();
    // As the acker does when the reply to a batch that had run was lost: the same batch again.
    assert_eq!(writes.write(&script, &mut conn).await.unwrap().applied, 6);
    assert_eq!(writes.write(&script, &mut conn).await.unwrap().applied, 0);

    assert_eq!(redis.cli(&["LLEN", &list]), "0");
    assert_eq!(
        redis.cli(&["LRANGE", "queue:default", "0", "-1"]),
        job("requeued"),
        "the requeued job is in its queue once"
    );
    assert_eq!(redis.cli(&["ZCARD", "retry"]), "1");
    assert_eq!(redis.cli(&["ZCARD", "dead"]), "1");
    assert_eq!(
        redis.cli(&["ZRANGE", "schedule", "0", "-1", "WITHSCORES"]),
        format!("{}\n2100000000", job("later")),
        "deferred to a time: in the schedule set, unchanged"
    );
    assert_eq!(
        redis.cli(&["LRANGE", "rustq:test:parked", "0", "-1"]),
        job("parked"),
        "deferred into a list: there once, unchanged"
    );
    assert_eq!(redis.cli(&["GET", "rustq:test:outcomes"]), "1");
    assert_eq!(redis.cli(&["LLEN", "rustq:test:log"]), "1");
}

#[tokio::test]
async fn a_refused_write_loses_no_job_and_stops_no_other() {
    let redis = RedisServer::start();
    let list = keys::inprogress(ME, "default");
    for jid in ["parked", "counted", "plain"] {
        redis.cli(&["LPUSH", &list, &job(jid)]);
    }
    // Wrong-typed keys: a list that is a string, a counter that is a list.
    redis.cli(&["SET", "rustq:test:parked", "not a list"]);
    redis.cli(&["LPUSH", "rustq:test:counter", "not a number"]);
    let mut counted = completion("counted", Action::Acknowledge);
    counted.writes = vec![Write::new("INCR").key("rustq:test:counter")];
    let batch = [
        completion(
            "parked",
            Action::Defer(Deferral::Into("rustq:test:parked".into())),
        ),
        counted,
        completion("plain", Action::Acknowledge),
    ];
    let mut writes = Batch::new(1_900_000_000.0, DeadSetLimits::default());
    for c in &batch {
        ack::add(&mut writes, ME, c);
    }
    let mut conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let script = outcome::script();
    script.prepare_invoke().load_async(&mut conn).await.unwrap();
    let written = writes.write(&script, &mut conn).await.unwrap();

    assert_eq!(written.applied, 2, "{written:?}");
    assert_eq!(written.refused.len(), 2, "{written:?}");
    assert!(
        written.refused[0].0.contains("\"parked\"") && written.refused[0].1.contains("WRONGTYPE")
    );
    assert_eq!(
        redis.cli(&["LRANGE", &list, "0", "-1"]),
        job("parked"),
        "the job whose deferral was refused is still held, not lost"
    );
}

#[tokio::test]
async fn a_batch_is_written_after_redis_lost_its_scripts() {
    let redis = RedisServer::start();
    let list = keys::inprogress(ME, "default");
    for jid in ["plain", "retried"] {
        redis.cli(&["LPUSH", &list, &job(jid)]);
    }
    let mut conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let script = outcome::script();
    script.prepare_invoke().load_async(&mut conn).await.unwrap();
    // As after a restart of Redis: the script's SHA is no longer known.
    redis.cli(&["SCRIPT", "FLUSH"]);
    let mut writes = Batch::new(1_900_000_000.0, DeadSetLimits::default());
    for c in [
        completion("plain", Action::Acknowledge),
        completion(
            "retried",
            Action::Retry {
                at: 2_000_000_000.0,
                payload: job("retried"),
            },
        ),
    ] {
        ack::add(&mut writes, ME, &c);
    }
    let written = writes.write(&script, &mut conn).await.unwrap();
    assert_eq!(
        written.applied, 1,
        "the plain one went on the first try: {written:?}"
    );
    assert_eq!(redis.cli(&["LLEN", &list]), "0");
    assert_eq!(redis.cli(&["ZCARD", "retry"]), "1");
}

/// Gated writes: a count that changes once per job however often its outcome is written (a job
/// run twice after a crash), and a step that sees the total reach zero enqueues a follow-up once,
/// in the same atomic step — what batches' callbacks stand on.
#[tokio::test]
async fn gated_writes_count_each_job_once_and_fire_a_follow_up_once() {
    let redis = RedisServer::start();
    let list = keys::inprogress(ME, "default");
    let pending = "rustq:test:pending";
    redis.cli(&["SADD", pending, "a", "b"]);
    let mut conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let script = outcome::script();
    let finish = |jid: &str| {
        let mut c = completion(jid, Action::Acknowledge);
        c.writes = vec![
            Write::new("SREM").key(pending).arg(jid).gate(1, 3),
            Write::new("INCR").key("rustq:test:counted"),
            Write::new("SCARD").key(pending).gate(0, 1),
            Write::new("LPUSH").key("queue:callbacks").arg("all done"),
            // Not gated: runs whatever the gates said.
            Write::new("INCR").key("rustq:test:seen"),
        ];
        c
    };
    // "a" runs twice (its first process died after its outcome was written: it ran again).
    for jid in ["a", "a", "b", "b"] {
        redis.cli(&["LPUSH", &list, &job(jid)]);
        let mut batch = Batch::new(1_900_000_000.0, DeadSetLimits::default());
        ack::add(&mut batch, ME, &finish(jid));
        assert_eq!(batch.write(&script, &mut conn).await.unwrap().applied, 1);
    }
    assert_eq!(
        redis.cli(&["GET", "rustq:test:counted"]),
        "2",
        "each job counted once"
    );
    assert_eq!(
        redis.cli(&["LRANGE", "queue:callbacks", "0", "-1"]),
        "all done",
        "the follow-up once, when the last was counted"
    );
    assert_eq!(redis.cli(&["GET", "rustq:test:seen"]), "4");
}

#[tokio::test]
async fn once_per_step_writes_run_once_after_every_jobs_own_writes_with_their_gates() {
    let redis = RedisServer::start();
    let list = keys::inprogress(ME, "default");
    let pending = "rustq:test:pending";
    redis.cli(&["SADD", pending, "a", "b", "c"]);
    let mut conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let script = outcome::script();
    let finish = |jid: &str| {
        let mut c = completion(jid, Action::Acknowledge);
        c.writes = vec![
            Write::new("SREM").key(pending).arg(jid),
            // Asked once per step, after every job's SREM: fires only when the last is gone.
            Write::new("INCR")
                .key("rustq:test:checks")
                .once_per_step("done?"),
            Write::new("SCARD")
                .key(pending)
                .gate(0, 1)
                .once_per_step("done?"),
            Write::new("LPUSH")
                .key("queue:callbacks")
                .arg(format!("done after {jid}"))
                .once_per_step("done?"),
        ];
        c
    };
    // "a" alone in a step: not done yet. "b" and "c" in one step: done, said once.
    for step in [&["a"][..], &["b", "c"][..]] {
        let mut batch = Batch::new(1_900_000_000.0, DeadSetLimits::default());
        for jid in step {
            redis.cli(&["LPUSH", &list, &job(jid)]);
            ack::add(&mut batch, ME, &finish(jid));
        }
        assert_eq!(
            batch.write(&script, &mut conn).await.unwrap().applied,
            step.len() as u64
        );
    }
    assert_eq!(
        redis.cli(&["GET", "rustq:test:checks"]),
        "2",
        "once per step, not per job"
    );
    assert_eq!(
        redis.cli(&["LRANGE", "queue:callbacks", "0", "-1"]),
        "done after b",
        "after both jobs of the step, once (the first job's block)"
    );
}
