//! Shared state of the API's handlers.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use pennant_store::Store;

/// Limits that protect the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Requests per second per token (or per session), sustained.
    pub requests_per_second: NonZeroU32,
    /// Burst above the sustained rate.
    pub burst: NonZeroU32,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: 1 << 20,
            requests_per_second: NonZeroU32::MIN.saturating_add(99),
            burst: NonZeroU32::MIN.saturating_add(199),
        }
    }
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: Store,
    /// Limits.
    pub limits: ApiLimits,
    pub(crate) limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("store", &self.store).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl ApiState {
    /// State over a store.
    pub fn new(store: Store, limits: ApiLimits) -> ApiState {
        let quota = Quota::per_second(limits.requests_per_second).allow_burst(limits.burst);
        ApiState { store, limits, limiter: Arc::new(RateLimiter::keyed(quota)) }
    }
}
