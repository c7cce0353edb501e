//! The store's error type.

/// What can go wrong in the store. The API maps each variant to a stable error code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such resource.
    #[error("{kind} {key:?} not found")]
    NotFound {
        /// Resource kind.
        kind: &'static str,
        /// Its key or path.
        key: String,
    },
    /// A resource with that key exists.
    #[error("{kind} {key:?} already exists")]
    AlreadyExists {
        /// Resource kind.
        kind: &'static str,
        /// Its key or path.
        key: String,
    },
    /// Optimistic concurrency: the resource changed since the version the caller read.
    #[error("{kind} {key:?} is at version {actual}, not {expected}")]
    Conflict {
        /// Resource kind.
        kind: &'static str,
        /// Its key or path.
        key: String,
        /// The version the caller expected.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
    /// The change would store data that is invalid (and, for flags, that SDKs would report as malformed).
    #[error("invalid {kind}: {}", .issues.join("; "))]
    Invalid {
        /// Resource kind.
        kind: &'static str,
        /// What is wrong, one item per problem.
        issues: Vec<String>,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be read back.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The database URL is not one Pennant supports.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
}

impl StoreError {
    pub(crate) fn invalid(kind: &'static str, issue: impl Into<String>) -> StoreError {
        StoreError::Invalid { kind, issues: vec![issue.into()] }
    }
}

/// Store result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
