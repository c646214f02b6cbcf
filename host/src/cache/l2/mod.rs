//! L2: Redis (one server or a Redis Cluster, see `connection`), shared
//! by hosts. Values travel in codec envelopes ([`super::codec`]); every
//! call is bounded by a timeout and guarded by a circuit breaker, so a dead
//! Redis costs microseconds, not seconds.

mod connection;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::AsyncCommands;

use self::connection::Handle;

use super::breaker::Breaker;
use super::codec::{CodecError, Codecs};
use super::{CacheError, Layer, LayerStats};
use crate::latency::Histogram;

/// Keys SCAN returns per round trip during pattern invalidation.
const SCAN_COUNT: usize = 500;
/// An idle host pings Redis when it has not answered for this long.
pub const IDLE_PING: Duration = Duration::from_secs(1);
/// Prefix of shared zstd dictionaries in Redis.
pub const DICT_PREFIX: &str = "weir:dict:";

/// A cheap-to-clone handle to the Redis layer.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Reconnects by itself after Redis comes back.
    conn: Handle,
    /// For logs: the URL, or a cluster's seed URLs.
    url: String,
    codecs: Arc<Codecs>,
    breaker: Breaker,
    /// Hard cap per call, including a reconnect in progress.
    timeout: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    sets: AtomicU64,
    deletes: AtomicU64,
    errors: AtomicU64,
    bytes_saved: AtomicU64,
    latency: Histogram,
    /// When this store was made: the origin of `last_answer_ns`.
    born: Instant,
    /// When Redis last answered (ns since `born`): an idle host pings
    /// only when nothing else told it Redis is there.
    last_answer_ns: AtomicU64,
}

impl RedisStore {
    /// A store for the server at `url`. Connects lazily: a Redis that is
    /// down at start only means misses and counted errors until it comes up.
    pub fn new(
        url: &str,
        codecs: Arc<Codecs>,
        timeout: Duration,
    ) -> Result<RedisStore, CacheError> {
        let conn = Handle::single(url, timeout)
            .map_err(|e| CacheError::Invalid(format!("bad Redis URL {url}: {e}")))?;
        Ok(RedisStore::with(conn, url.to_owned(), codecs, timeout))
    }

    /// A store for the Redis Cluster reached through any of `seeds`
    /// (connected lazily too).
    pub fn cluster(
        seeds: &[String],
        codecs: Arc<Codecs>,
        timeout: Duration,
    ) -> Result<RedisStore, CacheError> {
        let url = format!("cluster {}", seeds.join(","));
        let conn = Handle::cluster(seeds, timeout)
            .map_err(|e| CacheError::Invalid(format!("bad Redis Cluster URLs ({url}): {e}")))?;
        Ok(RedisStore::with(conn, url, codecs, timeout))
    }

    fn with(conn: Handle, url: String, codecs: Arc<Codecs>, timeout: Duration) -> RedisStore {
        RedisStore {
            inner: Arc::new(Inner {
                conn,
                url,
                codecs,
                breaker: Breaker::default(),
                timeout,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                sets: AtomicU64::new(0),
                deletes: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                bytes_saved: AtomicU64::new(0),
                latency: Histogram::default(),
                born: Instant::now(),
                last_answer_ns: AtomicU64::new(0),
            }),
        }
    }

    /// The codecs this store encodes with.
    pub fn codecs(&self) -> &Arc<Codecs> {
        &self.inner.codecs
    }

    /// Runs one Redis call through the breaker and the timeout.
    async fn call<T, F>(&self, what: &str, f: F) -> Result<T, CacheError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let inner = &self.inner;
        if let Err(wait) = inner.breaker.allow() {
            inner.errors.fetch_add(1, Ordering::Relaxed);
            return Err(CacheError::Unavailable(format!(
                "Redis at {} is failing; circuit open, next probe in {wait:?}",
                inner.url
            )));
        }
        let start = Instant::now();
        let result = tokio::time::timeout(inner.timeout, f).await;
        inner.latency.record(start.elapsed());
        let out = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => {
                Err(CacheError::Timeout(format!("Redis {what} timed out: {e}")))
            }
            // The server answered with an error (one it knows, or a script's own).
            Ok(Err(e)) if refused(&e) => {
                Err(CacheError::Invalid(format!("Redis refused {what}: {e}")))
            }
            Ok(Err(e)) => Err(CacheError::Unavailable(format!(
                "Redis at {} {what}: {e}",
                inner.url
            ))),
            Err(_) => Err(CacheError::Timeout(format!(
                "Redis {what} took longer than {:?}",
                inner.timeout
            ))),
        };
        // A refused command is not the server's health.
        let answered = !matches!(
            out,
            Err(CacheError::Unavailable(_) | CacheError::Timeout(_))
        );
        inner.breaker.record(answered);
        if answered {
            self.answered_now();
        } else if inner.breaker.is_open() {
            // Failing for a while: the next probe starts on a fresh connection.
            inner.conn.reconnect();
        }
        if out.is_err() {
            inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    fn answered_now(&self) {
        let ns = u64::try_from(self.inner.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.inner.last_answer_ns.store(ns, Ordering::Relaxed);
    }

    fn since_last_answer(&self) -> Duration {
        let last = Duration::from_nanos(self.inner.last_answer_ns.load(Ordering::Relaxed));
        self.inner.born.elapsed().saturating_sub(last)
    }

    /// One step of the host's own watch over Redis, so that health is not
    /// learned from traffic alone. While the circuit is open it sends a
    /// `PING` each time the breaker lets a probe through; while closed, a
    /// `PING` when Redis has not answered anything for [`IDLE_PING`]. Each
    /// is bounded by the Redis timeout and counts as a probe (not as a
    /// cache error). Returns true when Redis answered after a failure.
    pub async fn check_health(&self) -> bool {
        let breaker = &self.inner.breaker;
        let was_open = breaker.is_open();
        if was_open {
            if breaker.allow().is_err() {
                return false;
            }
        } else if self.since_last_answer() < IDLE_PING {
            return false;
        }
        let mut conn = self.conn();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<()>(&mut conn);
        let ok = matches!(
            tokio::time::timeout(self.inner.timeout, ping).await,
            Ok(Ok(()))
        );
        breaker.record(ok);
        if ok {
            self.answered_now();
            if was_open {
                tracing::info!(url = %self.inner.url, "Redis answers again; circuit closed");
            }
        } else if !was_open && breaker.is_open() {
            tracing::warn!(url = %self.inner.url, "Redis does not answer PING; circuit open");
        }
        was_open && ok
    }

    fn conn(&self) -> Handle {
        self.inner.conn.clone()
    }

    /// Decodes an envelope, fetching a shared dictionary it needs; an
    /// undecodable value is logged, counted and read as a miss.
    async fn open(&self, key: &str, stored: Vec<u8>) -> Option<Bytes> {
        let mut result = self.inner.codecs.decode(&stored);
        if let Err(CodecError::UnknownDictionary(id)) = result
            && self.load_dictionary(id).await.is_ok()
        {
            result = self.inner.codecs.decode(&stored);
        }
        match result {
            Ok(v) => Some(Bytes::from(v)),
            Err(e) => {
                self.inner.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key, "L2 value ignored: {e}");
                None
            }
        }
    }

    /// Reads a value and its remaining time to live.
    pub async fn get(&self, key: &str) -> Result<Option<(Bytes, Option<Duration>)>, CacheError> {
        let mut conn = self.conn();
        let (stored, pttl): (Option<Vec<u8>>, i64) = self
            .call(
                "GET",
                redis::pipe().get(key).pttl(key).query_async(&mut conn),
            )
            .await?;
        let value = match stored {
            Some(s) => self.open(key, s).await,
            None => None,
        };
        let counter = if value.is_some() {
            &self.inner.hits
        } else {
            &self.inner.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let ttl = (pttl > 0).then(|| Duration::from_millis(pttl as u64));
        Ok(value.map(|v| (v, ttl)))
    }

    /// Reads several keys with one MGET.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        let mut conn = self.conn();
        let stored: Vec<Option<Vec<u8>>> = self.call("MGET", conn.mget(keys)).await?;
        let mut out = Vec::with_capacity(stored.len());
        for (k, s) in keys.iter().zip(stored) {
            let v = match s {
                Some(s) => self.open(k, s).await,
                None => None,
            };
            let counter = if v.is_some() {
                &self.inner.hits
            } else {
                &self.inner.misses
            };
            counter.fetch_add(1, Ordering::Relaxed);
            out.push(v);
        }
        Ok(out)
    }

    fn seal(&self, key: &str, value: &[u8]) -> Vec<u8> {
        let sealed = self.inner.codecs.encode(key, value);
        let saved = (value.len() + 1).saturating_sub(sealed.len());
        self.inner
            .bytes_saved
            .fetch_add(saved as u64, Ordering::Relaxed);
        sealed
    }

    /// Writes values with `SET .. PX`, pipelined; returns once Redis confirmed.
    pub async fn set_many(
        &self,
        entries: &[(String, Bytes)],
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let px = ttl.as_millis().max(1) as u64;
        let sets = entries
            .iter()
            .map(|(k, v)| {
                redis::cmd("SET")
                    .arg(k)
                    .arg(self.seal(k, v))
                    .arg("PX")
                    .arg(px)
                    .to_owned()
            })
            .collect();
        let mut conn = self.conn();
        self.call("SET", conn.each(sets)).await?;
        self.inner
            .sets
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Whether each key exists, with one pipelined round trip.
    pub async fn exist(&self, keys: &[String]) -> Result<Vec<bool>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let exists = keys
            .iter()
            .map(|k| redis::cmd("EXISTS").arg(k).to_owned())
            .collect();
        let mut conn = self.conn();
        let answers = self.call("EXISTS", conn.each(exists)).await?;
        answers
            .into_iter()
            .map(|v| {
                redis::from_redis_value::<bool>(v)
                    .map_err(|e| CacheError::Invalid(format!("Redis EXISTS answered oddly: {e}")))
            })
            .collect()
    }

    /// Removes keys with `UNLINK`; how many existed.
    pub async fn delete(&self, keys: &[String]) -> Result<u64, CacheError> {
        let mut conn = self.conn();
        let n: u64 = self.call("UNLINK", conn.unlink(keys)).await?;
        self.inner.deletes.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Removes every key matching a glob with `SCAN MATCH` + `UNLINK`
    /// (never `KEYS`, which blocks Redis); how many went.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, CacheError> {
        let mut cursor = 0;
        let mut removed = 0;
        loop {
            let (keys, next) = self.scan(pattern, cursor, 1).await?;
            if !keys.is_empty() {
                removed += self.delete(&keys).await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Adds `delta` to the counter at `key` in one script (see
    /// `super::counter::INCREMENT_SCRIPT`); the new value and the TTL left.
    pub async fn increment(
        &self,
        key: &str,
        delta: u64,
        ttl: Duration,
    ) -> Result<(u64, Option<Duration>), CacheError> {
        // INCRBY counts in i64.
        let delta = i64::try_from(delta).map_err(|_| {
            CacheError::Invalid(format!(
                "cannot increment {key} by {delta}: Redis counts up to {}",
                i64::MAX
            ))
        })?;
        let px = ttl.as_millis().max(1) as u64;
        let mut conn = self.conn();
        let script = redis::Script::new(super::counter::INCREMENT_SCRIPT);
        let mut invocation = script.key(key);
        invocation.arg(delta).arg(px);
        let (now, pttl): (String, i64) = self
            .call("INCRBY", invocation.invoke_async(&mut conn))
            .await?;
        let now = super::counter::parse(key, now.as_bytes())?;
        self.inner.sets.fetch_add(1, Ordering::Relaxed);
        Ok((now, (pttl > 0).then(|| Duration::from_millis(pttl as u64))))
    }

    /// One `SCAN MATCH` page (more round trips while pages come back
    /// empty): keys, possibly repeated across pages, and the next cursor,
    /// 0 after the last page.
    pub async fn scan(
        &self,
        pattern: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(Vec<String>, u64), CacheError> {
        let mut conn = self.conn();
        let mut cursor = cursor;
        let mut keys = Vec::new();
        loop {
            let (next, mut page) = self
                .call("SCAN", conn.scan_page(pattern, cursor, SCAN_COUNT))
                .await?;
            keys.append(&mut page);
            cursor = next;
            if cursor == 0 || keys.len() >= count {
                keys.sort_unstable();
                keys.dedup();
                return Ok((keys, cursor));
            }
        }
    }

    /// Stores a trained dictionary for every host and maps `prefix` to it.
    pub async fn publish_dictionary(
        &self,
        prefix: &str,
        id: u32,
        raw: &[u8],
    ) -> Result<(), CacheError> {
        let mut conn = self.conn();
        // The dictionary first: a host that sees the prefix finds it.
        let dictionary = redis::cmd("SET")
            .arg(format!("{DICT_PREFIX}{id:08x}"))
            .arg(raw)
            .arg("NX")
            .to_owned();
        self.call("SET dictionary", conn.each(vec![dictionary]))
            .await?;
        let prefix = redis::cmd("SET")
            .arg(format!("{DICT_PREFIX}prefix:{prefix}"))
            .arg(id)
            .to_owned();
        self.call("SET dictionary prefix", conn.each(vec![prefix]))
            .await
            .map(|_| ())
    }

    /// Fetches and installs a dictionary by id.
    pub async fn load_dictionary(&self, id: u32) -> Result<(), CacheError> {
        let mut conn = self.conn();
        let raw: Option<Vec<u8>> = self
            .call("GET dictionary", conn.get(format!("{DICT_PREFIX}{id:08x}")))
            .await?;
        let raw = raw.ok_or_else(|| {
            CacheError::Unavailable(format!("zstd dictionary {id:08x} is not in Redis"))
        })?;
        self.inner
            .codecs
            .install_dictionary(id, &raw)
            .map_err(|e| CacheError::Invalid(e.to_string()))
    }

    /// Installs the dictionary other hosts trained for `prefix`, if any.
    pub async fn adopt_dictionary(&self, prefix: &str) -> Result<bool, CacheError> {
        let mut conn = self.conn();
        let id: Option<u32> = self
            .call(
                "GET dictionary prefix",
                conn.get(format!("{DICT_PREFIX}prefix:{prefix}")),
            )
            .await?;
        let Some(id) = id else { return Ok(false) };
        if !self.inner.codecs.has_dictionary(id) {
            self.load_dictionary(id).await?;
        }
        self.inner.codecs.use_dictionary_for(prefix, id);
        Ok(true)
    }

    /// Redis `INFO` fields (memory, clients, keyspace) for dashboards.
    pub async fn info(&self) -> Result<redis::InfoDict, CacheError> {
        let mut conn = self.conn();
        let answer = self.call("INFO", conn.on_one(redis::cmd("INFO"))).await?;
        redis::from_redis_value(answer)
            .map_err(|e| CacheError::Invalid(format!("Redis INFO answered oddly: {e}")))
    }

    /// Figures for this layer.
    pub fn layer_stats(&self) -> LayerStats {
        let i = &self.inner;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LayerStats {
            hits: l(&i.hits),
            misses: l(&i.misses),
            sets: l(&i.sets),
            deletes: l(&i.deletes),
            errors: l(&i.errors),
            bytes_saved: l(&i.bytes_saved),
            latency_p50_ns: i.latency.quantile(0.5),
            latency_p99_ns: i.latency.quantile(0.99),
            ..LayerStats::empty(Layer::L2)
        }
    }

    /// Whether the breaker currently keeps calls away from Redis.
    pub fn is_failing(&self) -> bool {
        self.inner.breaker.is_open()
    }
}

/// Whether Redis refused the command itself (an error it knows, or a
/// script's own), as opposed to being out of reach. A cluster moving slots,
/// failing over or loading answers with server errors too, but those say
/// the data is out of reach for now: a retry may find it, and the breaker
/// must see them so that a stale slot map is replaced.
fn refused(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    let transient = e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading)
        );
    !transient && matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::refused;

    fn error(kind: ErrorKind) -> RedisError {
        RedisError::from((kind, "from the test"))
    }

    #[test]
    fn a_failing_over_cluster_is_out_of_reach_not_a_refusal() {
        for transient in [
            ServerErrorKind::Moved,
            ServerErrorKind::Ask,
            ServerErrorKind::TryAgain,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::MasterDown,
            ServerErrorKind::BusyLoading,
        ] {
            assert!(
                !refused(&error(ErrorKind::Server(transient))),
                "{transient:?}"
            );
        }
        for refusal in [
            ServerErrorKind::ResponseError,
            ServerErrorKind::NoScript,
            ServerErrorKind::CrossSlot,
        ] {
            assert!(refused(&error(ErrorKind::Server(refusal))), "{refusal:?}");
        }
        assert!(refused(&error(ErrorKind::Extension)));
        assert!(!refused(&error(ErrorKind::Io)));
    }
}
