//! The connection behind L2: one Redis, or a Redis Cluster.
//!
//! On a cluster, redis-rs sends each command to the master of its key's
//! slot, follows `MOVED`/`ASK`, refreshes its slot map when a master fails
//! over, and splits multi-key commands (`MGET`, `UNLINK`) by slot. What it
//! cannot do is served here: a pipeline must stay within one slot, so
//! writes of several keys go as concurrent single commands ([`Handle::each`]),
//! and `SCAN` walks every master in turn ([`Handle::scan_page`]).
//!
//! Both kinds connect lazily, so a Redis that is down at start only means
//! misses and counted errors until it comes up.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, RedisFuture, RedisResult, Value};
use std::sync::RwLock;

/// Low bits of a cluster `SCAN` cursor: the cursor within one master (they
/// index Redis's table, far below 2^48).
const NODE_CURSOR_BITS: u32 = 48;
/// A cluster cursor's master index sits above the node cursor, below the
/// top bit (which the layered cache keeps for its own paging).
const MAX_MASTERS: usize = 1 << (63 - NODE_CURSOR_BITS);

/// A cheap-to-clone handle to Redis: every clone shares the connection.
#[derive(Clone)]
pub enum Handle {
    /// One server, reconnected by the manager after it comes back.
    Single(ConnectionManager),
    /// A cluster, connected on first use (and again after a failed attempt).
    Cluster(Arc<Cluster>),
}

/// A cluster client and its connection, once made.
pub struct Cluster {
    client: ClusterClient,
    /// The connection, once made; dropped by [`Handle::reconnect`].
    conn: RwLock<Option<ClusterConnection>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

impl Handle {
    /// A handle for one server at `url`.
    pub fn single(url: &str, timeout: Duration) -> RedisResult<Handle> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = redis::Client::open(url)?.get_connection_manager_lazy(config)?;
        Ok(Handle::Single(conn))
    }

    /// A handle for the cluster reached through any of `seeds`.
    pub fn cluster(seeds: &[String], timeout: Duration) -> RedisResult<Handle> {
        let client = ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            // Retries follow MOVED/ASK and reconnect to a promoted
            // replica; the caller's timeout bounds them all.
            .retries(8)
            .min_retry_wait(10)
            .max_retry_wait(200)
            // A node that refuses three connections in a row is dropped,
            // and the slot map is read again: a dead master's slots then
            // go to the replica that took over (without this, redis-rs
            // keeps reconnecting to the dead address).
            .max_connection_attempts(std::num::NonZeroUsize::MIN.saturating_add(2))
            .build()?;
        Ok(Handle::Cluster(Arc::new(Cluster {
            client,
            conn: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })))
    }

    /// Starts afresh with the next call, on a cluster: a new connection
    /// reads the slot map from the seeds again. redis-rs follows `MOVED`
    /// and drops nodes that refuse connections, but requests cut off by
    /// their deadline while a master dies can leave it sending to the dead
    /// address; the breaker's probes call this, so the host heals by itself.
    pub fn reconnect(&self) {
        if let Handle::Cluster(cluster) = self {
            *cluster.conn.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Runs `cmds`, each on its own key: pipelined on one server, as
    /// concurrent commands on a cluster (a pipeline may not cross slots).
    pub async fn each(&mut self, cmds: Vec<Cmd>) -> RedisResult<Vec<Value>> {
        match self {
            Handle::Single(conn) => {
                let mut pipe = redis::pipe();
                for c in cmds {
                    pipe.add_command(c);
                }
                pipe.query_async(conn).await
            }
            Handle::Cluster(cluster) => {
                let conn = cluster.connection().await?;
                futures::future::try_join_all(cmds.into_iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { c.query_async::<Value>(&mut conn).await }
                }))
                .await
            }
        }
    }

    /// Runs `cmd` on one server: the only one, or any master of a cluster
    /// (for `INFO`, which a cluster would otherwise ask of every node).
    pub async fn on_one(&mut self, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Handle::Single(conn) => cmd.query_async(conn).await,
            Handle::Cluster(cluster) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                cluster
                    .connection()
                    .await?
                    .route_command(cmd, routing)
                    .await
            }
        }
    }

    /// One `SCAN MATCH pattern` page from `cursor`. On a cluster the
    /// cursor names the master too (masters in address order), and the
    /// next cursor moves on to the next master when one is done; 0 after
    /// the last page of the last master.
    pub async fn scan_page(
        &mut self,
        pattern: &str,
        cursor: u64,
        count: usize,
    ) -> RedisResult<(u64, Vec<String>)> {
        let scan = |cursor: u64| {
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count)
                .to_owned()
        };
        let cluster = match self {
            Handle::Single(conn) => return scan(cursor).query_async(conn).await,
            Handle::Cluster(cluster) => cluster.clone(),
        };
        let mut conn = cluster.connection().await?;
        let masters = masters(&mut conn).await?;
        let index = usize::try_from(cursor >> NODE_CURSOR_BITS).unwrap_or(usize::MAX);
        let Some((host, port)) = masters.get(index) else {
            return Ok((0, Vec::new()));
        };
        let node_cursor = cursor & ((1 << NODE_CURSOR_BITS) - 1);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        });
        let answer = conn.route_command(scan(node_cursor), routing).await?;
        let (next, keys): (u64, Vec<String>) = redis::from_redis_value(answer)?;
        let next = if next != 0 {
            (cursor & !((1 << NODE_CURSOR_BITS) - 1)) | next
        } else if index + 1 < masters.len().min(MAX_MASTERS) {
            ((index as u64) + 1) << NODE_CURSOR_BITS
        } else {
            0
        };
        Ok((next, keys))
    }
}

impl Cluster {
    /// The connection, made now if it was not yet (or the last try failed).
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        if let Some(conn) = self.made() {
            return Ok(conn);
        }
        let _one = self.connecting.lock().await;
        if let Some(conn) = self.made() {
            return Ok(conn);
        }
        let conn = self.client.get_async_connection().await?;
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn made(&self) -> Option<ClusterConnection> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The cluster's masters that serve slots, as `(host, port)`, in address
/// order (stable between the pages of one scan), from `CLUSTER NODES`.
async fn masters(conn: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    let mut out = parse_masters(&text);
    out.sort();
    Ok(out)
}

/// `(host, port)` of each line of `CLUSTER NODES` that is a master, not
/// failed, with slots: `<id> <ip:port@cport[,hostname]> <flags> <master>
/// <ping> <pong> <epoch> <link> <slot> …`.
fn parse_masters(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = f.get(2)?;
            let serving = flags.split(',').any(|x| x == "master")
                && !flags.split(',').any(|x| x == "fail" || x == "fail?")
                && f.len() > 8;
            if !serving {
                return None;
            }
            let addr = f.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

impl ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Handle::Single(conn) => conn.req_packed_command(cmd),
            Handle::Cluster(cluster) => {
                Box::pin(async move { cluster.connection().await?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(cluster) => Box::pin(async move {
                cluster
                    .connection()
                    .await?
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Single(conn) => conn.get_db(),
            Handle::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_masters;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003,redis-3 master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@40005 master,fail - 1426238316232 1426238315000 5 disconnected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
aaaa 127.0.0.1:30006@40006 master - 0 1426238316232 6 connected
";
        assert_eq!(
            parse_masters(text),
            vec![
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003),
                ("127.0.0.1".to_owned(), 30001),
            ]
        );
    }
}
