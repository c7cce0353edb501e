//! Pennant's storage: projects, environments, flags, segments, context kinds and webhooks as versioned JSON
//! documents, with the audit changelog and the streaming outbox, on SQLite (embedded default) or PostgreSQL.
//!
//! Every write runs in one transaction that also appends its changelog entry (with a JSON Patch diff) and, for
//! changes that alter what SDKs see, an outbox row per affected environment. Nothing is acknowledged that is not
//! committed with its audit trail.

mod access;
mod db;
mod environments;
mod error;
mod event_queue;
mod flags;
mod insights;
mod model;
mod projects;
mod resources;
mod segments;
#[cfg(feature = "testing")]
pub mod testing;
mod transfer;
mod webhooks;

pub use access::{ApiToken, Member, NewToken, Role, TOKEN_LAST_USED_GRANULARITY_MS};
pub use db::{Backend, Changes, Store};
pub use environments::EnvCredential;
pub use error::{Result, StoreError};
pub use event_queue::{NewQueueRow, QueueBodyEncoding, QueueRow};
pub use insights::{
    BatchInsights, ContextPage, ContextQuery, ContextUpsert, CustomEventRecord, DAY_MS, FlagVariationTotal,
    Granularity, HOUR_MS, IndexedContext, InsightsWritten, MINUTE_MS, MaintenanceReport, NO_VARIATION, Retention,
    SeriesPoint, StoredCustomEvent, batch_marker, search_words,
};
pub use model::{
    Actor, ChangelogEntry, ContextKind, Environment, FlagDefaults, FlagDoc, FlagEnvConfig, Meta, Project, Record,
    SegmentDoc, Variation, Webhook, WebhookFilter,
};
pub use resources::{ChangelogQuery, EnvDataVersion, ExternalChange, ListQuery, OutboxRow, Page, SortOrder};
pub use transfer::{
    EXPORT_FORMAT, EXPORT_VERSION, EnvironmentExport, FlagExport, ImportAction, ImportChange, ImportCounts,
    ImportOptions, ImportReport, ProjectExport,
};
pub use webhooks::{DeliveryStatus, Enqueued, RetryPolicy, WebhookDelivery};

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A random secret with a prefix, e.g. `sdk-3f2a…` (128 bits, hex).
pub fn random_secret(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}

/// SHA-256 hex digest, used to store API tokens and session tokens.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}
