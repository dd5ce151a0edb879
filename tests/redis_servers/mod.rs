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
    /// `cluster-node-timeout` of a cluster node, in ms.
    node_timeout_ms: u32,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// A single server, answering PING.
    pub fn start() -> Server {
        let mut s = Server {
            port: free_port(),
            bus_port: None,
            node_timeout_ms: 0,
            dir: temp_dir("redis"),
            child: None,
        };
        s.spawn();
        s
    }

    /// A server with cluster mode on (not yet part of a cluster); a node
    /// missing for `node_timeout_ms` is failed over by its replica.
    fn start_cluster_node(dir: &Path, node_timeout_ms: u32) -> Server {
        let port = free_port();
        let mut s = Server {
            port,
            bus_port: Some(free_port()),
            node_timeout_ms,
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
                .arg("--cluster-node-timeout")
                .arg(self.node_timeout_ms.to_string())
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

    /// Whether this process was started and not killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
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

/// A Redis Cluster made by `redis-cli --cluster create`: three masters,
/// with or without a replica each, ready when every node says
/// `cluster_state:ok` (and every replica is in sync with its master).
pub struct Cluster {
    pub nodes: Vec<Server>,
    dir: PathBuf,
}

impl Cluster {
    /// Lets each master serve its own slots while another is failed
    /// (`cluster-require-full-coverage no`): with Redis's default every node
    /// answers CLUSTERDOWN from a master being marked failed until its
    /// replica is promoted, whatever the client does.
    pub fn serve_partial_coverage(&self) {
        for node in &self.nodes {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("cluster-require-full-coverage")
                .arg("no")
                .exec(&mut node.conn())
                .unwrap();
        }
    }

    /// Three masters, no replicas.
    pub fn start() -> Cluster {
        Cluster::create(0, 2_000)
    }

    /// Three masters with one replica each, and a `cluster-node-timeout`
    /// of 1 s: a master killed is failed over by its replica in about two
    /// seconds (the timeout, then the replica's election delay of 0.5 to
    /// 1 s).
    pub fn start_with_replicas() -> Cluster {
        Cluster::create(1, 1_000)
    }

    fn create(replicas: usize, node_timeout_ms: u32) -> Cluster {
        let dir = temp_dir("redis-cluster");
        let n = 3 * (1 + replicas);
        let nodes: Vec<Server> = (0..n)
            .map(|_| Server::start_cluster_node(&dir, node_timeout_ms))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(Server::addr))
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
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
        cluster.wait_ok(Duration::from_secs(20));
        if replicas > 0 {
            cluster.wait_replicas_in_sync(Duration::from_secs(20));
        }
        cluster
    }

    /// Waits until every running node says `cluster_state:ok` and knows
    /// every node (a killed one stays known, flagged failed).
    pub fn wait_ok(&self, within: Duration) {
        let t0 = Instant::now();
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let mut c = node.conn();
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") && info.contains(&known) {
                    break;
                }
                assert!(
                    t0.elapsed() < within,
                    "cluster not ok within {within:?}:\n{info}"
                );
                sleep(Duration::from_millis(20));
            }
        }
    }

    /// Waits until every master has a replica whose link is up and whose
    /// offset has caught up with the master's.
    fn wait_replicas_in_sync(&self, within: Duration) {
        let t0 = Instant::now();
        loop {
            let masters = self.masters();
            let synced = masters.iter().all(|&m| {
                let (offset, replicas) = self.master_role(m);
                !replicas.is_empty() && replicas.iter().any(|&(_, off)| off == offset)
            });
            if masters.len() == 3 && synced {
                return;
            }
            assert!(
                t0.elapsed() < within,
                "replicas not in sync within {within:?}"
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// `ROLE` of node `i`: the role's name and the rest of the reply.
    fn role(&self, i: usize) -> Vec<redis::Value> {
        redis::cmd("ROLE")
            .query(&mut self.nodes[i].conn())
            .expect("ROLE")
    }

    /// A master's replication offset and its replicas (node index, offset).
    fn master_role(&self, i: usize) -> (i64, Vec<(usize, i64)>) {
        let role = self.role(i);
        let int = |v: &redis::Value| match v {
            redis::Value::Int(i) => *i,
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).parse().unwrap_or(-1),
            other => panic!("ROLE: not an integer: {other:?}"),
        };
        let offset = int(&role[1]);
        let redis::Value::Array(list) = &role[2] else {
            panic!("ROLE: no replica list")
        };
        let replicas = list
            .iter()
            .filter_map(|r| {
                let redis::Value::Array(r) = r else {
                    return None;
                };
                let port = int(&r[1]) as u16;
                let node = self.nodes.iter().position(|n| n.port == port)?;
                Some((node, int(&r[2])))
            })
            .collect();
        (offset, replicas)
    }

    /// Running nodes whose `ROLE` is master.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .filter(|&i| matches!(&self.role(i)[0], redis::Value::BulkString(b) if b == b"master"))
            .collect()
    }

    /// The replicas of master `i` (node indices).
    pub fn replicas_of(&self, i: usize) -> Vec<usize> {
        self.master_role(i).1.into_iter().map(|(n, _)| n).collect()
    }

    /// After a master was killed: waits until one of its `replicas` says it
    /// is a master and every running node says `cluster_state:ok` again;
    /// returns the promoted node.
    pub fn wait_failover(&self, replicas: &[usize], within: Duration) -> usize {
        let t0 = Instant::now();
        let promoted = loop {
            let up = replicas.iter().copied().find(
                |&r| matches!(&self.role(r)[0], redis::Value::BulkString(b) if b == b"master"),
            );
            if let Some(r) = up {
                break r;
            }
            assert!(
                t0.elapsed() < within,
                "no replica promoted within {within:?}"
            );
            sleep(Duration::from_millis(20));
        };
        self.wait_ok(within.saturating_sub(t0.elapsed()));
        promoted
    }

    /// The hash slot of `key`, as the first running node computes it.
    pub fn slot_of(&self, key: &[u8]) -> u16 {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut node.conn())
            .expect("CLUSTER KEYSLOT")
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(Server::addr).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The node (index into `nodes`) that serves `slot`, from CLUSTER SLOTS
    /// as the first running node sees it.
    pub fn owner_of(&self, slot: u16) -> usize {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        let mut c = node.conn();
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
