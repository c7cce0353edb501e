//! The three micro-patterns that let Pennant hold at scale, dependency-light and independent of
//! the other Pennant crates:
//!
//! 1. **Read coalescing** ([`Coalescer`]): concurrent callers for the same key share one load
//!    (a "singleflight"); results and errors are shared, nothing is cached.
//! 2. **Write coalescing** ([`LatestWins`]): per key, only the newest pending value is written;
//!    a flusher hands the pending map to a callback as one batch per interval or size, and puts
//!    failed batches back under newer values.
//! 3. **Layered cache** ([`LayeredCache`]): in-process L1 ([`quick_cache`]) → optional shared L2
//!    ([`RemoteLayer`]; `RedisLayer` with the `redis` feature) → loader, with read coalescing
//!    so that a stampede on a missing key costs one loader call, and per-layer counters as
//!    [`Stats`] and `metrics` counters.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use bytes::Bytes;
//! use pennant_patterns::{Batch, Coalescer, LatestWins, LatestWinsConfig, LayeredCache, SharedError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 1. Read coalescing: concurrent callers for "env-1" share one load.
//! let loads: Coalescer<String, Arc<str>, String> = Coalescer::new();
//! let v = loads.get_or_load("env-1".into(), async { Ok(Arc::from("flags")) }).await?;
//! assert_eq!(&*v, "flags");
//!
//! // 2. Write coalescing: one batch with the newest value per key.
//! let config = LatestWinsConfig { interval: Duration::from_millis(100), max_pending: 1_000 };
//! let writer = LatestWins::spawn(config, |batch: Batch<String, u64>| async move {
//!     assert_eq!(batch.len(), 1); // ("ctx-1", 3): a multi-row upsert would go here
//!     Ok::<_, String>(())
//! });
//! for seen in 1..=3 {
//!     writer.submit("ctx-1".into(), seen)?;
//! }
//! writer.close().await?;
//!
//! // 3. Layered cache (L1 only here; add `.remote(Arc::new(redis_layer), Codec::bytes())`).
//! let cache: LayeredCache<String, Bytes> = LayeredCache::builder("flags").build();
//! let payload = cache
//!     .get(&"env-1:v42".into(), || async { Ok::<_, SharedError>(Bytes::from_static(b"{}")) })
//!     .await?;
//! assert_eq!(&payload[..], b"{}");
//! assert_eq!(cache.stats().loads, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `redis` (off by default): `RedisLayer`, the Redis implementation of [`RemoteLayer`].

mod coalesce;
mod latest;
mod layered;
#[cfg(feature = "redis")]
mod redis_layer;

pub use coalesce::{Coalescer, CoalescerStats};
pub use latest::{Batch, Closed, FlushError, LatestWins, LatestWinsConfig, LatestWinsStats};
pub use layered::{
    Codec, LayeredCache, LayeredCacheBuilder, RemoteError, RemoteLayer, SharedError, Stats, shared_error,
};
#[cfg(feature = "redis")]
pub use redis_layer::RedisLayer;
