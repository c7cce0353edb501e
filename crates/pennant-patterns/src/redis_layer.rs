//! [`RemoteLayer`] on Redis (feature `redis`).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::layered::{RemoteError, RemoteLayer};

/// An L2 on Redis: values under `<prefix><key>`, written with `SET .. PX <ttl>`.
///
/// Uses a [`ConnectionManager`] (one multiplexed connection that reconnects by itself); it is
/// cheap to clone, so many `RedisLayer`s (one per cache, each with its own prefix) can share
/// one.
#[derive(Clone)]
pub struct RedisLayer {
    conn: ConnectionManager,
    prefix: String,
    ttl: Option<Duration>,
}

impl RedisLayer {
    /// A layer over an existing connection. `ttl: None` stores values without expiry.
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>, ttl: Option<Duration>) -> Self {
        Self { conn, prefix: prefix.into(), ttl }
    }

    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`) with a 2 s connection timeout and a
    /// 1 s response timeout, failing if the server is unreachable now.
    pub async fn connect(
        url: &str,
        prefix: impl Into<String>,
        ttl: Option<Duration>,
    ) -> Result<Self, redis::RedisError> {
        let conn = Self::connection(url).await?;
        Ok(Self::new(conn, prefix, ttl))
    }

    /// A [`ConnectionManager`] with this module's timeouts, to share between layers.
    pub async fn connection(url: &str) -> Result<ConnectionManager, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2);
        ConnectionManager::new_with_config(client, config).await
    }

    /// The Redis key under which `key` is stored.
    pub fn redis_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The TTL values are written with.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }
}

impl RemoteLayer for RedisLayer {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, RemoteError>> {
        let mut conn = self.conn.clone();
        let key = self.redis_key(key);
        async move {
            let value: Option<Bytes> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
            Ok(value)
        }
        .boxed()
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), RemoteError>> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.redis_key(key)).arg(&value[..]);
        if let Some(ttl) = self.ttl {
            // Redis rejects PX 0; round sub-millisecond TTLs up.
            let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            cmd.arg("PX").arg(millis);
        }
        async move {
            cmd.exec_async(&mut conn).await?;
            Ok(())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), RemoteError>> {
        let mut conn = self.conn.clone();
        let key = self.redis_key(key);
        async move {
            redis::cmd("DEL").arg(key).exec_async(&mut conn).await?;
            Ok(())
        }
        .boxed()
    }
}

impl fmt::Debug for RedisLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLayer").field("prefix", &self.prefix).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}
