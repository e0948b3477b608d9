//! Recurring jobs: sidekiq-cron 2.x's layout, every tick enqueued once by a fleet with no
//! leader (workers SIGKILLed in a loop included), missed ticks per schedule, the operators'
//! `rustq-worker cron`, bad schedules at boot; and, with sidekiq-cron 2.3.1 from
//! `../shared/peers` (`bin/test-interop`, under Sidekiq 7.3 and 8.1), a fleet of rustq workers
//! and a Sidekiq process running sidekiq-cron's poller, its API and Web UI on rustq's schedules.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use rustq_interop::{config_file, ledger, ruby, Sidekiq, TestWorker};
use rustq_testing::{repo_root, wait_until, RedisServer};

const WORKER: &str = env!("CARGO_BIN_EXE_rustq-test-worker");

/// The `:enqueued` set of a schedule: claimed ticks (score = the tick's own time), without the
/// mark a save leaves (its score is the save's time, a second after its tick).
fn claimed_ticks(redis: &RedisServer, name: &str) -> Vec<i64> {
    let raw = redis.cli(&[
        "ZRANGE",
        &format!("cron_job:default:{name}:enqueued"),
        "0",
        "-1",
        "WITHSCORES",
    ]);
    let lines: Vec<&str> = raw.lines().collect();
    let mut ticks: Vec<i64> = lines
        .chunks(2)
        .filter_map(|pair| {
            let tick = DateTime::parse_from_rfc3339(pair.first()?)
                .ok()?
                .timestamp();
            let score: f64 = pair.get(1)?.parse().ok()?;
            (score as i64 == tick).then_some(tick)
        })
        .collect();
    ticks.sort();
    ticks
}

fn llen(redis: &RedisServer, key: &str) -> usize {
    redis.cli(&["LLEN", key]).parse().unwrap_or(0)
}

/// Ticks are claimed once each, none missing between the first and the last, and each claim
/// pushed exactly one job.
fn assert_each_tick_once(ticks: &[i64], pushed: usize, what: &str) {
    assert!(
        ticks.len() >= 5,
        "{what}: only {} ticks claimed",
        ticks.len()
    );
    let gaps: Vec<(i64, i64)> = ticks
        .windows(2)
        .filter(|w| w[1] - w[0] != 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(gaps.is_empty(), "{what}: ticks lost between {gaps:?}");
    assert_eq!(
        pushed,
        ticks.len(),
        "{what}: {pushed} jobs pushed for {} claimed ticks",
        ticks.len()
    );
}

#[test]
fn workers_sigkilled_in_a_loop_neither_lose_nor_double_a_tick() {
    let redis = RedisServer::start();
    let config = config_file(
        &redis,
        "schedule:\n  every_second:\n    cron: \"* * * * * *\"\n    class: TickJob\n    queue: ticks\n    missed: all\n",
    );
    // Neither worker fetches `ticks`: the queue is the ledger of pushes.
    let args = ["-C", config.as_str(), "-q", "other", "-t", "1"];
    let mut workers = [
        TestWorker::start(WORKER, &redis, &args),
        TestWorker::start(WORKER, &redis, &args),
    ];
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(700 + (kills % 5) * 150));
        let victim = kills as usize % 2;
        workers[victim].signal("KILL");
        workers[victim].wait(Duration::from_secs(5));
        workers[victim] = TestWorker::start(WORKER, &redis, &args);
        kills += 1;
    }
    std::thread::sleep(Duration::from_secs(2));
    for w in &mut workers {
        w.signal("TERM");
        assert!(
            w.wait(Duration::from_secs(10)).is_some_and(|s| s.success()),
            "{}",
            w.log_text()
        );
    }
    let ticks = claimed_ticks(&redis, "every_second");
    let pushed = llen(&redis, "queue:ticks");
    eprintln!(
        "{kills} SIGKILLs: {} ticks claimed, {pushed} jobs pushed",
        ticks.len()
    );
    assert!(ticks.len() >= 18, "{} ticks in 22 s", ticks.len());
    assert_each_tick_once(&ticks, pushed, "with SIGKILLs");
    // The jid history is sidekiq-cron's: the latest 10, each with its enqueue time.
    let history = redis.cli(&[
        "LRANGE",
        "cron_job:default:every_second:jid_history",
        "0",
        "-1",
    ]);
    assert_eq!(history.lines().count(), 10);
    let entry: serde_json::Value = serde_json::from_str(history.lines().next().unwrap()).unwrap();
    assert!(
        entry["enqueued"].as_str().unwrap().ends_with(" UTC"),
        "{entry}"
    );
}

#[test]
fn missed_ticks_follow_each_schedules_policy() {
    let redis = RedisServer::start();
    // Ticks at second 0 of each minute; start where the latest one is missed (more than 5 s
    // late) but within sidekiq-cron's 60 s grace, with nothing claimed for 10 minutes.
    assert!(wait_until(Duration::from_secs(60), || (10..=35)
        .contains(&Utc::now().second())));
    let now = Utc::now();
    let minute = now.timestamp() - now.second() as i64;
    let ten_ago = minute - 600;
    let member = DateTime::from_timestamp(ten_ago, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut yaml = String::from("schedule:\n");
    for (name, missed) in [
        ("all", "all\n    missed_cap: 3"),
        ("latest", "latest"),
        ("skip", "skip"),
    ] {
        redis.cli(&[
            "ZADD",
            &format!("cron_job:default:{name}:enqueued"),
            &ten_ago.to_string(),
            &member,
        ]);
        yaml.push_str(&format!(
            "  {name}:\n    cron: \"0 * * * * *\"\n    class: TickJob\n    queue: q_{name}\n    missed: {missed}\n"
        ));
    }
    let config = config_file(&redis, &yaml);
    let mut worker = TestWorker::start(WORKER, &redis, &["-C", &config, "-q", "other"]);
    assert!(
        wait_until(Duration::from_secs(10), || llen(&redis, "queue:q_all") >= 3
            && llen(&redis, "queue:q_latest") >= 1),
        "{}",
        worker.log_text()
    );
    std::thread::sleep(Duration::from_secs(1));
    worker.signal("TERM");
    worker.wait(Duration::from_secs(10));
    assert!(
        Utc::now().timestamp() < minute + 60,
        "the next minute's tick came in; the counts below would be off by one"
    );
    assert_eq!(
        llen(&redis, "queue:q_all"),
        3,
        "all (cap 3): the 3 latest missed ticks"
    );
    assert_eq!(
        claimed_ticks(&redis, "all"),
        vec![ten_ago, minute - 120, minute - 60, minute]
    );
    assert_eq!(llen(&redis, "queue:q_latest"), 1, "latest: one");
    assert_eq!(llen(&redis, "queue:q_skip"), 0, "skip: none");
    assert!(
        worker.log_text().contains("missed ticks not enqueued"),
        "{}",
        worker.log_text()
    );
}

/// Runs `rustq-worker cron ARGS` as an operator would (`rustq-worker cron list`,
/// `rustq-worker cron disable NAME`, `rustq-worker cron enable NAME`, `rustq-worker cron enqueue NAME`).
fn rustq_cron(redis: &RedisServer, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(WORKER)
        .arg("cron")
        .args(args)
        .env("REDIS_URL", redis.url())
        .current_dir(redis.dir())
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn operators_list_disable_enable_and_enqueue_schedules() {
    let redis = RedisServer::start();
    let config = config_file(
        &redis,
        "schedule:\n  - name: nightly\n    cron: \"0 3 * * * Europe/Berlin\"\n    class: LedgerJob\n    args: [7]\n  - name: every_second\n    cron: \"* * * * * *\"\n    class: TickJob\n    queue: ticks\n",
    );
    let mut worker = TestWorker::start(WORKER, &redis, &["-C", &config]);
    assert!(
        wait_until(Duration::from_secs(10), || llen(&redis, "queue:ticks") >= 2),
        "{}",
        worker.log_text()
    );
    let (code, list) = rustq_cron(&redis, &["list"]);
    assert_eq!(code, 0, "{list}");
    assert!(
        list.contains("nightly")
            && list.contains("0 3 * * * Europe/Berlin")
            && list.contains("LedgerJob"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("every_second") && l.contains("enabled")),
        "{list}"
    );

    assert_eq!(rustq_cron(&redis, &["disable", "every_second"]).0, 0);
    std::thread::sleep(Duration::from_millis(1500)); // a tick being claimed may still land
    let after_disable = llen(&redis, "queue:ticks");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        llen(&redis, "queue:ticks"),
        after_disable,
        "a disabled schedule enqueued"
    );
    assert_eq!(
        redis.cli(&["HGET", "cron_job:default:every_second", "status"]),
        "disabled"
    );

    // "Enqueue now" runs the job at once, whatever its schedule; LedgerJob records it.
    let (code, out) = rustq_cron(&redis, &["enqueue", "nightly"]);
    assert_eq!(code, 0, "{out}");
    assert!(wait_until(Duration::from_secs(10), || ledger(&redis)
        .iter()
        .any(|e| e["args"] == serde_json::json!([7]))));
    assert_eq!(
        redis.cli(&["LLEN", "cron_job:default:nightly:jid_history"]),
        "1"
    );

    assert_eq!(rustq_cron(&redis, &["enable", "every_second"]).0, 0);
    assert!(wait_until(Duration::from_secs(5), || llen(
        &redis,
        "queue:ticks"
    ) > after_disable));
    let (code, out) = rustq_cron(&redis, &["disable", "no_such_schedule"]);
    assert_eq!(
        (code, out.contains("no schedule named \"no_such_schedule\"")),
        (1, true),
        "{out}"
    );

    // A restart keeps the status set by an operator; a schedule taken out of the file goes.
    worker.signal("TERM");
    worker.wait(Duration::from_secs(10));
    config_file(
        &redis,
        "schedule:\n  - name: every_second\n    cron: \"* * * * * *\"\n    class: TickJob\n    queue: ticks\n",
    );
    assert_eq!(rustq_cron(&redis, &["disable", "every_second"]).0, 0);
    let mut worker = TestWorker::start(WORKER, &redis, &["-C", &config]);
    assert!(
        wait_until(Duration::from_secs(10), || redis
            .cli(&["EXISTS", "cron_job:default:nightly"])
            == "0"),
        "{}",
        worker.log_text()
    );
    assert_eq!(
        redis.cli(&["SMEMBERS", "cron_jobs:default"]),
        "cron_job:default:every_second"
    );
    assert_eq!(
        redis.cli(&["HGET", "cron_job:default:every_second", "status"]),
        "disabled"
    );
    // A flushed Redis is filled again from the file.
    redis.cli(&["FLUSHALL"]);
    assert!(
        wait_until(Duration::from_secs(40), || redis
            .cli(&["EXISTS", "cron_job:default:every_second"])
            == "1"),
        "{}",
        worker.log_text()
    );
    worker.signal("TERM");
    worker.wait(Duration::from_secs(10));
}

#[test]
fn a_bad_schedule_stops_the_worker_at_boot_naming_file_schedule_and_key() {
    let redis = RedisServer::start();
    for (yaml, expected) in [
        (
            "schedule:\n  nightly:\n    cron: \"0 25 * * *\"\n    class: ReportJob\n",
            "schedule \"nightly\": `cron`: cron line \"0 25 * * *\" is not valid",
        ),
        (
            "schedule:\n  nightly:\n    cron: \"0 3 * * * Mars/Olympus\"\n    class: ReportJob\n",
            "unknown time zone \"Mars/Olympus\"",
        ),
        (
            "schedule:\n  nightly:\n    cron: \"0 3 * * *\"\n",
            "schedule \"nightly\": `class` must be a job class name",
        ),
        (
            "cron_timezone: Nowhere/Land\n",
            "`cron_timezone` must be a time zone",
        ),
    ] {
        let config = config_file(&redis, yaml);
        let out = std::process::Command::new(WORKER)
            .args(["-C", &config])
            .env("REDIS_URL", redis.url())
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&config) && err.contains(expected), "{err}");
    }
    // A schedule in Redis that rustq cannot read (natural language beyond what it reads) stops only itself.
    redis.cli(&[
        "SADD",
        "cron_jobs:default",
        "cron_job:default:natural",
        "cron_job:default:ok",
    ]);
    redis.cli(&[
        "HSET",
        "cron_job:default:natural",
        "name",
        "natural",
        "klass",
        "TickJob",
        "cron",
        "every month on the 1st at 9am",
        "status",
        "enabled",
    ]);
    redis.cli(&[
        "HSET",
        "cron_job:default:ok",
        "name",
        "ok",
        "klass",
        "TickJob",
        // Spaces around the line, as fugit (and so sidekiq-cron's API) takes it.
        "cron",
        " * * * * * * ",
        "status",
        "enabled",
        "message",
        "{\"queue\":\"ticks\",\"class\":\"TickJob\",\"args\":[]}",
    ]);
    redis.cli(&[
        "ZADD",
        "cron_job:default:ok:enqueued",
        "1",
        "1970-01-01T00:00:01Z",
    ]);
    let mut worker = TestWorker::start(WORKER, &redis, &["-q", "other"]);
    assert!(
        wait_until(Duration::from_secs(10), || llen(&redis, "queue:ticks") >= 2),
        "{}",
        worker.log_text()
    );
    assert!(
        worker.log_text().contains(
            "schedule \"natural\": `cron`: cron line \"every month on the 1st at 9am\" is not a natural-language schedule rustq reads"
        ),
        "{}",
        worker.log_text()
    );
    // sidekiq-cron 1.x's layout is refused, saying what to do.
    redis.cli(&["SADD", "cron_jobs", "cron_job:old"]);
    let (code, out) = rustq_cron(&redis, &["list"]);
    assert_eq!(code, 1);
    assert!(out.contains("sidekiq-cron 1.x schedules"), "{out}");
    worker.signal("TERM");
    worker.wait(Duration::from_secs(10));
}

/// sidekiq-cron 2.x on Ruby's load path (`bin/test-interop` runs these under Sidekiq 7.3 and 8.1).
fn sidekiq_cron_loaded(redis: &RedisServer) -> bool {
    let out = rustq_testing::ruby_output(&redis.url(), "require 'sidekiq-cron'", &[]);
    if !out.status.success() {
        eprintln!("SKIPPED: sidekiq-cron is not on Ruby's load path (bin/test-interop runs this with Sidekiq 7.3 and 8.1)");
    }
    out.status.success()
}

#[test]
fn sidekiq_cron_and_two_rustq_workers_enqueue_each_second_once_for_60_s() {
    let redis = RedisServer::start();
    if !sidekiq_cron_loaded(&redis) {
        return;
    }
    // The Sidekiq process creates "every second" with sidekiq-cron's API at startup and polls
    // every second; it runs TickJob, which records each run in `ticks`.
    let mut sidekiq = Sidekiq::start_app(
        &redis,
        &repo_root().join("spec/fixtures/worker_cron_app.rb"),
        &["default"],
    );
    assert!(
        wait_until(Duration::from_secs(30), || redis
            .cli(&["EXISTS", "cron_job:default:every second"])
            == "1"),
        "{}",
        sidekiq.log_text()
    );
    // sidekiq-cron alone first: it claims the latest tick at each poll (a second apart, so
    // some ticks pass unclaimed); then two rustq workers join the same claims.
    std::thread::sleep(Duration::from_secs(10));
    let alone = claimed_ticks(&redis, "every second").len();
    let joined = Utc::now().timestamp();
    let args = ["-q", "other", "-t", "1"];
    let mut workers = [
        TestWorker::start(WORKER, &redis, &args),
        TestWorker::start(WORKER, &redis, &args),
    ];
    std::thread::sleep(Duration::from_secs(60));
    // Shared until the workers are told to stop; after that sidekiq-cron is alone again, and
    // claims only the latest tick at each poll.
    let left = Utc::now().timestamp();
    for w in &mut workers {
        w.signal("TERM");
        assert!(
            w.wait(Duration::from_secs(10)).is_some_and(|s| s.success()),
            "{}",
            w.log_text()
        );
    }
    // Stopped as a deploy would, so no job is cut off mid-run (a SIGKILL could lose one that
    // Sidekiq's basic fetch held).
    assert!(
        sidekiq.stop(Duration::from_secs(20)),
        "{}",
        sidekiq.log_text()
    );
    let ticks = claimed_ticks(&redis, "every second");
    let by_rustq: usize = workers
        .iter()
        .map(|w| w.log_text().matches("recurring job enqueued").count())
        .sum();
    // Sidekiq ran every job, whoever pushed it; the last ones may still be queued.
    let ran = llen(&redis, "ticks") + llen(&redis, "queue:default");
    // A tick a second before the stop was claimed before it (rustq claims on the tick).
    let shared: Vec<i64> = ticks
        .iter()
        .copied()
        .filter(|t| *t > joined && *t < left)
        .collect();
    eprintln!(
        "{} ticks claimed: {alone} by sidekiq-cron alone in 10 s, {by_rustq} by rustq, {} by sidekiq-cron while shared or after; {ran} jobs ran",
        ticks.len(),
        ticks.len() - alone - by_rustq
    );
    assert!(alone >= 1, "sidekiq-cron claimed no tick on its own");
    assert!(shared.len() >= 55, "{} ticks in 60 s", shared.len());
    assert_each_tick_once(&shared, shared.len(), "rustq and sidekiq-cron");
    assert_eq!(
        ran,
        ticks.len(),
        "jobs run for {} claimed ticks",
        ticks.len()
    );
}

#[test]
fn sidekiq_crons_api_and_web_ui_manage_rustq_schedules_and_rustq_runs_theirs() {
    let redis = RedisServer::start();
    if !sidekiq_cron_loaded(&redis) {
        return;
    }
    // Made with sidekiq-cron's API, run by rustq (LedgerJob writes the ledger).
    ruby(
        &redis.url(),
        r#"require "sidekiq-cron"; Sidekiq::Cron::Job.create(name: "theirs", cron: "* * * * * *", class: "LedgerJob", args: ["from sidekiq-cron"]) or raise "not saved""#,
    );
    let config = config_file(
        &redis,
        "schedule:\n  ours:\n    cron: \"* * * * * *\"\n    class: TickJob\n    queue: ticks\n    description: made by rustq\n",
    );
    let mut worker = TestWorker::start(WORKER, &redis, &["-C", &config]);
    assert!(
        wait_until(Duration::from_secs(15), || ledger(&redis)
            .iter()
            .any(|e| e["args"] == serde_json::json!(["from sidekiq-cron"]))),
        "{}",
        worker.log_text()
    );
    assert!(wait_until(Duration::from_secs(10), || llen(
        &redis,
        "queue:ticks"
    ) >= 1));

    // rustq's schedule in sidekiq-cron's API and on its Web UI's Cron page; disabled there, it
    // stops in rustq within a poll.
    let page = ruby(
        &redis.url(),
        r#"
require "sidekiq-cron"
require "sidekiq/web"
require "sidekiq/cron/web"
require "rack/mock"
job = Sidekiq::Cron::Job.find("ours") or raise "sidekiq-cron cannot find rustq's schedule"
raise "fields: #{job.to_hash.inspect}" unless job.cron == "* * * * * *" && job.klass == "TickJob" && job.queue_name_with_prefix == "ticks" && job.valid?
raise "not listed" unless Sidekiq::Cron::Job.all.map(&:name).sort == ["ours", "theirs"]
web = Rack::MockRequest.new(Sidekiq::Web.new)
env = {"HTTP_HOST" => "localhost", "rack.session" => {}, "HTTP_SEC_FETCH_SITE" => "same-origin"}
page = web.get("/cron", env)
raise "Cron page: #{page.status}" unless page.status == 200
job.disable!
print page.body.include?("made by rustq") && page.body.include?("ours") ? "listed" : page.body[0, 2000]
"#,
    );
    assert_eq!(page.trim(), "listed");
    std::thread::sleep(Duration::from_millis(1500));
    let after_disable = llen(&redis, "queue:ticks");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        llen(&redis, "queue:ticks"),
        after_disable,
        "disabled through sidekiq-cron, still enqueued by rustq"
    );
    let fields: BTreeMap<String, String> = redis
        .cli(&["HGETALL", "cron_job:default:ours"])
        .lines()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|p| (p[0].to_string(), p.get(1).unwrap_or(&"").to_string()))
        .collect();
    assert_eq!(fields["status"], "disabled");
    assert_eq!(fields["source"], "schedule");
    assert_eq!(
        fields["rustq_missed"], "latest",
        "rustq's own fields survive sidekiq-cron's save"
    );
    worker.signal("TERM");
    worker.wait(Duration::from_secs(10));
}

#[test]
fn overlap_skips_ticks_while_the_previous_job_runs_or_waits_and_a_dead_run_blocks_nothing() {
    let redis = RedisServer::start();
    let config = config_file(
        &redis,
        "schedule:\n  slow:\n    cron: \"* * * * * *\"\n    class: SlowJob\n    args: [2500]\n    queue: slow\n    overlap: skip_if_running\n\
         \x20 waiting:\n    cron: \"* * * * * *\"\n    class: TickJob\n    queue: nobody\n    overlap: skip_if_queued\n\
         \x20 free:\n    cron: \"* * * * * *\"\n    class: TickJob\n    queue: nobody_free\n",
    );
    let mut worker = TestWorker::start(WORKER, &redis, &["-C", &config, "-q", "slow", "-c", "5"]);
    std::thread::sleep(Duration::from_secs(10));
    worker.signal("TERM");
    assert!(worker
        .wait(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    // skip_if_running: a 2.5 s job ticked every second never runs twice at once.
    let mut runs: Vec<(u64, u64)> = redis
        .cli(&["LRANGE", "slow_runs", "0", "-1"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| (r["start"].as_u64().unwrap(), r["end"].as_u64().unwrap()))
        .collect();
    runs.sort();
    assert!(runs.len() >= 2, "{runs:?}\n{}", worker.log_text());
    assert!(
        runs.windows(2).all(|w| w[1].0 >= w[0].1),
        "overlapping runs: {runs:?}"
    );
    let skipped = worker.log_text().matches("tick skipped").count();
    assert!(
        skipped >= runs.len(),
        "{skipped} ticks skipped for {} runs",
        runs.len()
    );
    // skip_if_queued: nobody fetches `nobody`, so the first job waits and every later tick is skipped.
    assert_eq!(llen(&redis, "queue:nobody"), 1);
    assert!(claimed_ticks(&redis, "waiting").len() >= 8);
    // allow (the default): every tick.
    assert_eq!(
        llen(&redis, "queue:nobody_free"),
        claimed_ticks(&redis, "free").len()
    );
    assert!(llen(&redis, "queue:nobody_free") >= 8);

    // A run whose process is SIGKILLed blocks nothing: the next worker (on this host, so it
    // recovers the dead process at once) finds the run's process gone and enqueues again.
    let config = config_file(
        &redis,
        "schedule:\n  stuck:\n    cron: \"* * * * * *\"\n    class: SlowJob\n    args: [60000]\n    queue: stuck\n    overlap: skip_if_running\n",
    );
    let mut first = TestWorker::start(WORKER, &redis, &["-C", &config, "-q", "stuck"]);
    assert!(
        wait_until(Duration::from_secs(10), || redis
            .cli(&["HLEN", "rustq:cron:default:stuck:running"])
            == "1"),
        "{}",
        first.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        llen(&redis, "queue:stuck"),
        0,
        "a tick was enqueued while the run ran"
    );
    first.signal("KILL");
    first.wait(Duration::from_secs(5));
    let mut second = TestWorker::start(WORKER, &redis, &["-C", &config, "-q", "other"]);
    // The recovered job goes back to its queue, and ticks are enqueued after it.
    assert!(
        wait_until(Duration::from_secs(10), || llen(&redis, "queue:stuck") >= 3),
        "{}",
        second.log_text()
    );
    second.signal("TERM");
    second.wait(Duration::from_secs(10));
}

#[test]
fn solid_queues_recurring_yml_runs_its_tasks_as_active_jobs() {
    let redis = RedisServer::start();
    let config = redis.dir().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("recurring.yml"),
        "production:\n  heartbeat:\n    class: HeartbeatJob\n    queue: background\n    args: [1, { batch_size: 500 }]\n    schedule: every second\n    priority: 2\n\
         development:\n  only_in_development:\n    class: DevJob\n    schedule: every minute\n",
    )
    .unwrap();
    let mut worker = TestWorker::start_with_env(
        WORKER,
        &redis,
        &["-q", "other"],
        &[("RAILS_ENV", "production")],
    );
    assert!(
        wait_until(Duration::from_secs(10), || llen(&redis, "queue:background")
            >= 1),
        "{}",
        worker.log_text()
    );
    worker.signal("TERM");
    worker.wait(Duration::from_secs(10));
    let payload: serde_json::Value =
        serde_json::from_str(&redis.cli(&["LINDEX", "queue:background", "0"])).unwrap();
    assert_eq!(
        payload["class"],
        "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
    );
    assert_eq!(payload["wrapped"], "HeartbeatJob");
    assert_eq!(
        payload["args"][0]["arguments"],
        serde_json::json!([1, {"batch_size": 500}])
    );
    assert_eq!(
        redis.cli(&["HGET", "cron_job:default:heartbeat", "cron"]),
        "every second"
    );
    assert_eq!(
        redis.cli(&["EXISTS", "cron_job:default:only_in_development"]),
        "0"
    );

    // Solid Queue's `command:` tasks are refused at boot, naming the file and the task.
    std::fs::write(
        config.join("recurring.yml"),
        "production:\n  purge:\n    command: \"Thing.purge\"\n    schedule: every day\n",
    )
    .unwrap();
    let out = std::process::Command::new(WORKER)
        .env("REDIS_URL", redis.url())
        .env("RAILS_ENV", "production")
        .current_dir(redis.dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("config/recurring.yml: task \"purge\": `command:` tasks are not run by rustq"),
        "{err}"
    );
}
