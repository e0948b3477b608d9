//! Jobs a lost reply left behind, against a real Redis: in this process's in-progress list
//! (a fetch) and in its scheduling list (a scheduled poll).

use std::sync::Arc;
use std::time::Duration;

use rustq_core::{RedisConfig, WireVersion};
use rustq_engine::holdings::Holdings;
use rustq_engine::keys;
use rustq_engine::orphans::Adopter;
use rustq_engine::scheduled::Poller;
use rustq_engine::UnitOfWork;
use rustq_testing::RedisServer;

const ME: &str = "me:1:000000000000";

fn job(jid: &str) -> String {
    format!(r#"{{"class":"X","args":[],"jid":"{jid}","queue":"default"}}"#)
}

async fn adopter(redis: &RedisServer, holdings: Arc<Holdings>) -> Adopter {
    Adopter {
        conn: RedisConfig::new(redis.url())
            .connection_manager()
            .await
            .unwrap(),
        identity: ME.into(),
        queues: vec!["default".into()],
        holdings,
        recheck: Duration::from_secs(3600),
        grace: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn unreported_jobs_go_back_to_the_front_of_their_queue_and_held_ones_stay() {
    let redis = RedisServer::start();
    let list = keys::inprogress(ME, "default");
    // Oldest first on the right: a running job, an orphan, a job held twice and found three
    // times (one orphaned copy), and one reported while the adopter waits.
    for jid in ["running", "orphan", "twice", "twice", "twice", "late"] {
        redis.cli(&["LPUSH", &list, &job(jid)]);
    }
    redis.cli(&["RPUSH", "queue:default", &job("queued")]);
    let holdings = Arc::new(Holdings::default());
    let held = |jid: &str| UnitOfWork {
        queue: "default".into(),
        raw: job(jid).into_bytes(),
    };
    holdings.take(&held("running"));
    holdings.take(&held("twice"));
    holdings.take(&held("twice"));
    let adopter = adopter(&redis, holdings.clone()).await;

    let check = adopter.check(Duration::from_millis(500));
    let report_late = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        holdings.take(&held("late"));
    };
    let (moved, ()) = tokio::join!(check, report_late);

    assert_eq!(moved.unwrap(), 2);
    let left = redis.cli(&["LRANGE", &list, "0", "-1"]);
    assert_eq!(left.matches("\"jid\":\"twice\"").count(), 2, "{left}");
    assert!(left.contains("running") && left.contains("late"), "{left}");
    assert!(!left.contains("orphan"), "{left}");
    // Fetching takes from the right: the orphans are next, ahead of what was queued, the older
    // one (further right in the in-progress list) first.
    let queue = redis.cli(&["LRANGE", "queue:default", "0", "-1"]);
    let order: Vec<&str> = queue.lines().collect();
    assert_eq!(order.len(), 3, "{queue}");
    assert!(order[0].contains("queued"), "{queue}");
    assert!(
        order[1].contains("twice") && order[2].contains("orphan"),
        "{queue}"
    );
    assert_eq!(redis.cli(&["SISMEMBER", "queues", "default"]), "1");
}

#[tokio::test]
async fn the_periodic_look_finds_orphans_when_no_fetch_has_failed() {
    // A fetch sent just before its connection broke can reach Redis after the look that
    // followed the failure: no fetch fails then, and only the periodic look finds its job.
    let redis = RedisServer::start();
    let list = keys::inprogress(ME, "default");
    redis.cli(&["LPUSH", &list, &job("late-orphan")]);
    let mut adopter = adopter(&redis, Arc::new(Holdings::default())).await;
    adopter.recheck = Duration::from_millis(100);
    let running = tokio::spawn(adopter.watch());
    // The first look, then the grace (1 s here) before the give-back.
    let mut back = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if redis.cli(&["LLEN", "queue:default"]) == "1" {
            back = true;
            break;
        }
    }
    running.abort();
    assert!(
        back,
        "the orphan is still in {}",
        redis.cli(&["LRANGE", &list, "0", "-1"])
    );
    assert_eq!(redis.cli(&["LLEN", &list]), "0");
}

#[tokio::test]
async fn a_job_finished_while_the_adopter_waits_is_not_given_back() {
    let redis = RedisServer::start();
    let list = keys::inprogress(ME, "default");
    redis.cli(&["LPUSH", &list, &job("done")]);
    let holdings = Arc::new(Holdings::default());
    let adopter = adopter(&redis, holdings.clone()).await;
    // Seen unheld (its completion was being written), then gone from the list.
    let check = adopter.check(Duration::from_millis(500));
    let finish = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        redis.cli(&["LREM", &list, "-1", &job("done")]);
    };
    let (moved, ()) = tokio::join!(check, finish);
    assert_eq!(moved.unwrap(), 0);
    assert_eq!(redis.cli(&["LLEN", "queue:default"]), "0");
}

#[tokio::test]
async fn a_poll_pushes_what_a_failed_poll_left_in_the_scheduling_list() {
    let redis = RedisServer::start();
    redis.cli(&["LPUSH", &keys::scheduling(ME), &job("left-behind")]);
    let conn = RedisConfig::new(redis.url())
        .connection_manager()
        .await
        .unwrap();
    let moved = Poller::new(conn, ME, WireVersion::V7)
        .enqueue_due()
        .await
        .unwrap();
    assert_eq!(moved, 1);
    assert_eq!(redis.cli(&["LLEN", &keys::scheduling(ME)]), "0");
    let queue = redis.cli(&["LRANGE", "queue:default", "0", "-1"]);
    assert!(
        queue.contains("left-behind") && queue.contains("enqueued_at"),
        "{queue}"
    );
}

#[tokio::test]
async fn giving_back_many_orphans_scans_the_list_once() {
    // 2,000 orphans in a list of 2,100: one read and one write of the list, not a lookup and
    // a removal (each a scan of the list) per orphan. Redis counts the commands a script calls.
    let redis = RedisServer::start();
    let list = keys::inprogress(ME, "default");
    let holdings = Arc::new(Holdings::default());
    for i in 0..2_100 {
        let raw = job(&format!("j{i}"));
        redis.cli(&["LPUSH", &list, &raw]);
        if i % 21 == 0 {
            holdings.take(&UnitOfWork {
                queue: "default".into(),
                raw: raw.into_bytes(),
            });
        }
    }
    let adopter = adopter(&redis, holdings).await;
    redis.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(adopter.check(Duration::ZERO).await.unwrap(), 2_000);

    let stats = redis.cli(&["INFO", "commandstats"]);
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    let scans = calls("lpos") + calls("lrem") + calls("lrange");
    // The adopter's own first look is one LRANGE; the give-back one more.
    assert!(scans <= 2, "{scans} scans of the list:\n{stats}");
    assert_eq!(redis.cli(&["LLEN", &list]), "100");
    assert_eq!(redis.cli(&["LLEN", "queue:default"]), "2000");
    // The oldest orphan (pushed first, the list's right end) is fetched first.
    let next = redis.cli(&["LINDEX", "queue:default", "-1"]);
    assert!(next.contains("\"j1\""), "{next}");
    // What stays is what was held, in its order.
    let left = redis.cli(&["LRANGE", &list, "0", "-1"]);
    let held: Vec<&str> = left.lines().collect();
    assert!(
        held[0].contains("\"j2079\"") && held[99].contains("\"j0\""),
        "{left}"
    );
}
