//! Cross-language tests: rustq and real Sidekiq sharing one private Redis.
//!
//! The Ruby side lives in `tests/ruby/`; [`Sidekiq`] runs a real `sidekiq` process against it:
//! Debian's 6.4.1, or under `../shared/peers/with-sidekiq 7|8` (`bin/test-interop`) that
//! version's own CLI and library.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

pub use rustq_testing::{repo_root, ruby, wait_until, ChildGuard, RedisServer};

/// A real `sidekiq` process running `tests/ruby/sidekiq_app.rb`; killed when dropped.
pub struct Sidekiq {
    child: ChildGuard,
    pub log: PathBuf,
}

impl Sidekiq {
    /// Starts `sidekiq -r tests/ruby/sidekiq_app.rb -c 2` on the given queues.
    pub fn start(redis: &RedisServer, queues: &[&str]) -> Sidekiq {
        Sidekiq::start_app(
            redis,
            &repo_root().join("tests/ruby/sidekiq_app.rb"),
            queues,
        )
    }

    /// Starts `sidekiq -r APP -c 2` on the given queues.
    pub fn start_app(redis: &RedisServer, app: &std::path::Path, queues: &[&str]) -> Sidekiq {
        let log = redis.dir().join("sidekiq.log");
        let mut cmd = sidekiq_command();
        cmd.arg("-r").arg(app).args(["-c", "2", "-t", "1"]);
        for q in queues {
            cmd.args(["-q", q]);
        }
        cmd.env("REDIS_URL", redis.url())
            .env(
                "RUBYOPT",
                format!("{} -W0", std::env::var("RUBYOPT").unwrap_or_default()),
            )
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("sidekiq log"))
            .stderr(Stdio::from(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("sidekiq log"),
            ));
        Sidekiq {
            child: ChildGuard::spawn(&mut cmd),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Stops it as a deploy would (TERM: running jobs finish, the rest go back to their queue)
    /// and waits for it to exit, at most `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        wait_until(timeout, || self.child.0.try_wait().ok().flatten().is_some())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The `sidekiq` CLI of the Sidekiq under test: that version's own under `with-sidekiq 7|8`
/// (which sets `SIDEKIQ_PEER_ROOT`), else Debian's.
pub fn sidekiq_command() -> Command {
    match std::env::var_os("SIDEKIQ_PEER_ROOT") {
        Some(root) => {
            let mut cmd = Command::new("ruby");
            cmd.arg(PathBuf::from(root).join("bin/sidekiq"));
            cmd
        }
        None => Command::new("sidekiq"),
    }
}

/// The major version of the Sidekiq under test: 7 or 8 under `with-sidekiq`, else 6.
pub fn sidekiq_major() -> u8 {
    let root = std::env::var("SIDEKIQ_PEER_ROOT").unwrap_or_default();
    if root.contains("sidekiq-8") {
        8
    } else if root.contains("sidekiq-7") {
        7
    } else {
        6
    }
}

/// Waits until the list `results` holds `n` entries and returns them parsed.
pub fn wait_for_results(
    redis: &RedisServer,
    n: usize,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    let ok = wait_until(timeout, || {
        redis
            .cli(&["LLEN", "results"])
            .parse::<usize>()
            .unwrap_or(0)
            >= n
    });
    let raw = redis.cli(&["LRANGE", "results", "0", "-1"]);
    assert!(ok, "expected {n} results within {timeout:?}, got:\n{raw}");
    raw.lines()
        .map(|l| serde_json::from_str(l).expect("result JSON"))
        .collect()
}

/// A worker process (`rustq-test-worker` or `rustq-worker`) with its log in the Redis dir.
pub struct TestWorker {
    child: ChildGuard,
    pub log: PathBuf,
}

impl TestWorker {
    /// Starts `binary` with `args` against `redis`, logging to a file next to the server.
    pub fn start(binary: &str, redis: &RedisServer, args: &[&str]) -> TestWorker {
        TestWorker::start_with_env(binary, redis, args, &[])
    }

    /// As [`TestWorker::start`], with more environment variables.
    pub fn start_with_env(
        binary: &str,
        redis: &RedisServer,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TestWorker {
        let n = std::fs::read_dir(redis.dir())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = redis.dir().join(format!("worker-{n}.log"));
        let file = std::fs::File::create(&log).expect("worker log");
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env("REDIS_URL", redis.url())
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .current_dir(redis.dir())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        TestWorker {
            child: ChildGuard::spawn(&mut cmd),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `TSTP`, `TTIN`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.0.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Entries of the `ledger` list written by `rustq-test-worker`'s handlers.
pub fn ledger(redis: &RedisServer) -> Vec<serde_json::Value> {
    redis
        .cli(&["LRANGE", "ledger", "0", "-1"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("ledger JSON"))
        .collect()
}

/// A Ruby-host worker: `rustq-worker -r <app>` (an app under `tests/ruby/`) with `args`.
pub fn ruby_host_worker(redis: &RedisServer, app: &str, args: &[&str]) -> TestWorker {
    let root = repo_root();
    let lib = root.join("lib");
    let exe = root.join("exe/rustq-worker");
    let app = root.join("tests/ruby").join(app);
    let mut all = vec![
        "-I",
        lib.to_str().expect("UTF-8 path"),
        exe.to_str().expect("UTF-8 path"),
        "-r",
        app.to_str().expect("UTF-8 path"),
    ];
    all.extend_from_slice(args);
    TestWorker::start("ruby", redis, &all)
}

/// Writes a config file into the Redis dir and returns its path. Written aside and renamed into
/// place: a worker started a moment ago may be reading the same path, and must never see it
/// truncated (it would start with the defaults: another queue).
pub fn config_file(redis: &RedisServer, yaml: &str) -> String {
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = redis.dir().join("rustq.yml");
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let aside = redis.dir().join(format!("rustq.yml.{n}"));
    std::fs::write(&aside, yaml).expect("write config");
    std::fs::rename(&aside, &path).expect("move config into place");
    path.display().to_string()
}

/// What a fault case did to a set of jobs: every pushed jid should have run at least once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub pushed: usize,
    pub ran: usize,
    pub lost: usize,
    pub duplicated: usize,
}

/// Compares the pushed jids with the ledger's entries.
pub fn tally(pushed: &std::collections::HashSet<String>, ledger: &[serde_json::Value]) -> Tally {
    let ran: Vec<&str> = ledger
        .iter()
        .filter_map(|e| e["jid"].as_str())
        .filter(|jid| pushed.contains(*jid))
        .collect();
    let unique: std::collections::HashSet<&str> = ran.iter().copied().collect();
    Tally {
        pushed: pushed.len(),
        ran: ran.len(),
        lost: pushed.len() - unique.len(),
        duplicated: ran.len() - unique.len(),
    }
}

/// Prints a fault case's summary line and appends it to `target/fault-summary.txt`, which
/// `bin/test` prints at the end (test output is captured, this file is not).
pub fn report(case: &str, t: Tally, note: &str) {
    let line = format!(
        "fault case {case}: pushed {}, ran {}, lost {}, duplicated {}{}",
        t.pushed,
        t.ran,
        t.lost,
        t.duplicated,
        if note.is_empty() {
            String::new()
        } else {
            format!(" ({note})")
        }
    );
    println!("{line}");
    let path = repo_root().join("target/fault-summary.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}
