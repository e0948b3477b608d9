//! Redis behind Sentinel: a master, a replica and three real Sentinels (`redis-server
//! --sentinel`). The worker and the pushing client name only the Sentinels
//! (`redis+sentinel://…/mymaster`); the master is killed mid-run, the Sentinels promote the
//! replica, and everything that was acknowledged runs.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustq_core::{Client, RedisConfig};
use rustq_interop::{
    config_file, ledger, report, tally, wait_until, ChildGuard, RedisServer, TestWorker,
};
use serde_json::json;

const WORKER: &str = env!("CARGO_BIN_EXE_rustq-test-worker");
const MASTER: &str = "mymaster";

/// A Sentinel watching `master_port`, on a spare port; killed when dropped.
struct Sentinel {
    _child: ChildGuard,
    port: u16,
}

impl Sentinel {
    fn start(dir: &std::path::Path, index: usize, master_port: u16) -> Sentinel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let conf = dir.join(format!("sentinel-{index}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir.display(),
                dir.join(format!("sentinel-{index}.log")).display()
            ),
        )
        .unwrap();
        let child = ChildGuard::spawn(
            Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        Sentinel {
            _child: child,
            port,
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The master's port as this Sentinel names it.
    fn master_port(&self) -> String {
        self.cli(&["SENTINEL", "get-master-addr-by-name", MASTER])
            .lines()
            .nth(1)
            .unwrap_or("")
            .to_string()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Pushes `n` LedgerJobs one by one through `client`, each retried until Redis acknowledges
/// it; returns the jids acknowledged.
async fn push_acknowledged(client: &Client, n: usize, tag: &str) -> HashSet<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut jids = HashSet::new();
    for i in 0..n {
        let item = json!({"class": "SlowJob", "args": [5], "tags": [tag, i.to_string()]});
        loop {
            match client.push(item.as_object().unwrap().clone()).await {
                Ok(jid) => {
                    jids.insert(jid);
                    break;
                }
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "pushes did not carry on: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
            }
        }
    }
    jids
}

/// A master, its replica, a ledger Redis outside the pair and three Sentinels that agree on
/// them; with the `redis+sentinel://` URL naming the Sentinels.
struct Cluster {
    master: RedisServer,
    replica: RedisServer,
    ledger: RedisServer,
    sentinels: Vec<Sentinel>,
    url: String,
}

impl Cluster {
    fn start() -> Cluster {
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
        let ledger = RedisServer::start();
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|i| Sentinel::start(master.dir(), i, master.port()))
            .collect();
        assert!(
            wait_until(Duration::from_secs(20), || {
                sentinels.iter().all(|s| {
                    s.master_port() == master.port().to_string()
                        && s.cli(&["SENTINEL", "replicas", MASTER])
                            .contains(&replica.port().to_string())
                        && s.cli(&["SENTINEL", "sentinels", MASTER])
                            .matches("name")
                            .count()
                            >= 2
                })
            }),
            "the Sentinels never agreed on the master and replica"
        );
        let hosts: Vec<String> = sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let url = format!("redis+sentinel://{}/{MASTER}", hosts.join(","));
        Cluster {
            master,
            replica,
            ledger,
            sentinels,
            url,
        }
    }

    fn promoted(&self) -> bool {
        self.sentinels
            .iter()
            .all(|s| s.master_port() == self.replica.port().to_string())
    }

    fn worker(&self) -> TestWorker {
        let config = config_file(
            &self.ledger,
            "heartbeat_interval: 1\npoll_interval_average: 1\n",
        );
        TestWorker::start(
            WORKER,
            &self.ledger,
            &[
                "--redis-url",
                &self.url,
                "-C",
                &config,
                "-c",
                "5",
                "-t",
                "2",
            ],
        )
    }

    /// Waits until every jid of `pushed` ran; reports and asserts none was lost.
    fn all_ran(&self, pushed: &HashSet<String>, worker: &TestWorker, case: &str) {
        let ran = wait_until(Duration::from_secs(90), || {
            let ran: HashSet<String> = ledger(&self.ledger)
                .iter()
                .filter_map(|e| e["jid"].as_str().map(str::to_string))
                .collect();
            ran.is_superset(pushed)
        });
        let t = tally(pushed, &ledger(&self.ledger));
        report(case, t, "");
        assert!(ran, "{t:?}\n{}", worker.log_text());
        assert_eq!(t.lost, 0);
        // Jobs pushed to the new master may all run through the waiters, which connect anew;
        // the shared connection notices the change at its next command (a beat, within 1 s).
        assert!(
            wait_until(Duration::from_secs(20), || worker
                .log_text()
                .contains("now using the master the Sentinels name")),
            "{}",
            worker.log_text()
        );
        // And it carries on there: the process is registered on the new master.
        assert!(
            wait_until(Duration::from_secs(20), || self
                .replica
                .cli(&["SCARD", "processes"])
                == "1"),
            "{}",
            worker.log_text()
        );
    }
}

#[test]
fn a_failover_loses_no_acknowledged_job_and_workers_and_pushes_carry_on() {
    let mut cluster = Cluster::start();
    let rt = runtime();
    let client = rt
        .block_on(Client::connect(&RedisConfig::new(&cluster.url)))
        .expect("connect through the Sentinels");
    let before = rt.block_on(push_acknowledged(&client, 400, "before"));
    // Replicated before the kill: Redis' replication is asynchronous, and a write the master
    // acknowledged but never sent on is lost by Redis itself, under rustq or Sidekiq alike.
    assert_eq!(cluster.master.cli(&["WAIT", "1", "5000"]), "1");
    let worker = cluster.worker();
    assert!(
        wait_until(Duration::from_secs(30), || ledger(&cluster.ledger).len()
            >= 100),
        "{}",
        worker.log_text()
    );
    cluster.master.kill();
    // Pushes carry on through the failover: each is retried until the new master takes it.
    let after = rt.block_on(push_acknowledged(&client, 200, "after"));
    assert!(
        wait_until(Duration::from_secs(30), || cluster.promoted()),
        "no failover to the replica"
    );
    let pushed: HashSet<String> = before.union(&after).cloned().collect();
    cluster.all_ran(
        &pushed,
        &worker,
        "sentinel failover (master SIGKILLed mid-run)",
    );
}

#[test]
fn a_master_demoted_to_replica_is_left_for_the_new_one() {
    // SENTINEL FAILOVER: the old master lives on as a replica, answering writes with READONLY
    // once connections reach it again; rustq must notice that reply, not only lost connections.
    let cluster = Cluster::start();
    let rt = runtime();
    let client = rt
        .block_on(Client::connect(&RedisConfig::new(&cluster.url)))
        .expect("connect through the Sentinels");
    let before = rt.block_on(push_acknowledged(&client, 300, "before"));
    assert_eq!(cluster.master.cli(&["WAIT", "1", "5000"]), "1");
    let worker = cluster.worker();
    assert!(
        wait_until(Duration::from_secs(30), || ledger(&cluster.ledger).len()
            >= 50),
        "{}",
        worker.log_text()
    );
    assert_eq!(
        cluster.sentinels[0].cli(&["SENTINEL", "FAILOVER", MASTER]),
        "OK"
    );
    assert!(
        wait_until(Duration::from_secs(30), || cluster.promoted()),
        "no failover to the replica"
    );
    let after = rt.block_on(push_acknowledged(&client, 200, "after"));
    assert!(
        wait_until(Duration::from_secs(20), || cluster
            .master
            .cli(&["ROLE"])
            .starts_with("slave")),
        "the old master did not become a replica"
    );
    let pushed: HashSet<String> = before.union(&after).cloned().collect();
    cluster.all_ran(&pushed, &worker, "sentinel failover (master demoted)");
}
