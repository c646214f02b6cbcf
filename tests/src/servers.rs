//! Real servers for integration tests, each on a free port with its own
//! data directory, killed (and cleaned up) on drop. Like nats.rs's and
//! redis-rs's own test harnesses: kill and restart them to inject faults.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server's arguments, given its port and data directory.
type Args = Box<dyn Fn(u16, &PathBuf) -> Vec<String> + Send + Sync>;

/// A server process on a fixed port and data directory, restartable.
struct Process {
    /// Binary, overridable with an environment variable.
    bin: String,
    /// Arguments, given the port and the data directory.
    args: Args,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// A process not yet started, on `port`.
    fn new(bin_var: &str, default_bin: &str, tag: &str, args: Args, port: u16) -> Process {
        Process {
            bin: std::env::var(bin_var).unwrap_or_else(|_| default_bin.into()),
            args,
            port,
            dir: crate::tempdir(tag),
            child: None,
        }
    }

    fn start(bin_var: &str, default_bin: &str, tag: &str, args: Args) -> Process {
        let mut p = Process::new(bin_var, default_bin, tag, args, free_port());
        // A free port can be taken by another test's process before the
        // server binds it: the server then exits. Try another port.
        const TRIES: u32 = 5;
        for attempt in 1..=TRIES {
            match p.spawn() {
                Ok(()) => break,
                Err(why) if attempt < TRIES => {
                    eprintln!("{why}; trying another port");
                    p.port = free_port();
                }
                Err(why) => panic!("{why} ({TRIES} ports tried)"),
            }
        }
        p
    }

    /// Starts the server and waits until it listens on its port; `Err`
    /// when it exited instead (its port taken, say).
    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.bin)
            .args((self.args)(self.port, &self.dir))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (see .ci/run for how to install it): {e}",
                    self.bin
                )
            });
        let exited = |child: &mut Child| {
            child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| format!("{} on port {} exited: {status}", self.bin, self.port))
        };
        // Up when our process listens on the port: something answering
        // there may be another process, while ours fails to bind and exits.
        let until = Instant::now() + Duration::from_secs(10);
        while !listens_on(child.id(), self.port) {
            if let Some(why) = exited(&mut child) {
                return Err(why);
            }
            if Instant::now() >= until {
                let _ = child.kill();
                panic!("{} did not open port {} within 10 s", self.bin, self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        // The same port: clients reconnect to it.
        if let Err(why) = self.spawn() {
            panic!("restart failed: {why}");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `nats-server -js` process (2.10+; `NATS_SERVER_BIN` overrides the binary).
pub struct NatsServer {
    /// Client port.
    pub port: u16,
    /// HTTP monitoring port (`/connz`, `/routez`), where enabled.
    pub monitor: Option<u16>,
    process: Process,
}

impl NatsServer {
    /// Starts a JetStream-enabled server on a free port.
    pub fn start() -> NatsServer {
        NatsServer::with_args(Vec::new())
    }

    /// Starts a JetStream-enabled server with `extra` arguments.
    fn with_args(extra: Vec<String>) -> NatsServer {
        let args = NatsServer::args(extra);
        let process = Process::start("NATS_SERVER_BIN", "nats-server", "nats", args);
        NatsServer {
            port: process.port,
            monitor: None,
            process,
        }
    }

    /// `nats-server -js` on the port and store directory, then `extra`.
    fn args(extra: Vec<String>) -> Args {
        Box::new(move |port, dir| {
            let dir = dir.display().to_string();
            let mut args = [
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-js",
                "-sd",
                &dir,
            ]
            .map(str::to_owned)
            .to_vec();
            args.extend(extra.iter().cloned());
            args
        })
    }

    /// The server's process id, while it runs (benches read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.process.child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port and JetStream store.
    pub fn restart(&mut self) {
        self.process.restart();
    }

    /// A plain client for the test's own publishing and checks.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.unwrap()
    }
}

/// A `redis-server` process with nothing on disk (`REDIS_SERVER_BIN` overrides).
pub struct RedisServer {
    /// Port.
    pub port: u16,
    process: Process,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::with_args(Vec::new())
    }

    /// Starts a server on a free port with `extra` arguments (a later
    /// `--bind` replaces the loopback address it binds by default).
    pub fn with_args(extra: Vec<String>) -> RedisServer {
        let args: Args = Box::new(move |port, dir| {
            let dir = dir.display().to_string();
            let mut args = [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
            ]
            .map(str::to_owned)
            .to_vec();
            args.extend(extra.iter().cloned());
            args
        });
        let process = Process::start("REDIS_SERVER_BIN", "redis-server", "redis", args);
        RedisServer {
            port: process.port,
            process,
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.process.restart();
    }
}

/// An OCI registry: the CNCF distribution server (Debian's
/// `docker-registry`; `REGISTRY_BIN` overrides), plain HTTP on loopback,
/// blobs on disk in its own directory.
pub struct RegistryServer {
    /// Port.
    pub port: u16,
    process: Process,
}

impl RegistryServer {
    /// Starts a registry on a free port, open to all.
    pub fn start() -> RegistryServer {
        RegistryServer::with_users(None)
    }

    /// Starts a registry that wants HTTP basic credentials: `htpasswd`
    /// holds its `user:bcrypt-hash` lines.
    pub fn with_users(htpasswd: Option<&str>) -> RegistryServer {
        let htpasswd = htpasswd.map(str::to_owned);
        let args: Args = Box::new(move |port, dir| {
            let config = dir.join("config.yml");
            let auth = match &htpasswd {
                Some(lines) => {
                    let file = dir.join("htpasswd");
                    std::fs::write(&file, lines).unwrap();
                    format!(
                        "auth:\n  htpasswd:\n    realm: weir-tests\n    path: {}\n",
                        file.display()
                    )
                }
                None => String::new(),
            };
            let text = format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{auth}http:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            );
            std::fs::write(&config, text).unwrap();
            vec!["serve".into(), config.display().to_string()]
        });
        let process = Process::start("REGISTRY_BIN", "docker-registry", "registry", args);
        RegistryServer {
            port: process.port,
            process,
        }
    }

    /// `127.0.0.1:PORT`, as references and `insecure` name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where it keeps its blobs: `blobs/sha256/<2 hex>/<hex>/data`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.process
            .dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stops it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port, with the same blobs.
    pub fn restart(&mut self) {
        self.process.restart();
    }
}

/// A Redis Cluster on loopback: `masters` masters with one replica each,
/// made with `redis-cli --cluster create` (as operators make one), so a
/// killed master's replica takes over its slots after the node timeout.
pub struct RedisCluster {
    /// The nodes, masters first as created (roles change on failover:
    /// ask [`RedisCluster::master_nodes`]).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `2 × masters` nodes, joins them, and waits until every node
    /// says the cluster is ok.
    pub fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..2 * masters)
            .map(|_| {
                RedisServer::with_args(vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    // Failover within about a second of a master's death.
                    "--cluster-node-timeout".into(),
                    "1000".into(),
                    // Replicas sync at once (a replica that never synced
                    // cannot take over).
                    "--repl-diskless-sync-delay".into(),
                    "0".into(),
                ])
            })
            .collect();
        let mut create = Command::new(cli());
        create.args(["--cluster", "create"]);
        create.args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create
            .output()
            .expect("redis-cli runs (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(30));
        // Each replica holds its master's data before anything can fail.
        let until = Instant::now() + Duration::from_secs(30);
        for i in 0..cluster.nodes.len() {
            loop {
                let info = cluster.cli(i, &["info", "replication"]);
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < until, "replica {i} never synced:\n{info}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// Every node's URL (what `[redis] cluster` takes).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `redis-cli -p PORT ARGS…` against node `i`: its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new(cli())
            .args(["-p", &self.nodes[i].port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Indices of the nodes that are masters serving slots now, as node
    /// `from` sees them.
    pub fn master_nodes(&self, from: usize) -> Vec<usize> {
        let text = self.cli(from, &["cluster", "nodes"]);
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let master = f.get(2)?.split(',').any(|x| x == "master")
                    && !f.get(2)?.contains("fail")
                    && f.len() > 8;
                let port: u16 = f
                    .get(1)?
                    .split(['@', ','])
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                master.then(|| self.nodes.iter().position(|n| n.port == port))?
            })
            .collect()
    }

    /// Waits until every running node says `cluster_state:ok`.
    pub fn wait_ok(&self, timeout: Duration) {
        let until = Instant::now() + timeout;
        for i in 0..self.nodes.len() {
            if self.nodes[i].process.child.is_none() {
                continue;
            }
            while !self
                .cli(i, &["cluster", "info"])
                .contains("cluster_state:ok")
            {
                assert!(
                    Instant::now() < until,
                    "the Redis Cluster is not ok after {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `redis-cli` (`REDIS_CLI_BIN` overrides).
fn cli() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into())
}

/// A cluster of `nats-server -js` nodes on loopback: routes between them,
/// JetStream on each with its own store, as seed 004 runs NATS (3 nodes,
/// `replicas: 3` streams).
pub struct NatsCluster {
    /// The nodes; kill and restart them one at a time.
    pub nodes: Vec<NatsServer>,
    /// Each node's cluster (route) port, in the nodes' order.
    pub routes: Vec<u16>,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until JetStream has a meta leader (an R3
    /// stream can be created).
    pub async fn start(n: usize) -> NatsCluster {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let monitor = free_port();
                let mut node = NatsServer::with_args(vec![
                    "--http_port".into(),
                    monitor.to_string(),
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "weir".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".into(),
                    routes.clone(),
                ]);
                node.monitor = Some(monitor);
                node
            })
            .collect();
        let cluster = NatsCluster {
            nodes,
            routes: cluster_ports,
        };
        cluster.wait_for_jetstream().await;
        cluster
    }

    /// Every node's URL, comma-separated (what `[nats] url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client connected to any node.
    pub async fn client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url().parse().unwrap())
            .collect();
        async_nats::connect(addrs).await.unwrap()
    }

    /// Waits until JetStream answers account info through every node (the
    /// meta group has a leader and each node reaches it).
    pub async fn wait_for_jetstream(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            let js = async_nats::jetstream::new(node.client().await);
            while js.query_account().await.is_err() {
                assert!(Instant::now() < until, "JetStream has no leader after 30 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Whether process `pid` holds a listening TCP socket on `port`: the
/// socket inodes among its open files against the kernel's tables of TCP
/// sockets (`/proc/net/tcp` and `tcp6`; the test harness is Linux-only).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        text.lines().skip(1).any(|line| {
            // sl local_address rem_address st … inode: st 0A is LISTEN.
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            f.get(3) == Some(&"0A")
                && local_port == Some(port)
                && f.get(9).is_some_and(|inode| inodes.contains(*inode))
        })
    })
}

/// An OpenTelemetry collector's trace intake for tests: OTLP/HTTP on a free
/// port, each export decoded by the OpenTelemetry project's protobufs
/// (`tests/tools/otlp_receiver.py`, in the venv `just pytools` makes).
pub struct OtlpReceiver {
    /// Port of its OTLP/HTTP endpoint.
    pub port: u16,
    child: Child,
    /// Every span received, as the receiver printed it.
    spans: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl OtlpReceiver {
    /// A receiver that takes every export.
    pub fn start() -> OtlpReceiver {
        OtlpReceiver::spawn(false)
    }

    /// A collector that accepts connections and never answers.
    pub fn stalled() -> OtlpReceiver {
        OtlpReceiver::spawn(true)
    }

    fn spawn(stall: bool) -> OtlpReceiver {
        use std::io::BufRead as _;
        let python = crate::root().join("target/py/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: run `just pytools` (part of `just test`)",
            python.display()
        );
        let mut cmd = Command::new(python);
        cmd.arg(crate::root().join("tests/tools/otlp_receiver.py"));
        if stall {
            cmd.arg("--stall");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("receiver said {first:?}"));
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        OtlpReceiver { port, child, spans }
    }

    /// The base URL weir's `[telemetry] endpoint` takes.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `enough` holds for the spans received (up to `timeout`);
    /// the spans then.
    pub fn wait_until(
        &self,
        timeout: Duration,
        enough: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let until = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if enough(&spans) || Instant::now() > until {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// A port someone else holds: the port answers, but the server we
    /// started exits, and `spawn` must say so rather than hand out a
    /// server that is not there.
    #[test]
    fn a_server_whose_port_is_taken_is_seen_to_exit() {
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = squatter.local_addr().unwrap().port();
        let nats = NatsServer::start();
        let args = NatsServer::args(Vec::new());
        let mut p = Process::new("NATS_SERVER_BIN", "nats-server", "nats", args, taken);
        let why = p.spawn().expect_err("nats-server cannot bind a taken port");
        assert!(why.contains("exited"), "{why}");
        assert!(p.child.is_none());
        // A server started the usual way still comes up and answers, and
        // the squatter is not taken for a server.
        assert!(TcpStream::connect(("127.0.0.1", nats.port)).is_ok());
        assert!(listens_on(std::process::id(), taken));
        assert!(!listens_on(std::process::id(), nats.port));
    }
}
