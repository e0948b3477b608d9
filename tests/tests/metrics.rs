//! The HTTP endpoint (`--http`): `/metrics` read by a real Prometheus (Debian's `prometheus`,
//! which `bin/setup` installs) and checked by `promtool`, the alert rules' own `promtool` tests,
//! the Kubernetes probes through a Redis outage, the token, one fleet reporter, bad settings.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rustq_interop::{config_file, ledger, TestWorker};
use rustq_testing::{free_port, http_get, repo_root, wait_until, ChildGuard, RedisServer};

const WORKER: &str = env!("CARGO_BIN_EXE_rustq-test-worker");

fn tool(name: &str) -> &'static str {
    let path: &'static str = match name {
        "prometheus" => "/usr/bin/prometheus",
        _ => "/usr/bin/promtool",
    };
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's prometheus package (bin/setup does)"
    );
    path
}

fn job(class: &str, jid: &str, retry: serde_json::Value) -> String {
    let now = rustq_core::wire::now_secs();
    serde_json::json!({
        "class": class, "args": [], "jid": jid, "queue": "default", "retry": retry,
        "created_at": now, "enqueued_at": now,
    })
    .to_string()
}

fn push(redis: &RedisServer, payloads: &[String]) {
    let mut args = vec!["LPUSH", "queue:default"];
    args.extend(payloads.iter().map(String::as_str));
    redis.cli(&args);
    redis.cli(&["SADD", "queues", "default"]);
}

fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics", &[]).expect("the endpoint answers");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `line_start` (a name with its labels, as written), if present.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
}

fn start(redis: &RedisServer, addr: &str, extra: &[&str]) -> TestWorker {
    let mut args = vec!["-c", "5", "--http", addr];
    args.extend_from_slice(extra);
    let worker = TestWorker::start(WORKER, redis, &args);
    assert!(
        wait_until(Duration::from_secs(20), || {
            http_get(addr, "/readyz", &[]).is_some_and(|(s, _)| s == 200)
        }),
        "never ready: {}",
        worker.log_text()
    );
    worker
}

#[test]
fn prometheus_scrapes_the_job_counts_and_promtool_accepts_them() {
    let redis = RedisServer::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let _worker = start(&redis, &addr, &[]);
    let ok: Vec<String> = (0..40)
        .map(|i| job("LedgerJob", &format!("{i:024}"), true.into()))
        .collect();
    push(&redis, &ok);
    push(
        &redis,
        &[
            job("FailJob", &"r".repeat(24), 3.into()),
            job("FailJob", &"s".repeat(24), 3.into()),
            job("FailJob", &"d".repeat(24), 0.into()),
        ],
    );
    assert!(wait_until(Duration::from_secs(30), || {
        ledger(&redis)
            .iter()
            .filter(|e| e["class"] == "LedgerJob")
            .count()
            == 40
            && redis.cli(&["ZCARD", "retry"]).trim() == "2"
            && redis.cli(&["ZCARD", "dead"]).trim() == "1"
    }));
    // Jobs waiting in a queue nobody fetches: the fleet's queue gauges.
    redis.cli(&[
        "LPUSH",
        "queue:later",
        &job("LedgerJob", &"l".repeat(24), true.into()),
    ]);
    redis.cli(&["SADD", "queues", "later"]);

    let text = scrape(&addr);
    let counted = |name: &str, class: &str| {
        sample(
            &text,
            &format!("{name}{{class=\"{class}\",queue=\"default\"}}"),
        )
    };
    assert_eq!(
        counted("rustq_jobs_executed_total", "LedgerJob"),
        Some(40.0),
        "{text}"
    );
    assert_eq!(
        counted("rustq_jobs_succeeded_total", "LedgerJob"),
        Some(40.0)
    );
    assert_eq!(counted("rustq_jobs_failed_total", "FailJob"), Some(3.0));
    assert_eq!(counted("rustq_jobs_retried_total", "FailJob"), Some(2.0));
    assert_eq!(counted("rustq_jobs_dead_total", "FailJob"), Some(1.0));
    assert_eq!(
        counted("rustq_job_duration_seconds_count", "LedgerJob"),
        Some(40.0)
    );
    assert_eq!(
        counted("rustq_job_latency_seconds_count", "LedgerJob"),
        Some(40.0)
    );
    assert_eq!(sample(&text, "rustq_concurrency"), Some(5.0));
    assert_eq!(sample(&text, "rustq_redis_up"), Some(1.0));
    assert_eq!(sample(&text, "rustq_fleet_reporter"), Some(1.0));
    assert_eq!(
        sample(&text, "rustq_queue_size{queue=\"later\"}"),
        Some(1.0)
    );
    assert!(sample(&text, "rustq_queue_latency_seconds{queue=\"later\"}").is_some());
    assert_eq!(sample(&text, "rustq_retry_size"), Some(2.0));
    assert_eq!(sample(&text, "rustq_dead_size"), Some(1.0));
    assert_eq!(sample(&text, "rustq_fleet_processes"), Some(1.0));
    assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|b| b > 0.0));

    // promtool reads it as Prometheus would, and lints names, types and help.
    let file = redis.dir().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let lint = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("run promtool");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // A real Prometheus scrapes it; PromQL through its HTTP API sees the 40 jobs.
    let web = format!("127.0.0.1:{}", free_port());
    let config = redis.dir().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: rustq\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(redis.dir().join("prometheus.log")).unwrap();
    let _prometheus = ChildGuard::spawn(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                redis.dir().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    let query = "/api/v1/query?query=sum(rustq_jobs_executed_total%7Bclass%3D%22LedgerJob%22%7D)";
    let mut last = String::new();
    let seen = wait_until(Duration::from_secs(60), || {
        last = http_get(&web, query, &[])
            .map(|(_, b)| b)
            .unwrap_or_default();
        last.contains(r#""40"]"#)
    });
    assert!(
        seen,
        "Prometheus never saw 40 jobs: {last}\n{}",
        std::fs::read_to_string(redis.dir().join("prometheus.log")).unwrap_or_default()
    );
    let up = http_get(&web, "/api/v1/query?query=rustq_redis_up", &[])
        .unwrap()
        .1;
    assert!(up.contains(r#""1"]"#), "{up}");

    // Every panel of the Grafana dashboard is valid PromQL that finds data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("contrib/grafana/rustq.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$job", ".+");
            let path = format!("/api/v1/query?query={}", url_encode(&expr));
            let mut answer = String::new();
            let found = wait_until(Duration::from_secs(30), || {
                answer = http_get(&web, &path, &[])
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                answer.contains(r#""status":"success""#) && !answer.contains(r#""result":[]"#)
            });
            assert!(found, "panel {:?}: {expr} -> {answer}", panel["title"]);
        }
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    let dir = repo_root().join("contrib/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(tool("promtool"))
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn status(addr: &str, path: &str) -> u16 {
    http_get(addr, path, &[]).map_or(0, |(s, _)| s)
}

#[test]
fn probes_follow_redis_and_quiet() {
    let mut redis = RedisServer::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = config_file(&redis, "heartbeat_interval: 0.5\n");
    let worker = start(&redis, &addr, &["-C", &config]);
    assert_eq!(status(&addr, "/livez"), 200);

    redis.kill();
    let down = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || status(&addr, "/readyz") == 503),
        "/readyz still {} 5 s into the outage",
        status(&addr, "/readyz")
    );
    let (_, why) = http_get(&addr, "/readyz", &[]).unwrap();
    assert!(why.contains("Redis does not answer"), "{why}");
    // Three heartbeat intervals (+5 s) would fail /livez if the loop stalled on Redis: the
    // outage outlasts that, and /livez stays 200 throughout.
    while down.elapsed() < Duration::from_secs(10) {
        assert_eq!(status(&addr, "/livez"), 200, "{}", worker.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let scraped = scrape(&addr);
    assert_eq!(sample(&scraped, "rustq_redis_up"), Some(0.0), "{scraped}");
    assert!(!scraped.contains("rustq_queue_size"));

    redis.restart();
    assert!(
        wait_until(Duration::from_secs(20), || status(&addr, "/readyz") == 200),
        "not ready after Redis came back: {}",
        worker.log_text()
    );
    assert_eq!(status(&addr, "/livez"), 200);

    worker.signal("TSTP");
    assert!(wait_until(Duration::from_secs(5), || {
        http_get(&addr, "/readyz", &[]).is_some_and(|(s, b)| s == 503 && b.contains("quiet"))
    }));
    assert_eq!(status(&addr, "/livez"), 200);
}

#[test]
fn metrics_need_the_token_when_one_is_set() {
    let redis = RedisServer::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let _worker = start(&redis, &addr, &["--http-token", "s3cret"]);
    assert_eq!(status(&addr, "/metrics"), 401);
    let wrong = http_get(&addr, "/metrics", &[("Authorization", "Bearer s3cres")]).unwrap();
    assert_eq!(wrong.0, 401);
    let right = http_get(&addr, "/metrics", &[("Authorization", "Bearer s3cret")]).unwrap();
    assert_eq!(right.0, 200);
    assert!(right.1.contains("rustq_busy"));
    assert_eq!(status(&addr, "/livez"), 200);
}

#[test]
fn one_process_reports_the_fleet_and_another_takes_over() {
    let redis = RedisServer::start();
    let a = format!("127.0.0.1:{}", free_port());
    let b = format!("127.0.0.1:{}", free_port());
    let mut workers = [start(&redis, &a, &[]), start(&redis, &b, &[])];
    let reporter = |addr: &str| sample(&scrape(addr), "rustq_fleet_reporter") == Some(1.0);
    let (ra, rb) = (reporter(&a), reporter(&b));
    assert!(ra ^ rb, "exactly one reports the fleet: {ra} {rb}");
    let with_sizes = [&a, &b]
        .iter()
        .filter(|addr| scrape(addr).contains("rustq_retry_size"))
        .count();
    assert_eq!(with_sizes, 1);
    let (gone, other) = if ra { (0, &b) } else { (1, &a) };
    workers[gone].signal("TERM");
    assert!(workers[gone].wait(Duration::from_secs(30)).is_some());
    assert!(
        wait_until(Duration::from_secs(10), || reporter(other)),
        "the remaining process never took over"
    );
}

#[test]
fn bad_http_settings_stop_the_worker_at_boot_with_exit_2() {
    let redis = RedisServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let config = config_file(&redis, "http: not-an-address\n");
    let cases: [(&[&str], &str); 4] = [
        (&["--http", &taken], "cannot listen on"),
        (&["--http", "nonsense"], "--http must be an address"),
        (&["--http", "0.0.0.0:9394"], "http_token"),
        (&["-C", &config], "http"),
    ];
    for (args, says) in cases {
        let mut worker = TestWorker::start(WORKER, &redis, args);
        let status = worker.wait(Duration::from_secs(20)).expect("exits");
        let log = worker.log_text();
        assert_eq!(status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains(says), "{args:?} should say {says:?}: {log}");
    }
    let mut worker = TestWorker::start(WORKER, &redis, &["-C", &config]);
    worker.wait(Duration::from_secs(20));
    assert!(
        worker.log_text().contains("rustq.yml"),
        "{}",
        worker.log_text()
    );
}
