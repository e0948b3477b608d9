//! The engine against real Redis and real Sidekiq 6.4.1: jobs pushed by Sidekiq run in Rust
//! handlers; Sidekiq's API sees rustq's retries, dead jobs, process and stats; crashes and
//! graceful stops lose nothing; poison input ends in the dead set while work goes on.

use std::time::Duration;

use rustq_interop::{config_file, ledger, ruby, wait_until, RedisServer, TestWorker};
use serde_json::{json, Value};

const WORKER: &str = env!("CARGO_BIN_EXE_rustq-test-worker");

/// Fast beats and polls so tests need not wait Sidekiq's defaults.
const FAST: &str = "heartbeat_interval: 1\npoll_interval_average: 1\n";

fn start(redis: &RedisServer, extra: &[&str]) -> TestWorker {
    let config = config_file(redis, FAST);
    let mut args = vec!["-C", config.as_str(), "-t", "2"];
    args.extend_from_slice(extra);
    TestWorker::start(WORKER, redis, &args)
}

/// Starts a worker and waits for its process entry; returns it with its identity.
fn start_registered(redis: &RedisServer) -> (TestWorker, String) {
    let worker = start(redis, &[]);
    let registered = wait_until(Duration::from_secs(10), || {
        redis.cli(&["SCARD", "processes"]) == "1"
    });
    assert!(registered, "{}", worker.log_text());
    let identity = redis.cli(&["SMEMBERS", "processes"]);
    (worker, identity)
}

fn wait_ledger(redis: &RedisServer, n: usize, worker: &TestWorker) -> Vec<Value> {
    let ok = wait_until(Duration::from_secs(30), || ledger(redis).len() >= n);
    let entries = ledger(redis);
    assert!(
        ok,
        "expected {n} ledger entries, got {}:\n{entries:?}\nworker log:\n{}",
        entries.len(),
        worker.log_text()
    );
    entries
}

#[test]
fn jobs_pushed_by_sidekiq_run_in_rust_handlers() {
    let redis = RedisServer::start();
    let pushed = ruby(
        &redis.url(),
        r#"
require "sidekiq"
require "json"
module Billing
  class ChargeJob
    include Sidekiq::Worker
    sidekiq_options queue: "critical"
  end
end
a = Sidekiq::Client.push("class" => "LedgerJob", "args" => [1, "two", {"three" => [3.5, nil, true]}, "é ☃"])
b = Billing::ChargeJob.perform_async("card", 100)
c = Sidekiq::Client.push_bulk("class" => "LedgerJob", "args" => [["bulk", 1], ["bulk", 2]])
d = Sidekiq::Client.push("class" => "LedgerJob", "args" => ["scheduled"], "at" => Time.now.to_f + 1)
puts JSON.generate([a, b, *c, d])
"#,
    );
    let jids: Vec<String> = serde_json::from_str(pushed.trim()).unwrap();
    let worker = start(&redis, &["-q", "critical", "-q", "default"]);
    let entries = wait_ledger(&redis, 5, &worker);
    let by_jid = |jid: &str| {
        entries
            .iter()
            .find(|e| e["jid"] == jid)
            .unwrap_or_else(|| panic!("{jid} did not run"))
            .clone()
    };
    assert_eq!(
        by_jid(&jids[0])["args"],
        json!([1, "two", {"three": [3.5, null, true]}, "é ☃"])
    );
    assert_eq!(by_jid(&jids[1])["class"], "Billing::ChargeJob");
    assert_eq!(by_jid(&jids[1])["queue"], "critical");
    assert_eq!(by_jid(&jids[3])["args"], json!(["bulk", 2]));
    assert_eq!(by_jid(&jids[4])["args"], json!(["scheduled"]));
    assert_eq!(entries.len(), 5, "a job ran twice: {entries:?}");
}

#[test]
fn failures_follow_sidekiqs_retry_and_dead_set_rules() {
    let redis = RedisServer::start();
    let worker = start(&redis, &[]);
    ruby(
        &redis.url(),
        r#"
require "sidekiq"
Sidekiq::Client.push("class" => "FailOnceJob", "args" => ["again"], "jid" => "a" * 24)
Sidekiq::Client.push("class" => "FailJob", "args" => ["die"], "retry" => 0, "jid" => "b" * 24)
Sidekiq::Client.push("class" => "NoSuchJob", "args" => [], "jid" => "c" * 24, "retry" => 0)
Sidekiq::Client.push("class" => "FailJob", "args" => ["quiet"], "retry" => false, "jid" => "d" * 24)
"#,
    );
    assert!(
        wait_until(Duration::from_secs(20), || redis.cli(&["ZCARD", "retry"])
            == "1"
            && redis.cli(&["ZCARD", "dead"]) == "2"),
        "retry={} dead={}\n{}",
        redis.cli(&["ZCARD", "retry"]),
        redis.cli(&["ZCARD", "dead"]),
        worker.log_text()
    );
    // Sidekiq's own API reads the retry and the dead jobs; its retry_all brings the job back
    // (decrementing retry_count to -1, as Sidekiq does) and rustq runs it again.
    let out = ruby(
        &redis.url(),
        r#"
require "sidekiq/api"
r = Sidekiq::RetrySet.new.find_job("a" * 24) or raise "not in RetrySet"
raise "retry fields #{r.item.inspect}" unless r["error_class"] == "RuntimeError" && r["error_message"] == "first run fails" && r["retry_count"] == 0 && r["failed_at"].is_a?(Float) && r.queue == "default"
raise "retry time #{r.at}" unless r.at > Time.now + 10
d = Sidekiq::DeadSet.new.find_job("b" * 24) or raise "not in DeadSet"
raise "dead fields #{d.item.inspect}" unless d["error_message"] == "boom" && d["retry_count"] == 0
n = Sidekiq::DeadSet.new.find_job("c" * 24) or raise "unknown class not in DeadSet"
raise "unknown class message #{n["error_message"]}" unless n["error_class"] == "NameError" && n["error_message"].include?("NoSuchJob")
raise "retry:false job kept" if Sidekiq::DeadSet.new.find_job("d" * 24) || Sidekiq::RetrySet.new.find_job("d" * 24)
Sidekiq::RetrySet.new.retry_all
puts "ok"
"#,
    );
    assert_eq!(out.trim(), "ok");
    let ok = wait_until(Duration::from_secs(20), || {
        ledger(&redis)
            .iter()
            .filter(|e| e["jid"] == "a".repeat(24))
            .count()
            == 2
    });
    assert!(
        ok,
        "retried job did not run again: {:?}\n{}",
        ledger(&redis),
        worker.log_text()
    );
    let second = ledger(&redis)
        .into_iter()
        .filter(|e| e["jid"] == "a".repeat(24))
        .nth(1)
        .unwrap();
    assert_eq!(second["retry_count"], -1);
    assert!(wait_until(Duration::from_secs(5), || redis
        .cli(&["ZCARD", "retry"])
        == "0"));
}

#[test]
fn process_busy_jobs_and_stats_show_in_sidekiqs_api() {
    let redis = RedisServer::start();
    let worker = start(
        &redis,
        &[
            "-c",
            "7",
            "-q",
            "critical,3",
            "-q",
            "default",
            "-g",
            "billing",
        ],
    );
    ruby(
        &redis.url(),
        r#"require "sidekiq"; 3.times { |i| Sidekiq::Client.push("class" => "LedgerJob", "args" => [i]) }; Sidekiq::Client.push("class" => "SlowJob", "args" => [4000])"#,
    );
    wait_ledger(&redis, 3, &worker);
    let out = ruby(
        &redis.url(),
        r#"
require "sidekiq/api"
require "json"
deadline = Time.now + 10
loop do
  ps = Sidekiq::ProcessSet.new.to_a
  if ps.size == 1 && ps[0]["busy"] == 1 && Sidekiq::Stats.new.processed >= 3
    p = ps[0]
    work = Sidekiq::Workers.new.to_a
    puts JSON.generate("concurrency" => p["concurrency"], "queues" => p["queues"].sort, "tag" => p["tag"],
      "busy" => p["busy"], "quiet" => p["quiet"], "identity" => p.identity,
      "work_class" => work.map { |_, _, w| (w.respond_to?(:job) ? w.job.klass : w["payload"]["class"]) }, "processed" => Sidekiq::Stats.new.processed)
    break
  end
  raise "process not visible: #{ps.map(&:to_h)} stats=#{Sidekiq::Stats.new.processed}" if Time.now > deadline
  sleep 0.2
end
"#,
    );
    let seen: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(seen["concurrency"], 7);
    assert_eq!(seen["queues"], json!(["critical", "default"]));
    assert_eq!(seen["tag"], "billing");
    assert_eq!(seen["busy"], 1);
    assert_eq!(seen["quiet"], "false");
    assert_eq!(seen["work_class"], json!(["SlowJob"]));
    assert!(seen["processed"].as_u64().unwrap() >= 3);
    assert!(seen["identity"]
        .as_str()
        .unwrap()
        .contains(&format!(":{}:", worker.pid())));
}

#[test]
fn graceful_stop_pushes_running_jobs_back_and_exits_0() {
    let redis = RedisServer::start();
    ruby(
        &redis.url(),
        r#"require "sidekiq"; 3.times { Sidekiq::Client.push("class" => "SlowJob", "args" => [30000]) }"#,
    );
    let mut worker = start(&redis, &["-c", "5"]);
    assert!(wait_until(Duration::from_secs(10), || redis
        .cli(&["LLEN", "queue:default"])
        == "0"));
    std::thread::sleep(Duration::from_millis(300));
    worker.signal("TERM");
    let status = worker
        .wait(Duration::from_secs(10))
        .expect("worker exits within its timeout");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        worker.log_text()
    );
    assert_eq!(
        redis.cli(&["LLEN", "queue:default"]),
        "3",
        "{}",
        worker.log_text()
    );
    assert_eq!(redis.cli(&["KEYS", "rustq:inprogress:*"]), "");
    assert_eq!(redis.cli(&["SCARD", "processes"]), "0");
    assert!(ledger(&redis).is_empty());
}

#[test]
fn poison_jobs_go_to_the_dead_set_and_work_goes_on() {
    let redis = RedisServer::start();
    let huge = format!(
        r#"{{"class":"NoSuchJob","args":["{}"],"jid":"{}","queue":"default","retry":0}}"#,
        "x".repeat(10 * 1024 * 1024),
        "e".repeat(24)
    );
    std::fs::write(redis.dir().join("huge.json"), &huge).unwrap();
    let poison = [
        "{not json",
        r#"{"class":"LedgerJob","args":{"a":1},"jid":"aaaaaaaaaaaaaaaaaaaaaaaa"}"#,
        r#"{"args":[1],"jid":"bbbbbbbbbbbbbbbbbbbbbbbb"}"#,
        r#"{"class":"  ","args":[],"jid":"cccccccccccccccccccccccc"}"#,
        "[1,2,3]",
    ];
    for p in poison {
        redis.cli(&["LPUSH", "queue:default", p]);
    }
    ruby(
        &redis.url(),
        r#"
require "sidekiq"
Sidekiq.redis do |c|
  c.lpush("queue:default", "{\"class\":\"LedgerJob\",\"args\":[\"\xff\xfe\"]}".b)
  c.lpush("queue:default", File.binread(File.join(ENV["DIR"], "huge.json")))
end
Sidekiq::Client.push("class" => "PanicJob", "args" => [], "retry" => 0, "jid" => "d" * 24)
Sidekiq::Client.push("class" => "NeverEndsJob", "args" => [], "retry" => 0, "jid" => "f" * 24)
Sidekiq::Client.push("class" => "LedgerJob", "args" => ["still working"], "jid" => "9" * 24)
"#
        .replace(
            "ENV[\"DIR\"]",
            &format!("{:?}", redis.dir().display().to_string()),
        )
        .as_str(),
    );
    let worker = start(&redis, &["--job-timeout", "1"]);
    let ok = wait_until(Duration::from_secs(30), || {
        redis.cli(&["ZCARD", "dead"]) == "9"
    });
    assert!(
        ok,
        "dead={} log:\n{}",
        redis.cli(&["ZCARD", "dead"]),
        worker.log_text()
    );
    assert_eq!(
        ledger(&redis)
            .iter()
            .filter(|e| e["args"] == json!(["still working"]))
            .count(),
        1
    );
    let out = ruby(
        &redis.url(),
        r#"
require "sidekiq/api"
require "json"
puts JSON.generate(Sidekiq::DeadSet.new.map { |j| [j["jid"], j["error_class"], j["error_message"].to_s[0, 120]] })
"#,
    );
    let dead: Vec<(String, String, String)> = serde_json::from_str(out.trim()).unwrap();
    let find = |jid: &str| {
        dead.iter()
            .find(|d| d.0 == jid)
            .unwrap_or_else(|| panic!("{jid} not dead: {dead:?}"))
            .clone()
    };
    assert!(find(&"a".repeat(24)).2.contains("args"), "{dead:?}");
    assert!(find(&"b".repeat(24)).2.contains("class"));
    assert!(find(&"c".repeat(24)).2.contains("class"));
    assert!(find(&"d".repeat(24)).2.contains("kaboom"));
    assert_eq!(find(&"d".repeat(24)).1, "Rustq::Panic");
    assert_eq!(find(&"e".repeat(24)).1, "NameError");
    assert!(find(&"f".repeat(24)).2.contains("time limit"));
    let messages: Vec<&str> = dead.iter().map(|d| d.2.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("invalid JSON")),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m.contains("UTF-8")), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.contains("must be a JSON object")),
        "{messages:?}"
    );
    assert!(worker.log_text().contains("rustq-worker started"));
}

/// `dead_max_jobs` from the config file, as in sidekiq.yml. Sidekiq trims with
/// `ZREMRANGEBYRANK dead 0 -dead_max_jobs` after each addition, which keeps the newest
/// `dead_max_jobs - 1`; so does rustq.
#[test]
fn the_dead_set_keeps_what_dead_max_jobs_says() {
    let redis = RedisServer::start();
    let config = config_file(&redis, &format!("{FAST}:dead_max_jobs: 3\n"));
    let worker = TestWorker::start(WORKER, &redis, &["-C", config.as_str(), "-c", "1"]);
    ruby(
        &redis.url(),
        r#"
require "sidekiq"
5.times { |i| Sidekiq::Client.push("class" => "FailJob", "args" => [i], "retry" => 0, "jid" => i.to_s * 24) }
"#,
    );
    // Stats are counted before the outcome is written: wait for the last job in the dead set.
    assert!(
        wait_until(Duration::from_secs(20), || redis
            .cli(&["GET", "stat:failed"])
            == "5"
            && redis
                .cli(&["ZRANGE", "dead", "0", "-1"])
                .contains(&"4".repeat(24))),
        "{}",
        worker.log_text()
    );
    let dead = redis.cli(&["ZRANGE", "dead", "0", "-1"]);
    assert_eq!(dead.lines().count(), 2, "{dead}");
    assert!(dead.contains(&"4".repeat(24)), "the newest stay: {dead}");
    assert!(dead.contains(&"3".repeat(24)), "the newest stay: {dead}");
}

/// A unit written for Sidekiq (`Type=notify`, `WatchdogSec=`) works unchanged: READY=1 once
/// the process is registered, WATCHDOG=1 every half WATCHDOG_USEC, STOPPING=1 on TERM.
#[test]
fn tells_systemd_it_is_ready_alive_and_stopping() {
    use std::os::unix::net::UnixDatagram;

    let redis = RedisServer::start();
    let socket_path = redis.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = config_file(&redis, FAST);
    let mut worker = TestWorker::start_with_env(
        WORKER,
        &redis,
        &["-C", config.as_str(), "-t", "2"],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let next = || {
        let mut buf = [0u8; 256];
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notice from the worker ({e}):\n{}", worker_log(&redis)));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    assert_eq!(
        redis.cli(&["SCARD", "processes"]),
        "1",
        "ready only once registered"
    );
    // 200 ms apart: two pings within a second.
    assert_eq!([next(), next()], ["WATCHDOG=1", "WATCHDOG=1"]);
    worker.signal("TERM");
    // Pings may come before it; each wait is bounded by the socket's read timeout.
    loop {
        match next().as_str() {
            "STOPPING=1" => break,
            "WATCHDOG=1" => {}
            other => panic!("unexpected notice {other:?}"),
        }
    }
    assert!(worker
        .wait(Duration::from_secs(10))
        .expect("stops")
        .success());
}

fn worker_log(redis: &RedisServer) -> String {
    std::fs::read_dir(redis.dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("worker-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

/// Presses the process's Quiet or Stop button on the Busy page of the Sidekiq under test's Web UI
/// (rendered through Rack, with its CSRF token (6.x, 7.x) or same-origin header (8.x)).
fn press_web_ui_button(redis: &RedisServer, identity: &str, button: &str) {
    let script = format!(
        r#"
require "sidekiq/web"
require "rack/mock"
web = Rack::MockRequest.new(Sidekiq::Web.new)
env = {{"HTTP_HOST" => "localhost", "rack.session" => {{}}, "HTTP_SEC_FETCH_SITE" => "same-origin"}}
page = web.get("/busy", env)
raise "Busy page: #{{page.status}}" unless page.status == 200 && page.body.include?({identity:?})
token = page.body[/name=['"]authenticity_token['"]\s+value=['"]([^'"]+)/, 1]
params = {{"identity" => {identity:?}, {button:?} => "1", "authenticity_token" => token}}.compact
pressed = web.post("/busy", env.merge(params: params))
raise "POST /busy: #{{pressed.status}} #{{pressed.body[0, 300]}}" unless pressed.status == 302
"#
    );
    ruby(&redis.url(), &script);
}

#[test]
fn web_ui_signals_quiet_and_stop_the_process() {
    let redis = RedisServer::start();
    let (mut worker, identity) = start_registered(&redis);
    press_web_ui_button(&redis, &identity, "quiet");
    assert!(
        wait_until(Duration::from_secs(10), || redis
            .cli(&["HGET", &identity, "quiet"])
            == "true"),
        "{}",
        worker.log_text()
    );
    ruby(
        &redis.url(),
        r#"require "sidekiq"; Sidekiq::Client.push("class" => "LedgerJob", "args" => ["after quiet"])"#,
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(ledger(&redis).is_empty(), "a quiet process fetched a job");
    press_web_ui_button(&redis, &identity, "stop");
    let status = worker
        .wait(Duration::from_secs(15))
        .expect("stopped from the Web UI");
    assert!(status.success());
    assert_eq!(redis.cli(&["SCARD", "processes"]), "0");
    assert_eq!(redis.cli(&["LLEN", "queue:default"]), "1");
}

#[test]
fn web_ui_quiet_shows_long_before_the_next_heartbeat() {
    // Beats every 60 s: the quiet pressed in the Web UI is read by the second, and shown at once.
    let redis = RedisServer::start();
    let config = config_file(&redis, "heartbeat_interval: 60\npoll_interval_average: 5\n");
    let worker = TestWorker::start(WORKER, &redis, &["-C", &config, "-t", "2"]);
    assert!(
        wait_until(Duration::from_secs(10), || redis
            .cli(&["SCARD", "processes"])
            == "1"),
        "{}",
        worker.log_text()
    );
    let identity = redis.cli(&["SMEMBERS", "processes"]);
    ruby(
        &redis.url(),
        r#"require "sidekiq/api"; Sidekiq::ProcessSet.new.each(&:quiet!)"#,
    );
    assert!(
        wait_until(Duration::from_secs(10), || redis
            .cli(&["HGET", &identity, "quiet"])
            == "true"),
        "not quiet 10 s after the Web UI's Quiet, with beats 60 s apart:\n{}",
        worker.log_text()
    );
}

#[test]
fn paused_queues_are_skipped_without_busy_looping() {
    let redis = RedisServer::start();
    redis.cli(&["SADD", "paused", "critical"]);
    ruby(
        &redis.url(),
        r#"require "sidekiq"; Sidekiq::Client.push("class" => "LedgerJob", "args" => ["critical"], "queue" => "critical"); Sidekiq::Client.push("class" => "LedgerJob", "args" => ["default"])"#,
    );
    let worker = start(&redis, &["-q", "critical", "-q", "default"]);
    wait_ledger(&redis, 1, &worker);
    redis.cli(&["CONFIG", "RESETSTAT"]);
    std::thread::sleep(Duration::from_secs(3));
    let calls: u64 = redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(
        redis.cli(&["LLEN", "queue:critical"]),
        "1",
        "a paused queue was fetched from"
    );
    assert!(
        calls < 200,
        "{calls} commands in 3 s while idle with a paused, non-empty queue"
    );
    redis.cli(&["SREM", "paused", "critical"]);
    let entries = wait_ledger(&redis, 2, &worker);
    assert_eq!(entries[1]["args"], json!(["critical"]));
}

#[test]
fn os_signals_quiet_dump_and_stop() {
    let redis = RedisServer::start();
    let (mut worker, identity) = start_registered(&redis);
    ruby(
        &redis.url(),
        r#"require "sidekiq"; Sidekiq::Client.push("class" => "SlowJob", "args" => [20000])"#,
    );
    assert!(wait_until(Duration::from_secs(10), || redis
        .cli(&["HGET", &identity, "busy"])
        == "1"));
    worker.signal("TTIN");
    assert!(
        wait_until(Duration::from_secs(5), || worker
            .log_text()
            .contains("state dump")),
        "{}",
        worker.log_text()
    );
    assert!(worker.log_text().contains("SlowJob"));
    assert!(
        !worker.log_text().contains("\"args\""),
        "a dump logs class and jid, never the arguments: {}",
        worker.log_text()
    );
    worker.signal("TSTP");
    assert!(
        wait_until(Duration::from_secs(5), || redis
            .cli(&["HGET", &identity, "quiet"])
            == "true"),
        "{}",
        worker.log_text()
    );
    worker.signal("TERM");
    let status = worker
        .wait(Duration::from_secs(10))
        .expect("stops after TERM");
    assert!(status.success());
    assert_eq!(
        redis.cli(&["LLEN", "queue:default"]),
        "1",
        "the running job went back to its queue"
    );
}

#[test]
fn sidekiqs_api_and_web_ui_read_the_process_retries_dead_jobs_and_metrics() {
    // Whatever Sidekiq runs this (6.4.1, or 7.3/8.1 under bin/test-interop): its API and its Web
    // UI (rendered in-process through Rack) read what the worker wrote. 7.x and 8.x also chart
    // the jobs on their Metrics tab, each from its own keys; 8.x reads the queues per capsule.
    let redis = RedisServer::start();
    let worker = start(&redis, &["-c", "4", "-q", "default", "-g", "billing"]);
    ruby(
        &redis.url(),
        r#"require "sidekiq"
3.times { |i| Sidekiq::Client.push("class" => "LedgerJob", "args" => [i]) }
Sidekiq::Client.push("class" => "FailJob", "args" => ["retried"], "jid" => "a" * 24)
Sidekiq::Client.push("class" => "FailJob", "args" => ["dead"], "retry" => 0, "jid" => "d" * 24)
Sidekiq::Client.push("class" => "SlowJob", "args" => [20000], "jid" => "b" * 24)"#,
    );
    // The three LedgerJobs and the two FailJobs (the SlowJob records only when it ends).
    wait_ledger(&redis, 5, &worker);
    let out = ruby(
        &redis.url(),
        r#"
require "sidekiq/api"
require "sidekiq/web"
require "rack/mock"
require "json"
major = Sidekiq::VERSION.to_i
web = Rack::MockRequest.new(Sidekiq::Web.new)
page = ->(path) { web.get(path, "HTTP_HOST" => "localhost", "rack.session" => {}).then { |r| [r.status, r.body] } }
deadline = Time.now + 15
seen = {}
loop do
  ps = Sidekiq::ProcessSet.new.to_a
  seen = {
    "processes" => ps.size, "busy" => ps.first && ps.first["busy"], "tag" => ps.first && ps.first["tag"],
    "queues" => ps.first && ps.first.queues, "concurrency" => ps.first && ps.first["concurrency"],
    "processed" => Sidekiq::Stats.new.processed, "failed" => Sidekiq::Stats.new.failed,
    "retries" => Sidekiq::RetrySet.new.map(&:jid), "dead" => Sidekiq::DeadSet.new.map(&:jid),
    "busy_page" => page.("/busy").then { |s, b| s == 200 && b.include?("billing") && b.include?(ps.first&.identity.to_s.split(":").first.to_s) },
    "retries_page" => page.("/retries").then { |s, b| s == 200 && b.include?("FailJob") },
    "morgue_page" => page.("/morgue").then { |s, b| s == 200 && b.include?("FailJob") }
  }
  if major >= 7
    require "sidekiq/metrics/query"
    top = Sidekiq::Metrics::Query.new.top_jobs(minutes: 5).job_results["LedgerJob"]
    one = Sidekiq::Metrics::Query.new.for_job("LedgerJob", minutes: 5).job_results["LedgerJob"]
    seen["metrics_processed"] = top.totals["p"]
    seen["histogram_count"] = one.hist.values.flatten.sum
    seen["metrics_page"] = page.("/metrics").then { |s, b| s == 200 && b.include?("LedgerJob") }
  end
  if major >= 8
    seen["rollup_processed"] = Sidekiq::Metrics::Query.new.top_jobs(hours: 1).job_results["LedgerJob"].totals["p"]
    seen["capsules"] = ps.first && ps.first.capsules
  end
  done = seen["busy"] == 1 && seen["processed"] >= 5 && seen["dead"].any? && seen["retries"].any? &&
    (major < 7 || seen["metrics_processed"] >= 3)
  break if done || Time.now > deadline
  sleep 0.25
end
puts JSON.generate(seen.merge("major" => major))
"#,
    );
    let seen: Value = serde_json::from_str(out.trim()).unwrap();
    let log = worker.log_text();
    assert_eq!(seen["processes"], 1, "{seen}\n{log}");
    assert_eq!(seen["busy"], 1, "{seen}");
    assert_eq!(seen["tag"], "billing", "{seen}");
    assert_eq!(seen["queues"], json!(["default"]), "{seen}");
    assert_eq!(seen["concurrency"], 4, "{seen}");
    assert!(seen["processed"].as_u64().unwrap() >= 5, "{seen}");
    assert!(seen["failed"].as_u64().unwrap() >= 2, "{seen}");
    assert_eq!(seen["retries"], json!(["a".repeat(24)]), "{seen}");
    assert_eq!(seen["dead"], json!(["d".repeat(24)]), "{seen}");
    for page in ["busy_page", "retries_page", "morgue_page"] {
        assert_eq!(seen[page], true, "{page}: {seen}");
    }
    let major = seen["major"].as_u64().unwrap();
    if major >= 7 {
        assert!(seen["metrics_processed"].as_u64().unwrap() >= 3, "{seen}");
        assert!(seen["histogram_count"].as_u64().unwrap() >= 3, "{seen}");
        assert_eq!(seen["metrics_page"], true, "{seen}");
    }
    if major >= 8 {
        assert!(seen["rollup_processed"].as_u64().unwrap() >= 3, "{seen}");
        assert_eq!(
            seen["capsules"],
            json!({"default": {"concurrency": 4, "mode": "strict", "weights": {"default": 0}}}),
            "{seen}"
        );
    }
    eprintln!("Sidekiq {major}: API and Web UI read the worker's writes: {seen}");
}
