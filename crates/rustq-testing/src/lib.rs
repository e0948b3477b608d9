//! Test support shared by rustq's test suites.
//!
//! Sidekiq's keys have no namespace, so no two test processes may share a Redis: every test
//! starts its own [`RedisServer`] on a free loopback port (or unix socket) and stops it on drop.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A private `redis-server` living in its own temporary directory.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free loopback port with persistence off.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--appendonly", "yes"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer::unstarted(0, extra);
        // A free port can be taken between our probe and redis-server's bind; try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start; is it installed (apt-get install redis-server)?");
    }

    /// Starts a server on a given port (for tests where a client waited for it to appear).
    pub fn start_on(port: u16) -> RedisServer {
        let mut server = RedisServer::unstarted(port, &[]);
        assert!(server.spawn(), "redis-server did not start on port {port}");
        server
    }

    fn unstarted(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("rustq-redis-")
            .tempdir()
            .expect("create a temporary directory for redis-server");
        RedisServer {
            child: None,
            dir,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn spawn(&mut self) -> bool {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let _ = status;
                self.child = None;
                return false;
            }
            if ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// `redis://127.0.0.1:<port>/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (AOF files, logs, TLS material).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `redis-cli` against this server and returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server (SIGKILL), keeping its directory so it can be restarted.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(std::io::Read::read(&mut stream, &mut buf), Ok(n) if n > 0 && buf.starts_with(b"+PONG"))
}

/// The repository root (the directory holding the workspace `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !(dir.join("crates").is_dir() && dir.join("Cargo.toml").is_file()) {
        if !dir.pop() {
            panic!(
                "repository root not found above {}",
                env!("CARGO_MANIFEST_DIR")
            );
        }
    }
    dir
}

/// Runs a Ruby script with `REDIS_URL` set, and returns its stdout. Panics with stderr on failure.
///
/// The script runs with Sidekiq's per-push deprecation warning of redis-rb 4.8 silenced. Lines
/// of Sidekiq's own log (7.x and 8.x log to stdout when a client connects) are left out.
pub fn ruby(redis_url: &str, script: &str) -> String {
    let out = ruby_output(redis_url, script, &[]);
    assert!(
        out.status.success(),
        "ruby failed ({}):\n--- script ---\n{script}\n--- stderr ---\n{}\n--- stdout ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8(out.stdout).expect("ruby printed UTF-8");
    stdout
        .split_inclusive('\n')
        .filter(|line| !is_sidekiq_log_line(line))
        .collect()
}

/// `2026-12-03T18:35:32.839Z pid=32186 tid=p3a INFO: ...` (7.x) or
/// `INFO  2026-12-03T18:36:13.567Z pid=1055 tid=1b7: ...` (8.x): a line of Sidekiq's logger.
fn is_sidekiq_log_line(line: &str) -> bool {
    line.contains("Z pid=") && line.contains(" tid=")
}

/// Like [`ruby`], but returns the whole [`Output`] and takes extra environment variables.
pub fn ruby_output(redis_url: &str, script: &str, env: &[(&str, &str)]) -> Output {
    let prelude = "require 'redis'\nRedis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)\n";
    Command::new("ruby")
        .arg("-e")
        .arg(format!("{prelude}{script}"))
        .env("REDIS_URL", redis_url)
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .output()
        .expect("run ruby (apt-get install ruby)")
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves nothing behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` from `addr` (`host:port`) over HTTP/1.1 with `headers`: the status and the body, or
/// `None` when nothing answers within 5 s.
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Some((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A stand-in OpenTelemetry collector: accepts OTLP/HTTP JSON posts on a loopback port and keeps
/// every span they carry (as JSON objects, with `resource` added from their resource's
/// attributes). Answers each post `200 {}`.
pub struct OtlpReceiver {
    port: u16,
    spans: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("its address").port();
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve_otlp(stream, &kept));
            }
        });
        OtlpReceiver { port, spans }
    }

    /// `http://127.0.0.1:<port>`, as `otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        self.spans.lock().unwrap().clone()
    }
}

fn serve_otlp(stream: TcpStream, spans: &std::sync::Mutex<Vec<serde_json::Value>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(post) = serde_json::from_slice::<serde_json::Value>(&body) {
            let mut kept = spans.lock().unwrap();
            for resource_spans in post["resourceSpans"].as_array().into_iter().flatten() {
                for scope in resource_spans["scopeSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        let mut span = span.clone();
                        span["resource"] = resource_spans["resource"].clone();
                        kept.push(span);
                    }
                }
            }
        }
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The value of attribute `key` of an OTLP JSON span (or resource): its string, int or bool.
pub fn otlp_attribute(item: &serde_json::Value, key: &str) -> Option<String> {
    let attribute = item["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?;
    let value = &attribute["value"];
    value["stringValue"]
        .as_str()
        .map(str::to_string)
        .or_else(|| value["intValue"].as_str().map(str::to_string))
        .or_else(|| value["intValue"].as_i64().map(|v| v.to_string()))
        .or_else(|| value["boolValue"].as_bool().map(|v| v.to_string()))
}
