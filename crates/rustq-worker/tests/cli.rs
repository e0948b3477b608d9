//! `rustq-worker` as an operator meets it: flags, config file, `exec` handlers, logs.

use std::process::Command;
use std::time::Duration;

use rustq_testing::{wait_until, ChildGuard, RedisServer};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_rustq-worker");

fn worker(redis: &RedisServer, args: &[&str], url: &str) -> (ChildGuard, std::path::PathBuf) {
    let log = redis.dir().join(format!("worker-{}.log", args.len()));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("REDIS_URL", url)
        .env_remove("RUST_LOG")
        .current_dir(redis.dir())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    (ChildGuard::spawn(&mut cmd), log)
}

fn push(redis: &RedisServer, job: Value) {
    redis.cli(&[
        "LPUSH",
        &format!("queue:{}", job["queue"].as_str().unwrap_or("default")),
        &job.to_string(),
    ]);
}

#[test]
fn help_explains_the_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--concurrency",
        "--queue",
        "--config",
        "--timeout",
        "--redis-url",
        "--log-format",
        "--log-level",
        "--tag",
        "--wire-version",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn bad_options_exit_2_with_a_message() {
    let out = Command::new(BIN)
        .args(["-q", "no spaces allowed"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("valid queue name"));
    let dir = tempfile_dir();
    let config = dir.join("bad.yml");
    std::fs::write(&config, "concurrency: many\n").unwrap();
    let out = Command::new(BIN)
        .args(["-C", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("concurrency"));
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rustq-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn exec_handlers_get_the_job_on_stdin_and_never_a_shell() {
    let redis = RedisServer::start();
    let dir = redis.dir().to_path_buf();
    std::fs::write(
        dir.join("report.rb"),
        r#"require "json"
job = JSON.parse($stdin.read)
File.write(File.join(ARGV[0], "out-#{ENV["RUSTQ_JID"]}.json"), JSON.generate("args" => job["args"], "class" => ENV["RUSTQ_CLASS"], "queue" => ENV["RUSTQ_QUEUE"]))
puts "reported #{job["jid"]}"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("fail.rb"),
        "$stderr.puts 'printer on fire'\nexit 3\n",
    )
    .unwrap();
    let config = format!(
        r#"
:concurrency: 4
:queues: [default]
heartbeat_interval: 1
handlers:
  ReportJob:
    exec: [ruby, "{dir}/report.rb", "{dir}"]
  FailingJob:
    exec: [ruby, "{dir}/fail.rb"]
  HangingJob:
    exec: [sleep, "30"]
    timeout: 1
"#,
        dir = dir.display()
    );
    std::fs::write(dir.join("rustq.yml"), config).unwrap();
    let evil = [
        "; touch pwned1; echo ",
        "$(touch pwned2)",
        "`touch pwned3`",
        "\"quoted\" 'single'",
    ];
    push(
        &redis,
        json!({"class": "ReportJob", "args": evil, "jid": "a".repeat(24), "queue": "default", "retry": true}),
    );
    push(
        &redis,
        json!({"class": "FailingJob", "args": [], "jid": "b".repeat(24), "queue": "default", "retry": true}),
    );
    push(
        &redis,
        json!({"class": "HangingJob", "args": [], "jid": "c".repeat(24), "queue": "default", "retry": true}),
    );
    let (_worker, log) = worker(&redis, &["-C", "rustq.yml"], &redis.url());
    let out_file = dir.join(format!("out-{}.json", "a".repeat(24)));
    let ok = wait_until(Duration::from_secs(20), || {
        out_file.exists() && redis.cli(&["ZCARD", "retry"]) == "2"
    });
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ok,
        "retry={} log:\n{log_text}",
        redis.cli(&["ZCARD", "retry"])
    );
    let out: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(out["args"], json!(evil));
    assert_eq!(out["class"], "ReportJob");
    assert_eq!(out["queue"], "default");
    for f in ["pwned1", "pwned2", "pwned3"] {
        assert!(!dir.join(f).exists(), "job data reached a shell ({f})");
    }
    let retries = redis.cli(&["ZRANGE", "retry", "0", "-1"]);
    assert!(
        retries.contains("exited with") && retries.contains("printer on fire"),
        "{retries}"
    );
    assert!(retries.contains("time limit of 1.0 s"), "{retries}");
    assert!(
        log_text.contains("reported aaaa"),
        "exec stdout not logged:\n{log_text}"
    );
}

#[test]
fn json_logs_carry_class_jid_and_elapsed_ms_and_never_the_password() {
    let redis = RedisServer::start();
    redis.cli(&[
        "ACL",
        "SETUSER",
        "worker",
        "on",
        ">hunter2-secret",
        "~*",
        "&*",
        "+@all",
    ]);
    redis.cli(&["ACL", "SETUSER", "default", "off"]);
    let url = format!("redis://worker:hunter2-secret@127.0.0.1:{}/0", redis.port());
    let auth = [
        "--user",
        "worker",
        "--pass",
        "hunter2-secret",
        "--no-auth-warning",
    ];
    let cli = |args: &[&str]| redis.cli(&[&auth[..], args].concat());
    cli(&[
        "LPUSH",
        "queue:default",
        r#"{"class":"NoopJob","args":[],"jid":"dddddddddddddddddddddddd","queue":"default"}"#,
    ]);
    let (mut worker, log) = worker(
        &redis,
        &["--noop", "NoopJob", "--log-format", "json", "-t", "1"],
        &url,
    );
    assert!(wait_until(Duration::from_secs(15), || cli(&[
        "LLEN",
        "queue:default"
    ]) == "0"
        && cli(&["SCARD", "processes"]) == "1"));
    let identity = cli(&["SMEMBERS", "processes"]);
    let info = cli(&["HGET", &identity, "info"]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-TERM", &worker.pid().to_string()])
        .status();
    assert!(wait_until(Duration::from_secs(10), || worker
        .0
        .try_wait()
        .ok()
        .flatten()
        .is_some()));
    let text = std::fs::read_to_string(&log).unwrap();
    let done = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "done")
        .unwrap_or_else(|| panic!("no JSON 'done' line:\n{text}"));
    assert_eq!(done["class"], "NoopJob");
    assert_eq!(done["jid"], "d".repeat(24));
    assert!(done["elapsed_ms"].is_number());
    assert!(text.contains("REDACTED"), "{text}");
    assert!(
        !text.contains("hunter2-secret"),
        "password in the log:\n{text}"
    );
    assert!(
        !info.contains("hunter2-secret") && info.contains("\"concurrency\":10"),
        "{info}"
    );
}

/// Whether a process with this pid still runs (and is not a zombie).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn exec_programs_end_whole_and_see_only_the_environment_they_are_given() {
    let redis = RedisServer::start();
    let dir = redis.dir().to_path_buf();
    let config = format!(
        r#"
:queues: [default]
handlers:
  ForkingJob:
    exec: [sh, -c, "env > {dir}/env.txt; sleep 300 & echo $! > {dir}/timed-out.pid; wait"]
    timeout: 1
  LeavingJob:
    exec: [sh, -c, "env > {dir}/env-named.txt; sleep 300 & echo $! > {dir}/left.pid; echo started a grandchild"]
    env: [RUSTQ_TEST_SHARED]
"#,
        dir = dir.display()
    );
    std::fs::write(dir.join("rustq.yml"), config).unwrap();
    push(
        &redis,
        json!({"class": "ForkingJob", "args": [], "jid": "d".repeat(24), "queue": "default", "retry": true}),
    );
    push(
        &redis,
        json!({"class": "LeavingJob", "args": [], "jid": "e".repeat(24), "queue": "default", "retry": true}),
    );
    let log = redis.dir().join("worker-exec.log");
    let file = std::fs::File::create(&log).unwrap();
    let _worker = ChildGuard::spawn(
        Command::new(BIN)
            .args(["-C", "rustq.yml"])
            .env("REDIS_URL", redis.url())
            .env("RUSTQ_TEST_SECRET", "s3cret")
            .env("RUSTQ_TEST_SHARED", "shared")
            .env_remove("RUST_LOG")
            .current_dir(redis.dir())
            .stdout(file.try_clone().unwrap())
            .stderr(file),
    );
    // The leaving job is done although its grandchild held its output; the forking one timed out.
    let finished = wait_until(Duration::from_secs(20), || {
        redis.cli(&["ZCARD", "retry"]) == "1"
            && redis.cli(&["LLEN", "queue:default"]) == "0"
            && redis
                .cli(&["KEYS", "rustq:inprogress:*"])
                .lines()
                .all(|k| k.is_empty() || redis.cli(&["LLEN", k]) == "0")
    });
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(finished, "{log_text}");
    let retried = redis.cli(&["ZRANGE", "retry", "0", "-1"]);
    assert!(
        retried.contains(&"d".repeat(24)) && retried.contains("Rustq::TimeoutError"),
        "{retried}"
    );
    assert!(log_text.contains("started a grandchild"), "{log_text}");
    for pid_file in ["timed-out.pid", "left.pid"] {
        let pid = std::fs::read_to_string(dir.join(pid_file)).unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || !alive(&pid)),
            "the grandchild of {pid_file} outlived its job"
        );
    }
    let env = std::fs::read_to_string(dir.join("env.txt")).unwrap();
    assert!(env.contains("PATH=") && env.contains("RUSTQ_JID="), "{env}");
    assert!(
        !env.contains("REDIS_URL") && !env.contains("s3cret"),
        "the worker's environment leaked to the program: {env}"
    );
    let named = std::fs::read_to_string(dir.join("env-named.txt")).unwrap();
    assert!(named.contains("RUSTQ_TEST_SHARED=shared"), "{named}");
    assert!(!named.contains("s3cret"), "{named}");
}
