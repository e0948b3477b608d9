//! TLS (`rediss://` with a private CA) for the client and the worker, against a local
//! TLS-enabled `redis-server`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rustq_core::{Client, RedisConfig};
use rustq_interop::{wait_until, RedisServer, TestWorker};
use serde_json::json;

const WORKER: &str = env!("CARGO_BIN_EXE_rustq-test-worker");

/// Makes a CA and a server certificate for 127.0.0.1/localhost in `dir`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=rustq test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

#[test]
fn client_and_worker_speak_tls_with_a_private_ca() {
    let certs = tempfile_dir();
    make_certificates(&certs);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = |name: &str| certs.join(name).display().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &file("server.pem"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.pem"),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}/0");

    // Without the CA the server's certificate is refused; with it, pushes work.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let untrusted = Client::connect(&RedisConfig::new(url.clone())).await;
        assert!(
            untrusted.is_err(),
            "a certificate from an unknown CA was accepted"
        );
        let mut config = RedisConfig::new(url.clone());
        config.ca_file = Some(certs.join("ca.pem"));
        let client = Client::connect(&config)
            .await
            .expect("TLS connect with the CA");
        for class in ["TlsNoopJob", "FailJobOverTls"] {
            let item = json!({"class": class, "args": ["over tls"]});
            client
                .push(item.as_object().unwrap().clone())
                .await
                .unwrap();
        }
    });
    assert_eq!(
        redis.cli(&["LLEN", "queue:default"]),
        "2",
        "pushed over TLS, read over plain TCP"
    );

    let ca = file("ca.pem");
    let worker = TestWorker::start(
        WORKER,
        &redis,
        &[
            "--redis-url",
            &url,
            "--redis-ca-file",
            &ca,
            "--noop",
            "TlsNoopJob",
            "-t",
            "1",
        ],
    );
    let ok = wait_until(Duration::from_secs(20), || {
        redis.cli(&["LLEN", "queue:default"]) == "0"
            && redis.cli(&["ZCARD", "retry"]) == "1"
            && redis.cli(&["SCARD", "processes"]) == "1"
    });
    assert!(ok, "{}", worker.log_text());
    assert!(redis
        .cli(&["ZRANGE", "retry", "0", "-1"])
        .contains("uninitialized constant FailJobOverTls"));
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rustq-tls-{}-{}",
        std::process::id(),
        rustq_core::generate_jid()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
