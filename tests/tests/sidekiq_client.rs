//! rustq's client against Sidekiq 6.4.1's: same bytes, readable by Sidekiq's API, run by a real
//! `sidekiq` process; and Sidekiq's payloads survive a trip through rustq's model.

use std::time::Duration;

use rustq_core::{Client, ClientOptions, Clock, Fields, Job, RedisConfig, WireVersion};
use rustq_interop::{ruby, wait_for_results, RedisServer, Sidekiq};
use serde_json::{json, Value};

fn fields(v: Value) -> Fields {
    v.as_object().expect("an object").clone()
}

/// Pushes with Sidekiq's own client and returns the stored payloads (queue payloads, then
/// scheduled members with their scores).
fn sidekiq_pushes(redis: &RedisServer) -> (Vec<String>, Vec<(String, String)>) {
    let out = ruby(
        &redis.url(),
        r#"
require "sidekiq"
require "json"
class ChargeJob
  include Sidekiq::Worker
  sidekiq_options queue: "critical", retry: 3, backtrace: true
end
ARGS = [
  [1, "two", 3.5, nil, true, false],
  [{"nested" => {"list" => [1, [2, {"deep" => "é ☃ 😀"}]]}}],
  ["quotes \" and \\ backslash", "control \u0001\t\n\r", "</script> & / <>"],
  [12345678901234567890, -0.0001, 1.0e20, 2.5e-7],
  [],
]
ARGS.each_with_index do |args, i|
  Sidekiq::Client.push("class" => "HardJob", "args" => args, "jid" => "%024x" % i, "created_at" => 1700000000.123456 + i)
end
ChargeJob.set(jid: "c" * 24).perform_async("card", 100)
ChargeJob.perform_in(3600, "later")
queue = Sidekiq.redis { |c| c.lrange("queue:default", 0, -1).reverse }
critical = Sidekiq.redis { |c| c.lrange("queue:critical", 0, -1) }
scheduled = Sidekiq.redis { |c| c.zrange("schedule", 0, -1).map { |m| [m, Float(c.zscore("schedule", m))] } }
Sidekiq.redis(&:flushdb)
puts JSON.generate("queue" => queue + critical, "scheduled" => scheduled.map { |m, s| [m, s.to_s] })
"#,
    );
    let parsed: Value = serde_json::from_str(out.trim()).expect("ruby printed JSON");
    let queue = parsed["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let scheduled = parsed["scheduled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (queue, scheduled)
}

async fn client_at(redis: &RedisServer, now: f64) -> Client {
    // The payload format of the Sidekiq under test (8.x: integer-millisecond times).
    let wire = if rustq_interop::sidekiq_major() >= 8 {
        WireVersion::V8
    } else {
        WireVersion::V7
    };
    let options = ClientOptions {
        clock: Clock::fixed(now),
        wire,
        ..ClientOptions::default()
    };
    Client::connect_with(&RedisConfig::new(redis.url()), options)
        .await
        .expect("connect")
}

#[tokio::test]
async fn payload_bytes_equal_sidekiqs() {
    let redis = RedisServer::start();
    let (sidekiq_queue, sidekiq_scheduled) = sidekiq_pushes(&redis);
    assert_eq!(sidekiq_queue.len(), 6);

    for expected in &sidekiq_queue {
        let theirs = Job::from_json(expected).unwrap();
        // Push the same class/args/queue/jid/options with the clock pinned to Sidekiq's enqueued_at.
        let mut item = theirs.fields().clone();
        item.shift_remove("enqueued_at");
        let client = client_at(&redis, theirs.enqueued_at_secs().unwrap()).await;
        client.push(item).await.unwrap();
        let queue = theirs.queue().unwrap();
        let ours = redis.cli(&["RPOP", &format!("queue:{queue}")]);
        assert_eq!(&ours, expected, "rustq's bytes differ from Sidekiq's");
    }

    // perform_in: the member bytes and the score match.
    let (member, score) = &sidekiq_scheduled[0];
    let theirs = Job::from_json(member).unwrap();
    let mut item = theirs.fields().clone();
    item.insert("at".into(), json!(score.parse::<f64>().unwrap()));
    let client = client_at(&redis, theirs.created_at_secs().unwrap()).await;
    client.push(item).await.unwrap();
    let stored = redis.cli(&["ZRANGE", "schedule", "0", "-1", "WITHSCORES"]);
    let mut lines = stored.lines();
    assert_eq!(lines.next(), Some(member.as_str()));
    assert_eq!(
        lines.next().unwrap().parse::<f64>().unwrap(),
        score.parse::<f64>().unwrap()
    );
}

#[tokio::test]
async fn sidekiq_api_reads_what_rustq_pushed() {
    let redis = RedisServer::start();
    let client = Client::connect(&RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let jid = client
        .push(fields(json!({"class": "HardJob", "args": [1, {"a": "b"}], "queue": "critical", "tags": ["t"]})))
        .await
        .unwrap();
    let at = rustq_core::wire::now_secs() + 600.0;
    let later = client
        .push(fields(
            json!({"class": "HardJob", "args": ["later"], "at": at}),
        ))
        .await
        .unwrap();
    let bulk = client
        .push_bulk(fields(json!({"class": "BulkJob", "args": [[1], [2], [3]]})))
        .await
        .unwrap();
    let out = ruby(
        &redis.url(),
        &format!(
            r#"
require "sidekiq/api"
require "json"
q = Sidekiq::Queue.new("critical")
job = q.find_job("{jid}")
raise "not found in Sidekiq::Queue" unless job
raise "bad args #{{job.args.inspect}}" unless job.args == [1, {{"a" => "b"}}]
raise "bad class" unless job.klass == "HardJob" && job.display_class == "HardJob"
raise "bad tags" unless job.tags == ["t"]
raise "bad enqueued_at" unless (Time.now - job.enqueued_at).abs < 60
raise "bad created_at" unless (Time.now - job.created_at).abs < 60
s = Sidekiq::ScheduledSet.new.find_job("{later}")
raise "not found in ScheduledSet" unless s && s.args == ["later"] && (s.at.to_f - {at}).abs < 0.01
bulk = Sidekiq::Queue.new("default").map(&:jid).reverse
raise "bulk jids #{{bulk}}" unless bulk == {bulk:?}
stats = Sidekiq::Stats.new
puts JSON.generate([stats.enqueued, stats.scheduled_size, Sidekiq::Queue.all.map(&:name).sort])
"#
        ),
    );
    assert_eq!(out.trim(), r#"[4,1,["critical","default"]]"#);
}

#[tokio::test]
async fn real_sidekiq_runs_jobs_pushed_by_rustq() {
    let redis = RedisServer::start();
    let client = Client::connect(&RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let args = json!([1, "two", {"three": [3.5, null, true]}, "é ☃"]);
    let jid = client
        .push(fields(json!({"class": "RecordJob", "args": args})))
        .await
        .unwrap();
    let namespaced = client
        .push(fields(
            json!({"class": "Billing::ChargeJob", "args": ["card", 100], "queue": "critical"}),
        ))
        .await
        .unwrap();
    let bulk = client
        .push_bulk(fields(
            json!({"class": "RecordJob", "args": [["b1"], ["b2"]]}),
        ))
        .await
        .unwrap();
    let scheduled = client
        .push(fields(json!({"class": "RecordJob", "args": ["scheduled"], "at": rustq_core::wire::now_secs() + 1.0})))
        .await
        .unwrap();

    let sidekiq = Sidekiq::start(&redis, &["critical", "default"]);
    let results = wait_for_results(&redis, 5, Duration::from_secs(45));
    let by_jid = |jid: &str| {
        results
            .iter()
            .find(|r| r["jid"] == jid)
            .unwrap_or_else(|| panic!("{jid} did not run; log:\n{}", sidekiq.log_text()))
            .clone()
    };
    assert_eq!(by_jid(&jid)["args"], args);
    assert_eq!(by_jid(&namespaced)["class"], "Billing::ChargeJob");
    assert_eq!(by_jid(&bulk[1])["args"], json!(["b2"]));
    assert_eq!(by_jid(&scheduled)["args"], json!(["scheduled"]));
}

#[tokio::test]
async fn every_wire_field_survives_sidekiq_to_rustq_to_sidekiq() {
    let redis = RedisServer::start();
    let script = r#"
require "sidekiq"
require "sidekiq/api"
require "json"
require "zlib"
require "base64"
bt = Base64.encode64(Zlib::Deflate.deflate(JSON.generate(["a.rb:1:in `x'", "b.rb:2"])))
item = {
  "class" => "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped" => "Billing::ChargeJob",
  "args" => [{"job_class" => "Billing::ChargeJob", "arguments" => [1, {"_aj_symbol_keys" => []}]}],
  "queue" => "critical", "retry" => 5, "jid" => "0123456789abcdef01234567",
  "created_at" => 1700000000.5, "retry_count" => 2, "error_message" => "boom ☃", "error_class" => "RuntimeError",
  "error_backtrace" => bt, "failed_at" => 1700000001.25, "retried_at" => 1700000002.0, "retry_queue" => "low",
  "dead" => false, "backtrace" => 10, "tags" => ["a", "b"], "retry_for" => 3600,
  "bid" => "B-xyz", "unique_for" => 60, "cattr" => {"tenant" => "acme"}
}
Sidekiq::Client.push(item)
original = Sidekiq.redis { |c| c.lrange("queue:critical", 0, -1) }.first
puts original
"#;
    let original = ruby(&redis.url(), script).trim().to_string();

    // Sidekiq → rustq: every field reads through the typed model, and nothing is lost.
    let job = Job::from_json(&original).unwrap();
    job.check().unwrap();
    assert_eq!(job.to_json(), original);
    assert_eq!(job.wrapped(), Some("Billing::ChargeJob"));
    assert_eq!(job.display_class(), "Billing::ChargeJob");
    assert_eq!(job.retry(), Some(rustq_core::Retry::Times(5)));
    assert_eq!(job.retry_count(), Some(2));
    assert_eq!(job.retry_queue(), Some("low"));
    assert!(!job.dead());
    assert_eq!(job.backtrace_lines(), Some(10));
    assert_eq!(job.tags(), vec!["a", "b"]);
    assert_eq!(job.retry_for(), Some(3600.0));
    assert_eq!(job.error_message(), Some("boom ☃"));
    assert_eq!(job.error_class(), Some("RuntimeError"));
    assert_eq!(
        job.error_backtrace().unwrap(),
        vec!["a.rb:1:in `x'", "b.rb:2"]
    );
    assert_eq!(job.failed_at_secs(), Some(1700000001.25));
    assert_eq!(job.retried_at_secs(), Some(1700000002.0));
    assert_eq!(job.created_at_secs(), Some(1700000000.5));
    assert!(job.enqueued_at_secs().is_some());

    // rustq → Sidekiq: pushed again through rustq's client (new enqueued_at, all else kept, and
    // — as it has `unique_for` — the digest of the unique lock rustq took, docs/limits.md),
    // Sidekiq's API sees the same hash.
    let client = Client::connect(&RedisConfig::new(redis.url()))
        .await
        .unwrap();
    redis.cli(&["DEL", "queue:critical"]);
    let mut item = job.fields().clone();
    item.shift_remove("enqueued_at");
    client.push(item).await.unwrap();
    let check = format!(
        r#"
require "sidekiq/api"
require "json"
original = JSON.parse({original:?})
job = Sidekiq::Queue.new("critical").first
raise "no unique_digest" unless job.item["unique_digest"].to_s.match?(/\A\h{{40}}\z/)
again = job.item.reject {{ |k, _| %w[enqueued_at unique_digest].include?(k) }}
raise "changed: #{{(original.to_a - again.to_a).inspect}} vs #{{(again.to_a - original.to_a).inspect}}" unless again == original.reject {{ |k, _| k == "enqueued_at" }}
raise "key order changed" unless again.keys == original.keys - ["enqueued_at"]
raise "display_class" unless job.display_class == "Billing::ChargeJob"
puts "ok"
"#
    );
    assert_eq!(ruby(&redis.url(), &check).trim(), "ok");
}
