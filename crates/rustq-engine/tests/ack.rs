//! Finished jobs written back, against a real Redis: a batch is written again when its reply is
//! lost, and must then change nothing more.

use rustq_core::RedisConfig;
use rustq_engine::ack::{self, Completion, DeadSetLimits};
use rustq_engine::fetch::UnitOfWork;
use rustq_engine::job_retry::Action;
use rustq_engine::keys;
use rustq_testing::RedisServer;

const ME: &str = "me:1:000000000000";

fn job(jid: &str) -> String {
    format!(r#"{{"class":"X","args":[],"jid":"{jid}","queue":"default"}}"#)
}

fn completion(jid: &str, action: Action) -> Completion {
    Completion {
        unit: UnitOfWork {
            queue: "default".into(),
            raw: job(jid).into_bytes(),
        },
        action,
    }
}

#[tokio::test]
async fn a_batch_written_twice_has_the_effect_of_one() {
    let redis = RedisServer::start();
    let list = keys::inprogress(ME, "default");
    for jid in ["done", "requeued", "retried", "dead"] {
        redis.cli(&["LPUSH", &list, &job(jid)]);
    }
    let batch = [
        completion("done", Action::Acknowledge),
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
    ];
    let mut pipe = redis::pipe();
    pipe.atomic();
    for c in &batch {
        ack::add_commands(&mut pipe, ME, c, 1_900_000_000.0, DeadSetLimits::default());
    }
    let mut conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    // As the acker does when the reply to a batch that had run was lost: the same batch again.
    for _ in 0..2 {
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }

    assert_eq!(redis.cli(&["LLEN", &list]), "0");
    assert_eq!(
        redis.cli(&["LRANGE", "queue:default", "0", "-1"]),
        job("requeued"),
        "the requeued job is in its queue once"
    );
    assert_eq!(redis.cli(&["ZCARD", "retry"]), "1");
    assert_eq!(redis.cli(&["ZCARD", "dead"]), "1");
}
