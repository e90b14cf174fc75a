//! Private `redis-server` processes on free loopback ports (no persistence),
//! for tests that kill, pause and restart Redis, or need a cluster.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A port for a server: below the kernel's ephemeral range (32768 and up
/// here), so no outgoing connection of another test can hold it or, for a
/// cluster node, its bus port (the port + 10000); free when chosen. Another
/// process can still take it before the server binds it: `spawn` then tries
/// another.
fn server_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 12_000;
    const SPAN: u32 = 10_000; // ports 12000..22000, buses 22000..32000
    let seed = std::process::id().wrapping_mul(7_919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + seed.wrapping_add(n.wrapping_mul(97)) % SPAN) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-api-key-redis-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `redis-cli -p port args…`, its stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (installed with redis-server)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// A cluster node's `cluster-node-timeout`, in ms.
    cluster: Option<u32>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::spawn(scratch_dir("single"), None)
    }

    /// A server on a port of its own: when another process took the port
    /// first, another one.
    fn spawn(dir: PathBuf, cluster: Option<u32>) -> Self {
        let mut server = Self {
            child: None,
            port: server_port(),
            dir,
            cluster,
        };
        for _ in 0..5 {
            if server.try_launch() {
                return server;
            }
            server.kill();
            server.port = server_port();
        }
        panic!("redis-server did not start on five ports in a row");
    }

    fn launch(&mut self) {
        assert!(
            self.try_launch(),
            "redis-server did not start again on {}",
            self.port
        );
    }

    /// Starts the process and waits until it answers: false when it
    /// exits first (its port taken) or does not answer within 10 s.
    fn try_launch(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(node_timeout) = self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout"])
                .arg(node_timeout.to_string())
                .args([
                    "--cluster-config-file",
                    &format!("nodes-{}.conf", self.port),
                ]);
        }
        let child = self.child.insert(
            cmd.spawn()
                .expect("redis-server (scripts/test installs it with apt-get when it is missing)"),
        );
        // Ours answering, not a server of another test on the same port.
        let ours = format!("process_id:{}\r", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cli(self.port, &["info", "server"]).contains(&ours) {
            let exited = !matches!(child.try_wait(), Ok(None));
            if exited || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// SIGKILL: connections drop at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters joined with `redis-cli --cluster create`, with a replica
/// each if asked.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters, no replicas (node timeout 2 s).
    pub fn start() -> Self {
        Self::create(3, 0, 2_000)
    }

    /// Three masters and a replica of each, a short node timeout (1 s) so a
    /// killed master's replica takes over within seconds.
    pub fn start_with_replicas() -> Self {
        let cluster = Self::create(6, 1, 1_000);
        // Every replica attached and in sync.
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster.nodes.iter().any(|n| {
            let info = n.cli(&["info", "replication"]);
            info.contains("role:slave") && !info.contains("master_link_status:up")
        }) {
            assert!(Instant::now() < deadline, "replicas did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    fn create(count: usize, replicas: u32, node_timeout_ms: u32) -> Self {
        let dir = scratch_dir("cluster");
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| RedisServer::spawn(dir.clone(), Some(node_timeout_ms)))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { nodes }
    }

    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port));
        }
        url
    }

    /// Every key and value on every master.
    pub fn dump(&self) -> Vec<(String, String)> {
        self.nodes.iter().flat_map(|n| dump(n.port)).collect()
    }

    /// The indexes of the nodes that are masters now (alive ones).
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].child.is_some()
                    && self.nodes[i]
                        .cli(&["info", "replication"])
                        .contains("role:master")
            })
            .collect()
    }

    /// A node's cluster id.
    pub fn id(&self, node: usize) -> String {
        self.nodes[node].cli(&["cluster", "myid"]).trim().to_owned()
    }

    /// Waits until every live node says the cluster is ok.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "cluster not ok within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every key on one server with its value whatever its type (a string's
/// value, a set's or a list's members, a hash's fields and values), one
/// string per key.
pub fn dump(port: u16) -> Vec<(String, String)> {
    let keys = cli(port, &["--scan", "--pattern", "*"]);
    keys.lines()
        .filter(|k| !k.is_empty())
        .map(|k| {
            let value = match cli(port, &["type", k]).trim() {
                "set" => cli(port, &["smembers", k]),
                "zset" => cli(port, &["zrange", k, "0", "-1", "withscores"]),
                "hash" => cli(port, &["hgetall", k]),
                "list" => cli(port, &["lrange", k, "0", "-1"]),
                _ => cli(port, &["get", k]),
            };
            (k.to_owned(), value.trim_end().to_owned())
        })
        .collect()
}

/// `redis-cli MONITOR` on one server, written to a file: every command any
/// client sends from now on, with its arguments (values and pub/sub
/// payloads included).
pub struct Monitor {
    child: Child,
    file: PathBuf,
}

impl Monitor {
    pub fn start(port: u16) -> Self {
        let file = std::env::temp_dir().join(format!(
            "tower-api-key-monitor-{}-{port}-{}.log",
            std::process::id(),
            free_port()
        ));
        let out = std::fs::File::create(&file).expect("monitor log");
        let child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "monitor"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli monitor");
        // MONITOR answers OK first: wait for it, so nothing sent after
        // `start` returns is missed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains("OK")
        {
            assert!(Instant::now() < deadline, "redis-cli monitor did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, file }
    }

    /// Stops monitoring; everything seen.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.file).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Where a test reads Redis back from: one server, or every master.
pub enum Target<'a> {
    Single(&'a RedisServer),
    Cluster(&'a RedisCluster),
}

impl Target<'_> {
    pub fn url(&self) -> String {
        match self {
            Target::Single(s) => s.url(),
            Target::Cluster(c) => c.url(),
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        match self {
            Target::Single(s) => vec![s.port],
            Target::Cluster(c) => c.nodes.iter().map(|n| n.port).collect(),
        }
    }

    /// Every key and value, whatever its type, on every node.
    pub fn dump(&self) -> Vec<(String, String)> {
        self.ports().into_iter().flat_map(dump).collect()
    }

    /// Whether Redis holds `key`, on whichever node owns it.
    pub fn holds(&self, key: &str) -> bool {
        self.ports().into_iter().any(|p| {
            cli(p, &["--scan", "--pattern", key])
                .lines()
                .any(|k| k == key)
        })
    }

    /// `PTTL` of a key, asked of the node that holds it.
    pub fn pttl(&self, key: &str) -> i64 {
        self.ports()
            .into_iter()
            .filter_map(|p| cli(p, &["pttl", key]).trim().parse::<i64>().ok())
            .find(|&t| t != -2)
            .unwrap_or(-2)
    }

    /// `SET key value` (on a cluster only the owner accepts it; the others
    /// answer MOVED).
    pub fn set(&self, key: &str, value: &str) {
        for p in self.ports() {
            cli(p, &["set", key, value]);
        }
    }

    /// Drops every pub/sub connection on every node.
    pub fn kill_subscribers(&self) {
        for p in self.ports() {
            cli(p, &["client", "kill", "type", "pubsub"]);
        }
    }

    pub fn monitors(&self) -> Vec<Monitor> {
        self.ports().into_iter().map(Monitor::start).collect()
    }
}

/// One test per behaviour on each target, named for both:
/// `single_server::<behaviour>` on a private server, `cluster::<behaviour>`
/// on a private 3-master cluster. A behaviour is an `async fn(&Target<'_>,
/// prefix: &str)` in the calling test file.
#[macro_export]
macro_rules! on_each_target {
    ($($behaviour:ident),+ $(,)?) => {
        mod single_server {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let server = RedisServer::start();
                    super::$behaviour(&Target::Single(&server), "t:").await;
                }
            )+
        }

        mod cluster {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let cluster = RedisCluster::start();
                    super::$behaviour(&Target::Cluster(&cluster), "t:").await;
                }
            )+
        }
    };
}
