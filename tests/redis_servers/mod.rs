//! Real `redis-server` processes for the store's tests: on 127.0.0.1, on
//! ports free at run time, each in its own temporary directory, without
//! persistence, killed (SIGKILL) and cleaned up on drop. No mock anywhere.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A port nobody listens on now (the OS picks it; we close it again).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port on 127.0.0.1")
}

fn temp_dir(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tollgate-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// One `redis-server`.
pub struct Server {
    pub port: u16,
    bus_port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// A single server, answering PING.
    pub fn start() -> Server {
        let mut s = Server {
            port: free_port(),
            bus_port: None,
            dir: temp_dir("redis"),
            child: None,
        };
        s.spawn();
        s
    }

    /// A server with cluster mode on (not yet part of a cluster).
    fn start_cluster_node(dir: &Path) -> Server {
        let port = free_port();
        let mut s = Server {
            port,
            bus_port: Some(free_port()),
            dir: dir.join(format!("node-{port}")),
            child: None,
        };
        std::fs::create_dir_all(&s.dir).expect("create the node's directory");
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if let Some(bus) = self.bus_port {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.join("nodes.conf"))
                .args(["--cluster-node-timeout", "2000"])
                .arg("--cluster-port")
                .arg(bus.to_string());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (tests/setup.sh installs it)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if self.ping() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                    panic!(
                        "redis-server exited ({status}) on port {}:\n{log}",
                        self.port
                    );
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            sleep(Duration::from_millis(10));
        }
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut c).is_ok()
    }

    /// A plain connection for the test's own commands (DEBUG, CLIENT
    /// PAUSE, PTTL...).
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connect to the test's redis-server")
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port and directory (no data: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas), made by
/// `redis-cli --cluster create`, ready when every node says
/// `cluster_state:ok`.
pub struct Cluster {
    pub nodes: Vec<Server>,
    dir: PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = temp_dir("redis-cluster");
        let nodes: Vec<Server> = (0..3).map(|_| Server::start_cluster_node(&dir)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(Server::addr))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster { nodes, dir };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let t0 = Instant::now();
        for node in &self.nodes {
            let mut c = node.conn();
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "cluster not ok within 20 s:\n{info}"
                );
                sleep(Duration::from_millis(50));
            }
        }
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(Server::addr).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The node (index into `nodes`) that serves `slot`, from CLUSTER SLOTS.
    pub fn owner_of(&self, slot: u16) -> usize {
        let mut c = self.nodes[0].conn();
        let slots: Vec<(u16, u16, (String, u16))> = {
            let v: Vec<redis::Value> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query(&mut c)
                .expect("CLUSTER SLOTS");
            v.into_iter()
                .map(|range| {
                    let redis::Value::Array(items) = range else {
                        panic!("CLUSTER SLOTS entry is not an array")
                    };
                    let int = |v: &redis::Value| match v {
                        redis::Value::Int(i) => *i,
                        other => panic!("not an integer: {other:?}"),
                    };
                    let redis::Value::Array(master) = &items[2] else {
                        panic!("CLUSTER SLOTS master is not an array")
                    };
                    let port = int(&master[1]) as u16;
                    (
                        int(&items[0]) as u16,
                        int(&items[1]) as u16,
                        (String::new(), port),
                    )
                })
                .collect()
        };
        let port = slots
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            .map(|(_, _, (_, port))| *port)
            .expect("every slot is served");
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("the owner is one of our nodes")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
